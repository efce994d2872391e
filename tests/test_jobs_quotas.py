"""The job scheduler enforces quotas end to end with a real provider (the
SQLite ``LocalQuotaProvider``): a job over its project's quota waits with a
block reason naming the project and the resource, and quota is released on
every end path."""

from __future__ import annotations

import asyncio

import pytest

from plugin_scheduling import SimulatedSystem
from plugin_scheduling.jobs import JobScheduler, JobState, ResourceRequirements
from plugin_scheduling.quotas import LocalQuotaProvider


@pytest.mark.asyncio
async def test_local_quota_provider_gates_jobs_and_is_released(tmp_path) -> None:
    quotas = LocalQuotaProvider(path=tmp_path / "quotas.db")
    quotas.set_quota("p1", cpu_quota=2.0)
    sim = SimulatedSystem(gpus=[8000.0], ram_total_mb=65536.0)
    s = JobScheduler("fifo", stats_provider=sim.snapshot_async, cpu_cores=8, poll_interval=0.05, journal=None, quotas=quotas)
    assert s.get_scheduler_info()["quota_provider"] == "local"
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    two = ResourceRequirements(cpu_cores=2)
    a = s.submit_job("a", project="p1", requirements=two, run=held)
    b = s.submit_job("b", project="p1", requirements=two, run=held)
    c = s.submit_job("c", project="p2", requirements=two, run=held)  # no quota set: not limited
    await s.trigger_async()
    assert s.get_job(a).state is JobState.RUNNING and s.get_job(c).state is JobState.RUNNING
    assert s.get_job(b).state is JobState.QUEUED
    reason = s.block_reason(b) or ""
    assert "p1" in reason and "cpu" in reason, reason
    assert quotas.get_quota("p1").used_cpu == 2.0
    await s.start()
    s.cancel_job(a)
    await s.wait_job(a, timeout=10)
    await asyncio.wait_for(_until(lambda: s.get_job(b).state is JobState.RUNNING), 10)
    gate.set()
    await s.wait_job(b, timeout=10)
    await s.wait_job(c, timeout=10)
    await s.stop()
    assert quotas.get_quota("p1").used_cpu == 0.0


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.01)


def test_a_job_that_can_never_fit_its_quota_is_rejected_at_submit(tmp_path) -> None:
    quotas = LocalQuotaProvider(path=tmp_path / "quotas.db")
    quotas.set_quota("p1", gpu_quota=1)
    s = JobScheduler("fifo", journal=None, quotas=quotas, cpu_cores=8)
    with pytest.raises(ValueError, match="can never fit the quota of project 'p1'"):
        s.submit_job("big", project="p1", requirements=ResourceRequirements(gpu_count=2))
    assert s.get_scheduler_stats()["queued_jobs"] == 0

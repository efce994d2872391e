"""JobScheduler: lifecycle, subprocesses, journal and crash recovery, events,
preemption, OOM retry, quotas hook, concurrency."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from plugin_scheduling import SimulatedOutOfMemory, SimulatedSystem
from plugin_scheduling.jobs import (
    Command,
    InvalidTransition,
    JobScheduler,
    JobState,
    ResourceRequirements,
    SchedulingAlgorithm,
    UnknownJob,
)


class Clock:
    """Manual time for ordering and aging."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(policy="fifo", gpus=(8000.0,), cpu_cores=4, **kw) -> JobScheduler:
    sim = SimulatedSystem(gpus=list(gpus), ram_total_mb=65536.0)
    kw.setdefault("journal", None)
    return JobScheduler(policy, stats_provider=sim.snapshot_async, cpu_cores=cpu_cores, poll_interval=0.05, **kw)


def proc_state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


async def until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


def leaked(s: JobScheduler) -> list[str]:
    snap = s.reservations.snapshot()
    out = []
    if snap["grants"]:
        out.append(f"grants {snap['grants']}")
    if s._runtime:
        out.append(f"runtimes {list(s._runtime)}")
    if s._waiters:
        out.append(f"waiters {list(s._waiters)}")
    return out


@pytest.mark.asyncio
async def test_functions_complete_with_result_progress_and_history(tmp_path: Path) -> None:
    s = make(journal=tmp_path / "jobs.db")

    async def work(ctx):
        ctx.progress(0.5, "half way")
        await ctx.checkpoint()
        return 42

    def sync_work(ctx):
        ctx.progress(0.25)
        return "from a thread"

    a = s.submit_job("a", run=work)
    b = s.submit_job("b", run=sync_work)
    async with s:
        ja = await s.wait_job(a, timeout=10)
        jb = await s.wait_job(b, timeout=10)
    assert (ja.state, ja.result, ja.attempts, ja.progress) == (JobState.COMPLETED, 42, 1, 1.0)
    assert (jb.state, jb.result) == (JobState.COMPLETED, "from a thread")
    hist = [(h["from"], h["to"], h["call"]) for h in s.history(a)]
    assert hist == [(None, "QUEUED", "submit_job"), ("QUEUED", "RUNNING", "start"), ("RUNNING", "COMPLETED", "finish")]
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_failures_are_recorded_not_raised() -> None:
    s = make()

    async def boom(ctx):
        raise ValueError("bad input file")

    j = s.submit_job("x", run=boom)
    c = s.submit_job("cmd", run=Command([sys.executable, "-c", "import sys; print('nope', file=sys.stderr); sys.exit(3)"]))
    async with s:
        fj = await s.wait_job(j, timeout=10)
        fc = await s.wait_job(c, timeout=10)
    assert fj.state is JobState.FAILED and "ValueError: bad input file" in (fj.error or "")
    assert fc.state is JobState.FAILED and "exited with 3" in (fc.error or "") and "nope" in (fc.error or "")
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_invalid_transitions_name_job_state_and_call() -> None:
    s = make(cpu_cores=1)
    q = s.submit_job("queued_one")
    with pytest.raises(InvalidTransition, match=r'cannot pause_job job \d+ \("queued_one"\): it is QUEUED'):
        s.pause_job(q)
    with pytest.raises(InvalidTransition, match="cannot resume_job .* it is QUEUED"):
        s.resume_job(q)
    s.cancel_job(q)
    assert s.get_job(q).state is JobState.CANCELLED
    with pytest.raises(InvalidTransition, match="cannot cancel_job .* it is CANCELLED"):
        s.cancel_job(q)
    with pytest.raises(InvalidTransition, match="set_priority"):
        s.set_priority(q, 9)
    with pytest.raises(UnknownJob):
        s.get_job(12345)
    with pytest.raises(ValueError, match="priority"):
        s.submit_job("p", priority=101)
    with pytest.raises(TypeError, match="priority"):
        s.submit_job("p", priority="high")
    with pytest.raises(ValueError, match="memory_mb"):
        ResourceRequirements(memory_mb=-1)
    with pytest.raises(ValueError, match='no queue named "nope"'):
        s.submit_job("p", queue="nope")
    with pytest.raises(TypeError, match="argv"):
        Command("echo hi")  # type: ignore[arg-type]

    async def spin(ctx):
        while True:
            await ctx.checkpoint()
            await asyncio.sleep(0.01)

    r = s.submit_job("runner", run=spin)
    async with s:
        await until(lambda: s.get_job(r).state is JobState.RUNNING)
        with pytest.raises(InvalidTransition, match="cannot resume_job .* it is RUNNING"):
            s.resume_job(r)
    assert s.get_job(r).state is JobState.CANCELLED  # stop() cancels running jobs
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_subprocess_pause_resume_cancel() -> None:
    s = make(cancel_grace_s=0.5)
    script = "import time\nwhile True: time.sleep(0.01)"
    j = s.submit_job("loop", run=Command([sys.executable, "-c", script]), requirements=ResourceRequirements(gpu_count=1, vram_mb=1000))
    async with s:
        await until(lambda: j in s._runtime and s._runtime[j].proc is not None)
        pid = s._runtime[j].proc.pid
        grants = s.reservations.snapshot()["grants"]
        assert len(grants) == 1 and grants[0]["vram_mb"] == 1000
        s.pause_job(j)
        assert s.get_job(j).state is JobState.PAUSED
        await until(lambda: proc_state(pid) == "T")
        assert len(s.reservations.snapshot()["grants"]) == 1  # kept while paused
        s.resume_job(j)
        await until(lambda: proc_state(pid) in ("S", "R"))
        assert s.get_job(j).state is JobState.RUNNING
        s.cancel_job(j)
        done = await s.wait_job(j, timeout=10)
    assert done.state is JobState.CANCELLED
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_cancel_forces_sigkill_after_grace_when_sigterm_is_ignored() -> None:
    s = make(cancel_grace_s=0.3)
    script = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\nwhile True: time.sleep(0.01)"
    j = s.submit_job("stubborn", run=Command([sys.executable, "-c", script]))
    async with s:
        await until(lambda: j in s._runtime and s._runtime[j].proc is not None)
        await asyncio.sleep(0.3)  # let it install the handler
        proc = s._runtime[j].proc
        t0 = time.monotonic()
        s.cancel_job(j)
        done = await s.wait_job(j, timeout=10)
        assert time.monotonic() - t0 >= 0.25
    assert done.state is JobState.CANCELLED
    assert proc.returncode == -signal.SIGKILL
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_paused_function_waits_at_its_checkpoint_and_cancel_is_cooperative_then_forced() -> None:
    s = make(cancel_grace_s=0.2)
    ticks = []

    async def counting(ctx):
        while True:
            await ctx.checkpoint()
            ticks.append(1)
            await asyncio.sleep(0.01)

    async def ignores_everything(ctx):
        await asyncio.sleep(3600)

    j = s.submit_job("count", run=counting)
    k = s.submit_job("deaf", run=ignores_everything)
    async with s:
        await until(lambda: len(ticks) > 3)
        s.pause_job(j)
        await asyncio.sleep(0.05)
        n = len(ticks)
        await asyncio.sleep(0.1)
        assert len(ticks) == n
        s.resume_job(j)
        await until(lambda: len(ticks) > n)
        s.cancel_job(j)
        s.cancel_job(k)
        assert s.get_job(k).cancel_requested
        assert (await s.wait_job(j, timeout=10)).state is JobState.CANCELLED
        assert (await s.wait_job(k, timeout=10)).state is JobState.CANCELLED
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_priority_order_and_set_priority_come_from_the_core_policy() -> None:
    clock = Clock()
    s = make(SchedulingAlgorithm.PRIORITY_BASED, cpu_cores=1, clock=clock)
    low = s.submit_job("low", priority=2)  # seed 003's scale: 20
    clock.t = 1
    high = s.submit_job("high", priority=90)  # seed 004's scale
    clock.t = 2
    mid = s.submit_job("mid", priority=5)
    assert s.get_job(low).priority == 20 and s.get_job(mid).priority == 50
    assert s.pending_jobs() == [high, mid, low]
    s.set_priority(low, 10)  # 100
    assert s.pending_jobs() == [low, high, mid]
    # Aging (1 point a minute): after 90 minutes the old low job passes a new high one.
    s2 = make("priority", cpu_cores=1, clock=clock)
    old = s2.submit_job("old", priority=1)
    clock.t += 90 * 60
    new = s2.submit_job("new", priority=90)
    assert s2.pending_jobs() == [old, new]


@pytest.mark.asyncio
async def test_one_cpu_runs_one_job_at_a_time_and_block_reason_events() -> None:
    s = make(cpu_cores=1)
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    events = s.events()
    a = s.submit_job("a", run=held)
    b = s.submit_job("b", run=held)
    await s.start()
    await until(lambda: s.get_job(a).state is JobState.RUNNING)
    await until(lambda: s.block_reason(b) is not None)
    assert "CPU cores" in (s.block_reason(b) or "")
    stats = s.get_scheduler_stats()
    assert (stats["running_jobs"], stats["queued_jobs"]) == (1, 1)
    assert stats["resource_utilization"]["cpu"] == 1.0
    gate.set()
    await s.wait_job(b, timeout=10)
    await s.stop()
    seen = [(e.type, e.job_id, e.state) for e in events.drain()]
    assert ("blocked", b, "QUEUED") in seen
    assert [x for x in seen if x[1] == b and x[0] == "state"] == [("state", b, "QUEUED"), ("state", b, "RUNNING"), ("state", b, "COMPLETED")]
    assert seen.count(("blocked", b, "QUEUED")) == 1  # emitted when it changes, not every pass


@pytest.mark.asyncio
async def test_event_iterator_callbacks_and_counted_drops() -> None:
    s = make()
    got = []
    unsubscribe = s.on_event(lambda e: got.append(e.type))
    small = s.events(maxsize=2)
    mine = s.events(job_id=None)

    async def work(ctx):
        for i in range(5):
            ctx.progress(i / 5)
        return 1

    j = s.submit_job("w", run=work)
    async with s:
        await s.wait_job(j, timeout=10)
        types = []
        async for e in mine:
            types.append(e.type)
            if e.type == "state" and e.state == "COMPLETED":
                break
    unsubscribe()
    assert types[0] == "state" and "progress" in types
    assert "progress" in got
    assert small.dropped > 0 and s.get_scheduler_stats()["event_drops"] >= small.dropped


@pytest.mark.asyncio
async def test_preemption_requeues_the_lower_priority_job_and_counts_it() -> None:
    s = make("priority", gpus=[8000.0], preempt_grace_s=0.5)
    gpu = ResourceRequirements(gpu_count=1, vram_mb=6000)
    started = []

    async def long(ctx):
        started.append(ctx.job_id)
        while True:
            await ctx.checkpoint()
            await asyncio.sleep(0.01)

    async def short(ctx):
        return "urgent done"

    low = s.submit_job("low", priority=1, requirements=gpu, run=long)  # 10 on 0-100
    await s.start()
    await until(lambda: s.get_job(low).state is JobState.RUNNING)
    events = s.events()
    high = s.submit_job("high", priority=9, requirements=gpu, run=short)  # 90
    assert (await s.wait_job(high, timeout=10)).result == "urgent done"
    await until(lambda: s.get_job(low).state is JobState.RUNNING and started.count(low) == 2)
    j = s.get_job(low)
    assert j.preemptions == 1 and j.attempts == 2
    assert s.get_scheduler_stats()["preemptions"] == 1
    s.cancel_job(low)
    await s.wait_job(low, timeout=10)
    await s.stop()
    types = [(e.type, e.job_id) for e in events.drain()]
    assert ("preempted", low) in types
    # fifo never preempts
    f = make("fifo", gpus=[8000.0])
    assert f._table.policy == "fifo"
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_out_of_memory_retry_grows_the_reservation() -> None:
    s = make(max_retries=2, oom_growth=1.5)
    sizes = []

    async def hungry(ctx):
        sizes.append(ctx.grant.ram_mb)
        if len(sizes) == 1:
            raise SimulatedOutOfMemory("cannot occupy 1400 MB")
        return "fits now"

    j = s.submit_job("hungry", requirements=ResourceRequirements(memory_mb=1000), run=hungry)
    cmd = s.submit_job(
        "cuda",
        requirements=ResourceRequirements(gpu_count=1, vram_mb=2000),
        run=Command([sys.executable, "-c", "import sys; print('RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB', file=sys.stderr); sys.exit(1)"]),
        max_retries=1,
    )
    async with s:
        done = await s.wait_job(j, timeout=10)
        failed = await s.wait_job(cmd, timeout=10)
    assert done.state is JobState.COMPLETED and done.retries == 1
    assert sizes == [1000.0, 1500.0]
    assert done.requirements.memory_mb == 1500
    assert failed.state is JobState.FAILED and failed.retries == 1
    assert failed.requirements.vram_mb == 3000  # grown once, then out of retries
    assert s.get_scheduler_stats()["retries"] == 2
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_deadline_policy_boosts_and_missed_deadline_is_an_event() -> None:
    clock = Clock()
    s = make(SchedulingAlgorithm.DEADLINE_AWARE, cpu_cores=1, clock=clock)
    normal = s.submit_job("regular_task", deadline=3600)
    urgent = s.submit_job("critical_task", deadline=30)
    assert s.pending_jobs() == [urgent, normal]
    missed = []
    s.on_event(lambda e: missed.append(e.job_id) if e.type == "deadline_missed" else None)
    gate = asyncio.Event()

    async def block(ctx):
        await gate.wait()

    s.register("critical_task", block)
    clock.t = 100  # past urgent's deadline (30 s)
    await s.trigger_async()
    assert missed == [urgent]
    gate.set()
    await s.trigger_async()
    await s.stop()


@pytest.mark.asyncio
async def test_queues_and_seed_004_views(monkeypatch) -> None:
    monkeypatch.setenv("SCHEDULING_POLICY", "fairshare")
    s = make(None)
    assert s.policy == "fair_share"
    s.add_queue("high-priority", priority=10, max_concurrent_jobs=1)
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    a = s.submit_job("a", queue="high-priority", run=held)
    b = s.submit_job("b", queue="high-priority", run=held)
    c = s.submit_job("c", run=held)
    assert s.pending_jobs()[:2] == [a, b]
    result = await s.trigger_async()
    assert result == {"scheduled_count": 2, "remaining_pending": 1}
    assert "max_concurrent_jobs=1" in (s.block_reason(b) or "")
    stats = {q["name"]: q for q in s.get_queue_stats()}
    hp = stats["high-priority"]
    assert (hp["priority"], hp["running_jobs"], hp["pending_jobs"], hp["total_jobs"]) == (10, 1, 1, 2)
    info = s.get_scheduler_info()
    assert info == {"policy": "fair_share", "quota_provider": None, "active_queues": 2, "pending_jobs": 1}
    assert s.get_job(c).state is JobState.RUNNING
    gate.set()
    await s.start()
    await s.wait_job(b, timeout=10)
    await s.stop()
    usage = s.get_usage()
    assert usage["users"]["a"]["completed"] == 1  # fair share: a job without a user is its module's
    assert usage["projects"][""]["completed"] == 3


class TinyQuota:
    """A seed 004 QuotaProvider-like object: at most `limit` CPU cores per project."""

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self.used: dict[str, float] = {}
        self.calls: list[tuple[str, str]] = []

    def check_quota(self, project_id, resources, job_type) -> bool:
        return self.used.get(project_id, 0.0) + resources.cpu <= self.limit

    def allocate_quota(self, project_id, resources, job_type) -> bool:
        if not self.check_quota(project_id, resources, job_type):
            return False
        self.used[project_id] = self.used.get(project_id, 0.0) + resources.cpu
        self.calls.append(("allocate", project_id))
        return True

    def release_quota(self, project_id, resources, job_type) -> None:
        self.used[project_id] -= resources.cpu
        self.calls.append(("release", project_id))


@pytest.mark.asyncio
async def test_quota_hook_checks_allocates_and_releases_on_every_end_path() -> None:
    quota = TinyQuota(limit=1)
    s = make(quotas=quota, cpu_cores=8)
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    async def boom(ctx):
        raise RuntimeError("x")

    a = s.submit_job("a", project="p1", run=held)
    b = s.submit_job("b", project="p1", run=boom)
    other = s.submit_job("o", project="p2", run=held)
    await s.trigger_async()
    assert s.get_job(a).state is JobState.RUNNING and s.get_job(other).state is JobState.RUNNING
    assert "quota of project 'p1' exceeded" in (s.block_reason(b) or "")
    assert s.get_scheduler_info()["quota_provider"] == "TinyQuota"
    await s.start()
    s.cancel_job(other)
    gate.set()
    await s.wait_job(b, timeout=10)
    await s.wait_job(other, timeout=10)
    await s.stop()
    assert quota.used == {"p1": 0.0, "p2": 0.0}
    assert quota.calls.count(("release", "p1")) == 2 and quota.calls.count(("release", "p2")) == 1


@pytest.mark.asyncio
async def test_many_submitters_and_cancellations_leak_nothing() -> None:
    s = make("best_effort_fifo", cpu_cores=4)
    rng = random.Random(7)

    async def work(ctx):
        await ctx.sleep(rng.random() * 0.02)
        return ctx.job_id

    ids: list[int] = []

    async def submitter(n: int) -> None:
        for _ in range(n):
            job = s.submit_job("w", run=work, requirements=ResourceRequirements(cpu_cores=1, memory_mb=100))
            ids.append(job)
            if rng.random() < 0.3:
                try:
                    s.cancel_job(rng.choice(ids))
                except InvalidTransition:
                    pass  # already ended (or already cancelled): refused, as it must be
            await asyncio.sleep(0)

    await s.start()
    await asyncio.gather(*(submitter(25) for _ in range(8)))
    finals = await asyncio.gather(*(s.wait_job(j, timeout=30) for j in ids))
    await s.stop()
    assert all(f.state in (JobState.COMPLETED, JobState.CANCELLED) for f in finals)
    assert sum(f.state is JobState.COMPLETED for f in finals) > 0
    stats = s.get_scheduler_stats()
    assert stats["running_jobs"] == stats["queued_jobs"] == stats["paused_jobs"] == 0
    assert s._table.active() == (0.0, 0, 0.0)
    assert leaked(s) == []


CRASHER = textwrap.dedent(
    """
    import asyncio, sys
    from plugin_scheduling import SimulatedSystem
    from plugin_scheduling.jobs import JobScheduler, Command, ResourceRequirements

    async def forever(ctx):
        await asyncio.sleep(3600)

    async def main():
        s = JobScheduler("fifo", journal=sys.argv[1], cpu_cores=2, poll_interval=0.05,
                         stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        one = ResourceRequirements(cpu_cores=1)
        s.submit_job("cmd", requirements=one, run=Command([sys.executable, "-c", "import time; time.sleep(3600)"]))
        s.submit_job("fn", requirements=one, run=forever)
        for name in ("q1", "q2", "q3"):
            s.submit_job(name, requirements=one, estimated_duration=0.01)
        await s.start()
        while s.get_scheduler_stats()["running_jobs"] < 2:
            await asyncio.sleep(0.01)
        s.flush()
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.mark.asyncio
async def test_crash_recovery_after_sigkill_of_a_real_process(tmp_path: Path) -> None:
    db = tmp_path / "state" / "jobs.db"
    proc = subprocess.Popen([sys.executable, "-c", CRASHER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    s = JobScheduler("fifo", journal=db, cpu_cores=2, poll_interval=0.05, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    rec = s.recovery
    assert rec["requeued"] == [1]  # the command can be rerun
    assert rec["failed"] == [2]  # a function submitted by another process cannot
    assert rec["queued"] == [3, 4, 5]
    assert s.pending_jobs() == [1, 3, 4, 5]
    assert "cannot be rerun" in (s.get_job(2).error or "")
    assert s.get_job(1).attempts == 1
    history = s.history(1)
    assert [h["call"] for h in history][-1] == "recover"
    # The recovered command starts again (its argv came from the journal).
    await s.start()
    await until(lambda: s.get_job(1).state is JobState.RUNNING)
    for q in (3, 4, 5):
        assert (await s.wait_job(q, timeout=10)).state is JobState.COMPLETED
    s.cancel_job(1)
    await s.wait_job(1, timeout=10)
    await s.stop()
    new = s.submit_job("after")
    assert new > 5  # ids of the crashed incarnation's reserved block are never reused
    assert leaked(s) == []


def test_default_journal_path_follows_xdg(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    s = JobScheduler(stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    assert s.journal_path == str(tmp_path / "plugin-scheduling" / "jobs.db")
    assert (tmp_path / "plugin-scheduling" / "jobs.db").exists()


def test_priority_scales_and_algorithm_mapping() -> None:
    s = make()
    assert s._priority(1) == 10 and s._priority(10) == 100 and s._priority(50) == 50 and s._priority(0) == 0
    t = make(priority_scale="0-100")
    assert t._priority(8) == 8
    assert {a.name: make(a).policy for a in SchedulingAlgorithm} == {
        "PRIORITY_BASED": "priority",
        "FAIR_SHARE": "fair_share",
        "DEADLINE_AWARE": "deadline",
        "ROUND_ROBIN": "round_robin",
        "SHORTEST_JOB_FIRST": "sjf",
        "COST_OPTIMIZED": "best_effort_fifo",
    }

    class Obj:
        kind = "sjf"

    assert make(Obj()).policy == "sjf"
    with pytest.raises(ValueError, match="policy must be one of"):
        make("lottery")


def test_seed_003_quick_start_runs() -> None:
    code = textwrap.dedent(
        """
        import asyncio
        from plugin_scheduling.jobs import JobScheduler, SchedulingAlgorithm, ResourceRequirements

        async def main():
            scheduler = JobScheduler(SchedulingAlgorithm.DEADLINE_AWARE, journal=None)
            job_id = scheduler.submit_job(
                module="arxiv_search",
                priority=8,
                deadline=120,
                requirements=ResourceRequirements(cpu_cores=2, memory_mb=4096, gpu_count=1),
                estimated_duration=0.5,
            )
            await scheduler.start()
            await asyncio.sleep(0.4)
            stats = scheduler.get_scheduler_stats()
            print(f"Running jobs: {stats['running_jobs']}")
            print(f"CPU utilization: {stats['resource_utilization']['cpu']:.1%}")
            await scheduler.stop()

        asyncio.run(main())
        """
    )
    env = dict(os.environ)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert "Running jobs: 1" in out.stdout
    assert "CPU utilization:" in out.stdout


@pytest.mark.asyncio
async def test_fair_share_across_modules_uses_measured_usage() -> None:
    clock = Clock()
    s = make(SchedulingAlgorithm.FAIR_SHARE, cpu_cores=1, clock=clock)
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    first = s.submit_job("module_a", priority=5, run=held)
    await s.trigger_async()
    assert s.get_job(first).state is JobState.RUNNING
    clock.t = 100.0  # module_a used the machine for 100 s
    gate.set()
    await s.wait_job(first, timeout=10)
    a2 = s.submit_job("module_a", priority=5)
    b = s.submit_job("module_b", priority=5)
    a3 = s.submit_job("module_a", priority=5)
    assert s.pending_jobs() == [b, a2, a3]  # module_a won't monopolize


def test_seed_003_batch_examples_and_sync_facade() -> None:
    s = make(SchedulingAlgorithm.COST_OPTIMIZED, cpu_cores=4)
    ids = [
        s.submit_job(
            module="batch_processor",
            requirements=ResourceRequirements(cpu_cores=1, memory_mb=1024),
            cost_per_second=0.01,
            estimated_duration=0.01,
        )
        for _ in range(10)
    ]
    stats = s.run_until_complete(timeout=30)
    assert stats["completed_jobs"] == 10 and stats["queued_jobs"] == 0
    assert all(s.get_job(i).cost_per_second == 0.01 for i in ids)


def test_cli_lists_shows_and_prints_history(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    s = JobScheduler(journal=db, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    a = s.submit_job("arxiv_search", priority=8)
    s.cancel_job(a)
    s.submit_job("marker")
    s.flush()
    run = lambda *args: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "plugin_scheduling", "jobs", "--journal", str(db), *args], capture_output=True, text=True, timeout=60
    )
    out = run("list")
    assert out.returncode == 0, out.stderr
    assert "arxiv_search" in out.stdout and "CANCELLED" in out.stdout and "QUEUED" in out.stdout
    import json

    shown = json.loads(run("show", str(a), "--json").stdout)
    assert shown["state"] == "CANCELLED" and [h["to"] for h in shown["history"]] == ["QUEUED", "CANCELLED"]
    assert len(json.loads(run("history", "--json").stdout)) == 3
    missing = run("show", "99")
    assert missing.returncode == 1 and "no job with id 99" in missing.stderr
    nojournal = subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", "jobs", "--journal", str(tmp_path / "none.db")], capture_output=True, text=True, timeout=60
    )
    assert nojournal.returncode == 1 and "no job journal" in nojournal.stderr


def test_the_jobs_guide_example_runs_as_written() -> None:
    import re

    section = (Path(__file__).parent.parent / "docs" / "guides" / "jobs.md").read_text()
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None
    out = subprocess.run([sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:2] == ["done", "COMPLETED"]


@pytest.mark.asyncio
async def test_release_on_pause_gives_the_reservation_back_and_resume_waits_for_it() -> None:
    s = make(gpus=[8000.0], release_on_pause=True)
    gpu = ResourceRequirements(gpu_count=1, vram_mb=6000)
    j = s.submit_job("loop", requirements=gpu, run=Command([sys.executable, "-c", "import time\nwhile True: time.sleep(0.01)"]))
    gate = asyncio.Event()

    async def held(ctx):
        await gate.wait()

    async with s:
        await until(lambda: j in s._runtime and s._runtime[j].proc is not None)
        pid = s._runtime[j].proc.pid
        s.pause_job(j)
        await until(lambda: proc_state(pid) == "T")
        assert s.reservations.snapshot()["grants"] == []
        other = s.submit_job("other", requirements=gpu, run=held)
        await until(lambda: s.get_job(other).state is JobState.RUNNING)
        s.resume_job(j)
        await asyncio.sleep(0.2)
        assert s.get_job(j).state is JobState.PAUSED  # the GPU is taken: it waits
        assert "resume waits for its reservation" in (s.block_reason(j) or "")
        gate.set()
        await until(lambda: s.get_job(j).state is JobState.RUNNING)
        await until(lambda: proc_state(pid) in ("S", "R"))
        s.cancel_job(j)
        await s.wait_job(j, timeout=10)
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_threads_submit_while_the_loop_dispatches() -> None:
    import threading

    s = make("priority", cpu_cores=2)

    def work(ctx):
        return ctx.job_id

    ids: list[int] = []
    lock = threading.Lock()

    def submitter() -> None:
        for i in range(200):
            j = s.submit_job("t", priority=i % 10, run=work)
            with lock:
                ids.append(j)

    await s.start()
    threads = [threading.Thread(target=submitter) for _ in range(4)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        await asyncio.sleep(0.005)
    for t in threads:
        t.join()
    finals = await asyncio.gather(*(s.wait_job(j, timeout=60) for j in ids))
    await s.stop()
    assert len(set(ids)) == 800
    assert all(f.state is JobState.COMPLETED and f.result == f.job_id for f in finals)
    assert leaked(s) == []


def test_a_callback_calling_the_table_back_is_refused_not_deadlocked() -> None:
    from plugin_scheduling._core import JobTable

    t = JobTable("fifo")
    t.submit("a", 50, None, None, None, None, None, None, 1, 0, 0, 0, "simulated", "", 0)
    started, blocked, skipped, head, error = t.dispatch(4, 0, 1000, lambda *a: t.counts())
    assert started == [] and isinstance(error, RuntimeError) and "busy" in str(error)
    assert t.state(1) == "QUEUED"


@pytest.mark.asyncio
async def test_a_command_killed_by_sigkill_from_outside_counts_as_out_of_memory() -> None:
    s = make()
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    j = s.submit_job("oom_killed", requirements=ResourceRequirements(memory_mb=2000), run=Command([sys.executable, "-c", kill_self]), max_retries=1)
    plain = s.submit_job("exit1", requirements=ResourceRequirements(memory_mb=2000), run=Command([sys.executable, "-c", "raise SystemExit(1)"]), max_retries=1)
    async with s:
        killed = await s.wait_job(j, timeout=20)
        failed = await s.wait_job(plain, timeout=20)
    assert killed.state is JobState.FAILED and killed.retries == 1 and killed.requirements.memory_mb == 3000
    assert failed.retries == 0 and failed.requirements.memory_mb == 2000  # not memory: no retry
    assert leaked(s) == []


@pytest.mark.asyncio
async def test_a_preempted_subprocess_gets_sigterm_to_checkpoint_and_runs_again() -> None:
    s = make("priority", gpus=[8000.0], preempt_grace_s=5.0)
    gpu = ResourceRequirements(gpu_count=1, vram_mb=6000)
    checkpoint = (
        "import signal, sys, time\n"
        "def stop(*_):\n"
        "    print('checkpointed', flush=True); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "print('ready', flush=True)\n"
        "while True: time.sleep(0.01)\n"
    )
    low = s.submit_job("trainer", priority=1, requirements=gpu, run=Command([sys.executable, "-c", checkpoint]))
    pids = []
    async with s:
        await until(lambda: low in s._runtime and s._runtime[low].proc is not None)
        first = s._runtime[low].proc
        pids.append(first.pid)
        await asyncio.sleep(0.3)  # its SIGTERM handler is installed
        high = s.submit_job("urgent", priority=9, requirements=gpu, run=lambda ctx: "urgent done")
        assert (await s.wait_job(high, timeout=20)).result == "urgent done"
        await until(lambda: low in s._runtime and s._runtime[low].proc is not None and s._runtime[low].proc.pid not in pids)
        job = s.get_job(low)
        assert (job.state, job.preemptions, job.attempts) == (JobState.RUNNING, 1, 2)
        assert first.returncode == 0  # it ended from its SIGTERM handler, not SIGKILL
        s.cancel_job(low)
        await s.wait_job(low, timeout=20)
    assert leaked(s) == []


def test_queue_plan_and_explain_job_come_from_the_core_in_policy_order() -> None:
    """Who is ahead and when a job should start: the core's plan (jobs::plan)
    in the policy's order, per resource; unknown from a job with no estimate."""
    clock = Clock(100.0)
    s = make(SchedulingAlgorithm.PRIORITY_BASED, cpu_cores=2, clock=clock)
    low = s.submit_job("low", priority=20, requirements=ResourceRequirements(cpu_cores=1), estimated_duration=5)
    high = s.submit_job("high", priority=90, requirements=ResourceRequirements(cpu_cores=2), estimated_duration=10)
    unknown = s.submit_job("open-ended", priority=50, requirements=ResourceRequirements(cpu_cores=2))
    last = s.submit_job("last", priority=15, requirements=ResourceRequirements(cpu_cores=1), estimated_duration=1)
    plan = s.queue_plan()
    assert [p["job_id"] for p in plan] == [high, unknown, low, last] == s.pending_jobs()
    assert [(p["position"], p["ahead"]) for p in plan] == [(1, 0), (2, 1), (3, 2), (4, 3)]
    t0 = plan[0]["estimated_start"]
    assert t0 is not None and abs(plan[1]["estimated_start"] - t0 - 10) < 1e-6  # after "high" (10 s)
    assert plan[2]["estimated_start"] is None and plan[3]["estimated_start"] is None  # behind one with no estimate
    assert len(s.queue_plan(2)) == 2
    e = s.explain_job(unknown)
    assert (e["state"], e["position"], e["ahead"]) == ("QUEUED", 2, 1)
    assert e["estimated_start"] == plan[1]["estimated_start"] and "priority" in e["order"].lower()
    assert s.explain_job(low)["estimated_start"] is None
    s.cancel_job(high)
    assert s.explain_job(high)["position"] is None and s.explain_job(unknown)["position"] == 1
    with pytest.raises(ValueError, match="limit"):
        s.queue_plan(-1)
    with pytest.raises(UnknownJob):
        s.explain_job(999)

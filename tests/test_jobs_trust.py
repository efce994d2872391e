"""Jobs you can trust across a crash (issue 18 items 1, 3, 4, 5; issue 24
#8, #9, #15): durable acknowledgements under SIGKILL, ids never reused, one
owner per journal, never-fit and poison refusals, a bad job failing alone,
timeouts that say why, wall-clock times, retention, journaled queues, quota
calls off the event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import plugin_scheduling
from plugin_scheduling import ReservationScheduler, SimulatedSystem
from plugin_scheduling._core import JobTable
from plugin_scheduling.jobs import Command, JobScheduler, JobState, JournalError, ResourceRequirements

# The children import the package this test imports (the source tree's with an
# editable install, site-packages' with a wheel).
PY = os.path.dirname(os.path.dirname(os.path.abspath(plugin_scheduling.__file__)))


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": PY + os.pathsep + os.environ.get("PYTHONPATH", "")}


def journal_ids(db: Path) -> set[int]:
    table = JobTable("fifo", os.fspath(db), own=False, retention_jobs=None, retention_age_s=None)
    table.view()
    return {r["job_id"] for r in table.records()}


def sim_scheduler(**kw: Any) -> JobScheduler:
    sim = SimulatedSystem(gpus=[16000.0], ram_total_mb=65536.0)
    kw.setdefault("journal", None)
    kw.setdefault("cpu_cores", 2)
    return JobScheduler("fifo", stats_provider=sim.snapshot_async, poll_interval=0.05, **kw)


SUBMITTER = textwrap.dedent(
    """
    import sys, time
    from plugin_scheduling.jobs import JobScheduler
    # journal_batch: no commit at a buffer threshold, only the writer's (or sync's).
    s = JobScheduler("fifo", journal=sys.argv[1], durability=sys.argv[2], flush_interval=float(sys.argv[3]), cpu_cores=1,
                     journal_batch=10**9)
    print("ready", flush=True)
    out = sys.stdout
    pause = float(sys.argv[5])
    for _ in range(int(sys.argv[4])):
        job = s.submit_job("m")
        out.write(f"{job} {time.time()}\\n")
        out.flush()
        if pause:
            time.sleep(pause)
    time.sleep(3600)
    """
)


def sigkill_loop(
    tmp_path: Path, durability: str, flush_interval: float, kills: int, after: tuple[float, float], cap: int, pause: float = 0.0
) -> tuple[int, int, list[float]]:
    """A child submitting in a tight loop, killed at random moments, `kills`
    times on one journal; returns (acknowledged, lost, the lost ones' age at
    the kill). Checks that no id is ever handed out twice."""
    db = tmp_path / "jobs.db"
    rng = random.Random(18)
    acked_total = lost_total = 0
    lost_ages: list[float] = []
    seen: set[int] = set()
    for _ in range(kills):
        proc = subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, str(db), durability, str(flush_interval), str(cap), str(pause)],
            stdout=subprocess.PIPE,
            env=child_env(),
        )
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == b"ready"
            time.sleep(rng.uniform(*after))
            killed_at = time.time()
            proc.send_signal(signal.SIGKILL)
            out = proc.stdout.read()
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        acked: dict[int, float] = {}
        for line in out.split(b"\n")[:-1]:  # the last piece may be cut short
            job, at = line.split()
            acked[int(job)] = float(at)
        assert not (set(acked) & seen), "an acknowledged id was handed out again"
        seen |= set(acked)
        stored = journal_ids(db)
        lost = set(acked) - stored
        acked_total += len(acked)
        lost_total += len(lost)
        lost_ages += [killed_at - acked[i] for i in lost]
    return acked_total, lost_total, lost_ages


@pytest.mark.timeout(240)
def test_sync_sigkill_20_times_loses_no_acknowledged_job(tmp_path: Path) -> None:
    acked, lost, _ = sigkill_loop(tmp_path, "sync", 0.05, 20, (0.02, 0.3), 4000)
    assert acked > 100
    assert lost == 0


@pytest.mark.timeout(300)
def test_batched_sigkill_20_times_loses_only_the_last_flush_interval(tmp_path: Path) -> None:
    flush = 0.05
    # The kill comes after several intervals; the bound is flush_interval
    # plus slack for one commit and a busy machine's scheduling.
    acked, lost, ages = sigkill_loop(tmp_path, "batched", flush, 20, (0.3, 0.7), 8000, pause=0.002)
    assert acked > 500
    assert all(age <= flush + 0.5 for age in ages), sorted(ages)[-5:]
    assert lost < acked


def test_batched_commits_without_any_event_loop_and_at_exit(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    script = textwrap.dedent(
        """
        import sys, time
        from plugin_scheduling.jobs import JobScheduler
        s = JobScheduler("fifo", journal=sys.argv[1], flush_interval=float(sys.argv[2]), cpu_cores=1)
        ids = [s.submit_job("m") for _ in range(5)]
        if sys.argv[3] == "wait":
            time.sleep(1.0)  # no loop runs: the writer thread commits
            print(ids, flush=True)
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)
        print(ids, flush=True)  # a normal exit: atexit commits
        """
    )
    for interval, mode in ((0.05, "wait"), (3600.0, "exit")):
        path = tmp_path / f"{mode}.db"
        out = subprocess.run([sys.executable, "-c", script, str(path), str(interval), mode], capture_output=True, text=True, env=child_env(), timeout=60)
        ids = json.loads(out.stdout.strip().splitlines()[0])
        assert set(ids) <= journal_ids(path), (mode, out.stderr)
    del db


def test_a_forked_child_gets_its_own_writer_and_cannot_write_the_parents_journal(tmp_path: Path) -> None:
    parent = JobScheduler("fifo", journal=tmp_path / "parent.db", cpu_cores=1, flush_interval=0.05)
    parent.submit_job("before-fork")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            try:
                parent.submit_job("from-child")
                code = 2
            except JournalError:
                child = JobScheduler("fifo", journal=tmp_path / "child.db", cpu_cores=1, flush_interval=0.05)
                child.submit_job("child-job")
                time.sleep(0.5)  # the child's own writer commits; no atexit after os._exit
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert journal_ids(tmp_path / "child.db") == {1}
    parent.flush()
    assert journal_ids(tmp_path / "parent.db") == {1}
    parent.close()


OWNER = textwrap.dedent(
    """
    import sys, time
    from plugin_scheduling.jobs import JobScheduler
    s = JobScheduler("fifo", journal=sys.argv[1], cpu_cores=1)
    s.submit_job("held")
    s.flush()
    print("ready", flush=True)
    time.sleep(3600)
    """
)


def test_one_owner_per_journal_across_processes_and_stale_owner_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "jobs.db"
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(db)], stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        with pytest.raises(JournalError) as e:
            JobScheduler("fifo", journal=db, cpu_cores=1)
        assert str(db) in str(e.value) and f"pid {proc.pid}" in str(e.value)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    with caplog.at_level(logging.WARNING, logger="plugin_scheduling.jobs"):
        s = JobScheduler("fifo", journal=db, cpu_cores=1)
    assert f"pid {proc.pid}" in caplog.text and "took over" in caplog.text
    assert s.get_job(1).module == "held"
    # The same process: a second scheduler is refused until the first is closed.
    with pytest.raises(JournalError, match="close"):
        JobScheduler("fifo", journal=db, cpu_cores=1)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        s.submit_job("late")
    again = JobScheduler("fifo", journal=db, cpu_cores=1)
    first = again.submit_job("next")
    assert first > 1  # the killed owner's reserved block is never reused
    again.close()
    third = JobScheduler("fifo", journal=db, cpu_cores=1)
    assert third.submit_job("after a clean close") == first + 1  # a clean close gives its block back
    third.close()


def test_never_fit_jobs_are_refused_naming_resource_need_and_capacity() -> None:
    s = sim_scheduler()
    with pytest.raises(ValueError, match=r"cpu_cores.*500.*has 2"):
        s.submit_job("big", requirements=ResourceRequirements(cpu_cores=500))
    with pytest.raises(ValueError, match=r"gpu_count.*needs 2 GPUs, the machine has 1"):
        s.submit_job("two", requirements=ResourceRequirements(gpu_count=2))
    with pytest.raises(ValueError, match=r"vram_mb.*20000.*16000"):
        s.submit_job("vram", requirements=ResourceRequirements(gpu_count=1, vram_mb=20000))
    with pytest.raises(ValueError, match=r"memory_mb.*100000.*65536"):
        s.submit_job("ram", requirements=ResourceRequirements(memory_mb=100000))
    s.add_queue("shut", max_concurrent_jobs=0)
    with pytest.raises(ValueError, match="max_concurrent_jobs=0"):
        s.submit_job("q", queue="shut")
    assert s.list_jobs() == []
    assert s.submit_job("fits", requirements=ResourceRequirements(cpu_cores=2, gpu_count=1, vram_mb=16000)) == 1


def test_queued_jobs_that_can_never_fit_fail_once_the_machine_is_known() -> None:
    stats: dict[str, Any] = {"memory_total_mb": 1000.0, "details": {"gpus": []}}

    async def provider() -> dict[str, Any]:
        return stats

    s = JobScheduler("fifo", journal=None, stats_provider=provider, cpu_cores=2, poll_interval=0.05)
    doomed = s.submit_job("gpu", requirements=ResourceRequirements(gpu_count=1))
    ok = s.submit_job("ok", estimated_duration=0.01)
    s.run_until_complete(timeout=30)
    assert s.get_job(doomed).state is JobState.FAILED
    assert "needs 1 GPUs, the machine has 0" in (s.get_job(doomed).error or "")
    assert s.get_job(ok).state is JobState.COMPLETED


@pytest.mark.parametrize(
    "kwargs, exc, field",
    [
        ({"requirements": ResourceRequirements(gpu_count=65537)}, ValueError, "gpu_count"),
        ({"requirements": ResourceRequirements(gpu_count=2**70)}, ValueError, "gpu_count"),
        ({"requirements": ResourceRequirements(vram_mb=1e300, gpu_count=1)}, ValueError, "vram_mb"),
        ({"requirements": ResourceRequirements(memory_mb=1e300)}, ValueError, "memory_mb"),
        ({"priority": 10**400}, ValueError, "priority"),
        ({"priority": "high"}, TypeError, "priority"),
        ({"priority": math.nan}, ValueError, "priority"),
        ({"max_retries": 2**70}, ValueError, "max_retries"),
        ({"max_retries": 10**6}, ValueError, "max_retries"),
        ({"max_retries": True}, ValueError, "max_retries"),
        ({"queue": 5}, TypeError, "queue"),
        ({"queue": "\udc80"}, ValueError, "queue"),
        ({"deadline": 10**400}, ValueError, "deadline"),
        ({"deadline": 1e300}, ValueError, "deadline"),
        ({"deadline": "soon"}, TypeError, "deadline"),
        ({"deadline": -1}, ValueError, "deadline"),
        ({"estimated_duration": math.inf}, ValueError, "estimated_duration"),
        ({"user": 7}, TypeError, "user"),
    ],
)
def test_poison_submissions_are_refused_naming_the_field(kwargs: dict[str, Any], exc: type, field: str) -> None:
    s = JobScheduler("fifo", journal=None, cpu_cores=2, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    with pytest.raises(exc) as e:
        s.submit_job("m", **kwargs)
    assert field in str(e.value)
    assert s.list_jobs() == []


def test_poison_requirements_cannot_be_built_either() -> None:
    for bad in ({"memory_mb": math.nan}, {"cpu_cores": -1}, {"gpu_count": True}, {"vram_mb": "x"}):
        with pytest.raises((TypeError, ValueError)) as e:
            ResourceRequirements(**bad)
        assert next(iter(bad)) in str(e.value)


class ExplodingReservations:
    """A reservation scheduler whose explain raises for one module."""

    def __init__(self) -> None:
        self.inner = ReservationScheduler(timeout=0.0)

    def explain(self, meta: Any, stats: Any) -> Any:
        if meta.name == "poison":
            raise OverflowError("cannot convert a requirement")
        return self.inner.explain(meta, stats)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_job_failing_in_a_pass_fails_alone_and_the_others_run() -> None:
    s = sim_scheduler(reservations=ExplodingReservations())
    before = s.submit_job("fine-1", estimated_duration=0.01)
    poison = s.submit_job("poison", estimated_duration=0.01)
    after = [s.submit_job(f"fine-{i}", estimated_duration=0.01) for i in range(2, 5)]
    s.run_until_complete(timeout=30)
    job = s.get_job(poison)
    assert job.state is JobState.FAILED
    assert "OverflowError: cannot convert a requirement" in (job.error or "")
    assert all(s.get_job(i).state is JobState.COMPLETED for i in [before, *after])


def test_timeouts_say_what_is_pending_and_why() -> None:
    s = sim_scheduler()
    s.add_queue("one", max_concurrent_jobs=1)
    s.submit_job("long", queue="one", estimated_duration=60)
    waiting = s.submit_job("second", queue="one", estimated_duration=0.01)
    with pytest.raises(TimeoutError) as e:
        s.run_until_complete(timeout=0.5)
    text = str(e.value)
    assert "1 queued, 1 running" in text and f"job {waiting} ('second') is still QUEUED" in text
    assert "max_concurrent_jobs=1" in text

    async def wait() -> None:
        await s.start()
        try:
            await s.wait_job(waiting, timeout=30)  # the long one was cancelled by the stop
            s.submit_job("long-2", queue="one", estimated_duration=60)
            later = s.submit_job("third", queue="one", estimated_duration=0.01)
            with pytest.raises(TimeoutError, match=rf"wait_job\({later}\) timed out after 0.5 s: job {later} .*QUEUED.*max_concurrent_jobs"):
                await s.wait_job(later, timeout=0.5)
        finally:
            await s.stop()

    asyncio.run(wait())


def test_wall_clock_times_on_jobs_in_the_journal_and_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    t0 = time.time()
    s = sim_scheduler(journal=db)
    cmd = s.submit_job("cmd", run=Command([sys.executable, "-c", "pass"], env={"A": "1"}))
    s.run_until_complete(timeout=60)
    job = s.get_job(cmd)
    assert job.state is JobState.COMPLETED
    assert job.started_at is not None and job.ended_at is not None
    assert t0 - 1 <= job.submitted_at <= job.started_at <= job.ended_at <= time.time() + 1
    s.close()
    again = sim_scheduler(journal=db)
    back = again.get_job(cmd)
    assert (back.submitted_at, back.started_at, back.ended_at) == pytest.approx((job.submitted_at, job.started_at, job.ended_at), abs=1e-3)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "plugin_scheduling", "jobs", "--journal", str(db), *a], capture_output=True, text=True, env=child_env(), timeout=60
    )
    shown = json.loads(run("show", str(cmd), "--json").stdout)
    assert shown["payload"] == {"argv": [sys.executable, "-c", "pass"], "env": {"A": "1"}, "cwd": None}
    for key in ("submitted_at", "started_at", "ended_at"):
        assert shown[key].endswith("Z") and shown[key][:4].isdigit(), shown[key]
    assert "submitted" not in shown
    assert all(h["at"].endswith("Z") for h in shown["history"])
    text = run("show", str(cmd)).stdout
    assert "submitted_at" in text and "None" not in text.split("ended_at")[1].splitlines()[0]
    listed = json.loads(run("list", "--json").stdout)
    assert listed[0]["payload"]["argv"][1] == "-c"
    again.close()


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_retention_bounds_finished_jobs_by_count_and_age(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    clock = Clock()
    s = sim_scheduler(journal=db, clock=clock, retention_jobs=5, retention_age_s=100.0, durability="sync")
    ids = [s.submit_job(f"j{i}") for i in range(20)]
    for i in ids:
        s.cancel_job(i)
    assert [j.job_id for j in s.list_jobs()] == ids[-5:]
    assert journal_ids(db) == set(ids[-5:])
    clock.t = 1000.0
    queued = s.submit_job("waits")
    last = s.submit_job("now")
    s.cancel_job(last)  # a transition applies the age bound too
    assert {j.job_id for j in s.list_jobs()} == {queued, last}
    assert journal_ids(db) == {queued, last}
    with pytest.raises(ValueError, match="retention"):
        sim_scheduler(retention_jobs=0)
    s.close()


def test_queue_settings_survive_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    s = sim_scheduler(journal=db)
    s.add_queue("gpu", priority=5, max_concurrent_jobs=2)
    s.close()
    again = sim_scheduler(journal=db)
    gpu = [q for q in again.get_queue_stats() if q["name"] == "gpu"]
    assert gpu and gpu[0]["priority"] == 5 and gpu[0]["max_concurrent_jobs"] == 2
    assert again.submit_job("x", queue="gpu") == 1
    with pytest.raises(ValueError, match="priority"):
        again.add_queue("huge", priority=2**70)
    with pytest.raises(ValueError, match="max_concurrent_jobs"):
        again.add_queue("neg", max_concurrent_jobs=-1)
    again.close()


class BlockingQuotas:
    """A quota provider whose allocation blocks until the test lets it go: run
    on the event loop it would freeze the loop that is to let it go."""

    name = "blocking"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: set[int] = set()
        self.calls: list[str] = []

    def _note(self, call: str) -> None:
        self.threads.add(threading.get_ident())
        self.calls.append(call)

    def check_quota(self, project: str, resources: Any, job_type: str) -> bool:
        self._note("check")
        return True

    def allocate_quota(self, project: str, resources: Any, job_type: str) -> bool:
        self._note("allocate")
        self.entered.set()
        return self.gate.wait(20)

    def release_quota(self, project: str, resources: Any, job_type: str) -> None:
        self._note("release")


@pytest.mark.asyncio
async def test_quota_calls_never_block_the_event_loop() -> None:
    quotas = BlockingQuotas()
    s = sim_scheduler(quotas=quotas)
    job = s.submit_job("q", project="p", estimated_duration=0.01)
    await s.start()
    try:
        ticks = 0
        deadline = time.monotonic() + 15
        while not quotas.entered.is_set():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        while ticks < 5:  # the loop keeps running while the provider blocks
            await asyncio.sleep(0.01)
            ticks += 1
        quotas.gate.set()
        done = await s.wait_job(job, timeout=20)
        assert done.state is JobState.COMPLETED
        for _ in range(200):
            if "release" in quotas.calls:
                break
            await asyncio.sleep(0.01)
    finally:
        await s.stop()
    assert threading.get_ident() not in quotas.threads
    assert quotas.calls.count("allocate") == 1 and quotas.calls.count("release") == 1

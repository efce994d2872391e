"""At most one copy of a job, and its quota, across SIGKILLs of the scheduler.

Real processes throughout: a child scheduler runs ``Command`` jobs and is
killed with SIGKILL; the recovering scheduler (a new child, or this test
process) must kill (or adopt) what survived before anything is rerun.

Every command is ``_worker.py``: it takes an exclusive ``flock`` on
``<job>.flock`` (released by the kernel when its holder dies, so it never
goes stale) and, under it, an ``O_EXCL`` lock file ``<job>.lock``; failing
the flock means another copy of the job is running right now: it writes
``DOUBLE`` to the log. Every start is logged with pid and start time.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import pytest

import plugin_scheduling
from plugin_scheduling import SimulatedSystem
from plugin_scheduling._core import JobTable
from plugin_scheduling.jobs import JobScheduler, JournalError
from plugin_scheduling.quotas import LocalQuotaProvider, Resources

pytestmark = pytest.mark.timeout(120)

# The children import the package this test imports (the source tree's with an
# editable install, site-packages' with a wheel).
PY = Path(plugin_scheduling.__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    lockdir, log, name, secs, fork = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5] == "fork"

    def start_time(pid):
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]

    def note(line):
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, (line + "\\n").encode())
        os.close(fd)

    if fork and os.fork() != 0:
        os.wait()  # the leader waits; the work is its child's (same group)
        sys.exit(0)
    me = os.getpid()
    held = os.open(os.path.join(lockdir, name + ".flock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        note(f"DOUBLE {name} {me}")
        sys.exit(3)
    lock = os.path.join(lockdir, name + ".lock")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # left by a killed copy (we hold the flock: it is dead)
        os.unlink(lock)
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, f"{me}".encode())
    os.close(fd)
    note(f"start {name} {me} {start_time(me)}")
    if os.path.exists(os.path.join(lockdir, "fast")):
        secs = 0.1
    time.sleep(secs)
    os.unlink(lock)
    note(f"end {name} {me}")
    """
)

SCHED = textwrap.dedent(
    """
    import json, sys
    from plugin_scheduling import SimulatedSystem
    from plugin_scheduling.jobs import Command, JobScheduler, ResourceRequirements
    from plugin_scheduling.quotas import LocalQuotaProvider
    cfg = json.loads(sys.argv[1])
    quotas = LocalQuotaProvider(path=cfg["quotas"]) if cfg.get("quotas") else None
    s = JobScheduler("fifo", journal=cfg["journal"], cpu_cores=8, poll_interval=0.02,
                     stats_provider=SimulatedSystem(gpus=[]).snapshot_async,
                     recovery_mode=cfg["mode"], quotas=quotas, durability=cfg.get("durability", "batched"))
    for name in cfg["submit"]:
        argv = [sys.executable, cfg["worker"], cfg["lockdir"], cfg["log"], name, str(cfg["secs"]), cfg["fork"]]
        s.submit_job(name, run=Command(argv), project=cfg.get("project"),
                     requirements=ResourceRequirements(cpu_cores=1))
    s.flush()
    print("RECOVERED " + json.dumps(s.recovery), flush=True)
    s.run_until_complete(timeout=60)
    print("DONE " + json.dumps({j.module: j.state.value for j in s.list_jobs()}), flush=True)
    """
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PY) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Rig:
    def __init__(self, tmp: Path, mode: str = "kill", fork: bool = True, secs: float = 1.0) -> None:
        self.tmp = tmp
        self.worker = tmp / "worker.py"
        self.worker.write_text(WORKER)
        self.sched = tmp / "sched.py"
        self.sched.write_text(SCHED)
        self.lockdir = tmp / "locks"
        self.lockdir.mkdir()
        self.log = tmp / "starts.log"
        self.journal = tmp / "jobs.db"
        self.cfg = {
            "journal": str(self.journal), "lockdir": str(self.lockdir), "log": str(self.log),
            "worker": str(self.worker), "mode": mode, "secs": secs, "fork": "fork" if fork else "nofork",
            "submit": [],
        }

    def spawn(self, **over: object) -> subprocess.Popen[str]:
        cfg = dict(self.cfg, **over)
        return subprocess.Popen(
            [sys.executable, str(self.sched), json.dumps(cfg)], env=_env(), stdout=subprocess.PIPE, text=True
        )

    def lines(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [line.split() for line in self.log.read_text().splitlines() if line]

    def starts(self) -> list[list[str]]:
        return [x for x in self.lines() if x[0] == "start"]

    def wait_starts(self, n: int, timeout: float = 30.0) -> None:
        end = time.monotonic() + timeout
        while len(self.starts()) < n:
            assert time.monotonic() < end, f"only {len(self.starts())} of {n} starts: {self.lines()}"
            time.sleep(0.01)


def _alive(pid: int, start: str) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[19] == start and fields[0] not in ("Z", "X")


def _marked(journal: Path) -> list[int]:
    """Live processes carrying a marker of this journal (its jobs' processes)."""
    table = JobTable("fifo", str(journal))
    prefix = f"PLUGIN_SCHEDULING_JOB={table.journal_id()}:".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X") and any(kv.startswith(prefix) for kv in env.split(b"\0")):
            out.append(int(entry))
    return out


def _read_line(proc: subprocess.Popen[str], tag: str) -> str:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(tag):
            return line[len(tag):].strip()
    raise AssertionError(f"the scheduler ended (rc {proc.wait()}) before printing {tag!r}")


def _sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_sigkill_loop_never_runs_a_job_twice_and_leaves_no_orphan(tmp_path: Path) -> None:
    rig = Rig(tmp_path, fork=True, secs=1.0)
    names = [f"job{i}" for i in range(3)]
    rng = random.Random(18)
    seen = 0
    for loop in range(10):
        proc = rig.spawn(submit=names if loop == 0 else [])
        _read_line(proc, "RECOVERED ")
        # Recovery is done: nothing any earlier incarnation started is alive.
        survivors = [x for x in rig.starts() if _alive(int(x[2]), x[3])]
        assert not survivors, f"loop {loop}: survivors of an earlier scheduler after recovery: {survivors}"
        time.sleep(rng.uniform(0.05, 0.6))
        _sigkill(proc)
        seen = len(rig.starts())
    proc = rig.spawn()
    done = json.loads(_read_line(proc, "DONE "))
    proc.wait(10)
    assert done == {n: "COMPLETED" for n in names}
    assert not [x for x in rig.lines() if x[0] == "DOUBLE"], rig.lines()
    assert seen >= 3, "the loop should have started every job at least once"
    assert not _marked(rig.journal), "no process of the journal's jobs is left"
    assert JobTable("fifo", str(rig.journal)).processes() == [], "every process record is gone"


def test_commands_die_with_a_killed_scheduler(tmp_path: Path) -> None:
    # kill mode, no grandchild: PR_SET_PDEATHSIG alone ends the command,
    # with no recovering scheduler at all.
    rig = Rig(tmp_path, fork=False, secs=30.0)
    proc = rig.spawn(submit=["solo"])
    rig.wait_starts(1)
    _, _, pid, start = rig.starts()[0]
    _sigkill(proc)
    end = time.monotonic() + 5
    while _alive(int(pid), start):
        assert time.monotonic() < end, "the command outlived its scheduler"
        time.sleep(0.01)


@pytest.mark.parametrize("durability", ["batched", "sync"])
def test_kill_mode_recovery_kills_the_group_before_requeueing(tmp_path: Path, durability: str) -> None:
    rig = Rig(tmp_path, fork=True, secs=30.0)
    proc = rig.spawn(submit=["longjob"], durability=durability)
    rig.wait_starts(1)
    _, _, pid, start = rig.starts()[0]
    _sigkill(proc)
    # The worker is the leader's child: PDEATHSIG does not reach it.
    time.sleep(0.1)
    assert _alive(int(pid), start), "the grandchild outlives the scheduler (the case recovery exists for)"
    s = JobScheduler("fifo", journal=rig.journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    assert not _alive(int(pid), start), "killed during recovery, before anything can rerun"
    # Batched, its start may not have reached the journal before the crash
    # (then it is merely queued again); sync, it was committed before the
    # spawn. Its process record was committed before the spawn either way.
    if durability == "sync":
        assert s.recovery["requeued"] == [1]
    else:
        assert s.recovery["requeued"] + s.recovery["queued"] == [1]
    assert s.get_job(1).state.value == "QUEUED"
    assert not _marked(rig.journal)
    s.close()


def test_recovery_does_not_kill_a_reused_pid(tmp_path: Path) -> None:
    # A record whose pid now belongs to another process (other start time):
    # left alone.
    rig = Rig(tmp_path)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        table = JobTable("fifo", str(rig.journal))
        table.process_intent(7, "x:7")
        start = JobTable.proc_start_time(other.pid)
        assert start is not None
        table.process_spawned(7, other.pid, other.pid)
        # Pretend it started at another time: a reused pid.
        import sqlite3

        with sqlite3.connect(rig.journal) as db:
            db.execute("UPDATE processes SET start_time = ?", (start - 1,))
        plan = table.recovery_plan("kill")
        assert [d["verdict"] for d in plan] == ["gone"]
        JobScheduler("fifo", journal=rig.journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        assert other.poll() is None, "an unrelated process with a reused pid was killed"
    finally:
        other.kill()
        other.wait()


def test_adopt_mode_keeps_the_survivor_running_and_waits_for_it(tmp_path: Path) -> None:
    rig = Rig(tmp_path, mode="adopt", fork=False, secs=2.0)
    quotas_db = tmp_path / "quotas.db"
    q = LocalQuotaProvider(path=quotas_db)
    q.set_quota("p", cpu_quota=2)
    proc = rig.spawn(submit=["adoptee"], quotas=str(quotas_db), project="p")
    rig.wait_starts(1)
    _, _, pid, start = rig.starts()[0]
    _sigkill(proc)
    assert _alive(int(pid), start), "adopt mode: the command outlives its scheduler"
    assert q.usage("p").cpu == 1

    async def recover() -> None:
        s = JobScheduler("fifo", journal=rig.journal, cpu_cores=8, recovery_mode="adopt", poll_interval=0.02,
                         stats_provider=SimulatedSystem(gpus=[]).snapshot_async, quotas=q)
        assert s.recovery["adopted"] == [1]
        assert s.get_job(1).state.value == "RUNNING"
        assert _alive(int(pid), start), "adopted, not killed"
        assert q.usage("p").cpu == 1, "its quota stays held (re-attached)"
        assert s.get_scheduler_stats()["resource_utilization"]["cpu"] > 0, "its cores are held again"
        async with s:
            job = await s.wait_job(1, timeout=30)
        assert job.state.value == "COMPLETED"
        assert job.result is None, "exit status unknown for a process that is not our child"
        assert not _alive(int(pid), start)
        reasons = [h["reason"] or "" for h in s.history(1)]
        assert any("adopted" in r for r in reasons) and any("cannot be known" in r for r in reasons)

    asyncio.run(recover())
    assert len(rig.starts()) == 1, "ran once, never rerun"
    assert ["end", "adoptee", pid] in rig.lines(), "the survivor finished its work"
    assert q.usage("p").cpu == 0, "released once, when it ended"
    assert q.quota_holds("") == []


def test_quota_held_across_a_crash_is_released_exactly_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, fork=True, secs=30.0)
    quotas_db = tmp_path / "quotas.db"
    q = LocalQuotaProvider(path=quotas_db)
    q.set_quota("p", cpu_quota=2)
    proc = rig.spawn(submit=["qa", "qb"], quotas=str(quotas_db), project="p")
    rig.wait_starts(2)
    _sigkill(proc)
    assert q.usage("p").cpu == 2, "both jobs held the quota when the scheduler died"
    assert len(q.quota_holds("")) == 2

    def reopen() -> JobScheduler:
        return JobScheduler("fifo", journal=rig.journal, cpu_cores=8, poll_interval=0.02,
                            stats_provider=SimulatedSystem(gpus=[]).snapshot_async, quotas=q)

    s = reopen()
    # Both run again: requeued, or (batched durability: the SIGKILL came within
    # flush_interval of their start) still queued as far as the journal knows.
    assert {s.get_job(j).state.value for j in (1, 2)} == {"QUEUED"}
    assert set(s.recovery["requeued"]) <= {1, 2}
    assert q.usage("p").cpu == 0, "released at recovery"
    assert q.quota_holds("") == []
    s.close()  # one scheduler per journal: the first gives it up
    reopen()  # a second recovery (another crash right after): nothing released twice
    assert q.usage("p").cpu == 0
    assert q.check_quota("p", Resources(cpu=2), "batch"), "the project is not refused forever"
    # And the jobs run again, taking and releasing it.
    (rig.lockdir / "fast").touch()
    proc = rig.spawn(quotas=str(quotas_db), project="p")
    done = json.loads(_read_line(proc, "DONE "))
    proc.wait(10)
    assert done == {"qa": "COMPLETED", "qb": "COMPLETED"}
    assert q.usage("p").cpu == 0
    assert not [x for x in rig.lines() if x[0] == "DOUBLE"]


def test_recovery_mode_is_checked() -> None:
    with pytest.raises(ValueError, match="recovery_mode"):
        JobScheduler("fifo", journal=None, recovery_mode="keep")


def _sleeper(env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(30)"], env=env, start_new_session=True
    )


def test_a_process_spawned_but_not_recorded_is_found_by_its_marker(tmp_path: Path) -> None:
    # The scheduler died between the spawn and the write of its pid: only
    # the intent and the marker in the process's environment are left.
    journal = tmp_path / "jobs.db"
    table = JobTable("fifo", str(journal))
    journal_id = table.journal_id()
    assert journal_id is not None
    token = JobTable.marker_token(journal_id, 1)
    table.process_intent(1, token)
    stray = _sleeper(dict(os.environ, PLUGIN_SCHEDULING_JOB=token))
    try:
        time.sleep(0.2)  # its environment is the child's own once it has exec'd
        assert [d["verdict"] for d in table.recovery_plan("kill")] == ["kill"]
        JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        assert stray.wait(5) == -signal.SIGKILL
        assert table.processes() == []
    finally:
        stray.kill()
        stray.wait()


OWNER = textwrap.dedent(
    """
    import sys, time
    from plugin_scheduling._core import JobTable
    table = JobTable("fifo", sys.argv[1], own=True)
    print("OWNED", flush=True)
    time.sleep(60)
    """
)


def test_a_live_owner_is_refused_before_recovery_signals_anything(tmp_path: Path) -> None:
    # The journal's one owner (its owner table) decides whose records these
    # are: a scheduler refused because a live one owns the journal kills
    # nothing, not even a process the records name.
    journal = tmp_path / "jobs.db"
    job = _sleeper()
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(journal)], env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None and owner.stdout.readline().strip() == "OWNED"
        table = JobTable("fifo", str(journal))  # a viewer: owns nothing
        table.process_intent(1, "x:1")
        table.process_spawned(1, job.pid, job.pid)
        assert [d["verdict"] for d in table.recovery_plan("kill")] == ["kill"], "its process would be killed"
        with pytest.raises(JournalError, match=f"owned by a running scheduler, pid {owner.pid}"):
            JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        time.sleep(0.1)
        assert job.poll() is None, "the live owner's job was left alone"
        assert len(table.processes()) == 1, "and its record too"
        _sigkill(owner)
        s = JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        assert job.wait(5) == -signal.SIGKILL, "the dead owner's survivor is killed by the one taking over"
        assert table.processes() == []
        s.close()
    finally:
        for p in (owner, job):
            p.kill()
            p.wait()


def test_adopt_mode_log_files_are_rotated_by_the_scheduler(tmp_path: Path) -> None:
    """Adopt mode: the command writes its file itself (O_APPEND); the
    scheduler's check copies the end to .1 and truncates, and the command's
    next write lands at the start of the truncated file."""
    from plugin_scheduling import _joblogs

    d = _joblogs.checked_directory(str(tmp_path / "j.db"))
    sink = _joblogs.Sink(d, 7, "stdout", 4096, direct=True)
    assert sink.fd is not None
    child_fd = os.dup(sink.fd)  # what the command holds (the same open file)
    os.write(child_fd, b"a\n" * 2500 + b"END-OF-FIRST\n")
    sink.check()
    os.write(child_fd, b"after\n")
    os.close(child_fd)
    assert (d / "7.stdout.log").read_bytes() == b"after\n"
    old = (d / "7.stdout.log.1").read_bytes()
    assert len(old) == 4096 and old.endswith(b"END-OF-FIRST\n")
    assert _joblogs.read(d, 7, "stdout", 2) == ("END-OF-FIRST\nafter\n", True)
    sink.close()
    again = _joblogs.Sink(d, 7, "stdout", 4096)  # a new attempt: the previous one's output moves to .1
    again.close()
    assert (d / "7.stdout.log.1").read_bytes() == b"after\n" and (d / "7.stdout.log").read_bytes() == b""


def test_a_log_directory_that_is_a_symlink_fails_the_command_with_the_reason(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "j.db.logs").symlink_to(elsewhere)
    s = JobScheduler(journal=tmp_path / "j.db", poll_interval=0.01)
    from plugin_scheduling.jobs import Command

    job_id = s.submit_job("echo", run=Command(["echo", "hi"]))
    s.run_until_complete(timeout=30)
    job = s.get_job(job_id)
    assert job.state.value == "FAILED" and "j.db.logs" in (job.error or ""), job
    assert list(elsewhere.iterdir()) == []  # nothing written through the link
    assert s._table.processes() == []  # no process record left behind


def test_a_second_scheduler_of_this_process_is_refused_before_it_kills(tmp_path: Path) -> None:
    journal = tmp_path / "jobs.db"
    job = _sleeper()
    try:
        first = JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        table = JobTable("fifo", str(journal))
        table.process_intent(1, "x:1")
        table.process_spawned(1, job.pid, job.pid)
        with pytest.raises(JournalError, match=r"close\(\) it first"):
            JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        time.sleep(0.1)
        assert job.poll() is None, "the first scheduler's process was left alone"
        first.close()
        second = JobScheduler("fifo", journal=journal, cpu_cores=8, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        assert job.wait(5) == -signal.SIGKILL, "closed: the next owner recovers its leftovers"
        second.close()
    finally:
        job.kill()
        job.wait()


class HoldingQuotas:
    """A provider that records holders (as ``LocalQuotaProvider`` on SQLite)
    and notes the thread of every call; ``gate`` holds the recovery's
    release until the test lets it go (on the loop it would freeze it)."""

    supports_holds = True

    def __init__(self, held: list[str]) -> None:
        self.held = list(held)
        self.gate = threading.Event()
        self.gate.set()
        self.calls: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()

    def _note(self, call: str, holder: str) -> None:
        with self.lock:
            self.calls.append((call, holder, threading.get_ident()))

    def quota_holds(self, prefix: str) -> list[str]:
        self._note("holds", prefix)
        return [h for h in self.held if h.startswith(prefix)]

    def release_quota_held(self, holder: str) -> bool:
        self.gate.wait(20)
        self._note("release_held", holder)
        with self.lock:
            if holder in self.held:
                self.held.remove(holder)
                return True
        return False

    def allocate_quota_held(self, holder: str, project: str, resources: Any, job_type: str) -> bool:
        self._note("allocate_held", holder)
        with self.lock:
            if holder not in self.held:
                self.held.append(holder)
        return True

    def check_quota(self, project: str, resources: Any, job_type: str) -> bool:
        self._note("check", project)
        return True

    def allocate_quota(self, project: str, resources: Any, job_type: str) -> bool:
        raise AssertionError("a provider with holds is charged by holder")

    def release_quota(self, project: str, resources: Any, job_type: str) -> None:
        raise AssertionError("a provider with holds is released by holder")


def _journal_with_holders(journal: Path, jobs: Sequence[int]) -> list[str]:
    table = JobTable("fifo", str(journal))
    journal_id = table.journal_id()
    assert journal_id is not None
    return [JobTable.marker_token(journal_id, j) for j in jobs]


def test_recovery_releases_held_quota_off_the_loop_and_once(tmp_path: Path) -> None:
    journal = tmp_path / "jobs.db"
    holders = _journal_with_holders(journal, [1001, 1002])  # held by jobs of an earlier incarnation
    quotas = HoldingQuotas(holders)
    quotas.gate.clear()  # the recovery's release blocks until let go
    new_holder: list[str] = []

    async def main() -> None:
        loop_thread = threading.get_ident()
        t0 = time.monotonic()
        s = JobScheduler("fifo", journal=journal, cpu_cores=8, poll_interval=0.02, quotas=quotas,
                         stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
        assert time.monotonic() - t0 < 5, "made inside the loop: the constructor does not wait for the quota store"
        ticks = 0
        while ticks < 5:  # the loop runs while the release blocks
            await asyncio.sleep(0.01)
            ticks += 1
        assert quotas.held == holders, "not released yet: it waits in the quota thread"
        quotas.gate.set()
        job = s.submit_job("q", project="p", estimated_duration=0.01)
        new_holder.append(holders[0].rsplit(":", 1)[0] + f":{job}")
        async with s:  # start() waits for the recovery's release
            done = await s.wait_job(job, timeout=20)
        assert done.state.value == "COMPLETED"
        s.close()
        assert loop_thread not in {t for _c, _h, t in quotas.calls}, "no quota call on the event loop"

    asyncio.run(main())
    released = [h for c, h, _t in quotas.calls if c == "release_held"]
    assert sorted(released[:2]) == sorted(holders), "each earlier holder released once, first"
    assert released.count(holders[0]) == 1 and released.count(holders[1]) == 1
    allocations = [h for c, h, _t in quotas.calls if c == "allocate_held"]
    assert allocations == new_holder, "the new job is charged by its holder"
    assert released[-1] == allocations[0], "and released by it when it ends"
    assert quotas.held == []


def test_recovery_outside_a_loop_releases_before_the_constructor_returns(tmp_path: Path) -> None:
    journal = tmp_path / "jobs.db"
    holders = _journal_with_holders(journal, [5])
    quotas = HoldingQuotas(holders)
    s = JobScheduler("fifo", journal=journal, cpu_cores=8, quotas=quotas,
                     stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    assert quotas.held == [], "released by the time it returns"
    assert threading.get_ident() not in {t for _c, _h, t in quotas.calls}, "in the quota thread"
    s.close()
    JobScheduler("fifo", journal=journal, cpu_cores=8, quotas=quotas,
                 stats_provider=SimulatedSystem(gpus=[]).snapshot_async).close()
    assert [h for c, h, _t in quotas.calls if c == "release_held"] == holders, "never twice"

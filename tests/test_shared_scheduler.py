"""``ReservationScheduler(shared=...)`` (issue 13): one ledger and one line of
waiters for every process of a user on the host, without a daemon.

Real processes throughout (``tests/shared_ledger_worker.py``): 4 processes × 8
threads never over-commit a card, SIGKILLed holders and waiters are reclaimed,
a release in one process wakes a waiter of another (sync and async, with poll
intervals far longer than the tests allow), Ctrl-C leaves the line, a forked
child holds its own grants, four ``uvicorn`` workers share one card, and the
reference ``PluginManager`` in two processes takes turns. Bad files, modes and
policies are refused naming what is wrong."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from plugin_scheduling import ManualClock, ReservationScheduler, SharedLedgerError, SimulatedSystem
from plugin_scheduling._core import _shared_ledger_view

HERE = Path(__file__).parent
WORKER = HERE / "shared_ledger_worker.py"
CARD = 24_000


def meta(name: str, vram: float) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram}})


def eventually(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


def shared(path: Path, **kw: Any) -> ReservationScheduler:
    kw = {"settle_s": 0, "headroom": 1.0, "timeout": 60, "poll_interval": 60, **kw}
    return ReservationScheduler(shared=str(path), **kw)


def worker(*args: str, **kw: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(WORKER), *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def finish(p: subprocess.Popen[str], timeout: float = 120) -> str:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (p.returncode, out, err)
    return out


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    return tmp_path / "ledger" / "gpu"


def view(path: Path) -> dict[str, Any]:
    return _shared_ledger_view(str(path))


# ----------------------------------------------------------------------------- one process, two schedulers


def test_two_schedulers_share_one_line_and_wake_each_other(ledger: Path) -> None:
    sim = SimulatedSystem(gpus=[CARD])
    a, b = shared(ledger), shared(ledger)
    assert a.shared == b.shared == ledger
    assert a.allocate(meta("big", 20_000), sim)
    a.on_execution_start("big")
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(b.allocate(meta("next", 20_000), sim)))
    t.start()
    eventually(lambda: [w["plugin"] for w in a.snapshot()["waiters"]] == ["next"])
    snap = a.snapshot()
    assert snap["shared"] == ledger
    assert [(g["plugin"], g["pid"]) for g in snap["grants"]] == [("big", os.getpid())]
    assert snap["waiters"][0]["pid"] == os.getpid() and snap["waiters"][0]["process"]
    why = b.explain(meta("third", 20_000), sim)
    assert why["would_wait"] and why["waiting_ahead"] == 1 and "big" in why["reason"]
    assert [(g["plugin"], g["pid"]) for g in why["grants"]] == [("big", os.getpid())]
    assert [(w["plugin"], w["pid"]) for w in why["waiters"]] == [("next", os.getpid())]
    a.on_execution_finish("big")  # wakes b's waiter (poll_interval is 60 s)
    t.join(30)
    assert got == [True]
    assert [g["plugin"] for g in a.snapshot()["grants"]] == ["next"]
    b.on_execution_finish("next")
    assert view(ledger)["grants"] == [] and view(ledger)["waiters"] == []
    assert view(ledger)["policy"] == "fifo"
    assert "shared=" in repr(a) and oct(ledger.stat().st_mode & 0o777) == "0o600"


def test_a_process_finishes_only_its_own_grants(ledger: Path, caplog: pytest.LogCaptureFixture) -> None:
    code = (
        "import sys; from shared_ledger_worker import *\n"
        "s = ReservationScheduler(shared=sys.argv[1], settle_s=0, headroom=1.0)\n"
        "assert s.allocate(meta('llm', 8000), SimulatedSystem(gpus=[CARD_MB]))\n"
        "s.on_execution_start('llm')\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    holder = subprocess.Popen([sys.executable, "-c", code + "import time; time.sleep(600)", str(ledger)],
                              env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ok"
        s = shared(ledger)
        with caplog.at_level(logging.WARNING, logger="plugin_scheduling"):
            s.on_execution_finish("llm")  # not this process's grant: nothing released
        assert [g["pid"] for g in view(ledger)["grants"]] == [holder.pid]
        assert s.get_active_plugins() == {"llm"}  # one ledger: what runs on the card
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------- many processes


def test_four_processes_of_eight_threads_never_over_commit(ledger: Path, tmp_path: Path) -> None:
    tracker = tmp_path / "tracker"
    tracker.write_text("0 0")
    procs = [worker("stress", str(ledger), str(tracker), "8", "12") for _ in range(4)]
    for p in procs:
        assert finish(p, timeout=240).strip() == "ok"
    held, peak = (int(x) for x in tracker.read_text().split())
    assert held == 0
    assert 10_000 <= peak <= CARD  # never more than two 10 GB plugins on the 24 GB card
    state = view(ledger)
    assert state["grants"] == [] and state["waiters"] == []


def test_a_sigkilled_holder_is_reclaimed_and_the_waiter_proceeds(
    ledger: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ready = tmp_path / "ready"
    holder = worker("hold", str(ledger), str(ready))
    try:
        eventually(ready.exists)
        s = shared(ledger, poll_interval=0.2, timeout=30)
        sim = SimulatedSystem(gpus=[CARD])
        got: list[bool] = []
        t = threading.Thread(target=lambda: got.append(s.allocate(meta("next", 20_000), sim)))
        with caplog.at_level(logging.INFO, logger="plugin_scheduling"):
            t.start()
            eventually(lambda: [w["plugin"] for w in view(ledger)["waiters"]] == ["next"])
            assert [g["pid"] for g in view(ledger)["grants"]] == [holder.pid]
            holder.kill()  # SIGKILL: no chance to release
            holder.wait()
            t.join(30)
        assert got == [True]
        assert [g["plugin"] for g in view(ledger)["grants"]] == ["next"]
        assert any("reclaimed the grant of holder" in r.getMessage() and str(holder.pid) in r.getMessage()
                   for r in caplog.records)
        s.on_execution_finish("next")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_sigkilled_waiter_leaves_the_line(ledger: Path, tmp_path: Path) -> None:
    s = shared(ledger)
    sim = SimulatedSystem(gpus=[CARD])
    assert s.allocate(meta("holder", 20_000), sim)
    ready = tmp_path / "ready"
    waiter = worker("wait", str(ledger), str(ready))
    eventually(ready.exists)
    assert [w["pid"] for w in s.snapshot()["waiters"]] == [waiter.pid]
    waiter.kill()
    waiter.wait()
    # Dropped by the first operation once its owner has not been seen alive
    # for ALIVE_FOR (0.2 s).
    eventually(lambda: s.snapshot()["waiters"] == [], timeout=5)
    # The line still works: another waiter gets the card on release.
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(shared(ledger).allocate(meta("after", 20_000), sim)))
    t.start()
    eventually(lambda: [w["plugin"] for w in s.snapshot()["waiters"]] == ["after"])
    s.on_execution_finish("holder")
    t.join(30)
    assert got == [True]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_release_wakes_a_waiter_of_another_process(ledger: Path, tmp_path: Path, mode: str) -> None:
    s = shared(ledger)
    sim = SimulatedSystem(gpus=[CARD])
    assert s.allocate(meta("holder", 20_000), sim)
    s.on_execution_start("holder")
    ready = tmp_path / "ready"
    waiter = worker("wait", str(ledger), str(ready), mode)  # its poll_interval is 60 s
    eventually(ready.exists)
    s.on_execution_finish("holder")
    out = finish(waiter, timeout=45)
    kind, seconds = out.split()
    # Granted long before its own poll would have looked again: the release woke it.
    assert kind == "granted" and float(seconds) < 45
    assert view(ledger)["grants"] == []


def test_ctrl_c_ends_a_wait_and_leaves_the_line(ledger: Path, tmp_path: Path) -> None:
    s = shared(ledger)
    assert s.allocate(meta("holder", 20_000), SimulatedSystem(gpus=[CARD]))
    ready = tmp_path / "ready"
    waiter = worker("wait", str(ledger), str(ready))
    eventually(ready.exists)
    waiter.send_signal(signal.SIGINT)
    assert finish(waiter, timeout=30).strip() == "interrupted 0"
    assert s.snapshot()["waiters"] == []


LOCKED_OUT = """
import sys
from plugin_scheduling import ReservationScheduler, SimulatedSystem
from shared_ledger_worker import meta
s = ReservationScheduler(shared=sys.argv[1]) if sys.argv[2] == "op" else None
print("ready", flush=True)
sys.stdin.readline()
try:
    if s is None:
        ReservationScheduler(shared=sys.argv[1])
    else:
        s.allocate(meta("x", 1000), SimulatedSystem(gpus=[24000]))
    print("not blocked", flush=True)
except KeyboardInterrupt:
    print("interrupted", flush=True)
"""


@pytest.mark.parametrize("stage", ["open", "op"])
def test_ctrl_c_while_another_process_holds_the_lock(ledger: Path, stage: str) -> None:
    """A process stopped while holding the file's lock (a debugger, SIGSTOP)
    blocks the others; they wait with the GIL released and Ctrl-C still works."""
    shared(ledger)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    victim = subprocess.Popen([sys.executable, "-c", LOCKED_OUT, str(ledger), stage], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert victim.stdout is not None and victim.stdin is not None
    assert victim.stdout.readline().strip() == "ready"
    locker = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); "
         "print('locked', flush=True); time.sleep(600)", str(ledger)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert locker.stdout is not None
        assert locker.stdout.readline().strip() == "locked"
        victim.stdin.write("go\n")
        victim.stdin.flush()
        # Blocked in flock (state S, in the kernel's lock wait) before Ctrl-C.
        eventually(lambda: "lock" in Path(f"/proc/{victim.pid}/wchan").read_text(), timeout=30)
        victim.send_signal(signal.SIGINT)
        out, _ = victim.communicate(timeout=30)
        assert out.strip() == "interrupted"
    finally:
        for p in (victim, locker):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_a_cancelled_async_wait_leaves_the_shared_line(ledger: Path) -> None:
    s = shared(ledger)
    sim = SimulatedSystem(gpus=[CARD])
    assert s.allocate(meta("holder", 20_000), sim)

    async def main() -> None:
        task = asyncio.create_task(s.allocate_async(meta("waiter", 20_000), sim.snapshot_async))
        while not s.snapshot()["waiters"]:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.snapshot()["waiters"] == []
        timed = ReservationScheduler(shared=str(ledger), settle_s=0, headroom=1.0, timeout=0.2, poll_interval=0.05)
        assert await timed.allocate_async(meta("late", 20_000), sim.snapshot_async) is False
        assert s.snapshot()["waiters"] == []

    asyncio.run(main())
    assert s._pending_wakers() == 0


def test_a_forked_child_holds_its_own_grants(ledger: Path) -> None:
    s = shared(ledger)
    sim = SimulatedSystem(gpus=[CARD])
    assert s.allocate(meta("parent", 8000), sim)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its grant is its own, under its pid
        try:
            os.close(r)
            ok = s.allocate(meta("child", 8000), sim)
            mine = [g["plugin"] for g in s.snapshot()["grants"] if g["pid"] == os.getpid()]
            os.write(w, json.dumps({"ok": ok, "mine": mine}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        seen = json.loads(f.read())
    os.waitpid(pid, 0)
    assert seen == {"ok": True, "mine": ["child"]}
    # The child is gone: its grant is reclaimed, the parent's stays.
    eventually(lambda: [(g["plugin"], g["pid"]) for g in s.snapshot()["grants"]] == [("parent", os.getpid())],
               timeout=5)


# ----------------------------------------------------------------------------- real hosts


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_uvicorn_workers_share_one_card(ledger: Path, tmp_path: Path) -> None:
    import httpx

    tracker = tmp_path / "tracker"
    tracker.write_text("0 0")
    port = _free_port()
    env = {**os.environ, "SHARED_LEDGER": str(ledger), "SHARED_TRACKER": str(tracker),
           "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "shared_ledger_app:app", "--workers", "4", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"],
        env=env, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(trust_env=False, timeout=5) as client:
            def up() -> bool:
                try:
                    return client.get(f"{url}/health").status_code == 200
                except httpx.HTTPError:
                    return False
            eventually(up, timeout=60)

        async def hammer() -> list[dict[str, Any]]:
            async with httpx.AsyncClient(trust_env=False, timeout=120,
                                         limits=httpx.Limits(max_connections=32)) as client:
                responses = await asyncio.gather(*(client.get(f"{url}/run") for _ in range(200)))
            assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
            return [r.json() for r in responses]

        results = asyncio.run(hammer())
        held, peak = (int(x) for x in tracker.read_text().split())
        assert held == 0 and peak <= CARD, (held, peak)
        assert max(r["held"] for r in results) <= CARD
        assert len({r["pid"] for r in results}) >= 2, "the requests were not spread over the workers"
        assert view(ledger)["grants"] == []
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()


def test_the_reference_plugin_manager_in_two_processes(ledger: Path, tmp_path: Path) -> None:
    roots = [tmp_path / "a" / "host", tmp_path / "b" / "host"]
    for r in roots:
        r.mkdir(parents=True)
    procs = [worker("manager", str(ledger), str(r), name) for r, name in zip(roots, ["alpha", "beta"])]
    try:
        for r in roots:
            eventually(lambda r=r: (r / "loaded").exists(), timeout=90)
        most = 0
        seen_waiting = False
        for r in roots:
            (r.parent / "go").write_text("1")
        while any(p.poll() is None for p in procs):
            state = view(ledger)
            most = max(most, len(state["grants"]))
            seen_waiting |= bool(state["waiters"])
            time.sleep(0.005)
        for p in procs:
            assert finish(p).strip().endswith("ok")
        assert most == 1  # two 20 GB plugins of two managers never on the 24 GB card at once
        assert seen_waiting
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# ----------------------------------------------------------------------------- files, modes, policies


def test_bad_files_are_refused_naming_the_path(tmp_path: Path) -> None:
    bad = tmp_path / "corrupt"
    bad.write_bytes(b"PSLEDGER 1 99\n{not json")
    bad.chmod(0o600)
    with pytest.raises(SharedLedgerError, match=str(bad)):
        shared(bad)
    newer = tmp_path / "newer"
    newer.write_bytes(b"PSLEDGER 7 2\n{}")
    newer.chmod(0o600)
    with pytest.raises(SharedLedgerError, match="newer"):
        shared(newer)
    with pytest.raises(SharedLedgerError, match=f"{tmp_path}: cannot open it"):
        shared(tmp_path)  # a directory


def test_another_users_file_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a file of another user")  # the core's test covers the rule
    path = tmp_path / "theirs"
    path.write_bytes(b"")
    os.chown(path, 65534, 65534)
    path.chmod(0o600)
    with pytest.raises(SharedLedgerError, match="owned by uid 65534"):
        shared(path)


def test_modes(tmp_path: Path) -> None:
    group = tmp_path / "group" / "gpu"
    shared(group, mode=0o660)
    assert group.stat().st_mode & 0o777 == 0o660
    assert group.parent.stat().st_mode & 0o777 == 0o770
    with pytest.raises(ValueError, match="mode must let the owner read and write"):
        shared(tmp_path / "x", mode=0o400)
    with pytest.raises(ValueError, match="mode"):
        shared(tmp_path / "x", mode=0o1777)
    with pytest.raises(ValueError, match="applies to a shared ledger"):
        ReservationScheduler(mode=0o660)
    with pytest.raises(TypeError, match="shared must be"):
        ReservationScheduler(shared=3.5)  # type: ignore[arg-type]


def test_default_ledger_lives_in_the_runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    s = ReservationScheduler(shared=True)
    assert s.shared == tmp_path / "plugin-scheduling" / "default"
    assert ReservationScheduler(shared="gpu0").shared == tmp_path / "plugin-scheduling" / "gpu0"
    assert ReservationScheduler(shared=False).shared is None
    assert ReservationScheduler().shared is None


def test_policies_on_a_shared_ledger(ledger: Path) -> None:
    sim = SimulatedSystem(gpus=[CARD])
    a = shared(ledger, policy="priority")
    with pytest.raises(SharedLedgerError, match="fair_share"):
        shared(ledger, policy="fair_share")  # keeps history in one process

    class Mine:
        name = "mine"

        def select_next_job(self, queue: Any, jobs: Any) -> Any:
            return jobs[0] if jobs else None

    with pytest.raises(ValueError, match="decides in Python"):
        shared(ledger, policy=Mine())
    assert a.allocate(meta("holder", 20_000), sim)
    # While the ledger is in use, a process with another order is refused.
    with pytest.raises(SharedLedgerError, match='in use with policy "priority"'):
        shared(ledger, policy="fifo")
    a.on_execution_finish("holder")
    shared(ledger, policy="fifo")  # an idle ledger takes the new order


def test_priority_orders_waiters_of_different_schedulers(ledger: Path) -> None:
    clock = ManualClock(1_000.0)
    sim = SimulatedSystem(gpus=[CARD])
    s1, s2 = shared(ledger, policy="priority", clock=clock), shared(ledger, policy="priority", clock=clock)
    holder = s1._reserve(meta("holder", 20_000), sim)
    low = s1._begin_wait(meta("low", 20_000), priority=10)
    clock.advance(1)
    high = s2._begin_wait(meta("high", 20_000), priority=90)
    assert low.offer(sim.snapshot()) is None and high.offer(sim.snapshot()) is None
    assert [w["plugin"] for w in s1.snapshot()["waiters"]] == ["high", "low"]
    s1._release_grant(holder.id)
    assert high.my_turn() and not low.my_turn()
    assert high.claim() is not None or high.offer(sim.snapshot()) is not None
    low.leave()
    high.leave()

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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
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


LOCKER = (
    "import fcntl, os, signal, sys; f = open(sys.argv[1], 'rb'); fcntl.flock(f, fcntl.LOCK_EX); "
    "print('locked', flush=True); os.kill(os.getpid(), signal.SIGSTOP) if sys.argv[2] == 'stop' else None; "
    "import time; time.sleep(600)"
)


def _locker(ledger: Path, how: str) -> subprocess.Popen[str]:
    locker = subprocess.Popen([sys.executable, "-c", LOCKER, str(ledger), how], stdout=subprocess.PIPE, text=True)
    assert locker.stdout is not None
    assert locker.stdout.readline().strip() == "locked"
    if how == "stop":
        eventually(lambda: Path(f"/proc/{locker.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T")
    return locker


def _end(*procs: subprocess.Popen[str]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGCONT)
            p.kill()
            p.wait()


@pytest.mark.parametrize("stage", ["open", "op"])
def test_ctrl_c_while_another_process_holds_the_lock(ledger: Path, stage: str) -> None:
    """A process stopped while holding the file's lock (a debugger, SIGSTOP):
    opening needs no lock; an operation waits for it with the GIL released
    and Ctrl-C still works."""
    shared(ledger)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    victim = subprocess.Popen([sys.executable, "-c", LOCKED_OUT, str(ledger), stage], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert victim.stdout is not None and victim.stdin is not None
    assert victim.stdout.readline().strip() == "ready"
    locker = _locker(ledger, "stop")
    try:
        victim.stdin.write("go\n")
        victim.stdin.flush()
        if stage == "open":
            out, _ = victim.communicate(timeout=30)
            assert out.strip() == "not blocked"
            return
        time.sleep(0.3)  # waiting for the lock (its default timeout is 300 s)
        assert victim.poll() is None
        victim.send_signal(signal.SIGINT)
        out, _ = victim.communicate(timeout=30)
        assert out.strip() == "interrupted"
    finally:
        _end(victim, locker)


def test_a_stopped_lock_holder_fails_others_within_their_timeout(ledger: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 24 #2: SIGSTOP of the lock's holder freezes nobody: an
    operation fails within about its scheduler's timeout naming the holder
    (pid, name, stopped); views, the CLI and a new scheduler need no lock."""
    from plugin_scheduling.__main__ import main

    s = shared(ledger, timeout=1)
    assert s.allocate(meta("held", 1000), SimulatedSystem(gpus=[CARD]))
    locker = _locker(ledger, "stop")
    try:
        start = time.monotonic()
        with pytest.raises(SharedLedgerError, match=f"held by pid {locker.pid} \\(python[0-9.]*, stopped") as info:
            s.allocate(meta("x", 1000), SimulatedSystem(gpus=[CARD]))
        assert time.monotonic() - start < 10
        assert str(ledger) in str(info.value)
        start = time.monotonic()
        assert [g["plugin"] for g in s.snapshot()["grants"]] == ["held"]
        assert [g["plugin"] for g in view(ledger)["grants"]] == ["held"]
        again = shared(ledger, timeout=0.5)
        assert again.shared == ledger
        assert main(["ledger", str(ledger)]) == 0
        assert "held" in capsys.readouterr().out
        assert time.monotonic() - start < 10
    finally:
        _end(locker)
    s.on_execution_finish("held")
    assert view(ledger)["grants"] == []


KILL_LOOP = """
import sys
from types import SimpleNamespace
from plugin_scheduling import ReservationScheduler, SimulatedSystem
s = ReservationScheduler(shared=sys.argv[1], settle_s=0, headroom=1.0, timeout=60, poll_interval=60)
m = SimpleNamespace(name="k", manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 1.0}})
stats = SimulatedSystem(gpus=[1e9]).snapshot()
s._release_grant(s._reserve(m, lambda: stats).id)
print("ready", flush=True)
while True:
    s._release_grant(s._reserve(m, lambda: stats).id)
"""


def test_sigkills_mid_write_never_corrupt_the_ledger(ledger: Path) -> None:
    """Issue 24 #1 (the 5,000-kill run is the core's ignored
    `sigkill_5000_with_1000_held`): a process SIGKILLed while it writes a
    many-page ledger leaves it whole: readable with and without the lock,
    the held grants all there."""
    held = 150
    s = shared(ledger)
    big = SimulatedSystem(gpus=[1e9])
    for i in range(held):
        assert s.allocate(meta(f"held{i}", 1.0), big)
    assert ledger.stat().st_size > 3 * 4096
    for k in range(12):
        child = subprocess.Popen([sys.executable, "-c", KILL_LOOP, str(ledger)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        time.sleep(0.001 * (k * 7 % 13))
        child.kill()
        child.wait()
        assert len(view(ledger)["grants"]) == held, k
        assert len(s.snapshot()["grants"]) == held, k
        assert s.allocate(meta("probe", 1.0), big) and s.on_execution_finish("probe") is None


def test_wake_sockets_of_exited_processes_are_removed(ledger: Path) -> None:
    """Issue 24 #16: a process removes its wake socket at exit; one that was
    SIGKILLed has its socket swept by the next process to open the ledger."""
    shared(ledger)
    script = (
        "import sys, threading\n"
        "from types import SimpleNamespace\n"
        "from plugin_scheduling import ReservationScheduler, SimulatedSystem\n"
        "s = ReservationScheduler(shared=sys.argv[1], settle_s=0, headroom=1.0, timeout=0.2, poll_interval=0.05)\n"
        "m = SimpleNamespace(name='w', manifest={'resources': {'requires_gpu': True, 'min_gpu_vram_mb': 30000}})\n"
        "s.allocate(m, SimulatedSystem(gpus=[24000]))\n"
        "print('waited', flush=True)\n"
        "sys.stdin.readline() if sys.argv[2] == 'hang' else None\n"
    )
    sockets = lambda: sorted(p.name for p in ledger.parent.iterdir() if ".wake-" in p.name)  # noqa: E731
    before = sockets()
    clean = subprocess.run([sys.executable, "-c", script, str(ledger), "exit"], capture_output=True, text=True, timeout=60)
    assert clean.stdout.strip() == "waited", clean.stderr
    assert sockets() == before
    hung = subprocess.Popen([sys.executable, "-c", script, str(ledger), "hang"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert hung.stdout is not None
    assert hung.stdout.readline().strip() == "waited"
    assert len(sockets()) == len(before) + 1
    hung.kill()
    hung.wait()
    shared(ledger)
    assert sockets() == before


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
        # Every worker up before the load (on a busy machine the first one can
        # answer long before the others have started): new connections are
        # spread by the kernel, so distinct pids show up once they listen.
        seen: set[int] = set()
        def up() -> bool:
            try:
                with httpx.Client(trust_env=False, timeout=5) as client:
                    r = client.get(f"{url}/health", headers={"Connection": "close"})
                    if r.status_code == 200:
                        seen.add(int(r.json()["pid"]))
            except httpx.HTTPError:
                pass
            return len(seen) >= 2
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


@pytest.mark.parametrize("mode", [0o666, 0o777, 0o606, 0o604, 0o644])
def test_modes_open_to_other_users_are_refused(tmp_path: Path, mode: int) -> None:
    """Issue 24 #6: other users may not read (lock) nor write a ledger."""
    with pytest.raises(ValueError, match=f"mode.*{oct(mode)}"):
        shared(tmp_path / "x" / "gpu", mode=mode)
    assert not (tmp_path / "x" / "gpu").exists()


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    """Issue 24 #6: a symlink at the ledger's path (to a file of ours) or as
    its directory is refused; nothing is written through it."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"")
    (tmp_path / "gpu").symlink_to(victim)
    with pytest.raises(SharedLedgerError, match="symbolic link"):
        shared(tmp_path / "gpu")
    with pytest.raises(SharedLedgerError, match="symbolic link"):
        view(tmp_path / "gpu")
    assert victim.read_bytes() == b""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "linked").symlink_to(real)
    with pytest.raises(SharedLedgerError, match="symbolic link"):
        shared(tmp_path / "linked" / "gpu")
    assert list(real.iterdir()) == []


def test_a_directory_open_to_others_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    with pytest.raises(SharedLedgerError, match="writable by every user"):
        shared(open_dir / "gpu")
    group_dir = tmp_path / "group"
    group_dir.mkdir()
    group_dir.chmod(0o770)
    with pytest.raises(SharedLedgerError, match="writable by its group"):
        shared(group_dir / "gpu")  # a private ledger in a group-writable directory
    shared(group_dir / "gpu", mode=0o660)  # a group ledger of our own group: fine


PRECREATED = """
import os, sys
from plugin_scheduling import ReservationScheduler, SharedLedgerError
try:
    ReservationScheduler(shared=True)
    print("accepted")
except SharedLedgerError as e:
    print("refused:", e)
"""


@pytest.mark.parametrize("kind", ["symlink", "foreign"])
def test_a_precreated_default_directory_is_refused(tmp_path: Path, kind: str) -> None:
    """Issue 24 #6: with XDG_RUNTIME_DIR unset, another user's pre-created
    <tmp>/plugin-scheduling-<uid> (a symlink, or a directory of theirs) is
    never used."""
    target = tmp_path / "elsewhere"
    target.mkdir()
    default = tmp_path / f"plugin-scheduling-{os.geteuid()}"
    if kind == "symlink":
        default.symlink_to(target)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to make a directory of another user")
        default.mkdir(mode=0o700)
        os.chown(default, 65534, 65534)
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(tmp_path)
    run = subprocess.run([sys.executable, "-c", PRECREATED], env=env, capture_output=True, text=True, timeout=60)
    assert run.stdout.startswith("refused:"), (run.stdout, run.stderr)
    assert ("symbolic link" if kind == "symlink" else "owned by uid 65534") in run.stdout
    assert list(target.iterdir()) == []


def test_another_user_cannot_read_lock_or_use_a_ledger(ledger: Path) -> None:
    """Issue 24 #6 with a real other user (root only): uid 65534 can neither
    open our ledger (to read or lock it) nor view it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become another user")
    s = shared(ledger)
    assert s.allocate(meta("mine", 1000), SimulatedSystem(gpus=[CARD]))
    script = (
        "import fcntl, os, sys\n"
        "from plugin_scheduling import ReservationScheduler, SharedLedgerError\n"
        "from plugin_scheduling._core import _shared_ledger_view\n"
        "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
        "try:\n"
        "    fcntl.flock(open(sys.argv[1], 'rb'), fcntl.LOCK_EX | fcntl.LOCK_NB); print('locked')\n"
        "except OSError as e:\n"
        "    print('open refused', e.errno)\n"
        "for f in (lambda: ReservationScheduler(shared=sys.argv[1]), lambda: _shared_ledger_view(sys.argv[1])):\n"
        "    try:\n"
        "        f(); print('used')\n"
        "    except (SharedLedgerError, OSError) as e:\n"
        "        print('refused')\n"
    )
    run = subprocess.run([sys.executable, "-c", script, str(ledger)], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.stdout.split("\n")[:3] == ["open refused 13", "refused", "refused"], (run.stdout, run.stderr)
    assert [g["plugin"] for g in view(ledger)["grants"]] == ["mine"]


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

"""Who owns a reservation (issue 24, findings 3-5).

* 4: each execution owns its grant. Threads running the same plugin name pair
  ``on_execution_start``/``on_execution_finish`` with their own grants (FIFO per
  name); a grant made for a waiter that has not collected it yet is nobody's
  execution; a duplicate finish never releases another running thread's grant;
  a lease's grant is never touched by name.
* 3: ``fork()`` while threads use the scheduler (shared or private): the child
  starts clean and never hangs on a lock inherited from its parent.
* 5: a waiter seen dead (its event loop closed) leaves the line at once: the
  next fitting allocate is not delayed by it.

Time comes from a ``ManualClock`` where the rule is about time; hangs fail
through pytest-timeout and bounded waits, never by asserting on speed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from plugin_scheduling import ManualClock, ReservationScheduler, SimulatedSystem

LOGGER = "plugin_scheduling.ReservationScheduler"


def meta(name: str, vram_mb: float) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram_mb}})


def fixed_card(total: float = 24000.0):
    stats = SimulatedSystem(gpus=[total])()
    return lambda: stats


def held(s: ReservationScheduler) -> list[tuple[str, bool]]:
    return [(g["plugin"], g["started"]) for g in s.snapshot()["grants"]]


# ----------------------------------------------------------------- 4. owners


def _cycles(s: ReservationScheduler, threads: int, cycles: int) -> tuple[int, list[BaseException]]:
    """``threads`` threads x ``cycles`` allocate/start/finish cycles of plugins
    named by size (so names repeat across threads); returns the timeouts."""
    sizes = [2000, 4000, 6000, 8000]
    provider = fixed_card()
    timeouts = [0]
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        try:
            for k in range(cycles):
                vram = sizes[(i + k) % len(sizes)]
                name = f"p{vram}"
                if not s.allocate(meta(name, vram), provider):
                    with lock:
                        timeouts[0] += 1
                    continue
                s.on_execution_start(name)
                s.on_execution_finish(name)
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(240)
    assert not any(t.is_alive() for t in ts), "a worker hung"
    return timeouts[0], errors


@pytest.mark.timeout(240)
def test_threads_sharing_plugin_names_lose_no_grant_private() -> None:
    # Before: 222-1,142 of 2,400 allocates timed out on a free card (a grant
    # made for one waiter was started or finished by another thread's name-
    # based call, and its waiter left the line empty-handed).
    s = ReservationScheduler(timeout=30, poll_interval=0.05, settle_s=0, start_timeout=3600)
    timeouts, errors = _cycles(s, threads=8, cycles=1250)
    assert errors == []
    assert timeouts == 0
    snap = s.snapshot()
    assert snap["grants"] == [] and snap["waiters"] == []
    assert snap["reserved_vram_mb"] == {}


@pytest.mark.timeout(300)
def test_threads_sharing_plugin_names_lose_no_grant_shared(tmp_path: Path) -> None:
    s = ReservationScheduler(
        timeout=30, poll_interval=0.05, settle_s=0, start_timeout=3600, shared=str(tmp_path / "ledger")
    )
    timeouts, errors = _cycles(s, threads=8, cycles=1250)
    assert errors == []
    assert timeouts == 0
    snap = s.snapshot()
    assert snap["grants"] == [] and snap["waiters"] == []


def _in_thread(f):
    out: list = []
    t = threading.Thread(target=lambda: out.append(f()))
    t.start()
    t.join(30)
    assert not t.is_alive()
    return out[0] if out else None


def test_a_duplicate_finish_never_releases_another_running_threads_grant(caplog: pytest.LogCaptureFixture) -> None:
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0, headroom=1.0)
    card = fixed_card(24000.0)
    started = threading.Event()
    release = threading.Event()

    def other_execution() -> None:  # a web request running "llm" in its own thread
        assert s.allocate(meta("llm", 12000), card)
        s.on_execution_start("llm")
        started.set()
        release.wait(30)
        s.on_execution_finish("llm")

    t = threading.Thread(target=other_execution)
    t.start()
    assert started.wait(30)
    assert s.allocate(meta("llm", 12000), card)
    s.on_execution_start("llm")
    s.on_execution_finish("llm")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        s.on_execution_finish("llm")  # one too many
    assert held(s) == [("llm", True)]  # the other execution keeps its grant
    assert "llm" in caplog.text and "nothing released" in caplog.text
    # ... so a second 12 GB execution is not admitted beside it.
    assert s.allocate(meta("big", 12001), card) is False
    release.set()
    t.join(30)
    assert held(s) == []


def test_an_execution_that_fails_before_starting_releases_its_own_grant() -> None:
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    card = fixed_card()
    other = threading.Event()
    done = threading.Event()

    def runner() -> None:
        assert s.allocate(meta("w", 3000), card)
        s.on_execution_start("w")
        other.set()
        done.wait(30)
        s.on_execution_finish("w")

    t = threading.Thread(target=runner)
    t.start()
    assert other.wait(30)
    assert s.allocate(meta("w", 3000), card)  # this thread: allocated, then fails
    s.on_execution_finish("w")
    assert held(s) == [("w", True)]  # the runner's started grant is untouched
    done.set()
    t.join(30)
    assert held(s) == []


def test_start_pairs_with_the_threads_own_grant() -> None:
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    card = fixed_card()
    assert s.allocate(meta("w", 1000), card)  # main: the older grant
    first = s.snapshot()["grants"][0]["id"]
    go = threading.Event()

    def second() -> None:
        assert s.allocate(meta("w", 1000), card)
        s.on_execution_start("w")  # its own grant, not main's older one
        go.set()

    _in_thread(second)
    assert go.is_set()
    grants = {g["id"]: g["started"] for g in s.snapshot()["grants"]}
    assert grants[first] is False and sum(grants.values()) == 1
    # The second thread has ended: its execution is an orphan, anyone's.
    s.on_execution_finish("w")
    s.on_execution_finish("w")
    assert held(s) == []


def test_a_hand_off_to_another_thread_still_works() -> None:
    # Allocated in a thread that has ended, started and finished here.
    s = ReservationScheduler(timeout=0, poll_interval=0.01, settle_s=0)
    card = fixed_card()
    assert _in_thread(lambda: s.allocate(meta("h", 1000), card)) is True
    s.on_execution_start("h")
    assert held(s) == [("h", True)]
    s.on_execution_finish("h")
    assert held(s) == []


def test_a_lease_is_its_own_from_the_moment_it_is_granted() -> None:
    s = ReservationScheduler(timeout=5, poll_interval=0.01, settle_s=0)
    card = fixed_card()
    with s.lease(meta("w", 1000), card) as grant:
        s.on_execution_start("w")
        s.on_execution_finish("w")
        assert [g["id"] for g in s.snapshot()["grants"]] == [grant.id]
    assert held(s) == []


# ----------------------------------------------------------------- 3. fork

FORK_WHILE_ALLOCATING = """
import os, signal, sys, tempfile, threading, time, warnings
from types import SimpleNamespace
import plugin_scheduling as ps

CHILDREN, BOUND_S, MODE = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
kw = {"shared": os.path.join(tempfile.mkdtemp(), "ledger")} if MODE == "shared" else {}
s = ps.ReservationScheduler(timeout=30, poll_interval=0.05, settle_s=0, **kw)
sim = ps.SimulatedSystem(gpus=[24000.0])

def meta(n, v):
    return SimpleNamespace(name=n, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": v}})

stop = threading.Event()

def hammer(i):
    while not stop.is_set():
        name = f"p{i % 3}"
        if s.allocate(meta(name, 6000), sim):
            s.on_execution_start(name)
            s.on_execution_finish(name)

threads = [threading.Thread(target=hammer, args=(i,), daemon=True) for i in range(6)]
for t in threads:
    t.start()
time.sleep(0.1)
warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads
for n in range(CHILDREN):
    pid = os.fork()
    if pid == 0:  # the child: one thread, whatever the parent's were doing
        code = 1
        try:
            ok = s.allocate(meta("child", 1000), sim)
            s.on_execution_start("child")
            s.on_execution_finish("child")
            snap = s.snapshot()
            mine = [g for g in snap["grants"] if g["plugin"] == "child"]
            # A private queue's waiters are the parent's threads': none in
            # the child. (A shared one's are the parent's, still waiting.)
            clean = MODE == "shared" or not snap["waiters"]
            code = 0 if ok and not mine and clean else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + BOUND_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if os.waitstatus_to_exitcode(status) != 0:
                print(f"child {n} failed: status {status}")
                sys.exit(1)
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            print(f"child {n} of {CHILDREN} hung for {BOUND_S} s after fork")
            sys.exit(1)
        time.sleep(0.005)
stop.set()
print("all children finished")
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.timeout(280)
@pytest.mark.parametrize("mode", ["shared", "private"])
def test_children_forked_while_threads_allocate_never_hang(mode: str) -> None:
    # Before: 11-28 of 100 children hung on a lock of the shared ledger's
    # handle that a parent thread held at the fork.
    children, bound_s = 50, 20.0
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_WHILE_ALLOCATING), str(children), str(bound_s), mode],
        capture_output=True,
        text=True,
        timeout=260,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "all children finished" in result.stdout


# ----------------------------------------------------------------- 5. dead waiters


def _dead_async_waiters(s: ReservationScheduler, n: int, provider, subscribed: bool = True) -> list:
    """``n`` async allocates whose event loop is closed while they wait (in
    their wake-or-timer sleep, or, unless ``subscribed``, reading stats)."""
    kept = []

    async def astats():
        if not subscribed:
            await asyncio.Event().wait()  # never returns: the loop closes meanwhile
        return provider()

    for i in range(n):
        loop = asyncio.new_event_loop()
        task = loop.create_task(s.allocate_async(meta(f"dead{i}", 5000), astats))
        for _ in range(20):
            loop.run_until_complete(asyncio.sleep(0))
        loop.close()  # the task never runs again
        kept.append((loop, task))
    return kept


@pytest.mark.timeout(60)
@pytest.mark.parametrize("dead", [5, 20, 1200])  # 1200: walked in a loop, not by recursion
def test_waiters_whose_loop_closed_leave_the_line_and_delay_nobody(dead: int, caplog: pytest.LogCaptureFixture) -> None:
    # Before: each dead waiter was passed over after claim_timeout but kept its
    # place: 5 dead waiters cost a fitting allocate 3 s, 20 cost 10 s. Here the
    # clock never moves, so a live allocate behind a dead waiter would wait
    # until `timeout` (and return False).
    clock = ManualClock()
    s = ReservationScheduler(timeout=20, poll_interval=30, settle_s=0, headroom=1.0, clock=clock)
    card = fixed_card(10000.0)
    assert s.allocate(meta("holder", 10000), card)
    s.on_execution_start("holder")
    kept = _dead_async_waiters(s, dead, card)
    assert len(s.snapshot()["waiters"]) == dead
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        s.on_execution_finish("holder")  # wakes the head: its loop is closed
    assert s.snapshot()["waiters"] == []
    assert "dead0 left the line" in caplog.text
    assert s.allocate(meta("live", 10000), card) is True
    assert [g["plugin"] for g in s.snapshot()["grants"]] == ["live"]
    del kept


@pytest.mark.timeout(60)
def test_a_dead_waiter_found_passed_over_leaves_the_line(caplog: pytest.LogCaptureFixture) -> None:
    # Its loop closed while it awaited its stats, so no wake reaches it: after
    # claim_timeout (on the clock) it is passed over, seen dead, and leaves.
    clock = ManualClock()
    s = ReservationScheduler(timeout=20, poll_interval=30, settle_s=0, headroom=1.0, clock=clock)
    card = fixed_card(10000.0)
    assert s.allocate(meta("holder", 10000), card)
    s.on_execution_start("holder")
    kept = _dead_async_waiters(s, 1, card, subscribed=False)
    s.on_execution_finish("holder")
    assert len(s.snapshot()["waiters"]) == 1
    clock.advance(1.5)  # past claim_timeout
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert s.allocate(meta("live", 10000), card) is True
    assert "dead0 left the line" in caplog.text
    assert s.snapshot()["waiters"] == []
    del kept

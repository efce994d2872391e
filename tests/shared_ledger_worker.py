"""A process on a shared ledger, for ``test_shared_scheduler.py`` (run as
``python tests/shared_ledger_worker.py MODE LEDGER [ARGS...]``).

Modes:

* ``stress LEDGER TRACKER THREADS ROUNDS``: threads of allocate / start /
  finish of 10 GB plugins on a 24 GB card; while a plugin "runs" the
  cross-process tracker counts its memory (and fails the process if the
  card would be over-committed).
* ``hold LEDGER READY``: reserves 20 GB, writes READY, then sleeps until killed.
* ``wait LEDGER READY [async]``: writes READY once in line, waits for 20 GB
  with a long poll interval (only a wake-up from another process can end the
  wait in time), then prints ``granted <seconds>`` and releases. On Ctrl-C
  it prints ``interrupted <waiters left>`` and exits 0.
* ``manager LEDGER ROOT NAME``: the reference ``PluginManager`` on the
  shared ledger executes one probe plugin needing 20 GB (with ``sleep``).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from plugin_scheduling import ReservationScheduler, SimulatedSystem

CARD_MB = 24_000


def meta(name: str, vram: float) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram}})


def track(tracker: Path, delta: int) -> int:
    """Adds ``delta`` MB to what is really held on the card (all processes);
    returns the new total and keeps the largest total seen."""
    with open(tracker, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        held, peak = (int(x) for x in (f.read().split() or ["0", "0"]))
        held += delta
        peak = max(peak, held)
        f.seek(0)
        f.truncate()
        f.write(f"{held} {peak}")
        return held


def stress(ledger: str, tracker: str, threads: int, rounds: int) -> None:
    # Every process reads the whole card free (as NVML does while models are
    # still loading): only the shared ledger stands between them and over-commit.
    sim = SimulatedSystem(gpus=[CARD_MB])
    s = ReservationScheduler(shared=ledger, settle_s=0, headroom=1.0, timeout=120, poll_interval=0.5)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        name = f"p{os.getpid()}-{t}"
        try:
            for _ in range(rounds):
                assert s.allocate(meta(name, 10_000), sim), "timed out"
                s.on_execution_start(name)
                held = track(Path(tracker), 10_000)
                assert held <= CARD_MB, f"over-committed: {held} MB held"
                for _ in range(50):
                    os.sched_yield()
                track(Path(tracker), -10_000)
                s.on_execution_finish(name)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    pool = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for p in pool:
        p.start()
    for p in pool:
        p.join()
    if errors:
        raise errors[0]
    print("ok", flush=True)


def hold(ledger: str, ready: str) -> None:
    s = ReservationScheduler(shared=ledger, settle_s=0, headroom=1.0, timeout=30)
    assert s.allocate(meta("holder", 20_000), SimulatedSystem(gpus=[CARD_MB]))
    s.on_execution_start("holder")
    Path(ready).write_text(str(os.getpid()))
    time.sleep(600)


def wait(ledger: str, ready: str, mode: str) -> None:
    sim = SimulatedSystem(gpus=[CARD_MB])
    s = ReservationScheduler(shared=ledger, settle_s=0, headroom=1.0, timeout=120, poll_interval=60)

    def in_line() -> None:
        while not any(w["pid"] == os.getpid() for w in s.snapshot()["waiters"]):
            time.sleep(0.01)
        Path(ready).write_text(str(os.getpid()))

    threading.Thread(target=in_line, daemon=True).start()
    started = time.monotonic()
    try:
        if mode == "async":
            assert asyncio.run(s.allocate_async(meta("waiter", 20_000), sim.snapshot_async))
        else:
            assert s.allocate(meta("waiter", 20_000), sim)
    except KeyboardInterrupt:
        mine = [w for w in s.snapshot()["waiters"] if w["pid"] == os.getpid()]
        print(f"interrupted {len(mine)}", flush=True)
        return
    print(f"granted {time.monotonic() - started:.3f}", flush=True)
    s.on_execution_finish("waiter")


def manager(ledger: str, root: str, name: str) -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import PROBE_PLUGIN_SOURCE, probe_manifest, running_cjm_host

    s = ReservationScheduler(shared=ledger, settle_s=0, headroom=1.0, timeout=120, poll_interval=0.5)
    sim = SimulatedSystem(gpus=[CARD_MB])
    manifest = probe_manifest(name, {"requires_gpu": True, "min_gpu_vram_mb": 20_000}, module="shared_probe",
                              description="shared ledger probe")
    with running_cjm_host(Path(root), sources={"shared_probe.py": PROBE_PLUGIN_SOURCE}, manifests=[manifest],
                          scheduler=s) as env:
        env.manager._get_global_stats = sim.snapshot
        Path(root, "loaded").write_text("1")
        while not Path(root).parent.joinpath("go").exists():
            time.sleep(0.01)
        for _ in range(2):
            result = env.manager.execute_plugin(name, sleep=0.3)
            assert result["plugin"] == name, result
    print("ok", flush=True)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "stress":
        stress(args[0], args[1], int(args[2]), int(args[3]))
    elif mode == "hold":
        hold(args[0], args[1])
    elif mode == "wait":
        wait(args[0], args[1], args[2] if len(args) > 2 else "sync")
    elif mode == "manager":
        manager(args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown mode {mode!r}")

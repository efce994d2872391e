"""Regression tests for what a hostile tester and a new user hit (issue 8):
fork safety of ``SystemMonitor``, huge numbers naming their field, exact
``SimulatedSystem`` accounting, and the async/sync provider mix-ups.

Forking runs in a subprocess (never fork the test runner itself).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import os
import re
import signal
import subprocess
import sys
import sysconfig
import textwrap
import time
import tomllib
import warnings
from types import SimpleNamespace

import pytest

import plugin_scheduling as ps

# ---------------------------------------------------------------- fork (item 3)

FORK_WHILE_READING = """
import os, signal, sys, threading, time
import plugin_scheduling as ps

CHILDREN, BOUND_S = int(sys.argv[1]), float(sys.argv[2])
monitor = ps.SystemMonitor(min_refresh=0)  # every call reads the machine (locks held)
sim = ps.SimulatedSystem(gpus=[1000.0], host=monitor)
monitor()
stop = threading.Event()

def reader():
    while not stop.is_set():
        monitor()
        sim()

threads = [threading.Thread(target=reader, daemon=True) for _ in range(4)]
for t in threads:
    t.start()
for n in range(CHILDREN):
    pid = os.fork()
    if pid == 0:  # the child: one thread, whatever the parent's were doing
        code = 1
        try:
            stats, simulated = monitor(), sim()
            monitor.invalidate()
            monitor._fresh()
            code = 0 if stats["memory_total_mb"] > 0 and simulated["gpu_total_memory_mb"] == 1000.0 else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + BOUND_S
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
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
@pytest.mark.timeout(240)
def test_monitor_works_in_children_forked_while_other_threads_read_it():
    # On the base commit 26 of 60 children hung: a lock held by a reading
    # thread at fork() is inherited locked, and that thread is gone.
    children, bound_s = 40, 10.0
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORK_WHILE_READING), str(children), str(bound_s)],
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all children finished" in result.stdout


# ---------------------------------------------------------------- huge numbers (item 10)

HUGE = 10**400


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ps.QueueScheduler(timeout=HUGE), "timeout"),
        (lambda: ps.QueueScheduler(poll_interval=HUGE), "poll_interval"),
        (lambda: ps.QueueScheduler(5.0, -HUGE), "poll_interval"),
        (lambda: ps.SystemMonitor(min_refresh=HUGE), "min_refresh"),
        (lambda: ps.SystemMonitor(min_refresh=1e300), "min_refresh"),
        (lambda: ps.SimulatedSystem(gpus=[HUGE]), "gpus[0]"),
        (lambda: ps.SimulatedSystem(gpus=[1000.0, 1e300]), "total_mb"),
        (lambda: ps.SimulatedSystem(ram_total_mb=HUGE), "ram_total_mb"),
        (lambda: ps.SimulatedSystem(cpu_percent=HUGE), "cpu_percent"),
        (lambda: ps.SimulatedSystem().occupy(HUGE), "mb"),
        (lambda: ps.SimulatedSystem().occupy(1e300), "mb"),
        (lambda: ps.SimulatedSystem().free(HUGE), "mb"),
        (lambda: ps.SimulatedSystem().occupy_ram(HUGE), "mb"),
        (lambda: ps.SimulatedSystem().free_ram(HUGE), "mb"),
        (lambda: ps.SimulatedSystem().set_load(0, HUGE), "percent"),
        (lambda: ps.SimulatedSystem().at(HUGE, 1.0), "seconds"),
        (lambda: ps.SimulatedSystem().at(1.0, HUGE), "used_mb"),
    ],
)
def test_huge_numbers_raise_a_value_error_naming_the_field(make, field):
    with pytest.raises(ValueError, match=re.escape(field)) as caught:
        make()
    assert not isinstance(caught.value, OverflowError)
    assert len(str(caught.value)) < 300  # a 401-digit value is shortened, not quoted whole


def test_huge_queue_setting_through_the_setter_names_the_field():
    scheduler = ps.QueueScheduler()
    with pytest.raises(ValueError, match="timeout"):
        scheduler.timeout = HUGE
    assert scheduler.timeout == 300.0  # unchanged


@pytest.mark.parametrize("device", [10**30, HUGE, -(10**30), 2**64, -1, 7])
@pytest.mark.parametrize("method", ["occupy", "free", "set_load", "at"])
def test_out_of_range_devices_raise_an_index_error_naming_the_device(device, method):
    sim = ps.SimulatedSystem(gpus=[1000.0])
    call = {
        "occupy": lambda: sim.occupy(1.0, device=device),
        "free": lambda: sim.free(1.0, device=device),
        "set_load": lambda: sim.set_load(device, 1.0),
        "at": lambda: sim.at(0.0, 1.0, device=device),
    }[method]
    with pytest.raises(IndexError, match="device") as caught:
        call()
    assert not isinstance(caught.value, OverflowError)


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ps.SimulatedSystem().occupy("1"), "mb"),
        (lambda: ps.SimulatedSystem().occupy(1, device=1.0), "device"),
        (lambda: ps.SimulatedSystem().occupy(1, device="0"), "device"),
        (lambda: ps.SimulatedSystem(gpus="24576"), "gpus"),
        (lambda: ps.SimulatedSystem(gpus=24576), "gpus"),
        (lambda: ps.SimulatedSystem(gpus=["24576"]), "gpus[0]"),
        (lambda: ps.SimulatedSystem(ram_total_mb=None or "x"), "ram_total_mb"),
        (lambda: ps.SimulatedSystem().at("soon", 1.0), "seconds"),
    ],
)
def test_wrong_types_raise_a_type_error_naming_the_field(make, field):
    with pytest.raises(TypeError, match=re.escape(field)):
        make()


# ---------------------------------------------------------------- exact accounting (item 11)


@pytest.mark.parametrize("ram", [False, True])
def test_occupy_and_free_in_any_order_never_drift(ram):
    sim = ps.SimulatedSystem(gpus=[8192.0], ram_total_mb=8192.0)
    occupy, free = (sim.occupy_ram, sim.free_ram) if ram else (sim.occupy, sim.free)
    occupy(3300.0000000000005)
    occupy(796)
    free(796)
    free(3300.0000000000005)  # base commit: "only 3300 MB is occupied"
    key = "memory_used_mb" if ram else "gpu_used_memory_mb"
    assert sim()[key] == 0.0
    for _ in range(1000):
        occupy(0.1)
    for _ in range(1000):
        free(0.1)
    assert sim()[key] == 0.0
    occupy(8191.9)  # exactly what is free fits
    occupy(0.1)
    with pytest.raises(ps.SimulatedOutOfMemory):
        occupy(0.001)


# ---------------------------------------------------------------- async mix-ups (item 15)

GPU_META = SimpleNamespace(name="whisper", manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 4096}})


@pytest.mark.parametrize("make", [ps.PermissiveScheduler, ps.SafetyScheduler, lambda: ps.QueueScheduler(timeout=0.1)])
def test_a_sync_provider_given_to_allocate_async_says_what_to_pass(make):
    monitor = ps.SimulatedSystem(gpus=[8000.0])
    with pytest.raises(TypeError, match=r"stats_provider returned a dict; allocate_async needs an async provider such as monitor\.snapshot_async") as caught:
        asyncio.run(make().allocate_async(GPU_META, monitor))  # monitor, not monitor.snapshot_async
    assert isinstance(caught.value.__cause__, TypeError)  # the original "can't be used in 'await'"


@pytest.mark.parametrize("make", [ps.SafetyScheduler, lambda: ps.QueueScheduler(timeout=0.1)])
def test_a_type_error_raised_inside_an_async_provider_is_passed_through(make):
    async def provider():
        raise TypeError("the provider's own bug")

    with pytest.raises(TypeError, match="the provider's own bug"):
        asyncio.run(make().allocate_async(GPU_META, provider))


def test_blocking_queue_allocate_inside_a_running_loop_warns_once():
    scheduler = ps.QueueScheduler(timeout=0.05, poll_interval=0.01)
    busy = lambda: {"gpu_free_memory_mb": 100.0}  # noqa: E731

    async def main():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert scheduler.allocate(GPU_META, busy) is False
            assert scheduler.allocate(GPU_META, busy) is False  # once per scheduler
        return caught

    caught = asyncio.run(main())
    assert len(caught) == 1, [str(w.message) for w in caught]
    [warning] = caught
    assert warning.category is RuntimeWarning
    assert warning.filename == __file__  # points at the caller's line
    message = str(warning.message)
    assert "running event loop" in message and "'whisper'" in message and "allocate_async" in message


def test_blocking_queue_allocate_warns_not_when_admitted_or_outside_a_loop():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ps.QueueScheduler(timeout=0.05, poll_interval=0.01).allocate(GPU_META, lambda: {"gpu_free_memory_mb": 100.0}) is False

        async def main():
            return ps.QueueScheduler().allocate(GPU_META, lambda: {"gpu_free_memory_mb": 8000.0})

        assert asyncio.run(main()) is True  # admitted at once: nothing blocked


# ---------------------------------------------------------------- discoverability (item 14)

SIGNATURES = {
    ps.QueueScheduler: "(timeout=300.0, poll_interval=2.0)",
    ps.SafetyScheduler: "()",
    ps.PermissiveScheduler: "()",
    ps.SimulatedSystem: "(gpus=[24576.0], ram_total_mb=65536.0, cpu_percent=0.0, host=None)",
    ps.SystemMonitor: "(min_refresh=0.1)",
}


@pytest.mark.parametrize("cls", list(SIGNATURES), ids=lambda c: c.__name__)
def test_classes_show_their_real_signature_and_document_every_option(cls):
    signature = inspect.signature(cls)
    assert str(signature) == SIGNATURES[cls]
    doc = cls.__doc__ or ""
    for name in signature.parameters:
        assert f"`{name}`" in doc, f"{cls.__name__} docstring does not describe {name}"
    if not signature.parameters:
        assert "No options" in doc


def test_the_signatures_match_what_the_constructors_accept():
    for cls, text in SIGNATURES.items():
        kwargs = {name: p.default for name, p in inspect.signature(cls).parameters.items()}
        instance = cls(**kwargs)
        assert type(instance) is cls, text
    assert repr(ps.QueueScheduler(**{"timeout": 300.0, "poll_interval": 2.0})) == "QueueScheduler(timeout=300.0, poll_interval=2.0)"


def test_mypy_strict_accepts_the_builtins_as_resource_schedulers_and_typed_stats(tmp_path):
    # Base commit: "Incompatible types ... expected ResourceScheduler" for every built-in.
    snippet = os.path.join(os.path.dirname(__file__), "typing_snippet.py")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from plugin_scheduling import ReservationScheduler, SystemMonitor\n"
        "ReservationScheduler(on_missing_stats='sometimes')\n"
        "x: str = SystemMonitor()()['gpu_free_memory_mb']\n"
    )
    command = [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", str(tmp_path / "cache")]
    good = subprocess.run([*command, snippet], capture_output=True, text=True, timeout=240)
    assert good.returncode == 0, good.stdout + good.stderr
    rejected = subprocess.run([*command, str(bad)], capture_output=True, text=True, timeout=240)
    assert rejected.returncode == 1, rejected.stdout + rejected.stderr
    assert "Literal['allow', 'block']" in rejected.stdout  # string options are Literal[...]
    assert 'has type "float | None", variable has type "str"' in rejected.stdout  # stats are a TypedDict


# ---------------------------------------------------------------- CLI and demo (items 14, 18)


def _console_script() -> str:
    script = os.path.join(sysconfig.get_path("scripts"), "plugin-scheduling")
    assert os.path.exists(script), f"the console script is not installed at {script} (pip install -e .)"
    return script


def test_cli_version_and_the_console_script_names_itself():
    for command, prog in (([_console_script()], "plugin-scheduling"), ([sys.executable, "-m", "plugin_scheduling"], "python -m plugin_scheduling")):
        version = subprocess.run([*command, "--version"], capture_output=True, text=True, timeout=60)
        assert version.returncode == 0, version.stderr
        assert version.stdout.strip() == f"{prog} {ps.__version__}"
        usage = subprocess.run([*command, "--help"], capture_output=True, text=True, timeout=60)
        assert usage.stdout.startswith(f"usage: {prog} "), usage.stdout


@pytest.mark.skipif(not hasattr(signal, "SIGINT") or os.name != "posix", reason="needs POSIX signals")
@pytest.mark.timeout(120)
def test_demo_ctrl_c_exits_quietly_with_130():
    demo = subprocess.Popen(
        [sys.executable, "-m", "plugin_scheduling", "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        seen = []
        assert demo.stdout is not None
        for line in demo.stdout:
            seen.append(line)
            if "ReservationScheduler(" in line:  # four plugin threads are starting, some waiting
                break
        else:
            pytest.fail("the demo ended before its ReservationScheduler part:\n" + "".join(seen))
        time.sleep(0.2)
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, (demo.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "all done" not in out  # it stopped, it did not run to the end


# ---------------------------------------------------------------- packaging (item 17)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _toml(name: str) -> dict:
    with open(os.path.join(ROOT, name), "rb") as f:
        return tomllib.load(f)


def test_one_version_source_cargo_and_the_package_agree():
    project = _toml("pyproject.toml")["project"]
    assert "version" not in project and "version" in project["dynamic"]  # maturin takes Cargo's
    cargo = _toml("Cargo.toml")["workspace"]["package"]["version"]
    assert ps.__version__ == cargo == importlib.metadata.version("plugin-scheduling")


def test_license_urls_and_dependencies_are_declared():
    with open(os.path.join(ROOT, "LICENSE"), encoding="utf-8") as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text) > 10_000  # the full text
    project = _toml("pyproject.toml")["project"]
    assert project["urls"]
    with open(os.path.join(ROOT, "python", "plugin_scheduling", "_core.pyi"), encoding="utf-8") as f:
        stubs_import_typing_extensions = "typing_extensions" in f.read()
    if stubs_import_typing_extensions:
        assert any(d.replace("-", "_").startswith("typing_extensions") for d in project["dependencies"])

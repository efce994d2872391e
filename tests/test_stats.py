"""Machine stats: ``SystemMonitor`` (live), ``SimulatedSystem`` (scripted), the
``python -m plugin_scheduling stats`` CLI, and both used as scheduler stats providers.

Everything that changes process-wide state (the NVML library override, fork, exit at
interpreter shutdown, the CLI) runs in a subprocess. The NVML paths are exercised
without a GPU: a missing / garbage / symbol-less library for the failure path, and a
tiny fake ``libnvidia-ml`` compiled from C (skipped without a C compiler) for the
"GPU present" path.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import psutil
import pytest

import plugin_scheduling as ps

NVML_ENV = "PLUGIN_SCHEDULING_NVML_LIBRARY"
MIB = 2**20

STATS_KEYS = {
    "cpu_percent",
    "memory_used_mb",
    "memory_total_mb",
    "memory_available_mb",
    "gpu_type",
    "gpu_free_memory_mb",
    "gpu_total_memory_mb",
    "gpu_used_memory_mb",
    "gpu_load_percent",
    "details",
}
GPU_FIGURES = ("gpu_free_memory_mb", "gpu_total_memory_mb", "gpu_used_memory_mb", "gpu_load_percent")
DETAILS_KEYS = {"gpus", "gpu_source", "gpu_unavailable"}
DEVICE_KEYS = {
    "index",
    "uuid",
    "name",
    "memory_total_mb",
    "memory_free_mb",
    "memory_used_mb",
    "utilization_gpu_percent",
    "utilization_memory_percent",
    "temperature_c",
    "power_w",
    "processes",
}
PROCESS_KEYS = {"pid", "used_gpu_mb", "name", "command"}
NO_GPU_WARNING = "[Scheduler] Warning: No GPU stats available.\n"


def gpu_plugin(vram=4096, ram=1024, name="p"):
    return SimpleNamespace(
        name=name,
        manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram, "min_system_ram_mb": ram}},
    )


def _opt_float(value):
    return value is None or type(value) is float


def check_shape(stats, source):
    """The cjm SystemStats dict, exactly: key set, value types, details structure."""
    assert type(stats) is dict
    assert set(stats) == STATS_KEYS
    for key in ("cpu_percent", "memory_used_mb", "memory_total_mb", "memory_available_mb"):
        assert type(stats[key]) is float, (key, stats[key])
        assert math.isfinite(stats[key]) and stats[key] >= 0, (key, stats[key])
    assert 0.0 <= stats["cpu_percent"] <= 100.0
    assert stats["memory_available_mb"] <= stats["memory_total_mb"]
    assert stats["gpu_type"] in ("NVIDIA", "None")
    details = stats["details"]
    assert type(details) is dict and set(details) == DETAILS_KEYS
    assert details["gpu_source"] == source
    assert details["gpu_unavailable"] is None or type(details["gpu_unavailable"]) is str
    gpus = details["gpus"]
    assert type(gpus) is list
    if not gpus:
        assert stats["gpu_type"] == "None"
        assert all(stats[k] is None for k in GPU_FIGURES), stats
        return
    assert stats["gpu_type"] == "NVIDIA"
    assert details["gpu_unavailable"] is None
    for key in GPU_FIGURES:
        assert type(stats[key]) is float, (key, stats[key])
    for position, gpu in enumerate(gpus):
        assert type(gpu) is dict and set(gpu) == DEVICE_KEYS, gpu
        assert type(gpu["index"]) is int and gpu["index"] == position
        assert type(gpu["uuid"]) is str and type(gpu["name"]) is str
        for key in ("memory_total_mb", "memory_free_mb", "memory_used_mb"):
            assert type(gpu[key]) is float, (key, gpu)
        for key in ("utilization_gpu_percent", "utilization_memory_percent", "temperature_c", "power_w"):
            assert _opt_float(gpu[key]), (key, gpu)
        assert type(gpu["processes"]) is list
        for proc in gpu["processes"]:
            assert type(proc) is dict and set(proc) == PROCESS_KEYS, proc
            assert type(proc["pid"]) is int
            assert _opt_float(proc["used_gpu_mb"])
            assert proc["name"] is None or type(proc["name"]) is str
            assert proc["command"] is None or type(proc["command"]) is str
    # The cjm monitors' aggregation: totals summed over devices, load the maximum.
    assert stats["gpu_total_memory_mb"] == pytest.approx(sum(g["memory_total_mb"] for g in gpus))
    assert stats["gpu_free_memory_mb"] == pytest.approx(sum(g["memory_free_mb"] for g in gpus))
    assert stats["gpu_used_memory_mb"] == pytest.approx(sum(g["memory_used_mb"] for g in gpus))
    loads = [g["utilization_gpu_percent"] for g in gpus if g["utilization_gpu_percent"] is not None]
    assert stats["gpu_load_percent"] == max(loads, default=0.0)


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k != NVML_ENV}
    env.update(extra)
    return env


def run_py(code, env=None, timeout=30, args=()):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )


def run_cli(*args, env=None, timeout=30):
    return subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else clean_env(),
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def live():
    """One reading of this machine (shared: the first reading waits ~200 ms)."""
    return ps.SystemMonitor()()


@pytest.fixture(scope="module")
def has_gpu(live):
    return bool(live["details"]["gpus"])


# ---------------------------------------------------------------- 1. shape and types


def test_system_monitor_shape(live):
    check_shape(live, "nvml")
    if not live["details"]["gpus"]:  # this machine: no GPU, no NVML library
        assert live["gpu_type"] == "None"
        assert "NVML" in live["details"]["gpu_unavailable"]


def test_system_monitor_call_and_snapshot_agree_and_repr():
    m = ps.SystemMonitor(min_refresh=60)
    assert m() == m.snapshot()
    assert type(m.min_refresh) is float and m.min_refresh == 60.0
    assert ps.SystemMonitor().min_refresh == pytest.approx(0.1)
    assert ps.SystemMonitor(min_refresh=0).min_refresh == 0.0
    assert "SystemMonitor" in repr(m)


def test_returned_dicts_are_independent_copies():
    m = ps.SystemMonitor(min_refresh=60)
    first = m()
    first["cpu_percent"] = 999.0
    first["details"]["gpus"].append("junk")
    first["details"]["gpu_source"] = "junk"
    again = m()
    assert again["cpu_percent"] != 999.0
    assert "junk" not in again["details"]["gpus"]
    assert again["details"]["gpu_source"] == "nvml"
    sim = ps.SimulatedSystem()
    s = sim()
    s["details"]["gpus"][0]["memory_used_mb"] = 5.0
    assert sim()["details"]["gpus"][0]["memory_used_mb"] == 0.0


def test_simulated_system_shape():
    sim = ps.SimulatedSystem(gpus=[8192.0, 4096.0], ram_total_mb=32768.0, cpu_percent=12.5)
    s = sim.snapshot()
    check_shape(s, "simulated")
    assert s == sim()
    assert s["gpu_type"] == "NVIDIA"
    assert s["details"]["gpu_unavailable"] is None
    assert [g["uuid"] for g in s["details"]["gpus"]] == ["SIM-GPU-0", "SIM-GPU-1"]
    assert all(g["processes"] == [] for g in s["details"]["gpus"])
    assert s["cpu_percent"] == 12.5
    assert (s["memory_total_mb"], s["memory_used_mb"], s["memory_available_mb"]) == (32768.0, 0.0, 32768.0)
    assert sim.gpu_count == 2


def test_simulated_system_defaults_and_no_gpu():
    s = ps.SimulatedSystem()()
    check_shape(s, "simulated")
    assert ps.SimulatedSystem().gpu_count == 1
    assert s["gpu_total_memory_mb"] == 24576.0 and s["gpu_free_memory_mb"] == 24576.0
    assert s["gpu_used_memory_mb"] == 0.0 and s["gpu_load_percent"] == 0.0
    assert s["memory_total_mb"] == 65536.0 and s["cpu_percent"] == 0.0
    none = ps.SimulatedSystem(gpus=[])
    s = none()
    check_shape(s, "simulated")
    assert none.gpu_count == 0
    assert s["gpu_type"] == "None"
    assert all(s[k] is None for k in GPU_FIGURES)


# ---------------------------------------------------------------- 2. RAM vs psutil


def test_ram_agrees_with_psutil():
    m = ps.SystemMonitor(min_refresh=0)
    before = psutil.virtual_memory()
    s = m()
    after = psutil.virtual_memory()
    assert abs(s["memory_total_mb"] - before.total / MIB) <= 1.0
    low = min(before.available, after.available) / MIB
    high = max(before.available, after.available) / MIB
    tolerance = max(0.05 * high, 256.0)
    assert low - tolerance <= s["memory_available_mb"] <= high + tolerance, (s, before, after)
    assert 0.0 < s["memory_used_mb"] < s["memory_total_mb"]


# ---------------------------------------------------------------- 3. CPU


def test_cpu_first_reading_and_under_load():
    m = ps.SystemMonitor(min_refresh=0)
    started = time.monotonic()
    first = m()["cpu_percent"]
    waited = time.monotonic() - started
    assert 0.0 <= first <= 100.0
    # The first reading is measured over a real interval (sysinfo's 200 ms), not 0.0 at t=0.
    assert 0.15 <= waited < 2.0, waited
    started = time.monotonic()
    assert 0.0 <= m()["cpu_percent"] <= 100.0
    assert time.monotonic() - started < 0.15  # only the first reading waits

    cpus = os.cpu_count() or 1
    busy = min(cpus, 4)
    # A generous bound: a quarter of what `busy` saturated CPUs would show, at most 5 %.
    threshold = min(5.0, 25.0 * busy / cpus)
    code = "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 0.6: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(busy)]
    for p in procs:
        assert p.wait(timeout=30) == 0
    loaded = m()["cpu_percent"]
    assert threshold < loaded <= 100.0, (loaded, threshold)


# ---------------------------------------------------------------- 4. cache and min_refresh


def test_cache_within_min_refresh_and_invalidate():
    m = ps.SystemMonitor(min_refresh=3600)
    first = m()
    blob = b"\x01" * (256 * MIB)  # touched pages: the machine's RAM figures move
    try:
        # Served from the cache: the very same values although the machine changed.
        assert m() == first
        assert m.snapshot() == first
        assert m._fresh() == first
        assert asyncio.run(m.snapshot_async()) == first
        m.invalidate()
        assert m._fresh() is None
        before = psutil.virtual_memory().available / MIB
        fresh = m()
        after = psutil.virtual_memory().available / MIB
        assert fresh != first
        # ... and the new reading is the machine now (the 256 MB blob included).
        tolerance = max(0.05 * max(before, after), 256.0)
        assert min(before, after) - tolerance <= fresh["memory_available_mb"] <= max(before, after) + tolerance
        assert m._fresh() == fresh
    finally:
        del blob


def test_cache_expires_after_min_refresh():
    m = ps.SystemMonitor(min_refresh=0.05)
    m()
    assert m._fresh() is not None
    time.sleep(0.08)
    assert m._fresh() is None
    zero = ps.SystemMonitor(min_refresh=0)
    zero()
    assert zero._fresh() is None  # min_refresh=0: never served from the cache


@pytest.mark.parametrize(
    "value, error",
    [
        (-1, ValueError),
        (-0.001, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1", TypeError),
        ("x", TypeError),
        ([], TypeError),
        (object(), TypeError),
    ],
)
def test_min_refresh_validation(value, error):
    with pytest.raises(error, match="min_refresh"):
        ps.SystemMonitor(min_refresh=value)
    with pytest.raises(error, match="min_refresh"):
        ps.SystemMonitor(value)


def test_min_refresh_too_large_is_a_value_error():
    try:
        ps.SystemMonitor(min_refresh=1e20)
    except ValueError as error:
        assert "min_refresh" in str(error)
    except OverflowError as error:
        assert "min_refresh" in str(error)
    else:  # accepting it (clamped) is fine too, as long as it does not panic
        pass


# ---------------------------------------------------------------- 5. NVML failure path

NVML_PROBE = """
import json, plugin_scheduling as ps
m = ps.SystemMonitor(min_refresh=0)
first = m()
second = m()
print(json.dumps([first, second]))
"""


def _nvml_failure_libraries(tmp_path):
    garbage = tmp_path / "libnvidia-ml.so.1"
    garbage.write_bytes(b"this is not an ELF file\x00" * 64)
    elf_header_only = tmp_path / "truncated.so"
    elf_header_only.write_bytes(b"\x7fELF" + b"\x00" * 60)
    return {
        "nonexistent": str(tmp_path / "no" / "such" / "libnvidia-ml.so.1"),
        "garbage": str(garbage),
        "truncated_elf": str(elf_header_only),
        "directory": str(tmp_path),
        "real_lib_without_nvml": "libm.so.6",
    }


@pytest.mark.parametrize("kind", ["nonexistent", "garbage", "truncated_elf", "directory", "real_lib_without_nvml"])
def test_nvml_failure_is_no_gpu(tmp_path, kind):
    path = _nvml_failure_libraries(tmp_path)[kind]
    result = run_py(NVML_PROBE, env=clean_env(**{NVML_ENV: path}))
    assert result.returncode == 0, result.stderr
    assert "panicked" not in result.stderr and "Traceback" not in result.stderr
    for stats in json.loads(result.stdout):
        check_shape(stats, "nvml")
        assert stats["gpu_type"] == "None"
        assert all(stats[k] is None for k in GPU_FIGURES)
        assert stats["details"]["gpus"] == []
        assert "NVML" in stats["details"]["gpu_unavailable"]


# A fake libnvidia-ml: two devices, the calling process on both (a multi-GPU process),
# device 1 without temperature/power and without per-process memory accounting.
FAKE_NVML_C = r"""
#include <stdio.h>
#include <unistd.h>
typedef int nvmlReturn_t;
typedef void *nvmlDevice_t;
typedef struct { unsigned int version; unsigned long long total, reserved, free, used; } nvmlMemory_v2_t;
typedef struct { unsigned int gpu, memory; } nvmlUtilization_t;
typedef struct { unsigned int pid; unsigned long long usedGpuMemory; unsigned int gpuInstanceId, computeInstanceId; } nvmlProcessInfo_t;
#define MIB (1024ULL * 1024ULL)
static int idx(nvmlDevice_t d) { return (int)(size_t)d - 1; }
nvmlReturn_t nvmlInit_v2(void) { return 0; }
nvmlReturn_t nvmlShutdown(void) { return 0; }
nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *c) { *c = 2; return 0; }
nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int i, nvmlDevice_t *d) {
    if (i >= 2) return 2;
    *d = (nvmlDevice_t)(size_t)(i + 1);
    return 0;
}
nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t d, nvmlMemory_v2_t *m) {
    m->total = idx(d) == 0 ? 8192 * MIB : 16384 * MIB;
    m->used = idx(d) == 0 ? 2048 * MIB : 0;
    m->reserved = 0;
    m->free = m->total - m->used;
    return 0;
}
nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t d, nvmlUtilization_t *u) {
    u->gpu = idx(d) == 0 ? 35 : 80;
    u->memory = 10;
    return 0;
}
nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t d, char *buf, unsigned int len) {
    snprintf(buf, len, "GPU-fake-%d", idx(d));
    return 0;
}
nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t d, char *buf, unsigned int len) {
    snprintf(buf, len, "Fake GPU %d", idx(d));
    return 0;
}
nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t d, int sensor, unsigned int *t) {
    (void)sensor;
    if (idx(d) == 1) return 3; /* NVML_ERROR_NOT_SUPPORTED */
    *t = 55;
    return 0;
}
nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t d, unsigned int *mw) {
    if (idx(d) == 1) return 3;
    *mw = 123456;
    return 0;
}
nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t d, unsigned int *count, nvmlProcessInfo_t *infos) {
    unsigned int n = (SHARED_PROCESS || idx(d) == 0) ? 1 : 0;
    if (infos == NULL || *count < n) { *count = n; return n ? 7 : 0; /* INSUFFICIENT_SIZE */ }
    if (n) {
        infos[0].pid = (unsigned int)getpid();
        infos[0].usedGpuMemory = idx(d) == 0 ? 1024 * MIB : ~0ULL; /* ~0: not available */
        infos[0].gpuInstanceId = ~0U;
        infos[0].computeInstanceId = ~0U;
    }
    *count = n;
    return 0;
}
"""


def _build_fake_nvml(directory, shared_process):
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler on Linux to build the fake NVML library")
    source = directory / "fake_nvml.c"
    source.write_text(FAKE_NVML_C)
    library = directory / ("libfake-nvml-%d.so" % shared_process)
    subprocess.run(
        [compiler, "-shared", "-fPIC", f"-DSHARED_PROCESS={int(shared_process)}", "-o", str(library), str(source)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return str(library)


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory):
    return _build_fake_nvml(tmp_path_factory.mktemp("fake_nvml"), shared_process=False)


FAKE_NVML_PROBE = """
import json, os, sys, plugin_scheduling as ps
m = ps.SystemMonitor(min_refresh=0)
out = {"pid": os.getpid(), "stats": m(), "again": m()}
pid = os.fork()  # NVML was initialised here; the child must initialise its own
if pid == 0:
    code = 3
    try:
        child = m()
        code = 0 if child["gpu_type"] == "NVIDIA" and len(child["details"]["gpus"]) == 2 else 4
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
out["child_status"] = status
print(json.dumps(out))
"""


def test_fake_nvml_gpu_path(fake_nvml):
    result = run_py(FAKE_NVML_PROBE, env=clean_env(**{NVML_ENV: fake_nvml}))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert os.WIFEXITED(out["child_status"]) and os.WEXITSTATUS(out["child_status"]) == 0
    for stats in (out["stats"], out["again"]):
        check_shape(stats, "nvml")
        assert stats["gpu_type"] == "NVIDIA"
        assert stats["gpu_total_memory_mb"] == 24576.0
        assert stats["gpu_free_memory_mb"] == 22528.0
        assert stats["gpu_used_memory_mb"] == 2048.0
        assert stats["gpu_load_percent"] == 80.0
        g0, g1 = stats["details"]["gpus"]
        assert (g0["name"], g0["uuid"]) == ("Fake GPU 0", "GPU-fake-0")
        assert (g0["memory_total_mb"], g0["memory_free_mb"], g0["memory_used_mb"]) == (8192.0, 6144.0, 2048.0)
        assert (g0["utilization_gpu_percent"], g0["utilization_memory_percent"]) == (35.0, 10.0)
        assert g0["temperature_c"] == 55.0 and g0["power_w"] == pytest.approx(123.456)
        assert (g1["temperature_c"], g1["power_w"]) == (None, None)
        assert g1["processes"] == []
        [proc] = g0["processes"]
        assert proc["pid"] == out["pid"] and proc["used_gpu_mb"] == 1024.0
        assert "python" in (proc["name"] or "").lower()
        assert "import json" in (proc["command"] or "")


def test_fake_nvml_process_on_two_gpus_keeps_its_name(tmp_path):
    library = _build_fake_nvml(tmp_path, shared_process=True)
    result = run_py(FAKE_NVML_PROBE, env=clean_env(**{NVML_ENV: library}))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    g0, g1 = out["stats"]["details"]["gpus"]
    assert g1["processes"][0]["used_gpu_mb"] is None  # no per-process accounting on device 1
    for proc in (g0["processes"][0], g1["processes"][0]):
        assert proc["pid"] == out["pid"]
        assert "python" in (proc["name"] or "").lower(), proc
        assert "import json" in (proc["command"] or ""), proc


def test_fake_nvml_cli_table(fake_nvml):
    result = run_cli("stats", env=clean_env(**{NVML_ENV: fake_nvml}))
    assert result.returncode == 0, result.stderr
    assert "[0] Fake GPU 0" in result.stdout and "[1] Fake GPU 1" in result.stdout
    assert "55°C" in result.stdout and "--°C" in result.stdout
    assert "(1024M)" in result.stdout


# ---------------------------------------------------------------- 6. fork


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_reads_stats():
    before = ps.SystemMonitor(min_refresh=0)
    before()  # initialised (and NVML probed) in the parent
    sim = ps.SimulatedSystem(gpus=[1000.0], host=before)
    sim.occupy(100.0)
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            inherited = before()
            new = ps.SystemMonitor(min_refresh=0)()
            simulated = sim()
            check_shape(inherited, "nvml")
            check_shape(new, "nvml")
            check_shape(simulated, "simulated")
            assert simulated["gpu_used_memory_mb"] == 100.0
            assert abs(inherited["memory_total_mb"] - new["memory_total_mb"]) <= 1.0
            code = 0
        except BaseException:
            import traceback

            os.write(2, traceback.format_exc().encode())
            code = 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("forked child hung reading stats")
        time.sleep(0.01)
    assert os.WIFEXITED(status), status
    assert os.WEXITSTATUS(status) == 0
    check_shape(before(), "nvml")  # the parent is unaffected


# ---------------------------------------------------------------- 7. snapshot_async


def test_fresh_does_not_wait_for_a_reading_in_progress():
    """Root cause of the test below: ``_fresh()`` (called on the event loop by
    ``snapshot_async``) locks the monitor, so it waits, GIL held, for a reading
    another thread is making."""
    m = ps.SystemMonitor(min_refresh=0)  # new: its first reading takes ~200 ms
    reader = threading.Thread(target=m.snapshot)
    reader.start()
    time.sleep(0.03)
    started = time.monotonic()
    m._fresh()
    waited = time.monotonic() - started
    reader.join()
    assert waited < 0.05, f"_fresh() waited {waited:.3f} s for a reading in another thread"


def test_snapshot_async_does_not_block_the_loop():
    async def main():
        monitor = ps.SystemMonitor(min_refresh=0)  # new: its first reading waits ~200 ms
        ticks = []
        stop = asyncio.Event()

        async def ticker():
            while not stop.is_set():
                ticks.append(time.monotonic())
                await asyncio.sleep(0.005)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        started = time.monotonic()
        results = await asyncio.gather(*(monitor.snapshot_async() for _ in range(20)))
        ended = time.monotonic()
        stop.set()
        await task
        return started, ended, ticks, results

    started, ended, ticks, results = asyncio.run(main())
    assert ended - started >= 0.15  # the readings really happened (first one waits)
    for stats in results:
        check_shape(stats, "nvml")
    window = [t for t in ticks if started <= t <= ended]
    assert len(window) >= 10, (len(window), ended - started)
    gaps = [b - a for a, b in zip(ticks, ticks[1:]) if b >= started and a <= ended]
    assert max(gaps) < 0.12, max(gaps)


def test_snapshot_async_cached_path_has_no_thread_hop():
    async def main():
        loop = asyncio.get_running_loop()
        real = loop.run_in_executor
        hops = []

        def refuse(*args, **kwargs):
            raise AssertionError("thread hop on a fresh cache")

        def count(executor, func, *args):
            hops.append(func)
            return real(executor, func, *args)

        monitor = ps.SystemMonitor(min_refresh=60)
        cached = monitor()
        sim = ps.SimulatedSystem(gpus=[100.0])
        hosted = ps.SimulatedSystem(gpus=[100.0], host=monitor)

        loop.run_in_executor = refuse
        started = time.monotonic()
        assert await monitor.snapshot_async() == cached
        assert await sim.snapshot_async() == sim()  # no host: never a hop
        assert (await hosted.snapshot_async())["memory_total_mb"] == cached["memory_total_mb"]
        assert time.monotonic() - started < 0.05

        loop.run_in_executor = count
        monitor.invalidate()  # stale: the blocking read goes to the executor
        stats = await monitor.snapshot_async()
        check_shape(stats, "nvml")
        assert len(hops) == 1
        monitor.invalidate()
        check_shape(await hosted.snapshot_async(), "simulated")
        assert len(hops) == 2
        assert await monitor.snapshot_async() == monitor()  # fresh again: no hop
        assert len(hops) == 2
        del loop.run_in_executor

    asyncio.run(main())


# ---------------------------------------------------------------- 8. clean exit after async use

EXIT_SCRIPT = """
import asyncio, sys, threading
import plugin_scheduling as ps

mode = int(sys.argv[1]) % 3

async def main():
    monitor = ps.SystemMonitor(min_refresh=0)
    sim = ps.SimulatedSystem(host=monitor)
    results = await asyncio.gather(monitor.snapshot_async(), sim.snapshot_async(), monitor.snapshot_async())
    assert results[0]["gpu_type"] in ("None", "NVIDIA"), results[0]
    if mode == 1:  # exit with a reading still in flight in the executor
        asyncio.get_running_loop().run_in_executor(None, monitor.snapshot)
    if mode == 2:  # exit while a daemon thread is inside a reading (GIL released)
        def spin():
            while True:
                monitor.snapshot()
                sim.snapshot()
        threading.Thread(target=spin, daemon=True).start()
        await asyncio.sleep(0.01)

asyncio.run(main())
"""


def test_clean_interpreter_exit_after_async_use(tmp_path):
    script = tmp_path / "exit_after_async.py"
    script.write_text(EXIT_SCRIPT)
    env = clean_env()
    runs, parallel = 200, 8
    failures = []
    for batch in range(0, runs, parallel):
        procs = [
            (i, subprocess.Popen(
                [sys.executable, str(script), str(i)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
            ))
            for i in range(batch, min(batch + parallel, runs))
        ]
        for i, proc in procs:
            out, err = proc.communicate(timeout=60)
            text = err.decode(errors="replace")
            if proc.returncode != 0 or "Fatal" in text or "panicked" in text or "Traceback" in text:
                failures.append((i, proc.returncode, text[-2000:]))
    assert not failures, f"{len(failures)}/{runs} runs crashed, first: {failures[0]}"


# ---------------------------------------------------------------- 9. SimulatedSystem behaviour


def test_simulated_occupy_free_exact():
    sim = ps.SimulatedSystem(gpus=[8000.0, 16000.0], ram_total_mb=32000.0, cpu_percent=12.5)
    sim.occupy(3000.0)  # device 0 by default
    sim.occupy(1000.0, device=1)
    sim.occupy(500, 1)  # ints are amounts too
    sim.occupy_ram(2000.0)
    s = sim()
    g0, g1 = s["details"]["gpus"]
    assert (g0["memory_used_mb"], g0["memory_free_mb"], g0["memory_total_mb"]) == (3000.0, 5000.0, 8000.0)
    assert (g1["memory_used_mb"], g1["memory_free_mb"], g1["memory_total_mb"]) == (1500.0, 14500.0, 16000.0)
    assert s["gpu_used_memory_mb"] == 4500.0
    assert s["gpu_free_memory_mb"] == 19500.0
    assert s["gpu_total_memory_mb"] == 24000.0
    assert (s["memory_used_mb"], s["memory_available_mb"], s["memory_total_mb"]) == (2000.0, 30000.0, 32000.0)
    assert s["cpu_percent"] == 12.5

    sim.free(3000.0)
    sim.free(1500.0, device=1)
    sim.free_ram(2000.0)
    s = sim()
    assert s["gpu_used_memory_mb"] == 0.0 and s["gpu_free_memory_mb"] == 24000.0
    assert s["memory_available_mb"] == 32000.0 and s["memory_used_mb"] == 0.0

    sim.occupy(8000.0)  # exactly what is free fits
    assert sim()["details"]["gpus"][0]["memory_free_mb"] == 0.0
    sim.occupy(0.0)  # nothing, on a full device, is fine
    sim.free(8000.0)


def test_simulated_load_is_the_max():
    sim = ps.SimulatedSystem(gpus=[100.0, 100.0, 100.0])
    assert sim()["gpu_load_percent"] == 0.0
    sim.set_load(0, 30.0)
    sim.set_load(2, 70.0)
    sim.set_load(1, 55)
    s = sim()
    assert s["gpu_load_percent"] == 70.0
    assert [g["utilization_gpu_percent"] for g in s["details"]["gpus"]] == [30.0, 55.0, 70.0]
    sim.set_load(2, 10.0)
    assert sim()["gpu_load_percent"] == 55.0
    sim.set_load(0, 250.0)  # a percentage: never above 100
    assert 0.0 <= sim()["gpu_load_percent"] <= 100.0


def test_simulated_errors_leave_state_unchanged():
    sim = ps.SimulatedSystem(gpus=[8000.0, 4000.0], ram_total_mb=1000.0)
    sim.occupy(5000.0)
    sim.occupy_ram(600.0)
    sim.set_load(0, 40.0)
    before = sim()

    assert issubclass(ps.SimulatedOutOfMemory, RuntimeError)
    with pytest.raises(ps.SimulatedOutOfMemory, match="GPU 0"):
        sim.occupy(3000.1)
    with pytest.raises(ps.SimulatedOutOfMemory):
        sim.occupy(4000.5, device=1)
    with pytest.raises(ps.SimulatedOutOfMemory, match="RAM"):
        sim.occupy_ram(400.5)
    with pytest.raises(RuntimeError):
        sim.occupy(1e9)

    for bad in (-1.0, -0.0001, float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            sim.occupy(bad)
        with pytest.raises(ValueError):
            sim.free(bad)
        with pytest.raises(ValueError):
            sim.occupy_ram(bad)
        with pytest.raises(ValueError):
            sim.free_ram(bad)
        with pytest.raises(ValueError):
            sim.set_load(0, bad)
        with pytest.raises(ValueError):
            sim.at(bad, 0.0, device=0)
        with pytest.raises(ValueError):
            sim.at(0.0, bad, device=0)
    with pytest.raises(ValueError):
        sim.free(5000.5)  # more than occupied
    with pytest.raises(ValueError):
        sim.free(1.0, device=1)  # nothing occupied there
    with pytest.raises(ValueError):
        sim.free_ram(600.5)

    for device in (2, 99, -1):
        with pytest.raises(IndexError):
            sim.occupy(1.0, device=device)
        with pytest.raises(IndexError):
            sim.free(1.0, device=device)
        with pytest.raises(IndexError):
            sim.set_load(device, 10.0)
        with pytest.raises(IndexError):
            sim.at(0.0, 1.0, device=device)

    assert sim() == before

    for kwargs in ({"gpus": [-1.0]}, {"gpus": [float("nan")]}, {"ram_total_mb": -5.0},
                   {"ram_total_mb": float("inf")}, {"cpu_percent": -1.0}, {"cpu_percent": float("nan")}):
        with pytest.raises(ValueError):
            ps.SimulatedSystem(**kwargs)


def test_simulated_scripted_changes():
    sim = ps.SimulatedSystem(gpus=[8000.0, 8000.0], ram_total_mb=10000.0)
    created = time.monotonic()
    sim.at(0.2, 1000.0, device=0)  # scripted out of order: sorted by time
    sim.at(0.0, 5000.0, device=0)
    sim.at(0.0, 1234.0)  # device None: RAM
    sim.at(0.0, 99999.0, device=1)  # more than the device has: capped, never negative free
    s = sim()
    if time.monotonic() - created < 0.15:
        assert s["details"]["gpus"][0]["memory_used_mb"] == 5000.0
    assert s["memory_used_mb"] == 1234.0 and s["memory_available_mb"] == 10000.0 - 1234.0
    g1 = s["details"]["gpus"][1]
    assert g1["memory_used_mb"] <= 8000.0 and g1["memory_free_mb"] >= 0.0
    remaining = 0.25 - (time.monotonic() - created)
    if remaining > 0:
        time.sleep(remaining)
    assert sim()["details"]["gpus"][0]["memory_used_mb"] == 1000.0
    # occupy/free act on top of what the script set
    sim.occupy(500.0)
    assert sim()["details"]["gpus"][0]["memory_used_mb"] == 1500.0


def test_simulated_script_is_not_applied_early():
    sim = ps.SimulatedSystem(gpus=[8000.0])
    created = time.monotonic()
    sim.at(0.2, 3000.0, device=0)
    while time.monotonic() - created < 0.15:
        assert sim()["gpu_used_memory_mb"] == 0.0
        sim.occupy(1.0)
        sim.free(1.0)
        time.sleep(0.02)
    time.sleep(max(0.0, 0.22 - (time.monotonic() - created)))
    assert sim()["gpu_used_memory_mb"] == 3000.0


def test_simulated_with_real_host():
    host = ps.SystemMonitor(min_refresh=60)
    sim = ps.SimulatedSystem(gpus=[4000.0], host=host)
    real = host()
    s = sim()
    check_shape(s, "simulated")
    assert s["cpu_percent"] == real["cpu_percent"]
    assert s["memory_total_mb"] == real["memory_total_mb"]
    assert s["memory_available_mb"] == real["memory_available_mb"]
    assert s["gpu_total_memory_mb"] == 4000.0  # GPUs stay simulated
    sim.occupy_ram(1000.0)
    s = sim()
    assert s["memory_available_mb"] == pytest.approx(real["memory_available_mb"] - 1000.0)
    assert s["memory_used_mb"] == pytest.approx(real["memory_used_mb"] + 1000.0)
    assert s["memory_total_mb"] == real["memory_total_mb"]
    # against psutil too: real RAM minus what was occupied
    available = psutil.virtual_memory().available / MIB - 1000.0
    assert abs(s["memory_available_mb"] - available) <= max(0.05 * available, 256.0)
    sim.free_ram(1000.0)
    assert sim()["memory_available_mb"] == real["memory_available_mb"]


def test_simulated_thread_safety():
    sim = ps.SimulatedSystem(gpus=[8.0, 8.0], ram_total_mb=8.0)
    threads, pairs = 8, 500
    barrier = threading.Barrier(threads)
    errors = []
    peak = []

    def worker(n):
        try:
            barrier.wait()
            for i in range(pairs):
                device = (n + i) % 2
                sim.occupy(1.0, device=device)  # 8 threads x 1 MB: always fits in 8 MB
                sim.occupy_ram(1.0)
                if i % 50 == 0:
                    peak.append(sim()["gpu_used_memory_mb"])
                sim.free(1.0, device=device)
                sim.free_ram(1.0)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(timeout=60)
    assert not errors, errors[:3]
    s = sim()
    assert s["gpu_used_memory_mb"] == 0.0 and s["memory_used_mb"] == 0.0
    assert [g["memory_used_mb"] for g in s["details"]["gpus"]] == [0.0, 0.0]
    assert peak and max(peak) <= 16.0


# ---------------------------------------------------------------- 10. as stats providers


def test_safety_scheduler_on_simulated_numbers(capsys):
    sim = ps.SimulatedSystem(gpus=[8000.0], ram_total_mb=4096.0)
    scheduler = ps.SafetyScheduler()
    meta = gpu_plugin(vram=4096, ram=1024)
    assert scheduler.allocate(meta, sim) is True
    sim.occupy(5000.0)  # 3000 MB VRAM left
    assert scheduler.allocate(meta, sim) is False
    assert "Blocked p: Needs 4096MB VRAM" in capsys.readouterr().out
    sim.free(5000.0)
    sim.occupy_ram(3500.0)  # 596 MB RAM left
    assert scheduler.allocate(meta, sim) is False
    assert "Blocked p: Needs 1024MB RAM" in capsys.readouterr().out
    sim.free_ram(3500.0)
    assert scheduler.allocate(meta, sim) is True
    assert asyncio.run(scheduler.allocate_async(meta, sim.snapshot_async)) is True
    sim.occupy(7000.0)
    assert asyncio.run(scheduler.allocate_async(meta, sim.snapshot_async)) is False


def test_safety_scheduler_matches_reference_on_simulated_numbers(capsys):
    ref = pytest.importorskip("cjm_plugin_system.core.scheduling")
    sim = ps.SimulatedSystem(gpus=[8000.0, 2000.0], ram_total_mb=4096.0)
    for used in (0.0, 3000.0, 5000.0, 7000.0):
        sim.occupy(used)
        for meta in (gpu_plugin(4096, 1024), gpu_plugin(12000, 0), gpu_plugin(0, 5000)):
            ours = ps.SafetyScheduler().allocate(meta, sim)
            ours_out = capsys.readouterr().out
            theirs = ref.SafetyScheduler().allocate(meta, sim)
            theirs_out = capsys.readouterr().out
            assert (ours, ours_out) == (theirs, theirs_out), (used, meta.manifest)
        sim.free(used)


def test_queue_scheduler_admitted_promptly_on_release():
    sim = ps.SimulatedSystem(gpus=[8000.0])
    sim.occupy(7000.0)
    scheduler = ps.QueueScheduler(timeout=5, poll_interval=30)
    scheduler.on_execution_start("hog")

    def release():
        time.sleep(0.3)
        sim.free(7000.0)
        scheduler.on_execution_finish("hog")

    releaser = threading.Thread(target=release)
    started = time.monotonic()
    releaser.start()
    try:
        assert scheduler.allocate(gpu_plugin(4096, 0), sim) is True
    finally:
        releaser.join()
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 2.5, elapsed


def test_queue_scheduler_async_admitted_promptly_on_release():
    sim = ps.SimulatedSystem(gpus=[8000.0])
    sim.occupy(7000.0)
    scheduler = ps.QueueScheduler(timeout=5, poll_interval=30)
    scheduler.on_execution_start("hog")

    def release():
        time.sleep(0.3)
        sim.free(7000.0)
        scheduler.on_execution_finish("hog")  # from another thread than the loop's

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        tick_task = asyncio.create_task(ticker())
        releaser = threading.Thread(target=release)
        started = time.monotonic()
        releaser.start()
        try:
            admitted = await scheduler.allocate_async(gpu_plugin(4096, 0), sim.snapshot_async)
        finally:
            releaser.join()
            tick_task.cancel()
        return admitted, time.monotonic() - started, ticks

    admitted, elapsed, ticks = asyncio.run(main())
    assert admitted is True
    assert 0.25 <= elapsed < 2.5, elapsed
    assert ticks >= 10  # the loop ran while waiting
    assert scheduler._pending_wakers() == 0


def test_queue_scheduler_times_out_on_simulated_numbers():
    sim = ps.SimulatedSystem(gpus=[1000.0])
    scheduler = ps.QueueScheduler(timeout=0.3, poll_interval=0.05)
    started = time.monotonic()
    assert scheduler.allocate(gpu_plugin(4096, 0), sim) is False
    assert 0.25 <= time.monotonic() - started < 3.0
    assert asyncio.run(scheduler.allocate_async(gpu_plugin(4096, 0), sim.snapshot_async)) is False


def test_schedulers_with_system_monitor_without_gpu(capsys, has_gpu):
    if has_gpu:
        pytest.skip("this machine has a GPU: the no-GPU warning does not apply")
    monitor = ps.SystemMonitor()
    meta = gpu_plugin(vram=4096, ram=64)
    assert ps.SafetyScheduler().allocate(meta, monitor) is True
    assert capsys.readouterr().out == NO_GPU_WARNING
    assert asyncio.run(ps.SafetyScheduler().allocate_async(meta, monitor.snapshot_async)) is True
    assert capsys.readouterr().out == NO_GPU_WARNING
    assert ps.QueueScheduler(timeout=1, poll_interval=0.1).allocate(meta, monitor) is True
    # With no GPU figures the seed admits a GPU plugin without looking at RAM; a CPU
    # plugin is still checked against the real RAM.
    total = monitor()["memory_total_mb"]
    too_much = SimpleNamespace(name="big", manifest={"resources": {"min_system_ram_mb": int(total) * 4}})
    assert ps.SafetyScheduler().allocate(too_much, monitor) is False
    assert "Needs" in capsys.readouterr().out
    assert ps.QueueScheduler(timeout=0.2, poll_interval=0.05).allocate(too_much, monitor) is False


# ---------------------------------------------------------------- 11. CLI


def test_cli_table(has_gpu):
    result = run_cli("stats")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    out = result.stdout
    assert "CPU" in out and "RAM" in out and "GPU" in out
    if not has_gpu:
        assert "GPU   none (" in out and "NVML" in out


def test_cli_json():
    result = run_cli("stats", "--json")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1
    stats = json.loads(lines[0])
    assert set(stats) == STATS_KEYS
    check_shape(stats, "nvml")


def test_cli_json_with_failing_nvml(tmp_path):
    garbage = tmp_path / "libnvidia-ml.so.1"
    garbage.write_bytes(b"garbage")
    result = run_cli("stats", "--json", env=clean_env(**{NVML_ENV: str(garbage)}))
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["gpu_type"] == "None" and "NVML" in stats["details"]["gpu_unavailable"]
    table = run_cli("stats", env=clean_env(**{NVML_ENV: str(garbage)}))
    assert table.returncode == 0 and "GPU   none (NVML" in table.stdout


def _popen_cli(*args):
    return subprocess.Popen(
        [sys.executable, "-m", "plugin_scheduling", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )


def test_cli_watch_exits_cleanly_on_sigint():
    proc = _popen_cli("stats", "--watch", "0.2")
    try:
        first = proc.stdout.readline()  # the first refresh is out: the loop is running
        assert first, proc.stderr.read()
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    output = first + rest
    refreshes = sum(1 for line in output.splitlines() if line.startswith("CPU"))
    assert refreshes >= 2, output
    assert "\x1b[2J" not in output  # no screen clearing when not a terminal


def test_cli_json_watch_lines_parse():
    proc = _popen_cli("stats", "--json", "--watch", "0.05")
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    for line in lines:
        check_shape(json.loads(line), "nvml")


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc", "-inf"])
def test_cli_watch_rejects_bad_seconds(value):
    result = run_cli("stats", "--watch", value)
    assert result.returncode == 2
    assert "--watch" in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("value", ["inf", "1e300"])
def test_cli_watch_huge_seconds(value):
    proc = _popen_cli("stats", "--watch", value)
    try:
        time.sleep(1.0)
        alive = proc.poll() is None
        if alive:
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Either rejected by argparse (exit 2) or it waits until Ctrl-C (exit 0): never a traceback.
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 2)


@pytest.mark.parametrize("args", [("--json", "--watch", "0.05"), ("--watch", "0.05"), ()])
def test_cli_closed_pipe_is_quiet(args):
    proc = _popen_cli("stats", *args)
    try:
        if args:
            assert proc.stdout.readline()  # running; the reader goes away mid-stream
        proc.stdout.close()
        err = proc.stderr.read()
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert rc == 0

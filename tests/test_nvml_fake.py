"""The real NVML code path (src/core/stats/gpu.rs over nvml-wrapper) against a
fake ``libnvidia-ml.so.1`` built from tests/fake_nvml/fake_nvml.c.

No GPU is needed: the fake reports the devices and processes named in
``FAKE_NVML_*`` environment variables (see the C file). NVML is initialised
once per process, so every case runs in a fresh interpreter with
``PLUGIN_SCHEDULING_NVML_LIBRARY`` pointing at the fake.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

FAKE_SOURCE = Path(__file__).parent / "fake_nvml" / "fake_nvml.c"
MB = 1024 * 1024

# (total_mb, used_mb, util_percent) per device.
DEVICES = [(24576, 1024, 30), (81920, 0, 70)]
DEVICES_SPEC = ",".join(f"{t}:{u}:{p}" for t, u, p in DEVICES)
FREE_SUM = float(sum(t - u for t, u, _ in DEVICES))


@pytest.fixture(scope="module")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc")
    if cc is None:
        pytest.fail("no C compiler `cc` on PATH: needed to build the fake NVML library")
    lib = tmp_path_factory.mktemp("fake_nvml") / "libnvidia-ml.so.1"
    built = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(lib), str(FAKE_SOURCE)],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.fail(f"building the fake NVML failed:\n{built.stdout}{built.stderr}")
    return lib


def child_env(lib: Path, **fake: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_NVML_")}
    env["PLUGIN_SCHEDULING_NVML_LIBRARY"] = str(lib)
    env.update(fake)
    return env


def run_child(lib: Path, code: str, **fake: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-c", code], env=child_env(lib, **fake), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"rc={result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


SNAPSHOT = "import json, plugin_scheduling\nprint(json.dumps(plugin_scheduling.SystemMonitor()()))\n"


def snapshot(lib: Path, **fake: str) -> dict[str, Any]:
    return json.loads(run_child(lib, SNAPSHOT, **fake).stdout.strip().splitlines()[-1])


def test_devices_and_totals(fake_nvml: Path) -> None:
    stats = snapshot(fake_nvml, FAKE_NVML_DEVICES=DEVICES_SPEC)
    assert stats["gpu_type"] == "NVIDIA"
    assert stats["gpu_total_memory_mb"] == float(sum(t for t, _, _ in DEVICES))
    assert stats["gpu_free_memory_mb"] == FREE_SUM
    assert stats["gpu_used_memory_mb"] == float(sum(u for _, u, _ in DEVICES))
    assert stats["gpu_load_percent"] == float(max(p for _, _, p in DEVICES))
    details = stats["details"]
    assert details["gpu_source"] == "nvml"
    assert details["gpu_unavailable"] is None
    assert len(details["gpus"]) == len(DEVICES)
    for i, (gpu, (total, used, util)) in enumerate(zip(details["gpus"], DEVICES)):
        assert gpu == {
            "index": i,
            "uuid": f"GPU-fake-{i}",
            "name": f"Fake GPU {i}",
            "memory_total_mb": float(total),
            "memory_free_mb": float(total - used),
            "memory_used_mb": float(used),
            "utilization_gpu_percent": float(util),
            "utilization_memory_percent": float(util // 2),
            "temperature_c": 40.0 + i,
            "power_w": (100000 + i) / 1000.0,  # mW -> W: 100.0 for device 0
            "processes": [],
        }
    assert details["gpus"][0]["power_w"] == 100.0


def test_nvml_with_no_device(fake_nvml: Path) -> None:
    stats = snapshot(fake_nvml)  # FAKE_NVML_DEVICES unset: NVML works, zero devices
    assert stats["gpu_type"] == "None"
    for key in ("gpu_free_memory_mb", "gpu_total_memory_mb", "gpu_used_memory_mb", "gpu_load_percent"):
        assert stats[key] is None, key
    assert stats["details"] == {"gpus": [], "gpu_source": "nvml", "gpu_unavailable": None}


def own_process_stats(lib: Path, process_spec: str) -> dict[str, Any]:
    """A snapshot by a child whose FAKE_NVML_PROCESS is ``process_spec`` with
    ``{me}`` its own pid and ``{parent}`` its parent's (this test process)."""
    # Set inside the child before its first snapshot: that is when NVML is
    # initialised, and the fake reads its environment at each call.
    code = (
        "import json, os, plugin_scheduling\n"
        f"os.environ['FAKE_NVML_PROCESS'] = {process_spec!r}.format(me=os.getpid(), parent=os.getppid())\n"
        "print(json.dumps({'pid': os.getpid(), 'stats': plugin_scheduling.SystemMonitor()()}))\n"
    )
    return json.loads(run_child(lib, code, FAKE_NVML_DEVICES=DEVICES_SPEC).stdout.strip().splitlines()[-1])


def test_compute_process_is_named_from_the_os(fake_nvml: Path) -> None:
    out = own_process_stats(fake_nvml, "1:{me}:2048,0:{parent}:na")
    gpus = out["stats"]["details"]["gpus"]
    (proc,) = gpus[1]["processes"]
    assert proc["pid"] == out["pid"]
    assert proc["used_gpu_mb"] == 2048.0
    assert proc["name"] is not None and "python" in proc["name"].lower(), proc
    assert proc["command"] and "-c" in proc["command"], proc
    (unattributed,) = gpus[0]["processes"]  # NVML_VALUE_NOT_AVAILABLE -> None, not 2**64 bytes
    assert unattributed["pid"] == os.getpid()
    assert unattributed["used_gpu_mb"] is None
    assert unattributed["name"], unattributed


def test_process_on_two_gpus_is_named_on_both(fake_nvml: Path) -> None:
    out = own_process_stats(fake_nvml, "0:{me}:1024,1:{me}:2048")
    procs = [p for g in out["stats"]["details"]["gpus"] for p in g["processes"]]
    assert [p["pid"] for p in procs] == [out["pid"], out["pid"]]
    assert all(p["name"] and "python" in p["name"].lower() for p in procs), procs


def test_init_failure_is_no_gpu(fake_nvml: Path) -> None:
    stats = snapshot(fake_nvml, FAKE_NVML_DEVICES=DEVICES_SPEC, FAKE_NVML_INIT_FAIL="1")
    assert stats["gpu_type"] == "None"
    assert stats["gpu_free_memory_mb"] is None
    assert stats["gpu_load_percent"] is None
    assert stats["details"]["gpus"] == []
    reason = stats["details"]["gpu_unavailable"]
    assert reason and "NVML" in reason, reason


def test_grandchild_after_fork_reinitialises(fake_nvml: Path, tmp_path: Path) -> None:
    # The fake treats NVML state inherited across fork as uninitialised: only
    # a grandchild that calls nvmlInit again can read the devices.
    log = tmp_path / "calls.log"
    code = (
        "import json, os, plugin_scheduling\n"
        "m = plugin_scheduling.SystemMonitor(min_refresh=0)\n"
        "assert m()['gpu_type'] == 'NVIDIA'\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    code = 1\n"
        "    try:\n"
        "        s = m()\n"
        "        print(json.dumps({'grandchild': os.getpid(), 'stats': s}), flush=True)\n"
        "        code = 0\n"
        "    finally:\n"
        "        os._exit(code)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "assert os.waitstatus_to_exitcode(status) == 0, status\n"
        "assert m()['gpu_type'] == 'NVIDIA'  # the parent still reads after the fork\n"
    )
    result = run_child(fake_nvml, code, FAKE_NVML_DEVICES=DEVICES_SPEC, FAKE_NVML_LOG=str(log))
    out = json.loads(result.stdout.strip().splitlines()[-1])
    stats = out["stats"]
    assert stats["details"]["gpu_unavailable"] is None
    assert stats["gpu_type"] == "NVIDIA"
    assert stats["gpu_free_memory_mb"] == FREE_SUM
    calls = [line.split() for line in log.read_text().splitlines()]
    grandchild = str(out["grandchild"])
    assert [grandchild, "nvmlInit_v2"] in calls
    # The inherited handle is leaked, never shut down from the grandchild.
    assert not [c for c in calls if c[0] == grandchild and c[1].startswith("nvmlShutdown")]


def test_child_dropping_an_inherited_monitor_does_not_shut_nvml_down(fake_nvml: Path, tmp_path: Path) -> None:
    log = tmp_path / "calls.log"
    code = (
        "import os, plugin_scheduling\n"
        "m = plugin_scheduling.SystemMonitor()\n"
        "m()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    print(os.getpid(), flush=True)\n"
        "    del m\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
    )
    result = run_child(fake_nvml, code, FAKE_NVML_DEVICES=DEVICES_SPEC, FAKE_NVML_LOG=str(log))
    child = result.stdout.split()[-1]
    calls = [line.split() for line in log.read_text().splitlines()]
    assert not [c for c in calls if c[0] == child and c[1].startswith("nvmlShutdown")], calls


def test_safety_scheduler_on_fake_gpus(fake_nvml: Path) -> None:
    code = (
        "import plugin_scheduling as ps\n"
        "from types import SimpleNamespace\n"
        "def meta(name, vram):\n"
        "    return SimpleNamespace(name=name, manifest={'resources': {\n"
        "        'requires_gpu': True, 'min_gpu_vram_mb': vram, 'min_system_ram_mb': 1}})\n"
        f"free = {FREE_SUM!r}\n"
        "monitor = ps.SystemMonitor()\n"
        "s = ps.SafetyScheduler()\n"
        "assert s.allocate(meta('big', int(free) + 1), monitor) is False\n"
        "assert s.allocate(meta('small', int(free) - 1), monitor) is True\n"
        "print('done')\n"
    )
    result = run_child(fake_nvml, code, FAKE_NVML_DEVICES=DEVICES_SPEC)
    assert result.stdout.splitlines() == [
        f"[Scheduler] Blocked big: Needs {int(FREE_SUM) + 1}MB VRAM, has {FREE_SUM}MB",
        "done",
    ]


def test_stats_cli_lists_fake_gpus(fake_nvml: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", "stats"],
        env=child_env(fake_nvml, FAKE_NVML_DEVICES=DEVICES_SPEC, FAKE_NVML_PROCESS=f"0:{os.getpid()}:2048"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    gpu_lines = []
    for i in range(len(DEVICES)):
        (line,) = [ln for ln in lines if ln.startswith(f"[{i}] Fake GPU {i}")]
        assert f"{40 + i}°C" in line and f"{DEVICES[i][2]:3.0f} %" in line and "100 W" in line, line
        gpu_lines.append(line)
    # Device 0's process is this test's own pid: shown by its OS name, not the pid.
    assert gpu_lines[0].endswith("(2048M)") and f" {os.getpid()}(" not in gpu_lines[0], gpu_lines[0]
    assert not gpu_lines[1].endswith("M)"), gpu_lines[1]
    assert "GPU   none" not in result.stdout

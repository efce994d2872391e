"""Regression tests for issue 24's edge findings (11, 14, parts of 15 and 16)
and issue 22's ``simulate(gpus=-1)``: no input aborts or panics the
interpreter, the simulator refuses what it cannot simulate exactly (naming
line and column), its metrics are always valid JSON, plugin names with lone
surrogates behave as in the reference, no peaks temporary is left behind,
and ``ControlPlaneManager`` refuses ``None`` where it is handed over.

Inputs that used to abort run in a subprocess (an abort must not take the
test runner with it).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import plugin_scheduling as ps
from plugin_scheduling.control_plane import (
    ControlPlaneManager,
    ExecutionInstance,
    FIFOPolicy,
    RequestMetadata,
)
from plugin_scheduling.simulator import generate_trace, load_trace, simulate

HEADER = "job_id,submit_time,duration,num_gpu\n"


def _run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


# ------------------------------------------------------- 11: panics and aborts


def test_huge_generate_trace_sizes_raise_value_error_in_process() -> None:
    # 10**10 aborted the interpreter (SIGABRT, exit 134); 10**19 raised
    # PanicException. Run where an abort cannot take the test runner down.
    r = _run_python(
        """
        from plugin_scheduling.simulator import generate_trace
        for n in (10**10, 10**19, 2**64, 10**30, -1):
            try:
                generate_trace(n)
            except ValueError as e:
                print("ValueError", e)
            else:
                print("accepted", n)
        """
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    for line, n in zip(lines, (10**10, 10**19, 2**64, 10**30, -1)):
        assert line.startswith(f"ValueError jobs must be an integer from 0 to 10000000, got {n}"), line
    assert "panicked" not in r.stderr


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"users": 0}, "users"),
        ({"users": 2**40}, "users"),
        ({"gpus": {-1: 1.0}}, "gpus[0] GPU count"),
        ({"gpus": {2**33: 1.0}}, "gpus[0] GPU count"),
        ({"gpus": {1: 10**400}}, "gpus[0] weight"),
        ({"durations": [(1, 10**400, 1)]}, "durations[0] high"),
        ({"durations": [(11, 12, 1)]}, "durations"),
        ({"jobs_per_hour": 1e-300}, "jobs_per_hour"),
        ({"jobs_per_hour": 10**400}, "jobs_per_hour"),
        ({"deadline_slack": 1e9, "durations": [(9, 10, 1)]}, "deadline_slack"),
    ],
)
def test_generate_trace_numbers_name_their_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError) as info:
        generate_trace(5, **kwargs)
    assert str(info.value).startswith(field), info.value


def test_generate_trace_types_are_type_errors() -> None:
    with pytest.raises(TypeError, match="^jobs must be an integer, got '5'"):
        generate_trace("5")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^seed must be an integer"):
        generate_trace(5, seed=1.5)
    with pytest.raises(TypeError, match=r"^gpus\[0\] must be a \(gpus, weight\) pair, got \(1,\)"):
        generate_trace(5, gpus=[(1,)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^durations\[1\] must be a \(low, high, weight\) triple"):
        generate_trace(5, durations=[(1, 2, 1), (1, 2)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="^durations must be a list, got 'x'"):
        generate_trace(5, durations="x")  # type: ignore[arg-type]
    assert len(generate_trace(5, gpus={1: 1, 2: 1.0}, durations=[(1, 2, 1)], users=1)) == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": -1}, "gpus must be an integer from 1 to 4294967295, got -1"),
        ({"gpus": 0}, "gpus must be an integer from 1 to 4294967295, got 0"),
        ({"gpus": 2**32}, "gpus must be an integer from 1 to 4294967295, got 4294967296"),
        ({"nodes": -1, "gpus_per_node": 8}, "nodes must be an integer from 1 to 1048576, got -1"),
        ({"nodes": 2**31, "gpus_per_node": 1}, "nodes must be an integer from 1 to 1048576"),
        ({"nodes": 2, "gpus_per_node": -8}, "gpus_per_node must be an integer from 1 to 4294967295, got -8"),
        ({"gpus": 1, "vram_per_gpu_mb": 10**400}, "vram_per_gpu_mb is too large"),
        ({"gpus": 1, "node_cost_per_hour": 10**400}, "node_cost_per_hour[0] is too large"),
        ({"gpus": 1, "policy": "las", "las_thresholds": [10**400]}, "las_thresholds[0] is too large"),
    ],
)
def test_simulate_integer_arguments_raise_value_error_naming_them(
    tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    # Issue 22: gpus=-1 gave "OverflowError: out of range integral type conversion attempted".
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a,0,10,1\n")
    with pytest.raises(ValueError) as info:
        simulate(path, **kwargs)
    assert not isinstance(info.value, OverflowError)
    assert str(info.value).startswith(message), info.value


def test_simulate_non_integers_are_type_errors(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "a,0,10,1\n")
    with pytest.raises(TypeError, match="^gpus must be an integer, got 'x'"):
        simulate(path, gpus="x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="^gpus must be an integer, got 2.0"):
        simulate(path, gpus=2.0)  # type: ignore[arg-type]


# ------------------------------------------------------- 14: simulator edges


def _csv(tmp_path: Path, body: str, name: str = "t.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + body)
    return path


def test_timestamps_beyond_the_exact_range_are_refused_with_line_and_column(tmp_path: Path) -> None:
    # 2^53 + 1 s: a 1 s duration used to vanish into rounding.
    path = _csv(tmp_path, "a,0,1,1\nb,9007199254740992,1,1\n")
    with pytest.raises(ValueError) as info:
        load_trace(path)
    assert str(info.value).startswith(
        'trace line 3, column "submit_time": must be a finite number of seconds from 0 to 1e12'
    ), info.value
    # The limit itself runs, exactly.
    r = simulate(_csv(tmp_path, "a,1e12,1,1\nb,1e12,1,1\n", "max.csv"), gpus=1)
    assert [j["end_time"] for j in r.jobs] == [1e12 + 1, 1e12 + 2]


@pytest.mark.parametrize("value", ["1e308", "1e400", "inf", "nan", "-1"])
def test_huge_or_non_finite_durations_are_refused_at_parse_time(tmp_path: Path, value: str) -> None:
    path = _csv(tmp_path, f"a,0,1,1\nb,0,{value},1\n")
    with pytest.raises(ValueError, match='^trace line 3, column "duration": must be a finite number'):
        load_trace(path)


def test_non_finite_json_numbers_are_refused_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(
        '{"job_id": "a", "submit_time": 0, "duration": 1, "num_gpu": 1}\n'
        '{"job_id": "b", "submit_time": 0, "duration": 1e400, "num_gpu": 1}\n'
    )
    with pytest.raises(ValueError, match=r"^trace line 2, column \d+: is not JSON: number out of range$"):
        load_trace(path)
    rows = [{"job_id": "a", "submit_time": 0, "duration": math.inf, "num_gpu": 1}]
    with pytest.raises(ValueError, match='^trace row 0, column "duration"'):
        load_trace(rows)


def test_a_queue_past_the_clock_limit_is_refused_naming_the_job(tmp_path: Path) -> None:
    # Each job is valid; together, on one GPU, they would end past 2^42 s.
    path = _csv(tmp_path, "".join(f"j{i},0,1e12,1\n" for i in range(6)))
    with pytest.raises(ValueError, match=r'^trace line 6, job "j4": would end at 5000000000000 s'):
        simulate(path, gpus=1)


def test_metrics_are_always_finite_and_valid_json(tmp_path: Path) -> None:
    # The largest values a trace may hold give finite metrics; JSON without NaN/Infinity.
    path = _csv(tmp_path, "a,1e12,1e12,1\nb,0,1e12,2\nc,0,0,1\n")
    for policy in ("fifo", "sjf", "backfill", "las"):
        r = simulate(path, gpus=2, policy=policy)
        text = json.dumps({"metrics": r.metrics, "jobs": r.jobs}, allow_nan=False)
        for name, v in r.metrics.items():
            assert v is None or math.isfinite(v), (policy, name, v)
        assert "Infinity" not in text and "NaN" not in text


def test_non_utf8_input_names_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(HEADER.encode() + b"a,0,1,1\nb\xc3\xa9\xff,0,1,1\n")
    with pytest.raises(ValueError) as info:
        load_trace(path)
    assert not isinstance(info.value, OSError)
    assert str(info.value) == "trace line 3, column 3: is not valid UTF-8 (byte 0xff); save the trace as UTF-8"


@pytest.mark.parametrize("name", ["t.jsonl", "t.txt"])
def test_a_byte_order_mark_is_accepted_in_json_lines_as_in_csv(tmp_path: Path, name: str) -> None:
    row = '{"job_id": "a", "submit_time": 0, "duration": 1, "num_gpu": 1}\n'
    (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + row.encode())
    assert len(load_trace(tmp_path / name)) == 1
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (HEADER + "a,0,1,1\n").encode())
    assert len(load_trace(tmp_path / "bom.csv")) == 1


def test_a_huge_field_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    # A 1 GB field took 5.1 GB RSS; now a line is bounded at 1 MiB, and the
    # file is read line by line. Measured in a subprocess: peak RSS stays far
    # below the file's size.
    path = tmp_path / "big.csv"
    with path.open("wb") as f:
        f.write(HEADER.encode())
        chunk = b"a" * (1 << 20)
        for _ in range(200):  # a 200 MiB field
            f.write(chunk)
        f.write(b",0,1,1\n")
    r = _run_python(
        f"""
        from plugin_scheduling.simulator import load_trace
        try:
            load_trace({str(path)!r})
        except ValueError as e:
            print(e)
        # VmHWM: this process's own peak (ru_maxrss would include the forking
        # parent's, a big pytest process, inherited across fork + exec).
        hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
        print(int(hwm.split()[1]) // 1024)
        """
    )
    assert r.returncode == 0, r.stderr
    message, rss_mb = r.stdout.splitlines()
    assert message == "trace line 2: is longer than 1048576 bytes (the most a trace line may hold)"
    assert int(rss_mb) < 150, rss_mb
    with pytest.raises(ValueError, match='^trace row 0, column "job_id": is longer than 1048576 bytes'):
        load_trace([{"job_id": "x" * (2 << 20), "submit_time": 0, "duration": 1, "num_gpu": 1}])


def test_an_endless_device_is_refused_not_read_until_out_of_memory() -> None:
    with pytest.raises(ValueError, match="^trace line 1: is longer than 1048576 bytes"):
        load_trace("/dev/zero")


def test_valid_traces_give_the_same_results_through_the_streaming_reader(tmp_path: Path) -> None:
    rows = generate_trace(300, seed=3, deadline_slack=3.0)
    text = rows.to_csv()
    (tmp_path / "crlf.csv").write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode())
    a = simulate(rows, gpus=16, policy="backfill")
    b = simulate(tmp_path / "crlf.csv", gpus=16, policy="backfill")
    assert a.metrics == b.metrics
    assert [j["end_time"] for j in a.jobs] == [j["end_time"] for j in b.jobs]


# ------------------------------------------------ 15: lone surrogates in names

SURROGATE = "whisper-\udc80"


def _blocked_meta(name: str) -> SimpleNamespace:
    return SimpleNamespace(name=name, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 8000}})


def test_safety_scheduler_prints_a_surrogate_name_as_the_reference() -> None:
    # It used to raise UnicodeEncodeError before printing, where the
    # reference prints (to any stream that takes the text: a StringIO here).
    from cjm_plugin_system.core.scheduling import SafetyScheduler as Reference

    stats = {"gpu_free_memory_mb": 100, "memory_available_mb": 10}
    outs = []
    for scheduler in (Reference(), ps.SafetyScheduler()):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            assert scheduler.allocate(_blocked_meta(SURROGATE), lambda: stats) is False
        outs.append(buffer.getvalue())
    assert outs[1] == outs[0] == f"[Scheduler] Blocked {SURROGATE}: Needs 8000MB VRAM, has 100MB\n"


def test_queue_scheduler_logs_a_surrogate_name_as_the_reference(caplog: pytest.LogCaptureFixture) -> None:
    from cjm_plugin_system.core.scheduling import QueueScheduler as Reference

    stats = {"gpu_free_memory_mb": 100}
    caplog.set_level(logging.INFO)
    ref = Reference(timeout=0, poll_interval=0)
    assert ref.allocate(_blocked_meta(SURROGATE), lambda: stats) is False
    theirs = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    caplog.clear()
    q = ps.QueueScheduler(timeout=0, poll_interval=0)
    assert q.allocate(_blocked_meta(SURROGATE), lambda: stats) is False
    ours = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert ours == theirs == [f"Timeout waiting for resources for {SURROGATE}"]
    q.on_execution_start(SURROGATE)
    assert q.get_active_plugins() == {SURROGATE}
    q.on_execution_finish(SURROGATE)


def test_a_surrogate_name_in_a_real_stream_behaves_as_in_the_reference() -> None:
    # Printing to a strict UTF-8 stdout: whatever the reference does (here
    # a UnicodeEncodeError from print itself), ours does the same.
    code = """
        import sys
        from types import SimpleNamespace
        from {module} import SafetyScheduler
        meta = SimpleNamespace(name="w-\\udc80", manifest={{"resources": {{"requires_gpu": True, "min_gpu_vram_mb": 8}}}})
        try:
            print(SafetyScheduler().allocate(meta, lambda: {{"gpu_free_memory_mb": 1}}))
        except Exception as e:
            print(type(e).__name__, file=sys.stderr)
        """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path), PYTHONIOENCODING="utf-8:strict")
    outs = []
    for module in ("cjm_plugin_system.core.scheduling", "plugin_scheduling"):
        r = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code.format(module=module))],
            capture_output=True,
            env=env,
            timeout=60,
        )
        outs.append((r.returncode, r.stdout, r.stderr.strip().splitlines()[-1:]))
    assert outs[0] == outs[1]


def test_reservation_scheduler_refuses_a_surrogate_name_with_a_value_error(tmp_path: Path) -> None:
    # The reservation queue keeps names as text (and shares them through a
    # ledger file), so a name that is not valid Unicode is refused, clearly.
    s = ps.ReservationScheduler(timeout=0, poll_interval=0.01)
    sim = ps.SimulatedSystem(gpus=[24000.0])
    meta = SimpleNamespace(name=SURROGATE, manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 1}})
    expected = r"^plugin_meta\.name must be valid Unicode text, got 'whisper-\\udc80' \(str\) \(a lone surrogate U\+DC80 at index 8"
    with pytest.raises(ValueError, match=expected):
        s.allocate(meta, sim)
    for call in (s.on_execution_start, s.on_execution_finish, s.record_peak):
        with pytest.raises(ValueError, match=r"^plugin_name must be valid Unicode text.*U\+DC80 at index 8"):
            call(SURROGATE)
    with pytest.raises(TypeError, match="plugin_name must be a str, got 5"):
        s.on_execution_start(5)  # type: ignore[arg-type]
    # Nothing was granted or left behind.
    assert s.get_active_plugins() == set()
    meta.name = "whisper-\u00e9"
    assert s.allocate(meta, sim) is True


# ------------------------------------------------------------- 16: litter


def test_a_stale_peaks_temporary_of_a_killed_writer_is_swept(tmp_path: Path) -> None:
    path = tmp_path / "peaks.json"
    # What older versions left when killed between write and rename.
    (tmp_path / "peaks.tmp.4194999").write_text("{")
    (tmp_path / "peaks.tmp.1").write_text("{")
    (tmp_path / "peaks.json.tmp").write_text("{")
    s = ps.ReservationScheduler(peaks_path=path)
    s.record_peak("a", vram_mb=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peaks.json", "peaks.json.lock"]
    assert (path.stat().st_mode & 0o777) == 0o600


PEAKS_WRITER = """
import sys
import plugin_scheduling as ps
s = ps.ReservationScheduler(peaks_path=sys.argv[1])
print("ready", flush=True)
i = 0
while True:
    i += 1
    s.record_peak(f"p{i % 50}", vram_mb=float(i))  # a forced save each time
"""


@pytest.mark.timeout(120)
def test_sigkilled_peaks_writers_leave_no_temporary_after_the_next_save(tmp_path: Path) -> None:
    path = tmp_path / "peaks.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for i in range(20):
        p = subprocess.Popen(
            [sys.executable, "-c", PEAKS_WRITER, str(path)], stdout=subprocess.PIPE, env=env, text=True
        )
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        time.sleep(0.05 + (i % 5) * 0.02)
        p.send_signal(signal.SIGKILL)
        p.wait()
        if p.stdout is not None:
            p.stdout.close()
    # At most the one reused temporary may exist now; the next save removes it.
    left = [q.name for q in tmp_path.iterdir() if ".tmp" in q.name]
    assert set(left) <= {"peaks.json.tmp"}, left
    ps.ReservationScheduler(peaks_path=path).record_peak("final", vram_mb=1)
    assert sorted(q.name for q in tmp_path.iterdir()) == ["peaks.json", "peaks.json.lock"]
    assert "final" in json.loads(path.read_text())


def _instance(**kw: Any) -> ExecutionInstance:
    return ExecutionInstance(instance_id="i", host="h", port=1, model_name="m", **kw)


@pytest.mark.parametrize("bad", [None, 5, "instance", object(), SimpleNamespace(instance_id="x")])
def test_control_plane_manager_refuses_a_non_instance_at_registration(bad: Any) -> None:
    m = ControlPlaneManager(scheduling_policy=FIFOPolicy())
    m.register_instance(_instance())
    with pytest.raises(TypeError, match=r"^ControlPlaneManager\.register_instance: instance must be an? ExecutionInstance"):
        m.register_instance(bad)
    with pytest.raises(TypeError, match=r"^ControlPlaneManager\.submit_request: request must be a RequestMetadata"):
        m.submit_request(bad)
    # Nothing was added, so schedule() still works.
    m.submit_request(RequestMetadata(request_id="r", model_name="m"))
    assert [d.request_id for d in m.schedule()] == ["r"]
    assert m.pending == [] and len(m.instances) == 1


def test_control_plane_manager_refuses_bad_values_and_policies() -> None:
    m = ControlPlaneManager()
    bad = SimpleNamespace(**{**vars(_instance()), "current_load": -1})
    with pytest.raises(ValueError, match="current_load"):
        m.register_instance(bad)
    with pytest.raises(TypeError, match="scheduling_policy must be a SchedulingPolicy"):
        ControlPlaneManager(scheduling_policy=object())  # type: ignore[arg-type]
    assert m.instances == []


def test_model_names_with_lone_surrogates_match_as_python_compares_them() -> None:
    # They raised UnicodeEncodeError; the seed compares names with ==.
    name = "llama-\udc80"
    instances = [
        ExecutionInstance(instance_id="i", host="h", port=1, model_name="plain"),
        ExecutionInstance(instance_id="s", host="h", port=1, model_name="".join(["llama-", "\udc80"])),
        ExecutionInstance(instance_id="t", host="h", port=1, model_name="llama-\udc81"),
    ]
    requests = [
        RequestMetadata(request_id="a", model_name=name),
        RequestMetadata(request_id="b", model_name="llama-\udc81"),
        RequestMetadata(request_id="c", model_name="llama-\udc82"),
        RequestMetadata(request_id="d", model_name="plain"),
    ]
    placed = {d.request_id: d.target_instance_id for d in FIFOPolicy().schedule(requests, instances)}
    assert placed == {"a": "s", "b": "t", "d": "i"}

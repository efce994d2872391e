"""The trace-driven simulator: metrics by hand, trace input, CLI, pandas."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

import plugin_scheduling
from plugin_scheduling import SimulationResult, _core, simulate
from plugin_scheduling import _cli_sim, simulator
from plugin_scheduling.__main__ import main

HEADER = "job_id,submit_time,duration,num_gpu,user,deadline\n"
# 4 GPUs, FIFO: a 0-10 (4 GPUs); b waits for it, 10-15; c (t=2) 10-14.
THREE = HEADER + "a,0,10,4,u1,10\nb,0,5,2,u2,12\nc,2,4,2,u1,\n"

POLICIES = [
    "fifo", "best_effort_fifo", "priority", "fair_share", "deadline", "sjf",
    "round_robin", "backfill", "multifactor", "las",
]


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    v = sorted(values)
    rank = q * (len(v) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return v[lo] + (v[hi] - v[lo]) * (rank - lo)


@pytest.fixture
def three(tmp_path: Path) -> Path:
    p = tmp_path / "three.csv"
    p.write_text(THREE)
    return p


def test_metrics_computed_by_hand(three: Path) -> None:
    r = simulate(three, gpus=4, policy="fifo")
    assert isinstance(r, SimulationResult)
    starts = {j["job_id"]: j["start_time"] for j in r.jobs}
    assert starts == {"a": 0.0, "b": 10.0, "c": 10.0}
    jct = [10.0, 15.0, 12.0]
    wait = [0.0, 10.0, 8.0]
    slowdown = [10 / 10, 15 / 5, 12 / 4]
    m = r.metrics
    assert m["jobs"] == 3
    assert m["avg_jct_s"] == pytest.approx(sum(jct) / 3)
    assert m["p50_jct_s"] == pytest.approx(percentile(jct, 0.5))
    assert m["p95_jct_s"] == pytest.approx(percentile(jct, 0.95))
    assert m["avg_wait_s"] == pytest.approx(sum(wait) / 3)
    assert m["p95_wait_s"] == pytest.approx(percentile(wait, 0.95))
    assert m["avg_slowdown"] == pytest.approx(sum(slowdown) / 3)
    assert m["makespan_s"] == 15.0
    # 4 busy GPUs for 14 s, 2 for the last second, of 4 GPUs × 15 s.
    assert m["gpu_utilization"] == pytest.approx((4 * 14 + 2 * 1) / (4 * 15))
    # Mean slowdown per user: u1 (1 + 3) / 2 = 2, u2 3 → Jain (2+3)² / (2·(4+9)).
    assert m["jain_fairness"] == pytest.approx(25 / 26)
    # a ends at 10 (deadline 10: met), b at 15 (deadline 12: missed).
    assert m["slo_attainment"] == 0.5
    assert m["preemptions"] == 0
    assert m["cost"] is None
    assert set(m) == set(simulator.METRICS)
    row = r.jobs[1]
    assert row == {
        "job_id": "b", "user": "u2", "num_gpu": 2, "submit_time": 0.0,
        "start_time": 10.0, "end_time": 15.0, "wait_s": 10.0, "jct_s": 15.0,
        "duration": 5.0, "slowdown": 3.0, "preemptions": 0,
        "deadline_met": False, "cost": 0.0,
    }
    assert r.timeline[0] == {"time": 0.0, "queue_length": 1, "busy_gpus": 4}
    assert r.timeline[-1] == {"time": 15.0, "queue_length": 0, "busy_gpus": 0}


def test_backfill_passes_the_head_only_when_it_cannot_delay_it() -> None:
    rows = [
        {"job_id": "a", "submit_time": 0, "duration": 10, "num_gpu": 2},
        {"job_id": "b", "submit_time": 1, "duration": 5, "num_gpu": 4},
        # Ends at 10, b's planned start: backfilled at 2.
        {"job_id": "c", "submit_time": 2, "duration": 8, "num_gpu": 2},
    ]
    fifo = simulate(rows, gpus=4, policy="fifo")
    back = simulate(rows, gpus=4, policy="backfill")
    assert [j["start_time"] for j in fifo.jobs] == [0, 10, 15]
    assert [j["start_time"] for j in back.jobs] == [0, 10, 2]
    # Told it runs 20 s, c would delay b: not backfilled.
    rows[2]["estimated_duration"] = 20
    assert [j["start_time"] for j in simulate(rows, gpus=4, policy="backfill").jobs] == [0, 10, 15]


def test_las_preempts_and_resumes() -> None:
    rows = [
        {"job_id": "long", "submit_time": 0, "duration": 30, "num_gpu": 1},
        {"job_id": "short", "submit_time": 5, "duration": 5, "num_gpu": 1},
    ]
    r = simulate(rows, gpus=1, policy="las", las_thresholds=[10])
    long, short = r.jobs
    # long reaches 10 GPU-s at t=10, drops to queue 1 and is preempted;
    # short runs 10-15; long resumes with 20 s left: ends at 35.
    assert (short["start_time"], short["end_time"]) == (10, 15)
    assert (long["start_time"], long["end_time"], long["preemptions"]) == (0, 35, 1)
    assert long["wait_s"] == 5
    assert r.metrics["preemptions"] == 1
    with pytest.raises(ValueError, match="las_thresholds"):
        simulate(rows, gpus=1, policy="las", las_thresholds=[10, 5])


def test_las_starvation_guard_knob() -> None:
    # 1 GPU, queues at 10 GPU-s. a (30 s) runs 0-10 and is demoted; short
    # jobs (8 s) arrive every 8 s from t10 and keep queue 0 busy. Without
    # the guard a waits in queue 1 until they are all done (50). With knob
    # 1, a, having waited 10 s = 1 x its 10 s run, is promoted at 20 to the
    # end of queue 0, behind the running s1; it runs 26-36 (s2, arriving
    # at 26, enters behind it), is demoted again at 36 and the rest follow.
    rows = [{"job_id": "a", "submit_time": 0, "duration": 30, "num_gpu": 1}] + [
        {"job_id": f"s{k}", "submit_time": 10 + 8 * k, "duration": 8, "num_gpu": 1}
        for k in range(5)
    ]
    for knob, starts in ((None, [0, 10, 18, 26, 34, 42]), (1.0, [0, 10, 18, 36, 44, 52])):
        r = simulate(rows, gpus=1, policy="las", las_thresholds=[10], las_promote_knob=knob)
        assert [j["start_time"] for j in r.jobs] == starts, knob
        assert r.jobs[0]["preemptions"] == (2 if knob else 1)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="las_promote_knob"):
            simulate(rows, gpus=1, policy="las", las_promote_knob=bad)


def test_nodes_ram_and_cost() -> None:
    rows = [
        {"job_id": "a", "submit_time": 0, "duration": 3600, "num_gpu": 3},
        {"job_id": "b", "submit_time": 0, "duration": 3600, "num_gpu": 3},
        # 2 GPUs are free, but one per node: c waits for a.
        {"job_id": "c", "submit_time": 1, "duration": 60, "num_gpu": 2},
    ]
    r = simulate(rows, nodes=2, gpus_per_node=4, node_cost_per_hour=[4.0, 8.0])
    assert [j["start_time"] for j in r.jobs] == [0, 0, 3600]
    # a: 3/4 of node 0 (4/h) for 1 h = 3; b: 3/4 of node 1 (8/h) = 6;
    # c: half of node 0 for a minute = 2/60.
    assert r.metrics["cost"] == pytest.approx(3 + 6 + 2 / 60)
    flat = simulate(rows, gpus=8)
    assert [j["start_time"] for j in flat.jobs] == [0, 0, 1]
    with pytest.raises(ValueError, match="RAM"):
        simulate([{"job_id": "x", "submit_time": 0, "duration": 1, "num_gpu": 1, "ram_mb": 9e9}],
                 gpus=2, ram_per_node_mb=1000)
    with pytest.raises(ValueError, match="gpus=N"):
        simulate(rows, nodes=2)


def test_fast_passes_match_the_reference_start_order() -> None:
    """The chunked passes of the simulator start the same jobs at the same
    times as one full ``admit`` call over a freshly ordered queue at every
    event (what a live scheduler does), for every policy. (Not fair_share:
    its keys are constant between charges only up to float rounding of the
    decay, and the reference recomputes them at every event.)"""
    trace = simulator.load_trace(simulator.sample_trace_path())
    for name in POLICIES:
        if name == "fair_share":
            continue
        fast = _core._simulate(trace, policy=name, gpus=16)
        ref = _core._simulate(trace, policy=name, gpus=16, reference=True, preempt=False)
        if name == "las":  # the reference pass does not preempt
            fast = _core._simulate(trace, policy=name, gpus=16, preempt=False)
        assert fast.job_columns()["start_time"] == ref.job_columns()["start_time"], name


def test_bad_traces_name_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("job_id,submit_time,duration,num_gpu\na,0,10,1\nb,0,ten,1\n")
    with pytest.raises(ValueError, match=r'trace line 3, column "duration": must be a number, got "ten"'):
        simulate(p, gpus=1)
    p.write_text("job_id,submit_time,duration\na,0,10\n")
    with pytest.raises(ValueError, match="num_gpu"):
        simulate(p, gpus=1)
    with pytest.raises(ValueError, match=r'row 1, column "num_gpu"'):
        simulate([{"job_id": 1, "submit_time": 0, "duration": 1, "num_gpu": 1},
                  {"job_id": 2, "submit_time": 0, "duration": 1, "num_gpu": 0}], gpus=1)
    with pytest.raises(ValueError, match="needs 8 GPUs, the cluster has 4"):
        simulate([{"job_id": 1, "submit_time": 0, "duration": 1, "num_gpu": 8}], gpus=4)
    with pytest.raises(FileNotFoundError):
        simulate(tmp_path / "missing.csv", gpus=1)
    with pytest.raises(TypeError, match="mapping"):
        simulate([1, 2], gpus=1)
    with pytest.raises(ValueError, match="policy must be one of"):
        simulate([], gpus=1, policy="lottery")
    with pytest.raises(ValueError, match="unknown trace field"):
        simulate([], gpus=1, columns={"gpu": "x"})


def test_jsonl_and_column_mapping(tmp_path: Path) -> None:
    p = tmp_path / "t.jsonl"
    p.write_text('{"id": "x", "arrival": 0, "duration": 5, "gpus": 2}\n'
                 '{"id": "y", "arrival": 1, "duration": 5, "gpus": 2}\n')
    r = simulate(p, gpus=2, columns={"job_id": "id", "submit_time": "arrival", "num_gpu": "gpus"})
    assert [(j["job_id"], j["start_time"]) for j in r.jobs] == [("x", 0.0), ("y", 5.0)]


def test_dataframe_in_and_out() -> None:
    import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # in the test extra
    df = pd.DataFrame({
        "job_id": ["a", "b", "c"], "submit_time": [0, 0, 2], "duration": [10, 5, 4],
        "num_gpu": [4, 2, 2], "user": ["u1", "u2", None], "deadline": [10.0, float("nan"), None],
    })
    r = simulate(df, gpus=4)
    jobs = r.to_pandas()
    assert list(jobs["start_time"]) == [0.0, 10.0, 10.0]
    assert list(jobs["job_id"]) == ["a", "b", "c"]
    assert r.metrics["slo_attainment"] == 1.0  # only a has a deadline, and met it
    tl = r.to_pandas("timeline")
    assert list(tl.columns) == ["time", "queue_length", "busy_gpus"]
    with pytest.raises(ValueError, match="table"):
        r.to_pandas("nope")


def test_to_pandas_without_pandas_says_so(monkeypatch: pytest.MonkeyPatch, three: Path) -> None:
    r = simulate(three, gpus=4)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        r.to_pandas()


class LargestFirst:
    """A Python policy: most GPUs first, anyone who fits may go."""

    admission = "best_effort"

    def __init__(self) -> None:
        self.started: list[str] = []

    def key(self, job: dict, now: float) -> float:
        return -job["num_gpu"]

    def on_start(self, job: dict, now: float) -> None:
        self.started.append(job["job_id"])


def test_python_policies() -> None:
    rows = [
        {"job_id": "blocker", "submit_time": 0, "duration": 5, "num_gpu": 4},
        {"job_id": "one", "submit_time": 1, "duration": 5, "num_gpu": 1},
        {"job_id": "three", "submit_time": 2, "duration": 5, "num_gpu": 3},
    ]
    p = LargestFirst()
    r = simulate(rows, gpus=4, policy=p)
    assert r.policy == "LargestFirst"
    assert p.started == ["blocker", "three", "one"]
    assert [j["start_time"] for j in r.jobs] == [0, 5, 5]

    class Broken:
        def key(self, job: dict, now: float) -> float:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        simulate(rows, gpus=4, policy=Broken())

    class Wrong:
        def key(self, job: dict, now: float) -> str:
            return "soon"

    with pytest.raises(TypeError, match="must return a number"):
        simulate(rows, gpus=4, policy=Wrong())
    with pytest.raises(TypeError, match="key"):
        simulate(rows, gpus=4, policy=object())


def test_progress_callback_and_its_errors(three: Path) -> None:
    seen: list[tuple[int, int]] = []
    simulate(three, gpus=4, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (0, 3) and seen[-1] == (3, 3)

    def stop(done: int, total: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        simulate(three, gpus=4, progress=stop)


def test_every_policy_runs_the_sample_trace() -> None:
    path = simulator.sample_trace_path()
    for name in POLICIES:
        m = simulate(path, gpus=16, policy=name).metrics
        assert m["jobs"] == 200, name
        assert 0 < m["gpu_utilization"] <= 1, name


def test_cli_table_json_csv_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str], three: Path) -> None:
    assert main(["simulate", str(three), "--gpus", "4", "--policy", "fifo,backfill", "--wide"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["policy", "jobs", "avg_jct_s"]
    assert [line.split()[0] for line in table[1:]] == ["fifo", "backfill"]
    assert main(["simulate", str(three), "--gpus", "4", "--policy", "fifo,sjf", "--json",
                 "--jobs-csv", str(tmp_path / "jobs.csv")]) == 0
    out = capsys.readouterr().out
    doc = json.loads(out)
    assert list(doc) == ["results", "run"]
    assert [r["policy"] for r in doc["results"]] == ["fifo", "sjf"]
    assert set(doc["results"][0]) == {"policy", *simulator.METRICS}
    assert doc["results"][0]["avg_jct_s"] == pytest.approx(37 / 3)
    lines = (tmp_path / "jobs.csv").read_text().splitlines()
    assert lines[0].startswith("policy,job_id,")
    assert len(lines) == 1 + 2 * 3
    import matplotlib  # noqa: F401  (in the test extra)
    png = tmp_path / "plot.png"
    assert main(["simulate", str(three), "--gpus", "4", "--policy", "fifo,backfill", "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str], three: Path,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert main(["simulate", str(tmp_path / "none.csv"), "--gpus", "4"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["simulate", str(three)]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["simulate", str(three), "--gpus", "4", "--policy", "nope"]) == 2
    assert "policy nope" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["simulate", str(three), "--gpus", "4", "--plot", str(tmp_path / "p.png")]) == 2
    assert "plugin-scheduling[plot]" in capsys.readouterr().err


def test_cli_json_is_the_only_stdout_in_a_subprocess(three: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", "simulate", str(three), "--gpus", "4",
         "--policy", "fifo,backfill,las", "--json"],
        capture_output=True, text=True, check=True, timeout=120,
    )
    doc = json.loads(proc.stdout)
    assert [r["policy"] for r in doc["results"]] == ["fifo", "backfill", "las"]


def test_trace_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "gen.csv"
    assert main(["trace", "generate", "--jobs", "2000", "--seed", "3", "-o", str(out)]) == 0
    text = out.read_text()
    assert text.splitlines()[0] == "job_id,submit_time,duration,num_gpu,user"
    r = simulate(out, gpus=64, policy="backfill")
    assert r.metrics["jobs"] == 2000
    gpus = [j["num_gpu"] for j in r.jobs]
    assert set(gpus) == {1, 2, 4, 8}
    assert 0.65 < gpus.count(1) / len(gpus) < 0.75
    assert main(["trace", "generate", "--jobs", "5", "--seed", "3", "--gpus", "2:1",
                 "--durations", "0-1:1", "--deadline-slack", "2"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert again[0].endswith(",deadline") and len(again) == 6
    assert all(line.split(",")[3] == "2" for line in again[1:])
    assert main(["trace", "generate", "--jobs", "5", "--gpus", "0:1"]) == 2
    assert "gpus" in capsys.readouterr().err


def test_package_exports_and_sample_trace() -> None:
    assert plugin_scheduling.simulate is simulate
    assert "simulate" in plugin_scheduling.__all__ and "SimulationResult" in plugin_scheduling.__all__
    assert Path(simulator.sample_trace_path()).is_file()
    assert _cli_sim.render_table([{"policy": "x", "jobs": 1, "avg_jct_s": 2.5}]).startswith("policy")


def test_progress_bar_draws_on_its_stream() -> None:
    import io

    err = io.StringIO()
    bar = _cli_sim._Progress("fifo", err)
    bar(0, 200)
    bar(100, 200)
    bar(100, 200)  # unchanged: not redrawn
    bar(200, 200)
    text = err.getvalue()
    assert text.count("\r") == 3
    assert "  0%" in text and " 50%" in text and text.endswith("100%\n")

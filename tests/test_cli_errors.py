"""Every command of the CLI, given ordinary mistakes, answers with one line on
stderr and a nonzero exit status (2: usage, 1: at run time, 3: a quota backend
failure) -- never a traceback -- and leaves no file behind. A reader that goes
away (``| head``) ends the command quietly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACE = "job_id,submit_time,duration,num_gpu\n1,0,10,1\n2,1,20,2\n3,2,5,1\n"


def _env(tmp: Path) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUOTA_", "SLURM_"))}
    env.update(
        HOME=str(tmp / "home"),
        XDG_STATE_HOME=str(tmp / "home" / "state"),
        XDG_CONFIG_HOME=str(tmp / "home" / "config"),
        XDG_RUNTIME_DIR=str(tmp / "home" / "run"),
        # Slurm's commands are not on this PATH, whether or not the host has them.
        PATH=os.path.dirname(sys.executable),
        PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
        MPLCONFIGDIR=str(tmp / "matplotlib"),  # matplotlib's own font cache, not ours
    )
    env.pop("PLUGIN_SCHEDULING_TRACEBACK", None)
    return env


def _cli(tmp: Path, *args: str, stdout: int = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", *args],
        cwd=tmp / "work", env=_env(tmp), stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=60,
    )


def _files(tmp: Path) -> List[str]:
    return sorted(str(p.relative_to(tmp)) for d in ("home", "work") for p in (tmp / d).rglob("*"))


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    for d in ("home", "work", "work/adir"):
        (tmp_path / d).mkdir()
    (tmp_path / "work" / "trace.csv").write_text(TRACE)
    return tmp_path


# (argv, exit status, words the one line must contain); {t} is the tmp dir.
CASES: List[Tuple[Sequence[str], int, Sequence[str]]] = [
    ([], 2, ["required", "COMMAND"]),
    (["nope"], 2, ["invalid choice"]),
    (["stats", "--bogus"], 2, ["unrecognized"]),
    (["demo", "--bogus"], 2, ["unrecognized"]),
    (["stats", "--watch", "0"], 2, ["--watch", "seconds"]),
    (["stats", "--watch", "soon"], 2, ["--watch", "'soon'"]),
    (["jobs", "show"], 2, ["job ID"]),
    (["jobs", "show", "twelve"], 2, ["invalid int"]),
    (["jobs", "list", "3"], 2, ["show"]),
    (["jobs", "frobnicate"], 2, ["invalid choice"]),
    (["jobs", "--journal", "{t}/work/none.db"], 1, ["none.db"]),
    (["jobs", "--journal", "{t}/work/adir"], 1, ["adir"]),
    (["ledger", "--bogus"], 2, ["unrecognized"]),
    (["ledger", "/etc/passwd"], 1, ["/etc/passwd"]),
    (["simulate"], 2, ["trace"]),
    (["simulate", "trace.csv"], 2, ["--gpus"]),
    (["simulate", "none.csv", "--gpus", "4"], 2, ["none.csv"]),
    (["simulate", "adir", "--gpus", "4"], 2, ["adir"]),
    (["simulate", "/etc/passwd", "--gpus", "4"], 2, ["error"]),
    (["simulate", "trace.csv", "--gpus", "-1"], 2, ["--gpus", "-1"]),
    (["simulate", "trace.csv", "--gpus", "0"], 2, ["--gpus"]),
    (["simulate", "trace.csv", "--gpus", "4", "--policy", "fifoo"], 2, ["fifoo", 'did you mean "fifo"']),
    (["simulate", "trace.csv", "--gpus", "4", "--policy", "fifo,lottery"], 2, ["lottery", "must be one of"]),
    (["simulate", "trace.csv", "--gpus", "4", "--policy", ","], 2, ["--policy"]),
    (["simulate", "trace.csv", "--gpus", "16", "--nodes", "2", "--gpus-per-node", "8"], 2, ["not both"]),
    (["simulate", "trace.csv", "--nodes", "2"], 2, ["--gpus-per-node"]),
    (["simulate", "trace.csv", "--gpus", "4", "--plot", "nodir/x.png"], 2, ["--plot", "no such directory"]),
    (["simulate", "trace.csv", "--gpus", "4", "--plot", "adir"], 2, ["--plot", "is a directory"]),
    (["simulate", "trace.csv", "--gpus", "4", "--plot", "x.nosuchformat"], 2, ["--plot", ".nosuchformat"]),
    (["simulate", "trace.csv", "--gpus", "4", "--jobs-csv", "adir"], 2, ["--jobs-csv", "is a directory"]),
    (["simulate", "trace.csv", "--gpus", "4", "--jobs-csv", "nodir/j.csv"], 2, ["--jobs-csv", "no such directory"]),
    (["simulate", "trace.csv", "--gpus", "4", "--columns", "num_gpu"], 2, ["FIELD=COLUMN"]),
    (["simulate", "trace.csv", "--gpus", "4", "--vram-per-gpu-mb", "nan"], 2, ["finite"]),
    (["trace"], 2, ["choose an action", "generate"]),
    (["trace", "generate"], 2, ["--jobs"]),
    (["trace", "generate", "--jobs", "0"], 2, ["--jobs"]),
    (["trace", "generate", "--jobs", "5", "-o", "adir"], 2, ["--output", "is a directory"]),
    (["trace", "generate", "--jobs", "5", "-o", "nodir/t.csv"], 2, ["--output", "no such directory"]),
    (["trace", "generate", "--jobs", "5", "--gpus", "x:1"], 2, ["error"]),
    (["trace", "generate", "--jobs", "5", "--durations", "a-b:1"], 2, ["error"]),
    (["trace", "generate", "--jobs", "5", "--jobs-per-hour", "-3"], 2, ["--jobs-per-hour"]),
    (["serve", "--event-queue-size", "0"], 2, ["--event-queue-size", "'0'", ">= 1"]),
    (["serve", "--event-queue-size", "-5"], 2, ["--event-queue-size", "'-5'"]),
    (["serve", "--event-queue-size", "lots"], 2, ["--event-queue-size", "'lots'"]),
    (["quota"], 2, ["choose an action", "get, set or usage"]),
    (["quota", "get"], 2, ["PROJECT"]),
    (["quota", "get", "p", "--db", "/nonexistent-dir/q.db"], 1, ["no such quota database", "/nonexistent-dir/q.db"]),
    (["quota", "usage", "p", "--db", "/nonexistent-dir/q.db"], 1, ["no such quota database"]),
    (["quota", "get", "p"], 1, ["no such quota database", "quotas.db"]),
    (["quota", "get", "p", "--db", "/etc/passwd"], 1, ["/etc/passwd", "not a quota database"]),
    (["quota", "get", "p", "--db", "{t}/work/adir"], 1, ["adir", "directory"]),
    (["quota", "get", "p", "--provider", "slurm"], 3, ["Slurm", "PATH"]),
    (["quota", "get", "p", "--provider", "k8s"], 2, ["invalid choice"]),
    (["quota", "set", "p", "--db", "{t}/work/q.db", "--gpu", "many"], 2, ["--gpu", "invalid int"]),
    (["quota", "set", "p", "--db", "{t}/work/trace.csv", "--gpu", "1"], 3, ["trace.csv", "not a database"]),
    (["quota", "set", "p", "--db", "{t}/work/adir/x/q.db", "--clear", "bogus"], 2, ["--clear", "bogus"]),
    (["quota", "set", "p", "--db", "{t}/work/q.db", "--enforce", "--no-enforce"], 2, ["not allowed"]),
]


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("argv", "status", "words"), CASES, ids=[" ".join(c[0]) or "(none)" for c in CASES])
def test_a_mistake_is_one_line_and_no_traceback_and_no_new_file(
    tmp: Path, argv: Sequence[str], status: int, words: Sequence[str]
) -> None:
    before = _files(tmp)
    args = [a.replace("{t}", str(tmp)) for a in argv]
    result = _cli(tmp, *args)
    err = result.stderr
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert result.returncode == status, (result.returncode, err)
    # argparse prints its usage lines, then one "error:" line; the others print only that line.
    errors = [line for line in err.splitlines() if line.strip() and not line.startswith(("usage:", " "))]
    assert len(errors) == 1, err
    for word in words:
        assert word in errors[0], (word, err)
    assert result.stdout == "", result.stdout
    assert _files(tmp) == before, "the command left a file behind"
    assert not Path("/nonexistent-dir").exists()


def test_conflicting_case_accepts_any_case_of_a_policy_name(tmp: Path) -> None:
    result = _cli(tmp, "simulate", "trace.csv", "--gpus", "4", "--policy", "FIFO,Backfill", "--json")
    assert result.returncode == 0, result.stderr
    assert '"policy": "fifo"' in result.stdout and '"policy": "backfill"' in result.stdout


def test_a_plot_path_without_a_suffix_is_written_where_asked(tmp: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (in the test extra)")
    result = _cli(tmp, "simulate", "trace.csv", "--gpus", "4", "--plot", "utilisation")
    assert result.returncode == 0, result.stderr
    assert (tmp / "work" / "utilisation").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp / "work" / "utilisation.png").exists()


def _journal(tmp: Path) -> Path:
    from plugin_scheduling import SimulatedSystem
    from plugin_scheduling.jobs import JobScheduler

    db = tmp / "work" / "jobs.db"
    s = JobScheduler(journal=db, stats_provider=SimulatedSystem(gpus=[]).snapshot_async)
    for i in range(30):
        s.submit_job(f"module_{i}", priority=i)
    s.flush()
    return db


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "argv",
    [
        ["jobs", "--journal", "{db}", "--json"],
        ["jobs", "--journal", "{db}", "show", "1", "--json"],
        ["jobs", "--journal", "{db}", "history"],
        ["ledger", "--json"],
        ["ledger"],
        ["simulate", "trace.csv", "--gpus", "4", "--policy", "fifo,sjf"],
        ["trace", "generate", "--jobs", "20000"],
        ["stats", "--json"],
        ["demo"],  # its plugin threads and its log handler print too
        ["quota", "--help"],
        ["--help"],
    ],
    ids=lambda a: " ".join(a),
)
def test_a_reader_that_goes_away_ends_the_command_quietly(tmp: Path, argv: Sequence[str]) -> None:
    db = _journal(tmp) if "{db}" in argv else None
    args = [a.replace("{db}", str(db)) for a in argv]
    read_end, write_end = os.pipe()
    os.close(read_end)  # `| head` that has already exited: every write fails with EPIPE
    try:
        result = _cli(tmp, *args, stdout=write_end)
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "Exception ignored" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    assert result.returncode == 0


def test_every_option_has_help_and_every_command_an_example() -> None:
    from plugin_scheduling.__main__ import _build_parser

    def walk(parser: object, path: str) -> None:
        import argparse

        assert isinstance(parser, argparse.ArgumentParser)
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
                continue
            assert action.help, f"{path}: {action.option_strings or action.dest} has no help"
        if path.strip():
            assert "example" in (parser.epilog or ""), f"{path}: no example in its help"

    walk(_build_parser(), "")


def test_the_top_level_help_names_every_command() -> None:
    from plugin_scheduling.__main__ import _build_parser

    text = _build_parser().format_help()
    import re

    for command in ("demo", "stats", "quota", "jobs", "simulate", "trace", "ledger"):
        assert re.search(rf"^ +{command} +\S", text, re.M), command
    assert "seed" not in text.lower()


def test_an_unexpected_error_is_one_line_and_a_variable_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from plugin_scheduling import __main__ as cli

    def boom(argv: object) -> int:
        raise RuntimeError("the disk ate it\nsecond line")

    monkeypatch.setattr(cli, "_run", boom)
    monkeypatch.delenv("PLUGIN_SCHEDULING_TRACEBACK", raising=False)
    assert cli.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "RuntimeError: the disk ate it" in err
    monkeypatch.setenv("PLUGIN_SCHEDULING_TRACEBACK", "1")
    with pytest.raises(RuntimeError):
        cli.main([])
    monkeypatch.setattr(cli, "_run", lambda argv: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli.main([]) == cli.EXIT_INTERRUPTED


def test_the_table_fits_100_columns_in_human_units_and_wide_has_every_metric(tmp: Path) -> None:
    policies = "fifo,best_effort_fifo,backfill,sjf,las"
    compact = _cli(tmp, "simulate", "sample", "--gpus", "16", "--policy", policies)
    assert compact.returncode == 0, compact.stderr
    lines = compact.stdout.splitlines()
    assert len(lines) == 6 and max(map(len, lines)) <= 100, lines
    assert lines[0].split()[:4] == ["policy", "jobs", "avg", "JCT"]
    assert " h " in lines[1] + " " and "%" in lines[1]  # hours, percentages: not 1,951,264.0
    wide = _cli(tmp, "simulate", "sample", "--gpus", "16", "--policy", "fifo", "--wide")
    assert wide.returncode == 0, wide.stderr
    assert wide.stdout.split()[:3] == ["policy", "jobs", "avg_jct_s"] and "makespan_s" in wide.stdout


def test_human_seconds() -> None:
    from plugin_scheduling._cli_sim import human_seconds

    assert [human_seconds(v) for v in (None, 42.04, 2850.0, 4.2 * 3600, 3.1 * 86400, float("inf"))] == [
        "-", "42.0 s", "47.5 min", "4.2 h", "3.1 d", "-",
    ]


def test_json_says_how_the_run_was_made_and_the_plot_has_a_title(tmp: Path) -> None:
    import hashlib
    import json

    result = _cli(tmp, "simulate", "trace.csv", "--nodes", "2", "--gpus-per-node", "2", "--policy", "FIFO,las", "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)["run"]
    assert run["trace"]["sha256"] == hashlib.sha256(TRACE.encode()).hexdigest() and run["trace"]["jobs"] == 3
    assert run["cluster"]["gpus"] == 4 and run["cluster"]["nodes"] == 2
    assert run["policies"] == ["fifo", "las"] and run["version"] and run["wall_s"] >= 0


def test_by_user_breaks_each_policy_down_per_user(tmp: Path) -> None:
    import json

    (tmp / "work" / "users.csv").write_text(
        "job_id,submit_time,duration,num_gpu,user\na,0,3600,2,ann\nb,0,60,1,bo\nc,10,60,1,bo\n"
    )
    result = _cli(tmp, "simulate", "users.csv", "--gpus", "2", "--by", "user", "--json")
    assert result.returncode == 0, result.stderr
    [fifo] = json.loads(result.stdout)["results"]
    rows = {r["user"]: r for r in fifo["by_user"]}
    assert [r["user"] for r in fifo["by_user"]] == ["ann", "bo"]  # heaviest first
    assert rows["ann"]["gpu_hours"] == 2.0 and rows["bo"]["jobs"] == 2
    assert rows["ann"]["avg_wait_s"] == 0 and rows["bo"]["avg_wait_s"] > 3000  # fifo: bo waits behind ann
    text = _cli(tmp, "simulate", "users.csv", "--gpus", "2", "--by", "user")
    assert "fifo, per user:" in text.stdout and "GPU-h" in text.stdout


def test_the_progress_bar_says_how_long_is_left() -> None:
    import io
    import time

    from plugin_scheduling._cli_sim import _Progress

    err = io.StringIO()
    bar = _Progress("fifo", err)
    bar.started = time.monotonic() - 30.0  # 30 s for the first half: about 30 s more
    bar(50, 100)
    assert "50%  about 3" in err.getvalue() and err.getvalue().endswith(" s left")
    bar(100, 100)
    assert err.getvalue().endswith("100%\n")

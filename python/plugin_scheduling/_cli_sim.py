"""``python -m plugin_scheduling simulate`` and ``... trace generate``."""

from __future__ import annotations

import argparse
import csv
import json
import hashlib
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, TextIO

COMMANDS = ("simulate", "trace")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def _numbers(text: str) -> List[float]:
    return [_number(part) for part in text.split(",") if part.strip()]


def _mapping(text: str) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for part in text.split(","):
        field, sep, column = part.partition("=")
        if not sep or not field.strip() or not column.strip():
            raise argparse.ArgumentTypeError(f"must be FIELD=COLUMN[,FIELD=COLUMN...], got {text!r}")
        out[field.strip()] = column.strip()
    return out


def _weights(text: str) -> List[tuple[str, float]]:
    out = []
    for part in text.split(","):
        value, sep, weight = part.partition(":")
        if not sep:
            raise argparse.ArgumentTypeError(f"must be VALUE:WEIGHT[,VALUE:WEIGHT...], got {text!r}")
        out.append((value.strip(), _number(weight)))
    return out


SIMULATE_EPILOG = """\
examples:
  %(prog)s sample --gpus 16 --policy fifo,backfill,las
  %(prog)s trace.csv --gpus 16 --policy fifo,sjf --wide
  %(prog)s sample --gpus 16 --policy fifo,fair_share --by user
  %(prog)s trace.csv --nodes 4 --gpus-per-node 8 --policy fair_share --json
  %(prog)s trace.csv --gpus 16 --plot out.png --jobs-csv jobs.csv

Policies (case-insensitive): fifo, best_effort_fifo, priority, fair_share, deadline,
sjf, round_robin, backfill, multifactor, las."""

TRACE_EPILOG = """\
examples:
  %(prog)s generate --jobs 500 -o trace.csv
  %(prog)s generate --jobs 2000 --seed 7 --jobs-per-hour 60 --users 20"""

GENERATE_EPILOG = """\
examples:
  %(prog)s --jobs 500 -o trace.csv
  %(prog)s --jobs 100 --gpus 1:0.5,4:0.5 --deadline-slack 3"""


def add_parsers(commands: Any) -> None:
    from ._cli_util import HelpFormatter

    sim = commands.add_parser(
        "simulate",
        help="replay a trace on a simulated cluster under one or more policies",
        description="Replays a workload trace on a simulated cluster, once per policy, and compares the results.",
        epilog=SIMULATE_EPILOG,
        formatter_class=HelpFormatter,
    )
    sim.add_argument(
        "trace", help="CSV (header required) or JSON-lines trace; 'sample' for the 200-job sample shipped with the package"
    )
    sim.add_argument("--gpus", type=_positive_int, metavar="N", help="one pool of N GPUs (or use --nodes/--gpus-per-node)")
    sim.add_argument("--nodes", type=_positive_int, metavar="K", help="K nodes (with --gpus-per-node; not with --gpus)")
    sim.add_argument("--gpus-per-node", type=_positive_int, metavar="G", help="GPUs on each node (with --nodes)")
    sim.add_argument("--policy", default="fifo", help="policies to compare, comma-separated")
    sim.add_argument("--json", action="store_true", help='print {"results": [...]} only')
    sim.add_argument(
        "--by", choices=("user",), metavar="user",
        help="also break the results down per user (jobs, JCT, wait, GPU-hours)",
    )
    sim.add_argument(
        "--wide", action="store_true",
        help="every metric, in seconds (default: a compact table in hours/days that fits 100 columns)",
    )
    sim.add_argument("--jobs-csv", metavar="OUT.csv", help="write the per-job table of every policy to this file")
    sim.add_argument(
        "--plot", metavar="OUT.png",
        help="plot queue length and GPU utilization (needs matplotlib; format from the suffix: png, svg, pdf, ...)",
    )
    sim.add_argument(
        "--columns", type=_mapping, metavar="FIELD=COLUMN,...",
        help="read a trace whose columns have other names, e.g. num_gpu=gpus,duration=runtime",
    )
    sim.add_argument("--vram-per-gpu-mb", type=_number, metavar="MB", help="VRAM of each GPU (jobs with vram_mb above it never fit)")
    sim.add_argument("--ram-per-node-mb", type=_number, metavar="MB", help="RAM of each node (checked against the jobs' ram_mb)")
    sim.add_argument(
        "--node-cost-per-hour", type=_numbers, metavar="C[,C...]",
        help="price of each node per hour (one value for all, or one per node) for the cost metric",
    )
    sim.add_argument(
        "--las-thresholds", type=_numbers, metavar="GPU_S[,GPU_S...]",
        help="las: attained GPU-seconds at which a job drops to the next queue",
    )
    sim.add_argument(
        "--las-promote-knob", type=_number, metavar="K",
        help="las starvation guard (Tiresias' PROMOTEKNOB; default 0 = off)",
    )
    sim.add_argument(
        "--preempt", action=argparse.BooleanOptionalAction, default=None,
        help="follow the policy's preemption advice (default: only las)",
    )
    sim.add_argument(
        "--no-oracle-estimates", action="store_true",
        help="jobs without estimated_duration get no estimate (default: their true duration)",
    )
    trace = commands.add_parser(
        "trace", help="workload traces (generate)", description="Workload traces for the simulator.",
        epilog=TRACE_EPILOG, formatter_class=HelpFormatter,
    )
    sub = trace.add_subparsers(dest="trace_command", metavar="ACTION")
    trace.set_defaults(_parser=trace)
    gen = sub.add_parser(
        "generate", help="a synthetic (Gavel-like) trace as CSV",
        description="Writes a synthetic trace (Poisson arrivals, Gavel-like GPU counts and durations) as CSV.",
        epilog=GENERATE_EPILOG, formatter_class=HelpFormatter,
    )
    gen.add_argument("--jobs", type=_positive_int, required=True, metavar="N", help="how many jobs")
    gen.add_argument("--seed", type=int, default=0, help="random seed: the same seed gives the same trace")
    gen.add_argument("--jobs-per-hour", type=_number, default=30.0, metavar="RATE", help="Poisson arrival rate")
    gen.add_argument(
        "--gpus", type=_weights, default=None, metavar="N:W,...",
        help="GPU counts and weights (default 1:0.7,2:0.1,4:0.15,8:0.05)",
    )
    gen.add_argument(
        "--durations", type=_weights, default=None, metavar="LO-HI:W,...",
        help="log10-minute ranges and weights (default 1.5-3:0.8,3-4:0.2)",
    )
    gen.add_argument("--users", type=_positive_int, default=10, metavar="N", help="how many users submit")
    gen.add_argument("--deadline-slack", type=_number, metavar="X", help="give each job deadline = submit + X × duration")
    gen.add_argument("--output", "-o", metavar="FILE", help="file to write (default: stdout)")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def human_seconds(value: Optional[float]) -> str:
    """A duration people read at a glance: ``42.0 s``, ``47.5 min``, ``4.2 h``, ``3.1 d``."""
    if value is None or not math.isfinite(value):
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 2 * 3600:
        return f"{value / 60:.1f} min"
    if value < 48 * 3600:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def _percent(value: Optional[float]) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


#: The compact table: (header, metric, format); fits 100 columns.
COMPACT = (
    ("jobs", "jobs", _fmt),
    ("avg JCT", "avg_jct_s", human_seconds),
    ("p95 JCT", "p95_jct_s", human_seconds),
    ("avg wait", "avg_wait_s", human_seconds),
    ("p95 wait", "p95_wait_s", human_seconds),
    ("slowdown", "avg_slowdown", lambda v: "-" if v is None else f"{v:.2f}"),
    ("util", "gpu_utilization", _percent),
    ("SLO met", "slo_attainment", _percent),
    ("preempt", "preemptions", _fmt),
)


def _columns(names: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(n), *(len(row[i]) for row in rows)) for i, n in enumerate(names)]
    lines = ["  ".join(n.rjust(w) if i else n.ljust(w) for i, (n, w) in enumerate(zip(names, widths)))]
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def render_table(results: Sequence[Dict[str, Any]], wide: bool = True) -> str:
    """One row per policy: every metric in seconds (``wide``), or the compact
    table in human units that fits 100 columns."""
    from .simulator import METRICS

    if not wide:
        shown = [c for c in COMPACT if any(r.get(c[1]) is not None for r in results)]
        names = ["policy", *(c[0] for c in shown)]
        rows = [[str(r.get("policy")), *(fmt(r.get(metric)) for _, metric, fmt in shown)] for r in results]
        return _columns(names, rows)
    names = ["policy", *[m for m in METRICS if any(r.get(m) is not None for r in results)]]
    return _columns(names, [[_fmt(r.get(n)) for n in names] for r in results])


class _Progress:
    """A one-line progress bar on stderr, with the time left (from the pace so far)."""

    def __init__(self, label: str, err: TextIO) -> None:
        self.label = label
        self.err = err
        self.shown = -1
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total == 0 else done * 100 // total
        if pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            eta = ""
            if 0 < pct < 100:
                left = (time.monotonic() - self.started) * (100 - pct) / pct
                eta = f"  about {human_seconds(left)} left"
            self.err.write(f"\r\x1b[K{self.label:<16} [{bar:<25}] {pct:3d}%{eta}")
            if pct == 100:
                self.err.write("\n")
            self.err.flush()


def _plot(results: Sequence[Any], path: str, total_gpus: int, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, middle, bottom) = plt.subplots(3, 1, figsize=(10, 9))
    for r in results:
        tl = r.timeline_columns()
        hours = [t / 3600.0 for t in tl["time"]]
        top.step(hours, tl["queue_length"], where="post", label=r.policy)
        middle.step(hours, [b / total_gpus for b in tl["busy_gpus"]], where="post", label=r.policy, linewidth=0.8)
        jct = sorted(v / 3600.0 for v in r.job_columns()["jct_s"] if v is not None)
        if jct:
            bottom.step(jct, [(i + 1) / len(jct) for i in range(len(jct))], where="post", label=r.policy)
    top.set_ylabel("queue length (jobs)")
    middle.set_ylabel("GPU utilization")
    middle.set_xlabel("time (hours)")
    middle.set_ylim(0, 1.05)
    middle.sharex(top)
    bottom.set_xlabel("job completion time (hours)")
    bottom.set_ylabel("share of jobs (CDF)")
    bottom.set_xscale("log")
    bottom.set_ylim(0, 1.02)
    top.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format=_plot_format(path))
    plt.close(fig)


def _check_cluster(args: argparse.Namespace) -> None:
    from ._cli_util import EXIT_USAGE, CliError

    if args.gpus is not None and (args.nodes is not None or args.gpus_per_node is not None):
        raise CliError(
            "give --gpus N (one pool) or --nodes K with --gpus-per-node G, not both "
            f"(got --gpus {args.gpus} with --nodes {args.nodes} --gpus-per-node {args.gpus_per_node})",
            EXIT_USAGE,
        )
    if args.gpus is None and (args.nodes is None or args.gpus_per_node is None):
        raise CliError("give --gpus N, or --nodes K with --gpus-per-node G", EXIT_USAGE)


def _check_plot(path: str) -> None:
    """Refuses before the simulation what would fail after it: no
    matplotlib, an unwritable path, a format matplotlib cannot write."""
    from ._cli_util import EXIT_USAGE, CliError, output_path

    try:
        import matplotlib  # noqa: F401
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        raise CliError(
            "--plot needs matplotlib, which is not installed: pip install 'plugin-scheduling[plot]'", EXIT_USAGE
        ) from None
    output_path("--plot", path)
    suffix = _plot_format(path)
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise CliError(
            f"--plot {path}: cannot write .{suffix} files; use one of {', '.join('.' + k for k in sorted(supported))}",
            EXIT_USAGE,
        )


def _plot_format(path: str) -> str:
    """The format of ``path`` by its suffix (``png`` without one: the file is
    written at exactly ``path``, no suffix added)."""
    import os

    return os.path.splitext(path)[1].lstrip(".").lower() or "png"


def by_user(result: Any) -> List[Dict[str, Any]]:
    """Per user of one result: jobs, average and p95 (nearest rank) JCT,
    average wait, GPU-hours; the heaviest users (by GPU-hours) first."""
    cols = result.job_columns()
    groups: Dict[str, List[int]] = {}
    for i, user in enumerate(cols["user"]):
        groups.setdefault("-" if user is None else str(user), []).append(i)
    rows: List[Dict[str, Any]] = []
    for user, idx in groups.items():
        jct = sorted(cols["jct_s"][i] for i in idx if cols["jct_s"][i] is not None)
        wait = [cols["wait_s"][i] for i in idx if cols["wait_s"][i] is not None]
        gpu_s = sum((cols["duration"][i] or 0.0) * (cols["num_gpu"][i] or 0) for i in idx)
        rows.append({
            "user": user,
            "jobs": len(idx),
            "avg_jct_s": sum(jct) / len(jct) if jct else None,
            "p95_jct_s": jct[max(0, math.ceil(0.95 * len(jct)) - 1)] if jct else None,
            "avg_wait_s": sum(wait) / len(wait) if wait else None,
            "gpu_hours": gpu_s / 3600.0,
        })
    rows.sort(key=lambda r: (-r["gpu_hours"], r["user"]))
    return rows


def render_by_user(policy: str, rows: Sequence[Dict[str, Any]]) -> str:
    names = ["user", "jobs", "avg JCT", "p95 JCT", "avg wait", "GPU-h"]
    table = [
        [r["user"], str(r["jobs"]), human_seconds(r["avg_jct_s"]), human_seconds(r["p95_jct_s"]),
         human_seconds(r["avg_wait_s"]), f"{r['gpu_hours']:,.1f}"]
        for r in rows
    ]
    return f"\n{policy}, per user:\n" + _columns(names, table)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _cluster(args: argparse.Namespace) -> str:
    if args.gpus is not None:
        return f"{args.gpus} GPUs"
    return f"{args.nodes} nodes × {args.gpus_per_node} GPUs"


def _run_info(
    args: argparse.Namespace, path: str, jobs: int, policies: Sequence[str], started: float
) -> Dict[str, Any]:
    """What a result needs to be reproduced: the trace (path, SHA-256), the
    cluster, the policies and options, the package version, the wall time."""
    from . import __version__

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return {
        "trace": {"path": os.path.abspath(path), "sha256": digest.hexdigest(), "jobs": jobs, "columns": args.columns},
        "cluster": {
            "gpus": args.gpus if args.gpus is not None else args.nodes * args.gpus_per_node,
            "nodes": args.nodes,
            "gpus_per_node": args.gpus_per_node,
            "vram_per_gpu_mb": args.vram_per_gpu_mb,
            "ram_per_node_mb": args.ram_per_node_mb,
            "node_cost_per_hour": args.node_cost_per_hour,
        },
        "policies": list(policies),
        "options": {
            "preempt": args.preempt,
            "oracle_estimates": not args.no_oracle_estimates,
            "las_thresholds": args.las_thresholds,
        },
        "version": __version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (time.monotonic() - started))),
        "wall_s": round(time.monotonic() - started, 3),
    }


def run_simulate(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from .simulator import METRICS, load_trace, simulate

    from ._cli_util import CliError, output_path, policy_names

    try:
        policies = policy_names("--policy", args.policy)
        _check_cluster(args)
        if args.jobs_csv:
            output_path("--jobs-csv", args.jobs_csv)
        if args.plot:
            _check_plot(args.plot)
    except CliError as e:
        err.write(f"error: {e.message}\n")
        return e.code
    started = time.monotonic()
    path = args.trace
    if path == "sample" and not os.path.exists(path):
        from .simulator import sample_trace_path

        path = sample_trace_path()
    loading = out.isatty() and err.isatty() and _size(path) >= 5_000_000
    if loading:  # a large trace takes seconds to read: say so
        err.write(f"loading {path} ({_size(path) / 1e6:,.0f} MB)...")
        err.flush()
    try:
        trace = load_trace(path, columns=args.columns)
    except (ValueError, TypeError, OSError) as e:
        err.write(f"error: {e}\n")
        return 2
    finally:
        if loading:
            err.write("\r\x1b[K")
    show_progress = out.isatty() and len(trace) >= 20_000
    results = []
    for name in policies:
        try:
            results.append(
                simulate(
                    trace,
                    gpus=args.gpus,
                    nodes=args.nodes,
                    gpus_per_node=args.gpus_per_node,
                    policy=name,
                    vram_per_gpu_mb=args.vram_per_gpu_mb,
                    ram_per_node_mb=args.ram_per_node_mb,
                    node_cost_per_hour=args.node_cost_per_hour,
                    preempt=args.preempt,
                    oracle_estimates=not args.no_oracle_estimates,
                    las_thresholds=args.las_thresholds,
                    las_promote_knob=args.las_promote_knob,
                    timeline=bool(args.plot),
                    progress=_Progress(name, err) if show_progress else None,
                )
            )
        except (ValueError, TypeError, OSError, RuntimeError) as e:
            err.write(f"error: policy {name}: {e}\n")
            return 2
    rows: List[Dict[str, Any]] = [{"policy": r.policy, **{m: r.metrics.get(m) for m in METRICS}} for r in results]
    if args.by == "user":
        for row, r in zip(rows, results):
            row["by_user"] = by_user(r)
    if args.json:
        out.write(json.dumps({"results": rows, "run": _run_info(args, path, len(trace), policies, started)}) + "\n")
    else:
        out.write(render_table([{k: v for k, v in row.items() if k != "by_user"} for row in rows], wide=args.wide) + "\n")
        for row in rows:
            if "by_user" in row:
                out.write(render_by_user(row["policy"], row["by_user"]) + "\n")
    if args.jobs_csv:
        with open(args.jobs_csv, "w", newline="") as f:
            writer: Optional[Any] = None
            for r in results:
                cols = r.job_columns()
                names = list(cols)
                if writer is None:
                    writer = csv.writer(f)
                    writer.writerow(["policy", *names])
                for values in zip(*cols.values()):
                    writer.writerow([r.policy, *("" if v is None else v for v in values)])
    if args.plot:
        total = args.gpus if args.gpus is not None else args.nodes * args.gpus_per_node
        _plot(results, args.plot, total, f"{os.path.basename(path)} ({len(trace):,} jobs) on {_cluster(args)}")
    return 0


def run_trace(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from ._cli_util import CliError, output_path
    from .simulator import generate_trace

    if args.trace_command is None:
        args._parser.error("choose an action: generate (e.g. 'trace generate --jobs 500 -o trace.csv')")
    try:
        if args.output:
            output_path("--output", args.output)
    except CliError as e:
        err.write(f"error: {e.message}\n")
        return e.code
    try:
        gpus = {int(g): w for g, w in args.gpus} if args.gpus else None
        durations = None
        if args.durations:
            durations = []
            for span, w in args.durations:
                lo, _, hi = span.partition("-")
                durations.append((float(lo), float(hi), w))
        trace = generate_trace(
            args.jobs,
            seed=args.seed,
            jobs_per_hour=args.jobs_per_hour,
            gpus=gpus,
            durations=durations,
            users=args.users,
            deadline_slack=args.deadline_slack,
        )
    except ValueError as e:
        err.write(f"error: {e}\n")
        return 2
    text = trace.to_csv()
    if args.output:
        try:
            with open(args.output, "w") as f:
                f.write(text)
        except OSError as e:
            err.write(f"error: {e}\n")
            return 2
    else:
        out.write(text)
    return 0


def run(args: argparse.Namespace) -> int:
    if args.command == "simulate":
        return run_simulate(args)
    return run_trace(args)

"""``python -m plugin_scheduling simulate`` and ``... trace generate``."""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
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


def add_parsers(commands: Any) -> None:
    sim = commands.add_parser(
        "simulate", help="replay a trace on a simulated cluster under one or more policies"
    )
    sim.add_argument("trace", help="CSV (header required) or JSON-lines trace")
    sim.add_argument("--gpus", type=_positive_int, help="one pool of N GPUs")
    sim.add_argument("--nodes", type=_positive_int, help="K nodes (with --gpus-per-node)")
    sim.add_argument("--gpus-per-node", type=_positive_int, metavar="G")
    sim.add_argument(
        "--policy", default="fifo", help="policies to compare, comma-separated (default: fifo)"
    )
    sim.add_argument("--json", action="store_true", help='print {"results": [...]} only')
    sim.add_argument("--jobs-csv", metavar="OUT", help="write the per-job table of every policy")
    sim.add_argument("--plot", metavar="OUT.png", help="plot queue length and GPU utilization")
    sim.add_argument("--columns", type=_mapping, help="FIELD=COLUMN,... for other column names")
    sim.add_argument("--vram-per-gpu-mb", type=_number)
    sim.add_argument("--ram-per-node-mb", type=_number)
    sim.add_argument("--node-cost-per-hour", type=_numbers, metavar="C[,C...]")
    sim.add_argument("--las-thresholds", type=_numbers, metavar="GPU_S[,GPU_S...]")
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
    trace = commands.add_parser("trace", help="workload traces")
    sub = trace.add_subparsers(dest="trace_command", required=True)
    gen = sub.add_parser("generate", help="a synthetic (Gavel-like) trace as CSV")
    gen.add_argument("--jobs", type=_positive_int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--jobs-per-hour", type=_number, default=30.0, help="Poisson rate (default 30)")
    gen.add_argument(
        "--gpus", type=_weights, default=None, metavar="N:W,...",
        help="GPU counts and weights (default 1:0.7,2:0.1,4:0.15,8:0.05)",
    )
    gen.add_argument(
        "--durations", type=_weights, default=None, metavar="LO-HI:W,...",
        help="log10-minute ranges and weights (default 1.5-3:0.8,3-4:0.2)",
    )
    gen.add_argument("--users", type=_positive_int, default=10)
    gen.add_argument("--deadline-slack", type=_number, help="deadline = slack × duration")
    gen.add_argument("--output", "-o", help="file to write (default: stdout)")


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 10 else f"{value:,.1f}"
    return str(value)


def render_table(results: Sequence[Dict[str, Any]]) -> str:
    from .simulator import METRICS

    names = ["policy", *[m for m in METRICS if any(r.get(m) is not None for r in results)]]
    rows = [[_fmt(r.get(n)) for n in names] for r in results]
    widths = [max(len(n), *(len(row[i]) for row in rows)) for i, n in enumerate(names)]
    lines = ["  ".join(n.rjust(w) if i else n.ljust(w) for i, (n, w) in enumerate(zip(names, widths)))]
    for row in rows:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


class _Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, err: TextIO) -> None:
        self.label = label
        self.err = err
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        pct = 100 if total == 0 else done * 100 // total
        if pct != self.shown:
            self.shown = pct
            bar = "#" * (pct // 4)
            self.err.write(f"\r{self.label:<16} [{bar:<25}] {pct:3d}%")
            if pct == 100:
                self.err.write("\n")
            self.err.flush()


def _plot(results: Sequence[Any], path: str, total_gpus: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(10, 6))
    for r in results:
        tl = r.timeline_columns()
        hours = [t / 3600.0 for t in tl["time"]]
        top.step(hours, tl["queue_length"], where="post", label=r.policy)
        bottom.step(hours, [b / total_gpus for b in tl["busy_gpus"]], where="post", label=r.policy)
    top.set_ylabel("queue length (jobs)")
    bottom.set_ylabel("GPU utilization")
    bottom.set_xlabel("time (hours)")
    bottom.set_ylim(0, 1.05)
    top.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_simulate(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from .simulator import METRICS, load_trace, simulate

    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    if not policies:
        err.write("error: --policy needs at least one policy name\n")
        return 2
    if args.gpus is None and (args.nodes is None or args.gpus_per_node is None):
        err.write("error: give --gpus N, or --nodes K with --gpus-per-node G\n")
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            err.write(
                "error: --plot needs matplotlib, which is not installed: "
                "pip install 'plugin-scheduling[plot]'\n"
            )
            return 2
    try:
        trace = load_trace(args.trace, columns=args.columns)
    except (ValueError, TypeError, OSError) as e:
        err.write(f"error: {e}\n")
        return 2
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
    rows = [{"policy": r.policy, **{m: r.metrics.get(m) for m in METRICS}} for r in results]
    if args.json:
        out.write(json.dumps({"results": rows}) + "\n")
    else:
        out.write(render_table(rows) + "\n")
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
        _plot(results, args.plot, total)
    return 0


def run_trace(args: argparse.Namespace, out: Optional[TextIO] = None, err: Optional[TextIO] = None) -> int:
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr
    from .simulator import generate_trace

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

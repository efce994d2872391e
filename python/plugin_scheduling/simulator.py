"""Trace-driven simulation: replay a workload on a simulated cluster in
virtual time under a scheduling policy, with the very policy and admission
code live scheduling runs (the Rust core), and compare policies on the usual
metrics::

    from plugin_scheduling import simulate
    result = simulate("trace.csv", gpus=64, policy="backfill")
    result.metrics["avg_jct_s"], result.jobs[0], result.timeline[:3]

Policies: every built-in name (``fifo``, ``best_effort_fifo``, ``priority``,
``fair_share``, ``deadline``, ``sjf``, ``round_robin``, ``backfill``,
``multifactor``, ``las``), or a Python object with ``key(job, now) -> float``
(lower goes first; ``job`` is a dict with ``job_id``, ``submit_time``,
``num_gpu``, ``user``, ``project``, ``priority``, ``deadline`` (seconds after
submission) and ``estimated_duration`` (what the scheduler is told)) and optionally
``admission`` (``"strict"``, ``"best_effort"`` or ``"backfill"``),
``time_varying`` (keys change with ``now`` alone), ``on_start(job, now)``,
``on_finish(job, ran_s, now)``. A Python policy is called for every key, so
it is much slower than a built-in one (fine for thousands of jobs).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _core

#: Every metric :func:`simulate` reports, in report order.
METRICS: tuple[str, ...] = tuple(_core._metric_names())

TraceInput = Union[str, "os.PathLike[str]", Sequence[Mapping[str, Any]], Any, "_core.SimTrace"]


def _pandas() -> Any:
    try:
        import pandas  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        raise ImportError(
            "to_pandas() needs pandas, which is not installed: pip install pandas"
        ) from None
    return pandas


def load_trace(trace: TraceInput, *, columns: Optional[Mapping[str, str]] = None) -> "_core.SimTrace":
    """Reads a trace once (to simulate it under several policies).

    ``trace``: a path (CSV with a header, or JSON lines: ``.jsonl`` /
    ``.ndjson`` or a first character ``{``), a list of row mappings, or a
    pandas DataFrame. ``columns`` maps trace fields to the columns that hold
    them, e.g. ``{"num_gpu": "gpus", "submit_time": "arrival"}``. A bad row
    raises ``ValueError`` naming its line (or row) and column.

    Limits (so every run is exact and no file can exhaust memory): times
    (``submit_time``, ``duration``, ``deadline``, ``estimated_duration``)
    are finite seconds from 0 to 1e12 (about 31,700 years); a line (or a
    text cell) holds at most 1 MiB; files are UTF-8 (a byte-order mark is
    fine) and are read line by line. A run whose jobs would end past 2^42 s
    of simulated time (the queue, not the trace) is refused too.
    """
    if isinstance(trace, _core.SimTrace):
        return trace
    cols = dict(columns) if columns is not None else None
    if isinstance(trace, (str, os.PathLike)):
        return _core._load_trace(os.fspath(trace), cols)
    to_dict = getattr(trace, "to_dict", None)
    if callable(to_dict) and hasattr(trace, "columns"):  # a DataFrame
        trace = to_dict("records")
    return _core._load_trace(trace, cols)


class SimulationResult:
    """One policy's run: ``metrics`` (dict), ``jobs`` (one row dict per job,
    in submission order), ``timeline`` (row dicts of ``time``,
    ``queue_length``, ``busy_gpus`` from that time on)."""

    def __init__(self, run: "_core.SimRun") -> None:
        self._run = run
        self.policy: str = run.policy
        self.metrics: Dict[str, Any] = dict(run.metrics())
        self._jobs: Optional[List[Dict[str, Any]]] = None
        self._timeline: Optional[List[Dict[str, Any]]] = None

    @staticmethod
    def _rows(columns: Mapping[str, Any]) -> List[Dict[str, Any]]:
        names = list(columns)
        return [dict(zip(names, values)) for values in zip(*columns.values())]

    @property
    def jobs(self) -> List[Dict[str, Any]]:
        """Per job: job_id, user, num_gpu, submit_time, start_time, end_time,
        wait_s, jct_s, duration, slowdown, preemptions, deadline_met, cost."""
        if self._jobs is None:
            self._jobs = self._rows(self._run.job_columns())
        return self._jobs

    @property
    def timeline(self) -> List[Dict[str, Any]]:
        if self._timeline is None:
            self._timeline = self._rows(self._run.timeline_columns())
        return self._timeline

    def job_columns(self) -> Dict[str, List[Any]]:
        """The per-job table as columns (cheaper than ``jobs`` for big runs)."""
        cols: Mapping[str, List[Any]] = self._run.job_columns()  # type: ignore[assignment]
        return {k: list(v) for k, v in cols.items()}

    def timeline_columns(self) -> Dict[str, List[Any]]:
        cols: Mapping[str, List[Any]] = self._run.timeline_columns()  # type: ignore[assignment]
        return {k: list(v) for k, v in cols.items()}

    def to_pandas(self, table: str = "jobs") -> Any:
        """The per-job table (``table="jobs"``) or the timeline
        (``"timeline"``) as a DataFrame (needs pandas)."""
        if table not in ("jobs", "timeline"):
            raise ValueError(f"table must be 'jobs' or 'timeline', got {table!r}")
        pd = _pandas()
        cols = self._run.job_columns() if table == "jobs" else self._run.timeline_columns()
        return pd.DataFrame(cols)

    def __repr__(self) -> str:
        m = self.metrics
        return (
            f"SimulationResult(policy={self.policy!r}, jobs={m['jobs']}, "
            f"avg_jct_s={m['avg_jct_s']:.1f}, gpu_utilization={m['gpu_utilization']:.3f})"
        )

    def _repr_html_(self) -> str:
        """Jupyter: the metrics as a table (durations also in hours)."""
        from ._html import table

        rows = []
        for name, value in self.metrics.items():
            hours = value / 3600.0 if name.endswith("_s") and isinstance(value, (int, float)) else None
            rows.append((name, value, None if hours is None else f"{hours:,.2f} h"))
        return table(f"SimulationResult: policy {self.policy}", ("metric", "value", ""), rows)


def simulate(
    trace: TraceInput,
    *,
    gpus: Optional[int] = None,
    nodes: Optional[int] = None,
    gpus_per_node: Optional[int] = None,
    policy: Any = "fifo",
    columns: Optional[Mapping[str, str]] = None,
    vram_per_gpu_mb: Optional[float] = None,
    ram_per_node_mb: Optional[float] = None,
    node_cost_per_hour: Union[None, float, Sequence[float]] = None,
    preempt: Optional[bool] = None,
    oracle_estimates: bool = True,
    las_thresholds: Optional[Sequence[float]] = None,
    las_promote_knob: Optional[float] = None,
    timeline: bool = True,
    progress: Optional[Callable[[int, int], Any]] = None,
) -> SimulationResult:
    """Replays ``trace`` on a cluster under ``policy`` in virtual time.

    Cluster: ``gpus=N`` (one pool) or ``nodes=K, gpus_per_node=G`` (a job
    that fits in a node runs within one node; a larger one takes whole
    nodes); optional ``vram_per_gpu_mb`` and ``ram_per_node_mb`` (checked
    against jobs' ``vram_mb`` / ``ram_mb``) and ``node_cost_per_hour`` (one
    value or one per node; adds ``cost``). ``preempt``: follow the policy's
    preemption advice (default: only ``las``). ``oracle_estimates``: a job
    without ``estimated_duration`` is estimated at its true duration (else
    it has none, and backfill cannot plan around it). ``las_thresholds``:
    LAS queue limits in GPU-seconds (default ``[3250, 7200]``, the Tiresias
    simulator's). ``las`` re-packs every queue in order at every event, as
    Tiresias' ``dlas-gpu`` does; ``las_promote_knob`` is its starvation guard
    (PROMOTEKNOB: a job outside queue 0 that has waited knob × the seconds it
    ran since its last promotion returns to queue 0; default 0 = off).
    ``progress(done, total)`` is called now and then. Ctrl-C stops a run.
    ``gpus`` and ``gpus_per_node`` are integers from 1 to 2**32 - 1 (their
    product too), ``nodes`` from 1 to 1,048,576; anything else raises
    ``ValueError`` naming the argument. Every metric is a finite number
    (or ``None`` where it does not apply), so ``json.dumps`` with
    ``allow_nan=False`` accepts them.
    """
    loaded = load_trace(trace, columns=columns)
    # Numbers are checked by the core, which names the argument.
    costs: Any = node_cost_per_hour
    if isinstance(node_cost_per_hour, (int, float)):
        costs = [node_cost_per_hour]
    run = _core._simulate(
        loaded,
        policy=policy,
        gpus=gpus,
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        vram_per_gpu_mb=vram_per_gpu_mb,
        ram_per_node_mb=ram_per_node_mb,
        node_cost_per_hour=costs,
        preempt=preempt,
        oracle_estimates=oracle_estimates,
        las_thresholds=las_thresholds,
        las_promote_knob=las_promote_knob,
        timeline=timeline,
        progress=progress,
    )
    return SimulationResult(run)


def generate_trace(
    jobs: int,
    *,
    seed: int = 0,
    jobs_per_hour: float = 30.0,
    gpus: Optional[Mapping[int, float]] = None,
    durations: Optional[Sequence[tuple[float, float, float]]] = None,
    users: int = 10,
    deadline_slack: Optional[float] = None,
) -> "_core.SimTrace":
    """A synthetic trace (Gavel's defaults): Poisson arrivals at
    ``jobs_per_hour``; GPU counts ``{gpus: weight}`` (default 1/2/4/8 at
    70/10/15/5 %); durations ``10**U(low, high)`` minutes for
    ``(low, high, weight)`` ranges (default (1.5, 3, 0.8), (3, 4, 0.2));
    ``users`` users at random; deadlines at ``deadline_slack`` × duration.

    Limits: ``jobs`` 0 to 10,000,000; ``users`` 1 to 1,000,000; ``seed`` 0
    to 2**64 - 1; duration ranges up to 10 (log10 minutes); the arrivals and
    deadlines within 1e12 s. A value outside them raises ``ValueError``
    naming it (a non-number ``TypeError``)."""
    items = getattr(gpus, "items", None)
    pairs: Any = list(items()) if callable(items) else gpus
    return _core._generate_trace(
        jobs,
        seed=seed,
        jobs_per_hour=jobs_per_hour,
        # Numbers (and their ranges) are checked by the core, naming them.
        gpus=pairs,
        durations=durations,
        users=users,
        deadline_slack=deadline_slack,
    )


def sample_trace_path() -> str:
    """The small sample trace shipped with the package."""
    return os.path.join(os.path.dirname(__file__), "data", "sample_trace.csv")

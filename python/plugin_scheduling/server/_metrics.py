"""``GET /metrics``: Prometheus text from a per-app registry (no global state)."""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ._state import SchedulerView

#: Buckets of the wait-time histogram (seconds queued before starting).
WAIT_BUCKETS = (0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class _SchedulerCollector(Collector):
    def __init__(self, view: SchedulerView) -> None:
        self.view = view

    def collect(self) -> Iterator[Any]:
        v = self.view
        jobs = GaugeMetricFamily("plugin_scheduling_jobs", "Jobs in the journal by state", labels=["state"])
        for state, n in v.scheduler.job_counts().items():
            jobs.add_metric([state], n)
        yield jobs
        queued = GaugeMetricFamily("plugin_scheduling_queue_length", "Queued jobs per queue and project", labels=["queue", "project"])
        running = GaugeMetricFamily("plugin_scheduling_running_jobs", "Running jobs per queue and project", labels=["queue", "project"])
        for family, state in ((queued, "QUEUED"), (running, "RUNNING")):
            counts: dict[tuple[str, str], int] = {}
            for d in v.records(state):
                key = (d["queue"], d["project"] or "")
                counts[key] = counts.get(key, 0) + 1
            for (queue, project), n in sorted(counts.items()):
                family.add_metric([queue, project], n)
            yield family
        cap = GaugeMetricFamily("plugin_scheduling_gpu_memory_total_mb", "GPU memory per device", labels=["gpu"])
        used = GaugeMetricFamily("plugin_scheduling_gpu_memory_used_mb", "GPU memory in use per device (NVML)", labels=["gpu"])
        reserved = GaugeMetricFamily("plugin_scheduling_gpu_memory_reserved_mb", "GPU memory reserved by grants per device", labels=["gpu"])
        snap = v.scheduler.reservations.snapshot()
        res = {str(k): float(x) for k, x in (snap.get("reserved_vram_mb") or {}).items()}
        for g in (v.last_stats().get("details") or {}).get("gpus") or []:
            idx = str(g.get("index"))
            if g.get("memory_total_mb") is not None:
                cap.add_metric([idx], float(g["memory_total_mb"]))
            if g.get("memory_used_mb") is not None:
                used.add_metric([idx], float(g["memory_used_mb"]))
            reserved.add_metric([idx], res.get(idx, 0.0))
        yield cap
        yield used
        yield reserved
        drops = GaugeMetricFamily("plugin_scheduling_event_drops", "Events dropped because a subscriber was slow (SSE streams and in-process subscribers)")
        drops.add_metric([], float(v.scheduler.event_drops))
        yield drops


class Metrics:
    def __init__(self, view: SchedulerView) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.submits = Counter("plugin_scheduling_submits", "Jobs submitted (rate() gives submits/s)", ["project"], registry=self.registry)
        self.wait = Histogram("plugin_scheduling_wait_seconds", "Seconds a job waited queued before it started", buckets=WAIT_BUCKETS, registry=self.registry)
        self.registry.register(_SchedulerCollector(view))

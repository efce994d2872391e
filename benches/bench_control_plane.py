"""Seed 002's batch API: decisions per second for 1,000 requests x 16 instances.

Measured from Python, including the conversion of the inputs (the Rust side
reads every request's and instance's attributes on each call) and building
the decisions; side by side with a plain-Python implementation of the seed's
FIFO loop over the same objects.

    python benches/bench_control_plane.py [--requests 1000] [--instances 16] [--repeat 7]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

from plugin_scheduling.control_plane import (
    AdaptivePolicy,
    CostOptimizedPolicy,
    ExecutionInstance,
    FIFOPolicy,
    ParallelismType,
    PriorityPolicy,
    RequestMetadata,
    RequestPriority,
    SchedulingDecision,
    SLOAwarePolicy,
)


def seed_fifo(requests: list[Any], instances: list[Any]) -> list[SchedulingDecision]:
    """The seed's FIFO loop, in plain Python (its README's custom-strategy shape)."""
    decisions = []
    for request in sorted(requests, key=lambda r: r.arrival_time):
        available = [i for i in instances if i.can_accept_request]
        if not available:
            continue
        target = min(available, key=lambda i: i.current_load)
        decisions.append(
            SchedulingDecision(
                request_id=request.request_id,
                target_instance_id=target.instance_id,
                parallelism_strategy=ParallelismType.TENSOR_PARALLEL,
                tensor_parallel_size=target.tensor_parallel_size,
                pipeline_parallel_size=target.pipeline_parallel_size,
                estimated_latency_ms=target.avg_latency_ms,
                estimated_cost=0.0,
                reason="FIFO scheduling to least loaded instance",
            )
        )
    return decisions


def workload(n_requests: int, n_instances: int) -> tuple[list[RequestMetadata], list[ExecutionInstance]]:
    now = time.time()
    priorities = list(RequestPriority)
    size = 7  # model names built per request, as parsed from a request body (not one shared object)
    requests = [
        RequestMetadata(
            request_id=f"req-{i}",
            prompt="Hello",
            max_tokens=64 + i % 512,
            model_name=f"llama-2-{size}b",
            priority=priorities[i % 5],
            slo_deadline_ms=None if i % 3 else 2000.0,
            arrival_time=now - (i * 7919 % n_requests) / 1000.0,
            cost_budget=None if i % 4 else 1.0,
        )
        for i in range(n_requests)
    ]
    instances = [
        ExecutionInstance(
            instance_id=f"inst-{j}",
            host="10.0.0.1",
            port=8000 + j,
            model_name="llama-2-7b",
            tensor_parallel_size=1 + j % 4,
            gpu_count=1 + j % 4,
            current_load=j % 7,
            max_concurrency=128,
            avg_latency_ms=20.0 + 5 * (j % 5),
            throughput_tokens_per_sec=1000.0 + 250 * (j % 4),
        )
        for j in range(n_instances)
    ]
    return requests, instances


def measure(fn: Callable[[], list[Any]], repeat: int) -> tuple[float, float, int]:
    """Best and median seconds per call over `repeat` timed rounds, and the decision count."""
    n = len(fn())  # warm up
    loops = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - t0 > 0.2:
            break
        loops *= 2
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return min(times), statistics.median(times), n


def _bound(policy: Any, requests: list[Any], instances: list[Any]) -> Callable[[], list[Any]]:
    return lambda: policy.schedule(requests, instances)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--instances", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    requests, instances = workload(args.requests, args.instances)
    cases: list[tuple[str, Callable[[], list[Any]]]] = [
        ("seed FIFO loop (plain Python)", lambda: seed_fifo(requests, instances)),
    ]
    for policy in (FIFOPolicy(), PriorityPolicy(), SLOAwarePolicy(), CostOptimizedPolicy(), AdaptivePolicy()):
        cases.append((f"{type(policy).__name__}.schedule", _bound(policy, requests, instances)))
    cases.append(("FIFOPolicy.prioritize", lambda: FIFOPolicy().prioritize(requests)))
    print(f"{args.requests} requests x {args.instances} instances, best (median) of {args.repeat}")
    print(f"{'case':34} {'ms/call':>16} {'decisions/s':>22} {'decisions':>9}")
    baseline = None
    for name, fn in cases:
        best, median, n = measure(fn, args.repeat)
        rate, median_rate = n / best, n / median
        baseline = baseline or rate
        print(
            f"{name:34} {best * 1e3:7.3f} ({median * 1e3:6.3f}) "
            f"{rate:>11,.0f} ({median_rate:>9,.0f}) {n:>9}  x{rate / baseline:.1f}"
        )


if __name__ == "__main__":
    main()

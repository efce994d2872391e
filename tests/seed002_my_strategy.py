# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: Copyright contributors to the SAGE project
#
# Seed 002's README, "Creating Custom Strategies", Step 1, as written; only the
# import paths changed (``.base`` / ``control_plane.types`` ->
# ``plugin_scheduling.policies`` / ``plugin_scheduling.control_plane``).
# Used by tests/test_seed002_my_strategy.py (the seed's test file).

"""My custom scheduling strategy."""

from plugin_scheduling.policies import SchedulingPolicy
from plugin_scheduling.control_plane import (
    ExecutionInstance,
    ParallelismType,
    RequestMetadata,
    SchedulingDecision,
)


class MyCustomPolicy(SchedulingPolicy):
    """My custom scheduling policy."""

    def __init__(self):
        super().__init__("MyCustom")

    def schedule(
        self,
        requests: list[RequestMetadata],
        instances: list[ExecutionInstance],
    ) -> list[SchedulingDecision]:
        """Schedule requests with custom logic."""
        decisions = []
        
        # Your scheduling logic here
        sorted_requests = self.prioritize(requests)
        
        for request in sorted_requests:
            available = [i for i in instances if i.can_accept_request]
            if not available:
                continue
            
            # Select instance based on your criteria
            target = min(available, key=lambda i: i.current_load)
            
            decision = SchedulingDecision(
                request_id=request.request_id,
                target_instance_id=target.instance_id,
                parallelism_strategy=ParallelismType.TENSOR_PARALLEL,
                tensor_parallel_size=target.tensor_parallel_size,
                pipeline_parallel_size=target.pipeline_parallel_size,
                estimated_latency_ms=target.avg_latency_ms,
                estimated_cost=0.0,
                reason="My custom scheduling logic",
            )
            decisions.append(decision)
        
        return decisions

    def prioritize(self, requests: list[RequestMetadata]) -> list[RequestMetadata]:
        """Prioritize requests for scheduling."""
        # Your prioritization logic
        return sorted(requests, key=lambda r: r.arrival_time)

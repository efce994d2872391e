# Seed 002's README, "Testing Your Strategy", as written; only the import
# paths changed (``control_plane.strategies`` -> the README's Step 1 file,
# tests/seed002_my_strategy.py; ``control_plane.types`` ->
# ``plugin_scheduling.control_plane``).
import pytest
from seed002_my_strategy import MyCustomPolicy
from plugin_scheduling.control_plane import RequestMetadata, ExecutionInstance, RequestPriority

@pytest.fixture
def policy():
    return MyCustomPolicy()

@pytest.fixture
def sample_requests():
    return [
        RequestMetadata(
            request_id="req-1",
            prompt="Test",
            max_tokens=10,
            model_name="llama-2-7b",
            priority=RequestPriority.NORMAL,
        )
    ]

@pytest.fixture
def sample_instances():
    return [
        ExecutionInstance(
            instance_id="inst-1",
            host="localhost",
            port=8000,
            model_name="llama-2-7b",
            tensor_parallel_size=1,
            gpu_count=1,
        )
    ]

def test_schedule(policy, sample_requests, sample_instances):
    """Test scheduling behavior."""
    decisions = policy.schedule(sample_requests, sample_instances)
    assert len(decisions) == 1
    assert decisions[0].request_id == "req-1"
    assert decisions[0].target_instance_id == "inst-1"

def test_prioritize(policy, sample_requests):
    """Test prioritization logic."""
    prioritized = policy.prioritize(sample_requests)
    assert len(prioritized) == len(sample_requests)

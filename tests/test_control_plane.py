"""Seed 002's batch API: its README's examples, the seed's test file run against
every built-in, each strategy's rules, the interface rules, bad input and
custom subclasses. Time comes from each policy's injectable ``clock``."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import textwrap
import types
from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin_scheduling import control_plane as cp
from plugin_scheduling.control_plane import (
    AdaptivePolicy,
    ControlPlaneManager,
    CostOptimizedPolicy,
    ExecutionInstance,
    FIFOPolicy,
    ParallelismType,
    PriorityPolicy,
    RequestMetadata,
    RequestPriority,
    SchedulingDecision,
    SchedulingPolicy,
    SLOAwarePolicy,
)

# The seed's test file's fixtures, shared (tests/ is on sys.path under pytest).
from test_seed002_my_strategy import sample_instances, sample_requests  # noqa: F401

NOW = 1_000_000.0
MODEL = "llama-2-7b"


def clock() -> float:
    return NOW


def req(rid: str, arrival: float = NOW, **kw: Any) -> RequestMetadata:
    kw.setdefault("model_name", MODEL)
    return RequestMetadata(request_id=rid, prompt="p", arrival_time=arrival, **kw)


def inst(iid: str, **kw: Any) -> ExecutionInstance:
    kw.setdefault("model_name", MODEL)
    return ExecutionInstance(instance_id=iid, host="localhost", port=8000, **kw)


def built_ins() -> list[SchedulingPolicy]:
    return [
        FIFOPolicy(),
        PriorityPolicy(),
        SLOAwarePolicy(clock=clock),
        CostOptimizedPolicy(clock=clock),
        AdaptivePolicy(clock=clock),
    ]


def placed(decisions: list[SchedulingDecision]) -> list[tuple[str, str]]:
    return [(d.request_id, d.target_instance_id) for d in decisions]


# --- The seed's README, its examples as written (import path changed) --------

README_EXAMPLES = [
    """
    from plugin_scheduling.control_plane import FIFOPolicy
    manager = ControlPlaneManager(scheduling_policy=FIFOPolicy())
    """,
    """
    from plugin_scheduling.control_plane import PriorityPolicy
    manager = ControlPlaneManager(scheduling_policy=PriorityPolicy())
    """,
    """
    from plugin_scheduling.control_plane import SLOAwarePolicy
    manager = ControlPlaneManager(scheduling_policy=SLOAwarePolicy())
    """,
    """
    from plugin_scheduling.control_plane import CostOptimizedPolicy
    policy = CostOptimizedPolicy(price_per_gpu_hour=2.5)
    manager = ControlPlaneManager(scheduling_policy=policy)
    """,
    """
    from plugin_scheduling.control_plane import AdaptivePolicy
    manager = ControlPlaneManager(scheduling_policy=AdaptivePolicy())
    """,
    """
    from seed002_my_strategy import MyCustomPolicy
    manager = ControlPlaneManager(scheduling_policy=MyCustomPolicy())
    """,
]


@pytest.mark.parametrize("source", README_EXAMPLES)
def test_readme_examples_run_and_schedule(source: str) -> None:
    # The seed's snippets take a ControlPlaneManager in scope.
    namespace: dict[str, Any] = {"ControlPlaneManager": ControlPlaneManager}
    exec(textwrap.dedent(source), namespace)
    manager = namespace["manager"]
    assert isinstance(manager.scheduling_policy, SchedulingPolicy)
    manager.register_instance(inst("inst-1"))
    manager.submit_request(req("req-1", max_tokens=10))
    manager.submit_request(req("req-2", model_name="other-model"))
    decisions = manager.schedule()
    assert any(d.request_id == "req-1" and d.target_instance_id == "inst-1" for d in decisions)
    assert "req-1" not in [r.request_id for r in manager.pending]


def test_readme_cost_policy_keeps_its_price() -> None:
    assert CostOptimizedPolicy(price_per_gpu_hour=2.5).price_per_gpu_hour == 2.5
    assert CostOptimizedPolicy().price_per_gpu_hour == 2.5


# --- The seed's test file, against every built-in (its fixtures) -----------


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_seed_schedule(policy: SchedulingPolicy, sample_requests: list, sample_instances: list) -> None:
    decisions = policy.schedule(sample_requests, sample_instances)
    assert len(decisions) == 1
    assert decisions[0].request_id == "req-1"
    assert decisions[0].target_instance_id == "inst-1"


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_seed_prioritize(policy: SchedulingPolicy, sample_requests: list) -> None:
    prioritized = policy.prioritize(sample_requests)
    assert len(prioritized) == len(sample_requests)


# --- Types ------------------------------------------------------------------


def test_types_have_the_seed_fields_and_defaults() -> None:
    assert [p.name for p in RequestPriority] == ["CRITICAL", "HIGH", "NORMAL", "LOW", "BACKGROUND"]
    for name in ("TENSOR_PARALLEL", "PIPELINE_PARALLEL", "DATA_PARALLEL", "HYBRID"):
        assert isinstance(ParallelismType[name], ParallelismType)
    r = RequestMetadata(request_id="r")
    assert (r.prompt, r.max_tokens, r.model_name, r.priority) == ("", None, None, RequestPriority.NORMAL)
    assert (r.slo_deadline_ms, r.user_id, r.cost_budget) == (None, None, None)
    assert isinstance(r.arrival_time, float)
    i = ExecutionInstance(instance_id="i", host="h", port=1, model_name="m")
    assert (i.tensor_parallel_size, i.pipeline_parallel_size, i.gpu_count) == (1, 1, 1)
    assert (i.can_accept_request, i.current_load, i.max_concurrency) == (True, 0, 100)
    assert (i.avg_latency_ms, i.throughput_tokens_per_sec) == (0.0, 0.0)
    assert [f.name for f in dataclasses.fields(RequestMetadata)] == [
        "request_id", "prompt", "max_tokens", "model_name", "priority",
        "slo_deadline_ms", "user_id", "arrival_time", "cost_budget",
    ]  # fmt: skip


def test_decision_keyword_construction_repr_equality_pickle() -> None:
    d = SchedulingDecision(
        request_id="req-1",
        target_instance_id="inst-1",
        parallelism_strategy=ParallelismType.PIPELINE_PARALLEL,
        tensor_parallel_size=2,
        pipeline_parallel_size=4,
        estimated_latency_ms=12.5,
        estimated_cost=0.25,
        reason="why",
    )
    assert repr(d) == (
        "SchedulingDecision(request_id='req-1', target_instance_id='inst-1', "
        "parallelism_strategy=<ParallelismType.PIPELINE_PARALLEL: 'pp'>, tensor_parallel_size=2, "
        "pipeline_parallel_size=4, estimated_latency_ms=12.5, estimated_cost=0.25, reason='why')"
    )
    same = SchedulingDecision("req-1", "inst-1", ParallelismType.PIPELINE_PARALLEL, 2, 4, 12.5, 0.25, "why")
    assert d == same and not (d != same)
    assert d != SchedulingDecision(request_id="req-1", target_instance_id="inst-2")
    assert d != "req-1"
    assert pickle.loads(pickle.dumps(d)) == d
    assert copy.copy(d) == d
    with pytest.raises(TypeError):
        hash(d)
    default = SchedulingDecision(request_id="r", target_instance_id="i")
    assert default.parallelism_strategy is ParallelismType.TENSOR_PARALLEL
    assert (default.tensor_parallel_size, default.pipeline_parallel_size) == (1, 1)
    assert (default.estimated_latency_ms, default.estimated_cost, default.reason) == (0.0, 0.0, "")
    default.reason = "changed"
    assert default.reason == "changed"
    match d:
        case SchedulingDecision(rid, iid):
            assert (rid, iid) == ("req-1", "inst-1")


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"parallelism_strategy": "tp"}, TypeError, "SchedulingDecision.parallelism_strategy"),
        ({"tensor_parallel_size": 0}, ValueError, "SchedulingDecision.tensor_parallel_size must be an int >= 1, got 0"),
        ({"estimated_cost": -1.0}, ValueError, "SchedulingDecision.estimated_cost"),
        ({"estimated_latency_ms": "fast"}, TypeError, "SchedulingDecision.estimated_latency_ms"),
        ({"reason": 3}, TypeError, "SchedulingDecision.reason must be a str, got 3 (int)"),
    ],
)
def test_decision_bad_values_name_the_field(kwargs: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        SchedulingDecision(request_id="r", target_instance_id="i", **kwargs)


# --- Interface rules ------------------------------------------------------------


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_inputs_are_not_modified(policy: SchedulingPolicy) -> None:
    requests = [req(f"r{i}", NOW - i, max_tokens=5, slo_deadline_ms=100.0 * i or None) for i in range(6)]
    instances = [inst("a", current_load=1), inst("b", avg_latency_ms=3.0, max_concurrency=2)]
    before = (list(requests), copy.deepcopy(requests), list(instances), copy.deepcopy(instances))
    policy.schedule(requests, instances)
    policy.prioritize(requests)
    assert (list(requests), requests, list(instances), instances) == before
    assert all(a is b for a, b in zip(requests, before[0]))


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_nothing_schedulable_gives_an_empty_list(policy: SchedulingPolicy) -> None:
    r = [req("r1")]
    assert policy.schedule([], [inst("a")]) == []
    assert policy.schedule(r, []) == []
    assert policy.schedule(r, [inst("a", can_accept_request=False)]) == []
    assert policy.schedule(r, [inst("a", current_load=4, max_concurrency=4)]) == []
    assert policy.schedule(r, [inst("a", model_name="another-model")]) == []
    assert policy.schedule((), ()) == []


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_only_instances_serving_the_model(policy: SchedulingPolicy) -> None:
    requests = [req("r7", model_name="m7"), req("r13", model_name="m13"), req("any", model_name=None)]
    instances = [inst("i13", model_name="m13"), inst("i7", model_name="m7")]
    got = dict(placed(policy.schedule(requests, instances)))
    assert got["r7"] == "i7" and got["r13"] == "i13"
    assert got["any"] in {"i7", "i13"}  # no model named: any instance


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_capacity_counts_decisions_made_in_the_same_call(policy: SchedulingPolicy) -> None:
    requests = [req(f"r{i}", NOW - 10 + i) for i in range(10)]
    instances = [inst("a", current_load=1, max_concurrency=3), inst("b", max_concurrency=2), inst("c", max_concurrency=0)]
    decisions = policy.schedule(requests, instances)
    per_instance = {iid: sum(1 for d in decisions if d.target_instance_id == iid) for iid in "abc"}
    assert per_instance == {"a": 2, "b": 2, "c": 0}
    assert len({d.request_id for d in decisions}) == 4


@pytest.mark.parametrize("policy", built_ins(), ids=lambda p: type(p).__name__)
def test_prioritize_returns_a_new_sorted_list_of_the_same_objects(policy: SchedulingPolicy) -> None:
    requests = [req("late", NOW - 1), req("early", NOW - 5)]
    out = policy.prioritize(requests)
    assert out is not requests and [r.request_id for r in requests] == ["late", "early"]
    assert sorted(map(id, out)) == sorted(map(id, requests))
    assert [r.request_id for r in out] == ["early", "late"]


# --- Strategies -------------------------------------------------------------------


def test_fifo_arrival_order_to_least_loaded() -> None:
    requests = [req("third", NOW - 1), req("first", NOW - 3), req("second", NOW - 2)]
    instances = [inst("busy", current_load=5), inst("idle", current_load=1, avg_latency_ms=99.0), inst("mid", current_load=2)]
    decisions = FIFOPolicy().schedule(requests, instances)
    # Loads 5/1/2: first -> idle (now 2); second -> idle (tie with mid, earlier instance); third -> mid.
    assert placed(decisions) == [("first", "idle"), ("second", "idle"), ("third", "mid")]
    assert {d.reason for d in decisions} == {"FIFO scheduling to least loaded instance"}
    assert decisions[0].estimated_latency_ms == 99.0 and decisions[0].estimated_cost == 0.0


def test_priority_high_first_fastest_for_critical_and_high() -> None:
    requests = [
        req("low", NOW - 9, priority=RequestPriority.LOW),
        req("bg", NOW - 8, priority=RequestPriority.BACKGROUND),
        req("high", NOW - 1, priority=RequestPriority.HIGH),
        req("normal", NOW - 7),
        req("critical", NOW, priority=RequestPriority.CRITICAL),
    ]
    instances = [inst("fast-busy", current_load=10, avg_latency_ms=5.0), inst("slow-idle", avg_latency_ms=90.0)]
    policy = PriorityPolicy()
    assert [r.request_id for r in policy.prioritize(requests)] == ["critical", "high", "normal", "low", "bg"]
    decisions = policy.schedule(requests, instances)
    assert placed(decisions) == [
        ("critical", "fast-busy"),
        ("high", "fast-busy"),
        ("normal", "slow-idle"),
        ("low", "slow-idle"),
        ("bg", "slow-idle"),
    ]
    assert decisions[0].reason == "Priority CRITICAL scheduling to fastest instance"
    assert decisions[2].reason == "Priority NORMAL scheduling to least loaded instance"


def test_priority_same_level_keeps_arrival_order() -> None:
    requests = [req("b", NOW - 1, priority=RequestPriority.HIGH), req("a", NOW - 2, priority=RequestPriority.HIGH)]
    assert [r.request_id for r in PriorityPolicy().prioritize(requests)] == ["a", "b"]


def test_slo_urgency_orders_and_sends_urgent_to_fastest() -> None:
    now = [NOW]
    policy = SLOAwarePolicy(clock=lambda: now[0])
    requests = [
        req("relaxed", NOW - 0.1, slo_deadline_ms=10_000.0),  # 1% spent
        req("no-slo", NOW - 50),
        req("urgent", NOW - 0.9, slo_deadline_ms=1000.0),  # 90% spent
        req("missed", NOW - 5, slo_deadline_ms=1000.0),  # past its deadline
    ]
    instances = [inst("slow-idle", avg_latency_ms=80.0), inst("fast-busy", current_load=3, avg_latency_ms=5.0)]
    assert [r.request_id for r in policy.prioritize(requests)] == ["missed", "urgent", "relaxed", "no-slo"]
    decisions = policy.schedule(requests, instances)
    assert placed(decisions) == [
        ("missed", "fast-busy"),
        ("urgent", "fast-busy"),
        ("relaxed", "slow-idle"),
        ("no-slo", "slow-idle"),
    ]
    assert decisions[0].reason == "SLO-aware scheduling (urgency: 1.00) to fastest instance"
    assert decisions[1].reason == "SLO-aware scheduling (urgency: 0.90) to fastest instance"
    assert decisions[2].reason == "SLO-aware scheduling (urgency: 0.01) to least loaded instance"
    # Time passing makes the relaxed request urgent too (the clock is read per call).
    now[0] = NOW + 9.0
    later = dict(placed(policy.schedule([requests[0]], instances)))
    assert later == {"relaxed": "fast-busy"}
    # The threshold is a setting.
    now[0] = NOW
    lenient = SLOAwarePolicy(urgency_threshold=0.95, clock=lambda: now[0])
    assert dict(placed(lenient.schedule([requests[2]], instances))) == {"urgent": "slow-idle"}


def test_slo_accepts_datetime_arrival_times() -> None:
    arrived = datetime.now() - timedelta(seconds=0.9)
    r = RequestMetadata(request_id="dt", arrival_time=arrived, slo_deadline_ms=1000.0, model_name=MODEL)
    fake_now = arrived.timestamp() + 0.9
    decisions = SLOAwarePolicy(clock=lambda: fake_now).schedule([r], [inst("a")])
    assert decisions[0].reason.startswith("SLO-aware scheduling (urgency: 0.90)")


def test_cost_cheapest_meeting_slo_and_budget() -> None:
    policy = CostOptimizedPolicy(price_per_gpu_hour=2.5, clock=clock)
    big = inst("8-gpu-fast", gpu_count=8, throughput_tokens_per_sec=3600.0, avg_latency_ms=50.0)
    small = inst("1-gpu-slow", gpu_count=1, throughput_tokens_per_sec=3600.0, avg_latency_ms=500.0)
    r = req("r", max_tokens=3600)  # one second on either
    (d,) = policy.schedule([r], [big, small])
    assert d.target_instance_id == "1-gpu-slow"
    assert d.estimated_cost == pytest.approx(2.5 / 3600)
    assert d.reason == f"Cost-optimized scheduling (cost: ${2.5 / 3600:.6f})"
    # An SLO only the 8-GPU instance meets.
    (d,) = policy.schedule([req("slo", max_tokens=3600, slo_deadline_ms=100.0)], [big, small])
    assert d.target_instance_id == "8-gpu-fast" and d.estimated_cost == pytest.approx(8 * 2.5 / 3600)
    # A budget the 8-GPU instance exceeds: the SLO cannot be met, the cheapest within budget serves.
    (d,) = policy.schedule([req("both", max_tokens=3600, slo_deadline_ms=100.0, cost_budget=0.001)], [big, small])
    assert d.target_instance_id == "1-gpu-slow" and d.reason.endswith("no instance can meet the SLO")
    # A budget nothing fits: no decision.
    assert policy.schedule([req("poor", max_tokens=3600, cost_budget=1e-9)], [big, small]) == []
    # The price scales the cost; more tokens cost more.
    assert CostOptimizedPolicy(5.0).schedule([r], [small])[0].estimated_cost == pytest.approx(5.0 / 3600)
    assert policy.schedule([req("long", max_tokens=7200)], [small])[0].estimated_cost == pytest.approx(5.0 / 3600)


def test_cost_orders_by_priority_then_budget() -> None:
    requests = [
        req("loose", NOW - 3, cost_budget=10.0),
        req("none", NOW - 4),
        req("tight", NOW - 1, cost_budget=0.5),
        req("high", NOW, priority=RequestPriority.HIGH),
    ]
    order = [r.request_id for r in CostOptimizedPolicy(clock=clock).prioritize(requests)]
    assert order == ["high", "tight", "loose", "none"]


def test_adaptive_switches_strategy_and_says_which() -> None:
    policy = AdaptivePolicy(clock=clock)
    assert policy.active_policy is None
    busy = [inst("busy", current_load=90, max_concurrency=100)]
    middling = [inst("mid", current_load=50, max_concurrency=100)]
    idle = [inst("idle", current_load=10, max_concurrency=100)]
    cases = [
        ([req("h", priority=RequestPriority.HIGH), req("n")], idle, policy.priority_policy, "high-priority requests present", "Priority "),
        ([req("s", slo_deadline_ms=500.0)], busy, policy.slo_policy, "SLO requests under high load", "SLO-aware"),
        ([req("s", slo_deadline_ms=500.0)], idle, policy.cost_policy, "low load, optimizing for cost", "Cost-optimized"),
        ([req("n")], busy, policy.slo_policy, "default SLO-aware scheduling", "SLO-aware"),
        ([req("s", slo_deadline_ms=500.0)], middling, policy.slo_policy, "default SLO-aware scheduling", "SLO-aware"),
    ]
    for requests, instances, chosen, why, inner in cases:
        decisions = policy.schedule(requests, instances)
        assert policy.active_policy is chosen and policy.active_reason == why
        assert decisions and all(
            d.reason.startswith(f"Adaptive[{chosen.kind}] ({why}): {inner}") for d in decisions
        )
    # Thresholds are settings.
    strict = AdaptivePolicy(low_load_threshold=0.6, clock=clock)
    strict.schedule([req("s", slo_deadline_ms=500.0)], middling)
    assert strict.active_policy is strict.cost_policy
    eager = AdaptivePolicy(high_load_threshold=0.4, clock=clock)
    eager.schedule([req("s", slo_deadline_ms=500.0)], middling)
    assert eager.active_reason == "SLO requests under high load"
    # Sub-policy settings follow the constructor.
    assert AdaptivePolicy(urgency_threshold=0.5, price_per_gpu_hour=4.0).slo_policy.urgency_threshold == 0.5
    assert AdaptivePolicy(price_per_gpu_hour=4.0).cost_policy.price_per_gpu_hour == 4.0


def test_decisions_describe_the_instance_layout() -> None:
    instances = [inst("hybrid", tensor_parallel_size=2, pipeline_parallel_size=2, avg_latency_ms=7)]
    (d,) = FIFOPolicy().schedule([req("r")], instances)
    assert d.parallelism_strategy is ParallelismType.HYBRID
    assert (d.tensor_parallel_size, d.pipeline_parallel_size, d.estimated_latency_ms) == (2, 2, 7.0)
    (d,) = FIFOPolicy().schedule([req("r")], [inst("pp", pipeline_parallel_size=4)])
    assert d.parallelism_strategy is ParallelismType.PIPELINE_PARALLEL


# --- Look-alike inputs (the seed's own types, plain objects) -------------------------


def test_look_alike_objects_and_tuples_are_accepted() -> None:
    class SeedPriority(__import__("enum").Enum):  # the seed's enum, another class
        CRITICAL = 0
        HIGH = 1
        NORMAL = 2

    r = types.SimpleNamespace(
        request_id="ns", priority=SeedPriority.HIGH, arrival_time=datetime.now(), model_name=MODEL,
        max_tokens=None, slo_deadline_ms=None, cost_budget=None,
    )  # fmt: skip
    i = types.SimpleNamespace(
        instance_id="ns-i", model_name=MODEL, tensor_parallel_size=1, pipeline_parallel_size=1, gpu_count=1,
        can_accept_request=True, current_load=0.5, max_concurrency=1, avg_latency_ms=1, throughput_tokens_per_sec=0,
    )  # fmt: skip
    (d,) = PriorityPolicy().schedule((r,), (i,))
    assert (d.request_id, d.target_instance_id, d.reason) == ("ns", "ns-i", "Priority HIGH scheduling to fastest instance")
    assert PriorityPolicy().schedule([req("named", priority="critical")], [inst("a")])[0].reason.startswith("Priority CRITICAL")


# --- Bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("max_tokens", -5, ValueError, "requests[1].max_tokens must be an int >= 0, got -5 (int)"),
        ("max_tokens", "10", TypeError, "requests[1].max_tokens must be an int, got '10' (str)"),
        ("max_tokens", True, TypeError, "requests[1].max_tokens must be an int, got True (bool)"),
        ("priority", "urgent", ValueError, "requests[1].priority must be a RequestPriority"),
        ("priority", 7, ValueError, "requests[1].priority must be a RequestPriority"),
        ("arrival_time", "now", TypeError, "requests[1].arrival_time must be a timestamp"),
        ("slo_deadline_ms", float("inf"), ValueError, "requests[1].slo_deadline_ms must be a finite number >= 0"),
        ("cost_budget", -0.5, ValueError, "requests[1].cost_budget must be a finite number >= 0, got -0.5"),
        ("model_name", 42, TypeError, "requests[1].model_name must be a str or None, got 42 (int)"),
    ],
)
def test_bad_request_fields_are_named(field: str, value: Any, error: type, message: str) -> None:
    good = req("ok")
    bad = types.SimpleNamespace(**{**dataclasses.asdict(req("bad")), field: value})
    for policy in built_ins():
        with pytest.raises(error) as info:
            policy.schedule([good, bad], [inst("a")])
        assert message in str(info.value)
    # The dataclass checks at construction too.
    with pytest.raises(error, match=f"RequestMetadata.{field}"):
        RequestMetadata(request_id="x", **{field: value})


@pytest.mark.parametrize(
    ("field", "value", "error", "message"),
    [
        ("max_concurrency", -1, ValueError, "instances[0].max_concurrency must be an int >= 0, got -1"),
        ("current_load", "busy", TypeError, "instances[0].current_load must be a number, got 'busy' (str)"),
        ("tensor_parallel_size", 0, ValueError, "instances[0].tensor_parallel_size must be an int >= 1"),
        ("gpu_count", 1.5, TypeError, "instances[0].gpu_count must be an int, got 1.5 (float)"),
        ("avg_latency_ms", float("nan"), ValueError, "instances[0].avg_latency_ms must be a finite number >= 0"),
        ("model_name", None, TypeError, "instances[0].model_name must be a str, got None"),
    ],
)
def test_bad_instance_fields_are_named(field: str, value: Any, error: type, message: str) -> None:
    bad = types.SimpleNamespace(**{**dataclasses.asdict(inst("bad")), field: value})
    with pytest.raises(error) as info:
        FIFOPolicy().schedule([req("r")], [bad])
    assert message in str(info.value)
    with pytest.raises(error, match=f"ExecutionInstance.{field}"):
        inst("x", **{field: value})


def test_missing_attributes_and_wrong_containers_are_named() -> None:
    with pytest.raises(AttributeError, match=r"requests\[0\].priority is missing"):
        FIFOPolicy().schedule([types.SimpleNamespace(request_id="r")], [inst("a")])
    with pytest.raises(TypeError, match="requests must be a list, got 'abc'"):
        FIFOPolicy().schedule("abc", [inst("a")])
    with pytest.raises(TypeError, match="instances must be a list"):
        FIFOPolicy().schedule([req("r")], 3)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: SLOAwarePolicy(urgency_threshold=-0.1), ValueError),
        (lambda: SLOAwarePolicy(urgency_threshold="high"), TypeError),
        (lambda: CostOptimizedPolicy(price_per_gpu_hour=float("nan")), ValueError),
        (lambda: AdaptivePolicy(high_load_threshold=-1), ValueError),
        (lambda: SLOAwarePolicy(clock=5), TypeError),
    ],
)
def test_bad_policy_settings_are_named(make: Any, error: type) -> None:
    with pytest.raises(error, match=r"Policy\.(urgency_threshold|price_per_gpu_hour|high_load_threshold|clock)"):
        make()


def test_a_setting_changed_to_nonsense_later_is_refused_at_schedule() -> None:
    policy = CostOptimizedPolicy()
    policy.price_per_gpu_hour = -3.0
    with pytest.raises(ValueError, match="price_per_gpu_hour must be a finite number >= 0, got -3"):
        policy.schedule([req("r")], [inst("a")])


# --- Custom strategies -----------------------------------------------------------------


def test_the_seed_custom_policy_runs_where_built_ins_do() -> None:
    from seed002_my_strategy import MyCustomPolicy

    policy = MyCustomPolicy()
    assert policy.name == "MyCustom" and isinstance(policy, SchedulingPolicy)
    (d,) = policy.schedule([req("r")], [inst("a")])
    assert d.reason == "My custom scheduling logic"
    manager = ControlPlaneManager(scheduling_policy=policy)
    manager.register_instance(inst("a"))
    manager.submit_request(req("r"))
    assert placed(manager.schedule()) == [("r", "a")]


def test_a_built_in_subclass_overriding_prioritize_is_scheduled_in_its_order() -> None:
    class Newest(FIFOPolicy):
        def prioritize(self, requests: list) -> list:
            return sorted(requests, key=lambda r: r.arrival_time, reverse=True)

    requests = [req("old", NOW - 5), req("new", NOW)]
    instances = [inst("only", max_concurrency=1)]
    assert placed(Newest().schedule(requests, instances)) == [("new", "only")]
    assert placed(FIFOPolicy().schedule(requests, instances)) == [("old", "only")]


def test_a_custom_policy_without_schedule_says_so() -> None:
    class Bare(SchedulingPolicy):
        pass

    with pytest.raises(NotImplementedError, match="Bare has no built-in strategy"):
        Bare("bare").schedule([req("r")], [inst("a")])
    with pytest.raises(NotImplementedError, match="prioritize"):
        Bare().prioritize([req("r")])


def test_exports() -> None:
    for name in cp.__all__:
        assert hasattr(cp, name), name
    from plugin_scheduling import policies

    assert cp.FIFOPolicy is policies.FIFOPolicy and cp.SchedulingPolicy is policies.SchedulingPolicy


# --- Property: the rules hold for any batch ------------------------------------------------

request_st = st.builds(
    lambda i, p, age, model, tokens, slo, budget: RequestMetadata(
        request_id=f"r{i}", priority=p, arrival_time=NOW - age, model_name=model,
        max_tokens=tokens, slo_deadline_ms=slo, cost_budget=budget,
    ),
    st.integers(0, 10**6), st.sampled_from(RequestPriority), st.floats(0, 10),
    st.sampled_from(["m0", "m1", "m2", None]), st.none() | st.integers(0, 4000),
    st.none() | st.floats(1, 5000), st.none() | st.floats(0, 0.01),
)  # fmt: skip
instance_st = st.builds(
    lambda i, model, tp, gpus, accept, load, cap, lat, tput: ExecutionInstance(
        instance_id=f"i{i}", host="h", port=1, model_name=model, tensor_parallel_size=tp, gpu_count=gpus,
        can_accept_request=accept, current_load=load, max_concurrency=cap, avg_latency_ms=lat,
        throughput_tokens_per_sec=tput,
    ),
    st.integers(0, 10**6), st.sampled_from(["m0", "m1"]), st.integers(1, 4), st.integers(0, 8), st.booleans(),
    st.integers(0, 5), st.integers(0, 6), st.floats(0, 200), st.floats(0, 5000),
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(built_ins()),
    st.lists(request_st, max_size=40),
    st.lists(instance_st, max_size=6),
)
def test_any_batch_respects_capacity_and_references(policy: SchedulingPolicy, requests: list, instances: list) -> None:
    decisions = policy.schedule(requests, instances)
    by_request = {id(r): r for r in requests}
    ids = [r.request_id for r in requests]
    placed_on: dict[int, int] = {}
    seen: set[str] = set()
    for d in decisions:
        matches = [r for r in requests if r.request_id is d.request_id]
        targets = [i for i, x in enumerate(instances) if x.instance_id is d.target_instance_id]
        assert matches and targets and d.request_id in ids
        assert id(matches[0]) in by_request
        assert (d.request_id, id(matches[0])) not in seen
        seen.add((d.request_id, id(matches[0])))  # type: ignore[arg-type]
        k = targets[0]
        target = instances[k]
        assert target.can_accept_request
        assert matches[0].model_name in (None, target.model_name)
        placed_on[k] = placed_on.get(k, 0) + 1
        assert target.current_load + placed_on[k] <= target.max_concurrency


# --- This project's batch API guide runs as written ----------------------------------


def test_the_batch_api_guide_runs_and_prints_what_it_says(capsys: pytest.CaptureFixture[str]) -> None:
    import pathlib
    import re

    section = (pathlib.Path(__file__).parent.parent / "docs" / "guides" / "batch-api.md").read_text()
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    code = match.group(1)
    exec(code, {})
    printed = capsys.readouterr().out.splitlines()
    expected = [line[2:].split("  (")[0] for line in code.splitlines() if line.startswith("# ")]
    assert printed == expected


def test_each_call_is_logged_at_debug_with_the_policy_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("DEBUG", logger="plugin_scheduling.control_plane"):
        FIFOPolicy().schedule([req("a"), req("b", model_name="other")], [inst("i")])
        AdaptivePolicy(clock=clock).schedule([req("c")], [inst("i")])
    assert [r.getMessage() for r in caplog.records] == [
        f"policy {FIFOPolicy().name!r} (fifo) placed 1 of 2 requests on 1 instances",
        "policy 'Adaptive' (adaptive) placed 1 of 1 requests on 1 instances (low load, optimizing for cost)",
    ]

"""Hostile values for public constructors: only TypeError/ValueError (naming the
field) may come out -- never OverflowError, SystemError or a panic -- and the
policies refuse a bad setting when they are made, not at first use."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import plugin_scheduling as ps
from plugin_scheduling import policies as P

HOSTILE = st.one_of(
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.binary(max_size=4),
)

ENTRY_POINTS: Dict[str, Callable[[Any], object]] = {
    "PriorityPolicy(aging_per_s)": lambda v: P.PriorityPolicy(aging_per_s=v),
    "FairSharePolicy(by)": lambda v: P.FairSharePolicy(by=v),
    "FairSharePolicy(half_life_s)": lambda v: P.FairSharePolicy(half_life_s=v),
    "FairSharePolicy(shares)": lambda v: P.FairSharePolicy(shares={"ann": v}),
    "DeadlinePolicy(window_s)": lambda v: P.DeadlinePolicy(window_s=v),
    "DeadlinePolicy(boost)": lambda v: P.DeadlinePolicy(boost=v),
    "RoundRobinPolicy(by)": lambda v: P.RoundRobinPolicy(by=v),
    "MultifactorPolicy(weights)": lambda v: P.MultifactorPolicy(weights={"age": v}),
    "policy_from_name": lambda v: P.policy_from_name(v),
    "QueueScheduler(timeout)": lambda v: ps.QueueScheduler(timeout=v),
    "QueueScheduler(poll_interval)": lambda v: ps.QueueScheduler(poll_interval=v),
    "ReservationScheduler(headroom)": lambda v: ps.ReservationScheduler(headroom=v),
    "ReservationScheduler(settle_s)": lambda v: ps.ReservationScheduler(settle_s=v),
    "ReservationScheduler(claim_timeout)": lambda v: ps.ReservationScheduler(claim_timeout=v),
    "ReservationScheduler(policy)": lambda v: ps.ReservationScheduler(policy=v),
    "SimulatedSystem(gpus)": lambda v: ps.SimulatedSystem(gpus=[v]),
}


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
@settings(max_examples=60, deadline=None)
@given(value=HOSTILE)
def test_only_type_or_value_errors_come_out(name: str, value: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ENTRY_POINTS[name](value)
        except (TypeError, ValueError) as error:
            assert not isinstance(error, OverflowError), f"{name}({value!r}): {error!r}"
            assert str(error), f"{name}({value!r}) raised {type(error).__name__} without a message"


@pytest.mark.parametrize("value", [-1.0, -1e-9, float("nan"), float("inf"), 2e9])
def test_aging_out_of_range_is_refused_naming_the_field_and_value(value: float) -> None:
    with pytest.raises(ValueError, match="aging_per_s"):
        P.PriorityPolicy(aging_per_s=value)

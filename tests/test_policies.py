"""Scheduling policies from Python: standalone on plain job objects (seed 004's
``select_next_job`` / ``should_preempt``), through ``ReservationScheduler(policy=...)``
with the injectable clock, and through manifests' ``scheduling`` section.

Order is decided by the clock's arrival stamps, never by sleeping between
submissions: each waiter joins at a distinct ``ManualClock`` time while the GPU
is full, then releases hand the GPU on and the order of grants is recorded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from plugin_scheduling import ManualClock, ReservationScheduler, ReservationTimeout, policies
from plugin_scheduling.policies import (
    POLICY_NAMES,
    BackfillPolicy,
    BestEffortFIFOPolicy,
    DeadlinePolicy,
    FairSharePolicy,
    FIFOPolicy,
    MultifactorPolicy,
    PriorityPolicy,
    RoundRobinPolicy,
    SchedulingPolicy,
    SJFPolicy,
    policy_from_name,
)


def job(name, submit_time, priority=50, user=None, **kw):
    return SimpleNamespace(name=name, submit_time=submit_time, priority=priority, user=user, **kw)


def meta(name, vram_mb, **scheduling):
    manifest = {"resources": {"requires_gpu": True, "min_gpu_vram_mb": vram_mb}}
    if scheduling:
        manifest["scheduling"] = scheduling
    return SimpleNamespace(name=name, manifest=manifest)


def one_gpu(free=24000.0, total=24000.0):
    stats = {
        "memory_total_mb": 64000.0,
        "memory_available_mb": 64000.0,
        "details": {"gpus": [{"index": 0, "memory_total_mb": total, "memory_free_mb": free}]},
    }
    return lambda: stats


def eventually(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


# --------------------------------------------------------------------------- standalone


def test_every_policy_has_a_class_and_a_name():
    for name in POLICY_NAMES:
        p = policy_from_name(name)
        assert p.kind == name and p.name == name
        assert p.select_next_job(None, []) is None
    with pytest.raises(ValueError, match="lottery"):
        policy_from_name("lottery")


def test_fifo_and_priority_select_next_job_on_plain_objects():
    jobs = [job("a", 3.0, 10), job("b", 1.0, 10), job("c", 2.0, 90)]
    assert FIFOPolicy().select_next_job(None, jobs).name == "b"
    assert PriorityPolicy(aging_per_s=0).select_next_job(None, jobs).name == "c"
    assert [j.name for j in PriorityPolicy(aging_per_s=0).order(jobs)] == ["c", "b", "a"]
    # Dicts work too, and priority names.
    dicts = [{"name": "x", "submit_time": 0, "priority": "LOW"}, {"name": "y", "submit_time": 1, "priority": "CRITICAL"}]
    assert PriorityPolicy().select_next_job(None, dicts)["name"] == "y"


def test_bad_job_fields_name_the_field():
    with pytest.raises(ValueError, match=r"pending_jobs\[1\]\.priority"):
        PriorityPolicy().select_next_job(None, [job("a", 0), job("b", 1, priority=101)])
    with pytest.raises(ValueError, match="URGENT"):
        PriorityPolicy().select_next_job(None, [job("a", 0, priority="URGENT")])
    with pytest.raises(TypeError, match="submit_time"):
        FIFOPolicy().select_next_job(None, [job("a", "yesterday")])
    with pytest.raises(ValueError, match="aging_per_s"):
        PriorityPolicy(aging_per_s=float("nan")).select_next_job(None, [job("a", 0)])
    with pytest.raises(ValueError, match="by"):
        FairSharePolicy(by="team").select_next_job(None, [job("a", 0)])


def test_aging_bounds_how_long_a_low_priority_job_can_be_passed():
    p = PriorityPolicy(aging_per_s=1.0)
    old = job("old", 0.0, priority=10)
    # Submitted 89 s later at priority 100: still passes (100 > 10 + 89).
    assert p.select_next_job(None, [old, job("new", 89.0, priority=100)]).name == "new"
    # Submitted 91 s later: can no longer pass (the bound is (100-10)/1 = 90 s).
    assert p.select_next_job(None, [old, job("new", 91.0, priority=100)]).name == "old"


def test_fair_share_prefers_the_account_that_used_less():
    p = FairSharePolicy(half_life_s=3600)
    p.record_finish(job("train", 0, user="alice"), ran_s=600)
    pending = [job("a", 0.0, user="alice"), job("b", 1.0, user="bob")]
    assert p.select_next_job(None, pending).name == "b"
    assert "fair-share factor" in p.explain(pending[0]) and "alice" in p.explain(pending[0])


def test_fair_share_usage_survives_a_restart(tmp_path):
    path = tmp_path / "usage.db"
    FairSharePolicy(usage_path=path).record_finish(job("x", 0, user="alice"), ran_s=1000)
    again = FairSharePolicy(usage_path=path)
    assert again.select_next_job(None, [job("a", 0, user="alice"), job("b", 1, user="bob")]).name == "b"


def test_deadline_sjf_round_robin_and_multifactor_rules():
    now = time.time()
    urgent = job("urgent", now - 10, priority=20, deadline=now + 5)
    relaxed = job("relaxed", now - 20, priority=60)
    assert DeadlinePolicy().select_next_job(None, [relaxed, urgent]).name == "urgent"
    short = job("short", 2.0, estimated_duration=5)
    long_ = job("long", 1.0, estimated_duration=500)
    unknown = job("unknown", 0.0)
    assert [j.name for j in SJFPolicy().order([unknown, long_, short])] == ["short", "long", "unknown"]
    rr = RoundRobinPolicy()
    pending = [job("a1", 0, user="a"), job("a2", 1, user="a"), job("b1", 2, user="b")]
    served = []
    while pending:
        nxt = rr.select_next_job(None, pending)
        rr.record_start(nxt)
        served.append(nxt.name)
        pending.remove(nxt)
    assert served == ["a1", "b1", "a2"]
    m = MultifactorPolicy(weights={"age": 0, "fair_share": 0, "priority": 1, "size": 0})
    assert m.select_next_job(None, [job("lo", 0, 10), job("hi", 1, 90)]).name == "hi"
    with pytest.raises(ValueError, match="speed"):
        MultifactorPolicy(weights={"speed": 1}).select_next_job(None, [job("a", 0)])


def test_should_preempt_lowest_priority_then_most_recent_smallest_set():
    p = PriorityPolicy()
    running = [
        SimpleNamespace(name="r1", priority=10, start_time=0.0, requirements={"gpu_count": 1}),
        SimpleNamespace(name="r2", priority=10, start_time=5.0, requirements={"gpu_count": 1}),
        SimpleNamespace(name="r3", priority=90, start_time=1.0, requirements={"gpu_count": 4}),
    ]
    new = SimpleNamespace(name="n", priority=80, submit_time=6.0, requirements={"gpu_count": 1})
    assert p.should_preempt(running, new).name == "r2"
    two = SimpleNamespace(name="n", priority=80, submit_time=6.0, requirements={"gpu_count": 2})
    assert [r.name for r in p.preemption_set(running, two)] == ["r2", "r1"]
    # Never a job of higher priority; FIFO never preempts.
    four = SimpleNamespace(name="n", priority=80, submit_time=6.0, requirements={"gpu_count": 4})
    assert p.should_preempt(running, four) is None
    assert FIFOPolicy().should_preempt(running, new) is None


# --------------------------------------------------------------------------- live, with the clock


class Line:
    """Waiters that join a full GPU at distinct clock times, then are served."""

    def __init__(self, policy, **kw):
        self.clock = ManualClock()
        self.s = ReservationScheduler(timeout=30, poll_interval=30, settle_s=0, headroom=1.0,
                                      policy=policy, clock=self.clock, **kw)
        self.stats = one_gpu()
        assert self.s.allocate(meta("holder", 20000), self.stats)
        self.s.on_execution_start("holder")
        self.order: list[str] = []
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def join(self, name, vram=20000, passes=False, **kw):
        """Starts a waiter; ``passes``: it is expected to be granted at once."""
        def run():
            try:
                with self.s.lease(meta(name, vram), self.stats, **kw):
                    self.order.append(name)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                self.errors.append(e)

        n = len(self.s.snapshot()["waiters"])
        t = threading.Thread(target=run)
        t.start()
        self.threads.append(t)
        if passes:
            eventually(lambda: name in self.order)
        else:
            eventually(lambda: len(self.s.snapshot()["waiters"]) == n + 1)
        self.clock.advance(1.0)

    def serve(self):
        self.s.on_execution_finish("holder")
        for t in self.threads:
            t.join(10)
        assert not self.errors, self.errors
        return self.order


def test_live_fifo_serves_in_arrival_order():
    line = Line("fifo")
    for name in ["a", "b", "c"]:
        line.join(name)
    assert line.serve() == ["a", "b", "c"]


def test_live_priority_serves_higher_first_from_keywords_and_manifests():
    line = Line(PriorityPolicy(aging_per_s=0))
    line.join("low", priority="LOW")
    line.join("high", priority=90)
    line.join("normal")
    assert [w["plugin"] for w in line.s.snapshot()["waiters"]] == ["high", "normal", "low"]
    why = line.s.snapshot()["waiters"][2]["reason"]
    assert "2 waiter(s) ahead in priority order" in why and "priority 25" in why
    assert line.serve() == ["high", "normal", "low"]


def test_live_priority_from_manifest_scheduling_section():
    s = ReservationScheduler(timeout=5, poll_interval=30, policy="priority", settle_s=0)
    stats = one_gpu()
    m = meta("m", 1000, priority="HIGH", user="ana", project="p1", estimated_duration_s=30)
    with s.lease(m, stats):
        (g,) = s.snapshot()["grants"]
        assert (g["priority"], g["user"], g["project"]) == (75.0, "ana", "p1")
    with pytest.raises(ValueError, match=r"manifest\['scheduling'\]\['priority'\]"):
        s.allocate(meta("bad", 1, priority="URGENT"), stats)
    with pytest.raises(ValueError, match="deadline_s"):
        s.allocate(meta("bad", 1), stats, deadline_s=-1)


def test_live_fair_share_and_round_robin():
    line = Line(FairSharePolicy())
    # alice already used the GPU for 100 s of clock time.
    with line.s.lease(meta("warm", 1000), line.stats, user="alice"):
        line.clock.advance(100)
    line.join("alice-job", user="alice")
    line.join("bob-job", user="bob")
    assert line.serve() == ["bob-job", "alice-job"]
    rr = Line("round_robin")
    for name, user in [("a1", "a"), ("a2", "a"), ("b1", "b")]:
        rr.join(name, user=user)
    assert rr.serve() == ["a1", "b1", "a2"]


def test_live_best_effort_lets_a_fitting_waiter_pass_strict_fifo_does_not():
    for policy, expected in [("fifo", ["big", "small"]), ("best_effort_fifo", ["small", "big"])]:
        line = Line(policy)
        line.join("big", vram=24000)
        # 4 GB are free beside the holder: only best effort lets small go now
        # (its own reading drives the pass).
        line.join("small", vram=2000, passes=policy == "best_effort_fifo")
        assert line.serve() == expected


def test_live_backfill_admits_only_what_ends_before_the_head():
    line = Line("backfill")
    # The holder is expected to end at t=50 (it was granted without an estimate:
    # give it one through a second lease instead).
    line.s.on_execution_finish("holder")
    with line.s.lease(meta("runner", 20000), line.stats, estimated_duration_s=50):
        line.join("head", vram=24000, estimated_duration_s=10)
        line.join("long", vram=2000, estimated_duration_s=100)  # would still run at 50: waits
        line.join("short", vram=2000, estimated_duration_s=20, passes=True)  # ends by 50: backfilled
        snap = line.s.snapshot()
        assert [x["plugin"] for x in snap["waiters"]] == ["head", "long"]
    for t in line.threads:
        t.join(10)
    assert line.order[:2] == ["short", "head"]


def test_live_deadline_policy_boosts_the_urgent():
    line = Line(DeadlinePolicy(window_s=100, boost=50))
    line.join("relaxed", priority=60)
    line.join("urgent", priority=20, deadline_s=10)
    assert line.serve() == ["urgent", "relaxed"]


def test_live_sjf_uses_declared_then_measured_durations():
    line = Line("sjf")
    line.join("long", estimated_duration_s=300)
    line.join("short", estimated_duration_s=3)
    assert line.serve() == ["short", "long"]


def test_multifactor_and_backfill_objects_are_accepted():
    for policy in [MultifactorPolicy(), BackfillPolicy(), BestEffortFIFOPolicy(), SJFPolicy()]:
        s = ReservationScheduler(policy=policy)
        assert s.policy == policy.kind
    with pytest.raises(ValueError, match="policy: must be one of"):
        ReservationScheduler(policy="lottery")
    with pytest.raises(TypeError, match="select_next_job"):
        ReservationScheduler(policy=42)


# --------------------------------------------------------------------------- Python policies


class Newest(SchedulingPolicy):
    """A user's policy: last come, first served."""

    def __init__(self):
        super().__init__("newest")
        self.calls = 0

    def select_next_job(self, queue, pending_jobs):
        self.calls += 1
        return max(pending_jobs, key=lambda j: j.submit_time) if pending_jobs else None


def test_a_python_policy_is_called_by_the_core():
    policy = Newest()
    line = Line(policy)
    for name in ["a", "b", "c"]:
        line.join(name)
    assert line.serve() == ["c", "b", "a"]
    assert policy.calls >= 3
    assert line.s.policy == "newest"


class Broken(SchedulingPolicy):
    def select_next_job(self, queue, pending_jobs):
        raise ZeroDivisionError("policy bug")


def test_an_exception_in_a_python_policy_reaches_the_caller_and_leaves_nothing():
    s = ReservationScheduler(timeout=1, poll_interval=0.01, policy=Broken())
    with pytest.raises(ZeroDivisionError, match="policy bug"):
        s.allocate(meta("a", 1000), one_gpu())
    snap = s.snapshot()
    assert snap["waiters"] == [] and snap["grants"] == []

    async def main():
        with pytest.raises(ZeroDivisionError):
            await s.allocate_async(meta("a", 1000), _async(one_gpu()))

    asyncio.run(main())
    assert s.snapshot()["waiters"] == []


class WrongAnswer(SchedulingPolicy):
    def select_next_job(self, queue, pending_jobs):
        return "not a job"


def test_a_python_policy_must_return_a_pending_job():
    s = ReservationScheduler(timeout=1, policy=WrongAnswer())
    with pytest.raises(TypeError, match="must return one of the pending jobs"):
        s.allocate(meta("a", 1000), one_gpu())
    assert s.snapshot()["waiters"] == []


def _async(provider):
    async def read():
        return provider()

    return read


# --------------------------------------------------------------------------- preemption advice


def test_preemption_candidates_names_victims_and_stops_nothing():
    s = ReservationScheduler(timeout=0, policy=PriorityPolicy(), settle_s=0, headroom=1.0)
    stats = one_gpu(free=24000)
    with s.lease(meta("low", 20000), stats, priority=10) as low:
        victims = s.preemption_candidates(meta("vip", 20000), stats, priority=90)
        assert [v.id for v in victims] == [low.id]
        assert s.preemption_candidates(meta("meh", 20000), stats, priority=5) == []
        assert len(s.snapshot()["grants"]) == 1  # nothing was stopped
    fifo = ReservationScheduler(timeout=0)
    with fifo.lease(meta("low", 20000), stats):
        assert fifo.preemption_candidates(meta("vip", 20000), stats, priority=90) == []


# --------------------------------------------------------------------------- the new-user scenario


def test_two_10gb_plugins_run_at_once_on_a_24gb_card_with_the_default_settle_window():
    from plugin_scheduling import SimulatedSystem

    sim = SimulatedSystem(gpus=[24576])
    s = ReservationScheduler(timeout=5, poll_interval=30)  # settle_s=2.0 default
    a = s._reserve(meta("a", 10000), sim)
    sim.occupy(10000)  # a's model is loaded: the reading shows it
    b = s._reserve(meta("b", 10000), sim)  # within the settle window, and fits
    assert a.devices == b.devices == [0]
    why = s.explain(meta("c", 10000), sim)
    assert why["would_wait"] is True
    s._release_grant(a.id)
    s._release_grant(b.id)
    sim.free(10000)
    # When the reading lags, the settle window still protects a grant: 8 GB in
    # use by another process, a (8 GB) granted but not loaded yet; b (9 GB)
    # would fit the stale reading but not the truth (24576 - 16000 = 8576).
    sim.occupy(8000)
    s._reserve(meta("a", 8000), sim)
    why = s.explain(meta("b", 9000), sim)
    assert why["would_wait"] is True and "settling" in why["reason"] and why["settling_mb"] == 8000
    with pytest.raises(ReservationTimeout, match="can never fit"):
        ReservationScheduler(timeout=60).lease(meta("huge", 10**6), sim).__enter__()


# --------------------------------------------------------------------------- the real PluginManager


def test_manifest_priorities_order_the_real_plugin_manager(tmp_path):
    from conftest import PROBE_PLUGIN_SOURCE, probe_manifest, running_cjm_host

    from plugin_scheduling import SimulatedSystem

    def manifest(name, priority):
        m = probe_manifest(
            name, {"requires_gpu": True, "min_gpu_vram_mb": 20000}, module="policy_probe", description="policy probe"
        )
        m["scheduling"] = {"priority": priority, "user": f"user-{name}"}
        return m

    s = ReservationScheduler(timeout=60, poll_interval=30, policy="priority", settle_s=0)
    sim = SimulatedSystem(gpus=[24000.0])
    with running_cjm_host(
        tmp_path,
        sources={"policy_probe.py": PROBE_PLUGIN_SOURCE},
        manifests=[manifest("holder", "NORMAL"), manifest("low", "LOW"), manifest("high", "HIGH")],
        scheduler=s,
    ) as env:
        env.manager._get_global_stats = sim.snapshot
        results: dict[str, object] = {}

        def run(name, **kw):
            try:
                results[name] = env.manager.execute_plugin(name, **kw)
            except Exception as e:  # noqa: BLE001 - checked below
                results[name] = e

        holder = threading.Thread(target=run, args=("holder",), kwargs={"sleep": 1.0})
        holder.start()
        eventually(lambda: len(s.snapshot()["grants"]) == 1)
        threads = []
        for name in ["low", "high"]:
            t = threading.Thread(target=run, args=(name,))
            t.start()
            threads.append(t)
            eventually(lambda n=len(threads): len(s.snapshot()["waiters"]) == n)
        waiters = s.snapshot()["waiters"]
        assert [(w["plugin"], w["priority"], w["user"]) for w in waiters] == [
            ("high", 75.0, "user-high"),
            ("low", 25.0, "user-low"),
        ]
        for t in [holder, *threads]:
            t.join(30)
        assert all(not isinstance(r, Exception) for r in results.values()), results
        assert s.snapshot()["grants"] == [] and s.snapshot()["waiters"] == []


# --------------------------------------------------------------------------- live vs simulated


TRACE = [
    # job_id, submit_time, duration, priority, user
    ("j1", 1.0, 30.0, 20, "ana"),
    ("j2", 2.0, 5.0, 90, "ana"),
    ("j3", 3.0, 60.0, 50, "bo"),
    ("j4", 4.0, 10.0, 90, "cy"),
    ("j5", 5.0, 1.0, 10, "bo"),
]


@pytest.mark.parametrize("policy", ["fifo", "priority", "sjf", "round_robin", "deadline"])
def test_the_live_scheduler_and_the_simulator_start_jobs_in_the_same_order(policy):
    """One GPU busy until t=100 while the trace's jobs arrive; the simulator
    and the live ReservationScheduler (same clock times) must start them in
    the same order: one policy implementation."""
    from plugin_scheduling import simulate

    rows = [{"job_id": "j0", "submit_time": 0.0, "duration": 100.0, "num_gpu": 1, "user": "zed", "priority": 50}]
    rows += [
        {"job_id": j, "submit_time": t, "duration": d, "num_gpu": 1, "priority": p, "user": u, "estimated_duration": d}
        for j, t, d, p, u in TRACE
    ]
    simulated = sorted(simulate(rows, gpus=1, policy=policy).jobs, key=lambda r: (r["start_time"], r["job_id"]))
    sim_order = [r["job_id"] for r in simulated[1:]]

    clock = ManualClock()
    s = ReservationScheduler(timeout=30, poll_interval=30, settle_s=0, headroom=1.0, policy=policy, clock=clock)
    stats = one_gpu(free=24000, total=24000)
    holder = s._reserve(meta("j0", 24000), stats, user="zed", estimated_duration_s=100)
    s._start_grant(holder.id)
    started: list[str] = []
    waits = {}
    for j, t, d, p, u in TRACE:
        clock.advance(t - clock.now())
        w = s._begin_wait(meta(j, 24000), priority=p, user=u, estimated_duration_s=d)
        assert w.offer(stats()) is None  # the GPU is busy: in line
        waits[j] = w
    clock.advance(100 - clock.now())
    current = holder
    while waits:
        s._release_grant(current.id)
        granted = [(j, g) for j, w in waits.items() if (g := w.claim()) is not None]
        if not granted:  # nobody was handed the GPU: the head reads the stats
            for j, w in waits.items():
                if w.my_turn() and (g := w.offer(stats())) is not None:
                    granted = [(j, g)]
                    break
        assert len(granted) == 1, granted
        j, current = granted[0]
        started.append(j)
        s._start_grant(current.id)
        del waits[j]
        clock.advance(dict((x[0], x[2]) for x in TRACE)[j])
    s._release_grant(current.id)
    assert started == sim_order, (policy, started, sim_order)


# ---------------------------------------------- settings checked when made


@pytest.mark.parametrize(
    ("make", "field", "value"),
    [
        (lambda: PriorityPolicy(aging_per_s=-1), "aging_per_s", "-1"),
        (lambda: PriorityPolicy(aging_per_s=float("nan")), "aging_per_s", "nan"),
        (lambda: FairSharePolicy(by="team"), "by", "team"),
        (lambda: FairSharePolicy(half_life_s=0), "half_life_s", "0"),
        (lambda: FairSharePolicy(shares={"ann": -2}), "shares", "-2"),
        (lambda: policies.RoundRobinPolicy(by="group"), "by", "group"),
        (lambda: policies.DeadlinePolicy(boost=-5), "boost", "-5"),
        (lambda: policies.MultifactorPolicy(weights={"age": -1}), "weights", "-1"),
        (lambda: policies.policy_from_name("fifoo"), "policy", "did you mean"),
    ],
)
def test_a_bad_setting_is_refused_when_the_policy_is_made(make, field, value):
    with pytest.raises(ValueError) as info:
        make()
    assert field in str(info.value) and value in str(info.value), str(info.value)


def test_policy_names_ignore_case():
    assert isinstance(policies.policy_from_name("FIFO"), policies.FIFOPolicy)
    assert isinstance(policies.policy_from_name("Fair_Share"), FairSharePolicy)

//! Simulator tests: every metric of small traces computed by hand.

use std::sync::Arc;

use proptest::prelude::*;

use super::engine::run;
use super::trace::{parse_csv, Columns};
use super::*;
use crate::policy::{by_name, Las, Policy};

fn job(id: &str, submit: f64, duration: f64, gpus: u32, user: &str) -> TraceJob {
    TraceJob {
        job_id: id.into(),
        submit_time: submit,
        duration,
        num_gpu: gpus,
        user: Some(Arc::from(user)),
        project: None,
        priority: 50.0,
        vram_mb: None,
        ram_mb: None,
        deadline: None,
        estimated_duration: None,
        origin: format!("row {id}").into(),
    }
}

fn sim_with(trace: &[TraceJob], spec: &ClusterSpec, policy: &mut dyn Policy) -> SimResult {
    simulate(trace, spec, policy, &SimOptions::default(), &mut |_, _| {
        true
    })
    .expect("simulates")
}

fn sim(trace: &[TraceJob], gpus: u32, policy: &str) -> SimResult {
    let mut p = by_name(policy, None).expect("policy");
    sim_with(trace, &ClusterSpec::pool(gpus).expect("pool"), p.as_mut())
}

fn starts(r: &SimResult) -> Vec<f64> {
    r.jobs.iter().map(|j| j.start).collect()
}

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} != {b}");
}

/// 4 GPUs. a (u1): t0, 10 s, 4 GPUs; b (u2): t0, 5 s, 2 GPUs; c (u1): t2,
/// 4 s, 2 GPUs. FIFO: a 0–10; b 10–15 and c 10–14.
fn three() -> Vec<TraceJob> {
    let mut t = vec![
        job("a", 0.0, 10.0, 4, "u1"),
        job("b", 0.0, 5.0, 2, "u2"),
        job("c", 2.0, 4.0, 2, "u1"),
    ];
    t[0].deadline = Some(10.0); // ends at 10: met
    t[1].deadline = Some(12.0); // ends at 15: missed
    t
}

#[test]
fn fifo_metrics_by_hand() {
    let r = sim(&three(), 4, "fifo");
    assert_eq!(starts(&r), vec![0.0, 10.0, 10.0]);
    let m = &r.metrics;
    assert_eq!(m.jobs, 3);
    // JCT 10, 15, 12.
    close(m.avg_jct_s, 37.0 / 3.0);
    close(m.p50_jct_s, 12.0);
    close(m.p95_jct_s, 12.0 + 0.9 * 3.0);
    // Waits 0, 10, 8.
    close(m.avg_wait_s, 6.0);
    close(m.p95_wait_s, 8.0 + 0.9 * 2.0);
    // Slowdowns 1, 3, 3.
    close(m.avg_slowdown, 7.0 / 3.0);
    close(m.makespan_s, 15.0);
    // Busy: 4 GPUs for 0–14, 2 for 14–15: 58 GPU-s of 4 × 15.
    close(m.gpu_utilization, 58.0 / 60.0);
    // u1 mean slowdown 2, u2 3: 25 / (2 × 13).
    close(m.jain_fairness, 25.0 / 26.0);
    assert_eq!(m.slo_attainment, Some(0.5));
    assert_eq!(m.preemptions, 0);
    assert_eq!(m.cost, None);
    let tl: Vec<(f64, u32, u32)> = r
        .timeline
        .iter()
        .map(|p| (p.time, p.queue_length, p.busy_gpus))
        .collect();
    assert_eq!(
        tl,
        vec![
            (0.0, 1, 4),
            (2.0, 2, 4),
            (10.0, 0, 4),
            (14.0, 0, 2),
            (15.0, 0, 0)
        ]
    );
}

#[test]
fn completions_are_processed_before_arrivals() {
    // a holds both GPUs until 5; b arrives at 5 and starts at once.
    let t = vec![job("a", 0.0, 5.0, 2, "u"), job("b", 5.0, 1.0, 2, "u")];
    let r = sim(&t, 2, "fifo");
    assert_eq!(starts(&r), vec![0.0, 5.0]);
    close(r.metrics.avg_wait_s, 0.0);
    close(r.metrics.gpu_utilization, 1.0);
}

#[test]
fn best_effort_and_backfill_pass_a_blocked_head() {
    // 4 GPUs. a: 2 GPUs 0–10. b (t1): 4 GPUs, head until 10. c (t2): 2 GPUs
    // for 8 s ends at 10, before b's start: backfilled. d (t3): 2 GPUs,
    // 20 s: only once c is gone... under backfill it would delay b.
    let t = vec![
        job("a", 0.0, 10.0, 2, "u"),
        job("b", 1.0, 5.0, 4, "u"),
        job("c", 2.0, 8.0, 2, "u"),
        job("e", 3.0, 30.0, 1, "u"),
    ];
    assert_eq!(starts(&sim(&t, 4, "fifo")), vec![0.0, 10.0, 15.0, 15.0]);
    // c fills the 2 free GPUs at 2; e finds nothing free until 10.
    assert_eq!(starts(&sim(&t, 4, "backfill")), vec![0.0, 10.0, 2.0, 15.0]);
    assert_eq!(
        starts(&sim(&t, 4, "best_effort_fifo")),
        vec![0.0, 10.0, 2.0, 15.0]
    );
    // 5 GPUs: e (1 GPU) starts at 3 either way: under backfill because 1
    // GPU is spare beside b at 10.
    assert_eq!(
        starts(&sim(&t, 5, "best_effort_fifo")),
        vec![0.0, 10.0, 2.0, 3.0]
    );
    assert_eq!(starts(&sim(&t, 5, "backfill")), vec![0.0, 10.0, 2.0, 3.0]);
    // 4 GPUs. a: 3 GPUs 0–10; b (t1): 4 GPUs, planned for 10; e (t2): 1
    // GPU for 30 s would still hold 1 at 10. Best effort starts it, and b
    // waits for it (32); backfill keeps it back until b is done (15).
    let t = vec![
        job("a", 0.0, 10.0, 3, "u"),
        job("b", 1.0, 5.0, 4, "u"),
        job("e", 2.0, 30.0, 1, "u"),
    ];
    assert_eq!(
        starts(&sim(&t, 4, "best_effort_fifo")),
        vec![0.0, 32.0, 2.0]
    );
    assert_eq!(starts(&sim(&t, 4, "backfill")), vec![0.0, 10.0, 15.0]);
}

#[test]
fn nodes_keep_small_jobs_within_one_node() {
    // 2 nodes × 4 GPUs. a, b: 3 GPUs each (one per node). c needs 2: 2 GPUs
    // are free in all but on two nodes, so c waits (a flat pool of 8 would
    // start it). d needs 8: two whole nodes.
    let t = vec![
        job("a", 0.0, 10.0, 3, "u"),
        job("b", 0.0, 20.0, 3, "u"),
        job("c", 1.0, 5.0, 2, "u"),
        job("d", 2.0, 5.0, 8, "u"),
    ];
    let spec = ClusterSpec::nodes(2, 4).expect("spec");
    let r = sim_with(&t, &spec, by_name("fifo", None).expect("fifo").as_mut());
    assert_eq!(starts(&r), vec![0.0, 0.0, 10.0, 20.0]);
    assert_eq!(starts(&sim(&t, 8, "fifo")), vec![0.0, 0.0, 1.0, 20.0]);
}

#[test]
fn node_costs_and_ram() {
    // Node 0 costs 4/h, node 1 8/h; a 2-GPU job for an hour goes to the
    // cheaper node and pays half of it: 2.0.
    let mut spec = ClusterSpec::nodes(2, 4).expect("spec");
    spec.node_cost_per_hour = vec![4.0, 8.0];
    spec.ram_per_node_mb = Some(1000.0);
    let mut a = job("a", 0.0, 3600.0, 2, "u");
    a.ram_mb = Some(800.0);
    // b needs 500 MB: node 0 has 200 left, so b goes to the dearer node 1:
    // 1 GPU of 4 for an hour at 8/h = 2.0.
    let mut b = job("b", 0.0, 3600.0, 1, "u");
    b.ram_mb = Some(500.0);
    let r = sim_with(
        &[a, b],
        &spec,
        by_name("fifo", None).expect("fifo").as_mut(),
    );
    close(r.jobs[0].cost, 2.0);
    close(r.jobs[1].cost, 2.0);
    assert_eq!(r.metrics.cost, Some(4.0));
    let mut huge = job("h", 0.0, 1.0, 1, "u");
    huge.ram_mb = Some(5000.0);
    let e = simulate(
        &[huge],
        &spec,
        by_name("fifo", None).expect("fifo").as_mut(),
        &SimOptions::default(),
        &mut |_, _| true,
    )
    .expect_err("never fits");
    assert!(e.to_string().contains("job \"h\""), "{e}");
    assert!(e.to_string().contains("RAM"), "{e}");
    let e = simulate(
        &[job("x", 0.0, 1.0, 9, "u")],
        &spec,
        by_name("fifo", None).expect("fifo").as_mut(),
        &SimOptions::default(),
        &mut |_, _| true,
    )
    .expect_err("too many GPUs");
    assert!(
        e.to_string().contains("needs 9 GPUs, the cluster has 8"),
        "{e}"
    );
}

#[test]
fn las_preempts_and_resumes_where_it_stopped() {
    // 1 GPU, queues split at 10 GPU-s. a: 0, 30 s. b: t5, 5 s. At 5 both
    // are in queue 0 (a has 5 GPU-s): no preemption. At 10 a crosses into
    // queue 1 and b preempts it: b 10–15, then a resumes with 20 s left:
    // 15–35.
    let t = vec![job("a", 0.0, 30.0, 1, "u"), job("b", 5.0, 5.0, 1, "u")];
    let mut las = Las::new(vec![10.0]).expect("las");
    let r = sim_with(&t, &ClusterSpec::pool(1).expect("pool"), &mut las);
    assert_eq!(starts(&r), vec![0.0, 10.0]);
    close(r.jobs[0].end, 35.0);
    close(r.jobs[1].end, 15.0);
    assert_eq!(r.jobs[0].preemptions, 1);
    close(r.jobs[0].wait, 5.0);
    close(r.jobs[1].wait, 5.0);
    close(r.jobs[0].ran, 30.0);
    assert_eq!(r.metrics.preemptions, 1);
    close(r.metrics.gpu_utilization, 1.0);
    close(r.metrics.makespan_s, 35.0);
    // Without preemption LAS never stops a running job.
    let mut las = Las::new(vec![10.0]).expect("las");
    let opts = SimOptions {
        preempt: Some(false),
        ..SimOptions::default()
    };
    let r = simulate(
        &t,
        &ClusterSpec::pool(1).expect("pool"),
        &mut las,
        &opts,
        &mut |_, _| true,
    )
    .expect("simulates");
    assert_eq!(starts(&r), vec![0.0, 30.0]);
    // By name, with its default thresholds.
    assert_eq!(by_name("las", None).expect("las").name(), "las");
}

#[test]
fn a_trace_from_csv_runs_and_progress_can_stop_it() {
    let t = parse_csv(
        "job_id,submit_time,duration,num_gpu,user\n1,0,10,1,a\n2,0,10,1,b\n",
        Columns::default(),
    )
    .expect("parses");
    let r = sim(&t, 1, "sjf");
    assert_eq!(starts(&r), vec![0.0, 10.0]);
    let mut calls = 0;
    let stopped = simulate(
        &t,
        &ClusterSpec::pool(1).expect("pool"),
        by_name("fifo", None).expect("fifo").as_mut(),
        &SimOptions::default(),
        &mut |_, _| {
            calls += 1;
            false
        },
    );
    assert!(stopped.is_err());
    assert_eq!(calls, 1);
    let empty = sim(&[], 4, "fifo");
    assert_eq!(empty.metrics.jobs, 0);
    assert_eq!(empty.metrics.makespan_s, 0.0);
}

#[test]
fn estimates_are_what_backfill_is_told() {
    // As in the backfill test, but c declares 20 s (it really runs 8):
    // it no longer ends before b's start, so it is not backfilled.
    let mut t = vec![
        job("a", 0.0, 10.0, 2, "u"),
        job("b", 1.0, 5.0, 4, "u"),
        job("c", 2.0, 8.0, 2, "u"),
    ];
    t[2].estimated_duration = Some(20.0);
    assert_eq!(starts(&sim(&t, 4, "backfill")), vec![0.0, 10.0, 15.0]);
    // Without estimates at all (no oracle), nothing is backfilled either.
    t[2].estimated_duration = None;
    let opts = SimOptions {
        oracle_estimates: false,
        ..SimOptions::default()
    };
    let r = simulate(
        &t,
        &ClusterSpec::pool(4).expect("pool"),
        by_name("backfill", None).expect("backfill").as_mut(),
        &opts,
        &mut |_, _| true,
    )
    .expect("simulates");
    assert_eq!(starts(&r), vec![0.0, 10.0, 15.0]);
}

fn arb_trace() -> impl Strategy<Value = Vec<TraceJob>> {
    proptest::collection::vec((0u32..40, 1u32..30, 1u32..9, 0u32..4, 0u32..101), 1..40).prop_map(
        |rows| {
            let mut t: Vec<TraceJob> = rows
                .into_iter()
                .enumerate()
                .map(|(i, (s, d, g, u, p))| {
                    let mut j = job(
                        &i.to_string(),
                        f64::from(s),
                        f64::from(d),
                        g,
                        &format!("u{u}"),
                    );
                    j.priority = f64::from(p);
                    j.deadline = Some(f64::from(d * 2));
                    j
                })
                .collect();
            t.sort_by(|a, b| a.submit_time.total_cmp(&b.submit_time));
            t
        },
    )
}

fn spec_of(kind: u8) -> ClusterSpec {
    match kind {
        0 => ClusterSpec::pool(8).expect("pool"),
        1 => ClusterSpec::nodes(3, 4).expect("nodes"),
        _ => ClusterSpec::nodes(2, 8).expect("nodes"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// With exact estimates, every job that is the blocked head of a
    /// backfill pass starts no later than the start planned for it then:
    /// backfilled jobs never delay the head, in a pool or on nodes (where
    /// the plan holds backfilled jobs on the node they really take).
    #[test]
    fn backfill_never_delays_the_head(trace in arb_trace(), gpus in 8u32..17, kind in 0u8..3) {
        let spec = if kind == 0 { ClusterSpec::pool(gpus).expect("pool") } else { spec_of(kind) };
        let mut policy = by_name("backfill", None).expect("backfill");
        let (r, heads) = run(&trace, &spec, policy.as_mut(), &SimOptions::default(), &mut |_, _| true, true)
            .expect("simulates");
        for (h, planned) in heads {
            let actual = r.jobs[h as usize].start;
            prop_assert!(actual <= planned + 1e-9, "head {h} planned {planned}, started {actual}");
        }
    }

    /// The chunked, skipping passes start exactly what one admit call over
    /// the whole fresh order starts, for every non-preemptive policy.
    #[test]
    fn fast_passes_equal_the_reference_pass(trace in arb_trace(), kind in 0u8..3, p in 0usize..9) {
        let name = crate::policy::NAMES[p];
        let spec = spec_of(kind);
        let fast = sim_with(&trace, &spec, by_name(name, None).expect("policy").as_mut());
        let opts = SimOptions { reference: true, ..SimOptions::default() };
        let slow = simulate(&trace, &spec, by_name(name, None).expect("policy").as_mut(), &opts, &mut |_, _| true)
            .expect("simulates");
        prop_assert_eq!(starts(&fast), starts(&slow), "{}", name);
        prop_assert_eq!(&fast.metrics, &slow.metrics);
    }

    /// LAS conserves work: every job runs exactly its duration, however
    /// often it is preempted, and nobody runs on more GPUs than exist.
    #[test]
    fn las_runs_every_job_to_its_duration(trace in arb_trace(), kind in 0u8..3) {
        let spec = spec_of(kind);
        let mut las = Las::new(vec![20.0, 80.0]).expect("las");
        let r = sim_with(&trace, &spec, &mut las);
        for (t, o) in trace.iter().zip(&r.jobs) {
            prop_assert!((o.ran - t.duration).abs() < 1e-6);
            prop_assert!(o.end - t.submit_time >= t.duration - 1e-6);
            prop_assert!(o.start >= t.submit_time);
        }
        prop_assert!(r.timeline.iter().all(|p| p.busy_gpus <= spec.total_gpus()));
        prop_assert!(r.metrics.gpu_utilization <= 1.0 + 1e-9);
    }
}

fn try_sim(trace: &[TraceJob], gpus: u32, policy: &str) -> crate::error::Result<SimResult> {
    let mut p = by_name(policy, None).expect("policy");
    simulate(
        trace,
        &ClusterSpec::pool(gpus).expect("pool"),
        p.as_mut(),
        &SimOptions::default(),
        &mut |_, _| true,
    )
}

#[test]
fn times_at_the_limit_give_exact_finite_metrics() {
    let max = trace::MAX_SECONDS;
    let t = vec![
        job("a", max, max, 1, "u1"),
        job("b", max, 1.0, 1, "u2"),
        job("c", max, 0.001, 1, "u2"),
    ];
    let r = sim(&t, 3, "fifo");
    // Nothing is lost to rounding: whole seconds exactly, a millisecond
    // within a double's step there (2^-13 s).
    assert_eq!(r.jobs[0].end, 2e12);
    assert_eq!(r.jobs[1].end - max, 1.0);
    assert!((r.jobs[2].end - max - 0.001).abs() <= 2f64.powi(-13));
    let m = &r.metrics;
    for v in [
        m.avg_jct_s,
        m.p50_jct_s,
        m.p95_jct_s,
        m.avg_wait_s,
        m.p95_wait_s,
        m.avg_slowdown,
        m.makespan_s,
        m.gpu_utilization,
        m.jain_fairness,
    ] {
        assert!(v.is_finite(), "{m:?}");
    }
}

#[test]
fn a_queue_that_runs_past_the_clock_limit_is_refused_naming_the_job() {
    let max = trace::MAX_SECONDS;
    let t: Vec<TraceJob> = (0..6)
        .map(|i| job(&format!("j{i}"), 0.0, max, 1, "u"))
        .collect();
    // Ends at 1e12, 2e12, 3e12, 4e12, then 5e12 > 2^42.
    let e = try_sim(&t, 1, "fifo").expect_err("past the clock");
    assert!(
        e.to_string()
            .starts_with("trace row j4, job \"j4\": would end at 5000000000000 s"),
        "{e}"
    );
    assert!(try_sim(&t[..4], 1, "fifo").is_ok());
}

#[test]
fn traces_built_in_code_are_checked_like_parsed_ones() {
    for (field, bad) in [
        ("submit_time", job("x", f64::NAN, 1.0, 1, "u")),
        ("duration", job("x", 0.0, 1e308, 1, "u")),
        ("duration", job("x", 0.0, f64::INFINITY, 1, "u")),
        ("submit_time", job("x", -1.0, 1.0, 1, "u")),
    ] {
        let e = try_sim(&[bad], 1, "fifo").expect_err(field);
        assert!(
            e.to_string().starts_with(&format!(
                "trace row x, job \"x\", {field}: must be a finite number of seconds"
            )),
            "{e}"
        );
    }
}

#[test]
fn synthetic_sizes_are_bounded_before_anything_is_allocated() {
    use super::workload::{WorkloadSpec, MAX_JOBS};
    let e = WorkloadSpec {
        jobs: usize::MAX,
        ..WorkloadSpec::default()
    }
    .generate()
    .expect_err("too many");
    assert_eq!(
        e.to_string(),
        format!("jobs: must be at most {MAX_JOBS}, got {}", usize::MAX)
    );
    let e = WorkloadSpec {
        jobs: 3,
        jobs_per_hour: f64::MIN_POSITIVE,
        ..WorkloadSpec::default()
    }
    .generate()
    .expect_err("arrivals beyond the limit");
    assert!(
        e.to_string()
            .starts_with("jobs_per_hour: 3 jobs at 2.2250738585072014e-308 per hour"),
        "{e}"
    );
    assert!(WorkloadSpec {
        durations: vec![(11.0, 12.0, 1.0)],
        ..WorkloadSpec::default()
    }
    .generate()
    .is_err());
    assert!(WorkloadSpec {
        users: 0,
        ..WorkloadSpec::default()
    }
    .generate()
    .is_err());
    assert!(ClusterSpec::nodes(u32::MAX, 1).is_err());
    assert!(ClusterSpec::nodes(cluster::MAX_NODES, 1).is_ok());
}

/// `testdata/las_tiresias_200.csv`: 200 jobs of ours (`plugin_scheduling
/// trace generate --jobs 200 --seed 7 --jobs-per-hour 20 --durations
/// 0.5-2:0.8,2-3:0.2`, times rounded to whole seconds). The expected
/// average JCTs were recorded by running the Tiresias simulator
/// (`SymbioticLab/Tiresias`, `simulator/run_sim.py`, Python 2.7, `--scheme
/// count`, `jobs.py` defaults: 3 queues at 3,250 / 7,200 GPU-s) on the same
/// jobs and a cluster of that many GPUs (nodes of 4): `--schedule dlas-gpu`
/// (no starvation guard) and `dlas-gpu-1` (PROMOTEKNOB 1). Ours must be
/// within 2 % (measured: 0.00 %, 0.01 %, 0.16 %). The rest of the gap is
/// Tiresias' own wake-up time for a demotion, computed from seconds rather
/// than GPU-seconds (`(limit - executed_time) / num_gpu`), so it demotes
/// late; with that one line corrected it gives 9,847.01 on 32 GPUs (ours
/// 9,846.97).
#[test]
fn las_matches_the_tiresias_simulator_on_a_recorded_trace() {
    let t = parse_csv(
        include_str!("testdata/las_tiresias_200.csv"),
        Columns::default(),
    )
    .expect("parses");
    assert_eq!(t.len(), 200);
    for (gpus, knob, tiresias) in [
        (64, 0.0, 6554.395),
        (32, 0.0, 9845.515),
        (32, 1.0, 11362.42),
    ] {
        let mut las = Las::default().with_promote_knob(knob).expect("knob");
        let r = sim_with(&t, &ClusterSpec::pool(gpus).expect("pool"), &mut las);
        let ours = r.metrics.avg_jct_s;
        assert!(
            (ours - tiresias).abs() <= 0.02 * tiresias,
            "{gpus} GPUs, knob {knob}: ours {ours}, Tiresias {tiresias}"
        );
        assert!(r.metrics.preemptions > 0, "{gpus} GPUs: contended");
    }
}

//! Micro benchmarks (issue 14, item 6): the judge, the quantile the
//! watchdog computes for grouped latency queries, and the per-revision
//! aggregation of a grouped answer. `cargo bench --bench micro` measures;
//! `cargo test --all-targets` runs each once as a smoke check.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use jiff::Timestamp;
use rollback_watchdog::decide::judge::{judge, JudgePolicy, JudgeState};
use rollback_watchdog::signals::grouped::{GroupedVector, Members, Series};
use rollback_watchdog::signals::quantile::{bucket_quantile, Bucket};
use rollback_watchdog::signals::{Measurement, Outcome, SignalId, SignalResult, Threshold};

const LE: [f64; 12] = [
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    f64::INFINITY,
];

fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_790_000_000 + s).expect("a valid time")
}

/// One tick's results of a typical target: the error ratio failing over
/// its span, latency, a rule and two health checks passing, pods passing.
fn results(tick: i64) -> Vec<SignalResult> {
    let now = t(15 * tick);
    let from = t(15 * (tick - 1));
    let fail = Outcome::Fail {
        measured: Measurement::ratio(0.3),
        threshold: Threshold::Max {
            limit: Measurement::ratio(0.05),
        },
        baseline: Some(0.001),
        sentence: "30 % of 600 requests fail".into(),
    };
    vec![
        SignalResult::new(SignalId::ErrorRate, fail, now)
            .over_span(from)
            .with_requests(600.0),
        SignalResult::new(
            SignalId::Latency,
            Outcome::pass_with(Measurement::seconds(0.19)),
            now,
        )
        .over_span(from)
        .with_requests(600.0),
        SignalResult::new(SignalId::rule("payments"), Outcome::pass(), now).over_span(from),
        SignalResult::new(SignalId::health("api"), Outcome::pass(), now),
        SignalResult::new(SignalId::health(SignalId::PER_POD), Outcome::pass(), now),
        SignalResult::new(SignalId::Pods, Outcome::pass(), now),
    ]
}

fn bench_judge(c: &mut Criterion) {
    let policy = JudgePolicy {
        interval: Duration::from_secs(15),
        ..JudgePolicy::default()
    };
    let first = results(1);
    c.bench_function("judge/one tick, 6 signals", |b| {
        b.iter(|| {
            judge(
                &policy,
                black_box(&JudgeState::default()),
                black_box(&first),
                t(15),
            )
        })
    });
    let ticks: Vec<Vec<SignalResult>> = (1..=3).map(results).collect();
    c.bench_function("judge/three ticks to Bad", |b| {
        b.iter(|| {
            let mut state = JudgeState::default();
            let mut verdict = None;
            for (i, r) in ticks.iter().enumerate() {
                let j = judge(&policy, &state, black_box(r), t(15 * (i as i64 + 1)));
                verdict = Some(j.verdict);
                state = j.state;
            }
            verdict
        })
    });
}

fn buckets(pods: usize) -> Vec<Bucket> {
    let mut out = Vec::new();
    for p in 0..pods {
        let mut n = 0.0;
        for (i, le) in LE.iter().enumerate() {
            n += ((i * 7 + p * 3) % 11) as f64 * 1.5;
            out.push(Bucket {
                upper_bound: *le,
                count: n,
            });
        }
    }
    out
}

fn bench_quantile(c: &mut Criterion) {
    let one = buckets(1);
    c.bench_function("quantile/12 buckets", |b| {
        b.iter_batched(
            || one.clone(),
            |mut v| bucket_quantile(black_box(0.95), &mut v),
            BatchSize::SmallInput,
        )
    });
    // Three pods' buckets, not yet summed: the sort merges equal bounds.
    let three = buckets(3);
    c.bench_function("quantile/3 pods x 12 buckets, unmerged", |b| {
        b.iter_batched(
            || three.clone(),
            |mut v| bucket_quantile(black_box(0.95), &mut v),
            BatchSize::SmallInput,
        )
    });
}

/// A grouped answer for `deployments` Deployments of 3 pods each in 100
/// namespaces; with `le`, one series per bucket.
fn answer(deployments: usize, le: bool) -> Vec<(String, Series)> {
    let mut v = Vec::new();
    for d in 0..deployments {
        let ns = format!("ns-{}", d % 100);
        for p in 0..3 {
            let pod = format!("app-{d}-7d9f8c6b5-{p:05}");
            if le {
                for (i, b) in LE.iter().enumerate() {
                    v.push((
                        ns.clone(),
                        Series {
                            pod: pod.clone(),
                            le: Some(*b),
                            value: (i + 1) as f64,
                        },
                    ));
                }
            } else {
                v.push((
                    ns.clone(),
                    Series {
                        pod,
                        le: None,
                        value: 20.0,
                    },
                ));
            }
        }
    }
    v
}

fn members(d: usize) -> Members {
    Members {
        namespace: format!("ns-{}", d % 100),
        prefixes: vec![format!("app-{d}-7d9f8c6b5-")],
        pods: Vec::new(),
    }
}

fn bench_aggregation(c: &mut Criterion) {
    let raw = answer(10_000, false);
    c.bench_function("aggregate/index 30,000 series", |b| {
        b.iter_batched(|| raw.clone(), GroupedVector::new, BatchSize::LargeInput)
    });
    let grouped = GroupedVector::new(raw);
    c.bench_function("aggregate/sum one revision of 10,000", |b| {
        let m = members(4_321);
        b.iter(|| grouped.sum(black_box(&m)))
    });
    let all: Vec<Members> = (0..10_000).map(members).collect();
    c.bench_function("aggregate/sum all 10,000 revisions", |b| {
        b.iter(|| all.iter().filter_map(|m| grouped.sum(m)).sum::<f64>())
    });
    let histograms = GroupedVector::new(answer(1_000, true));
    c.bench_function(
        "aggregate/buckets + p95 of one revision of 1,000 (36,000 series)",
        |b| {
            let m = members(432);
            b.iter(|| {
                let mut v = histograms.buckets(black_box(&m));
                bucket_quantile(0.95, &mut v)
            })
        },
    );
}

criterion_group!(micro, bench_judge, bench_quantile, bench_aggregation);
criterion_main!(micro);

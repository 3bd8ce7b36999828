//! The watchdog's own metrics, served on the admin port's `/metrics` in the
//! OpenMetrics text format, so its users can alert on it like on any other
//! production service. Nothing here decides anything; it only counts.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetResult {
    pub target: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalResultLabels {
    pub signal: String,
    pub result: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub signal: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetOutcome {
    pub target: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkOutcome {
    pub sink: String,
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetVerdict {
    pub target: String,
    pub verdict: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn query_histogram() -> Histogram {
    // 5 ms .. ~20 s: a Prometheus query or an HTTP probe.
    Histogram::new(exponential_buckets(0.005, 2.0, 13))
}

fn incident_histogram() -> Histogram {
    // 1 s .. ~4.5 h: from a rollout to its verdict, or a verdict to recovery.
    Histogram::new(exponential_buckets(1.0, 2.0, 15))
}

/// Every metric the watchdog exports. Cheap to clone (all handles share
/// their values).
#[derive(Debug, Clone)]
pub struct Metrics {
    pub targets: Gauge,
    pub evaluations: Family<TargetResult, Counter>,
    pub signal_results: Family<SignalResultLabels, Counter>,
    pub signal_query_seconds: HistogramFamily<SignalLabels>,
    pub rollbacks: Family<TargetOutcome, Counter>,
    pub detection_seconds: Histogram,
    pub recovery_seconds: Histogram,
    pub notifications: Family<SinkOutcome, Counter>,
    pub leader: Gauge,
    pub last_tick_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// 1 for the target's current verdict, 0 for the others it had.
    pub verdict: Family<TargetVerdict, Gauge>,
}

impl Metrics {
    /// Creates the metrics and registers them (with `build_info`) in a new
    /// registry.
    pub fn new() -> (Metrics, Registry) {
        let metrics = Metrics {
            targets: Gauge::default(),
            evaluations: Family::default(),
            signal_results: Family::default(),
            signal_query_seconds: Family::new_with_constructor(query_histogram),
            rollbacks: Family::default(),
            detection_seconds: incident_histogram(),
            recovery_seconds: incident_histogram(),
            notifications: Family::default(),
            leader: Gauge::default(),
            last_tick_timestamp_seconds: Gauge::default(),
            verdict: Family::default(),
        };
        let mut registry = Registry::with_prefix("rollback_watchdog");
        registry.register(
            "targets",
            "Deployments watched now",
            metrics.targets.clone(),
        );
        registry.register(
            "evaluations",
            "Evaluations of a target, by the verdict reached",
            metrics.evaluations.clone(),
        );
        registry.register(
            "signal_results",
            "Signal results, by signal and pass/fail/inconclusive",
            metrics.signal_results.clone(),
        );
        registry.register(
            "signal_query_seconds",
            "Time taken by a signal's queries and probes",
            metrics.signal_query_seconds.clone(),
        );
        registry.register(
            "rollbacks",
            "Rollbacks, by target and outcome",
            metrics.rollbacks.clone(),
        );
        registry.register(
            "detection_seconds",
            "From the start of a revision's rollout to its Bad verdict",
            metrics.detection_seconds.clone(),
        );
        registry.register(
            "recovery_seconds",
            "From a Bad verdict to a verified rollback",
            metrics.recovery_seconds.clone(),
        );
        registry.register(
            "notifications",
            "Notification deliveries, by sink and outcome",
            metrics.notifications.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            metrics.leader.clone(),
        );
        registry.register(
            "last_tick_timestamp_seconds",
            "Unix time of the last completed evaluation tick",
            metrics.last_tick_timestamp_seconds.clone(),
        );
        registry.register(
            "target_verdict",
            "1 for each target's current verdict",
            metrics.verdict.clone(),
        );
        registry.register(
            "build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        (metrics, registry)
    }

    /// Records one tick's verdict for a target, keeping exactly one verdict
    /// series at 1.
    pub fn set_verdict(&self, target: &str, verdict: &str, all_verdicts: &[&str]) {
        for v in all_verdicts {
            self.verdict
                .get_or_create(&TargetVerdict {
                    target: target.to_string(),
                    verdict: (*v).to_string(),
                })
                .set(i64::from(*v == verdict));
        }
    }
}

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exported_with_its_prefix() {
        let (metrics, registry) = Metrics::new();
        metrics.targets.set(2);
        metrics
            .rollbacks
            .get_or_create(&TargetOutcome {
                target: "production/web".into(),
                outcome: "succeeded".into(),
            })
            .inc();
        metrics.set_verdict("production/web", "bad", &["healthy", "bad"]);
        let text = render(&registry);
        for name in [
            "rollback_watchdog_targets 2",
            "rollback_watchdog_rollbacks_total{target=\"production/web\",outcome=\"succeeded\"} 1",
            "rollback_watchdog_target_verdict{target=\"production/web\",verdict=\"bad\"} 1",
            "rollback_watchdog_target_verdict{target=\"production/web\",verdict=\"healthy\"} 0",
            "rollback_watchdog_build_info{version=",
            "# TYPE rollback_watchdog_detection_seconds histogram",
            "# TYPE rollback_watchdog_leader gauge",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name:?} in:\n{text}");
        }
    }
}

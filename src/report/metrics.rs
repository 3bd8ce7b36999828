//! The watchdog's own metrics, served on the admin port's `/metrics` in the
//! OpenMetrics text format or the Prometheus text format 0.0.4 (what the
//! scraper asks for), so its users can alert on it like on any other
//! production service. Nothing here decides anything; it only counts.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::report::status::StatusVerdict;

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

/// The `outcome` of `rollbacks_total`: every word the run loop counts a
/// finished pipeline under (`RollbackResult::metric_label`).
pub const ROLLBACK_OUTCOMES: [&str; 6] = [
    "succeeded",
    "refused",
    "dry_run",
    "conflict",
    "failed",
    "escalated",
];

/// The `outcome` of `notifications_total`: every `DeliveryResult::label`.
pub const NOTIFICATION_OUTCOMES: [&str; 4] =
    ["delivered", "gave_up", "dropped", "already_delivered"];

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
    /// Evaluations a watch event woke between ticks.
    pub event_evaluations: Counter,
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
            event_evaluations: Counter::default(),
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
            "event_evaluations",
            "Evaluations of a target's pods a watch event woke between ticks",
            metrics.event_evaluations.clone(),
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

    /// Sets `targets` to the Deployments watched now, and creates their
    /// `rollbacks_total` series at 0: a series that first appears at 1
    /// shows no `increase()`, so the first failed rollback of a target
    /// would not fire an alert on it.
    pub fn set_targets<I: IntoIterator<Item = String>>(&self, targets: I) {
        let mut count = 0;
        for target in targets {
            count += 1;
            for outcome in ROLLBACK_OUTCOMES {
                let _ = self.rollbacks.get_or_create(&TargetOutcome {
                    target: target.clone(),
                    outcome: outcome.to_string(),
                });
            }
        }
        self.targets.set(count);
    }

    /// Creates the `notifications_total` series of each configured sink
    /// at 0 (see [`Self::set_targets`]).
    pub fn set_sinks(&self, sinks: &[String]) {
        for sink in sinks {
            for outcome in NOTIFICATION_OUTCOMES {
                let _ = self.notifications.get_or_create(&SinkOutcome {
                    sink: sink.clone(),
                    outcome: outcome.to_string(),
                });
            }
        }
    }

    /// Records one tick's verdict for a target, keeping exactly one verdict
    /// series at 1.
    pub fn set_verdict(&self, target: &str, verdict: StatusVerdict) {
        for v in StatusVerdict::ALL {
            self.verdict
                .get_or_create(&TargetVerdict {
                    target: target.to_string(),
                    verdict: v.as_str().to_string(),
                })
                .set(i64::from(v == verdict));
        }
    }
}

/// The exposition formats `/metrics` speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0.0 text, what Prometheus asks for first.
    OpenMetrics,
    /// The Prometheus text format 0.0.4, for everything else: `curl`,
    /// `promtool check metrics`, older scrapers.
    Prometheus,
}

impl Format {
    /// The `Content-Type` of a body in this format (Prometheus 3 refuses a
    /// scrape whose content type it cannot tell).
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        }
    }

    /// The format for a request's `Accept` header, like the Go client's
    /// `expfmt.Negotiate`: OpenMetrics only when the client names
    /// `application/openmetrics-text` and weighs it at least as much as
    /// `text/plain`; the Prometheus text format otherwise (no header,
    /// `*/*`, a browser).
    pub fn negotiate(accept: Option<&str>) -> Format {
        let Some(accept) = accept else {
            return Format::Prometheus;
        };
        let mut openmetrics: Option<f32> = None;
        let mut text: Option<(u8, f32)> = None;
        for range in accept.split(',') {
            let mut parts = range.split(';');
            let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .and_then(|(_, v)| v.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            match media.as_str() {
                "application/openmetrics-text" => {
                    openmetrics = Some(openmetrics.map_or(q, |o| o.max(q)));
                }
                // The most specific range that matches text/plain decides.
                "text/plain" | "text/*" | "*/*" => {
                    let rank = match media.as_str() {
                        "text/plain" => 2,
                        "text/*" => 1,
                        _ => 0,
                    };
                    if text.is_none_or(|(r, _)| rank > r) {
                        text = Some((rank, q));
                    }
                }
                _ => {}
            }
        }
        match openmetrics {
            Some(q) if q > 0.0 && q >= text.map_or(0.0, |(_, t)| t) => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }
}

/// The registry in `format`: prometheus-client's own encoders for both
/// (`prometheus_text` writes 0.0.4 as the Go client does: counters named
/// with `_total`, info metrics as `_info` gauges, no `_created`, no `# EOF`).
pub fn render(registry: &Registry, format: Format) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry),
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        }
    };
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
        metrics.set_verdict("production/web", StatusVerdict::Bad);
        // Labelled families show only once they have a series.
        metrics
            .evaluations
            .get_or_create(&TargetResult {
                target: "production/web".into(),
                result: "bad".into(),
            })
            .inc();
        metrics
            .signal_results
            .get_or_create(&SignalResultLabels {
                signal: "pods".into(),
                result: "fail".into(),
            })
            .inc();
        metrics
            .signal_query_seconds
            .get_or_create(&SignalLabels {
                signal: "error_rate".into(),
            })
            .observe(0.2);
        metrics
            .notifications
            .get_or_create(&SinkOutcome {
                sink: "oncall".into(),
                outcome: "delivered".into(),
            })
            .inc();
        let text = render(&registry, Format::OpenMetrics);
        for name in [
            "rollback_watchdog_targets 2",
            "rollback_watchdog_rollbacks_total{target=\"production/web\",outcome=\"succeeded\"} 1",
            "rollback_watchdog_target_verdict{target=\"production/web\",verdict=\"bad\"} 1",
            "rollback_watchdog_target_verdict{target=\"production/web\",verdict=\"healthy\"} 0",
            "rollback_watchdog_build_info{version=",
            "# TYPE rollback_watchdog_detection_seconds histogram",
            "# TYPE rollback_watchdog_recovery_seconds histogram",
            "# TYPE rollback_watchdog_signal_query_seconds histogram",
            "# TYPE rollback_watchdog_evaluations counter",
            "# TYPE rollback_watchdog_signal_results counter",
            "# TYPE rollback_watchdog_notifications counter",
            "# TYPE rollback_watchdog_last_tick_timestamp_seconds gauge",
            "# TYPE rollback_watchdog_leader gauge",
            "# EOF",
        ] {
            assert!(text.contains(name), "missing {name:?} in:\n{text}");
        }
    }

    #[test]
    fn the_prometheus_text_names_counter_and_info_families_as_their_samples() {
        let (metrics, registry) = Metrics::new();
        metrics
            .rollbacks
            .get_or_create(&TargetOutcome {
                target: "production/web".into(),
                outcome: "succeeded".into(),
            })
            .inc();
        let text = render(&registry, Format::Prometheus);
        for line in [
            "# HELP rollback_watchdog_rollbacks_total Rollbacks, by target and outcome.",
            "# TYPE rollback_watchdog_rollbacks_total counter",
            "rollback_watchdog_rollbacks_total{target=\"production/web\",outcome=\"succeeded\"} 1",
            "# TYPE rollback_watchdog_build_info gauge",
            "# TYPE rollback_watchdog_detection_seconds histogram",
            "rollback_watchdog_detection_seconds_bucket{le=\"+Inf\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("# EOF"), "{text}");
        assert!(!text.contains(" info\n"), "{text}");
    }

    #[test]
    fn openmetrics_is_served_only_to_a_client_that_asks_for_it() {
        let cases = [
            (None, Format::Prometheus),
            (Some("*/*"), Format::Prometheus),
            (Some("text/plain"), Format::Prometheus),
            // Prometheus 2.x.
            (
                Some("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"),
                Format::OpenMetrics,
            ),
            // Prometheus 3.x.
            (
                Some("application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6,application/openmetrics-text;version=0.0.1;q=0.5,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"),
                Format::OpenMetrics,
            ),
            (Some("application/openmetrics-text"), Format::OpenMetrics),
            (Some("application/openmetrics-text;q=0"), Format::Prometheus),
            (
                Some("text/plain;q=0.9, application/openmetrics-text;q=0.5"),
                Format::Prometheus,
            ),
            // A browser.
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                Format::Prometheus,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::negotiate(accept), want, "Accept: {accept:?}");
        }
    }

    #[test]
    fn every_notification_outcome_is_created_at_zero_for_each_sink() {
        use crate::report::notify::DeliveryResult;
        let reason = String::new;
        let labels: Vec<&str> = [
            DeliveryResult::Delivered,
            DeliveryResult::GaveUp { reason: reason() },
            DeliveryResult::Dropped { reason: reason() },
            DeliveryResult::AlreadyDelivered,
        ]
        .iter()
        .map(DeliveryResult::label)
        .collect();
        assert_eq!(labels, NOTIFICATION_OUTCOMES);

        let (metrics, registry) = Metrics::new();
        metrics.set_sinks(&["oncall".to_string()]);
        metrics.set_targets(["production/web".to_string(), "production/api".to_string()]);
        let text = render(&registry, Format::Prometheus);
        assert!(text.contains("rollback_watchdog_targets 2\n"), "{text}");
        for line in [
            "rollback_watchdog_notifications_total{sink=\"oncall\",outcome=\"gave_up\"} 0",
            "rollback_watchdog_rollbacks_total{target=\"production/api\",outcome=\"failed\"} 0",
            "rollback_watchdog_rollbacks_total{target=\"production/web\",outcome=\"succeeded\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
    }
}

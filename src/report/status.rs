//! What the watchdog sees, as one document: served as JSON on the admin
//! port's `/status` and printed as a table by `rollback-watchdog status`.
//! It is a snapshot for people and scripts; nothing reads it to decide.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::decide::judge::Verdict;
use crate::signals::{BaselineNote, Outcome, SignalResult};

/// Which part this replica plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Holds the Lease: the only replica that acts.
    Leader,
    /// Evaluates and reports, never acts.
    Follower,
    /// Leader election is off: this process acts alone.
    #[default]
    Standalone,
    /// `status --once`: one evaluation, nothing acts.
    OneShot,
}

/// A target's verdict as `/status` shows it: the judge's, or `unknown`
/// before its revision was first evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StatusVerdict {
    Healthy,
    Inconclusive,
    Suspect,
    Bad,
    Degraded,
    #[default]
    Unknown,
}

impl StatusVerdict {
    /// Every value, in the order of the one-hot verdict gauge.
    pub const ALL: [StatusVerdict; 6] = [
        StatusVerdict::Healthy,
        StatusVerdict::Inconclusive,
        StatusVerdict::Suspect,
        StatusVerdict::Bad,
        StatusVerdict::Degraded,
        StatusVerdict::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StatusVerdict::Healthy => "healthy",
            StatusVerdict::Inconclusive => "inconclusive",
            StatusVerdict::Suspect => "suspect",
            StatusVerdict::Bad => "bad",
            StatusVerdict::Degraded => "degraded",
            StatusVerdict::Unknown => "unknown",
        }
    }
}

impl From<Verdict> for StatusVerdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Healthy => StatusVerdict::Healthy,
            Verdict::Inconclusive => StatusVerdict::Inconclusive,
            Verdict::Suspect => StatusVerdict::Suspect,
            Verdict::Bad => StatusVerdict::Bad,
            Verdict::Degraded => StatusVerdict::Degraded,
        }
    }
}

impl std::fmt::Display for StatusVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The whole snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    pub cluster: String,
    pub role: Role,
    /// Every cache has synced at least once.
    pub ready: bool,
    /// RFC 3339 time of the snapshot.
    pub generated_at: String,
    pub targets: Vec<TargetStatus>,
    /// Problems that are not one target's: a config entry whose Deployment
    /// does not exist, Prometheus unreachable at start-up...
    pub warnings: Vec<String>,
}

/// One watched Deployment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub namespace: String,
    pub name: String,
    /// The revision under judgment (the Deployment's current one).
    pub revision: Option<i64>,
    pub pod_template_hash: Option<String>,
    pub images: Vec<String>,
    pub window: Option<WindowStatus>,
    pub known_good: Option<KnownGoodStatus>,
    pub verdict: StatusVerdict,
    /// Sentences behind the verdict, decisive first.
    pub reasons: Vec<String>,
    pub signals: Vec<SignalStatus>,
    /// Some signal has been Inconclusive longer than `blind_alert_after`.
    pub blind: bool,
    /// This target's own problems (a bad annotation value...).
    pub warnings: Vec<String>,
    /// RFC 3339 time of the last evaluation.
    pub last_evaluated: Option<String>,
}

/// The observation window of the revision under judgment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WindowStatus {
    pub opened_at: String,
    /// None while it lasts until the rollout completes (in progress or
    /// paused).
    pub closes_at: Option<String>,
    /// Whole seconds left; 0 once closed, None while it has no end yet.
    pub remaining_seconds: Option<u64>,
    pub open: bool,
    /// Why it is open or when it closes: "rollout in progress", "paused
    /// ...", "until 10:15:00, 15m after the rollout completed".
    #[serde(default)]
    pub why: String,
}

/// The revision recorded as known-good (the preferred rollback target).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KnownGoodStatus {
    pub revision: i64,
    pub pod_template_hash: String,
}

/// One signal's last result, flattened for people and scripts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SignalStatus {
    /// Stable id: `error_rate`, `latency`, `health:<name>`, `pods`, `rule:<name>`.
    pub signal: String,
    /// `pass`, `fail` or `inconclusive`.
    pub result: String,
    /// The measured value as text (`30.2 %`, `412 ms`), when there is one.
    pub value: Option<String>,
    /// The line a person reads.
    pub detail: String,
    /// Consecutive failing ticks counted so far.
    pub failing_ticks: u32,
    pub at: String,
    /// Start of the span of requests the result covers (Prometheus signals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_from: Option<String>,
    /// Requests in that span.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// The baseline compared with, or why there is none: on every result
    /// of a relative signal, passing or not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<BaselineStatus>,
}

/// A [`BaselineNote`] for `/status`: the previous revision, its value,
/// window and the instant it was evaluated at, or why it is missing; and
/// the older pods over the same span while they serve.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BaselineStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// As text (`0.1 %`, `190 ms`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `25s`, `30m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluated_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// Older pods over the same span, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrent: Option<String>,
    /// The whole note in words, as in `detail`.
    pub text: String,
}

impl From<&BaselineNote> for BaselineStatus {
    fn from(n: &BaselineNote) -> Self {
        BaselineStatus {
            revision: n.revision,
            value: n.value.as_ref().map(ToString::to_string),
            window: n.window.map(|w| humantime::format_duration(w).to_string()),
            evaluated_at: n.evaluated_at.map(|t| t.to_string()),
            missing: n.missing.clone(),
            concurrent: n.concurrent.as_ref().map(ToString::to_string),
            text: n.to_string(),
        }
    }
}

impl SignalStatus {
    pub fn from_result(result: &SignalResult, failing_ticks: u32) -> Self {
        let (kind, value) = match &result.outcome {
            Outcome::Pass { measured } => ("pass", measured.as_ref().map(ToString::to_string)),
            Outcome::Fail { measured, .. } => ("fail", Some(measured.to_string())),
            Outcome::Inconclusive { .. } => ("inconclusive", None),
        };
        SignalStatus {
            signal: result.signal.id(),
            result: kind.to_string(),
            value,
            detail: result.describe(),
            failing_ticks,
            at: result.at.to_string(),
            span_from: result.span_from.map(|t| t.to_string()),
            requests: result
                .requests
                .filter(|n| n.is_finite() && *n >= 0.0)
                .map(|n| n.round() as u64),
            baseline: result.baseline_note.as_ref().map(BaselineStatus::from),
        }
    }
}

/// The table `rollback-watchdog status` prints: one block per target.
pub fn render_table(report: &StatusReport) -> String {
    let mut out = String::new();
    let role = match report.role {
        Role::Leader => "leader",
        Role::Follower => "follower (evaluates, never acts)",
        Role::Standalone => "standalone",
        Role::OneShot => "one-shot evaluation",
    };
    let _ = writeln!(
        out,
        "cluster {}  role {}  {}  at {}",
        if report.cluster.is_empty() {
            "-"
        } else {
            &report.cluster
        },
        role,
        if report.ready {
            "ready"
        } else {
            "NOT READY (caches syncing)"
        },
        report.generated_at
    );
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    if report.targets.is_empty() {
        let _ = writeln!(out, "\nno targets");
    }
    for t in &report.targets {
        let _ = writeln!(out);
        let revision = t
            .revision
            .map(|r| format!("revision {r}"))
            .unwrap_or_else(|| "no revision".into());
        let hash = t.pod_template_hash.as_deref().unwrap_or("-");
        let window = match &t.window {
            Some(w) => match w.remaining_seconds {
                Some(0) => "window closed".to_string(),
                Some(left) => format!(
                    "window {} left",
                    humantime::format_duration(std::time::Duration::from_secs(left))
                ),
                None => format!("window open ({})", w.why),
            },
            None => "no window".to_string(),
        };
        let known_good = t
            .known_good
            .as_ref()
            .map(|k| format!("known-good {}", k.revision))
            .unwrap_or_else(|| "no known-good".into());
        let _ = writeln!(
            out,
            "{}/{}  {} ({})  {}  {}  verdict {}{}",
            t.namespace,
            t.name,
            revision,
            hash,
            window,
            known_good,
            t.verdict.as_str().to_uppercase(),
            if t.blind { "  BLIND" } else { "" }
        );
        if !t.images.is_empty() {
            let _ = writeln!(out, "  images: {}", t.images.join(", "));
        }
        if !t.signals.is_empty() {
            let width = t
                .signals
                .iter()
                .map(|s| s.signal.len())
                .max()
                .unwrap_or(6)
                .max(6);
            let _ = writeln!(
                out,
                "  {:<width$}  {:<12}  {:>10}  DETAIL",
                "SIGNAL", "RESULT", "VALUE"
            );
            for s in &t.signals {
                let _ = writeln!(
                    out,
                    "  {:<width$}  {:<12}  {:>10}  {}",
                    s.signal,
                    s.result,
                    s.value.as_deref().unwrap_or("-"),
                    s.detail
                );
            }
        }
        for r in &t.reasons {
            let _ = writeln!(out, "  reason: {r}");
        }
        for w in &t.warnings {
            let _ = writeln!(out, "  warning: {w}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::{Measurement, SignalId, Threshold};

    #[test]
    fn the_table_shows_each_signal_and_the_verdict() {
        let fail = SignalResult::new(
            SignalId::ErrorRate,
            Outcome::Fail {
                measured: Measurement::ratio(0.302),
                threshold: Threshold::Max {
                    limit: Measurement::ratio(0.05),
                },
                baseline: Some(0.001),
                sentence: "error ratio too high".into(),
            },
            jiff::Timestamp::UNIX_EPOCH,
        );
        let report = StatusReport {
            cluster: "production".into(),
            role: Role::Leader,
            ready: true,
            generated_at: "2026-11-27T10:00:00Z".into(),
            targets: vec![TargetStatus {
                namespace: "production".into(),
                name: "kailash-kaizen".into(),
                revision: Some(2),
                pod_template_hash: Some("7f455f8bb7".into()),
                verdict: StatusVerdict::Bad,
                signals: vec![SignalStatus::from_result(&fail, 3)],
                window: Some(WindowStatus {
                    remaining_seconds: Some(600),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            warnings: vec![],
        };
        let table = render_table(&report);
        assert!(
            table.contains("production/kailash-kaizen  revision 2 (7f455f8bb7)  window 10m left"),
            "{table}"
        );
        assert!(table.contains("verdict BAD"), "{table}");
        assert!(
            table.contains("error_rate") && table.contains("30.2 %"),
            "{table}"
        );
        let json = serde_json::to_string(&report).unwrap();
        let back: StatusReport = serde_json::from_str(&json).unwrap();
        assert_eq!(back, report);
    }

    #[test]
    fn a_passing_tick_shows_its_baseline_in_status_and_the_table() {
        let at: jiff::Timestamp = "2026-11-27T10:05:00Z".parse().unwrap();
        let started: jiff::Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
        let pass = SignalResult::new(
            SignalId::ErrorRate,
            Outcome::pass_with(Measurement::ratio(0.004)),
            at,
        )
        .over_span("2026-11-27T10:04:45Z".parse().unwrap())
        .with_requests(1180.0)
        .with_baseline_note(BaselineNote::used(
            1,
            Measurement::ratio(0.001),
            std::time::Duration::from_secs(25),
            started,
        ));
        let s = SignalStatus::from_result(&pass, 0);
        assert_eq!(
            s.detail,
            "error ratio 0.4 % of 1,180 requests, passing (baseline revision 1: 0.1 % over 25s before the rollout)"
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["requests"], 1180);
        assert_eq!(v["span_from"], "2026-11-27T10:04:45Z");
        assert_eq!(v["baseline"]["revision"], 1);
        assert_eq!(v["baseline"]["value"], "0.1 %");
        assert_eq!(v["baseline"]["window"], "25s");
        assert_eq!(v["baseline"]["evaluated_at"], "2026-11-27T10:00:00Z");

        let young = SignalResult::new(
            SignalId::ErrorRate,
            Outcome::pass_with(Measurement::ratio(0.004)),
            at,
        )
        .with_baseline_note(BaselineNote::missing(
            Some(1),
            "revision 1 served only 10s before the rollout",
        ));
        let s = SignalStatus::from_result(&young, 0);
        assert_eq!(
            serde_json::to_value(&s).unwrap()["baseline"]["missing"],
            "revision 1 served only 10s before the rollout"
        );
        let report = StatusReport {
            targets: vec![TargetStatus {
                signals: vec![s],
                ..Default::default()
            }],
            ..Default::default()
        };
        let table = render_table(&report);
        assert!(
            table.contains("passing (no baseline: revision 1 served only 10s before the rollout)"),
            "{table}"
        );
    }

    #[test]
    fn the_verdict_is_one_lower_case_word_on_the_wire() {
        let words: Vec<String> = StatusVerdict::ALL
            .iter()
            .map(|v| serde_json::to_string(v).unwrap())
            .collect();
        assert_eq!(
            words,
            [
                r#""healthy""#,
                r#""inconclusive""#,
                r#""suspect""#,
                r#""bad""#,
                r#""degraded""#,
                r#""unknown""#
            ]
        );
        for v in StatusVerdict::ALL {
            assert_eq!(serde_json::to_string(&v).unwrap(), format!("\"{v}\""));
        }
        let fresh = serde_json::to_value(TargetStatus::default()).unwrap();
        assert_eq!(fresh["verdict"], "unknown");
        assert_eq!(
            StatusVerdict::from(Verdict::Degraded),
            StatusVerdict::Degraded
        );
    }
}

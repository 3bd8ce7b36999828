//! The audit trail of the rollback pipeline, the runbook's "Rollback Logs
//! and Audit Trail": one JSON line per step outcome appended (and flushed to
//! disk) to `watchdog.audit_log`, a Kubernetes Event on the Deployment per
//! decision and per result, and a structured log line for each.
//! It must never lose a line silently: a file that cannot be written is an
//! error naming the path and the config key, and an Event that cannot be
//! published is logged, never hidden.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::EventKind;
use k8s_openapi::api::apps::v1::Deployment;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Client, Resource};
use serde::Serialize;
use serde_json::Value;

/// Reporter of every Event the watchdog publishes.
pub const REPORTER: &str = "rollback-watchdog";
/// How long publishing one Event may take.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);
/// The Events API caps a note at 1 kB.
const MAX_NOTE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create the directory of the audit log {path} (watchdog.audit_log): {source}; create it or point watchdog.audit_log at a writable file")]
    CreateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the audit log {path} (watchdog.audit_log) for appending: {source}; make it writable or point watchdog.audit_log elsewhere")]
    Open {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot append to the audit log {path} (watchdog.audit_log): {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the audit log {path} (watchdog.audit_log): {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot encode an audit line: {0}")]
    Encode(#[source] serde_json::Error),
}

/// The pipeline's steps, as the audit log names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Validate,
    Backup,
    Update,
    Wait,
    Verify,
    Audit,
    Notify,
    /// The final line: the incident report.
    Report,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Validate => "validate",
            Step::Backup => "backup",
            Step::Update => "update",
            Step::Wait => "wait",
            Step::Verify => "verify",
            Step::Audit => "audit",
            Step::Notify => "notify",
            Step::Report => "report",
        }
    }
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Ok,
    Refused,
    Failed,
    Conflict,
    DryRun,
}

impl StepOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            StepOutcome::Ok => "ok",
            StepOutcome::Refused => "refused",
            StepOutcome::Failed => "failed",
            StepOutcome::Conflict => "conflict",
            StepOutcome::DryRun => "dry_run",
        }
    }
}

/// One step's outcome, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: Step,
    pub outcome: StepOutcome,
    /// One sentence.
    pub summary: String,
    pub details: Value,
    pub at: String,
}

/// How what an audit line is about ended, in that thing's own words.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AuditOutcome {
    /// A pipeline step: `ok`, `refused`, `failed`, `conflict`, `dry_run`.
    Step(StepOutcome),
    /// The `report` line: the incident's kind (`rollback_succeeded`...).
    Incident(EventKind),
    /// A `notify` line: how the delivery ended (`delivered`, `gave_up`,
    /// `dropped`, `already_delivered`).
    Delivery(&'static str),
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditLine {
    /// RFC 3339.
    pub time: String,
    /// `namespace/name` of the Deployment.
    pub target: String,
    /// The rollback this line belongs to (the incident id).
    pub rollback: String,
    pub step: Step,
    pub outcome: AuditOutcome,
    /// Step-specific facts (the patch, the backup, measured values, the
    /// incident report on the final `report` line).
    pub details: Value,
}

/// The append-only audit log file. Cheap to clone; lines from concurrent
/// rollbacks never interleave.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    file: Arc<Mutex<File>>,
}

impl AuditLog {
    /// Opens (creating it and its directory) the audit log for appending,
    /// so an unwritable path is found before any rollback starts.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let shown = path.display().to_string();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| AuditError::CreateDir {
                path: shown.clone(),
                source,
            })?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| AuditError::Open {
                path: shown,
                source,
            })?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Arc::new(Mutex::new(file)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and syncs it to disk before returning: a line the
    /// pipeline has moved past is a line that survives a crash.
    pub fn append(&self, line: &AuditLine) -> Result<(), AuditError> {
        let mut text = serde_json::to_string(line).map_err(AuditError::Encode)?;
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let write = |f: &mut File| -> std::io::Result<()> {
            f.write_all(text.as_bytes())?;
            f.flush()?;
            f.sync_data()
        };
        write(&mut file).map_err(|source| AuditError::Write {
            path: self.path.display().to_string(),
            source,
        })
    }
}

impl AuditLog {
    /// The incident of rollback `id`'s `report` line, if the log has one:
    /// how a restarted watchdog knows a rollback it finds in flight was
    /// already concluded, so it neither waits, verifies nor reports twice.
    /// A torn last line (a crash mid-write) is skipped.
    pub fn find_report(&self, id: &str) -> Result<Option<Value>, AuditError> {
        use std::io::BufRead;
        let read_error = |source| AuditError::Read {
            path: self.path.display().to_string(),
            source,
        };
        let file = File::open(&self.path).map_err(read_error)?;
        let mut found = None;
        for line in std::io::BufReader::new(file).lines() {
            let line = line.map_err(read_error)?;
            // Cheap test first: most lines are about other rollbacks.
            if !line.contains(id) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if v["rollback"] == id && v["step"] == "report" {
                found = Some(v["details"].clone());
            }
        }
        Ok(found)
    }
}

/// Every reason of an Event the watchdog writes, as `kubectl describe`
/// and `kubectl get events` show it. Whether it is a Warning follows from
/// the reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    RevisionHealthy,
    RevisionInconclusive,
    RevisionSuspect,
    RevisionBad,
    RevisionDegraded,
    RevisionUnverified,
    RevisionKnownGood,
    WatchdogBlind,
    QueryMisconfigured,
    TargetWarning,
    InvalidAnnotation,
    RollbackStarted,
    RolledBack,
    WouldRollBack,
    RollbackRefused,
    RollbackConflict,
    RollbackFailed,
    RollbackEscalated,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RevisionHealthy => "RevisionHealthy",
            Reason::RevisionInconclusive => "RevisionInconclusive",
            Reason::RevisionSuspect => "RevisionSuspect",
            Reason::RevisionBad => "RevisionBad",
            Reason::RevisionDegraded => "RevisionDegraded",
            Reason::RevisionUnverified => "RevisionUnverified",
            Reason::RevisionKnownGood => "RevisionKnownGood",
            Reason::WatchdogBlind => "WatchdogBlind",
            Reason::QueryMisconfigured => "QueryMisconfigured",
            Reason::TargetWarning => "TargetWarning",
            Reason::InvalidAnnotation => "InvalidAnnotation",
            Reason::RollbackStarted => "RollbackStarted",
            Reason::RolledBack => "RolledBack",
            Reason::WouldRollBack => "WouldRollBack",
            Reason::RollbackRefused => "RollbackRefused",
            Reason::RollbackConflict => "RollbackConflict",
            Reason::RollbackFailed => "RollbackFailed",
            Reason::RollbackEscalated => "RollbackEscalated",
        }
    }

    /// A Warning Event rather than a Normal one: something a person
    /// should look at.
    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::RevisionHealthy
                | Reason::RevisionInconclusive
                | Reason::RevisionKnownGood
                | Reason::RollbackStarted
                | Reason::RolledBack
                | Reason::WouldRollBack
        )
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A decision or result told on the Deployment (`kubectl describe`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub reason: Reason,
    /// PascalCase action: `Rollback`, `Verify`...
    pub action: String,
    pub note: String,
}

/// Publishes Events (events.k8s.io/v1) on Deployments, reporter
/// [`REPORTER`].
#[derive(Clone)]
pub struct EventPublisher {
    recorder: Recorder,
}

impl EventPublisher {
    pub fn new(client: Client) -> Self {
        let reporter = Reporter {
            controller: REPORTER.to_owned(),
            instance: std::env::var("POD_NAME").ok(),
        };
        EventPublisher {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes one Event on `deployment`, bounded by [`EVENT_TIMEOUT`].
    /// Failures are logged and returned as a sentence for the audit line.
    pub async fn publish(&self, deployment: &Deployment, notice: &Notice) -> Result<(), String> {
        let reference = deployment.object_ref(&());
        let event = Event {
            type_: if notice.reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: notice.reason.as_str().to_owned(),
            note: Some(truncate(&notice.note, MAX_NOTE)),
            action: notice.action.clone(),
            secondary: None,
        };
        let target = format!(
            "{}/{}",
            deployment.meta().namespace.as_deref().unwrap_or_default(),
            deployment.meta().name.as_deref().unwrap_or_default()
        );
        let why =
            match tokio::time::timeout(EVENT_TIMEOUT, self.recorder.publish(&event, &reference))
                .await
            {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => format!("cannot publish Event {} on {target}: {e}", notice.reason),
                Err(_) => format!(
                    "cannot publish Event {} on {target}: no answer within {EVENT_TIMEOUT:?}",
                    notice.reason
                ),
            };
        tracing::warn!(target = %target, reason = %notice.reason, "{why}");
        Err(why)
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_good_news_and_a_started_rollback_are_normal_events() {
        let normal = [
            Reason::RevisionHealthy,
            Reason::RevisionInconclusive,
            Reason::RevisionKnownGood,
            Reason::RollbackStarted,
            Reason::RolledBack,
            Reason::WouldRollBack,
        ];
        let warning = [
            Reason::RevisionSuspect,
            Reason::RevisionBad,
            Reason::RevisionDegraded,
            Reason::RevisionUnverified,
            Reason::WatchdogBlind,
            Reason::QueryMisconfigured,
            Reason::TargetWarning,
            Reason::InvalidAnnotation,
            Reason::RollbackRefused,
            Reason::RollbackConflict,
            Reason::RollbackFailed,
            Reason::RollbackEscalated,
        ];
        assert!(normal.iter().all(|r| !r.is_warning()));
        assert!(warning.iter().all(|r| r.is_warning()));
        assert_eq!(Reason::RolledBack.to_string(), "RolledBack");
    }

    #[test]
    fn each_kind_of_line_speaks_its_own_vocabulary_on_the_wire() {
        let words = [
            (
                Step::Wait,
                AuditOutcome::Step(StepOutcome::DryRun),
                "wait",
                "dry_run",
            ),
            (
                Step::Report,
                AuditOutcome::Incident(EventKind::RollbackSucceeded),
                "report",
                "rollback_succeeded",
            ),
            (
                Step::Notify,
                AuditOutcome::Delivery("gave_up"),
                "notify",
                "gave_up",
            ),
        ];
        for (step, outcome, step_word, outcome_word) in words {
            let line = AuditLine {
                time: "2026-11-27T10:00:00Z".into(),
                target: "production/web".into(),
                rollback: "production/web/r2/1".into(),
                step,
                outcome,
                details: Value::Null,
            };
            let json = serde_json::to_value(&line).unwrap();
            assert_eq!(json["step"], step_word);
            assert_eq!(json["outcome"], outcome_word);
        }
    }

    #[test]
    fn every_line_is_one_json_object_on_disk_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/audit.jsonl");
        let log = AuditLog::open(&path).unwrap();
        for step in [Step::Validate, Step::Backup] {
            log.append(&AuditLine {
                time: "2026-11-27T10:00:00Z".into(),
                target: "production/web".into(),
                rollback: "production/web/r2/1".into(),
                step,
                outcome: AuditOutcome::Step(StepOutcome::Ok),
                details: serde_json::json!({"n": 1}),
            })
            .unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["step"], "backup");
        assert_eq!(lines[0]["target"], "production/web");
    }

    #[test]
    fn an_unwritable_audit_log_names_the_path_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, "x").unwrap();
        let path = blocker.join("audit.jsonl");
        let err = AuditLog::open(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("watchdog.audit_log"), "{err}");
    }

    #[test]
    fn notes_are_cut_on_a_character_boundary() {
        let s = "é".repeat(600);
        let t = truncate(&s, 1000);
        assert!(t.len() <= 1000 && t.ends_with("..."));
    }
}

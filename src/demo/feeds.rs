//! What a background printer follows while the pipeline runs: the audit
//! log, the Slack receiver and the notifier's delivery outcomes, each shown
//! as it happens. The printer stops when dropped.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::slack::render_slack;
use super::timeline::Timeline;
use super::{lock, FEED_POLL};
use crate::report::notify::{DeliveryOutcome, DeliveryResult};

/// One audit line as the demo reads it back.
pub(super) struct AuditEntry {
    pub(super) step: String,
}

/// Follows the audit log the pipeline writes, so each step shows up as it
/// is recorded, with the pipeline's own time.
pub(super) struct AuditTail {
    pub(super) path: PathBuf,
    offset: usize,
    pub(super) lines: Vec<AuditEntry>,
}

impl AuditTail {
    pub(super) fn new(path: &Path) -> AuditTail {
        AuditTail {
            path: path.to_path_buf(),
            offset: 0,
            lines: Vec::new(),
        }
    }

    fn poll(&mut self, tl: &Timeline) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let Some(new) = text.get(self.offset..) else {
            return;
        };
        // Only whole lines: the last one may still be being written.
        let Some(end) = new.rfind('\n') else {
            return;
        };
        for line in new[..end].lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let step = v["step"].as_str().unwrap_or("?").to_string();
            let outcome = v["outcome"].as_str().unwrap_or("?");
            let at = v["time"].as_str().unwrap_or_default();
            let text = if step == "report" {
                format!(
                    "step audit     {outcome}: the incident report (reason, measured values, versions, times, result) is appended to the audit log"
                )
            } else {
                let summary = v["details"]["summary"].as_str().unwrap_or_default();
                format!("step {step:<8} {outcome}: {summary}")
            };
            tl.at_time(at, text);
            self.lines.push(AuditEntry { step });
        }
        self.offset += end + 1;
    }
}

/// What the background printer follows: the audit log, the messages the
/// Slack receiver got, and the notifier's delivery outcomes.
pub(super) struct Feeds {
    pub(super) audit: AuditTail,
    messages: Arc<Mutex<Vec<Value>>>,
    pub(super) shown_messages: usize,
    pub(super) deliveries: Vec<DeliveryOutcome>,
    outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
}

/// The running printer; aborted when dropped, so no early return leaves it.
pub(super) struct FeedsTask {
    feeds: Arc<Mutex<Feeds>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FeedsTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FeedsTask {
    pub(super) fn poll(&self, tl: &Timeline) {
        lock(&self.feeds).poll(tl);
    }

    /// Stops the printer after a last look; returns what it saw.
    pub(super) async fn stop(self, tl: &Timeline) -> Feeds {
        self.task.abort();
        let mut feeds = std::mem::replace(
            &mut *lock(&self.feeds),
            Feeds::new(
                AuditTail::new(Path::new("")),
                Arc::default(),
                Arc::default(),
            ),
        );
        feeds.poll(tl);
        feeds
    }
}

impl Feeds {
    fn new(
        audit: AuditTail,
        messages: Arc<Mutex<Vec<Value>>>,
        outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
    ) -> Feeds {
        Feeds {
            audit,
            messages,
            shown_messages: 0,
            deliveries: Vec::new(),
            outcomes,
        }
    }

    pub(super) fn start(
        tl: &Timeline,
        audit: AuditTail,
        messages: Arc<Mutex<Vec<Value>>>,
        outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
    ) -> FeedsTask {
        let feeds = Arc::new(Mutex::new(Feeds::new(audit, messages, outcomes)));
        let (shared, tl) = (feeds.clone(), tl.clone());
        let task = tokio::spawn(async move {
            loop {
                lock(&shared).poll(&tl);
                tokio::time::sleep(FEED_POLL).await;
            }
        });
        FeedsTask { feeds, task }
    }

    fn poll(&mut self, tl: &Timeline) {
        self.audit.poll(tl);
        let new: Vec<Value> = lock(&self.messages)
            .iter()
            .skip(self.shown_messages)
            .cloned()
            .collect();
        for message in &new {
            tl.say(format!(
                "Slack message received by the local receiver:\n{}",
                render_slack(message)
            ));
        }
        self.shown_messages += new.len();
        let outcomes: Vec<DeliveryOutcome> = lock(&self.outcomes)
            .iter()
            .skip(self.deliveries.len())
            .cloned()
            .collect();
        for o in outcomes {
            let why = match &o.result {
                DeliveryResult::Delivered => None,
                DeliveryResult::GaveUp { reason } => Some(format!("given up: {reason}")),
                DeliveryResult::Dropped { reason } => Some(format!("dropped: {reason}")),
                DeliveryResult::AlreadyDelivered => Some(format!(
                    "the notifier's delivery ledger already lists incident {} for {}, so it was not sent again",
                    o.incident_id, o.sink
                )),
            };
            if let Some(why) = why {
                tl.say(format!(
                    "notification {} to {} NOT delivered: {why}",
                    o.kind.as_str(),
                    o.sink
                ));
            }
            self.deliveries.push(o);
        }
    }
}

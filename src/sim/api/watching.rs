//! One watch stream of the sim's API server: the backlog and first
//! events, bookmarks, the lag a test asked for, the timeout, and the end
//! when `close_watches` runs.

use std::collections::HashSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use super::super::lag::{until, Delayed};
use super::super::store::{EventType, Kind, StoreError, WatchEvent};
use super::super::table::{self, IncludeObject};
use super::Filter;

pub(super) fn object_key(obj: &Value) -> (String, String) {
    let field = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    (field("/metadata/namespace"), field("/metadata/name"))
}

/// Replaces an ADDED/MODIFIED/DELETED event's object with a one-row Table.
pub(super) fn as_table_event(kind: &Kind, line: &mut Value, include: IncludeObject) {
    let is_object_event = matches!(
        line.get("type").and_then(Value::as_str),
        Some("ADDED" | "MODIFIED" | "DELETED")
    );
    if !is_object_event {
        return;
    }
    if let Some(obj) = line.get_mut("object") {
        let rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        *obj = table::table(kind, std::slice::from_ref(obj), &rv, include);
    }
}

pub(super) fn bookmark(kind: &Kind, rv: u64, annotations: Value) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if annotations.as_object().is_some_and(|a| !a.is_empty()) {
        meta["annotations"] = annotations;
    }
    json!({
        "type": "BOOKMARK",
        "object": {"kind": kind.kind, "apiVersion": kind.api_version(), "metadata": meta},
    })
}

/// One open watch: turns store events into watch-event lines.
pub(super) struct WatchTask {
    pub(super) kind: Kind,
    /// kubectl get -w: objects go out as one-row Tables.
    pub(super) table: Option<IncludeObject>,
    pub(super) filter: Filter,
    /// Objects the client has been told exist (for selector transitions).
    pub(super) visible: HashSet<(String, String)>,
    pub(super) bookmarks: bool,
    pub(super) bookmark_interval: Duration,
    pub(super) timeout: Option<Duration>,
    /// Every store event up to this revision has been handled.
    pub(super) last_rv: u64,
    /// Live events held back, if the kind lags.
    pub(super) lag: Option<Delayed<Value>>,
    pub(super) tx: mpsc::Sender<Result<Bytes, Infallible>>,
}

impl WatchTask {
    async fn send(&self, line: &Value) -> bool {
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        self.tx.send(Ok(Bytes::from(bytes))).await.is_ok()
    }

    /// The line for a store event, if this watch shows it.
    fn translate(&mut self, ev: &WatchEvent) -> Option<Value> {
        let ev = ev.view_as(&self.kind)?;
        let key = object_key(&ev.object);
        let matches = self.filter.matches(&ev.object);
        let was_visible = self.visible.contains(&key);
        let event_type = match ev.event_type {
            EventType::Deleted if was_visible || matches => {
                self.visible.remove(&key);
                "DELETED"
            }
            EventType::Deleted => return None,
            _ if matches => {
                self.visible.insert(key);
                if was_visible && ev.event_type == EventType::Modified {
                    "MODIFIED"
                } else {
                    "ADDED"
                }
            }
            _ if was_visible => {
                // It stopped matching the selector: gone for this watcher.
                self.visible.remove(&key);
                "DELETED"
            }
            _ => return None,
        };
        let mut line = json!({"type": event_type, "object": ev.object});
        if let Some(include) = self.table {
            as_table_event(&self.kind, &mut line, include);
        }
        Some(line)
    }

    pub(super) async fn run(
        mut self,
        first_lines: Vec<Value>,
        backlog: Vec<WatchEvent>,
        receiver: Option<broadcast::Receiver<WatchEvent>>,
        mut closer: watch::Receiver<u64>,
    ) {
        for line in &first_lines {
            if !self.send(line).await {
                return;
            }
        }
        let Some(mut receiver) = receiver else {
            return;
        };
        for ev in &backlog {
            self.last_rv = self.last_rv.max(ev.resource_version);
            if let Some(line) = self.translate(ev) {
                if !self.send(&line).await {
                    return;
                }
            }
        }
        let deadline = self.timeout.map(|t| tokio::time::Instant::now() + t);
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.bookmark_interval,
            self.bookmark_interval,
        );
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        closer.mark_unchanged();
        loop {
            let due = self.lag.as_ref().and_then(Delayed::next_due);
            let line = tokio::select! {
                // Closing wins over pending events, so that nothing written
                // after `close_watches()` reaches a closed watch.
                biased;
                _ = self.tx.closed() => return,
                _ = closer.changed() => return,
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => return,
                // A bookmark must not get ahead of an event held back.
                _ = ticker.tick(), if self.bookmarks && self.lag.as_ref().is_none_or(Delayed::is_empty) => {
                    bookmark(&self.kind, self.last_rv, json!({}))
                }
                _ = until(due) => match self.lag.as_mut().and_then(Delayed::pop) {
                    Some(line) => line,
                    None => continue,
                },
                ev = receiver.recv() => match ev {
                    Ok(ev) => {
                        self.last_rv = self.last_rv.max(ev.resource_version);
                        match (self.translate(&ev), self.lag.as_mut()) {
                            (Some(line), Some(lag)) => {
                                lag.push(line);
                                continue;
                            }
                            (Some(line), None) => line,
                            (None, _) => continue,
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        // This watcher fell behind the event buffer: make it
                        // relist, as an API server does after compaction.
                        let gone = StoreError::Gone { requested: self.last_rv, oldest: self.last_rv + 1 };
                        let _ = self.send(&json!({"type": "ERROR", "object": gone.status_body()})).await;
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            };
            if !self.send(&line).await {
                return;
            }
        }
    }
}

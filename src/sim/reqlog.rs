//! The simulated API server's request log: one entry per HTTP request with
//! its Kubernetes verb, kept in memory for tests and optionally appended as
//! JSON lines to a file for benchmarks. It must never fail a request
//! because the log file cannot be written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

/// One request as the API server saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEntry {
    /// RFC 3339 time the request finished its headers.
    pub ts: String,
    pub method: String,
    pub path: String,
    /// The raw query string, "" when there is none.
    pub query: String,
    pub content_type: String,
    pub status: u16,
    /// get, list, watch, create, update, patch, delete, deletecollection;
    /// "get" for discovery and other non-resource paths.
    pub verb: String,
}

/// Shared, cheap to clone.
#[derive(Clone, Default)]
pub struct RequestLog {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    entries: Vec<RequestEntry>,
    file: Option<File>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot open the request log {path}: {source}")]
pub struct RequestLogError {
    path: String,
    #[source]
    source: std::io::Error,
}

impl RequestLog {
    pub fn new() -> Self {
        Self::default()
    }

    /// Also appends every entry as a JSON line to `path`.
    pub fn with_file(path: &Path) -> Result<Self, RequestLogError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| RequestLogError {
                path: path.display().to_string(),
                source,
            })?;
        let log = Self::default();
        log.lock().file = Some(file);
        Ok(log)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, entry: RequestEntry) {
        let mut inner = self.lock();
        if let Some(file) = inner.file.as_mut() {
            if let Ok(line) = serde_json::to_string(&entry) {
                // Losing a log line is better than failing the request.
                let _ = writeln!(file, "{line}");
            }
        }
        inner.entries.push(entry);
    }

    /// Every request so far, oldest first.
    pub fn entries(&self) -> Vec<RequestEntry> {
        self.lock().entries.clone()
    }

    /// Forgets the entries kept in memory (the file is left alone).
    pub fn clear(&self) {
        self.lock().entries.clear();
    }

    /// How many requests had this verb and a path containing `path_part`
    /// (e.g. `count("list", "/deployments")`).
    pub fn count(&self, verb: &str, path_part: &str) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| e.verb == verb && e.path.contains(path_part))
            .count()
    }

    /// List calls whose path contains `path_part`.
    pub fn lists(&self, path_part: &str) -> usize {
        self.count("list", path_part)
    }

    /// Patches whose path contains `path_part`.
    pub fn patches(&self, path_part: &str) -> usize {
        self.count("patch", path_part)
    }

    /// Writes of any kind (create, update, patch, delete, deletecollection).
    pub fn writes(&self) -> usize {
        self.lock()
            .entries
            .iter()
            .filter(|e| {
                matches!(
                    e.verb.as_str(),
                    "create" | "update" | "patch" | "delete" | "deletecollection"
                )
            })
            .count()
    }
}

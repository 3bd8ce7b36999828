//! What the watchdog sees of the cluster: watch caches, the targets they
//! resolve to, revisions and their observation windows, the blocklist.

pub mod blocklist;
pub mod cache;
pub mod revision;
pub mod targets;

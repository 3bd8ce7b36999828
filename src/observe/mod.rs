//! What the watchdog sees of the cluster: watch caches, the targets they
//! resolve to, revisions (`revision`: what the cluster says of them;
//! `tracker`: what the watchdog remembers between ticks; `window`: their
//! observation windows), the blocklist, and `memory`: what the watchdog
//! keeps on a Deployment so a restart or a new leader forgets nothing;
//! `wake`: the watch events that call for an evaluation before the next
//! tick.

pub mod blocklist;
pub mod cache;
pub mod memory;
pub mod revision;
pub mod targets;
pub mod tracker;
pub mod wake;
pub mod window;

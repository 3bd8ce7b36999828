//! What Kubernetes itself defines, as the watchdog reads it.

pub mod selector;

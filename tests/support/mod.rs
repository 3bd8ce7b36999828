//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod binary;
pub mod handmade;
pub mod kubectl;
pub mod metrics;
pub mod prom;
pub mod watch;

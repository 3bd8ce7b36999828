//! Helpers shared by the integration tests.

#![allow(dead_code)]

pub mod binary;
pub mod cluster;
pub mod faulty;
pub mod handmade;
pub mod kubectl;
pub mod metrics;
pub mod prom;
pub mod watch;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns Ok, or fails the test after
/// 30 s naming `what` and the last state seen: how a test waits for what
/// the sim's controllers make.
pub async fn eventually<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() > Duration::from_secs(30) => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

//! Sim time: how fast the simulated cluster's durations run. Durations from
//! specs and behaviours (progressDeadlineSeconds, ready delays, crash
//! back-off) are divided by `time_scale`, so a rollout that takes a minute
//! on a real cluster takes seconds in a test. It must never touch the
//! timestamps written into objects: those are real wall-clock UTC, so they
//! line up with what Prometheus records.

use std::time::Duration;

/// The time scale of the simulated cluster.
///
/// `time_scale = 10.0` (the default, [`SimClock::DEFAULT_SCALE`]) makes a
/// 2 s ready delay take 0.2 s of real time and a 600 s progress deadline one
/// minute. `SimClock::real_time()` (scale 1) runs at real speed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SimClock {
    pub time_scale: f64,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            time_scale: Self::DEFAULT_SCALE,
        }
    }
}

impl SimClock {
    /// The default: sim time runs ten times faster than real time.
    pub const DEFAULT_SCALE: f64 = 10.0;

    /// A clock running `time_scale` times faster than real time. Values
    /// that are not finite and positive fall back to real time.
    pub fn new(time_scale: f64) -> Self {
        let time_scale = if time_scale.is_finite() && time_scale > 0.0 {
            time_scale
        } else {
            1.0
        };
        SimClock { time_scale }
    }

    /// Scale 1: sim durations take as long as they say.
    pub fn real_time() -> Self {
        SimClock::new(1.0)
    }

    /// The real time a sim duration takes.
    pub fn real(&self, sim: Duration) -> Duration {
        Duration::from_secs_f64(sim.as_secs_f64() / self.time_scale)
    }

    /// The real time `secs` sim seconds take.
    pub fn real_secs(&self, secs: f64) -> Duration {
        Duration::from_secs_f64((secs.max(0.0)) / self.time_scale)
    }

    /// How much sim time passes in a real duration.
    pub fn sim(&self, real: Duration) -> Duration {
        Duration::from_secs_f64(real.as_secs_f64() * self.time_scale)
    }

    /// Wall-clock now, as the API server writes timestamps.
    pub fn now(&self) -> jiff::Timestamp {
        jiff::Timestamp::now()
    }
}

/// A timestamp in the form objects carry (`2026-11-27T10:00:00Z`).
pub fn rfc3339(ts: jiff::Timestamp) -> String {
    ts.round(jiff::Unit::Second)
        .unwrap_or(ts)
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Parses a timestamp an object carries; `None` when it does not parse.
pub fn parse_rfc3339(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_divided_by_the_scale_and_bad_scales_mean_real_time() {
        let clock = SimClock::new(10.0);
        assert_eq!(clock.real(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(clock.sim(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(SimClock::new(0.0).time_scale, 1.0);
        assert_eq!(SimClock::new(f64::NAN).time_scale, 1.0);
        assert_eq!(SimClock::default().time_scale, SimClock::DEFAULT_SCALE);
    }

    #[test]
    fn timestamps_round_trip_at_second_resolution() {
        let ts: jiff::Timestamp = "2026-11-27T10:00:00.7Z".parse().unwrap();
        let text = rfc3339(ts);
        assert_eq!(text, "2026-11-27T10:00:01Z");
        assert!(parse_rfc3339(&text).is_some());
    }
}

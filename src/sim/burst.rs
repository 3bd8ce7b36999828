//! Timed behaviours: an error burst over a span of sim time, on the pods of
//! one image or of every image (a downstream outage hits old and new pods
//! alike). A burst only raises the error probability the traffic model
//! integrates over (a pod answers at least the burst's ratio of errors
//! while it lasts); it must never change what a pod did before it, so
//! counters stay monotonic.

use std::time::{Duration, Instant};

use super::clock::SimClock;

/// Which pods a burst hits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageMatch {
    /// Every pod, of every image (`image = "*"` in TOML).
    All,
    /// The pods of this exact image (`kailash-kaizen:v2`).
    Image(String),
}

impl ImageMatch {
    pub fn matches(&self, image: &str) -> bool {
        match self {
            ImageMatch::All => true,
            ImageMatch::Image(i) => i == image,
        }
    }
}

/// When a burst starts. Durations are sim time, like every behaviour
/// duration: divided by the clock's scale in real time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starts {
    /// This long after the sim started (the TOML form, `after = "30s"`).
    AfterSimStart(Duration),
    /// This long after the call that adds the burst.
    In(Duration),
    /// At this real instant.
    At(Instant),
}

/// An error burst, as a test asks for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Burst {
    pub images: ImageMatch,
    pub starts: Starts,
    /// Sim time.
    pub lasts: Duration,
    /// The fraction of requests that fail while it lasts, 0.0..=1.0.
    pub error_ratio: f64,
}

/// A burst in real time, as the traffic model integrates it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub start: Instant,
    pub end: Instant,
    pub error_ratio: f64,
}

impl Span {
    /// Whether `at` falls inside the burst.
    pub fn covers(&self, at: Instant) -> bool {
        self.start <= at && at < self.end
    }
}

/// What the sim's clock is, once a sim runs on the table.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SimTime {
    pub clock: SimClock,
    pub started: Instant,
}

/// A burst with its start pinned down: relative to the sim's start, or to
/// a real instant (the call that added it, or the instant it named).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Scheduled {
    images: ImageMatch,
    anchor: Option<Instant>,
    after: Duration,
    lasts: Duration,
    error_ratio: f64,
}

impl Scheduled {
    /// Pins `burst` down as of `now`.
    pub fn new(burst: Burst, now: Instant) -> Self {
        let (anchor, after) = match burst.starts {
            Starts::AfterSimStart(after) => (None, after),
            Starts::In(after) => (Some(now), after),
            Starts::At(at) => (Some(at), Duration::ZERO),
        };
        Scheduled {
            images: burst.images,
            anchor,
            after,
            lasts: burst.lasts,
            error_ratio: burst.error_ratio,
        }
    }

    pub fn hits(&self, image: &str) -> bool {
        self.images.matches(image)
    }

    /// Its real span, at the sim's time scale (1 before a sim runs). A
    /// burst relative to the sim's start has none until a sim starts.
    pub fn span(&self, time: Option<SimTime>) -> Option<Span> {
        let clock = time.map_or_else(SimClock::real_time, |t| t.clock);
        let anchor = self.anchor.or(time.map(|t| t.started))?;
        let start = anchor + clock.real(self.after);
        Some(Span {
            start,
            end: start + clock.real(self.lasts),
            error_ratio: self.error_ratio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_durations_are_divided_by_the_scale() {
        let now = Instant::now();
        let burst = Burst {
            images: ImageMatch::All,
            starts: Starts::In(Duration::from_secs(30)),
            lasts: Duration::from_secs(4),
            error_ratio: 0.5,
        };
        let s = Scheduled::new(burst, now);
        let time = SimTime {
            clock: SimClock::new(10.0),
            started: now - Duration::from_secs(100),
        };
        let span = s.span(Some(time)).unwrap();
        assert_eq!(span.start, now + Duration::from_secs(3));
        assert_eq!(span.end - span.start, Duration::from_millis(400));
        assert!(s.hits("anything:v1"));
    }

    #[test]
    fn a_burst_after_the_sim_start_waits_for_a_sim() {
        let now = Instant::now();
        let burst = Burst {
            images: ImageMatch::Image("web:v2".into()),
            starts: Starts::AfterSimStart(Duration::from_secs(20)),
            lasts: Duration::from_secs(10),
            error_ratio: 1.0,
        };
        let s = Scheduled::new(burst, now);
        assert_eq!(s.span(None), None);
        let started = now + Duration::from_secs(5);
        let time = SimTime {
            clock: SimClock::new(20.0),
            started,
        };
        let span = s.span(Some(time)).unwrap();
        assert_eq!(span.start, started + Duration::from_secs(1));
        assert!(span.covers(started + Duration::from_millis(1200)));
        assert!(!span.covers(started + Duration::from_millis(1500)));
        assert!(s.hits("web:v2") && !s.hits("web:v1"));
    }
}

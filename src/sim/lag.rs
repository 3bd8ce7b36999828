//! Watch-event lag, per kind, with seeded random jitter: a client's
//! caches then see the events of two kinds (a Deployment's and its
//! ReplicaSet's) in another order than the store made them, as watches of
//! a real API server may deliver them. Off by default; it never reorders
//! the events of one watch, only delays them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// How long each watch event of a kind may be held back: a random delay
/// between zero and the kind's maximum, drawn from a seeded generator (one
/// per watch, derived from the seed and the order the watches opened).
#[derive(Debug, Clone, Default)]
pub struct WatchLag {
    /// Per resource plural (`deployments`, `replicasets`): the longest
    /// delay of one event.
    max: BTreeMap<String, Duration>,
    seed: u64,
    /// Watches opened so far: each draws its own sequence.
    opened: Arc<AtomicU64>,
}

impl WatchLag {
    /// No lag yet; add kinds with [`WatchLag::kind`].
    pub fn seeded(seed: u64) -> Self {
        WatchLag {
            seed,
            ..WatchLag::default()
        }
    }

    /// Delays every watch event of `plural` by up to `max`.
    pub fn kind(mut self, plural: &str, max: Duration) -> Self {
        self.max.insert(plural.to_owned(), max);
        self
    }

    /// The delays of one new watch of `plural`, if that kind lags.
    pub(crate) fn for_watch(&self, plural: &str) -> Option<Jitter> {
        let max = *self.max.get(plural).filter(|m| !m.is_zero())?;
        let n = self.opened.fetch_add(1, Ordering::Relaxed);
        let kind_salt = plural.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Some(Jitter {
            max,
            rng: StdRng::seed_from_u64(self.seed ^ kind_salt ^ n.rotate_left(32)),
        })
    }
}

/// The delay sequence of one watch.
#[derive(Debug)]
pub(crate) struct Jitter {
    max: Duration,
    rng: StdRng,
}

impl Jitter {
    /// How long to hold the next event back.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let max = u64::try_from(self.max.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.rng.random_range(0..=max))
    }

    /// A queue that holds each event back by its own delay from when it
    /// arrived, in order: no event waits more than the maximum, however
    /// many came before it.
    pub(crate) fn queue(self) -> Delayed<serde_json::Value> {
        Delayed {
            jitter: self,
            due: VecDeque::new(),
        }
    }
}

/// Events of one watch waiting for their time.
#[derive(Debug)]
pub(crate) struct Delayed<T> {
    jitter: Jitter,
    due: VecDeque<(Instant, T)>,
}

impl<T> Delayed<T> {
    /// Queues `item` to go out after its delay, never before an earlier one.
    pub(crate) fn push(&mut self, item: T) {
        let at = Instant::now() + self.jitter.next_delay();
        let at = self.due.back().map_or(at, |(last, _)| at.max(*last));
        self.due.push_back((at, item));
    }

    /// When the next event is due; None with nothing queued.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }

    pub(crate) fn pop(&mut self) -> Option<T> {
        self.due.pop_front().map(|(_, item)| item)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

/// Completes at `due`; never without one.
pub(crate) async fn until(due: Option<Instant>) {
    match due {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kinds_asked_for_lag_and_within_their_maximum() {
        let lag = WatchLag::seeded(7).kind("replicasets", Duration::from_millis(300));
        assert!(lag.for_watch("deployments").is_none());
        let mut j = lag.for_watch("replicasets").expect("replicasets lag");
        let delays: Vec<Duration> = (0..200).map(|_| j.next_delay()).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(300)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(150)));
        assert!(WatchLag::default().for_watch("replicasets").is_none());
    }

    #[test]
    fn the_same_seed_draws_the_same_delays() {
        let draw = |seed| {
            let lag = WatchLag::seeded(seed).kind("deployments", Duration::from_millis(500));
            let mut j = lag.for_watch("deployments").expect("lags");
            (0..10).map(|_| j.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1), draw(1));
        assert_ne!(draw(1), draw(2));
    }

    #[tokio::test]
    async fn a_delayed_queue_keeps_the_order_and_bounds_each_wait() {
        let lag = WatchLag::seeded(3).kind("pods", Duration::from_millis(50));
        let mut q = lag.for_watch("pods").expect("lags").queue();
        let start = Instant::now();
        for n in 0..20 {
            q.push(serde_json::json!(n));
        }
        let due = q.next_due().expect("queued");
        assert!(due <= start + Duration::from_millis(60));
        let mut out = Vec::new();
        while let Some(v) = q.pop() {
            out.push(v);
        }
        assert_eq!(
            out,
            (0..20).map(|n| serde_json::json!(n)).collect::<Vec<_>>()
        );
        assert!(q.is_empty());
    }
}

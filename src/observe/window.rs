//! Observation windows: from a revision's rollout start until
//! `watch_window` after its rollout completed (open while it is in
//! progress or paused), and why, for `/status` and the logs. Pure values;
//! the [`super::tracker::Tracker`] decides which rule applies.

use std::time::Duration;

/// An observation window: from `opened` until `closes`, or open for as
/// long as the rollout is in progress or paused when `closes` is None.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub opened: jiff::Timestamp,
    /// None: open until `watch_window` after the rollout completes.
    pub closes: Option<jiff::Timestamp>,
    pub why: WindowWhy,
}

/// Which rule sets a window's end, for `/status` and the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowWhy {
    /// The rollout is under way: open until it completes.
    InProgress,
    /// `spec.paused` stopped the rollout part-way: open until it is
    /// resumed and completes.
    Paused,
    /// The rollout completed at `completed` (an estimate from the
    /// Deployment's `Progressing` condition, or the rollout start, when
    /// this process did not see it complete).
    AfterCompletion {
        completed: jiff::Timestamp,
        estimated: bool,
    },
    /// The rollout exceeded its progress deadline: it will not complete on
    /// its own, so the window runs from its start.
    NeverCompleted,
}

impl Window {
    /// A window that closes `length` after `from`.
    pub fn closing(
        opened: jiff::Timestamp,
        from: jiff::Timestamp,
        length: Duration,
        why: WindowWhy,
    ) -> Window {
        let closes = jiff::SignedDuration::try_from(length)
            .ok()
            .and_then(|d| from.checked_add(d).ok())
            .unwrap_or(jiff::Timestamp::MAX);
        Window {
            opened,
            closes: Some(closes),
            why,
        }
    }

    /// Open at `now`: before its end, or while it has none (a rollout
    /// start in the future, from clock skew, counts as open: the revision
    /// is new).
    pub fn is_open(&self, now: jiff::Timestamp) -> bool {
        self.closes.is_none_or(|c| now < c)
    }

    /// Time left at `now`; zero once closed, None while it has no end yet.
    pub fn remaining(&self, now: jiff::Timestamp) -> Option<Duration> {
        self.closes
            .map(|c| Duration::try_from(c.duration_since(now)).unwrap_or(Duration::ZERO))
    }

    /// Why it is open, or why it closed when it did, for people:
    /// "rollout in progress", "paused", "until 10:15:00, 15m after the
    /// rollout completed".
    pub fn describe(&self, length: Duration) -> String {
        let length = humantime::format_duration(length);
        let until = |c: Option<jiff::Timestamp>| {
            c.map(|c| c.strftime("%H:%M:%S").to_string())
                .unwrap_or_default()
        };
        match self.why {
            WindowWhy::InProgress => "rollout in progress".into(),
            WindowWhy::Paused => {
                "paused (spec.paused): open until the rollout is resumed and completes".into()
            }
            WindowWhy::AfterCompletion { estimated, .. } => format!(
                "until {}, {length} after the rollout completed{}",
                until(self.closes),
                if estimated {
                    " (completion time estimated)"
                } else {
                    ""
                }
            ),
            WindowWhy::NeverCompleted => format!(
                "until {}, {length} after the rollout started: it exceeded its progress deadline",
                until(self.closes)
            ),
        }
    }
}

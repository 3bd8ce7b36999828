//! The timeline on stdout: each line stamped with the seconds since the
//! demo started. Writing never fails the demo; the exit code tells.

use std::fmt::Display;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use jiff::Timestamp;

/// The timeline on stdout: `[  12.3s] what happened`.
#[derive(Clone)]
pub(super) struct Timeline {
    start: Instant,
    start_at: Timestamp,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Timeline {
    pub(super) fn new(out: Box<dyn Write + Send>) -> Timeline {
        Timeline {
            start: Instant::now(),
            start_at: Timestamp::now(),
            out: Arc::new(Mutex::new(out)),
        }
    }

    pub(super) fn say(&self, text: impl Display) {
        self.at(self.start.elapsed().as_secs_f64(), text);
    }

    /// A line stamped with a wall-clock time (an audit line's).
    pub(super) fn at_time(&self, at: &str, text: impl Display) {
        let secs = at
            .parse::<Timestamp>()
            .ok()
            .and_then(|t| (t - self.start_at).total(jiff::Unit::Second).ok())
            .unwrap_or_else(|| self.start.elapsed().as_secs_f64());
        self.at(secs, text);
    }

    fn at(&self, secs: f64, text: impl Display) {
        let text = text.to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let mut block = format!("[{secs:>6.1}s] {first}\n");
        for line in lines {
            block.push_str(&format!("          {line}\n"));
        }
        self.write(&block);
    }

    pub(super) fn plain(&self, text: impl Display) {
        self.write(&format!("{text}\n"));
    }

    fn write(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // With stdout gone there is no one to tell; the exit code still says it.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

//! The behaviour table: what a pod of a given image does in the simulated
//! cluster (how soon it is ready, whether it crashes, its error ratio,
//! latency and request rate). Tests and the demo change it at runtime to
//! make a release go bad. It must never make a lookup fail: an image that
//! no rule names is healthy.
//!
//! Lookup order: an exact image (`kailash-kaizen:v2`), then the suffix rules
//! on the image's tag, then the default. The built-in suffix rules:
//!
//! | tag ends with | behaviour |
//! | --- | --- |
//! | `-errors` | 30 % of requests answer 5xx |
//! | `-slow` | 1.6 × the default latency (80 ms median) |
//! | `-crash` | crash loop: `CrashLoopBackOff`, restarts rising |
//! | `-pullfail` | `ErrImagePull` / `ImagePullBackOff` |
//! | `-oom` | `OOMKilled` (exit 137), then `CrashLoopBackOff` |
//! | `-unready` | running, never ready, `/health` answers 503 |
//!
//! Any other tag is healthy: ready 2 s (sim time) after creation, 50 ms
//! median latency, 20 requests/s per pod (Poisson arrivals), 0.1 % errors,
//! `/health` 200 from the start.
//!
//! Besides what each image does, the table holds timed behaviours: error
//! bursts over a span of sim time, on one image's pods or on all of them
//! ([`Behaviours::burst`], `[[bursts]]`), and the seed of every pod's
//! traffic generator.
//!
//! The TOML form (`rollback-watchdog sim --behaviours FILE`):
//!
//! ```toml
//! seed = 42                      # optional: pods' traffic generators (default 0)
//!
//! [default]                      # optional: what unnamed images do
//! latency = "50ms"
//!
//! [images."kailash-kaizen:v2"]   # any field left out keeps the default
//! error_ratio = 0.3
//! ready_after = "2s"             # sim time
//! crash = "none"                 # none | crash_loop | image_pull | oom_killed
//! crashes = 1                    # with a crash: this many, then healthy (default: forever)
//! never_ready = false
//! latency = "80ms"               # median; also a number of seconds
//! request_rate = 20.0            # requests per second per pod (real time)
//! traffic = "poisson"            # poisson (whole, noisy counts) | exact (rate × seconds)
//! health_status = 200
//! health_status_until_ready = 503  # optional: /health while not yet Ready
//!
//! [suffixes."-canary"]           # rules on the tag, checked before the built-in ones
//! latency = 0.07
//!
//! [[bursts]]                     # an error burst, timed from the sim's start
//! image = "*"                    # every image, or one exact image
//! after = "30s"                  # sim time
//! lasts = "4s"                   # sim time
//! error_ratio = 0.5              # at least this fraction of requests fail
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use std::time::Instant;

use serde::{Deserialize, Deserializer, Serialize};

use super::burst::{Burst, ImageMatch, Scheduled, SimTime, Span, Starts};
use super::clock::SimClock;

/// How a container of an image fails, if it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crash {
    #[default]
    None,
    /// Exits with code 1 shortly after each start: `CrashLoopBackOff`.
    CrashLoop,
    /// The image cannot be pulled: `ErrImagePull`, then `ImagePullBackOff`.
    ImagePull,
    /// Killed for memory (exit 137, `OOMKilled`), then `CrashLoopBackOff`.
    OomKilled,
}

/// How a pod's requests are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    /// Poisson arrivals, binomial errors and sampled latencies: whole,
    /// noisy counts, seeded per pod.
    #[default]
    Poisson,
    /// The expected counts: rate × seconds, smooth and fractional, so a
    /// rate over any window is exact.
    Exact,
}

/// What a pod of one image does.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Sim time from pod creation to Ready.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub ready_after: Duration,
    pub crash: Crash,
    /// Runs and serves, but its readiness probe never passes.
    pub never_ready: bool,
    /// Fraction of requests answered with 500, 0.0..=1.0.
    pub error_ratio: f64,
    /// Median request latency.
    #[serde(deserialize_with = "duration", serialize_with = "ser_duration")]
    pub latency: Duration,
    /// Mean requests per second per pod, in real time (Prometheus rates
    /// are per real second).
    pub request_rate: f64,
    /// Noisy Poisson counts, or exact ones.
    pub traffic: Traffic,
    /// The status `/health` answers with.
    pub health_status: u16,
    /// The status `/health` answers with while the pod is not yet Ready
    /// (a warming-up Spring Boot or ASP.NET readiness endpoint answers
    /// 503); `None`: `health_status` from the start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_status_until_ready: Option<u16>,
    /// With a `crash`: crash this many times, then run and serve as a
    /// healthy container would (one OOM kill during warm-up); `None`:
    /// crash forever.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crashes: Option<u32>,
}

impl Default for Behaviour {
    /// The healthy default.
    fn default() -> Self {
        Behaviour {
            ready_after: Duration::from_secs(2),
            crash: Crash::None,
            never_ready: false,
            error_ratio: 0.001,
            latency: Duration::from_millis(50),
            request_rate: 20.0,
            traffic: Traffic::Poisson,
            health_status: 200,
            health_status_until_ready: None,
            crashes: None,
        }
    }
}

impl Behaviour {
    /// The status `/health` answers with, given whether the pod is Ready.
    pub fn health_status(&self, ready: bool) -> u16 {
        match self.health_status_until_ready {
            Some(status) if !ready => status,
            _ => self.health_status,
        }
    }

    /// Whether a running container of this behaviour serves HTTP.
    pub fn serves_http(&self) -> bool {
        self.crash == Crash::None || self.crashes.is_some()
    }

    /// The built-in behaviour for a tag suffix, derived from `base`.
    fn builtin_suffix(suffix: &str, base: &Behaviour) -> Option<Behaviour> {
        let mut b = base.clone();
        match suffix {
            "-errors" => b.error_ratio = 0.3,
            "-slow" => b.latency = base.latency.mul_f64(1.6),
            "-crash" => b.crash = Crash::CrashLoop,
            "-pullfail" => b.crash = Crash::ImagePull,
            "-oom" => b.crash = Crash::OomKilled,
            "-unready" => {
                b.never_ready = true;
                b.health_status = 503;
            }
            _ => return None,
        }
        Some(b)
    }
}

/// The built-in suffixes, in the order they are tried.
pub const BUILTIN_SUFFIXES: &[&str] = &[
    "-errors",
    "-slow",
    "-crash",
    "-pullfail",
    "-oom",
    "-unready",
];

#[derive(Debug, thiserror::Error)]
pub enum BehaviourError {
    #[error("behaviour table {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("behaviour table: `{key}`: {message}")]
    Parse { key: String, message: String },
    #[error("behaviour table: `{key}`: {message}")]
    Invalid { key: String, message: String },
}

/// The TOML file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    #[serde(default)]
    default: Option<Behaviour>,
    #[serde(default)]
    images: BTreeMap<String, Behaviour>,
    #[serde(default)]
    suffixes: BTreeMap<String, Behaviour>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    bursts: Vec<BurstEntry>,
}

/// One `[[bursts]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BurstEntry {
    /// `*` for every image, else one exact image.
    image: String,
    #[serde(deserialize_with = "duration")]
    after: Duration,
    #[serde(deserialize_with = "duration")]
    lasts: Duration,
    error_ratio: f64,
}

impl BurstEntry {
    fn into_burst(self) -> Burst {
        Burst {
            images: match self.image.as_str() {
                "*" => ImageMatch::All,
                _ => ImageMatch::Image(self.image),
            },
            starts: Starts::AfterSimStart(self.after),
            lasts: self.lasts,
            error_ratio: self.error_ratio,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Table {
    default: Behaviour,
    images: BTreeMap<String, Behaviour>,
    /// Checked in order, before the built-in suffixes.
    suffixes: Vec<(String, Behaviour)>,
    /// Seeds every pod's traffic generator, with the pod's name.
    seed: u64,
    bursts: Vec<Scheduled>,
    /// Set when a sim starts running pods on this table.
    time: Option<SimTime>,
    /// Goes up on every change, so the kubelet knows when to look again
    /// at pods whose life had settled.
    generation: u64,
}

/// The shared, runtime-mutable behaviour table. Cheap to clone; clones
/// share the table, so a test can change what an image does mid-test.
#[derive(Debug, Clone, Default)]
pub struct Behaviours {
    table: Arc<RwLock<Table>>,
}

impl Behaviours {
    /// The built-in table: healthy default plus the suffix rules.
    pub fn builtin() -> Self {
        Behaviours::default()
    }

    /// Parses the TOML form; errors name the key.
    pub fn from_toml(text: &str) -> Result<Self, BehaviourError> {
        let de = toml::Deserializer::parse(text).map_err(|e| BehaviourError::Parse {
            key: String::new(),
            message: e.to_string(),
        })?;
        let file: TableFile =
            serde_path_to_error::deserialize(de).map_err(|e| BehaviourError::Parse {
                key: e.path().to_string(),
                message: e.inner().message().to_string(),
            })?;
        let now = Instant::now();
        let mut bursts = Vec::new();
        for (i, entry) in file.bursts.into_iter().enumerate() {
            let burst = entry.into_burst();
            validate_burst(&format!("bursts[{i}]"), &burst)?;
            bursts.push(Scheduled::new(burst, now));
        }
        let table = Table {
            default: file.default.unwrap_or_default(),
            images: file.images,
            suffixes: file.suffixes.into_iter().collect(),
            seed: file.seed,
            bursts,
            time: None,
            generation: 0,
        };
        validate(&table)?;
        Ok(Behaviours {
            table: Arc::new(RwLock::new(table)),
        })
    }

    /// Reads and parses a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, BehaviourError> {
        let text = std::fs::read_to_string(path).map_err(|source| BehaviourError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Table> {
        // A panicking writer leaves a whole table behind: poisoning is not fatal.
        self.table.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Table> {
        let mut table = self.table.write().unwrap_or_else(|p| p.into_inner());
        table.generation += 1;
        table
    }

    /// A number that changes whenever the table does.
    pub fn generation(&self) -> u64 {
        self.read().generation
    }

    /// What a pod of `image` does now.
    pub fn lookup(&self, image: &str) -> Behaviour {
        let table = self.read();
        if let Some(b) = table.images.get(image) {
            return b.clone();
        }
        let tag = image_tag(image).unwrap_or("");
        if let Some((_, b)) = table
            .suffixes
            .iter()
            .find(|(s, _)| tag.ends_with(s.as_str()))
        {
            return b.clone();
        }
        BUILTIN_SUFFIXES
            .iter()
            .find(|s| tag.ends_with(*s))
            .and_then(|s| Behaviour::builtin_suffix(s, &table.default))
            .unwrap_or_else(|| table.default.clone())
    }

    /// Sets the behaviour of one exact image.
    pub fn set(&self, image: impl Into<String>, behaviour: Behaviour) {
        self.write().images.insert(image.into(), behaviour);
    }

    /// Changes the behaviour of one exact image in place, starting from
    /// what it does now.
    pub fn update(&self, image: &str, change: impl FnOnce(&mut Behaviour)) {
        let mut b = self.lookup(image);
        change(&mut b);
        self.set(image, b);
    }

    /// Forgets an exact image's entry.
    pub fn remove(&self, image: &str) {
        self.write().images.remove(image);
    }

    /// Adds (or replaces) a tag-suffix rule, tried before the built-in ones.
    pub fn set_suffix(&self, suffix: impl Into<String>, behaviour: Behaviour) {
        let suffix = suffix.into();
        let mut table = self.write();
        table.suffixes.retain(|(s, _)| *s != suffix);
        table.suffixes.push((suffix, behaviour));
    }

    /// Replaces the default for images no rule names.
    pub fn set_default(&self, behaviour: Behaviour) {
        self.write().default = behaviour;
    }

    /// Makes `image`'s pods warm up: not Ready for `ready_after` (sim
    /// time; `SimCluster::clock().sim(real)` converts a real duration),
    /// answering `/health` with `health_status` until then.
    pub fn warm_up(&self, image: &str, ready_after: Duration, health_status: u16) {
        self.update(image, |b| {
            b.ready_after = ready_after;
            b.health_status_until_ready = Some(health_status);
        });
    }

    /// Adds an error burst. Its real span comes back once it is known: at
    /// once for [`Starts::In`] and [`Starts::At`], and for
    /// [`Starts::AfterSimStart`] when a sim runs on this table.
    pub fn burst(&self, burst: Burst) -> Result<Option<Span>, BehaviourError> {
        validate_burst("burst", &burst)?;
        let scheduled = Scheduled::new(burst, Instant::now());
        let mut table = self.write();
        let span = scheduled.span(table.time);
        table.bursts.push(scheduled);
        Ok(span)
    }

    /// Forgets every burst, past, running and to come.
    pub fn clear_bursts(&self) {
        self.write().bursts.clear();
    }

    /// The real spans of the bursts that hit `image`'s pods.
    pub fn bursts_for(&self, image: &str) -> Vec<Span> {
        let table = self.read();
        table
            .bursts
            .iter()
            .filter(|b| b.hits(image))
            .filter_map(|b| b.span(table.time))
            .collect()
    }

    /// The seed every pod's traffic generator starts from, with its name.
    pub fn seed(&self) -> u64 {
        self.read().seed
    }

    pub fn set_seed(&self, seed: u64) {
        self.write().seed = seed;
    }

    /// A sim starts running pods on this table now, at `clock`'s scale:
    /// bursts timed from the sim's start count from here.
    pub(crate) fn start_clock(&self, clock: SimClock) {
        self.write().time = Some(SimTime {
            clock,
            started: Instant::now(),
        });
    }
}

/// The tag of an image reference (`registry:5000/app:v2` → `v2`).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map(|(_, tag)| tag)
}

fn validate(table: &Table) -> Result<(), BehaviourError> {
    let entries = std::iter::once(("default".to_string(), &table.default))
        .chain(
            table
                .images
                .iter()
                .map(|(k, b)| (format!("images.\"{k}\""), b)),
        )
        .chain(
            table
                .suffixes
                .iter()
                .map(|(k, b)| (format!("suffixes.\"{k}\""), b)),
        );
    for (key, b) in entries {
        if !(0.0..=1.0).contains(&b.error_ratio) {
            return Err(BehaviourError::Invalid {
                key: format!("{key}.error_ratio"),
                message: format!("must be between 0.0 and 1.0, got {}", b.error_ratio),
            });
        }
        if !(b.request_rate.is_finite() && b.request_rate >= 0.0) {
            return Err(BehaviourError::Invalid {
                key: format!("{key}.request_rate"),
                message: format!(
                    "must be a number of requests per second >= 0, got {}",
                    b.request_rate
                ),
            });
        }
        for (field, status) in [
            ("health_status", Some(b.health_status)),
            ("health_status_until_ready", b.health_status_until_ready),
        ] {
            if let Some(status) = status.filter(|s| !(100..=599).contains(s)) {
                return Err(BehaviourError::Invalid {
                    key: format!("{key}.{field}"),
                    message: format!("must be an HTTP status 100..=599, got {status}"),
                });
            }
        }
    }
    Ok(())
}

fn validate_burst(key: &str, burst: &Burst) -> Result<(), BehaviourError> {
    if burst.images == ImageMatch::Image(String::new()) {
        return Err(BehaviourError::Invalid {
            key: format!("{key}.image"),
            message: "name an image like \"web:v2\", or \"*\" for every image".into(),
        });
    }
    if !(0.0..=1.0).contains(&burst.error_ratio) {
        return Err(BehaviourError::Invalid {
            key: format!("{key}.error_ratio"),
            message: format!("must be between 0.0 and 1.0, got {}", burst.error_ratio),
        });
    }
    Ok(())
}

/// A duration given as humantime (`"50ms"`) or as a number of seconds.
fn duration<'de, D: Deserializer<'de>>(de: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(f64),
        Text(String),
    }
    match Raw::deserialize(de)? {
        Raw::Secs(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s)),
        Raw::Secs(s) => Err(serde::de::Error::custom(format!(
            "a duration must be >= 0 seconds, got {s}"
        ))),
        Raw::Text(t) => humantime::parse_duration(&t).map_err(|e| {
            serde::de::Error::custom(format!(
                "{t:?} is not a duration like \"50ms\" or \"2s\": {e}"
            ))
        }),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&humantime::format_duration(*d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_suffixes_pick_the_documented_behaviours() {
        let b = Behaviours::builtin();
        assert_eq!(b.lookup("kailash-kaizen:v1"), Behaviour::default());
        assert_eq!(b.lookup("kailash-kaizen:v2-errors").error_ratio, 0.3);
        assert_eq!(
            b.lookup("kailash-kaizen:v2-slow").latency,
            Duration::from_millis(80)
        );
        assert_eq!(b.lookup("app:v2-crash").crash, Crash::CrashLoop);
        assert_eq!(b.lookup("app:v2-pullfail").crash, Crash::ImagePull);
        assert_eq!(b.lookup("app:v2-oom").crash, Crash::OomKilled);
        assert!(b.lookup("app:v2-unready").never_ready);
        // The suffix is read from the tag, not from a registry port or path.
        assert_eq!(
            b.lookup("reg-errors:5000/app-errors:v1"),
            Behaviour::default()
        );
    }

    #[test]
    fn exact_images_win_and_changes_are_seen_by_every_clone() {
        let b = Behaviours::builtin();
        let seen_by_runtime = b.clone();
        b.update("app:v2-errors", |x| x.error_ratio = 0.05);
        assert_eq!(seen_by_runtime.lookup("app:v2-errors").error_ratio, 0.05);
        b.remove("app:v2-errors");
        assert_eq!(seen_by_runtime.lookup("app:v2-errors").error_ratio, 0.3);
    }

    #[test]
    fn toml_table_fills_missing_fields_from_the_default() {
        let b = Behaviours::from_toml(
            r#"
            [default]
            latency = 0.1
            [images."kailash-kaizen:v2"]
            error_ratio = 0.3
            crash = "oom_killed"
            [suffixes."-canary"]
            latency = "70ms"
            "#,
        )
        .unwrap();
        let v2 = b.lookup("kailash-kaizen:v2");
        assert_eq!(v2.error_ratio, 0.3);
        assert_eq!(v2.crash, Crash::OomKilled);
        assert_eq!(b.lookup("x:v1").latency, Duration::from_millis(100));
        assert_eq!(b.lookup("x:v1-canary").latency, Duration::from_millis(70));
        // Built-in suffixes scale the file's default.
        assert_eq!(b.lookup("x:v1-slow").latency, Duration::from_millis(160));
    }

    #[test]
    fn toml_errors_name_the_key() {
        let err = Behaviours::from_toml("[images.\"a:v1\"]\neror_ratio = 0.3\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("images.a:v1") || text.contains("images"),
            "{text}"
        );
        assert!(text.contains("eror_ratio"), "{text}");
        let err = Behaviours::from_toml("[images.\"a:v1\"]\nlatency = \"soon\"\n").unwrap_err();
        assert!(err.to_string().contains("latency"), "{err}");
        let err = Behaviours::from_toml("[images.\"a:v1\"]\nerror_ratio = 3.0\n").unwrap_err();
        assert!(
            err.to_string().contains("images.\"a:v1\".error_ratio"),
            "{err}"
        );
    }

    #[test]
    fn toml_sets_warm_up_traffic_seed_and_bursts_timed_from_the_sim_start() {
        let b = Behaviours::from_toml(
            r#"
            seed = 42
            [images."web:v2"]
            ready_after = "15s"
            health_status_until_ready = 503
            traffic = "exact"
            [[bursts]]
            image = "*"
            after = "30s"
            lasts = "4s"
            error_ratio = 0.5
            [[bursts]]
            image = "web:v2"
            after = 10
            lasts = 1
            error_ratio = 1.0
            "#,
        )
        .unwrap();
        assert_eq!(b.seed(), 42);
        let v2 = b.lookup("web:v2");
        assert_eq!(v2.ready_after, Duration::from_secs(15));
        assert_eq!(
            (v2.health_status(false), v2.health_status(true)),
            (503, 200)
        );
        assert_eq!(v2.traffic, Traffic::Exact);
        assert_eq!(b.lookup("web:v1").traffic, Traffic::Poisson);
        // Timed from a sim's start: none until one runs on the table.
        assert!(b.bursts_for("web:v1").is_empty());
        b.start_clock(SimClock::new(10.0));
        let v1 = b.bursts_for("web:v1");
        assert_eq!(v1.len(), 1, "{v1:?}");
        assert_eq!(v1[0].end - v1[0].start, Duration::from_millis(400));
        assert_eq!(b.bursts_for("web:v2").len(), 2);
        b.clear_bursts();
        assert!(b.bursts_for("web:v2").is_empty());
    }

    #[test]
    fn bursts_from_rust_come_back_in_real_time_and_bad_ones_are_named() {
        let b = Behaviours::builtin();
        b.start_clock(SimClock::new(20.0));
        let before = Instant::now();
        let span = b
            .burst(Burst {
                images: ImageMatch::Image("web:v2".into()),
                starts: Starts::In(Duration::from_secs(20)),
                lasts: Duration::from_secs(40),
                error_ratio: 0.3,
            })
            .unwrap()
            .expect("known at once");
        assert!(span.start >= before + Duration::from_secs(1));
        assert_eq!(span.end - span.start, Duration::from_secs(2));
        assert_eq!(b.bursts_for("web:v2"), vec![span]);
        assert!(b.bursts_for("web:v1").is_empty());
        let err = b
            .burst(Burst {
                images: ImageMatch::All,
                starts: Starts::At(before),
                lasts: Duration::from_secs(1),
                error_ratio: 1.5,
            })
            .unwrap_err();
        assert!(err.to_string().contains("burst.error_ratio"), "{err}");
        let err = Behaviours::from_toml(
            "[[bursts]]\nimage = \"*\"\nafter = \"1s\"\nlasts = \"1s\"\nerror_ratio = 2.0\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("bursts[0].error_ratio"), "{err}");
        let err = Behaviours::from_toml("[[bursts]]\nimage = \"*\"\nafter = \"1s\"\n").unwrap_err();
        assert!(err.to_string().contains("lasts"), "{err}");
        let err = Behaviours::from_toml("[images.\"a:v1\"]\nhealth_status_until_ready = 42\n")
            .unwrap_err();
        assert!(
            err.to_string().contains("health_status_until_ready"),
            "{err}"
        );
    }
}

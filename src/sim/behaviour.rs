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
//! median latency, 20 requests/s per pod, 0.1 % errors, `/health` 200.
//!
//! The TOML form (`rollback-watchdog sim --behaviours FILE`):
//!
//! ```toml
//! [default]                      # optional: what unnamed images do
//! latency = "50ms"
//!
//! [images."kailash-kaizen:v2"]   # any field left out keeps the default
//! error_ratio = 0.3
//! ready_after = "2s"             # sim time
//! crash = "none"                 # none | crash_loop | image_pull | oom_killed
//! never_ready = false
//! latency = "80ms"               # median; also a number of seconds
//! request_rate = 20.0            # requests per second per pod
//! health_status = 200
//!
//! [suffixes."-canary"]           # rules on the tag, checked before the built-in ones
//! latency = 0.07
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

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
    /// Requests per second per pod (real time: Prometheus rates are exact).
    pub request_rate: f64,
    /// The status `/health` answers with.
    pub health_status: u16,
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
            health_status: 200,
        }
    }
}

impl Behaviour {
    /// Whether a running container of this behaviour serves HTTP.
    pub fn serves_http(&self) -> bool {
        self.crash == Crash::None
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
}

#[derive(Debug, Clone, Default)]
struct Table {
    default: Behaviour,
    images: BTreeMap<String, Behaviour>,
    /// Checked in order, before the built-in suffixes.
    suffixes: Vec<(String, Behaviour)>,
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
        let table = Table {
            default: file.default.unwrap_or_default(),
            images: file.images,
            suffixes: file.suffixes.into_iter().collect(),
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
        self.table.write().unwrap_or_else(|p| p.into_inner())
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
        if !(100..=599).contains(&b.health_status) {
            return Err(BehaviourError::Invalid {
                key: format!("{key}.health_status"),
                message: format!("must be an HTTP status 100..=599, got {}", b.health_status),
            });
        }
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
}

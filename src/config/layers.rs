//! The config's figment layers: built-in defaults < TOML file <
//! `ROLLBACK_WATCHDOG_` environment (figment's `Env` provider, `__`
//! nesting), and where a value came from, read from figment's metadata.

use figment::providers::{Env, Format, Serialized};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use super::{Problem, CLI_ENV_VARS, ENV_PREFIX};

/// TOML read by the project's own `toml` crate, so figment needs no TOML
/// stack of its own (figment 0.10's `toml` feature pulls toml 0.8 next to
/// the 0.9 the project uses).
pub(super) struct TomlText;

impl Format for TomlText {
    type Error = toml::de::Error;
    const NAME: &'static str = "TOML";

    fn from_str<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, Self::Error> {
        toml::from_str(text)
    }
}

/// A variable the kubelet injects for a Service whose name starts with
/// `rollback-watchdog` (`ROLLBACK_WATCHDOG_SERVICE_HOST`,
/// `ROLLBACK_WATCHDOG_METRICS_PORT_8080_TCP_ADDR`...), unless the pod sets
/// `enableServiceLinks: false`. Config keys always nest with `__`, so
/// these can never be one and are not reported as mistakes.
fn is_service_link(name: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    !name.contains("__")
        && RE
            .get_or_init(|| {
                regex::Regex::new(
                    r"^ROLLBACK_WATCHDOG(_[A-Z0-9_]+?)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(ADDR|PORT|PROTO))?)?)$",
                )
                .expect("static regex")
            })
            .is_match(name)
}

/// Whether the variable `name` (prefix included) is meant for the config:
/// not one the command line reads, not a Service link.
fn is_config_var(name: &str) -> bool {
    !CLI_ENV_VARS.iter().any(|v| v.eq_ignore_ascii_case(name)) && !is_service_link(name)
}

/// The config key a variable sets, as figment's `Env` with `split("__")`
/// maps it: `ROLLBACK_WATCHDOG_WATCHDOG__DRY_RUN` is `watchdog.dry_run`.
/// None for a name `Env` would skip (an empty part).
fn key_of(name: &str) -> Option<String> {
    let key = name
        .get(ENV_PREFIX.len()..)?
        .to_lowercase()
        .replace("__", ".");
    (!key.split('.').any(str::is_empty)).then_some(key)
}

/// figment's `Env` provider for the config's variables.
fn process_env() -> Env {
    Env::prefixed(ENV_PREFIX)
        .filter(|key| is_config_var(&format!("{ENV_PREFIX}{key}")))
        .split("__")
}

/// Variables given instead of the process environment (tests, embedded
/// use): the same keys and value parsing as figment's `Env`, under the
/// same metadata, so messages read the same.
struct GivenEnv {
    /// (key, value) of each config variable.
    vars: Vec<(String, String)>,
}

impl Provider for GivenEnv {
    fn metadata(&self) -> Metadata {
        process_env().metadata()
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let merged = self.vars.iter().fold(Figment::new(), |f, (key, value)| {
            let parsed: Value = value
                .parse()
                .unwrap_or_else(|never: std::convert::Infallible| match never {});
            f.merge(Serialized::default(key, parsed))
        });
        // Through a plain value, which drops the inner tags, so this
        // provider's tag is the one figment records for every value.
        let plain: serde_json::Value = merged.extract()?;
        Serialized::defaults(plain).data()
    }
}

/// The environment layer merged over `base`, and which variable set which
/// key, for messages. `given`: variables to use instead of the process
/// environment. Names with the prefix that cannot be a key are problems.
pub(super) fn with_env(
    base: Figment,
    given: Option<&[(String, String)]>,
) -> (Figment, EnvKeys, Vec<Problem>) {
    let names: Vec<(String, String)> = match given {
        Some(vars) => vars.to_vec(),
        None => std::env::vars().collect(),
    };
    let mut keys = Vec::new();
    let mut problems = Vec::new();
    let mut sorted: Vec<&(String, String)> = names
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && is_config_var(name))
        .collect();
    sorted.sort();
    for (name, value) in sorted {
        match key_of(name) {
            Some(key) => keys.push((key, name.clone(), value.clone())),
            None => problems.push(Problem::new(
                String::new(),
                format!("environment variable {name} does not name a config key; write e.g. ROLLBACK_WATCHDOG_WATCHDOG__DRY_RUN"),
            )),
        }
    }
    let figment = match given {
        None => base.merge(process_env()),
        Some(_) => base.merge(GivenEnv {
            vars: keys
                .iter()
                .map(|(k, _, v)| (k.clone(), v.clone()))
                .collect(),
        }),
    };
    let keys = EnvKeys {
        keys: keys.into_iter().map(|(k, name, _)| (k, name)).collect(),
        metadata_name: process_env().metadata().name.into_owned(),
    };
    (figment, keys, problems)
}

/// Which variable set which key, and the name figment's metadata gives
/// the environment layer.
pub(super) struct EnvKeys {
    keys: Vec<(String, String)>,
    metadata_name: String,
}

impl EnvKeys {
    /// The variable that set the value a problem at `path` is about,
    /// if the environment set it (figment's metadata says which layer the
    /// value came from): the longest variable key that is `path` or
    /// contains it.
    pub(super) fn variable_for(&self, figment: &Figment, path: &str) -> Option<&str> {
        // figment finds values through tables only: `targets[0].x` is
        // looked up as `targets`.
        let mut dotted: Vec<&str> = Vec::new();
        for part in path.split('.') {
            if let Some((table, _)) = part.split_once('[') {
                dotted.push(table);
                break;
            }
            dotted.push(part);
        }
        let found = (1..=dotted.len())
            .rev()
            .find_map(|n| figment.find_metadata(&dotted[..n].join(".")))?;
        if found.name != self.metadata_name {
            return None;
        }
        self.keys
            .iter()
            .filter(|(key, _)| {
                path == key
                    || path.starts_with(&format!("{key}."))
                    || path.starts_with(&format!("{key}["))
            })
            .max_by_key(|(key, _)| key.len())
            .map(|(_, name)| name.as_str())
    }
}

//! The validation pass: turns the raw layer into the typed config while
//! collecting every problem, each as `key.path: sentence`. It never stops
//! at the first mistake and never panics: a bad value is recorded and a
//! placeholder stands in so the remaining checks still run.
//!
//! This file holds the pass and the leaf checks every section shares; the
//! sections are `settings` (the process-wide tables), `policy` (defaults
//! and targets) and `notify` (the sinks).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::raw::{self, DurationStr, RawConfig, RawPolicy};
use super::schema::*;
use super::{credentials, MissingSecrets, Problem};

mod notify;
mod policy;
mod settings;

/// Placeholders a PromQL template may use.
pub const QUERY_PLACEHOLDERS: &[&str] = &[
    "namespace",
    "deployment",
    "revision",
    "pod_template_hash",
    "pods",
    "window",
];
/// Placeholders a health URL may use.
pub const URL_PLACEHOLDERS: &[&str] = &["namespace", "deployment", "revision", "pod_template_hash"];
/// Placeholders a dashboard or runbook link may use.
pub const LINK_PLACEHOLDERS: &[&str] = &[
    "cluster",
    "namespace",
    "deployment",
    "revision",
    "pod_template_hash",
];

/// The samples placeholders are filled with to check that a template parses.
const SAMPLE: Placeholders<'static> = Placeholders {
    namespace: "production",
    deployment: "example",
    revision: "7",
    pod_template_hash: "5d8f7c9b4",
    pods: "example-5d8f7c9b4-.*",
    window: "2m",
    cluster: "production",
};

pub(crate) struct Outcome {
    pub config: Config,
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

/// Validates `raw`; `doc` is the same document as JSON (for merging target
/// overrides), `env` the environment used to check `url_env`-style keys.
pub(crate) fn validate(
    raw: &RawConfig,
    doc: &Value,
    env: &BTreeMap<String, String>,
    missing_secrets: MissingSecrets,
) -> Outcome {
    let mut c = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
        env,
        missing_secrets,
    };

    let watchdog = c.watchdog(raw);
    let prometheus = c.prometheus(raw);
    let leader_election = c.leader_election(raw);
    let admin = c.admin(raw);

    // [defaults] is checked with relative paths so that a target which only
    // inherits a bad value does not report it again under its own name.
    let mut d = c.child();
    let defaults = d.policy(&raw.defaults, watchdog.interval);
    for key in ["namespace", "name", "selector"] {
        if doc.pointer(&format!("/defaults/{key}")).is_some() {
            d.problem(key, "belongs in a [[targets]] entry, not in [defaults]");
        }
    }
    let inherited: BTreeSet<(String, String)> = d
        .problems
        .iter()
        .map(|p| (p.path.clone(), p.message.clone()))
        .collect();
    c.adopt(d, "defaults");

    let default_doc = doc
        .get("defaults")
        .cloned()
        .unwrap_or(Value::Object(Default::default()));
    let mut targets = Vec::new();
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, raw_target) in raw.targets.iter().enumerate() {
        let prefix = format!("targets[{i}]");
        let own = doc
            .pointer(&format!("/targets/{i}"))
            .cloned()
            .unwrap_or(Value::Null);
        let mut t = c.child();
        let selects = t.target_identity(raw_target);
        let merged = merged_policy(&default_doc, &own);
        let policy = match serde_json::from_value::<RawPolicy>(merged) {
            Ok(merged) => t.policy(&merged, watchdog.interval),
            // Cannot happen after the raw pass accepted both halves; say so
            // instead of panicking if it ever does.
            Err(e) => {
                t.problem("", format!("cannot merge with [defaults]: {e}"));
                defaults.clone()
            }
        };
        t.problems.retain(|p| {
            !inherited.contains(&(p.path.clone(), p.message.clone()))
                || raw::has_path(&own, &p.path)
        });
        c.adopt(t, &prefix);

        let namespace = raw_target.namespace.clone().unwrap_or_default();
        if let Some(selects) = selects {
            let key = match &selects {
                Selects::Name(n) => (namespace.clone(), format!("name {n}")),
                Selects::Labels(s, _) => (namespace.clone(), format!("selector {s}")),
            };
            if let Some(first) = seen.get(&key) {
                c.problem(
                    &prefix,
                    format!("selects the same Deployments as targets[{first}] ({namespace}, {}); merge the two entries", key.1),
                );
            } else {
                seen.insert(key, i);
            }
            let mut policy = policy;
            policy.dry_run |= watchdog.dry_run;
            policy.paused |= watchdog.paused;
            targets.push(Target {
                namespace,
                selects,
                policy,
            });
        }
    }

    let mut notify = Vec::new();
    for (i, raw_sink) in raw.notify.iter().enumerate() {
        notify.push(c.notify(&format!("notify[{i}]"), i, raw_sink));
    }

    let config = Config {
        watchdog,
        prometheus,
        leader_election,
        admin,
        defaults,
        targets,
        notify,
    };
    Outcome {
        config,
        problems: c.problems,
        warnings: c.warnings,
    }
}

/// A target's policy document: `[defaults]` with the target's keys on top.
/// Giving `url` or `urls` under `[targets.health]` replaces both inherited
/// lists, so a target never probes the defaults' URL by surprise.
fn merged_policy(defaults: &Value, own: &Value) -> Value {
    let mut base = defaults.clone();
    let mut over = own.clone();
    for v in [&mut base, &mut over] {
        if let Value::Object(map) = v {
            for key in ["namespace", "name", "selector"] {
                map.remove(key);
            }
        }
    }
    let own_sets_urls = ["url", "urls"]
        .iter()
        .any(|k| own.pointer(&format!("/health/{k}")).is_some());
    if own_sets_urls {
        if let Some(Value::Object(health)) = base.get_mut("health") {
            health.remove("url");
            health.remove("urls");
        }
    }
    raw::merge_over(&base, &over)
}

struct Checker<'a> {
    problems: Vec<Problem>,
    warnings: Vec<Problem>,
    env: &'a BTreeMap<String, String>,
    missing_secrets: MissingSecrets,
}

fn join(prefix: &str, key: &str) -> String {
    match (prefix.is_empty(), key.is_empty()) {
        (true, _) => key.to_string(),
        (_, true) => prefix.to_string(),
        _ if key.starts_with('[') => format!("{prefix}{key}"),
        _ => format!("{prefix}.{key}"),
    }
}

impl<'a> Checker<'a> {
    fn child(&self) -> Checker<'a> {
        Checker {
            problems: Vec::new(),
            warnings: Vec::new(),
            env: self.env,
            missing_secrets: self.missing_secrets,
        }
    }

    fn adopt(&mut self, child: Checker, prefix: &str) {
        for p in child.problems {
            self.problems
                .push(Problem::new(join(prefix, &p.path), p.message));
        }
        for p in child.warnings {
            self.warnings
                .push(Problem::new(join(prefix, &p.path), p.message));
        }
    }

    fn problem(&mut self, path: &str, message: impl Into<String>) {
        self.problems
            .push(Problem::new(path.to_string(), message.into()));
    }

    /// A secret that is absent on this machine: an error when the
    /// watchdog is about to use it, a warning for `check-config` run away
    /// from the cluster where it is mounted.
    fn missing_secret(&mut self, path: &str, message: String) {
        match self.missing_secrets {
            MissingSecrets::Error => self.problem(path, message),
            MissingSecrets::Warn => self.warnings.push(Problem::new(path.to_string(), message)),
        }
    }

    // --- leaves ---

    fn required<'v, T>(&mut self, path: &str, value: &'v Option<T>) -> Option<&'v T> {
        if value.is_none() {
            self.problem(path, "missing");
        }
        value.as_ref()
    }

    fn bool(&mut self, path: &str, value: Option<bool>) -> bool {
        self.required(path, &value).copied().unwrap_or(false)
    }

    fn duration(&mut self, path: &str, value: &Option<DurationStr>) -> Duration {
        let Some(DurationStr(text)) = self.required(path, value) else {
            return Duration::ZERO;
        };
        match parse_duration(text) {
            Some(d) => d,
            None => {
                self.problem(
                    path,
                    format!(r#"{text:?} is not a duration like "15s" or "5m""#),
                );
                Duration::ZERO
            }
        }
    }

    fn positive_duration(&mut self, path: &str, value: &Option<DurationStr>) -> Duration {
        let d = self.duration(path, value);
        if d.is_zero()
            && value
                .as_ref()
                .is_some_and(|v| parse_duration(&v.0).is_some())
        {
            self.problem(path, "must be longer than 0s");
        }
        d
    }

    fn string(&mut self, path: &str, value: &Option<String>) -> String {
        let Some(text) = self.required(path, value) else {
            return String::new();
        };
        if text.trim().is_empty() {
            self.problem(path, "must not be empty");
        }
        text.clone()
    }

    fn dns_label(&mut self, path: &str, value: &Option<String>, what: &str) -> String {
        let text = self.string(path, value);
        if !text.trim().is_empty() && !is_dns_label(&text) {
            self.problem(
                path,
                format!("{text:?} is not a valid {what} (lowercase letters, digits and '-', at most 63 characters)"),
            );
        }
        text
    }

    fn dns_subdomain(&mut self, path: &str, value: &Option<String>, what: &str) -> String {
        let text = self.string(path, value);
        if !text.trim().is_empty() && !is_dns_subdomain(&text) {
            self.problem(
                path,
                format!("{text:?} is not a valid {what} (lowercase letters, digits, '-' and '.', at most 253 characters)"),
            );
        }
        text
    }

    fn ratio_above_one(&mut self, path: &str, value: Option<f64>) -> f64 {
        let Some(&v) = self.required(path, &value) else {
            return 0.0;
        };
        if !(v.is_finite() && v > 1.0) {
            self.problem(path, format!("must be > 1.0, got {v}"));
        }
        v
    }

    fn placeholders(&mut self, path: &str, template: &str, known: &[&str]) -> bool {
        let unknown: Vec<String> = placeholder_regex()
            .captures_iter(template)
            .map(|c| c[1].to_string())
            .filter(|name| !known.contains(&name.as_str()))
            .collect();
        if unknown.is_empty() {
            return true;
        }
        let braced = |names: &[&str]| {
            names
                .iter()
                .map(|n| format!("{{{n}}}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let unknown: Vec<&str> = unknown.iter().map(String::as_str).collect();
        let plural = if unknown.len() > 1 { "s" } else { "" };
        self.problem(
            path,
            format!(
                "unknown placeholder{plural} {}; known: {}",
                braced(&unknown),
                braced(known)
            ),
        );
        false
    }

    fn query(&mut self, path: &str, value: &Option<String>) -> QueryTemplate {
        let text = self.string(path, value);
        if !text.trim().is_empty() && self.placeholders(path, &text, QUERY_PLACEHOLDERS) {
            if let Err(why) = promql_shape(&fill(&text, &SAMPLE)) {
                self.problem(path, format!("does not look like PromQL: {why}"));
            }
        }
        QueryTemplate(text)
    }

    /// A query template; a grouped one runs once for every target, so it
    /// may not name a target (only `{window}`).
    fn maybe_grouped(
        &mut self,
        path: &str,
        value: &Option<String>,
        grouped: bool,
    ) -> QueryTemplate {
        let template = self.query(path, value);
        if grouped {
            let per_target: Vec<String> = placeholder_regex()
                .captures_iter(template.as_str())
                .map(|c| c[1].to_string())
                .filter(|name| name != "window")
                .collect();
            if !per_target.is_empty() {
                let path_grouped = path.rsplit_once('.').map_or(path, |(head, _)| head);
                self.problem(
                    path,
                    format!(
                        "{path_grouped}.grouped = true runs this query once for every target, so it cannot use {}; \
                         return one series per namespace and pod instead (sum by (namespace, pod) (...)) \
                         and use only {{window}}",
                        per_target
                            .iter()
                            .map(|n| format!("{{{n}}}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        template
    }

    fn url_template(&mut self, path: &str, text: &str, known: &[&str]) -> UrlTemplate {
        if text.trim().is_empty() {
            self.problem(path, "must not be empty");
        } else if self.placeholders(path, text, known) {
            if let Err(why) = http_url(&fill(text, &SAMPLE)) {
                self.problem(
                    path,
                    format!(
                        "{:?} is not an http(s) URL: {why}",
                        credentials::shown(text)
                    ),
                );
            }
        }
        let (text, auth) = credentials::split_userinfo(text);
        UrlTemplate(text, auth)
    }

    /// A file the watchdog reads at run time (token, CA, webhook URL).
    /// Returns its content when readable.
    fn secret_file(&mut self, path: &str, file: &str) -> Option<String> {
        if file.trim().is_empty() {
            self.problem(path, "must not be empty");
            return None;
        }
        let p = Path::new(file);
        if p.is_dir() {
            self.problem(path, format!("{file} is a directory, not a file"));
            return None;
        }
        match std::fs::read_to_string(p) {
            Ok(content) => Some(content),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.missing_secret(path, format!("file {file} does not exist"));
                None
            }
            Err(e) => {
                self.missing_secret(path, format!("file {file} cannot be read: {e}"));
                None
            }
        }
    }

    /// A `ca_file` key: readable (like a secret file) and a PEM bundle
    /// holding at least one certificate, so that a bad one is reported by
    /// `check-config` with its key rather than at the first https request.
    fn ca_file(&mut self, path: &str, file: &str) -> PathBuf {
        if let Some(content) = self.secret_file(path, file) {
            match reqwest::Certificate::from_pem_bundle(content.as_bytes()) {
                Ok(certs) if certs.is_empty() => self.problem(
                    path,
                    format!("{file} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                ),
                Ok(_) => {}
                Err(e) => {
                    self.problem(path, format!("{file} is not a PEM certificate bundle: {e}"))
                }
            }
        }
        PathBuf::from(file)
    }

    fn secret_env(&mut self, path: &str, name: &str) -> Option<String> {
        if !is_env_name(name) {
            self.problem(
                path,
                format!("{name:?} is not an environment variable name"),
            );
            return None;
        }
        match self.env.get(name) {
            Some(v) if !v.trim().is_empty() => Some(v.trim().to_string()),
            _ => {
                self.missing_secret(path, format!("environment variable {name} is not set"));
                None
            }
        }
    }
}

/// humantime, minus its leniency about a space between number and unit:
/// `"15 sec"` reads like a typo for `"15s"` and is refused. Components may
/// be separated (`"1h 30m"`, as the effective config prints them).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    static SHAPE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let shape = SHAPE.get_or_init(|| {
        regex::Regex::new(r"^\s*[0-9]+(\.[0-9]+)?[a-zµ]+(\s*[0-9]+(\.[0-9]+)?[a-zµ]+)*\s*$")
            .expect("static regex")
    });
    if !shape.is_match(text) {
        return None;
    }
    humantime::parse_duration(text.trim()).ok()
}

fn http_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "the scheme is {:?}, not http or https",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("it has no host".into());
    }
    Ok(url)
}

/// A cheap shape check of PromQL: brackets balance and strings close.
/// It catches the usual template typos without a full parser.
fn promql_shape(query: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut chars = query.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                let quote = c;
                let mut closed = false;
                while let Some(d) = chars.next() {
                    if d == '\\' && quote != '`' {
                        chars.next();
                    } else if d == quote {
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(format!("a string opened with {quote} is not closed"));
                }
            }
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return Err(format!("{c:?} has no matching {open:?}"));
                }
            }
            _ => {}
        }
    }
    match stack.pop() {
        Some(open) => Err(format!("{open:?} is not closed")),
        None => Ok(()),
    }
}

fn is_dns_label(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    let re = RE.get_or_init(|| {
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static regex")
    });
    s.len() <= 63 && re.is_match(s)
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_env_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_]*$").expect("static regex"))
        .is_match(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_stuck_to_the_number() {
        assert_eq!(parse_duration("15s"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("1h 30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("15 sec"), None);
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("fast"), None);
        assert_eq!(parse_duration("15x"), None);
    }

    #[test]
    fn promql_shape_finds_unbalanced_brackets_and_strings() {
        assert!(promql_shape(r#"sum(rate(x{a="b)"}[2m]))"#).is_ok());
        assert_eq!(
            promql_shape("sum(rate(x[2m])").unwrap_err(),
            "'(' is not closed"
        );
        assert_eq!(
            promql_shape("x{a=\"b}").unwrap_err(),
            "a string opened with \" is not closed"
        );
        assert_eq!(promql_shape("x]").unwrap_err(), "']' has no matching '['");
    }

    #[test]
    fn names_follow_kubernetes_rules() {
        assert!(is_dns_label("production"));
        assert!(!is_dns_label("Production"));
        assert!(!is_dns_label("-a"));
        assert!(is_dns_subdomain("kailash-kaizen.v2"));
        assert!(!is_dns_subdomain("a..b"));
    }
}

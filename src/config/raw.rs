//! The raw layer: the config exactly as the layers wrote it, before any
//! check. Every field is optional and durations stay strings, so that one
//! bad value never hides the next: the validation pass sees them all.
//! Nothing here decides what a value means.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::Problem;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawConfig {
    pub watchdog: RawWatchdog,
    pub prometheus: RawPrometheus,
    pub leader_election: RawLeaderElection,
    pub admin: RawAdmin,
    pub defaults: RawPolicy,
    pub targets: Vec<RawPolicy>,
    pub notify: Vec<RawNotify>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawWatchdog {
    pub cluster_name: Option<String>,
    pub interval: Option<DurationStr>,
    pub dry_run: Option<bool>,
    pub paused: Option<bool>,
    pub namespace: Option<String>,
    pub audit_log: Option<String>,
    pub opt_in_namespaces: Option<Vec<String>>,
    pub max_concurrent_targets: Option<u32>,
    pub shutdown_grace: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawPrometheus {
    pub url: Option<String>,
    pub timeout: Option<DurationStr>,
    pub bearer_token_file: Option<String>,
    pub ca_file: Option<String>,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawLeaderElection {
    pub enabled: Option<bool>,
    pub lease_name: Option<String>,
    pub lease_duration: Option<DurationStr>,
    pub renew_deadline: Option<DurationStr>,
    pub retry_period: Option<DurationStr>,
    pub identity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawAdmin {
    pub listen: Option<String>,
    pub request_timeout: Option<DurationStr>,
}

/// `[defaults]` and each `[[targets]]` entry share this shape: a target is a
/// policy plus the identity keys (`namespace`, `name`, `selector`), which
/// `[defaults]` must not carry.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawPolicy {
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub selector: Option<String>,

    pub watch_window: Option<DurationStr>,
    pub failure_threshold: Option<u32>,
    pub rollback_outside_window: Option<bool>,
    pub cooldown: Option<DurationStr>,
    pub max_rollbacks_per_window: Option<u32>,
    pub rollback_budget_window: Option<DurationStr>,
    pub rollout_timeout: Option<DurationStr>,
    pub verify_window: Option<DurationStr>,
    pub backup_retention: Option<u32>,
    pub blind_alert_after: Option<DurationStr>,
    pub dry_run: Option<bool>,
    pub paused: Option<bool>,
    pub immediate_bad_when_all_pods_crash: Option<bool>,
    pub allow_gitops: Option<bool>,
    pub error_rate: RawErrorRate,
    pub latency: RawLatency,
    pub health: RawHealth,
    pub pods: RawPods,
    pub rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawErrorRate {
    pub enabled: Option<bool>,
    pub errors_query: Option<String>,
    pub total_query: Option<String>,
    pub max: Option<f64>,
    pub max_ratio_to_baseline: Option<f64>,
    pub relative_floor: Option<f64>,
    pub min_request_rate: Option<f64>,
    pub window: Option<DurationStr>,
    pub baseline_lookback: Option<DurationStr>,
    pub misconfigured_after_requests: Option<u32>,
    pub grouped: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawLatency {
    pub enabled: Option<bool>,
    pub query: Option<String>,
    pub max_ratio_to_baseline: Option<f64>,
    pub relative_floor: Option<DurationStr>,
    pub max: Option<DurationStr>,
    pub window: Option<DurationStr>,
    pub baseline_lookback: Option<DurationStr>,
    pub min_requests: Option<u32>,
    pub grouped: Option<bool>,
    pub quantile: Option<f64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawHealth {
    pub enabled: Option<bool>,
    pub url: Option<String>,
    pub urls: Option<Vec<String>>,
    pub timeout: Option<DurationStr>,
    pub expect_status: Option<Vec<i64>>,
    pub body_regex: Option<String>,
    pub per_pod: Option<RawPerPod>,
    pub version_url: Option<String>,
    pub ca_file: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawPerPod {
    pub enabled: Option<bool>,
    pub port: Option<i64>,
    pub path: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawPods {
    pub enabled: Option<bool>,
    pub crash_reasons: Option<Vec<String>>,
    pub max_restarts: Option<u32>,
    pub progress_deadline_is_failure: Option<bool>,
    pub ready_timeout: Option<DurationStr>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub(crate) struct RawRule {
    pub name: Option<String>,
    pub query: Option<String>,
    pub op: Option<String>,
    pub threshold: Option<f64>,
    pub window: Option<DurationStr>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct RawNotify {
    pub kind: Option<String>,
    pub name: Option<String>,
    pub url: Option<String>,
    pub url_file: Option<String>,
    pub url_env: Option<String>,
    pub secret: Option<String>,
    pub secret_file: Option<String>,
    pub secret_env: Option<String>,
    pub events: Option<Vec<String>>,
    pub targets: Option<Vec<String>>,
    pub timeout: Option<DurationStr>,
    pub deadline: Option<DurationStr>,
    pub dashboard_url: Option<String>,
    pub runbook_url: Option<String>,
    pub ca_file: Option<String>,
}

/// A duration as written (`"15s"`); parsed by the validation pass so that a
/// bad one is reported next to all other problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DurationStr(pub String);

impl<'de> Deserialize<'de> for DurationStr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = DurationStr;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(r#"a duration like "15s" or "5m""#)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<DurationStr, E> {
                Ok(DurationStr(v.to_string()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// What the raw pass found.
pub(crate) struct RawOutcome {
    /// `None` when the document is too broken to check further; the
    /// problems then say why.
    pub raw: Option<RawConfig>,
    /// The document with every offending value removed.
    pub doc: Value,
    pub problems: Vec<Problem>,
    /// Paths already reported here, so validation does not report them again.
    pub broken: Vec<String>,
}

/// Deserializes the merged document, collecting every unknown key and
/// every type error. A type error removes the offending value and tries
/// again, so one run reports all of them.
pub(crate) fn deserialize(mut doc: Value) -> RawOutcome {
    let (mut problems, mut broken) = prepass(&mut doc);
    let mut last_error: Option<String> = None;
    // Each round removes one bad value, so this ends; the bound guards
    // against a value that cannot be removed.
    for _ in 0..500 {
        let mut unknown = Vec::new();
        let result: Result<RawConfig, _> = {
            let mut record = |path: serde_ignored::Path| unknown.push(ignored_path(&path));
            let ignored = serde_ignored::Deserializer::new(&doc, &mut record);
            serde_path_to_error::deserialize(ignored)
        };
        match result {
            Ok(raw) => {
                for path in unknown {
                    problems.push(Problem::new(path, "unknown key"));
                }
                return RawOutcome {
                    raw: Some(raw),
                    doc,
                    problems,
                    broken,
                };
            }
            Err(err) => {
                let path = err.path().to_string();
                let mut segments: Vec<_> = err.path().iter().cloned().collect();
                if last_error.as_deref() == Some(path.as_str()) {
                    // A list element that `{}` did not satisfy either (a
                    // number in a list of strings): drop the whole list.
                    segments.pop();
                    let list = display_path(&segments);
                    broken.push(list);
                } else {
                    problems.push(Problem::new(path.clone(), type_error_sentence(err.inner())));
                    broken.push(path.clone());
                }
                last_error = Some(path);
                if !remove_path(&mut doc, &segments) {
                    break;
                }
            }
        }
    }
    RawOutcome {
        raw: None,
        doc,
        problems,
        broken,
    }
}

/// Checks serde would let through: a list where a table belongs (serde
/// reads a struct from a sequence, positionally) and `nan`/`inf`, which
/// JSON cannot hold and which arrive here as null.
fn prepass(doc: &mut Value) -> (Vec<Problem>, Vec<String>) {
    let mut problems = Vec::new();
    let mut broken = Vec::new();
    let mut report = |path: String, message: &str| {
        problems.push(Problem::new(path.clone(), message));
        broken.push(path);
    };

    fn walk_nulls(node: &mut Value, path: &str, report: &mut dyn FnMut(String, &str)) {
        match node {
            Value::Object(map) => {
                let nulls: Vec<String> = map
                    .iter()
                    .filter(|(_, v)| v.is_null())
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in nulls {
                    map.remove(&key);
                    report(
                        join_key(path, &key),
                        "must be a finite number, not nan or inf",
                    );
                }
                for (key, child) in map.iter_mut() {
                    walk_nulls(child, &join_key(path, key), report);
                }
            }
            Value::Array(items) => {
                if items.iter().any(Value::is_null) {
                    items.retain(|v| !v.is_null());
                    report(path.to_string(), "must hold finite numbers, not nan or inf");
                }
                for (i, child) in items.iter_mut().enumerate() {
                    walk_nulls(child, &format!("{path}[{i}]"), report);
                }
            }
            _ => {}
        }
    }
    walk_nulls(doc, "", &mut report);

    // Where the schema has tables, a list is a mistake.
    const POLICY_TABLES: [&str; 5] = ["error_rate", "latency", "health", "pods", "health.per_pod"];
    let mut tables: Vec<String> = [
        "watchdog",
        "prometheus",
        "prometheus.headers",
        "leader_election",
        "admin",
        "defaults",
    ]
    .map(String::from)
    .to_vec();
    let mut policies = vec!["defaults".to_string()];
    for list in ["targets", "notify"] {
        if let Some(Value::Array(items)) = doc.get(list) {
            for i in 0..items.len() {
                tables.push(format!("{list}[{i}]"));
                if list == "targets" {
                    policies.push(format!("{list}[{i}]"));
                }
            }
        }
    }
    for policy in &policies {
        tables.extend(POLICY_TABLES.iter().map(|t| format!("{policy}.{t}")));
        let rules = lookup(doc, &format!("{policy}.rules"))
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        tables.extend((0..rules).map(|i| format!("{policy}.rules[{i}]")));
    }
    for table in tables {
        if let Some(Value::Array(_)) = lookup(doc, &table) {
            report(table.clone(), "expected a table, got a list");
            if let Some(node) = lookup_mut(doc, &table) {
                *node = Value::Object(Default::default());
            }
        }
    }
    (problems, broken)
}

fn join_key(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn display_path(segments: &[serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => out = join_key(&out, key),
            Segment::Enum { variant } => out = join_key(&out, variant),
            Segment::Unknown => out = join_key(&out, "?"),
        }
    }
    out
}

/// The node at `targets[0].health.url`-style `path`.
fn lookup<'v>(doc: &'v Value, path: &str) -> Option<&'v Value> {
    let mut node = doc;
    for (key, index) in steps(path) {
        if !key.is_empty() {
            node = node.get(key)?;
        }
        if let Some(i) = index {
            node = node.get(i)?;
        }
    }
    Some(node)
}

fn lookup_mut<'v>(doc: &'v mut Value, path: &str) -> Option<&'v mut Value> {
    let mut node = doc;
    for (key, index) in steps(path) {
        if !key.is_empty() {
            node = node.get_mut(key)?;
        }
        if let Some(i) = index {
            node = node.get_mut(i)?;
        }
    }
    Some(node)
}

/// `rules[0].op` -> [("rules", Some(0)), ("op", None)]. Paths here come from
/// this module, with at most one index per key.
fn steps(path: &str) -> Vec<(&str, Option<usize>)> {
    path.split('.')
        .map(|part| match part.split_once('[') {
            Some((key, rest)) => (key, rest.trim_end_matches(']').parse().ok()),
            None => (part, None),
        })
        .collect()
}

fn type_error_sentence(err: &serde_json::Error) -> String {
    // serde says "invalid type: integer `15`, expected u32"; users read
    // "expected a whole number (0 or more), got integer `15`" faster, in
    // TOML's words rather than Rust's.
    let text = err.to_string();
    let split = ["invalid type: ", "invalid value: "]
        .iter()
        .find_map(|prefix| text.strip_prefix(prefix))
        .and_then(|rest| rest.split_once(", expected "));
    match split {
        Some((got, expected)) => {
            let expected = match expected {
                "u32" | "u64" | "usize" => "a whole number (0 or more)",
                "i64" | "i32" => "a whole number",
                "f64" | "f32" => "a number",
                "a sequence" => "a list",
                "a map" | "struct" => "a table",
                other if other.starts_with("struct ") => "a table",
                other => other,
            };
            let got = match got {
                "sequence" => "a list",
                "map" => "a table",
                other => other,
            };
            format!("expected {expected}, got {got}")
        }
        None => text,
    }
}

fn remove_path(doc: &mut Value, segments: &[serde_path_to_error::Segment]) -> bool {
    use serde_path_to_error::Segment;
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = doc;
    for segment in parents {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Object(map)) => match map.get_mut(key) {
                Some(child) => child,
                None => return false,
            },
            (Segment::Seq { index }, Value::Array(items)) => match items.get_mut(*index) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, node) {
        (Segment::Map { key }, Value::Object(map)) => map.remove(key).is_some(),
        // Replacing keeps the other indices (and their paths) stable.
        (Segment::Seq { index }, Value::Array(items)) if *index < items.len() => {
            items[*index] = Value::Object(Default::default());
            true
        }
        _ => false,
    }
}

/// `targets[2].health.url`, the same form serde_path_to_error uses.
fn ignored_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => {
            let parent = ignored_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Deep merge for target overrides: tables merge key by key, anything else
/// (numbers, strings, lists such as `rules`) is replaced whole.
pub(crate) fn merge_over(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Object(base), Value::Object(over)) => {
            let mut merged = base.clone();
            for (key, value) in over {
                let next = match merged.get(key) {
                    Some(existing) => merge_over(existing, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            Value::Object(merged)
        }
        (_, over) => over.clone(),
    }
}

/// Whether `path` (`health.per_pod.port`, `rules[0].op`) is written in `doc`.
pub(crate) fn has_path(doc: &Value, path: &str) -> bool {
    lookup(doc, path).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_type_error_and_unknown_key_is_reported_in_one_pass() {
        let doc = json!({
            "watchdog": {"interval": 15, "dry_run": "yes", "colour": "blue"},
            "targets": [{"namespace": "a", "name": "b", "failure_threshold": -1, "helth": {}}],
        });
        let out = deserialize(doc);
        let lines: Vec<String> = out.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines,
            // Document order is the JSON map's (alphabetical); the loader
            // sorts the final list.
            vec![
                "targets[0].failure_threshold: expected a whole number (0 or more), got integer `-1`",
                r#"watchdog.dry_run: expected a boolean, got string "yes""#,
                r#"watchdog.interval: expected a duration like "15s" or "5m", got integer `15`"#,
                "targets[0].helth: unknown key",
                "watchdog.colour: unknown key",
            ]
        );
        assert_eq!(out.broken.len(), 3);
    }

    #[test]
    fn lists_where_tables_belong_and_non_finite_numbers_are_reported() {
        let doc = json!({
            "defaults": [],
            "targets": [[1], {"namespace": "a", "name": "b", "error_rate": {"max": null}}],
            "notify": [{"kind": "slack", "events": ["blind", 5]}],
        });
        let out = deserialize(doc);
        let lines: Vec<String> = out.problems.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            lines,
            vec![
                "targets[1].error_rate.max: must be a finite number, not nan or inf",
                "defaults: expected a table, got a list",
                "targets[0]: expected a table, got a list",
                "notify[0].events[1]: expected a string, got integer `5`",
            ]
        );
        assert!(out.raw.is_some());
    }

    #[test]
    fn merge_replaces_lists_and_merges_tables() {
        let base = json!({"a": {"x": 1, "y": 2}, "rules": [1, 2]});
        let over = json!({"a": {"y": 3}, "rules": [9]});
        assert_eq!(
            merge_over(&base, &over),
            json!({"a": {"x": 1, "y": 3}, "rules": [9]})
        );
    }

    #[test]
    fn has_path_follows_keys_and_indices() {
        let doc = json!({"health": {"per_pod": {"port": 1}}, "rules": [{"op": ">"}]});
        assert!(has_path(&doc, "health.per_pod.port"));
        assert!(has_path(&doc, "rules[0].op"));
        assert!(!has_path(&doc, "rules[1].op"));
        assert!(!has_path(&doc, "health.url"));
    }
}

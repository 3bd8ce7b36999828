//! A `/metrics` body as Prometheus tooling reads it: `promtool check
//! metrics` (the Prometheus text format, with its lint) and the Prometheus
//! project's Python client (`tests/metrics_parse_check.py`, both parsers),
//! each run under `timeout`. And the metrics issue 6 requires, by type and
//! labels.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
pub struct Family {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub samples: Vec<Sample>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: String,
}

impl Sample {
    pub fn value(&self) -> f64 {
        self.value.parse().unwrap_or(f64::NAN)
    }
}

/// Runs `program args` under `timeout 60` with `stdin`; (success, stdout,
/// stdout and stderr).
fn run(program: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new("timeout")
        .args(["--kill-after=5", "60", program])
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("timeout(1) runs {program}: {e}"));
    if let Some(mut input) = child.stdin.take() {
        // A program that exits early closes its end; its output says why.
        let _ = input.write_all(stdin.as_bytes());
    }
    let out = child.wait_with_output().expect("wait");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    (out.status.success(), stdout, all)
}

/// `promtool check metrics` accepts `body` (it parses the Prometheus text
/// format and lints names, types, units and help).
pub fn assert_promtool_accepts(body: &str) {
    let (ok, _, output) = run("promtool", &["check", "metrics"], body);
    assert!(
        ok && output.trim().is_empty(),
        "promtool check metrics rejects /metrics (bash .ci/run installs promtool):\n{output}\nbody:\n{body}"
    );
}

/// The families of `body` as the Python client's parser for `format`
/// (`text` or `openmetrics`) reads them; panics when it rejects the body.
pub fn python_parse(body: &str, format: &str) -> Vec<Family> {
    let (ok, stdout, output) = run("python3", &["tests/metrics_parse_check.py", format], body);
    assert!(
        ok,
        "the Python client rejects /metrics (pip install prometheus_client if it is missing):\n{output}\nbody:\n{body}"
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// What issue 6 asks for: (family name without the prefix, type, labels).
/// The build info is a gauge named `build_info` in the text format, an
/// `info` family named `build` in OpenMetrics.
pub const REQUIRED: &[(&str, &str, &[&str])] = &[
    ("targets", "gauge", &[]),
    ("evaluations", "counter", &["target", "result"]),
    ("signal_results", "counter", &["signal", "result"]),
    ("signal_query_seconds", "histogram", &["signal"]),
    ("rollbacks", "counter", &["target", "outcome"]),
    ("detection_seconds", "histogram", &[]),
    ("recovery_seconds", "histogram", &[]),
    ("notifications", "counter", &["sink", "outcome"]),
    ("leader", "gauge", &[]),
    ("last_tick_timestamp_seconds", "gauge", &[]),
    ("build_info", "gauge", &["version"]),
];

/// The family `rollback_watchdog_{name}` (the parsers drop a counter's
/// `_total`; OpenMetrics names the info family without `_info`).
pub fn family<'a>(families: &'a [Family], name: &str) -> Option<&'a Family> {
    let full = format!("rollback_watchdog_{name}");
    let info = full.strip_suffix("_info").unwrap_or(&full).to_string();
    families.iter().find(|f| f.name == full || f.name == info)
}

/// Every required family is there with its type, and each of its samples
/// carries exactly the required labels (plus `le` on histogram buckets).
pub fn assert_required_families(families: &[Family], openmetrics: bool) {
    for (name, kind, labels) in REQUIRED {
        let f = family(families, name).unwrap_or_else(|| {
            panic!(
                "no rollback_watchdog_{name} among {:?}",
                families.iter().map(|f| &f.name).collect::<Vec<_>>()
            )
        });
        let want_kind = if openmetrics && *name == "build_info" {
            "info"
        } else {
            kind
        };
        assert_eq!(&f.kind, want_kind, "the type of {}", f.name);
        assert!(
            !f.samples.is_empty(),
            "{} has no samples, so its labels go unchecked",
            f.name
        );
        let want: BTreeSet<&str> = labels.iter().copied().collect();
        for s in &f.samples {
            let got: BTreeSet<&str> = s
                .labels
                .keys()
                .map(String::as_str)
                .filter(|k| !(*k == "le" && s.name.ends_with("_bucket")))
                .collect();
            assert_eq!(got, want, "the labels of {} in {s:?}", f.name);
        }
    }
}

/// The value of the sample `name` with exactly `labels`.
pub fn value(families: &[Family], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    families
        .iter()
        .flat_map(|f| &f.samples)
        .find(|s| s.name == name && s.labels == labels)
        .map(Sample::value)
}

//! Which Deployments are watched, and with which policy: `[[targets]]`
//! entries (by name or label selector) and Deployments that opt in with
//! `rollback-watchdog.io/enabled: "true"` in an opt-in namespace, each with
//! the few per-object annotation overrides applied. Reads a cache
//! [`Snapshot`] only. It must never panic or give up on a bad annotation or
//! a missing Deployment: those become [`TargetWarning`]s and the other
//! targets go on.
//!
//! Annotations read here (on the Deployment):
//!
//! | annotation | value | effect |
//! | --- | --- | --- |
//! | `rollback-watchdog.io/enabled` | `"true"` / `"false"` | opts in (only in `watchdog.opt_in_namespaces`, policy `[defaults]`) |
//! | `rollback-watchdog.io/watch-window` | duration, `"30m"`, 1 s to 7 days | replaces `watch_window` |
//! | `rollback-watchdog.io/failure-threshold` | integer 1 to 1000 | replaces `failure_threshold` |
//! | `rollback-watchdog.io/dry-run` | `"true"` / `"false"` | `"true"` makes the target dry-run; `"false"` cannot undo a dry run set in the config |
//! | `rollback-watchdog.io/paused` | `"true"` / `"false"` | `"true"` stops all action; `"false"` cannot undo a pause set in the config |
//!
//! A `[[targets]]` entry wins over the `enabled` annotation (its policy is
//! used), and the first entry that selects a Deployment wins over later ones.
//! The overrides apply to every watched Deployment. A value that does not
//! parse is reported and ignored: the policy keeps its configured value.

use crate::k8s::keys::{quoted, DRY_RUN, ENABLED, FAILURE_THRESHOLD, PAUSED, WATCH_WINDOW};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use crate::config::{Config, Policy, Selects};
use crate::observe::cache::{Snapshot, ALL_NAMESPACES};

/// Bounds of `rollback-watchdog.io/watch-window`.
pub const MIN_WATCH_WINDOW: Duration = Duration::from_secs(1);
pub const MAX_WATCH_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Bounds of `rollback-watchdog.io/failure-threshold`.
pub const MAX_FAILURE_THRESHOLD: u32 = 1000;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum TargetsError {
    /// A per-object annotation override whose value is not usable.
    #[error(
        "annotation {annotation}: {} {problem}; the annotation is ignored",
        quoted(value)
    )]
    BadAnnotation {
        annotation: &'static str,
        value: String,
        problem: String,
    },
    /// A dry-run or paused annotation someone meant to set but mistyped:
    /// read as on, since ignoring it would let the watchdog act.
    #[error("annotation {annotation}: {} is not \"true\" or \"false\"; treated as \"true\" (the safe side) until it is corrected", quoted(value))]
    UnclearSafetyAnnotation {
        annotation: &'static str,
        value: String,
    },
}

/// Why a Deployment is watched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `targets[index]` of the config selects it.
    Config { index: usize },
    /// It carries `rollback-watchdog.io/enabled: "true"`.
    Annotation,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Config { index } => write!(f, "targets[{index}]"),
            Source::Annotation => write!(f, "annotation {ENABLED}"),
        }
    }
}

/// One watched Deployment with its effective policy.
#[derive(Debug, Clone)]
pub struct WatchedDeployment {
    pub namespace: String,
    pub name: String,
    pub source: Source,
    /// Config (or `[defaults]`) with the object's annotation overrides.
    pub policy: Policy,
    /// The Deployment as cached.
    pub deployment: Arc<Deployment>,
}

impl WatchedDeployment {
    /// `production/kailash-kaizen`.
    pub fn display_name(&self) -> String {
        self.key().to_string()
    }

    pub fn key(&self) -> crate::k8s::DeploymentKey {
        crate::k8s::DeploymentKey::new(&self.namespace, &self.name)
    }

    /// The Deployment's uid: what revision state is keyed by, so a
    /// Deployment deleted and re-created under the same name starts afresh.
    pub fn uid(&self) -> String {
        self.deployment.uid().unwrap_or_default()
    }
}

/// Something a user should fix, found while resolving targets. The run loop
/// logs it and, when `deployment` exists, records a Warning Event on it.
/// The same problem gives an equal warning on every tick, so the run loop
/// can report each one once (keep the previous tick's set and diff).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetWarning {
    pub namespace: String,
    /// The Deployment's name, or the selector as written for a selector
    /// that matches nothing.
    pub subject: String,
    /// Whether `subject` names an existing Deployment (an Event can go on it).
    pub deployment_exists: bool,
    pub message: String,
}

impl fmt::Display for TargetWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}: {}", self.namespace, self.subject, self.message)
    }
}

/// The watched Deployments of one tick, sorted by namespace and name, and
/// the problems found on the way.
#[derive(Debug, Clone, Default)]
pub struct Resolution {
    pub targets: Vec<WatchedDeployment>,
    pub warnings: Vec<TargetWarning>,
}

/// The watched Deployments: config entries first (in order, the first that
/// selects a Deployment wins), then opt-in annotations. Before the caches
/// have synced, nothing is reported missing.
pub fn resolve(config: &Config, snapshot: &Snapshot) -> Resolution {
    let mut chosen: std::collections::BTreeMap<(String, String), WatchedDeployment> =
        Default::default();
    let mut warnings = Vec::new();
    let interval = config.watchdog.interval;
    let warn_on = |d: &Deployment, message: String| TargetWarning {
        namespace: d.namespace().unwrap_or_default(),
        subject: d.name_any(),
        deployment_exists: true,
        message,
    };

    for (index, target) in config.targets.iter().enumerate() {
        let selected: Vec<&Arc<Deployment>> = match &target.selects {
            Selects::Name(name) => snapshot
                .deployment(&target.namespace, name)
                .into_iter()
                .collect(),
            Selects::Labels(_, selector) => snapshot
                .deployments_in(&target.namespace)
                .filter(|d| selector.matches(d.labels()))
                .collect(),
        };
        if selected.is_empty() && snapshot.is_ready() {
            let (subject, message) = match &target.selects {
                Selects::Name(name) => (
                    name.clone(),
                    format!("Deployment not found; check the name in targets[{index}]"),
                ),
                Selects::Labels(text, _) => (
                    text.clone(),
                    format!(
                        "no Deployment in namespace {} matches the selector in targets[{index}]",
                        target.namespace
                    ),
                ),
            };
            warnings.push(TargetWarning {
                namespace: target.namespace.clone(),
                subject,
                deployment_exists: false,
                message,
            });
        }
        for d in selected {
            let key = (target.namespace.clone(), d.name_any());
            if let Some(first) = chosen.get(&key) {
                warnings.push(warn_on(
                    d,
                    format!(
                        "selected by {} and by targets[{index}]; {} applies",
                        first.source, first.source
                    ),
                ));
                continue;
            }
            let (policy, problems) = with_overrides(&target.policy, d.annotations(), interval);
            warnings.extend(problems.into_iter().map(|p| warn_on(d, p.to_string())));
            chosen.insert(
                key,
                WatchedDeployment {
                    namespace: target.namespace.clone(),
                    name: d.name_any(),
                    source: Source::Config { index },
                    policy,
                    deployment: d.clone(),
                },
            );
        }
    }

    let opt_in = &config.watchdog.opt_in_namespaces;
    let opted_in_namespace = |ns: &str| opt_in.iter().any(|o| o == ns || o == ALL_NAMESPACES);
    let mut opt_in_policy = None;
    for d in snapshot.deployments() {
        let Some(value) = d.annotations().get(ENABLED) else {
            continue;
        };
        let key = (d.namespace().unwrap_or_default(), d.name_any());
        if chosen.contains_key(&key) {
            // The config entry wins; a malformed value is still worth a word.
            if parse_bool(value).is_none() {
                warnings.push(warn_on(d, bad_bool(ENABLED, value).to_string()));
            }
            continue;
        }
        match parse_bool(value) {
            None => {
                warnings.push(warn_on(
                    d,
                    format!(
                        "annotation {ENABLED}: {} is not \"true\" or \"false\"; the Deployment is not watched",
                        quoted(value)
                    ),
                ));
                continue;
            }
            Some(false) => continue,
            Some(true) => {}
        }
        if !opted_in_namespace(&key.0) {
            warnings.push(warn_on(
                d,
                format!(
                    "annotation {ENABLED} is set, but namespace {} is not in watchdog.opt_in_namespaces; the Deployment is not watched",
                    key.0
                ),
            ));
            continue;
        }
        let base = opt_in_policy.get_or_insert_with(|| config.opt_in_policy());
        let (policy, problems) = with_overrides(base, d.annotations(), interval);
        warnings.extend(problems.into_iter().map(|p| warn_on(d, p.to_string())));
        chosen.insert(
            key.clone(),
            WatchedDeployment {
                namespace: key.0,
                name: key.1,
                source: Source::Annotation,
                policy,
                deployment: d.clone(),
            },
        );
    }

    warnings.sort();
    Resolution {
        targets: chosen.into_values().collect(),
        warnings,
    }
}

/// `base` with the object's override annotations applied; each unusable
/// value is returned as a problem and leaves its key as configured.
///
/// As in the config, the window must hold `failure_threshold` ticks of
/// `interval` (else no revision could turn Bad inside it): an override
/// that breaks this is reported and dropped, the window's first.
pub fn with_overrides(
    base: &Policy,
    annotations: &std::collections::BTreeMap<String, String>,
    interval: Duration,
) -> (Policy, Vec<TargetsError>) {
    let mut policy = base.clone();
    let mut problems = Vec::new();
    let window = annotations.get(WATCH_WINDOW);
    let threshold = annotations.get(FAILURE_THRESHOLD);
    if let Some(v) = window {
        match parse_watch_window(v) {
            Ok(d) => policy.watch_window = d,
            Err(e) => problems.push(e),
        }
    }
    if let Some(v) = threshold {
        match parse_failure_threshold(v) {
            Ok(n) => policy.failure_threshold = n,
            Err(e) => problems.push(e),
        }
    }
    let too_short = |p: &Policy| p.watch_window < interval.saturating_mul(p.failure_threshold);
    let why = |p: &Policy| {
        format!(
            "leaves a window of {} for failure_threshold ({}) x watchdog.interval ({}) = {}; no revision could turn Bad inside it",
            humantime::format_duration(p.watch_window),
            p.failure_threshold,
            humantime::format_duration(interval),
            humantime::format_duration(interval.saturating_mul(p.failure_threshold)),
        )
    };
    if too_short(&policy) && policy.watch_window != base.watch_window {
        problems.push(TargetsError::BadAnnotation {
            annotation: WATCH_WINDOW,
            value: window.cloned().unwrap_or_default(),
            problem: why(&policy),
        });
        policy.watch_window = base.watch_window;
    }
    if too_short(&policy) && policy.failure_threshold != base.failure_threshold {
        problems.push(TargetsError::BadAnnotation {
            annotation: FAILURE_THRESHOLD,
            value: threshold.cloned().unwrap_or_default(),
            problem: why(&policy),
        });
        policy.failure_threshold = base.failure_threshold;
    }
    for (annotation, field) in [(DRY_RUN, &mut policy.dry_run), (PAUSED, &mut policy.paused)] {
        if let Some(v) = annotations.get(annotation) {
            match parse_bool(v) {
                // Only ever tightens: an annotation cannot lift a dry run
                // or a pause the config set.
                Some(on) => *field |= on,
                None => {
                    *field = true;
                    problems.push(TargetsError::UnclearSafetyAnnotation {
                        annotation,
                        value: v.to_owned(),
                    });
                }
            }
        }
    }
    (policy, problems)
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.trim() {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn bad_bool(annotation: &'static str, value: &str) -> TargetsError {
    TargetsError::BadAnnotation {
        annotation,
        value: value.to_owned(),
        problem: "is not \"true\" or \"false\"".into(),
    }
}

fn parse_watch_window(v: &str) -> Result<std::time::Duration, TargetsError> {
    let bad = |problem: String| TargetsError::BadAnnotation {
        annotation: WATCH_WINDOW,
        value: v.to_owned(),
        problem,
    };
    let d = humantime::parse_duration(v.trim())
        .map_err(|_| bad("is not a duration like \"15m\" or \"1h30m\"".into()))?;
    if d < MIN_WATCH_WINDOW || d > MAX_WATCH_WINDOW {
        return Err(bad("must be between 1s and 7 days".into()));
    }
    Ok(d)
}

fn parse_failure_threshold(v: &str) -> Result<u32, TargetsError> {
    let bad = || TargetsError::BadAnnotation {
        annotation: FAILURE_THRESHOLD,
        value: v.to_owned(),
        problem: format!("is not a whole number from 1 to {MAX_FAILURE_THRESHOLD}"),
    };
    match v.trim().parse::<u32>() {
        Ok(n) if (1..=MAX_FAILURE_THRESHOLD).contains(&n) => Ok(n),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loader;
    use serde_json::json;

    fn config(toml: &str) -> Config {
        Loader::from_toml(toml)
            .env(Vec::<(String, String)>::new())
            .load()
            .expect("valid test config")
            .config
    }

    fn deployment(
        ns: &str,
        name: &str,
        labels: serde_json::Value,
        annotations: serde_json::Value,
    ) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                         "labels": labels, "annotations": annotations},
            "spec": {"selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "x:v1"}]}}},
        }))
        .expect("a valid Deployment")
    }

    fn snapshot(ds: Vec<Deployment>) -> Snapshot {
        Snapshot::from_objects(ds, [], [])
    }

    fn names(r: &Resolution) -> Vec<String> {
        r.targets.iter().map(|t| t.display_name()).collect()
    }

    fn texts(r: &Resolution) -> Vec<String> {
        r.warnings.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn targets_by_name_selector_and_annotation_are_all_found() {
        let c = config(
            r#"
            [watchdog]
            opt_in_namespaces = ["staging"]
            [[targets]]
            namespace = "production"
            name = "kailash-kaizen"
            [[targets]]
            namespace = "production"
            selector = "tier=web"
            "#,
        );
        let snap = snapshot(vec![
            deployment("production", "kailash-kaizen", json!({}), json!({})),
            deployment("production", "web-a", json!({"tier": "web"}), json!({})),
            deployment("production", "db", json!({"tier": "db"}), json!({})),
            deployment("staging", "api", json!({}), json!({ENABLED: "true"})),
            deployment("staging", "off", json!({}), json!({ENABLED: "false"})),
        ]);
        let r = resolve(&c, &snap);
        assert_eq!(
            names(&r),
            [
                "production/kailash-kaizen",
                "production/web-a",
                "staging/api"
            ]
        );
        assert!(r.warnings.is_empty(), "{:?}", texts(&r));
        assert_eq!(r.targets[2].source, Source::Annotation);
    }

    #[test]
    fn a_missing_deployment_is_named_with_its_config_entry_and_others_go_on() {
        let c = config(
            "[[targets]]\nnamespace = \"production\"\nname = \"kailash-kaizen\"\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n",
        );
        let r = resolve(
            &c,
            &snapshot(vec![deployment("production", "web", json!({}), json!({}))]),
        );
        assert_eq!(names(&r), ["production/web"]);
        assert_eq!(
            texts(&r),
            ["production/kailash-kaizen: Deployment not found; check the name in targets[0]"]
        );
        assert!(!r.warnings[0].deployment_exists);
    }

    #[test]
    fn nothing_is_reported_missing_before_the_caches_sync() {
        let c = config("[[targets]]\nnamespace = \"production\"\nname = \"web\"\n");
        let r = resolve(&c, &Snapshot::default());
        assert!(r.targets.is_empty());
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn a_config_entry_wins_over_the_annotation_and_the_first_entry_wins() {
        let c = config(
            r#"
            [watchdog]
            opt_in_namespaces = ["production"]
            [[targets]]
            namespace = "production"
            name = "web"
            failure_threshold = 7
            [[targets]]
            namespace = "production"
            selector = "app=web"
            failure_threshold = 9
            "#,
        );
        let r = resolve(
            &c,
            &snapshot(vec![deployment(
                "production",
                "web",
                json!({"app": "web"}),
                json!({ENABLED: "true"}),
            )]),
        );
        assert_eq!(r.targets.len(), 1);
        assert_eq!(r.targets[0].source, Source::Config { index: 0 });
        assert_eq!(r.targets[0].policy.failure_threshold, 7);
        assert_eq!(
            texts(&r),
            ["production/web: selected by targets[0] and by targets[1]; targets[0] applies"]
        );
    }

    #[test]
    fn an_opt_in_outside_the_opt_in_namespaces_is_reported_not_watched() {
        let c = config("[[targets]]\nnamespace = \"production\"\nname = \"web\"\n");
        let r = resolve(
            &c,
            &snapshot(vec![
                deployment("production", "web", json!({}), json!({})),
                deployment("production", "api", json!({}), json!({ENABLED: "true"})),
            ]),
        );
        assert_eq!(names(&r), ["production/web"]);
        assert_eq!(texts(&r).len(), 1);
        assert!(
            texts(&r)[0].contains("not in watchdog.opt_in_namespaces"),
            "{:?}",
            texts(&r)
        );
    }

    #[test]
    fn good_overrides_apply_and_bad_ones_are_reported_and_ignored() {
        let c = config("[watchdog]\nopt_in_namespaces = [\"*\"]\n");
        let r = resolve(
            &c,
            &snapshot(vec![
                deployment(
                    "a",
                    "good",
                    json!({}),
                    json!({ENABLED: "true", WATCH_WINDOW: "30m", FAILURE_THRESHOLD: "5", DRY_RUN: "true"}),
                ),
                deployment(
                    "a",
                    "bad",
                    json!({}),
                    json!({ENABLED: "true", WATCH_WINDOW: "soon", FAILURE_THRESHOLD: "0", PAUSED: "yes"}),
                ),
            ]),
        );
        let defaults = c.opt_in_policy();
        let bad = &r.targets[0];
        let good = &r.targets[1];
        assert_eq!(good.policy.watch_window, Duration::from_secs(1800));
        assert_eq!(good.policy.failure_threshold, 5);
        assert!(good.policy.dry_run);
        // A mistyped pause is read as a pause; the other bad values leave
        // the policy as configured.
        assert!(bad.policy.paused, "paused: \"yes\" must not let it act");
        assert_eq!(
            Policy {
                paused: defaults.paused,
                ..bad.policy.clone()
            },
            defaults,
            "bad values leave the rest of the policy as configured"
        );
        assert_eq!(
            texts(&r),
            [
                r#"a/bad: annotation rollback-watchdog.io/failure-threshold: "0" is not a whole number from 1 to 1000; the annotation is ignored"#,
                r#"a/bad: annotation rollback-watchdog.io/paused: "yes" is not "true" or "false"; treated as "true" (the safe side) until it is corrected"#,
                r#"a/bad: annotation rollback-watchdog.io/watch-window: "soon" is not a duration like "15m" or "1h30m"; the annotation is ignored"#,
            ]
        );
    }

    #[test]
    fn an_override_window_too_short_to_ever_turn_bad_is_refused() {
        let c = config(
            "[watchdog]\ninterval = \"15s\"\n[[targets]]\nnamespace = \"a\"\nname = \"web\"\n",
        );
        let r = resolve(
            &c,
            &snapshot(vec![deployment(
                "a",
                "web",
                json!({}),
                json!({WATCH_WINDOW: "30s"}),
            )]),
        );
        assert_eq!(
            r.targets[0].policy.watch_window,
            c.targets[0].policy.watch_window
        );
        assert_eq!(
            texts(&r),
            [
                r#"a/web: annotation rollback-watchdog.io/watch-window: "30s" leaves a window of 30s for failure_threshold (3) x watchdog.interval (15s) = 45s; no revision could turn Bad inside it; the annotation is ignored"#
            ]
        );
    }

    #[test]
    fn annotations_cannot_lift_a_configured_dry_run_or_pause() {
        let c = config("[watchdog]\ndry_run = true\npaused = true\n[[targets]]\nnamespace = \"a\"\nname = \"web\"\n");
        let r = resolve(
            &c,
            &snapshot(vec![deployment(
                "a",
                "web",
                json!({}),
                json!({DRY_RUN: "false", PAUSED: "false"}),
            )]),
        );
        assert!(r.targets[0].policy.dry_run);
        assert!(r.targets[0].policy.paused);
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn watch_window_bounds() {
        assert!(parse_watch_window("0s").is_err());
        assert!(parse_watch_window("8days").is_err());
        assert_eq!(
            parse_watch_window(" 1h ").ok(),
            Some(Duration::from_secs(3600))
        );
        assert!(parse_failure_threshold("-1").is_err());
        assert!(parse_failure_threshold("1001").is_err());
        assert_eq!(parse_failure_threshold("3").ok(), Some(3));
    }
}

//! Why a rollback is not carried out, as a type: the Deployment is not
//! there, the cluster could not be read, or a rule of the plan said no.
//! The sentences go verbatim to the audit log, the Event on the Deployment
//! and the notifications: each names the target and what to do, and must
//! never change by accident (the notification snapshots compare them).

use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;

use super::words::describe_ref;
use crate::k8s::keys::{BLOCKLIST, IN_FLIGHT, IRREVERSIBLE, PAUSED};
use crate::report::incident::RevisionRef;

/// A verdict's rollback whose Validate cannot read the cluster is tried
/// again at every tick; the failure that makes it this many in a row is
/// told to on-call (`rollback_failed`, once), so a Bad revision left in
/// place because the API server is unreadable is never silent.
pub const READ_FAILURES_TOLD_AFTER: u32 = 3;

/// Why Validate said no.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// There is no such Deployment.
    NotFound { target: String, namespace: String },
    /// Reading the cluster failed; the error's sentence.
    ReadFailed { error: String },
    /// A rule said no, judged on this Deployment.
    Rule {
        rule: Rule,
        deployment: Box<Deployment>,
    },
}

impl Refusal {
    pub fn judged(rule: Rule, deployment: &Deployment) -> Self {
        Refusal::Rule {
            rule,
            deployment: Box::new(deployment.clone()),
        }
    }

    /// An error reading the cluster rather than a rule saying no.
    pub fn is_read_failure(&self) -> bool {
        matches!(self, Refusal::ReadFailed { .. })
    }

    /// The Deployment the rule was judged on (None when it was not read).
    pub fn deployment(&self) -> Option<&Deployment> {
        match self {
            Refusal::Rule { deployment, .. } => Some(deployment),
            _ => None,
        }
    }

    pub fn rule(&self) -> Option<&Rule> {
        match self {
            Refusal::Rule { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NotFound { target, namespace } => write!(
                f,
                "{target}: Deployment not found; check the namespace and name (kubectl get deploy -n {namespace})"
            ),
            Refusal::ReadFailed { error } => f.write_str(error),
            Refusal::Rule { rule, .. } => rule.fmt(f),
        }
    }
}

/// A rule of the plan that says no, with what its sentence names.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// The Deployment carries an in-flight record.
    InFlight {
        target: String,
        started: String,
        to: RevisionRef,
    },
    /// It carries an in-flight annotation that is not a record.
    InFlightUnreadable { target: String },
    /// This process is rolling it back right now.
    RunningHere { target: String },
    /// `spec.paused`.
    PausedRollout { namespace: String, name: String },
    /// The watchdog's `paused` annotation.
    PausedByAnnotation { target: String },
    /// `paused = true` in its policy.
    PausedByConfig { target: String },
    /// Argo CD or Flux would undo the rollback, and `allow_gitops` is off.
    Gitops { target: String, tool: String },
    /// No current revision yet.
    RolloutPending { target: String, why: String },
    /// The verdict was about another revision than the current one.
    ChangedSinceVerdict {
        target: String,
        judged: String,
        current: i64,
        current_hash: String,
    },
    /// The current revision is marked irreversible.
    Irreversible { target: String, revision: i64 },
    /// The last rollback is less than `cooldown` ago.
    Cooldown {
        target: String,
        last: Timestamp,
        cooldown: Duration,
        until: Timestamp,
    },
    /// `max_rollbacks_per_window` is used up.
    Budget {
        target: String,
        recent: usize,
        window: Duration,
        max: u32,
    },
    /// The asked revision number is not among the owned revisions.
    RevisionNotFound {
        target: String,
        revision: i64,
        revisions: Vec<i64>,
    },
    /// The asked revision is the current one.
    RevisionIsCurrent { target: String, revision: i64 },
    /// The asked revision is blocklisted.
    RevisionBlocklisted {
        target: String,
        revision: i64,
        /// The blocklist entry's reason and time.
        reason: String,
        at: String,
    },
    /// There are older revisions, and every one is blocklisted.
    AllOlderBlocklisted { target: String },
    /// There is no older revision.
    NoOlderRevision { target: String },
    /// The current revision brings back an older template (a person's
    /// undo) and every other revision is a newer template or was deployed
    /// after it: none is a rollback target.
    NoOlderTemplate {
        target: String,
        revision: i64,
        first_deployed: i64,
    },
    /// The chosen revision's ReplicaSet has no pod template.
    NoRevisionTemplate {
        target: String,
        revision: i64,
        replica_set: String,
    },
    /// The chosen revision's template is the current template.
    SameTemplate { target: String, revision: i64 },
    /// The asked tag is not an image tag.
    BadTag { tag: String },
    /// The Deployment has no pod template.
    NoPodTemplate { target: String },
    /// Its pod template has no pod spec.
    NoPodSpec { target: String },
    /// The named container does not exist.
    NoSuchContainer {
        target: String,
        container: String,
        containers: Vec<String>,
    },
    /// No container was named and there are several.
    WhichContainer {
        target: String,
        containers: Vec<String>,
    },
    /// The container already runs the asked image.
    AlreadyRuns {
        target: String,
        container: String,
        image: String,
    },
    /// The asked image's template is blocklisted.
    ImageBlocklisted {
        target: String,
        image: String,
        /// The blocklist entry's reason and time.
        reason: String,
        at: String,
    },
    /// The backup's template is the current template.
    SameTemplateAsBackup { target: String, backup: String },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::InFlight { target, started, to } => write!(
                f,
                "a rollback of {target} is already in flight (started {started}, to {}); it resumes at Wait/Verify, wait for it to finish",
                describe_ref(to)
            ),
            Rule::InFlightUnreadable { target } => write!(
                f,
                "{target} carries an unreadable {IN_FLIGHT} record; a rollback may be in flight: remove the annotation once you checked"
            ),
            Rule::RunningHere { target } => write!(
                f,
                "a rollback of {target} is already running in this watchdog"
            ),
            Rule::PausedRollout { namespace, name } => write!(
                f,
                "{namespace}/{name} is paused (spec.paused); resume it with `kubectl rollout resume deployment/{name} -n {namespace}` first"
            ),
            Rule::PausedByAnnotation { target } => write!(
                f,
                "{target} carries {PAUSED}: \"true\"; the watchdog takes no action on it"
            ),
            Rule::PausedByConfig { target } => write!(
                f,
                "the watchdog is paused for {target} (paused = true in the config); it takes no action"
            ),
            Rule::Gitops { target, tool } => write!(
                f,
                "{target} is managed by {tool}: a sync would undo the rollback; roll back in Git, or set allow_gitops = true for this target"
            ),
            Rule::RolloutPending { target, why } => write!(
                f,
                "{target}: the current revision is not known yet ({why}); try again when the rollout has started"
            ),
            Rule::ChangedSinceVerdict { target, judged, current, current_hash } => write!(
                f,
                "{target} changed since the verdict: the bad revision was {judged}, the current one is revision {current} ({current_hash}); someone deployed meanwhile, so nothing is rolled back"
            ),
            Rule::Irreversible { target, revision } => write!(
                f,
                "revision {revision} of {target} is marked {IRREVERSIBLE}: \"true\" (e.g. a schema migration); the watchdog only alerts, roll forward by hand"
            ),
            Rule::Cooldown { target, last, cooldown, until } => write!(
                f,
                "{target} was rolled back at {last}; the cooldown ({}) forbids another rollback until {until}",
                humantime::format_duration(*cooldown)
            ),
            Rule::Budget { target, recent, window, max } => write!(
                f,
                "{target} was rolled back {recent} time(s) in the last {}; max_rollbacks_per_window = {max} forbids another",
                humantime::format_duration(*window)
            ),
            Rule::RevisionNotFound { target, revision, revisions } => write!(
                f,
                "revision {revision} of {target} not found (revisions: {}); see `rollback-watchdog history {target}`",
                revisions.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
            ),
            Rule::RevisionIsCurrent { target, revision } => write!(
                f,
                "skipped rollback: revision {revision} is the current revision of {target}"
            ),
            Rule::RevisionBlocklisted {
                target,
                revision,
                reason,
                at,
            } => write!(
                f,
                "revision {revision} of {target} is blocklisted ({reason}, rolled back at {at}); remove it from {BLOCKLIST} to use it"
            ),
            Rule::AllOlderBlocklisted { target } => write!(
                f,
                "no revision of {target} to roll back to: every older revision is blocklisted"
            ),
            Rule::NoOlderRevision { target } => write!(
                f,
                "no revision of {target} to roll back to: it has no older revision"
            ),
            Rule::NoOlderTemplate {
                target,
                revision,
                first_deployed,
            } => write!(
                f,
                "no revision of {target} to roll back to: revision {revision} brings back the template first deployed as revision {first_deployed}, and every other revision is newer or was deployed after it"
            ),
            Rule::NoRevisionTemplate { target, revision, replica_set } => write!(
                f,
                "revision {revision} of {target} (ReplicaSet {replica_set}) has no pod template"
            ),
            Rule::SameTemplate { target, revision } => write!(
                f,
                "skipped rollback: revision {revision}'s template is the current template of {target}"
            ),
            Rule::BadTag { tag } => write!(
                f,
                "{tag:?} is not an image tag like v1.2.3 (letters, digits, _ . -, at most 128)"
            ),
            Rule::NoPodTemplate { target } => write!(f, "{target} has no pod template"),
            Rule::NoPodSpec { target } => write!(f, "{target} has no pod spec"),
            Rule::NoSuchContainer { target, container, containers } => write!(
                f,
                "{target} has no container {container:?} (containers: {})",
                containers.join(", ")
            ),
            Rule::WhichContainer { target, containers } => write!(
                f,
                "{target} has {} containers ({}); name one with --container",
                containers.len(),
                containers.join(", ")
            ),
            Rule::AlreadyRuns { target, container, image } => write!(
                f,
                "skipped rollback: container {container} of {target} already runs {image}"
            ),
            Rule::ImageBlocklisted {
                target,
                image,
                reason,
                at,
            } => write!(
                f,
                "{image} is blocklisted on {target} ({reason}, rolled back at {at})"
            ),
            Rule::SameTemplateAsBackup { target, backup } => write!(
                f,
                "skipped restore: the template in backup {backup} is the current template of {target}"
            ),
        }
    }
}

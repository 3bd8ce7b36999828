//! Revisions and observation windows of watched Deployments, from the
//! caches: which ReplicaSet is the current revision and which came before
//! it, when the rollout started, the pods of the revision, whether its
//! window is open, and which revision is known-good. Everything here is a
//! function of cached objects and `now`, except [`record_known_good`],
//! the one write: a merge patch of one annotation on the Deployment.
//! It must never record a revision as known-good before its window closed
//! with the rollout complete, and never guess a revision it cannot see.
//!
//! How the facts are found:
//! - current revision: the ReplicaSet controlled by the Deployment (by
//!   ownerReference uid) whose pod template equals the Deployment's, hash
//!   label aside; if none does and the deployment controller has observed
//!   the latest spec (a paused Deployment), the one whose revision the
//!   Deployment's `deployment.kubernetes.io/revision` names. Otherwise the
//!   rollout is pending and nothing is judged.
//! - previous revision (the baseline): the highest older revision. When
//!   it started serving ([`BaselineRevision::since`], so its baseline
//!   window never reaches back before it): the switch to it as this
//!   process saw it (the [`Tracker`]'s record of the revision current
//!   before the last switch); else its ReplicaSet's creation if that was
//!   not reused; else the creation of its oldest pod still there; else
//!   unknown (the baseline then looks back the whole `baseline_lookback`).
//! - rollout start: the ReplicaSet's `creationTimestamp` for a new one. A
//!   reused ReplicaSet (`kubectl rollout undo`, which gives it revision
//!   max+1 and a `revision-history` annotation) keeps its old creation
//!   time, so the [`Tracker`] remembers when it saw the switch. A watchdog
//!   that starts after the switch estimates it as the creation of the
//!   oldest pod of the revision (those pods were started by the switch),
//!   or now when it has none, and says so in [`TargetState::started_estimated`].
//! - window: from the rollout start until `watch_window` after the rollout
//!   completed, so a slow or paused rollout is judged at full traffic too.
//!   While the rollout is in progress, or paused (`spec.paused`) before
//!   it completed, the window has no end; a resumed rollout completes
//!   later and its window runs from then. A rollout past its progress
//!   deadline will not complete: its window closes `watch_window` after
//!   its start. Completion is "fully rolled out" (see
//!   [`fully_rolled_out`]) for the current revision, remembered by the
//!   [`Tracker`] (in memory) at the time the controller recorded it (the
//!   `Progressing` condition `NewReplicaSetAvailable` naming the
//!   revision's ReplicaSet, its `lastUpdateTime`), else at the tick that
//!   saw it. A watchdog that first sees a revision already complete takes
//!   that condition; without it, the rollout start (an estimate that never
//!   reopens an old revision's window). Completion is never taken back: a
//!   later scale-up or pause of a complete rollout does not reopen it.
//! - rollback targets ([`rollback_candidates`]): older templates only. A
//!   template's age is the revision it was first deployed as (the lowest
//!   of its number and its `revision-history`); a target must be older,
//!   and must not be a revision the Deployment moved to after the current
//!   template's previous deploy (the one a person's undo left), unless the
//!   current template is blocklisted (a bad re-deploy goes back past it).
//! - known-good: the annotation [`KNOWN_GOOD`] on the Deployment, JSON:
//!   `{"revision":3,"podTemplateHash":"5d8f7c","images":["web:v3"],"at":"2026-11-27T10:15:00Z"}`.
//!   A revision is due to be recorded once its window has closed, the
//!   rollout is complete and the record does not name it already. Start-up
//!   adoption is the same rule: a fully rolled-out Deployment whose
//!   revision started more than `watch_window` ago is due at once, a
//!   younger one keeps its window for the remaining time.

use crate::k8s::keys::{FIELD_MANAGER, KNOWN_GOOD, POD_TEMPLATE_HASH, REVISION, REVISION_HISTORY};
use crate::observe::blocklist::{self, Entry};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observe::cache::Snapshot;
use crate::observe::targets::WatchedDeployment;
use crate::signals::pods::is_ready;
use crate::signals::{BaselineRevision, ServingRevision, Subject};

/// How long the known-good patch may take.
pub const PATCH_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("annotation {KNOWN_GOOD} on {namespace}/{name} is not a known-good record ({source}); it is ignored until the next revision is recorded")]
    BadKnownGood {
        namespace: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot record revision {revision} of {namespace}/{name} as known-good: {source}")]
    Patch {
        namespace: String,
        name: String,
        revision: i64,
        #[source]
        source: kube::Error,
    },
    #[error("cannot record revision {revision} of {namespace}/{name} as known-good: the API server did not answer within {PATCH_TIMEOUT:?}")]
    PatchTimeout {
        namespace: String,
        name: String,
        revision: i64,
    },
    #[error("cannot encode the known-good record: {0}")]
    Encode(#[source] serde_json::Error),
}

/// One revision of a Deployment: a ReplicaSet it controls.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    pub number: i64,
    pub pod_template_hash: String,
    pub replica_set: String,
    #[serde(skip)]
    pub replica_set_uid: String,
    /// Container images of its pod template, in order.
    pub images: Vec<String>,
    #[serde(skip)]
    pub created: Option<jiff::Timestamp>,
    /// The ReplicaSet was brought back by a rollback (`revision-history`).
    pub reused: bool,
    /// The revision numbers its template had before, oldest first (its
    /// `revision-history`): when it was deployed before.
    #[serde(skip)]
    pub history: Vec<i64>,
}

impl Revision {
    /// The revision a ReplicaSet stands for; None without a usable revision
    /// number (not made by a deployment controller).
    pub fn of(rs: &ReplicaSet) -> Option<Revision> {
        let number = revision_number(rs)?;
        let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
        let pod_template_hash = rs
            .labels()
            .get(POD_TEMPLATE_HASH)
            .or_else(|| {
                template
                    .and_then(|t| t.metadata.as_ref())
                    .and_then(|m| m.labels.as_ref())
                    .and_then(|l| l.get(POD_TEMPLATE_HASH))
            })?
            .clone();
        Some(Revision {
            number,
            pod_template_hash,
            replica_set: rs.name_any(),
            replica_set_uid: rs.uid().unwrap_or_default(),
            images: template.map(images).unwrap_or_default(),
            created: rs
                .creation_timestamp()
                .and_then(|t| t.0.to_string().parse().ok()),
            reused: rs
                .annotations()
                .get(REVISION_HISTORY)
                .is_some_and(|h| !h.trim().is_empty()),
            history: rs
                .annotations()
                .get(REVISION_HISTORY)
                .map(|h| revision_history(h))
                .unwrap_or_default(),
        })
    }

    /// The revision its template was first deployed as: how old the
    /// template is, whatever undo or re-deploy brought it back since.
    pub fn first_deployed(&self) -> i64 {
        self.history
            .iter()
            .copied()
            .chain([self.number])
            .min()
            .unwrap_or(self.number)
    }

    /// The revision its template was deployed as before the current one
    /// (itself when it was never deployed before).
    pub fn deployed_before(&self) -> i64 {
        self.history
            .iter()
            .copied()
            .filter(|n| *n < self.number)
            .max()
            .unwrap_or(self.number)
    }

    /// Whether a rollback of `current` may restore this revision: an older
    /// template (first deployed before the current one was), and not one
    /// the Deployment moved to after the current template's previous
    /// deploy (a person's undo left it), unless the current template is
    /// blocklisted: a re-deploy of a template already judged bad goes back
    /// to the older template it replaced.
    pub fn may_replace(&self, current: &Revision, current_blocklisted: bool) -> bool {
        self.number != current.number
            && self.pod_template_hash != current.pod_template_hash
            && self.first_deployed() < current.first_deployed()
            && (self.number < current.deployed_before() || current_blocklisted)
    }

    pub fn baseline(&self) -> BaselineRevision {
        BaselineRevision {
            revision: self.number,
            pod_template_hash: self.pod_template_hash.clone(),
            since: None,
        }
    }
}

/// `deployment.kubernetes.io/revision-history`: `"1,4"`, oldest first;
/// unreadable entries are skipped.
fn revision_history(h: &str) -> Vec<i64> {
    let mut numbers: Vec<i64> = h
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|n: &i64| *n > 0)
        .collect();
    numbers.sort_unstable();
    numbers
}

fn revision_number(obj: &impl ResourceExt) -> Option<i64> {
    obj.annotations()
        .get(REVISION)
        .and_then(|r| r.trim().parse().ok())
        .filter(|n: &i64| *n > 0)
}

/// The image of the Deployment's first container ("" when it has none):
/// the one `kubectl set image` usually changes, for progress lines.
pub fn first_image(d: &Deployment) -> String {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// The images of a pod template, container by container.
pub fn images(t: &PodTemplateSpec) -> Vec<String> {
    t.spec
        .as_ref()
        .map(|s| {
            s.containers
                .iter()
                .map(|c| c.image.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

/// The current and previous revision of a Deployment, or why there is no
/// current one yet.
// One per target per tick and nearly always `Known`: boxing would only
// add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    Known {
        current: Revision,
        previous: Option<Revision>,
    },
    /// The deployment controller has not made (or named) the ReplicaSet of
    /// the current template yet.
    Pending { why: String },
}

/// The revisions of the ReplicaSets `d` controls (by owner uid; others are
/// ignored), with their ReplicaSets, oldest first.
pub fn owned_revisions<'a>(
    d: &Deployment,
    replicasets: &'a [Arc<ReplicaSet>],
) -> Vec<(Revision, &'a ReplicaSet)> {
    let uid = d.uid().unwrap_or_default();
    let mut owned: Vec<(Revision, &ReplicaSet)> = replicasets
        .iter()
        .filter(|rs| {
            rs.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == uid)
        })
        .filter_map(|rs| Revision::of(rs).map(|r| (r, rs.as_ref())))
        .collect();
    owned.sort_by_key(|(r, _)| r.number);
    owned
}

/// The revisions a rollback of `current` may restore, newest first: those
/// [`Revision::may_replace`] allows and no blocklist entry blocks. Shared
/// by the plan (which restores the first, or the known-good one among
/// them) and the run loop (which escalates when there is none after a
/// person brought an older template back).
pub fn rollback_candidates<'a, 'r>(
    current: &Revision,
    owned: &'a [(Revision, &'r ReplicaSet)],
    blocked: &[Entry],
) -> Vec<&'a (Revision, &'r ReplicaSet)> {
    let is_blocked = |r: &Revision| {
        blocked
            .iter()
            .any(|e| e.matches(&r.pod_template_hash, &r.images))
    };
    let current_blocklisted = is_blocked(current);
    owned
        .iter()
        .rev()
        .filter(|(r, _)| r.may_replace(current, current_blocklisted) && !is_blocked(r))
        .collect()
}

/// Finds the current and previous revision among the ReplicaSets the
/// Deployment controls (others are ignored).
pub fn rollout(deployment: &Deployment, replicasets: &[Arc<ReplicaSet>]) -> Rollout {
    let owned = owned_revisions(deployment, replicasets);
    if owned.is_empty() {
        return Rollout::Pending {
            why: "the Deployment has no ReplicaSet yet".into(),
        };
    }
    let wanted = deployment
        .spec
        .as_ref()
        .map(|s| template_without_hash(&s.template));
    let by_template = owned.iter().rposition(|(_, rs)| {
        let t = rs
            .spec
            .as_ref()
            .and_then(|s| s.template.as_ref())
            .map(template_without_hash);
        t.is_some() && t == wanted
    });
    let observed = deployment
        .status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .unwrap_or(0)
        >= deployment.metadata.generation.unwrap_or(0);
    let by_annotation = || {
        let named = revision_number(deployment)?;
        owned.iter().position(|(r, _)| r.number == named)
    };
    let index = match by_template {
        Some(i) => i,
        None if observed => match by_annotation() {
            Some(i) => i,
            None => {
                return Rollout::Pending {
                    why: "no ReplicaSet matches the Deployment's template or revision".into(),
                }
            }
        },
        None => return Rollout::Pending {
            why: "the deployment controller has not created the ReplicaSet of the new template yet"
                .into(),
        },
    };
    let current = owned[index].0.clone();
    let previous = owned
        .iter()
        .filter(|(r, _)| r.number < current.number)
        .map(|(r, _)| r.clone())
        .next_back();
    Rollout::Known { current, previous }
}

/// A pod template without its `pod-template-hash` label, with nulls and
/// empty objects and lists dropped: the form two templates are compared in
/// (the API server stores a Deployment's and its ReplicaSet's templates
/// with the same defaults, and only the hash label differs).
pub fn template_without_hash(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    normal_form(&v).unwrap_or(Value::Null)
}

fn normal_form(value: &Value) -> Option<Value> {
    match value {
        Value::Null => None,
        Value::Object(map) => {
            let kept: serde_json::Map<String, Value> = map
                .iter()
                .filter_map(|(k, v)| normal_form(v).map(|v| (k.clone(), v)))
                .collect();
            (!kept.is_empty()).then_some(Value::Object(kept))
        }
        Value::Array(items) => {
            let kept: Vec<Value> = items
                .iter()
                .map(|v| normal_form(v).unwrap_or(Value::Null))
                .collect();
            (!kept.is_empty()).then_some(Value::Array(kept))
        }
        other => Some(other.clone()),
    }
}

/// `kubectl rollout status` would say done: the controller observed the
/// latest spec and every desired replica is updated and available, with no
/// old replica left.
pub fn fully_rolled_out(d: &Deployment) -> bool {
    let (Some(spec), Some(status)) = (d.spec.as_ref(), d.status.as_ref()) else {
        return false;
    };
    let want = spec.replicas.unwrap_or(1);
    status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && status.updated_replicas.unwrap_or(0) == want
        && status.available_replicas.unwrap_or(0) >= want
        && status.replicas.unwrap_or(0) == want
}

/// The Deployment reports `Progressing=False`, reason `ProgressDeadlineExceeded`.
pub fn progress_deadline_exceeded(d: &Deployment) -> bool {
    d.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            })
        })
}

/// The Deployment's `spec.paused` (`kubectl rollout pause`).
pub fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused) == Some(true)
}

/// Whether `current`'s rollout is over: the Deployment is fully rolled out
/// ([`fully_rolled_out`]), or its template is not `current`'s any more
/// while the controller has not made a ReplicaSet for it (a template
/// changed under a pause): `current` is then all that runs and will run.
fn rolled_out_for(d: &Deployment, snapshot: &Snapshot, current: &Revision) -> bool {
    if fully_rolled_out(d) {
        return true;
    }
    let wanted = d.spec.as_ref().map(|s| template_without_hash(&s.template));
    let ours = snapshot
        .replicasets_of(&d.uid().unwrap_or_default())
        .iter()
        .find(|rs| rs.uid().as_deref() == Some(current.replica_set_uid.as_str()))
        .and_then(|rs| {
            rs.spec
                .as_ref()?
                .template
                .as_ref()
                .map(template_without_hash)
        });
    ours.is_some() && wanted.is_some() && ours != wanted
}

/// When the controller recorded `current`'s rollout complete: the
/// `Progressing` condition with reason `NewReplicaSetAvailable`, whose
/// message names `current`'s ReplicaSet, at its `lastUpdateTime` (the
/// controller leaves it alone while the reason stays).
pub fn completion_condition(d: &Deployment, current: &Revision) -> Option<jiff::Timestamp> {
    let named = format!("\"{}\"", current.replica_set);
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "True"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable")
                && c.message.as_deref().is_some_and(|m| m.contains(&named))
        })
        .and_then(|c| c.last_update_time.as_ref())
        .and_then(|t| t.0.to_string().parse().ok())
}

/// The pods of a revision: carrying its hash and controlled by its ReplicaSet.
pub fn pods_of(snapshot: &Snapshot, namespace: &str, revision: &Revision) -> Vec<Arc<Pod>> {
    snapshot
        .pods_with_hash(namespace, &revision.pod_template_hash)
        .iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && o.uid == revision.replica_set_uid)
        })
        .cloned()
        .collect()
}

/// The Deployment's revisions other than `current` that have Ready pods
/// (not being deleted) now, newest first: what a Service selecting the
/// Deployment's pods may still route to.
pub fn serving_others(
    d: &Deployment,
    snapshot: &Snapshot,
    namespace: &str,
    current: &Revision,
) -> Vec<ServingRevision> {
    let mut out: Vec<ServingRevision> =
        owned_revisions(d, snapshot.replicasets_of(&d.uid().unwrap_or_default()))
            .into_iter()
            .filter(|(r, _)| r.pod_template_hash != current.pod_template_hash)
            .filter_map(|(r, _)| {
                let ready = pods_of(snapshot, namespace, &r)
                    .iter()
                    .filter(|p| is_ready(p))
                    .count();
                (ready > 0).then(|| ServingRevision {
                    revision: r.number,
                    pod_template_hash: r.pod_template_hash.clone(),
                    ready_pods: u32::try_from(ready).unwrap_or(u32::MAX),
                })
            })
            .collect();
    out.reverse();
    out
}

/// The known-good record kept in the [`KNOWN_GOOD`] annotation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KnownGood {
    pub revision: i64,
    pub pod_template_hash: String,
    #[serde(default)]
    pub images: Vec<String>,
    /// When it was recorded, RFC 3339.
    pub at: String,
}

impl KnownGood {
    pub fn names(&self, revision: &Revision) -> bool {
        self.revision == revision.number && self.pod_template_hash == revision.pod_template_hash
    }
}

/// The record on a Deployment: None without the annotation, an error when
/// it does not parse (report it; treat as no record).
pub fn known_good_of(d: &Deployment) -> Result<Option<KnownGood>, RevisionError> {
    let Some(text) = d.annotations().get(KNOWN_GOOD) else {
        return Ok(None);
    };
    serde_json::from_str(text)
        .map(Some)
        .map_err(|source| RevisionError::BadKnownGood {
            namespace: d.namespace().unwrap_or_default(),
            name: d.name_any(),
            source,
        })
}

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

/// A watched Deployment's revision state on one tick.
#[derive(Debug, Clone)]
pub struct TargetState {
    pub namespace: String,
    pub deployment: String,
    pub uid: String,
    /// When this state was computed: what `in_window` and `remaining` mean.
    pub now: jiff::Timestamp,
    /// The current and previous revision, or why they are not known.
    pub rollout: Rollout,
    /// When the Deployment switched to the current revision.
    pub rollout_started: Option<jiff::Timestamp>,
    /// `rollout_started` is an estimate (a reused ReplicaSet first seen
    /// after the switch).
    pub started_estimated: bool,
    pub window: Option<Window>,
    /// The Deployment's `spec.paused`.
    pub paused: bool,
    /// The record on the Deployment (or the one this process just wrote,
    /// until the cache shows it).
    pub known_good: Option<KnownGood>,
    pub fully_rolled_out: bool,
    pub progress_deadline_exceeded: bool,
    /// Pods of the current revision.
    pub pods: Vec<Arc<Pod>>,
    /// Other revisions with Ready pods now, newest first.
    pub serving_others: Vec<ServingRevision>,
    /// When the pod watch was last known live, while it is not (None:
    /// live): the evidence time of `pods`.
    pub pods_seen_at: Option<jiff::Timestamp>,
    /// When the previous revision started serving, if known (see the
    /// module doc for how it is found).
    pub previous_since: Option<jiff::Timestamp>,
    /// Problems to report (a malformed known-good record).
    pub warnings: Vec<String>,
    /// The newest revision a rollback of the current one may restore
    /// ([`rollback_candidates`]); None when there is none.
    pub older_target: Option<i64>,
}

impl TargetState {
    pub fn current(&self) -> Option<&Revision> {
        match &self.rollout {
            Rollout::Known { current, .. } => Some(current),
            Rollout::Pending { .. } => None,
        }
    }

    pub fn previous(&self) -> Option<&Revision> {
        match &self.rollout {
            Rollout::Known { previous, .. } => previous.as_ref(),
            Rollout::Pending { .. } => None,
        }
    }

    /// Whether the current revision's observation window is open.
    pub fn in_window(&self) -> bool {
        self.window.is_some_and(|w| w.is_open(self.now))
    }

    /// Time left in the window; None without a window or while it has no
    /// end yet (the rollout is in progress or paused), zero once closed.
    pub fn remaining(&self) -> Option<Duration> {
        self.window.and_then(|w| w.remaining(self.now))
    }

    /// Whether the current revision is the recorded known-good one.
    pub fn current_is_known_good(&self) -> bool {
        match (self.current(), &self.known_good) {
            (Some(cur), Some(kg)) => kg.names(cur),
            _ => false,
        }
    }

    /// Whether the current template is the recorded known-good one, under
    /// any revision number: `rollout undo` brings a template back as a new
    /// revision.
    pub fn current_template_is_known_good(&self) -> bool {
        match (self.current(), &self.known_good) {
            (Some(cur), Some(kg)) => kg.pod_template_hash == cur.pod_template_hash,
            _ => false,
        }
    }

    /// What the signals judge this tick; None while the rollout is pending.
    pub fn subject(&self) -> Option<Subject> {
        let current = self.current()?;
        Some(Subject {
            namespace: self.namespace.clone(),
            deployment: self.deployment.clone(),
            revision: current.number,
            pod_template_hash: current.pod_template_hash.clone(),
            images: current.images.clone(),
            rollout_started: self.rollout_started?,
            baseline: self.previous().map(|p| BaselineRevision {
                since: self.previous_since,
                ..p.baseline()
            }),
            pods: self.pods.iter().map(|p| Pod::clone(p)).collect(),
            progress_deadline_exceeded: self.progress_deadline_exceeded,
            serving_others: self.serving_others.clone(),
            counted_until: Default::default(),
            pod_history: Default::default(),
            pods_seen_at: self.pods_seen_at,
        })
    }

    /// The record to write now, if the current revision has earned it: its
    /// window has closed, the rollout is complete and not past its
    /// deadline, and the record does not name it yet. The run loop must
    /// not write it for a revision judged Bad in its window.
    pub fn known_good_due(&self) -> Option<KnownGood> {
        let current = self.current()?;
        let closed = self.window.is_some_and(|w| !w.is_open(self.now));
        if !closed || !self.fully_rolled_out || self.progress_deadline_exceeded {
            return None;
        }
        if self.current_is_known_good() {
            return None;
        }
        Some(KnownGood {
            revision: current.number,
            pod_template_hash: current.pod_template_hash.clone(),
            images: current.images.clone(),
            at: self
                .now
                .round(jiff::Unit::Second)
                .unwrap_or(self.now)
                .to_string(),
        })
    }
}

/// When a revision was first seen as current, kept in memory because a
/// reused ReplicaSet does not carry the time of the switch.
#[derive(Debug, Clone)]
struct Seen {
    number: i64,
    hash: String,
    started: jiff::Timestamp,
    estimated: bool,
    /// When its rollout completed, and whether that is an estimate.
    completed: Option<(jiff::Timestamp, bool)>,
    /// This process saw its rollout under way (not complete) on a tick.
    rolling: bool,
}

/// The in-memory part of revision tracking: when each Deployment switched
/// revision, when that rollout completed, and which known-good records
/// this process wrote. One per process; losing it (a restart) only turns
/// exact switch and completion times into estimates.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<String, Seen>,
    /// Per Deployment, the revision that was current before the last
    /// switch this process saw: when it started is its baseline's start.
    before: HashMap<String, Seen>,
    written: HashMap<String, KnownGood>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of one watched Deployment at `now`, from the snapshot.
    pub fn observe(
        &mut self,
        target: &WatchedDeployment,
        snapshot: &Snapshot,
        now: jiff::Timestamp,
    ) -> TargetState {
        let d = &target.deployment;
        let uid = target.uid();
        let rollout = rollout(d, snapshot.replicasets_of(&uid));
        let mut warnings = Vec::new();
        let mut known_good = match known_good_of(d) {
            Ok(kg) => kg,
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        };
        // A record this process wrote counts until the cache catches up.
        if let Some(written) = self.written.get(&uid) {
            if known_good.as_ref() == Some(written) {
                self.written.remove(&uid);
            } else if known_good
                .as_ref()
                .is_none_or(|kg| kg.revision <= written.revision)
            {
                known_good = Some(written.clone());
            }
        }
        let (pods, rollout_started, started_estimated, window) = match &rollout {
            Rollout::Known { current, .. } => {
                let pods = pods_of(snapshot, &target.namespace, current);
                let seen = self.switch_time(&uid, current, &pods, now);
                let window =
                    self.window(&uid, d, snapshot, current, target.policy.watch_window, now);
                (pods, Some(seen.started), seen.estimated, window)
            }
            Rollout::Pending { .. } => (Vec::new(), None, false, None),
        };
        let serving_others = match &rollout {
            Rollout::Known { current, .. } => {
                serving_others(d, snapshot, &target.namespace, current)
            }
            Rollout::Pending { .. } => Vec::new(),
        };
        let older_target = match &rollout {
            Rollout::Known { current, .. } => {
                let owned = owned_revisions(d, snapshot.replicasets_of(&uid));
                // A malformed blocklist is reported where a rollback reads
                // it; here it only makes the choice stricter.
                let blocked = blocklist::read(d).unwrap_or_default();
                rollback_candidates(current, &owned, &blocked)
                    .first()
                    .map(|(r, _)| r.number)
            }
            Rollout::Pending { .. } => None,
        };
        let previous_since = match &rollout {
            Rollout::Known {
                previous: Some(previous),
                ..
            } => self.previous_since(&uid, previous, snapshot, &target.namespace),
            _ => None,
        };
        TargetState {
            namespace: target.namespace.clone(),
            deployment: target.name.clone(),
            uid,
            now,
            rollout,
            rollout_started,
            started_estimated,
            window,
            paused: is_paused(d),
            known_good,
            fully_rolled_out: fully_rolled_out(d),
            progress_deadline_exceeded: progress_deadline_exceeded(d),
            serving_others,
            pods_seen_at: snapshot.pods_stalled_since(&target.namespace),
            previous_since,
            pods,
            warnings,
            older_target,
        }
    }

    /// When `previous` started serving: see the module doc.
    fn previous_since(
        &self,
        uid: &str,
        previous: &Revision,
        snapshot: &Snapshot,
        namespace: &str,
    ) -> Option<jiff::Timestamp> {
        if let Some(before) = self.before.get(uid) {
            if before.number == previous.number && before.hash == previous.pod_template_hash {
                return Some(before.started);
            }
        }
        if let (Some(created), false) = (previous.created, previous.reused) {
            return Some(created);
        }
        pods_of(snapshot, namespace, previous)
            .iter()
            .filter_map(|p| p.creation_timestamp())
            .filter_map(|t| t.0.to_string().parse::<jiff::Timestamp>().ok())
            .min()
    }

    fn switch_time(
        &mut self,
        uid: &str,
        current: &Revision,
        pods: &[Arc<Pod>],
        now: jiff::Timestamp,
    ) -> Seen {
        let previous = self.seen.get(uid);
        if let Some(p) = previous {
            if p.number == current.number && p.hash == current.pod_template_hash {
                return p.clone();
            }
            self.before.insert(uid.to_owned(), p.clone());
        }
        let previous = self.seen.get(uid);
        let seen = match (current.created, previous) {
            // A ReplicaSet made for this rollout: its creation is the start.
            (Some(created), _) if !current.reused => Seen {
                number: current.number,
                hash: current.pod_template_hash.clone(),
                started: created,
                estimated: false,
                completed: None,
                rolling: false,
            },
            // Reused, and this process saw the Deployment at another
            // revision before: the switch happened since the last tick.
            (_, Some(_)) => Seen {
                number: current.number,
                hash: current.pod_template_hash.clone(),
                started: now,
                estimated: false,
                completed: None,
                rolling: false,
            },
            // Reused, first seen now: the switch started its pods.
            _ => {
                let oldest_pod = pods
                    .iter()
                    .filter_map(|p| p.creation_timestamp())
                    .filter_map(|t| t.0.to_string().parse::<jiff::Timestamp>().ok())
                    .min();
                let started = match (oldest_pod, current.created) {
                    (Some(p), Some(c)) => p.max(c),
                    (Some(p), None) => p,
                    (None, _) => now,
                };
                Seen {
                    number: current.number,
                    hash: current.pod_template_hash.clone(),
                    started,
                    estimated: true,
                    completed: None,
                    rolling: false,
                }
            }
        };
        self.seen.insert(uid.to_owned(), seen.clone());
        seen
    }

    /// The current revision's window (see the module doc), from what
    /// [`Self::switch_time`] recorded for it this tick.
    fn window(
        &mut self,
        uid: &str,
        d: &Deployment,
        snapshot: &Snapshot,
        current: &Revision,
        length: Duration,
        now: jiff::Timestamp,
    ) -> Option<Window> {
        let complete = rolled_out_for(d, snapshot, current);
        let seen = self.seen.get_mut(uid)?;
        if seen.completed.is_none() {
            if complete {
                // The controller's record of the completion; else now when
                // this process saw the rollout under way (it completed
                // since the last tick); else, first seen complete with no
                // record, the start (the window is never reopened).
                seen.completed = Some(
                    match completion_condition(d, current).filter(|t| *t >= seen.started) {
                        Some(t) => (t, false),
                        None if seen.rolling => (now, false),
                        None => (seen.started, true),
                    },
                );
            } else {
                seen.rolling = true;
            }
        }
        let started = seen.started;
        Some(match seen.completed {
            Some((at, estimated)) => Window::closing(
                started,
                at,
                length,
                WindowWhy::AfterCompletion {
                    completed: at,
                    estimated,
                },
            ),
            None if progress_deadline_exceeded(d) => {
                Window::closing(started, started, length, WindowWhy::NeverCompleted)
            }
            None => Window {
                opened: started,
                closes: None,
                why: if is_paused(d) {
                    WindowWhy::Paused
                } else {
                    WindowWhy::InProgress
                },
            },
        })
    }

    /// Remembers a record this process wrote, so the next ticks do not
    /// write it again before the cache shows it.
    pub fn recorded(&mut self, uid: &str, known_good: KnownGood) {
        self.written.insert(uid.to_owned(), known_good);
    }

    /// Forgets Deployments no longer watched.
    pub fn retain(&mut self, live_uids: &std::collections::HashSet<String>) {
        self.seen.retain(|uid, _| live_uids.contains(uid));
        self.before.retain(|uid, _| live_uids.contains(uid));
        self.written.retain(|uid, _| live_uids.contains(uid));
    }
}

/// Writes the known-good record on the Deployment: a merge patch of this
/// one annotation, with the watchdog's field manager. The only write of
/// this module; the leader alone should call it.
pub async fn record_known_good(
    client: &Client,
    namespace: &str,
    name: &str,
    known_good: &KnownGood,
) -> Result<(), RevisionError> {
    let text = serde_json::to_string(known_good).map_err(RevisionError::Encode)?;
    let patch = serde_json::json!({"metadata": {"annotations": {KNOWN_GOOD: text}}});
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match tokio::time::timeout(
        PATCH_TIMEOUT,
        api.patch(name, &params, &Patch::Merge(&patch)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(RevisionError::Patch {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision: known_good.revision,
            source,
        }),
        Err(_) => Err(RevisionError::PatchTimeout {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            revision: known_good.revision,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loader;
    use crate::observe::targets::Source;
    use serde_json::json;

    const UID: &str = "d-uid";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("a test timestamp")
    }

    fn template(image: &str, hash: Option<&str>) -> Value {
        let mut labels = json!({"app": "web"});
        if let Some(h) = hash {
            labels[POD_TEMPLATE_HASH] = json!(h);
        }
        json!({"metadata": {"labels": labels},
               "spec": {"containers": [{"name": "app", "image": image, "resources": {}}]}})
    }

    /// A Deployment on `image`, rolled out or not, with extra annotations.
    fn deployment(image: &str, rolled_out: bool, annotations: Value) -> Deployment {
        let (updated, replicas) = if rolled_out { (3, 3) } else { (1, 4) };
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "production", "uid": UID, "generation": 4,
                         "annotations": annotations},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": template(image, None)},
            "status": {"observedGeneration": 4, "replicas": replicas, "updatedReplicas": updated,
                       "availableReplicas": 3, "readyReplicas": 3},
        }))
        .expect("a valid Deployment")
    }

    fn replicaset(
        revision: i64,
        hash: &str,
        image: &str,
        created: &str,
        history: Option<&str>,
    ) -> ReplicaSet {
        let mut annotations = json!({REVISION: revision.to_string()});
        if let Some(h) = history {
            annotations[REVISION_HISTORY] = json!(h);
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": "production",
                         "uid": format!("rs-{hash}"), "creationTimestamp": created,
                         "labels": {"app": "web", POD_TEMPLATE_HASH: hash},
                         "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": UID, "controller": true}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", POD_TEMPLATE_HASH: hash}},
                     "template": template(image, Some(hash))},
        }))
        .expect("a valid ReplicaSet")
    }

    fn pod(name: &str, hash: &str, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "production", "creationTimestamp": created,
                         "labels": {"app": "web", POD_TEMPLATE_HASH: hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("web-{hash}"), "uid": format!("rs-{hash}"),
                                              "controller": true}]},
        }))
        .expect("a valid Pod")
    }

    fn target(d: Deployment, watch_window: &str) -> WatchedDeployment {
        let mut policy = Loader::from_toml("")
            .env(Vec::<(String, String)>::new())
            .load()
            .expect("defaults load")
            .config
            .defaults;
        policy.watch_window = humantime::parse_duration(watch_window).expect("a duration");
        WatchedDeployment {
            namespace: "production".into(),
            name: "web".into(),
            source: Source::Config { index: 0 },
            policy,
            deployment: Arc::new(d),
        }
    }

    fn three_revisions() -> Vec<ReplicaSet> {
        vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(2, "bbb", "web:v2", "2026-11-27T09:00:00Z", None),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ]
    }

    #[test]
    fn a_new_rollout_opens_a_window_with_its_revision_hash_and_baseline() {
        let d = deployment("web:v3", false, json!({}));
        let snap = Snapshot::from_objects(
            [d.clone()],
            three_revisions(),
            [
                pod("web-ccc-1", "ccc", "2026-11-27T10:00:05Z"),
                pod("web-bbb-1", "bbb", "2026-11-27T09:00:05Z"),
            ],
        );
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T10:05:00Z"));
        let cur = s.current().expect("a current revision");
        assert_eq!((cur.number, cur.pod_template_hash.as_str()), (3, "ccc"));
        assert_eq!(cur.images, ["web:v3"]);
        assert_eq!(s.previous().map(|p| p.number), Some(2));
        assert!(s.in_window());
        // In progress: open with no end yet.
        assert_eq!(s.remaining(), None);
        assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::InProgress));
        assert!(
            s.known_good_due().is_none(),
            "still in its window and rolling out"
        );
        let subject = s.subject().expect("a subject");
        assert_eq!(subject.rollout_started, ts("2026-11-27T10:00:00Z"));
        assert_eq!(
            subject.baseline,
            Some(BaselineRevision {
                revision: 2,
                pod_template_hash: "bbb".into(),
                // Its own ReplicaSet's creation: it was not reused.
                since: Some(ts("2026-11-27T09:00:00Z")),
            })
        );
        assert_eq!(subject.pods.len(), 1, "only the pods of revision 3");
        assert_eq!(subject.pods[0].name_any(), "web-ccc-1");
    }

    #[test]
    fn a_closed_window_of_a_complete_rollout_is_due_as_known_good() {
        let d = deployment("web:v3", true, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T10:15:00Z"));
        assert!(!s.in_window());
        let kg = s.known_good_due().expect("due");
        assert_eq!((kg.revision, kg.pod_template_hash.as_str()), (3, "ccc"));
        assert_eq!(kg.at, "2026-11-27T10:15:00Z");
        assert_eq!(
            serde_json::to_value(&kg).expect("encodes"),
            json!({"revision": 3, "podTemplateHash": "ccc", "images": ["web:v3"], "at": "2026-11-27T10:15:00Z"})
        );
    }

    #[test]
    fn an_incomplete_rollout_keeps_its_window_open_and_is_not_known_good() {
        let d = deployment("web:v3", false, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T11:00:00Z"));
        assert!(s.in_window(), "an hour after its start, still rolling out");
        assert!(s.known_good_due().is_none());
    }

    /// `d` with its status changed by `f` (the JSON of the status).
    fn with_status(d: Deployment, f: impl FnOnce(&mut Value)) -> Deployment {
        let mut v = serde_json::to_value(&d).expect("encodes");
        f(&mut v["status"]);
        serde_json::from_value(v).expect("a valid Deployment")
    }

    fn paused(d: Deployment, paused: bool) -> Deployment {
        let mut d = d;
        if let Some(spec) = d.spec.as_mut() {
            spec.paused = Some(paused);
        }
        d
    }

    fn completed_condition(rs: &str, at: &str) -> Value {
        json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
               "message": format!("ReplicaSet \"{rs}\" has successfully progressed."),
               "lastUpdateTime": at, "lastTransitionTime": at})
    }

    /// One tick of `tracker` on `d` (revisions of [`three_revisions`]).
    fn tick(tracker: &mut Tracker, d: &Deployment, now: &str) -> TargetState {
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        tracker.observe(&target(d.clone(), "15m"), &snap, ts(now))
    }

    #[test]
    fn a_slow_rollout_keeps_its_window_until_watch_window_after_it_completed() {
        // Revision 3 started at 10:00 and takes 30 minutes to roll out.
        let mut tracker = Tracker::new();
        let rolling = deployment("web:v3", false, json!({}));
        for now in ["2026-11-27T10:05:00Z", "2026-11-27T10:20:00Z"] {
            let s = tick(&mut tracker, &rolling, now);
            assert!(s.in_window(), "{now}: in progress");
            assert_eq!(s.remaining(), None);
            assert_eq!(
                s.window.map(|w| w.describe(Duration::from_secs(900))),
                Some("rollout in progress".into())
            );
        }
        // Complete at 10:30 (no condition: the tick that saw it).
        let done = deployment("web:v3", true, json!({}));
        let s = tick(&mut tracker, &done, "2026-11-27T10:30:00Z");
        let w = s.window.expect("a window");
        assert_eq!(w.closes, Some(ts("2026-11-27T10:45:00Z")));
        assert_eq!(
            w.describe(Duration::from_secs(900)),
            "until 10:45:00, 15m after the rollout completed"
        );
        assert!(s.known_good_due().is_none());
        // Remembered: the next ticks keep that end.
        let s = tick(&mut tracker, &done, "2026-11-27T10:44:59Z");
        assert!(s.in_window());
        assert_eq!(s.remaining(), Some(Duration::from_secs(1)));
        let s = tick(&mut tracker, &done, "2026-11-27T10:45:00Z");
        assert!(!s.in_window());
        assert!(s.known_good_due().is_some());
    }

    #[test]
    fn the_controllers_completion_time_is_taken_when_it_names_the_revision() {
        let mut tracker = Tracker::new();
        tick(
            &mut tracker,
            &deployment("web:v3", false, json!({})),
            "2026-11-27T10:05:00Z",
        );
        // Seen complete at 10:40, completed at 10:31 by the condition.
        let done = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-ccc", "2026-11-27T10:31:00Z")]);
        });
        let s = tick(&mut tracker, &done, "2026-11-27T10:40:00Z");
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T10:46:00Z"))
        );
    }

    #[test]
    fn a_restarted_watchdog_estimates_the_completion_from_the_condition() {
        let done = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-ccc", "2026-11-27T10:31:00Z")]);
        });
        // First seen at 10:40: still open until 10:46.
        let s = tick(&mut Tracker::new(), &done, "2026-11-27T10:40:00Z");
        assert!(s.in_window());
        assert_eq!(s.remaining(), Some(Duration::from_secs(360)));
        assert_eq!(
            s.window.map(|w| w.why),
            Some(WindowWhy::AfterCompletion {
                completed: ts("2026-11-27T10:31:00Z"),
                estimated: false
            })
        );
        // A condition of another ReplicaSet says nothing of revision 3:
        // the start is the estimate, and an old window is not reopened.
        let other = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-bbb", "2026-11-27T10:31:00Z")]);
        });
        let s = tick(&mut Tracker::new(), &other, "2026-11-27T10:40:00Z");
        assert!(!s.in_window());
        assert_eq!(
            s.window.map(|w| w.why),
            Some(WindowWhy::AfterCompletion {
                completed: ts("2026-11-27T10:00:00Z"),
                estimated: true
            })
        );
    }

    #[test]
    fn a_paused_rollout_keeps_its_window_open_and_a_resumed_one_is_judged_again() {
        let mut tracker = Tracker::new();
        let held = paused(deployment("web:v3", false, json!({})), true);
        // Paused for two hours: open all along.
        for now in ["2026-11-27T10:05:00Z", "2026-11-27T12:00:00Z"] {
            let s = tick(&mut tracker, &held, now);
            assert!(s.in_window(), "{now}");
            assert!(s.paused);
            assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::Paused));
            assert!(s.known_good_due().is_none());
        }
        // Resumed, then complete at 12:10: open until 12:25.
        let resumed = paused(deployment("web:v3", false, json!({})), false);
        assert_eq!(
            tick(&mut tracker, &resumed, "2026-11-27T12:01:00Z")
                .window
                .map(|w| w.why),
            Some(WindowWhy::InProgress)
        );
        let done = deployment("web:v3", true, json!({}));
        let s = tick(&mut tracker, &done, "2026-11-27T12:10:00Z");
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T12:25:00Z"))
        );
        assert!(!tick(&mut tracker, &done, "2026-11-27T12:25:00Z").in_window());
    }

    #[test]
    fn a_rollout_past_its_deadline_has_the_window_of_its_start() {
        let stuck = with_status(deployment("web:v3", false, json!({})), |st| {
            st["conditions"] = json!([{"type": "Progressing", "status": "False",
                                       "reason": "ProgressDeadlineExceeded"}]);
        });
        let s = tick(&mut Tracker::new(), &stuck, "2026-11-27T10:20:00Z");
        assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::NeverCompleted));
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T10:15:00Z"))
        );
        assert!(!s.in_window());
    }

    #[test]
    fn a_template_changed_under_a_pause_does_not_reopen_the_current_window() {
        // v4 set on a paused Deployment: no ReplicaSet for it, revision 3
        // stays current (by annotation) and its rollout is over.
        let mut d = paused(deployment("web:v4", false, json!({REVISION: "3"})), true);
        d.metadata.generation = Some(4);
        let s = tick(&mut Tracker::new(), &d, "2026-11-27T12:00:00Z");
        assert_eq!(s.current().map(|c| c.number), Some(3));
        assert!(!s.in_window(), "{:?}", s.window);
    }

    #[test]
    fn an_existing_record_of_the_current_revision_is_not_written_again() {
        let kg = json!({"revision": 3, "podTemplateHash": "ccc", "images": ["web:v3"], "at": "2026-11-27T10:15:00Z"});
        let d = deployment("web:v3", true, json!({KNOWN_GOOD: kg.to_string()}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-28T00:00:00Z"));
        assert!(s.current_is_known_good());
        assert!(s.known_good_due().is_none());
    }

    #[test]
    fn a_malformed_record_is_reported_and_treated_as_none() {
        let d = deployment("web:v3", true, json!({KNOWN_GOOD: "revision 3"}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-28T00:00:00Z"));
        assert!(s.known_good.is_none());
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("is not a known-good record"),
            "{}",
            s.warnings[0]
        );
        assert!(s.known_good_due().is_some());
    }

    #[test]
    fn a_written_record_counts_until_the_cache_shows_it() {
        let d = deployment("web:v3", true, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let t = target(d, "15m");
        let mut tracker = Tracker::new();
        let now = ts("2026-11-28T00:00:00Z");
        let kg = tracker
            .observe(&t, &snap, now)
            .known_good_due()
            .expect("due");
        tracker.recorded(UID, kg);
        assert!(tracker.observe(&t, &snap, now).known_good_due().is_none());
    }

    #[test]
    fn a_template_returned_by_undo_makes_the_reused_revision_current() {
        // kubectl rollout undo of revision 3: the ReplicaSet of revision 2
        // becomes revision 4 and keeps its old creation time.
        let d = deployment("web:v2", false, json!({}));
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2")),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let snap = Snapshot::from_objects(
            [d.clone()],
            rss,
            [pod("web-bbb-9", "bbb", "2026-11-27T10:20:03Z")],
        );
        let t = target(d, "15m");
        let now = ts("2026-11-27T10:20:10Z");
        let s = Tracker::new().observe(&t, &snap, now);
        let cur = s.current().expect("current");
        assert_eq!((cur.number, cur.pod_template_hash.as_str()), (4, "bbb"));
        assert!(cur.reused);
        assert_eq!(s.previous().map(|p| p.number), Some(3));
        // First seen after the switch: estimated from its oldest pod.
        assert!(s.started_estimated);
        assert_eq!(s.rollout_started, Some(ts("2026-11-27T10:20:03Z")));
        assert!(s.in_window());
    }

    #[test]
    fn a_switch_seen_live_to_a_reused_revision_starts_its_window_then() {
        let t3 = target(deployment("web:v3", true, json!({})), "15m");
        let mut tracker = Tracker::new();
        let before = Snapshot::from_objects([(*t3.deployment).clone()], three_revisions(), []);
        tracker.observe(&t3, &before, ts("2026-11-27T12:00:00Z"));

        let t2 = target(deployment("web:v2", false, json!({})), "15m");
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2")),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let after = Snapshot::from_objects([(*t2.deployment).clone()], rss, []);
        let now = ts("2026-11-27T12:00:15Z");
        let s = tracker.observe(&t2, &after, now);
        assert_eq!(s.rollout_started, Some(now));
        assert!(!s.started_estimated);
        // And the next tick keeps that start.
        let later = tracker.observe(&t2, &after, ts("2026-11-27T12:05:00Z"));
        assert_eq!(later.rollout_started, Some(now));
    }

    #[test]
    fn the_baseline_starts_when_the_previous_revision_started_serving_even_when_reused() {
        // Revision 4 is bbb brought back by an undo, seen live at 12:00:15;
        // 40 s later revision 5 rolls out. Revision 4's baseline starts at
        // the undo, not at bbb's ReplicaSet creation hours before.
        let t3 = target(deployment("web:v3", true, json!({})), "15m");
        let mut tracker = Tracker::new();
        let before = Snapshot::from_objects([(*t3.deployment).clone()], three_revisions(), []);
        tracker.observe(&t3, &before, ts("2026-11-27T12:00:00Z"));
        let reused = replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2"));
        let t2 = target(deployment("web:v2", false, json!({})), "15m");
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            reused.clone(),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let after = Snapshot::from_objects([(*t2.deployment).clone()], rss.clone(), []);
        tracker.observe(&t2, &after, ts("2026-11-27T12:00:15Z"));

        let t5 = target(deployment("web:v5", false, json!({})), "15m");
        let mut rss5 = rss;
        rss5.push(replicaset(5, "eee", "web:v5", "2026-11-27T12:00:55Z", None));
        let pods = [pod("web-bbb-9", "bbb", "2026-11-27T12:00:20Z")];
        let snap5 = Snapshot::from_objects([(*t5.deployment).clone()], rss5.clone(), pods.clone());
        let s = tracker.observe(&t5, &snap5, ts("2026-11-27T12:01:00Z"));
        let baseline = s.subject().and_then(|s| s.baseline).expect("a baseline");
        assert_eq!(
            (baseline.revision, baseline.since),
            (4, Some(ts("2026-11-27T12:00:15Z")))
        );

        // A watchdog that did not see the undo: the oldest pod of revision 4.
        let fresh = Tracker::new().observe(&t5, &snap5, ts("2026-11-27T12:01:00Z"));
        assert_eq!(fresh.previous_since, Some(ts("2026-11-27T12:00:20Z")));
        // Nor any pod of it: unknown, the baseline looks back in full.
        let bare = Snapshot::from_objects([(*t5.deployment).clone()], rss5, []);
        let none = Tracker::new().observe(&t5, &bare, ts("2026-11-27T12:01:00Z"));
        assert_eq!(none.previous_since, None);
    }

    #[test]
    fn a_new_template_without_its_replicaset_yet_is_pending_and_not_judged() {
        let mut d = deployment("web:v4", false, json!({REVISION: "3"}));
        d.metadata.generation = Some(5);
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T12:00:00Z"));
        assert!(
            matches!(s.rollout, Rollout::Pending { .. }),
            "{:?}",
            s.rollout
        );
        assert!(s.subject().is_none());
        assert!(s.known_good_due().is_none());
        assert!(!s.in_window());
    }

    #[test]
    fn replicasets_of_other_owners_are_not_revisions() {
        let d = deployment("web:v1", true, json!({}));
        let mut foreign = replicaset(9, "zzz", "web:v1", "2026-11-27T08:00:00Z", None);
        foreign.metadata.owner_references = None;
        let mine = replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None);
        let snap = Snapshot::from_objects([d.clone()], [foreign, mine], []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T12:00:00Z"));
        assert_eq!(s.current().map(|c| c.number), Some(1));
        assert!(s.previous().is_none());
        assert!(s.subject().is_some_and(|s| s.baseline.is_none()));
    }

    #[test]
    fn progress_deadline_exceeded_is_read_from_the_conditions() {
        let mut d = deployment("web:v3", false, json!({}));
        let status = d.status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![serde_json::from_value(json!({
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"
        }))
        .expect("a condition")]);
        assert!(progress_deadline_exceeded(&d));
        assert!(!progress_deadline_exceeded(&deployment(
            "web:v3",
            false,
            json!({})
        )));
    }
}

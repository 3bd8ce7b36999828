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
//!   rollout is pending and nothing is judged. Found afresh from the
//!   caches on every tick, and never under a number that is not the
//!   current one: when that ReplicaSet's revision is not the highest of
//!   the Deployment's, or is lower than the Deployment's own revision
//!   annotation once the controller has observed its spec, one of the two
//!   watches has not caught up with a switch (a reused ReplicaSet keeps
//!   its old number until the controller bumps it), and the rollout is
//!   pending for that tick.
//! - previous revision (the baseline): the highest older revision. When
//!   it started serving ([`BaselineRevision::since`], so its baseline
//!   window never reaches back before it): the switch to it as this
//!   process saw it (the [`Tracker`](super::tracker::Tracker)'s record of the revision current
//!   before the last switch); else its ReplicaSet's creation if that was
//!   not reused; else the creation of its oldest pod still there; else
//!   unknown (the baseline then looks back the whole `baseline_lookback`).
//! - rollout start: the ReplicaSet's `creationTimestamp` for a new one. A
//!   reused ReplicaSet (`kubectl rollout undo`, which gives it revision
//!   max+1 and a `revision-history` annotation) keeps its old creation
//!   time, so the [`Tracker`](super::tracker::Tracker) remembers when it saw the switch. A watchdog
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
//!   [`Tracker`](super::tracker::Tracker) (in memory) at the time the controller recorded it (the
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

use crate::k8s::keys::{KNOWN_GOOD, POD_TEMPLATE_HASH, REVISION, REVISION_HISTORY};
use crate::k8s::{annotate_deployment, PATCH_TIMEOUT};
use crate::observe::blocklist::Entry;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::{Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::observe::cache::Snapshot;
pub use crate::observe::window::{Window, WindowWhy};
use crate::signals::pods::is_ready;
use crate::signals::{BaselineRevision, ServingRevision, Subject};

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
    if let Some(why) = not_caught_up(deployment, &owned, &current, observed) {
        return Rollout::Pending { why };
    }
    let previous = owned
        .iter()
        .filter(|(r, _)| r.number < current.number)
        .map(|(r, _)| r.clone())
        .next_back();
    Rollout::Known { current, previous }
}

/// Why `current`, the ReplicaSet of the Deployment's template, cannot be
/// judged yet as the current revision: its revision annotation trails
/// what the deployment controller made current. The controller gives the
/// ReplicaSet it makes current the highest revision of all (max + 1,
/// also when it reuses one), so a lower number is an old one seen before
/// its update (the watch of ReplicaSets lags that of Deployments), or the
/// Deployment itself is older than its ReplicaSets (the other watch
/// lags). Either way the number in hand is not the revision that runs
/// now: the rollout is pending for this tick, never judged under a
/// replaced revision's number.
fn not_caught_up(
    deployment: &Deployment,
    owned: &[(Revision, &ReplicaSet)],
    current: &Revision,
    observed: bool,
) -> Option<String> {
    // Once the controller observed the latest spec, the Deployment's own
    // annotation names the current revision.
    if let Some(named) = revision_number(deployment).filter(|n| observed && current.number < *n) {
        return Some(format!(
            "the Deployment is at revision {named} but its ReplicaSet {} still says revision {}; the caches have not caught up with the switch yet",
            current.replica_set, current.number
        ));
    }
    let (newest, _) = owned.iter().rfind(|(r, _)| r.number > current.number)?;
    Some(format!(
        "ReplicaSet {} (revision {}) is not the newest revision: {} is revision {}; the caches have not caught up with the switch yet",
        current.replica_set, current.number, newest.replica_set, newest.number
    ))
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
pub fn rolled_out_for(d: &Deployment, snapshot: &Snapshot, current: &Revision) -> bool {
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
    /// What the watchdog keeps on the Deployment about its current
    /// revision ([`super::memory`]); None when it keeps nothing, or the
    /// record is about another revision.
    pub kept: Option<super::memory::Memory>,
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
            pods: self.pods.clone(),
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
    annotate_deployment(client, namespace, name, KNOWN_GOOD, &text)
        .await
        .map_err(|e| match e {
            Some(source) => RevisionError::Patch {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                revision: known_good.revision,
                source,
            },
            None => RevisionError::PatchTimeout {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                revision: known_good.revision,
            },
        })
}

//! The plan: a pure function from what the API said (the Deployment and
//! its ReplicaSets), the request, the policy and the time to the rollback
//! to carry out, or a [`Refusal`] that says why not. No I/O, no client, no
//! clock: the pipeline's Validate step reads, then asks here, so every rule
//! below is table-tested.
//!
//! It must never choose a blocklisted revision, the current template or a
//! newer template than the current one (after a person's undo, the
//! revision they left is newer), and never plan anything while a rollback is in flight, the target is
//! paused or GitOps-managed, its revision is irreversible, or the cooldown
//! or the budget forbids it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

pub use super::refusal::{Refusal, Rule};
use super::request::{annotation, read_in_flight, rollbacks_of, RollbackRequest, Target};
use super::words::default_reason;
use crate::config::Policy;
use crate::k8s::keys::{IN_FLIGHT, IRREVERSIBLE, PAUSED, POD_TEMPLATE_HASH};
use crate::k8s::DeploymentKey;
use crate::observe::blocklist::{self, Entry};
use crate::observe::revision::{self, KnownGood, Revision, Rollout};
pub use crate::report::audit::{Step, StepOutcome, StepRecord};
use crate::report::incident::{IncidentId, RevisionRef, Trigger};

/// A validated rollback, ready for Backup and Update.
#[derive(Debug, Clone)]
pub struct Plan {
    pub id: IncidentId,
    pub request: RollbackRequest,
    pub policy: Policy,
    /// The Deployment as validated; its resourceVersion guards the patch.
    pub deployment: Deployment,
    pub from: RevisionRef,
    pub to: RevisionRef,
    /// The pod template the patch puts in place (no `pod-template-hash`).
    pub template: Value,
    pub reason: String,
    pub dry_run: bool,
    /// Things on-call should know ("the target was never verified").
    pub notes: Vec<String>,
    /// `namespace/name` of the backup, once written.
    pub backup: Option<String>,
    pub started: Timestamp,
    pub steps: Vec<StepRecord>,
    /// The JSON Patch sent, once sent.
    pub patch: Vec<Value>,
}

impl Plan {
    pub fn target(&self) -> String {
        self.request.target()
    }

    /// Whether the rolled-back revision goes on the blocklist: not when a
    /// person restores a backup (that undoes a rollback on purpose).
    pub(crate) fn blocklists_from(&self) -> bool {
        !matches!(self.request.trigger, Trigger::Restore { .. })
    }
}

/// What a plan is judged on: the API's answers and this process's state.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    pub deployment: &'a Deployment,
    /// The ReplicaSets listed for it (ownership is checked here).
    pub replicasets: &'a [Arc<ReplicaSet>],
    pub request: &'a RollbackRequest,
    /// The target's effective policy.
    pub policy: &'a Policy,
    /// This process is rolling the Deployment back right now.
    pub running_here: bool,
    /// The config's global `dry_run`.
    pub dry_run_everywhere: bool,
    /// For the cooldown and the budget.
    pub now: Timestamp,
    /// When the pipeline started: the plan's id and start time.
    pub started: Timestamp,
}

/// The rules judged on the Deployment alone (in flight, paused, GitOps),
/// so a refusal needs no further read. [`plan`] applies them first too.
pub fn admit(
    d: &Deployment,
    request: &RollbackRequest,
    policy: &Policy,
    running_here: bool,
) -> Result<(), Refusal> {
    admission(d, request, policy, running_here).map_err(|rule| Refusal::judged(rule, d))
}

/// The rollback to carry out, or the rule that says no.
pub fn plan(input: &PlanInput) -> Result<Plan, Refusal> {
    decide(input).map_err(|rule| Refusal::judged(rule, input.deployment))
}

fn admission(
    d: &Deployment,
    request: &RollbackRequest,
    policy: &Policy,
    running_here: bool,
) -> Result<(), Rule> {
    let target = request.target();
    if let Some(f) = read_in_flight(d).ok().flatten() {
        return Err(Rule::InFlight {
            target,
            started: f.started,
            to: f.to,
        });
    }
    if annotation(d, IN_FLIGHT).is_some() {
        return Err(Rule::InFlightUnreadable { target });
    }
    if running_here {
        return Err(Rule::RunningHere { target });
    }
    if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
        return Err(Rule::PausedRollout {
            namespace: request.namespace.clone(),
            name: request.name.clone(),
        });
    }
    if annotation(d, PAUSED).map(|v| v.trim()) == Some("true") {
        return Err(Rule::PausedByAnnotation { target });
    }
    if policy.paused {
        return Err(Rule::PausedByConfig { target });
    }
    if let Some(tool) = gitops_manager(d) {
        if !policy.allow_gitops {
            return Err(Rule::Gitops { target, tool });
        }
    }
    Ok(())
}

fn decide(input: &PlanInput) -> Result<Plan, Rule> {
    let PlanInput {
        deployment: d,
        request,
        policy,
        ..
    } = *input;
    admission(d, request, policy, input.running_here)?;
    let target = request.target();
    let (current, previous) = match revision::rollout(d, input.replicasets) {
        Rollout::Known { current, previous } => (current, previous),
        Rollout::Pending { why } => return Err(Rule::RolloutPending { target, why }),
    };
    if let Some(judged) = &request.judged_hash {
        if *judged != current.pod_template_hash {
            return Err(Rule::ChangedSinceVerdict {
                target,
                judged: judged.clone(),
                current: current.number,
                current_hash: current.pod_template_hash.clone(),
            });
        }
    }
    let current_rs = input
        .replicasets
        .iter()
        .find(|rs| name_any(rs) == current.replica_set);
    if is_irreversible(d, current_rs.map(|r| r.as_ref())) {
        return Err(Rule::Irreversible {
            target,
            revision: current.number,
        });
    }
    within_budget(&target, d, policy, input.now)?;

    let mut choice = Choice {
        owned: revision::owned_revisions(d, input.replicasets),
        blocked: blocklist::entries(d),
        known_good: revision::known_good_of(d).ok().flatten(),
        current_template: d
            .spec
            .as_ref()
            .map(|s| revision::template_without_hash(&s.template)),
        has_previous: previous.is_some(),
        notes: Vec::new(),
        target,
        d,
        current,
    };
    let (to, template) = match &request.to {
        Target::Previous => {
            let (rev, rs) = choice.previous()?;
            choice.revision(rev, rs)?
        }
        Target::Revision(n) => {
            let (rev, rs) = choice.numbered(*n)?;
            choice.revision(rev, rs)?
        }
        Target::ImageTag { container, tag } => choice.image_tag(container.as_deref(), tag)?,
        Target::Template { backup, template } => choice.backup(backup, template)?,
    };

    let Choice {
        current,
        known_good,
        notes,
        ..
    } = choice;
    let from = revision_ref(
        &current,
        known_good.as_ref().is_some_and(|kg| kg.names(&current)),
    );
    let reason = request
        .reason
        .clone()
        .unwrap_or_else(|| default_reason(request));
    // A verdict's rollback is one decision about one revision: its id is
    // the same on every attempt (a new leader deciding again after a
    // hand-over), so the delivery ledger tells its notices once. A
    // person's request is new each time.
    let id_time = match (&request.trigger, request.rollout_started_at) {
        (Trigger::Verdict, Some(rollout_started)) => rollout_started,
        _ => input.started,
    };
    Ok(Plan {
        id: IncidentId::rollback(
            DeploymentKey::new(&request.namespace, &request.name),
            current.number,
            id_time,
        ),
        request: request.clone(),
        policy: policy.clone(),
        deployment: d.clone(),
        from,
        to,
        template,
        reason,
        dry_run: request.dry_run || policy.dry_run || input.dry_run_everywhere,
        notes,
        backup: None,
        started: input.started,
        steps: Vec::new(),
        patch: Vec::new(),
    })
}

/// The cooldown since the last rollback, then the budget of rollbacks per
/// window, from the times recorded on the Deployment.
fn within_budget(
    target: &str,
    d: &Deployment,
    policy: &Policy,
    now: Timestamp,
) -> Result<(), Rule> {
    let history = rollbacks_of(d);
    if let Some(last) = history.iter().max() {
        let until = add(*last, policy.cooldown);
        if now < until {
            return Err(Rule::Cooldown {
                target: target.to_owned(),
                last: *last,
                cooldown: policy.cooldown,
                until,
            });
        }
    }
    let since = sub(now, policy.rollback_budget_window);
    let recent = history.iter().filter(|t| **t > since).count();
    if recent >= policy.max_rollbacks_per_window as usize {
        return Err(Rule::Budget {
            target: target.to_owned(),
            recent,
            window: policy.rollback_budget_window,
            max: policy.max_rollbacks_per_window,
        });
    }
    Ok(())
}

/// What choosing the revision to restore looks at, and the notes it leaves
/// for on-call.
struct Choice<'a> {
    target: String,
    d: &'a Deployment,
    current: Revision,
    /// There is an older revision than the current one.
    has_previous: bool,
    /// The revisions the Deployment owns, oldest first.
    owned: Vec<(Revision, &'a ReplicaSet)>,
    blocked: Vec<Entry>,
    known_good: Option<KnownGood>,
    current_template: Option<Value>,
    notes: Vec<String>,
}

impl<'a> Choice<'a> {
    fn blocking(&self, r: &Revision) -> Option<&Entry> {
        self.blocked
            .iter()
            .find(|e| e.matches(&r.pod_template_hash, &r.images))
    }

    fn is_known_good(&self, r: &Revision) -> bool {
        self.known_good
            .as_ref()
            .is_some_and(|kg| kg.pod_template_hash == r.pod_template_hash)
    }

    /// `rollback --to-revision n`.
    fn numbered(&self, n: i64) -> Result<(Revision, &'a ReplicaSet), Rule> {
        let target = self.target.clone();
        let Some((rev, rs)) = self.owned.iter().find(|(r, _)| r.number == n) else {
            let revisions = self.owned.iter().map(|(r, _)| r.number).collect();
            return Err(Rule::RevisionNotFound {
                target,
                revision: n,
                revisions,
            });
        };
        if rev.number == self.current.number {
            return Err(Rule::RevisionIsCurrent {
                target,
                revision: n,
            });
        }
        if let Some(e) = self.blocking(rev) {
            return Err(Rule::RevisionBlocklisted {
                target,
                revision: n,
                reason: e.reason.clone(),
                at: e.at.clone(),
            });
        }
        Ok((rev.clone(), *rs))
    }

    /// The newest known-good revision a rollback may restore, else the
    /// newest one it may restore: always an older template than the
    /// current one, never one the Deployment moved to after the current
    /// template's previous deploy ([`revision::rollback_candidates`]), and
    /// never a blocklisted one.
    fn previous(&mut self) -> Result<(Revision, &'a ReplicaSet), Rule> {
        let candidates: Vec<(Revision, &'a ReplicaSet)> =
            revision::rollback_candidates(&self.current, &self.owned, &self.blocked)
                .into_iter()
                .map(|(r, rs)| (r.clone(), *rs))
                .collect();
        let by_known_good = candidates.iter().find(|(r, _)| self.is_known_good(r));
        if let Some((r, rs)) = by_known_good {
            return Ok((r.clone(), *rs));
        }
        let target = self.target.clone();
        match candidates.into_iter().next() {
            Some((r, rs)) => {
                self.notes.push(format!(
                    "revision {} was never verified as known-good",
                    r.number
                ));
                Ok((r, rs))
            }
            None if self
                .owned
                .iter()
                .any(|(r, _)| r.number < self.current.number && self.blocking(r).is_none()) =>
            {
                Err(Rule::NoOlderTemplate {
                    target,
                    revision: self.current.number,
                    first_deployed: self.current.first_deployed(),
                })
            }
            None if self.has_previous => Err(Rule::AllOlderBlocklisted { target }),
            None => Err(Rule::NoOlderRevision { target }),
        }
    }

    /// The template of a chosen revision, unless it is the current one.
    fn revision(&self, rev: Revision, rs: &ReplicaSet) -> Result<(RevisionRef, Value), Rule> {
        let target = self.target.clone();
        let Some(rs_template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
            return Err(Rule::NoRevisionTemplate {
                target,
                revision: rev.number,
                replica_set: rev.replica_set,
            });
        };
        if Some(revision::template_without_hash(&rs_template)) == self.current_template {
            return Err(Rule::SameTemplate {
                target,
                revision: rev.number,
            });
        }
        let verified = self.is_known_good(&rev);
        Ok((revision_ref(&rev, verified), template_value(&rs_template)))
    }

    /// `kubectl set image` semantics on the current template.
    fn image_tag(
        &mut self,
        container: Option<&str>,
        tag: &str,
    ) -> Result<(RevisionRef, Value), Rule> {
        let target = self.target.clone();
        if !tag_is_well_formed(tag) {
            return Err(Rule::BadTag {
                tag: tag.to_owned(),
            });
        }
        let Some(mut tpl) = self.d.spec.as_ref().map(|s| s.template.clone()) else {
            return Err(Rule::NoPodTemplate { target });
        };
        let Some(pod) = tpl.spec.as_mut() else {
            return Err(Rule::NoPodSpec { target });
        };
        let containers: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
        let index = match container {
            Some(c) => match containers.iter().position(|n| n == c) {
                Some(i) => i,
                None => {
                    return Err(Rule::NoSuchContainer {
                        target,
                        container: c.to_owned(),
                        containers,
                    })
                }
            },
            None if containers.len() == 1 => 0,
            None => return Err(Rule::WhichContainer { target, containers }),
        };
        let old = pod.containers[index].image.clone().unwrap_or_default();
        let new = with_tag(&old, tag);
        if new == old {
            return Err(Rule::AlreadyRuns {
                target,
                container: containers[index].clone(),
                image: new,
            });
        }
        pod.containers[index].image = Some(new.clone());
        let images = revision::images(&tpl);
        let to = self.revision_with_template(&tpl);
        if let Some(e) = self
            .blocked
            .iter()
            .find(|e| e.matches(&to.pod_template_hash, &images))
        {
            return Err(Rule::ImageBlocklisted {
                target,
                image: new,
                reason: e.reason.clone(),
                at: e.at.clone(),
            });
        }
        if !to.known_good {
            self.notes
                .push(format!("image {new} was never verified as known-good"));
        }
        Ok((to, template_value(&tpl)))
    }

    /// `restore`: a backup's template, unless it is the current one.
    fn backup(
        &self,
        backup: &str,
        template: &PodTemplateSpec,
    ) -> Result<(RevisionRef, Value), Rule> {
        if Some(revision::template_without_hash(template)) == self.current_template {
            return Err(Rule::SameTemplateAsBackup {
                target: self.target.clone(),
                backup: backup.to_owned(),
            });
        }
        Ok((
            self.revision_with_template(template),
            template_value(template),
        ))
    }

    /// The newest owned revision with this template (hash label aside), or
    /// a new revision of its images when none has it.
    fn revision_with_template(&self, template: &PodTemplateSpec) -> RevisionRef {
        let wanted = Some(revision::template_without_hash(template));
        let same = self.owned.iter().rev().find(|(_, rs)| {
            rs.spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .map(revision::template_without_hash)
                == wanted
        });
        match same {
            Some((r, _)) => revision_ref(r, self.is_known_good(r)),
            None => RevisionRef {
                revision: 0,
                pod_template_hash: String::new(),
                images: revision::images(template),
                known_good: false,
            },
        }
    }
}

fn revision_ref(r: &Revision, known_good: bool) -> RevisionRef {
    RevisionRef {
        revision: r.number,
        pod_template_hash: r.pod_template_hash.clone(),
        images: r.images.clone(),
        known_good,
    }
}

/// The name `kubectl` shows: the name, else the generate-name.
fn name_any(rs: &ReplicaSet) -> &str {
    rs.metadata
        .name
        .as_deref()
        .or(rs.metadata.generate_name.as_deref())
        .unwrap_or_default()
}

/// A pod template as the patch puts it in place: without its
/// `pod-template-hash` label.
pub(crate) fn template_value(t: &PodTemplateSpec) -> Value {
    let mut v = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(labels) = v
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
    }
    v
}

/// `image` with its tag (and any digest) replaced by `tag`.
pub fn with_tag(image: &str, tag: &str) -> String {
    let base = image.split('@').next().unwrap_or(image);
    let slash = base.rfind('/').map(|i| i + 1).unwrap_or(0);
    let repo = match base[slash..].rfind(':') {
        Some(i) => &base[..slash + i],
        None => base,
    };
    format!("{repo}:{tag}")
}

/// Docker's tag grammar: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn tag_is_well_formed(tag: &str) -> bool {
    let first = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    first
        && tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Which GitOps tool manages the Deployment, if any.
pub fn gitops_manager(d: &Deployment) -> Option<String> {
    let empty = BTreeMap::new();
    let labels = d.metadata.labels.as_ref().unwrap_or(&empty);
    let annotations = d.metadata.annotations.as_ref().unwrap_or(&empty);
    if labels.contains_key("argocd.argoproj.io/instance") {
        return Some("Argo CD (label argocd.argoproj.io/instance)".to_owned());
    }
    if labels.contains_key("app.kubernetes.io/instance")
        && annotations
            .keys()
            .any(|k| k.starts_with("argocd.argoproj.io/"))
    {
        return Some(
            "Argo CD (label app.kubernetes.io/instance with argocd.argoproj.io/ annotations)"
                .to_owned(),
        );
    }
    for key in [
        "kustomize.toolkit.fluxcd.io/name",
        "helm.toolkit.fluxcd.io/name",
    ] {
        if labels.contains_key(key) {
            return Some(format!("Flux (label {key})"));
        }
    }
    None
}

/// The revision is marked irreversible on its ReplicaSet or pod template.
fn is_irreversible(d: &Deployment, rs: Option<&ReplicaSet>) -> bool {
    let yes = |m: Option<&BTreeMap<String, String>>| {
        m.and_then(|a| a.get(IRREVERSIBLE)).map(|v| v.trim()) == Some("true")
    };
    let rs_yes = rs.is_some_and(|rs| {
        yes(rs.metadata.annotations.as_ref())
            || yes(rs
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref()))
    });
    rs_yes
        || yes(d
            .spec
            .as_ref()
            .and_then(|s| s.template.metadata.as_ref())
            .and_then(|m| m.annotations.as_ref()))
}

/// `t + d`, saturating.
pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// `t - d`, saturating.
pub(crate) fn sub(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_sub(d).ok())
        .unwrap_or(Timestamp::MIN)
}

#[cfg(test)]
mod tests;

//! Validate, the runbook's step 1: the API reads and the rules that choose
//! the revision to restore, or refuse with a sentence that says why.

use super::*;

impl Pipeline {
    pub(super) async fn validate(
        &self,
        request: &RollbackRequest,
        started: jiff::Timestamp,
    ) -> Result<Plan, Refusal> {
        let target = request.target();
        let d = match self.get(&request.namespace, &request.name).await {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Refusal::new(format!(
                "{target}: Deployment not found; check the namespace and name (kubectl get deploy -n {})",
                request.namespace
            ))),
            Err(e) => return Err(Refusal::failed(e.to_string())),
        };
        let policy = request
            .policy
            .clone()
            .unwrap_or_else(|| self.ctx.policy_for(&d));
        let refuse = |why: String| Err(Refusal::on(why, &d));

        if let Some(f) = in_flight_of(&d).ok().flatten() {
            return refuse(format!(
                "a rollback of {target} is already in flight (started {}, to {}); it resumes at Wait/Verify, wait for it to finish",
                f.started, describe_ref(&f.to)
            ));
        }
        if d.annotations().contains_key(IN_FLIGHT) {
            return refuse(format!("{target} carries an unreadable {IN_FLIGHT} record; a rollback may be in flight: remove the annotation once you checked"));
        }
        if self.is_active(&target) {
            return refuse(format!(
                "a rollback of {target} is already running in this watchdog"
            ));
        }
        if d.spec.as_ref().and_then(|s| s.paused) == Some(true) {
            return refuse(format!("{target} is paused (spec.paused); resume it with `kubectl rollout resume deployment/{} -n {}` first", request.name, request.namespace));
        }
        if d.annotations()
            .get(crate::k8s::keys::PAUSED)
            .map(|v| v.trim())
            == Some("true")
        {
            return refuse(format!(
                "{target} carries {}: \"true\"; the watchdog takes no action on it",
                crate::k8s::keys::PAUSED
            ));
        }
        if policy.paused {
            return refuse(format!("the watchdog is paused for {target} (paused = true in the config); it takes no action"));
        }
        if let Some(tool) = gitops_manager(&d) {
            if !policy.allow_gitops {
                return refuse(format!(
                    "{target} is managed by {tool}: a sync would undo the rollback; roll back in Git, or set allow_gitops = true for this target"
                ));
            }
        }

        let replicasets = self
            .replicasets(&d)
            .await
            .map_err(|e| Refusal::failed(e.to_string()))?;
        let (current, previous) = match revision::rollout(&d, &replicasets) {
            Rollout::Known { current, previous } => (current, previous),
            Rollout::Pending { why } => return refuse(format!("{target}: the current revision is not known yet ({why}); try again when the rollout has started")),
        };
        if let Some(judged) = &request.judged_hash {
            if *judged != current.pod_template_hash {
                return refuse(format!(
                    "{target} changed since the verdict: the bad revision was {judged}, the current one is revision {} ({}); someone deployed meanwhile, so nothing is rolled back",
                    current.number, current.pod_template_hash
                ));
            }
        }
        let current_rs = replicasets
            .iter()
            .find(|rs| rs.name_any() == current.replica_set);
        if is_irreversible(&d, current_rs.map(|r| r.as_ref())) {
            return refuse(format!(
                "revision {} of {target} is marked {IRREVERSIBLE}: \"true\" (e.g. a schema migration); the watchdog only alerts, roll forward by hand",
                current.number
            ));
        }

        let now = self.ctx.now();
        let history = rollbacks_of(&d);
        if let Some(last) = history.iter().max() {
            let until = add(*last, policy.cooldown);
            if now < until {
                return refuse(format!(
                    "{target} was rolled back at {last}; the cooldown ({}) forbids another rollback until {until}",
                    humantime::format_duration(policy.cooldown)
                ));
            }
        }
        let since = sub(now, policy.rollback_budget_window);
        let recent = history.iter().filter(|t| **t > since).count();
        if recent >= policy.max_rollbacks_per_window as usize {
            return refuse(format!(
                "{target} was rolled back {recent} time(s) in the last {}; max_rollbacks_per_window = {} forbids another",
                humantime::format_duration(policy.rollback_budget_window),
                policy.max_rollbacks_per_window
            ));
        }

        let blocked = blocklist::entries(&d);
        let is_blocked = |r: &Revision| {
            blocked
                .iter()
                .find(|e| e.matches(&r.pod_template_hash, &r.images))
                .cloned()
        };
        let known_good = revision::known_good_of(&d).ok().flatten();
        let owned = revision::owned_revisions(&d, &replicasets);
        let current_template = d
            .spec
            .as_ref()
            .map(|s| revision::template_without_hash(&s.template));
        let mut notes = Vec::new();

        let (to, template): (RevisionRef, Value) = match &request.to {
            Target::Previous | Target::Revision(_) => {
                let chosen: (Revision, &ReplicaSet) = match &request.to {
                    Target::Revision(n) => {
                        let Some(found) = owned.iter().find(|(r, _)| r.number == *n) else {
                            let list: Vec<String> =
                                owned.iter().map(|(r, _)| r.number.to_string()).collect();
                            return refuse(format!("revision {n} of {target} not found (revisions: {}); see `rollback-watchdog history {target}`", list.join(", ")));
                        };
                        if found.0.number == current.number {
                            return refuse(format!("skipped rollback: revision {n} is the current revision of {target}"));
                        }
                        if let Some(e) = is_blocked(&found.0) {
                            return refuse(format!("revision {n} of {target} is blocklisted ({}, rolled back at {}); remove it from {} to use it", e.reason, e.at, keys::BLOCKLIST));
                        }
                        (found.0.clone(), found.1)
                    }
                    _ => {
                        let by_known_good = known_good.as_ref().and_then(|kg| {
                            owned.iter().rev().find(|(r, _)| {
                                r.pod_template_hash == kg.pod_template_hash
                                    && r.number != current.number
                                    && is_blocked(r).is_none()
                            })
                        });
                        match by_known_good {
                            Some((r, rs)) => (r.clone(), *rs),
                            None => {
                                let older = owned.iter().rev().find(|(r, _)| {
                                    r.number < current.number && is_blocked(r).is_none()
                                });
                                match older {
                                    Some((r, rs)) => {
                                        notes.push(format!(
                                            "revision {} was never verified as known-good",
                                            r.number
                                        ));
                                        (r.clone(), *rs)
                                    }
                                    None => {
                                        let why = if previous.is_some() {
                                            "every older revision is blocklisted"
                                        } else {
                                            "it has no older revision"
                                        };
                                        return refuse(format!(
                                            "no revision of {target} to roll back to: {why}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                };
                let (rev, rs) = chosen;
                let Some(rs_template) = rs.spec.as_ref().and_then(|s| s.template.clone()) else {
                    return refuse(format!(
                        "revision {} of {target} (ReplicaSet {}) has no pod template",
                        rev.number, rev.replica_set
                    ));
                };
                if Some(revision::template_without_hash(&rs_template)) == current_template {
                    return refuse(format!("skipped rollback: revision {}'s template is the current template of {target}", rev.number));
                }
                let verified = known_good
                    .as_ref()
                    .is_some_and(|kg| kg.pod_template_hash == rev.pod_template_hash);
                (revision_ref(&rev, verified), template_value(&rs_template))
            }
            Target::ImageTag { container, tag } => {
                if !tag_is_well_formed(tag) {
                    return refuse(format!("{tag:?} is not an image tag like v1.2.3 (letters, digits, _ . -, at most 128)"));
                }
                let Some(mut tpl) = d.spec.as_ref().map(|s| s.template.clone()) else {
                    return refuse(format!("{target} has no pod template"));
                };
                let Some(pod) = tpl.spec.as_mut() else {
                    return refuse(format!("{target} has no pod spec"));
                };
                let names: Vec<String> = pod.containers.iter().map(|c| c.name.clone()).collect();
                let index = match container {
                    Some(c) => match names.iter().position(|n| n == c) {
                        Some(i) => i,
                        None => {
                            return refuse(format!(
                                "{target} has no container {c:?} (containers: {})",
                                names.join(", ")
                            ))
                        }
                    },
                    None if names.len() == 1 => 0,
                    None => {
                        return refuse(format!(
                            "{target} has {} containers ({}); name one with --container",
                            names.len(),
                            names.join(", ")
                        ))
                    }
                };
                let old = pod.containers[index].image.clone().unwrap_or_default();
                let new = with_tag(&old, tag);
                if new == old {
                    return refuse(format!(
                        "skipped rollback: container {} of {target} already runs {new}",
                        names[index]
                    ));
                }
                pod.containers[index].image = Some(new.clone());
                let images = template_images(&tpl);
                let same = owned.iter().rev().find(|(_, rs)| {
                    rs.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(revision::template_without_hash)
                        == Some(revision::template_without_hash(&tpl))
                });
                let to = match same {
                    Some((r, _)) => revision_ref(
                        r,
                        known_good
                            .as_ref()
                            .is_some_and(|kg| kg.pod_template_hash == r.pod_template_hash),
                    ),
                    None => RevisionRef {
                        revision: 0,
                        pod_template_hash: String::new(),
                        images: images.clone(),
                        known_good: false,
                    },
                };
                if let Some(e) = blocked
                    .iter()
                    .find(|e| e.matches(&to.pod_template_hash, &images))
                {
                    return refuse(format!(
                        "{new} is blocklisted on {target} ({}, rolled back at {})",
                        e.reason, e.at
                    ));
                }
                if !to.known_good {
                    notes.push(format!("image {new} was never verified as known-good"));
                }
                (to, template_value(&tpl))
            }
            Target::Template { backup, template } => {
                if Some(revision::template_without_hash(template)) == current_template {
                    return refuse(format!("skipped restore: the template in backup {backup} is the current template of {target}"));
                }
                let same = owned.iter().rev().find(|(_, rs)| {
                    rs.spec
                        .as_ref()
                        .and_then(|s| s.template.as_ref())
                        .map(revision::template_without_hash)
                        == Some(revision::template_without_hash(template))
                });
                let to = match same {
                    Some((r, _)) => revision_ref(
                        r,
                        known_good
                            .as_ref()
                            .is_some_and(|kg| kg.pod_template_hash == r.pod_template_hash),
                    ),
                    None => RevisionRef {
                        revision: 0,
                        pod_template_hash: String::new(),
                        images: template_images(template),
                        known_good: false,
                    },
                };
                (to, template_value(template))
            }
        };

        let from = revision_ref(
            &current,
            known_good.as_ref().is_some_and(|kg| kg.names(&current)),
        );
        let reason = request
            .reason
            .clone()
            .unwrap_or_else(|| default_reason(request));
        let dry_run = request.dry_run || policy.dry_run || self.ctx.config.watchdog.dry_run;
        Ok(Plan {
            id: format!("{target}/r{}/{}", current.number, started.as_millisecond()),
            request: request.clone(),
            policy,
            deployment: d,
            from,
            to,
            template,
            reason,
            dry_run,
            notes,
            backup: None,
            started,
            steps: Vec::new(),
            patch: Vec::new(),
        })
    }

    pub(super) async fn refuse(
        &self,
        request: RollbackRequest,
        refusal: Refusal,
        started: jiff::Timestamp,
    ) -> RollbackOutcome {
        let target = request.target();
        let id = format!("{target}/r0/{}", started.as_millisecond());
        let mut steps = Vec::new();
        let outcome = if refusal.failed {
            StepOutcome::Failed
        } else {
            StepOutcome::Refused
        };
        self.record(
            &mut steps,
            &id,
            &target,
            Step::Validate,
            outcome,
            refusal.why.clone(),
            Value::Null,
        );
        let mut incident = self.base_incident(&request, &id, EventKind::RollbackFailed, started);
        incident.failed_step = Some(Step::Validate.as_str().to_owned());
        incident.error = Some(refusal.why.clone());
        incident.dry_run = request.dry_run;
        incident.finished_at = Some(rfc3339(self.ctx.now()));
        if let Some(d) = &refusal.deployment {
            self.event(d, true, "RollbackRefused", refusal.why.clone())
                .await;
            if matches!(request.trigger, Trigger::Annotation { .. }) {
                self.consume_request_annotation(d).await;
            }
        }
        self.report(&incident).await;
        // A person at the CLI reads the refusal; automatic triggers tell on-call.
        if matches!(
            request.trigger,
            Trigger::Verdict | Trigger::Annotation { .. }
        ) {
            self.notify(&mut steps, &incident);
        }
        RollbackOutcome {
            result: if refusal.failed {
                RollbackResult::Failed
            } else {
                RollbackResult::Refused
            },
            incident,
            steps,
            patch: Vec::new(),
        }
    }
}

pub(super) struct Refusal {
    why: String,
    /// An error reading the cluster rather than a rule saying no.
    failed: bool,
    deployment: Option<Box<Deployment>>,
}

impl Refusal {
    pub(super) fn new(why: String) -> Self {
        Refusal {
            why,
            failed: false,
            deployment: None,
        }
    }
    pub(super) fn failed(why: String) -> Self {
        Refusal {
            why,
            failed: true,
            deployment: None,
        }
    }
    pub(super) fn on(why: String, d: &Deployment) -> Self {
        Refusal {
            why,
            failed: false,
            deployment: Some(Box::new(d.clone())),
        }
    }
}

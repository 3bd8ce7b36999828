use super::*;
use crate::config::Loader;
use crate::decide::request::InFlight;
use crate::k8s::keys::{BLOCKLIST, KNOWN_GOOD, REVISION, REVISION_HISTORY, ROLLBACKS};
use serde_json::json;

const UID: &str = "d-uid";
const NOW: &str = "2026-11-27T12:00:00Z";
const CRASHED: &str = r#"{"podTemplateHash":"bbb","images":["web:v2"],"revision":2,"reason":"pods crash","at":"2026-11-27T09:30:00Z"}"#;

fn ts(s: &str) -> Timestamp {
    s.parse().expect("a test timestamp")
}

fn template(image: &str, hash: Option<&str>) -> Value {
    let mut labels = json!({"app": "web"});
    if let Some(h) = hash {
        labels[POD_TEMPLATE_HASH] = json!(h);
    }
    json!({"metadata": {"labels": labels},
           "spec": {"containers": [{"name": "app", "image": image}]}})
}

/// `production/web` running `image`.
fn deployment(image: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "production", "uid": UID, "generation": 4},
        "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                 "template": template(image, None)},
        "status": {"observedGeneration": 4, "replicas": 3, "updatedReplicas": 3},
    }))
    .expect("a valid Deployment")
}

/// Revision `revision` of `production/web`, ReplicaSet `web-{hash}`.
fn replicaset(revision: i64, hash: &str, image: &str) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": format!("web-{hash}"), "namespace": "production",
                     "uid": format!("rs-{hash}"),
                     "labels": {"app": "web", POD_TEMPLATE_HASH: hash},
                     "annotations": {REVISION: revision.to_string()},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": "web", "uid": UID, "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web", POD_TEMPLATE_HASH: hash}},
                 "template": template(image, Some(hash))},
    }))
    .expect("a valid ReplicaSet")
}

fn policy() -> Policy {
    Loader::from_toml("")
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("the defaults load")
        .config
        .defaults
}

/// One situation: web on v3 (revision 3; v1 and v2 before it), the
/// default policy (cooldown 30m, one rollback an hour), a verdict.
struct Case {
    d: Deployment,
    replicasets: Vec<Arc<ReplicaSet>>,
    request: RollbackRequest,
    policy: Policy,
    running_here: bool,
}

impl Case {
    fn to(to: Target) -> Case {
        Case {
            d: deployment("web:v3"),
            replicasets: [
                (1, "aaa", "web:v1"),
                (2, "bbb", "web:v2"),
                (3, "ccc", "web:v3"),
            ]
            .into_iter()
            .map(|(n, hash, image)| Arc::new(replicaset(n, hash, image)))
            .collect(),
            request: RollbackRequest::new("production", "web", to, Trigger::Verdict),
            policy: policy(),
            running_here: false,
        }
    }

    fn previous() -> Case {
        Case::to(Target::Previous)
    }

    fn image(tag: &str) -> Case {
        Case::to(Target::ImageTag {
            container: None,
            tag: tag.into(),
        })
    }

    fn annotated(mut self, key: &str, value: &str) -> Case {
        self.d
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    fn labelled(mut self, key: &str, value: &str) -> Case {
        self.d
            .metadata
            .labels
            .get_or_insert_with(Default::default)
            .insert(key.into(), value.into());
        self
    }

    fn with(mut self, change: impl FnOnce(&mut Case)) -> Case {
        change(&mut self);
        self
    }

    fn plan(&self) -> Result<Plan, Refusal> {
        plan(&PlanInput {
            deployment: &self.d,
            replicasets: &self.replicasets,
            request: &self.request,
            policy: &self.policy,
            running_here: self.running_here,
            dry_run_everywhere: false,
            now: ts(NOW),
            started: ts(NOW),
        })
    }
}

fn in_flight_to_revision_2() -> String {
    let to = RevisionRef {
        revision: 2,
        pod_template_hash: "bbb".into(),
        images: vec!["web:v2".into()],
        known_good: false,
    };
    serde_json::to_string(&InFlight {
        id: "production/web/r3/1".parse().expect("an incident id"),
        step: "wait".into(),
        trigger: Trigger::Verdict,
        reason: "pods crash".into(),
        from: RevisionRef::default(),
        to,
        backup: None,
        started: "2026-11-27T11:58:00Z".into(),
        generation: 5,
        rollout_started_at: None,
        detected_at: None,
        measured: Vec::new(),
        blocklisted_redeploy: false,
    })
    .expect("an in-flight record")
}

struct Refused {
    name: &'static str,
    case: Case,
    rule: fn(&Rule) -> bool,
    sentence: &'static str,
}

/// The rules that hold any rollback of the Deployment.
fn refusals_on_the_deployment() -> Vec<Refused> {
    vec![
        Refused {
            name: "a rollback in flight",
            case: Case::previous().annotated(IN_FLIGHT, &in_flight_to_revision_2()),
            rule: |r| matches!(r, Rule::InFlight { to, .. } if to.revision == 2),
            sentence: "a rollback of production/web is already in flight (started 2026-11-27T11:58:00Z, to revision 2 (v2)); it resumes at Wait/Verify, wait for it to finish",
        },
        Refused {
            name: "an unreadable in-flight record",
            case: Case::previous().annotated(IN_FLIGHT, "{not json"),
            rule: |r| matches!(r, Rule::InFlightUnreadable { .. }),
            sentence: "production/web carries an unreadable rollback-watchdog.io/in-flight record; a rollback may be in flight: remove the annotation once you checked",
        },
        Refused {
            name: "a rollback running in this process",
            case: Case::previous().with(|c| c.running_here = true),
            rule: |r| matches!(r, Rule::RunningHere { .. }),
            sentence: "a rollback of production/web is already running in this watchdog",
        },
        Refused {
            name: "a paused rollout (spec.paused)",
            case: Case::previous().with(|c| {
                if let Some(s) = c.d.spec.as_mut() {
                    s.paused = Some(true);
                }
            }),
            rule: |r| matches!(r, Rule::PausedRollout { .. }),
            sentence: "production/web is paused (spec.paused); resume it with `kubectl rollout resume deployment/web -n production` first",
        },
        Refused {
            name: "the paused annotation",
            case: Case::previous().annotated(PAUSED, " true "),
            rule: |r| matches!(r, Rule::PausedByAnnotation { .. }),
            sentence: "production/web carries rollback-watchdog.io/paused: \"true\"; the watchdog takes no action on it",
        },
        Refused {
            name: "paused in the config",
            case: Case::previous().with(|c| c.policy.paused = true),
            rule: |r| matches!(r, Rule::PausedByConfig { .. }),
            sentence: "the watchdog is paused for production/web (paused = true in the config); it takes no action",
        },
        Refused {
            name: "GitOps without allow_gitops",
            case: Case::previous().labelled("kustomize.toolkit.fluxcd.io/name", "apps"),
            rule: |r| matches!(r, Rule::Gitops { .. }),
            sentence: "production/web is managed by Flux (label kustomize.toolkit.fluxcd.io/name): a sync would undo the rollback; roll back in Git, or set allow_gitops = true for this target",
        },
        Refused {
            name: "no ReplicaSet yet",
            case: Case::previous().with(|c| c.replicasets.clear()),
            rule: |r| matches!(r, Rule::RolloutPending { .. }),
            sentence: "production/web: the current revision is not known yet (the Deployment has no ReplicaSet yet); try again when the rollout has started",
        },
        Refused {
            name: "a verdict on another revision",
            case: Case::previous().with(|c| c.request.judged_hash = Some("bbb".into())),
            rule: |r| matches!(r, Rule::ChangedSinceVerdict { current: 3, .. }),
            sentence: "production/web changed since the verdict: the bad revision was bbb, the current one is revision 3 (ccc); someone deployed meanwhile, so nothing is rolled back",
        },
        Refused {
            name: "an irreversible current revision",
            case: Case::previous().with(|c| {
                let mut rs = replicaset(3, "ccc", "web:v3");
                rs.metadata.annotations.get_or_insert_with(Default::default)
                    .insert(IRREVERSIBLE.into(), "true".into());
                c.replicasets[2] = Arc::new(rs);
            }),
            rule: |r| matches!(r, Rule::Irreversible { revision: 3, .. }),
            sentence: "revision 3 of production/web is marked rollback-watchdog.io/irreversible: \"true\" (e.g. a schema migration); the watchdog only alerts, roll forward by hand",
        },
        Refused {
            name: "the cooldown after a rollback 15 minutes ago",
            case: Case::previous().annotated(ROLLBACKS, r#"["2026-11-27T11:45:00Z"]"#),
            rule: |r| matches!(r, Rule::Cooldown { .. }),
            sentence: "production/web was rolled back at 2026-11-27T11:45:00Z; the cooldown (30m) forbids another rollback until 2026-11-27T12:15:00Z",
        },
        Refused {
            name: "the budget after a rollback 45 minutes ago",
            case: Case::previous().annotated(ROLLBACKS, r#"["2026-11-27T11:15:00Z"]"#),
            rule: |r| matches!(r, Rule::Budget { recent: 1, max: 1, .. }),
            sentence: "production/web was rolled back 1 time(s) in the last 1h; max_rollbacks_per_window = 1 forbids another",
        },
    ]
}

/// The rules about the revision, tag or backup asked for.
fn refusals_of_the_target() -> Vec<Refused> {
    vec![
        Refused {
            name: "no older revision",
            case: Case::previous().with(|c| {
                c.replicasets.drain(..2);
            }),
            rule: |r| matches!(r, Rule::NoOlderRevision { .. }),
            sentence: "no revision of production/web to roll back to: it has no older revision",
        },
        Refused {
            name: "every older revision blocklisted",
            case: Case::previous().annotated(
                BLOCKLIST,
                &format!(r#"[{{"podTemplateHash":"aaa","reason":"5xx","at":"2026-11-27T08:30:00Z"}},{CRASHED}]"#),
            ),
            rule: |r| matches!(r, Rule::AllOlderBlocklisted { .. }),
            sentence: "no revision of production/web to roll back to: every older revision is blocklisted",
        },
        Refused {
            name: "a revision number that does not exist",
            case: Case::to(Target::Revision(7)),
            rule: |r| matches!(r, Rule::RevisionNotFound { revision: 7, .. }),
            sentence: "revision 7 of production/web not found (revisions: 1, 2, 3); see `rollback-watchdog history production/web`",
        },
        Refused {
            name: "the current revision by number",
            case: Case::to(Target::Revision(3)),
            rule: |r| matches!(r, Rule::RevisionIsCurrent { revision: 3, .. }),
            sentence: "skipped rollback: revision 3 is the current revision of production/web",
        },
        Refused {
            name: "a blocklisted revision by number",
            case: Case::to(Target::Revision(2)).annotated(BLOCKLIST, &format!("[{CRASHED}]")),
            rule: |r| matches!(r, Rule::RevisionBlocklisted { revision: 2, .. }),
            sentence: "revision 2 of production/web is blocklisted (pods crash, rolled back at 2026-11-27T09:30:00Z); remove it from rollback-watchdog.io/blocklist to use it",
        },
        Refused {
            name: "a revision without a pod template",
            case: Case::to(Target::Revision(2)).with(|c| {
                let mut rs = replicaset(2, "bbb", "web:v2");
                if let Some(s) = rs.spec.as_mut() {
                    s.template = None;
                }
                c.replicasets[1] = Arc::new(rs);
            }),
            rule: |r| matches!(r, Rule::NoRevisionTemplate { revision: 2, .. }),
            sentence: "revision 2 of production/web (ReplicaSet web-bbb) has no pod template",
        },
        Refused {
            name: "an older revision with the current template",
            case: Case::previous().with(|c| c.replicasets[1] = Arc::new(replicaset(2, "bbb", "web:v3"))),
            rule: |r| matches!(r, Rule::SameTemplate { revision: 2, .. }),
            sentence: "skipped rollback: revision 2's template is the current template of production/web",
        },
        Refused {
            name: "a malformed tag",
            case: Case::image("-v1"),
            rule: |r| matches!(r, Rule::BadTag { .. }),
            sentence: "\"-v1\" is not an image tag like v1.2.3 (letters, digits, _ . -, at most 128)",
        },
        Refused {
            name: "an unknown container",
            case: Case::to(Target::ImageTag { container: Some("sidecar".into()), tag: "v1".into() }),
            rule: |r| matches!(r, Rule::NoSuchContainer { .. }),
            sentence: "production/web has no container \"sidecar\" (containers: app)",
        },
        Refused {
            name: "the tag already running",
            case: Case::image("v3"),
            rule: |r| matches!(r, Rule::AlreadyRuns { .. }),
            sentence: "skipped rollback: container app of production/web already runs web:v3",
        },
        Refused {
            name: "a tag whose template is blocklisted",
            case: Case::image("v2").annotated(BLOCKLIST, &format!("[{CRASHED}]")),
            rule: |r| matches!(r, Rule::ImageBlocklisted { .. }),
            sentence: "web:v2 is blocklisted on production/web (pods crash, rolled back at 2026-11-27T09:30:00Z)",
        },
        Refused {
            name: "a backup of the current template",
            case: Case::to(Target::Template {
                backup: "rollback-watchdog/web-1".into(),
                template: Box::new(deployment("web:v3").spec.map(|s| s.template).unwrap_or_default()),
            }),
            rule: |r| matches!(r, Rule::SameTemplateAsBackup { .. }),
            sentence: "skipped restore: the template in backup rollback-watchdog/web-1 is the current template of production/web",
        },
    ]
}

#[test]
fn every_rule_refuses_with_its_own_sentence() {
    for row in refusals_on_the_deployment()
        .into_iter()
        .chain(refusals_of_the_target())
    {
        let refusal = match row.case.plan() {
            Err(r) => r,
            Ok(p) => panic!("{}: planned {}", row.name, describe(&p.to)),
        };
        let rule = refusal
            .rule()
            .unwrap_or_else(|| panic!("{}: {refusal:?}", row.name));
        assert!((row.rule)(rule), "{}: {rule:?}", row.name);
        assert_eq!(refusal.to_string(), row.sentence, "{}", row.name);
        assert!(!refusal.is_read_failure(), "{}", row.name);
        assert_eq!(
            refusal.deployment(),
            Some(&row.case.d),
            "{}: judged on",
            row.name
        );
    }
}

fn describe(r: &RevisionRef) -> String {
    crate::decide::words::describe_ref(r)
}

struct Chosen {
    name: &'static str,
    case: Case,
    revision: i64,
    known_good: bool,
    notes: &'static [&'static str],
}

fn choices() -> Vec<Chosen> {
    let known_good = |hash: &str, n: i64| {
        format!(
            r#"{{"revision":{n},"podTemplateHash":"{hash}","images":[],"at":"2026-11-26T10:00:00Z"}}"#
        )
    };
    vec![
        Chosen {
            name: "previous: the newest older revision, never verified",
            case: Case::previous(),
            revision: 2,
            known_good: false,
            notes: &["revision 2 was never verified as known-good"],
        },
        Chosen {
            name: "previous: the known-good revision before a newer one",
            case: Case::previous().annotated(KNOWN_GOOD, &known_good("aaa", 1)),
            revision: 1,
            known_good: true,
            notes: &[],
        },
        Chosen {
            name: "previous: a blocklisted known-good revision is skipped",
            case: Case::previous()
                .annotated(KNOWN_GOOD, &known_good("bbb", 2))
                .annotated(BLOCKLIST, &format!("[{CRASHED}]")),
            revision: 1,
            known_good: false,
            notes: &["revision 1 was never verified as known-good"],
        },
        Chosen {
            name: "previous: allowed GitOps",
            case: Case::previous()
                .labelled("argocd.argoproj.io/instance", "web")
                .with(|c| c.policy.allow_gitops = true),
            revision: 2,
            known_good: false,
            notes: &["revision 2 was never verified as known-good"],
        },
        Chosen {
            name: "previous: the cooldown and the budget have passed",
            case: Case::previous().annotated(ROLLBACKS, r#"["2026-11-27T10:59:00Z"]"#),
            revision: 2,
            known_good: false,
            notes: &["revision 2 was never verified as known-good"],
        },
        Chosen {
            name: "a revision by number",
            case: Case::to(Target::Revision(1)),
            revision: 1,
            known_good: false,
            notes: &[],
        },
        Chosen {
            name: "a tag an older revision ran",
            case: Case::image("v1").annotated(KNOWN_GOOD, &known_good("aaa", 1)),
            revision: 1,
            known_good: true,
            notes: &[],
        },
        Chosen {
            name: "a tag no revision ran",
            case: Case::image("v9"),
            revision: 0,
            known_good: false,
            notes: &["image web:v9 was never verified as known-good"],
        },
        Chosen {
            name: "a backup of an older revision's template",
            case: Case::to(Target::Template {
                backup: "rollback-watchdog/web-1".into(),
                template: Box::new(
                    deployment("web:v2")
                        .spec
                        .map(|s| s.template)
                        .unwrap_or_default(),
                ),
            }),
            revision: 2,
            known_good: false,
            notes: &[],
        },
    ]
}

#[test]
fn the_target_revision_is_chosen_like_the_runbook_says() {
    for row in choices() {
        let plan = match row.case.plan() {
            Ok(p) => p,
            Err(r) => panic!("{}: refused: {r}", row.name),
        };
        assert_eq!(plan.to.revision, row.revision, "{}", row.name);
        assert_eq!(plan.to.known_good, row.known_good, "{}", row.name);
        assert_eq!(plan.notes, row.notes, "{}", row.name);
        assert_eq!(plan.from.revision, 3, "{}", row.name);
    }
}

#[test]
fn a_previous_rollback_skips_a_blocklisted_revision() {
    let case = Case::previous().annotated(BLOCKLIST, &format!("[{CRASHED}]"));
    let plan = case.plan().expect("revision 1 is there");
    assert_eq!(plan.to.revision, 1, "revision 2 is blocklisted");
    assert_eq!(plan.to.images, ["web:v1"]);
    assert_eq!(
        plan.template,
        template_value(
            &serde_json::from_value(template("web:v1", Some("aaa"))).expect("a template")
        )
    );
}

#[test]
fn the_plan_names_the_revisions_the_reason_and_the_dry_run() {
    let case = Case::previous().with(|c| c.policy.dry_run = true);
    let plan = case.plan().expect("a plan");
    assert_eq!(
        plan.id.to_string(),
        format!("production/web/r3/{}", ts(NOW).as_millisecond())
    );
    assert_eq!(
        (plan.from.revision, plan.from.pod_template_hash.as_str()),
        (3, "ccc")
    );
    assert_eq!(plan.reason, "the revision was judged Bad");
    assert!(plan.dry_run, "the policy's dry run");
    assert_eq!(plan.deployment, case.d);
    assert!(plan.steps.is_empty() && plan.patch.is_empty() && plan.backup.is_none());
    assert_eq!(
        plan.template.pointer("/spec/containers/0/image"),
        Some(&json!("web:v2"))
    );
    assert_eq!(
        plan.template.pointer("/metadata/labels/pod-template-hash"),
        None
    );
}

#[test]
fn admission_refuses_on_the_deployment_alone() {
    let case = Case::previous().annotated(PAUSED, "true");
    let refused = admit(&case.d, &case.request, &case.policy, false).expect_err("paused");
    assert!(matches!(
        refused.rule(),
        Some(Rule::PausedByAnnotation { .. })
    ));
    let clean = Case::previous();
    assert_eq!(
        admit(&clean.d, &clean.request, &clean.policy, false),
        Ok(())
    );
}

#[test]
fn not_found_and_read_failures_keep_their_sentences() {
    let not_found = Refusal::NotFound {
        target: "production/nope".into(),
        namespace: "production".into(),
    };
    assert_eq!(
        not_found.to_string(),
        "production/nope: Deployment not found; check the namespace and name (kubectl get deploy -n production)"
    );
    assert!(!not_found.is_read_failure());
    assert_eq!(not_found.deployment(), None);
    let failed = Refusal::ReadFailed {
        error: "production/web: cannot list its ReplicaSets: timeout".into(),
    };
    assert_eq!(
        failed.to_string(),
        "production/web: cannot list its ReplicaSets: timeout"
    );
    assert!(failed.is_read_failure());
    assert_eq!(failed.deployment(), None);
}

#[test]
fn a_tag_replaces_the_tag_and_digest_but_keeps_the_registry_port() {
    assert_eq!(
        with_tag("kailash-kaizen:v2", "v1.2.3"),
        "kailash-kaizen:v1.2.3"
    );
    assert_eq!(
        with_tag("registry:5000/team/web", "v1"),
        "registry:5000/team/web:v1"
    );
    assert_eq!(
        with_tag("ghcr.io/o/web:v2@sha256:abc", "v1"),
        "ghcr.io/o/web:v1"
    );
    assert!(tag_is_well_formed("v1.2.3"));
    assert!(!tag_is_well_formed("-v1"));
    assert!(!tag_is_well_formed("v1 2"));
}

#[test]
fn gitops_labels_are_recognised() {
    let mut d = Deployment::default();
    assert!(gitops_manager(&d).is_none());
    d.metadata.labels = Some(
        [(
            "kustomize.toolkit.fluxcd.io/name".to_string(),
            "apps".to_string(),
        )]
        .into(),
    );
    assert!(gitops_manager(&d).unwrap().starts_with("Flux"));
    d.metadata.labels =
        Some([("app.kubernetes.io/instance".to_string(), "web".to_string())].into());
    assert!(gitops_manager(&d).is_none());
    d.metadata.annotations =
        Some([("argocd.argoproj.io/sync-wave".to_string(), "1".to_string())].into());
    assert!(gitops_manager(&d).unwrap().starts_with("Argo CD"));
}

/// web on `image`, with ReplicaSets `(revision, hash, image,
/// revision-history)` as the deployment controller leaves them after
/// undos and re-deploys.
fn deployed(image: &str, rss: &[(i64, &str, &str, &str)]) -> Case {
    Case::previous().with(|c| {
        c.d = deployment(image);
        c.replicasets = rss
            .iter()
            .map(|(n, hash, image, history)| {
                let mut rs = replicaset(*n, hash, image);
                if !history.is_empty() {
                    rs.metadata
                        .annotations
                        .get_or_insert_with(Default::default)
                        .insert(REVISION_HISTORY.into(), (*history).into());
                }
                Arc::new(rs)
            })
            .collect();
    })
}

fn known_good_record(hash: &str, n: i64) -> String {
    format!(
        r#"{{"revision":{n},"podTemplateHash":"{hash}","images":[],"at":"2026-11-26T10:00:00Z"}}"#
    )
}

#[test]
fn a_rollback_never_goes_to_a_newer_template_than_the_one_it_replaces() {
    // The issue's case: revisions 1 to 6, then `rollout undo --to-revision=4`
    // made revision 7 from revision 4's ReplicaSet. Revision 6 (the one the
    // person left, known-good) and 5 are newer templates: the target is 3.
    let undo_6_to_4 = deployed(
        "web:v4",
        &[
            (1, "h1", "web:v1", ""),
            (2, "h2", "web:v2", ""),
            (3, "h3", "web:v3", ""),
            (5, "h5", "web:v5", ""),
            (6, "h6", "web:v6", ""),
            (7, "h4", "web:v4", "4"),
        ],
    )
    .annotated(KNOWN_GOOD, &known_good_record("h6", 6));
    let plan = undo_6_to_4.plan().expect("revision 3 is older");
    assert_eq!((plan.from.revision, plan.to.revision), (7, 3));
    assert_eq!(plan.to.images, ["web:v3"]);
    assert_eq!(plan.notes, ["revision 3 was never verified as known-good"]);

    // An older known-good template is still preferred.
    let plan = undo_6_to_4
        .annotated(KNOWN_GOOD, &known_good_record("h2", 2))
        .plan()
        .expect("revision 2 is older and known-good");
    assert_eq!((plan.to.revision, plan.to.known_good), (2, true));
}

#[test]
fn a_persons_undo_to_the_oldest_template_has_no_rollback_target() {
    // v1 -> v2 -> v3, then undo to v1 (revision 4): v2 and v3 are newer.
    let undo_to_v1 = deployed(
        "web:v1",
        &[
            (2, "bbb", "web:v2", ""),
            (3, "ccc", "web:v3", ""),
            (4, "aaa", "web:v1", "1"),
        ],
    )
    .annotated(KNOWN_GOOD, &known_good_record("ccc", 3));
    let refusal = match undo_to_v1.plan() {
        Err(r) => r,
        Ok(p) => panic!("planned a rollback to revision {}", p.to.revision),
    };
    assert!(
        matches!(
            refusal.rule(),
            Some(Rule::NoOlderTemplate {
                revision: 4,
                first_deployed: 1,
                ..
            })
        ),
        "{refusal:?}"
    );
    assert_eq!(
        refusal.to_string(),
        "no revision of production/web to roll back to: revision 4 brings back the template first deployed as revision 1, and every other revision is newer or was deployed after it"
    );
    // An explicit revision stays a person's choice.
    let by_number = undo_to_v1.with(|c| c.request.to = Target::Revision(3));
    assert_eq!(by_number.plan().map(|p| p.to.revision).ok(), Some(3));
}

#[test]
fn a_redeploy_goes_back_only_past_what_it_replaced_when_it_was_judged_bad_before() {
    // v1, v2 bad and rolled back (v1 became 3), v2 deployed again (4).
    let rss = [(3, "aaa", "web:v1", "1"), (4, "bbb", "web:v2", "2")];
    let blocklisted = deployed("web:v2", &rss).annotated(BLOCKLIST, &format!("[{CRASHED}]"));
    let plan = blocklisted.plan().expect("v1 is the older template");
    assert_eq!((plan.from.revision, plan.to.revision), (4, 3));
    // The same moves by a person with nothing judged bad: v1 is the
    // revision they left, so it is no target.
    let refusal = deployed("web:v2", &rss).plan().map(|p| p.to.revision);
    assert!(
        matches!(
            refusal.as_ref().map_err(Refusal::rule),
            Err(Some(Rule::NoOlderTemplate { revision: 4, .. }))
        ),
        "{refusal:?}"
    );
    // A new template after the watchdog's rollback goes back to v1 (3).
    let new_after_rollback = deployed(
        "web:v3",
        &[
            (2, "bbb", "web:v2", ""),
            (3, "aaa", "web:v1", "1"),
            (4, "ccc", "web:v3", ""),
        ],
    );
    assert_eq!(
        new_after_rollback.plan().map(|p| p.to.revision).ok(),
        Some(3)
    );
}

mod props;

//! The rollback pipeline against the simulated cluster through the real
//! client, read like the runbook: a bad revision is rolled back to the one
//! before, backed up first, audited step by step, told on the Deployment
//! and to on-call; a human's deploy is never overwritten; a restart never
//! patches twice; a bad target escalates instead of looping; and every
//! reason not to act is said in a sentence, with nothing patched.

use rollback_watchdog::k8s::keys::{IN_FLIGHT, ROLLBACKS};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::ResourceExt;
use rollback_watchdog::config::{Config, EventKind, Loader};
use rollback_watchdog::pipeline::{Context, Pipeline, RollbackRequest, RollbackResult, Target};
use rollback_watchdog::report::incident::{Collected, Trigger};
use rollback_watchdog::sim::{
    store, Behaviour, Crash, SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_NAMESPACE,
};
use serde_json::{json, Value};

mod support;
use support::kubectl::{kubectl_ok, require_kubectl};

const V1: &str = "kailash-kaizen:v1";
const V2: &str = "kailash-kaizen:v2";

struct World {
    sim: SimCluster,
    client: kube::Client,
    dir: tempfile::TempDir,
    config: Config,
    config_path: PathBuf,
}

impl World {
    fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit/audit.jsonl")
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), SEED_NAMESPACE)
    }

    async fn deployment(&self) -> Deployment {
        self.deployments()
            .get(SEED_DEPLOYMENT)
            .await
            .expect("get deployment")
    }

    fn pipeline(&self, sink: &Collected) -> Pipeline {
        let ctx = Context::new(
            self.client.clone(),
            Arc::new(self.config.clone()),
            Arc::new(sink.clone()),
        )
        .expect("context")
        .with_poll_interval(Duration::from_millis(100));
        Pipeline::new(ctx)
    }

    /// `kubectl set image`, as a person deploys.
    async fn deploy(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
        self.deployments()
            .patch(
                SEED_DEPLOYMENT,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .expect("deploy");
    }

    async fn annotate(&self, key: &str, value: Option<&str>) {
        let patch = json!({"metadata": {"annotations": {key: value}}});
        self.deployments()
            .patch(
                SEED_DEPLOYMENT,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("annotate");
    }

    /// JSON Patches of the Deployment (the rollback's kind of write).
    fn json_patches(&self) -> Vec<u16> {
        self.sim
            .request_log()
            .entries()
            .iter()
            .filter(|e| {
                e.verb == "patch"
                    && e.path.ends_with(&format!("/deployments/{SEED_DEPLOYMENT}"))
                    && e.content_type.contains("json-patch")
            })
            .map(|e| e.status)
            .collect()
    }

    fn audit_lines(&self) -> Vec<Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
            .collect()
    }

    async fn backups(&self) -> Vec<ConfigMap> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), "rollback-watchdog");
        api.list(&ListParams::default().labels(&format!(
            "app.kubernetes.io/managed-by=rollback-watchdog,rollback-watchdog.io/deployment={SEED_DEPLOYMENT}"
        )))
        .await
        .expect("list backups")
        .items
    }

    async fn replicaset_template(&self, image: &str) -> Value {
        let rs: Api<ReplicaSet> = Api::namespaced(self.client.clone(), SEED_NAMESPACE);
        let list = rs.list(&ListParams::default()).await.expect("list rs");
        let found = list
            .items
            .into_iter()
            .find(|r| image_of_template(r.spec.as_ref().and_then(|s| s.template.as_ref())) == image)
            .expect("a ReplicaSet of the image");
        let mut t = serde_json::to_value(found.spec.and_then(|s| s.template)).unwrap();
        t["metadata"]["labels"]
            .as_object_mut()
            .unwrap()
            .remove("pod-template-hash");
        t
    }
}

fn image_of_template(t: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> String {
    t.and_then(|t| t.spec.as_ref())
        .and_then(|s| s.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

fn image(d: &Deployment) -> String {
    image_of_template(d.spec.as_ref().map(|s| &s.template))
}

fn annotation(d: &Deployment, key: &str) -> Option<String> {
    d.annotations().get(key).cloned()
}

fn config_text(audit: &Path, extra_defaults: &str) -> String {
    format!(
        r#"
[watchdog]
cluster_name = "sim"
interval = "1s"
namespace = "rollback-watchdog"
audit_log = "{audit}"

[defaults]
verify_window = "3s"
{extra_defaults}

[defaults.error_rate]
enabled = false

[defaults.latency]
enabled = false
"#,
        audit = audit.display()
    )
}

/// A seeded sim at 20x with v1 rolled out, then v2 rolled out on top.
async fn world(extra_defaults: &str) -> World {
    let sim = SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let client = sim.client().await.expect("client");
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(&dir.path().join("audit/audit.jsonl"), extra_defaults);
    let config_path = dir.path().join("watchdog.toml");
    std::fs::write(&config_path, &text).expect("write config");
    let config = Loader::from_toml(text)
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("the test config is valid")
        .config;
    let w = World {
        sim,
        client,
        dir,
        config,
        config_path,
    };
    wait_rolled_out(&w, V1).await;
    w.deploy(V2).await;
    wait_rolled_out(&w, V2).await;
    w
}

async fn wait_rolled_out(w: &World, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = w.deployment().await;
        if image(&d) == want && rollback_watchdog::observe::revision::fully_rolled_out(&d) {
            return;
        }
        assert!(Instant::now() < deadline, "{want} never rolled out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn verdict(reason: &str) -> RollbackRequest {
    let mut r = RollbackRequest::new(
        SEED_NAMESPACE,
        SEED_DEPLOYMENT,
        Target::Previous,
        Trigger::Verdict,
    );
    r.reason = Some(reason.to_owned());
    r.detected_at = Some(jiff::Timestamp::now());
    r
}

fn kinds(sink: &Collected) -> Vec<EventKind> {
    sink.all().iter().map(|i| i.kind).collect()
}

#[tokio::test]
async fn a_bad_revision_is_rolled_back_to_the_one_before_backed_up_audited_and_told() {
    let w = world("").await;
    w.annotate("team", Some("payments")).await;
    let v1_template = w.replicaset_template(V1).await;
    let before = w.deployment().await;
    let sink = Collected::default();

    let outcome = w
        .pipeline(&sink)
        .run(verdict("error ratio 30.2 % > max 5.0 %"))
        .await;
    assert_eq!(
        outcome.result,
        RollbackResult::Succeeded,
        "{:#?}",
        outcome.steps
    );

    // The Deployment runs v1's template again, hash label aside.
    let d = w.deployment().await;
    assert_eq!(
        serde_json::to_value(&d.spec.as_ref().unwrap().template).unwrap(),
        v1_template
    );
    assert_eq!(image(&d), V1);
    assert_eq!(
        annotation(&d, "team").as_deref(),
        Some("payments"),
        "other annotations are kept"
    );
    assert_eq!(
        annotation(&d, "kubernetes.io/change-cause").as_deref(),
        Some("rollback-watchdog: rolled back from revision 2 (v2) to 1 (v1): error ratio 30.2 % > max 5.0 %")
    );
    assert_eq!(
        annotation(&d, IN_FLIGHT),
        None,
        "the in-flight record is cleared"
    );
    let blocklist: Value =
        serde_json::from_str(&annotation(&d, "rollback-watchdog.io/blocklist").unwrap()).unwrap();
    assert_eq!(blocklist[0]["images"], json!([V2]));
    assert_eq!(blocklist[0]["revision"], 2);
    let hash = blocklist[0]["podTemplateHash"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        rollback_watchdog::observe::blocklist::is_blocklisted(&d, &hash, &[V2.to_string()])
            .map(|e| e.revision),
        Some(2)
    );
    assert!(
        rollback_watchdog::observe::blocklist::is_blocklisted(&d, "other", &[V2.to_string()])
            .is_none(),
        "the same image in another template is not blocklisted"
    );
    let history: Vec<String> = serde_json::from_str(&annotation(&d, ROLLBACKS).unwrap()).unwrap();
    assert_eq!(history.len(), 1);

    // The backup holds the whole v2 Deployment and the record.
    let backups = w.backups().await;
    assert_eq!(backups.len(), 1);
    let data = backups[0].data.clone().unwrap();
    let saved: Deployment = serde_json::from_str(&data["deployment.json"]).unwrap();
    assert_eq!(image(&saved), V2);
    assert_eq!(saved.metadata.uid, before.metadata.uid);
    assert_eq!(
        saved.metadata.resource_version,
        before.metadata.resource_version
    );
    assert_eq!(
        saved.status, before.status,
        "the full object, status included"
    );
    let record: Value = serde_json::from_str(&data["record.json"]).unwrap();
    assert_eq!(record["from"]["revision"], 2);
    assert_eq!(record["to"]["images"], json!([V1]));
    assert_eq!(record["reason"], "error ratio 30.2 % > max 5.0 %");
    assert_eq!(
        outcome.incident.backup.as_deref(),
        Some(format!("rollback-watchdog/{}", backups[0].name_any()).as_str())
    );

    // One audit line per step, then the incident report.
    let lines = w.audit_lines();
    let steps: Vec<&str> = lines.iter().map(|l| l["step"].as_str().unwrap()).collect();
    assert_eq!(
        steps,
        ["validate", "backup", "update", "wait", "verify", "report", "notify"]
    );
    assert!(lines
        .iter()
        .all(
            |l| l["target"] == "production/kailash-kaizen" && l["outcome"] == "ok"
                || l["step"] == "report"
        ));
    assert_eq!(lines[5]["outcome"], "rollback_succeeded");
    assert_eq!(
        lines[5]["details"]["reason"],
        "error ratio 30.2 % > max 5.0 %"
    );

    // Events on the Deployment tell the story in `kubectl describe`.
    let (events, _) = w.sim.store().list(&store::EVENTS_V1, Some(SEED_NAMESPACE));
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| {
            e["regarding"]["name"] == SEED_DEPLOYMENT
                && e["reportingController"] == "rollback-watchdog"
        })
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons.contains(&"RollbackStarted") && reasons.contains(&"RolledBack"),
        "{reasons:?}"
    );

    // On-call is told: started, then succeeded.
    assert_eq!(
        kinds(&sink),
        [EventKind::RollbackStarted, EventKind::RollbackSucceeded]
    );
    // Exactly one JSON Patch, accepted.
    assert_eq!(w.json_patches(), [200]);
}

#[tokio::test]
async fn a_human_deploy_between_backup_and_update_is_never_overwritten() {
    let w = world("").await;
    let sink = Collected::default();
    let pipeline = w.pipeline(&sink);
    let mut plan = pipeline
        .plan(verdict("error ratio 30.2 % > max 5.0 %"))
        .await
        .expect("valid");
    pipeline.backup(&mut plan).await.expect("backed up");

    w.deploy("kailash-kaizen:v3").await;

    let Err(outcome) = pipeline.update(&mut plan).await else {
        panic!("the patch must fail its test")
    };
    assert_eq!(outcome.result, RollbackResult::Conflict);
    assert!(
        outcome.why().contains("someone deployed meanwhile"),
        "{}",
        outcome.why()
    );
    assert_eq!(
        w.json_patches(),
        [422],
        "one attempt, refused by the test op, no retry"
    );
    let d = w.deployment().await;
    assert_eq!(image(&d), "kailash-kaizen:v3", "the human's deploy stays");
    assert_eq!(annotation(&d, IN_FLIGHT), None);
    assert_eq!(annotation(&d, "rollback-watchdog.io/blocklist"), None);
    assert_eq!(kinds(&sink), [EventKind::Conflict]);
    let last = w
        .audit_lines()
        .into_iter()
        .find(|l| l["step"] == "update")
        .unwrap();
    assert_eq!(last["outcome"], "conflict");
}

#[tokio::test]
async fn a_restarted_watchdog_resumes_at_wait_and_never_patches_twice() {
    let w = world("").await;
    {
        // The first process gets as far as the patch, then dies.
        let sink = Collected::default();
        let pipeline = w.pipeline(&sink);
        let mut plan = pipeline.plan(verdict("pods crash")).await.expect("valid");
        pipeline.backup(&mut plan).await.expect("backed up");
        pipeline.update(&mut plan).await.expect("patched");
    }
    let d = w.deployment().await;
    let in_flight: Value =
        serde_json::from_str(&annotation(&d, IN_FLIGHT).expect("in flight")).unwrap();
    assert_eq!(in_flight["step"], "wait");

    // A fresh process finds the record and finishes the rollback.
    let sink = Collected::default();
    let pipeline = w.pipeline(&sink);
    let outcome = pipeline.resume(&d).await.expect("resumed");
    assert_eq!(
        outcome.result,
        RollbackResult::Succeeded,
        "{:#?}",
        outcome.steps
    );
    // The resume sends rollback_started again (a crash right after the
    // patch may have lost it); the daemon's delivery ledger, not this
    // bare collector, drops it where it was already delivered.
    assert_eq!(
        kinds(&sink),
        [EventKind::RollbackStarted, EventKind::RollbackSucceeded]
    );
    assert_eq!(w.json_patches(), [200], "exactly one template patch");
    let d = w.deployment().await;
    assert_eq!(image(&d), V1);
    assert_eq!(annotation(&d, IN_FLIGHT), None);
    assert!(
        pipeline.resume(&d).await.is_none(),
        "nothing left to resume"
    );
    // A new verdict now is refused: the cooldown holds across processes.
    let again = pipeline.run(verdict("still bad")).await;
    assert_eq!(again.result, RollbackResult::Refused);
    assert_eq!(w.json_patches(), [200]);
}

#[tokio::test]
async fn a_target_that_turns_bad_escalates_and_is_never_rolled_back_again() {
    let w = world("rollout_timeout = \"6s\"").await;
    w.sim.behaviours().set(
        V1,
        Behaviour {
            crash: Crash::CrashLoop,
            ..Default::default()
        },
    );
    let sink = Collected::default();
    let pipeline = w.pipeline(&sink);
    let outcome = pipeline
        .run(verdict("error ratio 30.2 % > max 5.0 %"))
        .await;
    assert_eq!(
        outcome.result,
        RollbackResult::Escalated,
        "{:#?}",
        outcome.steps
    );
    assert_eq!(
        kinds(&sink),
        [EventKind::RollbackStarted, EventKind::Escalation]
    );
    let escalation = &sink.all()[1];
    assert!(escalation.failed_step.is_some());
    assert!(
        escalation
            .error
            .as_deref()
            .unwrap_or("")
            .contains("revision 1 (v1)"),
        "{escalation:?}"
    );

    // The judge would now call v1 bad: the pipeline refuses, no loop.
    let again = pipeline.run(verdict("pods crash")).await;
    assert_eq!(again.result, RollbackResult::Refused, "{}", again.why());
    assert_eq!(
        w.json_patches(),
        [200],
        "one rollback patch, never a second"
    );
    assert_eq!(image(&w.deployment().await), V1);
}

#[tokio::test]
async fn each_reason_not_to_act_is_said_and_nothing_is_patched() {
    let w = world("cooldown = \"1m\"").await;
    let sink = Collected::default();
    let pipeline = w.pipeline(&sink);
    let just_now = format!("[\"{}\"]", jiff::Timestamp::now());
    let ten_minutes_ago = format!(
        "[\"{}\"]",
        jiff::Timestamp::now() - jiff::SignedDuration::from_mins(10)
    );
    let cases: Vec<(&str, Option<&str>, &str)> = vec![
        (
            "rollback-watchdog.io/paused",
            Some("true"),
            "takes no action",
        ),
        (
            IN_FLIGHT,
            Some(
                r#"{"id":"production/kailash-kaizen/r2/1","step":"wait","trigger":{"by":"verdict"},"reason":"x","from":{"revision":2,"pod_template_hash":"a","images":[]},"to":{"revision":1,"pod_template_hash":"b","images":[]},"backup":null,"started":"2026-01-01T00:00:00Z","generation":3}"#,
            ),
            "already in flight",
        ),
        ("argocd.argoproj.io/sync-wave", Some("1"), "Argo CD"),
        (ROLLBACKS, Some(&just_now), "cooldown"),
        (
            ROLLBACKS,
            Some(&ten_minutes_ago),
            "max_rollbacks_per_window",
        ),
    ];
    for (key, value, expect) in cases {
        w.annotate(key, value).await;
        if key.starts_with("argocd") {
            let patch = json!({"metadata": {"labels": {"app.kubernetes.io/instance": "kaizen"}}});
            w.deployments()
                .patch(
                    SEED_DEPLOYMENT,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .unwrap();
        }
        let outcome = pipeline.run(verdict("bad")).await;
        assert_eq!(outcome.result, RollbackResult::Refused, "{key}");
        assert!(outcome.why().contains(expect), "{key}: {}", outcome.why());
        w.annotate(key, None).await;
        if key.starts_with("argocd") {
            let patch = json!({"metadata": {"labels": {"app.kubernetes.io/instance": null}}});
            w.deployments()
                .patch(
                    SEED_DEPLOYMENT,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
                .unwrap();
        }
    }

    // spec.paused (kubectl rollout pause).
    let patch = json!({"spec": {"paused": true}});
    w.deployments()
        .patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();
    let outcome = pipeline.run(verdict("bad")).await;
    assert!(outcome.why().contains("spec.paused"), "{}", outcome.why());
    let patch = json!({"spec": {"paused": false}});
    w.deployments()
        .patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .unwrap();

    // An irreversible revision (its ReplicaSet says so): alert only.
    let rs: Api<ReplicaSet> = Api::namespaced(w.client.clone(), SEED_NAMESPACE);
    let v2_rs = rs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .find(|r| image_of_template(r.spec.as_ref().and_then(|s| s.template.as_ref())) == V2)
        .unwrap();
    let patch = json!({"metadata": {"annotations": {"rollback-watchdog.io/irreversible": "true"}}});
    rs.patch(
        &v2_rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();
    let outcome = pipeline.run(verdict("bad")).await;
    assert!(outcome.why().contains("irreversible"), "{}", outcome.why());
    let patch = json!({"metadata": {"annotations": {"rollback-watchdog.io/irreversible": null}}});
    rs.patch(
        &v2_rs.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .unwrap();

    // Dry run: validated, the patch reported, nothing changed.
    let mut request = verdict("error ratio 30.2 % > max 5.0 %");
    request.dry_run = true;
    let outcome = pipeline.run(request).await;
    assert_eq!(
        outcome.result,
        RollbackResult::WouldRollBack,
        "{}",
        outcome.why()
    );
    // On-call reads the change in words; machines get the patch itself.
    let changes = outcome.incident.changes.join("\n");
    assert!(
        changes.contains(&format!("image {V2} → {V1}")) && changes.contains("revision 2 → 1"),
        "{changes}"
    );
    assert!(
        changes.contains("change-cause: rollback-watchdog"),
        "{changes}"
    );
    assert!(
        !changes.contains("\"op\""),
        "raw JSON Patch in the words: {changes}"
    );
    assert_eq!(outcome.incident.patch, outcome.patch);
    assert_eq!(outcome.incident.patch[0]["op"], "test");
    assert!(outcome
        .incident
        .patch
        .iter()
        .any(|op| op["path"] == "/spec/template"));

    assert!(w.json_patches().is_empty(), "no rollback patch in any case");
    assert!(w.backups().await.is_empty(), "no backup either");
    assert_eq!(image(&w.deployment().await), V2);
    // Automatic refusals reach on-call, with the reason.
    let told = sink.all();
    let failed: Vec<_> = told
        .iter()
        .filter(|i| i.kind == EventKind::RollbackFailed)
        .collect();
    assert!(!failed.is_empty(), "on-call heard no refusal: {told:?}");
    assert!(failed
        .iter()
        .all(|i| i.failed_step.as_deref() == Some("validate")));
    assert_eq!(told.last().map(|i| i.kind), Some(EventKind::WouldRollBack));
    // Each refusal has its audit line.
    let refusals = w
        .audit_lines()
        .into_iter()
        .filter(|l| l["step"] == "validate" && l["outcome"] == "refused")
        .count();
    assert_eq!(refusals, 7);
}

#[tokio::test]
async fn a_follower_writes_nothing_and_a_marked_security_issue_is_rolled_back_and_unmarked() {
    let w = world("").await;
    let sink = Collected::default();

    // Not the leader: validated, then stopped before the first write.
    let ctx = Context::new(
        w.client.clone(),
        Arc::new(w.config.clone()),
        Arc::new(sink.clone()),
    )
    .expect("context")
    .with_may_write(Arc::new(|| false));
    let outcome = Pipeline::new(ctx).run(verdict("bad")).await;
    assert_eq!(outcome.result, RollbackResult::HandedOver);
    assert!(
        outcome.why().contains("not the leader"),
        "{}",
        outcome.why()
    );
    assert!(w.backups().await.is_empty());
    assert!(w.json_patches().is_empty());
    assert!(
        sink.all().is_empty(),
        "the leader tells on-call, not a follower"
    );

    // The runbook's security-issue path: a person marks the Deployment.
    w.annotate(rollback_watchdog::k8s::keys::ROLLBACK_TO, Some("previous"))
        .await;
    let d = w.deployment().await;
    let request = rollback_watchdog::pipeline::annotation_request(&d)
        .expect("a request")
        .expect("a valid request");
    let outcome = w.pipeline(&sink).run(request).await;
    assert_eq!(
        outcome.result,
        RollbackResult::Succeeded,
        "{:#?}",
        outcome.steps
    );
    let d = w.deployment().await;
    assert_eq!(image(&d), V1);
    assert_eq!(
        annotation(&d, rollback_watchdog::k8s::keys::ROLLBACK_TO),
        None,
        "the request is consumed by the same patch"
    );
    assert!(annotation(&d, "kubernetes.io/change-cause")
        .unwrap()
        .contains("(annotation)"));
    assert_eq!(w.json_patches(), [200]);
}

// ---- the CLI, through the built binary ----

async fn cli_async(w: &World, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.env("KUBECONFIG", w.sim.kubeconfig_path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env("USER", "alice")
        .arg("--config")
        .arg(&w.config_path)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the command finishes")
        .expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn the_cli_rolls_back_restores_and_shows_history_like_kubectl() {
    let w = world("cooldown = \"0s\"\nmax_rollbacks_per_window = 10").await;

    // Without --yes and without a terminal: refused, nothing changed.
    let out = cli_async(&w, &["rollback", "production/kailash-kaizen", "previous"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("pass --yes"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.json_patches().is_empty());
    assert_eq!(image(&w.deployment().await), V2);

    // previous --yes: the same pipeline and records.
    let out = cli_async(
        &w,
        &[
            "rollback",
            "production/kailash-kaizen",
            "previous",
            "--yes",
            "--reason",
            "security issue CVE-1",
        ],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("production/kailash-kaizen: succeeded"),
        "{stdout}"
    );
    assert!(
        text(&out.stderr).contains("updated"),
        "progress on stderr: {}",
        text(&out.stderr)
    );
    let d = w.deployment().await;
    assert_eq!(image(&d), V1);
    assert!(annotation(&d, "kubernetes.io/change-cause")
        .unwrap()
        .contains("(by alice, CLI)"));
    let first_backup = w
        .backups()
        .await
        .into_iter()
        .next()
        .expect("a backup")
        .name_any();
    assert!(w
        .audit_lines()
        .iter()
        .any(|l| l["step"] == "report" && l["details"]["trigger"]["user"] == "alice"));

    // An image tag, `set image` semantics on the only container.
    let out = cli_async(
        &w,
        &["rollback", "production/kailash-kaizen", "v1.2.3", "--yes"],
    )
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(image(&w.deployment().await), "kailash-kaizen:v1.2.3");
    assert_eq!(w.backups().await.len(), 2);

    // restore: the backed-up template (v2's) is back.
    let out = cli_async(&w, &["restore", &first_backup, "--yes"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let d = w.deployment().await;
    assert_eq!(image(&d), V2);
    assert_eq!(w.json_patches(), [200, 200, 200]);

    // history agrees with kubectl on the revisions, and shows the records.
    let out = cli_async(&w, &["history", "production/kailash-kaizen"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let ours = text(&out.stdout);
    let revisions = |s: &str| -> Vec<i64> {
        s.lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|w| w.parse().ok())
            .collect()
    };
    assert!(
        ours.contains("rolled-back-from") && ours.contains("Rollback records"),
        "{ours}"
    );
    assert!(ours.contains(&first_backup), "{ours}");
    require_kubectl();
    let theirs = kubectl_ok(
        &w.sim,
        &[
            "-n",
            SEED_NAMESPACE,
            "rollout",
            "history",
            "deploy/kailash-kaizen",
        ],
    )
    .await;
    assert!(!revisions(&ours).is_empty(), "{ours}");
    assert_eq!(
        revisions(&ours),
        revisions(&theirs),
        "ours:\n{ours}\nkubectl:\n{theirs}"
    );

    // validate: the checklist passes on the healthy current revision.
    let out = cli_async(&w, &["validate", "production/kailash-kaizen"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(text(&out.stdout).contains("passes the verification checklist"));

    // A Deployment that does not exist is named.
    let out = cli_async(&w, &["rollback", "production/nope", "previous", "--yes"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("production/nope: Deployment not found"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test]
async fn an_autoscaler_scaling_during_the_rollout_is_not_a_human_deploy() {
    let w = world("").await;
    let sink = Collected::default();
    let pipeline = w.pipeline(&sink);
    let mut plan = pipeline.plan(verdict("pods crash")).await.expect("valid");
    pipeline.backup(&mut plan).await.expect("backed up");
    pipeline.update(&mut plan).await.expect("patched");
    // An HPA scales the Deployment right after the patch: the generation
    // moves, the template does not.
    let d = w.deployment().await;
    let api: kube::Api<k8s_openapi::api::apps::v1::Deployment> = kube::Api::namespaced(
        w.sim.client().await.expect("client"),
        &d.metadata.namespace.clone().unwrap_or_default(),
    );
    api.patch_scale(
        &d.metadata.name.clone().unwrap_or_default(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(json!({"spec": {"replicas": 4}})),
    )
    .await
    .expect("scaled");
    let d = w.deployment().await;
    let outcome = pipeline.resume(&d).await.expect("resumed");
    assert_eq!(
        outcome.result,
        RollbackResult::Succeeded,
        "{:#?}",
        outcome.steps
    );
    let d = w.deployment().await;
    assert_eq!(image(&d), V1);
    assert_eq!(
        d.spec.as_ref().and_then(|s| s.replicas),
        Some(4),
        "the autoscaler's count is kept"
    );
    assert_eq!(w.json_patches(), [200], "exactly one template patch");
}

// ---- the runbook's rollback drill ----

/// JSON Patches of the Deployment: (query, status), dry runs included.
fn deployment_json_patches(w: &World) -> Vec<(String, u16)> {
    w.sim
        .request_log()
        .entries()
        .iter()
        .filter(|e| {
            e.verb == "patch"
                && e.path.ends_with(&format!("/deployments/{SEED_DEPLOYMENT}"))
                && e.content_type.contains("json-patch")
        })
        .map(|e| (e.query.clone(), e.status))
        .collect()
}

fn template_of(d: &Deployment) -> Value {
    serde_json::to_value(d.spec.as_ref().map(|s| &s.template)).expect("template")
}

#[tokio::test]
async fn the_drill_runs_every_step_that_changes_nothing_and_the_api_server_checks_the_patch() {
    let w = world("").await;
    let before = w.deployment().await;
    // On-call's sink, a receiver on loopback.
    let (url, got) = support::binary::receiver().await;
    let mut config = std::fs::read_to_string(&w.config_path).expect("config");
    config.push_str(&format!(
        "\n[[notify]]\nname = \"oncall\"\nkind = \"webhook\"\nurl = \"{url}\"\ntimeout = \"2s\"\ndeadline = \"5s\"\n"
    ));
    std::fs::write(&w.config_path, config).expect("write config");

    let out = cli_async(&w, &["drill", "production/kailash-kaizen"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for line in [
        "PASS  validate",
        "PASS  backup",
        "PASS  patch dry run",
        "  signals ",
        "PASS  notify",
        "oncall: delivered",
        "drill of production/kailash-kaizen passed",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    assert!(stdout.contains("revision 1 (v1)"), "{stdout}");
    // Each step says how long it took.
    assert!(
        stdout
            .lines()
            .filter(|l| l.starts_with("  PASS") || l.starts_with("  WARN"))
            .all(|l| l.contains(" s  ")),
        "{stdout}"
    );

    // The workload is as it was: template and generation.
    let after = w.deployment().await;
    assert_eq!(template_of(&after), template_of(&before));
    assert_eq!(after.metadata.generation, before.metadata.generation);
    assert_eq!(image(&after), V2);
    assert_eq!(annotation(&after, IN_FLIGHT), None);
    // The API server was asked: one JSON Patch, as a dry run, accepted.
    let patches = deployment_json_patches(&w);
    assert_eq!(patches.len(), 1, "{patches:?}");
    assert!(patches[0].0.contains("dryRun=All"), "{patches:?}");
    assert_eq!(patches[0].1, 200);
    // On-call got one message, marked as a test.
    let bodies = got.lock().expect("lock").clone();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["test"], true);
    // The drill's backup was read back and deleted: none is left to count
    // against the retention or to show in `history`.
    assert!(w.backups().await.is_empty());
}

#[tokio::test]
async fn a_drill_that_would_fail_says_which_step_and_exits_1() {
    let w = world("").await;
    // A paused rollout: Validate refuses, so the patch is never tried.
    let patch = json!({"spec": {"paused": true}});
    w.deployments()
        .patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .expect("pause");
    let out = cli_async(&w, &["drill", "production/kailash-kaizen"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("FAIL  validate"), "{stdout}");
    assert!(stdout.contains("spec.paused"), "{stdout}");
    assert!(stdout.contains("FAILED: 3 steps would fail"), "{stdout}");
    assert!(deployment_json_patches(&w).is_empty());
}

#[tokio::test]
async fn a_live_drill_needs_yes_then_rolls_back_and_forward_and_ends_on_the_original_template() {
    let w = world("").await;
    let before = w.deployment().await;

    let out = cli_async(&w, &["drill", "production/kailash-kaizen", "--live"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("without --yes"),
        "{}",
        text(&out.stderr)
    );
    assert!(deployment_json_patches(&w).is_empty(), "nothing was sent");

    let out = cli_async(
        &w,
        &["drill", "production/kailash-kaizen", "--live", "--yes"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for line in [
        "PASS  validate",
        "PASS  roll back",
        "PASS  roll forward",
        "PASS  original",
        "time to roll back: ",
        "time to recover: ",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let after = w.deployment().await;
    assert_eq!(image(&after), V2);
    assert_eq!(template_of(&after), template_of(&before));
    assert_eq!(annotation(&after, IN_FLIGHT), None);
    // Two real patches (back, forward), both accepted, no dry run.
    let patches = deployment_json_patches(&w);
    assert_eq!(patches.len(), 2, "{patches:?}");
    assert!(patches
        .iter()
        .all(|(q, status)| *status == 200 && !q.contains("dryRun")));
    // Both are recorded as a drill; their backups stay (they record real changes).
    let backups = w.backups().await;
    assert_eq!(backups.len(), 2);
    assert!(annotation(&after, "kubernetes.io/change-cause")
        .unwrap_or_default()
        .contains("rollback drill"));
}

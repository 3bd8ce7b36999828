//! The start-up self-check as an operator meets it: `run` refuses to
//! start when the ServiceAccount lacks a permission and says which rule to
//! add; the RBAC shipped in deploy/ grants exactly what the check asks
//! for; and under that RBAC, with the sim answering SelfSubjectAccessReviews
//! from the rendered Roles, the watchdog rolls a bad deploy back.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use rollback_watchdog::config::{Config, Loader, MissingSecrets};
use rollback_watchdog::decide::judge::Verdict;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::pipeline::RollbackResult;
use rollback_watchdog::runtime::app::{App, PipelineOptions, Record};
use rollback_watchdog::runtime::selfcheck::{self, Permission, Requirement};
use rollback_watchdog::sim::rbac::service_account_rules;
use rollback_watchdog::sim::{
    self, AccessRule, SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_NAMESPACE,
    WATCHDOG_NAMESPACE,
};
use serde_json::Value;

mod support;
use support::binary::free_port;
use support::kubectl::KUBECTL;

/// The ServiceAccount deploy/ runs the watchdog as.
const SERVICE_ACCOUNT: (&str, &str) = ("rollback-watchdog", "rollback-watchdog");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The config deploy/ ships (its ConfigMap's source), else the example
/// it is copied from.
fn deploy_config_path() -> PathBuf {
    let shipped = repo("deploy/watchdog.toml");
    if shipped.exists() {
        shipped
    } else {
        repo("config/watchdog.toml")
    }
}

fn load(path: &Path) -> Config {
    match Loader::from_file(path)
        .missing_secrets(MissingSecrets::Warn)
        .load()
    {
        Ok(l) => l.config,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

fn yaml_documents(text: &str) -> Vec<Value> {
    serde_saphyr::from_multiple::<Value>(text)
        .unwrap_or_else(|e| panic!("not YAML: {e}\n{text}"))
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// What `kubectl apply -k deploy/` would create; only deploy/rbac.yaml
/// while there is no kustomization yet.
fn rendered_deploy() -> Vec<Value> {
    let dir = repo("deploy");
    if !dir.join("kustomization.yaml").exists() {
        let text = std::fs::read_to_string(dir.join("rbac.yaml")).expect("deploy/rbac.yaml");
        return yaml_documents(&text);
    }
    let mut child = std::process::Command::new(KUBECTL)
        .arg("kustomize")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{KUBECTL} kustomize does not start: {e}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("kubectl kustomize deploy/ did not finish in 60s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/ failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_documents(&String::from_utf8_lossy(&out.stdout))
}

/// The rules the watchdog's ServiceAccount gets from deploy/.
fn shipped_rules() -> Vec<AccessRule> {
    let (ns, name) = SERVICE_ACCOUNT;
    service_account_rules(&rendered_deploy(), ns, name)
        .unwrap_or_else(|e| panic!("deploy/ RBAC: {e}"))
}

fn as_permission(r: &AccessRule) -> Permission {
    Permission::new(&r.verb, &r.group, &r.resource, r.namespace.as_deref())
}

#[test]
fn the_rbac_in_deploy_grants_exactly_what_the_self_check_requires() {
    let config = load(&deploy_config_path());
    let required: Vec<Requirement> = selfcheck::required(&config);
    let needed: BTreeSet<Permission> = required.iter().map(|r| r.permission.clone()).collect();
    let granted: BTreeSet<Permission> = shipped_rules().iter().map(as_permission).collect();
    let missing: Vec<String> = required
        .iter()
        .filter(|r| !granted.contains(&r.permission))
        .map(|r| format!("  - {}: needed to {}", r.permission, r.why()))
        .collect();
    let extra: Vec<String> = granted
        .difference(&needed)
        .map(|p| format!("  + {p}"))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "deploy/ RBAC for ServiceAccount {}/{} and `selfcheck::required({})` differ.\n\
         Missing from deploy/ (the watchdog would refuse to start):\n{}\n\
         Granted but never used (least privilege says remove):\n{}\n\
         Rules that grant the missing ones:\n{}",
        SERVICE_ACCOUNT.0,
        SERVICE_ACCOUNT.1,
        deploy_config_path().display(),
        missing.join("\n"),
        extra.join("\n"),
        selfcheck::rules_to_add(
            required
                .iter()
                .map(|r| &r.permission)
                .filter(|p| !granted.contains(p))
        )
    );
    // The shipped config's namespaces, and nothing on secrets.
    assert!(needed
        .iter()
        .any(|p| p.namespace.as_deref() == Some("production") && p.verb == "patch"));
    assert!(!granted.iter().any(|p| p.resource == "secrets"));
}

/// A config for the sim's seed: the shipped config's namespaces, with
/// Prometheus on a closed port (the pod signal alone judges a crash loop).
fn sim_config(dir: &Path, prometheus_port: u16) -> PathBuf {
    let path = dir.join("watchdog.toml");
    let text = format!(
        r#"
[watchdog]
cluster_name = "sim"
interval = "1s"
namespace = "{WATCHDOG_NAMESPACE}"
audit_log = "{audit}"
opt_in_namespaces = ["{SEED_NAMESPACE}"]

[prometheus]
url = "http://127.0.0.1:{prometheus_port}"
timeout = "1s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:{admin}"

[defaults]
watch_window = "60s"
failure_threshold = 3
verify_window = "4s"
rollout_timeout = "60s"
immediate_bad_when_all_pods_crash = true

[[targets]]
namespace = "{SEED_NAMESPACE}"
name = "{SEED_DEPLOYMENT}"
"#,
        audit = dir.join("audit.jsonl").display(),
        admin = free_port(),
    );
    std::fs::write(&path, text).expect("write config");
    path
}

async fn seeded_sim() -> SimCluster {
    SimCluster::start(SimOptions {
        seed: true,
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("sim")
}

/// The binary with `args`, against the cluster in `kubeconfig`, bounded
/// in time; (exit code, stdout, stderr).
async fn watchdog(
    kubeconfig: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> (Option<i32>, String, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("ROLLBACK_WATCHDOG_CONFIG")
        .env_remove("RUST_LOG")
        .envs(env.iter().copied())
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("rollback-watchdog {args:?} still running after 60s"))
        .expect("the binary starts");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_start_without_patch_on_deployments_and_names_the_rule_to_add() {
    let sim = seeded_sim().await;
    sim.access()
        .deny(AccessRule::new("patch", "apps", "deployments", None));
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = free_port();
    let config = sim_config(dir.path(), closed);
    let config = config.to_str().expect("utf-8 path");
    let (code, _, stderr) =
        watchdog(sim.kubeconfig_path(), &["--config", config, "run"], &[]).await;

    assert_eq!(code, Some(1), "{stderr}");
    for needle in [
        "lacks 1 permission",
        "patch deployments.apps in namespace \"production\": needed to roll a bad revision back",
        "# a Role in namespace \"production\", bound to the watchdog's ServiceAccount by a RoleBinding in \"production\"",
        "- apiGroups: [\"apps\"]",
        "  resources: [\"deployments\"]",
        "  verbs: [\"patch\"]",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from:\n{stderr}");
    }
    // Only the one that is missing is listed.
    assert!(!stderr.contains("list deployments.apps"), "{stderr}");
    // A silent Prometheus is a warning, not the reason it stopped.
    assert!(
        stderr.contains(&format!(
            "warning: Prometheus at http://127.0.0.1:{closed} is unreachable"
        )),
        "{stderr}"
    );
    // It stopped at start-up: nothing but access reviews reached the API
    // server, so nothing was watched, let alone patched.
    let requests = sim.request_log().entries();
    assert!(!requests.is_empty());
    let others: Vec<_> = requests
        .iter()
        .filter(|e| !e.path.ends_with("/selfsubjectaccessreviews"))
        .map(|e| format!("{} {} {}", e.verb, e.path, e.query))
        .collect();
    assert!(others.is_empty(), "{others:#?}");
    assert!(!requests.iter().any(|e| e.verb == "patch"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_check_names_the_api_server_it_cannot_ask() {
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = free_port();
    let kubeconfig = dir.path().join("kubeconfig");
    let server = format!("http://127.0.0.1:{closed}");
    std::fs::write(
        &kubeconfig,
        serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "gone", "cluster": {"server": server}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
            "current-context": "gone",
        })
        .to_string(),
    )
    .expect("kubeconfig");
    let config = sim_config(dir.path(), free_port());
    let (code, _, stderr) = watchdog(
        &kubeconfig,
        &["--config", config.to_str().expect("utf-8"), "self-check"],
        &[],
    )
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("the API server at {server}"))
            && stderr.contains("cannot create a SelfSubjectAccessReview"),
        "{stderr}"
    );
}

async fn wait_rolled_out(api: &Api<Deployment>, image: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = api.get(SEED_DEPLOYMENT).await.expect("get");
        let status = d.status.clone().unwrap_or_default();
        if first_image(&d) == image
            && status.updated_replicas == Some(3)
            && status.available_replicas == Some(3)
            && status.replicas == Some(3)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{image} never rolled out: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_the_shipped_rbac_a_crash_looping_deploy_is_rolled_back() {
    let sim = seeded_sim().await;
    let client = sim.client().await.expect("client");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    wait_rolled_out(&deployments, sim::SEED_IMAGE).await;

    // From here on the sim's one user holds exactly what deploy/ grants the
    // watchdog's ServiceAccount, for requests and for access reviews.
    sim.access().allow_only(shipped_rules());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = Arc::new(load(&sim_config(dir.path(), free_port())));

    // The start-up check passes, answered from the rendered Roles...
    let mut err: Vec<u8> = Vec::new();
    let passed = selfcheck::at_startup(&config, &client, &mut err).await;
    let err = String::from_utf8_lossy(&err);
    assert_eq!(passed, Ok(()), "{err}");
    assert!(err.contains("warning: Prometheus at"), "{err}");
    // ...which do say no to what deploy/ does not grant.
    let beyond = vec![
        Requirement {
            permission: Permission::new("get", "", "secrets", Some(SEED_NAMESPACE)),
            why: vec![],
        },
        Requirement {
            permission: Permission::new("patch", "apps", "deployments", Some("default")),
            why: vec![],
        },
        Requirement {
            permission: Permission::new("list", "apps", "deployments", None),
            why: vec![],
        },
    ];
    let answers = selfcheck::check_access(&client, beyond, selfcheck::REVIEW_TIMEOUT)
        .await
        .expect("reviews answered");
    assert_eq!(answers.len(), 3, "one answer per permission asked");
    assert!(
        answers.iter().all(|c| !c.allowed),
        "{:?}",
        answers
            .iter()
            .map(|c| (c.requirement.permission.to_string(), c.allowed))
            .collect::<Vec<_>>()
    );

    // The watchdog, acting.
    let app = App::new(config.clone(), client.clone());
    let notifier = Arc::new(app.notifier(Record::AuditLog).await.expect("notifiers"));
    let mut daemon = app
        .daemon()
        .pipeline(PipelineOptions::new(notifier).poll_interval(Duration::from_millis(250)))
        .build()
        .expect("daemon");
    daemon
        .wait_synced(Duration::from_secs(30))
        .await
        .expect("caches sync under the shipped RBAC");
    daemon.tick(jiff::Timestamp::now()).await;

    // A bad deploy: v2 crash-loops.
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "app", "image": "kailash-kaizen:v2-crash"}]}}}});
    deployments
        .patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        )
        .await
        .expect("set image");
    let mut verdicts = Vec::new();
    for _ in 0..60 {
        let evaluations = daemon.tick(jiff::Timestamp::now()).await;
        let verdict = evaluations
            .iter()
            .find(|e| e.target.name == SEED_DEPLOYMENT)
            .and_then(|e| e.verdict());
        verdicts.push(verdict.map(|v| v.as_str().to_owned()));
        if verdict == Some(Verdict::Bad) {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        verdicts.last().cloned().flatten().as_deref(),
        Some(Verdict::Bad.as_str()),
        "{verdicts:?}"
    );
    for _ in 0..60 {
        daemon.tick(jiff::Timestamp::now()).await;
        if !daemon.pipelines_running() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    daemon.wait_pipelines(Duration::from_secs(30)).await;
    daemon.tick(jiff::Timestamp::now()).await;
    let outcomes = daemon.take_outcomes();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(
        outcomes[0].result,
        RollbackResult::Succeeded,
        "{}",
        outcomes[0].why()
    );

    // What on-call sees: v1's template back, its backup, the audit trail,
    // the Events; and not one request refused on the way.
    let d = deployments.get(SEED_DEPLOYMENT).await.expect("get");
    assert_eq!(first_image(&d), sim::SEED_IMAGE);
    let (backups, _) = sim
        .store()
        .list(&sim::store::CONFIGMAPS, Some(WATCHDOG_NAMESPACE));
    assert!(
        backups.iter().any(|cm| {
            cm.pointer("/metadata/name")
                .and_then(Value::as_str)
                .is_some_and(|n| n.starts_with(&format!("rb-{SEED_DEPLOYMENT}-")))
                && cm
                    .pointer(&format!(
                        "/data/{}",
                        rollback_watchdog::pipeline::backup::KEY_DEPLOYMENT
                    ))
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.contains("kailash-kaizen:v2-crash"))
        }),
        "{backups:#?}"
    );
    let audit = std::fs::read_to_string(dir.path().join("audit.jsonl")).expect("audit log");
    let lines: Vec<Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["step"] == "update" && l["outcome"] == "ok"),
        "{audit}"
    );
    assert!(
        lines.iter().any(|l| l["step"] == "report"
            && l["target"] == format!("{SEED_NAMESPACE}/{SEED_DEPLOYMENT}")),
        "{audit}"
    );
    let (events, _) = sim
        .store()
        .list(&sim::store::EVENTS_V1, Some(SEED_NAMESPACE));
    assert!(
        events
            .iter()
            .any(|e| e["reason"].as_str() == Some("RevisionBad")),
        "{events:#?}"
    );
    let refused: Vec<_> = sim
        .request_log()
        .entries()
        .into_iter()
        .filter(|e| e.status == 403)
        .map(|e| format!("{} {} {}", e.verb, e.path, e.query))
        .collect();
    assert!(
        refused.is_empty(),
        "refused under the shipped RBAC: {refused:#?}"
    );
}

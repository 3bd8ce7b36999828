//! One `rollback-watchdog run` (leader election off) against a sim with
//! `prod/web` (3 × `web:v1`) and a webhook receiver for on-call: for the
//! crash, fault and soak suites, which restart the process and count
//! patches, backups, audit lines and notices.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use rollback_watchdog::k8s::keys::{IN_FLIGHT, MANAGED_BY};
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::sim::{Behaviours, SimCluster};
use serde_json::json;

use super::binary::{events_received, free_port, receiver, status, Running};
use super::watch::{sim_with_web, NAME};

pub const NS: &str = "prod";

pub struct Cluster {
    pub sim: SimCluster,
    pub client: Client,
    pub hook: String,
    pub got: Arc<Mutex<Vec<serde_json::Value>>>,
    pub dir: tempfile::TempDir,
    /// Where the watchdog's Prometheus is; a closed port by default.
    pub prometheus: String,
    /// Added at the end of `[defaults]`; by default the pod signal alone
    /// judges (error rate and latency off).
    pub defaults: String,
}

impl Cluster {
    pub async fn start() -> Cluster {
        Self::start_with_hook(None).await
    }

    /// With on-call at `hook` (a receiver of the test's own) if given.
    pub async fn start_with_hook(
        hook: Option<(String, Arc<Mutex<Vec<serde_json::Value>>>)>,
    ) -> Cluster {
        let (sim, client) = sim_with_web(NS, Behaviours::builtin()).await;
        let (hook, got) = match hook {
            Some(h) => h,
            None => receiver().await,
        };
        let c = Cluster {
            sim,
            client,
            hook,
            got,
            dir: tempfile::tempdir().expect("tempdir"),
            prometheus: format!("http://127.0.0.1:{}", free_port()),
            defaults:
                "[defaults.error_rate]\nenabled = false\n[defaults.latency]\nenabled = false\n"
                    .to_owned(),
        };
        c.wait_deployment("v1 rolled out", |d| {
            first_image(d) == "web:v1"
                && d.status.as_ref().and_then(|s| s.available_replicas) == Some(3)
        })
        .await;
        c
    }

    /// One watchdog's config (the same audit log for every start).
    pub fn config(&self, admin_port: u16) -> PathBuf {
        let path = self.dir.path().join(format!("watchdog-{admin_port}.toml"));
        let text = format!(
            r#"
[watchdog]
cluster_name = "sim"
interval = "1s"
namespace = "rollback-watchdog"
audit_log = "{audit}"
shutdown_grace = "5s"

[prometheus]
url = "{prometheus}"
timeout = "1s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:{admin_port}"

[defaults]
watch_window = "10m"
failure_threshold = 3
verify_window = "3s"
rollout_timeout = "90s"
blind_alert_after = "10m"
{defaults}

[[targets]]
namespace = "{NS}"
name = "{NAME}"

[[notify]]
kind = "webhook"
name = "oncall"
url = "{hook}"
deadline = "60s"
timeout = "2s"
"#,
            audit = self.audit_path().display(),
            prometheus = self.prometheus,
            defaults = self.defaults,
            hook = self.hook,
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    /// Starts the watchdog; its admin port.
    pub fn run(&self, envs: &[(&str, &str)]) -> (Running, u16) {
        let port = free_port();
        let config = self.config(port);
        let mut all = vec![("POD_NAME", "watchdog-0")];
        all.extend_from_slice(envs);
        (
            Running::run(self.sim.kubeconfig_path(), &config, &all),
            port,
        )
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.audit_path())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// `rollback` + `outcome` of every report line (one per decision).
    pub fn reports(&self) -> Vec<String> {
        self.audit()
            .iter()
            .filter(|l| l["step"] == "report")
            .map(|l| format!("{} {}", l["rollback"], l["outcome"]))
            .collect()
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    pub async fn deploy(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
        // Retried: the test's own requests may meet injected faults too.
        let mut tries = 0;
        while let Err(e) = self
            .deployments()
            .patch(NAME, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
        {
            tries += 1;
            assert!(tries < 50, "cannot set the image {image}: {e}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_deployment(
        &self,
        what: &str,
        done: impl Fn(&Deployment) -> bool,
    ) -> Deployment {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d = self.deployments().get(NAME).await;
            if let Ok(d) = &d {
                if done(d) {
                    return d.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {:?}",
                d.map(|d| d.status)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until `web` is back on `web:v1` with its in-flight
    /// record cleared, and on-call has heard `rollback_succeeded`; `why`
    /// says what the test was doing if not.
    pub async fn wait_rolled_back_and_told(&self, why: impl Fn() -> String) {
        self.wait_deployment("rolled back to web:v1 and closed", |d| {
            first_image(d) == "web:v1" && !d.annotations().contains_key(IN_FLIGHT)
        })
        .await;
        wait_heard(
            &self.got,
            "rollback_succeeded",
            Duration::from_secs(30),
            why,
        )
        .await;
    }

    /// The backups of `web` in the watchdog's namespace.
    pub async fn backups(&self) -> usize {
        let api = Api::<ConfigMap>::namespaced(self.client.clone(), "rollback-watchdog");
        let mut tries = 0;
        let list = loop {
            match api.list(&ListParams::default()).await {
                Ok(l) => break l,
                Err(e) => {
                    tries += 1;
                    assert!(tries < 50, "cannot list the backups: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        list.items
            .iter()
            .filter(|cm| cm.labels().contains_key(MANAGED_BY))
            .filter(|cm| cm.name_any().contains(NAME) && !cm.name_any().ends_with("-notified"))
            .count()
    }

    /// Template patches of `web` the API server accepted (json-patch, 2xx).
    pub fn accepted_template_patches(&self) -> usize {
        self.sim
            .request_log()
            .entries()
            .iter()
            .filter(|e| e.verb == "patch" && e.path.ends_with(&format!("/deployments/{NAME}")))
            .filter(|e| e.content_type.contains("json-patch") && e.status < 300)
            .count()
    }
}

/// Waits until the watchdog on `port` is ready and watches a target.
pub async fn wait_ready(port: u16, run: &mut Running) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if status(port)
            .await
            .is_some_and(|s| s.ready && !s.targets.is_empty())
        {
            return;
        }
        run.assert_alive();
        assert!(Instant::now() < deadline, "never ready: {}", run.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits, bounded by `within`, until on-call (the receiver `got`) has
/// heard a notice of `kind`; `why` says what the test was doing when it
/// did not (the watchdog's log, the step).
pub async fn wait_heard(
    got: &Arc<Mutex<Vec<serde_json::Value>>>,
    kind: &str,
    within: Duration,
    why: impl Fn() -> String,
) {
    let deadline = Instant::now() + within;
    while count(&events_received(got), kind) == 0 {
        assert!(
            Instant::now() < deadline,
            "on-call never heard {kind}: {:?}; {}",
            events_received(got),
            why()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn count(events: &[String], kind: &str) -> usize {
    events.iter().filter(|e| *e == kind).count()
}

//! A scenario for the run loop: a simulated cluster with one Deployment
//! `web` in its own namespace (so many scenarios share one Prometheus), a
//! watchdog config for it, and the real `Daemon` ticking once a second.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rollback_watchdog::config::{Config, Loader, MissingSecrets};
use rollback_watchdog::runtime::admin::AdminState;
use rollback_watchdog::runtime::app::{App, PipelineOptions, Record};
use rollback_watchdog::runtime::daemon::{Daemon, Evaluation};
use rollback_watchdog::sim::prometheus::{PrometheusOptions, PrometheusServer};
use rollback_watchdog::sim::{self, Behaviours, SimClock, SimCluster, SimOptions};
use serde_json::json;

use super::prom::SharedPrometheus;

pub const NAME: &str = "web";

/// Which Prometheus a scenario's watchdog asks.
pub enum Prom<'a> {
    /// This URL (the binary's shared server, or a closed port), taken to
    /// scrape every second.
    Url(&'a str),
    /// A shared server ([`super::prom::shared_every`]), with the sim
    /// registered on it and its scrape interval known to the scenario.
    Shared(&'a SharedPrometheus),
    /// A server of its own, scraping only this sim every second (a test can
    /// stop it).
    Own,
    /// A server of its own, scraping only this sim at this interval.
    OwnEvery(Duration),
}

pub struct Scenario {
    pub sim: SimCluster,
    /// The Deployment's name: [`NAME`] unless started with
    /// [`Scenario::start_named`].
    pub name: String,
    pub config: Arc<Config>,
    pub own_prometheus: Option<PrometheusServer>,
    pub prometheus_url: String,
    /// How often that Prometheus scrapes the pods.
    pub scrape_interval: Duration,
    pub ns: String,
    pub client: Client,
    pub daemon: Daemon,
    pub admin: AdminState,
    pub audit_dir: tempfile::TempDir,
}

/// The watchdog config every scenario starts from; `extra` is appended
/// (more sections, or `[targets.*]` tables for the one target).
pub fn config_toml(ns: &str, prometheus_url: &str, audit: &str, extra: &str) -> String {
    config_toml_named(ns, NAME, prometheus_url, audit, extra)
}

/// [`config_toml`] for a Deployment called `name`.
pub fn config_toml_named(
    ns: &str,
    name: &str,
    prometheus_url: &str,
    audit: &str,
    extra: &str,
) -> String {
    format!(
        r#"
[watchdog]
cluster_name = "test"
interval = "1s"
namespace = "rollback-watchdog"
audit_log = "{audit}"

[prometheus]
url = "{prometheus_url}"
timeout = "2s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:0"

[defaults]
watch_window = "60s"
failure_threshold = 3
blind_alert_after = "5s"

[defaults.error_rate]
window = "10s"
baseline_lookback = "10s"

[defaults.latency]
window = "10s"
baseline_lookback = "10s"

[[targets]]
namespace = "{ns}"
name = "{name}"
{extra}
"#
    )
}

pub fn load(toml: &str) -> Config {
    match Loader::from_toml(toml)
        .missing_secrets(MissingSecrets::Warn)
        .load()
    {
        Ok(loaded) => loaded.config,
        Err(e) => panic!("test config invalid: {e}\n{toml}"),
    }
}

impl Scenario {
    /// A sim with `web` (3 × `web:v1`) rolled out in namespace `ns`, and a
    /// daemon whose caches have synced. `{service}` in `extra` is replaced
    /// with the URL of the Service in front of `web`.
    pub async fn start(ns: &str, prom: Prom<'_>, behaviours: Behaviours, extra: &str) -> Scenario {
        Self::start_named(ns, NAME, prom, behaviours, extra).await
    }

    /// [`Scenario::start`] with the Deployment called `name` (its image is
    /// still `web:v1`, so the sim's behaviours apply as for `web`).
    pub async fn start_named(
        ns: &str,
        name: &str,
        prom: Prom<'_>,
        behaviours: Behaviours,
        extra: &str,
    ) -> Scenario {
        Self::start_on(ns, name, prom, behaviours, extra, None).await
    }

    /// [`Scenario::start`] on a sim whose watch events lag as `lag` says,
    /// so the daemon's caches see Deployment and ReplicaSet events out of
    /// order.
    pub async fn start_lagged(
        ns: &str,
        prom: Prom<'_>,
        behaviours: Behaviours,
        extra: &str,
        lag: sim::WatchLag,
    ) -> Scenario {
        Self::start_on(ns, NAME, prom, behaviours, extra, Some(lag)).await
    }

    async fn start_on(
        ns: &str,
        name: &str,
        prom: Prom<'_>,
        behaviours: Behaviours,
        extra: &str,
        lag: Option<sim::WatchLag>,
    ) -> Scenario {
        let (sim, client) = sim_lagged(ns, name, behaviours, lag).await;
        let every_second = Duration::from_secs(1);
        let (own_prometheus, prometheus_url, scrape_interval) = match prom {
            Prom::Url(url) => (None, url.to_string(), every_second),
            Prom::Shared(shared) => {
                shared.register(sim.scrape_target_handle());
                (None, shared.url.clone(), shared.scrape_interval)
            }
            Prom::Own => own_prometheus(&sim, every_second).await,
            Prom::OwnEvery(every) => own_prometheus(&sim, every).await,
        };
        let prometheus_url = prometheus_url.as_str();
        let audit_dir = tempfile::tempdir().expect("tempdir");
        let audit = audit_dir.path().join("audit.jsonl");
        // `{service}` in `extra`: the URL of the Service in front of web.
        let service = sim.service_url(ns, name).unwrap_or_default();
        let extra = extra.replace("{service}", &service);
        let config = Arc::new(load(&config_toml_named(
            ns,
            name,
            prometheus_url,
            &audit.display().to_string(),
            &extra,
        )));
        let app = App::new(config.clone(), client.clone());
        let admin = app.admin().clone();
        let daemon = app.daemon().build().expect("daemon");
        daemon
            .wait_synced(Duration::from_secs(30))
            .await
            .expect("caches sync");
        let scenario = Scenario {
            sim,
            name: name.to_string(),
            config,
            prometheus_url: prometheus_url.to_string(),
            scrape_interval,
            own_prometheus,
            ns: ns.to_string(),
            client,
            daemon,
            admin,
            audit_dir,
        };
        scenario.wait_rolled_out("web:v1").await;
        scenario.wait_cached().await;
        scenario
    }

    /// Waits until the daemon's watch caches hold what the API says is
    /// rolled out: web's current ReplicaSet and its 3 pods with addresses.
    /// The first tick judges from them; the API alone can be ahead.
    pub async fn wait_cached(&self) {
        let d = self.deployments().get(&self.name).await.expect("get web");
        let uid = d.metadata.uid.clone().expect("a uid");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let snap = self.daemon.caches().snapshot();
            let hash = snap
                .deployment(&self.ns, &self.name)
                .filter(|cached| cached.metadata.generation == d.metadata.generation)
                .and_then(|_| {
                    snap.replicasets_of(&uid)
                        .iter()
                        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas) > Some(0))
                        .find_map(|rs| rs.labels().get("pod-template-hash").cloned())
                });
            let pods = hash.as_deref().map_or(0, |h| {
                snap.pods_with_hash(&self.ns, h)
                    .iter()
                    .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
                    .count()
            });
            if pods == 3 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the caches never held web's 3 pods: ReplicaSet {hash:?}, {pods} pods with an IP"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Rebuilds the daemon so that it acts: the rollback pipeline (polling
    /// fast) with the real notifiers of the config.
    pub async fn with_pipeline(&mut self) {
        self.with_pipeline_guarded(Arc::new(|| true)).await;
    }

    /// Like [`Self::with_pipeline`], with the pipeline asking `may_write`
    /// before each write (leadership as the pipeline sees it); the loop
    /// itself still decides as leader.
    pub async fn with_pipeline_guarded(&mut self, may_write: Arc<dyn Fn() -> bool + Send + Sync>) {
        let app = App::new(self.config.clone(), self.client.clone());
        self.admin = app.admin().clone();
        let notifier = Arc::new(app.notifier(Record::AuditLog).await.expect("notifiers"));
        self.daemon = app
            .daemon()
            .pipeline(
                PipelineOptions::new(notifier)
                    .poll_interval(Duration::from_millis(250))
                    .may_write(may_write),
            )
            .build()
            .expect("daemon");
        self.daemon
            .wait_synced(Duration::from_secs(30))
            .await
            .expect("caches sync");
        self.wait_cached().await;
    }

    pub fn audit_lines(&self) -> Vec<serde_json::Value> {
        let text =
            std::fs::read_to_string(self.audit_dir.path().join("audit.jsonl")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Sets the image of container `app`, like `kubectl set image`.
    pub async fn deploy(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
        self.deployments()
            .patch(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
            .expect("set image");
    }

    pub async fn wait_rolled_out(&self, image: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = self.deployments().get(&self.name).await.expect("get web");
            let status = d.status.clone().unwrap_or_default();
            let current = d
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .and_then(|s| s.containers.first())
                .and_then(|c| c.image.clone());
            // The controller has seen this spec: without it, the status
            // of the previous rollout reads as this one's.
            let observed = status.observed_generation >= d.metadata.generation;
            if current.as_deref() == Some(image)
                && observed
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

    /// Waits until Prometheus has had a request rate for the namespace's
    /// pods for a few seconds, so a baseline taken at a rollout that starts
    /// now (timestamps are whole seconds) finds data. The rate's window
    /// holds at least three scrapes.
    pub async fn wait_scraped(&self) {
        let client = prometheus_http_query::Client::try_from(self.prometheus_url.as_str())
            .expect("prom client");
        let window = (self.scrape_interval * 3).max(Duration::from_secs(10));
        let query = format!(
            r#"sum(rate(http_requests_total{{namespace="{}"}}[{}s]))"#,
            self.ns,
            window.as_secs_f64().ceil()
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let three_seconds_ago = jiff::Timestamp::now().as_second() - 3;
            if let Ok(result) = client
                .query(query.as_str())
                .at(three_seconds_ago)
                .get()
                .await
            {
                if let Some(v) = result.data().as_vector() {
                    if v.first().is_some_and(|s| s.sample().value() > 0.0) {
                        return;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped {}",
                self.ns
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One tick of the real loop; the evaluation of `web`.
    pub async fn tick(&mut self) -> Evaluation {
        let evaluations = self.daemon.tick(jiff::Timestamp::now()).await;
        let e = evaluations
            .into_iter()
            .find(|e| e.target.name == self.name)
            .expect("web is evaluated");
        if std::env::var_os("RW_TEST_TRACE").is_some() {
            eprintln!(
                "[{}] {:?} {:?} kept {:?} {:#?} {:#?}",
                self.ns,
                e.verdict(),
                e.state.window,
                e.state.kept,
                e.results.iter().map(|r| r.describe()).collect::<Vec<_>>(),
                e.judgement.as_ref().map(|j| j
                    .reasons
                    .iter()
                    .map(|r| r.sentence.clone())
                    .collect::<Vec<_>>())
            );
        }
        e
    }

    /// Ticks once a second, up to `max` ticks, until `done` says so; returns
    /// every evaluation made.
    pub async fn tick_until(
        &mut self,
        max: usize,
        mut done: impl FnMut(&Evaluation) -> bool,
    ) -> Vec<Evaluation> {
        let mut seen = Vec::new();
        for _ in 0..max {
            let e = self.tick().await;
            let stop = done(&e);
            seen.push(e);
            if stop {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        seen
    }

    /// Goes on ticking while the pipelines the loop started run, waits for
    /// them, ticks once more (the loop collects them), and returns their
    /// outcomes.
    pub async fn finish_pipelines(&mut self) -> Vec<rollback_watchdog::pipeline::RollbackOutcome> {
        for _ in 0..60 {
            self.tick().await;
            if !self.daemon.pipelines_running() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.daemon.wait_pipelines(Duration::from_secs(60)).await;
        self.tick().await;
        self.daemon.take_outcomes()
    }

    /// Ticks (at most `max`) until the verdict is Bad, asserting it got
    /// there; every evaluation made.
    pub async fn tick_until_bad(&mut self, max: usize) -> Vec<Evaluation> {
        let seen = self
            .tick_until(max, |e| {
                e.verdict() == Some(rollback_watchdog::decide::judge::Verdict::Bad)
            })
            .await;
        assert_eq!(
            seen.last().and_then(|e| e.verdict()),
            Some(rollback_watchdog::decide::judge::Verdict::Bad),
            "never Bad; verdicts: {:?}; last results: {:#?}",
            verdicts(&seen),
            seen.iter()
                .rev()
                .take(2)
                .map(|e| e.results.iter().map(|r| r.describe()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        );
        seen
    }

    /// The Events recorded on `web`, as (reason, note).
    pub fn events(&self) -> Vec<(String, String)> {
        let (items, _) = self
            .sim
            .store()
            .list(&sim::store::EVENTS_V1, Some(&self.ns));
        items
            .iter()
            .filter(|e| {
                e.pointer("/regarding/name").and_then(|v| v.as_str()) == Some(self.name.as_str())
            })
            .map(|e| {
                (
                    e["reason"].as_str().unwrap_or_default().to_string(),
                    e["note"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    }
}

/// A Prometheus of a scenario's own, scraping only `sim` every `every`.
async fn own_prometheus(
    sim: &SimCluster,
    every: Duration,
) -> (Option<PrometheusServer>, String, Duration) {
    let server = PrometheusServer::start(PrometheusOptions::new(sim.prometheus_config(every)))
        .await
        .expect("prometheus starts");
    let url = server.url().to_string();
    (Some(server), url, every)
}

/// A sim (20× time) with namespaces `ns` and `rollback-watchdog`, and
/// `ns/web` created with 3 × `web:v1` (not yet rolled out).
pub async fn sim_with_web(ns: &str, behaviours: Behaviours) -> (SimCluster, Client) {
    sim_with(ns, NAME, behaviours).await
}

/// [`sim_with_web`] with the Deployment called `name`.
pub async fn sim_with(ns: &str, name: &str, behaviours: Behaviours) -> (SimCluster, Client) {
    sim_lagged(ns, name, behaviours, None).await
}

/// [`sim_with`], its watch events delayed as `lag` says.
async fn sim_lagged(
    ns: &str,
    name: &str,
    behaviours: Behaviours,
    lag: Option<sim::WatchLag>,
) -> (SimCluster, Client) {
    let sim = SimCluster::start(SimOptions {
        clock: SimClock::new(20.0),
        behaviours,
        watch_lag: lag,
        ..Default::default()
    })
    .await
    .expect("sim starts");
    let client = sim.client().await.expect("client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [ns, "rollback-watchdog"] {
        let body: Namespace =
            serde_json::from_value(json!({"metadata": {"name": name}})).expect("ns");
        namespaces
            .create(&PostParams::default(), &body)
            .await
            .expect("create namespace");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let body: Deployment =
        serde_json::from_value(sim::seed_deployment(name, "web:v1", 3)).expect("deployment");
    deployments
        .create(&PostParams::default(), &body)
        .await
        .expect("create web");
    (sim, client)
}

/// The watchdog's template patches of `web` (its Update step) in `sim`'s
/// request log.
pub fn template_patches(sim: &SimCluster) -> usize {
    template_patches_of(sim, NAME)
}

/// [`template_patches`] of the Deployment called `name`.
pub fn template_patches_of(sim: &SimCluster, name: &str) -> usize {
    sim.request_log()
        .entries()
        .iter()
        .filter(|e| e.verb == "patch" && e.path.ends_with(&format!("/deployments/{name}")))
        .filter(|e| e.content_type.contains("json-patch"))
        .count()
}

/// The verdicts of a run, as text, for assertion messages.
pub fn verdicts(seen: &[Evaluation]) -> Vec<String> {
    seen.iter()
        .map(|e| {
            e.verdict()
                .map(|v| v.as_str().to_string())
                .unwrap_or_else(|| "-".into())
        })
        .collect()
}

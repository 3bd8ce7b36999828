//! `rollback-watchdog demo`: the whole story on the embedded simulated
//! cluster, in under a minute. It runs the real run loop, judge, rollback
//! pipeline, notifier and admin server (nothing is faked for the show)
//! against the sim, a real Prometheus when one is installed, and a loopback
//! Slack receiver, and prints what happens as a timeline. It must never reach beyond
//! 127.0.0.1, and must leave nothing running when it returns, whatever the
//! outcome: every wait is bounded.

use std::collections::HashMap;
use std::fmt::Display;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::config::{Config, ConfigError, Loader, MissingSecrets};
use crate::decide::judge::Verdict;
use crate::observe::revision::first_image;
use crate::pipeline::{self, RollbackError, RollbackOutcome, RollbackResult};
use crate::report::incident::{Collected, Incident, IncidentSink};
use crate::report::notify::{DeliveryOutcome, DeliveryResult, Notifier, NotifyError};
use crate::runtime::admin::{self, AdminError, AdminServer};
use crate::runtime::app::{App, AppError, PipelineOptions, Record};
use crate::runtime::daemon::{Daemon, DaemonError, Evaluation};
use crate::signals::Outcome;
use crate::sim::prometheus::{self, PrometheusOptions, PrometheusServer};
use crate::sim::{
    Behaviours, SimClock, SimCluster, SimError, SimOptions, SEED_DEPLOYMENT, SEED_IMAGE,
    SEED_NAMESPACE, WATCHDOG_NAMESPACE,
};

/// Set to `1` (or pass `--no-prometheus`) to run the demo as if Prometheus
/// were not installed: the pod and health signals only, and a crash-looping
/// v2 instead of one that answers errors.
pub const NO_PROMETHEUS_ENV: &str = "ROLLBACK_WATCHDOG_DEMO_NO_PROMETHEUS";

/// The log filter when neither `--log` nor `RUST_LOG` says otherwise: the
/// timeline on stdout tells the story, stderr only carries trouble. The run
/// loop's own warnings (each failing signal on each tick, the verdict) are
/// exactly what the timeline shows, so they are left out.
pub const LOG_FILTER: &str = "warn,rollback_watchdog::runtime::daemon=error";

/// The bad release when Prometheus measures errors: 30 % of requests 5xx.
pub const V2_ERRORS: &str = "kailash-kaizen:v2-errors";
/// The bad release without Prometheus: every pod in CrashLoopBackOff.
pub const V2_CRASH: &str = "kailash-kaizen:v2-crash";

/// How much faster than real time the simulated cluster runs.
const TIME_SCALE: f64 = 20.0;
/// Short enough for v1 to become known-good quickly, long enough for the
/// bad v2 to reach `failure_threshold` consecutive failing ticks inside it
/// (Prometheus needs a few scrapes of the new pods before the error ratio
/// has a value: about 6 s, then 3 ticks).
const WATCH_WINDOW: &str = "15s";
const TICK: Duration = Duration::from_secs(1);
/// How often the audit log, the Slack receiver and the delivery outcomes
/// are read, so each shows up on the timeline as it happens.
const FEED_POLL: Duration = Duration::from_millis(100);
/// How often the main loop checks for a finished pipeline between ticks.
const POLL: Duration = Duration::from_millis(200);
const SYNC_LIMIT: Duration = Duration::from_secs(30);
const KNOWN_GOOD_LIMIT: Duration = Duration::from_secs(30);
/// From the deploy of v2 to a finished (verified) rollback.
const ROLLBACK_LIMIT: Duration = Duration::from_secs(50);
/// One tick of the loop may not take longer than this.
const TICK_LIMIT: Duration = Duration::from_secs(10);
/// How long the demo waits for Slack messages still in flight.
const DELIVERY_LIMIT: Duration = Duration::from_secs(5);
/// A safety net over the whole story; each step has its own bound.
const OVERALL_LIMIT: Duration = Duration::from_secs(150);
/// Prometheus is killed after this whatever happens (its guard also kills
/// it as soon as this process is gone).
const PROMETHEUS_LIFETIME: Duration = Duration::from_secs(180);
/// Where the watchdog's admin server listens: a free loopback port.
const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("the simulated cluster did not start: {0}")]
    Sim(#[from] SimError),
    #[error("cannot start the local Slack receiver on 127.0.0.1: {0}")]
    Receiver(#[source] std::io::Error),
    #[error("cannot start the watchdog's admin server on 127.0.0.1: {0}")]
    Admin(#[source] std::io::Error),
    #[error("cannot create the demo's temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("the demo's own config does not load (a bug in the demo): {0}")]
    Config(#[source] ConfigError),
    #[error("cannot start the notifier: {0}")]
    Notify(#[source] NotifyError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("cannot build the rollback pipeline: {0}")]
    Pipeline(#[source] RollbackError),
    #[error(transparent)]
    Watchdog(AppError),
    #[error("the simulated API server refused to {what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the simulated API server did not answer within {limit:?} while trying to {what}")]
    KubeTimeout { what: String, limit: Duration },
    #[error("{0}")]
    TimedOut(String),
    #[error("the rollback did not succeed: it ended {result} ({why}); steps: {steps}")]
    NotRolledBack {
        result: &'static str,
        why: String,
        steps: String,
    },
    #[error("the rollback reported success, but {0}")]
    NotVerified(String),
}

impl From<AppError> for DemoError {
    /// The demo's own words for what it assembles itself.
    fn from(e: AppError) -> DemoError {
        match e {
            AppError::Notify(e) => DemoError::Notify(e),
            AppError::Pipeline(e) => DemoError::Pipeline(e),
            AppError::Daemon(e) => DemoError::Daemon(e),
            other => DemoError::Watchdog(other),
        }
    }
}

/// What the demo can be told.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Behave as if Prometheus were not installed.
    pub no_prometheus: bool,
}

/// What the demo showed, for callers that want more than the exit code.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub with_prometheus: bool,
    pub bad_image: String,
    pub time_to_detect: Option<f64>,
    pub time_to_recover: Option<f64>,
    pub backup: String,
    pub audit_log: PathBuf,
    pub final_image: String,
    pub slack_messages: usize,
    /// The rollback counter's line as `/metrics` served it at the end.
    pub rollbacks_metric: String,
    /// The whole `/metrics` scrape, kept next to the audit log.
    pub metrics_file: PathBuf,
}

/// Runs the demo, printing the timeline on `out`. Ok only when the bad
/// revision was rolled back and the rollback verified. Prometheus, the
/// Slack receiver and the simulated cluster are stopped before it returns.
pub async fn run(
    options: DemoOptions,
    out: Box<dyn Write + Send>,
) -> Result<DemoReport, DemoError> {
    let tl = Timeline::new(out);
    tl.plain("rollback-watchdog demo: a bad deploy is detected, rolled back, verified and told to on-call,");
    tl.plain("on a simulated cluster, by the real run loop and pipeline. Times are seconds since the start.");
    tl.plain("");
    let mut parts = Parts::default();
    let result = match tokio::time::timeout(OVERALL_LIMIT, story(&tl, &options, &mut parts)).await {
        Ok(r) => r,
        Err(_) => Err(DemoError::TimedOut(format!(
            "the demo did not finish within {}s",
            OVERALL_LIMIT.as_secs()
        ))),
    };
    parts.shutdown().await;
    match &result {
        Ok(_) => tl.plain("\nEverything the demo started has stopped. Exit code 0."),
        Err(_) => tl.plain("\nEverything the demo started has stopped."),
    }
    result
}

/// What must be stopped at the end, whatever happened.
#[derive(Default)]
struct Parts {
    sim: Option<SimCluster>,
    prometheus: Option<PrometheusServer>,
    receiver: Option<Receiver>,
    notifier: Option<Arc<Notifier>>,
    admin: Option<AdminServer>,
}

impl Parts {
    async fn shutdown(&mut self) {
        if let Some(n) = self.notifier.take() {
            n.shutdown(Duration::from_secs(2)).await;
        }
        if let Some(a) = self.admin.take() {
            a.stop(Duration::from_secs(3)).await;
        }
        if let Some(mut p) = self.prometheus.take() {
            p.stop().await;
        }
        if let Some(r) = self.receiver.take() {
            r.stop().await;
        }
        if let Some(sim) = self.sim.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), sim.shutdown()).await;
        }
    }
}

async fn story(
    tl: &Timeline,
    options: &DemoOptions,
    parts: &mut Parts,
) -> Result<DemoReport, DemoError> {
    let stage = set_stage(tl, options, parts).await?;
    let with_prometheus = stage.prometheus_url.is_some();
    let mut w = start_watchdog(tl, &stage, parts).await?;
    let mut watch = Watcher::new(w.config.defaults.failure_threshold);
    let feeds = Feeds::start(
        tl,
        AuditTail::new(&w.audit_path),
        stage.messages.clone(),
        w.deliveries.clone(),
    );
    wait_known_good(tl, &mut w.daemon, &mut watch).await?;

    // 4. The bad v2.
    let bad = if with_prometheus { V2_ERRORS } else { V2_CRASH };
    let what = if with_prometheus {
        "30 % of its requests answer 5xx"
    } else {
        "every pod crash-loops"
    };
    deploy(&stage.client, bad).await?;
    let deployed = Instant::now();
    tl.say(format!(
        "deploying {bad} ({what}), like `kubectl set image deployment/{SEED_DEPLOYMENT} app={bad}`"
    ));
    let outcome = wait_rolled_back(tl, &mut w.daemon, &mut watch, bad, deployed).await?;
    feeds.poll(tl);
    tl.say(format!(
        "rollback finished: {}",
        outcome
            .steps
            .iter()
            .map(|s| format!("{} {}", s.step.as_str(), s.outcome.as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    ));

    // Every decision handed to the notifier has been dealt with (bounded).
    let emitted = w.collected.all();
    let wait_until = Instant::now() + DELIVERY_LIMIT;
    while lock(&w.deliveries).len() < emitted.len() && Instant::now() < wait_until {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let feeds = feeds.stop(tl).await;
    if feeds.shown_messages == 0 {
        return Err(DemoError::NotVerified(
            "no Slack message reached the local receiver".into(),
        ));
    }

    // 6. Read back what a user would check, and the summary.
    let scrape = scrape_metrics(&w.metrics_url, &w.dir).await?;
    summary(
        tl,
        &stage.client,
        &outcome,
        &emitted,
        &feeds,
        &scrape,
        bad,
        with_prometheus,
        deployed,
        &watch,
    )
    .await
}

/// What the watchdog runs against: the simulated cluster, Prometheus (or
/// not) and the Slack receiver.
struct Stage {
    client: kube::Client,
    prometheus_url: Option<String>,
    receiver_url: String,
    messages: Arc<Mutex<Vec<Value>>>,
}

/// Step 1: the cluster, Prometheus (or why not), the Slack receiver.
async fn set_stage(
    tl: &Timeline,
    options: &DemoOptions,
    parts: &mut Parts,
) -> Result<Stage, DemoError> {
    let sim = parts.sim.insert(
        SimCluster::start(SimOptions {
            seed: true,
            clock: SimClock::new(TIME_SCALE),
            behaviours: Behaviours::builtin(),
            ..Default::default()
        })
        .await?,
    );
    let client = sim.client().await?;
    tl.say(format!(
        "simulated cluster up at {} (time runs {TIME_SCALE}x faster): {SEED_NAMESPACE}/{SEED_DEPLOYMENT}, 3 replicas of {SEED_IMAGE}",
        sim.url()
    ));
    let prometheus_config = sim.prometheus_config(Duration::from_secs(1));
    let prometheus_url = if options.no_prometheus {
        tl.say(format!(
            "Prometheus: left out on request (--no-prometheus / {NO_PROMETHEUS_ENV}=1): judging from the pod and health signals only"
        ));
        None
    } else if !prometheus::available() {
        tl.say("Prometheus is not installed (no `prometheus` and `promtool` on PATH): judging from the pod and health signals only. `apt-get install -y prometheus` enables the error-ratio and latency signals.");
        None
    } else {
        let mut opts = PrometheusOptions::new(prometheus_config);
        opts.max_lifetime = PROMETHEUS_LIFETIME;
        match PrometheusServer::start(opts).await {
            Ok(server) => {
                let url = server.url().to_string();
                tl.say(format!(
                    "Prometheus at {url}, scraping every app pod each second"
                ));
                parts.prometheus = Some(server);
                Some(url)
            }
            Err(e) => {
                tl.say(format!("Prometheus is installed but did not start ({e}): judging from the pod and health signals only"));
                None
            }
        }
    };
    let receiver = parts.receiver.insert(Receiver::start().await?);
    tl.say(format!(
        "Slack receiver listening at {} (stands in for hooks.slack.com)",
        receiver.url
    ));
    Ok(Stage {
        client,
        prometheus_url,
        receiver_url: receiver.url.clone(),
        messages: receiver.messages.clone(),
    })
}

/// The watchdog as the demo runs it, and what the demo reads of it.
struct Watchdog {
    config: Arc<Config>,
    daemon: Daemon,
    /// Every decision handed to the notifier.
    collected: Collected,
    /// The notifier's delivery outcomes.
    deliveries: Arc<Mutex<Vec<DeliveryOutcome>>>,
    /// The demo's directory, kept after it: the audit log, the scrape.
    dir: PathBuf,
    audit_path: PathBuf,
    metrics_url: String,
}

/// Step 2, the watchdog: config, notifier, admin server, run loop with
/// its pipeline, assembled as `run` assembles it.
async fn start_watchdog(
    tl: &Timeline,
    stage: &Stage,
    parts: &mut Parts,
) -> Result<Watchdog, DemoError> {
    let dir = tempfile::Builder::new()
        .prefix("rollback-watchdog-demo-")
        .tempdir()
        .map_err(DemoError::TempDir)?;
    // Kept after the demo, for the reader to look at.
    let dir = dir.keep();
    let audit_path = dir.join("audit.jsonl");
    let text = config_toml(
        stage.prometheus_url.as_deref().unwrap_or(&closed_port()),
        stage.prometheus_url.is_some(),
        &audit_path,
        &stage.receiver_url,
    );
    let config = Loader::from_toml(text)
        .env(Vec::<(String, String)>::new())
        .missing_secrets(MissingSecrets::Warn)
        .load()
        .map_err(DemoError::Config)?
        .config;
    let config = Arc::new(config);
    let app = App::new(config.clone(), stage.client.clone());
    // One process, no election: it acts, as `run` does standalone.
    app.metrics().leader.set(1);
    let deliveries: Arc<Mutex<Vec<DeliveryOutcome>>> = Arc::default();
    let observed = deliveries.clone();
    let notifier = Arc::new(app.notifier(Record::InMemory(Arc::new(
        move |o: &DeliveryOutcome| lock(&observed).push(o.clone()),
    )))?);
    parts.notifier = Some(notifier.clone());
    let collected = Collected::default();
    let sink: Arc<dyn IncidentSink> =
        Arc::new(Fanout(vec![Arc::new(collected.clone()), notifier.clone()]));
    let admin_server =
        parts
            .admin
            .insert(
                admin::start(LOOPBACK, app.admin().clone())
                    .await
                    .map_err(|e| match e {
                        AdminError::Bind { source, .. } | AdminError::LocalAddr(source) => {
                            DemoError::Admin(source)
                        }
                    })?,
            );
    let metrics_url = format!("{}/metrics", admin_server.url());
    tl.say(format!(
        "the watchdog's admin endpoints at {} (/readyz, /status, /metrics) while the demo runs",
        admin_server.url()
    ));
    let progress_tl = tl.clone();
    let last_progress = Mutex::new(String::new());
    let progress = Arc::new(move |p: &pipeline::Progress| {
        let line = p.to_string();
        let mut last = last_progress.lock().unwrap_or_else(|e| e.into_inner());
        if *last != line {
            progress_tl.say(format!("  rollout {line}"));
            *last = line;
        }
    });
    let daemon = app
        .daemon()
        .pipeline(
            PipelineOptions::new(sink)
                .poll_interval(Duration::from_millis(250))
                .progress(progress),
        )
        .build()?;
    daemon.wait_synced(SYNC_LIMIT).await?;
    let policy = &config.defaults;
    tl.say(format!(
        "watchdog running: ticks every {}, watch window {WATCH_WINDOW}, Bad after {} failing ticks in a row; signals: {}",
        humantime::format_duration(config.watchdog.interval),
        policy.failure_threshold,
        if stage.prometheus_url.is_some() {
            "error ratio and latency (Prometheus), pods, health of each pod"
        } else {
            "pods, health of each pod"
        }
    ));
    Ok(Watchdog {
        config,
        daemon,
        collected,
        deliveries,
        dir,
        audit_path,
        metrics_url,
    })
}

/// Step 3: v1 becomes known-good.
async fn wait_known_good(
    tl: &Timeline,
    daemon: &mut Daemon,
    watch: &mut Watcher,
) -> Result<(), DemoError> {
    let limit = Instant::now() + KNOWN_GOOD_LIMIT;
    loop {
        let e = tick(daemon).await?;
        watch.observe(tl, &e);
        if e.state.known_good.as_ref().is_some_and(|k| k.revision == 1) {
            return Ok(());
        }
        if Instant::now() >= limit {
            return Err(DemoError::TimedOut(format!(
                "v1 did not become known-good within {}s (last verdict: {}); the watchdog never saw a whole healthy window",
                KNOWN_GOOD_LIMIT.as_secs(),
                e.verdict().map_or("none".to_string(), |v| v.to_string())
            )));
        }
        tokio::time::sleep(TICK).await;
    }
}

/// Step 5: the loop judges the bad release, the pipeline rolls it back;
/// what happens is printed as it happens. Ok only for a verified rollback.
async fn wait_rolled_back(
    tl: &Timeline,
    daemon: &mut Daemon,
    watch: &mut Watcher,
    bad: &str,
    deployed: Instant,
) -> Result<RollbackOutcome, DemoError> {
    let limit = deployed + ROLLBACK_LIMIT;
    let mut next_tick = Instant::now();
    let outcome: RollbackOutcome = loop {
        if Instant::now() >= next_tick {
            next_tick = Instant::now() + TICK;
            let e = tick(daemon).await?;
            watch.observe(tl, &e);
            if daemon.pipelines_running() && !watch.pipeline_seen {
                watch.pipeline_seen = true;
                tl.say("rollback pipeline started: validate -> backup -> update -> wait -> verify -> audit -> notify");
            }
            if let Some(o) = daemon.take_outcomes().into_iter().next() {
                break o;
            }
            if e.verdict() == Some(Verdict::Degraded) && !daemon.pipelines_running() {
                return Err(DemoError::TimedOut(format!(
                    "{bad} turned bad only after its {WATCH_WINDOW} observation window closed (verdict Degraded), so the watchdog reported it and, as designed, did not roll back; this machine was too slow for the demo's short window"
                )));
            }
        }
        if Instant::now() >= limit {
            daemon.wait_pipelines(Duration::from_secs(5)).await;
            if let Some(o) = daemon.take_outcomes().into_iter().next() {
                break o;
            }
            return Err(DemoError::TimedOut(format!(
                "{bad} was not rolled back within {}s of its deploy (last verdict: {}); the watchdog did not finish a rollback",
                ROLLBACK_LIMIT.as_secs(),
                watch.last_verdict()
            )));
        }
        tokio::time::sleep(POLL).await;
    };
    if outcome.result != RollbackResult::Succeeded {
        return Err(DemoError::NotRolledBack {
            result: result_word(outcome.result),
            why: outcome.why(),
            steps: outcome
                .steps
                .iter()
                .map(|s| format!("{} {}: {}", s.step.as_str(), s.outcome.as_str(), s.summary))
                .collect::<Vec<_>>()
                .join("; "),
        });
    }
    Ok(outcome)
}

/// What `/metrics` said at the end of the story.
struct Scrape {
    url: String,
    /// The rollback counter's line.
    rollbacks: String,
    file: PathBuf,
}

/// Scrapes the watchdog's own `/metrics` as `curl` would (the Prometheus
/// text format), keeps it in `dir`, and checks that it counts exactly the
/// one rollback the demo made.
async fn scrape_metrics(url: &str, dir: &Path) -> Result<Scrape, DemoError> {
    let scrape_failed = |e: &dyn Display| DemoError::NotVerified(format!("GET {url} failed: {e}"));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| scrape_failed(&e))?;
    let text = client
        .get(url)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| scrape_failed(&e))?
        .text()
        .await
        .map_err(|e| scrape_failed(&e))?;
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).map_err(|e| {
        DemoError::NotVerified(format!("cannot keep the scrape in {}: {e}", file.display()))
    })?;
    let series = format!(
        "rollback_watchdog_rollbacks_total{{target=\"{SEED_NAMESPACE}/{SEED_DEPLOYMENT}\",outcome=\"succeeded\"}}"
    );
    let rollbacks = text
        .lines()
        .find(|l| l.split_once(' ').is_some_and(|(name, _)| name == series))
        .ok_or_else(|| DemoError::NotVerified(format!("{url} has no {series}")))?
        .to_string();
    if !rollbacks.ends_with(" 1") {
        return Err(DemoError::NotVerified(format!(
            "{url} counts other than one rollback: {rollbacks}"
        )));
    }
    Ok(Scrape {
        url: url.to_string(),
        rollbacks,
        file,
    })
}

/// A server task that stops gracefully when told, or is aborted after 3 s.
struct Served<T> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Served<T> {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

async fn tick(daemon: &mut Daemon) -> Result<Evaluation, DemoError> {
    let evaluations = tokio::time::timeout(TICK_LIMIT, daemon.tick(Timestamp::now()))
        .await
        .map_err(|_| {
            DemoError::TimedOut(format!(
                "one tick of the run loop took longer than {}s",
                TICK_LIMIT.as_secs()
            ))
        })?;
    evaluations
        .into_iter()
        .find(|e| e.target.namespace == SEED_NAMESPACE && e.target.name == SEED_DEPLOYMENT)
        .ok_or_else(|| {
            DemoError::NotVerified(format!(
                "the run loop does not watch {SEED_NAMESPACE}/{SEED_DEPLOYMENT}"
            ))
        })
}

/// `kubectl set image`: what a person deploying v2 does.
async fn deploy(client: &kube::Client, image: &str) -> Result<(), DemoError> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    let what = format!("set the image of {SEED_NAMESPACE}/{SEED_DEPLOYMENT} to {image}");
    bounded(
        &what,
        api.patch(
            SEED_DEPLOYMENT,
            &PatchParams::default(),
            &Patch::Strategic(&patch),
        ),
    )
    .await
    .map(|_| ())
}

async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, DemoError> {
    let limit = Duration::from_secs(10);
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(source)) => Err(DemoError::Kube {
            what: what.to_string(),
            source,
        }),
        Err(_) => Err(DemoError::KubeTimeout {
            what: what.to_string(),
            limit,
        }),
    }
}

#[allow(clippy::too_many_arguments)]
async fn summary(
    tl: &Timeline,
    client: &kube::Client,
    outcome: &RollbackOutcome,
    emitted: &[Incident],
    feeds: &Feeds,
    scrape: &Scrape,
    bad: &str,
    with_prometheus: bool,
    deployed: Instant,
    watch: &Watcher,
) -> Result<DemoReport, DemoError> {
    let incident = &outcome.incident;
    let ReadBack {
        final_image,
        backup,
        saved,
        saved_image,
        blocklisted,
    } = read_back(client, incident, bad).await?;

    let detect = incident.time_to_detect().or_else(|| {
        watch
            .bad_at
            .map(|t| t.duration_since(deployed).as_secs_f64())
    });
    let recover = incident.time_to_recover();
    let secs = |s: Option<f64>| s.map_or("unknown".to_string(), |s| format!("{s:.1}s"));
    let (from, to) = (
        describe_revision(incident.from.as_ref()),
        describe_revision(incident.to.as_ref()),
    );
    let audit = &feeds.audit;
    let slack_messages = feeds.shown_messages;
    let told = told(emitted, feeds);
    let audit_lines = audit.lines.len();
    let audit_steps: Vec<&str> = audit.lines.iter().map(|l| l.step.as_str()).collect();

    tl.plain("");
    tl.plain("Summary");
    let row = |k: &str, v: String| tl.plain(format!("  {k:<16} {v}"));
    row(
        "result",
        format!(
            "rolled back and verified: {SEED_NAMESPACE}/{SEED_DEPLOYMENT} runs {SEED_IMAGE} again"
        ),
    );
    row(
        "signals",
        if with_prometheus {
            "Prometheus (error ratio, latency), pods, per-pod health".into()
        } else {
            "pods and per-pod health (no Prometheus)".into()
        },
    );
    row(
        "time to detect",
        format!("{} (rollout of {bad} -> verdict Bad)", secs(detect)),
    );
    row(
        "time to recover",
        format!("{} (verdict Bad -> rollback verified)", secs(recover)),
    );
    row("from", from);
    row("to", to);
    row("reason", incident.reason.clone());
    row(
        "backed up",
        format!(
            "ConfigMap {backup}: the full Deployment as it was before the rollback ({saved_image}, resourceVersion {}{}) and the rollback record",
            saved.metadata.resource_version.clone().unwrap_or_default(),
            if saved.status.is_some() { ", status included" } else { "" }
        ),
    );
    row(
        "blocklisted",
        match blocklisted {
            Some(entry) => format!(
                "revision {} ({bad}): a re-deploy of it is flagged and judged at the first failing tick",
                entry.revision
            ),
            None => "nothing (unexpected)".into(),
        },
    );
    row(
        "notifications",
        format!(
            "{slack_messages} Slack message(s) received by the local receiver; decisions told: {}",
            told.join(", ")
        ),
    );
    row(
        "audit log",
        format!(
            "{} ({audit_lines} lines: {}); kept for you to read",
            audit.path.display(),
            audit_steps.join(", ")
        ),
    );
    row(
        "metrics",
        format!(
            "{} (from {}; the whole scrape is in {})",
            scrape.rollbacks,
            scrape.url,
            scrape.file.display()
        ),
    );
    row(
        "final image",
        format!("{final_image} (the Deployment's template, read back from the cluster)"),
    );
    Ok(DemoReport {
        with_prometheus,
        bad_image: bad.to_string(),
        time_to_detect: detect,
        time_to_recover: recover,
        backup,
        audit_log: audit.path.clone(),
        final_image,
        slack_messages,
        rollbacks_metric: scrape.rollbacks.clone(),
        metrics_file: scrape.file.clone(),
    })
}

/// What the demo read back from the cluster after the rollback.
struct ReadBack {
    /// The Deployment's image now.
    final_image: String,
    /// The backup ConfigMap, as NAMESPACE/NAME.
    backup: String,
    /// The Deployment as the backup holds it.
    saved: Deployment,
    saved_image: String,
    blocklisted: Option<crate::observe::blocklist::Entry>,
}

/// Reads back what a user would check: the Deployment runs v1 again, the
/// backup holds the bad Deployment, and the bad revision is blocklisted.
async fn read_back(
    client: &kube::Client,
    incident: &Incident,
    bad: &str,
) -> Result<ReadBack, DemoError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), SEED_NAMESPACE);
    let d = bounded(
        &format!("read {SEED_NAMESPACE}/{SEED_DEPLOYMENT}"),
        deployments.get(SEED_DEPLOYMENT),
    )
    .await?;
    let final_image = first_image(&d);
    if final_image != SEED_IMAGE {
        return Err(DemoError::NotVerified(format!(
            "the Deployment's template runs {final_image}, not {SEED_IMAGE}"
        )));
    }

    // The backup: the full v2 Deployment and the rollback record.
    let backup = incident
        .backup
        .clone()
        .ok_or_else(|| DemoError::NotVerified("the incident names no backup ConfigMap".into()))?;
    let (backup_ns, backup_name) = backup
        .split_once('/')
        .unwrap_or((WATCHDOG_NAMESPACE, backup.as_str()));
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), backup_ns);
    let cm = bounded(
        &format!("read the backup ConfigMap {backup}"),
        configmaps.get(backup_name),
    )
    .await?;
    let data = cm.data.unwrap_or_default();
    let saved: Option<Deployment> = data
        .get("deployment.json")
        .and_then(|s| serde_json::from_str(s).ok());
    let Some(saved) = saved else {
        return Err(DemoError::NotVerified(format!(
            "the backup ConfigMap {backup} holds no readable deployment.json"
        )));
    };
    let saved_image = first_image(&saved);
    if saved_image != bad {
        return Err(DemoError::NotVerified(format!(
            "the backup ConfigMap {backup} holds a Deployment running {saved_image}, not {bad}"
        )));
    }
    let bad_hash = incident
        .from
        .as_ref()
        .map(|f| f.pod_template_hash.clone())
        .unwrap_or_default();
    let blocklisted = crate::observe::blocklist::is_blocklisted(&d, &bad_hash, &[bad.to_string()]);
    Ok(ReadBack {
        final_image,
        backup,
        saved,
        saved_image,
        blocklisted,
    })
}

/// `revision N (images, pod-template-hash H, known-good)`.
fn describe_revision(r: Option<&crate::report::incident::RevisionRef>) -> String {
    r.map_or("unknown".to_string(), |r| {
        let mark = if r.known_good { ", known-good" } else { "" };
        format!(
            "revision {} ({}, pod-template-hash {}{mark})",
            r.revision,
            r.images.join(", "),
            r.pod_template_hash
        )
    })
}

/// Each decision told, with what became of its delivery.
fn told(emitted: &[Incident], feeds: &Feeds) -> Vec<String> {
    emitted
        .iter()
        .map(|i| {
            let how = feeds
                .deliveries
                .iter()
                .find(|d| d.incident_id == i.id && d.kind == i.kind)
                .map_or("no delivery outcome yet", |d| d.result.label());
            format!("{} {how}", i.kind.as_str())
        })
        .collect()
}

fn result_word(result: RollbackResult) -> &'static str {
    match result {
        RollbackResult::Succeeded => "succeeded",
        RollbackResult::Refused => "refused",
        RollbackResult::WouldRollBack => "as a dry run",
        RollbackResult::Conflict => "in a conflict",
        RollbackResult::Failed => "failed",
        RollbackResult::Escalated => "escalated",
        RollbackResult::HandedOver => "handed over to the next leader",
    }
}

/// A loopback port nothing listens on: where a Prometheus would be.
fn closed_port() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(9);
    format!("http://127.0.0.1:{port}")
}

/// The watchdog's config for the demo: the shipped defaults with short
/// windows, one target, the local Slack receiver as the only sink.
fn config_toml(prometheus_url: &str, metrics: bool, audit: &Path, slack_url: &str) -> String {
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    format!(
        r#"
[watchdog]
cluster_name = "demo"
interval = "1s"
namespace = "{WATCHDOG_NAMESPACE}"
audit_log = {audit}

[prometheus]
url = {prometheus}
timeout = "2s"

[leader_election]
enabled = false

[admin]
listen = "127.0.0.1:0"

[defaults]
watch_window = "{WATCH_WINDOW}"
failure_threshold = 3
verify_window = "5s"
rollout_timeout = "60s"
cooldown = "1m"

[defaults.error_rate]
enabled = {metrics}
window = "10s"
baseline_lookback = "10s"

[defaults.latency]
enabled = {metrics}
window = "10s"
baseline_lookback = "10s"

[[targets]]
namespace = "{SEED_NAMESPACE}"
name = "{SEED_DEPLOYMENT}"

[targets.health]
per_pod = {{ port = 8080, path = "/health" }}

[[notify]]
kind = "slack"
url = {slack}
"#,
        audit = quote(&audit.display().to_string()),
        prometheus = quote(prometheus_url),
        slack = quote(slack_url),
    )
}

/// Hands every decision to each sink: the notifier, and a collector the
/// demo reads to know how many messages to wait for.
struct Fanout(Vec<Arc<dyn IncidentSink>>);

impl IncidentSink for Fanout {
    fn emit(&self, incident: &Incident) {
        for sink in &self.0 {
            sink.emit(incident);
        }
    }
}

/// The timeline on stdout: `[  12.3s] what happened`.
#[derive(Clone)]
struct Timeline {
    start: Instant,
    start_at: Timestamp,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl Timeline {
    fn new(out: Box<dyn Write + Send>) -> Timeline {
        Timeline {
            start: Instant::now(),
            start_at: Timestamp::now(),
            out: Arc::new(Mutex::new(out)),
        }
    }

    fn say(&self, text: impl Display) {
        self.at(self.start.elapsed().as_secs_f64(), text);
    }

    /// A line stamped with a wall-clock time (an audit line's).
    fn at_time(&self, at: &str, text: impl Display) {
        let secs = at
            .parse::<Timestamp>()
            .ok()
            .and_then(|t| (t - self.start_at).total(jiff::Unit::Second).ok())
            .unwrap_or_else(|| self.start.elapsed().as_secs_f64());
        self.at(secs, text);
    }

    fn at(&self, secs: f64, text: impl Display) {
        let text = text.to_string();
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let mut block = format!("[{secs:>6.1}s] {first}\n");
        for line in lines {
            block.push_str(&format!("          {line}\n"));
        }
        self.write(&block);
    }

    fn plain(&self, text: impl Display) {
        self.write(&format!("{text}\n"));
    }

    fn write(&self, text: &str) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // With stdout gone there is no one to tell; the exit code still says it.
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}

/// Prints what changed between ticks: the revision, the rollout, each
/// signal's state, the verdict, known-good records.
struct Watcher {
    threshold: u32,
    revision: Option<(i64, String)>,
    rolled_out: bool,
    /// (revision, pod-template-hash) of the known-good record.
    known_good: Option<(i64, String)>,
    /// Per signal: (revision, state, failing ticks) last printed.
    signals: HashMap<String, (i64, &'static str, u32)>,
    verdict: Option<(i64, Verdict)>,
    bad_at: Option<Instant>,
    pipeline_seen: bool,
}

impl Watcher {
    fn new(threshold: u32) -> Watcher {
        Watcher {
            threshold,
            revision: None,
            rolled_out: false,
            known_good: None,
            signals: HashMap::new(),
            verdict: None,
            bad_at: None,
            pipeline_seen: false,
        }
    }

    fn last_verdict(&self) -> String {
        self.verdict.map_or("none".into(), |(r, v)| {
            format!("{} for revision {r}", title(v))
        })
    }

    fn observe(&mut self, tl: &Timeline, e: &Evaluation) {
        let Some(current) = e.state.current() else {
            return;
        };
        let key = (current.number, current.pod_template_hash.clone());
        let images = current.images.join(", ");
        if self.revision.as_ref() != Some(&key) {
            let again = if current.reused {
                " (its ReplicaSet brought back)"
            } else {
                ""
            };
            tl.say(format!(
                "revision {} ({images}) is the Deployment's current revision{again}; its {WATCH_WINDOW} observation window is open",
                current.number
            ));
            self.revision = Some(key);
            self.rolled_out = false;
        }
        if e.state.fully_rolled_out && !self.rolled_out {
            tl.say(format!(
                "revision {} ({images}) fully rolled out: every replica updated and available",
                current.number
            ));
        }
        self.rolled_out = e.state.fully_rolled_out;
        self.known_good(tl, e);
        if self.pipeline_seen {
            // The restored revision is the pipeline's to verify (its steps
            // say how), never judged for another rollback: its signals
            // would only repeat the Verify step.
            return;
        }

        let judge_state = e.judgement.as_ref().map(|j| &j.state);
        let decided = self
            .verdict
            .is_some_and(|(r, v)| r == current.number && v == Verdict::Bad);
        for r in &e.results {
            let state = match &r.outcome {
                Outcome::Pass { .. } => "pass",
                Outcome::Fail { .. } => "FAIL",
                Outcome::Inconclusive { .. } => "n/a ",
            };
            let ticks = judge_state.map_or(0, |s| s.failing_ticks(&r.signal));
            let id = r.signal.id();
            let before = self.signals.get(&id).copied();
            let changed = before.is_none_or(|(rev, s, _)| rev != current.number || s != state);
            // A failing signal is shown on each tick that brings it closer
            // to the threshold: that is the judge counting.
            let counting = state == "FAIL"
                && !decided
                && before.is_some_and(|(_, _, t)| t != ticks)
                && ticks <= self.threshold;
            if changed || counting {
                let count = if state == "FAIL" && ticks > 0 {
                    format!("  [failing tick {ticks} of {}]", self.threshold)
                } else {
                    String::new()
                };
                tl.say(format!("  {state}  {}{count}", r.describe()));
            }
            self.signals.insert(id, (current.number, state, ticks));
        }

        if let Some(j) = &e.judgement {
            let now = (current.number, j.verdict);
            if self.verdict != Some(now) {
                let reason = j
                    .reasons
                    .first()
                    .map(|r| format!(": {}", r.sentence))
                    .unwrap_or_default();
                let action = match j.verdict {
                    Verdict::Bad if !self.pipeline_seen => {
                        " -> the run loop starts the rollback pipeline"
                    }
                    _ => "",
                };
                tl.say(format!(
                    "verdict for revision {}: {}{reason}{action}",
                    current.number,
                    title(j.verdict)
                ));
                if j.verdict == Verdict::Bad && self.bad_at.is_none() {
                    self.bad_at = Some(Instant::now());
                }
                self.verdict = Some(now);
            }
        }
    }

    fn known_good(&mut self, tl: &Timeline, e: &Evaluation) {
        let Some(k) = e.state.known_good.as_ref() else {
            return;
        };
        let now = (k.revision, k.pod_template_hash.clone());
        if self.known_good.as_ref() == Some(&now) {
            return;
        }
        let same_template = self
            .known_good
            .as_ref()
            .is_some_and(|(_, hash)| *hash == k.pod_template_hash);
        let images = k.images.join(", ");
        if same_template {
            tl.say(format!(
                "the known-good record follows the restored template: revision {} ({images})",
                k.revision
            ));
        } else {
            tl.say(format!(
                "revision {} ({images}) survived its window: recorded known-good (annotation {} on the Deployment)",
                k.revision,
                crate::k8s::keys::KNOWN_GOOD
            ));
        }
        self.known_good = Some(now);
    }
}

fn title(v: Verdict) -> &'static str {
    match v {
        Verdict::Healthy => "Healthy",
        Verdict::Inconclusive => "Inconclusive",
        Verdict::Suspect => "Suspect",
        Verdict::Bad => "Bad",
        Verdict::Degraded => "Degraded",
    }
}

/// One audit line as the demo reads it back.
struct AuditEntry {
    step: String,
}

/// Follows the audit log the pipeline writes, so each step shows up as it
/// is recorded, with the pipeline's own time.
struct AuditTail {
    path: PathBuf,
    offset: usize,
    lines: Vec<AuditEntry>,
}

impl AuditTail {
    fn new(path: &Path) -> AuditTail {
        AuditTail {
            path: path.to_path_buf(),
            offset: 0,
            lines: Vec::new(),
        }
    }

    fn poll(&mut self, tl: &Timeline) {
        let Ok(text) = std::fs::read_to_string(&self.path) else {
            return;
        };
        let Some(new) = text.get(self.offset..) else {
            return;
        };
        // Only whole lines: the last one may still be being written.
        let Some(end) = new.rfind('\n') else {
            return;
        };
        for line in new[..end].lines().filter(|l| !l.trim().is_empty()) {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let step = v["step"].as_str().unwrap_or("?").to_string();
            let outcome = v["outcome"].as_str().unwrap_or("?");
            let at = v["time"].as_str().unwrap_or_default();
            let text = if step == "report" {
                format!(
                    "step audit     {outcome}: the incident report (reason, measured values, versions, times, result) is appended to the audit log"
                )
            } else {
                let summary = v["details"]["summary"].as_str().unwrap_or_default();
                format!("step {step:<8} {outcome}: {summary}")
            };
            tl.at_time(at, text);
            self.lines.push(AuditEntry { step });
        }
        self.offset += end + 1;
    }
}

/// What the background printer follows: the audit log, the messages the
/// Slack receiver got, and the notifier's delivery outcomes.
struct Feeds {
    audit: AuditTail,
    messages: Arc<Mutex<Vec<Value>>>,
    shown_messages: usize,
    deliveries: Vec<DeliveryOutcome>,
    outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
}

/// The running printer; aborted when dropped, so no early return leaves it.
struct FeedsTask {
    feeds: Arc<Mutex<Feeds>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FeedsTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FeedsTask {
    fn poll(&self, tl: &Timeline) {
        lock(&self.feeds).poll(tl);
    }

    /// Stops the printer after a last look; returns what it saw.
    async fn stop(self, tl: &Timeline) -> Feeds {
        self.task.abort();
        let mut feeds = std::mem::replace(
            &mut *lock(&self.feeds),
            Feeds::new(
                AuditTail::new(Path::new("")),
                Arc::default(),
                Arc::default(),
            ),
        );
        feeds.poll(tl);
        feeds
    }
}

impl Feeds {
    fn new(
        audit: AuditTail,
        messages: Arc<Mutex<Vec<Value>>>,
        outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
    ) -> Feeds {
        Feeds {
            audit,
            messages,
            shown_messages: 0,
            deliveries: Vec::new(),
            outcomes,
        }
    }

    fn start(
        tl: &Timeline,
        audit: AuditTail,
        messages: Arc<Mutex<Vec<Value>>>,
        outcomes: Arc<Mutex<Vec<DeliveryOutcome>>>,
    ) -> FeedsTask {
        let feeds = Arc::new(Mutex::new(Feeds::new(audit, messages, outcomes)));
        let (shared, tl) = (feeds.clone(), tl.clone());
        let task = tokio::spawn(async move {
            loop {
                lock(&shared).poll(&tl);
                tokio::time::sleep(FEED_POLL).await;
            }
        });
        FeedsTask { feeds, task }
    }

    fn poll(&mut self, tl: &Timeline) {
        self.audit.poll(tl);
        let new: Vec<Value> = lock(&self.messages)
            .iter()
            .skip(self.shown_messages)
            .cloned()
            .collect();
        for message in &new {
            tl.say(format!(
                "Slack message received by the local receiver:\n{}",
                render_slack(message)
            ));
        }
        self.shown_messages += new.len();
        let outcomes: Vec<DeliveryOutcome> = lock(&self.outcomes)
            .iter()
            .skip(self.deliveries.len())
            .cloned()
            .collect();
        for o in outcomes {
            let why = match &o.result {
                DeliveryResult::Delivered => None,
                DeliveryResult::GaveUp { reason } => Some(format!("given up: {reason}")),
                DeliveryResult::Dropped { reason } => Some(format!("dropped: {reason}")),
                DeliveryResult::AlreadyDelivered => Some(format!(
                    "the notifier's delivery ledger already lists incident {} for {}, so it was not sent again",
                    o.incident_id, o.sink
                )),
            };
            if let Some(why) = why {
                tl.say(format!(
                    "notification {} to {} NOT delivered: {why}",
                    o.kind.as_str(),
                    o.sink
                ));
            }
            self.deliveries.push(o);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A loopback stand-in for a Slack incoming webhook: keeps each JSON body
/// it is sent and answers `ok`, as Slack does.
struct Receiver {
    url: String,
    messages: Arc<Mutex<Vec<Value>>>,
    served: Served<()>,
}

impl Receiver {
    async fn start() -> Result<Receiver, DemoError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(DemoError::Receiver)?;
        let addr = listener.local_addr().map_err(DemoError::Receiver)?;
        let messages: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = messages.clone();
        let app = axum::Router::new().route(
            "/services/demo/webhook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let value = serde_json::from_slice(&body)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                    lock(&kept).push(value);
                    "ok"
                }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the demo's Slack receiver stopped");
            }
        });
        Ok(Receiver {
            url: format!("http://{addr}/services/demo/webhook"),
            messages,
            served: Served {
                stop: Some(stop),
                task,
            },
        })
    }

    async fn stop(self) {
        self.served.stop().await;
    }
}

/// Longest line of a rendered Slack message (the "What changed" section
/// carries whole JSON Patch operations).
const SLACK_LINE_MAX: usize = 160;

/// Slack's mrkdwn as plain text: entities decoded, `<!date^..|text>` and
/// `<url|label>` shown as their text, long lines cut.
fn plain_mrkdwn(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let tail = &rest[open + 1..];
        match tail.find('>') {
            Some(close) => {
                let inner = &tail[..close];
                let shown = match inner.split_once('|') {
                    Some((target, label)) if target.starts_with("!date") => label.to_string(),
                    Some((target, label)) => format!("{label} ({target})"),
                    None => inner.to_string(),
                };
                out.push_str(&shown);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('<');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    if out.chars().count() > SLACK_LINE_MAX {
        let cut: String = out.chars().take(SLACK_LINE_MAX - 1).collect();
        format!("{cut}…")
    } else {
        out
    }
}

/// A Slack message as a person skims it: the fallback text, then each
/// block on its own lines (header, sections, fields as `Name: value`).
pub fn render_slack(message: &Value) -> String {
    let mut out = Vec::new();
    if let Some(text) = message["text"].as_str() {
        out.push(format!("  text: {}", plain_mrkdwn(text)));
    }
    for block in message["blocks"].as_array().into_iter().flatten() {
        match block["type"].as_str().unwrap_or_default() {
            "header" => out.push(format!(
                "  | {}",
                plain_mrkdwn(block["text"]["text"].as_str().unwrap_or_default())
            )),
            "section" => {
                if let Some(text) = block["text"]["text"].as_str() {
                    for line in text.lines() {
                        out.push(format!("  | {}", plain_mrkdwn(line)));
                    }
                }
                for field in block["fields"].as_array().into_iter().flatten() {
                    let text = field["text"].as_str().unwrap_or_default();
                    let (name, value) = text.split_once('\n').unwrap_or((text, ""));
                    out.push(format!(
                        "  | {}: {}",
                        name.trim_matches('*'),
                        plain_mrkdwn(&value.replace('\n', " / "))
                    ));
                }
            }
            "divider" => out.push("  | ---".to_string()),
            "context" => {
                let parts: Vec<&str> = block["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["text"].as_str())
                    .collect();
                out.push(format!("  | {}", plain_mrkdwn(&parts.join("  ·  "))));
            }
            other => out.push(format!("  | ({other} block)")),
        }
    }
    if out.is_empty() {
        out.push(format!("  {message}"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_loads() {
        let text = config_toml(
            "http://127.0.0.1:9",
            true,
            Path::new("/tmp/a \"quoted\" dir/audit.jsonl"),
            "http://127.0.0.1:1/services/demo/webhook",
        );
        let loaded = Loader::from_toml(text)
            .env(Vec::<(String, String)>::new())
            .load();
        assert!(loaded.is_ok(), "{:?}", loaded.err());
    }

    #[test]
    fn a_slack_message_renders_as_lines_a_person_skims() {
        let message = json!({
            "text": ":white_check_mark: Rolled back",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Rolled back"}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": "*From*\nrevision 2\nv2"}]},
                {"type": "section", "text": {"type": "mrkdwn", "text": "30 % &gt; 5 % &amp; <https://r.example/x|Runbook>"}},
                {"type": "divider"},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "at <!date^1795780923^{date_short_pretty}|2026-11-27T12:02:03Z>"}, {"type": "mrkdwn", "text": "b"}]},
            ]
        });
        assert_eq!(
            render_slack(&message),
            "  text: :white_check_mark: Rolled back\n  | Rolled back\n  | From: revision 2 / v2\n  | 30 % > 5 % & Runbook (https://r.example/x)\n  | ---\n  | at 2026-11-27T12:02:03Z  ·  b"
        );
        let long = "x".repeat(500);
        assert_eq!(plain_mrkdwn(&long).chars().count(), SLACK_LINE_MAX);
    }
}

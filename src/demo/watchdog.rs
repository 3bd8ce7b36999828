//! Step 2, the watchdog: its config for the demo, the notifier, the admin
//! server and the run loop with its pipeline, assembled as `run`
//! assembles them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::stage::Stage;
use super::timeline::Timeline;
use super::{lock, DemoError, Parts, SYNC_LIMIT, WATCH_WINDOW};
use crate::config::{Config, Loader, MissingSecrets};
use crate::pipeline;
use crate::report::incident::{Collected, Incident, IncidentSink, Settled};
use crate::report::notify::DeliveryOutcome;
use crate::runtime::admin::{self, AdminError};
use crate::runtime::app::{App, PipelineOptions, Record};
use crate::runtime::daemon::Daemon;
use crate::sim::{SEED_DEPLOYMENT, SEED_NAMESPACE, WATCHDOG_NAMESPACE};

/// Where the watchdog's admin server listens: a free loopback port.
const LOOPBACK: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The watchdog as the demo runs it, and what the demo reads of it.
pub(super) struct Watchdog {
    pub(super) config: Arc<Config>,
    pub(super) daemon: Daemon,
    /// Every decision handed to the notifier.
    pub(super) collected: Collected,
    /// The notifier's delivery outcomes.
    pub(super) deliveries: Arc<Mutex<Vec<DeliveryOutcome>>>,
    /// The demo's directory, kept after it: the audit log, the scrape.
    pub(super) dir: PathBuf,
    pub(super) audit_path: PathBuf,
    pub(super) metrics_url: String,
}

/// Step 2, the watchdog: config, notifier, admin server, run loop with
/// its pipeline, assembled as `run` assembles it.
pub(super) async fn start_watchdog(
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
    let notifier = Arc::new(
        app.notifier(Record::InMemory(Arc::new(move |o: &DeliveryOutcome| {
            lock(&observed).push(o.clone())
        })))
        .await?,
    );
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

    fn emit_settled(&self, incident: &Incident) -> Settled {
        let all: Vec<Settled> = self.0.iter().map(|s| s.emit_settled(incident)).collect();
        Box::pin(async move {
            futures::future::join_all(all).await;
        })
    }
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
}

//! Step 1, the stage: the simulated cluster, Prometheus (or why not) and
//! the loopback Slack receiver. Nothing here listens beyond 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::slack::Receiver;
use super::timeline::Timeline;
use super::{DemoError, DemoOptions, Parts, NO_PROMETHEUS_ENV, PROMETHEUS_LIFETIME, TIME_SCALE};
use crate::sim::prometheus::{self, PrometheusOptions, PrometheusServer};
use crate::sim::{
    Behaviours, SimClock, SimCluster, SimOptions, SEED_DEPLOYMENT, SEED_IMAGE, SEED_NAMESPACE,
};

/// What the watchdog runs against: the simulated cluster, Prometheus (or
/// not) and the Slack receiver.
pub(super) struct Stage {
    pub(super) client: kube::Client,
    pub(super) prometheus_url: Option<String>,
    pub(super) receiver_url: String,
    pub(super) messages: Arc<Mutex<Vec<Value>>>,
}

/// Step 1: the cluster, Prometheus (or why not), the Slack receiver.
pub(super) async fn set_stage(
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

//! One tick of one target: every enabled signal of its policy, run
//! concurrently, each under its own deadline, so a slow Prometheus delays
//! only the Prometheus signals and never the pod or health signals.
//!
//! It must always give exactly one result per configured signal (a signal
//! that runs out of time is Inconclusive, "no result within ..."), and it
//! must never turn a timeout or an error into a Fail.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesUnordered, Stream};
use jiff::Timestamp;

use super::grouped::GroupedCache;
use super::health::{HealthError, HealthProber};
use super::misconfigured::SurveyLine;
use super::prometheus::{PrometheusSource, PrometheusSourceError};
use super::{pods, Outcome, SignalId, SignalResult, Subject};
use crate::config::{Config, Policy};

/// Building the signal sources from the config failed.
#[derive(Debug, thiserror::Error)]
pub enum SignalsError {
    #[error(transparent)]
    Prometheus(#[from] PrometheusSourceError),
    #[error(transparent)]
    Health(#[from] HealthError),
}

/// Everything a tick needs to measure signals: the Prometheus client, the
/// HTTP prober and the cluster name (the `{cluster}` placeholder).
#[derive(Debug, Clone)]
pub struct Signals {
    prometheus: PrometheusSource,
    /// The grouped answers of a tick, shared by every target.
    grouped: Arc<GroupedCache>,
    health: HealthProber,
    cluster: String,
}

impl Signals {
    /// From `[prometheus]` and `[watchdog].cluster_name`.
    pub fn from_config(config: &Config) -> Result<Self, SignalsError> {
        Ok(Signals::new(
            PrometheusSource::new(&config.prometheus)?,
            HealthProber::for_config(config)?,
            config.watchdog.cluster_name.clone(),
        ))
    }

    pub fn new(
        prometheus: PrometheusSource,
        health: HealthProber,
        cluster: impl Into<String>,
    ) -> Self {
        Signals {
            prometheus,
            grouped: Arc::default(),
            health,
            cluster: cluster.into(),
        }
    }

    pub fn prometheus(&self) -> &PrometheusSource {
        &self.prometheus
    }

    pub fn health(&self) -> &HealthProber {
        &self.health
    }

    /// Which of `policy`'s queries return nothing for `subject` while
    /// `total_query` shows traffic: the self-check's survey.
    pub async fn survey(
        &self,
        policy: &Policy,
        subject: &Subject,
        now: Timestamp,
    ) -> Vec<SurveyLine> {
        self.prometheus
            .survey(policy, subject, &self.cluster, now)
            .await
    }

    /// The signals `policy` configures for `subject`, in the order
    /// [`Self::evaluate`] returns their results.
    pub fn configured(&self, policy: &Policy, subject: &Subject) -> Vec<SignalId> {
        let mut ids = Vec::new();
        if policy.error_rate.enabled {
            ids.push(SignalId::ErrorRate);
        }
        if policy.latency.enabled {
            ids.push(SignalId::Latency);
        }
        ids.extend(policy.rules.iter().map(|r| SignalId::rule(&r.name)));
        ids.extend(HealthProber::signals(
            &policy.health,
            subject,
            &self.cluster,
        ));
        if policy.pods.enabled {
            ids.push(SignalId::Pods);
        }
        ids
    }

    /// Every configured signal, one result each, in [`Self::configured`]
    /// order. Takes as long as the slowest signal's deadline at most.
    pub async fn evaluate(
        &self,
        policy: &Policy,
        subject: &Subject,
        now: Timestamp,
    ) -> Vec<SignalResult> {
        futures::future::join_all(self.tasks(policy, subject, now)).await
    }

    /// The same results as they come in, fastest first: the pod signal
    /// arrives at once even while Prometheus is timing out.
    pub fn stream<'a>(
        &'a self,
        policy: &'a Policy,
        subject: &'a Subject,
        now: Timestamp,
    ) -> impl Stream<Item = SignalResult> + 'a {
        self.tasks(policy, subject, now)
            .into_iter()
            .collect::<FuturesUnordered<_>>()
    }

    fn tasks<'a>(
        &'a self,
        policy: &'a Policy,
        subject: &'a Subject,
        now: Timestamp,
    ) -> Vec<BoxFuture<'a, SignalResult>> {
        let prom = self.prometheus.signal_deadline();
        let cluster = self.cluster.as_str();
        let mut tasks: Vec<BoxFuture<'a, SignalResult>> = Vec::new();
        let source = &self.prometheus;
        if policy.error_rate.enabled {
            let policy = &policy.error_rate;
            let fut: BoxFuture<'a, SignalResult> = if policy.grouped {
                Box::pin(self.grouped.error_rate(source, policy, subject, now))
            } else {
                Box::pin(source.error_rate(policy, subject, cluster, now))
            };
            tasks.push(Box::pin(bounded(SignalId::ErrorRate, prom, now, fut)));
        }
        if policy.latency.enabled {
            let traffic = policy.error_rate.enabled.then_some(&policy.error_rate);
            let latency = &policy.latency;
            let fut: BoxFuture<'a, SignalResult> = if latency.grouped {
                Box::pin(
                    self.grouped
                        .latency(source, latency, traffic, subject, cluster, now),
                )
            } else {
                Box::pin(source.latency(latency, traffic, subject, cluster, now))
            };
            tasks.push(Box::pin(bounded(SignalId::Latency, prom, now, fut)));
        }
        for rule in &policy.rules {
            tasks.push(Box::pin(bounded(
                SignalId::rule(&rule.name),
                prom,
                now,
                self.prometheus.rule(
                    rule,
                    policy.error_rate.enabled.then_some(&policy.error_rate),
                    subject,
                    cluster,
                    now,
                ),
            )));
        }
        let health = &policy.health;
        if health.enabled {
            let deadline = HealthProber::signal_deadline(health);
            let ids = HealthProber::signals(health, subject, cluster);
            let mut ids = ids.into_iter();
            for template in &health.urls {
                let id = ids.next().unwrap_or_else(|| SignalId::health("url"));
                tasks.push(Box::pin(bounded(
                    id,
                    deadline,
                    now,
                    self.health.url(template, health, subject, cluster, now),
                )));
            }
            if let Some(probe) = &health.per_pod {
                tasks.push(Box::pin(bounded(
                    SignalId::health(SignalId::PER_POD),
                    deadline,
                    now,
                    self.health.per_pod(probe, health, subject, now),
                )));
            }
            if let Some(template) = &health.version_url {
                tasks.push(Box::pin(bounded(
                    SignalId::health(SignalId::VERSION),
                    deadline,
                    now,
                    self.health.version(template, health, subject, cluster, now),
                )));
            }
        }
        if policy.pods.enabled {
            let result = pods::evaluate(&policy.pods, subject, now);
            tasks.push(Box::pin(async move { result }));
        }
        tasks
    }
}

/// One tick of one target: see [`Signals::evaluate`].
pub async fn evaluate_all(
    signals: &Signals,
    policy: &Policy,
    subject: &Subject,
    now: Timestamp,
) -> Vec<SignalResult> {
    signals.evaluate(policy, subject, now).await
}

/// `fut`, or an Inconclusive result for `signal` once `deadline` passes.
async fn bounded(
    signal: SignalId,
    deadline: Duration,
    now: Timestamp,
    fut: impl std::future::Future<Output = SignalResult>,
) -> SignalResult {
    match tokio::time::timeout(deadline, fut).await {
        Ok(result) => result,
        Err(_) => {
            let why = format!("no result within {}", humantime::format_duration(deadline));
            tracing::warn!(signal = %signal, %why, "signal timed out");
            SignalResult::new(signal, Outcome::inconclusive(why), now)
        }
    }
}

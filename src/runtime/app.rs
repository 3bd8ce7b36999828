//! Assembles the watchdog from its config and a client, one way for `run`,
//! `status --once`, the demo and the tests: metrics and their registry, the
//! admin state, the leader election, the notifiers, the rollback pipeline
//! and the run loop. It decides nothing and runs no loop; it must never
//! start a task the caller does not end (the notifier's workers and the
//! watch caches are the caller's to stop).

use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use crate::config::Config;
use crate::pipeline::{self, ProgressFn, RollbackError, WriteGuard};
use crate::report::audit::{AuditError, AuditLine, AuditLog, AuditOutcome, Step};
use crate::report::incident::{IncidentId, IncidentSink};
use crate::report::metrics::Metrics;
use crate::report::notify::{
    ClusterLedger, DeliveryObserver, DeliveryOutcome, MetricsObserver, Notifier, NotifyError,
};
use crate::report::status::Role;
use crate::runtime::admin::AdminState;
use crate::runtime::daemon::{Daemon, DaemonError};
use crate::runtime::lease::{Elector, Leadership, LeaseSettings};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    Pipeline(#[from] RollbackError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

/// The shared parts of one watchdog: what the admin server serves and
/// what the loop, the pipeline and the notifiers count into.
pub struct App {
    config: Arc<Config>,
    client: Client,
    metrics: Metrics,
    admin: AdminState,
}

/// Where the notifiers record what they delivered.
pub enum Record {
    /// In the delivery ledger ConfigMap of the watchdog's namespace
    /// ([`ClusterLedger`]), so neither a restart nor a new leader resends
    /// a decision, and each outcome as a line of the audit log (`run`).
    AuditLog,
    /// In memory only, each outcome also handed to this observer (the
    /// demo's timeline).
    InMemory(Arc<dyn DeliveryObserver>),
}

impl App {
    /// Fresh metrics, their registry served by a fresh admin state.
    pub fn new(config: Arc<Config>, client: Client) -> App {
        let (metrics, registry) = Metrics::new();
        let admin = AdminState::new(registry, config.admin.request_timeout);
        App {
            config,
            client,
            metrics,
            admin,
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What the admin server serves (`/readyz`, `/metrics`, `/status`).
    pub fn admin(&self) -> &AdminState {
        &self.admin
    }

    /// The leader election of `[leader_election]`: an [`Elector`] for the
    /// caller to run, whose [`Leadership`] gates every write; or, when it
    /// is off, a standalone replica that always acts.
    pub fn leadership(&self) -> (Leadership, Option<Elector>) {
        if self.config.leader_election.enabled {
            let elector = Elector::new(
                self.client.clone(),
                LeaseSettings::from_config(&self.config),
            )
            .with_gauge(self.metrics.leader.clone());
            tracing::info!(identity = %elector.identity(), "leader election on: this replica acts only while it holds the Lease");
            (elector.leadership(), Some(elector))
        } else {
            self.metrics.leader.set(1);
            (Leadership::standalone(), None)
        }
    }

    /// The notifiers of `[[notify]]`, their outcomes counted in the
    /// metrics and recorded as `record` says. Starts one worker per sink:
    /// call inside a Tokio runtime, and [`Notifier::shutdown`] at the end.
    pub async fn notifier(&self, record: Record) -> Result<Notifier, AppError> {
        let builder =
            Notifier::builder(&self.config.notify).observer(MetricsObserver(self.metrics.clone()));
        let builder = match record {
            Record::AuditLog => {
                let audit = AuditLog::open(&self.config.watchdog.audit_log)?;
                builder
                    .ledger(Arc::new(self.ledger().await?))
                    .observer(move |o: &DeliveryOutcome| append_outcome(&audit, o))
            }
            Record::InMemory(observer) => builder.observer(move |o: &DeliveryOutcome| {
                observer.observe(o);
            }),
        };
        let notifier = builder.start()?;
        self.metrics.set_sinks(&notifier.sink_names());
        Ok(notifier)
    }

    /// The delivery ledger: the ConfigMap `<lease_name>-notified` in
    /// `watchdog.namespace`, shared by every replica.
    async fn ledger(&self) -> Result<ClusterLedger, AppError> {
        let name = format!("{}-notified", self.config.leader_election.lease_name);
        Ok(
            ClusterLedger::open(self.client.clone(), &self.config.watchdog.namespace, &name)
                .await?,
        )
    }

    /// The run loop on these parts; see [`DaemonBuilder`].
    pub fn daemon(&self) -> DaemonBuilder<'_> {
        DaemonBuilder {
            app: self,
            acting: Acting::Standalone,
            pipeline: None,
        }
    }
}

/// A delivery outcome as a `notify` line of the audit log.
fn append_outcome(audit: &AuditLog, o: &DeliveryOutcome) {
    // The Deployment the incident is about; a test incident has none.
    let target = o
        .incident_id
        .parse::<IncidentId>()
        .map_or_else(|_| o.incident_id.clone(), |id| id.deployment.to_string());
    let line = AuditLine {
        time: jiff::Timestamp::now().to_string(),
        target,
        rollback: o.incident_id.clone(),
        step: Step::Notify,
        outcome: AuditOutcome::Delivery(o.result.label()),
        details: serde_json::to_value(o).unwrap_or_default(),
    };
    if let Err(e) = audit.append(&line) {
        tracing::warn!(error = %e, "cannot write a delivery outcome to the audit log");
    }
}

/// Who the loop writes as.
enum Acting {
    /// Always, with no election (the demo, the tests).
    Standalone,
    Leadership(Leadership),
    Role(Role, WriteGuard),
}

/// What the rollback pipeline is told and how it polls.
pub struct PipelineOptions {
    sink: Arc<dyn IncidentSink>,
    poll_interval: Option<Duration>,
    progress: Option<ProgressFn>,
    may_write: Option<WriteGuard>,
}

impl PipelineOptions {
    /// A pipeline whose decisions go to `sink` (the notifiers).
    pub fn new(sink: Arc<dyn IncidentSink>) -> PipelineOptions {
        PipelineOptions {
            sink,
            poll_interval: None,
            progress: None,
            may_write: None,
        }
    }

    /// How often its Wait step reads the Deployment (default 1 s).
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = Some(every);
        self
    }

    /// Told each change while it waits for the rollout.
    pub fn progress(mut self, progress: ProgressFn) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Asks `may_write` before each write instead of the loop's own guard
    /// (tests that take leadership away from the pipeline alone).
    pub fn may_write(mut self, may_write: WriteGuard) -> Self {
        self.may_write = Some(may_write);
        self
    }
}

/// Settings of a [`Daemon`] before it starts its watch caches. By default
/// it is standalone (acts, role `standalone`) and only reports a Bad
/// verdict; [`Self::pipeline`] makes it roll back.
pub struct DaemonBuilder<'a> {
    app: &'a App,
    acting: Acting,
    pipeline: Option<PipelineOptions>,
}

impl DaemonBuilder<'_> {
    /// Acts only while `leadership` allows (`run`); shutdown revokes it.
    pub fn leadership(mut self, leadership: Leadership) -> Self {
        self.acting = Acting::Leadership(leadership);
        self
    }

    /// Shows `role` in `/status` and writes only while `may_write` says so
    /// (`status --once`: one-shot, never).
    pub fn role(mut self, role: Role, may_write: WriteGuard) -> Self {
        self.acting = Acting::Role(role, may_write);
        self
    }

    /// Rolls a Bad revision back through the pipeline.
    pub fn pipeline(mut self, options: PipelineOptions) -> Self {
        self.pipeline = Some(options);
        self
    }

    /// Starts the watch caches and builds the signal sources and the
    /// pipeline; the caller waits for the sync and runs the loop.
    pub fn build(self) -> Result<Daemon, AppError> {
        let app = self.app;
        let daemon = Daemon::new(
            app.config.clone(),
            app.client.clone(),
            app.metrics.clone(),
            app.admin.clone(),
        )?;
        let (daemon, guard): (Daemon, WriteGuard) = match self.acting {
            Acting::Standalone => (daemon, Arc::new(|| true)),
            Acting::Leadership(l) => (daemon.with_leadership(l.clone()), l.guard()),
            Acting::Role(role, guard) => (daemon.with_role(role, guard.clone()), guard),
        };
        let Some(options) = self.pipeline else {
            return Ok(daemon);
        };
        let mut ctx =
            pipeline::Context::new(app.client.clone(), app.config.clone(), options.sink.clone())?
                .with_may_write(options.may_write.unwrap_or(guard));
        if let Some(every) = options.poll_interval {
            ctx = ctx.with_poll_interval(every);
        }
        if let Some(progress) = options.progress {
            ctx = ctx.with_progress(progress);
        }
        Ok(daemon.with_pipeline_context(ctx, options.sink))
    }
}

//! Leader election by a `coordination.k8s.io/v1` Lease in the watchdog's
//! namespace, with client-go's rules: two replicas run, one acts.
//!
//! Every write is a read-modify-replace guarded by the Lease's
//! `resourceVersion`, so two replicas racing for a free Lease cannot both
//! win: the second replace gets 409 and stays a follower. A follower
//! judges expiry by its own clock, from the moment it *observed* the
//! holder's last renewal, never from the `renewTime` the holder wrote (the
//! nodes' clocks may disagree).
//!
//! The leader counts as leader only until `renew_deadline` after the last
//! renewal it *sent*: `renew_deadline` < `lease_duration`, so it stops
//! writing before any follower may take the Lease over, even when its
//! renewals are stuck. Leadership is asked before every write (see
//! [`Leadership::guard`]).
//!
//! `kube-lease-manager` 0.13 (kube 5) was considered: it takes the Lease
//! with server-side apply and relies on field-ownership conflicts for
//! mutual exclusion, and it cannot report "renewal overdue" before the
//! Lease expires. client-go's resourceVersion protocol is what every
//! Kubernetes controller uses, and it is short enough to own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Config;
use crate::report::status::Role;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("the service account may not {verb} Lease {namespace}/{name} (403 Forbidden): add get, create and update on leases (coordination.k8s.io) in namespace {namespace} to the watchdog's Role")]
    Forbidden {
        verb: &'static str,
        namespace: String,
        name: String,
    },
    #[error("the cluster has no coordination.k8s.io/v1 Lease API (404 on the kind); turn off [leader_election] and run a single replica")]
    NoLeaseApi,
    #[error("Lease {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Lease {namespace}/{name}: no answer from the API server within {limit:?}")]
    Timeout {
        namespace: String,
        name: String,
        limit: Duration,
    },
}

impl LeaseError {
    /// Whether retrying can help: a refusal by RBAC or a missing API
    /// cannot, and the watchdog must stop rather than run leaderless.
    pub fn is_fatal(&self) -> bool {
        matches!(self, LeaseError::Forbidden { .. } | LeaseError::NoLeaseApi)
    }
}

/// What the elector needs from `[leader_election]` and `[watchdog]`.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn from_config(config: &Config) -> LeaseSettings {
        let l = &config.leader_election;
        LeaseSettings {
            namespace: config.watchdog.namespace.clone(),
            name: l.lease_name.clone(),
            identity: holder_identity(l.identity.as_deref()),
            lease_duration: l.lease_duration,
            renew_deadline: l.renew_deadline,
            retry_period: l.retry_period,
        }
    }
}

/// The holder identity: the configured one, else `POD_NAME` (the
/// downward API), else the hostname, else a name made from the pid.
pub fn holder_identity(configured: Option<&str>) -> String {
    let non_empty = |s: String| {
        let s = s.trim().to_owned();
        (!s.is_empty()).then_some(s)
    };
    configured
        .map(str::to_owned)
        .and_then(non_empty)
        .or_else(|| std::env::var("POD_NAME").ok().and_then(non_empty))
        .or_else(|| std::env::var("HOSTNAME").ok().and_then(non_empty))
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .and_then(non_empty)
        })
        .unwrap_or_else(|| format!("rollback-watchdog-{}", std::process::id()))
}

/// Whether this process may act now. Cheap to clone; shared by the run
/// loop, the pipeline's write guard, `/status` and the elector.
#[derive(Clone)]
pub struct Leadership {
    inner: Arc<Inner>,
}

struct Inner {
    /// False when leader election is off: this process acts alone.
    elected: bool,
    /// When the last successful renewal was sent; None while following.
    renewed: Mutex<Option<Instant>>,
    renew_deadline: Duration,
    /// Set at shutdown: nothing is written after it.
    revoked: AtomicBool,
    changes: watch::Sender<bool>,
}

impl Leadership {
    /// Leader election is off: always allowed to act, until revoked.
    pub fn standalone() -> Leadership {
        Leadership::new(false, Duration::MAX)
    }

    fn new(elected: bool, renew_deadline: Duration) -> Leadership {
        let (changes, _) = watch::channel(!elected);
        Leadership {
            inner: Arc::new(Inner {
                elected,
                renewed: Mutex::new(None),
                renew_deadline,
                revoked: AtomicBool::new(false),
                changes,
            }),
        }
    }

    /// Whether this process may write now: it holds the Lease and renewed
    /// it less than `renew_deadline` ago (or election is off), and shutdown
    /// has not begun.
    pub fn is_leader(&self) -> bool {
        if self.inner.revoked.load(Ordering::SeqCst) {
            return false;
        }
        if !self.inner.elected {
            return true;
        }
        let renewed = *self
            .inner
            .renewed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        renewed.is_some_and(|at| at.elapsed() < self.inner.renew_deadline)
    }

    /// Whether leader election is on.
    pub fn is_elected(&self) -> bool {
        self.inner.elected
    }

    /// The role `/status` shows.
    pub fn role(&self) -> Role {
        match (self.inner.elected, self.is_leader()) {
            (false, _) => Role::Standalone,
            (true, true) => Role::Leader,
            (true, false) => Role::Follower,
        }
    }

    /// The write guard for the run loop and the pipeline.
    pub fn guard(&self) -> Arc<dyn Fn() -> bool + Send + Sync> {
        let me = self.clone();
        Arc::new(move || me.is_leader())
    }

    /// Stops every write from now on (shutdown): in-flight work stops
    /// before its next write and leaves its record for the next leader.
    pub fn revoke(&self) {
        self.inner.revoked.store(true, Ordering::SeqCst);
        self.inner.changes.send_replace(false);
    }

    pub fn is_revoked(&self) -> bool {
        self.inner.revoked.load(Ordering::SeqCst)
    }

    /// Leadership changes as the elector sees them (true: leading).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.inner.changes.subscribe()
    }

    fn renewed(&self, sent: Instant) {
        *self
            .inner
            .renewed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(sent);
        // Revoked: renewing keeps the Lease from others, but is_leader()
        // stays false and nobody is told this replica leads.
        if self.is_revoked() {
            return;
        }
        self.inner.changes.send_if_modified(|leading| {
            let was = *leading;
            *leading = true;
            !was
        });
    }

    fn lost(&self) {
        *self
            .inner
            .renewed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        self.inner.changes.send_if_modified(|leading| {
            let was = *leading;
            *leading = false;
            was
        });
    }

    /// The last renewal is older than the deadline: leadership is gone
    /// even if nobody took the Lease yet.
    fn overdue(&self) -> bool {
        let renewed = *self
            .inner
            .renewed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        renewed.is_some_and(|at| at.elapsed() >= self.inner.renew_deadline)
    }
}

/// The holder record as last read, and when this process first saw it.
struct Observed {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: i32,
    duration: Duration,
    at: Instant,
}

/// Acquires and renews the Lease every `retry_period`; releases it when
/// told to stop.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    leadership: Leadership,
    observed: Option<Observed>,
    /// Whether the Lease names this replica as of the last round (the
    /// release after a revoke still needs it).
    holding: bool,
    gauge: Option<Gauge>,
}

impl Elector {
    pub fn new(client: Client, settings: LeaseSettings) -> Elector {
        let api = Api::namespaced(client, &settings.namespace);
        let leadership = Leadership::new(true, settings.renew_deadline);
        Elector {
            api,
            settings,
            leadership,
            observed: None,
            holding: false,
            gauge: None,
        }
    }

    /// `rollback_watchdog_leader` follows leadership.
    pub fn with_gauge(mut self, gauge: Gauge) -> Elector {
        gauge.set(0);
        self.gauge = Some(gauge);
        self
    }

    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    pub fn identity(&self) -> &str {
        &self.settings.identity
    }

    /// Runs until `stop` turns true (then releases the Lease if held and
    /// returns Ok) or the Lease cannot be used at all (Err: the caller
    /// must exit non-zero rather than run without a leader).
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) -> Result<(), LeaseError> {
        let s = self.settings.clone();
        tracing::info!(
            lease = %format!("{}/{}", s.namespace, s.name),
            identity = %s.identity,
            lease_duration = ?s.lease_duration,
            renew_deadline = ?s.renew_deadline,
            retry_period = ?s.retry_period,
            "leader election: started"
        );
        loop {
            // Revoked (shutdown began) is not stopped: the Lease is held,
            // and renewed, until the drain is over and the caller says
            // stop, so no other replica acts while writes may still land.
            if *stop.borrow() {
                break;
            }
            let sent = Instant::now();
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    let was = self.holding;
                    self.holding = true;
                    self.leadership.renewed(sent);
                    if !was {
                        tracing::info!(identity = %s.identity, lease = %s.name, "leader election: this replica is now the leader");
                    }
                }
                Ok(false) => self.follow(),
                Err(e) if e.is_fatal() => {
                    self.follow();
                    tracing::error!(error = %e, "leader election failed for good");
                    return Err(e);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: cannot read or renew the Lease; will retry")
                }
            }
            if self.leadership.overdue() {
                tracing::warn!(
                    identity = %s.identity,
                    "leader election: the Lease was not renewed within renew_deadline ({}); stepping down",
                    humantime::format_duration(s.renew_deadline)
                );
                self.follow();
            }
            self.set_gauge();
            // Followers jitter so two replicas do not retry in step.
            let pause = if self.holding {
                s.retry_period
            } else {
                s.retry_period.mul_f64(1.0 + rand::random::<f64>() * 0.2)
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop.changed() => {}
            }
        }
        self.release().await;
        Ok(())
    }

    fn follow(&mut self) {
        if self.holding {
            tracing::warn!(identity = %self.settings.identity, "leader election: this replica lost the leadership and stops acting");
        }
        self.holding = false;
        self.leadership.lost();
        self.set_gauge();
    }

    fn set_gauge(&self) {
        if let Some(g) = &self.gauge {
            g.set(i64::from(self.leadership.is_leader()));
        }
    }

    fn error(&self, verb: &'static str, e: kube::Error) -> LeaseError {
        let (namespace, name) = (self.settings.namespace.clone(), self.settings.name.clone());
        match &e {
            kube::Error::Api(status) if status.code == 403 => LeaseError::Forbidden {
                verb,
                namespace,
                name,
            },
            // Creating a Lease that is not there cannot 404 unless the
            // kind itself is not served.
            kube::Error::Api(status) if status.code == 404 && verb == "create" => {
                LeaseError::NoLeaseApi
            }
            _ => LeaseError::Api {
                namespace,
                name,
                source: e,
            },
        }
    }

    async fn bounded<T>(
        &self,
        verb: &'static str,
        call: impl std::future::Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, LeaseError> {
        // One call may take at most the renew deadline: after it, a
        // renewal would not help anyway.
        let limit = self.settings.renew_deadline;
        match tokio::time::timeout(limit, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.error(verb, e)),
            Err(_) => Err(LeaseError::Timeout {
                namespace: self.settings.namespace.clone(),
                name: self.settings.name.clone(),
                limit,
            }),
        }
    }

    /// One round: true when this replica holds the Lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, LeaseError> {
        let s = self.settings.clone();
        let now = MicroTime(jiff::Timestamp::now());
        let found = self.bounded("get", self.api.get_opt(&s.name)).await?;
        let Some(lease) = found else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds(s.lease_duration)),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return won(self
                .bounded("create", self.api.create(&PostParams::default(), &lease))
                .await);
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let duration = spec
            .lease_duration_seconds
            .filter(|d| *d > 0)
            .map(|d| Duration::from_secs(d.unsigned_abs().into()))
            .unwrap_or(s.lease_duration);
        let changed = self.observed.as_ref().is_none_or(|o| {
            o.holder != holder
                || o.renew_time != spec.renew_time
                || o.transitions != spec.lease_transitions.unwrap_or(0)
        });
        if changed {
            self.observed = Some(Observed {
                holder: holder.clone(),
                renew_time: spec.renew_time.clone(),
                transitions: spec.lease_transitions.unwrap_or(0),
                duration,
                at: Instant::now(),
            });
        }
        let mine = holder.as_deref() == Some(s.identity.as_str());
        if let (Some(_), false) = (&holder, mine) {
            let expired = self
                .observed
                .as_ref()
                .is_some_and(|o| o.at.elapsed() >= o.duration);
            if !expired {
                return Ok(false);
            }
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        let mut next = lease.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(duration_seconds(s.lease_duration)),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if mine || holder.is_none() && transitions == 0 {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // The resourceVersion read above makes this a compare-and-swap.
        won(self.replace(&next).await)
    }

    async fn replace(&self, next: &Lease) -> Result<Lease, LeaseError> {
        self.bounded(
            "update",
            self.api
                .replace(&self.settings.name, &PostParams::default(), next),
        )
        .await
    }

    /// Clears the holder if it is this replica, so the next leader need
    /// not wait for the Lease to expire.
    async fn release(&mut self) {
        let was = self.holding;
        self.holding = false;
        self.leadership.lost();
        self.set_gauge();
        if !was {
            return;
        }
        let s = self.settings.clone();
        let lease = match self.bounded("get", self.api.get_opt(&s.name)).await {
            Ok(Some(l)) => l,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot release the Lease; it expires by itself");
                return;
            }
        };
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
            return;
        }
        let mut next = lease.clone();
        next.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: None,
            renew_time: Some(MicroTime(jiff::Timestamp::now())),
            ..spec
        });
        match won(self.replace(&next).await) {
            Ok(true) => {
                tracing::info!(identity = %s.identity, "leader election: released the Lease")
            }
            Ok(false) => {
                tracing::info!("leader election: the Lease changed meanwhile; not released")
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election: cannot release the Lease; it expires by itself")
            }
        }
    }
}

/// A write to the Lease: true when it took, false when another replica
/// wrote first (409: stale resourceVersion, or created meanwhile).
fn won(result: Result<Lease, LeaseError>) -> Result<bool, LeaseError> {
    match result {
        Ok(_) => Ok(true),
        Err(LeaseError::Api {
            source: kube::Error::Api(status),
            ..
        }) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whole seconds, rounded up: the Lease must not advertise less than the
/// leader's own write window.
fn duration_seconds(d: Duration) -> i32 {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standalone_acts_until_revoked() {
        let l = Leadership::standalone();
        assert!(l.is_leader());
        assert_eq!(l.role(), Role::Standalone);
        l.revoke();
        assert!(!l.is_leader());
    }

    #[test]
    fn an_elected_replica_is_a_follower_until_it_renews_and_again_after_the_deadline() {
        let l = Leadership::new(true, Duration::from_millis(50));
        assert!(!l.is_leader());
        assert_eq!(l.role(), Role::Follower);
        l.renewed(Instant::now());
        assert!(l.is_leader());
        assert_eq!(l.role(), Role::Leader);
        assert!(*l.subscribe().borrow());
        std::thread::sleep(Duration::from_millis(60));
        // No renewal within the deadline: no more writes, even before the
        // elector notices.
        assert!(!l.is_leader());
        assert!(l.overdue());
    }

    #[test]
    fn revoking_stops_a_leader_at_once() {
        let l = Leadership::new(true, Duration::from_secs(60));
        l.renewed(Instant::now());
        let guard = l.guard();
        assert!(guard());
        l.revoke();
        assert!(!guard());
        assert!(!*l.subscribe().borrow());
    }

    #[test]
    fn the_identity_prefers_the_configured_one() {
        assert_eq!(holder_identity(Some("replica-a")), "replica-a");
        assert!(!holder_identity(Some("  ")).is_empty());
    }
}

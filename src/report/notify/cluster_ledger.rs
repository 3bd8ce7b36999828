//! The delivery ledger kept in the cluster: a ConfigMap in the watchdog's
//! namespace (`<lease_name>-notified`), shared by every replica, so that
//! neither a restart (the pod's disk is an emptyDir) nor a new leader tells
//! a decision twice.
//!
//! The ConfigMap holds one key, `notified.jsonl`: the same JSON lines as
//! the file ledger (`{"incident_id", "sink", "delivered_at"}`), the newest
//! [`KEEP`] of them (about 150 KiB, far below a ConfigMap's 1 MiB). Every
//! replica keeps a view of it, fresh through a watch, so a follower that
//! takes over already knows what its predecessor delivered. A delivery is
//! recorded (a read, an append, a replace with the read's
//! resourceVersion, retried on a conflict) before its outcome is reported
//! to the audit log: the audit line "delivered" means the ledger has it.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::watcher;
use kube::{Api, Client};

use super::delivery::{DeliveryLedger, LedgerLine, MemoryLedger};
use super::NotifyError;
use crate::k8s::keys::MANAGED_BY;

/// The key of the ConfigMap that holds the lines.
pub const KEY: &str = "notified.jsonl";
/// The newest deliveries kept; older ones are dropped at the next write.
pub const KEEP: usize = 1000;
/// One API call longer than this is given up.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Writes retried after a conflict (another replica wrote meanwhile).
const CONFLICT_RETRIES: usize = 5;

/// A [`DeliveryLedger`] in a ConfigMap; see the module doc.
pub struct ClusterLedger {
    api: Api<ConfigMap>,
    namespace: String,
    name: String,
    seen: std::sync::Arc<MemoryLedger>,
    /// One write at a time from this replica.
    write: tokio::sync::Mutex<()>,
    watch: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ClusterLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterLedger({}/{})", self.namespace, self.name)
    }
}

impl ClusterLedger {
    /// Reads the ConfigMap `namespace/name` (creating it when absent) and
    /// starts watching it. Fails, naming the object, when the watchdog
    /// may not read or create it.
    pub async fn open(client: Client, namespace: &str, name: &str) -> Result<Self, NotifyError> {
        let api: Api<ConfigMap> = Api::namespaced(client, namespace);
        let err = |what: String| NotifyError::ClusterLedger {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            what,
        };
        let found = within(api.get_opt(name))
            .await
            .map_err(|e| err(format!("cannot read it: {e}")))?;
        let cm = match found {
            Some(cm) => cm,
            None => {
                let fresh = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(name.to_owned()),
                        namespace: Some(namespace.to_owned()),
                        labels: Some(BTreeMap::from([(
                            MANAGED_BY.to_owned(),
                            "rollback-watchdog".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::new()),
                    ..ConfigMap::default()
                };
                match within(api.create(&PostParams::default(), &fresh)).await {
                    Ok(cm) => cm,
                    // Another replica made it first.
                    Err(e) if is_status(&e, 409) => within(api.get(name))
                        .await
                        .map_err(|e| err(format!("cannot read it: {e}")))?,
                    Err(e) => return Err(err(format!("cannot create it: {e}"))),
                }
            }
        };
        let seen = std::sync::Arc::new(MemoryLedger::default());
        learn(&seen, &cm);
        let watch = tokio::spawn(follow(api.clone(), name.to_owned(), seen.clone()));
        Ok(ClusterLedger {
            api,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            seen,
            write: tokio::sync::Mutex::new(()),
            watch,
        })
    }

    async fn append(&self, incident_id: &str, sink: &str) -> Result<(), String> {
        let _one = self.write.lock().await;
        for _ in 0..CONFLICT_RETRIES {
            let mut cm = within(self.api.get(&self.name))
                .await
                .map_err(|e| format!("cannot read it: {e}"))?;
            let data = cm.data.get_or_insert_with(BTreeMap::new);
            let mut lines: Vec<String> = data
                .get(KEY)
                .map(|t| t.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            let line = LedgerLine {
                incident_id: incident_id.to_owned(),
                sink: sink.to_owned(),
                delivered_at: jiff::Timestamp::now().to_string(),
            };
            if lines.iter().any(|l| {
                serde_json::from_str::<LedgerLine>(l)
                    .is_ok_and(|l| l.incident_id == incident_id && l.sink == sink)
            }) {
                return Ok(());
            }
            lines.push(serde_json::to_string(&line).map_err(|e| e.to_string())?);
            let drop = lines.len().saturating_sub(KEEP);
            lines.drain(..drop);
            let mut text = lines.join("\n");
            text.push('\n');
            data.insert(KEY.to_owned(), text);
            match within(self.api.replace(&self.name, &PostParams::default(), &cm)).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(format!("cannot write it: {e}")),
            }
        }
        Err(format!(
            "cannot write it: {CONFLICT_RETRIES} conflicting writes in a row"
        ))
    }
}

impl Drop for ClusterLedger {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

impl DeliveryLedger for ClusterLedger {
    fn already_delivered(&self, incident_id: &str, sink: &str) -> bool {
        self.seen.already_delivered(incident_id, sink)
    }

    fn mark_delivered<'a>(
        &'a self,
        incident_id: &'a str,
        sink: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            self.seen.remember(incident_id, sink);
            self.append(incident_id, sink)
                .await
                .map_err(|what| NotifyError::ClusterLedger {
                    namespace: self.namespace.clone(),
                    name: self.name.clone(),
                    what,
                })
        })
    }
}

/// Adds every line of the ConfigMap to the view.
fn learn(seen: &MemoryLedger, cm: &ConfigMap) {
    let Some(text) = cm.data.as_ref().and_then(|d| d.get(KEY)) else {
        return;
    };
    for line in text.lines() {
        if let Ok(l) = serde_json::from_str::<LedgerLine>(line) {
            seen.remember(&l.incident_id, &l.sink);
        }
    }
}

/// Keeps the view fresh with what other replicas record; restarts the
/// watch after an error, as the caches do.
async fn follow(api: Api<ConfigMap>, name: String, seen: std::sync::Arc<MemoryLedger>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut events = watcher(api, config).boxed();
    loop {
        match events.try_next().await {
            Ok(Some(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm))) => {
                learn(&seen, &cm)
            }
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "delivery ledger watch: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn within<T>(
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, kube::Error> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(r) => r,
        Err(_) => Err(kube::Error::Service(
            format!("no answer within {CALL_TIMEOUT:?}").into(),
        )),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

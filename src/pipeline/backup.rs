//! Backups: before the pipeline changes a Deployment, the whole current
//! object and the rollback record (reason, measured values, from and to
//! revisions and images) are written as a ConfigMap in the watchdog's
//! namespace, labelled for listing and pruned to `backup_retention` per
//! Deployment, oldest first. `restore` reads them back.
//! It must never report a backup it has not seen the API server accept:
//! no backup, no rollback.

use crate::k8s::keys::{BACKUP_OF, FIELD_MANAGER, LABEL_DEPLOYMENT, LABEL_NAMESPACE, MANAGED_BY};
use std::collections::BTreeMap;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::report::incident::{RevisionRef, Trigger};

/// ConfigMap keys.
pub const KEY_DEPLOYMENT: &str = "deployment.json";
pub const KEY_RECORD: &str = "record.json";
/// The final incident report, added when the pipeline finishes.
pub const KEY_RESULT: &str = "result.json";

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot back up {target} to namespace {namespace} (watchdog.namespace): {source}; the rollback is aborted, nothing was changed")]
    Write {
        target: String,
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("cannot back up {target} to namespace {namespace} (watchdog.namespace): the API server did not answer within {timeout:?}; the rollback is aborted, nothing was changed")]
    Timeout {
        target: String,
        namespace: String,
        timeout: Duration,
    },
    #[error("cannot encode the backup of {target}: {source}")]
    Encode {
        target: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("backup {namespace}/{name} not found; list the backups with `rollback-watchdog history NS/NAME`")]
    NotFound { namespace: String, name: String },
    #[error("cannot read backup {namespace}/{name}: {why}")]
    Read {
        namespace: String,
        name: String,
        why: String,
    },
}

/// The rollback record saved next to the Deployment: what the runbook's
/// incident report needs even if the watchdog never comes back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The incident id.
    pub id: String,
    pub namespace: String,
    pub deployment: String,
    pub trigger: Trigger,
    pub reason: String,
    /// The failing signals as sentences ("error ratio 30.2 % > max 5.0 %").
    #[serde(default)]
    pub measured: Vec<String>,
    /// The same signals as structured results.
    #[serde(default)]
    pub signals: Value,
    pub from: RevisionRef,
    pub to: RevisionRef,
    /// When the backup was taken, RFC 3339.
    pub at: String,
    #[serde(default)]
    pub rollout_started_at: Option<String>,
    #[serde(default)]
    pub detected_at: Option<String>,
}

/// A backup as read back.
#[derive(Debug, Clone)]
pub struct Backup {
    /// The ConfigMap's name.
    pub name: String,
    pub namespace: String,
    pub created: Option<jiff::Timestamp>,
    /// The Deployment as it was before the rollback.
    pub deployment: Deployment,
    pub record: Option<Record>,
    /// The final incident report, when the pipeline got that far.
    pub result: Option<Value>,
}

/// Writes and reads backups in one namespace.
/// Retries of a backup write that failed for a passing reason.
const WRITE_RETRIES: usize = 4;

/// A failure worth another try: the server was overloaded or broken for a
/// moment (5xx, 429), or never answered.
pub fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

#[derive(Clone)]
pub struct Backups {
    api: Api<ConfigMap>,
    namespace: String,
    timeout: Duration,
}

impl Backups {
    pub fn new(client: Client, namespace: &str, timeout: Duration) -> Self {
        Backups {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_owned(),
            timeout,
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn target(record: &Record) -> String {
        crate::k8s::DeploymentKey::new(&record.namespace, &record.deployment).to_string()
    }

    /// Writes the backup; returns the ConfigMap's name (`rb-<deploy>-xxxxx`).
    pub async fn write(
        &self,
        deployment: &Deployment,
        record: &Record,
    ) -> Result<String, BackupError> {
        let target = Self::target(record);
        let encode = |source| BackupError::Encode {
            target: target.clone(),
            source,
        };
        let data = BTreeMap::from([
            (
                KEY_DEPLOYMENT.to_owned(),
                serde_json::to_string_pretty(deployment).map_err(encode)?,
            ),
            (
                KEY_RECORD.to_owned(),
                serde_json::to_string_pretty(record).map_err(encode)?,
            ),
        ]);
        let cm = ConfigMap {
            metadata: ObjectMeta {
                generate_name: Some(format!("rb-{}-", short(&record.deployment, 40))),
                labels: Some(labels(&record.namespace, &record.deployment)),
                annotations: Some(BTreeMap::from([(BACKUP_OF.to_owned(), record.id.clone())])),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        // A transient failure (5xx, 429, no answer) is retried a few
        // times: one lost request must not abort a rollback. A create that
        // did land before its answer was lost leaves one spare backup,
        // which pruning removes in time.
        let create = || async {
            match tokio::time::timeout(self.timeout, self.api.create(&pp, &cm)).await {
                Ok(r) => r.map_err(Some),
                Err(_) => Err(None),
            }
        };
        let retried = create
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_delay(Duration::from_secs(2))
                    .with_max_times(WRITE_RETRIES),
            )
            .when(|e: &Option<kube::Error>| e.as_ref().is_none_or(transient))
            .await;
        match retried {
            Ok(created) => Ok(created.name_any()),
            Err(Some(source)) => Err(BackupError::Write {
                target,
                namespace: self.namespace.clone(),
                source,
            }),
            Err(None) => Err(BackupError::Timeout {
                target,
                namespace: self.namespace.clone(),
                timeout: self.timeout,
            }),
        }
    }

    /// Adds the final incident report to a backup (best effort: the audit
    /// log has it too).
    pub async fn add_result(&self, name: &str, result: &Value) -> Result<(), String> {
        let text = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
        let patch = serde_json::json!({"data": {KEY_RESULT: text}});
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        match tokio::time::timeout(
            self.timeout,
            self.api.patch(name, &pp, &Patch::Merge(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "cannot add the result to backup {}/{name}: {e}",
                self.namespace
            )),
            Err(_) => Err(format!(
                "cannot add the result to backup {}/{name}: no answer within {:?}",
                self.namespace, self.timeout
            )),
        }
    }

    /// The backups of one Deployment, oldest first.
    pub async fn list(
        &self,
        namespace: &str,
        deployment: &str,
    ) -> Result<Vec<Backup>, BackupError> {
        let selector = format!(
            "{MANAGED_BY}={FIELD_MANAGER},{LABEL_NAMESPACE}={namespace},{LABEL_DEPLOYMENT}={}",
            short(deployment, 63)
        );
        let lp = ListParams::default().labels(&selector);
        let read_err = |why: String| BackupError::Read {
            namespace: self.namespace.clone(),
            name: format!("(backups of {namespace}/{deployment})"),
            why,
        };
        let list = tokio::time::timeout(self.timeout, self.api.list(&lp))
            .await
            .map_err(|_| read_err(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| read_err(e.to_string()))?;
        let mut out: Vec<Backup> = list
            .items
            .into_iter()
            .filter_map(|cm| parse(&self.namespace, cm).ok())
            .filter(|b| {
                b.record
                    .as_ref()
                    .is_none_or(|r| r.namespace == namespace && r.deployment == deployment)
            })
            .collect();
        out.sort_by(|a, b| a.created.cmp(&b.created).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// One backup by name.
    pub async fn get(&self, name: &str) -> Result<Backup, BackupError> {
        let read_err = |why: String| BackupError::Read {
            namespace: self.namespace.clone(),
            name: name.to_owned(),
            why,
        };
        match tokio::time::timeout(self.timeout, self.api.get_opt(name)).await {
            Err(_) => Err(read_err(format!("no answer within {:?}", self.timeout))),
            Ok(Err(e)) => Err(read_err(e.to_string())),
            Ok(Ok(None)) => Err(BackupError::NotFound {
                namespace: self.namespace.clone(),
                name: name.to_owned(),
            }),
            Ok(Ok(Some(cm))) => parse(&self.namespace, cm),
        }
    }

    /// Deletes one backup (the drill's own, once read back); the problem
    /// as a sentence.
    pub async fn delete(&self, name: &str) -> Result<(), String> {
        match tokio::time::timeout(
            self.timeout,
            self.api.delete(name, &DeleteParams::default()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!(
                "cannot delete backup {}/{name}: {e}",
                self.namespace
            )),
            Err(_) => Err(format!(
                "cannot delete backup {}/{name}: no answer within {:?}",
                self.namespace, self.timeout
            )),
        }
    }

    /// Deletes the oldest backups of a Deployment beyond `keep`; returns the
    /// names deleted. Failures are returned as sentences, never fatal: an
    /// extra backup hurts nobody.
    pub async fn prune(
        &self,
        namespace: &str,
        deployment: &str,
        keep: usize,
    ) -> (Vec<String>, Vec<String>) {
        let (mut deleted, mut problems) = (Vec::new(), Vec::new());
        let list = match self.list(namespace, deployment).await {
            Ok(l) => l,
            Err(e) => return (deleted, vec![e.to_string()]),
        };
        let excess = list.len().saturating_sub(keep);
        for b in list.into_iter().take(excess) {
            match tokio::time::timeout(
                self.timeout,
                self.api.delete(&b.name, &DeleteParams::default()),
            )
            .await
            {
                Ok(Ok(_)) => deleted.push(b.name),
                Ok(Err(e)) => problems.push(format!("cannot prune backup {}: {e}", b.name)),
                Err(_) => problems.push(format!("cannot prune backup {}: timed out", b.name)),
            }
        }
        (deleted, problems)
    }
}

fn parse(namespace: &str, cm: ConfigMap) -> Result<Backup, BackupError> {
    let name = cm.name_any();
    let read_err = |why: String| BackupError::Read {
        namespace: namespace.to_owned(),
        name: name.clone(),
        why,
    };
    let data = cm.data.clone().unwrap_or_default();
    let text = data.get(KEY_DEPLOYMENT).ok_or_else(|| {
        read_err(format!(
            "it has no {KEY_DEPLOYMENT}; it is not a rollback-watchdog backup"
        ))
    })?;
    let deployment: Deployment = serde_json::from_str(text)
        .map_err(|e| read_err(format!("{KEY_DEPLOYMENT} is not a Deployment: {e}")))?;
    let record = data
        .get(KEY_RECORD)
        .and_then(|t| serde_json::from_str(t).ok());
    let result = data
        .get(KEY_RESULT)
        .and_then(|t| serde_json::from_str(t).ok());
    Ok(Backup {
        name: name.clone(),
        namespace: namespace.to_owned(),
        created: cm
            .creation_timestamp()
            .and_then(|t| t.0.to_string().parse().ok()),
        deployment,
        record,
        result,
    })
}

/// The labels every backup of `namespace/deployment` carries.
pub fn labels(namespace: &str, deployment: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
        (LABEL_NAMESPACE.to_owned(), namespace.to_owned()),
        (LABEL_DEPLOYMENT.to_owned(), short(deployment, 63)),
    ])
}

/// Label values are at most 63 characters; names of Deployments may be longer.
fn short(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .collect::<String>()
        .trim_end_matches(['-', '.'])
        .to_owned()
}

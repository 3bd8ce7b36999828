//! What Kubernetes itself defines, as the watchdog uses it: the well-known
//! annotation and label keys, label selectors, and the client connection.

pub mod keys;
pub mod selector;

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

/// A Deployment's namespace and name: `namespace/name` in every log line,
/// Event, audit line, notification and on the command line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentKey {
    pub namespace: String,
    pub name: String,
}

impl DeploymentKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        DeploymentKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of a Deployment object.
    pub fn of(d: &Deployment) -> Self {
        DeploymentKey {
            namespace: d.namespace().unwrap_or_default(),
            name: d.name_any(),
        }
    }
}

impl fmt::Display for DeploymentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl FromStr for DeploymentKey {
    type Err = String;

    /// `NAMESPACE/NAME`, both parts non-empty.
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(DeploymentKey::new(ns, name))
            }
            _ => Err(format!(
                "{s:?} is not NAMESPACE/NAME, e.g. production/kailash-kaizen"
            )),
        }
    }
}

/// How long connecting to the cluster may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot connect to the cluster: {0}; set KUBECONFIG (or run in-cluster) and try again"
    )]
    Connect(String),
    #[error("KUBECONFIG names {0}, which does not exist; point KUBECONFIG at your kubeconfig file (or unset it to use ~/.kube/config or the in-cluster service account)")]
    NoKubeconfig(String),
}

/// `kube::Client::try_default()` (KUBECONFIG or in-cluster), bounded.
pub async fn connect() -> Result<Client, ConnectError> {
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        // kubectl skips missing files in a list; none at all is a mistake.
        let paths: Vec<_> = std::env::split_paths(&path).collect();
        if paths.iter().all(|p| !p.exists()) {
            let named: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(ConnectError::NoKubeconfig(named.join(", ")));
        }
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, Client::try_default()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(ConnectError::Connect(e.to_string())),
        Err(_) => Err(ConnectError::Connect(format!(
            "no answer within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// How long one annotation write may take before it is given up (the
/// next tick retries).
pub const PATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Sets the annotation `key` of the Deployment `namespace/name` to `value`:
/// a merge patch of that one annotation with the watchdog's field manager,
/// so the spec (and the generation) are untouched. `Err(None)`: no answer
/// within [`PATCH_TIMEOUT`].
pub async fn annotate_deployment(
    client: &Client,
    namespace: &str,
    name: &str,
    key: &str,
    value: &str,
) -> Result<(), Option<kube::Error>> {
    let patch = serde_json::json!({"metadata": {"annotations": {key: value}}});
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match tokio::time::timeout(
        PATCH_TIMEOUT,
        api.patch(name, &params, &Patch::Merge(&patch)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Some(e)),
        Err(_) => Err(None),
    }
}

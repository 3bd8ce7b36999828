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
    #[error("--kubeconfig names {0}, which does not exist; give the path of your kubeconfig file")]
    NoKubeconfigFlag(String),
    #[error("cannot use {what}: {error}; `kubectl config get-contexts` lists the contexts there")]
    Kubeconfig { what: String, error: String },
}

/// Which kubeconfig and context to connect with, as kubectl's global
/// `--kubeconfig` and `--context` say. The default is what
/// `kube::Client::try_default` uses: `KUBECONFIG` (else `~/.kube/config`,
/// else the in-cluster service account) and its current context.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeOptions {
    pub kubeconfig: Option<std::path::PathBuf>,
    pub context: Option<String>,
}

static KUBE_OPTIONS: std::sync::OnceLock<KubeOptions> = std::sync::OnceLock::new();

/// Sets the connection options for the rest of the process; the command
/// line calls it once, before anything connects. A second call is ignored.
pub fn use_kube_options(options: KubeOptions) {
    let _ = KUBE_OPTIONS.set(options);
}

fn kube_options() -> KubeOptions {
    KUBE_OPTIONS.get().cloned().unwrap_or_default()
}

/// The client configuration the connection options select, unbounded.
pub async fn client_config() -> Result<kube::Config, ConnectError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = kube_options();
    let selected = KubeConfigOptions {
        context: options.context.clone(),
        ..KubeConfigOptions::default()
    };
    let what = |source: &str| match &options.context {
        Some(context) => format!("context {context:?} of {source}"),
        None => source.to_owned(),
    };
    if let Some(path) = &options.kubeconfig {
        if !path.exists() {
            return Err(ConnectError::NoKubeconfigFlag(path.display().to_string()));
        }
        let source = format!("kubeconfig {}", path.display());
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| ConnectError::Kubeconfig {
            what: source.clone(),
            error: e.to_string(),
        })?;
        return kube::Config::from_custom_kubeconfig(kubeconfig, &selected)
            .await
            .map_err(|e| ConnectError::Kubeconfig {
                what: what(&source),
                error: e.to_string(),
            });
    }
    if let Some(path) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        // kubectl skips missing files in a list; none at all is a mistake.
        let paths: Vec<_> = std::env::split_paths(&path).collect();
        if paths.iter().all(|p| !p.exists()) {
            let named: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            return Err(ConnectError::NoKubeconfig(named.join(", ")));
        }
    }
    if options.context.is_some() {
        return kube::Config::from_kubeconfig(&selected).await.map_err(|e| {
            ConnectError::Kubeconfig {
                what: what("the kubeconfig (KUBECONFIG or ~/.kube/config)"),
                error: e.to_string(),
            }
        });
    }
    kube::Config::infer()
        .await
        .map_err(|e| ConnectError::Connect(e.to_string()))
}

/// A client for the cluster the connection options select, bounded.
pub async fn connect() -> Result<Client, ConnectError> {
    let connecting = async {
        let config = client_config().await?;
        Client::try_from(config).map_err(|e| ConnectError::Connect(e.to_string()))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(result) => result,
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

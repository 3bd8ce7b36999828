//! What Kubernetes itself defines, as the watchdog uses it: the well-known
//! annotation and label keys, label selectors, and the client connection.

pub mod keys;
pub mod selector;

use std::time::Duration;

use kube::Client;

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

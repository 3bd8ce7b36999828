//! The Service in front of each Deployment, as kube-proxy makes one: its
//! own loopback address (`127.x.y.z`, from the same allocator as pod IPs)
//! on the Deployment's container port, balancing over the Ready pods of
//! every revision the Deployment's selector matches. Like kube-proxy it
//! balances per TCP connection (round-robin at accept, then bytes are piped
//! both ways), so a kept-alive client connection stays on one pod; with no
//! Ready endpoint nothing listens, so a connection is refused (kube-proxy's
//! REJECT). It must never listen on anything but loopback, nor route to a
//! pod that is not Ready or is terminating.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::kubelet::SharedIps;
use super::objects::{i64_at, name, namespace, str_at, uid};
use super::store::{Store, DEPLOYMENTS, PODS, REPLICASETS};
use crate::k8s::selector::Selector;

/// The port a Service listens on and forwards to when the Deployment's
/// first container names none (the kubelet serves pods on it too).
pub const DEFAULT_PORT: u16 = 8080;

/// The Services of a sim, one per Deployment. Cheap to clone; clones share
/// state. The controller loop calls [`Services::reconcile`] on every pass.
#[derive(Clone)]
pub struct Services {
    inner: Arc<Mutex<BTreeMap<(String, String), Service>>>,
    ips: SharedIps,
}

struct Service {
    addr: SocketAddr,
    endpoints: Arc<Mutex<Endpoints>>,
    /// The accept loop, while there are endpoints.
    listener: Option<JoinHandle<()>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(task) = self.listener.take() {
            task.abort();
        }
    }
}

/// The Ready pods behind a Service and where round-robin stands.
#[derive(Default)]
struct Endpoints {
    addrs: Vec<SocketAddr>,
    next: usize,
}

impl Endpoints {
    fn pick(&mut self) -> Option<SocketAddr> {
        if self.addrs.is_empty() {
            return None;
        }
        let addr = self.addrs[self.next % self.addrs.len()];
        self.next = self.next.wrapping_add(1);
        Some(addr)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every write under these locks is whole; poisoning is not fatal.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The first container's first port of a pod spec, as the kubelet serves it.
fn container_port(spec: &Value) -> u16 {
    i64_at(spec, "/containers/0/ports/0/containerPort")
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT)
}

/// Where a pod serves, if it is a Service endpoint: Ready, not terminating,
/// with an IP.
fn endpoint(pod: &Value) -> Option<SocketAddr> {
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        return None;
    }
    let ready = pod
        .pointer("/status/conditions")
        .and_then(Value::as_array)?
        .iter()
        .any(|c| str_at(c, "/type") == Some("Ready") && str_at(c, "/status") == Some("True"));
    let ip: Ipv4Addr = str_at(pod, "/status/podIP")?.parse().ok()?;
    let port = container_port(pod.get("spec")?);
    ready.then_some(SocketAddr::from((ip, port)))
}

/// A Deployment's selector; `None` when it is empty or unreadable (it then
/// selects nothing, as the API server would not have accepted it).
fn selector_of(d: &Value) -> Option<Selector> {
    let raw = d.pointer("/spec/selector")?;
    let has_terms = ["matchLabels", "matchExpressions"]
        .iter()
        .any(|k| match raw.get(*k) {
            Some(Value::Object(o)) => !o.is_empty(),
            Some(Value::Array(a)) => !a.is_empty(),
            _ => false,
        });
    has_terms
        .then(|| Selector::from_label_selector_json(raw).ok())
        .flatten()
}

impl Services {
    pub fn new(ips: SharedIps) -> Self {
        Services {
            inner: Arc::default(),
            ips,
        }
    }

    /// `http://127.x.y.z:PORT` of the Deployment's Service, or `None` when
    /// the Deployment does not exist. The address is fixed from the first
    /// call (or controller pass) on; the port is the Deployment's first
    /// container port then ([`DEFAULT_PORT`] if it names none).
    pub fn url(&self, store: &Store, ns: &str, deployment: &str) -> Option<String> {
        let d = store.get(&DEPLOYMENTS, ns, deployment).ok()?;
        let mut services = lock(&self.inner);
        let service = self.entry(&mut services, &d);
        Some(format!("http://{}", service.addr))
    }

    fn entry<'a>(
        &self,
        services: &'a mut BTreeMap<(String, String), Service>,
        d: &Value,
    ) -> &'a mut Service {
        let key = (namespace(d).to_string(), name(d).to_string());
        services.entry(key).or_insert_with(|| {
            let port = d
                .pointer("/spec/template/spec")
                .map(container_port)
                .unwrap_or(DEFAULT_PORT);
            Service {
                addr: SocketAddr::from((self.ips.next_ip(), port)),
                endpoints: Arc::default(),
                listener: None,
            }
        })
    }

    /// Stops every Service (the controllers stopped): connections are
    /// refused from now on.
    pub fn clear(&self) {
        lock(&self.inner).clear();
    }

    /// Sets every Service's endpoints from the pods now, listens where there
    /// are some and stops listening where there are none. Must run inside a
    /// tokio runtime.
    pub fn reconcile(&self, store: &Store) {
        let (deployments, _) = store.list(&DEPLOYMENTS, None);
        let (pods, _) = store.list(&PODS, None);
        // The Ready pods, read once: (namespace, name, labels, address).
        let mut ready: Vec<(String, String, BTreeMap<String, String>, SocketAddr)> = pods
            .iter()
            .filter_map(|p| {
                let addr = endpoint(p)?;
                let labels = p
                    .pointer("/metadata/labels")
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                            .collect()
                    })
                    .unwrap_or_default();
                Some((namespace(p).to_string(), name(p).to_string(), labels, addr))
            })
            .collect();
        // Endpoints in pod-name order, so round-robin is reproducible.
        ready.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        let mut services = lock(&self.inner);
        let live: BTreeSet<(String, String)> = deployments
            .iter()
            .map(|d| (namespace(d).to_string(), name(d).to_string()))
            .collect();
        services.retain(|key, _| live.contains(key));
        for d in &deployments {
            let addrs: Vec<SocketAddr> = match selector_of(d) {
                Some(selector) => ready
                    .iter()
                    .filter(|(ns, _, labels, _)| ns == namespace(d) && selector.matches(labels))
                    .map(|(_, _, _, addr)| *addr)
                    .collect(),
                None => Vec::new(),
            };
            self.set_endpoints(&mut services, d, addrs);
        }
    }

    /// The same for the Deployments in `keys` (namespace, name) only,
    /// whose endpoints are the Ready pods of their own ReplicaSets that
    /// the selector matches (pods are found by owner, not by scanning).
    pub fn reconcile_keys(&self, store: &Store, keys: &BTreeSet<(String, String)>) {
        for key in keys {
            let Ok(d) = store.get(&DEPLOYMENTS, &key.0, &key.1) else {
                lock(&self.inner).remove(key);
                continue;
            };
            let mut ready: Vec<(String, SocketAddr)> = Vec::new();
            if let Some(selector) = selector_of(&d) {
                for rs in store.list_owned(&REPLICASETS, &key.0, uid(&d)) {
                    for p in store.list_owned(&PODS, &key.0, uid(&rs)) {
                        let Some(addr) = endpoint(&p) else {
                            continue;
                        };
                        let labels: BTreeMap<String, String> = p
                            .pointer("/metadata/labels")
                            .and_then(Value::as_object)
                            .map(|m| {
                                m.iter()
                                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                                    .collect()
                            })
                            .unwrap_or_default();
                        if selector.matches(&labels) {
                            ready.push((name(&p).to_string(), addr));
                        }
                    }
                }
            }
            ready.sort();
            let addrs = ready.into_iter().map(|(_, a)| a).collect();
            let mut services = lock(&self.inner);
            self.set_endpoints(&mut services, &d, addrs);
        }
    }

    fn set_endpoints(
        &self,
        services: &mut BTreeMap<(String, String), Service>,
        d: &Value,
        addrs: Vec<SocketAddr>,
    ) {
        let service = self.entry(services, d);
        let serving = !addrs.is_empty();
        {
            let mut endpoints = lock(&service.endpoints);
            if endpoints.addrs != addrs {
                endpoints.addrs = addrs;
            }
        }
        match (serving, service.listener.is_some()) {
            (true, false) => service.listener = listen(service),
            (false, true) => {
                // Closing the listener refuses new connections; those
                // already piped stay, as conntrack keeps them.
                if let Some(task) = service.listener.take() {
                    task.abort();
                }
            }
            _ => {}
        }
    }
}

/// Binds the Service's address and starts its accept loop; `None` (logged,
/// retried on the next pass) when the address cannot be bound.
fn listen(service: &Service) -> Option<JoinHandle<()>> {
    let bound = std::net::TcpListener::bind(service.addr).and_then(|l| {
        l.set_nonblocking(true)?;
        TcpListener::from_std(l)
    });
    match bound {
        Ok(listener) => Some(tokio::spawn(proxy(listener, service.endpoints.clone()))),
        Err(error) => {
            tracing::warn!(addr = %service.addr, %error, "sim service cannot listen; retrying");
            None
        }
    }
}

/// Accepts connections and pipes each to the next Ready endpoint.
async fn proxy(listener: TcpListener, endpoints: Arc<Mutex<Endpoints>>) {
    loop {
        let mut client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(error) => {
                // Out of file descriptors and the like: wait, then go on.
                tracing::warn!(%error, "sim service accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(backend) = lock(&endpoints).pick() else {
            continue;
        };
        tokio::spawn(async move {
            // A pod that went away meanwhile: the client sees its
            // connection closed, as it would through kube-proxy.
            if let Ok(mut server) = TcpStream::connect(backend).await {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ready: &str, ip: &str, terminating: bool) -> Value {
        let mut p = json!({
            "metadata": {"name": "web-1", "labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "ports": [{"containerPort": 9090}]}]},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": ready}]},
        });
        if terminating {
            p["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
        }
        p
    }

    #[test]
    fn only_ready_pods_that_are_not_terminating_are_endpoints() {
        assert_eq!(
            endpoint(&pod("True", "127.9.0.3", false)),
            Some(SocketAddr::from(([127, 9, 0, 3], 9090)))
        );
        assert_eq!(endpoint(&pod("False", "127.9.0.3", false)), None);
        assert_eq!(endpoint(&pod("True", "127.9.0.3", true)), None);
        assert_eq!(endpoint(&pod("True", "", false)), None);
    }

    #[test]
    fn round_robin_visits_every_endpoint_in_turn() {
        let a = SocketAddr::from(([127, 0, 0, 2], 1));
        let b = SocketAddr::from(([127, 0, 0, 3], 1));
        let mut e = Endpoints {
            addrs: vec![a, b],
            next: 0,
        };
        assert_eq!([e.pick(), e.pick(), e.pick()], [Some(a), Some(b), Some(a)]);
        e.addrs.clear();
        assert_eq!(e.pick(), None);
    }
}

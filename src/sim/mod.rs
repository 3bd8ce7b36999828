//! The simulated cluster: a loopback Kubernetes API server with a deployment
//! controller, a kubelet and a small app that serves metrics, so the
//! watchdog's real `kube` client can be tested over real HTTP with no real
//! cluster. It must never listen on anything but loopback.

pub mod app;
pub mod behaviour;
pub mod clock;
pub mod deployment;
pub mod kubelet;
pub mod objects;
pub mod prometheus;
pub mod replicaset;
pub mod runtime;
pub mod store;

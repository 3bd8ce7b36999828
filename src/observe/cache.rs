//! Watch caches of Deployments, ReplicaSets and Pods: `kube::runtime`
//! reflectors kept current by watches, so an evaluation tick reads memory
//! and never calls the API server. It must never list or get on a tick;
//! only the watchers talk to the API server, and they retry with backoff.
//!
//! Scope: one watcher per kind and namespace, for the namespaces of the
//! `[[targets]]` entries and `watchdog.opt_in_namespaces`. That needs only
//! namespaced `list`/`watch` (a RoleBinding per namespace), which is what
//! least-privilege installs ask for. Only `opt_in_namespaces = ["*"]`
//! watches the whole cluster (one watcher per kind, a ClusterRole).
//!
//! Lists use `any_semantic()` (`resourceVersion=0`): the API server answers
//! from its watch cache instead of etcd, which matters with many namespaces;
//! the list may be slightly stale, and the watch that follows brings it
//! current. Streaming lists would avoid the list entirely but need the
//! `WatchList` feature on the server, which not every supported cluster
//! has. Pods are watched with the selector `pod-template-hash` (only pods of
//! Deployments matter). Objects are stored trimmed to what the watchdog
//! reads: no `managedFields` on any kind, no last-applied annotation on
//! Deployments, and pods without their spec (see `trim_pod`), so memory
//! grows with the number of objects, not with their size.
//!
//! Each watcher's liveness is tracked: a stream error marks it stalled (the
//! cache keeps its last state, and the watcher retries with backoff); the
//! next watch event, or the end of a re-list (`InitDone`), marks it live
//! again, and so does [`WATCH_RECOVERY`] without a new error (a failing
//! watcher reports an error at every retry, at least every 30 s, but one
//! that re-watches without re-listing in a quiet namespace reports
//! nothing). [`Snapshot::pods_live_at`] dates what the pod cache shows, so
//! a state re-read from a stalled watch is not taken for new evidence.
//! Known limit: a stream that stalls silently (a half-open TCP connection)
//! is noticed only when the client's read timeout fires and it reports an
//! error; until then its state looks current.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::observe::wake::{Wakes, Wakeups};

/// What a user sets in `opt_in_namespaces` to mean every namespace.
pub const ALL_NAMESPACES: &str = "*";

#[derive(Debug, Clone, thiserror::Error)]
pub enum CacheError {
    #[error("the {kind} watcher stopped before its first sync; the caches will not become ready")]
    WatcherStopped { kind: &'static str },
}

/// Which namespaces the caches watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// One cluster-wide watcher per kind (`opt_in_namespaces = ["*"]`).
    AllNamespaces,
    /// One watcher per kind and namespace.
    Namespaces(BTreeSet<String>),
}

impl Scope {
    /// The namespaces the config needs: every target's namespace and every
    /// opt-in namespace, or the whole cluster when opt-in says `"*"`.
    pub fn from_config(config: &Config) -> Scope {
        let opt_in = &config.watchdog.opt_in_namespaces;
        if opt_in.iter().any(|ns| ns == ALL_NAMESPACES) {
            return Scope::AllNamespaces;
        }
        Scope::Namespaces(
            config
                .targets
                .iter()
                .map(|t| t.namespace.clone())
                .chain(opt_in.iter().cloned())
                .collect(),
        )
    }

    /// Whether objects of this namespace are in the caches.
    pub fn covers(&self, namespace: &str) -> bool {
        match self {
            Scope::AllNamespaces => true,
            Scope::Namespaces(set) => set.contains(namespace),
        }
    }
}

/// A stalled watcher that reported no new error for this long has
/// re-watched: kube-runtime's default backoff retries at least every 30 s,
/// and each failed retry reports an error.
pub const WATCH_RECOVERY: std::time::Duration = std::time::Duration::from_secs(90);

/// Whether one watcher's stream is live: `None` while it is, or (first,
/// last) error of the current stall.
#[derive(Debug, Clone, Default)]
struct Liveness(Arc<std::sync::Mutex<Option<(Timestamp, Timestamp)>>>);

impl Liveness {
    fn stalled(&self, at: Timestamp) {
        if let Ok(mut stall) = self.0.lock() {
            let first = stall.map_or(at, |(first, _)| first);
            *stall = Some((first, at));
        }
    }

    fn live(&self) {
        if let Ok(mut stall) = self.0.lock() {
            *stall = None;
        }
    }

    /// When the watch was last known live, while it is stalled at `now`.
    fn stalled_since(&self, now: Timestamp) -> Option<Timestamp> {
        let (first, last) = self.0.lock().ok().and_then(|stall| *stall)?;
        let recovery = jiff::SignedDuration::try_from(WATCH_RECOVERY).unwrap_or_default();
        (now.duration_since(last) < recovery).then_some(first)
    }
}

/// The readers of one kind's reflectors, one per watched namespace (or one
/// for the whole cluster).
struct KindCache<K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + 'static> {
    stores: Vec<Store<K>>,
    /// Per reflector, in the order of `stores`: its namespace (None: all)
    /// and whether its watch is live.
    liveness: Vec<(Option<String>, Liveness)>,
}

impl<K> KindCache<K>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + Wakes
        + 'static,
{
    fn start(
        client: &Client,
        scope: &Scope,
        config: &watcher::Config,
        kind: &'static str,
        strip: fn(&mut K),
        tasks: &mut Vec<JoinHandle<()>>,
        wakeups: &Arc<Wakeups>,
    ) -> Self {
        let apis: Vec<(Option<String>, Api<K>)> = match scope {
            Scope::AllNamespaces => vec![(None, Api::all(client.clone()))],
            Scope::Namespaces(set) => set
                .iter()
                .map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns)))
                .collect(),
        };
        let mut stores = Vec::with_capacity(apis.len());
        let mut liveness = Vec::with_capacity(apis.len());
        for (namespace, api) in apis {
            let (reader, writer) = reflector::store();
            let stream = watcher(api, config.clone())
                .default_backoff()
                .modify(strip)
                .reflect(writer);
            let live = Liveness::default();
            let task_live = live.clone();
            let wakeups = wakeups.clone();
            tasks.push(tokio::spawn(async move {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Err(e) => {
                            // Retried with backoff by the stream itself; the
                            // cache keeps its last state meanwhile, which is
                            // no longer news.
                            task_live.stalled(Timestamp::now());
                            tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
                        }
                        // Re-listing: the store is rebuilt only at InitDone.
                        Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                        Ok(watcher::Event::Apply(obj)) => {
                            task_live.live();
                            wakeups.offer(&obj);
                        }
                        Ok(_) => task_live.live(),
                    }
                }
            }));
            stores.push(reader);
            liveness.push((namespace, live));
        }
        KindCache { stores, liveness }
    }

    /// (namespace or None for all, since when) of each stalled watcher.
    fn stalled(&self, now: Timestamp) -> Vec<(Option<String>, Timestamp)> {
        self.liveness
            .iter()
            .filter_map(|(ns, live)| Some((ns.clone(), live.stalled_since(now)?)))
            .collect()
    }

    fn all(&self) -> impl Iterator<Item = Arc<K>> + '_ {
        self.stores.iter().flat_map(|s| s.state())
    }
}

fn strip_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// A Deployment as the caches keep it: no managedFields, and no
/// `kubectl.kubernetes.io/last-applied-configuration` (a second copy of
/// the whole object that nothing here reads). The pipeline reads the
/// whole Deployment from the API when it acts.
fn trim_deployment(d: &mut Deployment) {
    strip_managed_fields(d);
    if let Some(annotations) = d.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
    }
}

/// A pod as the caches keep it: metadata (without managedFields) and
/// status. The watchdog reads nothing of a pod's spec, which is most of
/// its size (containers, env, volumes).
fn trim_pod(p: &mut Pod) {
    strip_managed_fields(p);
    p.spec = None;
    if let Some(status) = p.status.as_mut() {
        status.host_ips = None;
        status.pod_ips = None;
        status.qos_class = None;
    }
}

const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// The three caches and their watcher tasks. Dropping it stops the watchers.
pub struct Caches {
    scope: Scope,
    deployments: KindCache<Deployment>,
    replicasets: KindCache<ReplicaSet>,
    pods: KindCache<Pod>,
    /// None while syncing, then the outcome of the first sync. Only one
    /// task waits on the reflector stores and publishes here: a store's
    /// readiness wakes a single waiter (kube-runtime 5 keeps one waker in
    /// a oneshot), so a second concurrent waiter would hang until polled
    /// again for some other reason.
    ready: watch::Receiver<Option<Result<(), CacheError>>>,
    tasks: Vec<JoinHandle<()>>,
    /// What watch events ask to evaluate before the next tick.
    wakeups: Arc<Wakeups>,
}

impl Caches {
    /// Starts the watchers for `scope`. Must run inside a tokio runtime;
    /// returns at once, see [`Caches::ready`].
    pub fn start(client: Client, scope: Scope) -> Caches {
        let mut tasks = Vec::new();
        let wakeups = Arc::new(Wakeups::default());
        let base = watcher::Config::default().any_semantic();
        let deployments = KindCache::start(
            &client,
            &scope,
            &base,
            "Deployment",
            trim_deployment,
            &mut tasks,
            &wakeups,
        );
        let replicasets = KindCache::start(
            &client,
            &scope,
            &base,
            "ReplicaSet",
            strip_managed_fields,
            &mut tasks,
            &wakeups,
        );
        let pods = KindCache::start(
            &client,
            &scope,
            &base.clone().labels(crate::k8s::keys::POD_TEMPLATE_HASH),
            "Pod",
            trim_pod,
            &mut tasks,
            &wakeups,
        );
        let (tx, ready) = watch::channel(None);
        let waits = Self::ready_waits(&deployments, &replicasets, &pods);
        tasks.push(tokio::spawn(async move {
            let outcome = waits.await;
            if let Err(e) = &outcome {
                tracing::error!(error = %e, "watch caches will not become ready");
            }
            tx.send_replace(Some(outcome));
        }));
        Caches {
            scope,
            deployments,
            replicasets,
            pods,
            ready,
            tasks,
            wakeups,
        }
    }

    /// The caches for a config: [`Scope::from_config`].
    pub fn for_config(client: Client, config: &Config) -> Caches {
        Self::start(client, Scope::from_config(config))
    }

    fn ready_waits(
        deployments: &KindCache<Deployment>,
        replicasets: &KindCache<ReplicaSet>,
        pods: &KindCache<Pod>,
    ) -> impl std::future::Future<Output = Result<(), CacheError>> + Send + 'static {
        fn waits<K>(
            cache: &KindCache<K>,
            kind: &'static str,
        ) -> Vec<futures::future::BoxFuture<'static, Result<(), CacheError>>>
        where
            K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
                + Clone
                + Send
                + Sync
                + 'static,
        {
            cache
                .stores
                .iter()
                .cloned()
                .map(
                    |s| -> futures::future::BoxFuture<'static, Result<(), CacheError>> {
                        Box::pin(async move {
                            s.wait_until_ready()
                                .await
                                .map_err(|_| CacheError::WatcherStopped { kind })
                        })
                    },
                )
                .collect()
        }
        let mut all = waits(deployments, "Deployment");
        all.extend(waits(replicasets, "ReplicaSet"));
        all.extend(waits(pods, "Pod"));
        async move {
            for r in futures::future::join_all(all).await {
                r?;
            }
            Ok(())
        }
    }

    /// Completes once every reflector has finished its first sync (what
    /// `/readyz` waits for).
    /// Any number of callers may wait at once.
    pub async fn ready(&self) -> Result<(), CacheError> {
        let mut rx = self.ready.clone();
        let outcome = match rx.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
            // The publishing task is gone without an outcome: aborted.
            Err(_) => Err(CacheError::WatcherStopped { kind: "readiness" }),
        };
        outcome
    }

    /// Whether every reflector has finished its first sync. Cheap.
    pub fn is_ready(&self) -> bool {
        matches!(*self.ready.borrow(), Some(Ok(())))
    }

    /// The wake-ups watch events leave for the run loop ([`Wakeups`]).
    pub fn wakeups(&self) -> &Arc<Wakeups> {
        &self.wakeups
    }

    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    /// What the caches hold now, indexed for a tick. Reads memory only.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot::new(
            self.is_ready(),
            self.scope.clone(),
            self.deployments.all(),
            self.replicasets.all(),
            self.pods.all(),
        )
        .with_pod_watches_stalled(self.pods.stalled(Timestamp::now()))
    }
}

impl Drop for Caches {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// The caches' content at one instant, indexed the way a tick reads it:
/// Deployments by namespace and name, ReplicaSets by their controller's
/// uid, Pods by namespace and `pod-template-hash`. Built once per tick in
/// time linear in the number of objects; every lookup after that is a hash
/// lookup.
#[derive(Clone, Default)]
pub struct Snapshot {
    ready: bool,
    scope: Option<Scope>,
    deployments: HashMap<String, BTreeMap<String, Arc<Deployment>>>,
    replicasets_by_owner: HashMap<String, Vec<Arc<ReplicaSet>>>,
    pods_by_hash: HashMap<(String, String), Vec<Arc<Pod>>>,
    /// Pod watchers that are not live: (namespace, None for all; since when).
    pods_stalled: Vec<(Option<String>, Timestamp)>,
}

impl Snapshot {
    fn new(
        ready: bool,
        scope: Scope,
        deployments: impl IntoIterator<Item = Arc<Deployment>>,
        replicasets: impl IntoIterator<Item = Arc<ReplicaSet>>,
        pods: impl IntoIterator<Item = Arc<Pod>>,
    ) -> Snapshot {
        let mut snap = Snapshot {
            ready,
            scope: Some(scope),
            ..Snapshot::default()
        };
        for d in deployments {
            snap.deployments
                .entry(d.namespace().unwrap_or_default())
                .or_default()
                .insert(d.name_any(), d);
        }
        for rs in replicasets {
            let owner = rs
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true) && o.kind == "Deployment")
                .map(|o| o.uid.clone());
            if let Some(uid) = owner {
                snap.replicasets_by_owner.entry(uid).or_default().push(rs);
            }
        }
        for pod in pods {
            let hash = pod
                .labels()
                .get(crate::k8s::keys::POD_TEMPLATE_HASH)
                .cloned();
            if let Some(hash) = hash {
                let key = (pod.namespace().unwrap_or_default(), hash);
                snap.pods_by_hash.entry(key).or_default().push(pod);
            }
        }
        snap
    }

    /// A snapshot of hand-made objects (unit tests, `status --once`): ready,
    /// covering every namespace.
    pub fn from_objects(
        deployments: impl IntoIterator<Item = Deployment>,
        replicasets: impl IntoIterator<Item = ReplicaSet>,
        pods: impl IntoIterator<Item = Pod>,
    ) -> Snapshot {
        Snapshot::new(
            true,
            Scope::AllNamespaces,
            deployments.into_iter().map(Arc::new),
            replicasets.into_iter().map(Arc::new),
            pods.into_iter().map(Arc::new),
        )
    }

    /// Marks pod watchers as stalled: (namespace, None for every namespace;
    /// when last known live).
    pub fn with_pod_watches_stalled(
        mut self,
        stalled: impl IntoIterator<Item = (Option<String>, Timestamp)>,
    ) -> Snapshot {
        self.pods_stalled.extend(stalled);
        self
    }

    /// When the pod watch of `namespace` was last known live, while it is
    /// not (it reported an error and has not re-listed yet); None while
    /// it is live.
    pub fn pods_stalled_since(&self, namespace: &str) -> Option<Timestamp> {
        self.pods_stalled
            .iter()
            .filter(|(ns, _)| ns.as_deref().is_none_or(|ns| ns == namespace))
            .map(|(_, since)| *since)
            .min()
    }

    /// The evidence time of the cached pods of `namespace`: `now` while
    /// their watch is live, else when it was last known live.
    pub fn pods_live_at(&self, namespace: &str, now: Timestamp) -> Timestamp {
        self.pods_stalled_since(namespace)
            .map_or(now, |since| since.min(now))
    }

    /// Whether the caches had finished their first sync: before that, a
    /// Deployment missing from the snapshot proves nothing.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether the namespace is watched at all.
    pub fn covers(&self, namespace: &str) -> bool {
        self.scope.as_ref().is_none_or(|s| s.covers(namespace))
    }

    pub fn deployment(&self, namespace: &str, name: &str) -> Option<&Arc<Deployment>> {
        self.deployments.get(namespace)?.get(name)
    }

    /// Every cached Deployment, in no particular order.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments.values().flat_map(BTreeMap::values)
    }

    /// The Deployments of one namespace, sorted by name.
    pub fn deployments_in(&self, namespace: &str) -> impl Iterator<Item = &Arc<Deployment>> {
        self.deployments
            .get(namespace)
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// The namespaces that have at least one cached Deployment.
    pub fn namespaces(&self) -> impl Iterator<Item = &str> {
        self.deployments.keys().map(String::as_str)
    }

    /// The ReplicaSets whose controller is the Deployment with this uid.
    pub fn replicasets_of(&self, deployment_uid: &str) -> &[Arc<ReplicaSet>] {
        self.replicasets_by_owner
            .get(deployment_uid)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The pods of a namespace carrying this `pod-template-hash`.
    pub fn pods_with_hash(&self, namespace: &str, hash: &str) -> &[Arc<Pod>] {
        self.pods_by_hash
            .get(&(namespace.to_owned(), hash.to_owned()))
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("a test time")
    }

    #[test]
    fn a_watch_is_stalled_from_its_first_error_until_an_event_or_a_quiet_spell() {
        let live = Liveness::default();
        assert_eq!(live.stalled_since(at(0)), None);
        live.stalled(at(0));
        live.stalled(at(30));
        assert_eq!(
            live.stalled_since(at(60)),
            Some(at(0)),
            "known live until the first error"
        );
        assert_eq!(live.stalled_since(at(119)), Some(at(0)));
        assert_eq!(
            live.stalled_since(at(120)),
            None,
            "90 s without an error: re-watched"
        );
        live.stalled(at(200));
        live.live();
        assert_eq!(live.stalled_since(at(201)), None, "an event: live");
    }

    #[test]
    fn pods_are_dated_by_the_watch_of_their_namespace() {
        let snap =
            Snapshot::default().with_pod_watches_stalled([(Some("staging".to_owned()), at(0))]);
        assert_eq!(snap.pods_live_at("production", at(60)), at(60));
        assert_eq!(snap.pods_live_at("staging", at(60)), at(0));
        let all = Snapshot::default().with_pod_watches_stalled([(None, at(0))]);
        assert_eq!(all.pods_live_at("production", at(60)), at(0));
        assert_eq!(all.pods_stalled_since("production"), Some(at(0)));
    }
}

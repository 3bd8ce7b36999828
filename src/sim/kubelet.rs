//! The simulated kubelet: plays each pod's life from its (first
//! container's) image behaviour and writes the pod status a real kubelet
//! would (phase, conditions, containerStatuses, IPs), starting and stopping
//! the pod's app server. Status is a pure function of the behaviour and the
//! sim time since the kubelet first saw the pod, so it is written only when
//! something changes. It must never write anything but pod status.
//!
//! Timeline in sim time (divided by the clock's scale in real time):
//! containers are created for 1 s; a healthy container then runs (its app
//! listening, `/health` answering its warm-up status if it has one) and
//! turns ready at `ready_after`, when the app learns it first. A crashing one runs 2 s, shows `Error` or
//! `OOMKilled` for 1 s, then waits in `CrashLoopBackOff`, restarting every
//! 5 s (restartCount +1 each time). A failing pull shows `ErrImagePull` for
//! 1.5 s of every 5 s and `ImagePullBackOff` otherwise.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::app::{AppServer, AppState, ScrapeTarget, ScrapeTargets};
use super::behaviour::{Behaviour, Behaviours, Crash};
use super::clock::{rfc3339, SimClock};
use super::deployment::POD_TEMPLATE_HASH;
use super::objects::{controller_owner, i64_at, name, namespace, str_at, uid, ControllerError};
use super::store::{Part, Store, StoreError, PODS};

/// Sim seconds a container takes to be created.
pub const START_AFTER: f64 = 1.0;
/// Sim seconds a crashing container runs before it dies.
pub const CRASH_RUN: f64 = 2.0;
/// Sim seconds a dead container shows as terminated before back-off.
pub const TERMINATED_SHOWN: f64 = 1.0;
/// Sim seconds between restarts (and between image pulls).
pub const BACKOFF_PERIOD: f64 = 5.0;
/// The node's address.
pub const HOST_IP: &str = "127.0.0.1";

/// Hands out distinct loopback addresses from a random /16-sized block of
/// 127.0.0.0/8, so two sims in one process rarely meet (and when they do,
/// binding fails with EADDRINUSE and the next address is tried).
#[derive(Debug)]
pub struct IpAllocator {
    next: u32,
}

impl Default for IpAllocator {
    fn default() -> Self {
        use rand::Rng;
        let second: u32 = rand::rng().random_range(1..=254);
        let third: u32 = rand::rng().random_range(0..=255);
        IpAllocator {
            next: (127 << 24) | (second << 16) | (third << 8),
        }
    }
}

impl IpAllocator {
    pub fn next_ip(&mut self) -> Ipv4Addr {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next >> 24 != 127 {
                self.next = (127 << 24) | (1 << 16);
            }
            let host = self.next & 0xff;
            if host != 0 && host != 255 {
                return Ipv4Addr::from(self.next);
            }
        }
    }
}

/// One [`IpAllocator`] shared by the kubelet (pod IPs) and the Services
/// (`sim::service`), so no two of a sim's addresses meet. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SharedIps(Arc<std::sync::Mutex<IpAllocator>>);

impl SharedIps {
    pub fn next_ip(&self) -> Ipv4Addr {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).next_ip()
    }
}

struct PodRuntime {
    uid: String,
    /// This pod's entry in the kubelet's `due`, if any.
    due: Option<Instant>,
    first_seen: Instant,
    first_seen_wall: jiff::Timestamp,
    ip: Ipv4Addr,
    server: Option<AppServer>,
}

/// The kubelet of the sim's one node.
pub struct Kubelet {
    clock: SimClock,
    behaviours: Behaviours,
    targets: ScrapeTargets,
    ips: SharedIps,
    /// By (namespace, name).
    pods: HashMap<(String, String), PodRuntime>,
    /// When the life of a pod that still changes with time (creating,
    /// warming up, crashing) changes next: looked at then. The others only
    /// when written or when the behaviour table changes.
    due: BTreeSet<(Instant, String, String)>,
    /// The behaviour table's generation the settled pods were played with.
    behaviours_seen: u64,
    /// Whether running pods serve HTTP on a loopback address of their own.
    serve: bool,
}

/// Where a pod is in its life, computed from behaviour and sim age.
#[derive(Debug, Clone, PartialEq)]
enum Life {
    Creating,
    /// `restarts` and `last` (the run index of the last termination, and
    /// whether it was an OOM kill) after crashes it recovered from.
    Running {
        since: f64,
        ready_at: Option<f64>,
        restarts: i64,
        last: Option<(i64, bool)>,
    },
    Crashing(CrashView),
    PullFailing {
        err_pull: bool,
    },
}

#[derive(Debug, Clone, PartialEq)]
struct CrashView {
    /// Killed for memory (137) rather than exiting with an error (1).
    oom: bool,
    restarts: i64,
    /// What the container is doing now.
    now: CrashNow,
    /// The last termination before the current run, if any: (run index).
    last_terminated: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
enum CrashNow {
    Running { run: i64 },
    Terminated { run: i64 },
    BackOff,
}

fn life(b: &Behaviour, age: f64) -> Life {
    let ready_after = b.ready_after.as_secs_f64();
    let start = START_AFTER.min(ready_after);
    if age < start {
        return Life::Creating;
    }
    let t = age - start;
    match b.crash {
        Crash::None => {
            let ready_at = (!b.never_ready && age >= ready_after).then_some(ready_after.max(start));
            Life::Running {
                since: start,
                ready_at,
                restarts: 0,
                last: None,
            }
        }
        Crash::ImagePull => Life::PullFailing {
            err_pull: t % BACKOFF_PERIOD < 1.5,
        },
        Crash::CrashLoop | Crash::OomKilled
            if b.crashes
                .is_some_and(|n| t >= f64::from(n) * BACKOFF_PERIOD) =>
        {
            // Crashed `n` times, then started for good: run `n`.
            let n = i64::from(b.crashes.unwrap_or(0));
            let since = start + n as f64 * BACKOFF_PERIOD;
            let ready_at =
                (!b.never_ready && age >= since + ready_after).then_some(since + ready_after);
            Life::Running {
                since,
                ready_at,
                restarts: n,
                last: (n > 0).then_some((n - 1, b.crash == Crash::OomKilled)),
            }
        }
        Crash::CrashLoop | Crash::OomKilled => {
            let run = (t / BACKOFF_PERIOD).floor() as i64;
            let into = t - run as f64 * BACKOFF_PERIOD;
            let now = if into < CRASH_RUN {
                CrashNow::Running { run }
            } else if into < CRASH_RUN + TERMINATED_SHOWN {
                CrashNow::Terminated { run }
            } else {
                CrashNow::BackOff
            };
            let last_terminated = match now {
                CrashNow::BackOff => Some(run),
                _ if run > 0 => Some(run - 1),
                _ => None,
            };
            Life::Crashing(CrashView {
                oom: b.crash == Crash::OomKilled,
                restarts: run,
                now,
                last_terminated,
            })
        }
    }
}

/// The sim age after `age` at which `life` gives something else; `None`
/// once the pod has settled (running, and ready or never to be).
fn next_change(b: &Behaviour, age: f64) -> Option<f64> {
    let ready_after = b.ready_after.as_secs_f64();
    let start = START_AFTER.min(ready_after);
    if age < start {
        return Some(start);
    }
    let edges: &[f64] = match life(b, age) {
        Life::Creating => return Some(start),
        Life::Running {
            ready_at: Some(_), ..
        } => return None,
        Life::Running { .. } if b.never_ready => return None,
        Life::Running { since, .. } => {
            return Some(if b.crash == Crash::None {
                ready_after.max(start)
            } else {
                since + ready_after
            })
        }
        Life::PullFailing { .. } => &[1.5, BACKOFF_PERIOD],
        Life::Crashing(_) => &[CRASH_RUN, CRASH_RUN + TERMINATED_SHOWN, BACKOFF_PERIOD],
    };
    // Crash loops and failing pulls: the next edge of their period.
    let period_start = start + ((age - start) / BACKOFF_PERIOD).floor() * BACKOFF_PERIOD;
    edges
        .iter()
        .map(|e| period_start + e)
        .find(|at| *at > age)
        .or(Some(period_start + BACKOFF_PERIOD))
}

fn sha_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Kubelet {
    pub fn new(clock: SimClock, behaviours: Behaviours, targets: ScrapeTargets) -> Self {
        let behaviours_seen = behaviours.generation();
        Kubelet {
            clock,
            behaviours,
            targets,
            ips: SharedIps::default(),
            pods: HashMap::new(),
            due: BTreeSet::new(),
            behaviours_seen,
            serve: true,
        }
    }

    /// Pods run without an HTTP listener of their own (scale runs: no
    /// socket per pod, and no scrape targets).
    pub fn without_listeners(mut self) -> Self {
        self.serve = false;
        self
    }

    /// The address allocator, for whatever else in the sim needs a
    /// loopback address that no pod takes.
    pub fn ips(&self) -> SharedIps {
        self.ips.clone()
    }

    /// Looks at every pod in the store (a resync).
    pub fn reconcile(&mut self, store: &Store) -> Result<(), ControllerError> {
        let (pods, _) = store.list(&PODS, None);
        let live: std::collections::HashSet<(String, String)> = pods
            .iter()
            .map(|p| (namespace(p).to_string(), name(p).to_string()))
            .collect();
        let gone: Vec<(String, String)> = self
            .pods
            .keys()
            .filter(|k| !live.contains(*k))
            .cloned()
            .collect();
        for (ns, pod_name) in gone {
            self.forget(&ns, &pod_name);
        }
        for pod in pods {
            self.sync_value(store, &pod)?;
        }
        Ok(())
    }

    /// Looks at the pods written since the last pass, the pods whose life
    /// changes with time, and every pod once the behaviour table changed.
    pub fn sync(
        &mut self,
        store: &Store,
        written: &BTreeSet<(String, String)>,
    ) -> Result<(), ControllerError> {
        let generation = self.behaviours.generation();
        let mut keys: BTreeSet<(String, String)> = written.clone();
        if generation != self.behaviours_seen {
            self.behaviours_seen = generation;
            keys.extend(self.pods.keys().cloned());
        }
        let now = Instant::now();
        while let Some(first) = self.due.first() {
            if first.0 > now {
                break;
            }
            if let Some((_, ns, pod_name)) = self.due.pop_first() {
                if let Some(rt) = self.pods.get_mut(&(ns.clone(), pod_name.clone())) {
                    rt.due = None;
                }
                keys.insert((ns, pod_name));
            }
        }
        for (ns, pod_name) in keys {
            match store.get(&PODS, &ns, &pod_name) {
                Ok(pod) => self.sync_value(store, &pod)?,
                Err(StoreError::NotFound { .. }) => self.forget(&ns, &pod_name),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn forget(&mut self, ns: &str, pod_name: &str) {
        let key = (ns.to_string(), pod_name.to_string());
        if let Some(rt) = self.pods.remove(&key) {
            if let Some(at) = rt.due {
                self.due.remove(&(at, key.0, key.1));
            }
            self.targets.remove(ns, pod_name);
        }
    }

    fn sync_value(&mut self, store: &Store, pod: &Value) -> Result<(), ControllerError> {
        if pod.pointer("/metadata/deletionTimestamp").is_some() {
            return Ok(());
        }
        match self.sync_pod(store, pod) {
            Err(ControllerError::Store(StoreError::NotFound { .. })) => Ok(()),
            other => other,
        }
    }

    fn sync_pod(&mut self, store: &Store, pod: &Value) -> Result<(), ControllerError> {
        let pod_uid = uid(pod).to_string();
        let ns = namespace(pod).to_string();
        let pod_name = name(pod).to_string();
        let key = (ns.clone(), pod_name.clone());
        if self.pods.get(&key).is_some_and(|rt| rt.uid != pod_uid) {
            // The same name again, another pod: start its life afresh.
            self.forget(&ns, &pod_name);
        }
        let ips = self.ips.clone();
        let rt = self.pods.entry(key.clone()).or_insert_with(|| PodRuntime {
            uid: pod_uid.clone(),
            due: None,
            first_seen: Instant::now(),
            first_seen_wall: jiff::Timestamp::now(),
            ip: ips.next_ip(),
            server: None,
        });
        let image = str_at(pod, "/spec/containers/0/image")
            .unwrap_or("")
            .to_string();
        let behaviour = self.behaviours.lookup(&image);
        let age = self.clock.sim(rt.first_seen.elapsed()).as_secs_f64();
        let life = life(&behaviour, age);
        let next = next_change(&behaviour, age)
            // Just past the edge, so the pod has changed when looked at.
            .map(|at| rt.first_seen + self.clock.real_secs(at) + Duration::from_millis(1));
        if next != rt.due {
            if let Some(at) = rt.due.take() {
                self.due.remove(&(at, key.0.clone(), key.1.clone()));
            }
            if let Some(at) = next {
                self.due.insert((at, key.0.clone(), key.1.clone()));
                rt.due = Some(at);
            }
        }

        // The app server follows the container: up while it runs.
        let running = matches!(life, Life::Running { .. });
        let ready = matches!(
            life,
            Life::Running {
                ready_at: Some(_),
                ..
            }
        );
        if running && behaviour.serves_http() && self.serve {
            if rt.server.is_none() {
                let port = i64_at(pod, "/spec/containers/0/ports/0/containerPort")
                    .and_then(|p| u16::try_from(p).ok())
                    .unwrap_or(8080);
                let state = Arc::new(AppState::new(
                    &ns,
                    &pod_name,
                    &image,
                    self.behaviours.clone(),
                ));
                let mut attempts = 0;
                loop {
                    match AppServer::start(rt.ip, port, state.clone()) {
                        Ok(server) => {
                            rt.server = Some(server);
                            break;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 32 => {
                            attempts += 1;
                            rt.ip = self.ips.next_ip();
                        }
                        Err(source) => {
                            // The pod runs but cannot serve: logged, not fatal.
                            let err = ControllerError::Listen {
                                pod: format!("{ns}/{pod_name}"),
                                addr: format!("{}:{port}", rt.ip),
                                source,
                            };
                            tracing::warn!(error = %err, "sim kubelet");
                            break;
                        }
                    }
                }
                if let Some(server) = &rt.server {
                    self.targets.insert(ScrapeTarget {
                        address: server.addr,
                        labels: target_labels(pod),
                    });
                }
            }
            if let Some(server) = &rt.server {
                server.state.set_ready(ready);
            }
        } else if rt.server.take().is_some() {
            self.targets.remove(&ns, &pod_name);
        }

        let status = pod_status(pod, rt, &life, self.clock);
        if pod.get("status") != Some(&status) {
            store.update_with(&PODS, &ns, &pod_name, Part::Status, |o| {
                o["status"] = status;
                Ok(())
            })?;
        }
        Ok(())
    }
}

fn target_labels(pod: &Value) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    labels.insert("namespace".to_string(), namespace(pod).to_string());
    labels.insert("pod".to_string(), name(pod).to_string());
    if let Some(hash) = pod
        .pointer("/metadata/labels")
        .and_then(|l| l.get(POD_TEMPLATE_HASH))
        .and_then(Value::as_str)
    {
        labels.insert("pod_template_hash".to_string(), hash.to_string());
        if let Some(owner) = controller_owner(pod) {
            if let Some(deployment) = owner.name.strip_suffix(&format!("-{hash}")) {
                labels.insert("deployment".to_string(), deployment.to_string());
            }
        }
    }
    labels
}

/// The status a real kubelet would report for this point of the pod's life.
fn pod_status(pod: &Value, rt: &PodRuntime, life: &Life, clock: SimClock) -> Value {
    let at = |sim_secs: f64| -> String {
        let real = clock.real_secs(sim_secs);
        let offset = jiff::SignedDuration::try_from(real).unwrap_or_default();
        rfc3339(
            rt.first_seen_wall
                .checked_add(offset)
                .unwrap_or(rt.first_seen_wall),
        )
    };
    let pod_uid = uid(pod);
    let pod_name = name(pod);
    let ns = namespace(pod);
    let containers: Vec<Value> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let container_names: Vec<String> = containers
        .iter()
        .map(|c| str_at(c, "/name").unwrap_or("").to_string())
        .collect();

    let (phase, ready_at) = match life {
        Life::Creating | Life::PullFailing { .. } => ("Pending", None),
        Life::Running { ready_at, .. } => ("Running", *ready_at),
        Life::Crashing(_) => ("Running", None),
    };
    let statuses: Vec<Value> = containers
        .iter()
        .map(|c| {
            let cname = str_at(c, "/name").unwrap_or("");
            let image = str_at(c, "/image").unwrap_or("");
            let image_id = format!("docker.io/library/{image}@sha256:{}", sha_hex(image));
            let container_id = |run: i64| format!("containerd://{}", sha_hex(&format!("{pod_uid}/{cname}/{run}")));
            let (state, last_state, restarts, ready, started, id, image_id) = match life {
                Life::Creating => (
                    json!({"waiting": {"reason": "ContainerCreating"}}),
                    json!({}),
                    0,
                    false,
                    false,
                    None,
                    String::new(),
                ),
                Life::PullFailing { err_pull } => {
                    let waiting = if *err_pull {
                        json!({"reason": "ErrImagePull", "message": format!("failed to pull and unpack image \"docker.io/library/{image}\": failed to resolve reference \"docker.io/library/{image}\": docker.io/library/{image}: not found")})
                    } else {
                        json!({"reason": "ImagePullBackOff", "message": format!("Back-off pulling image \"{image}\"")})
                    };
                    (json!({"waiting": waiting}), json!({}), 0, false, false, None, String::new())
                }
                Life::Running {
                    since,
                    ready_at,
                    restarts,
                    last,
                } => {
                    let last_state = match last {
                        Some((run, oom)) => {
                            let (reason, code) = if *oom { ("OOMKilled", 137) } else { ("Error", 1) };
                            let started = START_AFTER + *run as f64 * BACKOFF_PERIOD;
                            json!({"terminated": {
                                "exitCode": code,
                                "reason": reason,
                                "startedAt": at(started),
                                "finishedAt": at(started + CRASH_RUN),
                                "containerID": container_id(*run),
                            }})
                        }
                        None => json!({}),
                    };
                    (
                        json!({"running": {"startedAt": at(*since)}}),
                        last_state,
                        *restarts,
                        ready_at.is_some(),
                        true,
                        Some(container_id(*restarts)),
                        image_id,
                    )
                }
                Life::Crashing(view) => {
                    let (reason, code) = if view.oom { ("OOMKilled", 137) } else { ("Error", 1) };
                    let run_start = |run: i64| START_AFTER + run as f64 * BACKOFF_PERIOD;
                    let terminated = |run: i64| {
                        json!({"terminated": {
                            "exitCode": code,
                            "reason": reason,
                            "startedAt": at(run_start(run)),
                            "finishedAt": at(run_start(run) + CRASH_RUN),
                            "containerID": container_id(run),
                        }})
                    };
                    let (state, run, started) = match view.now {
                        CrashNow::Running { run } => (json!({"running": {"startedAt": at(run_start(run))}}), run, true),
                        CrashNow::Terminated { run } => (terminated(run), run, false),
                        CrashNow::BackOff => (
                            json!({"waiting": {
                                "reason": "CrashLoopBackOff",
                                "message": format!("back-off {BACKOFF_PERIOD}s restarting failed container={cname} pod={pod_name}_{ns}({pod_uid})"),
                            }}),
                            view.restarts,
                            false,
                        ),
                    };
                    let last = view.last_terminated.map(terminated).unwrap_or_else(|| json!({}));
                    (state, last, view.restarts, false, started, Some(container_id(run)), image_id)
                }
            };
            let mut s = json!({
                "name": cname,
                "image": image,
                "imageID": image_id,
                "ready": ready,
                "started": started,
                "restartCount": restarts,
                "state": state,
                "lastState": last_state,
            });
            if let Some(id) = id {
                s["containerID"] = json!(id);
            }
            s
        })
        .collect();

    let created = at(0.0);
    let ready_cond = |kind: &str| match ready_at {
        Some(t) => {
            json!({"type": kind, "status": "True", "lastProbeTime": null, "lastTransitionTime": at(t)})
        }
        None => json!({
            "type": kind,
            "status": "False",
            "lastProbeTime": null,
            "lastTransitionTime": created,
            "reason": "ContainersNotReady",
            "message": format!("containers with unready status: [{}]", container_names.join(" ")),
        }),
    };
    let mut status = json!({
        "phase": phase,
        "conditions": [
            {"type": "PodReadyToStartContainers", "status": if matches!(life, Life::Creating) { "False" } else { "True" }, "lastProbeTime": null, "lastTransitionTime": created},
            {"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": created},
            ready_cond("Ready"),
            ready_cond("ContainersReady"),
            {"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": created},
        ],
        "hostIP": HOST_IP,
        "hostIPs": [{"ip": HOST_IP}],
        "startTime": created,
        "containerStatuses": statuses,
        "qosClass": "BestEffort",
    });
    if !matches!(life, Life::Creating) {
        let ip = rt.ip.to_string();
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_healthy_pod_is_created_runs_then_turns_ready() {
        let b = Behaviour::default();
        assert_eq!(life(&b, 0.5), Life::Creating);
        assert!(matches!(
            life(&b, 1.5),
            Life::Running { ready_at: None, .. }
        ));
        assert!(matches!(
            life(&b, 2.5),
            Life::Running {
                ready_at: Some(_),
                ..
            }
        ));
        let never = Behaviour {
            never_ready: true,
            ..Behaviour::default()
        };
        assert!(matches!(
            life(&never, 100.0),
            Life::Running { ready_at: None, .. }
        ));
    }

    #[test]
    fn a_pod_that_crashes_once_then_runs_keeps_its_restart_and_last_state() {
        let b = Behaviour {
            crash: Crash::OomKilled,
            crashes: Some(1),
            ..Behaviour::default()
        };
        assert!(matches!(life(&b, START_AFTER + 0.5), Life::Crashing(_)));
        let after = START_AFTER + BACKOFF_PERIOD;
        assert_eq!(
            life(&b, after + 0.5),
            Life::Running {
                since: after,
                ready_at: None,
                restarts: 1,
                last: Some((0, true)),
            }
        );
        assert!(matches!(
            life(&b, after + b.ready_after.as_secs_f64() + 0.5),
            Life::Running {
                ready_at: Some(_),
                restarts: 1,
                ..
            }
        ));
        assert!(b.serves_http());
    }

    #[test]
    fn a_crashing_pod_restarts_every_period() {
        let b = Behaviour {
            crash: Crash::CrashLoop,
            ..Behaviour::default()
        };
        let at = |t: f64| match life(&b, START_AFTER + t) {
            Life::Crashing(v) => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(at(0.5).now, CrashNow::Running { run: 0 });
        assert_eq!(at(2.5).now, CrashNow::Terminated { run: 0 });
        assert_eq!(at(4.0).now, CrashNow::BackOff);
        assert_eq!(at(4.0).last_terminated, Some(0));
        assert_eq!(at(11.0).restarts, 2);
    }

    #[test]
    fn loopback_addresses_stay_in_127_and_skip_network_and_broadcast() {
        let mut ips = IpAllocator {
            next: (127 << 24) | (255 << 16) | (255 << 8) | 253,
        };
        assert_eq!(ips.next_ip(), Ipv4Addr::new(127, 255, 255, 254));
        assert_eq!(ips.next_ip(), Ipv4Addr::new(127, 1, 0, 1));
    }
}

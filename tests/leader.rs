//! Two replicas, as `deploy/` runs them: real `rollback-watchdog run`
//! processes against one simulated cluster, electing a leader through a
//! Lease. Only the leader acts; a killed leader's rollback is resumed by
//! the other replica, not repeated; SIGTERM hands the Lease back at once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rollback_watchdog::k8s::keys::IN_FLIGHT;
use rollback_watchdog::observe::revision::first_image;
use rollback_watchdog::report::status::Role;
use rollback_watchdog::sim::{Behaviour, Behaviours, SimCluster};
use serde_json::json;

mod support;
use support::binary::{events_received, free_port, receiver, status, Running};
use support::watch::{sim_with_web, template_patches, NAME};

const NS: &str = "prod";
/// The Lease timings of every replica here.
const LEASE_DURATION: Duration = Duration::from_secs(4);

struct Cluster {
    sim: SimCluster,
    client: Client,
    hook: String,
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `prod/web` rolled out with 3 × `web:v1`, and the watchdog's namespace.
    async fn start() -> Cluster {
        let (sim, client) = sim_with_web(NS, Behaviours::builtin()).await;
        let (hook, got) = receiver().await;
        let cluster = Cluster {
            sim,
            client,
            hook,
            got,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        cluster
            .wait_deployment("v1 rolled out", |d| {
                first_image(d) == "web:v1"
                    && d.status.as_ref().and_then(|s| s.available_replicas) == Some(3)
            })
            .await;
        cluster
    }

    /// A replica's config: its own admin port and audit log, the shared
    /// Lease, a webhook to on-call, and `defaults` added at the end of
    /// `[defaults]` (keys, then sub-tables). Prometheus is a closed port:
    /// the pod signal alone judges a crash-looping revision.
    fn replica_with(&self, name: &str, admin_port: u16, defaults: &str) -> PathBuf {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("replica dir");
        let path = dir.join("watchdog.toml");
        let text = format!(
            r#"
[watchdog]
cluster_name = "sim"
interval = "1s"
namespace = "rollback-watchdog"
audit_log = "{audit}"
shutdown_grace = "5s"

[prometheus]
url = "http://127.0.0.1:{closed}"
timeout = "1s"

[leader_election]
enabled = true
lease_name = "rollback-watchdog"
lease_duration = "{lease}s"
renew_deadline = "3s"
retry_period = "500ms"

[admin]
listen = "127.0.0.1:{admin_port}"

[defaults]
watch_window = "10m"
failure_threshold = 3
verify_window = "3s"
rollout_timeout = "90s"
blind_alert_after = "10m"
{defaults}

[[targets]]
namespace = "{NS}"
name = "{NAME}"

[[notify]]
kind = "webhook"
name = "oncall"
url = "{hook}"
deadline = "10s"
"#,
            audit = dir.join("audit.jsonl").display(),
            closed = free_port(),
            lease = LEASE_DURATION.as_secs(),
            hook = self.hook,
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn run(&self, name: &str, admin_port: u16) -> Running {
        self.run_with(name, admin_port, "")
    }

    fn run_with(&self, name: &str, admin_port: u16, defaults: &str) -> Running {
        let config = self.replica_with(name, admin_port, defaults);
        Running::run(self.sim.kubeconfig_path(), &config, &[("POD_NAME", name)])
    }

    fn audit(&self, name: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.dir.path().join(name).join("audit.jsonl"))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), NS)
    }

    async fn deploy(&self, image: &str) {
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
        self.deployments()
            .patch(NAME, &PatchParams::default(), &Patch::Strategic(&patch))
            .await
            .expect("set image");
    }

    async fn wait_deployment(&self, what: &str, done: impl Fn(&Deployment) -> bool) -> Deployment {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let d = self.deployments().get(NAME).await.expect("get web");
            if done(&d) {
                return d;
            }
            assert!(Instant::now() < deadline, "never {what}: {:?}", d.status);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The watchdog's template patches of `web` (the Update step).
    fn template_patches(&self) -> usize {
        template_patches(&self.sim)
    }

    /// Waits until the leader `by` has sent its template patch.
    async fn wait_patched(&self, by: &Running) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.template_patches() == 0 {
            assert!(Instant::now() < deadline, "never patched: {}", by.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn lease(&self) -> Option<Lease> {
        Api::<Lease>::namespaced(self.client.clone(), "rollback-watchdog")
            .get_opt("rollback-watchdog")
            .await
            .expect("read the Lease")
    }

    /// Waits (at most `limit`) until `name`, running as `replica`, holds
    /// the Lease.
    async fn wait_holder(&self, name: &str, replica: &Running, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.holder().await.as_deref() != Some(name) {
            assert!(
                Instant::now() < deadline,
                "{name} never took the Lease: {}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn holder(&self) -> Option<String> {
        self.lease()
            .await
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty())
    }

    /// Waits until every event in `kinds` was received (each at least once).
    async fn wait_notified(&self, kinds: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !kinds
            .iter()
            .all(|k| events_received(&self.got).iter().any(|e| e == k))
        {
            assert!(
                Instant::now() < deadline,
                "on-call never heard {kinds:?}; received {:?}",
                events_received(&self.got)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn in_flight(d: &Deployment) -> bool {
    d.annotations().contains_key(IN_FLIGHT)
}

/// The role each replica's `/status` shows once both are ready.
async fn roles(ports: &[u16]) -> Vec<Role> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut roles = Vec::new();
        for port in ports {
            match status(*port).await {
                Some(r) if r.ready && !r.targets.is_empty() => roles.push(r.role),
                _ => break,
            }
        }
        if roles.len() == ports.len() && roles.contains(&Role::Leader) {
            return roles;
        }
        assert!(
            Instant::now() < deadline,
            "no leader among {ports:?}: {roles:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn count(events: &[String], kind: &str) -> usize {
    events.iter().filter(|e| *e == kind).count()
}

fn pipeline_lines(audit: &[serde_json::Value]) -> Vec<String> {
    audit
        .iter()
        .map(|l| format!("{} {}", l["step"], l["outcome"]))
        .collect()
}

/// Makes the restored `web:v1` pods slow to become ready, so the rollback's
/// Wait lasts long enough to interrupt.
fn slow_v1(sim: &SimCluster) {
    sim.behaviours().set(
        "web:v1",
        Behaviour {
            ready_after: Duration::from_secs(100),
            ..Behaviour::default()
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_elect_one_leader_which_alone_rolls_back_and_tells_on_call_once() {
    let c = Cluster::start().await;
    let (pa, pb) = (free_port(), free_port());
    let mut a = c.run("replica-a", pa);
    let mut b = c.run("replica-b", pb);

    let roles = roles(&[pa, pb]).await;
    assert_eq!(
        roles.iter().filter(|r| **r == Role::Leader).count(),
        1,
        "exactly one leader: {roles:?}"
    );
    assert!(roles.contains(&Role::Follower), "{roles:?}");
    let leader = if roles[0] == Role::Leader {
        "replica-a"
    } else {
        "replica-b"
    };
    let follower = if leader == "replica-a" {
        "replica-b"
    } else {
        "replica-a"
    };
    assert_eq!(
        c.holder().await.as_deref(),
        Some(leader),
        "the Lease names the leader"
    );

    c.deploy("web:v2-crash").await;
    c.wait_deployment("rolled back to web:v1", |d| {
        first_image(d) == "web:v1" && !in_flight(d)
    })
    .await;
    c.wait_notified(&["rollback_started", "rollback_succeeded"])
        .await;
    // Both replicas judged the revision Bad; give a duplicate time to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    a.assert_alive();
    b.assert_alive();

    assert_eq!(c.template_patches(), 1, "one patch in the request log");
    let events = events_received(&c.got);
    assert_eq!(count(&events, "rollback_started"), 1, "{events:?}");
    assert_eq!(count(&events, "rollback_succeeded"), 1, "{events:?}");
    let leader_audit = pipeline_lines(&c.audit(leader));
    assert!(
        leader_audit.iter().any(|l| l == "\"update\" \"ok\""),
        "the leader patched: {leader_audit:?}"
    );
    assert!(
        c.audit(follower).is_empty(),
        "the follower acted: {:?}",
        pipeline_lines(&c.audit(follower))
    );
    let follower_status = status(if follower == "replica-a" { pa } else { pb })
        .await
        .expect("follower /status");
    assert_eq!(follower_status.role, Role::Follower);
    assert!(
        follower_status.targets.iter().any(|t| t.name == NAME),
        "a follower still evaluates: {follower_status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_hands_over_within_the_lease_duration_and_its_rollback_is_resumed_not_repeated(
) {
    let c = Cluster::start().await;
    let (pa, pb) = (free_port(), free_port());
    let mut a = c.run("replica-a", pa);
    // The first replica up takes the Lease.
    roles(&[pa]).await;
    let mut b = c.run("replica-b", pb);
    assert_eq!(roles(&[pa, pb]).await, vec![Role::Leader, Role::Follower]);

    slow_v1(&c.sim);
    c.deploy("web:v2-crash").await;
    // The leader patched: kill it while it waits for the rollout.
    c.wait_patched(&a).await;
    c.wait_notified(&["rollback_started"]).await;
    a.signal("KILL");
    let killed = Instant::now();
    a.wait_exit(Duration::from_secs(5)).await;
    let d = c.deployments().get(NAME).await.expect("get web");
    assert!(
        in_flight(&d),
        "the killed leader's record is on the Deployment"
    );

    // The follower takes over once the Lease expires.
    c.wait_holder("replica-b", &b, Duration::from_secs(20))
        .await;
    let handover = killed.elapsed();
    // Expiry is judged from when replica-b saw the last renewal (up to one
    // jittered retry period, 0.6 s, after it was written), and noticed on
    // its next round (another 0.6 s); 1 s more for a loaded CI machine.
    let bound = LEASE_DURATION + Duration::from_millis(2 * 600 + 1000);
    eprintln!("hand-over took {handover:?} (lease_duration {LEASE_DURATION:?})");
    assert!(
        handover <= bound,
        "handed over after {handover:?}; lease_duration is {LEASE_DURATION:?}"
    );

    c.wait_deployment("restored and verified by replica-b", |d| {
        first_image(d) == "web:v1" && !in_flight(d)
    })
    .await;
    c.wait_notified(&["rollback_succeeded"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.assert_alive();
    assert_eq!(c.template_patches(), 1, "resumed, not repeated");
    // The start was told by the killed leader, the result once by the
    // replica that finished; the resume repeats neither.
    let events = events_received(&c.got);
    assert_eq!(count(&events, "rollback_started"), 1, "{events:?}");
    assert_eq!(count(&events, "rollback_succeeded"), 1, "{events:?}");
    let resumed = c.audit("replica-b");
    assert!(
        resumed.iter().any(|l| l["details"]["summary"]
            .as_str()
            .is_some_and(|s| s.contains("resuming the rollback"))),
        "replica-b resumed: {:?}",
        pipeline_lines(&resumed)
    );
    assert!(
        !pipeline_lines(&resumed)
            .iter()
            .any(|l| l.starts_with("\"update\"")),
        "replica-b did not patch again: {:?}",
        pipeline_lines(&resumed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_wait_exits_zero_releases_the_lease_and_the_next_start_resumes() {
    let c = Cluster::start().await;
    let port = free_port();
    let mut a = c.run("replica-a", port);
    assert_eq!(roles(&[port]).await, vec![Role::Leader]);
    assert_eq!(c.holder().await.as_deref(), Some("replica-a"));

    slow_v1(&c.sim);
    c.deploy("web:v2-crash").await;
    c.wait_patched(&a).await;
    // Update's audit line is written as Wait begins: TERM lands in Wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pipeline_lines(&c.audit("replica-a")).contains(&r#""update" "ok""#.to_string()) {
        assert!(
            Instant::now() < deadline,
            "no update line: {:?}",
            pipeline_lines(&c.audit("replica-a"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.signal("TERM");
    // shutdown_grace is 5 s.
    let (exit, took) = a.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit}: {}", a.log());
    assert!(took < Duration::from_secs(6), "took {took:?}");
    assert_eq!(c.holder().await, None, "the Lease was released");
    let audit = c.audit("replica-a");
    let stopped = audit
        .iter()
        .find(|l| l["details"]["details"]["handed_over"] == json!(true))
        .unwrap_or_else(|| panic!("no hand-over line: {:?}", pipeline_lines(&audit)));
    assert_eq!(stopped["step"], "wait", "stopped during Wait");
    let d = c.deployments().get(NAME).await.expect("get web");
    assert!(in_flight(&d), "the record stays for the next leader");
    assert_eq!(
        count(&events_received(&c.got), "rollback_succeeded"),
        0,
        "nothing claimed success"
    );

    // The next start (a new pod) resumes at Wait; no second patch.
    let mut again = c.run("replica-c", free_port());
    c.wait_deployment("restored after the restart", |d| {
        first_image(d) == "web:v1" && !in_flight(d)
    })
    .await;
    c.wait_notified(&["rollback_succeeded"]).await;
    again.assert_alive();
    assert_eq!(c.template_patches(), 1);
    again.signal("TERM");
    let (exit, _) = again.wait_exit(Duration::from_secs(10)).await;
    assert!(exit.success(), "exit {exit}: {}", again.log());
    assert_eq!(c.holder().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_mid_rollback_stops_before_its_next_write() {
    let c = Cluster::start().await;
    let port = free_port();
    let mut a = c.run("replica-a", port);
    assert_eq!(roles(&[port]).await, vec![Role::Leader]);

    slow_v1(&c.sim);
    c.deploy("web:v2-crash").await;
    c.wait_patched(&a).await;
    // Someone else takes the Lease (as after a long network partition).
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "rollback-watchdog");
    let mut lease = c.lease().await.expect("the Lease exists");
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(600);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        jiff::Timestamp::now(),
    ));
    leases
        .replace("rollback-watchdog", &PostParams::default(), &lease)
        .await
        .expect("steal the Lease");

    let deadline = Instant::now() + Duration::from_secs(20);
    let stopped = loop {
        let audit = c.audit("replica-a");
        if let Some(line) = audit
            .iter()
            .find(|l| l["details"]["details"]["handed_over"] == json!(true))
        {
            break line.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never stopped: {:?}\n{}",
            pipeline_lines(&audit),
            a.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        matches!(stopped["step"].as_str(), Some("wait" | "verify")),
        "{stopped}"
    );
    a.assert_alive();
    // /status is published by the next tick, which runs on its own timer.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let role = status(port).await.map(|s| s.role);
        if role == Some(Role::Follower) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/status never said follower: {role:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.holder().await.as_deref(), Some("intruder"));
    // Nothing written after losing the Lease, long enough for the rollout
    // (5 s) and the verify window (3 s) to have ended: the record stays
    // for the leader, nobody was told the rollback finished.
    let seen = c.sim.request_log().entries().len();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let writes: Vec<String> = c.sim.request_log().entries()[seen..]
        .iter()
        .filter(|e| matches!(e.verb.as_str(), "create" | "update" | "patch" | "delete"))
        .filter(|e| e.path.contains(&format!("/namespaces/{NS}/")))
        .map(|e| format!("{} {}", e.verb, e.path))
        .collect();
    assert!(
        writes.is_empty(),
        "written after losing the Lease: {writes:?}"
    );
    let d = c.deployments().get(NAME).await.expect("get web");
    assert!(
        in_flight(&d),
        "the in-flight record was left for the leader"
    );
    assert_eq!(c.template_patches(), 1);
    assert_eq!(
        count(&events_received(&c.got), "rollback_succeeded"),
        0,
        "{:?}",
        events_received(&c.got)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_exits_non_zero_when_the_lease_can_no_longer_be_used() {
    let c = Cluster::start().await;
    let port = free_port();
    let mut a = c.run("replica-a", port);
    assert_eq!(roles(&[port]).await, vec![Role::Leader]);
    // RBAC changed under a running watchdog: renewing is now refused.
    c.sim.access().deny(rollback_watchdog::sim::AccessRule::new(
        "update",
        "coordination.k8s.io",
        "leases",
        None,
    ));
    let (exit, _) = a.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(1), "{}", a.log());
    let log = a.log();
    assert!(
        log.contains("leader election") && log.contains("403"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_the_leader_hands_over_only_after_it_has_stopped_writing() {
    let c = Cluster::start().await;
    let (pa, pb) = (free_port(), free_port());
    let mut a = c.run("replica-a", pa);
    roles(&[pa]).await;
    let mut b = c.run("replica-b", pb);
    assert_eq!(roles(&[pa, pb]).await, vec![Role::Leader, Role::Follower]);

    slow_v1(&c.sim);
    c.deploy("web:v2-crash").await;
    c.wait_patched(&a).await;
    a.signal("TERM");
    // While the old leader drains, the Lease stays with it: no second
    // replica acts while one of its writes may still land.
    let exited = loop {
        if let Some(status) = a.child.try_wait().expect("wait") {
            break status;
        }
        assert_ne!(
            c.holder().await.as_deref(),
            Some("replica-b"),
            "replica-b leads while replica-a still runs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exited.success(), "exit {exited}: {}", a.log());
    // Released on the way out, not left to expire.
    assert!(
        matches!(c.holder().await.as_deref(), None | Some("replica-b")),
        "the Lease still names replica-a after it exited"
    );
    let released = Instant::now();
    c.wait_holder("replica-b", &b, Duration::from_secs(10))
        .await;
    // Released, not expired: well inside lease_duration.
    assert!(
        released.elapsed() < LEASE_DURATION,
        "took {:?}",
        released.elapsed()
    );
    c.wait_deployment("restored by replica-b", |d| {
        first_image(d) == "web:v1" && !in_flight(d)
    })
    .await;
    c.wait_notified(&["rollback_succeeded"]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.assert_alive();
    assert_eq!(c.template_patches(), 1, "resumed, not repeated");
    assert_eq!(
        count(&events_received(&c.got), "rollback_succeeded"),
        1,
        "{:?}",
        events_received(&c.got)
    );
}

/// Judged by the pod signal alone, in dry run: a Bad verdict's rollback is
/// refused ("would roll back"), and the revision stays.
const DRY_RUN_PODS_ONLY: &str = r#"dry_run = true
[defaults.error_rate]
enabled = false
[defaults.latency]
enabled = false
"#;

/// The received notices of `kind`, and every kind received.
fn told(c: &Cluster, kind: &str) -> (usize, Vec<String>) {
    let events = events_received(&c.got);
    (count(&events, kind), events)
}

/// Waits until replica `name`'s audit log records the delivery of a
/// `kind` notice: the delivery ledger has it from then on.
async fn wait_delivery_recorded(c: &Cluster, name: &str, kind: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recorded = c.audit(name).iter().any(|l| {
            l["step"] == "notify"
                && l["details"]["kind"] == kind
                && l["details"]["result"] == "delivered"
        });
        if recorded {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never recorded the delivery of {kind}: {:?}",
            c.audit(name)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_bad_revision_is_not_adopted_as_known_good_after_a_restart_and_nothing_is_told_twice(
) {
    let c = Cluster::start().await;
    // v2 crash-loops until the watchdog is gone, then runs healthy (a
    // dependency came back): Bad while it crashes, Healthy after.
    c.sim.behaviours().set(
        "web:v2",
        Behaviour {
            crash: rollback_watchdog::sim::Crash::CrashLoop,
            ..Behaviour::default()
        },
    );
    // A short window for this Deployment (an override may only shorten).
    c.deployments()
        .patch(
            NAME,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"rollback-watchdog.io/watch-window": "10s"}}}),
            ),
        )
        .await
        .expect("annotate web");
    let defaults = DRY_RUN_PODS_ONLY;
    let pa = free_port();
    let mut a = c.run_with("replica-a", pa, defaults);
    roles(&[pa]).await;

    c.deploy("web:v2").await;
    c.wait_notified(&["would_roll_back"]).await;
    // Killed right after telling on-call its rollback was refused.
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;
    c.sim.behaviours().set("web:v2", Behaviour::default());

    // v2 recovers and completes its rollout; its window closes 10 s later,
    // with no watchdog running.
    c.wait_deployment("v2 rolled out and available", |d| {
        let s = d.status.clone().unwrap_or_default();
        first_image(d) == "web:v2"
            && s.updated_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.replicas == Some(3)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(12)).await;

    // Restarted: v2 looks healthy now, and its window has closed.
    let pb = free_port();
    let mut again = c.run_with("replica-a", pb, defaults);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = status(pb).await.is_some_and(|s| {
            s.targets.iter().any(|t| {
                t.name == NAME
                    && t.revision == Some(2)
                    && t.verdict == rollback_watchdog::report::status::StatusVerdict::Healthy
            })
        });
        if healthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted watchdog never judged v2 Healthy: {:?}; {}",
            status(pb).await,
            again.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A few more ticks, for a known-good write or a second notice to show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    again.assert_alive();

    let d = c.deployments().get(NAME).await.expect("get web");
    let known_good = d
        .annotations()
        .get(rollback_watchdog::k8s::keys::KNOWN_GOOD)
        .cloned()
        .unwrap_or_default();
    assert!(
        !known_good.contains("\"revision\":2"),
        "the refused Bad revision 2 was adopted as known-good: {known_good}; {}",
        again.log()
    );
    let memory = d
        .annotations()
        .get(rollback_watchdog::k8s::keys::MEMORY)
        .cloned()
        .unwrap_or_default();
    assert!(
        memory.contains("\"revision\":2") && memory.contains("\"evidence\":\"failed\""),
        "the memory on the Deployment: {memory}"
    );
    let (refusals, all) = told(&c, "would_roll_back");
    assert_eq!(refusals, 1, "told once: {all:?}");
    assert_eq!(all.len(), 1, "nothing else told: {all:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_right_after_a_notice_was_delivered_leaves_no_duplicate_to_the_next() {
    let c = Cluster::start().await;
    let (pa, pb) = (free_port(), free_port());
    let mut a = c.run_with("replica-a", pa, DRY_RUN_PODS_ONLY);
    roles(&[pa]).await;
    let mut b = c.run_with("replica-b", pb, DRY_RUN_PODS_ONLY);
    assert_eq!(roles(&[pa, pb]).await, vec![Role::Leader, Role::Follower]);

    // Crash-loops for good: Bad on every replica's every tick.
    c.deploy("web:v2-crash").await;
    c.wait_notified(&["would_roll_back"]).await;
    wait_delivery_recorded(&c, "replica-a", "would_roll_back").await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(5)).await;

    c.wait_holder("replica-b", &b, Duration::from_secs(20))
        .await;
    // replica-b leads, still judging the same Bad revision: give a repeat
    // time to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    b.assert_alive();
    let (refusals, all) = told(&c, "would_roll_back");
    assert_eq!(refusals, 1, "told once, by replica-a: {all:?}; {}", b.log());
    assert_eq!(all.len(), 1, "nothing else told: {all:?}");
    assert_eq!(c.template_patches(), 0, "dry run: nothing patched");
}

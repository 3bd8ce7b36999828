//! Targets, revisions and observation windows as the watchdog sees them
//! through its watch caches, against the simulated cluster over the real
//! kube client: which Deployments are watched, what a rollout opens, when
//! a revision becomes known-good, and that ticks cost the API server
//! nothing. Every wait is bounded; nothing asserts how fast anything is.

use rollback_watchdog::k8s::keys::KNOWN_GOOD;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

mod support;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt};
use rollback_watchdog::config::{Config, Loader};
use rollback_watchdog::observe::cache::{Caches, Scope};
use rollback_watchdog::observe::revision::{self, KnownGood, TargetState};
use rollback_watchdog::observe::targets::{self, Resolution};
use rollback_watchdog::observe::tracker::Tracker;
use rollback_watchdog::sim::clock::SimClock;
use rollback_watchdog::sim::store::NAMESPACES;
use rollback_watchdog::sim::{seed_deployment, SimCluster, SimOptions};
use serde_json::json;

const NS: &str = "production";
const WAIT: Duration = Duration::from_secs(60);

fn config(toml: &str) -> Config {
    Loader::from_toml(toml)
        .env(Vec::<(String, String)>::new())
        .load()
        .expect("a valid test config")
        .config
}

/// A sim with the controllers, running fast.
async fn sim() -> (SimCluster, Client) {
    let sim = SimCluster::start(SimOptions {
        clock: SimClock::new(20.0),
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let client = sim.client().await.expect("a client for the sim");
    for ns in [NS, "staging"] {
        sim.store()
            .create(&NAMESPACES, "", json!({"metadata": {"name": ns}}))
            .expect("a namespace");
    }
    (sim, client)
}

async fn create(
    client: &Client,
    ns: &str,
    name: &str,
    image: &str,
    annotations: serde_json::Value,
) {
    let mut d = seed_deployment(name, image, 2);
    d["metadata"]["annotations"] = annotations;
    let d: Deployment = serde_json::from_value(d).expect("a Deployment");
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .expect("the Deployment is created");
}

async fn set_image(client: &Client, name: &str, image: &str) {
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}});
    Api::<Deployment>::namespaced(client.clone(), NS)
        .patch(name, &PatchParams::default(), &Patch::Strategic(&patch))
        .await
        .expect("the image is set");
}

async fn get(client: &Client, name: &str) -> Deployment {
    Api::<Deployment>::namespaced(client.clone(), NS)
        .get(name)
        .await
        .expect("the Deployment exists")
}

/// Polls `check` until it returns Ok, or fails naming `what` and the last
/// state seen.
async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if start.elapsed() > WAIT => {
                panic!("timed out waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// What the run loop does each tick with targets and revisions: resolve
/// from the caches, observe each target, and record the revisions whose
/// window closed cleanly (no signals here, so nothing is Bad).
struct Loop {
    config: Config,
    caches: Caches,
    tracker: Tracker,
    client: Client,
}

impl Loop {
    async fn start(client: &Client, config: Config) -> Loop {
        let caches = Caches::for_config(client.clone(), &config);
        tokio::time::timeout(WAIT, caches.ready())
            .await
            .expect("the caches sync in time")
            .expect("the watchers run");
        assert!(caches.is_ready());
        Loop {
            config,
            caches,
            tracker: Tracker::new(),
            client: client.clone(),
        }
    }

    fn observe(&mut self) -> (Resolution, BTreeMap<String, TargetState>) {
        let snap = self.caches.snapshot();
        let res = targets::resolve(&self.config, &snap);
        let now = jiff::Timestamp::now();
        let states = res
            .targets
            .iter()
            .map(|t| (t.name.clone(), self.tracker.observe(t, &snap, now)))
            .collect();
        (res, states)
    }

    async fn tick(&mut self) -> (Resolution, BTreeMap<String, TargetState>) {
        let (res, states) = self.observe();
        for (t, s) in res.targets.iter().zip(states.values()) {
            if let Some(kg) = s.known_good_due() {
                revision::record_known_good(&self.client, &t.namespace, &t.name, &kg)
                    .await
                    .expect("the known-good record is written");
                self.tracker.recorded(&t.uid(), kg);
            }
        }
        (res, states)
    }
}

fn known_good_on(d: &Deployment) -> Option<KnownGood> {
    d.annotations()
        .get(KNOWN_GOOD)
        .map(|t| serde_json::from_str(t).expect("a known-good record"))
}

fn rolled_out(d: &Deployment) -> Result<(), String> {
    if revision::fully_rolled_out(d) {
        Ok(())
    } else {
        Err(format!("{:?}", d.status))
    }
}

#[tokio::test]
async fn deployments_by_name_selector_and_annotation_are_watched_and_a_missing_one_is_named() {
    let (_sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    create(&client, NS, "api", "api:v1", json!({})).await;
    create(
        &client,
        "staging",
        "worker",
        "worker:v1",
        json!({"rollback-watchdog.io/enabled": "true"}),
    )
    .await;
    let config = config(
        r#"
        [watchdog]
        opt_in_namespaces = ["staging"]
        [[targets]]
        namespace = "production"
        name = "kailash-kaizen"
        [[targets]]
        namespace = "production"
        name = "web"
        [[targets]]
        namespace = "production"
        selector = "app=api"
        "#,
    );
    let mut lp = Loop::start(&client, config).await;
    // The caches are synced, but the sim's deployment controller may not
    // have made every ReplicaSet yet: wait until each target has one.
    let (res, states) = eventually("a ReplicaSet for every target in the caches", || {
        let (res, states) = lp.observe();
        async move {
            match states.iter().find(|(_, s)| s.subject().is_none()) {
                Some((name, s)) if res.targets.len() == 3 => {
                    Err(format!("{name}: {:?}", s.rollout))
                }
                None if res.targets.len() == 3 => Ok((res, states)),
                _ => Err(format!("{} targets resolved", res.targets.len())),
            }
        }
    })
    .await;
    let names: Vec<String> = res.targets.iter().map(|t| t.display_name()).collect();
    assert_eq!(
        names,
        ["production/api", "production/web", "staging/worker"]
    );
    let warnings: Vec<String> = res.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        ["production/kailash-kaizen: Deployment not found; check the name in targets[0]"]
    );
    // The others go on: each has a revision to judge.
    for (name, s) in &states {
        assert!(s.subject().is_some(), "{name}: {:?}", s.rollout);
    }
}

#[tokio::test]
async fn a_rollout_opens_a_window_with_the_new_revision_its_hash_and_the_previous_one() {
    let (_sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    let config = config("[defaults]\nwatch_window = \"1h\"\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n");
    let mut lp = Loop::start(&client, config).await;
    eventually("revision 1 rolled out", || async {
        rolled_out(&get(&client, "web").await)
    })
    .await;

    set_image(&client, "web", "web:v2").await;
    let state = eventually("revision 2 in the caches", || {
        let (_, mut states) = lp.observe();
        let s = states.remove("web");
        async move {
            let s = s.ok_or("no state")?;
            match s.current() {
                Some(c) if c.number == 2 => Ok(s),
                _ => Err(format!("{:?}", s.rollout)),
            }
        }
    })
    .await;

    let rs_api: Api<k8s_openapi::api::apps::v1::ReplicaSet> = Api::namespaced(client.clone(), NS);
    let rss = rs_api
        .list(&Default::default())
        .await
        .expect("ReplicaSets list");
    let hash_of = |image: &str| {
        rss.items
            .iter()
            .find(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .and_then(|t| t.spec.as_ref())
                    .is_some_and(|s| s.containers[0].image.as_deref() == Some(image))
            })
            .and_then(|rs| rs.labels().get("pod-template-hash").cloned())
            .expect("a ReplicaSet of the image")
    };
    let subject = state.subject().expect("a subject");
    assert_eq!(subject.revision, 2);
    assert_eq!(subject.pod_template_hash, hash_of("web:v2"));
    assert_eq!(subject.images, ["web:v2"]);
    let baseline = subject.baseline.expect("a baseline");
    assert_eq!(
        (baseline.revision, baseline.pod_template_hash),
        (1, hash_of("web:v1"))
    );
    assert!(state.in_window());
    // In progress, the window has no end yet; once complete it closes
    // `watch_window` after the completion. Object timestamps have whole
    // seconds (the sim rounds), so up to a second more may remain.
    match state.remaining() {
        None => assert!(!state.fully_rolled_out, "{:?}", state.window),
        Some(remaining) => assert!(
            state.fully_rolled_out
                && remaining > Duration::from_secs(3000)
                && remaining <= Duration::from_secs(3601),
            "{remaining:?}"
        ),
    }
    assert!(state.known_good_due().is_none());
}

#[tokio::test]
async fn a_revision_that_survives_its_window_is_recorded_known_good_and_the_record_survives_a_restart(
) {
    let (_sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    let toml = "[watchdog]\ninterval = \"1s\"\n[defaults]\nwatch_window = \"3s\"\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n";
    let mut lp = Loop::start(&client, config(toml)).await;
    eventually("revision 1 rolled out", || async {
        rolled_out(&get(&client, "web").await)
    })
    .await;
    set_image(&client, "web", "web:v2").await;

    let start = Instant::now();
    let recorded = loop {
        let (_, states) = lp.tick().await;
        let s = &states["web"];
        match known_good_on(&get(&client, "web").await) {
            Some(kg) if kg.revision == 2 => break (kg, s.current().cloned()),
            other if start.elapsed() > WAIT => {
                panic!(
                    "revision 2 never recorded known-good: record {other:?}, window {:?}",
                    s.window
                )
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (kg, current) = recorded;
    let current = current.expect("a current revision");
    assert_eq!(kg.pod_template_hash, current.pod_template_hash);
    assert_eq!(kg.images, ["web:v2"]);

    // A restart: new caches, new tracker, same record, nothing due again.
    drop(lp);
    let mut lp = Loop::start(&client, config(toml)).await;
    let (_, states) = lp.observe();
    let s = &states["web"];
    assert_eq!(s.known_good.as_ref(), Some(&kg));
    assert!(s.current_is_known_good());
    assert!(s.known_good_due().is_none());
}

#[tokio::test]
async fn an_old_deployment_is_adopted_at_start_up_and_a_young_one_keeps_its_remaining_window() {
    let (_sim, client) = sim().await;
    create(
        &client,
        NS,
        "old",
        "old:v1",
        json!({"rollback-watchdog.io/watch-window": "1s"}),
    )
    .await;
    create(&client, NS, "young", "young:v1", json!({})).await;
    for name in ["old", "young"] {
        eventually("rolled out", || async {
            rolled_out(&get(&client, name).await)
        })
        .await;
    }
    // "old" is now older than its 1 s window.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let config = config(
        "[watchdog]\ninterval = \"1s\"\n[defaults]\nwatch_window = \"1h\"\nfailure_threshold = 1\n[[targets]]\nnamespace = \"production\"\nselector = \"app in (old,young)\"\n",
    );
    let mut lp = Loop::start(&client, config).await;
    let (_, states) = lp.tick().await;
    assert!(!states["old"].in_window());
    let adopted = known_good_on(&get(&client, "old").await).expect("old adopted as known-good");
    assert_eq!(
        (adopted.revision, adopted.images.as_slice()),
        (1, ["old:v1".to_string()].as_slice())
    );

    let young = &states["young"];
    assert!(young.in_window());
    let left = young.remaining().expect("a window");
    assert!(
        left < Duration::from_secs(3600) && left > Duration::from_secs(3500),
        "{left:?}"
    );
    assert!(known_good_on(&get(&client, "young").await).is_none());
}

#[tokio::test]
async fn a_bad_annotation_override_is_reported_and_ignored() {
    let (_sim, client) = sim().await;
    create(
        &client,
        NS,
        "web",
        "web:v1",
        json!({"rollback-watchdog.io/failure-threshold": "many", "rollback-watchdog.io/watch-window": "20m"}),
    )
    .await;
    let config = config("[defaults]\nfailure_threshold = 4\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n");
    let mut lp = Loop::start(&client, config).await;
    let (res, _) = lp.observe();
    let web = &res.targets[0];
    assert_eq!(
        web.policy.failure_threshold, 4,
        "the configured value stays"
    );
    assert_eq!(
        web.policy.watch_window,
        Duration::from_secs(1200),
        "the good override applies"
    );
    let warnings: Vec<String> = res.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        warnings,
        [
            r#"production/web: annotation rollback-watchdog.io/failure-threshold: "many" is not a whole number from 1 to 1000; the annotation is ignored"#
        ]
    );
    assert!(
        res.warnings[0].deployment_exists,
        "an Event can go on the Deployment"
    );
}

#[tokio::test]
async fn a_rollout_undo_makes_the_reused_revision_current_with_the_next_number() {
    let (_sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    let config = config("[defaults]\nwatch_window = \"1h\"\n[[targets]]\nnamespace = \"production\"\nname = \"web\"\n");
    let mut lp = Loop::start(&client, config).await;
    eventually("revision 1 rolled out", || async {
        rolled_out(&get(&client, "web").await)
    })
    .await;
    // The API says rolled out; the caches may be a watch event behind.
    let v1_hash = eventually("revision 1 in the caches", || {
        let current = lp.observe().1.get("web").and_then(|s| s.current().cloned());
        async move {
            match current {
                Some(c) if c.number == 1 => Ok(c.pod_template_hash),
                other => Err(format!("{other:?}")),
            }
        }
    })
    .await;
    set_image(&client, "web", "web:v2").await;
    eventually("revision 2 rolled out", || async {
        let d = get(&client, "web").await;
        match d
            .annotations()
            .get("deployment.kubernetes.io/revision")
            .map(String::as_str)
        {
            Some("2") => rolled_out(&d),
            other => Err(format!("revision {other:?}")),
        }
    })
    .await;
    eventually("revision 2 current in the caches", || {
        let number = lp
            .observe()
            .1
            .get("web")
            .and_then(|s| s.current().map(|c| c.number));
        async move {
            match number {
                Some(2) => Ok(()),
                other => Err(format!("current revision {other:?}")),
            }
        }
    })
    .await;

    // What `kubectl rollout undo` sends: revision 1's template back.
    set_image(&client, "web", "web:v1").await;
    let state = eventually("the undo in the caches", || {
        let (_, mut states) = lp.observe();
        let s = states.remove("web");
        async move {
            let s = s.ok_or("no state")?;
            match s.current() {
                Some(c) if c.number == 3 => Ok(s),
                _ => Err(format!("{:?}", s.rollout)),
            }
        }
    })
    .await;
    let current = state.current().expect("current");
    assert_eq!(
        current.pod_template_hash, v1_hash,
        "the old ReplicaSet is reused"
    );
    assert!(current.reused);
    assert_eq!(state.previous().map(|p| p.number), Some(2));
    // Seen live: the window starts at the switch, not at the old creation.
    assert!(!state.started_estimated);
    assert!(state.in_window());
    // No end while the undo rolls out; an hour after it once complete.
    assert!(state
        .remaining()
        .is_none_or(|left| left > Duration::from_secs(3000)));
}

#[tokio::test]
async fn ticks_over_200_targets_make_no_list_or_get_requests() {
    // The API alone, with hand-made ReplicaSets and pods: fast, and nothing
    // but the watchers can talk to the API server.
    let sim = SimCluster::start(SimOptions {
        api_only: true,
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let store = sim.store();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": NS}}))
        .expect("a namespace");
    let mut toml = String::from("[defaults]\nwatch_window = \"1h\"\n");
    for name in support::handmade::rolled_out_deployments(store, NS, 200) {
        toml.push_str(&format!(
            "[[targets]]\nnamespace = \"{NS}\"\nname = \"{name}\"\n"
        ));
    }
    let config = config(&toml);
    let client = sim.client().await.expect("a client");
    let caches = Caches::start(client, Scope::from_config(&config));
    tokio::time::timeout(WAIT, caches.ready())
        .await
        .expect("the caches sync in time")
        .expect("the watchers run");

    let log = sim.request_log();
    log.clear();
    let mut tracker = Tracker::new();
    let mut subjects = 0;
    for _ in 0..50 {
        let snap = caches.snapshot();
        let res = targets::resolve(&config, &snap);
        assert_eq!(res.targets.len(), 200);
        assert!(res.warnings.is_empty(), "{:?}", res.warnings);
        let now = jiff::Timestamp::now();
        for t in &res.targets {
            let state = tracker.observe(t, &snap, now);
            let subject = state.subject().expect("a subject");
            assert_eq!(subject.pods.len(), 1);
            subjects += 1;
        }
    }
    assert_eq!(subjects, 50 * 200);
    assert_eq!(log.lists(""), 0, "ticks listed: {:?}", log.entries());
    assert_eq!(
        log.count("get", ""),
        0,
        "ticks fetched: {:?}",
        log.entries()
    );
}

#[tokio::test]
async fn the_caches_turn_ready_for_every_waiter_at_once() {
    // /readyz and the run loop both wait for the first sync; a reflector
    // store wakes only one waiter, so the caches must not hand it out twice.
    let (_sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    let caches = Caches::start(client, Scope::Namespaces([NS.to_string()].into()));
    let all = futures::future::join3(caches.ready(), caches.ready(), caches.ready());
    let (a, b, c) = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("every waiter sees the sync");
    assert!(a.is_ok() && b.is_ok() && c.is_ok());
    assert!(caches.is_ready());
    assert!(caches.snapshot().deployment(NS, "web").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_read_from_a_failing_watch_are_dated_when_it_was_last_live() {
    // A state re-read from a stalled watch is not new evidence: while the
    // pod watch fails, the pods it cached are dated at its first error;
    // once it watches again and sees an event, they are current.
    let (sim, client) = sim().await;
    create(&client, NS, "web", "web:v1", json!({})).await;
    let caches = Caches::start(
        client.clone(),
        Scope::Namespaces([NS.to_string(), "staging".to_string()].into()),
    );
    tokio::time::timeout(WAIT, caches.ready())
        .await
        .expect("the caches sync in time")
        .expect("the caches sync");
    assert_eq!(caches.snapshot().pods_stalled_since(NS), None);

    let before = jiff::Timestamp::now();
    sim.access().deny(rollback_watchdog::sim::AccessRule::new(
        "watch",
        "",
        "pods",
        Some(NS),
    ));
    let started = Instant::now();
    let since = loop {
        // Closed again on every round, as a flapping load balancer would:
        // a watch request already past its authorization when the rule
        // came in is cut on the next round, and its re-watch refused.
        sim.close_watches();
        if let Some(since) = caches.snapshot().pods_stalled_since(NS) {
            break since;
        }
        assert!(
            started.elapsed() < WAIT,
            "the refused pod watch was never seen as stalled"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        since >= before,
        "{since} is after the watch was cut at {before}"
    );
    let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
    assert_eq!(caches.snapshot().pods_live_at(NS, later), since);
    assert_eq!(
        caches.snapshot().pods_stalled_since("staging"),
        None,
        "only the namespace whose watch failed"
    );

    sim.access().reset();
    // Any pod event in the namespace shows the watch is live again.
    create(&client, NS, "api", "api:v1", json!({})).await;
    let started = Instant::now();
    while caches.snapshot().pods_stalled_since(NS).is_some() {
        assert!(
            started.elapsed() < WAIT,
            "the pod watch never came back live"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let now = jiff::Timestamp::now();
    assert_eq!(caches.snapshot().pods_live_at(NS, now), now);
}

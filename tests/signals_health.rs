//! The health signals over real HTTP: the simulated cluster's app pods on
//! their own loopback IPs (`/health`, `/version`), and tiny servers for a
//! slow answer. A probe fails only on a refusal, a silent connected host or
//! a wrong answer; a name that does not resolve is Inconclusive.

use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use rollback_watchdog::config::{HealthPolicy, Loader};
use rollback_watchdog::signals::health::HealthProber;
use rollback_watchdog::signals::{Outcome, ServingRevision, SignalId, SignalResult, Subject};
use rollback_watchdog::sim::deployment::{apply_deployment_defaults, POD_TEMPLATE_HASH};
use rollback_watchdog::sim::store::{DEPLOYMENTS, PODS};
use rollback_watchdog::sim::{seed_deployment, SimCluster, SimOptions};

const NS: &str = "production";
const WAIT: Duration = Duration::from_secs(30);

/// A policy from the `[defaults.health]` TOML body given.
fn health(body: &str) -> HealthPolicy {
    Loader::from_toml(format!("[defaults.health]\n{body}"))
        .env(Vec::<(String, String)>::new())
        .load()
        .unwrap_or_else(|e| panic!("test config: {e}"))
        .config
        .defaults
        .health
}

async fn sim() -> SimCluster {
    SimCluster::start(SimOptions {
        seed: true,
        ..Default::default()
    })
    .await
    .expect("the simulated cluster starts")
}

/// Deploys `image` as Deployment `name` and waits until `replicas` pods run
/// with an IP (and are ready, when `ready`). Returns its Subject.
async fn deploy(sim: &SimCluster, name: &str, image: &str, replicas: i32, ready: bool) -> Subject {
    let mut d = seed_deployment(name, image, replicas);
    apply_deployment_defaults(&mut d);
    sim.store()
        .create(&DEPLOYMENTS, NS, d)
        .expect("deployment created");
    let started = Instant::now();
    loop {
        let pods: Vec<Pod> = sim
            .store()
            .list(&PODS, Some(NS))
            .0
            .into_iter()
            .filter(|p| p["metadata"]["labels"]["app"] == name)
            .filter_map(|p| serde_json::from_value(p).ok())
            .collect();
        let serving = pods.iter().filter(|p| {
            let s = p.status.as_ref();
            let running = s.and_then(|s| s.phase.as_deref()) == Some("Running")
                && s.and_then(|s| s.pod_ip.as_ref()).is_some();
            let is_ready = s
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            running && (is_ready || !ready)
        });
        if pods.len() == replicas as usize && serving.count() == pods.len() {
            let hash = pods[0]
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(POD_TEMPLATE_HASH))
                .cloned()
                .unwrap_or_default();
            return Subject {
                namespace: NS.into(),
                deployment: name.into(),
                revision: 1,
                pod_template_hash: hash,
                images: vec![image.into()],
                rollout_started: Timestamp::now(),
                baseline: None,
                pods: pods.into_iter().map(std::sync::Arc::new).collect(),
                progress_deadline_exceeded: false,
                ..Default::default()
            };
        }
        assert!(
            started.elapsed() < WAIT,
            "pods of {name} never came up: {} pods",
            pods.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_ip(subject: &Subject) -> String {
    subject.pods[0]
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("a pod IP")
}

fn prober() -> HealthProber {
    HealthProber::new().expect("a prober")
}

fn fail_sentence(r: &SignalResult) -> &str {
    match &r.outcome {
        Outcome::Fail { sentence, .. } => sentence,
        other => panic!("{}: expected a Fail, got {other:?}", r.signal),
    }
}

fn inconclusive_why(r: &SignalResult) -> &str {
    match &r.outcome {
        Outcome::Inconclusive { why } => why,
        other => panic!("{}: expected Inconclusive, got {other:?}", r.signal),
    }
}

/// Probes the first (only) configured URL.
async fn probe_url(policy: &HealthPolicy, subject: &Subject) -> SignalResult {
    prober()
        .url(&policy.urls[0], policy, subject, "test", Timestamp::now())
        .await
}

fn bare_subject() -> Subject {
    Subject {
        namespace: NS.into(),
        deployment: "web".into(),
        revision: 3,
        pod_template_hash: "ccc".into(),
        images: vec!["web:v3".into()],
        rollout_started: Timestamp::now(),
        baseline: None,
        pods: vec![],
        progress_deadline_exceeded: false,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_healthy_new_pod_passes_its_own_health_check() {
    let sim = sim().await;
    let subject = deploy(&sim, "web", "web:v1", 3, true).await;
    let policy = health(r#"per_pod = { port = 8080, path = "/health" }"#);
    let probe = policy.per_pod.clone().expect("per_pod");
    let r = prober()
        .per_pod(&probe, &policy, &subject, Timestamp::now())
        .await;
    assert_eq!(r.signal, SignalId::health(SignalId::PER_POD));
    assert_eq!(r.describe(), "per-pod health check 3 healthy pods, passing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_warming_up_with_503_are_starting_not_failing() {
    let sim = sim().await;
    let subject = deploy(&sim, "web", "web:v2-unready", 2, false).await;
    let policy = health(r#"per_pod = { port = 8080, path = "/health" }"#);
    let probe = policy.per_pod.clone().expect("per_pod");
    let r = prober()
        .per_pod(&probe, &policy, &subject, Timestamp::now())
        .await;
    let why = inconclusive_why(&r);
    assert!(
        why.starts_with("no pod of revision 1 could be judged yet: "),
        "{why}"
    );
    for pod in &subject.pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        assert!(
            why.contains(&format!("{name} never Ready yet, HTTP 503")),
            "{why}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_pods_that_were_ready_and_answer_503_fail_the_per_pod_check_naming_each_pod() {
    let sim = sim().await;
    let mut subject = deploy(&sim, "web", "web:v2-unready", 2, false).await;
    // Earlier ticks saw them Ready: a 503 now is not warm-up.
    subject.pod_history.ever_ready = subject
        .pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let policy = health(r#"per_pod = { port = 8080, path = "/health" }"#);
    let probe = policy.per_pod.clone().expect("per_pod");
    let r = prober()
        .per_pod(&probe, &policy, &subject, Timestamp::now())
        .await;
    let sentence = fail_sentence(&r);
    assert!(
        sentence.starts_with("2 of 2 running pods of revision 1 fail /health on port 8080: "),
        "{sentence}"
    );
    for pod in &subject.pods {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        assert!(sentence.contains(&format!("{name} HTTP 503")), "{sentence}");
    }
    assert_eq!(
        r.describe(),
        "per-pod health check 2 failing pods, expected HTTP 200 from /health of every running pod within 2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_pod_with_nothing_listening_on_the_probed_port_fails() {
    let sim = sim().await;
    let subject = deploy(&sim, "web", "web:v1", 2, true).await;
    let policy = health(r#"per_pod = { port = 9, path = "/health" }"#);
    let probe = policy.per_pod.clone().expect("per_pod");
    let r = prober()
        .per_pod(&probe, &policy, &subject, Timestamp::now())
        .await;
    let sentence = fail_sentence(&r);
    assert!(sentence.contains("connection refused by"), "{sentence}");
    assert!(sentence.starts_with("2 of 2 running pods"), "{sentence}");
}

#[tokio::test]
async fn a_revision_without_running_pods_is_inconclusive_for_per_pod_probing() {
    let policy = health(r#"per_pod = { port = 8080, path = "/health" }"#);
    let probe = policy.per_pod.clone().expect("per_pod");
    let r = prober()
        .per_pod(&probe, &policy, &bare_subject(), Timestamp::now())
        .await;
    assert!(
        inconclusive_why(&r).contains("no running pod of revision 3 has an IP yet"),
        "{r:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_version_url_must_show_the_revisions_image_tag() {
    let sim = sim().await;
    let mut subject = deploy(&sim, "web", "web:v1", 1, true).await;
    let url = format!("http://{}:8080/version", pod_ip(&subject));
    let policy = health(&format!("version_url = \"{url}\""));
    let template = policy.version_url.clone().expect("version_url");
    let r = prober()
        .version(&template, &policy, &subject, "test", Timestamp::now())
        .await;
    assert_eq!(r.signal, SignalId::health(SignalId::VERSION));
    assert!(r.outcome.is_pass(), "{r:?}");

    // The same pod judged as if it were revision v9: it does not serve v9.
    subject.images = vec!["web:v9".into()];
    let r = prober()
        .version(&template, &policy, &subject, "test", Timestamp::now())
        .await;
    let sentence = fail_sentence(&r);
    assert!(
        sentence.contains("does not show revision 1's image tag v9")
            && sentence.contains(r#""version":"v1""#),
        "{sentence}"
    );
    assert_eq!(
        r.describe(),
        "version check HTTP 200, expected a body containing v9"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_answering_from_old_pods_is_inconclusive_until_no_old_pod_is_ready() {
    // The "Service" is revision 1's pod, answering "v1"; revision 2 is
    // rolling out and revision 1 still has a Ready pod behind the Service.
    let sim = sim().await;
    let mut subject = deploy(&sim, "web", "web:v1", 1, true).await;
    let base = format!("http://{}:8080", pod_ip(&subject));
    subject.revision = 2;
    subject.images = vec!["web:v2".into()];
    subject.serving_others = vec![ServingRevision {
        revision: 1,
        pod_template_hash: "h1".into(),
        ready_pods: 3,
    }];
    let policy = health(&format!(
        "version_url = \"{base}/version\"\nurls = [\"{base}/nothing-here\"]"
    ));
    let template = policy.version_url.clone().expect("version_url");
    let r = prober()
        .version(&template, &policy, &subject, "test", Timestamp::now())
        .await;
    let why = inconclusive_why(&r);
    assert!(
        why.starts_with(&format!(
            "the Service may still route to 3 Ready pods of revision 1: \
             GET {base}/version does not show revision 2's image tag v2: "
        )) && why.contains(r#""version":"v1""#),
        "{why}"
    );
    let r = probe_url(&policy, &subject).await;
    assert_eq!(
        inconclusive_why(&r),
        format!("the Service may still route to 3 Ready pods of revision 1: GET {base}/nothing-here: HTTP 404")
    );

    // The rollout completed: no other revision serves, the answers count.
    subject.serving_others.clear();
    let r = prober()
        .version(&template, &policy, &subject, "test", Timestamp::now())
        .await;
    assert!(
        fail_sentence(&r).contains("does not show revision 2's image tag v2"),
        "{r:?}"
    );
    let r = probe_url(&policy, &subject).await;
    assert_eq!(
        fail_sentence(&r),
        format!("GET {base}/nothing-here: HTTP 404")
    );
}

#[tokio::test]
async fn a_refused_service_url_while_old_pods_serve_is_inconclusive() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let policy = health(&format!("urls = [\"http://{closed}/health\"]"));
    let mut subject = bare_subject();
    subject.serving_others = vec![ServingRevision {
        revision: 2,
        pod_template_hash: "bbb".into(),
        ready_pods: 1,
    }];
    let r = probe_url(&policy, &subject).await;
    assert_eq!(
        inconclusive_why(&r),
        format!(
            "the Service may still route to 1 Ready pod of revision 2: \
             GET http://{closed}/health: connection refused by {closed}"
        )
    );
}

#[tokio::test]
async fn every_probe_opens_a_fresh_connection_as_kubelet_probes_do() {
    // A server that keeps connections alive and records each request's
    // client port: a pooled connection would show the same port twice.
    use axum::extract::ConnectInfo;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    let ports: Arc<Mutex<Vec<u16>>> = Arc::default();
    let seen = ports.clone();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(move |ConnectInfo(peer): ConnectInfo<SocketAddr>| {
            let seen = seen.clone();
            async move {
                if let Ok(mut p) = seen.lock() {
                    p.push(peer.port());
                }
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let _ = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
    });
    let policy = health(&format!("urls = [\"http://{addr}/health\"]"));
    let prober = prober();
    for _ in 0..3 {
        let r = prober
            .url(
                &policy.urls[0],
                &policy,
                &bare_subject(),
                "test",
                Timestamp::now(),
            )
            .await;
        assert!(r.outcome.is_pass(), "{r:?}");
    }
    let ports = ports.lock().map(|p| p.clone()).unwrap_or_default();
    assert_eq!(ports.len(), 3, "{ports:?}");
    let distinct: std::collections::BTreeSet<u16> = ports.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "one connection per probe: {ports:?}");
    server.abort();
}

#[tokio::test]
async fn an_unresolvable_health_url_is_inconclusive_not_a_failure() {
    let policy = health(r#"urls = ["http://no-such-service.{namespace}.svc.invalid:8080/health"]"#);
    let r = probe_url(&policy, &bare_subject()).await;
    assert_eq!(
        r.signal,
        SignalId::health("http://no-such-service.production.svc.invalid:8080/health")
    );
    assert!(
        inconclusive_why(&r)
            .starts_with("health URL unresolvable: no-such-service.production.svc.invalid"),
        "{r:?}"
    );
}

#[tokio::test]
async fn a_host_that_never_completes_the_connection_is_inconclusive_not_a_failure() {
    // A listener whose accept queue is full drops further SYNs: the
    // connection neither succeeds nor is refused, as behind a firewall
    // that drops the watchdog's packets. That proves nothing about the
    // release.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.1:0".parse().expect("addr"))
        .expect("bind");
    let addr = socket.local_addr().expect("addr");
    let listener = socket.listen(0).expect("listen");
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(200),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    let policy = health(&format!(
        "timeout = \"500ms\"\nurls = [\"http://{addr}/health\"]"
    ));
    let r = probe_url(&policy, &bare_subject()).await;
    assert!(inconclusive_why(&r).contains("could not connect"), "{r:?}");
    drop(listener);
}

/// A loopback server: `/slow` answers after 3 s, `/ok` at once, `/oops`
/// with 500, `/degraded` with 200 and a body saying so, `/private` 200
/// only with the basic auth of `probe:SECRET-pw`.
async fn tiny_server() -> (String, tokio::task::JoinHandle<()>) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "ok"
            }),
        )
        .route("/ok", get(|| async { r#"{"status":"ok"}"# }))
        .route(
            "/oops",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") }),
        )
        .route("/degraded", get(|| async { r#"{"status":"degraded"}"# }))
        .route(
            "/private",
            get(|headers: axum::http::HeaderMap| async move {
                // user "probe", password "SECRET-pw".
                let ok = headers
                    .get("authorization")
                    .is_some_and(|v| v == "Basic cHJvYmU6U0VDUkVULXB3");
                if ok {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::UNAUTHORIZED, "who are you")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

#[tokio::test]
async fn a_health_url_that_answers_after_3s_fails_the_2s_limit() {
    let (base, server) = tiny_server().await;
    let policy = health(&format!("urls = [\"{base}/slow\"]"));
    let r = probe_url(&policy, &bare_subject()).await;
    assert_eq!(
        fail_sentence(&r),
        format!("GET {base}/slow: connected, but no answer within 2s")
    );
    server.abort();
}

#[tokio::test]
async fn a_health_url_fails_on_a_wrong_status_or_body_and_passes_otherwise() {
    let (base, server) = tiny_server().await;
    let regex = r#"body_regex = '"status":\s*"ok"'"#;
    let policy = health(&format!("{regex}\nurls = [\"{base}/ok\"]"));
    assert!(probe_url(&policy, &bare_subject()).await.outcome.is_pass());

    let policy = health(&format!("{regex}\nurls = [\"{base}/oops\"]"));
    let r = probe_url(&policy, &bare_subject()).await;
    assert_eq!(fail_sentence(&r), format!("GET {base}/oops: HTTP 500"));
    assert_eq!(
        r.describe(),
        format!("health check {base}/oops HTTP 500, expected HTTP 200")
    );

    let policy = health(&format!("{regex}\nurls = [\"{base}/degraded\"]"));
    let r = probe_url(&policy, &bare_subject()).await;
    assert!(
        fail_sentence(&r)
            .contains(r#"with a body not matching `"status":\s*"ok"`: "{"status":"degraded"}""#),
        "{r:?}"
    );
    server.abort();
}

#[tokio::test]
async fn a_refused_health_url_fails() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let policy = health(&format!("urls = [\"http://{closed}/health\"]"));
    let r = probe_url(&policy, &bare_subject()).await;
    assert_eq!(
        fail_sentence(&r),
        format!("GET http://{closed}/health: connection refused by {closed}")
    );
}

#[tokio::test]
async fn credentials_in_a_health_url_are_sent_as_a_header_and_never_shown() {
    let (base, _server) = tiny_server().await;
    let with_userinfo = base.replacen("http://", "http://probe:SECRET-pw@", 1);
    let policy = health(&format!("urls = [\"{with_userinfo}/private\"]"));
    assert_eq!(policy.urls[0].as_str(), format!("{base}/private"));
    let r = probe_url(&policy, &bare_subject()).await;
    assert!(r.outcome.is_pass(), "{r:?}");
    assert_eq!(r.signal, SignalId::health(format!("{base}/private")));
    let shown = serde_json::to_string(&r).expect("json") + &r.describe() + &format!("{policy:?}");
    assert!(!shown.contains("SECRET"), "{shown}");

    // Without the credentials the server says 401: they were really sent.
    let bare = health(&format!("urls = [\"{base}/private\"]"));
    let r = probe_url(&bare, &bare_subject()).await;
    assert!(fail_sentence(&r).contains("HTTP 401"), "{r:?}");
}

//! Credentials never leave the config (issue 13, item 6; issue 15, item 5):
//! with `user:password@` in `prometheus.url` and in a webhook URL, a Slack
//! URL (its path the secret) from a file, an HMAC key and a Prometheus
//! header value, a bad deploy judged and rolled back, then Prometheus gone,
//! nothing a user can read (logs, `/status`, Events, the audit log, the
//! backups and every object written in the cluster, the messages on-call
//! gets, `check-config` and `self-check`) shows a
//! credential or a webhook URL, while Prometheus and the receivers do get
//! them (the credentials as an `Authorization` header).

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use rollback_watchdog::sim::store::{CONFIGMAPS, DEPLOYMENTS};
use rollback_watchdog::sim::Behaviours;

mod support;
use support::prom::shared;
use support::watch::{config_toml, Prom, Scenario};

/// base64("user:SECRET") and base64("hook:HOOKSECRET"): the headers sent.
const PROM_AUTH: &str = "Basic dXNlcjpTRUNSRVQ=";
const HOOK_AUTH: &str = "Basic aG9vazpIT09LU0VDUkVU";

/// Log lines, as the fmt subscriber writes them.
#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

impl Buffer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// A pass-through in front of the shared Prometheus that records the
/// `Authorization` header of every request, and answers 503 once "stopped".
struct Proxy {
    upstream: String,
    http: reqwest::Client,
    auth: Mutex<Vec<Option<String>>>,
    stopped: AtomicBool,
}

async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, HeaderMap, Vec<u8>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    p.auth.lock().expect("lock").push(auth);
    if p.stopped.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            HeaderMap::new(),
            b"stopped".to_vec(),
        );
    }
    let path = uri.path_and_query().map(|x| x.as_str()).unwrap_or("/");
    let mut request = p
        .http
        .request(method, format!("{}{path}", p.upstream))
        .body(body);
    if let Some(ct) = headers.get("content-type") {
        request = request.header("content-type", ct.clone());
    }
    match request.send().await {
        Ok(r) => {
            let status = r.status();
            let mut out = HeaderMap::new();
            if let Some(ct) = r.headers().get("content-type") {
                out.insert("content-type", ct.clone());
            }
            let bytes = r.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
            (status, out, bytes)
        }
        Err(_) => (StatusCode::BAD_GATEWAY, HeaderMap::new(), Vec::new()),
    }
}

async fn proxy(upstream: &str) -> (String, Arc<Proxy>) {
    let state = Arc::new(Proxy {
        upstream: upstream.trim_end_matches('/').to_owned(),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client"),
        auth: Mutex::default(),
        stopped: AtomicBool::new(false),
    });
    let app = axum::Router::new()
        .fallback(forward)
        .with_state(state.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, state)
}

/// Every webhook body received, and the Authorization header of each.
type Received = Arc<Mutex<Vec<(Option<String>, String)>>>;

/// Where the Slack sink posts: the path is the secret, as in Slack's own
/// incoming-webhook URLs.
const SLACK_PATH: &str = "/services/T000/B000/SLACKPATHSECRET";

async fn receiver() -> (String, Received, Received) {
    let got: Received = Arc::default();
    let slack: Received = Arc::default();
    let store = got.clone();
    let slack_store = slack.clone();
    let app = axum::Router::new()
        .route(
            SLACK_PATH,
            axum::routing::post(move |body: String| {
                let store = slack_store.clone();
                async move {
                    store.lock().expect("lock").push((None, body));
                    "ok"
                }
            }),
        )
        .route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: String| {
                let store = store.clone();
                async move {
                    let auth = headers
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    store.lock().expect("lock").push((auth, body));
                    "ok"
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, got, slack)
}

/// `rollback-watchdog ARGS` against the sim, bounded; stdout and stderr.
async fn binary(kubeconfig: &std::path::Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("ROLLBACK_WATCHDOG_CONFIG")
        .env_remove("RUST_LOG")
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("rollback-watchdog {args:?} still running after 60s"))
        .expect("the binary starts");
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics naming the output and the line that shows a credential.
fn assert_no_credentials(what: &str, text: &str) {
    for needle in [
        "SECRET",
        "dXNlcjpTRUNSRVQ",
        "aG9vazpIT09LU0VDUkVU",
        "user:",
        "hook:",
    ] {
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            panic!("{what} shows a credential ({needle}): {line}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_urls_are_sent_as_headers_and_shown_nowhere() {
    let logs = Buffer::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("one subscriber");

    let prom = shared();
    let (prom_addr, prom_proxy) = proxy(&prom.url).await;
    let (hook_addr, got, slack) = receiver().await;
    let prom_url = format!("http://user:SECRET@{prom_addr}");
    // A Slack URL (its path is the secret) from a file, an HMAC key and a
    // Prometheus header value: every one contains SECRET.
    let secrets = tempfile::tempdir().expect("tempdir");
    let slack_url = format!("http://{hook_addr}{SLACK_PATH}");
    let slack_file = secrets.path().join("slack-url");
    std::fs::write(&slack_file, format!("{slack_url}\n")).expect("slack url written");
    let extra = format!(
        "watch_window = \"30s\"\nverify_window = \"4s\"\nrollout_timeout = \"60s\"\n\n\
         [[notify]]\nkind = \"webhook\"\nname = \"oncall\"\n\
         url = \"http://hook:HOOKSECRET@{hook_addr}/hook\"\n\
         secret = \"HMACSECRET\"\ndeadline = \"10s\"\n\n\
         [[notify]]\nkind = \"slack\"\nname = \"team\"\nurl_file = \"{}\"\ndeadline = \"10s\"\n\n\
         [prometheus.headers]\nX-Scope-OrgID = \"HEADERSECRET\"\n",
        slack_file.display()
    );
    let mut s = Scenario::start("creds", Prom::Url(&prom_url), Behaviours::builtin(), &extra).await;
    prom.register(s.sim.scrape_target_handle());
    s.with_pipeline().await;
    s.wait_scraped().await;
    // Only the watchdog's own queries from here on (the wait above is the
    // test's).
    prom_proxy.auth.lock().expect("lock").clear();
    s.tick_until(40, |e| e.state.known_good.is_some()).await;

    // A bad deploy, judged Bad and rolled back: on-call hears of it.
    s.deploy("web:v2-errors").await;
    s.tick_until_bad(40).await;
    s.finish_pipelines().await;

    // Prometheus goes away: every query error now names its URL, in the
    // reasons, /status, the Events and the logs.
    prom_proxy.stopped.store(true, Ordering::SeqCst);
    s.deploy("web:v3").await;
    let seen = s
        .tick_until(20, |e| {
            e.results
                .iter()
                .any(|r| r.describe().contains(prom_addr.as_str()))
        })
        .await;
    let reasons: Vec<String> = seen
        .iter()
        .flat_map(|e| e.results.iter().map(|r| r.describe()))
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains(&prom_addr)),
        "no reason names Prometheus at {prom_addr}: {reasons:#?}"
    );
    s.daemon.wait_pipelines(Duration::from_secs(30)).await;

    // The binary's own outputs, with the same config.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("watchdog.toml");
    let audit = dir.path().join("audit.jsonl");
    let toml = config_toml("creds", &prom_url, &audit.display().to_string(), &extra);
    std::fs::File::create(&config)
        .and_then(|mut f| f.write_all(toml.as_bytes()))
        .expect("config written");
    let config = config.to_str().expect("utf-8");
    let check_config = binary(s.sim.kubeconfig_path(), &["check-config", config]).await;
    let self_check = binary(s.sim.kubeconfig_path(), &["--config", config, "self-check"]).await;
    assert!(
        self_check.contains(&prom_addr),
        "self-check does not name Prometheus at {prom_addr} (so the test reads nothing): {self_check}"
    );

    let status = serde_json::to_string(&s.admin.snapshot()).expect("status json");
    assert!(
        status.contains(&prom_addr),
        "/status does not name Prometheus at {prom_addr}: {status}"
    );
    let events: Vec<String> = s
        .events()
        .into_iter()
        .map(|(reason, note)| format!("{reason}: {note}"))
        .collect();
    let audit_log = std::fs::read_to_string(s.audit_dir.path().join("audit.jsonl"))
        .expect("the audit log is written");
    // Every object the watchdog wrote in the cluster: the backups (and
    // their results) and the delivery ledger in ConfigMaps, and the
    // records on the Deployments (in-flight, restored, memory, known-good).
    let store = s.sim.store();
    let (configmaps, _) = store.list(&CONFIGMAPS, None);
    let backups: Vec<&serde_json::Value> = configmaps
        .iter()
        .filter(|c| {
            c.pointer("/metadata/labels")
                .and_then(|l| l.get(rollback_watchdog::k8s::keys::LABEL_DEPLOYMENT))
                .is_some()
        })
        .collect();
    assert!(
        !backups.is_empty(),
        "no backup was written, so the test reads none"
    );
    let (deployments, _) = store.list(&DEPLOYMENTS, None);
    let objects = serde_json::to_string_pretty(&(configmaps, deployments)).expect("json");
    let received = got.lock().expect("lock").clone();
    let slack_received = slack.lock().expect("lock").clone();
    // Each destination may see its own URL; none sees another's.
    let payloads: Vec<String> = received
        .iter()
        .chain(slack_received.iter())
        .map(|(_, b)| b.clone())
        .collect();
    let hook_url = format!("{hook_addr}/hook");
    let log = logs.text();
    assert!(
        log.contains(&prom_addr),
        "the logs never name Prometheus at {prom_addr}"
    );

    assert_no_credentials("the logs", &log);
    assert_no_credentials("/status", &status);
    assert_no_credentials("the Events", &events.join("\n"));
    assert_no_credentials("the audit log", &audit_log);
    assert_no_credentials("a webhook payload", &payloads.join("\n"));
    assert_no_credentials("check-config", &check_config);
    assert_no_credentials("self-check", &self_check);
    assert_no_credentials("the backups and Deployments", &objects);
    // The webhook URLs themselves are secrets too (Slack's path is its
    // credential): no output names them.
    for (what, text) in [
        ("the logs", &log),
        ("/status", &status),
        ("the Events", &events.join("\n")),
        ("the audit log", &audit_log),
        ("a notification payload", &payloads.join("\n")),
        ("check-config", &check_config),
        ("self-check", &self_check),
        ("the backups and Deployments", &objects),
    ] {
        for url in [
            hook_url.as_str(),
            SLACK_PATH,
            "SLACKPATHSECRET",
            "HEADERSECRET",
            "HMACSECRET",
        ] {
            if let Some(line) = text.lines().find(|l| l.contains(url)) {
                panic!("{what} shows the secret {url}: {line}");
            }
        }
    }
    assert!(!slack_received.is_empty(), "the Slack sink heard nothing");

    // The credentials were sent, not dropped.
    assert!(!received.is_empty(), "on-call heard nothing");
    for (auth, body) in &received {
        assert_eq!(auth.as_deref(), Some(HOOK_AUTH), "webhook {body}");
    }
    let prom_auth = prom_proxy.auth.lock().expect("lock").clone();
    assert!(!prom_auth.is_empty(), "Prometheus was never asked");
    assert!(
        prom_auth.iter().all(|a| a.as_deref() == Some(PROM_AUTH)),
        "a query went to Prometheus without the URL's credentials: {prom_auth:?}"
    );
}

//! Things that break on purpose, on loopback: a TCP proxy that delays,
//! stops and restarts (Prometheus going away and coming back), a fake
//! Prometheus that answers healthy figures or garbage (malformed JSON, a
//! 10 MB body, 500s), and a webhook receiver that fails as scripted (500,
//! 429, slow, hanging) before it accepts. Each counts what it did.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::RawQuery;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Counts by name, shared.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<BTreeMap<String, u64>>>);

impl Tally {
    pub fn add(&self, name: &str) {
        *self
            .0
            .lock()
            .expect("tally")
            .entry(name.to_owned())
            .or_default() += 1;
    }

    pub fn get(&self) -> BTreeMap<String, u64> {
        self.0.lock().expect("tally").clone()
    }
}

/// A loopback TCP proxy to `backend` that delays each connection's
/// first bytes, and can be stopped (connection refused, open ones cut)
/// and restarted on the same port.
pub struct DelayProxy {
    pub addr: SocketAddr,
    backend: SocketAddr,
    delay: Arc<Mutex<Duration>>,
    task: Option<JoinHandle<()>>,
}

impl DelayProxy {
    pub async fn start(backend: SocketAddr) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let mut p = DelayProxy {
            addr,
            backend,
            delay: Arc::default(),
            task: None,
        };
        p.serve(listener);
        p
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn serve(&mut self, listener: TcpListener) {
        let (backend, delay) = (self.backend, self.delay.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((mut inbound, _)) = listener.accept().await {
                let wait = *delay.lock().expect("delay");
                conns.spawn(async move {
                    tokio::time::sleep(wait).await;
                    if let Ok(mut out) = TcpStream::connect(backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        }));
    }

    /// Every new connection waits `d` before it is forwarded.
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().expect("delay") = d;
    }

    /// Closes the port and cuts open connections.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port (retrying while the old socket
    /// lingers).
    pub async fn restart(&mut self) {
        self.stop();
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(self.addr).await {
                self.serve(l);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("cannot listen on {} again", self.addr);
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the fake Prometheus answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromMode {
    /// 50 requests/s, no errors: a healthy revision.
    Healthy,
    /// 200 with a body that is not JSON.
    Malformed,
    /// 200 with 10 MB of JSON-looking text.
    Huge,
    /// 500 with Prometheus's error body.
    ServerError,
}

/// A fake Prometheus HTTP API on loopback.
pub struct FakePrometheus {
    pub addr: SocketAddr,
    mode: Arc<Mutex<PromMode>>,
    pub served: Tally,
    task: JoinHandle<()>,
}

impl FakePrometheus {
    pub async fn start() -> FakePrometheus {
        let mode = Arc::new(Mutex::new(PromMode::Healthy));
        let served = Tally::default();
        let (m, s) = (mode.clone(), served.clone());
        let app = axum::Router::new().fallback(move |RawQuery(q): RawQuery, body: Bytes| {
            let (m, s) = (m.clone(), s.clone());
            async move {
                let mode = *m.lock().expect("mode");
                s.add(&format!("{mode:?}"));
                let text = format!(
                    "{} {}",
                    q.unwrap_or_default(),
                    String::from_utf8_lossy(&body)
                );
                prometheus_answer(mode, &text)
            }
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakePrometheus {
            addr,
            mode,
            served,
            task,
        }
    }

    pub fn set(&self, mode: PromMode) {
        *self.mode.lock().expect("mode") = mode;
    }
}

impl Drop for FakePrometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn prometheus_answer(mode: PromMode, query: &str) -> Response {
    let json = |body: String| {
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    };
    match mode {
        PromMode::Healthy => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default();
            // Errors queries select 5xx codes; everything else is traffic.
            let value = if query.contains("5..") { "0" } else { "50" };
            json(format!(
                r#"{{"status":"success","data":{{"resultType":"vector","result":[{{"metric":{{}},"value":[{now},"{value}"]}}]}}}}"#
            ))
        }
        PromMode::Malformed => json(r#"{"status":"success","data":{"resultType":"vec"#.to_owned()),
        PromMode::Huge => {
            let mut body = String::with_capacity(10 * 1024 * 1024 + 64);
            body.push_str(
                r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"pad":""#,
            );
            body.extend(std::iter::repeat_n('x', 10 * 1024 * 1024));
            body.push_str(r#""},"value":[0,"1"]}]}}"#);
            json(body)
        }
        PromMode::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"status":"error","errorType":"internal","error":"injected fault"}"#,
        )
            .into_response(),
    }
}

/// What the flaky webhook does with one request.
#[derive(Debug, Clone, Copy)]
pub enum HookFault {
    Status500,
    /// 429 with `Retry-After: 1`.
    TooMany,
    /// Accepts after this delay.
    Slow(Duration),
    /// Never answers (the sender's per-attempt timeout must cut it).
    Hang,
}

/// A webhook receiver that applies `script`, one fault per request in
/// turn, then accepts everything: the bodies it accepted in `got`.
pub async fn flaky_receiver(
    script: Vec<HookFault>,
) -> (String, Arc<Mutex<Vec<serde_json::Value>>>, Tally) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let script = Arc::new(Mutex::new(VecDeque::from(script)));
    let tally = Tally::default();
    let (g, sc, t) = (got.clone(), script.clone(), tally.clone());
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let (g, sc, t) = (g.clone(), sc.clone(), t.clone());
            async move {
                let fault = sc.lock().expect("script").pop_front();
                match fault {
                    Some(HookFault::Status500) => {
                        t.add("webhook 500");
                        return (StatusCode::INTERNAL_SERVER_ERROR, "injected").into_response();
                    }
                    Some(HookFault::TooMany) => {
                        t.add("webhook 429");
                        return (
                            StatusCode::TOO_MANY_REQUESTS,
                            [(header::RETRY_AFTER, "1")],
                            "slow down",
                        )
                            .into_response();
                    }
                    Some(HookFault::Hang) => {
                        t.add("webhook hang");
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    Some(HookFault::Slow(d)) => {
                        t.add("webhook slow");
                        tokio::time::sleep(d).await;
                    }
                    None => {}
                }
                g.lock().expect("lock").push(body);
                "ok".into_response()
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got, tally)
}

//! Delivery: one bounded queue and one worker task per sink, retries under
//! backon's exponential backoff with jitter inside a total deadline,
//! `Retry-After` honoured, and a ledger so that a decision is told once per
//! sink even across restarts. [`Notifier::emit`] only enqueues: it never
//! waits for a sink, and a full queue drops (and counts) instead of
//! blocking the pipeline. URLs and secrets never reach a log line or an
//! error message; reqwest errors are stripped of their URL.

use std::collections::HashSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::{payload, webhook, NotifyError};
use crate::config::{credentials, EventKind, NotifySink, SinkKind};
use crate::report::incident::{Incident, IncidentSink, Settled};
use crate::report::metrics::{Metrics, SinkOutcome};

/// Messages waiting per sink before new ones are dropped.
pub const DEFAULT_QUEUE_CAPACITY: usize = 64;

/// How the backoff between attempts grows. The total time is bounded by
/// the sink's `deadline`, not by a number of attempts.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub min_delay: Duration,
    pub max_delay: Duration,
    pub factor: f32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            min_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
        }
    }
}

impl RetryPolicy {
    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_factor(self.factor)
            .without_max_times()
            .build()
    }
}

/// How one delivery ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DeliveryResult {
    Delivered,
    /// Not retried (a 4xx), the deadline passed, or the notifier shut down.
    GaveUp {
        reason: String,
    },
    /// Never attempted: the queue was full or the notifier shut down.
    Dropped {
        reason: String,
    },
    /// The ledger says this sink already has this decision (a restart, or
    /// the same decision emitted twice): not sent again.
    AlreadyDelivered,
}

impl DeliveryResult {
    /// The `outcome` label of `rollback_watchdog_notifications`.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::GaveUp { .. } => "gave_up",
            DeliveryResult::Dropped { .. } => "dropped",
            DeliveryResult::AlreadyDelivered => "already_delivered",
        }
    }
}

/// What a direct delivery did: attempts, the reason of each failed
/// attempt (in order), and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryReport {
    pub attempts: u32,
    pub failures: Vec<String>,
    #[serde(flatten)]
    pub result: DeliveryResult,
}

/// One delivery's outcome, for metrics and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryOutcome {
    /// The sink's name (never its URL).
    pub sink: String,
    pub incident_id: String,
    pub kind: EventKind,
    pub attempts: u32,
    /// Why each failed attempt failed ("HTTP 500", "timed out after 10s"):
    /// the retries, visible in the audit log.
    pub failures: Vec<String>,
    #[serde(flatten)]
    pub result: DeliveryResult,
}

/// Told every delivery outcome, from the sink's worker task (or from
/// `emit`, for drops). Must return quickly and never block.
pub trait DeliveryObserver: Send + Sync {
    fn observe(&self, outcome: &DeliveryOutcome);
}

impl<F: Fn(&DeliveryOutcome) + Send + Sync> DeliveryObserver for F {
    fn observe(&self, outcome: &DeliveryOutcome) {
        self(outcome)
    }
}

/// Counts outcomes in `rollback_watchdog_notifications{sink, outcome}`.
#[derive(Debug, Clone)]
pub struct MetricsObserver(pub Metrics);

impl DeliveryObserver for MetricsObserver {
    fn observe(&self, outcome: &DeliveryOutcome) {
        self.0
            .notifications
            .get_or_create(&SinkOutcome {
                sink: outcome.sink.clone(),
                outcome: outcome.result.label().to_owned(),
            })
            .inc();
    }
}

/// Which decisions each sink has been told, so that a restart (or a new
/// leader sharing the record) never tells a decision twice. Delivery is
/// at-least-once: a crash between the receiver's answer and
/// `mark_delivered` resends once (webhook receivers can drop it by the
/// `X-Rollback-Watchdog-Delivery` header). Called from the worker tasks:
/// implementations must be quick (keep an in-memory view, write behind).
pub trait DeliveryLedger: Send + Sync {
    fn already_delivered(&self, incident_id: &str, sink: &str) -> bool;
    /// Records a delivery; done when the record is durable (the outcome is
    /// reported only after it).
    fn mark_delivered<'a>(
        &'a self,
        incident_id: &'a str,
        sink: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>>;
}

/// A ledger that forgets on restart: for tests and `notify-test`.
#[derive(Debug, Default)]
pub struct MemoryLedger {
    seen: Mutex<HashSet<(String, String)>>,
}

impl MemoryLedger {
    /// Adds a delivery to what is known.
    pub fn remember(&self, incident_id: &str, sink: &str) {
        if let Ok(mut s) = self.seen.lock() {
            s.insert((incident_id.to_owned(), sink.to_owned()));
        }
    }
}

impl DeliveryLedger for MemoryLedger {
    fn already_delivered(&self, incident_id: &str, sink: &str) -> bool {
        self.seen
            .lock()
            .map(|s| s.contains(&(incident_id.to_owned(), sink.to_owned())))
            .unwrap_or(false)
    }

    fn mark_delivered<'a>(
        &'a self,
        incident_id: &'a str,
        sink: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        self.remember(incident_id, sink);
        Box::pin(async { Ok(()) })
    }
}

/// One delivery, as a line of the file and cluster ledgers.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct LedgerLine {
    pub incident_id: String,
    pub sink: String,
    #[serde(default)]
    pub delivered_at: String,
}

/// A ledger kept as JSON lines in a file (`{"incident_id", "sink",
/// "delivered_at"}`), read whole at open and appended to on each delivery.
/// A torn last line (a crash mid-write) is skipped, not fatal.
#[derive(Debug)]
pub struct FileLedger {
    path: PathBuf,
    seen: MemoryLedger,
    /// Held while appending; true while the file ends in a torn line that
    /// the next append must first terminate.
    append: Mutex<bool>,
}

impl FileLedger {
    pub fn open(path: impl AsRef<Path>) -> Result<FileLedger, NotifyError> {
        let path = path.as_ref().to_path_buf();
        let seen = MemoryLedger::default();
        let mut torn = false;
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                torn = !text.is_empty() && !text.ends_with('\n');
                for line in text.lines() {
                    if let Ok(l) = serde_json::from_str::<LedgerLine>(line) {
                        seen.remember(&l.incident_id, &l.sink);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(NotifyError::Ledger {
                    path: path.display().to_string(),
                    source,
                })
            }
        }
        Ok(FileLedger {
            path,
            seen,
            append: Mutex::new(torn),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl DeliveryLedger for FileLedger {
    fn already_delivered(&self, incident_id: &str, sink: &str) -> bool {
        self.seen.already_delivered(incident_id, sink)
    }

    fn mark_delivered<'a>(
        &'a self,
        incident_id: &'a str,
        sink: &'a str,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        let written = self.append(incident_id, sink);
        Box::pin(async move { written })
    }
}

impl FileLedger {
    fn append(&self, incident_id: &str, sink: &str) -> Result<(), NotifyError> {
        self.seen.remember(incident_id, sink);
        let line = LedgerLine {
            incident_id: incident_id.to_owned(),
            sink: sink.to_owned(),
            delivered_at: jiff::Timestamp::now().to_string(),
        };
        let err = |source| NotifyError::Ledger {
            path: self.path.display().to_string(),
            source,
        };
        let mut text = serde_json::to_string(&line).map_err(NotifyError::Encode)?;
        text.push('\n');
        let mut torn = self
            .append
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *torn {
            text.insert(0, '\n');
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        file.write_all(text.as_bytes()).map_err(err)?;
        *torn = false;
        file.sync_data().map_err(err)
    }
}

/// The most of a receiver's error answer that is read (its first line is
/// quoted).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The HTTP client of every sink without a `ca_file`: no redirects (a
/// redirected POST is a misconfigured URL, and following it could carry
/// the body elsewhere).
pub fn http_client() -> Result<reqwest::Client, NotifyError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rollback-watchdog/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| NotifyError::Client(e.without_url()))
}

/// The client for the sink at `notify[index]`: the shared settings, and
/// when it has a `ca_file`, that bundle (read here, once) trusted besides
/// the system's roots. TLS is always verified.
pub fn http_client_for(index: usize, sink: &NotifySink) -> Result<reqwest::Client, NotifyError> {
    let Some(path) = &sink.ca_file else {
        return http_client();
    };
    let certs = credentials::ca_bundle(path).map_err(|message| NotifyError::CaFile {
        index,
        sink: sink.name.clone(),
        path: path.clone(),
        message,
    })?;
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("rollback-watchdog/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(certs)
        .build()
        .map_err(|e| NotifyError::Client(e.without_url()))
}

/// `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    // Clamped to a day: a receiver's absurd value must not overflow the
    // deadline arithmetic (the deadline gives up long before anyway).
    const MAX_SECS: u64 = 86_400;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs.min(MAX_SECS)));
    }
    let at = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()?;
    let secs = (at - now).total(jiff::Unit::Second).ok()?;
    Some(Duration::from_secs_f64(secs.clamp(0.0, MAX_SECS as f64)))
}

struct Failure {
    reason: String,
    retry: bool,
    retry_after: Option<Duration>,
}

/// Removes anything that could carry the URL's secret part from a text
/// that came from outside (an error chain, a response body).
fn scrub(text: &str, url: &reqwest::Url) -> String {
    let mut out = text.replace(url.as_str(), "<url>");
    let path = url.path();
    if path.len() > 1 {
        out = out.replace(path, "<path>");
    }
    if let Some(q) = url.query() {
        if !q.is_empty() {
            out = out.replace(q, "<query>");
        }
    }
    out
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

async fn attempt(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<(), Failure> {
    let sent = client
        .post(url.clone())
        .headers(headers.clone())
        .body(body.to_vec())
        .send()
        .await;
    let response = match sent {
        Ok(r) => r,
        Err(e) => {
            let e = e.without_url();
            return Err(Failure {
                reason: scrub(&error_chain(&e), url),
                retry: !e.is_builder(),
                retry_after: None,
            });
        }
    };
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = if status.as_u16() == 429 || status.as_u16() == 503 {
        response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, jiff::Timestamp::now()))
    } else {
        None
    };
    // Slack and Teams answer errors with a short code (`invalid_blocks`):
    // worth showing, once scrubbed and cut.
    // Read with a cap: a receiver answering megabytes is not read whole.
    let body = match crate::signals::body::read_capped(response, MAX_ERROR_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => e.to_string(),
    };
    let first = body.lines().next().unwrap_or("").trim();
    let mut reason = format!("HTTP {}", status.as_u16());
    if !first.is_empty() {
        reason.push_str(": ");
        reason.push_str(&super::truncate(&scrub(first, url), 120));
    }
    let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
    Err(Failure {
        reason,
        retry,
        retry_after,
    })
}

/// Waits for `fut` until `deadline` or the shutdown cutoff, whichever is
/// first; `None` when cut.
async fn until<F: std::future::Future>(
    fut: F,
    deadline: Instant,
    cutoff: &mut Option<watch::Receiver<Option<Instant>>>,
) -> Option<F::Output> {
    tokio::pin!(fut);
    loop {
        let at = match cutoff.as_ref().and_then(|c| *c.borrow()) {
            Some(c) => c.min(deadline),
            None => deadline,
        };
        let changed = async {
            match cutoff.as_mut() {
                Some(c) => c.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tokio::time::sleep_until(at) => return None,
            ok = changed => if !ok {
                // The notifier is gone: no cutoff will come any more.
                *cutoff = None;
            },
        }
    }
}

fn cut_off(cutoff: &Option<watch::Receiver<Option<Instant>>>) -> bool {
    cutoff
        .as_ref()
        .and_then(|c| *c.borrow())
        .is_some_and(|c| Instant::now() >= c)
}

fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// Sends `incident` to `sink` now, retrying within the sink's deadline:
/// what `notify-test` uses, and what each worker does per message.
pub async fn deliver(
    client: &reqwest::Client,
    sink: &NotifySink,
    incident: &Incident,
    policy: &RetryPolicy,
) -> DeliveryReport {
    deliver_until(
        client,
        sink,
        incident,
        policy,
        Instant::now() + sink.deadline,
        None,
    )
    .await
}

async fn deliver_until(
    client: &reqwest::Client,
    sink: &NotifySink,
    incident: &Incident,
    policy: &RetryPolicy,
    deadline: Instant,
    cutoff: Option<watch::Receiver<Option<Instant>>>,
) -> DeliveryReport {
    match Request::build(sink, incident) {
        Ok(request) => {
            send_with_retries(client, sink, incident, policy, &request, deadline, cutoff).await
        }
        Err(reason) => Tries::default().give_up(reason),
    }
}

/// What is sent on each attempt: built once, before the first.
struct Request {
    url: reqwest::Url,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Request {
    /// The URL and secret resolved, the payload encoded and signed; `Err`
    /// is why nothing can be sent (never quoting the URL or the secret).
    fn build(sink: &NotifySink, incident: &Incident) -> Result<Request, String> {
        let url = sink.url.resolve().map_err(|source| {
            NotifyError::Url {
                sink: sink.name.clone(),
                source,
            }
            .to_string()
        })?;
        let Ok(mut url) = reqwest::Url::parse(url.expose()) else {
            return Err("its URL does not parse (not shown: it is a secret)".to_owned());
        };
        // `user:password@` in the URL goes as a sensitive Authorization
        // header; the URL kept for the attempts no longer carries it.
        let auth = credentials::take_userinfo(&mut url);
        let body = serde_json::to_vec(&payload(sink, incident))
            .map_err(|e| NotifyError::Encode(e).to_string())?;
        let mut headers = headers(sink, incident, &body)?;
        if let Some(auth) = auth {
            let Some(value) = credentials::authorization_header(&auth) else {
                return Err("the user name or password in its URL cannot be sent in an \
                     Authorization header (not shown: it is a secret)"
                    .to_owned());
            };
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        Ok(Request { url, headers, body })
    }
}

/// JSON, and for a webhook its event, delivery id and signature headers.
fn headers(
    sink: &NotifySink,
    incident: &Incident,
    body: &[u8],
) -> Result<reqwest::header::HeaderMap, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static("application/json"),
    );
    if sink.kind == SinkKind::Webhook {
        headers.insert(
            webhook::EVENT_HEADER,
            reqwest::header::HeaderValue::from_static(incident.kind.as_str()),
        );
        if let Ok(v) = reqwest::header::HeaderValue::from_str(&incident.id) {
            headers.insert(webhook::DELIVERY_HEADER, v);
        }
        if let Some(secret) = &sink.secret {
            let secret = secret.resolve().map_err(|source| {
                NotifyError::Secret {
                    sink: sink.name.clone(),
                    source,
                }
                .to_string()
            })?;
            let sig = webhook::signature(secret.expose().as_bytes(), body);
            if let Ok(v) = reqwest::header::HeaderValue::from_str(&sig) {
                headers.insert(webhook::SIGNATURE_HEADER, v);
            }
        }
    }
    Ok(headers)
}

/// The attempts made so far and why each failed: what the report carries.
#[derive(Default)]
struct Tries {
    attempts: u32,
    failures: Vec<String>,
}

impl Tries {
    fn give_up(self, reason: String) -> DeliveryReport {
        DeliveryReport {
            attempts: self.attempts,
            failures: self.failures,
            result: DeliveryResult::GaveUp { reason },
        }
    }

    fn delivered(self) -> DeliveryReport {
        DeliveryReport {
            attempts: self.attempts,
            failures: self.failures,
            result: DeliveryResult::Delivered,
        }
    }
}

/// Attempts `request` until it is delivered, a failure is not worth
/// retrying, the deadline leaves no room for another try, or the shutdown
/// cuts it off.
async fn send_with_retries(
    client: &reqwest::Client,
    sink: &NotifySink,
    incident: &Incident,
    policy: &RetryPolicy,
    request: &Request,
    deadline: Instant,
    mut cutoff: Option<watch::Receiver<Option<Instant>>>,
) -> DeliveryReport {
    let mut backoff = policy.backoff();
    let mut tries = Tries::default();
    loop {
        if cut_off(&cutoff) {
            return tries.give_up("the notifier shut down before it was delivered".to_owned());
        }
        let now = Instant::now();
        if now >= deadline {
            let reason = deadline_passed(sink, tries.failures.last());
            return tries.give_up(reason);
        }
        tries.attempts += 1;
        let attempt_deadline = (now + sink.timeout).min(deadline);
        tracing::debug!(sink = %sink.name, incident = %incident.id, attempt = tries.attempts, "sending notification");
        let failure = match until(
            attempt(client, &request.url, &request.headers, &request.body),
            attempt_deadline,
            &mut cutoff,
        )
        .await
        {
            Some(Ok(())) => return tries.delivered(),
            Some(Err(f)) => f,
            None if cut_off(&cutoff) => {
                return tries.give_up("the notifier shut down during delivery".to_owned())
            }
            None => Failure {
                reason: format!("timed out after {}", human(attempt_deadline - now)),
                retry: true,
                retry_after: None,
            },
        };
        tries.failures.push(failure.reason.clone());
        let delay = match retry_delay(&failure, &mut backoff, policy, sink, deadline) {
            Ok(delay) => delay,
            Err(reason) => return tries.give_up(reason),
        };
        tracing::warn!(
            sink = %sink.name,
            incident = %incident.id,
            attempt = tries.attempts,
            reason = %failure.reason,
            retry_in = %human(delay),
            "notification attempt failed; retrying"
        );
        if until(tokio::time::sleep(delay), deadline, &mut cutoff)
            .await
            .is_none()
        {
            // Cut by the shutdown: the next turn of the loop reports it.
            continue;
        }
    }
}

/// Why a delivery whose deadline passed before an attempt gave up.
fn deadline_passed(sink: &NotifySink, last_failure: Option<&String>) -> String {
    match last_failure {
        Some(last) => format!("{last} (deadline {} reached)", human(sink.deadline)),
        None => format!(
            "its deadline ({}) passed while it waited in the queue",
            human(sink.deadline)
        ),
    }
}

/// How long to wait before the next attempt (the backoff, or longer when
/// the sink said `Retry-After`); `Err` with the reason to give up when the
/// failure is not retried or the wait would reach the deadline.
fn retry_delay(
    failure: &Failure,
    backoff: &mut impl Iterator<Item = Duration>,
    policy: &RetryPolicy,
    sink: &NotifySink,
    deadline: Instant,
) -> Result<Duration, String> {
    if !failure.retry {
        return Err(format!("{} (not retried)", failure.reason));
    }
    let mut delay = backoff.next().unwrap_or(policy.max_delay);
    if let Some(after) = failure.retry_after {
        delay = delay.max(after);
    }
    if Instant::now() + delay >= deadline {
        return Err(format!(
            "{} (deadline {} reached)",
            failure.reason,
            human(sink.deadline)
        ));
    }
    Ok(delay)
}

struct Queued {
    incident: Incident,
    deadline: Instant,
    /// Told (or dropped, which the receiver sees as well) once this sink
    /// has settled the incident.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

struct SinkHandle {
    sink: Arc<NotifySink>,
    tx: Mutex<Option<mpsc::Sender<Queued>>>,
}

/// What the ledger records for an incident: its id and its kind.
pub fn decision_key(incident: &Incident) -> String {
    format!("{}#{}", incident.id, incident.kind.as_str())
}

/// Tells every configured sink about each decision, in the background.
/// Build it with [`Notifier::builder`] inside a Tokio runtime, hand it to
/// the pipeline as an [`IncidentSink`], and call [`Notifier::shutdown`]
/// when the daemon stops.
pub struct Notifier {
    sinks: Vec<SinkHandle>,
    observers: Arc<Vec<Arc<dyn DeliveryObserver>>>,
    workers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    cutoff: watch::Sender<Option<Instant>>,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.sinks.iter().map(|s| s.sink.name.as_str()).collect();
        f.debug_struct("Notifier").field("sinks", &names).finish()
    }
}

/// Settings of a [`Notifier`] before it starts.
pub struct NotifierBuilder {
    sinks: Vec<NotifySink>,
    ledger: Arc<dyn DeliveryLedger>,
    observers: Vec<Arc<dyn DeliveryObserver>>,
    queue_capacity: usize,
    policy: RetryPolicy,
    client: Option<reqwest::Client>,
}

impl NotifierBuilder {
    /// Where deliveries are recorded (default: in memory, forgotten on
    /// restart). The daemon passes a [`FileLedger`] or its own record.
    pub fn ledger(mut self, ledger: Arc<dyn DeliveryLedger>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Adds an observer of every outcome (metrics, the audit log).
    pub fn observer(mut self, observer: impl DeliveryObserver + 'static) -> Self {
        self.observers.push(Arc::new(observer));
        self
    }

    /// Messages waiting per sink before new ones are dropped (at least 1).
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    pub fn client(mut self, client: reqwest::Client) -> Self {
        self.client = Some(client);
        self
    }

    /// Starts one worker task per sink. Must run inside a Tokio runtime.
    pub fn start(self) -> Result<Notifier, NotifyError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NotifyError::NoRuntime)?;
        // Every client first (each `ca_file` read once), so that a bad
        // bundle fails the start before any worker runs.
        let clients = self
            .sinks
            .iter()
            .enumerate()
            .map(|(index, sink)| match &self.client {
                Some(c) => Ok(c.clone()),
                None => http_client_for(index, sink),
            })
            .collect::<Result<Vec<_>, NotifyError>>()?;
        let observers = Arc::new(self.observers);
        let (cutoff, cutoff_rx) = watch::channel(None);
        let mut sinks = Vec::new();
        let mut workers = Vec::new();
        for (sink, client) in self.sinks.into_iter().zip(clients) {
            let sink = Arc::new(sink);
            let (tx, rx) = mpsc::channel(self.queue_capacity);
            workers.push(runtime.spawn(worker(
                Arc::clone(&sink),
                rx,
                client,
                Arc::clone(&self.ledger),
                Arc::clone(&observers),
                self.policy.clone(),
                cutoff_rx.clone(),
            )));
            sinks.push(SinkHandle {
                sink,
                tx: Mutex::new(Some(tx)),
            });
        }
        Ok(Notifier {
            sinks,
            observers,
            workers: Mutex::new(workers),
            cutoff,
        })
    }
}

fn observe(observers: &[Arc<dyn DeliveryObserver>], outcome: &DeliveryOutcome) {
    for o in observers {
        o.observe(outcome);
    }
}

async fn worker(
    sink: Arc<NotifySink>,
    mut rx: mpsc::Receiver<Queued>,
    client: reqwest::Client,
    ledger: Arc<dyn DeliveryLedger>,
    observers: Arc<Vec<Arc<dyn DeliveryObserver>>>,
    policy: RetryPolicy,
    cutoff: watch::Receiver<Option<Instant>>,
) {
    while let Some(Queued {
        incident,
        deadline,
        settled,
    }) = rx.recv().await
    {
        // One decision is one incident in one state: `rollback_started` and
        // `rollback_succeeded` of the same rollback are two messages.
        let decision = decision_key(&incident);
        let report = if ledger.already_delivered(&decision, &sink.name) {
            DeliveryReport {
                attempts: 0,
                failures: Vec::new(),
                result: DeliveryResult::AlreadyDelivered,
            }
        } else {
            deliver_until(
                &client,
                &sink,
                &incident,
                &policy,
                deadline,
                Some(cutoff.clone()),
            )
            .await
        };
        match &report.result {
            DeliveryResult::Delivered => {
                if let Err(e) = ledger.mark_delivered(&decision, &sink.name).await {
                    tracing::warn!(sink = %sink.name, incident = %incident.id, error = %e,
                        "delivered, but could not record it: a restart may send it again");
                }
                tracing::info!(sink = %sink.name, incident = %incident.id, kind = incident.kind.as_str(),
                    attempts = report.attempts, "notification delivered");
            }
            DeliveryResult::GaveUp { reason } => {
                tracing::warn!(sink = %sink.name, incident = %incident.id, kind = incident.kind.as_str(),
                    attempts = report.attempts, %reason, "notification given up");
            }
            DeliveryResult::AlreadyDelivered => {
                tracing::info!(sink = %sink.name, incident = %incident.id, kind = incident.kind.as_str(),
                    "notification already delivered before; not sent again");
            }
            DeliveryResult::Dropped { .. } => {}
        }
        if let Some(tx) = settled {
            let _ = tx.send(());
        }
        observe(
            &observers,
            &DeliveryOutcome {
                sink: sink.name.clone(),
                incident_id: incident.id.clone(),
                kind: incident.kind,
                attempts: report.attempts,
                failures: report.failures,
                result: report.result,
            },
        );
    }
}

impl Notifier {
    /// A notifier for `sinks` (usually `config.notify`), with an in-memory
    /// ledger, no observers, [`DEFAULT_QUEUE_CAPACITY`] and the default
    /// [`RetryPolicy`] until told otherwise.
    pub fn builder(sinks: &[NotifySink]) -> NotifierBuilder {
        NotifierBuilder {
            sinks: sinks.to_vec(),
            ledger: Arc::new(MemoryLedger::default()),
            observers: Vec::new(),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            policy: RetryPolicy::default(),
            client: None,
        }
    }

    /// The configured sinks' names, in config order.
    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.sink.name.clone()).collect()
    }

    /// Stops taking messages and lets the queues drain until `within` has
    /// passed; whatever is still undelivered then is given up (and
    /// observed as such). Returns when every worker has stopped.
    pub async fn shutdown(&self, within: Duration) {
        let cutoff = Instant::now() + within;
        self.cutoff.send_replace(Some(cutoff));
        for s in &self.sinks {
            if let Ok(mut tx) = s.tx.lock() {
                tx.take();
            }
        }
        let workers: Vec<_> = match self.workers.lock() {
            Ok(mut w) => w.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        // After the cutoff, each worker only reports what is left: a short
        // grace for that, then stragglers are stopped.
        let grace = cutoff + Duration::from_secs(1);
        for mut w in workers {
            if tokio::time::timeout_at(grace, &mut w).await.is_err() {
                w.abort();
            }
        }
    }
}

impl IncidentSink for Notifier {
    fn emit(&self, incident: &Incident) {
        self.enqueue(incident, false);
    }

    fn emit_settled(&self, incident: &Incident) -> Settled {
        let waits = self.enqueue(incident, true);
        Box::pin(async move {
            // A sender dropped unsent (the worker stopped) is settled too.
            for rx in waits {
                let _ = rx.await;
            }
        })
    }
}

impl Notifier {
    /// Queues `incident` for every sink that takes it; with `wait`, the
    /// receivers that each sink's worker answers once it has settled it.
    fn enqueue(&self, incident: &Incident, wait: bool) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut waits = Vec::new();
        for s in &self.sinks {
            if !s
                .sink
                .wants(incident.kind, &incident.namespace, &incident.deployment)
            {
                continue;
            }
            let (settled, rx) = if wait {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let queued = Queued {
                incident: incident.clone(),
                deadline: Instant::now() + s.sink.deadline,
                settled,
            };
            let dropped = match s.tx.lock() {
                Ok(tx) => match tx.as_ref() {
                    None => Some("the notifier is shut down"),
                    Some(tx) => match tx.try_send(queued) {
                        Ok(()) => {
                            waits.extend(rx);
                            None
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => Some("queue full"),
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            Some("the sink's worker stopped")
                        }
                    },
                },
                Err(_) => Some("the sink's queue is unusable"),
            };
            if let Some(reason) = dropped {
                tracing::warn!(sink = %s.sink.name, incident = %incident.id, kind = incident.kind.as_str(),
                    reason, "notification dropped");
                observe(
                    &self.observers,
                    &DeliveryOutcome {
                        sink: s.sink.name.clone(),
                        incident_id: incident.id.clone(),
                        kind: incident.kind,
                        attempts: 0,
                        failures: Vec::new(),
                        result: DeliveryResult::Dropped {
                            reason: reason.to_owned(),
                        },
                    },
                );
            }
        }
        waits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now: jiff::Timestamp = "2015-10-21T07:28:00Z".parse().unwrap();
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            parse_retry_after("18446744073709551615", now),
            Some(Duration::from_secs(86_400))
        );
    }

    #[test]
    fn scrubbing_removes_the_url_and_its_secret_path() {
        let url = reqwest::Url::parse("https://hooks.example/services/T0/B0/xyzzy?k=v").unwrap();
        let text = format!("no route for {} (path /services/T0/B0/xyzzy)", url);
        let out = scrub(&text, &url);
        assert!(!out.contains("xyzzy"), "{out}");
    }

    #[test]
    fn the_file_ledger_survives_a_reopen_and_a_torn_last_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.jsonl");
        let ledger = FileLedger::open(&path).unwrap();
        ledger.append("a", "slack").unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"incident_id\":\"b\",\"si")
            .unwrap();
        let again = FileLedger::open(&path).unwrap();
        assert!(again.already_delivered("a", "slack"));
        assert!(!again.already_delivered("a", "teams"));
        assert!(!again.already_delivered("b", "slack"));
        again.append("c", "slack").unwrap();
        let third = FileLedger::open(&path).unwrap();
        assert!(third.already_delivered("a", "slack") && third.already_delivered("c", "slack"));
    }
}

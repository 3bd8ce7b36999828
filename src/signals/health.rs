//! HTTP health signals: the configured URLs, each new pod probed directly
//! (`per_pod`), and the `version_url` that must show the revision's image
//! tag. Every probe has a timeout (`health.timeout`, 2 s by default: the
//! runbook's "< 2 s") and is instrumented like a Prometheus query.
//!
//! It must never fail a revision for something the revision did not do.
//! A probe goes in three steps, and where it stops decides the outcome:
//!
//! | step | what happened | outcome |
//! | --- | --- | --- |
//! | resolve the host | no such name, or DNS silent for the timeout | Inconclusive: "health URL unresolvable" |
//! | TCP connect | refused (the address exists, nothing listens: a Service with no endpoints, a pod whose app is not listening) | **Fail** |
//! | TCP connect | no answer within the timeout, host or network unreachable | Inconclusive: a NetworkPolicy or route may drop the watchdog's own traffic, which says nothing about the release |
//! | HTTP request | connected, no answer within the timeout | **Fail**: "no answer within 2s" |
//! | HTTP request | an answer with an unexpected status, or a body not matching `body_regex` | **Fail** |
//! | HTTP request | reset, TLS or protocol error after connecting | Inconclusive: a mesh sidecar or proxy can do that to every revision alike |
//! | any step, Service-level URL (`urls`, `version_url`) | a **Fail** above, or a wrong version body, while other revisions of the Deployment still have Ready pods | Inconclusive: "the Service may still route to 3 Ready pods of revision 1: GET ... " (the answer may come from an old pod). A Pass stays a Pass |
//! | any step, per-pod | a pod of the revision never Ready yet (not Ready now, not seen Ready on an earlier tick) | no evidence: it is *starting*, and a readiness endpoint answering 503 during warm-up is normal |
//!
//! Service-level URLs count as the table says once no other revision has a
//! Ready pod (the rollout is complete, or the old pods are gone). Every
//! probe opens a fresh connection, as kubelet probes do: no kept-alive
//! connection stays pinned to an old pod behind a Service.
//!
//! Per-pod probing combines all pods of the revision into one result.
//! Only pods in phase Running with an IP and no deletion timestamp are
//! probed. A *ready* pod fails on anything in the Fail rows. A pod that was
//! Ready on an earlier tick but is not now fails only on a real HTTP
//! answer that is wrong (an app saying 503); while it refuses connections
//! or stays silent it is restarting, which the pod signal judges. A pod
//! never Ready yet is starting: none of its answers count (slow starters
//! would otherwise be rolled back; a pod that never becomes Ready is caught
//! by the pod signal's `ready_timeout` and the progress deadline). Which
//! pods were Ready before is kept by the run loop in memory: after a
//! watchdog restart every not-Ready pod counts as starting, which errs on
//! the safe side. `expect_status` and `body_regex` apply to per-pod
//! answers too.
//!
//! Known limit: a firewall that *rejects* the watchdog's packets (TCP
//! reset or ICMP port-unreachable, rather than dropping them) looks exactly
//! like a refusal and fails. Kubernetes NetworkPolicy implementations drop
//! by default; if yours rejects, allow the watchdog to reach the probed
//! ports, or probe through Prometheus instead.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use regex::Regex;
use tracing::Instrument;
use url::Url;

use super::{
    Fill, Measurement, Outcome, ServingRevision, SignalId, SignalResult, Subject, Threshold,
};
use crate::config::credentials;
use crate::config::{Config, HealthPolicy, PerPodProbe, Secret, UrlTemplate};

/// Bodies are read up to this size; a health answer is small.
const MAX_BODY: usize = 64 * 1024;
/// Pods probed at once.
const POD_CONCURRENCY: usize = 32;
/// Pods named in a sentence at most.
const NAMED_PODS: usize = 5;
/// Body excerpt quoted in a sentence.
const EXCERPT: usize = 120;

/// Building the prober failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("cannot build the HTTP client for health probes: {0}")]
    Client(#[source] reqwest::Error),
    /// A `health.ca_file` (of `[defaults.health]` or a target) that cannot
    /// be used.
    #[error("health.ca_file {}: {message}", path.display())]
    CaFile { path: PathBuf, message: String },
}

/// One probe, as the run loop's metrics want it.
#[derive(Debug, Clone)]
pub struct ProbeRecord {
    pub signal: SignalId,
    pub duration: Duration,
    /// `answered`, `no_answer`, `refused`, `unresolvable`, `unreachable`,
    /// `broken` or `bad_url`.
    pub outcome: &'static str,
}

/// Called after every probe; must be cheap.
pub type ProbeObserver = Arc<dyn Fn(&ProbeRecord) + Send + Sync>;

/// Probes health URLs and pods.
#[derive(Clone)]
pub struct HealthProber {
    /// Trusts the system's roots only.
    client: reqwest::Client,
    /// One client per `health.ca_file`, trusting the system's roots and
    /// that bundle, read once when the prober is built.
    ca_clients: BTreeMap<PathBuf, reqwest::Client>,
    observer: Option<ProbeObserver>,
}

impl std::fmt::Debug for HealthProber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthProber").finish_non_exhaustive()
    }
}

/// Where one probe ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    Answered {
        status: u16,
        body: String,
        elapsed: Duration,
    },
    /// Connected, then no answer within the timeout.
    NoAnswer {
        waited: Duration,
    },
    /// The address resolved and refused the connection.
    Refused {
        addr: SocketAddr,
    },
    Unresolvable {
        host: String,
        message: String,
    },
    /// Could not connect, without a refusal (timeout, no route).
    Unreachable {
        message: String,
    },
    /// Connected, then the exchange failed (reset, TLS, protocol).
    Broken {
        message: String,
    },
    BadUrl {
        message: String,
    },
}

impl Probe {
    fn kind(&self) -> &'static str {
        match self {
            Probe::Answered { .. } => "answered",
            Probe::NoAnswer { .. } => "no_answer",
            Probe::Refused { .. } => "refused",
            Probe::Unresolvable { .. } => "unresolvable",
            Probe::Unreachable { .. } => "unreachable",
            Probe::Broken { .. } => "broken",
            Probe::BadUrl { .. } => "bad_url",
        }
    }
}

/// A failed check of one answer: what was measured and what was expected.
#[derive(Debug, Clone)]
struct Failure {
    measured: Measurement,
    expected: String,
    /// For a person: "HTTP 503", "connection refused".
    what: String,
}

/// What the policy expects of an answer.
struct Expect<'a> {
    statuses: &'a [u16],
    body: Option<Regex>,
    body_source: Option<&'a str>,
    timeout: Duration,
}

impl Expect<'_> {
    fn statuses_text(&self) -> String {
        let codes: Vec<String> = self.statuses.iter().map(|c| c.to_string()).collect();
        match codes.as_slice() {
            [] => "any HTTP status".to_owned(),
            [one] => format!("HTTP {one}"),
            [init @ .., last] => format!("HTTP {} or {last}", init.join(", ")),
        }
    }

    /// Judges a probe: Ok(elapsed) when it passes, Err(Ok(failure)) when it
    /// fails, Err(Err(why)) when it cannot judge.
    fn judge(&self, probe: &Probe) -> Result<Duration, Result<Failure, String>> {
        let timeout = secs(self.timeout);
        match probe {
            Probe::Answered {
                status,
                body,
                elapsed,
            } => {
                if !self.statuses.is_empty() && !self.statuses.contains(status) {
                    return Err(Ok(Failure {
                        measured: Measurement::http_status(*status),
                        expected: self.statuses_text(),
                        what: format!("HTTP {status}"),
                    }));
                }
                if let (Some(re), Some(src)) = (&self.body, self.body_source) {
                    if !re.is_match(body) {
                        return Err(Ok(Failure {
                            measured: Measurement::http_status(*status),
                            expected: format!("a body matching `{src}`"),
                            what: format!(
                                "HTTP {status} with a body not matching `{src}`: \"{}\"",
                                excerpt(body)
                            ),
                        }));
                    }
                }
                Ok(*elapsed)
            }
            Probe::NoAnswer { waited } => Err(Ok(Failure {
                measured: Measurement::seconds(waited.as_secs_f64()),
                expected: format!("an answer within {timeout}"),
                what: format!("connected, but no answer within {timeout}"),
            })),
            Probe::Refused { addr } => Err(Ok(Failure {
                measured: Measurement::count(0.0, "answer", "answers"),
                expected: self.statuses_text(),
                what: format!("connection refused by {addr}"),
            })),
            Probe::Unresolvable { host, message } => {
                Err(Err(format!("health URL unresolvable: {host}: {message}")))
            }
            Probe::Unreachable { message } => Err(Err(format!(
                "could not connect: {message} (a NetworkPolicy or route may drop the watchdog's traffic)"
            ))),
            Probe::Broken { message } => Err(Err(format!("the exchange failed after connecting: {message}"))),
            Probe::BadUrl { message } => Err(Err(message.clone())),
        }
    }
}

/// How a running pod answered, for the combined per-pod result.
enum PodVerdict {
    Healthy,
    Failed(String),
    Starting(String),
    Unknown(String),
}

impl HealthProber {
    /// A prober trusting the system's roots only.
    pub fn new() -> Result<Self, HealthError> {
        Self::with_ca_files(std::iter::empty::<&Path>())
    }

    /// A prober for every `health.ca_file` of the config (`[defaults.health]`
    /// and each target's): each bundle is read here, once.
    pub fn for_config(config: &Config) -> Result<Self, HealthError> {
        let files = std::iter::once(&config.defaults)
            .chain(config.targets.iter().map(|t| &t.policy))
            .filter_map(|p| p.health.ca_file.as_deref());
        Self::with_ca_files(files)
    }

    /// A prober whose policies may name any of `ca_files`; a policy naming
    /// another one is probed with the system's roots only.
    pub fn with_ca_files<'a>(
        ca_files: impl IntoIterator<Item = &'a Path>,
    ) -> Result<Self, HealthError> {
        let client = Self::builder().build().map_err(HealthError::Client)?;
        let mut ca_clients = BTreeMap::new();
        for path in ca_files {
            if ca_clients.contains_key(path) {
                continue;
            }
            let certs = credentials::ca_bundle(path).map_err(|message| HealthError::CaFile {
                path: path.to_owned(),
                message,
            })?;
            let ca_client = Self::builder()
                .tls_certs_merge(certs)
                .build()
                .map_err(HealthError::Client)?;
            ca_clients.insert(path.to_owned(), ca_client);
        }
        Ok(HealthProber {
            client,
            ca_clients,
            observer: None,
        })
    }

    fn builder() -> reqwest::ClientBuilder {
        reqwest::Client::builder()
            // Pod IPs and Service names are in-cluster: never via a proxy.
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(5))
            // A fresh connection per probe, as kubelet probes do: a
            // kept-alive one would stay pinned to one (old) pod behind a
            // Service.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("rollback-watchdog/", env!("CARGO_PKG_VERSION")))
    }

    /// The client for `policy`: with its `ca_file`'s bundle, if any.
    fn client_for(&self, policy: &HealthPolicy) -> &reqwest::Client {
        policy
            .ca_file
            .as_ref()
            .and_then(|f| self.ca_clients.get(f))
            .unwrap_or(&self.client)
    }

    pub fn with_observer(mut self, observer: ProbeObserver) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The longest one health signal can take: resolve, connect and
    /// request each get the policy's timeout.
    pub fn signal_deadline(policy: &HealthPolicy) -> Duration {
        policy.timeout * 3 + Duration::from_millis(500)
    }

    /// The signal ids a policy produces for this subject, in the order
    /// [`Self::evaluate`] returns them.
    pub fn signals(policy: &HealthPolicy, subject: &Subject, cluster: &str) -> Vec<SignalId> {
        if !policy.enabled {
            return vec![];
        }
        let fill = Fill::current(subject, Duration::ZERO, cluster);
        let mut ids: Vec<SignalId> = policy
            .urls
            .iter()
            .map(|t| SignalId::health(t.fill(&fill.placeholders())))
            .collect();
        if policy.per_pod.is_some() {
            ids.push(SignalId::health(SignalId::PER_POD));
        }
        if policy.version_url.is_some() {
            ids.push(SignalId::health(SignalId::VERSION));
        }
        ids
    }

    /// Every health signal of the policy, concurrently, one result each.
    pub async fn evaluate(
        &self,
        policy: &HealthPolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Vec<SignalResult> {
        if !policy.enabled {
            return vec![];
        }
        let mut all: Vec<futures::future::BoxFuture<'_, SignalResult>> = Vec::new();
        for template in &policy.urls {
            all.push(Box::pin(self.url(template, policy, subject, cluster, now)));
        }
        if let Some(probe) = &policy.per_pod {
            all.push(Box::pin(self.per_pod(probe, policy, subject, now)));
        }
        if let Some(template) = &policy.version_url {
            all.push(Box::pin(
                self.version(template, policy, subject, cluster, now),
            ));
        }
        futures::future::join_all(all).await
    }

    /// One configured URL: `SignalId::Health { name: <the filled URL> }`.
    pub async fn url(
        &self,
        template: &UrlTemplate,
        policy: &HealthPolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let fill = Fill::current(subject, Duration::ZERO, cluster);
        let filled = template.fill(&fill.placeholders());
        let signal = SignalId::health(filled.clone());
        let expect = match expectations(policy) {
            Ok(e) => e,
            Err(why) => return SignalResult::new(signal, Outcome::inconclusive(why), now),
        };
        let probe = self
            .probe_str(
                self.client_for(policy),
                &signal,
                &filled,
                template.authorization(),
                policy.timeout,
            )
            .await;
        let outcome = match expect.judge(&probe) {
            Ok(elapsed) => Outcome::pass_with(Measurement::seconds(elapsed.as_secs_f64())),
            Err(Ok(f)) => Outcome::Fail {
                sentence: format!("GET {filled}: {}", f.what),
                measured: f.measured,
                threshold: Threshold::Expected { what: f.expected },
                baseline: None,
            },
            Err(Err(why)) => Outcome::inconclusive(why),
        };
        SignalResult::new(signal, through_service(subject, outcome), now)
    }

    /// Every Running pod of the revision at `http://<podIP>:<port><path>`,
    /// combined into one `SignalId::Health { name: PER_POD }` result.
    pub async fn per_pod(
        &self,
        probe: &PerPodProbe,
        policy: &HealthPolicy,
        subject: &Subject,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::health(SignalId::PER_POD);
        let expect = match expectations(policy) {
            Ok(e) => e,
            Err(why) => return SignalResult::new(signal, Outcome::inconclusive(why), now),
        };
        let running: Vec<(String, String, bool)> =
            subject.pods.iter().filter_map(|p| running_pod(p)).collect();
        if running.is_empty() {
            let why = format!(
                "no running pod of revision {} has an IP yet ({} {})",
                subject.revision,
                subject.pods.len(),
                if subject.pods.len() == 1 {
                    "pod"
                } else {
                    "pods"
                }
            );
            return SignalResult::new(signal, Outcome::inconclusive(why), now);
        }
        let path = if probe.path.starts_with('/') {
            probe.path.clone()
        } else {
            format!("/{}", probe.path)
        };
        let verdicts: Vec<(usize, String, PodVerdict)> =
            futures::stream::iter(running.into_iter().enumerate())
                .map(|(i, (name, ip, ready))| {
                    let host = if ip.contains(':') {
                        format!("[{ip}]")
                    } else {
                        ip
                    };
                    let url = format!("http://{host}:{}{path}", probe.port);
                    let signal = &signal;
                    let expect = &expect;
                    let was_ready = ready || subject.pod_history.ever_ready.contains(&name);
                    async move {
                        let p = self
                            .probe_str(self.client_for(policy), signal, &url, None, policy.timeout)
                            .await;
                        (i, name, pod_verdict(expect, &p, ready, was_ready))
                    }
                })
                .buffer_unordered(POD_CONCURRENCY)
                .collect()
                .await;
        let mut verdicts = verdicts;
        verdicts.sort_by_key(|(i, _, _)| *i);
        let probed = verdicts.len();
        let failed: Vec<String> = verdicts
            .iter()
            .filter_map(|(_, name, v)| match v {
                PodVerdict::Failed(what) => Some(format!("{name} {what}")),
                _ => None,
            })
            .collect();
        let healthy = verdicts
            .iter()
            .filter(|(_, _, v)| matches!(v, PodVerdict::Healthy))
            .count();
        let outcome = if !failed.is_empty() {
            Outcome::Fail {
                measured: Measurement::count(failed.len() as f64, "failing pod", "failing pods"),
                threshold: Threshold::Expected {
                    what: format!(
                        "{} from {path} of every running pod within {}",
                        expect.statuses_text(),
                        secs(policy.timeout)
                    ),
                },
                baseline: None,
                sentence: format!(
                    "{} of {probed} running {} of revision {} fail {path} on port {}: {}",
                    failed.len(),
                    if probed == 1 { "pod" } else { "pods" },
                    subject.revision,
                    probe.port,
                    named(&failed)
                ),
            }
        } else if healthy > 0 {
            Outcome::pass_with(Measurement::count(
                healthy as f64,
                "healthy pod",
                "healthy pods",
            ))
        } else {
            let waiting: Vec<String> = verdicts
                .iter()
                .filter_map(|(_, name, v)| match v {
                    PodVerdict::Starting(why) | PodVerdict::Unknown(why) => {
                        Some(format!("{name} {why}"))
                    }
                    _ => None,
                })
                .collect();
            Outcome::inconclusive(format!(
                "no pod of revision {} could be judged yet: {}",
                subject.revision,
                named(&waiting)
            ))
        };
        SignalResult::new(signal, outcome, now)
    }

    /// `version_url`: a 2xx answer whose body contains the tag of one of
    /// the revision's images, as a whole word (`v1` does not match `v10`).
    pub async fn version(
        &self,
        template: &UrlTemplate,
        policy: &HealthPolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> SignalResult {
        let signal = SignalId::health(SignalId::VERSION);
        let tags: Vec<&str> = subject.images.iter().filter_map(|i| image_tag(i)).collect();
        if tags.is_empty() {
            let why = format!(
                "the images of revision {} carry no tag to look for ({})",
                subject.revision,
                subject.images.join(", ")
            );
            return SignalResult::new(signal, Outcome::inconclusive(why), now);
        }
        let tags_text = tags.join(" or ");
        let fill = Fill::current(subject, Duration::ZERO, cluster);
        let url = template.fill(&fill.placeholders());
        let expect = Expect {
            statuses: &[],
            body: None,
            body_source: None,
            timeout: policy.timeout,
        };
        let probe = self
            .probe_str(
                self.client_for(policy),
                &signal,
                &url,
                template.authorization(),
                policy.timeout,
            )
            .await;
        let outcome = match (&probe, expect.judge(&probe)) {
            (Probe::Answered { status, body, .. }, Ok(elapsed)) => {
                if !(200..300).contains(status) {
                    Outcome::Fail {
                        measured: Measurement::http_status(*status),
                        threshold: Threshold::Expected {
                            what: format!("a 2xx answer containing {tags_text}"),
                        },
                        baseline: None,
                        sentence: format!("GET {url}: HTTP {status}, expected a 2xx answer containing {tags_text}"),
                    }
                } else if tags.iter().any(|t| contains_word(body, t)) {
                    Outcome::pass_with(Measurement::seconds(elapsed.as_secs_f64()))
                } else {
                    Outcome::Fail {
                        measured: Measurement::http_status(*status),
                        threshold: Threshold::Expected {
                            what: format!("a body containing {tags_text}"),
                        },
                        baseline: None,
                        sentence: format!(
                            "GET {url} does not show revision {}'s image tag {tags_text}: \"{}\"",
                            subject.revision,
                            excerpt(body)
                        ),
                    }
                }
            }
            (_, Ok(elapsed)) => Outcome::pass_with(Measurement::seconds(elapsed.as_secs_f64())),
            (_, Err(Ok(f))) => Outcome::Fail {
                sentence: format!("GET {url}: {}", f.what),
                measured: f.measured,
                threshold: Threshold::Expected {
                    what: format!("a 2xx answer containing {tags_text}"),
                },
                baseline: None,
            },
            (_, Err(Err(why))) => Outcome::inconclusive(why),
        };
        SignalResult::new(signal, through_service(subject, outcome), now)
    }

    async fn probe_str(
        &self,
        client: &reqwest::Client,
        signal: &SignalId,
        url: &str,
        auth: Option<&Secret>,
        timeout: Duration,
    ) -> Probe {
        match Url::parse(url) {
            Ok(u) => self.probe_with(client, signal, &u, auth, timeout).await,
            Err(e) => Probe::BadUrl {
                message: format!("health URL {url} does not parse: {e}"),
            },
        }
    }

    /// Resolves, connects and requests `url`, each step within `timeout`,
    /// sending `auth` (from the URL's userinfo) as a sensitive
    /// `Authorization` header.
    pub async fn probe(
        &self,
        signal: &SignalId,
        url: &Url,
        auth: Option<&Secret>,
        timeout: Duration,
    ) -> Probe {
        self.probe_with(&self.client, signal, url, auth, timeout)
            .await
    }

    async fn probe_with(
        &self,
        client: &reqwest::Client,
        signal: &SignalId,
        url: &Url,
        auth: Option<&Secret>,
        timeout: Duration,
    ) -> Probe {
        let span = tracing::debug_span!(
            "health_probe",
            signal = %signal,
            url = %url,
            duration_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let started = Instant::now();
        let probe = self
            .probe_inner(client, url, auth, timeout)
            .instrument(span.clone())
            .await;
        let duration = started.elapsed();
        span.record("duration_ms", duration.as_secs_f64() * 1000.0);
        span.record("outcome", probe.kind());
        span.in_scope(|| tracing::debug!(?probe, "health probe done"));
        if let Some(observer) = &self.observer {
            observer(&ProbeRecord {
                signal: signal.clone(),
                duration,
                outcome: probe.kind(),
            });
        }
        probe
    }

    async fn probe_inner(
        &self,
        client: &reqwest::Client,
        url: &Url,
        auth: Option<&Secret>,
        timeout: Duration,
    ) -> Probe {
        if !matches!(url.scheme(), "http" | "https") {
            return Probe::BadUrl {
                message: format!("health URL {url} is not http or https"),
            };
        }
        let (Some(host), Some(port)) = (url.host(), url.port_or_known_default()) else {
            return Probe::BadUrl {
                message: format!("health URL {url} has no host"),
            };
        };
        let addrs: Vec<SocketAddr> = match host {
            url::Host::Ipv4(ip) => vec![SocketAddr::from((ip, port))],
            url::Host::Ipv6(ip) => vec![SocketAddr::from((ip, port))],
            url::Host::Domain(name) => {
                match tokio::time::timeout(timeout, tokio::net::lookup_host((name, port))).await {
                    Ok(Ok(found)) => found.collect(),
                    Ok(Err(e)) => {
                        return Probe::Unresolvable {
                            host: name.to_owned(),
                            message: e.to_string(),
                        }
                    }
                    Err(_) => {
                        return Probe::Unresolvable {
                            host: name.to_owned(),
                            message: format!("no DNS answer within {}", secs(timeout)),
                        }
                    }
                }
            }
        };
        if addrs.is_empty() {
            return Probe::Unresolvable {
                host: url.host_str().unwrap_or_default().to_owned(),
                message: "no address".into(),
            };
        }
        if let Err(probe) = connect_any(&addrs, timeout).await {
            return probe;
        }
        let started = Instant::now();
        match tokio::time::timeout(timeout, Self::fetch(client, url, auth, timeout)).await {
            Err(_) => Probe::NoAnswer { waited: timeout },
            Ok(Ok((status, body))) => Probe::Answered {
                status,
                body,
                elapsed: started.elapsed(),
            },
            Ok(Err(e)) if e.is_timeout() => Probe::NoAnswer {
                waited: started.elapsed(),
            },
            // The connection was refused on the second try, to the same
            // host: as good as a refusal on the first.
            Ok(Err(e)) if e.is_connect() && refused_in(&e) => Probe::Refused { addr: addrs[0] },
            Ok(Err(e)) if e.is_connect() => Probe::Unreachable {
                message: root_cause(&e),
            },
            Ok(Err(e)) => Probe::Broken {
                message: root_cause(&e),
            },
        }
    }

    async fn fetch(
        client: &reqwest::Client,
        url: &Url,
        auth: Option<&Secret>,
        timeout: Duration,
    ) -> Result<(u16, String), reqwest::Error> {
        let mut request = client.get(url.clone()).timeout(timeout);
        if let Some(value) = auth.and_then(credentials::authorization_header) {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let mut response = request.send().await?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            let room = MAX_BODY.saturating_sub(body.len());
            body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if body.len() >= MAX_BODY {
                break;
            }
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Connects to the first address that accepts, within `timeout` in all.
/// A refusal anywhere and no success is a refusal; otherwise unreachable.
async fn connect_any(addrs: &[SocketAddr], timeout: Duration) -> Result<(), Probe> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut refused = None;
    let mut last = String::new();
    for addr in addrs {
        match tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_stream)) => return Ok(()),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                refused.get_or_insert(*addr);
            }
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => {
                last = format!("{addr}: no connection within {}", secs(timeout));
                break;
            }
        }
    }
    match refused {
        Some(addr) => Err(Probe::Refused { addr }),
        None => Err(Probe::Unreachable { message: last }),
    }
}

fn refused_in(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        source = err.source();
    }
    false
}

fn expectations(policy: &HealthPolicy) -> Result<Expect<'_>, String> {
    let body = match &policy.body_regex {
        Some(src) => Some(
            Regex::new(src)
                .map_err(|e| format!("health.body_regex `{src}` does not compile: {e}"))?,
        ),
        None => None,
    };
    Ok(Expect {
        statuses: &policy.expect_status,
        body,
        body_source: policy.body_regex.as_deref(),
        timeout: policy.timeout,
    })
}

/// (name, pod IP, ready) of a pod worth probing: Running, with an IP, not
/// being deleted.
fn running_pod(pod: &Pod) -> Option<(String, String, bool)> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") {
        return None;
    }
    let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    Some((pod.metadata.name.clone().unwrap_or_default(), ip, ready))
}

/// How one pod's probe counts: `ready` now, or `was_ready` (now or on an
/// earlier tick). A pod never Ready yet is starting, whatever it answers.
fn pod_verdict(expect: &Expect<'_>, probe: &Probe, ready: bool, was_ready: bool) -> PodVerdict {
    match expect.judge(probe) {
        Ok(_) => PodVerdict::Healthy,
        Err(Ok(f)) if !was_ready => PodVerdict::Starting(format!("never Ready yet, {}", f.what)),
        Err(Ok(f)) => {
            let answered = matches!(probe, Probe::Answered { .. });
            if ready || answered {
                PodVerdict::Failed(f.what)
            } else {
                PodVerdict::Starting(format!("not ready, {}", f.what))
            }
        }
        Err(Err(why)) => PodVerdict::Unknown(why),
    }
}

/// A Service-level URL's Fail while other revisions still have Ready pods
/// is Inconclusive: the Service may have routed the probe to one of them.
fn through_service(subject: &Subject, outcome: Outcome) -> Outcome {
    match outcome {
        Outcome::Fail { sentence, .. } if !subject.serving_others.is_empty() => {
            Outcome::inconclusive(format!(
                "the Service may still route to {}: {sentence}",
                serving_text(&subject.serving_others)
            ))
        }
        other => other,
    }
}

/// "3 Ready pods of revision 1 and 1 Ready pod of revision 0".
fn serving_text(others: &[ServingRevision]) -> String {
    let parts: Vec<String> = others
        .iter()
        .map(|o| {
            format!(
                "{} Ready {} of revision {}",
                o.ready_pods,
                if o.ready_pods == 1 { "pod" } else { "pods" },
                o.revision
            )
        })
        .collect();
    parts.join(" and ")
}

fn named(items: &[String]) -> String {
    let mut out: Vec<String> = items.iter().take(NAMED_PODS).cloned().collect();
    if items.len() > NAMED_PODS {
        out.push(format!("and {} more", items.len() - NAMED_PODS));
    }
    out.join(", ")
}

/// The tag of an image reference: `registry:5000/app:v1.2@sha256:..` -> `v1.2`.
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':')
        .map(|(_, tag)| tag)
        .filter(|t| !t.is_empty())
}

/// `needle` occurs in `hay` not glued to other tag characters.
fn contains_word(hay: &str, needle: &str) -> bool {
    let is_tag_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    hay.match_indices(needle).any(|(i, _)| {
        let before = hay[..i].chars().next_back();
        let after = hay[i + needle.len()..].chars().next();
        !before.is_some_and(is_tag_char) && !after.is_some_and(is_tag_char)
    })
}

fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let trimmed = one_line.trim();
    match trimmed.char_indices().nth(EXCERPT) {
        Some((i, _)) => format!("{}...", &trimmed[..i]),
        None => trimmed.to_owned(),
    }
}

/// `2s`, `1.5s`.
fn secs(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags_are_found_in_any_reference_form() {
        assert_eq!(image_tag("web:v1"), Some("v1"));
        assert_eq!(
            image_tag("registry:5000/team/web:v1.2@sha256:abc"),
            Some("v1.2")
        );
        assert_eq!(image_tag("registry:5000/team/web"), None);
        assert_eq!(image_tag("web@sha256:abc"), None);
    }

    #[test]
    fn a_tag_must_appear_as_a_whole_word() {
        assert!(contains_word(r#"{"version":"v1"}"#, "v1"));
        assert!(!contains_word(r#"{"version":"v10"}"#, "v1"));
        assert!(!contains_word(r#"{"version":"v1.2"}"#, "v1"));
        assert!(contains_word("running v1.2.3 since", "v1.2.3"));
    }

    #[test]
    fn expected_statuses_read_as_a_list() {
        let e = |s: &'static [u16]| Expect {
            statuses: s,
            body: None,
            body_source: None,
            timeout: Duration::from_secs(2),
        };
        assert_eq!(e(&[200]).statuses_text(), "HTTP 200");
        assert_eq!(e(&[200, 204]).statuses_text(), "HTTP 200 or 204");
        assert_eq!(e(&[200, 201, 204]).statuses_text(), "HTTP 200, 201 or 204");
    }

    fn expect_200() -> Expect<'static> {
        Expect {
            statuses: &[200],
            body: None,
            body_source: None,
            timeout: Duration::from_secs(2),
        }
    }

    fn answered(status: u16) -> Probe {
        Probe::Answered {
            status,
            body: String::new(),
            elapsed: Duration::ZERO,
        }
    }

    #[test]
    fn a_refusing_pod_fails_only_while_ready() {
        let refused = Probe::Refused {
            addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
        };
        // Never Ready yet, or Ready before and restarting now: no evidence.
        for was_ready in [false, true] {
            assert!(matches!(
                pod_verdict(&expect_200(), &refused, false, was_ready),
                PodVerdict::Starting(_)
            ));
        }
        assert!(matches!(
            pod_verdict(&expect_200(), &refused, true, true),
            PodVerdict::Failed(_)
        ));
    }

    #[test]
    fn a_starting_pod_answering_503_is_warming_up_not_failing() {
        match pod_verdict(&expect_200(), &answered(503), false, false) {
            PodVerdict::Starting(why) => assert_eq!(why, "never Ready yet, HTTP 503"),
            _ => panic!("a pod never Ready yet is starting"),
        }
    }

    #[test]
    fn a_pod_that_was_ready_and_now_answers_503_fails() {
        // Not Ready now, but seen Ready on an earlier tick.
        match pod_verdict(&expect_200(), &answered(503), false, true) {
            PodVerdict::Failed(what) => assert_eq!(what, "HTTP 503"),
            _ => panic!("a pod that was Ready and answers 503 fails"),
        }
        assert!(matches!(
            pod_verdict(&expect_200(), &answered(503), true, true),
            PodVerdict::Failed(_)
        ));
    }

    fn fail(sentence: &str) -> Outcome {
        Outcome::Fail {
            measured: Measurement::http_status(200),
            threshold: Threshold::Expected {
                what: "a body containing v2".into(),
            },
            baseline: None,
            sentence: sentence.into(),
        }
    }

    fn serving(revision: i64, ready_pods: u32) -> ServingRevision {
        ServingRevision {
            revision,
            pod_template_hash: format!("h{revision}"),
            ready_pods,
        }
    }

    #[test]
    fn a_service_url_failing_while_old_pods_serve_is_inconclusive() {
        let subject = Subject {
            revision: 2,
            serving_others: vec![serving(1, 3), serving(0, 1)],
            ..Subject::default()
        };
        let sentence = r#"GET http://web.production.svc:8080/version does not show revision 2's image tag v2: "v1""#;
        assert_eq!(
            through_service(&subject, fail(sentence)),
            Outcome::inconclusive(format!(
                "the Service may still route to 3 Ready pods of revision 1 \
                 and 1 Ready pod of revision 0: {sentence}"
            ))
        );
        // A Pass stays a Pass.
        assert!(through_service(&subject, Outcome::pass()).is_pass());
    }

    #[test]
    fn a_service_url_failing_once_no_old_pod_serves_fails() {
        let subject = Subject {
            revision: 2,
            ..Subject::default()
        };
        assert!(through_service(&subject, fail("GET http://web/version: HTTP 503")).is_fail());
    }
}

//! Fault injection in the simulated API server, for tests that prove the
//! watchdog keeps its promises when the API server misbehaves: a fraction
//! of the requests of a verb and resource answered 500, 429 (with
//! `Retry-After`) or 504; slow answers; watch streams dropped after a
//! while or answered `410 Gone`; a conflict (409) on the next write. Off
//! until a rule is added (from a test through [`Faults`], or from `sim`
//! with `--faults`). Every fault injected is counted by kind.
//!
//! It sits in front of the handler: a faulted request never reaches the
//! store, so a 500 or 504 on a write means nothing was written (a real
//! API server may have written; the watchdog must re-read either way).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::{json_response, route, verb_of, ApiState, Query, Route, VerbTag};

/// What a faulted request gets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// 500 InternalError.
    ServerError,
    /// 429 TooManyRequests with `Retry-After: secs`.
    TooManyRequests { retry_after_secs: u64 },
    /// 504 Timeout, as a request the server gave up on.
    Timeout,
    /// Answered normally after this delay.
    Slow(Duration),
    /// A watch served normally, its stream cut after this long.
    DropWatch(Duration),
    /// A watch answered with one `ERROR` event, 410 Expired: the client
    /// must relist.
    Gone,
}

impl Fault {
    /// The name a fault is counted under.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::ServerError => "500",
            Fault::TooManyRequests { .. } => "429",
            Fault::Timeout => "504",
            Fault::Slow(_) => "slow",
            Fault::DropWatch(_) => "watch-drop",
            Fault::Gone => "410",
        }
    }
}

/// The name the conflicts of [`Faults::conflict_next_write`] are counted under.
pub const CONFLICT: &str = "409";

/// A fraction of the requests of one verb and resource that get a fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultRule {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`,
    /// `deletecollection`, or `*` for any.
    pub verb: String,
    /// A resource plural (`deployments`, `leases`), or `*` for any.
    pub resource: String,
    pub fault: Fault,
    /// 0.0 (never) to 1.0 (every request).
    pub fraction: f64,
}

impl FaultRule {
    pub fn new(verb: &str, resource: &str, fault: Fault, fraction: f64) -> Self {
        FaultRule {
            verb: verb.to_owned(),
            resource: resource.to_owned(),
            fault,
            fraction: fraction.clamp(0.0, 1.0),
        }
    }

    fn matches(&self, verb: &str, resource: &str) -> bool {
        (self.verb == "*" || self.verb == verb)
            && (self.resource == "*" || self.resource == resource)
            && match self.fault {
                Fault::DropWatch(_) | Fault::Gone => verb == "watch",
                _ => true,
            }
    }
}

/// `VERB:RESOURCE:FAULT:FRACTION`, e.g. `patch:deployments:500:0.1`,
/// `*:*:429:0.05`, `get:*:slow=300ms:0.2`, `watch:*:drop=2s:0.5`,
/// `watch:pods:410:0.1`, `list:*:504:0.1`.
impl FromStr for FaultRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.trim().split(':').collect();
        let [verb, resource, fault, fraction] = parts.as_slice() else {
            return Err(format!(
                "fault rule {s:?}: expected VERB:RESOURCE:FAULT:FRACTION, e.g. patch:deployments:500:0.1"
            ));
        };
        let duration = |v: &str| {
            humantime::parse_duration(v)
                .map_err(|e| format!("fault rule {s:?}: bad duration {v:?}: {e}"))
        };
        let fault = match *fault {
            "500" => Fault::ServerError,
            "429" => Fault::TooManyRequests {
                retry_after_secs: 1,
            },
            "504" => Fault::Timeout,
            "410" => Fault::Gone,
            other => match other.split_once('=') {
                Some(("429", secs)) => Fault::TooManyRequests {
                    retry_after_secs: secs.parse().map_err(|_| {
                        format!("fault rule {s:?}: Retry-After {secs:?} is not whole seconds")
                    })?,
                },
                Some(("slow", d)) => Fault::Slow(duration(d)?),
                Some(("drop", d)) => Fault::DropWatch(duration(d)?),
                _ => {
                    return Err(format!(
                        "fault rule {s:?}: unknown fault {other:?}; use 500, 429, 429=SECS, 504, 410, slow=DURATION or drop=DURATION"
                    ))
                }
            },
        };
        let fraction: f64 = fraction
            .parse()
            .ok()
            .filter(|f: &f64| (0.0..=1.0).contains(f))
            .ok_or_else(|| {
                format!("fault rule {s:?}: fraction {fraction:?} is not between 0 and 1")
            })?;
        Ok(FaultRule::new(verb, resource, fault, fraction))
    }
}

/// The fault switchboard of one API server; cheap to clone (shared).
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    rules: Vec<FaultRule>,
    /// Resources whose next write answers 409 (`*`: any).
    conflicts: Vec<String>,
    rng: StdRng,
    injected: BTreeMap<String, u64>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults::seeded(0x5eed)
    }
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Faults({:?})", self.lock().rules)
    }
}

impl Faults {
    /// No faults yet; which requests a rule hits is drawn from `seed`.
    pub fn seeded(seed: u64) -> Self {
        Faults {
            inner: Arc::new(Mutex::new(Inner {
                rules: Vec::new(),
                conflicts: Vec::new(),
                rng: StdRng::seed_from_u64(seed),
                injected: BTreeMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, rule: FaultRule) {
        self.lock().rules.push(rule);
    }

    /// Stops every fault (the counts are kept).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.rules.clear();
        inner.conflicts.clear();
    }

    /// The next create, update, patch or delete of `resource` (`*`: any)
    /// answers 409 Conflict, as if someone wrote just before.
    pub fn conflict_next_write(&self, resource: &str) {
        self.lock().conflicts.push(resource.to_owned());
    }

    /// Faults injected so far, by kind (`500`, `429`, `504`, `slow`,
    /// `watch-drop`, `410`, `409`).
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.lock().injected.clone()
    }

    /// All faults injected so far.
    pub fn total(&self) -> u64 {
        self.lock().injected.values().sum()
    }

    fn count(inner: &mut Inner, kind: &str) {
        *inner.injected.entry(kind.to_owned()).or_default() += 1;
    }

    /// The faults a request of `verb` on `resource` gets: at most one that
    /// answers in place of the server, plus any delays and drops.
    fn draw(&self, verb: &str, resource: &str) -> Drawn {
        let mut inner = self.lock();
        let mut drawn = Drawn::default();
        if matches!(verb, "create" | "update" | "patch" | "delete") {
            if let Some(i) = inner
                .conflicts
                .iter()
                .position(|r| r == "*" || r == resource)
            {
                inner.conflicts.remove(i);
                Self::count(&mut inner, CONFLICT);
                drawn.conflict = true;
                return drawn;
            }
        }
        let rules: Vec<FaultRule> = inner
            .rules
            .iter()
            .filter(|r| r.matches(verb, resource))
            .cloned()
            .collect();
        for rule in rules {
            if inner.rng.random::<f64>() >= rule.fraction {
                continue;
            }
            match rule.fault {
                Fault::Slow(d) => drawn.delay += d,
                Fault::DropWatch(d) => drawn.drop_after = Some(d),
                answer if drawn.answer.is_none() => drawn.answer = Some(answer),
                _ => continue,
            }
            Self::count(&mut inner, rule.fault.kind());
        }
        drawn
    }
}

#[derive(Default)]
struct Drawn {
    conflict: bool,
    delay: Duration,
    drop_after: Option<Duration>,
    answer: Option<Fault>,
}

fn status(code: u16, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason,
        "details": {}, "code": code,
    })
}

/// The middleware: faults a request as the rules say, or passes it on.
pub(super) async fn inject(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let target = match route(req.uri().path()) {
        Ok(Route::Resource(t)) => t,
        _ => return next.run(req).await,
    };
    let Ok(verb) = verb_of(req.method(), &target, &Query::parse(req.uri())) else {
        return next.run(req).await;
    };
    let drawn = state.faults.draw(verb, target.kind.plural);
    let tagged = |mut resp: Response| {
        resp.extensions_mut().insert(VerbTag(verb));
        resp
    };
    if drawn.conflict {
        let name = target.name.clone().unwrap_or_default();
        return tagged(json_response(
            409,
            &status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again (injected fault)",
                    target.kind.plural
                ),
            ),
        ));
    }
    if !drawn.delay.is_zero() {
        tokio::time::sleep(drawn.delay).await;
    }
    match drawn.answer {
        Some(Fault::ServerError) => {
            return tagged(json_response(
                500,
                &status(
                    500,
                    "InternalError",
                    "Internal error occurred: injected fault",
                ),
            ))
        }
        Some(Fault::TooManyRequests { retry_after_secs }) => {
            let mut resp = json_response(
                429,
                &status(
                    429,
                    "TooManyRequests",
                    "the server has received too many requests and has asked us to try again later (injected fault)",
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return tagged(resp);
        }
        Some(Fault::Timeout) => return tagged(json_response(
            504,
            &status(
                504,
                "Timeout",
                "the server was unable to return a response in the time allotted (injected fault)",
            ),
        )),
        Some(Fault::Gone) => {
            let event = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version (injected fault)")});
            return tagged(json_response(200, &event));
        }
        _ => {}
    }
    let resp = next.run(req).await;
    match drawn.drop_after {
        Some(after) => {
            let (parts, body) = resp.into_parts();
            let cut = body
                .into_data_stream()
                .take_until(tokio::time::sleep(after));
            Response::from_parts(parts, Body::from_stream(cut))
        }
        None => resp,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_bad_ones_say_what_to_write() {
        let r: FaultRule = "patch:deployments:500:0.1".parse().unwrap();
        assert_eq!(
            r,
            FaultRule::new("patch", "deployments", Fault::ServerError, 0.1)
        );
        let r: FaultRule = "*:*:429=3:1".parse().unwrap();
        assert_eq!(
            r.fault,
            Fault::TooManyRequests {
                retry_after_secs: 3
            }
        );
        let r: FaultRule = "watch:pods:drop=2s:0.5".parse().unwrap();
        assert_eq!(r.fault, Fault::DropWatch(Duration::from_secs(2)));
        assert!("patch:deployments:500".parse::<FaultRule>().is_err());
        let e = "get:*:teapot:0.1".parse::<FaultRule>().unwrap_err();
        assert!(e.contains("unknown fault"), "{e}");
        assert!("get:*:500:1.5".parse::<FaultRule>().is_err());
    }

    #[test]
    fn a_fraction_hits_about_that_share_and_conflicts_hit_once() {
        let f = Faults::seeded(1);
        f.add(FaultRule::new("get", "pods", Fault::ServerError, 0.25));
        let hits = (0..4000)
            .filter(|_| f.draw("get", "pods").answer.is_some())
            .count();
        assert!((800..1200).contains(&hits), "{hits}");
        assert!(f.draw("list", "pods").answer.is_none());
        assert!(f.draw("get", "deployments").answer.is_none());
        f.conflict_next_write("deployments");
        assert!(!f.draw("get", "deployments").conflict);
        assert!(f.draw("patch", "deployments").conflict);
        assert!(!f.draw("patch", "deployments").conflict);
        assert_eq!(f.injected().get("409"), Some(&1));
        assert_eq!(f.injected().get("500"), Some(&(hits as u64)));
    }
}

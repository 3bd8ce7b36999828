//! The simulated cluster's API server: an axum router that speaks enough of
//! the Kubernetes REST API over the store (discovery, CRUD, patch, watch,
//! `/status` and `/scale`, tables, access reviews) that the real `kube`
//! client and the real kubectl work against it. It must never answer an
//! error with anything but a `meta/v1 Status` body, and never panic on a
//! request, however malformed.

use std::collections::{BTreeMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::access::{AccessPolicy, AccessRequest, SIM_USER};
use super::discovery;
use super::lag::WatchLag;
use super::patch::{self, PatchType};
use super::protobuf::{self, ProtobufError};
use super::reqlog::{RequestEntry, RequestLog};
use super::store::{
    kind_for, Kind, Part, Store, StoreError, DEPLOYMENTS, KINDS, NAMESPACES, PODS, REPLICASETS,
    SELF_SUBJECT_ACCESS_REVIEWS,
};
use super::table::{self, IncludeObject};

/// Largest request body accepted.
const BODY_LIMIT: usize = 8 * 1024 * 1024;

mod faults;
mod filter;
mod scale;
pub use faults::{Fault, FaultRule, Faults};
mod watching;
use filter::Filter;
use watching::{as_table_event, bookmark, object_key, WatchTask};

/// Everything the API server needs; cheap to clone (all parts shared).
#[derive(Clone)]
pub struct ApiState {
    store: Store,
    access: AccessPolicy,
    log: RequestLog,
    bookmark_interval: Duration,
    /// Bumped to end every open watch stream.
    watch_closer: std::sync::Arc<watch::Sender<u64>>,
    /// Resources (by plural) whose list and watch requests wait, with how
    /// many holds each has.
    held: std::sync::Arc<watch::Sender<BTreeMap<String, usize>>>,
    /// Delays of watch events per kind (none by default).
    lag: WatchLag,
    /// Injected faults (none until a rule is added).
    faults: Faults,
}

impl ApiState {
    /// Allow-all access, an in-memory request log, bookmarks every second.
    pub fn new(store: Store) -> Self {
        let (closer, _) = watch::channel(0);
        ApiState {
            store,
            access: AccessPolicy::allow_all(),
            log: RequestLog::new(),
            bookmark_interval: Duration::from_secs(1),
            watch_closer: std::sync::Arc::new(closer),
            held: std::sync::Arc::new(watch::channel(BTreeMap::new()).0),
            lag: WatchLag::default(),
            faults: Faults::default(),
        }
    }

    /// Delays watch events as `lag` says (see [`WatchLag`]).
    pub fn with_watch_lag(mut self, lag: WatchLag) -> Self {
        self.lag = lag;
        self
    }

    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = access;
        self
    }

    pub fn with_request_log(mut self, log: RequestLog) -> Self {
        self.log = log;
        self
    }

    /// How often watches that asked for bookmarks get one.
    pub fn with_bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every.max(Duration::from_millis(10));
        self
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    pub fn request_log(&self) -> &RequestLog {
        &self.log
    }

    /// The fault switchboard (see [`Faults`]).
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Ends every open watch stream, as an API server restart or a load
    /// balancer's idle timeout would. Clients re-watch from their last
    /// resourceVersion (and relist if that is gone after `compact()`).
    pub fn close_watches(&self) {
        self.watch_closer.send_modify(|n| *n += 1);
    }

    /// Holds every list and watch request of `resource` (a plural such as
    /// `deployments`) until the returned guard is released or dropped, as
    /// a slow or overloaded API server would: a client's caches cannot
    /// sync meanwhile. Held requests are answered, not failed, on release.
    pub fn hold_lists(&self, resource: &str) -> ListHold {
        self.held
            .send_modify(|held| *held.entry(resource.to_string()).or_default() += 1);
        ListHold {
            held: self.held.clone(),
            resource: resource.to_string(),
        }
    }

    /// Waits while a [`ListHold`] holds `resource`.
    async fn wait_unheld(&self, resource: &str) {
        let mut held = self.held.subscribe();
        // The sender lives in `self`: wait_for cannot fail while it waits.
        let _ = held.wait_for(|held| !held.contains_key(resource)).await;
    }
}

/// Holds list and watch requests of one resource while it lives; see
/// [`ApiState::hold_lists`].
#[must_use = "the requests are released as soon as the hold is dropped"]
pub struct ListHold {
    held: std::sync::Arc<watch::Sender<BTreeMap<String, usize>>>,
    resource: String,
}

impl ListHold {
    /// Lets the held requests (and later ones) through.
    pub fn release(self) {}
}

impl Drop for ListHold {
    fn drop(&mut self) {
        self.held.send_modify(|held| {
            if let Some(n) = held.get_mut(&self.resource) {
                *n -= 1;
                if *n == 0 {
                    held.remove(&self.resource);
                }
            }
        });
    }
}

/// The API server's routes over `state`.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .fallback(handle)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            faults::inject,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), log_requests))
        .with_state(state)
}

/// Serves until `shutdown` resolves; open watches are ended then, so the
/// graceful shutdown does not wait on them.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closer = state.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close_watches();
    };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Errors the API layer answers with, each as a `Status` body.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{message}")]
    Forbidden {
        message: String,
        name: String,
        group: String,
        kind: String,
    },
    #[error("the server could not find the requested resource")]
    NoSuchPath,
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
}

impl ApiError {
    pub fn code(&self) -> u16 {
        match self {
            ApiError::Store(e) => e.code(),
            ApiError::Forbidden { .. } => 403,
            ApiError::NoSuchPath => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType(_) => 415,
        }
    }

    pub fn status_body(&self) -> Value {
        let (reason, details) = match self {
            ApiError::Store(e) => return e.status_body(),
            ApiError::Forbidden {
                name, group, kind, ..
            } => (
                "Forbidden",
                json!({"name": name, "group": group, "kind": kind}),
            ),
            ApiError::NoSuchPath => ("NotFound", json!({})),
            ApiError::MethodNotAllowed(_) => ("MethodNotAllowed", json!({})),
            ApiError::UnsupportedMediaType(_) => ("UnsupportedMediaType", json!({})),
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "details": details,
            "code": self.code(),
        })
    }
}

fn bad_request(msg: impl Into<String>) -> ApiError {
    ApiError::Store(StoreError::BadRequest(msg.into()))
}

fn json_response(code: u16, body: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn error_response(e: &ApiError) -> Response {
    json_response(e.code(), &e.status_body())
}

/// The Kubernetes verb of a request, carried to the request log.
#[derive(Clone, Copy)]
struct VerbTag(&'static str);

async fn log_requests(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    let ts = jiff::Timestamp::now().to_string();
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let resp = next.run(req).await;
    let verb = resp
        .extensions()
        .get::<VerbTag>()
        .map(|v| v.0)
        .unwrap_or("get");
    state.log.record(RequestEntry {
        ts,
        method,
        path,
        query,
        content_type,
        status: resp.status().as_u16(),
        verb: verb.to_string(),
    });
    resp
}

/// Where a resource request points.
#[derive(Debug, Clone)]
struct Target {
    kind: Kind,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

enum Route {
    Version,
    CoreVersions,
    Groups,
    Group(String),
    Resources { group: String, version: String },
    Health,
    OpenApiRoot,
    OpenApi { group: String, version: String },
    Resource(Target),
}

fn decode_segment(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn route(path: &str) -> Result<Route, ApiError> {
    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_segment)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let (group, version, rest) = match segs.as_slice() {
        ["version"] => return Ok(Route::Version),
        ["healthz" | "livez" | "readyz", ..] => return Ok(Route::Health),
        ["openapi", "v3"] => return Ok(Route::OpenApiRoot),
        ["openapi", "v3", "api", v] => {
            return Ok(Route::OpenApi {
                group: String::new(),
                version: v.to_string(),
            })
        }
        ["openapi", "v3", "apis", g, v] => {
            return Ok(Route::OpenApi {
                group: g.to_string(),
                version: v.to_string(),
            })
        }
        ["api"] => return Ok(Route::CoreVersions),
        ["apis"] => return Ok(Route::Groups),
        ["apis", g] => return Ok(Route::Group(g.to_string())),
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return Err(ApiError::NoSuchPath),
    };
    let find = |plural: &str| kind_for(group, version, plural).ok_or(ApiError::NoSuchPath);
    let target = match rest {
        [] => {
            return Ok(Route::Resources {
                group: group.to_string(),
                version: version.to_string(),
            })
        }
        ["namespaces", ns, plural, more @ ..]
            if !NAMESPACES.subresources.contains(plural) || !more.is_empty() =>
        {
            let kind = find(plural)?;
            if !kind.namespaced {
                return Err(ApiError::NoSuchPath);
            }
            let (name, sub) = match more {
                [] => (None, None),
                [name] => (Some(name.to_string()), None),
                [name, sub] => (Some(name.to_string()), Some(sub.to_string())),
                _ => return Err(ApiError::NoSuchPath),
            };
            Target {
                kind,
                namespace: Some(ns.to_string()),
                name,
                sub,
            }
        }
        [plural] => Target {
            kind: find(plural)?,
            namespace: None,
            name: None,
            sub: None,
        },
        [plural, name, more @ ..] => {
            let kind = find(plural)?;
            if kind.namespaced {
                return Err(ApiError::NoSuchPath);
            }
            let sub = match more {
                [] => None,
                [sub] => Some(sub.to_string()),
                _ => return Err(ApiError::NoSuchPath),
            };
            Target {
                kind,
                namespace: None,
                name: Some(name.to_string()),
                sub,
            }
        }
    };
    if let Some(sub) = &target.sub {
        if !target.kind.subresources.contains(&sub.as_str()) {
            return Err(ApiError::NoSuchPath);
        }
    }
    Ok(Route::Resource(target))
}

/// Query parameters, URL-decoded (`+` and `%20` are spaces).
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(uri: &Uri) -> Self {
        Query(
            url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true" | "1"))
    }
}

fn verb_of(method: &Method, target: &Target, query: &Query) -> Result<&'static str, ApiError> {
    let named = target.name.is_some();
    let verb = match (method.as_str(), named) {
        ("GET", true) => "get",
        ("GET", false) if query.flag("watch") => "watch",
        ("GET", false) => "list",
        ("POST", false) => "create",
        ("PUT", true) => "update",
        ("PATCH", true) => "patch",
        ("DELETE", true) => "delete",
        ("DELETE", false) => "deletecollection",
        _ => {
            return Err(ApiError::MethodNotAllowed(format!(
                "the server does not allow this method on the requested resource: {method}"
            )))
        }
    };
    let kind = &target.kind;
    let advertised = match &target.sub {
        Some(_) => matches!(verb, "get" | "update" | "patch"),
        None => kind.verbs.contains(&verb) || (verb == "deletecollection" && kind.namespaced),
    };
    if !advertised {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {verb} {}",
            kind.plural
        )));
    }
    Ok(verb)
}

async fn handle(
    State(state): State<ApiState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let (verb, result) = dispatch(&state, &method, &uri, &headers, body).await;
    let mut resp = result.unwrap_or_else(|e| error_response(&e));
    resp.extensions_mut().insert(VerbTag(verb));
    resp
}

async fn dispatch(
    state: &ApiState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> (&'static str, Result<Response, ApiError>) {
    let route = match route(uri.path()) {
        Ok(r) => r,
        Err(e) => return ("get", Err(e)),
    };
    let query = Query::parse(uri);
    let target = match route {
        Route::Resource(t) => t,
        other => return ("get", discovery_response(other, method, headers)),
    };
    let verb = match verb_of(method, &target, &query) {
        Ok(v) => v,
        Err(e) => return ("get", Err(e)),
    };
    // A watch authorized before `close_watches` but started after it is
    // closed too, as a restarting API server would drop it.
    let closes_seen = *state.watch_closer.borrow();
    if target.kind != SELF_SUBJECT_ACCESS_REVIEWS {
        if let Err(e) = authorize(state, verb, &target) {
            return (verb, Err(e));
        }
    }
    if matches!(verb, "list" | "watch") {
        state.wait_unheld(target.kind.plural).await;
    }
    let body = match axum::body::to_bytes(body, BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return (verb, Err(bad_request(format!("cannot read the body: {e}")))),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let req = Req {
        state,
        target: &target,
        query: &query,
        body: &body,
        content_type,
        as_table: table::wants_table(accept),
        closes_seen,
    };
    let result = match verb {
        "get" => req.get(),
        "list" => req.list(),
        "watch" => req.watch(),
        "create" => req.create(),
        "update" => req.update(),
        "patch" => req.patch(),
        "delete" => req.delete(),
        _ => req.delete_collection(),
    };
    (verb, result)
}

fn discovery_response(
    route: Route,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if method != Method::GET {
        return Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource: {method}"
        )));
    }
    let body = match route {
        Route::Version => discovery::version(),
        Route::Health => return Ok((StatusCode::OK, "ok").into_response()),
        Route::CoreVersions => {
            let host = headers
                .get(header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("127.0.0.1");
            discovery::core_versions(host)
        }
        Route::Groups => discovery::group_list(),
        Route::Group(g) => discovery::group(&g).ok_or(ApiError::NoSuchPath)?,
        Route::Resources { group, version } => {
            discovery::resource_list(&group, &version).ok_or(ApiError::NoSuchPath)?
        }
        Route::OpenApiRoot => discovery::openapi_v3_root(),
        Route::OpenApi { group, version } => {
            discovery::openapi_v3_group_version(&group, &version).ok_or(ApiError::NoSuchPath)?
        }
        Route::Resource(_) => return Err(ApiError::NoSuchPath),
    };
    Ok(json_response(200, &body))
}

fn qualified(kind: &Kind) -> String {
    if kind.group.is_empty() {
        kind.plural.to_string()
    } else {
        format!("{}.{}", kind.plural, kind.group)
    }
}

fn authorize(state: &ApiState, verb: &str, target: &Target) -> Result<(), ApiError> {
    let req = AccessRequest {
        verb: verb.to_string(),
        group: target.kind.group.to_string(),
        resource: target.kind.plural.to_string(),
        subresource: target.sub.clone(),
        namespace: target.namespace.clone(),
        name: target.name.clone(),
    };
    if state.access.allows(&req) {
        return Ok(());
    }
    let resource = match &target.sub {
        Some(sub) => format!("{}/{sub}", target.kind.plural),
        None => target.kind.plural.to_string(),
    };
    let what = match &target.name {
        Some(n) => format!("{} \"{n}\"", qualified(&target.kind)),
        None => qualified(&target.kind),
    };
    let scope = match &target.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    Err(ApiError::Forbidden {
        message: format!(
            "{what} is forbidden: User \"{SIM_USER}\" cannot {verb} resource \"{resource}\" in API group \"{}\" {scope}",
            target.kind.group
        ),
        name: target.name.clone().unwrap_or_default(),
        group: target.kind.group.to_string(),
        kind: target.kind.plural.to_string(),
    })
}

/// The selectors of a list or watch request, as a [`Filter`].
fn filter_of(query: &Query, namespace: Option<String>) -> Result<Filter, ApiError> {
    Filter::new(
        query.get("labelSelector"),
        query.get("fieldSelector"),
        namespace,
    )
    .map_err(bad_request)
}

struct Req<'a> {
    state: &'a ApiState,
    target: &'a Target,
    query: &'a Query,
    body: &'a Bytes,
    content_type: &'a str,
    as_table: bool,
    /// How many times `close_watches` had run when the request came in.
    closes_seen: u64,
}

impl Req<'_> {
    fn kind(&self) -> &Kind {
        &self.target.kind
    }

    fn ns(&self) -> &str {
        self.target.namespace.as_deref().unwrap_or("")
    }

    fn name(&self) -> &str {
        self.target.name.as_deref().unwrap_or("")
    }

    fn dry_run(&self) -> bool {
        self.query.get("dryRun") == Some("All")
    }

    fn json_body(&self) -> Result<Value, ApiError> {
        if self.content_type.contains("protobuf") {
            return protobuf::decode(self.body).map_err(|e| match e {
                ProtobufError::Unsupported(_) => ApiError::UnsupportedMediaType(e.to_string()),
                ProtobufError::Malformed(_) => bad_request(e.to_string()),
            });
        }
        let v: Value = serde_json::from_slice(self.body)
            .map_err(|e| bad_request(format!("the request body is not valid JSON: {e}")))?;
        if !v.is_object() {
            return Err(bad_request("the request body must be a JSON object"));
        }
        Ok(v)
    }

    /// The body must name the kind of the URL when it names one.
    fn check_type(&self, body: &Value) -> Result<(), ApiError> {
        if let Some(k) = body.get("kind").and_then(Value::as_str) {
            let want = if self.target.sub.as_deref() == Some("scale") {
                "Scale"
            } else {
                self.kind().kind
            };
            if !k.is_empty() && k != want {
                return Err(bad_request(format!(
                    "the body names kind {k:?} but the URL is for {want}"
                )));
            }
        }
        Ok(())
    }

    fn respond(&self, code: u16, obj: &Value) -> Result<Response, ApiError> {
        if self.as_table && code == 200 && self.target.sub.is_none() {
            let rv = obj
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str)
                .unwrap_or("");
            let include = IncludeObject::from_query(self.query.get("includeObject"));
            let t = table::table(self.kind(), std::slice::from_ref(obj), rv, include);
            return Ok(json_response(200, &t));
        }
        Ok(json_response(code, obj))
    }

    fn get(&self) -> Result<Response, ApiError> {
        let obj = self.state.store.get(self.kind(), self.ns(), self.name())?;
        if self.target.sub.as_deref() == Some("scale") {
            return Ok(json_response(200, &scale_of(&obj)));
        }
        self.respond(200, &obj)
    }

    fn list(&self) -> Result<Response, ApiError> {
        let filter = filter_of(self.query, None)?;
        let (items, revision) = self
            .state
            .store
            .list(self.kind(), self.target.namespace.as_deref());
        let items: Vec<Value> = items.into_iter().filter(|o| filter.matches(o)).collect();
        let rv = revision.to_string();
        if self.as_table {
            let include = IncludeObject::from_query(self.query.get("includeObject"));
            return Ok(json_response(
                200,
                &table::table(self.kind(), &items, &rv, include),
            ));
        }
        Ok(json_response(
            200,
            &json!({
                "kind": self.kind().list_kind(),
                "apiVersion": self.kind().api_version(),
                "metadata": {"resourceVersion": rv},
                "items": items,
            }),
        ))
    }

    fn create(&self) -> Result<Response, ApiError> {
        let mut body = self.json_body()?;
        self.check_type(&body)?;
        if self.target.kind == SELF_SUBJECT_ACCESS_REVIEWS {
            return Ok(json_response(201, &self.review(body)));
        }
        let kind = self.kind();
        if kind.namespaced && self.target.namespace.is_none() {
            return Err(ApiError::MethodNotAllowed(format!(
                "create {} needs a namespace in the URL",
                kind.plural
            )));
        }
        if let Some(ns) = body.pointer("/metadata/namespace").and_then(Value::as_str) {
            if kind.namespaced && !ns.is_empty() && ns != self.ns() {
                return Err(bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
        if self.dry_run() {
            let name = body
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            if !name.is_empty() && self.state.store.get(kind, self.ns(), &name).is_ok() {
                return Err(StoreError::AlreadyExists {
                    group: kind.group.to_string(),
                    plural: kind.plural.to_string(),
                    name,
                }
                .into());
            }
            if let Some(map) = body.as_object_mut() {
                map.insert("apiVersion".into(), json!(kind.api_version()));
                map.insert("kind".into(), json!(kind.kind));
            }
            if kind.namespaced {
                body["metadata"]["namespace"] = json!(self.ns());
            }
            return Ok(json_response(201, &body));
        }
        reset_status_on_create(kind, &mut body);
        apply_defaults(kind, &mut body);
        let obj = self.state.store.create(kind, self.ns(), body)?;
        Ok(json_response(201, &obj))
    }

    fn update(&self) -> Result<Response, ApiError> {
        let body = self.json_body()?;
        self.check_type(&body)?;
        let kind = self.kind();
        match self.target.sub.as_deref() {
            Some("scale") => {
                let replicas = body.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                let rv = body.pointer("/metadata/resourceVersion").cloned();
                let obj = self.write_with(Part::Main, |obj| {
                    set_replicas(obj, replicas, rv);
                    Ok(())
                })?;
                Ok(json_response(200, &scale_of(&obj)))
            }
            sub => {
                let part = if sub == Some("status") {
                    Part::Status
                } else {
                    Part::Main
                };
                let mut body = body;
                if part == Part::Main {
                    apply_defaults(kind, &mut body);
                }
                if self.dry_run() {
                    return Ok(json_response(200, &body));
                }
                let obj = self
                    .state
                    .store
                    .replace(kind, self.ns(), self.name(), body, part)?;
                Ok(json_response(200, &obj))
            }
        }
    }

    fn write_with<F>(&self, part: Part, change: F) -> Result<Value, ApiError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        if self.dry_run() {
            return Ok(self.state.store.dry_run_update_with(
                self.kind(),
                self.ns(),
                self.name(),
                part,
                change,
            )?);
        }
        Ok(self
            .state
            .store
            .update_with(self.kind(), self.ns(), self.name(), part, change)?)
    }

    fn patch(&self) -> Result<Response, ApiError> {
        let patch_type = PatchType::from_content_type(self.content_type).ok_or_else(|| {
            ApiError::UnsupportedMediaType(format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {:?})",
                self.content_type
            ))
        })?;
        if patch_type == PatchType::Apply {
            return Err(ApiError::UnsupportedMediaType(
                "server-side apply (application/apply-patch+yaml) is not supported by the simulated cluster; use a merge, strategic merge or JSON patch".into(),
            ));
        }
        let body = self.body.clone();
        match self.target.sub.as_deref() {
            Some("scale") => {
                let obj = self.write_with(Part::Main, |obj| {
                    let mut scale = scale_of(obj);
                    patch::apply(patch_type, &mut scale, &body)?;
                    let replicas = scale.pointer("/spec/replicas").cloned().unwrap_or(json!(0));
                    let rv = scale.pointer("/metadata/resourceVersion").cloned();
                    set_replicas(obj, replicas, rv);
                    Ok(())
                })?;
                Ok(json_response(200, &scale_of(&obj)))
            }
            sub => {
                let part = if sub == Some("status") {
                    Part::Status
                } else {
                    Part::Main
                };
                let obj = self.write_with(part, |obj| patch::apply(patch_type, obj, &body))?;
                Ok(json_response(200, &obj))
            }
        }
    }

    fn delete(&self) -> Result<Response, ApiError> {
        let kind = self.kind();
        let current = self.state.store.get(kind, self.ns(), self.name())?;
        if !self.body.is_empty() {
            // DeleteOptions may carry preconditions; anything else is ignored.
            if let Ok(opts) = serde_json::from_slice::<Value>(self.body) {
                for field in ["resourceVersion", "uid"] {
                    let want = opts
                        .pointer(&format!("/preconditions/{field}"))
                        .and_then(Value::as_str);
                    let got = current
                        .pointer(&format!("/metadata/{field}"))
                        .and_then(Value::as_str);
                    if want.is_some_and(|w| Some(w) != got) {
                        return Err(StoreError::Conflict {
                            group: kind.group.to_string(),
                            plural: kind.plural.to_string(),
                            name: self.name().to_string(),
                        }
                        .into());
                    }
                }
            }
        }
        if self.dry_run() {
            return Ok(json_response(200, &current));
        }
        let deleted = self.state.store.delete(kind, self.ns(), self.name())?;
        if *kind == NAMESPACES {
            // The namespace controller's work, done at once.
            for k in KINDS.iter().filter(|k| k.namespaced && !k.is_review()) {
                let (items, _) = self.state.store.list(k, Some(self.name()));
                for item in items {
                    if let Some(n) = item.pointer("/metadata/name").and_then(Value::as_str) {
                        // Already gone is fine.
                        let _ = self.state.store.delete(k, self.name(), n);
                    }
                }
            }
        }
        Ok(json_response(
            200,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {
                    "name": self.name(),
                    "group": kind.group,
                    "kind": kind.plural,
                    "uid": deleted.pointer("/metadata/uid").cloned().unwrap_or(Value::Null),
                },
            }),
        ))
    }

    fn delete_collection(&self) -> Result<Response, ApiError> {
        let filter = filter_of(self.query, None)?;
        let (items, _) = self
            .state
            .store
            .list(self.kind(), self.target.namespace.as_deref());
        let mut deleted = Vec::new();
        for item in items.into_iter().filter(|o| filter.matches(o)) {
            let ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("");
            let name = item
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or("");
            if self.dry_run() {
                deleted.push(item.clone());
                continue;
            }
            match self.state.store.delete(self.kind(), ns, name) {
                Ok(obj) => deleted.push(obj),
                Err(StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(json_response(
            200,
            &json!({
                "kind": self.kind().list_kind(),
                "apiVersion": self.kind().api_version(),
                "metadata": {"resourceVersion": self.state.store.revision().to_string()},
                "items": deleted,
            }),
        ))
    }

    /// A SelfSubjectAccessReview, answered from the access policy.
    fn review(&self, mut body: Value) -> Value {
        let attrs = body
            .pointer("/spec/resourceAttributes")
            .cloned()
            .unwrap_or(json!({}));
        let field = |f: &str| {
            attrs
                .get(f)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let decision = self.state.access.decide(&AccessRequest {
            verb: field("verb").unwrap_or_default(),
            group: field("group").unwrap_or_default(),
            resource: field("resource").unwrap_or_default(),
            subresource: field("subresource"),
            namespace: field("namespace"),
            name: field("name"),
        });
        if let Some(map) = body.as_object_mut() {
            map.insert("apiVersion".into(), json!("authorization.k8s.io/v1"));
            map.insert("kind".into(), json!("SelfSubjectAccessReview"));
            map.entry("metadata").or_insert(json!({}));
            // RBAC gives a reason when it allows and none when nothing
            // allows (kubectl then prints a bare "no").
            let mut status = json!({"allowed": decision.allowed});
            if decision.allowed {
                status["reason"] = json!(decision.reason);
            }
            map.insert("status".into(), status);
        }
        body
    }

    fn watch(&self) -> Result<Response, ApiError> {
        let kind = *self.kind();
        let filter = filter_of(self.query, self.target.namespace.clone())?;
        let bookmarks = self.query.flag("allowWatchBookmarks");
        let send_initial = self.query.flag("sendInitialEvents");
        let timeout = self
            .query
            .get("timeoutSeconds")
            .and_then(|t| t.parse::<u64>().ok())
            .filter(|t| *t > 0)
            .map(Duration::from_secs);
        let requested = self.query.get("resourceVersion").unwrap_or("");
        let store = &self.state.store;

        let mut first_lines: Vec<Value> = Vec::new();
        let mut visible: HashSet<(String, String)> = HashSet::new();
        let subscription = if requested.is_empty() || requested == "0" || send_initial {
            // Start with the current state as synthetic ADDED events, then
            // everything after the revision it was read at.
            let (items, revision) = store.list(&kind, self.target.namespace.as_deref());
            for obj in items.into_iter().filter(|o| filter.matches(o)) {
                visible.insert(object_key(&obj));
                first_lines.push(json!({"type": "ADDED", "object": obj}));
            }
            if send_initial {
                first_lines.push(bookmark(
                    &kind,
                    revision,
                    json!({"k8s.io/initial-events-end": "true"}),
                ));
            }
            store.watch_from(&kind, revision).map(|s| (s, revision))
        } else {
            let rv: u64 = requested
                .parse()
                .map_err(|_| bad_request(format!("invalid resourceVersion {requested:?}")))?;
            let (items, _) = store.list(&kind, self.target.namespace.as_deref());
            visible.extend(items.iter().filter(|o| filter.matches(o)).map(object_key));
            store.watch_from(&kind, rv).map(|s| (s, rv))
        };
        let (backlog, receiver, start_rv) = match subscription {
            Ok(((backlog, receiver), rv)) => (backlog, Some(receiver), rv),
            Err(e @ StoreError::Gone { .. }) => {
                // The real API server answers 200 and an ERROR event.
                first_lines.push(json!({"type": "ERROR", "object": e.status_body()}));
                (Vec::new(), None, 0)
            }
            Err(e) => return Err(e.into()),
        };

        let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(256);
        let table = self
            .as_table
            .then(|| IncludeObject::from_query(self.query.get("includeObject")));
        if let Some(include) = table {
            for line in &mut first_lines {
                as_table_event(&kind, line, include);
            }
        }
        let watch = WatchTask {
            kind,
            table,
            filter,
            visible,
            bookmarks,
            bookmark_interval: self.state.bookmark_interval,
            timeout,
            last_rv: start_rv,
            lag: self.state.lag.for_watch(kind.plural).map(|j| j.queue()),
            tx,
        };
        let mut closer = self.state.watch_closer.subscribe();
        if *closer.borrow() != self.closes_seen {
            closer.mark_changed();
        }
        tokio::spawn(watch.run(first_lines, backlog, receiver, closer));
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CACHE_CONTROL, "no-cache, private")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
    }
}

/// As the real API server does on create: status is not the client's to
/// set (it is written through `/status`); a Pod starts `Pending` and a
/// Namespace `Active`.
fn reset_status_on_create(kind: &Kind, body: &mut Value) {
    let Some(map) = body.as_object_mut() else {
        return;
    };
    if *kind == NAMESPACES {
        map.insert("status".into(), json!({"phase": "Active"}));
    } else if *kind == PODS {
        map.insert(
            "status".into(),
            json!({"phase": "Pending", "qosClass": "BestEffort"}),
        );
    } else if kind.subresources.contains(&"status") {
        map.remove("status");
    }
}

/// The API server's defaulting for the fields kubectl and the controller
/// read (`kubectl describe` shows the strategy; rollouts need the limits).
fn apply_defaults(kind: &Kind, body: &mut Value) {
    if *kind != DEPLOYMENTS && *kind != REPLICASETS {
        return;
    }
    let Some(spec) = body.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    spec.entry("replicas").or_insert(json!(1));
    if *kind == DEPLOYMENTS {
        spec.entry("revisionHistoryLimit").or_insert(json!(10));
        spec.entry("progressDeadlineSeconds").or_insert(json!(600));
        let strategy = spec
            .entry("strategy")
            .or_insert(json!({"type": "RollingUpdate"}));
        if let Some(strategy) = strategy.as_object_mut() {
            let t = strategy
                .entry("type")
                .or_insert(json!("RollingUpdate"))
                .clone();
            if t == "RollingUpdate" {
                let ru = strategy.entry("rollingUpdate").or_insert(json!({}));
                if let Some(ru) = ru.as_object_mut() {
                    ru.entry("maxSurge").or_insert(json!("25%"));
                    ru.entry("maxUnavailable").or_insert(json!("25%"));
                }
            }
        }
    }
}

use scale::{scale_of, set_replicas};

#[cfg(test)]
mod tests;

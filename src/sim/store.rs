//! The simulated cluster's object store: what etcd plus the API server's
//! storage layer do for the kinds the watchdog uses. Objects are kept as JSON
//! exactly as clients send them; every write takes the next resourceVersion
//! from one cluster-wide counter, and every write is an event for watchers.
//! A kind may be a view of another kind's objects (`events.k8s.io/v1`
//! Events are stored as `core/v1` Events, see `sim::events`): every method
//! takes the kind of the API asked and converts. It must never hand out an
//! object without `metadata.resourceVersion`, and never lose an event
//! between a list and a watch started from its version.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc, watch};

use super::events;

/// One kind of resource the simulated API server serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    /// API group, "" for the core group.
    pub group: &'static str,
    pub version: &'static str,
    /// Lower-case plural used in URLs.
    pub plural: &'static str,
    /// CamelCase kind.
    pub kind: &'static str,
    pub singular: &'static str,
    pub namespaced: bool,
    /// Short names kubectl can use (`deploy`, `rs`, `po`, `cm`, `ns`, `ev`).
    pub short_names: &'static [&'static str],
    /// Verbs advertised in discovery.
    pub verbs: &'static [&'static str],
    /// Subresources served (`status`, `scale`).
    pub subresources: &'static [&'static str],
    /// Whether `metadata.generation` follows changes of `spec`.
    pub has_spec_generation: bool,
}

/// The longest `generateName` prefix a real API server keeps
/// (`maxGeneratedNameLength = 63 - 5`).
const MAX_GENERATED_PREFIX: usize = 58;

const RW_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl Kind {
    /// `apps/v1`, or `v1` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `DeploymentList` and so on.
    pub fn list_kind(&self) -> String {
        format!("{}List", self.kind)
    }

    /// The URL prefix of the group version: `/api/v1` or `/apis/apps/v1`.
    pub fn group_version_path(&self) -> String {
        if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        }
    }

    /// Create-only review kinds are answered, not stored.
    pub fn is_review(&self) -> bool {
        self.kind.ends_with("Review")
    }
}

pub const NAMESPACES: Kind = Kind {
    group: "",
    version: "v1",
    plural: "namespaces",
    kind: "Namespace",
    singular: "namespace",
    namespaced: false,
    short_names: &["ns"],
    verbs: &[
        "create", "delete", "get", "list", "patch", "update", "watch",
    ],
    subresources: &["status"],
    has_spec_generation: false,
};
pub const PODS: Kind = Kind {
    group: "",
    version: "v1",
    plural: "pods",
    kind: "Pod",
    singular: "pod",
    namespaced: true,
    short_names: &["po"],
    verbs: RW_VERBS,
    subresources: &["status"],
    has_spec_generation: false,
};
pub const CORE_EVENTS: Kind = Kind {
    group: "",
    version: "v1",
    plural: "events",
    kind: "Event",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    verbs: RW_VERBS,
    subresources: &[],
    has_spec_generation: false,
};
pub const CONFIGMAPS: Kind = Kind {
    group: "",
    version: "v1",
    plural: "configmaps",
    kind: "ConfigMap",
    singular: "configmap",
    namespaced: true,
    short_names: &["cm"],
    verbs: RW_VERBS,
    subresources: &[],
    has_spec_generation: false,
};
pub const SECRETS: Kind = Kind {
    group: "",
    version: "v1",
    plural: "secrets",
    kind: "Secret",
    singular: "secret",
    namespaced: true,
    short_names: &[],
    verbs: RW_VERBS,
    subresources: &[],
    has_spec_generation: false,
};
pub const DEPLOYMENTS: Kind = Kind {
    group: "apps",
    version: "v1",
    plural: "deployments",
    kind: "Deployment",
    singular: "deployment",
    namespaced: true,
    short_names: &["deploy"],
    verbs: RW_VERBS,
    subresources: &["status", "scale"],
    has_spec_generation: true,
};
pub const REPLICASETS: Kind = Kind {
    group: "apps",
    version: "v1",
    plural: "replicasets",
    kind: "ReplicaSet",
    singular: "replicaset",
    namespaced: true,
    short_names: &["rs"],
    verbs: RW_VERBS,
    subresources: &["status", "scale"],
    has_spec_generation: true,
};
pub const EVENTS_V1: Kind = Kind {
    group: "events.k8s.io",
    version: "v1",
    plural: "events",
    kind: "Event",
    singular: "event",
    namespaced: true,
    short_names: &["ev"],
    verbs: RW_VERBS,
    subresources: &[],
    has_spec_generation: false,
};
pub const LEASES: Kind = Kind {
    group: "coordination.k8s.io",
    version: "v1",
    plural: "leases",
    kind: "Lease",
    singular: "lease",
    namespaced: true,
    short_names: &[],
    verbs: RW_VERBS,
    subresources: &[],
    has_spec_generation: false,
};
pub const SELF_SUBJECT_ACCESS_REVIEWS: Kind = Kind {
    group: "authorization.k8s.io",
    version: "v1",
    plural: "selfsubjectaccessreviews",
    kind: "SelfSubjectAccessReview",
    singular: "selfsubjectaccessreview",
    namespaced: false,
    short_names: &[],
    verbs: &["create"],
    subresources: &[],
    has_spec_generation: false,
};

/// Every kind the simulated API server serves, in discovery order.
pub const KINDS: &[Kind] = &[
    NAMESPACES,
    PODS,
    CORE_EVENTS,
    CONFIGMAPS,
    SECRETS,
    DEPLOYMENTS,
    REPLICASETS,
    EVENTS_V1,
    LEASES,
    SELF_SUBJECT_ACCESS_REVIEWS,
];

/// Looks a kind up by group, version and plural as they appear in a URL.
pub fn kind_for(group: &str, version: &str, plural: &str) -> Option<Kind> {
    KINDS
        .iter()
        .copied()
        .find(|k| k.group == group && k.version == version && k.plural == plural)
}

/// Store errors, each of which the API layer turns into a `Status` body.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("{plural}.{group} \"{name}\" not found")]
    NotFound {
        group: String,
        plural: String,
        name: String,
    },
    #[error("{plural}.{group} \"{name}\" already exists")]
    AlreadyExists {
        group: String,
        plural: String,
        name: String,
    },
    #[error("Operation cannot be fulfilled on {plural}.{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        group: String,
        plural: String,
        name: String,
    },
    /// 422: the object is not acceptable (missing name, failed patch test...).
    #[error("{0}")]
    Invalid(String),
    /// 400: the request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// 410: the requested resourceVersion is older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone { requested: u64, oldest: u64 },
}

impl StoreError {
    /// The HTTP status code the API server answers with.
    pub fn code(&self) -> u16 {
        match self {
            StoreError::NotFound { .. } => 404,
            StoreError::AlreadyExists { .. } | StoreError::Conflict { .. } => 409,
            StoreError::Invalid(_) => 422,
            StoreError::BadRequest(_) => 400,
            StoreError::Gone { .. } => 410,
        }
    }

    /// The `reason` field of the `Status` body.
    pub fn reason(&self) -> &'static str {
        match self {
            StoreError::NotFound { .. } => "NotFound",
            StoreError::AlreadyExists { .. } => "AlreadyExists",
            StoreError::Conflict { .. } => "Conflict",
            StoreError::Invalid(_) => "Invalid",
            StoreError::BadRequest(_) => "BadRequest",
            StoreError::Gone { .. } => "Expired",
        }
    }

    /// A `meta/v1 Status` object as the real API server returns it.
    pub fn status_body(&self) -> Value {
        let details = match self {
            StoreError::NotFound {
                group,
                plural,
                name,
            }
            | StoreError::AlreadyExists {
                group,
                plural,
                name,
            }
            | StoreError::Conflict {
                group,
                plural,
                name,
            } => json!({"name": name, "group": group, "kind": plural}),
            _ => json!({}),
        };
        json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "details": details,
            "code": self.code(),
        })
    }

    fn not_found(kind: &Kind, name: &str) -> Self {
        StoreError::NotFound {
            group: kind.group.to_string(),
            plural: kind.plural.to_string(),
            name: name.to_string(),
        }
    }
}

/// What happened to an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The `type` field of a watch event.
    pub fn as_str(&self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as a watcher sees it.
#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub kind: Kind,
    pub event_type: EventType,
    /// The object after the change (for Deleted: its last state, with the
    /// deletion's resourceVersion).
    pub object: Value,
    pub resource_version: u64,
}

impl WatchEvent {
    /// This event as a watcher of `kind` sees it: converted when `kind` is
    /// a view of this event's kind, `None` when it is about another kind.
    pub fn view_as(&self, kind: &Kind) -> Option<WatchEvent> {
        if self.kind == *kind {
            return Some(self.clone());
        }
        (self.kind == storage_kind(kind)).then(|| WatchEvent {
            kind: *kind,
            event_type: self.event_type,
            object: from_storage(kind, self.object.clone()),
            resource_version: self.resource_version,
        })
    }

    pub fn namespace(&self) -> Option<&str> {
        self.object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
    }
}

/// Which part of an object a write may change, like the API server's
/// main resource versus its `/status` subresource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything but `status` (status is carried over from the stored object).
    Main,
    /// Only `status` (everything else is carried over).
    Status,
    /// The whole object: controllers inside the sim use this.
    Whole,
}

type Key = (Kind, String, String);

/// One write, as the sim's controllers see it (see [`Store::change_feed`]):
/// which object, and the controlling owner it had before or after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changed {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
    /// The object's uid (of the object deleted, for a deletion).
    pub uid: String,
    pub deleted: bool,
    /// The controlling owner's (kind, name), before and after the write.
    pub owners: Vec<(String, String)>,
}

struct Inner {
    revision: u64,
    objects: BTreeMap<Key, Value>,
    /// Objects by their controlling owner's uid, so a controller finds
    /// what it owns without scanning every object of a kind.
    owned: HashMap<String, BTreeSet<Key>>,
    /// Where writes are announced to the controllers, once one asked.
    feed: Option<mpsc::UnboundedSender<Changed>>,
    history: VecDeque<WatchEvent>,
    /// The oldest resourceVersion a watch may still start from.
    oldest: u64,
    history_limit: usize,
}

/// The object store. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
    events: broadcast::Sender<WatchEvent>,
    changed: Arc<watch::Sender<u64>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(10_000)
    }
}

impl Store {
    /// A store that keeps `history_limit` events for watches that resume
    /// from an older resourceVersion.
    pub fn new(history_limit: usize) -> Self {
        let (events, _) = broadcast::channel(16_384);
        let (changed, _) = watch::channel(1);
        Store {
            inner: Arc::new(Mutex::new(Inner {
                revision: 1,
                objects: BTreeMap::new(),
                owned: HashMap::new(),
                feed: None,
                history: VecDeque::new(),
                oldest: 1,
                history_limit: history_limit.max(1),
            })),
            events,
            changed: Arc::new(changed),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every write
        // is applied whole or not at all), so poisoning is not fatal here.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current resourceVersion of the whole store (what a list returns).
    pub fn revision(&self) -> u64 {
        self.lock().revision
    }

    /// A receiver that wakes whenever anything in the store changes; the
    /// sim's controllers reconcile on it.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn get(&self, kind: &Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        self.lock()
            .objects
            .get(&key(kind, namespace, name))
            .cloned()
            .map(|o| from_storage(kind, o))
            .ok_or_else(|| StoreError::not_found(kind, name))
    }

    /// All objects of a kind, in one namespace or (None) in all, sorted by
    /// namespace and name, with the store's revision at that moment.
    pub fn list(&self, kind: &Kind, namespace: Option<&str>) -> (Vec<Value>, u64) {
        let inner = self.lock();
        let stored = storage_kind(kind);
        // Keys sort by kind, then namespace: read only the range asked.
        let from = (
            stored,
            namespace
                .filter(|_| kind.namespaced)
                .unwrap_or("")
                .to_string(),
            String::new(),
        );
        let items = inner
            .objects
            .range(from..)
            .take_while(|((k, ns, _), _)| {
                *k == stored && (!kind.namespaced || namespace.is_none_or(|want| ns == want))
            })
            .map(|(_, v)| from_storage(kind, v.clone()))
            .collect();
        (items, inner.revision)
    }

    /// The objects of `kind` in `namespace` whose controlling owner has
    /// `owner_uid`, sorted by name.
    pub fn list_owned(&self, kind: &Kind, namespace: &str, owner_uid: &str) -> Vec<Value> {
        let inner = self.lock();
        let stored = storage_kind(kind);
        let Some(keys) = inner.owned.get(owner_uid) else {
            return Vec::new();
        };
        keys.iter()
            .filter(|(k, ns, _)| *k == stored && ns == namespace)
            .filter_map(|k| inner.objects.get(k))
            .map(|v| from_storage(kind, v.clone()))
            .collect()
    }

    /// Every later write, announced once, for the sim's controllers (one
    /// receiver: a second call replaces the first). Nothing is queued
    /// before the first call.
    pub fn change_feed(&self) -> mpsc::UnboundedReceiver<Changed> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().feed = Some(tx);
        rx
    }

    /// Creates an object. Fills in name from `metadata.generateName`, uid,
    /// creationTimestamp, generation and resourceVersion.
    pub fn create(&self, kind: &Kind, namespace: &str, obj: Value) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let mut obj = to_storage(kind, obj);
        let meta = metadata_mut(&mut obj)?;
        let name = match meta.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_string(),
            _ => match meta.get("generateName").and_then(Value::as_str) {
                Some(prefix) if !prefix.is_empty() => loop {
                    // As the API server's names.go: the prefix is cut to
                    // 58 characters (63 - 5) before the random suffix, so
                    // long Deployment names give pods as on a real cluster.
                    let prefix: String = prefix.chars().take(MAX_GENERATED_PREFIX).collect();
                    let candidate = format!("{prefix}{}", random_suffix(5));
                    if !inner.objects.contains_key(&key(kind, namespace, &candidate)) {
                        break candidate;
                    }
                },
                _ => {
                    return Err(StoreError::Invalid(format!(
                        "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                        kind.kind
                    )))
                }
            },
        };
        validate_name(kind, &name)?;
        let k = key(kind, namespace, &name);
        if inner.objects.contains_key(&k) {
            return Err(StoreError::AlreadyExists {
                group: kind.group.to_string(),
                plural: kind.plural.to_string(),
                name,
            });
        }
        if kind.namespaced
            && kind != &NAMESPACES
            && !inner.objects.contains_key(&key(&NAMESPACES, "", namespace))
        {
            return Err(StoreError::NotFound {
                group: String::new(),
                plural: "namespaces".to_string(),
                name: namespace.to_string(),
            });
        }
        meta.insert("name".into(), Value::String(name));
        if kind.namespaced {
            meta.insert("namespace".into(), Value::String(namespace.to_string()));
        } else {
            meta.remove("namespace");
        }
        meta.insert("uid".into(), Value::String(random_uid()));
        meta.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
        if kind.has_spec_generation {
            meta.insert("generation".into(), json!(1));
        }
        let stored = storage_kind(kind);
        set_type_meta(&stored, &mut obj);
        let obj = inner.commit(k, Some(obj), &stored, EventType::Added);
        self.publish(&inner, &stored, EventType::Added, &obj);
        Ok(from_storage(kind, obj))
    }

    /// Replaces an object (PUT). When `obj` carries a resourceVersion it
    /// must equal the stored one, else 409 Conflict; without one the write
    /// is unconditional, as in the real API server.
    pub fn replace(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        obj: Value,
        part: Part,
    ) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let mut obj = to_storage(kind, obj);
        let stored = storage_kind(kind);
        let k = key(kind, namespace, name);
        let current = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| StoreError::not_found(kind, name))?;
        let sent_rv = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(rv) = sent_rv {
            if Some(rv.as_str())
                != current
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
            {
                return Err(StoreError::Conflict {
                    group: kind.group.to_string(),
                    plural: kind.plural.to_string(),
                    name: name.to_string(),
                });
            }
        }
        if let Some(sent_name) = obj.pointer("/metadata/name").and_then(Value::as_str) {
            if sent_name != name {
                return Err(StoreError::BadRequest(format!(
                    "the name of the object ({sent_name}) does not match the name on the URL ({name})"
                )));
            }
        }
        metadata_mut(&mut obj)?;
        let merged = merge_part(&current, obj, part);
        let merged = finish_update(&stored, &current, merged);
        if merged == current {
            // A no-op write keeps its resourceVersion, as the API server does.
            return Ok(from_storage(kind, current));
        }
        let obj = inner.commit(k, Some(merged), &stored, EventType::Modified);
        self.publish(&inner, &stored, EventType::Modified, &obj);
        Ok(from_storage(kind, obj))
    }

    /// Read-modify-write under the store's lock: `change` sees the current
    /// object and edits it. Patches and the sim's controllers use this. If
    /// `expected_rv` is given it must match, else 409 Conflict.
    pub fn update_with<F>(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        part: Part,
        change: F,
    ) -> Result<Value, StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        self.change_with(kind, namespace, name, part, change, true)
    }

    /// `dryRun=All`, as the API server does it: the same checks as
    /// [`Store::update_with`] (resourceVersion precondition, immutable
    /// name, the part written), and the would-be object as the answer, with
    /// the generation it would get; nothing stored, the resourceVersion
    /// unchanged, no watch event.
    pub fn dry_run_update_with<F>(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        part: Part,
        change: F,
    ) -> Result<Value, StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        self.change_with(kind, namespace, name, part, change, false)
    }

    fn change_with<F>(
        &self,
        kind: &Kind,
        namespace: &str,
        name: &str,
        part: Part,
        change: F,
        persist: bool,
    ) -> Result<Value, StoreError>
    where
        F: FnOnce(&mut Value) -> Result<(), StoreError>,
    {
        let mut inner = self.lock();
        let k = key(kind, namespace, name);
        let current = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| StoreError::not_found(kind, name))?;
        let stored = storage_kind(kind);
        // The change sees the object as `kind`'s API shows it.
        let mut edited = from_storage(kind, current.clone());
        change(&mut edited)?;
        let mut edited = to_storage(kind, edited);
        let current_rv = current
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        let edited_rv = edited
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str);
        if edited_rv.is_some_and(|rv| !rv.is_empty()) && edited_rv != current_rv {
            return Err(StoreError::Conflict {
                group: kind.group.to_string(),
                plural: kind.plural.to_string(),
                name: name.to_string(),
            });
        }
        metadata_mut(&mut edited)?;
        if edited.pointer("/metadata/name").and_then(Value::as_str) != Some(name) {
            return Err(StoreError::Invalid(format!(
                "{} \"{name}\" is invalid: metadata.name: Invalid value: field is immutable",
                kind.kind
            )));
        }
        let merged = merge_part(&current, edited, part);
        let merged = finish_update(&stored, &current, merged);
        if merged == current {
            return Ok(from_storage(kind, current));
        }
        if !persist {
            return Ok(from_storage(kind, merged));
        }
        let obj = inner.commit(k, Some(merged), &stored, EventType::Modified);
        self.publish(&inner, &stored, EventType::Modified, &obj);
        Ok(from_storage(kind, obj))
    }

    pub fn delete(&self, kind: &Kind, namespace: &str, name: &str) -> Result<Value, StoreError> {
        let mut inner = self.lock();
        let k = key(kind, namespace, name);
        let mut obj = inner
            .objects
            .get(&k)
            .cloned()
            .ok_or_else(|| StoreError::not_found(kind, name))?;
        let rv = inner.revision + 1;
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
        let stored = storage_kind(kind);
        inner.commit(k, None, &stored, EventType::Deleted);
        // commit() removed the object and stamped the event; publish the
        // last state with the deletion's resourceVersion.
        if let Some(last) = inner.history.back_mut() {
            last.object = obj.clone();
        }
        self.publish(&inner, &stored, EventType::Deleted, &obj);
        Ok(from_storage(kind, obj))
    }

    /// Events after `resource_version` (exclusive) for a kind, plus a
    /// receiver for everything that follows (of every kind, as stored: see
    /// [`WatchEvent::view_as`]), with no gap between the two.
    /// 410 Gone when the history no longer reaches back that far.
    pub fn watch_from(
        &self,
        kind: &Kind,
        resource_version: u64,
    ) -> Result<(Vec<WatchEvent>, broadcast::Receiver<WatchEvent>), StoreError> {
        let inner = self.lock();
        if resource_version + 1 < inner.oldest {
            return Err(StoreError::Gone {
                requested: resource_version,
                oldest: inner.oldest,
            });
        }
        let backlog = inner
            .history
            .iter()
            .filter(|e| e.resource_version > resource_version)
            .filter_map(|e| e.view_as(kind))
            .collect();
        // Subscribing while holding the lock means no event can fall between
        // the backlog and the receiver.
        Ok((backlog, self.events.subscribe()))
    }

    /// Forgets the watch history, so that a watch from any resourceVersion
    /// older than now gets 410 Gone (what etcd compaction does). Tests use
    /// it to force clients through a relist.
    pub fn compact(&self) {
        let mut inner = self.lock();
        inner.history.clear();
        inner.oldest = inner.revision + 1;
    }

    fn publish(&self, inner: &Inner, kind: &Kind, event_type: EventType, obj: &Value) {
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(WatchEvent {
            kind: *kind,
            event_type,
            object: obj.clone(),
            resource_version: inner.revision,
        });
        self.changed.send_replace(inner.revision);
    }
}

impl Inner {
    /// Stamps the next resourceVersion, stores (or removes) the object and
    /// records the event in the history.
    fn commit(&mut self, k: Key, obj: Option<Value>, kind: &Kind, event_type: EventType) -> Value {
        self.revision += 1;
        let rv = self.revision;
        let before = self.objects.get(&k).and_then(controller_owner_of);
        let stored = match obj {
            Some(mut obj) => {
                if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
                }
                self.objects.insert(k.clone(), obj.clone());
                obj
            }
            None => self.objects.remove(&k).unwrap_or(Value::Null),
        };
        let deleted = event_type == EventType::Deleted;
        let after = if deleted {
            None
        } else {
            controller_owner_of(&stored)
        };
        if before != after {
            if let Some((_, _, uid)) = &before {
                if let Some(keys) = self.owned.get_mut(uid) {
                    keys.remove(&k);
                    if keys.is_empty() {
                        self.owned.remove(uid);
                    }
                }
            }
            if let Some((_, _, uid)) = &after {
                self.owned.entry(uid.clone()).or_default().insert(k.clone());
            }
        }
        if let Some(feed) = &self.feed {
            let mut owners: Vec<(String, String)> = Vec::new();
            for (kind, name, _) in before.into_iter().chain(after) {
                if !owners.iter().any(|(k, n)| *k == kind && *n == name) {
                    owners.push((kind, name));
                }
            }
            let change = Changed {
                kind: k.0,
                namespace: k.1.clone(),
                name: k.2.clone(),
                uid: stored
                    .pointer("/metadata/uid")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                deleted,
                owners,
            };
            if feed.send(change).is_err() {
                // The controllers stopped: stop announcing.
                self.feed = None;
            }
        }
        self.history.push_back(WatchEvent {
            kind: *kind,
            event_type,
            object: stored.clone(),
            resource_version: rv,
        });
        while self.history.len() > self.history_limit {
            if let Some(dropped) = self.history.pop_front() {
                self.oldest = dropped.resource_version + 1;
            }
        }
        stored
    }
}

/// The controlling owner's (kind, name, uid) of a stored object.
fn controller_owner_of(obj: &Value) -> Option<(String, String, String)> {
    let r = obj
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?;
    let field = |f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    let uid = field("uid");
    (!uid.is_empty()).then(|| (field("kind"), field("name"), uid))
}

/// Where an object of `kind` (or of the kind it is a view of) is kept.
fn key(kind: &Kind, namespace: &str, name: &str) -> Key {
    let ns = if kind.namespaced { namespace } else { "" };
    (storage_kind(kind), ns.to_string(), name.to_string())
}

fn metadata_mut(obj: &mut Value) -> Result<&mut serde_json::Map<String, Value>, StoreError> {
    let map = obj
        .as_object_mut()
        .ok_or_else(|| StoreError::BadRequest("the object must be a JSON object".into()))?;
    let meta = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if meta.is_null() {
        *meta = Value::Object(Default::default());
    }
    meta.as_object_mut()
        .ok_or_else(|| StoreError::BadRequest("metadata must be a JSON object".into()))
}

fn set_type_meta(kind: &Kind, obj: &mut Value) {
    if let Some(map) = obj.as_object_mut() {
        map.insert("apiVersion".into(), Value::String(kind.api_version()));
        map.insert("kind".into(), Value::String(kind.kind.to_string()));
    }
}

/// Keeps the fields a write to `part` may not change from `current`.
fn merge_part(current: &Value, mut sent: Value, part: Part) -> Value {
    let keep_server_meta = |sent: &mut Value| {
        for field in [
            "uid",
            "creationTimestamp",
            "namespace",
            "generation",
            "name",
        ] {
            if let Some(v) = current.pointer(&format!("/metadata/{field}")) {
                if let Some(meta) = sent.get_mut("metadata").and_then(Value::as_object_mut) {
                    meta.insert(field.into(), v.clone());
                }
            }
        }
    };
    match part {
        Part::Whole => {
            keep_server_meta(&mut sent);
            sent
        }
        Part::Main => {
            keep_server_meta(&mut sent);
            if let Some(map) = sent.as_object_mut() {
                match current.get("status") {
                    Some(status) => {
                        map.insert("status".into(), status.clone());
                    }
                    None => {
                        map.remove("status");
                    }
                }
            }
            sent
        }
        Part::Status => {
            let mut out = current.clone();
            if let (Some(map), Some(status)) = (out.as_object_mut(), sent.get("status")) {
                map.insert("status".into(), status.clone());
            }
            out
        }
    }
}

/// Type meta and generation after an update: generation rises when the
/// spec changed, as the API server does for kinds with a spec.
fn finish_update(kind: &Kind, current: &Value, mut merged: Value) -> Value {
    set_type_meta(kind, &mut merged);
    if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
        // The stored resourceVersion is compared by callers; strip what the
        // client sent so a no-op write compares equal.
        if let Some(rv) = current.pointer("/metadata/resourceVersion") {
            meta.insert("resourceVersion".into(), rv.clone());
        }
    }
    if kind.has_spec_generation && current.get("spec") != merged.get("spec") {
        let generation = current
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            + 1;
        if let Some(meta) = merged.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("generation".into(), json!(generation));
        }
    }
    merged
}

/// DNS-1123 subdomain names, as the API server requires for these kinds.
fn validate_name(kind: &Kind, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "{} \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
            kind.kind
        )))
    }
}

/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no
/// look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

pub fn random_suffix(len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rng();
    (0..len)
        .map(|_| SUFFIX_ALPHABET[rng.random_range(0..SUFFIX_ALPHABET.len())] as char)
        .collect()
}

fn random_uid() -> String {
    use rand::Rng;
    let b: [u8; 16] = rand::rng().random();
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

/// Now, as the API server writes timestamps (seconds, UTC).
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .round(jiff::Unit::Second)
        .unwrap_or_else(|_| jiff::Timestamp::now())
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// The kind objects of `kind` are stored as: Events of both APIs as
/// `core/v1` Events ([`events`]).
fn storage_kind(kind: &Kind) -> Kind {
    if *kind == EVENTS_V1 {
        CORE_EVENTS
    } else {
        *kind
    }
}

/// `obj`, written through `kind`'s API, as it is stored.
fn to_storage(kind: &Kind, obj: Value) -> Value {
    if *kind == EVENTS_V1 {
        events::to_core(obj)
    } else {
        obj
    }
}

/// A stored object as `kind`'s API shows it.
fn from_storage(kind: &Kind, obj: Value) -> Value {
    if *kind == EVENTS_V1 {
        events::to_v1(obj)
    } else {
        obj
    }
}

#[cfg(test)]
mod tests;

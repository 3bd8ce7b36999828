//! The start-up self-check: before `run` starts watching, ask the API
//! server (SelfSubjectAccessReview) whether the watchdog's identity holds
//! every permission the loaded config needs, and whether Prometheus
//! answers. A missing permission stops the start with the RBAC rules to
//! add; a silent Prometheus is only a warning, since it may come up later.
//! It must never write anything to the cluster but the reviews.
//!
//! [`required`] is derived from what the code does, not from a wish list:
//! the watch caches (`cache`), the pipeline's reads and patches
//! (`rollback`), known-good records (`revision`), backups (`backup`),
//! Events (kube's `Recorder`: events.k8s.io create, and patch for a
//! repeated Event) and the Lease. `deploy/rbac.yaml` grants exactly this
//! for the shipped config, and a test compares the two.
//!
//! Dry run does not shrink the list: known-good records are patched in
//! dry run too, and `dry_run` can be lifted per target or by an
//! environment variable without touching RBAC, so a dry-run install that
//! passes the check keeps working when it starts acting.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};
use kube::Client;

use crate::config::{Config, PrometheusSettings};
use crate::observe::cache::Scope;
use crate::signals::prometheus::PrometheusSource;

/// How long one SelfSubjectAccessReview may take.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// How long Prometheus may take to answer the start-up query.
pub const PROMETHEUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Reviews in flight at once: a config with many namespaces asks many.
const CONCURRENT_REVIEWS: usize = 8;
/// The order `kubectl create role` writes verbs in, for the rules shown.
const VERB_ORDER: [&str; 8] = [
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// One thing the watchdog's identity must be allowed to do.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// Where: a namespace, or None for every namespace (a ClusterRole).
    pub namespace: Option<String>,
    /// The API group, `""` for the core group.
    pub group: String,
    /// The resource, plural: `deployments`.
    pub resource: String,
    pub verb: String,
}

impl Permission {
    pub fn new(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Self {
        Permission {
            namespace: namespace.map(str::to_owned),
            group: group.to_owned(),
            resource: resource.to_owned(),
            verb: verb.to_owned(),
        }
    }

    /// `deployments.apps`, `pods`: how kubectl names a resource.
    pub fn qualified_resource(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.verb, self.qualified_resource())?;
        match &self.namespace {
            Some(ns) => write!(f, " in namespace {ns:?}"),
            None => write!(f, " in every namespace"),
        }
    }
}

/// A permission and why the config needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub permission: Permission,
    /// Every use, as a sentence fragment.
    pub why: Vec<String>,
}

impl Requirement {
    pub fn why(&self) -> String {
        self.why.join("; ")
    }
}

/// Every permission `run` needs with this config, sorted (namespace,
/// group, resource, verb), each once.
pub fn required(config: &Config) -> Vec<Requirement> {
    let mut need = Needs::default();
    // The namespaces the caches watch, so the two cannot drift apart.
    let scope = Scope::from_config(config);
    let watched: Vec<Option<&str>> = match &scope {
        Scope::AllNamespaces => vec![None],
        Scope::Namespaces(set) => set.iter().map(|ns| Some(ns.as_str())).collect(),
    };
    for ns in watched {
        need.watch_caches(ns);
        need.rollbacks(ns);
        need.events(ns);
    }
    let own = Some(config.watchdog.namespace.as_str());
    need.backups(own);
    if config.leader_election.enabled {
        need.lease(own, &config.leader_election.lease_name);
    }
    need.into_requirements()
}

/// The permissions found so far, each with every use (once each, in the
/// order found).
#[derive(Default)]
struct Needs(BTreeMap<Permission, Vec<String>>);

impl Needs {
    fn add(&mut self, verbs: &[&str], group: &str, resource: &str, ns: Option<&str>, why: &str) {
        for verb in verbs {
            let whys = self
                .0
                .entry(Permission::new(verb, group, resource, ns))
                .or_default();
            if !whys.iter().any(|w| w == why) {
                whys.push(why.to_owned());
            }
        }
    }

    /// The watch caches (`observe::cache`) of a watched namespace.
    fn watch_caches(&mut self, ns: Option<&str>) {
        self.add(
            &["list", "watch"],
            "apps",
            "deployments",
            ns,
            "the watch cache of Deployments (targets and opt-in annotations)",
        );
        self.add(
            &["list", "watch"],
            "apps",
            "replicasets",
            ns,
            "the watch cache of ReplicaSets (which revision is current, and since when)",
        );
        self.add(
            &["list", "watch"],
            "",
            "pods",
            ns,
            "the watch cache of pods (crash states, per-pod health probes)",
        );
    }

    /// The pipeline's fresh reads and its patches of a Deployment, and the
    /// known-good, in-flight and blocklist records on it.
    fn rollbacks(&mut self, ns: Option<&str>) {
        self.add(
            &["get"],
            "apps",
            "deployments",
            ns,
            "read a Deployment fresh before and during a rollback (Validate, Wait, Verify, resume)",
        );
        self.add(
            &["patch"],
            "apps",
            "deployments",
            ns,
            "roll a bad revision back (JSON Patch of the pod template) and write the known-good, in-flight, blocklist and memory annotations",
        );
        self.add(
            &["list"],
            "apps",
            "replicasets",
            ns,
            "list a Deployment's ReplicaSets during a rollback",
        );
        self.add(
            &["list"],
            "",
            "pods",
            ns,
            "list the restored revision's pods while it rolls out (Wait, Verify)",
        );
    }

    /// kube's event `Recorder`: one Event per decision, on the Deployment.
    fn events(&mut self, ns: Option<&str>) {
        self.add(
            &["create"],
            "events.k8s.io",
            "events",
            ns,
            "record each decision as an Event on the Deployment",
        );
        self.add(
            &["patch"],
            "events.k8s.io",
            "events",
            ns,
            "count a repeated Event (kube's event recorder patches its series)",
        );
    }

    /// Backups, in the watchdog's own namespace.
    fn backups(&mut self, own: Option<&str>) {
        self.add(
            &["create"],
            "",
            "configmaps",
            own,
            "write the backup of a Deployment before rolling it back (watchdog.namespace)",
        );
        self.add(
            &["patch"],
            "",
            "configmaps",
            own,
            "add the incident's result to its backup",
        );
        self.add(
            &["list"],
            "",
            "configmaps",
            own,
            "find a Deployment's backups to prune the old ones",
        );
        self.add(
            &["delete"],
            "",
            "configmaps",
            own,
            "prune backups beyond backup_retention",
        );
        self.add(
            &["get", "watch"],
            "",
            "configmaps",
            own,
            "read the delivery ledger (<lease_name>-notified) and follow what the other replica delivered",
        );
        self.add(
            &["update"],
            "",
            "configmaps",
            own,
            "record each delivered notice in the delivery ledger, so no notice is sent twice",
        );
    }

    /// Leader election's Lease, in the watchdog's own namespace.
    fn lease(&mut self, own: Option<&str>, lease: &str) {
        self.add(
            &["get"],
            "coordination.k8s.io",
            "leases",
            own,
            &format!("leader election: read the Lease {lease:?}"),
        );
        self.add(
            &["create"],
            "coordination.k8s.io",
            "leases",
            own,
            &format!("leader election: create the Lease {lease:?} when it does not exist"),
        );
        self.add(
            &["update"],
            "coordination.k8s.io",
            "leases",
            own,
            &format!("leader election: acquire, renew and release the Lease {lease:?}"),
        );
    }

    fn into_requirements(self) -> Vec<Requirement> {
        self.0
            .into_iter()
            .map(|(permission, why)| Requirement { permission, why })
            .collect()
    }
}

/// The answer to one review.
#[derive(Debug, Clone)]
pub struct Check {
    pub requirement: Requirement,
    pub allowed: bool,
    /// The authorizer's reason or evaluation error, when it gave one.
    pub detail: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SelfCheckError {
    #[error("cannot create a SelfSubjectAccessReview to ask whether the watchdog may {permission}: {cause}")]
    Review {
        permission: String,
        /// The error with its causes.
        cause: String,
        #[source]
        source: kube::Error,
    },
    #[error("no answer to the SelfSubjectAccessReview for {permission} within {timeout:?}")]
    Timeout {
        permission: String,
        timeout: Duration,
    },
}

/// Asks the API server about each requirement, each within `timeout`:
/// the first alone (an unreachable server fails once, not once per
/// permission), then the rest a few at a time. The answers keep the order
/// of `requirements`.
pub async fn check_access(
    client: &Client,
    requirements: Vec<Requirement>,
    timeout: Duration,
) -> Result<Vec<Check>, SelfCheckError> {
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let mut rest = requirements.into_iter();
    let Some(first) = rest.next() else {
        return Ok(Vec::new());
    };
    let mut checks = vec![review(&api, first, timeout).await?];
    let answers: Vec<Result<Check, SelfCheckError>> = futures::stream::iter(rest)
        .map(|requirement| {
            let api = api.clone();
            async move { review(&api, requirement, timeout).await }
        })
        .buffered(CONCURRENT_REVIEWS)
        .collect()
        .await;
    for answer in answers {
        checks.push(answer?);
    }
    Ok(checks)
}

/// An error and its causes, each once: kube's own message stops at
/// "client error (Connect)", the cause says "Connection refused".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

async fn review(
    api: &Api<SelfSubjectAccessReview>,
    requirement: Requirement,
    timeout: Duration,
) -> Result<Check, SelfCheckError> {
    let p = &requirement.permission;
    let body = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                verb: Some(p.verb.clone()),
                group: Some(p.group.clone()),
                resource: Some(p.resource.clone()),
                namespace: p.namespace.clone(),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let answer =
        match tokio::time::timeout(timeout, api.create(&PostParams::default(), &body)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(source)) => {
                return Err(SelfCheckError::Review {
                    permission: p.to_string(),
                    cause: with_causes(&source),
                    source,
                })
            }
            Err(_) => {
                return Err(SelfCheckError::Timeout {
                    permission: p.to_string(),
                    timeout,
                })
            }
        };
    let status = answer.status.unwrap_or_default();
    let detail = [status.reason, status.evaluation_error]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>();
    Ok(Check {
        requirement,
        allowed: status.allowed,
        detail: (!detail.is_empty()).then(|| detail.join("; ")),
    })
}

/// The RBAC rules that grant `missing`, as YAML under a comment saying
/// which kind of role in which namespace they belong to.
pub fn rules_to_add<'a>(missing: impl IntoIterator<Item = &'a Permission>) -> String {
    /// Verbs by (group, resource): one rule each.
    type Rules<'p> = BTreeMap<(&'p str, &'p str), Vec<&'p str>>;
    let mut by_scope: BTreeMap<&Option<String>, Rules> = BTreeMap::new();
    for p in missing {
        by_scope
            .entry(&p.namespace)
            .or_default()
            .entry((p.group.as_str(), p.resource.as_str()))
            .or_default()
            .push(p.verb.as_str());
    }
    let mut out = String::new();
    for (scope, rules) in by_scope {
        let header = match scope {
            Some(ns) => format!(
                "# a Role in namespace {ns:?}, bound to the watchdog's ServiceAccount by a RoleBinding in {ns:?}"
            ),
            None => "# a ClusterRole, bound to the watchdog's ServiceAccount by a ClusterRoleBinding"
                .to_owned(),
        };
        out.push_str(&header);
        out.push_str("\nrules:\n");
        for ((group, resource), mut verbs) in rules {
            verbs.sort_by_key(|v| VERB_ORDER.iter().position(|o| o == v).unwrap_or(usize::MAX));
            verbs.dedup();
            let verbs = verbs
                .iter()
                .map(|v| format!("{v:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            out.push_str(&format!(
                "- apiGroups: [{group:?}]\n  resources: [{resource:?}]\n  verbs: [{verbs}]\n"
            ));
        }
    }
    out
}

/// What to print when reviews said no: each missing permission with why,
/// then the rules to add.
pub fn describe_missing(missing: &[&Check]) -> String {
    let n = missing.len();
    let mut out = format!(
        "error: the watchdog's identity lacks {n} permission{} that the config needs; it did not start and changed nothing:\n",
        if n == 1 { "" } else { "s" }
    );
    for c in missing {
        out.push_str(&format!(
            "  - {}: needed to {}\n",
            c.requirement.permission,
            c.requirement.why()
        ));
    }
    out.push_str(
        "Add these RBAC rules (deploy/rbac.yaml has all of them for the shipped config) and start again:\n",
    );
    for line in rules_to_add(missing.iter().map(|c| &c.requirement.permission)).lines() {
        out.push_str("  ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Whether Prometheus answers a trivial query within
/// [`PROMETHEUS_TIMEOUT`] (or `prometheus.timeout`, if shorter). The error
/// is a sentence for a warning.
pub async fn check_prometheus(settings: &PrometheusSettings) -> Result<(), String> {
    let mut settings = settings.clone();
    settings.timeout = settings.timeout.min(PROMETHEUS_TIMEOUT);
    let consequence = "signals that need it (error rate, latency, rules) stay Inconclusive until it answers; this does not stop the watchdog";
    let source = PrometheusSource::new(&settings)
        .map_err(|e| format!("cannot query Prometheus ({e}); {consequence}"))?;
    match tokio::time::timeout(settings.timeout + Duration::from_secs(1), source.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("{e}; {consequence}")),
        Err(_) => Err(format!(
            "Prometheus at {} did not answer within {:?}; {consequence}",
            source.url(),
            settings.timeout
        )),
    }
}

/// The API server the client talks to, for messages: what
/// the command line's connection options select.
pub async fn api_server() -> String {
    match tokio::time::timeout(Duration::from_secs(5), crate::k8s::client_config()).await {
        Ok(Ok(c)) => format!("the API server at {}", c.cluster_url),
        _ => "the API server (from KUBECONFIG or in-cluster)".to_owned(),
    }
}

pub fn review_failed(e: &SelfCheckError, server: &str) -> String {
    format!(
        "error: cannot check the watchdog's permissions with {server}: {e}; make sure the API server is reachable from here (in a cluster: the NetworkPolicy's egress) and that this identity may create selfsubjectaccessreviews (every authenticated user may, by default)"
    )
}

/// The start-up check said no; why was written out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

/// `run`'s start-up check. Missing permissions, or reviews that cannot be
/// made, are written to `err` and refuse the start; a silent Prometheus is
/// a warning on `err`.
pub async fn at_startup(
    config: &Config,
    client: &Client,
    err: &mut (dyn Write + Send),
) -> Result<(), Refused> {
    let (access, prometheus) = tokio::join!(
        check_access(client, required(config), REVIEW_TIMEOUT),
        check_prometheus(&config.prometheus)
    );
    if let Err(why) = &prometheus {
        let _ = writeln!(err, "warning: {why}");
    }
    let checks = match access {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "{}", review_failed(&e, &api_server().await));
            return Err(Refused);
        }
    };
    let missing: Vec<&Check> = checks.iter().filter(|c| !c.allowed).collect();
    if missing.is_empty() {
        tracing::info!(
            permissions = checks.len(),
            prometheus = prometheus.is_ok(),
            "self-check passed: every permission the config needs is granted"
        );
        return Ok(());
    }
    let _ = write!(err, "{}", describe_missing(&missing));
    Err(Refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loader;

    fn config(extra: &str) -> Config {
        let toml = format!(
            r#"
[watchdog]
namespace = "rollback-watchdog"
{extra}

[[targets]]
namespace = "shop"
name = "web"
"#
        );
        match Loader::from_toml(toml).load() {
            Ok(l) => l.config,
            Err(e) => panic!("{e}"),
        }
    }

    fn set(reqs: &[Requirement]) -> Vec<String> {
        reqs.iter().map(|r| r.permission.to_string()).collect()
    }

    #[test]
    fn a_namespaced_config_needs_namespaced_rules_only() {
        let reqs = required(&config("opt_in_namespaces = [\"team-a\"]"));
        let all = set(&reqs);
        assert!(all.contains(&"patch deployments.apps in namespace \"shop\"".to_owned()));
        assert!(all.contains(&"watch pods in namespace \"team-a\"".to_owned()));
        assert!(all.contains(&"create events.events.k8s.io in namespace \"team-a\"".to_owned()));
        assert!(all.contains(
            &"update leases.coordination.k8s.io in namespace \"rollback-watchdog\"".to_owned()
        ));
        assert!(reqs.iter().all(|r| r.permission.namespace.is_some()));
        // Only what the code uses: no get on ReplicaSets or pods, nothing
        // on secrets; configmaps in the watchdog's namespace only (backups
        // and the delivery ledger).
        assert!(!all.contains(&"get pods in namespace \"shop\"".to_owned()));
        assert!(!all.contains(&"get replicasets.apps in namespace \"shop\"".to_owned()));
        assert!(!all.iter().any(|p| p.contains("secrets")));
        assert!(all.contains(&"get configmaps in namespace \"rollback-watchdog\"".to_owned()));
        assert!(!all
            .iter()
            .any(|p| p.contains("configmaps in namespace \"shop\"")));
        // Each permission once, with every reason.
        let list_pods = reqs
            .iter()
            .find(|r| r.permission == Permission::new("list", "", "pods", Some("shop")))
            .map(Requirement::why)
            .unwrap_or_default();
        assert!(
            list_pods.contains("watch cache") && list_pods.contains("Wait"),
            "{list_pods}"
        );
    }

    #[test]
    fn opt_in_everywhere_needs_a_cluster_role_and_no_lease_without_election() {
        let reqs = required(&config(
            "opt_in_namespaces = [\"*\"]\n\n[leader_election]\nenabled = false",
        ));
        let cluster: Vec<_> = reqs
            .iter()
            .filter(|r| r.permission.namespace.is_none())
            .map(|r| r.permission.to_string())
            .collect();
        assert!(cluster.contains(&"watch deployments.apps in every namespace".to_owned()));
        assert!(cluster.contains(&"patch events.events.k8s.io in every namespace".to_owned()));
        assert!(!reqs
            .iter()
            .any(|r| r.permission.namespace.as_deref() == Some("shop")));
        assert!(!reqs.iter().any(|r| r.permission.resource == "leases"));
        assert!(reqs.iter().any(|r| r.permission
            == Permission::new("delete", "", "configmaps", Some("rollback-watchdog"))));
    }

    #[test]
    fn the_rules_to_add_are_yaml_per_role() {
        let text = rules_to_add(&[
            Permission::new("patch", "apps", "deployments", Some("shop")),
            Permission::new("get", "apps", "deployments", Some("shop")),
            Permission::new("list", "", "pods", None),
        ]);
        assert_eq!(
            text,
            "# a ClusterRole, bound to the watchdog's ServiceAccount by a ClusterRoleBinding\n\
             rules:\n\
             - apiGroups: [\"\"]\n  resources: [\"pods\"]\n  verbs: [\"list\"]\n\
             # a Role in namespace \"shop\", bound to the watchdog's ServiceAccount by a RoleBinding in \"shop\"\n\
             rules:\n\
             - apiGroups: [\"apps\"]\n  resources: [\"deployments\"]\n  verbs: [\"get\", \"patch\"]\n"
        );
    }
}

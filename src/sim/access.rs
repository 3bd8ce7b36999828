//! The simulated cluster's authorizer: what RBAC would decide for the one
//! user the sim knows. SelfSubjectAccessReviews answer from it and every
//! resource request is checked against it, so a test that denies a verb
//! sees both the review and the real request refused. Default: allow all.
//! It must never allow a request that the review for it would deny.

use std::sync::{Arc, RwLock};

/// The user every request is made as (the kubeconfig has no credentials).
pub const SIM_USER: &str = "sim-user";

/// One rule. `"*"` matches anything; `namespace: None` matches every
/// namespace and cluster-scoped requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRule {
    pub verb: String,
    pub group: String,
    /// The resource, with its subresource as `deployments/scale` to
    /// target only that; a bare `deployments` covers its subresources.
    pub resource: String,
    pub namespace: Option<String>,
}

impl AccessRule {
    pub fn new(verb: &str, group: &str, resource: &str, namespace: Option<&str>) -> Self {
        AccessRule {
            verb: verb.to_string(),
            group: group.to_string(),
            resource: resource.to_string(),
            namespace: namespace.map(str::to_string),
        }
    }

    fn matches(&self, req: &AccessRequest) -> bool {
        let field = |rule: &str, got: &str| rule == "*" || rule == got;
        let resource_ok = match self.resource.split_once('/') {
            Some((res, sub)) => {
                field(res, &req.resource) && field(sub, req.subresource.as_deref().unwrap_or(""))
            }
            None => field(&self.resource, &req.resource),
        };
        field(&self.verb, &req.verb)
            && field(&self.group, &req.group)
            && resource_ok
            && match &self.namespace {
                None => true,
                Some(ns) => req.namespace.as_deref().is_some_and(|got| field(ns, got)),
            }
    }
}

/// What is being asked: the `resourceAttributes` of a review.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AccessRequest {
    pub verb: String,
    pub group: String,
    pub resource: String,
    pub subresource: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// The answer, with a reason as RBAC phrases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub reason: String,
}

#[derive(Debug, Default)]
struct Rules {
    deny: Vec<AccessRule>,
    /// When set, only these are allowed (like a Role bound to the user).
    allow_only: Option<Vec<AccessRule>>,
}

/// Shared, cheap to clone; tests change it while the sim runs.
#[derive(Clone, Default)]
pub struct AccessPolicy {
    rules: Arc<RwLock<Rules>>,
}

impl AccessPolicy {
    /// Allows everything.
    pub fn allow_all() -> Self {
        Self::default()
    }

    /// Denies what `rule` matches, whatever else allows it.
    pub fn deny(&self, rule: AccessRule) {
        self.write().deny.push(rule);
    }

    /// Allows only what these rules match (plus nothing else).
    pub fn allow_only(&self, rules: Vec<AccessRule>) {
        self.write().allow_only = Some(rules);
    }

    /// Back to allowing everything.
    pub fn reset(&self) {
        *self.write() = Rules::default();
    }

    pub fn decide(&self, req: &AccessRequest) -> Decision {
        let rules = self.rules.read().unwrap_or_else(|p| p.into_inner());
        if rules.deny.iter().any(|r| r.matches(req)) {
            return Decision {
                allowed: false,
                reason: "denied by the sim's access policy".into(),
            };
        }
        match &rules.allow_only {
            Some(allow) if !allow.iter().any(|r| r.matches(req)) => Decision {
                allowed: false,
                reason: "no rule of the sim's access policy allows it".into(),
            },
            Some(_) => Decision {
                allowed: true,
                reason: "RBAC: allowed by the sim's access policy".into(),
            },
            None => Decision {
                allowed: true,
                reason: "the sim allows everything not denied".into(),
            },
        }
    }

    pub fn allows(&self, req: &AccessRequest) -> bool {
        self.decide(req).allowed
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Rules> {
        self.rules.write().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(verb: &str, resource: &str, sub: Option<&str>, ns: Option<&str>) -> AccessRequest {
        AccessRequest {
            verb: verb.into(),
            group: "apps".into(),
            resource: resource.into(),
            subresource: sub.map(str::to_string),
            namespace: ns.map(str::to_string),
            name: None,
        }
    }

    #[test]
    fn deny_rules_and_allow_only_rules_decide_like_rbac() {
        let policy = AccessPolicy::allow_all();
        assert!(policy.allows(&req("patch", "deployments", None, Some("prod"))));
        policy.deny(AccessRule::new(
            "patch",
            "apps",
            "deployments",
            Some("prod"),
        ));
        assert!(!policy.allows(&req("patch", "deployments", None, Some("prod"))));
        assert!(!policy.allows(&req("patch", "deployments", Some("scale"), Some("prod"))));
        assert!(policy.allows(&req("patch", "deployments", None, Some("dev"))));
        assert!(policy.allows(&req("get", "deployments", None, Some("prod"))));
        policy.reset();
        policy.deny(AccessRule::new("update", "*", "deployments/scale", None));
        assert!(!policy.allows(&req("update", "deployments", Some("scale"), Some("x"))));
        assert!(policy.allows(&req("update", "deployments", None, Some("x"))));
        policy.reset();
        policy.allow_only(vec![AccessRule::new("get", "apps", "*", None)]);
        assert!(policy.allows(&req("get", "replicasets", None, Some("x"))));
        assert!(!policy.allows(&req("list", "replicasets", None, Some("x"))));
    }
}

//! RBAC objects (Roles, ClusterRoles and their bindings, as `kubectl
//! kustomize deploy/` renders them) turned into the sim's access rules for
//! one ServiceAccount, so a test runs the watchdog under exactly the
//! shipped RBAC and the sim answers SelfSubjectAccessReviews from it. It
//! must never grant more than RBAC would: what it cannot model
//! (`resourceNames`, aggregated ClusterRoles) is an error, not ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, Subject,
};
use serde_json::Value;

use super::access::AccessRule;

#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    #[error("{kind} {name} is not a valid {kind}: {source}")]
    Decode {
        kind: String,
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{binding} refers to {role}, which is not among the objects")]
    MissingRole { binding: String, role: String },
    #[error(
        "{role} has a rule the sim cannot enforce ({what}); it would allow more or less than RBAC"
    )]
    Unsupported { role: String, what: String },
    #[error("{binding}: subject {subject} has no namespace; the API server rejects that")]
    SubjectNamespace { binding: String, subject: String },
}

/// The RBAC objects among a list of rendered objects; others are skipped.
#[derive(Debug, Default, Clone)]
pub struct RbacObjects {
    /// By (namespace, name).
    roles: BTreeMap<(String, String), Role>,
    cluster_roles: BTreeMap<String, ClusterRole>,
    role_bindings: Vec<RoleBinding>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
}

impl RbacObjects {
    /// Picks the `rbac.authorization.k8s.io/v1` objects out of `objects`
    /// (as JSON). A namespaced object without a namespace is in `default`,
    /// as `kubectl apply` would put it.
    pub fn from_objects(objects: &[Value]) -> Result<Self, RbacError> {
        let mut out = RbacObjects::default();
        for object in objects {
            if object["apiVersion"].as_str() != Some("rbac.authorization.k8s.io/v1") {
                continue;
            }
            let kind = object["kind"].as_str().unwrap_or_default().to_owned();
            let name = object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let decode = |source| RbacError::Decode {
                kind: kind.clone(),
                name: name.clone(),
                source,
            };
            match kind.as_str() {
                "Role" => {
                    let role: Role = serde_json::from_value(object.clone()).map_err(decode)?;
                    out.roles.insert((namespace_of(&role.metadata), name), role);
                }
                "ClusterRole" => {
                    let role: ClusterRole =
                        serde_json::from_value(object.clone()).map_err(decode)?;
                    out.cluster_roles.insert(name, role);
                }
                "RoleBinding" => {
                    out.role_bindings
                        .push(serde_json::from_value(object.clone()).map_err(decode)?);
                }
                "ClusterRoleBinding" => {
                    out.cluster_role_bindings
                        .push(serde_json::from_value(object.clone()).map_err(decode)?);
                }
                _ => {}
            }
        }
        Ok(out)
    }

    /// Every rule the ServiceAccount `namespace/name` holds: a RoleBinding
    /// grants its role's rules in the binding's namespace, a
    /// ClusterRoleBinding everywhere. Each (verb, group, resource,
    /// namespace) once, sorted.
    pub fn rules_for_service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<AccessRule>, RbacError> {
        let mut out: Vec<AccessRule> = Vec::new();
        for b in &self.role_bindings {
            let ns = namespace_of(&b.metadata);
            let binding = format!(
                "RoleBinding {ns}/{}",
                b.metadata.name.as_deref().unwrap_or_default()
            );
            if !binds(&binding, b.subjects.as_deref(), namespace, name)? {
                continue;
            }
            let (role, rules) = match b.role_ref.kind.as_str() {
                "Role" => {
                    let role = format!("Role {ns}/{}", b.role_ref.name);
                    let found = self
                        .roles
                        .get(&(ns.clone(), b.role_ref.name.clone()))
                        .ok_or_else(|| RbacError::MissingRole {
                            binding: binding.clone(),
                            role: role.clone(),
                        })?;
                    (role, found.rules.clone())
                }
                _ => self.cluster_role(&binding, &b.role_ref.name)?,
            };
            expand(&role, rules.as_deref(), Some(&ns), &mut out)?;
        }
        for b in &self.cluster_role_bindings {
            let binding = format!(
                "ClusterRoleBinding {}",
                b.metadata.name.as_deref().unwrap_or_default()
            );
            if !binds(&binding, b.subjects.as_deref(), namespace, name)? {
                continue;
            }
            let (role, rules) = self.cluster_role(&binding, &b.role_ref.name)?;
            expand(&role, rules.as_deref(), None, &mut out)?;
        }
        out.sort_by(|a, b| {
            (&a.namespace, &a.group, &a.resource, &a.verb).cmp(&(
                &b.namespace,
                &b.group,
                &b.resource,
                &b.verb,
            ))
        });
        out.dedup();
        Ok(out)
    }

    fn cluster_role(
        &self,
        binding: &str,
        name: &str,
    ) -> Result<(String, Option<Vec<PolicyRule>>), RbacError> {
        let role = format!("ClusterRole {name}");
        let found = self
            .cluster_roles
            .get(name)
            .ok_or_else(|| RbacError::MissingRole {
                binding: binding.to_owned(),
                role: role.clone(),
            })?;
        if found.aggregation_rule.is_some() {
            return Err(RbacError::Unsupported {
                role,
                what: "aggregationRule".into(),
            });
        }
        Ok((role, found.rules.clone()))
    }
}

/// The rules of `objects` for the ServiceAccount `namespace/name`, ready
/// for [`super::AccessPolicy::allow_only`].
pub fn service_account_rules(
    objects: &[Value],
    namespace: &str,
    name: &str,
) -> Result<Vec<AccessRule>, RbacError> {
    RbacObjects::from_objects(objects)?.rules_for_service_account(namespace, name)
}

fn namespace_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| "default".to_owned())
}

/// Whether a subject list names the ServiceAccount, directly, as its user
/// name or through the groups every ServiceAccount is in.
fn binds(
    binding: &str,
    subjects: Option<&[Subject]>,
    namespace: &str,
    name: &str,
) -> Result<bool, RbacError> {
    for s in subjects.unwrap_or_default() {
        let hit = match s.kind.as_str() {
            "ServiceAccount" => {
                let Some(ns) = s.namespace.as_deref() else {
                    return Err(RbacError::SubjectNamespace {
                        binding: binding.to_owned(),
                        subject: format!("ServiceAccount {}", s.name),
                    });
                };
                ns == namespace && s.name == name
            }
            "User" => s.name == format!("system:serviceaccount:{namespace}:{name}"),
            "Group" => [
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ]
            .contains(&s.name),
            _ => false,
        };
        if hit {
            return Ok(true);
        }
    }
    Ok(false)
}

fn expand(
    role: &str,
    rules: Option<&[PolicyRule]>,
    namespace: Option<&str>,
    out: &mut Vec<AccessRule>,
) -> Result<(), RbacError> {
    for rule in rules.unwrap_or_default() {
        if rule.resource_names.as_ref().is_some_and(|n| !n.is_empty()) {
            return Err(RbacError::Unsupported {
                role: role.to_owned(),
                what: "resourceNames".into(),
            });
        }
        // nonResourceURLs grant no resource access; the sim serves none
        // that need a grant.
        for group in rule.api_groups.as_deref().unwrap_or_default() {
            for resource in rule.resources.as_deref().unwrap_or_default() {
                for verb in &rule.verbs {
                    out.push(AccessRule::new(verb, group, resource, namespace));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::{AccessPolicy, AccessRequest};
    use serde_json::json;

    fn objects() -> Vec<Value> {
        vec![
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "wd", "namespace": "ops"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                   "metadata": {"name": "watch", "namespace": "shop"},
                   "rules": [{"apiGroups": ["apps"], "resources": ["deployments", "replicasets"],
                              "verbs": ["list", "watch"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "watch", "namespace": "shop"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "watch"},
                   "subjects": [{"kind": "ServiceAccount", "name": "wd", "namespace": "ops"}]}),
            // Bound to someone else: grants the watchdog nothing.
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "other", "namespace": "shop"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "events"},
                   "subjects": [{"kind": "ServiceAccount", "name": "someone", "namespace": "ops"}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "events"},
                   "rules": [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}]}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                   "metadata": {"name": "events"},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "events"},
                   "subjects": [{"kind": "ServiceAccount", "name": "wd", "namespace": "ops"}]}),
        ]
    }

    fn req(verb: &str, group: &str, resource: &str, ns: Option<&str>) -> AccessRequest {
        AccessRequest {
            verb: verb.into(),
            group: group.into(),
            resource: resource.into(),
            namespace: ns.map(str::to_owned),
            ..Default::default()
        }
    }

    #[test]
    fn a_role_binding_grants_in_its_namespace_and_a_cluster_role_binding_everywhere() {
        let rules = service_account_rules(&objects(), "ops", "wd").unwrap();
        assert_eq!(
            rules,
            vec![
                AccessRule::new("create", "events.k8s.io", "events", None),
                AccessRule::new("list", "apps", "deployments", Some("shop")),
                AccessRule::new("watch", "apps", "deployments", Some("shop")),
                AccessRule::new("list", "apps", "replicasets", Some("shop")),
                AccessRule::new("watch", "apps", "replicasets", Some("shop")),
            ]
        );
        let policy = AccessPolicy::allow_all();
        policy.allow_only(rules);
        assert!(policy.allows(&req("list", "apps", "deployments", Some("shop"))));
        assert!(!policy.allows(&req("list", "apps", "deployments", Some("dev"))));
        assert!(!policy.allows(&req("list", "apps", "deployments", None)));
        assert!(!policy.allows(&req("patch", "apps", "deployments", Some("shop"))));
        assert!(policy.allows(&req("create", "events.k8s.io", "events", Some("dev"))));
        assert!(service_account_rules(&objects(), "ops", "nobody")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn what_the_sim_cannot_enforce_is_an_error() {
        let mut objects = objects();
        objects[1]["rules"][0]["resourceNames"] = json!(["web"]);
        let err = service_account_rules(&objects, "ops", "wd").unwrap_err();
        assert!(err.to_string().contains("resourceNames"), "{err}");
        let mut objects = super::tests::objects();
        objects[2]["roleRef"]["name"] = json!("typo");
        let err = service_account_rules(&objects, "ops", "wd").unwrap_err();
        assert!(err.to_string().contains("Role shop/typo"), "{err}");
    }
}

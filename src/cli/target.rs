//! A Deployment as the command line takes it, the way kubectl does:
//! `NAMESPACE/NAME`, `deployment/NAME -n NAMESPACE` (also `deploy/`,
//! `deployments/`, `deployment.apps/`...) or `NAME -n NAMESPACE`. Every
//! subcommand that names a Deployment parses it here, so they all agree.

use std::fmt;
use std::str::FromStr;

use crate::k8s::DeploymentKey;

/// The resource names kubectl accepts for a Deployment before the `/`.
const DEPLOYMENT_KINDS: [&str; 7] = [
    "deployment",
    "deployments",
    "deploy",
    "deployment.apps",
    "deployments.apps",
    "deployment.v1.apps",
    "deployments.v1.apps",
];

/// What was typed for a Deployment, before `-n/--namespace` is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentArg {
    typed: String,
    namespace: Option<String>,
    name: String,
}

impl FromStr for DeploymentArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "{s:?} is not NAMESPACE/NAME, deployment/NAME or NAME (e.g. production/kailash-kaizen, or kailash-kaizen -n production)"
            )
        };
        let (namespace, name) = match s.split_once('/') {
            Some((kind, name))
                if DEPLOYMENT_KINDS.contains(&kind.to_ascii_lowercase().as_str()) =>
            {
                (None, name)
            }
            Some((ns, name)) if !ns.is_empty() => (Some(ns.to_owned()), name),
            Some(_) => return Err(bad()),
            None => (None, s),
        };
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        Ok(DeploymentArg {
            typed: s.to_owned(),
            namespace,
            name: name.to_owned(),
        })
    }
}

impl fmt::Display for DeploymentArg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.typed)
    }
}

impl DeploymentArg {
    /// The Deployment, with `namespace` (`-n/--namespace`) filling in a
    /// namespace the argument did not give. Both given and different, or
    /// neither given, is a usage error that says what to write.
    pub fn resolve(&self, namespace: Option<&str>) -> Result<DeploymentKey, String> {
        match (self.namespace.as_deref(), namespace) {
            (Some(own), Some(flag)) if own != flag => Err(format!(
                "{} names namespace {own:?} but -n/--namespace says {flag:?}; give the namespace once",
                self.typed
            )),
            (Some(ns), _) | (None, Some(ns)) => Ok(DeploymentKey::new(ns, &self.name)),
            (None, None) => Err(format!(
                "{:?} is not NAMESPACE/NAME and no -n/--namespace was given; write NAMESPACE/{} or {} -n NAMESPACE",
                self.typed, self.name, self.typed
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(arg: &str, ns: Option<&str>) -> Result<String, String> {
        arg.parse::<DeploymentArg>()?
            .resolve(ns)
            .map(|k| k.to_string())
    }

    #[test]
    fn every_form_kubectl_takes_names_the_same_deployment() {
        let want = Ok("production/web".to_string());
        assert_eq!(resolve("production/web", None), want);
        assert_eq!(resolve("production/web", Some("production")), want);
        assert_eq!(resolve("web", Some("production")), want);
        for kind in DEPLOYMENT_KINDS {
            assert_eq!(resolve(&format!("{kind}/web"), Some("production")), want);
        }
        assert_eq!(resolve("Deployment/web", Some("production")), want);
    }

    #[test]
    fn a_missing_or_contradicting_namespace_is_a_usage_error() {
        let missing = resolve("web", None).unwrap_err();
        assert!(missing.contains("is not NAMESPACE/NAME"), "{missing}");
        assert!(missing.contains("web -n NAMESPACE"), "{missing}");
        assert!(resolve("deploy/web", None).is_err());
        let both = resolve("staging/web", Some("production")).unwrap_err();
        assert!(
            both.contains("\"staging\"") && both.contains("\"production\""),
            "{both}"
        );
        for bad in ["", "/web", "production/", "a/b/c", "deploy/"] {
            assert!(bad.parse::<DeploymentArg>().is_err(), "{bad:?}");
        }
    }
}

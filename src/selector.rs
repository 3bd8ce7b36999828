//! Kubernetes label selectors: the string syntax (`app=web`, `tier!=db`,
//! `env in (prod,staging)`, `!canary`), parsing with errors a user can act
//! on, and matching against an object's labels. The config and the
//! simulated API server share it so both read selectors the same way.

use std::collections::BTreeMap;

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("label selector {input:?} does not parse: {reason}")]
pub struct SelectorError {
    pub input: String,
    pub reason: String,
}

impl Selector {
    /// Parses the string form. The empty string selects everything.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let _ = input;
        Err(SelectorError {
            input: input.to_string(),
            reason: "not implemented yet".into(),
        })
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let _ = labels;
        false
    }
}

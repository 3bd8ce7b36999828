//! Kubernetes label selectors: the string syntax (`app=web`, `tier!=db`,
//! `env in (prod,staging)`, `!canary`), parsing with errors a user can act
//! on, and matching against an object's labels. The config and the
//! simulated API server share it so both read selectors the same way; it
//! must never accept a selector the real API server would reject.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

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

impl Requirement {
    /// The label key the requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::DoesNotExist(k) => k,
        }
    }

    /// Whether labels satisfy this requirement. As in Kubernetes, `!=` and
    /// `notin` hold for objects that lack the key.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(self.key());
        match self {
            Requirement::Equals(_, v) => value == Some(v),
            Requirement::NotEquals(_, v) => value != Some(v),
            Requirement::In(_, vs) => value.is_some_and(|got| vs.contains(got)),
            Requirement::NotIn(_, vs) => value.is_none_or(|got| !vs.contains(got)),
            Requirement::Exists(_) => value.is_some(),
            Requirement::DoesNotExist(_) => value.is_none(),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => write!(f, "{k}"),
            Requirement::DoesNotExist(k) => write!(f, "!{k}"),
        }
    }
}

/// The string form, as `kubectl` and `metav1.FormatLabelSelector` write it.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl Selector {
    /// Parses the string form. The empty string selects everything.
    pub fn parse(input: &str) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError {
            input: input.to_string(),
            reason,
        };
        let tokens = lex(input);
        let mut p = Parser { tokens, pos: 0 };
        let mut requirements = Vec::new();
        if p.peek().is_none() {
            return Ok(Selector { requirements });
        }
        loop {
            let req = p.requirement().map_err(fail)?;
            requirements.push(req);
            match p.next() {
                None => break,
                Some(Token::Comma) => {
                    if p.peek().is_none() {
                        return Err(fail(
                            "a comma must be followed by another requirement".into(),
                        ));
                    }
                }
                Some(other) => {
                    return Err(fail(format!(
                        "expected ',' or the end after a requirement, found {}",
                        other.describe()
                    )))
                }
            }
        }
        Ok(Selector { requirements })
    }

    /// Builds a selector from a Deployment's or ReplicaSet's
    /// `spec.selector` (`matchLabels` and `matchExpressions`).
    pub fn from_label_selector(selector: &LabelSelector) -> Result<Selector, SelectorError> {
        let input = serde_json::to_value(selector).unwrap_or_default();
        Self::from_label_selector_json(&input)
    }

    /// The same, from the selector's JSON form as stored in an object.
    pub fn from_label_selector_json(
        selector: &serde_json::Value,
    ) -> Result<Selector, SelectorError> {
        let fail = |reason: String| SelectorError {
            input: selector.to_string(),
            reason,
        };
        let mut requirements = Vec::new();
        if let Some(labels) = selector.get("matchLabels").and_then(|v| v.as_object()) {
            for (k, v) in labels {
                let v = v
                    .as_str()
                    .ok_or_else(|| fail(format!("matchLabels[{k}] must be a string")))?;
                check_key(k).map_err(&fail)?;
                check_value(v).map_err(&fail)?;
                requirements.push(Requirement::Equals(k.clone(), v.to_string()));
            }
        }
        if let Some(exprs) = selector.get("matchExpressions").and_then(|v| v.as_array()) {
            for e in exprs {
                let key = e
                    .get("key")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| fail("a matchExpression needs a key".into()))?
                    .to_string();
                check_key(&key).map_err(&fail)?;
                let values: Vec<String> = e
                    .get("values")
                    .and_then(|v| v.as_array())
                    .map(|vs| {
                        vs.iter()
                            .filter_map(|v| v.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                for v in &values {
                    check_value(v).map_err(&fail)?;
                }
                let op = e.get("operator").and_then(|v| v.as_str()).unwrap_or("");
                let req = match op {
                    "In" | "NotIn" if values.is_empty() => {
                        return Err(fail(format!(
                            "operator {op} on key {key:?} needs at least one value"
                        )))
                    }
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" | "DoesNotExist" if !values.is_empty() => {
                        return Err(fail(format!(
                            "operator {op} on key {key:?} takes no values"
                        )))
                    }
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => {
                        return Err(fail(format!(
                            "unknown operator {other:?} on key {key:?}: use In, NotIn, Exists or DoesNotExist"
                        )))
                    }
                };
                requirements.push(req);
            }
        }
        Ok(Selector { requirements })
    }

    /// Whether labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether a JSON object's `metadata.labels` satisfy every requirement.
    pub fn matches_object(&self, obj: &serde_json::Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = obj
            .pointer("/metadata/labels")
            .and_then(|v| v.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Not,
    Eq,
    DoubleEq,
    NotEq,
    Open,
    Close,
    Comma,
}

impl Token {
    fn describe(&self) -> String {
        match self {
            Token::Ident(s) => format!("{s:?}"),
            Token::Not => "'!'".into(),
            Token::Eq => "'='".into(),
            Token::DoubleEq => "'=='".into(),
            Token::NotEq => "'!='".into(),
            Token::Open => "'('".into(),
            Token::Close => "')'".into(),
            Token::Comma => "','".into(),
        }
    }
}

fn lex(input: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = input.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Not);
                }
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            _ => {
                let mut ident = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "!=(),".contains(c) {
                        break;
                    }
                    ident.push(c);
                    chars.next();
                }
                tokens.push(Token::Ident(ident));
            }
        }
    }
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn key(&mut self) -> Result<String, String> {
        match self.next() {
            Some(Token::Ident(k)) => {
                check_key(&k)?;
                Ok(k)
            }
            Some(other) => Err(format!("expected a label key, found {}", other.describe())),
            None => Err("expected a label key, found the end".into()),
        }
    }

    fn requirement(&mut self) -> Result<Requirement, String> {
        if self.peek() == Some(&Token::Not) {
            self.next();
            return Ok(Requirement::DoesNotExist(self.key()?));
        }
        let key = self.key()?;
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(Requirement::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.next();
                Ok(Requirement::Equals(key, self.single_value()?))
            }
            Some(Token::NotEq) => {
                self.next();
                Ok(Requirement::NotEquals(key, self.single_value()?))
            }
            Some(Token::Ident(op)) if op == "in" || op == "notin" => {
                self.next();
                let values = self.value_set(&key, &op)?;
                Ok(if op == "in" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                })
            }
            Some(other) => Err(format!(
                "expected an operator (=, ==, !=, in, notin) after key {key:?}, found {}",
                other.describe()
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; it may be empty (`a=`).
    fn single_value(&mut self) -> Result<String, String> {
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Ident(v)) => {
                self.next();
                check_value(&v)?;
                Ok(v)
            }
            Some(other) => Err(format!("expected a value, found {}", other.describe())),
        }
    }

    fn value_set(&mut self, key: &str, op: &str) -> Result<Vec<String>, String> {
        match self.next() {
            Some(Token::Open) => {}
            Some(other) => {
                return Err(format!(
                    "expected '(' after '{key} {op}', found {}",
                    other.describe()
                ))
            }
            None => return Err(format!("expected '(' after '{key} {op}', found the end")),
        }
        let mut values = Vec::new();
        let mut expect_value = true;
        loop {
            match self.next() {
                None => {
                    return Err(format!(
                        "unclosed parenthesis: the value set of '{key} {op}' has no ')'"
                    ))
                }
                Some(Token::Close) => {
                    if values.is_empty() {
                        return Err(format!(
                            "the value set of '{key} {op}' is empty: give at least one value"
                        ));
                    }
                    if expect_value {
                        return Err(format!("the value set of '{key} {op}' ends with a comma"));
                    }
                    return Ok(values);
                }
                Some(Token::Comma) if !expect_value => expect_value = true,
                Some(Token::Ident(v)) if expect_value => {
                    check_value(&v)?;
                    values.push(v);
                    expect_value = false;
                }
                Some(other) => {
                    return Err(format!(
                        "unexpected {} in the value set of '{key} {op}'",
                        other.describe()
                    ))
                }
            }
        }
    }
}

/// A name part: 1..=63 characters, alphanumeric at both ends, `-`, `_`
/// and `.` inside.
fn is_name_part(s: &str) -> bool {
    let bytes = s.as_bytes();
    !s.is_empty()
        && s.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS-1123 subdomain: lower-case labels separated by dots, ≤ 253.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Label keys are qualified names: an optional DNS subdomain prefix and a
/// slash, then a name of at most 63 characters.
fn check_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "invalid label key {key:?}: the prefix {p:?} must be a lower-case DNS subdomain of at most 253 characters"
            ));
        }
    }
    if name.len() > 63 {
        return Err(format!(
            "invalid label key {key:?}: the name part must be at most 63 characters, it has {}",
            name.len()
        ));
    }
    if !is_name_part(name) {
        return Err(format!(
            "invalid label key {key:?}: the name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

/// Label values: empty, or at most 63 characters like a key's name part.
fn check_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    if value.len() > 63 {
        return Err(format!(
            "invalid label value {value:?}: at most 63 characters, it has {}",
            value.len()
        ));
    }
    if !is_name_part(value) {
        return Err(format!(
            "invalid label value {value:?}: must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use Requirement::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn s(v: &str) -> String {
        v.to_string()
    }

    #[test]
    fn every_operator_parses_to_its_requirement() {
        let cases: Vec<(&str, Vec<Requirement>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            ("app=web", vec![Equals(s("app"), s("web"))]),
            ("app==web", vec![Equals(s("app"), s("web"))]),
            ("app = web", vec![Equals(s("app"), s("web"))]),
            ("app=", vec![Equals(s("app"), s(""))]),
            ("tier!=db", vec![NotEquals(s("tier"), s("db"))]),
            (
                "env in (prod, staging)",
                vec![In(s("env"), vec![s("prod"), s("staging")])],
            ),
            ("env in(prod)", vec![In(s("env"), vec![s("prod")])]),
            ("env notin (dev)", vec![NotIn(s("env"), vec![s("dev")])]),
            ("canary", vec![Exists(s("canary"))]),
            ("!canary", vec![DoesNotExist(s("canary"))]),
            ("! canary", vec![DoesNotExist(s("canary"))]),
            (
                "app.kubernetes.io/name=kaizen,!canary, env in (a,b),tier",
                vec![
                    Equals(s("app.kubernetes.io/name"), s("kaizen")),
                    DoesNotExist(s("canary")),
                    In(s("env"), vec![s("a"), s("b")]),
                    Exists(s("tier")),
                ],
            ),
            ("in=x", vec![Equals(s("in"), s("x"))]),
        ];
        for (input, want) in cases {
            let got =
                Selector::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
            assert_eq!(got.requirements, want, "parsing {input:?}");
        }
    }

    #[test]
    fn mistakes_are_rejected_with_a_reason_naming_them() {
        let long = "a".repeat(64);
        let long_key = format!("{long}=x");
        let long_value = format!("a={long}");
        let cases: Vec<(&str, &str)> = vec![
            ("env in (prod", "unclosed parenthesis"),
            ("env in prod", "expected '('"),
            ("env in ()", "empty"),
            ("env in (a,)", "ends with a comma"),
            ("app=web,", "comma must be followed"),
            (",app", "expected a label key"),
            ("app=web tier=db", "expected ','"),
            ("app web", "expected an operator"),
            ("-app=web", "invalid label key"),
            ("Bad_Prefix/app=x", "prefix"),
            (&long_key, "at most 63"),
            (&long_value, "at most 63"),
            ("app=we b", "expected ','"),
            ("app=-x", "invalid label value"),
            ("!", "found the end"),
        ];
        for (input, want) in cases {
            let err = Selector::parse(input)
                .err()
                .unwrap_or_else(|| panic!("{input:?} should not parse"));
            assert!(
                err.reason.contains(want),
                "{input:?}: reason {:?} should mention {want:?}",
                err.reason
            );
            assert_eq!(err.input, input);
        }
    }

    #[test]
    fn matching_follows_kubernetes_semantics() {
        let web = labels(&[("app", "web"), ("env", "prod")]);
        let bare = labels(&[]);
        let cases: Vec<(&str, &BTreeMap<String, String>, bool)> = vec![
            ("", &web, true),
            ("", &bare, true),
            ("app=web", &web, true),
            ("app=db", &web, false),
            ("app!=db", &web, true),
            ("app!=db", &bare, true),
            ("app in (web,db)", &web, true),
            ("app in (web)", &bare, false),
            ("app notin (web)", &web, false),
            ("app notin (web)", &bare, true),
            ("app", &web, true),
            ("app", &bare, false),
            ("!app", &web, false),
            ("!app", &bare, true),
            ("app=web,env=prod", &web, true),
            ("app=web,env=dev", &web, false),
        ];
        for (input, l, want) in cases {
            let sel = Selector::parse(input).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(sel.matches(l), want, "{input:?} on {l:?}");
        }
    }

    #[test]
    fn label_selector_objects_become_requirements_and_print_like_kubectl() {
        let sel = Selector::from_label_selector_json(&serde_json::json!({
            "matchLabels": {"app": "kaizen"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["a", "b"]},
                {"key": "canary", "operator": "DoesNotExist"}
            ]
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sel.to_string(), "app=kaizen,tier in (a,b),!canary");
        assert_eq!(Selector::parse(&sel.to_string()), Ok(sel.clone()));
        assert!(sel.matches(&labels(&[("app", "kaizen"), ("tier", "a")])));

        let typed: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "web"}
        }))
        .unwrap_or_default();
        let sel = Selector::from_label_selector(&typed).unwrap_or_default();
        assert_eq!(sel.to_string(), "app=web");

        let err = Selector::from_label_selector_json(&serde_json::json!({
            "matchExpressions": [{"key": "a", "operator": "Like", "values": ["x"]}]
        }))
        .err();
        assert!(err.is_some_and(|e| e.reason.contains("unknown operator")));
    }
}

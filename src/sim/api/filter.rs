//! The label and field selectors of a list or watch request.

use serde_json::Value;

use crate::k8s::selector::Selector;

/// One field selector requirement (`metadata.name=x`, `status.phase!=Running`).
pub(super) struct FieldRequirement {
    pointer: String,
    value: String,
    negate: bool,
}

pub(super) fn parse_field_selector(input: &str) -> Result<Vec<FieldRequirement>, String> {
    let mut out = Vec::new();
    for part in input.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
            (f, v, true)
        } else if let Some((f, v)) = part.split_once("==") {
            (f, v, false)
        } else if let Some((f, v)) = part.split_once('=') {
            (f, v, false)
        } else {
            return Err(format!(
                "invalid field selector {input:?}: {part:?} is not field=value or field!=value"
            ));
        };
        let field = field.trim();
        if field.is_empty() || field.split('.').any(str::is_empty) {
            return Err(format!(
                "invalid field selector {input:?}: bad field {field:?}"
            ));
        }
        out.push(FieldRequirement {
            pointer: format!("/{}", field.replace('.', "/")),
            value: value.trim().to_string(),
            negate,
        });
    }
    Ok(out)
}

pub(super) fn field_matches(reqs: &[FieldRequirement], obj: &Value) -> bool {
    reqs.iter().all(|r| {
        let got = match obj.pointer(&r.pointer) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        (got == r.value) != r.negate
    })
}

/// Label and field selectors of a list or watch.
pub(super) struct Filter {
    labels: Selector,
    fields: Vec<FieldRequirement>,
    namespace: Option<String>,
}

impl Filter {
    /// From a request's `labelSelector` and `fieldSelector`, for objects
    /// of `namespace` (None: every namespace); Err says what is malformed.
    pub(super) fn new(
        label_selector: Option<&str>,
        field_selector: Option<&str>,
        namespace: Option<String>,
    ) -> Result<Self, String> {
        let labels = match label_selector {
            Some(s) => Selector::parse(s).map_err(|e| e.to_string())?,
            None => Selector::default(),
        };
        let fields = match field_selector {
            Some(s) => parse_field_selector(s)?,
            None => Vec::new(),
        };
        Ok(Filter {
            labels,
            fields,
            namespace,
        })
    }

    pub(super) fn matches(&self, obj: &Value) -> bool {
        let ns_ok = self.namespace.as_deref().is_none_or(|want| {
            obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(want)
        });
        ns_ok && self.labels.matches_object(obj) && field_matches(&self.fields, obj)
    }
}

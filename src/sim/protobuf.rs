//! Just enough of the Kubernetes protobuf encoding to read the request
//! bodies kubectl 1.32 sends as `application/vnd.kubernetes.protobuf`
//! (its typed clients do, e.g. `kubectl create configmap`, `kubectl auth
//! can-i`): ConfigMap, Secret, Namespace and SelfSubjectAccessReview. It must never guess at a kind it does not know:
//! those are refused with 415 so the caller sends JSON instead.

use serde_json::{json, Map, Value};

/// Why a protobuf body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the protobuf body is malformed: {0}")]
    Malformed(&'static str),
    #[error("the simulated cluster reads protobuf bodies only for ConfigMap, Secret, Namespace and SelfSubjectAccessReview, not {0}; send JSON")]
    Unsupported(String),
}

const MAGIC: &[u8] = b"k8s\x00";

/// Standard base64 with padding, as JSON carries `[]byte` fields.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ProtobufError> {
        let mut out = 0u64;
        for shift in (0..64).step_by(7) {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(ProtobufError::Malformed("truncated varint"))?;
            self.buf = rest;
            out |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(out);
            }
        }
        Err(ProtobufError::Malformed("varint too long"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtobufError> {
        if self.buf.len() < n {
            return Err(ProtobufError::Malformed("truncated field"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    /// The next (field number, value), or None at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtobufError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let tag = self.varint()?;
        let field = match tag & 7 {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| ProtobufError::Malformed("length overflows"))?;
                Field::Bytes(self.take(len)?)
            }
            5 => {
                self.take(4)?;
                Field::Fixed
            }
            _ => return Err(ProtobufError::Malformed("unknown wire type")),
        };
        Ok(Some((tag >> 3, field)))
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ProtobufError> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, ProtobufError> {
    String::from_utf8(b.to_vec()).map_err(|_| ProtobufError::Malformed("string is not UTF-8"))
}

/// A map entry (key = 1, value = 2); bytes values become base64 as in JSON.
fn map_entry(b: &[u8], bytes_value: bool) -> Result<(String, Value), ProtobufError> {
    let mut key = String::new();
    let mut value = Value::String(String::new());
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(k)) => key = string(k)?,
            (2, Field::Bytes(v)) if bytes_value => value = json!(base64(v)),
            (2, Field::Bytes(v)) => value = json!(string(v)?),
            _ => {}
        }
    }
    Ok((key, value))
}

fn insert_entry(map: &mut Map<String, Value>, field: &str, entry: (String, Value)) {
    if let Some(m) = map
        .entry(field)
        .or_insert_with(|| json!({}))
        .as_object_mut()
    {
        m.insert(entry.0, entry.1);
    }
}

/// ObjectMeta: the fields a create carries.
fn object_meta(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut m = Map::new();
    for (n, f) in fields(b)? {
        match (n, f) {
            (1, Field::Bytes(v)) => {
                m.insert("name".into(), json!(string(v)?));
            }
            (2, Field::Bytes(v)) => {
                m.insert("generateName".into(), json!(string(v)?));
            }
            (3, Field::Bytes(v)) => {
                m.insert("namespace".into(), json!(string(v)?));
            }
            (6, Field::Bytes(v)) => {
                m.insert("resourceVersion".into(), json!(string(v)?));
            }
            (11, Field::Bytes(v)) => insert_entry(&mut m, "labels", map_entry(v, false)?),
            (12, Field::Bytes(v)) => insert_entry(&mut m, "annotations", map_entry(v, false)?),
            (14, Field::Bytes(v)) => {
                if let Some(a) = m
                    .entry("finalizers")
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                {
                    a.push(json!(string(v)?));
                }
            }
            _ => {}
        }
    }
    // Empty strings are protobuf's default, not values the client set.
    m.retain(|_, v| v.as_str() != Some(""));
    Ok(Value::Object(m))
}

/// SelfSubjectAccessReviewSpec: resourceAttributes (1) and
/// nonResourceAttributes (2), as `kubectl auth can-i` sends them.
fn access_review_spec(b: &[u8]) -> Result<Value, ProtobufError> {
    let mut spec = Map::new();
    for (n, f) in fields(b)? {
        let (key, names): (&str, &[&str]) = match n {
            1 => (
                "resourceAttributes",
                &[
                    "namespace",
                    "verb",
                    "group",
                    "version",
                    "resource",
                    "subresource",
                    "name",
                ],
            ),
            2 => ("nonResourceAttributes", &["path", "verb"]),
            _ => continue,
        };
        let Field::Bytes(attrs) = f else { continue };
        let mut m = Map::new();
        for (n, f) in fields(attrs)? {
            let idx = usize::try_from(n).unwrap_or(0);
            if let (Some(name), Field::Bytes(v)) =
                (idx.checked_sub(1).and_then(|i| names.get(i)), f)
            {
                m.insert((*name).to_string(), json!(string(v)?));
            }
        }
        spec.insert(key.into(), Value::Object(m));
    }
    Ok(Value::Object(spec))
}

/// Decodes a `k8s\0`-prefixed protobuf body into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or(ProtobufError::Malformed("missing the k8s protobuf prefix"))?;
    let mut api_version = String::new();
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (n, f) in fields(rest)? {
        match (n, f) {
            (1, Field::Bytes(tm)) => {
                for (n, f) in fields(tm)? {
                    match (n, f) {
                        (1, Field::Bytes(v)) => api_version = string(v)?,
                        (2, Field::Bytes(v)) => kind = string(v)?,
                        _ => {}
                    }
                }
            }
            (2, Field::Bytes(v)) => raw = v,
            _ => {}
        }
    }
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    for (n, f) in fields(raw)? {
        let (n, f) = match (n, f) {
            (1, Field::Bytes(v)) => {
                obj.insert("metadata".into(), object_meta(v)?);
                continue;
            }
            other => other,
        };
        match (kind.as_str(), n, f) {
            ("ConfigMap", 2, Field::Bytes(v)) => {
                insert_entry(&mut obj, "data", map_entry(v, false)?)
            }
            ("ConfigMap", 3, Field::Bytes(v)) => {
                insert_entry(&mut obj, "binaryData", map_entry(v, true)?)
            }
            ("ConfigMap", 4, Field::Varint(v)) | ("Secret", 5, Field::Varint(v)) => {
                obj.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Field::Bytes(v)) => insert_entry(&mut obj, "data", map_entry(v, true)?),
            ("Secret", 3, Field::Bytes(v)) => {
                obj.insert("type".into(), json!(string(v)?));
            }
            ("Secret", 4, Field::Bytes(v)) => {
                insert_entry(&mut obj, "stringData", map_entry(v, false)?)
            }
            ("SelfSubjectAccessReview", 2, Field::Bytes(v)) => {
                obj.insert("spec".into(), access_review_spec(v)?);
            }
            ("Namespace" | "ConfigMap" | "Secret" | "SelfSubjectAccessReview", _, _) => {}
            (other, _, _) => return Err(ProtobufError::Unsupported(other.to_string())),
        }
    }
    if !matches!(
        kind.as_str(),
        "ConfigMap" | "Secret" | "Namespace" | "SelfSubjectAccessReview"
    ) {
        return Err(ProtobufError::Unsupported(kind));
    }
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = vec![u8::try_from((n << 3) | 2).unwrap_or(0)];
        out.push(u8::try_from(bytes.len()).unwrap_or(0));
        out.extend_from_slice(bytes);
        out
    }

    #[test]
    fn a_configmap_as_kubectl_encodes_it_decodes_to_json() {
        let meta = [field(1, b"c1"), field(3, b"default")].concat();
        let entry = [field(1, b"a"), field(2, b"b")].concat();
        let raw = [field(1, &meta), field(2, &entry)].concat();
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).unwrap_or_default();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "c1", "namespace": "default"}, "data": {"a": "b"}})
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(matches!(decode(&body), Err(ProtobufError::Unsupported(_))));
    }
}

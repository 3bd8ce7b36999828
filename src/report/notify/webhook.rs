//! The generic webhook: a JSON document with a stable, versioned schema
//! (`"schema": "rollback-watchdog/v1"`) carrying the whole decision, and an
//! optional HMAC-SHA256 signature of the exact body so receivers can
//! authenticate it. The document is built field by field here, not by
//! serializing `Incident`, so refactoring the incident never silently
//! changes what receivers parse. v1 only ever gains fields; removing or
//! renaming one is v2.

use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::Value;
use sha2::Sha256;

use super::{Links, Problem, Summary};
use crate::report::incident::{Incident, RevisionRef, Trigger};
use crate::signals::{Outcome, SignalResult};

/// The value of the document's `schema` field.
pub const SCHEMA: &str = "rollback-watchdog/v1";
/// The signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-Rollback-Watchdog-Signature";
/// The event kind, so receivers can route without parsing the body.
pub const EVENT_HEADER: &str = "X-Rollback-Watchdog-Event";
/// The incident id: receivers can drop a redelivery after a crash between
/// sending and recording (delivery is at-least-once).
pub const DELIVERY_HEADER: &str = "X-Rollback-Watchdog-Delivery";

/// `rollback-watchdog/v1`.
#[derive(Debug, Serialize)]
pub struct Document<'a> {
    pub schema: &'static str,
    /// The event kind (`rollback_succeeded`...).
    pub event: &'static str,
    /// Stable per decision.
    pub id: &'a str,
    pub headline: &'a str,
    /// `none`, `in_progress`, `resolved`, `ongoing` or `unknown`.
    pub problem: Problem,
    pub status: &'a str,
    pub test: bool,
    pub cluster: &'a str,
    pub namespace: &'a str,
    pub deployment: &'a str,
    pub trigger: &'a Trigger,
    pub reason: &'a str,
    pub from: Option<&'a RevisionRef>,
    pub to: Option<&'a RevisionRef>,
    pub signals: Vec<Signal>,
    pub rollout_started_at: Option<&'a str>,
    pub detected_at: Option<&'a str>,
    pub at: &'a str,
    pub finished_at: Option<&'a str>,
    pub time_to_detect_seconds: Option<f64>,
    pub time_to_recover_seconds: Option<f64>,
    pub failed_step: Option<&'a str>,
    pub error: Option<&'a str>,
    pub dry_run: bool,
    pub backup: Option<&'a str>,
    pub blocklisted_redeploy: bool,
    /// The change in words, as Slack and Teams show it.
    pub changes: &'a [String],
    /// The JSON Patch operations sent (or, in a dry run, that would be),
    /// for machines; empty when no patch was built.
    pub patch: &'a [Value],
    pub links: &'a Links,
}

/// One signal behind the decision.
#[derive(Debug, Serialize)]
pub struct Signal {
    /// Stable id: `error_rate`, `latency`, `health:<name>`, `pods`, `rule:<name>`.
    pub signal: String,
    /// `fail`, `inconclusive` or `pass`.
    pub outcome: &'static str,
    /// The line a person reads.
    pub text: String,
    /// `{value, unit, text}` when measured.
    pub measured: Option<Value>,
    /// The limit broken (`{kind: max, limit: {...}}`...), for a Fail.
    pub threshold: Option<Value>,
    pub baseline: Option<f64>,
    pub at: String,
}

fn signal(s: &SignalResult) -> Signal {
    let (outcome, measured, threshold, baseline) = match &s.outcome {
        Outcome::Fail {
            measured,
            threshold,
            baseline,
            ..
        } => (
            "fail",
            serde_json::to_value(measured).ok(),
            serde_json::to_value(threshold).ok(),
            *baseline,
        ),
        Outcome::Inconclusive { .. } => ("inconclusive", None, None, None),
        Outcome::Pass { measured } => (
            "pass",
            measured.as_ref().and_then(|m| serde_json::to_value(m).ok()),
            None,
            None,
        ),
    };
    Signal {
        signal: s.signal.id(),
        outcome,
        text: s.describe(),
        measured,
        threshold,
        baseline,
        at: s.at.to_string(),
    }
}

/// The document for an incident.
pub fn payload(incident: &Incident, summary: &Summary) -> Value {
    let doc = Document {
        schema: SCHEMA,
        event: incident.kind.as_str(),
        id: &incident.id,
        headline: &summary.headline,
        problem: summary.problem,
        status: &summary.status,
        test: summary.is_test,
        cluster: &incident.cluster,
        namespace: &incident.namespace,
        deployment: &incident.deployment,
        trigger: &incident.trigger,
        reason: &incident.reason,
        from: incident.from.as_ref(),
        to: incident.to.as_ref(),
        signals: incident.signals.iter().map(signal).collect(),
        rollout_started_at: incident.rollout_started_at.as_deref(),
        detected_at: incident.detected_at.as_deref(),
        at: &incident.at,
        finished_at: incident.finished_at.as_deref(),
        time_to_detect_seconds: incident.time_to_detect(),
        time_to_recover_seconds: incident.time_to_recover(),
        failed_step: incident.failed_step.as_deref(),
        error: incident.error.as_deref(),
        dry_run: incident.dry_run,
        backup: incident.backup.as_deref(),
        blocklisted_redeploy: incident.blocklisted_redeploy,
        changes: &incident.changes,
        patch: &incident.patch,
        links: &summary.links,
    };
    // Every field is a string, number, bool or a map of those: encoding
    // cannot fail, and Null would still be a valid (if empty) document.
    serde_json::to_value(doc).unwrap_or(Value::Null)
}

/// `sha256=<lower-case hex>` of HMAC-SHA256(`secret`, `body`), the value of
/// [`SIGNATURE_HEADER`]. Receivers compute the same over the raw body they
/// received (before any JSON parsing) and compare in constant time.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let bytes = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Checks a [`SIGNATURE_HEADER`] value against `body` in constant time:
/// what a receiver does (and what the tests' receivers do).
pub fn verify(secret: &[u8], body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    if hex.len() != 64 {
        return false;
    }
    let mut expected = [0u8; 32];
    for (i, byte) in expected.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(b) => *byte = b,
            Err(_) => return false,
        }
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return false;
    };
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 4231, test cases 1 and 2.
    #[test]
    fn signatures_match_the_rfc_4231_vectors() {
        assert_eq!(
            signature(&[0x0b; 20], b"Hi There"),
            "sha256=b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_tampered_body_or_a_wrong_secret_does_not_verify() {
        let sig = signature(b"s3cret", b"{\"a\":1}");
        assert!(verify(b"s3cret", b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", b"{\"a\":2}", &sig));
        assert!(!verify(b"other", b"{\"a\":1}", &sig));
        assert!(!verify(b"s3cret", b"{\"a\":1}", "sha256=zz"));
    }
}

//! Prometheus's answer to an instant query, read with a size cap and
//! decoded here (not by the client crate, which reads a body whole).

use prometheus_http_query::error::PrometheusError;
use prometheus_http_query::response::PromqlResult;
use serde::Deserialize;

use crate::signals::body::{read_capped, BodyError};

/// The largest answer read: an instant query the watchdog sends
/// aggregates to one series, a few hundred bytes.
pub const MAX_ANSWER: usize = 4 * 1024 * 1024;

#[derive(Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
enum Envelope {
    Success { data: PromqlResult },
    Error(PrometheusError),
}

/// What an answer turned out to be.
#[derive(Debug)]
pub enum Answer {
    Result(PromqlResult),
    /// Prometheus's own `"status": "error"` answer.
    Refused(PrometheusError),
    /// Not a query result: the sentence says why.
    Bad(String),
}

/// Reads and decodes `response`, at most [`MAX_ANSWER`] bytes.
pub async fn read(response: reqwest::Response) -> Result<Answer, BodyError> {
    let status = response.status();
    let json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
    if !json {
        return Ok(Answer::Bad(format!("HTTP {status}, not JSON")));
    }
    let body = read_capped(response, MAX_ANSWER).await?;
    Ok(decode(status, &body))
}

/// Decodes a JSON answer given with HTTP `status`.
pub fn decode(status: reqwest::StatusCode, body: &[u8]) -> Answer {
    match serde_json::from_slice::<Envelope>(body) {
        Ok(Envelope::Success { data }) => Answer::Result(data),
        Ok(Envelope::Error(e)) => Answer::Refused(e),
        Err(e) => Answer::Bad(format!("HTTP {status}, not a query result: {e}")),
    }
}

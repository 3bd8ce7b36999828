//! The loopback Slack receiver, and Slack messages rendered as lines a
//! person skims on the timeline. It never answers beyond 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::oneshot;

use super::{lock, DemoError};

/// A loopback stand-in for a Slack incoming webhook: keeps each JSON body
/// it is sent and answers `ok`, as Slack does.
pub(super) struct Receiver {
    pub(super) url: String,
    pub(super) messages: Arc<Mutex<Vec<Value>>>,
    served: Served<()>,
}

impl Receiver {
    pub(super) async fn start() -> Result<Receiver, DemoError> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(DemoError::Receiver)?;
        let addr = listener.local_addr().map_err(DemoError::Receiver)?;
        let messages: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = messages.clone();
        let app = axum::Router::new().route(
            "/services/demo/webhook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    let value = serde_json::from_slice(&body)
                        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
                    lock(&kept).push(value);
                    "ok"
                }
            }),
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "the demo's Slack receiver stopped");
            }
        });
        Ok(Receiver {
            url: format!("http://{addr}/services/demo/webhook"),
            messages,
            served: Served {
                stop: Some(stop),
                task,
            },
        })
    }

    pub(super) async fn stop(self) {
        self.served.stop().await;
    }
}

/// A server task that stops gracefully when told, or is aborted after 3 s.
struct Served<T> {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<T>,
}

impl<T> Served<T> {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(3), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Longest line of a rendered Slack message (the "What changed" section
/// has the whole change-cause on one line).
const SLACK_LINE_MAX: usize = 160;

/// Slack's mrkdwn as plain text: entities decoded, `<!date^..|text>` and
/// `<url|label>` shown as their text, long lines cut.
fn plain_mrkdwn(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let tail = &rest[open + 1..];
        match tail.find('>') {
            Some(close) => {
                let inner = &tail[..close];
                let shown = match inner.split_once('|') {
                    Some((target, label)) if target.starts_with("!date") => label.to_string(),
                    Some((target, label)) => format!("{label} ({target})"),
                    None => inner.to_string(),
                };
                out.push_str(&shown);
                rest = &tail[close + 1..];
            }
            None => {
                out.push('<');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&");
    if out.chars().count() > SLACK_LINE_MAX {
        let cut: String = out.chars().take(SLACK_LINE_MAX - 1).collect();
        format!("{cut}…")
    } else {
        out
    }
}

/// A Slack message as a person skims it: the fallback text, then each
/// block on its own lines (header, sections, fields as `Name: value`).
pub fn render_slack(message: &Value) -> String {
    let mut out = Vec::new();
    if let Some(text) = message["text"].as_str() {
        out.push(format!("  text: {}", plain_mrkdwn(text)));
    }
    for block in message["blocks"].as_array().into_iter().flatten() {
        match block["type"].as_str().unwrap_or_default() {
            "header" => out.push(format!(
                "  | {}",
                plain_mrkdwn(block["text"]["text"].as_str().unwrap_or_default())
            )),
            "section" => {
                if let Some(text) = block["text"]["text"].as_str() {
                    for line in text.lines() {
                        out.push(format!("  | {}", plain_mrkdwn(line)));
                    }
                }
                for field in block["fields"].as_array().into_iter().flatten() {
                    let text = field["text"].as_str().unwrap_or_default();
                    let (name, value) = text.split_once('\n').unwrap_or((text, ""));
                    out.push(format!(
                        "  | {}: {}",
                        name.trim_matches('*'),
                        plain_mrkdwn(&value.replace('\n', " / "))
                    ));
                }
            }
            "divider" => out.push("  | ---".to_string()),
            "context" => {
                let parts: Vec<&str> = block["elements"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e["text"].as_str())
                    .collect();
                out.push(format!("  | {}", plain_mrkdwn(&parts.join("  ·  "))));
            }
            other => out.push(format!("  | ({other} block)")),
        }
    }
    if out.is_empty() {
        out.push(format!("  {message}"));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_slack_message_renders_as_lines_a_person_skims() {
        let message = json!({
            "text": ":white_check_mark: Rolled back",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": "Rolled back"}},
                {"type": "section", "fields": [{"type": "mrkdwn", "text": "*From*\nrevision 2\nv2"}]},
                {"type": "section", "text": {"type": "mrkdwn", "text": "30 % &gt; 5 % &amp; <https://r.example/x|Runbook>"}},
                {"type": "divider"},
                {"type": "context", "elements": [{"type": "mrkdwn", "text": "at <!date^1795780923^{date_short_pretty}|2026-11-27T12:02:03Z>"}, {"type": "mrkdwn", "text": "b"}]},
            ]
        });
        assert_eq!(
            render_slack(&message),
            "  text: :white_check_mark: Rolled back\n  | Rolled back\n  | From: revision 2 / v2\n  | 30 % > 5 % & Runbook (https://r.example/x)\n  | ---\n  | at 2026-11-27T12:02:03Z  ·  b"
        );
        let long = "x".repeat(500);
        assert_eq!(plain_mrkdwn(&long).chars().count(), SLACK_LINE_MAX);
    }
}

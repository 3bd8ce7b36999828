//! The Slack incoming-webhook message: a `text` fallback (what push
//! notifications show) and Block Kit blocks laid out for a ten-second read:
//! headline, whether on-call still has a problem, the reason, then facts.
//! It must stay within Slack's documented limits, or Slack refuses the
//! whole message: every text is cut with "…" rather than risk that.

use serde_json::{json, Value};

use super::{human_seconds, recover_label, revision_lines, trigger_words, truncate, Summary};
use crate::report::incident::Incident;

/// Slack's limits (Block Kit reference).
pub const HEADER_MAX: usize = 150;
pub const SECTION_TEXT_MAX: usize = 3000;
pub const FIELDS_MAX: usize = 10;
pub const FIELD_TEXT_MAX: usize = 2000;
pub const BLOCKS_MAX: usize = 50;
pub const CONTEXT_ELEMENTS_MAX: usize = 10;
/// The fallback `text`: Slack accepts far more, but a notification
/// preview should stay short.
pub const FALLBACK_MAX: usize = 3000;

/// Escapes the three characters Slack's mrkdwn treats as control
/// characters; everything else is shown as written.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Cuts escaped mrkdwn without leaving half an entity (`&am…`).
fn cut(mrkdwn: &str, max: usize) -> String {
    if mrkdwn.chars().count() <= max {
        return mrkdwn.to_owned();
    }
    let out = truncate(mrkdwn, max);
    let body = out.trim_end_matches('…');
    match body.rfind('&') {
        Some(i) if !body[i..].contains(';') => format!("{}…", &body[..i]),
        _ => out,
    }
}

fn mrkdwn(text: String, max: usize) -> Value {
    json!({"type": "mrkdwn", "text": cut(&text, max)})
}

fn section(text: String) -> Value {
    json!({"type": "section", "text": mrkdwn(text, SECTION_TEXT_MAX)})
}

/// `<url|label>`, with the characters that would end the link encoded.
fn link(url: &str, label: &str) -> String {
    let url = url
        .replace('|', "%7C")
        .replace('>', "%3E")
        .replace('<', "%3C");
    format!("<{url}|{}>", escape(label))
}

/// A timestamp every reader sees in their own time zone, with the UTC
/// text as fallback.
fn slack_date(at: &str) -> String {
    match at.parse::<jiff::Timestamp>() {
        Ok(ts) => format!(
            "<!date^{}^{{date_short_pretty}} at {{time_secs}}|{}>",
            ts.as_second(),
            escape(&ts.to_string())
        ),
        Err(_) => escape(at),
    }
}

/// The message for an incident.
pub fn payload(incident: &Incident, summary: &Summary) -> Value {
    let mut blocks = Vec::new();
    blocks.push(json!({
        "type": "header",
        "text": {
            "type": "plain_text",
            "text": truncate(&format!("{} {}", summary.emoji, summary.headline), HEADER_MAX),
            "emoji": true,
        },
    }));
    blocks.push(section(format!(
        "*{}*\n{}",
        escape(&summary.status),
        escape(&incident.reason)
    )));

    let mut fields = vec![
        ("Cluster", escape(&incident.cluster)),
        ("Deployment", format!("`{}`", escape(&incident.target()))),
    ];
    if let Some(from) = &incident.from {
        fields.push(("From", escape(&revision_lines(from, true))));
    }
    if let Some(to) = &incident.to {
        let mut text = escape(&revision_lines(to, true));
        if !to.known_good {
            text.push_str("\n_never verified as known-good_");
        }
        fields.push(("To", text));
    }
    if let Some(t) = incident.time_to_detect() {
        fields.push(("Time to detect", human_seconds(t)));
    }
    if let Some(t) = incident.time_to_recover() {
        fields.push((recover_label(incident), human_seconds(t)));
    }
    if let Some(step) = &incident.failed_step {
        fields.push(("Failed step", escape(step)));
    }
    if let Some(backup) = &incident.backup {
        fields.push(("Backup", format!("`{}`", escape(backup))));
    }
    fields.push(("Trigger", escape(&trigger_words(&incident.trigger))));
    let fields: Vec<Value> = fields
        .into_iter()
        .take(FIELDS_MAX)
        .map(|(name, value)| mrkdwn(format!("*{name}*\n{value}"), FIELD_TEXT_MAX))
        .collect();
    blocks.push(json!({"type": "section", "fields": fields}));

    if !incident.signals.is_empty() {
        let heading = if incident.signals.iter().any(|s| s.outcome.is_fail()) {
            "Failing signals"
        } else {
            "Signals"
        };
        let lines: Vec<String> = incident
            .signals
            .iter()
            .map(|s| format!("• {}", escape(&s.describe())))
            .collect();
        blocks.push(section(format!("*{heading}*\n{}", lines.join("\n"))));
    }
    if let Some(error) = &incident.error {
        let step = incident.failed_step.as_deref().unwrap_or("unknown step");
        let head = format!("*Error at {}*\n```", escape(step));
        // Cut the error itself so the code fence always closes.
        let room = SECTION_TEXT_MAX.saturating_sub(head.chars().count() + 3);
        blocks.push(section(format!("{head}{}```", cut(&escape(error), room))));
    }
    if !incident.changes.is_empty() {
        let title = if incident.dry_run {
            "What a rollback would change"
        } else {
            "What changed"
        };
        let lines: Vec<String> = incident
            .changes
            .iter()
            .map(|c| format!("• {}", escape(c)))
            .collect();
        blocks.push(section(format!("*{title}*\n{}", lines.join("\n"))));
    }

    let mut notes = Vec::new();
    if incident.dry_run {
        notes.push(
            ":information_source: Dry run: the watchdog judged and planned, and changed nothing."
                .to_owned(),
        );
    }
    if incident.blocklisted_redeploy {
        notes.push(
            ":repeat: This revision re-deploys a template that was rolled back before (blocklisted)."
                .to_owned(),
        );
    }
    if summary.is_test {
        notes.push(
            ":test_tube: This is a test message from `rollback-watchdog notify-test`.".to_owned(),
        );
    }
    if !notes.is_empty() {
        blocks.push(section(notes.join("\n")));
    }

    let mut links = Vec::new();
    if let Some(url) = &summary.links.dashboard {
        links.push(link(url, "Dashboard"));
    }
    if let Some(url) = &summary.links.runbook {
        links.push(link(url, "Runbook"));
    }
    if !links.is_empty() {
        blocks.push(section(links.join("  ·  ")));
    }

    blocks.push(json!({"type": "divider"}));
    let context: Vec<Value> = [
        format!("rollback-watchdog · {}", slack_date(&incident.at)),
        format!("incident `{}`", escape(&incident.id)),
    ]
    .into_iter()
    .take(CONTEXT_ELEMENTS_MAX)
    .map(|t| mrkdwn(t, SECTION_TEXT_MAX))
    .collect();
    blocks.push(json!({"type": "context", "elements": context}));
    blocks.truncate(BLOCKS_MAX);

    json!({
        "text": truncate(
            &format!("{} {} — {}", summary.emoji, summary.headline, summary.status),
            FALLBACK_MAX,
        ),
        "blocks": blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mrkdwn_control_characters_are_escaped_and_cuts_never_split_an_entity() {
        assert_eq!(escape("a > b & <c>"), "a &gt; b &amp; &lt;c&gt;");
        let s = escape("xx>");
        assert_eq!(cut(&s, 4), "xx…");
    }

    #[test]
    fn link_labels_and_urls_cannot_break_out_of_the_link() {
        assert_eq!(
            link("https://x/a|b>c", "Run<book"),
            "<https://x/a%7Cb%3Ec|Run&lt;book>"
        );
    }
}

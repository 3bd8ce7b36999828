//! The Microsoft Teams message: what a Workflows "post to a channel when a
//! webhook request is received" flow (and the older Incoming Webhook
//! connector) accepts, a `message` carrying one Adaptive Card 1.4 with a
//! title, the status line, the reason, a FactSet and links as actions.

use serde_json::{json, Value};

use super::{human_seconds, revision_lines, trigger_words, Problem, Summary};
use crate::report::incident::Incident;

/// The Adaptive Card version Teams renders everywhere (desktop, web, mobile).
pub const CARD_VERSION: &str = "1.4";

fn fact(title: &str, value: String) -> Value {
    json!({"title": title, "value": value})
}

fn text(text: String) -> Value {
    json!({"type": "TextBlock", "text": text, "wrap": true})
}

/// The message for an incident.
pub fn payload(incident: &Incident, summary: &Summary) -> Value {
    let color = match summary.problem {
        Problem::Resolved | Problem::None => "Good",
        Problem::InProgress | Problem::Unknown => "Warning",
        Problem::Ongoing => "Attention",
    };
    let mut body = vec![
        json!({
            "type": "TextBlock",
            "text": format!("{} {}", summary.unicode, summary.headline),
            "size": "Large",
            "weight": "Bolder",
            "style": "heading",
            "wrap": true,
        }),
        json!({
            "type": "TextBlock",
            "text": summary.status,
            "weight": "Bolder",
            "color": color,
            "wrap": true,
        }),
        text(incident.reason.clone()),
    ];

    let mut facts = vec![
        fact("Cluster", incident.cluster.clone()),
        fact("Deployment", incident.target()),
    ];
    if let Some(from) = &incident.from {
        facts.push(fact(
            "From",
            revision_lines(from, false).replace('\n', ", "),
        ));
    }
    if let Some(to) = &incident.to {
        let mut value = revision_lines(to, false).replace('\n', ", ");
        if !to.known_good {
            value.push_str(" (never verified as known-good)");
        }
        facts.push(fact("To", value));
    }
    if let Some(t) = incident.time_to_detect() {
        facts.push(fact("Time to detect", human_seconds(t)));
    }
    if let Some(t) = incident.time_to_recover() {
        facts.push(fact(super::recover_label(incident), human_seconds(t)));
    }
    if let Some(step) = &incident.failed_step {
        facts.push(fact("Failed step", step.clone()));
    }
    if let Some(error) = &incident.error {
        facts.push(fact("Error", error.clone()));
    }
    if let Some(backup) = &incident.backup {
        facts.push(fact("Backup", backup.clone()));
    }
    facts.push(fact("Trigger", trigger_words(&incident.trigger)));
    if incident.dry_run {
        facts.push(fact("Dry run", "yes: nothing was changed".to_owned()));
    }
    if incident.blocklisted_redeploy {
        facts.push(fact(
            "Re-deploy",
            "of a template rolled back before (blocklisted)".to_owned(),
        ));
    }
    facts.push(fact("At", incident.at.clone()));
    body.push(json!({"type": "FactSet", "facts": facts}));

    if !incident.signals.is_empty() {
        let heading = if incident.signals.iter().any(|s| s.outcome.is_fail()) {
            "Failing signals"
        } else {
            "Signals"
        };
        let lines: Vec<String> = incident
            .signals
            .iter()
            .map(|s| format!("- {}", s.describe()))
            .collect();
        body.push(json!({"type": "TextBlock", "text": heading, "weight": "Bolder", "wrap": true}));
        body.push(text(lines.join("\n")));
    }
    if !incident.changes.is_empty() {
        let lines: Vec<String> = incident.changes.iter().map(|c| format!("- {c}")).collect();
        let heading = if incident.dry_run {
            "What a rollback would change"
        } else {
            "What changed"
        };
        body.push(json!({"type": "TextBlock", "text": heading, "weight": "Bolder", "wrap": true}));
        body.push(text(lines.join("\n")));
    }
    body.push(json!({
        "type": "TextBlock",
        "text": format!("rollback-watchdog · incident {}", incident.id),
        "isSubtle": true,
        "size": "Small",
        "wrap": true,
    }));

    let mut actions = Vec::new();
    if let Some(url) = &summary.links.dashboard {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Dashboard", "url": url}));
    }
    if let Some(url) = &summary.links.runbook {
        actions.push(json!({"type": "Action.OpenUrl", "title": "Runbook", "url": url}));
    }

    let mut card = json!({
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
    });
    if !actions.is_empty() {
        card["actions"] = Value::Array(actions);
    }
    json!({
        "type": "message",
        "summary": format!("{} {}", summary.unicode, summary.headline),
        "attachments": [{
            "contentType": "application/vnd.microsoft.card.adaptive",
            "contentUrl": null,
            "content": card,
        }],
    })
}

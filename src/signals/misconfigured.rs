//! Queries that cannot match: an `errors_query` filtering on a label the
//! app does not have (`status` where it says `code`), a latency query or a
//! rule on a metric that is not there. They return no series, which would
//! otherwise read as zero errors or as no data forever while the revision
//! serves traffic, so a release would pass in silence.
//!
//! It must never call a correct query misconfigured: client libraries
//! create the `code="5xx"` series only at the first error, so an empty
//! `errors_query` alone proves nothing. It is reported only when the
//! revision served `misconfigured_after_requests` over `baseline_lookback`
//! (counted by `total_query`) *and* Prometheus shows that a label the query
//! filters on is on none of the metric's series for the revision's pods,
//! or that the metric has no series at all. Latency and rule queries must
//! return a series whenever there is traffic, so for them no series while
//! traffic flows is enough.

use std::fmt;

use jiff::Timestamp;
use serde::Serialize;

use super::prometheus::{PrometheusSource, QueryError};
use super::{promql_duration, requests_text, Fill, SignalId, Subject};
use crate::config::{ErrorRatePolicy, Policy, QueryTemplate};

/// The observer's name for the queries this module adds.
pub(super) const PROBE: &str = "misconfiguration probe";
pub(super) const TRAFFIC: &str = "total_query over baseline_lookback";

/// A query that returned no series while the revision served traffic.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Misconfigured {
    /// Which query: `errors_query`, `latency.query`, `rule payments query`.
    pub query: String,
    /// The query as sent, placeholders filled.
    pub promql: String,
    pub revision: i64,
    /// Requests of the revision over `lookback`, counted by `total_query`.
    pub requests: f64,
    /// `baseline_lookback`, as PromQL writes it.
    pub lookback: String,
    /// What Prometheus showed: "no series of http_requests_total for these
    /// pods has a label status".
    pub why: String,
    /// What to do about it.
    pub hint: String,
}

impl fmt::Display for Misconfigured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` returns no series for revision {}, which served {} requests over the last {}: {}; {}",
            self.query,
            self.promql,
            self.revision,
            requests_text(self.requests),
            self.lookback,
            self.why,
            self.hint
        )
    }
}

/// Check the label and metric names: the one hint every finding gives.
pub(super) const CHECK_NAMES: &str =
    "check the query's label and metric names against the series the app exports";

/// One line of the self-check's query survey.
#[derive(Debug, Clone, PartialEq)]
pub struct SurveyLine {
    /// False for a query that returns nothing while traffic flows, or that
    /// cannot be asked.
    pub ok: bool,
    pub text: String,
}

impl PrometheusSource {
    /// The revision's requests over `baseline_lookback`, by `total_query`.
    pub(super) async fn requests_over_lookback(
        &self,
        signal: &SignalId,
        traffic: &ErrorRatePolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Result<f64, QueryError> {
        let fill = Fill::current(subject, traffic.baseline_lookback, cluster);
        let q = traffic.total_query.fill(&fill.placeholders());
        let rate = self.query(signal, TRAFFIC, &q, now).await?;
        Ok(rate.max(0.0) * traffic.baseline_lookback.as_secs_f64())
    }

    /// Whether an `errors_query` that returned no series cannot match:
    /// enough traffic, and a label it filters on (or its metric) missing.
    pub(super) async fn errors_query_misconfigured(
        &self,
        traffic: &ErrorRatePolicy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Option<Misconfigured> {
        let signal = SignalId::ErrorRate;
        let n = self
            .requests_over_lookback(&signal, traffic, subject, cluster, now)
            .await;
        let requests = enough(traffic, n.ok()?)?;
        let why = self
            .missing_names(
                &signal,
                &traffic.errors_query,
                subject,
                traffic,
                cluster,
                now,
            )
            .await?;
        Some(self.finding(
            "errors_query",
            &traffic.errors_query,
            traffic,
            subject,
            cluster,
            requests,
            why,
        ))
    }

    /// A latency or rule query that returned no series: misconfigured when
    /// the revision served enough requests and it has no series over the
    /// whole lookback either.
    pub(super) async fn empty_with_traffic(
        &self,
        signal: &SignalId,
        query: &QueryTemplate,
        traffic: Option<&ErrorRatePolicy>,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Option<Misconfigured> {
        let traffic = traffic?;
        let n = self
            .requests_over_lookback(signal, traffic, subject, cluster, now)
            .await;
        let requests = enough(traffic, n.ok()?)?;
        // A span of a second or two can hold too few scrapes for `rate`:
        // only no series over the whole lookback is a finding.
        let fill = Fill::current(subject, traffic.baseline_lookback, cluster);
        let q = query.fill(&fill.placeholders());
        if !matches!(
            self.query(signal, PROBE, &q, now).await,
            Err(QueryError::Empty)
        ) {
            return None;
        }
        let mut why = "it has no series while total_query counts traffic".to_owned();
        if matches!(signal, SignalId::Rule { .. }) {
            why.push_str(" (if no series means zero, end the query with `or vector(0)`)");
        }
        Some(self.finding(
            &query_name(signal),
            query,
            traffic,
            subject,
            cluster,
            requests,
            why,
        ))
    }

    /// Every configured Prometheus query of `policy` for `subject`, each
    /// evaluated over `baseline_lookback`: which return nothing while
    /// `total_query` shows traffic. For the self-check.
    pub async fn survey(
        &self,
        policy: &Policy,
        subject: &Subject,
        cluster: &str,
        now: Timestamp,
    ) -> Vec<SurveyLine> {
        let traffic = &policy.error_rate;
        if !traffic.enabled {
            return vec![SurveyLine {
                ok: true,
                text: "error_rate is disabled: no total_query to count traffic with, queries not checked".to_owned(),
            }];
        }
        if traffic.grouped {
            return vec![SurveyLine {
                ok: true,
                text: "error_rate.grouped: its queries run once per tick for every target, where a query that cannot match is reported".to_owned(),
            }];
        }
        let signal = SignalId::ErrorRate;
        let fill = Fill::current(subject, traffic.baseline_lookback, cluster);
        let lookback = promql_duration(traffic.baseline_lookback);
        let requests = match self
            .requests_over_lookback(&signal, traffic, subject, cluster, now)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                let q = traffic.total_query.fill(&fill.placeholders());
                return vec![SurveyLine {
                    ok: false,
                    text: format!("total_query `{q}` over the last {lookback}: {e}; the watchdog cannot count this revision's traffic, {CHECK_NAMES}"),
                }];
            }
        };
        let mut lines = vec![SurveyLine {
            ok: true,
            text: format!(
                "total_query counts {} requests over the last {lookback}",
                requests_text(requests)
            ),
        }];
        if enough(traffic, requests).is_none() {
            lines.push(SurveyLine {
                ok: true,
                text: format!(
                    "fewer than error_rate.misconfigured_after_requests {}: the other queries are not judged on so little traffic",
                    traffic.misconfigured_after_requests
                ),
            });
            return lines;
        }
        let mut queries: Vec<(SignalId, String, &QueryTemplate)> = vec![(
            signal.clone(),
            "errors_query".to_owned(),
            &traffic.errors_query,
        )];
        if policy.latency.enabled && !policy.latency.grouped {
            queries.push((
                SignalId::Latency,
                query_name(&SignalId::Latency),
                &policy.latency.query,
            ));
        }
        for rule in &policy.rules {
            let signal = SignalId::rule(&rule.name);
            queries.push((signal.clone(), query_name(&signal), &rule.query));
        }
        let checks = queries.into_iter().map(|(signal, name, query)| {
            let fill = &fill;
            async move {
                let q = query.fill(&fill.placeholders());
                let line = match self.query(&signal, PROBE, &q, now).await {
                    Ok(_) | Err(QueryError::NotFinite { .. }) => SurveyLine {
                        ok: true,
                        text: format!("{name} returns a series"),
                    },
                    Err(QueryError::Empty) if signal == SignalId::ErrorRate => {
                        match self.errors_query_misconfigured(traffic, subject, cluster, now).await {
                            Some(m) => SurveyLine { ok: false, text: m.to_string() },
                            None => SurveyLine {
                                ok: true,
                                text: format!("{name} returns no series yet: no errors counted (its metric and labels exist)"),
                            },
                        }
                    }
                    Err(QueryError::Empty) => match self
                        .empty_with_traffic(&signal, query, Some(traffic), subject, cluster, now)
                        .await
                    {
                        Some(m) => SurveyLine { ok: false, text: m.to_string() },
                        None => SurveyLine { ok: true, text: format!("{name} returns no series") },
                    },
                    Err(e) => SurveyLine { ok: false, text: format!("{name} `{q}`: {e}") },
                };
                line
            }
        });
        lines.extend(futures::future::join_all(checks).await);
        lines
    }

    /// Why `query` cannot match, from Prometheus: its metric has no series
    /// at all, or a label one of its selectors requires is on none of the
    /// metric's series for the revision's pods. None when it can match (or
    /// the query is too unusual to take apart).
    async fn missing_names(
        &self,
        signal: &SignalId,
        query: &QueryTemplate,
        subject: &Subject,
        traffic: &ErrorRatePolicy,
        cluster: &str,
        now: Timestamp,
    ) -> Option<String> {
        let fill = Fill::current(subject, traffic.baseline_lookback, cluster);
        let values = fill.placeholders();
        for selector in selectors(query.as_str())? {
            let scope: Vec<String> = selector
                .matchers
                .iter()
                .filter(|m| m.is_scope())
                .map(|m| m.render(&values))
                .collect();
            let metric = &selector.metric;
            let present = |extra: Option<String>| {
                let mut all = scope.clone();
                all.extend(extra);
                let q = format!("count({metric}{{{}}})", all.join(", "));
                async move { self.query(signal, PROBE, &q, now).await }
            };
            match present(None).await {
                Ok(_) => {}
                Err(QueryError::Empty) => {
                    // Not on these pods: a typo only if nowhere at all (an
                    // errors-only counter may not exist yet).
                    if metric.is_empty() {
                        continue;
                    }
                    let anywhere = format!("count({metric})");
                    if let Err(QueryError::Empty) = self.query(signal, PROBE, &anywhere, now).await
                    {
                        return Some(format!("Prometheus has no series of {metric} at all"));
                    }
                    continue;
                }
                Err(_) => return None,
            }
            for m in selector.matchers.iter().filter(|m| m.requires_label()) {
                let has = format!("{}!=\"\"", m.label);
                if let Err(QueryError::Empty) = present(Some(has)).await {
                    let of = if metric.is_empty() {
                        "the selected metric".to_owned()
                    } else {
                        metric.clone()
                    };
                    return Some(format!(
                        "no series of {of} for these pods has a label {} (the query filters on {}{}{})",
                        m.label, m.label, m.op, m.quoted
                    ));
                }
            }
        }
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn finding(
        &self,
        name: &str,
        query: &QueryTemplate,
        traffic: &ErrorRatePolicy,
        subject: &Subject,
        cluster: &str,
        requests: f64,
        why: String,
    ) -> Misconfigured {
        let fill = Fill::current(subject, traffic.baseline_lookback, cluster);
        Misconfigured {
            query: name.to_owned(),
            promql: query.fill(&fill.placeholders()),
            revision: subject.revision,
            requests,
            lookback: promql_duration(traffic.baseline_lookback),
            why,
            hint: CHECK_NAMES.to_owned(),
        }
    }
}

/// `n` requests, if they are enough to call a query with no series
/// misconfigured: at least `misconfigured_after_requests`, and some.
pub(super) fn enough(traffic: &ErrorRatePolicy, n: f64) -> Option<f64> {
    (n > 0.0 && n >= f64::from(traffic.misconfigured_after_requests)).then_some(n)
}

/// How messages name a signal's query: `latency.query`, `rule payments query`.
fn query_name(signal: &SignalId) -> String {
    match signal {
        SignalId::Rule { name } => format!("rule {name} query"),
        SignalId::Latency => "latency.query".to_owned(),
        other => format!("{other} query"),
    }
}

/// `metric{label op "value", ...}` as written in a query template.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Selector {
    /// Empty for `{__name__=~"..."}`-style selectors.
    pub(super) metric: String,
    pub(super) matchers: Vec<Matcher>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) struct Matcher {
    pub(super) label: String,
    pub(super) op: String,
    /// The value as written, quotes included, placeholders unfilled.
    pub(super) quoted: String,
}

impl Matcher {
    /// Its value holds a placeholder: it picks the revision's pods, it is
    /// not what the query is about.
    fn is_scope(&self) -> bool {
        crate::config::placeholder_regex().is_match(&self.quoted)
    }

    /// The matcher selects only series that carry the label: `=` with a
    /// value, or `=~` with a regex that cannot match the empty string.
    pub(super) fn requires_label(&self) -> bool {
        if self.is_scope() || self.label == "__name__" {
            return false;
        }
        let value = unquote(&self.quoted);
        match self.op.as_str() {
            "=" => !value.is_empty(),
            "=~" => regex::Regex::new(&format!("^(?:{value})$")).is_ok_and(|re| !re.is_match("")),
            _ => false,
        }
    }

    fn render(&self, values: &crate::config::Placeholders) -> String {
        format!(
            "{}{}{}",
            self.label,
            self.op,
            crate::config::fill(&self.quoted, values)
        )
    }
}

/// A quoted PromQL string's content, with `\\` and `\"` undone.
fn unquote(quoted: &str) -> String {
    let inner = quoted
        .get(1..quoted.len().saturating_sub(1))
        .unwrap_or_default();
    if quoted.starts_with('`') {
        return inner.to_owned();
    }
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every vector selector with braces in a query template; None when the
/// text cannot be taken apart (then nothing is reported).
pub(super) fn selectors(template: &str) -> Option<Vec<Selector>> {
    let chars: Vec<char> = template.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(&chars, i)?,
            // A range or a subquery: `[{window}]` holds a placeholder.
            '[' => {
                i += chars[i..].iter().position(|c| *c == ']')? + 1;
            }
            '#' => {
                i += chars[i..]
                    .iter()
                    .position(|c| *c == '\n')
                    .unwrap_or(chars.len() - i);
            }
            '{' => {
                let mut start = i;
                while start > 0 && is_name_char(chars[start - 1]) {
                    start -= 1;
                }
                let metric: String = chars[start..i].iter().collect();
                let (matchers, end) = parse_matchers(&chars, i + 1)?;
                out.push(Selector { metric, matchers });
                i = end;
            }
            _ => i += 1,
        }
    }
    Some(out)
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The index just past the string that starts at `i`.
fn skip_string(chars: &[char], i: usize) -> Option<usize> {
    let quote = chars[i];
    let mut j = i + 1;
    while j < chars.len() {
        if chars[j] == '\\' && quote != '`' {
            j += 2;
            continue;
        }
        if chars[j] == quote {
            return Some(j + 1);
        }
        j += 1;
    }
    None
}

/// `label op "value", ...}` from `i`; the matchers and the index past `}`.
fn parse_matchers(chars: &[char], mut i: usize) -> Option<(Vec<Matcher>, usize)> {
    let mut matchers = Vec::new();
    let skip_ws = |i: &mut usize| {
        while *i < chars.len() && chars[*i].is_whitespace() {
            *i += 1;
        }
    };
    loop {
        skip_ws(&mut i);
        match chars.get(i)? {
            '}' => return Some((matchers, i + 1)),
            ',' => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let start = i;
        while i < chars.len() && is_name_char(chars[i]) {
            i += 1;
        }
        let label: String = chars[start..i].iter().collect();
        if label.is_empty() {
            return None;
        }
        skip_ws(&mut i);
        let op = ["=~", "!~", "!=", "="]
            .into_iter()
            .find(|op| chars[i..].starts_with(&op.chars().collect::<Vec<_>>()))?;
        i += op.len();
        skip_ws(&mut i);
        if !matches!(chars.get(i)?, '"' | '\'' | '`') {
            return None;
        }
        let end = skip_string(chars, i)?;
        matchers.push(Matcher {
            label,
            op: op.to_owned(),
            quoted: chars[i..end].iter().collect(),
        });
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A matcher's label, whether it is a scope matcher, whether it
    /// requires its label.
    type Seen = (String, bool, bool);

    fn names(template: &str) -> Vec<(String, Vec<Seen>)> {
        selectors(template)
            .expect("parses")
            .into_iter()
            .map(|s| {
                let m = s
                    .matchers
                    .iter()
                    .map(|m| (m.label.clone(), m.is_scope(), m.requires_label()))
                    .collect();
                (s.metric, m)
            })
            .collect()
    }

    #[test]
    fn the_selectors_of_a_query_template_are_taken_apart_with_their_placeholders() {
        let cases: [(&str, &str, &[Seen]); 2] = [
            (
                r#"sum(rate(http_requests_total{namespace="{namespace}", pod=~"{pods}", status=~"5.."}[{window}]))"#,
                "http_requests_total",
                &[
                    ("namespace".to_owned(), true, false),
                    ("pod".to_owned(), true, false),
                    ("status".to_owned(), false, true),
                ],
            ),
            // Negative matchers and regexes that match "" do not need the label.
            (
                r#"sum(rate(x{code!="200", path=~".*", le="0.5"}[5m])) / sum(rate(y[5m]))"#,
                "x",
                &[
                    ("code".to_owned(), false, false),
                    ("path".to_owned(), false, false),
                    ("le".to_owned(), false, true),
                ],
            ),
        ];
        for (q, metric, matchers) in cases {
            assert_eq!(
                names(q),
                vec![(metric.to_owned(), matchers.to_vec())],
                "{q}"
            );
        }
        // What it cannot read, it does not judge.
        assert_eq!(selectors("sum(x{code=5})"), None);
        assert_eq!(selectors(r#"x{a="unterminated}"#), None);
    }

    #[test]
    fn a_finding_names_the_query_and_suggests_checking_the_names() {
        let m = Misconfigured {
            query: "errors_query".into(),
            promql: r#"sum(rate(http_requests_total{status=~"5.."}[2m]))"#.into(),
            revision: 2,
            requests: 1234.0,
            lookback: "30m".into(),
            why: "no series of http_requests_total for these pods has a label status".into(),
            hint: CHECK_NAMES.into(),
        };
        assert_eq!(
            m.to_string(),
            r#"errors_query `sum(rate(http_requests_total{status=~"5.."}[2m]))` returns no series for revision 2, which served 1,234 requests over the last 30m: no series of http_requests_total for these pods has a label status; check the query's label and metric names against the series the app exports"#
        );
    }
}

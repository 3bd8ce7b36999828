use super::*;

#[test]
fn windows_render_as_promql_durations() {
    let cases = [
        (Duration::from_secs(90), "1m30s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(5400), "1h30m"),
        (Duration::from_millis(1500), "1s500ms"),
        (Duration::from_secs(86_400 + 60), "1d1m"),
        (Duration::from_secs(30), "30s"),
        (Duration::ZERO, "0s"),
    ];
    for (d, text) in cases {
        assert_eq!(promql_duration(d), text, "{d:?}");
    }
}

/// A pod name as the API server makes it from the ReplicaSet's
/// generateName: cut to 58 characters, then 5 random ones.
fn pod_name(deployment: &str, hash: &str) -> String {
    let prefix: String = format!("{deployment}-{hash}-").chars().take(58).collect();
    format!("{prefix}x7k2q")
}

/// The regex as Prometheus reads it: the PromQL string's escapes
/// undone, anchored at both ends.
fn matches(promql_regex: &str, pod: &str) -> bool {
    let re = regex::Regex::new(&format!("^(?:{})$", promql_regex.replace("\\\\", "\\")))
        .expect("a valid regex");
    re.is_match(pod)
}

#[test]
fn pods_matches_the_pods_kubernetes_names_for_short_and_long_deployments() {
    let name_47 = "payments-reconciliation-worker-eu-west-primary1";
    let name_60 = "payments-reconciliation-worker-eu-west-primary-canary-blue01";
    assert_eq!((name_47.len(), name_60.len()), (47, 60));
    let cases = [
        // (deployment, regex, still tells revisions apart)
        ("web", "web-5d8f7c9b4f-.*", true),
        ("web.v2", "web\\\\.v2-5d8f7c9b4f-.*", true),
        (
            name_47,
            "payments-reconciliation-worker-eu-west-primary1-5d8f7c9b4f.*",
            true,
        ),
        (
            name_60,
            "payments-reconciliation-worker-eu-west-primary-canary-blue.*",
            false,
        ),
    ];
    for (deployment, regex, separates) in cases {
        let pods = Subject::pods_regex(deployment, "5d8f7c9b4f");
        assert_eq!(pods, regex, "{deployment}");
        assert!(
            matches(&pods, &pod_name(deployment, "5d8f7c9b4f")),
            "{deployment}: {pods} must match its pods"
        );
        assert_eq!(
            matches(&pods, &pod_name(deployment, "77c4d6f5bd")),
            !separates,
            "{deployment}: another revision's pods"
        );
        let both = Subject::pods_regex_of(deployment, &["5d8f7c9b4f", "77c4d6f5bd"]);
        assert!(
            matches(&both, &pod_name(deployment, "5d8f7c9b4f")),
            "{both}"
        );
        assert!(
            matches(&both, &pod_name(deployment, "77c4d6f5bd")),
            "{both}"
        );
    }
    assert_eq!(
        Subject::pods_regex_of("web", &["aaa", "bbb"]),
        "(web-aaa-|web-bbb-).*"
    );
}

#[test]
fn older_pods_are_not_compared_when_their_names_cannot_be_told_apart() {
    let subject = |deployment: &str| Subject {
        namespace: "production".into(),
        deployment: deployment.into(),
        revision: 2,
        pod_template_hash: "5d8f7c9b4".into(),
        serving_others: vec![ServingRevision {
            revision: 1,
            pod_template_hash: "77c4d6f5b".into(),
            ready_pods: 3,
        }],
        ..Default::default()
    };
    let span = Duration::from_secs(60);
    let short = Fill::others(&subject("web"), span, "prod").expect("web's older pods");
    assert_eq!(short.pods, "web-77c4d6f5b-.*");
    let long = "payments-reconciliation-worker-eu-west-primary-canary-blue01";
    assert_eq!(Fill::others(&subject(long), span, "prod"), None);
}

#[test]
fn the_baseline_is_filled_with_the_previous_revision_and_its_lookback() {
    let subject = Subject {
        namespace: "production".into(),
        deployment: "web".into(),
        revision: 5,
        pod_template_hash: "bbb".into(),
        images: vec![],
        rollout_started: jiff::Timestamp::UNIX_EPOCH,
        baseline: Some(BaselineRevision {
            revision: 4,
            pod_template_hash: "aaa".into(),
            since: None,
        }),
        pods: vec![],
        progress_deadline_exceeded: false,
        ..Default::default()
    };
    let now = Fill::current(&subject, Duration::from_secs(120), "prod");
    assert_eq!(
        (now.pods.as_str(), now.window.as_str()),
        ("web-bbb-.*", "2m")
    );
    let base = Fill::baseline(&subject, Duration::from_secs(1800), "prod").expect("baseline");
    assert_eq!(
        (
            base.revision.as_str(),
            base.pods.as_str(),
            base.window.as_str()
        ),
        ("4", "web-aaa-.*", "30m")
    );
}

use super::*;

#[test]
fn ids_are_stable_strings_for_metrics_and_logs() {
    let cases = [
        (SignalId::ErrorRate, "error_rate"),
        (SignalId::Latency, "latency"),
        (SignalId::health("api"), "health:api"),
        (SignalId::health(SignalId::PER_POD), "health:per-pod"),
        (SignalId::Pods, "pods"),
        (SignalId::rule("payment-errors"), "rule:payment-errors"),
    ];
    for (signal, id) in cases {
        assert_eq!(signal.id(), id);
        assert_eq!(serde_json::to_value(&signal).unwrap(), id);
    }
}

#[test]
fn measurements_read_as_an_engineer_writes_them() {
    let cases = [
        (Measurement::ratio(0.302), "30.2 %"),
        (Measurement::ratio(0.05), "5.0 %"),
        (Measurement::ratio(0.001), "0.1 %"),
        (Measurement::ratio(0.0001), "0.010 %"),
        (Measurement::ratio(0.0), "0.0 %"),
        (Measurement::seconds(0.412), "412 ms"),
        (Measurement::seconds(0.0042), "4.2 ms"),
        (Measurement::seconds(2.3), "2.30 s"),
        (Measurement::count(3.0, "restart", "restarts"), "3 restarts"),
        (Measurement::count(1.0, "restart", "restarts"), "1 restart"),
        (Measurement::http_status(503), "HTTP 503"),
        (Measurement::per_second(0.25), "0.25 req/s"),
        (Measurement::number(4.0), "4"),
        (Measurement::new(1.6, Unit::Multiple), "1.60×"),
        (Measurement::ratio(f64::NAN), "NaN"),
    ];
    for (m, text) in cases {
        assert_eq!(m.to_string(), text, "{m:?}");
    }
}

#[test]
fn a_failure_names_the_value_the_limit_and_the_baseline() {
    let at = jiff::Timestamp::UNIX_EPOCH;
    let cases = [
        (
            SignalId::ErrorRate,
            Outcome::Fail {
                measured: Measurement::ratio(0.302),
                threshold: Threshold::Max {
                    limit: Measurement::ratio(0.05),
                },
                baseline: Some(0.001),
                sentence: String::new(),
            },
            "error ratio 30.2 % > max 5.0 % (baseline 0.1 %)",
        ),
        (
            SignalId::Latency,
            Outcome::Fail {
                measured: Measurement::seconds(0.64),
                threshold: Threshold::RatioToBaseline {
                    max_ratio: 1.5,
                    floor: Some(Measurement::seconds(0.05)),
                },
                baseline: Some(0.4),
                sentence: String::new(),
            },
            "latency 640 ms > 1.5× baseline 400 ms (1.60×, floor 50 ms)",
        ),
        (
            SignalId::health("api"),
            Outcome::Fail {
                measured: Measurement::http_status(503),
                threshold: Threshold::Expected {
                    what: "HTTP 200".into(),
                },
                baseline: None,
                sentence: String::new(),
            },
            "health check api HTTP 503, expected HTTP 200",
        ),
        (
            SignalId::rule("payment-errors"),
            Outcome::Fail {
                measured: Measurement::number(4.0),
                threshold: Threshold::FailsWhen {
                    op: ">".into(),
                    limit: Measurement::number(0.0),
                },
                baseline: None,
                sentence: String::new(),
            },
            "rule payment-errors 4 > 0",
        ),
        (
            SignalId::Latency,
            Outcome::inconclusive("Prometheus unreachable"),
            "latency inconclusive: Prometheus unreachable",
        ),
    ];
    for (signal, outcome, text) in cases {
        assert_eq!(SignalResult::new(signal, outcome, at).to_string(), text);
    }
}

#[test]
fn zero_pods_are_not_all_pods_crashing() {
    let finding = |pods, crashing| PodsFinding {
        pods,
        crashing,
        reasons: vec![],
    };
    assert!(finding(3, 3).all_pods_crashing());
    assert!(!finding(3, 2).all_pods_crashing());
    assert!(!finding(0, 0).all_pods_crashing());
}

#[test]
fn a_result_serializes_for_status_and_the_audit_log() {
    let at: jiff::Timestamp = "2026-11-27T10:00:00Z".parse().unwrap();
    let r = SignalResult::new(
        SignalId::ErrorRate,
        Outcome::Fail {
            measured: Measurement::ratio(0.302),
            threshold: Threshold::Max {
                limit: Measurement::ratio(0.05),
            },
            baseline: None,
            sentence: "30 % of requests fail".into(),
        },
        at,
    );
    let v = serde_json::to_value(&r).unwrap();
    assert_eq!(v["signal"], "error_rate");
    assert_eq!(v["outcome"], "fail");
    assert_eq!(v["at"], "2026-11-27T10:00:00Z");
    assert_eq!(v["measured"]["text"], "30.2 %");
    assert_eq!(v["threshold"]["kind"], "max");
}

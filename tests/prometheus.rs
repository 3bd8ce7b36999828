//! The real Prometheus the tests and the demo run: it starts on a free
//! loopback port, answers queries, and serves backfilled data at fixed times.

use std::time::Duration;

use prometheus_http_query::Client;
use rollback_watchdog::sim::prometheus::{self, PrometheusOptions, PrometheusServer};

fn require_prometheus() {
    assert!(
        prometheus::available(),
        "prometheus and promtool must be on PATH (bash .ci/run installs Debian's package)"
    );
}

#[tokio::test]
async fn backfilled_series_answer_at_their_fixed_times() {
    require_prometheus();
    let dir = tempfile::tempdir().unwrap();
    let storage = dir.path().join("tsdb");
    // Two hours ago, a counter rising by 10 per second for 5 minutes.
    let start = jiff::Timestamp::now().as_second() - 7200;
    let mut om = String::from("# TYPE http_requests counter\n");
    for i in 0..=20 {
        let t = start + i * 15;
        om.push_str(&format!(
            "http_requests_total{{code=\"200\",pod=\"web-abc-1\"}} {} {t}\n",
            i * 150
        ));
    }
    om.push_str("# EOF\n");
    prometheus::backfill(&om, &storage).await.unwrap();
    let mut opts = PrometheusOptions::new("global:\n  scrape_interval: 15s\n");
    opts.storage = Some(storage);
    let server = PrometheusServer::start(opts).await.unwrap();
    let client = Client::try_from(server.url()).unwrap();
    let at = start + 300;
    let result = client
        .query("rate(http_requests_total{pod=~\"web-abc-.*\"}[2m])")
        .at(at)
        .get()
        .await
        .unwrap();
    let vector = result.data().as_vector().expect("an instant vector");
    assert_eq!(vector.len(), 1, "one series: {vector:?}");
    let rate = vector[0].sample().value();
    assert!((rate - 10.0).abs() < 1e-9, "rate was {rate}");
}

#[tokio::test]
async fn a_live_target_is_scraped() {
    require_prometheus();
    // A tiny metrics endpoint on loopback.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async { "# TYPE up_test gauge\nup_test 1\n" }),
    );
    let server_task = tokio::spawn(async move { axum::serve(listener, app).await });
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: t\n    static_configs:\n      - targets: ['{addr}']\n"
    );
    let server = PrometheusServer::start(PrometheusOptions::new(config))
        .await
        .unwrap();
    let client = Client::try_from(server.url()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = client.query("up_test").get().await.unwrap();
        if let Some(v) = result.data().as_vector() {
            if v.len() == 1 {
                assert_eq!(v[0].sample().value(), 1.0);
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "target never scraped; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server_task.abort();
}

//! Crash at every step: the real binary, run against the sim with a bad
//! release, exits right after one pipeline step (`RW_CRASH_AFTER`, a debug
//! build's test-only crash point), is started again, and must finish the
//! job as if nothing had happened: the Deployment back on the good
//! template, exactly one template patch, a backup for every patch, and no
//! decision twice in the audit log or at on-call.

use std::time::Duration;

use rollback_watchdog::pipeline::crash;

mod support;
use support::binary::events_received;
use support::cluster::{count, wait_ready, Cluster};
use support::watch::template_patches;

/// Crashes after `step`, restarts, and checks the promises: on-call hears
/// the start and the result exactly once, whatever the step.
async fn crash_after(step: &str) {
    let c = Cluster::start().await;
    let (mut first, port) = c.run(&[(crash::ENV, step)]);
    wait_ready(port, &mut first).await;
    c.deploy("web:v2-crash").await;
    let (exit, _) = first.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(
        exit.code(),
        Some(crash::EXIT_CODE),
        "the watchdog should have crashed after {step}: {}",
        first.log()
    );
    let crashed_log = first.log();
    assert!(
        crashed_log.contains(&format!("right after the {step} step")),
        "{crashed_log}"
    );

    let (mut again, port) = c.run(&[]);
    wait_ready(port, &mut again).await;
    c.wait_rolled_back_and_told(|| format!("after a crash at {step}: {}", again.log()))
        .await;
    // Room for a duplicate to show.
    tokio::time::sleep(Duration::from_secs(4)).await;
    again.assert_alive();

    let patches = template_patches(&c.sim);
    assert_eq!(patches, 1, "one template patch after a crash at {step}");
    let backups = c.backups().await;
    assert!(
        backups >= patches,
        "{backups} backups for {patches} patches (crash at {step})"
    );
    let events = events_received(&c.got);
    for kind in ["rollback_started", "rollback_succeeded"] {
        assert!(
            count(&events, kind) <= 1,
            "{kind} told twice after a crash at {step}: {events:?}"
        );
    }
    // rollback_started is sent again on resume (the ledger drops a repeat):
    // told exactly once whatever the step.
    assert_eq!(
        count(&events, "rollback_started"),
        1,
        "rollback_started after a crash at {step}: {events:?}"
    );
    assert_eq!(
        count(&events, "rollback_succeeded"),
        1,
        "rollback_succeeded after a crash at {step}: {events:?}"
    );
    let audit = c.audit();
    let reports = c.reports();
    let mut unique = reports.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        reports.len(),
        "a decision reported twice in the audit log after a crash at {step}: {reports:?}"
    );
    let updates = audit
        .iter()
        .filter(|l| l["step"] == "update" && l["outcome"] == "ok")
        .count();
    assert_eq!(updates, 1, "one update line (crash at {step})");
    // The decision itself is never lost: the audit log has the result.
    assert!(
        audit
            .iter()
            .any(|l| l["step"] == "report" && l["outcome"] == "rollback_succeeded"),
        "no rollback_succeeded report in the audit log (crash at {step}): {reports:?}"
    );
    eprintln!(
        "crash after {step}: survived; {patches} patch, {backups} backups, notices {events:?}"
    );
}

macro_rules! crash_points {
    ($($name:ident => $step:literal;)*) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            crash_after($step).await;
        }
    )*};
}

// After `audit` and `notify` the in-flight record is still on the
// Deployment (it is closed only once the result notice has settled): the
// restart finds the report in the audit log, tells on-call again, which
// the delivery ledger drops if it was delivered, and closes the record.
crash_points! {
    a_crash_after_validate_is_recovered => "validate";
    a_crash_after_backup_is_recovered => "backup";
    a_crash_after_update_is_recovered => "update";
    a_crash_after_wait_is_recovered => "wait";
    a_crash_after_verify_is_recovered => "verify";
    a_crash_after_audit_is_recovered_and_the_result_is_told_once => "audit";
    a_crash_after_notify_is_recovered_and_the_result_is_told_once => "notify";
}

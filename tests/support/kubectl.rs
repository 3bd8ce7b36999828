//! Running the real kubectl against a simulated cluster, bounded in time.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use rollback_watchdog::sim::SimCluster;

pub const KUBECTL: &str = "/usr/bin/kubectl";

/// Fails the test when kubectl is absent: `.ci/run` installs it, so a
/// missing one is a broken machine, not a reason to pass quietly.
pub fn require_kubectl() {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is not installed: install Debian's kubernetes-client (.ci/run does)"
    );
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub async fn kubectl(sim: &SimCluster, args: &[&str]) -> Out {
    let mut cmd = tokio::process::Command::new(KUBECTL);
    cmd.env("KUBECONFIG", sim.kubeconfig_path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .arg("--request-timeout=10s")
        .args(args)
        .kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("kubectl {args:?} did not finish in 60s"))
        .unwrap_or_else(|e| panic!("kubectl {args:?} did not start: {e}"));
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub async fn kubectl_ok(sim: &SimCluster, args: &[&str]) -> String {
    let out = kubectl(sim, args).await;
    assert!(
        out.ok,
        "kubectl {args:?} failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// The column names of a kubectl table.
pub fn header(table: &str) -> Vec<&str> {
    table
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect()
}

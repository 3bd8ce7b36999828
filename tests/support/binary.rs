//! The real `rollback-watchdog` binary run against an in-process sim
//! through its kubeconfig, and a webhook receiver standing in for on-call.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rollback_watchdog::report::status::StatusReport;

/// A child process killed and reaped when dropped, so a failing test
/// leaves nothing running.
pub struct Running {
    pub child: Child,
    pub stderr: PathBuf,
}

impl Running {
    /// Starts `rollback-watchdog --config CONFIG run`, stderr to a file.
    pub fn run(kubeconfig: &Path, config: &Path, envs: &[(&str, &str)]) -> Running {
        let stderr = config.with_extension("stderr");
        let file = std::fs::File::create(&stderr).expect("stderr file");
        let mut cmd = watchdog(kubeconfig);
        cmd.arg("--config").arg(config).arg("run");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("run starts");
        Running { child, stderr }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Panics with the log if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("run exited early ({status}): {}", self.log());
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits (bounded) for the exit; the status and how long it took.
    pub async fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "did not exit within {limit:?}: {}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The binary with KUBECONFIG set and nothing inherited that would change
/// its config or logging.
pub fn watchdog(kubeconfig: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("ROLLBACK_WATCHDOG_CONFIG")
        .env_remove("POD_NAME")
        .env_remove("RUST_LOG");
    cmd
}

/// `/status` of a watchdog on `port`, if it answers.
pub async fn status(port: u16) -> Option<StatusReport> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .ok()?;
    http.get(format!("http://127.0.0.1:{port}/status"))
        .send()
        .await
        .ok()?
        .json::<StatusReport>()
        .await
        .ok()
}

/// A webhook receiver on loopback: every JSON body it got.
pub async fn receiver() -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let store = store.clone();
            async move {
                store.lock().expect("lock").push(body);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}

/// The `event` of every webhook body received, in order.
pub fn events_received(got: &Arc<Mutex<Vec<serde_json::Value>>>) -> Vec<String> {
    got.lock()
        .expect("lock")
        .iter()
        .map(|b| b["event"].as_str().unwrap_or_default().to_string())
        .collect()
}

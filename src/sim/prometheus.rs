//! Runs a real Prometheus server (Debian's `prometheus` binary) next to the
//! simulated cluster, for the demo and the tests: on a free loopback port,
//! with its own throw-away storage, scraping the sim's app pods. It must
//! never outlive its owner: the process runs under `timeout` and is killed
//! when the handle drops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// What can go wrong starting or feeding Prometheus.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    #[error("the `{0}` binary is not on PATH; install Debian's package with `apt-get install -y prometheus`")]
    NotInstalled(&'static str),
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("could not start {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Prometheus at {url} was not ready within {waited:?}; its log:\n{log}")]
    NotReady {
        url: String,
        waited: Duration,
        log: String,
    },
    #[error("promtool failed to backfill: {0}")]
    Backfill(String),
    #[error("could not find a free loopback port: {0}")]
    Port(#[source] std::io::Error),
}

/// `$1` owner pid, `$2` lifetime, then the command. The guard polls the
/// owner and the command; when either is gone it kills its process group
/// (itself, timeout(1) and Prometheus).
const GUARD_SCRIPT: &str = r#"owner=$1; life=$2; shift 2
timeout --foreground --signal=KILL "$life" "$@" &
cmd=$!
while kill -0 "$owner" 2>/dev/null && kill -0 "$cmd" 2>/dev/null; do sleep 0.5; done
kill -KILL 0"#;

/// How to start Prometheus.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// The full `prometheus.yml` text.
    pub config_yaml: String,
    /// A TSDB directory to start on (for backfilled data); a fresh
    /// temporary one when `None`.
    pub storage: Option<PathBuf>,
    /// The process is killed after this long whatever happens.
    pub max_lifetime: Duration,
}

impl PrometheusOptions {
    pub fn new(config_yaml: impl Into<String>) -> Self {
        PrometheusOptions {
            config_yaml: config_yaml.into(),
            storage: None,
            max_lifetime: Duration::from_secs(900),
        }
    }
}

/// A running Prometheus. Dropping it kills the process.
pub struct PrometheusServer {
    child: Child,
    url: String,
    /// Config, log and (unless given) storage; `None` only while `start`
    /// moves it between attempts.
    dir: Option<tempfile::TempDir>,
    /// The backfilled TSDB of [`PrometheusServer::start_backfilled`], kept
    /// as long as the server.
    data: Option<tempfile::TempDir>,
}

/// Finds an executable on PATH.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Whether both `prometheus` and `promtool` can be run.
pub fn available() -> bool {
    find_binary("prometheus").is_some() && find_binary("promtool").is_some()
}

/// A scrape config that discovers the sim's app pods over Prometheus's HTTP
/// service discovery, so exactly the live pods are scraped, with their
/// `namespace` and `pod` labels.
pub fn scrape_config(sd_url: &str, scrape_interval: Duration) -> String {
    let every = humantime::format_duration(scrape_interval);
    format!(
        "global:\n  scrape_interval: {every}\n  evaluation_interval: {every}\n\
         scrape_configs:\n  - job_name: sim-pods\n    scrape_interval: {every}\n    scrape_timeout: {every}\n\
         \x20   http_sd_configs:\n      - url: {sd_url}\n        refresh_interval: 1s\n"
    )
}

fn free_port() -> Result<u16, PrometheusError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(PrometheusError::Port)?;
    let port = listener.local_addr().map_err(PrometheusError::Port)?.port();
    Ok(port)
}

impl PrometheusServer {
    /// Starts Prometheus and waits until `/-/ready` answers.
    pub async fn start(opts: PrometheusOptions) -> Result<PrometheusServer, PrometheusError> {
        let binary =
            find_binary("prometheus").ok_or(PrometheusError::NotInstalled("prometheus"))?;
        let mut dir = tempfile::tempdir().map_err(|source| PrometheusError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, &opts.config_yaml).map_err(|source| {
            PrometheusError::Write {
                path: config_path.clone(),
                source,
            }
        })?;
        let storage = opts
            .storage
            .clone()
            .unwrap_or_else(|| dir.path().join("data"));
        let log_path = dir.path().join("prometheus.log");
        // A port found free can be taken before Prometheus binds it; try a
        // few times rather than fail a test on a race.
        let mut last_err = None;
        for _ in 0..3 {
            let port = free_port()?;
            let url = format!("http://127.0.0.1:{port}");
            let log =
                std::fs::File::create(&log_path).map_err(|source| PrometheusError::Write {
                    path: log_path.clone(),
                    source,
                })?;
            let log_err = log.try_clone().map_err(|source| PrometheusError::Write {
                path: log_path.clone(),
                source,
            })?;
            // A guard shell runs Prometheus under timeout(1) and kills its
            // whole process group as soon as this process (the owner) is
            // gone, so even a test binary that exits without dropping the
            // handle (a shared server in a static) leaves nothing behind.
            let child = Command::new("sh")
                .arg("-c")
                .arg(GUARD_SCRIPT)
                .arg("prometheus-guard")
                .arg(std::process::id().to_string())
                .arg(format!("{}s", opts.max_lifetime.as_secs().max(1)))
                .arg(&binary)
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!("--storage.tsdb.path={}", storage.display()))
                .arg("--storage.tsdb.retention.time=100y")
                .arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .arg("--web.enable-lifecycle")
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(log_err))
                // Its own process group, so stopping it takes the guard,
                // `timeout` and Prometheus together: a SIGKILL to `timeout`
                // alone would orphan Prometheus with no time limit.
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| PrometheusError::Spawn {
                    binary: binary.clone(),
                    source,
                })?;
            let mut server = PrometheusServer {
                child,
                url,
                dir: Some(dir),
                data: None,
            };
            match server.wait_ready(Duration::from_secs(20)).await {
                Ok(()) => return Ok(server),
                Err(e) => {
                    server.stop().await;
                    dir = match server.take_dir() {
                        Some(d) => d,
                        None => break,
                    };
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(PrometheusError::NotReady {
            url: String::new(),
            waited: Duration::ZERO,
            log: String::new(),
        }))
    }

    /// Prometheus on `openmetrics` (ending in `# EOF`) backfilled into a
    /// fresh TSDB with [`backfill`], scraping nothing: queries at fixed
    /// times give exact, repeatable answers. Its data goes with it.
    pub async fn start_backfilled(
        openmetrics: &str,
        max_lifetime: Duration,
    ) -> Result<PrometheusServer, PrometheusError> {
        let data = tempfile::tempdir().map_err(|source| PrometheusError::Write {
            path: std::env::temp_dir(),
            source,
        })?;
        let storage = data.path().join("tsdb");
        backfill(openmetrics, &storage).await?;
        let mut opts = PrometheusOptions::new("global:\n  scrape_interval: 15s\n");
        opts.storage = Some(storage);
        opts.max_lifetime = max_lifetime;
        let mut server = PrometheusServer::start(opts).await?;
        server.data = Some(data);
        Ok(server)
    }

    fn take_dir(&mut self) -> Option<tempfile::TempDir> {
        self.dir.take()
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// What Prometheus has logged so far (for failing tests).
    pub fn log(&self) -> String {
        self.dir
            .as_ref()
            .and_then(|d| std::fs::read_to_string(d.path().join("prometheus.log")).ok())
            .unwrap_or_default()
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<(), PrometheusError> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .map_err(|e| PrometheusError::NotReady {
                url: self.url.clone(),
                waited: Duration::ZERO,
                log: e.to_string(),
            })?;
        let started = Instant::now();
        let ready_url = format!("{}/-/ready", self.url);
        while started.elapsed() < limit {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            if let Ok(resp) = client.get(&ready_url).send().await {
                if resp.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(PrometheusError::NotReady {
            url: self.url.clone(),
            waited: started.elapsed(),
            log: self.log(),
        })
    }

    /// Stops the process and waits for it to go.
    pub async fn stop(&mut self) {
        self.kill_group();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// SIGKILL to the whole process group (`timeout` and Prometheus), with
    /// the shell's builtin kill (no extra crate, no unsafe code).
    fn kill_group(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("sh")
                .args(["-c", &format!("kill -KILL -{pid} 2>/dev/null")])
                .status();
        }
        let _ = self.child.start_kill();
    }
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Writes TSDB blocks for an OpenMetrics text (ending in `# EOF`) into
/// `storage` with `promtool tsdb create-blocks-from openmetrics`, so a
/// Prometheus started on that directory answers queries at fixed times.
pub async fn backfill(openmetrics: &str, storage: &Path) -> Result<(), PrometheusError> {
    let promtool = find_binary("promtool").ok_or(PrometheusError::NotInstalled("promtool"))?;
    std::fs::create_dir_all(storage).map_err(|source| PrometheusError::Write {
        path: storage.to_path_buf(),
        source,
    })?;
    let input = storage.join("backfill.om");
    std::fs::write(&input, openmetrics).map_err(|source| PrometheusError::Write {
        path: input.clone(),
        source,
    })?;
    let output = Command::new("timeout")
        .arg("--signal=KILL")
        .arg("120s")
        .arg(&promtool)
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(storage)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| PrometheusError::Spawn {
            binary: promtool.clone(),
            source,
        })?;
    let _ = std::fs::remove_file(&input);
    if output.status.success() {
        Ok(())
    } else {
        Err(PrometheusError::Backfill(format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

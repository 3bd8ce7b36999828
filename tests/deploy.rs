//! The `deploy/` manifests as a cluster would get them: `kubectl kustomize`
//! renders them, and what a user relies on holds in the rendered objects.
//! The in-cluster config is the repository's, the pod runs it the way it
//! reads it (paths, port, environment), nothing it must reach is blocked,
//! and the monitoring alerts fire on the watchdog's own failures.
//!
//! kubectl renders offline; PyYAML (which `kubernetes-validate` brings, and
//! `.ci/run` installs) turns YAML into JSON; promtool checks the alerts.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;

const KUBECTL: &str = "/usr/bin/kubectl";
const NAMESPACE: &str = "rollback-watchdog";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs a command with `stdin`, killed after 60 s.
fn run(cmd: &mut Command, stdin: &str) -> Out {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} did not start: {e}"));
    let mut input = child.stdin.take().expect("piped stdin");
    let stdin = stdin.to_owned();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the child") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    Out {
        ok: status.success(),
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Every document of a YAML stream, as JSON.
fn yaml_docs(yaml: &str) -> Vec<Value> {
    let script = "import json, sys, yaml\n\
                  json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)";
    let out = run(Command::new("python3").args(["-c", script]), yaml);
    assert!(
        out.ok,
        "python3 with PyYAML could not read the YAML (install it with `pip install kubernetes-validate`, as .ci/run does):\n{}",
        out.stderr
    );
    let docs: Value = serde_json::from_str(&out.stdout).expect("JSON from python3");
    docs.as_array().expect("a list of documents").clone()
}

fn kustomize(dir: &str) -> Vec<Value> {
    assert!(
        Path::new(KUBECTL).exists(),
        "{KUBECTL} is missing: .ci/run installs Debian's kubernetes-client"
    );
    let out = run(
        Command::new(KUBECTL)
            .args(["kustomize", dir])
            .current_dir(repo()),
        "",
    );
    assert!(out.ok, "kubectl kustomize {dir} failed:\n{}", out.stderr);
    yaml_docs(&out.stdout)
}

/// The base, rendered once per test binary.
fn base() -> &'static [Value] {
    static BASE: OnceLock<Vec<Value>> = OnceLock::new();
    BASE.get_or_init(|| kustomize("deploy/"))
}

fn monitoring() -> &'static [Value] {
    static MONITORING: OnceLock<Vec<Value>> = OnceLock::new();
    MONITORING.get_or_init(|| kustomize("deploy/monitoring/"))
}

fn all_of<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn one<'a>(objects: &'a [Value], kind: &str) -> &'a Value {
    let found = all_of(objects, kind);
    assert_eq!(
        found.len(),
        1,
        "expected exactly one {kind}, got {}",
        found.len()
    );
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v}"))
}

fn deployment() -> &'static Value {
    one(base(), "Deployment")
}

fn pod_spec() -> &'static Value {
    &deployment()["spec"]["template"]["spec"]
}

fn container() -> &'static Value {
    let containers = pod_spec()["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn env_value<'a>(name: &str) -> &'a Value {
    container()["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("env {name} is not set on the container"))
}

/// The config the pods read: the generated ConfigMap's `watchdog.toml`.
fn configmap_config() -> &'static str {
    let deployment_cm = projected_sources()
        .iter()
        .find_map(|s| s["configMap"]["name"].as_str())
        .expect("a ConfigMap in the config volume");
    let cm = all_of(base(), "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == deployment_cm)
        .unwrap_or_else(|| {
            panic!(
                "the Deployment mounts ConfigMap {deployment_cm}, which the base does not render"
            )
        });
    str_of(
        &cm["data"]["watchdog.toml"],
        "the ConfigMap's watchdog.toml",
    )
}

fn config() -> toml::Value {
    toml::from_str(configmap_config()).expect("the ConfigMap holds valid TOML")
}

fn projected_sources() -> &'static Vec<Value> {
    let volume = volume("config");
    volume["projected"]["sources"]
        .as_array()
        .expect("the config volume is projected")
}

fn volume(name: &str) -> &'static Value {
    pod_spec()["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The volume mounted at the directory that holds `path`, with its mount.
fn mount_of(path: &str) -> (&'static Value, &'static Value) {
    let dir = Path::new(path).parent().expect("an absolute path");
    let mount = container()["volumeMounts"]
        .as_array()
        .expect("volumeMounts")
        .iter()
        .find(|m| Path::new(str_of(&m["mountPath"], "mountPath")) == dir)
        .unwrap_or_else(|| {
            panic!(
                "nothing is mounted at {}, where {path} lives",
                dir.display()
            )
        });
    (volume(str_of(&mount["name"], "mount name")), mount)
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    let wanted = selector.as_object().expect("matchLabels");
    !wanted.is_empty() && wanted.iter().all(|(k, v)| &labels[k] == v)
}

#[test]
fn the_config_in_deploy_is_config_watchdog_toml_byte_for_byte() {
    let original =
        std::fs::read(repo().join("config/watchdog.toml")).expect("config/watchdog.toml");
    let copy = std::fs::read(repo().join("deploy/watchdog.toml")).expect("deploy/watchdog.toml");
    assert!(
        original == copy,
        "deploy/watchdog.toml differs from config/watchdog.toml; kustomize cannot read ../config, so copy it: cp config/watchdog.toml deploy/watchdog.toml"
    );
}

#[test]
fn the_base_renders_every_object_a_cluster_needs() {
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(
            !all_of(base(), kind).is_empty(),
            "kubectl kustomize deploy/ renders no {kind}"
        );
    }
    assert_eq!(one(base(), "Namespace")["metadata"]["name"], NAMESPACE);
    assert_eq!(one(base(), "ServiceAccount")["metadata"]["name"], NAMESPACE);
    // Everything but RBAC (which also lives in the watched namespaces) sits
    // in the watchdog's namespace: nothing lands in `default` by omission.
    for o in base() {
        let kind = str_of(&o["kind"], "kind");
        if kind == "Namespace"
            || o["apiVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("rbac."))
        {
            continue;
        }
        assert_eq!(
            o["metadata"]["namespace"], NAMESPACE,
            "{kind} {} is not in namespace {NAMESPACE}",
            o["metadata"]["name"]
        );
    }
    // The restricted Pod Security Standard is enforced on the namespace.
    assert_eq!(
        one(base(), "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    // The image is set once, in the kustomization's `images:`.
    let image = str_of(&container()["image"], "image");
    assert!(
        image.contains("/rollback-watchdog:"),
        "image {image} was not set by images:"
    );
}

#[test]
fn the_pods_read_the_repository_config_from_the_generated_configmap() {
    let shipped =
        std::fs::read_to_string(repo().join("config/watchdog.toml")).expect("config/watchdog.toml");
    assert_eq!(
        configmap_config(),
        shipped,
        "the ConfigMap is not config/watchdog.toml"
    );
    // ROLLBACK_WATCHDOG_CONFIG points at the ConfigMap's file.
    let path = str_of(
        &env_value("ROLLBACK_WATCHDOG_CONFIG")["value"],
        "ROLLBACK_WATCHDOG_CONFIG",
    );
    let (volume, mount) = mount_of(path);
    assert_eq!(volume["name"], "config");
    assert_eq!(mount["readOnly"], true);
    let file = Path::new(path)
        .file_name()
        .and_then(|f| f.to_str())
        .expect("a file name");
    assert!(
        projected_sources()
            .iter()
            .any(
                |s| s["configMap"]["items"].as_array().is_some_and(|items| items
                    .iter()
                    .any(|i| i["path"] == file && i["key"] == "watchdog.toml"))
            ),
        "the config volume has no {file} from the ConfigMap"
    );
    assert_eq!(container()["args"], serde_json::json!(["run"]));
}

#[test]
fn the_in_cluster_config_is_valid_under_the_pods_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("watchdog.toml");
    std::fs::write(&path, configmap_config()).expect("write the config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rollback-watchdog"));
    cmd.env_clear().arg("check-config");
    // Exactly the variables the Deployment sets; the downward API's as the
    // kubelet would fill them.
    for e in container()["env"].as_array().expect("env") {
        let name = str_of(&e["name"], "env name");
        let value = match (&e["value"], &e["valueFrom"]["fieldRef"]["fieldPath"]) {
            (Value::String(v), _) => v.clone(),
            (_, Value::String(field)) if field == "metadata.name" => {
                "rollback-watchdog-7d9f8-abcde".into()
            }
            (_, Value::String(field)) if field == "metadata.namespace" => NAMESPACE.into(),
            _ => panic!("env {name} has neither a value nor a known fieldRef: {e}"),
        };
        cmd.env(name, value);
    }
    cmd.env("ROLLBACK_WATCHDOG_CONFIG", &path);
    let out = run(&mut cmd, "");
    assert!(
        out.ok,
        "check-config rejects the in-cluster config:\n{}",
        out.stderr
    );
    let effective: toml::Value = toml::from_str(&out.stdout).expect("check-config prints TOML");
    assert_eq!(effective["watchdog"]["namespace"].as_str(), Some(NAMESPACE));
    assert_eq!(effective["admin"]["listen"].as_str(), Some("0.0.0.0:8080"));
    assert_eq!(
        effective["leader_election"]["enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(
        effective["leader_election"]["lease_name"].as_str(),
        Some("rollback-watchdog")
    );
}

#[test]
fn two_replicas_run_non_root_on_a_read_only_root_with_nothing_to_escalate() {
    assert_eq!(deployment()["spec"]["replicas"], 2);
    let pod = &pod_spec()["securityContext"];
    let c = &container()["securityContext"];
    assert_eq!(pod["runAsNonRoot"], true);
    assert_eq!(pod["runAsUser"], 65532);
    assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(c["runAsNonRoot"], true);
    assert_eq!(c["runAsUser"], 65532);
    assert_eq!(c["readOnlyRootFilesystem"], true);
    assert_eq!(c["allowPrivilegeEscalation"], false);
    assert_eq!(c["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(
        c["capabilities"]["add"].is_null(),
        "no capability is added back"
    );
    assert_eq!(c["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod_spec()["serviceAccountName"], NAMESPACE);
    let resources = &container()["resources"];
    assert!(
        resources["requests"]["cpu"].is_string() && resources["requests"]["memory"].is_string()
    );
    assert!(resources["limits"]["memory"].is_string());
    // No service-link variables in the watchdog's environment (the loader
    // skips them, see config::is_service_link, but nothing needs them).
    assert_eq!(pod_spec()["enableServiceLinks"], false);
}

#[test]
fn probes_ask_livez_and_readyz_on_the_port_the_config_listens_on() {
    let listen = config()["admin"]["listen"]
        .as_str()
        .expect("admin.listen")
        .to_owned();
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin.listen has a port");
    assert!(
        listen.starts_with("0.0.0.0:"),
        "admin.listen {listen} is not reachable from the kubelet"
    );
    let ports = container()["ports"].as_array().expect("ports");
    let admin = ports
        .iter()
        .find(|p| p["name"] == "admin")
        .expect("a port named admin");
    assert_eq!(admin["containerPort"], port);
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/readyz")] {
        let get = &container()[probe]["httpGet"];
        assert_eq!(get["path"], path, "{probe}");
        assert!(
            get["port"] == "admin" || get["port"] == port,
            "{probe} asks port {}, not the admin port",
            get["port"]
        );
    }
    // The Service exposes the same port for Prometheus.
    let service = one(base(), "Service");
    let sp = &service["spec"]["ports"][0];
    assert!(sp["name"] == "admin" || sp["name"] == "metrics");
    assert!(sp["targetPort"] == "admin" || sp["targetPort"] == port);
    assert!(labels_match(
        &service["spec"]["selector"],
        &deployment()["spec"]["template"]["metadata"]["labels"]
    ));
}

#[test]
fn each_pod_knows_its_name_and_namespace_from_the_downward_api() {
    assert_eq!(
        env_value("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(
        env_value("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
}

#[test]
fn the_audit_log_is_written_to_an_emptydir_and_the_webhook_url_comes_from_the_secret() {
    let config = config();
    let audit = config["watchdog"]["audit_log"]
        .as_str()
        .expect("watchdog.audit_log");
    let (volume, mount) = mount_of(audit);
    assert!(
        volume["emptyDir"].is_object(),
        "{audit} is not on an emptyDir (the root filesystem is read-only): {volume}"
    );
    assert_ne!(
        mount["readOnly"], true,
        "the audit log's directory is mounted read-only"
    );

    // Every url_file / secret_file of [[notify]] is an item of a Secret in
    // the config volume, and the example Secret carries that key.
    let example = yaml_docs(
        &std::fs::read_to_string(repo().join("deploy/secret.example.yaml"))
            .expect("deploy/secret.example.yaml"),
    );
    let example = &example[0];
    let mut files = 0;
    for sink in config["notify"].as_array().expect("[[notify]]") {
        for key in ["url_file", "secret_file"] {
            let Some(file) = sink.get(key).and_then(|f| f.as_str()) else {
                continue;
            };
            files += 1;
            let (volume, _) = mount_of(file);
            let name = Path::new(file)
                .file_name()
                .and_then(|f| f.to_str())
                .expect("file name");
            let secret = volume["projected"]["sources"]
                .as_array()
                .expect("projected sources")
                .iter()
                .find(|s| {
                    s["secret"]["items"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i["path"] == name))
                })
                .unwrap_or_else(|| {
                    panic!("{key} {file} is not an item of a Secret in the config volume")
                });
            assert_eq!(example["metadata"]["name"], secret["secret"]["name"]);
            assert_eq!(example["metadata"]["namespace"], NAMESPACE);
            let item = secret["secret"]["items"]
                .as_array()
                .expect("items")
                .iter()
                .find(|i| i["path"] == name)
                .expect("the item");
            let key = str_of(&item["key"], "item key");
            assert!(
                example["stringData"][key].is_string(),
                "deploy/secret.example.yaml has no {key}"
            );
        }
    }
    assert!(files > 0, "the config reads no secret from a file");
    // The example Secret is not applied with the base: no URL is committed.
    assert!(
        all_of(base(), "Secret").is_empty(),
        "the base renders a Secret"
    );
}

#[test]
fn sigterm_leaves_time_for_the_configured_shutdown_grace() {
    let grace = humantime::parse_duration(
        config()["watchdog"]["shutdown_grace"]
            .as_str()
            .expect("shutdown_grace"),
    )
    .expect("a duration");
    let renew_deadline = humantime::parse_duration(
        config()["leader_election"]["renew_deadline"]
            .as_str()
            .expect("renew_deadline"),
    )
    .expect("a duration");
    let termination = pod_spec()["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    // The running step and the queued notifications share shutdown_grace;
    // releasing the Lease is a read and a write, each bounded by
    // renew_deadline (the README's sizing rule).
    let needed = grace + renew_deadline * 2 + Duration::from_secs(5);
    assert!(
        Duration::from_secs(termination) >= needed,
        "terminationGracePeriodSeconds {termination} is less than shutdown_grace {grace:?} + 2 × renew_deadline {renew_deadline:?} + 5 s"
    );
}

#[test]
fn a_drain_or_a_lost_node_leaves_one_replica() {
    let labels = &deployment()["spec"]["template"]["metadata"]["labels"];
    let pdb = one(base(), "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        labels
    ));
    let terms = pod_spec()["affinity"]["podAntiAffinity"]
        ["preferredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .expect("preferred pod anti-affinity");
    assert!(terms.iter().any(|t| {
        let term = &t["podAffinityTerm"];
        term["topologyKey"] == "kubernetes.io/hostname"
            && labels_match(&term["labelSelector"]["matchLabels"], labels)
    }));
}

/// Whether a NetworkPolicy rule list lets `port/protocol` through to (or
/// from) `namespace` (`None`: outside the cluster, known by no selector).
fn allows(
    rules: &Value,
    peer_key: &str,
    namespace: Option<&str>,
    port: u16,
    protocol: &str,
) -> bool {
    rules.as_array().into_iter().flatten().any(|rule| {
        let ports_ok = match rule["ports"].as_array() {
            None => true,
            Some(ports) => ports.iter().any(|p| {
                p["port"] == port
                    && (p["protocol"] == protocol || (p["protocol"].is_null() && protocol == "TCP"))
            }),
        };
        let peer_ok = match rule[peer_key].as_array() {
            None => true,
            Some(peers) if peers.is_empty() => true,
            Some(peers) => peers.iter().any(|peer| {
                peer["podSelector"].is_null()
                    && namespace.is_some_and(|ns| {
                        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
                            == ns
                    })
            }),
        };
        ports_ok && peer_ok
    })
}

/// The namespace of an in-cluster host name (`svc.ns.svc[.cluster.local]`).
fn namespace_of(host: &str) -> Option<String> {
    let parts: Vec<&str> = host.split('.').collect();
    match parts.as_slice() {
        [_, ns, "svc", ..] => Some((*ns).to_owned()),
        _ => None,
    }
}

fn url_endpoint(raw: &str) -> (Option<String>, u16) {
    let url = url::Url::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"));
    let host = url.host_str().expect("a host").to_owned();
    (
        namespace_of(&host),
        url.port_or_known_default().expect("a port"),
    )
}

#[test]
fn the_network_policy_lets_through_everything_the_config_talks_to() {
    let policy = one(base(), "NetworkPolicy");
    let labels = &deployment()["spec"]["template"]["metadata"]["labels"];
    assert!(labels_match(
        &policy["spec"]["podSelector"]["matchLabels"],
        labels
    ));
    let egress = &policy["spec"]["egress"];
    let out = |ns: Option<&str>, port: u16, proto: &str| allows(egress, "to", ns, port, proto);

    assert!(out(None, 53, "UDP") && out(None, 53, "TCP"), "DNS");
    assert!(
        out(None, 443, "TCP") && out(None, 6443, "TCP"),
        "the API server"
    );
    let config = config();
    let mut checked = Vec::new();
    let (ns, port) = url_endpoint(
        config["prometheus"]["url"]
            .as_str()
            .expect("prometheus.url"),
    );
    assert!(
        out(ns.as_deref(), port, "TCP"),
        "Prometheus at {ns:?}:{port}"
    );
    checked.push(format!("prometheus {ns:?}:{port}"));
    // A health probe this policy dropped would time out, and a timeout is
    // a failing health check: the watchdog would roll back a good release.
    for target in config["targets"].as_array().expect("[[targets]]") {
        let namespace = target["namespace"].as_str().expect("target namespace");
        let health = &target["health"];
        let mut urls: Vec<&str> = Vec::new();
        for key in ["url", "version_url"] {
            urls.extend(health.get(key).and_then(|u| u.as_str()));
        }
        urls.extend(
            health
                .get("urls")
                .and_then(|u| u.as_array())
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str()),
        );
        for raw in urls {
            let filled = raw.replace("{namespace}", namespace);
            let (ns, port) = url_endpoint(&filled);
            assert!(
                out(ns.as_deref(), port, "TCP"),
                "health URL {raw} ({ns:?}:{port}) is blocked"
            );
            checked.push(raw.to_owned());
        }
        if let Some(port) = health
            .get("per_pod")
            .and_then(|p| p.get("port"))
            .and_then(|p| p.as_integer())
        {
            let port = u16::try_from(port).expect("a port");
            assert!(
                out(Some(namespace), port, "TCP"),
                "per-pod probes to {namespace}:{port} are blocked"
            );
            checked.push(format!("per_pod {namespace}:{port}"));
        }
    }
    // Webhook receivers are outside the cluster, over https.
    assert!(out(None, 443, "TCP"), "the webhook hosts");
    assert!(
        checked.len() >= 4,
        "the config gave too little to check: {checked:?}"
    );

    // Prometheus in `monitoring` scrapes the admin port; nobody else gets in.
    let ingress = &policy["spec"]["ingress"];
    assert!(allows(ingress, "from", Some("monitoring"), 8080, "TCP"));
    assert!(!allows(ingress, "from", Some("production"), 8080, "TCP"));
    assert!(!allows(ingress, "from", None, 8080, "TCP"));
    assert!(policy["spec"]["policyTypes"]
        .as_array()
        .is_some_and(|t| t.contains(&"Ingress".into()) && t.contains(&"Egress".into())));
}

#[test]
fn the_rbac_grants_no_access_to_secrets_and_no_wildcards() {
    let roles: Vec<&Value> = base()
        .iter()
        .filter(|o| o["kind"] == "Role" || o["kind"] == "ClusterRole")
        .collect();
    assert!(!roles.is_empty(), "the base renders no Role or ClusterRole");
    for role in roles {
        let name = format!("{} {}", role["kind"], role["metadata"]["name"]);
        for rule in role["rules"].as_array().into_iter().flatten() {
            let list = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            for key in ["resources", "verbs", "apiGroups"] {
                assert!(
                    !list(key).contains(&"*".to_owned()),
                    "{name} has a wildcard in {key}"
                );
            }
            assert!(
                !list("resources").contains(&"secrets".to_owned()),
                "{name} grants access to secrets"
            );
        }
    }
}

#[test]
fn prometheus_scrapes_the_admin_port_of_both_replicas() {
    let service = one(base(), "Service");
    let monitor = one(monitoring(), "ServiceMonitor");
    assert!(labels_match(
        &monitor["spec"]["selector"]["matchLabels"],
        &service["metadata"]["labels"]
    ));
    assert!(monitor["spec"]["namespaceSelector"]["matchNames"]
        .as_array()
        .is_some_and(|n| n.contains(&NAMESPACE.into())));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(service["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .any(|p| p["name"] == endpoint["port"]));
    assert_eq!(endpoint["path"], "/metrics");
    // The job label is the Service's name: every alert selects on it.
    let job = format!("job=\"{}\"", str_of(&service["metadata"]["name"], "name"));
    for expr in alert_exprs(&one(monitoring(), "PrometheusRule")["spec"]) {
        assert!(
            expr.contains(&job),
            "alert expression without {job}: {expr}"
        );
    }
}

fn promtool(dir: &Path, args: &[&str]) -> Out {
    run(Command::new("promtool").args(args).current_dir(dir), "")
}

#[test]
fn the_alerts_fire_on_the_watchdogs_own_failures_and_stay_quiet_when_it_is_healthy() {
    let rule = one(monitoring(), "PrometheusRule");
    let dir = tempfile::tempdir().expect("temp dir");
    // JSON is YAML: the PrometheusRule's spec is a plain rules file.
    let mut spec = rule["spec"].clone();
    std::fs::write(dir.path().join("checked.yaml"), spec.to_string()).expect("write rules");
    let out = promtool(dir.path(), &["check", "rules", "checked.yaml"]);
    assert!(
        out.ok,
        "promtool check rules:\n{}{}",
        out.stdout, out.stderr
    );

    // The unit tests compare labels; annotations (already checked above as
    // templates) would only make them repeat every sentence.
    for group in spec["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            rule.as_object_mut().expect("a rule").remove("annotations");
        }
    }
    std::fs::write(dir.path().join("rules.yaml"), spec.to_string()).expect("write rules");
    std::fs::copy(
        repo().join("tests/deploy_alerts.promtool.yaml"),
        dir.path().join("alerts_test.yaml"),
    )
    .expect("copy the alert tests");
    let out = promtool(dir.path(), &["test", "rules", "alerts_test.yaml"]);
    assert!(out.ok, "promtool test rules:\n{}{}", out.stdout, out.stderr);

    // Every alert has a test in which it fires.
    let tests = yaml_docs(
        &std::fs::read_to_string(repo().join("tests/deploy_alerts.promtool.yaml"))
            .expect("alert tests"),
    );
    let firing: BTreeSet<&str> = tests[0]["tests"]
        .as_array()
        .expect("tests")
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_array().into_iter().flatten())
        .filter(|a| a["exp_alerts"].as_array().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str())
        .collect();
    for name in alert_names(&spec) {
        assert!(
            firing.contains(name.as_str()),
            "alert {name} has no test in which it fires"
        );
    }
}

fn alert_names(spec: &Value) -> Vec<String> {
    spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| str_of(&r["alert"], "alert").to_owned())
        .collect()
}

fn alert_exprs(spec: &Value) -> Vec<String> {
    spec["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
        .map(|r| str_of(&r["expr"], "expr").to_owned())
        .collect()
}

/// The sample names `/metrics` can carry, from the watchdog's own registry.
fn exported_metric_names() -> BTreeSet<String> {
    use rollback_watchdog::report::metrics::{
        Metrics, SignalLabels, SignalResultLabels, SinkOutcome, TargetOutcome, TargetResult,
    };
    let (metrics, registry) = Metrics::new();
    // A labelled family appears in /metrics with its first series: give
    // each one, as a tick, a rollback and a notification would.
    let (target, signal) = ("production/web".to_owned(), "error_rate".to_owned());
    metrics
        .evaluations
        .get_or_create(&TargetResult {
            target: target.clone(),
            result: "bad".into(),
        })
        .inc();
    metrics
        .signal_results
        .get_or_create(&SignalResultLabels {
            signal: signal.clone(),
            result: "fail".into(),
        })
        .inc();
    metrics
        .signal_query_seconds
        .get_or_create(&SignalLabels { signal })
        .observe(0.1);
    metrics
        .rollbacks
        .get_or_create(&TargetOutcome {
            target: target.clone(),
            outcome: "succeeded".into(),
        })
        .inc();
    metrics
        .notifications
        .get_or_create(&SinkOutcome {
            sink: "oncall-slack".into(),
            outcome: "delivered".into(),
        })
        .inc();
    metrics.set_verdict(
        &target,
        rollback_watchdog::report::status::StatusVerdict::Bad,
    );
    let text = rollback_watchdog::report::metrics::render(
        &registry,
        rollback_watchdog::report::metrics::Format::OpenMetrics,
    );
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("#") || words.next() != Some("TYPE") {
            continue;
        }
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    assert!(names.len() > 10, "the registry rendered only {names:?}");
    names
}

fn metric_names_in(text: &str) -> BTreeSet<String> {
    let re = regex::Regex::new(r"rollback_watchdog_[a-z_]+").expect("regex");
    re.find_iter(text).map(|m| m.as_str().to_owned()).collect()
}

#[test]
fn alerts_and_dashboard_use_only_metrics_the_watchdog_exports() {
    let exported = exported_metric_names();
    let rules = alert_exprs(&one(monitoring(), "PrometheusRule")["spec"]).join("\n");
    let dashboard_cm = one(monitoring(), "ConfigMap");
    assert_eq!(dashboard_cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard_text = str_of(&dashboard_cm["data"]["grafana-dashboard.json"], "dashboard");
    let dashboard: Value = serde_json::from_str(dashboard_text).expect("the dashboard is JSON");

    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            exprs.push(str_of(&target["expr"], "expr").to_owned());
        }
    }
    assert!(
        exprs.len() >= 10,
        "the dashboard has only {} queries",
        exprs.len()
    );
    let used: BTreeSet<String> = metric_names_in(&rules)
        .into_iter()
        .chain(exprs.iter().flat_map(|e| metric_names_in(e)))
        .collect();
    let unknown: Vec<&String> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "not exported by the watchdog: {unknown:?} (it exports {exported:?})"
    );
    for name in [
        "rollback_watchdog_leader",
        "rollback_watchdog_rollbacks_total",
        "rollback_watchdog_last_tick_timestamp_seconds",
        "rollback_watchdog_signal_results_total",
        "rollback_watchdog_notifications_total",
    ] {
        assert!(rules.contains(name), "no alert uses {name}");
    }

    // Every dashboard query is valid PromQL: promtool parses them as
    // recording rules ($__range is Grafana's; any range does here).
    let rules: Vec<Value> = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| serde_json::json!({"record": format!("dashboard:query_{i}"), "expr": e.replace("$__range", "1h")}))
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = serde_json::json!({"groups": [{"name": "dashboard", "rules": rules}]});
    std::fs::write(dir.path().join("dashboard.yaml"), file.to_string()).expect("write");
    let out = promtool(dir.path(), &["check", "rules", "dashboard.yaml"]);
    assert!(
        out.ok,
        "a dashboard query is not valid PromQL:\n{}{}",
        out.stdout, out.stderr
    );
}

#[test]
fn the_image_runs_the_static_build_as_the_uid_the_pod_requires() {
    let dockerfile =
        std::fs::read_to_string(repo().join("deploy/Dockerfile")).expect("deploy/Dockerfile");
    let last_stage = dockerfile.rsplit("\nFROM ").next().expect("a FROM line");
    assert!(
        last_stage.starts_with("gcr.io/distroless/static") || last_stage.starts_with("scratch"),
        "the image is not distroless/static or scratch: FROM {}",
        last_stage.lines().next().unwrap_or_default()
    );
    let user = last_stage
        .lines()
        .find_map(|l| l.strip_prefix("USER "))
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap_or_default();
    assert_eq!(
        pod_spec()["securityContext"]["runAsUser"].to_string(),
        uid,
        "the pod's runAsUser is not the image's USER"
    );
    // The image is built by the script deploy/check-static.sh checks.
    assert!(dockerfile.contains("sh deploy/build-static.sh"));
    let check =
        std::fs::read_to_string(repo().join("deploy/check-static.sh")).expect("check-static.sh");
    assert!(check.contains("sh deploy/build-static.sh"));
    let build =
        std::fs::read_to_string(repo().join("deploy/build-static.sh")).expect("build-static.sh");
    assert!(build.contains("+crt-static") && build.contains("--locked"));
}

#[test]
fn with_the_kube_prometheus_stack_overlay_its_prometheus_selects_the_monitor_and_the_rules() {
    let stack = kustomize("deploy/kube-prometheus-stack/");
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let plain = one(monitoring(), kind);
        let labelled = one(&stack, kind);
        assert_eq!(
            labelled["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{kind} of deploy/kube-prometheus-stack/ has no release label"
        );
        // The component adds the label and changes nothing else.
        let mut without = labelled.clone();
        without["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("release");
        assert_eq!(
            &without, plain,
            "the component changed more of {kind} than its labels"
        );
        assert!(
            plain["metadata"]["labels"].get("release").is_none(),
            "deploy/monitoring/ itself should not guess a release name"
        );
    }
    // The dashboard ConfigMap comes along unchanged.
    assert_eq!(one(&stack, "ConfigMap"), one(monitoring(), "ConfigMap"));
}

#[test]
fn every_alert_links_to_the_readme_section_that_says_what_to_do() {
    let readme =
        std::fs::read_to_string(repo().join("deploy/README.md")).expect("deploy/README.md");
    let rule = one(monitoring(), "PrometheusRule");
    let mut alerts = 0;
    for r in rule["spec"]["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|g| g["rules"].as_array().expect("rules"))
    {
        let Some(alert) = r["alert"].as_str() else {
            continue;
        };
        alerts += 1;
        let url = str_of(&r["annotations"]["runbook_url"], "runbook_url");
        let anchor = url
            .strip_prefix("https://")
            .and_then(|u| u.split_once("/deploy/README.md#"))
            .map(|(_, anchor)| anchor)
            .unwrap_or_else(|| {
                panic!("{alert}: runbook_url {url} is not a link to deploy/README.md#...")
            });
        assert_eq!(anchor, alert.to_lowercase(), "{alert}: wrong anchor");
        // GitHub's anchor for `### RollbackWatchdogDown` is #rollbackwatchdogdown.
        let heading = format!("\n### {alert}\n");
        let section = readme
            .split_once(&heading)
            .map(|(_, rest)| rest.split("\n#").next().unwrap_or(rest))
            .unwrap_or_else(|| panic!("deploy/README.md has no section {heading:?}"));
        assert!(
            section.contains("rollback-watchdog ") || section.contains("kubectl "),
            "the README section for {alert} names no command to run:\n{section}"
        );
    }
    assert!(alerts >= 10, "only {alerts} alerts");
}

#[test]
fn the_dashboard_selects_by_cluster_and_namespace_not_by_a_fixed_job() {
    let dashboard_cm = one(monitoring(), "ConfigMap");
    let text = str_of(&dashboard_cm["data"]["grafana-dashboard.json"], "dashboard");
    let dashboard: Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let variables: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(
        variables.contains(&"cluster") && variables.contains(&"namespace"),
        "variables: {variables:?}"
    );
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = str_of(&target["expr"], "expr");
            assert!(!expr.contains("job="), "hard-coded job in {expr}");
            assert!(
                expr.contains("cluster=~\"$cluster\"")
                    && expr.contains("namespace=~\"$namespace\""),
                "a query that ignores the cluster and namespace variables: {expr}"
            );
        }
    }
}

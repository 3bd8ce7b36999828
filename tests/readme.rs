//! The README is the user's reference: every config key the built-in
//! defaults or the example config know must be documented in it, and the
//! commands it gives must exist.

use std::collections::BTreeSet;

fn keys(prefix: &str, value: &toml::Value, out: &mut BTreeSet<String>) {
    match value {
        toml::Value::Table(table) => {
            for (k, v) in table {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                // Tables of user-chosen names (headers) and inline tables
                // documented as one key (per_pod) end the walk.
                if v.is_table() && k != "headers" && k != "per_pod" {
                    keys(&path, v, out);
                } else {
                    if v.is_array() {
                        keys(&path, v, out);
                    }
                    out.insert(path);
                }
            }
        }
        toml::Value::Array(items) => {
            for item in items {
                if item.is_table() {
                    keys(prefix, item, out);
                }
            }
        }
        _ => {}
    }
}

/// How a key is written in the README's reference tables: `[watchdog]`,
/// `[prometheus]`... keys with their section; `[defaults]` and per-target
/// keys without it.
fn documented_name(path: &str) -> String {
    for scope in ["defaults.", "targets."] {
        if let Some(rest) = path.strip_prefix(scope) {
            return rest.to_string();
        }
    }
    if let Some(rest) = path.strip_prefix("notify.") {
        return rest.to_string();
    }
    path.to_string()
}

#[test]
fn every_config_key_is_in_the_readme_reference() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let mut all = BTreeSet::new();
    for file in ["src/config/builtin.toml", "config/watchdog.toml"] {
        let text = std::fs::read_to_string(file).expect("config file");
        let value: toml::Value = toml::from_str(&text).expect("valid TOML");
        keys("", &value, &mut all);
    }
    let missing: Vec<String> = all
        .iter()
        .map(|k| documented_name(k))
        .filter(|name| {
            let leaf = name.rsplit('.').next().unwrap_or(name);
            !readme.contains(&format!("`{name}`")) && !readme.contains(&format!("`{leaf}`"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from README.md: {missing:?}"
    );
    assert!(all.len() > 60, "the walk found only {} keys", all.len());
}

#[test]
fn the_readme_gives_the_test_command_ci_runs() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    assert!(readme.contains("bash .ci/run"));
    assert!(readme.contains("cargo test --all-targets"));
    assert!(ci.contains("cargo test --all-targets"));
}

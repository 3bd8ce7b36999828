//! The READMEs: the user's (`README.md`) and the reference next to what it
//! documents (`config/`, `deploy/`, `tests/`). Every config key the built-in
//! defaults or the example config know must be in `config/README.md`'s
//! reference, the commands the README gives must exist, and no relative link
//! in the four may point at a file or heading that is not there.

use std::collections::BTreeSet;
use std::path::Path;

/// The user's README and the three next to what they document.
const READMES: [&str; 4] = [
    "README.md",
    "config/README.md",
    "deploy/README.md",
    "tests/README.md",
];

fn read(path: impl AsRef<Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

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

/// How a key is written in `config/README.md`'s reference tables: `[watchdog]`,
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
fn every_config_key_is_in_the_config_reference() {
    let readme = read("config/README.md");
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
        "keys missing from config/README.md: {missing:?}"
    );
    assert!(all.len() > 60, "the walk found only {} keys", all.len());
}

#[test]
fn the_readme_gives_the_test_command_ci_runs() {
    let readme = std::fs::read_to_string("README.md").expect("README.md");
    let ci = std::fs::read_to_string(".ci/run").expect(".ci/run");
    assert!(readme.contains("bash .ci/run"));
    // The very command line .ci/run runs, flags and all, stands in the README.
    let command = ci
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo test "))
        .expect(".ci/run runs cargo test");
    assert!(
        readme.lines().any(|l| l.trim() == command),
        "README.md does not give .ci/run's test command `{command}`"
    );
}

/// The markdown outside fenced code blocks (a `# comment` in a shell block is
/// not a heading, a link in one is not a link).
fn prose(text: &str) -> String {
    let mut fenced = false;
    let mut out = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The anchors GitHub gives a file's headings: lower case, a space becomes
/// `-`, other punctuation is dropped, a repeated one gets `-1`, `-2`...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for line in prose(text).lines() {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) {
            continue;
        }
        let Some(heading) = line[hashes..].strip_prefix(' ') else {
            continue;
        };
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let mut anchor = slug.clone();
        let mut n = 0;
        while !seen.insert(anchor.clone()) {
            n += 1;
            anchor = format!("{slug}-{n}");
        }
    }
    seen
}

/// The targets of the inline links `[text](target)` outside code, and of
/// reference definitions `[label]: target`.
fn link_targets(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    // Code spans, which may run over a line break, are the odd pieces.
    for piece in prose.split('`').step_by(2) {
        let mut rest = piece;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let end = rest.find(')').unwrap_or(rest.len());
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            out.push(target.to_string());
            rest = &rest[end..];
        }
        for line in piece.lines() {
            if let Some((label, target)) = line.trim_start().split_once("]: ") {
                if label.starts_with('[') && !label.contains(']') {
                    out.push(target.trim().to_string());
                }
            }
        }
    }
    out
}

/// What is wrong with each relative link of `readme`, if anything.
fn broken_links(readme: &str, text: &str) -> Vec<String> {
    let dir = Path::new(readme).parent().unwrap_or(Path::new(""));
    let mut broken = Vec::new();
    for target in link_targets(text) {
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, fragment) = match target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (target.as_str(), None),
        };
        let file = if path.is_empty() {
            Path::new(readme).to_path_buf()
        } else {
            dir.join(path)
        };
        if (path.is_empty() && fragment.is_none()) || !file.exists() {
            broken.push(format!("{readme}: ({target}): no file {}", file.display()));
            continue;
        }
        let Some(fragment) = fragment else { continue };
        if file.extension().is_some_and(|ext| ext == "md") {
            let headings = if path.is_empty() {
                anchors(text)
            } else {
                anchors(&read(&file))
            };
            if !headings.contains(fragment) {
                broken.push(format!(
                    "{readme}: ({target}): no heading #{fragment} in {}",
                    file.display()
                ));
            }
        }
    }
    broken
}

#[test]
fn every_relative_link_in_the_readmes_resolves() {
    let mut broken = Vec::new();
    let mut links = 0;
    for readme in READMES {
        let text = read(readme);
        links += link_targets(&text).len();
        broken.extend(broken_links(readme, &text));
    }
    assert!(
        broken.is_empty(),
        "links to nothing (a moved file or a renamed heading?):\n{}",
        broken.join("\n")
    );
    assert!(links > 20, "the scan found only {links} links");
}

#[test]
fn the_link_check_finds_a_broken_link() {
    let text = "# Moved here\n\n[ok](#moved-here) [gone](config/NOPE.md) \
                [no heading](config/README.md#nope) [site](https://example.com)\n\
                `[code](not/a/link.md)`\n```sh\n# [x](not/a/link.md)\n```\n";
    let broken = broken_links("README.md", text);
    assert_eq!(broken.len(), 2, "{broken:#?}");
    assert!(broken[0].contains("config/NOPE.md"), "{broken:#?}");
    assert!(broken[1].contains("no heading #nope"), "{broken:#?}");
}

//! Credentials written into a URL (`https://user:token@host/`, common for
//! hosted Prometheus and for webhooks behind basic auth) never stay in it.
//!
//! They are taken out when the config is loaded (or, for a notification
//! URL read from a file or the environment, when the request is built) and
//! kept as a [`Secret`] holding the `Authorization: Basic ...` value, which
//! is sent as a sensitive header. What is left is the URL every message,
//! reason, Event, audit line and log shows. Never: a URL with its userinfo
//! in an error, a reason or a log line.

use base64::Engine as _;
use percent_encoding::percent_decode_str;
use reqwest::header::HeaderValue;

use super::Secret;

/// The certificates of the PEM CA bundle at `path` (a `ca_file` key), read
/// once when a client is built; the error says what is wrong, for a
/// message that names the key.
pub fn ca_bundle(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("not a PEM certificate bundle: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// Takes the userinfo out of `url` and returns it as the value of an
/// `Authorization: Basic ...` header; `None` when the URL has none.
pub fn take_userinfo(url: &mut url::Url) -> Option<Secret> {
    if url.username().is_empty() && url.password().is_none() {
        return None;
    }
    let auth = basic(url.username(), url.password().unwrap_or(""));
    // Both only fail for URLs that cannot have a host (`mailto:`), which
    // could not have carried userinfo either.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    Some(auth)
}

/// The same for URL text that is not a URL yet (a template with
/// placeholders): returns the text without its userinfo, and the header
/// value when it had one.
pub fn split_userinfo(text: &str) -> (String, Option<Secret>) {
    let Some(scheme_end) = text.find("://") else {
        return (text.to_owned(), None);
    };
    let start = scheme_end + 3;
    let authority_len = text[start..]
        .find(['/', '?', '#'])
        .unwrap_or(text.len() - start);
    let authority = &text[start..start + authority_len];
    let Some(at) = authority.rfind('@') else {
        return (text.to_owned(), None);
    };
    let userinfo = &authority[..at];
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let stripped = format!("{}{}", &text[..start], &text[start + at + 1..]);
    (stripped, Some(basic(user, password)))
}

/// `text` as it may be shown: without userinfo.
pub fn shown(text: &str) -> String {
    split_userinfo(text).0
}

/// The header to send, marked sensitive so that no debug output of a
/// request or a header map prints it. `None` only if the decoded userinfo
/// holds bytes a header cannot carry.
pub fn authorization_header(auth: &Secret) -> Option<HeaderValue> {
    let mut value = HeaderValue::from_str(auth.expose()).ok()?;
    value.set_sensitive(true);
    Some(value)
}

fn basic(user: &str, password: &str) -> Secret {
    let user = percent_decode_str(user).decode_utf8_lossy();
    let password = percent_decode_str(password).decode_utf8_lossy();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Secret::new(format!("Basic {encoded}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_leaves_the_url_and_becomes_a_basic_header() {
        let mut url = url::Url::parse("https://user:t%40ken@prom.example.com/api").unwrap();
        let auth = take_userinfo(&mut url).unwrap();
        assert_eq!(url.as_str(), "https://prom.example.com/api");
        // base64("user:t@ken")
        assert_eq!(auth.expose(), "Basic dXNlcjp0QGtlbg==");
        assert!(authorization_header(&auth).unwrap().is_sensitive());
    }

    #[test]
    fn a_url_without_userinfo_is_left_alone() {
        let mut url = url::Url::parse("http://127.0.0.1:9090").unwrap();
        assert!(take_userinfo(&mut url).is_none());
        assert_eq!(url.as_str(), "http://127.0.0.1:9090/");
    }

    #[test]
    fn templates_lose_their_userinfo_but_keep_placeholders_and_at_signs_in_paths() {
        let (text, auth) = split_userinfo("http://probe:SECRET@{pod_ip}:8080/u/@me?x=a@b");
        assert_eq!(text, "http://{pod_ip}:8080/u/@me?x=a@b");
        // base64("probe:SECRET")
        assert_eq!(auth.unwrap().expose(), "Basic cHJvYmU6U0VDUkVU");
        let (text, auth) = split_userinfo("http://{service}/@healthz");
        assert_eq!(text, "http://{service}/@healthz");
        assert!(auth.is_none());
        assert_eq!(shown("not a url user:pw@host"), "not a url user:pw@host");
    }
}

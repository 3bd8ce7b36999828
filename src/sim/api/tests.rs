use super::filter::{field_matches, parse_field_selector};
use super::*;

#[test]
fn paths_route_to_kinds_namespaces_and_subresources() {
    let t = |p: &str| match route(p) {
        Ok(Route::Resource(t)) => Some((
            t.kind.plural,
            t.namespace.unwrap_or_default(),
            t.name.unwrap_or_default(),
            t.sub.unwrap_or_default(),
        )),
        _ => None,
    };
    let own = |a: &'static str, b: &str, c: &str, d: &str| {
        Some((a, b.to_string(), c.to_string(), d.to_string()))
    };
    assert_eq!(t("/api/v1/namespaces"), own("namespaces", "", "", ""));
    assert_eq!(
        t("/api/v1/namespaces/prod"),
        own("namespaces", "", "prod", "")
    );
    assert_eq!(
        t("/api/v1/namespaces/prod/status"),
        own("namespaces", "", "prod", "status")
    );
    assert_eq!(
        t("/api/v1/namespaces/prod/pods"),
        own("pods", "prod", "", "")
    );
    assert_eq!(
        t("/apis/apps/v1/namespaces/prod/deployments/web/scale"),
        own("deployments", "prod", "web", "scale")
    );
    assert_eq!(
        t("/apis/apps/v1/deployments"),
        own("deployments", "", "", "")
    );
    assert_eq!(t("/apis/apps/v1/deployments/web"), None);
    assert_eq!(
        t("/apis/apps/v1/namespaces/prod/deployments/web/logs"),
        None
    );
    assert_eq!(t("/apis/nope/v1/things"), None);
}

#[test]
fn field_selectors_compare_dotted_paths() {
    let obj = json!({"metadata": {"name": "a", "namespace": "n"}, "status": {"phase": "Running"}});
    let m = |s: &str| {
        parse_field_selector(s)
            .map(|r| field_matches(&r, &obj))
            .ok()
    };
    assert_eq!(m("metadata.name=a"), Some(true));
    assert_eq!(m("metadata.name==b"), Some(false));
    assert_eq!(m("metadata.name!=b,metadata.namespace=n"), Some(true));
    assert_eq!(m("status.phase=Running"), Some(true));
    assert_eq!(m("nonsense"), None);
}

//! The simulated API server as the watchdog's real `kube` client sees it:
//! CRUD and its errors, the three patch formats, selectors, watches that
//! survive a relist, and access reviews that match what is enforced.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::SelfSubjectAccessReview;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client};
use rollback_watchdog::sim::{AccessRule, SimCluster, SimOptions};
use serde_json::json;

const NS: &str = "production";

async fn sim() -> (SimCluster, Client) {
    // The API alone: these tests write objects by hand, which the
    // controllers would otherwise reconcile.
    let sim = SimCluster::start(SimOptions {
        seed: true,
        api_only: true,
        ..Default::default()
    })
    .await
    .expect("the sim starts");
    let client = sim.client().await.expect("a client for the sim");
    (sim, client)
}

fn api_error(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn configmap(name: &str, labels: serde_json::Value) -> ConfigMap {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "data": {"k": "v"}
    }))
    .expect("a valid ConfigMap")
}

fn deployment(name: &str) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [
                    {"name": "app", "image": format!("{name}:v1"),
                     "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "proxy", "image": "proxy:v1"}
                ]}
            }
        }
    }))
    .expect("a valid Deployment")
}

fn image_of(d: &Deployment, container: &str) -> Option<String> {
    d.spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .image
        .clone()
}

#[tokio::test]
async fn objects_are_created_read_replaced_and_deleted_with_api_errors_like_a_cluster() {
    let (_sim, client) = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();

    let created = cms
        .create(&pp, &configmap("settings", json!({})))
        .await
        .expect("create");
    let rv1 = created
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    assert!(!rv1.is_empty());
    assert!(created.metadata.uid.is_some());

    let (code, reason) = api_error(
        cms.create(&pp, &configmap("settings", json!({})))
            .await
            .expect_err("second create"),
    );
    assert_eq!((code, reason.as_str()), (409, "AlreadyExists"));

    let (code, reason) = api_error(cms.get("missing").await.expect_err("get missing"));
    assert_eq!((code, reason.as_str()), (404, "NotFound"));

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "v2".to_string())].into());
    let replaced = cms
        .replace("settings", &pp, &changed)
        .await
        .expect("replace");
    assert_ne!(replaced.metadata.resource_version, Some(rv1));
    // `changed` still carries the old resourceVersion: a stale write.
    let (code, reason) = api_error(
        cms.replace("settings", &pp, &changed)
            .await
            .expect_err("stale replace"),
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    let generated = cms
        .create(
            &pp,
            &serde_json::from_value(json!({"metadata": {"generateName": "backup-"}})).expect("cm"),
        )
        .await
        .expect("generateName");
    assert!(generated
        .metadata
        .name
        .is_some_and(|n| n.starts_with("backup-") && n.len() > 7));

    let list = cms.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 2);
    assert_eq!(
        list.metadata.resource_version,
        Some(_sim.store().revision().to_string())
    );

    cms.delete("settings", &DeleteParams::default())
        .await
        .expect("delete");
    let (code, _) = api_error(cms.get("settings").await.expect_err("gone"));
    assert_eq!(code, 404);
    let (code, _) = api_error(
        cms.delete("settings", &DeleteParams::default())
            .await
            .expect_err("delete twice"),
    );
    assert_eq!(code, 404);
}

#[tokio::test]
async fn json_patch_test_guards_the_resource_version_and_fails_with_422_when_stale() {
    let (_sim, client) = sim().await;
    let deploys: Api<Deployment> = Api::namespaced(client, NS);
    let d = deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");
    let rv = d.metadata.resource_version.clone().unwrap_or_default();
    let patch = |rv: &str, image: &str| -> json_patch::Patch {
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}
        ]))
        .expect("a JSON patch")
    };
    let pp = PatchParams::default();
    let patched = deploys
        .patch("web", &pp, &Patch::Json::<()>(patch(&rv, "web:v2")))
        .await
        .expect("the test holds");
    assert_eq!(image_of(&patched, "app").as_deref(), Some("web:v2"));
    assert_eq!(patched.metadata.generation, Some(2));

    let (code, reason) = api_error(
        deploys
            .patch("web", &pp, &Patch::Json::<()>(patch(&rv, "web:v3")))
            .await
            .expect_err("the test fails"),
    );
    assert_eq!((code, reason.as_str()), (422, "Invalid"));
    let now = deploys.get("web").await.expect("get");
    assert_eq!(image_of(&now, "app").as_deref(), Some("web:v2"));

    // A merge patch that carries a stale resourceVersion conflicts.
    let (code, _) = api_error(
        deploys
            .patch(
                "web",
                &pp,
                &Patch::Merge(
                    json!({"metadata": {"resourceVersion": rv, "annotations": {"a": "b"}}}),
                ),
            )
            .await
            .expect_err("stale merge patch"),
    );
    assert_eq!(code, 409);
}

#[tokio::test]
async fn merge_and_strategic_merge_patches_change_only_what_they_name() {
    let (_sim, client) = sim().await;
    let deploys: Api<Deployment> = Api::namespaced(client, NS);
    deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");
    let pp = PatchParams {
        field_manager: Some("rollback-watchdog".into()),
        ..Default::default()
    };

    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Merge(json!({"metadata": {"annotations": {"watchdog/last-good": "1"}}})),
        )
        .await
        .expect("merge patch");
    assert_eq!(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("watchdog/last-good"))
            .map(String::as_str),
        Some("1")
    );

    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {
                "$setElementOrder/containers": [{"name": "app"}, {"name": "proxy"}],
                "containers": [{"name": "app", "image": "web:v2",
                                "env": [{"name": "B", "value": "3"}]}]
            }}}})),
        )
        .await
        .expect("strategic merge patch");
    assert_eq!(image_of(&d, "app").as_deref(), Some("web:v2"));
    assert_eq!(image_of(&d, "proxy").as_deref(), Some("proxy:v1"));
    let env = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.containers[0].env.clone())
        .unwrap_or_default();
    let env: Vec<(String, Option<String>)> = env.into_iter().map(|e| (e.name, e.value)).collect();
    assert_eq!(
        env,
        vec![
            ("A".to_string(), Some("1".to_string())),
            ("B".to_string(), Some("3".to_string()))
        ]
    );

    let d = deploys
        .patch(
            "web",
            &pp,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {
                "containers": [{"$patch": "replace"}, {"name": "only", "image": "only:v1"}]
            }}}})),
        )
        .await
        .expect("$patch: replace");
    let names: Vec<String> = d
        .spec
        .and_then(|s| s.template.spec)
        .map(|s| s.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    assert_eq!(names, vec!["only".to_string()]);

    let (code, reason) = api_error(
        deploys
            .patch("web", &PatchParams::apply("x"), &Patch::Apply(json!({})))
            .await
            .expect_err("server-side apply"),
    );
    assert_eq!((code, reason.as_str()), (415, "UnsupportedMediaType"));
}

#[tokio::test]
async fn label_and_field_selectors_filter_lists_as_the_api_server_does() {
    let (_sim, client) = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    let pp = PostParams::default();
    for (name, labels) in [
        ("web-a", json!({"app": "web", "tier": "front"})),
        ("web-b", json!({"app": "web"})),
        ("db", json!({"app": "db"})),
        ("plain", json!({})),
    ] {
        cms.create(&pp, &configmap(name, labels))
            .await
            .expect("create");
    }
    let names = |sel: &'static str, field: Option<&'static str>| {
        let cms = cms.clone();
        async move {
            let mut lp = ListParams::default().labels(sel);
            if let Some(f) = field {
                lp = lp.fields(f);
            }
            let mut names: Vec<String> = cms
                .list(&lp)
                .await
                .expect("list")
                .items
                .into_iter()
                .filter_map(|c| c.metadata.name)
                .collect();
            names.sort();
            names
        }
    };
    assert_eq!(names("app=web", None).await, vec!["web-a", "web-b"]);
    assert_eq!(names("app==db", None).await, vec!["db"]);
    assert_eq!(names("app!=web", None).await, vec!["db", "plain"]);
    assert_eq!(names("app in (web)", None).await, vec!["web-a", "web-b"]);
    assert_eq!(names("app notin (web,db)", None).await, vec!["plain"]);
    assert_eq!(names("!app", None).await, vec!["plain"]);
    assert_eq!(names("app,!tier", None).await, vec!["db", "web-b"]);
    assert_eq!(names("", Some("metadata.name=web-b")).await, vec!["web-b"]);
    assert_eq!(
        names(
            "app=web",
            Some("metadata.name!=web-b,metadata.namespace=production")
        )
        .await,
        vec!["web-a"]
    );
    let bad = cms
        .list(&ListParams::default().labels("app in (web"))
        .await
        .expect_err("unclosed parenthesis");
    let (code, _) = api_error(bad);
    assert_eq!(code, 400);
}

async fn next_event(
    stream: &mut (impl futures::Stream<Item = Result<watcher::Event<ConfigMap>, watcher::Error>>
              + Unpin),
) -> Option<watcher::Event<ConfigMap>> {
    loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next()).await {
            Ok(Some(Ok(ev))) => return Some(ev),
            // The watcher reports the 410 and recovers on the next poll.
            Ok(Some(Err(_))) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

fn describe(ev: &watcher::Event<ConfigMap>) -> String {
    let name = |c: &ConfigMap| c.metadata.name.clone().unwrap_or_default();
    match ev {
        watcher::Event::Init => "Init".into(),
        watcher::Event::InitApply(c) => format!("InitApply({})", name(c)),
        watcher::Event::InitDone => "InitDone".into(),
        watcher::Event::Apply(c) => format!("Apply({})", name(c)),
        watcher::Event::Delete(c) => format!("Delete({})", name(c)),
    }
}

#[tokio::test]
async fn a_watcher_sees_changes_and_relists_after_its_resource_version_is_compacted() {
    let (sim, client) = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), NS);
    let pp = PostParams::default();
    cms.create(&pp, &configmap("before", json!({"app": "web"})))
        .await
        .expect("create");

    let cfg = watcher::Config::default().labels("app=web");
    let mut stream = watcher(cms.clone(), cfg).default_backoff().boxed();
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("InitDone") {
        let ev = next_event(&mut stream).await.expect("initial list");
        seen.push(describe(&ev));
    }
    assert_eq!(seen, vec!["Init", "InitApply(before)", "InitDone"]);

    cms.create(&pp, &configmap("added", json!({"app": "web"})))
        .await
        .expect("create");
    cms.create(&pp, &configmap("other", json!({"app": "db"})))
        .await
        .expect("create unrelated");
    cms.patch(
        "added",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"k": "changed"}})),
    )
    .await
    .expect("patch");
    cms.delete("before", &DeleteParams::default())
        .await
        .expect("delete");
    let mut live = Vec::new();
    for _ in 0..3 {
        live.push(describe(&next_event(&mut stream).await.expect("event")));
    }
    assert_eq!(live, vec!["Apply(added)", "Apply(added)", "Delete(before)"]);

    // The connection drops and re-watching is refused for a while; in
    // that outage a change happens and history is compacted past the
    // watcher's resourceVersion. The re-watch then gets 410 Expired and
    // the watcher must relist.
    sim.access()
        .deny(AccessRule::new("watch", "", "configmaps", None));
    sim.close_watches();
    cms.create(&pp, &configmap("during-outage", json!({"app": "web"})))
        .await
        .expect("create");
    sim.store().compact();
    sim.access().reset();
    let mut relist = Vec::new();
    while relist.last().map(String::as_str) != Some("InitDone") {
        let ev = next_event(&mut stream)
            .await
            .expect("the watcher relists after 410");
        relist.push(describe(&ev));
    }
    assert_eq!(relist.first().map(String::as_str), Some("Init"));
    assert!(relist.contains(&"InitApply(during-outage)".to_string()));
    assert!(relist.contains(&"InitApply(added)".to_string()));

    cms.create(&pp, &configmap("after", json!({"app": "web"})))
        .await
        .expect("create");
    assert_eq!(
        describe(&next_event(&mut stream).await.expect("event after relist")),
        "Apply(after)"
    );
    let log = sim.request_log();
    assert!(log.lists("/configmaps") >= 2, "one list, then a relist");
}

#[tokio::test]
async fn raw_watch_reports_410_as_an_expired_error_event_and_sends_bookmarks() {
    let (sim, client) = sim().await;
    let cms: Api<ConfigMap> = Api::namespaced(client, NS);
    cms.create(&PostParams::default(), &configmap("a", json!({})))
        .await
        .expect("create");
    let old = "1";
    sim.store().compact();
    let mut events = cms
        .watch(&kube::api::WatchParams::default(), old)
        .await
        .expect("watch starts with 200")
        .boxed();
    match events.try_next().await {
        Ok(Some(kube::core::WatchEvent::Error(e))) => {
            assert_eq!(e.code, 410);
            assert_eq!(e.reason, "Expired");
        }
        other => panic!(
            "expected an ERROR event, got {:?}",
            other.map(|o| o.is_some())
        ),
    }

    let rv = sim.store().revision().to_string();
    let mut events = cms
        .watch(
            &kube::api::WatchParams {
                bookmarks: true,
                ..Default::default()
            },
            &rv,
        )
        .await
        .expect("watch")
        .boxed();
    match tokio::time::timeout(Duration::from_secs(10), events.try_next()).await {
        Ok(Ok(Some(kube::core::WatchEvent::Bookmark(b)))) => {
            assert_eq!(b.metadata.resource_version, rv)
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn status_and_scale_subresources_write_only_their_part() {
    let (_sim, client) = sim().await;
    let deploys: Api<Deployment> = Api::namespaced(client.clone(), NS);
    deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create");
    let d = deploys
        .patch_status(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"readyReplicas": 2}, "spec": {"replicas": 9}})),
        )
        .await
        .expect("patch status");
    assert_eq!(d.status.and_then(|s| s.ready_replicas), Some(2));
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(3), "spec untouched");

    let scale = deploys.get_scale("web").await.expect("get scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(3));
    assert_eq!(
        scale.status.map(|s| s.selector.unwrap_or_default()),
        Some("app=web".to_string())
    );
    deploys
        .patch_scale(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 5}})),
        )
        .await
        .expect("patch scale");
    let d = deploys.get("web").await.expect("get");
    assert_eq!(d.spec.and_then(|s| s.replicas), Some(5));

    let pods: Api<Pod> = Api::namespaced(client, NS);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "p"}, "spec": {"containers": [{"name": "app", "image": "x"}]}
    }))
    .expect("pod");
    let created = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    assert_eq!(
        created.status.and_then(|s| s.phase).as_deref(),
        Some("Pending")
    );
}

#[tokio::test]
async fn access_reviews_answer_from_the_policy_that_every_request_is_held_to() {
    let (sim, client) = sim().await;
    let reviews: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let review = |verb: &str| -> SelfSubjectAccessReview {
        serde_json::from_value(json!({
            "spec": {"resourceAttributes": {
                "verb": verb, "group": "apps", "resource": "deployments", "namespace": NS
            }}
        }))
        .expect("review")
    };
    let allowed = |r: SelfSubjectAccessReview| r.status.map(|s| s.allowed);
    let r = reviews
        .create(&PostParams::default(), &review("patch"))
        .await
        .expect("review");
    assert_eq!(allowed(r), Some(true));

    sim.access()
        .deny(AccessRule::new("patch", "apps", "deployments", Some(NS)));
    let r = reviews
        .create(&PostParams::default(), &review("patch"))
        .await
        .expect("review");
    assert_eq!(allowed(r), Some(false));
    let r = reviews
        .create(&PostParams::default(), &review("get"))
        .await
        .expect("review");
    assert_eq!(allowed(r), Some(true));

    let deploys: Api<Deployment> = Api::namespaced(client, NS);
    deploys
        .create(&PostParams::default(), &deployment("web"))
        .await
        .expect("create is still allowed");
    let (code, reason) = api_error(
        deploys
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
            )
            .await
            .expect_err("patch is denied"),
    );
    assert_eq!((code, reason.as_str()), (403, "Forbidden"));

    let log = sim.request_log();
    let denied: Vec<_> = log
        .entries()
        .into_iter()
        .filter(|e| e.verb == "patch")
        .collect();
    assert_eq!(denied.len(), 1);
    assert_eq!(denied[0].status, 403);
    assert_eq!(denied[0].content_type, "application/merge-patch+json");
    assert_eq!(log.patches("/deployments/web"), 1);
}

#[tokio::test]
async fn a_held_resource_answers_its_lists_only_once_released_and_other_kinds_meanwhile() {
    let (sim, client) = sim().await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NS);
    let configmaps: Api<ConfigMap> = Api::namespaced(client, NS);
    let hold = sim.api_state().hold_lists("deployments");
    let list = tokio::spawn(async move { deployments.list(&ListParams::default()).await });

    // Other kinds, and reads of one object, are served meanwhile.
    tokio::time::timeout(
        Duration::from_secs(10),
        configmaps.list(&ListParams::default()),
    )
    .await
    .expect("a list of another kind is not held")
    .expect("configmaps list");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!list.is_finished(), "the held list was answered");

    hold.release();
    let listed = tokio::time::timeout(Duration::from_secs(10), list)
        .await
        .expect("the list is answered once released")
        .expect("task")
        .expect("deployments list");
    assert!(listed
        .items
        .iter()
        .any(|d| d.metadata.name.as_deref() == Some("kailash-kaizen")));
}

use super::*;

fn seeded() -> Store {
    let store = Store::default();
    store
        .create(&NAMESPACES, "", json!({"metadata": {"name": "production"}}))
        .unwrap();
    store
}

#[test]
fn every_write_takes_a_new_resource_version_and_stale_replace_conflicts() {
    let store = seeded();
    let cm = store
        .create(
            &CONFIGMAPS,
            "production",
            json!({"metadata": {"name": "a"}, "data": {"k": "1"}}),
        )
        .unwrap();
    let rv1 = cm["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let mut changed = cm.clone();
    changed["data"]["k"] = json!("2");
    let cm2 = store
        .replace(&CONFIGMAPS, "production", "a", changed.clone(), Part::Main)
        .unwrap();
    assert_ne!(cm2["metadata"]["resourceVersion"].as_str().unwrap(), rv1);
    // The same body again still carries rv1: stale.
    let err = store
        .replace(&CONFIGMAPS, "production", "a", changed, Part::Main)
        .unwrap_err();
    assert_eq!(err.code(), 409);
}

#[test]
fn a_dry_run_answers_the_would_be_object_and_stores_nothing() {
    let store = seeded();
    let d = store
        .create(
            &DEPLOYMENTS,
            "production",
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "app", "image": "web:v2"}]}}}}),
        )
        .unwrap();
    let (rv, generation) = (
        d["metadata"]["resourceVersion"].clone(),
        d["metadata"]["generation"].as_i64().unwrap_or(0),
    );
    let revision = store.revision();
    let to_v1 = |obj: &mut Value| {
        obj["spec"]["template"]["spec"]["containers"][0]["image"] = json!("web:v1");
        Ok(())
    };
    let would = store
        .dry_run_update_with(&DEPLOYMENTS, "production", "web", Part::Main, to_v1)
        .unwrap();
    assert_eq!(
        would["spec"]["template"]["spec"]["containers"][0]["image"],
        "web:v1"
    );
    assert_eq!(would["metadata"]["generation"], generation + 1);
    assert_eq!(would["metadata"]["resourceVersion"], rv);
    let stored = store.get(&DEPLOYMENTS, "production", "web").unwrap();
    assert_eq!(stored, d, "a dry run changed the stored object");
    assert_eq!(store.revision(), revision, "a dry run made a watch event");
    // The checks still run: a stale resourceVersion conflicts.
    let err = store
        .dry_run_update_with(&DEPLOYMENTS, "production", "web", Part::Main, |obj| {
            obj["metadata"]["resourceVersion"] = json!("1");
            Ok(())
        })
        .unwrap_err();
    assert_eq!(err.code(), 409);
}

#[test]
fn generate_name_and_already_exists() {
    let store = seeded();
    let a = store
        .create(
            &CONFIGMAPS,
            "production",
            json!({"metadata": {"generateName": "backup-"}}),
        )
        .unwrap();
    let name = a["metadata"]["name"].as_str().unwrap();
    assert!(name.starts_with("backup-") && name.len() == "backup-".len() + 5);
    let err = store
        .create(
            &CONFIGMAPS,
            "production",
            json!({"metadata": {"name": name}}),
        )
        .unwrap_err();
    assert_eq!(err.code(), 409);
    assert_eq!(err.reason(), "AlreadyExists");
}

#[test]
fn a_long_generate_name_is_cut_to_58_characters_as_the_api_server_does() {
    let store = seeded();
    let long = format!("{}-5d8f7c9b4-", "a".repeat(60));
    let pod = store
        .create(
            &CONFIGMAPS,
            "production",
            json!({"metadata": {"generateName": long}}),
        )
        .unwrap();
    let name = pod["metadata"]["name"].as_str().unwrap();
    assert_eq!(name.len(), 63, "{name}");
    assert!(name.starts_with(&long[..58]), "{name}");
}

#[test]
fn generation_follows_spec_only() {
    let store = seeded();
    let d = store
        .create(
            &DEPLOYMENTS,
            "production",
            json!({"metadata": {"name": "web"}, "spec": {"replicas": 1}}),
        )
        .unwrap();
    assert_eq!(d["metadata"]["generation"], 1);
    let d = store
        .update_with(&DEPLOYMENTS, "production", "web", Part::Status, |o| {
            o["status"] = json!({"replicas": 1});
            Ok(())
        })
        .unwrap();
    assert_eq!(d["metadata"]["generation"], 1);
    let d = store
        .update_with(&DEPLOYMENTS, "production", "web", Part::Main, |o| {
            o["spec"]["replicas"] = json!(2);
            Ok(())
        })
        .unwrap();
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(d["status"]["replicas"], 1, "status survives a main write");
}

#[test]
fn watch_resumes_from_history_and_is_gone_after_compaction() {
    let store = seeded();
    let start = store.revision();
    store
        .create(
            &CONFIGMAPS,
            "production",
            json!({"metadata": {"name": "a"}}),
        )
        .unwrap();
    store.delete(&CONFIGMAPS, "production", "a").unwrap();
    let (backlog, _rx) = store.watch_from(&CONFIGMAPS, start).unwrap();
    let types: Vec<_> = backlog.iter().map(|e| e.event_type).collect();
    assert_eq!(types, vec![EventType::Added, EventType::Deleted]);
    store.compact();
    assert_eq!(
        store.watch_from(&CONFIGMAPS, start).unwrap_err().code(),
        410
    );
    assert!(store.watch_from(&CONFIGMAPS, store.revision()).is_ok());
}

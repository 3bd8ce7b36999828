//! Deployments made by hand in an API-only sim: rolled out, with one
//! ReplicaSet (revision 1) and one pod each, so hundreds of targets cost no
//! controller time.

use rollback_watchdog::sim::seed_deployment;
use rollback_watchdog::sim::store::{Store, DEPLOYMENTS, PODS, REPLICASETS};
use serde_json::json;

/// Creates `count` Deployments `svc-000`.. in `ns` (which must exist);
/// returns their names.
pub fn rolled_out_deployments(store: &Store, ns: &str, count: usize) -> Vec<String> {
    let mut names = Vec::with_capacity(count);
    for i in 0..count {
        let name = format!("svc-{i:03}");
        let hash = format!("h{i:03}");
        let mut d = seed_deployment(&name, &format!("{name}:v1"), 1);
        d["status"] = json!({"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1});
        d["metadata"]["annotations"] = json!({"deployment.kubernetes.io/revision": "1"});
        let d = store.create(&DEPLOYMENTS, ns, d).expect("a Deployment");
        let mut template = d["spec"]["template"].clone();
        template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        let owner = |kind: &str, name: &str, uid: &serde_json::Value| json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
        let rs = store
            .create(
                &REPLICASETS,
                ns,
                json!({
                    "metadata": {"name": format!("{name}-{hash}"),
                                 "labels": template["metadata"]["labels"].clone(),
                                 "annotations": {"deployment.kubernetes.io/revision": "1"},
                                 "ownerReferences": owner("Deployment", &name, &d["metadata"]["uid"])},
                    "spec": {"replicas": 1, "selector": {"matchLabels": template["metadata"]["labels"].clone()},
                             "template": template.clone()},
                }),
            )
            .expect("a ReplicaSet");
        store
            .create(
                &PODS,
                ns,
                json!({
                    "metadata": {"name": format!("{name}-{hash}-x1"),
                                 "labels": template["metadata"]["labels"].clone(),
                                 "ownerReferences": owner("ReplicaSet", &format!("{name}-{hash}"), &rs["metadata"]["uid"])},
                    "spec": template["spec"].clone(),
                }),
            )
            .expect("a Pod");
        names.push(name);
    }
    names
}

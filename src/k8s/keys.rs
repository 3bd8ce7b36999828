//! Every annotation and label key the watchdog reads or writes, in one
//! place. Kubernetes' own keys first, then the watchdog's.

// ---- Kubernetes' own ----

/// The Deployment's and each ReplicaSet's revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// On a reused ReplicaSet: the revisions it served before.
pub const REVISION_HISTORY: &str = "deployment.kubernetes.io/revision-history";
/// The label that ties a ReplicaSet and its pods to one pod template.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// Why a revision was made; `kubectl rollout history` shows it.
pub const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
/// The recommended label naming the tool that manages an object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The field manager of every write the watchdog makes.
pub const FIELD_MANAGER: &str = "rollback-watchdog";

// ---- Set by people on a Deployment: they can only tighten policy ----

/// Opts a Deployment in, in an `opt_in_namespaces` namespace.
pub const ENABLED: &str = "rollback-watchdog.io/enabled";
pub const WATCH_WINDOW: &str = "rollback-watchdog.io/watch-window";
pub const FAILURE_THRESHOLD: &str = "rollback-watchdog.io/failure-threshold";
pub const DRY_RUN: &str = "rollback-watchdog.io/dry-run";
pub const PAUSED: &str = "rollback-watchdog.io/paused";
/// The per-object overrides, in the order they are documented.
pub const OVERRIDE_ANNOTATIONS: [&str; 4] = [WATCH_WINDOW, FAILURE_THRESHOLD, DRY_RUN, PAUSED];
/// A person's request on the Deployment: `previous` or a revision number.
pub const ROLLBACK_TO: &str = "rollback-watchdog.io/rollback-to";
/// On a revision's ReplicaSet or pod template: alert only, never roll back.
pub const IRREVERSIBLE: &str = "rollback-watchdog.io/irreversible";

// ---- Written by the watchdog: its memory on the Deployment ----

/// The known-good record.
pub const KNOWN_GOOD: &str = "rollback-watchdog.io/known-good";
/// The templates rolled back from, never chosen as a target again.
pub const BLOCKLIST: &str = "rollback-watchdog.io/blocklist";
/// The in-flight record, from the patch until the pipeline finishes.
pub const IN_FLIGHT: &str = "rollback-watchdog.io/in-flight";
/// Times of the watchdog's rollbacks of this Deployment.
pub const ROLLBACKS: &str = "rollback-watchdog.io/rollbacks";
/// What the watchdog's latest rollback restored, `{"revision",
/// "pod_template_hash","images"}`: tells the revision it brought back from
/// one a person deployed soon after.
pub const RESTORED: &str = "rollback-watchdog.io/restored";
/// What the watchdog remembers of the current revision across restarts
/// and leader changes (window times, a Bad verdict, notices sent).
pub const MEMORY: &str = "rollback-watchdog.io/memory";

// ---- On the backup ConfigMaps ----

/// The rollback (incident id) a backup was taken for.
pub const BACKUP_OF: &str = "rollback-watchdog.io/rollback";
pub const LABEL_NAMESPACE: &str = "rollback-watchdog.io/namespace";
pub const LABEL_DEPLOYMENT: &str = "rollback-watchdog.io/deployment";

/// The longest annotation value quoted whole in a warning.
pub const QUOTED_VALUE_MAX: usize = 64;

/// A value a person wrote in an annotation, quoted for a warning, a log
/// line or an Event: cut at [`QUOTED_VALUE_MAX`] characters (with its
/// size), so an oversized value cannot flood the logs.
pub fn quoted(value: &str) -> String {
    if value.chars().count() <= QUOTED_VALUE_MAX {
        return format!("{value:?}");
    }
    let head: String = value.chars().take(QUOTED_VALUE_MAX).collect();
    format!("{head:?}... ({} bytes)", value.len())
}

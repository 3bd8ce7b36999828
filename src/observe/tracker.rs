//! The in-memory part of revision tracking, between ticks: when each
//! Deployment switched revision, when that rollout completed, the revision
//! that was current before (its start bounds the baseline), and the
//! known-good records this process wrote. [`Tracker::observe`] turns one
//! watched Deployment and the cache snapshot into its [`TargetState`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::blocklist;
use super::cache::Snapshot;
use super::memory::{self, Memory};
use super::revision::*;
use super::targets::WatchedDeployment;
use super::window::{Window, WindowWhy};

/// When a revision was first seen as current, kept in memory because a
/// reused ReplicaSet does not carry the time of the switch.
#[derive(Debug, Clone)]
struct Seen {
    number: i64,
    hash: String,
    started: jiff::Timestamp,
    estimated: bool,
    /// When its rollout completed, and whether that is an estimate.
    completed: Option<(jiff::Timestamp, bool)>,
    /// This process saw its rollout under way (not complete) on a tick.
    rolling: bool,
}

/// The in-memory part of revision tracking: when each Deployment switched
/// revision, when that rollout completed, and which known-good records
/// this process wrote. One per process; losing it (a restart) only turns
/// exact switch and completion times into estimates.
#[derive(Debug, Default)]
pub struct Tracker {
    seen: HashMap<String, Seen>,
    /// Per Deployment, the revision that was current before the last
    /// switch this process saw: when it started is its baseline's start.
    before: HashMap<String, Seen>,
    written: HashMap<String, KnownGood>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The state of one watched Deployment at `now`, from the snapshot.
    pub fn observe(
        &mut self,
        target: &WatchedDeployment,
        snapshot: &Snapshot,
        now: jiff::Timestamp,
    ) -> TargetState {
        let d = &target.deployment;
        let uid = target.uid();
        let rollout = rollout(d, snapshot.replicasets_of(&uid));
        let mut warnings = Vec::new();
        let mut known_good = match known_good_of(d) {
            Ok(kg) => kg,
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        };
        // A record this process wrote counts until the cache catches up.
        if let Some(written) = self.written.get(&uid) {
            if known_good.as_ref() == Some(written) {
                self.written.remove(&uid);
            } else if known_good
                .as_ref()
                .is_none_or(|kg| kg.revision <= written.revision)
            {
                known_good = Some(written.clone());
            }
        }
        let kept = match memory::read(d) {
            Ok(kept) => kept.filter(|m| match &rollout {
                Rollout::Known { current, .. } => {
                    m.is_about(current.number, &current.pod_template_hash)
                }
                Rollout::Pending { .. } => false,
            }),
            Err(e) => {
                warnings.push(e.to_string());
                None
            }
        };
        let (pods, rollout_started, started_estimated, window) = match &rollout {
            Rollout::Known { current, .. } => {
                let pods = pods_of(snapshot, &target.namespace, current);
                let seen = self.switch_time(&uid, current, &pods, kept.as_ref(), now);
                let window =
                    self.window(&uid, d, snapshot, current, target.policy.watch_window, now);
                (pods, Some(seen.started), seen.estimated, window)
            }
            Rollout::Pending { .. } => (Vec::new(), None, false, None),
        };
        let serving_others = match &rollout {
            Rollout::Known { current, .. } => {
                serving_others(d, snapshot, &target.namespace, current)
            }
            Rollout::Pending { .. } => Vec::new(),
        };
        let older_target = match &rollout {
            Rollout::Known { current, .. } => {
                let owned = owned_revisions(d, snapshot.replicasets_of(&uid));
                // A malformed blocklist is reported where a rollback reads
                // it; here it only makes the choice stricter.
                let blocked = blocklist::read(d).unwrap_or_default();
                rollback_candidates(current, &owned, &blocked)
                    .first()
                    .map(|(r, _)| r.number)
            }
            Rollout::Pending { .. } => None,
        };
        let previous_since = match &rollout {
            Rollout::Known {
                previous: Some(previous),
                ..
            } => self.previous_since(&uid, previous, snapshot, &target.namespace),
            _ => None,
        };
        TargetState {
            namespace: target.namespace.clone(),
            deployment: target.name.clone(),
            uid,
            now,
            rollout,
            rollout_started,
            started_estimated,
            window,
            paused: is_paused(d),
            known_good,
            fully_rolled_out: fully_rolled_out(d),
            progress_deadline_exceeded: progress_deadline_exceeded(d),
            serving_others,
            pods_seen_at: snapshot.pods_stalled_since(&target.namespace),
            previous_since,
            pods,
            warnings,
            older_target,
            kept,
        }
    }

    /// When `previous` started serving: see the module doc.
    fn previous_since(
        &self,
        uid: &str,
        previous: &Revision,
        snapshot: &Snapshot,
        namespace: &str,
    ) -> Option<jiff::Timestamp> {
        if let Some(before) = self.before.get(uid) {
            if before.number == previous.number && before.hash == previous.pod_template_hash {
                return Some(before.started);
            }
        }
        if let (Some(created), false) = (previous.created, previous.reused) {
            return Some(created);
        }
        pods_of(snapshot, namespace, previous)
            .iter()
            .filter_map(|p| p.creation_timestamp())
            .filter_map(|t| t.0.to_string().parse::<jiff::Timestamp>().ok())
            .min()
    }

    fn switch_time(
        &mut self,
        uid: &str,
        current: &Revision,
        pods: &[Arc<Pod>],
        kept: Option<&Memory>,
        now: jiff::Timestamp,
    ) -> Seen {
        let previous = self.seen.get(uid);
        if let Some(p) = previous {
            if p.number == current.number && p.hash == current.pod_template_hash {
                return p.clone();
            }
            self.before.insert(uid.to_owned(), p.clone());
        }
        let previous = self.seen.get(uid);
        let seen = match (current.created, previous, kept) {
            // The watchdog kept its times in the cluster (an earlier
            // process, or the leader before a hand-over): they are exact,
            // and a window once closed is never reopened.
            (_, _, Some(kept)) => Seen {
                number: current.number,
                hash: current.pod_template_hash.clone(),
                started: kept.started,
                estimated: false,
                completed: kept.completed.map(|c| (c, false)),
                rolling: false,
            },
            // A ReplicaSet made for this rollout: its creation is the start.
            (Some(created), _, None) if !current.reused => Seen {
                number: current.number,
                hash: current.pod_template_hash.clone(),
                started: created,
                estimated: false,
                completed: None,
                rolling: false,
            },
            // Reused, and this process saw the Deployment at another
            // revision before: the switch happened since the last tick.
            (_, Some(_), None) => Seen {
                number: current.number,
                hash: current.pod_template_hash.clone(),
                started: now,
                estimated: false,
                completed: None,
                rolling: false,
            },
            // Reused, first seen now: the switch started its pods.
            _ => {
                let oldest_pod = pods
                    .iter()
                    .filter_map(|p| p.creation_timestamp())
                    .filter_map(|t| t.0.to_string().parse::<jiff::Timestamp>().ok())
                    .min();
                let started = match (oldest_pod, current.created) {
                    (Some(p), Some(c)) => p.max(c),
                    (Some(p), None) => p,
                    (None, _) => now,
                };
                Seen {
                    number: current.number,
                    hash: current.pod_template_hash.clone(),
                    started,
                    estimated: true,
                    completed: None,
                    rolling: false,
                }
            }
        };
        self.seen.insert(uid.to_owned(), seen.clone());
        seen
    }

    /// The current revision's window (see the module doc), from what
    /// [`Self::switch_time`] recorded for it this tick.
    fn window(
        &mut self,
        uid: &str,
        d: &Deployment,
        snapshot: &Snapshot,
        current: &Revision,
        length: Duration,
        now: jiff::Timestamp,
    ) -> Option<Window> {
        let complete = rolled_out_for(d, snapshot, current);
        let seen = self.seen.get_mut(uid)?;
        if seen.completed.is_none() {
            if complete {
                // The controller's record of the completion; else now when
                // this process saw the rollout under way (it completed
                // since the last tick); else, first seen complete with no
                // record, the start (the window is never reopened).
                seen.completed = Some(
                    match completion_condition(d, current).filter(|t| *t >= seen.started) {
                        Some(t) => (t, false),
                        None if seen.rolling => (now, false),
                        None => (seen.started, true),
                    },
                );
            } else {
                seen.rolling = true;
            }
        }
        let started = seen.started;
        Some(match seen.completed {
            Some((at, estimated)) => Window::closing(
                started,
                at,
                length,
                WindowWhy::AfterCompletion {
                    completed: at,
                    estimated,
                },
            ),
            None if progress_deadline_exceeded(d) => {
                Window::closing(started, started, length, WindowWhy::NeverCompleted)
            }
            None => Window {
                opened: started,
                closes: None,
                why: if is_paused(d) {
                    WindowWhy::Paused
                } else {
                    WindowWhy::InProgress
                },
            },
        })
    }

    /// Remembers a record this process wrote, so the next ticks do not
    /// write it again before the cache shows it.
    pub fn recorded(&mut self, uid: &str, known_good: KnownGood) {
        self.written.insert(uid.to_owned(), known_good);
    }

    /// Forgets Deployments no longer watched.
    pub fn retain(&mut self, live_uids: &std::collections::HashSet<String>) {
        self.seen.retain(|uid, _| live_uids.contains(uid));
        self.before.retain(|uid, _| live_uids.contains(uid));
        self.written.retain(|uid, _| live_uids.contains(uid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Loader;
    use crate::k8s::keys::{KNOWN_GOOD, POD_TEMPLATE_HASH, REVISION, REVISION_HISTORY};
    use crate::observe::targets::Source;
    use crate::signals::BaselineRevision;
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use serde_json::json;
    use serde_json::Value;

    const UID: &str = "d-uid";

    fn ts(s: &str) -> jiff::Timestamp {
        s.parse().expect("a test timestamp")
    }

    fn template(image: &str, hash: Option<&str>) -> Value {
        let mut labels = json!({"app": "web"});
        if let Some(h) = hash {
            labels[POD_TEMPLATE_HASH] = json!(h);
        }
        json!({"metadata": {"labels": labels},
               "spec": {"containers": [{"name": "app", "image": image, "resources": {}}]}})
    }

    /// A Deployment on `image`, rolled out or not, with extra annotations.
    fn deployment(image: &str, rolled_out: bool, annotations: Value) -> Deployment {
        let (updated, replicas) = if rolled_out { (3, 3) } else { (1, 4) };
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "production", "uid": UID, "generation": 4,
                         "annotations": annotations},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                     "template": template(image, None)},
            "status": {"observedGeneration": 4, "replicas": replicas, "updatedReplicas": updated,
                       "availableReplicas": 3, "readyReplicas": 3},
        }))
        .expect("a valid Deployment")
    }

    fn replicaset(
        revision: i64,
        hash: &str,
        image: &str,
        created: &str,
        history: Option<&str>,
    ) -> ReplicaSet {
        let mut annotations = json!({REVISION: revision.to_string()});
        if let Some(h) = history {
            annotations[REVISION_HISTORY] = json!(h);
        }
        serde_json::from_value(json!({
            "metadata": {"name": format!("web-{hash}"), "namespace": "production",
                         "uid": format!("rs-{hash}"), "creationTimestamp": created,
                         "labels": {"app": "web", POD_TEMPLATE_HASH: hash},
                         "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                              "uid": UID, "controller": true}]},
            "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web", POD_TEMPLATE_HASH: hash}},
                     "template": template(image, Some(hash))},
        }))
        .expect("a valid ReplicaSet")
    }

    fn pod(name: &str, hash: &str, created: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "production", "creationTimestamp": created,
                         "labels": {"app": "web", POD_TEMPLATE_HASH: hash},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                              "name": format!("web-{hash}"), "uid": format!("rs-{hash}"),
                                              "controller": true}]},
        }))
        .expect("a valid Pod")
    }

    fn target(d: Deployment, watch_window: &str) -> WatchedDeployment {
        let mut policy = Loader::from_toml("")
            .env(Vec::<(String, String)>::new())
            .load()
            .expect("defaults load")
            .config
            .defaults;
        policy.watch_window = humantime::parse_duration(watch_window).expect("a duration");
        WatchedDeployment {
            namespace: "production".into(),
            name: "web".into(),
            source: Source::Config { index: 0 },
            policy,
            deployment: Arc::new(d),
        }
    }

    fn three_revisions() -> Vec<ReplicaSet> {
        vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(2, "bbb", "web:v2", "2026-11-27T09:00:00Z", None),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ]
    }

    #[test]
    fn a_new_rollout_opens_a_window_with_its_revision_hash_and_baseline() {
        let d = deployment("web:v3", false, json!({}));
        let snap = Snapshot::from_objects(
            [d.clone()],
            three_revisions(),
            [
                pod("web-ccc-1", "ccc", "2026-11-27T10:00:05Z"),
                pod("web-bbb-1", "bbb", "2026-11-27T09:00:05Z"),
            ],
        );
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T10:05:00Z"));
        let cur = s.current().expect("a current revision");
        assert_eq!((cur.number, cur.pod_template_hash.as_str()), (3, "ccc"));
        assert_eq!(cur.images, ["web:v3"]);
        assert_eq!(s.previous().map(|p| p.number), Some(2));
        assert!(s.in_window());
        // In progress: open with no end yet.
        assert_eq!(s.remaining(), None);
        assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::InProgress));
        assert!(
            s.known_good_due().is_none(),
            "still in its window and rolling out"
        );
        let subject = s.subject().expect("a subject");
        assert_eq!(subject.rollout_started, ts("2026-11-27T10:00:00Z"));
        assert_eq!(
            subject.baseline,
            Some(BaselineRevision {
                revision: 2,
                pod_template_hash: "bbb".into(),
                // Its own ReplicaSet's creation: it was not reused.
                since: Some(ts("2026-11-27T09:00:00Z")),
            })
        );
        assert_eq!(subject.pods.len(), 1, "only the pods of revision 3");
        assert_eq!(subject.pods[0].name_any(), "web-ccc-1");
    }

    #[test]
    fn a_closed_window_of_a_complete_rollout_is_due_as_known_good() {
        let d = deployment("web:v3", true, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T10:15:00Z"));
        assert!(!s.in_window());
        let kg = s.known_good_due().expect("due");
        assert_eq!((kg.revision, kg.pod_template_hash.as_str()), (3, "ccc"));
        assert_eq!(kg.at, "2026-11-27T10:15:00Z");
        assert_eq!(
            serde_json::to_value(&kg).expect("encodes"),
            json!({"revision": 3, "podTemplateHash": "ccc", "images": ["web:v3"], "at": "2026-11-27T10:15:00Z"})
        );
    }

    #[test]
    fn an_incomplete_rollout_keeps_its_window_open_and_is_not_known_good() {
        let d = deployment("web:v3", false, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T11:00:00Z"));
        assert!(s.in_window(), "an hour after its start, still rolling out");
        assert!(s.known_good_due().is_none());
    }

    /// `d` with its status changed by `f` (the JSON of the status).
    fn with_status(d: Deployment, f: impl FnOnce(&mut Value)) -> Deployment {
        let mut v = serde_json::to_value(&d).expect("encodes");
        f(&mut v["status"]);
        serde_json::from_value(v).expect("a valid Deployment")
    }

    fn paused(d: Deployment, paused: bool) -> Deployment {
        let mut d = d;
        if let Some(spec) = d.spec.as_mut() {
            spec.paused = Some(paused);
        }
        d
    }

    fn completed_condition(rs: &str, at: &str) -> Value {
        json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
               "message": format!("ReplicaSet \"{rs}\" has successfully progressed."),
               "lastUpdateTime": at, "lastTransitionTime": at})
    }

    /// One tick of `tracker` on `d` (revisions of [`three_revisions`]).
    fn tick(tracker: &mut Tracker, d: &Deployment, now: &str) -> TargetState {
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        tracker.observe(&target(d.clone(), "15m"), &snap, ts(now))
    }

    #[test]
    fn a_slow_rollout_keeps_its_window_until_watch_window_after_it_completed() {
        // Revision 3 started at 10:00 and takes 30 minutes to roll out.
        let mut tracker = Tracker::new();
        let rolling = deployment("web:v3", false, json!({}));
        for now in ["2026-11-27T10:05:00Z", "2026-11-27T10:20:00Z"] {
            let s = tick(&mut tracker, &rolling, now);
            assert!(s.in_window(), "{now}: in progress");
            assert_eq!(s.remaining(), None);
            assert_eq!(
                s.window.map(|w| w.describe(Duration::from_secs(900))),
                Some("rollout in progress".into())
            );
        }
        // Complete at 10:30 (no condition: the tick that saw it).
        let done = deployment("web:v3", true, json!({}));
        let s = tick(&mut tracker, &done, "2026-11-27T10:30:00Z");
        let w = s.window.expect("a window");
        assert_eq!(w.closes, Some(ts("2026-11-27T10:45:00Z")));
        assert_eq!(
            w.describe(Duration::from_secs(900)),
            "until 10:45:00, 15m after the rollout completed"
        );
        assert!(s.known_good_due().is_none());
        // Remembered: the next ticks keep that end.
        let s = tick(&mut tracker, &done, "2026-11-27T10:44:59Z");
        assert!(s.in_window());
        assert_eq!(s.remaining(), Some(Duration::from_secs(1)));
        let s = tick(&mut tracker, &done, "2026-11-27T10:45:00Z");
        assert!(!s.in_window());
        assert!(s.known_good_due().is_some());
    }

    #[test]
    fn the_controllers_completion_time_is_taken_when_it_names_the_revision() {
        let mut tracker = Tracker::new();
        tick(
            &mut tracker,
            &deployment("web:v3", false, json!({})),
            "2026-11-27T10:05:00Z",
        );
        // Seen complete at 10:40, completed at 10:31 by the condition.
        let done = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-ccc", "2026-11-27T10:31:00Z")]);
        });
        let s = tick(&mut tracker, &done, "2026-11-27T10:40:00Z");
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T10:46:00Z"))
        );
    }

    #[test]
    fn a_restarted_watchdog_estimates_the_completion_from_the_condition() {
        let done = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-ccc", "2026-11-27T10:31:00Z")]);
        });
        // First seen at 10:40: still open until 10:46.
        let s = tick(&mut Tracker::new(), &done, "2026-11-27T10:40:00Z");
        assert!(s.in_window());
        assert_eq!(s.remaining(), Some(Duration::from_secs(360)));
        assert_eq!(
            s.window.map(|w| w.why),
            Some(WindowWhy::AfterCompletion {
                completed: ts("2026-11-27T10:31:00Z"),
                estimated: false
            })
        );
        // A condition of another ReplicaSet says nothing of revision 3:
        // the start is the estimate, and an old window is not reopened.
        let other = with_status(deployment("web:v3", true, json!({})), |st| {
            st["conditions"] = json!([completed_condition("web-bbb", "2026-11-27T10:31:00Z")]);
        });
        let s = tick(&mut Tracker::new(), &other, "2026-11-27T10:40:00Z");
        assert!(!s.in_window());
        assert_eq!(
            s.window.map(|w| w.why),
            Some(WindowWhy::AfterCompletion {
                completed: ts("2026-11-27T10:00:00Z"),
                estimated: true
            })
        );
    }

    #[test]
    fn a_paused_rollout_keeps_its_window_open_and_a_resumed_one_is_judged_again() {
        let mut tracker = Tracker::new();
        let held = paused(deployment("web:v3", false, json!({})), true);
        // Paused for two hours: open all along.
        for now in ["2026-11-27T10:05:00Z", "2026-11-27T12:00:00Z"] {
            let s = tick(&mut tracker, &held, now);
            assert!(s.in_window(), "{now}");
            assert!(s.paused);
            assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::Paused));
            assert!(s.known_good_due().is_none());
        }
        // Resumed, then complete at 12:10: open until 12:25.
        let resumed = paused(deployment("web:v3", false, json!({})), false);
        assert_eq!(
            tick(&mut tracker, &resumed, "2026-11-27T12:01:00Z")
                .window
                .map(|w| w.why),
            Some(WindowWhy::InProgress)
        );
        let done = deployment("web:v3", true, json!({}));
        let s = tick(&mut tracker, &done, "2026-11-27T12:10:00Z");
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T12:25:00Z"))
        );
        assert!(!tick(&mut tracker, &done, "2026-11-27T12:25:00Z").in_window());
    }

    #[test]
    fn a_rollout_past_its_deadline_has_the_window_of_its_start() {
        let stuck = with_status(deployment("web:v3", false, json!({})), |st| {
            st["conditions"] = json!([{"type": "Progressing", "status": "False",
                                       "reason": "ProgressDeadlineExceeded"}]);
        });
        let s = tick(&mut Tracker::new(), &stuck, "2026-11-27T10:20:00Z");
        assert_eq!(s.window.map(|w| w.why), Some(WindowWhy::NeverCompleted));
        assert_eq!(
            s.window.and_then(|w| w.closes),
            Some(ts("2026-11-27T10:15:00Z"))
        );
        assert!(!s.in_window());
    }

    #[test]
    fn a_template_changed_under_a_pause_does_not_reopen_the_current_window() {
        // v4 set on a paused Deployment: no ReplicaSet for it, revision 3
        // stays current (by annotation) and its rollout is over.
        let mut d = paused(deployment("web:v4", false, json!({REVISION: "3"})), true);
        d.metadata.generation = Some(4);
        let s = tick(&mut Tracker::new(), &d, "2026-11-27T12:00:00Z");
        assert_eq!(s.current().map(|c| c.number), Some(3));
        assert!(!s.in_window(), "{:?}", s.window);
    }

    #[test]
    fn an_existing_record_of_the_current_revision_is_not_written_again() {
        let kg = json!({"revision": 3, "podTemplateHash": "ccc", "images": ["web:v3"], "at": "2026-11-27T10:15:00Z"});
        let d = deployment("web:v3", true, json!({KNOWN_GOOD: kg.to_string()}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-28T00:00:00Z"));
        assert!(s.current_is_known_good());
        assert!(s.known_good_due().is_none());
    }

    #[test]
    fn a_malformed_record_is_reported_and_treated_as_none() {
        let d = deployment("web:v3", true, json!({KNOWN_GOOD: "revision 3"}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-28T00:00:00Z"));
        assert!(s.known_good.is_none());
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings[0].contains("is not a known-good record"),
            "{}",
            s.warnings[0]
        );
        assert!(s.known_good_due().is_some());
    }

    #[test]
    fn a_written_record_counts_until_the_cache_shows_it() {
        let d = deployment("web:v3", true, json!({}));
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let t = target(d, "15m");
        let mut tracker = Tracker::new();
        let now = ts("2026-11-28T00:00:00Z");
        let kg = tracker
            .observe(&t, &snap, now)
            .known_good_due()
            .expect("due");
        tracker.recorded(UID, kg);
        assert!(tracker.observe(&t, &snap, now).known_good_due().is_none());
    }

    #[test]
    fn a_template_returned_by_undo_makes_the_reused_revision_current() {
        // kubectl rollout undo of revision 3: the ReplicaSet of revision 2
        // becomes revision 4 and keeps its old creation time.
        let d = deployment("web:v2", false, json!({}));
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2")),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let snap = Snapshot::from_objects(
            [d.clone()],
            rss,
            [pod("web-bbb-9", "bbb", "2026-11-27T10:20:03Z")],
        );
        let t = target(d, "15m");
        let now = ts("2026-11-27T10:20:10Z");
        let s = Tracker::new().observe(&t, &snap, now);
        let cur = s.current().expect("current");
        assert_eq!((cur.number, cur.pod_template_hash.as_str()), (4, "bbb"));
        assert!(cur.reused);
        assert_eq!(s.previous().map(|p| p.number), Some(3));
        // First seen after the switch: estimated from its oldest pod.
        assert!(s.started_estimated);
        assert_eq!(s.rollout_started, Some(ts("2026-11-27T10:20:03Z")));
        assert!(s.in_window());
    }

    #[test]
    fn a_switch_seen_live_to_a_reused_revision_starts_its_window_then() {
        let t3 = target(deployment("web:v3", true, json!({})), "15m");
        let mut tracker = Tracker::new();
        let before = Snapshot::from_objects([(*t3.deployment).clone()], three_revisions(), []);
        tracker.observe(&t3, &before, ts("2026-11-27T12:00:00Z"));

        let t2 = target(deployment("web:v2", false, json!({})), "15m");
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2")),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let after = Snapshot::from_objects([(*t2.deployment).clone()], rss, []);
        let now = ts("2026-11-27T12:00:15Z");
        let s = tracker.observe(&t2, &after, now);
        assert_eq!(s.rollout_started, Some(now));
        assert!(!s.started_estimated);
        // And the next tick keeps that start.
        let later = tracker.observe(&t2, &after, ts("2026-11-27T12:05:00Z"));
        assert_eq!(later.rollout_started, Some(now));
    }

    #[test]
    fn the_baseline_starts_when_the_previous_revision_started_serving_even_when_reused() {
        // Revision 4 is bbb brought back by an undo, seen live at 12:00:15;
        // 40 s later revision 5 rolls out. Revision 4's baseline starts at
        // the undo, not at bbb's ReplicaSet creation hours before.
        let t3 = target(deployment("web:v3", true, json!({})), "15m");
        let mut tracker = Tracker::new();
        let before = Snapshot::from_objects([(*t3.deployment).clone()], three_revisions(), []);
        tracker.observe(&t3, &before, ts("2026-11-27T12:00:00Z"));
        let reused = replicaset(4, "bbb", "web:v2", "2026-11-27T09:00:00Z", Some("2"));
        let t2 = target(deployment("web:v2", false, json!({})), "15m");
        let rss = vec![
            replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None),
            reused.clone(),
            replicaset(3, "ccc", "web:v3", "2026-11-27T10:00:00Z", None),
        ];
        let after = Snapshot::from_objects([(*t2.deployment).clone()], rss.clone(), []);
        tracker.observe(&t2, &after, ts("2026-11-27T12:00:15Z"));

        let t5 = target(deployment("web:v5", false, json!({})), "15m");
        let mut rss5 = rss;
        rss5.push(replicaset(5, "eee", "web:v5", "2026-11-27T12:00:55Z", None));
        let pods = [pod("web-bbb-9", "bbb", "2026-11-27T12:00:20Z")];
        let snap5 = Snapshot::from_objects([(*t5.deployment).clone()], rss5.clone(), pods.clone());
        let s = tracker.observe(&t5, &snap5, ts("2026-11-27T12:01:00Z"));
        let baseline = s.subject().and_then(|s| s.baseline).expect("a baseline");
        assert_eq!(
            (baseline.revision, baseline.since),
            (4, Some(ts("2026-11-27T12:00:15Z")))
        );

        // A watchdog that did not see the undo: the oldest pod of revision 4.
        let fresh = Tracker::new().observe(&t5, &snap5, ts("2026-11-27T12:01:00Z"));
        assert_eq!(fresh.previous_since, Some(ts("2026-11-27T12:00:20Z")));
        // Nor any pod of it: unknown, the baseline looks back in full.
        let bare = Snapshot::from_objects([(*t5.deployment).clone()], rss5, []);
        let none = Tracker::new().observe(&t5, &bare, ts("2026-11-27T12:01:00Z"));
        assert_eq!(none.previous_since, None);
    }

    #[test]
    fn a_new_template_without_its_replicaset_yet_is_pending_and_not_judged() {
        let mut d = deployment("web:v4", false, json!({REVISION: "3"}));
        d.metadata.generation = Some(5);
        let snap = Snapshot::from_objects([d.clone()], three_revisions(), []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T12:00:00Z"));
        assert!(
            matches!(s.rollout, Rollout::Pending { .. }),
            "{:?}",
            s.rollout
        );
        assert!(s.subject().is_none());
        assert!(s.known_good_due().is_none());
        assert!(!s.in_window());
    }

    #[test]
    fn replicasets_of_other_owners_are_not_revisions() {
        let d = deployment("web:v1", true, json!({}));
        let mut foreign = replicaset(9, "zzz", "web:v1", "2026-11-27T08:00:00Z", None);
        foreign.metadata.owner_references = None;
        let mine = replicaset(1, "aaa", "web:v1", "2026-11-27T08:00:00Z", None);
        let snap = Snapshot::from_objects([d.clone()], [foreign, mine], []);
        let s = Tracker::new().observe(&target(d, "15m"), &snap, ts("2026-11-27T12:00:00Z"));
        assert_eq!(s.current().map(|c| c.number), Some(1));
        assert!(s.previous().is_none());
        assert!(s.subject().is_some_and(|s| s.baseline.is_none()));
    }

    #[test]
    fn progress_deadline_exceeded_is_read_from_the_conditions() {
        let mut d = deployment("web:v3", false, json!({}));
        let status = d.status.get_or_insert_with(Default::default);
        status.conditions = Some(vec![serde_json::from_value(json!({
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"
        }))
        .expect("a condition")]);
        assert!(progress_deadline_exceeded(&d));
        assert!(!progress_deadline_exceeded(&deployment(
            "web:v3",
            false,
            json!({})
        )));
    }

    // The lag orderings of a rollback and a re-deploy (issue 13 item 7):
    // v2 (bbb, revision 2) went bad and was rolled back to v1's template
    // (aaa, reused as revision 3), then v2 was deployed again (bbb,
    // reused as revision 4). The Deployment and ReplicaSet watches
    // deliver their events in either order.

    /// The Deployment on `image`, at revision `annotated`, its latest spec
    /// observed by the controller or not.
    fn at_revision(image: &str, annotated: i64, observed: bool) -> Deployment {
        let mut d = deployment(image, false, json!({REVISION: annotated.to_string()}));
        if !observed {
            d.metadata.generation = Some(5);
        }
        d
    }

    fn observe(
        tracker: &mut Tracker,
        d: &Deployment,
        rss: &[ReplicaSet],
        now: &str,
    ) -> TargetState {
        let snap = Snapshot::from_objects([d.clone()], rss.to_vec(), []);
        tracker.observe(&target(d.clone(), "15m"), &snap, ts(now))
    }

    fn assert_pending(s: &TargetState) {
        assert!(
            matches!(s.rollout, Rollout::Pending { .. }),
            "{:?}",
            s.rollout
        );
        assert!(s.subject().is_none());
    }

    fn number(s: &TargetState) -> Option<i64> {
        s.current().map(|c| c.number)
    }

    fn v1(revision: i64, history: Option<&str>) -> ReplicaSet {
        replicaset(revision, "aaa", "web:v1", "2026-11-27T08:00:00Z", history)
    }

    fn v2(revision: i64, history: Option<&str>) -> ReplicaSet {
        replicaset(revision, "bbb", "web:v2", "2026-11-27T09:00:00Z", history)
    }

    #[test]
    fn a_rollback_seen_before_its_replicaset_is_renumbered_is_pending_never_the_old_number() {
        let mut tracker = Tracker::new();
        let before = [v1(1, None), v2(2, None)];
        let s = observe(
            &mut tracker,
            &at_revision("web:v2", 2, true),
            &before,
            "2026-11-27T12:00:00Z",
        );
        assert_eq!(number(&s), Some(2));
        // The new template, not yet observed (its annotation still says 2),
        // and v1's ReplicaSet still at revision 1: neither 1 nor 2.
        let s = observe(
            &mut tracker,
            &at_revision("web:v1", 2, false),
            &before,
            "2026-11-27T12:00:01Z",
        );
        assert_pending(&s);
        // Observed (the Deployment names revision 3), the ReplicaSet still
        // at 1: pending too.
        let s = observe(
            &mut tracker,
            &at_revision("web:v1", 3, true),
            &before,
            "2026-11-27T12:00:02Z",
        );
        match &s.rollout {
            Rollout::Pending { why } => assert!(why.contains("revision 3"), "{why}"),
            other => panic!("{other:?}"),
        }
        // The ReplicaSet caught up: revision 3, a window of its own from
        // the switch this process saw, revision 2 its baseline.
        let after = [v1(3, Some("1")), v2(2, None)];
        let s = observe(
            &mut tracker,
            &at_revision("web:v1", 3, true),
            &after,
            "2026-11-27T12:00:03Z",
        );
        assert_eq!(number(&s), Some(3));
        assert_eq!(s.previous().map(|p| p.number), Some(2));
        assert_eq!(s.rollout_started, Some(ts("2026-11-27T12:00:03Z")));
        assert!(!s.started_estimated);
    }

    #[test]
    fn a_rollbacks_replicaset_seen_before_the_deployment_is_pending_then_current() {
        let mut tracker = Tracker::new();
        observe(
            &mut tracker,
            &at_revision("web:v2", 2, true),
            &[v1(1, None), v2(2, None)],
            "2026-11-27T12:00:00Z",
        );
        // v1's ReplicaSet renumbered 3, the Deployment still on v2's
        // template: revision 2 is replaced, not judged.
        let renumbered = [v1(3, Some("1")), v2(2, None)];
        let s = observe(
            &mut tracker,
            &at_revision("web:v2", 2, true),
            &renumbered,
            "2026-11-27T12:00:01Z",
        );
        assert_pending(&s);
        let s = observe(
            &mut tracker,
            &at_revision("web:v1", 2, false),
            &renumbered,
            "2026-11-27T12:00:02Z",
        );
        assert_eq!(
            number(&s),
            Some(3),
            "the new number, before the Deployment's annotation"
        );
    }

    #[test]
    fn a_redeploy_of_a_reused_replicaset_is_a_new_revision_with_a_new_window_in_either_order() {
        let rolled_back = [v1(3, Some("1")), v2(2, None)];
        let redeployed = [v1(3, Some("1")), v2(4, Some("2"))];
        // Either watch first: the Deployment's new template with bbb still
        // at 2, or bbb at 4 with the Deployment still on v1.
        let orders = [
            (at_revision("web:v2", 3, false), rolled_back.clone()),
            (at_revision("web:v2", 4, true), rolled_back.clone()),
            (at_revision("web:v1", 3, true), redeployed.clone()),
        ];
        for (lagging, rss) in orders {
            let mut tracker = Tracker::new();
            let s = observe(
                &mut tracker,
                &at_revision("web:v1", 3, true),
                &rolled_back,
                "2026-11-27T12:10:00Z",
            );
            assert_eq!(number(&s), Some(3));
            let s = observe(&mut tracker, &lagging, &rss, "2026-11-27T12:10:01Z");
            assert!(
                matches!(s.rollout, Rollout::Pending { .. }),
                "neither 2 nor 3 while {:?}: {:?}",
                first_image(&lagging),
                s.rollout
            );
            let s = observe(
                &mut tracker,
                &at_revision("web:v2", 4, true),
                &redeployed,
                "2026-11-27T12:10:02Z",
            );
            let cur = s.current().expect("current");
            assert_eq!((cur.number, cur.pod_template_hash.as_str()), (4, "bbb"));
            assert_eq!(s.previous().map(|p| p.number), Some(3));
            // Its own window, from the switch: not revision 2's.
            assert_eq!(s.rollout_started, Some(ts("2026-11-27T12:10:02Z")));
            assert!(s.in_window());
        }
    }

    #[test]
    fn a_replicaset_renumbered_before_the_deployments_annotation_is_judged_under_the_new_number() {
        // The template changed (not yet observed) and bbb is already 4.
        let s = observe(
            &mut Tracker::new(),
            &at_revision("web:v2", 3, false),
            &[v1(3, Some("1")), v2(4, Some("2"))],
            "2026-11-27T12:10:00Z",
        );
        assert_eq!(number(&s), Some(4));
    }
}

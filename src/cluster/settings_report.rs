//! Tells namespace owners about mistakes in their `archway.dev/` labels and
//! annotations (`policy::setting_problems`): one Warning Event
//! `InvalidArchwaySetting` on the namespace per distinct mistake, one log
//! line, and the gauge `archway_namespaces_invalid_settings`.
//!
//! Every replica watches namespaces (`cluster::ClusterPolicies` hands each
//! watch event to `SettingsReporter::observe`) and reports what it sees,
//! without a leader: an Event's name is made of the namespace and the
//! mistake (`<namespace>.archway-setting.<fingerprint>`), so when two replicas
//! see the same mistake the second create is refused as AlreadyExists, and
//! only the replica whose create succeeded writes the log line. The Event
//! is kept in the namespace it is about (`kubectl get events -n shop`). A replica
//! remembers what it announced, so a resync or an unrelated change to the
//! namespace announces nothing; a changed value is a new mistake. A
//! restarted replica tries again, and is refused while the API server still
//! keeps the Event (`--event-ttl`, one hour by default).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use super::events::{EventRecorder, Kind, NewEvent, Recorded, Regarding};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::watcher;
use tokio::sync::mpsc;

use crate::components::Components;
use crate::decision::policy::{self, SettingProblem};
use crate::metrics::Metrics;

/// The Event's reason, which `kubectl get events --field-selector
/// reason=InvalidArchwaySetting` finds.
pub const REASON: &str = "InvalidArchwaySetting";
/// The Event's `reportingController`.
const REPORTER: &str = "archway.dev/settings";
/// Announcements waiting for their Event. Past it a mistake is announced
/// the next time its namespace changes or is listed again.
const QUEUE: usize = 1024;

/// Watches what namespaces' settings say and announces their mistakes.
#[derive(Clone)]
pub struct SettingsReporter {
    announced: Arc<Mutex<Announced>>,
    queue: mpsc::Sender<Announcement>,
    /// Where the namespaces with mistakes are counted.
    metrics: Arc<Metrics>,
}

/// One mistake on its way to an Event.
#[derive(Debug)]
struct Announcement {
    namespace: String,
    uid: Option<String>,
    problem: SettingProblem,
}

impl SettingsReporter {
    /// Starts the task that creates the Events. `identity` names this
    /// replica in them (`reportingInstance`).
    pub fn start(
        client: kube::Client,
        identity: String,
        metrics: Arc<Metrics>,
        components: &Components,
    ) -> SettingsReporter {
        let (queue, pending) = mpsc::channel(QUEUE);
        let announced = Arc::new(Mutex::new(Announced::default()));
        components.spawn(
            "settings report",
            publish_all(client, identity, pending, announced.clone()),
        );
        SettingsReporter {
            announced,
            queue,
            metrics,
        }
    }

    /// One event of the watch of all namespaces.
    pub fn observe(&self, event: &watcher::Event<PartialObjectMeta<Namespace>>) {
        let mut announced = self.announced.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            watcher::Event::Init => announced.relist_started(),
            watcher::Event::InitApply(namespace) | watcher::Event::Apply(namespace) => {
                self.check(&mut announced, namespace)
            }
            watcher::Event::InitDone => announced.relist_done(),
            watcher::Event::Delete(namespace) => {
                announced.forget(namespace.metadata.name.as_deref().unwrap_or_default())
            }
        }
        self.metrics
            .namespaces_invalid_settings
            .set(announced.namespaces_with_mistakes() as i64);
    }

    fn check(&self, announced: &mut Announced, namespace: &PartialObjectMeta<Namespace>) {
        let empty = Default::default();
        let labels = namespace.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = namespace.metadata.annotations.as_ref().unwrap_or(&empty);
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let problems = policy::setting_problems(labels, annotations);
        for problem in announced.seen(&name, &problems) {
            let announcement = Announcement {
                namespace: name.clone(),
                uid: namespace.metadata.uid.clone(),
                problem,
            };
            // Never waits: the watch also feeds the policy of every review.
            match self.queue.try_send(announcement) {
                Ok(()) => announced.overflowing = false,
                Err(full) => {
                    let announcement = full.into_inner();
                    announced.unannounce(&name, announcement.problem.fingerprint());
                    if !std::mem::replace(&mut announced.overflowing, true) {
                        tracing::warn!(
                            waiting = QUEUE,
                            "invalid archway settings: too many wait to be announced; the others \
                             are announced when their namespace changes or is listed again"
                        );
                    }
                }
            }
        }
    }
}

/// What this replica announced, per namespace: the fingerprints of the
/// mistakes it has now. Only namespaces with mistakes are kept, so memory
/// follows the mistakes, not the cluster.
#[derive(Debug, Default)]
struct Announced {
    namespaces: HashMap<String, BTreeSet<String>>,
    /// While a relist is under way, the namespaces with mistakes not listed
    /// again yet: those still here when it is done are gone.
    unlisted: Option<HashMap<String, BTreeSet<String>>>,
    /// The queue of announcements was full the last time one was queued:
    /// said once, not once per mistake.
    overflowing: bool,
}

impl Announced {
    /// Records the mistakes `namespace` has now; returns those to announce,
    /// the ones it did not have before. Fixed ones are forgotten, so a
    /// mistake made again is announced again.
    fn seen(&mut self, namespace: &str, problems: &[SettingProblem]) -> Vec<SettingProblem> {
        let unlisted = self.unlisted.as_mut().and_then(|u| u.remove(namespace));
        let before = (self.namespaces.remove(namespace))
            .or(unlisted)
            .unwrap_or_default();
        if problems.is_empty() {
            return Vec::new();
        }
        let now: BTreeSet<String> = problems
            .iter()
            .map(|p| p.fingerprint().to_string())
            .collect();
        let new = problems
            .iter()
            .filter(|p| !before.contains(p.fingerprint()))
            .cloned()
            .collect();
        self.namespaces.insert(namespace.to_string(), now);
        new
    }

    /// A mistake whose Event could not be made: the next time its namespace
    /// is seen with it, it is announced again. Whether the namespace still
    /// counts as one with mistakes does not change.
    fn unannounce(&mut self, namespace: &str, fingerprint: &str) {
        if let Some(fingerprints) = self.namespaces.get_mut(namespace) {
            fingerprints.remove(fingerprint);
        }
    }

    fn forget(&mut self, namespace: &str) {
        self.namespaces.remove(namespace);
        if let Some(unlisted) = self.unlisted.as_mut() {
            unlisted.remove(namespace);
        }
    }

    fn relist_started(&mut self) {
        let mut unlisted = self.unlisted.take().unwrap_or_default();
        unlisted.extend(std::mem::take(&mut self.namespaces));
        self.unlisted = Some(unlisted);
    }

    /// Namespaces deleted while the watch was down are not listed again.
    fn relist_done(&mut self) {
        self.unlisted = None;
    }

    fn namespaces_with_mistakes(&self) -> usize {
        // A namespace whose every announcement failed still has mistakes.
        self.namespaces.len() + self.unlisted.as_ref().map_or(0, HashMap::len)
    }
}

/// Creates the Events, one after the other.
async fn publish_all(
    client: kube::Client,
    identity: String,
    mut pending: mpsc::Receiver<Announcement>,
    announced: Arc<Mutex<Announced>>,
) {
    let recorder = EventRecorder::new(client, REPORTER, &identity);
    while let Some(announcement) = pending.recv().await {
        let Announcement {
            namespace, problem, ..
        } = &announcement;
        match recorder.record(event(&announcement)).await {
            Ok(Recorded::Created) => tracing::warn!(
                namespace = %namespace,
                setting = %problem.note(),
                "invalid archway setting"
            ),
            // Another replica, or this one before a restart, told it.
            Ok(Recorded::AlreadyTold) => {
                tracing::debug!(namespace = %namespace, setting = %problem.note(), "invalid archway setting already announced")
            }
            Err(error) => {
                tracing::warn!(
                    namespace = %namespace,
                    setting = %problem.note(),
                    %error,
                    "invalid archway setting; could not record its Event"
                );
                (announced.lock().unwrap_or_else(|e| e.into_inner()))
                    .unannounce(namespace, problem.fingerprint());
            }
        }
    }
}

/// The Event of one mistake: named for the namespace and the mistake, so
/// every replica makes the same name for it. It is kept in the namespace
/// itself, beside the Events of its pods (`kubectl get events -n shop`),
/// where those who work there look and may read. (Kubernetes keeps the
/// Events of other cluster-scoped objects in `default`, which a namespace's
/// users often may not read.)
fn event(announcement: &Announcement) -> NewEvent {
    let Announcement {
        namespace,
        uid,
        problem,
    } = announcement;
    NewEvent {
        kind: Kind::Warning,
        reason: REASON,
        action: "ReadSettings",
        // Bounded by construction (`SettingProblem`), under the 1 kB of a note.
        note: problem.note(),
        regarding: Regarding::namespace(namespace, uid.clone()),
        name: Some(event_name(namespace, problem)),
    }
}

/// `<namespace>.archway-setting.<fingerprint>`: a namespace name is at most
/// 63 characters, so the name stays a valid one (253). The Events of a
/// namespace go with it, so a namespace made again under the same name
/// starts without them.
fn event_name(namespace: &str, problem: &SettingProblem) -> String {
    format!("{namespace}.archway-setting.{}", problem.fingerprint())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::decision::policy::{COLD_ANNOTATION, MODE_LABEL, ROLLOUT_ANNOTATION};

    fn problems(annotations: &[(&str, &str)]) -> Vec<SettingProblem> {
        let labels = BTreeMap::from([(MODE_LABEL.to_string(), "enforce".to_string())]);
        let annotations = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        policy::setting_problems(&labels, &annotations)
    }

    fn notes(announce: Vec<SettingProblem>) -> Vec<String> {
        announce.iter().map(SettingProblem::note).collect()
    }

    #[test]
    fn each_mistake_is_announced_once_and_again_when_it_changes() {
        let mut announced = Announced::default();
        let bad = problems(&[(ROLLOUT_ANNOTATION, "50%")]);
        assert_eq!(announced.seen("shop", &bad).len(), 1);
        // A resync, or another annotation changed: nothing new.
        assert!(announced.seen("shop", &bad).is_empty());
        assert_eq!(announced.namespaces_with_mistakes(), 1);
        // A second mistake: only it is announced.
        let two = problems(&[(ROLLOUT_ANNOTATION, "50%"), (COLD_ANNOTATION, "GATE")]);
        assert_eq!(
            notes(announced.seen("shop", &two)),
            ["annotation archway.dev/cold \"GATE\" is not one of admit, gate; using admit"]
        );
        assert_eq!(announced.namespaces_with_mistakes(), 1);
        // Another value: a new mistake.
        let changed = problems(&[(ROLLOUT_ANNOTATION, "1000"), (COLD_ANNOTATION, "GATE")]);
        assert_eq!(
            notes(announced.seen("shop", &changed)),
            [
                "annotation archway.dev/rollout \"1000\" is not a whole number from 0 to 100; using 0"
            ]
        );
        // Fixed: the namespace no longer counts.
        assert!(announced.seen("shop", &[]).is_empty());
        assert_eq!(announced.namespaces_with_mistakes(), 0);
        // The same mistake made again is told again.
        assert_eq!(announced.seen("shop", &bad).len(), 1);
        announced.forget("shop");
        assert_eq!(announced.namespaces_with_mistakes(), 0);
    }

    #[test]
    fn a_failed_announcement_is_tried_again() {
        let mut announced = Announced::default();
        let bad = problems(&[(ROLLOUT_ANNOTATION, "50%")]);
        assert_eq!(announced.seen("shop", &bad).len(), 1);
        announced.unannounce("shop", bad[0].fingerprint());
        assert_eq!(announced.namespaces_with_mistakes(), 1);
        assert_eq!(announced.seen("shop", &bad).len(), 1);
        assert!(announced.seen("shop", &bad).is_empty());
    }

    #[test]
    fn a_relist_forgets_deleted_namespaces_and_announces_nothing_twice() {
        let mut announced = Announced::default();
        let bad = problems(&[(ROLLOUT_ANNOTATION, "50%")]);
        announced.seen("kept", &bad);
        announced.seen("deleted", &bad);
        assert_eq!(announced.namespaces_with_mistakes(), 2);
        announced.relist_started();
        assert!(announced.seen("kept", &bad).is_empty());
        announced.seen("fine", &[]);
        // Until the relist is done, the namespaces not listed again count,
        // also when the watch starts listing again before it is done.
        assert_eq!(announced.namespaces_with_mistakes(), 2);
        announced.relist_started();
        assert_eq!(announced.namespaces_with_mistakes(), 2);
        assert!(announced.seen("kept", &bad).is_empty());
        announced.relist_done();
        assert_eq!(announced.namespaces_with_mistakes(), 1);
        assert!(announced.seen("kept", &bad).is_empty());
    }

    #[test]
    fn the_event_names_the_namespace_and_the_mistake() {
        let bad = problems(&[(ROLLOUT_ANNOTATION, "50%")]).remove(0);
        let announcement = Announcement {
            namespace: "shop".into(),
            uid: Some("u-1".into()),
            problem: bad.clone(),
        };
        let event = crate::cluster::events::build(event(&announcement), REPORTER, "archway-0");
        let name = event.metadata.name.clone().unwrap();
        assert_eq!(name, format!("shop.archway-setting.{}", bad.fingerprint()));
        assert_eq!(event.metadata.namespace.as_deref(), Some("shop"));
        // Another replica, another time: the same name.
        assert_eq!(
            crate::cluster::events::build(super::event(&announcement), REPORTER, "archway-1")
                .metadata
                .name,
            Some(name.clone())
        );
        // A DNS subdomain, as Event names must be, for the longest namespace.
        let long = "n".repeat(63);
        let long_name = event_name(&long, &bad);
        assert!(long_name.len() <= 253);
        assert!(
            long_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        );
        assert_eq!(event.reason.as_deref(), Some(REASON));
        assert_eq!(event.type_.as_deref(), Some("Warning"));
        assert_eq!(
            event.note.as_deref(),
            Some(
                "annotation archway.dev/rollout \"50%\" is not a whole number from 0 to 100; using 0"
            )
        );
        let regarding = event.regarding.unwrap();
        assert_eq!(
            (
                regarding.kind.as_deref(),
                regarding.name.as_deref(),
                regarding.uid.as_deref()
            ),
            (Some("Namespace"), Some("shop"), Some("u-1"))
        );
        // The API server refuses an Event in a namespace about an object
        // of no namespace.
        assert_eq!(regarding.namespace.as_deref(), Some("shop"));
        let other = problems(&[(ROLLOUT_ANNOTATION, "1000")]).remove(0);
        assert_ne!(event_name("shop", &other), name);
    }
}

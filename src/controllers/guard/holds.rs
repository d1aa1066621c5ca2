//! Holds: where they live (a label and an annotation on the workload),
//! how the webhook reads them (a watched in-memory map, no API call per
//! review), and how the guard writes one.
//!
//! The label `archway.dev/hold: arm64` is the hold; its value is the
//! architecture held off. A label, not only an annotation, so archway can
//! watch held workloads alone with a label selector instead of every
//! Deployment of the cluster. The annotation `archway.dev/hold-reason`
//! says why, for `kubectl describe`. A person clears a hold by removing
//! the label; archway then removes the stale reason, and never removes a
//! hold itself.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::api::{Api, PartialObjectMeta, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::decision::placement::{self, Hold};
use crate::decision::policy::GuardMode;
use crate::metrics::Metrics;

pub const HOLD_LABEL: &str = "archway.dev/hold";
pub const HOLD_REASON_ANNOTATION: &str = "archway.dev/hold-reason";
/// The kinds a hold is recorded on: those whose pods keep running and are
/// replaced by their controller, where "new pods go elsewhere" means
/// something. Pods of other owners are watched, but a trip there is only
/// logged and counted.
pub const HOLDABLE_KINDS: [&str; 2] = ["Deployment", "StatefulSet"];
/// A reason read back from the cluster is anyone's writing: bounded before
/// it reaches a pod's annotation.
const MAX_REASON_CHARS: usize = 256;

/// `namespace/Kind/name`, as `rollout-by: workload` names a workload.
pub fn workload_key(namespace: &str, kind: &str, name: &str) -> String {
    format!("{namespace}/{kind}/{name}")
}

/// The holds of the cluster, as the webhook reads them.
#[derive(Clone)]
pub struct Holds {
    map: Arc<RwLock<HashMap<String, Hold>>>,
    /// Kinds whose first list has arrived.
    synced: Arc<AtomicUsize>,
    /// Where the count of held workloads is published at each change.
    metrics: Arc<Metrics>,
}

impl Holds {
    /// No holds yet, none listed.
    pub fn new(metrics: Arc<Metrics>) -> Holds {
        Holds {
            map: Arc::default(),
            synced: Arc::default(),
            metrics,
        }
    }

    pub fn get(&self, key: &str) -> Option<Hold> {
        self.read().get(key).cloned()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// The holds on workloads of `namespace`, by `Kind/name`, sorted.
    pub fn in_namespace(&self, namespace: &str) -> Vec<(String, Hold)> {
        let prefix = format!("{namespace}/");
        let mut found: Vec<(String, Hold)> = (self.read().iter())
            .filter_map(|(key, hold)| Some((key.strip_prefix(&prefix)?.to_string(), hold.clone())))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every holdable kind has been listed once.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire) >= HOLDABLE_KINDS.len()
    }

    /// Known at once, before the watch brings the written label back, so
    /// the next pod of the workload is already held.
    pub fn insert(&self, key: String, hold: Hold) {
        self.write().insert(key, hold);
        self.publish_count();
    }

    pub fn remove(&self, key: &str) {
        self.write().remove(key);
        self.publish_count();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Hold>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Hold>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }

    fn publish_count(&self) {
        self.metrics.guard_held_workloads.set(self.len() as i64);
    }
}

/// The hold a workload's metadata records, if any.
fn hold_of<K>(kind: &str, object: &PartialObjectMeta<K>) -> Option<(String, Hold)> {
    let meta = &object.metadata;
    let key = workload_key(meta.namespace.as_deref()?, kind, meta.name.as_deref()?);
    let architecture = meta.labels.as_ref()?.get(HOLD_LABEL)?.clone();
    let reason = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOLD_REASON_ANNOTATION))
        .map(|r| bounded(r))
        .unwrap_or_else(|| format!("held off {architecture} ({HOLD_LABEL} set by hand)"));
    Some((
        key,
        Hold {
            architecture,
            reason,
        },
    ))
}

/// Control characters out and the length bounded: the reason goes into
/// pods' annotations and logs.
fn bounded(text: &str) -> String {
    text.chars()
        .take(MAX_REASON_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Keeps `holds` in step with the workloads of kind `K` that carry the
/// hold label. A workload whose label a person removed has its reason
/// annotation removed (`tidy_reason`).
pub async fn watch_holds<K>(
    client: kube::Client,
    kind: &'static str,
    holds: Holds,
    leading: tokio::sync::watch::Receiver<bool>,
) where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    // Metadata only: nothing of a workload's spec is read.
    let api: Api<PartialObjectMeta<K>> = Api::all(client.clone());
    let config = watcher::Config::default().labels(HOLD_LABEL);
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    let mut relisting: HashMap<String, Hold> = HashMap::new();
    let mut listed_once = false;
    while let Some(event) = stream.next().await {
        match event {
            Err(error) => tracing::warn!(what = "holds", kind, %error, "watch failed; retrying"),
            Ok(watcher::Event::Init) => relisting.clear(),
            Ok(watcher::Event::InitApply(object)) => relisting.extend(hold_of(kind, &object)),
            Ok(watcher::Event::InitDone) => {
                let suffix = format!("/{kind}/");
                let mut map = holds.write();
                map.retain(|key, _| !key.contains(&suffix));
                map.extend(relisting.drain());
                drop(map);
                if !listed_once {
                    listed_once = true;
                    holds.synced.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(kind, "holds synced");
                }
            }
            Ok(watcher::Event::Apply(object)) => {
                if let Some((key, hold)) = hold_of(kind, &object) {
                    holds.write().insert(key, hold);
                }
            }
            Ok(watcher::Event::Delete(object)) => {
                let meta = &object.metadata;
                let (Some(namespace), Some(name)) = (&meta.namespace, &meta.name) else {
                    continue;
                };
                let key = workload_key(namespace, kind, name);
                if holds.write().remove(&key).is_some() {
                    tracing::info!(workload = %key, "hold cleared");
                    let reason = meta
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(HOLD_REASON_ANNOTATION));
                    // The leader tidies; the removal is conditional, so
                    // a second writer would only be refused.
                    if let Some(reason) = reason.filter(|_| *leading.borrow()) {
                        let api: Api<K> = Api::namespaced(client.clone(), namespace);
                        tidy_reason(&api, name, reason).await;
                    }
                }
            }
        }
        holds.publish_count();
    }
}

/// Removes the reason of a cleared hold, unless it changed meanwhile (a
/// new hold): the JSON patch's `test` makes the removal conditional. A
/// workload that was deleted answers 404, which is fine.
async fn tidy_reason<K>(api: &Api<K>, name: &str, reason: &str)
where
    K: kube::Resource + Clone + DeserializeOwned + Debug,
{
    let path = format!(
        "/metadata/annotations/{}",
        HOLD_REASON_ANNOTATION.replace('/', "~1")
    );
    let patch: json_patch::Patch = match serde_json::from_value(json!([
        {"op": "test", "path": path, "value": reason},
        {"op": "remove", "path": path},
    ])) {
        Ok(patch) => patch,
        Err(_) => return,
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if matches!(status.code, 404 | 422) => {}
        Err(error) => tracing::warn!(%error, name, "could not remove a cleared hold's reason"),
    }
}

/// Why a hold could not be recorded.
#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("{0} cannot carry a hold")]
    NotHoldable(String),
    #[error("writing the hold: {0}")]
    Write(kube::Error),
}

impl HoldError {
    pub fn metric_label(&self) -> &'static str {
        match self {
            HoldError::NotHoldable(_) => "not_holdable",
            HoldError::Write(kube::Error::Api(status)) if status.code == 403 => "forbidden",
            HoldError::Write(kube::Error::Api(status)) if status.code == 404 => "not_found",
            HoldError::Write(_) => "api_error",
        }
    }
}

/// Writes holds on workloads and tells about them with Events.
#[derive(Clone)]
pub struct HoldWriter {
    client: kube::Client,
    recorder: Recorder,
}

impl HoldWriter {
    pub fn new(client: kube::Client) -> HoldWriter {
        let reporter = Reporter {
            controller: "archway".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        HoldWriter {
            recorder: Recorder::new(client.clone(), reporter),
            client,
        }
    }

    /// Labels and annotates the workload; returns its uid, for the Event.
    pub async fn record(
        &self,
        namespace: &str,
        kind: &str,
        name: &str,
        hold: &Hold,
    ) -> Result<Option<String>, HoldError> {
        let patch = json!({"metadata": {
            "labels": {HOLD_LABEL: hold.architecture},
            "annotations": {HOLD_REASON_ANNOTATION: hold.reason},
        }});
        let params = PatchParams::default();
        let patch = Patch::Merge(&patch);
        match kind {
            "Deployment" => {
                let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
                api.patch_metadata(name, &params, &patch)
                    .await
                    .map(|o| o.metadata.uid)
            }
            "StatefulSet" => {
                let api: Api<StatefulSet> = Api::namespaced(self.client.clone(), namespace);
                api.patch_metadata(name, &params, &patch)
                    .await
                    .map(|o| o.metadata.uid)
            }
            other => return Err(HoldError::NotHoldable(other.to_string())),
        }
        .map_err(HoldError::Write)
    }

    /// A Warning Event on the held workload, best effort: the hold is what
    /// matters.
    pub async fn announce(
        &self,
        (namespace, kind, name): (&str, &str, &str),
        uid: Option<String>,
        hold: &Hold,
        mode: GuardMode,
    ) {
        let note = match mode {
            GuardMode::Observe => format!(
                "{} (archway.dev/guard is observe: new pods are still steered)",
                hold.reason
            ),
            _ => format!(
                "{}; new pods go to the other architecture. Move running pods with \
                 `kubectl rollout restart`; clear with `kubectl label {} {name} {HOLD_LABEL}-`",
                hold.reason,
                kind.to_ascii_lowercase()
            ),
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "ArchitectureHold".into(),
            note: Some(bounded_note(&note)),
            action: "Hold".into(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("apps/v1".into()),
            kind: Some(kind.into()),
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid,
            ..ObjectReference::default()
        };
        if let Err(error) = self.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, namespace, name, "could not emit the hold's Event");
        }
    }
}

/// Events carry at most 1 kB of note.
fn bounded_note(note: &str) -> String {
    let mut end = note.len().min(1000);
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    note[..end].to_string()
}

impl crate::admission::HeldWorkloads for Holds {
    fn for_pod(&self, pod: &Pod) -> Option<Hold> {
        let namespace = pod.metadata.namespace.as_deref()?;
        let (kind, name) = placement::workload(&pod.metadata)?;
        self.get(&workload_key(namespace, &kind, &name))
    }
}

//! The gate controller inside `archway serve`: finishes the lookups of
//! gated pods through the same `Reviewer` as the webhook (cache, single
//! flight, guard, pull-secret credentials, namespace budget), then places
//! each pod and removes the gate in one update (a JSON Patch pinned to the
//! resourceVersion read, see `gate::release_patch`), or removes it without
//! placement, with an Event, once the lookups failed or `gate.timeout`
//! passed. Only the replica holding the Lease (`lease`) runs it.
//!
//! The watch keeps a [`GatePod`] per labelled pod, not the pod: anyone who
//! can create pods can set the label, in any namespace, on pods of any size.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use serde::Deserialize;
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::admission::SharedReviewer;
use crate::decision::gating::{self, GATE, GATED_LABEL, Next, Release};
use crate::decision::placement::{self, Outcome};
use crate::decision::policy::Mode;
use crate::metrics::Metrics;

/// Gated pods worked on at once. A pod being worked on mostly waits for a
/// lookup shared with the other pods of its image (a small future beside
/// the pod the watch already holds), so the bound is high: a low one would
/// make the pods of the next image queue behind those of an image whose
/// registry is slow (measured: with 128, 300 pods of 10 images created
/// within 4 s waited up to 9 s for a 3 s registry).
const CONCURRENCY: u16 = 2048;
/// Writes to the API server (patches, Events) in flight at once, so that
/// releasing a thousand pods whose image just arrived does not hit the API
/// server with a thousand requests at the same instant.
const WRITES: usize = 32;
/// Tries of one pod's update when another writer changed the pod first.
const UPDATE_TRIES: usize = 5;
/// The Event's `reportingController`.
const REPORTER: &str = "archway.dev/gate";
/// Labelled pods per list page when the watch (re)lists. kube's client
/// holds a page whole twice (the response's bytes and their copy as a
/// `String`) before its pods become [`GatePod`]s, and a pod may weigh up
/// to ~1.5 MB (the API server's limit). With one pod a page, a relist of
/// megabyte pods costs a few MB at a time; with 4 a page archway's peak
/// rose by 19 MiB more; with kube's default of 500, labelled pods in a
/// namespace that never opted in could make archway hold hundreds of MB
/// (past deploy/'s 128Mi limit: an OOM kill on every relist). The price:
/// one list request per labelled pod on a relist, and few pods carry it.
const LIST_PAGE_SIZE: u32 = 1;

/// What the gate controller's watch keeps of a pod labelled
/// `archway.dev/gated=true`: its name, namespace, uid and resourceVersion,
/// and whether it still carries archway's gate. Everything else (env,
/// annotations, the containers) is skipped while the JSON is read, never
/// kept, so each pod in the watch's store costs a few hundred bytes,
/// however big the pod. `reconcile` reads the whole pod only while it is
/// gated.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "wire::Pod")]
pub struct GatePod {
    /// Only `name`, `namespace`, `uid` and `resourceVersion` are set.
    metadata: ObjectMeta,
    /// `spec.schedulingGates` names archway's gate ([`GATE`]).
    gated: bool,
}

impl GatePod {
    /// Whether the pod still carries archway's gate.
    pub fn is_gated(&self) -> bool {
        self.gated
    }
}

/// The JSON that becomes a [`GatePod`]: serde skips every field not named
/// here without keeping it.
mod wire {
    use serde::Deserialize;

    #[derive(Deserialize)]
    pub(super) struct Pod {
        #[serde(default)]
        pub metadata: Metadata,
        #[serde(default)]
        pub spec: Option<Spec>,
    }

    #[derive(Default, Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Metadata {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub uid: Option<String>,
        pub resource_version: Option<String>,
    }

    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub(super) struct Spec {
        #[serde(default)]
        pub scheduling_gates: Option<Vec<Gate>>,
    }

    #[derive(Deserialize)]
    pub(super) struct Gate {
        #[serde(default)]
        pub name: String,
    }
}

impl From<wire::Pod> for GatePod {
    fn from(pod: wire::Pod) -> GatePod {
        let gates = pod
            .spec
            .and_then(|s| s.scheduling_gates)
            .unwrap_or_default();
        GatePod {
            metadata: ObjectMeta {
                name: pod.metadata.name,
                namespace: pod.metadata.namespace,
                uid: pod.metadata.uid,
                resource_version: pod.metadata.resource_version,
                ..Default::default()
            },
            gated: gates.iter().any(|g| g.name == GATE),
        }
    }
}

/// A pod, as `Api<GatePod>` and the watch see it: core/v1 `pods`.
impl kube::Resource for GatePod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::KIND.into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::GROUP.into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::VERSION.into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        <Pod as k8s_openapi::Resource>::URL_PATH_SEGMENT.into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Why a gated pod could not be handled this time (retried).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error(transparent)]
    Release(#[from] gating::ReleaseError),
    #[error("the pod kept changing under {UPDATE_TRIES} updates")]
    Conflicts,
}

impl GateError {
    /// A short label for logs and metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            GateError::Kube(_) => "kube",
            GateError::Release(_) => "release",
            GateError::Conflicts => "conflicts",
        }
    }
}

struct Context {
    client: kube::Client,
    state: SharedReviewer,
    identity: String,
    /// Where the gates removed are counted.
    metrics: Arc<Metrics>,
    writes: tokio::sync::Semaphore,
    /// The leader releases pods; a follower only looks their images up
    /// (warming its own cache), so that if it comes to lead it releases at
    /// once what it already knows instead of starting the lookups then,
    /// with the gate's timeout running.
    release: bool,
}

/// Runs the controller until the election (`leading`, from `lease.rs`)
/// ends: releasing pods while this replica leads, warming its lookups of
/// the gated pods' images while another does. `identity` names this
/// replica in Events.
pub async fn run(
    client: kube::Client,
    state: SharedReviewer,
    identity: String,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let context = |release| {
        Arc::new(Context {
            client: client.clone(),
            state: state.clone(),
            identity: identity.clone(),
            metrics: metrics.clone(),
            writes: tokio::sync::Semaphore::new(WRITES),
            release,
        })
    };
    let (leader, follower) = (context(true), context(false));
    loop {
        let leads = *leading.borrow_and_update();
        // A new controller lists every gated pod first: those gated while
        // no replica led, or left by the replica that led before. Aborted
        // when leadership changes, and with this future when archway
        // stops.
        let context = if leads { &leader } else { &follower };
        let task = AbortOnDropHandle::new(tokio::spawn(reconcile_gated(context.clone())));
        let ended = leading.wait_for(|l| *l != leads).await.is_err();
        drop(task);
        if ended {
            break;
        }
    }
}

async fn reconcile_gated(context: Arc<Context>) {
    let pods: Api<GatePod> = Api::all(context.client.clone());
    let selector = watcher::Config::default()
        .labels(&format!("{GATED_LABEL}=true"))
        .page_size(LIST_PAGE_SIZE);
    Controller::new(pods, selector)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "gate controller");
            }
        })
        .await;
}

fn error_policy(pod: Arc<GatePod>, error: &GateError, _: Arc<Context>) -> Action {
    tracing::warn!(
        pod = %pod.metadata.name.as_deref().unwrap_or_default(),
        namespace = %pod.metadata.namespace.as_deref().unwrap_or_default(),
        error = %error,
        kind = error.metric_label(),
        "gated pod not handled; retrying"
    );
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(pod: Arc<GatePod>, context: Arc<Context>) -> Result<Action, GateError> {
    if !pod.is_gated() {
        return Ok(Action::await_change());
    }
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return Ok(Action::await_change());
    };
    let api: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    // The watch keeps only the slim view: the whole pod, read now.
    let mut pod = match api.get_opt(name).await? {
        Some(pod) if gating::is_gated(&pod) => pod,
        _ => return Ok(Action::await_change()),
    };
    for _ in 0..UPDATE_TRIES {
        let reviewer = context.state.reviewer();
        let timeout = reviewer.settings.gate_timeout;
        let handled = handle(&reviewer, &pod, timeout).await;
        let Handled::Release {
            release,
            metric,
            event,
        } = handled
        else {
            return Ok(Action::requeue(Duration::from_millis(500)));
        };
        if !context.release {
            // A follower: the lookups are done (and cached); the leader
            // writes.
            return Ok(Action::await_change());
        }
        let (how, placed) = match &release {
            Released::Place(injection) => (
                Release::Place(injection),
                placement::join(&injection.required),
            ),
            Released::Unplaced(reason) => (Release::Unplaced(reason.clone()), "-".into()),
        };
        let patch = gating::release_patch(&pod, &how, &reviewer.settings.decision.tolerations)?;
        let _write = context.writes.acquire().await;
        match api
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => {
                let gated = gating::gated_for(&pod, now_ms());
                context.metrics.gate_removed(metric, gated);
                tracing::info!(
                    pod = %name, namespace = %namespace, reason = metric,
                    gated_ms = gated.as_millis() as u64,
                    placed = %placed,
                    "gate removed"
                );
                if let Some((kind, reason, note)) = event {
                    publish(&context, &pod, kind, reason, &note).await;
                }
                return Ok(Action::await_change());
            }
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
            Err(kube::Error::Api(e)) if is_conflict(&e) => {
                // Changed since read: decide again on the pod as it is now.
                match api.get_opt(name).await? {
                    Some(fresh) if gating::is_gated(&fresh) => pod = fresh,
                    _ => return Ok(Action::await_change()),
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(GateError::Conflicts)
}

/// What the controller does with one gated pod this time.
enum Handled {
    /// Lookups still running with time left: look again soon.
    Wait,
    Release {
        release: Released,
        /// `gates_removed` reason label.
        metric: &'static str,
        /// Event type, reason and note, when the pod's owner should hear.
        event: Option<(&'static str, &'static str, String)>,
    },
}

enum Released {
    Place(Box<placement::Injection>),
    Unplaced(String),
}

/// Looks the pod's images up (waiting at most until its gate times out)
/// and decides, as the webhook would have.
async fn handle(reviewer: &crate::admission::Reviewer, pod: &Pod, timeout: Duration) -> Handled {
    let unplaced = |reason: String, metric, event_reason| Handled::Release {
        event: Some(("Warning", event_reason, reason.clone())),
        release: Released::Unplaced(reason),
        metric,
    };
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let policy = match reviewer.policies.policy(namespace) {
        Some(policy) if policy.mode == Mode::Enforce => policy,
        _ => {
            let reason = "the namespace no longer enforces archway; released unplaced".to_string();
            return unplaced(reason, "unplaced", "NotPlaced");
        }
    };
    let waited = gating::gated_for(pod, now_ms());
    let left = timeout.saturating_sub(waited);
    let deadline = tokio::time::Instant::now() + left;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let evaluation = reviewer
        .evaluate(pod, &policy, deadline, &uid, gating::recorded_draw(pod))
        .await;
    let waited = gating::gated_for(pod, now_ms());
    match gating::next(evaluation.pending.len(), waited, timeout) {
        Next::Wait => Handled::Wait,
        Next::TimedOut => {
            let reason = format!(
                "images still being looked up after the gate timeout ({}): {}; released unplaced",
                humantime::format_duration(timeout),
                evaluation.pending.join(", ")
            );
            unplaced(reason, "timeout", "GateTimeout")
        }
        Next::Release => match evaluation.decision.outcome {
            Outcome::Inject(injection) => Handled::Release {
                release: Released::Place(Box::new(injection)),
                metric: "placed",
                event: None,
            },
            // A gated pod was admitted already: a denial cannot apply, so
            // it is released unplaced with the reason, as `admit` would.
            Outcome::Unchanged | Outcome::Deny => {
                let decision = &evaluation.decision;
                let mut reason = decision.reason.clone();
                for warning in evaluation.warnings.iter().chain(&decision.warnings) {
                    reason.push_str("; ");
                    reason.push_str(warning);
                }
                unplaced(reason, "unplaced", "NotPlaced")
            }
        },
    }
}

/// The pod changed since it was read: its resourceVersion no longer
/// matches (409; 422 should a server refuse the pinned version as invalid).
fn is_conflict(error: &kube::core::Status) -> bool {
    error.code == 409 || error.code == 422
}

fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// An events.k8s.io/v1 Event on `pod`; a failure is only logged.
async fn publish(context: &Context, pod: &Pod, kind: &str, reason: &str, note: &str) {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let now = k8s_openapi::jiff::Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            // As client-go names Events: the object's name and the time.
            name: Some(format!(
                "{}.{:x}",
                name.chars().take(200).collect::<String>(),
                now.as_nanosecond()
            )),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        event_time: Some(MicroTime(now)),
        action: Some("Ungate".into()),
        reason: Some(reason.into()),
        note: Some(crate::decision::text::truncate_for_message(note)),
        type_: Some(kind.into()),
        reporting_controller: Some(REPORTER.into()),
        reporting_instance: Some(context.identity.clone()),
        regarding: Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name),
            namespace: Some(namespace.clone()),
            uid: pod.metadata.uid.clone(),
            resource_version: pod.metadata.resource_version.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let events: Api<Event> = Api::namespaced(context.client.clone(), &namespace);
    if let Err(error) = events.create(&PostParams::default(), &event).await {
        tracing::warn!(%error, "could not record the gate Event");
    }
}

/// `archway ungate`: removes archway's gate from every pod (in
/// `namespace`, or all), without placement. Reads pods a page at a time,
/// so memory does not grow with the cluster. Returns how many it ungated.
pub async fn ungate_all(client: kube::Client, namespace: Option<&str>) -> Result<usize, GateError> {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let mut params = ListParams::default().limit(500);
    let mut ungated = 0;
    loop {
        let page = api.list(&params).await?;
        for pod in page.items.iter().filter(|p| gating::is_gated(p)) {
            if ungate_one(&client, pod).await? {
                ungated += 1;
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(ungated),
        }
    }
}

async fn ungate_one(client: &kube::Client, pod: &Pod) -> Result<bool, GateError> {
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return Ok(false);
    };
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let release = Release::Unplaced("removed by `archway ungate`".into());
    let mut pod = pod.clone();
    for _ in 0..UPDATE_TRIES {
        let patch = gating::release_patch(&pod, &release, &Default::default())?;
        match api
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(false),
            Err(kube::Error::Api(e)) if is_conflict(&e) => match api.get_opt(name).await? {
                Some(fresh) if gating::is_gated(&fresh) => pod = fresh,
                _ => return Ok(false),
            },
            Err(e) => return Err(e.into()),
        }
    }
    Err(GateError::Conflicts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(gates: serde_json::Value) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "web", "namespace": "shop", "uid": "u-1", "resourceVersion": "42",
                "labels": {"archway.dev/gated": "true"},
                "annotations": {"big": "x".repeat(100_000)},
            },
            "spec": {
                "schedulingGates": gates,
                "containers": [{
                    "name": "c", "image": "busybox",
                    "env": [{"name": "BIG", "value": "y".repeat(100_000)}],
                }],
            },
            "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn gate_pod_keeps_only_what_the_controller_needs() {
        let view: GatePod = serde_json::from_value(pod(json!([{"name": GATE}]))).unwrap();
        assert!(view.is_gated());
        let expected = ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("u-1".into()),
            resource_version: Some("42".into()),
            ..Default::default()
        };
        assert_eq!(view.metadata, expected);
        assert!(format!("{view:?}").len() < 500, "{view:?}");
    }

    #[test]
    fn gate_pod_is_gated_only_by_archway_s_gate() {
        for (gates, gated) in [
            (json!([{"name": "example.com/other"}, {"name": GATE}]), true),
            (json!([{"name": "example.com/other"}]), false),
            (json!([]), false),
            (json!(null), false),
        ] {
            let view: GatePod = serde_json::from_value(pod(gates.clone())).unwrap();
            assert_eq!(view.is_gated(), gated, "{gates}");
        }
        let bare: GatePod = serde_json::from_value(json!({"metadata": {"name": "p"}})).unwrap();
        assert!(!bare.is_gated());
    }

    #[test]
    fn gate_pod_is_listed_and_watched_as_core_v1_pods() {
        use kube::Resource;
        assert_eq!(GatePod::url_path(&(), None), Pod::url_path(&(), None));
        assert_eq!(
            GatePod::url_path(&(), Some("shop")),
            "/api/v1/namespaces/shop/pods"
        );
        assert_eq!(GatePod::api_version(&()), "v1");
        assert_eq!(GatePod::kind(&()), "Pod");
    }
}

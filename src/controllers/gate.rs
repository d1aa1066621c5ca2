//! The gate controller inside `archway serve`: finishes the lookups of
//! gated pods through the same `Reviewer` as the webhook (cache, single
//! flight, guard, pull-secret credentials, namespace budget), then places
//! each pod and removes the gate in one update (a JSON Patch pinned to the
//! resourceVersion read, see `gate::release_patch`), or removes it without
//! placement, with an Event, once the lookups failed or `gate.timeout`
//! passed. Only the replica holding the Lease (`lease`) runs it.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::watcher;
use tokio::sync::watch;

use crate::admission::SharedReviewer;
use crate::cluster::lease::{Elector, LeaseSettings};
use crate::decision::gating::{self, GATED_LABEL, Next, Release};
use crate::decision::placement::{self, Outcome};
use crate::decision::policy::Mode;

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
    writes: tokio::sync::Semaphore,
}

/// Runs the Lease election and, while this replica holds the Lease, the
/// controller; until `stop` is set or dropped.
pub async fn run(
    client: kube::Client,
    state: SharedReviewer,
    lease: LeaseSettings,
    stop: watch::Receiver<bool>,
) {
    let (leading_tx, mut leading) = watch::channel(false);
    let identity = lease.identity.clone();
    let election = tokio::spawn(Elector::new(client.clone(), lease).run(leading_tx, stop.clone()));
    let context = Arc::new(Context {
        client,
        state,
        identity,
        writes: tokio::sync::Semaphore::new(WRITES),
    });
    loop {
        // Wait to lead.
        if leading.wait_for(|l| *l).await.is_err() {
            break;
        }
        // A new controller lists every gated pod first: those gated while
        // no replica led, or left by the replica that led before.
        let task = tokio::spawn(reconcile_gated(context.clone()));
        let lost = leading.wait_for(|l| !*l).await.is_err();
        task.abort();
        if lost {
            break;
        }
    }
    let _ = election.await;
}

async fn reconcile_gated(context: Arc<Context>) {
    let pods: Api<Pod> = Api::all(context.client.clone());
    let selector = watcher::Config::default().labels(&format!("{GATED_LABEL}=true"));
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

fn error_policy(pod: Arc<Pod>, error: &GateError, _: Arc<Context>) -> Action {
    tracing::warn!(
        pod = %pod.metadata.name.as_deref().unwrap_or_default(),
        namespace = %pod.metadata.namespace.as_deref().unwrap_or_default(),
        error = %error,
        kind = error.metric_label(),
        "gated pod not handled; retrying"
    );
    Action::requeue(Duration::from_secs(1))
}

async fn reconcile(pod: Arc<Pod>, context: Arc<Context>) -> Result<Action, GateError> {
    if !gating::is_gated(&pod) {
        return Ok(Action::await_change());
    }
    let (Some(name), Some(namespace)) = (&pod.metadata.name, &pod.metadata.namespace) else {
        return Ok(Action::await_change());
    };
    let api: Api<Pod> = Api::namespaced(context.client.clone(), namespace);
    let mut pod = (*pod).clone();
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
                crate::metrics::global().gate_removed(metric, gated);
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

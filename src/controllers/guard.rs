//! The rollout guard: stops sending a workload to the target architecture
//! when its pods fail there and not elsewhere.
//!
//! archway labels every pod whose architecture the rollout chose
//! (`archway.dev/arch`, either side; `placement.rs`). The guard watches
//! only those pods, by label selector, decoded into a slim type and
//! reduced to a few words each (`detect.rs`), so its memory grows by
//! little per pod whatever the pods hold. Labelling both sides is what
//! lets it tell "fails on arm64" from "fails everywhere" without a second
//! look at the workload.
//!
//! What a pod author can make the guard do: nothing to a workload that is
//! not theirs. A pod counts only when (1) its namespace is enforced, where
//! archway owns the `archway.dev/` keys on pods (admission removes any it
//! did not write, see `admission::disown`), (2) it is bound to a node of
//! the architecture its label names, and (3) its controller reference
//! leads, uid by uid, to the workload (`owners.rs`). A pod that passes all
//! three is one the workload's own controller counts as its replica.
//!
//! When a workload trips, the hold is written on it (`holds.rs`), which
//! the webhook reads from a watched map: new pods of the workload go to
//! the other architecture. Running pods are left alone (no eviction).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crate::cluster::NodeInventory;
use crate::components::Components;
use crate::config::GuardConfig;
use crate::decision::placement::{ARCH_POD_LABEL, Hold};
use crate::decision::policy::{GuardMode, Mode, NamespacePolicy, PolicySource};
use crate::metrics::Metrics;
pub use detect::{Detector, DetectorSettings, Failure, Observation, Verdict};
pub use holds::{HOLD_LABEL, HOLD_REASON_ANNOTATION, HoldError, HoldWriter, Holds};
pub use owners::Owners;
use pods::GuardPod;

pub mod detect;
pub mod holds;
pub mod owners;
pub mod pods;

/// What the guard judges by: the configuration's `guard:` section and the
/// target architecture.
pub fn detector_settings(config: &GuardConfig, target: &str) -> DetectorSettings {
    DetectorSettings {
        target: target.to_string(),
        threshold: config.threshold,
        window: config.window,
        restarts: config.restarts,
    }
}

/// Namespace policies whose readiness also waits for the holds: a review
/// answered before them could steer a held workload's pod.
pub struct GuardedPolicies {
    pub inner: Arc<dyn PolicySource>,
    pub holds: Holds,
}

impl PolicySource for GuardedPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        self.inner.policy(namespace)
    }
    fn is_ready(&self) -> bool {
        self.inner.is_ready() && self.holds.is_synced()
    }
}

/// What the guard shares with the rest of archway, from the runtime.
pub struct GuardContext {
    pub client: kube::Client,
    /// Which namespaces are enforced, and their guard mode.
    pub policies: Arc<dyn PolicySource>,
    /// The architecture of each node, to check where a pod runs.
    pub nodes: Arc<dyn NodeInventory>,
    /// The holds the webhook reads: the guard adds to them.
    pub holds: Holds,
    /// Whether this replica leads: only the leader writes holds.
    pub leading: watch::Receiver<bool>,
    /// Where the pods followed and the holds written are counted.
    pub metrics: Arc<Metrics>,
}

/// Starts the guard's watches: held workloads, the owners of pods, and
/// archway's pods (once the owners are known).
pub fn start(context: GuardContext, settings: DetectorSettings, components: &Components) {
    let GuardContext {
        client,
        policies,
        nodes,
        holds,
        leading,
        metrics,
    } = context;
    components.spawn(
        "guard: held Deployments watch",
        holds::watch_holds::<Deployment>(
            client.clone(),
            "Deployment",
            holds.clone(),
            leading.clone(),
        ),
    );
    components.spawn(
        "guard: held StatefulSets watch",
        holds::watch_holds::<StatefulSet>(
            client.clone(),
            "StatefulSet",
            holds.clone(),
            leading.clone(),
        ),
    );
    let owners = Owners::default();
    owners.start(&client, components);
    let guard = Guard {
        detector: Detector::new(settings),
        writer: HoldWriter::new(client.clone()),
        policies,
        nodes,
        owners,
        holds,
        components: components.clone(),
        leading,
        pending: HashMap::new(),
        metrics,
    };
    components.spawn("guard: pod watch", guard.run(Api::all(client)));
}

struct Guard {
    detector: Detector,
    writer: HoldWriter,
    policies: Arc<dyn PolicySource>,
    nodes: Arc<dyn NodeInventory>,
    owners: Owners,
    holds: Holds,
    /// Where a hold's write (retried while the API server fails) runs.
    components: Components,
    /// Whether this replica leads: only the leader writes holds and their
    /// Events, so a hold is written once whatever the replica count. The
    /// others watch and judge the same pods, so a new leader acts at once.
    leading: watch::Receiver<bool>,
    /// Holds judged while another replica led, by workload, with when:
    /// written if this replica comes to lead while they are recent and the
    /// workload is still not held (the leader may have died first).
    pending: HashMap<String, (PendingHold, Instant)>,
    metrics: Arc<Metrics>,
}

/// A hold judged by a replica that did not lead.
struct PendingHold {
    verdict: Verdict,
    namespace: String,
    kind: String,
    name: String,
    mode: GuardMode,
}

/// How long a hold judged by a follower stays worth writing when it comes
/// to lead; longer, and the pods that failed have had time to be replaced.
const PENDING_FOR: Duration = Duration::from_secs(120);

impl Guard {
    async fn run(mut self, pods: Api<GuardPod>) {
        // A pod seen before its owners are known would be dropped as
        // unowned until its next change.
        while !self.owners.is_synced() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Only bound pods: a pod not yet on a node has no container that
        // can fail, and every event the API server sends archway is a pod
        // encoded as JSON for archway alone (the scheduler and the kubelets
        // read protobuf). The pod's first event, before the scheduler
        // binds it, is one of the few every pod has: leaving it out halved
        // what serving this watch costs the API server per pod created
        // (0.38-0.44 ms to 0.19-0.20 in its profile, benches/apicost.rs
        // with APICOST_PROFILE=10).
        let config = watcher::Config::default()
            .labels(ARCH_POD_LABEL)
            .fields("spec.nodeName!=");
        let stream = watcher(pods, config).default_backoff();
        futures::pin_mut!(stream);
        // The uids a relist brought: pods followed before and missing from
        // it were deleted while the watch was down.
        let mut relisted: Option<HashSet<String>> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => match event {
                    Some(event) => event,
                    None => break,
                },
                changed = self.leading.changed() => {
                    if changed.is_err() {
                        // The election ended: archway is stopping.
                        break;
                    }
                    if *self.leading.borrow_and_update() {
                        self.take_over();
                    }
                    continue;
                }
            };
            match event {
                Err(error) => tracing::warn!(what = "guard pods", %error, "watch failed; retrying"),
                Ok(watcher::Event::Init) => relisted = Some(HashSet::new()),
                Ok(watcher::Event::InitApply(pod)) => {
                    if let (Some(seen), Some(uid)) = (&mut relisted, &pod.metadata.uid) {
                        seen.insert(uid.clone());
                    }
                    self.observe(&pod);
                }
                Ok(watcher::Event::InitDone) => {
                    if let Some(seen) = relisted.take() {
                        self.detector.retain(|uid| seen.contains(uid));
                    }
                }
                Ok(watcher::Event::Apply(pod)) => self.observe(&pod),
                Ok(watcher::Event::Delete(pod)) => {
                    if let Some(uid) = &pod.metadata.uid {
                        self.detector.forget(uid);
                    }
                }
            }
            self.metrics
                .guard_watched_pods
                .set(self.detector.pods() as i64);
        }
    }

    fn observe(&mut self, pod: &GuardPod) {
        let meta = &pod.metadata;
        let (Some(uid), Some(namespace)) = (&meta.uid, &meta.namespace) else {
            return;
        };
        // Only in enforced namespaces is the label archway's own writing.
        let mode = (self.policies.policy(namespace))
            .filter(|p| p.mode == Mode::Enforce)
            .map(|p| p.guard);
        let architecture = meta.labels.as_ref().and_then(|l| l.get(ARCH_POD_LABEL));
        let on_its_node = architecture.is_some_and(|arch| self.bound_where_labelled(pod, arch));
        let workload = self.owners.workload_of(meta);
        let (Some(mode), Some(architecture), true, Some((kind, name))) =
            (mode, architecture, on_its_node, workload)
        else {
            // Not (or no longer) the guard's: a bare pod has no workload to
            // hold, one that names a workload not its own (by uid) is not
            // counted, and a namespace that left archway is not watched.
            self.detector.forget(uid);
            return;
        };
        if mode == GuardMode::Off {
            self.detector.forget(uid);
            return;
        }
        let key = holds::workload_key(namespace, &kind, &name);
        let (failure, restarts) = pod.failure();
        let seen = Observation {
            pod: uid,
            workload: &key,
            architecture,
            failure,
            restarts,
        };
        if let Some(verdict) = self.detector.observe(&seen, now_secs()) {
            self.act(verdict, namespace, &kind, &name, mode);
        }
    }

    /// The pod is unbound yet, or bound to a node of the architecture its
    /// label names. A pod labelled arm64 that fails on an amd64 node says
    /// nothing about arm64.
    fn bound_where_labelled(&self, pod: &GuardPod, architecture: &str) -> bool {
        let Some(node) = pod.node_name() else {
            return true;
        };
        let nodes = self.nodes.nodes();
        nodes.as_deref().and_then(|n| n.of_node(node)) == Some(architecture)
    }

    /// Writes the holds judged while another replica led.
    fn take_over(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        for (_, (hold, judged)) in pending {
            if judged.elapsed() < PENDING_FOR {
                tracing::info!(workload = %hold.verdict.workload(), "leading now: writing a hold judged before");
                self.act(
                    hold.verdict,
                    &hold.namespace,
                    &hold.kind,
                    &hold.name,
                    hold.mode,
                );
            }
        }
    }

    fn act(&mut self, verdict: Verdict, namespace: &str, kind: &str, name: &str, mode: GuardMode) {
        if matches!(verdict, Verdict::Hold { .. }) && !*self.leading.borrow() {
            // The leader writes it; kept in case this replica leads next.
            let key = holds::workload_key(namespace, kind, name);
            self.pending
                .retain(|_, (_, judged)| judged.elapsed() < PENDING_FOR);
            let hold = PendingHold {
                verdict,
                namespace: namespace.to_string(),
                kind: kind.to_string(),
                name: name.to_string(),
                mode,
            };
            self.pending.insert(key, (hold, Instant::now()));
            return;
        }
        let (pods, failures, architecture, since) = match verdict {
            Verdict::FailingEverywhere { workload, pods } => {
                tracing::warn!(
                    %workload, pods,
                    "pods fail on every architecture: not an architecture problem, not held"
                );
                self.metrics.guard_failing_everywhere.inc();
                return;
            }
            Verdict::Hold {
                pods,
                failures,
                architecture,
                since,
                ..
            } => (pods, failures, architecture, since),
        };
        let key = holds::workload_key(namespace, kind, name);
        if self.holds.get(&key).is_some() {
            return;
        }
        let reason = detect::hold_reason(pods, &failures, &architecture, since);
        let hold = Hold {
            architecture: architecture.clone(),
            reason: reason.clone(),
        };
        if !holds::HOLDABLE_KINDS.contains(&kind) {
            tracing::warn!(workload = %key, %reason, "pods fail on one architecture, but a {kind} cannot carry a hold");
            self.metrics
                .guard_hold(&architecture, mode.label(), "not_holdable");
            return;
        }
        tracing::warn!(workload = %key, mode = mode.label(), %reason, "workload held");
        self.holds.insert(key.clone(), hold.clone());
        let writer = self.writer.clone();
        let holds = self.holds.clone();
        let metrics = self.metrics.clone();
        let (namespace, kind, name) = (namespace.to_string(), kind.to_string(), name.to_string());
        self.components.spawn("guard: hold write", async move {
            match writer.record(&namespace, &kind, &name, &hold).await {
                Ok(uid) => {
                    metrics.guard_hold(&hold.architecture, mode.label(), "recorded");
                    let workload = (namespace.as_str(), kind.as_str(), name.as_str());
                    writer.announce(workload, uid, &hold, mode).await;
                }
                Err(error) => {
                    // Only holds the cluster carries are kept: one archway
                    // knew alone would vanish with a restart, shown nowhere.
                    holds.remove(&key);
                    metrics.guard_hold(&hold.architecture, mode.label(), error.metric_label());
                    tracing::warn!(workload = %key, %error, "could not record the hold");
                }
            }
        });
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

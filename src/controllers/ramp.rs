//! The migration autopilot: moves each namespace with a ramp
//! (`archway.dev/ramp: "10,50,100"`, `archway.dev/ramp-step: "24h"`) from
//! step to step by writing its `archway.dev/rollout`, so the rollout a
//! person reads is the one in force; pauses it (or steps back, or rolls
//! back, as `archway.dev/ramp-on-failure` says) when one of its workloads
//! is held by the rollout guard, or when the namespace's pods fare worse on
//! the target architecture than on the other (exec format errors, restarts
//! per pod-hour, readiness: `decision::compare`), or when the platform
//! team's Prometheus query (`ramp.prometheus`, `query.rs`) is above its
//! threshold or cannot be evaluated; and says where it stands
//! in `archway.dev/ramp-status` and in Events on the namespace.
//!
//! What to do is decided by the pure `decision::ramp::next`; this module
//! only reads (the namespace and hold watches archway keeps anyway, and one
//! list of a ramped namespace's placed pods every few seconds, never per
//! tick) and writes (one patch of the namespace's two annotations, one
//! Event). Only the leader acts; the state lives on the namespace, so a
//! new leader carries on from it without skipping or repeating a step.
//! Every replica exports where each ramp stands (`archway_ramp_rollout`,
//! `archway_ramp_paused`); the leader counts what it writes
//! (`archway_ramp_steps_total`).

mod query;

pub use query::PrometheusCheck;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::cluster::events::{EventRecorder, Kind, NewEvent, Regarding};
use crate::cluster::{ClusterPolicies, NodeInventory, RampedNamespace};
use crate::controllers::guard::Holds;
use crate::decision::compare::{self, Judgement, PodSample, Side, Verdict};
use crate::decision::placement::ARCH_POD_LABEL;
use crate::decision::policy::{Mode, ROLLOUT_ANNOTATION};
use crate::decision::ramp::{self, Action, RAMP_STATUS_ANNOTATION, RampEvent};
use crate::metrics::{Metrics, RampSeen};

/// How often the leader looks at every ramp: in memory, so often enough
/// that a step of seconds (in tests) is taken on time.
const TICK: Duration = Duration::from_secs(1);
/// How long a write waits for the namespace watch to bring it back before
/// the store is believed again (a write the watch never shows was lost).
const ECHO_WAIT: Duration = Duration::from_secs(30);
/// The Events' `reportingController`.
const REPORTER: &str = "archway.dev/ramp";
/// How long a namespace's comparison of its two sides stands before the
/// leader lists its pods again: one list per ramped namespace this often,
/// so a step of minutes or hours is checked throughout, at the cost of a
/// paged list (pods placed by archway, bound) every few seconds.
const HEALTH_EVERY: Duration = Duration::from_secs(5);
/// Pods per page of that list: what the leader holds at once.
const HEALTH_PAGE: u32 = 250;
/// A pod younger than this that is not ready yet is starting, not failing:
/// a step or a rollout makes new pods on the target, and their start must
/// not read as the target being worse.
const STARTING: Duration = Duration::from_secs(120);

/// What a step must keep to hold, besides its workloads unheld: the
/// namespace's pods no worse on `target` than elsewhere, and the platform
/// team's Prometheus query, when there is one, under its threshold.
pub struct StepChecks {
    /// The architecture the ramp moves pods to.
    pub target: String,
    pub prometheus: Option<PrometheusCheck>,
}

/// Runs the autopilot while this replica leads, until the election ends;
/// in every replica, leader or not, it keeps the ramp gauges
/// (`archway_ramp_rollout`, `archway_ramp_paused`) at what the namespaces
/// say: each replica reads the same namespace watch.
pub async fn run(
    client: kube::Client,
    namespaces: ClusterPolicies,
    holds: Holds,
    checks: StepChecks,
    identity: String,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut autopilot = Autopilot {
        prometheus: checks.prometheus,
        api: Api::all(client.clone()),
        events: EventRecorder::new(client.clone(), REPORTER, &identity),
        written: HashMap::new(),
        client,
        target: checks.target,
        health: HashMap::new(),
        metrics,
    };
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut led = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = leading.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let ramped = namespaces.ramped();
        autopilot.metrics.ramps_seen(&seen(&ramped));
        let leads = *leading.borrow();
        if leads && !led {
            // What another leader wrote is read from the namespaces.
            autopilot.written.clear();
        }
        led = leads;
        if !leads {
            continue;
        }
        for namespace in &ramped {
            autopilot.step(namespace, &holds, &namespaces).await;
        }
        // Namespaces that no longer ramp keep no comparison.
        (autopilot.health).retain(|name, _| ramped.iter().any(|n| &n.name == name));
    }
}

/// What the ramp gauges show of `ramped`: each one's rollout in force, and
/// whether its status says paused.
fn seen(ramped: &[RampedNamespace]) -> Vec<RampSeen> {
    ramped
        .iter()
        .map(|namespace| RampSeen {
            namespace: namespace.name.clone(),
            rollout: namespace.policy.rollout.percent(),
            paused: (namespace.status.as_deref())
                .and_then(ramp::Status::parse)
                .is_some_and(|status| status.state == ramp::State::Paused),
        })
        .collect()
}

struct Autopilot {
    api: Api<Namespace>,
    events: EventRecorder,
    /// The status last written per namespace, and when: until the watch
    /// shows it, the store is behind and the namespace is left alone (a
    /// second write from stale state would take a step twice).
    written: HashMap<String, (String, Instant)>,
    client: kube::Client,
    /// The architecture the ramp moves pods to.
    target: String,
    /// Per namespace, when its pods were last compared and what that
    /// found against the target (empty: nothing), and what the Prometheus
    /// query found then.
    health: HashMap<String, Checked>,
    /// The platform team's query, when the configuration has one.
    prometheus: Option<PrometheusCheck>,
    /// Where the ramp gauges and the steps taken are counted.
    metrics: Arc<Metrics>,
}

/// What a namespace's last checks found.
struct Checked {
    at: Instant,
    pods: Vec<String>,
    query: Vec<String>,
}

impl Checked {
    fn blockers(&self) -> Vec<String> {
        [self.pods.as_slice(), self.query.as_slice()].concat()
    }
}

impl Autopilot {
    async fn step(
        &mut self,
        namespace: &RampedNamespace,
        holds: &Holds,
        nodes: &dyn NodeInventory,
    ) {
        let (Some(ramp), Mode::Enforce) = (&namespace.policy.ramp, namespace.policy.mode) else {
            return;
        };
        if let Some((status, at)) = self.written.get(&namespace.name) {
            if namespace.status.as_ref() != Some(status) && at.elapsed() < ECHO_WAIT {
                return;
            }
            self.written.remove(&namespace.name);
        }
        let mut blockers: Vec<String> = holds
            .in_namespace(&namespace.name)
            .into_iter()
            .map(|(workload, hold)| {
                format!(
                    "{workload} is held off {}: {}",
                    hold.architecture, hold.reason
                )
            })
            .collect();
        let status = namespace.status.as_deref().and_then(ramp::Status::parse);
        let rollout = namespace.policy.rollout.percent();
        // A paused or finished ramp waits for a person whatever its pods
        // and the query say: neither is asked for it.
        if ramp::stopped(rollout, status.as_ref()) {
            // Checked afresh once a person resumes it.
            self.health.remove(&namespace.name);
        } else {
            blockers.extend(self.health(&namespace.name, nodes).await);
        }
        let now = k8s_openapi::jiff::Timestamp::now();
        let Action::Write {
            rollout: to,
            status,
            event,
        } = ramp::next(ramp, rollout, status.as_ref(), &blockers, now)
        else {
            return;
        };
        let rendered = status.render(ramp);
        // Pinned to the namespace as read: a rollback (or a person's edit)
        // between the read and this write makes it fail (409) rather than
        // be undone by a step decided before it; the next tick decides
        // again on the namespace as it is.
        let patch = json!({"metadata": {
            "resourceVersion": namespace.resource_version,
            "annotations": {
                ROLLOUT_ANNOTATION: to.to_string(),
                RAMP_STATUS_ANNOTATION: rendered,
            },
        }});
        if let Err(error) = (self.api)
            .patch(
                &namespace.name,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(namespace = %namespace.name, %error, "could not write the ramp's step");
            return;
        }
        tracing::info!(namespace = %namespace.name, from = rollout, to, status = %rendered, "ramp");
        self.written
            .insert(namespace.name.clone(), (rendered, Instant::now()));
        if let Some(event) = event {
            self.metrics.ramp_step(&namespace.name, event.reason);
            self.announce(namespace, event).await;
        }
    }

    /// What the comparison of the namespace's two sides and the Prometheus
    /// query hold against the target, at most [`HEALTH_EVERY`] old. A list
    /// that fails keeps the last comparison (a blip of the API server is
    /// not the workload's fault); a query that fails is a blocker of its
    /// own (`query.rs`).
    async fn health(&mut self, namespace: &str, nodes: &dyn NodeInventory) -> Vec<String> {
        if let Some(checked) = self.health.get(namespace)
            && checked.at.elapsed() < HEALTH_EVERY
        {
            return checked.blockers();
        }
        let pods = match self.samples(namespace, nodes).await {
            Ok(samples) => judge_health(&self.target, &samples),
            Err(error) => {
                tracing::warn!(namespace, %error, "could not list the namespace's pods to compare the architectures");
                let last = self.health.get(namespace).map(|c| c.pods.clone());
                last.unwrap_or_default()
            }
        };
        let query = match &self.prometheus {
            Some(check) => check.blockers(namespace).await,
            None => Vec::new(),
        };
        let checked = Checked {
            at: Instant::now(),
            pods,
            query,
        };
        let blockers = checked.blockers();
        self.health.insert(namespace.to_string(), checked);
        blockers
    }

    /// The namespace's pods that archway placed and the scheduler bound, as
    /// the comparison reads them, each on the architecture of its node (the
    /// label says where archway sent it; the node, where it runs). Read a
    /// page at a time: only the samples are kept.
    async fn samples(
        &self,
        namespace: &str,
        nodes: &dyn NodeInventory,
    ) -> Result<Vec<PodSample>, kube::Error> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let inventory = nodes.nodes();
        let now = k8s_openapi::jiff::Timestamp::now();
        let mut params = ListParams::default()
            .labels(ARCH_POD_LABEL)
            .fields("spec.nodeName!=")
            .limit(HEALTH_PAGE);
        let mut samples = Vec::new();
        loop {
            let page = api.list(&params).await?;
            for pod in &page.items {
                let node = pod.spec.as_ref().and_then(|s| s.node_name.as_deref());
                let architecture = node.and_then(|n| inventory.as_deref()?.of_node(n));
                if let Some(architecture) = architecture {
                    samples.push(PodSample::of_pod(pod, architecture, now));
                }
            }
            match page.metadata.continue_ {
                Some(token) if !token.is_empty() => params = params.continue_token(&token),
                _ => return Ok(samples),
            }
        }
    }

    async fn announce(&self, namespace: &RampedNamespace, event: RampEvent) {
        let event = NewEvent {
            kind: if event.warning {
                Kind::Warning
            } else {
                Kind::Normal
            },
            reason: event.reason,
            action: "Ramp",
            note: event.note,
            regarding: Regarding::namespace(&namespace.name, namespace.uid.clone()),
            name: None,
        };
        if let Err(error) = self.events.record(event).await {
            tracing::warn!(namespace = %namespace.name, %error, "could not record the ramp's Event");
        }
    }
}

/// What the namespace's pods say against `target`: a reason when they fare
/// worse there than on the other architectures (`decision::compare`'s
/// judgement, as `archway audit` shows it), none otherwise, and none while
/// either side has too few pods to say.
fn judge_health(target: &str, samples: &[PodSample]) -> Vec<String> {
    let samples: Vec<PodSample> = samples
        .iter()
        .map(|sample| {
            let mut sample = sample.clone();
            if !sample.ready && sample.age < STARTING {
                sample.ready = true;
            }
            sample
        })
        .collect();
    let (on_target, elsewhere): (Vec<&PodSample>, Vec<&PodSample>) =
        samples.iter().partition(|s| s.architecture == target);
    let mut others: Vec<&str> = elsewhere.iter().map(|s| s.architecture.as_str()).collect();
    others.sort_unstable();
    others.dedup();
    let other = match others.as_slice() {
        [one] => one.to_string(),
        _ => "the other architectures".to_string(),
    };
    let verdict = compare::judge(
        target,
        &Side::of(on_target),
        &other,
        &Side::of(elsewhere),
        &Judgement::default(),
    );
    match verdict {
        Verdict::TargetWorse(why) => vec![format!(
            "the namespace's pods fare worse on {target}: {why}"
        )],
        Verdict::TooFewPods(_) | Verdict::Even | Verdict::OtherWorse(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn pod(architecture: &str, restarts: u32, ready: bool, age_secs: u64) -> PodSample {
        PodSample {
            architecture: architecture.into(),
            ready,
            restarts,
            exec_format_error: false,
            age: Duration::from_secs(age_secs),
            time_to_ready: None,
            cpu_cores: None,
            memory_bytes: None,
        }
    }

    #[test]
    fn restarts_on_the_target_only_block_the_ramp() {
        let mut samples: Vec<PodSample> = (0..3).map(|_| pod("arm64", 3, true, 600)).collect();
        samples.extend((0..3).map(|_| pod("amd64", 0, true, 600)));
        let blockers = judge_health("arm64", &samples);
        assert_eq!(blockers.len(), 1, "{blockers:?}");
        assert!(
            blockers[0].starts_with("the namespace's pods fare worse on arm64: pods on arm64 restart 12.00 times per pod-hour, while on amd64"),
            "{}",
            blockers[0]
        );
    }

    #[test]
    fn the_same_restarts_on_both_sides_or_too_few_pods_do_not() {
        let even: Vec<PodSample> = ["arm64", "amd64"]
            .iter()
            .flat_map(|a| (0..3).map(|_| pod(a, 3, true, 600)))
            .collect();
        assert!(judge_health("arm64", &even).is_empty());
        let few = vec![pod("arm64", 9, true, 600), pod("amd64", 0, true, 600)];
        assert!(judge_health("arm64", &few).is_empty());
        // The other side worse is not the ramp's business.
        let other: Vec<PodSample> = (0..3)
            .map(|_| pod("arm64", 0, true, 600))
            .chain((0..3).map(|_| pod("amd64", 9, true, 600)))
            .collect();
        assert!(judge_health("arm64", &other).is_empty());
    }

    #[test]
    fn a_starting_pod_is_not_a_failing_one_but_an_old_unready_one_is() {
        let starting: Vec<PodSample> = (0..3)
            .map(|_| pod("arm64", 0, false, 30))
            .chain((0..3).map(|_| pod("amd64", 0, true, 600)))
            .collect();
        assert!(judge_health("arm64", &starting).is_empty());
        let stuck: Vec<PodSample> = (0..3)
            .map(|_| pod("arm64", 0, false, 600))
            .chain((0..3).map(|_| pod("amd64", 0, true, 600)))
            .collect();
        let blockers = judge_health("arm64", &stuck);
        assert_eq!(
            blockers,
            [
                "the namespace's pods fare worse on arm64: 100% of pods on arm64 are not ready, against 0% on amd64"
            ]
        );
    }

    #[test]
    fn an_exec_format_error_on_the_target_blocks_at_once() {
        let mut failing = pod("arm64", 0, false, 10);
        failing.exec_format_error = true;
        let blockers = judge_health("arm64", &[failing, pod("amd64", 0, true, 600)]);
        assert_eq!(
            blockers,
            ["the namespace's pods fare worse on arm64: 1 arm64 pod(s) report exec format error"]
        );
    }
}

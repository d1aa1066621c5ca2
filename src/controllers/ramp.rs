//! The migration autopilot: moves each namespace with a ramp
//! (`archway.dev/ramp: "10,50,100"`, `archway.dev/ramp-step: "24h"`) from
//! step to step by writing its `archway.dev/rollout`, so the rollout a
//! person reads is the one in force; pauses it (or steps back, or rolls
//! back, as `archway.dev/ramp-on-failure` says) when one of its workloads
//! is held by the rollout guard; and says where it stands in
//! `archway.dev/ramp-status` and in Events on the namespace.
//!
//! What to do is decided by the pure `decision::ramp::next`; this module
//! only reads (the namespace and hold watches archway keeps anyway, no API
//! call per tick) and writes (one patch of the namespace's two annotations,
//! one Event). Only the leader acts; the state lives on the namespace, so a
//! new leader carries on from it without skipping or repeating a step.
//! Every replica exports where each ramp stands (`archway_ramp_rollout`,
//! `archway_ramp_paused`); the leader counts what it writes
//! (`archway_ramp_steps_total`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;

use crate::cluster::events::{EventRecorder, Kind, NewEvent, Regarding};
use crate::cluster::{ClusterPolicies, RampedNamespace};
use crate::controllers::guard::Holds;
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

/// Runs the autopilot while this replica leads, until the election ends;
/// in every replica, leader or not, it keeps the ramp gauges
/// (`archway_ramp_rollout`, `archway_ramp_paused`) at what the namespaces
/// say: each replica reads the same namespace watch.
pub async fn run(
    client: kube::Client,
    namespaces: ClusterPolicies,
    holds: Holds,
    identity: String,
    mut leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
) {
    let mut autopilot = Autopilot {
        api: Api::all(client.clone()),
        events: EventRecorder::new(client, REPORTER, &identity),
        written: HashMap::new(),
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
            autopilot.step(namespace, &holds).await;
        }
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
    /// Where the ramp gauges and the steps taken are counted.
    metrics: Arc<Metrics>,
}

impl Autopilot {
    async fn step(&mut self, namespace: &RampedNamespace, holds: &Holds) {
        let (Some(ramp), Mode::Enforce) = (&namespace.policy.ramp, namespace.policy.mode) else {
            return;
        };
        if let Some((status, at)) = self.written.get(&namespace.name) {
            if namespace.status.as_ref() != Some(status) && at.elapsed() < ECHO_WAIT {
                return;
            }
            self.written.remove(&namespace.name);
        }
        let blockers: Vec<String> = holds
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

//! Following a namespace's migration ramp: the rollout and the status the
//! autopilot writes, and the Events it leaves on the namespace.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::Value;

use crate::controlplane::ControlPlane;

/// The rollout the autopilot writes.
pub const ROLLOUT: &str = "archway.dev/rollout";
/// Where the autopilot says where the ramp stands.
pub const STATUS: &str = "archway.dev/ramp-status";

pub fn annotations(namespace: &Namespace) -> BTreeMap<String, String> {
    namespace.metadata.annotations.clone().unwrap_or_default()
}

/// Polls the namespace until `done` says so; returns every distinct
/// (rollout, status) seen on the way, in order.
pub async fn follow(
    client: &kube::Client,
    name: &str,
    limit: Duration,
    done: impl Fn(&BTreeMap<String, String>) -> bool,
) -> Vec<(String, String)> {
    let api: Api<Namespace> = Api::all(client.clone());
    let started = Instant::now();
    let mut seen: Vec<(String, String)> = Vec::new();
    loop {
        let now = annotations(&api.get(name).await.unwrap());
        let pair = (
            now.get(ROLLOUT).cloned().unwrap_or_default(),
            now.get(STATUS).cloned().unwrap_or_default(),
        );
        if seen.last() != Some(&pair) {
            seen.push(pair);
        }
        if done(&now) {
            return seen;
        }
        assert!(
            started.elapsed() < limit,
            "{name}: not there after {limit:?}; seen {seen:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The namespace's Events by archway's autopilot: (type, reason, note).
pub fn ramp_events(plane: &ControlPlane, namespace: &str) -> Vec<(String, String, String)> {
    let text = plane.kubectl(
        &["-n", namespace, "get", "events.events.k8s.io", "-o", "json"],
        None,
    );
    let events: Value = serde_json::from_str(&text).unwrap();
    let mut found: Vec<(String, String, String, String)> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reportingController"] == "archway.dev/ramp")
        .map(|e| {
            (
                e["eventTime"].as_str().unwrap_or_default().to_string(),
                e["type"].as_str().unwrap_or_default().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["note"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    found.sort();
    found.into_iter().map(|(_, t, r, n)| (t, r, n)).collect()
}

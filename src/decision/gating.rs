//! Cold lookups held by a scheduling gate instead of admitted unplaced.
//!
//! In a namespace whose `archway.dev/cold` is `gate`, a pod whose images are
//! not looked up within the sync budget is admitted with the scheduling
//! gate `archway.dev/inspect`: the scheduler leaves it alone until archway's
//! controller (`gate::controller`) has the answer and removes the gate,
//! placing the pod in the same update.
//!
//! This module is the pure part: whether to gate, the admission patch that
//! gates, and the updated pod that releases the gate. The API server only
//! lets a gated pod's scheduling constraints be narrowed (required node
//! affinity terms may gain match expressions, or be set where absent;
//! preferred terms are free; tolerations and nodeSelector entries may only
//! be added), which is exactly what `patch::build` does: it only adds.

use std::collections::BTreeMap;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::decision::placement::Injection;
use crate::decision::policy::{Cold, Mode};

#[cfg(test)]
mod tests;

/// The scheduling gate archway adds and removes.
pub const GATE: &str = "archway.dev/inspect";
/// On every pod archway gated, while it is gated: the controller watches
/// only pods with this label, so it holds the gated pods, not every pod.
pub const GATED_LABEL: &str = "archway.dev/gated";
/// Which images were still being looked up when the pod was gated.
pub const PENDING_ANNOTATION: &str = "archway.dev/pending";
/// Set when the gate is removed without placement: why.
pub const UNGATED_ANNOTATION: &str = "archway.dev/ungated";
/// The pod's draw: its place around its workload's phase
/// (`placement::spread_steered`), taken at admission
/// (`admission::RolloutDraws`), so that a gated pod of a ReplicaSet is
/// steered by the same draw it would have had ungated.
pub const DRAW_ANNOTATION: &str = "archway.dev/draw";
/// The pending annotation's longest value: a pod of 64 long image names
/// does not make archway write kilobytes into it.
const MAX_PENDING_CHARS: usize = 240;

/// Whether an admitted pod is gated rather than answered now: only in an
/// enforce namespace in `gate` mode (an audit namespace's pods must not be
/// changed), only when a lookup is still running (a failed lookup will not
/// do better later), and never twice (a reinvoked review of a pod archway
/// already gated leaves it to the controller).
pub fn should_gate(mode: Mode, cold: Cold, pending: &[String], pod: &Pod) -> bool {
    mode == Mode::Enforce && cold == Cold::Gate && !pending.is_empty() && !is_gated(pod)
}

/// Whether the pod carries archway's scheduling gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == GATE))
}

/// The admission patch that gates `pod`: the gate, the label the
/// controller selects on, and which images are pending.
pub fn gate_patch(pod: &Pod, pending: &[String], draw: Option<u64>) -> Vec<PatchOperation> {
    let gate = json!({ "name": GATE });
    let has_gates = pod
        .spec
        .as_ref()
        .is_some_and(|s| s.scheduling_gates.is_some());
    let mut ops = vec![if has_gates {
        add(&["spec", "schedulingGates", "-"], gate)
    } else {
        add(&["spec", "schedulingGates"], json!([gate]))
    }];
    let mut annotations = serde_json::Map::new();
    annotations.insert(PENDING_ANNOTATION.into(), json!(pending_value(pending)));
    if let Some(draw) = draw {
        annotations.insert(DRAW_ANNOTATION.into(), json!(draw.to_string()));
    }
    let bare = ObjectMeta {
        namespace: pod.metadata.namespace.clone(),
        ..Default::default()
    };
    let meta = &pod.metadata;
    if meta.labels.is_none() && meta.annotations.is_none() && *meta == bare {
        // No metadata in the object at all: paths below it could not apply.
        ops.push(add(
            &["metadata"],
            json!({"labels": {GATED_LABEL: "true"}, "annotations": annotations}),
        ));
        return ops;
    }
    ops.push(match meta.labels {
        None => add(&["metadata", "labels"], json!({ GATED_LABEL: "true" })),
        Some(_) => add(&["metadata", "labels", GATED_LABEL], json!("true")),
    });
    match meta.annotations {
        None => ops.push(add(
            &["metadata", "annotations"],
            Value::Object(annotations),
        )),
        Some(_) => ops.extend(
            (annotations.into_iter()).map(|(k, v)| add(&["metadata", "annotations", &k], v)),
        ),
    }
    ops
}

/// `a, b` of the pending images, cut to `MAX_PENDING_CHARS`.
fn pending_value(pending: &[String]) -> String {
    let mut value = String::new();
    for (i, image) in pending.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        if value.len() + sep.len() + image.len() > MAX_PENDING_CHARS {
            value.push_str(&format!("{sep}and {} more", pending.len() - i));
            break;
        }
        value.push_str(sep);
        value.push_str(image);
    }
    crate::decision::text::truncate_for_message(&value)
}

/// How a gated pod leaves the gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Release<'a> {
    /// Placed: the decision's injection applied, as the webhook would have.
    Place(&'a Injection),
    /// Let go as it is; the reason goes in `archway.dev/ungated`.
    Unplaced(String),
}

/// Why a pod could not be released.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("the pod could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("the placement could not be applied: {0}")]
    Apply(#[from] json_patch::PatchError),
}

/// `pod` as archway writes it back: placed (or not, with the reason), the
/// gate and the gated label removed, in one object for one update. Only
/// the gate is removed: other controllers' gates stay.
pub fn release(
    pod: &Pod,
    release: &Release<'_>,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Result<Pod, ReleaseError> {
    let mut value = serde_json::to_value(pod)?;
    match release {
        Release::Place(injection) => {
            let patch = crate::decision::patch::build(pod, injection, tolerations);
            json_patch::patch(&mut value, &patch)?;
        }
        Release::Unplaced(reason) => {
            let reason = crate::decision::text::truncate_for_message(reason);
            if !value["metadata"]["annotations"].is_object() {
                value["metadata"]["annotations"] = json!({});
            }
            value["metadata"]["annotations"][UNGATED_ANNOTATION] = json!(reason);
        }
    }
    let mut pod: Pod = serde_json::from_value(value)?;
    if let Some(spec) = pod.spec.as_mut() {
        let gates = spec.scheduling_gates.take().unwrap_or_default();
        let others: Vec<_> = gates.into_iter().filter(|g| g.name != GATE).collect();
        spec.scheduling_gates = (!others.is_empty()).then_some(others);
    }
    if let Some(labels) = pod.metadata.labels.as_mut() {
        labels.remove(GATED_LABEL);
    }
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove(PENDING_ANNOTATION);
        annotations.remove(DRAW_ANNOTATION);
    }
    Ok(pod)
}

/// The draw recorded at admission, if the pod carries a readable one.
pub fn recorded_draw(pod: &Pod) -> Option<u64> {
    let annotations = pod.metadata.annotations.as_ref()?;
    annotations.get(DRAW_ANNOTATION)?.trim().parse().ok()
}

/// The JSON Patch that turns `pod` into `release(pod, ..)`: only the
/// fields archway changes, so the fields of a newer API server that this
/// build's types do not know are left as they are (a whole-object update
/// from these types would drop them). Its first operation sets the
/// resourceVersion read: if the pod changed since, the API server refuses
/// the patch with a conflict instead of applying it to a pod archway did
/// not decide on.
pub fn release_patch(
    pod: &Pod,
    how: &Release<'_>,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Result<json_patch::Patch, ReleaseError> {
    let updated = release(pod, how, tolerations)?;
    let version = pod.metadata.resource_version.clone().unwrap_or_default();
    let mut ops = vec![PatchOperation::Replace(json_patch::ReplaceOperation {
        path: PointerBuf::from_tokens(["metadata", "resourceVersion"]),
        value: json!(version),
    })];
    let before = serde_json::to_value(pod)?;
    let after = serde_json::to_value(&updated)?;
    ops.extend(json_patch::diff(&before, &after).0);
    Ok(json_patch::Patch(ops))
}

/// How long `pod` has been gated at `now` (Unix milliseconds): since its
/// creation, as archway gates pods only when they are created.
pub fn gated_for(pod: &Pod, now_ms: i64) -> Duration {
    let created = pod
        .metadata
        .creation_timestamp
        .as_ref()
        .map_or(now_ms, |t| t.0.as_millisecond());
    Duration::from_millis(u64::try_from(now_ms.saturating_sub(created)).unwrap_or(0))
}

/// What the controller does with a gated pod, from what the lookups found
/// and how long the pod has waited. Pure, for the table tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Lookups still running, and time left: wait for them.
    Wait,
    /// Release now: with or without placement.
    Release,
    /// Past the gate timeout with lookups still running.
    TimedOut,
}

/// `pending` images still being looked up after the pod waited `waited`.
pub fn next(pending: usize, waited: Duration, timeout: Duration) -> Next {
    match (pending, waited >= timeout) {
        (0, _) => Next::Release,
        (_, true) => Next::TimedOut,
        (_, false) => Next::Wait,
    }
}

fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

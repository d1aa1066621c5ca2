//! The JSON Patch that carries a decision into a pod: `add` operations,
//! merged into what the pod already has, never replacing a user's terms,
//! tolerations or annotations. The one exception is archway's own
//! expression on a pod it already placed, rewritten or removed on
//! reinvocation.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{NodeAffinity, NodeSelectorTerm, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::placement::{ARCH_LABEL, Injection, LINUX};

/// Weight of archway's preferred term: the strongest, since it carries the
/// namespace owner's rollout choice; the user's own preferences still count.
const PREFERRED_WEIGHT: i32 = 100;

/// A patch archway will not send.
#[derive(Debug, thiserror::Error)]
pub enum PatchError {
    #[error(
        "the patch would be {bytes} bytes or more ({terms} required node selector terms), over the limit of {limit}"
    )]
    TooLarge {
        bytes: usize,
        limit: usize,
        terms: usize,
    },
    #[error("could not encode the patch: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The patch as JSON bytes, refused when it would exceed `limit` bytes.
/// The pod sets its size (each required term gets the arch expression):
/// a pod of a million terms is refused before anything is built.
pub fn encode(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
    limit: usize,
) -> Result<Vec<u8>, PatchError> {
    let terms = required_terms(pod).map_or(0, <[NodeSelectorTerm]>::len);
    let expression = serde_json::to_vec(&arch_expression(&injection.required))?.len();
    let too_large = |bytes| PatchError::TooLarge {
        bytes,
        limit,
        terms,
    };
    // A lower bound: every term carries one expression and a comma.
    let least = terms.saturating_mul(expression + 1);
    if least > limit {
        return Err(too_large(least));
    }
    let bytes = serde_json::to_vec(&build(pod, injection, tolerations))?;
    if bytes.len() > limit {
        return Err(too_large(bytes.len()));
    }
    Ok(bytes)
}

/// The patch that applies `injection` to `pod`. `tolerations` are the
/// configured tolerations per platform (see [`configured_tolerations`]).
pub fn build(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Patch {
    let mut ops = vec![if injection.replace_own {
        replace_own_affinity(pod, &injection.required)
    } else {
        required_affinity(pod, &injection.required)
    }];
    ops.extend(preferred_affinity(pod, injection.preferred.as_ref()));
    ops.extend(add_tolerations(pod, injection, tolerations));
    ops.extend(add_annotations(pod, &injection.annotations));
    ops.extend(add_labels(pod, &injection.labels));
    Patch(ops)
}

const NODE_AFFINITY: [&str; 3] = ["spec", "affinity", "nodeAffinity"];
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";
const PREFERRED: &str = "preferredDuringSchedulingIgnoredDuringExecution";

fn node_affinity(pod: &Pod) -> Option<&NodeAffinity> {
    let affinity = pod.spec.as_ref()?.affinity.as_ref()?;
    affinity.node_affinity.as_ref()
}

fn required_terms(pod: &Pod) -> Option<&[NodeSelectorTerm]> {
    let required = node_affinity(pod)?
        .required_during_scheduling_ignored_during_execution
        .as_ref();
    required.map(|r| r.node_selector_terms.as_slice())
}

/// The arch expression ANDed into every required term, in one operation.
/// Terms are ORed, so a new term of our own would let the pod escape
/// through it; with no term, ours is the only one.
fn required_affinity(pod: &Pod, archs: &BTreeSet<String>) -> PatchOperation {
    let expression = arch_expression(archs);
    let ours = || json!([{"matchExpressions": [expression.clone()]}]);
    let has_affinity = pod.spec.as_ref().is_some_and(|s| s.affinity.is_some());
    let node_affinity = node_affinity(pod);
    match (has_affinity, node_affinity, required_terms(pod)) {
        (false, _, _) => add(
            &["spec", "affinity"],
            json!({"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": ours()}}}),
        ),
        (true, None, _) => add(
            &NODE_AFFINITY,
            json!({REQUIRED: {"nodeSelectorTerms": ours()}}),
        ),
        (true, Some(_), None) => add(
            &[&NODE_AFFINITY[..], &[REQUIRED]].concat(),
            json!({"nodeSelectorTerms": ours()}),
        ),
        // The API server rejects an empty term list; treat it as absent.
        (true, Some(_), Some([])) => add(
            &[&NODE_AFFINITY[..], &[REQUIRED, "nodeSelectorTerms"]].concat(),
            ours(),
        ),
        // One `add` that writes the terms back merged, rather than one per
        // term: the patch grows with the pod, not by a path per term.
        (true, Some(_), Some(terms)) => add(
            &[&NODE_AFFINITY[..], &[REQUIRED, "nodeSelectorTerms"]].concat(),
            Value::Array(
                terms
                    .iter()
                    .map(|t| with_expression(t, &expression))
                    .collect(),
            ),
        ),
    }
}

/// archway's own arch expression (see `placement::own_requirement`)
/// replaced in every required term by one for `archs`, or removed when
/// `archs` is empty. Removing it must not leave only empty terms, which
/// match no node: then the requirement goes, as archway added it.
fn replace_own_affinity(pod: &Pod, archs: &BTreeSet<String>) -> PatchOperation {
    let path = [&NODE_AFFINITY[..], &[REQUIRED]].concat();
    let expression = (!archs.is_empty()).then(|| arch_expression(archs));
    let terms: Vec<Value> = required_terms(pod)
        .unwrap_or_default()
        .iter()
        .map(|term| without_own_expression(term, expression.as_ref()))
        .collect();
    let all_empty = terms
        .iter()
        .all(|t| t.as_object().is_none_or(|o| o.is_empty()));
    if all_empty {
        return PatchOperation::Remove(RemoveOperation {
            path: PointerBuf::from_tokens(path),
        });
    }
    add(
        &[&path[..], &["nodeSelectorTerms"]].concat(),
        Value::Array(terms),
    )
}

/// `term` without its `kubernetes.io/arch In` expression, with
/// `replacement` in its place when given.
fn without_own_expression(term: &NodeSelectorTerm, replacement: Option<&Value>) -> Value {
    let mut term = term.clone();
    let expressions = term.match_expressions.take().unwrap_or_default();
    let mut kept: Vec<Value> = expressions
        .iter()
        .filter(|e| !(e.key == ARCH_LABEL && e.operator == "In"))
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect();
    kept.extend(replacement.cloned());
    let mut value = serde_json::to_value(&term).unwrap_or_else(|_| json!({}));
    if let (Value::Object(fields), false) = (&mut value, kept.is_empty()) {
        fields.insert("matchExpressions".into(), Value::Array(kept));
    }
    value
}

/// `term` with `expression` appended to its match expressions.
fn with_expression(term: &NodeSelectorTerm, expression: &Value) -> Value {
    let mut value = serde_json::to_value(term).unwrap_or_else(|_| json!({}));
    if let Value::Object(fields) = &mut value {
        match fields.get_mut("matchExpressions") {
            Some(Value::Array(expressions)) => expressions.push(expression.clone()),
            _ => {
                fields.insert("matchExpressions".into(), json!([expression]));
            }
        }
    }
    value
}

/// A preferred term for `archs`, beside the user's own preferences.
fn preferred_affinity(pod: &Pod, archs: Option<&BTreeSet<String>>) -> Option<PatchOperation> {
    let archs = archs?;
    let term = json!({"weight": PREFERRED_WEIGHT, "preference": {"matchExpressions": [arch_expression(archs)]}});
    let has_preferred = node_affinity(pod).is_some_and(|n| {
        n.preferred_during_scheduling_ignored_during_execution
            .is_some()
    });
    // The required part already created nodeAffinity when absent.
    Some(if has_preferred {
        add(&[&NODE_AFFINITY[..], &[PREFERRED, "-"]].concat(), term)
    } else {
        add(&[&NODE_AFFINITY[..], &[PREFERRED]].concat(), json!([term]))
    })
}

/// The configured tolerations of the architectures the pod may land on
/// that it does not already have.
fn add_tolerations(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Vec<PatchOperation> {
    let existing = pod.spec.as_ref().and_then(|s| s.tolerations.as_ref());
    let mut missing: Vec<&Toleration> = Vec::new();
    for toleration in injection
        .tolerate
        .iter()
        .flat_map(|arch| configured_tolerations(tolerations, &injection.os, arch))
    {
        let present = existing
            .into_iter()
            .flatten()
            .chain(missing.iter().copied())
            .any(|t| covers(t, toleration));
        if !present {
            missing.push(toleration);
        }
    }
    match existing {
        _ if missing.is_empty() => Vec::new(),
        Some(_) => missing
            .into_iter()
            .map(|t| add(&["spec", "tolerations", "-"], to_value(t)))
            .collect(),
        None => vec![add(
            &["spec", "tolerations"],
            Value::Array(missing.into_iter().map(to_value).collect()),
        )],
    }
}

/// The tolerations configured for nodes of `os` and `arch`: under the key
/// `os/arch`, or for linux also under the bare `arch` (the original form,
/// kept valid). The configuration refuses both spellings of one platform.
pub fn configured_tolerations<'a>(
    tolerations: &'a BTreeMap<String, Vec<Toleration>>,
    os: &str,
    arch: &str,
) -> &'a [Toleration] {
    let qualified = tolerations.get(&format!("{os}/{arch}"));
    let bare = || (os == LINUX).then(|| tolerations.get(arch)).flatten();
    qualified.or_else(bare).map_or(&[], Vec::as_slice)
}

/// archway's annotations, beside the pod's own.
fn add_annotations(pod: &Pod, annotations: &BTreeMap<String, String>) -> Vec<PatchOperation> {
    let bare = ObjectMeta {
        namespace: pod.metadata.namespace.clone(),
        ..Default::default()
    };
    match &pod.metadata.annotations {
        // No metadata at all in the object (the typed pod reads it as
        // empty, but for the namespace admission fills in from the
        // request): adding /metadata/annotations could not apply.
        // Replacing an empty metadata object loses nothing.
        None if pod.metadata == bare => {
            vec![add(&["metadata"], json!({"annotations": annotations}))]
        }
        None => vec![add(&["metadata", "annotations"], json!(annotations))],
        Some(_) => annotations
            .iter()
            .map(|(key, value)| add(&["metadata", "annotations", key], json!(value)))
            .collect(),
    }
}

/// archway's labels, beside the pod's own. Runs after `add_annotations`,
/// which creates `/metadata` when the object had none.
fn add_labels(pod: &Pod, labels: &BTreeMap<String, String>) -> Vec<PatchOperation> {
    if labels.is_empty() {
        return Vec::new();
    }
    match &pod.metadata.labels {
        None => vec![add(&["metadata", "labels"], json!(labels))],
        Some(_) => labels
            .iter()
            .map(|(key, value)| add(&["metadata", "labels", key], json!(value)))
            .collect(),
    }
}

fn arch_expression(archs: &BTreeSet<String>) -> Value {
    json!({"key": ARCH_LABEL, "operator": "In", "values": archs})
}

/// Whether `existing` already tolerates what `wanted` tolerates, so adding
/// `wanted` would only duplicate it.
fn covers(existing: &Toleration, wanted: &Toleration) -> bool {
    let operator = |t: &Toleration| t.operator.clone().unwrap_or_else(|| "Equal".into());
    let effect_covered =
        existing.effect.as_deref().unwrap_or("").is_empty() || existing.effect == wanted.effect;
    let key_covered = existing.key.as_deref().unwrap_or("").is_empty()
        && operator(existing) == "Exists"
        || existing.key == wanted.key;
    let value_covered = operator(existing) == "Exists"
        || (operator(wanted) == "Equal" && existing.value == wanted.value);
    effect_covered && key_covered && value_covered && existing.toleration_seconds.is_none()
}

fn to_value(toleration: &Toleration) -> Value {
    serde_json::to_value(toleration).unwrap_or(Value::Null)
}

/// One `add`; the pointer is built from tokens so `/` and `~` in keys
/// (`archway.dev/archs`) are escaped.
fn add(tokens: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    })
}

#[cfg(test)]
mod tests;

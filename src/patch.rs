//! The JSON Patch that carries a decision into a pod: `add` operations
//! only, merged into what the pod already has, never replacing a user's
//! terms, tolerations or annotations.

use std::collections::{BTreeMap, BTreeSet};

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};

use crate::placement::{ARCH_LABEL, Injection};

/// Weight of archway's preferred term: the strongest, since it carries the
/// namespace owner's rollout choice; the user's own preferences still count.
const PREFERRED_WEIGHT: i32 = 100;

/// The patch that applies `injection` to `pod`. `tolerations` are the
/// configured tolerations per architecture.
pub fn build(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Patch {
    let mut ops = Vec::new();
    let spec = pod.spec.as_ref();

    // Required node affinity: the arch expression ANDed into every term.
    // Terms are ORed, so a new term of our own would let the pod escape
    // through it; with no term, ours is the only one.
    let expression = arch_expression(&injection.required);
    let affinity = spec.and_then(|s| s.affinity.as_ref());
    let node_affinity = affinity.and_then(|a| a.node_affinity.as_ref());
    let required = node_affinity.and_then(|n| {
        n.required_during_scheduling_ignored_during_execution
            .as_ref()
    });
    let new_term = json!({"matchExpressions": [expression.clone()]});
    let required_value = json!({"nodeSelectorTerms": [new_term]});
    let node_affinity_path = ["spec", "affinity", "nodeAffinity"];
    match (affinity, node_affinity, required) {
        (None, _, _) => add(
            &mut ops,
            &["spec", "affinity"],
            json!({"nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": required_value}}),
        ),
        (Some(_), None, _) => add(
            &mut ops,
            &node_affinity_path,
            json!({
            "requiredDuringSchedulingIgnoredDuringExecution": required_value}),
        ),
        (Some(_), Some(_), None) => add(
            &mut ops,
            &[
                &node_affinity_path[..],
                &["requiredDuringSchedulingIgnoredDuringExecution"],
            ]
            .concat(),
            required_value,
        ),
        // The API server rejects an empty term list; treat it as absent.
        (Some(_), Some(_), Some(r)) if r.node_selector_terms.is_empty() => add(
            &mut ops,
            &[
                &node_affinity_path[..],
                &[
                    "requiredDuringSchedulingIgnoredDuringExecution",
                    "nodeSelectorTerms",
                ],
            ]
            .concat(),
            json!([new_term]),
        ),
        (Some(_), Some(_), Some(r)) => {
            for (index, term) in r.node_selector_terms.iter().enumerate() {
                let index = index.to_string();
                let term_path = [
                    &node_affinity_path[..],
                    &[
                        "requiredDuringSchedulingIgnoredDuringExecution",
                        "nodeSelectorTerms",
                        &index,
                    ],
                ]
                .concat();
                match &term.match_expressions {
                    None => add(
                        &mut ops,
                        &[&term_path[..], &["matchExpressions"]].concat(),
                        json!([expression]),
                    ),
                    Some(_) => add(
                        &mut ops,
                        &[&term_path[..], &["matchExpressions", "-"]].concat(),
                        expression.clone(),
                    ),
                }
            }
        }
    }

    if let Some(preferred) = &injection.preferred {
        let term = json!({"weight": PREFERRED_WEIGHT, "preference": {"matchExpressions": [arch_expression(preferred)]}});
        let has_preferred = node_affinity.and_then(|n| {
            n.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        });
        // The required part above already created nodeAffinity when absent.
        match has_preferred {
            Some(_) => add(
                &mut ops,
                &[
                    &node_affinity_path[..],
                    &["preferredDuringSchedulingIgnoredDuringExecution", "-"],
                ]
                .concat(),
                term,
            ),
            None => add(
                &mut ops,
                &[
                    &node_affinity_path[..],
                    &["preferredDuringSchedulingIgnoredDuringExecution"],
                ]
                .concat(),
                json!([term]),
            ),
        }
    }

    let existing = spec.and_then(|s| s.tolerations.as_ref());
    let mut missing: Vec<&Toleration> = Vec::new();
    for toleration in injection
        .tolerate
        .iter()
        .flat_map(|arch| tolerations.get(arch).into_iter().flatten())
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
    if !missing.is_empty() {
        match existing {
            Some(_) => {
                for toleration in missing {
                    add(
                        &mut ops,
                        &["spec", "tolerations", "-"],
                        to_value(toleration),
                    );
                }
            }
            None => add(
                &mut ops,
                &["spec", "tolerations"],
                Value::Array(missing.into_iter().map(to_value).collect()),
            ),
        }
    }

    match &pod.metadata.annotations {
        // No metadata at all in the object (the typed pod reads it as
        // empty, but for the namespace admission fills in from the
        // request): adding /metadata/annotations could not apply.
        // Replacing an empty metadata object loses nothing.
        None if pod.metadata
            == (ObjectMeta {
                namespace: pod.metadata.namespace.clone(),
                ..Default::default()
            }) =>
        {
            add(
                &mut ops,
                &["metadata"],
                json!({"annotations": injection.annotations}),
            )
        }
        None => add(
            &mut ops,
            &["metadata", "annotations"],
            json!(injection.annotations),
        ),
        Some(_) => {
            for (key, value) in &injection.annotations {
                add(&mut ops, &["metadata", "annotations", key], json!(value));
            }
        }
    }
    Patch(ops)
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
fn add(ops: &mut Vec<PatchOperation>, tokens: &[&str], value: Value) {
    ops.push(PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(tokens.iter().copied()),
        value,
    }));
}

#[cfg(test)]
mod tests;

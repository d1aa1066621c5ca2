//! The JSON Patch that carries a decision into a pod: `add` operations,
//! merged into what the pod already has, never replacing a user's terms,
//! tolerations or annotations. The one exception is archway's own
//! expression on a pod it already placed, rewritten or removed on
//! reinvocation.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use json_patch::jsonptr::{Pointer, PointerBuf};
use json_patch::{AddOperation, Patch, PatchOperation, RemoveOperation};
use k8s_openapi::api::core::v1::{NodeAffinity, NodeSelectorTerm, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::ser::{SerializeMap, SerializeSeq, SerializeStruct};
use serde::{Serialize, Serializer};
use serde_json::{Value, json};

use crate::decision::placement::{
    ARCH_LABEL, ARCH_POD_LABEL, ARCHS_ANNOTATION, DECISION_ANNOTATION, Injection, Requirement,
};

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
///
/// Written straight from the pod and the injection, with no
/// `serde_json::Value` in between: the same bytes as `build` serialised
/// (keys in the order a `Value` sorts them), for a fraction of the
/// allocations, on every patched review.
pub fn encode(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
    limit: usize,
) -> Result<Vec<u8>, PatchError> {
    let terms = required_terms(pod).map_or(0, <[NodeSelectorTerm]>::len);
    let mut counter = ByteCount(0);
    serde_json::to_writer(&mut counter, &ArchExpression(&injection.required))?;
    let expression = counter.0;
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
    // Room for a typical patch at once, rather than growing to it.
    let mut bytes = Vec::with_capacity(1024);
    serde_json::to_writer(&mut bytes, &operations(pod, injection, tolerations))?;
    if bytes.len() > limit {
        return Err(too_large(bytes.len()));
    }
    Ok(bytes)
}

/// `patch` (a JSON Patch array, or none) with a `remove` of each of these
/// labels and annotations the patch does not itself write: archway's keys
/// that a pod's author set (`placement::foreign_archway_keys`).
pub fn remove_keys(
    patch: Option<&[u8]>,
    labels: &[&str],
    annotations: &[&str],
) -> Result<Vec<u8>, serde_json::Error> {
    let mut ops: Vec<PatchOperation> = match patch {
        Some(bytes) => serde_json::from_slice::<Patch>(bytes)?.0,
        None => Vec::new(),
    };
    let written: std::collections::HashSet<PointerBuf> = (ops.iter())
        .filter_map(|op| match op {
            PatchOperation::Add(add) => Some(add.path.clone()),
            _ => None,
        })
        .collect();
    let targets =
        (labels.iter().map(|k| (LABELS, k))).chain(annotations.iter().map(|k| (ANNOTATIONS, k)));
    for (parent, key) in targets {
        let path = parent.with_trailing_token(*key);
        if !written.contains(&path) {
            ops.push(PatchOperation::Remove(RemoveOperation { path }));
        }
    }
    serde_json::to_vec(&Patch(ops))
}

/// The patch that applies `injection` to `pod`. `tolerations` are the
/// configured tolerations per platform (see [`configured_tolerations`]).
pub fn build(
    pod: &Pod,
    injection: &Injection,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Patch {
    Patch(
        operations(pod, injection, tolerations)
            .into_iter()
            .map(Operation::into_patch_operation)
            .collect(),
    )
}

/// The operations of the patch, borrowing what they write from the pod
/// and the injection.
fn operations<'a>(
    pod: &'a Pod,
    injection: &'a Injection,
    tolerations: &'a BTreeMap<String, Vec<Toleration>>,
) -> Vec<Operation<'a>> {
    let mut ops = match injection.requirement {
        Requirement::AddToEveryTerm => vec![required_affinity(pod, &injection.required)],
        Requirement::ReplaceOwn => vec![replace_own_affinity(pod, &injection.required)],
        Requirement::LeaveToPin => Vec::new(),
    };
    ops.extend(preferred_affinity(pod, injection.preferred.as_ref()));
    ops.extend(add_tolerations(pod, injection, tolerations));
    ops.extend(add_annotations(pod, &injection.annotations));
    ops.extend(add_labels(pod, &injection.labels));
    ops
}

/// One operation of the patch: an `add` of `value`, or a `remove`.
struct Operation<'a> {
    path: Cow<'static, Pointer>,
    value: Option<Content<'a>>,
}

impl Operation<'_> {
    fn into_patch_operation(self) -> PatchOperation {
        let path = self.path.into_owned();
        match self.value {
            Some(value) => PatchOperation::Add(AddOperation {
                // Cannot fail for these plain values.
                value: serde_json::to_value(&value).unwrap_or(Value::Null),
                path,
            }),
            None => PatchOperation::Remove(RemoveOperation { path }),
        }
    }
}

/// As json_patch writes its operations: `op`, `path`, then `value`.
impl Serialize for Operation<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let mut op = out.serialize_struct("Operation", 2 + usize::from(self.value.is_some()))?;
        match &self.value {
            Some(value) => {
                op.serialize_field("op", "add")?;
                op.serialize_field("path", &*self.path)?;
                op.serialize_field("value", value)?;
            }
            None => {
                op.serialize_field("op", "remove")?;
                op.serialize_field("path", &*self.path)?;
            }
        }
        op.end()
    }
}

/// What an `add` writes. Each writes its object keys in sorted order, as
/// a `serde_json::Value` would: k8s-openapi's types list their fields
/// alphabetically, and archway's own objects below are written so.
enum Content<'a> {
    /// The pod's required terms, each with the arch expression ANDed in
    /// (archway's own single term when it has none), inside objects of
    /// one key each, outermost first.
    RequiredTerms {
        within: &'static [&'static str],
        terms: &'a [NodeSelectorTerm],
        archs: &'a BTreeSet<String>,
    },
    /// archway's preferred term, alone or as a list of one.
    PreferredTerm(&'a BTreeSet<String>),
    PreferredTerms(&'a BTreeSet<String>),
    Toleration(&'a Toleration),
    Tolerations(Vec<&'a Toleration>),
    /// A map of strings, inside an object of one key when `within` names it.
    Strings {
        within: Option<&'static str>,
        map: &'a BTreeMap<String, String>,
    },
    String(&'a str),
    /// Written as it was built (a reinvocation's rewrite: rare).
    Value(Value),
}

impl Serialize for Content<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        match self {
            Content::RequiredTerms {
                within,
                terms,
                archs,
            } => Within(within, &MergedTerms { terms, archs }).serialize(out),
            Content::PreferredTerm(archs) => PreferredTerm(archs).serialize(out),
            Content::PreferredTerms(archs) => [PreferredTerm(archs)].serialize(out),
            Content::Toleration(toleration) => toleration.serialize(out),
            Content::Tolerations(tolerations) => tolerations.serialize(out),
            Content::Strings {
                within: Some(key),
                map,
            } => Within(&[key], map).serialize(out),
            Content::Strings { within: None, map } => map.serialize(out),
            Content::String(value) => value.serialize(out),
            Content::Value(value) => value.serialize(out),
        }
    }
}

/// `value` inside objects of one key each: `{"a": {"b": value}}`.
struct Within<'k, 'v, T>(&'k [&'k str], &'v T);

impl<T: Serialize> Serialize for Within<'_, '_, T> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        match self.0.split_first() {
            None => self.1.serialize(out),
            Some((key, rest)) => {
                let mut map = out.serialize_map(Some(1))?;
                map.serialize_entry(key, &Within(rest, self.1))?;
                map.end()
            }
        }
    }
}

/// `{"key": "kubernetes.io/arch", "operator": "In", "values": archs}`.
struct ArchExpression<'a>(&'a BTreeSet<String>);

impl Serialize for ArchExpression<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let mut expression = out.serialize_struct("NodeSelectorRequirement", 3)?;
        expression.serialize_field("key", ARCH_LABEL)?;
        expression.serialize_field("operator", "In")?;
        expression.serialize_field("values", self.0)?;
        expression.end()
    }
}

/// The pod's terms with the arch expression ANDed into each, or
/// archway's own term alone when the pod has none.
struct MergedTerms<'a> {
    terms: &'a [NodeSelectorTerm],
    archs: &'a BTreeSet<String>,
}

impl Serialize for MergedTerms<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let own = NodeSelectorTerm::default();
        let terms = match self.terms {
            [] => std::slice::from_ref(&own),
            terms => terms,
        };
        out.collect_seq(terms.iter().map(|term| MergedTerm {
            term,
            archs: self.archs,
        }))
    }
}

/// `term` with the arch expression appended to its match expressions.
struct MergedTerm<'a> {
    term: &'a NodeSelectorTerm,
    archs: &'a BTreeSet<String>,
}

impl Serialize for MergedTerm<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let fields = self.term.match_fields.as_ref();
        let mut term =
            out.serialize_struct("NodeSelectorTerm", 1 + usize::from(fields.is_some()))?;
        term.serialize_field("matchExpressions", &Expressions(self))?;
        if let Some(fields) = fields {
            term.serialize_field("matchFields", fields)?;
        }
        term.end()
    }
}

struct Expressions<'a, 'b>(&'b MergedTerm<'a>);

impl Serialize for Expressions<'_, '_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let MergedTerm { term, archs } = self.0;
        let theirs = term.match_expressions.iter().flatten();
        let mut seq = out.serialize_seq(None)?;
        for expression in theirs {
            seq.serialize_element(expression)?;
        }
        seq.serialize_element(&ArchExpression(archs))?;
        seq.end()
    }
}

/// `{"preference": {"matchExpressions": [expression]}, "weight": 100}`.
struct PreferredTerm<'a>(&'a BTreeSet<String>);

impl Serialize for PreferredTerm<'_> {
    fn serialize<S: Serializer>(&self, out: S) -> Result<S::Ok, S::Error> {
        let preference = Within(&["matchExpressions"], &[ArchExpression(self.0)]);
        let mut term = out.serialize_struct("PreferredSchedulingTerm", 2)?;
        term.serialize_field("preference", &preference)?;
        term.serialize_field("weight", &PREFERRED_WEIGHT)?;
        term.end()
    }
}

/// Counts the bytes written, keeping none.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 += bytes.len();
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

const AFFINITY: &Pointer = Pointer::from_static("/spec/affinity");
const NODE_AFFINITY: &Pointer = Pointer::from_static("/spec/affinity/nodeAffinity");
const REQUIRED_AFFINITY: &Pointer = Pointer::from_static(
    "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution",
);
const REQUIRED_TERMS: &Pointer = Pointer::from_static(
    "/spec/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms",
);
const PREFERRED_AFFINITY: &Pointer = Pointer::from_static(
    "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution",
);
const PREFERRED_AFFINITY_END: &Pointer = Pointer::from_static(
    "/spec/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution/-",
);
const TOLERATIONS: &Pointer = Pointer::from_static("/spec/tolerations");
const TOLERATIONS_END: &Pointer = Pointer::from_static("/spec/tolerations/-");
const METADATA: &Pointer = Pointer::from_static("/metadata");
const ANNOTATIONS: &Pointer = Pointer::from_static("/metadata/annotations");
const LABELS: &Pointer = Pointer::from_static("/metadata/labels");
const REQUIRED: &str = "requiredDuringSchedulingIgnoredDuringExecution";

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
fn required_affinity<'a>(pod: &'a Pod, archs: &'a BTreeSet<String>) -> Operation<'a> {
    let has_affinity = pod.spec.as_ref().is_some_and(|s| s.affinity.is_some());
    let node_affinity = node_affinity(pod);
    let terms = |within, terms| Content::RequiredTerms {
        within,
        terms,
        archs,
    };
    match (has_affinity, node_affinity, required_terms(pod)) {
        (false, _, _) => add(
            AFFINITY,
            terms(&["nodeAffinity", REQUIRED, "nodeSelectorTerms"], &[]),
        ),
        (true, None, _) => add(NODE_AFFINITY, terms(&[REQUIRED, "nodeSelectorTerms"], &[])),
        (true, Some(_), None) => add(REQUIRED_AFFINITY, terms(&["nodeSelectorTerms"], &[])),
        // The API server rejects an empty term list; treat it as absent.
        // Otherwise one `add` writes the terms back merged, rather than
        // one per term: the patch grows with the pod, not by a path per
        // term.
        (true, Some(_), Some(existing)) => add(REQUIRED_TERMS, terms(&[], existing)),
    }
}

/// archway's own arch expression (see `placement::own_requirement`)
/// replaced in every required term by one for `archs`, or removed when
/// `archs` is empty. Removing it must not leave only empty terms, which
/// match no node: then the requirement goes, as archway added it.
fn replace_own_affinity(pod: &Pod, archs: &BTreeSet<String>) -> Operation<'static> {
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
        return Operation {
            path: Cow::Borrowed(REQUIRED_AFFINITY),
            value: None,
        };
    }
    add(REQUIRED_TERMS, Content::Value(Value::Array(terms)))
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

/// A preferred term for `archs`, beside the user's own preferences.
fn preferred_affinity<'a>(pod: &Pod, archs: Option<&'a BTreeSet<String>>) -> Option<Operation<'a>> {
    let archs = archs?;
    let has_preferred = node_affinity(pod).is_some_and(|n| {
        n.preferred_during_scheduling_ignored_during_execution
            .is_some()
    });
    // The required part already created nodeAffinity when absent.
    Some(if has_preferred {
        add(PREFERRED_AFFINITY_END, Content::PreferredTerm(archs))
    } else {
        add(PREFERRED_AFFINITY, Content::PreferredTerms(archs))
    })
}

/// The configured tolerations of the architectures the pod may land on
/// that it does not already have.
fn add_tolerations<'a>(
    pod: &'a Pod,
    injection: &'a Injection,
    tolerations: &'a BTreeMap<String, Vec<Toleration>>,
) -> Vec<Operation<'a>> {
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
            .map(|t| add(TOLERATIONS_END, Content::Toleration(t)))
            .collect(),
        None => vec![add(TOLERATIONS, Content::Tolerations(missing))],
    }
}

pub use crate::decision::placement::configured_tolerations;

/// archway's annotations, beside the pod's own.
fn add_annotations<'a>(pod: &Pod, annotations: &'a BTreeMap<String, String>) -> Vec<Operation<'a>> {
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
            let within = Some("annotations");
            vec![add(
                METADATA,
                Content::Strings {
                    within,
                    map: annotations,
                },
            )]
        }
        None => vec![add(
            ANNOTATIONS,
            Content::Strings {
                within: None,
                map: annotations,
            },
        )],
        Some(_) => each_entry(ANNOTATIONS, annotations),
    }
}

/// archway's labels, beside the pod's own. Runs after `add_annotations`,
/// which creates `/metadata` when the object had none.
fn add_labels<'a>(pod: &Pod, labels: &'a BTreeMap<String, String>) -> Vec<Operation<'a>> {
    if labels.is_empty() {
        return Vec::new();
    }
    match &pod.metadata.labels {
        None => vec![add(
            LABELS,
            Content::Strings {
                within: None,
                map: labels,
            },
        )],
        Some(_) => each_entry(LABELS, labels),
    }
}

/// One `add` per entry of `map`, into the object at `parent`; the key is
/// appended as a token, so `/` and `~` in it (`archway.dev/archs`) are
/// escaped.
fn each_entry<'a>(
    parent: &'static Pointer,
    map: &'a BTreeMap<String, String>,
) -> Vec<Operation<'a>> {
    map.iter()
        .map(|(key, value)| Operation {
            path: entry_path(parent, key),
            value: Some(Content::String(value)),
        })
        .collect()
}

/// `parent` with `key` appended. archway's own keys' paths are made once:
/// nearly every patch has them, and escaping the `/` in each costs a few
/// allocations.
fn entry_path(parent: &'static Pointer, key: &str) -> Cow<'static, Pointer> {
    static OWN: LazyLock<Vec<(&Pointer, &str, PointerBuf)>> = LazyLock::new(|| {
        let keys = [ARCHS_ANNOTATION, DECISION_ANNOTATION, ARCH_POD_LABEL];
        let own = |parent: &'static Pointer| {
            keys.map(|key| (parent, key, parent.with_trailing_token(key)))
        };
        [ANNOTATIONS, LABELS].into_iter().flat_map(own).collect()
    });
    let own = OWN.iter().find(|(p, k, _)| *p == parent && *k == key);
    match own {
        Some((_, _, path)) => Cow::Borrowed(path.as_ptr()),
        None => Cow::Owned(parent.with_trailing_token(key)),
    }
}

fn arch_expression(archs: &BTreeSet<String>) -> Value {
    json!({"key": ARCH_LABEL, "operator": "In", "values": archs})
}

/// Whether `existing` already tolerates what `wanted` tolerates, so adding
/// `wanted` would only duplicate it.
fn covers(existing: &Toleration, wanted: &Toleration) -> bool {
    fn operator(t: &Toleration) -> &str {
        t.operator.as_deref().unwrap_or("Equal")
    }
    let effect_covered =
        existing.effect.as_deref().unwrap_or("").is_empty() || existing.effect == wanted.effect;
    let key_covered = existing.key.as_deref().unwrap_or("").is_empty()
        && operator(existing) == "Exists"
        || existing.key == wanted.key;
    let value_covered = operator(existing) == "Exists"
        || (operator(wanted) == "Equal" && existing.value == wanted.value);
    effect_covered && key_covered && value_covered && existing.toleration_seconds.is_none()
}

/// One `add` at a fixed path.
fn add<'a>(path: &'static Pointer, value: Content<'a>) -> Operation<'a> {
    Operation {
        path: Cow::Borrowed(path),
        value: Some(value),
    }
}

#[cfg(test)]
mod tests;

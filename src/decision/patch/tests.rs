use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::decision::placement::{ARCHS_ANNOTATION, DECISION_ANNOTATION};

fn injection(required: &[&str], preferred: Option<&[&str]>) -> Injection {
    let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    Injection {
        required: set(required),
        preferred: preferred.map(set),
        os: "linux".into(),
        tolerate: set(required),
        labels: BTreeMap::new(),
        annotations: BTreeMap::from([
            (ARCHS_ANNOTATION.to_string(), "amd64,arm64".to_string()),
            (
                DECISION_ANNOTATION.to_string(),
                "arm64: rollout 100%, bucket 3".to_string(),
            ),
        ]),
        requirement: crate::decision::placement::Requirement::AddToEveryTerm,
    }
}

/// Builds the patch, applies it, and checks the result is still a Pod.
fn apply(pod: Value, injection: &Injection) -> (Value, Pod) {
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let patch = build(
        &typed,
        injection,
        &crate::decision::placement::default_tolerations(),
    );
    for op in &patch.0 {
        assert!(
            matches!(op, PatchOperation::Add(_)),
            "only add operations: {op:?}"
        );
    }
    let mut patched = pod;
    json_patch::patch(&mut patched, &patch)
        .unwrap_or_else(|e| panic!("patch does not apply: {e}\n{patch:?}"));
    let typed = serde_json::from_value(patched.clone()).expect("patched pod is a valid Pod");
    (patched, typed)
}

fn base() -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": "r/web:1"}]}
    })
}

fn arch_expr(values: &[&str]) -> Value {
    json!({"key": "kubernetes.io/arch", "operator": "In", "values": values})
}

#[test]
fn bare_pod_gets_affinity_tolerations_and_annotations() {
    let (patched, _) = apply(base(), &injection(&["arm64"], None));
    assert_eq!(
        patched["spec"]["affinity"],
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [arch_expr(&["arm64"])]}]}}})
    );
    assert_eq!(
        patched["spec"]["tolerations"],
        json!([{"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}])
    );
    assert_eq!(
        patched["metadata"]["annotations"]["archway.dev/archs"],
        "amd64,arm64"
    );
    assert_eq!(
        patched["metadata"]["annotations"]["archway.dev/decision"],
        "arm64: rollout 100%, bucket 3"
    );
}

#[test]
fn arch_is_anded_into_every_existing_term_and_nothing_is_lost() {
    let mut pod = base();
    pod["metadata"]["annotations"] = json!({"team": "shop"});
    pod["spec"]["affinity"] = json!({
        "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 10, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname"}}]},
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
            ]},
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "preference": {"matchExpressions": [{"key": "ssd", "operator": "Exists"}]}}]
        }
    });
    pod["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}]);
    let (patched, _) = apply(pod, &injection(&["amd64", "arm64"], Some(&["arm64"])));
    let terms = &patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms.as_array().unwrap().len(), 2, "no new term");
    assert_eq!(
        terms[0]["matchExpressions"],
        json!([{"key": "zone", "operator": "In", "values": ["a"]}, arch_expr(&["amd64", "arm64"])])
    );
    assert_eq!(
        terms[1]["matchExpressions"],
        json!([arch_expr(&["amd64", "arm64"])])
    );
    assert_eq!(terms[1]["matchFields"][0]["values"], json!(["n1"]));
    let preferred = &patched["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"];
    assert_eq!(preferred[0]["weight"], 5);
    assert_eq!(
        preferred[1],
        json!({"weight": 100, "preference": {"matchExpressions": [arch_expr(&["arm64"])]}})
    );
    assert_eq!(
        patched["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
            [0]["weight"],
        10
    );
    let tolerations = patched["spec"]["tolerations"].as_array().unwrap();
    assert_eq!(tolerations.len(), 3);
    assert_eq!(tolerations[0]["key"], "dedicated");
    assert_eq!(patched["metadata"]["annotations"]["team"], "shop");
    assert_eq!(
        patched["metadata"]["annotations"]["archway.dev/archs"],
        "amd64,arm64"
    );
}

#[test]
fn partial_affinity_shapes_are_completed() {
    for affinity in [
        json!({}),
        json!({"podAffinity": {}}),
        json!({"nodeAffinity": {}}),
        json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}}),
        json!({"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}),
    ] {
        let mut pod = base();
        pod["spec"]["affinity"] = affinity.clone();
        let (patched, _) = apply(pod, &injection(&["arm64"], Some(&["arm64"])));
        let node = &patched["spec"]["affinity"]["nodeAffinity"];
        assert_eq!(
            node["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"],
            json!([{"matchExpressions": [arch_expr(&["arm64"])]}]),
            "{affinity}"
        );
        assert_eq!(
            node["preferredDuringSchedulingIgnoredDuringExecution"]
                .as_array()
                .unwrap()
                .len(),
            1,
            "{affinity}"
        );
    }
}

#[test]
fn tolerations_are_not_duplicated() {
    for existing in [
        json!([{"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]),
        json!([{"key": "kubernetes.io/arch", "value": "arm64", "effect": "NoSchedule"}]),
        json!([{"key": "kubernetes.io/arch", "operator": "Exists"}]),
        json!([{"operator": "Exists"}]),
    ] {
        let mut pod = base();
        pod["spec"]["tolerations"] = existing.clone();
        let (patched, _) = apply(pod, &injection(&["arm64"], None));
        assert_eq!(patched["spec"]["tolerations"], existing);
    }
    // A toleration for another value, or one that expires, does not cover ours.
    for existing in [
        json!([{"key": "kubernetes.io/arch", "operator": "Equal", "value": "amd64", "effect": "NoSchedule"}]),
        json!([{"key": "kubernetes.io/arch", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]),
    ] {
        let mut pod = base();
        pod["spec"]["tolerations"] = existing.clone();
        let (patched, _) = apply(pod, &injection(&["arm64"], None));
        assert_eq!(
            patched["spec"]["tolerations"].as_array().unwrap().len(),
            2,
            "{existing}"
        );
    }
}

#[test]
fn architectures_without_configured_tolerations_add_none() {
    let (patched, _) = apply(base(), &injection(&["s390x"], None));
    assert!(patched["spec"].get("tolerations").is_none());
}

#[test]
fn annotation_keys_are_escaped_in_pointers() {
    let mut pod = base();
    pod["metadata"]["annotations"] = json!({});
    let typed: Pod = serde_json::from_value(pod).unwrap();
    let patch = build(&typed, &injection(&["arm64"], None), &BTreeMap::new());
    let paths: Vec<String> = patch
        .0
        .iter()
        .map(|op| match op {
            PatchOperation::Add(a) => a.path.to_string(),
            _ => unreachable!(),
        })
        .collect();
    assert!(
        paths.contains(&"/metadata/annotations/archway.dev~1archs".to_string()),
        "{paths:?}"
    );
}

#[test]
fn a_pod_without_metadata_still_gets_its_annotations() {
    let pod = json!({"spec": {"containers": [{"name": "web", "image": "r/web:1"}]}});
    let (patched, _) = apply(pod, &injection(&["arm64"], None));
    assert_eq!(
        patched["metadata"]["annotations"]["archway.dev/archs"],
        "amd64,arm64"
    );
}

/// Issue 14: one `add` per term let a pod of a million empty terms make a
/// 284 MB answer. The terms go back in one operation, and `encode` refuses
/// a patch over its limit before building it.
#[test]
fn many_terms_make_one_operation_and_an_oversized_patch_is_refused() {
    let mut pod = base();
    let terms: Vec<Value> = (0..1000)
        .map(|i| json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": [format!("z{i}")]}]}))
        .collect();
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}});
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let injection = injection(&["arm64"], None);
    let patch = build(
        &typed,
        &injection,
        &crate::decision::placement::default_tolerations(),
    );
    assert_eq!(
        patch.0.len(),
        3,
        "affinity, tolerations, annotations: {:?}",
        patch.0.len()
    );
    let (patched, _) = apply(pod, &injection);
    let terms = patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(terms.len(), 1000);
    for (i, term) in terms.iter().enumerate() {
        assert_eq!(
            term["matchExpressions"],
            json!([{"key": "zone", "operator": "In", "values": [format!("z{i}")]}, arch_expr(&["arm64"])])
        );
    }

    let mut huge = base();
    huge["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": vec![json!({}); 1_000_000]}}});
    let huge: Pod = serde_json::from_value(huge).unwrap();
    let started = std::time::Instant::now();
    let refused = encode(
        &huge,
        &injection,
        &crate::decision::placement::default_tolerations(),
        1 << 20,
    );
    assert!(
        matches!(
            refused,
            Err(PatchError::TooLarge {
                terms: 1_000_000,
                ..
            })
        ),
        "{refused:?}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "refused without building"
    );
    // Under the limit, `encode` is `build` serialised.
    let small = encode(
        &typed,
        &injection,
        &crate::decision::placement::default_tolerations(),
        1 << 20,
    )
    .unwrap();
    assert_eq!(small, serde_json::to_vec(&patch).unwrap());
}

#[test]
fn tolerations_are_those_of_the_pods_os() {
    let windows_toleration =
        json!({"key": "os", "operator": "Equal", "value": "windows", "effect": "NoSchedule"});
    let mut tolerations = crate::decision::placement::default_tolerations();
    tolerations.insert(
        "windows/amd64".into(),
        vec![serde_json::from_value(windows_toleration.clone()).unwrap()],
    );
    let mut windows = injection(&["amd64"], None);
    windows.os = "windows".into();
    let typed: Pod = serde_json::from_value(base()).unwrap();
    let mut patched = base();
    json_patch::patch(&mut patched, &build(&typed, &windows, &tolerations)).unwrap();
    assert_eq!(patched["spec"]["tolerations"], json!([windows_toleration]));
    // The defaults are for Linux nodes: a Windows pod gets none of them.
    let mut patched = base();
    let defaults = crate::decision::placement::default_tolerations();
    json_patch::patch(&mut patched, &build(&typed, &windows, &defaults)).unwrap();
    assert_eq!(patched["spec"].get("tolerations"), None);
    // A Linux pod still gets the arch taint's toleration, as before.
    let mut patched = base();
    let linux = injection(&["amd64"], None);
    json_patch::patch(&mut patched, &build(&typed, &linux, &tolerations)).unwrap();
    assert_eq!(patched["spec"]["tolerations"][0]["value"], "amd64");
}

#[test]
fn the_arch_label_is_added_beside_the_pods_own_labels() {
    let mut labelled = injection(&["arm64"], None);
    labelled.labels = BTreeMap::from([("archway.dev/arch".to_string(), "arm64".to_string())]);
    let mut with_labels = base();
    with_labels["metadata"]["labels"] = json!({"app": "web"});
    let (patched, _) = apply(with_labels, &labelled);
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"app": "web", "archway.dev/arch": "arm64"})
    );
    let (patched, _) = apply(base(), &labelled);
    assert_eq!(
        patched["metadata"]["labels"],
        json!({"archway.dev/arch": "arm64"})
    );
    // No metadata at all: the annotations' operation makes it, then labels.
    let (patched, _) = apply(
        json!({"apiVersion": "v1", "kind": "Pod", "spec": base()["spec"]}),
        &labelled,
    );
    assert_eq!(patched["metadata"]["labels"]["archway.dev/arch"], "arm64");
    let (patched, _) = apply(base(), &injection(&["arm64"], None));
    assert!(patched["metadata"].get("labels").is_none());
}

#[test]
fn encode_writes_what_build_serialises() {
    // `encode` writes its bytes directly, `build` goes through `Value`s
    // (whose objects sort their keys): the same patch, byte for byte.
    let terms = json!({"nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n"]}]},
            {}
        ]},
        "preferredDuringSchedulingIgnoredDuringExecution": []
    }});
    let mut pods = vec![base(), json!({"apiVersion": "v1", "kind": "Pod"})];
    let mut with_terms = base();
    with_terms["spec"]["affinity"] = terms;
    with_terms["spec"]["tolerations"] = json!([{"operator": "Exists", "effect": "NoExecute"}]);
    with_terms["metadata"]["annotations"] = json!({"a": "b"});
    with_terms["metadata"]["labels"] = json!({"app": "web"});
    pods.push(with_terms);
    let tolerations = crate::decision::placement::default_tolerations();
    for pod in pods {
        let typed: Pod = serde_json::from_value(pod).unwrap();
        for preferred in [None, Some(&["arm64"][..])] {
            let mut injection = injection(&["amd64", "arm64"], preferred);
            injection.labels = BTreeMap::from([("archway.dev/arch".into(), "arm64".into())]);
            let built = serde_json::to_vec(&build(&typed, &injection, &tolerations)).unwrap();
            let encoded = encode(&typed, &injection, &tolerations, usize::MAX).unwrap();
            assert_eq!(
                String::from_utf8(encoded).unwrap(),
                String::from_utf8(built).unwrap()
            );
        }
    }
}

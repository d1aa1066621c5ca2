use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{NodeSelectorTerm, Pod};
use serde_json::{Value, json};

use super::*;

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).unwrap()
}

fn gated(extra_spec: Value) -> Pod {
    let mut spec = json!({
        "containers": [{"name": "app", "image": "r.example/app:v1"}],
        "schedulingGates": [{"name": "other.example/wait"}, {"name": GATE}],
    });
    for (k, v) in extra_spec.as_object().unwrap() {
        spec[k] = v.clone();
    }
    pod(json!({
        "metadata": {
            "name": "web-1", "namespace": "shop", "resourceVersion": "7",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": {GATED_LABEL: "true", "app": "web"},
            "annotations": {PENDING_ANNOTATION: "r.example/app:v1", DRAW_ANNOTATION: "3"},
        },
        "spec": spec,
    }))
}

fn injection(archs: &[&str], preferred: Option<&[&str]>) -> crate::decision::placement::Injection {
    let set = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    crate::decision::placement::Injection {
        required: set(archs),
        preferred: preferred.map(set),
        os: "linux".into(),
        tolerate: set(archs),
        annotations: BTreeMap::from([(
            crate::decision::placement::DECISION_ANNOTATION.to_string(),
            "arm64: rollout 100%".to_string(),
        )]),
        requirement: crate::decision::placement::Requirement::AddToEveryTerm,
        labels: Default::default(),
    }
}

fn tolerations() -> BTreeMap<String, Vec<k8s_openapi::api::core::v1::Toleration>> {
    crate::decision::placement::default_tolerations()
}

/// The rules the API server enforces on a gated pod's update
/// (`validateNodeSelectorMutation` and its neighbours in
/// pkg/apis/core/validation), restated: required terms set only where
/// there were none, else the same number of terms, each keeping its
/// expressions and fields and only gaining expressions at the end;
/// nodeSelector and tolerations only gain entries; gates only go.
fn narrows_only(old: &Pod, new: &Pod) -> Result<(), String> {
    let (o, n) = (old.spec.as_ref().unwrap(), new.spec.as_ref().unwrap());
    let terms = |p: &k8s_openapi::api::core::v1::PodSpec| -> Option<Vec<NodeSelectorTerm>> {
        let required = p
            .affinity
            .as_ref()?
            .node_affinity
            .as_ref()?
            .required_during_scheduling_ignored_during_execution
            .as_ref()?;
        Some(required.node_selector_terms.clone())
    };
    if let Some(old_terms) = terms(o).filter(|t| !t.is_empty()) {
        let new_terms = terms(n).ok_or("required terms removed")?;
        if new_terms.len() != old_terms.len() {
            return Err("number of required terms changed".into());
        }
        for (ot, nt) in old_terms.iter().zip(&new_terms) {
            if ot.match_fields != nt.match_fields {
                return Err("matchFields changed".into());
            }
            let oe = ot.match_expressions.clone().unwrap_or_default();
            let ne = nt.match_expressions.clone().unwrap_or_default();
            if ne.len() < oe.len() || ne[..oe.len()] != oe[..] {
                return Err("an existing expression changed".into());
            }
        }
    }
    for (key, value) in o.node_selector.iter().flatten() {
        if n.node_selector.as_ref().and_then(|s| s.get(key)) != Some(value) {
            return Err(format!("nodeSelector {key} changed"));
        }
    }
    let old_tolerations = o.tolerations.clone().unwrap_or_default();
    let new_tolerations = n.tolerations.clone().unwrap_or_default();
    if new_tolerations.len() < old_tolerations.len()
        || new_tolerations[..old_tolerations.len()] != old_tolerations[..]
    {
        return Err("tolerations changed, not only added to".into());
    }
    let old_gates = o.scheduling_gates.clone().unwrap_or_default();
    for gate in n.scheduling_gates.iter().flatten() {
        if !old_gates.contains(gate) {
            return Err(format!("gate {} added", gate.name));
        }
    }
    if o.containers != n.containers {
        return Err("containers changed".into());
    }
    Ok(())
}

#[test]
fn only_a_pending_lookup_in_an_enforce_gate_namespace_gates() {
    let fresh = pod(json!({"spec": {"containers": [{"name": "a", "image": "x"}]}}));
    let already = gated(json!({}));
    let pending = vec!["r.example/app:v1".to_string()];
    for (mode, cold, pending, pod, expected) in [
        (Mode::Enforce, Cold::Gate, &pending, &fresh, true),
        (Mode::Enforce, Cold::Admit, &pending, &fresh, false),
        (Mode::Audit, Cold::Gate, &pending, &fresh, false),
        (Mode::Enforce, Cold::Gate, &vec![], &fresh, false),
        (Mode::Enforce, Cold::Gate, &pending, &already, false),
    ] {
        assert_eq!(
            should_gate(mode, cold, pending, pod),
            expected,
            "{mode:?} {cold:?} {pending:?} gated={}",
            is_gated(pod)
        );
    }
}

#[test]
fn the_gate_patch_applies_to_every_shape_of_pod() {
    let pending = vec!["r.example/a:v1".to_string(), "r.example/b:v2".to_string()];
    for (what, object) in [
        (
            "no metadata",
            json!({"spec": {"containers": [{"name": "a"}]}}),
        ),
        (
            "labels, no annotations",
            json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "a"}]}}),
        ),
        (
            "annotations and another gate",
            json!({"metadata": {"annotations": {"team": "x"}},
                   "spec": {"containers": [{"name": "a"}], "schedulingGates": [{"name": "other/wait"}]}}),
        ),
    ] {
        let pod = pod(object.clone());
        let mut value = serde_json::to_value(&pod).unwrap();
        let patch = json_patch::Patch(gate_patch(&pod, &pending, Some(12)));
        json_patch::patch(&mut value, &patch).unwrap_or_else(|e| panic!("{what}: {e}"));
        let after: Pod = serde_json::from_value(value).unwrap();
        assert!(is_gated(&after), "{what}");
        assert_eq!(
            after.metadata.labels.as_ref().unwrap()[GATED_LABEL],
            "true",
            "{what}"
        );
        let annotations = after.metadata.annotations.as_ref().unwrap();
        assert_eq!(
            annotations[PENDING_ANNOTATION],
            "r.example/a:v1, r.example/b:v2"
        );
        assert_eq!(recorded_draw(&after), Some(12));
        let gates = after.spec.unwrap().scheduling_gates.unwrap();
        let others = object["spec"]["schedulingGates"]
            .as_array()
            .map_or(0, Vec::len);
        assert_eq!(gates.len(), others + 1, "{what}: other gates kept");
        if others > 0 {
            assert_eq!(annotations["team"], "x", "{what}: own annotations kept");
        }
    }
}

#[test]
fn the_pending_annotation_stays_short() {
    let many: Vec<String> = (0..64).map(|i| format!("r.example/{i:0>60}:v1")).collect();
    let value = pending_value(&many);
    assert!(value.len() <= 256, "{}", value.len());
    assert!(value.contains("more"), "{value}");
}

#[test]
fn releasing_with_placement_only_narrows() {
    let term = |key: &str| json!({"matchExpressions": [{"key": key, "operator": "Exists"}]});
    for (what, spec) in [
        ("nothing to narrow", json!({})),
        (
            "two required terms",
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                {"nodeSelectorTerms": [term("zone"), term("disk")]}}}}),
        ),
        (
            "preferred only",
            json!({"affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution":
                [{"weight": 5, "preference": term("ssd")}]}}}),
        ),
        (
            "pod affinity, no node affinity",
            json!({"affinity": {"podAffinity": {}}}),
        ),
        (
            "tolerations and nodeSelector",
            json!({"tolerations": [{"key": "team", "operator": "Exists"}],
                   "nodeSelector": {"disk": "ssd"}}),
        ),
    ] {
        let old = gated(spec);
        let new = release(
            &old,
            &Release::Place(&injection(&["arm64"], Some(&["arm64"]))),
            &tolerations(),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        narrows_only(&old, &new).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(!is_gated(&new), "{what}");
        let gates = new.spec.as_ref().unwrap().scheduling_gates.clone().unwrap();
        assert_eq!(gates.len(), 1, "{what}: the other controller's gate stays");
        assert_eq!(
            crate::decision::placement::user_architectures(&new),
            Some(BTreeSet::from(["arm64".to_string()])),
            "{what}: every required term carries the arch"
        );
        let labels = new.metadata.labels.as_ref().unwrap();
        assert!(!labels.contains_key(GATED_LABEL) && labels["app"] == "web");
        let annotations = new.metadata.annotations.as_ref().unwrap();
        assert!(annotations.contains_key(crate::decision::placement::DECISION_ANNOTATION));
        assert!(!annotations.contains_key(PENDING_ANNOTATION));
        assert_eq!(new.metadata.resource_version.as_deref(), Some("7"));
        let tolerated = new.spec.as_ref().unwrap().tolerations.clone().unwrap();
        assert!(
            tolerated
                .iter()
                .any(|t| t.value.as_deref() == Some("arm64"))
        );
    }
}

#[test]
fn releasing_unplaced_only_removes_the_gate() {
    let old = gated(json!({"tolerations": [{"key": "team", "operator": "Exists"}]}));
    let new = release(&old, &Release::Unplaced("timed out".into()), &tolerations()).unwrap();
    narrows_only(&old, &new).unwrap();
    assert_eq!(
        new.metadata.annotations.as_ref().unwrap()[UNGATED_ANNOTATION],
        "timed out"
    );
    let (o, n) = (old.spec.unwrap(), new.spec.unwrap());
    assert_eq!(o.tolerations, n.tolerations);
    assert_eq!(o.affinity, n.affinity);
    assert_eq!(n.scheduling_gates.unwrap().len(), 1);
    // A pod with only archway's gate ends with none.
    let lone = pod(
        json!({"metadata": {"name": "a"}, "spec": {"containers": [{"name": "a"}],
        "schedulingGates": [{"name": GATE}]}}),
    );
    let released = release(&lone, &Release::Unplaced("x".into()), &tolerations()).unwrap();
    assert_eq!(released.spec.unwrap().scheduling_gates, None);
}

#[test]
fn the_controller_waits_only_while_lookups_run_and_time_is_left() {
    let timeout = Duration::from_secs(30);
    for (pending, waited, expected) in [
        (0, 1, Next::Release),
        (0, 40, Next::Release),
        (2, 1, Next::Wait),
        (2, 30, Next::TimedOut),
        (1, 31, Next::TimedOut),
    ] {
        assert_eq!(
            next(pending, Duration::from_secs(waited), timeout),
            expected,
            "{pending} pending after {waited}s"
        );
    }
}

#[test]
fn time_gated_counts_from_creation() {
    let pod = gated(json!({}));
    let created = 1_767_225_600_000; // 2026-01-01T00:00:00Z
    assert_eq!(gated_for(&pod, created + 2500), Duration::from_millis(2500));
    assert_eq!(gated_for(&pod, created - 5), Duration::ZERO, "clock behind");
}

#[test]
fn the_release_patch_touches_only_what_archway_changes() {
    let old = gated(json!({"tolerations": [{"key": "team", "operator": "Exists"}]}));
    let how = Release::Place(&injection(&["amd64"], None));
    let patch = release_patch(&old, &how, &tolerations()).unwrap();
    // The pod as a newer API server holds it: a field these types lack.
    let mut stored = serde_json::to_value(&old).unwrap();
    stored["spec"]["futureField"] = json!({"kept": true});
    json_patch::patch(&mut stored, &patch).unwrap();
    assert_eq!(stored["spec"]["futureField"], json!({"kept": true}));
    stored["spec"]
        .as_object_mut()
        .unwrap()
        .remove("futureField");
    let expected = serde_json::to_value(release(&old, &how, &tolerations()).unwrap()).unwrap();
    assert_eq!(stored, expected);
    // It starts by pinning the resourceVersion read.
    let first = serde_json::to_value(&patch.0[0]).unwrap();
    assert_eq!(
        first,
        json!({"op": "replace", "path": "/metadata/resourceVersion", "value": "7"})
    );
}

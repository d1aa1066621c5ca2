//! Reinvocation end to end without I/O: archway's first pass, its patch
//! applied, a later webhook's change, archway's second pass and its patch.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde_json::{Value, json};

use crate::decision::placement::*;
use crate::decision::platform::Platform;
use crate::decision::policy::{Mode, NamespacePolicy, Placement, Rollout, RolloutBy};

fn policy(mode: Mode, rollout: u8, placement: Placement) -> NamespacePolicy {
    NamespacePolicy {
        mode,
        rollout: Rollout::new(rollout).unwrap(),
        rollout_by: RolloutBy::Pod,
        placement,
        cold: None,
        guard: Default::default(),
        ramp: None,
        problems: Vec::new(),
    }
}

/// What each image publishes, by image name; `None`: not inspectable.
fn registry(image: &str) -> ImageLookup {
    let platforms = |archs: &[&str]| {
        ImageLookup::Found(
            archs
                .iter()
                .map(|a| Platform::linux(a))
                .collect::<BTreeSet<_>>()
                .into(),
        )
    };
    match image {
        "app:multi" => platforms(&["amd64", "arm64"]),
        "app:arm" => platforms(&["arm64"]),
        "sidecar:amd64" => platforms(&["amd64"]),
        "sidecar:multi" => platforms(&["amd64", "arm64"]),
        "sidecar:s390x" => platforms(&["s390x"]),
        _ => ImageLookup::Failed(format!("{image}: registry unreachable")),
    }
}

fn decide_for(pod: &Value, policy: &NamespacePolicy, fail_closed: bool) -> Decision {
    let pod: Pod = serde_json::from_value(pod.clone()).unwrap();
    let lookups: Vec<_> = container_images(&pod)
        .into_iter()
        .map(|c| {
            let lookup = registry(&c.image);
            (c, lookup)
        })
        .collect();
    decide(&DecisionInput {
        pod: &pod,
        policy,
        lookups: &lookups,
        settings: &DecisionSettings {
            target_architecture: "arm64".into(),
            fail_closed,
            tolerations: tolerations(),
        },
        request_uid: "uid-1",
        draw: None,
        nodes: None,
        hold: None,
    })
}

fn tolerations() -> BTreeMap<String, Vec<Toleration>> {
    ["amd64", "arm64"]
        .into_iter()
        .map(|arch| {
            let toleration = serde_json::from_value(json!({"key": "kubernetes.io/arch",
                "operator": "Equal", "value": arch, "effect": "NoSchedule"}))
            .unwrap();
            (arch.to_string(), vec![toleration])
        })
        .collect()
}

/// `pod` with `decision`'s patch applied (unchanged when it has none).
fn applied(pod: &Value, decision: &Decision) -> Value {
    let Outcome::Inject(injection) = &decision.outcome else {
        return pod.clone();
    };
    let typed: Pod = serde_json::from_value(pod.clone()).unwrap();
    let patch = crate::decision::patch::build(&typed, injection, &tolerations());
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    // The API server reads the patched pod back: it must stay a valid Pod.
    serde_json::from_value::<Pod>(patched.clone()).expect("a valid pod");
    patched
}

/// What a sidecar injector does after archway.
fn with_sidecar(pod: &Value, image: &str) -> Value {
    let mut pod = pod.clone();
    (pod["spec"]["containers"].as_array_mut().unwrap())
        .push(json!({"name": "sidecar", "image": image}));
    pod
}

fn app(image: &str) -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": image}]}
    })
}

fn required_terms(pod: &Value) -> Value {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"]
        .clone()
}

fn arch_values(pod: &Value) -> Vec<Vec<String>> {
    let terms = required_terms(pod);
    let terms = terms.as_array().cloned().unwrap_or_default();
    terms
        .iter()
        .map(|t| {
            let expressions = t["matchExpressions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            expressions
                .iter()
                .filter(|e| e["key"] == ARCH_LABEL)
                .flat_map(|e| e["values"].as_array().cloned().unwrap_or_default())
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

fn toleration_values(pod: &Value) -> BTreeSet<String> {
    let tolerations = pod["spec"]["tolerations"].as_array().cloned();
    (tolerations.unwrap_or_default().iter())
        .map(|t| t["value"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn a_sidecar_that_runs_where_archway_placed_changes_nothing() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let first = applied(
        &app("app:multi"),
        &decide_for(&app("app:multi"), &enforce, false),
    );
    assert_eq!(arch_values(&first), [["arm64"]]);
    let again = decide_for(&with_sidecar(&first, "sidecar:multi"), &enforce, false);
    assert_eq!(again.kind, DecisionKind::AlreadyDecided);
    assert_eq!(again.outcome, Outcome::Unchanged);
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    assert_eq!(
        again.supported,
        Some(["amd64", "arm64"].map(String::from).into())
    );
}

#[test]
fn an_amd64_only_sidecar_moves_a_steered_pod_to_amd64() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let first = applied(
        &app("app:multi"),
        &decide_for(&app("app:multi"), &enforce, false),
    );
    let injected = with_sidecar(&first, "sidecar:amd64");
    let again = decide_for(&injected, &enforce, false);
    assert_eq!(again.kind, DecisionKind::Corrected, "{}", again.reason);
    let second = applied(&injected, &again);
    // Replaced, not stacked: one expression, the architecture the sidecar
    // runs on.
    assert_eq!(arch_values(&second), [["amd64"]]);
    assert!(toleration_values(&second).contains("amd64"));
    let annotations = &second["metadata"]["annotations"];
    let decision = annotations[DECISION_ANNOTATION].as_str().unwrap();
    assert!(
        decision.starts_with("amd64: corrected after reinvocation, sidecar (sidecar:amd64) has no arm64; was arm64: rollout 100%"),
        "{decision}"
    );
    assert_eq!(annotations[ARCHS_ANNOTATION], "amd64");
    // The guard's label follows: the pod no longer runs on the target.
    assert_eq!(first["metadata"]["labels"][ARCH_POD_LABEL], "arm64");
    assert_eq!(second["metadata"]["labels"][ARCH_POD_LABEL], "amd64");
    let warning = again.warnings.join("\n");
    assert!(warning.contains("do not run on arm64"), "{warning}");
    assert!(
        warning.contains("now requires amd64 (was arm64)"),
        "{warning}"
    );
    // A third call (another webhook changed the pod again) is a no-op.
    let third = decide_for(&second, &enforce, false);
    assert_eq!(third.kind, DecisionKind::AlreadyDecided);
}

#[test]
fn a_sidecar_narrows_a_pod_that_could_go_either_way() {
    // Placement preferred: required In [amd64, arm64], a preference on
    // top. A sidecar with amd64 only narrows the requirement to amd64.
    let pod = app("app:multi");
    let either = policy(Mode::Enforce, 50, Placement::Preferred);
    let first = applied(&pod, &decide_for(&pod, &either, false));
    assert_eq!(arch_values(&first), [["amd64", "arm64"]]);
    let injected = with_sidecar(&first, "sidecar:amd64");
    let again = decide_for(&injected, &either, false);
    assert_eq!(again.kind, DecisionKind::Corrected);
    let second = applied(&injected, &again);
    assert_eq!(arch_values(&second), [["amd64"]]);
}

#[test]
fn the_users_expressions_and_terms_are_kept() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let mut pod = app("app:multi");
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
    {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}],
         "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
    ]}}});
    let first = applied(&pod, &decide_for(&pod, &enforce, false));
    assert_eq!(arch_values(&first), [["arm64"], ["arm64"]]);
    let injected = with_sidecar(&first, "sidecar:amd64");
    let second = applied(&injected, &decide_for(&injected, &enforce, false));
    assert_eq!(
        required_terms(&second),
        json!([
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]},
                {"key": ARCH_LABEL, "operator": "In", "values": ["amd64"]}]},
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]},
                {"key": ARCH_LABEL, "operator": "In", "values": ["amd64"]}],
             "matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}
        ])
    );
}

#[test]
fn no_common_architecture_left_removes_archways_requirement() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let pod = app("app:arm");
    let first = applied(&pod, &decide_for(&pod, &enforce, false));
    assert_eq!(arch_values(&first), [["arm64"]]);
    let injected = with_sidecar(&first, "sidecar:amd64");
    let again = decide_for(&injected, &enforce, false);
    assert_eq!(again.kind, DecisionKind::Corrected);
    let second = applied(&injected, &again);
    // archway made the whole requirement: it goes, rather than leave an
    // empty term that matches no node.
    let node_affinity = &second["spec"]["affinity"]["nodeAffinity"];
    assert!(
        node_affinity
            .get("requiredDuringSchedulingIgnoredDuringExecution")
            .is_none(),
        "{second:#}"
    );
    let warning = again.warnings.join("\n");
    assert!(
        warning.contains("no common Linux architecture"),
        "{warning}"
    );
    assert!(warning.contains("removed its kubernetes.io/arch requirement (arm64)"));
    let decision = &second["metadata"]["annotations"][DECISION_ANNOTATION];
    assert!(
        decision
            .as_str()
            .unwrap()
            .starts_with("none: removed after reinvocation")
    );
    // Called once more: nothing of archway's left to check.
    assert_eq!(
        decide_for(&second, &enforce, false).kind,
        DecisionKind::AlreadyDecided
    );

    // The user's own term stays when archway's expression leaves it.
    let mut pod = app("app:arm");
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]}}});
    let first = applied(&pod, &decide_for(&pod, &enforce, false));
    let injected = with_sidecar(&first, "sidecar:amd64");
    let second = applied(&injected, &decide_for(&injected, &enforce, false));
    assert_eq!(
        required_terms(&second),
        json!([{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}])
    );
}

#[test]
fn fail_closed_denies_what_no_node_could_run() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let pod = app("app:arm");
    let first = applied(&pod, &decide_for(&pod, &enforce, true));
    let again = decide_for(&with_sidecar(&first, "sidecar:s390x"), &enforce, true);
    assert_eq!(again.outcome, Outcome::Deny);
    assert_eq!(again.kind, DecisionKind::NoCommonArchitecture);
}

#[test]
fn a_sidecar_that_cannot_be_inspected_is_said_and_the_pod_kept() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let pod = app("app:multi");
    let first = applied(&pod, &decide_for(&pod, &enforce, false));
    let again = decide_for(&with_sidecar(&first, "sidecar:gone"), &enforce, false);
    assert_eq!(
        (again.kind, &again.outcome),
        (DecisionKind::InspectionFailed, &Outcome::Unchanged)
    );
    let warnings = again.warnings.join("\n");
    assert!(
        warnings.contains("could not all be checked again"),
        "{warnings}"
    );
    assert!(
        warnings.contains("sidecar:gone: registry unreachable"),
        "{warnings}"
    );
    let closed = decide_for(&with_sidecar(&first, "sidecar:gone"), &enforce, true);
    assert_eq!(closed.outcome, Outcome::Deny);
}

#[test]
fn arch_constraints_of_another_shape_are_left_alone() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let annotated = |spec_extra: Value| {
        let mut pod = with_sidecar(&app("app:multi"), "sidecar:amd64");
        pod["metadata"]["annotations"] = json!({DECISION_ANNOTATION: "arm64: rollout 100%"});
        for (key, value) in spec_extra.as_object().unwrap() {
            pod["spec"][key] = value.clone();
        }
        pod
    };
    let term = |expressions: Value| {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": expressions}}}})
    };
    let arch =
        |op: &str, values: &[&str]| json!({"key": ARCH_LABEL, "operator": op, "values": values});
    let cases = [
        // The annotation alone (archway placed nothing, or the author
        // wrote it).
        json!({}),
        // Arch in the nodeSelector: never archway's.
        json!({"nodeSelector": {ARCH_LABEL: "arm64"}}),
        // Terms that disagree, a NotIn, two arch expressions in one term,
        // a term without one.
        term(json!([{"matchExpressions": [arch("In", &["arm64"])]},
                    {"matchExpressions": [arch("In", &["amd64"])]}])),
        term(json!([{"matchExpressions": [arch("NotIn", &["amd64"])]}])),
        term(
            json!([{"matchExpressions": [arch("In", &["arm64"]), arch("In", &["arm64", "amd64"])]}]),
        ),
        term(json!([{"matchExpressions": [arch("In", &["arm64"])]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}])),
    ];
    for case in cases {
        let decision = decide_for(&annotated(case.clone()), &enforce, false);
        assert_eq!(
            (decision.kind, &decision.outcome),
            (DecisionKind::AlreadyDecided, &Outcome::Unchanged),
            "{case}"
        );
    }
}

#[test]
fn what_archway_repeats_of_a_written_annotation_stays_short() {
    let enforce = policy(Mode::Enforce, 100, Placement::Required);
    let pod = app("app:multi");
    let mut first = applied(&pod, &decide_for(&pod, &enforce, false));
    first["metadata"]["annotations"][DECISION_ANNOTATION] = json!("é".repeat(100_000));
    let again = decide_for(&with_sidecar(&first, "sidecar:amd64"), &enforce, false);
    assert_eq!(again.kind, DecisionKind::Corrected);
    assert!(again.reason.chars().count() < 400, "{}", again.reason.len());
}

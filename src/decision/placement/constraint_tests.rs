//! The decision for pods whose own constraints tie them to nodes or to
//! other pods: pinned pods, pool selectors, taints, pod (anti-)affinity
//! and topology spread. The rule throughout: archway never turns a pod the
//! scheduler could bind into one it cannot.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use super::*;
use crate::decision::platform::Platform;
use crate::decision::policy::Rollout;

fn policy(rollout: u8) -> NamespacePolicy {
    NamespacePolicy {
        mode: Mode::Enforce,
        rollout: Rollout::new(rollout).unwrap(),
        rollout_by: RolloutBy::Pod,
        placement: Placement::Required,
        cold: None,
        guard: Default::default(),
        ramp: None,
        problems: Vec::new(),
    }
}

fn found(archs: &[&str]) -> ImageLookup {
    ImageLookup::Found(
        (archs.iter().map(|a| Platform::linux(a)))
            .collect::<BTreeSet<_>>()
            .into(),
    )
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Three amd64 nodes (pool x86) and three arm64 nodes (pool arm) tainted
/// `kubernetes.io/arch=arm64:NoSchedule`, as in the tests' control plane.
fn cluster() -> Nodes {
    let mut nodes = BTreeMap::new();
    for i in 0..3 {
        for (arch, pool) in [("amd64", "x86"), ("arm64", "arm")] {
            let name = format!("{arch}-{i}");
            let taints = match arch {
                "arm64" => vec![NodeTaint {
                    key: ARCH_LABEL.into(),
                    value: "arm64".into(),
                    effect: "NoSchedule".into(),
                }],
                _ => vec![],
            };
            let node = NodeArch {
                architecture: arch.into(),
                hostname: Some(name.clone()),
                labels: BTreeMap::from([("agentpool".to_string(), pool.to_string())]),
                taints,
            };
            nodes.insert(name, node);
        }
    }
    Nodes::new(&nodes)
}

/// A pod of one container `app` running `image`, with `extra` merged into
/// its spec and `meta` into its metadata.
fn pod(spec: Value, meta: Value) -> Pod {
    let mut value = json!({
        "metadata": {"generateName": "web-", "namespace": "shop"},
        "spec": {"containers": [{"name": "app", "image": "r/app:1"}]}
    });
    for (k, v) in spec.as_object().unwrap() {
        value["spec"][k] = v.clone();
    }
    for (k, v) in meta.as_object().unwrap() {
        value["metadata"][k] = v.clone();
    }
    serde_json::from_value(value).unwrap()
}

fn daemon_set_pod(node: &str) -> Pod {
    pod(
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [
                {"key": "metadata.name", "operator": "In", "values": [node]}]}]}}},
            "tolerations": [{"key": "kubernetes.io/arch", "operator": "Exists"}]}),
        json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
            "name": "fluent-bit", "uid": "u", "controller": true}]}),
    )
}

struct Case<'a> {
    pod: &'a Pod,
    rollout: u8,
    images: &'a [&'a str],
    fail_closed: bool,
    nodes: Option<&'a Nodes>,
    draw: Option<u64>,
}

fn decide_case(case: Case<'_>) -> Decision {
    let lookups: Vec<_> = container_images(case.pod)
        .into_iter()
        .map(|c| (c, found(case.images)))
        .collect();
    decide(&DecisionInput {
        pod: case.pod,
        policy: &policy(case.rollout),
        lookups: &lookups,
        settings: &DecisionSettings {
            target_architecture: "arm64".into(),
            fail_closed: case.fail_closed,
            tolerations: crate::decision::placement::default_tolerations(),
        },
        request_uid: "uid-1",
        draw: case.draw,
        nodes: case.nodes,
        hold: None,
    })
}

fn decide_on_cluster(pod: &Pod, rollout: u8, images: &[&str]) -> Decision {
    let nodes = cluster();
    decide_case(Case {
        pod,
        rollout,
        images,
        fail_closed: false,
        nodes: Some(&nodes),
        draw: None,
    })
}

fn injection(decision: &Decision) -> &Injection {
    match &decision.outcome {
        Outcome::Inject(injection) => injection,
        other => panic!("expected an injection, got {other:?} ({})", decision.reason),
    }
}

#[test]
fn a_daemon_set_pod_is_never_steered_and_gets_its_node_s_tolerations() {
    for rollout in [0, 50, 100] {
        for (node, arch) in [("arm64-1", "arm64"), ("amd64-2", "amd64")] {
            let d = decide_on_cluster(&daemon_set_pod(node), rollout, &["amd64", "arm64"]);
            assert_eq!(d.kind, DecisionKind::Pinned, "{node} at {rollout}");
            let i = injection(&d);
            assert_eq!(i.requirement, Requirement::LeaveToPin);
            assert_eq!((&i.required, &i.tolerate), (&set(&[arch]), &set(&[arch])));
            assert!(i.labels.is_empty(), "a pinned pod is not the guard's");
            assert_eq!(
                d.reason,
                format!("pinned to node {node} ({arch}) by its DaemonSet; not steered")
            );
            assert!(d.warnings.is_empty());
            // The patch adds no expression the pin could contradict.
            let patch = crate::decision::patch::build(
                &daemon_set_pod(node),
                i,
                &crate::decision::placement::default_tolerations(),
            );
            let text = serde_json::to_string(&patch).unwrap();
            assert!(!text.contains("nodeAffinity"), "{text}");
        }
    }
}

#[test]
fn a_daemon_set_pod_on_a_node_its_image_cannot_run_on_is_warned_about() {
    let d = decide_on_cluster(&daemon_set_pod("arm64-0"), 0, &["amd64"]);
    assert_eq!(
        (d.kind, &d.outcome),
        (DecisionKind::Unrunnable, &Outcome::Unchanged)
    );
    assert_eq!(d.unrunnable_on, set(&["arm64"]));
    assert_eq!(
        d.warnings,
        [
            "the pod is pinned to node arm64-0 (arm64) by its DaemonSet, but app (r/app:1) has no arm64: it would fail there with exec format error"
        ]
    );
    let nodes = cluster();
    let denied = decide_case(Case {
        pod: &daemon_set_pod("arm64-0"),
        rollout: 0,
        images: &["amd64"],
        fail_closed: true,
        nodes: Some(&nodes),
        draw: None,
    });
    assert_eq!(denied.outcome, Outcome::Deny);
    // On its own architecture's node, the same DaemonSet is fine.
    let d = decide_on_cluster(&daemon_set_pod("amd64-0"), 0, &["amd64"]);
    assert_eq!(d.kind, DecisionKind::Pinned);
}

#[test]
fn every_way_of_pinning_is_respected() {
    let by_hostname_affinity = pod(
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": ["amd64-0"]}]}]}}}}),
        json!({}),
    );
    let cases = [
        (pod(json!({"nodeName": "amd64-1"}), json!({})), "amd64"),
        (
            pod(
                json!({"nodeSelector": {"kubernetes.io/hostname": "amd64-2"}}),
                json!({}),
            ),
            "amd64",
        ),
        (by_hostname_affinity, "amd64"),
        (
            pod(
                json!({"nodeSelector": {"kubernetes.io/hostname": "arm64-2"}}),
                json!({}),
            ),
            "arm64",
        ),
    ];
    for (pod, arch) in cases {
        let d = decide_on_cluster(&pod, 100, &["amd64", "arm64"]);
        assert_eq!(d.kind, DecisionKind::Pinned, "{:?}", pod.spec);
        let i = injection(&d);
        assert_eq!(i.requirement, Requirement::LeaveToPin);
        assert_eq!(i.tolerate, set(&[arch]));
    }
    // A node archway does not know yet (it just joined): nothing added.
    let d = decide_on_cluster(&daemon_set_pod("arm64-9"), 100, &["amd64", "arm64"]);
    assert_eq!(d.kind, DecisionKind::Pinned);
    assert!(injection(&d).tolerate.is_empty());
    assert_eq!(
        d.reason,
        "pinned to node arm64-9 by its DaemonSet (architecture not known to archway); not steered"
    );
    // Without a cluster (archway review), the pin is still respected.
    let d = decide_case(Case {
        pod: &daemon_set_pod("arm64-0"),
        rollout: 100,
        images: &["amd64", "arm64"],
        fail_closed: false,
        nodes: None,
        draw: None,
    });
    assert_eq!(injection(&d).requirement, Requirement::LeaveToPin);
}

#[test]
fn a_pinned_pod_takes_no_rollout_draw() {
    let ds = daemon_set_pod("arm64-0");
    assert_eq!(spread_owner(&ds, RolloutBy::Pod), None);
    let rs = pod(
        json!({}),
        json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": "web-5d8", "uid": "u", "controller": true}]}),
    );
    assert_eq!(
        spread_owner(&rs, RolloutBy::Pod).as_deref(),
        Some("shop/ReplicaSet/web-5d8")
    );
}

#[test]
fn a_pool_selector_keeps_the_pod_in_its_pool() {
    // AKS's agentpool: the pool is amd64, so the rollout cannot move it.
    let in_x86 = pod(json!({"nodeSelector": {"agentpool": "x86"}}), json!({}));
    let d = decide_on_cluster(&in_x86, 100, &["amd64", "arm64"]);
    assert_eq!(
        (d.kind, &injection(&d).required),
        (DecisionKind::OnlyOption, &set(&["amd64"]))
    );
    assert_eq!(
        d.reason,
        "amd64: the only architecture of its images' (amd64,arm64) that its node selectors and tolerations allow"
    );
    // In the arm pool, it goes there at any rollout.
    let in_arm = pod(json!({"nodeSelector": {"agentpool": "arm"}}), json!({}));
    let d = decide_on_cluster(&in_arm, 0, &["amd64", "arm64"]);
    assert_eq!(injection(&d).required, set(&["arm64"]));
    // A pool whose architecture its images do not run: warned about,
    // never sent elsewhere.
    let d = decide_on_cluster(&in_x86, 100, &["arm64"]);
    assert_eq!(
        (d.kind, &d.outcome),
        (DecisionKind::Unrunnable, &Outcome::Unchanged)
    );
    assert_eq!(d.unrunnable_on, set(&["amd64"]));
    assert_eq!(
        d.warnings,
        [
            "the pod's node selector and affinity allow only amd64 nodes, where its images do not run (app (r/app:1) has no amd64): it would fail there with exec format error"
        ]
    );
    // A selector that matches no node: the pod waits with or without
    // archway, and archway's choice stands.
    let nowhere = pod(json!({"nodeSelector": {"agentpool": "gpu"}}), json!({}));
    let d = decide_on_cluster(&nowhere, 100, &["amd64", "arm64"]);
    assert_eq!(injection(&d).required, set(&["arm64"]));
}

#[test]
fn a_taint_archway_does_not_tolerate_keeps_the_rollout_off_that_pool() {
    let mut nodes = BTreeMap::new();
    for (name, arch, taints) in [
        ("amd64-0", "amd64", vec![]),
        (
            "arm64-0",
            "arm64",
            vec![("kubernetes.io/arch", "arm64"), ("sku", "arm")],
        ),
    ] {
        let taints = (taints.into_iter())
            .map(|(k, v)| NodeTaint {
                key: k.into(),
                value: v.into(),
                effect: "NoSchedule".into(),
            })
            .collect();
        let node = NodeArch {
            architecture: arch.into(),
            hostname: None,
            labels: BTreeMap::new(),
            taints,
        };
        nodes.insert(name.to_string(), node);
    }
    let nodes = Nodes::new(&nodes);
    let plain = pod(json!({}), json!({"name": "web-1"}));
    let d = decide_case(Case {
        pod: &plain,
        rollout: 100,
        images: &["amd64", "arm64"],
        fail_closed: false,
        nodes: Some(&nodes),
        draw: None,
    });
    assert_eq!(injection(&d).required, set(&["amd64"]));
    assert_eq!(
        d.warnings,
        [
            "arm64 nodes carry the taint sku=arm:NoSchedule, which neither the pod nor archway's tolerations for arm64 (configuration `tolerations`) tolerate: archway does not place the pod there"
        ]
    );
    // The pod's own toleration lets the rollout in.
    let tolerant = pod(
        json!({"tolerations": [{"key": "sku", "operator": "Exists"}]}),
        json!({"name": "web-1"}),
    );
    let d = decide_case(Case {
        pod: &tolerant,
        rollout: 100,
        images: &["amd64", "arm64"],
        fail_closed: false,
        nodes: Some(&nodes),
        draw: None,
    });
    assert_eq!(
        (injection(&d).required.clone(), d.warnings.len()),
        (set(&["arm64"]), 0)
    );
}

#[test]
fn pods_placed_relative_to_others_get_the_rollout_as_a_preference() {
    let term = json!([{"topologyKey": "kubernetes.io/hostname",
        "labelSelector": {"matchLabels": {"app": "db"}}}]);
    let cases = [
        (
            json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
            "a required pod affinity",
        ),
        (
            json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
            "a required pod anti-affinity",
        ),
        (
            json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/arch",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
            "a topology spread over kubernetes.io/arch",
        ),
    ];
    for (spec, why) in cases {
        let p = pod(spec, json!({"name": "db-0"}));
        for nodes in [None, Some(cluster())] {
            let d = decide_case(Case {
                pod: &p,
                rollout: 100,
                images: &["amd64", "arm64"],
                fail_closed: false,
                nodes: nodes.as_ref(),
                draw: None,
            });
            let i = injection(&d);
            assert_eq!(d.kind, DecisionKind::Steered);
            assert_eq!(
                (&i.required, &i.preferred, &i.tolerate),
                (
                    &set(&["amd64", "arm64"]),
                    &Some(set(&["arm64"])),
                    &set(&["amd64", "arm64"])
                ),
                "{why}"
            );
            assert!(
                d.reason
                    .ends_with(&format!("(preferred: the pod has {why})")),
                "{}",
                d.reason
            );
        }
    }
    // Kept off a tainted target it could not reach without archway: the
    // requirement takes nothing away, so it stays (rollout 0 moves no pod).
    let p = pod(
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
        json!({"name": "db-0"}),
    );
    let d = decide_on_cluster(&p, 0, &["amd64", "arm64"]);
    assert_eq!(
        (d.kind, &injection(&d).required, &injection(&d).preferred),
        (DecisionKind::Held, &set(&["amd64"]), &None)
    );
    // Untainted arm64 nodes it could reach as it came: kept off them only
    // by preference.
    let untainted = Nodes::of_architectures(["amd64", "arm64"]);
    let d = decide_case(Case {
        pod: &p,
        rollout: 0,
        images: &["amd64", "arm64"],
        fail_closed: false,
        nodes: Some(&untainted),
        draw: None,
    });
    assert_eq!(
        (&injection(&d).required, &injection(&d).preferred),
        (&set(&["amd64", "arm64"]), &Some(set(&["amd64"])))
    );
    // With one architecture to run on, there is nothing to prefer.
    let p = pod(
        json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
        json!({"name": "db-0"}),
    );
    let d = decide_on_cluster(&p, 100, &["amd64"]);
    assert_eq!(
        (&injection(&d).required, &injection(&d).preferred),
        (&set(&["amd64"]), &None)
    );
    // A hostname spread honours node affinity: the requirement is safe.
    let p = pod(
        json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]}),
        json!({"name": "web-0"}),
    );
    let d = decide_on_cluster(&p, 100, &["amd64", "arm64"]);
    assert_eq!(
        (&injection(&d).required, &injection(&d).preferred),
        (&set(&["arm64"]), &None)
    );
}

/// A gated pod is named by the time archway's controller decides; the
/// draw recorded at admission still counts in its workload's sequence.
#[test]
fn a_recorded_draw_counts_in_the_workload_s_sequence_once_the_pod_is_named() {
    let owner = json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "name": "web-5d8", "uid": "u", "controller": true}], "labels": {"pod-template-hash": "5d8"}});
    let mut steered = 0;
    for index in 0..10u64 {
        let mut meta = owner.clone();
        meta["name"] = json!(format!("web-5d8-{index}"));
        let p = pod(json!({}), meta);
        let d = decide_case(Case {
            pod: &p,
            rollout: 50,
            images: &["amd64", "arm64"],
            fail_closed: false,
            nodes: None,
            draw: Some(index),
        });
        assert!(d.reason.ends_with(&format!("draw {index}")), "{}", d.reason);
        let kind = d.kind == DecisionKind::Steered;
        assert_eq!(kind, spread_steered("shop/Deployment/web", index, 50));
        steered += usize::from(kind);
    }
    // Draws 0..10 are five places each way from the owner's phase: ten
    // places in a row, half of them steered.
    assert_eq!(steered, 5);
}

#[test]
fn daemon_sets_are_flagged_where_their_pods_would_fail() {
    let template = |tolerations: Value, selector: Value| {
        pod(
            json!({"tolerations": tolerations, "nodeSelector": selector}),
            json!({"name": "fluent-bit"}),
        )
    };
    let lookups = |pod: &Pod, archs: &[&str]| -> Vec<(ContainerImage, ImageLookup)> {
        container_images(pod)
            .into_iter()
            .map(|c| (c, found(archs)))
            .collect()
    };
    let nodes = cluster();
    let tolerant = template(json!([{"operator": "Exists"}]), json!({}));
    assert_eq!(
        daemon_set_mismatch(&tolerant, &lookups(&tolerant, &["amd64"]), &nodes).as_deref(),
        Some(
            "can run on arm64 nodes, but r/app:1 publishes only linux/amd64: its pods on arm64-0, arm64-1, arm64-2 will fail"
        )
    );
    // Not tolerating the arm64 taint, it never gets a pod there.
    let plain = template(json!([]), json!({}));
    assert_eq!(
        daemon_set_mismatch(&plain, &lookups(&plain, &["amd64"]), &nodes),
        None
    );
    // Kept to amd64 by its selector.
    let kept = template(
        json!([{"operator": "Exists"}]),
        json!({"kubernetes.io/arch": "amd64"}),
    );
    assert_eq!(
        daemon_set_mismatch(&kept, &lookups(&kept, &["amd64"]), &nodes),
        None
    );
    // A multi-arch image runs everywhere it lands.
    assert_eq!(
        daemon_set_mismatch(&tolerant, &lookups(&tolerant, &["amd64", "arm64"]), &nodes),
        None
    );
    // The DaemonSet controller's own tolerations count: a cordoned node
    // still gets its pod.
    let mut cordoned = BTreeMap::new();
    cordoned.insert(
        "arm64-9".to_string(),
        NodeArch {
            architecture: "arm64".into(),
            hostname: None,
            labels: BTreeMap::new(),
            taints: vec![NodeTaint {
                key: "node.kubernetes.io/unschedulable".into(),
                value: String::new(),
                effect: "NoSchedule".into(),
            }],
        },
    );
    let cordoned = Nodes::new(&cordoned);
    assert!(daemon_set_mismatch(&plain, &lookups(&plain, &["amd64"]), &cordoned).is_some());
}

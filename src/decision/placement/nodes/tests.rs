use serde_json::json;

use super::*;

fn node(arch: &str, hostname: Option<&str>, labels: &[(&str, &str)], taints: &[&str]) -> NodeArch {
    NodeArch {
        architecture: arch.into(),
        hostname: hostname.map(str::to_string),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        taints: taints.iter().map(|t| taint(t)).collect(),
    }
}

/// `key=value:Effect` or `key:Effect`.
fn taint(text: &str) -> NodeTaint {
    let (kv, effect) = text.rsplit_once(':').unwrap();
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    NodeTaint {
        key: key.into(),
        value: value.into(),
        effect: effect.into(),
    }
}

fn toleration(value: serde_json::Value) -> Toleration {
    serde_json::from_value(value).unwrap()
}

fn terms(value: serde_json::Value) -> Vec<NodeSelectorTerm> {
    serde_json::from_value(value).unwrap()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Three amd64 nodes in pool `x86`, three arm64 nodes in pool `arm`
/// tainted `kubernetes.io/arch=arm64:NoSchedule`, as the tests' cluster.
fn cluster() -> Nodes {
    let mut nodes = BTreeMap::new();
    for i in 0..3 {
        nodes.insert(
            format!("amd64-{i}"),
            node(
                "amd64",
                Some(&format!("amd64-{i}")),
                &[("agentpool", "x86"), ("zone", &format!("z{i}"))],
                &[],
            ),
        );
        nodes.insert(
            format!("arm64-{i}"),
            node(
                "arm64",
                Some(&format!("arm64-{i}")),
                &[("agentpool", "arm"), ("zone", &format!("z{i}"))],
                &["kubernetes.io/arch=arm64:NoSchedule"],
            ),
        );
    }
    Nodes::new(&nodes)
}

fn arch_toleration(arch: &str) -> Vec<Toleration> {
    vec![toleration(
        json!({"key": "kubernetes.io/arch", "operator": "Equal", "value": arch, "effect": "NoSchedule"}),
    )]
}

fn fit(
    nodes: &Nodes,
    selector: &[(&str, &str)],
    terms: &[NodeSelectorTerm],
    tolerations: &[Toleration],
) -> Fit {
    let amd = arch_toleration("amd64");
    let arm = arch_toleration("arm64");
    let selector = selector
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    nodes.fit(
        &selector,
        terms,
        tolerations,
        &set(&["amd64", "arm64"]),
        |arch| match arch {
            "amd64" => &amd,
            "arm64" => &arm,
            _ => &[],
        },
    )
}

#[test]
fn nodes_are_found_by_name_and_by_hostname() {
    let nodes = Nodes::new(&BTreeMap::from([
        (
            "aks-arm-0".to_string(),
            node("arm64", Some("arm-host-0"), &[], &[]),
        ),
        ("amd-0".to_string(), node("amd64", None, &[], &[])),
    ]));
    assert_eq!(nodes.of_node("aks-arm-0"), Some("arm64"));
    assert_eq!(nodes.of_node("arm-host-0"), None);
    assert_eq!(nodes.of_hostname("arm-host-0"), Some("arm64"));
    // A node without the label is found by its name.
    assert_eq!(nodes.of_hostname("amd-0"), Some("amd64"));
    assert_eq!(nodes.of_hostname("nope"), None);
    assert_eq!(nodes.architectures(), &set(&["amd64", "arm64"]));
    assert_eq!(nodes.len(), 2);
}

#[test]
fn nodes_of_a_pool_share_one_profile() {
    let nodes = cluster();
    // Pool and zone: three zones per architecture.
    assert_eq!(nodes.profiles.len(), 6);
    let one_zone: BTreeMap<String, NodeArch> = (0..100)
        .map(|i| {
            (
                format!("n{i}"),
                node("amd64", Some(&format!("n{i}")), &[("pool", "a")], &[]),
            )
        })
        .collect();
    assert_eq!(Nodes::new(&one_zone).profiles.len(), 1);
}

#[test]
fn a_pod_without_constraints_fits_where_archway_s_tolerations_let_it() {
    let f = fit(&cluster(), &[], &[], &[]);
    assert_eq!(f.architectures, set(&["amd64", "arm64"]));
    assert_eq!(f.selected, set(&["amd64", "arm64"]));
}

#[test]
fn a_taint_archway_does_not_tolerate_keeps_its_architecture_out() {
    let mut nodes = BTreeMap::new();
    nodes.insert("amd64-0".into(), node("amd64", None, &[], &[]));
    nodes.insert(
        "arm64-0".into(),
        node(
            "arm64",
            None,
            &[],
            &["kubernetes.io/arch=arm64:NoSchedule", "sku=arm:NoSchedule"],
        ),
    );
    let nodes = Nodes::new(&nodes);
    let f = fit(&nodes, &[], &[], &[]);
    assert_eq!(f.architectures, set(&["amd64"]));
    assert_eq!(
        f.untolerated.get("arm64").map(String::as_str),
        Some("sku=arm:NoSchedule")
    );
    // The pod's own toleration lets it in.
    let own = [toleration(json!({"key": "sku", "operator": "Exists"}))];
    assert_eq!(
        fit(&nodes, &[], &[], &own).architectures,
        set(&["amd64", "arm64"])
    );
    // PreferNoSchedule keeps no pod off.
    let soft = Nodes::new(&BTreeMap::from([(
        "arm64-0".to_string(),
        node("arm64", None, &[], &["sku=arm:PreferNoSchedule"]),
    )]));
    assert_eq!(fit(&soft, &[], &[], &[]).architectures, set(&["arm64"]));
}

#[test]
fn a_pool_selector_or_affinity_limits_the_architectures() {
    let nodes = cluster();
    let f = fit(&nodes, &[("agentpool", "x86")], &[], &[]);
    assert_eq!(
        (f.architectures, f.selected),
        (set(&["amd64"]), set(&["amd64"]))
    );
    let t = terms(
        json!([{"matchExpressions": [{"key": "agentpool", "operator": "In", "values": ["arm"]}]}]),
    );
    assert_eq!(fit(&nodes, &[], &t, &[]).architectures, set(&["arm64"]));
    // Terms are ORed.
    let t = terms(json!([
        {"matchExpressions": [{"key": "agentpool", "operator": "In", "values": ["arm"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
    ]));
    assert_eq!(
        fit(&nodes, &[], &t, &[]).architectures,
        set(&["amd64", "arm64"])
    );
    // A selector that matches nothing.
    let f = fit(&nodes, &[("agentpool", "gpu")], &[], &[]);
    assert!(f.architectures.is_empty() && f.selected.is_empty());
}

#[test]
fn hostnames_and_node_names_are_matched_node_by_node() {
    let nodes = cluster();
    let f = fit(&nodes, &[("kubernetes.io/hostname", "amd64-1")], &[], &[]);
    assert_eq!(f.architectures, set(&["amd64"]));
    let t = terms(
        json!([{"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["arm64-2"]}]}]),
    );
    assert_eq!(fit(&nodes, &[], &t, &[]).architectures, set(&["arm64"]));
    let t = terms(
        json!([{"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "NotIn",
        "values": ["arm64-0", "arm64-1", "arm64-2"]}]}]),
    );
    assert_eq!(fit(&nodes, &[], &t, &[]).architectures, set(&["amd64"]));
    assert!(terms_name_nodes(&terms(json!([
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["b"]}]}
    ]))));
    assert!(!terms_name_nodes(&terms(json!([
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
    ]))));
    assert!(!terms_name_nodes(&[]));
}

#[test]
fn requirements_follow_the_scheduler_s_operators() {
    let r = |op: &str, values: &[&str]| NodeSelectorRequirement {
        key: "k".into(),
        operator: op.into(),
        values: Some(values.iter().map(|v| v.to_string()).collect()),
    };
    let cases = [
        (r("In", &["a", "b"]), Some("a"), true),
        (r("In", &["a"]), Some("c"), false),
        (r("In", &["a"]), None, false),
        (r("NotIn", &["a"]), Some("a"), false),
        (r("NotIn", &["a"]), Some("b"), true),
        (r("NotIn", &["a"]), None, true),
        (r("Exists", &[]), Some(""), true),
        (r("Exists", &[]), None, false),
        (r("DoesNotExist", &[]), None, true),
        (r("DoesNotExist", &[]), Some("x"), false),
        (r("Gt", &["3"]), Some("4"), true),
        (r("Gt", &["3"]), Some("3"), false),
        (r("Gt", &["3"]), Some("x"), false),
        (r("Lt", &["3"]), Some("2"), true),
        (r("Lt", &["3"]), None, false),
        (r("Whatever", &["a"]), Some("a"), false),
    ];
    for (requirement, value, expected) in cases {
        assert_eq!(
            requirement_holds(&requirement, value),
            expected,
            "{requirement:?} {value:?}"
        );
    }
    // An empty term matches no node.
    let nodes = cluster();
    assert!(
        fit(&nodes, &[], &terms(json!([{}])), &[])
            .architectures
            .is_empty()
    );
}

#[test]
fn tolerations_follow_the_scheduler_s_rule() {
    let t = taint("kubernetes.io/arch=arm64:NoSchedule");
    let cases = [
        (
            json!({"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}),
            true,
        ),
        (json!({"key": "kubernetes.io/arch", "value": "arm64"}), true),
        (
            json!({"key": "kubernetes.io/arch", "operator": "Equal", "value": "amd64"}),
            false,
        ),
        (
            json!({"key": "kubernetes.io/arch", "operator": "Exists"}),
            true,
        ),
        (
            json!({"key": "kubernetes.io/arch", "operator": "Exists", "effect": "NoExecute"}),
            false,
        ),
        (json!({"operator": "Exists"}), true),
        (json!({"operator": "Exists", "effect": "NoSchedule"}), true),
        (json!({"key": "", "operator": "Equal"}), false),
        (json!({"key": "other", "operator": "Exists"}), false),
    ];
    for (toleration_json, expected) in cases {
        assert_eq!(
            tolerates(&toleration(toleration_json.clone()), &t),
            expected,
            "{toleration_json}"
        );
    }
}

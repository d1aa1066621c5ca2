//! What the pod's own scheduling constraints allow archway to do.
//!
//! archway's rule is that it never turns a pod the scheduler could bind
//! into one it cannot. Two kinds of pods need more care than a node
//! selector check (`nodes::Nodes::fit`):
//!
//! - **Pinned pods** name their node: `nodeName`, a `kubernetes.io/hostname`
//!   nodeSelector, required terms that all name nodes (`matchFields
//!   metadata.name In`, as the DaemonSet controller writes, or
//!   `kubernetes.io/hostname In`), or a DaemonSet owner. archway adds no
//!   arch requirement to them: its view of a node can lag (a DaemonSet's
//!   pod for a node that just joined), and an expression ANDed into the
//!   pin could only ever contradict it. It checks the pin instead.
//! - **Pods placed relative to other pods**: a required pod affinity or
//!   anti-affinity, or a topology spread that the arch requirement would
//!   defeat (over `kubernetes.io/arch`, or one that ignores node affinity
//!   when it counts domains). Where those pods may go depends on other
//!   pods, which archway does not watch; a hard arch requirement could
//!   leave one Pending. The rollout's choice becomes a preference, and the
//!   requirement only says where every image runs.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use super::nodes::{HOSTNAME_LABEL, term_named_nodes, terms_name_nodes};
use super::{ARCH_LABEL, BETA_ARCH_LABEL, required_terms};

/// Nodes named in one pod that archway checks; past it, the rest are not
/// looked at (a pod of a million hostnames costs no more than this).
const MAX_NAMED_NODES: usize = 1024;

/// How a pinned pod names its nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin<'a> {
    /// The nodes it may run on: node names, or hostname label values.
    pub nodes: Vec<NamedNode<'a>>,
    /// How, for the decision's reason: `by nodeName`, `by its DaemonSet`.
    pub how: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamedNode<'a> {
    pub name: &'a str,
    /// A `kubernetes.io/hostname` value rather than a node name.
    pub hostname: bool,
}

/// The pod's pin, if it is pinned (see the module comment).
pub fn pin(pod: &Pod) -> Option<Pin<'_>> {
    let spec = pod.spec.as_ref()?;
    fn named(name: &str, hostname: bool) -> NamedNode<'_> {
        NamedNode { name, hostname }
    }
    if let Some(name) = spec.node_name.as_deref().filter(|n| !n.is_empty()) {
        let nodes = vec![named(name, false)];
        return Some(Pin {
            nodes,
            how: "by nodeName",
        });
    }
    let selector = spec.node_selector.as_ref();
    if let Some(host) = selector.and_then(|s| s.get(HOSTNAME_LABEL)) {
        let nodes = vec![named(host, true)];
        return Some(Pin {
            nodes,
            how: "by nodeSelector kubernetes.io/hostname",
        });
    }
    let terms = required_terms(pod);
    let daemon_set = is_daemon_set_pod(pod);
    if terms_name_nodes(terms) {
        let mut nodes = Vec::new();
        for term in terms {
            let by_name = (term.match_fields.iter().flatten())
                .any(|f| f.key == super::nodes::NAME_FIELD && f.operator == "In");
            for name in term_named_nodes(term) {
                if nodes.len() == MAX_NAMED_NODES {
                    break;
                }
                nodes.push(named(name, !by_name));
            }
        }
        let how = if daemon_set {
            "by its DaemonSet"
        } else {
            "by its required node affinity"
        };
        return Some(Pin { nodes, how });
    }
    daemon_set.then_some(Pin {
        nodes: Vec::new(),
        how: "by its DaemonSet",
    })
}

/// The owner reference the DaemonSet controller writes into each pod of
/// the DaemonSet `name`: a template given it is judged as its pods are.
pub fn daemon_set_owner(name: &str) -> OwnerReference {
    OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: name.to_string(),
        controller: Some(true),
        ..OwnerReference::default()
    }
}

/// Whether the DaemonSet controller created the pod: it places each such
/// pod on its node, whatever archway would choose.
fn is_daemon_set_pod(pod: &Pod) -> bool {
    let owners = pod.metadata.owner_references.iter().flatten();
    owners
        .filter(|o| o.controller == Some(true))
        .any(|o| o.kind == "DaemonSet" && o.api_version == "apps/v1")
}

/// Why the rollout's choice must be a preference for this pod, not a
/// requirement; `None` when a requirement cannot strand it.
pub fn relative_to_other_pods(pod: &Pod) -> Option<&'static str> {
    let spec = pod.spec.as_ref()?;
    let affinity = spec.affinity.as_ref();
    let required_pod_affinity = (affinity.and_then(|a| a.pod_affinity.as_ref()))
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|terms| !terms.is_empty());
    if required_pod_affinity {
        return Some("a required pod affinity");
    }
    let required_anti_affinity = (affinity.and_then(|a| a.pod_anti_affinity.as_ref()))
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .is_some_and(|terms| !terms.is_empty());
    if required_anti_affinity {
        return Some("a required pod anti-affinity");
    }
    let hard = (spec.topology_spread_constraints.iter().flatten())
        .filter(|c| c.when_unsatisfiable == "DoNotSchedule");
    for constraint in hard {
        if constraint.topology_key == ARCH_LABEL || constraint.topology_key == BETA_ARCH_LABEL {
            return Some("a topology spread over kubernetes.io/arch");
        }
        // With `Ignore`, every node counts as a domain, those the arch
        // requirement keeps the pod off included: their empty domains
        // would hold the skew at its limit.
        if constraint.node_affinity_policy.as_deref() == Some("Ignore") {
            return Some("a topology spread that ignores node affinity");
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(spec: serde_json::Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c", "image": "app"}]);
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn daemon_set_pod(spec: serde_json::Value) -> Pod {
        let mut pod = pod(spec);
        pod.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": "fluent-bit",
                "uid": "u", "controller": true
            }))
            .unwrap(),
        ]);
        pod
    }

    fn names(pin: Option<Pin<'_>>) -> Option<(Vec<(String, bool)>, &'static str)> {
        pin.map(|p| {
            let nodes = p
                .nodes
                .iter()
                .map(|n| (n.name.to_string(), n.hostname))
                .collect();
            (nodes, p.how)
        })
    }

    fn owned(items: &[(&str, bool)]) -> Vec<(String, bool)> {
        items.iter().map(|(n, h)| (n.to_string(), *h)).collect()
    }

    #[test]
    fn pins_are_read_from_every_way_a_pod_names_its_node() {
        let required = |terms: serde_json::Value| {
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": terms}}}})
        };
        let daemon_term = required(json!([{"matchFields": [
            {"key": "metadata.name", "operator": "In", "values": ["arm64-0"]}]}]));
        type Expected = Option<(Vec<(String, bool)>, &'static str)>;
        let cases: Vec<(Pod, Expected)> = vec![
            (
                pod(json!({"nodeName": "amd64-1"})),
                Some((owned(&[("amd64-1", false)]), "by nodeName")),
            ),
            (
                pod(json!({"nodeSelector": {"kubernetes.io/hostname": "h1", "disk": "ssd"}})),
                Some((
                    owned(&[("h1", true)]),
                    "by nodeSelector kubernetes.io/hostname",
                )),
            ),
            (
                daemon_set_pod(daemon_term.clone()),
                Some((owned(&[("arm64-0", false)]), "by its DaemonSet")),
            ),
            (
                pod(daemon_term),
                Some((
                    owned(&[("arm64-0", false)]),
                    "by its required node affinity",
                )),
            ),
            (
                pod(required(json!([
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a", "b"]}]},
                    {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["c"]}]}
                ]))),
                Some((
                    owned(&[("a", true), ("b", true), ("c", false)]),
                    "by its required node affinity",
                )),
            ),
            // A DaemonSet pod whose terms name no node is still its
            // DaemonSet's to place.
            (
                daemon_set_pod(json!({})),
                Some((vec![], "by its DaemonSet")),
            ),
            // One term that names no node: the pod may go anywhere it
            // allows, so it is not pinned.
            (
                pod(required(json!([
                    {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "In", "values": ["a"]}]},
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}
                ]))),
                None,
            ),
            (
                pod(required(json!([{"matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": ["a"]}]}]))),
                None,
            ),
            (pod(json!({"nodeName": ""})), None),
            (pod(json!({})), None),
        ];
        for (pod, expected) in cases {
            assert_eq!(names(pin(&pod)), expected, "{:?}", pod.spec);
        }
        // A DaemonSet of another API group is not the DaemonSet controller's.
        let mut other = daemon_set_pod(json!({}));
        other.metadata.owner_references.as_mut().unwrap()[0].api_version = "example.com/v1".into();
        assert_eq!(pin(&other), None);
    }

    #[test]
    fn a_pod_with_a_million_named_nodes_is_read_up_to_the_bound() {
        let values: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
        let p = pod(
            json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchFields": [{"key": "metadata.name", "operator": "In", "values": values}]}]}}}}),
        );
        assert_eq!(pin(&p).unwrap().nodes.len(), MAX_NAMED_NODES);
    }

    #[test]
    fn pods_placed_relative_to_others_are_recognised() {
        let term = json!([{"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]);
        let spread = |key: &str, when: &str, policy: Option<&str>| {
            let mut c = json!({"maxSkew": 1, "topologyKey": key, "whenUnsatisfiable": when,
                "labelSelector": {"matchLabels": {"app": "web"}}});
            if let Some(policy) = policy {
                c["nodeAffinityPolicy"] = json!(policy);
            }
            json!({"topologySpreadConstraints": [c]})
        };
        let cases = [
            (
                json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
                Some("a required pod affinity"),
            ),
            (
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": term}}}),
                Some("a required pod anti-affinity"),
            ),
            (
                json!({"affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 1, "podAffinityTerm": term[0]}]}}}),
                None,
            ),
            (
                json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": []}}}),
                None,
            ),
            (
                spread("kubernetes.io/arch", "DoNotSchedule", None),
                Some("a topology spread over kubernetes.io/arch"),
            ),
            (spread("kubernetes.io/arch", "ScheduleAnyway", None), None),
            (
                spread("kubernetes.io/hostname", "DoNotSchedule", None),
                None,
            ),
            (
                spread("kubernetes.io/hostname", "DoNotSchedule", Some("Honor")),
                None,
            ),
            (
                spread(
                    "topology.kubernetes.io/zone",
                    "DoNotSchedule",
                    Some("Ignore"),
                ),
                Some("a topology spread that ignores node affinity"),
            ),
            (json!({}), None),
        ];
        for (spec, expected) in cases {
            assert_eq!(
                relative_to_other_pods(&pod(spec.clone())),
                expected,
                "{spec}"
            );
        }
    }
}

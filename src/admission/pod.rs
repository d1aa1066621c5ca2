//! The pod as archway reads it: only the fields the decision and the patch
//! look at; everything else (env, volumes, probes, resources, managed
//! fields...) is skipped by the JSON reader without being allocated. It
//! becomes a k8s-openapi `Pod` holding just those fields, so `placement`
//! and `patch` work on it unchanged.
//!
//! Every list and map the view keeps is read with a bound on its length
//! (`Bounded`): an element costs the view far more memory than its JSON
//! (`{}` is 3 bytes of body and, as a k8s-openapi `Container`, over a
//! kilobyte), so without one a 3 MiB review of 31,000 empty containers
//! took tens of MB, and a few at once overran the memory limit. A pod past
//! a bound is not read: it is admitted unchanged with the reason, as any
//! pod archway cannot read.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, LocalObjectReference, NodeAffinity, NodeSelector, NodeSelectorRequirement,
    NodeSelectorTerm, Pod, PodAffinity, PodAffinityTerm, PodAntiAffinity, PodOS, PodSchedulingGate,
    PodSpec, PreferredSchedulingTerm, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;

use super::wire::MapOnly;

/// A pod: a JSON object (an array is refused at once, as k8s-openapi
/// refuses it, rather than read as a tuple of fields).
pub struct PodView(MapOnly<PodFields>);

impl<'de> Deserialize<'de> for PodView {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        MapOnly::deserialize(deserializer).map(PodView)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodFields {
    metadata: Option<MetaView>,
    spec: Option<SpecView>,
}

/// Containers (and, apart, init containers) archway reads in one pod. No
/// real pod comes near; Kubernetes itself sets no number.
pub const MAX_CONTAINERS: usize = 256;
/// Entries of any other list or map archway reads (labels, annotations,
/// tolerations, node selector terms, a term's expressions or values...).
pub const MAX_ENTRIES: usize = 1024;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaView {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BoundedMap<Labels>>,
    annotations: Option<BoundedMap<Annotations>>,
    owner_references: Option<Bounded<OwnerReference, OwnerReferences>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    node_name: Option<String>,
    node_selector: Option<BoundedMap<NodeSelectorLabels>>,
    /// The pod's OS, which decides which platforms of its images count.
    os: Option<PodOS>,
    affinity: Option<AffinityView>,
    tolerations: Option<Bounded<Toleration, Tolerations>>,
    image_pull_secrets: Option<Bounded<LocalObjectReference, PullSecrets>>,
    init_containers: Option<Bounded<ContainerView, InitContainers>>,
    #[serde(default)]
    containers: Bounded<ContainerView, Containers>,
    /// Other controllers' gates stay, and archway's own says the pod was
    /// gated already (a reinvocation).
    scheduling_gates: Option<Bounded<PodSchedulingGate, SchedulingGates>>,
    /// A hard spread over the architecture makes the rollout a preference.
    topology_spread_constraints: Option<Bounded<SpreadView, SpreadConstraints>>,
}

/// Pod (anti-)affinity matter only as "required terms are present" (the
/// rollout's choice is then a preference: `placement::constraints`), so of
/// each term only its topology key is kept.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AffinityView {
    node_affinity: Option<NodeAffinityView>,
    pod_affinity: Option<PodAffinityView>,
    pod_anti_affinity: Option<PodAffinityView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodAffinityView {
    required_during_scheduling_ignored_during_execution:
        Option<Bounded<PodAffinityTermView, PodAffinityTerms>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodAffinityTermView {
    #[serde(default)]
    topology_key: String,
}

impl From<PodAffinityTermView> for PodAffinityTerm {
    fn from(t: PodAffinityTermView) -> PodAffinityTerm {
        PodAffinityTerm {
            topology_key: t.topology_key,
            ..Default::default()
        }
    }
}

impl PodAffinityView {
    fn required(self) -> Option<Vec<PodAffinityTerm>> {
        (self.required_during_scheduling_ignored_during_execution).map(Bounded::into_vec)
    }
}

/// A topology spread constraint, without its label selector.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpreadView {
    #[serde(default)]
    max_skew: i32,
    #[serde(default)]
    topology_key: String,
    #[serde(default)]
    when_unsatisfiable: String,
    node_affinity_policy: Option<String>,
}

impl From<SpreadView> for TopologySpreadConstraint {
    fn from(c: SpreadView) -> TopologySpreadConstraint {
        TopologySpreadConstraint {
            max_skew: c.max_skew,
            topology_key: c.topology_key,
            when_unsatisfiable: c.when_unsatisfiable,
            node_affinity_policy: c.node_affinity_policy,
            ..Default::default()
        }
    }
}

/// k8s-openapi's `NodeAffinity`, field for field (the same required
/// fields), with its lists bounded.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeAffinityView {
    required_during_scheduling_ignored_during_execution: Option<NodeSelectorView>,
    preferred_during_scheduling_ignored_during_execution:
        Option<Bounded<PreferredTermView, PreferredTerms>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct NodeSelectorView {
    node_selector_terms: Bounded<TermView, RequiredTerms>,
}

#[derive(Deserialize)]
struct PreferredTermView {
    preference: TermView,
    weight: i32,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct TermView {
    match_expressions: Option<Bounded<RequirementView, Expressions>>,
    match_fields: Option<Bounded<RequirementView, Expressions>>,
}

#[derive(Deserialize)]
struct RequirementView {
    key: String,
    operator: String,
    values: Option<Bounded<String, Values>>,
}

impl From<NodeAffinityView> for NodeAffinity {
    fn from(a: NodeAffinityView) -> NodeAffinity {
        NodeAffinity {
            required_during_scheduling_ignored_during_execution: a
                .required_during_scheduling_ignored_during_execution
                .map(|r| NodeSelector {
                    node_selector_terms: r.node_selector_terms.into_vec(),
                }),
            preferred_during_scheduling_ignored_during_execution: a
                .preferred_during_scheduling_ignored_during_execution
                .map(Bounded::into_vec),
        }
    }
}

impl From<PreferredTermView> for PreferredSchedulingTerm {
    fn from(p: PreferredTermView) -> PreferredSchedulingTerm {
        PreferredSchedulingTerm {
            preference: p.preference.into(),
            weight: p.weight,
        }
    }
}

impl From<TermView> for NodeSelectorTerm {
    fn from(t: TermView) -> NodeSelectorTerm {
        NodeSelectorTerm {
            match_expressions: t.match_expressions.map(Bounded::into_vec),
            match_fields: t.match_fields.map(Bounded::into_vec),
        }
    }
}

impl From<RequirementView> for NodeSelectorRequirement {
    fn from(r: RequirementView) -> NodeSelectorRequirement {
        NodeSelectorRequirement {
            key: r.key,
            operator: r.operator,
            values: r.values.map(|v| v.0),
        }
    }
}

/// How many of one kind of thing the view reads, and its name in the
/// warning a pod past it gets.
trait Bound {
    const MAX: usize;
    const WHAT: &'static str;
}

macro_rules! bounds {
    ($($name:ident: $max:expr, $what:literal;)*) => {$(
        struct $name;
        impl Bound for $name {
            const MAX: usize = $max;
            const WHAT: &'static str = $what;
        }
    )*};
}

bounds! {
    Containers: MAX_CONTAINERS, "containers";
    InitContainers: MAX_CONTAINERS, "init containers";
    Labels: MAX_ENTRIES, "labels";
    Annotations: MAX_ENTRIES, "annotations";
    OwnerReferences: MAX_ENTRIES, "owner references";
    NodeSelectorLabels: MAX_ENTRIES, "node selector labels";
    Tolerations: MAX_ENTRIES, "tolerations";
    PullSecrets: MAX_ENTRIES, "image pull secrets";
    RequiredTerms: MAX_ENTRIES, "required node selector terms";
    PreferredTerms: MAX_ENTRIES, "preferred node selector terms";
    Expressions: MAX_ENTRIES, "expressions in a node selector term";
    Values: MAX_ENTRIES, "values in a node selector expression";
    SchedulingGates: MAX_ENTRIES, "scheduling gates";
    PodAffinityTerms: MAX_ENTRIES, "required pod (anti-)affinity terms";
    SpreadConstraints: MAX_ENTRIES, "topology spread constraints";
}

fn past_bound<B: Bound, E: serde::de::Error>() -> E {
    E::custom(format_args!(
        "the pod has over {max} {what}; archway reads at most {max}",
        max = B::MAX,
        what = B::WHAT
    ))
}

/// A JSON array of at most `B::MAX` elements; a longer one is an error as
/// soon as the element past the bound is seen, before it is kept.
struct Bounded<T, B>(Vec<T>, std::marker::PhantomData<B>);

impl<T, B> Default for Bounded<T, B> {
    fn default() -> Self {
        Bounded(Vec::new(), std::marker::PhantomData)
    }
}

impl<T, B> Bounded<T, B> {
    fn into_vec<U: From<T>>(self) -> Vec<U> {
        self.0.into_iter().map(U::from).collect()
    }
}

impl<'de, T: Deserialize<'de>, B: Bound> Deserialize<'de> for Bounded<T, B> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T, B>(std::marker::PhantomData<(T, B)>);
        impl<'de, T: Deserialize<'de>, B: Bound> serde::de::Visitor<'de> for Visitor<T, B> {
            type Value = Bounded<T, B>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a sequence of at most {} {}", B::MAX, B::WHAT)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
                while let Some(item) = seq.next_element()? {
                    if items.len() == B::MAX {
                        return Err(past_bound::<B, _>());
                    }
                    items.push(item);
                }
                Ok(Bounded(items, std::marker::PhantomData))
            }
        }
        deserializer.deserialize_seq(Visitor::<T, B>(std::marker::PhantomData))
    }
}

/// A JSON object of at most `B::MAX` string values (labels, annotations,
/// a node selector). A repeated key counts once, as the map keeps it once.
struct BoundedMap<B>(BTreeMap<String, String>, std::marker::PhantomData<B>);

impl<'de, B: Bound> Deserialize<'de> for BoundedMap<B> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<B>(std::marker::PhantomData<B>);
        impl<'de, B: Bound> serde::de::Visitor<'de> for Visitor<B> {
            type Value = BoundedMap<B>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a map of at most {} {}", B::MAX, B::WHAT)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut entries = BTreeMap::new();
                while let Some((key, value)) = map.next_entry::<String, String>()? {
                    entries.insert(key, value);
                    if entries.len() > B::MAX {
                        return Err(past_bound::<B, _>());
                    }
                }
                Ok(BoundedMap(entries, std::marker::PhantomData))
            }
        }
        deserializer.deserialize_map(Visitor::<B>(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct ContainerView {
    #[serde(default)]
    name: String,
    image: Option<String>,
}

impl From<ContainerView> for Container {
    fn from(c: ContainerView) -> Container {
        Container {
            name: c.name,
            image: c.image,
            ..Default::default()
        }
    }
}

impl PodView {
    pub fn into_pod(self) -> Pod {
        let PodFields { metadata, spec } = self.0.0;
        let m = metadata.unwrap_or_default();
        Pod {
            metadata: ObjectMeta {
                name: m.name,
                generate_name: m.generate_name,
                namespace: m.namespace,
                labels: m.labels.map(|l| l.0),
                annotations: m.annotations.map(|a| a.0),
                owner_references: m.owner_references.map(|o| o.0),
                ..Default::default()
            },
            spec: spec.map(|s| PodSpec {
                node_name: s.node_name,
                node_selector: s.node_selector.map(|n| n.0),
                os: s.os,
                affinity: s.affinity.map(|a| Affinity {
                    node_affinity: a.node_affinity.map(NodeAffinity::from),
                    pod_affinity: a.pod_affinity.map(|p| PodAffinity {
                        required_during_scheduling_ignored_during_execution: p.required(),
                        ..Default::default()
                    }),
                    pod_anti_affinity: a.pod_anti_affinity.map(|p| PodAntiAffinity {
                        required_during_scheduling_ignored_during_execution: p.required(),
                        ..Default::default()
                    }),
                }),
                scheduling_gates: s.scheduling_gates.map(|g| g.0),
                topology_spread_constraints: s.topology_spread_constraints.map(Bounded::into_vec),
                tolerations: s.tolerations.map(|t| t.0),
                image_pull_secrets: s.image_pull_secrets.map(|i| i.0),
                init_containers: s.init_containers.map(Bounded::into_vec),
                containers: s.containers.into_vec(),
                ..Default::default()
            }),
            status: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::{Value, json};

    use super::*;
    use crate::decision::placement::Injection;

    /// Pods of every shape the patch builder distinguishes, with fields the
    /// view skips (env, volumes, resources, probes, pod affinity) around
    /// the ones it reads.
    fn pods() -> Vec<Value> {
        let container = |name: &str, image: &str| {
            json!({
                "name": name, "image": image,
                "env": [{"name": "A", "value": "1"},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}],
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                "volumeMounts": [{"name": "data", "mountPath": "/data"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}}
            })
        };
        let base = |spec_extra: Value, meta: Value| {
            let mut spec = json!({
                "containers": [container("web", "nginx:1.27"), container("side", "envoy:v1")],
                "volumes": [{"name": "data", "emptyDir": {}}]
            });
            for (k, v) in spec_extra.as_object().unwrap() {
                spec[k] = v.clone();
            }
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec})
        };
        let meta = json!({
            "name": "web-7d4b9c-x2x", "generateName": "web-7d4b9c-", "namespace": "shop",
            "labels": {"app": "web"}, "annotations": {"note": "x"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-7d4b9c", "uid": "u", "controller": true}],
            "managedFields": [{"manager": "kubectl", "operation": "Update"}]
        });
        let required = json!({"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["n1"]}]}
        ]});
        vec![
            base(json!({}), meta.clone()),
            base(json!({}), json!({})),
            json!({"spec": {"containers": [container("web", "nginx")]}}),
            base(
                json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "web"}}}
                ]}}}),
                meta.clone(),
            ),
            base(
                json!({"affinity": {"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": required,
                    "preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 5, "preference": {"matchExpressions": [
                            {"key": "disk", "operator": "In", "values": ["ssd"]}]}}]
                }}}),
                meta.clone(),
            ),
            base(json!({"affinity": {"nodeAffinity": {}}}), meta.clone()),
            base(
                json!({
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "tolerations": [{"key": "kubernetes.io/arch", "operator": "Equal",
                                     "value": "arm64", "effect": "NoSchedule"},
                                    {"operator": "Exists"}],
                    "imagePullSecrets": [{"name": "regcred"}],
                    "initContainers": [container("init", "busybox")],
                    "nodeName": "n1"
                }),
                meta.clone(),
            ),
            base(
                json!({
                    "schedulingGates": [{"name": "example.com/quota"}, {"name": "archway.dev/inspect"}],
                    "affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}},
                    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/arch",
                        "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]
                }),
                meta.clone(),
            ),
            base(
                json!({"os": {"name": "windows"}, "tolerations": [{"key": "os", "operator": "Equal",
                                     "value": "windows", "effect": "NoSchedule"}]}),
                meta,
            ),
        ]
    }

    fn injection() -> Injection {
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        Injection {
            required: set(&["amd64", "arm64"]),
            preferred: Some(set(&["arm64"])),
            os: "linux".into(),
            tolerate: set(&["amd64", "arm64"]),
            labels: BTreeMap::new(),
            annotations: BTreeMap::from([("archway.dev/decision".into(), "x".into())]),
            requirement: crate::decision::placement::Requirement::AddToEveryTerm,
        }
    }

    /// The view is a shortcut, not a second reading: whatever the full
    /// k8s-openapi Pod gives the decision and the patch, the view gives too.
    #[test]
    fn the_view_reads_what_the_decision_and_the_patch_read() {
        let tolerations = crate::decision::placement::default_tolerations();
        for value in pods() {
            let text = value.to_string();
            let full: Pod = serde_json::from_str(&text).unwrap();
            let view = serde_json::from_str::<PodView>(&text).unwrap().into_pod();

            let (fm, vm) = (&full.metadata, &view.metadata);
            assert_eq!(
                (&fm.name, &fm.generate_name, &fm.namespace),
                (&vm.name, &vm.generate_name, &vm.namespace)
            );
            assert_eq!((&fm.labels, &fm.annotations), (&vm.labels, &vm.annotations));
            assert_eq!(fm.owner_references, vm.owner_references);
            let images = |pod: &Pod| {
                let spec = pod.spec.as_ref();
                let list = |cs: Option<&Vec<Container>>| {
                    cs.map(|cs| {
                        cs.iter()
                            .map(|c| (c.name.clone(), c.image.clone()))
                            .collect::<Vec<_>>()
                    })
                };
                (
                    list(spec.map(|s| &s.containers)),
                    list(spec.and_then(|s| s.init_containers.as_ref())),
                    spec.and_then(|s| s.image_pull_secrets.clone()),
                    spec.and_then(|s| s.node_selector.clone()),
                    spec.and_then(|s| s.node_name.clone()),
                )
            };
            assert_eq!(images(&full), images(&view), "{text}");
            let spec = |pod: &Pod| {
                let spec = pod.spec.clone().unwrap_or_default();
                let affinity = spec.affinity.unwrap_or_default();
                let keys = |terms: Option<Vec<PodAffinityTerm>>| {
                    terms.map(|t| t.into_iter().map(|t| t.topology_key).collect::<Vec<_>>())
                };
                (
                    spec.scheduling_gates,
                    keys(
                        affinity
                            .pod_affinity
                            .and_then(|a| a.required_during_scheduling_ignored_during_execution),
                    ),
                    keys(
                        affinity
                            .pod_anti_affinity
                            .and_then(|a| a.required_during_scheduling_ignored_during_execution),
                    ),
                    crate::decision::placement::pin(pod).map(|p| p.how),
                )
            };
            assert_eq!(spec(&full), spec(&view), "{text}");
            assert_eq!(
                crate::decision::placement::pod_os(&full),
                crate::decision::placement::pod_os(&view),
                "{text}"
            );

            let patch_full = crate::decision::patch::build(&full, &injection(), &tolerations);
            let patch_view = crate::decision::patch::build(&view, &injection(), &tolerations);
            assert_eq!(patch_full, patch_view, "{text}");
            // And the patch applies to the JSON the API server sent.
            let mut patched = value.clone();
            json_patch::patch(&mut patched, &patch_view).unwrap();
        }
    }

    /// Each list and map the view keeps is read up to its bound, as
    /// k8s-openapi reads it, and refused past it, wherever it sits.
    #[test]
    fn lists_and_maps_are_read_up_to_their_bound() {
        fn list(n: usize, item: Value) -> Value {
            Value::Array(vec![item; n])
        }
        fn map(n: usize) -> Value {
            Value::Object((0..n).map(|i| (format!("k{i}"), json!(""))).collect())
        }
        fn spec(field: &str, value: Value) -> Value {
            let mut spec = json!({"containers": [{"name": "c", "image": "app"}]});
            spec[field] = value;
            json!({ "spec": spec })
        }
        fn required(terms: Value) -> Value {
            spec(
                "affinity",
                json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}}}),
            )
        }
        fn requirement(values: Value) -> Value {
            json!({"key": "k", "operator": "In", "values": values})
        }
        type Case = (&'static str, usize, Box<dyn Fn(usize) -> Value>);
        let cases: Vec<Case> = vec![
            (
                "containers",
                MAX_CONTAINERS,
                Box::new(|n| spec("containers", list(n, json!({"name": "c"})))),
            ),
            (
                "initContainers",
                MAX_CONTAINERS,
                Box::new(|n| spec("initContainers", list(n, json!({"name": "i"})))),
            ),
            (
                "tolerations",
                MAX_ENTRIES,
                Box::new(|n| spec("tolerations", list(n, json!({})))),
            ),
            (
                "imagePullSecrets",
                MAX_ENTRIES,
                Box::new(|n| spec("imagePullSecrets", list(n, json!({"name": "s"})))),
            ),
            (
                "nodeSelector",
                MAX_ENTRIES,
                Box::new(|n| spec("nodeSelector", map(n))),
            ),
            (
                "labels",
                MAX_ENTRIES,
                Box::new(|n| json!({"metadata": {"labels": map(n)}})),
            ),
            (
                "annotations",
                MAX_ENTRIES,
                Box::new(|n| json!({"metadata": {"annotations": map(n)}})),
            ),
            (
                "ownerReferences",
                MAX_ENTRIES,
                Box::new(|n| {
                    json!({"metadata": {"ownerReferences": list(n,
                json!({"apiVersion": "v1", "kind": "K", "name": "n", "uid": "u"}))}})
                }),
            ),
            (
                "nodeSelectorTerms",
                MAX_ENTRIES,
                Box::new(|n| required(list(n, json!({})))),
            ),
            (
                "preferred",
                MAX_ENTRIES,
                Box::new(|n| {
                    spec(
                        "affinity",
                        json!({"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": list(n, json!({"weight": 1, "preference": {}}))}}),
                    )
                }),
            ),
            (
                "matchExpressions",
                MAX_ENTRIES,
                Box::new(|n| {
                    required(json!([
                {"matchExpressions": list(n, requirement(json!([])))}]))
                }),
            ),
            (
                "matchFields",
                MAX_ENTRIES,
                Box::new(|n| {
                    required(json!([
                {"matchFields": list(n, requirement(json!([])))}]))
                }),
            ),
            (
                "schedulingGates",
                MAX_ENTRIES,
                Box::new(|n| {
                    spec(
                        "schedulingGates",
                        list(n, json!({"name": "example.com/quota"})),
                    )
                }),
            ),
            (
                "topologySpreadConstraints",
                MAX_ENTRIES,
                Box::new(|n| {
                    spec(
                        "topologySpreadConstraints",
                        list(
                            n,
                            json!({"maxSkew": 1, "topologyKey": "kubernetes.io/arch",
                                       "whenUnsatisfiable": "DoNotSchedule"}),
                        ),
                    )
                }),
            ),
            (
                "podAntiAffinity",
                MAX_ENTRIES,
                Box::new(|n| {
                    spec(
                        "affinity",
                        json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
                            list(n, json!({"topologyKey": "kubernetes.io/hostname"}))}}),
                    )
                }),
            ),
            (
                "values",
                MAX_ENTRIES,
                Box::new(|n| {
                    required(json!([
                {"matchExpressions": [requirement(list(n, json!("v")))]}]))
                }),
            ),
        ];
        for (what, bound, pod) in cases {
            let text = pod(bound).to_string();
            let full: Pod = serde_json::from_str(&text).unwrap();
            let view = serde_json::from_str::<PodView>(&text)
                .unwrap_or_else(|e| panic!("{what} at its bound: {e}"))
                .into_pod();
            let json = |pod: &Pod| serde_json::to_value(pod).unwrap();
            assert_eq!(json(&view), json(&full), "{what} at its bound");
            let error = serde_json::from_str::<PodView>(&pod(bound + 1).to_string())
                .err()
                .unwrap_or_else(|| panic!("{what} past its bound was read"));
            assert!(
                error
                    .to_string()
                    .contains(&format!("the pod has over {bound} ")),
                "{what}: {error}"
            );
        }
    }

    /// An array is not a pod, for the view as for k8s-openapi.
    #[test]
    fn an_array_is_not_a_pod() {
        assert!(serde_json::from_str::<Pod>("[]").is_err());
        assert!(serde_json::from_str::<PodView>("[]").is_err());
        assert!(serde_json::from_str::<PodView>(r#"[{"spec": {}}]"#).is_err());
    }
}

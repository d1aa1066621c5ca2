//! The pod as archway reads it: only the fields the decision and the patch
//! look at; everything else (env, volumes, probes, resources, managed
//! fields...) is skipped by the JSON reader without being allocated. It
//! becomes a k8s-openapi `Pod` holding just those fields, so `placement`
//! and `patch` work on it unchanged.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, LocalObjectReference, NodeAffinity, Pod, PodOS, PodSpec, Toleration,
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

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct MetaView {
    name: Option<String>,
    generate_name: Option<String>,
    namespace: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    annotations: Option<BTreeMap<String, String>>,
    owner_references: Option<Vec<OwnerReference>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    node_name: Option<String>,
    node_selector: Option<BTreeMap<String, String>>,
    /// The pod's OS, which decides which platforms of its images count.
    os: Option<PodOS>,
    affinity: Option<AffinityView>,
    tolerations: Option<Vec<Toleration>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
    init_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    containers: Vec<ContainerView>,
}

/// Pod (anti-)affinity only matter as "an affinity is present", which
/// `SpecView::affinity` already says: they are skipped like any other field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AffinityView {
    node_affinity: Option<NodeAffinity>,
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
                labels: m.labels,
                annotations: m.annotations,
                owner_references: m.owner_references,
                ..Default::default()
            },
            spec: spec.map(|s| PodSpec {
                node_name: s.node_name,
                node_selector: s.node_selector,
                os: s.os,
                affinity: s.affinity.map(|a| Affinity {
                    node_affinity: a.node_affinity,
                    ..Default::default()
                }),
                tolerations: s.tolerations,
                image_pull_secrets: s.image_pull_secrets,
                init_containers: s
                    .init_containers
                    .map(|v| v.into_iter().map(Container::from).collect()),
                containers: s.containers.into_iter().map(Container::from).collect(),
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
    use crate::config::Config;
    use crate::placement::Injection;

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
            replace_own: false,
        }
    }

    /// The view is a shortcut, not a second reading: whatever the full
    /// k8s-openapi Pod gives the decision and the patch, the view gives too.
    #[test]
    fn the_view_reads_what_the_decision_and_the_patch_read() {
        let tolerations = Config::default().tolerations;
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
            assert_eq!(
                crate::placement::pod_os(&full),
                crate::placement::pod_os(&view),
                "{text}"
            );

            let patch_full = crate::patch::build(&full, &injection(), &tolerations);
            let patch_view = crate::patch::build(&view, &injection(), &tolerations);
            assert_eq!(patch_full, patch_view, "{text}");
            // And the patch applies to the JSON the API server sent.
            let mut patched = value.clone();
            json_patch::patch(&mut patched, &patch_view).unwrap();
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

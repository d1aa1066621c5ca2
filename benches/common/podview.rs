//! A prototype for the performance report: the pod read with only the
//! fields archway's decision and patch look at, everything else skipped
//! by serde (no env, volumes, probes, resources... allocated), then turned
//! into a k8s-openapi `Pod` holding just those fields, so `placement` and
//! `patch` run unchanged on it. `benches/decision.rs` checks that it gives
//! the same decision and patch as the full `Pod`, and measures both.
#![allow(dead_code)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, LocalObjectReference, NodeAffinity, Pod, PodSpec, Toleration,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Deserialize;
use serde::de::IgnoredAny;

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    #[serde(default)]
    metadata: MetaView,
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
    affinity: Option<AffinityView>,
    tolerations: Option<Vec<Toleration>>,
    image_pull_secrets: Option<Vec<LocalObjectReference>>,
    init_containers: Option<Vec<ContainerView>>,
    #[serde(default)]
    containers: Vec<ContainerView>,
}

/// Pod (anti-)affinity only matter as "affinity is present".
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AffinityView {
    node_affinity: Option<NodeAffinity>,
    #[serde(default)]
    pod_affinity: Option<IgnoredAny>,
    #[serde(default)]
    pod_anti_affinity: Option<IgnoredAny>,
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
        let m = self.metadata;
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
            spec: self.spec.map(|s| PodSpec {
                node_name: s.node_name,
                node_selector: s.node_selector,
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

//! The cluster view, through kube-rs: namespaces' archway labels and
//! annotations, the architectures nodes offer, and pods' pull secrets.
//!
//! Namespaces and nodes are watched (metadata only) into in-memory stores,
//! so a review makes no API call for them; pull secrets are read with one
//! `get` each, when a pod names them, and kept briefly.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use std::borrow::Cow;

use k8s_openapi::api::core::v1::{Namespace, Secret, Taint};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};

use crate::components::Components;
use crate::decision::placement::{NodeArch, Nodes};
use crate::decision::policy::{MODE_LABEL, NamespacePolicy, PolicySource, Rollout};
use crate::lookup::registry::Keyring;

pub mod events;
pub mod lease;
pub mod settings_report;
use crate::cluster::settings_report::SettingsReporter;

/// How long a pull secret's content is reused: short, so a rotated
/// secret is seen soon, long enough that a burst of pods reads it once.
const SECRET_TTL: Duration = Duration::from_secs(30);

/// Which architecture each node of the cluster is: what placement avoids
/// choosing an architecture without nodes by, and checks a pod pinned to
/// nodes against. Not a namespace policy, so not on `PolicySource`, though
/// `ClusterPolicies` answers both.
pub trait NodeInventory: Send + Sync {
    /// The nodes, once known.
    fn nodes(&self) -> Option<Arc<Nodes>>;
}

/// Namespace policies from the namespaces' own labels and annotations, and
/// the node inventory.
#[derive(Clone)]
pub struct ClusterPolicies {
    namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Changes when the configuration is reloaded.
    default_rollout: Arc<std::sync::atomic::AtomicU8>,
    namespaces_synced: Arc<AtomicBool>,
    /// Each node's architecture; `None` until nodes have synced.
    nodes: Arc<RwLock<Option<Arc<Nodes>>>>,
}

impl ClusterPolicies {
    /// Starts watching namespaces and nodes. Returns at once; `is_ready`
    /// tells when both have synced.
    pub fn start(client: kube::Client, default_rollout: Rollout) -> Self {
        Self::start_reporting(client, default_rollout, None, &Components::new())
    }

    /// As `start`, and hands every namespace the watch sees to `settings`,
    /// which tells namespace owners about mistakes in their settings.
    pub fn start_reporting(
        client: kube::Client,
        default_rollout: Rollout,
        settings: Option<SettingsReporter>,
        components: &Components,
    ) -> Self {
        let (namespaces, namespace_writer) = reflector::store();
        let namespaces_synced = Arc::new(AtomicBool::new(false));
        let nodes = Arc::new(RwLock::new(None));

        let namespace_api: Api<PartialObjectMeta<Namespace>> = Api::all(client.clone());
        components.spawn(
            "namespace watch",
            watch_namespaces(namespace_api, namespace_writer, settings),
        );
        let node_api: Api<SlimNode> = Api::all(client);
        components.spawn("node watch", watch_nodes(node_api, nodes.clone()));
        components.spawn(
            "namespace sync mark",
            mark_when_synced(namespaces.clone(), namespaces_synced.clone()),
        );
        ClusterPolicies {
            namespaces,
            default_rollout: Arc::new(std::sync::atomic::AtomicU8::new(default_rollout.percent())),
            namespaces_synced,
            nodes,
        }
    }
}

/// Watches every namespace (metadata only). The settings report sees them
/// all, since a mistake can be anywhere (a mode label spelled `Enforce`, a
/// key spelled `archway.dev/rolout`); the store keeps only namespaces with
/// the mode label, which are the only ones a policy can come from, so it
/// stays small in clusters of thousands of namespaces. The watcher resumes
/// or relists by itself on errors; backoff keeps an unreachable API server
/// from being hammered.
async fn watch_namespaces(
    api: Api<PartialObjectMeta<Namespace>>,
    mut store: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    settings: Option<SettingsReporter>,
) {
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(what = "namespaces", %error, "watch failed; retrying");
                continue;
            }
        };
        if let Some(settings) = &settings {
            settings.observe(&event);
        }
        if let Some(event) = with_mode_label_only(event) {
            store.apply_watcher_event(&event);
        }
    }
}

/// The watch event as the store of namespaces with the mode label sees it:
/// a namespace without the label is not listed, and one that lost it is
/// deleted. Their managed fields are dropped: policy reads only labels and
/// annotations.
fn with_mode_label_only(
    event: watcher::Event<PartialObjectMeta<Namespace>>,
) -> Option<watcher::Event<PartialObjectMeta<Namespace>>> {
    let labelled = |namespace: &PartialObjectMeta<Namespace>| {
        (namespace.metadata.labels.as_ref()).is_some_and(|l| l.contains_key(MODE_LABEL))
    };
    let slim = |mut namespace: PartialObjectMeta<Namespace>| {
        namespace.metadata.managed_fields = None;
        namespace
    };
    match event {
        watcher::Event::InitApply(namespace) if !labelled(&namespace) => None,
        watcher::Event::InitApply(namespace) => Some(watcher::Event::InitApply(slim(namespace))),
        watcher::Event::Apply(namespace) if !labelled(&namespace) => {
            Some(watcher::Event::Delete(namespace))
        }
        watcher::Event::Apply(namespace) => Some(watcher::Event::Apply(slim(namespace))),
        other => Some(other),
    }
}

impl ClusterPolicies {
    /// For a reloaded configuration's `defaultRollout`.
    pub fn set_default_rollout(&self, rollout: Rollout) {
        self.default_rollout
            .store(rollout.percent(), Ordering::Relaxed);
    }
}

/// Keeps each node's architecture, labels and taints. Reviews read a
/// snapshot, published only when one of those changes (or a node comes or
/// goes), instead of scanning every node: node objects change often
/// (heartbeats) and large clusters have thousands.
async fn watch_nodes(api: Api<SlimNode>, published: Arc<RwLock<Option<Arc<Nodes>>>>) {
    let arch_of = |node: &SlimNode| {
        let name = node.metadata.name.clone().unwrap_or_default();
        let taints = node.spec.as_ref().map(|s| s.taints.as_slice());
        let arch = NodeArch::new(node.metadata.labels.as_ref(), taints.unwrap_or_default());
        (name, arch)
    };
    let mut nodes: BTreeMap<String, NodeArch> = BTreeMap::new();
    let mut relisting: BTreeMap<String, NodeArch> = BTreeMap::new();
    let mut synced = false;
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    futures::pin_mut!(stream);
    while let Some(event) = stream.next().await {
        let changed = match event {
            Err(error) => {
                tracing::warn!(what = "nodes", %error, "watch failed; retrying");
                continue;
            }
            Ok(watcher::Event::Init) => {
                relisting.clear();
                false
            }
            Ok(watcher::Event::InitApply(node)) => {
                if let (name, Some(arch)) = arch_of(&node) {
                    relisting.insert(name, arch);
                }
                false
            }
            Ok(watcher::Event::InitDone) => {
                let changed = !synced || nodes != relisting;
                nodes = std::mem::take(&mut relisting);
                synced = true;
                changed
            }
            Ok(watcher::Event::Apply(node)) => match arch_of(&node) {
                (name, Some(arch)) => nodes.insert(name, arch.clone()) != Some(arch),
                (name, None) => nodes.remove(&name).is_some(),
            },
            Ok(watcher::Event::Delete(node)) => nodes.remove(&arch_of(&node).0).is_some(),
        };
        if synced && changed {
            let snapshot = Nodes::new(&nodes);
            tracing::info!(
                architectures = ?snapshot.architectures(),
                nodes = snapshot.len(),
                "node architectures"
            );
            *published.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(snapshot));
        }
    }
}

/// The part of a Node placement reads: its labels (architecture, pool,
/// hostname) and taints. Decoded into this slim type, not `Node`, so a
/// watch of thousands of nodes never keeps their status (images,
/// conditions, addresses).
#[derive(Debug, Clone, serde::Deserialize)]
struct SlimNode {
    metadata: ObjectMeta,
    #[serde(default)]
    spec: Option<SlimNodeSpec>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
struct SlimNodeSpec {
    #[serde(default)]
    taints: Vec<Taint>,
}

impl kube::Resource for SlimNode {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Node".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "nodes".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// Readiness waits for the first complete list of namespaces.
async fn mark_when_synced<K>(store: Store<K>, flag: Arc<AtomicBool>)
where
    K: kube::Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    if store.wait_until_ready().await.is_ok() {
        flag.store(true, Ordering::Release);
        tracing::info!("namespaces synced");
    }
}

impl PolicySource for ClusterPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        let object = self.namespaces.get(&ObjectRef::new(namespace))?;
        let empty = BTreeMap::new();
        let labels = object.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = object.metadata.annotations.as_ref().unwrap_or(&empty);
        let default_rollout =
            Rollout::new(self.default_rollout.load(Ordering::Relaxed)).unwrap_or(Rollout::NONE);
        NamespacePolicy::from_metadata(labels, annotations, default_rollout)
    }

    /// Ready once namespaces have synced and the node inventory is known.
    fn is_ready(&self) -> bool {
        self.namespaces_synced.load(Ordering::Acquire) && self.nodes().is_some()
    }
}

/// A namespace whose policy has a ramp, as the autopilot reads it.
#[derive(Debug, Clone)]
pub struct RampedNamespace {
    pub name: String,
    pub uid: Option<String>,
    pub policy: NamespacePolicy,
    /// `archway.dev/ramp-status`, as it is now.
    pub status: Option<String>,
    /// The namespace as read: a write pinned to it fails if anyone
    /// changed the namespace since (a person, `archway rollback`).
    pub resource_version: Option<String>,
}

impl ClusterPolicies {
    /// The namespaces with a valid ramp, by name.
    pub fn ramped(&self) -> Vec<RampedNamespace> {
        let mut ramped: Vec<RampedNamespace> = (self.namespaces.state().iter())
            .filter_map(|object| {
                let name = object.metadata.name.clone()?;
                let policy = self.policy(&name).filter(|p| p.ramp.is_some())?;
                let status = (object.metadata.annotations.as_ref())
                    .and_then(|a| a.get(crate::decision::ramp::RAMP_STATUS_ANNOTATION))
                    .cloned();
                Some(RampedNamespace {
                    name,
                    uid: object.metadata.uid.clone(),
                    resource_version: object.metadata.resource_version.clone(),
                    policy,
                    status,
                })
            })
            .collect();
        ramped.sort_by(|a, b| a.name.cmp(&b.name));
        ramped
    }
}

impl NodeInventory for ClusterPolicies {
    fn nodes(&self) -> Option<Arc<Nodes>> {
        self.nodes.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads the pull secrets pods name. Never lists or watches secrets: one
/// `get` per secret a pod names, in the pod's own namespace.
#[derive(Clone)]
pub struct PullSecrets {
    client: kube::Client,
    cache: moka::future::Cache<(String, String), Result<Arc<Keyring>, String>>,
}

impl PullSecrets {
    pub fn new(client: kube::Client) -> Self {
        PullSecrets {
            client,
            cache: moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(SECRET_TTL)
                .build(),
        }
    }

    /// The keyring of the named secrets, in order (the first match wins, as
    /// in the kubelet), and a warning for each that could not be used.
    pub async fn keyring(&self, namespace: &str, names: &[String]) -> (Keyring, Vec<String>) {
        let mut keyring = Keyring::default();
        let mut warnings = Vec::new();
        for name in names {
            let key = (namespace.to_string(), name.clone());
            let client = self.client.clone();
            let read = self
                .cache
                .get_with(key, async move {
                    read_secret(client, namespace, name).await.map(Arc::new)
                })
                .await;
            match read {
                Ok(found) => keyring.extend(&found),
                Err(reason) => warnings.push(format!("pull secret {name}: {reason}")),
            }
        }
        (keyring, warnings)
    }
}

async fn read_secret(client: kube::Client, namespace: &str, name: &str) -> Result<Keyring, String> {
    let api: Api<Secret> = Api::namespaced(client, namespace);
    let secret = match api.get_opt(name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => return Err("not found".into()),
        Err(kube::Error::Api(status)) if status.code == 403 => {
            return Err("archway may not read it (forbidden)".into());
        }
        // The error text is the API server's, which never holds secret data.
        Err(error) => return Err(format!("cannot be read: {error}")),
    };
    keyring_from_secret(&secret)
}

/// A `kubernetes.io/dockerconfigjson` or `kubernetes.io/dockercfg` Secret
/// as a keyring.
pub fn keyring_from_secret(secret: &Secret) -> Result<Keyring, String> {
    let key = match secret.type_.as_deref() {
        Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
        Some("kubernetes.io/dockercfg") => ".dockercfg",
        other => return Err(format!("type {other:?} is not a registry credential")),
    };
    let data = secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .ok_or_else(|| format!("has no {key}"))?;
    Keyring::from_docker_config(&data.0).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};

    use super::*;

    fn namespace(name: &str, mode: Option<&str>) -> PartialObjectMeta<Namespace> {
        let labels = mode.map(|m| BTreeMap::from([(MODE_LABEL.to_string(), m.to_string())]));
        PartialObjectMeta {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels,
                managed_fields: Some(vec![ManagedFieldsEntry::default()]),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    /// Every namespace is watched; the store keeps those with the mode
    /// label (any value, as the label selector it replaces did), without
    /// their managed fields.
    #[test]
    fn the_store_keeps_namespaces_with_the_mode_label() {
        let (store, mut writer) = reflector::store();
        let events = [
            watcher::Event::Init,
            watcher::Event::InitApply(namespace("plain", None)),
            watcher::Event::InitApply(namespace("shop", Some("enforce"))),
            watcher::Event::InitApply(namespace("lab", Some("off"))),
            watcher::Event::InitDone,
            watcher::Event::Apply(namespace("plain", Some("audit"))),
            // The label removed: gone from the store.
            watcher::Event::Apply(namespace("lab", None)),
        ];
        for event in events {
            if let Some(event) = with_mode_label_only(event) {
                writer.apply_watcher_event(&event);
            }
        }
        let mut names: Vec<String> = (store.state().iter())
            .map(|n| n.metadata.name.clone().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["plain", "shop"]);
        assert!(
            store
                .state()
                .iter()
                .all(|n| n.metadata.managed_fields.is_none())
        );
    }
}

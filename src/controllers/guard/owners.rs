//! Which workload a pod really belongs to, by uid.
//!
//! A pod author can write any owner reference on a pod: a kind and a name
//! are only words, and the garbage collector never removes a pod whose
//! owner's API group does not exist. So the guard counts a pod towards a
//! workload only when its controller reference resolves, uid by uid,
//! through the objects the cluster holds: pod → ReplicaSet (its uid) →
//! Deployment (its uid), or pod → StatefulSet (its uid). The maps below
//! keep a few words per ReplicaSet, Deployment and StatefulSet, from
//! metadata-only watches, whatever their annotations hold.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

use crate::components::Components;

/// The only API version whose workloads the guard holds.
const APPS_V1: &str = "apps/v1";
/// Objects per page of a relist: metadata only, but annotations can reach
/// 256 KiB per object, so a page is kept small enough to stay a few MiB.
const PAGE_SIZE: u32 = 20;
/// The three watches that must list once before a pod can be resolved.
const WATCHES: usize = 3;

/// (namespace, name) of an object.
type Named = (String, String);

#[derive(Debug, Default)]
struct Maps {
    /// ReplicaSet uid → its namespace, name, and the Deployment that
    /// controls it (name, uid), if one does.
    replica_sets: HashMap<String, (Named, Option<(String, String)>)>,
    /// (namespace, name) → uid, per kind.
    deployments: HashMap<Named, String>,
    stateful_sets: HashMap<Named, String>,
}

/// Owners of the cluster, as the guard resolves them.
#[derive(Clone, Default)]
pub struct Owners {
    maps: Arc<RwLock<Maps>>,
    listed: Arc<AtomicUsize>,
}

impl Owners {
    /// Every watch has listed once.
    pub fn is_synced(&self) -> bool {
        self.listed.load(Ordering::Acquire) >= WATCHES
    }

    /// The workload (kind, name) whose pod this is, resolved by uid, or
    /// `None` when the pod's controller reference does not lead, uid by
    /// uid, to a Deployment, a StatefulSet or a ReplicaSet of no Deployment
    /// in its namespace.
    pub fn workload_of(&self, pod: &ObjectMeta) -> Option<(String, String)> {
        let maps = self.maps.read().unwrap_or_else(|e| e.into_inner());
        resolve(&maps, pod)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Maps> {
        self.maps.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts the three watches; they run until archway stops.
    pub fn start(&self, client: &kube::Client, components: &Components) {
        components.spawn(
            "guard: ReplicaSet watch",
            watch::<ReplicaSet>(client.clone(), self.clone(), Kind::ReplicaSet),
        );
        components.spawn(
            "guard: Deployment watch",
            watch::<Deployment>(client.clone(), self.clone(), Kind::Deployment),
        );
        components.spawn(
            "guard: StatefulSet watch",
            watch::<StatefulSet>(client.clone(), self.clone(), Kind::StatefulSet),
        );
    }
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    (meta.owner_references.iter().flatten()).find(|o| o.controller == Some(true))
}

fn resolve(maps: &Maps, pod: &ObjectMeta) -> Option<(String, String)> {
    let namespace = pod.namespace.as_deref()?;
    let owner = controller(pod)?;
    if owner.api_version != APPS_V1 {
        return None;
    }
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let ((rs_namespace, rs_name), deployment) = maps.replica_sets.get(&owner.uid)?;
            if rs_namespace != namespace || *rs_name != owner.name {
                return None;
            }
            // A ReplicaSet of its own: the guard logs and counts a trip,
            // but a ReplicaSet cannot carry a hold.
            let Some((name, uid)) = deployment else {
                return Some(("ReplicaSet".to_string(), rs_name.clone()));
            };
            let key = (namespace.to_string(), name.clone());
            (maps.deployments.get(&key) == Some(uid))
                .then(|| ("Deployment".to_string(), name.clone()))
        }
        "StatefulSet" => {
            let key = (namespace.to_string(), owner.name.clone());
            (maps.stateful_sets.get(&key) == Some(&owner.uid))
                .then(|| ("StatefulSet".to_string(), owner.name.clone()))
        }
        _ => None,
    }
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    ReplicaSet,
    Deployment,
    StatefulSet,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
        }
    }

    /// Replaces this kind's objects in `maps` with a relist's.
    fn swap_in(self, maps: &mut Maps, relist: &mut Maps) {
        match self {
            Kind::ReplicaSet => maps.replica_sets = std::mem::take(&mut relist.replica_sets),
            Kind::Deployment => maps.deployments = std::mem::take(&mut relist.deployments),
            Kind::StatefulSet => maps.stateful_sets = std::mem::take(&mut relist.stateful_sets),
        }
    }

    fn apply(self, maps: &mut Maps, meta: &ObjectMeta) {
        let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid)
        else {
            return;
        };
        let named = (namespace.clone(), name.clone());
        match self {
            Kind::ReplicaSet => {
                let deployment = controller(meta)
                    .filter(|o| o.api_version == APPS_V1 && o.kind == "Deployment")
                    .map(|o| (o.name.clone(), o.uid.clone()));
                maps.replica_sets.insert(uid.clone(), (named, deployment));
            }
            Kind::Deployment => {
                maps.deployments.insert(named, uid.clone());
            }
            Kind::StatefulSet => {
                maps.stateful_sets.insert(named, uid.clone());
            }
        }
    }

    fn delete(self, maps: &mut Maps, meta: &ObjectMeta) {
        let (Some(namespace), Some(name), Some(uid)) = (&meta.namespace, &meta.name, &meta.uid)
        else {
            return;
        };
        let named = (namespace.clone(), name.clone());
        match self {
            Kind::ReplicaSet => {
                maps.replica_sets.remove(uid);
            }
            Kind::Deployment => {
                if maps.deployments.get(&named) == Some(uid) {
                    maps.deployments.remove(&named);
                }
            }
            Kind::StatefulSet => {
                if maps.stateful_sets.get(&named) == Some(uid) {
                    maps.stateful_sets.remove(&named);
                }
            }
        }
    }
}

async fn watch<K>(client: kube::Client, owners: Owners, kind: Kind)
where
    K: kube::Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static,
{
    // `PartialObjectMeta`: metadata-only requests, no spec is sent.
    let api: Api<PartialObjectMeta<K>> = Api::all(client);
    let config = watcher::Config::default().page_size(PAGE_SIZE);
    let stream = watcher(api, config).default_backoff();
    futures::pin_mut!(stream);
    // A relist is gathered aside and swapped in whole, so a pod is never
    // resolved against a half-listed map.
    let mut relist = Maps::default();
    let mut listed_once = false;
    while let Some(event) = stream.next().await {
        let event: watcher::Event<PartialObjectMeta<K>> = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(what = "guard owners", kind = kind.label(), %error, "watch failed; retrying");
                continue;
            }
        };
        match event {
            watcher::Event::Init => relist = Maps::default(),
            watcher::Event::InitApply(object) => kind.apply(&mut relist, &object.metadata),
            watcher::Event::InitDone => {
                kind.swap_in(&mut owners.write(), &mut relist);
                if !listed_once {
                    listed_once = true;
                    owners.listed.fetch_add(1, Ordering::AcqRel);
                }
            }
            watcher::Event::Apply(object) => kind.apply(&mut owners.write(), &object.metadata),
            watcher::Event::Delete(object) => kind.delete(&mut owners.write(), &object.metadata),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(
        namespace: &str,
        name: &str,
        uid: &str,
        owner: Option<(&str, &str, &str, &str)>,
    ) -> ObjectMeta {
        ObjectMeta {
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            owner_references: owner.map(|(api_version, kind, name, uid)| {
                vec![OwnerReference {
                    api_version: api_version.into(),
                    kind: kind.into(),
                    name: name.into(),
                    uid: uid.into(),
                    controller: Some(true),
                    ..OwnerReference::default()
                }]
            }),
            ..ObjectMeta::default()
        }
    }

    fn cluster() -> Maps {
        let mut maps = Maps::default();
        Kind::Deployment.apply(&mut maps, &meta("shop", "web", "d-1", None));
        Kind::ReplicaSet.apply(
            &mut maps,
            &meta(
                "shop",
                "web-5d9f",
                "rs-1",
                Some(("apps/v1", "Deployment", "web", "d-1")),
            ),
        );
        Kind::StatefulSet.apply(&mut maps, &meta("shop", "db", "s-1", None));
        Kind::ReplicaSet.apply(&mut maps, &meta("shop", "bare-rs", "rs-2", None));
        maps
    }

    fn pod(owner: (&str, &str, &str, &str)) -> ObjectMeta {
        meta("shop", "p", "p-1", Some(owner))
    }

    #[test]
    fn a_pod_counts_for_its_workload_only_when_every_uid_matches() {
        let maps = cluster();
        let web = Some(("Deployment".to_string(), "web".to_string()));
        let db = Some(("StatefulSet".to_string(), "db".to_string()));
        let cases = [
            (
                pod(("apps/v1", "ReplicaSet", "web-5d9f", "rs-1")),
                web.clone(),
            ),
            (pod(("apps/v1", "StatefulSet", "db", "s-1")), db),
            (
                pod(("apps/v1", "ReplicaSet", "bare-rs", "rs-2")),
                Some(("ReplicaSet".to_string(), "bare-rs".to_string())),
            ),
            // Forged: the Deployment named directly, any uid, any group.
            (pod(("apps/v1", "Deployment", "web", "d-1")), None),
            (
                pod(("example.com/v1", "ReplicaSet", "web-5d9f", "rs-1")),
                None,
            ),
            (pod(("apps/v1", "ReplicaSet", "web-5d9f", "made-up")), None),
            (pod(("apps/v1", "ReplicaSet", "other-name", "rs-1")), None),
            (pod(("apps/v1", "StatefulSet", "db", "s-2")), None),
            (pod(("apps/v1", "StatefulSet", "web", "d-1")), None),
        ];
        for (pod, expected) in cases {
            let owner = &pod.owner_references.as_ref().unwrap()[0];
            assert_eq!(resolve(&maps, &pod), expected, "{owner:?}");
        }
        // Another namespace's pod naming this ReplicaSet's uid.
        let elsewhere = meta(
            "evil",
            "p",
            "p-2",
            Some(("apps/v1", "ReplicaSet", "web-5d9f", "rs-1")),
        );
        assert_eq!(resolve(&maps, &elsewhere), None);
        // Not a controller reference.
        let mut plain = pod(("apps/v1", "ReplicaSet", "web-5d9f", "rs-1"));
        plain.owner_references.as_mut().unwrap()[0].controller = None;
        assert_eq!(resolve(&maps, &plain), None);
        assert_eq!(resolve(&maps, &meta("shop", "bare", "b", None)), None);
    }

    #[test]
    fn a_deployment_recreated_under_the_same_name_loses_the_old_replica_sets() {
        let mut maps = cluster();
        Kind::Deployment.delete(&mut maps, &meta("shop", "web", "d-1", None));
        Kind::Deployment.apply(&mut maps, &meta("shop", "web", "d-2", None));
        let old = pod(("apps/v1", "ReplicaSet", "web-5d9f", "rs-1"));
        assert_eq!(resolve(&maps, &old), None);
        // A stale delete of the old object leaves the new one.
        Kind::Deployment.delete(&mut maps, &meta("shop", "web", "d-1", None));
        assert_eq!(
            maps.deployments.get(&("shop".into(), "web".into())),
            Some(&"d-2".into())
        );
    }
}

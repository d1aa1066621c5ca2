//! archway's cluster view through the real kube client against the HTTP
//! stand-in API server, only for what the real control plane cannot show
//! cheaply (tests/controlplane.rs covers the rest): node inventories without
//! an architecture, and readiness held back until the watches have synced.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use archway::admission::Reviewer;
use archway::cluster::{ClusterPolicies, NodeInventory, PullSecrets};
use archway::config::Config;
use archway::decision::policy::PolicySource;
use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::{Value, json};
use support::apiserver::FakeApiServer;
use support::webhook::{apply_patch, install_crypto, pod_review};
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
    let map = |pairs: &[(&str, &str)]| {
        (!pairs.is_empty()).then(|| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        })
    };
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn node(name: &str, arch: &str) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/arch".to_string(), arch.to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

struct Cluster {
    api: FakeApiServer,
    reviewer: Reviewer,
    policies: ClusterPolicies,
}

async fn cluster(insecure: &[String]) -> Cluster {
    install_crypto();
    let api = FakeApiServer::start().await;
    api.put("nodes", &node("amd-1", "amd64"));
    api.put("nodes", &node("arm-1", "arm64"));
    let client = api.client();
    let config = Config::from_yaml(&format!(
        "registry: {{ insecure: {insecure:?} }}\ntimeBudget: 2s"
    ))
    .unwrap();
    let policies = ClusterPolicies::start(client.clone(), config.default_rollout);
    let mut reviewer =
        archway::setup::reviewer(&config, Arc::new(policies.clone()), Arc::default()).unwrap();
    reviewer.node_inventory = Some(Arc::new(policies.clone()));
    reviewer.pull_secrets = Some(PullSecrets::new(client));
    Cluster {
        api,
        reviewer,
        policies,
    }
}

async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition() {
        // A bound on waiting, not a timing claim: on a loaded 2-core
        // machine the stand-in's watch event took over 5 s to arrive.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    started.elapsed()
}

async fn review(reviewer: &Reviewer, namespace: &str, pod: &Value) -> Value {
    let body = serde_json::to_vec(&pod_review("uid", namespace, pod)).unwrap();
    serde_json::to_value(reviewer.review(&body).await.unwrap().0).unwrap()
}

fn pod(image: &str, secrets: &[&str]) -> Value {
    let secrets: Vec<Value> = secrets.iter().map(|s| json!({"name": s})).collect();
    json!({"metadata": {"name": "web"}, "spec": {"imagePullSecrets": secrets,
        "containers": [{"name": "web", "image": image}]}})
}

fn push_multi_arch(registry: &Registry, reference: &str) {
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch().with_salt(reference));
    registry.push(&layout.dir, reference, Format::Oci);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_go_where_there_are_nodes() {
    let registry = Registry::start(RegistryOptions::plain());
    push_multi_arch(&registry, "app:v1");
    let cluster = cluster(&[registry.host()]).await;
    cluster.api.put(
        "namespaces",
        &namespace(
            "shop",
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "100")],
        ),
    );
    // The cluster's only arm64 node leaves.
    cluster.api.delete("nodes", "arm-1");
    wait_until("the node change", || {
        cluster
            .policies
            .nodes()
            .is_some_and(|n| !n.architectures().contains("arm64"))
            && cluster.policies.policy("shop").is_some()
    })
    .await;
    let image = format!("{}/app:v1", registry.host());
    let answer = review(&cluster.reviewer, "shop", &pod(&image, &[])).await;
    let patched = apply_patch(&answer, &pod(&image, &[])).unwrap();
    let terms = &patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchExpressions"][0]["values"], json!(["amd64"]));
    assert_eq!(
        answer["response"]["warnings"][0],
        "archway: no arm64 node in the cluster; placed on amd64 instead"
    );

    // An arm64 node joins: the rollout applies again.
    cluster.api.put("nodes", &node("arm-2", "arm64"));
    wait_until("the new node", || {
        cluster
            .policies
            .nodes()
            .is_some_and(|n| n.architectures().contains("arm64"))
    })
    .await;
    let answer = review(&cluster.reviewer, "shop", &pod(&image, &[])).await;
    let patched = apply_patch(&answer, &pod(&image, &[])).unwrap();
    let terms = &patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(terms[0]["matchExpressions"][0]["values"], json!(["arm64"]));
}

#[tokio::test]
async fn not_ready_until_the_cluster_view_has_synced() {
    install_crypto();
    // An API server that refuses connections: nothing ever syncs.
    let client =
        kube::Client::try_from(kube::Config::new("http://127.0.0.1:1".parse().unwrap())).unwrap();
    let policies = ClusterPolicies::start(client, archway::decision::policy::Rollout::NONE);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!policies.is_ready());
    assert!(policies.nodes().is_none());
}

//! archway's cluster view through the real kube client, against a faithful
//! stand-in API server, with images in a real registry.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use archway::admission::Reviewer;
use archway::cluster::{ClusterPolicies, PullSecrets};
use archway::config::Config;
use archway::policy::PolicySource;
use base64::Engine;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Node, Secret};
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

fn pull_secret(namespace: &str, name: &str, host: &str, user: &str, password: &str) -> Secret {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = json!({"auths": {host: {"auth": auth}}});
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some(BTreeMap::from([(
            ".dockerconfigjson".to_string(),
            ByteString(serde_json::to_vec(&config).unwrap()),
        )])),
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
    let mut reviewer = Reviewer::from_config(&config, Arc::new(policies.clone())).unwrap();
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
        assert!(
            started.elapsed() < Duration::from_secs(5),
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
async fn namespaces_opt_in_and_out_by_label_while_running() {
    let registry = Registry::start(RegistryOptions::plain());
    push_multi_arch(&registry, "app:v1");
    let cluster = cluster(&[registry.host()]).await;
    let image = format!("{}/app:v1", registry.host());
    wait_until("the cluster view to sync", || cluster.policies.is_ready()).await;

    let answer = review(&cluster.reviewer, "shop", &pod(&image, &[])).await;
    assert!(
        answer["response"].get("patch").is_none(),
        "not opted in yet: {answer}"
    );

    cluster.api.put(
        "namespaces",
        &namespace(
            "shop",
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "100")],
        ),
    );
    let took = wait_until("the label to be seen", || {
        cluster.policies.policy("shop").is_some()
    })
    .await;
    eprintln!("namespace labelled -> enforced after {took:?}");
    assert!(took < Duration::from_secs(1), "{took:?}");
    let answer = review(&cluster.reviewer, "shop", &pod(&image, &[])).await;
    let patched = apply_patch(&answer, &pod(&image, &[])).expect("enforced now");
    assert_eq!(
        patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchExpressions"][0]["values"],
        json!(["arm64"])
    );

    // Rollout back to 0: an annotation change is seen too.
    cluster.api.put(
        "namespaces",
        &namespace(
            "shop",
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "0")],
        ),
    );
    wait_until("the rollout change", || {
        cluster
            .policies
            .policy("shop")
            .is_some_and(|p| p.rollout.percent() == 0)
    })
    .await;

    // Removing the label stops mutation: the watch says DELETED.
    cluster.api.put(
        "namespaces",
        &namespace("shop", &[], &[("archway.dev/rollout", "0")]),
    );
    let took = wait_until("the label removal", || {
        cluster.policies.policy("shop").is_none()
    })
    .await;
    eprintln!("label removed -> left alone after {took:?}");
    let answer = review(&cluster.reviewer, "shop", &pod(&image, &[])).await;
    assert!(answer["response"].get("patch").is_none());

    // Only namespaces and nodes are watched, metadata only, and with the
    // mode label selector for namespaces.
    let requests = cluster.api.requests();
    let namespace_lists: Vec<_> = requests
        .iter()
        .filter(|r| r.path == "/api/v1/namespaces")
        .collect();
    assert!(!namespace_lists.is_empty());
    for request in &namespace_lists {
        assert!(
            request.query.contains("labelSelector=archway.dev%2Fmode"),
            "{request:?}"
        );
        assert!(
            request.accept.contains("as=PartialObjectMetadata"),
            "{request:?}"
        );
    }
    assert!(requests.iter().all(|r| r.method == "GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_secrets_are_used_for_their_namespace_only() {
    let registry = Registry::start(RegistryOptions::plain().with_basic_auth("ci", "t0ken"));
    push_multi_arch(&registry, "private/app:v1");
    let host = registry.host();
    let cluster = cluster(std::slice::from_ref(&host)).await;
    for ns in ["team-a", "team-b"] {
        cluster.api.put(
            "namespaces",
            &namespace(
                ns,
                &[("archway.dev/mode", "enforce")],
                &[("archway.dev/rollout", "100")],
            ),
        );
    }
    cluster.api.put(
        "secrets",
        &pull_secret("team-a", "regcred", &host, "ci", "t0ken"),
    );
    cluster.api.put(
        "secrets",
        &pull_secret("team-b", "stale", &host, "ci", "wrong-password"),
    );
    cluster.api.forbid_secret("team-b", "locked");
    wait_until("namespaces", || cluster.policies.policy("team-b").is_some()).await;
    let image = format!("{host}/private/app:v1");

    // With the secret: inspected with its credentials, and patched.
    let with_secret = pod(&image, &["regcred"]);
    let answer = review(&cluster.reviewer, "team-a", &with_secret).await;
    assert!(apply_patch(&answer, &with_secret).is_some(), "{answer}");
    // The same image in another namespace without that secret does not get
    // the first namespace's cached answer.
    let answer = review(&cluster.reviewer, "team-b", &pod(&image, &[])).await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("refused access") && warning.contains("no credentials"),
        "{warning}"
    );
    // Wrong credentials, a missing secret and a forbidden one: each said.
    let answer = review(
        &cluster.reviewer,
        "team-b",
        &pod(&image, &["stale", "missing", "locked"]),
    )
    .await;
    let warnings: Vec<&str> = answer["response"]["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert!(
        warnings.contains(&"archway: pull secret missing: not found"),
        "{warnings:?}"
    );
    assert!(
        warnings.contains(&"archway: pull secret locked: archway may not read it (forbidden)"),
        "{warnings:?}"
    );
    assert!(
        warnings.iter().any(|w| w.contains("credentials rejected")),
        "{warnings:?}"
    );
    for w in &warnings {
        assert!(
            !w.contains("t0ken") && !w.contains("wrong-password"),
            "no secret in warnings: {w}"
        );
    }

    // Secrets are read with one get each, cached briefly; never listed.
    for _ in 0..5 {
        review(&cluster.reviewer, "team-a", &with_secret).await;
    }
    let secret_requests: Vec<_> = cluster
        .api
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/secrets"))
        .collect();
    assert!(
        secret_requests
            .iter()
            .all(|r| !r.is_watch() && r.path.split('/').count() == 7),
        "{secret_requests:?}"
    );
    let regcred_gets = secret_requests
        .iter()
        .filter(|r| r.path.ends_with("/secrets/regcred"))
        .count();
    assert_eq!(regcred_gets, 1, "{secret_requests:?}");
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
            .node_architectures()
            .is_some_and(|a| !a.contains("arm64"))
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
            .node_architectures()
            .is_some_and(|a| a.contains("arm64"))
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
    let policies = ClusterPolicies::start(client, archway::policy::Rollout::NONE);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!policies.is_ready());
    assert!(policies.node_architectures().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_reports_what_runs_where_and_what_blocks_the_move() {
    let registry = Registry::start(RegistryOptions::plain());
    push_multi_arch(&registry, "web:v1");
    let dir = tempfile::tempdir().unwrap();
    let amd = build_layout(dir.path(), &ImageSpec::single("amd64"));
    registry.push(&amd.dir, "legacy:v1", Format::Oci);
    let host = registry.host();
    install_crypto();
    let api = FakeApiServer::start().await;
    api.put("nodes", &node("amd-1", "amd64"));
    api.put("nodes", &node("arm-1", "arm64"));
    api.put(
        "namespaces",
        &namespace(
            "shop",
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "100")],
        ),
    );
    api.put("namespaces", &namespace("legacy", &[], &[]));
    let template = |image: &str| {
        json!({"metadata": {"labels": {"app": "x"}},
        "spec": {"containers": [{"name": "main", "image": format!("{host}/{image}")}]}})
    };
    let put_json = |resource: &'static str, value: Value| api.put(resource, &value);
    put_json(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("web:v1")}}),
    );
    put_json(
        "replicasets",
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-5d8f", "namespace": "shop", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "d1", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("web:v1")}}),
    );
    put_json(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-5d8f-a", "namespace": "shop", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f", "uid": "r1", "controller": true}]},
        "spec": {"nodeName": "amd-1", "containers": [{"name": "main", "image": format!("{host}/web:v1")}]}}),
    );
    put_json(
        "deployments",
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "billing", "namespace": "legacy"},
        "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": template("legacy:v1")}}),
    );
    put_json(
        "pods",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "debug", "namespace": "legacy"},
        "spec": {"nodeName": "arm-1", "containers": [{"name": "sh", "image": format!("{host}/web:v1")}]}}),
    );
    put_json(
        "cronjobs",
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report", "namespace": "legacy"},
        "spec": {"schedule": "@daily", "jobTemplate": {"spec": {"template": {
            "spec": {"restartPolicy": "Never", "containers": [{"name": "r", "image": format!("{host}/missing:v1")}]}}}}}}),
    );
    put_json(
        "jobs",
        json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "report-123", "namespace": "legacy", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "CronJob", "name": "report", "uid": "c1", "controller": true}]},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "r", "image": format!("{host}/missing:v1")}]}}}}),
    );

    let config = Config::from_yaml(&format!("registry: {{ insecure: [\"{host}\"] }}")).unwrap();
    let report = archway::audit::scan(api.client(), &config, None, false)
        .await
        .unwrap();
    let rows: Vec<(String, bool, String, String, String)> = report
        .workloads
        .iter()
        .map(|w| {
            (
                format!("{}/{}/{}", w.namespace, w.kind, w.name),
                w.target_ready,
                w.supported.join(","),
                w.runs_on.join(","),
                w.would_inject.clone(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "legacy/CronJob/report".into(),
                false,
                "".into(),
                "".into(),
                "-".into()
            ),
            (
                "legacy/Deployment/billing".into(),
                false,
                "amd64".into(),
                "".into(),
                "amd64".into()
            ),
            (
                "legacy/Pod/debug".into(),
                true,
                "amd64,arm64".into(),
                "arm64".into(),
                "amd64".into()
            ),
            (
                "shop/Deployment/web".into(),
                true,
                "amd64,arm64".into(),
                "amd64".into(),
                "arm64".into()
            ),
        ],
        "{report:#?}"
    );
    let billing = &report.workloads[1];
    assert_eq!(billing.mode, "off");
    assert!(
        billing.blockers[0].contains("publishes only linux/amd64"),
        "{:?}",
        billing.blockers
    );
    assert!(
        report.workloads[0].blockers[0].contains("not found"),
        "{:?}",
        report.workloads[0].blockers
    );
    assert_eq!(
        report.node_architectures,
        BTreeMap::from([("amd64".into(), 1), ("arm64".into(), 1)])
    );

    let table = archway::audit::render_table(&report);
    assert!(
        table.contains("4 workloads, 2 ready for arm64, 2 blocked; Linux nodes: 1 amd64, 1 arm64"),
        "{table}"
    );
    let html = archway::audit::render_html(&report);
    assert!(
        html.starts_with("<!doctype html>")
            && html.contains("<td>shop</td><td>Deployment/web</td>")
    );
    assert!(!html.contains("<script"), "self-contained, no scripts");
    // The audit only reads: lists and gets, never a write.
    assert!(api.requests().iter().all(|r| r.method == "GET"));
}

//! archway behind the real Kubernetes control plane: kube-apiserver calls it
//! over TLS with the caBundle, applies its patch, then defaults and validates
//! the pod; kube-scheduler places the pod; kube-controller-manager runs
//! Deployments. Nodes are Node objects (tests/testkit/src/controlplane.rs).
//!
//! One control plane and one `archway serve` for this whole file; each test
//! works in namespaces of its own.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::controlplane::{ControlPlane, NodePool, client_from_kubeconfig};
use support::install::{InstalledArchway, sum_samples};
use support::world::World;
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

const PRIVATE_USER: &str = "puller";
const PRIVATE_PASSWORD: &str = "s3cret-pull";

struct Env {
    plane: ControlPlane,
    /// Plain HTTP, anonymous: multi-arch, amd64-only and arm64-only images.
    registry: Registry,
    /// htpasswd: the same multi-arch image, private.
    private: Registry,
    archway: InstalledArchway,
}

impl Env {
    fn image(&self, name: &str) -> String {
        format!("{}/{name}", self.registry.host())
    }
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let private = Registry::start(
            RegistryOptions::plain().with_basic_auth(PRIVATE_USER, PRIVATE_PASSWORD),
        );
        let reference = "private/app:v1";
        private.push_spec(reference, &ImageSpec::multi_arch().with_salt(reference));
        let World {
            plane,
            registry,
            archway,
        } = World::builder(env!("CARGO_BIN_EXE_archway"))
            .kubelet()
            .sample_images()
            .insecure_registries(&[private.host()])
            .start();
        Env {
            plane,
            registry,
            private,
            archway,
        }
    })
}

fn pod(name: &str, image: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "image": image}]},
    })
}

async fn create_pod(client: &kube::Client, namespace: &str, pod: &Value) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(pod.clone()).unwrap(),
    )
    .await
    .unwrap_or_else(|e| panic!("create pod in {namespace}: {e}"))
}

/// Creates the pod with a raw request, as kubectl does, and returns the
/// stored pod with the `Warning` headers the API server passed on.
async fn create_pod_with_warnings(
    client: &kube::Client,
    namespace: &str,
    pod: &Value,
    dry_run: bool,
) -> (Value, Vec<String>) {
    let query = if dry_run { "?dryRun=All" } else { "" };
    let request = axum::http::Request::post(format!("/api/v1/namespaces/{namespace}/pods{query}"))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(pod).unwrap())
        .unwrap();
    let response = client
        .send(request.map(Into::into))
        .await
        .expect("POST pod");
    let warnings = response
        .headers()
        .get_all("warning")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let status = response.status();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("read response")
        .to_bytes();
    assert!(
        status.is_success(),
        "POST pod in {namespace}: {status} {}",
        String::from_utf8_lossy(&body)
    );
    (serde_json::from_slice(&body).unwrap(), warnings)
}

fn required_arch_values(pod: &Value) -> Vec<Vec<String>> {
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    terms
        .as_array()
        .map(|terms| {
            terms
                .iter()
                .filter_map(|term| {
                    term["matchExpressions"].as_array()?.iter().find_map(|e| {
                        (e["key"] == "kubernetes.io/arch").then(|| {
                            e["values"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|v| v.as_str().unwrap().to_string())
                                .collect()
                        })
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn wait_for_node(client: &kube::Client, namespace: &str, name: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let pod = pods.get(name).await.unwrap();
        if let Some(node) = pod.spec.and_then(|s| s.node_name) {
            return node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{namespace}/{name} was not scheduled: {:?}",
            pod.status.and_then(|s| s.conditions)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn node_arch(node: &str) -> &str {
    node.split('-').next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_are_placed_in_enforce_reported_in_audit_and_untouched_elsewhere() {
    let env = env();
    let client = env.plane.client().await;
    let multi = env.image("multi:v1");
    let plane = &env.plane;
    plane.create_namespace(
        "placed-enforce",
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    plane.create_namespace(
        "placed-audit",
        &[("archway.dev/mode", "audit")],
        &[("archway.dev/rollout", "100")],
    );
    plane.create_namespace("placed-none", &[], &[]);

    // enforce: stored with archway's affinity, toleration and annotations,
    // and the scheduler puts it on the tainted arm64 pool.
    let stored = create_pod(&client, "placed-enforce", &pod("web", &multi)).await;
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(required_arch_values(&stored), [["arm64"]], "{stored:#}");
    let annotations = &stored["metadata"]["annotations"];
    assert_eq!(annotations["archway.dev/archs"], "amd64,arm64");
    assert!(
        annotations["archway.dev/decision"]
            .as_str()
            .unwrap()
            .starts_with("arm64"),
        "{annotations}"
    );
    let tolerations = stored["spec"]["tolerations"].as_array().unwrap();
    assert!(
        tolerations.iter().any(|t| t["key"] == "kubernetes.io/arch"
            && t["value"] == "arm64"
            && t["effect"] == "NoSchedule"),
        "{tolerations:?}"
    );
    // The API server's own defaults are still there beside archway's.
    assert!(
        tolerations
            .iter()
            .any(|t| t["key"] == "node.kubernetes.io/not-ready"),
        "DefaultTolerationSeconds ran: {tolerations:?}"
    );
    let node = wait_for_node(&client, "placed-enforce", "web").await;
    assert_eq!(node_arch(&node), "arm64", "scheduled onto {node}");

    // audit: stored unchanged; the client gets the warning; the audit log
    // holds archway's audit annotations.
    let (stored, warnings) =
        create_pod_with_warnings(&client, "placed-audit", &pod("web", &multi), false).await;
    assert!(required_arch_values(&stored).is_empty(), "{stored:#}");
    let annotations = stored["metadata"]["annotations"].as_object();
    assert!(
        annotations.is_none_or(|a| !a.keys().any(|k| k.starts_with("archway.dev/"))),
        "{annotations:?}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("archway audit") && w.contains("arm64")),
        "{warnings:?}"
    );
    let uid = stored["metadata"]["uid"].as_str().unwrap().to_string();
    let audited = support::controlplane::wait_for(
        "the audit event of the audit-mode pod",
        Duration::from_secs(10),
        || {
            plane.audit_events().into_iter().find(|e| {
                e["objectRef"]["resource"] == "pods"
                    && e["objectRef"]["namespace"] == "placed-audit"
                    && e["stage"] == "ResponseComplete"
                    && e["verb"] == "create"
                    && e["annotations"]
                        .as_object()
                        .is_some_and(|a| a.keys().any(|k| k.ends_with("/decision")))
            })
        },
    );
    let keys: Vec<&String> = audited["annotations"].as_object().unwrap().keys().collect();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("pods.archway.dev/") && k.ends_with("decision")),
        "audit annotations are prefixed with the webhook's name: {keys:?}"
    );
    assert!(!uid.is_empty());

    // Not opted in: the API server never calls archway.
    let before = env
        .archway
        .counter("archway_reviews_total", &[("namespace", "placed-none")]);
    let stored = create_pod(&client, "placed-none", &pod("web", &multi)).await;
    let stored = serde_json::to_value(&stored).unwrap();
    assert!(required_arch_values(&stored).is_empty());
    let after = env
        .archway
        .counter("archway_reviews_total", &[("namespace", "placed-none")]);
    assert_eq!((before, after), (0.0, 0.0), "archway was called");
    // ... while the enforce namespace's reviews were counted.
    assert!(
        env.archway
            .counter("archway_reviews_total", &[("namespace", "placed-enforce")])
            >= 1.0
    );
}

fn deployment(name: &str, image: &str, replicas: i32) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            // The whole rollout at once: the scheduler and archway are what
            // is measured, not the rollout pace.
            "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "main", "image": image}],
                         "terminationGracePeriodSeconds": 0},
            },
        },
    })
}

/// Waits until the Deployment has rolled out (every replica updated and
/// available, no old pod left) and returns the architecture of the node of
/// each of its pods.
async fn rolled_out(client: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let started = Instant::now();
    loop {
        let d = deployments.get(name).await.unwrap();
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let done = d.metadata.generation == status.observed_generation
            && status.updated_replicas == Some(want)
            && status.available_replicas == Some(want)
            && status.replicas == Some(want);
        if done {
            let list = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .unwrap();
            let archs: Vec<String> = list
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .map(|n| node_arch(&n).to_string())
                .collect();
            if archs.len() == want as usize {
                return archs;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{namespace}/{name} did not roll out: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn share(archs: &[String], arch: &str) -> f64 {
    archs.iter().filter(|a| *a == arch).count() as f64 / archs.len() as f64
}

async fn restart(client: &kube::Client, namespace: &str, name: &str, generation: u32) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    // What `kubectl rollout restart` writes.
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": format!("restart-{generation}")}}}}});
    deployments
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

fn set_rollout(plane: &ControlPlane, namespace: &str, rollout: u32) {
    plane.kubectl(
        &[
            "annotate",
            "namespace",
            namespace,
            &format!("archway.dev/rollout={rollout}"),
            "--overwrite",
        ],
        None,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_moves_by_the_rollout_and_back() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "rollout";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "25")],
    );
    plane.apply(&[{
        let mut d = deployment("web", &env.image("multi:v1"), 200);
        d["metadata"]["namespace"] = ns.into();
        d
    }]);
    let started = Instant::now();
    let archs = rolled_out(&client, ns, "web").await;
    let arm = share(&archs, "arm64");
    eprintln!(
        "rollout 25%: {} of {} pods on arm64 ({:.1}%), rolled out in {:?}",
        archs.iter().filter(|a| *a == "arm64").count(),
        archs.len(),
        arm * 100.0,
        started.elapsed()
    );
    // The issue asked for 25 ± 5 %; drawn in sequence (placement::
    // spread_steered: places around the workload's phase) it is 50 of 200,
    // give or take a retried webhook call.
    assert!((0.24..=0.26).contains(&arm), "arm64 share {arm}");

    set_rollout(plane, ns, 100);
    restart(&client, ns, "web", 1).await;
    let archs = rolled_out(&client, ns, "web").await;
    assert_eq!(share(&archs, "arm64"), 1.0, "rollout 100: {archs:?}");

    set_rollout(plane, ns, 0);
    restart(&client, ns, "web", 2).await;
    let archs = rolled_out(&client, ns, "web").await;
    assert_eq!(share(&archs, "amd64"), 1.0, "rollout 0: {archs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_architecture_images_land_only_where_they_run() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "single-arch";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    let mut objects = Vec::new();
    for (name, image) in [("legacy", "amd64-only:v1"), ("native", "arm64-only:v1")] {
        let mut d = deployment(name, &env.image(image), 10);
        d["metadata"]["namespace"] = ns.into();
        objects.push(d);
    }
    plane.apply(&objects);
    // At rollout 100 an amd64-only image still never lands on arm64.
    let legacy = rolled_out(&client, ns, "legacy").await;
    assert!(legacy.iter().all(|a| a == "amd64"), "{legacy:?}");
    // The arm64-only image tolerates the arm64 pool's taint and lands there.
    let native = rolled_out(&client, ns, "native").await;
    assert!(native.iter().all(|a| a == "arm64"), "{native:?}");
}

/// Whether archway patched a dry-run pod in `namespace`.
async fn is_patched(client: &kube::Client, namespace: &str, image: &str) -> bool {
    let (stored, _) = create_pod_with_warnings(client, namespace, &pod("probe", image), true).await;
    stored["metadata"]["annotations"]
        .get("archway.dev/decision")
        .is_some()
}

async fn time_until(what: &str, mut condition: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !condition().await {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_namespace_label_takes_effect_within_a_second() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "labelled";
    let image = env.image("multi:v1");
    plane.create_namespace(ns, &[], &[("archway.dev/rollout", "100")]);
    assert!(!is_patched(&client, ns, &image).await);

    plane.kubectl(
        &["label", "namespace", ns, "archway.dev/mode=enforce"],
        None,
    );
    let on = time_until("the label to take effect", async || {
        is_patched(&client, ns, &image).await
    })
    .await;
    plane.kubectl(&["label", "namespace", ns, "archway.dev/mode-"], None);
    let off = time_until("the label's removal to take effect", async || {
        !is_patched(&client, ns, &image).await
    })
    .await;
    eprintln!("label added: enforced after {on:?}; removed: left alone after {off:?}");
    assert!(on < Duration::from_secs(1), "{on:?}");
    assert!(off < Duration::from_secs(1), "{off:?}");
}

fn docker_config_secret(namespace: &str, host: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let config =
        json!({"auths": {host: {"auth": b64(&format!("{PRIVATE_USER}:{PRIVATE_PASSWORD}"))}}});
    json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": "pull", "namespace": namespace},
        "data": {".dockerconfigjson": b64(&config.to_string())},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_image_is_placed_with_its_pull_secret_and_no_more_access() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "private";
    let image = format!("{}/private/app:v1", env.private.host());
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    plane.apply(&[docker_config_secret(ns, &env.private.host())]);

    // Without the secret: not inspectable, admitted unchanged with a warning.
    let (stored, warnings) =
        create_pod_with_warnings(&client, ns, &pod("without", &image), false).await;
    assert!(required_arch_values(&stored).is_empty(), "{stored:#}");
    assert!(!warnings.is_empty(), "a warning says why");

    let mut with = pod("with", &image);
    with["spec"]["imagePullSecrets"] = json!([{"name": "pull"}]);
    let stored = create_pod(&client, ns, &with).await;
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(required_arch_values(&stored), [["arm64"]], "{stored:#}");
    assert_eq!(
        node_arch(&wait_for_node(&client, ns, "with").await),
        "arm64"
    );
    // The answer the secret obtained is cached for that credential only: a
    // pod without it still gets none.
    let (stored, _) = create_pod_with_warnings(&client, ns, &pod("after", &image), false).await;
    assert!(required_arch_values(&stored).is_empty(), "{stored:#}");

    // archway itself only ever got the secret: the audit log of its calls
    // (before this test makes calls as archway's ServiceAccount below).
    let secret_verbs: BTreeMap<String, usize> = plane
        .audit_events()
        .iter()
        .filter(|e| {
            e["user"]["username"] == "system:serviceaccount:archway:archway"
                && e["objectRef"]["resource"] == "secrets"
                && e["stage"] == "ResponseComplete"
        })
        .fold(BTreeMap::new(), |mut verbs, e| {
            *verbs
                .entry(e["verb"].as_str().unwrap().to_string())
                .or_default() += 1;
            verbs
        });
    assert!(
        secret_verbs.keys().all(|v| v == "get") && secret_verbs.contains_key("get"),
        "{secret_verbs:?}"
    );

    // What archway's ServiceAccount may do with secrets: get, and no more.
    let archway_sa = client_from_kubeconfig(&env.archway.kubeconfig).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(archway_sa, ns);
    assert!(secrets.get("pull").await.is_ok(), "get is allowed");
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("list secrets should be forbidden: {other:?}"),
    }
    // `kubectl auth can-i` prints yes or no, and exits 1 on no.
    let can_i = |verb: &str| {
        let out = plane
            .kubectl_command()
            .args(["auth", "can-i", verb, "secrets", "-n", ns])
            .arg("--as=system:serviceaccount:archway:archway")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(
        [can_i("get"), can_i("list"), can_i("watch")],
        ["yes", "no", "no"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archway_audit_reads_the_cluster() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "audit-cmd";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "0")],
    );
    let mut objects = Vec::new();
    for (name, image) in [("web", "multi:v1"), ("billing", "amd64-only:v1")] {
        let mut d = deployment(name, &env.image(image), 2);
        d["metadata"]["namespace"] = ns.into();
        objects.push(d);
    }
    objects.push(json!({
        "apiVersion": "batch/v1", "kind": "CronJob",
        "metadata": {"name": "report", "namespace": ns},
        "spec": {"schedule": "@yearly", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "r", "image": env.image("missing:v1")}]}}}}},
    }));
    plane.apply(&objects);
    create_pod(&client, ns, &pod("debug", &env.image("multi:v1"))).await;
    wait_for_node(&client, ns, "debug").await;
    rolled_out(&client, ns, "web").await;
    rolled_out(&client, ns, "billing").await;

    let config = format!(
        "registry: {{insecure: [\"{}\", \"{}\"]}}\n",
        env.registry.host(),
        env.private.host()
    );
    // A user of its own, so that its calls stand out in the audit log.
    let stdout = plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns, "-o", "json"],
        &config,
        &plane.kubeconfig_for("auditor", &["system:masters"]),
    );
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    let rows: Vec<(String, bool, String, String)> = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let list = |v: &Value| {
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            (
                format!(
                    "{}/{}",
                    w["kind"].as_str().unwrap(),
                    w["name"].as_str().unwrap()
                ),
                w["target_ready"].as_bool().unwrap(),
                list(&w["supported"]),
                list(&w["runs_on"]),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "CronJob/report".to_string(),
                false,
                "".to_string(),
                "".to_string()
            ),
            (
                "Deployment/billing".to_string(),
                false,
                "amd64".to_string(),
                "amd64".to_string()
            ),
            (
                "Deployment/web".to_string(),
                true,
                "amd64,arm64".to_string(),
                "amd64".to_string()
            ),
            (
                "Pod/debug".to_string(),
                true,
                "amd64,arm64".to_string(),
                "amd64".to_string()
            ),
        ],
        "{report:#}"
    );
    let blockers = report["workloads"][1]["blockers"].to_string();
    assert!(
        blockers.contains("publishes only linux/amd64"),
        "{blockers}"
    );
    let blockers = report["workloads"][0]["blockers"].to_string();
    assert!(blockers.contains("not found"), "{blockers}");
    // Every node of the cluster was counted.
    assert_eq!(
        report["node_architectures"],
        json!({"amd64": 3, "arm64": 3})
    );
    // The table's summary says the same.
    let out = plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns],
        &config,
        &plane.kubeconfig_for("auditor", &["system:masters"]),
    );
    let table = String::from_utf8_lossy(&out);
    assert!(
        table.contains("4 workloads, 2 ready for arm64, 2 blocked; Linux nodes: 3 amd64, 3 arm64"),
        "{table}"
    );
    // No ramp in this namespace: `ramp: null`, and no ramp table.
    assert_eq!(report["namespaces"][0]["ramp"], Value::Null, "{report:#}");
    assert!(!table.contains("Migration ramps"), "{table}");

    // A namespace with a ramp, paused by a hold (the autopilot leaves a
    // paused ramp as it is): its line says where the ramp stands, in the
    // JSON and in the table; it has no workload, and a line all the same.
    let ramped = "audit-ramp";
    let status = "paused at 50% since 2026-12-03T10:00:00Z: Deployment/web is held off arm64: \
                  held: 2 pods CrashLoopBackOff on arm64; remove this annotation to resume";
    plane.create_namespace(
        ramped,
        &[("archway.dev/mode", "enforce")],
        &[
            ("archway.dev/rollout", "50"),
            ("archway.dev/ramp", "10,50,100"),
            ("archway.dev/ramp-step", "24h"),
            ("archway.dev/ramp-status", status),
        ],
    );
    let audit_ramped = |output: &[&str]| {
        let mut args = vec!["-n", ramped];
        args.extend_from_slice(output);
        let out = plane.archway_audit(
            std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
            &args,
            &config,
            &plane.kubeconfig_for("auditor", &["system:masters"]),
        );
        String::from_utf8(out).unwrap()
    };
    let report: Value = serde_json::from_str(&audit_ramped(&["-o", "json"])).unwrap();
    assert_eq!(
        report["namespaces"],
        json!([{
            "namespace": ramped, "mode": "enforce", "rollout": 50,
            "running": {}, "running_total": 0, "on_target": 0,
            "planned_on_target": 0, "gap": 0, "blocked": 0,
            "ramp": {
                "steps": [10, 50, 100],
                "step_duration": "24h",
                "step_seconds": 86400,
                "on_failure": "pause",
                "state": "paused",
                "step": 50,
                "since": "2026-12-03T10:00:00Z",
                "next_step": null,
                "next_due": null,
                "paused_because": "Deployment/web is held off arm64: held: 2 pods CrashLoopBackOff on arm64",
                "status": status,
            },
        }]),
        "{report:#}"
    );
    let table = audit_ramped(&[]);
    let ramps = table
        .split("Migration ramps (archway.dev/ramp):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no ramp table:\n{table}"));
    let line = ramps.lines().nth(1).unwrap();
    assert_eq!(
        line.split_whitespace().take(7).collect::<Vec<_>>(),
        [
            ramped,
            "10,50,100",
            "24h",
            "pause",
            "paused",
            "50%",
            "2026-12-03T10:00:00Z"
        ],
        "{table}"
    );
    assert!(
        line.ends_with(
            "Deployment/web is held off arm64: held: 2 pods CrashLoopBackOff on arm64; \
             remove the namespace annotation archway.dev/ramp-status to resume"
        ),
        "{table}"
    );
    // The audit only reads: its calls, as the auditor, in the API server's
    // audit log.
    let calls: Vec<(String, String)> = plane
        .audit_events()
        .iter()
        .filter(|e| e["user"]["username"] == "auditor" && e["stage"] == "ResponseComplete")
        .map(|e| {
            let verb = e["verb"].as_str().unwrap_or_default().to_string();
            (
                verb,
                e["requestURI"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(calls.iter().any(|(verb, _)| verb == "list"), "{calls:?}");
    assert!(
        calls
            .iter()
            .all(|(verb, _)| matches!(verb.as_str(), "get" | "list" | "watch")),
        "archway audit wrote: {calls:?}"
    );
}

#[test]
fn metrics_parsing_sums_matching_series() {
    let text = "# TYPE archway_reviews counter\n\
                archway_reviews_total{namespace=\"a\",decision=\"x\"} 2\n\
                archway_reviews_total{namespace=\"a\",decision=\"y\"} 3\n\
                archway_reviews_total{namespace=\"b\",decision=\"x\"} 7\n";
    assert_eq!(
        sum_samples(text, "archway_reviews_total", &[("namespace", "a")]),
        5.0
    );
    assert_eq!(sum_samples(text, "archway_reviews_total", &[]), 12.0);
    assert_eq!(sum_samples(text, "archway_reviews", &[]), 0.0);
}

/// The Windows pool's taint, as AKS users put on Windows node pools so that
/// Linux pods (which name no OS) stay off them.
const WINDOWS_TAINT: (&str, &str, &str) = ("os", "windows", "NoSchedule");

/// Issue 12: a Windows pod in an enforce namespace at rollout 100, whose
/// image publishes linux/arm64 and windows/amd64, is required onto amd64
/// (what its Windows image runs on), not steered to arm64, and runs on the
/// Windows amd64 node. A Linux pod of the same image goes to arm64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_pod_is_placed_by_its_windows_images() {
    let env = env();
    let plane = &env.plane;
    let client = plane.client().await;
    let ns = "windows";
    let (key, value, effect) = WINDOWS_TAINT;
    let pool = NodePool::new("win-amd64", "windows", "amd64", 1).tainted(key, value, effect);
    plane.create_nodes(std::slice::from_ref(&pool));
    let dir = tempfile::tempdir().unwrap();
    let reference = "winarm:v1";
    let spec = ImageSpec::index_of(
        &[("linux", "arm64", None), ("windows", "amd64", None)],
        false,
        reference,
    );
    let layout = build_layout(&dir.path().join("winarm"), &spec);
    env.registry.push(&layout.dir, reference, Format::Oci);
    let image = env.image(reference);
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );

    // The scheduler does not read spec.os: a Windows pod also selects
    // Windows nodes, as Windows workloads do, and tolerates their taint.
    let mut windows = pod("win", &image);
    windows["spec"]["os"] = json!({"name": "windows"});
    windows["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "windows"});
    windows["spec"]["tolerations"] =
        json!([{"key": key, "operator": "Equal", "value": value, "effect": effect}]);
    let (stored, warnings) = create_pod_with_warnings(&client, ns, &windows, false).await;
    assert_eq!(required_arch_values(&stored), [["amd64"]], "{stored:#}");
    assert!(warnings.is_empty(), "{warnings:?}");
    let annotations = &stored["metadata"]["annotations"];
    assert_eq!(annotations["archway.dev/archs"], "amd64", "{annotations}");
    assert!(
        annotations["archway.dev/decision"]
            .as_str()
            .unwrap()
            .contains("Windows images"),
        "{annotations}"
    );
    // No Linux node's toleration: the configured ones are for linux.
    let tolerations = stored["spec"]["tolerations"].as_array().unwrap();
    assert!(
        !tolerations.iter().any(|t| t["key"] == "kubernetes.io/arch"),
        "{tolerations:?}"
    );
    let node = wait_for_node(&client, ns, "win").await;
    assert_eq!(node, pool.names()[0], "scheduled onto {node}");

    // The same image in a Linux pod: its only Linux platform, arm64.
    let stored = create_pod(&client, ns, &pod("linux", &image)).await;
    let stored = serde_json::to_value(&stored).unwrap();
    assert_eq!(required_arch_values(&stored), [["arm64"]], "{stored:#}");
    let node = wait_for_node(&client, ns, "linux").await;
    assert_eq!(node_arch(&node), "arm64", "scheduled onto {node}");

    // Leave the shared cluster's nodes as NodePool::standard() made them
    // (`archway audit` counts Linux nodes only, so this is tidiness).
    for name in pool.names() {
        plane.kubectl(&["delete", "node", &name, "--wait=false"], None);
    }
}

/// `3 amd64 (75%), 1 arm64 (25%)`, as the report shows a namespace's pods.
fn shares_of(archs: &[String]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for arch in archs {
        *counts.entry(arch).or_insert(0) += 1;
    }
    counts
        .iter()
        .map(|(arch, n)| {
            format!(
                "{n} {arch} ({}%)",
                (n * 100 + archs.len() / 2) / archs.len()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_report_renders_in_a_browser() {
    let env = env();
    let plane = &env.plane;
    let client = env.plane.client().await;
    let ns = "migration-report";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let workloads = [
        ("web", "multi:v1", 4),
        ("billing", "amd64-only:v1", 2),
        ("encoder", "arm64-only:v1", 1),
    ];
    let objects: Vec<Value> = workloads
        .iter()
        .map(|(name, image, replicas)| {
            let mut d = deployment(name, &env.image(image), *replicas);
            d["metadata"]["namespace"] = ns.into();
            d
        })
        .collect();
    plane.apply(&objects);
    let mut archs = Vec::new();
    for (name, _, _) in workloads {
        archs.extend(rolled_out(&client, ns, name).await);
    }

    let html = plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns, "-o", "html"],
        &format!("registry: {{insecure: [\"{}\"]}}\n", env.registry.host()),
        &plane.admin_kubeconfig,
    );
    // Kept for a person to look at: target/test-output/migration-report/.
    let dom = support::browser::look_at_report(
        env!("CARGO_TARGET_TMPDIR"),
        "migration-report",
        &html,
        2000,
    );
    let at = |text: &str| {
        dom.find(text)
            .unwrap_or_else(|| panic!("{text} not in the page:\n{dom}"))
    };
    // Blocked first, then the ready ones, then the monitoring step.
    let billing = at("<td>Deployment/billing</td>");
    assert!(billing < at("<td>Deployment/encoder</td>"));
    assert!(billing < at("<td>Deployment/web</td>"));
    assert!(at("<td>Deployment/web</td>") < at("id=\"monitoring\""));
    // The namespace's pods as the scheduler placed them, next to the
    // rollout: half of web's 4, all of the encoder, none of billing.
    let on_arm = archs.iter().filter(|a| *a == "arm64").count();
    let percent = |n: usize| (n * 100 + archs.len() / 2) / archs.len();
    let row = format!(
        "<td>{ns}</td><td>enforce</td><td>50%</td><td>{}</td><td>{on_arm} ({}%)</td><td>3 ({}%)</td>",
        shares_of(&archs),
        percent(on_arm),
        percent(3),
    );
    at(&row);
}

/// Issue 12: a sidecar injector that runs after archway adds an amd64-only
/// container to a pod archway steered to arm64. The API server calls
/// archway again (reinvocationPolicy IfNeeded); archway rewrites its own
/// expression to amd64, says so in a warning and the decision annotation,
/// and the scheduler binds the pod to an amd64 node. A sidecar that runs on
/// arm64 changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_added_after_archway_is_checked_on_reinvocation() {
    let env = env();
    let plane = &env.plane;
    let client = plane.client().await;
    let multi = env.image("multi:v1");
    let mut seen = Vec::new();
    for (ns, sidecar) in [
        ("sidecar-amd64", env.image("amd64-only:v1")),
        ("sidecar-multi", multi.clone()),
    ] {
        plane.create_namespace(
            ns,
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "100")],
        );
        let injector = support::injector::SidecarInjector::start(&sidecar);
        plane.apply(&[injector.configuration(ns)]);
        // The API server's webhook informer lags a new configuration: probe
        // with dry runs until the injector is called.
        let started = Instant::now();
        while injector.calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            create_pod_with_warnings(&client, ns, &pod("probe", &multi), true).await;
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "injector not called"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let counted = |decision: &str| {
            (env.archway).counter(
                "archway_reviews_total",
                &[("namespace", ns), ("decision", decision)],
            )
        };
        let before = (counted("corrected"), counted("already_decided"));
        let (stored, warnings) =
            create_pod_with_warnings(&client, ns, &pod("app", &multi), false).await;
        // Each pod is reviewed twice: first as archway placed it, then
        // again after the injector changed it.
        let after = (counted("corrected"), counted("already_decided"));
        let rechecked = (after.0 - before.0, after.1 - before.1);
        let containers: Vec<&str> = (stored["spec"]["containers"].as_array().unwrap().iter())
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(containers, ["main", support::injector::SIDECAR]);
        let node = wait_for_node(&client, ns, "app").await;
        seen.push((stored, warnings, node, rechecked));
    }

    let (stored, warnings, node, rechecked) = &seen[0];
    assert_eq!(*rechecked, (1.0, 0.0));
    assert_eq!(required_arch_values(stored), [["amd64"]], "{stored:#}");
    let annotations = &stored["metadata"]["annotations"];
    let decision = annotations["archway.dev/decision"].as_str().unwrap();
    assert!(
        decision.starts_with(&format!(
            "amd64: corrected after reinvocation, {} ({}) has no arm64",
            support::injector::SIDECAR,
            env.image("amd64-only:v1")
        )),
        "{decision}"
    );
    assert_eq!(annotations["archway.dev/archs"], "amd64");
    let warnings = warnings.join("\n");
    assert!(
        warnings.contains("archway now requires amd64 (was arm64)"),
        "{warnings}"
    );
    assert_eq!(node_arch(node), "amd64", "scheduled onto {node}");

    // The sidecar runs on arm64: archway's first decision stands.
    let (stored, warnings, node, rechecked) = &seen[1];
    assert_eq!(*rechecked, (0.0, 1.0));
    assert_eq!(required_arch_values(stored), [["arm64"]], "{stored:#}");
    assert!(
        stored["metadata"]["annotations"]["archway.dev/decision"]
            .as_str()
            .unwrap()
            .starts_with("arm64: rollout 100%"),
        "{stored:#}"
    );
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(node_arch(node), "arm64", "scheduled onto {node}");
}

//! `archway rollback` on the real control plane: archway installed from
//! deploy/ steers a Deployment's pods to arm64 (rollout 100, the fake
//! kubelet runs them); the built binary, as the cluster admin of the
//! current kubeconfig, sets the rollout to 0, pauses the ramp and restarts
//! the Deployment, whose pods are then all on amd64. `--dry-run` changes
//! nothing, and a namespace that is not opted in is an error.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::process::Output;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use support::ImageSpec;
use support::controlplane::ControlPlane;
use support::world::World;

const ROLLOUT: &str = "archway.dev/rollout";
const STATUS: &str = "archway.dev/ramp-status";

fn env() -> &'static World {
    static ENV: OnceLock<World> = OnceLock::new();
    ENV.get_or_init(|| {
        World::builder(env!("CARGO_BIN_EXE_archway"))
            .kubelet()
            .image("multi:v1", ImageSpec::multi_arch().with_salt("rollback"))
            .start()
    })
}

/// `archway ARGS` as the cluster admin of the current kubeconfig context,
/// with no configuration file and no setting from the environment.
async fn archway(plane: &ControlPlane, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_archway"));
    command
        .args(args)
        .env("KUBECONFIG", &plane.admin_kubeconfig)
        .env_remove("ARCHWAY_CONFIG")
        .env_remove("ARCHWAY_TARGET_ARCHITECTURE");
    tokio::task::spawn_blocking(move || command.output().expect("run archway"))
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

async fn annotations(client: &kube::Client, ns: &str) -> BTreeMap<String, String> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.get(ns)
        .await
        .unwrap()
        .metadata
        .annotations
        .unwrap_or_default()
}

/// The Deployment's live pods (bound, not terminating), each with the
/// architecture of its node, by pod name.
async fn live_pods(client: &kube::Client, ns: &str, app: &str) -> BTreeMap<String, String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&format!("app={app}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| {
            let node = p.spec?.node_name?;
            let arch = node.split('-').next().unwrap().to_string();
            Some((p.metadata.name?, arch))
        })
        .collect()
}

/// Waits until the Deployment is available with `replicas` live pods.
async fn available(client: &kube::Client, ns: &str, name: &str, replicas: usize) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let d = api.get(name).await.unwrap();
        let status = d.status.clone().unwrap_or_default();
        let pods = live_pods(client, ns, name).await;
        if status.available_replicas == Some(replicas as i32)
            && status.updated_replicas == Some(replicas as i32)
            && pods.len() == replicas
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{ns}/{name} not available: {status:?}, pods {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_sets_the_rollout_to_zero_pauses_the_ramp_and_restarts_off_arm64() {
    let env = env();
    let client = env.plane.client().await;
    let ns = "rollback-shop";
    // At 100%, its ramp paused there (as the autopilot pauses a ramp when a
    // workload is held): the moment to roll back.
    let paused = "paused at 100% since 2026-01-01T00:00:00Z: Deployment/web is held off arm64: held: 2 pods CrashLoopBackOff on arm64; remove this annotation to resume";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[
            (ROLLOUT, "100"),
            ("archway.dev/ramp", "10,50,100"),
            ("archway.dev/ramp-step", "1h"),
            (STATUS, paused),
        ],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane.apply(&[json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "replicas": 4,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "main", "image": image}],
                         "terminationGracePeriodSeconds": 0},
            },
        },
    })]);
    available(&client, ns, "web", 4).await;
    let before = live_pods(&client, ns, "web").await;
    assert!(
        before.values().all(|a| a == "arm64"),
        "rollout 100: every pod on arm64: {before:?}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let generation = deployments.get("web").await.unwrap().metadata.generation;

    // --dry-run: the same plan, nothing written.
    let out = archway(
        &env.plane,
        &["rollback", "-n", ns, "--restart", "--dry-run", "-o", "json"],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(
        (
            report["rollout_before"].as_u64(),
            report["rollout"].as_u64()
        ),
        (Some(100), Some(0))
    );
    assert!(
        report["ramp_status"]
            .as_str()
            .unwrap()
            .starts_with("paused at 0% since "),
        "{report:#}"
    );
    assert_eq!(
        report["workloads"],
        json!([{"kind": "Deployment", "name": "web", "on_target": 4, "pods": 4,
                "restart": {"state": "would-restart"}}])
    );
    let table = archway(
        &env.plane,
        &["rollback", "-n", ns, "--restart", "--dry-run"],
    )
    .await;
    assert!(table.status.success(), "{}", text(&table.stderr));
    eprintln!("ROLLBACK --dry-run:\n{}", text(&table.stdout));
    let now = annotations(&client, ns).await;
    assert_eq!(now.get(ROLLOUT).map(String::as_str), Some("100"));
    assert_eq!(now.get(STATUS).map(String::as_str), Some(paused));
    assert_eq!(
        deployments.get("web").await.unwrap().metadata.generation,
        generation
    );
    assert_eq!(live_pods(&client, ns, "web").await, before);

    // The rollback itself.
    let started = Instant::now();
    let out = archway(
        &env.plane,
        &["rollback", "-n", ns, "--restart", "-o", "json"],
    )
    .await;
    eprintln!(
        "ROLLBACK in {:?}:\nstdout:\n{}\nstderr:\n{}",
        started.elapsed(),
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], false);
    let workloads = report["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1, "{report:#}");
    assert_eq!(
        (
            &workloads[0]["kind"],
            &workloads[0]["name"],
            &workloads[0]["on_target"],
            &workloads[0]["pods"],
            &workloads[0]["restart"]["state"],
        ),
        (
            &json!("Deployment"),
            &json!("web"),
            &json!(4),
            &json!(4),
            &json!("available")
        )
    );
    assert_eq!(report["not_restarted"], json!([]));
    let now = annotations(&client, ns).await;
    assert_eq!(now.get(ROLLOUT).map(String::as_str), Some("0"));
    let status = now.get(STATUS).unwrap();
    assert!(
        status.starts_with("paused at 0% since ")
            && status
                .ends_with(": rolled back by archway rollback; remove this annotation to resume"),
        "{status}"
    );
    assert_eq!(report["ramp_status"].as_str(), Some(status.as_str()));
    // When it returns, every pod of the Deployment is a new one, on amd64.
    let after = live_pods(&client, ns, "web").await;
    assert_eq!(after.len(), 4, "{after:?}");
    assert!(after.values().all(|a| a == "amd64"), "{after:?}");
    assert!(
        after.keys().all(|name| !before.contains_key(name)),
        "{before:?} -> {after:?}"
    );
    let template = deployments.get("web").await.unwrap().spec.unwrap().template;
    let restarted = template.metadata.unwrap().annotations.unwrap_or_default();
    assert!(
        restarted.contains_key("kubectl.kubernetes.io/restartedAt"),
        "{restarted:?}"
    );

    // The autopilot leaves a paused ramp where it is: still 0 a little later.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = annotations(&client, ns).await;
    assert_eq!(later.get(ROLLOUT), now.get(ROLLOUT));
    assert_eq!(later.get(STATUS), now.get(STATUS));

    // Run again: nothing is on arm64 any more.
    let again = archway(&env.plane, &["rollback", "-n", ns, "--dry-run"]).await;
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("no Deployment or StatefulSet has pods on arm64"),
        "{}",
        text(&again.stdout)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_that_is_not_opted_in_is_a_clear_error() {
    let env = env();
    let client = env.plane.client().await;
    let ns = "rollback-plain";
    env.plane.create_namespace(ns, &[], &[(ROLLOUT, "100")]);
    let out = archway(&env.plane, &["rollback", "-n", ns, "--restart"]).await;
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "archway: namespace rollback-plain is not opted in to archway (label archway.dev/mode is missing)"
        ),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    // Nothing was written.
    let now = annotations(&client, ns).await;
    assert_eq!(now.get(ROLLOUT).map(String::as_str), Some("100"));

    let out = archway(&env.plane, &["rollback", "-n", "rollback-missing"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("namespace rollback-missing does not exist"),
        "{}",
        text(&out.stderr)
    );
}

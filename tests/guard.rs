//! The rollout guard on the real control plane: the test writes container
//! statuses for pods as a kubelet would (pods annotated
//! `archway.test/kubelet: manual`), and archway, installed from deploy/ with
//! its RBAC, holds the workload or not.
//!
//! One control plane and one `archway serve` for this file. The tests run
//! one at a time (`SERIAL`): one of them restarts archway with another
//! threshold.

use archway_testkit as support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use support::ImageSpec;
use support::controlplane::KUBELET_MANUAL;
use support::workloads::{ContainerState, bound_pods, deployment, write_status};
use support::world::World;

const HOLD_LABEL: &str = "archway.dev/hold";
const HOLD_REASON: &str = "archway.dev/hold-reason";

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env() -> &'static World {
    static ENV: OnceLock<World> = OnceLock::new();
    ENV.get_or_init(|| {
        World::builder(env!("CARGO_BIN_EXE_archway"))
            .kubelet()
            .image("multi:v1", ImageSpec::multi_arch().with_salt("guard"))
            .start()
    })
}

async fn deployment_meta(client: &kube::Client, ns: &str, name: &str) -> Deployment {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments.get(name).await.unwrap()
}

fn hold_of(d: &Deployment) -> Option<(String, String)> {
    let arch = d.metadata.labels.as_ref()?.get(HOLD_LABEL)?.clone();
    let reason = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(HOLD_REASON))
        .cloned()
        .unwrap_or_default();
    Some((arch, reason))
}

/// Waits for the hold on the Deployment; returns it and how long it took.
async fn wait_for_hold(
    client: &kube::Client,
    ns: &str,
    name: &str,
) -> ((String, String), Duration) {
    let started = Instant::now();
    loop {
        if let Some(hold) = hold_of(&deployment_meta(client, ns, name).await) {
            return (hold, started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{ns}/{name} was not held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `kubectl rollout restart`, optionally handing the pods to the fake
/// kubelet (no longer `manual`).
async fn restart(client: &kube::Client, ns: &str, name: &str, generation: u32, manual: bool) {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let kubelet = if manual { json!("manual") } else { Value::Null };
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        "kubectl.kubernetes.io/restartedAt": format!("restart-{generation}"),
        KUBELET_MANUAL: kubelet}}}}});
    deployments
        .patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap();
}

/// What the kubelet does for a deleted pod of the test's (`manual`): it
/// confirms the deletion once the containers are stopped.
async fn confirm_deletions(client: &kube::Client, ns: &str) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..DeleteParams::default()
    };
    for pod in pods.list(&ListParams::default()).await.unwrap().items {
        if pod.metadata.deletion_timestamp.is_some() {
            let _ = pods
                .delete(pod.metadata.name.as_deref().unwrap(), &params)
                .await;
        }
    }
}

/// Waits until the Deployment has rolled out and returns its pods.
async fn rolled_out(client: &kube::Client, ns: &str, name: &str) -> Vec<(Pod, String)> {
    let started = Instant::now();
    loop {
        confirm_deletions(client, ns).await;
        let d = deployment_meta(client, ns, name).await;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let done = d.metadata.generation == status.observed_generation
            && status.updated_replicas == Some(want)
            && status.available_replicas == Some(want)
            && status.replicas == Some(want);
        if done {
            return bound_pods(client, ns, name, want as usize).await;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{ns}/{name} did not roll out: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn decision(pod: &Pod) -> String {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("archway.dev/decision"))
        .cloned()
        .unwrap_or_default()
}

fn count(pods: &[(Pod, String)], arch: &str) -> usize {
    pods.iter().filter(|(_, a)| a == arch).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_failing_on_arm64_is_held_restarted_onto_amd64_and_released() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = env.plane.client().await;
    let ns = "guard-held";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane.apply(&[deployment(ns, "web", &image, 8, true)]);
    let pods = bound_pods(&client, ns, "web", 8).await;
    for (pod, arch) in &pods {
        let label = pod
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("archway.dev/arch");
        assert_eq!(
            label,
            Some(arch),
            "the pod is labelled with where it was placed"
        );
    }
    let arm: Vec<&Pod> = pods
        .iter()
        .filter(|(_, a)| a == "arm64")
        .map(|(p, _)| p)
        .collect();
    assert!(arm.len() >= 2, "rollout 50%: {} of 8 on arm64", arm.len());
    for (pod, arch) in &pods {
        if arch == "amd64" {
            write_status(&client, pod, ContainerState::Running).await;
        }
    }
    write_status(&client, arm[0], ContainerState::CrashLoop).await;
    // Give the guard time to see the first one alone: one pod is under the
    // threshold of 2, so nothing is held yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hold_of(&deployment_meta(&client, ns, "web").await), None);
    write_status(&client, arm[1], ContainerState::CrashLoop).await;
    let ((arch, reason), took) = wait_for_hold(&client, ns, "web").await;
    eprintln!("GUARD: second failing pod to hold on the Deployment: {took:?}");
    assert!(took < Duration::from_secs(5), "held after {took:?}");
    assert_eq!(arch, "arm64");
    assert!(
        reason.starts_with("held: 2 pods CrashLoopBackOff on arm64 since "),
        "{reason}"
    );

    // An Event on the Deployment tells why.
    let events = env
        .plane
        .kubectl(&["-n", ns, "get", "events", "-o", "json"], None);
    let events: Value = serde_json::from_str(&events).unwrap();
    let held = events["items"].as_array().unwrap().iter().any(|e| {
        e["reason"] == "ArchitectureHold"
            && e["involvedObject"]["kind"] == "Deployment"
            && e["involvedObject"]["name"] == "web"
    });
    assert!(held, "no ArchitectureHold event: {events:#}");
    let recorded = env.archway.counter(
        "archway_guard_holds_total",
        &[
            ("architecture", "arm64"),
            ("mode", "enforce"),
            ("result", "recorded"),
        ],
    );
    assert!(recorded >= 1.0, "holds metric: {recorded}");

    // `archway audit` shows it.
    let stdout = env.plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", ns, "-o", "json"],
        &format!("registry: {{insecure: [\"{}\"]}}\n", env.registry.host()),
        &env.plane.admin_kubeconfig,
    );
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    let web = report["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "web")
        .expect("web in the audit");
    assert_eq!(
        web["hold"].as_str(),
        Some(format!("arm64: {reason}").as_str())
    );

    // The hold lives on the Deployment: a restarted archway keeps it.
    env.archway.kill();
    env.archway.start();

    // Running pods are left alone; a rollout restart moves them all.
    let running = bound_pods(&client, ns, "web", 8).await;
    assert_eq!(count(&running, "arm64"), arm.len(), "no pod was evicted");
    restart(&client, ns, "web", 1, false).await;
    let pods = rolled_out(&client, ns, "web").await;
    assert_eq!(count(&pods, "amd64"), 8, "held: every new pod on amd64");
    let steered_away: Vec<String> = pods.iter().map(|(p, _)| decision(p)).collect();
    assert!(
        steered_away
            .iter()
            .any(|d| d.starts_with("amd64: held: 2 pods CrashLoopBackOff on arm64 since ")),
        "{steered_away:?}"
    );

    // One command clears it; the 50 % split resumes.
    env.plane.kubectl(
        &[
            "-n",
            ns,
            "label",
            "deployment",
            "web",
            &format!("{HOLD_LABEL}-"),
        ],
        None,
    );
    let started = Instant::now();
    loop {
        let d = deployment_meta(&client, ns, "web").await;
        // archway removes the reason right after it forgets the hold.
        let reason_left = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(HOLD_REASON))
            .is_some();
        if !reason_left {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the cleared hold's reason lingers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    restart(&client, ns, "web", 2, false).await;
    let pods = rolled_out(&client, ns, "web").await;
    let on_arm = count(&pods, "arm64");
    assert!(
        (2..=6).contains(&on_arm),
        "rollout 50% after clearing: {on_arm} of 8 on arm64"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_crashing_on_every_architecture_is_not_held() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = env.plane.client().await;
    let ns = "guard-both";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane
        .apply(&[deployment(ns, "broken", &image, 6, true)]);
    let pods = bound_pods(&client, ns, "broken", 6).await;
    assert!(
        count(&pods, "arm64") >= 2 && count(&pods, "amd64") >= 1,
        "split"
    );
    let before = env
        .archway
        .counter("archway_guard_failing_everywhere_total", &[]);
    // amd64 first: the guard knows the workload fails there before the
    // arm64 pods reach the threshold.
    for arch in ["amd64", "arm64"] {
        for (pod, _) in pods.iter().filter(|(_, a)| a == arch) {
            write_status(&client, pod, ContainerState::CrashLoop).await;
        }
    }
    let started = Instant::now();
    while env
        .archway
        .counter("archway_guard_failing_everywhere_total", &[])
        <= before
    {
        assert!(started.elapsed() < Duration::from_secs(5), "never judged");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Time for a hold to be written, were one (wrongly) made.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(hold_of(&deployment_meta(&client, ns, "broken").await), None);
    assert!(
        env.archway
            .logs()
            .contains("pods fail on every architecture"),
        "warned in the log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_format_error_on_one_pod_trips_threshold_one() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = env.plane.client().await;
    let set_threshold = |threshold: u32| {
        let text = std::fs::read_to_string(&env.archway.config_path).unwrap();
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        config["guard"] = serde_yaml::from_str(&format!("{{threshold: {threshold}}}")).unwrap();
        std::fs::write(
            &env.archway.config_path,
            serde_yaml::to_string(&config).unwrap(),
        )
        .unwrap();
        env.archway.kill();
        env.archway.start();
    };
    set_threshold(1);
    let ns = "guard-exec";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane.apply(&[deployment(ns, "exec", &image, 2, true)]);
    let pods = bound_pods(&client, ns, "exec", 2).await;
    eprintln!(
        "2 replicas at rollout 50%: {} on arm64",
        count(&pods, "arm64")
    );
    let (arm, _) = pods
        .iter()
        .find(|(_, a)| a == "arm64")
        .expect("one pod on arm64");
    for (pod, arch) in &pods {
        if arch == "amd64" {
            write_status(&client, pod, ContainerState::Running).await;
        }
    }
    write_status(&client, arm, ContainerState::ExecFormat).await;
    let ((arch, reason), took) = wait_for_hold(&client, ns, "exec").await;
    eprintln!("GUARD: exec format error to hold: {took:?}");
    assert_eq!(arch, "arm64");
    assert!(
        reason.starts_with("held: 1 pod exec format error on arm64 since "),
        "{reason}"
    );
    set_threshold(2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_observe_mode_a_hold_is_recorded_but_pods_keep_being_steered() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = env.plane.client().await;
    let ns = "guard-observe";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[
            ("archway.dev/rollout", "100"),
            ("archway.dev/guard", "observe"),
        ],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane
        .apply(&[deployment(ns, "watched", &image, 2, true)]);
    let pods = bound_pods(&client, ns, "watched", 2).await;
    assert_eq!(count(&pods, "arm64"), 2, "rollout 100");
    for (pod, _) in &pods {
        write_status(&client, pod, ContainerState::CrashLoop).await;
    }
    let ((arch, reason), _) = wait_for_hold(&client, ns, "watched").await;
    assert_eq!(arch, "arm64");
    assert!(
        reason.starts_with("held: 2 pods CrashLoopBackOff"),
        "{reason}"
    );
    // Counted once the label is written, a moment after it is visible.
    let started = Instant::now();
    while env.archway.counter(
        "archway_guard_holds_total",
        &[("mode", "observe"), ("result", "recorded")],
    ) < 1.0
    {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "observe hold not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    restart(&client, ns, "watched", 1, false).await;
    let pods = rolled_out(&client, ns, "watched").await;
    assert_eq!(count(&pods, "arm64"), 2, "observe keeps steering");
    assert!(
        pods.iter()
            .all(|(p, _)| decision(p).contains("guard observes held: 2 pods")),
        "{:?}",
        pods.iter().map(|(p, _)| decision(p)).collect::<Vec<_>>()
    );
}

/// A pod author with rights on pods only cannot make the guard hold a
/// workload that is not theirs: pods that name it as their controller
/// (any group, a uid of their own), placed and labelled arm64 by archway
/// and crash-looping there, are not its replicas. The workload's own
/// failing pods, next, are held at once: the guard was watching all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_only_name_a_workload_as_their_owner_cannot_hold_it() {
    let _serial = SERIAL.lock().await;
    let env = env();
    let client = env.plane.client().await;
    let ns = "guard-forged";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane.apply(&[deployment(ns, "web", &image, 2, true)]);
    let real = bound_pods(&client, ns, "web", 2).await;
    assert_eq!(count(&real, "arm64"), 2, "rollout 100");
    for (pod, _) in &real {
        write_status(&client, pod, ContainerState::Running).await;
    }
    let real_rs = real[0].0.metadata.owner_references.as_ref().unwrap()[0].clone();

    // What the attacker writes: the controller reference of the issue (a
    // group that does not exist, so the garbage collector leaves the pods),
    // one naming the real ReplicaSet by name under another group, and the
    // archway label (which admission replaces with its own).
    let owners = [
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "name": "web",
               "uid": "6f1d0d4e-0000-4000-8000-000000000001", "controller": true}),
        json!({"apiVersion": "example.com/v1", "kind": "ReplicaSet", "name": real_rs.name,
               "uid": real_rs.uid, "controller": true}),
        json!({"apiVersion": "example.com/v1", "kind": "Deployment", "name": "web",
               "uid": "6f1d0d4e-0000-4000-8000-000000000002", "controller": true}),
    ];
    let forged: Vec<Value> = owners
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": format!("forged-{i}"), "namespace": ns,
                    "labels": {"app": "forged", "archway.dev/arch": "arm64"},
                    "annotations": {KUBELET_MANUAL: "manual"},
                    "ownerReferences": [owner],
                },
                "spec": {"containers": [{"name": "main", "image": image}],
                         "terminationGracePeriodSeconds": 0},
            })
        })
        .collect();
    env.plane.apply(&forged);
    let forged = bound_pods(&client, ns, "forged", owners.len()).await;
    for (pod, arch) in &forged {
        // The attack is real: archway placed these pods on arm64 and
        // labelled them so; only their owner is not what they say.
        assert_eq!(arch, "arm64");
        let label = pod
            .metadata
            .labels
            .as_ref()
            .unwrap()
            .get("archway.dev/arch");
        assert_eq!(label.map(String::as_str), Some("arm64"));
        write_status(&client, pod, ContainerState::CrashLoop).await;
    }
    // The positive control below holds within a second; three seconds is
    // ample for a (wrong) hold on forged pods to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        hold_of(&deployment_meta(&client, ns, "web").await),
        None,
        "forged pods held a workload that is not theirs"
    );
    let events = env
        .plane
        .kubectl(&["-n", ns, "get", "events", "-o", "json"], None);
    assert!(
        !events.contains("ArchitectureHold"),
        "an ArchitectureHold Event for forged pods: {events}"
    );
    let forged_alive: Api<Pod> = Api::namespaced(client.clone(), ns);
    let left = forged_alive
        .list(&ListParams::default().labels("app=forged"))
        .await
        .unwrap()
        .items
        .len();
    assert_eq!(left, owners.len(), "the forged pods are still there");

    // The workload's own pods failing on arm64 are held as before.
    for (pod, _) in &real {
        write_status(&client, pod, ContainerState::CrashLoop).await;
    }
    let ((arch, reason), took) = wait_for_hold(&client, ns, "web").await;
    eprintln!("GUARD: forged pods ignored; the real ones held in {took:?}");
    assert_eq!(arch, "arm64");
    assert!(
        reason.starts_with("held: 2 pods CrashLoopBackOff on arm64"),
        "{reason}"
    );
}

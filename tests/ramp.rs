//! The migration autopilot on the real control plane: a namespace with a
//! ramp moves itself from step to step, with an Event per step, and a hold
//! on one of its workloads pauses it, saying why, until a person resumes
//! it; so do pods that restart on the target architecture more than on the
//! other, with no hold. archway is installed from deploy/ with its RBAC (the patch of
//! namespaces is the autopilot's).

use archway_testkit as support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use serde_json::json;
use support::ImageSpec;
use support::ramps::{ROLLOUT, STATUS, annotations, follow, ramp_events};
use support::workloads::{ContainerState, bound_pods, deployment, write_status};
use support::world::World;

fn env() -> &'static World {
    static ENV: OnceLock<World> = OnceLock::new();
    ENV.get_or_init(|| {
        World::builder(env!("CARGO_BIN_EXE_archway"))
            .image("multi:v1", ImageSpec::multi_arch().with_salt("ramp"))
            .start()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_ramps_step_by_step_and_a_hold_pauses_it_until_a_person_resumes() {
    let env = env();
    let client = env.plane.client().await;

    // A healthy namespace: 10, 50, 100, two seconds a step.
    let ns = "ramp-healthy";
    let started = Instant::now();
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[
            ("archway.dev/ramp", "10,50,100"),
            ("archway.dev/ramp-step", "2s"),
        ],
    );
    let seen = follow(&client, ns, Duration::from_secs(30), |a| {
        a.get(STATUS)
            .is_some_and(|s| s.starts_with("done at 100% since "))
    })
    .await;
    let took = started.elapsed();
    eprintln!("RAMP: 10,50,100 at 2s a step done in {took:?}; seen {seen:#?}");
    let rollouts: Vec<&str> = seen.iter().map(|(r, _)| r.as_str()).collect();
    let mut steps = rollouts.clone();
    steps.dedup();
    steps.retain(|r| !r.is_empty());
    assert_eq!(steps, ["10", "50", "100"], "every step once, in order");
    assert!(
        seen.iter().any(|(r, s)| r == "10"
            && s.starts_with("holding 10% since ")
            && s.contains("; next 50% due ")),
        "{seen:#?}"
    );
    assert!(
        took >= Duration::from_secs(4),
        "two steps of 2 s held: {took:?}"
    );
    let events = ramp_events(&env.plane, ns);
    let reasons: Vec<&str> = events.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(reasons, ["RampStep", "RampStep", "RampDone"], "{events:#?}");
    assert!(events.iter().all(|(t, _, _)| t == "Normal"));
    assert_eq!(events[0].2, "ramp started: rollout set to 10%");
    assert_eq!(events[1].2, "ramp: 10% held for 2s; rollout set to 50%");

    // A namespace whose Deployment is held: the ramp pauses at its step.
    let ns = "ramp-held";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[
            ("archway.dev/ramp", "10,50,100"),
            ("archway.dev/ramp-step", "3s"),
        ],
    );
    let image = format!("{}/multi:v1", env.registry.host());
    env.plane.apply(&[json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {
            "name": "web", "namespace": ns,
            // As the guard writes it (or a person, to stop the shift).
            "labels": {"archway.dev/hold": "arm64"},
            "annotations": {"archway.dev/hold-reason": "held: 2 pods CrashLoopBackOff on arm64 since 2026-12-04T10:00:00Z"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                         "spec": {"containers": [{"name": "main", "image": image}]}},
        },
    })]);
    let seen = follow(&client, ns, Duration::from_secs(30), |a| {
        a.get(STATUS).is_some_and(|s| s.starts_with("paused at "))
    })
    .await;
    let (rollout, status) = seen.last().unwrap();
    assert_eq!(rollout, "10", "paused where it was: {seen:#?}");
    assert!(
        status.starts_with("paused at 10% since ")
            && status.ends_with(": Deployment/web is held off arm64: held: 2 pods CrashLoopBackOff on arm64 since 2026-12-04T10:00:00Z; remove this annotation to resume"),
        "{status}"
    );
    // It stays paused: no step is taken while paused.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let api: Api<Namespace> = Api::all(client.clone());
    let now = annotations(&api.get(ns).await.unwrap());
    assert_eq!(now.get(ROLLOUT).map(String::as_str), Some("10"));
    assert_eq!(now.get(STATUS), Some(status));
    let events = ramp_events(&env.plane, ns);
    let paused = events
        .iter()
        .find(|(_, r, _)| r == "RampPaused")
        .unwrap_or_else(|| panic!("no RampPaused Event: {events:#?}"));
    assert_eq!(paused.0, "Warning");
    assert!(
        paused
            .2
            .starts_with("ramp paused at 10%: Deployment/web is held off arm64: ")
            && paused.2.contains("kubectl rollout restart moves them"),
        "{}",
        paused.2
    );

    // A person clears the hold and removes the status: the ramp goes on.
    env.plane.kubectl(
        &["-n", ns, "label", "deployment", "web", "archway.dev/hold-"],
        None,
    );
    env.plane
        .kubectl(&["annotate", "namespace", ns, &format!("{STATUS}-")], None);
    let seen = follow(&client, ns, Duration::from_secs(30), |a| {
        a.get(ROLLOUT).is_some_and(|r| r == "50")
    })
    .await;
    eprintln!("RAMP: resumed: {seen:#?}");
}

/// The ramp compares the namespace's pods on the two architectures: pods
/// that restart on arm64 and not on amd64, too few times for the guard to
/// hold anything, still pause it, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_restarting_on_the_target_more_than_on_the_other_pause_the_ramp() {
    let env = env();
    let client = env.plane.client().await;
    let ns = "ramp-health";
    env.plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let image = env.registry.image("multi:v1");
    env.plane.apply(&[deployment(ns, "api", &image, 6, true)]);
    let pods = bound_pods(&client, ns, "api", 6).await;
    let on = |arch: &str| pods.iter().filter(|(_, a)| a == arch).count();
    assert_eq!((on("arm64"), on("amd64")), (3, 3), "rollout 50 of 6");
    // Three restarts each on arm64 (the guard holds at 5, or on
    // CrashLoopBackOff), none on amd64.
    for (pod, arch) in &pods {
        let state = match arch.as_str() {
            "arm64" => ContainerState::Restarted(3),
            _ => ContainerState::Running,
        };
        write_status(&client, pod, state).await;
    }

    // The ramp starts at the rollout in force; a step of a minute gives the
    // comparison (every 5 s) time to speak first.
    let api: Api<Namespace> = Api::all(client.clone());
    let ramp = json!({"metadata": {"annotations": {
        "archway.dev/ramp": "50,100", "archway.dev/ramp-step": "60s"}}});
    api.patch(
        ns,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&ramp),
    )
    .await
    .unwrap();
    let seen = follow(&client, ns, Duration::from_secs(30), |a| {
        a.get(STATUS).is_some_and(|s| s.starts_with("paused at "))
    })
    .await;
    let (rollout, status) = seen.last().unwrap();
    eprintln!("RAMP HEALTH: {seen:#?}");
    assert_eq!(rollout, "50", "paused where it was: {seen:#?}");
    assert!(
        status.contains(": the namespace's pods fare worse on arm64: pods on arm64 restart ")
            && status.contains(
                " times per pod-hour, while on amd64 (0.00); remove this annotation to resume"
            ),
        "{status}"
    );
    let events = ramp_events(&env.plane, ns);
    assert!(
        events.iter().any(|(t, r, n)| t == "Warning"
            && r == "RampPaused"
            && n.starts_with("ramp paused at 50%: the namespace's pods fare worse on arm64: ")),
        "{events:#?}"
    );
    // Nothing was held: the comparison alone paused it.
    let held = env.plane.kubectl(
        &[
            "-n",
            ns,
            "get",
            "deployments",
            "-l",
            "archway.dev/hold",
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(held.trim(), "", "no hold expected");
}

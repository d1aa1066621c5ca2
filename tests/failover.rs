//! Gate failover with two replicas behind a real load balancer: the leader
//! (the replica whose gate controller releases pods) is killed a moment
//! after a burst of cold gated pods; the other replica takes the Lease over
//! and releases every pod placed, because it looked their images up while
//! it followed. A control plane of its own: the kill would disturb others.
//!
//! The follower is down while the pods are created, so it reviews none of
//! them (its webhook would otherwise start their lookups): only its gate
//! controller, following the gated pods, can have looked their images up
//! by the time it leads.

use archway_testkit as support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use support::world::World;
use support::{CountingProxy, Fault, ImageSpec, Registry, RegistryOptions};

const PODS: usize = 50;
/// Each manifest answer is held this long: the lookups outlast the kill.
const REGISTRY_DELAY: Duration = Duration::from_secs(12);
/// A pod gated longer is released unplaced. Shorter than a takeover (the
/// Lease's 15 s) plus a lookup started only then (12 s): a new leader that
/// had not looked the image up would release these pods unplaced.
const GATE_TIMEOUT: Duration = Duration::from_secs(25);
const GATE: &str = "archway.dev/inspect";

fn is_gated(pod: &Pod) -> bool {
    let gates = pod.spec.as_ref().and_then(|s| s.scheduling_gates.as_ref());
    gates.is_some_and(|g| g.iter().any(|g| g.name == GATE))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_killed_after_a_burst_of_gated_pods_leaves_none_released_unplaced() {
    let registry = Registry::start(RegistryOptions::plain());
    // The proxy lives on a runtime of its own, as long as the test.
    let slow = CountingProxy::start_detached(registry.addr());
    slow.set_fault_rule(|r| match r.is_manifest() {
        true => Fault::Delay(REGISTRY_DELAY),
        false => Fault::None,
    });
    // The registry stays up behind the proxy as long as the test.
    let World {
        plane,
        registry: _registry,
        archway,
    } = World::builder(env!("CARGO_BIN_EXE_archway"))
        .registry(registry)
        .image("multi:v1", ImageSpec::multi_arch().with_salt("failover"))
        .insecure_registries(&[slow.host()])
        .configure(|config| {
            config["gate"]["timeout"] = format!("{}s", GATE_TIMEOUT.as_secs()).into();
            config["registry"]["requestTimeout"] = "30s".into();
        })
        .start_replicas(2);
    let started = Instant::now();
    let leader = loop {
        if let Some(holder) = plane.lease_holder() {
            break holder;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let follower = (archway.replicas.iter())
        .find(|r| r.pod_name() != leader)
        .expect("two replicas");
    follower.terminate();
    let ns = "failover";
    plane.create_namespace(
        ns,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100"), ("archway.dev/cold", "gate")],
    );
    let client = plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let image = format!("{}/multi:v1", slow.host());
    let burst = Instant::now();
    let creates = (0..PODS).map(|i| {
        let pods = pods.clone();
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("cold-{i}")},
            "spec": {"containers": [{"name": "main", "image": image}]},
        }))
        .unwrap();
        async move { pods.create(&PostParams::default(), &pod).await.unwrap() }
    });
    let created = futures::future::join_all(creates).await;
    assert!(created.iter().all(is_gated), "every pod gated");
    // The follower is back, following; it never saw the reviews.
    follower.start();
    (archway.balancer).wait_until_up(follower.pod_name(), Duration::from_secs(10));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed = (archway.replicas.iter())
        .find(|r| r.pod_name() == leader)
        .expect("the leader is a replica");
    killed.kill();
    let killed_at = burst.elapsed();

    // Every pod released, none by the timeout.
    let mut new_leader = None;
    let limit = Instant::now() + GATE_TIMEOUT + Duration::from_secs(20);
    let (gated, unplaced) = loop {
        if new_leader.is_none() {
            new_leader = plane
                .lease_holder()
                .filter(|h| *h != leader)
                .map(|h| (h, burst.elapsed()));
        }
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let gated = list.iter().filter(|p| is_gated(p)).count();
        let unplaced = (list.iter())
            .filter(|p| {
                let annotations = p.metadata.annotations.as_ref();
                annotations.is_some_and(|a| a.contains_key("archway.dev/ungated"))
            })
            .count();
        if gated == 0 || Instant::now() > limit {
            break (gated, unplaced);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let released_at = burst.elapsed();
    eprintln!(
        "FAILOVER pods={PODS} registry delay {REGISTRY_DELAY:?}, leader {leader} killed at \
         {killed_at:.1?}, new leader {new_leader:?}; all released by {released_at:.1?}; \
         still gated {gated}, released unplaced {unplaced}"
    );
    assert_eq!(gated, 0, "pods still gated after the gate's timeout");
    assert_eq!(unplaced, 0, "pods released unplaced after the failover");
    assert!(new_leader.is_some(), "the other replica took the Lease");
}

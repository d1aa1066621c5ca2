//! The API server killed and restarted under a running archway: archway's
//! watches recover by themselves, with no restart of archway, and reviews
//! keep working. A control plane of its own, since the outage would disturb
//! the tests of tests/controlplane.rs.

use archway_testkit as support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use support::ImageSpec;
use support::world::World;

/// Whether archway patches a dry-run pod of `image` in `namespace`.
async fn is_patched(client: &kube::Client, namespace: &str, image: &str) -> bool {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "main", "image": image}]},
    }))
    .unwrap();
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    match pods.create(&params, &pod).await {
        Ok(stored) => stored
            .metadata
            .annotations
            .is_some_and(|a| a.contains_key("archway.dev/decision")),
        // The API server is still coming back.
        Err(_) => false,
    }
}

async fn time_until_patched(
    client: &kube::Client,
    namespace: &str,
    image: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    while !is_patched(client, namespace, image).await {
        assert!(
            started.elapsed() < limit,
            "{namespace} not enforced after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn archway_outlives_an_api_server_restart() {
    let World {
        plane,
        registry,
        archway,
    } = World::builder(env!("CARGO_BIN_EXE_archway"))
        .image("app:v1", ImageSpec::multi_arch())
        .start();
    let image = registry.image("app:v1");
    plane.create_namespace(
        "before",
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    let client = plane.client().await;
    time_until_patched(&client, "before", &image, Duration::from_secs(5)).await;
    let pid = archway.pid().expect("archway runs");

    // Down for 3 s: archway's watches fail and retry with backoff meanwhile.
    let down = Instant::now();
    plane.restart_apiserver(Duration::from_secs(3));
    eprintln!("API server back after {:?}", down.elapsed());
    let client = plane.client().await;

    // Reviews work again, from archway's memory of the namespace.
    let back = time_until_patched(&client, "before", &image, Duration::from_secs(10)).await;
    eprintln!("reviews patched again {back:?} after the API server was ready");

    // The watches recovered: a namespace opted in after the restart is seen.
    plane.create_namespace(
        "after",
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    let recovered = time_until_patched(&client, "after", &image, Duration::from_secs(60)).await;
    eprintln!("a namespace labelled after the restart was enforced after {recovered:?}");

    // Once recovered, label changes take effect within a second again.
    plane.create_namespace("later", &[], &[("archway.dev/rollout", "100")]);
    plane.kubectl(
        &["label", "namespace", "later", "archway.dev/mode=enforce"],
        None,
    );
    let later = time_until_patched(&client, "later", &image, Duration::from_secs(1)).await;
    eprintln!("and a later label after {later:?}");

    // The same archway process served throughout.
    assert_eq!(archway.pid(), Some(pid), "archway was not restarted");
    assert!(
        archway.counter("archway_reviews_total", &[("namespace", "after")]) >= 1.0,
        "archway reviewed the pods of the namespace labelled after the restart"
    );
}

//! What archway costs a user: pod CREATE latency through the real
//! kube-apiserver with archway's webhook configured, against the same run
//! with no webhook configuration.
//!
//! ```text
//! cargo bench --bench apicost            # 1,000 creates each way
//! APICOST_PODS=5000 cargo bench --bench apicost
//! ```
//!
//! It starts the tests' control plane (tests/support/controlplane.rs), a
//! registry with one multi-arch image, and `archway serve` (release build)
//! installed from deploy/. The image is looked up once before measuring, so
//! every review is a cached one. Creates are sent one at a time from one
//! client, alternating blocks of 100 with and without archway so that drift
//! in the API server or etcd (compaction, garbage collection) weighs on both
//! the same; archway's webhook configuration is deleted and applied again
//! between blocks, each time checked to be in effect before measuring. Pods
//! are deleted between blocks, so the scheduler's work stays the same size.
//!
//! Run by `cargo test` (without `--bench`), it does nothing.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::controlplane::{ControlPlane, NodePool};
use support::install::InstalledArchway;
use support::webhook::install_crypto;
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

const NAMESPACE: &str = "apicost";
const BLOCK: usize = 100;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    install_crypto();
    let pods: usize = std::env::var("APICOST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // `cargo bench` builds the binary with the bench profile (release):
    // archway as deployed.
    let archway = std::path::PathBuf::from(env!("CARGO_BIN_EXE_archway"));

    let plane = ControlPlane::start();
    plane.create_nodes(&NodePool::standard());
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch());
    registry.push(&layout.dir, "app:v1", Format::Oci);
    let image = registry.image("app:v1");
    let installed = InstalledArchway::install(&plane, &archway, &[registry.host()], |config| {
        // One log line per review is archway's default; keep it, as a user
        // would, but on warn the figures are the same within noise.
        config["timeBudget"] = "2500ms".into();
    });
    plane.create_namespace(
        NAMESPACE,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let webhook = applicable(&plane.kubectl(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "archway",
            "-o",
            "json",
        ],
        None,
    ));

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (with, without) = runtime.block_on(async {
        let client = plane.client().await;
        let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
        // The image's lookup, so that every measured review is cached.
        create(&api, &image, "warm").await;
        assert!(
            is_patched(&api, "warm").await,
            "archway did not patch the warm-up pod"
        );
        let mut with = Vec::new();
        let mut without = Vec::new();
        let mut block = 0;
        while with.len() < pods || without.len() < pods {
            let archway_on = block % 2 == 0;
            set_webhook(&plane, &webhook, archway_on);
            wait_until_effective(&api, &image, archway_on).await;
            let samples = if archway_on { &mut with } else { &mut without };
            for i in 0..BLOCK.min(pods - samples.len()) {
                let name = format!("b{block}-{i}");
                let started = Instant::now();
                create(&api, &image, &name).await;
                samples.push(started.elapsed());
            }
            clear(&api).await;
            block += 1;
        }
        (with, without)
    });
    let reviews = installed.counter("archway_reviews_total", &[("namespace", NAMESPACE)]);
    report(pods, &with, &without, reviews);
}

async fn create(api: &Api<Pod>, image: &str, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "apicost"}},
        "spec": {"containers": [{"name": "main", "image": image}],
                 "terminationGracePeriodSeconds": 0},
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

async fn is_patched(api: &Api<Pod>, name: &str) -> bool {
    let pod = api.get(name).await.unwrap();
    pod.metadata
        .annotations
        .is_some_and(|a| a.contains_key("archway.dev/decision"))
}

/// The object as read back, without what the server owns (uid,
/// resourceVersion, managedFields...), so it can be applied again after a
/// delete.
fn applicable(read: &str) -> String {
    let mut object: serde_json::Value = serde_json::from_str(read).unwrap();
    let metadata = &object["metadata"];
    object["metadata"] = json!({"name": metadata["name"], "labels": metadata["labels"]});
    object.to_string()
}

/// Applies archway's webhook configuration, or deletes it.
fn set_webhook(plane: &ControlPlane, webhook: &str, on: bool) {
    if on {
        plane.kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=apicost",
                "-f",
                "-",
            ],
            Some(webhook),
        );
    } else {
        plane.kubectl(&["delete", "mutatingwebhookconfiguration", "archway"], None);
    }
}

/// The API server's webhook informer lags a change by a moment: probe with
/// dry-run creates until archway is (or is no longer) called.
async fn wait_until_effective(api: &Api<Pod>, image: &str, on: bool) {
    let started = Instant::now();
    loop {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "main", "image": image}]},
        }))
        .unwrap();
        let stored = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &pod,
            )
            .await
            .unwrap();
        let patched = stored
            .metadata
            .annotations
            .is_some_and(|a| a.contains_key("archway.dev/decision"));
        if patched == on {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "webhook change not in effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn clear(api: &Api<Pod>) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    api.delete_collection(&params, &ListParams::default().labels("bench=apicost"))
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(pods: usize, with: &[Duration], without: &[Duration], reviews: f64) {
    let mut with = with.to_vec();
    let mut without = without.to_vec();
    with.sort();
    without.sort();
    println!(
        "pod CREATE latency through kube-apiserver, {pods} creates each way, one at a time (ms)"
    );
    println!(
        "{:<24} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p99", "p99.9", "max"
    );
    let row = |name: &str, s: &[Duration]| {
        println!(
            "{name:<24} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            percentile(s, 0.5),
            percentile(s, 0.99),
            percentile(s, 0.999),
            percentile(s, 1.0)
        );
    };
    row("with archway", &with);
    row("no webhook configured", &without);
    println!(
        "{:<24} {:>8.3} {:>8.3} {:>8.3}",
        "difference",
        percentile(&with, 0.5) - percentile(&without, 0.5),
        percentile(&with, 0.99) - percentile(&without, 0.99),
        percentile(&with, 0.999) - percentile(&without, 0.999)
    );
    println!("archway reviews counted in the namespace: {reviews}");
    let p50 = percentile(&with, 0.5) - percentile(&without, 0.5);
    let p99 = percentile(&with, 0.99) - percentile(&without, 0.99);
    println!(
        "goal: at most +1 ms at p50 and +3 ms at p99: {}",
        if p50 <= 1.0 && p99 <= 3.0 {
            "MET"
        } else {
            "MISSED"
        }
    );
}

//! archway's memory with the rollout guard following many pods: RSS of
//! `archway serve` (release build) before and after 10,000 pods labelled
//! `archway.dev/arch` exist, all through the real kube-apiserver.
//!
//! ```text
//! cargo bench --bench guardrss                   # 10,000 pods
//! GUARDRSS_PODS=20000 cargo bench --bench guardrss
//! ```
//!
//! The pods are made by Deployments (20 of them) in a namespace at rollout
//! 50 %, so archway's webhook labels each one and the guard follows it as
//! it would in a cluster. No kubelet runs, but the scheduler binds every
//! pod (there are nodes enough), as the guard follows bound pods only.
//! Once the guard's `archway_guard_watched_pods` gauge shows every pod, it
//! prints VmRSS and VmHWM from /proc.
//!
//! Run by `cargo test` (without `--bench`), it does nothing.

use archway_testkit as support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::ImageSpec;
use support::controlplane::NodePool;
use support::webhook::install_crypto;
use support::world::World;

const NAMESPACE: &str = "guardrss";
const DEPLOYMENTS: usize = 20;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    install_crypto();
    let pods: usize = std::env::var("GUARDRSS_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let archway = release_archway();
    // The guard follows bound pods only: nodes enough for every pod (250
    // each), half of them arm64 and tainted as the standard pools are.
    let per_arch = pods.div_ceil(2 * 250) + 2;
    let World {
        plane,
        registry,
        archway: installed,
    } = World::builder(archway)
        .nodes(&[
            NodePool::new("amd64", "linux", "amd64", per_arch),
            NodePool::new("arm64", "linux", "arm64", per_arch).tainted(
                "kubernetes.io/arch",
                "arm64",
                "NoSchedule",
            ),
        ])
        .image("app:v1", ImageSpec::multi_arch())
        .start();
    let image = registry.image("app:v1");
    let pid = installed.pid().expect("archway runs");
    plane.create_namespace(
        NAMESPACE,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    std::thread::sleep(Duration::from_secs(2));
    let before = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));

    let started = Instant::now();
    let per = pods.div_ceil(DEPLOYMENTS);
    let objects: Vec<_> = (0..DEPLOYMENTS)
        .map(|i| {
            let name = format!("app-{i}");
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "replicas": per,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {
                        "metadata": {"labels": {"app": name}},
                        "spec": {"containers": [{"name": "main", "image": image}]},
                    },
                },
            })
        })
        .collect();
    plane.apply(&objects);
    let total = per * DEPLOYMENTS;
    let mut watched = 0.0;
    while watched < total as f64 {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the guard follows {watched} of {total} pods"
        );
        std::thread::sleep(Duration::from_secs(2));
        watched = installed.counter("archway_guard_watched_pods", &[]);
    }
    let created = started.elapsed();
    std::thread::sleep(Duration::from_secs(5));
    let after = (status_kib(pid, "VmRSS:"), status_kib(pid, "VmHWM:"));
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "guardrss: {total} labelled pods followed after {created:.0?}\n\
         before: VmRSS {:.1} MiB, VmHWM {:.1} MiB\n\
         after:  VmRSS {:.1} MiB, VmHWM {:.1} MiB\n\
         growth: {:.0} bytes of RSS per pod (negative: start-up memory returned)",
        mib(before.0),
        mib(before.1),
        mib(after.0),
        mib(after.1),
        (after.0 as f64 - before.0 as f64) * 1024.0 / total as f64
    );
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn release_archway() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("GUARDRSS_ARCHWAY") {
        return path.into();
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--release", "--bin", "archway"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("cargo build --release");
    assert!(status.success(), "cargo build --release failed");
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/archway")
}

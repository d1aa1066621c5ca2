//! Issue 24, item 2: the gate controller watches every pod labelled
//! `archway.dev/gated=true`, in every namespace, and anyone who may create
//! pods may set that label. On the real control plane, 60 labelled pods of
//! about a megabyte in a namespace that never opted in must not move
//! `archway serve`'s memory when it (re)lists them: the watch keeps a slim
//! view of each pod and lists one pod a page (`controllers::gate`).

use archway_testkit as support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use support::controlplane::{ControlPlane, wait_for};
use support::world::World;

const NAMESPACE: &str = "gate-memory";
const PODS: usize = 60;
/// Each pod's size as JSON: most of it in env values (an object's
/// annotations are limited to 256 KiB in all), under the ~1.5 MB that
/// etcd takes in one request.
const POD_BYTES: usize = 1_100_000;
const CONTAINERS: usize = 4;
const ANNOTATION_BYTES: usize = 200_000;
/// How much archway's peak may rise over its idle peak. The relist reads
/// one pod per page (about 1.1 MB of JSON, decoded once), so the rise is a
/// few pods' worth whatever the count: 7.4 to 10.4 MiB measured here
/// (the idle figure comes from the process before the restart, so the
/// allocator's start-up noise counts too). Keeping the 60 pods would
/// cost over 60 MiB; the code before the slim watch rose by 200.
const ALLOWED_MIB: f64 = 24.0;

/// A labelled, ungated pod of `POD_BYTES` bytes, bound to a node that does
/// not exist, so that no scheduler or kubelet acts on it.
fn big_pod(index: usize) -> Value {
    let build = |env_bytes: usize| {
        let containers: Vec<Value> = (0..CONTAINERS)
            .map(|c| {
                json!({
                    "name": format!("c{c}"),
                    "image": "registry.invalid/filler:v1",
                    "env": [{"name": "FILLER", "value": "e".repeat(env_bytes)}],
                })
            })
            .collect();
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": format!("big-{index:02}"),
                "labels": {"archway.dev/gated": "true"},
                "annotations": {"example.com/filler": "a".repeat(ANNOTATION_BYTES)},
            },
            "spec": {"nodeName": "nowhere", "containers": containers},
        })
    };
    let base = serde_json::to_vec(&build(0)).unwrap().len();
    let pod = build((POD_BYTES - base) / CONTAINERS);
    let size = serde_json::to_vec(&pod).unwrap().len();
    assert!(size.abs_diff(POD_BYTES) < CONTAINERS, "pod of {size} bytes");
    pod
}

/// `VmRSS` or `VmHWM` of process `pid`, in MiB.
fn vm_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    let kib: f64 = (status.lines())
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kib / 1024.0
}

/// How many `watch` requests of archway's for labelled pods the API
/// server's audit log holds: the watcher starts its watch once its list
/// of every page is read.
fn gated_watches(plane: &ControlPlane) -> usize {
    (plane.audit_events().iter())
        .filter(|e| e["verb"] == "watch" && e["stage"] == "ResponseStarted")
        .filter(|e| e["user"]["username"] == "system:serviceaccount:archway:archway")
        .filter(|e| {
            let uri = e["requestURI"].as_str().unwrap_or_default();
            let uri = uri.replace("%2F", "/").replace("%3D", "=");
            uri.starts_with("/api/v1/pods?") && uri.contains("labelSelector=archway.dev/gated=true")
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_megabyte_pods_in_any_namespace_leave_archway_s_memory_alone() {
    let World { plane, archway, .. } = World::builder(env!("CARGO_BIN_EXE_archway"))
        .nodes(&[])
        .start();
    // Idle: archway ready, its gate controller watching no pod.
    wait_for("archway's gate watch", Duration::from_secs(30), || {
        (gated_watches(&plane) > 0).then_some(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = archway.pid().expect("archway running");
    let (idle_rss, idle) = (vm_mib(pid, "VmRSS"), vm_mib(pid, "VmHWM"));

    // Never opted in: no archway.dev/mode label.
    plane.create_namespace(NAMESPACE, &[], &[]);
    let client = plane.client().await;
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let started = Instant::now();
    let mut size = 0;
    for index in 0..PODS {
        let pod = big_pod(index);
        size = serde_json::to_vec(&pod).unwrap().len();
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod)
            .await
            .unwrap_or_else(|e| panic!("create pod {index}: {e}"));
    }
    eprintln!(
        "{PODS} pods of {size} bytes created in {:?}",
        started.elapsed()
    );

    // A new archway lists them all when its controller starts.
    let watches = gated_watches(&plane);
    archway.kill();
    archway.start();
    wait_for(
        "the restarted archway to list the labelled pods and watch",
        Duration::from_secs(120),
        || (gated_watches(&plane) > watches).then_some(()),
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = archway.pid().expect("archway running after the relist");
    let peak = vm_mib(pid, "VmHWM");
    println!("GATE MEMORY idle={idle:.1} peak={peak:.1} pods={PODS} size={size}");
    println!(
        "(MiB: idle VmRSS={idle_rss:.1}, VmRSS after the relist={:.1})",
        vm_mib(pid, "VmRSS")
    );
    assert!(
        peak - idle <= ALLOWED_MIB,
        "archway's peak rose from {idle:.1} to {peak:.1} MiB listing {PODS} labelled pods of {size} bytes"
    );
}

//! A stopped archway has nothing left running: every watch, the guard, the
//! gate controller (which gives its Lease up) and the reloader are
//! components of one runtime, stopped and joined when it stops. archway
//! runs in-process here, on a tokio runtime of its own, so the test can
//! count that runtime's live tasks before and after the stop.

use archway_testkit as support;

use std::time::{Duration, Instant};

use support::controlplane::ControlPlane;
use support::webhook::install_crypto;

const IDENTITY: &str = "archway-shutdown-test";

#[test]
fn a_stopped_archway_leaves_no_task_running_and_gives_its_lease_up() {
    install_crypto();
    // Not a World: archway runs in-process here, on a control plane of its own.
    let plane = ControlPlane::start();
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: set before any thread of this test reads the environment;
    // the test binary holds this one test.
    unsafe {
        std::env::set_var("KUBECONFIG", &plane.admin_kubeconfig);
        std::env::set_var("POD_NAME", IDENTITY);
    }
    let config = archway::config::Config::from_yaml(
        "policySource: cluster\n\
         server: { listen: 127.0.0.1:0, adminListen: 127.0.0.1:0 }\n\
         gate: { leaseNamespace: default, leaseDuration: 15s }\n",
    )
    .expect("configuration");
    let config_path = dir.path().join("archway.yaml");
    std::fs::write(&config_path, "policySource: cluster\n").unwrap();
    let loader: archway::serve::reload::Loader =
        std::sync::Arc::new(|| archway::config::Config::from_yaml("policySource: cluster\n"));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    // `run` borrows the directory for as long as it serves.
    let self_signed: &'static std::path::Path =
        Box::leak(dir.path().to_path_buf().into_boxed_path());
    let served = runtime.spawn(archway::serve::runtime::run(
        config,
        self_signed,
        Some((config_path, loader)),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Running: the gate controller leads (its Lease names this replica).
    let started = Instant::now();
    while plane.lease_holder().as_deref() != Some(IDENTITY) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gate controller never took its Lease"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let running = runtime.metrics().num_alive_tasks();
    eprintln!("SHUTDOWN: {running} tasks alive while serving");
    // The server, the namespace, node, owner and hold watches, the guard,
    // the settings report, the gate controller and its election, the
    // reloader: the count must see them, or the check below proves nothing.
    assert!(running >= 12, "only {running} tasks alive while serving");

    let stopping = Instant::now();
    stop_tx.send(()).unwrap();
    let result = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), served).await })
        .expect("archway stopped within 20 s")
        .expect("archway's task");
    result.expect("archway ran");
    let took = stopping.elapsed();
    // An aborted task is released a moment after its abort.
    let mut left = runtime.metrics().num_alive_tasks();
    let settle = Instant::now();
    while left > 0 && settle.elapsed() < Duration::from_secs(2) {
        runtime.block_on(async { tokio::time::sleep(Duration::from_millis(20)).await });
        left = runtime.metrics().num_alive_tasks();
    }
    eprintln!("SHUTDOWN: stopped in {took:?}; {left} tasks alive after");
    assert_eq!(left, 0, "tasks left running after archway stopped");
    assert!(took < Duration::from_secs(5), "stopping took {took:?}");
    // The Lease was given up, so another replica takes over at once.
    assert_ne!(
        plane.lease_holder().as_deref(),
        Some(IDENTITY),
        "the Lease is still held"
    );
}

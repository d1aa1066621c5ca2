//! `tests/cluster.sh`'s engine: the tests' own control-plane harness
//! (tests/testkit) run as a long-lived process, so a person can try archway
//! on a real control plane with the same pieces the tests use.
//!
//! ```text
//! clusterkit run --state DIR
//!     etcd, kube-apiserver, kube-controller-manager and kube-scheduler; an
//!     amd64 node pool and a tainted arm64 pool; the fake kubelet; a registry
//!     with sample images; deploy/ applied and `archway serve` on the host.
//!     Writes DIR/env (KUBECONFIG=..., KUBECTL=..., REGISTRY=..., IMAGE_...=...)
//!     once everything is ready, and runs until SIGTERM or SIGINT. Every
//!     process it started dies with it.
//! ```
//!
//! Run by `cargo test` without a command, it does nothing.

use archway_testkit as support;

use std::path::PathBuf;
use std::process::ExitCode;

use support::ImageSpec;
use support::controlplane::binaries;
use support::webhook::install_crypto;
use support::world::World;

/// The sample images: (variable printed by `up`, reference, what it publishes).
const SAMPLES: [(&str, &str, &str); 3] = [
    ("IMAGE_MULTI_ARCH", "sample/multi-arch:v1", "both"),
    ("IMAGE_AMD64_ONLY", "sample/amd64-only:v1", "amd64"),
    ("IMAGE_ARM64_ONLY", "sample/arm64-only:v1", "arm64"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some("run") {
        eprintln!("clusterkit: the engine of tests/cluster.sh (see the source for its commands)");
        return ExitCode::SUCCESS;
    }
    let Some(state) = args
        .iter()
        .position(|a| a == "--state")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from)
    else {
        eprintln!("clusterkit run: --state DIR is required");
        return ExitCode::FAILURE;
    };
    install_crypto();
    run(state);
    ExitCode::SUCCESS
}

fn run(state: PathBuf) {
    let mut world = World::builder(env!("CARGO_BIN_EXE_archway"))
        .kept_in(&state.join("controlplane"))
        .kubelet();
    for (_, reference, publishes) in SAMPLES {
        let spec = match publishes {
            "both" => ImageSpec::multi_arch(),
            arch => ImageSpec::single(if arch == "amd64" { "amd64" } else { "arm64" }),
        };
        world = world.image(reference, spec.with_salt(reference));
    }
    let World {
        plane,
        registry,
        archway,
    } = world.start();
    eprintln!(
        "clusterkit: control plane up on {}, registry {} with the sample images",
        plane.server_url(),
        registry.host()
    );

    let mut env = vec![
        format!("KUBECONFIG={}", plane.admin_kubeconfig.display()),
        format!("KUBECTL={}", binaries().join("kubectl").display()),
        format!("REGISTRY={}", registry.host()),
    ];
    for (variable, reference, _) in SAMPLES {
        env.push(format!("{variable}={}", registry.image(reference)));
    }
    env.push(format!("ARCHWAY_LOG={}", archway.log.display()));
    env.push(format!(
        "ARCHWAY_METRICS=http://127.0.0.1:{}/metrics",
        archway.admin_port
    ));
    let env_file = state.join("env");
    let partial = state.join("env.partial");
    std::fs::write(&partial, env.join("\n") + "\n").expect("write env");
    std::fs::rename(&partial, &env_file).expect("publish env");
    eprintln!("clusterkit: ready; {}", env_file.display());

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    });
    eprintln!("clusterkit: stopping");
    drop(archway);
    drop(plane);
}

//! archway's test kit: the world its integration tests and benches run in.
//! Real registry processes and OCI image layouts ([`registry`], [`images`]),
//! a counting, fault-injecting proxy ([`proxy`]) and a token server
//! ([`token`]); the real Kubernetes control plane ([`controlplane`]) with a
//! fake kubelet ([`kubelet`]), archway installed on it as deploy/ installs
//! it, alone or as replicas behind HAProxy ([`install`], [`balancer`]), and
//! [`world::World`], which starts all of that in one call; archway's webhook
//! served in-process ([`webhook`]), and replicas asking each other
//! ([`peers`]); a second webhook ([`injector`]); the HTTP stand-in for the
//! API server ([`apiserver`]); helm, promtool and kubectl ([`tools`]); a real Prometheus server ([`prometheus`]); a
//! `metrics.k8s.io` stand-in behind the aggregation layer
//! ([`metrics_api`]); headless chromium ([`browser`]); a namespace's ramp
//! followed ([`ramps`]).
//!
//! A test file uses it as `use archway_testkit as support;`. It is one
//! library, compiled once, rather than a module every test binary compiled
//! again.
//!
//! archway dev-depends on this crate, and this crate depends on the archway
//! library (for [`webhook`], which serves archway's own router in-process).
//! Cargo allows that cycle: the kit links the ordinary archway library,
//! the one integration tests link, so their types are the same. archway's
//! own unit tests (`cargo test --lib`) never use the kit, so the second
//! archway library their binary could see is never linked into it. The
//! kit is therefore one crate, not two split along that dependency; the
//! price is that a change to archway's library rebuilds the kit (once)
//! before the tests that use it.
//!
//! `Registry` methods block (they run processes and poll); inside a
//! `#[tokio::test]` whose proxy must keep serving meanwhile (e.g. a skopeo
//! push through the proxy), call them via `spawn_blocking` or use the
//! `multi_thread` flavor.

use std::path::Path;

pub mod apiserver;
pub mod balancer;
pub mod browser;
pub mod controlplane;
pub mod http;
pub mod images;
pub mod injector;
pub mod install;
pub mod kubelet;
pub mod metrics_api;
pub mod peers;
pub mod process;
pub mod prometheus;
pub mod proxy;
pub mod ramps;
pub mod registry;
pub mod tls;
pub mod token;
pub mod tools;
pub mod webhook;
pub mod workloads;
pub mod world;

// What most tests use, at the top.
pub use http::{MANIFEST_MEDIA_TYPES, accept_all_manifests, sha256_digest};
pub use images::{ImageSpec, Layout, build_layout};
pub use proxy::{CountingProxy, Fault, Recorded};
pub use registry::{Format, Registry, RegistryOptions, skopeo_inspect_raw};
pub use tls::TestCa;

/// The repository's top folder (this crate lives in tests/testkit), where
/// deploy/ and the build scripts of tests/ are.
pub fn repo_root() -> &'static Path {
    (Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2))
        .expect("tests/testkit has a grandparent")
}

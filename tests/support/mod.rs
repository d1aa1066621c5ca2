//! Shared integration-test harness: real registry processes, OCI image layouts,
//! a counting/fault-injecting proxy and a token server.
//!
//! Each test file includes it with `mod support;` and uses only part of it.
//!
//! `Registry` methods block (they run processes and poll); inside a
//! `#[tokio::test]` whose proxy must keep serving meanwhile (e.g. a skopeo push
//! through the proxy), call them via `spawn_blocking` or use the
//! `multi_thread` flavor.
#![allow(dead_code, unused_imports)]

pub mod apiserver;
pub mod balancer;
pub mod controlplane;
pub mod http;
pub mod images;
pub mod injector;
pub mod install;
pub mod kubelet;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod tls;
pub mod token;
pub mod webhook;
pub mod workloads;
pub mod world;

pub use http::{HttpResponse, MANIFEST_MEDIA_TYPES, accept_all_manifests, sha256_digest};
pub use images::{ATTESTATION_PLATFORM, ImageSpec, Layout, PlatformManifest, build_layout};
pub use proxy::{CountingProxy, Fault, Recorded};
pub use registry::{Format, Registry, RegistryOptions, skopeo_inspect_raw, skopeo_push};
pub use tls::TestCa;
pub use token::{TokenRequest, TokenServer};

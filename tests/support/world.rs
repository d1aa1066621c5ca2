//! One test world: the real control plane with the standard node pools
//! (amd64-0..2, and arm64-0..2 tainted `kubernetes.io/arch=arm64:NoSchedule`),
//! the fake kubelet, a registry holding the sample images, and archway
//! installed as deploy/ installs it. A test adds what it needs on top.

use std::path::Path;
use std::time::Instant;

use super::controlplane::{ControlPlane, NodePool};
use super::install::InstalledArchway;
use super::kubelet::FakeKubelet;
use super::webhook::install_crypto;
use super::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

/// The sample images every world's registry holds, and the architectures
/// each publishes.
pub const SAMPLE_IMAGES: [(&str, &[&str]); 3] = [
    ("multi:v1", &["amd64", "arm64"]),
    ("amd64-only:v1", &["amd64"]),
    ("arm64-only:v1", &["arm64"]),
];

pub struct World {
    pub plane: ControlPlane,
    pub registry: Registry,
    pub archway: InstalledArchway,
}

impl World {
    /// Starts it all; archway trusts `registries` (plain HTTP) besides the
    /// world's own, and `edit` changes its configuration first.
    pub fn start(registries: &[String], edit: impl FnOnce(&mut serde_yaml::Value)) -> World {
        install_crypto();
        let started = Instant::now();
        let plane = ControlPlane::start();
        plane.create_nodes(&NodePool::standard());
        FakeKubelet::spawn(plane.admin_kubeconfig.clone());
        let registry = Registry::start(RegistryOptions::plain());
        let dir = tempfile::tempdir().unwrap();
        for (reference, archs) in SAMPLE_IMAGES {
            push_sample(&registry, dir.path(), archs, reference);
        }
        let mut insecure = vec![registry.host()];
        insecure.extend(registries.iter().cloned());
        let archway = InstalledArchway::install(
            &plane,
            env!("CARGO_BIN_EXE_archway").as_ref(),
            &insecure,
            edit,
        );
        eprintln!("control plane and archway ready in {:?}", started.elapsed());
        World {
            plane,
            registry,
            archway,
        }
    }

    /// `reference` in the world's registry, as a pod names it.
    pub fn image(&self, reference: &str) -> String {
        format!("{}/{reference}", self.registry.host())
    }
}

/// Pushes an image publishing `archs` (linux) to `registry` as
/// `reference`, its layout built under `dir`.
pub fn push_sample(registry: &Registry, dir: &Path, archs: &[&'static str], reference: &str) {
    let spec = match archs {
        [one] => ImageSpec::single(one),
        _ => ImageSpec::multi_arch(),
    };
    // skopeo reads `oci:PATH:TAG`: no ':' in the folder's name.
    let folder = dir.join(reference.replace([':', '/'], "-"));
    let layout = build_layout(&folder, &spec.with_salt(reference));
    registry.push(&layout.dir, reference, Format::Oci);
}

//! One test world: the real control plane with node pools, a registry
//! holding the images a test needs, archway installed as deploy/ installs
//! it (one replica, or several behind HAProxy), and, when asked for, the
//! fake kubelet. A test adds what it needs on top.
//!
//! ```ignore
//! let world = World::builder(env!("CARGO_BIN_EXE_archway"))
//!     .kubelet()
//!     .image("multi:v1", ImageSpec::multi_arch().with_salt("guard"))
//!     .start();
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::controlplane::{ControlPlane, NodePool};
use crate::install::{InstalledArchway, Replicas};
use crate::kubelet::FakeKubelet;
use crate::webhook::install_crypto;
use crate::{ImageSpec, Registry, RegistryOptions};

/// The images [`WorldBuilder::sample_images`] pushes, and the
/// architectures each publishes.
pub const SAMPLE_IMAGES: [(&str, &[&str]); 3] = [
    ("multi:v1", &["amd64", "arm64"]),
    ("amd64-only:v1", &["amd64"]),
    ("arm64-only:v1", &["arm64"]),
];

/// A started world. `archway` is an [`InstalledArchway`] from
/// [`WorldBuilder::start`], or [`Replicas`] behind a load balancer from
/// [`WorldBuilder::start_replicas`].
pub struct World<Archway = InstalledArchway> {
    pub plane: ControlPlane,
    pub registry: Registry,
    pub archway: Archway,
}

impl World {
    /// A world whose archway is the binary at `archway`: an integration
    /// test or bench of the archway package passes
    /// `env!("CARGO_BIN_EXE_archway")`, which only it can name.
    pub fn builder(archway: impl Into<PathBuf>) -> WorldBuilder {
        WorldBuilder {
            archway: archway.into(),
            kept_in: None,
            nodes: NodePool::standard(),
            kubelet: None,
            registry: None,
            images: Vec::new(),
            insecure_registries: Vec::new(),
            configure: Box::new(|_| {}),
        }
    }
}

impl<Archway> World<Archway> {
    /// `reference` in the world's registry, as a pod names it.
    pub fn image(&self, reference: &str) -> String {
        self.registry.image(reference)
    }
}

/// What a world is made of, set before it starts. Unless told otherwise:
/// the standard node pools, no kubelet, a fresh plain-HTTP registry with
/// no image, and deploy/'s configuration trusting that registry.
pub struct WorldBuilder {
    archway: PathBuf,
    kept_in: Option<PathBuf>,
    nodes: Vec<NodePool>,
    /// [`FakeKubelet::spawn`] when asked for: a function rather than a
    /// flag, so that a test without the kubelet links none of its code.
    kubelet: Option<fn(PathBuf)>,
    registry: Option<Registry>,
    images: Vec<(String, ImageSpec)>,
    insecure_registries: Vec<String>,
    configure: Box<dyn FnOnce(&mut serde_yaml::Value)>,
}

impl WorldBuilder {
    /// Keeps the control plane's files (etcd data, kubeconfigs, logs) in
    /// `dir`, rather than in a temporary folder removed with it.
    pub fn kept_in(mut self, dir: &Path) -> Self {
        self.kept_in = Some(dir.to_path_buf());
        self
    }

    /// These node pools instead of [`NodePool::standard`]; none at all
    /// leaves every pod unscheduled.
    pub fn nodes(mut self, pools: &[NodePool]) -> Self {
        self.nodes = pools.to_vec();
        self
    }

    /// Runs the [`FakeKubelet`], for the life of the test process, so that
    /// bound pods run and deleted ones go (Deployments then roll).
    pub fn kubelet(mut self) -> Self {
        self.kubelet = Some(FakeKubelet::spawn);
        self
    }

    /// Uses `registry`, already started (a test that puts a proxy in front
    /// of it needs its address first), instead of a fresh plain one.
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Pushes `spec` to the world's registry as `reference`.
    pub fn image(mut self, reference: &str, spec: ImageSpec) -> Self {
        self.images.push((reference.to_string(), spec));
        self
    }

    /// Pushes the [`SAMPLE_IMAGES`], as [`sample_image`] builds them.
    pub fn sample_images(mut self) -> Self {
        for (reference, archs) in SAMPLE_IMAGES {
            self = self.image(reference, sample_image(archs, reference));
        }
        self
    }

    /// archway also trusts these plain-HTTP registries (`host:port`), such
    /// as a proxy in front of the world's registry.
    pub fn insecure_registries(mut self, hosts: &[String]) -> Self {
        self.insecure_registries.extend(hosts.iter().cloned());
        self
    }

    /// `edit` changes archway's configuration (deploy/'s, with the
    /// registries and listeners set) before archway starts.
    pub fn configure(mut self, edit: impl FnOnce(&mut serde_yaml::Value) + 'static) -> Self {
        self.configure = Box::new(edit);
        self
    }

    /// Starts the world with one archway, which the webhook calls directly.
    pub fn start(self) -> World {
        self.start_with(|plane, archway, insecure, edit| {
            InstalledArchway::install(plane, archway, insecure, edit)
        })
    }

    /// Starts the world with `replicas` replicas of archway behind a load
    /// balancer, as deploy/ runs them behind their Service.
    pub fn start_replicas(self, replicas: usize) -> World<Replicas> {
        self.start_with(|plane, archway, insecure, edit| {
            InstalledArchway::install_replicas(plane, archway, insecure, replicas, edit)
        })
    }

    fn start_with<Archway>(
        self,
        install: impl FnOnce(
            &ControlPlane,
            &Path,
            &[String],
            Box<dyn FnOnce(&mut serde_yaml::Value)>,
        ) -> Archway,
    ) -> World<Archway> {
        install_crypto();
        let started = Instant::now();
        let plane = match &self.kept_in {
            Some(dir) => ControlPlane::start_in(dir),
            None => ControlPlane::start(),
        };
        if !self.nodes.is_empty() {
            plane.create_nodes(&self.nodes);
        }
        if let Some(spawn_kubelet) = self.kubelet {
            spawn_kubelet(plane.admin_kubeconfig.clone());
        }
        let registry = (self.registry).unwrap_or_else(|| Registry::start(RegistryOptions::plain()));
        for (reference, spec) in &self.images {
            registry.push_spec(reference, spec);
        }
        let mut insecure = vec![registry.host()];
        insecure.extend(self.insecure_registries);
        let archway = install(&plane, &self.archway, &insecure, self.configure);
        eprintln!("control plane and archway ready in {:?}", started.elapsed());
        World {
            plane,
            registry,
            archway,
        }
    }
}

/// A sample image publishing `archs` (linux), salted with its `reference`
/// so that no two references share a digest.
pub fn sample_image(archs: &[&'static str], reference: &str) -> ImageSpec {
    let spec = match archs {
        [one] => ImageSpec::single(one),
        _ => ImageSpec::multi_arch(),
    };
    spec.with_salt(reference)
}

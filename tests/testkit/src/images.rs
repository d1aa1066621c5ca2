//! OCI image layouts on disk (oci-layout, index.json, blobs/sha256/...) with
//! real digests, so skopeo can push them to a registry.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::http::sha256_digest;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const IN_TOTO: &str = "application/vnd.in-toto+json";

/// buildx marks attestation manifests with this platform.
pub const ATTESTATION_PLATFORM: (&str, &str) = ("unknown", "unknown");

/// `(os, architecture, variant)`.
pub type Platform = (&'static str, &'static str, Option<&'static str>);

/// What to build. `index: false` requires exactly one platform and produces a
/// bare image manifest; `attestation` adds a buildx-style attestation manifest
/// per platform. `salt` goes into every layer so different specs never share
/// digests.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    pub platforms: Vec<Platform>,
    pub attestation: bool,
    pub index: bool,
    pub salt: String,
}

impl ImageSpec {
    /// linux/amd64 + linux/arm64 with buildx attestations (OCI only: skopeo
    /// cannot convert in-toto layers to Docker schema 2).
    pub fn multi_arch_with_attestation() -> ImageSpec {
        ImageSpec::index_of(&[LINUX_AMD64, LINUX_ARM64], true, "multi-attest")
    }

    /// linux/amd64 + linux/arm64, no attestation (pushable as a Docker manifest list).
    pub fn multi_arch() -> ImageSpec {
        ImageSpec::index_of(&[LINUX_AMD64, LINUX_ARM64], false, "multi")
    }

    /// A single-architecture linux image (bare manifest, no index).
    pub fn single(arch: &'static str) -> ImageSpec {
        ImageSpec {
            platforms: vec![("linux", arch, None)],
            attestation: false,
            index: false,
            salt: format!("single-{arch}"),
        }
    }

    /// linux/amd64 + linux/arm/v7.
    pub fn arm_v7() -> ImageSpec {
        ImageSpec::index_of(&[LINUX_AMD64, ("linux", "arm", Some("v7"))], false, "armv7")
    }

    /// linux/amd64 next to windows/amd64.
    pub fn with_windows() -> ImageSpec {
        ImageSpec::index_of(&[LINUX_AMD64, ("windows", "amd64", None)], false, "windows")
    }

    pub fn index_of(platforms: &[Platform], attestation: bool, salt: &str) -> ImageSpec {
        ImageSpec {
            platforms: platforms.to_vec(),
            attestation,
            index: true,
            salt: salt.to_string(),
        }
    }

    pub fn with_salt(mut self, salt: &str) -> ImageSpec {
        self.salt = salt.to_string();
        self
    }
}

const LINUX_AMD64: Platform = ("linux", "amd64", None);
const LINUX_ARM64: Platform = ("linux", "arm64", None);

/// One platform's image manifest inside a layout.
#[derive(Clone, Debug)]
pub struct PlatformManifest {
    pub platform: Platform,
    pub digest: String,
    pub config_digest: String,
    pub layer_digest: String,
}

/// A layout written by [`build_layout`].
#[derive(Clone, Debug)]
pub struct Layout {
    pub dir: PathBuf,
    /// Digest and media type of what `index.json` points at (index or manifest).
    pub top_digest: String,
    pub top_media_type: &'static str,
    pub top_bytes: Vec<u8>,
    pub manifests: Vec<PlatformManifest>,
    /// Attestation manifest digests (empty unless `spec.attestation`).
    pub attestations: Vec<String>,
}

impl AsRef<Path> for Layout {
    fn as_ref(&self) -> &Path {
        &self.dir
    }
}

struct Blobs<'a> {
    dir: &'a Path,
}

impl Blobs<'_> {
    /// Stores `bytes` as a blob and returns its descriptor core (digest, size).
    fn put(&self, bytes: &[u8]) -> (String, usize) {
        let digest = sha256_digest(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.join("blobs/sha256").join(hex), bytes).expect("write blob");
        (digest, bytes.len())
    }
}

/// Writes an OCI image layout for `spec` into `dir` (created if missing).
pub fn build_layout(dir: &Path, spec: &ImageSpec) -> Layout {
    assert!(!spec.platforms.is_empty(), "ImageSpec needs a platform");
    assert!(
        spec.index || (spec.platforms.len() == 1 && !spec.attestation),
        "a non-index ImageSpec holds exactly one platform and no attestation"
    );
    std::fs::create_dir_all(dir.join("blobs/sha256")).expect("create layout dir");
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .expect("write oci-layout");
    let blobs = Blobs { dir };

    let mut manifests = Vec::new();
    let mut attestations = Vec::new();
    let mut entries: Vec<Value> = Vec::new();
    let mut attestation_entries: Vec<Value> = Vec::new();
    for &platform in &spec.platforms {
        let built = image_manifest(&blobs, platform, &spec.salt);
        let mut plat = json!({"os": platform.0, "architecture": platform.1});
        if let Some(v) = platform.2 {
            plat["variant"] = json!(v);
        }
        entries.push(json!({
            "mediaType": OCI_MANIFEST,
            "digest": built.0.digest,
            "size": built.1,
            "platform": plat,
        }));
        if spec.attestation {
            let (digest, size) = attestation_manifest(&blobs, &built.0.digest);
            attestation_entries.push(json!({
                "mediaType": OCI_MANIFEST,
                "digest": digest,
                "size": size,
                "annotations": {
                    "vnd.docker.reference.digest": built.0.digest,
                    "vnd.docker.reference.type": "attestation-manifest",
                },
                "platform": {"os": ATTESTATION_PLATFORM.0, "architecture": ATTESTATION_PLATFORM.1},
            }));
            attestations.push(digest);
        }
        manifests.push(built.0);
    }
    // buildx lists attestations after all platform images.
    entries.extend(attestation_entries);

    let (top_media_type, top_bytes) = if spec.index {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": entries,
        });
        (OCI_INDEX, serde_json::to_vec(&index).unwrap())
    } else {
        let bytes = std::fs::read(
            dir.join("blobs/sha256")
                .join(manifests[0].digest.trim_start_matches("sha256:")),
        )
        .unwrap();
        (OCI_MANIFEST, bytes)
    };
    let (top_digest, top_size) = blobs.put(&top_bytes);
    // skopeo's `oci:DIR` (no tag) accepts an index.json with a single entry.
    let root = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": top_media_type,
            "digest": top_digest,
            "size": top_size,
            "annotations": {"org.opencontainers.image.ref.name": "latest"},
        }],
    });
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&root).unwrap())
        .expect("write index.json");

    Layout {
        dir: dir.to_path_buf(),
        top_digest,
        top_media_type,
        top_bytes,
        manifests,
        attestations,
    }
}

/// Layer + config + manifest for one platform; returns the manifest size too.
fn image_manifest(blobs: &Blobs, platform: Platform, salt: &str) -> (PlatformManifest, usize) {
    let (os, arch, variant) = platform;
    let plat = match variant {
        Some(v) => format!("{os}/{arch}/{v}"),
        None => format!("{os}/{arch}"),
    };
    // Content names the platform so each platform's layer digest differs.
    let tar = tar_with_file("platform.txt", format!("{salt} {plat}\n").as_bytes());
    let diff_id = sha256_digest(&tar);
    let (layer_digest, layer_size) = blobs.put(&gzip(&tar));

    let mut config = json!({
        "architecture": arch,
        "os": os,
        "config": {"Cmd": ["/platform.txt"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "archway test harness"}],
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    let (config_digest, config_size) = blobs.put(&serde_json::to_vec(&config).unwrap());

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": layer_size}],
    });
    let (digest, size) = blobs.put(&serde_json::to_vec(&manifest).unwrap());
    (
        PlatformManifest {
            platform,
            digest,
            config_digest,
            layer_digest,
        },
        size,
    )
}

/// A buildx-style attestation manifest (in-toto layer) for `subject`.
fn attestation_manifest(blobs: &Blobs, subject: &str) -> (String, usize) {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "archway-test", "digest": {"sha256": subject.trim_start_matches("sha256:")}}],
        "predicate": {"spdxVersion": "SPDX-2.3"},
    });
    let statement = serde_json::to_vec(&statement).unwrap();
    let (layer_digest, layer_size) = blobs.put(&statement);
    let config = json!({
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    });
    let (config_digest, config_size) = blobs.put(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": [{
            "mediaType": IN_TOTO,
            "digest": layer_digest,
            "size": layer_size,
            "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"},
        }],
    });
    blobs.put(&serde_json::to_vec(&manifest).unwrap())
}

/// A ustar archive holding one regular file (hand-rolled: one header block,
/// the data padded to 512, and two zero blocks).
fn tar_with_file(name: &str, data: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100, "tar name too long");
    let mut header = [0u8; 512];
    header[..name.len()].copy_from_slice(name.as_bytes());
    let mut field = |off: usize, len: usize, value: &str| {
        assert!(value.len() <= len, "tar field overflow");
        header[off..off + value.len()].copy_from_slice(value.as_bytes());
    };
    field(100, 8, "0000644");
    field(108, 8, "0000000");
    field(116, 8, "0000000");
    field(124, 12, &format!("{:011o}", data.len()));
    field(136, 12, "00000000000");
    field(156, 1, "0");
    field(257, 6, "ustar");
    field(263, 2, "00");
    // The checksum is computed with its own field set to spaces.
    header[148..156].copy_from_slice(b"        ");
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());

    let mut out = header.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// Deterministic gzip (flate2 writes mtime 0), so digests are reproducible.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip finish")
}

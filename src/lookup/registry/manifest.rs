//! Reading manifests, indexes and image configs: pure functions over bytes,
//! tolerant of what registries really serve and strict about what matters.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::decision::platform::Platform;
use crate::lookup::image::DigestAlgorithm;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// Sent on every manifest request: the CNCF registry serves an index only
/// when asked for it, and some registries reject a request without Accept.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// More entries than any real multi-platform image has; a guard against an
/// index built to make us allocate.
pub const MAX_INDEX_ENTRIES: usize = 256;

/// What a manifest tells about platforms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestContent {
    /// An index or manifest list: its entries name their platforms.
    Index(BTreeSet<Platform>),
    /// A single image: the platform is in the config blob.
    Image { config_digest: String },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is not valid JSON: {0}")]
    Json(String),
    #[error("manifest schema version {0} is not supported (only version 2)")]
    SchemaVersion(i64),
    #[error("unsupported manifest media type {0:?}")]
    MediaType(String),
    #[error("index has {0} entries, more than the limit of {MAX_INDEX_ENTRIES}")]
    TooManyEntries(usize),
    #[error("index lists no platform")]
    NoPlatforms,
    #[error("image config has no os or architecture")]
    ConfigWithoutPlatform,
    #[error("invalid digest {0:?}")]
    Digest(String),
    #[error(transparent)]
    Platform(#[from] crate::decision::platform::PlatformError),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<Vec<RawIndexEntry>>,
    config: Option<RawDescriptor>,
}

#[derive(Deserialize)]
struct RawIndexEntry {
    platform: Option<RawPlatform>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
struct RawDescriptor {
    digest: String,
}

#[derive(Deserialize)]
struct RawPlatform {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

/// Parses a manifest body. `content_type` is the response header, used only
/// when the body does not name its own media type.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ManifestContent, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    match raw.schema_version {
        Some(2) => {}
        Some(other) => return Err(ManifestError::SchemaVersion(other)),
        None => return Err(ManifestError::Json("missing schemaVersion".into())),
    }
    let media_type = raw
        .media_type
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_string()))
        .filter(|m| !m.is_empty());
    let is_index = match media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        // An OCI manifest may omit mediaType; its shape then says what it is.
        None | Some("application/json") | Some("application/octet-stream") => {
            raw.manifests.is_some()
        }
        Some(other) => return Err(ManifestError::MediaType(other.to_string())),
    };
    if is_index {
        let entries = raw.manifests.unwrap_or_default();
        if entries.len() > MAX_INDEX_ENTRIES {
            return Err(ManifestError::TooManyEntries(entries.len()));
        }
        // One malformed platform makes the whole index unreadable: dropping
        // it would make the image look as if it ran on fewer architectures.
        let platforms: BTreeSet<Platform> = entries
            .iter()
            .filter(|entry| !is_attestation(entry))
            .filter_map(|entry| entry.platform.as_ref())
            .filter(|p| !p.os.is_empty() && !p.architecture.is_empty())
            .map(|p| Platform::parse(&p.os, &p.architecture, p.variant.as_deref()))
            .collect::<Result<_, _>>()?;
        if platforms.is_empty() {
            return Err(ManifestError::NoPlatforms);
        }
        Ok(ManifestContent::Index(platforms))
    } else {
        let config = raw
            .config
            .ok_or_else(|| ManifestError::Json("image manifest has no config".into()))?;
        validate_digest(&config.digest)?;
        Ok(ManifestContent::Image {
            config_digest: config.digest,
        })
    }
}

/// buildx adds provenance and SBOM entries to indexes; they are not images.
fn is_attestation(entry: &RawIndexEntry) -> bool {
    let unknown = entry
        .platform
        .as_ref()
        .is_some_and(|p| p.os == "unknown" || p.architecture == "unknown");
    let annotated = entry
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("vnd.docker.reference.type"));
    unknown || annotated
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    os: String,
    #[serde(default)]
    architecture: String,
    variant: Option<String>,
}

/// Parses an image config blob into its platform.
pub fn parse_config(body: &[u8]) -> Result<Platform, ManifestError> {
    let raw: RawConfig =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    if raw.os.is_empty() || raw.architecture.is_empty() {
        return Err(ManifestError::ConfigWithoutPlatform);
    }
    Ok(Platform::parse(
        &raw.os,
        &raw.architecture,
        raw.variant.as_deref(),
    )?)
}

/// A digest as the OCI image spec registers them (sha256, sha384,
/// sha512, lowercase hex of the right length), and which algorithm it is,
/// so that what a registry sends is checked with that algorithm.
pub fn validate_digest(digest: &str) -> Result<DigestAlgorithm, ManifestError> {
    crate::lookup::image::parse_digest(digest)
        .map_err(|_| ManifestError::Digest(crate::decision::text::truncate_for_message(digest)))
}

/// `<algorithm>:<hex>` of a body, to check what a registry sent against
/// the digest we asked for.
pub fn digest_of(algorithm: DigestAlgorithm, body: &[u8]) -> String {
    use std::fmt::Write;
    let hash = match algorithm {
        DigestAlgorithm::Sha256 => &ring::digest::SHA256,
        DigestAlgorithm::Sha384 => &ring::digest::SHA384,
        DigestAlgorithm::Sha512 => &ring::digest::SHA512,
    };
    let digest = ring::digest::digest(hash, body);
    let mut out = String::with_capacity(algorithm.name().len() + 1 + 2 * digest.as_ref().len());
    out.push_str(algorithm.name());
    out.push(':');
    for byte in digest.as_ref() {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// `sha256:<hex>` of a body: the digest registries name content by.
pub fn sha256_digest(body: &[u8]) -> String {
    digest_of(DigestAlgorithm::Sha256, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(value: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&value).unwrap()
    }

    fn platforms(content: ManifestContent) -> Vec<String> {
        match content {
            ManifestContent::Index(p) => p.iter().map(ToString::to_string).collect(),
            other => panic!("not an index: {other:?}"),
        }
    }

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn index_lists_platforms_without_attestations() {
        let index = body(json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}},
                {"digest": DIGEST, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"digest": DIGEST, "platform": {"os": "unknown", "architecture": "unknown"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
                {"digest": DIGEST, "platform": {"os": "linux", "architecture": "s390x"},
                 "annotations": {"vnd.docker.reference.type": "attestation-manifest"}},
            ]
        }));
        assert_eq!(
            platforms(parse_manifest(None, &index).unwrap()),
            ["linux/amd64", "linux/arm64"]
        );
    }

    #[test]
    fn docker_list_keeps_os_and_variant() {
        let list = body(json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_LIST,
            "manifests": [
                {"digest": DIGEST, "platform": {"os": "windows", "architecture": "amd64", "os.version": "10.0"}},
                {"digest": DIGEST, "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}},
                {"digest": DIGEST}
            ]
        }));
        assert_eq!(
            platforms(parse_manifest(None, &list).unwrap()),
            ["linux/arm/v7", "windows/amd64"]
        );
    }

    #[test]
    fn media_type_from_header_or_shape() {
        let index = body(json!({"schemaVersion": 2, "manifests": [
            {"digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}}]}));
        assert!(matches!(
            parse_manifest(None, &index),
            Ok(ManifestContent::Index(_))
        ));
        let image = body(json!({"schemaVersion": 2, "config": {"digest": DIGEST}, "layers": []}));
        assert_eq!(
            parse_manifest(
                Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
                &image
            ),
            Ok(ManifestContent::Image {
                config_digest: DIGEST.into()
            })
        );
    }

    #[test]
    fn rejects_what_cannot_be_read() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "JSON"),
            (b"<html>".to_vec(), "JSON"),
            (
                body(json!({"schemaVersion": 1, "name": "x"})),
                "schema version 1",
            ),
            (body(json!({"mediaType": OCI_INDEX})), "schemaVersion"),
            (
                body(json!({"schemaVersion": 2, "mediaType": "text/plain"})),
                "media type",
            ),
            (
                body(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})),
                "no platform",
            ),
            (
                body(json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST})),
                "no config",
            ),
            (
                body(
                    json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": "md5:x"}}),
                ),
                "digest",
            ),
            (
                body(
                    json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"platform": {"os": "unknown", "architecture": "unknown"}}]}),
                ),
                "no platform",
            ),
        ];
        for (input, expected) in cases {
            let err = parse_manifest(None, &input)
                .expect_err(expected)
                .to_string();
            assert!(err.contains(expected), "{err} should mention {expected}");
        }
    }

    #[test]
    fn caps_index_entries() {
        let entries: Vec<_> = (0..=MAX_INDEX_ENTRIES)
            .map(
                |_| json!({"digest": DIGEST, "platform": {"os": "linux", "architecture": "amd64"}}),
            )
            .collect();
        let index = body(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}));
        assert_eq!(
            parse_manifest(None, &index),
            Err(ManifestError::TooManyEntries(MAX_INDEX_ENTRIES + 1))
        );
    }

    #[test]
    fn rejects_platforms_that_are_not_short_tokens() {
        let long = "x".repeat(4000);
        let entries: Vec<_> = (0..MAX_INDEX_ENTRIES)
            .map(|i| json!({"digest": DIGEST, "platform": {"os": "linux", "architecture": format!("{long}{i}")}}))
            .collect();
        let index = body(json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}));
        let error = parse_manifest(None, &index).unwrap_err();
        assert!(matches!(error, ManifestError::Platform(_)), "{error}");
        assert!(error.to_string().len() < 200);
        let config = body(json!({"os": "linux", "architecture": "amd64", "variant": "v1\nforged"}));
        assert!(matches!(
            parse_config(&config),
            Err(ManifestError::Platform(_))
        ));
    }

    #[test]
    fn config_gives_platform() {
        let config =
            body(json!({"os": "linux", "architecture": "arm", "variant": "v7", "rootfs": {}}));
        assert_eq!(parse_config(&config).unwrap().to_string(), "linux/arm/v7");
        assert_eq!(
            parse_config(b"{}"),
            Err(ManifestError::ConfigWithoutPlatform)
        );
        assert!(parse_config(b"[").is_err());
    }

    #[test]
    fn digests() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(validate_digest(DIGEST), Ok(DigestAlgorithm::Sha256));
        assert!(validate_digest(&DIGEST.to_uppercase()).is_err());
        assert!(validate_digest("sha256:abc").is_err());
        // sha512 (and sha384) digests are valid OCI and checked as such.
        let sha512_of_nothing = "sha512:cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e";
        assert_eq!(digest_of(DigestAlgorithm::Sha512, b""), sha512_of_nothing);
        assert_eq!(
            validate_digest(sha512_of_nothing),
            Ok(DigestAlgorithm::Sha512)
        );
        assert!(digest_of(DigestAlgorithm::Sha384, b"").starts_with("sha384:38b060a751ac9638"));
        assert_eq!(digest_of(DigestAlgorithm::Sha384, b"").len(), 7 + 96);
    }
}

//! Image references as the kubelet reads them: `nginx` is
//! `docker.io/library/nginx:latest`, and when a reference carries both a tag
//! and a digest, the digest is what gets pulled.

use std::fmt;
use std::str::FromStr;

use oci_client::{ParseError, Reference};

/// Docker Hub's name in references, and the host that actually serves its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";

/// A parsed, normalised image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct ImageRefError {
    pub reference: String,
    pub reason: String,
}

impl ImageRef {
    /// The registry as written in references (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`): the key for credentials, mirrors and insecure hosts.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The host to send API requests to when no mirror is configured.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API_HOST
        } else {
            &self.registry
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }

    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// What to ask the registry for: the digest when there is one (it wins
    /// over the tag, as in the kubelet), else the tag.
    pub fn manifest_reference(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// A digest names immutable content, so its answer may be cached long.
    pub fn is_pinned(&self) -> bool {
        self.digest.is_some()
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let error = |reason: &str| ImageRefError {
            reference: short_image(input),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(error("empty"));
        }
        if input.trim() != input {
            return Err(error("leading or trailing whitespace"));
        }
        // Checked before the grammar's regex, which would otherwise spend
        // seconds on a megabyte-long string a pod author wrote.
        if input.len() > MAX_REFERENCE_LEN {
            return Err(error(&format!(
                "longer than {MAX_REFERENCE_LEN} characters"
            )));
        }
        let parsed = Reference::from_str(input).map_err(|e| {
            // As in Docker: when the lowercased reference would parse, the
            // uppercase letters are the problem, and that is the useful answer.
            let uppercase = input.chars().any(|c| c.is_ascii_uppercase())
                && Reference::from_str(&input.to_ascii_lowercase()).is_ok();
            if uppercase {
                error("repository name must be lowercase")
            } else {
                error(&describe(&e))
            }
        })?;
        // Repository names are lowercase (distribution spec); the parser
        // lets some uppercase through (`HHH/app` on Docker Hub), whose
        // printed form would not read back. Refuse it, as Docker does.
        if parsed.repository().chars().any(|c| c.is_ascii_uppercase()) {
            return Err(error("repository name must be lowercase"));
        }
        let (registry, repository) = match parsed.registry() {
            // Docker Hub's legacy spellings all mean docker.io, as in the
            // kubelet, official images included (`library/`).
            "index.docker.io" | "registry-1.docker.io" | DOCKER_HUB => {
                let repository = parsed.repository();
                let repository = if repository.contains('/') {
                    repository.to_string()
                } else {
                    format!("library/{repository}")
                };
                (DOCKER_HUB.to_string(), repository)
            }
            other => (other.to_string(), parsed.repository().to_string()),
        };
        let digest = parsed.digest().map(str::to_string);
        // oci-spec fills in `latest` only when there is neither tag nor digest.
        let tag = parsed.tag().map(str::to_string);
        Ok(ImageRef {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

fn describe(error: &ParseError) -> String {
    match error {
        ParseError::NameContainsUppercase => "repository name must be lowercase".to_string(),
        ParseError::ReferenceInvalidFormat => {
            "not of the form [registry/]repository[:tag][@digest]".to_string()
        }
        other => other.to_string(),
    }
}

/// Longer than any real reference (Docker caps names at 255 characters).
pub const MAX_REFERENCE_LEN: usize = 1024;

/// Strings from pod authors, kept short in messages and logs.
pub fn truncate_for_message(input: &str) -> String {
    truncate_to(input, 256)
}

/// An image as messages name it: long enough to recognise, short enough
/// that the reason after it survives the API server's warning limits.
pub fn short_image(image: &str) -> String {
    truncate_to(image, 96)
}

fn truncate_to(input: &str, max: usize) -> String {
    if input.len() <= max {
        return input.to_string();
    }
    let mut end = max;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &input[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn short_names_are_docker_hub_library_latest() {
        let image = parse("nginx");
        assert_eq!(image.to_string(), "docker.io/library/nginx:latest");
        assert_eq!(image.api_host(), "registry-1.docker.io");
        assert_eq!(image.manifest_reference(), "latest");
        assert!(!image.is_pinned());
    }

    #[test]
    fn docker_hub_user_repository_and_legacy_hosts() {
        assert_eq!(
            parse("bitnami/redis:7").to_string(),
            "docker.io/bitnami/redis:7"
        );
        assert_eq!(
            parse("index.docker.io/library/busybox:1").to_string(),
            "docker.io/library/busybox:1"
        );
    }

    #[test]
    fn registry_with_port_and_nested_path() {
        let image = parse("127.0.0.1:5000/team/app/api:v1.2");
        assert_eq!(image.registry(), "127.0.0.1:5000");
        assert_eq!(image.api_host(), "127.0.0.1:5000");
        assert_eq!(image.repository(), "team/app/api");
        assert_eq!(image.tag(), Some("v1.2"));
    }

    #[test]
    fn digest_wins_over_tag() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let image = parse(&format!("ghcr.io/org/app:v1@{digest}"));
        assert_eq!(image.tag(), Some("v1"));
        assert_eq!(image.manifest_reference(), digest);
        assert!(image.is_pinned());
    }

    #[test]
    fn rejects_malformed_references_with_a_reason() {
        for (input, reason) in [
            ("", "empty"),
            ("Nginx", "lowercase"),
            ("docker.io/Library/nginx", "lowercase"),
            ("nginx:", "form"),
            (" nginx", "whitespace"),
            ("nginx@sha256:abc", "digest"),
            ("a//b", ""),
            ("nginx:bad tag", ""),
        ] {
            let err = input.parse::<ImageRef>().expect_err(input);
            assert!(
                err.reason.to_lowercase().contains(reason),
                "{input:?}: {err}"
            );
        }
    }

    #[test]
    fn docker_hub_aliases_and_uppercase_hosts() {
        assert_eq!(
            parse("registry-1.docker.io/nginx").to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(
            parse("docker.io/nginx").to_string(),
            "docker.io/library/nginx:latest"
        );
        assert!(
            "HHH/app:v1"
                .parse::<ImageRef>()
                .unwrap_err()
                .reason
                .contains("lowercase")
        );
        assert_eq!(
            parse("Registry.Example.com/app").registry(),
            "Registry.Example.com"
        );
        let long = format!("r.io/{}", "a".repeat(2_000_000));
        let started = std::time::Instant::now();
        assert!(
            long.parse::<ImageRef>()
                .unwrap_err()
                .reason
                .contains("longer than")
        );
        assert!(started.elapsed() < std::time::Duration::from_millis(50));
        // What is printed reads back as the same image.
        for s in [
            "nginx",
            "bitnami/redis:7",
            "127.0.0.1:5000/a/b:c",
            "index.docker.io/x",
        ] {
            let image = parse(s);
            assert_eq!(parse(&image.to_string()), image, "{s}");
        }
    }

    #[test]
    fn long_inputs_are_truncated_in_errors() {
        let input = format!("{}:tag", "é".repeat(10_000));
        let err = input.parse::<ImageRef>().unwrap_err();
        assert!(err.to_string().len() < 400);
    }
}

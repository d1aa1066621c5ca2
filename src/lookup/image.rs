//! Image references as the kubelet reads them: `nginx` is
//! `docker.io/library/nginx:latest`, and when a reference carries both a tag
//! and a digest, the digest is what gets pulled.
//!
//! The kubelet (and containerd after it) reads an image with
//! `ParseNormalizedNamed` of github.com/distribution/reference v0.6.0, the
//! version Kubernetes 1.34 builds with (tests/controlplane/go.mod), and
//! checks digests with github.com/opencontainers/go-digest v1.0.0. Its rules,
//! read from that source and followed here one for one:
//!
//! 1. A string of exactly 64 lowercase hex characters is an image ID, not a
//!    name, and is refused.
//! 2. The registry is what comes before the first `/`, if there is a `/`
//!    and that part is `localhost`, or contains `.` or `:`, or has an
//!    uppercase letter (`Foo/bar` is the registry `Foo`). Otherwise the whole
//!    string is a Docker Hub repository (`a/b` is `docker.io/a/b`).
//! 3. `index.docker.io` is renamed `docker.io`; nothing else is
//!    (`registry-1.docker.io/x` stays on `registry-1.docker.io`, repository
//!    `x`). On `docker.io`, a repository without `/` gets `library/`.
//! 4. The rest is `path[:tag][@digest]`. The path is lowercase components
//!    (`[a-z0-9]+` joined by one `.`, one or two `_`, or any number of `-`)
//!    separated by `/`, at most 255 characters. A tag is a word character
//!    then up to 127 of `[A-Za-z0-9_.-]`.
//! 5. The registry is a host name (components of letters, digits and inner
//!    `-`, joined by `.`; any case) or an IPv6 address in brackets
//!    (`[` hex digits and `:` `]`, no zone, no embedded IPv4), then an
//!    optional `:port` of digits.
//! 6. A digest is `sha256:`, `sha384:` or `sha512:` then exactly 64, 96 or
//!    128 lowercase hex characters; other algorithms are unsupported.
//!
//! One difference, on purpose: where rule 2 takes a first part as the
//! registry but it is not a valid host (`foo_bar.com/x`), the library reads
//! the whole string as a path with no registry at all, which no runtime can
//! pull from; archway refuses it as invalid instead.
//!
//! oci-client's `Reference` (oci-spec's grammar) differs on several of
//! these: it has no IPv6 hosts, takes an uppercase first part for a Docker
//! Hub namespace (and lets `docker.io/Foo/bar` through), accepts a bare
//! 64-hex ID and uppercase digest hex. `tests::oci_client_differs_here`
//! lists where; this parser is the one archway uses.

use std::fmt;
use std::str::FromStr;

/// Docker Hub's name in references, and the host that actually serves its API.
const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const DOCKER_HUB_API_HOST: &str = "registry-1.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
/// The library's limit on a repository path (RepositoryNameTotalLengthMax).
const MAX_PATH_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

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

/// The digest algorithms go-digest knows (and the OCI image spec
/// registers), each with its hex length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DigestAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha384 => "sha384",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 64,
            DigestAlgorithm::Sha384 => 96,
            DigestAlgorithm::Sha512 => 128,
        }
    }
}

/// Reads `algorithm:hex` as go-digest validates it: a known algorithm and
/// exactly its number of lowercase hex characters. The error is a reason.
pub fn parse_digest(digest: &str) -> Result<DigestAlgorithm, &'static str> {
    let (algorithm, hex) = digest.split_once(':').ok_or("a digest is algorithm:hex")?;
    let algorithm = match algorithm {
        "sha256" => DigestAlgorithm::Sha256,
        "sha384" => DigestAlgorithm::Sha384,
        "sha512" => DigestAlgorithm::Sha512,
        _ => return Err("unsupported digest algorithm (sha256, sha384 or sha512)"),
    };
    let lowercase_hex = hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex.len() != algorithm.hex_len() || !lowercase_hex {
        return Err(match algorithm {
            DigestAlgorithm::Sha256 => "a sha256 digest is 64 lowercase hex characters",
            DigestAlgorithm::Sha384 => "a sha384 digest is 96 lowercase hex characters",
            DigestAlgorithm::Sha512 => "a sha512 digest is 128 lowercase hex characters",
        });
    }
    Ok(algorithm)
}

impl ImageRef {
    /// The registry as written in references (`docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`, `[::1]:5000`): the key for credentials, mirrors
    /// and insecure hosts.
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

    /// The algorithm of the digest, if the reference has one.
    pub fn digest_algorithm(&self) -> Option<DigestAlgorithm> {
        self.digest.as_deref().and_then(|d| parse_digest(d).ok())
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
            reference: crate::decision::text::short_image(input),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(error("empty"));
        }
        if input.trim() != input {
            return Err(error("leading or trailing whitespace"));
        }
        // Longer than any reference the grammar allows (a 255-character
        // path, a 128-character tag, a sha512 digest and a long host).
        if input.len() > MAX_REFERENCE_LEN {
            return Err(error(&format!(
                "longer than {MAX_REFERENCE_LEN} characters"
            )));
        }
        // Rule 1.
        if input.len() == 64
            && input
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return Err(error(
                "a 64-character hexadecimal string is an image ID, not a name",
            ));
        }
        // Rules 2 and 3.
        let (registry, rest) = match input.split_once('/') {
            None => (DOCKER_HUB, input),
            Some((first, rest)) => {
                let is_registry = first == "localhost"
                    || first.contains(['.', ':'])
                    || first.bytes().any(|b| b.is_ascii_uppercase());
                if first == DOCKER_HUB_LEGACY {
                    (DOCKER_HUB, rest)
                } else if is_registry {
                    (first, rest)
                } else {
                    (DOCKER_HUB, input)
                }
            }
        };
        // Rule 4. A path has neither `:` nor `@`, a tag no `@`.
        let (name_and_tag, digest) = match rest.split_once('@') {
            Some((name_and_tag, digest)) => (name_and_tag, Some(digest)),
            None => (rest, None),
        };
        let (path, tag) = match name_and_tag.split_once(':') {
            Some((path, tag)) => (path, Some(tag)),
            None => (name_and_tag, None),
        };
        if path.bytes().any(|b| b.is_ascii_uppercase()) && is_path(&path.to_ascii_lowercase()) {
            return Err(error("repository name must be lowercase"));
        }
        if !is_path(path) {
            return Err(error(
                "repository is not lowercase letters and digits separated by \
                 '.', '_', '__', '-' and '/'",
            ));
        }
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if repository.len() > MAX_PATH_LEN {
            return Err(error(&format!(
                "repository name is longer than {MAX_PATH_LEN} characters"
            )));
        }
        if let Some(tag) = tag
            && !is_tag(tag)
        {
            return Err(error(
                "tag is not a letter, digit or '_' then up to 127 of those, '.' and '-'",
            ));
        }
        if let Some(digest) = digest {
            parse_digest(digest).map_err(|reason| error(&format!("digest: {reason}")))?;
        }
        // Rule 5.
        if !is_registry_host(registry) {
            return Err(error(
                "registry is not a host name, an IPv4 address or an [IPv6] address, \
                 with an optional :port",
            ));
        }
        // The kubelet adds `latest` only when there is neither tag nor digest.
        let tag = match (tag, digest) {
            (None, None) => Some("latest".to_string()),
            (tag, _) => tag.map(str::to_string),
        };
        Ok(ImageRef {
            registry: registry.to_string(),
            repository,
            tag,
            digest: digest.map(str::to_string),
        })
    }
}

/// `[a-z0-9]+` components joined by `.`, `_`, `__` or `-+`, separated by `/`.
fn is_path(path: &str) -> bool {
    path.split('/').all(is_path_component)
}

fn is_path_component(component: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let mut i = 0;
    loop {
        // A run of letters and digits: never empty, so a component neither
        // starts nor ends with a separator.
        let run = i;
        while i < bytes.len() && alphanumeric(bytes[i]) {
            i += 1;
        }
        if i == run {
            return false;
        }
        if i == bytes.len() {
            return true;
        }
        let separator = i;
        while i < bytes.len() && !alphanumeric(bytes[i]) {
            i += 1;
        }
        let separator = &bytes[separator..i];
        let dashes = separator.iter().all(|&b| b == b'-');
        if !(dashes || matches!(separator, b"." | b"_" | b"__")) {
            return false;
        }
    }
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_TAG_LEN
        && word(bytes[0])
        && bytes[1..]
            .iter()
            .all(|&b| word(b) || b == b'.' || b == b'-')
}

/// A host name or bracketed IPv6 address, then an optional `:digits`.
fn is_registry_host(registry: &str) -> bool {
    let (host_ok, port) = match registry.strip_prefix('[') {
        Some(inner) => {
            let Some((address, after)) = inner.split_once(']') else {
                return false;
            };
            let port = match after {
                "" => None,
                after => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return false,
                },
            };
            // Hex digits and colons only: no zone (`%eth0`), no IPv4 tail.
            let address_ok =
                !address.is_empty() && address.bytes().all(|b| b.is_ascii_hexdigit() || b == b':');
            (address_ok, port)
        }
        None => {
            let (host, port) = match registry.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (registry, None),
            };
            (host.split('.').all(is_host_component), port)
        }
    };
    host_ok && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Letters (either case), digits, and `-` inside.
fn is_host_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphanumeric()
        && last.is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Longer than any reference the grammar accepts.
pub const MAX_REFERENCE_LEN: usize = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ImageRef {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    const SHA256: &str = "sha256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff";

    fn sha512() -> String {
        format!("sha512:{}", "e".repeat(128))
    }

    /// (input, registry, the reference in full) as ParseNormalizedNamed,
    /// and the kubelet's default tag, give them.
    #[test]
    fn names_are_normalised_as_the_kubelet_does() {
        let sha512 = sha512();
        let ours = |input: &str| {
            let image = parse(input);
            // What is printed reads back as the same image.
            assert_eq!(parse(&image.to_string()), image, "{input}");
            (image.registry().to_string(), image.to_string())
        };
        #[rustfmt::skip]
        let cases: &[(&str, &str, &str)] = &[
            // The list.
            ("registry-1.docker.io/x", "registry-1.docker.io", "registry-1.docker.io/x:latest"),
            ("index.docker.io/x",      "docker.io",            "docker.io/library/x:latest"),
            ("docker.io/x",            "docker.io",            "docker.io/library/x:latest"),
            ("docker.io/library/x",    "docker.io",            "docker.io/library/x:latest"),
            ("localhost/x",            "localhost",            "localhost/x:latest"),
            ("localhost:5000/x",       "localhost:5000",       "localhost:5000/x:latest"),
            ("x",                      "docker.io",            "docker.io/library/x:latest"),
            ("a/b",                    "docker.io",            "docker.io/a/b:latest"),
            ("a.b/c",                  "a.b",                  "a.b/c:latest"),
            // More from the library's own tests.
            ("index.docker.io/a/b:v1",   "docker.io",         "docker.io/a/b:v1"),
            ("docker.io/library/a/b",    "docker.io",         "docker.io/library/a/b:latest"),
            ("Foo/bar",                  "Foo",               "Foo/bar:latest"),
            ("LOCALDOMAIN/library/x",    "LOCALDOMAIN",       "LOCALDOMAIN/library/x:latest"),
            ("Registry.Example.com/app", "Registry.Example.com", "Registry.Example.com/app:latest"),
            ("192.168.0.1",              "docker.io",         "docker.io/library/192.168.0.1:latest"),
            ("192.168.0.1:80",           "docker.io",         "docker.io/library/192.168.0.1:80"),
            ("192.168.0.2:25000/debian", "192.168.0.2:25000", "192.168.0.2:25000/debian:latest"),
            ("127.0.0.1:5000/a/b/c:v1.2", "127.0.0.1:5000",   "127.0.0.1:5000/a/b/c:v1.2"),
            ("test.com:5000",            "docker.io",         "docker.io/library/test.com:5000"),
            ("a__b/c-d---e.f_g",         "docker.io",         "docker.io/a__b/c-d---e.f_g:latest"),
            ("lowercase:Uppercase",      "docker.io",         "docker.io/library/lowercase:Uppercase"),
            // IPv6 hosts.
            ("[::1]:5000/x",                "[::1]:5000",         "[::1]:5000/x:latest"),
            ("[fd00::1]/x",                 "[fd00::1]",          "[fd00::1]/x:latest"),
            ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000", "[2001:db8::1]:5000/repo:tag"),
            ("[fc00:1:2:3:4:5:6:7]:5000/a", "[fc00:1:2:3:4:5:6:7]:5000", "[fc00:1:2:3:4:5:6:7]:5000/a:latest"),
        ];
        for (input, registry, full) in cases {
            assert_eq!(
                ours(input),
                (registry.to_string(), full.to_string()),
                "{input}"
            );
        }
        // The library's own 64-hex test name, under a registry.
        let id = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a";
        assert_eq!(
            ours(&format!("docker.io/{id}")).1,
            format!("docker.io/library/{id}:latest")
        );
        // Digests: the tag stays, no `latest` is added, and the digest is
        // what is asked for.
        for (input, full) in [
            (
                format!("ghcr.io/org/app:v1@{SHA256}"),
                format!("ghcr.io/org/app:v1@{SHA256}"),
            ),
            (
                format!("x@{sha512}"),
                format!("docker.io/library/x@{sha512}"),
            ),
            (
                format!("[::1]:5000/x@{sha512}"),
                format!("[::1]:5000/x@{sha512}"),
            ),
        ] {
            assert_eq!(ours(&input).1, full, "{input}");
            assert_eq!(
                parse(&input).tag().is_some(),
                input.contains(":v1@"),
                "{input}"
            );
        }
    }

    #[test]
    fn docker_hub_is_asked_at_its_api_host_only_under_its_own_name() {
        let image = parse("nginx");
        assert_eq!(image.to_string(), "docker.io/library/nginx:latest");
        assert_eq!(image.api_host(), "registry-1.docker.io");
        assert_eq!(image.manifest_reference(), "latest");
        assert!(!image.is_pinned());
        assert_eq!(
            parse("registry-1.docker.io/x").api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(parse("[::1]:5000/x").api_host(), "[::1]:5000");
    }

    #[test]
    fn digest_wins_over_tag_and_names_its_algorithm() {
        let image = parse(&format!("ghcr.io/org/app:v1@{SHA256}"));
        assert_eq!(image.manifest_reference(), SHA256);
        assert_eq!(image.digest_algorithm(), Some(DigestAlgorithm::Sha256));
        assert!(image.is_pinned());
        let image = parse(&format!("ghcr.io/org/app@{}", sha512()));
        assert_eq!(image.digest_algorithm(), Some(DigestAlgorithm::Sha512));
        let sha384 = format!("sha384:{}", "0".repeat(96));
        assert_eq!(
            parse(&format!("app@{sha384}")).digest_algorithm(),
            Some(DigestAlgorithm::Sha384)
        );
        assert_eq!(parse("app:v1").digest_algorithm(), None);
    }

    /// (input, a word of the reason) for what the library refuses.
    #[test]
    fn rejects_what_the_kubelet_rejects_with_a_reason() {
        let long_path = format!("r.io/{}", "a".repeat(256));
        let long_tag = format!("app:{}", "t".repeat(129));
        let cases: Vec<(String, &str)> = vec![
            ("".into(), "empty"),
            (" nginx".into(), "whitespace"),
            ("Nginx".into(), "lowercase"),
            ("docker.io/Library/nginx".into(), "lowercase"),
            ("docker/Docker".into(), "lowercase"),
            ("nginx:".into(), "tag"),
            ("nginx@sha256:abc".into(), "64 lowercase hex"),
            (
                format!(
                    "nginx@{}",
                    SHA256.to_uppercase().replace("SHA256", "sha256")
                ),
                "64 lowercase hex",
            ),
            (format!("nginx@sha1:{}", "f".repeat(40)), "unsupported"),
            (
                format!("nginx@sha512:{}", "f".repeat(64)),
                "128 lowercase hex",
            ),
            ("a//b".into(), "repository"),
            ("docker///docker".into(), "repository"),
            ("-docker".into(), "repository"),
            ("-docker.io/docker/docker".into(), "registry"),
            ("https://github.com/docker/docker".into(), "repository"),
            ("nginx:bad tag".into(), "tag"),
            (long_tag, "tag"),
            (long_path, "longer than 255"),
            (
                "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(),
                "image ID",
            ),
            // IPv6: a registry needs a repository; no zones, no IPv4 inside,
            // no unbracketed form.
            ("[fc00::1]".into(), "repository"),
            ("[fc00::1]:5000".into(), "repository"),
            ("fc00::1:5000/debian".into(), "registry"),
            ("[fe80::1%eth0]:5000/debian".into(), "registry"),
            ("[2001:db8:3:4::192.0.2.33]:5000/debian".into(), "registry"),
            ("[::1]5000/x".into(), "registry"),
            ("[]/x".into(), "repository"),
            ("foo_bar.com/x".into(), "registry"),
            ("a__b.c/x".into(), "registry"),
            ("a/b..c".into(), "repository"),
            ("a/b___c".into(), "repository"),
            ("a/b-".into(), "repository"),
            ("régistry.example/app:v1".into(), "registry"),
            ("nginx:🦀".into(), "tag"),
        ];
        for (input, reason) in cases {
            let err = input.parse::<ImageRef>().expect_err(&input);
            assert!(err.reason.contains(reason), "{input:?}: {err}");
        }
    }

    #[test]
    fn huge_inputs_are_refused_at_once() {
        let long = format!("r.io/{}", "a".repeat(2_000_000));
        let err = long.parse::<ImageRef>().unwrap_err();
        assert!(err.reason.contains("longer than"), "{err}");
        let input = format!("{}:tag", "é".repeat(10_000));
        let err = input.parse::<ImageRef>().unwrap_err();
        assert!(err.to_string().len() < 400);
    }

    #[test]
    fn digests_are_read_as_go_digest_reads_them() {
        assert_eq!(parse_digest(SHA256), Ok(DigestAlgorithm::Sha256));
        assert_eq!(parse_digest(&sha512()), Ok(DigestAlgorithm::Sha512));
        for bad in [
            "sha256",
            "sha256:",
            "SHA256:ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "sha256:FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF",
            "sha256:fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        ] {
            assert!(parse_digest(bad).is_err(), "{bad}");
        }
    }

    /// Where oci-client's `Reference` (oci-spec's grammar) reads a string
    /// otherwise than the kubelet: each of these would make archway ask
    /// another registry, or refuse what the kubelet pulls, if archway used
    /// it. `None`: oci-client refuses it.
    #[test]
    fn oci_client_differs_here() {
        let oci = |s: &str| {
            oci_client::Reference::try_from(s)
                .ok()
                .map(|r| format!("{}/{}", r.registry(), r.repository()))
        };
        let ours = |s: &str| {
            s.parse::<ImageRef>()
                .ok()
                .map(|r| format!("{}/{}", r.registry(), r.repository()))
        };
        let sha512 = sha512();
        let cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
            // IPv6 hosts are not in oci-spec's grammar.
            ("[::1]:5000/x".into(), Some("[::1]:5000/x"), None),
            ("[fd00::1]/x".into(), Some("[fd00::1]/x"), None),
            // An uppercase first part is a registry for the kubelet, a
            // Docker Hub namespace (with an uppercase repository) for oci-spec.
            ("Foo/bar".into(), Some("Foo/bar"), Some("docker.io/Foo/bar")),
            // An image ID is not a name.
            (
                "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a".into(),
                None,
                Some(
                    "docker.io/library/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
                ),
            ),
            // go-digest wants lowercase hex.
            (
                format!("x@sha256:{}", "F".repeat(64)),
                None,
                Some("docker.io/library/x"),
            ),
        ];
        for (input, kubelet, oci_spec) in cases {
            assert_eq!(ours(&input).as_deref(), kubelet, "archway: {input}");
            assert_eq!(oci(&input).as_deref(), oci_spec, "oci-client: {input}");
        }
        // Where they agree, for the record: registry-1.docker.io is not
        // renamed by either (archway used to rename it), sha512 is valid.
        for input in [
            "registry-1.docker.io/x",
            "index.docker.io/x",
            "docker.io/x",
            "a.b/c",
        ] {
            assert_eq!(ours(input), oci(input), "{input}");
        }
        assert_eq!(ours(&format!("x@{sha512}")), oci(&format!("x@{sha512}")));
    }
}

//! A platform as registries publish it (`os/architecture/variant`), and the
//! spelling normalisation that lets two registries' answers be compared.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

/// The platforms one image publishes, as the cache holds them: shared, so
/// every container of every review that names the image reads the one set
/// the registry's answer filled, without a copy of its strings.
pub type Platforms = std::sync::Arc<BTreeSet<Platform>>;

/// One platform an image publishes, e.g. `linux/arm/v7`.
///
/// Values are normalised the way containerd compares them, so `aarch64` and
/// `arm64/v8` both read as `arm64`: the `kubernetes.io/arch` node label uses
/// the Go spelling and carries no variant for arm64.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        let os = os.trim().to_ascii_lowercase();
        let architecture = normalise_architecture(architecture.trim());
        let variant = variant
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            // arm64/v8 is the only arm64 there is; keeping it would make two
            // registries' spellings of the same image differ.
            .filter(|v| !(architecture == "arm64" && v == "v8"));
        Platform {
            os,
            architecture,
            variant,
        }
    }

    /// A platform read from a registry's answer, which a pod author may
    /// have written: each field must be a short token. A 4,000-character
    /// architecture would otherwise sit in the cache, the pod's
    /// annotations and the logs.
    pub fn parse(
        os: &str,
        architecture: &str,
        variant: Option<&str>,
    ) -> Result<Self, PlatformError> {
        check_token("os", os)?;
        check_token("architecture", architecture)?;
        if let Some(variant) = variant.filter(|v| !v.trim().is_empty()) {
            check_token("variant", variant)?;
        }
        Ok(Platform::new(os, architecture, variant))
    }

    pub fn linux(architecture: &str) -> Self {
        Platform::new("linux", architecture, None)
    }

    pub fn is_linux(&self) -> bool {
        self.os == "linux"
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(variant) = &self.variant {
            write!(f, "/{variant}")?;
        }
        Ok(())
    }
}

/// The longest platform field accepted; real ones are under 12.
pub const MAX_FIELD_CHARS: usize = 32;

/// A platform field that is not a short token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "platform {field} {value:?} is not a token of at most {MAX_FIELD_CHARS} characters a-z 0-9 . _ -"
)]
pub struct PlatformError {
    field: &'static str,
    /// The start of the value, enough to recognise it.
    value: String,
}

fn check_token(field: &'static str, value: &str) -> Result<(), PlatformError> {
    let value = value.trim();
    let token = !value.is_empty()
        && value.len() <= MAX_FIELD_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if token {
        Ok(())
    } else {
        Err(PlatformError {
            field,
            value: value.chars().take(MAX_FIELD_CHARS).collect(),
        })
    }
}

fn normalise_architecture(architecture: &str) -> String {
    let lower = architecture.to_ascii_lowercase();
    match lower.as_str() {
        "x86_64" | "x86-64" => "amd64".to_string(),
        "aarch64" => "arm64".to_string(),
        "i386" | "i686" => "386".to_string(),
        _ => lower,
    }
}

/// The Linux architectures among `platforms`: what the `kubernetes.io/arch`
/// node label can match. Variants collapse (a node labelled `arm` runs v6 and
/// v7 alike as far as the scheduler knows).
pub fn linux_architectures<'a>(
    platforms: impl IntoIterator<Item = &'a Platform>,
) -> BTreeSet<String> {
    platforms
        .into_iter()
        .filter(|p| p.is_linux())
        .map(|p| p.architecture.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_spellings() {
        assert_eq!(
            Platform::new("Linux", "aarch64", Some("v8")),
            Platform::linux("arm64")
        );
        assert_eq!(
            Platform::new("linux", "x86_64", None),
            Platform::linux("amd64")
        );
        assert_eq!(
            Platform::new("linux", "arm", Some("v7")).to_string(),
            "linux/arm/v7"
        );
        assert_eq!(Platform::new("linux", "arm64", Some("")).variant, None);
    }

    #[test]
    fn registry_fields_must_be_short_tokens() {
        assert_eq!(
            Platform::parse("Linux", "AArch64", Some("v8")),
            Ok(Platform::linux("arm64"))
        );
        assert!(Platform::parse("linux", "x86_64", Some("")).is_ok());
        assert!(Platform::parse("linux", "mips64le", Some("r6.1-x")).is_ok());
        let long = "a".repeat(4000);
        for (os, arch, variant) in [
            ("linux", long.as_str(), None),
            (long.as_str(), "amd64", None),
            ("linux", "arm", Some(long.as_str())),
            ("linux", "arm/64", None),
            ("linux", "amd64\n", Some("v1\u{1b}[31m")),
            ("linux", "", None),
            ("linux", &"a".repeat(MAX_FIELD_CHARS + 1), None),
        ] {
            let error = Platform::parse(os, arch, variant).unwrap_err().to_string();
            assert!(error.len() < 200, "{error}");
        }
        assert!(Platform::parse("linux", &"a".repeat(MAX_FIELD_CHARS), None).is_ok());
    }

    #[test]
    fn only_linux_counts_for_scheduling() {
        let platforms = [
            Platform::linux("amd64"),
            Platform::new("windows", "amd64", None),
            Platform::new("windows", "arm64", None),
            Platform::new("linux", "arm", Some("v7")),
            Platform::new("linux", "arm", Some("v6")),
        ];
        let archs = linux_architectures(&platforms);
        assert_eq!(archs.into_iter().collect::<Vec<_>>(), vec!["amd64", "arm"]);
    }
}

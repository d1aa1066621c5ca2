//! A platform as registries publish it (`os/architecture/variant`), and the
//! spelling normalisation that lets two registries' answers be compared.

use std::collections::BTreeSet;
use std::fmt;

use serde::Serialize;

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

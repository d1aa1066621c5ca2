//! Asking registries which platforms an image publishes.

pub mod client;
pub mod credentials;
pub mod facts;
pub mod limits;
pub mod manifest;
pub mod network;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{RegistryClient, RegistrySettings};
pub use credentials::{ANONYMOUS_FINGERPRINT, Credential, Keyring};

/// What a registry said about one image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImagePlatforms {
    /// Digest of the manifest or index the reference resolved to.
    pub digest: String,
    pub platforms: crate::decision::platform::Platforms,
    pub shape: ManifestShape,
    /// The host that answered (a mirror, or the registry itself).
    pub endpoint: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManifestShape {
    /// An OCI image index or Docker manifest list.
    Index,
    /// A single manifest; its platform came from the config blob.
    Single,
}

/// Why an image could not be inspected. Clone, because failures are cached
/// briefly and shared by every review waiting on the same image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InspectError {
    #[error("invalid image reference: {0}")]
    InvalidReference(String),
    #[error("cannot reach registry {host}: {reason}")]
    Connect { host: String, reason: String },
    #[error("registry {host} did not answer in time")]
    Timeout { host: String },
    #[error("image not found: registry {host} has no such manifest in {repository}")]
    NotFound { host: String, repository: String },
    #[error("registry {host} refused access to {repository} ({})", if *.authenticated { "credentials rejected" } else { "no credentials for it" })]
    Unauthorized {
        host: String,
        repository: String,
        authenticated: bool,
    },
    #[error("registry {host} is rate limiting requests (HTTP 429{})", retry_after.map(|d| format!(", retry after {}s", d.as_secs())).unwrap_or_default())]
    RateLimited {
        host: String,
        retry_after: Option<Duration>,
    },
    #[error("registry {host} answered HTTP {status}")]
    Status { host: String, status: u16 },
    #[error("{what} from {host} is larger than the limit of {limit} bytes")]
    TooLarge {
        host: String,
        what: &'static str,
        limit: usize,
    },
    #[error("registry {host} sent the {what} slower than {bytes_per_second} bytes a second")]
    TooSlow {
        host: String,
        what: &'static str,
        bytes_per_second: u64,
    },
    #[error("registry {host} sent content whose digest {actual} is not the expected {expected}")]
    DigestMismatch {
        host: String,
        expected: String,
        actual: String,
    },
    #[error("registry {host} sent an unreadable manifest: {error}")]
    Manifest {
        host: String,
        error: manifest::ManifestError,
    },
    #[error("refused to connect for registry {host}: {reason}")]
    Refused { host: String, reason: String },
    #[error("token request for {host} failed: {reason}")]
    Token { host: String, reason: String },
    #[error("lookup still running when the review's time budget ran out")]
    Deadline,
    /// This process could not make the request (out of file descriptors,
    /// memory or local ports): nothing the registry said.
    #[error("archway could not reach registry {host} for now: {reason}")]
    Local { host: String, reason: String },
    #[error(
        "namespace {namespace} has used its share of registry lookups for now (cache.namespaceMissesPerSecond); cached images still resolve"
    )]
    Throttled { namespace: String },
    /// archway's own cap on manifest GETs to a registry
    /// (`registry.manifestGetsPerHour`), which counts them against the
    /// pulls of everyone behind the same address: never the registry's
    /// failure, and never remembered as one.
    #[error(
        "registry {registry}: archway's manifest GET budget ({per_hour}/h) is spent; images already known still resolve, this one can be looked up in {}s (registry.manifestGetsPerHour)",
        retry_in.as_secs().max(1)
    )]
    GetBudgetSpent {
        registry: String,
        per_hour: u32,
        retry_in: Duration,
    },
    /// The registry said only `remaining` pulls are left to this address
    /// (`ratelimit-remaining`), at or below `registry.pullReserve`: they
    /// are kept for the kubelets. Never the registry's failure.
    #[error(
        "registry {registry}: only {remaining} pulls are left to this address, kept for the nodes' image pulls (registry.pullReserve {reserve}); images already known still resolve, this one can be looked up in {}s",
        retry_in.as_secs().max(1)
    )]
    PullReserve {
        registry: String,
        remaining: u64,
        reserve: u64,
        retry_in: Duration,
    },
    #[error("lookup failed unexpectedly: {0}")]
    Internal(String),
}

impl InspectError {
    /// A short, fixed label for metrics and logs.
    pub fn metric_label(&self) -> &'static str {
        match self {
            InspectError::InvalidReference(_) => "invalid_reference",
            InspectError::Connect { .. } => "connect",
            InspectError::Timeout { .. } => "timeout",
            InspectError::NotFound { .. } => "not_found",
            InspectError::Unauthorized { .. } => "unauthorized",
            InspectError::RateLimited { .. } => "rate_limited",
            InspectError::Status { .. } => "status",
            InspectError::TooLarge { .. } => "too_large",
            InspectError::TooSlow { .. } => "too_slow",
            InspectError::DigestMismatch { .. } => "digest_mismatch",
            InspectError::Manifest { .. } => "bad_manifest",
            InspectError::Token { .. } => "token",
            InspectError::Refused { .. } => "refused",
            InspectError::Deadline => "deadline",
            InspectError::Local { .. } => "local",
            InspectError::Throttled { .. } => "throttled",
            InspectError::GetBudgetSpent { .. } => "get_budget",
            InspectError::PullReserve { .. } => "pull_reserve",
            InspectError::Internal(_) => "internal",
        }
    }

    /// Whether the failure is the registry's answer (or lack of one), worth
    /// remembering for everyone; a failure of this process or of one
    /// caller's budget is not.
    pub fn is_from_registry(&self) -> bool {
        !matches!(
            self,
            InspectError::Local { .. }
                | InspectError::Throttled { .. }
                | InspectError::GetBudgetSpent { .. }
                | InspectError::PullReserve { .. }
                | InspectError::Deadline
                | InspectError::Internal(_)
        )
    }

    /// Whether asking again later may well get an answer: the registry
    /// (or this process) is down, slow or busy now. A tag's last answer
    /// keeps being served through such a failure, within `cache.staleTtl`;
    /// any other failure (the tag is gone, the credential refused, the
    /// answer unreadable) replaces it.
    pub fn is_transient(&self) -> bool {
        match self {
            InspectError::Connect { .. }
            | InspectError::Timeout { .. }
            | InspectError::RateLimited { .. }
            | InspectError::TooSlow { .. }
            | InspectError::Token { .. }
            | InspectError::Deadline
            | InspectError::Local { .. }
            | InspectError::Throttled { .. }
            | InspectError::Internal(_) => true,
            InspectError::Status { status, .. } => *status >= 500,
            InspectError::InvalidReference(_)
            | InspectError::NotFound { .. }
            | InspectError::Unauthorized { .. }
            | InspectError::TooLarge { .. }
            | InspectError::DigestMismatch { .. }
            | InspectError::Manifest { .. }
            | InspectError::Refused { .. }
            // The tag moved and the new manifest cannot be read now: the
            // last answer is known to be out of date.
            | InspectError::GetBudgetSpent { .. }
            | InspectError::PullReserve { .. } => false,
        }
    }

    /// How long a failure should be remembered at least: a registry that
    /// asks us to come back later is believed (bounded, so a hostile value
    /// cannot pin an image as failed).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            InspectError::RateLimited { retry_after, .. } => {
                retry_after.map(|d| d.min(Duration::from_secs(300)))
            }
            _ => None,
        }
    }
}

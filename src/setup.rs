//! The configuration turned into each component's settings: the one place
//! where `config`'s schema meets what the components take. The runtime of
//! `archway serve` and the commands build what they run through here;
//! lower layers never read the configuration file's types.

use std::sync::Arc;

use crate::admission::{ReviewSettings, Reviewer};
use crate::config::Config;
use crate::decision::placement::DecisionSettings;
use crate::decision::policy::PolicySource;
use crate::lookup::cache::Inspector;
use crate::lookup::registry::{RegistryClient, RegistrySettings};
use crate::metrics::Metrics;

/// Why a reviewer could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("registry client: {0}")]
    Client(#[from] crate::lookup::registry::client::ClientBuildError),
}

/// The parts of the configuration a review reads.
pub fn review_settings(config: &Config) -> ReviewSettings {
    ReviewSettings {
        decision: DecisionSettings {
            target_architecture: config.target_architecture.clone(),
            fail_closed: config.fail_closed,
            tolerations: config.tolerations.clone(),
        },
        excluded_namespaces: config.excluded_namespaces.clone(),
        time_budget: config.time_budget,
        cold: config.gate.default,
        sync_budget: config.gate.sync_budget,
        gate_timeout: config.gate.timeout,
        gating: config.policy_source.uses_cluster(),
    }
}

/// A reviewer with the configuration's registry, cache and settings, and
/// the given source of namespace policies, recording into `metrics`.
pub fn reviewer(
    config: &Config,
    policies: Arc<dyn PolicySource>,
    metrics: Arc<Metrics>,
) -> Result<Reviewer, SetupError> {
    let settings = RegistrySettings {
        metrics,
        ..config.registry_settings()?
    };
    let client = RegistryClient::new(settings)?;
    let inspector = Inspector::new(client, config.cache_settings());
    Ok(Reviewer::new(inspector, policies, review_settings(config)))
}

/// The configuration for reviewing away from the API server (`review`,
/// `audit`): no webhook timeout to meet, so each lookup gets the registry's
/// own timeouts.
pub fn offline(config: &Config) -> Config {
    let mut config = config.clone();
    config.time_budget = config.registry.request_timeout * 2;
    // The whole budget for lookups in `gate` namespaces too: a command
    // shows the answer, not a gate, unless the registry never answers.
    config.gate.sync_budget = config.time_budget;
    config
}

//! Reloading the configuration file when it changes (a ConfigMap update),
//! without a restart. An invalid new file is refused with a clear log line
//! and the running configuration stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::Reviewer;
use crate::cluster::ClusterPolicies;
use crate::config::{Config, ConfigError};
use crate::lookup::cache::Inspector;
use crate::lookup::registry::{RegistryClient, RegistrySettings};
use crate::metrics::{Metrics, ReasonLabels};
use crate::serve::server::AppState;
use crate::setup::SetupError;

/// How often the file is looked at. A ConfigMap update reaches the pod's
/// volume within the kubelet's sync period (a minute or so); polling the
/// content is simple and sees the symlink swap the kubelet does.
pub const POLL: Duration = Duration::from_secs(2);

/// Reads the configuration again: the file with the command line's flags
/// and environment over it, exactly as at start-up.
pub type Loader = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

pub struct ConfigReloader {
    pub path: PathBuf,
    pub loader: Loader,
    pub current: Config,
    /// With a cluster, the namespace view stays; only its default rollout
    /// follows the file.
    pub cluster: Option<ClusterPolicies>,
}

impl ConfigReloader {
    /// Watches the file until archway stops (a component of the runtime).
    pub async fn run(mut self, state: AppState) {
        let mut last = std::fs::read(&self.path).ok();
        let mut tick = tokio::time::interval(POLL);
        loop {
            tick.tick().await;
            let content = std::fs::read(&self.path).ok();
            if content.is_none() || content == last {
                continue;
            }
            last = content;
            match (self.loader)() {
                Err(error) => {
                    tracing::error!(%error, path = %self.path.display(), "invalid configuration: keeping the previous one");
                    count(&state.metrics, "invalid");
                }
                Ok(config) => match self.rebuild(&state.reviewer(), &config) {
                    Ok(reviewer) => {
                        state.replace_reviewer(reviewer);
                        let waiting = needs_restart(&self.current, &config);
                        if !waiting.is_empty() {
                            tracing::warn!(
                                settings = %waiting.join(", "),
                                "these settings changed but take effect only at the next restart"
                            );
                        }
                        self.current = config;
                        tracing::info!(path = %self.path.display(), "configuration reloaded");
                        count(&state.metrics, "ok");
                    }
                    Err(error) => {
                        tracing::error!(%error, "configuration not applied: keeping the previous one");
                        count(&state.metrics, "invalid");
                    }
                },
            }
        }
    }

    /// A reviewer for `config`, keeping what did not change: the image
    /// cache (warm) when registry and cache settings are the same, the
    /// cluster view, the pull-secret reader.
    pub fn rebuild(&self, old: &Reviewer, config: &Config) -> Result<Reviewer, SetupError> {
        let inspector =
            if config.registry == self.current.registry && config.cache == self.current.cache {
                old.inspector.clone()
            } else {
                tracing::info!("registry or cache settings changed: starting a new image cache");
                // The facts about digests outlive the cache: they are true
                // whatever the settings. So does the metrics registry: it is
                // the one `/metrics` renders.
                let settings = RegistrySettings {
                    metrics: old.metrics().clone(),
                    ..config.registry_settings()?
                };
                Inspector::with_facts(
                    RegistryClient::new(settings)?,
                    config.cache_settings(),
                    old.inspector.facts().clone(),
                )
                .with_peer(old.inspector.peer().cloned())
            };
        let policies: Arc<dyn crate::decision::policy::PolicySource> = match &self.cluster {
            Some(cluster) => {
                cluster.set_default_rollout(config.default_rollout);
                old.policies.clone()
            }
            None => Arc::new(config.static_policies()),
        };
        Ok(Reviewer {
            inspector,
            policies,
            node_inventory: old.node_inventory.clone(),
            pull_secrets: old.pull_secrets.clone(),
            settings: Arc::new(crate::setup::review_settings(config)),
            draws: old.draws.clone(),
            holds: old.holds.clone(),
            gate_controller_live: old.gate_controller_live.clone(),
        })
    }
}

/// The settings a reload cannot apply, by their names in the file: they
/// shaped components started once (the listeners, the election, the
/// guard's judge, the facts ConfigMap, the ramp's query) or where policy
/// comes from.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, differs: bool| {
        if differs {
            changed.push(name);
        }
    };
    check("server", old.server != new.server);
    check("policySource", old.policy_source != new.policy_source);
    check("gate.leaseName", old.gate.lease_name != new.gate.lease_name);
    check(
        "gate.leaseNamespace",
        old.gate.lease_namespace != new.gate.lease_namespace,
    );
    check(
        "gate.leaseDuration",
        old.gate.lease_duration != new.gate.lease_duration,
    );
    check("guard", old.guard != new.guard);
    // The guard judges failures on the target it started with; reviews
    // take the new one at once.
    check(
        "targetArchitecture (for the rollout guard)",
        old.target_architecture != new.target_architecture,
    );
    check("cache.facts", old.cache.facts != new.cache.facts);
    check("ramp", old.ramp != new.ramp);
    changed
}

fn count(metrics: &Metrics, result: &str) {
    metrics
        .config_reloads
        .get_or_create(&ReasonLabels {
            reason: result.into(),
        })
        .inc();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_reviewer_rebuilt_for_new_registry_settings_records_where_the_old_one_did() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config = Config::from_yaml("{}").unwrap();
        let served = Arc::new(Metrics::default());
        let policies = Arc::new(config.static_policies());
        let old = crate::setup::reviewer(&config, policies, served.clone()).unwrap();
        let reloader = ConfigReloader {
            path: PathBuf::new(),
            loader: Arc::new(|| Config::from_yaml("{}")),
            current: config,
            cluster: None,
        };
        let new_config = Config::from_yaml("registry: {requestTimeout: 3s}\n").unwrap();
        let new = reloader.rebuild(&old, &new_config).unwrap();
        assert!(Arc::ptr_eq(new.metrics(), &served));
    }

    #[test]
    fn a_reload_names_every_setting_that_waits_for_a_restart() {
        let old = Config::from_yaml("{}").unwrap();
        let same = Config::from_yaml("defaultRollout: 50\ngate: {timeout: 45s}\n").unwrap();
        assert_eq!(
            needs_restart(&old, &same),
            Vec::<&str>::new(),
            "applied at once"
        );
        let new = Config::from_yaml(
            "server: {listen: 127.0.0.1:9443}\npolicySource: static\n\
             gate: {leaseName: other, leaseDuration: 30s}\nguard: {threshold: 3}\n\
             targetArchitecture: amd64\ncache: {facts: {configMap: other-facts}}\n\
             ramp: {prometheus: {url: 'http://prometheus:9090', query: vector(0), threshold: 1}}\n",
        )
        .unwrap();
        assert_eq!(
            needs_restart(&old, &new),
            vec![
                "server",
                "policySource",
                "gate.leaseName",
                "gate.leaseDuration",
                "guard",
                "targetArchitecture (for the rollout guard)",
                "cache.facts",
                "ramp",
            ]
        );
    }
}

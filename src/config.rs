//! The configuration: one YAML file, with command-line flags and `ARCHWAY_*`
//! environment variables over it (see `cli.rs`). Every field has a default,
//! so an empty file is a valid configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::Toleration;
use serde::Deserialize;

use crate::decision::policy::{Cold, Rollout, StaticNamespace, StaticPolicies};
use crate::lookup::cache::CacheSettings;
use crate::lookup::registry::network::Cidr;
use crate::lookup::registry::{Keyring, RegistrySettings};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// The architecture pods are moved to (`kubernetes.io/arch` value).
    pub target_architecture: String,
    /// Rollout of namespaces that do not set `archway.dev/rollout`.
    pub default_rollout: Rollout,
    /// Tolerations a pod gets for each platform it may be placed on: the
    /// taints that keep those nodes reserved. Keyed `os/arch`
    /// (`windows/amd64`); a bare architecture (`arm64`) means linux.
    pub tolerations: BTreeMap<String, Vec<Toleration>>,
    /// Deny pods whose images cannot be inspected or share no architecture,
    /// instead of admitting them unchanged with a warning.
    pub fail_closed: bool,
    /// The most a review may take, registry lookups included; under the
    /// webhook's `timeoutSeconds` so the API server never gives up first.
    #[serde(with = "humantime_serde")]
    pub time_budget: Duration,
    /// Namespaces never touched, whatever their labels say.
    pub excluded_namespaces: Vec<String>,
    /// Where namespace policy comes from: the namespaces' labels and
    /// annotations (`cluster`), the `namespaces` map below (`static`), or
    /// `auto`: the cluster when running in one, else static.
    pub policy_source: PolicySourceKind,
    /// Static namespace policy, for running without a cluster.
    pub namespaces: BTreeMap<String, StaticNamespace>,
    pub cache: CacheSettings,
    pub registry: RegistryConfig,
    pub server: ServerConfig,
    /// Cold lookups: the scheduling gate and its controller.
    pub gate: GateConfig,
    /// The rollout guard's thresholds (see `guard.rs`).
    pub guard: GuardConfig,
    /// Prices per architecture for `archway audit`'s cost figures (see
    /// `decision/cost.rs`); none by default.
    pub cost: crate::decision::cost::CostConfig,
    /// The migration autopilot's own checks (`ramp:`): a Prometheus query
    /// every ramped namespace must keep under a threshold; none by default.
    pub ramp: RampConfig,
}

/// The `gate` section: what happens to pods whose images are not cached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GateConfig {
    /// For namespaces without an `archway.dev/cold` annotation. `admit`
    /// until the gate has been proven in the field.
    pub default: Cold,
    /// In `gate` mode, how long the webhook waits for lookups before it
    /// gates the pod: short, since the pod is not lost by gating it.
    #[serde(with = "humantime_serde")]
    pub sync_budget: Duration,
    /// No pod stays gated longer: the controller then removes the gate
    /// without placement, with an Event.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The coordination.k8s.io Lease that lets one replica's controller act.
    pub lease_name: String,
    /// Its namespace; absent: the namespace archway runs in (its
    /// ServiceAccount's), else `archway`.
    pub lease_namespace: Option<String>,
    /// How long a holder that stopped renewing keeps the Lease.
    #[serde(with = "humantime_serde")]
    pub lease_duration: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        GateConfig {
            default: Cold::Admit,
            sync_budget: Duration::from_millis(200),
            timeout: Duration::from_secs(30),
            lease_name: "archway-gate".into(),
            lease_namespace: None,
            lease_duration: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicySourceKind {
    #[default]
    Auto,
    Static,
    Cluster,
}

impl PolicySourceKind {
    /// `auto` means the cluster when archway runs in a pod.
    pub fn uses_cluster(self) -> bool {
        match self {
            PolicySourceKind::Auto => std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
            PolicySourceKind::Static => false,
            PolicySourceKind::Cluster => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RegistryConfig {
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Registries reached over plain HTTP (`host[:port]` as in references).
    pub insecure: Vec<String>,
    /// PEM files of CA certificates to trust next to the system's.
    pub ca_files: Vec<PathBuf>,
    /// Registry -> mirrors tried before it, e.g. `docker.io: [mirror:5000]`.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// A Docker config.json of cluster-wide credentials (node-level,
    /// mirrors). Pods' own pull secrets take precedence.
    pub credentials_file: Option<PathBuf>,
    pub max_manifest_bytes: usize,
    /// Internal hosts or address ranges (CIDR) registries may be reached
    /// at. Everything internal (loopback, link-local, private, unique-local)
    /// is refused otherwise, except hosts named in `insecure` and `mirrors`.
    pub allow_private: Vec<String>,
    /// Hosts a registry may send token requests and redirects to, besides
    /// itself (`*.domain` globs). Absent: a built-in list of the common
    /// auth and blob-storage hosts (Docker Hub, GitHub, the clouds).
    pub trusted_hosts: Option<Vec<String>>,
    /// Image lookups asking registries at once, in total and per registry
    /// host; more wait their turn.
    pub max_concurrent_lookups: usize,
    pub max_concurrent_lookups_per_host: usize,
    /// After an answer's first second, the least it must bring each second,
    /// or it is given up (`too_slow`): a registry that drips holds no room
    /// of the body budget for long.
    pub min_body_bytes_per_second: u64,
    /// Registry (as written in references, or a mirror's host) -> manifest
    /// GETs archway may send it per hour, per replica; a lookup past it
    /// gets a warning. Registries not listed have no budget.
    pub manifest_gets_per_hour: BTreeMap<String, u32>,
    /// Pulls left (a registry's `ratelimit-remaining`, as Docker Hub
    /// sends) at or below which archway sends that registry no manifest
    /// GET until its window passes: they are kept for the kubelets.
    pub pull_reserve: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// PEM certificate chain and key. Without them, `serve` makes a
    /// self-signed pair at start-up (for trying archway out locally).
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Largest admission request accepted. Pods can be large (many
    /// containers, long env lists); the API server's own limit is 3 MiB.
    pub max_body_bytes: usize,
    /// Request bodies held at once, in bytes (bodies and the pods read from
    /// them are most of archway's memory under load). Past it a review is
    /// answered 503 at once, which the API server treats per the webhook's
    /// failurePolicy. A quarter is kept for small reviews.
    pub max_body_bytes_in_flight: usize,
    /// Connections open at once on the webhook port; more wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// A connection with no review for this long is closed (HTTP/2 with
    /// GOAWAY). Longer than the API server's own idle timeout (90 s), so it
    /// is the one that closes. A new connection gets 10 s for its first.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Offer HTTP/2 (ALPN `h2`) on the webhook port; off (the default):
    /// HTTP/1.1 only. The API server speaks either. Off by measurement:
    /// over HTTP/2 the API server sends every review down one multiplexed
    /// connection, so behind a Service one replica reviews every pod while
    /// the other idles with a cold cache (a failover then starts cold);
    /// over HTTP/1.1 it opens connections as reviews overlap, which the
    /// Service spreads (95/105 of 200 creates in bursts, tests/replicas.rs).
    /// The API server's call was also 0.56-0.62 ms slower over HTTP/2
    /// (benches/apicost.rs, 3 of 3 runs).
    pub http2: bool,
}

/// A key of `tolerations`: `arch` or `os/arch`, each a label-value token,
/// and one spelling per platform (`arm64` and `linux/arm64` are the same
/// nodes; two lists for them would leave which one applies to chance).
fn check_toleration_key(
    key: &str,
    tolerations: &BTreeMap<String, Vec<Toleration>>,
) -> Result<(), String> {
    let token = |t: &str| {
        !t.is_empty()
            && t.len() <= 32
            && t.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
    };
    let well_formed = match key.split_once('/') {
        None => token(key),
        Some((os, arch)) => token(os) && token(arch),
    };
    if !well_formed {
        return Err(format!(
            "tolerations: {key:?} is not an architecture (arm64, meaning linux) or os/architecture (windows/amd64)"
        ));
    }
    if let Some(arch) = key
        .strip_prefix("linux/")
        .filter(|a| tolerations.contains_key(*a))
    {
        return Err(format!(
            "tolerations: {key:?} and {arch:?} name the same nodes; keep one"
        ));
    }
    Ok(())
}

impl Default for Config {
    fn default() -> Self {
        Config {
            target_architecture: "arm64".into(),
            default_rollout: Rollout::NONE,
            tolerations: crate::decision::placement::default_tolerations(),
            fail_closed: false,
            time_budget: Duration::from_millis(2500),
            excluded_namespaces: vec![
                "kube-system".into(),
                "kube-public".into(),
                "kube-node-lease".into(),
            ],
            policy_source: PolicySourceKind::Auto,
            namespaces: BTreeMap::new(),
            cache: CacheSettings::default(),
            registry: RegistryConfig::default(),
            server: ServerConfig::default(),
            gate: GateConfig::default(),
            guard: GuardConfig::default(),
            cost: crate::decision::cost::CostConfig::default(),
            ramp: RampConfig::default(),
        }
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let d = RegistrySettings::default();
        RegistryConfig {
            connect_timeout: d.connect_timeout,
            request_timeout: d.request_timeout,
            insecure: Vec::new(),
            ca_files: Vec::new(),
            mirrors: BTreeMap::new(),
            credentials_file: None,
            max_manifest_bytes: d.max_manifest_bytes,
            allow_private: Vec::new(),
            trusted_hosts: None,
            max_concurrent_lookups: d.max_concurrent_lookups,
            max_concurrent_lookups_per_host: d.max_concurrent_lookups_per_host,
            min_body_bytes_per_second: d.min_body_bytes_per_second,
            manifest_gets_per_hour: d.manifest_gets_per_hour,
            pull_reserve: d.pull_reserve,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: ([0, 0, 0, 0], 8443).into(),
            admin_listen: ([0, 0, 0, 0], 8080).into(),
            cert_file: None,
            key_file: None,
            max_body_bytes: 3 * 1024 * 1024,
            max_body_bytes_in_flight: 12 * 1024 * 1024,
            max_connections: 512,
            idle_timeout: Duration::from_secs(120),
            http2: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
        // An empty file is an empty map: all defaults.
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: PathBuf::from("<config>"),
                message: e.to_string(),
            })?
        };
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.target_architecture.is_empty() || self.target_architecture.contains(['/', ' ']) {
            return invalid(format!(
                "targetArchitecture must be a kubernetes.io/arch value such as arm64, not {:?}",
                self.target_architecture
            ));
        }
        if self.time_budget.is_zero() || self.time_budget > Duration::from_secs(29) {
            return invalid(
                "timeBudget must be above 0 and below the API server's 30 s webhook limit".into(),
            );
        }
        if let Err(message) = self.guard.check() {
            return invalid(message);
        }
        if let Err(message) = self.cost.validate() {
            return invalid(message);
        }
        if let Some(query) = &self.ramp.prometheus
            && let Err(message) = query.check()
        {
            return invalid(message);
        }
        if self.cache.max_entries == 0 {
            return invalid("cache.maxEntries must be at least 1".into());
        }
        if self.cache.max_bytes < 64 * 1024 {
            return invalid("cache.maxBytes must be at least 64 KiB".into());
        }
        if self.cache.namespace_misses_per_second == 0 || self.cache.namespace_miss_burst == 0 {
            return invalid(
                "cache.namespaceMissesPerSecond and cache.namespaceMissBurst must be at least 1"
                    .into(),
            );
        }
        let facts = &self.cache.facts;
        let name_ok = !facts.config_map.is_empty()
            && facts.config_map.len() <= 253
            && facts
                .config_map
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
        if !name_ok {
            return invalid("cache.facts.configMap must be a Kubernetes object name".into());
        }
        if (1..4096).contains(&facts.max_bytes)
            || facts.max_bytes > crate::lookup::registry::facts::MAX_ENCODED_BYTES
        {
            return invalid(format!(
                "cache.facts.maxBytes must be 0 (no facts) or from 4096 to {} (a ConfigMap holds at most 1 MiB)",
                crate::lookup::registry::facts::MAX_ENCODED_BYTES
            ));
        }
        if facts.write_interval < Duration::from_secs(1) {
            return invalid("cache.facts.writeInterval must be at least 1s".into());
        }
        if let Some((registry, _)) =
            (self.registry.manifest_gets_per_hour.iter()).find(|(_, n)| **n == 0)
        {
            return invalid(format!(
                "registry.manifestGetsPerHour: {registry} must be at least 1 (leave it out for no budget)"
            ));
        }
        if self.registry.max_concurrent_lookups == 0
            || self.registry.max_concurrent_lookups_per_host == 0
        {
            return invalid("registry.maxConcurrentLookups(PerHost) must be at least 1".into());
        }
        if self.server.max_body_bytes_in_flight < self.server.max_body_bytes {
            return invalid(
                "server.maxBodyBytesInFlight must hold at least one body of server.maxBodyBytes"
                    .into(),
            );
        }
        if self.server.max_connections == 0 || self.server.idle_timeout < Duration::from_secs(1) {
            return invalid(
                "server.maxConnections must be at least 1 and server.idleTimeout at least 1s"
                    .into(),
            );
        }
        if self.server.cert_file.is_some() != self.server.key_file.is_some() {
            return invalid("server.certFile and server.keyFile go together".into());
        }
        for entry in self
            .registry
            .allow_private
            .iter()
            .filter(|e| e.contains('/'))
        {
            if let Err(reason) = entry.parse::<Cidr>() {
                return invalid(format!("registry.allowPrivate: {reason}"));
            }
        }
        for key in self.tolerations.keys() {
            check_toleration_key(key, &self.tolerations).or_else(invalid)?;
        }
        if self.gate.sync_budget.is_zero() || self.gate.sync_budget > self.time_budget {
            return invalid("gate.syncBudget must be above 0 and at most timeBudget".into());
        }
        if self.gate.timeout < Duration::from_secs(1)
            || self.gate.timeout > Duration::from_secs(3600)
        {
            return invalid("gate.timeout must be from 1s to 1h".into());
        }
        if self.gate.lease_duration < Duration::from_secs(2) {
            return invalid("gate.leaseDuration must be at least 2s".into());
        }
        if self.gate.lease_name.is_empty() || self.gate.lease_name.len() > 253 {
            return invalid("gate.leaseName must be a Kubernetes object name".into());
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.maxBodyBytes is too small for any pod".into());
        }
        Ok(())
    }

    pub fn cache_settings(&self) -> CacheSettings {
        self.cache.clone()
    }

    /// Registry settings, reading the CA and credentials files named.
    pub fn registry_settings(&self) -> Result<RegistrySettings, ConfigError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })
        };
        let extra_ca_pems = self
            .registry
            .ca_files
            .iter()
            .map(read)
            .collect::<Result<Vec<_>, _>>()?;
        let keyring = match &self.registry.credentials_file {
            None => Keyring::default(),
            Some(path) => {
                Keyring::from_docker_config(&read(path)?).map_err(|e| ConfigError::Parse {
                    path: path.clone(),
                    message: e.to_string(),
                })?
            }
        };
        let mut guard = RegistrySettings::default().guard;
        for entry in &self.registry.allow_private {
            match entry.parse::<Cidr>() {
                Ok(range) if entry.contains('/') || entry.parse::<std::net::IpAddr>().is_ok() => {
                    guard.allowed_networks.push(range)
                }
                _ => guard.allowed_hosts.push(entry.clone()),
            }
        }
        if let Some(trusted) = &self.registry.trusted_hosts {
            guard.trusted_hosts = trusted.clone();
        }
        Ok(RegistrySettings {
            guard,
            connect_timeout: self.registry.connect_timeout,
            request_timeout: self.registry.request_timeout,
            insecure_hosts: self.registry.insecure.clone(),
            extra_ca_pems,
            mirrors: self.registry.mirrors.clone(),
            keyring,
            max_manifest_bytes: self.registry.max_manifest_bytes,
            max_concurrent_lookups: self.registry.max_concurrent_lookups,
            max_concurrent_lookups_per_host: self.registry.max_concurrent_lookups_per_host,
            min_body_bytes_per_second: self.registry.min_body_bytes_per_second,
            manifest_gets_per_hour: self.registry.manifest_gets_per_hour.clone(),
            pull_reserve: self.registry.pull_reserve,
            ..RegistrySettings::default()
        })
    }

    pub fn static_policies(&self) -> StaticPolicies {
        StaticPolicies {
            namespaces: self.namespaces.clone(),
            default_rollout: self.default_rollout,
        }
    }
}

/// The `ramp` section: what the migration autopilot checks besides holds
/// and the namespace's pods (see `controllers/ramp.rs`).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct RampConfig {
    pub prometheus: Option<RampQuery>,
}

/// A Prometheus query a ramp's step must keep at or under `threshold` for
/// the whole step. Set by the platform team, never by a namespace: PromQL
/// from a namespace owner would run with archway's access to Prometheus
/// and could read what other namespaces export.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RampQuery {
    /// Prometheus' base address (`http://prometheus.monitoring:9090`);
    /// the query goes to `<url>/api/v1/query`.
    pub url: String,
    /// PromQL, evaluated at now, with `$namespace` replaced by the ramped
    /// namespace's name. Its largest sample is compared.
    pub query: String,
    /// A sample above this fails the step.
    pub threshold: f64,
    /// The most one evaluation may take; past it the query cannot be
    /// evaluated, and the ramp stops (it never advances blind).
    #[serde(with = "humantime_serde", default = "RampQuery::default_timeout")]
    pub timeout: Duration,
}

/// The longest a query may be: a template, not data.
pub const MAX_RAMP_QUERY_BYTES: usize = 4096;

impl RampQuery {
    fn default_timeout() -> Duration {
        Duration::from_secs(5)
    }

    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.url)
            .map_err(|e| format!("ramp.prometheus.url {:?}: {e}", self.url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "ramp.prometheus.url must be an http(s) address such as http://prometheus.monitoring:9090, not {:?}",
                self.url
            ));
        }
        if self.query.trim().is_empty() || self.query.len() > MAX_RAMP_QUERY_BYTES {
            return Err(format!(
                "ramp.prometheus.query must be PromQL of 1 to {MAX_RAMP_QUERY_BYTES} bytes"
            ));
        }
        if !self.threshold.is_finite() {
            return Err("ramp.prometheus.threshold must be a number".into());
        }
        if self.timeout < Duration::from_millis(100) || self.timeout > Duration::from_secs(60) {
            return Err("ramp.prometheus.timeout must be from 100ms to 60s".into());
        }
        Ok(())
    }
}

/// The guard's configuration (`guard:` in the configuration file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct GuardConfig {
    /// Failing pods on the target architecture, within `window`, that hold
    /// a workload.
    pub threshold: usize,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Restarts of one pod within `window` that count as failing, without
    /// CrashLoopBackOff or an exec format error.
    pub restarts: u32,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            threshold: 2,
            window: Duration::from_secs(600),
            restarts: 5,
        }
    }
}

impl GuardConfig {
    pub fn check(&self) -> Result<(), String> {
        if self.threshold == 0 {
            return Err("guard.threshold must be at least 1".into());
        }
        if self.restarts == 0 {
            return Err("guard.restarts must be at least 1".into());
        }
        if self.window.is_zero() {
            return Err("guard.window must be longer than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::policy::{Mode, Placement, PolicySource, RolloutBy};

    #[test]
    fn empty_file_is_all_defaults() {
        let config = Config::from_yaml("").unwrap();
        assert_eq!(config.target_architecture, "arm64");
        assert_eq!(config.time_budget, Duration::from_millis(2500));
        assert_eq!(
            config.tolerations["arm64"][0].value.as_deref(),
            Some("arm64")
        );
        assert_eq!(config.server.listen.port(), 8443);
        assert!(!config.server.http2, "HTTP/1.1 by default");
        assert!(Config::from_yaml("cache: {facts: {maxBytes: 0}}").is_ok());
        let http2 = Config::from_yaml("server: {http2: true}").unwrap();
        assert!(http2.server.http2);
        assert_eq!(config.ramp.prometheus, None, "no query unless configured");
        let query = Config::from_yaml(
            "ramp: {prometheus: {url: 'http://p:9090', query: vector(0), threshold: 0.05}}",
        )
        .unwrap();
        assert_eq!(
            query.ramp.prometheus.map(|q| q.timeout),
            Some(Duration::from_secs(5))
        );
    }

    #[test]
    fn reads_a_full_file() {
        let config = Config::from_yaml(
            r#"
targetArchitecture: arm64
defaultRollout: 10
failClosed: true
timeBudget: 1500ms
excludedNamespaces: [kube-system]
cache: { maxEntries: 50, maxBytes: 1048576, tagTtl: 5m, failureTtl: 10s, staleTtl: 1m, namespaceMissesPerSecond: 2, facts: { configMap: shared-facts, namespace: kube-system } }
registry:
  manifestGetsPerHour: { docker.io: 100, ghcr.io: 500 }
  insecure: ["127.0.0.1:5000"]
  mirrors: { docker.io: ["mirror.local:5000"] }
  requestTimeout: 3s
namespaces:
  shop: { mode: enforce, rollout: 25, rolloutBy: workload, placement: preferred }
  lab: { mode: audit }
tolerations:
  arm64:
    - { key: dedicated, operator: Equal, value: graviton, effect: NoSchedule }
  windows/amd64:
    - { key: os, operator: Equal, value: windows, effect: NoSchedule }
"#,
        )
        .unwrap();
        assert!(config.fail_closed);
        assert_eq!(config.time_budget, Duration::from_millis(1500));
        assert_eq!(config.cache.tag_ttl, Duration::from_secs(300));
        assert_eq!(config.cache.max_bytes, 1024 * 1024);
        assert_eq!(config.cache.namespace_misses_per_second, 2);
        assert_eq!(config.cache.stale_ttl, Duration::from_secs(60));
        assert_eq!(config.cache.facts.config_map, "shared-facts");
        assert_eq!(config.cache.facts.namespace.as_deref(), Some("kube-system"));
        assert_eq!(config.cache.facts.max_bytes, 768 * 1024, "the default");
        let budgets = config.registry_settings().unwrap().manifest_gets_per_hour;
        assert_eq!((budgets["docker.io"], budgets["ghcr.io"]), (100, 500));
        assert_eq!(
            Config::default().registry.manifest_gets_per_hour["docker.io"],
            20
        );
        assert_eq!(config.cache_settings(), config.cache);
        assert_eq!(config.registry.request_timeout, Duration::from_secs(3));
        let policies = config.static_policies();
        let shop = policies.policy("shop").unwrap();
        assert_eq!(
            (
                shop.mode,
                shop.rollout.percent(),
                shop.rollout_by,
                shop.placement
            ),
            (Mode::Enforce, 25, RolloutBy::Workload, Placement::Preferred)
        );
        let lab = policies.policy("lab").unwrap();
        assert_eq!((lab.mode, lab.rollout.percent()), (Mode::Audit, 10));
        assert!(policies.policy("other").is_none());
        assert_eq!(
            config.tolerations["arm64"][0].key.as_deref(),
            Some("dedicated")
        );
        let windows =
            crate::decision::patch::configured_tolerations(&config.tolerations, "windows", "amd64");
        assert_eq!(windows[0].value.as_deref(), Some("windows"));
        let linux =
            crate::decision::patch::configured_tolerations(&config.tolerations, "linux", "arm64");
        assert_eq!(linux[0].value.as_deref(), Some("graviton"));
        // The bare form is linux only; no list is configured for windows/arm64.
        assert!(
            crate::decision::patch::configured_tolerations(&config.tolerations, "windows", "arm64")
                .is_empty()
        );
    }

    #[test]
    fn rejects_mistakes_with_a_reason() {
        for (yaml, expected) in [
            ("targetArch: arm64", "unknown field"),
            ("gate: { default: hold }", "cold must be one of"),
            ("gate: { syncBudget: 5s }", "syncBudget"),
            ("gate: { timeout: 0s }", "gate.timeout"),
            ("defaultRollout: 120", "0 to 100"),
            ("timeBudget: 45s", "timeBudget"),
            ("namespaces: { a: { mode: on } }", "mode must be one of"),
            ("server: { certFile: /x }", "go together"),
            ("targetArchitecture: linux/arm64", "targetArchitecture"),
            ("cache: { tagTtl: soon }", "tagTtl"),
            ("cache: { staleTtl: later }", "staleTtl"),
            (
                "cache: { facts: { configMap: Facts } }",
                "cache.facts.configMap",
            ),
            (
                "cache: { facts: { maxBytes: 2097152 } }",
                "cache.facts.maxBytes",
            ),
            (
                "cache: { facts: { maxBytes: 1000 } }",
                "cache.facts.maxBytes",
            ),
            ("cache: { facts: { writeInterval: 0s } }", "writeInterval"),
            (
                "registry: { manifestGetsPerHour: { docker.io: 0 } }",
                "manifestGetsPerHour",
            ),
            ("registry: { allowPrivate: [10.0.0.0/40] }", "allowPrivate"),
            ("cache: { maxBytes: 1000 }", "maxBytes"),
            ("tolerations: { windows/amd64/v2: [] }", "os/architecture"),
            ("tolerations: { Windows/amd64: [] }", "os/architecture"),
            ("tolerations: { /amd64: [] }", "os/architecture"),
            (
                "tolerations: { arm64: [], linux/arm64: [] }",
                "name the same nodes",
            ),
            (
                "cache: { namespaceMissesPerSecond: 0 }",
                "namespaceMissesPerSecond",
            ),
            (
                "server: { maxBodyBytesInFlight: 1048576 }",
                "maxBodyBytesInFlight",
            ),
            (
                "ramp: { prometheus: { url: 'prometheus:9090', query: up, threshold: 1 } }",
                "ramp.prometheus.url",
            ),
            (
                "ramp: { prometheus: { url: 'ftp://p', query: up, threshold: 1 } }",
                "http(s) address",
            ),
            (
                "ramp: { prometheus: { url: 'http://p', query: ' ', threshold: 1 } }",
                "ramp.prometheus.query",
            ),
            (
                "ramp: { prometheus: { url: 'http://p', query: up, threshold: .nan } }",
                "ramp.prometheus.threshold",
            ),
            (
                "ramp: { prometheus: { url: 'http://p', query: up, threshold: 1, timeout: 5m } }",
                "ramp.prometheus.timeout",
            ),
            (
                "ramp: { prometheus: { url: 'http://p', query: up } }",
                "threshold",
            ),
        ] {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(err.contains(expected), "{yaml}: {err}");
        }
    }
}

//! `archway serve`: everything wired together (cluster view, reviewer,
//! guard, gate controller, configuration reloads) around the listeners
//! that `server::serve` runs. Every long-lived task is one of the
//! `Components`, stopped and joined when the server has drained.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::admission::RolloutDraws;
use crate::certs::{self, ReloadingCertificate};
use crate::cluster::lease::{Elector, Leadership, LeaseSettings};
use crate::cluster::settings_report::SettingsReporter;
use crate::cluster::{ClusterPolicies, PullSecrets};
use crate::components::Components;
use crate::config::Config;
use crate::controllers::guard::{GuardContext, GuardedPolicies, Holds};
use crate::lookup::registry::facts;
use crate::metrics::Metrics;
use crate::serve::reload::{ConfigReloader, Loader};
use crate::serve::server::{self, AppState, Listeners};

/// How long components get to finish once the server has drained: the
/// gate controller's Lease release is one API call. The kubelet's grace
/// period (30 s by default) covers the server's drain and this.
const COMPONENTS_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// Starts archway with `config` and serves until `shutdown` completes.
/// Without a certificate in the configuration, a self-signed one is made
/// and its CA written to `self_signed_dir` (for trying archway locally).
/// With `reload`, the configuration file at that path is watched and
/// re-read through the loader when it changes.
pub async fn run(
    config: Config,
    self_signed_dir: &Path,
    reload: Option<(PathBuf, Loader)>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let components = Components::new();
    // The one registry: every component records into it, `/metrics`
    // renders it.
    let metrics = Arc::new(Metrics::default());
    let certificate = Arc::new(serving_certificate(&config, self_signed_dir)?);
    // Bound first: the leader's peer address is the webhook's own port
    // (the configuration may say 0).
    let listeners = Listeners::bind(config.server.listen, config.server.admin_listen).await?;
    let webhook_address = listeners.webhook.local_addr()?;
    let mut cluster = None;
    let mut kube_client = None;
    let reviewer = if config.policy_source.uses_cluster() {
        // In-cluster service account, or the current kubeconfig context.
        let client = kube::Client::try_default().await?;
        let identity = crate::cluster::lease::own_identity();
        // One election for the replica: what writes for archway as a
        // whole runs in the leader only (see `cluster::lease`).
        let (elected, leadership) = Leadership::channel();
        let lease = LeaseSettings {
            namespace: (config.gate.lease_namespace.clone())
                .unwrap_or_else(crate::cluster::lease::own_namespace),
            name: config.gate.lease_name.clone(),
            identity: identity.clone(),
            duration: config.gate.lease_duration,
            peer_address: peer_address(webhook_address),
        };
        // Graceful: on its stop it steps down and gives the Lease up, so
        // another replica takes over at once.
        components.spawn_graceful(
            "leader election",
            Elector::new(client.clone(), lease).run(elected, components.stop_token()),
        );
        let settings = SettingsReporter::start(
            client.clone(),
            identity.clone(),
            metrics.clone(),
            &components,
        );
        let cluster_view = ClusterPolicies::start_reporting(
            client.clone(),
            config.default_rollout,
            Some(settings),
            &components,
        );
        cluster = Some(cluster_view.clone());
        let holds = Holds::new(metrics.clone());
        let policies: Arc<dyn crate::decision::policy::PolicySource> = Arc::new(GuardedPolicies {
            inner: Arc::new(cluster_view.clone()),
            holds: holds.clone(),
        });
        let detector = crate::controllers::guard::detector_settings(
            &config.guard,
            &config.target_architecture,
        );
        let guard = GuardContext {
            client: client.clone(),
            policies: policies.clone(),
            nodes: Arc::new(cluster_view.clone()),
            holds: holds.clone(),
            leading: leadership.leading.clone(),
            metrics: metrics.clone(),
        };
        crate::controllers::guard::start(guard, detector, &components);
        let prometheus = (config.ramp.prometheus.as_ref())
            .map(crate::controllers::ramp::PrometheusCheck::new)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        components.spawn(
            "ramp autopilot",
            crate::controllers::ramp::run(
                client.clone(),
                cluster_view.clone(),
                holds.clone(),
                crate::controllers::ramp::StepChecks {
                    target: config.target_architecture.clone(),
                    prometheus,
                },
                identity.clone(),
                leadership.leading.clone(),
                metrics.clone(),
            ),
        );
        let mut reviewer = crate::setup::reviewer(&config, policies, metrics.clone())?;
        // Followers ask the leader for what they do not know before the
        // registry: a new or moved tag costs one GET, not one a replica.
        let peer = crate::lookup::peer::PeerClient::new(
            certificate.clone(),
            leadership.leader_address.clone(),
            PEER_TIMEOUT_REQUESTS * config.registry.request_timeout,
            metrics.clone(),
        )
        .map_err(anyhow::Error::msg)?;
        reviewer.inspector = reviewer.inspector.with_peer(Some(Arc::new(peer)));
        reviewer.node_inventory = Some(Arc::new(cluster_view));
        reviewer.pull_secrets = Some(PullSecrets::new(client.clone()));
        reviewer.holds = Some(Arc::new(holds));
        reviewer.gate_controller_live = Some(leadership.some_leader.clone());
        // The leader walks each workload's places forward, the others
        // backward: two replicas' shares are then exact together.
        reviewer.draws = Arc::new(RolloutDraws::by_lease(leadership.leading.clone()));
        if config.cache.facts.max_bytes > 0 {
            // Facts about digests, shared by the replicas: read by all,
            // written by the leader.
            let stop = components.stop_token();
            components.spawn_graceful(
                "shared facts",
                facts::configmap::run(
                    client.clone(),
                    reviewer.inspector.facts().clone(),
                    facts::configmap::Target::from_settings(
                        &config.cache.facts,
                        &crate::cluster::lease::own_namespace(),
                    ),
                    leadership.leading.clone(),
                    metrics.clone(),
                    async move { stop.cancelled().await },
                ),
            );
        }
        kube_client = Some((client, identity, leadership));
        reviewer
    } else {
        crate::setup::reviewer(&config, Arc::new(config.static_policies()), metrics.clone())?
    };
    tracing::info!(
        webhook = %webhook_address,
        admin = %listeners.admin.local_addr()?,
        target = %config.target_architecture,
        static_namespaces = config.namespaces.len(),
        startup_ms = started.elapsed().as_secs_f64() * 1000.0,
        "archway serving"
    );
    // The reviewer records into `metrics`; the admin port renders it.
    let state = AppState::new(reviewer);
    // The gate controller needs the cluster; without one the webhook gates
    // nothing (`ReviewSettings::gating`), since nothing would release it.
    if let Some((client, identity, leadership)) = kube_client {
        components.spawn(
            "gate controller",
            crate::controllers::gate::run(
                client,
                state.reviewers.clone(),
                identity,
                leadership.leading,
                metrics,
            ),
        );
    }
    if let Some((path, loader)) = reload {
        let reloader = ConfigReloader {
            path,
            loader,
            current: config.clone(),
            cluster,
        };
        components.spawn("configuration reloader", reloader.run(state.clone()));
    }
    server::serve(
        listeners,
        state,
        certificate,
        server::ServerLimits::from(&config.server),
        shutdown,
    )
    .await;
    // Reviews have drained; now the components.
    let stopped = components.shutdown(COMPONENTS_GRACE).await;
    if stopped.still_running.is_empty() {
        tracing::info!(components = stopped.started, "archway stopped");
    } else {
        tracing::warn!(
            components = stopped.started,
            still_running = ?stopped.still_running,
            "archway stopped; some components did not finish in time"
        );
    }
    Ok(())
}

/// A follower waits for the leader's answer as long as the leader's own
/// lookup may take: a token, the manifest and its config, each a registry
/// request.
const PEER_TIMEOUT_REQUESTS: u32 = 3;

/// Where the other replicas reach this one: `ARCHWAY_PEER_ADDRESS`, else
/// the pod's IP (`POD_IP`, from the downward API) with the webhook port,
/// else the webhook listener's own address when it is a specific one (a
/// replica run outside a pod, as the tests run two). `None`: the others
/// cannot ask this one, and ask the registry themselves.
fn peer_address(listen: std::net::SocketAddr) -> Option<String> {
    let from_env = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|value| value.trim().to_string())
            .filter(|value| !value.is_empty())
    };
    if let Some(address) = from_env("ARCHWAY_PEER_ADDRESS") {
        return Some(address);
    }
    if let Some(ip) = from_env("POD_IP").and_then(|ip| ip.parse::<std::net::IpAddr>().ok()) {
        return Some(std::net::SocketAddr::new(ip, listen.port()).to_string());
    }
    (!listen.ip().is_unspecified()).then(|| listen.to_string())
}

fn serving_certificate(
    config: &Config,
    self_signed_dir: &Path,
) -> anyhow::Result<ReloadingCertificate> {
    if let (Some(cert), Some(key)) = (&config.server.cert_file, &config.server.key_file) {
        return Ok(ReloadingCertificate::from_files(cert, key)?);
    }
    let mut names = certs::service_names("archway", "archway");
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    let generated = certs::generate(&names, 30)?;
    let key = certs::certified_key(
        generated.cert_pem.as_bytes(),
        generated.key_pem.as_bytes(),
        Path::new("self-signed"),
    )?;
    let ca_path = self_signed_dir.join("ca.crt");
    match std::fs::create_dir_all(self_signed_dir)
        .and_then(|_| std::fs::write(&ca_path, &generated.ca_pem))
    {
        Ok(()) => {
            tracing::info!(
                ca = %ca_path.display(),
                "no certificate configured: serving a self-signed one for localhost; trust it with `curl --cacert {}`",
                ca_path.display()
            )
        }
        Err(error) => {
            tracing::warn!(%error, "no certificate configured: serving a self-signed one; could not write its CA, printing it")
        }
    }
    eprintln!(
        "archway self-signed CA (for local use):\n{}",
        generated.ca_pem
    );
    Ok(ReloadingCertificate::fixed(key))
}

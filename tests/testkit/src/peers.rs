//! Replicas that ask each other (`archway::lookup::peer`) without a
//! cluster: a leader's inspector served by archway's own HTTPS server, and
//! followers whose peer client names it, as the Lease would. Both sides
//! load one serving key from files, as two pods mount one Secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use archway::certs::ReloadingCertificate;
use archway::config::Config;
use archway::lookup::cache::Inspector;
use archway::lookup::peer::PeerClient;
use archway::serve::server::{self, AppState, Listeners};
use tokio::sync::watch;

use crate::tls::TestCa;
use crate::webhook::{SERVICE_NAME, install_crypto};

/// One serving key, in files, as the replicas' Secret holds it.
pub struct PeerKeys {
    pub ca: TestCa,
    pub cert: PathBuf,
    pub key: PathBuf,
    _dir: tempfile::TempDir,
}

impl PeerKeys {
    pub fn new() -> PeerKeys {
        install_crypto();
        let ca = TestCa::new("archway peer test CA");
        let issued = ca.issue_server(&[SERVICE_NAME]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        PeerKeys {
            ca,
            cert,
            key,
            _dir: dir,
        }
    }

    /// The key loaded as a replica loads it.
    pub fn certificate(&self) -> Arc<ReloadingCertificate> {
        Arc::new(ReloadingCertificate::from_files(&self.cert, &self.key).unwrap())
    }

    /// `inspector` as a replica's, asking whoever `leader` names (nobody
    /// while it says `None`: it leads, and goes by digest itself).
    pub fn replica(
        &self,
        inspector: Inspector,
        leader: Option<String>,
    ) -> (Inspector, watch::Sender<Option<String>>) {
        let (tx, rx) = watch::channel(leader);
        let peer = PeerClient::new(
            self.certificate(),
            rx,
            Duration::from_secs(10),
            inspector.metrics().clone(),
        )
        .unwrap();
        (inspector.with_peer(Some(Arc::new(peer))), tx)
    }
}

impl Default for PeerKeys {
    fn default() -> Self {
        PeerKeys::new()
    }
}

/// A replica's inspector served over HTTPS by archway's server, so that
/// others can ask it.
pub struct ServedReplica {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ServedReplica {
    pub async fn start(inspector: Inspector, keys: &PeerKeys) -> ServedReplica {
        let config = Config::default();
        let mut reviewer = archway::setup::reviewer(
            &config,
            Arc::new(config.static_policies()),
            inspector.metrics().clone(),
        )
        .unwrap();
        reviewer.inspector = inspector;
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let addr = listeners.webhook.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve(
            listeners,
            AppState::new(reviewer),
            keys.certificate(),
            server::ServerLimits::from(&config.server),
            async {
                let _ = rx.await;
            },
        ));
        ServedReplica {
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Its address as the Lease carries it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Stops it and waits until it has.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
    }
}

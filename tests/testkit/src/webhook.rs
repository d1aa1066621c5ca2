//! archway's webhook served for real over HTTPS, and a client that calls it
//! the way the API server does: trusting only the webhook's CA and checking
//! the Service's DNS name.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use archway::certs::ReloadingCertificate;
use archway::config::Config;
use archway::serve::server::{self, AppState, Listeners};
use base64::Engine;
use serde_json::{Value, json};

use crate::tls::TestCa;

/// The name the API server uses for the Service: `<service>.<namespace>.svc`.
pub const SERVICE_NAME: &str = "archway.archway.svc";

pub struct TestWebhook {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub ca: TestCa,
    pub cert_dir: tempfile::TempDir,
    /// Negotiates HTTP/2 by ALPN, as the API server does by default.
    pub client: reqwest::Client,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl TestWebhook {
    pub async fn start(config: Config) -> TestWebhook {
        install_crypto();
        let ca = TestCa::new("archway test CA");
        let issued = ca.issue_server(&[SERVICE_NAME, "archway.archway.svc.cluster.local"]);
        let cert_dir = tempfile::tempdir().unwrap();
        let (cert, key) = (
            cert_dir.path().join("tls.crt"),
            cert_dir.path().join("tls.key"),
        );
        std::fs::write(&cert, &issued.cert_pem).unwrap();
        std::fs::write(&key, &issued.key_pem).unwrap();
        let certificate = Arc::new(ReloadingCertificate::from_files(&cert, &key).unwrap());
        let reviewer =
            archway::setup::reviewer(&config, Arc::new(config.static_policies()), Arc::default())
                .unwrap();
        let listeners = Listeners::bind(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let addr = listeners.webhook.local_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let limits = server::ServerLimits::from(&config.server);
        let task = tokio::spawn(server::serve(
            listeners,
            AppState::new(reviewer),
            certificate,
            limits,
            async {
                let _ = rx.await;
            },
        ));
        let client = client_for(&ca.cert_pem, addr, false);
        TestWebhook {
            addr,
            admin,
            ca,
            cert_dir,
            client,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("https://{SERVICE_NAME}:{}/mutate", self.addr.port())
    }

    /// POSTs a body and returns the status and the JSON (or text) answer.
    pub async fn post(
        &self,
        client: &reqwest::Client,
        body: Vec<u8>,
    ) -> (u16, Value, reqwest::Version) {
        let response = client
            .post(self.url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request reaches the webhook");
        let status = response.status().as_u16();
        let version = response.version();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value, version)
    }

    pub async fn review(&self, body: &Value) -> Value {
        let (status, answer, _) = self
            .post(&self.client, serde_json::to_vec(body).unwrap())
            .await;
        assert_eq!(status, 200, "{answer}");
        answer
    }

    /// Stops accepting, lets reviews in flight finish, and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .unwrap()
                .unwrap();
        }
    }
}

/// A client like the API server's: trusts only `ca_pem`, checks the name
/// `archway.archway.svc`, which resolves to `addr`.
pub fn client_for(ca_pem: &str, addr: SocketAddr, http1_only: bool) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap();
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(SERVICE_NAME, addr)
        .no_proxy()
        .timeout(Duration::from_secs(30));
    if http1_only {
        builder = builder.http1_only();
    }
    builder.build().unwrap()
}

/// An AdmissionReview for creating `pod` in `namespace`.
pub fn pod_review(uid: &str, namespace: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// The response's patch, decoded from base64 and applied to `pod`.
pub fn apply_patch(answer: &Value, pod: &Value) -> Option<Value> {
    let response = &answer["response"];
    let patch = response.get("patch")?.as_str()?;
    assert_eq!(response["patchType"], "JSONPatch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch is a JSON Patch");
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &patch).expect("patch applies");
    Some(patched)
}

//! `archway serve` as a process: start-up, configuration reload, certificate
//! rotation under load, and graceful shutdown on SIGTERM.

use archway_testkit as support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::webhook::{SERVICE_NAME, apply_patch, client_for, install_crypto, pod_review};
use support::{
    CountingProxy, Fault, Format, ImageSpec, Registry, RegistryOptions, TestCa, build_layout,
};

struct Served {
    child: Child,
    webhook: SocketAddr,
    admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

impl Served {
    fn start(config: &Path, cert_dir: &Path) -> Served {
        let mut child = Command::new(env!("CARGO_BIN_EXE_archway"))
            .args(["--log-format", "json", "--config"])
            .arg(config)
            .args(["serve", "--tls-cert"])
            .arg(cert_dir.join("tls.crt"))
            .arg("--tls-key")
            .arg(cert_dir.join("tls.key"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let event = serde_json::from_str::<Value>(&line).unwrap_or_default();
                if event["message"] == "archway serving" {
                    let _ = tx.send((
                        event["webhook"].as_str().unwrap().to_string(),
                        event["admin"].as_str().unwrap().to_string(),
                    ));
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (webhook, admin) = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("archway serving");
        Served {
            child,
            webhook: webhook.parse().unwrap(),
            admin: admin.parse().unwrap(),
            logs,
        }
    }

    fn logged(&self, needle: &str) -> bool {
        self.logs.lock().unwrap().iter().any(|l| l.contains(needle))
    }
}

fn write_config(path: &Path, registry_hosts: &[String], rollout: u8) {
    std::fs::write(
        path,
        format!(
            "registry: {{ insecure: {registry_hosts:?} }}\nnamespaces:\n  shop: {{ mode: enforce, rollout: {rollout} }}\n\
             server: {{ listen: 127.0.0.1:0, adminListen: 127.0.0.1:0 }}\n"
        ),
    )
    .unwrap();
}

fn write_cert(ca: &TestCa, dir: &Path) -> String {
    let issued = ca.issue_server(&[SERVICE_NAME]);
    // Key first, then certificate: a reader in between sees a mismatched
    // pair, which archway must refuse and retry, never serve.
    std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
    std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
    issued.cert_pem
}

fn arch_of(answer: &Value, pod: &Value) -> String {
    let patched = apply_patch(answer, pod).expect("a patch");
    patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
        ["matchExpressions"][0]["values"][0]
        .as_str()
        .unwrap()
        .to_string()
}

/// The certificate the server presents on a fresh handshake (DER).
async fn served_certificate(ca_pem: &str, addr: SocketAddr) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVICE_NAME).unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    let cert: rustls::pki_types::CertificateDer =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    cert.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reloads_config_rotates_certificates_and_drains_on_sigterm() {
    install_crypto();
    let registry = Registry::start(RegistryOptions::plain());
    let layouts = tempfile::tempdir().unwrap();
    for reference in ["app:v1", "slow:v1"] {
        let layout = build_layout(
            &layouts.path().join(reference.replace(':', "-")),
            &ImageSpec::multi_arch().with_salt(reference),
        );
        registry.push(&layout.dir, reference, Format::Oci);
    }
    let proxy = CountingProxy::start(registry.addr()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("archway.yaml");
    let hosts = vec![registry.host(), proxy.host()];
    write_config(&config, &hosts, 0);
    let ca = TestCa::new("serve test CA");
    let first_cert = write_cert(&ca, dir.path());

    let spawned = Instant::now();
    let served = Served::start(&config, dir.path());
    let http = reqwest::Client::new();
    while http
        .get(format!("http://{}/readyz", served.admin))
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(spawned.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("spawn to ready: {:?}", spawned.elapsed());

    let client = client_for(&ca.cert_pem, served.webhook, false);
    let url = format!("https://{SERVICE_NAME}:{}/mutate", served.webhook.port());
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": format!("{}/app:v1", registry.host())}]}});
    let review = |client: reqwest::Client, url: String, pod: Value| async move {
        let response = client
            .post(url)
            .json(&pod_review("u", "shop", &pod))
            .send()
            .await?;
        response.error_for_status()?.json::<Value>().await
    };
    let answer = review(client.clone(), url.clone(), pod.clone())
        .await
        .unwrap();
    assert_eq!(arch_of(&answer, &pod), "amd64", "rollout 0");

    // The configuration changes: rollout 100 applies without a restart.
    write_config(&config, &hosts, 100);
    let changed = Instant::now();
    loop {
        let answer = review(client.clone(), url.clone(), pod.clone())
            .await
            .unwrap();
        if arch_of(&answer, &pod) == "arm64" {
            break;
        }
        assert!(
            changed.elapsed() < Duration::from_secs(10),
            "config not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("config change applied after {:?}", changed.elapsed());
    // An invalid file is refused; the running configuration stays.
    std::fs::write(&config, "namespaces: { shop: { mode: sometimes } }\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !served.logged("invalid configuration: keeping the previous one") {
        assert!(
            Instant::now() < deadline,
            "no log line for the invalid file"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = review(client.clone(), url.clone(), pod.clone())
        .await
        .unwrap();
    assert_eq!(arch_of(&answer, &pod), "arm64");

    // Certificate rotation while reviews keep coming, each on a new TLS
    // connection: zero failures, and the new certificate served soon.
    assert_eq!(
        served_certificate(&ca.cert_pem, served.webhook).await,
        der_of(&first_cert)
    );
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.cert_pem.as_bytes()).unwrap()])
        .resolve(SERVICE_NAME, served.webhook)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, sent, failed, url, pod) = (
            stop.clone(),
            sent.clone(),
            failed.clone(),
            url.clone(),
            pod.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let ok = review(fresh.clone(), url.clone(), pod.clone())
                    .await
                    .is_ok();
                sent.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_cert = write_cert(&ca, dir.path());
    let rotated = Instant::now();
    while served_certificate(&ca.cert_pem, served.webhook).await != der_of(&second_cert) {
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "new certificate not served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("new certificate served after {:?}", rotated.elapsed());
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    eprintln!(
        "reviews during rotation: {} sent, {} failed",
        sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(sent.load(Ordering::Relaxed) > 10);
    assert_eq!(failed.load(Ordering::Relaxed), 0);

    // SIGTERM with a review in flight (its registry is slow): the review is
    // answered, then archway exits 0.
    proxy.set_fault(Fault::Delay(Duration::from_millis(800)));
    let slow = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": format!("{}/slow:v1", proxy.host())}]}});
    let in_flight = tokio::spawn(review(client.clone(), url.clone(), slow.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut served = served;
    unsafe {
        libc::kill(served.child.id() as i32, libc::SIGTERM);
    }
    let answer = in_flight
        .await
        .unwrap()
        .expect("the review in flight is answered");
    assert_eq!(arch_of(&answer, &slow), "arm64");
    let status = tokio::task::spawn_blocking(move || {
        let status = served.child.wait().unwrap();
        (status, served)
    })
    .await
    .unwrap();
    assert_eq!(status.0.code(), Some(0), "exit status after SIGTERM");
    assert!(status.1.logged("archway stopped"));
}

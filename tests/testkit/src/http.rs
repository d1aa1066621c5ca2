//! Small HTTP helpers for tests: digests, the manifest Accept set, and a
//! plain-HTTP client (hyper) for talking to a registry or the proxy.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request};
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// The four manifest types a registry client must accept.
pub const MANIFEST_MEDIA_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

pub fn accept_all_manifests() -> String {
    MANIFEST_MEDIA_TYPES.join(", ")
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// One plain-HTTP/1.1 request to `host` ("127.0.0.1:PORT") on a fresh
/// connection, so tests see exactly one request per call.
pub async fn request(
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HttpResponse, String> {
    let stream = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("connect {host}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake {host}: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request {host}{path}: {e}"))?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body {host}{path}: {e}"))?
        .to_bytes()
        .to_vec();
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

/// GET that panics on transport errors (HTTP error statuses are returned).
pub async fn get(host: &str, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(Method::GET, host, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// GET a manifest with all four manifest media types accepted.
pub async fn get_manifest(host: &str, repo: &str, reference: &str) -> HttpResponse {
    let accept = accept_all_manifests();
    get(
        host,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("accept", &accept)],
    )
    .await
}

/// Blocking status-line probe, used to wait for a registry to come up. With
/// `ca_pem` it speaks TLS and verifies the chain (so a bad certificate setup
/// fails here rather than in a test).
pub fn probe_status(host: &str, path: &str, ca_pem: Option<&str>) -> Result<u16, String> {
    let mut tcp = TcpStream::connect(host).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut response = Vec::new();
    match ca_pem {
        None => {
            tcp.write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            tcp.read_to_end(&mut response).map_err(|e| e.to_string())?;
        }
        Some(pem) => {
            let config = rustls_client_config(pem);
            let name = rustls::pki_types::ServerName::try_from("127.0.0.1".to_string())
                .map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(request.as_bytes())
                .map_err(|e| e.to_string())?;
            // Go closes without close_notify sometimes; keep what was read.
            if let Err(e) = tls.read_to_end(&mut response)
                && response.is_empty()
            {
                return Err(e.to_string());
            }
        }
    }
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    Ok(status)
}

/// A rustls client config trusting only `ca_pem`.
pub fn rustls_client_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("parse CA pem")).expect("add CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

/// What a test's HTTPS server answers a request with.
pub type Answer = Result<hyper::Response<http_body_util::Full<Bytes>>, hyper::Error>;

/// Serves `handle` over HTTPS (HTTP/1.1) on 127.0.0.1, from a thread of
/// its own for the life of the test process, with a certificate `ca`
/// issued for `names` (`what` names it in panics); its port. The webhooks
/// and aggregated APIs the API server calls in tests are served so.
pub fn serve_https<F, Fut>(ca: &crate::tls::TestCa, names: &[&str], what: &str, handle: F) -> u16
where
    F: Fn(hyper::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Answer> + Send + 'static,
{
    let issued = ca.issue_server(names);
    let certs = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("{what} cert: {e}"));
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .unwrap_or_else(|e| panic!("{what} key: {e}"));
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap_or_else(|e| panic!("{what} TLS config: {e}"));
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind {what}: {e}"));
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, handle) = (acceptor.clone(), handle.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), hyper::service::service_fn(handle))
                        .await;
                });
            }
        });
    });
    port
}

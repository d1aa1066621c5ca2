//! The floor: the least any webhook must do, served the way archway serves.
//!
//! axum + rustls (ring provider; ALPN h2 and http/1.1; the certificate
//! `archway certs` makes), the same per-connection accept loop as
//! `src/serve/server.rs` (TLS handshake, then hyper-util's auto HTTP/1.1-or-2
//! builder over the axum router), on the same default tokio runtime. Every
//! `POST /mutate` is parsed just enough to echo the request's uid (serde_json
//! with a borrowed struct, as any real webhook must) and answered
//! "allowed, no patch". benches/load.sh drives it next to archway; archway's
//! throughput over this one's is the "against the floor" ratio.
//!
//! With `--read pod` it is the *pod floor*: each body is read as archway
//! reads it (one pass: the request's fields, and the pod through archway's
//! own `PodView`, made into a k8s-openapi `Pod`), then answered the same
//! "allowed, no patch". No webhook that must read the pod the way archway
//! does can come closer to the floor than this one: its ratio to the floor
//! is the ceiling of archway's, as if the lookups, the decision, the patch
//! and the larger answer cost nothing.
//!
//! ```sh
//! floor --listen 127.0.0.1:0 --cert tls.crt --key tls.key [--read uid|pod]
//! ```
//!
//! prints `floor listening on ADDR` once bound and serves until killed.
//! Run by `cargo bench` or `cargo test` (no `--listen`), it does nothing.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[path = "common/one_pass.rs"]
mod one_pass;

use archway::admission::pod::PodView;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use one_pass::OnePass;

/// archway's `server.maxBodyBytes` default.
const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct ReviewIn<'a> {
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
struct RequestIn<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReviewOut<'a> {
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
}

/// How the floor reads a body (`--read`).
#[derive(Clone, Copy, PartialEq)]
enum Read {
    /// The uid alone: the floor.
    Uid,
    /// The pod as archway reads it: the pod floor.
    Pod,
}

async fn mutate(State(read): State<Read>, body: Bytes) -> Response {
    if read == Read::Pod {
        return mutate_reading_the_pod(&body);
    }
    let review: ReviewIn<'_> = match serde_json::from_slice(&body) {
        Ok(review) => review,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(uid) = review.request.and_then(|r| r.uid) else {
        return (StatusCode::BAD_REQUEST, "no request uid\n").into_response();
    };
    allowed(&uid)
}

fn mutate_reading_the_pod(body: &[u8]) -> Response {
    // As archway: the body checked as UTF-8 once, then read as a `str`.
    let review: Result<OnePass<'_>, String> = std::str::from_utf8(body)
        .map_err(|e| e.to_string())
        .and_then(|text| serde_json::from_str(text).map_err(|e| e.to_string()));
    let request = match review {
        Ok(OnePass {
            request: Some(request),
            ..
        }) => request,
        Ok(_) => return (StatusCode::BAD_REQUEST, "no request\n").into_response(),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    // The pod archway's decision would read, kept until the answer is made.
    let pod = request.object.map(PodView::into_pod);
    let response = match &request.uid {
        Some(uid) => allowed(uid),
        None => (StatusCode::BAD_REQUEST, "no request uid\n").into_response(),
    };
    std::hint::black_box(pod);
    response
}

fn allowed(uid: &str) -> Response {
    let out = ReviewOut {
        api_version: "admission.k8s.io/v1",
        kind: "AdmissionReview",
        response: ResponseOut { uid, allowed: true },
    };
    match serde_json::to_vec(&out) {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

struct Args {
    listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
    read: Read,
}

fn parse_args() -> Result<Option<Args>, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if !args.iter().any(|a| a == "--listen") {
        // `cargo bench` / `cargo test` run every bench target (with
        // `--bench` or a filter); the floor only runs when asked to serve.
        return Ok(None);
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .ok_or_else(|| format!("{flag} VALUE is required"))
    };
    Ok(Some(Args {
        listen: value("--listen")?
            .parse()
            .map_err(|e| format!("--listen: {e}"))?,
        cert: value("--cert")?.into(),
        key: value("--key")?.into(),
        read: match value("--read").as_deref() {
            Err(_) | Ok("uid") => Read::Uid,
            Ok("pod") => Read::Pod,
            Ok(other) => return Err(format!("--read: uid or pod, not {other}")),
        },
    }))
}

fn tls_config(args: &Args) -> Result<rustls::ServerConfig, String> {
    let read = |path: &PathBuf| {
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let chain = CertificateDer::pem_slice_iter(&read(&args.cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate PEM: {e}"))?;
    let key =
        PrivateKeyDer::from_pem_slice(&read(&args.key)?).map_err(|e| format!("key PEM: {e}"))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("certificate: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

async fn serve(listener: TcpListener, tls: TlsAcceptor, read: Read) {
    let router = Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(read);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
            else {
                return;
            };
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            eprintln!(
                "floor: a server for benches/load.sh; run with --listen ADDR --cert F --key K [--read uid|pod]"
            );
            return std::process::ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = match tls_config(&args) {
        Ok(config) => TlsAcceptor::from(Arc::new(config)),
        Err(e) => {
            eprintln!("floor: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // archway's runtime: tokio's default multi-threaded one.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let listener = match TcpListener::bind(args.listen).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("floor: cannot listen on {}: {e}", args.listen);
                std::process::exit(1);
            }
        };
        println!("floor listening on {}", listener.local_addr().unwrap());
        serve(listener, tls, args.read).await;
    });
    std::process::ExitCode::SUCCESS
}

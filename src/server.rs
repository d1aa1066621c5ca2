//! The listeners: HTTPS for the webhook, plain HTTP for the admin port
//! (health, readiness, metrics), and a graceful drain on SIGTERM.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::admission::{ReviewRecord, Reviewer};
use crate::certs::ReloadingCertificate;
use crate::metrics;

/// A TLS handshake that has not finished by then is dropped: it holds a
/// connection slot and no review.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long reviews in flight get to finish after SIGTERM; the API server
/// gives a webhook at most 30 s, and our reviews are bounded far below.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// How often the serving certificate files are checked for rotation.
const CERT_POLL: Duration = Duration::from_secs(2);
/// The longest a client may take to send a request's headers, or its body:
/// the API server sends a review at once; a slower client is holding a
/// connection open, not sending a review.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Replaced whole when the configuration is reloaded; each review
    /// works with the one it started with.
    reviewer: Arc<RwLock<Reviewer>>,
    /// Set once the HTTPS listener is bound.
    pub serving: Arc<AtomicBool>,
}

impl AppState {
    pub fn new(reviewer: Reviewer) -> Self {
        AppState {
            reviewer: Arc::new(RwLock::new(reviewer)),
            serving: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The current reviewer (a cheap clone of shared parts).
    pub fn reviewer(&self) -> Reviewer {
        self.reviewer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn replace_reviewer(&self, reviewer: Reviewer) {
        *self.reviewer.write().unwrap_or_else(|e| e.into_inner()) = reviewer;
    }
}

/// The webhook's routes; tests drive it without a socket.
pub fn webhook_router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            max_body_bytes,
            body_deadline,
        ))
        .with_state(state)
}

/// The admin port's routes.
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(state)
}

/// A client that stops sending its body holds a task and a connection;
/// it gets 408 after `BODY_TIMEOUT` instead. The body is read here, under
/// the deadline and the size limit (413 past it), and handed on whole.
async fn body_deadline(
    State(limit): State<usize>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let too_large = || {
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("body larger than {limit} bytes\n"),
        )
            .into_response()
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large();
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(error)) if error.to_string().contains("length limit") => too_large(),
        Ok(Err(error)) => (
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {error}\n"),
        )
            .into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        )
            .into_response(),
    }
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    match state.reviewer().review(&body).await {
        Ok((review, record)) => {
            log_review(&record);
            count_review(&record);
            match serde_json::to_vec(&review) {
                Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
                Err(e) => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("cannot encode response: {e}"),
                )
                    .into_response(),
            }
        }
        Err(bad) => {
            tracing::warn!(reason = %bad, label = bad.metric_label(), "bad admission request");
            metrics::global()
                .bad_requests
                .get_or_create(&metrics::ReasonLabels {
                    reason: bad.metric_label().into(),
                })
                .inc();
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
    }
}

async fn ready(State(state): State<AppState>) -> Response {
    let serving = state.serving.load(Ordering::Acquire);
    let synced = state.reviewer().policies.is_ready();
    if serving && synced {
        (StatusCode::OK, "ready").into_response()
    } else {
        let why = if serving {
            "namespace policy not synced"
        } else {
            "webhook listener not bound"
        };
        (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
    }
}

fn count_review(record: &ReviewRecord) {
    let metrics = metrics::global();
    metrics
        .reviews
        .get_or_create(&metrics::ReviewLabels {
            namespace: record.namespace.clone(),
            decision: record.kind.label().into(),
            outcome: record.outcome.into(),
            architecture: record.placed.clone().unwrap_or_else(|| "none".into()),
        })
        .inc();
    metrics
        .review_duration
        .observe(record.elapsed.as_secs_f64());
    metrics.review_warnings.inc_by(record.warnings as u64);
    for architecture in &record.without_nodes {
        metrics
            .no_nodes
            .get_or_create(&metrics::ArchitectureLabels {
                architecture: architecture.clone(),
            })
            .inc();
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let metrics = metrics::global();
    metrics
        .cache_entries
        .set(state.reviewer().inspector.entry_count() as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

fn log_review(record: &ReviewRecord) {
    tracing::info!(
        uid = %record.uid,
        namespace = %record.namespace,
        pod = %record.pod,
        mode = ?record.mode,
        decision = record.kind.label(),
        outcome = record.outcome,
        reason = %record.reason,
        archs = ?record.architectures,
        placed = record.placed.as_deref().unwrap_or("-"),
        cache_hits = record.cache_hits,
        cache_misses = record.cache_misses,
        dry_run = record.dry_run,
        elapsed_ms = record.elapsed.as_secs_f64() * 1000.0,
        "review"
    );
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Bound listeners, ready to serve; binding first lets callers learn the
/// ports (tests bind port 0) before serving starts.
pub struct Listeners {
    pub webhook: TcpListener,
    pub admin: TcpListener,
}

impl Listeners {
    pub async fn bind(webhook: SocketAddr, admin: SocketAddr) -> Result<Self, ServerError> {
        let bind = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Bind { addr, source })
        };
        Ok(Listeners {
            webhook: bind(webhook).await?,
            admin: bind(admin).await?,
        })
    }
}

/// Serves both listeners until `shutdown` completes, then stops accepting,
/// lets reviews in flight finish, and returns.
pub async fn serve(
    listeners: Listeners,
    state: AppState,
    certificate: Arc<ReloadingCertificate>,
    max_body_bytes: usize,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    if certificate.watches_files() {
        tokio::spawn(watch_certificate(certificate.clone(), stop_rx.clone()));
    }
    let tls = TlsAcceptor::from(Arc::new(crate::certs::server_config(certificate)));
    let webhook = webhook_router(state.clone(), max_body_bytes);
    let admin = admin_router(state.clone());
    state.serving.store(true, Ordering::Release);
    let admin_task = tokio::spawn(accept_loop(listeners.admin, None, admin, stop_rx.clone()));
    accept_loop(listeners.webhook, Some(tls), webhook, stop_rx).await;
    let _ = admin_task.await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(BODY_TIMEOUT);
            match tls {
                Some(tls) => {
                    let stream =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                            Ok(Ok(stream)) => stream,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

async fn watch_certificate(
    certificate: Arc<ReloadingCertificate>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(CERT_POLL);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped(&mut stop) => return,
        }
        match certificate.reload_if_changed() {
            Ok(true) => tracing::info!("serving certificate reloaded"),
            Ok(false) => {}
            // Likely mid-rotation (one file written, not the other): keep
            // serving the old pair and look again at the next tick.
            Err(error) => tracing::warn!(%error, "new serving certificate not loaded yet"),
        }
    }
}

/// Completes once shutdown is signalled (or its sender is gone). The
/// watch guard is dropped here, inside, so callers' futures stay `Send`.
async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await.is_ok();
}

/// Completes on SIGTERM (what the kubelet sends) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down: no new connections, finishing reviews in flight");
}

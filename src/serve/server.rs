//! The listeners: HTTPS for the webhook, plain HTTP for the admin port
//! (health, readiness, metrics), and a graceful drain on SIGTERM.
//!
//! Anyone who can reach the webhook port can open connections and send
//! bodies, so each is bounded: connections at once (`maxConnections`), the
//! time to say anything (`BODY_TIMEOUT`), to read an answer
//! (`WRITE_TIMEOUT`) and to sit idle (`idleTimeout`), and the body bytes
//! held at once (`maxBodyBytesInFlight`).

mod budget;
mod connection;

pub use budget::{BodyBudget, Reservation};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use connection::{AcceptBackoff, Activity, WriteTimeout};
use futures::StreamExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::admission::{ReviewRecord, Reviewer, SharedReviewer};
use crate::certs::ReloadingCertificate;
use crate::config::ServerConfig;
use crate::metrics::{self, Metrics};

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
/// The longest a response write may make no progress: the client is not
/// reading, and the response would sit in memory for as long as it likes.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection closing (idle, or at shutdown) gets to finish.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The webhook listener's bounds, from the `server` configuration.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    pub max_body_bytes: usize,
    pub body_budget: Arc<BodyBudget>,
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub http2: bool,
}

impl From<&ServerConfig> for ServerLimits {
    fn from(config: &ServerConfig) -> Self {
        ServerLimits {
            max_body_bytes: config.max_body_bytes,
            body_budget: BodyBudget::new(config.max_body_bytes_in_flight),
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            http2: config.http2,
        }
    }
}

/// What the body middleware needs.
#[derive(Clone)]
struct BodyLimits {
    max_body_bytes: usize,
    budget: Arc<BodyBudget>,
    /// Counts the bodies refused for the budget.
    metrics: Arc<Metrics>,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The reviewer in force, shared with the controllers.
    pub reviewers: SharedReviewer,
    /// Set once the HTTPS listener is bound.
    pub serving: Arc<AtomicBool>,
    /// What `/metrics` renders: the reviewer's, where the requests are
    /// counted too.
    pub metrics: Arc<Metrics>,
    /// The serving certificate, whose key's secret other replicas prove
    /// when they ask this one (`lookup::peer`); set by `serve`.
    pub certificate: Option<Arc<ReloadingCertificate>>,
}

impl AppState {
    pub fn new(reviewer: Reviewer) -> Self {
        AppState {
            metrics: reviewer.metrics().clone(),
            reviewers: SharedReviewer::new(reviewer),
            serving: Arc::new(AtomicBool::new(false)),
            certificate: None,
        }
    }

    /// The current reviewer (a cheap clone of shared parts).
    pub fn reviewer(&self) -> Reviewer {
        self.reviewers.reviewer()
    }

    /// `reviewer` must record into the served registry (a reload builds it
    /// with the old one's): what it counted elsewhere would not be served.
    pub fn replace_reviewer(&self, reviewer: Reviewer) {
        debug_assert!(
            Arc::ptr_eq(reviewer.metrics(), &self.metrics),
            "a new reviewer records into a registry /metrics does not render"
        );
        self.reviewers.replace(reviewer);
    }
}

/// The webhook's routes; tests drive it without a socket. The budget of
/// body bytes in flight is the configuration's default.
pub fn webhook_router(state: AppState, max_body_bytes: usize) -> Router {
    let limits = ServerLimits {
        max_body_bytes,
        ..ServerLimits::from(&ServerConfig::default())
    };
    webhook_router_with(state, &limits)
}

/// The webhook's routes under `limits`.
pub fn webhook_router_with(state: AppState, limits: &ServerLimits) -> Router {
    let body = BodyLimits {
        max_body_bytes: limits.max_body_bytes,
        budget: limits.body_budget.clone(),
        metrics: state.metrics.clone(),
    };
    Router::new()
        .route("/mutate", post(mutate))
        .route(crate::lookup::peer::PATH, post(peer_answer))
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(body, body_deadline))
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
/// the deadline, the size limit (413 past it) and the budget of bytes in
/// flight (503 at once past it: the API server applies the webhook's
/// failurePolicy), and handed on whole. Its bytes stay reserved until the
/// review is answered: the pod read from them lives that long.
async fn body_deadline(
    State(limits): State<BodyLimits>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let limit = limits.max_body_bytes;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return too_large(limit);
    }
    let mut reservation = limits.budget.reservation();
    if let Some(declared) = declared
        && !reservation.grow(declared as usize)
    {
        return over_budget(&limits.metrics);
    }
    let (parts, body) = request.into_parts();
    let read = read_body(body, limit, declared, &mut reservation);
    match tokio::time::timeout(BODY_TIMEOUT, read).await {
        Ok(Ok(bytes)) => {
            let response = next
                .run(axum::extract::Request::from_parts(
                    parts,
                    axum::body::Body::from(bytes),
                ))
                .await;
            drop(reservation);
            response
        }
        Ok(Err(BodyError::TooLarge)) => too_large(limit),
        Ok(Err(BodyError::OverBudget)) => over_budget(&limits.metrics),
        Ok(Err(BodyError::Read(error))) => (
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

enum BodyError {
    TooLarge,
    OverBudget,
    Read(axum::Error),
}

/// Reads the body up to `limit` bytes; without a declared length, each
/// chunk is reserved from the budget as it arrives.
async fn read_body(
    body: axum::body::Body,
    limit: usize,
    declared: Option<u64>,
    reservation: &mut Reservation,
) -> Result<Bytes, BodyError> {
    let reserve_as_read = declared.is_none();
    let mut chunks = body.into_data_stream();
    // One allocation of the declared size: growing by doubling would hold
    // up to twice the body for a moment.
    let mut collected = Vec::with_capacity(declared.map_or(0, |len| len as usize));
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(BodyError::Read)?;
        if collected.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge);
        }
        if reserve_as_read && !reservation.grow(chunk.len()) {
            return Err(BodyError::OverBudget);
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

fn too_large(limit: usize) -> Response {
    (
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("body larger than {limit} bytes\n"),
    )
        .into_response()
}

fn over_budget(metrics: &Metrics) -> Response {
    metrics
        .bad_requests
        .get_or_create(&metrics::ReasonLabels {
            reason: "over_body_budget".into(),
        })
        .inc();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, "1")],
        "archway is holding its budget of request bodies; retry\n",
    )
        .into_response()
}

async fn mutate(State(state): State<AppState>, body: Bytes) -> Response {
    match state.reviewer().review(&body).await {
        Ok((review, record)) => {
            record.log();
            count_review(&state.metrics, &record);
            match review.to_json() {
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
            state
                .metrics
                .bad_requests
                .get_or_create(&metrics::ReasonLabels {
                    reason: bad.metric_label().into(),
                })
                .inc();
            (StatusCode::BAD_REQUEST, format!("{bad}\n")).into_response()
        }
    }
}

/// Another replica asks for an image's platforms (`lookup::peer`).
async fn peer_answer(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let Some(certificate) = state.certificate.clone() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let inspector = state.reviewer().inspector.clone();
    crate::lookup::peer::answer(&inspector, &certificate, &headers, &body).await
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

fn count_review(metrics: &Metrics, record: &ReviewRecord) {
    metrics
        .reviews
        .get_or_create(&metrics::ReviewLabels {
            // A review's namespace is whatever its sender wrote; only the
            // namespaces with a policy (opted in) are a bounded set.
            namespace: if record.mode.is_some() {
                metrics::Label::opted_in_namespace(&record.namespace)
            } else {
                metrics::Label::OTHER
            },
            decision: metrics::Label::fixed(record.kind.label()),
            outcome: metrics::Label::fixed(record.outcome),
            architecture: metrics::architectures_label(
                record.placed.iter().flat_map(|placed| placed.split(',')),
            ),
        })
        .inc();
    metrics
        .review_duration
        .observe(record.elapsed.as_secs_f64());
    metrics.review_warnings.inc_by(record.warnings as u64);
    let by_architecture = [
        (&metrics.no_nodes, &record.without_nodes),
        (&metrics.unrunnable, &record.unrunnable_on),
    ];
    for (family, architectures) in by_architecture {
        for architecture in architectures {
            family
                .get_or_create(&metrics::ArchitectureLabels {
                    architecture: metrics::architecture_label(architecture),
                })
                .inc();
        }
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    let metrics = &state.metrics;
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
    limits: ServerLimits,
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
    let state = AppState {
        certificate: Some(certificate.clone()),
        ..state
    };
    let tls = TlsAcceptor::from(Arc::new(crate::certs::server_config(
        certificate,
        limits.http2,
    )));
    let webhook = webhook_router_with(state.clone(), &limits);
    let admin = admin_router(state.clone());
    state.serving.store(true, Ordering::Release);
    // The admin port is for the kubelet and Prometheus; it gets a small
    // share of its own so a flood of the webhook port cannot starve it.
    let admin_limits = ServerLimits {
        max_connections: 64,
        ..limits.clone()
    };
    let admin_task = tokio::spawn(accept_loop(
        listeners.admin,
        None,
        admin,
        admin_limits,
        stop_rx.clone(),
    ));
    accept_loop(listeners.webhook, Some(tls), webhook, limits, stop_rx).await;
    let _ = admin_task.await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: Router,
    limits: ServerLimits,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut backoff = AcceptBackoff::default();
    loop {
        // Past the cap, connections wait in the kernel's listen backlog.
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.succeeded();
                    accepted
                }
                Err(error) => {
                    // Out of file descriptors and the like: pause longer
                    // while it lasts, and say so once in a while.
                    let (pause, log) = backoff.failed();
                    if log {
                        tracing::warn!(%error, failures = backoff.failures(), pause_ms = pause.as_millis() as u64, "accept failed");
                    }
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            tls: tls.clone(),
            idle_timeout: limits.idle_timeout,
            stop: stop.clone(),
        };
        tokio::spawn(async move {
            connection.serve(stream, peer).await;
            drop(slot);
        });
    }
    drop(listener);
    // Every connection holds a slot until it is done: all slots back
    // means all reviews in flight have been answered.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    if tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// One accepted connection and what it is served with.
struct Connection {
    router: Router,
    tls: Option<TlsAcceptor>,
    idle_timeout: Duration,
    stop: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, peer: SocketAddr) {
        let stream = WriteTimeout::new(stream, WRITE_TIMEOUT);
        match self.tls.clone() {
            Some(tls) => {
                let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(stream)).await
                {
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
                self.serve_http(TokioIo::new(stream)).await
            }
            None => self.serve_http(TokioIo::new(stream)).await,
        }
    }

    /// Serves HTTP/1.1 or HTTP/2 until the client closes, the connection
    /// has had no review for its idle time, or shutdown.
    async fn serve_http<I>(mut self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let activity = Activity::new();
        let tracked = activity.clone();
        let router = self.router.clone();
        let service = TowerToHyperService::new(tower::service_fn(
            move |request: axum::extract::Request<hyper::body::Incoming>| {
                let in_flight = tracked.begin();
                let mut router = router.clone();
                async move {
                    let response = tower::Service::call(&mut router, request).await;
                    drop(in_flight);
                    response
                }
            },
        ));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(BODY_TIMEOUT)
            .max_buf_size(64 * 1024);
        // HTTP/2 flow-control windows bound what a client can make archway
        // buffer before a body is admitted; a review still arrives in a
        // few round trips.
        builder
            .http2()
            .timer(hyper_util::rt::TokioTimer::new())
            .initial_stream_window_size(256 * 1024)
            .initial_connection_window_size(512 * 1024)
            .max_concurrent_streams(64)
            .max_header_list_size(64 * 1024)
            .max_send_buf_size(256 * 1024);
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let grace = loop {
            let idle_at = activity
                .idle_at(BODY_TIMEOUT, self.idle_timeout)
                .unwrap_or_else(|| tokio::time::Instant::now() + BODY_TIMEOUT);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = tokio::time::sleep_until(idle_at) => {
                    let still_idle = activity
                        .idle_at(BODY_TIMEOUT, self.idle_timeout)
                        .is_some_and(|at| at <= tokio::time::Instant::now());
                    if still_idle {
                        break CLOSE_GRACE;
                    }
                }
                _ = stopped(&mut self.stop) => break DRAIN_TIMEOUT,
            }
        };
        // HTTP/1: closes once the response in progress is written; HTTP/2:
        // GOAWAY, then closes when the streams in progress end.
        connection.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(grace, connection).await;
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

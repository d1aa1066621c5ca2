//! A plain-HTTP reverse proxy in front of a registry that records every
//! request and can inject faults, so tests can count registry round trips
//! (cache hits, retries) and simulate a misbehaving registry.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One request that reached the proxy.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub accept: Option<String>,
    pub authorization: Option<String>,
    /// Status sent back (None while in flight, or when the connection was reset).
    pub status: Option<u16>,
    /// The fault applied, if any.
    pub fault: Option<Fault>,
}

impl Recorded {
    pub fn is_manifest(&self) -> bool {
        self.path.contains("/manifests/")
    }

    pub fn is_blob(&self) -> bool {
        self.path.contains("/blobs/")
    }
}

/// What to do with a request instead of (or before) forwarding it.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Forward normally.
    None,
    /// Answer with this status and headers (empty body); upstream never sees it.
    Status(u16, Vec<(String, String)>),
    /// Wait, then forward.
    Delay(Duration),
    /// Forward, and add these headers to the upstream's answer (as Docker
    /// Hub adds `ratelimit-remaining`).
    AddHeaders(Vec<(String, String)>),
    /// Drop the connection without a response (client sees EOF / reset).
    Reset,
    /// Answer with this status, headers and body; upstream never sees it.
    /// Serves crafted manifests, configs or tokens (and lies about digests:
    /// the bytes need not match what was asked for).
    Body(u16, Vec<(String, String)>, Bytes),
    /// Never answer: the request is held (headers unanswered) until the
    /// client gives up, the proxy is dropped, or `STALL_LIMIT` passes.
    Stall,
    /// Answer `status` and `headers` at once, then a body of `total` bytes
    /// (`b'x'`) sent `chunk` bytes at a time every `interval`. Chunked
    /// unless `headers` set a Content-Length (which may lie). The bytes
    /// handed to the connection are counted: `CountingProxy::dripped_bytes`.
    Drip {
        status: u16,
        headers: Vec<(String, String)>,
        chunk: usize,
        interval: Duration,
        total: u64,
    },
}

/// The longest a `Fault::Stall` holds a request, so no test can hang on it.
const STALL_LIMIT: Duration = Duration::from_secs(120);

type Rule = Box<dyn FnMut(&Recorded) -> Fault + Send>;

struct State {
    upstream: SocketAddr,
    requests: Mutex<Vec<Recorded>>,
    rule: Mutex<Option<Rule>>,
    /// Body bytes of `Fault::Drip` answers handed to hyper so far.
    dripped: AtomicU64,
    /// Set when the proxy is dropped: stalled requests end then.
    closed: tokio::sync::watch::Receiver<bool>,
}

pub struct CountingProxy {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
    close: tokio::sync::watch::Sender<bool>,
}

type ProxyBody = BoxBody<Bytes, hyper::Error>;

impl CountingProxy {
    /// Listens on 127.0.0.1:0 in the current tokio runtime.
    pub async fn start(upstream: SocketAddr) -> CountingProxy {
        Self::start_on("127.0.0.1:0".parse().unwrap(), upstream).await
    }

    /// Listens on 127.0.0.1:0 on a thread and runtime of its own, for the
    /// life of the test process: for a proxy that must outlive the runtime
    /// that asked for it, as one a file's tests share, or one archway keeps
    /// calling after a test's runtime has ended.
    pub fn start_detached(upstream: SocketAddr) -> CountingProxy {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("proxy runtime");
            runtime.block_on(async move {
                tx.send(CountingProxy::start(upstream).await).unwrap();
                std::future::pending::<()>().await
            });
        });
        rx.recv().expect("the proxy's thread started it")
    }

    /// Listens on `bind` (`[::1]:0` for a registry at an IPv6 address).
    pub async fn start_on(bind: SocketAddr, upstream: SocketAddr) -> CountingProxy {
        let listener = TcpListener::bind(bind).await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let (close, closed) = tokio::sync::watch::channel(false);
        let state = Arc::new(State {
            upstream,
            requests: Mutex::new(Vec::new()),
            rule: Mutex::new(None),
            dripped: AtomicU64::new(0),
            closed,
        });
        let accept_state = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = accept_state.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { handle(state, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CountingProxy {
            addr,
            state,
            task,
            close,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// "127.0.0.1:PORT" (or "[::1]:PORT"); use it as the registry host in
    /// image references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.state.upstream
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        self.state.requests.lock().unwrap().clear();
    }

    pub fn count(&self, pred: impl Fn(&Recorded) -> bool) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| pred(r))
            .count()
    }

    pub fn manifest_requests(&self) -> usize {
        self.count(Recorded::is_manifest)
    }

    /// Applies `fault` to every following request.
    pub fn set_fault(&self, fault: Fault) {
        self.set_fault_rule(move |_| fault.clone());
    }

    /// Decides per request; the closure may keep state (e.g. "fail the first
    /// two manifest GETs").
    pub fn set_fault_rule(&self, rule: impl FnMut(&Recorded) -> Fault + Send + 'static) {
        *self.state.rule.lock().unwrap() = Some(Box::new(rule));
    }

    pub fn clear_fault(&self) {
        *self.state.rule.lock().unwrap() = None;
    }

    /// Body bytes of `Fault::Drip` answers handed to the connection so far
    /// (what the client read, plus what socket buffers hold).
    pub fn dripped_bytes(&self) -> u64 {
        self.state.dripped.load(Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        let _ = self.close.send(true);
        self.task.abort();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<ProxyBody>, String> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let mut record = Recorded {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().map(str::to_string),
        accept: header("accept"),
        authorization: header("authorization"),
        status: None,
        fault: None,
    };
    let fault = state
        .rule
        .lock()
        .unwrap()
        .as_mut()
        .map(|rule| rule(&record))
        .unwrap_or(Fault::None);
    if fault != Fault::None {
        record.fault = Some(fault.clone());
    }
    let index = {
        let mut requests = state.requests.lock().unwrap();
        requests.push(record);
        requests.len() - 1
    };
    let set_status = |status: u16| {
        // `reset()` may have cleared the list meanwhile; then skip.
        if let Some(r) = state.requests.lock().unwrap().get_mut(index) {
            r.status = Some(status);
        }
    };

    let mut added = Vec::new();
    match fault {
        Fault::None => {}
        Fault::Delay(d) => tokio::time::sleep(d).await,
        Fault::AddHeaders(headers) => added = headers,
        Fault::Status(code, headers) => {
            let mut resp = Response::builder().status(code);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            set_status(code);
            return Ok(resp.body(full(Bytes::new())).unwrap());
        }
        // An error from the service makes hyper drop the connection unanswered.
        Fault::Reset => return Err("injected reset".to_string()),
        Fault::Body(code, headers, body) => {
            let mut resp = Response::builder().status(code);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            set_status(code);
            return Ok(resp.body(full(body)).unwrap());
        }
        Fault::Stall => {
            let mut closed = state.closed.clone();
            let dropped = async move {
                // The guard is dropped inside, so this future stays `Send`.
                let _ = closed.wait_for(|closed| *closed).await.is_ok();
            };
            tokio::select! {
                _ = dropped => {}
                _ = tokio::time::sleep(STALL_LIMIT) => {}
            }
            return Err("stalled request ended".to_string());
        }
        Fault::Drip {
            status,
            headers,
            chunk,
            interval,
            total,
        } => {
            let mut resp = Response::builder().status(status);
            for (k, v) in headers {
                resp = resp.header(k, v);
            }
            set_status(status);
            return Ok(resp
                .body(drip(state.clone(), chunk, interval, total))
                .unwrap());
        }
    }

    let resp = match forward(state.upstream, req).await {
        Ok(mut resp) => {
            for (k, v) in added {
                resp.headers_mut().insert(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    hyper::header::HeaderValue::from_str(&v).unwrap(),
                );
            }
            resp.map(|b| b.boxed())
        }
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(full(Bytes::from(format!("proxy: upstream error: {e}"))))
            .unwrap(),
    };
    set_status(resp.status().as_u16());
    Ok(resp)
}

/// Sends the request upstream on a fresh connection. The Host header is left
/// as the client sent it (the proxy's address), so the `Location` URLs that
/// distribution builds from it point back through the proxy.
async fn forward(
    upstream: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Incoming>, String> {
    let stream = TcpStream::connect(upstream)
        .await
        .map_err(|e| format!("connect {upstream}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    req.headers_mut().remove("connection");
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// A body of `total` bytes sent `chunk` at a time every `interval`; it
/// stops when the client stops reading (hyper stops polling it).
fn drip(state: Arc<State>, chunk: usize, interval: Duration, total: u64) -> ProxyBody {
    let chunk = chunk.max(1);
    let piece = Bytes::from(vec![b'x'; chunk]);
    let stream = futures::stream::unfold(0u64, move |sent| {
        let state = state.clone();
        let piece = piece.clone();
        async move {
            if sent >= total {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(interval).await;
            }
            let len = (total - sent).min(piece.len() as u64);
            state.dripped.fetch_add(len, Ordering::Relaxed);
            let frame = Frame::data(piece.slice(..len as usize));
            Some((Ok::<_, std::convert::Infallible>(frame), sent + len))
        }
    });
    StreamBody::new(stream)
        .map_err(|never| match never {})
        .boxed()
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

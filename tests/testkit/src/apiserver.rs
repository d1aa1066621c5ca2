//! A small, faithful stand-in for the Kubernetes API server, enough for
//! archway's cluster view: list and watch of namespaces and nodes (with
//! resourceVersions, label selectors, bookmarks and the metadata-only
//! `PartialObjectMetadata` form), get of secrets, pods and workloads for
//! audit, and 404 answers as the real server gives them. Served over
//! plain HTTP on 127.0.0.1 and reached through the real kube client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::sync::broadcast;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct Change {
    resource: &'static str,
    before: Option<Value>,
    after: Option<Value>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    /// resource ("namespaces", "nodes", "pods", ...) -> key -> object.
    objects: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<(u64, Change)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn key_of(object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    match object["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl FakeApiServer {
    pub async fn start() -> FakeApiServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            resource_version: 100,
            ..State::default()
        }));
        let (changes, _) = broadcast::channel(1024);
        let task = {
            let state = state.clone();
            let changes = changes.clone();
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let state = state.clone();
                    let changes = changes.clone();
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(move |req| {
                            let state = state.clone();
                            let changes = changes.clone();
                            async move { Ok::<_, Infallible>(handle(req, state, changes).await) }
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        FakeApiServer {
            addr,
            state,
            changes,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client talking to this stand-in.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Creates or replaces an object of `resource` (a k8s-openapi type).
    pub fn put<T: serde::Serialize>(&self, resource: &'static str, object: &T) {
        let mut value = serde_json::to_value(object).unwrap();
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version;
        value["metadata"]["resourceVersion"] = json!(rv.to_string());
        let key = key_of(&value);
        let before = state
            .objects
            .entry(resource)
            .or_default()
            .insert(key, value.clone());
        let _ = self.changes.send((
            rv,
            Change {
                resource,
                before,
                after: Some(value),
            },
        ));
    }

    pub fn delete(&self, resource: &'static str, key: &str) {
        let mut state = self.state.lock().unwrap();
        state.resource_version += 1;
        let rv = state.resource_version;
        if let Some(mut before) = state.objects.entry(resource).or_default().remove(key) {
            before["metadata"]["resourceVersion"] = json!(rv.to_string());
            let _ = self.changes.send((
                rv,
                Change {
                    resource,
                    before: Some(before),
                    after: None,
                },
            ));
        }
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": message, "reason": reason, "code": code}),
    )
}

fn json_response(code: u16, value: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(value).unwrap())).boxed())
        .unwrap()
}

fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%' && i + 2 < bytes.len())
            .then(|| u8::from_str_radix(&s[i + 1..i + 3], 16).ok())
            .flatten();
        if let Some(b) = escaped {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Label selectors as archway uses them: `key`, `key=value`, `!key`,
/// comma-separated (ANDed).
fn matches_selector(object: &Value, selector: &Option<String>) -> bool {
    let Some(selector) = selector.as_deref().filter(|s| !s.is_empty()) else {
        return true;
    };
    let labels = &object["metadata"]["labels"];
    selector.split(',').all(|term| {
        if let Some(key) = term.strip_prefix('!') {
            labels.get(key).is_none()
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            labels.get(key).and_then(Value::as_str) == Some(value)
        } else {
            labels.get(term).is_some()
        }
    })
}

/// The metadata-only form kube asks for with `as=PartialObjectMetadata`.
fn shape(object: &Value, metadata_only: bool) -> Value {
    if metadata_only {
        json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object["metadata"]})
    } else {
        object.clone()
    }
}

/// `/api/v1/namespaces`, `/api/v1/namespaces/NS/pods`, `/apis/apps/v1/deployments`...
/// -> (resource, namespace, name).
fn route(path: &str) -> Option<(String, Option<String>, Option<String>)> {
    let rest = path
        .strip_prefix("/api/v1/")
        .or_else(|| path.strip_prefix("/apis/apps/v1/"))
        .or_else(|| path.strip_prefix("/apis/batch/v1/"))?;
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [resource] => Some((resource.to_string(), None, None)),
        ["namespaces", name] => Some(("namespaces".into(), None, Some(name.to_string()))),
        ["namespaces", ns, resource] => Some((resource.to_string(), Some(ns.to_string()), None)),
        ["namespaces", ns, resource, name] => Some((
            resource.to_string(),
            Some(ns.to_string()),
            Some(name.to_string()),
        )),
        [resource, name] => Some((resource.to_string(), None, Some(name.to_string()))),
        _ => None,
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    state: Arc<Mutex<State>>,
    changes: broadcast::Sender<(u64, Change)>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let accept = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if req.method() != hyper::Method::GET {
        return status(405, "MethodNotAllowed", "the stand-in serves reads only");
    }
    let Some((resource, namespace, name)) = route(&path) else {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    };
    let metadata_only = accept.contains("as=PartialObjectMetadata");
    let selector = query_param(&query, "labelSelector");

    if let Some(name) = name {
        let key = match &namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.clone(),
        };
        let state = state.lock().unwrap();
        return match state
            .objects
            .get(resource.as_str())
            .and_then(|o| o.get(&key))
        {
            Some(object) => json_response(200, &shape(object, metadata_only)),
            None => status(404, "NotFound", &format!("{resource} \"{name}\" not found")),
        };
    }

    let in_scope = |object: &Value| match &namespace {
        Some(ns) => object["metadata"]["namespace"].as_str() == Some(ns.as_str()),
        None => true,
    };
    if query_param(&query, "watch").is_some_and(|w| w == "true" || w == "1") {
        let since: u64 = query_param(&query, "resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let timeout = query_param(&query, "timeoutSeconds")
            .and_then(|v| v.parse().ok())
            .unwrap_or(290u64);
        let bookmarks = query_param(&query, "allowWatchBookmarks").is_some_and(|v| v == "true");
        let mut receiver = changes.subscribe();
        let current = state.lock().unwrap().resource_version;
        let resource_static = resource.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout.min(30));
            let mut bookmark = tokio::time::interval(Duration::from_millis(500));
            let mut last_rv = since.max(current);
            loop {
                let event = tokio::select! {
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = bookmark.tick(), if bookmarks => {
                        let kind = if resource_static == "nodes" { "Node" } else { "Namespace" };
                        Some(json!({"type": "BOOKMARK", "object": {"kind": if metadata_only { "PartialObjectMetadata" } else { kind },
                            "apiVersion": if metadata_only { "meta.k8s.io/v1" } else { "v1" },
                            "metadata": {"resourceVersion": last_rv.to_string()}}}))
                    }
                    change = receiver.recv() => match change {
                        Ok((rv, change)) if rv > since && change.resource == resource_static => {
                            last_rv = rv;
                            watch_event(&change, &selector, metadata_only)
                        }
                        Ok(_) => None,
                        // The watcher fell behind: like the real server, end
                        // the watch; the client resumes or relists.
                        Err(_) => break,
                    },
                };
                if let Some(event) = event {
                    let mut line = serde_json::to_vec(&event).unwrap();
                    line.push(b'\n');
                    if tx.send(Ok(Frame::data(Bytes::from(line)))).await.is_err() {
                        break;
                    }
                }
            }
        });
        let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        return Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/json")
            .body(BodyExt::boxed(body))
            .unwrap();
    }

    let state = state.lock().unwrap();
    let items: Vec<Value> = state
        .objects
        .get(resource.as_str())
        .into_iter()
        .flat_map(|objects| objects.values())
        .filter(|o| in_scope(o) && matches_selector(o, &selector))
        .map(|o| shape(o, metadata_only))
        .collect();
    let kind = if metadata_only {
        "PartialObjectMetadataList".to_string()
    } else {
        format!("{}List", list_kind(&resource))
    };
    json_response(
        200,
        &json!({"kind": kind, "apiVersion": if metadata_only { "meta.k8s.io/v1" } else { api_version(&resource) },
                "metadata": {"resourceVersion": state.resource_version.to_string()}, "items": items}),
    )
}

fn api_version(resource: &str) -> &'static str {
    match resource {
        "deployments" | "statefulsets" | "daemonsets" | "replicasets" => "apps/v1",
        "jobs" | "cronjobs" => "batch/v1",
        _ => "v1",
    }
}

fn list_kind(resource: &str) -> &'static str {
    match resource {
        "namespaces" => "Namespace",
        "nodes" => "Node",
        "pods" => "Pod",
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "daemonsets" => "DaemonSet",
        "replicasets" => "ReplicaSet",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        _ => "Unknown",
    }
}

/// What a watcher with `selector` sees of a change: an object that starts
/// matching is ADDED, one that stops matching is DELETED, as the API
/// server's watch cache does.
fn watch_event(change: &Change, selector: &Option<String>, metadata_only: bool) -> Option<Value> {
    let before = change
        .before
        .as_ref()
        .filter(|o| matches_selector(o, selector));
    let after = change
        .after
        .as_ref()
        .filter(|o| matches_selector(o, selector));
    let (kind, object) = match (before, after, &change.after) {
        (None, Some(after), _) => ("ADDED", after.clone()),
        (Some(_), Some(after), _) => ("MODIFIED", after.clone()),
        // Stopped matching: DELETED with the object's latest state.
        (Some(_), None, Some(latest)) => ("DELETED", latest.clone()),
        (Some(before), None, None) => ("DELETED", before.clone()),
        (None, None, _) => return None,
    };
    Some(json!({"type": kind, "object": shape(&object, metadata_only)}))
}

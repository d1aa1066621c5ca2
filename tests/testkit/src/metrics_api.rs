//! A `metrics.k8s.io` stand-in, served through the real API server's
//! aggregation layer as metrics-server is: an HTTPS server in the test
//! process answering discovery and PodMetrics with figures the test sets,
//! an `APIService` `v1beta1.metrics.k8s.io` for it, and the Service that
//! APIService names.
//!
//! The test control plane has no kube-proxy, so a ClusterIP Service leads
//! nowhere, and Endpoints refuse 127.0.0.1. The Service is therefore of type
//! ExternalName, `localhost`: the aggregator resolves an ExternalName
//! Service to `https://<externalName>:<the APIService's port>`
//! (k8s.io/apiserver/pkg/util/proxy ResolveCluster), which is this server.
//! It still checks the server's certificate against the APIService's
//! `caBundle` for the name `<service>.<namespace>.svc`, as it would in a
//! cluster, so the certificate is issued for that name.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::controlplane::{ControlPlane, wait_for};
use crate::http::serve_https;
use crate::tls::TestCa;

/// Where the Service lives, as metrics-server's does.
pub const NAMESPACE: &str = "kube-system";
pub const SERVICE: &str = "metrics-server";
pub const API_SERVICE: &str = "v1beta1.metrics.k8s.io";

/// One pod's figures, as metrics-server writes them: CPU `12345678n`,
/// memory `123456Ki`, per container.
pub type ContainerUsage = Vec<(String, String, String)>;

/// Each pod's containers' usage, by (namespace, pod).
type Figures = Arc<Mutex<BTreeMap<(String, String), ContainerUsage>>>;

pub struct MetricsApi {
    pub port: u16,
    pub ca_pem: String,
    figures: Figures,
    /// Every request's path and query, in order: the test can tell that
    /// what it read came through here.
    pub requests: Arc<Mutex<Vec<String>>>,
}

impl MetricsApi {
    /// Serves on 127.0.0.1 (HTTPS, HTTP/1.1) from a thread of its own, for
    /// the life of the test process; no pod has figures yet.
    pub fn start() -> MetricsApi {
        let ca = TestCa::new("metrics.k8s.io stand-in CA");
        let figures: Figures = Arc::default();
        let requests: Arc<Mutex<Vec<String>>> = Arc::default();
        let (served, seen) = (figures.clone(), requests.clone());
        let port = serve_https(
            &ca,
            &[&format!("{SERVICE}.{NAMESPACE}.svc")],
            "metrics stand-in",
            move |request: hyper::Request<hyper::body::Incoming>| {
                let uri = request.uri().clone();
                seen.lock().unwrap().push(uri.to_string());
                let (status, body) = answer(uri.path(), &served.lock().unwrap());
                async move {
                    Ok(hyper::Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap())
                }
            },
        );
        MetricsApi {
            port,
            ca_pem: ca.cert_pem.clone(),
            figures,
            requests,
        }
    }

    /// From now on, `namespace/pod` uses `cpu` and `memory` (quantities as
    /// metrics-server writes them) in its one container `main`.
    pub fn set(&self, namespace: &str, pod: &str, cpu: &str, memory: &str) {
        self.figures.lock().unwrap().insert(
            (namespace.to_string(), pod.to_string()),
            vec![("main".into(), cpu.into(), memory.into())],
        );
    }

    /// The Service and the APIService that route `metrics.k8s.io` here.
    pub fn objects(&self) -> Vec<Value> {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        vec![
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": SERVICE, "namespace": NAMESPACE},
                "spec": {"type": "ExternalName", "externalName": "localhost"},
            }),
            json!({
                "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                "metadata": {"name": API_SERVICE},
                "spec": {
                    "group": "metrics.k8s.io", "version": "v1beta1",
                    "groupPriorityMinimum": 100, "versionPriority": 100,
                    "service": {"name": SERVICE, "namespace": NAMESPACE, "port": self.port},
                    "caBundle": ca,
                },
            }),
        ]
    }

    /// Registers it with `plane` and waits until the aggregator reports
    /// the APIService Available (it reached discovery here, through the
    /// Service, trusting the CA) and serves PodMetrics through it.
    pub fn register(&self, plane: &ControlPlane) {
        plane.apply(&self.objects());
        wait_for(
            "the APIService v1beta1.metrics.k8s.io to be Available",
            Duration::from_secs(60),
            || {
                let text = plane
                    .try_kubectl(&["get", "apiservice", API_SERVICE, "-o", "json"], None)
                    .ok()?;
                let service: Value = serde_json::from_str(&text).ok()?;
                let available = (service["status"]["conditions"].as_array()?.iter())
                    .any(|c| c["type"] == "Available" && c["status"] == "True");
                available.then_some(())
            },
        );
        wait_for(
            "PodMetrics through the aggregation layer",
            Duration::from_secs(30),
            || {
                plane
                    .try_kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/pods"], None)
                    .ok()
            },
        );
    }

    /// Paths of the PodMetrics lists asked for so far.
    pub fn pod_lists(&self) -> Vec<String> {
        (self.requests.lock().unwrap().iter())
            .filter(|r| r.contains("/pods"))
            .cloned()
            .collect()
    }
}

/// The answer to a GET of `path`: discovery of the group version, the
/// PodMetrics of one namespace or all, NodeMetrics (none), or 404.
fn answer(path: &str, figures: &BTreeMap<(String, String), ContainerUsage>) -> (u16, Value) {
    let now = "2026-12-05T10:00:00Z";
    let pods = |only: Option<&str>| {
        let items: Vec<Value> = (figures.iter())
            .filter(|((ns, _), _)| only.is_none_or(|only| only == ns))
            .map(|((ns, name), containers)| {
                json!({
                    "metadata": {"name": name, "namespace": ns, "creationTimestamp": now},
                    "timestamp": now, "window": "15s",
                    "containers": (containers.iter()).map(|(c, cpu, memory)| json!({
                        "name": c, "usage": {"cpu": cpu, "memory": memory},
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
               "metadata": {}, "items": items})
    };
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["apis", "metrics.k8s.io", "v1beta1"] => (
            200,
            json!({
                "kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": "metrics.k8s.io/v1beta1",
                "resources": [
                    {"name": "nodes", "singularName": "", "namespaced": false,
                     "kind": "NodeMetrics", "verbs": ["get", "list"]},
                    {"name": "pods", "singularName": "", "namespaced": true,
                     "kind": "PodMetrics", "verbs": ["get", "list"]},
                ],
            }),
        ),
        ["apis", "metrics.k8s.io", "v1beta1", "pods"] => (200, pods(None)),
        [
            "apis",
            "metrics.k8s.io",
            "v1beta1",
            "namespaces",
            ns,
            "pods",
        ] => (200, pods(Some(ns))),
        ["apis", "metrics.k8s.io", "v1beta1", "nodes"] => (
            200,
            json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1",
                   "metadata": {}, "items": []}),
        ),
        _ => (
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "reason": "NotFound", "code": 404, "message": format!("{path} not found")}),
        ),
    }
}

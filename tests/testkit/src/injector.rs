//! A second mutating webhook for the control-plane tests: it adds a sidecar
//! container to every pod of one namespace, as a service mesh or an agent
//! injector does. Its configuration is named to sort after archway's, so the
//! API server calls it after archway, and (archway's reinvocationPolicy
//! being IfNeeded) calls archway again because it changed the pod.
//!
//! In its allow-all form it changes nothing and answers at once: what
//! calling any webhook costs the API server (benches/apicost.rs). In its
//! fixed form it answers every review with one precomputed response (the
//! one archway gave a sample pod): what applying archway's patch costs the
//! API server, without archway's own work.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::http::serve_https;
use crate::tls::TestCa;

/// The container the injector adds.
pub const SIDECAR: &str = "injected-sidecar";

pub struct SidecarInjector {
    pub port: u16,
    pub ca_pem: String,
    /// Reviews answered, to tell "not called" from "called, no change".
    pub calls: Arc<AtomicUsize>,
}

/// What the injector adds to each pod.
#[derive(Debug, Clone)]
enum Addition {
    Nothing,
    /// A container of this image, named [`SIDECAR`].
    Sidecar(String),
    /// A scheduling gate of this name, as a quota controller's webhook
    /// (Kueue's) adds one.
    Gate(String),
    /// These responses (patch, warnings, audit annotations) in turn,
    /// whatever the pod; only their uid is the review's.
    Fixed(Vec<Value>),
}

impl SidecarInjector {
    /// Serves on 127.0.0.1 (HTTPS, HTTP/1.1) from a thread of its own, for
    /// the life of the test process.
    pub fn start(sidecar_image: &str) -> SidecarInjector {
        Self::serve(Addition::Sidecar(sidecar_image.to_string()))
    }

    /// A webhook that allows every pod unchanged.
    pub fn allow_all() -> SidecarInjector {
        Self::serve(Addition::Nothing)
    }

    /// A webhook that adds the scheduling gate `name` to every pod.
    pub fn gate(name: &str) -> SidecarInjector {
        Self::serve(Addition::Gate(name.to_string()))
    }

    /// A webhook that answers the reviews with `responses` in turn (each
    /// an AdmissionReview's `response`; its uid is replaced by the
    /// review's).
    pub fn fixed(responses: Vec<Value>) -> SidecarInjector {
        assert!(!responses.is_empty(), "a fixed webhook needs an answer");
        Self::serve(Addition::Fixed(responses))
    }

    fn serve(addition: Addition) -> SidecarInjector {
        let ca = TestCa::new("sidecar injector CA");
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let port = serve_https(
            &ca,
            &["127.0.0.1"],
            "injector",
            move |request: hyper::Request<hyper::body::Incoming>| {
                let addition = addition.clone();
                let counted = counted.clone();
                async move {
                    let body = request.into_body().collect().await?.to_bytes();
                    let call = counted.fetch_add(1, Ordering::SeqCst);
                    let review: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let answer = serde_json::to_vec(&inject(&review, &addition, call)).unwrap();
                    Ok(hyper::Response::builder()
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(answer)))
                        .unwrap())
                }
            },
        );
        SidecarInjector {
            port,
            ca_pem: ca.cert_pem.clone(),
            calls,
        }
    }

    /// Its MutatingWebhookConfiguration, for pods created in `namespace`.
    /// `zz-` sorts after `archway`: configurations run in name order.
    pub fn configuration(&self, namespace: &str) -> Value {
        self.configuration_for(&[namespace])
    }

    /// As [`Self::configuration`], for pods created in any of `namespaces`.
    pub fn configuration_for(&self, namespaces: &[&str]) -> Value {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem);
        json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": format!("zz-sidecar-injector-{}", namespaces[0])},
            "webhooks": [{
                "name": "sidecar.injector.test",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": "Fail",
                "reinvocationPolicy": "Never",
                "timeoutSeconds": 5,
                "clientConfig": {"url": format!("https://127.0.0.1:{}/inject", self.port), "caBundle": ca},
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                           "resources": ["pods"], "scope": "Namespaced"}],
                "namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name",
                    "operator": "In", "values": namespaces}]},
            }],
        })
    }
}

/// The answer to `review`, the `call`th: the sidecar or gate added, unless
/// the pod has it or there is nothing to add; or the fixed answer's turn.
fn inject(review: &Value, addition: &Addition, call: usize) -> Value {
    let request = &review["request"];
    if let Addition::Fixed(fixed) = addition {
        let mut response = fixed[call % fixed.len()].clone();
        response["uid"] = request["uid"].clone();
        return json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response});
    }
    let spec = &request["object"]["spec"];
    let has = |list: &str, name: &str| {
        (spec[list].as_array().into_iter().flatten()).any(|item| item["name"] == name)
    };
    let patch = match addition {
        Addition::Sidecar(image) if !has("containers", SIDECAR) => {
            Some(json!([{"op": "add", "path": "/spec/containers/-",
                    "value": {"name": SIDECAR, "image": image}}]))
        }
        Addition::Gate(gate) if !has("schedulingGates", gate) => {
            Some(match spec["schedulingGates"].is_array() {
                true => {
                    json!([{"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": gate}}])
                }
                false => {
                    json!([{"op": "add", "path": "/spec/schedulingGates", "value": [{"name": gate}]}])
                }
            })
        }
        _ => None,
    };
    let mut response = json!({"uid": request["uid"], "allowed": true});
    if let Some(patch) = patch {
        response["patchType"] = "JSONPatch".into();
        response["patch"] = base64::engine::general_purpose::STANDARD
            .encode(serde_json::to_vec(&patch).unwrap())
            .into();
    }
    json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
}

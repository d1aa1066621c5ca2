//! The JSON archway reads and writes: the AdmissionReview as the API
//! server sends it (only what archway reads), the response review, and the
//! parse that tells a malformed body (HTTP 400) from a pod archway cannot
//! read (a warning).
//!
//! archway's own small types rather than kube-core's: the pod is read once,
//! straight from the request bytes, and only when the request is a Pod
//! CREATE; and the response's patch must be base64 as the Kubernetes API
//! documents, where kube-core writes an array of numbers.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::pod;
use crate::decision::text::truncate_for_message;

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// The AdmissionReview as the API server sends it; only what archway reads.
/// `O` is how the object is read: straight into the pod view on the fast
/// path, kept raw (`&RawValue`) on the careful one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ReviewIn<'a, O> {
    /// Borrowed from the body where it can be: only checked, never kept.
    #[serde(borrow)]
    pub(super) api_version: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    pub(super) request: Option<MapOnly<RequestIn<O>>>,
}

/// A struct read only from a JSON object. serde's derive also accepts an
/// array of the fields in order, which no API server sends: such a body is
/// not an AdmissionReview.
pub(super) struct MapOnly<T>(pub(super) T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for MapOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(Visitor(std::marker::PhantomData))
            .map(MapOnly)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RequestIn<O> {
    pub(super) uid: Option<String>,
    pub(super) kind: Option<GroupVersionKind>,
    pub(super) operation: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) sub_resource: Option<String>,
    #[serde(default)]
    pub(super) dry_run: Option<bool>,
    pub(super) object: Option<O>,
}

/// The request, its pod read (or why it could not be).
pub(super) type Request = RequestIn<Result<Pod, String>>;

impl<O> RequestIn<O> {
    /// The request, its object read by `read`.
    pub(super) fn into_request(self, read: impl FnOnce(O) -> Result<Pod, String>) -> Request {
        RequestIn {
            uid: self.uid,
            kind: self.kind,
            operation: self.operation,
            namespace: self.namespace,
            name: self.name,
            sub_resource: self.sub_resource,
            dry_run: self.dry_run,
            object: self.object.map(read),
        }
    }
}

impl Request {
    /// A Pod CREATE in `namespace`, as the API server would send it.
    pub(super) fn create_pod(pod: Result<Pod, String>, namespace: &str, uid: &str) -> Request {
        RequestIn {
            uid: Some(uid.to_string()),
            kind: Some(GroupVersionKind {
                group: String::new(),
                kind: "Pod".into(),
            }),
            operation: Some("CREATE".into()),
            namespace: Some(namespace.to_string()),
            name: pod.as_ref().ok().and_then(|p| p.metadata.name.clone()),
            sub_resource: None,
            dry_run: None,
            object: Some(pod),
        }
    }
}

#[derive(Deserialize)]
pub(super) struct GroupVersionKind {
    #[serde(default)]
    pub(super) group: String,
    #[serde(default)]
    pub(super) kind: String,
}

/// The response review, serialised exactly as the API server reads it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

impl ReviewOut {
    /// The response body, in a buffer sized for it at once: the patch's
    /// base64 is most of it, and growing to it would copy it several times.
    pub fn to_json(&self) -> serde_json::Result<Vec<u8>> {
        let response = &self.response;
        let patch = response
            .patch
            .as_ref()
            .map_or(0, |p| p.len().div_ceil(3) * 4);
        let warnings: usize = response.warnings.iter().map(|w| w.len() + 3).sum();
        let annotations: usize = (response.audit_annotations.iter())
            .map(|(key, value)| key.len() + value.len() + 6)
            .sum();
        let status = response.status.as_ref().map_or(0, |s| s.message.len());
        // Room for the fixed fields and a little escaping.
        let estimate = 192 + response.uid.len() + patch + warnings + annotations + status;
        let mut bytes = Vec::with_capacity(estimate);
        serde_json::to_writer(&mut bytes, self)?;
        Ok(bytes)
    }
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSON Patch; base64 on the wire.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "base64_bytes"
    )]
    pub patch: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusOut>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct StatusOut {
    pub code: u16,
    pub message: String,
    pub reason: &'static str,
}

/// Writes the bytes as base64 straight into the output, without a string
/// in between.
fn base64_bytes<S: serde::Serializer>(bytes: &Option<Vec<u8>>, out: S) -> Result<S::Ok, S::Error> {
    match bytes {
        Some(bytes) => out.collect_str(&base64::display::Base64Display::new(
            bytes,
            &base64::engine::general_purpose::STANDARD,
        )),
        None => out.serialize_none(),
    }
}

/// A body that is not an AdmissionReview: answered with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadReview {
    #[error("body is not JSON: {0}")]
    NotJson(String),
    #[error("not an AdmissionReview: {0}")]
    NotReview(String),
    #[error("unsupported apiVersion {0:?}: archway answers {API_VERSION} only")]
    ApiVersion(String),
    #[error("AdmissionReview has no request")]
    NoRequest,
    #[error("AdmissionReview request has no uid")]
    NoUid,
}

impl BadReview {
    pub fn metric_label(&self) -> &'static str {
        match self {
            BadReview::NotJson(_) => "not_json",
            BadReview::NotReview(_) => "not_review",
            BadReview::ApiVersion(_) => "api_version",
            BadReview::NoRequest => "no_request",
            BadReview::NoUid => "no_uid",
        }
    }
}

pub(super) fn parse(body: &[u8]) -> Result<Option<Request>, BadReview> {
    let text =
        std::str::from_utf8(body).map_err(|e| BadReview::NotJson(format!("invalid UTF-8: {e}")))?;
    // One pass over the body, the pod included: what nearly every review takes.
    if let Ok(MapOnly(review)) = serde_json::from_str::<MapOnly<ReviewIn<'_, pod::PodView>>>(text) {
        check_envelope(review.api_version.as_deref(), review.kind.as_deref())?;
        return Ok(review
            .request
            .map(|MapOnly(r)| r.into_request(|pod| Ok(pod.into_pod()))));
    }
    // Something is off: read the envelope alone, then the pod, for the
    // exact answer (a bad envelope is a 400; an unreadable pod a warning).
    // serde quotes the offending value, which may be megabytes: cut it.
    let review = serde_json::from_str::<MapOnly<ReviewIn<'_, &RawValue>>>(text)
        .map(|review| review.0)
        .map_err(|e| {
            let message = truncate_for_message(&e.to_string());
            if e.classify() == serde_json::error::Category::Data {
                BadReview::NotReview(message)
            } else {
                BadReview::NotJson(message)
            }
        })?;
    check_envelope(review.api_version.as_deref(), review.kind.as_deref())?;
    Ok(review.request.map(|MapOnly(r)| {
        r.into_request(|raw| {
            serde_json::from_str::<pod::PodView>(raw.get())
                .map(pod::PodView::into_pod)
                .map_err(|e| e.to_string())
        })
    }))
}

fn check_envelope(api_version: Option<&str>, kind: Option<&str>) -> Result<(), BadReview> {
    if kind != Some("AdmissionReview") {
        return Err(BadReview::NotReview(format!(
            "kind is {:?}, not AdmissionReview",
            kind.map(truncate_for_message).unwrap_or_default()
        )));
    }
    match api_version {
        Some(API_VERSION) => Ok(()),
        other => Err(BadReview::ApiVersion(
            other.map(truncate_for_message).unwrap_or_default(),
        )),
    }
}

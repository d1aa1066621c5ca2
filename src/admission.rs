//! Review in, response out: parse the AdmissionReview, look up what the
//! decision needs (namespace policy, image platforms) within the time
//! budget, decide, and answer with a patch, a warning or a denial.
//!
//! The review is parsed with archway's own small types rather than
//! kube-core's: the pod is read once, straight from the request bytes, and
//! only when the request is a Pod CREATE; and the response's patch must be
//! base64 as the Kubernetes API documents, where kube-core writes an array
//! of numbers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::cache::{CacheOutcome, Inspector};
use crate::config::Config;
use crate::image::truncate_for_message;
use crate::placement::{
    self, ContainerImage, Decision, DecisionInput, DecisionKind, DecisionSettings, ImageLookup,
    Outcome,
};
use crate::policy::{Mode, PolicySource};
use crate::registry::{InspectError, Keyring};

pub const API_VERSION: &str = "admission.k8s.io/v1";

/// More distinct images than any real pod has; each costs a lookup.
pub const MAX_IMAGES_PER_POD: usize = 64;

/// The API server relays at most about 4 KiB of warnings per response
/// (beyond that it cuts each to 256 characters): archway stays under both.
const MAX_WARNING_CHARS: usize = 512;
const MAX_WARNINGS_TOTAL_CHARS: usize = 4000;

/// The AdmissionReview as the API server sends it; only what archway reads.
/// `O` is how the object is read: straight into the pod view on the fast
/// path, kept raw (`&RawValue`) on the careful one.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<O> {
    api_version: Option<String>,
    kind: Option<String>,
    request: Option<MapOnly<RequestIn<O>>>,
}

/// A struct read only from a JSON object. serde's derive also accepts an
/// array of the fields in order, which no API server sends: such a body is
/// not an AdmissionReview.
struct MapOnly<T>(T);

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
struct RequestIn<O> {
    uid: Option<String>,
    kind: Option<GroupVersionKind>,
    operation: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    sub_resource: Option<String>,
    #[serde(default)]
    dry_run: Option<bool>,
    object: Option<O>,
}

/// The request, its pod read (or why it could not be).
type Request = RequestIn<Result<Pod, String>>;

impl<O> RequestIn<O> {
    /// The request, its object read by `read`.
    fn into_request(self, read: impl FnOnce(O) -> Result<Pod, String>) -> Request {
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

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    #[serde(default)]
    kind: String,
}

/// The response review, serialised exactly as the API server reads it.
#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOut {
    pub api_version: &'static str,
    pub kind: &'static str,
    pub response: ResponseOut,
}

#[derive(Serialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResponseOut {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// base64 of the JSON Patch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
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

/// What happened to one review, for logs and metrics.
#[derive(Debug, Clone)]
pub struct ReviewRecord {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub mode: Option<Mode>,
    pub kind: DecisionKind,
    pub outcome: &'static str,
    pub reason: String,
    pub architectures: Option<BTreeSet<String>>,
    /// Where the pod was (or in audit, would be) placed, e.g. `arm64`.
    pub placed: Option<String>,
    /// Architectures chosen that have no node in the cluster.
    pub without_nodes: BTreeSet<String>,
    pub warnings: usize,
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// The API server's dry run: answered the same (archway has no side
    /// effects beyond its cache), but worth telling apart in logs.
    pub dry_run: bool,
    pub elapsed: Duration,
}

/// Everything a review needs, shared by all requests.
#[derive(Clone)]
pub struct Reviewer {
    pub inspector: Inspector,
    pub policies: Arc<dyn PolicySource>,
    /// Reads pods' pull secrets; `None` without a cluster.
    pub pull_secrets: Option<crate::cluster::PullSecrets>,
    pub settings: Arc<ReviewSettings>,
}

/// The parts of the configuration a review reads.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub decision: DecisionSettings,
    pub tolerations: BTreeMap<String, Vec<Toleration>>,
    pub excluded_namespaces: Vec<String>,
    pub time_budget: Duration,
}

impl ReviewSettings {
    pub fn from_config(config: &Config) -> Self {
        ReviewSettings {
            decision: DecisionSettings {
                target_architecture: config.target_architecture.clone(),
                fail_closed: config.fail_closed,
            },
            tolerations: config.tolerations.clone(),
            excluded_namespaces: config.excluded_namespaces.clone(),
            time_budget: config.time_budget,
        }
    }
}

/// Why a reviewer could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("registry client: {0}")]
    Client(#[from] crate::registry::client::ClientBuildError),
}

impl Reviewer {
    /// A reviewer with the configuration's registry, cache and settings, and
    /// the given source of namespace policies.
    pub fn from_config(
        config: &Config,
        policies: Arc<dyn PolicySource>,
    ) -> Result<Reviewer, SetupError> {
        let client = crate::registry::RegistryClient::new(config.registry_settings()?)?;
        Ok(Reviewer {
            inspector: Inspector::new(client, config.cache_settings()),
            policies,
            pull_secrets: None,
            settings: Arc::new(ReviewSettings::from_config(config)),
        })
    }

    /// Answers one review body.
    pub async fn review(&self, body: &[u8]) -> Result<(ReviewOut, ReviewRecord), BadReview> {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + self.settings.time_budget;
        let mut request = parse(body)?.ok_or(BadReview::NoRequest)?;
        let uid = request
            .uid
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or(BadReview::NoUid)?;
        let namespace = request.namespace.clone().unwrap_or_default();
        let mut record = ReviewRecord {
            uid: uid.clone(),
            namespace: namespace.clone(),
            pod: request.name.clone().unwrap_or_default(),
            mode: None,
            kind: DecisionKind::NotOptedIn,
            outcome: "allowed",
            reason: String::new(),
            architectures: None,
            placed: None,
            without_nodes: BTreeSet::new(),
            warnings: 0,
            cache_hits: 0,
            cache_misses: 0,
            dry_run: request.dry_run.unwrap_or(false),
            elapsed: Duration::ZERO,
        };
        let mut response = ResponseOut {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        };
        self.answer(&mut request, &mut response, &mut record, deadline)
            .await;
        record.elapsed = started.elapsed();
        record.warnings = response.warnings.len();
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response,
        };
        Ok((out, record))
    }

    async fn answer(
        &self,
        request: &mut Request,
        response: &mut ResponseOut,
        record: &mut ReviewRecord,
        deadline: tokio::time::Instant,
    ) {
        let is_pod = request
            .kind
            .as_ref()
            .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
        if !is_pod
            || request.operation.as_deref() != Some("CREATE")
            || request.sub_resource.is_some()
        {
            record.kind = DecisionKind::Skipped;
            record.reason = "not a pod CREATE".into();
            return;
        }
        if self
            .settings
            .excluded_namespaces
            .contains(&record.namespace)
        {
            record.kind = DecisionKind::NotOptedIn;
            record.reason = "namespace excluded by configuration".into();
            return;
        }
        let policy = self.policies.policy(&record.namespace);
        record.mode = policy.as_ref().map(|p| p.mode);
        let Some(object) = request.object.take() else {
            record.kind = DecisionKind::Skipped;
            record.reason = "review has no object".into();
            if policy.is_some() {
                response
                    .warnings
                    .push("archway: the review carries no pod; admitted unchanged".into());
            }
            return;
        };
        let mut pod: Pod = match object {
            Ok(pod) => pod,
            Err(e) => {
                record.kind = DecisionKind::Skipped;
                record.reason = format!("object is not a Pod: {e}");
                if policy.is_some() {
                    response.warnings.push(warning(&format!(
                        "archway could not read the pod ({e}); admitted unchanged"
                    )));
                }
                return;
            }
        };
        if let Some(name) = pod.metadata.name.as_ref().filter(|n| !n.is_empty()) {
            record.pod = name.clone();
        } else if let Some(generate) = &pod.metadata.generate_name {
            record.pod = format!("{generate}*");
        }
        // The namespace of the request is authoritative; the object's may
        // be empty at CREATE.
        pod.metadata.namespace = Some(record.namespace.clone());

        if let Some(decision) = placement::prescreen(&pod, policy.as_ref()) {
            record.kind = decision.kind;
            record.reason = decision.reason;
            return;
        }
        let policy = policy.expect("prescreen passes only opted-in namespaces");

        let images = placement::container_images(&pod);
        let distinct: BTreeSet<&str> = images.iter().map(|c| c.image.as_str()).collect();
        let decision = if distinct.len() > MAX_IMAGES_PER_POD {
            let reason = format!(
                "the pod has {} distinct images, more than archway inspects ({MAX_IMAGES_PER_POD})",
                distinct.len()
            );
            let failed: Vec<(ContainerImage, ImageLookup)> = images
                .into_iter()
                .map(|c| (c, ImageLookup::Failed(reason.clone())))
                .collect();
            self.decide(&pod, &policy, &failed, request)
        } else {
            let keyring = self
                .pull_secret_keyring(&pod, &record.namespace, deadline, response)
                .await;
            let requester = self.inspector.requester(&record.namespace);
            let (lookups, hits, misses) =
                self.look_up(&images, &keyring, &requester, deadline).await;
            record.cache_hits = hits;
            record.cache_misses = misses;
            self.decide(&pod, &policy, &lookups, request)
        };
        record.kind = decision.kind;
        record.reason = decision.reason.clone();
        record.architectures = decision.supported.clone();
        record.without_nodes = decision.without_nodes.clone();
        if let Outcome::Inject(injection) = &decision.outcome {
            record.placed = Some(placement::join(&injection.required));
        }
        self.respond(&pod, policy.mode, decision, response, record);
    }

    fn decide(
        &self,
        pod: &Pod,
        policy: &crate::policy::NamespacePolicy,
        lookups: &[(ContainerImage, ImageLookup)],
        request: &Request,
    ) -> Decision {
        let nodes = self.policies.node_architectures();
        placement::decide(&DecisionInput {
            pod,
            policy,
            lookups,
            settings: &self.settings.decision,
            request_uid: request.uid.as_deref().unwrap_or_default(),
            node_architectures: nodes.as_deref(),
        })
    }

    /// The credentials of the pull secrets the pod names (the ServiceAccount
    /// admission plugin has already copied the ServiceAccount's into it).
    async fn pull_secret_keyring(
        &self,
        pod: &Pod,
        namespace: &str,
        deadline: tokio::time::Instant,
        response: &mut ResponseOut,
    ) -> Keyring {
        let (Some(secrets), Some(spec)) = (&self.pull_secrets, &pod.spec) else {
            return Keyring::default();
        };
        let names: Vec<String> = spec
            .image_pull_secrets
            .iter()
            .flatten()
            .map(|r| r.name.clone())
            .filter(|n| !n.is_empty())
            .collect();
        if names.is_empty() {
            return Keyring::default();
        }
        match tokio::time::timeout_at(deadline, secrets.keyring(namespace, &names)).await {
            Ok((keyring, warnings)) => {
                response
                    .warnings
                    .extend(warnings.iter().map(|w| warning(&format!("archway: {w}"))));
                keyring
            }
            Err(_) => {
                response
                    .warnings
                    .push("archway: pull secrets not read within the time budget".into());
                Keyring::default()
            }
        }
    }

    /// Every distinct image looked up at once, each bounded by the review's
    /// deadline; a lookup still running then goes on filling the cache.
    async fn look_up(
        &self,
        images: &[ContainerImage],
        keyring: &Keyring,
        requester: &crate::cache::Requester,
        deadline: tokio::time::Instant,
    ) -> (Vec<(ContainerImage, ImageLookup)>, usize, usize) {
        let distinct: BTreeSet<&str> = images.iter().map(|c| c.image.as_str()).collect();
        let lookups = distinct.into_iter().map(|image| async move {
            let result = match self.inspector.parse_reference(image) {
                Err(e) => (Err(InspectError::InvalidReference(e.reason)), None),
                Ok(reference) => {
                    // The pod's own credential for the image, else anonymous
                    // (the registry client then tries the cluster's own).
                    let credential = keyring.lookup(&reference);
                    let lookup = self
                        .inspector
                        .inspect_for(&reference, &credential, requester);
                    match tokio::time::timeout_at(deadline, lookup).await {
                        Ok((result, outcome)) => (result, Some(outcome)),
                        Err(_) => (Err(InspectError::Deadline), Some(CacheOutcome::Miss)),
                    }
                }
            };
            (image, result)
        });
        let results: BTreeMap<&str, _> = futures::future::join_all(lookups)
            .await
            .into_iter()
            .collect();
        let hits = results
            .values()
            .filter(|(_, o)| *o == Some(CacheOutcome::Hit))
            .count();
        let misses = results
            .values()
            .filter(|(_, o)| *o == Some(CacheOutcome::Miss))
            .count();
        let lookups = images
            .iter()
            .map(|c| {
                let lookup = match &results[c.image.as_str()].0 {
                    Ok(found) => ImageLookup::Found(found.platforms.clone()),
                    Err(error) => ImageLookup::Failed(error.to_string()),
                };
                (c.clone(), lookup)
            })
            .collect();
        (lookups, hits, misses)
    }

    fn respond(
        &self,
        pod: &Pod,
        mode: Mode,
        decision: Decision,
        response: &mut ResponseOut,
        record: &mut ReviewRecord,
    ) {
        response.warnings.extend(
            decision
                .warnings
                .iter()
                .map(|w| warning(&format!("archway: {w}"))),
        );
        budget_warnings(&mut response.warnings);
        let annotate = |response: &mut ResponseOut, would: bool| {
            let prefix = if would { "would " } else { "" };
            response
                .audit_annotations
                .insert("decision".into(), format!("{prefix}{}", decision.reason));
            response
                .audit_annotations
                .insert("kind".into(), decision.kind.label().into());
            if let Some(archs) = &decision.supported {
                response
                    .audit_annotations
                    .insert("archs".into(), placement::join(archs));
            }
        };
        match (&decision.outcome, mode) {
            (Outcome::Inject(injection), Mode::Enforce) => {
                let patch = crate::patch::build(pod, injection, &self.settings.tolerations);
                match serde_json::to_vec(&patch) {
                    Ok(bytes) => {
                        response.patch_type = Some("JSONPatch");
                        response.patch =
                            Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                        record.outcome = "patched";
                    }
                    Err(e) => response
                        .warnings
                        .push(warning(&format!("archway could not encode its patch: {e}"))),
                }
                annotate(response, false);
            }
            (Outcome::Inject(injection), Mode::Audit) => {
                response.warnings.push(warning(&format!(
                    "archway audit: would require kubernetes.io/arch in {}{} ({})",
                    placement::join(&injection.required),
                    injection
                        .preferred
                        .as_ref()
                        .map(|p| format!(", preferring {}", placement::join(p)))
                        .unwrap_or_default(),
                    decision.reason
                )));
                record.outcome = "audited";
                annotate(response, true);
            }
            (Outcome::Deny, _) => {
                response.allowed = false;
                response.status = Some(StatusOut {
                    code: 403,
                    reason: "Forbidden",
                    message: truncate_for_message(&format!(
                        "archway: {}: {}",
                        decision.reason,
                        decision.warnings.join("; ")
                    )),
                });
                record.outcome = "denied";
                annotate(response, false);
            }
            (Outcome::Unchanged, _) => {
                if mode == Mode::Audit {
                    record.outcome = "audited";
                }
                annotate(response, mode == Mode::Audit);
            }
        }
    }
}

fn parse(body: &[u8]) -> Result<Option<Request>, BadReview> {
    let text =
        std::str::from_utf8(body).map_err(|e| BadReview::NotJson(format!("invalid UTF-8: {e}")))?;
    // One pass over the body, the pod included: what nearly every review takes.
    if let Ok(MapOnly(review)) = serde_json::from_str::<MapOnly<ReviewIn<pod::PodView>>>(text) {
        check_envelope(review.api_version.as_deref(), review.kind.as_deref())?;
        return Ok(review
            .request
            .map(|MapOnly(r)| r.into_request(|pod| Ok(pod.into_pod()))));
    }
    // Something is off: read the envelope alone, then the pod, for the
    // exact answer (a bad envelope is a 400; an unreadable pod a warning).
    // serde quotes the offending value, which may be megabytes: cut it.
    let review = serde_json::from_str::<MapOnly<ReviewIn<&RawValue>>>(text)
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

/// Keeps the warnings within what the API server relays: a pod of
/// thousands of failing containers gets the first few and a count.
fn budget_warnings(warnings: &mut Vec<String>) {
    let mut total = 0;
    let keep = warnings
        .iter()
        .position(|w| {
            total += w.chars().count();
            total > MAX_WARNINGS_TOTAL_CHARS - 64
        })
        .unwrap_or(warnings.len());
    if keep < warnings.len() {
        let dropped = warnings.len() - keep;
        warnings.truncate(keep);
        warnings.push(format!("archway: and {dropped} more warnings"));
    }
}

fn warning(text: &str) -> String {
    if text.chars().count() <= MAX_WARNING_CHARS {
        return text.to_string();
    }
    let cut: String = text.chars().take(MAX_WARNING_CHARS - 1).collect();
    format!("{cut}…")
}

pub mod pod;
#[cfg(test)]
mod tests;

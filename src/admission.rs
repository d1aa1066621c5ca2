//! Review in, response out: read the AdmissionReview (`wire`), screen out
//! what archway leaves alone, evaluate the pod (`evaluate`: lookups within
//! the time budget, then the decision), and respond with a patch, a
//! warning or a denial.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use crate::cluster::NodeInventory;
use crate::decision::placement::{
    self, Decision, DecisionKind, DecisionSettings, Injection, Outcome,
};
use crate::decision::policy::{Cold, Mode, NamespacePolicy, PolicySource};
use crate::decision::text::truncate_for_message;
use crate::lookup::cache::Inspector;
pub use draws::RolloutDraws;
pub use evaluate::{Evaluation, MAX_IMAGES_PER_POD};
use warnings::{budget_warnings, warning};
use wire::Request;
pub use wire::{API_VERSION, BadReview, ResponseOut, ReviewOut, StatusOut};

/// The largest patch archway sends, before base64 (which the response
/// carries, a third larger): a pod whose patch would be bigger is admitted
/// unchanged with a warning, so no pod makes archway answer megabytes.
pub const MAX_PATCH_BYTES: usize = 768 * 1024;

/// How a review was answered, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReviewOutcome {
    /// Admitted as it came.
    Allowed,
    /// Admitted with archway's patch.
    Patched,
    /// In an audit namespace: admitted unchanged, with what archway would do.
    Audited,
    Denied,
    /// Admitted with archway's scheduling gate: its images are still being
    /// looked up, and the controller places the pod (`gate`).
    Gated,
}

impl ReviewOutcome {
    pub fn label(self) -> &'static str {
        match self {
            ReviewOutcome::Allowed => "allowed",
            ReviewOutcome::Patched => "patched",
            ReviewOutcome::Audited => "audited",
            ReviewOutcome::Denied => "denied",
            ReviewOutcome::Gated => "gated",
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
    /// `ReviewOutcome::label`, as metrics and logs take it.
    pub outcome: &'static str,
    pub reason: String,
    pub architectures: Option<BTreeSet<String>>,
    /// Where the pod was (or in audit, would be) placed, e.g. `arm64`.
    pub placed: Option<String>,
    /// Architectures chosen that have no node in the cluster.
    pub without_nodes: BTreeSet<String>,
    /// The architectures of the only nodes the pod may use, where its
    /// images do not run.
    pub unrunnable_on: BTreeSet<String>,
    pub warnings: usize,
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// The API server's dry run: answered the same (archway has no side
    /// effects beyond its cache), but worth telling apart in logs.
    pub dry_run: bool,
    pub elapsed: Duration,
}

impl ReviewRecord {
    /// One log line, with plain values: `mode=enforce`, `archs=amd64,arm64`,
    /// `elapsed_ms=0.105` (whole microseconds: benches/load.sh reads it).
    pub fn log(&self) {
        tracing::info!(
            uid = %self.uid,
            namespace = %self.namespace,
            pod = %self.pod,
            mode = self.mode.map_or("off", Mode::label),
            decision = self.kind.label(),
            outcome = self.outcome,
            reason = %self.reason,
            archs = %self.architectures.as_ref().map_or("-".into(), placement::join),
            placed = self.placed.as_deref().unwrap_or("-"),
            cache_hits = self.cache_hits,
            cache_misses = self.cache_misses,
            dry_run = self.dry_run,
            elapsed_ms = self.elapsed.as_micros() as f64 / 1000.0,
            "review"
        );
    }
}

/// The reviewer in force, shared by the webhook and the controllers that
/// evaluate pods as the webhook does: replaced whole when the
/// configuration is reloaded; each review works with the one it started
/// with.
#[derive(Clone)]
pub struct SharedReviewer(Arc<std::sync::RwLock<Reviewer>>);

impl SharedReviewer {
    pub fn new(reviewer: Reviewer) -> Self {
        SharedReviewer(Arc::new(std::sync::RwLock::new(reviewer)))
    }

    /// The current reviewer (a cheap clone of shared parts).
    pub fn reviewer(&self) -> Reviewer {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn replace(&self, reviewer: Reviewer) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = reviewer;
    }
}

/// The workloads the rollout guard holds off the target, as a review asks
/// about a pod's: the guard (`controllers::guard::Holds`) answers, and the
/// review depends only on this question, not on the guard.
pub trait HeldWorkloads: Send + Sync {
    /// The hold on the workload of `pod`, if any.
    fn for_pod(
        &self,
        pod: &k8s_openapi::api::core::v1::Pod,
    ) -> Option<crate::decision::placement::Hold>;
}

/// Everything a review needs, shared by all requests.
#[derive(Clone)]
pub struct Reviewer {
    pub inspector: Inspector,
    pub policies: Arc<dyn PolicySource>,
    /// Which architectures have nodes; `None` without a cluster, and then
    /// placement does not consider nodes.
    pub node_inventory: Option<Arc<dyn NodeInventory>>,
    /// Reads pods' pull secrets; `None` without a cluster.
    pub pull_secrets: Option<crate::cluster::PullSecrets>,
    pub settings: Arc<ReviewSettings>,
    /// Where each workload's unnamed pods are in their sequence of rollout
    /// buckets; kept across configuration reloads.
    pub draws: Arc<RolloutDraws>,
    /// The rollout guard's holds; `None` without a cluster.
    pub holds: Option<Arc<dyn HeldWorkloads>>,
    /// Whether some replica leads, and so runs the gate controller, as
    /// this replica last saw (`lease::Leadership::some_leader`); `None`
    /// without a cluster. Pods are gated only while it is true, so that a
    /// controller that cannot run (its RBAC missing, the API unreachable)
    /// does not leave pods gated with nothing to release them: they are
    /// then admitted as in `admit`.
    pub gate_controller_live: Option<tokio::sync::watch::Receiver<bool>>,
}

/// The parts of the configuration a review reads.
#[derive(Debug, Clone)]
pub struct ReviewSettings {
    pub decision: DecisionSettings,
    pub excluded_namespaces: Vec<String>,
    pub time_budget: Duration,
    /// For namespaces without `archway.dev/cold`.
    pub cold: Cold,
    /// In `gate` mode, the wait for lookups before the pod is gated.
    pub sync_budget: Duration,
    /// The longest a pod stays gated (the controller reads it).
    pub gate_timeout: Duration,
    /// Whether a gate controller runs (with a cluster): without one, no
    /// pod is gated, whatever `archway.dev/cold` says, since nothing would
    /// release it.
    pub gating: bool,
}

impl Reviewer {
    /// A reviewer over `inspector` with these settings and policies, and
    /// no cluster (`setup::reviewer` builds one from a configuration).
    pub fn new(
        inspector: Inspector,
        policies: Arc<dyn PolicySource>,
        settings: ReviewSettings,
    ) -> Reviewer {
        Reviewer {
            inspector,
            policies,
            node_inventory: None,
            pull_secrets: None,
            settings: Arc::new(settings),
            draws: Arc::default(),
            holds: None,
            gate_controller_live: None,
        }
    }

    /// Where reviews are counted: the registry client's, so one registry
    /// holds a review and the lookups it made.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.inspector.metrics()
    }

    /// Answers one review body.
    pub async fn review(&self, body: &[u8]) -> Result<(ReviewOut, ReviewRecord), BadReview> {
        let started = Instant::now();
        let request = wire::parse(body)?.ok_or(BadReview::NoRequest)?;
        let opened = self.open(request)?;
        Ok(self.review_opened(opened, started).await)
    }

    /// Answers the creation of `pod` in `namespace` as if the API server
    /// had asked: what `archway review` shows.
    pub async fn review_pod(
        &self,
        pod: Result<Pod, String>,
        namespace: &str,
        uid: &str,
    ) -> Result<(ReviewOut, ReviewRecord), BadReview> {
        let opened = self.open(Request::create_pod(pod, namespace, uid))?;
        Ok(self.review_opened(opened, Instant::now()).await)
    }

    /// The request's identity and screen, before anything is awaited: the
    /// request (a pod of a few KB inline) is then not part of the review's
    /// future, which the runtime and the server move around whole.
    fn open(&self, mut request: Request) -> Result<Opened, BadReview> {
        // Taken out of the request: the rest of the review reads these
        // from here.
        let uid = request
            .uid
            .take()
            .filter(|u| !u.is_empty())
            .ok_or(BadReview::NoUid)?;
        let namespace = request.namespace.take().unwrap_or_default();
        let name = request.name.take().unwrap_or_default();
        let dry_run = request.dry_run.unwrap_or(false);
        let screen = self.screen(request, &namespace);
        Ok(Opened {
            uid,
            namespace,
            name,
            dry_run,
            screen,
        })
    }

    async fn review_opened(&self, opened: Opened, started: Instant) -> (ReviewOut, ReviewRecord) {
        let Opened {
            uid,
            namespace,
            name,
            dry_run,
            screen,
        } = opened;
        let deadline = tokio::time::Instant::from_std(started) + self.settings.time_budget;
        let answer = self.answer(screen, &uid, dry_run, deadline).await;
        let record = ReviewRecord {
            uid: uid.clone(),
            namespace,
            pod: answer.pod.unwrap_or(name),
            mode: answer.mode,
            kind: answer.kind,
            outcome: answer.outcome.label(),
            reason: answer.reason,
            architectures: answer.architectures,
            placed: answer.placed,
            without_nodes: answer.without_nodes,
            unrunnable_on: answer.unrunnable_on,
            warnings: answer.response.warnings.len(),
            cache_hits: answer.cache_hits,
            cache_misses: answer.cache_misses,
            dry_run,
            elapsed: started.elapsed(),
        };
        let response = answer.response.into_wire(uid);
        let out = ReviewOut {
            api_version: API_VERSION,
            kind: "AdmissionReview",
            response,
        };
        (out, record)
    }

    /// Evaluate a screened pod, respond.
    async fn answer(
        &self,
        screen: Screen,
        uid: &str,
        dry_run: bool,
        deadline: tokio::time::Instant,
    ) -> Answer {
        let screened = match screen {
            Screen::Pod(screened) => screened,
            Screen::Answered(answer) => return answer,
        };
        if crate::decision::gating::is_gated(&screened.pod) {
            // Reinvoked after archway gated it (a later webhook changed
            // the pod, maybe adding a gate of its own): the controller
            // evaluates every container when it places it. No second
            // gate, no second draw, no second count.
            let reason = "gated; archway's controller places the pod";
            return Answer {
                mode: Some(screened.policy.mode),
                pod: screened.name,
                ..Answer::skip(DecisionKind::AlreadyDecided, reason)
            };
        }
        let cold = screened.policy.cold.unwrap_or(self.settings.cold);
        let gating = self.settings.gating
            && screened.policy.mode == Mode::Enforce
            && cold == Cold::Gate
            && (self.gate_controller_live.as_ref()).is_some_and(|live| *live.borrow());
        // A pod archway already placed (reinvocation) is checked again, not
        // drawn again: a second draw would skip a place in its owner's
        // sequence and skew the spread. Nor is it gated: the API server
        // lets a gated pod's affinity only narrow by added expressions, and
        // correcting archway's own expression rewrites it.
        let placed = (screened.pod.metadata.annotations.as_ref())
            .is_some_and(|a| a.contains_key(placement::DECISION_ANNOTATION));
        let gating = gating && !placed;
        let owner = placement::spread_owner(&screened.pod, screened.policy.rollout_by);
        let draw = match owner.filter(|_| !placed) {
            Some(owner) => Some(self.draws.next(&owner, dry_run).await),
            None => None,
        };
        // In gate mode a cold pod is not lost by answering early: it is
        // gated, and the lookups go on in the background.
        let deadline = match gating {
            true => deadline.min(tokio::time::Instant::now() + self.settings.sync_budget),
            false => deadline,
        };
        let evaluation = self
            .evaluate(&screened.pod, &screened.policy, deadline, uid, draw)
            .await;
        let mode = screened.policy.mode;
        let mut answer = if gating
            && crate::decision::gating::should_gate(mode, cold, &evaluation.pending, &screened.pod)
        {
            self.gate(&screened.pod, evaluation, draw, dry_run)
        } else {
            self.respond(&screened.pod, screened.policy.mode, evaluation)
        };
        if !placed {
            disown(&screened.pod, &mut answer);
        }
        Answer {
            pod: screened.name,
            ..answer
        }
    }

    /// The pod to evaluate, or the answer for a request archway leaves
    /// alone without looking anything up.
    fn screen(&self, request: Request, namespace: &str) -> Screen {
        let is_pod = request
            .kind
            .as_ref()
            .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
        if !is_pod
            || request.operation.as_deref() != Some("CREATE")
            || request.sub_resource.is_some()
        {
            return Screen::Answered(Answer::skip(DecisionKind::Skipped, "not a pod CREATE"));
        }
        if self
            .settings
            .excluded_namespaces
            .iter()
            .any(|n| n == namespace)
        {
            let reason = "namespace excluded by configuration";
            return Screen::Answered(Answer::skip(DecisionKind::NotOptedIn, reason));
        }
        let policy = self.policies.policy(namespace);
        let mode = policy.as_ref().map(|p| p.mode);
        let mut pod = match read_pod(request.object) {
            Ok(pod) => pod,
            Err((reason, warning)) => {
                let mut answer = Answer::skip(DecisionKind::Skipped, reason);
                answer.mode = mode;
                // Only a namespace that asked for archway hears about it.
                answer.response.warnings.extend(mode.map(|_| warning));
                return Screen::Answered(answer);
            }
        };
        // The namespace of the request is authoritative; the object's may
        // be empty at CREATE.
        pod.metadata.namespace = Some(namespace.to_string());
        let name = display_name(&pod);
        let decision = match policy {
            None => placement::not_opted_in(),
            Some(policy) => match placement::screen(&pod) {
                None => return Screen::Pod(Box::new(Screened { pod, policy, name })),
                Some(decision) => decision,
            },
        };
        let mut answer = Answer {
            mode,
            pod: name,
            ..Answer::skip(decision.kind, decision.reason)
        };
        if decision.kind == DecisionKind::Skipped {
            // Skipped by its author's own annotation: still no key of
            // archway's that archway did not write.
            disown(&pod, &mut answer);
        }
        Screen::Answered(answer)
    }

    /// The response that carries `evaluation` out in the namespace's mode.
    fn respond(&self, pod: &Pod, mode: Mode, evaluation: Evaluation) -> Answer {
        let Evaluation {
            decision,
            lookups: _,
            warnings: lookup_warnings,
            cache_hits,
            cache_misses,
            pending: _,
        } = evaluation;
        let mut warnings: Vec<String> = (lookup_warnings.iter())
            .chain(&decision.warnings)
            .map(|w| warning(&format!("archway: {w}")))
            .collect();
        budget_warnings(&mut warnings);
        let mut response = Response {
            warnings,
            ..Response::default()
        };
        let (outcome, would) = match (&decision.outcome, mode) {
            (Outcome::Inject(injection), Mode::Enforce) => {
                let outcome = self.patch(pod, injection, &mut response);
                (outcome, false)
            }
            (Outcome::Inject(injection), Mode::Audit) => {
                response
                    .warnings
                    .push(audit_warning(injection, &decision.reason));
                (ReviewOutcome::Audited, true)
            }
            (Outcome::Deny, _) => {
                response.allowed = false;
                response.status = Some(denial(&decision));
                (ReviewOutcome::Denied, false)
            }
            (Outcome::Unchanged, Mode::Audit) => (ReviewOutcome::Audited, false),
            (Outcome::Unchanged, Mode::Enforce) => (ReviewOutcome::Allowed, false),
        };
        response.audit_annotations = audit_annotations(&decision, would);
        Answer {
            outcome,
            mode: Some(mode),
            kind: decision.kind,
            placed: match &decision.outcome {
                Outcome::Inject(injection) => Some(placement::join(&injection.required)),
                _ => None,
            },
            reason: decision.reason,
            architectures: decision.supported,
            without_nodes: decision.without_nodes,
            unrunnable_on: decision.unrunnable_on,
            cache_hits,
            cache_misses,
            pod: None,
            response,
        }
    }

    /// The answer that gates `pod`: its images in `evaluation.pending` are
    /// still being looked up.
    fn gate(&self, pod: &Pod, evaluation: Evaluation, draw: Option<u64>, dry_run: bool) -> Answer {
        let pending = evaluation.pending.len();
        let ops = crate::decision::gating::gate_patch(pod, &evaluation.pending, draw);
        let mut response = Response {
            warnings: vec![warning(&format!(
                "archway: {pending} image(s) still being looked up; the pod waits for archway to place it (scheduling gate {}, at most {})",
                crate::decision::gating::GATE,
                humantime::format_duration(self.settings.gate_timeout)
            ))],
            ..Response::default()
        };
        let reason = format!("gated: {pending} image(s) still being looked up");
        match serde_json::to_vec(&json_patch::Patch(ops)) {
            Ok(bytes) => {
                response.patch_type = Some("JSONPatch");
                response.patch = Some(bytes);
            }
            // Cannot happen for these plain values; admitted unchanged.
            Err(e) => response.warnings.push(warning(&format!("archway: {e}"))),
        }
        response.audit_annotations = BTreeMap::from([
            ("decision".to_string(), reason.clone()),
            ("kind".to_string(), "gated".to_string()),
        ]);
        if !dry_run && response.patch.is_some() {
            self.metrics().pods_gated.inc();
        }
        Answer {
            outcome: if response.patch.is_some() {
                ReviewOutcome::Gated
            } else {
                ReviewOutcome::Allowed
            },
            mode: Some(Mode::Enforce),
            kind: evaluation.decision.kind,
            reason,
            cache_hits: evaluation.cache_hits,
            cache_misses: evaluation.cache_misses,
            response,
            ..Answer::skip(DecisionKind::InspectionFailed, "")
        }
    }

    /// Puts the patch for `injection` in `response`, unless it would be
    /// larger than `MAX_PATCH_BYTES`: then the pod is admitted unchanged.
    fn patch(&self, pod: &Pod, injection: &Injection, response: &mut Response) -> ReviewOutcome {
        match crate::decision::patch::encode(
            pod,
            injection,
            &self.settings.decision.tolerations,
            MAX_PATCH_BYTES,
        ) {
            Ok(bytes) => {
                response.patch_type = Some("JSONPatch");
                response.patch = Some(bytes);
                ReviewOutcome::Patched
            }
            Err(e) => {
                response
                    .warnings
                    .push(warning(&format!("archway: {e}; admitted unchanged")));
                ReviewOutcome::Allowed
            }
        }
    }
}

/// In an enforced namespace, archway's keys that the pod's author set are
/// removed from the pod, on its first review (`placement::
/// foreign_archway_keys`): the answer's patch gains a `remove` for each it
/// does not itself write, and the author a warning. On a pod archway
/// already decided or gated (a reinvocation), the keys are archway's own.
fn disown(pod: &Pod, answer: &mut Answer) {
    let enforced = answer.mode == Some(Mode::Enforce) && answer.response.allowed;
    if !enforced || crate::decision::gating::is_gated(pod) {
        return;
    }
    let annotations = pod.metadata.annotations.as_ref();
    if annotations.is_some_and(|a| a.contains_key(placement::DECISION_ANNOTATION)) {
        return;
    }
    let (labels, annotations) = placement::foreign_archway_keys(&pod.metadata);
    if labels.is_empty() && annotations.is_empty() {
        return;
    }
    let response = &mut answer.response;
    match crate::decision::patch::remove_keys(response.patch.as_deref(), &labels, &annotations) {
        Ok(patch) => {
            response.patch = Some(patch);
            response.patch_type = Some("JSONPatch");
        }
        // Cannot happen: archway wrote the patch it reads back.
        Err(e) => response.warnings.push(warning(&format!("archway: {e}"))),
    }
    let keys: Vec<&str> = labels.iter().chain(&annotations).copied().collect();
    let shown = crate::decision::text::truncate_for_message(&keys.join(", "));
    response.warnings.push(warning(&format!(
        "archway: removed {shown} from the pod: archway alone writes archway.dev/ keys on pods (yours: {})",
        placement::USER_POD_KEYS.join(", ")
    )));
}

// An `Answered` is returned before the review awaits anything; only the
// pod is held across awaits, so only it is boxed.
#[allow(clippy::large_enum_variant)]
enum Screen {
    /// A pod to evaluate. Boxed: it is held across the review's awaits,
    /// and inline it would make the review's future a few KB larger, which
    /// the runtime and the server copy each time they move the future.
    Pod(Box<Screened>),
    /// Left alone without a lookup.
    Answered(Answer),
}

/// A request's identity and screen, once read.
struct Opened {
    uid: String,
    namespace: String,
    /// The request's name for the pod (empty for an unnamed pod).
    name: String,
    dry_run: bool,
    screen: Screen,
}

/// A pod that passed the screen, with the policy of its namespace.
struct Screened {
    pod: Pod,
    policy: NamespacePolicy,
    /// The pod's name as logs show it, when it has one.
    name: Option<String>,
}

/// The response's fields that the review decides (the uid is the request's).
#[derive(Debug, Clone)]
struct Response {
    allowed: bool,
    patch_type: Option<&'static str>,
    patch: Option<Vec<u8>>,
    status: Option<StatusOut>,
    warnings: Vec<String>,
    audit_annotations: BTreeMap<String, String>,
}

impl Default for Response {
    fn default() -> Self {
        Response {
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
            warnings: Vec::new(),
            audit_annotations: BTreeMap::new(),
        }
    }
}

impl Response {
    fn into_wire(self, uid: String) -> ResponseOut {
        ResponseOut {
            uid,
            allowed: self.allowed,
            patch_type: self.patch_type,
            patch: self.patch,
            status: self.status,
            warnings: self.warnings,
            audit_annotations: self.audit_annotations,
        }
    }
}

/// How one review is answered, before it goes on the wire.
#[derive(Debug, Clone)]
struct Answer {
    response: Response,
    outcome: ReviewOutcome,
    mode: Option<Mode>,
    kind: DecisionKind,
    reason: String,
    /// The pod's name as logs show it, once the object was read.
    pod: Option<String>,
    architectures: Option<BTreeSet<String>>,
    placed: Option<String>,
    without_nodes: BTreeSet<String>,
    unrunnable_on: BTreeSet<String>,
    cache_hits: usize,
    cache_misses: usize,
}

impl Answer {
    /// Admitted unchanged before any lookup.
    fn skip(kind: DecisionKind, reason: impl Into<String>) -> Answer {
        Answer {
            response: Response::default(),
            outcome: ReviewOutcome::Allowed,
            mode: None,
            kind,
            reason: reason.into(),
            pod: None,
            architectures: None,
            placed: None,
            without_nodes: BTreeSet::new(),
            unrunnable_on: BTreeSet::new(),
            cache_hits: 0,
            cache_misses: 0,
        }
    }
}

/// The pod the review carries, or why it cannot be read (for the record,
/// and for the pod's author).
fn read_pod(object: Option<Result<Pod, String>>) -> Result<Pod, (String, String)> {
    match object {
        None => Err((
            "review has no object".into(),
            "archway: the review carries no pod; admitted unchanged".into(),
        )),
        Some(Err(e)) => Err((
            format!("object is not a Pod: {e}"),
            warning(&format!(
                "archway could not read the pod ({e}); admitted unchanged"
            )),
        )),
        Some(Ok(pod)) => Ok(pod),
    }
}

/// `web-7d4b9c-x2x`, or `web-7d4b9c-*` for a pod named after admission.
fn display_name(pod: &Pod) -> Option<String> {
    match (&pod.metadata.name, &pod.metadata.generate_name) {
        (Some(name), _) if !name.is_empty() => Some(name.clone()),
        // One allocation of the exact size, on every unnamed pod's review.
        (_, Some(generate)) => Some([generate.as_str(), "*"].concat()),
        _ => None,
    }
}

/// In an audit namespace: what archway would have required.
fn audit_warning(injection: &Injection, reason: &str) -> String {
    let preferring = injection
        .preferred
        .as_ref()
        .map(|p| format!(", preferring {}", placement::join(p)))
        .unwrap_or_default();
    warning(&format!(
        "archway audit: would require kubernetes.io/arch in {}{preferring} ({reason})",
        placement::join(&injection.required),
    ))
}

fn denial(decision: &Decision) -> StatusOut {
    StatusOut {
        code: 403,
        reason: "Forbidden",
        message: truncate_for_message(&format!(
            "archway: {}: {}",
            decision.reason,
            decision.warnings.join("; ")
        )),
    }
}

/// The API server's audit log entry: the decision, prefixed `would` for
/// what an audit namespace would have had injected.
fn audit_annotations(decision: &Decision, would: bool) -> BTreeMap<String, String> {
    let prefix = if would { "would " } else { "" };
    if matches!(
        decision.kind,
        DecisionKind::AlreadyDecided | DecisionKind::Corrected
    ) {
        // A reinvocation: the API server keeps the first value of a key, so
        // the second look goes under a key of its own.
        return BTreeMap::from([(
            "recheck".to_string(),
            format!("{}: {prefix}{}", decision.kind.label(), decision.reason),
        )]);
    }
    let mut annotations = BTreeMap::from([
        (
            "decision".to_string(),
            format!("{prefix}{}", decision.reason),
        ),
        ("kind".to_string(), decision.kind.label().to_string()),
    ]);
    if let Some(archs) = &decision.supported {
        annotations.insert("archs".into(), placement::join(archs));
    }
    annotations
}

mod draws;
mod evaluate;
pub mod pod;
#[cfg(test)]
mod tests;
mod warnings;
mod wire;

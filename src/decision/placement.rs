//! The placement decision: given a pod, its namespace's policy and the
//! platforms each of its images publishes, what archway injects and why.
//!
//! Pure: no I/O, no clock, no randomness. Lookups happen before, at the
//! edge (`admission.rs`); the patch is built after (`patch.rs`).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm, Pod, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::decision::platform::Platforms;
use crate::decision::policy::{GuardMode, Mode, NamespacePolicy, Placement, RolloutBy};

pub const ARCH_LABEL: &str = "kubernetes.io/arch";
/// Deprecated, but still honoured by the scheduler and still in old charts.
const BETA_ARCH_LABEL: &str = "beta.kubernetes.io/arch";
pub const OS_LABEL: &str = "kubernetes.io/os";
const BETA_OS_LABEL: &str = "beta.kubernetes.io/os";
/// The OS of a pod that names none: what the kubelet assumes.
pub const LINUX: &str = "linux";
/// The longest OS name taken from a pod; real ones are `linux`, `windows`.
const MAX_OS_CHARS: usize = 32;
pub const SKIP_ANNOTATION: &str = "archway.dev/skip";
pub const ARCHS_ANNOTATION: &str = "archway.dev/archs";
pub const DECISION_ANNOTATION: &str = "archway.dev/decision";
/// Set by the kubelet on the API copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
const POD_TEMPLATE_HASH_LABEL: &str = "pod-template-hash";
/// Written on the pods whose architecture the rollout chose (either side),
/// so the rollout guard watches only them, with a label selector.
pub const ARCH_POD_LABEL: &str = "archway.dev/arch";

/// A hold the rollout guard recorded on the pod's workload: its pods failed
/// on `architecture` and not elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub architecture: String,
    /// `held: 3 pods CrashLoopBackOff on arm64 since ...`, for people.
    pub reason: String,
}

/// One container's image, as the pod names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    pub container: String,
    pub image: String,
    pub init: bool,
}

/// What the registry said about one image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageLookup {
    /// Shared with the cache: a review's containers copy no platform.
    Found(Platforms),
    /// Could not be inspected; the reason is for people.
    Failed(String),
}

/// The settings the decision depends on.
#[derive(Debug, Clone)]
pub struct DecisionSettings {
    pub target_architecture: String,
    pub fail_closed: bool,
    /// The tolerations archway gives a pod per platform it may land on
    /// (`tolerations:` in the configuration; see
    /// `patch::configured_tolerations`).
    pub tolerations: BTreeMap<String, Vec<Toleration>>,
}

/// Everything the decision reads.
pub struct DecisionInput<'a> {
    pub pod: &'a Pod,
    pub policy: &'a NamespacePolicy,
    /// One lookup per entry of `container_images(pod)`, in that order.
    pub lookups: &'a [(ContainerImage, ImageLookup)],
    pub settings: &'a DecisionSettings,
    /// Identifies this pod for its rollout bucket when it has no name yet
    /// (pods of a ReplicaSet are named after admission): the review's uid.
    pub request_uid: &'a str,
    /// This pod's place in its owner's sequence of unnamed pods, as archway
    /// counted them (see [`spread_owner`]); `None` draws from `request_uid`.
    pub draw: Option<u64>,
    /// Each node's architecture, when known (with a cluster).
    pub nodes: Option<&'a Nodes>,
    /// The guard's hold on the pod's workload, if any; the namespace's
    /// `guard` mode says whether it is enforced.
    pub hold: Option<&'a Hold>,
}

/// What archway does with a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub kind: DecisionKind,
    /// One line on why, for the decision annotation, logs and audits.
    pub reason: String,
    /// What the pod's author should see (`kubectl` prints these).
    pub warnings: Vec<String>,
    /// The architectures every image runs on, once known.
    pub supported: Option<BTreeSet<String>>,
    /// Architectures the rollout chose that have no node in the cluster.
    pub without_nodes: BTreeSet<String>,
    /// The architectures of the only nodes the pod may use, when its
    /// images run on none of them (`DecisionKind::Unrunnable`).
    pub unrunnable_on: BTreeSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Inject(Injection),
    Deny,
}

/// What the patch adds to the pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// The architectures the pod may land on: `kubernetes.io/arch In
    /// required`, written as `requirement` says.
    pub required: BTreeSet<String>,
    pub requirement: Requirement,
    /// A preferred term for these architectures, on top of `required`.
    pub preferred: Option<BTreeSet<String>>,
    /// The pod's operating system: tolerations are configured per OS and
    /// architecture.
    pub os: String,
    /// Architectures whose configured tolerations (for `os`) the pod gets:
    /// those it may be scheduled on.
    pub tolerate: BTreeSet<String>,
    pub annotations: BTreeMap<String, String>,
    /// `archway.dev/arch` when the rollout chose one architecture.
    pub labels: BTreeMap<String, String>,
}

/// How the patch writes `Injection::required` into the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requirement {
    /// ANDed into every required node-affinity term (archway's own term
    /// when the pod has none).
    AddToEveryTerm,
    /// On a pod archway already placed: archway's own arch expression in
    /// each required term replaced by `required` (removed when `required`
    /// is empty), instead of a second one added.
    ReplaceOwn,
    /// Not written: a pinned pod is placed by its pin, which an arch
    /// expression could only contradict (`constraints`).
    LeaveToPin,
}

/// Why, as a fixed label for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecisionKind {
    /// Placed on the target architecture by the rollout.
    Steered,
    /// Eligible, but the rollout kept it off the target.
    Held,
    /// The rollout chose the target, but the guard holds the pod's
    /// workload off it.
    GuardHold,
    /// Its images run on one side only, or the target is not among them.
    OnlyOption,
    /// A pod of another OS than Linux (Windows): required onto the
    /// architectures its images publish for that OS, never steered.
    OtherOs,
    NotOptedIn,
    Skipped,
    AlreadyDecided,
    /// Reviewed again after a later webhook changed the pod: archway's own
    /// expression rewritten (or removed) for the images the pod has now.
    Corrected,
    /// Pinned to nodes (nodeName, hostname, DaemonSet): checked, never
    /// steered.
    Pinned,
    /// The only nodes the pod may use (its pin, selectors or affinity) are
    /// of architectures its images do not run.
    Unrunnable,
    MirrorPod,
    UserChoice,
    NoCommonArchitecture,
    InspectionFailed,
}

impl DecisionKind {
    pub fn label(self) -> &'static str {
        match self {
            DecisionKind::Steered => "steered",
            DecisionKind::Held => "held",
            DecisionKind::GuardHold => "guard_hold",
            DecisionKind::OnlyOption => "only_option",
            DecisionKind::OtherOs => "other_os",
            DecisionKind::NotOptedIn => "not_opted_in",
            DecisionKind::Skipped => "skipped",
            DecisionKind::AlreadyDecided => "already_decided",
            DecisionKind::Corrected => "corrected",
            DecisionKind::Pinned => "pinned",
            DecisionKind::Unrunnable => "unrunnable",
            DecisionKind::MirrorPod => "mirror_pod",
            DecisionKind::UserChoice => "user_choice",
            DecisionKind::NoCommonArchitecture => "no_common_architecture",
            DecisionKind::InspectionFailed => "inspection_failed",
        }
    }
}

impl Decision {
    fn unchanged(kind: DecisionKind, reason: impl Into<String>) -> Decision {
        Decision {
            outcome: Outcome::Unchanged,
            kind,
            reason: reason.into(),
            warnings: Vec::new(),
            supported: None,
            without_nodes: BTreeSet::new(),
            unrunnable_on: BTreeSet::new(),
        }
    }
}

/// Every image the pod runs: init containers first, as they start first.
/// Ephemeral containers cannot exist at CREATE.
pub fn container_images(pod: &Pod) -> Vec<ContainerImage> {
    let Some(spec) = &pod.spec else {
        return Vec::new();
    };
    let init = spec.init_containers.iter().flatten().map(|c| (c, true));
    let main = spec.containers.iter().map(|c| (c, false));
    init.chain(main)
        .map(|(c, init)| ContainerImage {
            container: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            init,
        })
        .collect()
}

/// The reasons to leave a pod alone that need no registry lookup. `None`
/// when the decision needs the images' platforms.
pub fn prescreen(pod: &Pod, policy: Option<&NamespacePolicy>) -> Option<Decision> {
    match policy {
        None => Some(not_opted_in()),
        Some(_) => screen(pod),
    }
}

/// The decision for a pod whose namespace has not asked for archway.
pub fn not_opted_in() -> Decision {
    Decision::unchanged(DecisionKind::NotOptedIn, "namespace not opted in")
}

/// What a pod's author may set of archway's keys: everything else under
/// `archway.dev/` on a pod is archway's to write.
pub const USER_POD_KEYS: [&str; 1] = [SKIP_ANNOTATION];
const ARCHWAY_PREFIX: &str = "archway.dev/";

/// archway's keys on a pod that archway did not write: on a pod's first
/// review in an enforced namespace, every `archway.dev/` label and
/// annotation but the user's inputs (`USER_POD_KEYS`). A pod author who
/// wrote `archway.dev/arch: arm64` would otherwise pass for a pod the
/// rollout placed. Labels first, then annotations.
pub fn foreign_archway_keys(meta: &ObjectMeta) -> (Vec<&str>, Vec<&str>) {
    fn foreign(map: Option<&BTreeMap<String, String>>) -> Vec<&str> {
        (map.into_iter().flatten())
            .map(|(key, _)| key.as_str())
            .filter(|key| key.starts_with(ARCHWAY_PREFIX) && !USER_POD_KEYS.contains(key))
            .collect()
    }
    (
        foreign(meta.labels.as_ref()),
        foreign(meta.annotations.as_ref()),
    )
}

/// The reasons in the pod itself to leave it alone, before any lookup.
pub fn screen(pod: &Pod) -> Option<Decision> {
    let annotations = pod.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    if annotation(SKIP_ANNOTATION).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Some(Decision::unchanged(
            DecisionKind::Skipped,
            format!("{SKIP_ANNOTATION} is true"),
        ));
    }
    if annotation(MIRROR_ANNOTATION).is_some() {
        return Some(Decision::unchanged(
            DecisionKind::MirrorPod,
            "mirror pod of a static pod",
        ));
    }
    None
}

/// The decision for a pod in an opted-in namespace.
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    screen(input.pod).unwrap_or_else(|| decide_screened(input))
}

/// The decision for a pod that `screen` let through.
pub fn decide_screened(input: &DecisionInput<'_>) -> Decision {
    if input.lookups.is_empty() {
        // The API server rejects such a pod after admission; nothing to do.
        return Decision::unchanged(DecisionKind::Skipped, "the pod has no containers");
    }
    let mut warnings: Vec<String> = input
        .policy
        .problems
        .iter()
        .map(|p| format!("namespace policy: {p}"))
        .collect();
    if let Some(pin) = constraints::pin(input.pod) {
        // Before the reinvocation check: a pinned pod gets no expression
        // of archway's, so it is checked the same way every time.
        return pinned(input, &pin, warnings);
    }
    let annotations = input.pod.metadata.annotations.as_ref();
    if let Some(previous) = annotations.and_then(|a| a.get(DECISION_ANNOTATION)) {
        // Reinvocation after a later webhook changed the pod, or a pod
        // re-created from one archway placed: checked again, never
        // stacked with a second expression.
        return recheck::recheck(input, previous);
    }
    let os = match pod_os(input.pod) {
        PodOs::Known(os) => os,
        PodOs::Unclear(why) => {
            // Any OS archway picked could contradict one of the pod's
            // terms; its own node affinity already places it.
            return Decision {
                warnings,
                ..Decision::unchanged(DecisionKind::UserChoice, why)
            };
        }
    };
    let supported = supported_architectures(input.lookups, &os);
    if let Some(choice) = user_architectures(input.pod) {
        // The pod's author chose; archway only checks the choice.
        warnings.extend(check_choice(&choice, supported.as_ref(), &os));
        warnings.extend(failures(input.lookups));
        return Decision {
            warnings,
            supported,
            ..Decision::unchanged(
                DecisionKind::UserChoice,
                "the pod already constrains kubernetes.io/arch",
            )
        };
    }
    let supported = match known_and_shared(input, &os, supported, &mut warnings) {
        Ok(supported) => supported,
        Err(refused) => return *refused,
    };
    // Where the pod's own selectors and tolerations let it go, among the
    // architectures its images run: archway never requires one of the
    // others, where the pod could not be scheduled.
    let runnable = match fitting(input, &os, &supported, &mut warnings) {
        Ok(runnable) => runnable,
        Err(on) => return unrunnable(input, &os, supported, on, warnings),
    };
    let mut choice = if os == LINUX {
        choose(input, &runnable)
    } else {
        other_os(&os, &runnable)
    };
    if runnable != supported && choice.kind == DecisionKind::OnlyOption {
        choice.reason = format!(
            "{}: the only architecture{} of its images' ({}) that its node selectors and tolerations allow",
            join(&runnable),
            plural(&runnable),
            join(&supported)
        );
    }
    // The node set is every OS's architectures together: for any OS, an
    // architecture missing from it has no node of that OS either, so
    // dropping it is safe (a kept one may still lack a node of this OS).
    let mut choice = avoid_missing_nodes(choice, &runnable, input.nodes.map(Nodes::architectures));
    warnings.extend(choice.warnings.iter().cloned());
    let placement = match constraints::relative_to_other_pods(input.pod) {
        // Where such a pod may go depends on other pods: a requirement
        // that takes away nodes it could use without archway could strand
        // it; a preference cannot.
        Some(why) if !reachable_without_archway(input, &runnable).is_subset(&choice.archs) => {
            choice.reason = format!("{} (preferred: the pod has {why})", choice.reason);
            Placement::Preferred
        }
        _ => input.policy.placement,
    };
    inject(placement, os, choice, &runnable, supported, warnings)
}

/// The architectures every image runs on, or the refusal when some image
/// could not be inspected or they share none.
fn known_and_shared(
    input: &DecisionInput<'_>,
    os: &str,
    supported: Option<BTreeSet<String>>,
    warnings: &mut Vec<String>,
) -> Result<BTreeSet<String>, Box<Decision>> {
    let Some(supported) = supported else {
        warnings.extend(failures(input.lookups));
        return Err(Box::new(refuse(
            input,
            DecisionKind::InspectionFailed,
            "some images could not be inspected",
            std::mem::take(warnings),
            None,
        )));
    };
    if supported.is_empty() {
        warnings.push(format!(
            "the pod's images share no {} architecture ({}); it would fail on every node",
            os_name(os),
            describe_images(input.lookups)
        ));
        return Err(Box::new(refuse(
            input,
            DecisionKind::NoCommonArchitecture,
            &format!("images share no {} architecture", os_name(os)),
            std::mem::take(warnings),
            Some(supported),
        )));
    }
    Ok(supported)
}

/// Of `supported`, the architectures with a node the pod fits: one its
/// node selector and required affinity match, and whose taints it
/// tolerates with archway's tolerations for that architecture. All of
/// `supported` when nodes are not known, or when no node fits at all (the
/// pod waits either way, and archway's usual choice stands). `Err` with
/// the architectures of the only nodes its selectors allow, when its
/// images run on none of them.
fn fitting(
    input: &DecisionInput<'_>,
    os: &str,
    supported: &BTreeSet<String>,
    warnings: &mut Vec<String>,
) -> Result<BTreeSet<String>, BTreeSet<String>> {
    let Some(nodes) = input.nodes else {
        return Ok(supported.clone());
    };
    let spec = input.pod.spec.as_ref();
    let empty = BTreeMap::new();
    let selector = spec
        .and_then(|s| s.node_selector.as_ref())
        .unwrap_or(&empty);
    let tolerations = spec.and_then(|s| s.tolerations.as_deref());
    let configured = &input.settings.tolerations;
    let fit = nodes.fit(
        selector,
        required_terms(input.pod),
        tolerations.unwrap_or_default(),
        supported,
        |arch| configured_tolerations(configured, os, arch),
    );
    let target = input.settings.target_architecture.as_str();
    for (arch, taint) in &fit.untolerated {
        // Worth a word when it keeps the rollout from the target, or the
        // pod from every node its images run on.
        if (arch == target && input.policy.rollout.percent() > 0) || fit.architectures.is_empty() {
            warnings.push(format!(
                "{arch} nodes carry the taint {taint}, which neither the pod nor archway's tolerations for {arch} (configuration `tolerations`) tolerate: archway does not place the pod there"
            ));
        }
    }
    if !fit.architectures.is_empty() {
        // Only architectures with nodes the pod does not fit are dropped;
        // one without any node is left to `avoid_missing_nodes`, which
        // says so.
        let with_nodes = nodes.architectures();
        let runnable = (supported.iter())
            .filter(|a| fit.architectures.contains(*a) || !with_nodes.contains(*a))
            .cloned()
            .collect();
        return Ok(runnable);
    }
    // Nodes its images run on exist, but its own selectors lead it only
    // to others. (With no such node at all, archway's choice stands and
    // the pod waits for one, as `avoid_missing_nodes` says.)
    let elsewhere = !fit.selected.is_empty() && fit.selected.is_disjoint(supported);
    if elsewhere && supported.iter().any(|a| nodes.architectures().contains(a)) {
        return Err(fit.selected);
    }
    Ok(supported.clone())
}

/// Of `runnable`, the architectures whose nodes the pod could use as it
/// came, without archway's tolerations (all of them when nodes are not
/// known).
fn reachable_without_archway(
    input: &DecisionInput<'_>,
    runnable: &BTreeSet<String>,
) -> BTreeSet<String> {
    let Some(nodes) = input.nodes else {
        return runnable.clone();
    };
    let spec = input.pod.spec.as_ref();
    let empty = BTreeMap::new();
    let selector = spec
        .and_then(|s| s.node_selector.as_ref())
        .unwrap_or(&empty);
    let tolerations = spec.and_then(|s| s.tolerations.as_deref());
    let fit = nodes.fit(
        selector,
        required_terms(input.pod),
        tolerations.unwrap_or_default(),
        runnable,
        |_| &[],
    );
    fit.architectures
}

/// The tolerations archway gives pods placed on each architecture unless
/// configured otherwise: for the taint cloud providers and platform teams
/// commonly put on nodes reserved for one architecture (GKE does for
/// arm64), `kubernetes.io/arch=<arch>:NoSchedule`, for arm64 and amd64.
pub fn default_tolerations() -> BTreeMap<String, Vec<Toleration>> {
    let toleration = |arch: &str| Toleration {
        key: Some(ARCH_LABEL.into()),
        operator: Some("Equal".into()),
        value: Some(arch.into()),
        effect: Some("NoSchedule".into()),
        ..Default::default()
    };
    ["arm64", "amd64"]
        .into_iter()
        .map(|arch| (arch.to_string(), vec![toleration(arch)]))
        .collect()
}

/// The tolerations configured for pods placed on `arch` under `os`: the
/// `os/arch` key, or for Linux the bare architecture.
pub fn configured_tolerations<'a>(
    tolerations: &'a BTreeMap<String, Vec<Toleration>>,
    os: &str,
    arch: &str,
) -> &'a [Toleration] {
    let qualified = tolerations.get(&format!("{os}/{arch}"));
    let bare = || (os == LINUX).then(|| tolerations.get(arch)).flatten();
    qualified.or_else(bare).map_or(&[], Vec::as_slice)
}

/// A pod whose own constraints allow only nodes of `on`, where its images
/// do not run: it would fail there with exec format error.
fn unrunnable(
    input: &DecisionInput<'_>,
    os: &str,
    supported: BTreeSet<String>,
    on: BTreeSet<String>,
    mut warnings: Vec<String>,
) -> Decision {
    warnings.push(format!(
        "the pod's node selector and affinity allow only {} nodes, where its images do not run ({}): it would fail there with exec format error",
        join(&on),
        recheck::lacking(input.lookups, os, &on)
    ));
    let reason = format!(
        "its node selectors allow only {} nodes; its images publish {}",
        join(&on),
        join(&supported)
    );
    Decision {
        unrunnable_on: on,
        ..refuse(
            input,
            DecisionKind::Unrunnable,
            &reason,
            warnings,
            Some(supported),
        )
    }
}

/// A pinned pod: never an arch expression (its pin places it), the
/// tolerations of its nodes' architectures, and a check that its images
/// run there.
fn pinned(
    input: &DecisionInput<'_>,
    pin: &constraints::Pin<'_>,
    mut warnings: Vec<String>,
) -> Decision {
    let os = match pod_os(input.pod) {
        PodOs::Known(os) => os,
        PodOs::Unclear(why) => {
            return Decision {
                warnings,
                ..Decision::unchanged(DecisionKind::Pinned, why)
            };
        }
    };
    let supported = supported_architectures(input.lookups, &os);
    let supported = match known_and_shared(input, &os, supported, &mut warnings) {
        Ok(supported) => supported,
        Err(refused) => return *refused,
    };
    let architecture_of = |node: &constraints::NamedNode<'_>| {
        let nodes = input.nodes?;
        match node.hostname {
            true => nodes.of_hostname(node.name),
            false => nodes.of_node(node.name),
        }
    };
    let mut on: BTreeSet<String> = BTreeSet::new();
    let mut unrunnable: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for node in &pin.nodes {
        let Some(arch) = architecture_of(node) else {
            continue;
        };
        if supported.contains(arch) {
            on.insert(arch.to_string());
        } else {
            unrunnable
                .entry(arch.to_string())
                .or_default()
                .push(node.name);
        }
    }
    if !unrunnable.is_empty() {
        let archs: BTreeSet<String> = unrunnable.keys().cloned().collect();
        let nodes: Vec<String> = (unrunnable.iter())
            .map(|(arch, names)| format!("{} ({arch})", describe_names(names)))
            .collect();
        warnings.push(format!(
            "the pod is pinned to {} {} {}, but {}: it would fail there with exec format error",
            node_word(unrunnable.values().map(Vec::len).sum()),
            nodes.join(", "),
            pin.how,
            recheck::lacking(input.lookups, &os, &archs)
        ));
        let reason = format!(
            "pinned {} to {} nodes, where its images do not run",
            pin.how,
            join(&archs)
        );
        return Decision {
            unrunnable_on: archs,
            ..refuse(
                input,
                DecisionKind::Unrunnable,
                &reason,
                warnings,
                Some(supported),
            )
        };
    }
    let names: Vec<&str> = pin.nodes.iter().map(|n| n.name).collect();
    let reason = match (names.is_empty(), on.is_empty()) {
        (true, _) => format!("pinned {}; not steered", pin.how),
        (false, true) => format!(
            "pinned to {} {} {} (architecture not known to archway); not steered",
            node_word(names.len()),
            describe_names(&names),
            pin.how
        ),
        (false, false) => format!(
            "pinned to {} {} ({}) {}; not steered",
            node_word(names.len()),
            describe_names(&names),
            join(&on),
            pin.how
        ),
    };
    let annotations = BTreeMap::from([
        (ARCHS_ANNOTATION.to_string(), join(&supported)),
        (DECISION_ANNOTATION.to_string(), reason.clone()),
    ]);
    Decision {
        outcome: Outcome::Inject(Injection {
            tolerate: on.clone(),
            required: on,
            requirement: Requirement::LeaveToPin,
            preferred: None,
            os,
            annotations,
            labels: BTreeMap::new(),
        }),
        kind: DecisionKind::Pinned,
        reason,
        warnings,
        supported: Some(supported),
        without_nodes: BTreeSet::new(),
        unrunnable_on: BTreeSet::new(),
    }
}

fn node_word(count: usize) -> &'static str {
    if count == 1 { "node" } else { "nodes" }
}

/// What a DaemonSet's pods would meet on `nodes`: the nodes its template's
/// selectors and tolerations give it a pod on whose architecture one of
/// its images does not publish, as one line for `review` and `audit`, e.g.
/// `can run on arm64 nodes, but fluent-bit:2.1 publishes only linux/amd64:
/// its pods on arm64-0, arm64-1 will fail`. `None` when every such node
/// runs its images, or its images are not all known.
pub fn daemon_set_mismatch(
    template: &Pod,
    lookups: &[(ContainerImage, ImageLookup)],
    nodes: &Nodes,
) -> Option<String> {
    let PodOs::Known(os) = pod_os(template) else {
        return None;
    };
    let supported = supported_architectures(lookups, &os)?;
    let spec = template.spec.as_ref();
    let empty = BTreeMap::new();
    let selector = spec
        .and_then(|s| s.node_selector.as_ref())
        .unwrap_or(&empty);
    let tolerations = spec.and_then(|s| s.tolerations.as_deref());
    let on = nodes.daemon_set_nodes(
        selector,
        required_terms(template),
        tolerations.unwrap_or_default(),
    );
    let mut failing: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, arch) in on {
        if !supported.contains(arch) {
            failing.entry(arch).or_default().push(name);
        }
    }
    if failing.is_empty() {
        return None;
    }
    let archs: BTreeSet<String> = failing.keys().map(|a| a.to_string()).collect();
    let names: Vec<&str> = failing.values().flatten().copied().collect();
    let images: Vec<String> = (lookups.iter())
        .filter_map(|(c, lookup)| match lookup {
            ImageLookup::Found(p) => {
                let published: Vec<String> = (p.iter())
                    .filter(|p| p.os == os)
                    .map(ToString::to_string)
                    .collect();
                let lacks = archs
                    .iter()
                    .any(|a| !p.iter().any(|p| p.os == os && p.architecture == *a));
                lacks.then(|| {
                    format!(
                        "{} publishes only {}",
                        crate::decision::text::short_image(&c.image),
                        if published.is_empty() {
                            "other OSes".to_string()
                        } else {
                            published.join(",")
                        }
                    )
                })
            }
            ImageLookup::Failed(_) => None,
        })
        .collect();
    Some(format!(
        "can run on {} nodes, but {}: its pods on {} will fail",
        join(&archs),
        images.join("; "),
        describe_names(&names)
    ))
}

/// `a, b, c and 7 more`: names from the pod, each cut short, at most three.
fn describe_names(names: &[&str]) -> String {
    const SHOWN: usize = 3;
    let mut text: Vec<String> = (names.iter().take(SHOWN))
        .map(|n| crate::decision::text::short_image(n))
        .collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}

/// Why each image that could not be inspected could not be.
fn failures(lookups: &[(ContainerImage, ImageLookup)]) -> Vec<String> {
    lookups
        .iter()
        .filter_map(|(c, lookup)| match lookup {
            ImageLookup::Failed(reason) => Some(format!(
                "image {} (container {}): {reason}",
                crate::decision::text::short_image(&c.image),
                crate::decision::text::short_image(&c.container)
            )),
            ImageLookup::Found(_) => None,
        })
        .collect()
}

/// A warning when the pod asks for architectures its images do not publish.
fn check_choice(
    choice: &BTreeSet<String>,
    supported: Option<&BTreeSet<String>>,
    os: &str,
) -> Option<String> {
    let supported = supported?;
    let unsupported: Vec<&String> = choice.iter().filter(|a| !supported.contains(*a)).collect();
    (!unsupported.is_empty()).then(|| {
        format!(
            "the pod asks for {} but its images publish only {}",
            join(unsupported),
            describe_set(supported, os)
        )
    })
}

/// Where the rollout sends a pod, before the nodes have a say.
struct Choice {
    kind: DecisionKind,
    archs: BTreeSet<String>,
    reason: String,
    /// Architectures chosen that have no node in the cluster.
    without_nodes: BTreeSet<String>,
    warnings: Vec<String>,
}

/// The target when the pod's rollout bucket is in, the other architectures
/// when it is out, or all it runs on when there is no choice to make.
fn choose(input: &DecisionInput<'_>, supported: &BTreeSet<String>) -> Choice {
    let target = input.settings.target_architecture.as_str();
    let choice = |kind, archs, reason| Choice {
        kind,
        archs,
        reason,
        without_nodes: BTreeSet::new(),
        warnings: Vec::new(),
    };
    if !(supported.contains(target) && supported.len() > 1) {
        let reason = format!(
            "{}: the only architecture{} its images publish",
            join(supported),
            plural(supported)
        );
        return choice(DecisionKind::OnlyOption, supported.clone(), reason);
    }
    let rollout = input.policy.rollout.percent();
    let owner = input
        .draw
        .and_then(|_| draw_owner(input.pod, input.policy.rollout_by));
    // A pod drawn in its workload's sequence is steered by its place in
    // it (see `spread_steered`); any other by its bucket, below the rollout.
    let (steer, drawn) = match (input.draw, owner) {
        (Some(draw), Some(owner)) => (
            spread_steered(&owner, draw, rollout),
            format!("draw {draw}"),
        ),
        _ => {
            let bucket = rollout_bucket(&bucket_key(
                input.pod,
                input.policy.rollout_by,
                input.request_uid,
            ));
            (bucket < rollout, format!("bucket {bucket}"))
        }
    };
    let others: BTreeSet<String> = supported.iter().filter(|a| *a != target).cloned().collect();
    let hold = input.hold.filter(|h| h.architecture == target);
    if steer {
        let reason = format!("{target}: rollout {rollout}%, {drawn}");
        let steered = BTreeSet::from([target.to_string()]);
        return match (hold, input.policy.guard) {
            (Some(hold), GuardMode::Enforce) => {
                let reason = format!("{}: {}", join(&others), hold.reason);
                choice(DecisionKind::GuardHold, others, reason)
            }
            (Some(hold), GuardMode::Observe) => Choice {
                warnings: vec![format!(
                    "the rollout guard would hold this workload off {target} ({}); \
                     archway.dev/guard is observe, so it is steered there",
                    hold.reason
                )],
                ..choice(
                    DecisionKind::Steered,
                    steered,
                    format!("{reason} (guard observes {})", hold.reason),
                )
            },
            _ => choice(DecisionKind::Steered, steered, reason),
        };
    }
    let reason = format!("{}: rollout {rollout}%, {drawn}", join(&others));
    choice(DecisionKind::Held, others, reason)
}

/// A pod of another OS goes wherever its images run for that OS, with no
/// rollout: Windows pods are placed, not steered. The node set archway
/// watches does not say which OS a node of an architecture runs, so
/// steering a Windows pod to the target could send it where only Linux
/// nodes of that architecture exist, and it would wait forever. Placing it
/// by what its Windows images publish is always true, and it keeps the pod
/// off Windows nodes its images cannot run on.
fn other_os(os: &str, supported: &BTreeSet<String>) -> Choice {
    Choice {
        kind: DecisionKind::OtherOs,
        archs: supported.clone(),
        reason: format!(
            "{}: what its {} images publish (the rollout steers Linux pods only)",
            join(supported),
            os_name(os)
        ),
        without_nodes: BTreeSet::new(),
        warnings: Vec::new(),
    }
}

/// Never send a pod where no node can take it while another architecture
/// its images run on has nodes.
fn avoid_missing_nodes(
    mut choice: Choice,
    supported: &BTreeSet<String>,
    nodes: Option<&BTreeSet<String>>,
) -> Choice {
    let Some(nodes) = nodes else {
        return choice;
    };
    let without_nodes: BTreeSet<String> = choice.archs.difference(nodes).cloned().collect();
    if without_nodes.is_empty() {
        return choice;
    }
    let with_nodes: BTreeSet<String> = choice.archs.intersection(nodes).cloned().collect();
    let alternatives: BTreeSet<String> = supported.intersection(nodes).cloned().collect();
    if !with_nodes.is_empty() {
        choice.archs = with_nodes;
    } else if !alternatives.is_empty() {
        choice.warnings.push(format!(
            "no {} node in the cluster; placed on {} instead",
            join(&without_nodes),
            join(&alternatives)
        ));
        choice.reason = format!(
            "{} ({} has no node)",
            join(&alternatives),
            join(&without_nodes)
        );
        choice.archs = alternatives;
    } else {
        choice.warnings.push(format!(
            "no {} node in the cluster: the pod stays Pending until one joins",
            join(&without_nodes)
        ));
    }
    choice.without_nodes = without_nodes;
    choice
}

/// The injection that carries `choice` out under the namespace's placement.
fn inject(
    placement: Placement,
    os: String,
    choice: Choice,
    runnable: &BTreeSet<String>,
    supported: BTreeSet<String>,
    warnings: Vec<String>,
) -> Decision {
    // Only pods the rollout placed (either side) are the guard's to watch:
    // a pod with one possible architecture cannot fail for being moved.
    let rolled = matches!(
        choice.kind,
        DecisionKind::Steered | DecisionKind::Held | DecisionKind::GuardHold
    );
    let labels = match choice.archs.iter().collect::<Vec<_>>().as_slice() {
        [one] if rolled && is_label_value(one) => {
            BTreeMap::from([(ARCH_POD_LABEL.to_string(), one.to_string())])
        }
        _ => BTreeMap::new(),
    };
    let (required, preferred) = match placement {
        Placement::Required => (choice.archs, None),
        // A preference only means something when there is a choice.
        Placement::Preferred if choice.archs != *runnable => (runnable.clone(), Some(choice.archs)),
        Placement::Preferred => (choice.archs, None),
    };
    let annotations = BTreeMap::from([
        (ARCHS_ANNOTATION.to_string(), join(&supported)),
        (DECISION_ANNOTATION.to_string(), choice.reason.clone()),
    ]);
    Decision {
        outcome: Outcome::Inject(Injection {
            os,
            tolerate: required.clone(),
            required,
            requirement: Requirement::AddToEveryTerm,
            preferred,
            annotations,
            labels,
        }),
        kind: choice.kind,
        reason: choice.reason,
        warnings,
        supported: Some(supported),
        without_nodes: choice.without_nodes,
        unrunnable_on: BTreeSet::new(),
    }
}

/// Admit unchanged with the warnings, or deny when configured to fail
/// closed (never in audit mode, which changes nothing).
fn refuse(
    input: &DecisionInput<'_>,
    kind: DecisionKind,
    reason: &str,
    warnings: Vec<String>,
    supported: Option<BTreeSet<String>>,
) -> Decision {
    let deny = input.settings.fail_closed && input.policy.mode == Mode::Enforce;
    Decision {
        outcome: if deny {
            Outcome::Deny
        } else {
            Outcome::Unchanged
        },
        kind,
        reason: reason.to_string(),
        warnings,
        supported,
        without_nodes: BTreeSet::new(),
        unrunnable_on: BTreeSet::new(),
    }
}

/// S: the architectures every image publishes for `os` (the pod's), or
/// `None` when some image could not be inspected. Variants collapse: the
/// `kubernetes.io/arch` node label carries none.
pub fn supported_architectures(
    lookups: &[(ContainerImage, ImageLookup)],
    os: &str,
) -> Option<BTreeSet<String>> {
    // Borrowed from the lookups until the answer: this runs on every
    // review, and a per-image set of owned names would cost an allocation
    // per architecture per container.
    let mut supported: Option<Vec<&str>> = None;
    for (_, lookup) in lookups {
        let ImageLookup::Found(platforms) = lookup else {
            return None;
        };
        let publishes = |arch: &str| {
            platforms
                .iter()
                .any(|p| p.os == os && p.architecture == arch)
        };
        match &mut supported {
            None => {
                let archs = platforms.iter().filter(|p| p.os == os);
                supported = Some(archs.map(|p| p.architecture.as_str()).collect());
            }
            Some(archs) => archs.retain(|arch| publishes(arch)),
        }
    }
    supported.map(|archs| archs.into_iter().map(str::to_string).collect())
}

/// The pod's required node affinity terms (ORed); empty when it has none.
fn required_terms(pod: &Pod) -> &[NodeSelectorTerm] {
    let spec = pod.spec.as_ref();
    let affinity = spec.and_then(|s| s.affinity.as_ref());
    affinity
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map(|r| r.node_selector_terms.as_slice())
        .unwrap_or_default()
}

/// The operating system a pod will run on, as far as its spec says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodOs {
    /// Lowercase, a short token.
    Known(String),
    /// The spec allows more than one OS, or names one archway cannot
    /// read; the reason is for people.
    Unclear(String),
}

/// The pod's OS: `spec.os.name`, else `kubernetes.io/os` in its
/// nodeSelector, else an `In` of one value in every required node
/// affinity term (terms are ORed: one term without it allows any OS),
/// else linux, as the kubelet assumes.
pub fn pod_os(pod: &Pod) -> PodOs {
    let Some(spec) = pod.spec.as_ref() else {
        return PodOs::Known(LINUX.into());
    };
    if let Some(name) = spec.os.as_ref().map(|o| o.name.as_str()) {
        return os_token(name, "spec.os.name");
    }
    let is_os = |key: &str| key == OS_LABEL || key == BETA_OS_LABEL;
    // Both labels in one selector must agree or nothing matches; the
    // first is as good as any to read.
    if let Some((_, value)) = spec.node_selector.iter().flatten().find(|(k, _)| is_os(k)) {
        return os_token(value, "nodeSelector kubernetes.io/os");
    }
    let terms = required_terms(pod);
    let names_os = |term: &NodeSelectorTerm| {
        let mut expressions = term.match_expressions.iter().flatten();
        expressions.any(|e| is_os(&e.key))
    };
    // Most pods' terms say nothing of the OS: answered without the
    // per-term list below.
    if !terms.iter().any(names_os) {
        return PodOs::Known(LINUX.into());
    }
    let term_os = |term: &NodeSelectorTerm| {
        let mut expressions = term
            .match_expressions
            .iter()
            .flatten()
            .filter(|e| is_os(&e.key));
        let named = expressions.clone().find_map(|e| match e.values.as_deref() {
            Some([one]) if e.operator == "In" => Some(one.clone()),
            _ => None,
        });
        (named, expressions.next().is_some())
    };
    let per_term: Vec<(Option<String>, bool)> = terms.iter().map(term_os).collect();
    if per_term.iter().all(|(_, constrains)| !constrains) {
        return PodOs::Known(LINUX.into());
    }
    let named: BTreeSet<&String> = per_term.iter().filter_map(|(n, _)| n.as_ref()).collect();
    match named.into_iter().collect::<Vec<_>>().as_slice() {
        [one] if per_term.iter().all(|(n, _)| n.is_some()) => {
            os_token(one, "required node affinity kubernetes.io/os")
        }
        _ => PodOs::Unclear(
            "the pod's required node affinity allows more than one kubernetes.io/os".into(),
        ),
    }
}

/// A pod's OS name as archway uses it: lowercase, and short, since it goes
/// into warnings, annotations and logs (mutating webhooks see the pod
/// before the API server validates it).
fn os_token(value: &str, source: &str) -> PodOs {
    let value = value.trim();
    let token = !value.is_empty()
        && value.len() <= MAX_OS_CHARS
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if token {
        PodOs::Known(value.to_ascii_lowercase())
    } else {
        PodOs::Unclear(format!("{source} is not an operating system name"))
    }
}

/// The architectures the pod's own spec allows, when it constrains them:
/// the nodeSelector's value, or the `In` values of arch expressions in its
/// required node affinity. `Some(empty)` when it constrains only by `NotIn`
/// or `Exists` (a choice, but no named architecture to check).
pub fn user_architectures(pod: &Pod) -> Option<BTreeSet<String>> {
    let spec = pod.spec.as_ref()?;
    let is_arch = |key: &str| key == ARCH_LABEL || key == BETA_ARCH_LABEL;
    let mut constrained = false;
    let mut named = BTreeSet::new();
    for (key, value) in spec.node_selector.iter().flatten() {
        if is_arch(key) {
            constrained = true;
            named.insert(value.clone());
        }
    }
    let terms = required_terms(pod);
    let expressions = terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten());
    for NodeSelectorRequirement {
        key,
        operator,
        values,
    } in expressions
    {
        if is_arch(key) {
            constrained = true;
            if operator == "In" {
                named.extend(values.iter().flatten().cloned());
            }
        }
    }
    constrained.then_some(named)
}

/// The string a pod's rollout bucket is drawn from: its owning workload's
/// identity with `rollout-by: workload` (stable across a Deployment's
/// ReplicaSets), else the pod's own.
pub fn bucket_key(pod: &Pod, rollout_by: RolloutBy, request_uid: &str) -> String {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true));
    if let (RolloutBy::Workload, Some(owner)) = (rollout_by, controller) {
        let (kind, name) = workload_of(&pod.metadata, &owner.kind, &owner.name);
        return format!("{namespace}/{kind}/{name}");
    }
    match pod.metadata.name.as_deref().filter(|n| !n.is_empty()) {
        Some(name) => format!("{namespace}/Pod/{name}"),
        None => format!("{namespace}/Pod/{request_uid}"),
    }
}

/// The workload a pod belongs to, as `rollout-by: workload` counts it:
/// (kind, name) of its controller, a Deployment for a ReplicaSet of one.
pub fn workload(meta: &ObjectMeta) -> Option<(String, String)> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let (kind, name) = workload_of(meta, &owner.kind, &owner.name);
    Some((kind.to_string(), name.to_string()))
}

/// A Kubernetes label value: at most 63 characters of `[A-Za-z0-9._-]`,
/// alphanumeric at both ends. Architectures come from images' manifests,
/// so they are checked before they become a label.
pub fn is_label_value(value: &str) -> bool {
    let bytes = value.as_bytes();
    !value.is_empty()
        && value.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A ReplicaSet named `<deployment>-<pod-template-hash>` stands for its
/// Deployment, so a new rollout of the Deployment keeps its side.
fn workload_of<'a>(meta: &ObjectMeta, kind: &'a str, name: &'a str) -> (&'a str, &'a str) {
    if kind != "ReplicaSet" {
        return (kind, name);
    }
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(POD_TEMPLATE_HASH_LABEL));
    match hash
        .and_then(|h| name.strip_suffix(h.as_str()))
        .and_then(|n| n.strip_suffix('-'))
    {
        Some(deployment) if !deployment.is_empty() => ("Deployment", deployment),
        _ => (kind, name),
    }
}

/// The workload whose pods draw their places in sequence: with
/// `rollout-by: pod`, a pod that has no name yet (a ReplicaSet's, a Job's:
/// `generateName`) and a controlling owner. Its own name would be stable,
/// but it has none at admission, and the review's uid is random: drawn at
/// random, a 10-replica Deployment at rollout 10% would get no arm64 pod at
/// all one time in three. Drawn in sequence (see [`spread_steered`]), it
/// gets exactly one. A pinned pod is never steered, so it takes no place.
pub fn spread_owner(pod: &Pod, rollout_by: RolloutBy) -> Option<String> {
    let unnamed = pod.metadata.name.as_deref().is_none_or(str::is_empty);
    if !unnamed || constraints::pin(pod).is_some() {
        return None;
    }
    draw_owner(pod, rollout_by)
}

/// The workload a recorded draw counts in: as [`spread_owner`], named or
/// not. A gated pod has its name by the time archway's controller decides
/// with the draw the webhook recorded at admission.
fn draw_owner(pod: &Pod, rollout_by: RolloutBy) -> Option<String> {
    if rollout_by != RolloutBy::Pod {
        return None;
    }
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let (kind, name) = workload_of(&pod.metadata, &owner.kind, &owner.name);
    // `namespace/kind/name`, in one allocation of the exact size (each
    // unnamed pod's review makes it twice).
    Some([namespace, kind, name].join("/"))
}

/// Whether the pod at `draw` in `owner`'s sequence of unnamed pods is
/// steered at `rollout`%.
///
/// The owner's bucket is its phase `o` on a circle of 100 places. A draw is
/// a place: `2k` the k-th place going forward from `o` (o, o+1, ...), `2k+1`
/// the k-th going backward (o-1, o-2, ...; see `admission::RolloutDraws`,
/// which takes one direction per owner). Place `x` is steered when
/// `⌊(x+1)·N/100⌋ > ⌊x·N/100⌋` (Bresenham's line: the N steered places of
/// the 100 are as evenly spaced as whole places can be). So any run of `n`
/// places in a row, around the circle, holds `⌊(x+n)·N/100⌋ − ⌊x·N/100⌋`
/// steered: `⌊n·N/100⌋` or `⌈n·N/100⌉`, never further from `n·N/100`.
///
/// Why this and not a bucket per place compared with the rollout, as
/// named pods have (and as this was: the owner's bucket plus 61 per
/// place): those buckets were only roughly even; of 20 Deployments of 10
/// pods at 10%, 3 got no arm64 pod and 4 got two. The price is that a place
/// is not monotone in the rollout (place 2 is steered at 40% and held at
/// 50%). Nothing relies on it: a place is decided once (a gated pod's
/// recorded draw is decided by the controller with this same function, at
/// the rollout then in force; a reinvocation keeps the decision, it does
/// not draw again), and a re-created pod takes a new place. A workload's
/// phase spreads small workloads: at 10%, 3 in 10 of the 3-pod ones steer
/// one pod, where one phase for all would steer one pod in all or in none.
///
/// A replica that draws in one direction uses an arc of places; two
/// replicas that draw an owner in opposite directions use two arcs that
/// meet at `o`, one arc in all, so the split between them is exact too.
pub fn spread_steered(owner: &str, draw: u64, rollout: u8) -> bool {
    steered_at(rollout_bucket(owner), draw, rollout)
}

/// [`spread_steered`] for an owner whose phase (bucket) is `phase`.
fn steered_at(phase: u8, draw: u64, rollout: u8) -> bool {
    let phase = u64::from(phase);
    let step = (draw / 2) % 100;
    let place = match draw % 2 {
        0 => (phase + step) % 100,
        _ => (phase + 199 - step) % 100,
    };
    let rollout = u64::from(rollout.min(100));
    (place + 1) * rollout / 100 > place * rollout / 100
}

/// A bucket 0..=99 from a stable hash: the same key gets the same bucket
/// in every replica of archway, across restarts and versions.
pub fn rollout_bucket(key: &str) -> u8 {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    (u64::from_be_bytes(first) % 100) as u8
}

/// `amd64,arm64`: architectures as annotations, warnings and logs show them.
pub fn join<'a>(items: impl IntoIterator<Item = &'a String>) -> String {
    // One allocation, room for a few architectures: this runs several
    // times per review.
    let mut joined = String::with_capacity(32);
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            joined.push(',');
        }
        joined.push_str(item);
    }
    joined
}

fn plural(set: &BTreeSet<String>) -> &'static str {
    if set.len() == 1 { "" } else { "s" }
}

fn describe_set(set: &BTreeSet<String>, os: &str) -> String {
    if set.is_empty() {
        format!("no {} architecture", os_name(os))
    } else {
        join(set)
    }
}

/// An OS as prose names it: `Linux`, `Windows`.
fn os_name(os: &str) -> String {
    let mut chars = os.chars();
    chars
        .next()
        .map(|first| first.to_ascii_uppercase().to_string() + chars.as_str())
        .unwrap_or_default()
}

fn describe_images(lookups: &[(ContainerImage, ImageLookup)]) -> String {
    lookups
        .iter()
        .filter_map(|(c, lookup)| match lookup {
            ImageLookup::Found(p) => Some(format!(
                "{}: {}",
                c.container,
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            ImageLookup::Failed(_) => None,
        })
        .collect::<Vec<_>>()
        .join("; ")
}

mod constraints;
mod nodes;
mod recheck;
pub use constraints::{Pin, daemon_set_owner, pin};
pub use nodes::{Fit, HOSTNAME_LABEL, NodeArch, NodeTaint, Nodes};
pub use recheck::own_requirement;

#[cfg(test)]
mod constraint_tests;
#[cfg(test)]
mod tests;

//! Prometheus metrics, served on the admin port's `/metrics`.
//!
//! No process-wide set: `archway serve`'s runtime makes one `Metrics`,
//! shares it as an `Arc`, and hands it to each part that records (the
//! server, the registry client and through it the cache and the reviewer,
//! the controllers, the reloader, the settings report); `/metrics` renders
//! that one. A command or a test makes its own, so what it reads back
//! through `render` is what it recorded, whatever runs beside it. Label values come from bounded sets, whatever pods and
//! registries say: namespaces are the opted-in ones (else `other`),
//! registries the configured and well-known hosts (else `other`),
//! architectures the known ones (else `other`), results HTTP status codes
//! registries commonly send (else their class), reasons fixed labels.
//! `Label` values can only be made by the folding functions below.

use std::collections::BTreeSet;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value from a bounded set. Only the functions that fold hostile
/// input into such a set make one.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Label(std::borrow::Cow<'static, str>);

impl Label {
    pub const OTHER: Label = Label(std::borrow::Cow::Borrowed("other"));

    /// A label the code itself spells (a decision kind, an error label).
    pub const fn fixed(value: &'static str) -> Label {
        Label(std::borrow::Cow::Borrowed(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A namespace that has a policy: the cluster's administrators chose
    /// it, so the set is theirs, not a pod author's.
    pub fn opted_in_namespace(namespace: &str) -> Label {
        Label(namespace.to_string().into())
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Label {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&self.0)
    }
}

/// Registries that many clusters pull from, labelled by name.
pub const WELL_KNOWN_REGISTRIES: &[&str] = &[
    "docker.io",
    "registry-1.docker.io",
    "index.docker.io",
    "ghcr.io",
    "quay.io",
    "gcr.io",
    "us.gcr.io",
    "eu.gcr.io",
    "asia.gcr.io",
    "registry.k8s.io",
    "k8s.gcr.io",
    "public.ecr.aws",
    "mcr.microsoft.com",
    "registry.gitlab.com",
    "nvcr.io",
    "cgr.dev",
    "registry.redhat.io",
    "registry.access.redhat.com",
    "docker.elastic.co",
];

/// The registry hosts labelled by name: the well-known ones and those the
/// configuration names. Any other host is `other`.
#[derive(Clone, Debug, Default)]
pub struct RegistryNames {
    known: BTreeSet<String>,
}

impl RegistryNames {
    pub fn new<'a>(configured: impl IntoIterator<Item = &'a str>) -> Self {
        RegistryNames {
            known: WELL_KNOWN_REGISTRIES
                .iter()
                .copied()
                .chain(configured)
                .map(str::to_ascii_lowercase)
                .collect(),
        }
    }

    pub fn label(&self, host: &str) -> Label {
        match self.known.get(&host.to_ascii_lowercase()) {
            Some(known) => Label(known.clone().into()),
            None => Label::OTHER,
        }
    }
}

/// `kubernetes.io/arch` values Go (and so the kubelet) knows for Linux.
pub const KNOWN_ARCHITECTURES: &[&str] = &[
    "386", "amd64", "arm", "arm64", "loong64", "mips", "mips64", "mips64le", "mipsle", "ppc64",
    "ppc64le", "riscv64", "s390x", "wasm",
];

/// One architecture as a label: a known one, else `other`.
pub fn architecture_label(architecture: &str) -> Label {
    KNOWN_ARCHITECTURES
        .iter()
        .find(|known| **known == architecture)
        .map_or(Label::OTHER, |known| Label::fixed(known))
}

/// A set of architectures (`amd64,arm64`) as a label: each folded, the
/// result sorted and without repeats.
pub fn architectures_label<'a>(architectures: impl IntoIterator<Item = &'a str>) -> Label {
    let mut architectures = architectures.into_iter().fuse();
    let (first, second) = (architectures.next(), architectures.next());
    // One architecture, where most reviews place a pod: its own label, with
    // no set or string made for it on every review.
    if let (Some(one), None) = (first, second) {
        return architecture_label(one);
    }
    let all = first.into_iter().chain(second).chain(architectures);
    let folded: BTreeSet<Label> = all.map(architecture_label).collect();
    if folded.is_empty() {
        return Label::fixed("none");
    }
    let joined: Vec<&str> = folded.iter().map(Label::as_str).collect();
    Label(joined.join(",").into())
}

/// A registry's HTTP status as a label: the codes registries commonly send,
/// else the class (`5xx`).
pub fn status_label(status: u16) -> Label {
    const COMMON: &[&str] = &[
        "200", "206", "301", "302", "303", "307", "308", "400", "401", "403", "404", "405", "406",
        "408", "409", "410", "429", "500", "502", "503", "504",
    ];
    let code = status.to_string();
    if let Some(known) = COMMON.iter().find(|c| **c == code) {
        return Label::fixed(known);
    }
    Label::fixed(match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    })
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReviewLabels {
    /// An opted-in namespace, else `other`.
    pub namespace: Label,
    /// The decision kind (`steered`, `held`, `only_option`, `skipped`, ...).
    pub decision: Label,
    /// `patched`, `allowed`, `audited` or `denied`.
    pub outcome: Label,
    /// The architectures the pod was placed on, or `none`.
    pub architecture: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    pub registry: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryResultLabels {
    pub registry: Label,
    /// The HTTP status, or the error's metric label.
    pub result: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryMethodLabels {
    pub registry: Label,
    /// `GET` or `HEAD`.
    pub method: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit` or `miss`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ArchitectureLabels {
    pub architecture: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GuardHoldLabels {
    pub architecture: Label,
    /// The namespace's `archway.dev/guard`: `enforce` or `observe`.
    pub mode: String,
    /// `recorded`, or why not (`HoldError::metric_label`).
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    /// A namespace with a valid ramp: an administrator opted it in.
    pub namespace: Label,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RampStepLabels {
    /// A namespace with a valid ramp.
    pub namespace: Label,
    /// The Event's reason: one of `RAMP_EVENT_REASONS`.
    pub reason: Label,
}

/// The reasons of the Events the ramp autopilot records, each a series of
/// `archway_ramp_steps_total` from a ramp's first sight.
pub const RAMP_EVENT_REASONS: &[&str] = &[
    "RampStep",
    "RampDone",
    "RampPaused",
    "RampSteppedBack",
    "RampRolledBack",
];

/// What a replica sees of one ramped namespace, for the ramp gauges.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RampSeen {
    pub namespace: String,
    /// The rollout in force (`archway.dev/rollout`): the ramp's step.
    pub rollout: u8,
    /// Whether `archway.dev/ramp-status` says the ramp is paused.
    pub paused: bool,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    pub reviews: Family<ReviewLabels, Counter>,
    pub review_duration: Histogram,
    pub review_warnings: Counter,
    pub bad_requests: Family<ReasonLabels, Counter>,
    pub registry_requests: Family<RegistryResultLabels, Counter>,
    pub registry_duration: HistogramFamily<RegistryLabels>,
    /// Manifest requests sent, by registry and method: Docker Hub counts
    /// every GET against its pull limit, and no HEAD.
    pub registry_manifest_requests: Family<RegistryMethodLabels, Counter>,
    /// Lookups that needed a manifest GET past `registry.manifestGetsPerHour`.
    pub registry_get_budget_spent: Family<RegistryLabels, Counter>,
    /// Pulls left to this address, as each registry last said.
    pub registry_pulls_remaining: Family<RegistryLabels, Gauge>,
    /// Lookups refused to keep the last pulls for the kubelets.
    pub registry_pull_reserve_kept: Family<RegistryLabels, Counter>,
    /// Writes of the shared facts' ConfigMap, by reason (`ok`, `conflict`,
    /// `error`).
    pub facts_writes: Family<ReasonLabels, Counter>,
    /// A follower's questions to the leader, by how they ended
    /// (`answered`, `failed`, `leader_changed`): each `answered` is a
    /// registry GET spared.
    pub peer_lookups: Family<ReasonLabels, Counter>,
    /// Questions this replica answered for the others, by result
    /// (`answered`, `failed`, `unauthorized`, `invalid`).
    pub peer_requests: Family<ReasonLabels, Counter>,
    pub cache_lookups: Family<CacheLabels, Counter>,
    /// `cache_lookups`' two series, each taken from the family at its first
    /// lookup (so the output is the family's as ever): every image of every
    /// review counts one, and the family's lookup costs a label string and
    /// a lock.
    cache_lookup_series: [std::sync::OnceLock<Counter>; 2],
    pub cache_entries: Gauge,
    pub no_nodes: Family<ArchitectureLabels, Counter>,
    /// Pods whose pin or node selectors allow only nodes of an
    /// architecture their images do not run.
    pub unrunnable: Family<ArchitectureLabels, Counter>,
    pub config_reloads: Family<ReasonLabels, Counter>,
    /// Pods admitted with archway's scheduling gate.
    pub pods_gated: Counter,
    /// From a gated pod's creation to the removal of its gate.
    pub gate_duration: Histogram,
    /// Gates removed, by reason: `placed`, `unplaced` (the lookups failed or
    /// the decision left the pod alone), `timeout` (still looking up at
    /// `gate.timeout`). (`archway ungate` is another process: not counted.)
    pub gates_removed: Family<ReasonLabels, Counter>,
    pub guard_holds: Family<GuardHoldLabels, Counter>,
    pub guard_failing_everywhere: Counter,
    pub guard_watched_pods: Gauge,
    pub guard_held_workloads: Gauge,
    /// Namespaces whose `archway.dev/` labels or annotations hold a mistake
    /// (`settings_report`), as this replica sees them.
    pub namespaces_invalid_settings: Gauge,
    /// Per namespace with a valid ramp: the rollout in force.
    pub ramp_rollout: Family<NamespaceLabels, Gauge>,
    /// Per namespace with a valid ramp: 1 while paused, else 0.
    pub ramp_paused: Family<NamespaceLabels, Gauge>,
    /// The autopilot's writes that recorded an Event, by namespace and the
    /// Event's reason (counted by the leader, which writes).
    pub ramp_steps: Family<RampStepLabels, Counter>,
    /// The namespaces the ramp gauges have series of, to remove those of a
    /// namespace whose ramp is gone.
    ramp_namespaces: std::sync::Mutex<BTreeSet<String>>,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to ~4 s: cached reviews sit at the bottom, registry calls
    // and the 2.5 s budget at the top.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The series are what `render` is for.
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("archway");
        let reviews = Family::<ReviewLabels, Counter>::default();
        registry.register("reviews", "Admission reviews answered", reviews.clone());
        let review_duration = latency_histogram();
        registry.register(
            "review_duration_seconds",
            "Time to answer a review, registry lookups included",
            review_duration.clone(),
        );
        let review_warnings = Counter::default();
        registry.register(
            "review_warnings",
            "Warnings returned to users",
            review_warnings.clone(),
        );
        let bad_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "bad_requests",
            "Bodies refused with HTTP 400, by reason",
            bad_requests.clone(),
        );
        let registry_requests = Family::<RegistryResultLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "Registry HTTP requests by registry and result",
            registry_requests.clone(),
        );
        let registry_duration: HistogramFamily<RegistryLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "registry_request_duration_seconds",
            "Registry HTTP request latency",
            registry_duration.clone(),
        );
        let registry_manifest_requests = Family::<RegistryMethodLabels, Counter>::default();
        registry.register(
            "registry_manifest_requests",
            "Registry manifest requests sent, by registry and method (GET, HEAD)",
            registry_manifest_requests.clone(),
        );
        let registry_get_budget_spent = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_get_budget_spent",
            "Lookups refused because the registry's manifest GET budget (registry.manifestGetsPerHour) was spent",
            registry_get_budget_spent.clone(),
        );
        let registry_pulls_remaining = Family::<RegistryLabels, Gauge>::default();
        registry.register(
            "registry_pulls_remaining",
            "Pulls left to this address as the registry last said (ratelimit-remaining, Docker Hub)",
            registry_pulls_remaining.clone(),
        );
        let registry_pull_reserve_kept = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_pull_reserve_kept",
            "Lookups refused because the registry's pulls left were at registry.pullReserve: kept for the nodes' image pulls",
            registry_pull_reserve_kept.clone(),
        );
        let facts_writes = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "facts_writes",
            "Writes of the ConfigMap of shared image facts, by reason (ok, conflict, error)",
            facts_writes.clone(),
        );
        let peer_lookups = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "peer_lookups",
            "Images this replica asked the leader for instead of the registry, by result (answered, failed, leader_changed)",
            peer_lookups.clone(),
        );
        let peer_requests = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "peer_requests",
            "Images other replicas asked this one for, by result (answered, failed, unauthorized, invalid)",
            peer_requests.clone(),
        );
        let cache_lookups = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Image lookups by cache result",
            cache_lookups.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Images held in the cache",
            cache_entries.clone(),
        );
        let no_nodes = Family::<ArchitectureLabels, Counter>::default();
        registry.register(
            "chosen_architecture_without_nodes",
            "Reviews whose chosen architecture had no node in the cluster",
            no_nodes.clone(),
        );
        let unrunnable = Family::<ArchitectureLabels, Counter>::default();
        registry.register(
            "pods_unrunnable",
            "Pods whose pin or node selectors allow only nodes of an architecture their images do not run, by that architecture",
            unrunnable.clone(),
        );
        let config_reloads = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "config_reloads",
            "Configuration reloads by result",
            config_reloads.clone(),
        );
        let pods_gated = Counter::default();
        registry.register(
            "pods_gated",
            "Pods admitted with the scheduling gate archway.dev/inspect (images still being looked up)",
            pods_gated.clone(),
        );
        // 50 ms to ~100 s: a registry answering in a few seconds in the
        // middle, gate.timeout (30 s by default) near the top.
        let gate_duration = Histogram::new(exponential_buckets(0.05, 2.0, 12));
        registry.register(
            "gate_duration_seconds",
            "Time from a gated pod's creation to the removal of archway's gate",
            gate_duration.clone(),
        );
        let gates_removed = Family::<ReasonLabels, Counter>::default();
        // Exported at 0 from the start, so an alert's increase() sees the
        // first removal of each kind.
        for reason in ["placed", "unplaced", "timeout"] {
            let _ = gates_removed.get_or_create(&ReasonLabels {
                reason: reason.into(),
            });
        }
        registry.register(
            "gates_removed",
            "archway scheduling gates removed, by reason (placed, unplaced, timeout)",
            gates_removed.clone(),
        );
        let guard_holds = Family::<GuardHoldLabels, Counter>::default();
        registry.register(
            "guard_holds",
            "Workloads the rollout guard held, by architecture, guard mode and result",
            guard_holds.clone(),
        );
        let guard_failing_everywhere = Counter::default();
        registry.register(
            "guard_failing_everywhere",
            "Workloads whose pods failed on every architecture (not held)",
            guard_failing_everywhere.clone(),
        );
        let guard_watched_pods = Gauge::default();
        registry.register(
            "guard_watched_pods",
            "Pods the rollout guard follows",
            guard_watched_pods.clone(),
        );
        let guard_held_workloads = Gauge::default();
        registry.register(
            "guard_held_workloads",
            "Workloads that carry a hold",
            guard_held_workloads.clone(),
        );
        let namespaces_invalid_settings = Gauge::default();
        registry.register(
            "namespaces_invalid_settings",
            "Namespaces with an archway.dev/ label or annotation archway cannot use as written (see their InvalidArchwaySetting Events)",
            namespaces_invalid_settings.clone(),
        );
        let ramp_rollout = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "ramp_rollout",
            "Per namespace with a ramp (archway.dev/ramp): the rollout in force, the ramp's step",
            ramp_rollout.clone(),
        );
        let ramp_paused = Family::<NamespaceLabels, Gauge>::default();
        registry.register(
            "ramp_paused",
            "Per namespace with a ramp: 1 while its archway.dev/ramp-status says paused, else 0",
            ramp_paused.clone(),
        );
        let ramp_steps = Family::<RampStepLabels, Counter>::default();
        registry.register(
            "ramp_steps",
            "Ramp changes the autopilot wrote, by namespace and Event reason (RampStep, RampDone, RampPaused, RampSteppedBack, RampRolledBack)",
            ramp_steps.clone(),
        );
        Metrics {
            registry,
            ramp_rollout,
            ramp_paused,
            ramp_steps,
            ramp_namespaces: Default::default(),
            namespaces_invalid_settings,
            pods_gated,
            gate_duration,
            gates_removed,
            guard_holds,
            guard_failing_everywhere,
            guard_watched_pods,
            guard_held_workloads,
            reviews,
            review_duration,
            review_warnings,
            bad_requests,
            registry_requests,
            registry_duration,
            registry_manifest_requests,
            registry_get_budget_spent,
            registry_pulls_remaining,
            registry_pull_reserve_kept,
            facts_writes,
            peer_lookups,
            peer_requests,
            cache_lookups,
            cache_lookup_series: Default::default(),
            cache_entries,
            no_nodes,
            unrunnable,
            config_reloads,
        }
    }

    /// Records one registry HTTP request.
    pub fn registry_request(&self, registry: &Label, result: Label, elapsed: Duration) {
        self.registry_requests
            .get_or_create(&RegistryResultLabels {
                registry: registry.clone(),
                result,
            })
            .inc();
        self.registry_duration
            .get_or_create(&RegistryLabels {
                registry: registry.clone(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// One manifest request (`GET` or `HEAD`) sent to `registry`.
    pub fn registry_manifest_request(&self, registry: &Label, method: &'static str) {
        self.registry_manifest_requests
            .get_or_create(&RegistryMethodLabels {
                registry: registry.clone(),
                method: Label::fixed(method),
            })
            .inc();
    }

    /// One lookup refused for `registry`'s spent GET budget.
    pub fn get_budget_spent(&self, registry: &Label) {
        self.registry_get_budget_spent
            .get_or_create(&RegistryLabels {
                registry: registry.clone(),
            })
            .inc();
    }

    pub fn pulls_remaining(&self, registry: &Label, remaining: u64) {
        self.registry_pulls_remaining
            .get_or_create(&RegistryLabels {
                registry: registry.clone(),
            })
            .set(i64::try_from(remaining).unwrap_or(i64::MAX));
    }

    pub fn pull_reserve_kept(&self, registry: &Label) {
        self.registry_pull_reserve_kept
            .get_or_create(&RegistryLabels {
                registry: registry.clone(),
            })
            .inc();
    }

    /// One gate removed after `gated` (since the pod's creation).
    pub fn gate_removed(&self, reason: &'static str, gated: Duration) {
        self.gates_removed
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
        self.gate_duration.observe(gated.as_secs_f64());
    }

    /// Records a hold the guard made (or could not record).
    pub fn guard_hold(&self, architecture: &str, mode: &'static str, result: &str) {
        self.guard_holds
            .get_or_create(&GuardHoldLabels {
                architecture: architecture_label(architecture),
                mode: mode.into(),
                result: result.into(),
            })
            .inc();
    }

    /// The ramps this replica sees now, all of them: sets each one's
    /// gauges, and removes the series of namespaces no longer among them
    /// (their ramp was removed or made invalid, or the namespace deleted).
    /// A namespace's `archway_ramp_steps_total` series are made at 0 when
    /// its ramp is first seen, so that an alert's `increase()` sees the
    /// first step; they stay until the process ends (a count is not
    /// dropped before it is scraped), bounded by the namespaces that ever
    /// had a ramp.
    pub fn ramps_seen(&self, ramps: &[RampSeen]) {
        let mut known = (self.ramp_namespaces.lock()).unwrap_or_else(|e| e.into_inner());
        let now: BTreeSet<&str> = ramps.iter().map(|r| r.namespace.as_str()).collect();
        known.retain(|namespace| {
            if now.contains(namespace.as_str()) {
                return true;
            }
            let labels = NamespaceLabels {
                namespace: Label::opted_in_namespace(namespace),
            };
            self.ramp_rollout.remove(&labels);
            self.ramp_paused.remove(&labels);
            false
        });
        for ramp in ramps {
            let namespace = Label::opted_in_namespace(&ramp.namespace);
            if known.insert(ramp.namespace.clone()) {
                for reason in RAMP_EVENT_REASONS {
                    let _ = self.ramp_steps.get_or_create(&RampStepLabels {
                        namespace: namespace.clone(),
                        reason: Label::fixed(reason),
                    });
                }
            }
            let labels = NamespaceLabels { namespace };
            self.ramp_rollout
                .get_or_create(&labels)
                .set(i64::from(ramp.rollout));
            self.ramp_paused
                .get_or_create(&labels)
                .set(i64::from(ramp.paused));
        }
    }

    /// One write of the ramp autopilot that recorded an Event of `reason`.
    pub fn ramp_step(&self, namespace: &str, reason: &'static str) {
        self.ramp_steps
            .get_or_create(&RampStepLabels {
                namespace: Label::opted_in_namespace(namespace),
                reason: Label::fixed(reason),
            })
            .inc();
    }

    pub fn peer_lookup(&self, reason: &'static str) {
        self.peer_lookups
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn peer_request(&self, reason: &'static str) {
        self.peer_requests
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        let (result, series) = match hit {
            true => ("hit", &self.cache_lookup_series[0]),
            false => ("miss", &self.cache_lookup_series[1]),
        };
        // A `Counter` clone shares its count with the family's.
        let counter = series.get_or_init(|| {
            let labels = CacheLabels {
                result: result.into(),
            };
            self.cache_lookups.get_or_create(&labels).clone()
        });
        counter.inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_what_was_recorded() {
        let metrics = Metrics::new();
        let names = RegistryNames::new([]);
        metrics.registry_request(
            &names.label("ghcr.io"),
            Label::fixed("ok"),
            Duration::from_millis(3),
        );
        metrics.cache_lookup(true);
        let text = metrics.render();
        assert!(
            text.contains(r#"archway_registry_requests_total{registry="ghcr.io",result="ok"}"#),
            "{text}"
        );
        assert!(text.contains(r#"archway_cache_lookups_total{result="hit"}"#));
        assert!(text.contains("archway_review_duration_seconds_bucket"));
        assert!(text.trim_end().ends_with("# EOF"));
    }

    /// Series of `family_total` in the rendered text.
    fn series(text: &str, family: &str) -> usize {
        text.lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count()
    }

    #[test]
    fn hostile_hosts_statuses_and_architectures_fold_into_bounded_sets() {
        let metrics = Metrics::new();
        let names = RegistryNames::new(["Registry.Internal:5000"]);
        for i in 0..6400 {
            let host = format!("h{i}-{}.evil.example", "x".repeat(200));
            metrics.registry_request(
                &names.label(&host),
                status_label(100 + (i % 900) as u16),
                Duration::ZERO,
            );
        }
        metrics.registry_request(
            &names.label("registry.internal:5000"),
            status_label(200),
            Duration::ZERO,
        );
        metrics.registry_request(&names.label("GHCR.io"), status_label(404), Duration::ZERO);
        for i in 0..6400 {
            let hostile = format!("arch{i}");
            metrics
                .no_nodes
                .get_or_create(&ArchitectureLabels {
                    architecture: architecture_label(&hostile),
                })
                .inc();
            metrics
                .reviews
                .get_or_create(&ReviewLabels {
                    namespace: Label::OTHER,
                    decision: Label::fixed("steered"),
                    outcome: Label::fixed("patched"),
                    architecture: architectures_label(["arm64", hostile.as_str(), "amd64"]),
                })
                .inc();
        }
        let text = metrics.render();
        // other x (21 common codes + 6 classes), and the two named hosts.
        assert!(
            series(&text, "archway_registry_requests_total") <= 27 + 2,
            "{}",
            series(&text, "archway_registry_requests_total")
        );
        assert_eq!(
            series(&text, "archway_registry_request_duration_seconds_count"),
            3
        );
        assert!(
            text.contains(r#"registry="registry.internal:5000",result="200""#),
            "{text}"
        );
        assert!(text.contains(r#"registry="ghcr.io",result="404""#));
        assert!(text.contains(r#"registry="other",result="5xx""#));
        assert_eq!(
            series(&text, "archway_chosen_architecture_without_nodes_total"),
            1
        );
        assert!(text.contains(
            r#"archway_chosen_architecture_without_nodes_total{architecture="other"} 6400"#
        ));
        assert_eq!(series(&text, "archway_reviews_total"), 1);
        assert!(
            text.contains(r#"architecture="amd64,arm64,other"} 6400"#),
            "{text}"
        );
        assert!(text.len() < 64 * 1024, "{} bytes", text.len());
        assert_eq!(architecture_label("arm64"), Label::fixed("arm64"));
        assert_eq!(architectures_label([]), Label::fixed("none"));
    }

    #[test]
    fn ramp_series_follow_the_namespaces_with_a_ramp() {
        let metrics = Metrics::new();
        let seen = |namespace: &str, rollout: u8, paused: bool| RampSeen {
            namespace: namespace.into(),
            rollout,
            paused,
        };
        metrics.ramps_seen(&[seen("shop", 10, false), seen("web", 50, true)]);
        metrics.ramp_step("shop", "RampStep");
        let text = metrics.render();
        for line in [
            r#"archway_ramp_rollout{namespace="shop"} 10"#,
            r#"archway_ramp_rollout{namespace="web"} 50"#,
            r#"archway_ramp_paused{namespace="shop"} 0"#,
            r#"archway_ramp_paused{namespace="web"} 1"#,
            r#"archway_ramp_steps_total{namespace="shop",reason="RampStep"} 1"#,
            r#"archway_ramp_steps_total{namespace="web",reason="RampPaused"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(series(&text, "archway_ramp_steps_total"), 10);
        // The web's ramp is gone: its gauges go, its counts stay.
        metrics.ramps_seen(&[seen("shop", 50, false)]);
        let text = metrics.render();
        assert!(text.contains(r#"archway_ramp_rollout{namespace="shop"} 50"#));
        assert_eq!(series(&text, "archway_ramp_rollout"), 1);
        assert_eq!(series(&text, "archway_ramp_paused"), 1);
        assert_eq!(series(&text, "archway_ramp_steps_total"), 10);
        // No ramp at all: no gauge series, so the families leave /metrics.
        metrics.ramps_seen(&[]);
        let text = metrics.render();
        assert!(!text.contains("archway_ramp_rollout"), "{text}");
        assert!(!text.contains("archway_ramp_paused"), "{text}");
    }
}

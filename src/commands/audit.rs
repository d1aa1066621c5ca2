//! `archway audit`: scan a cluster's workloads and report, per workload,
//! which architectures its images support, where it runs now, what archway
//! would inject, and what blocks a move to the target architecture.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ListParams};
use serde::Serialize;

use crate::admission::{Evaluation, Reviewer};
use crate::cluster::{NodeInventory, PullSecrets};
use crate::config::Config;
use crate::decision::placement::{self, ImageLookup, Outcome};
use crate::decision::policy::{Mode, NamespacePolicy, PolicySource, Rollout};
use crate::report::Format;

#[path = "audit_compare.rs"]
mod audit_compare;
#[path = "audit_dashboard.rs"]
mod audit_dashboard;
#[path = "audit_usage.rs"]
mod audit_usage;
use crate::decision::compare::{PodSample, PodUsage};
use crate::decision::cost::Requests;
pub use audit_compare::{Comparison, CostReport, UsageComparison};
pub use audit_usage::UsageSource;

/// One workload's line in the report.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadRow {
    pub namespace: String,
    pub kind: String,
    pub name: String,
    /// `enforce`, `audit`, or `off` (not opted in).
    pub mode: String,
    /// S: the architectures every image supports; empty when unknown.
    pub supported: Vec<String>,
    /// Architectures of the nodes its pods run on now.
    pub runs_on: Vec<String>,
    /// Its pods in phase Running now, per architecture of their node.
    pub running: BTreeMap<String, usize>,
    /// What archway would require (`arm64`, `amd64,arm64`), or why nothing.
    pub would_inject: String,
    pub reason: String,
    /// Whether its images all publish the target architecture.
    pub target_ready: bool,
    /// Images that do not publish the target architecture, or could not be
    /// inspected, with what they publish or why.
    pub blockers: Vec<String>,
    pub warnings: Vec<String>,
    /// The rollout guard's hold on it: `arm64: held: 2 pods ...`.
    pub hold: Option<String>,
    /// A DaemonSet with pods on nodes its images do not run on:
    /// `DaemonSet logging/fluent-bit can run on arm64 nodes, but ...`.
    pub failing_pods: Option<String>,
    /// Its pods side by side per architecture of their node (`null`
    /// without pods bound to a node).
    pub comparison: Option<Comparison>,
    /// Requested CPU (cores) and memory (GiB) of its running pods, per
    /// architecture of their node.
    pub requests: BTreeMap<String, Requests>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub target_architecture: String,
    /// Linux nodes per architecture.
    pub node_architectures: BTreeMap<String, usize>,
    pub workloads: Vec<WorkloadRow>,
    /// The monitoring step of the migration plan, one line per namespace.
    pub namespaces: Vec<NamespacePlan>,
    /// The requests' monthly cost per namespace and in total, by the
    /// configuration's `cost:` prices.
    pub cost: CostReport,
    /// Where the comparison's CPU and memory come from (`metrics.k8s.io`),
    /// or why there are none.
    pub usage: UsageSource,
}

/// One namespace in the monitoring step of the migration plan: where its
/// running pods are now, and where its rollout would put them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NamespacePlan {
    pub namespace: String,
    /// `enforce`, `audit`, or `off` (not opted in).
    pub mode: String,
    /// The rollout percentage the namespace asks for (the configured default
    /// when it has none).
    pub rollout: u8,
    /// Running pods per architecture of their node.
    pub running: BTreeMap<String, usize>,
    pub running_total: usize,
    /// Running pods on the target architecture now.
    pub on_target: usize,
    /// Running pods the rollout would have on the target architecture: all
    /// pods of workloads whose images publish only the target, the rollout's
    /// share of those whose images publish it and another, none of blocked
    /// workloads.
    pub planned_on_target: usize,
    /// `planned_on_target - on_target`: pods still to move (negative: more
    /// on the target than the rollout asks for, e.g. pinned by hand).
    pub gap: i64,
    /// Running pods of workloads that cannot run on the target.
    pub blocked: usize,
    /// The namespace's migration ramp (`archway.dev/ramp`) and where it
    /// stands; `null` when it has none (or an invalid one).
    pub ramp: Option<RampPlan>,
}

/// A namespace's ramp, as its annotations set it, and where it stands as
/// its `archway.dev/ramp-status` says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RampPlan {
    /// The rollout's steps, in percent.
    pub steps: Vec<u8>,
    /// How long each step holds (`archway.dev/ramp-step`), as Go writes
    /// durations: `24h`, `1h30m`, `90s` is `1m30s`.
    pub step_duration: String,
    pub step_seconds: u64,
    /// `pause`, `step-back` or `rollback` (`archway.dev/ramp-on-failure`).
    pub on_failure: String,
    /// `holding` (at a step until it is due), `paused` (stopped by a
    /// failing step until a person removes the status), `done` (at the last
    /// step), `starting` (no status of archway's, or the rollout was
    /// changed by hand: the autopilot starts from the rollout in force at
    /// its next tick), or `inactive` (the namespace is not in enforce mode:
    /// the autopilot leaves it alone).
    pub state: String,
    /// The step the status is about: the rollout in force, once archway
    /// wrote it.
    pub step: Option<u8>,
    /// Since when (RFC 3339): the step was taken, the ramp paused or
    /// finished.
    pub since: Option<String>,
    /// Holding: the next step, and when it is due.
    pub next_step: Option<u8>,
    pub next_due: Option<String>,
    /// Paused: why (the holds that stopped it).
    pub paused_because: Option<String>,
    /// `archway.dev/ramp-status` as written, when there is one.
    pub status: Option<String>,
}

/// Where `ramp` stands in a namespace of `mode` whose rollout in force is
/// `rollout` and whose `archway.dev/ramp-status` is `status`: what the
/// autopilot (`decision::ramp::next`) reads.
pub fn ramp_plan(
    ramp: &crate::decision::ramp::Ramp,
    mode: Mode,
    rollout: u8,
    status: Option<&str>,
) -> RampPlan {
    use crate::decision::ramp::{State, Status, next_step};
    let stamp = |t: k8s_openapi::jiff::Timestamp| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut plan = RampPlan {
        steps: ramp.steps.clone(),
        step_duration: duration_text(ramp.hold),
        step_seconds: ramp.hold.as_secs(),
        on_failure: ramp.on_failure.label().to_string(),
        state: "starting".into(),
        step: None,
        since: None,
        next_step: None,
        next_due: None,
        paused_because: None,
        status: status.map(str::to_string),
    };
    // As the autopilot reads it: a status about another rollout than the
    // one in force (changed by hand) starts the ramp again, unless paused.
    let parsed = status
        .and_then(Status::parse)
        .filter(|s| s.rollout == rollout || s.state == State::Paused);
    if let Some(parsed) = parsed {
        plan.step = Some(parsed.rollout);
        plan.since = Some(stamp(parsed.since));
        match parsed.state {
            State::Holding => {
                plan.state = "holding".into();
                plan.next_step = next_step(ramp, parsed.rollout);
                if plan.next_step.is_some() {
                    plan.next_due = Some(stamp(parsed.since + ramp.hold));
                }
            }
            State::Paused => {
                plan.state = "paused".into();
                plan.paused_because = parsed.reason;
            }
            State::Done => plan.state = "done".into(),
        }
    }
    if mode != Mode::Enforce {
        plan.state = "inactive".into();
    }
    plan
}

/// A duration as Go writes one, without zero parts: `24h`, `1h30m`,
/// `2.5s`.
fn duration_text(duration: std::time::Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, whole) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    let mut text = String::new();
    if hours > 0 {
        text.push_str(&format!("{hours}h"));
    }
    if minutes > 0 {
        text.push_str(&format!("{minutes}m"));
    }
    let millis = duration.subsec_millis();
    if millis > 0 {
        let fraction = format!("{millis:03}");
        text.push_str(&format!("{whole}.{}s", fraction.trim_end_matches('0')));
    } else if whole > 0 || text.is_empty() {
        text.push_str(&format!("{whole}s"));
    }
    text
}

impl RampPlan {
    /// What comes next, in words: `100% due 2026-12-04T10:00:00Z`, or why
    /// it is paused and how to resume it.
    pub fn next_text(&self) -> String {
        match self.state.as_str() {
            "holding" => match (self.next_step, &self.next_due) {
                (Some(step), Some(due)) => format!("{step}% due {due}"),
                _ => "the last step: done when it holds".into(),
            },
            "paused" => format!(
                "{}; remove the namespace annotation {} to resume",
                self.paused_because.as_deref().unwrap_or("a failure"),
                crate::decision::ramp::RAMP_STATUS_ANNOTATION
            ),
            "done" => "-".into(),
            "inactive" => "the namespace is not in enforce mode: the autopilot leaves it".into(),
            _ => "the autopilot starts it from the rollout in force".into(),
        }
    }
}

impl NamespacePlan {
    /// `count` as a whole percentage of the running pods (0 when none run).
    pub fn percent(&self, count: usize) -> usize {
        (count * 100 + self.running_total / 2)
            .checked_div(self.running_total)
            .unwrap_or(0)
    }
}

/// How many of a workload's `running` pods its namespace's rollout would put
/// on `target`. Rounded to the nearest pod, as rollout buckets are drawn in
/// sequence over a workload's pods.
fn planned_on_target(workload: &WorkloadRow, rollout: u8, target: &str) -> usize {
    let running: usize = workload.running.values().sum();
    if !workload.target_ready || !workload.supported.iter().any(|a| a == target) {
        return 0;
    }
    if workload.supported.iter().all(|a| a == target) {
        return running;
    }
    (running * usize::from(rollout) + 50) / 100
}

/// The monitoring step: per namespace of `workloads` (in name order), its
/// mode, rollout (from `rollouts`, else `default_rollout`), and its running
/// pods per architecture now next to where the rollout would put them.
pub fn namespace_plans(
    workloads: &[WorkloadRow],
    rollouts: &BTreeMap<String, u8>,
    default_rollout: u8,
    target: &str,
) -> Vec<NamespacePlan> {
    let mut plans: BTreeMap<&str, NamespacePlan> = BTreeMap::new();
    for w in workloads {
        let rollout = rollouts
            .get(&w.namespace)
            .copied()
            .unwrap_or(default_rollout);
        let plan = plans.entry(&w.namespace).or_insert_with(|| NamespacePlan {
            namespace: w.namespace.clone(),
            mode: w.mode.clone(),
            rollout,
            running: BTreeMap::new(),
            running_total: 0,
            on_target: 0,
            planned_on_target: 0,
            gap: 0,
            blocked: 0,
            ramp: None,
        });
        for (arch, count) in &w.running {
            *plan.running.entry(arch.clone()).or_insert(0) += count;
        }
        let running: usize = w.running.values().sum();
        plan.running_total += running;
        plan.on_target += w.running.get(target).copied().unwrap_or(0);
        plan.planned_on_target += planned_on_target(w, rollout, target);
        if !w.target_ready {
            plan.blocked += running;
        }
    }
    plans
        .into_values()
        .map(|mut plan| {
            // Counts of pods: far below i64::MAX.
            plan.gap = plan.planned_on_target as i64 - plan.on_target as i64;
            plan
        })
        .collect()
}

/// Gives each namespace plan its ramp, and a plan (with no pods) to a
/// namespace with a ramp and no workload yet: a ramp moves the rollout of
/// pods still to come.
fn with_ramps(
    plans: &mut Vec<NamespacePlan>,
    mut ramps: BTreeMap<String, RampPlan>,
    modes: &BTreeMap<String, Option<Mode>>,
    rollouts: &BTreeMap<String, u8>,
) {
    for plan in plans.iter_mut() {
        plan.ramp = ramps.remove(&plan.namespace);
    }
    for (namespace, ramp) in ramps {
        plans.push(NamespacePlan {
            mode: (modes.get(&namespace).copied().flatten())
                .map_or("off", Mode::label)
                .to_string(),
            rollout: rollouts.get(&namespace).copied().unwrap_or_default(),
            namespace,
            running: BTreeMap::new(),
            running_total: 0,
            on_target: 0,
            planned_on_target: 0,
            gap: 0,
            blocked: 0,
            ramp: Some(ramp),
        });
    }
    plans.sort_by(|a, b| a.namespace.cmp(&b.namespace));
}

/// A pod template and who owns it.
struct Workload {
    kind: &'static str,
    meta: ObjectMeta,
    template: PodTemplateSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("listing {what}: {source}")]
    List {
        what: &'static str,
        source: kube::Error,
    },
    #[error(transparent)]
    Setup(#[from] crate::setup::SetupError),
}

/// The namespaces as listed at the start of the scan. A namespace not opted
/// in is judged as if it were, in audit mode at the default rollout: the
/// report is for planning the move.
struct AuditPolicies {
    namespaces: BTreeMap<String, Option<NamespacePolicy>>,
    default_rollout: Rollout,
}

/// The nodes as listed at the start of the scan; unknown when no node has
/// an architecture.
struct AuditNodes(Arc<placement::Nodes>);

impl PolicySource for AuditPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        let configured = self.namespaces.get(namespace).cloned().flatten();
        Some(
            configured
                .unwrap_or_else(|| NamespacePolicy::opted_in(Mode::Audit, self.default_rollout)),
        )
    }
}

impl NodeInventory for AuditNodes {
    fn nodes(&self) -> Option<Arc<placement::Nodes>> {
        (!self.0.is_empty()).then(|| self.0.clone())
    }
}

/// Scans `namespace` (or all) through `client`; reads `metrics.k8s.io`
/// through `usage_client` ([`usage_client`]).
pub async fn scan(
    client: kube::Client,
    usage_client: kube::Client,
    config: &Config,
    namespace: Option<&str>,
    progress: bool,
) -> Result<AuditReport, AuditError> {
    let nodes: Vec<Node> = list(Api::all(client.clone()), "nodes").await?;
    let node_arch: BTreeMap<String, placement::NodeArch> = nodes
        .iter()
        .filter_map(|n| {
            let taints = (n.spec.as_ref()).and_then(|s| s.taints.as_deref());
            let arch =
                placement::NodeArch::new(n.metadata.labels.as_ref(), taints.unwrap_or_default())?;
            Some((n.metadata.name.clone()?, arch))
        })
        .collect();
    // The report is a Linux migration plan: Windows nodes (AKS runs Windows
    // pools next to Linux ones) are not capacity for the pods it counts.
    let linux_nodes = nodes.iter().filter(|n| {
        let os = (n.metadata.labels.as_ref()).and_then(|l| l.get(placement::OS_LABEL));
        os.is_none_or(|os| os == placement::LINUX)
    });
    let mut node_architectures = BTreeMap::new();
    for node in linux_nodes {
        if let Some(arch) = node.metadata.name.as_ref().and_then(|n| node_arch.get(n)) {
            *node_architectures
                .entry(arch.architecture.clone())
                .or_insert(0) += 1;
        }
    }
    let namespaces: Vec<Namespace> = list(Api::all(client.clone()), "namespaces").await?;
    let policies = AuditPolicies {
        namespaces: namespaces
            .iter()
            .filter_map(|ns| {
                let empty = BTreeMap::new();
                let labels = ns.metadata.labels.as_ref().unwrap_or(&empty);
                let annotations = ns.metadata.annotations.as_ref().unwrap_or(&empty);
                let policy =
                    NamespacePolicy::from_metadata(labels, annotations, config.default_rollout);
                Some((ns.metadata.name.clone()?, policy))
            })
            .collect(),
        default_rollout: config.default_rollout,
    };
    // As `archway serve` sees them: every node's architecture.
    let known_nodes = Arc::new(placement::Nodes::new(&node_arch));
    let nodes = AuditNodes(known_nodes.clone());
    let modes: BTreeMap<String, Option<Mode>> = (policies.namespaces.iter())
        .map(|(ns, policy)| (ns.clone(), policy.as_ref().map(|p| p.mode)))
        .collect();
    let rollouts: BTreeMap<String, u8> = (policies.namespaces.iter())
        .filter_map(|(ns, policy)| Some((ns.clone(), policy.as_ref()?.rollout.percent())))
        .collect();
    // Each namespace's ramp, where it stands.
    let ramps: BTreeMap<String, RampPlan> = namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            let policy = policies.namespaces.get(&name)?.as_ref()?;
            let ramp = policy.ramp.as_ref()?;
            let status = (ns.metadata.annotations.as_ref())
                .and_then(|a| a.get(crate::decision::ramp::RAMP_STATUS_ANNOTATION));
            let plan = ramp_plan(
                ramp,
                policy.mode,
                policy.rollout.percent(),
                status.map(String::as_str),
            );
            Some((name, plan))
        })
        .filter(|(name, _)| namespace.is_none_or(|only| only == name))
        .collect();
    // The audit judges every namespace, and never denies: it plans a move.
    let mut config = crate::setup::offline(config);
    config.fail_closed = false;
    // Nothing serves the audit's metrics: a registry of its own.
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let mut reviewer = crate::setup::reviewer(&config, Arc::new(policies), metrics)?;
    reviewer.node_inventory = Some(Arc::new(nodes));
    reviewer.pull_secrets = Some(PullSecrets::new(client.clone()));

    let workloads = workloads(&client, namespace).await?;
    let pods: Vec<Pod> = match namespace {
        Some(ns) => list(Api::namespaced(client.clone(), ns), "pods").await?,
        None => list(Api::all(client.clone()), "pods").await?,
    };
    let replica_sets: Vec<ReplicaSet> = match namespace {
        Some(ns) => list(Api::namespaced(client.clone(), ns), "replicasets").await?,
        None => list(Api::all(client.clone()), "replicasets").await?,
    };
    let usage = audit_usage::read(&usage_client, namespace).await;
    let now = k8s_openapi::jiff::Timestamp::now();
    let pods_of = placement_of_pods(&pods, &replica_sets, &known_nodes, now, &usage.pods);

    // A few workloads at a time; each image once (the cache remembers it).
    let total = workloads.len();
    let mut rows = Vec::new();
    let mut stream = futures::stream::iter(workloads.into_iter().map(|w| {
        let reviewer = reviewer.clone();
        async move {
            let evaluation = evaluate(&reviewer, &w).await;
            (w, evaluation)
        }
    }))
    .buffer_unordered(8);
    while let Some((workload, evaluation)) = stream.next().await {
        if progress {
            eprint!("\rinspecting workloads: {}/{total}", rows.len() + 1);
            let _ = std::io::stderr().flush();
        }
        let namespace = workload.meta.namespace.clone().unwrap_or_default();
        let key = (
            namespace.clone(),
            workload.kind,
            workload.meta.name.clone().unwrap_or_default(),
        );
        let mode = modes.get(&namespace).copied().flatten();
        let pods = pods_of.get(&key).cloned().unwrap_or_default();
        rows.push(row(
            &workload,
            evaluation,
            mode,
            &config.target_architecture,
            pods,
            &known_nodes,
        ));
    }
    if progress && total > 0 {
        eprintln!();
    }
    rows.sort_by(|a, b| (&a.namespace, &a.kind, &a.name).cmp(&(&b.namespace, &b.kind, &b.name)));
    let mut namespaces = namespace_plans(
        &rows,
        &rollouts,
        config.default_rollout.percent(),
        &config.target_architecture,
    );
    with_ramps(&mut namespaces, ramps, &modes, &rollouts);
    let cost = audit_compare::cost_report(&rows, &config.cost, &config.target_architecture);
    Ok(AuditReport {
        cost,
        usage: usage.source,
        target_architecture: config.target_architecture.clone(),
        node_architectures,
        workloads: rows,
        namespaces,
    })
}

async fn list<K>(api: Api<K>, what: &'static str) -> Result<Vec<K>, AuditError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.list(&ListParams::default())
        .await
        .map(|l| l.items)
        .map_err(|source| AuditError::List { what, source })
}

/// The pod templates of workloads, and pods that no controller owns.
async fn workloads(
    client: &kube::Client,
    namespace: Option<&str>,
) -> Result<Vec<Workload>, AuditError> {
    macro_rules! templates {
        ($type:ty, $kind:literal, $what:literal, |$o:ident| $template:expr) => {{
            let api: Api<$type> = match namespace {
                Some(ns) => Api::namespaced(client.clone(), ns),
                None => Api::all(client.clone()),
            };
            list(api, $what)
                .await?
                .into_iter()
                .filter_map(|$o| {
                    let template = $template?;
                    Some(Workload {
                        kind: $kind,
                        meta: $o.metadata.clone(),
                        template,
                    })
                })
                .collect::<Vec<_>>()
        }};
    }
    let mut all = Vec::new();
    all.extend(templates!(Deployment, "Deployment", "deployments", |o| o
        .spec
        .map(|s| s.template)));
    all.extend(templates!(
        StatefulSet,
        "StatefulSet",
        "statefulsets",
        |o| o.spec.map(|s| s.template)
    ));
    all.extend(templates!(DaemonSet, "DaemonSet", "daemonsets", |o| o
        .spec
        .map(|s| s.template)));
    // Jobs a CronJob made are reported with their CronJob.
    all.extend(templates!(Job, "Job", "jobs", |o| {
        let owned = o
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.kind == "CronJob");
        o.spec.filter(|_| !owned).map(|s| s.template)
    }));
    all.extend(templates!(CronJob, "CronJob", "cronjobs", |o| o
        .spec
        .and_then(|s| s.job_template.spec)
        .map(|s| s.template)));
    all.extend(templates!(Pod, "Pod", "pods", |o| {
        let owned = o
            .metadata
            .owner_references
            .as_ref()
            .is_some_and(|r| !r.is_empty());
        (!owned).then(|| PodTemplateSpec {
            metadata: Some(o.metadata.clone()),
            spec: o.spec.clone(),
        })
    }));
    Ok(all)
}

/// Where a workload's pods are: the architectures of their nodes, and how
/// many run (phase Running) on each.
#[derive(Debug, Clone, Default)]
struct PodsOf {
    runs_on: BTreeSet<String>,
    running: BTreeMap<String, usize>,
    /// Its pods bound to a node and not on their way out.
    samples: Vec<PodSample>,
    /// Requests of its running pods, per architecture.
    requests: BTreeMap<String, Requests>,
}

/// (namespace, kind, name) of each workload -> where its pods are.
fn placement_of_pods(
    pods: &[Pod],
    replica_sets: &[ReplicaSet],
    nodes: &placement::Nodes,
    now: k8s_openapi::jiff::Timestamp,
    usage: &BTreeMap<(String, String), PodUsage>,
) -> BTreeMap<(String, &'static str, String), PodsOf> {
    let rs_owner: BTreeMap<(String, String), String> = replica_sets
        .iter()
        .filter_map(|rs| {
            let owner = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .find(|o| o.kind == "Deployment")?;
            Some((
                (rs.metadata.namespace.clone()?, rs.metadata.name.clone()?),
                owner.name.clone(),
            ))
        })
        .collect();
    let mut placed: BTreeMap<(String, &'static str, String), PodsOf> = BTreeMap::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let Some(arch) = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| nodes.of_node(n))
        else {
            continue;
        };
        let owner = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true));
        let key = match owner {
            None => (
                namespace,
                "Pod",
                pod.metadata.name.clone().unwrap_or_default(),
            ),
            Some(o) if o.kind == "ReplicaSet" => {
                match rs_owner.get(&(namespace.clone(), o.name.clone())) {
                    Some(deployment) => (namespace, "Deployment", deployment.clone()),
                    None => continue,
                }
            }
            Some(o) => {
                let kind = match o.kind.as_str() {
                    "StatefulSet" => "StatefulSet",
                    "DaemonSet" => "DaemonSet",
                    "Job" => "Job",
                    _ => continue,
                };
                (namespace, kind, o.name.clone())
            }
        };
        let of = placed.entry(key).or_default();
        of.runs_on.insert(arch.to_string());
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        // A pod on its way out no longer counts as running where it is.
        if phase == Some("Running") && pod.metadata.deletion_timestamp.is_none() {
            *of.running.entry(arch.to_string()).or_insert(0) += 1;
            let requests = of.requests.entry(arch.to_string()).or_default();
            *requests = *requests + audit_compare::requests_of(pod);
        }
        if pod.metadata.deletion_timestamp.is_none() {
            let mut sample = PodSample::of_pod(pod, arch, now);
            let name = pod.metadata.name.clone().unwrap_or_default();
            if let Some(used) =
                usage.get(&(pod.metadata.namespace.clone().unwrap_or_default(), name))
            {
                sample.cpu_cores = used.cpu_cores;
                sample.memory_bytes = used.memory_bytes;
            }
            of.samples.push(sample);
        }
    }
    placed
}

/// The workload's pod template, evaluated as the webhook would evaluate a
/// pod made from it.
async fn evaluate(reviewer: &Reviewer, workload: &Workload) -> Evaluation {
    let mut pod = pod_of(workload);
    // Judged as at creation: not a pod archway already decided, nor one
    // the scheduler already placed.
    if let Some(annotations) = pod.metadata.annotations.as_mut() {
        annotations.remove(placement::DECISION_ANNOTATION);
    }
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name = None;
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let Some(policy) = reviewer.policies.policy(namespace) else {
        return Evaluation::unchanged(placement::not_opted_in());
    };
    let uid = format!("audit/{}", workload.meta.name.clone().unwrap_or_default());
    let deadline = tokio::time::Instant::now() + reviewer.settings.time_budget;
    reviewer.evaluate(&pod, &policy, deadline, &uid, None).await
}

fn pod_of(workload: &Workload) -> Pod {
    let mut metadata = workload.template.metadata.clone().unwrap_or_default();
    metadata.namespace = workload.meta.namespace.clone();
    if metadata.name.is_none() {
        metadata.name = workload.meta.name.clone();
    }
    if workload.kind == "DaemonSet" {
        // Judged as its pods are: pinned by their DaemonSet.
        let name = workload.meta.name.as_deref().unwrap_or_default();
        metadata.owner_references = Some(vec![placement::daemon_set_owner(name)]);
    }
    Pod {
        metadata,
        spec: workload.template.spec.clone(),
        status: None,
    }
}

fn row(
    workload: &Workload,
    evaluation: Evaluation,
    mode: Option<Mode>,
    target: &str,
    pods: PodsOf,
    nodes: &placement::Nodes,
) -> WorkloadRow {
    let mode = mode.map_or("off", Mode::label);
    let Evaluation {
        decision,
        lookups,
        mut warnings,
        ..
    } = evaluation;
    warnings.extend(decision.warnings.iter().cloned());
    let failing_pods = (workload.kind == "DaemonSet")
        .then(|| placement::daemon_set_mismatch(&pod_of(workload), &lookups, nodes))
        .flatten()
        .map(|mismatch| {
            let name = workload.meta.name.as_deref().unwrap_or_default();
            let namespace = workload.meta.namespace.as_deref().unwrap_or_default();
            format!("DaemonSet {namespace}/{name} {mismatch}")
        });
    let would_inject = match &decision.outcome {
        Outcome::Inject(i) => placement::join(&i.required),
        Outcome::Unchanged | Outcome::Deny => "-".to_string(),
    };
    let blockers: Vec<String> = lookups
        .iter()
        .filter_map(|(c, lookup)| match lookup {
            ImageLookup::Found(p)
                if crate::decision::platform::linux_architectures(p.iter()).contains(target) =>
            {
                None
            }
            ImageLookup::Found(p) => Some(format!(
                "{} ({}): publishes only {}",
                c.image,
                c.container,
                p.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(",")
            )),
            ImageLookup::Failed(reason) => Some(format!("{} ({}): {reason}", c.image, c.container)),
        })
        .collect();
    WorkloadRow {
        namespace: workload.meta.namespace.clone().unwrap_or_default(),
        kind: workload.kind.to_string(),
        name: workload.meta.name.clone().unwrap_or_default(),
        mode: mode.to_string(),
        supported: decision.supported.iter().flatten().cloned().collect(),
        runs_on: pods.runs_on.into_iter().collect(),
        running: pods.running,
        would_inject,
        reason: decision.reason,
        target_ready: blockers.is_empty() && !lookups.is_empty(),
        blockers,
        warnings,
        hold: hold_of(&workload.meta),
        failing_pods,
        comparison: audit_compare::comparison(&pods.samples, target),
        requests: pods.requests,
    }
}

/// The hold a workload carries (`archway.dev/hold` and its reason).
fn hold_of(meta: &ObjectMeta) -> Option<String> {
    let architecture = meta
        .labels
        .as_ref()?
        .get(crate::controllers::guard::HOLD_LABEL)?;
    let reason = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(crate::controllers::guard::HOLD_REASON_ANNOTATION))
        .map_or("held", String::as_str);
    Some(format!("{architecture}: {reason}"))
}

/// The report as a table.
pub fn render_table(report: &AuditReport) -> String {
    let rows: Vec<[String; 7]> = report
        .workloads
        .iter()
        .map(|w| {
            [
                w.namespace.clone(),
                format!("{}/{}", w.kind, w.name),
                w.mode.clone(),
                list_or_dash(&w.supported),
                list_or_dash(&w.runs_on),
                w.would_inject.clone(),
                match (&w.hold, w.target_ready) {
                    (Some(hold), _) => format!("HOLD {hold}"),
                    (None, true) => "ready".into(),
                    (None, false) => format!("blocked: {}", w.blockers.join("; ")),
                },
            ]
        })
        .collect();
    let mut out = crate::report::table(
        &[
            "NAMESPACE",
            "WORKLOAD",
            "MODE",
            "SUPPORTED",
            "RUNS ON",
            "WOULD REQUIRE",
            report.target_architecture.as_str(),
        ],
        &rows,
    );
    let blocked = report.workloads.iter().filter(|w| !w.target_ready).count();
    let held = report.workloads.iter().filter(|w| w.hold.is_some()).count();
    let failing: Vec<&String> = (report.workloads.iter())
        .filter_map(|w| w.failing_pods.as_ref())
        .collect();
    if !failing.is_empty() {
        out.push_str("\nPods that will fail where they are pinned:\n");
        for line in failing {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if held > 0 {
        out.push_str(&format!(
            "\n{held} held by the rollout guard: new pods go to the other architecture; \
             clear with `kubectl label <kind> <name> {}-`\n",
            crate::controllers::guard::HOLD_LABEL
        ));
    }
    out.push_str(&format!(
        "\n{} workloads, {} ready for {}, {} blocked; Linux nodes: {}\n",
        report.workloads.len(),
        report.workloads.len() - blocked,
        report.target_architecture,
        blocked,
        report
            .node_architectures
            .iter()
            .map(|(a, n)| format!("{n} {a}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    out.push('\n');
    out.push_str(&namespaces_table(report));
    out.push_str(&ramps_table(report));
    out.push_str(&audit_compare::tables(report));
    out
}

/// The namespaces' ramps as a table, after the namespaces; nothing when
/// no namespace has a ramp.
fn ramps_table(report: &AuditReport) -> String {
    let rows: Vec<[String; 8]> = (report.namespaces.iter())
        .filter_map(|p| Some((p, p.ramp.as_ref()?)))
        .map(|(p, ramp)| {
            [
                p.namespace.clone(),
                steps_text(&ramp.steps),
                ramp.step_duration.clone(),
                ramp.on_failure.clone(),
                ramp.state.clone(),
                ramp.step.map_or("-".into(), |s| format!("{s}%")),
                ramp.since.clone().unwrap_or_else(|| "-".into()),
                ramp.next_text(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from("\nMigration ramps (archway.dev/ramp):\n");
    out.push_str(&crate::report::table(
        &[
            "NAMESPACE",
            "RAMP",
            "STEP FOR",
            "ON FAILURE",
            "STATE",
            "AT",
            "SINCE",
            "NEXT",
        ],
        &rows,
    ));
    out
}

/// `10,50,100`.
fn steps_text(steps: &[u8]) -> String {
    (steps.iter())
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The monitoring step as a table.
fn namespaces_table(report: &AuditReport) -> String {
    let target = &report.target_architecture;
    let rows: Vec<[String; 7]> = report
        .namespaces
        .iter()
        .map(|p| {
            [
                p.namespace.clone(),
                p.mode.clone(),
                format!("{}%", p.rollout),
                shares(p),
                format!("{} ({}%)", p.on_target, p.percent(p.on_target)),
                format!(
                    "{} ({}%)",
                    p.planned_on_target,
                    p.percent(p.planned_on_target)
                ),
                gap_text(p.gap),
            ]
        })
        .collect();
    let now = format!("ON {target} NOW");
    let planned = format!("TARGET ON {target}");
    crate::report::table(
        &[
            "NAMESPACE",
            "MODE",
            "ROLLOUT",
            "RUNNING PODS NOW",
            now.as_str(),
            planned.as_str(),
            "GAP",
        ],
        &rows,
    )
}

fn list_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".into()
    } else {
        items.join(",")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The report as one self-contained HTML page (no scripts, no external
/// resources), blocked workloads first.
pub fn render_html(report: &AuditReport) -> String {
    let mut rows = report.workloads.clone();
    rows.sort_by_key(|w| w.target_ready);
    let blocked = rows.iter().filter(|w| !w.target_ready).count();
    let mut html = String::new();
    html.push_str(&format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>archway audit</title>\
<style>body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;width:100%}}\
th,td{{border-bottom:1px solid #ddd;padding:.4em .6em;text-align:left;vertical-align:top}}th{{background:#f4f4f4}}\
.blocked{{background:#fff4f2}}h2{{margin-top:2em}}\
.bar{{position:relative;width:10em;height:.9em;background:#eee}}.bar div{{position:absolute;left:0;top:0;bottom:0}}\
.bar .now{{background:#6aa57a}}.bar .planned{{border-right:3px solid #222;z-index:1}}\
td:first-child,td:nth-child(2){{white-space:nowrap}}.ready{{color:#17692b}}.no{{color:#a1260d}}code{{font-size:12px}}{dashboard_style}</style></head><body>\
<h1>archway audit</h1><p>Target architecture <b>{target}</b>. {total} workloads: <span class=\"ready\">{ready} ready</span>, \
<span class=\"no\">{blocked} blocked</span>. Linux nodes: {nodes}.</p>{dashboard}\
<h2 id=\"workloads\">Workloads</h2><table><thead><tr><th>Namespace</th><th>Workload</th><th>Mode</th><th>Supported</th><th>Runs on</th>\
<th>Would require</th><th>Why</th><th>{target}</th></tr></thead><tbody>",
        target = escape(&report.target_architecture),
        dashboard_style = audit_dashboard::STYLE,
        dashboard = audit_dashboard::html(report),
        total = rows.len(),
        ready = rows.len() - blocked,
        blocked = blocked,
        nodes = escape(
            &report
                .node_architectures
                .iter()
                .map(|(a, n)| format!("{n} {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ));
    for w in &rows {
        let status = if let Some(hold) = &w.hold {
            format!(
                "<span class=\"no\">held</span><br><code>{}</code>",
                escape(hold)
            )
        } else if w.target_ready {
            "<span class=\"ready\">ready</span>".to_string()
        } else {
            format!(
                "<span class=\"no\">blocked</span><br><code>{}</code>",
                w.blockers
                    .iter()
                    .map(|b| escape(b))
                    .collect::<Vec<_>>()
                    .join("<br>")
            )
        };
        html.push_str(&format!(
            "<tr class=\"{class}\"><td>{ns}</td><td>{kind}/{name}</td><td>{mode}</td><td>{supported}</td><td>{runs}</td>\
<td>{inject}</td><td>{reason}</td><td>{status}</td></tr>",
            class = if w.target_ready { "" } else { "blocked" },
            ns = escape(&w.namespace),
            kind = escape(&w.kind),
            name = escape(&w.name),
            mode = escape(&w.mode),
            supported = escape(&list_or_dash(&w.supported)),
            runs = escape(&list_or_dash(&w.runs_on)),
            inject = escape(&w.would_inject),
            reason = escape(&w.reason),
        ));
    }
    html.push_str("</tbody></table>");
    let failing: Vec<String> = (rows.iter())
        .filter_map(|w| w.failing_pods.as_deref())
        .map(|line| format!("<li>{}</li>", escape(line)))
        .collect();
    if !failing.is_empty() {
        html.push_str(&format!(
            "<h2>Pods that will fail where they are pinned</h2><ul class=\"no\">{}</ul>",
            failing.concat()
        ));
    }
    html.push_str(&namespaces_html(report));
    html.push_str(&ramps_html(report));
    html.push_str(&audit_compare::html(report));
    html.push_str("</body></html>\n");
    html
}

/// Running pods per architecture, with their shares: `3 amd64 (75%), 1 arm64 (25%)`.
fn shares(plan: &NamespacePlan) -> String {
    if plan.running.is_empty() {
        return "none running".into();
    }
    plan.running
        .iter()
        .map(|(arch, n)| format!("{n} {arch} ({}%)", plan.percent(*n)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A bar of the target's share now (filled) with a mark where the rollout
/// would have it: the gap at a glance, drawn in CSS only.
fn share_bar(now: usize, planned: usize) -> String {
    format!(
        "<div class=\"bar\" title=\"now {now}%, target {planned}%\">\
<div class=\"now\" style=\"width:{now}%\"></div><div class=\"planned\" style=\"width:{planned}%\"></div></div>"
    )
}

/// `+2 pods` to move, `-1 pods` beyond the rollout, `none` when on target.
fn gap_text(gap: i64) -> String {
    if gap == 0 {
        "none".into()
    } else {
        format!("{gap:+} pods")
    }
}

/// The monitoring step of the migration plan: one row per namespace.
fn namespaces_html(report: &AuditReport) -> String {
    let target = escape(&report.target_architecture);
    let mut html = format!(
        "<h2 id=\"monitoring\">Monitoring: running pods per namespace</h2>\
<p>Where each namespace's running pods are now, next to where its rollout would put them on {target}. \
Pods of blocked workloads stay where they are.</p>\
<table class=\"namespaces\"><thead><tr><th>Namespace</th><th>Mode</th><th>Rollout</th>\
<th>Running pods now</th><th>On {target} now</th><th>Rollout target on {target}</th><th>Gap</th>\
<th>Blocked pods</th><th>{target}: now (bar) / target (mark)</th></tr></thead><tbody>"
    );
    for plan in &report.namespaces {
        let now = plan.percent(plan.on_target);
        let planned = plan.percent(plan.planned_on_target);
        html.push_str(&format!(
            "<tr class=\"namespace\"><td>{ns}</td><td>{mode}</td><td>{rollout}%</td><td>{shares}</td>\
<td>{on} ({now}%)</td><td>{want} ({planned}%)</td><td>{gap}</td><td>{blocked}</td><td>{bar}</td></tr>",
            ns = escape(&plan.namespace),
            mode = escape(&plan.mode),
            rollout = plan.rollout,
            shares = escape(&shares(plan)),
            on = plan.on_target,
            want = plan.planned_on_target,
            gap = gap_text(plan.gap),
            blocked = plan.blocked,
            bar = share_bar(now, planned),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

/// The namespaces' ramps, after the monitoring step; nothing when no
/// namespace has a ramp.
fn ramps_html(report: &AuditReport) -> String {
    let ramped: Vec<(&NamespacePlan, &RampPlan)> = (report.namespaces.iter())
        .filter_map(|p| Some((p, p.ramp.as_ref()?)))
        .collect();
    if ramped.is_empty() {
        return String::new();
    }
    let mut html = String::from(
        "<h2 id=\"ramps\">Migration ramps</h2>\
<p>Namespaces whose rollout archway moves step by step (<code>archway.dev/ramp</code>), \
and where each stands (<code>archway.dev/ramp-status</code>).</p>\
<table class=\"ramps\"><thead><tr><th>Namespace</th><th>Ramp</th><th>Step for</th><th>On failure</th>\
<th>State</th><th>At</th><th>Since</th><th>Next</th></tr></thead><tbody>",
    );
    for (plan, ramp) in ramped {
        let class = match ramp.state.as_str() {
            "paused" => "no",
            "done" => "ready",
            _ => "",
        };
        html.push_str(&format!(
            "<tr class=\"ramp\"><td>{ns}</td><td>{steps}</td><td>{hold}</td><td>{on_failure}</td>\
<td class=\"{class}\">{state}</td><td>{at}</td><td>{since}</td><td>{next}</td></tr>",
            ns = escape(&plan.namespace),
            steps = escape(&steps_text(&ramp.steps)),
            hold = escape(&ramp.step_duration),
            on_failure = escape(&ramp.on_failure),
            state = escape(&ramp.state),
            at = ramp.step.map_or("-".into(), |s| format!("{s}%")),
            since = escape(ramp.since.as_deref().unwrap_or("-")),
            next = escape(&ramp.next_text()),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

/// The client `metrics.k8s.io` is read through: without kube's retries.
/// An APIService whose server is down answers every request 503, which kube
/// retries 15 times with a backoff growing towards 1000 s; the audit says
/// at once that the API is not served instead.
pub fn usage_client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// `archway audit`: scans and prints.
pub async fn run(
    config: &Config,
    namespace: Option<&str>,
    format: Format,
) -> anyhow::Result<std::process::ExitCode> {
    let kube_config = kube::Config::infer().await?;
    let client = kube::Client::try_from(kube_config.clone())?;
    let progress = std::io::stderr().is_terminal();
    let report = scan(
        client,
        usage_client(kube_config)?,
        config,
        namespace,
        progress,
    )
    .await?;
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Html => print!("{}", render_html(&report)),
        Format::Table => print!("{}", render_table(&report)),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(
        namespace: &str,
        supported: &[&str],
        ready: bool,
        running: &[(&str, usize)],
    ) -> WorkloadRow {
        WorkloadRow {
            namespace: namespace.into(),
            kind: "Deployment".into(),
            name: format!("w{}", running.len()),
            mode: "enforce".into(),
            supported: supported.iter().map(|s| s.to_string()).collect(),
            runs_on: running.iter().map(|(a, _)| a.to_string()).collect(),
            running: running.iter().map(|(a, n)| (a.to_string(), *n)).collect(),
            would_inject: "-".into(),
            reason: String::new(),
            target_ready: ready,
            blockers: Vec::new(),
            warnings: Vec::new(),
            hold: None,
            failing_pods: None,
            comparison: None,
            requests: BTreeMap::new(),
        }
    }

    #[test]
    fn a_workload_moves_by_what_its_images_publish_and_the_rollout() {
        let multi = workload("a", &["amd64", "arm64"], true, &[("amd64", 10)]);
        let only_arm = workload("a", &["arm64"], true, &[("amd64", 1), ("arm64", 2)]);
        let blocked = workload("a", &["amd64"], false, &[("amd64", 4)]);
        let unknown = workload("a", &[], false, &[("amd64", 4)]);
        for (w, rollout, want) in [
            (&multi, 0, 0),
            (&multi, 10, 1),
            (&multi, 25, 3), // 2.5 rounds up
            (&multi, 100, 10),
            (&only_arm, 0, 3),
            (&blocked, 100, 0),
            (&unknown, 100, 0),
        ] {
            assert_eq!(
                planned_on_target(w, rollout, "arm64"),
                want,
                "{w:?} at {rollout}%"
            );
        }
    }

    #[test]
    fn namespaces_sum_their_workloads_with_their_own_rollout() {
        let rows = [
            workload(
                "shop",
                &["amd64", "arm64"],
                true,
                &[("amd64", 3), ("arm64", 1)],
            ),
            workload("shop", &["amd64"], false, &[("amd64", 4)]),
            workload("tools", &["amd64", "arm64"], true, &[("amd64", 2)]),
            workload("idle", &["amd64", "arm64"], true, &[]),
        ];
        let rollouts = BTreeMap::from([("shop".to_string(), 50)]);
        let plans = namespace_plans(&rows, &rollouts, 0, "arm64");
        let names: Vec<&str> = plans.iter().map(|p| p.namespace.as_str()).collect();
        assert_eq!(names, ["idle", "shop", "tools"]);
        let shop = &plans[1];
        assert_eq!(shop.rollout, 50);
        assert_eq!(
            shop.running,
            BTreeMap::from([("amd64".into(), 7), ("arm64".into(), 1)])
        );
        assert_eq!(
            (
                shop.running_total,
                shop.on_target,
                shop.planned_on_target,
                shop.gap,
                shop.blocked
            ),
            (8, 1, 2, 1, 4)
        );
        assert_eq!((shop.percent(shop.on_target), shop.percent(2)), (13, 25));
        assert_eq!(shares(shop), "7 amd64 (88%), 1 arm64 (13%)");
        // No annotation: the default rollout; pods pinned beyond it show as a
        // negative gap.
        let tools = &plans[2];
        assert_eq!(
            (tools.rollout, tools.planned_on_target, tools.gap),
            (0, 0, 0)
        );
        let idle = &plans[0];
        assert_eq!((idle.running_total, idle.percent(0)), (0, 0));
        assert_eq!(shares(idle), "none running");
        let ahead = namespace_plans(&rows[..1], &BTreeMap::new(), 0, "arm64");
        assert_eq!(ahead[0].gap, -1);
    }

    #[test]
    fn the_page_shows_each_namespace_after_the_blocked_workloads() {
        let workloads = vec![
            workload("shop", &["amd64", "arm64"], true, &[("amd64", 2)]),
            workload("<shop>", &["amd64"], false, &[("amd64", 1)]),
        ];
        let namespaces = namespace_plans(&workloads, &BTreeMap::new(), 100, "arm64");
        let report = AuditReport {
            usage: Default::default(),
            target_architecture: "arm64".into(),
            node_architectures: BTreeMap::new(),
            cost: audit_compare::cost_report(&workloads, &Default::default(), "arm64"),
            workloads,
            namespaces,
        };
        let html = render_html(&report);
        let blocked = html.find("<td>&lt;shop&gt;</td><td>Deployment").unwrap();
        let ready = html.find("<td>shop</td><td>Deployment").unwrap();
        let section = html.find("id=\"monitoring\"").unwrap();
        assert!(blocked < ready && ready < section, "{html}");
        assert!(html.contains("<td>shop</td><td>enforce</td><td>100%</td><td>2 amd64 (100%)</td><td>0 (0%)</td><td>2 (100%)</td><td>+2 pods</td>"), "{html}");
        assert!(!html.contains("<shop>") && !html.contains("<script"));
        // No ramp: no ramp section, and `ramp: null` in the JSON.
        assert!(!html.contains("id=\"ramps\""));
        let table = render_table(&report);
        let cells = [
            "shop", "enforce", "100%", "2", "amd64", "(100%)", "0", "(0%)", "2", "(100%)", "+2",
            "pods",
        ];
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().eq(cells.iter().copied())),
            "{table}"
        );
    }

    fn ramp() -> crate::decision::ramp::Ramp {
        crate::decision::ramp::Ramp {
            steps: vec![10, 50, 100],
            hold: std::time::Duration::from_secs(24 * 3600),
            on_failure: crate::decision::ramp::OnFailure::Pause,
        }
    }

    #[test]
    fn a_ramp_reads_where_it_stands_as_the_autopilot_does() {
        let ramp = ramp();
        let holding = ramp_plan(
            &ramp,
            Mode::Enforce,
            50,
            Some("holding 50% since 2026-12-03T10:00:00Z; next 100% due 2026-12-04T10:00:00Z"),
        );
        assert_eq!(
            (
                holding.state.as_str(),
                holding.step,
                holding.since.as_deref(),
                holding.next_step,
                holding.next_due.as_deref()
            ),
            (
                "holding",
                Some(50),
                Some("2026-12-03T10:00:00Z"),
                Some(100),
                Some("2026-12-04T10:00:00Z")
            )
        );
        assert_eq!(holding.next_text(), "100% due 2026-12-04T10:00:00Z");
        assert_eq!(
            (holding.step_duration.as_str(), holding.step_seconds),
            ("24h", 86400)
        );
        let paused = ramp_plan(
            &ramp,
            Mode::Enforce,
            10,
            Some(
                "paused at 10% since 2026-12-03T10:00:00Z: Deployment/web is held off arm64: held; remove this annotation to resume",
            ),
        );
        assert_eq!(paused.state, "paused");
        assert_eq!(
            paused.paused_because.as_deref(),
            Some("Deployment/web is held off arm64: held")
        );
        assert_eq!(
            paused.next_text(),
            "Deployment/web is held off arm64: held; remove the namespace annotation archway.dev/ramp-status to resume"
        );
        let done = ramp_plan(
            &ramp,
            Mode::Enforce,
            100,
            Some("done at 100% since 2026-12-05T10:00:00Z"),
        );
        assert_eq!((done.state.as_str(), done.step), ("done", Some(100)));
        // No status, a person's edit, or a rollout changed by hand: the
        // autopilot starts again.
        for status in [
            None,
            Some("moving along"),
            Some("holding 10% since 2026-12-03T10:00:00Z; next 50% due 2026-12-04T10:00:00Z"),
        ] {
            let plan = ramp_plan(&ramp, Mode::Enforce, 50, status);
            assert_eq!(
                (plan.state.as_str(), plan.step),
                ("starting", None),
                "{status:?}"
            );
        }
        for (seconds, text) in [
            (86400.0, "24h"),
            (5400.0, "1h30m"),
            (90.0, "1m30s"),
            (3601.0, "1h1s"),
            (2.5, "2.5s"),
            (1.0, "1s"),
        ] {
            assert_eq!(
                duration_text(std::time::Duration::from_secs_f64(seconds)),
                text
            );
        }
        // Not in enforce mode: the autopilot leaves it alone.
        let audit = ramp_plan(&ramp, Mode::Audit, 50, None);
        assert_eq!(audit.state, "inactive");
    }

    #[test]
    fn a_namespace_with_a_ramp_shows_it_in_the_table_json_and_page() {
        let workloads = vec![workload("shop", &["amd64", "arm64"], true, &[("amd64", 2)])];
        let mut namespaces = namespace_plans(&workloads, &BTreeMap::new(), 50, "arm64");
        let ramps = BTreeMap::from([
            (
                "shop".to_string(),
                ramp_plan(
                    &ramp(),
                    Mode::Enforce,
                    50,
                    Some(
                        "holding 50% since 2026-12-03T10:00:00Z; next 100% due 2026-12-04T10:00:00Z",
                    ),
                ),
            ),
            (
                "lab".to_string(),
                ramp_plan(
                    &ramp(),
                    Mode::Enforce,
                    10,
                    Some(
                        "paused at 10% since 2026-12-03T11:00:00Z: Deployment/<web> is held off arm64: held; remove this annotation to resume",
                    ),
                ),
            ),
        ]);
        let modes = BTreeMap::from([("lab".to_string(), Some(Mode::Enforce))]);
        let rollouts = BTreeMap::from([("lab".to_string(), 10)]);
        with_ramps(&mut namespaces, ramps, &modes, &rollouts);
        let report = AuditReport {
            usage: Default::default(),
            target_architecture: "arm64".into(),
            node_architectures: BTreeMap::new(),
            cost: audit_compare::cost_report(&workloads, &Default::default(), "arm64"),
            workloads,
            namespaces,
        };
        // A namespace with a ramp and no workload has its line too.
        let names: Vec<&str> = report
            .namespaces
            .iter()
            .map(|p| p.namespace.as_str())
            .collect();
        assert_eq!(names, ["lab", "shop"]);

        let json = serde_json::to_value(&report).unwrap();
        let shop = &json["namespaces"][1];
        // The columns as before, and the ramp beside them.
        assert_eq!(shop["rollout"], 50);
        assert_eq!(shop["running_total"], 2);
        assert_eq!(
            shop["ramp"],
            serde_json::json!({
                "steps": [10, 50, 100],
                "step_duration": "24h",
                "step_seconds": 86400,
                "on_failure": "pause",
                "state": "holding",
                "step": 50,
                "since": "2026-12-03T10:00:00Z",
                "next_step": 100,
                "next_due": "2026-12-04T10:00:00Z",
                "paused_because": null,
                "status": "holding 50% since 2026-12-03T10:00:00Z; next 100% due 2026-12-04T10:00:00Z",
            })
        );
        let lab = &json["namespaces"][0];
        assert_eq!(
            (&lab["mode"], &lab["rollout"], &lab["running_total"]),
            (
                &serde_json::json!("enforce"),
                &serde_json::json!(10),
                &serde_json::json!(0)
            )
        );
        assert_eq!(lab["ramp"]["state"], "paused");
        assert_eq!(
            lab["ramp"]["paused_because"],
            "Deployment/<web> is held off arm64: held"
        );

        let table = render_table(&report);
        let ramps = table
            .split("Migration ramps (archway.dev/ramp):\n")
            .nth(1)
            .unwrap();
        let lines: Vec<Vec<&str>> = ramps
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(
            lines[0],
            [
                "NAMESPACE",
                "RAMP",
                "STEP",
                "FOR",
                "ON",
                "FAILURE",
                "STATE",
                "AT",
                "SINCE",
                "NEXT"
            ]
        );
        assert_eq!(
            lines[2],
            [
                "shop",
                "10,50,100",
                "24h",
                "pause",
                "holding",
                "50%",
                "2026-12-03T10:00:00Z",
                "100%",
                "due",
                "2026-12-04T10:00:00Z"
            ],
            "{table}"
        );
        let lab = ramps.lines().nth(1).unwrap();
        assert_eq!(
            lines[1][..7],
            [
                "lab",
                "10,50,100",
                "24h",
                "pause",
                "paused",
                "10%",
                "2026-12-03T11:00:00Z"
            ],
            "{table}"
        );
        assert!(
            lab.ends_with(
                "2026-12-03T11:00:00Z  Deployment/<web> is held off arm64: held; remove the namespace annotation archway.dev/ramp-status to resume"
            ),
            "{table}"
        );
        // The namespaces' table above is as it was.
        assert!(
            table.lines().any(|l| l.split_whitespace().eq([
                "shop", "enforce", "50%", "2", "amd64", "(100%)", "0", "(0%)", "1", "(50%)", "+1",
                "pods"
            ])),
            "{table}"
        );

        let html = render_html(&report);
        let section = html.find("id=\"ramps\"").unwrap();
        assert!(html.find("id=\"monitoring\"").unwrap() < section);
        assert!(html.contains(
            "<tr class=\"ramp\"><td>shop</td><td>10,50,100</td><td>24h</td><td>pause</td><td class=\"\">holding</td><td>50%</td><td>2026-12-03T10:00:00Z</td><td>100% due 2026-12-04T10:00:00Z</td></tr>"
        ), "{html}");
        assert!(
            html.contains("<td class=\"no\">paused</td><td>10%</td>"),
            "{html}"
        );
        assert!(html.contains("Deployment/&lt;web&gt;") && !html.contains("<web>"));
        // The dashboard, first: each namespace's ramp where it stands, and
        // without prices one line saying so, not a figure.
        let dashboard = html.find("id=\"dashboard\"").unwrap();
        assert!(dashboard < html.find("id=\"workloads\"").unwrap());
        assert!(html.contains(
            "<h4>Rollout</h4><p class=\"big\">50%</p><p class=\"small\">ramp 10,50,100 (24h a step): holding at 50%; next: 100% due 2026-12-04T10:00:00Z</p>"
        ), "{html}");
        assert!(html.contains(
            "<p class=\"small no\">ramp 10,50,100 (24h a step): paused at 10%; Deployment/&lt;web&gt; is held off arm64: held; remove the namespace annotation archway.dev/ramp-status to resume</p>"
        ), "{html}");
        assert!(html.contains(
            "<p class=\"total\">All namespaces: monthly cost of requests: no price for amd64 (prices come from <code>cost:</code> in the configuration).</p>"
        ), "{html}");
    }
}

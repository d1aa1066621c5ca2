//! `archway rollback -n NS [--restart] [--dry-run]`: the quick rollback of
//! one namespace, without draining a node.
//!
//! 1. The namespace's `archway.dev/rollout` goes to 0 and its ramp, if it
//!    has one, is paused at 0% (`archway.dev/ramp-status`), in one merge
//!    patch of its annotations: new pods are no longer steered to the
//!    target architecture and the autopilot does not step up again.
//! 2. The Deployments and StatefulSets with pods on nodes of the target
//!    architecture are listed, with how many of their pods are there.
//!    DaemonSets are not: their pods are pinned one per node, not steered
//!    by the rollout, and a restart would put them back on the same nodes.
//! 3. With `--restart`, each is restarted as `kubectl rollout restart`
//!    does, one at a time, each waited for until it is available again.
//!
//! With `--dry-run` nothing is written.

use std::collections::{BTreeMap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Serialize;
use serde_json::json;

use crate::config::Config;
use crate::decision::placement::ARCH_LABEL;
use crate::decision::policy::{MODE_LABEL, NamespacePolicy, ROLLOUT_ANNOTATION, Rollout};
use crate::decision::ramp::{RAMP_STATUS_ANNOTATION, State, Status};
use crate::report::Format;

/// The reason written in the paused ramp's status.
pub const REASON: &str = "rolled back by archway rollback";
/// The annotation `kubectl rollout restart` writes on a pod template.
pub const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// How often a restarted workload's status is read.
const POLL: Duration = Duration::from_millis(500);
/// How many times the namespace patch is tried when the namespace changed
/// between the read and the write.
const PATCH_ATTEMPTS: usize = 5;

/// What the command was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub namespace: String,
    pub restart: bool,
    pub dry_run: bool,
    /// How long each restarted workload may take to be available again.
    pub timeout: Duration,
    pub format: Format,
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("namespace {0} does not exist")]
    NoSuchNamespace(String),
    #[error(
        "namespace {namespace} is not opted in to archway (label {MODE_LABEL} is {label}): archway does not steer its pods, there is nothing to roll back"
    )]
    NotOptedIn { namespace: String, label: String },
    #[error("{action}")]
    Api {
        action: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "namespace {namespace} kept changing while its rollout was being set to 0 ({attempts} attempts); try again"
    )]
    Contended { namespace: String, attempts: usize },
    #[error(
        "the rollout of namespace {namespace} is {now} again (changed by a person or by the ramp autopilot while rolling back): no further workload restarted; run archway rollback again"
    )]
    RolloutChanged { namespace: String, now: String },
    #[error(
        "{workload} was not available {} after its restart ({progress}); the workloads after it were not restarted",
        humantime::format_duration(*timeout)
    )]
    Timeout {
        workload: String,
        timeout: Duration,
        progress: String,
    },
    #[error("{workload}'s rollout failed ({message}); the workloads after it were not restarted")]
    RolloutFailed { workload: String, message: String },
    #[error("{workload} disappeared while it was restarting")]
    Gone { workload: String },
}

fn api_error(action: impl Into<String>) -> impl FnOnce(kube::Error) -> RollbackError {
    let action = action.into();
    move |source| RollbackError::Api { action, source }
}

/// The report, as `-o json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub namespace: String,
    pub target_architecture: String,
    pub dry_run: bool,
    /// The rollout in force before (the annotation's, else the default).
    pub rollout_before: u8,
    pub rollout: u8,
    /// `archway.dev/ramp-status` as written (or as it would be), when the
    /// namespace has a ramp.
    pub ramp_status: Option<String>,
    /// Deployments and StatefulSets with pods on the target architecture.
    pub workloads: Vec<WorkloadRow>,
    /// Workloads with pods on the target that are not restarted, and why.
    pub not_restarted: Vec<Skipped>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadRow {
    pub kind: String,
    pub name: String,
    /// Its live pods on nodes of the target architecture.
    pub on_target: usize,
    /// Its live pods (bound to a node, not finished, not terminating).
    pub pods: usize,
    /// What `--restart` did; `None` without it.
    pub restart: Option<Restart>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Restart {
    /// `--dry-run`: nothing was written.
    WouldRestart,
    /// Restarted and available again, after this many seconds (tenths).
    Available { seconds: f64 },
    /// Restarted, and not available in time (or its rollout failed).
    Failed { reason: String },
    /// Not started: an earlier one failed.
    NotStarted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Skipped {
    pub kind: String,
    pub name: String,
    pub on_target: usize,
    pub pods: usize,
    pub reason: String,
}

/// A pod's workload as the command sees it: its controller, and why it
/// cannot be restarted, if it cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
    pub skip: Option<String>,
}

/// One live pod: its workload and whether it runs on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodFacts {
    pub workload: WorkloadRef,
    pub on_target: bool,
}

const DAEMONSET_SKIP: &str = "a DaemonSet runs one pod per node, not steered by the rollout; a restart puts them back on the same nodes (its node selector or affinity decides)";

/// The namespace's new annotations: the rollout and, with a ramp, its
/// paused status. `Err` when the namespace is not opted in.
pub fn plan_namespace(
    name: &str,
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    default_rollout: Rollout,
    now: Timestamp,
) -> Result<(u8, BTreeMap<String, String>), RollbackError> {
    let Some(policy) = NamespacePolicy::from_metadata(labels, annotations, default_rollout) else {
        let label = match labels.get(MODE_LABEL) {
            Some(value) => format!("{value:?}, not enforce or audit"),
            None => "missing".into(),
        };
        return Err(RollbackError::NotOptedIn {
            namespace: name.to_string(),
            label,
        });
    };
    let mut patch = BTreeMap::from([(ROLLOUT_ANNOTATION.to_string(), "0".to_string())]);
    if let Some(ramp) = &policy.ramp {
        let status = Status {
            state: State::Paused,
            rollout: 0,
            since: now,
            reason: Some(REASON.into()),
        };
        patch.insert(RAMP_STATUS_ANNOTATION.to_string(), status.render(ramp));
    }
    Ok((policy.rollout.percent(), patch))
}

/// The workloads with pods on the target, by kind and name: those that can
/// be restarted, and those that cannot with why.
pub fn tally(pods: &[PodFacts]) -> (Vec<WorkloadRow>, Vec<Skipped>) {
    let mut counts: BTreeMap<(String, String), (usize, usize, Option<String>)> = BTreeMap::new();
    for pod in pods {
        let key = (pod.workload.kind.clone(), pod.workload.name.clone());
        let entry = counts
            .entry(key)
            .or_insert((0, 0, pod.workload.skip.clone()));
        entry.1 += 1;
        if pod.on_target {
            entry.0 += 1;
        }
    }
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    for ((kind, name), (on_target, total, skip)) in counts {
        if on_target == 0 {
            continue;
        }
        match skip {
            None => rows.push(WorkloadRow {
                kind,
                name,
                on_target,
                pods: total,
                restart: None,
            }),
            Some(reason) => skipped.push(Skipped {
                kind,
                name,
                on_target,
                pods: total,
                reason,
            }),
        }
    }
    (rows, skipped)
}

/// Where a restarted workload stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Waiting(String),
    Available,
    Failed(String),
}

/// A Deployment is available again when its controller saw the restart
/// and every replica is updated and available, with no old one left
/// (as `kubectl rollout status` reads it).
pub fn deployment_progress(deployment: &Deployment) -> Progress {
    let generation = deployment.metadata.generation.unwrap_or(0);
    let want = (deployment.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return Progress::Waiting("no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Waiting("the restart is not yet seen by its controller".into());
    }
    let failed = (status.conditions.iter().flatten()).find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    if let Some(condition) = failed {
        return Progress::Failed(
            condition
                .message
                .clone()
                .unwrap_or_else(|| "ProgressDeadlineExceeded".into()),
        );
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated >= want && available >= want && total <= updated {
        return Progress::Available;
    }
    Progress::Waiting(format!(
        "{updated}/{want} updated, {available}/{want} available, {} old",
        total.saturating_sub(updated).max(0)
    ))
}

/// A StatefulSet is available again when its controller saw the restart,
/// every replica is updated and ready, and the update revision is current.
pub fn statefulset_progress(set: &StatefulSet) -> Progress {
    let generation = set.metadata.generation.unwrap_or(0);
    let want = (set.spec.as_ref()).and_then(|s| s.replicas).unwrap_or(1);
    let Some(status) = &set.status else {
        return Progress::Waiting("no status yet".into());
    };
    if status.observed_generation.unwrap_or(0) < generation {
        return Progress::Waiting("the restart is not yet seen by its controller".into());
    }
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(ready);
    let current =
        status.current_revision.is_some() && status.current_revision == status.update_revision;
    if updated >= want && ready >= want && available >= want && current {
        return Progress::Available;
    }
    Progress::Waiting(format!("{updated}/{want} updated, {ready}/{want} ready"))
}

/// The plan as a table, with what `--restart` did.
pub fn render_table(report: &Report) -> String {
    let target = &report.target_architecture;
    let mut out = String::new();
    let verb = if report.dry_run { "would set" } else { "set" };
    out.push_str(&format!(
        "namespace {}: {verb} {ROLLOUT_ANNOTATION} from {}% to {}%\n",
        report.namespace, report.rollout_before, report.rollout
    ));
    match &report.ramp_status {
        Some(status) => {
            let verb = if report.dry_run {
                "would pause"
            } else {
                "paused"
            };
            out.push_str(&format!(
                "ramp: {verb} ({RAMP_STATUS_ANNOTATION}: {status})\n"
            ));
        }
        None => out.push_str("ramp: none\n"),
    }
    out.push('\n');
    if report.workloads.is_empty() {
        out.push_str(&format!(
            "no Deployment or StatefulSet has pods on {target}\n"
        ));
    } else {
        let on = format!("ON {}", target.to_uppercase());
        let restarted = report.workloads.iter().any(|w| w.restart.is_some());
        let rows: Vec<[String; 4]> = (report.workloads.iter())
            .map(|w| {
                [
                    format!("{}/{}", w.kind, w.name),
                    w.on_target.to_string(),
                    w.pods.to_string(),
                    w.restart.as_ref().map(restart_text).unwrap_or_default(),
                ]
            })
            .collect();
        let last = if restarted { "RESTART" } else { "" };
        out.push_str(&crate::report::table(
            &["WORKLOAD", on.as_str(), "PODS", last],
            &rows,
        ));
    }
    for skipped in &report.not_restarted {
        out.push_str(&format!(
            "not restarted: {}/{} ({} of {} pods on {target}): {}\n",
            skipped.kind, skipped.name, skipped.on_target, skipped.pods, skipped.reason
        ));
    }
    let restarted = report.workloads.iter().any(|w| w.restart.is_some());
    if !restarted && !report.workloads.is_empty() {
        out.push_str(&format!(
            "\ntheir pods stay on {target} until they are replaced: run again with --restart (or kubectl rollout restart each)\n"
        ));
    }
    out
}

fn restart_text(restart: &Restart) -> String {
    match restart {
        Restart::WouldRestart => "would restart".into(),
        Restart::Available { seconds } => format!("available after {seconds}s"),
        Restart::Failed { reason } => format!("failed: {reason}"),
        Restart::NotStarted => "not started".into(),
    }
}

/// `archway rollback`.
pub async fn run(config: &Config, options: &Options) -> anyhow::Result<ExitCode> {
    let client = kube::Client::try_default()
        .await
        .map_err(api_error("connecting with the current kubeconfig context"))?;
    let (report, failure) = execute(client, config, options).await?;
    match options.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table | Format::Html => print!("{}", render_table(&report)),
    }
    match failure {
        Some(error) => Err(error.into()),
        None => Ok(ExitCode::SUCCESS),
    }
}

/// Does the rollback; the report, and the error that stopped the restarts
/// if one did (the report then says how far they got).
pub async fn execute(
    client: kube::Client,
    config: &Config,
    options: &Options,
) -> Result<(Report, Option<RollbackError>), RollbackError> {
    let ns = options.namespace.as_str();
    let target = config.target_architecture.clone();
    let (rollout_before, written) =
        set_rollout_to_zero(&client, ns, config.default_rollout, options.dry_run).await?;
    let pods = live_pods(&client, ns, &target).await?;
    let (mut workloads, not_restarted) = tally(&pods);
    let mut report = Report {
        namespace: ns.to_string(),
        target_architecture: target,
        dry_run: options.dry_run,
        rollout_before,
        rollout: 0,
        ramp_status: written.get(RAMP_STATUS_ANNOTATION).cloned(),
        workloads: Vec::new(),
        not_restarted,
    };
    let mut failure = None;
    if options.restart {
        for row in &mut workloads {
            row.restart = Some(if options.dry_run {
                Restart::WouldRestart
            } else {
                Restart::NotStarted
            });
        }
        if !options.dry_run {
            let count = workloads.len();
            for (i, row) in workloads.iter_mut().enumerate() {
                if let Err(error) = still_rolled_back(&client, ns).await {
                    failure = Some(error);
                    break;
                }
                let workload = format!("{}/{}", row.kind, row.name);
                eprintln!("restarting {workload} ({} of {count})", i + 1);
                let started = Instant::now();
                match restart(&client, ns, row, options.timeout).await {
                    Ok(()) => {
                        let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
                        eprintln!("{workload}: available again after {seconds}s");
                        row.restart = Some(Restart::Available { seconds });
                    }
                    Err(error) => {
                        row.restart = Some(Restart::Failed {
                            reason: error.to_string(),
                        });
                        failure = Some(error);
                        break;
                    }
                }
            }
        }
    }
    report.workloads = workloads;
    Ok((report, failure))
}

/// Writes `archway.dev/rollout: "0"` (and the paused ramp status) in one
/// merge patch, conditional on the namespace read: a change in between
/// (the autopilot's step) is read again rather than overwritten blindly.
/// Returns the rollout before and the annotations written.
async fn set_rollout_to_zero(
    client: &kube::Client,
    ns: &str,
    default_rollout: Rollout,
    dry_run: bool,
) -> Result<(u8, BTreeMap<String, String>), RollbackError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let empty = BTreeMap::new();
    for _ in 0..PATCH_ATTEMPTS {
        let namespace = api
            .get_opt(ns)
            .await
            .map_err(api_error(format!("reading namespace {ns}")))?
            .ok_or_else(|| RollbackError::NoSuchNamespace(ns.to_string()))?;
        let labels = namespace.metadata.labels.as_ref().unwrap_or(&empty);
        let annotations = namespace.metadata.annotations.as_ref().unwrap_or(&empty);
        let (before, patch) =
            plan_namespace(ns, labels, annotations, default_rollout, Timestamp::now())?;
        if dry_run {
            return Ok((before, patch));
        }
        let body = json!({"metadata": {
            "resourceVersion": namespace.metadata.resource_version,
            "annotations": patch,
        }});
        match api
            .patch(ns, &PatchParams::default(), &Patch::Merge(&body))
            .await
        {
            Ok(_) => {
                eprintln!(
                    "namespace {ns}: {ROLLOUT_ANNOTATION} set from {before}% to 0%{}",
                    if patch.contains_key(RAMP_STATUS_ANNOTATION) {
                        ", ramp paused"
                    } else {
                        ""
                    }
                );
                return Ok((before, patch));
            }
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(source) => {
                return Err(RollbackError::Api {
                    action: format!("patching namespace {ns}"),
                    source,
                });
            }
        }
    }
    Err(RollbackError::Contended {
        namespace: ns.to_string(),
        attempts: PATCH_ATTEMPTS,
    })
}

/// Before each restart: the rollout is still 0. The autopilot writes
/// without a precondition, so a step it had decided just before the
/// rollback could land after it; restarting then would move pods back.
async fn still_rolled_back(client: &kube::Client, ns: &str) -> Result<(), RollbackError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = api
        .get_opt(ns)
        .await
        .map_err(api_error(format!("reading namespace {ns}")))?
        .ok_or_else(|| RollbackError::NoSuchNamespace(ns.to_string()))?;
    let rollout = (namespace.metadata.annotations.as_ref())
        .and_then(|a| a.get(ROLLOUT_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    if rollout.trim() == "0" {
        Ok(())
    } else {
        Err(RollbackError::RolloutChanged {
            namespace: ns.to_string(),
            now: format!("{rollout:?}"),
        })
    }
}

/// The namespace's live pods with their workload and whether their node is
/// of the target architecture (each node read once).
async fn live_pods(
    client: &kube::Client,
    ns: &str,
    target: &str,
) -> Result<Vec<PodFacts>, RollbackError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default())
        .await
        .map_err(api_error(format!("listing the pods of namespace {ns}")))?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut node_arch: HashMap<String, Option<String>> = HashMap::new();
    let mut owners = Owners::new(client, ns);
    let mut facts = Vec::new();
    for pod in list.items {
        let finished = (pod.status.as_ref())
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if finished || pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if !node_arch.contains_key(&node) {
            let arch = nodes
                .get_opt(&node)
                .await
                .map_err(api_error(format!("reading node {node}")))?
                .and_then(|n| n.metadata.labels?.get(ARCH_LABEL).cloned());
            node_arch.insert(node.clone(), arch);
        }
        let on_target = node_arch[&node].as_deref() == Some(target);
        let name = pod.metadata.name.clone().unwrap_or_default();
        let workload = owners
            .of(&name, pod.metadata.owner_references.as_deref())
            .await?;
        facts.push(PodFacts {
            workload,
            on_target,
        });
    }
    Ok(facts)
}

fn controller(references: Option<&[OwnerReference]>) -> Option<&OwnerReference> {
    references?.iter().find(|r| r.controller == Some(true))
}

/// Resolves pods to their workloads, reading each ReplicaSet, Deployment
/// and StatefulSet once.
struct Owners {
    replicasets: Api<ReplicaSet>,
    deployments: Api<Deployment>,
    statefulsets: Api<StatefulSet>,
    seen: HashMap<(String, String), WorkloadRef>,
}

impl Owners {
    fn new(client: &kube::Client, ns: &str) -> Owners {
        Owners {
            replicasets: Api::namespaced(client.clone(), ns),
            deployments: Api::namespaced(client.clone(), ns),
            statefulsets: Api::namespaced(client.clone(), ns),
            seen: HashMap::new(),
        }
    }

    async fn of(
        &mut self,
        pod: &str,
        references: Option<&[OwnerReference]>,
    ) -> Result<WorkloadRef, RollbackError> {
        let Some(owner) = controller(references) else {
            return Ok(WorkloadRef {
                kind: "Pod".into(),
                name: pod.to_string(),
                skip: Some(
                    "a pod without a controller is not replaced by a restart: delete it and create it again".into(),
                ),
            });
        };
        let key = (owner.kind.clone(), owner.name.clone());
        if let Some(known) = self.seen.get(&key) {
            return Ok(known.clone());
        }
        let resolved = self.resolve(owner).await?;
        self.seen.insert(key, resolved.clone());
        Ok(resolved)
    }

    async fn resolve(&self, owner: &OwnerReference) -> Result<WorkloadRef, RollbackError> {
        let name = owner.name.clone();
        match owner.kind.as_str() {
            "ReplicaSet" => {
                let set = self
                    .replicasets
                    .get_opt(&name)
                    .await
                    .map_err(api_error(format!("reading ReplicaSet {name}")))?;
                let deployment = set
                    .as_ref()
                    .and_then(|s| controller(s.metadata.owner_references.as_deref()))
                    .filter(|r| r.kind == "Deployment")
                    .map(|r| r.name.clone());
                match deployment {
                    Some(deployment) => self.deployment(deployment).await,
                    None => Ok(WorkloadRef {
                        kind: "ReplicaSet".into(),
                        name,
                        skip: Some(
                            "a ReplicaSet of no Deployment does not replace its pods when its template changes".into(),
                        ),
                    }),
                }
            }
            "StatefulSet" => {
                let set = self
                    .statefulsets
                    .get_opt(&name)
                    .await
                    .map_err(api_error(format!("reading StatefulSet {name}")))?;
                let skip = match &set {
                    None => Some("not found".to_string()),
                    Some(set) => {
                        let strategy = (set.spec.as_ref())
                            .and_then(|s| s.update_strategy.as_ref())
                            .and_then(|s| s.type_.as_deref());
                        (strategy == Some("OnDelete")).then(|| {
                            "its update strategy is OnDelete: a restart replaces no pod; delete them one by one".to_string()
                        })
                    }
                };
                Ok(WorkloadRef {
                    kind: "StatefulSet".into(),
                    name,
                    skip,
                })
            }
            "DaemonSet" => Ok(WorkloadRef {
                kind: "DaemonSet".into(),
                name,
                skip: Some(DAEMONSET_SKIP.into()),
            }),
            "Job" => Ok(WorkloadRef {
                kind: "Job".into(),
                name,
                skip: Some("a Job's pods run to completion and are not restarted".into()),
            }),
            kind => Ok(WorkloadRef {
                kind: kind.to_string(),
                name,
                skip: Some("archway rollback restarts Deployments and StatefulSets only".into()),
            }),
        }
    }

    async fn deployment(&self, name: String) -> Result<WorkloadRef, RollbackError> {
        let deployment = self
            .deployments
            .get_opt(&name)
            .await
            .map_err(api_error(format!("reading Deployment {name}")))?;
        let skip = match &deployment {
            None => Some("not found".to_string()),
            Some(d) if d.spec.as_ref().and_then(|s| s.paused) == Some(true) => Some(
                "it is paused (kubectl rollout pause): a restart would not roll out; resume it first"
                    .to_string(),
            ),
            Some(_) => None,
        };
        Ok(WorkloadRef {
            kind: "Deployment".into(),
            name,
            skip,
        })
    }
}

/// `kubectl rollout restart`: the template's `restartedAt` annotation set
/// to now; then waits until the workload is available again.
async fn restart(
    client: &kube::Client,
    ns: &str,
    row: &WorkloadRow,
    timeout: Duration,
) -> Result<(), RollbackError> {
    let workload = format!("{}/{}", row.kind, row.name);
    let patch = json!({"spec": {"template": {"metadata": {"annotations": {
        RESTARTED_AT: Timestamp::now().to_string(),
    }}}}});
    let params = PatchParams::default();
    let action = format!("restarting {workload}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let is_deployment = row.kind == "Deployment";
    if is_deployment {
        deployments
            .patch(&row.name, &params, &Patch::Merge(&patch))
            .await
            .map_err(api_error(action))?;
    } else {
        statefulsets
            .patch(&row.name, &params, &Patch::Merge(&patch))
            .await
            .map_err(api_error(action))?;
    }
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let read = format!("reading {workload}");
        let progress = if is_deployment {
            deployments
                .get_opt(&row.name)
                .await
                .map_err(api_error(read))?
                .map(|d| deployment_progress(&d))
        } else {
            statefulsets
                .get_opt(&row.name)
                .await
                .map_err(api_error(read))?
                .map(|s| statefulset_progress(&s))
        };
        match progress {
            None => return Err(RollbackError::Gone { workload }),
            Some(Progress::Available) => return Ok(()),
            Some(Progress::Failed(message)) => {
                return Err(RollbackError::RolloutFailed { workload, message });
            }
            Some(Progress::Waiting(now)) => {
                if started.elapsed() >= timeout {
                    return Err(RollbackError::Timeout {
                        workload,
                        timeout,
                        progress: now,
                    });
                }
                if now != last {
                    eprintln!("{workload}: {now}");
                    last = now;
                }
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::ramp::RAMP_ANNOTATION;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn pod(kind: &str, name: &str, skip: Option<&str>, on_target: bool) -> PodFacts {
        PodFacts {
            workload: WorkloadRef {
                kind: kind.into(),
                name: name.into(),
                skip: skip.map(Into::into),
            },
            on_target,
        }
    }

    #[test]
    fn the_rollout_goes_to_zero_and_a_ramp_is_paused_there() {
        let now: Timestamp = "2026-12-04T10:00:00Z".parse().unwrap();
        let labels = map(&[(MODE_LABEL, "enforce")]);
        let annotations = map(&[
            (ROLLOUT_ANNOTATION, "100"),
            (RAMP_ANNOTATION, "10,50,100"),
            ("archway.dev/ramp-step", "24h"),
        ]);
        let (before, patch) =
            plan_namespace("shop", &labels, &annotations, Rollout::NONE, now).unwrap();
        assert_eq!(before, 100);
        assert_eq!(patch[ROLLOUT_ANNOTATION], "0");
        let status = &patch[RAMP_STATUS_ANNOTATION];
        assert_eq!(
            status,
            "paused at 0% since 2026-12-04T10:00:00Z: rolled back by archway rollback; remove this annotation to resume"
        );
        // The autopilot reads it back as paused: it stays where it is.
        let parsed = Status::parse(status).unwrap();
        assert_eq!((parsed.state, parsed.rollout), (State::Paused, 0));

        // No ramp (or one that does not parse): the rollout alone.
        let plain = map(&[(ROLLOUT_ANNOTATION, "30"), (RAMP_ANNOTATION, "x")]);
        let (before, patch) = plan_namespace("shop", &labels, &plain, Rollout::NONE, now).unwrap();
        assert_eq!(before, 30);
        assert_eq!(patch.keys().collect::<Vec<_>>(), [ROLLOUT_ANNOTATION]);
        // The default rollout when the namespace names none.
        let (before, _) =
            plan_namespace("shop", &labels, &BTreeMap::new(), Rollout::ALL, now).unwrap();
        assert_eq!(before, 100);
    }

    #[test]
    fn a_namespace_not_opted_in_is_an_error_that_says_so() {
        let now = Timestamp::now();
        let none = plan_namespace("web", &BTreeMap::new(), &BTreeMap::new(), Rollout::ALL, now)
            .unwrap_err()
            .to_string();
        assert!(
            none.starts_with(
                "namespace web is not opted in to archway (label archway.dev/mode is missing)"
            ),
            "{none}"
        );
        let wrong = map(&[(MODE_LABEL, "on")]);
        let text = plan_namespace("web", &wrong, &BTreeMap::new(), Rollout::ALL, now)
            .unwrap_err()
            .to_string();
        assert!(text.contains("is \"on\", not enforce or audit"), "{text}");
    }

    #[test]
    fn only_workloads_with_pods_on_the_target_are_listed() {
        let pods = [
            pod("Deployment", "web", None, true),
            pod("Deployment", "web", None, false),
            pod("Deployment", "web", None, true),
            pod("Deployment", "idle", None, false),
            pod("StatefulSet", "db", None, true),
            pod("DaemonSet", "agent", Some(DAEMONSET_SKIP), true),
            pod("DaemonSet", "agent", Some(DAEMONSET_SKIP), false),
            pod("DaemonSet", "x86", Some(DAEMONSET_SKIP), false),
        ];
        let (rows, skipped) = tally(&pods);
        let rows: Vec<(&str, &str, usize, usize)> = rows
            .iter()
            .map(|r| (r.kind.as_str(), r.name.as_str(), r.on_target, r.pods))
            .collect();
        assert_eq!(
            rows,
            [("Deployment", "web", 2, 3), ("StatefulSet", "db", 1, 1)]
        );
        assert_eq!(skipped.len(), 1);
        assert_eq!(
            (
                skipped[0].name.as_str(),
                skipped[0].on_target,
                skipped[0].pods
            ),
            ("agent", 1, 2)
        );
        assert!(tally(&[]).0.is_empty());
    }

    #[test]
    fn a_deployment_is_available_when_every_replica_is_new_and_available() {
        let deployment = |generation: i64, status: serde_json::Value| -> Deployment {
            serde_json::from_value(json!({
                "metadata": {"name": "web", "generation": generation},
                "spec": {"replicas": 4, "selector": {}, "template": {}},
                "status": status,
            }))
            .unwrap()
        };
        let seen = |status| deployment_progress(&deployment(3, status));
        assert!(matches!(
            seen(
                json!({"observedGeneration": 2, "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4})
            ),
            Progress::Waiting(_)
        ));
        assert_eq!(
            seen(
                json!({"observedGeneration": 3, "replicas": 6, "updatedReplicas": 2, "availableReplicas": 4})
            ),
            Progress::Waiting("2/4 updated, 4/4 available, 4 old".into())
        );
        assert!(matches!(
            seen(
                json!({"observedGeneration": 3, "replicas": 5, "updatedReplicas": 4, "availableReplicas": 4})
            ),
            Progress::Waiting(_)
        ));
        assert_eq!(
            seen(
                json!({"observedGeneration": 3, "replicas": 4, "updatedReplicas": 4, "availableReplicas": 4})
            ),
            Progress::Available
        );
        assert_eq!(
            seen(
                json!({"observedGeneration": 3, "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet \"web-1\" has timed out progressing."}]})
            ),
            Progress::Failed("ReplicaSet \"web-1\" has timed out progressing.".into())
        );
        // No status at all: waiting, never a panic.
        let bare: Deployment = serde_json::from_value(json!({"metadata": {}})).unwrap();
        assert!(matches!(deployment_progress(&bare), Progress::Waiting(_)));
    }

    #[test]
    fn a_statefulset_is_available_when_its_update_revision_is_current() {
        let set = |status: serde_json::Value| -> StatefulSet {
            serde_json::from_value(json!({
                "metadata": {"name": "db", "generation": 2},
                "spec": {"replicas": 2, "selector": {}, "serviceName": "db", "template": {}},
                "status": status,
            }))
            .unwrap()
        };
        let ready = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                           "availableReplicas": 2, "currentRevision": "db-2", "updateRevision": "db-2"});
        assert_eq!(statefulset_progress(&set(ready)), Progress::Available);
        let rolling = json!({"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 2,
                             "currentRevision": "db-1", "updateRevision": "db-2"});
        assert_eq!(
            statefulset_progress(&set(rolling)),
            Progress::Waiting("1/2 updated, 2/2 ready".into())
        );
    }

    #[test]
    fn the_table_says_what_was_done_and_what_was_not() {
        let report = Report {
            namespace: "shop".into(),
            target_architecture: "arm64".into(),
            dry_run: true,
            rollout_before: 100,
            rollout: 0,
            ramp_status: None,
            workloads: vec![WorkloadRow {
                kind: "Deployment".into(),
                name: "web".into(),
                on_target: 4,
                pods: 4,
                restart: Some(Restart::WouldRestart),
            }],
            not_restarted: vec![Skipped {
                kind: "DaemonSet".into(),
                name: "agent".into(),
                on_target: 1,
                pods: 3,
                reason: DAEMONSET_SKIP.into(),
            }],
        };
        let table = render_table(&report);
        assert!(
            table.starts_with(
                "namespace shop: would set archway.dev/rollout from 100% to 0%\nramp: none\n"
            ),
            "{table}"
        );
        assert!(table.contains("WORKLOAD        ON ARM64  PODS  RESTART\nDeployment/web  4         4     would restart\n"), "{table}");
        assert!(
            table.contains("not restarted: DaemonSet/agent (1 of 3 pods on arm64): a DaemonSet runs one pod per node"),
            "{table}"
        );
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["workloads"][0]["restart"],
            json!({"state": "would-restart"})
        );
    }
}

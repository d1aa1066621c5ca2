//! `archway review -f FILE`: what archway would do to the pods and pod
//! templates of a YAML file, through the very code path of the webhook.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::admission::Reviewer;
use crate::admission::pod::PodView;
use crate::config::Config;
use crate::decision::placement;
use crate::decision::policy::{Mode, NamespacePolicy, PolicySource, Rollout, StaticPolicies};
use crate::report::Format;

/// Offline, every namespace is treated as enforced (the file's namespaces
/// need not exist), with the configured policy where there is one.
struct ReviewPolicies {
    configured: StaticPolicies,
    rollout: Option<Rollout>,
}

impl PolicySource for ReviewPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        let mut policy = self.configured.policy(namespace).unwrap_or_else(|| {
            NamespacePolicy::opted_in(Mode::Enforce, self.configured.default_rollout)
        });
        // Offline there is nothing to dry-run: show what enforce would do.
        policy.mode = Mode::Enforce;
        if let Some(rollout) = self.rollout {
            policy.rollout = rollout;
        }
        Some(policy)
    }
}

/// One pod or pod template of the file, and what archway would do to it.
/// Fields in alphabetical order: the JSON output keeps the order it had.
#[derive(Debug, Clone, Serialize)]
pub struct ReviewRow {
    pub allowed: bool,
    pub architectures: Option<BTreeSet<String>>,
    /// `DecisionKind::label`.
    pub decision: &'static str,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub patched: bool,
    pub reason: String,
    /// What archway touches, after its patch: annotations, affinity,
    /// tolerations.
    pub spec: Value,
    pub warnings: Vec<String>,
}

/// Where a kind keeps its pod template.
fn template_path(kind: &str) -> Option<&'static [&'static str]> {
    match kind {
        "Pod" => Some(&[]),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some(&["spec", "template"]),
        "CronJob" => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

pub async fn run(
    config: &Config,
    file: &Path,
    default_namespace: &str,
    rollout: Option<Rollout>,
    format: Format,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let policies = Arc::new(ReviewPolicies {
        configured: config.static_policies(),
        rollout,
    });
    // Nothing serves the command's metrics: a registry of its own.
    let metrics = Arc::new(crate::metrics::Metrics::default());
    let reviewer = crate::setup::reviewer(&crate::setup::offline(config), policies, metrics)?;
    let nodes = assumed_nodes(config);
    let mut rows = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| anyhow::anyhow!("{}: document {}: {e}", file.display(), index + 1))?;
        if value.is_null() {
            continue;
        }
        for object in flatten_lists(value) {
            if let Some(row) =
                review_object(&reviewer, &nodes, &object, default_namespace, index).await?
            {
                rows.push(row);
            }
        }
    }
    let denied = rows.iter().any(|r| !r.allowed);
    match format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Format::Table => print!("{}", render_table(&rows)?),
        Format::Html => anyhow::bail!("review writes a table or JSON, not HTML"),
    }
    Ok(if denied {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// One line per object, its warnings, and what a patch would set.
fn render_table(rows: &[ReviewRow]) -> anyhow::Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&format!(
            "{} {}/{}: {} ({})\n",
            row.kind, row.namespace, row.name, row.decision, row.reason
        ));
        for warning in &row.warnings {
            out.push_str(&format!("  warning: {warning}\n"));
        }
        if row.patched {
            for line in serde_yaml::to_string(&row.spec)?.trim_end().lines() {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    Ok(out)
}

/// Offline there are no nodes to look at: a DaemonSet is checked against
/// one node of each architecture the configuration places pods on, the
/// target's tainted as its configured tolerations say (the pool a
/// migration adds is reserved so), the others untainted.
fn assumed_nodes(config: &Config) -> placement::Nodes {
    let linux_arch = |key: &str| match key.split_once('/') {
        Some((os, arch)) => (os == placement::LINUX).then(|| arch.to_string()),
        None => Some(key.to_string()),
    };
    let mut archs: BTreeSet<String> = config
        .tolerations
        .keys()
        .filter_map(|k| linux_arch(k))
        .collect();
    archs.insert(config.target_architecture.clone());
    let nodes = archs
        .into_iter()
        .map(|arch| {
            let taints = match arch == config.target_architecture {
                true => {
                    placement::configured_tolerations(&config.tolerations, placement::LINUX, &arch)
                        .iter()
                        .filter_map(|t| {
                            Some(placement::NodeTaint {
                                key: t.key.clone()?,
                                value: t.value.clone().unwrap_or_default(),
                                effect: t.effect.clone().unwrap_or_else(|| "NoSchedule".into()),
                            })
                        })
                        .collect()
                }
                false => Vec::new(),
            };
            let node = placement::NodeArch {
                architecture: arch.clone(),
                taints,
                ..placement::NodeArch::default()
            };
            (format!("any {arch} node"), node)
        })
        .collect();
    placement::Nodes::new(&nodes)
}

/// The DaemonSet pod's mismatch with the nodes it would run on (offline:
/// [`assumed_nodes`]). Its images were just looked up: the cache answers.
async fn daemon_set_mismatch(
    reviewer: &Reviewer,
    nodes: &placement::Nodes,
    pod: &Value,
    namespace: &str,
    uid: &str,
) -> Option<String> {
    let typed: k8s_openapi::api::core::v1::Pod = serde_json::from_value(pod.clone()).ok()?;
    let policy = reviewer.policies.policy(namespace)?;
    let deadline = tokio::time::Instant::now() + reviewer.settings.time_budget;
    let evaluation = reviewer
        .evaluate(&typed, &policy, deadline, uid, None)
        .await;
    placement::daemon_set_mismatch(&typed, &evaluation.lookups, nodes)
}

/// A `kind: List` holds its objects in `items`.
fn flatten_lists(value: Value) -> Vec<Value> {
    if value["kind"] == "List" {
        value["items"].as_array().cloned().unwrap_or_default()
    } else {
        vec![value]
    }
}

async fn review_object(
    reviewer: &Reviewer,
    nodes: &placement::Nodes,
    object: &Value,
    default_namespace: &str,
    index: usize,
) -> anyhow::Result<Option<ReviewRow>> {
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let Some(path) = template_path(&kind) else {
        return Ok(None);
    };
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let namespace = object["metadata"]["namespace"]
        .as_str()
        .unwrap_or(default_namespace)
        .to_string();
    let mut pod = path.iter().fold(object, |v, key| &v[*key]).clone();
    if !pod.is_object() {
        return Ok(None);
    }
    if kind != "Pod" && pod["metadata"]["name"].is_null() {
        pod["metadata"]["generateName"] = json!(format!("{name}-"));
    }
    if kind == "DaemonSet" {
        // Judged as its pods are: pinned by their DaemonSet.
        pod["metadata"]["ownerReferences"] = json!([placement::daemon_set_owner(&name)]);
    }
    // Read as the webhook reads it, so the answer is the webhook's.
    let typed = serde_json::from_value::<PodView>(pod.clone())
        .map(PodView::into_pod)
        .map_err(|e| e.to_string());
    let uid = format!("review-{index}-{name}");
    let (answer, record) = reviewer
        .review_pod(typed, &namespace, &uid)
        .await
        .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
    let mut response = answer.response;
    if kind == "DaemonSet"
        && let Some(mismatch) = daemon_set_mismatch(reviewer, nodes, &pod, &namespace, &uid).await
    {
        response
            .warnings
            .push(format!("DaemonSet {namespace}/{name} {mismatch}"));
    }
    if let Some(patch) = &response.patch {
        let patch: json_patch::Patch = serde_json::from_slice(patch)?;
        json_patch::patch(&mut pod, &patch)?;
    }
    Ok(Some(ReviewRow {
        allowed: response.allowed,
        architectures: record.architectures,
        decision: record.kind.label(),
        kind,
        name,
        namespace,
        patched: response.patch.is_some(),
        reason: record.reason,
        spec: json!({"metadata": {"annotations": pod["metadata"]["annotations"]}, "spec": {
        "affinity": pod["spec"]["affinity"], "tolerations": pod["spec"]["tolerations"]}}),
        warnings: response.warnings,
    }))
}

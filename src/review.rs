//! `archway review -f FILE`: what archway would do to the pods and pod
//! templates of a YAML file, through the very code path of the webhook.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::Reviewer;
use crate::cli::Output;
use crate::config::Config;
use crate::policy::{Mode, NamespacePolicy, PolicySource, Rollout, StaticPolicies};

/// Offline, every namespace is treated as enforced (the file's namespaces
/// need not exist), with the configured policy where there is one.
struct ReviewPolicies {
    configured: StaticPolicies,
    rollout: Option<Rollout>,
}

impl PolicySource for ReviewPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        let mut policy = self
            .configured
            .policy(namespace)
            .unwrap_or(NamespacePolicy {
                mode: Mode::Enforce,
                rollout: self.configured.default_rollout,
                rollout_by: Default::default(),
                placement: Default::default(),
                problems: Vec::new(),
            });
        // Offline there is nothing to dry-run: show what enforce would do.
        policy.mode = Mode::Enforce;
        if let Some(rollout) = self.rollout {
            policy.rollout = rollout;
        }
        Some(policy)
    }
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
    output: Output,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let policies = Arc::new(ReviewPolicies {
        configured: config.static_policies(),
        rollout,
    });
    let mut config = config.clone();
    // An offline review has no webhook timeout to meet.
    config.time_budget = config.registry.request_timeout * 2;
    let reviewer = Reviewer::from_config(&config, policies)?;
    let mut results = Vec::new();
    for (index, document) in serde_yaml::Deserializer::from_str(&text).enumerate() {
        let value = Value::deserialize(document)
            .map_err(|e| anyhow::anyhow!("{}: document {}: {e}", file.display(), index + 1))?;
        if value.is_null() {
            continue;
        }
        for object in flatten_lists(value) {
            if let Some(result) =
                review_object(&reviewer, &object, default_namespace, index).await?
            {
                results.push(result);
            }
        }
    }
    let denied = results.iter().any(|r| r["allowed"] == false);
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&results)?),
        Output::Table => {
            for result in &results {
                println!(
                    "{} {}/{}: {} ({})",
                    result["kind"].as_str().unwrap_or(""),
                    result["namespace"].as_str().unwrap_or(""),
                    result["name"].as_str().unwrap_or(""),
                    result["decision"].as_str().unwrap_or(""),
                    result["reason"].as_str().unwrap_or("")
                );
                for warning in result["warnings"].as_array().into_iter().flatten() {
                    println!("  warning: {}", warning.as_str().unwrap_or(""));
                }
                if result["patched"] == true {
                    println!(
                        "{}",
                        serde_yaml::to_string(&result["spec"])?
                            .trim_end()
                            .lines()
                            .map(|l| format!("  {l}"))
                            .collect::<Vec<_>>()
                            .join("\n")
                    );
                }
            }
        }
    }
    Ok(if denied {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
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
    object: &Value,
    default_namespace: &str,
    index: usize,
) -> anyhow::Result<Option<Value>> {
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
    if kind != "Pod" {
        pod["apiVersion"] = json!("v1");
        pod["kind"] = json!("Pod");
        if pod["metadata"]["name"].is_null() {
            pod["metadata"]["generateName"] = json!(format!("{name}-"));
        }
    }
    let review = json!({
        "apiVersion": crate::admission::API_VERSION,
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("review-{index}-{name}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "operation": "CREATE",
            "namespace": namespace,
            "name": if kind == "Pod" { name.clone() } else { String::new() },
            "object": pod,
        }
    });
    let (answer, record) = reviewer
        .review(&serde_json::to_vec(&review)?)
        .await
        .map_err(|e| anyhow::anyhow!("{kind} {name}: {e}"))?;
    let response = &answer.response;
    let mut patched = pod.clone();
    if let Some(patch) = &response.patch {
        let bytes = base64::engine::general_purpose::STANDARD.decode(patch)?;
        let patch: json_patch::Patch = serde_json::from_slice(&bytes)?;
        json_patch::patch(&mut patched, &patch)?;
    }
    let mut result = BTreeMap::new();
    result.insert("kind", json!(kind));
    result.insert("namespace", json!(namespace));
    result.insert("name", json!(name));
    result.insert("decision", json!(record.kind.label()));
    result.insert("reason", json!(record.reason));
    result.insert("allowed", json!(response.allowed));
    result.insert("patched", json!(response.patch.is_some()));
    result.insert("warnings", json!(response.warnings));
    result.insert("architectures", json!(record.architectures));
    result.insert(
        "spec",
        json!({"metadata": {"annotations": patched["metadata"]["annotations"]}, "spec": {
        "affinity": patched["spec"]["affinity"], "tolerations": patched["spec"]["tolerations"]}}),
    );
    Ok(Some(json!(result)))
}

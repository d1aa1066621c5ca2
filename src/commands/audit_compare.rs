//! `archway audit`, continued: each workload's pods compared per
//! architecture (`decision::compare`), and what their requests cost now,
//! all on amd64, and with every movable workload on the target
//! (`decision::cost`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use serde::Serialize;

use super::{AuditReport, WorkloadRow, escape};
use crate::decision::compare::{self, Judgement, PodSample, Resource, Side, Spread, Verdict};
use crate::decision::cost::{self, CostConfig, Requests, Savings, WorkloadCost};

/// A workload's pods side by side per architecture of their node.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    /// Per architecture: its pods, ready, restarts, exec format errors,
    /// seconds from creation to ready, and CPU (millicores) and memory (MiB)
    /// in use per pod, each a mean and p90.
    pub sides: BTreeMap<String, Side>,
    /// The target architecture, judged against `other`.
    pub target: String,
    /// The other architecture with the most pods (amd64 when there is
    /// none).
    pub other: String,
    /// `too_few_pods`, `even`, `target_worse` or `other_worse`, with `why`.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// The worse architecture, when one is.
    pub worse: Option<String>,
    /// The verdict in a few words: `arm64 worse: ...`, `no difference`.
    pub summary: String,
    /// The sides on CPU in use per pod; `null` without figures (the
    /// report's `usage` says why).
    pub cpu: Option<UsageComparison>,
    /// The same for memory.
    pub memory: Option<UsageComparison>,
}

/// One resource's use per pod, judged like the rest
/// ([`compare::judge_usage`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageComparison {
    #[serde(flatten)]
    pub verdict: Verdict,
    pub worse: Option<String>,
    /// `arm64 worse: pods on arm64 use 80% more CPU than on amd64 (...)`.
    pub summary: String,
}

/// The architecture a side is called against when the target has no
/// other.
fn baseline(target: &str) -> &'static str {
    if target == "amd64" { "arm64" } else { "amd64" }
}

/// Compares `samples` (one workload's pods); `None` without pods.
pub fn comparison(samples: &[PodSample], target: &str) -> Option<Comparison> {
    if samples.is_empty() {
        return None;
    }
    let grouped = compare::by_architecture(samples);
    let sides: BTreeMap<String, Side> = (grouped.iter())
        .map(|(arch, pods)| (arch.to_string(), Side::of(pods.iter().copied())))
        .collect();
    let other = (sides.iter())
        .filter(|(arch, _)| *arch != target)
        .max_by_key(|(arch, side)| (side.pods, std::cmp::Reverse(arch.as_str())))
        .map_or(baseline(target).to_string(), |(arch, _)| arch.clone());
    let empty = Side::of(&[]);
    let (on_target, on_other) = (
        sides.get(target).unwrap_or(&empty),
        sides.get(&other).unwrap_or(&empty),
    );
    let how = Judgement::default();
    let verdict = compare::judge(target, on_target, &other, on_other, &how);
    let (worse, summary) = named(&verdict, target, &other);
    let usage = |resource| {
        let verdict = compare::judge_usage(resource, target, on_target, &other, on_other, &how)?;
        let (worse, summary) = named(&verdict, target, &other);
        Some(UsageComparison {
            verdict,
            worse,
            summary,
        })
    };
    Some(Comparison {
        cpu: usage(Resource::Cpu),
        memory: usage(Resource::Memory),
        sides,
        target: target.to_string(),
        other,
        verdict,
        worse,
        summary,
    })
}

/// The worse side, if any, and the verdict in a few words.
fn named(verdict: &Verdict, target: &str, other: &str) -> (Option<String>, String) {
    match verdict {
        Verdict::TargetWorse(why) => (Some(target.to_string()), format!("{target} worse: {why}")),
        Verdict::OtherWorse(why) => (Some(other.to_string()), format!("{other} worse: {why}")),
        Verdict::TooFewPods(why) => (None, why.clone()),
        Verdict::Even => (None, "no difference".into()),
    }
}

/// A pod's requested CPU (cores) and memory (GiB): its containers' sum, or
/// its largest init container's where that is more.
pub fn requests_of(pod: &Pod) -> Requests {
    let Some(spec) = pod.spec.as_ref() else {
        return Requests::default();
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        let get = |name: &str| {
            requests
                .and_then(|r| r.get(name))
                .and_then(quantity)
                .unwrap_or(0.0)
        };
        Requests {
            cpu_cores: get("cpu"),
            memory_gib: get("memory") / GIB,
        }
    };
    let sum = (spec.containers.iter()).fold(Requests::default(), |sum, c| sum + of(c));
    (spec.init_containers.iter().flatten()).fold(sum, |max, c| {
        let init = of(c);
        Requests {
            cpu_cores: max.cpu_cores.max(init.cpu_cores),
            memory_gib: max.memory_gib.max(init.memory_gib),
        }
    })
}

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A Kubernetes quantity as a number ([`compare::parse_quantity`]): `250m`
/// is 0.25, `1Gi` 2^30; `None` for a malformed one.
pub fn quantity(q: &Quantity) -> Option<f64> {
    compare::parse_quantity(&q.0)
}

/// The cost of the workloads' requests, per namespace and in total.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CostReport {
    /// The `cost.currency` label, when set.
    pub currency: Option<String>,
    pub hours_per_month: f64,
    pub target: String,
    /// What "all on" means: amd64 (arm64 when amd64 is the target).
    pub baseline: String,
    /// Per namespace: `requests` per architecture (of running pods, CPU in
    /// cores, memory in GiB), the monthly cost `now`, `all_on_baseline`,
    /// `all_movable_on_target` (every workload whose images run on the
    /// target moved there), and the `blocked` workloads.
    pub namespaces: BTreeMap<String, Savings>,
    pub total: Savings,
}

/// Prices `rows` by `config`.
pub fn cost_report(rows: &[WorkloadRow], config: &CostConfig, target: &str) -> CostReport {
    let names: Vec<String> = (rows.iter())
        .map(|w| format!("{}/{}/{}", w.namespace, w.kind, w.name))
        .collect();
    let workloads: Vec<(String, WorkloadCost<'_>)> = (rows.iter().zip(&names))
        .map(|(w, name)| {
            (
                w.namespace.clone(),
                WorkloadCost {
                    name,
                    running: w.requests.clone(),
                    movable: w.target_ready,
                },
            )
        })
        .collect();
    let mut per_namespace: BTreeMap<&str, Vec<WorkloadCost<'_>>> = BTreeMap::new();
    for (namespace, workload) in &workloads {
        per_namespace
            .entry(namespace)
            .or_default()
            .push(workload.clone());
    }
    let base = baseline(target);
    let all: Vec<WorkloadCost<'_>> = workloads.iter().map(|(_, w)| w.clone()).collect();
    CostReport {
        currency: config.currency.clone(),
        hours_per_month: cost::HOURS_PER_MONTH,
        target: target.to_string(),
        baseline: base.to_string(),
        namespaces: (per_namespace.into_iter())
            .map(|(ns, w)| (ns.to_string(), cost::savings(config, &w, target, base)))
            .collect(),
        total: cost::savings(config, &all, target, base),
    }
}

pub(super) fn money(figure: &Result<f64, cost::MissingPrice>, currency: Option<&str>) -> String {
    match (figure, currency) {
        (Ok(amount), Some(currency)) => format!("{amount:.2} {currency}"),
        (Ok(amount), None) => format!("{amount:.2}"),
        (Err(missing), _) => missing.to_string(),
    }
}

/// `1.5 vCPU 3.0 GiB amd64; 0.5 vCPU 1.0 GiB arm64`.
fn requests_text(requests: &BTreeMap<String, Requests>) -> String {
    if requests.is_empty() {
        return "none".into();
    }
    (requests.iter())
        .map(|(arch, r)| format!("{} vCPU {:.1} GiB {arch}", trim(r.cpu_cores), r.memory_gib))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A number with at most 3 decimals, trailing zeros off.
fn trim(n: f64) -> String {
    let text = format!("{n:.3}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// `4 amd64, 4 arm64`, one figure per side.
pub(super) fn per_side(c: &Comparison, figure: impl Fn(&Side) -> String) -> String {
    (c.sides.iter())
        .map(|(arch, side)| format!("{} {arch}", figure(side)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn seconds(side: &Side) -> String {
    side.seconds_to_ready.map_or("-".into(), |s| {
        format!("{}s/{}s", trim(s.mean), trim(s.p90))
    })
}

/// `250m/400m` (mean/p90) for one side's CPU or memory, `-` unmeasured.
fn usage_text(resource: Resource, spread: Option<Spread>) -> String {
    spread.map_or("-".into(), |s| {
        format!("{}/{}", resource.amount(s.mean), resource.amount(s.p90))
    })
}

/// The verdicts on CPU and memory, `-` without figures.
pub(super) fn usage_verdicts(c: &Comparison) -> String {
    let parts: Vec<String> = [("CPU", &c.cpu), ("memory", &c.memory)]
        .into_iter()
        .filter_map(|(name, u)| Some(format!("{name}: {}", u.as_ref()?.summary)))
        .collect();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

pub(super) fn cpu(side: &Side) -> String {
    usage_text(Resource::Cpu, side.cpu_millicores)
}

pub(super) fn memory(side: &Side) -> String {
    usage_text(Resource::Memory, side.memory_mib)
}

/// The workloads with pods on two architectures or more.
fn compared(report: &AuditReport) -> Vec<(&WorkloadRow, &Comparison)> {
    (report.workloads.iter())
        .filter_map(|w| Some((w, w.comparison.as_ref()?)))
        .filter(|(_, c)| c.sides.len() >= 2)
        .collect()
}

/// "Architectures compared" and the cost, as tables after the others.
pub fn tables(report: &AuditReport) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 11]> = compared(report)
        .into_iter()
        .map(|(w, c)| {
            [
                w.namespace.clone(),
                format!("{}/{}", w.kind, w.name),
                per_side(c, |s| s.pods.to_string()),
                per_side(c, |s| format!("{}/{}", s.ready, s.pods)),
                per_side(c, |s| format!("{:.2}", s.restarts_per_pod_hour)),
                per_side(c, |s| s.exec_format_errors.to_string()),
                per_side(c, seconds),
                per_side(c, cpu),
                per_side(c, memory),
                usage_verdicts(c),
                c.summary.clone(),
            ]
        })
        .collect();
    if !rows.is_empty() {
        out.push_str(&format!(
            "\nArchitectures compared (workloads with pods on two architectures; {}):\n",
            report.usage.note
        ));
        out.push_str(&crate::report::table(
            &[
                "NAMESPACE",
                "WORKLOAD",
                "PODS",
                "READY",
                "RESTARTS/POD-HOUR",
                "EXEC FORMAT ERRORS",
                "TO READY (MEAN/P90)",
                "CPU PER POD (MEAN/P90)",
                "MEMORY PER POD (MEAN/P90)",
                "CPU AND MEMORY",
                "VERDICT",
            ],
            &rows,
        ));
    }
    let cost = &report.cost;
    let currency = cost.currency.as_deref();
    let line = |name: &str, s: &Savings| {
        [
            name.to_string(),
            requests_text(&s.requests),
            money(&s.now, currency),
            money(&s.all_on_baseline, currency),
            money(&s.all_movable_on_target, currency),
            if s.blocked.is_empty() {
                "-".into()
            } else {
                s.blocked.join(", ")
            },
        ]
    };
    let mut rows: Vec<[String; 6]> = (cost.namespaces.iter())
        .map(|(ns, s)| line(ns, s))
        .collect();
    rows.push(line("TOTAL", &cost.total));
    out.push_str(&format!(
        "\nRequested resources of running pods and their monthly cost ({} hours; prices from cost: in the configuration):\n",
        cost.hours_per_month
    ));
    let all_on = format!("ALL ON {}", cost.baseline);
    let moved = format!("ALL MOVABLE ON {}", cost.target);
    out.push_str(&crate::report::table(
        &[
            "NAMESPACE",
            "REQUESTED",
            "NOW",
            all_on.as_str(),
            moved.as_str(),
            "BLOCKED",
        ],
        &rows,
    ));
    out
}

/// The same two as sections of the page.
pub fn html(report: &AuditReport) -> String {
    let mut html = String::new();
    let compared = compared(report);
    if !compared.is_empty() {
        html.push_str(&format!(
            "<h2 id=\"compared\">Architectures compared</h2>\
<p>Workloads with pods on two architectures, side by side. <span class=\"usage-note\">{note}</span>.</p>\
<table class=\"compared\"><thead><tr><th>Namespace</th><th>Workload</th><th>Pods</th><th>Ready</th>\
<th>Restarts per pod-hour</th><th>Exec format errors</th><th>To ready (mean/p90)</th>\
<th>CPU per pod (mean/p90)</th><th>Memory per pod (mean/p90)</th><th>CPU and memory</th><th>Verdict</th></tr></thead><tbody>",
            note = escape(&report.usage.note),
        ));
        for (w, c) in compared {
            let usage_worse = [&c.cpu, &c.memory]
                .into_iter()
                .any(|u| u.as_ref().is_some_and(|u| u.worse.is_some()));
            html.push_str(&format!(
                "<tr class=\"compared\"><td>{ns}</td><td>{kind}/{name}</td><td>{pods}</td><td>{ready}</td>\
<td>{restarts}</td><td>{exec}</td><td>{to_ready}</td><td class=\"cpu\">{cpu}</td><td class=\"memory\">{memory}</td>\
<td class=\"usage {usage_class}\">{usage}</td><td class=\"{class}\">{summary}</td></tr>",
                ns = escape(&w.namespace),
                kind = escape(&w.kind),
                name = escape(&w.name),
                pods = escape(&per_side(c, |s| s.pods.to_string())),
                ready = escape(&per_side(c, |s| format!("{}/{}", s.ready, s.pods))),
                restarts = escape(&per_side(c, |s| format!("{:.2}", s.restarts_per_pod_hour))),
                exec = escape(&per_side(c, |s| s.exec_format_errors.to_string())),
                to_ready = escape(&per_side(c, seconds)),
                cpu = escape(&per_side(c, cpu)),
                memory = escape(&per_side(c, memory)),
                usage_class = if usage_worse { "no" } else { "" },
                usage = escape(&usage_verdicts(c)),
                class = if c.worse.is_some() { "no" } else { "" },
                summary = escape(&c.summary),
            ));
        }
        html.push_str("</tbody></table>");
    }
    let cost = &report.cost;
    let currency = cost.currency.as_deref();
    html.push_str(&format!(
        "<h2 id=\"cost\">Cost</h2><p>Requested CPU and memory of running pods, priced for a month of {} hours \
by <code>cost:</code> in the configuration.</p>\
<table class=\"cost\"><thead><tr><th>Namespace</th><th>Requested</th><th>Now</th><th>All on {base}</th>\
<th>All movable on {target}</th><th>Blocked</th></tr></thead><tbody>",
        cost.hours_per_month,
        base = escape(&cost.baseline),
        target = escape(&cost.target),
    ));
    let total = ("TOTAL".to_string(), &cost.total);
    for (ns, s) in (cost.namespaces.iter())
        .map(|(n, s)| (n.clone(), s))
        .chain([total])
    {
        html.push_str(&format!(
            "<tr class=\"cost\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&ns),
            escape(&requests_text(&s.requests)),
            escape(&money(&s.now, currency)),
            escape(&money(&s.all_on_baseline, currency)),
            escape(&money(&s.all_movable_on_target, currency)),
            escape(&s.blocked.join(", ")),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn pod(json: serde_json::Value) -> Pod {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_pod_is_read_from_its_status_and_requests_from_its_spec() {
        let p = pod(serde_json::json!({
            "metadata": {"name": "p", "creationTimestamp": "2026-12-04T10:00:00Z"},
            "spec": {
                "containers": [
                    {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
                    {"name": "b", "resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
                ],
                "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2"}}}],
            },
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-04T10:00:07Z"}],
                "containerStatuses": [
                    {"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 2},
                    {"name": "b", "image": "x", "imageID": "", "ready": true, "restartCount": 1,
                     "lastState": {"terminated": {"exitCode": 1, "message": "exec /app: exec format error"}}},
                ],
            },
        }));
        let now: Timestamp = "2026-12-04T11:00:00Z".parse().unwrap();
        let s = PodSample::of_pod(&p, "arm64", now);
        assert_eq!((s.ready, s.restarts, s.exec_format_error), (true, 3, true));
        assert_eq!(s.age, Duration::from_secs(3600));
        assert_eq!(s.time_to_ready, Some(Duration::from_secs(7)));
        assert_eq!((s.cpu_cores, s.memory_bytes), (None, None));
        let r = requests_of(&p);
        assert_eq!((r.cpu_cores, r.memory_gib), (2.0, 1.5));
        for (text, want) in [
            ("100m", 0.1),
            ("1e3", 1000.0),
            ("1k", 1000.0),
            ("2Ki", 2048.0),
        ] {
            assert_eq!(quantity(&Quantity(text.into())), Some(want), "{text}");
        }
        assert_eq!(quantity(&Quantity("lots".into())), None);
    }

    #[test]
    fn the_comparison_names_the_worse_side_and_serializes_flat() {
        let young = |arch: &str, restarts: u32| PodSample {
            architecture: arch.into(),
            ready: true,
            restarts,
            exec_format_error: false,
            age: Duration::from_secs(60),
            time_to_ready: Some(Duration::from_secs(5)),
            cpu_cores: None,
            memory_bytes: None,
        };
        let mut pods: Vec<PodSample> = (0..4).map(|_| young("amd64", 0)).collect();
        pods.extend((0..4).map(|_| young("arm64", 3)));
        let c = comparison(&pods, "arm64").unwrap();
        assert_eq!(c.worse.as_deref(), Some("arm64"));
        assert_eq!(
            c.summary,
            "arm64 worse: pods on arm64 restart 12.00 times per pod-hour, while on amd64 (0.00)"
        );
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["verdict"], "target_worse");
        assert_eq!(json["sides"]["arm64"]["restarts"], 12);
        // Nothing measured: null, never 0, and no verdict on it.
        assert_eq!(
            json["sides"]["arm64"]["cpu_millicores"],
            serde_json::Value::Null
        );
        assert_eq!(json["cpu"], serde_json::Value::Null);
        let one_side = comparison(&pods[..4], "arm64").unwrap();
        assert_eq!(one_side.other, "amd64");
        assert!(
            one_side
                .summary
                .starts_with("too few pods to compare (0 on arm64, 4 on amd64")
        );
        assert!(comparison(&[], "arm64").is_none());

        // With CPU and memory measured: per side in millicores and MiB, and
        // the side using more named apart from the restarts' verdict.
        let measured: Vec<PodSample> = (pods.iter().enumerate())
            .map(|(i, p)| PodSample {
                cpu_cores: Some(if p.architecture == "arm64" { 0.4 } else { 0.2 }),
                memory_bytes: Some(64.0 * 1048576.0 * (1 + i % 2) as f64),
                ..p.clone()
            })
            .collect();
        let c = comparison(&measured, "arm64").unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(
            json["sides"]["arm64"]["cpu_millicores"],
            serde_json::json!({"mean": 400.0, "p90": 400.0, "pods": 4})
        );
        assert_eq!(
            json["sides"]["amd64"]["memory_mib"],
            serde_json::json!({"mean": 96.0, "p90": 128.0, "pods": 4})
        );
        assert_eq!(json["cpu"]["verdict"], "target_worse");
        assert_eq!(json["cpu"]["worse"], "arm64");
        assert_eq!(
            c.cpu.unwrap().summary,
            "arm64 worse: pods on arm64 use 100% more CPU than on amd64 (mean 400m against 200m; p90 400m against 200m)"
        );
        assert_eq!(json["memory"]["verdict"], "even");
        assert_eq!(c.memory.unwrap().summary, "no difference");
    }
}

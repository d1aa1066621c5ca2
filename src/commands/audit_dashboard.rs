//! `archway audit -o html`, the top of the page: the migration as a
//! dashboard, one panel per namespace with what a platform team asks of it
//! at each checkpoint: where its rollout or ramp stands, its pods on the
//! target now, the workloads held or blocked, how its workloads fare on each
//! architecture (CPU and memory included), and what the move saves. The
//! tables further down the page give the same figures in full.

use super::audit_compare::{Comparison, cpu, memory, money, usage_verdicts};
use super::{
    AuditReport, NamespacePlan, WorkloadRow, escape, gap_text, share_bar, shares, steps_text,
};
use crate::decision::compare::Side;
use crate::decision::cost::Savings;

/// The dashboard's styles, added to the page's.
pub const STYLE: &str = ".dash{display:grid;grid-template-columns:repeat(4,1fr);gap:.8em;margin:.6em 0}\
.card{border:1px solid #ddd;border-radius:6px;padding:.6em .8em;background:#fafafa}\
.card h4{margin:0 0 .3em;font-size:12px;text-transform:uppercase;color:#666;letter-spacing:.04em}\
.big{font-size:1.5em;font-weight:600;margin:.1em 0 .3em}.small{font-size:12px;color:#555}\
section.namespace{border-top:2px solid #222;margin-top:1.6em;padding-top:.4em}\
section.namespace h3{margin:.2em 0}.mode{font-size:12px;color:#555;font-weight:normal}\
table.ns-compared td,table.ns-compared th{font-size:13px}\
table.ns-compared td:nth-child(-n+5){white-space:nowrap}";

/// The dashboard: a line for all namespaces, then a panel per namespace.
pub fn html(report: &AuditReport) -> String {
    let cost = &report.cost;
    let mut html = format!(
        "<h2 id=\"dashboard\">Migration dashboard</h2>\
<p class=\"total\">All namespaces: {costs}.</p><p class=\"usage-note\">{usage}.</p>",
        costs = costs(report, &cost.total, true),
        usage = escape(&report.usage.note),
    );
    for plan in &report.namespaces {
        html.push_str(&namespace(report, plan));
    }
    html
}

/// `monthly cost of requests now 105.19 USD, all on amd64 117.61 USD, all
/// movable on arm64 92.77 USD`; with a price missing, that once (`no price
/// for amd64`) rather than in place of every figure. `with_saving` adds
/// what moving saves, where it is not already the panel's figure.
fn costs(report: &AuditReport, savings: &Savings, with_saving: bool) -> String {
    let cost = &report.cost;
    let currency = cost.currency.as_deref();
    let figures = [
        &savings.now,
        &savings.all_on_baseline,
        &savings.all_movable_on_target,
    ];
    if let Some(Err(missing)) = figures.iter().find(|f| f.is_err()) {
        return format!(
            "monthly cost of requests: {} (prices come from <code>cost:</code> in the configuration)",
            escape(&missing.to_string())
        );
    }
    let saved = match with_saving {
        true => format!(
            "; moving a month: <b>{}</b>",
            escape(&saving(savings, currency))
        ),
        false => String::new(),
    };
    format!(
        "monthly cost of requests now <b>{now}</b>, all on {base} {all_on}, all movable on {target} \
{moved}{saved}",
        now = escape(&money(&savings.now, currency)),
        base = escape(&cost.baseline),
        all_on = escape(&money(&savings.all_on_baseline, currency)),
        target = escape(&cost.target),
        moved = escape(&money(&savings.all_movable_on_target, currency)),
    )
}

/// What moving saves a month, `saves 31.21 USD (20%)`: all on the baseline
/// against every movable workload on the target; `costs 4.10 USD more
/// (3%)` where the target's prices make it dearer (said in words, not as a
/// negative saving); the missing price when one is (`no price for arm64`),
/// never 0.
fn saving(savings: &Savings, currency: Option<&str>) -> String {
    match (&savings.all_on_baseline, &savings.all_movable_on_target) {
        (Ok(before), Ok(after)) => {
            let saved = before - after;
            let amount = money(&Ok(saved.abs()), currency);
            let share = (*before > 0.0).then(|| format!(" ({:.0}%)", saved.abs() / before * 100.0));
            let share = share.unwrap_or_default();
            match saved < 0.0 {
                true => format!("costs {amount} more{share}"),
                false => format!("saves {amount}{share}"),
            }
        }
        (Err(missing), _) | (_, Err(missing)) => missing.to_string(),
    }
}

/// One namespace's panel: four cards, then its workloads compared.
fn namespace(report: &AuditReport, plan: &NamespacePlan) -> String {
    let target = &report.target_architecture;
    let workloads: Vec<&WorkloadRow> = (report.workloads.iter())
        .filter(|w| w.namespace == plan.namespace)
        .collect();
    let rollout = match &plan.ramp {
        Some(ramp) => {
            // What comes next for a ramp holding its step; why it stopped and
            // how to resume for a paused one; nothing once done.
            let next = match ramp.state.as_str() {
                "holding" => format!("; next: {}", ramp.next_text()),
                "done" => String::new(),
                _ => format!("; {}", ramp.next_text()),
            };
            format!(
                "ramp {} ({} a step): {}{}{next}",
                steps_text(&ramp.steps),
                ramp.step_duration,
                ramp.state,
                ramp.step.map_or(String::new(), |s| format!(" at {s}%")),
            )
        }
        None => "set by hand (archway.dev/rollout)".into(),
    };
    let paused = plan.ramp.as_ref().is_some_and(|r| r.state == "paused");
    let now = plan.percent(plan.on_target);
    let planned = plan.percent(plan.planned_on_target);
    let held: Vec<String> = (workloads.iter())
        .filter_map(|w| Some(format!("{}/{}: {}", w.kind, w.name, w.hold.as_ref()?)))
        .collect();
    let blocked: Vec<String> = (workloads.iter())
        .filter(|w| !w.target_ready)
        .map(|w| format!("{}/{}", w.kind, w.name))
        .collect();
    let list = |items: &[String]| {
        items
            .iter()
            .map(|i| format!("<li>{}</li>", escape(i)))
            .collect::<String>()
    };
    let currency = report.cost.currency.as_deref();
    let savings = match report.cost.namespaces.get(&plan.namespace) {
        Some(s) => format!(
            "<p class=\"big saving\">{big}</p><p class=\"small\">{costs}</p>",
            big = escape(&saving(s, currency)),
            costs = costs(report, s, false),
        ),
        None => "<p class=\"small\">no workloads</p>".into(),
    };
    format!(
        "<section class=\"namespace\"><h3>{ns} <span class=\"mode\">{mode}</span></h3><div class=\"dash\">\
<div class=\"card rollout\"><h4>Rollout</h4><p class=\"big\">{rollout_percent}%</p><p class=\"small{paused}\">{rollout}</p></div>\
<div class=\"card share\"><h4>Pods on {target} now</h4><p class=\"big\">{on} of {total} ({now}%)</p>{bar}\
<p class=\"small\">{shares}; the rollout would have {want} ({planned}%), gap {gap}</p></div>\
<div class=\"card holds\"><h4>Holds and blocks</h4><p class=\"big\">{held_count} held, {blocked_count} blocked</p>\
<ul class=\"small no\">{held}{blocked}</ul></div>\
<div class=\"card savings\"><h4>Moving, a month</h4>{savings}</div></div>{compared}</section>",
        ns = escape(&plan.namespace),
        mode = escape(&plan.mode),
        rollout_percent = plan.rollout,
        rollout = escape(&rollout),
        paused = if paused { " no" } else { "" },
        target = escape(target),
        on = plan.on_target,
        total = plan.running_total,
        bar = share_bar(now, planned),
        shares = escape(&shares(plan)),
        want = plan.planned_on_target,
        gap = gap_text(plan.gap),
        held_count = held.len(),
        blocked_count = blocked.len(),
        held = list(&held),
        blocked = list(
            &blocked
                .iter()
                .map(|b| format!("{b}: blocked"))
                .collect::<Vec<_>>()
        ),
        compared = compared(&workloads),
    )
}

/// One figure per side, a line each (`215m/230m amd64`): a narrow column
/// reads better than one long line wrapped anywhere.
fn lines(c: &Comparison, figure: impl Fn(&Side) -> String) -> String {
    (c.sides.iter())
        .map(|(arch, side)| escape(&format!("{} {arch}", figure(side))))
        .collect::<Vec<_>>()
        .join("<br>")
}

/// The namespace's workloads with pods on two architectures, side by side.
fn compared(workloads: &[&WorkloadRow]) -> String {
    let rows: Vec<(&WorkloadRow, &Comparison)> = (workloads.iter())
        .filter_map(|w| Some((*w, w.comparison.as_ref()?)))
        .filter(|(_, c)| c.sides.len() >= 2)
        .collect();
    if rows.is_empty() {
        return "<p class=\"small\">No workload has pods on two architectures yet: nothing to compare.</p>"
            .into();
    }
    let mut html = String::from(
        "<table class=\"ns-compared\"><thead><tr><th>Workload</th><th>Pods</th><th>Restarts per pod-hour</th>\
<th>CPU per pod (mean/p90)</th><th>Memory per pod (mean/p90)</th><th>CPU and memory</th><th>Health</th></tr></thead><tbody>",
    );
    for (w, c) in rows {
        let usage_worse = [&c.cpu, &c.memory]
            .into_iter()
            .any(|u| u.as_ref().is_some_and(|u| u.worse.is_some()));
        html.push_str(&format!(
            "<tr><td class=\"workload\">{kind}/{name}</td><td>{pods}</td><td>{restarts}</td>\
<td class=\"cpu\">{cpu}</td><td class=\"memory\">{memory}</td><td class=\"usage {usage_class}\">{usage}</td>\
<td class=\"health {class}\">{summary}</td></tr>",
            kind = escape(&w.kind),
            name = escape(&w.name),
            pods = lines(c, |s| s.pods.to_string()),
            restarts = lines(c, |s| format!("{:.2}", s.restarts_per_pod_hour)),
            cpu = lines(c, cpu),
            memory = lines(c, memory),
            usage_class = if usage_worse { "no" } else { "" },
            usage = escape(&usage_verdicts(c)),
            class = if c.worse.is_some() { "no" } else { "" },
            summary = escape(&c.summary),
        ));
    }
    html.push_str("</tbody></table>");
    html
}

#[cfg(test)]
mod saving_tests {
    use super::*;

    fn savings(before: f64, after: f64) -> Savings {
        Savings {
            requests: Default::default(),
            now: Ok(before),
            all_on_baseline: Ok(before),
            all_movable_on_target: Ok(after),
            blocked: Vec::new(),
        }
    }

    #[test]
    fn a_dearer_target_is_said_to_cost_more_not_to_save_a_negative_amount() {
        assert_eq!(
            saving(&savings(100.0, 80.0), Some("USD")),
            "saves 20.00 USD (20%)"
        );
        assert_eq!(
            saving(&savings(100.0, 104.1), Some("USD")),
            "costs 4.10 USD more (4%)"
        );
        assert_eq!(saving(&savings(0.0, 0.0), None), "saves 0.00");
    }
}

//! The two architectures side by side: how a workload's (or a namespace's)
//! pods fare on the target architecture against the other. Pure: samples
//! in, figures and a verdict out. `archway audit` shows the figures; the
//! autopilot holds a ramp when the target side is worse.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

/// One pod, as the comparison reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSample {
    /// The architecture of the node it runs on.
    pub architecture: String,
    pub ready: bool,
    /// Container restarts, all containers.
    pub restarts: u32,
    /// A container reported `exec format error`.
    pub exec_format_error: bool,
    /// How long it has existed.
    pub age: Duration,
    /// From its creation to its Ready condition, once ready.
    pub time_to_ready: Option<Duration>,
    /// CPU in cores and memory in bytes now, where `metrics.k8s.io` says.
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
}

impl PodSample {
    /// One pod as the comparison reads it, on a node of `architecture`, at
    /// `now`: from its status alone (CPU and memory come from elsewhere).
    pub fn of_pod(pod: &Pod, architecture: &str, now: Timestamp) -> PodSample {
        let status = pod.status.as_ref();
        let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
        let ready_since = (status.and_then(|s| s.conditions.as_ref()))
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .map(|c| c.last_transition_time.as_ref().map(|t| t.0));
        let between = |from: Timestamp, to: Timestamp| {
            let millis = to.as_millisecond() - from.as_millisecond();
            Duration::from_millis(u64::try_from(millis).unwrap_or(0))
        };
        let statuses: Vec<&ContainerStatus> = status
            .into_iter()
            .flat_map(|s| {
                (s.container_statuses.iter().flatten())
                    .chain(s.init_container_statuses.iter().flatten())
            })
            .collect();
        let exec_format_error = statuses.iter().any(|c| {
            let messages = [c.state.as_ref(), c.last_state.as_ref()]
                .into_iter()
                .flatten()
                .flat_map(|s| {
                    [
                        s.waiting.as_ref().and_then(|w| w.message.as_deref()),
                        s.terminated.as_ref().and_then(|t| t.message.as_deref()),
                    ]
                })
                .flatten();
            messages
                .into_iter()
                .any(|m| m.contains("exec format error"))
        });
        PodSample {
            architecture: architecture.to_string(),
            ready: ready_since.is_some(),
            restarts: statuses
                .iter()
                .map(|c| u32::try_from(c.restart_count).unwrap_or(0))
                .sum(),
            exec_format_error,
            age: created.map_or(Duration::ZERO, |c| between(c, now)),
            time_to_ready: match (created, ready_since.flatten()) {
                (Some(created), Some(ready)) => Some(between(created, ready)),
                _ => None,
            },
            cpu_cores: None,
            memory_bytes: None,
        }
    }
}

/// A Kubernetes quantity as a plain number: `250m` is 0.25, `12345678n`
/// 0.012345678, `64Mi` 67108864, `1e3` 1000, `1` 1. `None` for what is not
/// a quantity, and for a negative or non-finite one (`-1`, `NaN`, `inf`,
/// `1e999`), which no CPU or memory figure can be: a caller skips such a
/// value rather than reading it as 0.
pub fn parse_quantity(text: &str) -> Option<f64> {
    // The binary suffixes first: `Mi` must not read as `M` after `i`.
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    let text = text.trim();
    // Rust's float parser also takes `inf`, `NaN` and `infinity`, which
    // are not quantities: a number starts with a digit, a sign or a point.
    if !text.starts_with(|c: char| c.is_ascii_digit() || matches!(c, '+' | '-' | '.')) {
        return None;
    }
    let value = match text.parse::<f64>() {
        Ok(n) => n,
        Err(_) => SUFFIXES.iter().find_map(|(suffix, factor)| {
            let number = text.strip_suffix(suffix)?.parse::<f64>().ok()?;
            Some(number * factor)
        })?,
    };
    (value.is_finite() && value >= 0.0).then_some(value)
}

/// What `metrics.k8s.io` says one pod uses now: its containers summed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodUsage {
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<f64>,
}

/// A pod's usage from its containers' `usage.cpu` and `usage.memory`
/// (quantities as the API writes them). A pod with a container whose figure
/// is missing or malformed has no figure for that resource: a sum without
/// one container would understate the pod.
pub fn pod_usage<'a>(
    containers: impl IntoIterator<Item = (Option<&'a str>, Option<&'a str>)>,
) -> PodUsage {
    let (mut cpu, mut memory) = (Some(0.0), Some(0.0));
    let mut any = false;
    for (c, m) in containers {
        any = true;
        cpu = cpu.zip(c.and_then(parse_quantity)).map(|(a, b)| a + b);
        memory = memory.zip(m.and_then(parse_quantity)).map(|(a, b)| a + b);
    }
    if !any {
        return PodUsage::default();
    }
    PodUsage {
        cpu_cores: cpu,
        memory_bytes: memory,
    }
}

/// A mean and a 90th percentile, over `pods` values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub p90: f64,
    /// How many pods had a value.
    pub pods: usize,
}

impl Spread {
    /// `None` for no values. The p90 is by nearest rank: of the values
    /// sorted, the one at rank ceil(0.9 × n) (1-based), so a value that was
    /// measured, never one interpolated between two: of 10 values the 9th,
    /// of 3 the 3rd, of 1 that one.
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let rank = (values.len() * 9).div_ceil(10).max(1);
        Some(Spread {
            mean,
            p90: values[rank - 1],
            pods: values.len(),
        })
    }
}

/// One side's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Side {
    pub pods: usize,
    pub ready: usize,
    pub restarts: u64,
    /// Restarts per hour of pod life, over all its pods.
    pub restarts_per_pod_hour: f64,
    pub exec_format_errors: usize,
    /// Seconds from creation to ready.
    pub seconds_to_ready: Option<Spread>,
    /// CPU in use per pod, in millicores, over the pods `metrics.k8s.io`
    /// measured (`None`: none was).
    pub cpu_millicores: Option<Spread>,
    /// Memory in use per pod, in MiB, likewise.
    pub memory_mib: Option<Spread>,
}

const MIB: f64 = 1024.0 * 1024.0;

/// Pod life shorter than this still counts as this much, so a pod that
/// restarted twice in its first minute does not read as 120 an hour.
const MIN_POD_HOURS: f64 = 0.25;

impl Side {
    pub fn of<'a>(samples: impl IntoIterator<Item = &'a PodSample>) -> Side {
        let samples: Vec<&PodSample> = samples.into_iter().collect();
        let restarts: u64 = samples.iter().map(|s| u64::from(s.restarts)).sum();
        let hours: f64 = samples
            .iter()
            .map(|s| (s.age.as_secs_f64() / 3600.0).max(MIN_POD_HOURS))
            .sum();
        let values =
            |f: fn(&PodSample) -> Option<f64>| samples.iter().filter_map(|s| f(s)).collect();
        Side {
            pods: samples.len(),
            ready: samples.iter().filter(|s| s.ready).count(),
            restarts,
            restarts_per_pod_hour: if hours > 0.0 {
                restarts as f64 / hours
            } else {
                0.0
            },
            exec_format_errors: samples.iter().filter(|s| s.exec_format_error).count(),
            seconds_to_ready: Spread::of(values(|s| s.time_to_ready.map(|d| d.as_secs_f64()))),
            cpu_millicores: Spread::of(values(|s| s.cpu_cores.map(|c| c * 1000.0))),
            memory_mib: Spread::of(values(|s| s.memory_bytes.map(|b| b / MIB))),
        }
    }
}

/// How the comparison is judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    /// Pods each side needs before a ratio means something.
    pub min_pods: usize,
    /// How many times the other side's restart rate the target's may reach.
    pub restart_factor: f64,
    /// Restarts per pod-hour below which no side is called worse: a few
    /// restarts on a young workload are noise.
    pub restart_floor: f64,
    /// Share of pods not ready by which the target may exceed the other.
    pub not_ready_margin: f64,
    /// By how much (0.1: 10%) one side's mean CPU or memory per pod may
    /// exceed the other's before it is called worse: usage read once, at one
    /// moment, moves by more than a few percent from pod to pod.
    pub usage_margin: f64,
}

impl Default for Judgement {
    fn default() -> Self {
        Judgement {
            min_pods: 3,
            restart_factor: 2.0,
            restart_floor: 0.5,
            not_ready_margin: 0.2,
            usage_margin: 0.1,
        }
    }
}

/// Which side is worse, and by how much, in words for people.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", content = "why", rename_all = "snake_case")]
pub enum Verdict {
    /// Not enough pods on one side to say (a ratio of 1 to 1 means
    /// nothing).
    TooFewPods(String),
    /// Neither side is worse by the judgement's measures.
    Even,
    TargetWorse(String),
    OtherWorse(String),
}

/// The target side against the other, judged: exec format errors first
/// (a pod that cannot start its binary is the clearest sign), then
/// restarts, then readiness.
pub fn judge(
    target_arch: &str,
    target: &Side,
    other_arch: &str,
    other: &Side,
    how: &Judgement,
) -> Verdict {
    // An exec format error is never noise, however few the pods.
    if target.exec_format_errors > 0 {
        return Verdict::TargetWorse(format!(
            "{} {target_arch} pod(s) report exec format error",
            target.exec_format_errors
        ));
    }
    if other.exec_format_errors > 0 {
        return Verdict::OtherWorse(format!(
            "{} {other_arch} pod(s) report exec format error",
            other.exec_format_errors
        ));
    }
    if target.pods < how.min_pods || other.pods < how.min_pods {
        return Verdict::TooFewPods(format!(
            "too few pods to compare ({} on {target_arch}, {} on {other_arch}; {} each needed)",
            target.pods, other.pods, how.min_pods
        ));
    }
    let restarts = |worse: &Side, better: &Side| {
        worse.restarts_per_pod_hour >= how.restart_floor
            && worse.restarts_per_pod_hour > how.restart_factor * better.restarts_per_pod_hour
    };
    let restart_words = |worse_arch: &str, worse: &Side, better_arch: &str, better: &Side| {
        let ratio = match better.restarts_per_pod_hour {
            0.0 => "while".to_string(),
            rate => format!("{:.1}× as often as", worse.restarts_per_pod_hour / rate),
        };
        format!(
            "pods on {worse_arch} restart {:.2} times per pod-hour, {ratio} on {better_arch} ({:.2})",
            worse.restarts_per_pod_hour, better.restarts_per_pod_hour
        )
    };
    if restarts(target, other) {
        return Verdict::TargetWorse(restart_words(target_arch, target, other_arch, other));
    }
    if restarts(other, target) {
        return Verdict::OtherWorse(restart_words(other_arch, other, target_arch, target));
    }
    let not_ready = |s: &Side| (s.pods - s.ready) as f64 / s.pods as f64;
    let (t, o) = (not_ready(target), not_ready(other));
    let ready_words = |arch: &str, share: f64, other_arch: &str, other_share: f64| {
        format!(
            "{:.0}% of pods on {arch} are not ready, against {:.0}% on {other_arch}",
            share * 100.0,
            other_share * 100.0
        )
    };
    if t > o + how.not_ready_margin {
        return Verdict::TargetWorse(ready_words(target_arch, t, other_arch, o));
    }
    if o > t + how.not_ready_margin {
        return Verdict::OtherWorse(ready_words(other_arch, o, target_arch, t));
    }
    Verdict::Even
}

/// A resource whose use per pod is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    fn of(self, side: &Side) -> Option<Spread> {
        match self {
            Resource::Cpu => side.cpu_millicores,
            Resource::Memory => side.memory_mib,
        }
    }

    /// `250m` (millicores), `320 MiB`: at most one decimal.
    pub fn amount(self, value: f64) -> String {
        let text = format!("{value:.1}");
        let text = text.trim_end_matches(".0");
        match self {
            Resource::Cpu => format!("{text}m"),
            Resource::Memory => format!("{text} MiB"),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Resource::Cpu => "CPU",
            Resource::Memory => "memory",
        }
    }
}

/// The target side against the other on the CPU or memory its pods use,
/// judged on the mean per pod (the p90 is given beside it). `None` when
/// neither side has a figure (the cluster does not serve
/// `metrics.k8s.io`). The same rule as [`judge`]: fewer than `min_pods`
/// measured pods on a side is too few to say; one side is worse when its
/// mean exceeds the other's by more than `usage_margin`.
pub fn judge_usage(
    resource: Resource,
    target_arch: &str,
    target: &Side,
    other_arch: &str,
    other: &Side,
    how: &Judgement,
) -> Option<Verdict> {
    let (t, o) = (resource.of(target), resource.of(other));
    if t.is_none() && o.is_none() {
        return None;
    }
    let measured = |s: Option<Spread>| s.map_or(0, |s| s.pods);
    let enough = |s: Option<Spread>| s.filter(|s| s.pods >= how.min_pods);
    let (Some(t), Some(o)) = (enough(t), enough(o)) else {
        return Some(Verdict::TooFewPods(format!(
            "too few pods with {} figures to compare ({} on {target_arch}, {} on {other_arch}; {} each needed)",
            resource.name(),
            measured(t),
            measured(o),
            how.min_pods
        )));
    };
    let words = |worse_arch: &str, worse: Spread, better_arch: &str, better: Spread| {
        let how_much = match better.mean {
            0.0 => format!(
                "pods on {worse_arch} use {} {}",
                resource.amount(worse.mean),
                resource.name()
            ),
            mean => format!(
                "pods on {worse_arch} use {:.0}% more {} than on {better_arch}",
                (worse.mean / mean - 1.0) * 100.0,
                resource.name()
            ),
        };
        format!(
            "{how_much} (mean {} against {}; p90 {} against {})",
            resource.amount(worse.mean),
            resource.amount(better.mean),
            resource.amount(worse.p90),
            resource.amount(better.p90),
        )
    };
    let exceeds = |a: Spread, b: Spread| a.mean > b.mean * (1.0 + how.usage_margin);
    Some(if exceeds(t, o) {
        Verdict::TargetWorse(words(target_arch, t, other_arch, o))
    } else if exceeds(o, t) {
        Verdict::OtherWorse(words(other_arch, o, target_arch, t))
    } else {
        Verdict::Even
    })
}

/// Samples grouped by architecture.
pub fn by_architecture(samples: &[PodSample]) -> BTreeMap<&str, Vec<&PodSample>> {
    let mut sides: BTreeMap<&str, Vec<&PodSample>> = BTreeMap::new();
    for sample in samples {
        sides
            .entry(sample.architecture.as_str())
            .or_default()
            .push(sample);
    }
    sides
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(arch: &str, ready: bool, restarts: u32, hours: f64) -> PodSample {
        PodSample {
            architecture: arch.into(),
            ready,
            restarts,
            exec_format_error: false,
            age: Duration::from_secs_f64(hours * 3600.0),
            time_to_ready: ready.then(|| Duration::from_secs(10)),
            cpu_cores: Some(0.1 * f64::from(restarts + 1)),
            memory_bytes: Some(64e6),
        }
    }

    #[test]
    fn a_side_sums_its_pods() {
        let pods = [
            pod("arm64", true, 2, 2.0),
            pod("arm64", false, 0, 2.0),
            pod("arm64", true, 4, 0.0),
        ];
        let side = Side::of(&pods);
        assert_eq!((side.pods, side.ready, side.restarts), (3, 2, 6));
        // 6 restarts over 2 + 2 + 0.25 (a new pod counts a quarter hour).
        assert!((side.restarts_per_pod_hour - 6.0 / 4.25).abs() < 1e-9);
        // In millicores and MiB, over the pods measured.
        let cpu = side.cpu_millicores.unwrap();
        assert!((cpu.mean - (300.0 + 100.0 + 500.0) / 3.0).abs() < 1e-9);
        assert!((cpu.p90 - 500.0).abs() < 1e-9);
        assert_eq!(cpu.pods, 3);
        let memory = side.memory_mib.unwrap();
        assert!((memory.mean - 64e6 / 1048576.0).abs() < 1e-9);
        assert_eq!(side.seconds_to_ready.unwrap().mean, 10.0);
        assert_eq!(Side::of(&[]).cpu_millicores, None);
        // A pod not measured counts among the pods, not among the figures.
        let mut unmeasured = pod("arm64", true, 0, 1.0);
        unmeasured.cpu_cores = None;
        let side = Side::of([&pods[0], &unmeasured]);
        assert_eq!((side.pods, side.cpu_millicores.unwrap().pods), (2, 1));
    }

    #[test]
    fn quantities_read_as_the_api_writes_them_and_malformed_ones_are_skipped() {
        let cases: [(&str, Option<f64>); 22] = [
            // CPU as metrics-server writes it, and as people write it.
            ("12345678n", Some(0.012345678)),
            ("250m", Some(0.25)),
            ("1", Some(1.0)),
            ("1.5", Some(1.5)),
            ("500u", Some(0.0005)),
            // Memory.
            ("123456Ki", Some(123456.0 * 1024.0)),
            ("64Mi", Some(64.0 * 1048576.0)),
            ("1Gi", Some(1073741824.0)),
            ("134217728", Some(134217728.0)),
            ("1e3", Some(1000.0)),
            ("1k", Some(1000.0)),
            ("2M", Some(2e6)),
            (" 1Gi ", Some(1073741824.0)),
            ("0", Some(0.0)),
            // Not quantities, or not a figure any pod can use.
            ("", None),
            ("lots", None),
            ("12Qi", None),
            ("Mi", None),
            ("-250m", None),
            ("NaN", None),
            ("inf", None),
            ("1e999", None),
        ];
        for (text, want) in cases {
            let got = parse_quantity(text);
            match (got, want) {
                (Some(g), Some(w)) => assert!((g - w).abs() <= w * 1e-12, "{text}: {g} != {w}"),
                _ => assert_eq!(got, want, "{text}"),
            }
        }
    }

    #[test]
    fn a_pods_usage_is_its_containers_summed_or_none_for_a_malformed_one() {
        let usage = pod_usage([
            (Some("100m"), Some("64Mi")),
            (Some("50000000n"), Some("32768Ki")),
        ]);
        assert!((usage.cpu_cores.unwrap() - 0.15).abs() < 1e-12);
        assert_eq!(usage.memory_bytes, Some(96.0 * 1048576.0));
        // One container's CPU unreadable: no CPU for the pod (a part would
        // understate it), its memory still read.
        let usage = pod_usage([(Some("100m"), Some("64Mi")), (Some("lots"), Some("1Mi"))]);
        assert_eq!(usage.cpu_cores, None);
        assert_eq!(usage.memory_bytes, Some(65.0 * 1048576.0));
        let usage = pod_usage([(None, Some("1Mi"))]);
        assert_eq!(
            (usage.cpu_cores, usage.memory_bytes),
            (None, Some(1048576.0))
        );
        assert_eq!(pod_usage([]), PodUsage::default());
    }

    #[test]
    fn usage_names_the_worse_side_by_its_mean_with_enough_measured_pods() {
        let how = Judgement::default();
        let side = |arch: &str, millicores: &[f64], mib: f64| {
            let pods: Vec<PodSample> = (millicores.iter())
                .map(|m| PodSample {
                    cpu_cores: Some(m / 1000.0),
                    memory_bytes: Some(mib * 1048576.0),
                    ..pod(arch, true, 0, 1.0)
                })
                .collect();
            Side::of(&pods)
        };
        let words = |v: Option<Verdict>| match v {
            Some(Verdict::TargetWorse(why)) => format!("target: {why}"),
            Some(Verdict::OtherWorse(why)) => format!("other: {why}"),
            Some(Verdict::TooFewPods(why)) => format!("too few: {why}"),
            Some(Verdict::Even) => "even".into(),
            None => "none".into(),
        };
        let arm = side("arm64", &[400.0, 400.0, 400.0, 600.0], 512.0);
        let amd = side("amd64", &[250.0, 250.0, 250.0, 250.0], 512.0);
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "arm64",
                &arm,
                "amd64",
                &amd,
                &how
            )),
            "target: pods on arm64 use 80% more CPU than on amd64 (mean 450m against 250m; p90 600m against 250m)"
        );
        assert_eq!(
            words(judge_usage(
                Resource::Memory,
                "arm64",
                &arm,
                "amd64",
                &amd,
                &how
            )),
            "even"
        );
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "amd64",
                &amd,
                "arm64",
                &arm,
                &how
            )),
            "other: pods on arm64 use 80% more CPU than on amd64 (mean 450m against 250m; p90 600m against 250m)"
        );
        // Within the margin (10%): even.
        let close = side("arm64", &[270.0; 4], 540.0);
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "arm64",
                &close,
                "amd64",
                &amd,
                &how
            )),
            "even"
        );
        let heavier = side("arm64", &[250.0; 4], 1024.5);
        assert_eq!(
            words(judge_usage(
                Resource::Memory,
                "arm64",
                &heavier,
                "amd64",
                &amd,
                &how
            )),
            "target: pods on arm64 use 100% more memory than on amd64 (mean 1024.5 MiB against 512 MiB; p90 1024.5 MiB against 512 MiB)"
        );
        // Two measured pods on arm64, however far apart: too few.
        let two = side("arm64", &[900.0, 900.0], 512.0);
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "arm64",
                &two,
                "amd64",
                &amd,
                &how
            )),
            "too few: too few pods with CPU figures to compare (2 on arm64, 4 on amd64; 3 each needed)"
        );
        // Nothing measured on either side: nothing to say (not served).
        let unmeasured = |arch: &str| {
            let pods: Vec<PodSample> = (0..4)
                .map(|_| PodSample {
                    cpu_cores: None,
                    memory_bytes: None,
                    ..pod(arch, true, 0, 1.0)
                })
                .collect();
            Side::of(&pods)
        };
        assert_eq!(
            judge_usage(
                Resource::Cpu,
                "arm64",
                &unmeasured("arm64"),
                "amd64",
                &unmeasured("amd64"),
                &how
            ),
            None
        );
        // Measured on one side only: too few on the other.
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "arm64",
                &arm,
                "amd64",
                &unmeasured("amd64"),
                &how
            )),
            "too few: too few pods with CPU figures to compare (4 on arm64, 0 on amd64; 3 each needed)"
        );
        // Nothing in use on the better side: no percentage of 0.
        let idle = side("amd64", &[0.0; 4], 512.0);
        assert_eq!(
            words(judge_usage(
                Resource::Cpu,
                "arm64",
                &arm,
                "amd64",
                &idle,
                &how
            )),
            "target: pods on arm64 use 450m CPU (mean 450m against 0m; p90 600m against 0m)"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(Spread::of(values).unwrap().p90, 9.0);
        assert_eq!(Spread::of(vec![5.0]).unwrap().p90, 5.0);
        assert_eq!(Spread::of(vec![1.0, 2.0]).unwrap().p90, 2.0);
    }

    #[test]
    fn the_worse_side_is_named_with_enough_pods() {
        let how = Judgement::default();
        let side = |arch: &str, n: usize, restarts: u32, ready: bool| {
            let pods: Vec<PodSample> = (0..n).map(|_| pod(arch, ready, restarts, 1.0)).collect();
            Side::of(&pods)
        };
        let cases = [
            // Restarts on arm64 four times amd64's.
            (
                side("arm64", 4, 4, true),
                side("amd64", 4, 1, true),
                "target: pods on arm64 restart 4.00 times per pod-hour, 4.0× as often as on amd64 (1.00)",
            ),
            (
                side("arm64", 4, 1, true),
                side("amd64", 4, 4, true),
                "other: pods on amd64 restart 4.00 times per pod-hour, 4.0× as often as on arm64 (1.00)",
            ),
            (
                side("arm64", 4, 3, true),
                side("amd64", 4, 0, true),
                "target: pods on arm64 restart 3.00 times per pod-hour, while on amd64 (0.00)",
            ),
            // Below the floor: noise.
            (side("arm64", 4, 0, true), side("amd64", 4, 0, true), "even"),
            (
                side("arm64", 2, 9, true),
                side("amd64", 5, 0, true),
                "too few: too few pods to compare (2 on arm64, 5 on amd64; 3 each needed)",
            ),
            (
                side("arm64", 4, 0, false),
                side("amd64", 4, 0, true),
                "target: 100% of pods on arm64 are not ready, against 0% on amd64",
            ),
        ];
        for (target, other, expected) in cases {
            let verdict = match judge("arm64", &target, "amd64", &other, &how) {
                Verdict::TargetWorse(why) => format!("target: {why}"),
                Verdict::OtherWorse(why) => format!("other: {why}"),
                Verdict::TooFewPods(why) => format!("too few: {why}"),
                Verdict::Even => "even".into(),
            };
            assert_eq!(verdict, expected);
        }
        // An exec format error counts with a single pod.
        let mut broken = pod("arm64", false, 9, 1.0);
        broken.exec_format_error = true;
        let verdict = judge("arm64", &Side::of([&broken]), "amd64", &Side::of(&[]), &how);
        assert_eq!(
            verdict,
            Verdict::TargetWorse("1 arm64 pod(s) report exec format error".into())
        );
    }
}

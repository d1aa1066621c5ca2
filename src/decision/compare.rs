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

/// A mean and a 90th percentile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub p90: f64,
}

impl Spread {
    /// `None` for no values.
    fn of(mut values: Vec<f64>) -> Option<Spread> {
        if values.is_empty() {
            return None;
        }
        values.sort_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        // Nearest rank: the smallest value with at least 90% at or below.
        let rank = (values.len() * 9).div_ceil(10).max(1);
        Some(Spread {
            mean,
            p90: values[rank - 1],
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
    pub cpu_cores: Option<Spread>,
    pub memory_bytes: Option<Spread>,
}

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
            cpu_cores: Spread::of(values(|s| s.cpu_cores)),
            memory_bytes: Spread::of(values(|s| s.memory_bytes)),
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
}

impl Default for Judgement {
    fn default() -> Self {
        Judgement {
            min_pods: 3,
            restart_factor: 2.0,
            restart_floor: 0.5,
            not_ready_margin: 0.2,
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
        let cpu = side.cpu_cores.unwrap();
        assert!((cpu.mean - (0.3 + 0.1 + 0.5) / 3.0).abs() < 1e-9);
        assert_eq!(cpu.p90, 0.5);
        assert_eq!(side.seconds_to_ready.unwrap().mean, 10.0);
        assert_eq!(Side::of(&[]).cpu_cores, None);
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

//! The guard's judgement, pure: observations of pods in, verdicts out.
//!
//! No I/O and no clock: the caller passes the time of each observation in
//! seconds, so tables of observations test every rule.
//!
//! Per pod it keeps a few words (its workload, whether it is on the target
//! architecture, its last failure and a restart baseline), never the pod.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// An architecture-specific failure, as read from a pod's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Failure {
    /// A container's binary is not for this CPU.
    ExecFormat,
    CrashLoop,
    /// More restarts within the window than the configured limit.
    Restarts,
}

impl Failure {
    /// As people read it in a hold's reason.
    pub fn describe(self) -> &'static str {
        match self {
            Failure::ExecFormat => "exec format error",
            Failure::CrashLoop => "CrashLoopBackOff",
            Failure::Restarts => "restarting",
        }
    }
}

/// When the guard trips, and what counts as failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorSettings {
    /// The architecture the rollout moves pods to: the one a hold is on.
    pub target: String,
    /// Failing pods on the target within `window` that trip the guard.
    pub threshold: usize,
    pub window: Duration,
    /// Restarts within `window` that make a pod failing by themselves.
    pub restarts: u32,
}

/// What the guard saw of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation<'a> {
    /// Stable and unique for the pod's life: its uid.
    pub pod: &'a str,
    /// `namespace/Kind/name`.
    pub workload: &'a str,
    /// The architecture archway placed it on (its `archway.dev/arch`).
    pub architecture: &'a str,
    /// Read from its container statuses (see `status.rs`).
    pub failure: Option<Failure>,
    /// Restarts of all its containers.
    pub restarts: u32,
}

/// What the guard concluded about a workload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The workload's pods fail on the target and not elsewhere.
    Hold {
        workload: String,
        architecture: String,
        pods: usize,
        /// The failures seen, fewest kinds first.
        failures: BTreeSet<Failure>,
        /// The earliest first failure among them (seconds since the epoch).
        since: u64,
    },
    /// Its pods fail on the target and on another architecture too: not an
    /// architecture problem, so nothing is held.
    FailingEverywhere { workload: String, pods: usize },
}

impl Verdict {
    pub fn workload(&self) -> &str {
        match self {
            Verdict::Hold { workload, .. } | Verdict::FailingEverywhere { workload, .. } => {
                workload
            }
        }
    }
}

#[derive(Debug)]
struct PodState {
    workload: Box<str>,
    on_target: bool,
    /// The last failure seen, when it was first seen on this pod, and when
    /// last.
    failure: Option<(Failure, u64, u64)>,
    /// Restarts at the start of the current window, and when that was.
    restart_base: (u32, u64),
}

/// What a workload has already been told, so each verdict comes once
/// while its failing pods last.
#[derive(Debug, Default)]
struct WorkloadState {
    /// Uids of its pods that have failed.
    failing: Vec<Box<str>>,
    tripped: bool,
    everywhere: bool,
}

#[derive(Debug)]
pub struct Detector {
    settings: DetectorSettings,
    pods: HashMap<Box<str>, PodState>,
    /// Only workloads with a failing pod.
    workloads: HashMap<Box<str>, WorkloadState>,
}

impl Detector {
    pub fn new(settings: DetectorSettings) -> Detector {
        Detector {
            settings,
            pods: HashMap::new(),
            workloads: HashMap::new(),
        }
    }

    /// Pods being followed.
    pub fn pods(&self) -> usize {
        self.pods.len()
    }

    /// Takes in one observation made at `now`; a verdict when the
    /// workload's state just crossed a line.
    pub fn observe(&mut self, seen: &Observation<'_>, now: u64) -> Option<Verdict> {
        let window = self.settings.window.as_secs();
        let on_target = seen.architecture == self.settings.target;
        let state = self
            .pods
            .entry(seen.pod.into())
            .or_insert_with(|| PodState {
                workload: seen.workload.into(),
                on_target,
                failure: None,
                restart_base: (seen.restarts, now),
            });
        // A pod's labels can change; follow them rather than keep a stale
        // workload.
        if *state.workload != *seen.workload || state.on_target != on_target {
            let old = std::mem::replace(&mut state.workload, seen.workload.into());
            state.on_target = on_target;
            state.failure = None;
            forget_failing(&mut self.workloads, &old, seen.pod);
        }
        let (base, since) = state.restart_base;
        if seen.restarts < base || now.saturating_sub(since) > window {
            state.restart_base = (seen.restarts, now);
        }
        let restarted = seen.restarts.saturating_sub(state.restart_base.0);
        let failure = seen
            .failure
            .or((restarted >= self.settings.restarts).then_some(Failure::Restarts));
        let failure = failure?;
        let first = match state.failure {
            Some((_, first, last)) if now.saturating_sub(last) <= window => first,
            _ => now,
        };
        state.failure = Some((failure, first, now));
        let workload = self.workloads.entry(seen.workload.into()).or_default();
        if !workload.failing.iter().any(|p| **p == *seen.pod) {
            workload.failing.push(seen.pod.into());
        }
        self.judge(seen.workload, now)
    }

    /// Keeps only the pods `keep` says still exist (after a relist).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        let gone: Vec<Box<str>> = (self.pods.keys())
            .filter(|uid| !keep(uid))
            .cloned()
            .collect();
        for uid in gone {
            self.forget(&uid);
        }
    }

    /// The pod is gone: it no longer counts, and a workload left with no
    /// failing pod starts afresh (a later failure can trip it again).
    pub fn forget(&mut self, pod: &str) {
        if let Some(state) = self.pods.remove(pod) {
            forget_failing(&mut self.workloads, &state.workload, pod);
        }
    }

    fn judge(&mut self, workload: &str, now: u64) -> Option<Verdict> {
        let window = self.settings.window.as_secs();
        let state = self.workloads.get_mut(workload)?;
        let mut on_target = Vec::new();
        let mut elsewhere = 0;
        state.failing.retain(|uid| {
            let Some(pod) = self.pods.get(uid) else {
                return false;
            };
            match pod.failure {
                Some((failure, first, last)) if now.saturating_sub(last) <= window => {
                    if pod.on_target {
                        on_target.push((failure, first));
                    } else {
                        elsewhere += 1;
                    }
                    true
                }
                _ => false,
            }
        });
        if on_target.len() < self.settings.threshold {
            return None;
        }
        if elsewhere > 0 {
            if state.everywhere {
                return None;
            }
            state.everywhere = true;
            return Some(Verdict::FailingEverywhere {
                workload: workload.to_string(),
                pods: on_target.len() + elsewhere,
            });
        }
        if state.tripped {
            return None;
        }
        state.tripped = true;
        Some(Verdict::Hold {
            workload: workload.to_string(),
            architecture: self.settings.target.clone(),
            pods: on_target.len(),
            failures: on_target.iter().map(|(f, _)| *f).collect(),
            since: on_target
                .iter()
                .map(|(_, first)| *first)
                .min()
                .unwrap_or(now),
        })
    }
}

fn forget_failing(workloads: &mut HashMap<Box<str>, WorkloadState>, workload: &str, pod: &str) {
    if let Some(state) = workloads.get_mut(workload) {
        state.failing.retain(|p| **p != *pod);
        if state.failing.is_empty() {
            workloads.remove(workload);
        }
    }
}

/// `held: 3 pods CrashLoopBackOff on arm64 since 2026-12-02T13:40:00Z`.
pub fn hold_reason(
    pods: usize,
    failures: &BTreeSet<Failure>,
    architecture: &str,
    since: u64,
) -> String {
    let what = failures
        .iter()
        .map(|f| f.describe())
        .collect::<Vec<_>>()
        .join(" or ");
    let since = std::time::UNIX_EPOCH + Duration::from_secs(since);
    format!(
        "held: {pods} pod{} {what} on {architecture} since {}",
        if pods == 1 { "" } else { "s" },
        humantime::format_rfc3339_seconds(since)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(threshold: usize) -> DetectorSettings {
        DetectorSettings {
            target: "arm64".into(),
            threshold,
            window: Duration::from_secs(600),
            restarts: 3,
        }
    }

    /// (pod uid, workload, arch, failure, restarts, time) -> verdict kind.
    type Step = (
        &'static str,
        &'static str,
        &'static str,
        Option<Failure>,
        u32,
        u64,
    );

    fn run(threshold: usize, steps: &[Step]) -> Vec<Option<Verdict>> {
        let mut detector = Detector::new(settings(threshold));
        steps
            .iter()
            .map(|&(pod, workload, architecture, failure, restarts, at)| {
                detector.observe(
                    &Observation {
                        pod,
                        workload,
                        architecture,
                        failure,
                        restarts,
                    },
                    at,
                )
            })
            .collect()
    }

    fn kinds(verdicts: &[Option<Verdict>]) -> Vec<&'static str> {
        verdicts
            .iter()
            .map(|v| match v {
                None => "-",
                Some(Verdict::Hold { .. }) => "hold",
                Some(Verdict::FailingEverywhere { .. }) => "everywhere",
            })
            .collect()
    }

    const CRASH: Option<Failure> = Some(Failure::CrashLoop);
    const EXEC: Option<Failure> = Some(Failure::ExecFormat);
    const W: &str = "shop/Deployment/web";

    #[test]
    fn table() {
        let cases: Vec<(&str, usize, Vec<Step>, Vec<&str>)> = vec![
            (
                "two arm64 pods crash, amd64 healthy: held at the second",
                2,
                vec![
                    ("a", W, "amd64", None, 0, 0),
                    ("p1", W, "arm64", CRASH, 1, 10),
                    ("p2", W, "arm64", CRASH, 1, 20),
                    ("p3", W, "arm64", CRASH, 1, 30),
                ],
                vec!["-", "-", "hold", "-"],
            ),
            (
                "the same pod crashing twice is one pod",
                2,
                vec![
                    ("p1", W, "arm64", CRASH, 1, 10),
                    ("p1", W, "arm64", CRASH, 2, 20),
                ],
                vec!["-", "-"],
            ),
            (
                "failing on amd64 too: reported once, never held",
                2,
                vec![
                    ("a1", W, "amd64", CRASH, 1, 5),
                    ("p1", W, "arm64", CRASH, 1, 10),
                    ("p2", W, "arm64", CRASH, 1, 20),
                    ("p3", W, "arm64", CRASH, 1, 30),
                ],
                vec!["-", "-", "everywhere", "-"],
            ),
            (
                "exec format error on one pod trips threshold 1",
                1,
                vec![
                    ("a", W, "amd64", None, 0, 0),
                    ("p1", W, "arm64", EXEC, 0, 3),
                ],
                vec!["-", "hold"],
            ),
            (
                "failures further apart than the window do not add up",
                2,
                vec![
                    ("p1", W, "arm64", CRASH, 1, 10),
                    ("p2", W, "arm64", CRASH, 1, 700),
                ],
                vec!["-", "-"],
            ),
            (
                "other workloads do not count",
                2,
                vec![
                    ("p1", W, "arm64", CRASH, 1, 10),
                    ("q1", "shop/Deployment/api", "arm64", CRASH, 1, 20),
                ],
                vec!["-", "-"],
            ),
            (
                "restarts past the limit within the window fail a pod",
                1,
                vec![
                    ("p1", W, "arm64", None, 0, 0),
                    ("p1", W, "arm64", None, 2, 100),
                    ("p1", W, "arm64", None, 3, 200),
                ],
                vec!["-", "-", "hold"],
            ),
            (
                "restarts spread over longer than the window do not",
                1,
                vec![
                    ("p1", W, "arm64", None, 0, 0),
                    ("p1", W, "arm64", None, 2, 500),
                    ("p1", W, "arm64", None, 4, 1200),
                ],
                vec!["-", "-", "-"],
            ),
            (
                "pods on amd64 alone never trip a hold on arm64",
                1,
                vec![
                    ("a1", W, "amd64", EXEC, 0, 0),
                    ("a2", W, "amd64", CRASH, 0, 1),
                ],
                vec!["-", "-"],
            ),
        ];
        for (name, threshold, steps, expected) in cases {
            assert_eq!(kinds(&run(threshold, &steps)), expected, "{name}");
        }
    }

    #[test]
    fn the_verdict_says_how_many_what_and_since_when() {
        let verdicts = run(
            2,
            &[
                ("p1", W, "arm64", CRASH, 1, 1_790_000_000),
                ("p2", W, "arm64", EXEC, 0, 1_790_000_060),
            ],
        );
        let Some(Verdict::Hold {
            workload,
            architecture,
            pods,
            failures,
            since,
        }) = verdicts[1].clone()
        else {
            panic!("{verdicts:?}");
        };
        assert_eq!(
            (workload.as_str(), architecture.as_str(), pods),
            (W, "arm64", 2)
        );
        assert_eq!(since, 1_790_000_000);
        assert_eq!(
            hold_reason(pods, &failures, &architecture, since),
            "held: 2 pods exec format error or CrashLoopBackOff on arm64 since 2026-09-21T14:13:20Z"
        );
        let one = BTreeSet::from([Failure::CrashLoop]);
        assert_eq!(
            hold_reason(1, &one, "arm64", 0),
            "held: 1 pod CrashLoopBackOff on arm64 since 1970-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_workload_whose_failing_pods_are_gone_can_trip_again() {
        let mut detector = Detector::new(settings(1));
        let seen = |pod| Observation {
            pod,
            workload: W,
            architecture: "arm64",
            failure: CRASH,
            restarts: 1,
        };
        assert!(matches!(
            detector.observe(&seen("p1"), 0),
            Some(Verdict::Hold { .. })
        ));
        assert_eq!(detector.observe(&seen("p1"), 5), None, "told once");
        detector.forget("p1");
        assert_eq!(detector.pods(), 0);
        assert!(detector.workloads.is_empty());
        assert!(matches!(
            detector.observe(&seen("p2"), 10),
            Some(Verdict::Hold { .. })
        ));
    }

    #[test]
    fn memory_is_a_few_words_per_pod_and_nothing_for_healthy_workloads() {
        let mut detector = Detector::new(settings(2));
        for i in 0..10_000 {
            let pod = format!("uid-{i}");
            let workload = format!("shop/Deployment/w{}", i % 500);
            let seen = Observation {
                pod: &pod,
                workload: &workload,
                architecture: if i % 2 == 0 { "arm64" } else { "amd64" },
                failure: None,
                restarts: 0,
            };
            assert_eq!(detector.observe(&seen, 0), None);
        }
        assert_eq!(detector.pods(), 10_000);
        assert!(detector.workloads.is_empty());
    }
}

//! A namespace's policy: whether archway acts there, and how far its pods
//! are moved to the target architecture.
//!
//! The same parsing serves the static policy of the configuration file and
//! the labels and annotations read from the cluster, so both mean the same.

use std::collections::BTreeMap;
use std::str::FromStr;

use serde::Deserialize;

pub const MODE_LABEL: &str = "archway.dev/mode";
pub const ROLLOUT_ANNOTATION: &str = "archway.dev/rollout";
pub const ROLLOUT_BY_ANNOTATION: &str = "archway.dev/rollout-by";
pub const PLACEMENT_ANNOTATION: &str = "archway.dev/placement";
pub const COLD_ANNOTATION: &str = "archway.dev/cold";
pub const GUARD_ANNOTATION: &str = "archway.dev/guard";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Mode {
    /// Pods are patched.
    Enforce,
    /// Dry run: nothing changes, the decision is reported.
    Audit,
}

impl Mode {
    /// `enforce` or `audit`, as the namespace label writes it.
    pub fn label(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Audit => "audit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum RolloutBy {
    /// Each pod draws its own bucket.
    #[default]
    Pod,
    /// All pods of one owner land on the same side.
    Workload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Placement {
    /// The chosen architecture is a hard requirement.
    #[default]
    Required,
    /// The hard requirement is only "where every image runs"; the chosen
    /// architecture is a preference on top.
    Preferred,
}

/// What happens to a pod whose images are not in the cache within the
/// webhook's sync budget (a cold lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum Cold {
    /// Admitted unchanged with a warning: the pod escapes placement.
    #[default]
    Admit,
    /// Held by the scheduling gate `archway.dev/inspect` until archway's
    /// controller has the answer (or `gate.timeout` passes).
    Gate,
}

impl Cold {
    pub fn label(self) -> &'static str {
        match self {
            Cold::Admit => "admit",
            Cold::Gate => "gate",
        }
    }
}

/// The rollout guard in a namespace (see `guard.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum GuardMode {
    /// Failing workloads are held: their new pods go to the other
    /// architecture. The default: a hold only sends pods back where the
    /// workload ran before the rollout, and evicts nothing.
    #[default]
    Enforce,
    /// Holds are recorded and warned about, but pods keep being steered.
    Observe,
    /// The guard does not look at the namespace's pods.
    Off,
}

impl GuardMode {
    pub fn label(self) -> &'static str {
        match self {
            GuardMode::Enforce => "enforce",
            GuardMode::Observe => "observe",
            GuardMode::Off => "off",
        }
    }
}

macro_rules! parse_words {
    ($type:ty, $what:literal, { $($word:literal => $value:expr),+ $(,)? }) => {
        impl FromStr for $type {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim() {
                    $($word => Ok($value),)+
                    other => Err(format!(
                        concat!($what, " must be one of {}, not {:?}"),
                        [$($word),+].join(", "),
                        crate::image::truncate_for_message(other)
                    )),
                }
            }
        }
        impl TryFrom<String> for $type {
            type Error = String;
            fn try_from(s: String) -> Result<Self, String> {
                s.parse()
            }
        }
    };
}

parse_words!(Mode, "mode", { "enforce" => Mode::Enforce, "audit" => Mode::Audit });
parse_words!(RolloutBy, "rollout-by", { "pod" => RolloutBy::Pod, "workload" => RolloutBy::Workload });
parse_words!(Placement, "placement", { "required" => Placement::Required, "preferred" => Placement::Preferred });
parse_words!(Cold, "cold", { "admit" => Cold::Admit, "gate" => Cold::Gate });
parse_words!(GuardMode, "guard", { "enforce" => GuardMode::Enforce, "observe" => GuardMode::Observe, "off" => GuardMode::Off });

/// A rollout share in percent, 0 to 100.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Deserialize)]
#[serde(try_from = "serde_yaml::Value")]
pub struct Rollout(u8);

impl Rollout {
    pub const NONE: Rollout = Rollout(0);
    pub const ALL: Rollout = Rollout(100);

    pub fn new(percent: u8) -> Option<Rollout> {
        (percent <= 100).then_some(Rollout(percent))
    }

    pub fn percent(self) -> u8 {
        self.0
    }
}

impl FromStr for Rollout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let trimmed = s.trim().trim_end_matches('%');
        trimmed
            .parse::<u8>()
            .ok()
            .and_then(Rollout::new)
            .ok_or_else(|| {
                format!(
                    "rollout must be a whole number from 0 to 100, not {:?}",
                    crate::image::truncate_for_message(s)
                )
            })
    }
}

impl TryFrom<serde_yaml::Value> for Rollout {
    type Error = String;
    fn try_from(value: serde_yaml::Value) -> Result<Self, String> {
        match value {
            serde_yaml::Value::Number(n) => n.to_string().parse(),
            serde_yaml::Value::String(s) => s.parse(),
            other => Err(format!("rollout must be a number, not {other:?}")),
        }
    }
}

/// What archway does in one namespace. `None` where it does nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespacePolicy {
    pub mode: Mode,
    pub rollout: Rollout,
    pub rollout_by: RolloutBy,
    pub placement: Placement,
    /// `archway.dev/cold`; `None` when the namespace does not say, and the
    /// configuration's `gate.default` applies.
    pub cold: Option<Cold>,
    pub guard: GuardMode,
    /// Values that could not be read, each with its reason. The policy then
    /// falls back to the safe value (no steering; per pod; required), and
    /// the review warns so the namespace owner sees it.
    pub problems: Vec<String>,
}

impl NamespacePolicy {
    /// The policy of a namespace that opted in with nothing but a mode:
    /// how `review` and `audit` judge namespaces that have not (yet).
    pub fn opted_in(mode: Mode, rollout: Rollout) -> NamespacePolicy {
        NamespacePolicy {
            mode,
            rollout,
            rollout_by: RolloutBy::default(),
            placement: Placement::default(),
            cold: None,
            guard: GuardMode::default(),
            problems: Vec::new(),
        }
    }
}

/// A namespace as the configuration file writes it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StaticNamespace {
    pub mode: Mode,
    #[serde(default)]
    pub rollout: Option<Rollout>,
    #[serde(default)]
    pub rollout_by: RolloutBy,
    #[serde(default)]
    pub placement: Placement,
    #[serde(default)]
    pub cold: Option<Cold>,
    #[serde(default)]
    pub guard: GuardMode,
}

impl StaticNamespace {
    pub fn policy(&self, default_rollout: Rollout) -> NamespacePolicy {
        NamespacePolicy {
            mode: self.mode,
            rollout: self.rollout.unwrap_or(default_rollout),
            rollout_by: self.rollout_by,
            placement: self.placement,
            cold: self.cold,
            guard: self.guard,
            problems: Vec::new(),
        }
    }
}

impl NamespacePolicy {
    /// Reads a namespace's labels and annotations. Only the mode label opts
    /// in; anything else there, or no label, leaves the namespace alone.
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        default_rollout: Rollout,
    ) -> Option<NamespacePolicy> {
        let mode = labels.get(MODE_LABEL)?.parse::<Mode>().ok()?;
        let mut problems = Vec::new();
        let rollout = read_annotation(
            annotations,
            ROLLOUT_ANNOTATION,
            default_rollout,
            Rollout::NONE,
            &mut problems,
        );
        let rollout_by = read_annotation(
            annotations,
            ROLLOUT_BY_ANNOTATION,
            RolloutBy::Pod,
            RolloutBy::Pod,
            &mut problems,
        );
        let placement = read_annotation(
            annotations,
            PLACEMENT_ANNOTATION,
            Placement::Required,
            Placement::Required,
            &mut problems,
        );
        // A value that cannot be read falls back to `admit`: what archway
        // did before the gate existed, and never holds a pod.
        let cold = annotations.contains_key(COLD_ANNOTATION).then(|| {
            read_annotation(
                annotations,
                COLD_ANNOTATION,
                Cold::Admit,
                Cold::Admit,
                &mut problems,
            )
        });
        // A guard value that cannot be read keeps the default: a typo should
        // not switch off the protection.
        let guard = read_annotation(
            annotations,
            GUARD_ANNOTATION,
            GuardMode::default(),
            GuardMode::default(),
            &mut problems,
        );
        Some(NamespacePolicy {
            mode,
            rollout,
            rollout_by,
            placement,
            cold,
            guard,
            problems,
        })
    }
}

/// An annotation's value; `absent` when it is not there, `fallback` (with
/// the reason noted) when it cannot be read.
fn read_annotation<T: FromStr<Err = String> + std::fmt::Debug>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    absent: T,
    fallback: T,
    problems: &mut Vec<String>,
) -> T {
    match annotations.get(key).map(|v| v.parse::<T>()) {
        None => absent,
        Some(Ok(value)) => value,
        Some(Err(reason)) => {
            problems.push(format!("{key}: {reason}; using {fallback:?}"));
            fallback
        }
    }
}

/// Where namespace policies come from: the static configuration, or (with
/// a cluster) the namespaces' own labels and annotations.
pub trait PolicySource: Send + Sync {
    /// The policy of `namespace`, or `None` when archway leaves it alone.
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy>;
    /// Whether the source has what it needs to answer (a cluster view that
    /// has synced, say).
    fn is_ready(&self) -> bool {
        true
    }
}

/// The namespaces listed in the configuration file.
#[derive(Debug, Clone, Default)]
pub struct StaticPolicies {
    pub namespaces: BTreeMap<String, StaticNamespace>,
    pub default_rollout: Rollout,
}

impl PolicySource for StaticPolicies {
    fn policy(&self, namespace: &str) -> Option<NamespacePolicy> {
        self.namespaces
            .get(namespace)
            .map(|ns| ns.policy(self.default_rollout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_the_mode_label_opts_in() {
        let none = BTreeMap::new();
        assert_eq!(
            NamespacePolicy::from_metadata(&none, &none, Rollout::NONE),
            None
        );
        for value in ["", "Enforce", "on", "true"] {
            let labels = map(&[(MODE_LABEL, value)]);
            assert_eq!(
                NamespacePolicy::from_metadata(&labels, &none, Rollout::NONE),
                None,
                "{value}"
            );
        }
        let labels = map(&[(MODE_LABEL, "audit")]);
        let policy =
            NamespacePolicy::from_metadata(&labels, &none, Rollout::new(10).unwrap()).unwrap();
        assert_eq!(policy.mode, Mode::Audit);
        assert_eq!(
            policy.rollout.percent(),
            10,
            "absent rollout is the configured default"
        );
        assert_eq!(policy.rollout_by, RolloutBy::Pod);
        assert_eq!(policy.placement, Placement::Required);
        assert!(policy.problems.is_empty());
    }

    #[test]
    fn reads_annotations_and_reports_bad_values() {
        let labels = map(&[(MODE_LABEL, "enforce")]);
        let good = map(&[
            (ROLLOUT_ANNOTATION, "25"),
            (ROLLOUT_BY_ANNOTATION, "workload"),
            (PLACEMENT_ANNOTATION, "preferred"),
        ]);
        let policy = NamespacePolicy::from_metadata(&labels, &good, Rollout::NONE).unwrap();
        assert_eq!(
            (
                policy.rollout.percent(),
                policy.rollout_by,
                policy.placement
            ),
            (25, RolloutBy::Workload, Placement::Preferred)
        );
        let bad = map(&[
            (ROLLOUT_ANNOTATION, "150"),
            (ROLLOUT_BY_ANNOTATION, "team"),
            (PLACEMENT_ANNOTATION, "maybe"),
        ]);
        let policy =
            NamespacePolicy::from_metadata(&labels, &bad, Rollout::new(50).unwrap()).unwrap();
        assert_eq!(policy.rollout, Rollout::NONE, "a bad rollout never steers");
        assert_eq!(policy.problems.len(), 3, "{:?}", policy.problems);
        assert!(policy.problems[0].contains("0 to 100"));
    }

    #[test]
    fn the_cold_annotation_is_read_and_a_bad_value_never_gates() {
        let labels = map(&[(MODE_LABEL, "enforce")]);
        let none = BTreeMap::new();
        let policy = NamespacePolicy::from_metadata(&labels, &none, Rollout::NONE).unwrap();
        assert_eq!(policy.cold, None, "absent: the configuration decides");
        for (value, expected, problems) in [
            ("gate", Cold::Gate, 0),
            (" admit ", Cold::Admit, 0),
            ("hold", Cold::Admit, 1),
        ] {
            let annotations = map(&[(COLD_ANNOTATION, value)]);
            let policy =
                NamespacePolicy::from_metadata(&labels, &annotations, Rollout::NONE).unwrap();
            assert_eq!(policy.cold, Some(expected), "{value}");
            assert_eq!(policy.problems.len(), problems, "{value}");
        }
    }

    #[test]
    fn the_guard_defaults_to_enforce_and_a_bad_value_keeps_it() {
        let labels = map(&[(MODE_LABEL, "enforce")]);
        let read = |value: Option<&str>| {
            let annotations = value.map_or_else(BTreeMap::new, |v| map(&[(GUARD_ANNOTATION, v)]));
            let policy =
                NamespacePolicy::from_metadata(&labels, &annotations, Rollout::NONE).unwrap();
            (policy.guard, policy.problems.len())
        };
        assert_eq!(read(None), (GuardMode::Enforce, 0));
        assert_eq!(read(Some("observe")), (GuardMode::Observe, 0));
        assert_eq!(read(Some(" off ")), (GuardMode::Off, 0));
        assert_eq!(read(Some("disabled")), (GuardMode::Enforce, 1));
    }

    #[test]
    fn rollout_parsing() {
        for (input, expected) in [
            ("0", Some(0)),
            ("100", Some(100)),
            (" 7 ", Some(7)),
            ("25%", Some(25)),
        ] {
            assert_eq!(
                input.parse::<Rollout>().ok().map(Rollout::percent),
                expected,
                "{input}"
            );
        }
        for input in ["101", "-1", "1.5", "", "ten", "256"] {
            assert!(input.parse::<Rollout>().is_err(), "{input}");
        }
    }
}

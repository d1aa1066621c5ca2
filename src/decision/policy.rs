//! A namespace's policy: whether archway acts there, and how far its pods
//! are moved to the target architecture; and the mistakes in the settings
//! that say so.
//!
//! The same parsing serves the static policy of the configuration file and
//! the labels and annotations read from the cluster, so both mean the same.
//! Values are read exactly as the README writes them (lowercase words,
//! whole numbers): one that is nearly right (`Enforce`, `50%`, ` 50`) is a
//! mistake like any other. In the configuration file it is refused; on a
//! namespace archway uses the safe value instead and says so
//! (`SettingProblem`: a warning on each pod, and an Event on the namespace
//! through `settings_report`). Guessing what was meant would make a typo
//! decide where pods run.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

pub const MODE_LABEL: &str = "archway.dev/mode";
pub const ROLLOUT_ANNOTATION: &str = "archway.dev/rollout";
pub const ROLLOUT_BY_ANNOTATION: &str = "archway.dev/rollout-by";
pub const PLACEMENT_ANNOTATION: &str = "archway.dev/placement";
pub const COLD_ANNOTATION: &str = "archway.dev/cold";
pub const GUARD_ANNOTATION: &str = "archway.dev/guard";

/// The prefix of archway's keys: any other key under it on a namespace is
/// a mistake.
const PREFIX: &str = "archway.dev/";

/// Every setting a namespace may carry, and where it is read from. A new
/// setting is added here, or namespaces that use it are told it is unknown.
const NAMESPACE_SETTINGS: &[(&str, Place)] = &[
    (MODE_LABEL, Place::Label),
    (ROLLOUT_ANNOTATION, Place::Annotation),
    (ROLLOUT_BY_ANNOTATION, Place::Annotation),
    (PLACEMENT_ANNOTATION, Place::Annotation),
    (COLD_ANNOTATION, Place::Annotation),
    (GUARD_ANNOTATION, Place::Annotation),
    (crate::decision::ramp::RAMP_ANNOTATION, Place::Annotation),
    (
        crate::decision::ramp::RAMP_STEP_ANNOTATION,
        Place::Annotation,
    ),
    (
        crate::decision::ramp::RAMP_ON_FAILURE_ANNOTATION,
        Place::Annotation,
    ),
    // Written by archway, removed by a person to resume a paused ramp.
    (
        crate::decision::ramp::RAMP_STATUS_ANNOTATION,
        Place::Annotation,
    ),
];

/// The most mistakes reported for one namespace: each becomes an Event, and
/// whoever may edit a namespace may give it thousands of keys.
pub const MAX_PROBLEMS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Mode {
    /// Pods are patched.
    Enforce,
    /// Dry run: nothing changes, the decision is reported.
    Audit,
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

/// A value that is not one archway reads. Its text is the configuration
/// file's error; on a namespace it becomes a `SettingProblem`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} must be {expected}, not {value}")]
pub struct InvalidValue {
    /// The setting, as the configuration file names it (`rollout`).
    what: &'static str,
    /// What a value must be (`one of admit, gate`).
    expected: String,
    /// The value, quoted and shortened (`quoted`).
    value: String,
}

impl InvalidValue {
    pub fn new(what: &'static str, expected: impl Into<String>, value: &str) -> InvalidValue {
        InvalidValue {
            what,
            expected: expected.into(),
            value: quoted(value),
        }
    }
}

/// Settings written as one of a few words. Each gets `label` (the word),
/// `Display` (the same) and an exact `FromStr`.
macro_rules! setting_words {
    ($type:ty, $what:literal, { $($word:literal => $value:path),+ $(,)? }) => {
        impl $type {
            /// The word that names this value.
            pub fn label(self) -> &'static str {
                match self {
                    $($value => $word,)+
                }
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.label())
            }
        }
        impl FromStr for $type {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                match s {
                    $($word => Ok($value),)+
                    other => Err(InvalidValue::new(
                        $what,
                        format!("one of {}", [$($word),+].join(", ")),
                        other,
                    )),
                }
            }
        }
        impl TryFrom<String> for $type {
            type Error = InvalidValue;
            fn try_from(s: String) -> Result<Self, InvalidValue> {
                s.parse()
            }
        }
    };
}

setting_words!(Mode, "mode", { "enforce" => Mode::Enforce, "audit" => Mode::Audit });
setting_words!(RolloutBy, "rollout-by", { "pod" => RolloutBy::Pod, "workload" => RolloutBy::Workload });
setting_words!(Placement, "placement", { "required" => Placement::Required, "preferred" => Placement::Preferred });
setting_words!(Cold, "cold", { "admit" => Cold::Admit, "gate" => Cold::Gate });
setting_words!(GuardMode, "guard", { "enforce" => GuardMode::Enforce, "observe" => GuardMode::Observe, "off" => GuardMode::Off });

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

impl fmt::Display for Rollout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

const ROLLOUT_EXPECTED: &str = "a whole number from 0 to 100";

impl FromStr for Rollout {
    type Err = InvalidValue;
    /// Digits only: no sign, space or `%` (`u8::from_str` alone would take
    /// `+50`).
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u8>().ok())
            .flatten()
            .and_then(Rollout::new)
            .ok_or_else(|| InvalidValue::new("rollout", ROLLOUT_EXPECTED, s))
    }
}

impl TryFrom<serde_yaml::Value> for Rollout {
    type Error = InvalidValue;
    fn try_from(value: serde_yaml::Value) -> Result<Self, InvalidValue> {
        match value {
            serde_yaml::Value::Number(n) => n.to_string().parse(),
            serde_yaml::Value::String(s) => s.parse(),
            other => {
                let kind = match other {
                    serde_yaml::Value::Null => "null",
                    serde_yaml::Value::Bool(_) => "a boolean",
                    serde_yaml::Value::Sequence(_) => "a list",
                    serde_yaml::Value::Mapping(_) => "a map",
                    _ => "a tagged value",
                };
                Err(InvalidValue {
                    what: "rollout",
                    expected: ROLLOUT_EXPECTED.into(),
                    value: kind.into(),
                })
            }
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
    /// The migration autopilot's ramp (`archway.dev/ramp`), when the
    /// namespace has a valid one; only from the cluster.
    pub ramp: Option<crate::decision::ramp::Ramp>,
    /// The settings that could not be read, each as a sentence
    /// (`SettingProblem`). The policy then falls back to the safe value (no
    /// steering; per pod; required), and the review warns so the namespace
    /// owner sees it.
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
            ramp: None,
            problems: Vec::new(),
        }
    }
}

/// A namespace as the configuration file writes it. Its values are read
/// as the namespace's labels and annotations are; a mistake is a
/// configuration error, so the file is refused rather than half used.
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
            ramp: None,
            problems: Vec::new(),
        }
    }
}

/// Where a namespace keeps a setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    Label,
    Annotation,
}

impl Place {
    /// `label` or `annotation`, as messages say.
    pub fn name(self) -> &'static str {
        match self {
            Place::Label => "label",
            Place::Annotation => "annotation",
        }
    }
}

/// An `archway.dev/` label or annotation of a namespace that archway cannot
/// use as written: a value it cannot read, a near miss of the mode label,
/// a key it does not know, or a key in the wrong place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingProblem {
    pub place: Place,
    /// The key and value as messages show them (`quoted`): both are written
    /// by whoever may edit the namespace.
    key: String,
    value: String,
    /// What is wrong and what archway does instead, after key and value:
    /// `is not a whole number from 0 to 100; using 0`.
    reason: String,
    /// Tells this key and value apart from any other (a digest of both,
    /// whole): what makes "the same mistake" the same.
    fingerprint: String,
}

impl SettingProblem {
    fn new(place: Place, key: &str, value: &str, reason: String) -> SettingProblem {
        SettingProblem {
            place,
            key: shown_key(key),
            value: quoted(value),
            reason,
            fingerprint: fingerprint(place, key, value),
        }
    }

    /// 20 hex digits, the same for the same place, key and value in every
    /// replica and every run.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The sentence for the namespace's Event and the log, which says where
    /// the key is: `annotation archway.dev/rollout "50%" is not ...`.
    pub fn note(&self) -> String {
        format!("{} {self}", self.place.name())
    }
}

/// `archway.dev/rollout "50%" is not a whole number from 0 to 100; using
/// 0`: the text of a pod's warning.
impl fmt::Display for SettingProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.key, self.value, self.reason)
    }
}

impl NamespacePolicy {
    /// Reads a namespace's labels and annotations. Only the mode label opts
    /// in; anything else there, or no label, leaves the namespace alone.
    /// Runs on every review: it reads only the keys it needs (the scan for
    /// unknown keys is `setting_problems`, run when a namespace changes).
    pub fn from_metadata(
        labels: &BTreeMap<String, String>,
        annotations: &BTreeMap<String, String>,
        default_rollout: Rollout,
    ) -> Option<NamespacePolicy> {
        let mode = labels.get(MODE_LABEL)?.parse::<Mode>().ok()?;
        let mut problems = Vec::new();
        let values = AnnotatedValues::read(annotations, default_rollout, &mut problems);
        Some(NamespacePolicy {
            mode,
            rollout: values.rollout,
            rollout_by: values.rollout_by,
            placement: values.placement,
            cold: values.cold,
            guard: values.guard,
            ramp: values.ramp,
            problems: problems.iter().map(SettingProblem::to_string).collect(),
        })
    }
}

/// Every mistake in a namespace's `archway.dev/` labels and annotations, at
/// most `MAX_PROBLEMS`, in a fixed order (the mode label, the values read,
/// then other keys by name): the same namespace always gives the same list.
/// Whether the namespace opted in does not matter: a mistake in a setting
/// is one before the mode label is added too.
pub fn setting_problems(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Vec<SettingProblem> {
    let mut problems = Vec::new();
    if let Some(value) = labels.get(MODE_LABEL)
        && let Err(invalid) = value.parse::<Mode>()
        && meant_to_opt_in(value)
    {
        let reason = format!("is not {}; the namespace is not opted in", invalid.expected);
        problems.push(SettingProblem::new(Place::Label, MODE_LABEL, value, reason));
    }
    AnnotatedValues::read(annotations, Rollout::NONE, &mut problems);
    let keys = (labels.keys().map(|k| (Place::Label, k)))
        .chain(annotations.keys().map(|k| (Place::Annotation, k)));
    for (place, key) in keys.filter(|(_, k)| k.starts_with(PREFIX)) {
        if problems.len() >= MAX_PROBLEMS {
            break;
        }
        let reason = match NAMESPACE_SETTINGS.iter().find(|(known, _)| known == key) {
            Some((_, at)) if *at == place => continue,
            Some((_, at)) => format!(
                "is read from the namespace's {}s, not its {}s; ignored",
                at.name(),
                place.name()
            ),
            None => match suggestion(key) {
                Some(known) => {
                    format!(
                        "is not a namespace setting of archway (did you mean {known}?); ignored"
                    )
                }
                None => "is not a namespace setting of archway; ignored".into(),
            },
        };
        let value = match place {
            Place::Label => &labels[key],
            Place::Annotation => &annotations[key],
        };
        problems.push(SettingProblem::new(place, key, value, reason));
    }
    problems.truncate(MAX_PROBLEMS);
    problems
}

/// The settings read from a namespace's annotations: the one place their
/// values are parsed, for the policy and for the report of mistakes.
struct AnnotatedValues {
    rollout: Rollout,
    rollout_by: RolloutBy,
    placement: Placement,
    cold: Option<Cold>,
    guard: GuardMode,
    ramp: Option<crate::decision::ramp::Ramp>,
}

impl AnnotatedValues {
    fn read(
        annotations: &BTreeMap<String, String>,
        default_rollout: Rollout,
        problems: &mut Vec<SettingProblem>,
    ) -> AnnotatedValues {
        // A rollout that cannot be read steers nothing.
        let rollout = read_annotation(
            annotations,
            ROLLOUT_ANNOTATION,
            default_rollout,
            Rollout::NONE,
            problems,
        );
        let rollout_by = read_annotation(
            annotations,
            ROLLOUT_BY_ANNOTATION,
            RolloutBy::Pod,
            RolloutBy::Pod,
            problems,
        );
        let placement = read_annotation(
            annotations,
            PLACEMENT_ANNOTATION,
            Placement::Required,
            Placement::Required,
            problems,
        );
        // A value that cannot be read falls back to `admit`: what archway
        // did before the gate existed, and never holds a pod.
        let cold = annotations.contains_key(COLD_ANNOTATION).then(|| {
            read_annotation(
                annotations,
                COLD_ANNOTATION,
                Cold::Admit,
                Cold::Admit,
                problems,
            )
        });
        // A guard value that cannot be read keeps the default: a typo should
        // not switch off the protection.
        let guard = read_annotation(
            annotations,
            GUARD_ANNOTATION,
            GuardMode::default(),
            GuardMode::default(),
            problems,
        );
        AnnotatedValues {
            rollout,
            rollout_by,
            placement,
            cold,
            guard,
            ramp: read_ramp(annotations, problems),
        }
    }
}

/// The namespace's ramp: its steps and how long each holds are both
/// needed, and a mistake in either means no ramp (never a guessed one);
/// a failure setting that cannot be read keeps `pause`.
fn read_ramp(
    annotations: &BTreeMap<String, String>,
    problems: &mut Vec<SettingProblem>,
) -> Option<crate::decision::ramp::Ramp> {
    use crate::decision::ramp::{
        RAMP_ANNOTATION, RAMP_ON_FAILURE_ANNOTATION, RAMP_STEP_ANNOTATION,
    };
    let steps = annotations.get(RAMP_ANNOTATION);
    let hold = annotations.get(RAMP_STEP_ANNOTATION);
    let mut problem = |key: &str, value: &str, reason: String| {
        problems.push(SettingProblem::new(Place::Annotation, key, value, reason));
    };
    let (steps, hold) = match (steps, hold) {
        (None, None) => return None,
        (None, Some(hold)) => {
            let reason = format!("has no {RAMP_ANNOTATION} beside it; ignored");
            problem(RAMP_STEP_ANNOTATION, hold, reason);
            return None;
        }
        (Some(steps), None) => {
            let reason =
                format!("has no {RAMP_STEP_ANNOTATION} beside it; the namespace has no ramp");
            problem(RAMP_ANNOTATION, steps, reason);
            return None;
        }
        (Some(steps), Some(hold)) => (steps, hold),
    };
    let parsed_steps = crate::decision::ramp::parse_steps(steps);
    let parsed_hold = crate::decision::ramp::parse_step_duration(hold);
    let no_ramp =
        |invalid: &InvalidValue| format!("is not {}; the namespace has no ramp", invalid.expected);
    if let Err(invalid) = &parsed_steps {
        problem(RAMP_ANNOTATION, steps, no_ramp(invalid));
    }
    if let Err(invalid) = &parsed_hold {
        problem(RAMP_STEP_ANNOTATION, hold, no_ramp(invalid));
    }
    let on_failure = match annotations.get(RAMP_ON_FAILURE_ANNOTATION) {
        None => crate::decision::ramp::OnFailure::default(),
        Some(value) => value.parse().unwrap_or_else(|invalid: InvalidValue| {
            let reason = format!("is not {}; using pause", invalid.expected);
            problem(RAMP_ON_FAILURE_ANNOTATION, value, reason);
            crate::decision::ramp::OnFailure::Pause
        }),
    };
    Some(crate::decision::ramp::Ramp {
        steps: parsed_steps.ok()?,
        hold: parsed_hold.ok()?,
        on_failure,
    })
}

/// An annotation's value; `absent` when it is not there, `fallback` (with
/// the problem noted) when it cannot be read.
fn read_annotation<T: FromStr<Err = InvalidValue> + fmt::Display>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    absent: T,
    fallback: T,
    problems: &mut Vec<SettingProblem>,
) -> T {
    let Some(value) = annotations.get(key) else {
        return absent;
    };
    match value.parse::<T>() {
        Ok(read) => read,
        Err(invalid) => {
            let reason = format!("is not {}; using {fallback}", invalid.expected);
            problems.push(SettingProblem::new(Place::Annotation, key, value, reason));
            fallback
        }
    }
}

/// Whether a mode label that is neither `enforce` nor `audit` was meant as
/// one of them, and so is a mistake to report rather than a way of leaving
/// the namespace alone (`off`, `disabled`, `none`): trimmed and in lower
/// case, it starts with `enforc` or `audit` (`Enforce`, `enforcing`,
/// `AUDIT `), is within two typing errors of `enforce` or `audit`
/// (`enfroce`, `audti`), or says "on" (`on`, `true`, `yes`, `enabled`,
/// `1`).
fn meant_to_opt_in(value: &str) -> bool {
    const ON: &[&str] = &["on", "true", "yes", "enabled", "enable", "1"];
    let value = value.trim().to_ascii_lowercase();
    ON.contains(&value.as_str())
        || value.starts_with("enforc")
        || value.starts_with("audit")
        || ["enforce", "audit"]
            .iter()
            .any(|mode| within_two_edits(&value, mode))
}

/// The known setting an unknown `archway.dev/` key most likely meant: the
/// same name in other case, or within two typing errors.
fn suggestion(key: &str) -> Option<&'static str> {
    let name = key.strip_prefix(PREFIX)?.to_ascii_lowercase();
    NAMESPACE_SETTINGS
        .iter()
        .map(|(known, _)| *known)
        .find(|known| {
            let known_name = &known[PREFIX.len()..];
            name == known_name || within_two_edits(&name, known_name)
        })
}

/// Whether `a` becomes `b` with at most two insertions, deletions,
/// substitutions or swaps of neighbouring characters (the optimal string
/// alignment distance). `b` is one of archway's own words; `a` is read only
/// as far as could still be within two of it.
fn within_two_edits(a: &str, b: &str) -> bool {
    let b: Vec<char> = b.chars().collect();
    let a: Vec<char> = a.chars().take(b.len() + 3).collect();
    if a.len().abs_diff(b.len()) > 2 {
        return false;
    }
    // distance[i][j]: from the first i characters of a to the first j of b.
    let mut distance = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in distance.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in distance[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let substitution = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (distance[i - 1][j] + 1)
                .min(distance[i][j - 1] + 1)
                .min(distance[i - 1][j - 1] + substitution);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(distance[i - 2][j - 2] + 1);
            }
            distance[i][j] = best;
        }
    }
    distance[a.len()][b.len()] <= 2
}

/// A value as messages show it: quoted, with control and invisible
/// characters escaped (`"\u{202e}"`), and cut after 96 bytes of that, since
/// namespace values are written by whoever may edit the namespace and end
/// up in Events, logs and terminals.
fn quoted(value: &str) -> String {
    const MAX_BYTES: usize = 96;
    let mut quoted = String::from('"');
    let mut buffer = [0; 4];
    for c in value.chars() {
        // Each character as `str`'s Debug writes it, without the quotes.
        let escaped = format!("{:?}", &*c.encode_utf8(&mut buffer));
        let escaped = &escaped[1..escaped.len() - 1];
        if quoted.len() + escaped.len() > MAX_BYTES {
            quoted.push_str("\"…");
            return quoted;
        }
        quoted.push_str(escaped);
    }
    quoted.push('"');
    quoted
}

/// A key as messages show it: as it is when it is a plain name (the API
/// server allows nothing else in a key), else `quoted`.
fn shown_key(key: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/');
    if key.len() <= 128 && key.chars().all(plain) {
        key.to_string()
    } else {
        quoted(key)
    }
}

/// The first 10 bytes of the SHA-256 of place, key and value, in hex.
fn fingerprint(place: Place, key: &str, value: &str) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [place.name(), key, value] {
        context.update(part.as_bytes());
        // A separator no key contains, so `a` + `b/c` is not `a/b` + `c`.
        context.update(&[0]);
    }
    let digest = context.finish();
    digest.as_ref()[..10]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
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

    fn enforced() -> BTreeMap<String, String> {
        map(&[(MODE_LABEL, "enforce")])
    }

    #[test]
    fn only_the_mode_label_opts_in() {
        let none = BTreeMap::new();
        assert_eq!(
            NamespacePolicy::from_metadata(&none, &none, Rollout::NONE),
            None
        );
        for value in ["", "Enforce", "on", "true", "off", "enforce "] {
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
        assert!(setting_problems(&labels, &none).is_empty());
    }

    #[test]
    fn reads_good_values() {
        let good = map(&[
            (ROLLOUT_ANNOTATION, "25"),
            (ROLLOUT_BY_ANNOTATION, "workload"),
            (PLACEMENT_ANNOTATION, "preferred"),
            (COLD_ANNOTATION, "gate"),
            (GUARD_ANNOTATION, "observe"),
        ]);
        let policy = NamespacePolicy::from_metadata(&enforced(), &good, Rollout::NONE).unwrap();
        assert_eq!(
            (
                policy.rollout.percent(),
                policy.rollout_by,
                policy.placement,
                policy.cold,
                policy.guard,
            ),
            (
                25,
                RolloutBy::Workload,
                Placement::Preferred,
                Some(Cold::Gate),
                GuardMode::Observe
            )
        );
        assert!(policy.problems.is_empty());
        assert!(setting_problems(&enforced(), &good).is_empty());
    }

    /// Every value a namespace owner may get wrong: what archway uses
    /// instead, and the sentence a pod's warning and the namespace's Event
    /// say. The policy and the report of mistakes read the same.
    #[test]
    fn bad_values_fall_back_and_say_so_in_a_sentence() {
        let whole = "is not a whole number from 0 to 100; using 0";
        let cases: &[(&str, &str, &str)] = &[
            (ROLLOUT_ANNOTATION, "50%", whole),
            (ROLLOUT_ANNOTATION, " 50", whole),
            (ROLLOUT_ANNOTATION, "50 ", whole),
            (ROLLOUT_ANNOTATION, "1000", whole),
            (ROLLOUT_ANNOTATION, "101", whole),
            (ROLLOUT_ANNOTATION, "256", whole),
            (ROLLOUT_ANNOTATION, "+50", whole),
            (ROLLOUT_ANNOTATION, "-1", whole),
            (ROLLOUT_ANNOTATION, "1.5", whole),
            (ROLLOUT_ANNOTATION, "", whole),
            (ROLLOUT_ANNOTATION, "ten", whole),
            (
                ROLLOUT_BY_ANNOTATION,
                "Workload",
                "is not one of pod, workload; using pod",
            ),
            (
                ROLLOUT_BY_ANNOTATION,
                "team",
                "is not one of pod, workload; using pod",
            ),
            (
                PLACEMENT_ANNOTATION,
                "preferred ",
                "is not one of required, preferred; using required",
            ),
            (
                PLACEMENT_ANNOTATION,
                "maybe",
                "is not one of required, preferred; using required",
            ),
            (
                COLD_ANNOTATION,
                "GATE",
                "is not one of admit, gate; using admit",
            ),
            (
                COLD_ANNOTATION,
                " admit ",
                "is not one of admit, gate; using admit",
            ),
            (
                COLD_ANNOTATION,
                "hold",
                "is not one of admit, gate; using admit",
            ),
            (
                GUARD_ANNOTATION,
                "on",
                "is not one of enforce, observe, off; using enforce",
            ),
            (
                GUARD_ANNOTATION,
                " off ",
                "is not one of enforce, observe, off; using enforce",
            ),
            (
                GUARD_ANNOTATION,
                "disabled",
                "is not one of enforce, observe, off; using enforce",
            ),
        ];
        for (key, value, reason) in cases {
            let annotations = map(&[(key, value)]);
            let sentence = format!("{key} {value:?} {reason}");
            let policy = NamespacePolicy::from_metadata(
                &enforced(),
                &annotations,
                Rollout::new(50).unwrap(),
            )
            .unwrap();
            assert_eq!(
                policy.problems,
                std::slice::from_ref(&sentence),
                "{key}={value:?}"
            );
            assert_eq!(
                policy.rollout.percent(),
                if *key == ROLLOUT_ANNOTATION { 0 } else { 50 }
            );
            assert_eq!(policy.rollout_by, RolloutBy::Pod);
            assert_eq!(policy.placement, Placement::Required);
            assert_eq!(policy.guard, GuardMode::Enforce);
            if *key == COLD_ANNOTATION {
                assert_eq!(policy.cold, Some(Cold::Admit));
            }
            // The report of mistakes says the same, opted in or not.
            for labels in [enforced(), BTreeMap::new()] {
                let problems = setting_problems(&labels, &annotations);
                assert_eq!(problems.len(), 1, "{key}={value:?}: {problems:?}");
                assert_eq!(problems[0].to_string(), sentence);
                assert_eq!(problems[0].note(), format!("annotation {sentence}"));
            }
        }
        // Each is reported, in a fixed order, and none in a Rust debug form.
        let all = map(&[
            (GUARD_ANNOTATION, "on"),
            (COLD_ANNOTATION, "GATE"),
            (ROLLOUT_ANNOTATION, "50%"),
        ]);
        let policy = NamespacePolicy::from_metadata(&enforced(), &all, Rollout::NONE).unwrap();
        assert_eq!(policy.problems.len(), 3);
        assert!(policy.problems[0].starts_with("archway.dev/rollout \"50%\""));
        assert!(policy.problems[2].starts_with("archway.dev/guard \"on\""));
        for problem in &policy.problems {
            assert!(
                !problem.contains("Rollout(") && !problem.contains("Admit"),
                "{problem}"
            );
        }
    }

    /// The configuration file's static namespaces read values the same way,
    /// and a mistake there refuses the file, with the same expectation.
    #[test]
    fn a_ramp_needs_valid_steps_and_a_step_duration_and_is_never_guessed() {
        use crate::decision::ramp::{
            OnFailure, RAMP_ANNOTATION, RAMP_ON_FAILURE_ANNOTATION, RAMP_STEP_ANNOTATION, Ramp,
        };
        let policy = |pairs: &[(&str, &str)]| {
            NamespacePolicy::from_metadata(&enforced(), &map(pairs), Rollout::NONE).unwrap()
        };
        let good = policy(&[
            (RAMP_ANNOTATION, "10,50,100"),
            (RAMP_STEP_ANNOTATION, "24h"),
            (RAMP_ON_FAILURE_ANNOTATION, "step-back"),
        ]);
        assert_eq!(
            good.ramp,
            Some(Ramp {
                steps: vec![10, 50, 100],
                hold: std::time::Duration::from_secs(86_400),
                on_failure: OnFailure::StepBack,
            })
        );
        assert!(good.problems.is_empty(), "{:?}", good.problems);
        let steps = "is not increasing whole percentages from 1 to 100, comma-separated (e.g. 10,25,50,100); the namespace has no ramp";
        let hold = "is not a duration from 1s to 366 days, such as 24h, 90m or 1h30m; the namespace has no ramp";
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[(RAMP_ANNOTATION, "50,25"), (RAMP_STEP_ANNOTATION, "1h")],
                steps,
            ),
            (
                &[(RAMP_ANNOTATION, "10,150"), (RAMP_STEP_ANNOTATION, "1h")],
                steps,
            ),
            (
                &[(RAMP_ANNOTATION, "10,50"), (RAMP_STEP_ANNOTATION, "1d")],
                hold,
            ),
            (
                &[
                    (RAMP_ANNOTATION, "10,50"),
                    (RAMP_STEP_ANNOTATION, "5 fortnights"),
                ],
                hold,
            ),
            (
                &[(RAMP_ANNOTATION, "10,50")],
                "has no archway.dev/ramp-step beside it; the namespace has no ramp",
            ),
            (
                &[(RAMP_STEP_ANNOTATION, "1h")],
                "has no archway.dev/ramp beside it; ignored",
            ),
        ];
        for (pairs, reason) in cases {
            let read = policy(pairs);
            assert_eq!(read.ramp, None, "{pairs:?}");
            assert_eq!(read.problems.len(), 1, "{pairs:?}: {:?}", read.problems);
            assert!(
                read.problems[0].ends_with(reason),
                "{pairs:?}: {}",
                read.problems[0]
            );
            // The namespace's owner hears of it through the same report.
            let labels = enforced();
            assert_eq!(setting_problems(&labels, &map(pairs)).len(), 1);
        }
        let paused = policy(&[
            (RAMP_ANNOTATION, "10,50"),
            (RAMP_STEP_ANNOTATION, "1h"),
            (RAMP_ON_FAILURE_ANNOTATION, "panic"),
        ]);
        assert_eq!(paused.ramp.unwrap().on_failure, OnFailure::Pause);
        assert!(
            paused.problems[0].ends_with("is not one of pause, step-back, rollback; using pause")
        );
        // archway's own status is a known key, not a mistake.
        let status = map(&[(
            crate::decision::ramp::RAMP_STATUS_ANNOTATION,
            "holding 10% since 2026-12-03T10:00:00Z",
        )]);
        assert!(setting_problems(&enforced(), &status).is_empty());
    }

    #[test]
    fn static_namespaces_refuse_what_namespaces_report() {
        for (field, key, value) in [
            ("rollout", ROLLOUT_ANNOTATION, "50%"),
            ("rollout", ROLLOUT_ANNOTATION, " 50"),
            ("rollout", ROLLOUT_ANNOTATION, "1000"),
            ("rolloutBy", ROLLOUT_BY_ANNOTATION, "Workload"),
            ("placement", PLACEMENT_ANNOTATION, "maybe"),
            ("cold", COLD_ANNOTATION, "GATE"),
            ("guard", GUARD_ANNOTATION, "on"),
        ] {
            let yaml = format!("{{ mode: enforce, {field}: {value:?} }}");
            let error = serde_yaml::from_str::<StaticNamespace>(&yaml)
                .unwrap_err()
                .to_string();
            let problem = &setting_problems(&BTreeMap::new(), &map(&[(key, value)]))[0];
            let expected = problem.reason.split(';').next().unwrap();
            let expected = expected.strip_prefix("is not ").unwrap();
            assert!(
                error.contains(&format!("must be {expected}, not {value:?}")),
                "{yaml}: {error}"
            );
        }
        for (yaml, expected) in [
            (
                "{ mode: Enforce }",
                "mode must be one of enforce, audit, not \"Enforce\"",
            ),
            ("{ mode: enforce, rolout: 5 }", "unknown field `rolout`"),
            ("{ mode: enforce, rollout: [5] }", "not a list"),
            ("{ mode: enforce, rollout: 1.5 }", "not \"1.5\""),
        ] {
            let error = serde_yaml::from_str::<StaticNamespace>(yaml)
                .unwrap_err()
                .to_string();
            assert!(error.contains(expected), "{yaml}: {error}");
        }
        let good: StaticNamespace =
            serde_yaml::from_str("{ mode: audit, rollout: 25, cold: gate, guard: off }").unwrap();
        assert_eq!(good.rollout, Rollout::new(25));
        let quoted: StaticNamespace =
            serde_yaml::from_str("{ mode: audit, rollout: '7' }").unwrap();
        assert_eq!(quoted.rollout, Rollout::new(7));
    }

    /// Which mode labels are mistakes (and never opt in) and which leave the
    /// namespace alone on purpose.
    #[test]
    fn near_misses_of_the_mode_label_are_reported_and_do_not_opt_in() {
        let none = BTreeMap::new();
        for value in [
            "Enforce",
            "ENFORCE",
            "enforced",
            "enforcing",
            "ENFORCE ",
            " enforce",
            "Audit",
            "audit ",
            "audited",
            "enfroce",
            "enforc",
            "audti",
            "adit",
            "on",
            "true",
            "yes",
            "Enabled",
            "1",
        ] {
            let labels = map(&[(MODE_LABEL, value)]);
            assert_eq!(
                NamespacePolicy::from_metadata(&labels, &none, Rollout::NONE),
                None,
                "{value:?} must not opt in"
            );
            let problems = setting_problems(&labels, &none);
            assert_eq!(problems.len(), 1, "{value:?}");
            assert_eq!(
                problems[0].note(),
                format!(
                    "label archway.dev/mode {value:?} is not one of enforce, audit; the namespace is not opted in"
                )
            );
        }
        for value in [
            "off", "disabled", "false", "none", "", "skip", "no", "observe",
        ] {
            let labels = map(&[(MODE_LABEL, value)]);
            assert!(setting_problems(&labels, &none).is_empty(), "{value:?}");
        }
    }

    #[test]
    fn unknown_and_misplaced_keys_are_mistakes() {
        let labels = map(&[
            (MODE_LABEL, "enforce"),
            ("archway.dev/rollout", "50"),
            ("archway.dev/Mode", "audit"),
            ("example.com/rollout", "x"),
        ]);
        let annotations = map(&[
            ("archway.dev/rolout", "50"),
            ("archway.dev/mode", "enforce"),
            ("archway.dev/skip", "true"),
            ("pods.archway.dev/x", "1"),
            ("archway.dev.example/x", "1"),
            (ROLLOUT_ANNOTATION, "50"),
        ]);
        let notes: Vec<String> = setting_problems(&labels, &annotations)
            .iter()
            .map(SettingProblem::note)
            .collect();
        assert_eq!(
            notes,
            [
                "label archway.dev/Mode \"audit\" is not a namespace setting of archway (did you mean archway.dev/mode?); ignored",
                "label archway.dev/rollout \"50\" is read from the namespace's annotations, not its labels; ignored",
                "annotation archway.dev/mode \"enforce\" is read from the namespace's labels, not its annotations; ignored",
                "annotation archway.dev/rolout \"50\" is not a namespace setting of archway (did you mean archway.dev/rollout?); ignored",
                "annotation archway.dev/skip \"true\" is not a namespace setting of archway; ignored",
            ]
        );
        // A misplaced key does not count where it is not read.
        let policy = NamespacePolicy::from_metadata(&labels, &annotations, Rollout::NONE).unwrap();
        assert_eq!((policy.mode, policy.rollout.percent()), (Mode::Enforce, 50));
        let only_annotation = map(&[("archway.dev/mode", "enforce")]);
        assert_eq!(
            NamespacePolicy::from_metadata(&BTreeMap::new(), &only_annotation, Rollout::NONE),
            None
        );
    }

    /// Values and keys are written by whoever may edit the namespace: what
    /// reaches a message is short and escaped, and thousands of keys make
    /// at most `MAX_PROBLEMS` mistakes.
    #[test]
    fn hostile_values_are_bounded_and_escaped() {
        let long = format!("\u{202e}\x1b[31m\n{}", "9".repeat(100_000));
        let annotations = map(&[(ROLLOUT_ANNOTATION, &long)]);
        let problems = setting_problems(&BTreeMap::new(), &annotations);
        let note = problems[0].note();
        assert!(note.len() < 250, "{} bytes", note.len());
        assert!(
            note.starts_with(r#"annotation archway.dev/rollout "\u{202e}\u{1b}[31m\n999"#),
            "{note}"
        );
        assert!(
            note.ends_with("\"… is not a whole number from 0 to 100; using 0"),
            "{note}"
        );
        assert!(!note.contains(['\u{202e}', '\x1b', '\n']));
        // Values alike in what is shown are still different mistakes.
        let other = map(&[(ROLLOUT_ANNOTATION, &format!("{long}8"))]);
        let other = &setting_problems(&BTreeMap::new(), &other)[0];
        assert_eq!(other.note(), note);
        assert_ne!(other.fingerprint(), problems[0].fingerprint());

        let many: BTreeMap<String, String> = (0..5000)
            .map(|i| (format!("archway.dev/x{i}"), "1".to_string()))
            .chain([(ROLLOUT_ANNOTATION.to_string(), "50%".to_string())])
            .collect();
        let problems = setting_problems(&map(&[(MODE_LABEL, "Enforce")]), &many);
        assert_eq!(problems.len(), MAX_PROBLEMS);
        // The settings archway reads come first, whatever else is there.
        assert!(problems[0].note().starts_with("label archway.dev/mode"));
        assert!(
            problems[1]
                .note()
                .starts_with("annotation archway.dev/rollout \"50%\"")
        );
        // The longest a note can be, under the 1 kB an Event's note may hold.
        let worst = "\u{10ffff}".repeat(1000);
        let worst = map(&[(&*format!("archway.dev/{worst}"), &*worst)]);
        let note = setting_problems(&BTreeMap::new(), &worst)[0].note();
        assert!(note.len() < 400, "{} bytes: {note}", note.len());
        let odd_key = map(&[("archway.dev/\u{202e}x", "1")]);
        let note = setting_problems(&BTreeMap::new(), &odd_key)[0].note();
        assert!(
            note.starts_with(r#"annotation "archway.dev/\u{202e}x" "1""#),
            "{note}"
        );
    }

    #[test]
    fn fingerprints_tell_place_key_and_value_apart() {
        let problem =
            |place, key: &str, value: &str| SettingProblem::new(place, key, value, String::new());
        let a = problem(Place::Annotation, "archway.dev/rollout", "50%");
        assert_eq!(a.fingerprint().len(), 20);
        assert!(a.fingerprint().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(
            a.fingerprint(),
            problem(Place::Annotation, "archway.dev/rollout", "50%").fingerprint()
        );
        for other in [
            problem(Place::Label, "archway.dev/rollout", "50%"),
            problem(Place::Annotation, "archway.dev/rollout", "50% "),
            problem(Place::Annotation, "archway.dev/rollou", "t50%"),
        ] {
            assert_ne!(a.fingerprint(), other.fingerprint());
        }
    }

    #[test]
    fn edits_are_counted_as_typing_errors() {
        for (a, b, near) in [
            ("enforce", "enforce", true),
            ("enfroce", "enforce", true),
            ("enforc", "enforce", true),
            ("enforcee", "enforce", true),
            ("nforc", "enforce", true),
            ("enf", "enforce", false),
            ("off", "audit", false),
            ("disabled", "audit", false),
            ("rolout", "rollout", true),
            ("rollout-bye", "rollout-by", true),
            ("guards", "guard", true),
            ("", "cold", false),
        ] {
            assert_eq!(within_two_edits(a, b), near, "{a} {b}");
        }
        assert!(!within_two_edits(&"e".repeat(1_000_000), "enforce"));
    }

    #[test]
    fn rollout_parsing() {
        for (input, expected) in [
            ("0", Some(0)),
            ("100", Some(100)),
            ("7", Some(7)),
            ("007", Some(7)),
        ] {
            assert_eq!(
                input.parse::<Rollout>().ok().map(Rollout::percent),
                expected,
                "{input}"
            );
        }
        for input in [
            "101", "-1", "+1", "1.5", "", "ten", "256", "25%", " 7 ", "1e2", "٣",
        ] {
            assert!(input.parse::<Rollout>().is_err(), "{input}");
        }
        assert_eq!(Rollout::new(25).unwrap().to_string(), "25");
    }
}

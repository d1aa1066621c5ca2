//! The migration autopilot's pure core: a namespace's ramp (the rollout's
//! steps and how long each must hold), where it stands (the status archway
//! writes on the namespace), and what to do next given what the leader
//! observed. No I/O and no clock: `now` is an argument, so the controller's
//! logic is tested without waiting.
//!
//! The state lives on the namespace itself, in two annotations written in
//! one patch: `archway.dev/rollout` (the step in force: the rollout a
//! person reads is the one archway applies) and `archway.dev/ramp-status`
//! (the step, since when, and what blocks it). A new leader reads both and
//! carries on: no step is skipped or taken twice.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::decision::policy::InvalidValue;

pub const RAMP_ANNOTATION: &str = "archway.dev/ramp";
pub const RAMP_STEP_ANNOTATION: &str = "archway.dev/ramp-step";
pub const RAMP_ON_FAILURE_ANNOTATION: &str = "archway.dev/ramp-on-failure";
/// Written by archway: where the ramp stands. A person resumes a paused
/// ramp by removing it.
pub const RAMP_STATUS_ANNOTATION: &str = "archway.dev/ramp-status";

/// The most steps a ramp may have: a step is a percentage, and each
/// distinct value from 1 to 100 could be one.
const MAX_STEPS: usize = 100;
/// The shortest and longest a step may last.
const MIN_STEP: Duration = Duration::from_secs(1);
const MAX_STEP: Duration = Duration::from_secs(366 * 24 * 3600);

/// What a failing step does. Existing pods are never evicted either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// Stay at the step, paused.
    #[default]
    Pause,
    /// Go back to the previous step (0 from the first), paused.
    StepBack,
    /// Go to rollout 0, paused.
    Rollback,
}

impl OnFailure {
    pub fn label(self) -> &'static str {
        match self {
            OnFailure::Pause => "pause",
            OnFailure::StepBack => "step-back",
            OnFailure::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for OnFailure {
    type Err = InvalidValue;
    fn from_str(s: &str) -> Result<Self, InvalidValue> {
        match s {
            "pause" => Ok(OnFailure::Pause),
            "step-back" => Ok(OnFailure::StepBack),
            "rollback" => Ok(OnFailure::Rollback),
            other => Err(InvalidValue::new(
                "ramp-on-failure",
                "one of pause, step-back, rollback",
                other,
            )),
        }
    }
}

/// A namespace's ramp, as its annotations set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramp {
    /// Increasing, each 1 to 100.
    pub steps: Vec<u8>,
    /// How long each step must hold before the next.
    pub hold: Duration,
    pub on_failure: OnFailure,
}

/// `10,25,50,100`: increasing whole percentages from 1 to 100.
pub fn parse_steps(value: &str) -> Result<Vec<u8>, InvalidValue> {
    let expected =
        "increasing whole percentages from 1 to 100, comma-separated (e.g. 10,25,50,100)";
    let invalid = || InvalidValue::new("ramp", expected, value);
    let mut steps: Vec<u8> = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        let digits =
            !part.is_empty() && part.len() <= 3 && part.bytes().all(|b| b.is_ascii_digit());
        let step: u8 = match digits.then(|| part.parse::<u8>().ok()).flatten() {
            Some(step) if (1..=100).contains(&step) => step,
            _ => return Err(invalid()),
        };
        if steps.last().is_some_and(|last| *last >= step) || steps.len() == MAX_STEPS {
            return Err(invalid());
        }
        steps.push(step);
    }
    Ok(steps)
}

/// A Go duration, as `kubectl` users write them: `24h`, `90m`, `1h30m`,
/// `1.5h`, `30s`; units ns, us (µs), ms, s, m, h. Here at least a second
/// and at most a year: a ramp's step.
pub fn parse_step_duration(value: &str) -> Result<Duration, InvalidValue> {
    let invalid = || {
        InvalidValue::new(
            "ramp-step",
            "a duration from 1s to 366 days, such as 24h, 90m or 1h30m",
            value,
        )
    };
    let duration = parse_go_duration(value).ok_or_else(invalid)?;
    if !(MIN_STEP..=MAX_STEP).contains(&duration) {
        return Err(invalid());
    }
    Ok(duration)
}

/// Go's `time.ParseDuration`, without a sign: a sequence of decimal numbers,
/// each with an optional fraction and a unit.
fn parse_go_duration(value: &str) -> Option<Duration> {
    if value.is_empty() || value.len() > 64 {
        return None;
    }
    let mut rest = value;
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return None;
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_end);
        let seconds = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number.parse::<f64>().ok()? * seconds;
        rest = after;
    }
    (total.is_finite() && total < 1e12).then(|| Duration::from_secs_f64(total))
}

/// Where a ramp stands, as `archway.dev/ramp-status` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    /// The rollout the status is about (the step in force).
    pub rollout: u8,
    /// Since when: the step was taken, or the ramp paused or finished.
    pub since: Timestamp,
    /// For a paused ramp: why. Written by archway, read back for people.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// At a step, waiting for it to hold long enough.
    Holding,
    /// Stopped by a failure; a person resumes it by removing the status.
    Paused,
    /// At the last step.
    Done,
}

/// The longest reason kept in the status: what blocks a ramp is a
/// workload's name and a few words, and the annotation stays readable.
const MAX_REASON_CHARS: usize = 300;

impl Status {
    /// The annotation's value: readable by people, read back by archway.
    /// `holding 50% since 2026-12-03T10:00:00Z; next 100% due
    /// 2026-12-04T10:00:00Z`, `paused at 50% since ...: <why>; remove this
    /// annotation to resume`, `done at 100% since ...`.
    pub fn render(&self, ramp: &Ramp) -> String {
        let since = self.since.strftime("%Y-%m-%dT%H:%M:%SZ");
        match self.state {
            State::Holding => {
                let next = next_step(ramp, self.rollout);
                let due = self.since + ramp.hold;
                match next {
                    Some(next) => format!(
                        "holding {}% since {since}; next {next}% due {}",
                        self.rollout,
                        due.strftime("%Y-%m-%dT%H:%M:%SZ")
                    ),
                    None => format!("holding {}% since {since}", self.rollout),
                }
            }
            State::Paused => format!(
                "paused at {}% since {since}: {}; remove this annotation to resume",
                self.rollout,
                self.reason.as_deref().unwrap_or("a failure")
            ),
            State::Done => format!("done at {}% since {since}", self.rollout),
        }
    }

    /// The status archway wrote, or `None` for anything else (a person's
    /// edit reads as "no status": the ramp starts again from the rollout
    /// in force).
    pub fn parse(value: &str) -> Option<Status> {
        let (state, rest) = if let Some(rest) = value.strip_prefix("holding ") {
            (State::Holding, rest)
        } else if let Some(rest) = value.strip_prefix("paused at ") {
            (State::Paused, rest)
        } else if let Some(rest) = value.strip_prefix("done at ") {
            (State::Done, rest)
        } else {
            return None;
        };
        let (percent, rest) = rest.split_once("% since ")?;
        let rollout: u8 = percent.parse().ok().filter(|p| *p <= 100)?;
        let stamp = rest.get(..20)?;
        let since: Timestamp = stamp.parse().ok()?;
        let reason = match state {
            State::Paused => {
                let reason = rest.get(20..)?.strip_prefix(": ")?;
                let reason = reason
                    .strip_suffix("; remove this annotation to resume")
                    .unwrap_or(reason);
                Some(reason.to_string())
            }
            _ => None,
        };
        Some(Status {
            state,
            rollout,
            since,
            reason,
        })
    }
}

/// The step after `rollout`: the smallest step above it.
pub fn next_step(ramp: &Ramp, rollout: u8) -> Option<u8> {
    ramp.steps.iter().copied().find(|s| *s > rollout)
}

/// The step before `rollout`: the largest step below it, else 0.
fn previous_step(ramp: &Ramp, rollout: u8) -> u8 {
    ramp.steps
        .iter()
        .copied()
        .rev()
        .find(|s| *s < rollout)
        .unwrap_or(0)
}

/// An Event archway records on the namespace for a change of the ramp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RampEvent {
    pub warning: bool,
    /// `RampStep`, `RampDone`, `RampPaused`, `RampSteppedBack`,
    /// `RampRolledBack`.
    pub reason: &'static str,
    pub note: String,
}

/// What the leader does with a namespace's ramp now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Nothing to write.
    Wait,
    /// Write the rollout and the status in one patch, and record the Event.
    Write {
        rollout: u8,
        status: Status,
        event: Option<RampEvent>,
    },
}

/// The next action for `ramp`, given the rollout in force, the status
/// archway last wrote (`None`: none, or not archway's), what blocks the
/// ramp now (each a reason for people; empty when the step is healthy) and
/// the time. A blocker is checked on every call during a step, so a step
/// that reaches its end unblocked has held for the whole of it.
pub fn next(
    ramp: &Ramp,
    rollout: u8,
    status: Option<&Status>,
    blockers: &[String],
    now: Timestamp,
) -> Action {
    if stopped(rollout, status) {
        // Until a person removes the status; nothing is written.
        return Action::Wait;
    }
    // Not stopped: holding the rollout in force, or no status of its own.
    let Some(status) = status.filter(|s| s.rollout == rollout && s.state == State::Holding) else {
        return start(ramp, rollout, now);
    };
    if !blockers.is_empty() {
        return fail(ramp, rollout, blockers, now);
    }
    let due = status.since + ramp.hold;
    if now < due {
        return Action::Wait;
    }
    match next_step(ramp, rollout) {
        Some(step) => Action::Write {
            rollout: step,
            status: holding(ramp, step, now),
            event: Some(RampEvent {
                warning: false,
                reason: if Some(step) == ramp.steps.last().copied() {
                    "RampDone"
                } else {
                    "RampStep"
                },
                note: format!(
                    "ramp: {rollout}% held for {}; rollout set to {step}%",
                    humantime::format_duration(ramp.hold)
                ),
            }),
        },
        None => Action::Write {
            rollout,
            status: Status {
                state: State::Done,
                rollout,
                since: now,
                reason: None,
            },
            event: None,
        },
    }
}

/// Whether `status` stops the ramp until a person acts, whatever its pods
/// say: paused (at any rollout), or done at the rollout in force. A done
/// status whose rollout a person changed starts the ramp again.
pub fn stopped(rollout: u8, status: Option<&Status>) -> bool {
    status.is_some_and(|s| {
        s.state == State::Paused || (s.state == State::Done && s.rollout == rollout)
    })
}

/// A ramp without a status of archway's (new, resumed by a person, or the
/// rollout changed by hand): it starts at the rollout in force, or at the
/// first step when the rollout is below it. A rollout is never lowered by
/// starting.
fn start(ramp: &Ramp, rollout: u8, now: Timestamp) -> Action {
    let first = ramp.steps.first().copied().unwrap_or(100);
    let (step, event) = if rollout < first {
        let event = RampEvent {
            warning: false,
            reason: "RampStep",
            note: format!("ramp started: rollout set to {first}%"),
        };
        (first, Some(event))
    } else {
        (rollout, None)
    };
    Action::Write {
        rollout: step,
        status: holding(ramp, step, now),
        event,
    }
}

fn holding(ramp: &Ramp, step: u8, now: Timestamp) -> Status {
    let last = ramp.steps.last().copied().unwrap_or(100);
    Status {
        state: if step >= last {
            State::Done
        } else {
            State::Holding
        },
        rollout: step,
        since: now,
        reason: None,
    }
}

/// A step that failed: paused where it is, one step back, or at 0, as the
/// namespace says.
fn fail(ramp: &Ramp, rollout: u8, blockers: &[String], now: Timestamp) -> Action {
    let mut why = blockers.join("; ");
    if why.chars().count() > MAX_REASON_CHARS {
        why = why.chars().take(MAX_REASON_CHARS).collect::<String>() + "…";
    }
    let (to, reason, done) = match ramp.on_failure {
        OnFailure::Pause => (rollout, "RampPaused", format!("paused at {rollout}%")),
        OnFailure::StepBack => {
            let back = previous_step(ramp, rollout);
            (
                back,
                "RampSteppedBack",
                format!("stepped back from {rollout}% to {back}%"),
            )
        }
        OnFailure::Rollback => (
            0,
            "RampRolledBack",
            format!("rolled back from {rollout}% to 0%"),
        ),
    };
    Action::Write {
        rollout: to,
        status: Status {
            state: State::Paused,
            rollout: to,
            since: now,
            reason: Some(why.clone()),
        },
        event: Some(RampEvent {
            warning: true,
            reason,
            note: format!(
                "ramp {done}: {why}; existing pods are not moved (kubectl rollout restart moves them); remove the namespace annotation {RAMP_STATUS_ANNOTATION} to resume"
            ),
        }),
    }
}

#[cfg(test)]
mod tests;

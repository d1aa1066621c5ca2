use super::*;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_796_300_000 + seconds).unwrap()
}

fn ramp(on_failure: OnFailure) -> Ramp {
    Ramp {
        steps: vec![10, 50, 100],
        hold: Duration::from_secs(5),
        on_failure,
    }
}

fn write(action: &Action) -> (u8, State, Option<&'static str>) {
    match action {
        Action::Write {
            rollout,
            status,
            event,
        } => (*rollout, status.state, event.as_ref().map(|e| e.reason)),
        Action::Wait => panic!("expected a write, got Wait"),
    }
}

#[test]
fn steps_are_increasing_percentages() {
    assert_eq!(parse_steps("10,25,50,100").unwrap(), [10, 25, 50, 100]);
    assert_eq!(parse_steps(" 5, 100").unwrap(), [5, 100]);
    assert_eq!(parse_steps("100").unwrap(), [100]);
    for bad in [
        "", "0,50", "10,10", "50,25", "10,101", "10,,50", "10%,50", "-5", "1e2", "10 20", "0100",
    ] {
        let error = parse_steps(bad).expect_err(bad).to_string();
        assert!(
            error.contains("increasing whole percentages"),
            "{bad}: {error}"
        );
    }
}

#[test]
fn step_durations_are_go_durations() {
    let cases = [
        ("24h", 86_400.0),
        ("90m", 5_400.0),
        ("1h30m", 5_400.0),
        ("1.5h", 5_400.0),
        ("5s", 5.0),
        ("1500ms", 1.5),
        ("2h45m30s", 9_930.0),
    ];
    for (text, seconds) in cases {
        let parsed = parse_step_duration(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(
            (parsed.as_secs_f64() - seconds).abs() < 1e-9,
            "{text}: {parsed:?}"
        );
    }
    for bad in [
        "", "24", "1d", "h", "1.2.3h", "-5s", "500ms", "400d", "5 s", "1hh", "1e3s",
    ] {
        let error = parse_step_duration(bad).expect_err(bad).to_string();
        assert!(error.contains("a duration from 1s"), "{bad}: {error}");
    }
}

#[test]
fn the_status_reads_back_what_archway_wrote() {
    let r = ramp(OnFailure::Pause);
    let statuses = [
        Status {
            state: State::Holding,
            rollout: 50,
            since: at(0),
            reason: None,
        },
        Status {
            state: State::Paused,
            rollout: 50,
            since: at(7),
            reason: Some("Deployment web is held (2 pods CrashLoopBackOff on arm64)".into()),
        },
        Status {
            state: State::Done,
            rollout: 100,
            since: at(9),
            reason: None,
        },
    ];
    for status in statuses {
        let text = status.render(&r);
        assert_eq!(Status::parse(&text).as_ref(), Some(&status), "{text}");
    }
    let holding = Status::parse("holding 50% since 2026-12-03T10:00:00Z").unwrap();
    assert_eq!(
        holding.render(&r),
        "holding 50% since 2026-12-03T10:00:00Z; next 100% due 2026-12-03T10:00:05Z"
    );
    for foreign in [
        "",
        "resume",
        "holding lots",
        "paused at 50% since yesterday: x",
        "holding 150% since 2026-12-03T10:00:00Z",
    ] {
        assert_eq!(Status::parse(foreign), None, "{foreign}");
    }
}

/// A ramp from nothing to 100 with no failure: one write per step, each
/// once its step has held.
#[test]
fn a_healthy_ramp_advances_a_step_each_time_one_holds() {
    let r = ramp(OnFailure::Pause);
    // Started: the rollout goes to the first step.
    let action = next(&r, 0, None, &[], at(0));
    assert_eq!(write(&action), (10, State::Holding, Some("RampStep")));
    let Action::Write { status, .. } = action else {
        unreachable!()
    };
    // Not held long enough yet.
    assert_eq!(next(&r, 10, Some(&status), &[], at(4)), Action::Wait);
    let action = next(&r, 10, Some(&status), &[], at(5));
    assert_eq!(write(&action), (50, State::Holding, Some("RampStep")));
    let Action::Write { status, event, .. } = action else {
        unreachable!()
    };
    assert_eq!(
        event.unwrap().note,
        "ramp: 10% held for 5s; rollout set to 50%"
    );
    assert_eq!(status.since, at(5));
    let action = next(&r, 50, Some(&status), &[], at(11));
    assert_eq!(write(&action), (100, State::Done, Some("RampDone")));
    let Action::Write { status, .. } = action else {
        unreachable!()
    };
    assert_eq!(next(&r, 100, Some(&status), &[], at(1000)), Action::Wait);
}

#[test]
fn a_failing_step_pauses_steps_back_or_rolls_back_as_the_namespace_says() {
    let blockers = ["Deployment web is held (2 pods CrashLoopBackOff on arm64)".to_string()];
    let holding = Status {
        state: State::Holding,
        rollout: 50,
        since: at(0),
        reason: None,
    };
    let cases = [
        (OnFailure::Pause, 50, "RampPaused", "ramp paused at 50%"),
        (
            OnFailure::StepBack,
            10,
            "RampSteppedBack",
            "ramp stepped back from 50% to 10%",
        ),
        (
            OnFailure::Rollback,
            0,
            "RampRolledBack",
            "ramp rolled back from 50% to 0%",
        ),
    ];
    for (on_failure, to, reason, note) in cases {
        let r = ramp(on_failure);
        let action = next(&r, 50, Some(&holding), &blockers, at(2));
        assert_eq!(write(&action), (to, State::Paused, Some(reason)));
        let Action::Write { status, event, .. } = action else {
            unreachable!()
        };
        let event = event.unwrap();
        assert!(event.warning);
        assert!(event.note.starts_with(note), "{}", event.note);
        assert!(event.note.contains(&blockers[0]));
        // Paused: nothing more, even healthy and long after.
        assert_eq!(next(&r, to, Some(&status), &[], at(10_000)), Action::Wait);
        // The person's resume (status removed): a new hold from where it is.
        let resumed = next(&r, to, None, &[], at(20_000));
        let expected = if to == 0 { 10 } else { to };
        assert_eq!(write(&resumed).0, expected);
    }
    // Stepping back from the first step goes to 0.
    let first = Status {
        rollout: 10,
        ..holding.clone()
    };
    let action = next(
        &ramp(OnFailure::StepBack),
        10,
        Some(&first),
        &blockers,
        at(1),
    );
    assert_eq!(write(&action).0, 0);
}

/// Another leader carries on from the written state: the same inputs give
/// the same answer, and a step is taken once.
#[test]
fn a_new_leader_continues_without_skipping_or_repeating() {
    let r = ramp(OnFailure::Pause);
    let written = Status {
        state: State::Holding,
        rollout: 50,
        since: at(0),
        reason: None,
    };
    let text = written.render(&r);
    let read = Status::parse(&text).unwrap();
    assert_eq!(next(&r, 50, Some(&read), &[], at(3)), Action::Wait);
    let first = next(&r, 50, Some(&read), &[], at(6));
    assert_eq!(write(&first).0, 100);
    // The step was written; read back, it is not taken again.
    let Action::Write { status, .. } = first else {
        unreachable!()
    };
    let again = Status::parse(&status.render(&r)).unwrap();
    assert_eq!(next(&r, 100, Some(&again), &[], at(7)), Action::Wait);
}

/// A rollout a person set by hand is the ramp's new starting point; it
/// is never lowered by starting.
#[test]
fn a_rollout_changed_by_hand_restarts_the_hold_from_it() {
    let r = ramp(OnFailure::Pause);
    let written = Status {
        state: State::Holding,
        rollout: 10,
        since: at(0),
        reason: None,
    };
    let action = next(&r, 30, Some(&written), &[], at(2));
    let Action::Write {
        rollout,
        status,
        event,
    } = action
    else {
        panic!()
    };
    assert_eq!((rollout, status.since, event), (30, at(2), None));
    assert_eq!(next_step(&r, 30), Some(50));
}

#[test]
fn a_long_list_of_blockers_is_cut_in_the_status() {
    let r = ramp(OnFailure::Pause);
    let holding = Status {
        state: State::Holding,
        rollout: 50,
        since: at(0),
        reason: None,
    };
    let blockers: Vec<String> = (0..100)
        .map(|i| format!("Deployment w{i} is held"))
        .collect();
    let Action::Write { status, .. } = next(&r, 50, Some(&holding), &blockers, at(1)) else {
        panic!()
    };
    let reason = status.reason.unwrap();
    assert!(reason.chars().count() <= 301, "{}", reason.len());
    assert!(reason.ends_with('…'));
}

use serde_json::{Value, json};

use super::*;
use crate::decision::platform::Platform;
use crate::decision::policy::Rollout;

fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("test pod")
}

fn simple_pod() -> Value {
    json!({
        "metadata": {"name": "web-1", "namespace": "shop"},
        "spec": {"containers": [{"name": "web", "image": "r/web:1"}]}
    })
}

fn policy(mode: Mode, rollout: u8) -> NamespacePolicy {
    NamespacePolicy {
        mode,
        rollout: Rollout::new(rollout).unwrap(),
        rollout_by: RolloutBy::Pod,
        placement: Placement::Required,
        cold: None,
        guard: Default::default(),
        ramp: None,
        problems: Vec::new(),
    }
}

fn settings(fail_closed: bool) -> DecisionSettings {
    DecisionSettings {
        target_architecture: "arm64".into(),
        fail_closed,
        tolerations: crate::decision::placement::default_tolerations(),
    }
}

fn found(archs: &[&str]) -> ImageLookup {
    ImageLookup::Found(
        archs
            .iter()
            .map(|a| match a.split_once('/') {
                Some((os, arch)) => Platform::new(os, arch, None),
                None => Platform::linux(a),
            })
            .collect::<BTreeSet<_>>()
            .into(),
    )
}

fn lookups_for(pod: &Pod, per_image: &[ImageLookup]) -> Vec<(ContainerImage, ImageLookup)> {
    container_images(pod)
        .into_iter()
        .zip(per_image.iter().cloned())
        .collect()
}

fn run(
    pod_json: Value,
    policy: &NamespacePolicy,
    per_image: &[ImageLookup],
    fail_closed: bool,
) -> Decision {
    let pod = pod(pod_json);
    let lookups = lookups_for(&pod, per_image);
    decide(&DecisionInput {
        pod: &pod,
        policy,
        lookups: &lookups,
        settings: &settings(fail_closed),
        request_uid: "uid-1",
        draw: None,
        nodes: None,
        hold: None,
    })
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn injection(decision: &Decision) -> &Injection {
    match &decision.outcome {
        Outcome::Inject(injection) => injection,
        other => panic!("expected an injection, got {other:?} ({})", decision.reason),
    }
}

#[test]
fn rollout_zero_keeps_multi_arch_pods_off_the_target() {
    let d = run(
        simple_pod(),
        &policy(Mode::Enforce, 0),
        &[found(&["amd64", "arm64"])],
        false,
    );
    assert_eq!(d.kind, DecisionKind::Held);
    let i = injection(&d);
    assert_eq!(i.required, set(&["amd64"]));
    assert_eq!(i.tolerate, set(&["amd64"]));
    assert_eq!(i.preferred, None);
    assert_eq!(i.annotations[ARCHS_ANNOTATION], "amd64,arm64");
    assert!(i.annotations[DECISION_ANNOTATION].starts_with("amd64: rollout 0%, bucket "));
}

#[test]
fn rollout_hundred_steers_every_eligible_pod() {
    let d = run(
        simple_pod(),
        &policy(Mode::Enforce, 100),
        &[found(&["amd64", "arm64"])],
        false,
    );
    assert_eq!(d.kind, DecisionKind::Steered);
    assert_eq!(injection(&d).required, set(&["arm64"]));
    assert_eq!(injection(&d).tolerate, set(&["arm64"]));
}

#[test]
fn single_architecture_images_go_where_they_run_whatever_the_rollout() {
    for rollout in [0, 50, 100] {
        let amd = run(
            simple_pod(),
            &policy(Mode::Enforce, rollout),
            &[found(&["amd64"])],
            false,
        );
        assert_eq!(
            (amd.kind, &injection(&amd).required),
            (DecisionKind::OnlyOption, &set(&["amd64"]))
        );
        let arm = run(
            simple_pod(),
            &policy(Mode::Enforce, rollout),
            &[found(&["arm64"])],
            false,
        );
        assert_eq!(
            (arm.kind, &injection(&arm).required),
            (DecisionKind::OnlyOption, &set(&["arm64"]))
        );
        assert_eq!(
            injection(&arm).annotations[DECISION_ANNOTATION],
            "arm64: the only architecture its images publish"
        );
    }
}

#[test]
fn supported_set_is_the_intersection_over_init_and_main_containers() {
    let pod_json = json!({
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {
            "initContainers": [{"name": "migrate", "image": "r/migrate:1"}],
            "containers": [{"name": "web", "image": "r/web:1"}, {"name": "proxy", "image": "r/proxy:1"}]
        }
    });
    let d = run(
        pod_json,
        &policy(Mode::Enforce, 100),
        &[
            found(&["amd64"]),
            found(&["amd64", "arm64", "s390x"]),
            found(&["amd64", "arm64"]),
        ],
        false,
    );
    assert_eq!(
        d.supported,
        Some(set(&["amd64"])),
        "the init container narrows S"
    );
    assert_eq!(injection(&d).required, set(&["amd64"]));
}

#[test]
fn windows_and_variants_count_only_as_linux_architectures() {
    let d = run(
        simple_pod(),
        &policy(Mode::Enforce, 100),
        &[found(&["windows/arm64", "amd64"])],
        false,
    );
    assert_eq!(d.supported, Some(set(&["amd64"])));
}

#[test]
fn preferred_placement_requires_what_runs_and_prefers_the_choice() {
    let mut p = policy(Mode::Enforce, 100);
    p.placement = Placement::Preferred;
    let d = run(simple_pod(), &p, &[found(&["amd64", "arm64"])], false);
    let i = injection(&d);
    assert_eq!(i.required, set(&["amd64", "arm64"]));
    assert_eq!(i.preferred, Some(set(&["arm64"])));
    assert_eq!(
        i.tolerate,
        set(&["amd64", "arm64"]),
        "the pod may land on either side"
    );
    // With no choice, no preference.
    let only = run(simple_pod(), &p, &[found(&["amd64"])], false);
    assert_eq!(injection(&only).preferred, None);
}

#[test]
fn no_common_architecture_warns_or_denies() {
    let pod_json = json!({
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {"containers": [{"name": "a", "image": "r/a:1"}, {"name": "b", "image": "r/b:1"}]}
    });
    let images = [found(&["amd64"]), found(&["arm64"])];
    let open = run(pod_json.clone(), &policy(Mode::Enforce, 50), &images, false);
    assert_eq!(
        (open.outcome.clone(), open.kind),
        (Outcome::Unchanged, DecisionKind::NoCommonArchitecture)
    );
    assert_eq!(open.supported, Some(BTreeSet::new()));
    assert!(
        open.warnings[0].contains("share no Linux architecture"),
        "{:?}",
        open.warnings
    );
    assert!(
        open.warnings[0].contains("a: linux/amd64; b: linux/arm64"),
        "{:?}",
        open.warnings
    );
    let closed = run(pod_json.clone(), &policy(Mode::Enforce, 50), &images, true);
    assert_eq!(closed.outcome, Outcome::Deny);
    let audit = run(pod_json, &policy(Mode::Audit, 50), &images, true);
    assert_eq!(audit.outcome, Outcome::Unchanged, "audit never denies");
    // Windows-only is empty for Linux nodes too.
    let windows = run(
        simple_pod(),
        &policy(Mode::Enforce, 50),
        &[found(&["windows/amd64"])],
        false,
    );
    assert_eq!(windows.kind, DecisionKind::NoCommonArchitecture);
}

#[test]
fn failed_inspection_admits_unchanged_with_the_reason_or_denies() {
    let failed = ImageLookup::Failed("registry r did not answer in time".into());
    let open = run(
        simple_pod(),
        &policy(Mode::Enforce, 50),
        std::slice::from_ref(&failed),
        false,
    );
    assert_eq!(
        (open.outcome.clone(), open.kind),
        (Outcome::Unchanged, DecisionKind::InspectionFailed)
    );
    assert_eq!(
        open.warnings,
        ["image r/web:1 (container web): registry r did not answer in time"]
    );
    assert_eq!(open.supported, None);
    let closed = run(simple_pod(), &policy(Mode::Enforce, 50), &[failed], true);
    assert_eq!(closed.outcome, Outcome::Deny);
}

#[test]
fn the_users_own_arch_choice_is_kept_and_checked() {
    let mut with_selector = simple_pod();
    with_selector["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "arm64", "disk": "ssd"});
    let ok = run(
        with_selector.clone(),
        &policy(Mode::Enforce, 0),
        &[found(&["amd64", "arm64"])],
        false,
    );
    assert_eq!(
        (ok.outcome.clone(), ok.kind),
        (Outcome::Unchanged, DecisionKind::UserChoice)
    );
    assert!(ok.warnings.is_empty());
    let bad = run(
        with_selector,
        &policy(Mode::Enforce, 0),
        &[found(&["amd64"])],
        false,
    );
    assert_eq!(bad.outcome, Outcome::Unchanged);
    assert_eq!(
        bad.warnings,
        ["the pod asks for arm64 but its images publish only amd64"]
    );

    let mut with_affinity = simple_pod();
    with_affinity["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "beta.kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}]
    }}});
    let partly = run(
        with_affinity,
        &policy(Mode::Enforce, 0),
        &[found(&["amd64"])],
        true,
    );
    assert_eq!(partly.kind, DecisionKind::UserChoice);
    assert_eq!(
        partly.outcome,
        Outcome::Unchanged,
        "the user's choice is never denied"
    );
    assert_eq!(
        partly.warnings,
        ["the pod asks for arm64 but its images publish only amd64"]
    );

    let mut not_in = simple_pod();
    not_in["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "NotIn", "values": ["s390x"]}]}]
    }}});
    let d = run(
        not_in,
        &policy(Mode::Enforce, 0),
        &[found(&["amd64"])],
        false,
    );
    assert_eq!((d.kind, d.warnings.len()), (DecisionKind::UserChoice, 0));
}

#[test]
fn other_affinity_does_not_count_as_an_arch_choice() {
    let mut p = simple_pod();
    p["spec"]["nodeSelector"] = json!({"kubernetes.io/os": "linux"});
    p["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]
    }}});
    assert_eq!(user_architectures(&pod(p)), None);
}

#[test]
fn prescreen_reasons_need_no_lookup() {
    let cases: Vec<(Value, DecisionKind)> = vec![
        (
            json!({"metadata": {"annotations": {"archway.dev/skip": "true"}}}),
            DecisionKind::Skipped,
        ),
        (
            json!({"metadata": {"annotations": {"archway.dev/skip": "True"}}}),
            DecisionKind::Skipped,
        ),
        (
            json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}}),
            DecisionKind::MirrorPod,
        ),
    ];
    for (value, kind) in cases {
        let mut base = simple_pod();
        json_merge(&mut base, value);
        let p = pod(base);
        let d = prescreen(&p, Some(&policy(Mode::Enforce, 100))).expect("prescreened");
        assert_eq!((d.kind, d.outcome), (kind, Outcome::Unchanged));
    }
    let p = pod(simple_pod());
    assert_eq!(prescreen(&p, None).unwrap().kind, DecisionKind::NotOptedIn);
    assert_eq!(prescreen(&p, Some(&policy(Mode::Enforce, 100))), None);
    let mut not_skipped = simple_pod();
    json_merge(
        &mut not_skipped,
        json!({"metadata": {"annotations": {"archway.dev/skip": "false"}}}),
    );
    assert_eq!(
        prescreen(&pod(not_skipped), Some(&policy(Mode::Enforce, 100))),
        None
    );
}

fn json_merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (k, v) in patch {
                json_merge(base.entry(k).or_insert(Value::Null), v);
            }
        }
        (base, patch) => *base = patch,
    }
}

#[test]
fn namespace_policy_problems_become_warnings() {
    let mut p = policy(Mode::Enforce, 0);
    p.problems.push("archway.dev/rollout: bad".into());
    let d = run(simple_pod(), &p, &[found(&["amd64", "arm64"])], false);
    assert_eq!(d.warnings, ["namespace policy: archway.dev/rollout: bad"]);
}

fn replica_set_pod(rs: &str, hash: &str, name: Option<&str>) -> Pod {
    let mut value = json!({
        "metadata": {
            "generateName": format!("{rs}-"),
            "namespace": "shop",
            "labels": {"pod-template-hash": hash},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u", "controller": true}]
        },
        "spec": {"containers": [{"name": "web", "image": "r/web:1"}]}
    });
    if let Some(name) = name {
        value["metadata"]["name"] = json!(name);
    }
    pod(value)
}

#[test]
fn workload_buckets_follow_the_deployment_across_replica_sets() {
    let a = replica_set_pod("web-5d8f7c9b6", "5d8f7c9b6", None);
    let b = replica_set_pod("web-7f6d5c4b3", "7f6d5c4b3", None);
    assert_eq!(
        bucket_key(&a, RolloutBy::Workload, "uid-a"),
        "shop/Deployment/web"
    );
    assert_eq!(
        bucket_key(&a, RolloutBy::Workload, "uid-a"),
        bucket_key(&b, RolloutBy::Workload, "uid-b")
    );
    // Per pod, a pod without a name yet is keyed by the review.
    assert_eq!(bucket_key(&a, RolloutBy::Pod, "uid-a"), "shop/Pod/uid-a");
    let named = replica_set_pod("web-5d8f7c9b6", "5d8f7c9b6", Some("web-5d8f7c9b6-x1"));
    assert_eq!(
        bucket_key(&named, RolloutBy::Pod, "uid"),
        "shop/Pod/web-5d8f7c9b6-x1"
    );
    // A ReplicaSet whose name does not end in its hash stays itself.
    let bare = replica_set_pod("standalone", "abc", None);
    assert_eq!(
        bucket_key(&bare, RolloutBy::Workload, "u"),
        "shop/ReplicaSet/standalone"
    );
    // No owner: per pod.
    assert_eq!(
        bucket_key(&pod(simple_pod()), RolloutBy::Workload, "u"),
        "shop/Pod/web-1"
    );
    let job = pod(
        json!({"metadata": {"name": "j-1", "namespace": "ci", "ownerReferences": [
        {"apiVersion": "batch/v1", "kind": "Job", "name": "build", "uid": "u", "controller": true}]}}),
    );
    assert_eq!(bucket_key(&job, RolloutBy::Workload, "u"), "ci/Job/build");
}

#[test]
fn workload_rollout_puts_every_pod_of_a_deployment_on_one_side() {
    let mut p = policy(Mode::Enforce, 50);
    p.rollout_by = RolloutBy::Workload;
    let sides: BTreeSet<BTreeSet<String>> = (0..20)
        .map(|i| {
            let pod = replica_set_pod(&format!("web-{i}abc"), &format!("{i}abc"), None);
            let lookups = lookups_for(&pod, &[found(&["amd64", "arm64"])]);
            let uid = format!("uid-{i}");
            let d = decide(&DecisionInput {
                pod: &pod,
                policy: &p,
                lookups: &lookups,
                settings: &settings(false),
                request_uid: &uid,
                draw: None,
                nodes: None,
                hold: None,
            });
            injection(&d).required.clone()
        })
        .collect();
    assert_eq!(sides.len(), 1, "one Deployment, one side: {sides:?}");
}

#[test]
fn buckets_are_stable_uniform_and_monotone_in_the_rollout() {
    assert_eq!(
        rollout_bucket("shop/Pod/web-1"),
        rollout_bucket("shop/Pod/web-1")
    );
    let mut counts = [0u32; 100];
    for i in 0..100_000 {
        counts[rollout_bucket(&format!("ns/Pod/p-{i}")) as usize] += 1;
    }
    // 1,000 expected per bucket; a fair hash stays well inside ±20%.
    assert!(
        counts.iter().all(|&c| (800..1200).contains(&c)),
        "{counts:?}"
    );
    // Raising the rollout only moves pods toward the target.
    let pods: Vec<Pod> = (0..300)
        .map(|i| {
            pod(
                json!({"metadata": {"name": format!("p-{i}"), "namespace": "shop"},
            "spec": {"containers": [{"name": "c", "image": "r/c:1"}]}}),
            )
        })
        .collect();
    let mut previous: BTreeSet<usize> = BTreeSet::new();
    for rollout in [0, 10, 25, 50, 75, 100] {
        let steered: BTreeSet<usize> = pods
            .iter()
            .enumerate()
            .filter(|(_, pod)| {
                let lookups = lookups_for(pod, &[found(&["amd64", "arm64"])]);
                let d = decide(&DecisionInput {
                    pod,
                    policy: &policy(Mode::Enforce, rollout),
                    lookups: &lookups,
                    settings: &settings(false),
                    request_uid: "u",
                    draw: None,
                    nodes: None,
                    hold: None,
                });
                d.kind == DecisionKind::Steered
            })
            .map(|(i, _)| i)
            .collect();
        assert!(
            previous.is_subset(&steered),
            "rollout {rollout} moved a pod back"
        );
        let share = steered.len() as f64 / pods.len() as f64 * 100.0;
        assert!(
            (share - rollout as f64).abs() <= 8.0,
            "rollout {rollout}: {share}%"
        );
        previous = steered;
    }
    assert_eq!(previous.len(), pods.len());
}

#[test]
fn audit_mode_decides_the_same() {
    let enforce = run(
        simple_pod(),
        &policy(Mode::Enforce, 100),
        &[found(&["amd64", "arm64"])],
        false,
    );
    let audit = run(
        simple_pod(),
        &policy(Mode::Audit, 100),
        &[found(&["amd64", "arm64"])],
        false,
    );
    assert_eq!(
        enforce, audit,
        "the admission layer, not the decision, makes audit a dry run"
    );
}

#[test]
fn pods_without_spec_or_images_do_not_panic() {
    let empty = pod(json!({"metadata": {}}));
    assert!(container_images(&empty).is_empty());
    let d = decide(&DecisionInput {
        pod: &empty,
        policy: &policy(Mode::Enforce, 50),
        lookups: &[],
        settings: &settings(false),
        request_uid: "u",
        draw: None,
        nodes: None,
        hold: None,
    });
    assert_eq!(
        (d.kind, d.outcome),
        (DecisionKind::Skipped, Outcome::Unchanged)
    );
}

fn with_nodes(rollout: u8, images: &[ImageLookup], nodes: &[&str]) -> Decision {
    let pod = pod(simple_pod());
    let lookups = lookups_for(&pod, images);
    let nodes = Nodes::of_architectures(nodes.iter().copied());
    decide(&DecisionInput {
        pod: &pod,
        policy: &policy(Mode::Enforce, rollout),
        lookups: &lookups,
        settings: &settings(false),
        request_uid: "u",
        draw: None,
        nodes: Some(&nodes),
        hold: None,
    })
}

#[test]
fn never_chooses_an_architecture_without_nodes_when_another_has_some() {
    // Steered to arm64, but the cluster has no arm64 node yet.
    let d = with_nodes(100, &[found(&["amd64", "arm64"])], &["amd64"]);
    assert_eq!(injection(&d).required, set(&["amd64"]));
    assert_eq!(d.without_nodes, set(&["arm64"]));
    assert_eq!(
        d.warnings,
        ["no arm64 node in the cluster; placed on amd64 instead"]
    );
    assert_eq!(d.reason, "amd64 (arm64 has no node)");
    // Both sides have nodes: the rollout decides.
    let d = with_nodes(100, &[found(&["amd64", "arm64"])], &["amd64", "arm64"]);
    assert_eq!(
        (injection(&d).required.clone(), d.warnings.len()),
        (set(&["arm64"]), 0)
    );
    // No node for the only architecture the images run on: say so, keep it.
    let d = with_nodes(0, &[found(&["arm64"])], &["amd64"]);
    assert_eq!(injection(&d).required, set(&["arm64"]));
    assert!(d.warnings[0].contains("stays Pending"), "{:?}", d.warnings);
}

fn windows_pod(spec_extra: Value) -> Value {
    let mut value = simple_pod();
    json_merge(&mut value, json!({"spec": spec_extra}));
    value
}

fn os_in(values: &[&str]) -> Value {
    json!({"matchExpressions": [{"key": "kubernetes.io/os", "operator": "In", "values": values}]})
}

fn required_terms(terms: Vec<Value>) -> Value {
    json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": terms}}}})
}

#[test]
fn the_pods_os_comes_from_its_spec_then_its_selector_then_its_affinity() {
    let known = |os: &str| PodOs::Known(os.into());
    let zone = json!({"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]});
    let cases: Vec<(&str, Value, PodOs)> = vec![
        ("nothing said", json!({}), known("linux")),
        (
            "spec.os",
            json!({"os": {"name": "windows"}}),
            known("windows"),
        ),
        (
            "spec.os spelt in capitals",
            json!({"os": {"name": "Windows"}}),
            known("windows"),
        ),
        (
            "spec.os wins over the selector",
            json!({"os": {"name": "windows"}, "nodeSelector": {"kubernetes.io/os": "linux"}}),
            known("windows"),
        ),
        (
            "nodeSelector",
            json!({"nodeSelector": {"kubernetes.io/os": "windows"}}),
            known("windows"),
        ),
        (
            "deprecated nodeSelector label",
            json!({"nodeSelector": {"beta.kubernetes.io/os": "windows"}}),
            known("windows"),
        ),
        (
            "affinity In one value, in every term",
            required_terms(vec![os_in(&["windows"]), os_in(&["windows"])]),
            known("windows"),
        ),
        (
            "affinity without an os expression",
            required_terms(vec![zone.clone()]),
            known("linux"),
        ),
    ];
    for (case, spec, expected) in cases {
        assert_eq!(pod_os(&pod(windows_pod(spec))), expected, "{case}");
    }
    let unclear: Vec<(&str, Value)> = vec![
        (
            "In two values",
            required_terms(vec![os_in(&["linux", "windows"])]),
        ),
        (
            "one term of two names an os: the other allows any",
            required_terms(vec![os_in(&["windows"]), zone]),
        ),
        (
            "terms disagree",
            required_terms(vec![os_in(&["windows"]), os_in(&["linux"])]),
        ),
        (
            "NotIn",
            required_terms(vec![json!({"matchExpressions": [
                {"key": "kubernetes.io/os", "operator": "NotIn", "values": ["linux"]}]})]),
        ),
        (
            "a value no OS has, and long",
            json!({"nodeSelector": {"kubernetes.io/os": "w".repeat(4000)}}),
        ),
        (
            "a value with a newline",
            json!({"os": {"name": "windows\nx"}}),
        ),
    ];
    for (case, spec) in unclear {
        match pod_os(&pod(windows_pod(spec))) {
            PodOs::Unclear(why) => assert!(why.len() < 120, "{case}: {why}"),
            known => panic!("{case}: {known:?}"),
        }
    }
}

/// The case: images publishing linux/arm64 and windows/amd64, a
/// namespace at rollout 100.
#[test]
fn a_windows_pod_is_placed_by_its_windows_platforms_and_never_steered() {
    let image = found(&["arm64", "windows/amd64"]);
    let by_spec = json!({"os": {"name": "windows"}});
    let by_selector = json!({"nodeSelector": {"kubernetes.io/os": "windows"}});
    let by_affinity = required_terms(vec![os_in(&["windows"])]);
    for spec in [by_spec, by_selector, by_affinity] {
        let d = run(
            windows_pod(spec.clone()),
            &policy(Mode::Enforce, 100),
            std::slice::from_ref(&image),
            false,
        );
        assert_eq!(d.kind, DecisionKind::OtherOs, "{spec}");
        assert_eq!(d.supported, Some(set(&["amd64"])));
        let i = injection(&d);
        assert_eq!(
            (i.os.as_str(), &i.required, &i.tolerate, &i.preferred),
            ("windows", &set(&["amd64"]), &set(&["amd64"]), &None),
            "{spec}"
        );
        assert_eq!(
            i.annotations[DECISION_ANNOTATION],
            "amd64: what its Windows images publish (the rollout steers Linux pods only)"
        );
    }
    // The same image in a Linux pod: arm64, its only Linux platform.
    let linux = run(simple_pod(), &policy(Mode::Enforce, 100), &[image], false);
    assert_eq!(
        (
            linux.kind,
            &injection(&linux).required,
            injection(&linux).os.as_str()
        ),
        (DecisionKind::OnlyOption, &set(&["arm64"]), "linux")
    );
    // Windows images for both architectures: both allowed at any rollout,
    // with or without a preferred placement.
    for rollout in [0, 100] {
        let mut p = policy(Mode::Enforce, rollout);
        for placement in [Placement::Required, Placement::Preferred] {
            p.placement = placement;
            let d = run(
                windows_pod(json!({"os": {"name": "windows"}})),
                &p,
                &[found(&["windows/amd64", "windows/arm64", "amd64"])],
                false,
            );
            let i = injection(&d);
            assert_eq!(
                (d.kind, &i.required, &i.preferred),
                (DecisionKind::OtherOs, &set(&["amd64", "arm64"]), &None),
                "rollout {rollout}, {placement:?}"
            );
        }
    }
}

#[test]
fn a_windows_pod_whose_images_share_no_windows_platform_warns_or_denies() {
    let pod_json = windows_pod(json!({"os": {"name": "windows"}}));
    // Linux-only images: nothing for a Windows node.
    let linux_only = [found(&["amd64", "arm64"])];
    let open = run(
        pod_json.clone(),
        &policy(Mode::Enforce, 100),
        &linux_only,
        false,
    );
    assert_eq!(
        (open.kind, open.outcome.clone()),
        (DecisionKind::NoCommonArchitecture, Outcome::Unchanged)
    );
    assert!(
        open.warnings[0].contains("share no Windows architecture"),
        "{:?}",
        open.warnings
    );
    assert_eq!(open.reason, "images share no Windows architecture");
    let closed = run(
        pod_json.clone(),
        &policy(Mode::Enforce, 100),
        &linux_only,
        true,
    );
    assert_eq!(closed.outcome, Outcome::Deny);
    // Windows-only images: fine for a Windows pod, even with failClosed
    // (the false "share no Linux architecture" denial).
    let windows_only = [found(&["windows/amd64"])];
    let d = run(pod_json, &policy(Mode::Enforce, 100), &windows_only, true);
    assert_eq!(
        (d.kind, &injection(&d).required, d.warnings.len()),
        (DecisionKind::OtherOs, &set(&["amd64"]), 0)
    );
}

#[test]
fn a_windows_pods_own_arch_choice_is_checked_against_its_windows_platforms() {
    let d = run(
        windows_pod(json!({"os": {"name": "windows"},
                           "nodeSelector": {"kubernetes.io/arch": "arm64"}})),
        &policy(Mode::Enforce, 100),
        &[found(&["arm64", "windows/amd64"])],
        false,
    );
    assert_eq!(
        (d.kind, d.outcome.clone()),
        (DecisionKind::UserChoice, Outcome::Unchanged)
    );
    assert_eq!(
        d.warnings,
        ["the pod asks for arm64 but its images publish only amd64"]
    );
    let none = run(
        windows_pod(json!({"os": {"name": "windows"},
                           "nodeSelector": {"kubernetes.io/arch": "arm64"}})),
        &policy(Mode::Enforce, 100),
        &[found(&["arm64"])],
        false,
    );
    assert_eq!(
        none.warnings,
        ["the pod asks for arm64 but its images publish only no Windows architecture"]
    );
}

#[test]
fn a_pod_whose_affinity_allows_several_oses_is_left_to_it() {
    let mut p = policy(Mode::Enforce, 100);
    p.problems.push("archway.dev/rollout: bad".into());
    let d = run(
        windows_pod(required_terms(vec![os_in(&["linux", "windows"])])),
        &p,
        &[found(&["amd64", "arm64", "windows/amd64"])],
        true,
    );
    assert_eq!(
        (d.kind, d.outcome.clone()),
        (DecisionKind::UserChoice, Outcome::Unchanged),
        "never denied, even with failClosed"
    );
    assert!(
        d.reason.contains("more than one kubernetes.io/os"),
        "{}",
        d.reason
    );
    assert_eq!(d.warnings, ["namespace policy: archway.dev/rollout: bad"]);
}

#[test]
fn a_windows_pod_avoids_architectures_with_no_node_at_all() {
    let pod = pod(windows_pod(json!({"os": {"name": "windows"}})));
    let lookups = lookups_for(&pod, &[found(&["windows/amd64", "windows/arm64"])]);
    let nodes = Nodes::of_architectures(["amd64"]);
    let d = decide(&DecisionInput {
        pod: &pod,
        policy: &policy(Mode::Enforce, 100),
        lookups: &lookups,
        settings: &settings(false),
        request_uid: "u",
        draw: None,
        nodes: Some(&nodes),
        hold: None,
    });
    assert_eq!(
        (d.kind, &injection(&d).required, &d.without_nodes),
        (DecisionKind::OtherOs, &set(&["amd64"]), &set(&["arm64"]))
    );
}

/// The spread before issue 25: the owner's bucket, then steps of 61 around
/// 0..=99, a pod steered when its bucket is below the rollout.
fn steps_of_61(owner: &str, index: u64, rollout: u8) -> bool {
    ((u64::from(rollout_bucket(owner)) + (index % 100) * 61) % 100) < u64::from(rollout)
}

/// Whether every prefix of the run `steered(0), steered(1), ...` (up to
/// `pods`) has ⌊n·N/100⌋ or ⌈n·N/100⌉ steered; the first n that does not.
fn first_inexact(pods: u64, rollout: u8, steered: impl Fn(u64) -> bool) -> Option<u64> {
    let mut count = 0u64;
    for n in 1..=pods {
        count += u64::from(steered(n - 1));
        let share = n * u64::from(rollout);
        if count < share / 100 || count > share.div_ceil(100) {
            return Some(n);
        }
    }
    None
}

fn owners() -> impl Iterator<Item = String> {
    (0..60)
        .map(|i| format!("ns-{}/Deployment/web-{i}", i % 7))
        .chain(["shop/Deployment/web", "ci/Job/report", "a/StatefulSet/b"].map(String::from))
}

#[test]
fn every_prefix_of_a_workload_s_pods_has_its_share_to_the_pod() {
    // Every phase an owner can have, so every owner.
    for phase in 0..100u8 {
        for rollout in 0..=100u8 {
            for way in [0, 1] {
                let steered = |k: u64| steered_at(phase, 2 * k + way, rollout);
                assert_eq!(
                    first_inexact(200, rollout, steered),
                    None,
                    "phase {phase} at {rollout}%, way {way}"
                );
            }
            // And any run, not only from the start: a restart of the
            // workload at a new rollout, after pods drawn at another.
            for from in [1u64, 13, 99, 150] {
                let steered = |k: u64| steered_at(phase, 2 * (from + k), rollout);
                assert_eq!(
                    first_inexact(200, rollout, steered),
                    None,
                    "phase {phase} from {from}"
                );
            }
        }
    }
    // An owner's phase is its bucket.
    for owner in owners() {
        for (draw, rollout) in [(0, 10), (7, 30), (1, 50), (250, 25)] {
            assert_eq!(
                spread_steered(&owner, draw, rollout),
                steered_at(rollout_bucket(&owner), draw, rollout)
            );
        }
    }
    // Rollout 0 steers none and 100 all, whatever the draw.
    for draw in 0..1000 {
        assert!(!spread_steered("shop/Deployment/web", draw, 0));
        assert!(spread_steered("shop/Deployment/web", draw, 100));
    }
    // The steps of 61 this replaced were not exact: some prefix of some
    // workload at some rollout is two pods or more off its share (for
    // instance 10 pods at 10% with none steered).
    let inexact = owners()
        .flat_map(|owner| (1..=100u8).map(move |r| (owner.clone(), r)))
        .filter(|(owner, r)| first_inexact(200, *r, |i| steps_of_61(owner, i, *r)).is_some())
        .count();
    assert!(inexact > 0);
}

/// Two replicas that drew an owner in opposite directions: whatever number
/// of pods each placed, together they have the share to the pod.
#[test]
fn two_replicas_drawing_opposite_ways_are_exact_together() {
    for phase in (0..100u8).step_by(7) {
        for rollout in 0..=100u8 {
            let prefix = |way: u64| -> Vec<u64> {
                let mut counts = vec![0];
                for k in 0..150 {
                    let steered = u64::from(steered_at(phase, 2 * k + way, rollout));
                    counts.push(counts[k as usize] + steered);
                }
                counts
            };
            let (forward, backward) = (prefix(0), prefix(1));
            for (a, fa) in forward.iter().enumerate() {
                for (b, fb) in backward.iter().enumerate() {
                    let share = (a + b) as u64 * u64::from(rollout);
                    let count = fa + fb;
                    assert!(
                        count >= share / 100 && count <= share.div_ceil(100),
                        "phase {phase} at {rollout}%: {a} forward, {b} backward: {count}"
                    );
                }
            }
        }
    }
}

/// The README's example: 20 Deployments of 10 pods each.
#[test]
fn twenty_ten_pod_deployments_each_get_their_share() {
    for rollout in [10u8, 30, 50] {
        let expected = usize::from(rollout) / 10;
        let mut old = [0usize; 11];
        for d in 0..20 {
            let owner = format!("shop/Deployment/web-{d}");
            for way in [0, 1] {
                let steered = (0..10)
                    .filter(|k| spread_steered(&owner, 2 * k + way, rollout))
                    .count();
                assert_eq!(steered, expected, "{owner} at {rollout}%");
            }
            old[(0..10).filter(|i| steps_of_61(&owner, *i, rollout)).count()] += 1;
        }
        if rollout == 10 {
            // What issue 25 found (3 with none, 4 with two, of its 20):
            // here 3 and 3.
            assert_eq!((old[0], old[1], old[2]), (3, 14, 3), "{old:?}");
        }
    }
}

/// Small workloads start at different places: at 10%, about 3 in 10 of
/// the 3-pod ones steer a pod, not all or none.
#[test]
fn small_workloads_do_not_all_steer_their_first_pod() {
    let one = (0..1000)
        .filter(|d| (0..3).any(|k| spread_steered(&format!("n/Deployment/w{d}"), 2 * k, 10)))
        .count();
    assert!((220..=380).contains(&one), "{one} of 1000");
}

fn decide_with_hold(policy: &NamespacePolicy, hold: Option<&Hold>, images: &[&str]) -> Decision {
    let pod = replica_set_pod("web-7d4b9c", "7d4b9c", None);
    let lookups = lookups_for(&pod, &[found(images)]);
    decide(&DecisionInput {
        pod: &pod,
        policy,
        lookups: &lookups,
        settings: &settings(false),
        request_uid: "uid-1",
        draw: None,
        nodes: None,
        hold,
    })
}

#[test]
fn a_hold_sends_pods_the_rollout_steers_to_the_other_side_in_enforce_only() {
    let hold = Hold {
        architecture: "arm64".into(),
        reason: "held: 2 pods CrashLoopBackOff on arm64 since 2026-12-02T13:40:00Z".into(),
    };
    let both = ["amd64", "arm64"];
    let mut p = policy(Mode::Enforce, 100);
    // (guard mode, hold) -> (kind, required, label, warned)
    let cases = [
        (
            GuardMode::Enforce,
            None,
            DecisionKind::Steered,
            "arm64",
            false,
        ),
        (
            GuardMode::Enforce,
            Some(&hold),
            DecisionKind::GuardHold,
            "amd64",
            false,
        ),
        (
            GuardMode::Observe,
            Some(&hold),
            DecisionKind::Steered,
            "arm64",
            true,
        ),
        (
            GuardMode::Off,
            Some(&hold),
            DecisionKind::Steered,
            "arm64",
            false,
        ),
    ];
    for (mode, hold, kind, side, warned) in cases {
        p.guard = mode;
        let d = decide_with_hold(&p, hold, &both);
        assert_eq!(d.kind, kind, "{mode:?}: {}", d.reason);
        let i = injection(&d);
        assert_eq!(i.required, set(&[side]), "{mode:?}");
        assert_eq!(i.labels.get(ARCH_POD_LABEL).map(String::as_str), Some(side));
        assert_eq!(
            d.warnings.iter().any(|w| w.contains("guard")),
            warned,
            "{:?}",
            d.warnings
        );
    }
    p.guard = GuardMode::Enforce;
    let d = decide_with_hold(&p, Some(&hold), &both);
    assert_eq!(
        injection(&d).annotations[DECISION_ANNOTATION],
        "amd64: held: 2 pods CrashLoopBackOff on arm64 since 2026-12-02T13:40:00Z"
    );
    // A hold on another architecture than the target changes nothing.
    let other = Hold {
        architecture: "amd64".into(),
        ..hold.clone()
    };
    assert_eq!(
        decide_with_hold(&p, Some(&other), &both).kind,
        DecisionKind::Steered
    );
    // Kept off the target by the rollout: labelled with its side too.
    let d = decide_with_hold(&policy(Mode::Enforce, 0), None, &both);
    assert_eq!(d.kind, DecisionKind::Held);
    assert_eq!(injection(&d).labels[ARCH_POD_LABEL], "amd64");
}

#[test]
fn only_pods_the_rollout_placed_are_labelled() {
    let d = decide_with_hold(&policy(Mode::Enforce, 100), None, &["amd64"]);
    assert_eq!(d.kind, DecisionKind::OnlyOption);
    assert!(injection(&d).labels.is_empty());
}

#[test]
fn label_values_are_checked() {
    for good in ["arm64", "amd64", "riscv64", "a", "ppc64le"] {
        assert!(is_label_value(good), "{good}");
    }
    for bad in ["", "-arm", "arm64-", "a/b", "a b", &"x".repeat(64)] {
        assert!(!is_label_value(bad), "{bad}");
    }
}

#[test]
fn only_unnamed_owned_pods_under_rollout_by_pod_draw_in_sequence() {
    let owned = |name: Option<&str>| {
        pod(json!({"metadata": {"name": name, "namespace": "shop",
            "labels": {"pod-template-hash": "5d8f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d8f", "uid": "r1", "controller": true}]},
            "spec": {"containers": [{"name": "c", "image": "x"}]}}))
    };
    assert_eq!(
        spread_owner(&owned(None), RolloutBy::Pod).as_deref(),
        Some("shop/Deployment/web")
    );
    assert_eq!(
        spread_owner(&owned(Some("web-5d8f-abc")), RolloutBy::Pod),
        None
    );
    assert_eq!(spread_owner(&owned(None), RolloutBy::Workload), None);
    let bare = pod(json!({"metadata": {"namespace": "shop"},
        "spec": {"containers": [{"name": "c", "image": "x"}]}}));
    assert_eq!(spread_owner(&bare, RolloutBy::Pod), None);
}

#[test]
fn the_workload_of_a_pod_is_its_deployment_through_its_replica_set() {
    let pod = replica_set_pod("web-7d4b9c", "7d4b9c", None);
    assert_eq!(
        workload(&pod.metadata),
        Some(("Deployment".to_string(), "web".to_string()))
    );
    assert_eq!(workload(&Pod::default().metadata), None);
}

//! The workload shapes real clusters run (tests/corpus/*.yaml), each created
//! in a namespace without archway and in enforce namespaces at rollout 0,
//! 50 and 100, on the real control plane, with one invariant: every pod the
//! scheduler binds without archway is bound with archway, on an
//! architecture all its images run. Other controllers' gates stay until
//! their controller (here, the test) removes them.
//!
//! `cargo test --test corpus -- --nocapture` prints each shape's outcome.

use archway_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::injector::SidecarInjector;
use support::world::{SAMPLE_IMAGES, World, sample_image};
use support::{CountingProxy, Fault};

const ARCHWAY_GATE: &str = "archway.dev/inspect";
/// How long the slow registry holds each manifest answer: longer than the
/// gate's sync budget, so `gate` namespaces gate.
const SLOW: Duration = Duration::from_secs(3);
/// The settings a shape is created under, besides "no archway".
const ROLLOUTS: [u8; 3] = [0, 50, 100];
const SETTLE_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Shape {
    shape: String,
    objects: Vec<Value>,
    #[serde(default)]
    cluster_objects: Vec<Value>,
    #[serde(default)]
    namespace_annotations: BTreeMap<String, String>,
    webhook_gate: Option<String>,
    #[serde(default)]
    release_gates: Vec<String>,
    #[serde(default)]
    run: Vec<Vec<String>>,
    #[serde(default)]
    unrunnable: usize,
}

struct Loaded {
    /// The file's stem: `daemonset-amd64-only`.
    name: String,
    shape: Shape,
}

fn corpus() -> Vec<Loaded> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap();
            let shape: Shape =
                serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            Loaded { name, shape }
        })
        .collect()
}

/// Where a shape is created: without archway, or at a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    Without,
    Rollout(u8),
}

impl Setting {
    fn all() -> impl Iterator<Item = Setting> {
        std::iter::once(Setting::Without).chain(ROLLOUTS.map(Setting::Rollout))
    }

    fn namespace(self, shape: &str) -> String {
        match self {
            Setting::Without => format!("c-{shape}-none"),
            Setting::Rollout(r) => format!("c-{shape}-r{r}"),
        }
    }

    fn label(self) -> String {
        match self {
            Setting::Without => "no archway".into(),
            Setting::Rollout(r) => format!("rollout {r}"),
        }
    }
}

/// `${NAME}` replaced in every string of `value`.
fn substitute(value: &mut Value, images: &BTreeMap<&str, String>) {
    match value {
        Value::String(s) => {
            for (name, image) in images {
                *s = s.replace(&format!("${{{name}}}"), image);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| substitute(v, images)),
        Value::Object(map) => map.values_mut().for_each(|v| substitute(v, images)),
        _ => {}
    }
}

/// What became of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    Bound(String),
    Unschedulable,
    /// Gated, by these gates.
    Gated(Vec<String>),
    /// Not yet looked at by the scheduler.
    Waiting,
}

fn state(pod: &Pod) -> State {
    let spec = pod.spec.as_ref();
    if let Some(node) = spec.and_then(|s| s.node_name.clone()) {
        return State::Bound(node);
    }
    let gates: Vec<String> = (spec.and_then(|s| s.scheduling_gates.clone()))
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.name)
        .collect();
    if !gates.is_empty() {
        return State::Gated(gates);
    }
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    let unschedulable = conditions.into_iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    });
    if unschedulable {
        State::Unschedulable
    } else {
        State::Waiting
    }
}

fn arch_of_node(node: &str) -> &str {
    node.split('-').next().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_pod_bound_without_archway_is_bound_with_it_on_an_architecture_its_images_run() {
    // The slow registry (in front of the world's) is set up before archway,
    // which must trust it.
    let registry = support::Registry::start(support::RegistryOptions::plain());
    let slow = CountingProxy::start_detached(registry.addr());
    slow.set_fault_rule(|r| match r.is_manifest() {
        true => Fault::Delay(SLOW),
        false => Fault::None,
    });
    let world = tokio::task::spawn_blocking({
        let slow_host = slow.host();
        move || {
            World::builder(env!("CARGO_BIN_EXE_archway"))
                .kubelet()
                .registry(registry)
                .sample_images()
                .insecure_registries(&[slow_host])
                .start()
        }
    })
    .await
    .unwrap();
    let client = world.plane.client().await;
    let shapes = corpus();
    assert!(
        shapes.len() >= 19,
        "the corpus lost shapes: {}",
        shapes.len()
    );

    // Each namespace's slow image has a tag of its own: cold in each.
    let mut images_by_namespace: BTreeMap<String, BTreeMap<&str, String>> = BTreeMap::new();
    let mut runs_on: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (reference, archs) in SAMPLE_IMAGES {
        let archs = archs.iter().map(|a| a.to_string()).collect();
        runs_on.insert(world.image(reference), archs);
    }
    for loaded in &shapes {
        for setting in Setting::all() {
            let namespace = setting.namespace(&loaded.name);
            let slow_reference = format!("slow:{namespace}");
            let uses_slow = serde_json::to_string(&loaded.shape.objects)
                .unwrap()
                .contains("${SLOW}");
            if uses_slow {
                let spec = sample_image(&["amd64", "arm64"], &slow_reference);
                world.registry.push_spec(&slow_reference, &spec);
                runs_on.insert(
                    format!("{}/{slow_reference}", slow.host()),
                    ["amd64", "arm64"].map(String::from).into(),
                );
            }
            let images = BTreeMap::from([
                ("MULTI", world.image("multi:v1")),
                ("AMD64", world.image("amd64-only:v1")),
                ("ARM64", world.image("arm64-only:v1")),
                ("SLOW", format!("{}/{slow_reference}", slow.host())),
            ]);
            images_by_namespace.insert(namespace, images);
        }
    }

    // Namespaces, cluster objects, second webhooks, then every shape at once.
    let mut applied_cluster = BTreeSet::new();
    let mut webhooks = Vec::new();
    for loaded in &shapes {
        for object in &loaded.shape.cluster_objects {
            let key = serde_json::to_string(&object["metadata"]["name"]).unwrap();
            if applied_cluster.insert((object["kind"].to_string(), key)) {
                world.plane.apply(std::slice::from_ref(object));
            }
        }
        let namespaces: Vec<String> = Setting::all().map(|s| s.namespace(&loaded.name)).collect();
        for setting in Setting::all() {
            let namespace = setting.namespace(&loaded.name);
            let mut annotations: Vec<(String, String)> = Vec::new();
            let mut labels = Vec::new();
            if let Setting::Rollout(rollout) = setting {
                labels.push(("archway.dev/mode", "enforce"));
                annotations.push(("archway.dev/rollout".into(), rollout.to_string()));
                annotations.extend(loaded.shape.namespace_annotations.clone());
            }
            let annotations: Vec<(&str, &str)> = (annotations.iter())
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            world
                .plane
                .create_namespace(&namespace, &labels, &annotations);
        }
        if let Some(gate) = &loaded.shape.webhook_gate {
            let webhook = SidecarInjector::gate(gate);
            let names: Vec<&str> = namespaces.iter().map(String::as_str).collect();
            world.plane.apply(&[webhook.configuration_for(&names)]);
            webhooks.push(webhook);
        }
    }
    if !webhooks.is_empty() {
        // The configuration reaches the API server's informer a moment
        // after it is applied.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let metrics_before = world.archway.counter("archway_pods_unrunnable_total", &[]);
    let gated_before = world.archway.counter("archway_pods_gated_total", &[]);
    for loaded in &shapes {
        for setting in Setting::all() {
            let namespace = setting.namespace(&loaded.name);
            let mut objects = loaded.shape.objects.clone();
            for object in &mut objects {
                substitute(object, &images_by_namespace[&namespace]);
                object["metadata"]["namespace"] = json!(namespace);
            }
            world.plane.apply(&objects);
            for args in &loaded.shape.run {
                let mut full = vec!["-n", namespace.as_str()];
                full.extend(args.iter().map(String::as_str));
                world.plane.kubectl(&full, None);
            }
        }
    }

    // Settle: archway's gates gone, every other gate released by the test
    // as its controller would, every pod bound, unschedulable, or gated by
    // a gate nobody releases, and nothing changing for a while.
    let pods: Api<Pod> = Api::all(client.clone());
    let release: BTreeMap<String, &Vec<String>> = (shapes.iter())
        .flat_map(|l| Setting::all().map(move |s| (s.namespace(&l.name), &l.shape.release_gates)))
        .collect();
    let mut released: BTreeSet<(String, String)> = BTreeSet::new();
    let mut last = BTreeMap::new();
    let mut stable_rounds = 0;
    let started = Instant::now();
    let final_pods = loop {
        let listed = pods.list(&ListParams::default()).await.unwrap().items;
        let corpus_pods: Vec<Pod> = (listed.into_iter())
            .filter(|p| {
                p.metadata
                    .namespace
                    .as_deref()
                    .is_some_and(|n| n.starts_with("c-"))
            })
            .collect();
        let mut states = BTreeMap::new();
        let mut busy = false;
        for pod in &corpus_pods {
            let namespace = pod.metadata.namespace.clone().unwrap();
            let name = pod.metadata.name.clone().unwrap();
            let current = state(pod);
            if let State::Gated(gates) = &current {
                if gates.iter().any(|g| g == ARCHWAY_GATE) {
                    busy = true;
                } else if let Some(to_release) = release.get(&namespace)
                    && gates.iter().any(|g| to_release.contains(g))
                {
                    // Their controller's turn: only its gates go.
                    let kept: Vec<Value> = (gates.iter())
                        .filter(|g| !to_release.contains(g))
                        .map(|g| json!({"name": g}))
                        .collect();
                    // A merge patch replaces the list (a strategic one
                    // would merge it by name, removing nothing).
                    let patch = json!({"spec": {"schedulingGates": kept}});
                    let api: Api<Pod> = Api::namespaced(client.clone(), &namespace);
                    if let Err(e) = api
                        .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        eprintln!("releasing {namespace}/{name}: {e}");
                    }
                    released.insert((namespace.clone(), name.clone()));
                    busy = true;
                }
            }
            busy |= current == State::Waiting;
            states.insert((namespace, name), current);
        }
        stable_rounds = if !busy && states == last {
            stable_rounds + 1
        } else {
            0
        };
        last = states;
        if stable_rounds >= 3 {
            break corpus_pods;
        }
        assert!(
            started.elapsed() < SETTLE_LIMIT,
            "the corpus did not settle in {SETTLE_LIMIT:?}; still moving: {:?}",
            last.iter()
                .filter(|(_, s)| matches!(s, State::Waiting | State::Gated(_)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    // The invariant, shape by shape.
    let mut failures = Vec::new();
    let mut report = Vec::new();
    let mut unrunnable_expected = 0.0;
    for loaded in &shapes {
        let mut row = format!("{:<28}", loaded.name);
        let in_namespace = |setting: Setting| {
            let namespace = setting.namespace(&loaded.name);
            (final_pods.iter())
                .filter(move |p| p.metadata.namespace.as_deref() == Some(namespace.as_str()))
                .collect::<Vec<_>>()
        };
        let bound_nodes = |pods: &[&Pod]| -> Vec<String> {
            let mut nodes: Vec<String> = (pods.iter())
                .filter_map(|p| match state(p) {
                    State::Bound(node) => Some(node),
                    _ => None,
                })
                .collect();
            nodes.sort();
            nodes
        };
        let without = in_namespace(Setting::Without);
        let bound_without = bound_nodes(&without);
        for setting in Setting::all() {
            let pods = in_namespace(setting);
            let bound = bound_nodes(&pods);
            let mut per_arch: BTreeMap<&str, usize> = BTreeMap::new();
            for node in &bound {
                *per_arch.entry(arch_of_node(node)).or_default() += 1;
            }
            row.push_str(&format!(
                " | {}: {}/{} bound {}",
                setting.label(),
                bound.len(),
                pods.len(),
                (per_arch.iter())
                    .map(|(a, n)| format!("{a}={n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            if setting == Setting::Without {
                continue;
            }
            let namespace = setting.namespace(&loaded.name);
            if bound.len() < bound_without.len() {
                failures.push(format!(
                    "{}: {} bound at {} against {} without archway",
                    loaded.name,
                    bound.len(),
                    setting.label(),
                    bound_without.len()
                ));
            }
            // A DaemonSet's pods stay on their nodes: each node served
            // without archway is served with it.
            let is_daemon_set = (loaded.shape.objects.iter()).any(|o| o["kind"] == "DaemonSet");
            if is_daemon_set {
                let nodes: BTreeSet<&String> = bound.iter().collect();
                let missing: Vec<&String> = (bound_without.iter())
                    .filter(|n| !nodes.contains(n))
                    .collect();
                if !missing.is_empty() {
                    failures.push(format!(
                        "{}: at {} no pod on {missing:?}",
                        loaded.name,
                        setting.label()
                    ));
                }
            }
            let mut wrong = 0;
            for pod in &pods {
                let State::Bound(node) = state(pod) else {
                    if matches!(state(pod), State::Gated(ref g) if g.iter().any(|g| g == ARCHWAY_GATE))
                    {
                        failures.push(format!("{}: {namespace} keeps archway's gate", loaded.name));
                    }
                    continue;
                };
                let spec = pod.spec.as_ref().unwrap();
                let images = (spec.init_containers.iter().flatten())
                    .chain(&spec.containers)
                    .filter_map(|c| c.image.clone());
                let runs = images
                    .map(|image| runs_on.get(&image).cloned().unwrap_or_default())
                    .all(|archs| archs.contains(arch_of_node(&node)));
                if !runs {
                    wrong += 1;
                }
                // A pod whose gates the test was to release bound only
                // after the test released them: archway dropped none.
                let gated_at_creation = !loaded.shape.release_gates.is_empty();
                let name = pod.metadata.name.clone().unwrap();
                if gated_at_creation && !released.contains(&(namespace.clone(), name.clone())) {
                    failures.push(format!(
                        "{}: {namespace}/{name} bound without its gate being released: another controller's gate was dropped",
                        loaded.name
                    ));
                }
            }
            if wrong != loaded.shape.unrunnable {
                failures.push(format!(
                    "{}: at {} {wrong} pods on an architecture an image does not run (expected {})",
                    loaded.name,
                    setting.label(),
                    loaded.shape.unrunnable
                ));
            }
            unrunnable_expected += loaded.shape.unrunnable as f64;
        }
        report.push(format!("{row}   ({})", loaded.shape.shape));
    }
    eprintln!("CORPUS OUTCOMES\n{}", report.join("\n"));
    // Every pod of a `gate` namespace was gated once (its image cold), and
    // counted once, though a second webhook made the API server call
    // archway again.
    let gate_namespaces: BTreeSet<String> = (shapes.iter())
        .filter(|l| {
            l.shape
                .namespace_annotations
                .get("archway.dev/cold")
                .map(String::as_str)
                == Some("gate")
        })
        .flat_map(|l| ROLLOUTS.map(|r| Setting::Rollout(r).namespace(&l.name)))
        .collect();
    let in_gate_namespaces = (final_pods.iter())
        .filter(|p| gate_namespaces.contains(p.metadata.namespace.as_deref().unwrap_or_default()))
        .count() as f64;
    let gated = world.archway.counter("archway_pods_gated_total", &[]) - gated_before;
    if gated != in_gate_namespaces {
        failures.push(format!(
            "archway_pods_gated_total rose by {gated} for {in_gate_namespaces} pods in gate namespaces"
        ));
    }
    let unrunnable = world.archway.counter("archway_pods_unrunnable_total", &[]) - metrics_before;
    if unrunnable != unrunnable_expected {
        failures.push(format!(
            "archway_pods_unrunnable_total rose by {unrunnable}, expected {unrunnable_expected}"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop(webhooks);
    daemon_sets_that_will_fail_are_flagged(&world);
}

/// `archway audit` and `archway review` name a DaemonSet whose pods land
/// on nodes its image does not run on, with the nodes.
fn daemon_sets_that_will_fail_are_flagged(world: &World) {
    let config = world.archway.dir.join("commands.yaml");
    let insecure = format!("registry: {{insecure: [\"{}\"]}}\n", world.registry.host());
    std::fs::write(&config, &insecure).unwrap();
    let namespace = Setting::Rollout(0).namespace("daemonset-amd64-only");
    let stdout = world.plane.archway_audit(
        std::path::Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-n", &namespace, "-o", "json"],
        &insecure,
        &world.plane.admin_kubeconfig,
    );
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    let failing: Vec<&Value> = (report["workloads"].as_array().unwrap().iter())
        .map(|w| &w["failing_pods"])
        .filter(|f| !f.is_null())
        .collect();
    let expected = format!(
        "DaemonSet {namespace}/fluent-bit can run on arm64 nodes, but {} publishes only linux/amd64: its pods on arm64-0, arm64-1, arm64-2 will fail",
        world.image("amd64-only:v1")
    );
    assert_eq!(failing, [&json!(expected)], "{report:#}");
    eprintln!("archway audit: {expected}");

    let file = world.archway.dir.join("fluent-bit.yaml");
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/daemonset-amd64-only.yaml"),
    )
    .unwrap();
    let shape: Shape = serde_yaml::from_str(&text).unwrap();
    let documents: Vec<String> = (shape.objects.iter())
        .map(|o| {
            serde_yaml::to_string(o)
                .unwrap()
                .replace("${AMD64}", &world.image("amd64-only:v1"))
        })
        .collect();
    std::fs::write(&file, documents.join("---\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["review", "-n", "logging", "--config"])
        .arg(&config)
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!(
        "warning: DaemonSet logging/fluent-bit can run on arm64 nodes, but {} publishes only linux/amd64: its pods on any arm64 node will fail",
        world.image("amd64-only:v1")
    );
    assert!(table.contains(&expected), "{table}");
    assert!(
        table.contains(
            "DaemonSet logging/fluent-bit: pinned (pinned by its DaemonSet; not steered)"
        ),
        "{table}"
    );
    eprintln!("archway review:\n{table}");
}

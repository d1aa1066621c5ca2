//! Mistakes in namespaces' `archway.dev/` settings reach the namespace
//! owner, on the real control plane: one Warning Event
//! `InvalidArchwaySetting` on the namespace per mistake, one log line, and
//! the gauge `archway_namespaces_invalid_settings`.
//!
//! archway is installed from deploy/ with its RBAC, and runs as two
//! replicas watching the same API server, as deploy/ runs it: both report
//! (the settings report does not wait for the Lease; an Event's name is
//! made of the mistake, so the second replica's create is refused), and
//! each mistake is still told once. The tests run one at a time
//! (`SERIAL`): they read the gauge and restart a replica.

use archway_testkit as support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;
use support::controlplane::{ControlPlane, wait_for};
use support::install::{InstalledArchway, sum_samples};
use support::world::World;

const REASON: &str = "InvalidArchwaySetting";
const GAUGE: &str = "archway_namespaces_invalid_settings";
/// The log line of a mistake told (the replica whose Event was created).
const LOG_LINE: &str = "invalid archway setting ";

struct Env {
    plane: ControlPlane,
    replicas: [InstalledArchway; 2],
}

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        // A second replica beside the one the webhook calls (not behind a
        // balancer): reviews reach one replica, both watch namespaces.
        let World {
            plane,
            archway: first,
            ..
        } = World::builder(env!("CARGO_BIN_EXE_archway"))
            .nodes(&[])
            .start();
        let second = first.another_replica("archway-1");
        Env {
            plane,
            replicas: [first, second],
        }
    })
}

/// The `InvalidArchwaySetting` Events in `namespace`, about it: their
/// notes, and which replicas made them.
async fn events(client: &kube::Client, namespace: &str) -> Vec<(String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(REASON))
        .filter(|e| {
            let regarding = e.regarding.as_ref();
            regarding.and_then(|r| r.name.as_deref()) == Some(namespace)
        })
        .map(|e| {
            let regarding = e.regarding.unwrap_or_default();
            assert_eq!(regarding.kind.as_deref(), Some("Namespace"));
            assert!(regarding.uid.is_some());
            assert_eq!(e.type_.as_deref(), Some("Warning"));
            (
                e.note.unwrap_or_default(),
                e.reporting_instance.unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until `namespace` has `count` `InvalidArchwaySetting` Events.
async fn wait_for_events(
    client: &kube::Client,
    namespace: &str,
    count: usize,
) -> Vec<(String, String)> {
    let started = Instant::now();
    loop {
        let seen = events(client, namespace).await;
        if seen.len() >= count {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{namespace}: {count} Events expected, {seen:?}; logs:\n{}",
            env().replicas[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The gauge on each replica.
fn gauges(env: &Env) -> [f64; 2] {
    env.replicas
        .each_ref()
        .map(|replica| sum_samples(&replica.metrics(), GAUGE, &[]))
}

/// Waits until both replicas count `expected` namespaces with mistakes.
fn wait_for_gauges(env: &Env, expected: f64) {
    wait_for(
        &format!("{GAUGE} {expected} on both replicas"),
        Duration::from_secs(30),
        || (gauges(env) == [expected; 2]).then_some(()),
    );
}

/// The log lines of told mistakes in `namespace`, from both replicas.
fn log_lines(env: &Env, namespace: &str) -> usize {
    let field = format!("namespace={namespace} ");
    env.replicas
        .iter()
        .flat_map(|r| {
            r.logs()
                .lines()
                .filter(|l| l.contains(LOG_LINE) && l.contains(&field))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .count()
}

/// archway's requests to create an Event in `namespace`, from the API
/// server's audit log: how many, and how many created one (the others were
/// refused as already there).
fn event_creates(env: &Env, namespace: &str) -> (usize, usize) {
    let creates: Vec<_> = (env.plane.audit_events().into_iter())
        .filter(|e| {
            e["user"]["username"] == "system:serviceaccount:archway:archway"
                && e["verb"] == "create"
                && e["objectRef"]["resource"] == "events"
                && e["objectRef"]["namespace"] == namespace
                && e["stage"] == "ResponseComplete"
        })
        .collect();
    let created = (creates.iter())
        .filter(|e| e["responseStatus"]["code"] == 201)
        .count();
    (creates.len(), created)
}

fn set_namespace(env: &Env, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) {
    let pairs = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    env.plane.apply(&[json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": pairs(labels), "annotations": pairs(annotations)}
    })]);
}

/// A namespace `settings-<name>` with a mistake, and the note of its Event.
struct Case {
    name: &'static str,
    /// The `archway.dev/mode` label.
    mode: &'static str,
    annotations: &'static [(&'static str, &'static str)],
    note: String,
}

impl Case {
    /// Creates or updates the namespace, with `more` annotations.
    fn apply(&self, env: &Env, more: &[(&str, &str)]) {
        let mut annotations = self.annotations.to_vec();
        annotations.extend_from_slice(more);
        let name = format!("settings-{}", self.name);
        set_namespace(env, &name, &[("archway.dev/mode", self.mode)], &annotations);
    }
}

/// Each bad value of issue 24, and a typo in a key: one Event each on its
/// namespace, whose note names key, value and what archway does instead,
/// though two replicas saw it; one log line; both gauges count it. Another
/// change to the namespace tells nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mistake_is_told_once_on_its_namespace() {
    let env = env();
    let _turn = SERIAL.lock().await;
    let client = env.plane.client().await;
    let whole = "is not a whole number from 0 to 100; using 0";
    let not_opted_in = "is not one of enforce, audit; the namespace is not opted in";
    let case = |name, mode, annotations, note: String| Case {
        name,
        mode,
        annotations,
        note,
    };
    let cases = [
        case(
            "rollout-percent",
            "enforce",
            &[("archway.dev/rollout", "50%")],
            format!("annotation archway.dev/rollout \"50%\" {whole}"),
        ),
        case(
            "rollout-space",
            "enforce",
            &[("archway.dev/rollout", " 50")],
            format!("annotation archway.dev/rollout \" 50\" {whole}"),
        ),
        case(
            "rollout-1000",
            "enforce",
            &[("archway.dev/rollout", "1000")],
            format!("annotation archway.dev/rollout \"1000\" {whole}"),
        ),
        case(
            "cold-upper",
            "enforce",
            &[("archway.dev/cold", "GATE")],
            "annotation archway.dev/cold \"GATE\" is not one of admit, gate; using admit".into(),
        ),
        case(
            "guard-on",
            "enforce",
            &[("archway.dev/guard", "on")],
            "annotation archway.dev/guard \"on\" is not one of enforce, observe, off; using enforce"
                .into(),
        ),
        case(
            "mode-capital",
            "Enforce",
            &[],
            format!("label archway.dev/mode \"Enforce\" {not_opted_in}"),
        ),
        case(
            "mode-enforced",
            "enforced",
            &[],
            format!("label archway.dev/mode \"enforced\" {not_opted_in}"),
        ),
        case(
            "ramp-decreasing",
            "enforce",
            &[
                ("archway.dev/ramp", "50,10"),
                ("archway.dev/ramp-step", "24h"),
            ],
            "annotation archway.dev/ramp \"50,10\" is not increasing whole percentages from 1 \
             to 100, comma-separated (e.g. 10,25,50,100); the namespace has no ramp"
                .into(),
        ),
        case(
            "ramp-unit",
            "enforce",
            &[
                ("archway.dev/ramp", "10,50,100"),
                ("archway.dev/ramp-step", "1d"),
            ],
            "annotation archway.dev/ramp-step \"1d\" is not a duration from 1s to 366 days, \
             such as 24h, 90m or 1h30m; the namespace has no ramp"
                .into(),
        ),
        case(
            "key-typo",
            "enforce",
            &[("archway.dev/rolout", "50")],
            "annotation archway.dev/rolout \"50\" is not a namespace setting of archway \
             (did you mean archway.dev/rollout?); ignored"
                .into(),
        ),
    ];
    let before = gauges(env)[0];
    for case in &cases {
        case.apply(env, &[]);
    }
    for case in &cases {
        let namespace = format!("settings-{}", case.name);
        let seen = wait_for_events(&client, &namespace, 1).await;
        assert_eq!(seen.len(), 1, "{namespace}: {seen:?}");
        assert_eq!(seen[0].0, case.note, "{namespace}");
        assert!(
            ["archway-0", "archway-1"].contains(&seen[0].1.as_str()),
            "{seen:?}"
        );
    }
    wait_for_gauges(env, before + cases.len() as f64);
    // A ramp with a mistake is no ramp: the autopilot never moved them.
    for name in ["settings-ramp-decreasing", "settings-ramp-unit"] {
        let text = env
            .plane
            .kubectl(&["get", "namespace", name, "-o", "json"], None);
        assert!(
            !text.contains("archway.dev/ramp-status") && !text.contains("archway.dev/rollout"),
            "{name}: {text}"
        );
    }
    // Where a person looks: the namespace's Events, as kubectl lists them.
    let listed = env.plane.kubectl(
        &[
            "-n",
            "settings-rollout-percent",
            "events",
            "--for",
            "namespace/settings-rollout-percent",
        ],
        None,
    );
    assert!(
        listed.contains(REASON) && listed.contains("\"50%\" is not a whole number"),
        "{listed}"
    );

    // Another change to each namespace, then a new mistake whose Event
    // shows that both replicas have read the changes before it.
    for case in &cases {
        case.apply(env, &[("example.com/touched", "yes")]);
    }
    set_namespace(
        env,
        "settings-last",
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/placement", "Preferred")],
    );
    wait_for_events(&client, "settings-last", 1).await;
    wait_for_gauges(env, before + cases.len() as f64 + 1.0);
    for case in &cases {
        let namespace = format!("settings-{}", case.name);
        let seen = events(&client, &namespace).await;
        assert_eq!(seen.len(), 1, "{namespace}: {seen:?}");
        assert_eq!(log_lines(env, &namespace), 1, "{namespace}: one log line");
        // Each replica asked once, though each saw the namespace twice.
        assert_eq!(event_creates(env, &namespace), (2, 1), "{namespace}");
    }
}

/// A changed value is a new mistake, told again; a fixed one drops the
/// gauge on both replicas. A replica restarted (a relist) tells nothing
/// again while the Events are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_value_is_told_and_a_fixed_one_drops_the_gauge() {
    let env = env();
    let _turn = SERIAL.lock().await;
    let client = env.plane.client().await;
    let namespace = "settings-fixed";
    let enforce = [("archway.dev/mode", "enforce")];
    let before = gauges(env)[0];
    set_namespace(env, namespace, &enforce, &[("archway.dev/rollout", "50%")]);
    wait_for_events(&client, namespace, 1).await;
    wait_for_gauges(env, before + 1.0);

    set_namespace(env, namespace, &enforce, &[("archway.dev/rollout", "1000")]);
    let seen = wait_for_events(&client, namespace, 2).await;
    let mut notes: Vec<&str> = seen.iter().map(|(note, _)| note.as_str()).collect();
    notes.sort();
    assert_eq!(
        notes,
        [
            "annotation archway.dev/rollout \"1000\" is not a whole number from 0 to 100; using 0",
            "annotation archway.dev/rollout \"50%\" is not a whole number from 0 to 100; using 0",
        ]
    );
    assert_eq!(gauges(env), [before + 1.0; 2], "still one namespace");

    set_namespace(env, namespace, &enforce, &[("archway.dev/rollout", "50")]);
    wait_for_gauges(env, before);
    assert_eq!(
        events(&client, namespace).await.len(),
        2,
        "a fix is not a mistake"
    );

    // A mistake that stays, and a replica that restarts: it lists every
    // namespace again and finds the Event there.
    set_namespace(env, namespace, &enforce, &[("archway.dev/guard", "Off")]);
    wait_for_events(&client, namespace, 3).await;
    wait_for_gauges(env, before + 1.0);
    let replica = &env.replicas[1];
    replica.kill();
    replica.start();
    wait_for_gauges(env, before + 1.0);
    assert_eq!(events(&client, namespace).await.len(), 3);
    assert_eq!(log_lines(env, namespace), 3, "one line per mistake told");
    // Three mistakes, each asked for by both replicas, and the standing one
    // once more by the restarted replica: refused, the Event is there.
    wait_for(
        "the restarted replica's request",
        Duration::from_secs(30),
        || (event_creates(env, namespace) == (7, 3)).then_some(()),
    );
}

//! The migration autopilot's Prometheus check on the real control plane,
//! with two archway replicas behind HAProxy as deploy/ runs them: a real
//! Prometheus scrapes a stand-in of the workloads' own metrics (an error
//! ratio per namespace, which the test sets), and archway's configuration
//! names a query over it (`ramp.prometheus`). A namespace under the
//! threshold ramps to 100, three new Deployments at each step getting
//! that step's share on arm64; one over it pauses at its first step with the
//! value in its status and a Warning Event, and goes on once the value
//! falls and a person resumes it; a namespace the query gives no series for,
//! and one ramped while Prometheus is down, pause with "cannot be
//! evaluated" (never advancing blind). The audit report with the paused
//! ramps is rendered in headless chromium and kept as
//! target/test-output/ramp-query/report.png.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use support::ImageSpec;
use support::install::sum_samples;
use support::prometheus::Prometheus;
use support::ramps::{ROLLOUT, STATUS, follow, ramp_events};
use support::workloads::{bound_pods, deployment};
use support::world::World;

/// What a step must stay at or under.
const THRESHOLD: f64 = 0.05;

/// The workloads' error ratio per namespace, as their exporter serves it.
#[derive(Clone, Default)]
struct Exporter(Arc<Mutex<BTreeMap<String, f64>>>);

impl Exporter {
    async fn start(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let app = axum::Router::new()
            .route("/metrics", get(metrics))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        address
    }

    fn set(&self, namespace: &str, ratio: f64) {
        self.0.lock().unwrap().insert(namespace.into(), ratio);
    }
}

async fn metrics(State(exporter): State<Exporter>) -> String {
    let mut text = String::from("# TYPE app_error_ratio gauge\n");
    for (namespace, ratio) in exporter.0.lock().unwrap().iter() {
        text.push_str(&format!(
            "app_error_ratio{{namespace=\"{namespace}\",pod=\"{namespace}-web-0\"}} {ratio}\n"
        ));
    }
    text
}

fn ramped(plane: &support::controlplane::ControlPlane, name: &str, step: &str) {
    plane.create_namespace(
        name,
        &[("archway.dev/mode", "enforce")],
        &[
            ("archway.dev/ramp", "10,50,100"),
            ("archway.dev/ramp-step", step),
        ],
    );
}

fn done(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(STATUS)
        .is_some_and(|s| s.starts_with("done at 100% since "))
}

fn paused(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(STATUS)
        .is_some_and(|s| s.starts_with("paused at "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prometheus_query_over_its_threshold_or_that_cannot_be_evaluated_pauses_the_ramp() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::default();
    exporter.set("ramp-query-low", 0.01);
    exporter.set("ramp-query-high", 0.2);
    let exporter_address = exporter.start().await;
    let mut prometheus = Prometheus::start(
        dir.path(),
        &[format!(
            "- {{ job_name: app, static_configs: [{{ targets: [\"{exporter_address}\"] }}] }}"
        )],
    )
    .await;
    prometheus
        .wait_for("app_error_ratio{namespace=\"ramp-query-high\"}")
        .await;
    let url = format!("http://{}", prometheus.address);
    let env = World::builder(env!("CARGO_BIN_EXE_archway"))
        .image("multi:v1", ImageSpec::multi_arch().with_salt("ramp-query"))
        .configure(move |config| {
            config["ramp"] = serde_yaml::from_str(&format!(
                "prometheus: {{url: '{url}', query: 'max(app_error_ratio{{namespace=\"$namespace\"}})', \
                 threshold: {THRESHOLD}, timeout: 2s}}"
            ))
            .unwrap();
        })
        .start_replicas(2);
    let plane = &env.plane;
    let client = plane.client().await;

    // Under the threshold: every step, to the end, and at each step three
    // new Deployments of 10 get the step's share on arm64, counted on the
    // nodes the scheduler chose.
    ramped(plane, "ramp-query-low", "10s");
    // Over it: paused at the first step, saying by how much.
    ramped(plane, "ramp-query-high", "2s");
    let image = env.registry.image("multi:v1");
    let mut shares = Vec::new();
    for step in [10, 50, 100] {
        // The last step is taken as done: the ramp has nothing left to do.
        let at = match step {
            100 => "done at 100% since ".to_string(),
            _ => format!("holding {step}% since "),
        };
        let seen = follow(&client, "ramp-query-low", Duration::from_secs(60), |a| {
            a.get(STATUS).is_some_and(|s| s.starts_with(&at))
        })
        .await;
        assert_eq!(seen.last().unwrap().0, step.to_string(), "{seen:#?}");
        // Each replica reviews with the rollout its namespace watch has
        // seen, a moment after the API server has it.
        let started = std::time::Instant::now();
        while !(env.archway.replicas.iter()).all(|replica| {
            sum_samples(
                &replica.metrics(),
                "archway_ramp_rollout",
                &[("namespace", "ramp-query-low")],
            ) == step as f64
        }) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the replicas never saw {step}%"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let apps = ["web", "api", "worker"].map(|app| format!("{app}-{step}"));
        plane.apply(
            &(apps.iter())
                .map(|app| deployment("ramp-query-low", app, &image, 10, true))
                .collect::<Vec<_>>(),
        );
        for app in &apps {
            let pods = bound_pods(&client, "ramp-query-low", app, 10).await;
            let on_arm = pods.iter().filter(|(_, arch)| arch == "arm64").count();
            shares.push(format!("{app}: {on_arm}/10 on arm64"));
            let decisions: Vec<String> = (pods.iter())
                .map(|(pod, arch)| {
                    let annotations = pod.metadata.annotations.clone().unwrap_or_default();
                    format!("{arch}: {:?}", annotations.get("archway.dev/decision"))
                })
                .collect();
            assert_eq!(on_arm, step / 10, "{app} at {step}%: {decisions:#?}");
        }
        let now = follow(&client, "ramp-query-low", Duration::from_secs(1), |_| true).await;
        assert_eq!(
            now.last().unwrap().0,
            step.to_string(),
            "the step held while its pods were made: {now:#?}"
        );
    }
    eprintln!("RAMP QUERY SHARES: {shares:?}");
    let low = follow(&client, "ramp-query-low", Duration::from_secs(30), done).await;
    assert_eq!(low.last().unwrap().0, "100");
    let events = ramp_events(plane, "ramp-query-low");
    let reasons: Vec<&str> = events.iter().map(|(_, r, _)| r.as_str()).collect();
    assert_eq!(reasons, ["RampStep", "RampStep", "RampDone"], "{events:#?}");
    eprintln!(
        "RAMP QUERY EVENTS ramp-query-low:\n{}",
        (events.iter())
            .map(|(kind, reason, note)| format!("{kind} {reason}: {note}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let high = follow(&client, "ramp-query-high", Duration::from_secs(30), paused).await;
    let (rollout, status) = high.last().unwrap();
    eprintln!("RAMP QUERY: over the threshold: {status}");
    assert_eq!(rollout, "10", "{high:#?}");
    assert!(
        status.starts_with("paused at 10% since ")
            && status.contains(": the Prometheus query gives 0.2, above its threshold 0.05;"),
        "{status}"
    );
    let events = ramp_events(plane, "ramp-query-high");
    assert!(
        events.iter().any(|(kind, reason, note)| kind == "Warning"
            && reason == "RampPaused"
            && note.contains("above its threshold 0.05")),
        "{events:#?}"
    );

    // A query that gives no series for the namespace cannot be evaluated.
    ramped(plane, "ramp-query-unknown", "2s");
    let unknown = follow(
        &client,
        "ramp-query-unknown",
        Duration::from_secs(30),
        paused,
    )
    .await;
    let (_, status) = unknown.last().unwrap();
    eprintln!("RAMP QUERY: no series: {status}");
    assert!(
        status.contains("the Prometheus query cannot be evaluated: the query gives no series"),
        "{status}"
    );

    // The error ratio falls; a person resumes the ramp by removing its
    // status, and it goes on from the rollout in force.
    exporter.set("ramp-query-high", 0.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "ramp-query-high",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {STATUS: null}}})),
        )
        .await
        .unwrap();
    let resumed = follow(&client, "ramp-query-high", Duration::from_secs(60), done).await;
    let mut steps: Vec<&str> = resumed.iter().map(|(r, _)| r.as_str()).collect();
    steps.dedup();
    assert_eq!(steps, ["10", "50", "100"], "{resumed:#?}");

    // Prometheus down: a ramp never advances blind.
    prometheus.stop();
    exporter.set("ramp-query-down", 0.0);
    ramped(plane, "ramp-query-down", "2s");
    let down = follow(&client, "ramp-query-down", Duration::from_secs(30), paused).await;
    let (rollout, status) = down.last().unwrap();
    eprintln!("RAMP QUERY: Prometheus down: {status}");
    assert_eq!(rollout, "10");
    assert!(
        status.contains("the Prometheus query cannot be evaluated: Prometheus at http://"),
        "{status}"
    );
    let live: Api<Namespace> = Api::all(client.clone());
    let annotations = (live.get("ramp-query-down").await.unwrap())
        .metadata
        .annotations
        .unwrap_or_default();
    assert_eq!(annotations.get(ROLLOUT).map(String::as_str), Some("10"));
    eprintln!(
        "RAMP QUERY EVENTS ramp-query-high:\n{}",
        (ramp_events(plane, "ramp-query-high").iter())
            .map(|(kind, reason, note)| format!("{kind} {reason}: {note}"))
            .collect::<Vec<_>>()
            .join("\n")
    );

    // The report a platform team reads: the ramps, two of them paused with
    // their reasons, in a browser.
    // The shares' Deployments have said what they had to; the report is
    // about the ramps.
    plane.kubectl(
        &["-n", "ramp-query-low", "delete", "deployment", "--all"],
        None,
    );
    let html = plane.archway_audit(
        Path::new(env!("CARGO_BIN_EXE_archway")),
        &["-o", "html"],
        &format!("registry: {{insecure: [\"{}\"]}}\n", env.registry.host()),
        &plane.admin_kubeconfig,
    );
    let dom =
        support::browser::look_at_report(env!("CARGO_TARGET_TMPDIR"), "ramp-query", &html, 1200);
    let row = |namespace: &str| {
        let at = dom
            .find(&format!("<tr class=\"ramp\"><td>{namespace}</td>"))
            .unwrap_or_else(|| panic!("no ramp row for {namespace}:\n{dom}"));
        let end = at + dom[at..].find("</tr>").unwrap();
        dom[at..end].to_string()
    };
    let down = row("ramp-query-down");
    assert!(
        down.contains("<td class=\"no\">paused</td><td>10%</td>")
            && down.contains("the Prometheus query cannot be evaluated: Prometheus at http://")
            && down.contains("remove the namespace annotation archway.dev/ramp-status to resume"),
        "{down}"
    );
    let high = row("ramp-query-high");
    assert!(
        high.contains("<td class=\"ready\">done</td><td>100%</td>"),
        "{high}"
    );
}

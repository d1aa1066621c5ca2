//! Every query of deploy/monitoring/dashboard.json, run by a real
//! Prometheus (built from its Go module by tests/tools/build.sh) that
//! scrapes, once a second, a stand-in kubelet (cAdvisor) and
//! kube-state-metrics served by this test, and a real `archway serve`.
//! Each query must parse and run without warnings; the panels comparing the
//! architectures must give the numbers the stand-in's series imply; and
//! archway's panels must show series wherever the traffic sent here makes
//! them exist. tests/monitoring.rs checks archway's names against a scrape;
//! this checks the queries themselves.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use support::prometheus::{Prometheus, free_port, wait_ready};

/// What the Grafana variables stand for here: every namespace and
/// workload, arm64 as the target, and short windows (the scrape is 1 s).
const VARIABLES: &[(&str, &str)] = &[
    ("$__rate_interval", "10s"),
    ("$__range", "1m"),
    ("$namespace", ".*"),
    ("$workload", ".*"),
    ("$target", "arm64"),
];

/// archway's series the traffic below cannot make: they need a cluster
/// (nodes, which unrunnable pods are judged against too; ramps on
/// namespaces; the guard's pods) or a spent GET budget.
/// Their panels are checked to run, not to show something.
const NOT_MADE_HERE: &[&str] = &[
    "archway_chosen_architecture_without_nodes_total",
    "archway_ramp_rollout",
    "archway_ramp_paused",
    "archway_guard_holds_total",
    "archway_pods_unrunnable_total",
    "archway_registry_get_budget_spent_total",
];

// ---------------------------------------------------------------------------
// The stand-in: a kubelet's cAdvisor, kube-state-metrics, and a registry

/// A pod of the stand-in cluster, with what its series say.
struct Pod {
    name: &'static str,
    /// Its controller as kube_pod_owner names it; None for a pod without.
    owner: Option<(&'static str, &'static str)>,
    /// archway's `archway.dev/arch` label; None for a pod archway did not
    /// place.
    arch: Option<&'static str>,
    /// (name, cores used, working set in MiB) of each container.
    containers: &'static [(&'static str, f64, f64)],
    /// Of its first container; the others never restart.
    restarts_per_hour: f64,
}

const fn pod(
    name: &'static str,
    owner: Option<(&'static str, &'static str)>,
    arch: Option<&'static str>,
    containers: &'static [(&'static str, f64, f64)],
    restarts_per_hour: f64,
) -> Pod {
    Pod {
        name,
        owner,
        arch,
        containers,
        restarts_per_hour,
    }
}

const NAMESPACE: &str = "shop";
const WEB_AMD64: &[(&str, f64, f64)] = &[("app", 0.35, 180.0), ("envoy", 0.05, 20.0)];
const WEB_ARM64: &[(&str, f64, f64)] = &[("app", 0.15, 130.0), ("envoy", 0.05, 20.0)];
const DB: &[(&str, f64, f64)] = &[("postgres", 0.3, 1024.0)];
const BUSY: &[(&str, f64, f64)] = &[("main", 3.0, 4000.0)];
const OLD: Option<(&str, &str)> = Some(("ReplicaSet", "web-5d9c7f8b6"));
const NEW: Option<(&str, &str)> = Some(("ReplicaSet", "web-7f8b6d9c4"));
const STATEFUL: Option<(&str, &str)> = Some(("StatefulSet", "db"));

/// Workload web (a Deployment, mid-rollout: one ReplicaSet's pods on
/// amd64, the other's on arm64) does the same work on arm64 for half the
/// CPU, and restarts twice as often there. Workload db (a StatefulSet) uses
/// the same CPU on both, and restarts on arm64 only. The pod archway did
/// not place, and the one without an owner, busy as they are, must count
/// nowhere.
const PODS: &[Pod] = &[
    pod("web-5d9c7f8b6-x7k2p", OLD, Some("amd64"), WEB_AMD64, 36.0),
    pod("web-5d9c7f8b6-q9wz4", OLD, Some("amd64"), WEB_AMD64, 36.0),
    pod("web-7f8b6d9c4-m2v8c", NEW, Some("arm64"), WEB_ARM64, 72.0),
    pod("web-7f8b6d9c4-h5n7t", NEW, Some("arm64"), WEB_ARM64, 72.0),
    pod("db-0", STATEFUL, Some("amd64"), DB, 0.0),
    pod("db-1", STATEFUL, Some("arm64"), DB, 36.0),
    pod("debug", None, Some("arm64"), BUSY, 500.0),
    pod(
        "batch-5d9c7f8b6-zzzzz",
        Some(("ReplicaSet", "batch-5d9c7f8b6")),
        None,
        BUSY,
        500.0,
    ),
];

struct StandIn {
    started: Instant,
}

impl StandIn {
    /// cAdvisor's series as the kubelet serves them: per container, plus
    /// the pod's own cgroup (container "") and the pause container
    /// ("POD"), which a per-pod sum must leave out.
    fn cadvisor(&self) -> String {
        let t = self.started.elapsed().as_secs_f64();
        let mut text = String::from(
            "# TYPE container_cpu_usage_seconds_total counter\n\
             # TYPE container_memory_working_set_bytes gauge\n",
        );
        for pod in PODS {
            let total_cpu: f64 = pod.containers.iter().map(|c| c.1).sum();
            let total_memory: f64 = pod.containers.iter().map(|c| c.2).sum();
            let series = pod
                .containers
                .iter()
                .copied()
                .chain([("", total_cpu, total_memory), ("POD", 0.001, 1.0)]);
            for (container, cpu, memory_mib) in series {
                let labels = format!(
                    "container=\"{container}\",namespace=\"{NAMESPACE}\",pod=\"{}\"",
                    pod.name
                );
                // Counters start high, as on a node that has run a while.
                text += &format!(
                    "container_cpu_usage_seconds_total{{{labels}}} {}\n\
                     container_memory_working_set_bytes{{{labels}}} {}\n",
                    1000.0 + cpu * t,
                    memory_mib * 1024.0 * 1024.0
                );
            }
        }
        text
    }

    /// kube-state-metrics' series, with `archway.dev/arch` allow-listed
    /// (`--metric-labels-allowlist=pods=[archway.dev/arch]`).
    fn kube_state_metrics(&self) -> String {
        let t = self.started.elapsed().as_secs_f64();
        let mut text = String::from(
            "# TYPE kube_pod_labels gauge\n\
             # TYPE kube_pod_owner gauge\n\
             # TYPE kube_pod_container_status_restarts_total counter\n",
        );
        for (i, pod) in PODS.iter().enumerate() {
            let pod_labels = format!(
                "namespace=\"{NAMESPACE}\",pod=\"{}\",uid=\"uid-{i}\"",
                pod.name
            );
            let arch = pod
                .arch
                .map(|a| format!(",label_archway_dev_arch=\"{a}\""))
                .unwrap_or_default();
            // A pod without an owner has one series saying so.
            let (kind, name, controller) = match pod.owner {
                Some((kind, name)) => (kind, name, "true"),
                None => ("<none>", "<none>", "<none>"),
            };
            text += &format!(
                "kube_pod_labels{{{pod_labels}{arch}}} 1\n\
                 kube_pod_owner{{{pod_labels},owner_kind=\"{kind}\",owner_name=\"{name}\",owner_is_controller=\"{controller}\"}} 1\n"
            );
            for (j, (container, _, _)) in pod.containers.iter().enumerate() {
                let restarts = if j == 0 {
                    5.0 + pod.restarts_per_hour / 3600.0 * t
                } else {
                    0.0
                };
                text += &format!(
                    "kube_pod_container_status_restarts_total{{{pod_labels},container=\"{container}\"}} {restarts}\n"
                );
            }
        }
        text
    }
}

async fn metrics(
    State(stand_in): State<Arc<StandIn>>,
    UrlPath(which): UrlPath<String>,
) -> impl IntoResponse {
    let text = match which.as_str() {
        "cadvisor" => stand_in.cadvisor(),
        "kube-state-metrics" => stand_in.kube_state_metrics(),
        _ => return (StatusCode::NOT_FOUND, HeaderMap::new(), String::new()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8".parse().unwrap(),
    );
    (StatusCode::OK, headers, text)
}

/// A registry for archway's lookups: `app` runs on both architectures;
/// `flaky` fails; any other image is not there, and the answer says no pull
/// is left (Docker Hub's header), so archway keeps the next new image's
/// lookup back.
async fn registry(UrlPath(path): UrlPath<String>) -> impl IntoResponse {
    let mut headers = HeaderMap::new();
    let Some((name, _)) = path.split_once("/manifests/") else {
        return (StatusCode::OK, headers, String::new());
    };
    match name {
        "app" => {}
        "flaky" => return (StatusCode::SERVICE_UNAVAILABLE, headers, String::new()),
        _ => {
            headers.insert("ratelimit-remaining", "0;w=600".parse().unwrap());
            let body =
                json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "no such image"}]});
            return (StatusCode::NOT_FOUND, headers, body.to_string());
        }
    }
    let manifests: Vec<Value> = ["amd64", "arm64"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", format!("{i}").repeat(64)),
                "size": 500,
                "platform": {"os": "linux", "architecture": arch},
            })
        })
        .collect();
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    });
    headers.insert(
        header::CONTENT_TYPE,
        "application/vnd.oci.image.index.v1+json".parse().unwrap(),
    );
    (StatusCode::OK, headers, index.to_string())
}

async fn start_stand_in() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/metrics/{which}", get(metrics))
        .route("/v2/{*path}", get(registry).head(registry))
        .with_state(Arc::new(StandIn {
            started: Instant::now(),
        }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

// ---------------------------------------------------------------------------
// The processes: archway and Prometheus

/// archway's process, killed with the test.
struct ArchwayProcess(Child);

impl Drop for ArchwayProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `archway serve` with a static policy (no cluster) for namespace shop,
/// and a self-signed certificate.
struct Archway {
    _process: ArchwayProcess,
    settings: Settings,
}

/// What archway's configuration file says, on free ports.
struct Settings {
    dir: std::path::PathBuf,
    registry: SocketAddr,
    webhook: String,
    admin: String,
}

impl Settings {
    fn write(&self, rollout: u8) -> std::path::PathBuf {
        let config = self.dir.join("archway.yaml");
        std::fs::write(
            &config,
            format!(
                "targetArchitecture: arm64\npolicySource: static\n\
                 namespaces: {{ {NAMESPACE}: {{ mode: enforce, rollout: {rollout} }} }}\n\
                 registry: {{ insecure: [\"{}\"] }}\n\
                 server: {{ listen: \"{}\", adminListen: \"{}\" }}\n",
                self.registry, self.webhook, self.admin
            ),
        )
        .unwrap();
        config
    }
}

impl Archway {
    async fn start(dir: &Path, registry: SocketAddr) -> Archway {
        let settings = Settings {
            dir: dir.to_path_buf(),
            registry,
            webhook: format!("127.0.0.1:{}", free_port()),
            admin: format!("127.0.0.1:{}", free_port()),
        };
        let child = Command::new(env!("CARGO_BIN_EXE_archway"))
            .arg("--config")
            .arg(settings.write(100))
            .args(["serve", "--self-signed-dir"])
            .arg(dir.join("certs"))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("archway.log")).unwrap())
            .spawn()
            .unwrap();
        let archway = Archway {
            _process: ArchwayProcess(child),
            settings,
        };
        wait_ready(
            &format!("http://{}/readyz", archway.settings.admin),
            &dir.join("archway.log"),
        )
        .await;
        archway
    }

    /// A change of the configuration, once archway has reloaded it.
    async fn reload(&self) {
        self.settings.write(50);
        let started = Instant::now();
        loop {
            let text = reqwest::get(format!("http://{}/metrics", self.settings.admin))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if text.contains("archway_config_reloads_total{") {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no reload counted:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reviews that make archway's series appear: a pod steered (an image on
/// both architectures, looked up then cached), a registry failure, an image
/// whose answer says no pull is left, and one kept back for that; and a
/// body that is not a review.
async fn send_reviews(webhook: &str, registry: SocketAddr) {
    // Only a certificate archway made itself: nothing here to trust.
    let client = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("https://{webhook}/mutate");
    let images = ["app:v1", "app:v1", "flaky:v1", "missing:v1", "later:v1"];
    for (i, image) in images.into_iter().enumerate() {
        let pod = json!({
            "metadata": {"name": format!("pod-{i}"), "namespace": NAMESPACE},
            "spec": {"containers": [{"name": "main", "image": format!("{registry}/{image}")}]},
        });
        let review = json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": format!("uid-{i}"),
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": NAMESPACE,
                "operation": "CREATE",
                "userInfo": {"username": "test"},
                "object": pod,
            }
        });
        let response = client.post(&url).json(&review).send().await.unwrap();
        assert_eq!(response.status(), 200, "review of {image}");
    }
    let response = client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
}

/// The Prometheus server scraping the stand-in (as two jobs, as a cluster
/// has them) and archway every second, once it is ready.
async fn start_prometheus(dir: &Path, stand_in: SocketAddr, archway: &str) -> Prometheus {
    Prometheus::start(
        dir,
        &[
            format!("- {{ job_name: kubelet, metrics_path: /metrics/cadvisor, static_configs: [{{ targets: [\"{stand_in}\"] }}] }}"),
            format!("- {{ job_name: kube-state-metrics, metrics_path: /metrics/kube-state-metrics, static_configs: [{{ targets: [\"{stand_in}\"] }}] }}"),
            format!("- {{ job_name: archway, static_configs: [{{ targets: [\"{archway}\"] }}] }}"),
        ],
    )
    .await
}

// ---------------------------------------------------------------------------
// The dashboard's queries

/// Every (panel title, legend, expression) of the dashboard, with the
/// Grafana variables replaced as VARIABLES says.
fn panel_queries() -> Vec<(String, String, String)> {
    let text =
        std::fs::read_to_string(support::repo_root().join("deploy/monitoring/dashboard.json"))
            .unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                panel["title"].as_str().unwrap().to_string(),
                target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                substitute(target["expr"].as_str().unwrap()),
            ));
        }
    }
    queries
}

fn substitute(expr: &str) -> String {
    let mut expr = expr.to_string();
    for (variable, value) in VARIABLES {
        expr = expr.replace(variable, value);
    }
    // label_replace's "$1" stays; any other `$name` is a variable this test
    // does not know.
    let unknown = expr
        .match_indices('$')
        .map(|(i, _)| &expr[i..])
        .find(|rest| rest[1..].starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
    assert!(unknown.is_none(), "a Grafana variable left in {expr}");
    expr
}

/// A result's samples keyed by the values of `labels`.
fn by_labels(result: &[Value], labels: &[&str]) -> BTreeMap<Vec<String>, f64> {
    result
        .iter()
        .map(|sample| {
            let key = labels
                .iter()
                .map(|l| sample["metric"][l].as_str().unwrap_or_default().to_string())
                .collect();
            let value = sample["value"][1].as_str().unwrap();
            (key, value.parse::<f64>().unwrap())
        })
        .collect()
}

/// The numbers the stand-in implies, per (namespace, workload, arch) for
/// the three side-by-side panels.
fn expected_per_arch(title: &str) -> Option<BTreeMap<Vec<String>, f64>> {
    let values: [f64; 4] = if title.starts_with("CPU per pod") {
        [0.4, 0.2, 0.3, 0.3]
    } else if title.starts_with("Memory working set per pod") {
        let mib = 1024.0 * 1024.0;
        [200.0 * mib, 150.0 * mib, 1024.0 * mib, 1024.0 * mib]
    } else if title.starts_with("Restarts per pod-hour") {
        [36.0, 72.0, 0.0, 36.0]
    } else {
        return None;
    };
    let keys = [
        ("web", "amd64"),
        ("web", "arm64"),
        ("db", "amd64"),
        ("db", "arm64"),
    ];
    Some(
        keys.iter()
            .zip(values)
            .map(|(&(workload, arch), value)| {
                (vec![NAMESPACE.into(), workload.into(), arch.into()], value)
            })
            .collect(),
    )
}

fn assert_near(what: &str, got: f64, want: f64) {
    let close = if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= 0.05 * want.abs().max(1e-9)
    };
    assert!(close, "{what}: {got}, expected {want} (within 5%)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_query_runs_and_the_comparison_shows_what_the_pods_did() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let stand_in = start_stand_in().await;
    let archway = Archway::start(dir.path(), stand_in).await;
    send_reviews(&archway.settings.webhook, stand_in).await;
    archway.reload().await;
    let prometheus = start_prometheus(dir.path(), stand_in, &archway.settings.admin).await;

    // Enough scrapes of each job for rate() over 10 s, and every target up.
    let started = Instant::now();
    loop {
        let scrapes = prometheus
            .query("min(count_over_time(up[1m])) and min(up) == 1")
            .await
            .unwrap();
        if scrapes.len() == 1
            && scrapes[0]["value"][1]
                .as_str()
                .unwrap()
                .parse::<f64>()
                .unwrap()
                >= 12.0
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "targets not scraped 12 times: {:?}",
            prometheus.query("up").await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let queries = panel_queries();
    let mut compared = 0;
    for (title, legend, expr) in &queries {
        let what = format!("panel {title:?} ({legend})");
        let result = prometheus
            .query(expr)
            .await
            .unwrap_or_else(|e| panic!("{what}: {e}\n{expr}"));
        if let Some(expected) = expected_per_arch(title) {
            let got = by_labels(&result, &["namespace", "workload", "arch"]);
            assert_eq!(
                got.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{what}: the workloads' pods archway placed, and no others"
            );
            for (key, want) in &expected {
                assert_near(&format!("{what} {key:?}"), got[key], *want);
            }
            compared += 1;
        } else if title.ends_with("/ other, per workload, over the time range") {
            // arm64 / amd64: web does its work for half the CPU and
            // restarts twice as often; db restarts on arm64 alone.
            let (web, db) = if legend.ends_with("CPU") {
                (0.5, 1.0)
            } else {
                (2.0, f64::INFINITY)
            };
            let got = by_labels(&result, &["namespace", "workload"]);
            assert_eq!(got.len(), 2, "{what}: {got:?}");
            assert_near(
                &format!("{what} web"),
                got[&vec![NAMESPACE.into(), "web".into()]],
                web,
            );
            assert_near(
                &format!("{what} db"),
                got[&vec![NAMESPACE.into(), "db".into()]],
                db,
            );
            compared += 1;
        } else if expr.contains("archway_") && !NOT_MADE_HERE.iter().any(|m| expr.contains(m)) {
            assert!(!result.is_empty(), "{what}: no series\n{expr}");
        }
    }
    assert_eq!(
        compared, 5,
        "the comparison panels were found by their titles"
    );
}

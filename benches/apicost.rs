//! What archway costs the API server: pod creates per second, create
//! latency and the CPU the control plane spends per 1,000 creates, through
//! the real kube-apiserver, with 1 to 64 clients creating at once, for four
//! set-ups side by side:
//!
//! - **none**: no webhook configured;
//! - **allow-all**: a webhook that allows every pod at once, unchanged (what
//!   calling any webhook costs);
//! - **static-patch**: a webhook that answers at once with the answers
//!   archway gave two sample pods, in turn: one steered to arm64 (affinity,
//!   toleration, label, annotations), one kept on amd64; at rollout 50 that
//!   is archway's mix. What applying archway's patches costs the API
//!   server, without archway's own work;
//! - **archway**: archway's webhook, as deploy/ installs it.
//!
//! ```text
//! cargo bench --bench apicost                       # workers 1,8,32,64; 2 rounds; 400 creates a point
//! APICOST_WORKERS=32 APICOST_ROUNDS=4 cargo bench --bench apicost
//! APICOST_POINT=1000 cargo bench --bench apicost
//! APICOST_HTTP2=true cargo bench --bench apicost    # archway offering HTTP/2 too
//! APICOST_PROFILE=10 cargo bench --bench apicost    # also a 10 s CPU profile of kube-apiserver per set-up
//! ```
//!
//! It starts the tests' control plane (tests/testkit/src/controlplane.rs, with
//! its node pools and the scheduler binding every pod), a registry with
//! one multi-arch image, `archway serve` (release build) installed from
//! deploy/ (rollout 50 in an enforce namespace), and the tests' second
//! webhook (tests/testkit/src/injector.rs) in its allow-all and fixed forms.
//! The image is looked up once before measuring, so every review is a
//! cached one. archway keeps running in every set-up (its watches cost the
//! API server whether or not its webhook is called); only the webhook
//! configurations change.
//!
//! A *point* is one set-up at one worker count: `APICOST_POINT` creates
//! shared by that many concurrent clients (tokio tasks over one kube
//! client), timed as a whole (creates/s) and one by one (p50, p99). The CPU
//! time of kube-apiserver, kube-scheduler, etcd and archway (from
//! /proc/PID/stat) is read before and after the point. Points rotate
//! through the set-ups in every round, so that drift in the API server or
//! etcd weighs on all the same; webhook configurations are applied and
//! deleted between points, each time checked to be in effect, and the
//! point's pods are deleted and the control plane left to settle before
//! the next one.
//!
//! With `APICOST_PROFILE=S`, after the points, the API server's own
//! profiler (`/debug/pprof/profile?seconds=S`) records S seconds of 32
//! clients creating under each set-up; the profiles are written to
//! `target/apicost/` with the `go tool pprof` command that reads them.
//!
//! Last, the same reviews are sent straight to archway, to show its own
//! share. Run by `cargo test` (without `--bench`), it does nothing.

use archway_testkit as support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use support::controlplane::{ControlPlane, NodePool, wait_for};
use support::injector::SidecarInjector;
use support::install::InstalledArchway;
use support::webhook::install_crypto;
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

const NAMESPACE: &str = "apicost";

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    install_crypto();
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or(default.into());
    let workers: Vec<usize> = setting("APICOST_WORKERS", "1,8,32,64")
        .split(',')
        .map(|w| w.trim().parse().expect("APICOST_WORKERS: numbers"))
        .collect();
    let rounds: usize = setting("APICOST_ROUNDS", "2").parse().unwrap();
    let point: usize = setting("APICOST_POINT", "400").parse().unwrap();
    let profile_seconds: u64 = setting("APICOST_PROFILE", "0").parse().unwrap();
    // `cargo bench` builds the binary with the bench profile (release):
    // archway as deployed.
    let archway = PathBuf::from(env!("CARGO_BIN_EXE_archway"));

    let plane = ControlPlane::start();
    plane.create_nodes(&NodePool::standard());
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch());
    registry.push(&layout.dir, "app:v1", Format::Oci);
    let image = registry.image("app:v1");
    let installed = InstalledArchway::install(&plane, &archway, &[registry.host()], |config| {
        // One log line per review is archway's default; keep it, as a user
        // would.
        config["timeBudget"] = "2500ms".into();
        // HTTP/1.1 is archway's default; APICOST_HTTP2=true offers HTTP/2
        // too, to compare.
        if std::env::var("APICOST_HTTP2").is_ok_and(|v| v == "true") {
            config["server"]["http2"] = true.into();
        }
    });
    plane.create_namespace(
        NAMESPACE,
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "50")],
    );
    let archway_config = applicable(&plane.kubectl(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "archway",
            "-o",
            "json",
        ],
        None,
    ));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // archway's answers for a pod it steers and one it keeps, to replay
    // as the static patch.
    let answers = runtime.block_on(sample_answers(
        &archway_config,
        installed.webhook_port,
        &image,
    ));
    let allow_all = SidecarInjector::allow_all();
    let fixed = SidecarInjector::fixed(answers.to_vec());
    let webhooks = Webhooks {
        archway: archway_config.clone(),
        allow_all: allow_all.configuration(NAMESPACE).to_string(),
        // Both injectors name their configuration alike: rename this one.
        fixed: {
            let mut config = fixed.configuration(NAMESPACE);
            config["metadata"]["name"] = "zz-static-patch".into();
            config["webhooks"][0]["name"] = "static.patch.test".into();
            config.to_string()
        },
        allow_all_calls: allow_all.calls.clone(),
        fixed_calls: fixed.calls.clone(),
    };
    let pids = Pids {
        apiserver: pid_with_arg(&format!("--audit-log-path={}", plane.audit_log.display())),
        scheduler: pid_with_arg(&format!(
            "--config={}",
            plane.dir.join("scheduler.yaml").display()
        )),
        etcd: pid_with_arg(&format!("--data-dir={}", plane.dir.join("etcd").display())),
        archway: installed.pid().expect("archway running"),
    };
    println!(
        "archway's answers replayed by the static-patch webhook: {} bytes of JSON patch (steered to arm64), {} bytes (kept on amd64)",
        patch_bytes(&answers[0]),
        patch_bytes(&answers[1]),
    );

    let points = runtime.block_on(async {
        let client = plane.client().await;
        let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
        // The image's lookup, so that every measured review is cached.
        create(&api, &image, "warm").await.unwrap();
        assert!(
            is_patched(&api, "warm").await,
            "archway did not patch the warm-up pod"
        );
        clear(&api).await;
        let mut points = Vec::new();
        let mut turn = 0;
        for round in 0..rounds {
            for &workers in &workers {
                for offset in 0..Setup::ALL.len() {
                    // Each round and worker count starts with another
                    // set-up, so that none always follows the same one.
                    let setup = Setup::ALL[(turn + offset) % Setup::ALL.len()];
                    webhooks.set(&plane, setup);
                    webhooks.wait_until_effective(&api, &image, setup).await;
                    let name = format!("r{round}w{workers}{}", setup.short());
                    points.push(measure(&api, &image, &name, setup, workers, point, &pids).await);
                    clear(&api).await;
                }
                turn += 1;
            }
        }
        if profile_seconds > 0 {
            for setup in Setup::ALL {
                webhooks.set(&plane, setup);
                webhooks.wait_until_effective(&api, &image, setup).await;
                profile(&plane, &api, &image, setup, profile_seconds).await;
                clear(&api).await;
            }
        }
        webhooks.set(&plane, Setup::Archway);
        points
    });
    report(&workers, &points);

    let reviews = installed.counter("archway_reviews_total", &[("namespace", NAMESPACE)]);
    // archway's share: the same reviews sent straight to it over HTTPS,
    // one connection, as the API server sends them.
    let direct = runtime.block_on(direct_reviews(
        &archway_config,
        installed.webhook_port,
        &image,
        1000,
    ));
    let mut direct = direct;
    direct.sort();
    println!(
        "archway alone, 1,000 reviews over HTTPS one after another (ms): p50 {:.3} p99 {:.3}; reviews counted in the namespace: {reviews}",
        percentile(&direct, 0.5),
        percentile(&direct, 0.99),
    );
    // Where the difference goes: the webhook call as the API server times
    // it (encode the review, the HTTPS round trip, decode the answer)
    // against archway's own handling of a review.
    let apiserver = plane.kubectl(&["get", "--raw", "/metrics"], None);
    let call = |webhook: &str| {
        mean(
            &apiserver,
            "apiserver_admission_webhook_admission_duration_seconds",
            &format!("name=\"{webhook}\""),
        )
    };
    println!(
        "mean per call (ms), as kube-apiserver times it: archway {:.3}, static-patch {:.3}, allow-all {:.3}; archway's own handling {:.3}",
        call("pods.archway.dev"),
        call("static.patch.test"),
        call("sidecar.injector.test"),
        mean(&installed.metrics(), "archway_review_duration_seconds", ""),
    );
}

/// Which webhooks the API server calls for the bench's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    NoWebhook,
    AllowAll,
    StaticPatch,
    Archway,
}

impl Setup {
    const ALL: [Setup; 4] = [
        Setup::NoWebhook,
        Setup::AllowAll,
        Setup::StaticPatch,
        Setup::Archway,
    ];

    fn name(self) -> &'static str {
        match self {
            Setup::NoWebhook => "none",
            Setup::AllowAll => "allow-all",
            Setup::StaticPatch => "static-patch",
            Setup::Archway => "archway",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Setup::NoWebhook => "n",
            Setup::AllowAll => "a",
            Setup::StaticPatch => "s",
            Setup::Archway => "x",
        }
    }
}

/// The three webhook configurations, applied and deleted as the set-up
/// asks, and the two test webhooks' call counters (to tell "called" from
/// "configured").
struct Webhooks {
    archway: String,
    allow_all: String,
    fixed: String,
    allow_all_calls: Arc<AtomicUsize>,
    fixed_calls: Arc<AtomicUsize>,
}

impl Webhooks {
    fn set(&self, plane: &ControlPlane, setup: Setup) {
        for (config, wanted) in [
            (&self.archway, setup == Setup::Archway),
            (&self.allow_all, setup == Setup::AllowAll),
            (&self.fixed, setup == Setup::StaticPatch),
        ] {
            if wanted {
                plane.kubectl(
                    &[
                        "apply",
                        "--server-side",
                        "--field-manager=apicost",
                        "-f",
                        "-",
                    ],
                    Some(config),
                );
            } else {
                plane.kubectl(&["delete", "--ignore-not-found", "-f", "-"], Some(config));
            }
        }
    }

    /// The API server's webhook informer lags a change by a moment: probe
    /// with dry-run creates until exactly the webhook `setup` names is
    /// called.
    async fn wait_until_effective(&self, api: &Api<Pod>, image: &str, setup: Setup) {
        let started = Instant::now();
        loop {
            // The bench's pod itself: the static patch fits only its shape
            // (it adds to the pod's labels).
            let pod: Pod = serde_json::from_value(bench_pod(image, "probe")).unwrap();
            let (allow_all, fixed) = (
                self.allow_all_calls.load(Ordering::SeqCst),
                self.fixed_calls.load(Ordering::SeqCst),
            );
            let stored = api
                .create(
                    &PostParams {
                        dry_run: true,
                        ..Default::default()
                    },
                    &pod,
                )
                .await
                .unwrap();
            let patched = stored
                .metadata
                .annotations
                .is_some_and(|a| a.contains_key("archway.dev/decision"));
            let allow_all = self.allow_all_calls.load(Ordering::SeqCst) > allow_all;
            let fixed = self.fixed_calls.load(Ordering::SeqCst) > fixed;
            let called = match (patched, allow_all, fixed) {
                (false, false, false) => Some(Setup::NoWebhook),
                (false, true, false) => Some(Setup::AllowAll),
                (true, false, true) => Some(Setup::StaticPatch),
                (true, false, false) => Some(Setup::Archway),
                _ => None,
            };
            if called == Some(setup) {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "webhook change to {setup:?} not in effect"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The processes whose CPU a point reads.
struct Pids {
    apiserver: u32,
    scheduler: u32,
    etcd: u32,
    archway: u32,
}

impl Pids {
    /// CPU seconds used so far by each, in [`Point::cpu`]'s order.
    fn cpu(&self) -> [f64; 4] {
        [self.apiserver, self.scheduler, self.etcd, self.archway].map(cpu_seconds)
    }
}

const COMPONENTS: [&str; 4] = ["kube-apiserver", "scheduler", "etcd", "archway"];

/// One set-up at one worker count.
struct Point {
    setup: Setup,
    workers: usize,
    creates: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
    /// CPU seconds spent during the point by [`COMPONENTS`].
    cpu: [f64; 4],
}

/// `count` creates by `workers` concurrent clients; pods are named
/// `{name}-{worker}-{i}`.
async fn measure(
    api: &Api<Pod>,
    image: &str,
    name: &str,
    setup: Setup,
    workers: usize,
    count: usize,
    pids: &Pids,
) -> Point {
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = pids.cpu();
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|worker| {
            let (api, image, next) = (api.clone(), image.to_string(), next.clone());
            let name = name.to_string();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while next.fetch_add(1, Ordering::SeqCst) < count {
                    let pod = format!("{name}-{worker}-{}", latencies.len());
                    let started = Instant::now();
                    create(&api, &image, &pod)
                        .await
                        .unwrap_or_else(|e| panic!("create {pod}: {e}"));
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(count);
    for task in tasks {
        latencies.extend(task.await.unwrap());
    }
    let elapsed = started.elapsed();
    // The scheduler binds after the create returns: wait for it to finish
    // the point's pods, so its CPU belongs to this point.
    wait_until_bound(api, count).await;
    let cpu_after = pids.cpu();
    latencies.sort();
    Point {
        setup,
        workers,
        creates: latencies.len(),
        elapsed,
        latencies,
        cpu: std::array::from_fn(|i| cpu_after[i] - cpu_before[i]),
    }
}

async fn wait_until_bound(api: &Api<Pod>, count: usize) {
    let started = Instant::now();
    loop {
        let pods = api
            .list(&ListParams::default().labels("bench=apicost"))
            .await
            .unwrap();
        let bound = pods
            .items
            .iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
            .count();
        if bound >= count || started.elapsed() > Duration::from_secs(60) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `seconds` of 32 clients creating pods while the API server's profiler
/// records; the profile goes to target/apicost/{setup}.pprof.
async fn profile(plane: &ControlPlane, api: &Api<Pod>, image: &str, setup: Setup, seconds: u64) {
    let out = support::repo_root().join("target/apicost");
    std::fs::create_dir_all(&out).unwrap();
    let path = out.join(format!("{}.pprof", setup.name()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let created = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..32)
        .map(|worker| {
            let (api, image) = (api.clone(), image.to_string());
            let (stop, created) = (stop.clone(), created.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::SeqCst) {
                    let _ = create(&api, &image, &format!("prof-{worker}-{i}")).await;
                    created.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            })
        })
        .collect();
    let mut command = plane.kubectl_command();
    command.args([
        "get",
        "--raw",
        &format!("/debug/pprof/profile?seconds={seconds}"),
    ]);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("kubectl get --raw /debug/pprof/profile");
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        output.status.success(),
        "profile: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(&path, &output.stdout).unwrap();
    println!(
        "profile of kube-apiserver under {} ({} creates in {seconds} s): go tool pprof -top {} {}",
        setup.name(),
        created.load(Ordering::SeqCst),
        support::controlplane::binaries()
            .join("kube-apiserver")
            .display(),
        path.display(),
    );
}

fn report(workers: &[usize], points: &[Point]) {
    println!();
    println!(
        "pod creates through kube-apiserver: creates/s, latency, and CPU seconds per 1,000 creates"
    );
    println!(
        "{:>7} {:<13} {:>9} {:>8} {:>8} {:>10} {:>10} {:>8} {:>8}",
        "workers",
        "set-up",
        "creates/s",
        "p50 ms",
        "p99 ms",
        "apiserver",
        "scheduler",
        "etcd",
        "archway"
    );
    // Per worker count and set-up: every round's points together.
    let summary = |workers: usize, setup: Setup| -> Option<(f64, [f64; 4])> {
        let points: Vec<&Point> = (points.iter())
            .filter(|p| p.workers == workers && p.setup == setup)
            .collect();
        if points.is_empty() {
            return None;
        }
        let creates: usize = points.iter().map(|p| p.creates).sum();
        let seconds: f64 = points.iter().map(|p| p.elapsed.as_secs_f64()).sum();
        let cpu: [f64; 4] = std::array::from_fn(|i| {
            points.iter().map(|p| p.cpu[i]).sum::<f64>() * 1000.0 / creates as f64
        });
        let mut latencies: Vec<Duration> = points
            .iter()
            .flat_map(|p| p.latencies.iter().copied())
            .collect();
        latencies.sort();
        let rate = creates as f64 / seconds;
        println!(
            "{workers:>7} {:<13} {rate:>9.1} {:>8.2} {:>8.2} {:>10.2} {:>10.2} {:>8.2} {:>8.2}",
            setup.name(),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            cpu[0],
            cpu[1],
            cpu[2],
            cpu[3],
        );
        Some((rate, cpu))
    };
    let mut ratios = Vec::new();
    for &w in workers {
        let rows: Vec<_> = Setup::ALL.iter().map(|&s| summary(w, s)).collect();
        if let (Some(allow_all), Some(archway)) = (rows[1], rows[3]) {
            ratios.push((w, archway.0 / allow_all.0, archway.1[0] / allow_all.1[0]));
        }
        if let (Some(fixed), Some(archway)) = (rows[2], rows[3]) {
            println!(
                "{w:>7} archway over the static patch: creates/s ×{:.2}, kube-apiserver CPU ×{:.2}",
                archway.0 / fixed.0,
                archway.1[0] / fixed.1[0]
            );
        }
    }
    println!("(CPU columns: {})", COMPONENTS.join(", "));
    for (w, rate, cpu) in ratios {
        let goal = w == 32;
        println!(
            "{w:>7} archway / allow-all: creates/s ×{rate:.2}, kube-apiserver CPU per create ×{cpu:.2}{}",
            match (goal, rate >= 0.9 && cpu <= 1.2) {
                (false, _) => "",
                (true, true) => "   goal (≥ 0.90, ≤ 1.20): MET",
                (true, false) => "   goal (≥ 0.90, ≤ 1.20): MISSED",
            }
        );
    }
}

/// archway's answers (the AdmissionReview `response`, without its uid) to
/// reviews of the bench's pod: one it steers to arm64, then one it keeps on
/// amd64; pods of other names are reviewed until both are found (at
/// rollout 50, about every other pod is steered).
async fn sample_answers(webhook: &str, port: u16, image: &str) -> [Value; 2] {
    let client = direct_client(webhook, port);
    let url = format!("https://archway.archway.svc:{port}/mutate");
    let (mut steered, mut kept) = (None, None);
    for i in 0..200 {
        let pod = bench_pod(image, &format!("sample-{i}"));
        let review = support::webhook::pod_review(&format!("sample-{i}"), NAMESPACE, &pod);
        let answer: Value = client
            .post(&url)
            .json(&review)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut response = answer["response"].clone();
        response.as_object_mut().unwrap().remove("uid");
        let patch = base64_decode(response["patch"].as_str().unwrap_or_default());
        let found = match patch.contains(r#""values":["arm64"]"#) {
            true => &mut steered,
            false => &mut kept,
        };
        found.get_or_insert(response);
        if let (Some(steered), Some(kept)) = (&steered, &kept) {
            return [steered.clone(), kept.clone()];
        }
    }
    panic!("of 200 sample pods at rollout 50, archway did not both steer one and keep one");
}

fn base64_decode(text: &str) -> String {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

fn patch_bytes(response: &Value) -> usize {
    base64_decode(response["patch"].as_str().unwrap_or_default()).len()
}

/// A client of archway's webhook port that trusts the webhook
/// configuration's caBundle, as the API server does.
fn direct_client(webhook: &str, port: u16) -> reqwest::Client {
    let config: Value = serde_json::from_str(webhook).unwrap();
    let bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle");
    let ca = base64_decode(bundle);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    support::webhook::client_for(&ca, addr, false)
}

/// `pods` reviews of a pod like the bench's, posted straight to archway's
/// webhook port, one after another on one connection; each one's round
/// trip.
async fn direct_reviews(webhook: &str, port: u16, image: &str, pods: usize) -> Vec<Duration> {
    let client = direct_client(webhook, port);
    let url = format!("https://archway.archway.svc:{port}/mutate");
    let mut samples = Vec::with_capacity(pods);
    for i in 0..pods + 10 {
        let review = support::webhook::pod_review(
            &format!("direct-{i}"),
            NAMESPACE,
            &bench_pod(image, &format!("direct-{i}")),
        );
        let started = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&review).unwrap())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap();
        let answer: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let elapsed = started.elapsed();
        assert!(answer["response"]["patch"].is_string(), "{answer}");
        // The first few open the connection and warm it.
        if i >= 10 {
            samples.push(elapsed);
        }
    }
    samples
}

/// The pod the bench creates, as the API server shows it to a webhook.
fn bench_pod(image: &str, name: &str) -> Value {
    json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"bench": "apicost"}},
        "spec": {"containers": [{"name": "main", "image": image}],
                 "terminationGracePeriodSeconds": 0},
    })
}

async fn create(api: &Api<Pod>, image: &str, name: &str) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(bench_pod(image, name)).unwrap();
    api.create(&PostParams::default(), &pod).await
}

async fn is_patched(api: &Api<Pod>, name: &str) -> bool {
    let pod = api.get(name).await.unwrap();
    pod.metadata
        .annotations
        .is_some_and(|a| a.contains_key("archway.dev/decision"))
}

/// Deletes the bench's pods and waits until they are gone and the control
/// plane has had a moment to settle (their delete events reach every
/// watcher, archway's guard among them).
async fn clear(api: &Api<Pod>) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    let selector = ListParams::default().labels("bench=apicost");
    api.delete_collection(&params, &selector).await.unwrap();
    let started = Instant::now();
    while !api.list(&selector).await.unwrap().items.is_empty()
        && started.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// The object as read back, without what the server owns (uid,
/// resourceVersion, managedFields...), so it can be applied again after a
/// delete.
fn applicable(read: &str) -> String {
    let mut object: Value = serde_json::from_str(read).unwrap();
    let metadata = &object["metadata"];
    object["metadata"] = json!({"name": metadata["name"], "labels": metadata["labels"]});
    object.to_string()
}

/// The process whose command line has the argument `arg`.
fn pid_with_arg(arg: &str) -> u32 {
    wait_for(
        &format!("a process with {arg}"),
        Duration::from_secs(10),
        || {
            std::fs::read_dir("/proc")
                .ok()?
                .flatten()
                .find_map(|entry| {
                    let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                    let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                    cmdline
                        .split(|&b| b == 0)
                        .any(|a| a == arg.as_bytes())
                        .then_some(pid)
                })
        },
    )
}

/// User and system CPU seconds a process has used (/proc/PID/stat fields
/// 14 and 15, in clock ticks).
fn cpu_seconds(pid: u32) -> f64 {
    static TICKS: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        let out = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .expect("getconf CLK_TCK");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(100.0)
    });
    let stat = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/stat: {e}"));
    // The command name (field 2) may hold spaces: count after its ')'.
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / *TICKS
}

/// Mean of a histogram (its series whose labels contain `with`) in
/// milliseconds, from `_sum` and `_count`.
fn mean(text: &str, histogram: &str, with: &str) -> f64 {
    let total = |suffix: &str| -> f64 {
        let name = format!("{histogram}_{suffix}");
        text.lines()
            .filter(|l| l.starts_with(&name) && l[name.len()..].starts_with(['{', ' ']))
            .filter(|l| l.contains(with))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    total("sum") / total("count") * 1000.0
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

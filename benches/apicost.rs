//! What archway costs a user: pod CREATE latency through the real
//! kube-apiserver with archway's webhook configured, against the same run
//! with no webhook configuration, and with a webhook that allows every pod
//! at once (what calling any webhook costs the API server).
//!
//! ```text
//! cargo bench --bench apicost            # 1,000 creates each way
//! APICOST_PODS=5000 cargo bench --bench apicost
//! APICOST_HTTP2=true cargo bench --bench apicost    # archway offering HTTP/2 too
//! ```
//!
//! It starts the tests' control plane (tests/support/controlplane.rs), a
//! registry with one multi-arch image, `archway serve` (release build)
//! installed from deploy/, and the tests' second webhook
//! (tests/support/injector.rs) in its allow-all form. The image is looked
//! up once before measuring, so every review is a cached one. Creates are
//! sent one at a time from one client, in blocks of 100 that rotate between
//! the three set-ups so that drift in the API server or etcd (compaction,
//! garbage collection) weighs on all the same; webhook configurations are
//! deleted and applied between blocks, each time checked to be in effect
//! before measuring. Pods are deleted between blocks, so the scheduler's
//! work stays the same size. Last, the same reviews are sent straight to
//! archway, to show its own share.
//!
//! Run by `cargo test` (without `--bench`), it does nothing.

use archway_testkit as support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use support::controlplane::{ControlPlane, NodePool};
use support::injector::SidecarInjector;
use support::install::InstalledArchway;
use support::webhook::install_crypto;
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

const NAMESPACE: &str = "apicost";
const BLOCK: usize = 100;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    install_crypto();
    let pods: usize = std::env::var("APICOST_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // `cargo bench` builds the binary with the bench profile (release):
    // archway as deployed.
    let archway = std::path::PathBuf::from(env!("CARGO_BIN_EXE_archway"));

    let plane = ControlPlane::start();
    plane.create_nodes(&NodePool::standard());
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch());
    registry.push(&layout.dir, "app:v1", Format::Oci);
    let image = registry.image("app:v1");
    let installed = InstalledArchway::install(&plane, &archway, &[registry.host()], |config| {
        // One log line per review is archway's default; keep it, as a user
        // would, but on warn the figures are the same within noise.
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
    let webhook = applicable(&plane.kubectl(
        &[
            "get",
            "mutatingwebhookconfiguration",
            "archway",
            "-o",
            "json",
        ],
        None,
    ));

    let allow_all = SidecarInjector::allow_all();
    let allow_all_config = allow_all.configuration(NAMESPACE).to_string();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let samples = runtime.block_on(async {
        let client = plane.client().await;
        let api: Api<Pod> = Api::namespaced(client, NAMESPACE);
        // The image's lookup, so that every measured review is cached.
        create(&api, &image, "warm").await;
        assert!(
            is_patched(&api, "warm").await,
            "archway did not patch the warm-up pod"
        );
        let mut samples: [Vec<Duration>; 3] = Default::default();
        let mut block = 0;
        while samples.iter().any(|s| s.len() < pods) {
            let setup = Setup::ALL[block % 3];
            set_webhooks(&plane, &webhook, &allow_all_config, setup);
            wait_until_effective(&api, &image, setup, &allow_all.calls).await;
            let taken = &mut samples[setup as usize];
            for i in 0..BLOCK.min(pods - taken.len()) {
                let name = format!("b{block}-{i}");
                let started = Instant::now();
                create(&api, &image, &name).await;
                taken.push(started.elapsed());
            }
            clear(&api).await;
            block += 1;
        }
        samples
    });
    let reviews = installed.counter("archway_reviews_total", &[("namespace", NAMESPACE)]);
    // archway's share: the same reviews sent straight to it over HTTPS,
    // one connection, as the API server sends them.
    let direct = runtime.block_on(direct_reviews(
        &webhook,
        installed.webhook_port,
        &image,
        pods,
    ));
    report(pods, &samples, &direct, reviews);
    // Where the difference goes: the webhook call as the API server times
    // it (encode the review, the HTTPS round trip, decode the answer)
    // against archway's own handling of a review.
    let apiserver = plane.kubectl(&["get", "--raw", "/metrics"], None);
    let archway_metrics = installed.metrics();
    let call = |webhook: &str| {
        mean(
            &apiserver,
            "apiserver_admission_webhook_admission_duration_seconds",
            &format!("name=\"{webhook}\""),
        )
    };
    println!(
        "mean per review (ms): the webhook call as kube-apiserver times it, archway {:.3}, allow-all {:.3}; archway's own handling {:.3}",
        call("pods.archway.dev"),
        call("sidecar.injector.test"),
        mean(&archway_metrics, "archway_review_duration_seconds", ""),
    );
}

/// `pods` reviews of a pod like the bench's, posted straight to archway's
/// webhook port by a client that trusts the webhook configuration's
/// caBundle, one after another on one connection; each one's round trip.
async fn direct_reviews(webhook: &str, port: u16, image: &str, pods: usize) -> Vec<Duration> {
    use base64::Engine as _;
    let config: serde_json::Value = serde_json::from_str(webhook).unwrap();
    let bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("caBundle");
    let ca = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .unwrap();
    let ca = String::from_utf8(ca).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = support::webhook::client_for(&ca, addr, false);
    let url = format!("https://archway.archway.svc:{port}/mutate");
    let pod = json!({
        "metadata": {"generateName": "direct-", "namespace": NAMESPACE, "labels": {"bench": "apicost"}},
        "spec": {"containers": [{"name": "main", "image": image}],
                 "terminationGracePeriodSeconds": 0},
    });
    let mut samples = Vec::with_capacity(pods);
    for i in 0..pods + 10 {
        let review = support::webhook::pod_review(&format!("direct-{i}"), NAMESPACE, &pod);
        let started = Instant::now();
        let response = client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&review).unwrap())
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap();
        let answer: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        let elapsed = started.elapsed();
        assert!(answer["response"]["patch"].is_string(), "{answer}");
        // The first few open the connection and warm it.
        if i >= 10 {
            samples.push(elapsed);
        }
    }
    samples
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

async fn create(api: &Api<Pod>, image: &str, name: &str) {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "apicost"}},
        "spec": {"containers": [{"name": "main", "image": image}],
                 "terminationGracePeriodSeconds": 0},
    }))
    .unwrap();
    api.create(&PostParams::default(), &pod)
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
}

async fn is_patched(api: &Api<Pod>, name: &str) -> bool {
    let pod = api.get(name).await.unwrap();
    pod.metadata
        .annotations
        .is_some_and(|a| a.contains_key("archway.dev/decision"))
}

/// The object as read back, without what the server owns (uid,
/// resourceVersion, managedFields...), so it can be applied again after a
/// delete.
fn applicable(read: &str) -> String {
    let mut object: serde_json::Value = serde_json::from_str(read).unwrap();
    let metadata = &object["metadata"];
    object["metadata"] = json!({"name": metadata["name"], "labels": metadata["labels"]});
    object.to_string()
}

/// Which webhooks the API server calls for the bench's pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    Archway = 0,
    AllowAll = 1,
    NoWebhook = 2,
}

impl Setup {
    const ALL: [Setup; 3] = [Setup::Archway, Setup::NoWebhook, Setup::AllowAll];
}

/// Applies the configuration of the webhook `setup` names and deletes the
/// other's.
fn set_webhooks(plane: &ControlPlane, archway: &str, allow_all: &str, setup: Setup) {
    for (config, wanted) in [
        (archway, setup == Setup::Archway),
        (allow_all, setup == Setup::AllowAll),
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

/// The API server's webhook informer lags a change by a moment: probe with
/// dry-run creates until exactly the webhook `setup` names is called.
async fn wait_until_effective(api: &Api<Pod>, image: &str, setup: Setup, calls: &AtomicUsize) {
    let started = Instant::now();
    loop {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "main", "image": image}]},
        }))
        .unwrap();
        let before = calls.load(Ordering::SeqCst);
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
        let allowed_all = calls.load(Ordering::SeqCst) > before;
        if patched == (setup == Setup::Archway) && allowed_all == (setup == Setup::AllowAll) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "webhook change to {setup:?} not in effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn clear(api: &Api<Pod>) {
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        ..Default::default()
    };
    api.delete_collection(&params, &ListParams::default().labels("bench=apicost"))
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index].as_secs_f64() * 1000.0
}

fn report(pods: usize, samples: &[Vec<Duration>; 3], direct: &[Duration], reviews: f64) {
    let sorted = |s: &[Duration]| {
        let mut s = s.to_vec();
        s.sort();
        s
    };
    let archway = sorted(&samples[Setup::Archway as usize]);
    let allow_all = sorted(&samples[Setup::AllowAll as usize]);
    let none = sorted(&samples[Setup::NoWebhook as usize]);
    let direct = sorted(direct);
    println!(
        "pod CREATE latency through kube-apiserver, {pods} creates each way, one at a time (ms)"
    );
    println!(
        "{:<34} {:>8} {:>8} {:>8} {:>8}",
        "", "p50", "p99", "p99.9", "max"
    );
    let row = |name: &str, s: &[Duration]| {
        println!(
            "{name:<34} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            percentile(s, 0.5),
            percentile(s, 0.99),
            percentile(s, 0.999),
            percentile(s, 1.0)
        );
    };
    let difference = |name: &str, a: &[Duration], b: &[Duration]| {
        println!(
            "{name:<34} {:>8.3} {:>8.3} {:>8.3}",
            percentile(a, 0.5) - percentile(b, 0.5),
            percentile(a, 0.99) - percentile(b, 0.99),
            percentile(a, 0.999) - percentile(b, 0.999)
        );
    };
    row("with archway", &archway);
    row("with an allow-all webhook", &allow_all);
    row("no webhook configured", &none);
    difference("archway - no webhook", &archway, &none);
    difference("allow-all webhook - no webhook", &allow_all, &none);
    difference("archway - allow-all webhook", &archway, &allow_all);
    row("archway alone, review over HTTPS", &direct);
    println!("archway reviews counted in the namespace: {reviews}");
    let p50 = percentile(&archway, 0.5) - percentile(&none, 0.5);
    let p99 = percentile(&archway, 0.99) - percentile(&none, 0.99);
    println!(
        "goal: at most +1 ms at p50 and +3 ms at p99 over no webhook: {}",
        if p50 <= 1.0 && p99 <= 3.0 {
            "MET"
        } else {
            "MISSED"
        }
    );
}

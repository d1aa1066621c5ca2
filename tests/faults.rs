//! A misbehaving registry, for real: the CNCF registry behind the counting
//! proxy, which stalls, resets, answers errors, rate limits, serves crafted
//! or oversized bodies and lies about digests; the registry killed and
//! restarted mid-burst; its storage broken under it. Through it all archway
//! answers every review within its time budget (with a warning, or a denial
//! when failing closed), names the cause, does not hammer the registry, and
//! never caches a failure as a success.

use archway_testkit as support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use archway::config::Config;
use hyper::body::Bytes;
use serde_json::{Value, json};
use support::webhook::{TestWebhook, apply_patch, pod_review};
use support::{
    CountingProxy, Fault, Format, ImageSpec, Layout, Recorded, Registry, RegistryOptions,
    build_layout, sha256_digest,
};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MIB: usize = 1024 * 1024;
/// Slack over the time budget for an answer on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(1);

struct Fixture {
    registry: Registry,
    /// What was pushed, by reference.
    layouts: std::collections::BTreeMap<&'static str, Layout>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let registry = Registry::start(RegistryOptions::plain());
        let dir = tempfile::tempdir().unwrap();
        let mut layouts = std::collections::BTreeMap::new();
        for (reference, spec, format) in [
            (
                "multi:v1",
                ImageSpec::multi_arch_with_attestation().with_salt("faults-multi"),
                Format::Oci,
            ),
            (
                "other:v1",
                ImageSpec::index_of(&[("linux", "s390x", None)], false, "faults-other"),
                Format::Oci,
            ),
            (
                "amd:v1",
                ImageSpec::single("amd64").with_salt("faults-amd"),
                Format::Oci,
            ),
        ] {
            let layout = build_layout(&dir.path().join(reference.replace(':', "-")), &spec);
            registry.push(&layout.dir, reference, format);
            layouts.insert(reference, layout);
        }
        Fixture {
            registry,
            layouts,
            _dir: dir,
        }
    })
}

/// The configuration knobs these tests turn.
struct Setup {
    insecure: Vec<String>,
    time_budget: &'static str,
    fail_closed: bool,
    request_timeout: &'static str,
    connect_timeout: &'static str,
    failure_ttl: &'static str,
    tag_ttl: &'static str,
    stale_ttl: &'static str,
    facts_max_bytes: usize,
}

impl Setup {
    fn new(insecure: &[String]) -> Setup {
        Setup {
            insecure: insecure.to_vec(),
            time_budget: "2500ms",
            fail_closed: false,
            request_timeout: "10s",
            connect_timeout: "2s",
            failure_ttl: "30s",
            tag_ttl: "10m",
            stale_ttl: "10m",
            facts_max_bytes: 786_432,
        }
    }

    fn config(&self) -> Config {
        Config::from_yaml(&format!(
            r#"
timeBudget: {}
failClosed: {}
cache: {{ failureTtl: {}, tagTtl: {}, staleTtl: {}, facts: {{ maxBytes: {} }} }}
registry:
  insecure: {:?}
  requestTimeout: {}
  connectTimeout: {}
namespaces:
  ns: {{ mode: enforce, rollout: 100 }}
"#,
            self.time_budget,
            self.fail_closed,
            self.failure_ttl,
            self.tag_ttl,
            self.stale_ttl,
            self.facts_max_bytes,
            self.insecure,
            self.request_timeout,
            self.connect_timeout,
        ))
        .unwrap()
    }

    fn budget(&self) -> Duration {
        self.config().time_budget
    }

    async fn webhook(&self) -> TestWebhook {
        TestWebhook::start(self.config()).await
    }
}

/// One review's answer, read.
#[derive(Debug)]
struct Answer {
    allowed: bool,
    patched: Option<Value>,
    warnings: Vec<String>,
    /// The denial's status message, when denied.
    denial: Option<String>,
    elapsed: Duration,
}

impl Answer {
    fn warned(&self, text: &str) -> bool {
        self.warnings.iter().any(|w| w.contains(text))
    }

    /// The architectures the patched pod is required to run on.
    fn required(&self) -> Option<Vec<String>> {
        let pod = self.patched.as_ref()?;
        let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"];
        Some(
            terms[0]["matchExpressions"][0]["values"]
                .as_array()?
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect(),
        )
    }
}

fn pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "web", "image": image}]}})
}

/// Reviews a pod of `image`; asserts it is answered (HTTP 200, for its
/// uid) within `budget` + `SLACK`.
async fn review(webhook: &TestWebhook, image: &str, budget: Duration) -> Answer {
    let pod = pod(image);
    let started = Instant::now();
    let answer = webhook.review(&pod_review("uid-f", "ns", &pod)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed < budget + SLACK,
        "{image}: answered in {elapsed:?}, over the budget {budget:?} + {SLACK:?}"
    );
    let response = &answer["response"];
    assert_eq!(response["uid"], "uid-f");
    let warnings = response["warnings"]
        .as_array()
        .map(|w| w.iter().map(|w| w.as_str().unwrap().to_string()).collect())
        .unwrap_or_default();
    Answer {
        allowed: response["allowed"] == true,
        patched: apply_patch(&answer, &pod),
        warnings,
        denial: response["status"]["message"].as_str().map(str::to_string),
        elapsed,
    }
}

/// Asserts the pod was admitted unchanged with a warning containing `text`.
#[track_caller]
fn assert_warned(answer: &Answer, text: &str) {
    assert!(answer.allowed, "{answer:?}");
    assert!(answer.patched.is_none(), "{answer:?}");
    assert!(
        answer.warned(text),
        "no warning contains {text:?}: {:?}",
        answer.warnings
    );
}

fn header(name: &str, value: &str) -> (String, String) {
    (name.to_string(), value.to_string())
}

fn is_manifest(r: &Recorded) -> bool {
    r.is_manifest()
}

/// A proxy in front of the shared registry, and `HOST/<reference>` through it.
async fn proxied() -> (CountingProxy, impl Fn(&str) -> String) {
    let proxy = CountingProxy::start(fixture().registry.addr()).await;
    let host = proxy.host();
    (proxy, move |reference: &str| format!("{host}/{reference}"))
}

#[tokio::test]
async fn a_stalled_registry_is_answered_within_the_budget_and_fails_closed_when_asked() {
    let (proxy, image) = proxied().await;
    proxy.set_fault(Fault::Stall);
    let setup = Setup {
        time_budget: "500ms",
        request_timeout: "1s",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let stalled = image("multi:v1");
    let first = review(&webhook, &stalled, budget).await;
    eprintln!("stalled registry: {first:?}");
    assert_warned(
        &first,
        "lookup still running when the review's time budget ran out",
    );
    assert!(
        first.elapsed >= Duration::from_millis(450),
        "the budget was waited out: {first:?}"
    );
    assert_eq!(proxy.count(is_manifest), 1);
    let recorded = proxy.requests();
    assert_eq!(
        (recorded[0].fault.clone(), recorded[0].status),
        (Some(Fault::Stall), None),
        "the request was held unanswered"
    );

    // The lookup went on in the background until the request timeout; its
    // failure is now cached, named, and answered at once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = review(&webhook, &stalled, budget).await;
    assert_warned(
        &second,
        &format!("registry {} did not answer in time", proxy.host()),
    );
    assert!(second.elapsed < Duration::from_millis(450), "{second:?}");
    assert_eq!(proxy.count(is_manifest), 1, "the failure is cached");
    webhook.stop().await;

    // Failing closed, the same pod is denied, within the budget.
    let closed = Setup {
        fail_closed: true,
        ..setup
    }
    .webhook()
    .await;
    let denied = review(&closed, &stalled, budget).await;
    eprintln!("stalled registry, fail closed: {denied:?}");
    assert!(!denied.allowed, "{denied:?}");
    let message = denied.denial.clone().unwrap();
    assert!(
        message.starts_with("archway: some images could not be inspected: image ")
            && message.contains("time budget"),
        "{message}"
    );
    closed.stop().await;
}

#[tokio::test]
async fn a_registry_that_resets_connections_is_named_and_not_hammered() {
    let (proxy, image) = proxied().await;
    proxy.set_fault(Fault::Reset);
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    for _ in 0..5 {
        let answer = review(&webhook, &image("multi:v1"), budget).await;
        assert_warned(
            &answer,
            &format!("cannot reach registry {}: ", proxy.host()),
        );
    }
    let first = review(&webhook, &image("multi:v1"), budget).await;
    eprintln!("reset: {:?}", first.warnings);
    assert_eq!(
        proxy.count(is_manifest),
        1,
        "one request for six reviews: {:?}",
        proxy.requests()
    );
    // Fail closed denies.
    let closed = Setup {
        fail_closed: true,
        ..Setup::new(&[proxy.host()])
    }
    .webhook()
    .await;
    let denied = review(&closed, &image("multi:v1"), budget).await;
    assert!(!denied.allowed);
    assert!(
        denied
            .denial
            .as_deref()
            .unwrap()
            .contains("cannot reach registry"),
        "{denied:?}"
    );
    webhook.stop().await;
    closed.stop().await;
}

#[tokio::test]
async fn server_errors_are_named_and_remembered_for_the_failure_ttl() {
    let (proxy, image) = proxied().await;
    proxy.set_fault_rule(|r| {
        // The tag names the status to answer: /v2/multi/manifests/e503 -> 503.
        match r.path.rsplit_once("/manifests/e") {
            Some((_, code)) => Fault::Status(code.parse().unwrap(), vec![]),
            None => Fault::None,
        }
    });
    let setup = Setup {
        failure_ttl: "600ms",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    for code in [500, 502, 503, 504] {
        let failing = image(&format!("multi:e{code}"));
        let before = proxy.count(is_manifest);
        let started = Instant::now();
        for _ in 0..5 {
            let answer = review(&webhook, &failing, budget).await;
            assert_warned(
                &answer,
                &format!(
                    "archway: image {failing} (container web): registry {} answered HTTP {code}",
                    proxy.host()
                ),
            );
        }
        let within_ttl = started.elapsed() < Duration::from_millis(600);
        if within_ttl {
            assert_eq!(
                proxy.count(is_manifest) - before,
                1,
                "HTTP {code}: five reviews within the failure TTL cost one request"
            );
        }
        tokio::time::sleep(Duration::from_millis(800)).await;
        let again = review(&webhook, &failing, budget).await;
        assert!(again.warned(&format!("answered HTTP {code}")));
        assert_eq!(
            proxy.count(is_manifest) - before,
            if within_ttl { 2 } else { 3 },
            "HTTP {code}: asked again once the failure TTL passed"
        );
    }
    webhook.stop().await;
}

#[tokio::test]
async fn a_429_is_remembered_for_its_retry_after_not_just_the_failure_ttl() {
    let (proxy, image) = proxied().await;
    let limited = Arc::new(AtomicBool::new(true));
    let switch = limited.clone();
    proxy.set_fault_rule(move |r| {
        if switch.load(Ordering::SeqCst) && r.is_manifest() {
            Fault::Status(429, vec![header("Retry-After", "2")])
        } else {
            Fault::None
        }
    });
    let setup = Setup {
        failure_ttl: "300ms",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let target = image("multi:v1");
    // The 429 arrives after `sent_at` and is cached before `cached_by`:
    // both the host's back-off and the cache entry last from in between
    // for 2 s. A review that ends before `sent_at` + 2 s cannot have asked.
    let sent_at = Instant::now();
    let first = review(&webhook, &target, budget).await;
    let cached_by = Instant::now();
    assert_warned(
        &first,
        &format!(
            "registry {} is rate limiting requests (HTTP 429, retry after 2s)",
            proxy.host()
        ),
    );
    assert_eq!(proxy.count(is_manifest), 1);
    // Well past the failure TTL, still within Retry-After: nothing sent,
    // for this image or any other on the same registry.
    while sent_at.elapsed() < Duration::from_millis(1600) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let answer = review(&webhook, &target, budget).await;
        assert!(answer.warned("HTTP 429"), "{answer:?}");
        let other = review(&webhook, &image("amd:v1"), budget).await;
        assert!(other.warned("HTTP 429"), "{other:?}");
        if sent_at.elapsed() < Duration::from_secs(2) {
            assert_eq!(
                proxy.count(is_manifest),
                1,
                "asked again {:?} after a 429 with Retry-After: 2",
                sent_at.elapsed()
            );
        }
    }
    // Once it has passed, the registry (no longer limiting) is asked again.
    limited.store(false, Ordering::SeqCst);
    tokio::time::sleep(
        Duration::from_secs(2).saturating_sub(cached_by.elapsed()) + Duration::from_millis(300),
    )
    .await;
    let after = review(&webhook, &target, budget).await;
    assert!(after.patched.is_some(), "{after:?}");
    assert_eq!(proxy.count(is_manifest), 2);

    // A Retry-After that is not a number of seconds (an HTTP date) is not
    // read: the host then backs off for archway's default (10 s), well past
    // the failure TTL, and for every image on it.
    let dated = image("multi:dated");
    proxy.set_fault(Fault::Status(
        429,
        vec![header("Retry-After", "Wed, 21 Oct 2065 07:28:00 GMT")],
    ));
    let answer = review(&webhook, &dated, budget).await;
    assert_warned(&answer, "is rate limiting requests (HTTP 429)");
    assert!(!answer.warned("retry after"), "{answer:?}");
    let before = proxy.count(is_manifest);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = review(&webhook, &dated, budget).await;
    assert_warned(&again, "is rate limiting requests (HTTP 429, retry after ");
    let other = review(&webhook, &image("amd:v1"), budget).await;
    assert_warned(&other, "is rate limiting requests (HTTP 429, retry after ");
    assert_eq!(
        proxy.count(is_manifest),
        before,
        "the host is left alone while it backs off"
    );
    webhook.stop().await;
}

fn index_of(entries: usize) -> Vec<u8> {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let manifests: Vec<Value> = (0..entries)
        .map(|i| {
            json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": 100 + i,
                        "platform": {"os": "linux", "architecture": "amd64"}})
        })
        .collect();
    serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}))
        .unwrap()
}

#[tokio::test]
async fn malformed_manifests_are_refused_with_the_reason() {
    let attestation_only = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": format!("sha256:{}", "cd".repeat(32)), "size": 1,
         "platform": {"os": "unknown", "architecture": "unknown"}}]});
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        ("empty", OCI_MANIFEST, vec![], "manifest is not valid JSON: EOF while parsing"),
        ("html", "text/html", b"<html><body>502 Bad Gateway</body></html>".to_vec(), "manifest is not valid JSON: expected value"),
        ("truncated", OCI_INDEX, index_of(3)[..100].to_vec(), "manifest is not valid JSON: EOF while parsing"),
        ("wrongshape", OCI_INDEX, br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": "all of them"}"#.to_vec(),
            "manifest is not valid JSON: invalid type: string \"all of them\", expected a sequence"),
        ("wrongentry", OCI_INDEX, br#"{"schemaVersion": 2, "manifests": [{"platform": "linux/amd64"}]}"#.to_vec(),
            "manifest is not valid JSON: invalid type: string \"linux/amd64\""),
        ("schema1", "application/vnd.docker.distribution.manifest.v1+prettyjws", br#"{"schemaVersion": 1, "name": "x", "tag": "v1"}"#.to_vec(),
            "manifest schema version 1 is not supported"),
        ("notype", OCI_MANIFEST, br#"{"schemaVersion": 2, "mediaType": "text/plain"}"#.to_vec(), "unsupported manifest media type \"text/plain\""),
        ("tooMany", OCI_INDEX, index_of(300), "index has 300 entries, more than the limit of 256"),
        ("attestations", OCI_INDEX, serde_json::to_vec(&attestation_only).unwrap(), "index lists no platform"),
        ("noconfig", OCI_MANIFEST, br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}"#.to_vec(),
            "image manifest has no config"),
        ("md5", OCI_MANIFEST, br#"{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "config": {"digest": "md5:abc"}}"#.to_vec(),
            "invalid digest \"md5:abc\""),
        ("upper", OCI_MANIFEST, format!(r#"{{"schemaVersion": 2, "config": {{"digest": "sha256:{}"}}}}"#, "AB".repeat(32)).into_bytes(),
            "invalid digest"),
    ];
    let (proxy, image) = proxied().await;
    let bodies: std::collections::BTreeMap<String, (String, Bytes)> = cases
        .iter()
        .map(|(tag, content_type, body, _)| {
            (
                format!("/v2/crafted/manifests/{tag}"),
                (content_type.to_string(), Bytes::from(body.clone())),
            )
        })
        .collect();
    proxy.set_fault_rule(move |r| match bodies.get(&r.path) {
        Some((content_type, body)) => Fault::Body(
            200,
            vec![header("content-type", content_type)],
            body.clone(),
        ),
        None => Fault::None,
    });
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    for (tag, _, _, expected) in &cases {
        let answer = review(&webhook, &image(&format!("crafted:{tag}")), budget).await;
        eprintln!("{tag:>12}: {:?}", answer.warnings);
        assert_warned(
            &answer,
            &format!("registry {} sent an unreadable manifest: ", proxy.host()),
        );
        assert_warned(&answer, expected);
    }
    assert_eq!(proxy.count(|r| r.is_blob()), 0, "no config was fetched");
    webhook.stop().await;
}

#[tokio::test]
async fn oversized_manifests_and_configs_are_refused_without_being_read_whole() {
    let (proxy, image) = proxied().await;
    let amd_config = fixture().layouts["amd:v1"].manifests[0]
        .config_digest
        .clone();
    proxy.set_fault_rule(move |r| {
        let drip = |headers: Vec<(String, String)>| Fault::Drip {
            status: 200,
            headers,
            chunk: 256 * 1024,
            interval: Duration::from_millis(5),
            total: 100 * MIB as u64,
        };
        match r.path.as_str() {
            // 5 MiB, with its Content-Length.
            "/v2/big/manifests/full" => Fault::Body(
                200,
                vec![header("content-type", OCI_INDEX)],
                Bytes::from(vec![b' '; 5 * MIB]),
            ),
            // 100 MiB dripped, chunked: the length is only known by reading.
            "/v2/big/manifests/chunked" => drip(vec![header("content-type", OCI_INDEX)]),
            // 100 MiB announced, dripped.
            "/v2/big/manifests/announced" => drip(vec![
                header("content-type", OCI_INDEX),
                header("content-length", &(100 * MIB).to_string()),
            ]),
            path if path == format!("/v2/amd/blobs/{amd_config}") => {
                drip(vec![header("content-type", "application/octet-stream")])
            }
            _ => Fault::None,
        }
    });
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    for reference in ["big:full", "big:chunked", "big:announced", "amd:v1"] {
        let dripped_before = proxy.dripped_bytes();
        let answer = review(&webhook, &image(reference), budget).await;
        eprintln!("{reference}: {:?} in {:?}", answer.warnings, answer.elapsed);
        assert_warned(
            &answer,
            &format!(
                "manifest or config from {} is larger than the limit of 4194304 bytes",
                proxy.host()
            ),
        );
        // The body is abandoned: nothing more is read from it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let settled = proxy.dripped_bytes();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let dripped = proxy.dripped_bytes() - dripped_before;
        eprintln!("{reference}: {} KiB of the body sent", dripped / 1024);
        assert_eq!(proxy.dripped_bytes(), settled, "{reference}: still read");
        assert!(
            dripped < 16 * MIB as u64,
            "{reference}: {dripped} bytes were read of a 100 MiB body"
        );
    }
    webhook.stop().await;
}

#[tokio::test]
async fn a_body_dripped_slower_than_the_request_timeout_is_given_up() {
    let (proxy, image) = proxied().await;
    proxy.set_fault_rule(|r| {
        if r.is_manifest() {
            // 4 KiB at 16 bytes every 100 ms: 25 s, each read well within
            // any read timeout.
            Fault::Drip {
                status: 200,
                headers: vec![header("content-type", OCI_INDEX)],
                chunk: 16,
                interval: Duration::from_millis(100),
                total: 4096,
            }
        } else {
            Fault::None
        }
    });
    let setup = Setup {
        time_budget: "500ms",
        request_timeout: "1s",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let first = review(&webhook, &image("multi:v1"), budget).await;
    assert_warned(&first, "time budget ran out");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let second = review(&webhook, &image("multi:v1"), budget).await;
    eprintln!("slow drip: {:?}", second.warnings);
    assert_warned(
        &second,
        &format!("registry {} did not answer in time", proxy.host()),
    );
    let settled = proxy.dripped_bytes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(proxy.dripped_bytes(), settled, "the body is still read");
    assert!(settled < 1024, "{settled} bytes read in about a second");
    webhook.stop().await;
}

#[tokio::test]
async fn content_that_does_not_match_its_digest_is_refused_and_not_cached() {
    let fx = fixture();
    let (proxy, image) = proxied().await;
    let amd = &fx.layouts["amd:v1"];
    let config_digest = amd.manifests[0].config_digest.clone();
    let multi_digest = fx.layouts["multi:v1"].top_digest.clone();
    // What a compromised or broken registry might serve instead.
    let arm_config = br#"{"architecture": "arm64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}"#;
    let s390x_index = fx.layouts["other:v1"].top_bytes.clone();
    let lying = Arc::new(AtomicBool::new(true));
    let switch = lying.clone();
    let config_path = format!("/v2/amd/blobs/{config_digest}");
    let by_digest_path = format!("/v2/multi/manifests/{multi_digest}");
    proxy.set_fault_rule(move |r| {
        if !switch.load(Ordering::SeqCst) {
            Fault::None
        } else if r.path == config_path {
            Fault::Body(
                200,
                vec![header("content-type", "application/octet-stream")],
                Bytes::from_static(arm_config),
            )
        } else if r.path == by_digest_path {
            Fault::Body(
                200,
                vec![
                    header("content-type", OCI_INDEX),
                    // Lie in the header too: archway must hash the body.
                    header(
                        "docker-content-digest",
                        by_digest_path.rsplit('/').next().unwrap(),
                    ),
                ],
                Bytes::from(s390x_index.clone()),
            )
        } else {
            Fault::None
        }
    });
    let setup = Setup {
        failure_ttl: "300ms",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;

    // A config blob whose bytes are not its digest: its arm64 is not believed.
    let single = image("amd:v1");
    let answer = review(&webhook, &single, budget).await;
    eprintln!("lying config: {:?}", answer.warnings);
    assert_warned(
        &answer,
        &format!(
            "registry {} sent content whose digest {} is not the expected {config_digest}",
            proxy.host(),
            sha256_digest(arm_config)
        ),
    );
    // A manifest fetched by digest must hash to that digest.
    let pinned = image(&format!("multi@{multi_digest}"));
    let answer = review(&webhook, &pinned, budget).await;
    eprintln!("lying manifest: {:?}", answer.warnings);
    assert_warned(
        &answer,
        &format!(
            "sent content whose digest {} is not the expected {multi_digest}",
            sha256_digest(&fx.layouts["other:v1"].top_bytes)
        ),
    );
    // Also with a tag next to the digest: the digest is what counts.
    let tagged = image(&format!("multi:v1@{multi_digest}"));
    assert_warned(
        &review(&webhook, &tagged, budget).await,
        "sent content whose digest sha256:",
    );
    // Failing closed, such a pod is denied.
    let closed = Setup {
        fail_closed: true,
        ..Setup::new(&[proxy.host()])
    }
    .webhook()
    .await;
    let denied = review(&closed, &pinned, budget).await;
    assert!(!denied.allowed, "{denied:?}");
    closed.stop().await;

    // The failures were cached as failures, briefly: once the registry
    // serves the right bytes, the right answer comes.
    lying.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        review(&webhook, &single, budget).await.required(),
        Some(vec!["amd64".to_string()])
    );
    for reference in [&pinned, &tagged] {
        assert_eq!(
            review(&webhook, reference, budget).await.required(),
            Some(vec!["arm64".to_string()]),
            "{reference}"
        );
    }
    webhook.stop().await;
}

#[tokio::test]
async fn token_endpoint_faults_are_named_and_leak_no_token() {
    let (proxy, image) = proxied().await;
    let realm = format!("http://{}/token", proxy.host());
    let big_token = Bytes::from(format!(r#"{{"token": "{}"}}"#, "t".repeat(2 * MIB)));
    proxy.set_fault_rule(move |r| {
        let repository = r.path.split('/').nth(2).unwrap_or_default().to_string();
        if r.path.starts_with("/v2/") && r.authorization.is_none() {
            let realm = match repository.as_str() {
                "ftprealm" => realm.replace("http://", "ftp://"),
                // Another host would be handed the registry credential.
                "elsewhere" => "http://127.0.0.1:1/token".to_string(),
                _ => format!("{realm}/{repository}"),
            };
            return Fault::Status(
                401,
                vec![header(
                    "www-authenticate",
                    &format!(r#"Bearer realm="{realm}",service="faults""#),
                )],
            );
        }
        if r.path.starts_with("/v2/") {
            // A token was sent; this registry takes none.
            return Fault::Status(401, vec![header("www-authenticate", r#"Bearer realm="x""#)]);
        }
        let json = |body: &str| {
            Fault::Body(
                200,
                vec![header("content-type", "application/json")],
                Bytes::from(body.to_string()),
            )
        };
        match r.path.as_str() {
            "/token/bigtoken" => Fault::Body(200, vec![], big_token.clone()),
            "/token/badjson" => json(r#"{"token": "SECRET-in-bad-json", "expires_in": "soon"}"#),
            "/token/spaces" => json(r#"{"token": "SECRET with spaces"}"#),
            "/token/denied" => Fault::Status(403, vec![]),
            "/token/down" => Fault::Status(503, vec![]),
            "/token/rejected" => json(r#"{"token": "SECRET-rejected", "expires_in": 300}"#),
            _ => Fault::Status(404, vec![]),
        }
    });
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let host = proxy.host();
    for (repository, expected) in [
        (
            "bigtoken",
            format!("token response from {host} is larger than the limit of 1048576 bytes"),
        ),
        (
            "badjson",
            format!("token request for {host} failed: token response is not JSON"),
        ),
        (
            "spaces",
            format!("token request for {host} failed: token response has no usable token"),
        ),
        (
            "ftprealm",
            format!("token request for {host} failed: realm {host} is not HTTPS"),
        ),
        (
            "elsewhere",
            format!(
                "refused to connect for registry {host}: token realm 127.0.0.1:1 is another host and not trusted"
            ),
        ),
        (
            "denied",
            format!("registry {host} refused access to repository:denied:pull"),
        ),
        (
            "down",
            format!("token request for {host} failed: token endpoint answered HTTP 503"),
        ),
        (
            "rejected",
            format!("registry {host} refused access to rejected (no credentials for it)"),
        ),
    ] {
        let answer = review(&webhook, &image(&format!("{repository}:v1")), budget).await;
        eprintln!("{repository}: {:?}", answer.warnings);
        assert_warned(&answer, &expected);
        assert!(
            !answer.warnings.iter().any(|w| w.contains("SECRET")),
            "a token leaked: {:?}",
            answer.warnings
        );
    }
    // The rejected token was sent once, then archway gave up.
    let rejected: Vec<Recorded> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("rejected"))
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:#?}");
    assert_eq!(
        rejected[2].authorization.as_deref(),
        Some("Bearer SECRET-rejected")
    );
    webhook.stop().await;
}

#[tokio::test]
async fn redirect_loops_and_redirects_elsewhere_are_refused() {
    let (proxy, image) = proxied().await;
    let host = proxy.host();
    proxy.set_fault_rule(move |r| {
        let location = if r.path.starts_with("/v2/loop/") {
            format!("http://{host}{}", r.path)
        } else {
            format!("https://127.0.0.1:1{}", r.path)
        };
        Fault::Status(302, vec![header("location", &location)])
    });
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let answer = review(&webhook, &image("loop:v1"), budget).await;
    eprintln!("redirect loop: {:?}", answer.warnings);
    assert_warned(
        &answer,
        &format!(
            "refused to connect for registry {}: more than 5 redirects",
            proxy.host()
        ),
    );
    let requests = proxy.requests().len();
    assert!((2..=7).contains(&requests), "{requests} requests");
    proxy.reset();
    let answer = review(&webhook, &image("away:v1"), budget).await;
    eprintln!("redirect elsewhere: {:?}", answer.warnings);
    assert_warned(
        &answer,
        &format!(
            "redirect from {} to 127.0.0.1:1, another host not trusted",
            proxy.host()
        ),
    );
    assert_eq!(proxy.requests().len(), 1);
    webhook.stop().await;
}

/// Outcome of one review during the burst.
#[derive(Debug, Clone)]
struct BurstResult {
    image: String,
    patched: bool,
    warnings: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_registry_mid_burst_and_restarting_it() {
    let registry = Arc::new(Registry::start(RegistryOptions::plain()));
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        &dir.path().join("multi"),
        &ImageSpec::multi_arch().with_salt("faults-burst"),
    );
    let digest = registry.push(&layout.dir, "burst:v1", Format::Oci);
    let setup = Setup {
        time_budget: "1s",
        connect_timeout: "500ms",
        request_timeout: "2s",
        failure_ttl: "300ms",
        // No facts kept: a digest archway knows is answered without the
        // registry, and each review here must be a registry lookup.
        facts_max_bytes: 0,
        ..Setup::new(&[registry.host()])
    };
    let budget = setup.budget();
    let webhook = Arc::new(setup.webhook().await);
    // A tag answered before the outage stays answered from the cache.
    let warm = registry.image("burst:v1");
    assert!(review(&webhook, &warm, budget).await.patched.is_some());

    // 8 workers review distinct images (each a new tag pinned to the
    // pushed digest, so each is a registry lookup) until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicUsize::new(0));
    let results = Arc::new(Mutex::new(Vec::<BurstResult>::new()));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (webhook, stop, counter, results) = (
                webhook.clone(),
                stop.clone(),
                counter.clone(),
                results.clone(),
            );
            let (host, digest) = (registry.host(), digest.clone());
            tokio::spawn(async move {
                // Paced (a review every 5 ms at most per worker) so that
                // the reviews span all three phases however fast failures
                // are answered: during the outage a refused connection is
                // answered in microseconds, and an unpaced bounded burst
                // once ran out before the restart. Bounded all the same.
                let mut pace = tokio::time::interval(Duration::from_millis(5));
                while !stop.load(Ordering::SeqCst) {
                    pace.tick().await;
                    let i = counter.fetch_add(1, Ordering::SeqCst);
                    if i >= 20_000 {
                        break;
                    }
                    let image = format!("{host}/burst:t{i}@{digest}");
                    let answer = review(&webhook, &image, budget).await;
                    assert!(answer.allowed, "{answer:?}");
                    assert!(
                        answer.patched.is_some() == answer.warnings.is_empty(),
                        "a patch or a warning, never neither: {answer:?}"
                    );
                    results.lock().unwrap().push(BurstResult {
                        image,
                        patched: answer.patched.is_some(),
                        warnings: answer.warnings,
                    });
                }
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = registry.clone();
    tokio::task::spawn_blocking(move || killed.stop())
        .await
        .unwrap();
    let killed_at = results.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    // During the outage the cached tag is still answered from the cache.
    assert!(
        review(&webhook, &warm, budget).await.patched.is_some(),
        "a cached answer survives the registry's death"
    );
    let restarted = registry.clone();
    tokio::task::spawn_blocking(move || restarted.start_again())
        .await
        .unwrap();
    let restarted_at = results.lock().unwrap().len();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.expect("every review was answered");
    }
    let results = results.lock().unwrap().clone();
    let patched = results.iter().filter(|r| r.patched).count();
    let failed: Vec<&BurstResult> = results.iter().filter(|r| !r.patched).collect();
    eprintln!(
        "burst: {} reviews ({killed_at} before the kill, {restarted_at} before the restart), {patched} patched, {} warned; e.g. {:?}",
        results.len(),
        failed.len(),
        failed.first().map(|r| &r.warnings)
    );
    assert!(
        patched > 0 && !failed.is_empty(),
        "both sides of the outage were seen"
    );
    assert!(
        failed.iter().any(|r| r
            .warnings
            .iter()
            .any(|w| w.contains(&format!("cannot reach registry {}", registry.host())))),
        "the outage is named"
    );
    assert!(
        results.len() > restarted_at,
        "reviews went on after the restart"
    );
    assert!(
        results[restarted_at..].iter().any(|r| r.patched),
        "reviews are patched again after the restart, archway not restarted"
    );
    // An image that failed during the outage is answered once its failure
    // TTL has passed.
    let failed_image = failed[0].image.clone();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        review(&webhook, &failed_image, budget)
            .await
            .patched
            .is_some(),
        "{failed_image} recovered"
    );
}

/// Replaces `path` (a file) with an empty directory: distribution's
/// filesystem driver then fails to read it (EISDIR) and answers 500, as it
/// would on an I/O error. Returns the bytes to put back.
fn break_file(path: &std::path::Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    std::fs::remove_file(path).unwrap();
    std::fs::create_dir(path).unwrap();
    bytes
}

fn restore_file(path: &std::path::Path, bytes: &[u8]) {
    let _ = std::fs::remove_dir(path);
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn broken_storage_under_a_running_registry_never_turns_into_a_cached_success() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let multi = build_layout(
        &dir.path().join("multi"),
        &ImageSpec::multi_arch().with_salt("faults-storage"),
    );
    let amd = build_layout(
        &dir.path().join("amd"),
        &ImageSpec::single("amd64").with_salt("faults-storage"),
    );
    registry.push(&multi.dir, "multi:v1", Format::Oci);
    registry.push(&multi.dir, "multi:v2", Format::Oci);
    registry.push(&amd.dir, "amd:v1", Format::Oci);
    let proxy = CountingProxy::start(registry.addr()).await;
    let setup = Setup {
        tag_ttl: "3s",
        stale_ttl: "2s",
        failure_ttl: "300ms",
        ..Setup::new(&[proxy.host()])
    };
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let image = |reference: &str| format!("{}/{reference}", proxy.host());
    let storage = registry.storage_dir();
    let v2 = storage.join("docker/registry/v2");
    let link = |repository: &str, tag: &str| {
        v2.join(format!(
            "repositories/{repository}/_manifests/tags/{tag}/current/link"
        ))
    };

    // A read-only storage changes nothing for archway, which only reads
    // (and the tests run as root, whom modes do not stop anyway).
    let chmod = |mode: &str| {
        let status = std::process::Command::new("chmod")
            .args(["-R", mode])
            .arg(&storage)
            .status()
            .unwrap();
        assert!(status.success());
    };
    chmod("a-w");
    let read_only = review(&webhook, &image("multi:v2"), budget).await;
    chmod("u+w");
    assert!(read_only.patched.is_some(), "{read_only:?}");

    // A success is cached for the tag TTL.
    let cached = image("multi:v1");
    assert!(review(&webhook, &cached, budget).await.patched.is_some());
    let cached_at = Instant::now();

    // Storage read errors: the tag links of both images unreadable.
    let multi_link = break_file(&link("multi", "v1"));
    let amd_link = break_file(&link("amd", "v1"));
    let asked = proxy.count(is_manifest);
    let still = review(&webhook, &cached, budget).await;
    assert!(
        still.patched.is_some(),
        "a success is kept for its TTL: {still:?}"
    );
    assert_eq!(proxy.count(is_manifest), asked, "answered from the cache");
    let uncached = image("amd:v1");
    for round in 0..3 {
        let answer = review(&webhook, &uncached, budget).await;
        assert_warned(
            &answer,
            &format!("registry {} answered HTTP 500", proxy.host()),
        );
        if round < 2 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
    }
    assert_eq!(
        proxy.count(is_manifest),
        asked + 3,
        "asked again after each failure TTL, failing each time"
    );

    // Corrupt content on disk: the registry serves the config blob's file
    // as it is, and archway's digest check refuses it.
    restore_file(&link("amd", "v1"), &amd_link);
    let config = &amd.manifests[0].config_digest;
    let hex = config.trim_start_matches("sha256:");
    let config_file = v2.join(format!("blobs/sha256/{}/{hex}/data", &hex[..2]));
    let original_config = std::fs::read(&config_file).unwrap();
    std::fs::write(&config_file, br#"{"os": "linux", "architecture": "arm64"}"#).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let corrupt = review(&webhook, &uncached, budget).await;
    assert_warned(
        &corrupt,
        &format!(
            "sent content whose digest {} is not the expected {config}",
            sha256_digest(br#"{"os": "linux", "architecture": "arm64"}"#)
        ),
    );

    // Past the tag TTL, the cached success is still served while the
    // registry fails to revalidate it (cache.staleTtl); once that has
    // passed too, it goes and the registry's failure shows: no stale answer
    // is served past tagTtl + staleTtl.
    let after = |time: Duration| time.saturating_sub(cached_at.elapsed());
    tokio::time::sleep(after(Duration::from_millis(3300))).await;
    let stale = review(&webhook, &cached, budget).await;
    assert!(stale.patched.is_some(), "served within staleTtl: {stale:?}");
    tokio::time::sleep(after(Duration::from_millis(5300))).await;
    let expired = review(&webhook, &cached, budget).await;
    assert_warned(&expired, "answered HTTP 500");

    // Repaired: every image is answered again once the failure TTL passes.
    restore_file(&link("multi", "v1"), &multi_link);
    std::fs::write(&config_file, &original_config).unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        review(&webhook, &cached, budget).await.required(),
        Some(vec!["arm64".to_string()])
    );
    assert_eq!(
        review(&webhook, &uncached, budget).await.required(),
        Some(vec!["amd64".to_string()])
    );
    webhook.stop().await;
}

/// A digest mismatch warning is `archway: image <image> (container
/// <name>): registry <host> sent content whose digest <sha256:64 hex> is not
/// the expected <sha256:64 hex>`: over 256 characters for any image. It was
/// once cut there, losing the expected digest; both must be named.
#[tokio::test]
async fn a_digest_mismatch_warning_names_both_digests() {
    let fx = fixture();
    let (proxy, image) = proxied().await;
    let config_digest = fx.layouts["amd:v1"].manifests[0].config_digest.clone();
    let config_path = format!("/v2/amd/blobs/{config_digest}");
    proxy.set_fault_rule(move |r| {
        if r.path == config_path {
            Fault::Body(200, vec![], Bytes::from_static(b"{}"))
        } else {
            Fault::None
        }
    });
    let setup = Setup::new(&[proxy.host()]);
    let budget = setup.budget();
    let webhook = setup.webhook().await;
    let answer = review(&webhook, &image("amd:v1"), budget).await;
    eprintln!("{:?}", answer.warnings);
    assert_warned(
        &answer,
        &format!(
            "sent content whose digest {} is not the expected {config_digest}",
            sha256_digest(b"{}")
        ),
    );
    webhook.stop().await;
}

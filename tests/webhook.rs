//! The webhook end to end: real HTTPS with certificate verification as the
//! API server does it, images in a real registry, patches decoded and
//! applied, the results validated as Pods.

use archway_testkit as support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use archway::config::Config;
use serde_json::{Value, json};
use support::webhook::{TestWebhook, apply_patch, client_for, pod_review};
use support::{CountingProxy, Fault, Format, ImageSpec, Registry, RegistryOptions, build_layout};

struct Fixture {
    registry: Registry,
    _layouts: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let registry = Registry::start(RegistryOptions::plain());
        let layouts = tempfile::tempdir().unwrap();
        for (reference, spec, format) in [
            (
                "multi:v1",
                ImageSpec::multi_arch_with_attestation(),
                Format::Oci,
            ),
            (
                "dlist:v1",
                ImageSpec::multi_arch().with_salt("dlist"),
                Format::V2s2,
            ),
            ("amd:v1", ImageSpec::single("amd64"), Format::Oci),
            ("arm:v1", ImageSpec::single("arm64"), Format::V2s2),
            (
                "slow:v1",
                ImageSpec::multi_arch().with_salt("slow"),
                Format::Oci,
            ),
            (
                "drain:v1",
                ImageSpec::multi_arch().with_salt("drain"),
                Format::Oci,
            ),
        ] {
            let layout = build_layout(&layouts.path().join(reference.replace(':', "-")), &spec);
            registry.push(&layout.dir, reference, format);
        }
        Fixture {
            registry,
            _layouts: layouts,
        }
    })
}

fn config(extra: &str, insecure: &[String]) -> Config {
    let yaml = format!(
        r#"
registry:
  insecure: {insecure:?}
namespaces:
  r0: {{ mode: enforce, rollout: 0 }}
  r25: {{ mode: enforce, rollout: 25 }}
  r100: {{ mode: enforce, rollout: 100 }}
  pref: {{ mode: enforce, rollout: 100, placement: preferred }}
  audit: {{ mode: audit, rollout: 100 }}
{extra}"#
    );
    Config::from_yaml(&yaml).unwrap()
}

async fn webhook(extra: &str) -> TestWebhook {
    TestWebhook::start(config(extra, &[fixture().registry.host()])).await
}

fn img(reference: &str) -> String {
    format!("{}/{reference}", fixture().registry.host())
}

fn pod(name: &str, images: &[&str]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": img(image)}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
           "spec": {"containers": containers}})
}

fn required_archs(pod: &Value) -> Vec<Vec<String>> {
    pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|term| {
            term["matchExpressions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["key"] == "kubernetes.io/arch")
                .flat_map(|e| e["values"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()))
                .collect()
        })
        .collect()
}

fn tolerated(pod: &Value) -> Vec<String> {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] == "kubernetes.io/arch")
        .map(|t| t["value"].as_str().unwrap().to_string())
        .collect()
}

/// Every patched pod must be a valid Pod for Kubernetes 1.33, unknown
/// fields refused; kubernetes-validate is what checks that offline.
fn validate_pods(pods: &[Value]) {
    let dir = tempfile::tempdir().unwrap();
    let files: Vec<_> = pods
        .iter()
        .enumerate()
        .map(|(i, pod)| {
            let path = dir.path().join(format!("pod-{i}.json"));
            std::fs::write(&path, serde_json::to_vec_pretty(pod).unwrap()).unwrap();
            path
        })
        .collect();
    let output = std::process::Command::new("kubernetes-validate")
        .args(["--strict", "-k", "1.33.0", "--quiet"])
        .args(files.iter().map(|p| p.as_path()).collect::<Vec<&Path>>())
        .output()
        .expect(
            "kubernetes-validate is installed by tests/run.sh (pip install kubernetes-validate)",
        );
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn patched(webhook: &TestWebhook, namespace: &str, pod: &Value) -> (Value, Value) {
    let answer = webhook.review(&pod_review("uid-1", namespace, pod)).await;
    assert_eq!(answer["response"]["uid"], "uid-1");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    let patched = apply_patch(&answer, pod).unwrap_or_else(|| panic!("expected a patch: {answer}"));
    (patched, answer)
}

#[tokio::test]
async fn places_pods_by_rollout_and_by_what_their_images_publish() {
    let webhook = webhook("").await;
    let mut results = Vec::new();
    for (namespace, image, expected) in [
        ("r0", "multi:v1", "amd64"),
        ("r100", "multi:v1", "arm64"),
        ("r0", "dlist:v1", "amd64"),
        ("r100", "dlist:v1", "arm64"),
        ("r100", "amd:v1", "amd64"),
        ("r0", "arm:v1", "arm64"),
    ] {
        let pod = pod("web", &[image]);
        let (patched, answer) = patched(&webhook, namespace, &pod).await;
        assert_eq!(
            required_archs(&patched),
            [vec![expected.to_string()]],
            "{namespace} {image}"
        );
        assert_eq!(tolerated(&patched), [expected], "{namespace} {image}");
        let annotations = &patched["metadata"]["annotations"];
        assert_eq!(annotations["app"], Value::Null);
        let archs = annotations["archway.dev/archs"].as_str().unwrap();
        assert!(archs == "amd64,arm64" || archs == expected, "{archs}");
        assert!(
            annotations["archway.dev/decision"]
                .as_str()
                .unwrap()
                .starts_with(expected)
        );
        assert_eq!(answer["response"]["auditAnnotations"]["archs"], archs);
        results.push(patched);
    }
    validate_pods(&results);
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_25_steers_a_quarter_of_ten_thousand_pods() {
    let webhook = std::sync::Arc::new(webhook("").await);
    let semaphore = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let tasks = (0..10_000).map(|i| {
        let webhook = webhook.clone();
        let semaphore = semaphore.clone();
        tokio::spawn(async move {
            let _permit = semaphore.acquire().await.unwrap();
            let pod = pod(&format!("web-{i}"), &["multi:v1"]);
            let answer = webhook
                .review(&pod_review(&format!("uid-{i}"), "r25", &pod))
                .await;
            let patched = apply_patch(&answer, &pod).expect("a patch");
            required_archs(&patched)[0][0] == "arm64"
        })
    });
    let steered = futures::future::join_all(tasks)
        .await
        .into_iter()
        .filter(|r| *r.as_ref().unwrap())
        .count();
    let share = steered as f64 / 100.0;
    eprintln!("rollout 25%: {steered} of 10000 pods steered to arm64 ({share:.2}%)");
    assert!((23.0..=27.0).contains(&share), "{share}%");
}

#[tokio::test]
async fn init_containers_narrow_and_existing_affinity_and_tolerations_are_kept() {
    let webhook = webhook("").await;
    let mut pod = pod("web", &["multi:v1"]);
    pod["spec"]["initContainers"] = json!([{"name": "setup", "image": img("amd:v1")}]);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
    "nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["batch"]}]}
    ]}}});
    pod["spec"]["tolerations"] =
        json!([{"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}]);
    let (patched, _) = patched(&webhook, "r100", &pod).await;
    assert_eq!(
        required_archs(&patched),
        [vec!["amd64".to_string()], vec!["amd64".to_string()]]
    );
    let terms = &patched["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0]["key"],
        "topology.kubernetes.io/zone"
    );
    assert_eq!(terms[1]["matchExpressions"][0]["values"], json!(["batch"]));
    assert_eq!(patched["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(tolerated(&patched), ["amd64"]);
    assert_eq!(
        patched["metadata"]["annotations"]["archway.dev/archs"],
        "amd64"
    );

    // Preferred placement: required where all images run, preferred target.
    let (preferred, _) = self::patched(&webhook, "pref", &self::pod("web", &["multi:v1"])).await;
    assert_eq!(
        required_archs(&preferred),
        [vec!["amd64".to_string(), "arm64".to_string()]]
    );
    let pref = &preferred["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0];
    assert_eq!(
        pref["preference"]["matchExpressions"][0]["values"],
        json!(["arm64"])
    );
    validate_pods(&[patched, preferred]);
    webhook.stop().await;
}

#[tokio::test]
async fn what_archway_leaves_alone() {
    let webhook = webhook("").await;
    // The user's own choice: kept, and checked.
    let mut chosen = pod("web", &["amd:v1"]);
    chosen["spec"]["nodeSelector"] = json!({"kubernetes.io/arch": "arm64"});
    let answer = webhook.review(&pod_review("u", "r100", &chosen)).await;
    assert!(answer["response"].get("patch").is_none(), "{answer}");
    assert_eq!(
        answer["response"]["warnings"],
        json!(["archway: the pod asks for arm64 but its images publish only amd64"])
    );
    // Images that share no architecture: admitted unchanged, with a warning.
    let split = pod("web", &["amd:v1", "arm:v1"]);
    let answer = webhook.review(&pod_review("u", "r100", &split)).await;
    assert!(answer["response"].get("patch").is_none());
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("share no Linux architecture")
    );
    // Skipped, and not opted in.
    let mut skipped = pod("web", &["multi:v1"]);
    skipped["metadata"]["annotations"] = json!({"archway.dev/skip": "true"});
    let answer = webhook.review(&pod_review("u", "r100", &skipped)).await;
    assert_eq!(answer["response"], json!({"uid": "u", "allowed": true}));
    let answer = webhook
        .review(&pod_review("u", "elsewhere", &pod("web", &["multi:v1"])))
        .await;
    assert_eq!(answer["response"], json!({"uid": "u", "allowed": true}));
    webhook.stop().await;

    // Fail closed: the pod that cannot run anywhere is denied.
    let closed = self::webhook("failClosed: true").await;
    let answer = closed.review(&pod_review("u", "r100", &split)).await;
    assert_eq!(answer["response"]["allowed"], false);
    assert_eq!(answer["response"]["status"]["code"], 403);
    closed.stop().await;
}

#[tokio::test]
async fn audit_mode_changes_nothing_and_says_what_it_would_do() {
    let webhook = webhook("").await;
    let answer = webhook
        .review(&pod_review("u", "audit", &pod("web", &["multi:v1"])))
        .await;
    let response = &answer["response"];
    assert!(response.get("patch").is_none(), "{answer}");
    assert_eq!(response["allowed"], true);
    let warning = response["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with(
            "archway audit: would require kubernetes.io/arch in arm64 (arm64: rollout 100%, bucket "
        ),
        "{warning}"
    );
    assert!(
        response["auditAnnotations"]["decision"]
            .as_str()
            .unwrap()
            .starts_with("would arm64: rollout 100%")
    );
    assert_eq!(response["auditAnnotations"]["kind"], "steered");
    webhook.stop().await;
}

#[tokio::test]
async fn reinvocation_does_not_patch_twice() {
    let webhook = webhook("").await;
    let original = pod("web", &["multi:v1"]);
    let (once, _) = patched(&webhook, "r100", &original).await;
    let answer = webhook.review(&pod_review("u2", "r100", &once)).await;
    // Checked again, unchanged: no patch, and the audit log hears of the
    // second look under a key of its own (the API server keeps a key's
    // first value).
    let response = &answer["response"];
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    let recheck = response["auditAnnotations"]["recheck"].as_str().unwrap();
    assert!(
        recheck.starts_with("already_decided: already decided: arm64: rollout 100%"),
        "{recheck}"
    );
    assert!(response["auditAnnotations"].get("decision").is_none());
    webhook.stop().await;
}

#[tokio::test]
async fn a_slow_registry_is_answered_within_the_budget_and_fills_the_cache_after() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    proxy.set_fault(Fault::Delay(Duration::from_millis(1500)));
    let webhook = TestWebhook::start(config("timeBudget: 300ms", &[proxy.host()])).await;
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [
        {"name": "web", "image": format!("{}/slow:v1", proxy.host())}]}});

    let started = Instant::now();
    let answer = webhook.review(&pod_review("u", "r100", &pod)).await;
    let elapsed = started.elapsed();
    eprintln!("review with a stalled registry answered in {elapsed:?}");
    assert!(elapsed < Duration::from_millis(1200), "{elapsed:?}");
    assert_eq!(answer["response"]["allowed"], true);
    assert!(answer["response"].get("patch").is_none());
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("time budget"), "{warning}");

    // The lookup went on in the background; once it lands, pods get patched.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    let answer = webhook.review(&pod_review("u", "r100", &pod)).await;
    assert!(answer["response"].get("patch").is_some(), "{answer}");
    assert_eq!(
        proxy.manifest_requests(),
        1,
        "the second review was served from the cache"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn the_server_speaks_http1_and_http2_and_verifies_like_the_api_server() {
    let webhook = webhook("server: { http2: true }").await;
    let body = serde_json::to_vec(&pod_review("u", "r100", &pod("web", &["multi:v1"]))).unwrap();
    let (status, _, version) = webhook.post(&webhook.client, body.clone()).await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_2));
    let http1 = client_for(&webhook.ca.cert_pem, webhook.addr, true);
    let (status, _, version) = webhook.post(&http1, body.clone()).await;
    assert_eq!((status, version), (200, reqwest::Version::HTTP_11));

    // A client trusting another CA refuses the server.
    let other = support::TestCa::new("someone else");
    let stranger = client_for(&other.cert_pem, webhook.addr, false);
    let err = stranger
        .post(webhook.url())
        .body(body.clone())
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    // The certificate names the Service; another name is refused.
    let wrong_name = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(webhook.ca.cert_pem.as_bytes()).unwrap()])
        .resolve("archway.elsewhere.svc", webhook.addr)
        .build()
        .unwrap();
    let url = format!(
        "https://archway.elsewhere.svc:{}/mutate",
        webhook.addr.port()
    );
    assert!(wrong_name.post(url).body(body).send().await.is_err());
    webhook.stop().await;
}

#[tokio::test]
async fn bad_bodies_get_400_with_a_reason_and_the_size_limit_holds() {
    let webhook = webhook("").await;
    let (status, text, _) = webhook.post(&webhook.client, b"not json".to_vec()).await;
    assert_eq!(status, 400);
    assert!(
        text.as_str().unwrap().starts_with("body is not JSON"),
        "{text}"
    );
    let (status, text, _) = webhook
        .post(
            &webhook.client,
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (status, text.as_str().unwrap().trim()),
        (400, "AdmissionReview has no request")
    );

    // A large but legal pod (2.5 MB of environment) is reviewed...
    let mut big = pod("big", &["multi:v1"]);
    big["spec"]["containers"][0]["env"] = json!(
        (0..2500)
            .map(|i| json!({"name": format!("V{i}"), "value": "x".repeat(1000)}))
            .collect::<Vec<_>>()
    );
    let body = serde_json::to_vec(&pod_review("u", "r100", &big)).unwrap();
    assert!(body.len() > 2_500_000);
    let (status, answer, _) = webhook.post(&webhook.client, body).await;
    assert_eq!(status, 200);
    assert!(answer["response"].get("patch").is_some());
    // ...and one over 3 MiB is refused before it is read.
    big["spec"]["containers"][0]["env"] = json!(
        (0..3300)
            .map(|i| json!({"name": format!("V{i}"), "value": "x".repeat(1000)}))
            .collect::<Vec<_>>()
    );
    let (status, _, _) = webhook
        .post(
            &webhook.client,
            serde_json::to_vec(&pod_review("u", "r100", &big)).unwrap(),
        )
        .await;
    assert_eq!(status, 413);
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_reviews_in_flight() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    proxy.set_fault(Fault::Delay(Duration::from_millis(700)));
    let webhook = TestWebhook::start(config("", &[proxy.host()])).await;
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [
        {"name": "web", "image": format!("{}/drain:v1", proxy.host())}]}});
    let client = webhook.client.clone();
    let url = webhook.url();
    let body = serde_json::to_vec(&pod_review("u", "r100", &pod)).unwrap();
    let in_flight = tokio::spawn(async move { client.post(url).body(body).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let addr = webhook.addr;
    let stopped = Instant::now();
    webhook.stop().await;
    let response = in_flight
        .await
        .unwrap()
        .expect("the review in flight is answered");
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["response"].get("patch").is_some(), "{answer}");
    eprintln!("drained in {:?}", stopped.elapsed());
    // No longer accepting.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn the_admin_port_serves_health_readiness_and_metrics() {
    let webhook = webhook("").await;
    let admin = format!("http://{}", webhook.admin);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{admin}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        http.get(format!("{admin}/readyz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "ready"
    );
    webhook
        .review(&pod_review("m1", "r100", &pod("web", &["multi:v1"])))
        .await;
    webhook
        .review(&pod_review("m2", "r0", &pod("web", &["amd:v1"])))
        .await;
    let (status, _, _) = webhook.post(&webhook.client, b"{}".to_vec()).await;
    assert_eq!(status, 400);
    let response = http.get(format!("{admin}/metrics")).send().await.unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    for expected in [
        r#"archway_reviews_total{namespace="r100",decision="steered",outcome="patched",architecture="arm64"}"#,
        r#"archway_reviews_total{namespace="r0",decision="only_option",outcome="patched",architecture="amd64"}"#,
        r#"archway_bad_requests_total{reason="not_review"}"#,
        "archway_review_duration_seconds_count",
        "archway_cache_entries ",
        "archway_cache_lookups_total{result=",
    ] {
        assert!(text.contains(expected), "missing {expected} in\n{text}");
    }
    let registry = fixture().registry.host();
    assert!(
        text.contains(&format!(
            r#"archway_registry_requests_total{{registry="{registry}",result="200"}}"#
        )),
        "{text}"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn the_patch_is_base64_json_patch_exactly_as_documented() {
    let webhook = webhook("").await;
    let pod = pod("web", &["multi:v1"]);
    let answer = webhook.review(&pod_review("exact-1", "r100", &pod)).await;
    let response = answer["response"].as_object().unwrap();
    let keys: Vec<&str> = response.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        ["allowed", "auditAnnotations", "patch", "patchType", "uid"]
    );
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = response["patch"]
        .as_str()
        .expect("the patch is a string, not an array of numbers");
    use base64::Engine;
    let ops: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(patch)
            .unwrap(),
    )
    .unwrap();
    let bucket = archway::decision::placement::rollout_bucket("r100/Pod/web");
    assert_eq!(
        ops,
        json!([
            {"op": "add", "path": "/spec/affinity", "value": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}]}]}}}},
            {"op": "add", "path": "/spec/tolerations", "value": [
                {"key": "kubernetes.io/arch", "operator": "Equal", "value": "arm64", "effect": "NoSchedule"}]},
            {"op": "add", "path": "/metadata/annotations", "value": {
                "archway.dev/archs": "amd64,arm64",
                "archway.dev/decision": format!("arm64: rollout 100%, bucket {bucket}")}},
            {"op": "add", "path": "/metadata/labels/archway.dev~1arch", "value": "arm64"}
        ])
    );
    assert_eq!(
        response["auditAnnotations"],
        json!({"archs": "amd64,arm64", "decision": format!("arm64: rollout 100%, bucket {bucket}"), "kind": "steered"})
    );
    webhook.stop().await;
}

/// Issue 14: a pod of a million empty required terms (3 MB) made a 284 MB
/// answer, one `add` per term. Now the answer stays small: the pod is
/// admitted unchanged, with a warning that says why (the pod view reads at
/// most 1,024 terms; src/admission/pod.rs). (50,000 terms here,
/// 11 MB of answer before, so as not to load the machine under the timing
/// tests running beside it.)
#[tokio::test]
async fn a_pod_of_many_terms_gets_a_small_answer() {
    let webhook = webhook("").await;
    let mut pod = pod("terms", &["multi:v1"]);
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
        {"nodeSelectorTerms": vec![json!({}); 50_000]}}});
    let answer = webhook.review(&pod_review("terms-1", "r100", &pod)).await;
    let size = serde_json::to_vec(&answer).unwrap().len();
    assert!(size < 16 * 1024, "the answer is {size} bytes");
    let response = &answer["response"];
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    let warnings = response["warnings"].to_string();
    assert!(
        warnings.contains("over 1024 required node selector terms")
            && warnings.contains("admitted unchanged"),
        "{warnings}"
    );
    webhook.stop().await;
}

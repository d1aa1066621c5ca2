//! Malformed admission requests over real HTTPS: every bad body gets the
//! documented answer (400 with the reason, 413 over the size limit, or 200
//! allowed with a warning when only the pod is unreadable), never a panic,
//! a dropped connection or a hang, and the server keeps serving after each.
//!
//! docs/behaviour.md, "How a bad request is answered": a body that is not an
//! AdmissionReview (`admission.k8s.io/v1`, with a request and a uid) gets
//! HTTP 400 with the reason; a body over `server.maxBodyBytes` (3 MiB) gets
//! 413; a review whose object is not a readable Pod is allowed unchanged,
//! with a warning.

use archway_testkit as support;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use archway::config::Config;
use archway::serve::server::{AppState, webhook_router};
use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{Value, json};
use support::webhook::{SERVICE_NAME, TestWebhook, apply_patch, pod_review};
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// The most any answer here may take: the time budget (2.5 s by default)
/// plus generous slack for a loaded machine.
const ANSWER_BOUND: Duration = Duration::from_secs(20);
const MIB: usize = 1024 * 1024;

struct Fixture {
    registry: Registry,
    _layouts: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let registry = Registry::start(RegistryOptions::plain());
        let layouts = tempfile::tempdir().unwrap();
        let layout = build_layout(
            &layouts.path().join("multi"),
            &ImageSpec::multi_arch().with_salt("bad-input"),
        );
        registry.push(&layout.dir, "multi:v1", Format::Oci);
        Fixture {
            registry,
            _layouts: layouts,
        }
    })
}

fn config() -> Config {
    let host = fixture().registry.host();
    Config::from_yaml(&format!(
        r#"
registry:
  insecure: ["{host}"]
namespaces:
  ns: {{ mode: enforce, rollout: 100 }}
"#
    ))
    .unwrap()
}

fn image() -> String {
    fixture().registry.image("multi:v1")
}

fn pod_with(images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": containers}})
}

fn good_pod() -> Value {
    pod_with(&[image()])
}

fn review_of(object: Value) -> Value {
    let mut review = pod_review("uid-bad", "ns", &good_pod());
    review["request"]["object"] = object;
    review
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// The review with `edit` applied, as bytes.
fn edited(edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut review = pod_review("uid-bad", "ns", &good_pod());
    edit(&mut review);
    bytes(&review)
}

/// What a bad body must get.
#[derive(Debug, Clone)]
enum Expect {
    /// HTTP 400 whose body starts with this reason.
    BadRequest(&'static str),
    /// HTTP 413.
    TooLarge,
    /// HTTP 200, allowed, no patch; each listed text in some warning (no
    /// warning at all when the list is empty).
    AllowedWarning(&'static [&'static str]),
    /// HTTP 200, allowed, with a patch that applies to the review's object.
    Patched,
}

struct Case {
    name: &'static str,
    body: Vec<u8>,
    expect: Expect,
    /// The pod a patch must apply to, when the body cannot be read back as
    /// a `serde_json::Value` (nesting past its recursion limit).
    object: Option<Value>,
}

fn case(name: &'static str, body: impl Into<Vec<u8>>, expect: Expect) -> Case {
    Case {
        name,
        body: body.into(),
        expect,
        object: None,
    }
}

fn cases() -> Vec<Case> {
    use Expect::*;
    let nested = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let mut deep_object = bytes(&review_of(json!("PLACEHOLDER")));
    let text = String::from_utf8(deep_object.clone()).unwrap();
    deep_object = text
        .replace("\"PLACEHOLDER\"", &nested(100_000))
        .into_bytes();
    let deep_unknown_field = {
        let text = String::from_utf8(bytes(&pod_review("uid-bad", "ns", &good_pod()))).unwrap();
        // An unknown field of the review, and one of the pod: both skipped.
        let text = text.replacen('{', &format!("{{\"extra\":{},", nested(1_000_000)), 1);
        text.replacen(
            "\"metadata\":{",
            &format!("\"metadata\":{{\"extra\":{},", nested(100_000)),
            1,
        )
    };
    // managedFields[].fieldsV1 is free-form JSON. archway reads only the
    // pod fields it decides on (src/admission/pod.rs) and skips the rest
    // iteratively, so deep nesting there costs nothing and the pod is
    // placed like any other. (Read whole as k8s-openapi's Pod, it once hit
    // serde_json's recursion limit and the pod went unplaced.)
    let deep_managed_fields = String::from_utf8(bytes(&review_of(json!({
        "metadata": {"name": "w", "managedFields": [{"manager": "m", "fieldsV1": "PLACEHOLDER"}]},
        "spec": {"containers": [{"name": "c", "image": image()}]}}))))
    .unwrap()
    .replace("\"PLACEHOLDER\"", &nested(100_000));
    let deep_in_request = {
        let mut review = pod_review("uid-bad", "ns", &good_pod());
        review["request"]["kind"] = json!("PLACEHOLDER");
        String::from_utf8(bytes(&review))
            .unwrap()
            .replace("\"PLACEHOLDER\"", &nested(100_000))
    };
    let mut invalid_utf8 = bytes(&pod_review("uid-bad", "ns", &good_pod()));
    let at = invalid_utf8.len() / 2;
    invalid_utf8.splice(at..at, [0xff, 0xfe, 0xc3]);
    let mut invalid_utf8_in_string =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":""#
            .to_vec();
    invalid_utf8_in_string.extend_from_slice(&[0xc3, 0x28]);
    invalid_utf8_in_string.extend_from_slice(br#""}}"#);
    let mut raw_nul = bytes(&pod_review("uid-bad", "ns", &good_pod()));
    raw_nul.insert(raw_nul.len() / 2, 0);
    let mut raw_nul_in_string =
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a"#
            .to_vec();
    raw_nul_in_string.push(0);
    raw_nul_in_string.extend_from_slice(br#"b"}}"#);

    let image = image();
    vec![
        case("empty body", b"".to_vec(), BadRequest("body is not JSON")),
        case("not JSON", "not json", BadRequest("body is not JSON")),
        case(
            "truncated JSON",
            r#"{"apiVersion": "admission.k8s.io/v1", "kind": "Admiss"#,
            BadRequest("body is not JSON"),
        ),
        case(
            "trailing garbage",
            format!(
                "{} x",
                String::from_utf8(bytes(&pod_review("u", "ns", &good_pod()))).unwrap()
            ),
            BadRequest("body is not JSON"),
        ),
        case(
            "UTF-8 byte order mark",
            [
                b"\xef\xbb\xbf".as_slice(),
                &bytes(&pod_review("u", "ns", &good_pod())),
            ]
            .concat(),
            BadRequest("body is not JSON"),
        ),
        case("JSON array", "[1, 2]", BadRequest("not an AdmissionReview")),
        case("empty array", "[]", BadRequest("not an AdmissionReview")),
        case(
            "JSON string",
            r#""AdmissionReview""#,
            BadRequest("not an AdmissionReview"),
        ),
        case("JSON null", "null", BadRequest("not an AdmissionReview")),
        case("JSON number", "42", BadRequest("not an AdmissionReview")),
        case(
            "empty object",
            "{}",
            BadRequest("not an AdmissionReview: kind is \"\""),
        ),
        case(
            "wrong apiVersion",
            edited(|r| r["apiVersion"] = json!("admission.k8s.io/v1beta1")),
            BadRequest(
                "unsupported apiVersion \"admission.k8s.io/v1beta1\": archway answers admission.k8s.io/v1 only",
            ),
        ),
        case(
            "no apiVersion",
            edited(|r| {
                r.as_object_mut().unwrap().remove("apiVersion");
            }),
            BadRequest("unsupported apiVersion \"\""),
        ),
        case(
            "apiVersion of wrong type",
            edited(|r| r["apiVersion"] = json!(1)),
            BadRequest("not an AdmissionReview: invalid type: integer `1`, expected a string"),
        ),
        case(
            "wrong kind",
            edited(|r| r["kind"] = json!("Pod")),
            BadRequest("not an AdmissionReview: kind is \"Pod\", not AdmissionReview"),
        ),
        case(
            "no kind",
            edited(|r| {
                r.as_object_mut().unwrap().remove("kind");
            }),
            BadRequest("not an AdmissionReview: kind is \"\""),
        ),
        case(
            "duplicate kind",
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","kind":"AdmissionReview","request":{"uid":"u"}}"#,
            BadRequest("not an AdmissionReview: duplicate field `kind`"),
        ),
        case(
            "no request",
            edited(|r| {
                r.as_object_mut().unwrap().remove("request");
            }),
            BadRequest("AdmissionReview has no request"),
        ),
        case(
            "request null",
            edited(|r| r["request"] = Value::Null),
            BadRequest("AdmissionReview has no request"),
        ),
        case(
            "request a string",
            edited(|r| r["request"] = json!("CREATE")),
            BadRequest("not an AdmissionReview: invalid type: string"),
        ),
        case(
            "request an array",
            edited(|r| r["request"] = json!([1])),
            BadRequest("not an AdmissionReview: invalid type: sequence, expected a JSON object"),
        ),
        case(
            "no uid",
            edited(|r| {
                r["request"].as_object_mut().unwrap().remove("uid");
            }),
            BadRequest("AdmissionReview request has no uid"),
        ),
        case(
            "empty uid",
            edited(|r| r["request"]["uid"] = json!("")),
            BadRequest("AdmissionReview request has no uid"),
        ),
        case(
            "uid null",
            edited(|r| r["request"]["uid"] = Value::Null),
            BadRequest("AdmissionReview request has no uid"),
        ),
        case(
            "uid a number",
            edited(|r| r["request"]["uid"] = json!(5)),
            BadRequest("not an AdmissionReview: invalid type: integer `5`, expected a string"),
        ),
        case(
            "uid an object",
            edited(|r| r["request"]["uid"] = json!({"id": "u"})),
            BadRequest("not an AdmissionReview: invalid type: map, expected a string"),
        ),
        case(
            "request kind a string",
            edited(|r| r["request"]["kind"] = json!("Pod")),
            BadRequest("not an AdmissionReview: invalid type: string \"Pod\""),
        ),
        case(
            "dryRun a string",
            edited(|r| r["request"]["dryRun"] = json!("yes")),
            BadRequest("not an AdmissionReview: invalid type: string \"yes\", expected a boolean"),
        ),
        case(
            "number out of range",
            String::from_utf8(edited(|r| r["request"]["uid"] = json!("PLACEHOLDER")))
                .unwrap()
                .replace("\"PLACEHOLDER\"", "1e999"),
            BadRequest("body is not JSON: number out of range"),
        ),
        case(
            "invalid UTF-8",
            invalid_utf8,
            BadRequest("body is not JSON: invalid UTF-8"),
        ),
        case(
            "invalid UTF-8 in a string",
            invalid_utf8_in_string,
            BadRequest("body is not JSON: invalid UTF-8"),
        ),
        case(
            "raw NUL byte between tokens",
            raw_nul,
            BadRequest("body is not JSON"),
        ),
        case(
            "raw NUL byte in a string",
            raw_nul_in_string,
            BadRequest("body is not JSON: control character"),
        ),
        case(
            "100,000 nested arrays as request.kind",
            deep_in_request,
            BadRequest("not an AdmissionReview: invalid type: sequence"),
        ),
        // Deep nesting the reader skips over (serde_json skips iteratively,
        // without its recursion limit): the review itself is fine.
        Case {
            object: Some(good_pod()),
            ..case(
                "1,000,000 nested arrays in unknown fields",
                deep_unknown_field,
                Patched,
            )
        },
        Case {
            object: Some(json!({
                "metadata": {"name": "w"},
                "spec": {"containers": [{"name": "c", "image": image}]}
            })),
            ..case(
                "100,000 nested arrays in managedFields.fieldsV1",
                deep_managed_fields,
                Patched,
            )
        },
        // The object is kept raw, then read as a Pod: not a Pod.
        case(
            "100,000 nested arrays as the object",
            deep_object,
            AllowedWarning(&["archway could not read the pod (invalid type: sequence"]),
        ),
        case(
            "object not a Pod: containers a string",
            bytes(&review_of(
                json!({"metadata": {"name": "w"}, "spec": {"containers": "nginx"}}),
            )),
            AllowedWarning(&[
                "archway could not read the pod (invalid type: string \"nginx\", expected a sequence",
            ]),
        ),
        case(
            "object not a Pod: container name a number",
            bytes(&review_of(
                json!({"metadata": {"name": "w"}, "spec": {"containers": [{"name": 5, "image": image}]}}),
            )),
            AllowedWarning(&["archway could not read the pod (invalid type: integer `5`"]),
        ),
        case(
            // k8s-openapi reads a missing required string as "": the pod is
            // readable, and the API server's validation refuses it later.
            "container without name",
            bytes(&review_of(
                json!({"metadata": {"name": "w"}, "spec": {"containers": [{"image": image}]}}),
            )),
            Patched,
        ),
        case(
            "object not a Pod: annotations a list",
            bytes(&review_of(
                json!({"metadata": {"name": "w", "annotations": ["a"]}, "spec": {"containers": [{"name": "c", "image": image}]}}),
            )),
            AllowedWarning(&[
                "archway could not read the pod (invalid type: sequence, expected a map",
            ]),
        ),
        case(
            "object a number",
            bytes(&review_of(json!(5))),
            AllowedWarning(&["archway could not read the pod (invalid type: integer `5`"]),
        ),
        case(
            "object an array",
            bytes(&review_of(json!([]))),
            AllowedWarning(&["archway could not read the pod (invalid type: sequence"]),
        ),
        case(
            "object a string",
            bytes(&review_of(json!("pod"))),
            AllowedWarning(&["archway could not read the pod (invalid type: string \"pod\""]),
        ),
        case(
            "object null",
            bytes(&review_of(Value::Null)),
            AllowedWarning(&["archway: the review carries no pod; admitted unchanged"]),
        ),
        case(
            "no object",
            edited(|r| {
                r["request"].as_object_mut().unwrap().remove("object");
            }),
            AllowedWarning(&["archway: the review carries no pod; admitted unchanged"]),
        ),
        case(
            "unreadable pod in a namespace not opted in",
            edited(|r| {
                r["request"]["namespace"] = json!("elsewhere");
                r["request"]["object"] = json!(5);
            }),
            AllowedWarning(&[]),
        ),
        case(
            "not a Pod: a Deployment with a garbage object",
            edited(|r| {
                r["request"]["kind"] =
                    json!({"group": "apps", "version": "v1", "kind": "Deployment"});
                r["request"]["object"] = json!("garbage");
            }),
            AllowedWarning(&[]),
        ),
        case(
            "not a CREATE",
            edited(|r| {
                r["request"]["operation"] = json!("DELETE");
                r["request"]["object"] = Value::Null;
            }),
            AllowedWarning(&[]),
        ),
        case(
            "a subresource",
            edited(|r| r["request"]["subResource"] = json!("status")),
            AllowedWarning(&[]),
        ),
        case(
            "container without image",
            bytes(&review_of(
                json!({"metadata": {"name": "w"}, "spec": {"containers": [{"name": "c"}]}}),
            )),
            AllowedWarning(&["archway: image  (container c): invalid image reference: empty"]),
        ),
        case(
            "NUL escape in the image",
            bytes(&review_of(pod_with(&[format!("{image}\u{0}")]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "NUL escape in the uid",
            edited(|r| r["request"]["uid"] = json!("a\u{0}b")),
            Patched,
        ),
        case(
            "bell in the image",
            bytes(&review_of(pod_with(&[format!("{image}\u{7}")]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "CR LF in the image",
            bytes(&review_of(pod_with(&["nginx\r\nX-Injected: 1".into()]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "right-to-left override in the image",
            bytes(&review_of(pod_with(&["nginx:\u{202e}1.27".into()]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "non-ASCII registry",
            bytes(&review_of(pod_with(&["régistry.example/app:v1".into()]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "emoji tag",
            bytes(&review_of(pod_with(&["nginx:🦀".into()]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            "fullwidth letters",
            bytes(&review_of(pod_with(&["ｎｇｉｎｘ".into()]))),
            AllowedWarning(&["invalid image reference"]),
        ),
        case(
            // A 2 MB tag: the warning shortens the image and keeps the reason
            // (see `a_warning_about_a_huge_image_keeps_its_reason`); a 2 MB
            // name the grammar accepts is
            // `a_huge_image_string_is_answered_within_the_time_budget`.
            "2 MB image tag",
            bytes(&review_of(pod_with(&[format!(
                "{image}{}",
                "t".repeat(2 * 1000 * 1000)
            )]))),
            AllowedWarning(&["archway: image 127.0.0.1:", "invalid image reference"]),
        ),
        case(
            "2 MB multibyte image name",
            bytes(&review_of(pod_with(&["é".repeat(1000 * 1000)]))),
            AllowedWarning(&["archway: image éééééééééé"]),
        ),
        case(
            "1 MB annotation",
            bytes(&review_of(
                json!({"metadata": {"name": "w", "annotations": {"big": "x".repeat(MIB)}},
            "spec": {"containers": [{"name": "c", "image": image}]}}),
            )),
            Patched,
        ),
        case(
            "2 MB kind",
            edited(|r| r["kind"] = json!("K".repeat(2 * 1000 * 1000))),
            BadRequest("not an AdmissionReview: kind is \"KKKK"),
        ),
        case(
            "2 MB apiVersion",
            edited(|r| r["apiVersion"] = json!("v".repeat(2 * 1000 * 1000))),
            BadRequest("unsupported apiVersion \"vvvv"),
        ),
        // Past the pod view's bound (src/admission/pod.rs): not read at all.
        case(
            "10,000 containers of one image",
            bytes(&review_of(pod_with(&vec![image.clone(); 10_000]))),
            AllowedWarning(&["the pod has over 256 containers; archway reads at most 256"]),
        ),
        case(
            "256 containers of one image",
            bytes(&review_of(pod_with(&vec![image.clone(); 256]))),
            Patched,
        ),
        case(
            "10,000 containers of distinct images",
            bytes(&review_of(pod_with(
                &(0..10_000)
                    .map(|i| format!("{image}-{i}"))
                    .collect::<Vec<_>>(),
            ))),
            AllowedWarning(&["the pod has over 256 containers; archway reads at most 256"]),
        ),
        case(
            "65 containers of distinct images",
            bytes(&review_of(pod_with(
                &(0..65).map(|i| format!("{image}-{i}")).collect::<Vec<_>>(),
            ))),
            AllowedWarning(&["the pod has 65 distinct images, more than archway inspects (64)"]),
        ),
        case(
            "3 MiB exactly, padded with spaces",
            padded_to(bytes(&pod_review("uid-bad", "ns", &good_pod())), 3 * MIB),
            Patched,
        ),
        case(
            "3 MiB + 1 byte",
            padded_to(
                bytes(&pod_review("uid-bad", "ns", &good_pod())),
                3 * MIB + 1,
            ),
            TooLarge,
        ),
        case(
            "5 MiB",
            padded_to(bytes(&pod_review("uid-bad", "ns", &good_pod())), 5 * MIB),
            TooLarge,
        ),
    ]
}

/// `body` followed by spaces up to `len` bytes: still the same JSON.
fn padded_to(mut body: Vec<u8>, len: usize) -> Vec<u8> {
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

/// The object of a review body, as the patch must apply to it.
fn object_of(body: &[u8]) -> Value {
    let review: Value = serde_json::from_slice(body).expect("the case's body is JSON");
    review["request"]["object"].clone()
}

/// `check`, with its failure as a message, so that one run reports every
/// case that fails.
fn checked(case: &Case, status: u16, text: &str) -> Result<(), String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(case, status, text))).map_err(
        |panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| format!("{}: failed", case.name))
        },
    )
}

/// Checks one answer against what the case expects.
fn check(case: &Case, status: u16, text: &str) {
    let name = case.name;
    let short = |t: &str| t.chars().take(400).collect::<String>();
    match &case.expect {
        Expect::BadRequest(reason) => {
            assert_eq!(status, 400, "{name}: {}", short(text));
            assert!(
                text.starts_with(reason),
                "{name}: 400 body should start with {reason:?}: {}",
                short(text)
            );
            assert!(text.ends_with('\n'), "{name}");
        }
        Expect::TooLarge => assert_eq!(status, 413, "{name}: {}", short(text)),
        Expect::AllowedWarning(expected) => {
            assert_eq!(status, 200, "{name}: {}", short(text));
            let answer: Value = serde_json::from_str(text).expect("200 answers are JSON");
            let response = &answer["response"];
            assert_eq!(response["allowed"], true, "{name}: {}", short(text));
            assert!(response.get("patch").is_none(), "{name}: {}", short(text));
            let warnings: Vec<&str> = response["warnings"]
                .as_array()
                .map(|w| w.iter().map(|w| w.as_str().unwrap()).collect())
                .unwrap_or_default();
            if expected.is_empty() {
                assert!(warnings.is_empty(), "{name}: {warnings:?}");
            }
            for wanted in *expected {
                assert!(
                    warnings.iter().any(|w| w.contains(wanted)),
                    "{name}: no warning contains {wanted:?}: {:?}",
                    warnings.iter().map(|w| short(w)).collect::<Vec<_>>()
                );
            }
            // Each warning is cut at 512 characters (src/admission.rs).
            for warning in &warnings {
                assert!(
                    warning.chars().count() <= 512,
                    "{name}: a warning over 512 characters: {}",
                    short(warning)
                );
            }
        }
        Expect::Patched => {
            assert_eq!(status, 200, "{name}: {}", short(text));
            let answer: Value = serde_json::from_str(text).expect("200 answers are JSON");
            assert_eq!(answer["response"]["allowed"], true, "{name}");
            let object = case.object.clone().unwrap_or_else(|| object_of(&case.body));
            let patched = apply_patch(&answer, &object)
                .unwrap_or_else(|| panic!("{name}: expected a patch: {}", short(text)));
            assert!(
                patched["metadata"]["annotations"]["archway.dev/decision"].is_string(),
                "{name}"
            );
        }
    }
}

/// A normal review still gets its patch: the server is alive and serving.
async fn assert_alive(webhook: &TestWebhook, after: &str) {
    let pod = good_pod();
    let (status, answer, _) = tokio::time::timeout(
        ANSWER_BOUND,
        webhook.post(&webhook.client, bytes(&pod_review("uid-alive", "ns", &pod))),
    )
    .await
    .unwrap_or_else(|_| panic!("after {after}: the normal review was not answered in time"));
    assert_eq!(status, 200, "after {after}: {answer}");
    assert!(
        apply_patch(&answer, &pod).is_some(),
        "after {after}: {answer}"
    );
}

#[tokio::test]
async fn every_malformed_body_gets_the_documented_answer_over_https() {
    let webhook = TestWebhook::start(config()).await;
    assert_alive(&webhook, "start").await;
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for case in cases() {
        let started = Instant::now();
        let response = tokio::time::timeout(
            ANSWER_BOUND,
            webhook
                .client
                .post(webhook.url())
                .header("content-type", "application/json")
                .body(case.body.clone())
                .send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{}: not answered within {ANSWER_BOUND:?}", case.name))
        .unwrap_or_else(|e| panic!("{}: the connection failed: {e:?}", case.name));
        let status = response.status().as_u16();
        let text = response
            .text()
            .await
            .unwrap_or_else(|e| panic!("{}: the body was cut: {e:?}", case.name));
        let elapsed = started.elapsed();
        report.push(format!(
            "{:<50} {status} {:>8} bytes {elapsed:>10.1?}  {}",
            case.name,
            text.len(),
            text.chars().take(140).collect::<String>().trim_end()
        ));
        if let Err(failure) = checked(&case, status, &text) {
            failures.push(failure);
        }
        assert_alive(&webhook, case.name).await;
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    webhook.stop().await;
}

/// The same bodies through the router without a socket, and what only the
/// router decides: methods and paths.
#[tokio::test]
async fn the_router_answers_the_same_without_a_socket() {
    support::webhook::install_crypto();
    let config = config();
    let reviewer =
        archway::setup::reviewer(&config, Arc::new(config.static_policies()), Arc::default())
            .unwrap();
    let router = webhook_router(AppState::new(reviewer), config.server.max_body_bytes);
    let mut failures = Vec::new();
    for case in cases() {
        let request = Request::post("/mutate")
            .header("content-type", "application/json")
            .body(Body::from(case.body.clone()))
            .unwrap();
        let response = tokio::time::timeout(ANSWER_BOUND, router.clone().oneshot(request))
            .await
            .unwrap_or_else(|_| panic!("{}: not answered", case.name))
            .unwrap();
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), 64 * MIB)
            .await
            .unwrap();
        if let Err(failure) = checked(&case, status, &String::from_utf8_lossy(&body)) {
            failures.push(failure);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for (method, path, expected) in [
        ("GET", "/mutate", StatusCode::METHOD_NOT_ALLOWED),
        ("PUT", "/mutate", StatusCode::METHOD_NOT_ALLOWED),
        ("POST", "/", StatusCode::NOT_FOUND),
        ("POST", "/mutate/extra", StatusCode::NOT_FOUND),
        ("POST", "/validate", StatusCode::NOT_FOUND),
    ] {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(Body::from(bytes(&pod_review("u", "ns", &good_pod()))))
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), expected, "{method} {path}");
    }
    // A declared length over the limit is refused on the header alone.
    let request = Request::post("/mutate")
        .header("content-length", (4 * MIB).to_string())
        .body(Body::from(bytes(&pod_review("u", "ns", &good_pod()))))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
}

/// A TLS connection to the webhook speaking raw HTTP/1.1, for what a
/// well-behaved client cannot send: bodies shorter than their
/// Content-Length, half-closed connections, stalls.
async fn raw_connection(
    webhook: &TestWebhook,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let config = support::http::rustls_client_config(&webhook.ca.cert_pem);
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(webhook.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(SERVICE_NAME).unwrap();
    connector.connect(name, tcp).await.unwrap()
}

fn head(content_length: usize) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: {SERVICE_NAME}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n"
    )
}

/// Reads until the server closes or `bound` passes; returns what was read
/// and whether the server ended the exchange (answered or closed).
async fn read_until_closed(
    stream: &mut (impl AsyncReadExt + Unpin),
    bound: Duration,
) -> (String, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + bound;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (String::from_utf8_lossy(&out).into_owned(), false),
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&out).into_owned(), true),
            Ok(Ok(n)) => {
                out.extend_from_slice(&buf[..n]);
                // A complete answer is enough: the server did not hang.
                let text = String::from_utf8_lossy(&out);
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                        })
                        .unwrap_or(usize::MAX);
                    if body.len() >= length {
                        return (text.into_owned(), true);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn a_body_shorter_than_its_content_length_then_closed_is_not_waited_on_forever() {
    let webhook = TestWebhook::start(config()).await;
    let full = bytes(&pod_review("uid-cut", "ns", &good_pod()));
    let started = Instant::now();
    let mut stream = raw_connection(&webhook).await;
    stream
        .write_all(head(full.len() + 1000).as_bytes())
        .await
        .unwrap();
    stream.write_all(&full[..full.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    // close_notify and FIN: the client will send nothing more.
    stream.shutdown().await.unwrap();
    let (answer, ended) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    let elapsed = started.elapsed();
    eprintln!("truncated body, then closed: after {elapsed:?}: {answer:?}");
    assert!(
        ended,
        "the server still holds the connection after 10 s: {answer:?}"
    );
    // Whatever it says, it is not a review answer built from half a body.
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
        "{answer}"
    );
    assert_alive(&webhook, "a truncated body").await;
    webhook.stop().await;
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_without_reading_all_of_it() {
    let webhook = TestWebhook::start(config()).await;
    let mut stream = raw_connection(&webhook).await;
    // 100 MiB announced; the server must stop once 3 MiB have come.
    stream.write_all(head(100 * MIB).as_bytes()).await.unwrap();
    stream.write_all(b"{\"apiVersion\":").await.unwrap();
    let started = Instant::now();
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent < 8 * MIB {
        // Once the server has answered 413 it may close: writes then fail.
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
        sent += chunk.len();
    }
    let _ = stream.flush().await;
    let (answer, ended) = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    eprintln!(
        "declared 100 MiB, sent {} KiB in {:?}: {answer:?}",
        sent / 1024,
        started.elapsed()
    );
    assert!(ended, "no answer within 10 s: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_alive(&webhook, "a 100 MiB Content-Length").await;
    webhook.stop().await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_before_any_body() {
    let webhook = TestWebhook::start(config()).await;
    let mut stream = raw_connection(&webhook).await;
    // 100 MiB announced, nothing sent: the answer cannot wait for the body.
    stream.write_all(head(100 * MIB).as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let (answer, ended) = read_until_closed(&mut stream, Duration::from_secs(5)).await;
    eprintln!(
        "declared 100 MiB, sent none: {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(ended, "no answer within 5 s: {answer:?}");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_alive(&webhook, "a 100 MiB Content-Length and no body").await;
    webhook.stop().await;
}

/// How long a client that stops sending mid-request may hold a connection.
/// The webhook's own budget for a review is 2.5 s and the API server gives
/// up at `timeoutSeconds` (at most 30 s); a connection stalled longer than
/// that only holds a slot.
const STALL_BOUND: Duration = Duration::from_secs(40);

#[tokio::test]
async fn a_client_that_stalls_mid_body_is_disconnected() {
    let webhook = TestWebhook::start(config()).await;
    let full = bytes(&pod_review("uid-stall", "ns", &good_pod()));
    let mut stream = raw_connection(&webhook).await;
    stream.write_all(head(full.len()).as_bytes()).await.unwrap();
    stream.write_all(&full[..full.len() / 2]).await.unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let (answer, ended) = read_until_closed(&mut stream, STALL_BOUND).await;
    eprintln!(
        "stalled mid-body: ended={ended} after {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(
        ended,
        "the server still holds a connection stalled mid-body after {STALL_BOUND:?}"
    );
    webhook.stop().await;
}

#[tokio::test]
async fn a_client_that_stalls_mid_headers_is_disconnected() {
    let webhook = TestWebhook::start(config()).await;
    let mut stream = raw_connection(&webhook).await;
    stream
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: archway.archway.svc\r\nContent-Le")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let started = Instant::now();
    let (answer, ended) = read_until_closed(&mut stream, STALL_BOUND).await;
    eprintln!(
        "stalled mid-headers: ended={ended} after {:?}: {answer:?}",
        started.elapsed()
    );
    assert!(
        ended,
        "the server still holds a connection stalled mid-headers after {STALL_BOUND:?}"
    );
    webhook.stop().await;
}

/// POSTs `body` and returns the status, the text of the answer, and how
/// long it took.
async fn post_text(webhook: &TestWebhook, body: Vec<u8>) -> (u16, String, Duration) {
    let started = Instant::now();
    let response = tokio::time::timeout(
        ANSWER_BOUND,
        webhook
            .client
            .post(webhook.url())
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("the connection holds");
    let status = response.status().as_u16();
    let text = response.text().await.expect("the whole answer");
    (status, text, started.elapsed())
}

/// serde's derived struct readers also accept a JSON array of the fields in
/// order, so `[apiVersion, kind, [uid, kind, operation, ...]]` is read as
/// an AdmissionReview and answered with a patch: not the documented 400.
#[tokio::test]
async fn an_array_shaped_body_is_not_a_review() {
    let webhook = TestWebhook::start(config()).await;
    let array_review = json!(["admission.k8s.io/v1", "AdmissionReview",
        ["uid-array", {"group": "", "kind": "Pod"}, "CREATE", "ns", "web", null, false, good_pod()]]);
    let (status, text, _) = post_text(&webhook, bytes(&array_review)).await;
    eprintln!("array-shaped review: {status} {text}");
    assert_eq!(status, 400, "{text}");
    assert!(text.starts_with("not an AdmissionReview"), "{text}");
    // The same with only the request as an array.
    let mut review = pod_review("uid-array", "ns", &good_pod());
    review["request"] = json!(["uid-array", {"group": "", "kind": "Pod"}, "CREATE", "ns", "web", null, false, good_pod()]);
    let (status, text, _) = post_text(&webhook, bytes(&review)).await;
    assert_eq!(status, 400, "{text}");
    webhook.stop().await;
}

/// serde's "invalid type" errors quote the offending string whole; the 400
/// body (and the WARN log line) once carried it untruncated: a 2 MB string
/// came back whole. It must be cut like the other reasons.
#[tokio::test]
async fn a_400_answer_does_not_echo_a_huge_value() {
    let webhook = TestWebhook::start(config()).await;
    for (name, body) in [
        (
            "request",
            edited(|r| r["request"] = json!("x".repeat(2_000_000))),
        ),
        (
            "uid",
            edited(|r| r["request"]["uid"] = json!(["x".repeat(2_000_000)])),
        ),
        (
            "operation",
            edited(|r| r["request"]["operation"] = json!({"x": "y".repeat(2_000_000)})),
        ),
        (
            "kind.kind",
            edited(|r| r["request"]["kind"] = json!("k".repeat(2_000_000))),
        ),
    ] {
        let (status, text, _) = post_text(&webhook, body).await;
        eprintln!("2 MB wrongly typed {name}: {status}, {} bytes", text.len());
        assert_eq!(status, 400, "{name}");
        assert!(
            text.len() < 1024,
            "{name}: the 400 answer is {} bytes: {}…",
            text.len(),
            text.chars().take(120).collect::<String>()
        );
    }
    webhook.stop().await;
}

/// The failure warning is `archway: image <image> (container <name>):
/// <reason>`. It was once cut at 256 characters at its end, so a long image
/// cut the container and the reason away; the image must be the part that
/// is shortened.
#[tokio::test]
async fn a_warning_about_a_huge_image_keeps_its_reason() {
    let webhook = TestWebhook::start(config()).await;
    let pod = pod_with(&[format!(
        "{}/{}:v1",
        fixture().registry.host(),
        "a".repeat(300)
    )]);
    let (status, text, _) = post_text(&webhook, bytes(&review_of(pod))).await;
    assert_eq!(status, 200);
    let answer: Value = serde_json::from_str(&text).unwrap();
    let warning = answer["response"]["warnings"][0]
        .as_str()
        .unwrap()
        .to_string();
    eprintln!("warning about a 300-character repository: {warning}");
    assert!(warning.contains("(container c0)"), "{warning}");
    assert!(warning.contains("invalid image reference"), "{warning}");
    webhook.stop().await;
}

/// Every container whose image fails gets its own warning, however many:
/// a pod of 10,000 containers of distinct images was answered with 10,000
/// warnings saying the same thing (1.3 MB). Such a pod is now past the pod
/// view's bound; the most containers archway reads (256), each with a
/// distinct image, still make a small answer. The API server keeps only the
/// first few KiB of warnings anyway.
#[tokio::test]
async fn many_failing_containers_do_not_make_many_warnings() {
    let webhook = TestWebhook::start(config()).await;
    for count in [256, 10_000] {
        let images: Vec<String> = (0..count).map(|i| format!("{}-{i}", image())).collect();
        let (status, text, _) = post_text(&webhook, bytes(&review_of(pod_with(&images)))).await;
        assert_eq!(status, 200);
        let answer: Value = serde_json::from_str(&text).unwrap();
        let warnings = answer["response"]["warnings"].as_array().unwrap().len();
        eprintln!(
            "{count} distinct images: {warnings} warnings, {} bytes",
            text.len()
        );
        assert!(
            text.len() < 64 * 1024,
            "{warnings} warnings, {} bytes",
            text.len()
        );
    }
    webhook.stop().await;
}

/// An image string is parsed (a capturing regex in oci-spec, over the whole
/// string) before any length check, synchronously on the review's task and
/// outside its time budget. A 2 MB name the grammar accepts costs 5 to 17 s
/// in a debug build (this test's profile), about 0.6 s of CPU in release.
#[tokio::test]
async fn a_huge_image_string_is_answered_within_the_time_budget() {
    let webhook = TestWebhook::start(config()).await;
    let budget = config().time_budget;
    let pod = pod_with(&["a".repeat(2 * 1000 * 1000)]);
    let (status, _, elapsed) = post_text(&webhook, bytes(&review_of(pod))).await;
    eprintln!("2 MB image string answered in {elapsed:?} (budget {budget:?})");
    assert_eq!(status, 200);
    assert!(
        elapsed < budget + Duration::from_secs(1),
        "answered in {elapsed:?}, budget {budget:?}"
    );
    webhook.stop().await;
}

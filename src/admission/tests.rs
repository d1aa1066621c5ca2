use serde_json::{Value, json};

use super::warnings::MAX_WARNING_CHARS;
use super::*;
use crate::config::Config;
use crate::decision::policy::StaticPolicies;
use crate::lookup::cache::CacheSettings;
use crate::lookup::registry::{RegistryClient, RegistrySettings};

fn reviewer(config_yaml: &str) -> Reviewer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_yaml(config_yaml).unwrap();
    let client = RegistryClient::new(RegistrySettings {
        // Port 1 on loopback refuses at once: a registry that is down.
        insecure_hosts: vec!["127.0.0.1:1".into()],
        ..config.registry_settings().unwrap()
    })
    .unwrap();
    Reviewer {
        inspector: Inspector::new(client, CacheSettings::default()),
        policies: Arc::new(StaticPolicies {
            namespaces: config.namespaces.clone(),
            default_rollout: config.default_rollout,
        }),
        node_inventory: None,
        pull_secrets: None,
        settings: Arc::new(crate::setup::review_settings(&config)),
        draws: Arc::default(),
        holds: None,
        gate_controller_live: None,
    }
}

const NAMESPACES: &str =
    "namespaces: { shop: { mode: enforce, rollout: 100 }, lab: { mode: audit } }\n";

fn review(namespace: &str, pod: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "object": pod,
            "dryRun": false
        }
    })
}

fn pod(image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
           "spec": {"containers": [{"name": "web", "image": image}]}})
}

async fn answer(reviewer: &Reviewer, body: &Value) -> (Value, ReviewRecord) {
    let (out, record) = reviewer
        .review(&serde_json::to_vec(body).unwrap())
        .await
        .expect("a review");
    (serde_json::to_value(out).unwrap(), record)
}

#[tokio::test]
async fn bodies_that_are_not_reviews_are_refused_with_a_reason() {
    let reviewer = reviewer(NAMESPACES);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"".to_vec(), "not_json"),
        (b"{".to_vec(), "not_json"),
        (b"[1,2]".to_vec(), "not_review"),
        (vec![0xff, 0xfe, b'{'], "not_json"),
        (br#"{"kind": "Pod", "apiVersion": "v1"}"#.to_vec(), "not_review"),
        (br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1beta1", "request": {"uid": "x"}}"#.to_vec(), "api_version"),
        (br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1"}"#.to_vec(), "no_request"),
        (br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": ""}}"#.to_vec(), "no_uid"),
        (br#"{"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1", "request": {"uid": 5}}"#.to_vec(), "not_review"),
    ];
    for (body, label) in cases {
        let err = reviewer.review(&body).await.expect_err(label);
        assert_eq!(err.metric_label(), label, "{err}");
        assert!(!err.to_string().is_empty());
    }
}

#[tokio::test]
async fn the_response_echoes_the_uid_and_is_shaped_as_the_api_server_reads_it() {
    let reviewer = reviewer(NAMESPACES);
    let (out, _) = answer(&reviewer, &review("elsewhere", pod("nginx"))).await;
    assert_eq!(
        out,
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
               "response": {"uid": "705ab4f5-6393-11e8-b7cc-42010a800002", "allowed": true}})
    );
}

#[tokio::test]
async fn requests_archway_does_not_handle_are_allowed_unchanged() {
    let reviewer = reviewer(&format!("{NAMESPACES}excludedNamespaces: [shop]"));
    let mut update = review("lab", pod("nginx"));
    update["request"]["operation"] = json!("UPDATE");
    let mut deployment = review("lab", pod("nginx"));
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let mut binding = review("lab", pod("nginx"));
    binding["request"]["subResource"] = json!("binding");
    let mut skipped = pod("nginx");
    skipped["metadata"]["annotations"] = json!({"archway.dev/skip": "true"});
    for (body, kind) in [
        (update, DecisionKind::Skipped),
        (deployment, DecisionKind::Skipped),
        (binding, DecisionKind::Skipped),
        (review("shop", pod("nginx")), DecisionKind::NotOptedIn),
        (review("lab", skipped), DecisionKind::Skipped),
    ] {
        let (out, record) = answer(&reviewer, &body).await;
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
        assert_eq!(record.kind, kind, "{}", record.reason);
        assert_eq!(
            record.cache_misses + record.cache_hits,
            0,
            "no lookup for {}",
            record.reason
        );
    }
}

#[tokio::test]
async fn an_object_that_is_not_a_pod_is_admitted_with_a_warning() {
    let reviewer = reviewer(NAMESPACES);
    let (out, record) = answer(
        &reviewer,
        &review("shop", json!({"spec": {"containers": "nope"}})),
    )
    .await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("could not read the pod")
    );
    assert_eq!(record.kind, DecisionKind::Skipped);
}

#[tokio::test]
async fn an_unreachable_registry_admits_with_a_warning_or_denies_when_closed() {
    let open = reviewer(NAMESPACES);
    let (out, record) = answer(&open, &review("shop", pod("127.0.0.1:1/app:v1"))).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none());
    let warning = out["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains(
            "image 127.0.0.1:1/app:v1 (container web): cannot reach registry 127.0.0.1:1"
        ),
        "{warning}"
    );
    assert_eq!(record.kind, DecisionKind::InspectionFailed);
    assert_eq!(
        out["response"]["auditAnnotations"]["kind"],
        "inspection_failed"
    );

    let closed = reviewer(&format!("{NAMESPACES}failClosed: true"));
    let (out, record) = answer(&closed, &review("shop", pod("127.0.0.1:1/app:v1"))).await;
    assert_eq!(out["response"]["allowed"], false);
    assert_eq!(out["response"]["status"]["code"], 403);
    assert!(
        out["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("could not be inspected")
    );
    assert_eq!(record.outcome, "denied");
}

#[tokio::test]
async fn invalid_image_references_are_reported_not_looked_up() {
    let reviewer = reviewer(NAMESPACES);
    let (out, _) = answer(&reviewer, &review("shop", pod("Not/A Valid:ref"))).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("invalid image reference")
    );
}

#[tokio::test]
async fn too_many_images_are_not_looked_up() {
    let reviewer = reviewer(NAMESPACES);
    let containers: Vec<Value> = (0..=MAX_IMAGES_PER_POD)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("127.0.0.1:1/img{i}:v1")}))
        .collect();
    let body = review(
        "shop",
        json!({"metadata": {"name": "big"}, "spec": {"containers": containers}}),
    );
    let (out, record) = answer(&reviewer, &body).await;
    assert_eq!(record.cache_misses, 0);
    assert!(
        out["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("distinct images")
    );
}

/// A pod past the view's bounds (here 31,000 containers, as an attacker
/// sent) is not read, not looked up, and admitted unchanged with the reason.
#[tokio::test]
async fn a_pod_with_more_containers_than_archway_reads_is_admitted_unchanged() {
    let reviewer = reviewer(NAMESPACES);
    let containers = vec![json!({}); 31_000];
    let body = review(
        "shop",
        json!({"metadata": {"name": "wide"}, "spec": {"containers": containers}}),
    );
    let (out, record) = answer(&reviewer, &body).await;
    assert_eq!(out["response"]["allowed"], true);
    assert!(out["response"].get("patch").is_none(), "{out}");
    assert_eq!(record.cache_misses, 0);
    let warning = out["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("the pod has over 256 containers; archway reads at most 256")
            && warning.contains("admitted unchanged"),
        "{warning}"
    );
}

#[test]
fn long_warnings_are_cut() {
    let text = "é".repeat(1000);
    let cut = warning(&text);
    assert_eq!(cut.chars().count(), MAX_WARNING_CHARS);
}

fn patch_of(out: &Value) -> Value {
    use base64::Engine;
    let encoded = out["response"]["patch"].as_str().expect("a patch");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// archway's keys on a pod are archway's to write: on a pod's first review
/// in an enforced namespace, those its author set go, with a warning;
/// `archway.dev/skip` is the author's.
#[tokio::test]
async fn archway_keys_a_pod_author_set_are_removed_in_enforced_namespaces() {
    let reviewer = reviewer(NAMESPACES);
    let forged = |extra_annotations: Value| {
        let mut p = pod("127.0.0.1:1/app:v1");
        p["metadata"]["labels"] =
            json!({"app": "web", "archway.dev/arch": "arm64", "archway.dev/gated": "true"});
        let mut annotations =
            json!({"archway.dev/hold-reason": "x", "archway.dev/skip": "false", "note": "mine"});
        for (k, v) in extra_annotations.as_object().unwrap() {
            annotations[k] = v.clone();
        }
        p["metadata"]["annotations"] = annotations;
        p
    };
    // Admitted unchanged (its registry is down), but disowned.
    let (out, record) = answer(&reviewer, &review("shop", forged(json!({})))).await;
    assert_eq!(record.kind, DecisionKind::InspectionFailed);
    assert_eq!(
        patch_of(&out),
        json!([
            {"op": "remove", "path": "/metadata/labels/archway.dev~1arch"},
            {"op": "remove", "path": "/metadata/labels/archway.dev~1gated"},
            {"op": "remove", "path": "/metadata/annotations/archway.dev~1hold-reason"},
        ])
    );
    let warnings = out["response"]["warnings"].to_string();
    assert!(
        warnings.contains("archway: removed archway.dev/arch, archway.dev/gated, archway.dev/hold-reason from the pod: archway alone writes archway.dev/ keys on pods (yours: archway.dev/skip)"),
        "{warnings}"
    );
    // Skipped by its author: still disowned.
    let skipped = forged(json!({"archway.dev/skip": "true"}));
    let (out, record) = answer(&reviewer, &review("shop", skipped)).await;
    assert_eq!(record.kind, DecisionKind::Skipped);
    assert_eq!(patch_of(&out).as_array().unwrap().len(), 3);
    // An audit namespace changes nothing; a pod archway already decided
    // (a reinvocation) keeps archway's keys.
    let (out, _) = answer(&reviewer, &review("lab", forged(json!({})))).await;
    assert!(out["response"].get("patch").is_none(), "{out}");
    let decided = forged(json!({"archway.dev/decision": "arm64: rollout 100%, bucket 3"}));
    let (out, _) = answer(&reviewer, &review("shop", decided)).await;
    assert!(out["response"].get("patch").is_none(), "{out}");
}

/// Whatever a pod carries in its gates is bounded like the rest of the
/// pod view: 10,000 gates get the bound's warning, not a patch.
#[tokio::test]
async fn a_pod_with_ten_thousand_gates_is_admitted_unchanged() {
    let reviewer = reviewer(NAMESPACES);
    let gates: Vec<Value> = (0..10_000)
        .map(|i| json!({"name": format!("example.com/g{i}")}))
        .collect();
    let mut p = pod("127.0.0.1:1/app:v1");
    p["spec"]["schedulingGates"] = json!(gates);
    let (out, _) = answer(&reviewer, &review("shop", p)).await;
    assert!(out["response"].get("patch").is_none(), "{out}");
    let warning = out["response"]["warnings"][0].as_str().unwrap();
    assert!(
        warning.contains("the pod has over 1024 scheduling gates; archway reads at most 1024"),
        "{warning}"
    );
}

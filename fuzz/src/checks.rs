//! What each fuzz target runs, and the invariants it checks: shared by the
//! cargo-fuzz targets (`fuzz/fuzz_targets/*.rs`, through the `archway_fuzz`
//! library) and by `tests/fuzz_regressions.rs`, which replays the corpus in
//! `tests/data/fuzz/<target>/` as a plain test (it includes this file with
//! `#[path]`). A check panics when an invariant fails.
//!
//! Only crates archway itself depends on are used here, so the file builds
//! in both places.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::sync::Arc;

use archway::admission::Reviewer;
use archway::config::Config;
use archway::decision::placement::{
    self, ContainerImage, DecisionInput, DecisionKind, DecisionSettings, ImageLookup, Outcome,
};
use archway::decision::platform::Platform;
use archway::decision::policy::{Mode, NamespacePolicy, Placement, Rollout, RolloutBy};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::manifest::{self, MAX_INDEX_ENTRIES, ManifestContent};
use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Toleration};
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// The fuzz targets, by name: the directory names under `tests/data/fuzz/`.
pub const TARGETS: [&str; 4] = ["admission_review", "image_reference", "manifest", "patch"];

/// Runs the check of `target` on `data`.
pub fn run(target: &str, data: &[u8]) {
    match target {
        "admission_review" => admission_review(data),
        "image_reference" => image_reference(data),
        "manifest" => manifest(data),
        "patch" => patch(data),
        other => panic!("no fuzz target {other:?}"),
    }
}

// ---------------------------------------------------------------- image

/// A reference that parses prints as one that parses again to the same
/// value, and what it asks registries for is well formed.
pub fn image_reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(image) = ImageRef::from_str(text) else {
        return;
    };
    let printed = image.to_string();
    let again = ImageRef::from_str(&printed)
        .unwrap_or_else(|e| panic!("{text:?} printed as {printed:?}, which does not parse: {e}"));
    assert_eq!(
        again, image,
        "{text:?} printed as {printed:?}, which parses to another image"
    );
    assert!(!image.registry().is_empty() && !image.repository().is_empty());
    assert!(!image.manifest_reference().is_empty());
    assert_eq!(image.is_pinned(), image.digest().is_some());
    if let Some(digest) = image.digest() {
        assert_eq!(image.manifest_reference(), digest, "{text:?}");
    }
    // What goes into a URL path: no whitespace, no query, no fragment.
    for part in [image.repository(), image.manifest_reference()] {
        assert!(
            !part.contains(|c: char| c.is_whitespace() || c == '?' || c == '#'),
            "{text:?}: {part:?} would break the request URL"
        );
    }
}

// ------------------------------------------------------------- manifest

/// Manifest and config parsing never panics; what parses is within the
/// limits and names a digest archway can check.
pub fn manifest(data: &[u8]) {
    // The response's Content-Type, chosen by the first byte; the body is
    // the whole input (JSON starts with `{`, so the choice still varies).
    let content_types = [
        None,
        Some(manifest::OCI_INDEX),
        Some(manifest::OCI_MANIFEST),
        Some(manifest::DOCKER_LIST),
        Some(manifest::DOCKER_MANIFEST),
        Some("application/json; charset=utf-8"),
        Some("text/html"),
    ];
    let content_type = content_types[data
        .first()
        .map_or(0, |b| *b as usize % content_types.len())];
    match manifest::parse_manifest(content_type, data) {
        Ok(ManifestContent::Index(platforms)) => {
            assert!(!platforms.is_empty(), "an index with no platform parsed");
            assert!(platforms.len() <= MAX_INDEX_ENTRIES);
            for platform in &platforms {
                check_platform(platform);
            }
        }
        Ok(ManifestContent::Image { config_digest }) => {
            manifest::validate_digest(&config_digest)
                .unwrap_or_else(|e| panic!("config digest {config_digest:?} accepted: {e}"));
        }
        Err(error) => assert!(!error.to_string().is_empty()),
    }
    if let Ok(platform) = manifest::parse_config(data) {
        check_platform(&platform);
    }
    let digest = manifest::sha256_digest(data);
    assert!(manifest::validate_digest(&digest).is_ok(), "{digest}");
}

fn check_platform(platform: &Platform) {
    assert!(!platform.os.is_empty() && !platform.architecture.is_empty());
    // Normalised: lowercase, trimmed, arm64 without v8; parsing again is
    // the identity.
    let again = Platform::new(
        &platform.os,
        &platform.architecture,
        platform.variant.as_deref(),
    );
    assert_eq!(&again, platform, "normalising is not idempotent");
}

// ---------------------------------------------------------------- patch

/// The tolerations archway is configured with by default.
fn tolerations() -> BTreeMap<String, Vec<Toleration>> {
    Config::default().tolerations
}

/// A stable, cheap hash of bytes (FNV-1a): derives synthetic registry
/// answers from image strings.
fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// What a registry "publishes" for `image`: decided by its hash, so the
/// fuzzer steers it through the image strings it writes.
fn synthetic_lookup(image: &str) -> ImageLookup {
    let h = fnv(image.as_bytes());
    let linux = |archs: &[&str]| {
        (archs.iter().map(|a| Platform::linux(a)))
            .collect::<BTreeSet<_>>()
            .into()
    };
    match h % 8 {
        0 => ImageLookup::Failed(format!("synthetic failure for {image}")),
        1 => ImageLookup::Found(linux(&["amd64"])),
        2 => ImageLookup::Found(linux(&["arm64"])),
        3 => ImageLookup::Found(linux(&["amd64", "arm64", "s390x"])),
        4 => ImageLookup::Found(
            BTreeSet::from([
                Platform::new("windows", "amd64", None),
                Platform::new("linux", "arm", Some("v7")),
            ])
            .into(),
        ),
        5 => ImageLookup::Found(BTreeSet::new().into()),
        _ => ImageLookup::Found(linux(&["amd64", "arm64"])),
    }
}

/// Arbitrary Pod JSON: every decision archway can make about it yields a
/// patch that applies to that very JSON (the API server applies it to the
/// object it sent), and the result is a Pod that carries the decision.
pub fn patch(data: &[u8]) {
    let Ok(object) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let Ok(pod) = serde_json::from_value::<Pod>(object.clone()) else {
        return;
    };
    let lookups: Vec<(ContainerImage, ImageLookup)> = placement::container_images(&pod)
        .into_iter()
        .map(|c| {
            let lookup = synthetic_lookup(&c.image);
            (c, lookup)
        })
        .collect();
    let h = fnv(data);
    let archs: Vec<&str> = ["amd64", "arm64"]
        .into_iter()
        .filter(|_| h & 1 == 0)
        .chain((h & 2 == 0).then_some("arm"))
        .collect();
    let nodes = placement::Nodes::of_architectures(archs);
    for (placement, rollout, rollout_by, fail_closed) in [
        (Placement::Required, 100, RolloutBy::Pod, false),
        (Placement::Required, 0, RolloutBy::Workload, true),
        (Placement::Preferred, 100, RolloutBy::Workload, false),
        (Placement::Preferred, (h % 101) as u8, RolloutBy::Pod, true),
    ] {
        let policy = NamespacePolicy {
            mode: Mode::Enforce,
            rollout: Rollout::new(rollout).unwrap(),
            rollout_by,
            placement,
            cold: None,
            guard: Default::default(),
            ramp: None,
            problems: Vec::new(),
        };
        let settings = DecisionSettings {
            target_architecture: "arm64".into(),
            fail_closed,
            tolerations: tolerations(),
        };
        for nodes in [None, Some(&nodes)] {
            // The first review and the reinvocation differ only in the pod.
            let decide = |pod: &Pod| {
                placement::decide(&DecisionInput {
                    pod,
                    policy: &policy,
                    lookups: &lookups,
                    settings: &settings,
                    request_uid: "fuzz-uid",
                    draw: None,
                    nodes,
                    hold: None,
                })
            };
            let decision = decide(&pod);
            let Outcome::Inject(injection) = &decision.outcome else {
                if decision.outcome == Outcome::Deny {
                    assert!(fail_closed, "denied without failClosed: {decision:?}");
                }
                continue;
            };
            // Only a correction on reinvocation may require nothing: it
            // removes archway's own expression.
            assert!(
                injection.requirement != placement::Requirement::AddToEveryTerm
                    || !injection.required.is_empty(),
                "{decision:?}"
            );
            let patch = archway::decision::patch::build(&pod, injection, &tolerations());
            let mut patched = object.clone();
            json_patch::patch(&mut patched, &patch).unwrap_or_else(|e| {
                panic!(
                    "the patch does not apply to the pod it was built for: {e}\npatch: {}\npod: {object}",
                    serde_json::to_string(&patch).unwrap()
                )
            });
            let patched_pod: Pod = serde_json::from_value(patched.clone())
                .unwrap_or_else(|e| panic!("the patched pod is not a Pod: {e}\n{patched}"));
            // Reviewed again (reinvocation with nothing added): archway's
            // requirement still runs every image, so nothing changes.
            let second = decide(&patched_pod);
            check_patched(&pod, &patched_pod, injection, decision.kind, &second);
        }
    }
}

fn check_patched(
    pod: &Pod,
    patched: &Pod,
    injection: &placement::Injection,
    kind: DecisionKind,
    second: &placement::Decision,
) {
    // Every required term now carries the arch expression, and no other
    // arch value was named before (else the user chose): the union of the
    // named architectures is what archway required. (A correction that
    // removed archway's expression requires nothing.)
    let removed = injection.required.is_empty();
    assert_eq!(
        placement::user_architectures(patched).as_ref(),
        (!removed).then_some(&injection.required),
        "{kind:?}"
    );
    // A second review sees its own decision, checks it, and leaves the pod
    // as it is.
    assert_eq!(
        (second.kind, &second.outcome),
        (DecisionKind::AlreadyDecided, &Outcome::Unchanged),
        "the patched pod is not recognised as decided: {}",
        second.reason
    );
    // What archway does not own is kept: containers, other terms' other
    // expressions, the user's tolerations and annotations.
    let spec = pod.spec.as_ref().expect("a pod with containers has a spec");
    let patched_spec = patched.spec.as_ref().unwrap();
    assert_eq!(spec.containers, patched_spec.containers);
    assert_eq!(spec.init_containers, patched_spec.init_containers);
    for toleration in spec.tolerations.iter().flatten() {
        assert!(
            patched_spec
                .tolerations
                .iter()
                .flatten()
                .any(|t| t == toleration),
            "a toleration was lost"
        );
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        if key != placement::ARCHS_ANNOTATION && key != placement::DECISION_ANNOTATION {
            assert_eq!(
                patched
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(key)),
                Some(value),
                "annotation {key:?} was changed"
            );
        }
    }
    let user_terms = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(0, |r| r.node_selector_terms.len());
    let terms = patched_spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|n| {
            n.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
        .map_or(0, |r| r.node_selector_terms.len());
    if !removed {
        assert_eq!(terms, user_terms.max(1), "terms were added or lost");
    }
    // The pod tolerates every architecture it may land on.
    let configured = tolerations();
    for arch in &injection.tolerate {
        for wanted in configured.get(arch).into_iter().flatten() {
            let tolerated = patched_spec.tolerations.iter().flatten().any(|t| {
                t == wanted
                    || (t.key.as_deref().unwrap_or("").is_empty()
                        && t.operator.as_deref() == Some("Exists"))
                    || (t.key == wanted.key && t.operator.as_deref() == Some("Exists"))
            }) || spec.tolerations.iter().flatten().any(|t| {
                // A user's toleration archway judged to cover it.
                t.key == wanted.key
                    && t.toleration_seconds.is_none()
                    && (t.value == wanted.value || t.operator.as_deref() == Some("Exists"))
            });
            assert!(tolerated, "{arch}: {wanted:?} not tolerated");
        }
    }
}

// ----------------------------------------------------- admission review

/// A registry the fuzzed reviewer may contact: nothing listens on port 1,
/// so every lookup fails at once with "connection refused".
const UNREACHABLE: &str = "127.0.0.1:1";
/// The other: a tiny in-process registry (`fake_registry`), so that
/// reviews also reach the patch. Any process running these checks serves
/// the same answers here; whichever binds first serves them all.
const FAKE: &str = "127.77.0.1:5000";

/// Serves, for any repository and reference: repositories whose name
/// contains `amd` or `arm` a single manifest of that architecture (and its
/// config blob), `fail` HTTP 500, anything else an index of linux/amd64 and
/// linux/arm64. Plain HTTP/1.1, one request per connection.
fn fake_registry() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let Ok(listener) = std::net::TcpListener::bind(FAKE) else {
            // Another process serves it (or something else holds the port:
            // then lookups there fail, which is also fine).
            return;
        };
        std::thread::Builder::new()
            .name("fake-registry".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fake registry");
                runtime.block_on(async move {
                    listener.set_nonblocking(true).unwrap();
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    while let Ok((stream, _)) = listener.accept().await {
                        tokio::spawn(serve_one(stream));
                    }
                });
            })
            .expect("start the fake registry");
    });
}

fn config_of(arch: &str) -> Vec<u8> {
    format!(
        r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}}}}"#
    )
    .into_bytes()
}

async fn serve_one(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::new();
    let mut buf = [0u8; 2048];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let repository = path
        .strip_prefix("/v2/")
        .and_then(|p| {
            p.rsplit_once("/manifests/")
                .or_else(|| p.rsplit_once("/blobs/"))
        })
        .map_or("", |(repository, _)| repository);
    let arch = ["amd64", "arm64"]
        .into_iter()
        .find(|a| repository.contains(&a[..3]));
    let (status, content_type, body) = if repository.contains("fail") {
        ("500 Internal Server Error", "text/plain", b"no".to_vec())
    } else if path.contains("/blobs/") {
        match arch {
            Some(arch) => ("200 OK", "application/octet-stream", config_of(arch)),
            None => ("404 Not Found", "text/plain", Vec::new()),
        }
    } else if let Some(arch) = arch {
        let config = config_of(arch);
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[]}}"#,
            manifest::OCI_MANIFEST,
            manifest::sha256_digest(&config),
            config.len()
        );
        ("200 OK", manifest::OCI_MANIFEST, manifest.into_bytes())
    } else {
        let entry = |arch: &str| {
            format!(
                r#"{{"mediaType":"{}","digest":"sha256:{}","size":1,"platform":{{"os":"linux","architecture":"{arch}"}}}}"#,
                manifest::OCI_MANIFEST,
                "0".repeat(64)
            )
        };
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{},{}]}}"#,
            manifest::OCI_INDEX,
            entry("amd64"),
            entry("arm64")
        );
        ("200 OK", manifest::OCI_INDEX, index.into_bytes())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(&body).await;
    let _ = stream.shutdown().await;
}

fn reviewer() -> Reviewer {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let namespaces: String = ('a'..='z')
        .map(|c| {
            let (mode, placement) = match c {
                'a'..='q' => ("enforce", "required"),
                'r'..='v' => ("enforce", "preferred"),
                _ => ("audit", "required"),
            };
            let rollout = (c as u32 - 'a' as u32) * 4;
            format!("  {c}: {{ mode: {mode}, rollout: {rollout}, placement: {placement} }}\n")
        })
        .collect();
    let yaml = format!(
        "timeBudget: 200ms\nfailClosed: false\nregistry:\n  insecure: [\"{UNREACHABLE}\", \"{FAKE}\"]\n  connectTimeout: 200ms\n  requestTimeout: 200ms\nnamespaces:\n{namespaces}"
    );
    let config = Config::from_yaml(&yaml).expect("the fuzz configuration is valid");
    // Nothing renders the fuzz reviewer's metrics.
    let metrics = Arc::default();
    archway::setup::reviewer(&config, Arc::new(config.static_policies()), metrics)
        .expect("the fuzz reviewer builds")
}

thread_local! {
    static RUNTIME: (tokio::runtime::Runtime, Reviewer) = (
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime"),
        reviewer(),
    );
}

/// The review as archway reads it (`src/admission.rs`), to find the images
/// it would look up before letting it look them up.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReviewIn<'a> {
    #[serde(borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

/// Whether every image the review's pod names either fails to parse or is
/// on `UNREACHABLE` or `FAKE`: then reviewing it sends nothing off this machine (no
/// DNS query either). `None` when the review is not readable this way.
fn images_stay_local(data: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(data).ok()?;
    // Read as archway reads it; if this reading fails where archway's
    // succeeds, the input is only not reviewed (never sent anywhere).
    let review: ReviewIn<'_> = serde_json::from_str(text).ok()?;
    let Some(object) = review.request.and_then(|r| r.object) else {
        return Some(true);
    };
    let Ok(pod) = serde_json::from_str::<Pod>(object.get()) else {
        return Some(true);
    };
    let local =
        placement::container_images(&pod)
            .iter()
            .all(|c| match c.image.parse::<ImageRef>() {
                Ok(image) => image.registry() == UNREACHABLE || image.registry() == FAKE,
                Err(_) => true,
            });
    Some(local)
}

/// Bytes as the body of `POST /mutate`, reviewed for real (registry
/// lookups included, on loopback only): never a panic; an answer is a
/// well-formed response for the request's uid, and a patch in it applies
/// to the request's object and leaves a Pod.
pub fn admission_review(data: &[u8]) {
    // Registry lookups only for pods whose images are all on the
    // unreachable registry; everything else is answered without them
    // (bad reviews, skipped pods, invalid references).
    if images_stay_local(data) != Some(true) {
        return;
    }
    fake_registry();
    let result = RUNTIME.with(|(runtime, reviewer)| runtime.block_on(reviewer.review(data)));
    let (out, record) = match result {
        Err(bad) => {
            assert!(!bad.to_string().is_empty());
            assert!(!bad.metric_label().is_empty());
            return;
        }
        Ok(answer) => answer,
    };
    let response = &out.response;
    if std::env::var_os("FUZZ_VERBOSE").is_some() {
        eprintln!(
            "allowed={} patch={} warnings={:?}",
            response.allowed,
            response.patch.is_some(),
            response.warnings
        );
    }
    assert!(!response.uid.is_empty(), "answered without a uid");
    assert_eq!(record.uid, response.uid);
    let json = serde_json::to_vec(&out).expect("the answer serialises");
    let _: Value = serde_json::from_slice(&json).expect("the answer is JSON");
    // Warnings are cut to 512 characters each and, all together, kept to
    // about the 4 KiB the API server relays (src/admission.rs); one audit
    // line may follow.
    let mut total = 0;
    for warning in &response.warnings {
        let chars = warning.chars().count();
        assert!(chars <= 512, "a warning of {chars} characters: {warning:?}");
        total += chars;
    }
    assert!(
        total <= 4096 + 512,
        "{} warnings of {total} characters in all",
        response.warnings.len()
    );
    if !response.allowed {
        let status = response.status.as_ref().expect("a denial has a status");
        assert_eq!(status.code, 403);
        assert!(!status.message.is_empty());
    }
    if response.patch.is_none() {
        assert!(response.patch_type.is_none());
        return;
    }
    assert!(response.allowed, "a denial with a patch");
    assert_eq!(response.patch_type, Some("JSONPatch"));
    // The patch as the API server reads it: base64 in the response's JSON.
    let wire = serde_json::to_value(response).expect("the response serialises");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(wire["patch"].as_str().expect("the patch is a string"))
        .expect("the patch is base64");
    let patch: json_patch::Patch =
        serde_json::from_slice(&bytes).expect("the patch is a JSON Patch");
    let text = std::str::from_utf8(data).unwrap();
    let review: ReviewIn<'_> = serde_json::from_str(text).unwrap();
    let object = review
        .request
        .and_then(|r| r.object)
        .expect("a patched review has an object");
    // Past serde_json's recursion limit the object cannot be held as a
    // Value (archway skipped that part): nothing to apply the patch to.
    let Ok(mut object) = serde_json::from_str::<Value>(object.get()) else {
        return;
    };
    let original = object.clone();
    json_patch::patch(&mut object, &patch).unwrap_or_else(|e| {
        panic!(
            "archway's patch does not apply to the object it was sent: {e}\npatch: {}\nobject: {original}",
            String::from_utf8_lossy(&bytes)
        )
    });
    // archway reads only the fields it needs, so it patches objects that are
    // not Pods (`hostNetwork: [..]`); the API server never sends those, as it
    // decodes the object into a Pod first. The invariant is that the patch
    // keeps a Pod a Pod, not that it makes one.
    if serde_json::from_value::<Pod>(original).is_err() {
        return;
    }
    let _: Pod = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("the patched object is not a Pod: {e}\n{object}"));
}

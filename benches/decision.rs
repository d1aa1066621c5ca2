//! The cost of one decision, without the network.
//!
//! - `parse_pod`: the pod read from the review's bytes (k8s-openapi `Pod`),
//!   which every review of an opted-in namespace pays;
//! - `decide+patch`: `placement::decide` then `patch::build`, pure;
//! - `review`: `Reviewer::review` end to end on a whole AdmissionReview body,
//!   every image already in the cache (filled from a real registry started
//!   by the tests' harness, then reused);
//! - `envelope`: where a review's parsing time goes, next to what the floor
//!   (benches/floor.rs) parses: the uid alone; archway's envelope (the
//!   object kept raw); that plus the full k8s-openapi `Pod`; that plus only
//!   the fields the decision reads (`archway::admission::pod::PodView`,
//!   checked here to give the same patch);
//! - `lookup`: the cached image lookups of a typical pod (reference parsing,
//!   then the cache), and `respond`: the response's serialisation (`to_vec`
//!   from an empty buffer, and `to_json` as the server writes it).
//!
//! Sizes: `small` (1 container, ~5 KB review), `typical` (3 containers + 1
//! init, affinity, tolerations; ~10 KB pod), `large` (~30 KB) and
//! `very_large` (30 containers with big env, ~300 KB).
//!
//! `cargo bench --bench decision` takes about a minute on 2 cores;
//! `cargo test --benches` runs each once (it still starts the registry).

#[path = "common/one_pass.rs"]
mod one_pass;
#[path = "common/pods.rs"]
mod pods;
use archway_testkit as support;

use one_pass::{Kind, OnePass};

use std::borrow::Cow;
use std::collections::BTreeSet;
use std::hint::black_box;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use archway::admission::Reviewer;
use archway::admission::pod::PodView;
use archway::config::Config;
use archway::decision::patch;
use archway::decision::placement::{self, DecisionInput, DecisionSettings, ImageLookup, Outcome};
use archway::decision::platform::Platform;
use archway::decision::policy::{Mode, NamespacePolicy, Placement, Rollout, RolloutBy};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::Credential;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::core::v1::Pod;
use serde::Deserialize;
use serde_json::value::RawValue;
use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

/// The allocator of the `archway` binary (src/main.rs), so the figures are
/// the server's.
/// The binary's allocator, counted: the review bench prints allocations
/// per review on the cached path.
#[global_allocator]
static ALLOCATOR: Counting = Counting;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static ALLOCATED_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to mimalloc; the counters are
// plain atomics that do not allocate.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(layout.size() as u64, Relaxed);
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, size: usize) -> *mut u8 {
        use std::sync::atomic::Ordering::Relaxed;
        ALLOCATIONS.fetch_add(1, Relaxed);
        ALLOCATED_BYTES.fetch_add(size as u64, Relaxed);
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, size) }
    }
}

/// Allocations and bytes per call of `f`, over `rounds` calls.
fn allocations_per_call(rounds: u64, mut f: impl FnMut()) -> (f64, f64) {
    use std::sync::atomic::Ordering::Relaxed;
    let (count, bytes) = (ALLOCATIONS.load(Relaxed), ALLOCATED_BYTES.load(Relaxed));
    for _ in 0..rounds {
        f();
    }
    let per = |now: u64, before: u64| (now - before) as f64 / rounds as f64;
    (
        per(ALLOCATIONS.load(Relaxed), count),
        per(ALLOCATED_BYTES.load(Relaxed), bytes),
    )
}

const SHAPES: [pods::Shape; 4] = [pods::SMALL, pods::TYPICAL, pods::LARGE, pods::VERY_LARGE];

fn policy() -> NamespacePolicy {
    NamespacePolicy {
        mode: Mode::Enforce,
        rollout: Rollout::new(50).unwrap(),
        rollout_by: RolloutBy::Pod,
        placement: Placement::Required,
        cold: None,
        guard: Default::default(),
        ramp: None,
        problems: Vec::new(),
    }
}

fn parse_pod(c: &mut Criterion) {
    let images = pods::images_on("registry.example:5000");
    let mut group = c.benchmark_group("parse_pod");
    for shape in SHAPES {
        let text = serde_json::to_string(&pods::pod(&shape, &images, "checkout")).unwrap();
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(shape.name, |b| {
            b.iter(|| serde_json::from_str::<Pod>(black_box(&text)).unwrap())
        });
    }
    group.finish();
}

fn decide_and_patch(c: &mut Criterion) {
    let images = pods::images_on("registry.example:5000");
    let settings = DecisionSettings {
        target_architecture: "arm64".into(),
        fail_closed: false,
        tolerations: Config::default().tolerations,
    };
    let policy = policy();
    let tolerations = Config::default().tolerations;
    let both: archway::decision::platform::Platforms =
        BTreeSet::from([Platform::linux("amd64"), Platform::linux("arm64")]).into();
    let mut group = c.benchmark_group("decide+patch");
    for shape in SHAPES {
        let mut pod: Pod = serde_json::from_value(pods::pod(&shape, &images, "checkout")).unwrap();
        pod.metadata.namespace = Some(pods::NAMESPACE.into());
        let lookups: Vec<_> = placement::container_images(&pod)
            .into_iter()
            .map(|c| (c, ImageLookup::Found(both.clone())))
            .collect();
        let input = DecisionInput {
            pod: &pod,
            policy: &policy,
            lookups: &lookups,
            settings: &settings,
            request_uid: "0b5e1c6a-7f00-4d2e-9c1a-000000000001",
            draw: None,
            // No cluster: node architectures unknown.
            nodes: None,
            hold: None,
        };
        assert!(matches!(
            placement::decide(&input).outcome,
            Outcome::Inject(_)
        ));
        group.bench_function(shape.name, |b| {
            b.iter(|| {
                let decision = placement::decide(black_box(&input));
                let Outcome::Inject(injection) = &decision.outcome else {
                    unreachable!()
                };
                patch::build(&pod, injection, &tolerations)
            })
        });
    }
    group.finish();
}

/// A registry holding the load images, and a reviewer whose cache holds
/// them all.
struct Filled {
    _registry: Registry,
    reviewer: Reviewer,
    runtime: tokio::runtime::Runtime,
    host: String,
}

fn filled() -> &'static Filled {
    static FILLED: OnceLock<Filled> = OnceLock::new();
    FILLED.get_or_init(start_filled)
}

fn start_filled() -> Filled {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = Registry::start(RegistryOptions::plain());
    let layouts = tempfile::tempdir().unwrap();
    for reference in pods::REPOSITORIES {
        let spec = ImageSpec::multi_arch_with_attestation().with_salt(reference);
        let layout = build_layout(&layouts.path().join(reference.replace(':', "-")), &spec);
        registry.push(&layout.dir, reference, Format::Oci);
    }
    let config = Config::from_yaml(&format!(
        "registry:\n  insecure: [\"{}\"]\nnamespaces:\n  {}: {{mode: enforce, rollout: 50}}\n",
        registry.host(),
        pods::NAMESPACE
    ))
    .unwrap();
    let reviewer =
        archway::setup::reviewer(&config, Arc::new(config.static_policies()), Arc::default())
            .unwrap();
    // archway's runtime on this machine: tokio's multi-threaded default.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    Filled {
        host: registry.host(),
        _registry: registry,
        reviewer,
        runtime,
    }
}

fn review(c: &mut Criterion) {
    let filled = filled();
    let images = pods::images_on(&filled.host);
    let mut group = c.benchmark_group("review");
    for shape in SHAPES {
        let body = pods::review_body(&shape, &images, "0b5e1c6a-7f00-4d2e-9c1a-000000000001");
        // The first review fills the cache; the next must be all hits.
        for round in 0..2 {
            let (out, record) = filled
                .runtime
                .block_on(filled.reviewer.review(&body))
                .unwrap();
            assert!(out.response.patch.is_some(), "{:?}", out.response);
            if round == 1 {
                assert_eq!(record.cache_misses, 0);
            }
        }
        // Review and response bytes, as the server does it.
        let (allocations, bytes) = allocations_per_call(200, || {
            let (out, _) = filled
                .runtime
                .block_on(filled.reviewer.review(&body))
                .unwrap();
            black_box(out.to_json().unwrap());
        });
        println!(
            "review/{}: {allocations:.0} allocations, {bytes:.0} bytes allocated per cached review",
            shape.name
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(shape.name, |b| {
            b.iter(|| {
                filled
                    .runtime
                    .block_on(filled.reviewer.review(black_box(&body)))
                    .unwrap()
            })
        });
    }
    group.finish();
}

/// What the floor reads of a review.
#[derive(Deserialize)]
struct FloorReview<'a> {
    #[serde(borrow)]
    request: Option<FloorRequest<'a>>,
}

#[derive(Deserialize)]
struct FloorRequest<'a> {
    #[serde(borrow)]
    uid: Option<Cow<'a, str>>,
}

/// What archway reads of a review before the pod (src/admission.rs).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Envelope<'a> {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(borrow)]
    request: Option<EnvelopeRequest<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct EnvelopeRequest<'a> {
    uid: Option<String>,
    kind: Option<Kind>,
    operation: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    sub_resource: Option<String>,
    dry_run: Option<bool>,
    #[serde(borrow)]
    object: Option<&'a RawValue>,
}

fn object(body: &[u8]) -> &RawValue {
    let text = std::str::from_utf8(body).unwrap();
    let envelope: Envelope<'_> = serde_json::from_str(text).unwrap();
    envelope.request.unwrap().object.unwrap()
}

fn patch_json(pod: &Pod, uid: &str) -> String {
    let settings = DecisionSettings {
        target_architecture: "arm64".into(),
        fail_closed: false,
        tolerations: Config::default().tolerations,
    };
    let policy = policy();
    let both: archway::decision::platform::Platforms =
        BTreeSet::from([Platform::linux("amd64"), Platform::linux("arm64")]).into();
    let lookups: Vec<_> = placement::container_images(pod)
        .into_iter()
        .map(|c| (c, ImageLookup::Found(both.clone())))
        .collect();
    let decision = placement::decide(&DecisionInput {
        pod,
        policy: &policy,
        lookups: &lookups,
        settings: &settings,
        request_uid: uid,
        draw: None,
        nodes: None,
        hold: None,
    });
    let Outcome::Inject(injection) = &decision.outcome else {
        panic!("{decision:?}")
    };
    serde_json::to_string(&patch::build(
        pod,
        injection,
        &Config::default().tolerations,
    ))
    .unwrap()
}

fn envelope(c: &mut Criterion) {
    let images = pods::images_on("registry.example:5000");
    let mut group = c.benchmark_group("envelope");
    for shape in SHAPES {
        let body = pods::review_body(&shape, &images, "0b5e1c6a-7f00-4d2e-9c1a-000000000001");
        // The view must decide and patch exactly as the full pod does.
        let full: Pod = serde_json::from_str(object(&body).get()).unwrap();
        let skinny = serde_json::from_str::<PodView>(object(&body).get())
            .unwrap()
            .into_pod();
        assert_eq!(patch_json(&full, "u"), patch_json(&skinny, "u"));
        // The floor's read of the body, and archway's: timed below, and
        // their allocations counted here (where a review's come from).
        let floor_read = || {
            let review: FloorReview<'_> = serde_json::from_slice(black_box(&body)).unwrap();
            review.request.unwrap().uid.unwrap().len()
        };
        let one_pass_read = || {
            let text = std::str::from_utf8(black_box(&body)).unwrap();
            let review: OnePass = serde_json::from_str(text).unwrap();
            review.request.unwrap().object.unwrap().into_pod()
        };
        let (floor, _) = allocations_per_call(200, || {
            black_box(floor_read());
        });
        let (one_pass, _) = allocations_per_call(200, || {
            black_box(one_pass_read());
        });
        println!(
            "envelope/{}: {floor:.0} allocations for the floor's read, {one_pass:.0} for the one-pass pod view",
            shape.name
        );
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{}/floor_uid", shape.name), |b| b.iter(floor_read));
        group.bench_function(format!("{}/archway_envelope", shape.name), |b| {
            b.iter(|| object(black_box(&body)).get().len())
        });
        group.bench_function(format!("{}/archway_full_pod", shape.name), |b| {
            b.iter(|| serde_json::from_str::<Pod>(object(black_box(&body)).get()).unwrap())
        });
        group.bench_function(format!("{}/skinny_pod", shape.name), |b| {
            b.iter(|| {
                serde_json::from_str::<PodView>(object(black_box(&body)).get())
                    .unwrap()
                    .into_pod()
            })
        });
        group.bench_function(format!("{}/one_pass_skinny_pod", shape.name), |b| {
            b.iter(one_pass_read)
        });
    }
    group.finish();
}

fn lookup(c: &mut Criterion) {
    let filled = filled();
    let mut group = c.benchmark_group("lookup");
    let images = pods::images_on(&filled.host);
    group.bench_function("typical/image_ref_parse", |b| {
        b.iter(|| {
            images
                .iter()
                .map(|i| black_box(i).parse::<ImageRef>().unwrap())
                .collect::<Vec<_>>()
        })
    });
    let references: Vec<ImageRef> = images.iter().map(|i| i.parse().unwrap()).collect();
    let inspector = &filled.reviewer.inspector;
    let all_hits = || async {
        let lookups = references
            .iter()
            .map(|r| inspector.inspect_detached(r, &Credential::Anonymous));
        futures::future::join_all(lookups).await
    };
    // Filled by an earlier review, or now.
    filled.runtime.block_on(all_hits());
    group.bench_function("typical/cached_inspect_detached", |b| {
        b.iter(|| filled.runtime.block_on(all_hits()))
    });
    group.bench_function("block_on_baseline", |b| {
        b.iter(|| filled.runtime.block_on(async { black_box(1) }))
    });
    let body = pods::review_body(
        &pods::TYPICAL,
        &images,
        "0b5e1c6a-7f00-4d2e-9c1a-000000000001",
    );
    let (out, _) = filled
        .runtime
        .block_on(filled.reviewer.review(&body))
        .unwrap();
    group.bench_function("typical/respond_to_vec", |b| {
        b.iter(|| serde_json::to_vec(black_box(&out)).unwrap())
    });
    // As the server writes it (src/serve/server.rs).
    group.bench_function("typical/respond_to_json", |b| {
        b.iter(|| black_box(&out).to_json().unwrap())
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = parse_pod, decide_and_patch, review, envelope, lookup
}
criterion_main!(benches);

//! Registry economy (issue 25, item 5), against the real registry behind a
//! proxy that records every request's method: an expired tag is asked with a
//! HEAD of its manifest, and only a digest archway does not know costs a
//! GET; a registry whose HEAD names no digest gets GETs; a budget caps the
//! GETs per registry; and the facts one replica learned are shared through
//! a ConfigMap on the real control plane, so that another replica, or a
//! restarted one, asks no GET for them.

use archway_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use archway::lookup::cache::{CacheOutcome, CacheSettings, Inspector};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::facts::Facts;
use archway::lookup::registry::facts::configmap::{self, DATA_KEY, Target};
use archway::lookup::registry::{
    Credential, InspectError, Keyring, RegistryClient, RegistrySettings,
};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use support::controlplane::{ControlPlane, client_from_kubeconfig};
use support::{CountingProxy, Fault, ImageSpec, Recorded, Registry, RegistryOptions};

/// Short enough for a test to wait out, long enough to read twice within.
const TAG_TTL: Duration = Duration::from_millis(400);

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn image(s: &str) -> ImageRef {
    s.parse().unwrap()
}

fn settings_for(host: &str) -> RegistrySettings {
    RegistrySettings {
        insecure_hosts: vec![host.to_string()],
        request_timeout: Duration::from_secs(2),
        ..RegistrySettings::default()
    }
}

fn cache(stale_ttl: Duration) -> CacheSettings {
    CacheSettings {
        tag_ttl: TAG_TTL,
        stale_ttl,
        ..CacheSettings::default()
    }
}

fn inspector(settings: RegistrySettings, cache: CacheSettings) -> Inspector {
    install_crypto();
    Inspector::new(RegistryClient::new(settings).unwrap(), cache)
}

/// Pushes a multi-arch image of its own (`salt`) as `reference`, straight
/// to the registry (not through the proxy); its digest.
fn push(registry: &Registry, reference: &str, spec: ImageSpec, salt: &str) -> String {
    registry.push_spec(reference, &spec.with_salt(salt))
}

fn is_manifest(method: &'static str) -> impl Fn(&Recorded) -> bool {
    move |r: &Recorded| r.is_manifest() && r.method == method
}

/// Manifest (GETs, HEADs) the proxy saw.
fn asked(proxy: &CountingProxy) -> (usize, usize) {
    (
        proxy.count(is_manifest("GET")),
        proxy.count(is_manifest("HEAD")),
    )
}

/// Polls `done` every 20 ms, for at most 10 s.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn platforms(found: &archway::lookup::registry::ImagePlatforms) -> Vec<String> {
    found.platforms.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tag_costs_a_head_and_only_a_moved_one_a_get() {
    let registry = Registry::start(RegistryOptions::plain());
    let first = push(&registry, "app:v1", ImageSpec::multi_arch(), "first");
    let proxy = CountingProxy::start(registry.addr()).await;
    let inspector = inspector(
        settings_for(&proxy.host()),
        cache(CacheSettings::default().stale_ttl),
    );
    let app = image(&format!("{}/app:v1", proxy.host()));
    let (found, _) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(found.unwrap().digest, first);
    assert_eq!(asked(&proxy), (1, 0));

    // Expired: the last answer is served at once, and revalidated behind
    // it by a HEAD that names the same digest.
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let (served, outcome) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(
        (served.unwrap().digest.clone(), outcome),
        (first.clone(), CacheOutcome::Hit)
    );
    eventually("the revalidating HEAD to be answered", || {
        proxy.count(|r| is_manifest("HEAD")(r) && r.status.is_some()) == 1
    })
    .await;
    let requests = proxy.requests();
    eprintln!("{requests:#?}");
    let (get, head) = (&requests[0], &requests[1]);
    assert_eq!((get.method.as_str(), head.method.as_str()), ("GET", "HEAD"));
    assert_eq!(head.path, get.path);
    assert_eq!(
        head.accept, get.accept,
        "the HEAD names what the GET would get"
    );
    assert_eq!(head.status, Some(200));
    // Renewed for a whole tagTtl (once the revalidation has put its
    // answer, just after the HEAD's): no request meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (renewed, outcome) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(
        (renewed.unwrap().digest.clone(), outcome),
        (first.clone(), CacheOutcome::Hit)
    );
    assert_eq!(asked(&proxy), (1, 1), "an unchanged tag costs no GET");

    // The tag moves to an image of other platforms: the HEAD names a
    // digest archway does not know, and that costs the GET.
    let moved = push(&registry, "app:v1", ImageSpec::arm_v7(), "moved");
    assert_ne!(moved, first);
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let (stale, _) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(stale.unwrap().digest, first, "served while revalidated");
    eventually("the moved tag's GET", || {
        proxy.count(|r| is_manifest("GET")(r) && r.status.is_some()) == 2
    })
    .await;
    assert_eq!(asked(&proxy), (2, 2));
    let started = Instant::now();
    let now = loop {
        let (now, _) = inspector.inspect(&app, &Credential::Anonymous).await;
        let now = now.unwrap();
        if now.digest == moved || started.elapsed() > Duration::from_secs(10) {
            break now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(now.digest, moved);
    assert_eq!(platforms(&now), ["linux/amd64", "linux/arm/v7"]);
    assert_eq!(asked(&proxy), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_an_expired_tag_is_answered_at_once_for_one_head() {
    let registry = Registry::start(RegistryOptions::plain());
    let first = push(&registry, "burst:v1", ImageSpec::multi_arch(), "burst");
    let proxy = CountingProxy::start(registry.addr()).await;
    let inspector = inspector(
        settings_for(&proxy.host()),
        cache(CacheSettings::default().stale_ttl),
    );
    let burst = image(&format!("{}/burst:v1", proxy.host()));
    inspector
        .inspect(&burst, &Credential::Anonymous)
        .await
        .0
        .unwrap();
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    // The registry now never answers a HEAD (until the client gives up).
    proxy.set_fault_rule(|r| {
        if r.method == "HEAD" {
            Fault::Stall
        } else {
            Fault::None
        }
    });
    let lookups = (0..100).map(|_| {
        let (inspector, burst) = (inspector.clone(), burst.clone());
        tokio::spawn(async move { inspector.inspect(&burst, &Credential::Anonymous).await })
    });
    for lookup in futures::future::join_all(lookups).await {
        let (found, outcome) = lookup.unwrap();
        assert_eq!(
            (found.unwrap().digest.clone(), outcome),
            (first.clone(), CacheOutcome::Hit)
        );
    }
    eventually("the revalidating HEAD", || asked(&proxy).1 == 1).await;
    let pending = proxy.requests().pop().unwrap();
    assert_eq!(
        (pending.method.as_str(), pending.status),
        ("HEAD", None),
        "every review was answered while the HEAD was still unanswered"
    );
    // The HEAD times out (requestTimeout 2 s): the registry is down for
    // now, so the last answer goes on being served, and it is not asked
    // again before failureTtl.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (found, _) = inspector.inspect(&burst, &Credential::Anonymous).await;
    assert_eq!(found.unwrap().digest, first);
    assert_eq!(asked(&proxy), (1, 1), "one HEAD for the whole burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_stale_ttl_0_the_review_waits_for_the_head() {
    let registry = Registry::start(RegistryOptions::plain());
    push(&registry, "app:v1", ImageSpec::multi_arch(), "waits");
    let proxy = CountingProxy::start(registry.addr()).await;
    let inspector = inspector(settings_for(&proxy.host()), cache(Duration::ZERO));
    let app = image(&format!("{}/app:v1", proxy.host()));
    let (_, outcome) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(outcome, CacheOutcome::Miss);
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let (found, outcome) = inspector.inspect(&app, &Credential::Anonymous).await;
    assert!(found.is_ok());
    assert_eq!(
        outcome,
        CacheOutcome::Miss,
        "looked up with the review waiting"
    );
    assert_eq!(asked(&proxy), (1, 1), "by a HEAD: the digest is known");
}

/// A registry (or proxy) that answers HEAD without `Docker-Content-Digest`:
/// the GET is sent, and the host is remembered, so the next lookup sends
/// the GET straight away rather than a useless HEAD first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_whose_head_names_no_digest_is_asked_with_get() {
    let registry = Registry::start(RegistryOptions::plain());
    let digest = push(&registry, "app:v1", ImageSpec::multi_arch(), "nodigest");
    let proxy = CountingProxy::start(registry.addr()).await;
    proxy.set_fault_rule(|r| {
        if r.method == "HEAD" {
            Fault::Status(200, vec![])
        } else {
            Fault::None
        }
    });
    let inspector = inspector(settings_for(&proxy.host()), cache(Duration::ZERO));
    let app = image(&format!("{}/app:v1", proxy.host()));
    for round in 1..=3 {
        let (found, outcome) = inspector.inspect(&app, &Credential::Anonymous).await;
        assert_eq!(found.unwrap().digest, digest, "round {round}");
        assert_eq!(outcome, CacheOutcome::Miss);
        tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    }
    assert_eq!(asked(&proxy), (3, 1), "{:#?}", proxy.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_get_budget_a_lookup_fails_with_a_warning_and_known_images_resolve() {
    let registry = Registry::start(RegistryOptions::plain());
    let digests: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|name| {
            push(
                &registry,
                &format!("{name}:v1"),
                ImageSpec::multi_arch(),
                name,
            )
        })
        .collect();
    let proxy = CountingProxy::start(registry.addr()).await;
    let host = proxy.host();
    let mut settings = settings_for(&host);
    settings.manifest_gets_per_hour = [(host.clone(), 2)].into();
    let inspector = inspector(settings, cache(Duration::ZERO));
    let tag = |name: &str| image(&format!("{host}/{name}:v1"));
    for (name, digest) in ["a", "b"].iter().zip(&digests) {
        let (found, _) = inspector.inspect(&tag(name), &Credential::Anonymous).await;
        assert_eq!(&found.unwrap().digest, digest);
    }
    for _ in 0..2 {
        let (refused, _) = inspector.inspect(&tag("c"), &Credential::Anonymous).await;
        let refused = refused.unwrap_err();
        let message = refused.to_string();
        assert!(
            message.starts_with(&format!(
                "registry {host}: archway's manifest GET budget (2/h) is spent; "
            )),
            "{message}"
        );
        assert!(
            message.contains("registry.manifestGetsPerHour"),
            "{message}"
        );
        assert_eq!(refused.metric_label(), "get_budget");
        assert!(
            !refused.is_from_registry(),
            "archway's own limit: not remembered as the registry's failure"
        );
    }
    assert_eq!(asked(&proxy), (2, 0), "no GET past the budget");
    // What archway knows still resolves: a's tag expired, and its HEAD
    // names the digest it knows.
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let (known, _) = inspector.inspect(&tag("a"), &Credential::Anonymous).await;
    assert_eq!(known.unwrap().digest, digests[0]);
    assert_eq!(asked(&proxy), (2, 1), "{:#?}", proxy.requests());

    let text = inspector.metrics().render();
    for series in [
        format!(r#"archway_registry_get_budget_spent_total{{registry="{host}"}} 2"#),
        format!(r#"archway_registry_manifest_requests_total{{registry="{host}",method="GET"}} 2"#),
        format!(r#"archway_registry_manifest_requests_total{{registry="{host}",method="HEAD"}} 1"#),
    ] {
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
}

/// Docker Hub's `ratelimit-remaining`: once the registry says the pulls
/// left are at `registry.pullReserve`, archway sends it no manifest GET
/// (they are the kubelets'), serves what it knows, and resumes when a
/// later answer (a HEAD, which Docker Hub does not count) says more is
/// left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_pull_reserve_archway_leaves_the_last_pulls_to_the_kubelets() {
    let registry = Registry::start(RegistryOptions::plain());
    let digests: Vec<String> = ["a", "b"]
        .iter()
        .map(|name| {
            push(
                &registry,
                &format!("{name}:v1"),
                ImageSpec::multi_arch(),
                name,
            )
        })
        .collect();
    let proxy = CountingProxy::start(registry.addr()).await;
    let host = proxy.host();
    let left = Arc::new(std::sync::Mutex::new("30;w=21600".to_string()));
    let said = left.clone();
    proxy.set_fault_rule(move |request| {
        if request.is_manifest() {
            let value = said.lock().unwrap().clone();
            Fault::AddHeaders(vec![("ratelimit-remaining".into(), value)])
        } else {
            Fault::None
        }
    });
    let mut settings = settings_for(&host);
    settings.pull_reserve = 20;
    let inspector = inspector(settings, cache(Duration::ZERO));
    let tag = |name: &str| image(&format!("{host}/{name}:v1"));

    // 30 left: a GET goes; its answer says 20 are left now.
    *left.lock().unwrap() = "20;w=21600".into();
    let (found, _) = inspector.inspect(&tag("a"), &Credential::Anonymous).await;
    assert_eq!(found.unwrap().digest, digests[0]);
    assert_eq!(asked(&proxy), (1, 0));

    // At the reserve: b is not fetched.
    let (kept, _) = inspector.inspect(&tag("b"), &Credential::Anonymous).await;
    let kept = kept.unwrap_err();
    let message = kept.to_string();
    assert!(
        message.starts_with(&format!(
            "registry {host}: only 20 pulls are left to this address, kept for the nodes' image pulls (registry.pullReserve 20)"
        )),
        "{message}"
    );
    assert_eq!(kept.metric_label(), "pull_reserve");
    assert!(
        !kept.is_from_registry(),
        "not remembered as the registry's failure"
    );
    assert_eq!(asked(&proxy), (1, 0), "no GET at the reserve");

    // What archway knows still resolves, by a HEAD; the HEAD's answer says
    // the window was reset (Docker Hub's limit is per 6 h).
    *left.lock().unwrap() = "100;w=21600".into();
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let (known, _) = inspector.inspect(&tag("a"), &Credential::Anonymous).await;
    assert_eq!(known.unwrap().digest, digests[0]);
    assert_eq!(asked(&proxy), (1, 1));
    // More is left: b is fetched.
    let (found, _) = inspector.inspect(&tag("b"), &Credential::Anonymous).await;
    assert_eq!(found.unwrap().digest, digests[1]);
    assert_eq!(asked(&proxy).0, 2);

    let text = inspector.metrics().render();
    for series in [
        format!(r#"archway_registry_pull_reserve_kept_total{{registry="{host}"}} 1"#),
        format!(r#"archway_registry_pulls_remaining{{registry="{host}"}} 100"#),
    ] {
        assert!(text.contains(&series), "{series} not in:\n{text}");
    }
}

fn basic(username: &str, password: &str) -> Credential {
    Credential::Basic {
        username: username.into(),
        password: password.into(),
    }
}

/// Facts are what archway learned with its own access (here the cluster's
/// credentials file). A pod's credential gets them only once its own HEAD
/// has read the manifest: a wrong one is refused, as if nothing were known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_answer_another_credential_only_after_its_own_head() {
    let registry = Registry::start(RegistryOptions::plain().with_basic_auth("alice", "s3cret"));
    let digest = push(
        &registry,
        "private/app:v1",
        ImageSpec::multi_arch(),
        "private",
    );
    let proxy = CountingProxy::start(registry.addr()).await;
    let host = proxy.host();
    let mut settings = settings_for(&host);
    let config =
        format!(r#"{{"auths": {{"{host}": {{"username": "alice", "password": "s3cret"}}}}}}"#);
    settings.keyring = Keyring::from_docker_config(config.as_bytes()).unwrap();
    let inspector = inspector(settings, cache(Duration::ZERO));
    let tagged = image(&format!("{host}/private/app:v1"));
    let pinned = image(&format!("{host}/private/app@{digest}"));

    // With archway's own access: learned, and the digest then costs nothing.
    inspector
        .inspect(&tagged, &Credential::Anonymous)
        .await
        .0
        .unwrap();
    let before = proxy.requests().len();
    let (found, outcome) = inspector.inspect(&pinned, &Credential::Anonymous).await;
    assert_eq!(
        (found.unwrap().digest.clone(), outcome),
        (digest.clone(), CacheOutcome::Hit)
    );
    assert_eq!(proxy.requests().len(), before, "answered by the facts");

    // A pod's wrong credential is refused by the registry, for the tag and
    // for the digest alike.
    for reference in [&tagged, &pinned] {
        let (refused, _) = inspector.inspect(reference, &basic("alice", "wrong")).await;
        let refused = refused.unwrap_err();
        assert!(
            matches!(
                refused,
                InspectError::Unauthorized {
                    authenticated: true,
                    ..
                }
            ),
            "{reference}: {refused:?}"
        );
    }
    // A right one reads the manifest with its HEAD, and needs no GET.
    proxy.reset();
    for reference in [&tagged, &pinned] {
        let (found, _) = inspector
            .inspect(reference, &basic("alice", "s3cret"))
            .await;
        assert_eq!(found.unwrap().digest, digest, "{reference}");
    }
    let heads = proxy.count(|r| is_manifest("HEAD")(r) && r.status == Some(200));
    assert_eq!((proxy.count(is_manifest("GET")), heads), (0, 2));
}

/// The facts' ConfigMap on the real control plane, with the shipped RBAC
/// (deploy/base/rbac.yaml) as the only permissions: the leader writes what
/// it learned; a replica that is not leading reads it (at start and on
/// change) and writes nothing; a replica started afresh from it asks the
/// registry no GET for those images; and a new leader writes what it
/// learned itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_writes_the_facts_and_a_replica_that_is_not_leading_only_reads_them() {
    install_crypto();
    // Not a World: the replicas are in-process inspectors, with archway's RBAC.
    let plane = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .unwrap();
    let kubeconfig = plane.archway_account();
    let client = client_from_kubeconfig(&kubeconfig).await;
    let admin = plane.client().await;
    let config_maps: Api<ConfigMap> = Api::namespaced(admin, "archway");
    let target = Target::from_settings(
        &archway::lookup::registry::facts::FactsSettings {
            namespace: Some("archway".into()),
            write_interval: Duration::from_secs(1),
            ..Default::default()
        },
        "archway",
    );
    assert_eq!(target.name, "archway-facts");

    let registry = Registry::start(RegistryOptions::plain());
    let names = ["one", "two", "three", "four"];
    for name in names {
        push(
            &registry,
            &format!("{name}:v1"),
            ImageSpec::multi_arch(),
            name,
        );
    }
    let proxy = CountingProxy::start(registry.addr()).await;
    let tag = |name: &str| image(&format!("{}/{name}:v1", proxy.host()));
    let settings = settings_for(&proxy.host());
    let new_replica = || {
        let facts = Arc::new(Facts::new(64 * 1024));
        let inspector = Inspector::with_facts(
            RegistryClient::new(settings.clone()).unwrap(),
            cache(CacheSettings::default().stale_ttl),
            facts.clone(),
        );
        (facts, inspector)
    };
    let start = |facts: Arc<Facts>, leading: tokio::sync::watch::Receiver<bool>| {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shutdown = async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let task = tokio::spawn(configmap::run(
            client.clone(),
            facts,
            target.clone(),
            leading,
            Arc::default(),
            shutdown,
        ));
        (stop, task)
    };
    let writes = || {
        plane
            .audit_events()
            .iter()
            .filter(|e| {
                e["objectRef"]["resource"] == "configmaps"
                    && e["objectRef"]["name"] == "archway-facts"
                    && matches!(e["verb"].as_str(), Some("create" | "update"))
                    && e["stage"] == "ResponseComplete"
                    && e["responseStatus"]["code"]
                        .as_u64()
                        .is_some_and(|c| c < 300)
            })
            .count()
    };
    let stored = || async {
        config_maps
            .get_opt("archway-facts")
            .await
            .unwrap()
            .and_then(|c| c.data)
            .and_then(|mut data| data.remove(DATA_KEY))
    };

    // The leader learns three images (three GETs) and writes them.
    let (leader_facts, leader) = new_replica();
    let (_leads, leading) = tokio::sync::watch::channel(true);
    let (stop_leader, leader_task) = start(leader_facts.clone(), leading);
    for name in &names[..3] {
        leader
            .inspect(&tag(name), &Credential::Anonymous)
            .await
            .0
            .unwrap();
    }
    assert_eq!(asked(&proxy), (3, 0));
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Some(text) = stored().await
            && Facts::decode(&text).map(|s| s.refused) == Ok(0)
            && names[..3]
                .iter()
                .all(|n| text.contains(&format!("/{n}:v1")))
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the leader never wrote its facts"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("archway-facts: {text}");
    stop_leader.send_replace(true);
    leader_task.await.unwrap();

    // A replica started afresh, not leading: it reads them at start, and
    // then the three images cost it no GET (their tags expired: a HEAD each).
    let (facts, replica) = new_replica();
    let (leads, leading) = tokio::sync::watch::channel(false);
    let (stop_replica, replica_task) = start(facts.clone(), leading);
    tokio::time::timeout(Duration::from_secs(10), facts.loaded())
        .await
        .expect("the facts are read at start");
    assert_eq!(facts.len(), (3, 3));
    proxy.reset();
    for name in &names[..3] {
        let (found, _) = replica.inspect(&tag(name), &Credential::Anonymous).await;
        found.unwrap();
    }
    assert_eq!(asked(&proxy).0, 0, "no GET for what the leader learned");

    // It learns a fourth image, but does not lead: it writes nothing.
    let written = writes();
    assert!(written >= 1);
    replica
        .inspect(&tag("four"), &Credential::Anonymous)
        .await
        .0
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        writes(),
        written,
        "a replica that is not leading never writes"
    );
    assert!(!stored().await.unwrap().contains("/four:v1"));

    // Another change of the ConfigMap (a leader elsewhere) is read on the fly.
    let other = Facts::decode(&text).unwrap();
    let elsewhere = Facts::new(64 * 1024);
    let extra = image("registry.example/elsewhere:v1");
    elsewhere.record(
        &extra,
        &Arc::new(archway::lookup::registry::ImagePlatforms {
            digest: format!("sha256:{}", "e".repeat(64)),
            platforms: Arc::new([archway::decision::platform::Platform::linux("arm64")].into()),
            shape: archway::lookup::registry::ManifestShape::Index,
            endpoint: "registry.example".into(),
        }),
        archway::lookup::registry::facts::unix_millis(),
    );
    elsewhere.merge(other, archway::lookup::registry::facts::unix_millis());
    let mut changed = config_maps.get("archway-facts").await.unwrap();
    changed.data = Some([(DATA_KEY.to_string(), elsewhere.encode().0)].into());
    config_maps
        .replace("archway-facts", &Default::default(), &changed)
        .await
        .unwrap();
    eventually("the change to be read", || {
        facts
            .platforms(&extra, &format!("sha256:{}", "e".repeat(64)))
            .is_some()
    })
    .await;

    // Leading now, it writes what it learned itself.
    leads.send_replace(true);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !stored().await.unwrap().contains("/four:v1") {
        assert!(Instant::now() < deadline, "the new leader never wrote");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let text = stored().await.unwrap();
    assert!(text.contains("registry.example/elsewhere:v1"), "{text}");
    stop_replica.send_replace(true);
    replica_task.await.unwrap();
}

/// A replica's count of its questions to the leader that ended `reason`.
fn peer_lookups(inspector: &Inspector, reason: &str) -> u64 {
    (inspector.metrics().peer_lookups)
        .get_or_create(&archway::metrics::ReasonLabels {
            reason: reason.into(),
        })
        .get()
}

/// Each replica records into its own metrics, as each process does.
fn replica_settings(host: &str) -> RegistrySettings {
    RegistrySettings {
        metrics: Arc::default(),
        ..settings_for(host)
    }
}

/// Looks `image` up `times` times on each inspector at once; the digests
/// they answered.
async fn at_once(inspectors: &[&Inspector], image: &ImageRef, times: usize) -> Vec<String> {
    let lookups = inspectors.iter().flat_map(|inspector| {
        (0..times).map(|_| {
            let (inspector, image) = ((*inspector).clone(), image.clone());
            tokio::spawn(async move { inspector.inspect(&image, &Credential::Anonymous).await })
        })
    });
    futures::future::join_all(lookups.collect::<Vec<_>>())
        .await
        .into_iter()
        .map(|lookup| lookup.unwrap().0.unwrap().digest.clone())
        .collect()
}

/// Two replicas (issue 25): a follower asks the leader (`lookup::peer`)
/// for a tag it knows nothing of, and for a digest its HEAD named that it
/// does not know; the leader's own lookups join the same ones. So a new
/// tag, and a tag that moved, cost one GET between them, however the
/// reviews are spread. A process serving another key is not answered,
/// and asks the registry itself; so does a follower whose leader is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_digest_costs_one_get_among_replicas_and_whoever_cannot_ask_the_leader_asks_the_registry()
 {
    use support::peers::{PeerKeys, ServedReplica};
    let registry = Registry::start(RegistryOptions::plain());
    let first = push(&registry, "shared:v1", ImageSpec::multi_arch(), "shared");
    let proxy = CountingProxy::start(registry.addr()).await;
    let keys = PeerKeys::new();
    let stale_ttl = CacheSettings::default().stale_ttl;
    let (leader, _leading) = keys.replica(
        inspector(replica_settings(&proxy.host()), cache(stale_ttl)),
        None,
    );
    let served = ServedReplica::start(leader.clone(), &keys).await;
    let (follower, _) = keys.replica(
        inspector(replica_settings(&proxy.host()), cache(stale_ttl)),
        Some(served.address()),
    );
    let shared = image(&format!("{}/shared:v1", proxy.host()));

    // A new tag, 20 reviews on each replica at once.
    let digests = at_once(&[&leader, &follower], &shared, 20).await;
    assert!(digests.iter().all(|d| *d == first), "{digests:?}");
    let (gets, heads) = asked(&proxy);
    eprintln!(
        "new tag: GETs {gets}, HEADs {heads}; follower asked the leader: answered {}, failed {}",
        peer_lookups(&follower, "answered"),
        peer_lookups(&follower, "failed"),
    );
    assert_eq!(gets, 1, "one GET between the replicas");
    assert_eq!(heads, 0, "a new tag is asked by name, no HEAD first");
    assert_eq!(peer_lookups(&follower, "answered"), 1);

    // The tag moves: both revalidate with a HEAD, and the new digest costs
    // one GET between them.
    let moved = push(&registry, "shared:v1", ImageSpec::arm_v7(), "moved");
    tokio::time::sleep(TAG_TTL + Duration::from_millis(100)).await;
    let started = Instant::now();
    loop {
        let digests = at_once(&[&leader, &follower], &shared, 5).await;
        if digests.iter().all(|d| *d == moved) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{digests:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (gets, heads) = asked(&proxy);
    eprintln!("moved tag: GETs {gets}, HEADs {heads}");
    assert_eq!(gets, 2, "the moved tag cost one GET between the replicas");
    assert_eq!(peer_lookups(&follower, "answered"), 2);

    // Only a replica of this key is answered.
    let url = format!(
        "https://{}:{}{}",
        support::webhook::SERVICE_NAME,
        served.addr.port(),
        archway::lookup::peer::PATH
    );
    let client = support::webhook::client_for(&keys.ca.cert_pem, served.addr, true);
    let ask = |token: Option<String>, image: String| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "image": image }).to_string());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let pinned = format!("{}/shared@{moved}", proxy.host());
    assert_eq!(ask(None, pinned.clone()).await.0, 401);
    let other = PeerKeys::new();
    let (status, why) = ask(
        Some(other.certificate().peer_secret().token()),
        pinned.clone(),
    )
    .await;
    assert_eq!(
        (status, why.as_str()),
        (401, "only a replica serving this archway's key may ask")
    );
    let token = keys.certificate().peer_secret().token();
    let (status, why) = ask(Some(token.clone()), format!("{shared}@{moved}")).await;
    assert_eq!(status, 400, "a tag and a digest at once: {why}");
    let (status, answer) = ask(Some(token.clone()), shared.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["digest"], moved.as_str());
    let fresh_for = answer["freshForMs"].as_u64().unwrap();
    assert!(
        fresh_for <= TAG_TTL.as_millis() as u64,
        "a tag's answer is fresh no longer than the leader holds it: {fresh_for}"
    );
    let (status, answer) = ask(Some(token), pinned).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("linux/arm/v7"), "{answer}");
    assert_eq!(asked(&proxy).0, 2, "answered from what the leader knows");

    // A process with another key cannot make the leader look anything up:
    // the handshake fails (its certificate is not the leader's), and it
    // asks the registry itself.
    let (stranger, _) = other.replica(
        inspector(replica_settings(&proxy.host()), cache(stale_ttl)),
        Some(served.address()),
    );
    push(&registry, "other:v1", ImageSpec::multi_arch(), "other");
    let other_tag = image(&format!("{}/other:v1", proxy.host()));
    stranger
        .inspect(&other_tag, &Credential::Anonymous)
        .await
        .0
        .unwrap();
    assert_eq!(peer_lookups(&stranger, "failed"), 1);
    assert_eq!(asked(&proxy).0, 3, "the stranger's own GET");

    // The leader gone: the follower asks the registry itself.
    served.stop().await;
    push(&registry, "late:v1", ImageSpec::multi_arch(), "late");
    let late = image(&format!("{}/late:v1", proxy.host()));
    follower
        .inspect(&late, &Credential::Anonymous)
        .await
        .0
        .unwrap();
    assert_eq!(peer_lookups(&follower, "failed"), 1);
    assert_eq!(asked(&proxy).0, 4, "the follower's own GET");
}

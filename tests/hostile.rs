//! Hostile pod authors, rounds 2 and 3 (issues 14 and 24): what a pod spec
//! or an image reference carries reaches archway, so every path is
//! bounded: where it connects, how much it holds, how many requests it
//! makes, and for whom. Against a real registry, a real TLS webhook and
//! loopback servers that count what reaches them (and drip what they send).

use archway_testkit as support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use archway::config::Config;
use archway::lookup::cache::{CacheSettings, Inspector};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::{Credential, InspectError, RegistryClient, RegistrySettings};
use serde_json::json;
use support::webhook::{TestWebhook, pod_review};
use support::{CountingProxy, Fault, ImageSpec, Registry, RegistryOptions, build_layout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn image(s: &str) -> ImageRef {
    s.parse().unwrap()
}

fn inspector(settings: RegistrySettings, cache: CacheSettings) -> Inspector {
    install_crypto();
    Inspector::new(RegistryClient::new(settings).unwrap(), cache)
}

fn plain(hosts: &[String]) -> RegistrySettings {
    RegistrySettings {
        insecure_hosts: hosts.to_vec(),
        request_timeout: Duration::from_secs(5),
        ..RegistrySettings::default()
    }
}

/// Item 1: every spelling of a loopback or metadata address is refused
/// before anything is sent, with the same answer for a closed port and an
/// open one; a configured `host:port` allows that port only.
#[tokio::test]
async fn other_spellings_of_internal_addresses_are_refused_without_a_connection() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        dir.path(),
        &ImageSpec::multi_arch().with_salt("hostile-guard"),
    );
    registry.push(&layout.dir, "held/multi:v1", support::Format::Oci);
    let proxy = CountingProxy::start(registry.addr()).await;
    let open = proxy.addr().port();
    // Nothing configured: the guard alone.
    let guarded = inspector(RegistrySettings::default(), CacheSettings::default());
    for host in [
        "127.0.0.1",
        "2130706433",
        "0x7f000001",
        "0x7f.1",
        "127.1",
        "0177.0.0.1",
        "0",
    ] {
        let mut answers = Vec::new();
        for port in [open, 1] {
            let (answer, _) = guarded
                .inspect(
                    &image(&format!("{host}:{port}/held/multi:v1")),
                    &Credential::Anonymous,
                )
                .await;
            let error = answer.expect_err(host);
            assert_eq!(error.metric_label(), "refused", "{host}:{port}: {error}");
            answers.push(error.to_string().replace(&format!(":{port}"), ":PORT"));
        }
        assert_eq!(
            answers[0], answers[1],
            "{host}: a closed port must answer like an open one"
        );
    }
    for metadata in [
        "169.254.169.254",
        "2852039166",
        "0xa9fea9fe",
        "0251.0376.0251.0376",
    ] {
        let (answer, _) = guarded
            .inspect(
                &image(&format!("{metadata}:80/latest/meta-data:v1")),
                &Credential::Anonymous,
            )
            .await;
        assert_eq!(answer.unwrap_err().metric_label(), "refused", "{metadata}");
    }
    assert_eq!(proxy.requests().len(), 0, "nothing reached the registry");

    // Allowed on the proxy's port only: another spelling of it passes, the
    // registry's own port (same address) does not.
    let allowed = inspector(
        plain(&[format!("127.0.0.1:{open}"), format!("0x7f.1:{open}")]),
        CacheSettings::default(),
    );
    let (found, _) = allowed
        .inspect(
            &image(&format!("127.0.0.1:{open}/held/multi:v1")),
            &Credential::Anonymous,
        )
        .await;
    found.expect("the configured host:port");
    let direct = registry.addr().port();
    let (other_port, _) = allowed
        .inspect(
            &image(&format!("127.0.0.1:{direct}/held/multi:v1")),
            &Credential::Anonymous,
        )
        .await;
    assert_eq!(other_port.unwrap_err().metric_label(), "refused");
    let (other_spelling, _) = allowed
        .inspect(
            &image(&format!("2130706433:{direct}/held/multi:v1")),
            &Credential::Anonymous,
        )
        .await;
    assert_eq!(other_spelling.unwrap_err().metric_label(), "refused");
}

/// A loopback registry stand-in that answers 404 after `delay` and
/// records how many requests it held at once.
struct SlowServer {
    addr: std::net::SocketAddr,
    requests: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
}

impl SlowServer {
    async fn start(delay: Duration) -> SlowServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let active = Arc::new(AtomicUsize::new(0));
        let (r, p) = (requests.clone(), peak.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let (r, p, active) = (r.clone(), p.clone(), active.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        r.fetch_add(1, Ordering::SeqCst);
                        let now = active.fetch_add(1, Ordering::SeqCst) + 1;
                        p.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        active.fetch_sub(1, Ordering::SeqCst);
                        let answer = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
                        if stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SlowServer {
            addr,
            requests,
            peak,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// Item 8: lookups in flight are bounded per host and in total, and a
/// review's lookups take turns with other reviews': a pod of 64 images
/// does not make a pod of one wait for all of them.
#[tokio::test]
async fn lookups_are_bounded_and_a_big_pod_does_not_starve_a_small_one() {
    let server = SlowServer::start(Duration::from_millis(40)).await;
    let host = server.host();
    let settings = RegistrySettings {
        max_concurrent_lookups: 8,
        max_concurrent_lookups_per_host: 4,
        ..plain(std::slice::from_ref(&host))
    };
    let inspector = inspector(settings, CacheSettings::default());
    let big = inspector.requester("big");
    let started = Instant::now();
    let big_pod: Vec<_> = (0..64)
        .map(|i| {
            let (inspector, big) = (inspector.clone(), big.clone());
            let reference = image(&format!("{host}/app:tag{i}"));
            tokio::spawn(async move {
                let _ = inspector
                    .inspect_for(&reference, &Credential::Anonymous, &big)
                    .await;
                started.elapsed()
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let small = inspector.requester("small");
    let small_started = Instant::now();
    let (answer, _) = inspector
        .inspect_for(
            &image(&format!("{host}/other:v1")),
            &Credential::Anonymous,
            &small,
        )
        .await;
    let small_took = small_started.elapsed();
    assert!(
        matches!(answer, Err(InspectError::NotFound { .. })),
        "{answer:?}"
    );
    let mut big_took = Duration::ZERO;
    for lookup in big_pod {
        big_took = big_took.max(lookup.await.unwrap());
    }
    assert!(
        server.peak.load(Ordering::SeqCst) <= 4,
        "peak {}",
        server.peak.load(Ordering::SeqCst)
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 65);
    // 64 lookups four at a time take at least 16 rounds of 40 ms; the
    // small pod waits for about one.
    assert!(big_took >= Duration::from_millis(600), "{big_took:?}");
    assert!(
        small_took < big_took / 3,
        "small {small_took:?}, big {big_took:?}"
    );
}

/// Item 8: lookups waiting for a registry are served in turn, round robin
/// over namespaces: a flood of 24 pods in 24 namespaces puts a review in
/// another namespace behind about one lookup per busy namespace, not behind
/// every lookup queued before it (first come, first served: about 90).
#[tokio::test]
async fn a_flood_in_many_namespaces_does_not_hold_up_another_namespace() {
    let server = SlowServer::start(Duration::from_millis(20)).await;
    let host = server.host();
    let settings = RegistrySettings {
        max_concurrent_lookups: 8,
        max_concurrent_lookups_per_host: 2,
        ..plain(std::slice::from_ref(&host))
    };
    let inspector = inspector(settings, CacheSettings::default());
    let flood: Vec<_> = (0..24)
        .flat_map(|p| {
            let requester = inspector.requester(&format!("ns{p}"));
            let (inspector, host) = (inspector.clone(), host.clone());
            (0..8).map(move |i| {
                let (inspector, requester) = (inspector.clone(), requester.clone());
                let reference = image(&format!("{host}/app:p{p}i{i}"));
                tokio::spawn(async move {
                    inspector
                        .inspect_for(&reference, &Credential::Anonymous, &requester)
                        .await
                })
            })
        })
        .collect();
    // Every namespace has its lookups in line (each review four at a time).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = server.requests.load(Ordering::SeqCst);
    let other = inspector.requester("other");
    let (answer, _) = inspector
        .inspect_for(
            &image(&format!("{host}/other:v1")),
            &Credential::Anonymous,
            &other,
        )
        .await;
    assert!(
        matches!(answer, Err(InspectError::NotFound { .. })),
        "{answer:?}"
    );
    let ahead = server.requests.load(Ordering::SeqCst) - before - 1;
    eprintln!("lookups served before another namespace's: {ahead}");
    assert!(ahead <= 24 + 2, "{ahead} lookups went first");
    for lookup in flood {
        let _ = lookup.await.unwrap();
    }
    assert_eq!(server.requests.load(Ordering::SeqCst), 24 * 8 + 1);
}

/// Item 9: one namespace's misses are limited; another namespace still
/// gets its lookups, and a refused one is not remembered.
#[tokio::test]
async fn one_namespace_cannot_spend_the_registry_for_everyone() {
    let server = SlowServer::start(Duration::ZERO).await;
    let host = server.host();
    let cache = CacheSettings {
        namespace_misses_per_second: 1,
        namespace_miss_burst: 3,
        ..CacheSettings::default()
    };
    let inspector = inspector(plain(std::slice::from_ref(&host)), cache);
    let noisy = inspector.requester("noisy");
    let mut throttled = 0;
    for i in 0..20 {
        let (answer, _) = inspector
            .inspect_for(
                &image(&format!("{host}/app:n{i}")),
                &Credential::Anonymous,
                &noisy,
            )
            .await;
        if matches!(answer, Err(InspectError::Throttled { .. })) {
            throttled += 1;
        }
    }
    assert_eq!(throttled, 17);
    assert_eq!(server.requests.load(Ordering::SeqCst), 3);
    let quiet = inspector.requester("quiet");
    let (answer, _) = inspector
        .inspect_for(
            &image(&format!("{host}/app:n19")),
            &Credential::Anonymous,
            &quiet,
        )
        .await;
    assert!(
        matches!(answer, Err(InspectError::NotFound { .. })),
        "{answer:?}: the throttled answer was not cached"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 4);
}

/// Item 4: the cache holds at most its configured bytes, whatever the
/// number of distinct images pods name.
#[tokio::test]
async fn the_cache_is_bounded_by_bytes() {
    let server = SlowServer::start(Duration::ZERO).await;
    let host = server.host();
    let cache = CacheSettings {
        max_bytes: 64 * 1024,
        ..CacheSettings::default()
    };
    let inspector = inspector(plain(std::slice::from_ref(&host)), cache);
    let long_tag = "t".repeat(120);
    for i in 0..600 {
        let reference = image(&format!("{host}/{}/app:{long_tag}{i}", "r".repeat(200)));
        let _ = inspector.inspect(&reference, &Credential::Anonymous).await;
    }
    inspector.run_pending_tasks().await;
    assert!(
        inspector.weighted_size() <= 64 * 1024,
        "{}",
        inspector.weighted_size()
    );
    assert!(
        inspector.entry_count() < 600 / 4,
        "{} entries",
        inspector.entry_count()
    );
}

fn webhook_config(edit: impl FnOnce(&mut Config)) -> Config {
    let mut config =
        Config::from_yaml("policySource: static\nnamespaces: { shop: { mode: enforce } }").unwrap();
    edit(&mut config);
    config
}

/// A TLS connection to the webhook, handshake done.
async fn tls_connect(
    webhook: &TestWebhook,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let config = support::http::rustls_client_config(&webhook.ca.cert_pem);
    let connector = tokio_rustls::TlsConnector::from(config);
    let tcp = tokio::net::TcpStream::connect(webhook.addr).await?;
    let name = rustls::pki_types::ServerName::try_from(support::webhook::SERVICE_NAME).unwrap();
    connector.connect(name, tcp).await
}

/// Item 5: large bodies past the budget get 503 at once; a small review
/// still gets its answer.
#[tokio::test]
async fn bodies_past_the_budget_are_refused_at_once_and_small_reviews_still_pass() {
    let webhook = TestWebhook::start(webhook_config(|c| {
        c.server.max_body_bytes_in_flight = 4 * 1024 * 1024;
    }))
    .await;
    // A large body announced and only begun: it holds its share.
    let mut held = tls_connect(&webhook).await.unwrap();
    let head = format!(
        "POST /mutate HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 2900000\r\n\r\n{{",
        support::webhook::SERVICE_NAME
    );
    held.write_all(head.as_bytes()).await.unwrap();
    held.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let large = vec![b' '; 2_900_000];
    let started = Instant::now();
    let (status, _, _) = webhook.post(&webhook.client, large).await;
    assert_eq!(status, 503);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "registry.invalid/app:v1"}]}});
    let review = pod_review("u1", "default", &pod);
    let (status, answer, _) = webhook
        .post(&webhook.client, serde_json::to_vec(&review).unwrap())
        .await;
    assert_eq!(status, 200, "{answer}");
    drop(held);
    webhook.stop().await;
}

/// Item 6: a connection that says nothing is closed; connections are
/// capped, the next one waits until a place frees.
#[tokio::test]
async fn silent_connections_are_closed_and_capped() {
    let webhook = TestWebhook::start(webhook_config(|c| c.server.max_connections = 2)).await;
    let started = Instant::now();
    let mut first = tls_connect(&webhook).await.unwrap();
    let _second = tls_connect(&webhook).await.unwrap();
    let third = tokio::time::timeout(Duration::from_secs(1), tls_connect(&webhook)).await;
    assert!(
        third.is_err(),
        "a third connection is not served while two are open"
    );
    // The first says nothing: closed after the 10 s allowed for a request.
    let mut byte = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(20), first.read(&mut byte)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let closed_after = started.elapsed();
    assert!(
        closed_after >= Duration::from_secs(9) && closed_after < Duration::from_secs(15),
        "{closed_after:?}"
    );
    // Its place is free again.
    tokio::time::timeout(Duration::from_secs(5), tls_connect(&webhook))
        .await
        .expect("served once a place is free")
        .unwrap();
    webhook.stop().await;
}

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// A registry stand-in whose manifests under `/v2/drip/` come chunked (no
/// length, so each may still grow to the 4 MiB limit) at `chunk` bytes
/// every `interval`, to 4 MiB; everything else goes to `upstream`.
async fn dripping(
    upstream: std::net::SocketAddr,
    chunk: usize,
    interval: Duration,
) -> CountingProxy {
    let proxy = CountingProxy::start(upstream).await;
    proxy.set_fault_rule(move |r| {
        if r.path.starts_with("/v2/drip/") && r.is_manifest() {
            Fault::Drip {
                status: 200,
                headers: vec![("content-type".into(), OCI_INDEX.into())],
                chunk,
                interval,
                total: 4 * 1024 * 1024,
            }
        } else {
            Fault::None
        }
    });
    proxy
}

/// Issue 24, item 3: answers that drip a byte a second used to reserve
/// the 4 MiB limit each from the 8 MiB budget of registry bytes in flight,
/// so two of them made a review in another namespace, whose registry had
/// its answer ready, wait past its 2.5 s time budget and go unplaced. Bytes
/// are now charged as they arrive and one host holds at most half: with 2,
/// and with 20, drips running, the other namespace's cold review (a real
/// registry, an image never asked for) is placed within its time budget.
#[tokio::test]
async fn slow_drips_leave_another_namespace_s_cold_review_its_time_budget() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        dir.path(),
        &ImageSpec::multi_arch().with_salt("hostile-drips"),
    );
    // Each round starts archway afresh: the image is cold in both.
    registry.push(&layout.dir, "victim/multi:v1", support::Format::Oci);
    let drips = dripping(registry.addr(), 1, Duration::from_secs(1)).await;
    for count in [2usize, 20] {
        let config = Config::from_yaml(&format!(
            "targetArchitecture: arm64\ntimeBudget: 2500ms\npolicySource: static\n\
             namespaces:\n  victim: {{ mode: enforce, rollout: 100 }}\n  \
             attacker: {{ mode: enforce, rollout: 100 }}\n\
             registry:\n  insecure: [\"{}\", \"{}\"]\n  requestTimeout: 30s\n",
            registry.host(),
            drips.host()
        ))
        .unwrap();
        let webhook = TestWebhook::start(config).await;
        let before = drips.count(|r| r.path.starts_with("/v2/drip/"));
        let attacks: Vec<_> = (0..count)
            .map(|i| {
                let pod = json!({"metadata": {"name": format!("a{i}")}, "spec": {"containers": [
                    {"name": "c", "image": format!("{}/drip/n{count}i{i}:v1", drips.host())}]}});
                let body =
                    serde_json::to_vec(&pod_review(&format!("a{i}"), "attacker", &pod)).unwrap();
                let (client, url) = (webhook.client.clone(), webhook.url());
                tokio::spawn(async move {
                    let _ = client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                })
            })
            .collect();
        // Every drip the registry's host may serve at once (16) is flowing.
        let started = Instant::now();
        while drips.count(|r| r.path.starts_with("/v2/drip/")) - before < count.min(16) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the drips did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pod = json!({"metadata": {"name": "victim"}, "spec": {"containers": [
            {"name": "c", "image": format!("{}/victim/multi:v1", registry.host())}]}});
        let answer = webhook.review(&pod_review("victim", "victim", &pod)).await;
        eprintln!(
            "{count} drips: the victim's warnings {}",
            answer["response"]["warnings"]
        );
        assert!(
            answer["response"]["patch"].is_string(),
            "{count} drips: the victim was not placed: {answer}"
        );
        for attack in attacks {
            attack.abort();
        }
        webhook.stop().await;
    }
}

/// Issue 24, item 3: an answer slower than 1 KiB a second, after its first
/// second, is given up (`too_slow`), long before the request timeout; one
/// at 2.5 KiB a second is read to its end (and found unreadable: it is all
/// `x`).
#[tokio::test]
async fn an_answer_slower_than_the_minimum_rate_is_given_up() {
    let server = SlowServer::start(Duration::ZERO).await;
    let slow = dripping(server.addr, 16, Duration::from_millis(100)).await;
    let fast_enough = CountingProxy::start(server.addr).await;
    fast_enough.set_fault_rule(|r| {
        if r.is_manifest() {
            Fault::Drip {
                status: 200,
                headers: vec![("content-type".into(), OCI_INDEX.into())],
                chunk: 256,
                interval: Duration::from_millis(100),
                total: 8 * 1024,
            }
        } else {
            Fault::None
        }
    });
    let settings = RegistrySettings {
        request_timeout: Duration::from_secs(30),
        ..plain(&[slow.host(), fast_enough.host()])
    };
    let inspector = inspector(settings, CacheSettings::default());
    let (answer, _) = inspector
        .inspect(
            &image(&format!("{}/drip/app:v1", slow.host())),
            &Credential::Anonymous,
        )
        .await;
    let error = answer.unwrap_err();
    assert_eq!(error.metric_label(), "too_slow", "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "registry {} sent the manifest or config slower than 1024 bytes a second",
            slow.host()
        )
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = slow.dripped_bytes();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        slow.dripped_bytes(),
        settled,
        "the answer is no longer read"
    );
    assert!(settled < 1024, "{settled} bytes");

    let (answer, _) = inspector
        .inspect(
            &image(&format!("{}/app:v1", fast_enough.host())),
            &Credential::Anonymous,
        )
        .await;
    let error = answer.unwrap_err();
    assert_eq!(error.metric_label(), "bad_manifest", "{error}");
    assert_eq!(fast_enough.dripped_bytes(), 8 * 1024, "read to its end");
}

//! Registry inspection against a real CNCF registry, filled by skopeo.

use archway_testkit as support;

use std::sync::OnceLock;
use std::time::Duration;

use archway::lookup::cache::{CacheOutcome, CacheSettings, Inspector};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::{
    Credential, InspectError, Keyring, ManifestShape, RegistryClient, RegistrySettings,
};
use support::{CountingProxy, Format, ImageSpec, Registry, RegistryOptions, build_layout};

/// One registry per test binary, filled once with every shape.
struct Fixture {
    registry: Registry,
    digests: std::collections::BTreeMap<&'static str, String>,
    _layouts: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let registry = Registry::start(RegistryOptions::plain());
        let layouts = tempfile::tempdir().unwrap();
        let mut digests = std::collections::BTreeMap::new();
        let shapes: [(&str, ImageSpec, Format); 8] = [
            (
                "demo:v1",
                ImageSpec::multi_arch_with_attestation(),
                Format::Oci,
            ),
            ("docker-list:v1", ImageSpec::multi_arch(), Format::V2s2),
            ("oci-single:amd64", ImageSpec::single("amd64"), Format::Oci),
            (
                "docker-single:arm64",
                ImageSpec::single("arm64"),
                Format::V2s2,
            ),
            ("armv7:v1", ImageSpec::arm_v7(), Format::Oci),
            ("windows:v1", ImageSpec::with_windows(), Format::V2s2),
            (
                "burst:v1",
                ImageSpec::multi_arch().with_salt("burst"),
                Format::Oci,
            ),
            (
                "cached:v1",
                ImageSpec::multi_arch().with_salt("cached"),
                Format::Oci,
            ),
        ];
        for (reference, spec, format) in shapes {
            let dir = layouts.path().join(reference.replace(':', "-"));
            let layout = build_layout(&dir, &spec);
            digests.insert(reference, registry.push(&layout.dir, reference, format));
        }
        Fixture {
            registry,
            digests,
            _layouts: layouts,
        }
    })
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn settings_for(hosts: &[String]) -> RegistrySettings {
    RegistrySettings {
        insecure_hosts: hosts.to_vec(),
        request_timeout: Duration::from_secs(5),
        ..RegistrySettings::default()
    }
}

fn inspector(settings: RegistrySettings) -> Inspector {
    install_crypto();
    Inspector::new(
        RegistryClient::new(settings).unwrap(),
        CacheSettings::default(),
    )
}

fn image(s: &str) -> ImageRef {
    s.parse().unwrap()
}

fn platforms(found: &archway::lookup::registry::ImagePlatforms) -> Vec<String> {
    found.platforms.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn every_shape_gives_its_exact_platforms() {
    let fx = fixture();
    let host = fx.registry.host();
    let inspector = inspector(settings_for(std::slice::from_ref(&host)));
    let cases: [(&str, &[&str], ManifestShape); 6] = [
        (
            "demo:v1",
            &["linux/amd64", "linux/arm64"],
            ManifestShape::Index,
        ),
        (
            "docker-list:v1",
            &["linux/amd64", "linux/arm64"],
            ManifestShape::Index,
        ),
        ("oci-single:amd64", &["linux/amd64"], ManifestShape::Single),
        (
            "docker-single:arm64",
            &["linux/arm64"],
            ManifestShape::Single,
        ),
        (
            "armv7:v1",
            &["linux/amd64", "linux/arm/v7"],
            ManifestShape::Index,
        ),
        (
            "windows:v1",
            &["linux/amd64", "windows/amd64"],
            ManifestShape::Index,
        ),
    ];
    for (reference, expected, shape) in cases {
        let (found, _) = inspector
            .inspect(
                &image(&format!("{host}/{reference}")),
                &Credential::Anonymous,
            )
            .await;
        let found = found.unwrap_or_else(|e| panic!("{reference}: {e}"));
        assert_eq!(platforms(&found), expected, "{reference}");
        assert_eq!(found.shape, shape, "{reference}");
        assert_eq!(
            found.digest, fx.digests[reference],
            "{reference}: digest of what was pushed"
        );
    }
}

#[tokio::test]
async fn a_digest_reference_is_resolved_by_digest_and_wins_over_the_tag() {
    let fx = fixture();
    let host = fx.registry.host();
    let inspector = inspector(settings_for(std::slice::from_ref(&host)));
    let digest = &fx.digests["oci-single:amd64"];
    // The tag names another image; the digest is what gets pulled.
    let reference = image(&format!("{host}/oci-single:not-this-tag@{digest}"));
    let (found, _) = inspector.inspect(&reference, &Credential::Anonymous).await;
    assert_eq!(platforms(&found.unwrap()), ["linux/amd64"]);
    let unknown = format!("sha256:{}", "0".repeat(64));
    let (missing, _) = inspector
        .inspect(
            &image(&format!("{host}/oci-single@{unknown}")),
            &Credential::Anonymous,
        )
        .await;
    assert!(
        matches!(missing, Err(InspectError::NotFound { .. })),
        "{missing:?}"
    );
}

#[tokio::test]
async fn failures_name_their_cause() {
    let fx = fixture();
    let host = fx.registry.host();
    let inspector = inspector(settings_for(&[host.clone(), "127.0.0.1:1".into()]));
    let (missing, _) = inspector
        .inspect(&image(&format!("{host}/demo:nope")), &Credential::Anonymous)
        .await;
    let missing = missing.unwrap_err();
    assert!(matches!(missing, InspectError::NotFound { .. }));
    assert_eq!(
        missing.to_string(),
        format!("image not found: registry {host} has no such manifest in demo")
    );

    let (down, _) = inspector
        .inspect(&image("127.0.0.1:1/app:v1"), &Credential::Anonymous)
        .await;
    let down = down.unwrap_err();
    assert_eq!(down.metric_label(), "connect");
    assert!(
        down.to_string()
            .starts_with("cannot reach registry 127.0.0.1:1: "),
        "{down}"
    );
    assert!(
        down.to_string().to_lowercase().contains("refused"),
        "{down}"
    );

    // Not configured as insecure: archway speaks HTTPS to it and fails.
    let mut settings = RegistrySettings::default();
    settings.guard.allowed_hosts.push("127.0.0.1".into());
    let strict = self::inspector(settings);
    let (tls, _) = strict
        .inspect(&image(&format!("{host}/demo:v1")), &Credential::Anonymous)
        .await;
    assert_eq!(tls.unwrap_err().metric_label(), "connect");
}

#[tokio::test]
async fn a_warm_lookup_makes_no_request_and_a_cold_one_only_the_manifest() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    let inspector = inspector(settings_for(&[proxy.host()]));
    let index = image(&format!("{}/cached:v1", proxy.host()));

    let (first, outcome) = inspector.inspect(&index, &Credential::Anonymous).await;
    assert_eq!(platforms(&first.unwrap()), ["linux/amd64", "linux/arm64"]);
    assert_eq!(outcome, CacheOutcome::Miss);
    let cold = proxy.requests();
    eprintln!("cold lookup of an index: {cold:#?}");
    assert_eq!(
        cold.len(),
        1,
        "an index costs one manifest request: {cold:?}"
    );
    assert!(cold[0].is_manifest() && cold[0].method == "GET");
    for media_type in [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ] {
        assert!(
            cold[0].accept.as_deref().unwrap_or("").contains(media_type),
            "Accept lacks {media_type}"
        );
    }

    proxy.reset();
    let (second, outcome) = inspector.inspect(&index, &Credential::Anonymous).await;
    assert!(second.is_ok());
    assert_eq!(outcome, CacheOutcome::Hit);
    assert_eq!(proxy.requests().len(), 0, "a warm lookup makes no request");

    // A single manifest costs the manifest and its config blob, never more.
    proxy.reset();
    let single = image(&format!("{}/docker-single:arm64", proxy.host()));
    let (found, _) = inspector.inspect(&single, &Credential::Anonymous).await;
    assert_eq!(platforms(&found.unwrap()), ["linux/arm64"]);
    let requests = proxy.requests();
    eprintln!("cold lookup of a single manifest: {requests:#?}");
    assert_eq!(
        (
            proxy.count(|r| r.is_manifest()),
            proxy.count(|r| r.is_blob()),
            requests.len()
        ),
        (1, 1, 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_lookups_cost_one_manifest_request() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    // Slow the registry down so all 200 lookups are truly in flight at once.
    proxy.set_fault(support::Fault::Delay(Duration::from_millis(300)));
    let inspector = inspector(settings_for(&[proxy.host()]));
    let burst = image(&format!("{}/burst:v1", proxy.host()));
    let lookups = (0..200).map(|_| {
        let inspector = inspector.clone();
        let burst = burst.clone();
        tokio::spawn(async move { inspector.inspect(&burst, &Credential::Anonymous).await })
    });
    let results = futures::future::join_all(lookups).await;
    let mut misses = 0;
    for result in results {
        let (lookup, outcome) = result.unwrap();
        assert_eq!(platforms(&lookup.unwrap()), ["linux/amd64", "linux/arm64"]);
        misses += usize::from(outcome == CacheOutcome::Miss);
    }
    assert_eq!(proxy.manifest_requests(), 1, "{:?}", proxy.requests());
    assert_eq!(proxy.requests().len(), 1);
    assert_eq!(misses, 1, "one caller did the lookup; 199 shared it");
}

#[tokio::test]
async fn failures_are_cached_briefly() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    install_crypto();
    let inspector = Inspector::new(
        RegistryClient::new(settings_for(&[proxy.host()])).unwrap(),
        CacheSettings {
            failure_ttl: Duration::from_millis(400),
            ..CacheSettings::default()
        },
    );
    let missing = image(&format!("{}/demo:gone", proxy.host()));
    for _ in 0..5 {
        assert!(
            inspector
                .inspect(&missing, &Credential::Anonymous)
                .await
                .0
                .is_err()
        );
    }
    assert_eq!(proxy.requests().len(), 1, "a failing image is not hammered");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        inspector
            .inspect(&missing, &Credential::Anonymous)
            .await
            .0
            .is_err()
    );
    assert_eq!(
        proxy.requests().len(),
        2,
        "after failureTtl the registry is asked again"
    );
}

fn push_demo(registry: &Registry) {
    let layouts = tempfile::tempdir().unwrap();
    let layout = build_layout(
        &layouts.path().join("demo"),
        &ImageSpec::multi_arch_with_attestation(),
    );
    registry.push(&layout.dir, "private/app:v1", Format::Oci);
}

fn basic(user: &str, password: &str) -> Credential {
    Credential::Basic {
        username: user.into(),
        password: password.into(),
    }
}

#[tokio::test]
async fn basic_auth_needs_the_right_credentials_and_caches_per_credential() {
    let registry = Registry::start(RegistryOptions::plain().with_basic_auth("alice", "s3cret"));
    push_demo(&registry);
    let host = registry.host();
    let inspector = inspector(settings_for(std::slice::from_ref(&host)));
    let app = image(&format!("{host}/private/app:v1"));

    let (anonymous, _) = inspector.inspect(&app, &Credential::Anonymous).await;
    let anonymous = anonymous.unwrap_err();
    assert!(
        matches!(
            anonymous,
            InspectError::Unauthorized {
                authenticated: false,
                ..
            }
        ),
        "{anonymous:?}"
    );
    assert!(anonymous.to_string().contains("no credentials"));

    let (wrong, _) = inspector.inspect(&app, &basic("alice", "wrong")).await;
    let wrong = wrong.unwrap_err();
    assert!(
        matches!(
            wrong,
            InspectError::Unauthorized {
                authenticated: true,
                ..
            }
        ),
        "{wrong:?}"
    );
    assert!(
        !wrong.to_string().contains("wrong"),
        "no password in errors: {wrong}"
    );

    let (right, outcome) = inspector.inspect(&app, &basic("alice", "s3cret")).await;
    assert_eq!(platforms(&right.unwrap()), ["linux/amd64", "linux/arm64"]);
    assert_eq!(
        outcome,
        CacheOutcome::Miss,
        "the anonymous failure is not served to the credentialed lookup"
    );
}

#[tokio::test]
async fn bearer_token_flow_with_credentials_from_a_docker_config() {
    let registry = Registry::start(
        RegistryOptions::plain()
            .with_token_auth()
            .with_basic_auth("bob", "hunter2"),
    );
    push_demo(&registry);
    let host = registry.host();
    let config =
        format!(r#"{{"auths": {{"{host}": {{"username": "bob", "password": "hunter2"}}}}}}"#);
    let keyring = Keyring::from_docker_config(config.as_bytes()).unwrap();
    let app = image(&format!("{host}/private/app:v1"));
    let credential = keyring.lookup(&app);
    assert!(!credential.is_anonymous());

    install_crypto();
    registry.token_server().unwrap().reset(); // forget skopeo's push
    // The realm is another host (another port): untrusted, it is refused
    // and never sees the credential.
    let untrusted = RegistryClient::new(settings_for(std::slice::from_ref(&host))).unwrap();
    let refused = untrusted.inspect(&app, &credential).await.unwrap_err();
    assert_eq!(refused.metric_label(), "refused", "{refused}");
    assert!(refused.to_string().contains("token realm"), "{refused}");
    assert!(
        registry.token_requests().is_empty(),
        "no request reached the realm"
    );
    let realm = registry.token_server().unwrap().addr().to_string();
    let mut settings = settings_for(&[host.clone(), realm.clone()]);
    settings.guard.trusted_hosts.push(realm);
    let client = RegistryClient::new(settings).unwrap();
    let found = client.inspect(&app, &credential).await.unwrap();
    assert_eq!(platforms(&found), ["linux/amd64", "linux/arm64"]);
    let tokens = registry.token_requests();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    assert_eq!(
        tokens[0].scopes,
        ["repository:private/app:pull"],
        "pull only, never more"
    );
    assert_eq!(tokens[0].account.as_deref(), Some("bob"));
    // The token is reused for the next request to the same repository.
    client.inspect(&app, &credential).await.unwrap();
    assert_eq!(registry.token_requests().len(), 1);

    let denied = client
        .inspect(&app, &basic("bob", "nope"))
        .await
        .unwrap_err();
    assert_eq!(denied.metric_label(), "unauthorized", "{denied}");
    assert!(!format!("{denied} {denied:?}").contains("nope"));
}

#[tokio::test]
async fn tls_registry_needs_its_ca() {
    let registry = Registry::start(RegistryOptions::plain().with_tls());
    push_demo(&registry);
    let app = image(&format!("{}/private/app:v1", registry.host()));

    let mut local = RegistrySettings::default();
    local.guard.allowed_hosts.push("127.0.0.1".into());
    let untrusting = inspector(local.clone());
    let (refused, _) = untrusting.inspect(&app, &Credential::Anonymous).await;
    let refused = refused.unwrap_err();
    assert_eq!(refused.metric_label(), "connect");
    assert!(
        refused.to_string().to_lowercase().contains("certificate"),
        "{refused}"
    );

    let trusting = inspector(RegistrySettings {
        extra_ca_pems: vec![registry.ca_pem().unwrap().into_bytes()],
        ..local
    });
    let (found, _) = trusting.inspect(&app, &Credential::Anonymous).await;
    assert_eq!(platforms(&found.unwrap()), ["linux/amd64", "linux/arm64"]);
}

#[tokio::test]
async fn a_mirror_answers_for_its_registry() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    let mut settings = settings_for(&[proxy.host()]);
    // The upstream does not exist; the mirror serves its content.
    settings
        .mirrors
        .insert("registry.invalid".into(), vec![proxy.host()]);
    let inspector = inspector(settings);
    let (found, _) = inspector
        .inspect(&image("registry.invalid/demo:v1"), &Credential::Anonymous)
        .await;
    let found = found.unwrap();
    assert_eq!(platforms(&found), ["linux/amd64", "linux/arm64"]);
    assert_eq!(found.endpoint, proxy.host());
    assert_eq!(proxy.manifest_requests(), 1);
}

#[tokio::test]
async fn manifests_over_the_size_limit_are_refused() {
    let fx = fixture();
    let host = fx.registry.host();
    let inspector = inspector(RegistrySettings {
        max_manifest_bytes: 200,
        ..settings_for(std::slice::from_ref(&host))
    });
    let (found, _) = inspector
        .inspect(&image(&format!("{host}/demo:v1")), &Credential::Anonymous)
        .await;
    let error = found.unwrap_err();
    assert_eq!(error.metric_label(), "too_large");
    assert!(
        error
            .to_string()
            .contains("larger than the limit of 200 bytes"),
        "{error}"
    );
}

#[test]
fn archway_inspect_prints_platforms_and_fails_on_a_bad_image() {
    let fx = fixture();
    let host = fx.registry.host();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("archway.yaml");
    std::fs::write(&config, format!("registry:\n  insecure: [\"{host}\"]\n")).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_archway"))
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    let demo = format!("{host}/demo:v1");
    let out = run(&["inspect", &demo]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("linux/amd64,linux/arm64"), "{stdout}");
    assert!(
        !stdout.contains("unknown"),
        "no attestation entry: {stdout}"
    );

    let out = run(&[
        "inspect",
        "-o",
        "json",
        &demo,
        &format!("{host}/demo:missing"),
        "Bad/Ref",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        rows[0]["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64"])
    );
    assert_eq!(rows[0]["digest"], fx.digests["demo:v1"]);
    assert_eq!(rows[1]["reason"], "not_found");
    assert_eq!(rows[2]["reason"], "invalid_reference");
    assert!(rows[2]["error"].as_str().unwrap().contains("lowercase"));
}

#[tokio::test]
async fn internal_addresses_are_refused_unless_allowed() {
    let fx = fixture();
    let port = fx.registry.port();
    let strict = inspector(RegistrySettings::default());
    for (reference, expected) in [
        // A name that resolves to loopback: refused by the resolver.
        (
            format!("localhost:{port}/demo:v1"),
            "resolves to 127.0.0.1, a loopback address",
        ),
        // IP literals never reach the resolver: refused before connecting.
        (format!("127.0.0.1:{port}/demo:v1"), "a loopback address"),
        (
            "169.254.169.254/latest/meta-data:v1".to_string(),
            "a link-local address",
        ),
        ("10.0.0.1:5000/app:v1".to_string(), "a private address"),
    ] {
        let (result, _) = strict
            .inspect(&image(&reference), &Credential::Anonymous)
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.metric_label(), "refused", "{reference}: {error}");
        assert!(error.to_string().contains(expected), "{reference}: {error}");
    }
    // Allowed by name: the same registry answers.
    let mut allowed = RegistrySettings::default();
    allowed.guard.allowed_hosts.push("localhost".into());
    allowed.insecure_hosts.push(format!("localhost:{port}"));
    let (found, _) = inspector(allowed)
        .inspect(
            &image(&format!("localhost:{port}/demo:v1")),
            &Credential::Anonymous,
        )
        .await;
    assert_eq!(platforms(&found.unwrap()), ["linux/amd64", "linux/arm64"]);
}

#[tokio::test]
async fn redirects_to_other_hosts_are_refused() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    let inspector = inspector(settings_for(&[proxy.host()]));
    for location in [
        "http://169.254.169.254/latest/meta-data/",
        "https://metadata.google.internal/computeMetadata/v1/",
        &format!("http://{}/v2/demo/manifests/v1", fx.registry.host()),
    ] {
        proxy.set_fault(support::Fault::Status(
            307,
            vec![("Location".into(), location.to_string())],
        ));
        let (result, _) = inspector
            .inspect(
                &image(&format!("{}/redirect{}:v1", proxy.host(), location.len())),
                &Credential::Anonymous,
            )
            .await;
        let error = result.unwrap_err();
        assert_eq!(error.metric_label(), "refused", "{location}: {error}");
        let reason = error.to_string();
        assert!(
            reason.contains("another host not trusted") || reason.contains("is not HTTPS"),
            "{reason}"
        );
    }
}

#[tokio::test]
async fn a_rate_limited_registry_is_left_alone_until_retry_after() {
    let fx = fixture();
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    let inspector = inspector(settings_for(&[proxy.host()]));
    proxy.set_fault(support::Fault::Status(
        429,
        vec![("Retry-After".into(), "1".into())],
    ));
    let (first, _) = inspector
        .inspect(
            &image(&format!("{}/demo:v1", proxy.host())),
            &Credential::Anonymous,
        )
        .await;
    let first = first.unwrap_err();
    assert_eq!(first.metric_label(), "rate_limited");
    assert!(first.to_string().contains("retry after 1s"), "{first}");
    assert_eq!(proxy.requests().len(), 1);
    // Another image on the same registry: no request is sent meanwhile.
    proxy.clear_fault();
    let (other, _) = inspector
        .inspect(
            &image(&format!("{}/docker-list:v1", proxy.host())),
            &Credential::Anonymous,
        )
        .await;
    assert_eq!(other.unwrap_err().metric_label(), "rate_limited");
    assert_eq!(proxy.requests().len(), 1, "the host backs off as a whole");
    // After Retry-After, the registry is asked again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (later, _) = inspector
        .inspect(
            &image(&format!("{}/oci-single:amd64", proxy.host())),
            &Credential::Anonymous,
        )
        .await;
    assert_eq!(platforms(&later.unwrap()), ["linux/amd64"]);
}

/// `<algorithm>:<hex>` of `bytes`, computed here independently of archway.
fn digest_with(algorithm: &'static ring::digest::Algorithm, name: &str, bytes: &[u8]) -> String {
    let hash = ring::digest::digest(algorithm, bytes);
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("{name}:{hex}")
}

/// Issue 24, item 4: `image@sha512:<128 hex>` is valid OCI. Its content is
/// checked with sha512 (it used to be hashed with sha256, never matched,
/// and was cached as the registry's failure). The stand-in serves the
/// index pushed to the real registry under its sha512 name, as a registry
/// that stores sha512 content does; other bytes under that name are
/// refused, named with the algorithm asked for.
#[tokio::test]
async fn a_sha512_digest_is_checked_with_sha512() {
    let fx = fixture();
    let raw = fx.registry.inspect_raw("demo:v1");
    let sha512 = digest_with(&ring::digest::SHA512, "sha512", &raw);
    let other = fx.registry.inspect_raw("docker-list:v1");
    let other_sha512 = digest_with(&ring::digest::SHA512, "sha512", &other);
    let wrong = format!("sha512:{}", "0".repeat(128));
    let proxy = CountingProxy::start(fx.registry.addr()).await;
    let (right_path, wrong_path) = (
        format!("/v2/demo/manifests/{sha512}"),
        format!("/v2/demo/manifests/{wrong}"),
    );
    let index = "application/vnd.oci.image.index.v1+json".to_string();
    proxy.set_fault_rule(move |r| {
        let headers = vec![("content-type".to_string(), index.clone())];
        if r.path == right_path {
            support::Fault::Body(200, headers, raw.clone().into())
        } else if r.path == wrong_path {
            support::Fault::Body(200, headers, other.clone().into())
        } else {
            support::Fault::None
        }
    });
    let host = proxy.host();
    let inspector = inspector(settings_for(std::slice::from_ref(&host)));
    let (found, _) = inspector
        .inspect(
            &image(&format!("{host}/demo@{sha512}")),
            &Credential::Anonymous,
        )
        .await;
    let found = found.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(platforms(&found), ["linux/amd64", "linux/arm64"]);
    assert_eq!(found.digest, sha512, "named by the digest asked for");

    let (lied, _) = inspector
        .inspect(
            &image(&format!("{host}/demo@{wrong}")),
            &Credential::Anonymous,
        )
        .await;
    match lied {
        Err(InspectError::DigestMismatch {
            expected, actual, ..
        }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, other_sha512);
        }
        other => panic!("{other:?}"),
    }
}

/// Issue 24, item 4: a registry at an IPv6 address (`[::1]:PORT/x`) is
/// read as the kubelet reads it (it used to be an invalid reference) and
/// answers when configured; unconfigured, the network guard refuses
/// loopback, unique-local and link-local IPv6 as it does their IPv4
/// kin, before connecting.
#[tokio::test]
async fn a_registry_at_an_ipv6_address_is_asked_and_guarded() {
    let fx = fixture();
    let proxy = CountingProxy::start_on("[::1]:0".parse().unwrap(), fx.registry.addr()).await;
    let host = proxy.host();
    assert!(host.starts_with("[::1]:"), "{host}");
    let reference = image(&format!("{host}/demo:v1"));
    assert_eq!(reference.registry(), host);

    let configured = inspector(settings_for(std::slice::from_ref(&host)));
    let (found, _) = configured.inspect(&reference, &Credential::Anonymous).await;
    assert_eq!(platforms(&found.unwrap()), ["linux/amd64", "linux/arm64"]);
    let asked = proxy.requests().len();
    assert!(asked >= 1);

    let strict = inspector(RegistrySettings::default());
    for (reference, range) in [
        (format!("{host}/demo:v1"), "loopback"),
        ("[fd00::1]/x:v1".to_string(), "unique-local"),
        ("[fe80::1]:5000/x:v1".to_string(), "link-local"),
        ("[::]:5000/x:v1".to_string(), "unspecified"),
        (
            "[64:ff9b::a9fe:a9fe]/latest/meta-data:v1".to_string(),
            "NAT64",
        ),
    ] {
        let (refused, _) = strict
            .inspect(&image(&reference), &Credential::Anonymous)
            .await;
        let error = refused.unwrap_err();
        assert_eq!(error.metric_label(), "refused", "{reference}: {error}");
        assert!(error.to_string().contains(range), "{reference}: {error}");
    }
    assert_eq!(proxy.requests().len(), asked, "nothing more reached it");
}

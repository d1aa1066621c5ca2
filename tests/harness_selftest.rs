//! Checks the integration-test harness itself against a real registry:
//! every registry kind, every image shape in both formats, the proxy and its
//! faults, restarts, and that registry processes die with the test process.

use archway_testkit as support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::http::{get, get_manifest, probe_status};
use support::images::{OCI_INDEX, OCI_MANIFEST};
use support::{
    CountingProxy, Fault, Format, ImageSpec, MANIFEST_MEDIA_TYPES, Registry, RegistryOptions,
    accept_all_manifests, build_layout, sha256_digest,
};

const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+prettyjws";

fn json(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).expect("manifest is JSON")
}

/// `os/arch[/variant]` of every entry of an index, in order.
fn platforms(index: &Value) -> Vec<String> {
    index["manifests"]
        .as_array()
        .expect("manifests array")
        .iter()
        .map(|m| {
            let p = &m["platform"];
            let mut s = format!(
                "{}/{}",
                p["os"].as_str().unwrap(),
                p["architecture"].as_str().unwrap()
            );
            if let Some(v) = p["variant"].as_str() {
                s.push('/');
                s.push_str(v);
            }
            s
        })
        .collect()
}

/// Pushes `spec` in `format` and checks what the registry serves back.
fn push_and_check(
    registry: &Registry,
    spec: &ImageSpec,
    tag: &str,
    format: Format,
    expect_platforms: &[&str],
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), spec);
    let digest = registry.push(&layout, tag, format);

    let raw = registry.inspect_raw(tag);
    assert_eq!(
        sha256_digest(&raw),
        digest,
        "digestfile matches served bytes"
    );
    let manifest = json(&raw);
    let media_type = manifest["mediaType"].as_str().unwrap_or_default();
    let expected_type = match (spec.index, format) {
        (true, Format::Oci) => OCI_INDEX,
        (true, Format::V2s2) => DOCKER_LIST,
        (false, Format::Oci) => OCI_MANIFEST,
        (false, Format::V2s2) => DOCKER_MANIFEST,
    };
    assert_eq!(media_type, expected_type, "{tag}: {manifest}");
    if format == Format::Oci {
        // No conversion: skopeo must push the layout's bytes unchanged.
        assert_eq!(digest, layout.top_digest, "{tag}: OCI push keeps digest");
    } else {
        assert_ne!(digest, layout.top_digest, "{tag}: v2s2 push converts");
    }

    if spec.index {
        assert_eq!(platforms(&manifest), expect_platforms, "{tag}");
        let child_type = if format == Format::Oci {
            OCI_MANIFEST
        } else {
            DOCKER_MANIFEST
        };
        for entry in manifest["manifests"].as_array().unwrap() {
            assert_eq!(entry["mediaType"], child_type, "{tag}: {entry}");
            let child = registry.inspect_raw(&format!(
                "{}@{}",
                tag.split(':').next().unwrap(),
                entry["digest"].as_str().unwrap()
            ));
            assert_eq!(json(&child)["mediaType"], child_type);
        }
    } else {
        assert_eq!(expect_platforms.len(), 1);
        assert!(manifest["layers"].as_array().unwrap().len() == 1);
    }
    digest
}

#[test]
fn layouts_have_real_digests_and_valid_layers() {
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::arm_v7());
    // Every blob is stored under its own digest.
    let blobs = dir.path().join("blobs/sha256");
    let mut count = 0;
    for entry in std::fs::read_dir(&blobs).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        assert_eq!(
            sha256_digest(&bytes),
            format!("sha256:{}", entry.file_name().to_string_lossy())
        );
        count += 1;
    }
    // 2 × (layer, config, manifest) + index.
    assert_eq!(count, 7);
    assert_eq!(layout.manifests.len(), 2);
    assert_ne!(
        layout.manifests[0].layer_digest,
        layout.manifests[1].layer_digest
    );

    let arm = &layout.manifests[1];
    let hex = |d: &str| blobs.join(d.trim_start_matches("sha256:"));
    let config = json(&std::fs::read(hex(&arm.config_digest)).unwrap());
    assert_eq!(config["architecture"], "arm");
    assert_eq!(config["os"], "linux");
    assert_eq!(config["variant"], "v7");

    // The layer is a real gzip tar whose diff_id is in the config.
    let out = std::process::Command::new("tar")
        .arg("-xzOf")
        .arg(hex(&arm.layer_digest))
        .output()
        .unwrap();
    assert!(out.status.success(), "tar: {out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "armv7 linux/arm/v7\n");
    let gunzip = std::process::Command::new("gzip")
        .arg("-dc")
        .arg(hex(&arm.layer_digest))
        .output()
        .unwrap();
    assert_eq!(
        config["rootfs"]["diff_ids"][0],
        sha256_digest(&gunzip.stdout)
    );
}

#[test]
fn plain_registry_serves_every_shape_in_both_formats() {
    let registry = Registry::start(RegistryOptions::plain());

    // Attested multi-arch index, OCI only.
    let spec = ImageSpec::multi_arch_with_attestation();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &spec);
    let digest = registry.push(&layout, "attested:v1", Format::Oci);
    assert_eq!(digest, layout.top_digest);
    let index = json(&registry.inspect_raw("attested:v1"));
    assert_eq!(index["mediaType"], OCI_INDEX);
    assert_eq!(
        platforms(&index),
        [
            "linux/amd64",
            "linux/arm64",
            "unknown/unknown",
            "unknown/unknown"
        ]
    );
    let att = &index["manifests"][2];
    assert_eq!(
        att["annotations"]["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        att["annotations"]["vnd.docker.reference.digest"],
        index["manifests"][0]["digest"]
    );

    // Docker format for the attested image: skopeo cannot express the in-toto
    // layers in schema 2, so this must fail rather than silently drop them.
    let err = registry
        .try_push(&layout, "attested:v2s2", Format::V2s2)
        .expect_err("in-toto layers cannot become Docker schema 2");
    assert!(err.contains("application/vnd.in-toto+json"), "{err}");

    let amd_arm = ["linux/amd64", "linux/arm64"];
    for format in [Format::Oci, Format::V2s2] {
        let suffix = format!("{format:?}").to_lowercase();
        push_and_check(
            &registry,
            &ImageSpec::multi_arch(),
            &format!("multi:{suffix}"),
            format,
            &amd_arm,
        );
        push_and_check(
            &registry,
            &ImageSpec::single("amd64"),
            &format!("amd64:{suffix}"),
            format,
            &["linux/amd64"],
        );
        push_and_check(
            &registry,
            &ImageSpec::single("arm64"),
            &format!("arm64:{suffix}"),
            format,
            &["linux/arm64"],
        );
        push_and_check(
            &registry,
            &ImageSpec::arm_v7(),
            &format!("armv7:{suffix}"),
            format,
            &["linux/amd64", "linux/arm/v7"],
        );
        push_and_check(
            &registry,
            &ImageSpec::with_windows(),
            &format!("windows:{suffix}"),
            format,
            &["linux/amd64", "windows/amd64"],
        );
    }

    // Single-arch configs keep their architecture through conversion.
    let raw = registry.inspect_raw("arm64:v2s2");
    let config_digest = json(&raw)["config"]["digest"].as_str().unwrap().to_string();
    let mut cmd = support::registry::skopeo_command();
    cmd.args(["inspect", "--config", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}", registry.image("arm64:v2s2")));
    let config = support::registry::run(cmd).unwrap();
    assert_eq!(sha256_digest(&config), config_digest);
    assert_eq!(json(&config)["architecture"], "arm64");

    // Access logs are kept.
    assert!(registry.logs().contains("\"GET /v2/ HTTP/1.1\""));
}

#[tokio::test]
async fn proxy_forwards_counts_and_injects_faults() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch());
    let pushed = registry.push(&layout, "demo:v1", Format::V2s2);

    let proxy = CountingProxy::start(registry.addr()).await;
    assert_eq!(proxy.requests(), vec![]);

    // distribution 2.8 negotiates per Accept type. For a Docker manifest list
    // it answers *something* to every single type: the list only when the
    // list type is accepted, else the linux/amd64 child (Docker v2), else that
    // child converted on the fly to signed schema 1.
    let list = json(&registry.inspect_raw("demo:v1"));
    let amd64_child = list["manifests"][0]["digest"].as_str().unwrap().to_string();
    let expect = [
        (SCHEMA1, None),
        (SCHEMA1, None),
        (DOCKER_LIST, Some(pushed.as_str())),
        (DOCKER_MANIFEST, Some(amd64_child.as_str())),
    ];
    for (accept, (content_type, digest)) in MANIFEST_MEDIA_TYPES.iter().zip(expect) {
        let resp = get(
            &proxy.host(),
            "/v2/demo/manifests/v1",
            &[("accept", accept)],
        )
        .await;
        assert_eq!(resp.status, 200, "{accept}");
        assert_eq!(resp.header("content-type"), Some(content_type), "{accept}");
        if let Some(digest) = digest {
            assert_eq!(resp.header("docker-content-digest"), Some(digest));
            assert_eq!(sha256_digest(&resp.body), digest);
        }
    }
    let all = get_manifest(&proxy.host(), "demo", "v1").await;
    assert_eq!(all.status, 200);
    assert_eq!(proxy.manifest_requests(), 5);
    let recorded = proxy.requests();
    assert_eq!(recorded[0].method, "GET");
    assert_eq!(recorded[0].path, "/v2/demo/manifests/v1");
    assert_eq!(recorded[0].accept.as_deref(), Some(MANIFEST_MEDIA_TYPES[0]));
    assert_eq!(recorded[4].accept, Some(accept_all_manifests()));
    assert_eq!(recorded[4].status, Some(200));

    // Children by digest through the proxy; HEAD counts too.
    let list = all.json();
    for entry in list["manifests"].as_array().unwrap() {
        let d = entry["digest"].as_str().unwrap();
        let resp = get_manifest(&proxy.host(), "demo", d).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some(DOCKER_MANIFEST));
    }
    let head = support::http::request(
        hyper::Method::HEAD,
        &proxy.host(),
        "/v2/demo/manifests/v1",
        &[("accept", DOCKER_LIST)],
    )
    .await
    .unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(proxy.manifest_requests(), 8);
    assert_eq!(proxy.count(|r| r.method == "HEAD"), 1);

    // skopeo through the proxy: Location headers from blob uploads must come
    // back through the proxy (Host is passed through), or the push fails.
    proxy.reset();
    let host = proxy.host();
    let layout_dir = layout.dir.clone();
    let proxied = tokio::task::spawn_blocking(move || {
        support::registry::skopeo_push(
            &layout_dir,
            &format!("{host}/viaproxy:v1"),
            Format::Oci,
            &["--dest-tls-verify=false"],
        )
    })
    .await
    .unwrap()
    .expect("push through the proxy");
    assert_eq!(proxied, layout.top_digest);
    assert!(proxy.count(|r| r.method == "PUT" && r.is_manifest()) >= 3);
    assert!(proxy.count(|r| r.method == "POST" && r.path.ends_with("/blobs/uploads/")) >= 1);
    assert_eq!(
        proxy.count(|r| r.status == Some(502)),
        0,
        "{:?}",
        proxy.requests()
    );

    // Faults.
    proxy.reset();
    proxy.set_fault(Fault::Status(
        429,
        vec![("retry-after".to_string(), "1".to_string())],
    ));
    let resp = get_manifest(&proxy.host(), "demo", "v1").await;
    assert_eq!(resp.status, 429);
    assert_eq!(resp.header("retry-after"), Some("1"));

    proxy.set_fault(Fault::Delay(Duration::from_millis(300)));
    let started = Instant::now();
    let resp = get_manifest(&proxy.host(), "demo", "v1").await;
    assert_eq!(resp.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    proxy.set_fault(Fault::Reset);
    let err = support::http::request(
        hyper::Method::GET,
        &proxy.host(),
        "/v2/demo/manifests/v1",
        &[],
    )
    .await
    .expect_err("reset connection");
    assert!(err.contains("request"), "{err}");

    // Per-request rule: fail only the first manifest GET.
    let mut failed = false;
    proxy.set_fault_rule(move |r| {
        if r.is_manifest() && !failed {
            failed = true;
            Fault::Status(503, vec![])
        } else {
            Fault::None
        }
    });
    assert_eq!(get_manifest(&proxy.host(), "demo", "v1").await.status, 503);
    assert_eq!(get_manifest(&proxy.host(), "demo", "v1").await.status, 200);
    proxy.clear_fault();

    let statuses: Vec<_> = proxy.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [Some(429), Some(200), None, Some(503), Some(200)]);
    assert_eq!(
        proxy.requests()[2].fault,
        Some(Fault::Reset),
        "fault is recorded"
    );

    // Upstream down: the proxy answers 502; back up: same content.
    registry.stop();
    assert!(!registry.is_running());
    assert!(probe_status(&registry.host(), "/v2/", None).is_err());
    assert_eq!(get_manifest(&proxy.host(), "demo", "v1").await.status, 502);
    registry.start_again();
    let resp = get_manifest(&proxy.host(), "demo", "v1").await;
    assert_eq!(resp.status, 200);
    assert_eq!(sha256_digest(&resp.body), pushed);
}

/// OCI content is served only to clients that accept its exact type; a
/// request without the OCI index type gets 404, not a fallback.
#[tokio::test]
async fn oci_index_needs_its_accept_type() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::multi_arch_with_attestation());
    let pushed = registry.push(&layout, "oci:v1", Format::Oci);
    let proxy = CountingProxy::start(registry.addr()).await;
    for accept in MANIFEST_MEDIA_TYPES {
        let resp = get(&proxy.host(), "/v2/oci/manifests/v1", &[("accept", accept)]).await;
        if accept == OCI_INDEX {
            assert_eq!(resp.status, 200);
            assert_eq!(resp.header("docker-content-digest"), Some(pushed.as_str()));
            assert_eq!(resp.body, layout.top_bytes);
        } else {
            assert_eq!(resp.status, 404, "{accept}");
        }
    }
    assert_eq!(
        get(&proxy.host(), "/v2/oci/manifests/v1", &[]).await.status,
        404
    );
    let all = get_manifest(&proxy.host(), "oci", "v1").await;
    assert_eq!(all.header("content-type"), Some(OCI_INDEX));
    // Children and the attestation by digest.
    for digest in layout
        .manifests
        .iter()
        .map(|m| m.digest.clone())
        .chain(layout.attestations.clone())
    {
        let resp = get_manifest(&proxy.host(), "oci", &digest).await;
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-type"), Some(OCI_MANIFEST));
        assert_eq!(sha256_digest(&resp.body), digest);
    }
    assert_eq!(proxy.manifest_requests(), 4 + 1 + 1 + 4);
    assert_eq!(proxy.count(|r| r.status == Some(404)), 4);
}

#[test]
fn tls_registry_verifies_against_test_ca() {
    let registry = Registry::start(RegistryOptions::plain().with_tls());
    assert!(registry.base_url().starts_with("https://127.0.0.1:"));
    let ca = registry.ca_pem().expect("CA pem");
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(
        std::fs::read_to_string(registry.ca_path().unwrap()).unwrap(),
        ca
    );
    // The probe verifies the chain for the IP SAN.
    assert_eq!(probe_status(&registry.host(), "/v2/", Some(&ca)), Ok(200));
    // A different CA must be rejected.
    let other = support::TestCa::new("other CA").cert_pem;
    assert!(probe_status(&registry.host(), "/v2/", Some(&other)).is_err());

    push_and_check(
        &registry,
        &ImageSpec::multi_arch(),
        "multi:oci",
        Format::Oci,
        &["linux/amd64", "linux/arm64"],
    );
    push_and_check(
        &registry,
        &ImageSpec::single("amd64"),
        "amd64:v2s2",
        Format::V2s2,
        &["linux/amd64"],
    );
    // Without the CA, skopeo refuses the certificate.
    let err = support::skopeo_inspect_raw(&[], &registry.image("multi:oci")).unwrap_err();
    assert!(err.contains("certificate"), "{err}");
}

#[tokio::test]
async fn basic_auth_registry_requires_credentials() {
    let registry = Registry::start(RegistryOptions::plain().with_basic_auth("alice", "s3cret"));
    assert_eq!(registry.credentials(), Some(("alice", "s3cret")));
    let resp = get(&registry.host(), "/v2/", &[]).await;
    assert_eq!(resp.status, 401);
    assert!(
        resp.header("www-authenticate")
            .unwrap()
            .starts_with("Basic realm=")
    );
    push_and_check(
        &registry,
        &ImageSpec::multi_arch(),
        "private:v1",
        Format::V2s2,
        &["linux/amd64", "linux/arm64"],
    );
    let wrong = support::skopeo_inspect_raw(
        &["--tls-verify=false", "--creds=alice:wrong"],
        &registry.image("private:v1"),
    );
    assert!(wrong.is_err());
    let none = support::skopeo_inspect_raw(&["--tls-verify=false"], &registry.image("private:v1"));
    assert!(none.is_err());
}

#[tokio::test]
async fn token_auth_registry_issues_and_checks_jwts() {
    let registry = Registry::start(
        RegistryOptions::plain()
            .with_token_auth()
            .with_basic_auth("bob", "hunter2"),
    );
    let token = registry.token_server().unwrap();
    let resp = get(&registry.host(), "/v2/", &[]).await;
    assert_eq!(resp.status, 401);
    let challenge = resp.header("www-authenticate").unwrap().to_string();
    assert!(
        challenge.starts_with(&format!("Bearer realm=\"{}\"", token.realm())),
        "{challenge}"
    );

    push_and_check(
        &registry,
        &ImageSpec::arm_v7(),
        "team/app:v1",
        Format::Oci,
        &["linux/amd64", "linux/arm/v7"],
    );
    let requests = registry.token_requests();
    assert!(requests.iter().all(|r| r.granted), "{requests:?}");
    assert!(
        requests.iter().any(|r| r
            .scopes
            .iter()
            .any(|s| s == "repository:team/app:pull,push")),
        "{requests:?}"
    );
    assert_eq!(requests[0].account.as_deref(), Some("bob"));

    // Bad credentials: the realm refuses, so the registry is never reached.
    token.reset();
    let wrong = support::skopeo_inspect_raw(
        &["--tls-verify=false", "--creds=bob:nope"],
        &registry.image("team/app:v1"),
    );
    assert!(wrong.is_err());
    assert!(registry.token_requests().iter().all(|r| !r.granted));

    // A token fetched by hand works against the registry API.
    let realm_path = format!(
        "/token?service={}&scope=repository:team/app:pull",
        support::registry::TOKEN_SERVICE
    );
    let auth = format!(
        "Basic {}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "bob:hunter2")
    );
    let token_resp = get(
        &token.addr().to_string(),
        &realm_path,
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(token_resp.status, 200);
    let jwt = token_resp.json()["token"].as_str().unwrap().to_string();
    let bearer = format!("Bearer {jwt}");
    let accept = accept_all_manifests();
    let resp = get(
        &registry.host(),
        "/v2/team/app/manifests/v1",
        &[("authorization", &bearer), ("accept", &accept)],
    )
    .await;
    assert_eq!(resp.status, 200, "{}", registry.logs());
    // The token is scoped: another repository is denied.
    let resp = get(
        &registry.host(),
        "/v2/other/manifests/v1",
        &[("authorization", &bearer), ("accept", &accept)],
    )
    .await;
    assert_eq!(resp.status, 401);
}

#[test]
fn anonymous_token_auth_over_tls() {
    let registry = Registry::start(RegistryOptions::plain().with_token_auth().with_tls());
    push_and_check(
        &registry,
        &ImageSpec::with_windows(),
        "public:v1",
        Format::V2s2,
        &["linux/amd64", "windows/amd64"],
    );
    let requests = registry.token_requests();
    assert!(!requests.is_empty());
    assert!(requests.iter().all(|r| r.account.is_none() && r.granted));
}

#[test]
fn restart_keeps_port_and_storage() {
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(dir.path(), &ImageSpec::single("arm64"));
    let digest = registry.push(&layout, "keep:v1", Format::Oci);
    let port = registry.port();
    registry.restart();
    assert_eq!(registry.port(), port);
    assert!(registry.is_running());
    assert_eq!(sha256_digest(&registry.inspect_raw("keep:v1")), digest);
    registry.delete(&format!("keep@{digest}"));
    assert!(
        support::skopeo_inspect_raw(&["--tls-verify=false"], &registry.image("keep:v1")).is_err()
    );
}

static HELD: OnceLock<Registry> = OnceLock::new();
const CHILD_ENV: &str = "ARCHWAY_HARNESS_SELFTEST_CHILD";

/// Run only as a subprocess of `registry_dies_with_test_process`: keeps a
/// registry in a static that is never dropped, then lets the process exit.
#[test]
#[ignore = "helper for registry_dies_with_test_process"]
fn child_keeps_registry_in_static() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let registry = HELD.get_or_init(|| Registry::start(RegistryOptions::plain()));
    println!("REGISTRY_PID={}", registry.pid().unwrap());
    println!("REGISTRY_DIR={}", registry.dir().display());
}

#[test]
fn registry_dies_with_test_process() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_keeps_registry_in_static",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let pid: u32 = stdout
        .lines()
        .find_map(|l| l.split("REGISTRY_PID=").nth(1))
        .unwrap_or_else(|| panic!("child printed no pid: {stdout}"))
        .trim()
        .parse()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Gone, or a zombie waiting for its new parent to reap it.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let alive = !stat.is_empty() && !stat.contains(") Z ");
        if !alive {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "registry pid {pid} outlived its test process: {stat}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The static was never dropped, so its tempdir is left for the next
    // Registry::start to sweep; clean it up here instead.
    let dir = stdout
        .lines()
        .find_map(|l| l.split("REGISTRY_DIR=").nth(1))
        .expect("child printed its dir")
        .trim()
        .to_string();
    assert!(std::path::Path::new(&dir).join("owner.pid").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

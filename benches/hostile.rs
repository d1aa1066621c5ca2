//! Issue 14's attacks, and issue 24's on the registry client, re-run
//! against `archway serve` (a release build, its own process) on loopback,
//! with the issues' sizes: what was sent, what archway answered (and, where
//! the attack is on others, how long another namespace's review took), its
//! peak RSS (VmHWM, reset before each attack through /proc/PID/clear_refs)
//! and how many requests reached the registry.
//! Run by benches/hostile.sh, which builds both binaries:
//!
//! ```text
//! hostile --archway PATH [--out DIR] [--only NAME,...]
//! ```
//!
//! Without `--archway` (as `cargo bench` runs every bench) it does nothing.
//! Bounded: every attack has a fixed count and every wait a timeout.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use support::{CountingProxy, Fault, Format, ImageSpec, Registry, RegistryOptions, build_layout};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE_NAME: &str = "archway.archway.svc";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

struct Archway {
    child: Child,
    pid: u32,
    webhook: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    ca: String,
    log: PathBuf,
}

impl Drop for Archway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Archway {
    fn start(bin: &Path, out: &Path, config: &str) -> Archway {
        let certs = out.join("certs");
        let status = Command::new(bin)
            .args(["certs", "--out"])
            .arg(&certs)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("archway certs");
        assert!(status.success(), "archway certs failed");
        let config = format!(
            "{config}\nserver:\n  listen: 127.0.0.1:0\n  adminListen: 127.0.0.1:0\n  certFile: {}\n  keyFile: {}\n",
            certs.join("tls.crt").display(),
            certs.join("tls.key").display()
        );
        let config_path = out.join("archway.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = out.join("archway.log");
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config_path)
            .args(["--log", "info", "serve"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("archway serve");
        let pid = child.id();
        let started = Instant::now();
        let (webhook, admin) = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(line) = text.lines().find(|l| l.contains("archway serving")) {
                let field = |name: &str| -> std::net::SocketAddr {
                    let start = line.find(&format!("{name}=")).unwrap() + name.len() + 1;
                    line[start..]
                        .split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .unwrap()
                };
                break (field("webhook"), field("admin"));
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "archway did not start: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let ca = std::fs::read_to_string(certs.join("ca.crt")).unwrap();
        Archway {
            child,
            pid,
            webhook,
            admin,
            ca,
            log,
        }
    }

    fn url(&self) -> String {
        format!("https://{SERVICE_NAME}:{}/mutate", self.webhook.port())
    }

    fn client(&self, http1: bool) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(self.ca.as_bytes()).unwrap()])
            .resolve(SERVICE_NAME, self.webhook)
            .no_proxy()
            .timeout(Duration::from_secs(60));
        if http1 {
            builder = builder.http1_only();
        }
        builder.build().unwrap()
    }

    fn reset_peak(&self) {
        let _ = std::fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn peak_mib(&self) -> f64 {
        self.status_kib("VmHWM:") as f64 / 1024.0
    }

    fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS:") as f64 / 1024.0
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }
}

fn review(uid: &str, namespace: &str, pod: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": "CREATE",
            "userInfo": {"username": "hostile"},
            "object": pod,
        }
    }))
    .unwrap()
}

fn pod(name: &str, images: &[String]) -> Value {
    let containers: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, image)| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"metadata": {"name": name}, "spec": {"containers": containers}})
}

/// One row of the table.
struct Row {
    attack: &'static str,
    sent: String,
    answer: String,
    peak_mib: f64,
    registry: usize,
}

#[derive(Default)]
struct Tally(std::sync::Mutex<BTreeMap<String, usize>>);

impl Tally {
    fn add(&self, key: String) {
        *self.0.lock().unwrap().entry(key).or_default() += 1;
    }
    fn summary(&self) -> String {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(k, n)| format!("{n}x {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// What one answer was, in a word.
async fn classify(response: reqwest::Result<reqwest::Response>) -> String {
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            return format!(
                "error {}",
                if e.is_timeout() {
                    "timeout"
                } else {
                    "transport"
                }
            );
        }
    };
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    if status != 200 {
        return format!("HTTP {status}");
    }
    let r = &body["response"];
    let warnings = r["warnings"].as_array().map_or(0, Vec::len);
    if r.get("patch").is_some() {
        "200 patched".into()
    } else if warnings > 0 {
        let first = r["warnings"][0].as_str().unwrap_or_default();
        let why = [
            "refused",
            "rate",
            "share of registry",
            "time budget",
            "not found",
            "unreadable",
            "larger",
            "slower",
        ]
        .into_iter()
        .find(|w| first.contains(w))
        .unwrap_or("other");
        format!("200 warning ({why})")
    } else {
        "200 unchanged".into()
    }
}

/// Sends `bodies` with at most `concurrency` at once over `clients`.
async fn flood(
    clients: &[reqwest::Client],
    url: &str,
    bodies: Vec<Bytes>,
    concurrency: usize,
) -> Tally {
    let tally = Tally::default();
    futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            let client = clients[i % clients.len()].clone();
            let url = url.to_string();
            async move {
                classify(
                    client
                        .post(url)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await,
                )
                .await
            }
        })
        .buffer_unordered(concurrency)
        .for_each(|answer| {
            tally.add(answer);
            async {}
        })
        .await;
    tally
}

/// One small review's latency while something else runs.
async fn probe(archway: &Archway, body: Vec<u8>) -> (Duration, String) {
    let client = archway.client(false);
    let started = Instant::now();
    let answer = classify(
        client
            .post(archway.url())
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await,
    )
    .await;
    (started.elapsed(), answer)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let Some(bin) = value("--archway") else {
        println!("hostile: run through benches/hostile.sh (needs --archway PATH)");
        return;
    };
    let out = PathBuf::from(value("--out").unwrap_or_else(|| "target/hostile".into()));
    let only: Option<Vec<String>> =
        value("--only").map(|s| s.split(',').map(String::from).collect());
    std::fs::create_dir_all(&out).unwrap();
    raise_fd_limit();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(PathBuf::from(bin), out, only));
}

fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

async fn run(bin: PathBuf, out: PathBuf, only: Option<Vec<String>>) {
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|n| n == name));
    let registry = tokio::task::spawn_blocking(|| Registry::start(RegistryOptions::plain()))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(
        dir.path(),
        &ImageSpec::multi_arch().with_salt("hostile-bench"),
    );
    let (layout_dir, addr) = (layout.dir.clone(), registry.addr());
    let (registry, held_digest, held_index) = tokio::task::spawn_blocking(move || {
        let digest = registry.push(&layout_dir, "held/multi:v1", Format::Oci);
        let index = registry.inspect_raw("held/multi:v1");
        (registry, digest, index)
    })
    .await
    .unwrap();
    let proxy = CountingProxy::start(addr).await;
    let host = proxy.host();
    // Issue 24, item 3: a host whose manifests drip, chunked, a byte a second.
    let drip_proxy = CountingProxy::start(addr).await;
    drip_proxy.set_fault_rule(|request| {
        if request.is_manifest() {
            Fault::Drip {
                status: 200,
                headers: vec![("content-type".into(), OCI_INDEX.into())],
                chunk: 1,
                interval: Duration::from_secs(1),
                total: 4 * 1024 * 1024,
            }
        } else {
            Fault::None
        }
    });
    // Issue 24, item 4: the same registry at an IPv6 address, and the held
    // index under its sha512 name (as a registry storing sha512 serves it).
    let ipv6_proxy = CountingProxy::start_on("[::1]:0".parse().unwrap(), addr).await;
    let held_sha512 = {
        let hash = ring::digest::digest(&ring::digest::SHA512, &held_index);
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha512:{hex}")
    };
    let sha512_path = format!("/v2/held/multi/manifests/{held_sha512}");
    let held_index = Bytes::from(held_index);
    // Crafted indexes for item 4: 256 platforms, 4,000-character architectures.
    let hostile_index = {
        let long = "a".repeat(4000);
        let entries: Vec<Value> = (0..256)
            .map(|i| json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 1, "digest": format!("sha256:{:064x}", i), "platform": {"os": "linux", "architecture": format!("{long}{i}")}}))
            .collect();
        Bytes::from(
            serde_json::to_vec(
                &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
            )
            .unwrap(),
        )
    };
    proxy.set_fault_rule(move |request| {
        if request.path.starts_with("/v2/hostile/") {
            Fault::Body(
                200,
                vec![("content-type".into(), OCI_INDEX.into())],
                hostile_index.clone(),
            )
        } else if request.path == sha512_path {
            Fault::Body(
                200,
                vec![("content-type".into(), OCI_INDEX.into())],
                held_index.clone(),
            )
        } else {
            Fault::None
        }
    });
    // shop: the cached reviews; noisy: one namespace flooding (item 9);
    // ns0..ns99: floods spread over namespaces, so that the per-namespace
    // budget does not hide what items 3, 4 and 8 bound.
    let mut config = format!(
        "targetArchitecture: arm64\ntimeBudget: 2500ms\ncache: {{ tagTtl: 1h }}\nregistry:\n  insecure: [\"{host}\", \"{}\", \"{}\"]\n  allowPrivate: [\"127.0.0.0/8\"]\nnamespaces:\n  shop: {{ mode: enforce, rollout: 100 }}\n  other: {{ mode: enforce, rollout: 100 }}\n  noisy: {{ mode: enforce, rollout: 100 }}\n",
        drip_proxy.host(),
        ipv6_proxy.host()
    );
    for n in 0..100 {
        config.push_str(&format!("  ns{n}: {{ mode: enforce, rollout: 100 }}\n"));
    }
    let archway = Archway::start(&bin, &out, &config);
    let url = archway.url();
    let cached = format!("{host}/held/multi:v1");
    // Warm the cache with the one real image.
    let (_, warm) = probe(
        &archway,
        review("warm", "shop", pod("warm", std::slice::from_ref(&cached))),
    )
    .await;
    eprintln!("warm-up: {warm}; archway RSS {:.1} MiB", archway.rss_mib());
    let mut rows = Vec::new();
    let registry_count = || proxy.requests().len();

    if wanted("spellings") {
        // Item 1. The guard alone refuses these (the 127.0.0.0/8 allowance
        // in this config is for item 3, so it uses another namespace's view:
        // these go to the metadata address and its spellings).
        archway.reset_peak();
        let before = registry_count();
        let tally = Tally::default();
        for spelling in [
            "169.254.169.254",
            "2852039166",
            "0xa9fea9fe",
            "0251.0376.0251.0376",
            "169.254.43518",
            "0xa9.0xfe.0xa9.0xfe",
        ] {
            let body = review(
                "s",
                "shop",
                pod("s", &[format!("{spelling}:80/latest/meta-data:v1")]),
            );
            let (_, answer) = probe(&archway, body).await;
            tally.add(answer);
        }
        rows.push(Row {
            attack: "1 address spellings",
            sent: "6 metadata spellings (no allowPrivate)".into(),
            answer: tally.summary(),
            peak_mib: archway.peak_mib(),
            registry: registry_count() - before,
        });
    }

    if wanted("hosts") {
        // Item 3: 6,400 distinct registry hosts (closed ports on 127.x.y.z).
        archway.reset_peak();
        let bodies: Vec<Bytes> = (0..6400)
            .map(|i| {
                let image = format!(
                    "127.{}.{}.{}:1/app:v1",
                    1 + i / 65536,
                    (i / 256) % 256,
                    i % 256 + 1
                );
                let namespace = format!("ns{}", i % 100);
                Bytes::from(review(&format!("h{i}"), &namespace, pod("h", &[image])))
            })
            .collect();
        let tally = flood(&[archway.client(false)], &url, bodies, 64).await;
        let metrics = reqwest::get(format!("http://{}/metrics", archway.admin))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series = metrics
            .lines()
            .filter(|l| l.starts_with("archway_registry_requests_total{"))
            .count();
        rows.push(Row {
            attack: "3 metric labels",
            sent: "6,400 pods, 6,400 registry hosts".into(),
            answer: format!(
                "{}; /metrics {} KB, {series} registry series",
                tally.summary(),
                metrics.len() / 1024
            ),
            peak_mib: archway.peak_mib(),
            registry: 0,
        });
    }

    if wanted("indexes") {
        // Item 4: 400 pods, each an image whose index lists 256 platforms
        // with 4,000-character architectures.
        archway.reset_peak();
        let before = registry_count();
        let bodies: Vec<Bytes> = (0..400)
            .map(|i| {
                Bytes::from(review(
                    &format!("i{i}"),
                    &format!("ns{}", i % 100),
                    pod("i", &[format!("{host}/hostile/img{i}:v1")]),
                ))
            })
            .collect();
        let tally = flood(&[archway.client(false)], &url, bodies, 32).await;
        rows.push(Row {
            attack: "4 hostile indexes",
            sent: "400 pods, 256 x 4,000-char platforms each".into(),
            answer: tally.summary(),
            peak_mib: archway.peak_mib(),
            registry: registry_count() - before,
        });
    }

    if wanted("bodies") {
        // Item 5a: 200 concurrent 2.9 MiB reviews, then a small cached one.
        archway.reset_peak();
        let rss_before = archway.rss_mib();
        let mut big = pod("big", std::slice::from_ref(&cached));
        big["metadata"]["annotations"] = json!({"filler": "x".repeat(2_900_000)});
        let body = Bytes::from(review("big", "shop", big));
        let clients: Vec<_> = (0..200).map(|_| archway.client(true)).collect();
        let small = review("small", "shop", pod("small", std::slice::from_ref(&cached)));
        let flood_task = tokio::spawn({
            let url = url.clone();
            async move { flood(&clients, &url, vec![body; 200], 200).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (took, answer) = probe(&archway, small).await;
        let tally = flood_task.await.unwrap();
        rows.push(Row {
            attack: "5 large bodies",
            sent: "200 x 2.9 MiB reviews at once".into(),
            answer: format!(
                "{}; cached review behind: {answer} in {:.1} ms; RSS before {rss_before:.1}",
                tally.summary(),
                took.as_secs_f64() * 1000.0
            ),
            peak_mib: archway.peak_mib(),
            registry: 0,
        });

        archway.reset_peak();
        let rss_before = archway.rss_mib();
        let images = vec![cached.clone(); 31_000];
        let body = Bytes::from(review("wide", "shop", pod("wide", &images)));
        let size = body.len();
        let clients: Vec<_> = (0..200).map(|_| archway.client(true)).collect();
        let small = review(
            "small2",
            "shop",
            pod("small", std::slice::from_ref(&cached)),
        );
        let flood_task = tokio::spawn({
            let url = url.clone();
            async move { flood(&clients, &url, vec![body; 200], 200).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let (took, answer) = probe(&archway, small).await;
        let tally = flood_task.await.unwrap();
        rows.push(Row {
            attack: "5 wide pods",
            sent: format!(
                "200 x pods of 31,000 containers ({:.1} MiB) at once",
                size as f64 / 1048576.0
            ),
            answer: format!(
                "{}; cached review behind: {answer} in {:.1} ms; RSS before {rss_before:.1}",
                tally.summary(),
                took.as_secs_f64() * 1000.0
            ),
            peak_mib: archway.peak_mib(),
            registry: 0,
        });
    }

    for (name, spread) in [("fanout", true), ("namespace", false)] {
        if !wanted(name) {
            continue;
        }
        // Item 8 (spread over 100 namespaces) and item 9 (one namespace):
        // 400 pods of 64 distinct tags, and an unrelated uncached review
        // in another namespace during the flood.
        archway.reset_peak();
        let rss_before = archway.rss_mib();
        let before = registry_count();
        let bodies: Vec<Bytes> = (0..400)
            .map(|p| {
                let images: Vec<String> = (0..64)
                    .map(|t| format!("{host}/held/multi:{name}p{p}t{t}"))
                    .collect();
                let namespace = if spread {
                    format!("ns{}", p % 100)
                } else {
                    "noisy".into()
                };
                Bytes::from(review(&format!("f{p}"), &namespace, pod("f", &images)))
            })
            .collect();
        let peak_fds = Arc::new(AtomicUsize::new(0));
        let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let sampler = {
            let (peak_fds, sampling, pid) = (peak_fds.clone(), sampling.clone(), archway.pid);
            tokio::spawn(async move {
                while sampling.load(Ordering::Relaxed) {
                    let n = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
                    peak_fds.fetch_max(n, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        let clients: Vec<_> = (0..8).map(|_| archway.client(false)).collect();
        let flood_task = tokio::spawn({
            let url = url.clone();
            async move { flood(&clients, &url, bodies, 400).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let unrelated = format!("{host}/held/multi:unrelated-{name}");
        let (took, answer) = probe(&archway, review("u", "other", pod("u", &[unrelated]))).await;
        let tally = flood_task.await.unwrap();
        // Lookups go on after their reviews gave up: wait until the
        // registry sees no more (at most a minute).
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_secs(60) {
            let n = registry_count();
            tokio::time::sleep(Duration::from_secs(2)).await;
            if registry_count() == n {
                break;
            }
        }
        sampling.store(false, Ordering::Relaxed);
        sampler.await.unwrap();
        let sent = if spread {
            "400 pods x 64 distinct tags, 100 namespaces"
        } else {
            "400 pods x 64 distinct tags, one namespace"
        };
        rows.push(Row {
            attack: if spread { "8 fan-out" } else { "9 one namespace" },
            sent: sent.into(),
            answer: format!(
                "{}; unrelated uncached review: {answer} in {:.0} ms; peak fds {}; RSS before {rss_before:.1}",
                tally.summary(),
                took.as_secs_f64() * 1000.0,
                peak_fds.load(Ordering::Relaxed)
            ),
            peak_mib: archway.peak_mib(),
            registry: registry_count() - before,
        });
    }

    if wanted("idle") {
        // Item 6: 3,000 TLS connections that send nothing.
        archway.reset_peak();
        let config = support::http::rustls_client_config(&archway.ca);
        let connector = tokio_rustls::TlsConnector::from(config);
        let opened = Instant::now();
        let mut held = Vec::new();
        let handshakes = futures::stream::iter(0..3000)
            .map(|_| {
                let connector = connector.clone();
                let addr = archway.webhook;
                async move {
                    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
                    let name = rustls::pki_types::ServerName::try_from(SERVICE_NAME).unwrap();
                    tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
                        .await
                        .ok()?
                        .ok()
                }
            })
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
        let completed = handshakes.iter().filter(|h| h.is_some()).count();
        held.extend(handshakes.into_iter().flatten());
        let fds_open = archway.fds();
        let all_in = opened.elapsed();
        // Every connection served has had its 10 s by now.
        tokio::time::sleep(Duration::from_secs(11)).await;
        let mut still_open = 0;
        for stream in &mut held {
            let mut byte = [0u8; 1];
            // A read that times out: the connection is still open.
            if tokio::time::timeout(Duration::from_millis(1), stream.read(&mut byte))
                .await
                .is_err()
            {
                still_open += 1;
            }
        }
        let (took, answer) = probe(
            &archway,
            review("after", "shop", pod("after", std::slice::from_ref(&cached))),
        )
        .await;
        rows.push(Row { attack: "6 silent connections", sent: "3,000 TLS connections, nothing sent".into(), answer: format!("{completed} handshakes served within {:.0} s (512 at a time), archway fds then {fds_open}; still open 11 s later: {still_open}; a review then: {answer} in {:.0} ms", all_in.as_secs_f64(), took.as_secs_f64() * 1000.0), peak_mib: archway.peak_mib(), registry: 0 });
        drop(held);
    }

    if wanted("unread") {
        // Item 2: a client that pipelines reviews and never reads.
        archway.reset_peak();
        let config = support::http::rustls_client_config(&archway.ca);
        let connector = tokio_rustls::TlsConnector::from(config);
        let tcp = tokio::net::TcpStream::connect(archway.webhook)
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from(SERVICE_NAME).unwrap();
        let mut stream = connector.connect(name, tcp).await.unwrap();
        let body = review("p", "shop", pod("p", std::slice::from_ref(&cached)));
        let request = [format!("POST /mutate HTTP/1.1\r\nhost: {SERVICE_NAME}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes(), body].concat();
        let started = Instant::now();
        let mut sent = 0;
        let closed = loop {
            match tokio::time::timeout(Duration::from_secs(30), stream.write_all(&request)).await {
                Ok(Ok(())) => sent += 1,
                Ok(Err(_)) => {
                    break format!(
                        "closed by archway after {:.0} s",
                        started.elapsed().as_secs_f64()
                    );
                }
                Err(_) => break "write stalled 30 s (archway stopped reading)".to_string(),
            }
            if sent >= 100_000 {
                break "not closed".into();
            }
        };
        rows.push(Row {
            attack: "2 unread responses",
            sent: format!("{sent} pipelined reviews, responses never read"),
            answer: closed,
            peak_mib: archway.peak_mib(),
            registry: 0,
        });
    }

    if wanted("logs") {
        // Item 10: a pod name with a newline and escape sequences.
        let name = "web\n2030-01-01T00:00:00Z  INFO forged line\x1b[2J\u{202e}";
        let (_, answer) = probe(
            &archway,
            review("log", "shop", pod(name, std::slice::from_ref(&cached))),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let log = std::fs::read_to_string(&archway.log).unwrap_or_default();
        let forged = log.lines().filter(|l| l.starts_with("2030-01-01")).count();
        let escapes = log.contains('\x1b') || log.contains('\u{202e}');
        rows.push(Row {
            attack: "10 log injection",
            sent: "pod name with \\n, ESC[2J, U+202E".into(),
            answer: format!("{answer}; forged lines in the log: {forged}; raw escapes: {escapes}"),
            peak_mib: archway.peak_mib(),
            registry: 0,
        });
    }

    if wanted("drips") {
        // Issue 24, item 3: 2, then 20, chunked manifests dripping a byte a
        // second (one namespace, one host), then a cold review in another
        // namespace for an image on another, healthy, host.
        for (count, victim) in [
            (2, format!("{host}/held/multi@{held_digest}")),
            (20, format!("{host}/held/multi:v1@{held_digest}")),
        ] {
            archway.reset_peak();
            let rss_before = archway.rss_mib();
            let before = registry_count();
            let drips_before = drip_proxy.requests().len();
            let bodies: Vec<Bytes> = (0..count)
                .map(|i| {
                    let image = format!("{}/drip/c{count}i{i}:v1", drip_proxy.host());
                    Bytes::from(review(&format!("d{i}"), "noisy", pod("d", &[image])))
                })
                .collect();
            let clients = vec![archway.client(false)];
            let attack = tokio::spawn({
                let url = url.clone();
                async move { flood(&clients, &url, bodies, count).await }
            });
            // Every drip the host may serve at once (16) is flowing.
            let started = Instant::now();
            while drip_proxy.requests().len() - drips_before < count.min(16)
                && started.elapsed() < Duration::from_secs(10)
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (took, answer) = probe(
                &archway,
                review("victim", "other", pod("victim", &[victim])),
            )
            .await;
            let tally = attack.await.unwrap();
            rows.push(Row {
                attack: "24.3 slow drips",
                sent: format!(
                    "{count} pods, each a chunked manifest at 1 byte/s (one namespace, one host)"
                ),
                answer: format!(
                    "{}; another namespace's cold review (healthy host): {answer} in {:.0} ms; RSS before {rss_before:.1}",
                    tally.summary(),
                    took.as_secs_f64() * 1000.0
                ),
                peak_mib: archway.peak_mib(),
                registry: registry_count() - before,
            });
        }
    }

    if wanted("sha512") {
        // Issue 24, item 4: a pod pinned by a sha512 digest.
        archway.reset_peak();
        let before = registry_count();
        let image = format!("{host}/held/multi@{held_sha512}");
        let (took, answer) = probe(&archway, review("s512", "shop", pod("s512", &[image]))).await;
        rows.push(Row {
            attack: "24.4 sha512 digest",
            sent: "1 pod, image@sha512:<128 hex> (the held index)".into(),
            answer: format!("{answer} in {:.0} ms", took.as_secs_f64() * 1000.0),
            peak_mib: archway.peak_mib(),
            registry: registry_count() - before,
        });
    }

    if wanted("ipv6") {
        // Issue 24, item 4: registries at IPv6 addresses, one configured
        // (registry.insecure), the others internal and not.
        archway.reset_peak();
        let before = ipv6_proxy.requests().len();
        let tally = Tally::default();
        for image in [
            format!("{}/held/multi:v1", ipv6_proxy.host()),
            "[::1]:1/app:v1".to_string(),
            "[fd00::1]/app:v1".to_string(),
            "[fe80::1]:5000/app:v1".to_string(),
        ] {
            let (_, answer) = probe(&archway, review("v6", "shop", pod("v6", &[image]))).await;
            tally.add(answer);
        }
        rows.push(Row {
            attack: "24.4 IPv6 registries",
            sent: "4 pods: [::1]:PORT (configured), [::1]:1, [fd00::1], [fe80::1]:5000".into(),
            answer: tally.summary(),
            peak_mib: archway.peak_mib(),
            registry: ipv6_proxy.requests().len() - before,
        });
    }

    println!("| attack | what was sent | archway's answer | peak RSS MiB | registry requests |");
    println!("|---|---|---|---|---|");
    for row in rows {
        println!(
            "| {} | {} | {} | {:.1} | {} |",
            row.attack, row.sent, row.answer, row.peak_mib, row.registry
        );
    }
    drop(archway);
    drop(proxy);
    drop(drip_proxy);
    drop(ipv6_proxy);
    tokio::task::spawn_blocking(move || drop(registry))
        .await
        .unwrap();
}

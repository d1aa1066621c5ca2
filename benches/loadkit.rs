//! The load script's helper (benches/load.sh): the parts that are easier in
//! Rust than in bash. Run by `cargo bench` or `cargo test` without a
//! subcommand, it does nothing.
//!
//! ```text
//! loadkit registry --state DIR [--fill N] [--burst-delay-ms MS]
//!     a real registry (tests/testkit) with the load images, N tags of
//!     one image (fill:t00000...), the burst images, and a proxy in front that
//!     delays the burst images' manifests like a distant registry would;
//!     writes DIR/registry.env and serves until SIGTERM.
//! loadkit bodies --host REGISTRY --proxy PROXY --out DIR
//!     the review bodies (small/typical/large, and the burst pods).
//! loadkit post --url URL --ca CA [--expect-patch] FILE...
//!     one review per file; fails unless each is answered 200 (with a patch).
//! loadkit fill --url URL --ca CA --prefix HOST/fill:t --count N [--start I] [--concurrency C]
//!     one review per tag (tI...), each a pod of that image alone: N cache entries.
//! loadkit burst --url URL --ca CA --body FILE --repo NAME --registry-log LOG
//!               [--count 1000] [--connections 10]
//!     COUNT reviews at once (HTTP/2, CONNECTIONS connections) of a pod whose
//!     image is not cached; counts what reached the registry for NAME.
//! loadkit startup --bin ARCHWAY --config CFG [--runs N] [--tls-cert F --tls-key K]
//!     spawn to /readyz 200, measured in a tight loop, and archway's startup_ms.
//! loadkit stats (h2load | field NAME) FILE...
//!     n p50 p99 p99.9 max (ms) of h2load's --log-file or a JSON log field.
//! ```

#[path = "common/pods.rs"]
mod pods;
use archway_testkit as support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{CountingProxy, Fault, Format, ImageSpec, Registry, RegistryOptions, build_layout};

/// The name loadkit's HTTPS clients ask for; resolved to the URL's address.
const SERVICE_NAME: &str = "archway.archway.svc";

type Result<T> = std::result::Result<T, String>;

struct Args(Vec<String>);

impl Args {
    fn value(&self, flag: &str) -> Option<String> {
        self.0
            .iter()
            .position(|a| a == flag)
            .and_then(|i| self.0.get(i + 1))
            .cloned()
    }

    fn required(&self, flag: &str) -> Result<String> {
        self.value(flag)
            .ok_or_else(|| format!("{flag} VALUE is required"))
    }

    fn number(&self, flag: &str, default: usize) -> Result<usize> {
        match self.value(flag) {
            Some(v) => v.parse().map_err(|e| format!("{flag}: {e}")),
            None => Ok(default),
        }
    }

    fn has(&self, flag: &str) -> bool {
        self.0.iter().any(|a| a == flag)
    }

    /// Arguments that are neither flags nor flag values.
    fn positional(&self, flags_with_values: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        let mut skip = false;
        for a in &self.0 {
            if skip {
                skip = false;
            } else if flags_with_values.contains(&a.as_str()) {
                skip = true;
            } else if !a.starts_with("--") {
                out.push(a.clone());
            }
        }
        out
    }
}

fn main() -> ExitCode {
    let mut argv: Vec<String> = std::env::args().skip(1).collect();
    let command = if argv.is_empty() {
        String::new()
    } else {
        argv.remove(0)
    };
    let args = Args(argv);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let result = match command.as_str() {
        "registry" => registry(&args),
        "bodies" => bodies(&args),
        "post" => runtime().block_on(post(&args)),
        "fill" => runtime().block_on(fill(&args)),
        "burst" => runtime().block_on(burst(&args)),
        "startup" => startup(&args),
        "stats" => stats(&args),
        _ => {
            // `cargo bench` (--bench) and `cargo test` run every bench target.
            eprintln!("loadkit: helper of benches/load.sh (see the source for its commands)");
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadkit {command}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("tokio runtime")
}

// ---------------------------------------------------------------- registry

fn registry(args: &Args) -> Result<()> {
    let state = PathBuf::from(args.required("--state")?);
    let fill = args.number("--fill", 10_000)?;
    let delay = Duration::from_millis(args.number("--burst-delay-ms", 200)? as u64);
    std::fs::create_dir_all(&state).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let registry = Registry::start(RegistryOptions::plain());
    let layouts = tempfile::tempdir().map_err(|e| e.to_string())?;
    let push = |reference: &str, spec: ImageSpec, format: Format| {
        let layout = build_layout(&layouts.path().join(reference.replace(':', "-")), &spec);
        registry.push(&layout.dir, reference, format);
        layout
    };
    for (i, reference) in pods::REPOSITORIES.iter().enumerate() {
        // Both index flavours: OCI (with buildx attestations) and Docker.
        let (spec, format) = if i % 2 == 0 {
            (ImageSpec::multi_arch_with_attestation(), Format::Oci)
        } else {
            (ImageSpec::multi_arch(), Format::V2s2)
        };
        push(reference, spec.with_salt(reference), format);
    }
    push(
        "burst-index:v1",
        ImageSpec::multi_arch().with_salt("burst-index"),
        Format::Oci,
    );
    push("burst-single:v1", ImageSpec::single("amd64"), Format::Oci);
    let fill_layout = push(
        "fill:base",
        ImageSpec::multi_arch().with_salt("fill"),
        Format::Oci,
    );
    eprintln!(
        "loadkit registry: {} up, images pushed in {:.1}s",
        registry.host(),
        started.elapsed().as_secs_f64()
    );

    let rt = runtime();
    rt.block_on(async {
        let tagged = Instant::now();
        put_tags(
            &registry.host(),
            "fill",
            fill_layout.top_media_type,
            fill_layout.top_bytes.clone(),
            fill,
        )
        .await?;
        eprintln!(
            "loadkit registry: {fill} fill tags in {:.1}s",
            tagged.elapsed().as_secs_f64()
        );
        let proxy = CountingProxy::start(registry.addr()).await;
        // A distant registry: every burst manifest takes `delay`, so the
        // whole burst arrives while the first lookup is still in flight.
        proxy.set_fault_rule(move |r| {
            if r.path.starts_with("/v2/burst-") && r.is_manifest() {
                Fault::Delay(delay)
            } else {
                Fault::None
            }
        });
        let env = format!(
            "REGISTRY_HOST={}\nPROXY_HOST={}\nREGISTRY_LOG={}\nREGISTRY_PID={}\n",
            registry.host(),
            proxy.host(),
            registry.dir().join("registry.log").display(),
            registry.pid().unwrap_or(0)
        );
        std::fs::write(state.join("registry.env"), env).map_err(|e| e.to_string())?;
        println!("ready");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| e.to_string())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        drop(proxy);
        Ok::<(), String>(())
    })?;
    drop(registry);
    Ok(())
}

/// The same manifest under `count` tags, through the registry API: far
/// faster than pushing each with skopeo.
async fn put_tags(
    host: &str,
    repository: &str,
    media_type: &str,
    manifest: Vec<u8>,
    count: usize,
) -> Result<()> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .map_err(|e| e.to_string())?;
    let failures: Vec<String> = futures::stream::iter(0..count)
        .map(|i| {
            let url = format!("http://{host}/v2/{repository}/manifests/t{i:05}");
            let request = client
                .put(url)
                .header("content-type", media_type)
                .body(manifest.clone());
            async move {
                match request.send().await {
                    Ok(r) if r.status().is_success() => None,
                    Ok(r) => Some(format!("tag t{i:05}: HTTP {}", r.status())),
                    Err(e) => Some(format!("tag t{i:05}: {e}")),
                }
            }
        })
        .buffer_unordered(16)
        .filter_map(|f| async move { f })
        .collect()
        .await;
    match failures.first() {
        None => Ok(()),
        Some(first) => Err(format!("{} tags failed, first: {first}", failures.len())),
    }
}

// ------------------------------------------------------------------ bodies

fn bodies(args: &Args) -> Result<()> {
    let host = args.required("--host")?;
    let proxy = args.required("--proxy")?;
    let out = PathBuf::from(args.required("--out")?);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let images = pods::images_on(&host);
    let write = |name: &str, body: Vec<u8>| -> Result<()> {
        let path = out.join(format!("body-{name}.json"));
        std::fs::write(&path, &body).map_err(|e| e.to_string())?;
        println!("{name} {}", body.len());
        Ok(())
    };
    for shape in [pods::SMALL, pods::TYPICAL, pods::LARGE] {
        let uid = format!("0b5e1c6a-7f00-4d2e-9c1a-{:012}", shape.containers);
        write(shape.name, pods::review_body(&shape, &images, &uid))?;
    }
    for repo in ["burst-index", "burst-single"] {
        let images = vec![format!("{proxy}/{repo}:v1")];
        let uid = format!("{repo}-0000-4000-8000-000000000000");
        write(repo, pods::review_body(&pods::SMALL, &images, &uid))?;
    }
    Ok(())
}

// ------------------------------------------------------- HTTPS review client

fn client(ca_path: &str, url: &str, connect_only_h2: bool) -> Result<(reqwest::Client, String)> {
    let pem = std::fs::read(ca_path).map_err(|e| format!("{ca_path}: {e}"))?;
    let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
    let addr: SocketAddr = url
        .trim_start_matches("https://")
        .split('/')
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{url}: want https://IP:PORT/...: {e}"))?;
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([ca])
        .resolve(SERVICE_NAME, addr)
        .no_proxy()
        .timeout(Duration::from_secs(30));
    if connect_only_h2 {
        // Known h2: concurrent requests share one connection.
        builder = builder.http2_prior_knowledge();
    }
    let client = builder.build().map_err(|e| e.to_string())?;
    let path = url
        .trim_start_matches("https://")
        .split_once('/')
        .map(|(_, p)| p)
        .unwrap_or("mutate");
    Ok((
        client,
        format!("https://{SERVICE_NAME}:{}/{path}", addr.port()),
    ))
}

/// What came back for one review.
#[derive(Debug)]
struct Answer {
    status: u16,
    patched: bool,
    warnings: Vec<String>,
}

async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<Answer> {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let bytes = response.bytes().await.map_err(|e| e.to_string())?;
    let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let answer = &value["response"];
    Ok(Answer {
        status,
        patched: answer["patch"].is_string(),
        warnings: answer["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|w| w.as_str().map(str::to_string))
            .collect(),
    })
}

async fn post(args: &Args) -> Result<()> {
    let (client, url) = client(&args.required("--ca")?, &args.required("--url")?, false)?;
    let expect_patch = args.has("--expect-patch");
    let files = args.positional(&["--url", "--ca"]);
    if files.is_empty() {
        return Err("no body files".into());
    }
    for file in files {
        let body = std::fs::read(&file).map_err(|e| format!("{file}: {e}"))?;
        let answer = send(&client, &url, body).await?;
        if answer.status != 200 || (expect_patch && !answer.patched) {
            return Err(format!("{file}: {answer:?}"));
        }
        eprintln!(
            "loadkit post: {file}: {} patched={}",
            answer.status, answer.patched
        );
    }
    Ok(())
}

async fn fill(args: &Args) -> Result<()> {
    let (client, url) = client(&args.required("--ca")?, &args.required("--url")?, true)?;
    let prefix = args.required("--prefix")?;
    let count = args.number("--count", 10_000)?;
    let start = args.number("--start", 0)?;
    let concurrency = args.number("--concurrency", 32)?;
    let started = Instant::now();
    let results: Vec<Result<Answer>> = futures::stream::iter(start..start + count)
        .map(|i| {
            let image = vec![format!("{prefix}{i:05}")];
            let body = pods::review_body(&pods::SMALL, &image, &format!("fill-{i}"));
            let client = &client;
            let url = &url;
            async move { send(client, url, body).await }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let patched = results
        .iter()
        .filter(|r| matches!(r, Ok(a) if a.status == 200 && a.patched))
        .count();
    let first_bad = results
        .iter()
        .find(|r| !matches!(r, Ok(a) if a.status == 200 && a.patched));
    println!(
        "fill {count} images: {patched} patched in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    match first_bad {
        None => Ok(()),
        Some(bad) => Err(format!(
            "{} reviews not patched, first: {bad:?}",
            count - patched
        )),
    }
}

async fn burst(args: &Args) -> Result<()> {
    let ca = args.required("--ca")?;
    let url = args.required("--url")?;
    let body = std::fs::read(args.required("--body")?).map_err(|e| e.to_string())?;
    let repo = args.required("--repo")?;
    let log = PathBuf::from(args.required("--registry-log")?);
    let count = args.number("--count", 1000)?;
    let connections = args.number("--connections", 10)?.max(1);

    // One client per connection, each connected (and its TLS handshake
    // done) before the burst, with a review that needs no lookup.
    let mut clients = Vec::new();
    for _ in 0..connections {
        clients.push(client(&ca, &url, true)?);
    }
    let warm = serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "warm", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "operation": "DELETE", "namespace": pods::NAMESPACE}
    }))
    .unwrap();
    for (c, u) in &clients {
        let answer = send(c, u, warm.clone()).await?;
        if answer.status != 200 {
            return Err(format!("warm-up review: {answer:?}"));
        }
    }
    let offset = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);

    let started = Instant::now();
    let requests = (0..count).map(|i| {
        let (c, u) = &clients[i % connections];
        let body = body.clone();
        async move {
            let sent = Instant::now();
            let result = send(c, u, body).await;
            (result, sent.elapsed())
        }
    });
    let results = futures::future::join_all(requests).await;
    let wall = started.elapsed();
    // Let the registry flush its access log.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let answered = results
        .iter()
        .filter(|(r, _)| matches!(r, Ok(a) if a.status == 200))
        .count();
    let patched = results
        .iter()
        .filter(
            |(r, _)| matches!(r, Ok(a) if a.status == 200 && a.patched && a.warnings.is_empty()),
        )
        .count();
    let slowest = results.iter().map(|(_, d)| *d).max().unwrap_or_default();
    if let Some((bad, _)) = results
        .iter()
        .find(|(r, _)| !matches!(r, Ok(a) if a.status == 200 && a.patched))
    {
        eprintln!("loadkit burst: a review not patched: {bad:?}");
    }

    let mut text = String::new();
    std::fs::File::open(&log)
        .and_then(|mut f| {
            use std::io::Seek;
            f.seek(std::io::SeekFrom::Start(offset))?;
            f.read_to_string(&mut text)
        })
        .map_err(|e| format!("{}: {e}", log.display()))?;
    // distribution's access log: `... "GET /v2/REPO/manifests/v1 HTTP/1.1" 200 ...`
    let count_of = |kind: &str| {
        text.lines()
            .filter(|l| l.contains(&format!(" /v2/{repo}/{kind}/")) && l.contains("\"GET "))
            .count()
    };
    let tokens = text
        .lines()
        .filter(|l| l.contains("\"GET ") && l.contains("token"))
        .count();
    println!(
        "burst repo={repo} reviews={count} answered={answered} patched={patched} manifest={} blob={} token={tokens} wall_ms={:.0} slowest_ms={:.0}",
        count_of("manifests"),
        count_of("blobs"),
        wall.as_secs_f64() * 1000.0,
        slowest.as_secs_f64() * 1000.0
    );
    Ok(())
}

// ----------------------------------------------------------------- startup

fn free_port() -> Result<u16> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| e.to_string())
}

/// `GET /readyz` on a fresh connection; the status, or None if not up.
fn readyz(addr: SocketAddr) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok()?;
    stream
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1)?.parse().ok()
}

fn startup(args: &Args) -> Result<()> {
    let bin = args.required("--bin")?;
    let config = args.required("--config")?;
    let runs = args.number("--runs", 20)?;
    let tls = match (args.value("--tls-cert"), args.value("--tls-key")) {
        (Some(c), Some(k)) => Some((c, k)),
        _ => None,
    };
    let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut ready = Vec::new();
    let mut logged = Vec::new();
    for run in 0..runs {
        let (webhook, admin) = (free_port()?, free_port()?);
        let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        let log_path = scratch.path().join(format!("run-{run}.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(["--log-format", "json", "--config", &config, "serve"])
            .args(["--listen", &format!("127.0.0.1:{webhook}")])
            .args(["--admin-listen", &admin_addr.to_string()])
            .arg("--self-signed-dir")
            .arg(scratch.path().join("ca"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        if let Some((cert, key)) = &tls {
            cmd.args(["--tls-cert", cert, "--tls-key", key]);
        }
        let spawned = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("spawn {bin}: {e}"))?;
        let deadline = spawned + Duration::from_secs(5);
        let took = loop {
            if readyz(admin_addr) == Some(200) {
                break Some(spawned.elapsed());
            }
            if Instant::now() > deadline {
                break None;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "archway exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let _ = child.wait();
        let took = took.ok_or("archway not ready within 5 s")?;
        ready.push(took.as_secs_f64() * 1000.0);
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(ms) = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v["startup_ms"].as_f64())
        {
            logged.push(ms);
        }
    }
    let summary = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return "- - -".to_string();
        }
        format!("{:.1} {:.1} {:.1}", v[0], v[v.len() / 2], v[v.len() - 1])
    };
    // min median max, spawn-to-ready then startup_ms
    println!("{} {}", summary(&mut ready), summary(&mut logged));
    Ok(())
}

// ------------------------------------------------------------------- stats

fn stats(args: &Args) -> Result<()> {
    let positional = args.positional(&[]);
    let (values, files): (Vec<f64>, &[String]) = match positional.first().map(String::as_str) {
        Some("h2load") => (Vec::new(), &positional[1..]),
        Some("field") if positional.len() >= 2 => (Vec::new(), &positional[2..]),
        _ => return Err("stats (h2load | field NAME) FILE...".into()),
    };
    let mut values = values;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
        if positional[0] == "h2load" {
            // start time (µs since epoch) \t status \t duration (µs)
            values.extend(text.lines().filter_map(|l| {
                let mut cols = l.split('\t');
                let status: i64 = cols.nth(1)?.trim().parse().ok()?;
                let micros: f64 = cols.next()?.trim().parse().ok()?;
                (status > 0).then_some(micros / 1000.0)
            }));
        } else {
            let needle = format!("\"{}\":", positional[1]);
            values.extend(text.lines().filter_map(|l| {
                let at = l.find(&needle)? + needle.len();
                let rest = &l[at..];
                let end = rest.find([',', '}']).unwrap_or(rest.len());
                rest[..end].trim().parse::<f64>().ok()
            }));
        }
    }
    println!("{}", percentiles(&mut values));
    Ok(())
}

/// `n p50 p99 p99.9 max`, nearest rank, in the values' unit.
fn percentiles(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "0 - - - -".into();
    }
    values.sort_by(f64::total_cmp);
    let rank = |p: f64| {
        let index = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[index]
    };
    format!(
        "{} {:.3} {:.3} {:.3} {:.3}",
        values.len(),
        rank(0.50),
        rank(0.99),
        rank(0.999),
        values[values.len() - 1]
    )
}

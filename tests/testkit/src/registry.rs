//! A real CNCF distribution registry (`/usr/bin/docker-registry`, Debian's
//! `docker-registry` package) per test, plus skopeo helpers to push and inspect.

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::http::probe_status;
use crate::process::spawn_tied;
use crate::tls::TestCa;
use crate::token::{TokenRequest, TokenServer};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const INSTALL_HINT: &str = "apt-get install -y docker-registry skopeo apache2-utils";
const DIR_PREFIX: &str = "archway-registry-";
const OWNER_FILE: &str = "owner.pid";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
pub const TOKEN_SERVICE: &str = "archway-test-registry";
const TOKEN_ISSUER: &str = "archway-test-token-issuer";

#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// htpasswd Basic auth; with `token_auth` these are instead the
    /// credentials the token server demands.
    pub basic_auth: Option<(String, String)>,
    /// Bearer token auth through a harness token server. Without
    /// `basic_auth` the token server grants tokens to anonymous clients.
    pub token_auth: bool,
}

impl RegistryOptions {
    pub fn plain() -> Self {
        Self::default()
    }

    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    pub fn with_basic_auth(mut self, user: &str, pass: &str) -> Self {
        self.basic_auth = Some((user.to_string(), pass.to_string()));
        self
    }

    pub fn with_token_auth(mut self) -> Self {
        self.token_auth = true;
        self
    }
}

/// Manifest format for [`Registry::push`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// OCI index / OCI manifest, as built.
    Oci,
    /// Docker manifest list / Docker schema 2 manifest (skopeo converts).
    V2s2,
}

struct TlsFiles {
    ca_pem: String,
    ca_path: PathBuf,
    /// Directory with `ca.crt`, the layout skopeo's `--cert-dir` expects.
    cert_dir: PathBuf,
}

pub struct Registry {
    dir: TempDir,
    port: u16,
    config_path: PathBuf,
    log_path: PathBuf,
    tls: Option<TlsFiles>,
    credentials: Option<(String, String)>,
    token: Option<TokenServer>,
    // Behind a Mutex so stop/start work through `&Registry` (e.g. in a static).
    child: Mutex<Option<Child>>,
}

impl Registry {
    /// Writes a config, starts the registry and waits until `GET /v2/` answers.
    pub fn start(options: RegistryOptions) -> Registry {
        for tool in [REGISTRY_BIN, "skopeo", "htpasswd"] {
            assert!(
                which(tool),
                "`{tool}` not found; install with `{INSTALL_HINT}`"
            );
        }
        sweep_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("registry tempdir");
        let root = dir.path().to_path_buf();
        std::fs::write(root.join(OWNER_FILE), std::process::id().to_string()).unwrap();
        std::fs::create_dir_all(root.join("storage")).unwrap();

        let tls = options.tls.then(|| {
            let ca = TestCa::new("archway test CA");
            let server = ca.issue_server(&["127.0.0.1", "localhost"]);
            std::fs::write(root.join("server.crt"), &server.cert_pem).unwrap();
            std::fs::write(root.join("server.key"), &server.key_pem).unwrap();
            let cert_dir = root.join("certs.d");
            std::fs::create_dir_all(&cert_dir).unwrap();
            std::fs::write(cert_dir.join("ca.crt"), &ca.cert_pem).unwrap();
            let ca_path = root.join("ca.pem");
            std::fs::write(&ca_path, &ca.cert_pem).unwrap();
            TlsFiles {
                ca_pem: ca.cert_pem.clone(),
                ca_path,
                cert_dir,
            }
        });

        let token = options.token_auth.then(|| {
            let server =
                TokenServer::start(TOKEN_SERVICE, TOKEN_ISSUER, options.basic_auth.clone());
            std::fs::write(root.join("token-root.pem"), &server.root_cert_pem).unwrap();
            server
        });

        if let (Some((user, pass)), None) = (&options.basic_auth, &token) {
            // distribution only accepts bcrypt entries.
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .expect("run htpasswd");
            assert!(out.status.success(), "htpasswd failed: {out:?}");
            std::fs::write(root.join("htpasswd"), &out.stdout).unwrap();
        }

        let mut registry = Registry {
            config_path: root.join("config.yml"),
            log_path: root.join("registry.log"),
            dir,
            port: 0,
            tls,
            credentials: options.basic_auth.clone(),
            token,
            child: Mutex::new(None),
        };
        // A free port can be taken by a parallel test between probing and the
        // registry's bind, so retry with a new one when that happens.
        for attempt in 1..=5 {
            registry.port = free_port();
            registry.write_config();
            match registry.spawn_and_wait() {
                Ok(()) => return registry,
                Err(e) if e.contains("address already in use") && attempt < 5 => continue,
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!()
    }

    fn write_config(&self) {
        let root = self.dir.path();
        let mut cfg = format!(
            "version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  # Fixed so upload state stays valid across stop/start.
  secret: archway-test-secret
",
            storage = root.join("storage").display(),
            port = self.port,
        );
        if self.tls.is_some() {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                root.join("server.crt").display(),
                root.join("server.key").display()
            ));
        }
        if let Some(token) = &self.token {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                token.realm(),
                token.service,
                token.issuer,
                root.join("token-root.pem").display()
            ));
        } else if self.credentials.is_some() {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: archway-test\n    path: {}\n",
                root.join("htpasswd").display()
            ));
        }
        std::fs::write(&self.config_path, cfg).expect("write registry config");
    }

    fn spawn_and_wait(&self) -> Result<(), String> {
        let mut guard = self.child.lock().unwrap();
        assert!(guard.is_none(), "registry already running");
        let log_start = std::fs::metadata(&self.log_path)
            .map(|m| m.len())
            .unwrap_or(0);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open registry log");
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = spawn_tied(cmd).expect("spawn docker-registry");
        let deadline = Instant::now() + READY_TIMEOUT;
        let ca = self.tls.as_ref().map(|t| t.ca_pem.as_str());
        loop {
            if let Some(status) = child.try_wait().expect("poll registry") {
                return Err(format!(
                    "docker-registry exited with {status} before answering /v2/; log:\n{}",
                    self.logs_since(log_start)
                ));
            }
            match probe_status(&self.host(), "/v2/", ca) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!(
                        "docker-registry did not answer GET /v2/ within {READY_TIMEOUT:?} ({e}); log:\n{}",
                        self.logs_since(log_start)
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        *guard = Some(child);
        Ok(())
    }

    /// "127.0.0.1:PORT"
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// "http://127.0.0.1:PORT" or "https://..."
    pub fn base_url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.host())
    }

    /// "127.0.0.1:PORT/<reference>", as used in a pod spec.
    pub fn image(&self, reference: &str) -> String {
        format!("{}/{reference}", self.host())
    }

    pub fn ca_pem(&self) -> Option<String> {
        self.tls.as_ref().map(|t| t.ca_pem.clone())
    }

    pub fn ca_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|t| t.ca_path.as_path())
    }

    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    pub fn token_server(&self) -> Option<&TokenServer> {
        self.token.as_ref()
    }

    /// Realm requests seen by the token server (empty without token auth).
    pub fn token_requests(&self) -> Vec<TokenRequest> {
        self.token
            .as_ref()
            .map(|t| t.requests())
            .unwrap_or_default()
    }

    /// The tempdir holding config, certificates, logs and storage.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// Everything the registry logged (access log included), across restarts.
    pub fn logs(&self) -> String {
        self.logs_since(0)
    }

    fn logs_since(&self, offset: u64) -> String {
        let bytes = std::fs::read(&self.log_path).unwrap_or_default();
        let start = (offset as usize).min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Process id of the running registry.
    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    pub fn is_running(&self) -> bool {
        let mut guard = self.child.lock().unwrap();
        match guard.as_mut() {
            Some(child) => child.try_wait().map(|s| s.is_none()).unwrap_or(false),
            None => false,
        }
    }

    /// Kills the registry; the port then refuses connections. Storage is kept.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port and storage.
    pub fn start_again(&self) {
        if let Err(e) = self.spawn_and_wait() {
            panic!("restarting registry on {}: {e}", self.host());
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// skopeo flags reaching this registry; `prefix` is "dest-", "src-" or "".
    fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        match &self.tls {
            Some(tls) => args.push(format!("--{prefix}cert-dir={}", tls.cert_dir.display())),
            None => args.push(format!("--{prefix}tls-verify=false")),
        }
        if let Some((user, pass)) = &self.credentials {
            args.push(format!("--{prefix}creds={user}:{pass}"));
        }
        args
    }

    /// Builds `spec` as an OCI layout in a directory of its own and pushes
    /// it as `reference`; its digest.
    pub fn push_spec(&self, reference: &str, spec: &crate::ImageSpec) -> String {
        let dir = tempfile::tempdir().expect("layout directory");
        let layout = crate::build_layout(dir.path(), spec);
        self.push(&layout.dir, reference, Format::Oci)
    }

    /// Pushes every image of an OCI layout as `reference` ("demo:v1") and
    /// returns the digest of the top-level manifest the registry now holds.
    pub fn push(&self, layout: impl AsRef<Path>, reference: &str, format: Format) -> String {
        self.try_push(layout, reference, format)
            .unwrap_or_else(|e| panic!("push {reference} ({format:?}): {e}"))
    }

    pub fn try_push(
        &self,
        layout: impl AsRef<Path>,
        reference: &str,
        format: Format,
    ) -> Result<String, String> {
        let args = self.skopeo_args("dest-");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo_push(layout.as_ref(), &self.image(reference), format, &args)
    }

    /// `skopeo inspect --raw` of `reference` on this registry.
    pub fn inspect_raw(&self, reference: &str) -> Vec<u8> {
        let args = self.skopeo_args("");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        skopeo_inspect_raw(&args, &self.image(reference))
            .unwrap_or_else(|e| panic!("inspect {reference}: {e}"))
    }

    /// Deletes a manifest (tag or digest) through the registry API.
    pub fn delete(&self, reference: &str) {
        let mut cmd = skopeo_command();
        cmd.arg("delete")
            .args(self.skopeo_args(""))
            .arg(format!("docker://{}", self.image(reference)));
        run(cmd).unwrap_or_else(|e| panic!("delete {reference}: {e}"));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Ok(mut guard) = self.child.lock()
            && let Some(mut child) = guard.take()
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `skopeo copy --all` of an OCI layout to `dest_image` ("HOST/repo:tag"),
/// e.g. through a proxy. `args` carry TLS/credential flags ("--dest-...").
/// Returns the digest of the top-level manifest written.
pub fn skopeo_push(
    layout: &Path,
    dest_image: &str,
    format: Format,
    args: &[&str],
) -> Result<String, String> {
    let digest_file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut cmd = skopeo_command();
    cmd.args(["copy", "--all", "--retry-times=0"])
        .arg(match format {
            Format::Oci => "--format=oci",
            Format::V2s2 => "--format=v2s2",
        })
        .arg(format!("--digestfile={}", digest_file.path().display()))
        .args(args)
        .arg(format!("oci:{}", layout.display()))
        .arg(format!("docker://{dest_image}"));
    run(cmd)?;
    let digest = std::fs::read_to_string(digest_file.path()).map_err(|e| e.to_string())?;
    Ok(digest.trim().to_string())
}

/// `skopeo inspect --raw ARGS docker://IMAGE`.
pub fn skopeo_inspect_raw(args: &[&str], image: &str) -> Result<Vec<u8>, String> {
    let mut cmd = skopeo_command();
    cmd.args(["inspect", "--raw", "--retry-times=0"])
        .args(args)
        .arg(format!("docker://{image}"));
    run(cmd)
}

/// A `skopeo` command with the global flags every call needs. skopeo refuses
/// to copy without a signature policy; Debian ships
/// /etc/containers/policy.json, but a bare machine may not have it.
pub fn skopeo_command() -> Command {
    let mut cmd = Command::new("skopeo");
    if !Path::new("/etc/containers/policy.json").exists() {
        cmd.arg("--insecure-policy");
    }
    cmd
}

/// Runs `cmd`, returning stdout or an error with its stderr.
pub fn run(mut cmd: Command) -> Result<Vec<u8>, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A `Registry` in a `static` is never dropped, so its tempdir outlives the
/// test process. Each dir records its owner pid; remove those whose owner is
/// gone (once per process).
fn sweep_stale_dirs() {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(|| {
        let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(DIR_PREFIX) {
                continue;
            }
            let Ok(owner) = std::fs::read_to_string(entry.path().join(OWNER_FILE)) else {
                continue;
            };
            let alive = Path::new(&format!("/proc/{}", owner.trim())).exists();
            if !alive {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find free port")
        .port()
}

fn which(tool: &str) -> bool {
    if tool.contains('/') {
        return Path::new(tool).exists();
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join(tool).is_file()))
        .unwrap_or(false)
}

//! A real Kubernetes control plane for the tests: etcd, kube-apiserver,
//! kube-controller-manager and kube-scheduler, built from their Go modules by
//! `tests/controlplane/build.sh`, run as child processes tied to this one.
//!
//! There is no kubelet. Nodes are Node objects created through the API, with
//! the labels, taints, capacity and Ready condition a kubelet would report;
//! the scheduler binds pods to them. [`FakeKubelet`] then does the two things
//! a kubelet does that controllers wait for: it reports bound pods running
//! and ready (so Deployments roll), and confirms the deletion of pods being
//! deleted (so they do not stay Terminating). A test that wants to write a
//! pod's status itself marks the pod with [`KUBELET_MANUAL`].
//!
//! `tests/cluster.sh` runs these same pieces through `tests/clusterkit.rs`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::process::spawn_tied;
use crate::repo_root;
use crate::tls::TestCa;

/// Pods with this annotation set to `manual` are left to the test: the fake
/// kubelet neither reports them running nor confirms their deletion.
pub const KUBELET_MANUAL: &str = "archway.test/kubelet";

const DIR_PREFIX: &str = "archway-controlplane-";
const OWNER_FILE: &str = "owner.pid";
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// The folder holding the control-plane binaries, built (or found in the
/// cache) by tests/controlplane/build.sh once per test process.
pub fn binaries() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = repo_root().join("tests/controlplane/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "{} failed ({}): the control plane could not be built",
            script.display(),
            out.status
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        PathBuf::from(
            stdout
                .lines()
                .last()
                .expect("build.sh printed no folder")
                .trim(),
        )
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A blocking `GET http://127.0.0.1:port/path`: status and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("no status")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `ready` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = ready() {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One child process of the control plane, restartable with the same
/// command line.
struct Component {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Component {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open component log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            // The API server would send webhook calls through a proxy.
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy");
        let child = spawn_tied(cmd)
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.program.display()));
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn exited(&mut self) -> Option<String> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => Some(format!(
                "{} exited ({status}); last log lines:\n{}",
                self.name,
                tail(&self.log, 30)
            )),
            _ => None,
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// etcd, kube-apiserver, kube-controller-manager and kube-scheduler on
/// 127.0.0.1, with a CA of their own and an admin kubeconfig.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub api_port: u16,
    /// The cluster CA: it signs the API server's certificate and every
    /// client certificate.
    pub ca: TestCa,
    pub admin_kubeconfig: PathBuf,
    pub audit_log: PathBuf,
    components: Mutex<Vec<Component>>,
    _temp: Option<tempfile::TempDir>,
}

impl ControlPlane {
    /// Starts a control plane in a fresh temporary folder.
    pub fn start() -> ControlPlane {
        remove_stale_dirs();
        let temp = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .expect("control-plane folder");
        std::fs::write(temp.path().join(OWNER_FILE), std::process::id().to_string())
            .expect("write owner file");
        let mut plane = ControlPlane::start_in(temp.path());
        plane._temp = Some(temp);
        plane
    }

    /// Starts a control plane whose files (etcd data, certificates,
    /// kubeconfigs, logs) live in `dir`, which is kept.
    pub fn start_in(dir: &Path) -> ControlPlane {
        let bin = binaries();
        let dir = dir.to_path_buf();
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("pki folder");
        let ca = TestCa::new("archway test cluster CA");
        write(&pki.join("ca.crt"), &ca.cert_pem);
        let serving = ca.issue_server(&["127.0.0.1", "localhost", "kubernetes.default.svc"]);
        write(&pki.join("apiserver.crt"), &serving.cert_pem);
        write(&pki.join("apiserver.key"), &serving.key_pem);
        // The key that signs ServiceAccount tokens (TokenRequest).
        let sa_key = rcgen::KeyPair::generate().expect("service-account key");
        write(&pki.join("sa.key"), &sa_key.serialize_pem());
        write(&pki.join("sa.pub"), &sa_key.public_key_pem());

        let api_port = free_port();
        let server = format!("https://127.0.0.1:{api_port}");
        let kubeconfig = |name: &str, user: &str, groups: &[&str]| {
            let cert = ca.issue_client(user, groups);
            let path = dir.join(format!("{name}.kubeconfig"));
            write(
                &path,
                &kubeconfig_yaml(
                    &server,
                    &ca.cert_pem,
                    ClientAuth::Cert(&cert.cert_pem, &cert.key_pem),
                ),
            );
            path
        };
        let admin_kubeconfig = kubeconfig("admin", "archway-test-admin", &["system:masters"]);
        let kcm_kubeconfig =
            kubeconfig("controller-manager", "system:kube-controller-manager", &[]);
        let scheduler_kubeconfig = kubeconfig("scheduler", "system:kube-scheduler", &[]);
        let audit_log = dir.join("audit.log");
        write(
            &dir.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\n\
             rules:\n  - level: Metadata\n",
        );
        write(
            &dir.join("scheduler.yaml"),
            &format!(
                "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\n\
                 clientConnection: {{kubeconfig: {}, qps: 500, burst: 1000}}\n\
                 leaderElection: {{leaderElect: false}}\n",
                scheduler_kubeconfig.display()
            ),
        );

        let etcd_port = free_port();
        let peer_port = free_port();
        let p = |file: &str| pki.join(file).display().to_string();
        let components = vec![
            Component {
                name: "etcd",
                program: bin.join("etcd"),
                args: vec![
                    "--name=archway-test".into(),
                    format!("--data-dir={}", dir.join("etcd").display()),
                    format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
                    format!("--initial-cluster=archway-test=http://127.0.0.1:{peer_port}"),
                    // Test data is thrown away: no fsync on every write.
                    "--unsafe-no-fsync".into(),
                    "--log-level=warn".into(),
                ],
                log: dir.join("etcd.log"),
                child: None,
            },
            Component {
                name: "kube-apiserver",
                program: bin.join("kube-apiserver"),
                args: vec![
                    format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={api_port}"),
                    format!("--tls-cert-file={}", p("apiserver.crt")),
                    format!("--tls-private-key-file={}", p("apiserver.key")),
                    format!("--client-ca-file={}", p("ca.crt")),
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                    format!("--service-account-key-file={}", p("sa.pub")),
                    format!("--service-account-signing-key-file={}", p("sa.key")),
                    "--authorization-mode=Node,RBAC".into(),
                    "--service-cluster-ip-range=10.96.0.0/16".into(),
                    // The `kubernetes` Service's endpoints would be
                    // 127.0.0.1, which Endpoints validation refuses.
                    "--endpoint-reconciler-type=none".into(),
                    format!(
                        "--audit-policy-file={}",
                        dir.join("audit-policy.yaml").display()
                    ),
                    format!("--audit-log-path={}", audit_log.display()),
                    "--allow-privileged=true".into(),
                    "--v=1".into(),
                ],
                log: dir.join("kube-apiserver.log"),
                child: None,
            },
            Component {
                name: "kube-controller-manager",
                program: bin.join("kube-controller-manager"),
                args: vec![
                    format!("--kubeconfig={}", kcm_kubeconfig.display()),
                    format!("--service-account-private-key-file={}", p("sa.key")),
                    format!("--root-ca-file={}", p("ca.crt")),
                    // No kubelet renews node leases here: the node
                    // lifecycle controller would mark every node
                    // unreachable and evict its pods.
                    "--controllers=*,-nodelifecycle".into(),
                    // Each controller as its own ServiceAccount, as kubeadm
                    // runs it: the bootstrap RBAC grants the controllers'
                    // permissions to those accounts, not to the manager.
                    "--use-service-account-credentials=true".into(),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--kube-api-qps=500".into(),
                    "--kube-api-burst=1000".into(),
                    "--concurrent-replicaset-syncs=10".into(),
                    "--v=1".into(),
                ],
                log: dir.join("kube-controller-manager.log"),
                child: None,
            },
            Component {
                name: "kube-scheduler",
                program: bin.join("kube-scheduler"),
                args: vec![
                    format!("--config={}", dir.join("scheduler.yaml").display()),
                    "--secure-port=0".into(),
                    "--v=1".into(),
                ],
                log: dir.join("kube-scheduler.log"),
                child: None,
            },
        ];
        let plane = ControlPlane {
            dir: dir.clone(),
            api_port,
            ca,
            admin_kubeconfig,
            audit_log,
            components: Mutex::new(components),
            _temp: None,
        };
        plane.start_component("etcd");
        wait_for("etcd to be healthy", START_TIMEOUT, || {
            plane.check_running();
            http_get(etcd_port, "/health")
                .ok()
                .filter(|(status, body)| *status == 200 && body.contains("true"))
        });
        plane.start_component("kube-apiserver");
        plane.wait_until_api_ready();
        plane.start_component("kube-controller-manager");
        plane.start_component("kube-scheduler");
        plane
    }

    fn start_component(&self, name: &str) {
        let mut components = self.components.lock().unwrap();
        let component = components
            .iter_mut()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no component {name}"));
        component.spawn();
    }

    /// Panics with the component's log if one has exited.
    fn check_running(&self) {
        let mut components = self.components.lock().unwrap();
        for component in components.iter_mut() {
            if let Some(report) = component.exited() {
                panic!("{report}");
            }
        }
    }

    /// Waits for `/readyz` (storage, RBAC bootstrap, every post-start hook).
    fn wait_until_api_ready(&self) {
        wait_for("kube-apiserver /readyz", START_TIMEOUT, || {
            self.check_running();
            self.try_kubectl(&["get", "--raw", "/readyz"], None)
                .ok()
                .filter(|out| out.trim() == "ok")
        });
    }

    /// Kills the API server (SIGKILL, as a crash or an OOM kill would) and
    /// starts it again on the same port after `down`.
    pub fn restart_apiserver(&self, down: Duration) {
        {
            let mut components = self.components.lock().unwrap();
            let api = components
                .iter_mut()
                .find(|c| c.name == "kube-apiserver")
                .unwrap();
            api.kill();
        }
        std::thread::sleep(down);
        self.start_component("kube-apiserver");
        self.wait_until_api_ready();
    }

    /// `archway audit args... --config FILE` against this cluster as
    /// `kubeconfig`'s user, FILE holding `config` (YAML: the registries to
    /// trust, prices); the report, once archway succeeded.
    pub fn archway_audit(
        &self,
        archway: &Path,
        args: &[&str],
        config: &str,
        kubeconfig: &Path,
    ) -> Vec<u8> {
        static AUDITS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = AUDITS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = self.dir.join(format!("audit-{n}.yaml"));
        write(&path, config);
        let out = std::process::Command::new(archway)
            .arg("audit")
            .args(args)
            .arg("--config")
            .arg(&path)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "archway audit {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// A kubeconfig for the user `user` in `groups`, by client certificate.
    pub fn kubeconfig_for(&self, user: &str, groups: &[&str]) -> PathBuf {
        let cert = self.ca.issue_client(user, groups);
        let path = self.dir.join(format!("{user}.kubeconfig"));
        write(
            &path,
            &kubeconfig_yaml(
                &self.server_url(),
                &self.ca.cert_pem,
                ClientAuth::Cert(&cert.cert_pem, &cert.key_pem),
            ),
        );
        path
    }

    /// Makes the namespace `archway`, applies the shipped RBAC
    /// (deploy/base/rbac.yaml), and returns a kubeconfig of archway's
    /// ServiceAccount (by client certificate): a client with exactly the
    /// permissions archway is given.
    pub fn archway_account(&self) -> PathBuf {
        self.create_namespace("archway", &[], &[]);
        let rbac = repo_root().join("deploy/base/rbac.yaml");
        self.kubectl(&["apply", "-f", rbac.to_str().unwrap()], None);
        self.kubeconfig_for(
            "system:serviceaccount:archway:archway",
            &["system:serviceaccounts", "system:serviceaccounts:archway"],
        )
    }

    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// `kubectl` (the one built with the control plane) as the cluster admin.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(binaries().join("kubectl"));
        cmd.env("KUBECONFIG", &self.admin_kubeconfig);
        cmd
    }

    /// Who holds archway's leader Lease (`archway-gate`, in whatever
    /// namespace): `None` while nobody does, or before it exists.
    pub fn lease_holder(&self) -> Option<String> {
        let text = self
            .try_kubectl(&["get", "lease", "-A", "-o", "json"], None)
            .ok()?;
        let leases: serde_json::Value = serde_json::from_str(&text).ok()?;
        leases["items"]
            .as_array()?
            .iter()
            .find(|l| l["metadata"]["name"] == "archway-gate")?["spec"]["holderIdentity"]
            .as_str()
            .filter(|h| !h.is_empty())
            .map(str::to_string)
    }

    pub fn try_kubectl(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        run_kubectl(self.kubectl_command(), args, stdin)
    }

    /// Runs kubectl and returns its stdout; panics with stderr if it fails.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.try_kubectl(args, stdin)
            .unwrap_or_else(|e| panic!("kubectl {}: {e}", args.join(" ")))
    }

    /// `kubectl apply --server-side` of JSON objects.
    pub fn apply(&self, objects: &[Value]) -> String {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        self.kubectl(
            &[
                "apply",
                "--server-side",
                "--field-manager=archway-tests",
                "-f",
                "-",
            ],
            Some(&list.to_string()),
        )
    }

    /// A kube client acting as the cluster admin, for the calling runtime.
    pub async fn client(&self) -> kube::Client {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// The audit log so far (one JSON event per line).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_log)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// Creates a namespace with `labels` and `annotations` and waits for its
    /// `default` ServiceAccount, without which the ServiceAccount admission
    /// plugin refuses pods.
    pub fn create_namespace(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        annotations: &[(&str, &str)],
    ) {
        self.apply(&[json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": pairs(labels), "annotations": pairs(annotations)}
        })]);
        wait_for(
            &format!("the default ServiceAccount of {name}"),
            Duration::from_secs(30),
            || {
                self.try_kubectl(
                    &["-n", name, "get", "serviceaccount", "default", "-o", "name"],
                    None,
                )
                .ok()
            },
        );
    }

    /// Creates the node pools and makes every node schedulable.
    pub fn create_nodes(&self, pools: &[NodePool]) {
        let nodes: Vec<Value> = pools.iter().flat_map(NodePool::nodes).collect();
        self.apply(&nodes);
        for pool in pools {
            for name in pool.names() {
                // As the kubelet reports it, through the status subresource.
                let status = json!({"status": pool.status()});
                self.kubectl(
                    &[
                        "patch",
                        "node",
                        &name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &status.to_string(),
                    ],
                    None,
                );
                // The TaintNodesByCondition admission plugin taints every new
                // node not-ready; the node lifecycle controller would lift it
                // once the node reports Ready. It does not run here (no
                // kubelet renews leases), so lift it as it would: the node
                // keeps exactly its pool's taints.
                let spec = json!({"spec": {"taints": pool.taints}});
                self.kubectl(
                    &[
                        "patch",
                        "node",
                        &name,
                        "--type=merge",
                        "-p",
                        &spec.to_string(),
                    ],
                    None,
                );
            }
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(mut components) = self.components.lock() {
            for component in components.iter_mut().rev() {
                component.kill();
            }
        }
    }
}

fn run_kubectl(mut cmd: Command, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run kubectl: {e}"))?;
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("kubectl stdin");
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("write kubectl stdin: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("wait for kubectl: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn pairs(pairs: &[(&str, &str)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
            .collect(),
    )
}

fn write(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Removes control-plane folders whose owning test process has exited.
fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_ours = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_ours {
            continue;
        }
        let owner: Option<i32> = std::fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|s| s.trim().parse().ok());
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let alive = owner.is_some_and(|pid| unsafe { libc::kill(pid, 0) } == 0);
        if !alive {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

pub enum ClientAuth<'a> {
    Cert(&'a str, &'a str),
    Token(&'a str),
}

pub fn kubeconfig_yaml(server: &str, ca_pem: &str, auth: ClientAuth<'_>) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match auth {
        ClientAuth::Cert(cert, key) => json!({
            "client-certificate-data": b64(cert), "client-key-data": b64(key)
        }),
        ClientAuth::Token(token) => json!({"token": token}),
    };
    // JSON is YAML, and kubeconfig readers take either.
    json!({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "archway-test", "cluster": {
            "server": server, "certificate-authority-data": b64(ca_pem)}}],
        "users": [{"name": "archway-test", "user": user}],
        "contexts": [{"name": "archway-test", "context": {"cluster": "archway-test", "user": "archway-test"}}],
        "current-context": "archway-test",
    })
    .to_string()
}

pub async fn client_from_kubeconfig(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig to client config");
    kube::Client::try_from(config).expect("kube client")
}

/// A pool of identical nodes, as a cloud node pool would register them.
#[derive(Clone, Debug)]
pub struct NodePool {
    pub prefix: &'static str,
    pub os: &'static str,
    pub arch: &'static str,
    pub count: usize,
    pub taints: Vec<Value>,
}

impl NodePool {
    pub fn new(prefix: &'static str, os: &'static str, arch: &'static str, count: usize) -> Self {
        NodePool {
            prefix,
            os,
            arch,
            count,
            taints: Vec::new(),
        }
    }

    /// Taints every node `key=value:effect`.
    pub fn tainted(mut self, key: &str, value: &str, effect: &str) -> Self {
        self.taints
            .push(json!({"key": key, "value": value, "effect": effect}));
        self
    }

    /// The pools the tests and tests/cluster.sh use: amd64 nodes, and arm64
    /// nodes reserved by a taint (as the AKS migration plan taints its arm64
    /// pool), so only pods that tolerate it land there.
    pub fn standard() -> Vec<NodePool> {
        vec![
            NodePool::new("amd64", "linux", "amd64", 3),
            NodePool::new("arm64", "linux", "arm64", 3).tainted(
                "kubernetes.io/arch",
                "arm64",
                "NoSchedule",
            ),
        ]
    }

    pub fn names(&self) -> Vec<String> {
        (0..self.count)
            .map(|i| format!("{}-{i}", self.prefix))
            .collect()
    }

    fn nodes(&self) -> Vec<Value> {
        self.names()
            .into_iter()
            .map(|name| {
                json!({
                    "apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": name, "labels": {
                        "kubernetes.io/arch": self.arch,
                        "kubernetes.io/os": self.os,
                        "kubernetes.io/hostname": name,
                        "archway.test/pool": self.prefix,
                    }},
                    "spec": {"taints": self.taints},
                })
            })
            .collect()
    }

    fn status(&self) -> Value {
        let now = "2026-01-01T00:00:00Z";
        let resources = json!({"cpu": "64", "memory": "256Gi", "pods": "250"});
        json!({
            "capacity": resources, "allocatable": resources,
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "archway test node: a Node object, no kubelet",
                "lastHeartbeatTime": now, "lastTransitionTime": now,
            }],
            "nodeInfo": {"architecture": self.arch, "operatingSystem": self.os},
        })
    }
}

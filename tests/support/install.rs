//! archway installed on a [`ControlPlane`] the way a user installs it:
//! `kubectl kustomize deploy/` applied with server-side apply, every object
//! as it is, with one change: the webhook's `clientConfig`.
//!
//! There is no service network here (no kube-proxy, no pod network, no
//! kubelet to run archway's image), so the API server cannot reach
//! `service: archway/archway`. archway runs on the host instead, and the
//! webhook points at it by `url: https://127.0.0.1:PORT/mutate` with the CA
//! of its serving certificate as caBundle. It talks to the API server as the
//! `archway` ServiceAccount, with a token from the TokenRequest API, so the
//! RBAC in deploy/ is exactly what it runs with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use super::controlplane::{
    ClientAuth, ControlPlane, free_port, http_get, kubeconfig_yaml, repo_root, wait_for,
};
use super::process::spawn_tied;
use super::tls::TestCa;

/// The namespace in which installation checks that the API server calls
/// archway.
pub const PROBE_NAMESPACE: &str = "archway-probe";

pub struct InstalledArchway {
    pub dir: PathBuf,
    pub webhook_port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    /// archway's kubeconfig: the ServiceAccount token, nothing more.
    pub kubeconfig: PathBuf,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    /// `POD_NAME`, which names the replica in Events and the gate's Lease.
    pod_name: String,
    child: Mutex<Option<Child>>,
}

impl InstalledArchway {
    /// Installs deploy/ on `plane` and starts `archway serve` (the binary at
    /// `archway`) with deploy/'s configuration, trusting the plain-HTTP
    /// registries `insecure_registries`, after `edit` has changed the
    /// configuration as a test needs.
    pub fn install(
        plane: &ControlPlane,
        archway: &Path,
        insecure_registries: &[String],
        edit: impl FnOnce(&mut serde_yaml::Value),
    ) -> InstalledArchway {
        let dir = plane.dir.join("archway");
        std::fs::create_dir_all(&dir).expect("archway folder");
        let webhook_port = free_port();
        let admin_port = free_port();

        // The webhook's serving certificate, from a CA of its own, as
        // `archway certs` or cert-manager would make it.
        let webhook_ca = TestCa::new("archway webhook CA");
        let serving = webhook_ca.issue_server(&["127.0.0.1", "archway.archway.svc"]);
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &serving.cert_pem).expect("write tls.crt");
        std::fs::write(&key, &serving.key_pem).expect("write tls.key");

        apply_deploy(plane, webhook_port, &webhook_ca.cert_pem);

        // The ServiceAccount's token, from the TokenRequest API.
        let token = plane.kubectl(
            &[
                "-n",
                "archway",
                "create",
                "token",
                "archway",
                "--duration=24h",
            ],
            None,
        );
        let kubeconfig = dir.join("archway.kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(
                &plane.server_url(),
                &plane.ca.cert_pem,
                ClientAuth::Token(token.trim()),
            ),
        )
        .expect("write archway kubeconfig");

        let config_path = dir.join("archway.yaml");
        let mut config = deploy_config();
        config["registry"]["insecure"] = serde_yaml::to_value(insecure_registries).unwrap();
        config["server"]["listen"] = format!("127.0.0.1:{webhook_port}").into();
        config["server"]["adminListen"] = format!("127.0.0.1:{admin_port}").into();
        edit(&mut config);
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap())
            .expect("write archway.yaml");

        let installed = InstalledArchway {
            log: dir.join("archway.log"),
            dir,
            webhook_port,
            admin_port,
            config_path: config_path.clone(),
            kubeconfig,
            program: archway.to_path_buf(),
            args: vec![
                "serve".into(),
                format!("--config={}", config_path.display()),
                format!("--tls-cert={}", cert.display()),
                format!("--tls-key={}", key.display()),
            ],
            pod_name: "archway-0".into(),
            child: Mutex::new(None),
        };
        installed.start();
        installed.wait_until_called(plane);
        installed
    }

    /// A second replica beside this one, as deploy/'s Deployment runs two:
    /// `archway serve` with the same configuration, certificate and
    /// ServiceAccount, on ports of its own, named `pod_name`. The webhook
    /// still calls this one; both watch the same API server.
    pub fn another_replica(&self, pod_name: &str) -> InstalledArchway {
        let dir = self.dir.join(pod_name);
        std::fs::create_dir_all(&dir).expect("replica folder");
        let webhook_port = free_port();
        let admin_port = free_port();
        let text = std::fs::read_to_string(&self.config_path).expect("read archway.yaml");
        let mut config: serde_yaml::Value = serde_yaml::from_str(&text).expect("archway.yaml");
        config["server"]["listen"] = format!("127.0.0.1:{webhook_port}").into();
        config["server"]["adminListen"] = format!("127.0.0.1:{admin_port}").into();
        let config_path = dir.join("archway.yaml");
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap())
            .expect("write the replica's archway.yaml");
        let args = (self.args.iter())
            .map(|arg| match arg.starts_with("--config=") {
                true => format!("--config={}", config_path.display()),
                false => arg.clone(),
            })
            .collect();
        let replica = InstalledArchway {
            log: dir.join("archway.log"),
            dir,
            webhook_port,
            admin_port,
            config_path,
            kubeconfig: self.kubeconfig.clone(),
            program: self.program.clone(),
            args,
            pod_name: pod_name.into(),
            child: Mutex::new(None),
        };
        replica.start();
        replica
    }

    /// Starts `archway serve` and waits for `/readyz`, which needs both
    /// cluster watches synced.
    pub fn start(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open archway log");
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("POD_NAME", &self.pod_name)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        for (name, _) in std::env::vars() {
            if name.starts_with("ARCHWAY_") {
                cmd.env_remove(name);
            }
        }
        let child = spawn_tied(cmd).expect("start archway serve");
        *self.child.lock().unwrap() = Some(child);
        let started = Instant::now();
        wait_for("archway /readyz", Duration::from_secs(30), || {
            if let Some(child) = self.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("archway serve exited ({status}):\n{}", self.logs());
            }
            http_get(self.admin_port, "/readyz")
                .ok()
                .filter(|(status, _)| *status == 200)
        });
        eprintln!("archway ready in {:?}", started.elapsed());
    }

    /// The process id of the running `archway serve`, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.child.lock().unwrap();
        let child = child.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// Kills `archway serve` (SIGKILL).
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        match http_get(self.admin_port, "/metrics") {
            Ok((200, body)) => body,
            other => panic!("GET /metrics: {other:?}"),
        }
    }

    /// The sum of a counter's samples whose labels include every `labels`
    /// pair (e.g. `archway_reviews_total` with `namespace="shop"`).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_samples(&self.metrics(), name, labels)
    }

    /// Waits until the API server calls archway: the webhook configuration
    /// reaches the API server's informer a moment after it is applied.
    fn wait_until_called(&self, plane: &ControlPlane) {
        plane.create_namespace(PROBE_NAMESPACE, &[("archway.dev/mode", "audit")], &[]);
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "probe"},
            "spec": {"containers": [{"name": "probe", "image": "probe.invalid/probe:v1"}]},
        })
        .to_string();
        let before = self.counter("archway_reviews_total", &[("namespace", PROBE_NAMESPACE)]);
        wait_for(
            "the API server to call archway",
            Duration::from_secs(30),
            || {
                let _ = plane.try_kubectl(
                    &[
                        "-n",
                        PROBE_NAMESPACE,
                        "create",
                        "--dry-run=server",
                        "-f",
                        "-",
                        "-o",
                        "name",
                    ],
                    Some(&pod),
                );
                (self.counter("archway_reviews_total", &[("namespace", PROBE_NAMESPACE)]) > before)
                    .then_some(())
            },
        );
    }
}

impl Drop for InstalledArchway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// deploy/base/archway.yaml, the configuration a user installs.
pub fn deploy_config() -> serde_yaml::Value {
    let path = repo_root().join("deploy/base/archway.yaml");
    let text = std::fs::read_to_string(&path).expect("read deploy/base/archway.yaml");
    serde_yaml::from_str(&text).expect("deploy/base/archway.yaml is YAML")
}

/// `kubectl kustomize deploy/`, each object as it is but the webhook's
/// `clientConfig`, applied with server-side apply. archway's Deployment is
/// then scaled to 0: its image cannot run without a kubelet, and archway
/// runs on the host instead.
fn apply_deploy(plane: &ControlPlane, webhook_port: u16, ca_pem: &str) {
    let deploy = repo_root().join("deploy");
    let rendered = plane.kubectl(&["kustomize", &deploy.display().to_string()], None);
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&rendered) {
        let mut object: Value =
            serde::Deserialize::deserialize(document).expect("kustomize output is YAML");
        if object.is_null() {
            continue;
        }
        if object["kind"] == "MutatingWebhookConfiguration" {
            for webhook in object["webhooks"].as_array_mut().expect("webhooks") {
                webhook["clientConfig"] = json!({
                    "url": format!("https://127.0.0.1:{webhook_port}/mutate"),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
                });
            }
        }
        objects.push(object);
    }
    plane.apply(&objects);
    plane.kubectl(
        &[
            "-n",
            "archway",
            "scale",
            "deployment",
            "archway",
            "--replicas=0",
        ],
        None,
    );
}

/// Sums the samples of `name` in Prometheus text whose labels contain every
/// `labels` pair.
pub fn sum_samples(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

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
//!
//! [`InstalledArchway::install_replicas`] runs N replicas instead, behind a
//! real load balancer ([`Balancer`]) at which the webhook points, as
//! deploy/'s two replicas run behind their Service.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::balancer::{Backend, Balancer};
use crate::controlplane::{
    ClientAuth, ControlPlane, free_port, http_get, kubeconfig_yaml, wait_for,
};
use crate::process::spawn_tied;
use crate::repo_root;
use crate::tls::TestCa;

/// The namespace in which installation checks that the API server calls
/// archway.
const PROBE_NAMESPACE: &str = "archway-probe";

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
        let installed = InstalledArchway::prepare(plane, archway, insecure_registries, edit, None);
        installed.start();
        wait_until_called(plane, &[&installed]);
        installed
    }

    /// Installs deploy/ on `plane` as `replicas` replicas of `archway
    /// serve` (named `archway-0`, `archway-1`, ..., each its `POD_NAME`)
    /// behind a [`Balancer`], at which the webhook's `clientConfig` points:
    /// as deploy/ runs archway behind its Service. `insecure_registries`
    /// and `edit` as for [`InstalledArchway::install`].
    pub fn install_replicas(
        plane: &ControlPlane,
        archway: &Path,
        insecure_registries: &[String],
        replicas: usize,
        edit: impl FnOnce(&mut serde_yaml::Value),
    ) -> Replicas {
        assert!(replicas >= 1, "at least one replica");
        let balancer_port = free_port();
        let first = InstalledArchway::prepare(
            plane,
            archway,
            insecure_registries,
            edit,
            Some(balancer_port),
        );
        let mut all = vec![first];
        for i in 1..replicas {
            let replica = all[0].replica(&format!("archway-{i}"));
            all.push(replica);
        }
        let backends: Vec<Backend> = (all.iter())
            .map(|r| Backend {
                name: r.pod_name.clone(),
                port: r.webhook_port,
                admin_port: r.admin_port,
            })
            .collect();
        let balancer = Balancer::start(&all[0].dir.join("balancer"), balancer_port, &backends);
        for replica in &all {
            replica.start();
        }
        for replica in &all {
            balancer.wait_until_up(&replica.pod_name, Duration::from_secs(10));
        }
        wait_until_called(plane, &all.iter().collect::<Vec<_>>());
        Replicas {
            balancer,
            replicas: all,
        }
    }

    /// The first replica, not started: deploy/ applied with the webhook's
    /// `clientConfig` at 127.0.0.1:`webhook_port` (this replica's own port
    /// if `None`), its certificate, ServiceAccount token and configuration
    /// written.
    fn prepare(
        plane: &ControlPlane,
        archway: &Path,
        insecure_registries: &[String],
        edit: impl FnOnce(&mut serde_yaml::Value),
        webhook_port: Option<u16>,
    ) -> InstalledArchway {
        let dir = plane.dir.join("archway");
        std::fs::create_dir_all(&dir).expect("archway folder");
        let listen_port = free_port();
        let admin_port = free_port();

        // The webhook's serving certificate, from a CA of its own, as
        // `archway certs` or cert-manager would make it.
        let webhook_ca = TestCa::new("archway webhook CA");
        let serving = webhook_ca.issue_server(&["127.0.0.1", "archway.archway.svc"]);
        let cert = dir.join("tls.crt");
        let key = dir.join("tls.key");
        std::fs::write(&cert, &serving.cert_pem).expect("write tls.crt");
        std::fs::write(&key, &serving.key_pem).expect("write tls.key");

        apply_deploy(
            plane,
            webhook_port.unwrap_or(listen_port),
            &webhook_ca.cert_pem,
        );

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
        config["server"]["listen"] = format!("127.0.0.1:{listen_port}").into();
        config["server"]["adminListen"] = format!("127.0.0.1:{admin_port}").into();
        edit(&mut config);
        std::fs::write(&config_path, serde_yaml::to_string(&config).unwrap())
            .expect("write archway.yaml");

        InstalledArchway {
            log: dir.join("archway.log"),
            dir,
            webhook_port: listen_port,
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
        }
    }

    /// A second replica beside this one, as deploy/'s Deployment runs two:
    /// `archway serve` with the same configuration, certificate and
    /// ServiceAccount, on ports of its own, named `pod_name`. The webhook
    /// still calls this one; both watch the same API server.
    pub fn another_replica(&self, pod_name: &str) -> InstalledArchway {
        let replica = self.replica(pod_name);
        replica.start();
        replica
    }

    /// Another replica as [`InstalledArchway::another_replica`] makes it,
    /// not started.
    fn replica(&self, pod_name: &str) -> InstalledArchway {
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
        InstalledArchway {
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
        }
    }

    /// Starts `archway serve` and waits for `/readyz`, which needs both
    /// cluster watches synced; returns how long that took. After `kill` or
    /// `terminate` it starts again on the same ports (they are in its
    /// configuration file), so a balancer in front needs no change.
    pub fn start(&self) -> Duration {
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
        let took = started.elapsed();
        eprintln!("archway ({}) ready in {took:?}", self.pod_name);
        took
    }

    /// The process id of the running `archway serve`, if it is running.
    pub fn pid(&self) -> Option<u32> {
        let mut child = self.child.lock().unwrap();
        let child = child.as_mut()?;
        matches!(child.try_wait(), Ok(None)).then(|| child.id())
    }

    /// `POD_NAME`: the replica's name in Events, the Lease and the balancer.
    pub fn pod_name(&self) -> &str {
        &self.pod_name
    }

    /// Stops `archway serve` as the kubelet does (SIGTERM) and waits for it
    /// to exit, its drain done; returns how long that took. Not running:
    /// nothing to do.
    pub fn terminate(&self) -> Duration {
        let started = Instant::now();
        let Some(mut child) = self.child.lock().unwrap().take() else {
            return Duration::ZERO;
        };
        let pid = libc::pid_t::try_from(child.id()).expect("a pid");
        // SAFETY: kill only sends a signal, to our own child, not reaped yet.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!("{} exited ({status}) after SIGTERM", self.pod_name);
                return started.elapsed();
            }
            if started.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} still running 60 s after SIGTERM:\n{}",
                    self.pod_name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
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
}

impl Drop for InstalledArchway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// archway as N replicas behind a load balancer, as deploy/ runs it behind
/// its Service. Fields drop in order: the balancer goes first.
pub struct Replicas {
    pub balancer: Balancer,
    pub replicas: Vec<InstalledArchway>,
}

impl Replicas {
    /// The sum over the replicas of a counter's samples (see
    /// [`InstalledArchway::counter`]).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.replicas.iter().map(|r| r.counter(name, labels)).sum()
    }
}

/// Waits until the API server calls archway (any of `replicas`): the
/// webhook configuration reaches the API server's informer a moment after
/// it is applied.
fn wait_until_called(plane: &ControlPlane, replicas: &[&InstalledArchway]) {
    plane.create_namespace(PROBE_NAMESPACE, &[("archway.dev/mode", "audit")], &[]);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "probe", "image": "probe.invalid/probe:v1"}]},
    })
    .to_string();
    let reviews = || -> f64 {
        (replicas.iter())
            .map(|r| r.counter("archway_reviews_total", &[("namespace", PROBE_NAMESPACE)]))
            .sum()
    };
    let before = reviews();
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
            (reviews() > before).then_some(())
        },
    );
}

/// deploy/base/archway.yaml, the configuration a user installs.
fn deploy_config() -> serde_yaml::Value {
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

//! A real load balancer in front of archway's replicas, as a Service and
//! kube-proxy put one in a cluster: Debian's HAProxy (tests/deps.sh
//! installs it) in TCP mode, so TLS passes through to archway and the API
//! server verifies archway's certificate as it would; round robin per
//! connection, as kube-proxy balances; each replica checked on its admin
//! port's `/readyz`, as the readiness probe does, and taken out of the
//! rotation at the first failed check.
//!
//! A connection to a replica that is down (its listener closed, or the
//! process gone) is redispatched to another one: a Service's endpoints
//! never list a pod that is not ready, and a closed port is what kube-proxy
//! would connect to in the moment before they are updated.
//!
//! The balancer's configuration names each replica by its ports, which a
//! replica keeps across `kill` and `start`: it is never reconfigured.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use crate::controlplane::wait_for;
use crate::process::spawn_tied;

/// Where Debian's package puts it.
const HAPROXY: &str = "/usr/sbin/haproxy";

/// One replica behind the balancer: its name and its two ports.
#[derive(Clone, Debug)]
pub struct Backend {
    pub name: String,
    /// The webhook's HTTPS port, where connections go.
    pub port: u16,
    /// The admin port, whose `/readyz` is checked.
    pub admin_port: u16,
}

/// What the balancer says of one backend (`show stat`).
#[derive(Clone, Debug, PartialEq)]
pub struct BackendStat {
    pub name: String,
    /// `UP`, `DOWN`, ...
    pub status: String,
    /// Connections sent to it since the balancer started.
    pub connections: u64,
}

pub struct Balancer {
    /// The port the webhook's `clientConfig` points at, on 127.0.0.1.
    pub port: u16,
    pub dir: PathBuf,
    pub log: PathBuf,
    socket: PathBuf,
    child: Mutex<Option<Child>>,
}

impl Balancer {
    /// Starts HAProxy listening on 127.0.0.1:`port` in front of
    /// `backends`, with its configuration, stats socket and log in `dir`,
    /// and waits until it answers on its socket. The backends need not be
    /// up yet: they are checked every 200 ms.
    pub fn start(dir: &Path, port: u16, backends: &[Backend]) -> Balancer {
        assert!(
            Path::new(HAPROXY).exists(),
            "{HAPROXY} is missing: run tests/deps.sh"
        );
        std::fs::create_dir_all(dir).expect("balancer folder");
        let socket = dir.join("haproxy.sock");
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, config_text(port, &socket, backends)).expect("write haproxy.cfg");
        let log = dir.join("haproxy.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("open haproxy log");
        let mut cmd = Command::new(HAPROXY);
        // -db: in the foreground, one process, so that it dies with the test.
        cmd.arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("clone log"))
            .stderr(out);
        let child = spawn_tied(cmd).expect("start haproxy");
        let balancer = Balancer {
            port,
            dir: dir.to_path_buf(),
            log,
            socket,
            child: Mutex::new(Some(child)),
        };
        wait_for("haproxy's stats socket", Duration::from_secs(10), || {
            if let Some(child) = balancer.child.lock().unwrap().as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("haproxy exited ({status}):\n{}", balancer.logs());
            }
            balancer.try_stats().ok()
        });
        balancer
    }

    /// Each backend's state and connections so far.
    pub fn stats(&self) -> Vec<BackendStat> {
        self.try_stats()
            .unwrap_or_else(|e| panic!("haproxy stats: {e}\n{}", self.logs()))
    }

    /// Waits until the balancer counts `name` up: connections go to it.
    pub fn wait_until_up(&self, name: &str, limit: Duration) {
        wait_for(&format!("haproxy to mark {name} UP"), limit, || {
            let stats = self.stats();
            let stat = stats.iter().find(|s| s.name == name);
            let stat = stat.unwrap_or_else(|| panic!("no backend {name}: {stats:?}"));
            stat.status.starts_with("UP").then_some(())
        });
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_stats(&self) -> Result<Vec<BackendStat>, String> {
        let mut stream = UnixStream::connect(&self.socket).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"show stat\n")
            .map_err(|e| e.to_string())?;
        let mut text = String::new();
        stream
            .read_to_string(&mut text)
            .map_err(|e| e.to_string())?;
        parse_stats(&text)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn config_text(port: u16, socket: &Path, backends: &[Backend]) -> String {
    let servers: String = backends
        .iter()
        .map(|b| {
            format!(
                "    server {} 127.0.0.1:{} check port {}\n",
                b.name, b.port, b.admin_port
            )
        })
        .collect();
    format!(
        "\
global
    maxconn 2048
    stats socket {socket} mode 600 level admin
    log stderr format raw local0 info

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    # A connection to a replica whose port is closed is tried again, on
    # another replica.
    retries 3
    option redispatch 1
    timeout connect 1s
    # Longer than the API server keeps an idle webhook connection (90 s),
    # so that the balancer never cuts one the API server thinks is open.
    timeout client 120s
    timeout server 120s
    timeout check 1s

frontend webhook
    bind 127.0.0.1:{port}
    default_backend archway

backend archway
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    default-server inter 200ms fall 1 rise 1
{servers}",
        socket = socket.display(),
    )
}

/// `show stat` is CSV whose header line starts with `# `; the backends'
/// rows are those of proxy `archway` other than the `BACKEND` summary.
fn parse_stats(text: &str) -> Result<Vec<BackendStat>, String> {
    let mut lines = text.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .ok_or_else(|| format!("no header in {text:?}"))?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no column {name} in {header}"))
    };
    let (proxy, server, status, total) = (
        column("pxname")?,
        column("svname")?,
        column("status")?,
        column("stot")?,
    );
    Ok(lines
        .map(|line| line.split(',').collect::<Vec<_>>())
        .filter(|row| row.len() > total && row[proxy] == "archway" && row[server] != "BACKEND")
        .map(|row| BackendStat {
            name: row[server].to_string(),
            status: row[status].to_string(),
            connections: row[total].parse().unwrap_or(0),
        })
        .collect())
}

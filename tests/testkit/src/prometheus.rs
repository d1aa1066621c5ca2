//! A real Prometheus server (built by tests/tools/build.sh beside promtool)
//! scraping what a test serves, for the dashboard's queries and the ramp's
//! Prometheus check.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::tools;

/// A Prometheus server, killed with the test (or by [`Prometheus::stop`]).
pub struct Prometheus {
    child: Child,
    /// `127.0.0.1:port`, where it answers.
    pub address: String,
    log: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` with `scrape_configs` (the YAML list's
    /// items, one per line, each `- {...}`), scraping every second, on a
    /// free port; returns once it is ready.
    pub async fn start(dir: &Path, scrape_configs: &[String]) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let mut text =
            String::from("global: { scrape_interval: 1s, scrape_timeout: 1s }\nscrape_configs:\n");
        for item in scrape_configs {
            text.push_str(item);
            text.push('\n');
        }
        std::fs::write(&config, text).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let log = dir.join("prometheus.log");
        let child = Command::new(tools::promtool().with_file_name("prometheus"))
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let prometheus = Prometheus {
            child,
            address,
            log,
        };
        wait_ready(
            &format!("http://{}/-/ready", prometheus.address),
            &prometheus.log,
        )
        .await;
        prometheus
    }

    /// `/api/v1/query` at now: the result vector, or Prometheus' error or
    /// warnings.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer: Value = reqwest::Client::new()
            .get(format!("http://{}/api/v1/query", self.address))
            .query(&[("query", expr)])
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        if let Some(warnings) = answer.get("warnings") {
            return Err(format!("warnings: {warnings}"));
        }
        Ok(answer["data"]["result"].as_array().unwrap().clone())
    }

    /// Waits until `expr` gives at least one series (a scrape has landed).
    pub async fn wait_for(&self, expr: &str) {
        let started = Instant::now();
        while self.query(expr).await.map(|r| r.is_empty()).unwrap_or(true) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{expr}: no series after a minute:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills it: what a Prometheus that is down looks like to its clients.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port free now on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for `url` to answer 200, failing with `log` after a minute.
pub async fn wait_ready(url: &str, log: &Path) {
    let started = Instant::now();
    while reqwest::get(url)
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{url} not ready:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

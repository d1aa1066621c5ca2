//! archway's monitoring in deploy/monitoring: the alerts pass
//! `promtool check rules` and fire as their unit tests (alerts.test.yaml)
//! say; the kustomization renders; and every metric name and label that
//! the dashboard and the alerts use is one a running archway exports,
//! checked against a real scrape of `archway serve` after traffic that
//! makes each of its metrics appear.
//!
//! promtool is built from its Go module by tests/tools/build.sh (the first
//! run on a machine takes minutes); kubectl and kubernetes-validate come
//! from tests/run.sh.

use archway_testkit as support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use support::apiserver::FakeApiServer;
use support::tools::{self, kind, kustomize, name, run, run_ok, validate};
use support::webhook::{SERVICE_NAME, client_for, install_crypto, pod_review};
use support::{
    CountingProxy, Fault, Format, ImageSpec, Registry, RegistryOptions, TestCa, build_layout,
};

fn monitoring() -> std::path::PathBuf {
    support::repo_root().join("deploy/monitoring")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(monitoring().join(file)).unwrap()
}

/// The PrometheusRule's spec: a plain Prometheus rule file.
fn rule_file(prometheus_rule: &str) -> serde_yaml::Value {
    let rule: serde_yaml::Value = serde_yaml::from_str(prometheus_rule).unwrap();
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    assert_eq!(rule["kind"], "PrometheusRule");
    assert_eq!(rule["metadata"]["namespace"], "archway");
    rule["spec"].clone()
}

/// Writes the rules as `archway-rules.yaml` (the name alerts.test.yaml
/// loads) into `dir`.
fn write_rules(dir: &Path, rules: &serde_yaml::Value) -> String {
    let path = dir.join("archway-rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(rules).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

/// The alerts: (name, expression, labels and annotations' text).
fn alerts() -> Vec<(String, String, String)> {
    let rules = rule_file(&read("prometheusrule.yaml"));
    let mut alerts = Vec::new();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let alert = rule["alert"].as_str().expect("alerting rules only");
            let templates =
                serde_yaml::to_string(&(&rule["labels"], &rule["annotations"])).unwrap();
            alerts.push((
                alert.to_string(),
                rule["expr"].as_str().unwrap().to_string(),
                templates,
            ));
        }
    }
    alerts
}

#[test]
fn promtool_accepts_the_rules_and_refuses_a_broken_one() {
    let dir = tempfile::tempdir().unwrap();
    let rules = rule_file(&read("prometheusrule.yaml"));
    let path = write_rules(dir.path(), &rules);
    let output = run_ok(tools::promtool(), &["check", "rules", &path]);
    let count = alerts().len();
    assert!(
        output.contains(&format!("SUCCESS: {count} rules found")),
        "{output}"
    );

    // The check can fail: an expression that does not parse, and a
    // template that does not.
    for (field, broken) in [
        ("expr", "sum(rate(archway_reviews_total[5m])"),
        ("summary", "{{ $labels.x "),
    ] {
        let mut rules = rules.clone();
        let rule = &mut rules["groups"][0]["rules"][0];
        match field {
            "expr" => rule["expr"] = broken.into(),
            _ => rule["annotations"]["summary"] = broken.into(),
        }
        let path = write_rules(dir.path(), &rules);
        let output = run(tools::promtool(), &["check", "rules", &path]);
        assert!(
            !output.status.success(),
            "promtool must refuse a broken {field}"
        );
    }
}

#[test]
fn the_alerts_fire_as_their_unit_tests_say() {
    let dir = tempfile::tempdir().unwrap();
    write_rules(dir.path(), &rule_file(&read("prometheusrule.yaml")));
    let tests = dir.path().join("alerts.test.yaml");
    std::fs::write(&tests, read("alerts.test.yaml")).unwrap();
    let output = run_ok(
        tools::promtool(),
        &["test", "rules", tests.to_str().unwrap()],
    );
    assert!(output.contains("SUCCESS"), "{output}");

    // Every alert has a test that sees it fire.
    let text = read("alerts.test.yaml");
    for (alert, _, _) in alerts() {
        assert!(
            text.contains(&format!("alertname=\"{alert}\",alertstate=\"firing\""))
                || text.contains(&format!("alertname: {alert}\n")),
            "no unit test for {alert}"
        );
    }

    // And the tests can fail: the same tests against a rule that never fires.
    let mut rules = rule_file(&read("prometheusrule.yaml"));
    rules["groups"][0]["rules"][0]["expr"] = "vector(1) < 0".into();
    write_rules(dir.path(), &rules);
    let output = run(
        tools::promtool(),
        &["test", "rules", tests.to_str().unwrap()],
    );
    assert!(
        !output.status.success(),
        "a rule that never fires must fail its test"
    );
}

#[test]
fn the_monitoring_kustomization_renders_the_dashboard_and_rules() {
    let objects = kustomize(&monitoring());
    // The ConfigMap through kubernetes-validate; the Prometheus Operator's
    // objects have no schema there, and are checked above and below.
    validate(&objects);
    let kinds: BTreeSet<(&str, &str)> = objects.iter().map(|o| (kind(o), name(o))).collect();
    assert_eq!(
        kinds,
        BTreeSet::from([
            ("ConfigMap", "archway-dashboard"),
            ("PodMonitor", "archway"),
            ("PrometheusRule", "archway"),
        ])
    );
    let dashboard = objects.iter().find(|o| kind(o) == "ConfigMap").unwrap();
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    assert_eq!(
        dashboard["data"]["archway.json"].as_str().unwrap(),
        read("dashboard.json")
    );

    // The PodMonitor scrapes the port archway serves /metrics on, of pods
    // the Deployment labels so.
    let monitor = objects.iter().find(|o| kind(o) == "PodMonitor").unwrap();
    let install = kustomize(&support::repo_root().join("deploy"));
    let deployment = install.iter().find(|o| kind(o) == "Deployment").unwrap();
    let pod = &deployment["spec"]["template"];
    for (key, value) in monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .unwrap()
    {
        assert_eq!(pod["metadata"]["labels"].get(key), Some(value));
    }
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    assert_eq!(endpoint["path"], "/metrics");
    let port = pod["spec"]["containers"][0]["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == endpoint["port"])
        .expect("the PodMonitor's port is a container port");
    assert_eq!(
        port["containerPort"], 8080,
        "the admin port serves /metrics"
    );
}

// ---------------------------------------------------------------------------
// What the dashboard and the alerts name

#[derive(Debug, Default)]
struct Names {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

/// The metric names and label names a PromQL expression uses (selectors,
/// matchers, and by/without/on/ignoring/group_* lists). Grafana's `$vars`
/// and string contents are not names.
fn promql_names(expr: &str) -> Names {
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    const KEYWORDS: &[&str] = &[
        "and", "or", "unless", "offset", "bool", "inf", "nan", "atan2",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let skip_space = |mut i: usize| {
        while i < chars.len() && chars[i].is_whitespace() {
            i += 1;
        }
        i
    };
    let skip_string = |i: usize| {
        let quote = chars[i];
        let mut j = i + 1;
        while j < chars.len() && chars[j] != quote {
            j += if chars[j] == '\\' { 2 } else { 1 };
        }
        j + 1
    };
    let mut names = Names::default();
    // Label names in `{...}` (matchers) or `(...)` (grouping) from `i`,
    // returning the index after the closing bracket.
    let labels_in = |mut i: usize, close: char, labels: &mut BTreeSet<String>| {
        i += 1;
        while i < chars.len() && chars[i] != close {
            match chars[i] {
                '"' | '\'' | '`' => i = skip_string(i),
                c if c.is_ascii_alphabetic() || c == '_' => {
                    let start = i;
                    while i < chars.len() && ident(chars[i]) {
                        i += 1;
                    }
                    labels.insert(chars[start..i].iter().collect());
                }
                _ => i += 1,
            }
        }
        i + 1
    };
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => i = skip_string(i),
            // Ranges and subqueries: durations and Grafana's intervals.
            '[' => {
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            // A Grafana variable ($namespace, ${datasource}).
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    while i < chars.len() && chars[i] != '}' {
                        i += 1;
                    }
                }
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
            }
            '{' => i = labels_in(i, '}', &mut names.labels),
            // Numbers and durations (0.99, 1e3, 15m).
            c if c.is_ascii_digit() || c == '.' => {
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = skip_space(i);
                if GROUPING.contains(&word.as_str()) {
                    if chars.get(next) == Some(&'(') {
                        i = labels_in(next, ')', &mut names.labels);
                    }
                } else if KEYWORDS.contains(&word.as_str())
                    || chars.get(next) == Some(&'(')
                    || ["by", "without"]
                        .iter()
                        .any(|g| chars[next..].starts_with(&g.chars().collect::<Vec<_>>()))
                {
                    // An operator, or a function or aggregation (`sum by`).
                } else {
                    names.metrics.insert(word);
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// Labels a legend or an alert template refers to: `{{label}}` (Grafana)
/// and `$labels.label` (Prometheus).
fn template_labels(text: &str) -> BTreeSet<String> {
    let mut labels = BTreeSet::new();
    for piece in text.split("{{").skip(1) {
        let inside = piece.split("}}").next().unwrap().trim();
        if inside
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !inside.is_empty()
        {
            labels.insert(inside.to_string());
        }
    }
    for piece in text.split("$labels.").skip(1) {
        let label: String = piece
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        labels.insert(label);
    }
    labels
}

#[test]
fn promql_names_reads_names_and_not_the_rest() {
    let names = promql_names(
        r#"histogram_quantile(0.99, sum by (registry, le) (rate(archway_x_bucket{result=~"5..|a,b", namespace=~"$namespace"}[$__rate_interval] offset 15m)))
           / on (registry) group_left sum(archway_y_total) > 2 unless absent(archway_z)"#,
    );
    assert_eq!(
        names.metrics,
        BTreeSet::from(["archway_x_bucket", "archway_y_total", "archway_z"].map(String::from))
    );
    assert_eq!(
        names.labels,
        BTreeSet::from(["le", "namespace", "registry", "result"].map(String::from))
    );
    assert_eq!(
        template_labels("{{namespace}} {{ outcome }} {{ $value | humanize }} {{ $labels.reason }}"),
        BTreeSet::from(["namespace", "outcome", "reason"].map(String::from))
    );
}

/// Every (what, expression, legend or templates) of the dashboard and rules.
fn queries() -> Vec<(String, String, String)> {
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push((
                format!("panel {:?}", panel["title"]),
                target["expr"].as_str().unwrap().to_string(),
                target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            ));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str() {
            // label_values(metric, label)
            let inner = query
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .unwrap_or_else(|| panic!("variable query {query}"));
            let (metric, label) = inner.split_once(',').unwrap();
            queries.push((
                format!("variable {:?}", variable["name"]),
                metric.trim().to_string(),
                format!("{{{{{}}}}}", label.trim()),
            ));
        }
    }
    for (alert, expr, templates) in alerts() {
        queries.push((format!("alert {alert}"), expr, templates));
    }
    queries
}

#[test]
fn the_dashboard_is_well_formed_and_shows_what_it_should() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("dashboard.json")).unwrap();
    assert_eq!(dashboard["uid"], "archway");
    let mut ids = BTreeSet::new();
    let mut shown = Names::default();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "panel ids are unique"
        );
        let grid = &panel["gridPos"];
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "{}",
            panel["title"]
        );
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert_eq!(target["datasource"]["uid"], "${datasource}");
            let names = promql_names(target["expr"].as_str().unwrap());
            shown.metrics.extend(names.metrics);
            shown.labels.extend(names.labels);
        }
    }
    // What the issue asks the dashboard to show: reviews by decision and
    // namespace, latency, cache hit rate, registry requests and errors by
    // registry, pods placed per architecture.
    for metric in [
        "archway_reviews_total",
        "archway_review_duration_seconds_bucket",
        "archway_cache_lookups_total",
        "archway_registry_requests_total",
        "archway_registry_request_duration_seconds_bucket",
        // Issue 26: where each namespace's ramp stands.
        "archway_ramp_rollout",
        "archway_ramp_paused",
    ] {
        assert!(
            shown.metrics.contains(metric),
            "the dashboard shows {metric}"
        );
    }
    for label in [
        "decision",
        "namespace",
        "architecture",
        "registry",
        "result",
        "outcome",
    ] {
        assert!(
            shown.labels.contains(label),
            "the dashboard splits by {label}"
        );
    }
}

// ---------------------------------------------------------------------------
// A real scrape

struct Served {
    child: Child,
    admin: String,
    webhook: u16,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn namespace(name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Namespace {
    let map = |pairs: &[(&str, &str)]| {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    };
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: map(labels),
            annotations: map(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

fn amd64_node() -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some("node-amd64".into()),
            labels: Some(BTreeMap::from([
                ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                ("kubernetes.io/os".to_string(), "linux".to_string()),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// `archway serve`, the real binary, against `api` (through a kubeconfig)
/// and with `config`; returns once it is ready.
async fn serve(dir: &Path, api: &FakeApiServer, config: &Path, ca: &TestCa) -> Served {
    let issued = ca.issue_server(&[SERVICE_NAME]);
    std::fs::write(dir.join("tls.crt"), &issued.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &issued.key_pem).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: test, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: test, user: {{}}}}]\n\
             contexts: [{{name: test, context: {{cluster: test, user: test}}}}]\ncurrent-context: test\n",
            api.url()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["--log-format", "json", "--config"])
        .arg(config)
        .args(["serve", "--tls-cert"])
        .arg(dir.join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.join("tls.key"))
        .env("KUBECONFIG", &kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if event["message"] == "archway serving" {
                let _ = tx.send((
                    event["webhook"].as_str().unwrap().to_string(),
                    event["admin"].as_str().unwrap().to_string(),
                ));
            }
        }
    });
    let (webhook, admin) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("archway serving");
    let served = Served {
        child,
        admin,
        webhook: webhook.parse::<std::net::SocketAddr>().unwrap().port(),
    };
    let started = Instant::now();
    while reqwest::get(format!("http://{}/readyz", served.admin))
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "archway not ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    served
}

/// Sample name -> label names, from the text exposition format.
fn exported(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut exported: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let end = line.find(['{', ' ']).unwrap();
        let labels = exported.entry(line[..end].to_string()).or_default();
        if line[end..].starts_with('{') {
            let mut rest = &line[end + 1..];
            while let Some((key, after)) = rest.split_once("=\"") {
                labels.insert(key.trim_start_matches(',').to_string());
                // Past the value's closing quote (values may escape quotes).
                let mut escaped = false;
                let close = after
                    .char_indices()
                    .find(|&(_, c)| {
                        let found = c == '"' && !escaped;
                        escaped = c == '\\' && !escaped;
                        found
                    })
                    .unwrap()
                    .0;
                rest = &after[close + 1..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    exported
}

/// The labels docs/metrics.md's table gives a metric.
fn documented_labels(metric: &str) -> BTreeSet<String> {
    let doc = std::fs::read_to_string(support::repo_root().join("docs/metrics.md")).unwrap();
    let row = doc
        .lines()
        .find(|l| l.starts_with(&format!("| `{metric}` |")))
        .unwrap_or_else(|| panic!("docs/metrics.md has no row for {metric}"));
    let labels = row.split('|').nth(3).unwrap();
    labels
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_use_only_what_archway_exports() {
    install_crypto();
    let registry = Registry::start(RegistryOptions::plain());
    let layouts = tempfile::tempdir().unwrap();
    let layout = build_layout(layouts.path(), &ImageSpec::multi_arch());
    registry.push(&layout.dir, "app:v1", Format::Oci);
    // Docker Hub's header on the missing image's answer says no pull is
    // left: the next new image is kept back for the nodes.
    let proxy = CountingProxy::start(registry.addr()).await;
    proxy.set_fault_rule(|request| {
        if request.is_manifest() && request.path.contains("/missing/") {
            Fault::AddHeaders(vec![("ratelimit-remaining".into(), "0;w=600".into())])
        } else {
            Fault::None
        }
    });

    // A cluster with amd64 nodes only, and a namespace whose rollout sends
    // everything to arm64: archway counts the architecture without nodes.
    let api = FakeApiServer::start().await;
    api.put(
        "namespaces",
        &namespace(
            "shop",
            &[("archway.dev/mode", "enforce")],
            &[("archway.dev/rollout", "100")],
        ),
    );
    api.put("nodes", &amd64_node());
    // A namespace with a ramp, paused at 50% by a hold: every replica
    // exports where it stands from the namespace watch. (The stand-in
    // serves no Lease, so this archway never leads and the autopilot writes
    // nothing: the ramp stays as written here, and its step counts are
    // exported at 0.)
    api.put(
        "namespaces",
        &namespace(
            "ramped",
            &[("archway.dev/mode", "enforce")],
            &[
                ("archway.dev/rollout", "50"),
                ("archway.dev/ramp", "10,50,100"),
                ("archway.dev/ramp-step", "24h"),
                (
                    "archway.dev/ramp-status",
                    "paused at 50% since 2026-12-03T10:00:00Z: Deployment/web is held off arm64: held: 2 pods CrashLoopBackOff on arm64; remove this annotation to resume",
                ),
            ],
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("archway.yaml");
    let write_config = |rollout: u8| {
        std::fs::write(
            &config,
            format!(
                "targetArchitecture: arm64\ndefaultRollout: {rollout}\npolicySource: cluster\n\
                 registry: {{ insecure: [\"{}\"] }}\n\
                 server: {{ listen: 127.0.0.1:0, adminListen: 127.0.0.1:0 }}\n",
                proxy.host()
            ),
        )
        .unwrap()
    };
    write_config(0);
    let ca = TestCa::new("monitoring test CA");
    let served = serve(dir.path(), &api, &config, &ca).await;

    // Traffic that makes every metric appear.
    let client = client_for(
        &ca.cert_pem,
        format!("127.0.0.1:{}", served.webhook).parse().unwrap(),
        false,
    );
    let url = format!("https://{SERVICE_NAME}:{}/mutate", served.webhook);
    let pod = |image: &str| json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "web", "image": format!("{}/{image}", proxy.host())}]}});
    // Inspected (a miss), then cached (a hit); the one missing image fails
    // its inspection with a warning, and the next new one is kept back.
    for image in ["app:v1", "app:v1", "missing:v1", "later:v1"] {
        let response = client
            .post(&url)
            .json(&pod_review("u", "shop", &pod(image)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let response = client.post(&url).body("not json").send().await.unwrap();
    assert_eq!(response.status(), 400);
    // A configuration change, reloaded.
    write_config(5);

    let admin = reqwest::Client::new();
    let scrape = || async {
        admin
            .get(format!("http://{}/metrics", served.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    let started = Instant::now();
    let mut text = scrape().await;
    while !text.contains("archway_config_reloads_total{reason=\"ok\"}")
        || !text.contains("archway_ramp_paused{namespace=\"ramped\"} 1")
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no reload counted, or no paused ramp:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        text = scrape().await;
    }
    let mut exported = exported(&text);
    // Series the traffic above does not make: a hold needs the rollout
    // guard to see pods fail (their statuses, in a cluster), an unrunnable
    // pod one pinned to nodes its images do not run on, a refusal for the
    // GET budget a budget (registry.manifestGetsPerHour). Their panels are
    // checked against the labels docs/metrics.md lists, and their queries
    // run by tests/dashboard.rs.
    for metric in [
        "archway_guard_holds_total",
        "archway_pods_unrunnable_total",
        "archway_registry_get_budget_spent_total",
    ] {
        assert!(
            !exported.contains_key(metric),
            "{metric} is exported: drop this"
        );
        exported.insert(metric.into(), documented_labels(metric));
    }
    // Each family appeared, with samples (so its labels are known).
    let families: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    for family in &families {
        assert!(
            exported.keys().any(|sample| sample.starts_with(family)),
            "no sample of {family}: the traffic above must make it appear\n{text}"
        );
    }
    assert!(text.contains("decision=\"inspection_failed\""), "{text}");
    assert!(
        text.contains("archway_cache_lookups_total{result=\"hit\"}"),
        "{text}"
    );
    // The ramp as its namespace says, and only namespaces with a ramp.
    for line in [
        "archway_ramp_rollout{namespace=\"ramped\"} 50",
        "archway_ramp_paused{namespace=\"ramped\"} 1",
        "archway_ramp_steps_total{namespace=\"ramped\",reason=\"RampPaused\"} 0",
    ] {
        assert!(text.lines().any(|l| l == line), "{line}:\n{text}");
    }
    assert!(
        !text.contains("archway_ramp_rollout{namespace=\"shop\"}"),
        "{text}"
    );

    // Every name the dashboard and the alerts use.
    let mut unused: BTreeSet<&String> = exported.keys().collect();
    for (what, expr, templates) in queries() {
        let mut names = promql_names(&expr);
        assert!(!names.metrics.is_empty(), "{what}: no metric in {expr}");
        // cAdvisor's and kube-state-metrics' names (the panels comparing
        // the architectures) are not archway's: tests/dashboard.rs runs
        // those queries against a Prometheus scraping stand-ins of both.
        names
            .metrics
            .retain(|metric| metric.starts_with("archway_"));
        if names.metrics.is_empty() {
            continue;
        }
        let mut labels_here = BTreeSet::new();
        for metric in &names.metrics {
            let labels = exported
                .get(metric)
                .unwrap_or_else(|| panic!("{what}: archway exports no {metric}"));
            labels_here.extend(labels.iter().cloned());
            unused.remove(metric);
        }
        for label in names.labels.iter().chain(&template_labels(&templates)) {
            assert!(
                labels_here.contains(label),
                "{what}: {label} is not a label of {:?} (it has {labels_here:?})",
                names.metrics
            );
        }
    }
    // For the reader of the test's output: what neither shows.
    eprintln!("exported but on neither the dashboard nor an alert: {unused:?}");
}

//! The Helm chart in deploy/helm/archway: it lints, it renders objects that
//! pass `kubernetes-validate --strict` for Kubernetes 1.33 with default and
//! with non-default values, and with the values that match an install in
//! deploy/ it renders the same objects as that kustomization (Helm's own
//! labels aside), so the two ways of installing archway cannot drift apart.
//!
//! helm is built from its Go module by tests/tools/build.sh (the first run
//! on a machine takes minutes); kubectl and kubernetes-validate come from
//! tests/run.sh, as for tests/deploy.rs.
//!
//! And the chart installs on the real control plane (tests/testkit/src/
//! controlplane.rs) with server-side apply, and archway, run with what the
//! chart installed (its configuration, its Secret, its ServiceAccount's
//! RBAC), places a pod.

use archway_testkit as support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use archway::config::Config;
use serde_yaml::Value;
use support::tools::{
    self, documents, kind, kubectls, kustomize_with, name, run, run_ok, validate,
};

const RELEASE: &str = "archway";

/// The labels Helm's objects carry besides the kustomize install's.
const HELM_LABELS: &[&str] = &[
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "helm.sh/chart",
];

fn chart() -> PathBuf {
    support::repo_root().join("deploy/helm/archway")
}

/// `helm template` of the chart into `namespace` with `args` (values),
/// for Kubernetes 1.33; the objects, or helm's complaint.
fn try_template(namespace: &str, args: &[&str]) -> Result<Vec<Value>, String> {
    let chart = chart();
    let mut all = vec![
        "template",
        RELEASE,
        chart.to_str().unwrap(),
        "--namespace",
        namespace,
        "--kube-version",
        tools::KUBERNETES_VERSION,
    ];
    all.extend(args);
    let output = run(tools::helm(), &all);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(documents(&String::from_utf8(output.stdout).unwrap()))
}

fn template(namespace: &str, args: &[&str]) -> Vec<Value> {
    try_template(namespace, args).unwrap_or_else(|e| panic!("helm template {args:?}: {e}"))
}

/// A copy of deploy/ without certificates a developer generated into it.
fn deploy_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                if !entry.path().ends_with("overlays/self-signed/certs") {
                    copy(&entry.path(), &target);
                }
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(
        &support::repo_root().join("deploy"),
        &dir.path().join("deploy"),
    );
    dir
}

/// `archway certs` (the real binary) into `dir`, as deploy/README.md says.
fn archway_certs(dir: &Path, namespace: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["certs", "--namespace", namespace, "--out"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "archway certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---------------------------------------------------------------------------
// Comparing with the kustomize install

/// (apiVersion, kind, namespace, name) -> object.
type Objects = BTreeMap<(String, String, String, String), Value>;

fn key_of(object: &Value) -> (String, String, String, String) {
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        text(&object["apiVersion"]),
        kind(object).to_string(),
        text(&object["metadata"]["namespace"]),
        name(object).to_string(),
    )
}

fn remove_nulls(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(remove_nulls);
        }
        Value::Sequence(items) => items.iter_mut().for_each(remove_nulls),
        _ => {}
    }
}

/// Takes the configuration file out of the ConfigMap archway-config,
/// leaving a placeholder, and returns it parsed (as YAML, nulls dropped,
/// and as archway's Config).
fn take_config(objects: &mut [Value]) -> (Value, String) {
    let config_map = objects
        .iter_mut()
        .find(|o| kind(o) == "ConfigMap" && name(o) == "archway-config")
        .expect("the ConfigMap archway-config");
    let slot = &mut config_map["data"]["archway.yaml"];
    let text = slot.as_str().expect("archway.yaml in it").to_string();
    *slot = Value::from("(compared apart)");
    let mut yaml: Value = serde_yaml::from_str(&text).unwrap();
    remove_nulls(&mut yaml);
    let config = Config::from_yaml(&text).unwrap_or_else(|e| panic!("archway.yaml: {e}\n{text}"));
    (yaml, format!("{config:?}"))
}

/// Both sides as Objects, in a form where equal means equal: Helm's own
/// labels dropped, base64 fields unwrapped (kustomize wraps long ones).
fn normalised(objects: Vec<Value>) -> Objects {
    objects
        .into_iter()
        .map(|mut object| {
            // kustomize's generators (the configuration, the serving pair)
            // label nothing; the chart labels every object.
            let generated = matches!(kind(&object), "ConfigMap" | "Secret");
            let metadata = object["metadata"].as_mapping_mut().unwrap();
            if let Some(labels) = metadata.get_mut("labels").and_then(Value::as_mapping_mut) {
                for label in HELM_LABELS {
                    labels.remove(*label);
                }
                if generated {
                    labels.remove("app.kubernetes.io/name");
                }
                if labels.is_empty() {
                    metadata.remove("labels");
                }
            }
            if kind(&object) == "Secret"
                && let Some(data) = object.get_mut("data").and_then(Value::as_mapping_mut)
            {
                for value in data.values_mut() {
                    let compact: String = value.as_str().unwrap().split_whitespace().collect();
                    *value = Value::from(compact);
                }
            }
            if kind(&object) == "MutatingWebhookConfiguration" {
                for webhook in object["webhooks"].as_sequence_mut().unwrap() {
                    if let Some(bundle) = webhook["clientConfig"].get_mut("caBundle") {
                        let compact: String = bundle.as_str().unwrap().split_whitespace().collect();
                        *bundle = Value::from(compact);
                    }
                }
            }
            (key_of(&object), object)
        })
        .collect()
}

/// The chart's objects equal kustomize's, object for object, the
/// configuration file compared by content (kustomize's keeps the comments).
fn assert_same(mut helm: Vec<Value>, mut kustomized: Vec<Value>) {
    let (helm_yaml, helm_config) = take_config(&mut helm);
    let (kustomize_yaml, kustomize_config) = take_config(&mut kustomized);
    assert_eq!(
        helm_yaml, kustomize_yaml,
        "the chart's configuration file is deploy/base/archway.yaml's"
    );
    assert_eq!(helm_config, kustomize_config);

    let helm = normalised(helm);
    let kustomized = normalised(kustomized);
    let keys = |objects: &Objects| objects.keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&helm), keys(&kustomized), "the same objects");
    for (key, object) in &helm {
        assert!(
            object == &kustomized[key],
            "{key:?} differs.\nhelm:\n{}\nkustomize:\n{}",
            serde_yaml::to_string(object).unwrap(),
            serde_yaml::to_string(&kustomized[key]).unwrap()
        );
    }
}

fn without(objects: Vec<Value>, kind_name: (&str, &str)) -> Vec<Value> {
    let before = objects.len();
    let kept: Vec<Value> = objects
        .into_iter()
        .filter(|o| (kind(o), name(o)) != kind_name)
        .collect();
    assert_eq!(kept.len() + 1, before, "one {kind_name:?} left out");
    kept
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn the_chart_lints_with_default_and_other_values() {
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let output = run_ok(tools::helm(), &["lint", "--strict", chart]);
    assert!(output.contains("0 chart(s) failed"), "{output}");
    let values = other_values();
    let values = values.path().to_str().unwrap();
    let output = run_ok(
        tools::helm(),
        &[
            "lint",
            "--strict",
            chart,
            "--namespace",
            "webhooks",
            "-f",
            values,
        ],
    );
    assert!(output.contains("0 chart(s) failed"), "{output}");
    // Lint can fail: a value the schema refuses.
    let output = run(
        tools::helm(),
        &[
            "lint",
            "--strict",
            chart,
            "--set",
            "webhook.failurePolicy=Sometimes",
        ],
    );
    assert!(!output.status.success(), "lint must refuse a bad value");
}

#[test]
fn default_values_render_the_kustomize_base() {
    let copy = deploy_copy();
    // As `helm template | kubectl apply` needs it: with the namespace; and
    // as `helm install --create-namespace` needs it: Helm makes it.
    let with_namespace = template(RELEASE, &["--set", "namespace.create=true"]);
    validate(&with_namespace);
    let without_namespace = template(RELEASE, &[]);
    validate(&without_namespace);
    for kubectl in kubectls() {
        let kustomized = kustomize_with(&kubectl, &copy.path().join("deploy"));
        assert_same(with_namespace.clone(), kustomized.clone());
        assert_same(
            without_namespace.clone(),
            without(kustomized, ("Namespace", RELEASE)),
        );
    }
}

#[test]
fn certificate_files_render_the_self_signed_overlay() {
    let copy = deploy_copy();
    let overlay = copy.path().join("deploy/overlays/self-signed");
    let certs = overlay.join("certs");
    archway_certs(&certs, RELEASE);
    let file = |name: &str| certs.join(name).to_str().unwrap().to_string();
    let (ca, cert, key) = (file("ca.crt"), file("tls.crt"), file("tls.key"));
    let helm = template(
        RELEASE,
        &[
            "--set",
            "namespace.create=true",
            "--set-file",
            &format!("tls.caCert={ca}"),
            "--set-file",
            &format!("tls.cert={cert}"),
            "--set-file",
            &format!("tls.key={key}"),
        ],
    );
    validate(&helm);
    // The overlay's Secret archway-ca-bundle only carries the CA to
    // kustomize's var; Helm reads the file directly.
    for kubectl in kubectls() {
        let kustomized = kustomize_with(&kubectl, &overlay);
        assert_same(
            helm.clone(),
            without(kustomized, ("Secret", "archway-ca-bundle")),
        );
    }

    // Only the CA: the Secret is the operator's to make (as in 2c of
    // deploy/README.md), the caBundle is set.
    let helm = template(RELEASE, &["--set-file", &format!("tls.caCert={ca}")]);
    validate(&helm);
    assert!(!helm.iter().any(|o| kind(o) == "Secret"));
    let webhook = helm
        .iter()
        .find(|o| kind(o) == "MutatingWebhookConfiguration")
        .unwrap();
    let bundle = webhook["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .expect("a caBundle");
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(bundle)
            .unwrap(),
        std::fs::read(certs.join("ca.crt")).unwrap()
    );
}

#[test]
fn cert_manager_values_render_the_cert_manager_overlay() {
    let copy = deploy_copy();
    let helm = template(
        RELEASE,
        &[
            "--set",
            "namespace.create=true",
            "--set",
            "tls.certManager.enabled=true",
        ],
    );
    validate(&helm);
    for kubectl in kubectls() {
        let kustomized =
            kustomize_with(&kubectl, &copy.path().join("deploy/overlays/cert-manager"));
        assert_same(helm.clone(), kustomized);
    }
}

/// Every value of the chart set to something other than its default.
fn other_values() -> tempfile::NamedTempFile {
    let file = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(
        file.path(),
        r#"
image:
  repository: registry.example.com/platform/archway
  tag: "9.9.9"
  digest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
  pullPolicy: Always
  architectures: [arm64]
imagePullSecrets: [{name: platform-pull}]
replicas: 1
resources:
  requests: {cpu: 200m, memory: 256Mi}
  limits: {memory: 512Mi}
tolerations:
  - {key: dedicated, operator: Equal, value: platform, effect: NoSchedule}
nodeSelector: {node-role.example.com/platform: "true"}
priorityClassName: platform-critical
podAnnotations: {example.com/team: platform}
logFormat: text
namespace: {create: true}
webhook: {failurePolicy: Fail, timeoutSeconds: 10}
tls: {certManager: {enabled: true}}
registryCredentials: {existingSecret: registry-pull}
registryCAs: {existingConfigMap: registry-cas, keys: [corp-root.crt, corp-issuing.crt]}
config:
  targetArchitecture: amd64
  defaultRollout: 25
  failClosed: true
  timeBudget: 8s
  excludedNamespaces: [kube-system, monitoring]
  tolerations:
    amd64: [{key: pool, operator: Equal, value: x86, effect: NoSchedule}]
    arm64: []
  cache: {maxEntries: 500, tagTtl: 1m, digestTtl: 1h, failureTtl: 5s}
  registry:
    connectTimeout: 1s
    requestTimeout: 5s
    insecure: [registry.internal:5000]
    caFiles: [/etc/ssl/certs/extra.pem]
    mirrors: {docker.io: [mirror.internal:5000]}
    allowPrivate: [10.0.0.0/8]
    maxManifestBytes: 1048576
  server: {listen: 0.0.0.0:9443, adminListen: 0.0.0.0:9090, maxBodyBytes: 1048576}
"#,
    )
    .unwrap();
    file
}

#[test]
fn other_values_render_valid_objects_that_follow_them() {
    let values = other_values();
    let objects = template("webhooks", &["-f", values.path().to_str().unwrap()]);
    validate(&objects);
    let find = |k: &str, n: &str| -> &Value {
        objects
            .iter()
            .find(|o| kind(o) == k && name(o) == n)
            .unwrap_or_else(|| panic!("no {k} {n}"))
    };
    // Every namespaced object, and every reference, in the release's namespace.
    for object in &objects {
        if let Some(namespace) = object["metadata"].get("namespace") {
            assert_eq!(namespace.as_str(), Some("webhooks"), "{}", name(object));
        }
    }
    assert_eq!(
        find("Namespace", "webhooks")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    assert_eq!(
        find("ClusterRoleBinding", "archway")["subjects"][0]["namespace"],
        "webhooks"
    );
    let configuration = find("MutatingWebhookConfiguration", "archway");
    assert_eq!(
        configuration["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "webhooks/archway"
    );
    let webhook = &configuration["webhooks"][0];
    assert_eq!(webhook["failurePolicy"], "Fail");
    assert_eq!(webhook["timeoutSeconds"], 10);
    assert_eq!(webhook["clientConfig"]["service"]["namespace"], "webhooks");
    assert_eq!(
        webhook["namespaceSelector"]["matchExpressions"][1]["values"],
        serde_yaml::from_str::<Value>("[webhooks, kube-system]").unwrap()
    );
    let serving = find("Certificate", "archway");
    assert_eq!(
        serving["spec"]["dnsNames"],
        serde_yaml::from_str::<Value>("[archway.webhooks.svc, archway.webhooks.svc.cluster.local]")
            .unwrap()
    );

    // One replica: no PodDisruptionBudget, which would block every drain.
    assert!(!objects.iter().any(|o| kind(o) == "PodDisruptionBudget"));
    let deployment = find("Deployment", "archway");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"];
    assert_eq!(
        pod["metadata"]["annotations"]["example.com/team"],
        "platform"
    );
    let pod = &pod["spec"];
    assert_eq!(pod["priorityClassName"], "platform-critical");
    assert_eq!(pod["imagePullSecrets"][0]["name"], "platform-pull");
    assert_eq!(
        pod["nodeSelector"]["node-role.example.com/platform"],
        "true"
    );
    assert_eq!(pod["tolerations"].as_sequence().unwrap().len(), 1);
    assert_eq!(pod["tolerations"][0]["key"], "dedicated");
    let arch = &pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        [0]["matchExpressions"][1];
    assert_eq!(arch["key"], "kubernetes.io/arch");
    assert_eq!(
        arch["values"],
        serde_yaml::from_str::<Value>("[arm64]").unwrap()
    );
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        "registry.example.com/platform/archway@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(container["imagePullPolicy"], "Always");
    assert_eq!(container["env"][0]["value"], "text");
    assert_eq!(container["resources"]["requests"]["cpu"], "200m");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    let port = |name: &str| {
        container["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    // The ports follow the configuration's listen addresses.
    assert_eq!(port("https"), 9443);
    assert_eq!(port("admin"), 9090);
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], 9090);
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], 9090);

    // The configuration file: the values, and the paths of the registry
    // files the chart mounts, each on a mount of the right volume.
    let text = find("ConfigMap", "archway-config")["data"]["archway.yaml"]
        .as_str()
        .unwrap();
    let config = Config::from_yaml(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(config.target_architecture, "amd64");
    assert_eq!(
        format!("{:?}", config.default_rollout),
        format!(
            "{:?}",
            Config::from_yaml("defaultRollout: 25")
                .unwrap()
                .default_rollout
        )
    );
    assert!(config.fail_closed);
    assert_eq!(config.time_budget, std::time::Duration::from_secs(8));
    assert_eq!(config.excluded_namespaces, ["kube-system", "monitoring"]);
    assert_eq!(config.tolerations["amd64"][0].key.as_deref(), Some("pool"));
    assert!(config.tolerations["arm64"].is_empty());
    assert_eq!(config.cache.max_entries, 500);
    assert_eq!(config.registry.insecure, ["registry.internal:5000"]);
    assert_eq!(
        config.registry.mirrors["docker.io"],
        ["mirror.internal:5000"]
    );
    assert_eq!(config.registry.allow_private, ["10.0.0.0/8"]);
    assert_eq!(config.registry.max_manifest_bytes, 1048576);
    assert_eq!(config.server.max_body_bytes, 1048576);
    let credentials = config.registry.credentials_file.expect("credentialsFile");
    let mounted = |path: &Path| -> (String, String) {
        let mount = container["volumeMounts"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|m| path.parent() == Some(Path::new(m["mountPath"].as_str().unwrap())))
            .unwrap_or_else(|| panic!("{} is on no mount", path.display()));
        let volume = pod["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == mount["name"])
            .unwrap();
        let file = path.file_name().unwrap().to_str().unwrap().to_string();
        if let Some(secret) = volume.get("secret") {
            let item = secret["items"]
                .as_sequence()
                .unwrap()
                .iter()
                .find(|i| i["path"] == file.as_str())
                .unwrap_or_else(|| panic!("{file} not projected"));
            (
                secret["secretName"].as_str().unwrap().into(),
                item["key"].as_str().unwrap().into(),
            )
        } else {
            (volume["configMap"]["name"].as_str().unwrap().into(), file)
        }
    };
    assert_eq!(
        mounted(&credentials),
        ("registry-pull".into(), ".dockerconfigjson".into())
    );
    assert_eq!(
        config.registry.ca_files.len(),
        3,
        "{:?}",
        config.registry.ca_files
    );
    assert_eq!(
        config.registry.ca_files[0],
        Path::new("/etc/ssl/certs/extra.pem")
    );
    for (path, key) in config.registry.ca_files[1..]
        .iter()
        .zip(["corp-root.crt", "corp-issuing.crt"])
    {
        assert_eq!(mounted(path), ("registry-cas".into(), key.into()));
    }
}

#[test]
fn the_chart_refuses_values_that_would_install_a_broken_archway() {
    let refused = |args: &[&str], expected: &str| {
        let error = try_template(RELEASE, args).expect_err(&format!("{args:?} must be refused"));
        assert!(error.contains(expected), "{args:?}: {error}");
    };
    // The review must end before the API server stops waiting.
    refused(&["--set", "config.timeBudget=3s"], "timeBudget");
    refused(&["--set", "config.timeBudget=3000ms"], "timeBudget");
    refused(
        &["--set", "webhook.timeoutSeconds=2"],
        "must end before webhook.timeoutSeconds",
    );
    assert!(try_template(RELEASE, &["--set", "config.timeBudget=2999ms"]).is_ok());
    // Certificates: one source, complete.
    refused(&["--set", "tls.cert=x"], "give both cert and key");
    refused(
        &["--set", "tls.cert=x", "--set", "tls.key=y"],
        "give caCert too",
    );
    refused(
        &[
            "--set",
            "tls.certManager.enabled=true",
            "--set",
            "tls.caCert=x",
        ],
        "leave caCert, cert and key empty",
    );
    refused(
        &["--set", "registryCAs.existingConfigMap=cas"],
        "registryCAs.keys",
    );
    // The schema: misspelt or out-of-range values, before anything is applied.
    refused(
        &["--set", "webhook.failurePolicy=Sometimes"],
        "failurePolicy",
    );
    refused(&["--set", "webhook.timeoutSeconds=31"], "timeoutSeconds");
    refused(&["--set", "config.defaultRollout=101"], "defaultRollout");
    refused(&["--set", "config.targetArch=arm64"], "targetArch");
    refused(&["--set", "replica=3"], "replica");
    // Kubernetes before 1.30 lacks what the Deployment uses.
    let chart = chart();
    let output = run(
        tools::helm(),
        &[
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--kube-version",
            "1.29.0",
        ],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("kubeVersion"));
}

// ---------------------------------------------------------------------------
// On the real control plane

/// The chart, rendered with a certificate from `archway certs`, applied
/// with server-side apply to a real control plane; archway then runs with
/// the chart's configuration, the chart's Secret and the chart's
/// ServiceAccount, and places a pod in an opted-in namespace.
///
/// There is no service network or kubelet here (as for deploy/ in
/// tests/testkit/src/install.rs): archway runs on the host, the webhook's
/// clientConfig points at it by URL (keeping the chart's caBundle), and the
/// Deployment is scaled to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_on_a_real_control_plane_and_archway_places_a_pod() {
    use support::controlplane::{
        ClientAuth, ControlPlane, NodePool, free_port, http_get, kubeconfig_yaml, wait_for,
    };
    use support::{Format, ImageSpec, Registry, RegistryOptions, build_layout};

    support::webhook::install_crypto();
    // Not a World: archway is installed from the chart below, not from deploy/.
    let plane = ControlPlane::start();
    plane.create_nodes(&NodePool::standard());
    let registry = Registry::start(RegistryOptions::plain());
    let dir = tempfile::tempdir().unwrap();
    let layout = build_layout(&dir.path().join("multi"), &ImageSpec::multi_arch());
    registry.push(&layout.dir, "multi:v1", Format::Oci);

    // `archway certs` (its certificate is also valid for 127.0.0.1, where
    // archway runs here), given to the chart as deploy/README.md says.
    let certs = dir.path().join("certs");
    archway_certs(&certs, RELEASE);
    let file = |name: &str| format!("{}", certs.join(name).display());
    let webhook_port = free_port();
    let admin_port = free_port();
    let rendered = template(
        RELEASE,
        &[
            "--set",
            "namespace.create=true",
            "--set-file",
            &format!("tls.caCert={}", file("ca.crt")),
            "--set-file",
            &format!("tls.cert={}", file("tls.crt")),
            "--set-file",
            &format!("tls.key={}", file("tls.key")),
            "--set",
            &format!("config.registry.insecure={{{}}}", registry.host()),
            "--set",
            &format!("config.server.listen=127.0.0.1:{webhook_port}"),
            "--set",
            &format!("config.server.adminListen=127.0.0.1:{admin_port}"),
        ],
    );
    let mut objects: Vec<serde_json::Value> = rendered
        .iter()
        .map(|o| serde_json::to_value(o).unwrap())
        .collect();
    for object in &mut objects {
        if object["kind"] == "MutatingWebhookConfiguration" {
            let client = &mut object["webhooks"][0]["clientConfig"];
            let bundle = client["caBundle"].clone();
            assert!(bundle.is_string(), "the chart set the caBundle");
            *client = serde_json::json!({
                "url": format!("https://127.0.0.1:{webhook_port}/mutate"),
                "caBundle": bundle,
            });
        }
    }
    plane.apply(&objects);
    plane.kubectl(
        &[
            "-n",
            RELEASE,
            "scale",
            "deployment",
            "archway",
            "--replicas=0",
        ],
        None,
    );

    // What the pod would mount, read back from the cluster.
    let read = |kind: &str, name: &str| -> serde_json::Value {
        serde_json::from_str(
            &plane.kubectl(&["-n", RELEASE, "get", kind, name, "-o", "json"], None),
        )
        .unwrap()
    };
    let config = dir.path().join("archway.yaml");
    std::fs::write(
        &config,
        read("configmap", "archway-config")["data"]["archway.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let tls = read("secret", "archway-tls");
    use base64::Engine;
    for key in ["tls.crt", "tls.key"] {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(tls["data"][key].as_str().unwrap())
            .unwrap();
        std::fs::write(dir.path().join(key), bytes).unwrap();
    }
    // The chart's ServiceAccount, with a token from the TokenRequest API:
    // archway runs with exactly the chart's RBAC.
    let token = plane.kubectl(
        &["-n", RELEASE, "create", "token", "archway", "--duration=1h"],
        None,
    );
    let kubeconfig = dir.path().join("archway.kubeconfig");
    std::fs::write(
        &kubeconfig,
        kubeconfig_yaml(
            &plane.server_url(),
            &plane.ca.cert_pem,
            ClientAuth::Token(token.trim()),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("archway.log")).unwrap();
    let mut archway = Command::new(env!("CARGO_BIN_EXE_archway"));
    archway
        .args(["serve", "--config"])
        .arg(&config)
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .env("KUBECONFIG", &kubeconfig)
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, _) in std::env::vars() {
        if name.starts_with("ARCHWAY_") {
            archway.env_remove(name);
        }
    }
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _archway = Killed(support::process::spawn_tied(archway).unwrap());
    let logs = || std::fs::read_to_string(dir.path().join("archway.log")).unwrap_or_default();
    wait_for(
        "archway /readyz",
        std::time::Duration::from_secs(30),
        || {
            http_get(admin_port, "/readyz")
                .ok()
                .filter(|(status, _)| *status == 200)
        },
    );

    // A pod in an opted-in namespace comes back placed, once the API
    // server's informer has the webhook configuration.
    plane.create_namespace(
        "shop",
        &[("archway.dev/mode", "enforce")],
        &[("archway.dev/rollout", "100")],
    );
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web"},
        "spec": {"containers": [{"name": "web", "image": format!("{}/multi:v1", registry.host())}]},
    })
    .to_string();
    let placed = wait_for(
        "archway to place the pod",
        std::time::Duration::from_secs(30),
        || {
            let stored = plane
                .try_kubectl(
                    &[
                        "-n",
                        "shop",
                        "create",
                        "--dry-run=server",
                        "-f",
                        "-",
                        "-o",
                        "json",
                    ],
                    Some(&pod),
                )
                .ok()?;
            let stored: serde_json::Value = serde_json::from_str(&stored).ok()?;
            stored["metadata"]["annotations"]
                .get("archway.dev/decision")
                .is_some()
                .then_some(stored)
        },
    );
    let terms = &placed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    assert_eq!(
        terms[0]["matchExpressions"][0],
        serde_json::json!({"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]}),
        "{placed:#}\narchway's log:\n{}",
        logs()
    );
    // The chart's configuration's tolerations for arm64 came with it.
    assert!(
        placed["spec"]["tolerations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["key"] == "kubernetes.io/arch" && t["value"] == "arm64"),
        "{placed:#}"
    );
}

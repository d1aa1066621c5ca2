//! The Kubernetes install under deploy/: each kustomization is rendered with
//! kubectl's kustomize, every built-in object is validated against the
//! Kubernetes 1.33 schemas with `kubernetes-validate --strict`, and the
//! properties archway's safety rests on are asserted one by one (webhook
//! scope and failure mode, RBAC, the pod's security and availability, the
//! configuration, and that the paths in the arguments are really mounted).
//!
//! Needs `kubectl` and `kubernetes-validate` (tests/run.sh installs them).
//! `ARCHWAY_TEST_KUBECTL` may list several kubectl binaries, separated by
//! `:`, to render with each (e.g. an old one with kustomize v2 and a new one
//! with kustomize v5); the default is `kubectl` from PATH.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use archway::config::Config;
use archway_testkit::tools::kubernetes_validate;
use base64::Engine;
use serde::Deserialize;
use serde_yaml::Value;

const NAMESPACE: &str = "archway";
/// archway's drain of in-flight reviews on SIGTERM (src/serve/server.rs).
const DRAIN_SECONDS: i64 = 25;

// ---------------------------------------------------------------------------
// Rendering and validation

fn kubectls() -> Vec<String> {
    let list = std::env::var("ARCHWAY_TEST_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let kubectls: Vec<String> = list
        .split(':')
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect();
    assert!(
        !kubectls.is_empty(),
        "ARCHWAY_TEST_KUBECTL names no kubectl"
    );
    kubectls
}

/// Runs a tool the test needs, failing with how to get it when it is missing.
fn run(program: &str, args: &[&str]) -> std::process::Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {program}: {e}. The deploy tests need kubectl and \
                 kubernetes-validate: run tests/run.sh, which installs them"
            )
        })
}

/// A copy of deploy/ without any certificates a developer generated into
/// it, so that every test sees exactly what the repository holds.
fn deploy_copy() -> tempfile::TempDir {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                if entry.path().ends_with("overlays/self-signed/certs") {
                    continue;
                }
                copy(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
        &dir.path().join("deploy"),
    );
    dir
}

/// `kubectl kustomize DIR`, split into its objects.
fn render(kubectl: &str, dir: &Path) -> Vec<Value> {
    let output = run(kubectl, &["kustomize", dir.to_str().unwrap()]);
    assert!(
        output.status.success(),
        "{kubectl} kustomize {} failed:\n{}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let objects: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|document| Value::deserialize(document).unwrap())
        .filter(|object| !object.is_null())
        .collect();
    assert!(!objects.is_empty(), "{kubectl} rendered nothing");
    objects
}

fn is_cert_manager(object: &Value) -> bool {
    str_at(object, "apiVersion").starts_with("cert-manager.io/")
}

/// Every object but cert-manager's (whose CRDs kubernetes-validate does not
/// know; `check_cert_manager` checks those) through
/// `kubernetes-validate --strict`.
fn validate(objects: &[Value]) {
    if let Err(report) = kubernetes_validate(objects) {
        panic!("{report}");
    }
}

// ---------------------------------------------------------------------------
// Reading objects

fn at<'a>(value: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .try_fold(value, |v, key| match key.parse::<usize>() {
            Ok(index) => v.get(index),
            Err(_) => v.get(key),
        })
        .unwrap_or_else(|| panic!("no {path} in\n{}", serde_yaml::to_string(value).unwrap()))
}

fn opt<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

fn str_at<'a>(value: &'a Value, path: &str) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string"))
}

fn int_at(value: &Value, path: &str) -> i64 {
    at(value, path)
        .as_i64()
        .unwrap_or_else(|| panic!("{path} is not an integer"))
}

fn seq_at<'a>(value: &'a Value, path: &str) -> &'a [Value] {
    at(value, path)
        .as_sequence()
        .unwrap_or_else(|| panic!("{path} is not a list"))
}

fn strings_at(value: &Value, path: &str) -> Vec<String> {
    seq_at(value, path)
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> &'a Value {
    let found: Vec<&Value> = objects
        .iter()
        .filter(|o| str_at(o, "kind") == kind && str_at(o, "metadata.name") == name)
        .collect();
    match found.as_slice() {
        [one] => one,
        [] => panic!(
            "no {kind} {name}; rendered: {:?}",
            objects
                .iter()
                .map(|o| format!("{} {}", str_at(o, "kind"), str_at(o, "metadata.name")))
                .collect::<Vec<_>>()
        ),
        _ => panic!("{kind} {name} rendered {} times", found.len()),
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| str_at(o, "kind") == kind)
        .collect()
}

/// A rendered Secret's (or base64 field's) bytes: kustomize v5 wraps the
/// base64 over several lines, v2 does not.
fn decode(base64_text: &str) -> Vec<u8> {
    let compact: String = base64_text.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(compact)
        .expect("valid base64")
}

// ---------------------------------------------------------------------------
// What every variant of the install must hold

/// The base's properties, which every overlay must keep.
fn check_base(objects: &[Value]) {
    let namespace = find(objects, "Namespace", NAMESPACE);
    assert!(
        opt(namespace, "metadata.labels")
            .and_then(|l| l.get("archway.dev/mode"))
            .is_none(),
        "archway's own namespace must not opt in"
    );
    let account = find(objects, "ServiceAccount", "archway");
    assert_eq!(str_at(account, "metadata.namespace"), NAMESPACE);
    // Namespaced objects all live in archway's namespace.
    for object in objects {
        if let Some(ns) = opt(object, "metadata.namespace") {
            assert_eq!(ns.as_str(), Some(NAMESPACE), "{object:?}");
        }
    }
    check_rbac(objects);
    check_webhook(objects);
    check_deployment(objects);
}

/// (apiGroup, resource, verb) triples a ClusterRole grants, refusing any
/// rule shape other than plain apiGroups x resources x verbs.
fn grants(role: &Value) -> BTreeSet<(String, String, String)> {
    let mut grants = BTreeSet::new();
    for rule in seq_at(role, "rules") {
        let keys: BTreeSet<&str> = rule
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            BTreeSet::from(["apiGroups", "resources", "verbs"]),
            "rules name groups, resources and verbs only (no resourceNames, no URLs)"
        );
        for group in strings_at(rule, "apiGroups") {
            for resource in strings_at(rule, "resources") {
                for verb in strings_at(rule, "verbs") {
                    grants.insert((group.clone(), resource.clone(), verb));
                }
            }
        }
    }
    grants
}

fn triples(list: &[(&str, &[&str], &[&str])]) -> BTreeSet<(String, String, String)> {
    let mut set = BTreeSet::new();
    for (group, resources, verbs) in list {
        for resource in *resources {
            for verb in *verbs {
                set.insert((group.to_string(), resource.to_string(), verb.to_string()));
            }
        }
    }
    set
}

fn check_rbac(objects: &[Value]) {
    let webhook_role = grants(find(objects, "ClusterRole", "archway"));
    assert_eq!(
        webhook_role,
        triples(&[
            ("", &["namespaces", "nodes"], &["get", "list", "watch"]),
            // The ramp autopilot: a namespace's rollout and ramp status.
            ("", &["namespaces"], &["patch"]),
            ("", &["secrets"], &["get"]),
            // The gate controller: gated pods (watched by label), each
            // released with one patch; an Event when released unplaced.
            // The rollout guard: watches pods, holds workloads, tells why.
            ("", &["pods"], &["get", "list", "watch", "patch"]),
            (
                "apps",
                &["deployments", "statefulsets"],
                &["list", "watch", "patch"]
            ),
            // The guard resolves a pod's workload by uid through its
            // ReplicaSet: read only.
            ("apps", &["replicasets"], &["list", "watch"]),
            ("events.k8s.io", &["events"], &["create", "patch"]),
        ]),
        "the webhook reads namespaces and nodes, and gets single secrets; the gate controller \
         patches gated pods; the guard watches pods and patches workloads"
    );
    for verb in ["update", "create", "delete", "deletecollection", "*"] {
        assert!(
            !webhook_role.contains(&("".into(), "pods".into(), verb.into())),
            "archway must never {verb} pods"
        );
    }
    // The gate controller's one Lease: created, then read and renewed by
    // name only.
    let lease_role = find(objects, "Role", "archway-gate-lease");
    assert_eq!(str_at(lease_role, "metadata.namespace"), NAMESPACE);
    let rules: Vec<serde_json::Value> = seq_at(lease_role, "rules")
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert_eq!(
        rules,
        [
            serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]}),
            serde_json::json!({"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                "resourceNames": ["archway-gate"], "verbs": ["get", "update"]}),
        ]
    );
    let lease_binding = find(objects, "RoleBinding", "archway-gate-lease");
    assert_eq!(str_at(lease_binding, "roleRef.name"), "archway-gate-lease");
    assert_eq!(
        str_at(&seq_at(lease_binding, "subjects")[0], "name"),
        "archway"
    );
    for (group, resource) in [
        ("", "pods"),
        ("apps", "deployments"),
        ("apps", "statefulsets"),
    ] {
        for verb in ["update", "delete", "create", "*"] {
            assert!(
                !webhook_role.contains(&(group.into(), resource.into(), verb.into())),
                "archway must never {verb} {resource}: the guard evicts nothing"
            );
        }
    }
    for verb in ["list", "watch", "*"] {
        assert!(
            !webhook_role.contains(&("".into(), "secrets".into(), verb.into())),
            "archway must never {verb} secrets"
        );
    }
    let binding = find(objects, "ClusterRoleBinding", "archway");
    assert_eq!(str_at(binding, "roleRef.kind"), "ClusterRole");
    assert_eq!(str_at(binding, "roleRef.name"), "archway");
    let subjects = seq_at(binding, "subjects");
    assert_eq!(subjects.len(), 1);
    assert_eq!(
        (
            str_at(&subjects[0], "kind"),
            str_at(&subjects[0], "name"),
            str_at(&subjects[0], "namespace")
        ),
        ("ServiceAccount", "archway", NAMESPACE)
    );

    assert_eq!(
        grants(find(objects, "ClusterRole", "archway-audit")),
        triples(&[
            ("", &["pods"], &["get", "list"]),
            (
                "apps",
                &["deployments", "statefulsets", "daemonsets", "replicasets"],
                &["get", "list"]
            ),
            ("batch", &["jobs", "cronjobs"], &["get", "list"]),
            // CPU and memory per pod in the comparison.
            ("metrics.k8s.io", &["pods"], &["get", "list"]),
        ])
    );
    // Left for the operator to bind to whoever runs `archway audit`.
    for kind in ["ClusterRoleBinding", "RoleBinding"] {
        for binding in of_kind(objects, kind) {
            assert_ne!(
                str_at(binding, "roleRef.name"),
                "archway-audit",
                "archway-audit is bound by the operator, not by the install"
            );
        }
    }
}

fn the_webhook(objects: &[Value]) -> &Value {
    let configuration = find(objects, "MutatingWebhookConfiguration", "archway");
    let webhooks = seq_at(configuration, "webhooks");
    assert_eq!(webhooks.len(), 1, "one webhook");
    &webhooks[0]
}

fn check_webhook(objects: &[Value]) {
    assert!(of_kind(objects, "ValidatingWebhookConfiguration").is_empty());
    let webhook = the_webhook(objects);
    assert_eq!(str_at(webhook, "name"), "pods.archway.dev");
    assert_eq!(strings_at(webhook, "admissionReviewVersions"), ["v1"]);
    assert_eq!(str_at(webhook, "sideEffects"), "None");
    assert_eq!(int_at(webhook, "timeoutSeconds"), 3);
    assert_eq!(str_at(webhook, "failurePolicy"), "Ignore");
    assert_eq!(str_at(webhook, "reinvocationPolicy"), "IfNeeded");
    assert_eq!(str_at(webhook, "matchPolicy"), "Equivalent");

    let rules = seq_at(webhook, "rules");
    assert_eq!(rules.len(), 1, "one rule");
    let rule = &rules[0];
    assert_eq!(strings_at(rule, "operations"), ["CREATE"]);
    assert_eq!(strings_at(rule, "apiGroups"), [""]);
    assert_eq!(strings_at(rule, "apiVersions"), ["v1"]);
    assert_eq!(strings_at(rule, "resources"), ["pods"]);
    if let Some(scope) = opt(rule, "scope") {
        assert_eq!(scope.as_str(), Some("Namespaced"));
    }

    // Opted-in namespaces only, never archway's own nor kube-system.
    assert!(opt(webhook, "namespaceSelector.matchLabels").is_none());
    let expressions: BTreeMap<String, (String, BTreeSet<String>)> =
        seq_at(webhook, "namespaceSelector.matchExpressions")
            .iter()
            .map(|e| {
                (
                    str_at(e, "key").to_string(),
                    (
                        str_at(e, "operator").to_string(),
                        strings_at(e, "values").into_iter().collect(),
                    ),
                )
            })
            .collect();
    let expected: BTreeMap<String, (String, BTreeSet<String>)> = [
        ("archway.dev/mode", "In", ["enforce", "audit"]),
        (
            "kubernetes.io/metadata.name",
            "NotIn",
            [NAMESPACE, "kube-system"],
        ),
    ]
    .into_iter()
    .map(|(key, op, values)| {
        (
            key.to_string(),
            (
                op.to_string(),
                values.iter().map(|v| v.to_string()).collect(),
            ),
        )
    })
    .collect();
    assert_eq!(expressions, expected);
    assert_eq!(
        seq_at(webhook, "namespaceSelector.matchExpressions").len(),
        2,
        "no duplicated keys"
    );
    assert!(
        opt(webhook, "objectSelector").is_none(),
        "pods opt out by annotation, which archway reads itself"
    );

    // Through the Service, to archway's HTTPS port.
    assert!(opt(webhook, "clientConfig.url").is_none());
    assert_eq!(str_at(webhook, "clientConfig.service.namespace"), NAMESPACE);
    assert_eq!(str_at(webhook, "clientConfig.service.name"), "archway");
    assert_eq!(str_at(webhook, "clientConfig.service.path"), "/mutate");
    assert_eq!(int_at(webhook, "clientConfig.service.port"), 443);
    let service = find(objects, "Service", "archway");
    assert_eq!(str_at(service, "metadata.namespace"), NAMESPACE);
    let ports = seq_at(service, "spec.ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(int_at(&ports[0], "port"), 443);
    let target = container_port(objects, at(&ports[0], "targetPort"));
    assert_eq!(target, 8443, "the Service reaches archway's webhook port");
}

fn deployment(objects: &[Value]) -> &Value {
    find(objects, "Deployment", "archway")
}

fn container(objects: &[Value]) -> &Value {
    let containers = seq_at(deployment(objects), "spec.template.spec.containers");
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// A port given by number or by the container port's name, as a number.
fn container_port(objects: &[Value], port: &Value) -> i64 {
    if let Some(number) = port.as_i64() {
        return number;
    }
    let name = port.as_str().expect("a port number or name");
    seq_at(container(objects), "ports")
        .iter()
        .find(|p| str_at(p, "name") == name)
        .map(|p| int_at(p, "containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

/// The labels of the Deployment's pods match `selector`'s matchLabels.
fn selects_archway(objects: &[Value], selector: &Value) {
    let pod_labels = at(deployment(objects), "spec.template.metadata.labels")
        .as_mapping()
        .unwrap();
    let match_labels = at(selector, "matchLabels").as_mapping().unwrap();
    assert!(!match_labels.is_empty());
    for (key, value) in match_labels {
        assert_eq!(pod_labels.get(key), Some(value), "selector {key:?}");
    }
}

fn check_deployment(objects: &[Value]) {
    let deployment = deployment(objects);
    assert_eq!(str_at(deployment, "metadata.namespace"), NAMESPACE);
    assert_eq!(int_at(deployment, "spec.replicas"), 2);
    selects_archway(objects, at(deployment, "spec.selector"));
    let pod = at(deployment, "spec.template.spec");
    assert_eq!(str_at(pod, "serviceAccountName"), "archway");
    assert_eq!(
        at(pod, "automountServiceAccountToken").as_bool(),
        Some(true),
        "archway needs its token for the API server"
    );
    assert!(
        opt(pod, "priorityClassName").is_none(),
        "a fail-open webhook should not preempt workloads (deployment.yaml says why)"
    );

    // Security: non-root by number, no privilege, read-only, confined.
    assert_eq!(
        at(pod, "securityContext.runAsNonRoot").as_bool(),
        Some(true)
    );
    assert_eq!(int_at(pod, "securityContext.runAsUser"), 65532);
    assert_eq!(
        str_at(pod, "securityContext.seccompProfile.type"),
        "RuntimeDefault"
    );
    assert!(opt(pod, "hostNetwork").is_none() && opt(pod, "hostPID").is_none());
    let container = container(objects);
    let security = at(container, "securityContext");
    assert_eq!(
        at(security, "allowPrivilegeEscalation").as_bool(),
        Some(false)
    );
    assert_eq!(at(security, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(security, "runAsNonRoot").as_bool(), Some(true));
    assert_eq!(int_at(security, "runAsUser"), 65532);
    assert_eq!(strings_at(security, "capabilities.drop"), ["ALL"]);
    assert!(opt(security, "capabilities.add").is_none());
    assert!(opt(security, "privileged").is_none_or(|p| p.as_bool() == Some(false)));

    // Resources: requests for both, a memory limit, no CPU limit.
    assert!(opt(container, "resources.requests.cpu").is_some());
    assert!(opt(container, "resources.requests.memory").is_some());
    assert!(opt(container, "resources.limits.memory").is_some());
    assert!(
        opt(container, "resources.limits.cpu").is_none(),
        "no CPU limit: throttling would eat the 3 s webhook budget"
    );

    // Ports and probes: HTTPS webhook on 8443, admin (probes) on 8080.
    let https = seq_at(container, "ports")
        .iter()
        .find(|p| str_at(p, "name") == "https")
        .expect("a port named https");
    assert_eq!(int_at(https, "containerPort"), 8443);
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = at(container, &format!("{probe}.httpGet"));
        assert_eq!(str_at(get, "path"), path, "{probe}");
        assert_eq!(container_port(objects, at(get, "port")), 8080, "{probe}");
        assert!(
            opt(get, "scheme").is_none_or(|s| s.as_str() == Some("HTTP")),
            "{probe}: the admin port is plain HTTP"
        );
    }

    // Shutdown: the kubelet waits for the preStop pause plus the drain.
    let pause = opt(container, "lifecycle.preStop.sleep.seconds")
        .map(|s| s.as_i64().unwrap())
        .unwrap_or(0);
    assert!(
        int_at(pod, "terminationGracePeriodSeconds") > pause + DRAIN_SECONDS,
        "terminationGracePeriodSeconds must cover the preStop pause and the 25 s drain"
    );

    check_placement(pod);
    check_availability(objects, pod);
    check_arguments_and_mounts(objects, pod, container);
}

/// archway runs on amd64 and on arm64 nodes, reserved ones included.
fn check_placement(pod: &Value) {
    if let Some(selector) = opt(pod, "nodeSelector") {
        assert!(
            selector.get("kubernetes.io/arch").is_none(),
            "archway must not be pinned to one architecture"
        );
    }
    let terms = opt(
        pod,
        "affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms",
    )
    .map(|t| t.as_sequence().unwrap().clone())
    .unwrap_or_default();
    for term in &terms {
        for expression in opt(term, "matchExpressions")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if str_at(expression, "key") == "kubernetes.io/arch" {
                assert_eq!(str_at(expression, "operator"), "In");
                let values = strings_at(expression, "values");
                for arch in ["amd64", "arm64"] {
                    assert!(values.iter().any(|v| v == arch), "{arch} allowed");
                }
            }
        }
    }
    let tolerations = seq_at(pod, "tolerations");
    for arch in ["amd64", "arm64"] {
        assert!(
            tolerations.iter().any(|t| {
                str_at(t, "key") == "kubernetes.io/arch"
                    && opt(t, "effect").is_none_or(|e| e.as_str() == Some("NoSchedule"))
                    && match str_at(t, "operator") {
                        "Exists" => true,
                        "Equal" => str_at(t, "value") == arch,
                        _ => false,
                    }
            }),
            "tolerates kubernetes.io/arch={arch}:NoSchedule"
        );
    }
}

/// Two replicas on different nodes, and a PodDisruptionBudget keeping one.
fn check_availability(objects: &[Value], pod: &Value) {
    let spreads = seq_at(pod, "topologySpreadConstraints");
    let spread = spreads
        .iter()
        .find(|s| str_at(s, "topologyKey") == "kubernetes.io/hostname")
        .expect("replicas spread over nodes");
    assert_eq!(int_at(spread, "maxSkew"), 1);
    selects_archway(objects, at(spread, "labelSelector"));

    let budgets = of_kind(objects, "PodDisruptionBudget");
    assert_eq!(budgets.len(), 1);
    let budget = budgets[0];
    assert_eq!(str_at(budget, "apiVersion"), "policy/v1");
    assert_eq!(int_at(budget, "spec.minAvailable"), 1);
    assert!(opt(budget, "spec.maxUnavailable").is_none());
    selects_archway(objects, at(budget, "spec.selector"));
}

/// The value following `flag` in `args`.
fn flag<'a>(args: &'a [String], flag: &str) -> &'a str {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {args:?}"));
    args.get(at + 1)
        .unwrap_or_else(|| panic!("{flag} without a value"))
}

/// The volume mounted where `path` is, and the file name inside it.
fn volume_of<'a>(pod: &'a Value, container: &Value, path: &str) -> (&'a Value, String) {
    let (mount, rest) = seq_at(container, "volumeMounts")
        .iter()
        .filter_map(|m| {
            let dir = str_at(m, "mountPath").trim_end_matches('/');
            path.strip_prefix(dir)
                .and_then(|rest| rest.strip_prefix('/'))
                .map(|rest| (m, rest.to_string()))
        })
        // The deepest mount wins, as in the container's filesystem.
        .max_by_key(|(m, _)| str_at(m, "mountPath").len())
        .unwrap_or_else(|| panic!("{path} is on no volume mount"));
    assert!(
        opt(mount, "subPath").is_none(),
        "{path}: a subPath mount is never updated, so archway could not reload it"
    );
    assert_eq!(at(mount, "readOnly").as_bool(), Some(true), "{path}");
    let name = str_at(mount, "name");
    let volume = seq_at(pod, "volumes")
        .iter()
        .find(|v| str_at(v, "name") == name)
        .unwrap_or_else(|| panic!("no volume {name}"));
    assert!(!rest.contains('/'), "{path}: a file at the volume's top");
    (volume, rest)
}

fn check_arguments_and_mounts(objects: &[Value], pod: &Value, container: &Value) {
    assert!(
        opt(container, "command").is_none(),
        "the image's entrypoint is /archway"
    );
    let args = strings_at(container, "args");
    assert_eq!(args[0], "serve");

    // The configuration: a file of the ConfigMap, which parses as archway's.
    let config_path = flag(&args, "--config");
    let (volume, file) = volume_of(pod, container, config_path);
    let config_map_name = str_at(volume, "configMap.name");
    assert_eq!(
        config_map_name, "archway-config",
        "no name-hash suffix: archway reloads the mounted file in place"
    );
    let config_map = find(objects, "ConfigMap", config_map_name);
    let data = at(config_map, "data");
    let text = data
        .get(file.as_str())
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("ConfigMap {config_map_name} has no {file}"));
    let on_disk = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/base/archway.yaml"),
    )
    .unwrap();
    assert_eq!(text, on_disk, "the ConfigMap is deploy/base/archway.yaml");
    let config = Config::from_yaml(text).unwrap_or_else(|e| panic!("{config_path}: {e}"));
    assert!(
        config.namespaces.is_empty(),
        "in a cluster namespaces opt in by label, not in the file"
    );
    let timeout = int_at(the_webhook(objects), "timeoutSeconds");
    assert!(
        config.time_budget < std::time::Duration::from_secs(timeout as u64),
        "timeBudget must end before the webhook's timeoutSeconds"
    );
    assert_eq!(
        i64::from(config.server.listen.port()),
        int_at(
            seq_at(container, "ports")
                .iter()
                .find(|p| str_at(p, "name") == "https")
                .unwrap(),
            "containerPort"
        ),
        "archway listens where the https port points"
    );
    assert_eq!(config.server.admin_listen.port(), 8080, "the probes' port");
    assert!(config.server.listen.ip().is_unspecified());
    assert!(config.server.admin_listen.ip().is_unspecified());

    // The serving pair: both files of the Secret archway-tls.
    let mut secrets = BTreeSet::new();
    for (flag_name, expected) in [("--tls-cert", "tls.crt"), ("--tls-key", "tls.key")] {
        let path = flag(&args, flag_name);
        let (volume, file) = volume_of(pod, container, path);
        assert_eq!(file, expected, "{flag_name}");
        secrets.insert(str_at(volume, "secret.secretName").to_string());
        readable_by_archway(pod, volume, path);
        if let Some(items) = opt(volume, "secret.items") {
            let keys: Vec<&str> = items
                .as_sequence()
                .unwrap()
                .iter()
                .map(|i| str_at(i, "path"))
                .collect();
            assert!(keys.contains(&expected), "{expected} projected");
        }
    }
    assert_eq!(secrets, BTreeSet::from(["archway-tls".to_string()]));
}

/// archway (UID and group 65532, not root) can read the files of a Secret
/// volume: the kubelet writes them as root, with the volume's mode and, given
/// an fsGroup, that group.
fn readable_by_archway(pod: &Value, volume: &Value, path: &str) {
    let mode = opt(volume, "secret.defaultMode").map_or(0o644, |m| m.as_i64().unwrap());
    let group = opt(pod, "securityContext.fsGroup").and_then(Value::as_i64);
    let by_group = mode & 0o040 != 0 && group == Some(65532);
    assert!(
        mode & 0o004 != 0 || by_group,
        "{path}: mode {mode:o} with fsGroup {group:?} is unreadable for UID 65532"
    );
}

// ---------------------------------------------------------------------------
// The tests

#[test]
fn the_default_install_renders_validates_and_holds() {
    let copy = deploy_copy();
    for kubectl in kubectls() {
        let objects = render(&kubectl, &copy.path().join("deploy"));
        validate(&objects);
        check_base(&objects);
        // Without certificates: no Secret made up, no CA claimed.
        assert!(of_kind(&objects, "Secret").is_empty(), "{kubectl}");
        assert!(opt(the_webhook(&objects), "clientConfig.caBundle").is_none());
        assert!(!objects.iter().any(is_cert_manager));
        let kinds: BTreeSet<&str> = objects.iter().map(|o| str_at(o, "kind")).collect();
        assert_eq!(
            kinds,
            BTreeSet::from([
                "ClusterRole",
                "ClusterRoleBinding",
                "ConfigMap",
                "Deployment",
                "MutatingWebhookConfiguration",
                "Namespace",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]),
            "{kubectl}"
        );
    }
}

#[test]
fn the_self_signed_overlay_serves_what_archway_certs_made() {
    let copy = deploy_copy();
    let overlay = copy.path().join("deploy/overlays/self-signed");
    let certs = overlay.join("certs");
    // The documented step, with the real binary.
    let output = Command::new(env!("CARGO_BIN_EXE_archway"))
        .args(["certs", "--namespace", NAMESPACE, "--out"])
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "archway certs: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed_bundle = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let read = |name: &str| std::fs::read(certs.join(name)).unwrap();
    let ca = read("ca.crt");
    assert_eq!(decode(&printed_bundle), ca);

    for kubectl in kubectls() {
        let objects = render(&kubectl, &overlay);
        validate(&objects);
        check_base(&objects);

        let tls = find(&objects, "Secret", "archway-tls");
        assert_eq!(str_at(tls, "type"), "kubernetes.io/tls");
        let data = at(tls, "data");
        let field = |key: &str| decode(data.get(key).and_then(Value::as_str).unwrap());
        assert_eq!(field("tls.crt"), read("tls.crt"), "{kubectl}");
        assert_eq!(field("tls.key"), read("tls.key"), "{kubectl}");

        let bundle = str_at(the_webhook(&objects), "clientConfig.caBundle");
        assert_eq!(decode(bundle), ca, "{kubectl}: caBundle is ca.crt");
        assert!(!objects.iter().any(is_cert_manager));
    }
}

#[test]
fn the_cert_manager_overlay_issues_and_injects_the_certificate() {
    let copy = deploy_copy();
    for kubectl in kubectls() {
        let objects = render(&kubectl, &copy.path().join("deploy/overlays/cert-manager"));
        validate(&objects);
        check_base(&objects);
        check_cert_manager(&objects);
    }
}

/// cert-manager's objects, checked by hand since kubernetes-validate has
/// no schema for them: known fields only, and a chain that ends in the
/// Secret archway mounts, for the names the API server calls.
fn check_cert_manager(objects: &[Value]) {
    const CERTIFICATE_FIELDS: &[&str] = &[
        "additionalOutputFormats",
        "commonName",
        "dnsNames",
        "duration",
        "emailAddresses",
        "encodeUsagesInRequest",
        "ipAddresses",
        "isCA",
        "issuerRef",
        "keystores",
        "literalSubject",
        "nameConstraints",
        "otherNames",
        "privateKey",
        "renewBefore",
        "renewBeforePercentage",
        "revisionHistoryLimit",
        "secretName",
        "secretTemplate",
        "signatureAlgorithm",
        "subject",
        "uris",
        "usages",
    ];
    const ISSUER_FIELDS: &[&str] = &["acme", "ca", "selfSigned", "vault", "venafi"];
    const USAGES: &[&str] = &[
        "signing",
        "digital signature",
        "content commitment",
        "key encipherment",
        "key agreement",
        "data encipherment",
        "cert sign",
        "crl sign",
        "encipher only",
        "decipher only",
        "any",
        "server auth",
        "client auth",
    ];

    let managed: Vec<&Value> = objects.iter().filter(|o| is_cert_manager(o)).collect();
    assert!(!managed.is_empty());
    for object in &managed {
        assert_eq!(str_at(object, "apiVersion"), "cert-manager.io/v1");
        assert_eq!(str_at(object, "metadata.namespace"), NAMESPACE);
        let kind = str_at(object, "kind");
        let allowed = match kind {
            "Certificate" => CERTIFICATE_FIELDS,
            "Issuer" => ISSUER_FIELDS,
            other => panic!("unexpected cert-manager kind {other}"),
        };
        let spec = at(object, "spec").as_mapping().expect("a spec");
        for key in spec.keys() {
            let key = key.as_str().unwrap();
            assert!(allowed.contains(&key), "{kind}: unknown field spec.{key}");
        }
        if kind == "Issuer" {
            assert_eq!(spec.len(), 1, "an Issuer has one kind of issuer");
        }
    }

    // The serving certificate, in the Secret the Deployment mounts.
    let webhook_configuration = find(objects, "MutatingWebhookConfiguration", "archway");
    let inject_from = at(webhook_configuration, "metadata.annotations")
        .get("cert-manager.io/inject-ca-from")
        .and_then(Value::as_str)
        .expect("the cert-manager.io/inject-ca-from annotation");
    assert_eq!(inject_from, "archway/archway");
    assert!(
        opt(the_webhook(objects), "clientConfig.caBundle").is_none(),
        "the CA injector fills caBundle; a value here would fight it"
    );
    let (namespace, name) = inject_from.split_once('/').unwrap();
    let serving = find(objects, "Certificate", name);
    assert_eq!(str_at(serving, "metadata.namespace"), namespace);
    assert_eq!(str_at(serving, "spec.secretName"), "archway-tls");
    assert!(
        of_kind(objects, "Secret").is_empty(),
        "cert-manager makes archway-tls"
    );
    let names = strings_at(serving, "spec.dnsNames");
    for expected in ["archway.archway.svc", "archway.archway.svc.cluster.local"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    assert_ne!(
        opt(serving, "spec.isCA").and_then(Value::as_bool),
        Some(true)
    );
    for usage in strings_at(serving, "spec.usages") {
        assert!(USAGES.contains(&usage.as_str()), "usage {usage}");
    }
    assert!(strings_at(serving, "spec.usages").contains(&"server auth".to_string()));

    // Its issuer chain ends in a self-signed issuer, all inside archway's
    // namespace (Issuers, not ClusterIssuers).
    let mut certificate = serving;
    for _ in 0..4 {
        assert!(
            opt(certificate, "spec.issuerRef.kind").is_none_or(|k| k.as_str() == Some("Issuer")),
            "a namespaced Issuer"
        );
        let issuer = find(
            objects,
            "Issuer",
            str_at(certificate, "spec.issuerRef.name"),
        );
        if opt(issuer, "spec.selfSigned").is_some() {
            return;
        }
        let ca_secret = str_at(issuer, "spec.ca.secretName");
        certificate = objects
            .iter()
            .filter(|o| str_at(o, "kind") == "Certificate")
            .find(|c| str_at(c, "spec.secretName") == ca_secret)
            .unwrap_or_else(|| panic!("no Certificate makes the CA Secret {ca_secret}"));
        assert_eq!(at(certificate, "spec.isCA").as_bool(), Some(true));
    }
    panic!("the issuer chain does not end in a self-signed Issuer");
}

#[test]
fn kubernetes_validate_rejects_a_bad_object() {
    // The validation above is only worth something if it can fail.
    let mut objects = render(&kubectls()[0], &deploy_copy().path().join("deploy"));
    validate(&objects);
    configuration_mut(&mut objects)["webhooks"][0]["timeoutSecond"] = Value::from(3);
    let report = kubernetes_validate(&objects).expect_err("a misspelt field must fail");
    assert!(report.contains("timeoutSecond"), "{report}");
}

fn configuration_mut(objects: &mut [Value]) -> &mut Value {
    objects
        .iter_mut()
        .find(|o| str_at(o, "kind") == "MutatingWebhookConfiguration")
        .unwrap()
}

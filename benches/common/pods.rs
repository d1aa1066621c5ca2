//! Realistic pods and AdmissionReview bodies for the benchmarks and the load
//! script: what a ReplicaSet controller sends when it creates a pod (owner
//! reference, generateName, the service account's projected volume, the
//! default not-ready/unreachable tolerations), with containers carrying env,
//! probes, resources and mounts, sized by `Shape`.
#![allow(dead_code)]

use serde_json::{Value, json};

/// The namespace every generated review targets; the load configuration
/// opts it in (enforce).
pub const NAMESPACE: &str = "shop";

/// How big a pod to make.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub name: &'static str,
    pub containers: usize,
    pub init_containers: usize,
    pub env_per_container: usize,
    /// Length of each plain env value.
    pub env_value_len: usize,
    /// Node affinity (zone), pod anti-affinity, topology spread.
    pub scheduling: bool,
}

/// 1 container, no extra scheduling constraints: ~5 KB review.
pub const SMALL: Shape = Shape {
    name: "small",
    containers: 1,
    init_containers: 0,
    env_per_container: 24,
    env_value_len: 48,
    scheduling: false,
};

/// 3 containers + 1 init, affinity and tolerations: ~10 KB pod, ~15 KB review.
pub const TYPICAL: Shape = Shape {
    name: "typical",
    containers: 3,
    init_containers: 1,
    env_per_container: 20,
    env_value_len: 40,
    scheduling: true,
};

/// 6 containers + 2 init: ~30 KB review, the top of the realistic range.
pub const LARGE: Shape = Shape {
    name: "large",
    containers: 6,
    init_containers: 2,
    env_per_container: 22,
    env_value_len: 40,
    scheduling: true,
};

/// 30 containers with big env: ~300 KB, far beyond what real pods carry.
pub const VERY_LARGE: Shape = Shape {
    name: "very_large",
    containers: 30,
    init_containers: 0,
    env_per_container: 100,
    env_value_len: 64,
    scheduling: true,
};

fn filler(seed: usize, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = (seed as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1);
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ALPHABET[(state >> 33) as usize % ALPHABET.len()] as char
        })
        .collect()
}

fn container(name: &str, image: &str, index: usize, shape: &Shape, init: bool) -> Value {
    let mut env: Vec<Value> = (0..shape.env_per_container)
        .map(|i| {
            let key = format!("APP_SETTING_{}_{i}", name.to_uppercase().replace('-', "_"));
            match i % 6 {
                0 => json!({"name": key, "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}}),
                1 => json!({"name": key, "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": format!("key-{i}")}}}),
                2 => json!({"name": key, "valueFrom": {"configMapKeyRef": {"name": "app-config", "key": format!("setting-{i}"), "optional": true}}}),
                _ => json!({"name": key, "value": filler(index * 1000 + i, shape.env_value_len)}),
            }
        })
        .collect();
    env.push(json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}}}));
    let mut c = json!({
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["/app/bin/server"],
        "args": ["--config=/etc/app/config.yaml", "--port=8080", format!("--instance={index}")],
        "ports": [{"name": "http", "containerPort": 8080 + index as i32, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": 9090 + index as i32, "protocol": "TCP"}],
        "env": env,
        "envFrom": [{"configMapRef": {"name": "app-common"}}],
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"},
                      "limits": {"cpu": "1", "memory": "512Mi"}},
        "volumeMounts": [
            {"name": "config", "mountPath": "/etc/app", "readOnly": true},
            {"name": "cache", "mountPath": "/var/cache/app"},
            {"name": "kube-api-access-x7k2p", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}
        ],
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                            "runAsNonRoot": true, "capabilities": {"drop": ["ALL"]}},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File"
    });
    if !init {
        c["livenessProbe"] = json!({"httpGet": {"path": "/healthz", "port": "http", "scheme": "HTTP"},
            "initialDelaySeconds": 10, "periodSeconds": 10, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
        c["readinessProbe"] = json!({"httpGet": {"path": "/ready", "port": "http", "scheme": "HTTP"},
            "periodSeconds": 5, "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3});
    }
    c
}

/// A pod of `shape` whose containers use `images` in turn (init
/// containers first).
pub fn pod(shape: &Shape, images: &[String], workload: &str) -> Value {
    assert!(!images.is_empty());
    // Init containers use the first image, the others the rest in turn.
    let main_images = if images.len() > 1 {
        &images[1..]
    } else {
        images
    };
    let mut next = 0;
    let mut take = || {
        let image = main_images[next % main_images.len()].clone();
        next += 1;
        image
    };
    let init: Vec<Value> = (0..shape.init_containers)
        .map(|i| container(&format!("init-{i}"), &images[0], 100 + i, shape, true))
        .collect();
    let containers: Vec<Value> = (0..shape.containers)
        .map(|i| {
            let name = if i == 0 {
                workload.to_string()
            } else {
                format!("sidecar-{i}")
            };
            container(&name, &take(), i, shape, false)
        })
        .collect();
    let hash = "7d9f8c6b5";
    let mut spec = json!({
        "volumes": [
            {"name": "config", "configMap": {"name": "app-config", "defaultMode": 420}},
            {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}
            ]}}
        ],
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": workload,
        "serviceAccount": workload,
        "securityContext": {"runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": true,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "tolerations": [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
            {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
        ]
    });
    if !init.is_empty() {
        spec["initContainers"] = Value::Array(init);
    }
    if shape.scheduling {
        spec["affinity"] = json!({
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In",
                                           "values": ["eu-west-1a", "eu-west-1b", "eu-west-1c"]}]}
                ]},
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {"weight": 50, "preference": {"matchExpressions": [{"key": "node.kubernetes.io/instance-type", "operator": "In", "values": ["m7g.xlarge", "m7i.xlarge"]}]}}
                ]
            },
            "podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": workload}},
                                                    "topologyKey": "kubernetes.io/hostname"}}
            ]}
        });
        spec["tolerations"]
            .as_array_mut()
            .unwrap()
            .push(json!({"key": "dedicated", "operator": "Equal", "value": "shop", "effect": "NoSchedule"}));
        spec["topologySpreadConstraints"] = json!([
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "ScheduleAnyway",
             "labelSelector": {"matchLabels": {"app": workload}}}
        ]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": format!("{workload}-{hash}-"),
            "namespace": NAMESPACE,
            "labels": {"app": workload, "app.kubernetes.io/name": workload, "app.kubernetes.io/part-of": "shop",
                       "app.kubernetes.io/version": "1.42.0", "pod-template-hash": hash, "team": "checkout"},
            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "9090",
                            "kubectl.kubernetes.io/restartedAt": "2025-06-01T12:00:00Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{workload}-{hash}"),
                                 "uid": "5f0c6a1e-8d3b-4c2f-9a7e-1b2c3d4e5f60", "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": spec
    })
}

/// The AdmissionReview the API server sends to create `pod`.
pub fn review(uid: &str, pod: &Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "",
            "namespace": NAMESPACE,
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "a1b2c3d4-0000-4000-8000-000000000001",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// A review body of `shape` using `images`, serialised.
pub fn review_body(shape: &Shape, images: &[String], uid: &str) -> Vec<u8> {
    serde_json::to_vec(&review(uid, &pod(shape, images, "checkout"))).unwrap()
}

/// The repositories the load pods use (each a multi-arch index in the
/// benchmark registry): init first, then the main container, then sidecars.
pub const REPOSITORIES: [&str; 4] = ["init:v1", "app:v1", "proxy:v1", "agent:v1"];

pub fn images_on(host: &str) -> Vec<String> {
    REPOSITORIES.iter().map(|r| format!("{host}/{r}")).collect()
}

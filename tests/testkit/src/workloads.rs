//! Workloads whose pods' container statuses a test writes, as a kubelet
//! would (pods annotated `archway.test/kubelet: manual`): the rollout
//! guard's tests, on one replica or two.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::controlplane::KUBELET_MANUAL;
use crate::kubelet::now_rfc3339;

/// A Deployment whose pods' statuses the test writes (`manual`) or the
/// fake kubelet does.
pub fn deployment(namespace: &str, name: &str, image: &str, replicas: i32, manual: bool) -> Value {
    let annotations = if manual {
        json!({KUBELET_MANUAL: "manual"})
    } else {
        json!({})
    };
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"rollingUpdate": {"maxSurge": "100%", "maxUnavailable": "100%"}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "main", "image": image}],
                         "terminationGracePeriodSeconds": 0},
            },
        },
    })
}

pub fn node_arch(node: &str) -> &str {
    node.split('-').next().unwrap()
}

/// The Deployment's live pods once `count` are bound, with the architecture
/// of each one's node.
pub async fn bound_pods(
    client: &kube::Client,
    ns: &str,
    app: &str,
    count: usize,
) -> Vec<(Pod, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    loop {
        let list = pods
            .list(&ListParams::default().labels(&format!("app={app}")))
            .await
            .unwrap();
        let bound: Vec<(Pod, String)> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let node = p.spec.as_ref()?.node_name.clone()?;
                Some((p, node_arch(&node).to_string()))
            })
            .collect();
        if bound.len() == count {
            return bound;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{ns}/{app}: {} of {count} pods bound",
            bound.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes a container status through the status subresource, as the
/// kubelet does.
pub async fn write_status(client: &kube::Client, pod: &Pod, state: ContainerState) {
    let ns = pod.metadata.namespace.as_deref().unwrap();
    let name = pod.metadata.name.as_deref().unwrap();
    let now = now_rfc3339();
    let (ready, restarts, state, last) = match state {
        ContainerState::Running => (true, 0, json!({"running": {"startedAt": now}}), json!({})),
        ContainerState::Restarted(restarts) => (
            true,
            restarts,
            json!({"running": {"startedAt": now}}),
            json!({"terminated": {"exitCode": 1, "reason": "Error",
                   "startedAt": now, "finishedAt": now}}),
        ),
        ContainerState::CrashLoop => (
            false,
            3,
            json!({"waiting": {"reason": "CrashLoopBackOff",
                   "message": "back-off 40s restarting failed container=main"}}),
            json!({"terminated": {"exitCode": 1, "reason": "Error",
                   "startedAt": now, "finishedAt": now}}),
        ),
        ContainerState::ExecFormat => (
            false,
            0,
            json!({"terminated": {"exitCode": 128, "reason": "StartError",
                   "message": "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create failed: unable to start container process: exec: \"/app\": exec format error",
                   "startedAt": "1970-01-01T00:00:00Z", "finishedAt": now}}),
            json!({}),
        ),
    };
    let image = pod.spec.as_ref().unwrap().containers[0].image.clone();
    let ready_text = if ready { "True" } else { "False" };
    let status = json!({"status": {
        "phase": "Running", "startTime": now,
        "conditions": [{"type": "Ready", "status": ready_text, "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": "main", "image": image, "imageID": "", "ready": ready,
            "started": ready, "restartCount": restarts, "state": state, "lastState": last,
        }],
    }});
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await
        .unwrap_or_else(|e| panic!("status of {ns}/{name}: {e}"));
}

/// What `write_status` writes.
#[derive(Clone, Copy)]
pub enum ContainerState {
    Running,
    /// Running and ready again, after this many restarts: under the
    /// guard's limit, and no CrashLoopBackOff.
    Restarted(u32),
    CrashLoop,
    ExecFormat,
}

//! What the kubelets of the test nodes would do that controllers wait for.
//!
//! The control plane has Node objects but no kubelet. Without one, a bound
//! pod stays Pending (a Deployment never becomes available, so a rolling
//! update stalls) and a deleted pod stays Terminating. [`FakeKubelet`]
//! reports each bound pod running and ready, and confirms deletions, through
//! the same API calls a kubelet makes. Pods annotated
//! `archway.test/kubelet: manual` are left to the test, which writes their
//! status itself.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::controlplane::KUBELET_MANUAL;

pub struct FakeKubelet;

impl FakeKubelet {
    /// Runs on a thread and runtime of its own, for the life of the test
    /// process, as the cluster admin of `kubeconfig`.
    pub fn spawn(kubeconfig: std::path::PathBuf) {
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("kubelet runtime");
            runtime.block_on(async {
                let client = crate::controlplane::client_from_kubeconfig(&kubeconfig).await;
                FakeKubelet::run(client).await
            });
        });
    }

    /// Runs until the runtime it is spawned on stops.
    async fn run(client: kube::Client) {
        let pods: Api<Pod> = Api::all(client);
        // Writes in flight at once: enough for a 200-pod rollout, few
        // enough not to crowd the API server out for the tests' own calls.
        let writes = Arc::new(Semaphore::new(16));
        let config = watcher::Config::default().fields("spec.nodeName!=");
        // A backoff: a failing watch must sleep between attempts, not spin.
        let mut events = watcher::watcher(pods.clone(), config)
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let pod = match event {
                Ok(Event::Apply(pod) | Event::InitApply(pod)) => pod,
                _ => continue,
            };
            if pod
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(KUBELET_MANUAL))
                == Some(&"manual".to_string())
            {
                continue;
            }
            let pods = pods.clone();
            let permit = writes.clone().acquire_owned().await.expect("semaphore");
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = act_on(&pods, &pod).await {
                    eprintln!("fake kubelet: {e}");
                }
            });
        }
    }
}

async fn act_on(all: &Api<Pod>, pod: &Pod) -> Result<(), kube::Error> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(all.clone().into_client(), &namespace);
    if pod.metadata.deletion_timestamp.is_some() {
        // The kubelet has stopped the containers: the pod can go.
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        return match pods.delete(&name, &params).await {
            Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
            Err(e) => Err(e),
        };
    }
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if running {
        return Ok(());
    }
    let now = now_rfc3339();
    let spec = pod.spec.as_ref();
    let statuses: Vec<_> = spec
        .map(|s| s.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            json!({
                "name": c.name, "image": c.image.clone().unwrap_or_default(), "imageID": "",
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            })
        })
        .collect();
    let condition = |kind: &str| json!({"type": kind, "status": "True", "lastTransitionTime": now});
    let status = json!({"status": {
        "phase": "Running", "startTime": now,
        "conditions": [condition("Initialized"), condition("ContainersReady"), condition("Ready")],
        "containerStatuses": statuses,
    }});
    match pods
        .patch_status(&name, &PatchParams::default(), &Patch::Strategic(status))
        .await
    {
        // Deleted meanwhile: nothing to report.
        Ok(_) | Err(kube::Error::Api(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

//! The part of a pod the guard reads: its metadata and its containers'
//! states. Decoded into this slim type, not `Pod`, so a watch of thousands
//! of pods never builds their specs; and nothing of it is kept (the
//! detector keeps a few words per pod).

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;

use super::detect::Failure;

/// What a kubelet writes when a container's binary is for another CPU
/// (runc's `exec format error`, in the container's start error).
const EXEC_FORMAT: &str = "exec format error";
/// The longest message searched: kubelet messages are short, a
/// container's termination message (its own writing) at most 4 KiB.
const MAX_MESSAGE_BYTES: usize = 4096;

#[derive(Debug, Clone, Deserialize)]
pub struct GuardPod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Spec>,
    #[serde(default)]
    pub status: Option<Status>,
}

/// Of the spec, only the node the pod is bound to: a pod counts as failing
/// on an architecture only when its node is of that architecture.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub node_name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    #[serde(default)]
    container_statuses: Option<Vec<ContainerStatus>>,
    #[serde(default)]
    init_container_statuses: Option<Vec<ContainerStatus>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerStatus {
    #[serde(default)]
    restart_count: i32,
    #[serde(default)]
    state: Option<State>,
    #[serde(default)]
    last_state: Option<State>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct State {
    #[serde(default)]
    waiting: Option<Reasoned>,
    #[serde(default)]
    terminated: Option<Reasoned>,
}

#[derive(Debug, Clone, Default, Deserialize)]
struct Reasoned {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

impl kube::Resource for GuardPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "Pod".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "pods".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl GuardPod {
    /// The node the pod is bound to, if it is.
    pub fn node_name(&self) -> Option<&str> {
        self.spec
            .as_ref()?
            .node_name
            .as_deref()
            .filter(|n| !n.is_empty())
    }

    /// The worst failure its containers show, and their restarts.
    pub fn failure(&self) -> (Option<Failure>, u32) {
        let Some(status) = &self.status else {
            return (None, 0);
        };
        let containers = (status.init_container_statuses.iter().flatten())
            .chain(status.container_statuses.iter().flatten());
        let mut worst: Option<Failure> = None;
        let mut restarts: u32 = 0;
        for container in containers {
            restarts = restarts.saturating_add(container.restart_count.max(0) as u32);
            let failure = container_failure(container);
            // ExecFormat sorts first: the most specific reason wins.
            worst = match (worst, failure) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        (worst, restarts)
    }
}

fn container_failure(container: &ContainerStatus) -> Option<Failure> {
    let states = [&container.state, &container.last_state];
    let reasoned = states
        .iter()
        .filter_map(|s| s.as_ref())
        .flat_map(|s| [&s.waiting, &s.terminated])
        .flatten();
    let mut crash_loop = false;
    for r in reasoned {
        let message = r.message.as_deref().unwrap_or_default();
        if mentions_exec_format(message) {
            return Some(Failure::ExecFormat);
        }
        crash_loop |= r.reason.as_deref() == Some("CrashLoopBackOff");
    }
    // Only the current state's CrashLoopBackOff counts: a pod that is
    // running again after one is recovering, not failing.
    let waiting_now = container
        .state
        .as_ref()
        .and_then(|s| s.waiting.as_ref())
        .and_then(|w| w.reason.as_deref());
    (crash_loop && waiting_now == Some("CrashLoopBackOff")).then_some(Failure::CrashLoop)
}

fn mentions_exec_format(message: &str) -> bool {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_ascii_lowercase().contains(EXEC_FORMAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(statuses: serde_json::Value) -> GuardPod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "n"},
            "status": {"containerStatuses": statuses},
        }))
        .unwrap()
    }

    #[test]
    fn reads_failures_from_container_states() {
        let cases = [
            (json!(null), (None, 0)),
            (
                json!([{"restartCount": 0, "state": {"running": {}}}]),
                (None, 0),
            ),
            (
                json!([{"restartCount": 4, "state": {"waiting": {"reason": "CrashLoopBackOff",
                         "message": "back-off 40s restarting failed container"}},
                        "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}}]),
                (Some(Failure::CrashLoop), 4),
            ),
            (
                json!([{"restartCount": 1, "state": {"terminated": {"reason": "StartError",
                         "message": "failed to create containerd task: exec: \"/app\": exec format error"}}}]),
                (Some(Failure::ExecFormat), 1),
            ),
            (
                json!([{"restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                        "lastState": {"terminated": {"reason": "StartError",
                         "message": "exec /bin/app: Exec format error"}}},
                       {"restartCount": 3, "state": {"running": {}}}]),
                (Some(Failure::ExecFormat), 5),
            ),
            (
                json!([{"restartCount": 7, "state": {"running": {}},
                        "lastState": {"terminated": {"reason": "Error"}}}]),
                (None, 7),
            ),
            (
                json!([{"restartCount": -3, "state": {"waiting": {"reason": "ContainerCreating"}}}]),
                (None, 0),
            ),
        ];
        for (statuses, expected) in cases {
            assert_eq!(pod(statuses.clone()).failure(), expected, "{statuses}");
        }
    }

    #[test]
    fn a_long_message_is_searched_only_so_far_and_never_split_in_a_character() {
        let long = "é".repeat(3000) + EXEC_FORMAT;
        let p = pod(json!([{"state": {"terminated": {"message": long}}}]));
        assert_eq!(p.failure(), (None, 0));
    }
}

//! `archway audit`, continued: the CPU and memory each pod uses now, as
//! `metrics.k8s.io` serves it (metrics-server, or anything else that
//! registers the API's PodMetrics). Read once per audit, bounded in pages and
//! time. A cluster that does not serve the API, or a user who may not read
//! it, gets one line saying so and no figures: a missing figure is never
//! shown as 0.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Serialize;

use crate::decision::compare::{PodUsage, pod_usage};

/// PodMetrics of `metrics.k8s.io/v1beta1`, the version metrics-server serves
/// (there is no v1).
fn pod_metrics() -> ApiResource {
    ApiResource {
        group: "metrics.k8s.io".into(),
        version: "v1beta1".into(),
        api_version: "metrics.k8s.io/v1beta1".into(),
        kind: "PodMetrics".into(),
        plural: "pods".into(),
    }
}

/// PodMetrics asked for per page.
const PAGE: u32 = 500;
/// Pages read at most: 20,000 pods, beyond which the figures are of the
/// pods read (the note says so) rather than an audit that never ends.
/// metrics-server answers in one page whatever the limit.
const MAX_PAGES: usize = 40;
/// The whole read: the aggregation layer waits up to a minute for a
/// metrics server that does not answer, and the audit should not.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What was read: each pod's usage, and in one line where it came from or
/// why there is none.
#[derive(Debug, Clone, Default)]
pub struct UsageRead {
    /// (namespace, pod name) -> what it uses now.
    pub pods: BTreeMap<(String, String), PodUsage>,
    pub source: UsageSource,
}

/// Where the report's CPU and memory figures come from (JSON: `usage`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct UsageSource {
    /// `metrics.k8s.io` answered.
    pub served: bool,
    /// Pods it gave a figure for.
    pub pods: usize,
    /// The line the table and the page show: `CPU and memory in use from
    /// metrics.k8s.io (12 pods)`, or why there are none (`metrics.k8s.io is
    /// not served: no CPU or memory`).
    pub note: String,
}

/// Why nothing was read. Data, not an error: the audit goes on without
/// figures.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Unread {
    /// No APIService for it: the API server answers 404.
    #[error("metrics.k8s.io is not served: no CPU or memory")]
    NotServed,
    /// Registered, but its server is unavailable: 503.
    #[error("metrics.k8s.io is not served (its APIService is not available): no CPU or memory")]
    Unavailable,
    #[error(
        "metrics.k8s.io is not readable by this user (forbidden: list pods.metrics.k8s.io): no CPU or memory"
    )]
    Forbidden,
    #[error("metrics.k8s.io did not answer within {0} s: no CPU or memory")]
    TimedOut(u64),
    #[error("metrics.k8s.io could not be read ({0}): no CPU or memory")]
    Failed(String),
}

impl Unread {
    fn of(error: &kube::Error) -> Unread {
        match error {
            kube::Error::Api(status) if status.code == 404 => Unread::NotServed,
            kube::Error::Api(status) if status.code == 503 => Unread::Unavailable,
            kube::Error::Api(status) if status.code == 403 => Unread::Forbidden,
            other => Unread::Failed(other.to_string()),
        }
    }
}

/// Reads every pod's usage in `namespace` (or all), through `client`.
pub async fn read(client: &kube::Client, namespace: Option<&str>) -> UsageRead {
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &pod_metrics()),
        None => Api::all_with(client.clone(), &pod_metrics()),
    };
    match tokio::time::timeout(TIMEOUT, pages(&api)).await {
        Ok(Ok((items, complete))) => read_items(&items, complete),
        Ok(Err(error)) => unread(Unread::of(&error)),
        Err(_) => unread(Unread::TimedOut(TIMEOUT.as_secs())),
    }
}

fn unread(why: Unread) -> UsageRead {
    UsageRead {
        pods: BTreeMap::new(),
        source: UsageSource {
            served: false,
            pods: 0,
            note: why.to_string(),
        },
    }
}

/// Up to [`MAX_PAGES`] pages; `true` when that was all there is.
async fn pages(api: &Api<DynamicObject>) -> Result<(Vec<DynamicObject>, bool), kube::Error> {
    let mut items = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..MAX_PAGES {
        let mut params = ListParams::default().limit(PAGE);
        if let Some(token) = token.take() {
            params = params.continue_token(&token);
        }
        let page = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(next) => token = Some(next),
            None => return Ok((items, true)),
        }
    }
    Ok((items, false))
}

/// Each PodMetrics as its pod's usage. An item without a name, or without
/// containers, is skipped; a container's malformed figure leaves its pod
/// without that figure ([`pod_usage`]).
fn read_items(items: &[DynamicObject], complete: bool) -> UsageRead {
    let mut pods = BTreeMap::new();
    for item in items {
        let (Some(namespace), Some(name)) = (&item.metadata.namespace, &item.metadata.name) else {
            continue;
        };
        let Some(containers) = item.data.get("containers").and_then(|c| c.as_array()) else {
            continue;
        };
        let usage = pod_usage(containers.iter().map(|c| {
            let of = |resource: &str| c.get("usage")?.get(resource)?.as_str();
            (of("cpu"), of("memory"))
        }));
        if usage.cpu_cores.is_some() || usage.memory_bytes.is_some() {
            pods.insert((namespace.clone(), name.clone()), usage);
        }
    }
    let note = match (pods.len(), complete) {
        (0, _) => {
            "metrics.k8s.io is served but measured none of these pods: no CPU or memory".to_string()
        }
        (n, true) => format!("CPU and memory in use from metrics.k8s.io ({n} pods measured)"),
        (n, false) => format!(
            "CPU and memory in use from metrics.k8s.io ({n} pods measured: the first {} pages only)",
            MAX_PAGES
        ),
    };
    UsageRead {
        source: UsageSource {
            served: true,
            pods: pods.len(),
            note,
        },
        pods,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn an_api_that_is_not_there_reads_as_one_line_without_figures() {
        assert_eq!(
            unread(Unread::of(&status(404))).source,
            UsageSource {
                served: false,
                pods: 0,
                note: "metrics.k8s.io is not served: no CPU or memory".into(),
            }
        );
        assert_eq!(Unread::of(&status(503)), Unread::Unavailable);
        assert_eq!(Unread::of(&status(403)), Unread::Forbidden);
        assert!(matches!(Unread::of(&status(500)), Unread::Failed(_)));
    }

    #[test]
    fn pod_metrics_are_read_per_pod_and_malformed_ones_skipped() {
        let item = |name: &str, containers: serde_json::Value| -> DynamicObject {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "metrics.k8s.io/v1beta1", "kind": "PodMetrics",
                "metadata": {"name": name, "namespace": "shop"},
                "timestamp": "2026-12-05T10:00:00Z", "window": "15s",
                "containers": containers,
            }))
            .unwrap()
        };
        let items = [
            item(
                "web-1",
                serde_json::json!([
                    {"name": "a", "usage": {"cpu": "250m", "memory": "64Mi"}},
                    {"name": "b", "usage": {"cpu": "50000000n", "memory": "32768Ki"}},
                ]),
            ),
            item(
                "web-2",
                serde_json::json!([{"name": "a", "usage": {"cpu": "lots", "memory": "1Gi"}}]),
            ),
            item(
                "web-3",
                serde_json::json!([{"name": "a", "usage": {"cpu": 3, "memory": []}}]),
            ),
            item("web-4", serde_json::json!("not a list")),
        ];
        let read = read_items(&items, true);
        let of = |name: &str| read.pods.get(&("shop".to_string(), name.to_string()));
        let web1 = of("web-1").unwrap();
        assert!((web1.cpu_cores.unwrap() - 0.3).abs() < 1e-12);
        assert_eq!(web1.memory_bytes, Some(96.0 * 1048576.0));
        assert_eq!(
            of("web-2"),
            Some(&PodUsage {
                cpu_cores: None,
                memory_bytes: Some(1073741824.0)
            })
        );
        assert_eq!((of("web-3"), of("web-4")), (None, None));
        assert_eq!(
            read.source.note,
            "CPU and memory in use from metrics.k8s.io (2 pods measured)"
        );
        assert!(read.source.served);
        assert_eq!(
            read_items(&[], true).source.note,
            "metrics.k8s.io is served but measured none of these pods: no CPU or memory"
        );
    }
}

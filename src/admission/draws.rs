//! The counters behind spread rollout buckets: how many unnamed pods of each
//! workload this archway has placed (see `placement::spread_owner` and
//! `placement::spread_bucket`).
//!
//! In memory, per archway replica: two replicas each spread the pods they
//! see, so the share stays within a pod or two per replica. A restart, or an
//! owner evicted from the bounded map, starts that owner's sequence again,
//! which only makes the next few pods' spread as good as a fresh workload's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Workloads remembered at once. The key is at most a namespace, a kind and
/// a name (about 330 bytes), so this bounds the map near 4 MiB, whatever
/// pod authors create.
const MAX_OWNERS: u64 = 10_000;
/// An owner with no new pod for this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);

pub struct RolloutDraws {
    counters: moka::future::Cache<String, Arc<AtomicU64>>,
}

impl Default for RolloutDraws {
    fn default() -> Self {
        RolloutDraws {
            counters: moka::future::Cache::builder()
                .max_capacity(MAX_OWNERS)
                .time_to_idle(IDLE)
                .build(),
        }
    }
}

impl RolloutDraws {
    /// The index of `owner`'s next pod. A dry run reads it without taking
    /// it: no pod is created, so the next real one gets the same place.
    pub async fn next(&self, owner: &str, dry_run: bool) -> u64 {
        let counter = self
            .counters
            .get_with_by_ref(owner, async { Arc::new(AtomicU64::new(0)) })
            .await;
        if dry_run {
            counter.load(Ordering::Relaxed)
        } else {
            counter.fetch_add(1, Ordering::Relaxed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_owner_counts_its_own_pods_and_dry_runs_take_no_place() {
        let draws = RolloutDraws::default();
        assert_eq!(draws.next("ns/Deployment/a", false).await, 0);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 1);
        assert_eq!(draws.next("ns/Deployment/b", false).await, 0);
        assert_eq!(draws.next("ns/Deployment/a", true).await, 2);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 2);
    }
}

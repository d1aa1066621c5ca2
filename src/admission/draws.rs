//! The counters behind spread rollouts: how many unnamed pods of each
//! workload this archway has placed (see `placement::spread_owner` and
//! `placement::spread_steered`).
//!
//! In memory, per archway replica. A draw is a place on the owner's circle
//! of 100, going forward from the owner's phase (`2k`: the k-th place) or
//! backward from it (`2k+1`). Each replica takes a direction per owner at
//! random when it first sees the owner. One replica's places are one run,
//! so its share is exact: ⌊n·N/100⌋ or ⌈n·N/100⌉ of its first n pods. Two
//! replicas that took opposite directions for an owner use two runs that
//! meet at its phase, one run in all, so their share together is exact too,
//! however the API server splits the reviews between them; when they took
//! the same direction their runs overlap, and the share is within a pod of
//! exact per replica (two pods in all). A restart, or an owner evicted from
//! the bounded map, starts that owner's sequence again, which only makes
//! the next few pods' spread as good as a fresh workload's.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Workloads remembered at once. The key is at most a namespace, a kind and
/// a name (about 330 bytes), so this bounds the map near 4 MiB, whatever
/// pod authors create.
const MAX_OWNERS: u64 = 10_000;
/// An owner with no new pod for this long is forgotten.
const IDLE: Duration = Duration::from_secs(3600);

/// One owner's sequence in this replica.
struct Sequence {
    taken: AtomicU64,
    /// 1 to walk backward from the owner's phase, 0 forward.
    backward: u64,
}

pub struct RolloutDraws {
    counters: moka::future::Cache<String, Arc<Sequence>>,
    /// Seeded at random per process: the coin for each owner's direction.
    /// Replicas do not agree on it, and need not: opposite directions make
    /// a pair exact, the same direction is no worse than one replica each.
    coin: std::collections::hash_map::RandomState,
}

impl Default for RolloutDraws {
    fn default() -> Self {
        RolloutDraws {
            counters: moka::future::Cache::builder()
                .max_capacity(MAX_OWNERS)
                .time_to_idle(IDLE)
                .build(),
            coin: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl RolloutDraws {
    /// The draw of `owner`'s next pod (see `placement::spread_steered`). A
    /// dry run reads it without taking it: no pod is created, so the next
    /// real one gets the same place.
    pub async fn next(&self, owner: &str, dry_run: bool) -> u64 {
        let sequence = self
            .counters
            .get_with_by_ref(owner, async {
                Arc::new(Sequence {
                    taken: AtomicU64::new(0),
                    backward: self.coin.hash_one(owner) & 1,
                })
            })
            .await;
        let k = if dry_run {
            sequence.taken.load(Ordering::Relaxed)
        } else {
            sequence.taken.fetch_add(1, Ordering::Relaxed)
        };
        // 2k + 1 cannot overflow before the counter itself would.
        k.wrapping_mul(2) | sequence.backward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn each_owner_counts_its_own_pods_and_dry_runs_take_no_place() {
        let draws = RolloutDraws::default();
        let a = draws.next("ns/Deployment/a", false).await;
        let way = a % 2;
        assert_eq!(a, way);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 2 + way);
        assert!(draws.next("ns/Deployment/b", false).await < 2);
        assert_eq!(draws.next("ns/Deployment/a", true).await, 4 + way);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 4 + way);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 6 + way);
    }

    #[tokio::test]
    async fn owners_go_both_ways() {
        let draws = RolloutDraws::default();
        let mut ways = [0; 2];
        for i in 0..200 {
            ways[(draws.next(&format!("ns/Deployment/w{i}"), false).await % 2) as usize] += 1;
        }
        // 200 fair coins: each side well over 50.
        assert!(ways.iter().all(|w| *w > 50), "{ways:?}");
    }
}

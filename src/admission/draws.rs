//! The counters behind spread rollouts: how many unnamed pods of each
//! workload this archway has placed (see `placement::spread_owner` and
//! `placement::spread_steered`).
//!
//! In memory, per archway replica. A draw is a place on the owner's circle
//! of 100, going forward from the owner's phase (`2k`: the k-th place) or
//! backward from it (`2k+1`). Each replica takes a direction per owner when
//! it first sees the owner: at random, or by the Lease (`by_lease`: the
//! leader forward, the others backward). One replica's places are one run,
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
    way: Way,
}

/// How a replica picks the direction of an owner it has not seen.
enum Way {
    /// A coin seeded at random per process. Replicas do not agree on it,
    /// and need not: opposite directions make a pair exact, the same
    /// direction is no worse than each replica on its own.
    Coin(std::collections::hash_map::RandomState),
    /// Forward while this replica holds the Lease, backward while it does
    /// not: of two replicas, one leading, every owner goes both ways.
    Lease(tokio::sync::watch::Receiver<bool>),
}

impl Default for RolloutDraws {
    fn default() -> Self {
        RolloutDraws::with_way(Way::Coin(std::collections::hash_map::RandomState::new()))
    }
}

impl RolloutDraws {
    /// Directions by the Lease (`cluster::lease::Leadership::leading`)
    /// rather than a coin: two replicas are then exact together while one
    /// of them leads, and within a pod each (two in all) when neither did
    /// as either first saw the owner.
    pub fn by_lease(leading: tokio::sync::watch::Receiver<bool>) -> Self {
        RolloutDraws::with_way(Way::Lease(leading))
    }

    fn with_way(way: Way) -> Self {
        RolloutDraws {
            counters: moka::future::Cache::builder()
                .max_capacity(MAX_OWNERS)
                .time_to_idle(IDLE)
                .build(),
            way,
        }
    }

    fn backward(&self, owner: &str) -> u64 {
        match &self.way {
            Way::Coin(coin) => coin.hash_one(owner) & 1,
            Way::Lease(leading) => u64::from(!*leading.borrow()),
        }
    }

    /// The draw of `owner`'s next pod (see `placement::spread_steered`). A
    /// dry run reads it without taking it: no pod is created, so the next
    /// real one gets the same place.
    pub async fn next(&self, owner: &str, dry_run: bool) -> u64 {
        let sequence = self
            .counters
            .get_with_by_ref(owner, async {
                Arc::new(Sequence {
                    taken: AtomicU64::new(0),
                    backward: self.backward(owner),
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

    #[tokio::test]
    async fn by_lease_the_leader_goes_forward_and_the_others_backward() {
        let (tx, leading) = tokio::sync::watch::channel(false);
        let draws = RolloutDraws::by_lease(leading);
        assert_eq!(draws.next("ns/Deployment/a", false).await, 1);
        tx.send(true).unwrap();
        assert_eq!(draws.next("ns/Deployment/b", false).await, 0);
        // An owner keeps the way it was first drawn in.
        assert_eq!(draws.next("ns/Deployment/a", false).await, 3);
        tx.send(false).unwrap();
        assert_eq!(draws.next("ns/Deployment/b", false).await, 2);
    }
}

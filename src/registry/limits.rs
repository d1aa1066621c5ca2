//! How many registry lookups run at once: in total, and per registry host.
//! A flood of distinct images (400 pods of 64 tags) then queues here
//! instead of opening thousands of connections, and a slow host fills its
//! own queue, not everyone's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Hosts with a queue of their own at once; idle queues are forgotten
/// past it (pods name hosts, so their number is the attacker's to pick).
const MAX_TRACKED_HOSTS: usize = 1024;

pub struct LookupLimits {
    total: Arc<Semaphore>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while one endpoint is asked; released on drop.
pub struct LookupPermit {
    _host: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl LookupLimits {
    pub fn new(total: usize, per_host: usize) -> Self {
        LookupLimits {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits (first come, first served) for a place for `host`. The host's
    /// place is taken first: lookups queued behind a slow host then hold
    /// none of the places other hosts need.
    pub async fn acquire(&self, host: &str) -> LookupPermit {
        let host_queue = self.queue(host);
        // The semaphores are never closed, so acquiring cannot fail.
        let host_permit = host_queue
            .acquire_owned()
            .await
            .expect("host semaphore is never closed");
        let total = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("total semaphore is never closed");
        LookupPermit {
            _host: host_permit,
            _total: total,
        }
    }

    fn queue(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = hosts.get(&host.to_ascii_lowercase()) {
            return queue.clone();
        }
        if hosts.len() >= MAX_TRACKED_HOSTS {
            // Only this map holds an idle queue.
            hosts.retain(|_, queue| Arc::strong_count(queue) > 1);
        }
        let queue = Arc::new(Semaphore::new(self.per_host));
        hosts.insert(host.to_ascii_lowercase(), queue.clone());
        queue
    }

    /// Lookups that may run now without waiting.
    pub fn available(&self) -> usize {
        self.total.available_permits()
    }

    #[cfg(test)]
    fn tracked_hosts(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn bounds_per_host_and_in_total() {
        let limits = Arc::new(LookupLimits::new(3, 2));
        let a1 = limits.acquire("a.example").await;
        let _a2 = limits.acquire("A.example").await;
        // A third for the same host waits, though the total has room.
        let waiting = tokio::time::timeout(Duration::from_millis(50), limits.acquire("a.example"));
        assert!(
            waiting.await.is_err(),
            "a third lookup on one host must wait"
        );
        let _b1 = limits.acquire("b.example").await;
        assert_eq!(limits.available(), 0);
        let waiting = tokio::time::timeout(Duration::from_millis(50), limits.acquire("c.example"));
        assert!(waiting.await.is_err(), "past the total, lookups wait");
        drop(a1);
        tokio::time::timeout(Duration::from_secs(1), limits.acquire("c.example"))
            .await
            .expect("a freed place is given on");
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limits = LookupLimits::new(8, 1);
        for i in 0..(3 * MAX_TRACKED_HOSTS) {
            drop(limits.acquire(&format!("h{i}.evil.example")).await);
        }
        assert!(limits.tracked_hosts() <= MAX_TRACKED_HOSTS);
    }
}

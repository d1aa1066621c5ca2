//! Request bodies held at once: the memory a burst of large reviews takes
//! is bounded by what is admitted, not by how many arrive.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A body up to this size is small: a typical pod's review is a few KiB.
pub const SMALL_BODY: usize = 64 * 1024;
/// A body over this size is a large review: a pod of tens of thousands of
/// containers, whose parsed form is many times its bytes and whose review
/// keeps a core busy. Few run at once.
pub const LARGE_BODY: usize = 256 * 1024;

#[derive(Debug)]
pub struct BodyBudget {
    capacity: usize,
    /// Kept for small bodies: large ones may fill the budget only up to
    /// `capacity - reserved`, so a flood of large reviews cannot keep the
    /// ordinary ones out.
    reserved: usize,
    used: AtomicUsize,
    /// Places for large reviews: one core's worth fewer than the machine
    /// has, so small reviews always find a core.
    large: Arc<Semaphore>,
}

/// Bytes taken from the budget for one request; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<BodyBudget>,
    bytes: usize,
    large: Option<OwnedSemaphorePermit>,
}

impl BodyBudget {
    pub fn new(capacity: usize) -> Arc<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::with_large_places(capacity, cores.saturating_sub(1).max(1))
    }

    pub fn with_large_places(capacity: usize, large: usize) -> Arc<Self> {
        Arc::new(BodyBudget {
            capacity,
            reserved: capacity / 4,
            used: AtomicUsize::new(0),
            large: Arc::new(Semaphore::new(large.max(1))),
        })
    }

    /// An empty reservation, grown as the body arrives.
    pub fn reservation(self: &Arc<Self>) -> Reservation {
        Reservation {
            budget: self.clone(),
            bytes: 0,
            large: None,
        }
    }

    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Reservation {
    /// Takes `more` bytes, or nothing and `false` when the budget cannot
    /// hold them (with the share kept for small bodies, if this one is not).
    pub fn grow(&mut self, more: usize) -> bool {
        let total = self.bytes.saturating_add(more);
        if total > LARGE_BODY && self.large.is_none() {
            match self.budget.large.clone().try_acquire_owned() {
                Ok(place) => self.large = Some(place),
                Err(_) => return false,
            }
        }
        let ceiling = if total <= SMALL_BODY {
            self.budget.capacity
        } else {
            self.budget.capacity - self.budget.reserved
        };
        let taken = self
            .budget
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(more).filter(|after| *after <= ceiling)
            });
        if taken.is_ok() {
            self.bytes = total;
        }
        taken.is_ok()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1024 * 1024;

    #[test]
    fn large_bodies_fill_three_quarters_and_small_ones_the_rest() {
        let budget = BodyBudget::new(12 * MIB);
        let mut held = Vec::new();
        for _ in 0..200 {
            let mut body = budget.reservation();
            if body.grow(2_900_000) {
                held.push(body);
            }
        }
        assert_eq!(held.len(), 1, "one large review at a time");
        let wider = BodyBudget::with_large_places(12 * MIB, 8);
        let held: Vec<_> = (0..200)
            .filter_map(|_| {
                let mut body = wider.reservation();
                body.grow(2_900_000).then_some(body)
            })
            .collect();
        assert_eq!(held.len(), 3, "9 MiB of large bodies");
        let budget = wider;
        let mut small = budget.reservation();
        assert!(small.grow(4 * 1024), "a small review still fits");
        let mut growing = budget.reservation();
        assert!(growing.grow(SMALL_BODY));
        assert!(
            !growing.grow(2 * MIB),
            "a body that grows large is held to the large share"
        );
        drop(held);
        drop(small);
        drop(growing);
        assert_eq!(budget.in_use(), 0);
    }
}

//! How many registry lookups run at once: in total, and per registry host.
//! A flood of distinct images (400 pods of 64 tags) then queues here
//! instead of opening thousands of connections, and a slow host fills its
//! own queue, not everyone's.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Hosts with a queue of their own at once; idle queues are forgotten
/// past it (pods name hosts, so their number is the attacker's to pick).
const MAX_TRACKED_HOSTS: usize = 1024;

/// Whose turn a lookup waits for: the namespace of the review that asked
/// for it, then the review itself. Queues give places round robin over
/// namespaces and, within a namespace, over reviews: 400 pods of 64 images
/// spread over 100 namespaces put an unrelated review's lookup behind at
/// most one lookup per namespace, not behind all 25,600.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Turn {
    /// `None` for the commands, which take turns as one more namespace.
    pub namespace: Option<Arc<str>>,
    pub review: u64,
}

impl Turn {
    /// A turn of its own, for a caller that is not a review.
    pub fn anonymous() -> Turn {
        Turn {
            namespace: None,
            review: next_review_id(),
        }
    }
}

/// A number no other review has had in this process.
pub fn next_review_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

pub struct LookupLimits {
    total: Arc<FairQueue>,
    per_host: usize,
    hosts: Mutex<HashMap<String, Arc<FairQueue>>>,
}

/// Held while one endpoint is asked; released on drop.
pub struct LookupPermit {
    _host: Place,
    _total: Place,
}

impl LookupLimits {
    pub fn new(total: usize, per_host: usize) -> Self {
        LookupLimits {
            total: Arc::new(FairQueue::new(total.max(1))),
            per_host: per_host.max(1),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    /// Waits for a place for `host`, in `turn`. The host's place is taken
    /// first: lookups queued behind a slow host then hold none of the
    /// places other hosts need.
    pub async fn acquire(&self, host: &str, turn: &Turn) -> LookupPermit {
        let host_queue = self.queue(host);
        let host_place = host_queue.acquire(turn).await;
        let total = self.total.acquire(turn).await;
        LookupPermit {
            _host: host_place,
            _total: total,
        }
    }

    fn queue(&self, host: &str) -> Arc<FairQueue> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = hosts.get(&host.to_ascii_lowercase()) {
            return queue.clone();
        }
        if hosts.len() >= MAX_TRACKED_HOSTS {
            // Only this map holds an idle queue.
            hosts.retain(|_, queue| Arc::strong_count(queue) > 1);
        }
        let queue = Arc::new(FairQueue::new(self.per_host));
        hosts.insert(host.to_ascii_lowercase(), queue.clone());
        queue
    }

    /// Lookups that may run now without waiting.
    pub fn available(&self) -> usize {
        self.total.available()
    }

    #[cfg(test)]
    fn tracked_hosts(&self) -> usize {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A counting semaphore whose waiters are served round robin by turn
/// (namespace, then review) instead of first come, first served.
struct FairQueue {
    state: Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    free: usize,
    /// Namespaces with someone waiting, in the order they are served.
    namespaces: VecDeque<Option<Arc<str>>>,
    /// Per namespace: its reviews with someone waiting, in order, and
    /// each review's waiters, first come first served.
    queues: HashMap<Option<Arc<str>>, ReviewQueues>,
}

#[derive(Default)]
struct ReviewQueues {
    order: VecDeque<u64>,
    waiters: HashMap<u64, VecDeque<oneshot::Sender<()>>>,
}

impl ReviewQueues {
    fn pop(&mut self) -> Option<oneshot::Sender<()>> {
        let review_key = self.order.pop_front()?;
        let review = self.waiters.get_mut(&review_key)?;
        let sender = review.pop_front();
        if review.is_empty() {
            self.waiters.remove(&review_key);
        } else {
            self.order.push_back(review_key);
        }
        sender
    }
}

/// One place in a `FairQueue`, given back on drop.
struct Place {
    queue: Arc<FairQueue>,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.queue.release();
    }
}

impl FairQueue {
    fn new(places: usize) -> Self {
        FairQueue {
            state: Mutex::new(Waiting {
                free: places,
                ..Waiting::default()
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn available(&self) -> usize {
        self.lock().free
    }

    async fn acquire(self: &Arc<Self>, turn: &Turn) -> Place {
        let receiver = {
            let mut state = self.lock();
            if state.free > 0 && state.namespaces.is_empty() {
                state.free -= 1;
                return Place {
                    queue: self.clone(),
                };
            }
            let (sender, receiver) = oneshot::channel();
            state.push(turn, sender);
            receiver
        };
        // A place handed to a waiter that stopped waiting in between goes
        // back to the queue (`Pending::drop`), so none is lost.
        let mut pending = Pending {
            queue: self.clone(),
            turn: turn.clone(),
            receiver: Some(receiver),
        };
        let receiver = pending.receiver.as_mut().expect("set above");
        // A live waiter's sender is only ever used to send: it is dropped
        // unsent only once its receiver is gone (`forget_gone`), so this
        // ends with the place.
        let _ = receiver.await;
        pending.receiver = None;
        Place {
            queue: self.clone(),
        }
    }

    /// Gives a place back: to the next waiter in turn, if any.
    fn release(&self) {
        let mut state = self.lock();
        while let Some(sender) = state.pop() {
            if sender.send(()).is_ok() {
                return;
            }
        }
        state.free += 1;
    }
}

impl Waiting {
    fn push(&mut self, turn: &Turn, sender: oneshot::Sender<()>) {
        let namespace = self.queues.entry(turn.namespace.clone()).or_default();
        if namespace.order.is_empty() {
            self.namespaces.push_back(turn.namespace.clone());
        }
        let review = namespace.waiters.entry(turn.review).or_default();
        if review.is_empty() {
            namespace.order.push_back(turn.review);
        }
        review.push_back(sender);
    }

    /// The next waiter: the first of the next review of the next
    /// namespace; both go to the back of their line if they wait still.
    fn pop(&mut self) -> Option<oneshot::Sender<()>> {
        let namespace_key = self.namespaces.pop_front()?;
        let namespace = self.queues.get_mut(&namespace_key)?;
        let sender = namespace.pop();
        if namespace.order.is_empty() {
            self.queues.remove(&namespace_key);
        } else {
            self.namespaces.push_back(namespace_key);
        }
        sender
    }

    /// Drops the senders of `turn`'s waiters that stopped waiting, so a
    /// queue holds only live waiters whether or not places come back.
    fn forget_gone(&mut self, turn: &Turn) {
        let Some(namespace) = self.queues.get_mut(&turn.namespace) else {
            return;
        };
        if let Some(review) = namespace.waiters.get_mut(&turn.review) {
            review.retain(|sender| !sender.is_closed());
            if review.is_empty() {
                namespace.waiters.remove(&turn.review);
                namespace.order.retain(|r| *r != turn.review);
            }
        }
        if namespace.order.is_empty() {
            self.queues.remove(&turn.namespace);
            self.namespaces.retain(|n| *n != turn.namespace);
        }
    }
}

/// A waiter not yet given its place. Dropped before that (its lookup was
/// cancelled), it leaves the queue; dropped just after a place was sent to
/// it, it gives the place on.
struct Pending {
    queue: Arc<FairQueue>,
    turn: Turn,
    receiver: Option<oneshot::Receiver<()>>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut receiver) = self.receiver.take() else {
            return;
        };
        receiver.close();
        if receiver.try_recv().is_ok() {
            self.queue.release();
        } else {
            self.queue.lock().forget_gone(&self.turn);
        }
    }
}

#[cfg(test)]
impl FairQueue {
    /// Waiters in line (live or not yet forgotten).
    fn waiting(&self) -> usize {
        let state = self.lock();
        let queued = state.queues.values().flat_map(|q| q.waiters.values());
        queued.map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn turn(namespace: &str, review: u64) -> Turn {
        Turn {
            namespace: Some(namespace.into()),
            review,
        }
    }

    #[tokio::test]
    async fn bounds_per_host_and_in_total() {
        let limits = Arc::new(LookupLimits::new(3, 2));
        let t = Turn::anonymous();
        let a1 = limits.acquire("a.example", &t).await;
        let _a2 = limits.acquire("A.example", &t).await;
        // A third for the same host waits, though the total has room.
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), limits.acquire("a.example", &t));
        assert!(
            waiting.await.is_err(),
            "a third lookup on one host must wait"
        );
        let _b1 = limits.acquire("b.example", &t).await;
        assert_eq!(limits.available(), 0);
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), limits.acquire("c.example", &t));
        assert!(waiting.await.is_err(), "past the total, lookups wait");
        drop(a1);
        tokio::time::timeout(Duration::from_secs(1), limits.acquire("c.example", &t))
            .await
            .expect("a freed place is given on");
    }

    #[tokio::test]
    async fn idle_hosts_are_forgotten() {
        let limits = LookupLimits::new(8, 1);
        let t = Turn::anonymous();
        for i in 0..(3 * MAX_TRACKED_HOSTS) {
            drop(limits.acquire(&format!("h{i}.evil.example"), &t).await);
        }
        assert!(limits.tracked_hosts() <= MAX_TRACKED_HOSTS);
    }

    /// The order in which `waiters` (queued in this order behind one held
    /// place) are served once the place is given back.
    async fn served_order(waiters: &[Turn]) -> Vec<usize> {
        let queue = Arc::new(FairQueue::new(1));
        let held = queue.acquire(&Turn::anonymous()).await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for (i, turn) in waiters.iter().enumerate() {
            let (q, tx, turn) = (queue.clone(), tx.clone(), turn.clone());
            tokio::spawn(async move {
                let place = q.acquire(&turn).await;
                tx.send(i).unwrap();
                drop(place);
            });
            // Each waiter in line before the next one comes.
            while queue.waiting() < i + 1 {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        let mut order = Vec::new();
        for _ in waiters {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(queue.available(), 1, "every place is back");
        assert_eq!(queue.waiting(), 0);
        order
    }

    /// 100 lookups of a flood, then one of another namespace: served second,
    /// not 101st. Then within a namespace: a review of one image is not
    /// served behind every image of a review of many.
    #[tokio::test]
    async fn places_are_given_round_robin_by_namespace_then_review() {
        let mut waiters: Vec<Turn> = (0..100).map(|i| turn("flood", i % 4)).collect();
        waiters.push(turn("other", 9));
        let order = served_order(&waiters).await;
        let other = order.iter().position(|&i| i == 100).unwrap();
        assert!(other <= 1, "served at {other}: {order:?}");

        let mut waiters: Vec<Turn> = (0..50).map(|_| turn("shop", 1)).collect();
        waiters.push(turn("shop", 2));
        let order = served_order(&waiters).await;
        let small = order.iter().position(|&i| i == 50).unwrap();
        assert!(small <= 1, "served at {small}: {order:?}");
        // A review's own lookups keep their order.
        let flood: Vec<usize> = order.into_iter().filter(|&i| i != 50).collect();
        assert!(flood.windows(2).all(|w| w[0] < w[1]), "{flood:?}");
    }

    /// A waiter that stops waiting leaves the line, and a place sent to one
    /// that stopped is given on: none is lost, none kept by the gone.
    #[tokio::test]
    async fn waiters_that_stop_waiting_lose_no_place() {
        let queue = Arc::new(FairQueue::new(1));
        let held = queue.acquire(&Turn::anonymous()).await;
        for i in 0..1000 {
            let gone = turn("gone", i);
            let waiting = tokio::time::timeout(Duration::from_millis(0), queue.acquire(&gone));
            assert!(waiting.await.is_err());
        }
        assert_eq!(queue.waiting(), 0, "cancelled waiters are forgotten");
        drop(held);
        assert_eq!(queue.available(), 1);

        // A place handed over just as its waiter is dropped.
        let held = queue.acquire(&Turn::anonymous()).await;
        let late = turn("late", 1);
        let mut waiter = Box::pin(queue.acquire(&late));
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        drop(held); // sends the place to the waiter...
        drop(waiter); // ...which goes before taking it
        assert_eq!(queue.available(), 1, "the place came back");
        let next = turn("next", 2);
        tokio::time::timeout(Duration::from_secs(1), queue.acquire(&next))
            .await
            .expect("and is given on");
    }
}

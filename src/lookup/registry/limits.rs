//! How many registry lookups run at once: in total, and per registry host.
//! A flood of distinct images (400 pods of 64 tags) then queues here
//! instead of opening thousands of connections, and a slow host fills its
//! own queue, not everyone's. And how many bytes of registry answers are
//! held in memory at once (`BodyBudget`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, oneshot};

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

/// The bytes of registry answers (manifests, configs, tokens) held in
/// memory at once, charged as they arrive: a body holds what it has
/// received, never what it announces, so responses that drip a byte a
/// second hold next to nothing. One registry host, and the lookups of one
/// namespace, hold at most `share` of the `total`, so one slow host or one
/// namespace cannot take it all.
///
/// Charging as bytes arrive can deadlock: bodies each holding part of the
/// budget, each waiting for more. So a body gets more only when every body
/// holding bytes still has a way to finish: some order in which each, given
/// the rest it may still need (its announced length, or the limit), fits
/// within what is free, then gives its bytes back (the banker's algorithm,
/// over the total and each host's and namespace's share). Then some body
/// can always finish, nobody fails for lack of room, and the bytes held
/// never exceed the budget.
pub struct BodyBudget {
    total: usize,
    share: usize,
    ledger: Mutex<Ledger>,
    /// Woken whenever bytes are given back.
    given_back: Notify,
}

#[derive(Default)]
struct Ledger {
    next_id: u64,
    bodies: HashMap<u64, Held>,
}

struct Held {
    host: Box<str>,
    namespace: Option<Arc<str>>,
    bytes: usize,
    /// The most this body can come to: its announced length, or the limit.
    most: usize,
}

/// One body's charge on a `BodyBudget`, given back on drop.
pub struct BodyCharge {
    budget: Arc<BodyBudget>,
    id: u64,
}

/// No room came before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetFull;

impl BodyBudget {
    /// `share` is what one host, or one namespace, may hold; it must be at
    /// least the largest body, or such a body could never be read.
    pub fn new(total: usize, share: usize) -> Arc<BodyBudget> {
        Arc::new(BodyBudget {
            total,
            share: share.min(total),
            ledger: Mutex::default(),
            given_back: Notify::new(),
        })
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// A charge of nothing yet, for a body of at most `most` bytes read
    /// from `host` for a lookup of `namespace`.
    pub fn open(
        self: &Arc<Self>,
        host: &str,
        namespace: Option<Arc<str>>,
        most: usize,
    ) -> BodyCharge {
        let mut ledger = self.lock();
        let id = ledger.next_id;
        ledger.next_id += 1;
        ledger.bodies.insert(
            id,
            Held {
                host: host.to_ascii_lowercase().into(),
                namespace,
                bytes: 0,
                most,
            },
        );
        BodyCharge {
            budget: self.clone(),
            id,
        }
    }

    /// Bytes held now, by every body.
    pub fn held(&self) -> usize {
        self.lock().bodies.values().map(|h| h.bytes).sum()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets body `id` to `bytes` if that leaves a way out for everyone.
    fn try_set(&self, id: u64, bytes: usize) -> bool {
        let mut ledger = self.lock();
        let Some(held) = ledger.bodies.get_mut(&id) else {
            return false;
        };
        let before = held.bytes;
        held.bytes = bytes;
        if bytes <= before || ledger.every_body_can_finish(self.total, self.share) {
            return true;
        }
        if let Some(held) = ledger.bodies.get_mut(&id) {
            held.bytes = before;
        }
        false
    }
}

impl Ledger {
    /// The banker's safety check: bodies that can finish with what is
    /// free finish and give back what they hold, until all have or none
    /// can. Only bodies holding bytes count: one holding none can wait.
    fn every_body_can_finish(&self, total: usize, share: usize) -> bool {
        let holding: Vec<&Held> = self.bodies.values().filter(|h| h.bytes > 0).collect();
        let mut free_total = total as i64;
        let mut free_host: HashMap<&str, i64> = HashMap::new();
        let mut free_namespace: HashMap<Option<&str>, i64> = HashMap::new();
        for held in &holding {
            let bytes = held.bytes as i64;
            free_total -= bytes;
            *free_host.entry(&held.host).or_insert(share as i64) -= bytes;
            *free_namespace
                .entry(held.namespace.as_deref())
                .or_insert(share as i64) -= bytes;
        }
        let over = free_total < 0
            || free_host.values().any(|f| *f < 0)
            || free_namespace.values().any(|f| *f < 0);
        if over {
            return false;
        }
        let mut unfinished = holding;
        // Smallest need first: usually one pass finishes them all.
        unfinished.sort_by_key(|h| h.most.saturating_sub(h.bytes));
        loop {
            let before = unfinished.len();
            unfinished.retain(|held| {
                let need = held.most.saturating_sub(held.bytes) as i64;
                let host = free_host[&*held.host];
                let namespace = free_namespace[&held.namespace.as_deref()];
                if need > free_total || need > host || need > namespace {
                    return true;
                }
                let bytes = held.bytes as i64;
                free_total += bytes;
                *free_host.get_mut(&*held.host).expect("counted above") += bytes;
                *free_namespace
                    .get_mut(&held.namespace.as_deref())
                    .expect("counted above") += bytes;
                false
            });
            if unfinished.is_empty() {
                return true;
            }
            if unfinished.len() == before {
                return false;
            }
        }
    }
}

impl BodyCharge {
    /// Bytes this body holds.
    pub fn bytes(&self) -> usize {
        self.budget
            .lock()
            .bodies
            .get(&self.id)
            .map_or(0, |h| h.bytes)
    }

    /// Grows the charge to `bytes`, waiting until that leaves every body a
    /// way to finish, but not past `deadline`. Returns how long it waited.
    pub async fn grow_to(
        &mut self,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> Result<Duration, BudgetFull> {
        let started = tokio::time::Instant::now();
        loop {
            let given_back = self.budget.given_back.notified();
            tokio::pin!(given_back);
            // Registered before the check, so bytes given back between the
            // check and the wait still wake it.
            given_back.as_mut().enable();
            if self.budget.try_set(self.id, bytes) {
                return Ok(started.elapsed());
            }
            if tokio::time::timeout_at(deadline, given_back).await.is_err() {
                return Err(BudgetFull);
            }
        }
    }

    /// The body is whole, in `bytes` (at most what it was charged): it
    /// needs no more, which may open a way out for others.
    pub fn finish(&mut self, bytes: usize) {
        {
            let mut ledger = self.budget.lock();
            if let Some(held) = ledger.bodies.get_mut(&self.id) {
                held.bytes = held.bytes.min(bytes);
                held.most = held.bytes;
            }
        }
        self.budget.given_back.notify_waiters();
    }
}

impl Drop for BodyCharge {
    fn drop(&mut self) {
        self.budget.lock().bodies.remove(&self.id);
        self.budget.given_back.notify_waiters();
    }
}

/// A token bucket: `burst` tokens at most, refilled at `per_second`.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    tokens: f64,
    refilled: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn full(burst: f64, now: Instant) -> Bucket {
        Bucket {
            tokens: burst,
            refilled: now,
        }
    }

    /// Adds what `per_second` brought since the last refill.
    pub fn refill(&mut self, now: Instant, per_second: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(burst);
        self.refilled = now;
    }

    pub fn is_full(&self, burst: f64) -> bool {
        self.tokens >= burst
    }

    /// Takes one token if there is one (refill first).
    pub fn take(&mut self) -> bool {
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there, at `per_second` (refill first).
    pub fn until_one(&self, per_second: f64) -> Duration {
        if self.tokens >= 1.0 || per_second <= 0.0 {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((1.0 - self.tokens) / per_second)
    }
}

/// Manifest GETs each registry may be sent per hour
/// (`registry.manifestGetsPerHour`), keyed by the host requests go to, so
/// that `docker.io`, `index.docker.io` and `registry-1.docker.io` share
/// Docker Hub's one budget. A budget is a bucket of that many GETs,
/// refilled evenly over the hour. Hosts not configured have none.
#[derive(Debug, Default)]
pub struct GetBudget {
    hosts: HashMap<String, Mutex<HostBudget>>,
}

#[derive(Debug)]
struct HostBudget {
    /// As the configuration names it, for messages.
    name: String,
    per_hour: u32,
    bucket: Bucket,
}

/// A GET refused: the budget and when the next one may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spent {
    pub registry: String,
    pub per_hour: u32,
    pub retry_in: Duration,
}

impl GetBudget {
    /// `per_hour`: registry (as written in references, or a mirror's
    /// host) -> GETs per hour. `api_host` says where a registry's requests
    /// go.
    pub fn new(per_hour: &BTreeMap<String, u32>, api_host: impl Fn(&str) -> String) -> GetBudget {
        let now = Instant::now();
        let hosts = per_hour
            .iter()
            .map(|(name, &per_hour)| {
                let budget = HostBudget {
                    name: name.clone(),
                    per_hour,
                    bucket: Bucket::full(f64::from(per_hour), now),
                };
                (api_host(name), Mutex::new(budget))
            })
            .collect();
        GetBudget { hosts }
    }

    /// Takes one GET of `host`'s budget, if it has one.
    pub fn take(&self, host: &str, now: Instant) -> Result<(), Spent> {
        let Some(budget) = self.hosts.get(host) else {
            return Ok(());
        };
        let mut budget = budget.lock().unwrap_or_else(|e| e.into_inner());
        let burst = f64::from(budget.per_hour);
        let per_second = burst / 3600.0;
        budget.bucket.refill(now, per_second, burst);
        if budget.bucket.take() {
            return Ok(());
        }
        Err(Spent {
            registry: budget.name.clone(),
            per_hour: budget.per_hour,
            retry_in: budget.bucket.until_one(per_second),
        })
    }
}

/// What registries say is left of their pull limit: Docker Hub answers
/// every manifest request (a HEAD too, which it does not count) with
/// `ratelimit-remaining: 76;w=21600`, the pulls left to this address in
/// its window. Below `registry.pullReserve`, archway sends that registry no
/// manifest GET until the window has passed or a later answer says more
/// is left: the pulls left are the kubelets'. Bounded like the backoff map.
#[derive(Debug, Default)]
pub struct PullsLeft {
    hosts: Mutex<HashMap<String, Left>>,
}

#[derive(Debug, Clone, Copy)]
struct Left {
    remaining: u64,
    /// When the registry's window ends, as far as its answer said.
    until: Instant,
}

/// Hosts whose pulls left are kept at once.
const MAX_PULL_HOSTS: usize = 1024;
/// A window the header does not state, and the longest one believed
/// (Docker Hub's is 6 h).
const DEFAULT_PULL_WINDOW: Duration = Duration::from_secs(3600);
const MAX_PULL_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// A GET kept back for the kubelets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub remaining: u64,
    pub retry_in: Duration,
}

/// `76;w=21600` (or `76`): the pulls left and the window, if stated.
pub fn parse_ratelimit(value: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = value.split(';');
    let remaining = parts.next()?.trim().parse().ok()?;
    let window = parts
        .filter_map(|p| p.trim().strip_prefix("w="))
        .find_map(|w| w.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Some((remaining, window))
}

impl PullsLeft {
    /// Records a `ratelimit-remaining` answer of `host`; returns the pulls
    /// left it states.
    pub fn record(&self, host: &str, value: &str, now: Instant) -> Option<u64> {
        let (remaining, window) = parse_ratelimit(value)?;
        let until = now + window.unwrap_or(DEFAULT_PULL_WINDOW).min(MAX_PULL_WINDOW);
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.len() >= MAX_PULL_HOSTS && !hosts.contains_key(host) {
            hosts.retain(|_, left| left.until > now);
            if hosts.len() >= MAX_PULL_HOSTS {
                return Some(remaining);
            }
        }
        hosts.insert(host.to_string(), Left { remaining, until });
        Some(remaining)
    }

    /// Whether a manifest GET may go to `host` with `reserve` pulls kept.
    pub fn check(&self, host: &str, reserve: u64, now: Instant) -> Result<(), Reserved> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        match hosts.get(host) {
            Some(left) if left.until > now && left.remaining <= reserve => Err(Reserved {
                remaining: left.remaining,
                retry_in: left.until - now,
            }),
            _ => Ok(()),
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

    #[test]
    fn ratelimit_headers_are_read_as_docker_hub_writes_them() {
        assert_eq!(
            parse_ratelimit("76;w=21600"),
            Some((76, Some(Duration::from_secs(21600))))
        );
        assert_eq!(parse_ratelimit(" 5 "), Some((5, None)));
        assert_eq!(
            parse_ratelimit("100;w=21600;foo"),
            Some((100, Some(Duration::from_secs(21600))))
        );
        assert_eq!(parse_ratelimit("many"), None);
        assert_eq!(parse_ratelimit(""), None);
        assert_eq!(parse_ratelimit("-1;w=60"), None);
    }

    #[test]
    fn below_the_reserve_no_get_goes_until_the_window_ends_or_more_is_left() {
        let pulls = PullsLeft::default();
        let now = Instant::now();
        assert_eq!(pulls.check("hub", 20, now), Ok(()), "nothing known: go");
        pulls.record("hub", "21;w=600", now);
        assert_eq!(pulls.check("hub", 20, now), Ok(()));
        pulls.record("hub", "20;w=600", now);
        let kept = pulls.check("hub", 20, now).unwrap_err();
        assert_eq!(kept.remaining, 20);
        assert_eq!(kept.retry_in, Duration::from_secs(600));
        assert_eq!(pulls.check("other", 20, now), Ok(()), "per host");
        // The window passes.
        assert_eq!(
            pulls.check("hub", 20, now + Duration::from_secs(601)),
            Ok(())
        );
        // A later answer (a HEAD) says more is left.
        pulls.record("hub", "60;w=600", now);
        assert_eq!(pulls.check("hub", 20, now), Ok(()));
        // A hostile window is cut to 6 h.
        pulls.record("hub", "0;w=999999999", now);
        let kept = pulls.check("hub", 20, now).unwrap_err();
        assert_eq!(kept.retry_in, MAX_PULL_WINDOW);
        // A reserve of 0 keeps back only when nothing is left.
        pulls.record("hub", "1;w=60", now);
        assert_eq!(pulls.check("hub", 0, now), Ok(()));
    }

    #[test]
    fn a_get_budget_is_its_hourly_count_refilled_evenly_and_shared_by_spellings() {
        let per_hour = BTreeMap::from([("docker.io".to_string(), 3), ("quay.io".to_string(), 1)]);
        let budget = GetBudget::new(&per_hour, |name| {
            if name == "docker.io" {
                "registry-1.docker.io".into()
            } else {
                name.into()
            }
        });
        let now = Instant::now();
        for _ in 0..3 {
            assert!(budget.take("registry-1.docker.io", now).is_ok());
        }
        let spent = budget.take("registry-1.docker.io", now).unwrap_err();
        assert_eq!(
            (spent.registry.as_str(), spent.per_hour, spent.retry_in),
            ("docker.io", 3, Duration::from_secs(1200)),
            "named as configured; one GET back every 20 minutes"
        );
        assert!(budget.take("quay.io", now).is_ok(), "each its own");
        assert!(
            budget.take("ghcr.io", now).is_ok(),
            "not configured: no budget"
        );
        let later = now + Duration::from_secs(1201);
        assert!(budget.take("registry-1.docker.io", later).is_ok());
        assert!(budget.take("registry-1.docker.io", later).is_err());
    }

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

    const MIB: usize = 1024 * 1024;

    fn soon() -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_millis(50)
    }

    /// The attack: chunked answers (so each may still come to the
    /// 4 MiB limit) that drip a byte at a time hold what they received, and
    /// an answer for another namespace from another host gets its room at
    /// once, with 2 or 20 of them running, in one namespace or many.
    #[tokio::test]
    async fn drips_hold_what_arrived_and_leave_room_for_others() {
        for (drips, namespaces) in [(2, 1), (20, 1), (20, 20)] {
            let budget = BodyBudget::new(8 * MIB, 4 * MIB);
            let mut held = Vec::new();
            let mut waiting = 0;
            for i in 0..drips {
                let namespace = format!("attacker{}", i % namespaces);
                let mut drip =
                    budget.open(&format!("evil{i}.example"), Some(namespace.into()), 4 * MIB);
                match drip.grow_to(8 * 1024, soon()).await {
                    Ok(_) => held.push(drip),
                    Err(BudgetFull) => waiting += 1,
                }
            }
            assert!(budget.held() <= drips * 8 * 1024, "{}", budget.held());
            let mut victim = budget.open("registry.example", Some("victim".into()), 4 * MIB);
            for step in 1..=64 {
                victim
                    .grow_to(step * 64 * 1024, soon())
                    .await
                    .unwrap_or_else(|_| {
                        panic!(
                            "{drips} drips in {namespaces} namespaces: the victim waited at {step}"
                        )
                    });
            }
            eprintln!(
                "{drips} drips, {namespaces} namespaces: {} hold bytes, {waiting} wait",
                held.len()
            );
            // In one namespace, one chunked answer at a time may hold bytes:
            // each could still need the whole share.
            if namespaces == 1 {
                assert_eq!(held.len(), 1);
            }
        }
    }

    /// One host, or one namespace, holds at most its share, however many
    /// answers it has in flight; the rest stays for the others.
    #[tokio::test]
    async fn a_host_or_a_namespace_holds_at_most_its_share() {
        let budget = BodyBudget::new(8 * MIB, 4 * MIB);
        let mut hogs = Vec::new();
        for i in 0..8 {
            // Announced 1 MiB each: four fill the share of `slow.example`.
            let mut hog = budget.open("slow.example", Some(format!("ns{i}").into()), MIB);
            if hog.grow_to(MIB, soon()).await.is_ok() {
                hogs.push(hog);
            }
        }
        assert_eq!(hogs.len(), 4);
        assert_eq!(budget.held(), 4 * MIB);
        for i in 0..8 {
            let mut hog = budget.open(&format!("h{i}.example"), Some("greedy".into()), MIB);
            if hog.grow_to(MIB, soon()).await.is_ok() {
                hogs.push(hog);
            }
        }
        assert_eq!(hogs.len(), 8, "the namespace got its share, no more");
        assert_eq!(budget.held(), 8 * MIB);
        let mut other = budget.open("registry.example", Some("victim".into()), MIB);
        assert_eq!(
            other.grow_to(1024, soon()).await,
            Err(BudgetFull),
            "the whole budget is held"
        );
        drop(hogs.pop());
        other
            .grow_to(MIB, soon())
            .await
            .expect("room given back is given on");
    }

    /// Bodies that each took part of the budget and all want more never
    /// wait on each other for ever: a body gets more only while every body
    /// holding bytes can still finish. Twelve bodies of up to 4 MiB growing
    /// 256 KiB at a time, in three namespaces on two hosts, all finish, and
    /// the bytes held never pass the budget or a share.
    #[tokio::test]
    async fn bodies_growing_together_all_finish_within_the_budget() {
        let budget = BodyBudget::new(8 * MIB, 4 * MIB);
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let readers: Vec<_> = (0..12)
            .map(|i| {
                let (budget, peak) = (budget.clone(), peak.clone());
                tokio::spawn(async move {
                    let most = if i % 3 == 0 { 4 * MIB } else { 3 * MIB / 2 };
                    let mut body = budget.open(
                        &format!("h{}", i % 2),
                        Some(format!("ns{}", i % 3).into()),
                        most,
                    );
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    let mut size = 0;
                    while size < most {
                        size = (size + 256 * 1024).min(most);
                        body.grow_to(size, deadline)
                            .await
                            .expect("no body waits for ever");
                        peak.fetch_max(budget.held(), std::sync::atomic::Ordering::SeqCst);
                        tokio::task::yield_now().await;
                    }
                    body.finish(size);
                    tokio::task::yield_now().await;
                })
            })
            .collect();
        for reader in readers {
            reader.await.unwrap();
        }
        assert!(peak.load(std::sync::atomic::Ordering::SeqCst) <= 8 * MIB);
        assert_eq!(budget.held(), 0);
    }

    /// What a finished body no longer needs is no constraint on others.
    #[tokio::test]
    async fn a_finished_body_needs_no_more() {
        let budget = BodyBudget::new(8 * MIB, 4 * MIB);
        let mut first = budget.open("h", Some("ns".into()), 4 * MIB);
        first.grow_to(64 * 1024, soon()).await.unwrap();
        let mut second = budget.open("h", Some("ns".into()), 4 * MIB);
        assert_eq!(second.grow_to(64 * 1024, soon()).await, Err(BudgetFull));
        first.finish(10_000);
        assert_eq!(first.bytes(), 10_000);
        second
            .grow_to(64 * 1024, soon())
            .await
            .expect("the first needs no more");
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

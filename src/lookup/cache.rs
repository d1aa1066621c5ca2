//! The registry answer cache: one registry round trip per image however many
//! reviews ask at once, answers kept by how long they can be true.
//!
//! A tag's answer that has expired is revalidated with a HEAD of its
//! manifest (which Docker Hub does not count against its pull limit): the
//! same digest renews it, and only a digest whose platforms archway does not
//! know costs a GET. Meanwhile the expired answer is still served, for at
//! most `staleTtl` past `tagTtl`: a review never waits for a revalidation.
//! Why not wait: the answer nearly always stands, and a review that waits
//! for a slow registry at every `tagTtl` risks its time budget and escapes
//! placement; serving it a little longer is the same risk as a `tagTtl`
//! a little longer, bounded. A failed revalidation keeps serving it (a
//! registry down for minutes does not unplace pods) until `staleTtl` ends,
//! unless the registry said the tag is gone or refused the credential.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::lookup::image::ImageRef;
use crate::lookup::peer::PeerClient;
use crate::lookup::registry::client::{ByDigest, Known};
use crate::lookup::registry::facts::{Facts, FactsSettings, unix_millis};
use crate::lookup::registry::limits::{Bucket, Turn, next_review_id};
use crate::lookup::registry::{Credential, ImagePlatforms, InspectError, RegistryClient};

/// How long answers are kept, how many and how large, and how many
/// registry misses one namespace may cause. The `cache` section of the
/// configuration file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct CacheSettings {
    pub max_entries: u64,
    /// The most memory the entries may take, by an estimate of each one's
    /// size: a registry chooses how large its answers are.
    pub max_bytes: u64,
    /// A tag can be moved to another manifest at any time.
    #[serde(with = "humantime_serde")]
    pub tag_ttl: Duration,
    /// A digest names immutable content.
    #[serde(with = "humantime_serde")]
    pub digest_ttl: Duration,
    /// Long enough that a broken registry is not hammered by a burst of
    /// pod creates, short enough that a fixed one is seen soon.
    #[serde(with = "humantime_serde")]
    pub failure_ttl: Duration,
    /// Past `tagTtl`, how long a tag's answer is still served while it is
    /// revalidated in the background, or while its registry cannot be
    /// asked. 0: an expired tag is looked up with the review waiting.
    #[serde(with = "humantime_serde")]
    pub stale_ttl: Duration,
    /// Registry lookups (cache misses) one namespace may start per second,
    /// after a burst of `namespaceMissBurst`: one namespace cannot spend a
    /// registry's rate limit for everyone.
    pub namespace_misses_per_second: u32,
    pub namespace_miss_burst: u32,
    /// Facts shared by the replicas and kept across restarts.
    pub facts: FactsSettings,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
            tag_ttl: Duration::from_secs(600),
            digest_ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(30),
            stale_ttl: Duration::from_secs(600),
            namespace_misses_per_second: 5,
            // A pod's worth of images (admission::MAX_IMAGES_PER_POD).
            namespace_miss_burst: 64,
            facts: FactsSettings::default(),
        }
    }
}

/// A lookup's result, shared by every review that asked for it.
pub type Lookup = Result<Arc<ImagePlatforms>, InspectError>;

/// Whether a lookup was answered from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    Hit,
    Miss,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct CacheKey {
    image: String,
    /// Which credential the answer was obtained with: a private image's
    /// answer is never given to a pod that could not pull it.
    credential: std::borrow::Cow<'static, str>,
}

impl CacheKey {
    /// Made for every lookup, hits included: one allocation where it can.
    fn new(image: &ImageRef, credential: &Credential) -> Self {
        use std::fmt::Write;
        let mut text = String::with_capacity(128);
        let _ = write!(text, "{image}");
        CacheKey {
            image: text,
            credential: match credential {
                Credential::Anonymous => crate::lookup::registry::ANONYMOUS_FINGERPRINT.into(),
                _ => credential.fingerprint().into(),
            },
        }
    }
}

#[derive(Clone)]
struct Entry {
    lookup: Lookup,
    /// Served as it is until then.
    fresh_until: Instant,
    /// Kept until then; past `fresh_until`, served while revalidated.
    keep_until: Instant,
    /// No revalidation starts before then (one that failed waits
    /// `failureTtl`).
    retry_at: Instant,
}

/// moka's own bookkeeping per entry, roughly; counted in each weight.
const ENTRY_OVERHEAD: usize = 256;

impl Entry {
    /// An answer got at `now`: fresh for `ttl`, then served `stale` longer.
    fn new(lookup: Lookup, ttl: Duration, stale: Duration, now: Instant) -> Entry {
        let fresh_until = now + ttl;
        Entry {
            lookup,
            fresh_until,
            keep_until: fresh_until + stale,
            retry_at: fresh_until,
        }
    }

    fn fresh_at(&self, now: Instant) -> bool {
        now < self.fresh_until
    }

    /// A tag's answer past `tagTtl` but within `staleTtl`: served while it
    /// is revalidated. (Failures are never served stale: they expire.)
    fn stale_at(&self, now: Instant) -> bool {
        self.lookup.is_ok() && !self.fresh_at(now) && now < self.keep_until
    }

    /// An estimate of the bytes the entry holds.
    fn size(&self, key: &CacheKey) -> usize {
        let value = match &self.lookup {
            Ok(found) => {
                found.digest.len()
                    + found.endpoint.len()
                    + found
                        .platforms
                        .iter()
                        .map(|p| {
                            p.os.len()
                                + p.architecture.len()
                                + p.variant.as_ref().map_or(0, String::len)
                                + 96
                        })
                        .sum::<usize>()
            }
            Err(error) => error.to_string().len(),
        };
        key.image.len() + key.credential.len() + value + ENTRY_OVERHEAD
    }
}

struct EntryExpiry;

impl moka::Expiry<CacheKey, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, now: Instant) -> Option<Duration> {
        Some(entry.keep_until.saturating_duration_since(now))
    }

    /// A revalidated answer is put over the old one: it lives by its own
    /// times, not by what was left of the old one's.
    fn expire_after_update(
        &self,
        _: &CacheKey,
        entry: &Entry,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.keep_until.saturating_duration_since(now))
    }
}

/// Registry inspection behind the cache. Cheap to clone.
#[derive(Clone)]
pub struct Inspector {
    client: RegistryClient,
    cache: moka::future::Cache<CacheKey, Entry>,
    settings: CacheSettings,
    references: Arc<std::sync::RwLock<std::collections::HashMap<Box<str>, Arc<ImageRef>>>>,
    budgets: Arc<Mutex<NamespaceBudgets>>,
    /// What holds whoever asks (digest -> platforms, tags confirmed),
    /// shared by the replicas through `registry::facts::configmap`.
    facts: Arc<Facts>,
    /// Keys whose lookup (or revalidation) is under way: a review that joins one asks the
    /// registry nothing, so it is not charged to its namespace. Without
    /// this, a burst of pods of one new image spends the namespace's whole
    /// budget on a single registry request, and the rest are throttled.
    /// Holds only lookups running now.
    in_flight: Arc<Mutex<std::collections::HashSet<CacheKey>>>,
    /// The leader, asked before the registry for a tag this replica knows
    /// nothing of, or a digest its HEAD named that it does not know
    /// (`lookup::peer`); `None` outside a cluster.
    peer: Option<Arc<PeerClient>>,
}

/// Removes its key from `Inspector::in_flight` when the lookup that put it
/// there ends, however it ends.
struct InFlight {
    set: Arc<Mutex<std::collections::HashSet<CacheKey>>>,
    key: CacheKey,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

/// Who asks for lookups: one review of a pod in a namespace. Its lookups
/// that go to a registry run a few at a time, so a pod of 64 images takes
/// its turn in the registry client's queues like a pod of one.
#[derive(Clone)]
pub struct Requester {
    /// `None` for the commands (`inspect`, `review`, `audit`): no budget.
    namespace: Option<Arc<str>>,
    slots: Arc<Semaphore>,
    /// Its place in the registry client's queues, which serve namespaces
    /// and reviews in turn.
    turn: Turn,
    /// Whether its lookups may ask the leader: not when it is another
    /// replica's question (a change of leader could make two replicas ask
    /// each other).
    ask_peer: bool,
}

/// Registry lookups of one review in flight at once.
pub const LOOKUPS_PER_REVIEW: usize = 4;

impl Requester {
    fn new(namespace: Option<&str>) -> Self {
        let namespace: Option<Arc<str>> = namespace.map(Arc::from);
        Requester {
            turn: Turn {
                namespace: namespace.clone(),
                review: next_review_id(),
            },
            namespace,
            slots: Arc::new(Semaphore::new(LOOKUPS_PER_REVIEW)),
            ask_peer: true,
        }
    }
}

/// Namespaces' token buckets of registry misses.
struct NamespaceBudgets {
    buckets: HashMap<Arc<str>, Bucket>,
    per_second: f64,
    burst: f64,
}

/// Namespaces tracked at once; past it, a full bucket is forgotten (it is
/// the same as none) and, if none is full, newcomers share one.
const MAX_BUCKETS: usize = 4096;
const SHARED_BUCKET: &str = "\u{0}shared";

impl NamespaceBudgets {
    fn new(settings: &CacheSettings) -> Self {
        NamespaceBudgets {
            buckets: HashMap::new(),
            per_second: f64::from(settings.namespace_misses_per_second.max(1)),
            burst: f64::from(settings.namespace_miss_burst.max(1)),
        }
    }

    /// Takes one miss from `namespace`'s budget, if there is one left.
    fn take(&mut self, namespace: &Arc<str>, now: Instant) -> bool {
        let (per_second, burst) = (self.per_second, self.burst);
        if !self.buckets.contains_key(namespace) && self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, bucket| {
                bucket.refill(now, per_second, burst);
                !bucket.is_full(burst)
            });
        }
        let key = if self.buckets.contains_key(namespace) || self.buckets.len() < MAX_BUCKETS {
            namespace.clone()
        } else {
            Arc::from(SHARED_BUCKET)
        };
        let bucket = self
            .buckets
            .entry(key)
            .or_insert_with(|| Bucket::full(burst, now));
        bucket.refill(now, per_second, burst);
        bucket.take()
    }
}

/// Image references parsed lately; the memo is cleared when it holds this many.
const MAX_REFERENCES: usize = 4096;

impl Inspector {
    /// An inspector with facts of its own (the commands; tests).
    pub fn new(client: RegistryClient, settings: CacheSettings) -> Self {
        let facts = Arc::new(Facts::new(settings.facts.max_bytes));
        Inspector::with_facts(client, settings, facts)
    }

    /// Where lookups are counted: its registry client's registry, so a
    /// lookup and the requests it made are in one place.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.client.metrics()
    }

    /// An inspector that learns into, and answers from, `facts`: the
    /// store `registry::facts::configmap::run` shares between replicas
    /// (and that outlives an inspector rebuilt by a configuration reload).
    pub fn with_facts(client: RegistryClient, settings: CacheSettings, facts: Arc<Facts>) -> Self {
        // Weights are bytes, and no entry weighs less than its share of
        // `max_entries`: both bounds hold with one moka capacity.
        let floor = (settings.max_bytes / settings.max_entries.max(1)).max(1);
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_bytes)
            .weigher(move |key: &CacheKey, entry: &Entry| {
                let weight = (entry.size(key) as u64).max(floor);
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .expire_after(EntryExpiry)
            .build();
        Inspector {
            client,
            cache,
            budgets: Arc::new(Mutex::new(NamespaceBudgets::new(&settings))),
            facts,
            settings,
            references: Arc::default(),
            in_flight: Arc::default(),
            peer: None,
        }
    }

    /// This inspector, asking `peer` (the leader) before the registry.
    pub fn with_peer(mut self, peer: Option<Arc<PeerClient>>) -> Self {
        self.peer = peer;
        self
    }

    /// The leader this inspector asks, kept by a rebuilt inspector.
    pub fn peer(&self) -> Option<&Arc<PeerClient>> {
        self.peer.as_ref()
    }

    /// The leader, when another replica leads and `requester` may ask it.
    fn leader_to_ask(&self, requester: &Requester) -> Option<&PeerClient> {
        (self.peer.as_deref()).filter(|peer| requester.ask_peer && peer.available())
    }

    /// Whether a tag's lookup with `credential` goes by its digest: with
    /// replicas (a peer client), for what the facts may hold (archway's
    /// own access only), so that each new digest costs one GET among them.
    fn by_digest_for(&self, image: &ImageRef, credential: &Credential) -> bool {
        self.peer.is_some() && credential.is_anonymous() && image.digest().is_none()
    }

    /// The platforms of `image` at `digest`: the leader's answer when
    /// another replica leads (and `requester` may ask it), else this
    /// inspector's own lookup of the digest, which every replica's question
    /// joins. `None`: the leader could not answer; the tag's GET follows.
    ///
    /// A boxed future of a named type, not an `async fn`: it is part of
    /// the lookup it may start (`inspect_as` -> `look_up` -> here), and a
    /// cycle of opaque futures has no type the compiler can check.
    fn by_digest<'a>(
        &'a self,
        image: &'a ImageRef,
        digest: String,
        requester: &'a Requester,
    ) -> futures::future::BoxFuture<'a, Option<Result<ImagePlatforms, InspectError>>> {
        use futures::FutureExt;
        async move {
            if let Some(peer) = self.leader_to_ask(requester) {
                let answered = peer.platforms(image, Some(&digest)).await?;
                return Some(Ok(answered.found));
            }
            let pinned: ImageRef = crate::lookup::registry::facts::digest_key(image, &digest)
                .parse()
                .ok()?;
            let requester = Requester {
                ask_peer: false,
                ..requester.clone()
            };
            let (lookup, _) = self
                .inspect_as(&pinned, &Credential::Anonymous, &requester)
                .await;
            Some(lookup.map(|found| (*found).clone()))
        }
        .boxed()
    }

    /// The requester for one review of a pod in `namespace`.
    pub fn requester(&self, namespace: &str) -> Requester {
        Requester::new(Some(namespace))
    }

    /// `image` parsed, remembered: pods name the same images over and
    /// over, and each parse allocates the normalised parts.
    pub fn parse_reference(
        &self,
        image: &str,
    ) -> Result<Arc<ImageRef>, crate::lookup::image::ImageRefError> {
        if let Some(found) = self
            .references
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(image)
        {
            return Ok(found.clone());
        }
        let parsed = Arc::new(image.parse::<ImageRef>()?);
        let mut memo = self.references.write().unwrap_or_else(|e| e.into_inner());
        if memo.len() >= MAX_REFERENCES {
            memo.clear();
        }
        memo.insert(image.into(), parsed.clone());
        Ok(parsed)
    }

    /// The platforms of `image` as seen with `credential`, from the cache or
    /// from one registry round trip shared by all concurrent callers. For
    /// the commands: no namespace budget.
    pub async fn inspect(
        &self,
        image: &ImageRef,
        credential: &Credential,
    ) -> (Lookup, CacheOutcome) {
        self.inspect_as(image, credential, &Requester::new(None))
            .await
    }

    async fn inspect_as(
        &self,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
    ) -> (Lookup, CacheOutcome) {
        let key = CacheKey::new(image, credential);
        if let Some(lookup) = self.cached(&key, image, credential, requester).await {
            return (lookup, CacheOutcome::Hit);
        }
        // moka runs one init future per key and hands its value to every
        // caller waiting on the same key: the single flight.
        let entry = self
            .cache
            .entry(key.clone())
            .or_insert_with(self.look_up(image, credential, requester))
            .await;
        let outcome = if entry.is_fresh() {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        self.metrics().cache_lookup(outcome == CacheOutcome::Hit);
        let entry = entry.into_value();
        if entry.stale_at(Instant::now()) {
            self.revalidate_in_background(&key, &entry, image, credential, requester);
        }
        (entry.lookup, outcome)
    }

    /// An answer that needs no registry request (a hit): the cache's (an
    /// expired one starts its revalidation), else the shared facts'.
    async fn cached(
        &self,
        key: &CacheKey,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
    ) -> Option<Lookup> {
        let now = Instant::now();
        if let Some(entry) = self.cache.get(key).await {
            if entry.stale_at(now) {
                self.revalidate_in_background(key, &entry, image, credential, requester);
            }
            self.metrics().cache_lookup(true);
            return Some(entry.lookup);
        }
        let entry = self.facts_answer(image, credential, now)?;
        self.cache.insert(key.clone(), entry.clone()).await;
        self.metrics().cache_lookup(true);
        Some(entry.lookup)
    }

    /// What the facts answer for a lookup with archway's own access: a
    /// digest's platforms, or a tag a registry confirmed within `tagTtl`
    /// (for as long as is left of it).
    fn facts_answer(
        &self,
        image: &ImageRef,
        credential: &Credential,
        now: Instant,
    ) -> Option<Entry> {
        if !credential.is_anonymous() {
            return None;
        }
        if let Some(digest) = image.digest() {
            let found = self.facts.platforms(image, digest)?;
            return Some(Entry::new(
                Ok(found),
                self.settings.digest_ttl,
                Duration::ZERO,
                now,
            ));
        }
        let (found, left) = self
            .facts
            .fresh_tag(image, unix_millis(), self.settings.tag_ttl)?;
        Some(Entry::new(Ok(found), left, self.settings.stale_ttl, now))
    }

    /// A lookup of an image not in the cache. When the facts know a digest
    /// of its repository (a digest reference's own, or any for a tag), a
    /// HEAD may spare the GET. With replicas, a tag nothing is known of
    /// is asked of the leader first.
    async fn look_up(
        &self,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
    ) -> Entry {
        let known = |digest: &str| self.facts.platforms(image, digest);
        let by_digest = self.by_digest_for(image, credential);
        let worth_a_head = match image.digest() {
            Some(digest) => self.facts.platforms(image, digest).is_some(),
            None => self.facts.knows_repository(image),
        };
        // A tag nothing is known of: the leader is asked for it by name
        // (it answers from what it holds, or joins its own lookup), rather
        // than a HEAD first, which would put a round trip before every cold
        // lookup. Kept no longer than it is fresh at the leader.
        if by_digest
            && !worth_a_head
            && let Some(peer) = self.leader_to_ask(requester)
            && let Some(answered) = peer.platforms(image, None).await
        {
            let ttl = answered.fresh_for.min(self.settings.tag_ttl);
            return Entry::new(
                Ok(Arc::new(answered.found)),
                ttl,
                self.settings.stale_ttl,
                Instant::now(),
            );
        }
        let known: Known<'_> = &known;
        let lookup = self
            .ask_registry(image, credential, requester, worth_a_head.then_some(known))
            .await;
        self.answered(image, credential, lookup)
    }

    /// The entry for a registry's answer, which the facts learn when it
    /// was got with archway's own access.
    fn answered(&self, image: &ImageRef, credential: &Credential, lookup: Lookup) -> Entry {
        if let Ok(found) = &lookup
            && credential.is_anonymous()
        {
            self.facts.record(image, found, unix_millis());
        }
        let (ttl, stale) = self.ttl_for(image, &lookup);
        Entry::new(lookup, ttl, stale, Instant::now())
    }

    /// The registry's answer for `image`, in `requester`'s turn: with
    /// `known`, after a HEAD whose digest it may know; with replicas, a
    /// digest the HEAD named and `known` does not hold is asked of the
    /// leader (or looked up by digest here) before the tag's GET.
    async fn ask_registry(
        &self,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
        known: Option<Known<'_>>,
    ) -> Lookup {
        let ask = |digest: String| self.by_digest(image, digest, requester);
        let ask: ByDigest<'_> = &ask;
        self.client
            .inspect_in_turn(
                image,
                credential,
                &requester.turn,
                known,
                self.by_digest_for(image, credential).then_some(ask),
            )
            .await
            .map(Arc::new)
    }

    /// Starts revalidating an expired tag's answer, unless one runs
    /// already, a failed one waits for `failureTtl`, or the requester's
    /// namespace has no registry lookup left (the answer is served
    /// meanwhile; a later review starts it).
    fn revalidate_in_background(
        &self,
        key: &CacheKey,
        entry: &Entry,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
    ) {
        let now = Instant::now();
        if now < entry.retry_at {
            return;
        }
        let first = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        if !first {
            return;
        }
        let in_flight = InFlight {
            set: self.in_flight.clone(),
            key: key.clone(),
        };
        if let Some(namespace) = &requester.namespace {
            let granted = self
                .budgets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(namespace, now);
            if !granted {
                return;
            }
        }
        let (this, key, stale) = (self.clone(), key.clone(), entry.clone());
        let (image, credential) = (image.clone(), credential.clone());
        let requester = requester.clone();
        tokio::spawn(async move {
            // A review's lookups go a few at a time, revalidations too.
            let _slot = requester.slots.clone().acquire_owned().await;
            let fresh = Box::pin(this.revalidate(&image, &credential, &requester, stale));
            let fresh = fresh.await;
            this.cache.insert(key, fresh).await;
            drop(in_flight);
        });
    }

    /// A new entry for `stale`'s image: confirmed by another replica
    /// lately (the facts), or by a HEAD naming a digest whose platforms are
    /// known, else the registry's full answer. A failure that may pass
    /// keeps `stale` served, asked again after `failureTtl`.
    async fn revalidate(
        &self,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
        stale: Entry,
    ) -> Entry {
        if let Some(entry) = self.facts_answer(image, credential, Instant::now()) {
            return entry;
        }
        let previous = stale.lookup.clone().ok();
        let known = |digest: &str| {
            previous
                .clone()
                .filter(|previous| previous.digest == digest)
                .or_else(|| self.facts.platforms(image, digest))
        };
        let known: Known<'_> = &known;
        let lookup = self
            .ask_registry(image, credential, requester, Some(known))
            .await;
        match lookup {
            Err(error) if error.is_transient() => {
                tracing::debug!(image = %image, %error, "revalidation failed: the last answer is served meanwhile");
                let wait = self.failure_ttl(&error);
                Entry {
                    retry_at: Instant::now() + wait,
                    ..stale
                }
            }
            lookup => self.answered(image, credential, lookup),
        }
    }

    /// Like `inspect`, but the lookup runs on its own task: when the caller
    /// stops waiting (the review's time budget ran out), the lookup still
    /// finishes and fills the cache for the next review.
    pub async fn inspect_detached(
        &self,
        image: &ImageRef,
        credential: &Credential,
    ) -> (Lookup, CacheOutcome) {
        self.inspect_for(image, credential, &Requester::new(None))
            .await
    }

    /// `inspect_detached` for a review: a miss is charged to the
    /// requester's namespace, and refused when its budget is spent.
    pub async fn inspect_for(
        &self,
        image: &ImageRef,
        credential: &Credential,
        requester: &Requester,
    ) -> (Lookup, CacheOutcome) {
        // The common case, a cached answer, needs no task.
        let key = CacheKey::new(image, credential);
        if let Some(lookup) = self.cached(&key, image, credential, requester).await {
            return (lookup, CacheOutcome::Hit);
        }
        let first = self
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone());
        let in_flight = first.then(|| InFlight {
            set: self.in_flight.clone(),
            key,
        });
        if let Some(namespace) = requester.namespace.as_ref().filter(|_| first) {
            let granted = self
                .budgets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(namespace, Instant::now());
            if !granted {
                self.metrics().cache_lookup(false);
                return (
                    Err(InspectError::Throttled {
                        namespace: crate::decision::text::truncate_for_message(namespace),
                    }),
                    CacheOutcome::Miss,
                );
            }
        }
        let this = self.clone();
        let image = image.clone();
        let credential = credential.clone();
        let requester = requester.clone();
        match tokio::spawn(async move {
            // The lookup that asks the registry waits for one of its
            // review's slots first, while its task is still small: the
            // lookup's own future (about 7 KB, moka's entry and the
            // registry client's) is only made, boxed, once it may run. A
            // flood of pods of 64 images then holds thousands of waiting
            // tasks of a few hundred bytes, not of 7 KB. One that joins a
            // lookup already under way asks nothing, and waits for no slot.
            let _slot = match &in_flight {
                Some(_) => Some(requester.slots.clone().acquire_owned().await),
                None => None,
            };
            let result = Box::pin(this.inspect_as(&image, &credential, &requester)).await;
            drop(in_flight);
            result
        })
        .await
        {
            Ok(result) => result,
            // Only a panic inside the lookup gets here; report it as a
            // failure of this image rather than of the review.
            Err(error) => (
                Err(InspectError::Internal(error.to_string())),
                CacheOutcome::Miss,
            ),
        }
    }

    /// Another replica's question (`lookup::peer::answer`): an image's
    /// platforms with archway's own access, from the cache, the facts or
    /// one registry lookup that every asker at the moment joins; and how
    /// much longer the answer is fresh here. Never asks a peer in turn, nor
    /// charges a namespace: the asking replica charged its review's.
    pub async fn inspect_for_peer(&self, image: &ImageRef) -> (Lookup, Duration) {
        let requester = Requester {
            ask_peer: false,
            ..Requester::new(None)
        };
        let credential = Credential::Anonymous;
        let (lookup, _) = self.inspect_for(image, &credential, &requester).await;
        let fresh_for = match image.digest() {
            Some(_) => self.settings.digest_ttl,
            None => (self.cache.get(&CacheKey::new(image, &credential)).await)
                .map_or(Duration::ZERO, |entry| {
                    entry.fresh_until.saturating_duration_since(Instant::now())
                }),
        };
        (lookup, fresh_for)
    }

    /// How long an answer is fresh, and then served while revalidated.
    fn ttl_for(&self, image: &ImageRef, lookup: &Lookup) -> (Duration, Duration) {
        match lookup {
            Ok(_) if image.is_pinned() => (self.settings.digest_ttl, Duration::ZERO),
            Ok(_) => (self.settings.tag_ttl, self.settings.stale_ttl),
            // Out of file descriptors, or archway's own GET budget spent:
            // this process's limits, not the registry's answer. Shared with
            // the callers waiting now, kept by nobody.
            Err(error) if !error.is_from_registry() => (Duration::ZERO, Duration::ZERO),
            Err(error) => (self.failure_ttl(error), Duration::ZERO),
        }
    }

    /// How long a failure stands before the registry is asked again.
    fn failure_ttl(&self, error: &InspectError) -> Duration {
        error.retry_after().map_or(self.settings.failure_ttl, |d| {
            d.max(self.settings.failure_ttl)
        })
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The estimated bytes the entries hold (approximate, as moka counts).
    pub fn weighted_size(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Lets the cache finish its pending evictions, so that the counts
    /// above are current (moka does this work during later calls).
    pub async fn run_pending_tasks(&self) {
        self.cache.run_pending_tasks().await;
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// The facts this inspector learns into and answers from.
    pub fn facts(&self) -> &Arc<Facts> {
        &self.facts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_namespace_cannot_spend_everyone_s_misses() {
        let settings = CacheSettings {
            namespace_misses_per_second: 2,
            namespace_miss_burst: 4,
            ..CacheSettings::default()
        };
        let mut budgets = NamespaceBudgets::new(&settings);
        let (a, b): (Arc<str>, Arc<str>) = ("team-a".into(), "team-b".into());
        let start = Instant::now();
        let granted = (0..100).filter(|_| budgets.take(&a, start)).count();
        assert_eq!(granted, 4, "the burst, then nothing");
        assert!(budgets.take(&b, start), "another namespace has its own");
        assert!(!budgets.take(&a, start + Duration::from_millis(100)));
        assert!(
            budgets.take(&a, start + Duration::from_millis(600)),
            "refilled at 2/s"
        );
    }

    #[test]
    fn namespaces_tracked_stay_bounded() {
        let mut budgets = NamespaceBudgets::new(&CacheSettings::default());
        let now = Instant::now();
        for i in 0..(3 * MAX_BUCKETS) {
            budgets.take(&Arc::from(format!("ns-{i}")), now);
        }
        assert!(budgets.buckets.len() <= MAX_BUCKETS + 1);
    }

    #[test]
    fn an_entry_weighs_what_it_holds() {
        let key = CacheKey {
            image: "registry.example/app:v1".into(),
            credential: "anonymous".into(),
        };
        let now = Instant::now();
        let small = Entry::new(
            Err(InspectError::Timeout { host: "r".into() }),
            Duration::ZERO,
            Duration::ZERO,
            now,
        );
        let platforms = (0..256)
            .map(|i| crate::decision::platform::Platform::linux(&format!("arch{i}")))
            .collect();
        let large = Entry::new(
            Ok(Arc::new(ImagePlatforms {
                digest: "sha256:0".into(),
                platforms: std::sync::Arc::new(platforms),
                shape: crate::lookup::registry::ManifestShape::Index,
                endpoint: "registry.example".into(),
            })),
            Duration::ZERO,
            Duration::ZERO,
            now,
        );
        assert!(small.size(&key) < 512);
        assert!(large.size(&key) > 256 * 96, "{}", large.size(&key));
    }

    #[test]
    fn only_the_registry_s_failures_are_kept() {
        let local = InspectError::Local {
            host: "r".into(),
            reason: "Too many open files (os error 24)".into(),
        };
        assert!(!local.is_from_registry());
        assert!(
            !InspectError::Throttled {
                namespace: "a".into()
            }
            .is_from_registry()
        );
        assert!(InspectError::Timeout { host: "r".into() }.is_from_registry());
    }
}

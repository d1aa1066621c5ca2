//! The registry answer cache: one registry round trip per image however many
//! reviews ask at once, answers kept by how long they can be true.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::lookup::image::ImageRef;
use crate::lookup::registry::limits::{Turn, next_review_id};
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
    /// Registry lookups (cache misses) one namespace may start per second,
    /// after a burst of `namespaceMissBurst`: one namespace cannot spend a
    /// registry's rate limit for everyone.
    pub namespace_misses_per_second: u32,
    pub namespace_miss_burst: u32,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
            tag_ttl: Duration::from_secs(600),
            digest_ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(30),
            namespace_misses_per_second: 5,
            // A pod's worth of images (admission::MAX_IMAGES_PER_POD).
            namespace_miss_burst: 64,
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
    ttl: Duration,
}

/// moka's own bookkeeping per entry, roughly; counted in each weight.
const ENTRY_OVERHEAD: usize = 256;

impl Entry {
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
    fn expire_after_create(&self, _: &CacheKey, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
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
    /// Keys whose lookup is under way: a review that joins one asks the
    /// registry nothing, so it is not charged to its namespace. Without
    /// this, a burst of pods of one new image spends the namespace's whole
    /// budget on a single registry request, and the rest are throttled.
    /// Holds only lookups running now.
    in_flight: Arc<Mutex<std::collections::HashSet<CacheKey>>>,
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
        }
    }
}

/// Namespaces' token buckets of registry misses.
struct NamespaceBudgets {
    buckets: HashMap<Arc<str>, Bucket>,
    per_second: f64,
    burst: f64,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
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
        let refill = |bucket: &mut Bucket| {
            let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
            bucket.refilled = now;
        };
        if !self.buckets.contains_key(namespace) && self.buckets.len() >= MAX_BUCKETS {
            self.buckets.retain(|_, bucket| {
                refill(bucket);
                bucket.tokens < burst
            });
        }
        let key = if self.buckets.contains_key(namespace) || self.buckets.len() < MAX_BUCKETS {
            namespace.clone()
        } else {
            Arc::from(SHARED_BUCKET)
        };
        let bucket = self.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            refilled: now,
        });
        refill(bucket);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Image references parsed lately; the memo is cleared when it holds this many.
const MAX_REFERENCES: usize = 4096;

impl Inspector {
    pub fn new(client: RegistryClient, settings: CacheSettings) -> Self {
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
            settings,
            references: Arc::default(),
            in_flight: Arc::default(),
        }
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
        // moka runs one init future per key and hands its value to every
        // caller waiting on the same key: the single flight.
        let entry = self
            .cache
            .entry(key)
            .or_insert_with(async {
                let lookup = self
                    .client
                    .inspect_in_turn(image, credential, &requester.turn)
                    .await
                    .map(Arc::new);
                let ttl = self.ttl_for(image, &lookup);
                Entry { lookup, ttl }
            })
            .await;
        let outcome = if entry.is_fresh() {
            CacheOutcome::Miss
        } else {
            CacheOutcome::Hit
        };
        crate::metrics::global().cache_lookup(outcome == CacheOutcome::Hit);
        (entry.into_value().lookup, outcome)
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
        if let Some(entry) = self.cache.get(&key).await {
            crate::metrics::global().cache_lookup(true);
            return (entry.lookup, CacheOutcome::Hit);
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
                crate::metrics::global().cache_lookup(false);
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

    fn ttl_for(&self, image: &ImageRef, lookup: &Lookup) -> Duration {
        match lookup {
            Ok(_) if image.is_pinned() => self.settings.digest_ttl,
            Ok(_) => self.settings.tag_ttl,
            // Out of file descriptors, say: this process's trouble, not the
            // registry's. Shared with the callers waiting now, kept by
            // nobody.
            Err(error) if !error.is_from_registry() => Duration::ZERO,
            Err(error) => error.retry_after().map_or(self.settings.failure_ttl, |d| {
                d.max(self.settings.failure_ttl)
            }),
        }
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
        let small = Entry {
            lookup: Err(InspectError::Timeout { host: "r".into() }),
            ttl: Duration::ZERO,
        };
        let platforms = (0..256)
            .map(|i| crate::decision::platform::Platform::linux(&format!("arch{i}")))
            .collect();
        let large = Entry {
            lookup: Ok(Arc::new(ImagePlatforms {
                digest: "sha256:0".into(),
                platforms: std::sync::Arc::new(platforms),
                shape: crate::lookup::registry::ManifestShape::Index,
                endpoint: "registry.example".into(),
            })),
            ttl: Duration::ZERO,
        };
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

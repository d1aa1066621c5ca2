//! The registry answer cache: one registry round trip per image however many
//! reviews ask at once, answers kept by how long they can be true.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::image::ImageRef;
use crate::registry::{Credential, ImagePlatforms, InspectError, RegistryClient};

/// How long answers are kept and how many.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSettings {
    pub max_entries: u64,
    /// A tag can be moved to another manifest at any time.
    pub tag_ttl: Duration,
    /// A digest names immutable content.
    pub digest_ttl: Duration,
    /// Long enough that a broken registry is not hammered by a burst of
    /// pod creates, short enough that a fixed one is seen soon.
    pub failure_ttl: Duration,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_entries: 10_000,
            tag_ttl: Duration::from_secs(600),
            digest_ttl: Duration::from_secs(24 * 3600),
            failure_ttl: Duration::from_secs(30),
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
    credential: String,
}

impl CacheKey {
    fn new(image: &ImageRef, credential: &Credential) -> Self {
        CacheKey {
            image: image.to_string(),
            credential: credential.fingerprint(),
        }
    }
}

#[derive(Clone)]
struct Entry {
    lookup: Lookup,
    ttl: Duration,
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
}

/// Image references parsed lately; the memo is cleared when it holds this many.
const MAX_REFERENCES: usize = 4096;

impl Inspector {
    pub fn new(client: RegistryClient, settings: CacheSettings) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(settings.max_entries)
            .expire_after(EntryExpiry)
            .build();
        Inspector {
            client,
            cache,
            settings,
            references: Arc::default(),
        }
    }

    /// `image` parsed, remembered: parsing with oci-client's grammar (a
    /// regex) costs about a microsecond, and pods name the same images
    /// over and over.
    pub fn parse_reference(
        &self,
        image: &str,
    ) -> Result<Arc<ImageRef>, crate::image::ImageRefError> {
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
    /// from one registry round trip shared by all concurrent callers.
    pub async fn inspect(
        &self,
        image: &ImageRef,
        credential: &Credential,
    ) -> (Lookup, CacheOutcome) {
        let key = CacheKey::new(image, credential);
        // moka runs one init future per key and hands its value to every
        // caller waiting on the same key: the single flight.
        let entry = self
            .cache
            .entry(key)
            .or_insert_with(async {
                let lookup = self.client.inspect(image, credential).await.map(Arc::new);
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
        // The common case, a cached answer, needs no task.
        let key = CacheKey::new(image, credential);
        if let Some(entry) = self.cache.get(&key).await {
            crate::metrics::global().cache_lookup(true);
            return (entry.lookup, CacheOutcome::Hit);
        }
        let this = self.clone();
        let image = image.clone();
        let credential = credential.clone();
        match tokio::spawn(async move { this.inspect(&image, &credential).await }).await {
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
            Err(error) => error.retry_after().map_or(self.settings.failure_ttl, |d| {
                d.max(self.settings.failure_ttl)
            }),
        }
    }

    /// Entries currently held (approximate, as moka counts).
    pub fn entry_count(&self) -> u64 {
        self.cache.entry_count()
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }
}

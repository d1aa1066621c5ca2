//! What archway has learned about images that holds whoever asks, kept
//! apart from the answer cache so that the replicas can share it and a
//! restart does not forget it:
//!
//! - digest -> platforms: content named by its digest never changes, so
//!   a tag whose HEAD names a digest held here costs no GET;
//! - tag -> digest, with the time a registry last confirmed it: another
//!   replica (or this one after a restart) answers the tag without asking
//!   while that is within `cache.tagTtl`.
//!
//! Only what archway learned with its own access goes in (lookups without
//! a pod's credential: anonymous, or the cluster's `registry.credentialsFile`,
//! which every namespace's lookup uses alike). An answer a pod's pull
//! secret obtained stays in the answer cache, keyed by that credential:
//! facts never tell one namespace what only another's credential may read.
//! A credentialed lookup may still use a digest held here, once its own
//! HEAD has shown it can read that manifest.
//!
//! The store is bounded by the bytes of its encoding, oldest out, so that it
//! always fits in one ConfigMap (`configmap.rs` saves and loads it). Times
//! are wall-clock milliseconds since the epoch (replicas compare them),
//! never trusted beyond now.

pub mod configmap;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::manifest::MAX_INDEX_ENTRIES;
use super::{ImagePlatforms, ManifestShape};
use crate::decision::platform::Platform;
use crate::lookup::image::ImageRef;

/// The encoding's format; another is ignored (and overwritten by the leader).
const FORMAT_VERSION: u32 = 1;

/// What the encoding spends around its entries (`{"version":1,...}`).
const ENVELOPE_BYTES: usize = 64;

/// A tag confirmed this far (ms) in the future, by another replica's
/// clock, is still believed; beyond it, its time is a mistake and the tag
/// is asked.
const CLOCK_SKEW: u64 = 60_000;

/// Where the facts are shared: the `cache.facts` section.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct FactsSettings {
    /// The ConfigMap that holds them (the RBAC names it).
    pub config_map: String,
    /// Its namespace; absent: the one archway runs in.
    pub namespace: Option<String>,
    /// The most bytes of their encoding, the ConfigMap's data: the oldest
    /// facts go past it. Under the API's 1 MiB per object. 0: no facts are
    /// kept, and every lookup not in the cache asks the registry.
    pub max_bytes: usize,
    /// The leader saves new facts at most this often (facts only
    /// confirmed: at most every `REFRESH_WRITE_INTERVAL`).
    #[serde(with = "humantime_serde")]
    pub write_interval: Duration,
}

/// The largest `maxBytes`: the ConfigMap's other fields and the API's
/// own envelope fit in the rest of the 1 MiB an object may take.
pub const MAX_ENCODED_BYTES: usize = 900 * 1024;

impl Default for FactsSettings {
    fn default() -> Self {
        FactsSettings {
            config_map: "archway-facts".into(),
            namespace: None,
            max_bytes: 768 * 1024,
            write_interval: Duration::from_secs(5),
        }
    }
}

/// Facts about images, shared by every lookup of this process. Cheap to
/// share behind an `Arc`; every method takes a short lock.
pub struct Facts {
    inner: Mutex<Inner>,
    loaded: tokio::sync::watch::Sender<bool>,
}

struct Inner {
    /// `registry/repository@digest` ->
    digests: HashMap<String, DigestFact>,
    /// `registry/repository:tag` ->
    tags: HashMap<String, TagFact>,
    /// `registry/repository` -> how many of its digests are held: whether a
    /// HEAD of one of its tags could spare the GET.
    repositories: HashMap<String, usize>,
    /// The encoded size of every entry.
    bytes: usize,
    max_bytes: usize,
    changes: Changes,
}

struct DigestFact {
    found: Arc<ImagePlatforms>,
    /// When a lookup last used or confirmed it (unix ms).
    seen: u64,
    bytes: usize,
}

struct TagFact {
    digest: String,
    /// When a registry last said the tag names `digest` (unix ms).
    checked: u64,
    bytes: usize,
}

/// Counts of changes, for the writer to know whether (and how urgently)
/// the store differs from what it last saved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// A digest learned or a tag that moved: worth sharing soon.
    pub content: u64,
    /// Only times refreshed (a tag confirmed unchanged): worth sharing
    /// now and then.
    pub times: u64,
}

/// Facts read from an encoding, checked, ready to merge.
#[derive(Debug, Default)]
pub struct Snapshot {
    digests: Vec<(String, Arc<ImagePlatforms>, u64)>,
    tags: Vec<(String, String, u64)>,
    /// Entries left out because they were not well formed.
    pub refused: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FactsError {
    #[error("facts are not readable JSON: {0}")]
    Json(String),
    #[error("facts are in format {0}, not {FORMAT_VERSION}")]
    Version(u32),
}

/// The encoding: one JSON object, sorted, so that the same facts always
/// give the same text.
#[derive(Serialize, Deserialize)]
struct Wire {
    version: u32,
    #[serde(default)]
    digests: BTreeMap<String, WireDigest>,
    #[serde(default)]
    tags: BTreeMap<String, WireTag>,
}

/// One digest's platforms as the facts encode them, and as the leader
/// answers a follower (`lookup::peer`).
#[derive(Serialize, Deserialize)]
pub(crate) struct WireDigest {
    platforms: Vec<String>,
    shape: ManifestShape,
    endpoint: String,
    seen: u64,
}

#[derive(Serialize, Deserialize)]
struct WireTag {
    digest: String,
    checked: u64,
}

/// Now, in the unix milliseconds facts are timed in.
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn repository_key(image: &ImageRef) -> String {
    format!("{}/{}", image.registry(), image.repository())
}

pub(crate) fn digest_key(image: &ImageRef, digest: &str) -> String {
    format!("{}/{}@{digest}", image.registry(), image.repository())
}

fn tag_key(image: &ImageRef) -> String {
    format!(
        "{}/{}:{}",
        image.registry(),
        image.repository(),
        image.tag().unwrap_or("latest")
    )
}

pub(crate) fn wire_digest(found: &ImagePlatforms, seen: u64) -> WireDigest {
    WireDigest {
        platforms: found.platforms.iter().map(ToString::to_string).collect(),
        shape: found.shape,
        endpoint: found.endpoint.clone(),
        seen,
    }
}

/// The bytes `"key":value,` takes in the encoding.
fn entry_bytes(key: &str, value: &impl Serialize) -> usize {
    key.len() + 4 + serde_json::to_string(value).map_or(0, |text| text.len())
}

impl Facts {
    /// An empty store whose encoding stays within `max_bytes`.
    pub fn new(max_bytes: usize) -> Facts {
        Facts {
            inner: Mutex::new(Inner {
                digests: HashMap::new(),
                tags: HashMap::new(),
                repositories: HashMap::new(),
                bytes: 0,
                max_bytes: max_bytes.saturating_sub(ENVELOPE_BYTES),
                changes: Changes::default(),
            }),
            loaded: tokio::sync::watch::channel(false).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The platforms of `digest` in `image`'s repository, if known.
    pub fn platforms(&self, image: &ImageRef, digest: &str) -> Option<Arc<ImagePlatforms>> {
        let inner = self.lock();
        inner
            .digests
            .get(&digest_key(image, digest))
            .map(|fact| fact.found.clone())
    }

    /// Whether some digest of `image`'s repository is known: then a HEAD
    /// of one of its tags may name it and spare the GET.
    pub fn knows_repository(&self, image: &ImageRef) -> bool {
        self.lock()
            .repositories
            .contains_key(&repository_key(image))
    }

    /// What `image` (a tag) named when a registry last confirmed it, if
    /// that was less than `ttl` ago and its platforms are known; with the
    /// time left until `ttl` has passed.
    pub fn fresh_tag(
        &self,
        image: &ImageRef,
        now: u64,
        ttl: Duration,
    ) -> Option<(Arc<ImagePlatforms>, Duration)> {
        let inner = self.lock();
        let tag = inner.tags.get(&tag_key(image))?;
        if tag.checked > now.saturating_add(CLOCK_SKEW) {
            return None;
        }
        let age = Duration::from_millis(now.saturating_sub(tag.checked));
        let left = ttl.checked_sub(age).filter(|left| !left.is_zero())?;
        let found = inner.digests.get(&digest_key(image, &tag.digest))?;
        Some((found.found.clone(), left))
    }

    /// Records a registry's answer for `image` at `now`: its digest's
    /// platforms and, for a tag, that it names that digest.
    pub fn record(&self, image: &ImageRef, found: &Arc<ImagePlatforms>, now: u64) {
        let mut inner = self.lock();
        let held = inner.put_digest(digest_key(image, &found.digest), found.clone(), now);
        if held && !image.is_pinned() {
            inner.put_tag(tag_key(image), found.digest.clone(), now);
        }
        inner.enforce_bound();
    }

    /// Adds what `snapshot` holds that this store lacks, and newer times;
    /// times are taken as at most `now`.
    pub fn merge(&self, snapshot: Snapshot, now: u64) {
        let mut inner = self.lock();
        for (key, found, seen) in snapshot.digests {
            let _ = inner.put_digest(key, found, seen.min(now));
        }
        for (key, digest, checked) in snapshot.tags {
            inner.put_tag(key, digest, checked.min(now));
        }
        inner.enforce_bound();
    }

    /// Changes made so far (counts only grow).
    pub fn changes(&self) -> Changes {
        self.lock().changes
    }

    /// Digests and tags held.
    pub fn len(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.digests.len(), inner.tags.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == (0, 0)
    }

    /// Every fact as one JSON text, within the store's bound; with the
    /// changes it includes.
    pub fn encode(&self) -> (String, Changes) {
        let inner = self.lock();
        let digests = inner
            .digests
            .iter()
            .map(|(key, fact)| (key.clone(), wire_digest(&fact.found, fact.seen)))
            .collect();
        let tags = inner
            .tags
            .iter()
            .filter(|(key, tag)| {
                inner
                    .digests
                    .contains_key(&tag_digest_key(key, &tag.digest))
            })
            .map(|(key, tag)| {
                let wire = WireTag {
                    digest: tag.digest.clone(),
                    checked: tag.checked,
                };
                (key.clone(), wire)
            })
            .collect();
        let wire = Wire {
            version: FORMAT_VERSION,
            digests,
            tags,
        };
        let text = serde_json::to_string(&wire).unwrap_or_default();
        (text, inner.changes)
    }

    /// Reads an encoding, keeping the entries that are well formed.
    pub fn decode(text: &str) -> Result<Snapshot, FactsError> {
        let wire: Wire = serde_json::from_str(text).map_err(|e| FactsError::Json(e.to_string()))?;
        if wire.version != FORMAT_VERSION {
            return Err(FactsError::Version(wire.version));
        }
        let mut snapshot = Snapshot::default();
        for (key, fact) in wire.digests {
            match read_digest(&key, fact) {
                Some((found, seen)) => snapshot.digests.push((key, found, seen)),
                None => snapshot.refused += 1,
            }
        }
        for (key, tag) in wire.tags {
            if read_tag(&key, &tag.digest) {
                snapshot.tags.push((key, tag.digest, tag.checked));
            } else {
                snapshot.refused += 1;
            }
        }
        Ok(snapshot)
    }

    /// Says that the shared facts have been read once (or could not be).
    pub fn mark_loaded(&self) {
        self.loaded.send_replace(true);
    }

    /// Waits until `mark_loaded`: a replica may wait for the shared facts
    /// (bounded by its caller) before it answers reviews.
    pub async fn loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }
}

/// The digest key a tag key's digest is held under.
fn tag_digest_key(tag_key: &str, digest: &str) -> String {
    // A tag key is `registry/repository:tag`; the tag holds no `:` or `/`
    // and the registry's port comes before the first `/`.
    let repository = tag_key.rsplit_once(':').map_or(tag_key, |(repo, _)| repo);
    format!("{repository}@{digest}")
}

/// A digest entry read back, if its key is a canonical pinned reference
/// and its value platforms archway would accept from a registry.
pub(crate) fn read_digest(key: &str, fact: WireDigest) -> Option<(Arc<ImagePlatforms>, u64)> {
    let image: ImageRef = key.parse().ok()?;
    let digest = image.digest()?;
    if image.tag().is_some() || image.to_string() != key {
        return None;
    }
    let endpoint_ok = !fact.endpoint.is_empty()
        && fact.endpoint.len() <= 255
        && fact
            .endpoint
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    if !endpoint_ok || fact.platforms.is_empty() || fact.platforms.len() > MAX_INDEX_ENTRIES {
        return None;
    }
    let platforms = fact
        .platforms
        .iter()
        .map(|text| {
            let mut parts = text.split('/');
            let (os, architecture) = (parts.next()?, parts.next()?);
            let variant = parts.next();
            if parts.next().is_some() {
                return None;
            }
            Platform::parse(os, architecture, variant).ok()
        })
        .collect::<Option<std::collections::BTreeSet<Platform>>>()?;
    let found = ImagePlatforms {
        digest: digest.to_string(),
        platforms: Arc::new(platforms),
        shape: fact.shape,
        endpoint: fact.endpoint,
    };
    Some((Arc::new(found), fact.seen))
}

/// Whether a tag entry's key is a canonical tagged reference and its
/// digest a digest.
fn read_tag(key: &str, digest: &str) -> bool {
    let Ok(image) = key.parse::<ImageRef>() else {
        return false;
    };
    !image.is_pinned()
        && image.tag().is_some()
        && image.to_string() == key
        && crate::lookup::image::parse_digest(digest).is_ok()
}

impl Inner {
    /// Whether the digest is held after it.
    fn put_digest(&mut self, key: String, found: Arc<ImagePlatforms>, seen: u64) -> bool {
        if let Some(fact) = self.digests.get_mut(&key) {
            if seen > fact.seen {
                fact.seen = seen;
                self.changes.times += 1;
            }
            return true;
        }
        let bytes = entry_bytes(&key, &wire_digest(&found, seen));
        // One image's facts never crowd out most of the others'.
        if bytes > self.max_bytes / 32 {
            return false;
        }
        if let Some((repository, _)) = key.rsplit_once('@') {
            *self.repositories.entry(repository.to_string()).or_default() += 1;
        }
        self.bytes += bytes;
        self.digests.insert(key, DigestFact { found, seen, bytes });
        self.changes.content += 1;
        true
    }

    fn put_tag(&mut self, key: String, digest: String, checked: u64) {
        match self.tags.get_mut(&key) {
            Some(tag) if checked <= tag.checked => {}
            Some(tag) if tag.digest == digest => {
                tag.checked = checked;
                self.changes.times += 1;
            }
            _ => {
                let wire = WireTag { digest, checked };
                let bytes = entry_bytes(&key, &wire);
                let fact = TagFact {
                    digest: wire.digest,
                    checked,
                    bytes,
                };
                if let Some(old) = self.tags.insert(key, fact) {
                    self.bytes -= old.bytes;
                }
                self.bytes += bytes;
                self.changes.content += 1;
            }
        }
    }

    /// Past the bound, the oldest facts go (and tags whose digest went),
    /// down to seven eighths of it, so that eviction is not paid on every
    /// insert.
    fn enforce_bound(&mut self) {
        if self.bytes <= self.max_bytes {
            return;
        }
        let target = self.max_bytes / 8 * 7;
        // Oldest first; at equal times a tag before its digest.
        let mut by_age: Vec<(u64, bool, String)> = self
            .tags
            .iter()
            .map(|(key, tag)| (tag.checked, false, key.clone()))
            .chain(
                self.digests
                    .iter()
                    .map(|(key, fact)| (fact.seen, true, key.clone())),
            )
            .collect();
        by_age.sort_unstable();
        for (_, is_digest, key) in by_age {
            if self.bytes <= target {
                break;
            }
            if is_digest {
                self.remove_digest(&key);
            } else if let Some(tag) = self.tags.remove(&key) {
                self.bytes -= tag.bytes;
            }
        }
        let digests = &self.digests;
        let mut freed = 0;
        self.tags.retain(|key, tag| {
            let kept = digests.contains_key(&tag_digest_key(key, &tag.digest));
            if !kept {
                freed += tag.bytes;
            }
            kept
        });
        self.bytes -= freed;
        self.changes.content += 1;
    }

    fn remove_digest(&mut self, key: &str) {
        let Some(fact) = self.digests.remove(key) else {
            return;
        };
        self.bytes -= fact.bytes;
        if let Some((repository, _)) = key.rsplit_once('@')
            && let Some(count) = self.repositories.get_mut(repository)
        {
            *count -= 1;
            if *count == 0 {
                self.repositories.remove(repository);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(text: &str) -> ImageRef {
        text.parse().unwrap()
    }

    fn digest(n: usize) -> String {
        format!("sha256:{n:064x}")
    }

    fn found(n: usize, architectures: &[&str]) -> Arc<ImagePlatforms> {
        Arc::new(ImagePlatforms {
            digest: digest(n),
            platforms: Arc::new(architectures.iter().map(|a| Platform::linux(a)).collect()),
            shape: ManifestShape::Index,
            endpoint: "registry-1.docker.io".into(),
        })
    }

    #[test]
    fn a_recorded_tag_is_fresh_for_its_ttl_and_its_digest_for_good() {
        let facts = Facts::new(64 * 1024);
        let nginx = image("nginx:1.25");
        assert!(!facts.knows_repository(&nginx));
        // Times in ms.
        facts.record(&nginx, &found(1, &["amd64", "arm64"]), 1_000_000);
        let ttl = Duration::from_secs(600);
        let (answer, left) = facts.fresh_tag(&nginx, 1_100_000, ttl).unwrap();
        assert_eq!(answer.digest, digest(1));
        assert_eq!(left, Duration::from_secs(500));
        assert!(
            facts.fresh_tag(&nginx, 1_600_000, ttl).is_none(),
            "past tagTtl"
        );
        assert!(
            facts
                .fresh_tag(&nginx, 1_000_000 - 2 * CLOCK_SKEW, ttl)
                .is_none(),
            "confirmed in this clock's future"
        );
        // Any tag or digest reference of the repository may use the digest.
        assert!(facts.knows_repository(&image("docker.io/library/nginx:latest")));
        assert!(facts.platforms(&image("nginx:other"), &digest(1)).is_some());
        assert!(facts.platforms(&image("other:1.25"), &digest(1)).is_none());
        assert!(
            facts
                .fresh_tag(&image("nginx:latest"), 1_100_000, ttl)
                .is_none()
        );
    }

    #[test]
    fn changes_say_whether_content_or_only_times_moved() {
        let facts = Facts::new(64 * 1024);
        let app = image("ghcr.io/acme/app:v1");
        facts.record(&app, &found(1, &["amd64"]), 10);
        let first = facts.changes();
        assert_eq!(first.content, 2, "a digest and a tag");
        facts.record(&app, &found(1, &["amd64"]), 20);
        assert_eq!(
            facts.changes().content,
            first.content,
            "confirmed unchanged"
        );
        assert!(facts.changes().times > first.times);
        facts.record(&app, &found(2, &["amd64", "arm64"]), 30);
        assert_eq!(facts.changes().content, first.content + 2, "the tag moved");
        let (moved, _) = facts.fresh_tag(&app, 30, Duration::from_secs(60)).unwrap();
        assert_eq!(moved.digest, digest(2));
        // An older confirmation changes nothing.
        let before = facts.changes();
        facts.record(&app, &found(1, &["amd64"]), 5);
        let (still, _) = facts.fresh_tag(&app, 30, Duration::from_secs(60)).unwrap();
        assert_eq!(still.digest, digest(2));
        assert_eq!(facts.changes().content, before.content);
    }

    #[test]
    fn the_encoding_stays_within_its_bound_oldest_out() {
        let max = 16 * 1024;
        let facts = Facts::new(max);
        for i in 0..2_000 {
            let tag = image(&format!("registry.example/team/app-{i}:v{i}"));
            facts.record(&tag, &found(i, &["amd64", "arm64", "ppc64le"]), i as u64);
            let (text, _) = facts.encode();
            assert!(text.len() <= max, "{} bytes after {i}", text.len());
        }
        let (digests, tags) = facts.len();
        assert!(digests > 20 && tags > 20, "{digests} {tags}");
        let newest = image("registry.example/team/app-1999:v1999");
        assert!(
            facts
                .fresh_tag(&newest, 1_999, Duration::from_secs(1))
                .is_some()
        );
        let oldest = image("registry.example/team/app-0:v0");
        assert!(facts.platforms(&oldest, &digest(0)).is_none(), "oldest out");
        assert!(!facts.knows_repository(&oldest));
        // maxBytes 0: nothing is kept.
        let none = Facts::new(0);
        none.record(&newest, &found(1, &["amd64"]), 1);
        assert!(none.is_empty());
        // A fact larger than a share of the bound is not kept at all.
        let huge: Vec<String> = (0..256).map(|i| format!("arch{i}")).collect();
        let huge: Vec<&str> = huge.iter().map(String::as_str).collect();
        facts.record(
            &image("registry.example/huge:v1"),
            &found(9_999, &huge),
            5_000,
        );
        assert!(!facts.knows_repository(&image("registry.example/huge:v1")));
    }

    #[test]
    fn an_encoding_reads_back_as_the_same_facts() {
        let facts = Facts::new(64 * 1024);
        let tagged = image("nginx:1.25");
        facts.record(&tagged, &found(1, &["amd64", "arm64"]), 100);
        let mut windows = (*found(2, &[])).clone();
        windows.platforms = Arc::new(
            [
                Platform::new("windows", "amd64", None),
                Platform::new("linux", "arm", Some("v7")),
            ]
            .into_iter()
            .collect(),
        );
        windows.shape = ManifestShape::Single;
        windows.endpoint = "[::1]:5000".into();
        let pinned = image(&format!("[::1]:5000/win@{}", digest(2)));
        facts.record(&pinned, &Arc::new(windows.clone()), 200);
        let (text, _) = facts.encode();

        let copy = Facts::new(64 * 1024);
        let snapshot = Facts::decode(&text).unwrap();
        assert_eq!(snapshot.refused, 0);
        copy.merge(snapshot, 1_000);
        assert_eq!(copy.encode().0, text, "the same facts give the same text");
        let (answer, _) = copy
            .fresh_tag(&tagged, 150, Duration::from_secs(60))
            .unwrap();
        assert_eq!(answer, found(1, &["amd64", "arm64"]));
        assert_eq!(*copy.platforms(&pinned, &digest(2)).unwrap(), windows);
        // Merging what is already held changes nothing.
        let before = copy.changes();
        copy.merge(Facts::decode(&text).unwrap(), 1_000);
        assert_eq!(copy.changes(), before);
    }

    #[test]
    fn a_hostile_or_broken_encoding_is_refused_entry_by_entry() {
        assert!(matches!(Facts::decode("{"), Err(FactsError::Json(_))));
        assert!(matches!(
            Facts::decode(r#"{"version":2}"#),
            Err(FactsError::Version(2))
        ));
        let good = digest(1);
        let text = serde_json::json!({
            "version": 1,
            "digests": {
                format!("docker.io/library/nginx@{good}"): {"platforms": ["linux/arm64"], "shape": "index", "endpoint": "registry-1.docker.io", "seen": u64::MAX},
                // Not canonical (`nginx` is docker.io/library/nginx).
                format!("nginx@{good}"): {"platforms": ["linux/arm64"], "shape": "index", "endpoint": "e", "seen": 1},
                // A tag, not a digest.
                "docker.io/library/nginx:1": {"platforms": ["linux/arm64"], "shape": "index", "endpoint": "e", "seen": 1},
                format!("docker.io/library/a@{good}"): {"platforms": ["linux/ARM 64"], "shape": "index", "endpoint": "e", "seen": 1},
                format!("docker.io/library/b@{good}"): {"platforms": [], "shape": "index", "endpoint": "e", "seen": 1},
                format!("docker.io/library/c@{good}"): {"platforms": ["linux/arm64"], "shape": "index", "endpoint": "e/../x", "seen": 1},
                format!("docker.io/library/d@{good}"): {"platforms": ["linux/arm/v7/x"], "shape": "index", "endpoint": "e", "seen": 1},
            },
            "tags": {
                "docker.io/library/nginx:1": {"digest": good, "checked": u64::MAX},
                "docker.io/library/nginx:2": {"digest": "sha256:short", "checked": 1},
                format!("docker.io/library/nginx@{good}"): {"digest": good, "checked": 1},
            },
        })
        .to_string();
        let snapshot = Facts::decode(&text).unwrap();
        assert_eq!(snapshot.refused, 8);
        let facts = Facts::new(64 * 1024);
        facts.merge(snapshot, 500);
        assert_eq!(facts.len(), (1, 1));
        // A time from the future is taken as now: it neither stays fresh
        // for ever nor outlives every other fact.
        let ttl = Duration::from_millis(100);
        assert!(facts.fresh_tag(&image("nginx:1"), 550, ttl).is_some());
        assert!(facts.fresh_tag(&image("nginx:1"), 601, ttl).is_none());
    }
}

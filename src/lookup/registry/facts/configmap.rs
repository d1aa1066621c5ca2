//! The facts kept in one ConfigMap: every replica reads it at start and on
//! every change (merging it into its own store); only the leader writes
//! it, at most every `writeInterval`, and only when its facts changed. So
//! a replica never looks up what another already learned, and a restart
//! (of one replica, or of all) keeps what archway knew.
//!
//! The API calls are the ones the RBAC grants on that one ConfigMap: get,
//! watch (with a field selector on its name, which `resourceNames`
//! authorises), update, and create (which cannot be limited by name). No
//! list: nothing else in the namespace is read.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams, WatchEvent, WatchParams};
use tokio::sync::watch;

use super::{Changes, Facts, FactsSettings, unix_millis};
use crate::metrics::{Metrics, ReasonLabels};

/// The ConfigMap's key that holds the encoding.
pub const DATA_KEY: &str = "facts.json";

/// Facts only confirmed (newer times, nothing new) are saved at most this
/// often: they spare another replica a HEAD, which no pull limit counts,
/// and a ConfigMap of up to 900 KiB rewritten every few seconds would be
/// etcd's burden for little.
pub const REFRESH_WRITE_INTERVAL: Duration = Duration::from_secs(300);

/// How long a watch that could not be opened waits to be tried again.
const WATCH_RETRY: Duration = Duration::from_secs(5);

/// The last write, at shutdown, gets this long.
const FINAL_WRITE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where the facts are kept, and how often they may be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub namespace: String,
    pub name: String,
    pub write_interval: Duration,
}

impl Target {
    /// The configuration's ConfigMap; without a namespace, `own_namespace`
    /// (the one archway runs in, as for the Lease: the runtime knows it).
    pub fn from_settings(settings: &FactsSettings, own_namespace: &str) -> Target {
        Target {
            namespace: (settings.namespace.clone()).unwrap_or_else(|| own_namespace.to_string()),
            name: settings.config_map.clone(),
            write_interval: settings.write_interval,
        }
    }
}

/// Keeps `facts` and the ConfigMap `target` in step until `shutdown`
/// completes: loads it at once and on every change (whatever `leading`
/// says), and writes it while `leading` is true. At shutdown, a leader
/// saves what it learned since its last write. Marks `facts` loaded after
/// the first read, whether or not the ConfigMap could be read. Writes are
/// counted in `metrics`.
pub async fn run(
    client: kube::Client,
    facts: Arc<Facts>,
    target: Target,
    leading: watch::Receiver<bool>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let mut sync = Sync {
        api: Api::namespaced(client, &target.namespace),
        facts,
        target,
        metrics,
        remote: None,
        saved: None,
    };
    sync.load().await;
    sync.facts.mark_loaded();
    let mut tick = tokio::time::interval(sync.target.write_interval.max(Duration::from_secs(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events: Option<BoxStream<'static, Result<WatchEvent<ConfigMap>, kube::Error>>> = None;
    let mut watch_again_at = Instant::now();
    tokio::pin!(shutdown);
    loop {
        if events.is_none() && Instant::now() >= watch_again_at {
            match sync.watch().await {
                Ok(stream) => events = Some(stream),
                Err(error) => {
                    tracing::warn!(%error, configmap = %sync.target.name, "cannot watch the facts ConfigMap");
                    watch_again_at = Instant::now() + WATCH_RETRY;
                }
            }
        }
        let next_event = async {
            match events.as_mut() {
                Some(stream) => stream.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                if *leading.borrow() {
                    sync.write_if_due(false).await;
                }
            }
            event = next_event => {
                if !sync.follow(event).await {
                    events = None;
                }
            }
        }
    }
    if *leading.borrow() {
        let _ = tokio::time::timeout(FINAL_WRITE_TIMEOUT, sync.write_if_due(true)).await;
    }
}

struct Sync {
    api: Api<ConfigMap>,
    facts: Arc<Facts>,
    target: Target,
    metrics: Arc<Metrics>,
    /// The ConfigMap as last read or written: `None` before the first
    /// read or after a failed one.
    remote: Option<Remote>,
    /// The store's changes when this replica last saved it (or found it
    /// already saved), and when.
    saved: Option<(Changes, Instant)>,
}

#[derive(Default)]
struct Remote {
    /// `None`: there is no such ConfigMap.
    resource_version: Option<String>,
    text: Option<String>,
}

impl Sync {
    /// Reads the ConfigMap and merges its facts.
    async fn load(&mut self) {
        match self.api.get_opt(&self.target.name).await {
            Ok(Some(config_map)) => self.read(&config_map),
            Ok(None) => self.remote = Some(Remote::default()),
            Err(error) => {
                tracing::warn!(%error, configmap = %self.target.name, "cannot read the facts ConfigMap");
                self.remote = None;
            }
        }
    }

    /// Merges a version of the ConfigMap seen (read or watched).
    fn read(&mut self, config_map: &ConfigMap) {
        let text = config_map
            .data
            .as_ref()
            .and_then(|data| data.get(DATA_KEY))
            .cloned();
        let unchanged = self
            .remote
            .as_ref()
            .is_some_and(|remote| remote.text == text);
        if !unchanged && let Some(text) = &text {
            match Facts::decode(text) {
                Ok(snapshot) => {
                    if snapshot.refused > 0 {
                        tracing::warn!(refused = snapshot.refused, configmap = %self.target.name, "facts ConfigMap holds entries that are not well formed; they are left out");
                    }
                    self.facts.merge(snapshot, unix_millis());
                }
                Err(error) => {
                    tracing::warn!(%error, configmap = %self.target.name, "facts ConfigMap is not readable; the leader will write it anew")
                }
            }
        }
        self.remote = Some(Remote {
            resource_version: config_map.metadata.resource_version.clone(),
            text,
        });
    }

    /// A watch of the ConfigMap alone, from the version last seen.
    async fn watch(
        &self,
    ) -> Result<BoxStream<'static, Result<WatchEvent<ConfigMap>, kube::Error>>, kube::Error> {
        let params = WatchParams::default()
            .fields(&format!("metadata.name={}", self.target.name))
            .timeout(290);
        let version = self
            .remote
            .as_ref()
            .and_then(|remote| remote.resource_version.clone())
            .unwrap_or_else(|| "0".into());
        Ok(self.api.watch(&params, &version).await?.boxed())
    }

    /// Follows one watch event: whether the watch goes on.
    async fn follow(&mut self, event: Option<Result<WatchEvent<ConfigMap>, kube::Error>>) -> bool {
        match event {
            Some(Ok(WatchEvent::Added(config_map) | WatchEvent::Modified(config_map))) => {
                self.read(&config_map);
                true
            }
            Some(Ok(WatchEvent::Deleted(_))) => {
                // Written anew by the leader at its next turn.
                self.remote = Some(Remote::default());
                self.saved = None;
                true
            }
            Some(Ok(WatchEvent::Bookmark(bookmark))) => {
                if let Some(remote) = self.remote.as_mut() {
                    remote.resource_version = Some(bookmark.metadata.resource_version);
                }
                true
            }
            // Most often 410: the version is too old to watch from. Read
            // it again, then watch from there.
            Some(Ok(WatchEvent::Error(status))) => {
                tracing::debug!(code = status.code, message = %status.message, "facts ConfigMap watch ended");
                self.load().await;
                false
            }
            Some(Err(error)) => {
                tracing::debug!(%error, "facts ConfigMap watch failed");
                false
            }
            // The server's timeout: watch again from the last version.
            None => false,
        }
    }

    /// Writes the facts when they changed enough since the last save: new
    /// facts after `writeInterval`, only newer times after
    /// `REFRESH_WRITE_INTERVAL` (or at the `last` write, at shutdown).
    async fn write_if_due(&mut self, last: bool) {
        let changes = self.facts.changes();
        let due = match self.saved {
            // Not saved by this replica yet: whenever it differs.
            None => !self.facts.is_empty(),
            Some((saved, at)) => {
                let waited = at.elapsed();
                (changes.content != saved.content && (last || waited >= self.target.write_interval))
                    || (changes != saved && (last || waited >= REFRESH_WRITE_INTERVAL))
            }
        };
        if !due {
            return;
        }
        if self.remote.is_none() {
            self.load().await;
        }
        let Some(remote) = &self.remote else {
            return;
        };
        let (text, included) = self.facts.encode();
        if remote.text.as_deref() == Some(text.as_str()) {
            self.saved = Some((included, Instant::now()));
            return;
        }
        let config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.target.name.clone()),
                namespace: Some(self.target.namespace.clone()),
                // The version read: a write by anyone since is refused
                // (409), read, merged, and written at the next turn.
                resource_version: remote.resource_version.clone(),
                labels: Some(
                    [("app.kubernetes.io/name".to_string(), "archway".to_string())].into(),
                ),
                ..Default::default()
            },
            data: Some([(DATA_KEY.to_string(), text)].into()),
            ..Default::default()
        };
        let params = PostParams::default();
        let written = match remote.resource_version {
            Some(_) => {
                self.api
                    .replace(&self.target.name, &params, &config_map)
                    .await
            }
            None => self.api.create(&params, &config_map).await,
        };
        match written {
            Ok(written) => {
                self.count("ok");
                self.remote = Some(Remote {
                    resource_version: written.metadata.resource_version,
                    text: config_map.data.and_then(|mut data| data.remove(DATA_KEY)),
                });
                self.saved = Some((included, Instant::now()));
            }
            // Written (or created) by another replica since it was read.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                self.count("conflict");
                self.load().await;
            }
            Err(error) => {
                self.count("error");
                tracing::warn!(%error, configmap = %self.target.name, "cannot write the facts ConfigMap");
                self.remote = None;
            }
        }
    }

    fn count(&self, result: &str) {
        self.metrics
            .facts_writes
            .get_or_create(&ReasonLabels {
                reason: result.into(),
            })
            .inc();
    }
}

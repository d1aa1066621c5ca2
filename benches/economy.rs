//! What archway's lookups cost a registry that counts requests by method,
//! as Docker Hub counts manifest GETs (and not HEADs) against its pull
//! limit: the tests' CountingProxy in front of Debian's docker-registry.
//!
//! ```text
//! cargo bench --bench economy                        # 10 minutes a phase
//! ECONOMY_SECONDS=60 cargo bench --bench economy     # a quick run
//! ECONOMY_TAG_TTL=10s ECONOMY_RESTART_SECONDS=30 ECONOMY_BASELINE=0 ...
//! ```
//!
//! 50 tags in use (50 images of their own), each looked up once a second
//! by a review (`inspect_for`, reviews spread over 10 namespaces),
//! `cache.tagTtl` 10 s, and every minute one tag moved to a new image.
//! Two replicas (ECONOMY_REPLICAS), each with its own cache, as deploy/
//! runs archway: a tag's reviews alternate between them, second by second,
//! as a load balancer spreads the API server's connections. The first is
//! the leader, served over HTTPS; the others ask it for digests they do
//! not know (`lookup::peer`) before they ask the registry.
//!
//! 1. The run where the registry refuses HEAD (405), which archway meets
//!    with a GET on every expiry: what each expiry cost before
//!    (ECONOMY_BASELINE=0 leaves it out).
//! 2. archway as built: the leader's facts saved by `facts::configmap::run`
//!    to the ConfigMap on the real control plane
//!    (tests/testkit/src/controlplane.rs), the other replica reading them,
//!    both with the shipped RBAC as their only permissions.
//! 3. A restart of both: new inspectors whose facts are loaded from that
//!    ConfigMap by replicas that are not leading, looking the same 50 tags
//!    up for ECONOMY_RESTART_SECONDS (30).
//!
//! Run by `cargo test` (without `--bench`), it does nothing.

use archway_testkit as support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use archway::lookup::cache::{CacheSettings, Inspector};
use archway::lookup::image::ImageRef;
use archway::lookup::registry::facts::configmap::{self, Target};
use archway::lookup::registry::facts::{Facts, FactsSettings};
use archway::lookup::registry::{Credential, RegistryClient, RegistrySettings};
use support::controlplane::{ControlPlane, client_from_kubeconfig};
use support::peers::{PeerKeys, ServedReplica};
use support::webhook::install_crypto;
use support::{CountingProxy, Fault, ImageSpec, Recorded, Registry, RegistryOptions};

const TAGS: usize = 50;
const NAMESPACES: usize = 10;
/// One tag moves to a new image this often, the first half-way in.
const MOVE_EVERY: Duration = Duration::from_secs(60);

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .map(|v| {
            humantime::parse_duration(&v)
                .or_else(|_| v.parse::<u64>().map(Duration::from_secs))
                .unwrap_or_else(|_| panic!("{name}={v}: not a duration"))
        })
        .unwrap_or(default)
}

/// What one phase cost the registry.
struct Row {
    phase: &'static str,
    seconds: u64,
    moves: usize,
    lookups: usize,
    failed: usize,
    manifest_gets: usize,
    manifest_heads: usize,
    other: usize,
}

fn push(registry: &Registry, reference: &str, salt: &str) -> String {
    registry.push_spec(reference, &ImageSpec::multi_arch().with_salt(salt))
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    install_crypto();
    let seconds = env_duration("ECONOMY_SECONDS", Duration::from_secs(600));
    let tag_ttl = env_duration("ECONOMY_TAG_TTL", Duration::from_secs(10));
    let restart = env_duration("ECONOMY_RESTART_SECONDS", Duration::from_secs(30));
    let baseline = std::env::var("ECONOMY_BASELINE").map_or(true, |v| v != "0");
    let replicas: usize = std::env::var("ECONOMY_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .max(1);

    // Not a World: the inspectors run in-process, with archway's RBAC.
    let plane = ControlPlane::start();
    let kubeconfig = plane.archway_account();
    let registry = Arc::new(Registry::start(RegistryOptions::plain()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for worker in 0..4 {
            let registry = &registry;
            scope.spawn(move || {
                for i in (worker..TAGS).step_by(4) {
                    push(registry, &format!("app-{i}:v1"), &format!("app-{i}"));
                }
            });
        }
    });
    eprintln!("economy: {TAGS} images pushed in {:.0?}", started.elapsed());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(async {
        let client = client_from_kubeconfig(&kubeconfig).await;
        let target = Target::from_settings(
            &FactsSettings {
                namespace: Some("archway".into()),
                ..FactsSettings::default()
            },
            "archway",
        );
        let proxy = CountingProxy::start(registry.addr()).await;
        let cache = CacheSettings {
            tag_ttl,
            ..CacheSettings::default()
        };
        let settings = RegistrySettings {
            insecure_hosts: vec![proxy.host()],
            ..RegistrySettings::default()
        };
        let tags: Vec<ImageRef> = (0..TAGS)
            .map(|i| format!("{}/app-{i}:v1", proxy.host()).parse().unwrap())
            .collect();
        let mut rows = Vec::new();

        // 1. What each expiry cost before: a registry that refuses HEAD
        // gets a GET every time.
        if baseline {
            let before: Vec<Inspector> = (0..replicas)
                .map(|_| {
                    Inspector::new(
                        RegistryClient::new(settings.clone()).unwrap(),
                        cache.clone(),
                    )
                })
                .collect();
            proxy.set_fault_rule(|r| {
                if r.method == "HEAD" {
                    Fault::Status(405, vec![])
                } else {
                    Fault::None
                }
            });
            rows.push(
                reviews(
                    "GET on every expiry (registry refuses HEAD)",
                    &before.iter().collect::<Vec<_>>(),
                    &tags,
                    &proxy,
                    &registry,
                    seconds,
                    true,
                )
                .await,
            );
            proxy.clear_fault();
        }

        // 2. As built, the facts saved by the leader, read by the others
        // (the restart reads them too).
        let keys = PeerKeys::new();
        let running = Replica::start_all(&client, &target, &settings, &cache, replicas, true, &keys).await;
        rows.push(
            reviews(
                "HEAD revalidation, facts shared",
                &running.iter().map(|r| &r.inspector).collect::<Vec<_>>(),
                &tags,
                &proxy,
                &registry,
                seconds,
                true,
            )
            .await,
        );
        for replica in running {
            replica.stop().await;
        }

        // 3. A restart of every replica: facts loaded from the ConfigMap,
        // none leading yet.
        let restarted =
            Replica::start_all(&client, &target, &settings, &cache, replicas, false, &keys).await;
        for replica in &restarted {
            tokio::time::timeout(Duration::from_secs(30), replica.facts.loaded())
                .await
                .expect("facts loaded");
        }
        let (digests, tags_known) = restarted[0].facts.len();
        eprintln!(
            "economy: {replicas} replicas restarted with {digests} digests and {tags_known} tags from the ConfigMap"
        );
        rows.push(
            reviews(
                "restart: facts loaded from the ConfigMap",
                &restarted.iter().map(|r| &r.inspector).collect::<Vec<_>>(),
                &tags,
                &proxy,
                &registry,
                restart,
                false,
            )
            .await,
        );
        for replica in restarted {
            replica.stop().await;
        }
        rows
    });

    println!();
    println!(
        "registry economy: {replicas} replica(s), {TAGS} tags, one review per tag per second, cache.tagTtl {}, one tag moved every {}s",
        humantime::format_duration(tag_ttl),
        MOVE_EVERY.as_secs()
    );
    println!(
        "{:<46} {:>7} {:>9} {:>8} {:>7} {:>13} {:>14} {:>6}",
        "phase",
        "seconds",
        "tag moves",
        "lookups",
        "failed",
        "manifest GETs",
        "manifest HEADs",
        "other"
    );
    for row in rows {
        println!(
            "{:<46} {:>7} {:>9} {:>8} {:>7} {:>13} {:>14} {:>6}",
            row.phase,
            row.seconds,
            row.moves,
            row.lookups,
            row.failed,
            row.manifest_gets,
            row.manifest_heads,
            row.other
        );
    }
}

/// One archway replica's lookups: an inspector and its facts, which
/// `configmap::run` keeps in step with the ConfigMap (writing it when
/// `leading`) until `stop`; the first replica is served to the others,
/// which ask it for digests they do not know (`lookup::peer`), as the
/// leader is.
struct Replica {
    inspector: Inspector,
    facts: Arc<Facts>,
    stop: tokio::sync::watch::Sender<bool>,
    sync: tokio::task::JoinHandle<()>,
    served: Option<ServedReplica>,
    _leader: tokio::sync::watch::Sender<Option<String>>,
}

impl Replica {
    /// `count` replicas, the first one the leader (writing the facts when
    /// `facts_leading`), the others asking it.
    async fn start_all(
        client: &kube::Client,
        target: &Target,
        settings: &RegistrySettings,
        cache: &CacheSettings,
        count: usize,
        facts_leading: bool,
        keys: &PeerKeys,
    ) -> Vec<Replica> {
        let mut replicas =
            vec![Replica::start(client, target, settings, cache, facts_leading, keys, None).await];
        let address = replicas[0].served.as_ref().map(ServedReplica::address);
        for _ in 1..count {
            replicas.push(
                Replica::start(
                    client,
                    target,
                    settings,
                    cache,
                    false,
                    keys,
                    address.clone(),
                )
                .await,
            );
        }
        replicas
    }

    async fn start(
        client: &kube::Client,
        target: &Target,
        settings: &RegistrySettings,
        cache: &CacheSettings,
        leading: bool,
        keys: &PeerKeys,
        leader: Option<String>,
    ) -> Replica {
        let facts = Arc::new(Facts::new(cache.facts.max_bytes));
        let inspector = Inspector::with_facts(
            RegistryClient::new(settings.clone()).unwrap(),
            cache.clone(),
            facts.clone(),
        );
        let asks_another = leader.is_some();
        let (inspector, leader) = keys.replica(inspector, leader);
        let served = match asks_another {
            true => None,
            false => Some(ServedReplica::start(inspector.clone(), keys).await),
        };
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let sync = tokio::spawn(configmap::run(
            client.clone(),
            facts.clone(),
            target.clone(),
            tokio::sync::watch::channel(leading).1,
            Arc::default(),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ));
        Replica {
            inspector,
            facts,
            stop,
            sync,
            served,
            _leader: leader,
        }
    }

    /// Stops its `configmap::run` (a leader writes what it has left).
    async fn stop(self) {
        self.stop.send_replace(true);
        self.sync.await.unwrap();
        if let Some(served) = self.served {
            served.stop().await;
        }
    }
}

/// Looks every tag up once a second for `duration`, as reviews in
/// `NAMESPACES` namespaces would, each second on the next of `replicas`
/// (tag by tag, so each replica sees every tag in turn), moving a tag every
/// `MOVE_EVERY` when `moves`; what the registry was asked meanwhile.
async fn reviews(
    phase: &'static str,
    replicas: &[&Inspector],
    tags: &[ImageRef],
    proxy: &CountingProxy,
    registry: &Arc<Registry>,
    duration: Duration,
    moves: bool,
) -> Row {
    proxy.reset();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut next_move = started + MOVE_EVERY / 2;
    let (mut moved, mut lookups, mut failed) = (0, 0, 0);
    let mut second = 0;
    while started.elapsed() < duration {
        second += 1;
        tick.tick().await;
        if moves && Instant::now() >= next_move {
            let registry = registry.clone();
            let (i, salt) = (moved % TAGS, format!("{phase}-move-{moved}"));
            tokio::task::spawn_blocking(move || push(&registry, &format!("app-{i}:v1"), &salt))
                .await
                .unwrap();
            moved += 1;
            next_move += MOVE_EVERY;
        }
        let round = tags.iter().enumerate().map(|(i, tag)| async move {
            let inspector = replicas[(i + second) % replicas.len()];
            let requester = inspector.requester(&format!("team-{}", i % NAMESPACES));
            inspector
                .inspect_for(tag, &Credential::Anonymous, &requester)
                .await
                .0
        });
        for lookup in futures::future::join_all(round).await {
            lookups += 1;
            if let Err(error) = lookup {
                failed += 1;
                eprintln!("economy: {phase}: {error}");
            }
        }
    }
    // Revalidations started by the last round finish.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let is = |method: &'static str| move |r: &Recorded| r.is_manifest() && r.method == method;
    let (manifest_gets, manifest_heads) = (proxy.count(is("GET")), proxy.count(is("HEAD")));
    let row = Row {
        phase,
        seconds: started.elapsed().as_secs(),
        moves: moved,
        lookups,
        failed,
        manifest_gets,
        manifest_heads,
        other: proxy.requests().len() - manifest_gets - manifest_heads,
    };
    eprintln!(
        "economy: {phase}: {} manifest GETs, {} HEADs, {} tag moves",
        row.manifest_gets, row.manifest_heads, row.moves
    );
    row
}

//! The few OCI distribution requests archway needs: one manifest and at most
//! one config blob per image, with the bearer-token and basic-auth flows
//! registries use.
//!
//! Why not `oci_client::Client` for the HTTP: it reads whole bodies with no
//! size limit, builds its own HTTP client (so no resolver guard or redirect
//! policy can be set), and keeps the first credentials it sees per registry,
//! where archway needs one answer per (image, credential). The requests
//! are these few, on the same reqwest it uses; references are read by
//! archway's own parser, as the kubelet reads them (see `image.rs`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Method, Response, StatusCode};
use serde::Deserialize;

use super::credentials::{Credential, Keyring};
use super::limits::{BodyBudget, BodyCharge, GetBudget, LookupLimits, PullsLeft, Turn};
use super::manifest::{self, MANIFEST_ACCEPT, ManifestContent};
use super::network::{
    ConnectionGuard, DEFAULT_TRUSTED_HOSTS, GuardedResolver, NetworkGuard, Refusal,
};
use super::{ImagePlatforms, InspectError, ManifestShape};
use crate::lookup::image::{DigestAlgorithm, ImageRef};
use crate::metrics::{Label, Metrics, RegistryNames, status_label};

/// How the client talks to registries.
#[derive(Clone, Debug)]
pub struct RegistrySettings {
    pub connect_timeout: Duration,
    /// For each request, from sending to the last byte of the body.
    pub request_timeout: Duration,
    /// Registries (as written in references, `host[:port]`) reached over
    /// plain HTTP. Never the default: only what the configuration names.
    pub insecure_hosts: Vec<String>,
    /// Extra CA certificates (PEM) trusted next to the system's.
    pub extra_ca_pems: Vec<Vec<u8>>,
    /// Registry -> mirrors tried first, in order (a pull-through cache for
    /// docker.io, say). The registry itself is tried last.
    pub mirrors: BTreeMap<String, Vec<String>>,
    /// Credentials of the cluster itself (node-level, mirrors); a pod's own
    /// pull secrets come first.
    pub keyring: Keyring,
    pub max_manifest_bytes: usize,
    pub max_token_bytes: usize,
    /// The slowest a response body may come: after its first second, each
    /// second must bring at least this many bytes (or the end), or the
    /// answer is given up (`InspectError::TooSlow`). 0: no minimum.
    pub min_body_bytes_per_second: u64,
    /// Lookups asking registries at once, in total and per host; more wait
    /// their turn (first come, first served; a review's own lookups go a
    /// few at a time, see `cache::Requester`).
    pub max_concurrent_lookups: usize,
    pub max_concurrent_lookups_per_host: usize,
    /// Registry (as written in references, or a mirror's host) -> manifest
    /// GETs it may be sent per hour. Docker Hub counts each against the
    /// pulls of everyone behind the same address; HEADs it does not count.
    pub manifest_gets_per_hour: BTreeMap<String, u32>,
    /// Pulls left (as a registry's `ratelimit-remaining` says) below which
    /// archway sends it no manifest GET: they are the kubelets'.
    pub pull_reserve: u64,
    /// Where connections may go. Hosts named in `insecure_hosts` and
    /// `mirrors` are added to its allowed hosts: the configuration names them.
    pub guard: NetworkGuard,
    /// Where the client, and the cache and reviewer built on it, record.
    /// The default is a registry of its own, which nothing serves:
    /// `archway serve` puts the one `/metrics` renders here.
    pub metrics: Arc<Metrics>,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            insecure_hosts: Vec::new(),
            extra_ca_pems: Vec::new(),
            mirrors: BTreeMap::new(),
            keyring: Keyring::default(),
            max_manifest_bytes: 4 * 1024 * 1024,
            max_token_bytes: 1024 * 1024,
            min_body_bytes_per_second: 1024,
            max_concurrent_lookups: 64,
            max_concurrent_lookups_per_host: 16,
            manifest_gets_per_hour: default_manifest_gets_per_hour(),
            pull_reserve: DEFAULT_PULL_RESERVE,
            guard: NetworkGuard {
                trusted_hosts: DEFAULT_TRUSTED_HOSTS
                    .iter()
                    .map(|h| h.to_string())
                    .collect(),
                ..NetworkGuard::default()
            },
            metrics: Arc::default(),
        }
    }
}

/// Pulls kept for the kubelets by default: Docker Hub's anonymous limit is
/// 100 per 6 h per address, and the nodes pull through the same address.
pub const DEFAULT_PULL_RESERVE: u64 = 20;

/// Docker Hub's budget: 20 GETs an hour per replica. Its anonymous limit
/// is 100 pulls per 6 hours per address, shared with the kubelets; with
/// tags revalidated by HEAD, archway's GETs are the images it has not
/// seen, and this keeps a burst of those from taking the kubelets' share.
pub fn default_manifest_gets_per_hour() -> BTreeMap<String, u32> {
    BTreeMap::from([("docker.io".to_string(), 20)])
}

/// Digests whose platforms a lookup already knows: a HEAD of the manifest
/// that names one of them spares the GET.
pub type Known<'a> = &'a (dyn Fn(&str) -> Option<Arc<ImagePlatforms>> + Send + Sync);

/// Who is asked, after a HEAD named a digest `Known` does not hold and
/// before the GET of the tag: the leader (a follower's), or the cache by
/// the digest (the leader's own, which every replica's question about
/// that digest joins). `None`: nobody knew, the GET follows. `Some(Err)`:
/// the digest's own lookup failed, and the tag's would fail alike.
pub type ByDigest<'a> = &'a (
        dyn Fn(
    String,
) -> futures::future::BoxFuture<'a, Option<Result<ImagePlatforms, InspectError>>>
            + Send
            + Sync
    );

/// How long a host that answered a manifest HEAD without a usable digest
/// (or refused HEAD) is sent the GET straight away.
const NO_HEAD_DIGEST_FOR: Duration = Duration::from_secs(3600);

/// Cheap to clone: clones share connections and tokens.
#[derive(Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    settings: Arc<RegistrySettings>,
    guard: Arc<NetworkGuard>,
    /// Authorization header values by (endpoint, repository, credential):
    /// a bearer token is scoped to a repository, and one credential's token
    /// must never be used for another's request.
    auth: moka::future::Cache<AuthKey, StoredAuth>,
    /// Hosts that answered 429, and until when no request goes to them.
    /// Rate limits are per client (Docker Hub counts per address), so the
    /// whole host backs off, not just the image that was refused.
    backoff: Arc<std::sync::Mutex<BTreeMap<String, std::time::Instant>>>,
    /// Hosts whose manifest HEADs name no digest, and until when they are
    /// not asked one (`NO_HEAD_DIGEST_FOR`); bounded like `backoff`.
    no_head_digest: Arc<std::sync::Mutex<BTreeMap<String, Instant>>>,
    get_budget: Arc<GetBudget>,
    /// What registries said is left of their pull limits.
    pulls_left: Arc<PullsLeft>,
    pull_reserve: u64,
    limits: Arc<LookupLimits>,
    /// Registry response bytes held at once, charged as they arrive: 64
    /// lookups reading 4 MiB manifests would otherwise hold 256 MiB.
    bodies: Arc<BodyBudget>,
    /// How hosts are named in metrics.
    names: Arc<RegistryNames>,
}

/// Hosts backing off at once; a registry answering 429 under thousands of
/// names gets no more entries than this.
const MAX_BACKING_OFF: usize = 1024;

/// Registry response bytes held at once; at least two of the largest
/// bodies, as one host or one namespace may hold half of it.
const BODY_BYTES_IN_FLIGHT: usize = 8 * 1024 * 1024;

/// The first second of a body is not held to the minimum rate: it covers
/// the registry's time to start sending and TCP's slow start.
const BODY_GRACE: Duration = Duration::from_secs(1);

/// The smallest allocation for a body of unknown length; it then doubles.
const FIRST_BODY_CAPACITY: usize = 8 * 1024;

/// How long a host backs off after a 429 without `Retry-After`, and the
/// most a `Retry-After` is believed.
const DEFAULT_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct AuthKey {
    endpoint: String,
    repository: String,
    credential: String,
}

/// An `Authorization` header value and how long it may be reused.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredAuth {
    header: Arc<str>,
    lifetime: Duration,
}

impl StoredAuth {
    fn new(header: String, lifetime: Duration) -> Self {
        StoredAuth {
            header: header.into(),
            lifetime,
        }
    }
}

struct AuthExpiry;

impl moka::Expiry<AuthKey, StoredAuth> for AuthExpiry {
    fn expire_after_create(
        &self,
        _: &AuthKey,
        value: &StoredAuth,
        _: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.lifetime)
    }
}

/// The most bytes of authorization headers kept: a registry may send
/// tokens of up to `max_token_bytes` for every repository it is asked for.
const MAX_AUTH_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// What one stored header weighs against `MAX_AUTH_CACHE_BYTES`: its key
/// and value, and moka's own bookkeeping.
fn auth_weight(key: &AuthKey, value: &StoredAuth) -> u32 {
    let bytes =
        key.endpoint.len() + key.repository.len() + key.credential.len() + value.header.len() + 128;
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct ClientBuildError(String);

impl RegistryClient {
    pub fn new(settings: RegistrySettings) -> Result<Self, ClientBuildError> {
        let mut guard = settings.guard.clone();
        guard
            .allowed_hosts
            .extend(settings.insecure_hosts.iter().cloned());
        guard
            .allowed_hosts
            .extend(settings.mirrors.values().flatten().cloned());
        let guard = Arc::new(guard);
        let redirect_guard = guard.clone();
        let insecure = settings.insecure_hosts.clone();
        let redirects = reqwest::redirect::Policy::custom(move |attempt| {
            match check_redirect(
                &redirect_guard,
                &insecure,
                attempt.url(),
                attempt.previous(),
            ) {
                Ok(()) => attempt.follow(),
                Err(refusal) => attempt.error(refusal),
            }
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .read_timeout(settings.request_timeout)
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION")))
            // Proxy variables of the process must not reroute registry
            // traffic unseen; mirrors are the configured way to do that.
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                guard: guard.clone(),
            }))
            .connector_layer(ConnectionGuard {
                guard: guard.clone(),
            })
            .redirect(redirects);
        let mut certs = Vec::new();
        for pem in &settings.extra_ca_pems {
            let found = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientBuildError(format!("extra CA certificates: {e}")))?;
            if found.is_empty() {
                return Err(ClientBuildError(
                    "extra CA file holds no PEM certificate".into(),
                ));
            }
            certs.extend(found);
        }
        builder = builder.tls_certs_merge(certs);
        let http = builder
            .build()
            .map_err(|e| ClientBuildError(format!("HTTP client: {e}")))?;
        let configured = settings
            .insecure_hosts
            .iter()
            .chain(settings.mirrors.keys())
            .chain(settings.mirrors.values().flatten())
            .chain(&guard.allowed_hosts)
            .map(String::as_str);
        let names = Arc::new(RegistryNames::new(configured));
        let limits = Arc::new(LookupLimits::new(
            settings.max_concurrent_lookups,
            settings.max_concurrent_lookups_per_host,
        ));
        let largest_body = settings.max_manifest_bytes.max(settings.max_token_bytes);
        let in_flight = BODY_BYTES_IN_FLIGHT.max(2 * largest_body);
        let get_budget = GetBudget::new(&settings.manifest_gets_per_hour, |registry| {
            // `docker.io` is asked at registry-1.docker.io: one budget.
            format!("{registry}/budget")
                .parse::<ImageRef>()
                .map_or(registry.to_string(), |image| image.api_host().to_string())
        });
        Ok(RegistryClient {
            http,
            names,
            limits,
            get_budget: Arc::new(get_budget),
            pulls_left: Arc::default(),
            pull_reserve: settings.pull_reserve,
            no_head_digest: Arc::default(),
            bodies: BodyBudget::new(in_flight, in_flight / 2),
            settings: Arc::new(settings),
            guard,
            backoff: Arc::default(),
            auth: moka::future::Cache::builder()
                .max_capacity(MAX_AUTH_CACHE_BYTES)
                .weigher(auth_weight)
                .expire_after(AuthExpiry)
                .build(),
        })
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Where this client's requests are counted.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.settings.metrics
    }

    /// The platforms `image` publishes: from the index if it is one,
    /// otherwise from the single manifest's config blob. Mirrors first,
    /// then the registry itself; the registry's error is the one reported.
    pub async fn inspect(
        &self,
        image: &ImageRef,
        credential: &Credential,
    ) -> Result<ImagePlatforms, InspectError> {
        self.inspect_in_turn(image, credential, &Turn::anonymous(), None, None)
            .await
    }

    /// `inspect`, waiting for the registry's places in `turn`: a review's
    /// lookups take turns with other namespaces' and other reviews'. With
    /// `known`, the manifest is first asked with a HEAD (free where Docker
    /// Hub counts GETs); a digest `known` has platforms for is the answer,
    /// and only another one costs the GET. With `by_digest` as well, a
    /// digest `known` does not hold is asked there before the tag's GET.
    pub async fn inspect_in_turn(
        &self,
        image: &ImageRef,
        credential: &Credential,
        turn: &Turn,
        known: Option<Known<'_>>,
        by_digest: Option<ByDigest<'_>>,
    ) -> Result<ImagePlatforms, InspectError> {
        let mut last_error = None;
        for endpoint in self.endpoints(image) {
            let permit = self.limits.acquire(&endpoint.host, turn).await;
            let result = self
                .inspect_at(&endpoint, image, credential, turn, known, by_digest)
                .await;
            drop(permit);
            match result {
                Ok(found) => return Ok(found),
                Err(error) => {
                    tracing::debug!(image = %image, endpoint = %endpoint.host, %error, "registry endpoint failed");
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.expect("an image always has at least its own registry as endpoint"))
    }

    fn endpoints(&self, image: &ImageRef) -> Vec<Endpoint> {
        let mirrors = self
            .settings
            .mirrors
            .get(image.registry())
            .into_iter()
            .flatten();
        mirrors
            .map(|mirror| Endpoint {
                scheme: self.scheme_for(mirror),
                host: mirror.clone(),
                mirror: true,
            })
            .chain(std::iter::once(Endpoint {
                scheme: self.scheme_for(image.registry()),
                host: image.api_host().to_string(),
                mirror: false,
            }))
            .collect()
    }

    fn scheme_for(&self, registry: &str) -> &'static str {
        if self.settings.insecure_hosts.iter().any(|h| h == registry) {
            "http"
        } else {
            "https"
        }
    }

    async fn inspect_at(
        &self,
        endpoint: &Endpoint,
        image: &ImageRef,
        credential: &Credential,
        turn: &Turn,
        known: Option<Known<'_>>,
        by_digest: Option<ByDigest<'_>>,
    ) -> Result<ImagePlatforms, InspectError> {
        // A pod's credential belongs to the image's registry; a mirror gets
        // only the cluster's own credential for it.
        let credential = if endpoint.mirror {
            self.settings
                .keyring
                .lookup_host(&endpoint.host, image.repository())
        } else if credential.is_anonymous() {
            self.settings.keyring.lookup(image)
        } else {
            credential.clone()
        };
        let repository = image.repository();
        let reference = image.manifest_reference();
        if let Some(known) = known.filter(|_| self.heads_name_digests(&endpoint.host)) {
            let named = self
                .head_manifest(endpoint, repository, reference, &credential, turn)
                .await?;
            let digest = match named {
                Some(digest) => Some(digest),
                None => {
                    self.remember_no_head_digest(&endpoint.host);
                    // A digest reference answered 2xx exists as named.
                    image.digest().map(str::to_string)
                }
            };
            // A digest reference is the content it names; a HEAD that says
            // otherwise is settled by the GET, which checks the bytes.
            let digest = digest.filter(|digest| image.digest().is_none_or(|asked| asked == digest));
            if let Some(found) = digest.as_deref().and_then(known) {
                return Ok(ImagePlatforms {
                    endpoint: endpoint.host.clone(),
                    ..(*found).clone()
                });
            }
            // Another replica may know it, or be looking it up now: the
            // registry is asked once, by the leader, for all of them.
            if let (Some(by_digest), Some(digest)) =
                (by_digest, digest.filter(|_| image.digest().is_none()))
                && let Some(found) = by_digest(digest).await
            {
                return found;
            }
        }
        (self.pulls_left)
            .check(&endpoint.host, self.pull_reserve, Instant::now())
            .map_err(|kept| {
                self.metrics()
                    .pull_reserve_kept(&self.names.label(&endpoint.host));
                InspectError::PullReserve {
                    registry: endpoint.host.clone(),
                    remaining: kept.remaining,
                    reserve: self.pull_reserve,
                    retry_in: kept.retry_in,
                }
            })?;
        self.get_budget
            .take(&endpoint.host, Instant::now())
            .map_err(|spent| {
                self.metrics()
                    .get_budget_spent(&self.names.label(&endpoint.host));
                InspectError::GetBudgetSpent {
                    registry: spent.registry,
                    per_hour: spent.per_hour,
                    retry_in: spent.retry_in,
                }
            })?;
        let manifest = self
            .get(
                endpoint,
                repository,
                &format!("manifests/{reference}"),
                MANIFEST_ACCEPT,
                &credential,
                turn,
            )
            .await?;
        // A digest is checked with its own algorithm (sha512 names content
        // as validly as sha256); a tag's answer is named by its sha256.
        let algorithm = image.digest_algorithm().unwrap_or(DigestAlgorithm::Sha256);
        let body_digest = manifest::digest_of(algorithm, &manifest.body);
        if let Some(expected) = image.digest().filter(|expected| *expected != body_digest) {
            return Err(InspectError::DigestMismatch {
                host: endpoint.host.clone(),
                expected: expected.to_string(),
                actual: body_digest,
            });
        }
        let content = manifest::parse_manifest(manifest.content_type.as_deref(), &manifest.body)
            .map_err(|error| InspectError::Manifest {
                host: endpoint.host.clone(),
                error,
            })?;
        // Read: its bytes go back to the budget before the config is asked.
        drop(manifest);
        let (platforms, shape) = match content {
            ManifestContent::Index(platforms) => (platforms, ManifestShape::Index),
            ManifestContent::Image { config_digest } => {
                let config = self
                    .get(
                        endpoint,
                        repository,
                        &format!("blobs/{config_digest}"),
                        "*/*",
                        &credential,
                        turn,
                    )
                    .await?;
                let algorithm = manifest::validate_digest(&config_digest).map_err(|error| {
                    InspectError::Manifest {
                        host: endpoint.host.clone(),
                        error,
                    }
                })?;
                let actual = manifest::digest_of(algorithm, &config.body);
                if actual != config_digest {
                    return Err(InspectError::DigestMismatch {
                        host: endpoint.host.clone(),
                        expected: config_digest,
                        actual,
                    });
                }
                let platform = manifest::parse_config(&config.body).map_err(|error| {
                    InspectError::Manifest {
                        host: endpoint.host.clone(),
                        error,
                    }
                })?;
                ([platform].into_iter().collect(), ManifestShape::Single)
            }
        };
        Ok(ImagePlatforms {
            digest: body_digest,
            platforms: platforms.into(),
            shape,
            endpoint: endpoint.host.clone(),
        })
    }

    /// Sends one request, unless the host is backing off after a 429, and
    /// records it in the metrics by registry and result (the status code,
    /// or why there was none).
    async fn send(
        &self,
        host: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Response, InspectError> {
        let request = request.build().map_err(|e| transport_error(host, e))?;
        let now = std::time::Instant::now();
        let until = self
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(host)
            .copied();
        if let Some(until) = until.filter(|until| *until > now) {
            self.metrics().registry_request(
                &self.names.label(host),
                Label::fixed("backing_off"),
                Duration::ZERO,
            );
            return Err(InspectError::RateLimited {
                host: host.to_string(),
                retry_after: Some(until - now),
            });
        }
        let is_manifest = request.url().path().contains("/manifests/");
        if is_manifest {
            let method = if request.method() == Method::HEAD {
                "HEAD"
            } else {
                "GET"
            };
            self.metrics()
                .registry_manifest_request(&self.names.label(host), method);
        }
        let result = self
            .http
            .execute(request)
            .await
            .map_err(|e| transport_error(host, e));
        let label = match &result {
            Ok(response) => status_label(response.status().as_u16()),
            Err(error) => Label::fixed(error.metric_label()),
        };
        self.metrics()
            .registry_request(&self.names.label(host), label, now.elapsed());
        // Docker Hub says what is left of its pull limit on every manifest
        // answer, HEADs included.
        if let Ok(response) = &result
            && is_manifest
            && let Some(value) =
                (response.headers().get("ratelimit-remaining")).and_then(|v| v.to_str().ok())
            && let Some(remaining) = self.pulls_left.record(host, value, now)
        {
            self.metrics()
                .pulls_remaining(&self.names.label(host), remaining);
        }
        if let Ok(response) = &result
            && response.status() == StatusCode::TOO_MANY_REQUESTS
        {
            let wait = retry_after(response.headers())
                .unwrap_or(DEFAULT_BACKOFF)
                .min(MAX_BACKOFF);
            let mut backoff = self.backoff.lock().unwrap_or_else(|e| e.into_inner());
            backoff.retain(|_, until| *until > now);
            if backoff.len() < MAX_BACKING_OFF || backoff.contains_key(host) {
                backoff.insert(host.to_string(), now + wait);
            }
        }
        result
    }

    /// GET `/v2/<repository>/<path>`, authenticating once on a 401.
    async fn get(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        path: &str,
        accept: &str,
        credential: &Credential,
        turn: &Turn,
    ) -> Result<Fetched, InspectError> {
        let (response, sent_credentials) = self
            .send_authenticated(
                Method::GET,
                endpoint,
                repository,
                path,
                accept,
                credential,
                turn,
            )
            .await?;
        self.finish(endpoint, repository, response, sent_credentials, turn)
            .await
    }

    /// HEAD of a manifest, with the GET's `Accept` (the digest named is
    /// that of the manifest the GET would get): the digest the registry
    /// names it by (`Docker-Content-Digest`), or `None` when it answers
    /// without a usable one or does not take HEAD (some answer 405).
    async fn head_manifest(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        reference: &str,
        credential: &Credential,
        turn: &Turn,
    ) -> Result<Option<String>, InspectError> {
        let (response, sent_credentials) = self
            .send_authenticated(
                Method::HEAD,
                endpoint,
                repository,
                &format!("manifests/{reference}"),
                MANIFEST_ACCEPT,
                credential,
                turn,
            )
            .await?;
        let status = response.status();
        if status.is_success() {
            let digest = response
                .headers()
                .get("docker-content-digest")
                .and_then(|value| value.to_str().ok())
                .map(str::trim)
                .filter(|digest| manifest::validate_digest(digest).is_ok())
                .map(str::to_string);
            return Ok(digest);
        }
        // The registry's answer about the manifest (or itself) stands; any
        // other refusal is of the HEAD, and the GET will tell.
        let about_the_manifest = matches!(
            status,
            StatusCode::NOT_FOUND
                | StatusCode::UNAUTHORIZED
                | StatusCode::FORBIDDEN
                | StatusCode::TOO_MANY_REQUESTS
        );
        if about_the_manifest || status.is_server_error() {
            return Err(status_error(
                endpoint,
                repository,
                &response,
                sent_credentials,
            ));
        }
        Ok(None)
    }

    /// Whether `host`'s manifest HEADs are worth sending: not when one
    /// lately named no digest.
    fn heads_name_digests(&self, host: &str) -> bool {
        let hosts = self
            .no_head_digest
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hosts.get(host).is_none_or(|until| *until <= Instant::now())
    }

    fn remember_no_head_digest(&self, host: &str) {
        tracing::debug!(
            host,
            "manifest HEAD named no digest: asking with GET for a while"
        );
        let now = Instant::now();
        let mut hosts = self
            .no_head_digest
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        hosts.retain(|_, until| *until > now);
        if hosts.len() < MAX_BACKING_OFF || hosts.contains_key(host) {
            hosts.insert(host.to_string(), now + NO_HEAD_DIGEST_FOR);
        }
    }

    /// Sends `method` `/v2/<repository>/<path>`, authenticating once on a
    /// 401: the response, and whether credentials went with it.
    #[allow(clippy::too_many_arguments)]
    async fn send_authenticated(
        &self,
        method: Method,
        endpoint: &Endpoint,
        repository: &str,
        path: &str,
        accept: &str,
        credential: &Credential,
        turn: &Turn,
    ) -> Result<(Response, bool), InspectError> {
        let url = reqwest::Url::parse(&format!(
            "{}://{}/v2/{repository}/{path}",
            endpoint.scheme, endpoint.host
        ))
        .map_err(|_| InspectError::InvalidReference(format!("{} is not a host", endpoint.host)))?;
        let key = AuthKey {
            endpoint: format!("{}://{}", endpoint.scheme, endpoint.host),
            repository: repository.to_string(),
            credential: credential.fingerprint(),
        };
        let mut authorization = match credential {
            Credential::Bearer(token) => {
                Some(StoredAuth::new(format!("Bearer {token}"), Duration::ZERO))
            }
            _ => self.auth.get(&key).await,
        };
        self.guard
            .check_url(&url)
            .await
            .map_err(|refusal| refused(&endpoint.host, refusal))?;
        for attempt in 0..2 {
            let mut request = self
                .http
                .request(method.clone(), url.clone())
                .header(ACCEPT, accept)
                .timeout(self.settings.request_timeout);
            if let Some(value) = &authorization {
                request = request.header(AUTHORIZATION, &*value.header);
            }
            let response = self.send(&endpoint.host, request).await?;
            let status = response.status();
            if status == StatusCode::UNAUTHORIZED && attempt == 0 {
                let challenge = response
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let value = self
                    .authenticate(endpoint, repository, credential, challenge.as_deref(), turn)
                    .await?;
                self.auth.insert(key.clone(), value.clone()).await;
                authorization = Some(value);
                continue;
            }
            let sent_credentials = authorization.is_some() && !credential.is_anonymous();
            return Ok((response, sent_credentials));
        }
        Err(InspectError::Unauthorized {
            host: endpoint.host.clone(),
            repository: repository.to_string(),
            authenticated: !credential.is_anonymous(),
        })
    }

    async fn finish(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        response: Response,
        sent_credentials: bool,
        turn: &Turn,
    ) -> Result<Fetched, InspectError> {
        if !response.status().is_success() {
            return Err(status_error(
                endpoint,
                repository,
                &response,
                sent_credentials,
            ));
        }
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let (body, held) = self
            .read_limited(
                response,
                self.settings.max_manifest_bytes,
                &endpoint.host,
                turn,
                "manifest or config",
            )
            .await?;
        Ok(Fetched {
            content_type,
            body,
            _held: held,
        })
    }

    /// Answers a 401's challenge: a bearer token from the realm (with the
    /// credential, if any, as Basic), or Basic directly.
    async fn authenticate(
        &self,
        endpoint: &Endpoint,
        repository: &str,
        credential: &Credential,
        challenge: Option<&str>,
        turn: &Turn,
    ) -> Result<StoredAuth, InspectError> {
        let unauthorized = || InspectError::Unauthorized {
            host: endpoint.host.clone(),
            repository: repository.to_string(),
            authenticated: !credential.is_anonymous(),
        };
        let challenge = challenge.map(Challenge::parse).ok_or_else(unauthorized)?;
        match challenge {
            Challenge::Basic => match credential {
                Credential::Basic { username, password } => Ok(StoredAuth::new(
                    format!("Basic {}", basic_value(username, password)),
                    Duration::from_secs(3600),
                )),
                _ => Err(unauthorized()),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| format!("repository:{repository}:pull"));
                let token = self
                    .fetch_token(
                        endpoint,
                        &realm,
                        service.as_deref(),
                        &scope,
                        credential,
                        turn,
                    )
                    .await?;
                Ok(StoredAuth::new(
                    format!("Bearer {}", token.value),
                    token.lifetime,
                ))
            }
            Challenge::Other => Err(unauthorized()),
        }
    }

    /// A bearer token for `scope` from the registry's realm.
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        credential: &Credential,
        turn: &Turn,
    ) -> Result<Token, InspectError> {
        let url = self.token_url(endpoint, realm, service, scope).await?;
        let mut request = self.http.get(url).timeout(self.settings.request_timeout);
        if let Credential::Basic { username, password } = credential {
            request = request.header(
                AUTHORIZATION,
                format!("Basic {}", basic_value(username, password)),
            );
        }
        let response = self.send(&endpoint.host, request).await?;
        let status = response.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            return Err(InspectError::RateLimited {
                host: endpoint.host.clone(),
                retry_after: retry_after(response.headers()),
            });
        }
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(InspectError::Unauthorized {
                host: endpoint.host.clone(),
                repository: scope.to_string(),
                authenticated: !credential.is_anonymous(),
            });
        }
        if !status.is_success() {
            return Err(token_error(
                endpoint,
                format!("token endpoint answered HTTP {}", status.as_u16()),
            ));
        }
        let (body, _held) = self
            .read_limited(
                response,
                self.settings.max_token_bytes,
                &endpoint.host,
                turn,
                "token response",
            )
            .await?;
        parse_token(&body).map_err(|reason| token_error(endpoint, reason.into()))
    }

    /// The realm's URL with the service and scope asked for, once the realm
    /// is known to be a place the credential may go.
    async fn token_url(
        &self,
        endpoint: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<reqwest::Url, InspectError> {
        let mut url = reqwest::Url::parse(realm)
            .map_err(|_| token_error(endpoint, "realm is not a URL".into()))?;
        let realm_host = authority_of(&url);
        if realm_host.is_empty() {
            return Err(token_error(endpoint, "realm has no host".into()));
        }
        // The realm gets the credential, so it must be the registry itself
        // or a host trusted to act for it (auth.docker.io for Docker Hub).
        if !self.guard.may_follow(&endpoint.host, &realm_host) {
            return Err(refused(
                &endpoint.host,
                Refusal(format!(
                    "token realm {realm_host} is another host and not trusted (registry.trustedHosts)"
                )),
            ));
        }
        let plain_allowed = self.settings.insecure_hosts.contains(&realm_host);
        if !(url.scheme() == "https" || url.scheme() == "http" && plain_allowed) {
            return Err(token_error(
                endpoint,
                format!(
                    "realm {realm_host} is not HTTPS (only hosts in registry.insecure may be plain HTTP)"
                ),
            ));
        }
        self.guard
            .check_url(&url)
            .await
            .map_err(|refusal| refused(&endpoint.host, refusal))?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(service) = service {
                query.append_pair("service", service);
            }
            query.append_pair("scope", scope);
        }
        Ok(url)
    }
}

impl RegistryClient {
    /// Reads a body of at most `limit` bytes, refusing more without
    /// reading them. Its memory is charged to the budget of bytes in flight
    /// as it grows (never ahead of what arrived, except the doubling of the
    /// buffer), waiting for room if need be. A body slower than the
    /// minimum rate is given up.
    async fn read_limited(
        &self,
        mut response: Response,
        limit: usize,
        host: &str,
        turn: &Turn,
        what: &'static str,
    ) -> Result<(Vec<u8>, BodyCharge), InspectError> {
        let too_large = || InspectError::TooLarge {
            host: host.to_string(),
            what,
            limit,
        };
        // No room before the request's end: archway's own shortage, which
        // says nothing about the registry (not remembered).
        let budget_full = || InspectError::Local {
            host: host.to_string(),
            reason: format!(
                "registry answers in memory are at archway's limit ({} MiB)",
                self.bodies.total() / (1024 * 1024)
            ),
        };
        let announced = response.content_length();
        if announced.is_some_and(|len| len > limit as u64) {
            return Err(too_large());
        }
        // hyper reads no more than an announced length.
        let most = announced.map_or(limit, |len| len as usize);
        let mut charge = self.bodies.open(host, turn.namespace.clone(), most);
        let deadline = tokio::time::Instant::now() + self.settings.request_timeout;
        let mut pace = Pace::new(self.settings.min_body_bytes_per_second);
        let mut body = Vec::new();
        loop {
            let chunk = match tokio::time::timeout_at(pace.window_end, response.chunk()).await {
                Err(_) => {
                    if !pace.window_ended() {
                        return Err(InspectError::TooSlow {
                            host: host.to_string(),
                            what,
                            bytes_per_second: pace.min_bytes_per_second,
                        });
                    }
                    continue;
                }
                Ok(chunk) => chunk.map_err(|e| transport_error(host, e))?,
            };
            let Some(chunk) = chunk else { break };
            pace.received(chunk.len());
            let needed = body.len() + chunk.len();
            if needed > most {
                return Err(too_large());
            }
            if needed > body.capacity() {
                let capacity = needed
                    .max(2 * body.capacity())
                    .max(FIRST_BODY_CAPACITY)
                    .min(most);
                let waited = charge
                    .grow_to(capacity, deadline)
                    .await
                    .map_err(|_| budget_full())?;
                // Waiting for room is archway's time, not the registry's.
                pace.window_end += waited;
                body.reserve_exact(capacity - body.len());
            }
            body.extend_from_slice(&chunk);
        }
        charge.finish(body.capacity());
        Ok((body, charge))
    }
}

/// The minimum rate of a body: its first second is free (`BODY_GRACE`),
/// then each second must bring `min_bytes_per_second`. Checked when a
/// second ends with the body waiting for bytes, so a body that keeps
/// coming is never stopped here.
struct Pace {
    min_bytes_per_second: u64,
    window_end: tokio::time::Instant,
    in_window: u64,
    in_grace: bool,
}

impl Pace {
    fn new(min_bytes_per_second: u64) -> Pace {
        Pace {
            min_bytes_per_second,
            window_end: tokio::time::Instant::now() + BODY_GRACE,
            in_window: 0,
            in_grace: true,
        }
    }

    fn received(&mut self, bytes: usize) {
        self.in_window = self.in_window.saturating_add(bytes as u64);
    }

    /// A second is over: whether it brought enough. The next one starts.
    fn window_ended(&mut self) -> bool {
        let enough = self.in_grace || self.in_window >= self.min_bytes_per_second;
        self.in_grace = false;
        self.in_window = 0;
        self.window_end += Duration::from_secs(1);
        enough
    }
}

/// A registry's answer other than success, as the failure it means.
fn status_error(
    endpoint: &Endpoint,
    repository: &str,
    response: &Response,
    sent_credentials: bool,
) -> InspectError {
    let host = endpoint.host.clone();
    match response.status() {
        StatusCode::NOT_FOUND => InspectError::NotFound {
            host,
            repository: repository.to_string(),
        },
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => InspectError::Unauthorized {
            host,
            repository: repository.to_string(),
            authenticated: sent_credentials,
        },
        StatusCode::TOO_MANY_REQUESTS => InspectError::RateLimited {
            host,
            retry_after: retry_after(response.headers()),
        },
        status => InspectError::Status {
            host,
            status: status.as_u16(),
        },
    }
}

fn token_error(endpoint: &Endpoint, reason: String) -> InspectError {
    InspectError::Token {
        host: endpoint.host.clone(),
        reason,
    }
}

/// A token endpoint's answer. Never echoed in errors: it is a secret.
fn parse_token(body: &[u8]) -> Result<Token, &'static str> {
    #[derive(Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
        expires_in: Option<u64>,
    }
    let parsed: TokenResponse =
        serde_json::from_slice(body).map_err(|_| "token response is not JSON")?;
    let value = parsed
        .token
        .or(parsed.access_token)
        .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or("token response has no usable token")?;
    // The distribution spec's default is 60 s; renew a little early.
    let lifetime = Duration::from_secs(
        parsed
            .expires_in
            .unwrap_or(60)
            .clamp(10, 3600)
            .saturating_sub(5),
    );
    Ok(Token { value, lifetime })
}

/// `host[:port]` of a URL as the client will connect to it.
fn authority_of(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        (Some(host), None) => host.to_string(),
        (None, _) => String::new(),
    }
}

struct Endpoint {
    scheme: &'static str,
    host: String,
    mirror: bool,
}

struct Fetched {
    content_type: Option<String>,
    body: Vec<u8>,
    /// The body's charge on the budget of bytes in flight, given back on
    /// drop.
    _held: BodyCharge,
}

struct Token {
    value: String,
    lifetime: Duration,
}

fn basic_value(username: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// A reqwest error as a reason a person can act on: the innermost cause
/// (connection refused, certificate unknown) without the URL.
fn transport_error(host: &str, error: reqwest::Error) -> InspectError {
    // A refusal of the guard (resolver or redirect policy) is said as such.
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        if let Some(refusal) = inner.downcast_ref::<Refusal>() {
            return refused(host, refusal.clone());
        }
        source = inner.source();
    }
    if error.is_timeout() {
        return InspectError::Timeout {
            host: host.to_string(),
        };
    }
    if let Some(local) = local_cause(&error) {
        return InspectError::Local {
            host: host.to_string(),
            reason: local.to_string(),
        };
    }
    let mut reason = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(inner) = source {
        reason = inner.to_string();
        source = inner.source();
    }
    if error.is_redirect() {
        reason = format!("redirect refused: {reason}");
    }
    InspectError::Connect {
        host: host.to_string(),
        reason,
    }
}

/// An I/O error of this process's own resources in `error`'s causes:
/// such a failure says nothing about the registry.
fn local_cause<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a std::io::Error> {
    // EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL on Linux.
    const LOCAL: [i32; 5] = [24, 23, 105, 12, 99];
    let mut source = Some(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>()
            && (io.raw_os_error().is_some_and(|code| LOCAL.contains(&code))
                || io.kind() == std::io::ErrorKind::OutOfMemory)
        {
            return Some(io);
        }
        source = inner.source();
    }
    None
}

fn refused(host: &str, refusal: Refusal) -> InspectError {
    InspectError::Refused {
        host: host.to_string(),
        reason: refusal.0,
    }
}

/// Redirects stay on the registry's host or go to a trusted one, over
/// HTTPS (plain HTTP only to an insecure host), and never to an internal
/// IP literal; at most five hops. reqwest drops the Authorization header
/// on any cross-host hop.
fn check_redirect(
    guard: &NetworkGuard,
    insecure: &[String],
    next: &reqwest::Url,
    previous: &[reqwest::Url],
) -> Result<(), Refusal> {
    if previous.len() > 5 {
        return Err(Refusal("more than 5 redirects".into()));
    }
    let to = authority_of(next);
    let from = previous.first().map(authority_of).unwrap_or_default();
    if next.scheme() != "https" && !(next.scheme() == "http" && insecure.contains(&to)) {
        return Err(Refusal(format!(
            "redirect to {}://{to} is not HTTPS",
            next.scheme()
        )));
    }
    if !guard.may_follow(&from, &to) {
        return Err(Refusal(format!(
            "redirect from {from} to {to}, another host not trusted (registry.trustedHosts)"
        )));
    }
    // An IP host is checked here, before connecting; a name goes through
    // the resolver and the connection check.
    match super::network::host_of(next) {
        Some(host @ super::network::Host::Ip(ip)) => {
            guard.check_target(&host, next.port_or_known_default().unwrap_or(443), ip)
        }
        _ => Ok(()),
    }
}

/// A `WWW-Authenticate` header, as much as the distribution flows use.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Other,
}

impl Challenge {
    fn parse(header: &str) -> Challenge {
        let header = header.trim();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Challenge::Basic;
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Challenge::Other;
        }
        let params = parse_auth_params(params);
        match params.get("realm") {
            Some(realm) if !realm.is_empty() => Challenge::Bearer {
                realm: realm.clone(),
                service: params.get("service").cloned(),
                scope: params.get("scope").cloned(),
            },
            _ => Challenge::Other,
        }
    }
}

/// `key="value", key=value` pairs; quoted values may hold commas (scopes do).
fn parse_auth_params(input: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = input.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else {
            break;
        };
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.insert(key, value);
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges_as_registries_send_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull,push""#
            ),
            Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/nginx:pull,push".into()),
            }
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=https://r.io/t, service=r.io"#),
            Challenge::Bearer {
                realm: "https://r.io/t".into(),
                service: Some("r.io".into()),
                scope: None
            }
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(Challenge::parse("Bearer service=x"), Challenge::Other);
        assert_eq!(Challenge::parse("Negotiate"), Challenge::Other);
        assert_eq!(Challenge::parse(""), Challenge::Other);
        assert_eq!(
            Challenge::parse(r#"Bearer realm="unterminated"#),
            Challenge::Bearer {
                realm: "unterminated".into(),
                service: None,
                scope: None
            }
        );
    }

    #[test]
    fn stored_auth_carries_its_lifetime() {
        let stored = StoredAuth::new("Bearer abc|def".into(), Duration::from_secs(55));
        assert_eq!(&*stored.header, "Bearer abc|def");
        let expiry = AuthExpiry;
        let key = AuthKey {
            endpoint: "e".into(),
            repository: "r".into(),
            credential: "c".into(),
        };
        assert_eq!(
            moka::Expiry::expire_after_create(&expiry, &key, &stored, std::time::Instant::now()),
            Some(Duration::from_secs(55))
        );
    }
}

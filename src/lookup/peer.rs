//! One replica asks the leader, not the registry: a follower that meets a
//! tag it knows nothing of, or whose HEAD named a digest it does not know,
//! asks the replica that holds the Lease. The leader answers from its cache
//! or facts, or looks the image up once; its own reviews of that image and
//! every follower asking at the same time join that one lookup. So a tag
//! that is new, or has just moved, costs the registry one GET whatever the
//! number of replicas: Docker Hub counts every manifest GET against the
//! pull limit the kubelets need (issue 25).
//!
//! A new tag is asked by its name, not first with a HEAD: that would put a
//! registry round trip before every cold lookup (a gated pod waits for
//! it). A tag's answer comes with how long it is still fresh at the
//! leader, and the follower keeps it no longer. A moved tag is asked by the
//! digest the follower's HEAD named (its revalidation serves the old
//! answer meanwhile, so the HEAD costs no review any time).
//!
//! What is asked is only what the facts may hold: archway's own access (no
//! pod's pull secret travels, and no answer a pod's secret obtained is
//! given). Answers are checked as the facts read from the ConfigMap are.
//!
//! Who may ask: a replica that serves the same key. The follower pins the
//! leader's certificate to its own (the replicas mount one Secret) and
//! sends a token derived from the key ([`PeerSecret`]), which the leader
//! checks; nobody else, a pod author included, can make the leader look
//! anything up this way. Whatever goes wrong (no leader known, another
//! key during a rotation, the leader gone, slow, or failing), the follower
//! asks the registry itself, as it did before: never worse than alone.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::certs::ReloadingCertificate;
use crate::lookup::cache::Inspector;
use crate::lookup::image::ImageRef;
use crate::lookup::registry::ImagePlatforms;
use crate::lookup::registry::facts::{self, WireDigest};
use crate::metrics::Metrics;

/// The leader's route, on the webhook's HTTPS listener.
pub const PATH: &str = "/peer/v1/platforms";

/// A request names one pinned reference; an answer is one digest's
/// platforms (at most `MAX_INDEX_ENTRIES` of them, each short).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

/// What a follower asks.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRequest {
    /// `registry/repository:tag`, or `registry/repository@digest` as the
    /// facts key it.
    pub image: String,
}

/// What the leader answers.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAnswer {
    /// The digest the reference resolved to.
    digest: String,
    fact: WireDigest,
    /// How much longer the leader holds a tag's answer fresh (0: it serves
    /// it while revalidating); for a digest, its whole time.
    fresh_for_ms: u64,
}

/// A leader's answer, checked.
#[derive(Debug, Clone)]
pub struct Answered {
    pub found: ImagePlatforms,
    pub fresh_for: Duration,
}

/// How a follower's question ended (`archway_peer_lookups_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asked {
    /// The leader answered: no request to the registry.
    Answered,
    /// The leader could not be reached, refused, failed or answered what
    /// archway does not accept: the follower asks the registry itself.
    Failed,
    /// The Lease changed hands while asking: the follower asks itself.
    LeaderChanged,
}

impl Asked {
    fn label(self) -> &'static str {
        match self {
            Asked::Answered => "answered",
            Asked::Failed => "failed",
            Asked::LeaderChanged => "leader_changed",
        }
    }
}

/// A follower's way to the leader.
pub struct PeerClient {
    http: reqwest::Client,
    certificate: Arc<ReloadingCertificate>,
    leader: watch::Receiver<Option<String>>,
    /// The longest a follower waits for the leader's answer: the leader's
    /// own lookup may take the registry's time (token, manifest, config).
    timeout: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("leader", &*self.leader.borrow())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// A client that asks whichever replica `leader` names, trusting only
    /// a certificate equal to the one `certificate` serves now.
    pub fn new(
        certificate: Arc<ReloadingCertificate>,
        leader: watch::Receiver<Option<String>>,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<PeerClient, String> {
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let verifier = PinnedToOwn {
            certificate: certificate.clone(),
            provider: provider.clone(),
        };
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("peer TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .http1_only()
            .no_proxy()
            .connect_timeout(Duration::from_secs(2))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("archway/", env!("CARGO_PKG_VERSION"), " peer"))
            .build()
            .map_err(|e| format!("peer HTTP client: {e}"))?;
        Ok(PeerClient {
            http,
            certificate,
            leader,
            timeout,
            metrics,
        })
    }

    /// Whether another replica leads and can be asked now.
    pub fn available(&self) -> bool {
        self.leader.borrow().is_some()
    }

    /// The platforms of `image` (at `digest`, when given), as the leader
    /// knows them or looks them up; `None` when the follower should ask the
    /// registry.
    pub async fn platforms(&self, image: &ImageRef, digest: Option<&str>) -> Option<Answered> {
        let mut leader = self.leader.clone();
        let address = leader.borrow_and_update().clone()?;
        let key = match digest {
            Some(digest) => facts::digest_key(image, digest),
            None => image.to_string(),
        };
        let (found, asked) = tokio::select! {
            found = tokio::time::timeout(self.timeout, self.ask(&address, image, &key, digest)) => {
                match found.unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout))) {
                    Ok(found) => (Some(found), Asked::Answered),
                    Err(reason) => {
                        tracing::debug!(leader = %address, image = %key, %reason, "the leader did not answer: asking the registry");
                        (None, Asked::Failed)
                    }
                }
            },
            // A closed channel (the election stopped) changes nothing.
            Ok(()) = leader.changed() => (None, Asked::LeaderChanged),
        };
        self.metrics.peer_lookup(asked.label());
        found
    }

    async fn ask(
        &self,
        address: &str,
        image: &ImageRef,
        key: &str,
        digest: Option<&str>,
    ) -> Result<Answered, String> {
        let url = format!("https://{address}{PATH}");
        let mut response = self
            .http
            .post(&url)
            .bearer_auth(self.certificate.peer_secret().token())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(
                serde_json::to_vec(&PeerRequest { image: key.into() })
                    .map_err(|e| e.to_string())?,
            )
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("HTTP {}", response.status().as_u16()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!("answer over {MAX_ANSWER_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        let answer: PeerAnswer = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        if digest.is_some_and(|asked| asked != answer.digest) {
            return Err(format!("asked {key}, answered {}", answer.digest));
        }
        // Checked as facts read from the ConfigMap are: a canonical pinned
        // reference, platforms archway would take from a registry.
        let pinned = facts::digest_key(image, &answer.digest);
        let (found, _) =
            facts::read_digest(&pinned, answer.fact).ok_or("an answer archway does not accept")?;
        Ok(Answered {
            found: (*found).clone(),
            fresh_for: Duration::from_millis(answer.fresh_for_ms),
        })
    }
}

/// Trusts exactly the certificate this replica serves: the leader is
/// reached at its pod's address, which no name in the certificate names,
/// and the replicas serve one Secret. A rotation that reaches one replica
/// before the other fails the handshake for a moment: the follower then
/// asks the registry.
#[derive(Debug)]
struct PinnedToOwn {
    certificate: Arc<ReloadingCertificate>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedToOwn {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let own = self.certificate.current();
        match own.cert.first() {
            Some(own) if own.as_ref() == end_entity.as_ref() => Ok(ServerCertVerified::assertion()),
            _ => Err(rustls::Error::General(
                "the peer serves another certificate than this replica".into(),
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The leader's side: answers a replica's question with what `inspector`
/// knows or looks up (without asking a peer in turn). Any replica answers,
/// leader or not: one asked during a change of leader answers as well as
/// the registry would.
pub async fn answer(
    inspector: &Inspector,
    certificate: &ReloadingCertificate,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let metrics = inspector.metrics().clone();
    let refuse = |status: StatusCode, reason: &'static str, message: String| {
        metrics.peer_request(reason);
        (status, message).into_response()
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if !token.is_some_and(|token| certificate.peer_secret().accepts(token)) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "only a replica serving this archway's key may ask".into(),
        );
    }
    let request: PeerRequest = match serde_json::from_slice(body) {
        Ok(request) => request,
        Err(error) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("not a peer request: {error}"),
            );
        }
    };
    let image = match request.image.parse::<ImageRef>() {
        Ok(image) if image.digest().is_none() || image.tag().is_none() => image,
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid",
                "the image must be a tag or a digest, not both".into(),
            );
        }
    };
    match inspector.inspect_for_peer(&image).await {
        (Ok(found), fresh_for) => {
            metrics.peer_request("answered");
            let answer = PeerAnswer {
                digest: found.digest.clone(),
                fact: facts::wire_digest(&found, facts::unix_millis()),
                fresh_for_ms: u64::try_from(fresh_for.as_millis()).unwrap_or(u64::MAX),
            };
            (StatusCode::OK, axum::Json(answer)).into_response()
        }
        (Err(error), _) => refuse(StatusCode::BAD_GATEWAY, "failed", error.to_string()),
    }
}

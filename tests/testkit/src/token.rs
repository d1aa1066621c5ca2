//! A minimal Docker registry token server (distribution `auth.token`).
//!
//! It checks Basic credentials on the realm request (or lets anyone in when
//! built without credentials, like anonymous pulls from a public registry) and
//! issues ES256 JWTs granting exactly the requested scopes. distribution finds
//! the verification key through the JWT `kid`, which must equal libtrust's key
//! ID of a public key in `rootcertbundle`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_ECDSA_P256_SHA256, PublicKeyData};
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
use serde_json::json;

/// One realm request as the token server saw it.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenRequest {
    pub service: Option<String>,
    pub scopes: Vec<String>,
    /// Basic user name presented, if any.
    pub account: Option<String>,
    /// Whether a token was issued.
    pub granted: bool,
}

struct Shared {
    service: String,
    issuer: String,
    credentials: Option<(String, String)>,
    key: EcdsaKeyPair,
    kid: String,
    requests: Mutex<Vec<TokenRequest>>,
    serial: AtomicU64,
}

pub struct TokenServer {
    addr: SocketAddr,
    /// PEM certificate of the signing key, for distribution's `rootcertbundle`.
    pub root_cert_pem: String,
    pub service: String,
    pub issuer: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Starts on 127.0.0.1 with its own runtime thread, so it works from sync
    /// code and outlives any single `#[tokio::test]` runtime.
    pub fn start(service: &str, issuer: &str, credentials: Option<(String, String)>) -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("token key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("token params");
        params
            .distinguished_name
            .push(DnType::CommonName, "archway test token signer");
        let cert = params.self_signed(&key).expect("token cert");
        let kid = libtrust_key_id(&key.subject_public_key_info());
        let signer = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            key.serialized_der(),
            &ring::rand::SystemRandom::new(),
        )
        .expect("ring accepts rcgen's PKCS#8");

        let shared = Arc::new(Shared {
            service: service.to_string(),
            issuer: issuer.to_string(),
            credentials,
            key: signer,
            kid,
            requests: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind token server");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("token-server".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("token server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    loop {
                        tokio::select! {
                            _ = &mut rx => break,
                            accepted = listener.accept() => {
                                let Ok((stream, _)) = accepted else { continue };
                                let shared = thread_shared.clone();
                                tokio::spawn(async move {
                                    let svc = hyper::service::service_fn(move |req| {
                                        let shared = shared.clone();
                                        async move { Ok::<_, Infallible>(handle(&shared, req)) }
                                    });
                                    let _ = hyper::server::conn::http1::Builder::new()
                                        .serve_connection(TokioIo::new(stream), svc)
                                        .await;
                                });
                            }
                        }
                    }
                });
            })
            .expect("spawn token server thread");

        TokenServer {
            addr,
            root_cert_pem: cert.pem(),
            service: service.to_string(),
            issuer: issuer.to_string(),
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn requests(&self) -> Vec<TokenRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    pub fn reset(&self) {
        self.shared.requests.lock().unwrap().clear();
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let query = req.uri().query().unwrap_or("");
    let mut service = None;
    let mut scopes = Vec::new();
    for (k, v) in parse_query(query) {
        match k.as_str() {
            "service" => service = Some(v),
            "scope" => scopes.push(v),
            _ => {}
        }
    }
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| (u.to_string(), p.to_string()))
        });
    let granted = match &shared.credentials {
        None => true,
        Some(expected) => presented.as_ref() == Some(expected),
    };
    shared.requests.lock().unwrap().push(TokenRequest {
        service: service.clone(),
        scopes: scopes.clone(),
        account: presented.as_ref().map(|(u, _)| u.clone()),
        granted,
    });
    if !granted {
        return Response::builder()
            .status(401)
            .header("content-type", "application/json")
            .header("www-authenticate", "Basic realm=\"archway-token\"")
            .body(Full::from(r#"{"details":"invalid credentials"}"#))
            .unwrap();
    }
    let subject = presented.map(|(u, _)| u).unwrap_or_default();
    let token = issue_token(shared, &subject, &scopes);
    let body = json!({"token": token, "access_token": token, "expires_in": 300});
    Response::builder()
        .header("content-type", "application/json")
        .body(Full::from(body.to_string()))
        .unwrap()
}

/// Builds and signs a JWT granting every requested scope.
fn issue_token(shared: &Shared, subject: &str, scopes: &[String]) -> String {
    let access: Vec<_> = scopes
        .iter()
        .filter_map(|scope| {
            // "repository:name/with/slashes:pull,push"; the name cannot hold ':'
            // except in the registry-type scope, so split on first and last.
            let (kind, rest) = scope.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let serial = shared.serial.fetch_add(1, Ordering::Relaxed);
    let header = json!({"typ": "JWT", "alg": "ES256", "kid": shared.kid});
    let claims = json!({
        "iss": shared.issuer,
        "sub": subject,
        "aud": shared.service,
        "exp": now + 300,
        // Allow for clock skew between the token server and the registry.
        "nbf": now - 10,
        "iat": now,
        "jti": format!("archway-{now}-{serial}"),
        "access": access,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    // FIXED signing yields r||s, which is the JWS ES256 encoding.
    let sig = shared
        .key
        .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
        .expect("sign token");
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
}

/// libtrust key ID: base32 of the first 240 bits of SHA-256(SPKI DER), in
/// colon-separated groups of four.
fn libtrust_key_id(spki_der: &[u8]) -> String {
    let hash = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let encoded = base32(&hash.as_ref()[..30]);
    encoded
        .as_bytes()
        .chunks(4)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32 without padding.
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in data {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// application/x-www-form-urlencoded query pairs.
fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

//! Serving certificates: a CA and a certificate for the webhook's Service
//! (`archway certs`, and the self-signed pair `serve` makes when none is
//! given), and the server side that loads them and reloads them when they
//! are rotated on disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A CA and a serving certificate it signed, all PEM.
pub struct GeneratedCertificates {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// The DNS names the API server may use for the webhook's Service.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

/// Makes a fresh CA and a serving certificate for `names` (DNS names or IP
/// addresses), valid for `days`.
pub fn generate(names: &[String], days: u32) -> Result<GeneratedCertificates, CertError> {
    let now = time_now();
    let until = now + time::Duration::days(days.into());

    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name = name("archway webhook CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.not_before = now - time::Duration::minutes(5);
    // The CA outlives its leaves so a rotated leaf needs no new caBundle.
    ca.not_after = now + time::Duration::days(i64::from(days) * 3);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(names.to_vec())?;
    leaf.distinguished_name = name(names.first().map(String::as_str).unwrap_or("archway"));
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.not_before = now - time::Duration::minutes(5);
    leaf.not_after = until;
    let leaf_key = KeyPair::generate()?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer)?;
    Ok(GeneratedCertificates {
        ca_pem: ca_cert.pem(),
        cert_pem: leaf_cert.pem(),
        key_pem: leaf_key.serialize_pem(),
    })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`.
pub fn write(dir: &Path, certs: &GeneratedCertificates) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    for (file, content, private) in [
        ("ca.crt", &certs.ca_pem, false),
        ("tls.crt", &certs.cert_pem, false),
        ("tls.key", &certs.key_pem, true),
    ] {
        let path = dir.join(file);
        write_file(&path, content.as_bytes(), private)
            .map_err(|source| CertError::Write { path, source })?;
    }
    Ok(())
}

fn write_file(path: &Path, content: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = private;
    options.open(path)?.write_all(content)
}

/// A certificate chain and key (PEM) as rustls serves them.
pub fn certified_key(
    cert_pem: &[u8],
    key_pem: &[u8],
    origin: &Path,
) -> Result<CertifiedKey, CertError> {
    let invalid = |reason: String| CertError::Invalid {
        path: origin.to_path_buf(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(invalid("no certificate in PEM".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| invalid(format!("private key PEM: {e}")))?;
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    // from_der checks that the key belongs to the certificate.
    CertifiedKey::from_der(chain, key, &provider).map_err(|e| invalid(format!("{e}")))
}

/// The serving certificate, swapped in place when the files change so a
/// rotation needs no restart and never drops a connection: handshakes in
/// progress keep the key they started with.
#[derive(Debug)]
pub struct ReloadingCertificate {
    current: RwLock<Arc<CertifiedKey>>,
    /// What replicas serving the same key prove to each other with
    /// (`lookup::peer`): derived from the key's bytes, which only the
    /// holders of the serving Secret can read.
    peer_secret: RwLock<PeerSecret>,
    files: Option<(PathBuf, PathBuf)>,
    seen: RwLock<Option<(SystemTime, SystemTime)>>,
}

/// A secret derived from the serving key, never the key itself: a replica
/// sends it to another only over a connection whose certificate is its own.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PeerSecret([u8; 32]);

impl std::fmt::Debug for PeerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerSecret(..)")
    }
}

impl PeerSecret {
    /// Derived from the private key's PEM, in a domain of its own.
    fn from_key(key_pem: &[u8]) -> PeerSecret {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        context.update(b"archway peer secret v1\0");
        context.update(key_pem);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(context.finish().as_ref());
        PeerSecret(secret)
    }

    /// A secret no other process shares (a key made in memory, whose
    /// bytes are not kept): peers never agree with it.
    fn unshared() -> PeerSecret {
        use ring::rand::SecureRandom;
        let mut secret = [0u8; 32];
        // Without randomness the zero secret is still one nobody is sent.
        let _ = ring::rand::SystemRandom::new().fill(&mut secret);
        PeerSecret(secret)
    }

    /// The bearer token that carries it, hex.
    pub fn token(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Whether `token` is this secret's, in time that does not depend on
    /// where it differs.
    pub fn accepts(&self, token: &str) -> bool {
        let expected = self.token();
        expected.len() == token.len()
            && expected
                .bytes()
                .zip(token.bytes())
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

impl ReloadingCertificate {
    /// A fixed certificate (the self-signed default).
    pub fn fixed(key: CertifiedKey) -> Self {
        ReloadingCertificate {
            current: RwLock::new(Arc::new(key)),
            peer_secret: RwLock::new(PeerSecret::unshared()),
            files: None,
            seen: RwLock::new(None),
        }
    }

    /// Loads the pair from disk; `reload_if_changed` picks up new files.
    pub fn from_files(cert: &Path, key: &Path) -> Result<Self, CertError> {
        let (loaded, secret) = load_pair(cert, key)?;
        Ok(ReloadingCertificate {
            current: RwLock::new(Arc::new(loaded)),
            peer_secret: RwLock::new(secret),
            files: Some((cert.to_path_buf(), key.to_path_buf())),
            seen: RwLock::new(modified(cert).zip(modified(key))),
        })
    }

    /// Reloads when the files' modification times changed and the new pair
    /// is valid. `Ok(true)` when a new certificate is now served; an invalid
    /// pair (say, half-written) keeps the old one and is tried again later.
    pub fn reload_if_changed(&self) -> Result<bool, CertError> {
        let Some((cert, key)) = &self.files else {
            return Ok(false);
        };
        let stamps = modified(cert).zip(modified(key));
        if stamps.is_none() || *self.seen.read().unwrap_or_else(|e| e.into_inner()) == stamps {
            return Ok(false);
        }
        let (loaded, secret) = load_pair(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(loaded);
        *self.peer_secret.write().unwrap_or_else(|e| e.into_inner()) = secret;
        *self.seen.write().unwrap_or_else(|e| e.into_inner()) = stamps;
        Ok(true)
    }

    pub fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The secret replicas serving this same key share.
    pub fn peer_secret(&self) -> PeerSecret {
        *self.peer_secret.read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn watches_files(&self) -> bool {
        self.files.is_some()
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_pair(cert: &Path, key: &Path) -> Result<(CertifiedKey, PeerSecret), CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let key_pem = read(key)?;
    let loaded = certified_key(&read(cert)?, &key_pem, cert)?;
    Ok((loaded, PeerSecret::from_key(&key_pem)))
}

/// The rustls server configuration: TLS 1.2 and 1.3, HTTP/2 (unless
/// `http2` is off) and HTTP/1.1; the API server uses either.
pub fn server_config(certificate: Arc<ReloadingCertificate>, http2: bool) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate);
    config.alpn_protocols = match http2 {
        true => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        false => vec![b"http/1.1".to_vec()],
    };
    config
}

/// `archway certs`: writes the CA, certificate and key to `out` and prints
/// the CA bundle for the webhook configuration. A key already there is
/// kept unless `force`: it may be the one a running webhook serves.
pub fn run(
    service: &str,
    namespace: &str,
    out: &Path,
    days: u32,
    force: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let existing: Vec<&str> = ["ca.crt", "tls.crt", "tls.key"]
        .into_iter()
        .filter(|file| out.join(file).exists())
        .collect();
    if !existing.is_empty() && !force {
        anyhow::bail!(
            "{} already has {}: pass --force to replace them",
            out.display(),
            existing.join(", ")
        );
    }
    let mut names = service_names(service, namespace);
    names.extend(["localhost".to_string(), "127.0.0.1".to_string()]);
    let certs = generate(&names, days)?;
    write(out, &certs)?;
    eprintln!(
        "wrote {0}/ca.crt, {0}/tls.crt and {0}/tls.key for {1}",
        out.display(),
        names.join(", ")
    );
    eprintln!("caBundle for the MutatingWebhookConfiguration:");
    use base64::Engine;
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(&certs.ca_pem)
    );
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads_and_names_the_service() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut names = service_names("archway", "archway");
        names.push("127.0.0.1".into());
        let certs = generate(&names, 30).unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let key = certified_key(
            certs.cert_pem.as_bytes(),
            certs.key_pem.as_bytes(),
            Path::new("t"),
        )
        .unwrap();
        assert_eq!(key.cert.len(), 1);
        assert_eq!(names[2], "archway.archway.svc");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let a = generate(&["a".into()], 1).unwrap();
        let b = generate(&["b".into()], 1).unwrap();
        assert!(
            certified_key(a.cert_pem.as_bytes(), b.key_pem.as_bytes(), Path::new("t")).is_err()
        );
        assert!(certified_key(b"", a.key_pem.as_bytes(), Path::new("t")).is_err());
    }

    #[test]
    fn reloads_only_a_valid_changed_pair() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let first = generate(&["x".into()], 1).unwrap();
        write(dir.path(), &first).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let reloading = ReloadingCertificate::from_files(&cert, &key).unwrap();
        let before = reloading.current();
        assert!(
            !reloading.reload_if_changed().unwrap(),
            "unchanged files are not reloaded"
        );
        // Half a rotation (new cert, old key) is refused; the old pair stays.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let second = generate(&["x".into()], 1).unwrap();
        std::fs::write(&cert, &second.cert_pem).unwrap();
        let secret_before = reloading.peer_secret();
        assert!(reloading.reload_if_changed().is_err());
        assert!(Arc::ptr_eq(&before, &reloading.current()));
        assert_eq!(reloading.peer_secret(), secret_before, "half a rotation");
        std::fs::write(&key, &second.key_pem).unwrap();
        assert!(reloading.reload_if_changed().unwrap());
        assert_ne!(before.cert[0], reloading.current().cert[0]);
        assert_ne!(
            reloading.peer_secret(),
            secret_before,
            "the peer secret follows the key"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn replicas_of_one_key_share_a_peer_secret_and_no_one_else_does() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), &generate(&["x".into()], 1).unwrap()).unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        let one = ReloadingCertificate::from_files(&cert, &key).unwrap();
        let two = ReloadingCertificate::from_files(&cert, &key).unwrap();
        let token = one.peer_secret().token();
        assert_eq!(token.len(), 64);
        assert!(
            two.peer_secret().accepts(&token),
            "the same key, the same secret"
        );
        assert!(!two.peer_secret().accepts(&token[..63]));
        assert!(!two.peer_secret().accepts(""));
        let mut flipped = token.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        assert!(
            !two.peer_secret()
                .accepts(std::str::from_utf8(&flipped).unwrap())
        );

        let other = generate(&["x".into()], 1).unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        write(other_dir.path(), &other).unwrap();
        let stranger = ReloadingCertificate::from_files(
            &other_dir.path().join("tls.crt"),
            &other_dir.path().join("tls.key"),
        )
        .unwrap();
        assert!(!stranger.peer_secret().accepts(&token), "another key");
        // A key made in memory (the self-signed default) shares nothing,
        // not even with another made alike.
        let fixed = |names: &[String]| {
            let made = generate(names, 1).unwrap();
            let key = certified_key(
                made.cert_pem.as_bytes(),
                made.key_pem.as_bytes(),
                Path::new("t"),
            )
            .unwrap();
            ReloadingCertificate::fixed(key)
        };
        let (a, b) = (fixed(&["x".into()]), fixed(&["x".into()]));
        assert!(!a.peer_secret().accepts(&b.peer_secret().token()));
        assert!(
            format!("{:?}", a.peer_secret()).contains(".."),
            "never printed"
        );
    }
}

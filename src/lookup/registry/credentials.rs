//! Registry credentials: the `auths` map of a Docker `config.json` (what a
//! `kubernetes.io/dockerconfigjson` Secret holds), matched to images the way
//! the kubelet matches them.
//!
//! Nothing in this module formats a secret: `Credential`'s `Debug` is redacted,
//! and what identifies a credential elsewhere (cache keys) is a fingerprint.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use serde::Deserialize;

use crate::lookup::image::ImageRef;

#[derive(Clone, PartialEq, Eq, Default)]
pub enum Credential {
    #[default]
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// A registry token sent as-is as a bearer token (`registrytoken`).
    Bearer(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, <redacted>)"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
        }
    }
}

/// `Credential::fingerprint` of `Anonymous`, the credential of most
/// lookups: the cache keys it without making the string each time.
pub const ANONYMOUS_FINGERPRINT: &str = "anonymous";

impl Credential {
    /// A short, stable identity of the credential that reveals nothing of
    /// it: the registry cache is keyed by it so one namespace's private
    /// answer is never served to a pod that lacks the credential.
    pub fn fingerprint(&self) -> String {
        let material = match self {
            Credential::Anonymous => return ANONYMOUS_FINGERPRINT.to_string(),
            Credential::Basic { username, password } => format!("basic\0{username}\0{password}"),
            Credential::Bearer(token) => format!("bearer\0{token}"),
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, material.as_bytes());
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self, Credential::Anonymous)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    #[error("not a Docker config.json: {0}")]
    Json(String),
    #[error("entry for {0:?} has an auth field that is not base64 of user:password")]
    BadAuth(String),
}

#[derive(Deserialize)]
struct DockerConfig {
    auths: Option<BTreeMap<String, DockerAuth>>,
}

#[derive(Deserialize, Default)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials by registry key, as in a Docker config.json.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    entries: Vec<KeyringEntry>,
}

#[derive(Clone, Debug)]
struct KeyringEntry {
    pattern: RegistryPattern,
    credential: Credential,
}

impl Keyring {
    /// Reads either format the kubelet reads: `{"auths": {...}}`
    /// (`.dockerconfigjson`) or the bare map (legacy `.dockercfg`).
    pub fn from_docker_config(json: &[u8]) -> Result<Keyring, CredentialsError> {
        let value: serde_json::Value = serde_json::from_slice(json).map_err(json_error)?;
        let auths: BTreeMap<String, DockerAuth> = if value.get("auths").is_some() {
            let config: DockerConfig = serde_json::from_value(value).map_err(json_error)?;
            config.auths.unwrap_or_default()
        } else {
            serde_json::from_value(value).map_err(json_error)?
        };
        let mut entries = Vec::new();
        for (key, auth) in auths {
            let credential = auth_to_credential(&key, auth)?;
            if credential.is_anonymous() {
                continue;
            }
            entries.push(KeyringEntry {
                pattern: RegistryPattern::parse(&key),
                credential,
            });
        }
        // The most specific key wins, as with the kubelet's sorted keyring.
        entries.sort_by_key(|e| std::cmp::Reverse(e.pattern.specificity()));
        Ok(Keyring { entries })
    }

    /// Adds `other`'s entries after this keyring's own, so this one's win.
    pub fn extend(&mut self, other: &Keyring) {
        self.entries.extend(other.entries.iter().cloned());
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The credential for `image`, or anonymous.
    pub fn lookup(&self, image: &ImageRef) -> Credential {
        self.lookup_host(image.registry(), image.repository())
    }

    /// The credential for a registry host (as written in references, or a
    /// mirror's host) and repository.
    pub fn lookup_host(&self, host: &str, repository: &str) -> Credential {
        self.entries
            .iter()
            .find(|e| e.pattern.matches(host, repository))
            .map(|e| e.credential.clone())
            .unwrap_or_default()
    }
}

/// serde's messages quote the offending value, which here may be a secret:
/// keep only what kind of error it is and where.
fn json_error(e: serde_json::Error) -> CredentialsError {
    let kind = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "truncated",
    };
    CredentialsError::Json(format!("{kind} at line {} column {}", e.line(), e.column()))
}

fn auth_to_credential(key: &str, auth: DockerAuth) -> Result<Credential, CredentialsError> {
    if let Some(token) = auth.registrytoken.filter(|t| !t.is_empty()) {
        return Ok(Credential::Bearer(token));
    }
    if let Some(encoded) = auth.auth.filter(|a| !a.is_empty()) {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| CredentialsError::BadAuth(key.to_string()))?;
        let (username, password) = decoded
            .split_once(':')
            .ok_or_else(|| CredentialsError::BadAuth(key.to_string()))?;
        return Ok(Credential::Basic {
            username: username.to_string(),
            password: password.to_string(),
        });
    }
    match (auth.username, auth.password) {
        (Some(username), Some(password)) if !username.is_empty() => {
            Ok(Credential::Basic { username, password })
        }
        _ => Ok(Credential::Anonymous),
    }
}

/// A config.json key: `host[:port][/path]`, maybe with a scheme and with
/// `*` globs in host labels (`*.azurecr.io`), as the kubelet accepts.
#[derive(Clone, Debug)]
struct RegistryPattern {
    host_labels: Vec<String>,
    port: Option<String>,
    path: String,
}

impl RegistryPattern {
    fn parse(key: &str) -> Self {
        let key = key.trim();
        let key = key
            .strip_prefix("https://")
            .or_else(|| key.strip_prefix("http://"))
            .unwrap_or(key);
        let key = key.trim_end_matches('/');
        let (host_port, path) = key.split_once('/').unwrap_or((key, ""));
        let (host, port) = split_port(host_port);
        let host = host.to_ascii_lowercase();
        // Docker Hub's many names, including the `https://index.docker.io/v1/`
        // that `docker login` writes, all mean docker.io.
        let (host, path) = match host.as_str() {
            "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => (
                "docker.io".to_string(),
                if path == "v1" || path == "v2" {
                    ""
                } else {
                    path
                },
            ),
            _ => (host, path),
        };
        RegistryPattern {
            host_labels: host.split('.').map(str::to_string).collect(),
            port: port.map(str::to_string),
            path: path.to_string(),
        }
    }

    fn specificity(&self) -> (usize, usize, usize) {
        let literal_labels = self.host_labels.iter().filter(|l| !l.contains('*')).count();
        (
            self.path.len(),
            literal_labels,
            self.port.is_some() as usize,
        )
    }

    fn matches(&self, host: &str, repository: &str) -> bool {
        let (host, port) = split_port(host);
        if port != self.port.as_deref() {
            return false;
        }
        let labels: Vec<&str> = host.split('.').collect();
        if labels.len() != self.host_labels.len() {
            return false;
        }
        let host_matches = self
            .host_labels
            .iter()
            .zip(&labels)
            .all(|(pattern, label)| glob_match(pattern, &label.to_ascii_lowercase()));
        host_matches
            && (self.path.is_empty()
                || repository == self.path
                || repository
                    .strip_prefix(self.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

fn split_port(host_port: &str) -> (&str, Option<&str>) {
    match host_port.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host, Some(port))
        }
        _ => (host_port, None),
    }
}

/// `*` matches any run of characters within one host label.
fn glob_match(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((prefix, rest)) => {
            let Some(remaining) = text.strip_prefix(prefix) else {
                return false;
            };
            (0..=remaining.len())
                .filter(|&i| remaining.is_char_boundary(i))
                .any(|i| glob_match(rest, &remaining[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(json: &str) -> Keyring {
        Keyring::from_docker_config(json.as_bytes()).unwrap()
    }

    fn basic(user: &str, pass: &str) -> Credential {
        Credential::Basic {
            username: user.into(),
            password: pass.into(),
        }
    }

    fn auth(user: &str, pass: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    }

    #[test]
    fn matches_hosts_ports_paths_and_globs_like_the_kubelet() {
        let ring = keyring(&format!(
            r#"{{"auths": {{
                "https://index.docker.io/v1/": {{"auth": "{}"}},
                "registry.example.com:5000": {{"username": "port", "password": "p"}},
                "registry.example.com": {{"username": "plain", "password": "p"}},
                "registry.example.com/team-a": {{"username": "team-a", "password": "p"}},
                "*.azurecr.io": {{"username": "acr", "password": "p"}},
                "ghcr.io": {{"registrytoken": "tok"}}
            }}}}"#,
            auth("hub", "secret:with:colons")
        ));
        let cases = [
            ("nginx", basic("hub", "secret:with:colons")),
            ("registry.example.com:5000/x", basic("port", "p")),
            ("registry.example.com/x", basic("plain", "p")),
            ("registry.example.com/team-a/api", basic("team-a", "p")),
            ("registry.example.com/team-ab/api", basic("plain", "p")),
            ("myreg.azurecr.io/app", basic("acr", "p")),
            ("a.b.azurecr.io/app", Credential::Anonymous),
            ("ghcr.io/org/app", Credential::Bearer("tok".into())),
            ("quay.io/org/app", Credential::Anonymous),
        ];
        for (image, expected) in cases {
            let image: ImageRef = image.parse().unwrap();
            assert_eq!(ring.lookup(&image), expected, "{image}");
        }
    }

    #[test]
    fn reads_legacy_dockercfg_and_skips_empty_entries() {
        let ring = keyring(&format!(
            r#"{{"quay.io": {{"auth": "{}"}}, "empty.io": {{}}}}"#,
            auth("u", "p")
        ));
        assert_eq!(ring.lookup_host("quay.io", "x"), basic("u", "p"));
        assert_eq!(ring.entries.len(), 1);
    }

    #[test]
    fn errors_never_contain_the_secret() {
        let err = Keyring::from_docker_config(
            br#"{"auths": {"r.io": {"auth": "c2VjcmV0LW5vLWNvbG9u"}}}"#,
        )
        .unwrap_err();
        assert_eq!(err, CredentialsError::BadAuth("r.io".into()));
        let err =
            Keyring::from_docker_config(br#"{"auths": {"r.io": {"auth": 12345678}}}"#).unwrap_err();
        assert!(!err.to_string().contains("12345678"), "{err}");
        let shown = format!("{:?}", basic("user", "hunter2"));
        assert!(!shown.contains("hunter2"));
    }

    #[test]
    fn fingerprints_differ_by_secret_and_hide_it() {
        let a = basic("u", "one").fingerprint();
        let b = basic("u", "two").fingerprint();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
        assert_eq!(Credential::Anonymous.fingerprint(), "anonymous");
        assert_eq!(a, basic("u", "one").fingerprint());
    }
}

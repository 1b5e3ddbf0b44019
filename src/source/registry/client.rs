//! The HTTP side of the distribution API: one ureq agent (no automatic redirects, so that
//! Authorization is only ever sent to the registry's own host), the auth dance (basic or
//! bearer token on a 401 challenge), retry with backoff on connection errors, 429 and 5xx,
//! and 401/403/404 turned into one clear line naming the repository and what was refused.
//!
//! Every request is bounded by progress ([`Deadlines`]): documents (manifests, tokens) by
//! a total deadline across retries and redirects, blobs by a minimum rate over a window
//! (checked by the blob stream) and a per-read stall of the same window, and every
//! answer's headers by that window too, so a registry sending 1 byte/s never hangs a stage.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::http::{Response, StatusCode, Uri};
use ureq::Body;

use super::auth::{self, Challenge, Credentials};
use super::RegistryError;
use crate::error::{Error, Result};

/// Attempts per request (the first + retries) on transient failures.
pub const ATTEMPTS: u32 = 5;
const MAX_REDIRECTS: u32 = 5;

/// TLS and transport settings.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Plain http instead of https.
    pub insecure: bool,
    /// PEM CA certificates to trust in addition to the system's.
    pub tls_ca: Option<std::path::PathBuf>,
    pub deadlines: Deadlines,
}

/// How long a registry may take, by progress: a slow but moving download is fine, a
/// stalled or trickling one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Whole fetch of a manifest or token (connect, headers, body; retries and redirects
    /// included).
    pub document: Duration,
    /// The window over which a blob must average `min_rate`; also the longest wait for
    /// any single read or for an answer's headers.
    pub stall_window: Duration,
    /// Bytes per second a blob download must average over each `stall_window`.
    pub min_rate: u64,
    /// TCP connect + TLS handshake.
    pub connect: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            document: Duration::from_secs(60),
            stall_window: Duration::from_secs(30),
            min_rate: 1024,
            connect: Duration::from_secs(30),
        }
    }
}

pub struct Client {
    agent: ureq::Agent,
    base: String,
    /// `host[:port]` of the API, for the same-host check.
    authority: String,
    repository: String,
    creds: Option<Credentials>,
    /// The Authorization value that works for this registry, once known.
    authorization: Mutex<Option<String>>,
    /// Shortened waits for tests (env `NESTCACHE_REGISTRY_FAST_RETRY`).
    backoff_unit: Duration,
    deadlines: Deadlines,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Client({}/{})", self.base, self.repository)
    }
}

impl Client {
    pub fn new(
        api_host: &str,
        repository: &str,
        creds: Option<Credentials>,
        transport: &Transport,
    ) -> Result<Client> {
        let scheme = if transport.insecure { "http" } else { "https" };
        let mut tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier);
        if let Some(ca) = &transport.tls_ca {
            tls = tls.root_certs(ca_roots(ca)?);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .https_only(!transport.insecure)
            .tls_config(tls.build())
            .timeout_connect(Some(transport.deadlines.connect))
            .timeout_per_read(Some(transport.deadlines.stall_window))
            .timeout_recv_response(Some(transport.deadlines.stall_window))
            .user_agent(concat!("nestcache/", env!("CARGO_PKG_VERSION")))
            .build();
        let backoff_unit = if std::env::var_os("NESTCACHE_REGISTRY_FAST_RETRY").is_some() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(250)
        };
        Ok(Client {
            agent: config.into(),
            base: format!("{scheme}://{api_host}"),
            authority: api_host.to_ascii_lowercase(),
            repository: repository.to_string(),
            creds,
            authorization: Mutex::new(None),
            backoff_unit,
            deadlines: transport.deadlines,
        })
    }

    pub fn deadlines(&self) -> Deadlines {
        self.deadlines
    }

    /// Waits before retry number `attempt` (1-based): 250 ms, 500 ms, 1 s, 2 s…
    pub fn backoff(&self, attempt: u32) {
        std::thread::sleep(self.backoff_unit * (1 << attempt.min(5)) / 2);
    }

    /// GET a document (manifest) under `/v2/<repo>/`: the whole exchange, body included,
    /// must end within the document deadline.
    pub fn get_document(&self, path: &str, what: &str, accept: &str) -> Result<Response<Body>> {
        let deadline = Instant::now() + self.deadlines.document;
        self.get(path, what, Some(accept), None, Some(deadline))
    }

    /// GET a blob from byte `from` (a Range request when > 0); its body is bounded by the
    /// caller's rate check and the per-read stall window.
    pub fn get_blob(&self, path: &str, what: &str, from: u64) -> Result<Response<Body>> {
        self.get(path, what, None, Some(from), None)
    }

    /// GET `/v2/<repo>/<path>`, following redirects, authenticating on a 401 challenge and
    /// retrying transient failures, all before `deadline` when there is one. Returns a
    /// 200 or 206 response; every other outcome is an error whose message says `what` was
    /// refused and why.
    fn get(
        &self,
        path: &str,
        what: &str,
        accept: Option<&str>,
        range_from: Option<u64>,
        deadline: Option<Instant>,
    ) -> Result<Response<Body>> {
        let mut url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let mut attempt = 0;
        let mut redirects = 0;
        let mut authenticated = false;
        loop {
            let same_host = host_of(&url).is_some_and(|h| h == self.authority);
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(off) = range_from.filter(|o| *o > 0) {
                req = req.header("Range", &format!("bytes={off}-"));
            }
            // Never send the registry's credentials to another host (blob storage).
            let auth = if same_host { self.current_auth() } else { None };
            if let Some(a) = &auth {
                req = req.header("Authorization", a);
            }
            let req = match deadline {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(self.past_deadline(what));
                    }
                    req.config().timeout_global(Some(left)).build()
                }
                None => req,
            };
            let resp = match req.call() {
                Ok(r) => r,
                Err(e) if attempt + 1 < ATTEMPTS && transient(&e) && !past(deadline) => {
                    attempt += 1;
                    tracing::debug!("{what}: {e}; retry {attempt}");
                    self.backoff(attempt);
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::Transport {
                        repo: self.where_(),
                        what: what.to_string(),
                        why: self.describe_transport_error(&e),
                    }
                    .into())
                }
            };
            let status = resp.status();
            match status.as_u16() {
                200 | 206 => return Ok(resp),
                301 | 302 | 303 | 307 | 308 => {
                    redirects += 1;
                    let location = resp
                        .headers()
                        .get("location")
                        .and_then(|l| l.to_str().ok())
                        .map(str::to_string);
                    let Some(loc) = location.filter(|_| redirects <= MAX_REDIRECTS) else {
                        return Err(RegistryError::Redirects {
                            repo: self.where_(),
                            what: what.to_string(),
                        }
                        .into());
                    };
                    url = resolve_location(&url, &loc);
                    continue;
                }
                401 if same_host && !authenticated => {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|h| h.to_str().ok())
                        .and_then(auth::parse_challenge);
                    authenticated = true;
                    match challenge {
                        Some(c) => {
                            self.authenticate(&c, what)?;
                            continue;
                        }
                        None => return Err(self.refused(status, what, auth.is_some())),
                    }
                }
                429 | 500..=599 if attempt + 1 < ATTEMPTS && !past(deadline) => {
                    attempt += 1;
                    tracing::debug!("{what}: HTTP {status}; retry {attempt}");
                    self.backoff(attempt);
                    continue;
                }
                _ => return Err(self.refused(status, what, auth.is_some())),
            }
        }
    }

    fn current_auth(&self) -> Option<String> {
        self.authorization
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn set_auth(&self, value: String) {
        *self.authorization.lock().unwrap_or_else(|p| p.into_inner()) = Some(value);
    }

    /// `registry/repository`, for messages.
    pub fn where_(&self) -> String {
        format!("{}/{}", self.authority, self.repository)
    }

    fn past_deadline(&self, what: &str) -> Error {
        RegistryError::Deadline {
            repo: self.where_(),
            what: what.to_string(),
            deadline: self.deadlines.document,
        }
        .into()
    }

    /// An I/O error reading a body as one line (ureq wraps its own errors, timeouts
    /// included, in io::Error).
    pub fn describe_io_error(&self, e: &std::io::Error) -> String {
        match e.get_ref().and_then(|i| i.downcast_ref::<ureq::Error>()) {
            Some(u) => self.describe_transport_error(u),
            None => e.to_string(),
        }
    }

    /// A transport failure as one line; timeouts say which bound tripped and how to
    /// change it.
    pub fn describe_transport_error(&self, e: &ureq::Error) -> String {
        let d = &self.deadlines;
        let window = humantime::format_duration(d.stall_window);
        match e {
            ureq::Error::Timeout(ureq::Timeout::Global) => format!(
                "no complete answer within {} (document deadline; --registry-timeout, NESTCACHE_REGISTRY_TIMEOUT)",
                humantime::format_duration(d.document)
            ),
            ureq::Error::Timeout(ureq::Timeout::RecvResponse) => format!(
                "the answer's headers did not arrive within {window} (stall window; --registry-stall-window, NESTCACHE_REGISTRY_STALL_WINDOW)"
            ),
            ureq::Error::Timeout(ureq::Timeout::PerRead) => format!(
                "stalled: nothing received for {window} (stall window; --registry-stall-window, NESTCACHE_REGISTRY_STALL_WINDOW)"
            ),
            ureq::Error::Timeout(ureq::Timeout::Connect) => format!(
                "could not connect within {}",
                humantime::format_duration(d.connect)
            ),
            other => describe_transport_error(other),
        }
    }

    fn refused(&self, status: StatusCode, what: &str, sent_auth: bool) -> Error {
        let repo = self.where_();
        RegistryError::Status {
            repo,
            what: what.to_string(),
            status: status.as_u16(),
            sent_auth,
        }
        .into()
    }

    /// Answers a 401 challenge: basic with the configured credentials, or a bearer token
    /// from the challenge's realm (with the credentials when there are some).
    fn authenticate(&self, challenge: &Challenge, what: &str) -> Result<()> {
        match challenge {
            Challenge::Basic => match &self.creds {
                Some(c) => {
                    self.set_auth(c.basic_header());
                    Ok(())
                }
                None => Err(self.refused(StatusCode::UNAUTHORIZED, what, false)),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let token = self.fetch_token(realm, service.as_deref(), scope.as_deref())?;
                self.set_auth(format!("Bearer {token}"));
                Ok(())
            }
        }
    }

    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<String> {
        let repo = self.where_();
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(RegistryError::BadRealm {
                repo,
                realm: realm.to_string(),
            }
            .into());
        }
        if realm.starts_with("http://") && self.base.starts_with("https://") && self.creds.is_some()
        {
            return Err(RegistryError::PlainHttpRealm {
                repo,
                realm: realm.to_string(),
            }
            .into());
        }
        let default_scope = format!("repository:{}:pull", self.repository);
        let deadline = Instant::now() + self.deadlines.document;
        let mut attempt = 0;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.past_deadline(&format!("token from {}", realm_host(realm))));
            }
            let mut req = self
                .agent
                .get(realm)
                .query("scope", scope.unwrap_or(&default_scope));
            if let Some(s) = service {
                req = req.query("service", s);
            }
            if let Some(c) = &self.creds {
                req = req.header("Authorization", &c.basic_header());
            }
            let req = req.config().timeout_global(Some(left)).build();
            let mut resp = match req.call() {
                Ok(r) => r,
                Err(e) if attempt + 1 < ATTEMPTS && transient(&e) && !past(Some(deadline)) => {
                    attempt += 1;
                    self.backoff(attempt);
                    continue;
                }
                Err(e) => {
                    return Err(RegistryError::TokenTransport {
                        repo,
                        host: realm_host(realm),
                        why: self.describe_transport_error(&e),
                    }
                    .into())
                }
            };
            let status = resp.status().as_u16();
            if (status == 429 || status >= 500) && attempt + 1 < ATTEMPTS && !past(Some(deadline)) {
                attempt += 1;
                self.backoff(attempt);
                continue;
            }
            if status != 200 {
                let why = match (status, self.creds.is_some()) {
                    (401 | 403, true) => "refused the credentials",
                    (401 | 403, false) => {
                        "refused anonymous access (pass --creds USER:PASS or --authfile FILE)"
                    }
                    _ => "failed",
                };
                return Err(RegistryError::TokenStatus {
                    repo,
                    host: realm_host(realm),
                    status,
                    why,
                }
                .into());
            }
            let v: serde_json::Value = resp
                .body_mut()
                .with_config()
                .limit(1 << 20)
                .read_to_vec()
                .map_err(|e| {
                    Error::from(RegistryError::TokenTransport {
                        repo: repo.clone(),
                        host: realm_host(realm),
                        why: format!("reading the token: {}", self.describe_transport_error(&e)),
                    })
                })
                .and_then(|b| {
                    serde_json::from_slice(&b).map_err(|e| {
                        Error::from(RegistryError::TokenAnswer {
                            repo: repo.clone(),
                            why: format!("token service answer is not JSON: {e}"),
                        })
                    })
                })?;
            return v
                .get("token")
                .or_else(|| v.get("access_token"))
                .and_then(|t| t.as_str())
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    Error::from(RegistryError::TokenAnswer {
                        repo: repo.clone(),
                        why: "token service answer has no token".to_string(),
                    })
                });
        }
    }
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}

/// Connection-level failures worth another try (the registry may be restarting, a proxy
/// may have dropped the connection); TLS and name errors are not.
fn transient(e: &ureq::Error) -> bool {
    matches!(
        e,
        ureq::Error::Io(_) | ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed
    )
}

fn describe_transport_error(e: &ureq::Error) -> String {
    let msg = match e {
        ureq::Error::NativeTls(t) => t.to_string(),
        ureq::Error::Tls(m) => m.to_string(),
        other => return other.to_string(),
    };
    if msg.contains("wrong version number") || msg.contains("packet length too long") {
        "TLS handshake failed: the registry seems to speak plain http (pass --insecure for a loopback test registry)".into()
    } else if msg.contains("certificate") {
        format!(
            "TLS: certificate not trusted ({}); for a private CA pass --tls-ca FILE",
            last_reason(&msg)
        )
    } else {
        format!("TLS: {msg}")
    }
}

/// OpenSSL's messages end with the useful part in parentheses or after the last ':'.
fn last_reason(msg: &str) -> String {
    if let (Some(a), Some(b)) = (msg.rfind('('), msg.rfind(')')) {
        if a < b {
            return msg[a + 1..b].to_string();
        }
    }
    msg.rsplit(':')
        .find(|s| !s.trim().is_empty())
        .unwrap_or(msg)
        .trim()
        .to_string()
}

fn host_of(url: &str) -> Option<String> {
    url.parse::<Uri>()
        .ok()?
        .authority()
        .map(|a| a.as_str().to_ascii_lowercase())
}

fn realm_host(realm: &str) -> String {
    host_of(realm).unwrap_or_else(|| "?".into())
}

/// A Location header against the URL that answered it.
fn resolve_location(current: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let Ok(uri) = current.parse::<Uri>() else {
        return location.to_string();
    };
    let scheme = uri.scheme_str().unwrap_or("https");
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = location.strip_prefix("//") {
        return format!("{scheme}://{rest}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{authority}{location}");
    }
    let dir = uri.path().rsplit_once('/').map_or("", |(d, _)| d);
    format!("{scheme}://{authority}{dir}/{location}")
}

/// `--tls-ca FILE` plus the system bundle (native-tls replaces the built-in roots when
/// given specific ones, and a private CA should be trusted *in addition*).
fn ca_roots(file: &std::path::Path) -> Result<ureq::tls::RootCerts> {
    let pem = std::fs::read(file)
        .map_err(|e| Error::io(format!("read --tls-ca {}", file.display()), e))?;
    let mut certs = pem_certs(&pem);
    if certs.is_empty() {
        return Err(Error::Invalid(format!(
            "--tls-ca {}: no PEM certificate in it",
            file.display()
        )));
    }
    for system in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ] {
        if let Ok(data) = std::fs::read(system) {
            certs.extend(pem_certs(&data));
            break;
        }
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certs))
}

fn pem_certs(pem: &[u8]) -> Vec<ureq::tls::Certificate<'static>> {
    ureq::tls::parse_pem(pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_redirect_locations() {
        let cur = "http://127.0.0.1:5000/v2/a/blobs/sha256:x";
        assert_eq!(
            resolve_location(cur, "https://s3.example/b?sig=1"),
            "https://s3.example/b?sig=1"
        );
        assert_eq!(
            resolve_location(cur, "/other"),
            "http://127.0.0.1:5000/other"
        );
        assert_eq!(
            resolve_location(cur, "//cdn.example/x"),
            "http://cdn.example/x"
        );
        assert_eq!(
            resolve_location(cur, "y"),
            "http://127.0.0.1:5000/v2/a/blobs/y"
        );
        assert_eq!(host_of(cur).as_deref(), Some("127.0.0.1:5000"));
    }
}

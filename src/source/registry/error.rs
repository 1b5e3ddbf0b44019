//! What a registry conversation can end with, with the repository, what was asked for and
//! the HTTP status where there is one. Rolled up into [`crate::Error`] as
//! `Error::Registry`. Bad user input (`--creds`, auth files, `--tls-ca`, references)
//! stays `Error::Invalid`.

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry answered `status` and retrying will not change that.
    #[error("{}", status_message(*status, repo, what, *sent_auth))]
    Status {
        repo: String,
        what: String,
        status: u16,
        /// Whether credentials (or a token) went with the request.
        sent_auth: bool,
    },
    /// No HTTP answer: connection refused, TLS, DNS, timeouts (after the retries).
    #[error("{what} from {repo}: {why}")]
    Transport {
        repo: String,
        what: String,
        why: String,
    },
    #[error("{what} from {repo}: too many or broken redirects")]
    Redirects { repo: String, what: String },
    #[error("{what} from {repo}: no complete answer within {} (document deadline; --registry-timeout, NESTCACHE_REGISTRY_TIMEOUT)", humantime::format_duration(*deadline))]
    Deadline {
        repo: String,
        what: String,
        deadline: std::time::Duration,
    },
    #[error("{status} from token service {host} for {repo}: {why}")]
    TokenStatus {
        repo: String,
        host: String,
        status: u16,
        why: &'static str,
    },
    #[error("{repo}: token service {host}: {why}")]
    TokenTransport {
        repo: String,
        host: String,
        why: String,
    },
    /// The token service answered 200 with something that is not a usable token.
    #[error("{repo}: {why}")]
    TokenAnswer { repo: String, why: String },
    #[error("{repo}: token realm {realm:?} is not an http(s) URL")]
    BadRealm { repo: String, realm: String },
    #[error("{repo}: refusing to send credentials to plain-http token realm {realm}")]
    PlainHttpRealm { repo: String, realm: String },
}

fn status_message(status: u16, repo: &str, what: &str, sent_auth: bool) -> String {
    match status {
        401 if sent_auth => format!("401 Unauthorized: {repo} refused the credentials for {what}"),
        401 => format!(
            "401 Unauthorized: {repo} needs credentials for {what} (pass --creds USER:PASS or --authfile FILE)"
        ),
        403 => format!(
            "403 Forbidden: {repo} denied {what}{}",
            if sent_auth {
                " to these credentials"
            } else {
                " to anonymous access"
            }
        ),
        404 => format!("not found: {what} in {repo} (HTTP 404)"),
        _ => format!("{what} from {repo}: HTTP {status}"),
    }
}

impl RegistryError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::Status { status: 404, .. })
    }

    /// Whether the registry or its token service refused the credentials (or their
    /// absence): 401 / 403.
    pub fn is_auth(&self) -> bool {
        matches!(
            self,
            RegistryError::Status {
                status: 401 | 403,
                ..
            } | RegistryError::TokenStatus {
                status: 401 | 403,
                ..
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_kinds_and_their_one_line() {
        let status = |status, sent_auth| RegistryError::Status {
            repo: "r.example/app".into(),
            what: "manifest latest".into(),
            status,
            sent_auth,
        };
        assert!(status(404, false).is_not_found() && !status(404, false).is_auth());
        assert!(status(401, true).is_auth() && status(403, false).is_auth());
        assert!(!status(500, false).is_auth() && !status(500, false).is_not_found());
        assert_eq!(
            status(401, false).to_string(),
            "401 Unauthorized: r.example/app needs credentials for manifest latest (pass --creds USER:PASS or --authfile FILE)"
        );
        assert_eq!(
            status(403, true).to_string(),
            "403 Forbidden: r.example/app denied manifest latest to these credentials"
        );
        let e = crate::Error::from(status(404, false));
        assert!(e.is_not_found(), "{e}");
    }
}

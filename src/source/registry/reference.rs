//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]` references, normalised as Docker does:
//! a first component without `.` or `:` (and not `localhost`) is a Docker Hub path.

use std::fmt;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Where Docker Hub's API really lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as the user wrote it (`docker.io` for Hub images).
    pub registry: String,
    /// `library/busybox`, `team/app`…
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    /// Parses what follows `docker://`.
    pub fn parse(s: &str) -> Result<Reference> {
        // `user:pass@host/…` is not a reference form: refuse it without echoing the secret.
        if let Some((first, rest)) = s.split_once('/') {
            if let Some((_, host)) = first.rsplit_once('@') {
                return Err(Error::Invalid(format!(
                    "invalid reference docker://<credentials>@{host}/{rest}: credentials do not belong in the reference; pass --creds USER:PASS or --authfile FILE"
                )));
            }
        }
        let bad = |why: &str| Error::Invalid(format!("invalid reference docker://{s}: {why}"));
        let (name, digest) = match s.rsplit_once('@') {
            Some((n, d)) => (
                n,
                Some(d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?),
            ),
            None => (s, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (
                &name[..last_slash + i],
                Some(name[last_slash + i + 1..].to_string()),
            ),
            None => (name, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        if registry.is_empty()
            || registry
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b == b'@')
        {
            return Err(bad("bad registry host"));
        }
        let repo_ok = !repository.is_empty()
            && repository.len() <= 255
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
                    && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            });
        if !repo_ok {
            return Err(bad(
                "the repository must be lowercase letters, digits and . _ - / separated components",
            ));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && !t.starts_with(['.', '-']);
            if !ok {
                return Err(bad("bad tag"));
            }
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the API is served from.
    pub fn api_host(&self) -> &str {
        if self.registry == "docker.io" {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What to ask `/manifests/` for: the digest when given (it pins the content), else
    /// the tag.
    pub fn manifest_ref(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_like_docker() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            ("127.0.0.1:5000", "team/app", Some("v1"))
        );
        let r = Reference::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse(&format!("localhost/x@{D}")).unwrap();
        assert_eq!((r.tag.clone(), r.manifest_ref()), (None, D.to_string()));
        let r = Reference::parse(&format!("host.example:443/x:t@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.manifest_ref(), D);
    }

    #[test]
    fn never_echoes_credentials_in_a_reference() {
        let e = Reference::parse("bob:hunter2@127.0.0.1:5000/x:y").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("--creds"), "{e}");
    }

    #[test]
    fn refuses_bad_references() {
        for bad in [
            "",
            "h.x/",
            "h.x/UPPER",
            "h.x/a:",
            "h.x/a:-t",
            "h.x/a@sha256:12",
            "h.x//a",
        ] {
            assert!(Reference::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}

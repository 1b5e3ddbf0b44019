//! Registry credentials and challenges: `USER:PASS` from `--creds`, an auth file
//! (`--authfile`, containers' auth.json, `~/.docker/config.json`), `WWW-Authenticate`
//! parsing. Credentials are never printed: their Debug says `<redacted>`.

use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    /// `USER:PASS` (the password may contain ':').
    pub fn parse(s: &str) -> Result<Credentials> {
        match s.split_once(':') {
            Some((u, p)) if !u.is_empty() => Ok(Credentials {
                username: u.to_string(),
                password: p.to_string(),
            }),
            _ => Err(Error::Invalid(
                "--creds wants USER:PASS (the value is not shown)".into(),
            )),
        }
    }

    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files consulted when neither `--creds` nor `--authfile` is given, in order.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    if let Some(p) = std::env::var_os("REGISTRY_AUTH_FILE") {
        v.push(PathBuf::from(p));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        v.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        v.push(Path::new(&d).join("config.json"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(Path::new(&h).join(".docker/config.json"));
    }
    v
}

/// Looks `registry`/`repository` up in an auth file (`{"auths": {KEY: {"auth": base64}}}`;
/// KEY is a host, `host/path` prefix or URL). The longest matching key wins. A missing
/// file is no credentials; an unreadable or malformed one is an error naming the file.
pub fn lookup(file: &Path, registry: &str, repository: &str) -> Result<Option<Credentials>> {
    let data = match std::fs::read(file) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read auth file {}", file.display()), e)),
    };
    let v: serde_json::Value = serde_json::from_slice(&data)
        .map_err(|e| Error::Invalid(format!("auth file {}: not JSON: {e}", file.display())))?;
    // Docker's order: the registry's own helper, else the store for all, else `auths`.
    if let Some(helper) = credential_helper(&v, registry) {
        let program = helper_program(&helper, std::env::var_os("PATH").as_deref())?;
        if let Some(c) = helper_get(&program, &helper_server(registry))? {
            return Ok(Some(c));
        }
    }
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let full = format!("{registry}/{repository}");
    let mut best: Option<(usize, &serde_json::Value)> = None;
    for (key, entry) in auths {
        let k = normalise_key(key, registry);
        let matches = k == registry
            || full == k
            || (full.starts_with(&k) && full.as_bytes().get(k.len()) == Some(&b'/'));
        if matches && best.map_or(true, |(len, _)| k.len() > len) {
            best = Some((k.len(), entry));
        }
    }
    let Some((_, entry)) = best else {
        return Ok(None);
    };
    let bad = || {
        Error::Invalid(format!(
            "auth file {}: the entry for {registry} has no usable \"auth\" (base64 of USER:PASS)",
            file.display()
        ))
    };
    if let Some(a) = entry
        .get("auth")
        .and_then(|a| a.as_str())
        .filter(|a| !a.is_empty())
    {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(a.trim())
            .map_err(|_| bad())?;
        let s = String::from_utf8(raw).map_err(|_| bad())?;
        return Credentials::parse(&s).map(Some).map_err(|_| bad());
    }
    match (
        entry.get("username").and_then(|u| u.as_str()),
        entry.get("password").and_then(|p| p.as_str()),
    ) {
        (Some(u), Some(p)) => Ok(Some(Credentials {
            username: u.into(),
            password: p.into(),
        })),
        _ => Err(bad()),
    }
}

/// The helper a docker config names for `registry`: `credHelpers` (keys normalised as
/// `auths` keys are), else `credsStore`.
fn credential_helper(config: &serde_json::Value, registry: &str) -> Option<String> {
    let own = config
        .get("credHelpers")
        .and_then(|h| h.as_object())
        .and_then(|h| {
            h.iter()
                .find(|(k, _)| normalise_key(k, registry) == registry)
                .and_then(|(_, v)| v.as_str())
        });
    own.or_else(|| config.get("credsStore").and_then(|s| s.as_str()))
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// What the docker-credential-helpers protocol calls the server: Docker Hub's legacy
/// URL, the host for every other registry.
fn helper_server(registry: &str) -> String {
    if registry == "docker.io" {
        "https://index.docker.io/v1/".into()
    } else {
        registry.to_string()
    }
}

/// `docker-credential-NAME` on `path` (the PATH variable).
fn helper_program(name: &str, path: Option<&std::ffi::OsStr>) -> Result<PathBuf> {
    if name.contains('/') {
        return Err(Error::Invalid(format!(
            "credential helper {name:?}: a helper is a name (docker-credential-NAME on PATH), not a path"
        )));
    }
    let file = format!("docker-credential-{name}");
    path.into_iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound(format!("credential helper {file} on PATH")))
}

/// Runs `PROGRAM get` with the server on stdin (the docker-credential-helpers protocol);
/// None when the helper has no credentials for it.
pub fn helper_get(program: &Path, server: &str) -> Result<Option<Credentials>> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let shown = program.display();
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run credential helper {shown}"), e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its answer, not this write.
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("run credential helper {shown}"), e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // The protocol's "not found" answer (on stdout, exit 1) is no credentials.
        if stdout.contains("credentials not found") {
            return Ok(None);
        }
        let why = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Invalid(format!(
            "credential helper {shown} get {server}: {} ({})",
            out.status,
            why.trim().lines().next().unwrap_or("no message")
        )));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout).map_err(|e| {
        Error::Invalid(format!(
            "credential helper {shown} get {server}: answer is not {{\"Username\", \"Secret\"}} JSON: {e}"
        ))
    })?;
    if a.username == "<token>" {
        return Err(Error::Invalid(format!(
            "credential helper {shown} gave an identity token for {server}; nestcache needs a username and password"
        )));
    }
    Ok(Some(Credentials {
        username: a.username,
        password: a.secret,
    }))
}

/// `https://index.docker.io/v1/` → `docker.io`; `https://host:5000/v2/` → `host:5000`.
fn normalise_key(key: &str, registry: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    let hub = [
        "index.docker.io",
        "registry-1.docker.io",
        "registry.hub.docker.com",
    ];
    if registry == "docker.io" && hub.contains(&k) {
        return "docker.io".into();
    }
    k.to_string()
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

/// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"` (quoted values may
/// contain commas).
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let params = parse_params(rest);
    let get = |k: &str| {
        params
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(k))
            .map(|(_, v)| v.clone())
    };
    if scheme.eq_ignore_ascii_case("basic") {
        Some(Challenge::Basic)
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(Challenge::Bearer {
            realm: get("realm")?,
            service: get("service"),
            scope: get("scope"),
        })
    } else {
        None
    }
}

fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_string();
        if key.is_empty() {
            return out;
        }
        if chars.next() != Some('=') {
            continue;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n)
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        out.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        assert_eq!(
            parse_challenge("Basic realm=\"Registry Realm\""),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull,push\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials::parse("user:pa:ss").unwrap();
        assert_eq!(c.password, "pa:ss");
        assert!(!format!("{c:?}").contains("pa:ss"));
        assert!(Credentials::parse("nocolon").is_err());
    }

    /// A fake docker-credential-NAME: answers for `good.example`, "not found" otherwise,
    /// and records the server it was asked about.
    fn fake_helper(dir: &Path, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(format!("docker-credential-{name}"));
        let script = format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread -r server\necho \"$server\" > {}/asked\n\
             case $server in good.example) echo '{{\"ServerURL\":\"good.example\",\"Username\":\"hu\",\"Secret\":\"hp\"}}';;\n\
             broken.example) echo 'no' ; echo 'keychain locked' >&2; exit 3;;\n\
             *) echo 'credentials not found in native keychain'; exit 1;;\nesac\n",
            dir.display()
        );
        std::fs::write(&p, script).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn credential_helpers_by_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let helper = fake_helper(dir.path(), "nctest");
        let c = helper_get(&helper, "good.example").unwrap().unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("hu", "hp"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("asked")).unwrap(),
            "good.example\n"
        );
        assert_eq!(helper_get(&helper, "other.example").unwrap(), None);
        let e = helper_get(&helper, "broken.example")
            .unwrap_err()
            .to_string();
        assert!(e.contains("keychain locked"), "{e}");
        // Found by name on PATH; never a path of the config's choosing.
        let path = std::env::join_paths([Path::new("/nonexistent"), dir.path()]).unwrap();
        assert_eq!(helper_program("nctest", Some(&path)).unwrap(), helper);
        assert!(matches!(
            helper_program("../x", Some(&path)),
            Err(Error::Invalid(_))
        ));
        assert!(matches!(
            helper_program("absent", Some(&path)),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn which_helper_a_docker_config_names() {
        let cfg = serde_json::json!({"credsStore": "desktop",
            "credHelpers": {"good.example": "nctest", "https://index.docker.io/v1/": "hub"}});
        assert_eq!(
            credential_helper(&cfg, "good.example").as_deref(),
            Some("nctest")
        );
        assert_eq!(credential_helper(&cfg, "docker.io").as_deref(), Some("hub"));
        assert_eq!(
            credential_helper(&cfg, "else.example").as_deref(),
            Some("desktop")
        );
        assert_eq!(
            credential_helper(&serde_json::json!({"auths": {}}), "x"),
            None
        );
        assert_eq!(helper_server("docker.io"), "https://index.docker.io/v1/");
    }

    #[test]
    fn auth_file_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("config.json");
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        std::fs::write(
            &f,
            serde_json::json!({"auths": {
                "127.0.0.1:5000": {"auth": b64("host:pw")},
                "127.0.0.1:5000/team": {"auth": b64("team:pw2")},
                "https://index.docker.io/v1/": {"auth": b64("hub:pw3")},
            }})
            .to_string(),
        )
        .unwrap();
        let user = |r: &str, repo: &str| lookup(&f, r, repo).unwrap().map(|c| c.username);
        assert_eq!(user("127.0.0.1:5000", "x"), Some("host".into()));
        assert_eq!(user("127.0.0.1:5000", "team/app"), Some("team".into()));
        assert_eq!(user("127.0.0.1:5000", "teamx/app"), Some("host".into()));
        assert_eq!(user("docker.io", "library/busybox"), Some("hub".into()));
        assert_eq!(user("other:1", "x"), None);
        assert_eq!(lookup(&dir.path().join("missing"), "a", "b").unwrap(), None);
    }
}

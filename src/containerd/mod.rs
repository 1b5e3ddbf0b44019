//! The containerd connection: one [`Client`] per command, bound to an address and a
//! namespace, over containerd-client's tonic channel on the unix socket.
//!
//! - [`labels`]: every label / annotation name nestcache uses.
//! - `containers`: create / get / list (by label filter) / update labels / delete.
//! - `tasks`: create (rootfs mounts, stdio), start, wait, kill, delete, state.
//! - `process`: exec processes in a running task, per-process calls, the task's pids.
//! - [`events`]: containerd's event stream, decoded.
//! - `reconnect`: calls that outlive a containerd restart (bounded retries).
//! - `shim`: nestcache's shim of a group, on its own socket (ending a lingering one).
//!
//! Every call carries the namespace (containerd-client's `with_namespace!`); the
//! namespace is validated at connect so that header can never be malformed.

mod containers;
mod error;
pub mod events;
pub mod io;
/// The label names, a ground-floor module of their own (the shim uses them without the
/// client); re-exported so `containerd::labels::X` keeps working.
pub use crate::labels;
mod process;
mod reconnect;
mod shim;
mod tasks;

pub use tasks::Mount;

use std::time::Duration;

use tonic::{Code, Status};

use crate::{Error, Result};

pub use containers::{Container, NewContainer};
pub use error::ContainerdError;
pub use reconnect::RECONNECT_WINDOW;
pub use tasks::{ExitStatus, NewTask, TaskState, TaskStatus, TaskWait};

/// containerd's default gRPC socket.
pub const DEFAULT_ADDRESS: &str = "/run/containerd/containerd.sock";
/// The oldest containerd whose API nestcache uses (1.6: no transfer or sandbox services).
pub const MIN_VERSION: (u64, u64) = (1, 6);

/// How long connecting and the version call may take before the address counts as dead.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to one containerd, in one namespace.
#[derive(Clone)]
pub struct Client {
    inner: std::sync::Arc<containerd_client::Client>,
    address: String,
    namespace: String,
    version: String,
    runtime: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("version", &self.version)
            .finish()
    }
}

impl Client {
    /// Connects to containerd at `address` (a unix socket path, `unix://` accepted), checks
    /// that it answers and is at least [`MIN_VERSION`], and binds `namespace`.
    pub async fn connect(address: &str, namespace: &str) -> Result<Client> {
        validate_id("namespace", namespace)?;
        let path = socket_path(address);
        let fail = |message: String| Error::Containerd {
            address: path.to_string(),
            message,
        };
        let hint = "start containerd (or let nestcache start its own by leaving --address and CONTAINERD_ADDRESS unset), or point --address / CONTAINERD_ADDRESS at a running one";
        let inner =
            match tokio::time::timeout(CONNECT_TIMEOUT, containerd_client::Client::from_path(path))
                .await
            {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    return Err(fail(format!(
                        "nothing answers ({}); {hint}",
                        root_cause(&e)
                    )))
                }
                Err(_) => {
                    return Err(fail(format!(
                        "no answer within {CONNECT_TIMEOUT:?}; {hint}"
                    )))
                }
            };
        let version = match tokio::time::timeout(CONNECT_TIMEOUT, inner.version().version(())).await
        {
            Ok(Ok(v)) => v.into_inner().version,
            Ok(Err(s)) => {
                return Err(fail(format!(
                    "the version call failed ({}); is this a containerd socket? {hint}",
                    s.message()
                )))
            }
            Err(_) => {
                return Err(fail(format!(
                    "the version call got no answer within {CONNECT_TIMEOUT:?}; {hint}"
                )))
            }
        };
        check_version(&version).map_err(fail)?;
        Ok(Client {
            inner: std::sync::Arc::new(inner),
            address: path.to_string(),
            namespace: namespace.to_string(),
            version,
            runtime: labels::DEFAULT_RUNTIME.to_string(),
        })
    }

    /// The same connection, creating containers with another runtime (e.g.
    /// [`labels::NESTCACHE_RUNTIME`]).
    pub fn with_runtime(mut self, runtime: impl Into<String>) -> Client {
        self.runtime = runtime.into();
        self
    }

    /// The same connection in another namespace.
    pub fn with_namespace(&self, namespace: &str) -> Result<Client> {
        validate_id("namespace", namespace)?;
        let mut c = self.clone();
        c.namespace = namespace.to_string();
        Ok(c)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The server's version string as containerd reports it (e.g. `1.6.20~ds1`).
    pub fn server_version(&self) -> &str {
        &self.version
    }

    /// The runtime new containers are created with.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// The raw containerd-client, for calls this module does not wrap.
    pub fn raw(&self) -> &containerd_client::Client {
        &self.inner
    }

    /// A request carrying this client's namespace.
    fn request<T>(&self, msg: T) -> tonic::Request<T> {
        use tonic::Request;
        // The namespace was validated at connect (ASCII identifier), so it parses as a
        // header value.
        containerd_client::with_namespace!(msg, self.namespace.as_str())
    }

    /// One line for a failed call: what was being done, on which object, and why.
    fn error(&self, what: impl std::fmt::Display, status: Status) -> Error {
        match status.code() {
            Code::NotFound => Error::NotFound(format!(
                "{what} (namespace {}): {}",
                self.namespace,
                status.message()
            )),
            code => ContainerdError {
                address: self.address.clone(),
                namespace: self.namespace.clone(),
                what: what.to_string(),
                code,
                message: status.message().to_string(),
            }
            .into(),
        }
    }
}

/// `unix:///run/x.sock` and `/run/x.sock` name the same socket.
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Checks containerd's identifier rules (namespaces, container ids): ASCII letters and
/// digits, separated by single `.`, `_` or `-`, at most 76 characters.
pub fn validate_id(what: &str, id: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "invalid {what} {id:?}: {why} (letters, digits, and single '.', '_' or '-' between them, at most 76 characters)"
        )))
    };
    if id.is_empty() {
        return bad("empty");
    }
    if id.len() > 76 {
        return bad("too long");
    }
    let mut prev_sep = true;
    for c in id.chars() {
        let sep = matches!(c, '.' | '_' | '-');
        if !(c.is_ascii_alphanumeric() || sep) {
            return bad(&format!("character {c:?} not allowed"));
        }
        if sep && prev_sep {
            return bad("must start with a letter or digit and not repeat separators");
        }
        prev_sep = sep;
    }
    if prev_sep {
        return bad("must end with a letter or digit");
    }
    Ok(())
}

/// Accepts `1.6.20`, `v1.7.0`, `1.6.20~ds1`, `2.0.0-rc.1`; refuses anything older than
/// [`MIN_VERSION`]. An unparseable version is accepted (custom builds say odd things).
fn check_version(version: &str) -> std::result::Result<(), String> {
    let v = version.trim_start_matches('v');
    let mut parts = v.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u64>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u64>().ok());
    if let (Some(major), Some(minor)) = (major, minor) {
        if (major, minor) < MIN_VERSION {
            return Err(format!(
                "containerd {version} is too old: nestcache needs {}.{} or later",
                MIN_VERSION.0, MIN_VERSION.1
            ));
        }
    }
    Ok(())
}

/// The innermost error message (tonic's transport errors hide the io::Error inside).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "nestcache", "a.b-c_d", "A1", "x1-2"] {
            assert!(validate_id("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a/b", "a b", "ä", &"a".repeat(77)] {
            assert!(validate_id("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert!(check_version("1.6.20~ds1").is_ok());
        assert!(check_version("v1.7.2").is_ok());
        assert!(check_version("2.0.0-rc.1").is_ok());
        assert!(check_version("1.5.9").is_err());
        assert!(check_version("dev").is_ok());
    }

    #[test]
    fn unix_scheme() {
        assert_eq!(socket_path("unix:///run/c.sock"), "/run/c.sock");
        assert_eq!(socket_path("/run/c.sock"), "/run/c.sock");
    }
}

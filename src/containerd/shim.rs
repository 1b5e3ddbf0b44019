//! nestcache's shim of a group (`io.nestcache.group`), reached on its own socket. A group
//! shim lingers after its last task for the group's next one to join it; `cache rm` ends
//! the cache's at once instead, when it is idle ([`Client::end_group_shim`]).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_shim_protos::api::ShutdownRequest;
use containerd_shim_protos::ttrpc;
use containerd_shim_protos::TaskClient;
use sha2::{Digest, Sha256};

use super::{socket_path, Client};

/// Where containerd-shim puts a shim's socket (`containerd_shim::SOCKET_ROOT`).
const SOCKET_ROOT: &str = "/run/containerd/s";

/// How long the shim gets to answer (it answers at once, or is not there).
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// The socket of nestcache's shim for `group`, as containerd-shim derives it from what
/// containerd passes the shim (its address, the namespace) and the shim's grouping,
/// `nestcache-GROUP` (`shim/src/service.rs`).
pub fn group_socket(containerd_address: &str, namespace: &str, group: &str) -> PathBuf {
    let key = Path::new(containerd_address)
        .join(namespace)
        .join(format!("nestcache-{group}"));
    let hash = Sha256::digest(key.to_string_lossy().as_bytes());
    Path::new(SOCKET_ROOT).join(hex::encode(hash))
}

impl Client {
    /// Asks nestcache's shim of `group` in this namespace, if one serves, to exit now if
    /// it is idle: a `Shutdown` for no task of its own ends a lingering shim at once and
    /// leaves one with a task (or a task joining) running. Returns whether one answered.
    /// Best effort: a shim not reached exits by itself once its linger is over.
    pub async fn end_group_shim(&self, group: &str) -> bool {
        let socket = group_socket(socket_path(&self.address), &self.namespace, group);
        let ended = tokio::task::spawn_blocking(move || shutdown_now(&socket))
            .await
            .map_err(|e| e.to_string())
            .and_then(|answered| answered);
        ended.unwrap_or_else(|e| {
            tracing::warn!("ending the shim of group {group}: {e}");
            false
        })
    }
}

fn shutdown_now(socket: &Path) -> Result<bool, String> {
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        // No shim there (none lingers, or it is gone): nothing to end.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(format!("connect {}: {e}", socket.display())),
    };
    let fd = std::os::fd::IntoRawFd::into_raw_fd(stream);
    let client = ttrpc::Client::new(fd).map_err(|e| format!("{}: {e}", socket.display()))?;
    // Not `now`: that would end the shim under any task it still has.
    let req = ShutdownRequest::default();
    let ctx = ttrpc::context::with_timeout(ANSWER_WITHIN.as_nanos() as i64);
    match TaskClient::new(client).shutdown(ctx, &req) {
        Ok(_) => Ok(true),
        // The shim exits while answering: a closed connection is an answer too.
        Err(ttrpc::Error::LocalClosed) | Err(ttrpc::Error::RemoteClosed) => Ok(true),
        Err(e) => Err(format!("shutdown through {}: {e}", socket.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_is_containerd_shims_for_the_prefixed_group() {
        // containerd-shim's socket_address: sha256 of "ADDRESS/NAMESPACE/ID" under
        // /run/containerd/s (shim/tests check the same socket through the crate itself).
        let got = group_socket("/run/containerd/containerd.sock", "nestcache", "nc-cache-x");
        let key = "/run/containerd/containerd.sock/nestcache/nestcache-nc-cache-x";
        let want = hex::encode(Sha256::digest(key.as_bytes()));
        assert_eq!(got, Path::new(SOCKET_ROOT).join(want));
    }

    #[test]
    fn nothing_serving_is_nothing_to_end() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(shutdown_now(&dir.path().join("none")), Ok(false));
        // A socket file nobody listens on (a shim that died).
        let path = dir.path().join("dead");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert_eq!(shutdown_now(&path), Ok(false));
    }
}

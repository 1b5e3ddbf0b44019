//! Host-wide claims on things every nestcache on this host shares — host ports and bridge
//! subnets — whatever its state dir or containerd namespace. A claim is a file
//! `/run/nestcache/<kind>/<key>` holding the path of the claimant's own state (a
//! container's or a network's dir); a claim whose owner path is gone is stale and taken
//! over, so a crashed or deleted state dir never holds a port or subnet for good. Changes
//! happen under an flock of `<kind>/.lock`.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use super::error::NetworkError;

/// `/run` is per boot, like the bridges and iptables rules the claims stand for.
pub const DEFAULT_RUN_DIR: &str = "/run/nestcache";

fn run_dir() -> PathBuf {
    std::env::var_os("NESTCACHE_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// The claims of one kind, locked for as long as this lives.
pub struct Claims {
    dir: PathBuf,
    _lock: Flock<File>,
}

/// A live claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub key: String,
    pub owner: PathBuf,
}

impl Claims {
    pub fn lock(kind: &str) -> Result<Claims, NetworkError> {
        let dir = run_dir().join(kind);
        std::fs::create_dir_all(&dir).map_err(|e| NetworkError::file("create", &dir, e))?;
        let lock_path = dir.join(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| NetworkError::file("open", &lock_path, e))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| NetworkError::file("lock", &lock_path, std::io::Error::from(e)))?;
        Ok(Claims { dir, _lock: lock })
    }

    /// Every live claim; stale ones are removed on the way.
    pub fn live(&self) -> Vec<Claim> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            let key = e.file_name().to_string_lossy().into_owned();
            if key.starts_with('.') {
                continue;
            }
            let owner = std::fs::read_to_string(e.path()).map(PathBuf::from);
            match owner {
                Ok(owner) if owner.is_absolute() && owner.exists() => {
                    out.push(Claim { key, owner })
                }
                _ => {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        out
    }

    pub fn claim(&self, key: &str, owner: &Path) -> Result<(), NetworkError> {
        let path = self.dir.join(key);
        std::fs::write(&path, owner.as_os_str().as_encoded_bytes())
            .map_err(|e| NetworkError::file("write", &path, e))
    }

    /// Drops every claim `owner` holds.
    pub fn release(&self, owner: &Path) {
        for c in self.live() {
            if c.owner == owner {
                let _ = std::fs::remove_file(self.dir.join(&c.key));
            }
        }
    }
}

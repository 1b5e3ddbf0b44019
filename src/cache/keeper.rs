//! The keeper binary (keeper/keeper.rs, built by build.rs) embedded in nestcache, and its
//! installation at `<state>/keeper/keeper`, from where cache containers bind it read-only.
//!
//! Installed atomically (temp file, fsync, rename) and only when the file there differs,
//! so concurrent nestcache runs agree and running caches keep the inode they started with.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::error::IoContext;
use crate::layout::StateLayout;
use crate::Result;

/// The keeper's exit code when the nonce is not at the target path: nestcache and the
/// task see different directories.
pub const EXIT_OTHER_DIR: u32 = 3;
/// The keeper's exit code when it could not write the ack at the target path.
pub const EXIT_NO_ACK: u32 = 4;

static KEEPER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/keeper"));

/// Makes sure `<state>/keeper/keeper` is this build's keeper; returns its path.
pub fn install(state: &StateLayout) -> Result<PathBuf> {
    install_binary(&state.keeper_dir(), "keeper", KEEPER)
}

/// Makes sure `dir/name` holds `bytes` (mode 0755); returns its absolute path. Written
/// atomically and only when different, so running containers keep their inode.
pub(crate) fn install_binary(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
    // containerd needs an absolute bind source, whatever --state-dir looks like.
    let dir = fs::canonicalize(dir).ctx(|| format!("resolve {}", dir.display()))?;
    let path = dir.join(name);
    if let Ok(existing) = fs::read(&path) {
        if Sha256::digest(&existing) == Sha256::digest(bytes) {
            return Ok(path);
        }
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}-"))
        .tempfile_in(&dir)
        .ctx(|| format!("create a temp file in {}", dir.display()))?;
    tmp.write_all(bytes)
        .and_then(|_| tmp.as_file().sync_all())
        .and_then(|_| {
            tmp.as_file()
                .set_permissions(fs::Permissions::from_mode(0o755))
        })
        .ctx(|| format!("write {name} into {}", dir.display()))?;
    tmp.persist(&path)
        .map_err(|e| e.error)
        .ctx(|| format!("install {}", path.display()))?;
    Ok(path)
}

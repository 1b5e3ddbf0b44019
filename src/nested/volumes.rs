//! Named volumes: directories under `<state-dir>/volumes/NAME/_data`, created on first use
//! (`-v NAME:/path`, `--mount type=volume,source=NAME,...`) or by `volume create`, kept
//! until `volume rm`, which refuses while a nested container uses the volume. Containers
//! record the volumes they use in the label `io.nestcache.volumes`.
//!
//! Anonymous volumes (`-v /path`, `--mount type=volume,target=/path`, the image config's
//! `Volumes`) are named volumes with a random 64-hex name, recorded in
//! `io.nestcache.anonymous-volumes` too and removed with the container on `--rm` and
//! `rm -v`. As Docker does, an empty volume is filled on first use with what the image
//! has at the mount point ([`copy_up`]) unless `nocopy` / `volume-nocopy` says not to.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::Serialize;

use crate::containerd::Client;
use crate::error::{Error, IoContext, Result};
use crate::labels;
use crate::layout::StateLayout;
use crate::rootfs::Overlay;

/// A volume a container asks for: named, or anonymous (`name: None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeRequest {
    pub name: Option<String>,
    pub target: PathBuf,
    pub read_only: bool,
    /// `nocopy` / `volume-nocopy`: never fill it with the image's content.
    pub nocopy: bool,
}

/// A request made real: its name (anonymous ones drawn now) and directory.
#[derive(Debug, Clone)]
pub struct ResolvedVolume {
    pub request: VolumeRequest,
    pub name: String,
    pub anonymous: bool,
    pub dir: PathBuf,
}

/// Docker's anonymous volume name: 64 random hex digits.
fn anonymous_name() -> Result<String> {
    crate::fsutil::random_hex(32).ctx(|| "read /dev/urandom".into())
}

/// Creates (or finds) each requested volume, anonymous ones under fresh names. On failure
/// the anonymous ones made so far are removed again.
pub fn resolve(state: &StateLayout, requests: &[VolumeRequest]) -> Result<Vec<ResolvedVolume>> {
    let mut out: Vec<ResolvedVolume> = Vec::new();
    for r in requests {
        let (name, anonymous) = match &r.name {
            Some(n) => (n.clone(), false),
            None => match anonymous_name() {
                Ok(n) => (n, true),
                Err(e) => {
                    remove_anonymous(state, &out);
                    return Err(e);
                }
            },
        };
        match ensure(state, &name) {
            Ok(dir) => out.push(ResolvedVolume {
                request: r.clone(),
                name,
                anonymous,
                dir,
            }),
            Err(e) => {
                remove_anonymous(state, &out);
                return Err(e);
            }
        }
    }
    Ok(out)
}

/// The image config's `Volumes` not covered by a mount the user gave (`covered`), as
/// anonymous volume requests (Docker's rule).
pub fn from_image(image_volumes: &[String], covered: &[PathBuf]) -> Result<Vec<VolumeRequest>> {
    let mut out: Vec<VolumeRequest> = Vec::new();
    for v in image_volumes {
        let target = super::spec::container_path(v)
            .map_err(|e| Error::Invalid(format!("the image config's Volumes entry {v:?}: {e}")))?;
        if covered.contains(&target) || out.iter().any(|r| r.target == target) {
            continue;
        }
        out.push(VolumeRequest {
            name: None,
            target,
            read_only: false,
            nocopy: false,
        });
    }
    Ok(out)
}

/// Removes the anonymous ones among `volumes` (a failed run's, never a named one).
pub fn remove_anonymous(state: &StateLayout, volumes: &[ResolvedVolume]) {
    let names: Vec<String> = volumes
        .iter()
        .filter(|v| v.anonymous)
        .map(|v| v.name.clone())
        .collect();
    if let Err(e) = remove_dirs(state, &names) {
        tracing::warn!("removing anonymous volumes: {e}");
    }
}

/// Deletes the volumes `names` (a container's anonymous volumes, once it is removed);
/// missing ones are fine.
pub fn remove_dirs(state: &StateLayout, names: &[String]) -> Result<()> {
    for n in names {
        validate_name(n)?;
        let dir = volumes_dir(state).join(n);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(
                    format!("remove volume {n} at {}", dir.display()),
                    e,
                ))
            }
        }
    }
    Ok(())
}

/// Fills each empty volume not marked `nocopy` with what the image (its extracted layers,
/// bottom → top) has at the volume's mount point, as Docker does on first use. The
/// layers are read through a scratch overlay under `scratch` (mounted, then unmounted);
/// the copy keeps modes, owners and times, never follows a symlink, and the volume's
/// own dir takes the image dir's mode and owner. Concurrent runs on one new volume copy
/// once (an flock on the volume).
pub fn copy_up(volumes: &[ResolvedVolume], layers: &[PathBuf], scratch: &Path) -> Result<()> {
    let wanted: Vec<&ResolvedVolume> = volumes.iter().filter(|v| !v.request.nocopy).collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let view = ScratchView::mount(layers, scratch)?;
    for v in wanted {
        let lock_dir = v.dir.parent().unwrap_or(&v.dir);
        let dir = std::fs::File::open(lock_dir).ctx(|| format!("open {}", lock_dir.display()))?;
        let _lock = Flock::lock(dir, FlockArg::LockExclusive)
            .map_err(|(_, e)| Error::io(format!("lock {}", lock_dir.display()), e.into()))?;
        let empty = std::fs::read_dir(&v.dir)
            .ctx(|| format!("read volume {}", v.dir.display()))?
            .next()
            .is_none();
        if !empty {
            continue;
        }
        if let Some(src) = view.dir_at(&v.request.target)? {
            copy_tree(&src, &v.dir).map_err(|e| {
                Error::Other(format!(
                    "copy the image's {} into volume {}: {e}",
                    v.request.target.display(),
                    v.name
                ))
            })?;
        }
    }
    Ok(())
}

/// The image's union view, mounted for the copy and unmounted (and removed) on drop.
struct ScratchView {
    overlay: Overlay,
    mnt: PathBuf,
}

impl ScratchView {
    fn mount(layers: &[PathBuf], scratch: &Path) -> Result<ScratchView> {
        let overlay = Overlay::prepare(scratch, layers)?;
        let mnt = scratch.join("mnt");
        std::fs::create_dir_all(&mnt).ctx(|| format!("create {}", mnt.display()))?;
        let view = ScratchView { overlay, mnt };
        view.overlay.mount(&view.mnt)?;
        Ok(view)
    }

    /// The directory at `target` in the image, every component a real directory (a
    /// symlink on the way could lead out of the image onto the host: then nothing).
    fn dir_at(&self, target: &Path) -> Result<Option<PathBuf>> {
        let mut p = self.mnt.clone();
        for c in target.components() {
            let Component::Normal(name) = c else { continue };
            p.push(name);
            match std::fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(format!("stat {}", p.display()), e)),
            }
        }
        Ok(Some(p))
    }
}

impl Drop for ScratchView {
    fn drop(&mut self) {
        if let Err(e) = crate::rootfs::unmount(&self.mnt) {
            tracing::warn!("copy-up: {e}");
            return;
        }
        let _ = std::fs::remove_dir(&self.mnt);
        let _ = self.overlay.remove();
    }
}

/// Copies the contents of directory `src` into the existing directory `dst`, then gives
/// `dst` the mode, owner and times of `src`. Symlinks are copied as links, devices and
/// FIFOs recreated, sockets skipped; hard links become separate files.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(src)? {
        let entry = entry?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let meta = std::fs::symlink_metadata(&from)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            std::fs::create_dir(&to)?;
            copy_tree(&from, &to)?;
            continue;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to)?;
        } else {
            use std::os::unix::fs::FileTypeExt;
            if ft.is_socket() {
                continue;
            }
            let kind = nix::sys::stat::SFlag::from_bits_truncate(meta.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(meta.mode() & 0o7777);
            nix::sys::stat::mknod(&to, kind, perm, meta.rdev())?;
        }
        set_attrs(&to, &meta)?;
    }
    set_attrs(dst, &std::fs::symlink_metadata(src)?)
}

/// Owner, mode (not for symlinks) and times of `meta` onto `path`, not following it.
fn set_attrs(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(meta.uid()), Some(meta.gid()))?;
    if !meta.file_type().is_symlink() {
        // After chown, which clears setuid/setgid bits.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    let t = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
    nix::sys::stat::utimensat(
        None,
        path,
        &t(meta.atime(), meta.atime_nsec()),
        &t(meta.mtime(), meta.mtime_nsec()),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )?;
    Ok(())
}

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The host directory mounted into containers.
    pub mountpoint: PathBuf,
    /// Nested containers (in this namespace) that use it.
    pub used_by: Vec<String>,
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        || name.len() > 128
    {
        return Err(Error::Invalid(format!(
            "invalid volume name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit (a host path must be absolute)"
        )));
    }
    Ok(())
}

fn volumes_dir(state: &StateLayout) -> PathBuf {
    state.root().join("volumes")
}

/// The directory containers mount for volume `name`.
pub fn mountpoint(state: &StateLayout, name: &str) -> PathBuf {
    volumes_dir(state).join(name).join("_data")
}

/// Creates volume `name` if it does not exist; returns its mountpoint.
pub fn ensure(state: &StateLayout, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    let dir = mountpoint(state, name);
    std::fs::create_dir_all(&dir).ctx(|| format!("create volume {name} at {}", dir.display()))?;
    Ok(dir)
}

/// Every volume, with the nested containers using each.
pub async fn list(client: &Client, state: &StateLayout) -> Result<Vec<VolumeInfo>> {
    let names = match std::fs::read_dir(volumes_dir(state)) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::io(
                format!("list {}", volumes_dir(state).display()),
                e,
            ))
        }
    };
    let users = users(client).await?;
    let mut out: Vec<VolumeInfo> = names
        .into_iter()
        .map(|name| VolumeInfo {
            mountpoint: mountpoint(state, &name),
            used_by: users
                .iter()
                .filter(|(_, vols)| vols.contains(&name))
                .map(|(id, _)| id.clone())
                .collect(),
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Volume `name`; NotFound when it does not exist.
pub async fn inspect(client: &Client, state: &StateLayout, name: &str) -> Result<VolumeInfo> {
    validate_name(name)?;
    list(client, state)
        .await?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| Error::NotFound(format!("volume {name:?} (see `nestcache volume ls`)")))
}

/// Removes volume `name` and its content; refuses while a nested container uses it.
pub async fn remove(client: &Client, state: &StateLayout, name: &str) -> Result<()> {
    let v = inspect(client, state, name).await?;
    if !v.used_by.is_empty() {
        return Err(Error::Invalid(format!(
            "volume {name} is in use by {} (remove {} first)",
            v.used_by.join(", "),
            if v.used_by.len() == 1 { "it" } else { "them" }
        )));
    }
    let dir = volumes_dir(state).join(name);
    std::fs::remove_dir_all(&dir).ctx(|| format!("remove volume {name} at {}", dir.display()))
}

/// (container id, volumes it uses) for every nested container.
async fn users(client: &Client) -> Result<Vec<(String, Vec<String>)>> {
    let found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED)])
        .await?;
    Ok(found
        .into_iter()
        .map(|c| {
            let vols = names_in_label(c.label(labels::VOLUMES));
            (c.id, vols)
        })
        .collect())
}

/// The named volumes a container's VOLUMES label records (comma-separated).
pub fn names_in_label(label: Option<&str>) -> Vec<String> {
    label
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `-v SOURCE:…`: a named volume when SOURCE is not a path.
pub fn is_volume_name(source: &str) -> bool {
    !source.starts_with('/')
        && !source.starts_with('.')
        && Path::new(source).components().nth(1).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        for ok in ["data", "a.b-c_d", "0"] {
            validate_name(ok).unwrap();
            assert!(is_volume_name(ok));
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(!is_volume_name("/abs") && !is_volume_name("./rel") && !is_volume_name("a/b"));
        let state = StateLayout::new("/s");
        assert_eq!(mountpoint(&state, "v"), PathBuf::from("/s/volumes/v/_data"));
        let dir = tempfile::tempdir().unwrap();
        let state = StateLayout::new(dir.path());
        let p = ensure(&state, "v").unwrap();
        assert!(p.is_dir());
        assert!(ensure(&state, "../x").is_err());
    }
}

//! Small file-system helpers that several modules need with the same guarantees, written
//! once: durable atomic replacement of a small file, fsync of a directory, random hex,
//! opening a file that must be a regular file and not a symlink, and unmounting a target
//! that may still be busy. They return `io::Result` (or a small enum) so that each caller
//! wraps the failure in its own error.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{umount2, MntFlags};

/// Replaces `path` with `data`, durably: a temp file in `tmp_dir` (on the same file
/// system as `path`) is written and fsynced, renamed over `path`, and `path`'s directory
/// is fsynced, so a crash leaves the old content or the new, never a mix, and the new
/// content survives once this returns. An existing file's permissions are kept.
pub fn write_atomic_via(tmp_dir: &Path, path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(tmp_dir)?;
    tmp.write_all(data)?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// [`write_atomic_via`] with the temp file beside `path`.
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_via(path.parent().unwrap_or(Path::new(".")), path, data)
}

/// fsyncs a directory, so that a rename into it survives a crash.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// `bytes` random bytes from the kernel, as 2×`bytes` lowercase hex digits.
pub fn random_hex(bytes: usize) -> io::Result<String> {
    let mut buf = vec![0u8; bytes];
    File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// Why [`open_regular`] did not open a file.
#[derive(Debug)]
pub enum OpenRegularError {
    /// Nothing at the path.
    Missing,
    /// The path is a symlink: refused, never followed.
    Symlink,
    /// The path is a directory, a fifo, a device...
    NotRegular,
    Io(io::Error),
}

/// Opens `path` for reading when it is a regular file: a symlink at the last component is
/// refused rather than followed (`O_NOFOLLOW`), and anything but a regular file too, so a
/// hostile tree cannot make the caller read outside it or block on a fifo. Blobs, in the
/// store and in OCI layouts, are read through here.
pub fn open_regular(path: &Path) -> Result<File, OpenRegularError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => OpenRegularError::Symlink,
            Some(libc::ENOENT) => OpenRegularError::Missing,
            _ => OpenRegularError::Io(e),
        })?;
    let meta = file.metadata().map_err(OpenRegularError::Io)?;
    if !meta.file_type().is_file() {
        return Err(OpenRegularError::NotRegular);
    }
    Ok(file)
}

/// What [`unmount`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmounted {
    /// The top mount at the target is gone.
    Yes,
    /// Something still held it (a process chdir'd in): it was detached, and the kernel
    /// frees it when the last user goes.
    Detached,
    /// Nothing was mounted there, or the target is gone: cleanup may run twice.
    NotMounted,
}

/// Unmounts the top mount at `target`, detaching it when it is busy.
pub fn unmount(target: &Path) -> io::Result<Unmounted> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) => Ok(Unmounted::Yes),
        Err(Errno::EINVAL) | Err(Errno::ENOENT) => Ok(Unmounted::NotMounted),
        Err(Errno::EBUSY) => {
            umount2(target, MntFlags::MNT_DETACH)?;
            Ok(Unmounted::Detached)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_keeping_the_mode_and_leaves_no_temp_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        assert!(write_atomic(&t.path().join("no/such/dir/f"), b"x").is_err());
    }

    #[test]
    fn open_regular_refuses_symlinks_dirs_and_fifos() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::os::unix::fs::symlink(&f, t.path().join("l")).unwrap();
        nix::unistd::mkfifo(&t.path().join("p"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(open_regular(&f).is_ok());
        let e = |n: &str| open_regular(&t.path().join(n)).unwrap_err();
        assert!(matches!(e("l"), OpenRegularError::Symlink));
        assert!(matches!(e("p"), OpenRegularError::NotRegular));
        assert!(matches!(e("."), OpenRegularError::NotRegular));
        assert!(matches!(e("none"), OpenRegularError::Missing));
    }

    #[test]
    fn unmount_of_what_is_not_mounted_is_fine() {
        if !nix::unistd::geteuid().is_root() {
            return; // umount2 needs CAP_SYS_ADMIN: EPERM otherwise
        }
        let t = tempfile::tempdir().unwrap();
        assert_eq!(unmount(t.path()).unwrap(), Unmounted::NotMounted);
        assert_eq!(
            unmount(&t.path().join("gone")).unwrap(),
            Unmounted::NotMounted
        );
    }

    #[test]
    fn random_hex_has_the_length_asked_and_differs() {
        let a = random_hex(6).unwrap();
        assert_eq!(a.len(), 12);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, random_hex(6).unwrap());
    }
}

//! The overlay rootfs of one nested container: read-only lower layers shared by every
//! container of the image, an upper and a work dir of its own.
//!
//! overlayfs takes its options in one page (4 KiB). A hundred absolute layer paths do not
//! fit, so each container gets a dir of short symlinks, `lower/0` (bottom layer) ..
//! `lower/N` (top), pointing at the shared layer dirs (overlayfs follows them at mount
//! time). Given to containerd as absolute paths, they share the prefix `<dir>/lower/`,
//! which is exactly what containerd's mount code needs when the options exceed a page: it
//! changes into the common parent and passes `lowerdir=N:..:0`. `mount` here does the same
//! from a thread that has its own working directory.

use std::ffi::OsStr;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};

/// What the kernel accepts as overlay mount data: less than one page.
pub const MAX_MOUNT_DATA: usize = 4096;

/// overlayfs refuses more lower layers than this (OVL_MAX_STACK).
pub const MAX_LAYERS: usize = 500;

/// Whether this kernel's overlayfs has the `volatile` option (Linux 5.10 and later).
pub fn volatile_supported() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .is_ok_and(|release| kernel_at_least(release.trim(), (5, 10)))
}

/// Compares a kernel release such as `6.1.0-18-amd64` with (major, minor).
fn kernel_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

/// One container's overlay: its dir under `<state>/containers/<id>/` and the layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    dir: PathBuf,
    layer_count: usize,
    volatile: bool,
    /// Upper and work dirs someone else owns (a containerd snapshot's), used instead of
    /// `upper/` and `work/` under `dir` and never removed here.
    external: Option<(PathBuf, PathBuf)>,
}

impl Overlay {
    /// Creates `lower/0..N` links to `layers` (bottom → top), `upper/` and `work/` under
    /// `dir`. `dir` may exist (it also holds the container's io and log); its overlay
    /// parts must not.
    pub fn prepare(dir: &Path, layers: &[PathBuf]) -> Result<Overlay> {
        Self::prepare_with(dir, layers, None)
    }

    /// Like [`Overlay::prepare`], but writes go to `upper` (with `work` beside it), dirs
    /// that exist and stay someone else's: the shim hands a store-rootfs container the
    /// upper dir of containerd's snapshot, so the snapshot's usage (what CRI reports as
    /// the writable layer) is what the container wrote.
    pub fn prepare_on_upper(
        dir: &Path,
        layers: &[PathBuf],
        upper: &Path,
        work: &Path,
    ) -> Result<Overlay> {
        for d in [upper, work] {
            if !d.is_absolute() || !d.is_dir() {
                return Err(Error::NotFound(format!(
                    "overlay upper/work directory {}",
                    d.display()
                )));
            }
        }
        Self::prepare_with(dir, layers, Some((upper.to_path_buf(), work.to_path_buf())))
    }

    fn prepare_with(
        dir: &Path,
        layers: &[PathBuf],
        external: Option<(PathBuf, PathBuf)>,
    ) -> Result<Overlay> {
        if layers.len() > MAX_LAYERS {
            return Err(Error::Invalid(format!(
                "the image has {} layers; overlayfs stacks at most {MAX_LAYERS}",
                layers.len()
            )));
        }
        for l in layers {
            if !l.is_absolute() || !l.is_dir() {
                return Err(Error::NotFound(format!(
                    "layer directory {} (not extracted?)",
                    l.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let overlay = Overlay {
            dir: dir.to_path_buf(),
            layer_count: layers.len().max(1),
            volatile: false,
            external,
        };
        let result = overlay.create_parts(layers);
        if result.is_err() {
            let _ = overlay.remove();
        }
        result.map(|()| overlay)
    }

    /// An overlay prepared earlier (for unmount/remove by a later command).
    pub fn existing(dir: &Path) -> Result<Overlay> {
        let lower = dir.join("lower");
        let count = std::fs::read_dir(&lower)
            .ctx(|| format!("read {}", lower.display()))?
            .count();
        Ok(Overlay {
            dir: dir.to_path_buf(),
            layer_count: count,
            volatile: false,
            external: None,
        })
    }

    /// Mounts with overlayfs' `volatile` option (Linux 5.10+; ignored where the kernel is
    /// older): the overlay then never syncs its upper filesystem — not on fsync, and not
    /// on unmount, where a sync of the whole host filesystem otherwise lands on the
    /// container's delete (hundreds of ms when other work left dirty pages). Only for
    /// containers whose upper dir is thrown away with them (`run --rm`): after a crash a
    /// volatile upper dir is not to be trusted, and overlayfs refuses to mount it again.
    pub fn volatile(mut self, on: bool) -> Self {
        self.volatile = on && volatile_supported();
        self
    }

    fn create_parts(&self, layers: &[PathBuf]) -> Result<()> {
        let lower = self.lower_links_dir();
        std::fs::create_dir(&lower).ctx(|| format!("create {}", lower.display()))?;
        if layers.is_empty() {
            // An image without layers: overlayfs still needs one lower dir.
            let empty = lower.join("0");
            std::fs::create_dir(&empty).ctx(|| format!("create {}", empty.display()))?;
        }
        for (i, layer) in layers.iter().enumerate() {
            let link = lower.join(i.to_string());
            symlink(layer, &link)
                .ctx(|| format!("link {} -> {}", link.display(), layer.display()))?;
        }
        if self.external.is_none() {
            for d in [self.upper_dir(), self.work_dir()] {
                std::fs::create_dir(&d).ctx(|| format!("create {}", d.display()))?;
            }
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn lower_links_dir(&self) -> PathBuf {
        self.dir.join("lower")
    }

    pub fn upper_dir(&self) -> PathBuf {
        match &self.external {
            Some((upper, _)) => upper.clone(),
            None => self.dir.join("upper"),
        }
    }

    pub fn work_dir(&self) -> PathBuf {
        match &self.external {
            Some((_, work)) => work.clone(),
            None => self.dir.join("work"),
        }
    }

    /// Link names, top layer first, as overlayfs wants its lowerdir list.
    fn lower_names(&self) -> Vec<String> {
        (0..self.layer_count).rev().map(|i| i.to_string()).collect()
    }

    /// Options with absolute paths, for containerd's task-create `rootfs`.
    pub fn options(&self) -> Vec<String> {
        let lower = self.lower_links_dir();
        let lowerdirs: Vec<String> = self
            .lower_names()
            .iter()
            .map(|n| lower.join(n).to_string_lossy().into_owned())
            .collect();
        let mut options = vec![
            format!("workdir={}", self.work_dir().display()),
            format!("upperdir={}", self.upper_dir().display()),
            format!("lowerdir={}", lowerdirs.join(":")),
        ];
        if self.volatile {
            options.push("volatile".into());
        }
        options
    }

    /// The mount data `mount` passes: lowerdirs relative to the links dir.
    pub fn relative_mount_data(&self) -> String {
        format!(
            "lowerdir={},upperdir={},workdir={}{}",
            self.lower_names().join(":"),
            self.upper_dir().display(),
            self.work_dir().display(),
            if self.volatile { ",volatile" } else { "" }
        )
    }

    /// The overlay as a containerd mount (task-create `rootfs`).
    #[cfg(feature = "cli")]
    pub fn to_containerd_mount(&self) -> containerd_client::types::Mount {
        containerd_client::types::Mount {
            r#type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: self.options(),
        }
    }

    /// Mounts the overlay at `target` with short relative lowerdirs, from a thread that
    /// unshares its filesystem context so that its `chdir` does not move the process.
    pub fn mount(&self, target: &Path) -> Result<()> {
        let data = self.relative_mount_data();
        if data.len() >= MAX_MOUNT_DATA {
            return Err(Error::Invalid(format!(
                "overlay options for {} layers are {} bytes, more than a page ({MAX_MOUNT_DATA}); use a shorter state dir",
                self.layer_count,
                data.len()
            )));
        }
        for p in [target, &self.upper_dir(), &self.work_dir()] {
            if p.as_os_str().as_encoded_bytes().contains(&b',')
                || p.as_os_str().as_encoded_bytes().contains(&b':')
            {
                return Err(Error::Invalid(format!(
                    "path {} contains ',' or ':', which overlay options cannot carry",
                    p.display()
                )));
            }
        }
        let links = self.lower_links_dir();
        let target = target.to_path_buf();
        let what = format!("mount overlay at {}", target.display());
        std::thread::scope(|s| {
            s.spawn(|| -> std::io::Result<()> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
                nix::unistd::chdir(&links)?;
                nix::mount::mount(
                    Some(OsStr::new("overlay")),
                    &target,
                    Some(OsStr::new("overlay")),
                    nix::mount::MsFlags::empty(),
                    Some(data.as_str()),
                )?;
                Ok(())
            })
            .join()
            .map_err(|_| Error::Other(format!("{what}: the mount thread panicked")))?
            .ctx(|| format!("{what} ({} layers)", self.layer_count))
        })
    }

    /// Deletes the links, upper and work dirs (what the container wrote is gone; external
    /// upper and work dirs stay, they are their owner's). The overlay must not be
    /// mounted any more.
    pub fn remove(&self) -> Result<()> {
        let mut dirs = vec![self.lower_links_dir()];
        if self.external.is_none() {
            dirs.extend([self.upper_dir(), self.work_dir()]);
        }
        for d in dirs {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", d.display()), e)),
            }
        }
        Ok(())
    }
}

/// Unmounts `target`, detaching it when busy; a target that is not mounted (or gone) is
/// fine, so cleanup can run twice.
pub fn unmount(target: &Path) -> Result<()> {
    crate::fsutil::unmount(target)
        .map(drop)
        .map_err(|e| Error::io(format!("unmount {}", target.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layers(root: &Path, n: usize) -> Vec<PathBuf> {
        // Long, deep paths: 120 of them as absolute lowerdirs would overflow a page.
        let base = root.join("a-rather-long-directory-name-for-layers/layers/diff");
        (0..n)
            .map(|i| {
                let d = base.join(format!("{i:064x}"));
                std::fs::create_dir_all(&d).unwrap();
                std::fs::write(d.join(format!("f{i}")), i.to_string()).unwrap();
                std::fs::write(d.join("top"), i.to_string()).unwrap();
                d
            })
            .collect()
    }

    #[test]
    fn options_list_short_links_top_first() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("containers/c1");
        let o = Overlay::prepare(&dir, &layers(t.path(), 3)).unwrap();
        let lower = dir.join("lower");
        assert_eq!(
            o.options(),
            vec![
                format!("workdir={}", dir.join("work").display()),
                format!("upperdir={}", dir.join("upper").display()),
                format!(
                    "lowerdir={}/2:{}/1:{}/0",
                    lower.display(),
                    lower.display(),
                    lower.display()
                ),
            ]
        );
        assert!(o
            .relative_mount_data()
            .starts_with("lowerdir=2:1:0,upperdir="));
        #[cfg(feature = "cli")]
        {
            let m = o.to_containerd_mount();
            assert_eq!(
                (m.r#type.as_str(), m.source.as_str()),
                ("overlay", "overlay")
            );
        }
        assert_eq!(Overlay::existing(&dir).unwrap(), o);
        o.remove().unwrap();
        assert!(!lower.exists() && !dir.join("upper").exists() && !dir.join("work").exists());
    }

    #[test]
    fn kernel_release_comparison() {
        assert!(kernel_at_least("6.1.0-18-amd64", (5, 10)));
        assert!(kernel_at_least("5.10.0", (5, 10)));
        assert!(kernel_at_least("6.18.44-fc-v782", (5, 10)));
        assert!(!kernel_at_least("5.4.0-150-generic", (5, 10)));
        assert!(!kernel_at_least("4.19.0", (5, 10)));
        assert!(!kernel_at_least("garbage", (5, 10)));
        assert!(!kernel_at_least("", (5, 10)));
    }

    #[test]
    fn volatile_is_an_option_only_when_asked_and_supported() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c");
        let o = Overlay::prepare(&dir, &layers(t.path(), 1)).unwrap();
        assert!(!o.options().contains(&"volatile".to_string()));
        let v = o.clone().volatile(true);
        assert_eq!(
            v.options().contains(&"volatile".to_string()),
            volatile_supported()
        );
        assert_eq!(
            v.relative_mount_data().ends_with(",volatile"),
            volatile_supported()
        );
        assert!(!o
            .volatile(false)
            .options()
            .contains(&"volatile".to_string()));
    }

    #[test]
    fn refuses_missing_layers_and_leaves_nothing() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c");
        let mut l = layers(t.path(), 2);
        l.push(t.path().join("missing"));
        let e = Overlay::prepare(&dir, &l).unwrap_err();
        assert!(
            matches!(&e, Error::NotFound(m) if m.contains("missing")),
            "{e}"
        );
        assert!(!dir.join("lower").exists());
        let e = Overlay::prepare(&dir, &vec![t.path().join("x"); MAX_LAYERS + 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("at most"), "{e}");
    }

    #[test]
    fn mounts_120_layers_for_real() {
        testkit::require!(root);
        let t = tempfile::tempdir().unwrap();
        let l = layers(t.path(), 120);
        let dir = t.path().join("state/containers/nested-with-a-long-id");
        let o = Overlay::prepare(&dir, &l).unwrap();
        // Absolute lowerdirs would not fit in a page; the relative ones do.
        let absolute: usize = l.iter().map(|p| p.as_os_str().len() + 1).sum();
        assert!(absolute > MAX_MOUNT_DATA, "{absolute}");
        assert!(o.options().concat().len() > MAX_MOUNT_DATA);
        assert!(o.relative_mount_data().len() < MAX_MOUNT_DATA);

        let target = dir.join("rootfs");
        std::fs::create_dir(&target).unwrap();
        let cwd = std::env::current_dir().unwrap();
        o.mount(&target).unwrap();
        assert_eq!(
            std::env::current_dir().unwrap(),
            cwd,
            "mount moved the process"
        );
        let result = std::panic::catch_unwind(|| {
            for i in [0, 1, 59, 119] {
                assert_eq!(
                    std::fs::read_to_string(target.join(format!("f{i}"))).unwrap(),
                    i.to_string()
                );
            }
            assert_eq!(std::fs::read_to_string(target.join("top")).unwrap(), "119");
            // Writes land in the container's upper dir, never in a shared layer.
            std::fs::write(target.join("top"), "mine").unwrap();
        });
        unmount(&target).unwrap();
        result.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("upper/top")).unwrap(),
            "mine"
        );
        assert_eq!(std::fs::read_to_string(l[119].join("top")).unwrap(), "119");
        // Unmounting twice is fine (cleanup may run again).
        unmount(&target).unwrap();
        o.remove().unwrap();
    }

    #[test]
    fn writes_go_to_an_external_upper_that_remove_leaves() {
        testkit::require!(root);
        let t = tempfile::tempdir().unwrap();
        let (upper, work) = (t.path().join("snap/fs"), t.path().join("snap/work"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&work).unwrap();
        let dir = t.path().join("c");
        let l = layers(t.path(), 2);
        assert!(Overlay::prepare_on_upper(&dir, &l, &t.path().join("nope"), &work).is_err());
        let o = Overlay::prepare_on_upper(&dir, &l, &upper, &work).unwrap();
        assert!(!dir.join("upper").exists() && !dir.join("work").exists());
        assert!(o
            .relative_mount_data()
            .contains(&format!("upperdir={}", upper.display())));
        let target = dir.join("rootfs");
        std::fs::create_dir(&target).unwrap();
        o.mount(&target).unwrap();
        let written = std::fs::write(target.join("new"), "x");
        unmount(&target).unwrap();
        written.unwrap();
        assert_eq!(std::fs::read_to_string(upper.join("new")).unwrap(), "x");
        o.remove().unwrap();
        assert!(upper.join("new").is_file(), "the owner's upper dir stays");
        assert!(!dir.join("lower").exists());
    }

    #[test]
    fn mounts_volatile_for_real() {
        testkit::require!(root);
        if !volatile_supported() {
            eprintln!("skipped mounts_volatile_for_real: this kernel's overlayfs has no volatile (Linux 5.10+)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c");
        let o = Overlay::prepare(&dir, &layers(t.path(), 2))
            .unwrap()
            .volatile(true);
        let target = dir.join("rootfs");
        std::fs::create_dir(&target).unwrap();
        o.mount(&target).unwrap();
        let written = std::fs::write(target.join("new"), "x")
            .and_then(|()| std::fs::File::open(target.join("new"))?.sync_all());
        unmount(&target).unwrap();
        written.unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("upper/new")).unwrap(), "x");
        o.remove().unwrap();
    }
}

//! mkimage: deterministic test images for nestcache's tests and benchmarks.
//!
//! Same [`ImageSpec`] (and the same host `/bin/busybox`) gives the same bytes, digests
//! and archives on every run: fixed mtimes, sorted entries, numeric owners, seeded
//! pseudo-random content ([`rng::Rng`], xorshift64*). Layers are streamed from the
//! generator through the compressor straight to disk, hashed on the way; no layer is
//! ever held in memory, and layers are generated in parallel (one worker per core).
//!
//! # Images
//! An image is a list of [`LayerSpec`]s, bottom to top:
//! - [`LayerSpec::Base`]: the busybox-static root: `/bin/busybox` + applet symlinks
//!   (`sh ls cat echo true false sleep id env pwd wc stat find sha256sum` …, see
//!   [`layers::APPLETS`]), `/usr/bin/env`, `/etc/passwd` + `/etc/group` with `root` (0),
//!   `app` (1000:1000, home `/home/app`) and `nobody` (65534:65534/`nogroup`), `/tmp`
//!   1777, `/root` 0700, and `/opt/lower/{keep.txt,gone.txt,gone-dir/x.txt,opaque/old*.txt}`
//!   for the features layer to act on.
//! - [`LayerSpec::Generated`]: seeded files under `/data/L<layer index>/d<NNNN>/f<NNNNNN>.bin`
//!   (about half compressible), plus `hardlink.bin` (to `d0000/f000000.bin`), a `latest`
//!   symlink, and, when the layer below is generated too, a whiteout of its `f000001.bin`.
//! - [`LayerSpec::Features`] (expects `Base` below), in `/opt`:
//!   `lower/.wh.gone.txt` and `lower/.wh.gone-dir` (whiteouts), `lower/opaque/.wh..wh..opq`
//!   with `new.txt` (opaque dir), `upper/hardlink.txt` → `upper/file.txt` (hardlink in the
//!   layer), `upper/symlink` → `file.txt`, `upper/abs-symlink` →
//!   `/opt/lower/keep.txt`, `upper/dangling`, `upper/fifo`, `upper/null` (char 1:3),
//!   `upper/xattr.txt` (PAX xattrs `user.mkimage.note=hello xattr`, `user.mkimage.empty=`),
//!   `upper/setuid` (04755), `upper/setgid` (02755, gid 1000), `upper/sticky/` (01777),
//!   `upper/owned-app.txt` (1000:1000, 0640), `upper/owned-nobody.txt` (65534, 0600);
//!   and `/etc/mkimage-release` = `name=<ref name>\n`.
//! - [`LayerSpec::LowerHardlink`]: `/opt/upper/lower-hardlink.txt`, a hardlink to the base
//!   layer's `/opt/lower/keep.txt` (the overlay trap; containerd refuses to import it, so
//!   only the `lower-hardlink` preset has it).
//! - [`LayerSpec::Tiny`]: `/layers/<index>.txt`; [`LayerSpec::Custom`]: your own [`Entry`]s.
//!
//! [`ImageSpec`] also sets compression (gzip, zstd, none) and level, the platform, a
//! two-platform index (`multi_platform`: adds [`Platform::other`], e.g. linux/arm64
//! beside linux/amd64, whose one small layer only holds `/etc/mkimage-release` =
//! `platform=linux/arm64`), the config (Entrypoint, Cmd, Env, WorkingDir, User, Labels),
//! the ref name and the docker-archive repo tag. [`preset`] gives the named images:
//! `small`, `features`, `medium`, `large`, `many-small`, `many-layers`, `lower-hardlink`.
//!
//! # Outputs
//! - [`ImageSpec::write_layout`]: an OCI image layout dir; `index.json` names the image
//!   with `org.opencontainers.image.ref.name` = `ref_name` (`skopeo inspect oci:DIR:REF`,
//!   `umoci unpack --image DIR:REF`). Other refs already in the layout are kept.
//! - [`write_oci_archive`]: a tar of a layout (`oci-archive:FILE`, `ctr images import`).
//! - [`write_docker_archive`]: `docker save` format (`manifest.json` with Config,
//!   RepoTags, Layers; `<config hex>.json`; `<diff_id hex>/layer.tar` uncompressed).
//!
//! ```no_run
//! let dir = tempfile::tempdir()?;
//! let mut spec = mkimage::preset("features")?;
//! spec.config.user = Some("app".into());
//! spec.compression = mkimage::Compression::Zstd;
//! let built = spec.write_layout(&dir.path().join("layout"))?;
//! mkimage::write_oci_archive(&built.layout, &dir.path().join("img.oci.tar"))?;
//! mkimage::write_docker_archive(&built, &dir.path().join("img.docker.tar"))?;
//! println!("{} {}", built.image.manifest.digest, built.image.layers[0].diff_id);
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! The `nestcache-mkimage` binary does the same from the command line
//! (`nestcache-mkimage --help`).

mod archive;
mod content;
pub mod entry;
mod image;
pub mod layers;
mod presets;
pub mod rng;

pub use archive::{write_docker_archive, write_oci_archive};
pub use content::Content;
pub use entry::{Data, Entry, Kind, MTIME};
pub use image::{
    Built, BuiltLayer, BuiltManifest, Compression, ConfigSpec, Desc, ImageSpec, Platform,
    ANNOTATION_REF_NAME, CREATED, MT_CONFIG, MT_INDEX, MT_MANIFEST,
};
pub use layers::LayerSpec;
pub use presets::{preset, PRESETS};

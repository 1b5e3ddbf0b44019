//! Layer tarballs built byte by byte for the unpack tests, hostile ones included (the tar
//! crate's builder refuses `..` and absolute names, so names are written into raw headers).

use std::io::Write;
use std::path::{Path, PathBuf};

use nestcache::digest::Digest;
use nestcache::unpack::LayerBlob;
use tar::{EntryType, Header};

pub const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub struct LayerTar {
    b: tar::Builder<Vec<u8>>,
}

impl Default for LayerTar {
    fn default() -> Self {
        Self::new()
    }
}

impl LayerTar {
    pub fn new() -> Self {
        LayerTar {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(name: &str, kind: EntryType, size: u64, mode: u32) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        let raw = &mut h.as_old_mut().name;
        assert!(name.len() < raw.len(), "test names stay short");
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h
    }

    fn link_header(name: &str, kind: EntryType, target: &str) -> Header {
        let mut h = Self::header(name, kind, 0, 0o777);
        let raw = &mut h.as_old_mut().linkname;
        raw[..target.len()].copy_from_slice(target.as_bytes());
        h
    }

    pub fn raw(&mut self, mut h: Header, data: &[u8]) -> &mut Self {
        h.set_cksum();
        self.b.append(&h, data).unwrap();
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.file_with(name, data, 0o644, 0, 0)
    }

    pub fn file_with(
        &mut self,
        name: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(name, EntryType::Regular, data.len() as u64, mode);
        h.set_uid(uid);
        h.set_gid(gid);
        self.raw(h, data)
    }

    pub fn dir(&mut self, name: &str, mode: u32) -> &mut Self {
        let h = Self::header(name, EntryType::Directory, 0, mode);
        self.raw(h, b"")
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let h = Self::link_header(name, EntryType::Symlink, target);
        self.raw(h, b"")
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        let h = Self::link_header(name, EntryType::Link, target);
        self.raw(h, b"")
    }

    pub fn node(&mut self, name: &str, kind: EntryType, major: u32, minor: u32) -> &mut Self {
        let mut h = Self::header(name, kind, 0, 0o666);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.raw(h, b"")
    }

    /// A file with PAX xattr records.
    pub fn file_xattrs(&mut self, name: &str, data: &[u8], xattrs: &[(&str, &[u8])]) -> &mut Self {
        let keys: Vec<(String, &[u8])> = xattrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), *v))
            .collect();
        self.b
            .append_pax_extensions(keys.iter().map(|(k, v)| (k.as_str(), *v)))
            .unwrap();
        self.file(name, data)
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.b, tar::Builder::new(Vec::new()));
        b.into_inner().unwrap()
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 1).unwrap()
}

/// Writes a blob into a content dir's `blobs/sha256/` and describes it as a layer.
pub fn put_layer(root: &Path, tar: &[u8], gz: bool) -> LayerBlob {
    let blob = if gz { gzip(tar) } else { tar.to_vec() };
    let digest = Digest::of(&blob);
    let dir = root.join("blobs/sha256");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(digest.hex()), &blob).unwrap();
    LayerBlob {
        digest,
        media_type: if gz { GZIP } else { TAR }.to_string(),
        diff_id: Digest::of(tar),
    }
}

/// A scratch directory with a not-yet-existing destination inside.
pub fn scratch() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::Builder::new()
        .prefix("nc-unpack-")
        .tempdir()
        .unwrap();
    let dest = t.path().join("layer");
    (t, dest)
}

/// Writes an OCI image layout at `root` holding one image `reference` made of `layers`
/// (uncompressed tars; stored gzip-compressed). Returns the layers as the store sees them.
pub fn write_oci_image(root: &Path, reference: &str, layers: &[Vec<u8>]) -> Vec<LayerBlob> {
    let blobs: Vec<LayerBlob> = layers.iter().map(|t| put_layer(root, t, true)).collect();
    let put = |data: &[u8]| -> (Digest, usize) {
        let d = Digest::of(data);
        std::fs::write(root.join("blobs/sha256").join(d.hex()), data).unwrap();
        (d, data.len())
    };
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": blobs.iter().map(|b| b.diff_id.to_string()).collect::<Vec<_>>()},
    });
    let (config_digest, config_size) = put(&serde_json::to_vec(&config).unwrap());
    let layer_descs: Vec<_> = blobs
        .iter()
        .map(|b| {
            let size = std::fs::metadata(root.join("blobs/sha256").join(b.digest.hex())).unwrap().len();
            serde_json::json!({"mediaType": b.media_type, "digest": b.digest.to_string(), "size": size})
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.to_string(), "size": config_size},
        "layers": layer_descs,
    });
    let (m_digest, m_size) = put(&serde_json::to_vec(&manifest).unwrap());
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": m_digest.to_string(),
            "size": m_size,
            "annotations": {"org.opencontainers.image.ref.name": reference},
        }],
    });
    std::fs::write(root.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(
        root.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    blobs
}

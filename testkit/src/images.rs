//! Small hand-built images for the store and stage tests: OCI layout dirs, OCI archives
//! and docker archives, with knobs to break them in specific ways. (The `mkimage` crate
//! builds realistic images; these are deliberately tiny and tamperable.)

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use nestcache::digest::Digest;
use serde_json::{json, Value};

use crate::cmd::cargo_bin;
pub use crate::layers::gzip;

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// A blob with its descriptor.
#[derive(Clone)]
pub struct Blob {
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Self {
        Blob {
            media_type: media_type.to_string(),
            data,
        }
    }
    pub fn digest(&self) -> Digest {
        Digest::of(&self.data)
    }
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest().to_string(), "size": self.data.len()})
    }
}

/// Deterministic bytes that gzip cannot shrink much.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407)
        | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A layer tar with the given files (plus their parent dirs).
pub fn layer_tar(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

/// One platform's image: layers (blob + diff_id), config, manifest.
#[derive(Clone)]
pub struct Image {
    pub layers: Vec<Blob>,
    pub diff_ids: Vec<Digest>,
    pub config: Blob,
    pub manifest: Blob,
    pub arch: String,
}

/// Builds an image of `n` layers, alternating gzip and plain, each with one file whose
/// content depends on `seed`; `big` adds that many noise bytes to the last layer.
pub fn image(seed: u64, n: usize, arch: &str, big: usize) -> Image {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for i in 0..n {
        let mut content = format!("layer {i} of image {seed}\n").into_bytes();
        if i + 1 == n && big > 0 {
            content = noise(seed + i as u64, big);
        }
        let tar = layer_tar(&[(&format!("l{i}/file{seed}"), content)]);
        diff_ids.push(Digest::of(&tar));
        layers.push(if i % 2 == 0 {
            Blob::new(OCI_LAYER_GZIP, gzip(&tar))
        } else {
            Blob::new(OCI_LAYER, tar)
        });
    }
    build(layers, diff_ids, arch, |_, _| {})
}

/// Assembles config + manifest; `tweak` may edit both JSON documents before they are
/// serialised (to break them on purpose).
pub fn build(
    layers: Vec<Blob>,
    diff_ids: Vec<Digest>,
    arch: &str,
    tweak: impl FnOnce(&mut Value, &mut Value),
) -> Image {
    let mut config = json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids.iter().map(|d| d.to_string()).collect::<Vec<_>>()},
    });
    let mut manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>()});
    tweak(&mut config, &mut manifest);
    let config = Blob::new(OCI_CONFIG, serde_json::to_vec(&config).unwrap());
    if manifest.get("config").is_none() {
        manifest["config"] = config.descriptor();
    }
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    Image {
        layers,
        diff_ids,
        config,
        manifest,
        arch: arch.to_string(),
    }
}

pub fn platform_descriptor(img: &Image) -> Value {
    let mut d = img.manifest.descriptor();
    d["platform"] = json!({"os": "linux", "architecture": img.arch});
    d
}

/// An index over several platform images.
pub fn index_of(images: &[&Image]) -> Blob {
    let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": images.iter().map(|i| platform_descriptor(i)).collect::<Vec<_>>()});
    Blob::new(OCI_INDEX, serde_json::to_vec(&body).unwrap())
}

pub fn write_blob(dir: &Path, blob: &Blob) {
    let p = dir.join("blobs/sha256").join(blob.digest().hex());
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, &blob.data).unwrap();
}

pub fn write_image_blobs(dir: &Path, img: &Image) {
    for b in img.layers.iter().chain([&img.config, &img.manifest]) {
        write_blob(dir, b);
    }
}

/// An OCI layout dir with `entries` ((ref name, root blob)) in index.json.
pub fn oci_dir(dir: &Path, images: &[&Image], entries: &[(&str, &Blob)]) {
    fs::create_dir_all(dir).unwrap();
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for img in images {
        write_image_blobs(dir, img);
    }
    let manifests: Vec<Value> = entries
        .iter()
        .map(|(name, blob)| {
            write_blob(dir, blob);
            let mut d = blob.descriptor();
            d["annotations"] = json!({"org.opencontainers.image.ref.name": name});
            d
        })
        .collect();
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// A tar of a directory's contents (paths relative to it).
pub fn tar_dir(dir: &Path, out: &Path) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    b.append_dir_all(".", dir).unwrap();
    b.finish().unwrap();
}

/// How a docker archive names and stores its layers.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum DockerStyle {
    /// `<n>/layer.tar`, uncompressed (classic `docker save`).
    Legacy,
    /// `<n>/layer.tar` holding the gzip blob (some tools): nothing names its digest.
    LegacyCompressed,
    /// `blobs/sha256/<digest>` holding the blob as is (Docker 25+ with containerd store).
    Blobs,
}

/// A `docker save` archive of one image (layers stored uncompressed as `<n>/layer.tar`).
pub fn docker_archive(out: &Path, img: &Image, tags: &[&str]) {
    docker_archive_styled(out, img, tags, DockerStyle::Legacy)
}

pub fn docker_archive_styled(out: &Path, img: &Image, tags: &[&str], style: DockerStyle) {
    let f = fs::File::create(out).unwrap();
    let mut b = tar::Builder::new(f);
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_name = format!("{}.json", img.config.digest().hex());
    add(&config_name, &img.config.data);
    let mut layer_names = Vec::new();
    for (i, l) in img.layers.iter().enumerate() {
        // docker save stores layers uncompressed: decompress the gzip ones.
        let tar = if style != DockerStyle::Legacy {
            l.data.clone()
        } else if l.media_type == OCI_LAYER_GZIP {
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&l.data[..]), &mut out)
                .unwrap();
            out
        } else {
            l.data.clone()
        };
        let name = match style {
            DockerStyle::Blobs => format!("blobs/sha256/{}", l.digest().hex()),
            _ => format!("{i}/layer.tar"),
        };
        add(&name, &tar);
        layer_names.push(name);
    }
    let manifest = json!([{"Config": config_name, "RepoTags": tags, "Layers": layer_names}]);
    add("manifest.json", &serde_json::to_vec(&manifest).unwrap());
    b.into_inner().unwrap();
}

/// Runs the nestcache binary (no containerd needed for --store commands).
pub fn nc(args: &[&str]) -> Output {
    Command::new(cargo_bin("nestcache"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("spawn nestcache")
}

pub fn ok(args: &[&str]) -> String {
    let out = nc(args);
    assert!(
        out.status.success(),
        "nestcache {args:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts failure; returns stderr, which must be one line.
pub fn fails(args: &[&str]) -> String {
    let out = nc(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "nestcache {args:?} should have failed:\nstdout: {}\nstderr: {err}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

pub fn json(args: &[&str]) -> Value {
    serde_json::from_str(&ok(args)).expect("JSON output")
}

/// A store directory path in a fresh temp dir.
pub struct Dirs {
    pub tmp: tempfile::TempDir,
}

impl Default for Dirs {
    fn default() -> Self {
        Self::new()
    }
}

impl Dirs {
    pub fn new() -> Self {
        Dirs {
            tmp: tempfile::Builder::new()
                .prefix("nc-stage-")
                .tempdir()
                .unwrap(),
        }
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    pub fn s(&self, name: &str) -> String {
        self.path(name).to_str().unwrap().to_string()
    }
}

/// The store is consistent, and nothing is left in ingest/.
pub fn assert_intact(store: &str) {
    let report = json(&["store", "check", "--store", store, "--json"]);
    assert_eq!(report["ok"], true, "{report}");
    let ingest = Path::new(store).join("ingest");
    if ingest.exists() {
        let left: Vec<_> = fs::read_dir(&ingest).unwrap().collect();
        assert!(left.is_empty(), "temp files left in ingest/: {left:?}");
    }
}

pub fn refs(store: &str) -> Vec<String> {
    let v = json(&["images", "ls", "--store", store, "--json"]);
    v.as_array()
        .unwrap()
        .iter()
        .map(|i| i["reference"].as_str().unwrap().to_string())
        .collect()
}

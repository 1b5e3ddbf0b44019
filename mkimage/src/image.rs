//! Building an image into an OCI image layout: layers are generated in parallel (each
//! streams tar -> diff_id hash -> compressor -> digest hash -> temp file -> rename), then
//! the config, manifest, optional two-platform index and `index.json` are written.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::entry::{self, Entry};
use crate::layers::{self, LayerSpec};

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Layer compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" | "tar" => Ok(Compression::None),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "zstd" | "zst" => Ok(Compression::Zstd),
            _ => bail!("unknown compression {s:?} (gzip, zstd or none)"),
        }
    }
}

/// `os/architecture[/variant]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(s: &str) -> Result<Self> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts.as_slice() {
            [os, arch] if !os.is_empty() && !arch.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: None,
            }),
            [os, arch, v] if !os.is_empty() && !arch.is_empty() && !v.is_empty() => Ok(Platform {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => bail!("bad platform {s:?}: want os/arch[/variant]"),
        }
    }

    /// The machine's own platform in OCI (GOARCH) spelling.
    pub fn host() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            os: "linux".into(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    /// The other platform of a two-platform index: arm64 beside amd64, else amd64.
    pub fn other(&self) -> Self {
        let architecture = if self.architecture == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        Platform {
            os: self.os.clone(),
            architecture: architecture.into(),
            variant: None,
        }
    }

    fn json(&self) -> Value {
        let mut p = json!({"os": self.os, "architecture": self.architecture});
        if let Some(v) = &self.variant {
            p["variant"] = json!(v);
        }
        p
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// The `config` section of the image configuration.
#[derive(Clone, Debug, Default)]
pub struct ConfigSpec {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub user: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `ExposedPorts`, as `"80/tcp"` (what `run -P` publishes).
    pub exposed_ports: Vec<String>,
    /// `Volumes`, as container paths (`run` makes an anonymous volume for each).
    pub volumes: Vec<String>,
}

/// Everything that determines an image. Same spec (and same `/bin/busybox`) → same bytes.
#[derive(Clone, Debug)]
pub struct ImageSpec {
    /// `org.opencontainers.image.ref.name` in `index.json` (use it as `oci:DIR:REF`).
    pub ref_name: String,
    /// The `RepoTags` entry of a docker-archive (`name:tag`).
    pub repo_tag: String,
    pub layers: Vec<LayerSpec>,
    pub compression: Compression,
    /// gzip level 0-9 / zstd level 1-19 (defaults 6 and 3).
    pub level: Option<u32>,
    pub platform: Platform,
    /// Also build an image for [`Platform::other`] and publish an image index of both.
    pub multi_platform: bool,
    pub config: ConfigSpec,
    pub seed: u64,
    /// Host file for `/bin/busybox` (default `/bin/busybox`, Debian's busybox-static).
    pub busybox: PathBuf,
}

impl ImageSpec {
    /// A spec with the given layers and defaults: gzip, host platform, `sh` as Cmd,
    /// a PATH in Env, ref name = `name`, repo tag `mkimage/<name>:latest`.
    pub fn new(name: &str, layers: Vec<LayerSpec>) -> Self {
        ImageSpec {
            ref_name: name.to_string(),
            repo_tag: format!("mkimage/{name}:latest"),
            layers,
            compression: Compression::Gzip,
            level: None,
            platform: Platform::host(),
            multi_platform: false,
            config: ConfigSpec {
                cmd: Some(vec!["/bin/sh".into()]),
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                ],
                ..ConfigSpec::default()
            },
            seed: 1,
            busybox: PathBuf::from("/bin/busybox"),
        }
    }
}

/// A content descriptor as written into manifests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desc {
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    pub size: u64,
}

impl Desc {
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    fn json(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

#[derive(Clone, Debug)]
pub struct BuiltLayer {
    pub desc: Desc,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Size of the uncompressed tar.
    pub diff_size: u64,
}

/// One platform's image: manifest, config, layers.
#[derive(Clone, Debug)]
pub struct BuiltManifest {
    pub platform: Platform,
    pub manifest: Desc,
    pub config: Desc,
    pub layers: Vec<BuiltLayer>,
}

/// What [`ImageSpec::write_layout`] produced.
#[derive(Clone, Debug)]
pub struct Built {
    pub layout: PathBuf,
    pub ref_name: String,
    pub repo_tag: String,
    /// The descriptor `index.json` names: the index when multi-platform, else the manifest.
    pub top: Desc,
    /// The image for the requested platform.
    pub image: BuiltManifest,
    /// The second platform's image, when multi-platform.
    pub other: Option<BuiltManifest>,
}

impl Built {
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        self.layout
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// Bytes of uncompressed layer tars of the main image.
    pub fn uncompressed_size(&self) -> u64 {
        self.image.layers.iter().map(|l| l.diff_size).sum()
    }

    /// Bytes of (compressed) layer blobs of the main image.
    pub fn compressed_size(&self) -> u64 {
        self.image.layers.iter().map(|l| l.desc.size).sum()
    }
}

impl ImageSpec {
    /// Writes the image into the OCI layout `dir` (created if missing; an existing
    /// layout keeps its other refs, and an older entry with the same ref name is replaced).
    pub fn write_layout(&self, dir: &Path) -> Result<Built> {
        if self.layers.is_empty() {
            bail!("an image needs at least one layer");
        }
        fs::create_dir_all(dir.join("blobs/sha256"))
            .with_context(|| format!("creating {}", dir.display()))?;
        write_file(dir, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut entries = Vec::with_capacity(self.layers.len());
        let mut below_generated = None;
        for (i, l) in self.layers.iter().enumerate() {
            let v = match l {
                LayerSpec::Base => {
                    if !self.busybox.is_file() {
                        bail!(
                            "{} not found: install Debian's busybox-static",
                            self.busybox.display()
                        );
                    }
                    layers::base(&self.busybox)
                }
                LayerSpec::Generated { files, bytes } => {
                    let prev = below_generated.take();
                    below_generated = Some(i);
                    layers::generated(self.seed, i, *files, *bytes, prev)
                }
                LayerSpec::Features => layers::features(&self.ref_name),
                LayerSpec::LowerHardlink => layers::lower_hardlink(),
                LayerSpec::Tiny => layers::tiny(i),
                LayerSpec::Custom(v) => v.clone(),
            };
            if !matches!(l, LayerSpec::Generated { .. }) {
                below_generated = None;
            }
            entries.push(v);
        }
        let layers = write_layers(dir, &entries, self.compression, self.level)?;
        let image = self.write_image(dir, &self.platform, layers)?;
        let (top, other) = if self.multi_platform {
            let other_platform = self.platform.other();
            let stub = vec![layers::platform_stub(&other_platform.to_string())];
            let layers = write_layers(dir, &stub, self.compression, self.level)?;
            let other = self.write_image(dir, &other_platform, layers)?;
            let mut manifests = Vec::new();
            for m in [&image, &other] {
                let mut d = m.manifest.json();
                d["platform"] = m.platform.json();
                manifests.push(d);
            }
            let index = json!({
                "schemaVersion": 2,
                "mediaType": MT_INDEX,
                "manifests": manifests,
            });
            (write_json_blob(dir, MT_INDEX, &index)?, Some(other))
        } else {
            (image.manifest.clone(), None)
        };
        update_index_json(dir, &self.ref_name, &top)?;
        Ok(Built {
            layout: dir.to_path_buf(),
            ref_name: self.ref_name.clone(),
            repo_tag: self.repo_tag.clone(),
            top,
            image,
            other,
        })
    }

    fn write_image(
        &self,
        dir: &Path,
        platform: &Platform,
        layers: Vec<BuiltLayer>,
    ) -> Result<BuiltManifest> {
        let c = &self.config;
        let mut cfg = serde_json::Map::new();
        if let Some(u) = &c.user {
            cfg.insert("User".into(), json!(u));
        }
        if !c.env.is_empty() {
            cfg.insert("Env".into(), json!(c.env));
        }
        if let Some(e) = &c.entrypoint {
            cfg.insert("Entrypoint".into(), json!(e));
        }
        if let Some(e) = &c.cmd {
            cfg.insert("Cmd".into(), json!(e));
        }
        if let Some(w) = &c.working_dir {
            cfg.insert("WorkingDir".into(), json!(w));
        }
        if !c.labels.is_empty() {
            cfg.insert("Labels".into(), json!(c.labels));
        }
        if !c.exposed_ports.is_empty() {
            let ports: serde_json::Map<String, Value> = c
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), json!({})))
                .collect();
            cfg.insert("ExposedPorts".into(), Value::Object(ports));
        }
        if !c.volumes.is_empty() {
            let vols: serde_json::Map<String, Value> =
                c.volumes.iter().map(|v| (v.clone(), json!({}))).collect();
            cfg.insert("Volumes".into(), Value::Object(vols));
        }
        let history: Vec<Value> = (0..layers.len())
            .map(|i| json!({"created": CREATED, "created_by": format!("nestcache-mkimage layer {i}")}))
            .collect();
        let mut config = json!({
            "created": CREATED,
            "architecture": platform.architecture,
            "os": platform.os,
            "config": Value::Object(cfg),
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>(),
            },
            "history": history,
        });
        if let Some(v) = &platform.variant {
            config["variant"] = json!(v);
        }
        let config = write_json_blob(dir, MT_CONFIG, &config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": config.json(),
            "layers": layers.iter().map(|l| l.desc.json()).collect::<Vec<_>>(),
        });
        let manifest = write_json_blob(dir, MT_MANIFEST, &manifest)?;
        Ok(BuiltManifest {
            platform: platform.clone(),
            manifest,
            config,
            layers,
        })
    }
}

/// Fixed creation time of every config and history entry.
pub const CREATED: &str = "2023-11-14T22:13:20Z";

fn write_file(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let p = dir.join(name);
    fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
}

fn write_json_blob(dir: &Path, media_type: &str, v: &Value) -> Result<Desc> {
    let data = serde_json::to_vec(v)?;
    let hex = hex::encode(Sha256::digest(&data));
    let p = dir.join("blobs/sha256").join(&hex);
    fs::write(&p, &data).with_context(|| format!("writing {}", p.display()))?;
    Ok(Desc {
        media_type: media_type.into(),
        digest: format!("sha256:{hex}"),
        size: data.len() as u64,
    })
}

/// Adds or replaces the `ref_name` entry of `index.json`, keeping other entries.
fn update_index_json(dir: &Path, ref_name: &str, top: &Desc) -> Result<()> {
    let path = dir.join("index.json");
    let mut manifests: Vec<Value> = match fs::read(&path) {
        Ok(data) => {
            let v: Value = serde_json::from_slice(&data)
                .with_context(|| format!("parsing {}", path.display()))?;
            v["manifests"].as_array().cloned().unwrap_or_default()
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(anyhow!("reading {}: {e}", path.display())),
    };
    manifests.retain(|m| m["annotations"][ANNOTATION_REF_NAME].as_str() != Some(ref_name));
    let mut d = top.json();
    d["annotations"] = json!({ ANNOTATION_REF_NAME: ref_name });
    manifests.push(d);
    let index = json!({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": manifests});
    write_file(dir, "index.json", &serde_json::to_vec(&index)?)
}

/// Generates the layers with one worker per core; order of results = order of `layers`.
fn write_layers(
    dir: &Path,
    layers: &[Vec<Entry>],
    compression: Compression,
    level: Option<u32>,
) -> Result<Vec<BuiltLayer>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(layers.len());
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Result<BuiltLayer>>>> =
        Mutex::new((0..layers.len()).map(|_| None).collect());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= layers.len() {
                    break;
                }
                let r = write_layer(dir, &layers[i], compression, level)
                    .with_context(|| format!("writing layer {i}"));
                let failed = r.is_err();
                if let Ok(mut v) = results.lock() {
                    v[i] = Some(r);
                }
                if failed {
                    next.store(layers.len(), Ordering::SeqCst);
                }
            });
        }
    });
    let results = results
        .into_inner()
        .map_err(|_| anyhow!("a layer writer panicked"))?;
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(anyhow!("a layer was not written"))))
        .collect()
}

/// Counts and hashes what is written through it.
struct Hashing<W> {
    inner: W,
    sha: Sha256,
    len: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            len: 0,
        }
    }

    fn finish(self) -> (W, String, u64) {
        (self.inner, hex::encode(self.sha.finalize()), self.len)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression, level: Option<u32>) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::None(w),
            // GzEncoder writes mtime 0 and no file name: deterministic.
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level.unwrap_or(6).min(9)),
            )),
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(
                w,
                level.unwrap_or(3) as i32,
            )?),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

static TMP: AtomicU64 = AtomicU64::new(0);

fn write_layer(
    dir: &Path,
    entries: &[Entry],
    compression: Compression,
    level: Option<u32>,
) -> Result<BuiltLayer> {
    let blobs = dir.join("blobs/sha256");
    let tmp = blobs.join(format!(
        ".mkimage-{}-{}",
        std::process::id(),
        TMP.fetch_add(1, Ordering::SeqCst)
    ));
    let result = (|| -> Result<BuiltLayer> {
        let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        let blob = Hashing::new(BufWriter::with_capacity(1 << 20, file));
        let diff = Hashing::new(Encoder::new(blob, compression, level)?);
        let mut tar = tar::Builder::new(diff);
        for e in entries {
            entry::append(&mut tar, e).with_context(|| format!("adding /{}", e.path))?;
        }
        let diff = tar.into_inner()?;
        let (enc, diff_hex, diff_size) = diff.finish();
        let blob = enc.finish()?;
        let (buf, hex, size) = blob.finish();
        buf.into_inner().map_err(|e| e.into_error())?;
        fs::rename(&tmp, blobs.join(&hex))?;
        Ok(BuiltLayer {
            desc: Desc {
                media_type: compression.media_type().into(),
                digest: format!("sha256:{hex}"),
                size,
            },
            diff_id: format!("sha256:{diff_hex}"),
            diff_size,
        })
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

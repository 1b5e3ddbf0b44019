//! The two archive formats: an oci-archive (a tar of the layout) and a docker-archive
//! (`docker save`: `manifest.json` + config + uncompressed `<id>/layer.tar`). Both are
//! streamed from the layout's blobs, never held in memory.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read};
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;
use tar::{Builder, EntryType, Header};

use crate::entry::MTIME;
use crate::image::{Built, Compression};

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(MTIME);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(size);
    h
}

fn create(path: &Path) -> Result<Builder<BufWriter<File>>> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(Builder::new(BufWriter::with_capacity(1 << 20, f)))
}

fn finish(b: Builder<BufWriter<File>>, path: &Path) -> Result<()> {
    b.into_inner()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| f.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// Tars the OCI layout `layout` into `out`: `oci-layout`, `index.json`, `blobs/sha256/*`,
/// sorted, with fixed mtimes and root owners.
pub fn write_oci_archive(layout: &Path, out: &Path) -> Result<()> {
    let mut b = create(out)?;
    for name in ["oci-layout", "index.json"] {
        let p = layout.join(name);
        let mut f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mut h = header(EntryType::Regular, 0o644, f.metadata()?.len());
        b.append_data(&mut h, name, &mut f)?;
    }
    for d in ["blobs/", "blobs/sha256/"] {
        b.append_data(&mut header(EntryType::Directory, 0o755, 0), d, io::empty())?;
    }
    let blobs = layout.join("blobs/sha256");
    let mut names: Vec<String> = fs::read_dir(&blobs)
        .with_context(|| format!("reading {}", blobs.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    for n in names {
        let p = blobs.join(&n);
        let mut f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
        let mut h = header(EntryType::Regular, 0o644, f.metadata()?.len());
        b.append_data(&mut h, format!("blobs/sha256/{n}"), &mut f)?;
    }
    finish(b, out)
}

/// Writes the main image of `built` as a `docker save` archive.
pub fn write_docker_archive(built: &Built, out: &Path) -> Result<()> {
    let mut b = create(out)?;
    let cfg = &built.image.config;
    let config_name = format!("{}.json", cfg.hex());
    let mut f = File::open(built.blob_path(&cfg.digest))?;
    b.append_data(
        &mut header(EntryType::Regular, 0o644, cfg.size),
        &config_name,
        &mut f,
    )?;
    let mut layer_names = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for l in &built.image.layers {
        let id = l.diff_id.trim_start_matches("sha256:");
        let name = format!("{id}/layer.tar");
        layer_names.push(name.clone());
        if !seen.insert(id.to_string()) {
            continue;
        }
        b.append_data(
            &mut header(EntryType::Directory, 0o755, 0),
            format!("{id}/"),
            io::empty(),
        )?;
        let blob = File::open(built.blob_path(&l.desc.digest))
            .with_context(|| format!("opening layer {}", l.desc.digest))?;
        let compression = match l.desc.media_type.as_str() {
            m if m.ends_with("+gzip") => Compression::Gzip,
            m if m.ends_with("+zstd") => Compression::Zstd,
            _ => Compression::None,
        };
        let reader: Box<dyn Read> = match compression {
            Compression::None => Box::new(blob),
            Compression::Gzip => Box::new(flate2::read::GzDecoder::new(io::BufReader::new(blob))),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob)?),
        };
        b.append_data(
            &mut header(EntryType::Regular, 0o644, l.diff_size),
            &name,
            reader,
        )
        .with_context(|| format!("adding layer {}", l.desc.digest))?;
    }
    let manifest = json!([{
        "Config": config_name,
        "RepoTags": [built.repo_tag],
        "Layers": layer_names,
    }]);
    let data = serde_json::to_vec(&manifest)?;
    b.append_data(
        &mut header(EntryType::Regular, 0o644, data.len() as u64),
        "manifest.json",
        data.as_slice(),
    )?;
    finish(b, out)
}

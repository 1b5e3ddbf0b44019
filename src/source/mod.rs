//! Where images come from. Every source answers the same three questions — what is the
//! root document (an index or a manifest), which ref would the user expect, and give me
//! the bytes of this descriptor as a stream — and the store does all verification, so a
//! source may be as naive (or as hostile) as it likes without harming the store.
//!
//! Sources: `oci:DIR[:REF]` ([`oci_layout`]), `oci-archive:FILE[:REF]` (the same over an
//! indexed tar, [`tar_index`]), `docker-archive:FILE[:REF]` ([`docker_archive`]),
//! `docker://HOST/REPO[:TAG|@DIGEST]` (the registry source, its own module), or a bare
//! path recognised by its content.

pub mod docker_archive;
pub mod oci_layout;
pub mod registry;
pub mod tar_index;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::Descriptor;

use crate::error::{Error, Result};

/// A stream of one blob's bytes.
pub type BlobReader<'a> = Box<dyn Read + Send + 'a>;

/// An image source. Implementations must be usable from several threads at once: staging
/// fetches up to [`Source::parallelism`] blobs concurrently, each through its own
/// [`Source::open_blob`] stream, and never holds a layer in memory.
pub trait Source: Send + Sync {
    /// What this source is, for messages (never with credentials).
    fn describe(&self) -> String;

    /// The ref name to record when the user gives none (e.g. the tag), if there is one.
    fn default_ref(&self) -> Option<String>;

    /// The root document: an image index / manifest list, or a single image manifest.
    /// Sources that have no real root (several refs in a layout, a docker archive) may
    /// synthesise one and serve its bytes from [`Source::open_blob`].
    fn root(&self) -> Result<Descriptor>;

    /// A stream of the blob `desc` names (index, manifest, config or layer). The caller
    /// verifies digest and size; a source may stop early or send garbage, never more
    /// harm than a refused blob.
    fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader<'_>>;

    /// The blob's bytes from byte `offset` on, to resume a partial ingest. The default
    /// reads and drops the first `offset` bytes; sources that can seek (a file, an HTTP
    /// Range request) override it.
    fn open_blob_at(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader<'_>> {
        let mut r = self.open_blob(desc)?;
        let skipped =
            std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink()).map_err(|e| {
                Error::io(
                    format!("{}: read blob {}", self.describe(), desc.digest()),
                    e,
                )
            })?;
        if skipped != offset {
            return Err(Error::Invalid(format!(
                "{}: blob {} ends at byte {skipped}, before offset {offset}",
                self.describe(),
                desc.digest()
            )));
        }
        Ok(r)
    }

    /// How many blobs to fetch at once (a registry may want more than a local file).
    fn parallelism(&self) -> usize {
        2
    }
}

/// Options some sources need (the registry source reads the network ones).
#[derive(Debug, Clone, Default)]
pub struct SourceOptions {
    /// `USER:PASS` for registry basic auth.
    pub creds: Option<String>,
    /// A containers-auth.json / docker config.json to read credentials from.
    pub authfile: Option<PathBuf>,
    /// Extra CA certificate (PEM) for registry TLS.
    pub tls_ca: Option<PathBuf>,
    /// Plain http (loopback test registries).
    pub insecure: bool,
    /// Progress bounds on every registry request.
    pub deadlines: registry::Deadlines,
    /// Per registry host (`docker.io`, `host:5000`): mirrors to try first, credentials
    /// (from nestcache's config file).
    pub registries: std::collections::BTreeMap<String, registry::RegistrySettings>,
}

/// Parses a source string with default options.
pub fn parse(spec: &str) -> Result<Box<dyn Source>> {
    parse_with(spec, &SourceOptions::default())
}

/// Parses a source string: a transport prefix, or a bare path recognised by content.
pub fn parse_with(spec: &str, opts: &SourceOptions) -> Result<Box<dyn Source>> {
    if let Some(rest) = spec.strip_prefix("docker://") {
        return Ok(Box::new(registry::RegistrySource::open(rest, opts)?));
    }
    if let Some(rest) = spec.strip_prefix("oci:") {
        let (path, reference) = split_ref(rest);
        return Ok(Box::new(oci_layout::OciLayoutSource::open_dir(
            Path::new(path),
            reference,
        )?));
    }
    if let Some(rest) = spec.strip_prefix("oci-archive:") {
        let (path, reference) = split_ref(rest);
        let index = tar_index::TarIndex::build(Path::new(path))?;
        return Ok(Box::new(oci_layout::OciLayoutSource::open_archive(
            index, reference,
        )?));
    }
    if let Some(rest) = spec.strip_prefix("docker-archive:") {
        let (path, reference) = split_ref(rest);
        let index = tar_index::TarIndex::build(Path::new(path))?;
        return Ok(Box::new(docker_archive::DockerArchiveSource::open(
            index, reference,
        )?));
    }
    detect(Path::new(spec))
}

/// `PATH[:REF]`: the path ends at the first ':' (as in skopeo's transports).
fn split_ref(rest: &str) -> (&str, Option<&str>) {
    match rest.split_once(':') {
        Some((p, r)) if !r.is_empty() => (p, Some(r)),
        Some((p, _)) => (p, None),
        None => (rest, None),
    }
}

/// A bare path: an OCI layout directory, an OCI archive (has `oci-layout`), or a docker
/// archive (has `manifest.json`).
fn detect(path: &Path) -> Result<Box<dyn Source>> {
    let meta = std::fs::metadata(path).map_err(|e| {
        Error::Invalid(format!(
            "source {:?} is neither a known transport (oci:, oci-archive:, docker-archive:, docker://) nor a readable path: {e}",
            path.display().to_string()
        ))
    })?;
    if meta.is_dir() {
        return Ok(Box::new(oci_layout::OciLayoutSource::open_dir(path, None)?));
    }
    let index = tar_index::TarIndex::build(path)?;
    if index.contains("oci-layout") {
        Ok(Box::new(oci_layout::OciLayoutSource::open_archive(
            index, None,
        )?))
    } else if index.contains("manifest.json") {
        Ok(Box::new(docker_archive::DockerArchiveSource::open(
            index, None,
        )?))
    } else {
        Err(Error::Invalid(format!(
            "{}: a tar archive with neither oci-layout nor manifest.json: not an OCI or docker archive",
            path.display()
        )))
    }
}

/// Documents a source synthesised (a docker archive's OCI manifest, an index over several
/// layout entries), served by digest.
#[derive(Debug, Default, Clone)]
pub struct MemoryBlobs {
    blobs: HashMap<String, Vec<u8>>,
}

impl MemoryBlobs {
    /// Adds a document and returns its descriptor.
    pub fn add(&mut self, media_type: &str, data: Vec<u8>) -> Descriptor {
        let desc = crate::image::descriptor_for(media_type, &data);
        self.blobs.insert(desc.digest().to_string(), data);
        desc
    }

    pub fn get(&self, desc: &Descriptor) -> Option<BlobReader<'_>> {
        self.blobs
            .get(&desc.digest().to_string())
            .map(|d| Box::new(&d[..]) as BlobReader<'_>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_refs_like_skopeo() {
        assert_eq!(split_ref("/a/b"), ("/a/b", None));
        assert_eq!(split_ref("/a/b:"), ("/a/b", None));
        assert_eq!(split_ref("/a/b:img:1.0"), ("/a/b", Some("img:1.0")));
        assert!(parse("/definitely/not/here").is_err());
        // Refused while parsing, before any network access.
        assert!(parse("docker://example.com/UPPER").is_err());
    }
}

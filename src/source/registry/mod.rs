//! `docker://HOST[:PORT]/REPO[:TAG|@DIGEST]`: images straight from an OCI distribution
//! registry (Docker Hub, distribution/registry, Harbor, GHCR…).
//!
//! The root manifest is fetched once, eagerly (so a wrong name, a missing tag or refused
//! credentials fail before anything is written), with Accept for OCI index/manifest and
//! Docker manifest list/schema 2; platform choice and verification are the shared
//! `image` module's and the store's. Blobs stream through [`BlobStream`], which resumes a
//! cut download with an HTTP Range request, so a 1.5 GB layer is never held in memory
//! and never restarted from zero. Credentials: `--creds`, `--authfile`, then the default
//! auth files (see [`auth::default_auth_files`]); they never appear in messages.

pub mod auth;
mod client;
mod error;
pub mod reference;

use std::io::{self, Read};
use std::time::{Duration, Instant};

use oci_spec::image::{Descriptor, MediaType};

use client::{Client, ATTEMPTS};
pub use client::{Deadlines, Transport};
pub use error::RegistryError;
pub use reference::Reference;

use super::{BlobReader, Source, SourceOptions};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image::{self, DocKind};

/// Everything a registry may answer a manifest request with, best first.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.v2+json;q=0.9";

/// Blobs fetched at once: enough to hide one connection's latency, few enough to be kind
/// to the registry and to two cores hashing.
const PARALLEL_BLOBS: usize = 4;

/// What nestcache's config file says about one registry host.
#[derive(Debug, Clone, Default)]
pub struct RegistrySettings {
    /// Hosts (`mirror.example:5000`) serving the same repositories, tried in order before
    /// the registry itself; one that fails or lacks the image is skipped.
    pub mirrors: Vec<String>,
    /// Used when neither `--creds` nor `--authfile` is given.
    pub credentials: Option<auth::Credentials>,
}

pub struct RegistrySource {
    reference: Reference,
    client: Client,
    root: Descriptor,
    root_bytes: Vec<u8>,
}

impl RegistrySource {
    /// Parses the reference (what follows `docker://`), finds credentials, and fetches the
    /// root manifest.
    pub fn open(spec: &str, opts: &SourceOptions) -> Result<RegistrySource> {
        let reference = Reference::parse(spec)?;
        let creds = match (&opts.creds, &opts.authfile) {
            (Some(c), _) => Some(auth::Credentials::parse(c)?),
            (None, Some(file)) => {
                if !file.exists() {
                    return Err(Error::NotFound(format!("auth file {}", file.display())));
                }
                auth::lookup(file, &reference.registry, &reference.repository)?
            }
            (None, None) if configured(opts, &reference.registry).is_some() => {
                configured(opts, &reference.registry)
            }
            (None, None) => {
                let mut found = None;
                for f in auth::default_auth_files() {
                    found = auth::lookup(&f, &reference.registry, &reference.repository)?;
                    if found.is_some() {
                        break;
                    }
                }
                found
            }
        };
        let transport = Transport {
            insecure: opts.insecure,
            tls_ca: opts.tls_ca.clone(),
            deadlines: opts.deadlines,
        };
        if let Some(found) = from_mirrors(&reference, opts, &transport) {
            return Ok(found);
        }
        let client = Client::new(
            reference.api_host(),
            &reference.repository,
            creds,
            &transport,
        )?;
        let (root, root_bytes) = fetch_root(&client, &reference)?;
        Ok(RegistrySource {
            reference,
            client,
            root,
            root_bytes,
        })
    }

    pub fn reference(&self) -> &Reference {
        &self.reference
    }
}

/// The config file's credentials for `host`.
fn configured(opts: &SourceOptions, host: &str) -> Option<auth::Credentials> {
    opts.registries.get(host)?.credentials.clone()
}

/// The image from the first mirror of its registry that serves it (as containerd's
/// `hosts.toml` mirrors: any failure moves on, and the registry itself comes last).
fn from_mirrors(
    reference: &Reference,
    opts: &SourceOptions,
    transport: &Transport,
) -> Option<RegistrySource> {
    let mirrors = opts.registries.get(&reference.registry)?.mirrors.clone();
    for mirror in mirrors {
        let attempt = Client::new(
            &mirror,
            &reference.repository,
            configured(opts, &mirror),
            transport,
        )
        .and_then(|client| {
            let (root, root_bytes) = fetch_root(&client, reference)?;
            Ok(RegistrySource {
                reference: reference.clone(),
                client,
                root,
                root_bytes,
            })
        });
        match attempt {
            Ok(found) => return Some(found),
            Err(e) => tracing::info!(
                "mirror {mirror} of {}: {e}; trying the next",
                reference.registry
            ),
        }
    }
    None
}

impl Source for RegistrySource {
    fn describe(&self) -> String {
        format!("docker://{}", self.reference)
    }

    /// `host/repo:tag` (or `host/repo@digest`), as containerd names pulled images.
    fn default_ref(&self) -> Option<String> {
        Some(self.reference.to_string())
    }

    fn root(&self) -> Result<Descriptor> {
        Ok(self.root.clone())
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader<'_>> {
        self.open_blob_at(desc, 0)
    }

    /// Blobs resume with a Range request; documents are small and read whole.
    fn open_blob_at(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader<'_>> {
        if desc.digest() == self.root.digest() {
            return Ok(skip(self.root_bytes.clone(), offset));
        }
        let digest = image::descriptor_digest(desc)?;
        if DocKind::of(desc.media_type().as_ref()).is_some() {
            // Child manifests of an index live under /manifests/, not /blobs/.
            let what = format!("manifest {digest}");
            let resp =
                self.client
                    .get_document(&format!("manifests/{digest}"), &what, MANIFEST_ACCEPT)?;
            let body = read_limited(&self.client, resp, image::MAX_MANIFEST_SIZE, &what)?;
            return Ok(skip(body, offset));
        }
        Ok(Box::new(BlobStream::new(
            &self.client,
            digest,
            desc.size(),
            offset,
        )))
    }

    fn parallelism(&self) -> usize {
        PARALLEL_BLOBS
    }
}

/// GET the manifest the reference names; its digest is checked against the reference's
/// digest (when pulling by digest) and the registry's Docker-Content-Digest header.
fn fetch_root(client: &Client, r: &Reference) -> Result<(Descriptor, Vec<u8>)> {
    let what = format!("manifest {}", r.manifest_ref());
    let resp = client.get_document(
        &format!("manifests/{}", r.manifest_ref()),
        &what,
        MANIFEST_ACCEPT,
    )?;
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string());
    let header_digest = resp
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = read_limited(client, resp, image::MAX_MANIFEST_SIZE, &what)?;
    let actual = Digest::of(&body);
    let place = format!("{}/{}", r.registry, r.repository);
    if let Some(want) = &r.digest {
        if *want != actual {
            return Err(Error::DigestMismatch {
                what: format!("manifest from {place}"),
                expected: want.to_string(),
                expected_size: body.len() as u64,
                actual: actual.to_string(),
                actual_size: body.len() as u64,
            });
        }
    }
    if let Some(h) = header_digest.and_then(|h| h.parse::<Digest>().ok()) {
        if h != actual {
            return Err(Error::Invalid(format!(
                "manifest {} from {place}: the registry says {h} but the bytes hash to {actual}",
                r.manifest_ref()
            )));
        }
    }
    let media_type = media_type_of(content_type.as_deref(), &body, &what)?;
    let desc = image::descriptor_for(&media_type, &body);
    Ok((desc, body))
}

/// The document's media type: Content-Type when it names one we know, else the
/// document's own `mediaType` field. Docker schema 1 is refused by name.
fn media_type_of(content_type: Option<&str>, body: &[u8], what: &str) -> Result<String> {
    if let Some(ct) = content_type.filter(|ct| DocKind::of(ct).is_some()) {
        return Ok(ct.to_string());
    }
    let v: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Error::Invalid(format!("{what}: not a JSON manifest: {e}")))?;
    if v.get("schemaVersion").and_then(|s| s.as_u64()) == Some(1) {
        return Err(Error::Invalid(format!(
            "{what}: Docker schema 1 manifests are not supported (re-push the image with a current client)"
        )));
    }
    if let Some(mt) = v.get("mediaType").and_then(|m| m.as_str()) {
        if DocKind::of(mt).is_some() {
            return Ok(mt.to_string());
        }
    }
    // An OCI document without mediaType: an index has "manifests", a manifest "layers".
    if v.get("manifests").is_some() {
        Ok(MediaType::ImageIndex.to_string())
    } else if v.get("layers").is_some() {
        Ok(MediaType::ImageManifest.to_string())
    } else {
        Err(Error::Invalid(format!(
            "{what}: media type {:?} is neither an image index nor a manifest",
            content_type.unwrap_or("")
        )))
    }
}

/// A document from byte `offset` on.
fn skip(mut data: Vec<u8>, offset: u64) -> BlobReader<'static> {
    data.drain(..(offset.min(data.len() as u64) as usize));
    Box::new(io::Cursor::new(data))
}

fn read_limited(
    client: &Client,
    resp: ureq::http::Response<ureq::Body>,
    limit: u64,
    what: &str,
) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .take(limit + 1)
        .read_to_end(&mut body)
        .map_err(|e| RegistryError::Transport {
            repo: client.where_(),
            what: format!("read {what}"),
            why: client.describe_io_error(&e),
        })?;
    if body.len() as u64 > limit {
        return Err(Error::Invalid(format!(
            "{what} is larger than the {limit} bytes allowed for a manifest"
        )));
    }
    Ok(body)
}

/// One blob's bytes as a stream. A connection cut or stalled mid-body is resumed from the
/// current offset with `Range: bytes=N-` (or, when the server ignores ranges, by skipping
/// the bytes already passed on); it gives up after [`ATTEMPTS`] failures without a window
/// of good progress between them. A download averaging less than the minimum rate over a
/// stall window counts as a failure, so a trickling registry cannot hold a stage forever.
/// It never yields more than the descriptor's size; the store's digest check catches wrong
/// bytes.
struct BlobStream<'a> {
    client: &'a Client,
    digest: Digest,
    size: u64,
    offset: u64,
    body: Option<ureq::BodyReader<'static>>,
    failures: u32,
    /// Start of the current rate window, and the bytes received since.
    window_start: Instant,
    window_bytes: u64,
}

impl<'a> BlobStream<'a> {
    fn new(client: &'a Client, digest: Digest, size: u64, offset: u64) -> Self {
        BlobStream {
            client,
            digest,
            size,
            offset,
            body: None,
            failures: 0,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// Counts `n` bytes into the rate window; at the end of each window, too few bytes is
    /// a stall, enough resets the failure count (the registry is making progress).
    fn progressed(&mut self, n: u64) -> Option<String> {
        self.window_bytes += n;
        let d = self.client.deadlines();
        let elapsed = self.window_start.elapsed();
        if elapsed < d.stall_window {
            return None;
        }
        let want = (d.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        let got = self.window_bytes;
        self.window_start = Instant::now();
        self.window_bytes = 0;
        if got < want {
            return Some(format!(
                "too slow: {got} bytes in {} (minimum {} B/s; --registry-min-rate, NESTCACHE_REGISTRY_MIN_RATE)",
                humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64)),
                d.min_rate
            ));
        }
        self.failures = 0;
        None
    }

    fn open(&mut self) -> Result<ureq::BodyReader<'static>> {
        let what = format!("blob {}", self.digest);
        let resp = self
            .client
            .get_blob(&format!("blobs/{}", self.digest), &what, self.offset)?;
        self.window_start = Instant::now();
        self.window_bytes = 0;
        let partial = resp.status().as_u16() == 206;
        if partial {
            let start = resp
                .headers()
                .get("content-range")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(self.offset) {
                return Err(Error::Invalid(format!(
                    "{what}: asked to resume at byte {} but the registry answered range {start:?}",
                    self.offset
                )));
            }
        }
        let mut body = resp.into_body().into_reader();
        if !partial && self.offset > 0 {
            // No range support: read past what was already passed on.
            let skipped =
                io::copy(&mut (&mut body).take(self.offset), &mut io::sink()).map_err(|e| {
                    RegistryError::Transport {
                        repo: self.client.where_(),
                        what: format!("re-read {what}"),
                        why: self.client.describe_io_error(&e),
                    }
                })?;
            if skipped != self.offset {
                return Err(Error::Invalid(format!(
                    "{what}: the registry now sends only {skipped} bytes"
                )));
            }
        }
        Ok(body)
    }

    /// A failed read: forget the connection, wait, and let the next read reopen it.
    fn failed(&mut self, why: String) -> io::Result<()> {
        self.body = None;
        self.failures += 1;
        if self.failures >= ATTEMPTS {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob {} from {}: {why} at byte {} of {} ({} attempts)",
                    self.digest,
                    self.client.where_(),
                    self.offset,
                    self.size,
                    self.failures
                ),
            ));
        }
        tracing::debug!(
            "blob {}: {why} at byte {}; resuming",
            self.digest,
            self.offset
        );
        self.client.backoff(self.failures);
        Ok(())
    }
}

impl Read for BlobStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.offset >= self.size || buf.is_empty() {
                return Ok(0);
            }
            if self.body.is_none() {
                match self.open() {
                    Ok(b) => self.body = Some(b),
                    Err(e) => return Err(io::Error::other(e.to_string())),
                }
            }
            let want = buf.len().min((self.size - self.offset) as usize);
            let Some(body) = self.body.as_mut() else {
                continue;
            };
            match body.read(&mut buf[..want]) {
                Ok(0) => self.failed("connection closed early".into())?,
                Ok(n) => {
                    self.offset += n as u64;
                    if let Some(why) = self.progressed(n as u64) {
                        self.failed(why)?;
                    }
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let why = self.client.describe_io_error(&e);
                    self.failed(why)?
                }
            }
        }
    }
}

//! `store check`: re-hash every blob and walk every ref, reporting corrupt, stray and
//! missing blobs. Also the reachability walk that `store gc` relies on.

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use serde::Serialize;

use super::{lock, Store, StoreError};
use crate::digest::{chain_ids, hash_reader, Digest};
use crate::error::{Error, IoContext, Result};
use crate::image::{self, DocKind};

/// A blob file whose content does not match its name, or that is not a regular file.
#[derive(Debug, Clone, Serialize)]
pub struct CorruptBlob {
    pub path: String,
    pub expected: String,
    pub actual: Option<String>,
    pub size: u64,
    pub why: String,
}

/// A blob some ref reaches that is not in the store (or cannot be read as what it is).
#[derive(Debug, Clone, Serialize)]
pub struct MissingBlob {
    pub digest: String,
    pub media_type: String,
    pub referenced_by: String,
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckReport {
    pub store: String,
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    pub refs_checked: u64,
    pub corrupt: Vec<CorruptBlob>,
    pub missing: Vec<MissingBlob>,
    /// Temp files of interrupted writes; harmless, removed by `store gc`.
    pub stale_ingest: u64,
    pub ok: bool,
}

/// One blob file, hashed.
enum Verdict {
    Good(Digest, u64),
    /// `actual` is None when the file could not be hashed at all.
    Bad {
        actual: Option<String>,
        size: u64,
        why: String,
    },
}

/// What the refs reach: blobs, and the extracted-layer keys of every reachable image.
#[derive(Debug, Default)]
pub(crate) struct Reach {
    pub blobs: HashSet<Digest>,
    pub diff_ids: HashSet<Digest>,
    pub chain_ids: HashSet<Digest>,
    pub problems: Vec<MissingBlob>,
}

impl Store {
    /// Re-hashes every blob and checks that every ref reaches only present, valid blobs.
    pub fn check(&self) -> Result<CheckReport> {
        // Shared: writers may go on, but gc may not delete while we look.
        let _gc = lock::lock(&self.layout().gc_lock_file(), false)?;
        let mut report = CheckReport {
            store: self.root().display().to_string(),
            ..Default::default()
        };
        let blobs_dir = self.layout().blobs_dir();
        let mut names = Vec::new();
        for entry in fs::read_dir(&blobs_dir).ctx(|| format!("read {}", blobs_dir.display()))? {
            let entry = entry.ctx(|| format!("read {}", blobs_dir.display()))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        // Largest first, so one big layer does not start last and run alone.
        names.sort_by_cached_key(|n| {
            std::cmp::Reverse(fs::symlink_metadata(blobs_dir.join(n)).map_or(0, |m| m.len()))
        });
        let mut good: HashSet<Digest> = HashSet::new();
        for (name, verdict) in names.iter().zip(self.hash_all(&names)?) {
            match verdict {
                Verdict::Good(digest, size) => {
                    report.blobs_checked += 1;
                    report.bytes_checked += size;
                    good.insert(digest);
                }
                Verdict::Bad { actual, size, why } => {
                    if actual.is_some() {
                        report.blobs_checked += 1;
                        report.bytes_checked += size;
                    }
                    report.corrupt.push(CorruptBlob {
                        path: blobs_dir.join(name).display().to_string(),
                        expected: format!("sha256:{name}"),
                        actual,
                        size,
                        why,
                    });
                }
            }
        }
        let reach = self.reach(Some(&good))?;
        report.refs_checked = self.read_index()?.manifests().len() as u64;
        report.missing = reach.problems;
        report.stale_ingest = fs::read_dir(self.layout().ingest_dir())
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        report.ok = report.corrupt.is_empty() && report.missing.is_empty();
        Ok(report)
    }

    /// Hashes the named blobs on one thread per core (hashing is CPU-bound at a core's
    /// sha256 speed; blobs are independent). Verdicts come back in the order of `names`.
    fn hash_all(&self, names: &[String]) -> Result<Vec<Verdict>> {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<Result<Verdict>>>> =
            names.iter().map(|_| Mutex::new(None)).collect();
        let workers = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(names.len())
            .max(1);
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(name) = names.get(i) else { break };
                    let verdict = self.hash_one(name);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(verdict);
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| Err(Error::Other("a hashing thread died".into())))
            })
            .collect()
    }

    fn hash_one(&self, name: &str) -> Result<Verdict> {
        let bad = |why: String| Verdict::Bad {
            actual: None,
            size: 0,
            why,
        };
        let Ok(digest) = format!("sha256:{name}").parse::<Digest>() else {
            return Ok(bad("not named by a sha256 digest".into()));
        };
        let mut file = match self.open_blob(&digest) {
            Ok(f) => f,
            Err(e) => return Ok(bad(e.to_string())),
        };
        let path = self.layout().blob(&digest);
        let (actual, size) = hash_reader(&mut file).ctx(|| format!("read {}", path.display()))?;
        Ok(if actual == digest {
            Verdict::Good(digest, size)
        } else {
            Verdict::Bad {
                actual: Some(actual.to_string()),
                size,
                why: "content does not match its digest".into(),
            }
        })
    }

    /// Walks from every index.json entry and every lease through indexes, manifests and
    /// configs. With `good`, only blobs in it count as present (check); without, presence
    /// on disk does.
    pub(crate) fn reach(&self, good: Option<&HashSet<Digest>>) -> Result<Reach> {
        let mut roots = self.index_roots()?;
        for lease in self.leases()? {
            roots.push((lease.descriptor(), format!("lease {}", lease.id)));
        }
        self.reach_from(roots, good)
    }

    /// index.json's entries, as roots for [`Store::reach_from`].
    pub(crate) fn index_roots(&self) -> Result<Vec<(Descriptor, String)>> {
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .map(|d| (d.clone(), "index.json".to_string()))
            .collect())
    }

    /// Walks from `roots` (descriptor, who references it).
    pub(crate) fn reach_from(
        &self,
        mut stack: Vec<(Descriptor, String)>,
        good: Option<&HashSet<Digest>>,
    ) -> Result<Reach> {
        let mut reach = Reach::default();
        while let Some((desc, parent)) = stack.pop() {
            let media_type = desc.media_type().to_string();
            let problem = |why: String| MissingBlob {
                digest: desc.digest().to_string(),
                media_type: media_type.clone(),
                referenced_by: parent.clone(),
                why,
            };
            let digest = match image::descriptor_digest(&desc) {
                Ok(d) => d,
                Err(e) => {
                    reach.problems.push(problem(e.to_string()));
                    continue;
                }
            };
            if !reach.blobs.insert(digest.clone()) {
                continue;
            }
            let present = match good {
                Some(g) => g.contains(&digest),
                None => self.has_blob(&digest),
            };
            if !present {
                reach.problems.push(problem("missing or corrupt".into()));
                continue;
            }
            let kind = DocKind::of(&media_type);
            let is_config = media_type == image::OCI_CONFIG || media_type == image::DOCKER_CONFIG;
            if kind.is_none() && !is_config {
                continue; // a layer or other leaf
            }
            let limit = if is_config {
                image::MAX_CONFIG_SIZE
            } else {
                image::MAX_MANIFEST_SIZE
            };
            let data = match self
                .open_blob(&digest)
                .and_then(|f| image::read_document(&desc, limit, f))
                .and_then(|d| image::verify_document(&desc, &media_type, &d).map(|_| d))
            {
                Ok(d) => d,
                Err(e) => {
                    reach.problems.push(problem(e.to_string()));
                    continue;
                }
            };
            let here = format!("{media_type} {digest}");
            let parsed = match kind {
                Some(DocKind::Index) => serde_json::from_slice::<ImageIndex>(&data).map(|i| {
                    for m in i.manifests() {
                        stack.push((m.clone(), here.clone()));
                    }
                }),
                Some(DocKind::Manifest) => {
                    serde_json::from_slice::<ImageManifest>(&data).map(|m| {
                        stack.push((m.config().clone(), here.clone()));
                        for l in m.layers() {
                            stack.push((l.clone(), here.clone()));
                        }
                    })
                }
                None => serde_json::from_slice::<ImageConfiguration>(&data).map(|c| {
                    let ids: Vec<Digest> = c
                        .rootfs()
                        .diff_ids()
                        .iter()
                        .filter_map(|d| d.parse().ok())
                        .collect();
                    reach.chain_ids.extend(chain_ids(&ids));
                    reach.diff_ids.extend(ids);
                }),
            };
            if let Err(e) = parsed {
                reach.problems.push(problem(format!("malformed JSON: {e}")));
            }
        }
        Ok(reach)
    }
}

/// A one-line summary per problem, for humans.
pub fn describe_problems(report: &CheckReport) -> Vec<String> {
    let mut out = Vec::new();
    for c in &report.corrupt {
        out.push(match &c.actual {
            Some(a) => format!(
                "corrupt blob {}: expected {}, got {a} ({} bytes)",
                c.path, c.expected, c.size
            ),
            None => format!("corrupt blob {}: {}", c.path, c.why),
        });
    }
    for m in &report.missing {
        out.push(format!(
            "missing blob {} ({}), referenced by {}: {}",
            m.digest, m.media_type, m.referenced_by, m.why
        ));
    }
    out
}

/// Used by `images ls`: a short summary of each ref.
#[derive(Debug, Clone, Serialize)]
pub struct ImageSummary {
    pub reference: String,
    pub digest: String,
    pub media_type: String,
    pub size: u64,
    pub layers: usize,
    pub platform: Option<String>,
    pub error: Option<String>,
}

impl Store {
    /// One summary per ref; an image that cannot be resolved is listed with its error.
    pub fn list_images(&self) -> Result<Vec<ImageSummary>> {
        let mut out = Vec::new();
        for r in self.refs()? {
            let mut s = ImageSummary {
                reference: r.name.clone(),
                digest: r.descriptor.digest().to_string(),
                media_type: r.descriptor.media_type().to_string(),
                size: 0,
                layers: 0,
                platform: None,
                error: None,
            };
            match self.resolve(&r.name, None) {
                Ok(img) => {
                    s.size = img.total_size();
                    s.layers = img.layers().len();
                    s.platform = Some(img.platform.to_string());
                }
                Err(e) => s.error = Some(e.to_string()),
            }
            out.push(s);
        }
        Ok(out)
    }
}

impl From<&MissingBlob> for StoreError {
    fn from(m: &MissingBlob) -> StoreError {
        StoreError::Unreachable {
            digest: m.digest.clone(),
            media_type: m.media_type.clone(),
            referenced_by: m.referenced_by.clone(),
            why: m.why.clone(),
        }
    }
}

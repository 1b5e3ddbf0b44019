//! `oci:DIR[:REF]` and `oci-archive:FILE[:REF]`: an OCI image layout, as a directory or
//! inside a tar (read by offset through a [`TarIndex`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex};

use super::tar_index::TarIndex;
use super::{BlobReader, MemoryBlobs, Source};
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{self, OpenRegularError};
use crate::image::{self, DocKind, REF_NAME_ANNOTATION};

/// Where the layout's files are.
enum Files {
    Dir(PathBuf),
    Archive(TarIndex),
}

impl Files {
    fn describe(&self) -> String {
        match self {
            Files::Dir(d) => format!("oci:{}", d.display()),
            Files::Archive(t) => format!("oci-archive:{}", t.path().display()),
        }
    }

    /// Opens `rel` (e.g. `blobs/sha256/<hex>`). In a directory, a symlink is refused
    /// rather than followed: the layout must not make us read outside it.
    fn open(&self, rel: &str) -> Result<BlobReader<'_>> {
        self.open_at(rel, 0)
    }

    /// `rel` from byte `from` on (to resume a partial ingest).
    fn open_at(&self, rel: &str, from: u64) -> Result<BlobReader<'_>> {
        match self {
            Files::Archive(t) => t.open_at(rel, from),
            Files::Dir(dir) => {
                let path = dir.join(rel);
                let file = fsutil::open_regular(&path).map_err(|e| match e {
                    OpenRegularError::Symlink => Error::Invalid(format!(
                        "{}: blob path is a symlink: refusing to follow it",
                        path.display()
                    )),
                    OpenRegularError::Missing => {
                        Error::NotFound(format!("{}: missing from the layout", path.display()))
                    }
                    OpenRegularError::NotRegular => {
                        Error::Invalid(format!("{}: not a regular file", path.display()))
                    }
                    OpenRegularError::Io(e) => Error::io(format!("open {}", path.display()), e),
                })?;
                let mut file = file;
                file.seek(SeekFrom::Start(from))
                    .ctx(|| format!("seek {}", path.display()))?;
                Ok(Box::new(file))
            }
        }
    }

    fn read_small(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = Vec::new();
        self.open(rel)?
            .take(limit + 1)
            .read_to_end(&mut buf)
            .ctx(|| format!("read {rel} in {}", self.describe()))?;
        if buf.len() as u64 > limit {
            return Err(Error::Invalid(format!(
                "{}: {rel} is larger than the {limit} bytes allowed",
                self.describe()
            )));
        }
        Ok(buf)
    }
}

pub struct OciLayoutSource {
    files: Files,
    root: Descriptor,
    default_ref: Option<String>,
    synthesized: MemoryBlobs,
}

impl OciLayoutSource {
    pub fn open_dir(dir: &Path, reference: Option<&str>) -> Result<Self> {
        Self::open(Files::Dir(dir.to_path_buf()), reference)
    }

    pub fn open_archive(index: TarIndex, reference: Option<&str>) -> Result<Self> {
        Self::open(Files::Archive(index), reference)
    }

    fn open(files: Files, reference: Option<&str>) -> Result<Self> {
        let what = files.describe();
        let layout = files.read_small("oci-layout", 4096).map_err(|e| {
            Error::Invalid(format!("{what}: not an OCI image layout (oci-layout: {e})"))
        })?;
        let layout: serde_json::Value = serde_json::from_slice(&layout)
            .map_err(|e| Error::Invalid(format!("{what}: oci-layout: malformed JSON: {e}")))?;
        if layout.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
            return Err(Error::Invalid(format!(
                "{what}: oci-layout: unsupported imageLayoutVersion (expected \"1.0.0\")"
            )));
        }
        let index = files.read_small("index.json", image::MAX_MANIFEST_SIZE)?;
        let index: ImageIndex = serde_json::from_slice(&index)
            .map_err(|e| Error::Invalid(format!("{what}: index.json: malformed JSON: {e}")))?;
        let mut synthesized = MemoryBlobs::default();
        let (root, default_ref) = choose_root(&what, &index, reference, &mut synthesized)?;
        Ok(OciLayoutSource {
            files,
            root,
            default_ref,
            synthesized,
        })
    }
}

/// The full image name containerd (and Docker's `docker save` since 25) records beside
/// the short `ref.name` (which holds only the tag there).
const CONTAINERD_IMAGE_NAME: &str = "io.containerd.image.name";

fn annotation<'a>(d: &'a Descriptor, key: &str) -> Option<&'a str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    annotation(d, REF_NAME_ANNOTATION)
}

/// The entry (or entries) of index.json the user means. Several entries under one name,
/// or several unnamed entries, become a synthesised index to choose a platform from.
fn choose_root(
    what: &str,
    index: &ImageIndex,
    reference: Option<&str>,
    synthesized: &mut MemoryBlobs,
) -> Result<(Descriptor, Option<String>)> {
    let images: Vec<&Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| DocKind::of(d.media_type().as_ref()).is_some())
        .collect();
    let chosen: Vec<&Descriptor> = match reference {
        Some(r) => images
            .iter()
            .copied()
            .filter(|d| {
                ref_name(d) == Some(r)
                    || annotation(d, CONTAINERD_IMAGE_NAME) == Some(r)
                    || d.digest().to_string() == r
            })
            .collect(),
        None => {
            let mut names: Vec<&str> = images.iter().filter_map(|d| ref_name(d)).collect();
            names.sort_unstable();
            names.dedup();
            if names.len() > 1 {
                return Err(Error::Invalid(format!(
                    "{what} holds several images ({}): name one as {what}:REF",
                    names.join(", ")
                )));
            }
            images.clone()
        }
    };
    let default_ref = reference
        .map(str::to_string)
        .or_else(|| chosen.iter().find_map(|d| ref_name(d)).map(str::to_string));
    match chosen.as_slice() {
        [] => {
            let names: Vec<&str> = images.iter().filter_map(|d| ref_name(d)).collect();
            Err(Error::NotFound(format!(
                "{what}: no image {}; refs in it: {}",
                reference
                    .map(|r| format!("with ref {r:?}"))
                    .unwrap_or_default(),
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )))
        }
        [one] => Ok(((*one).clone(), default_ref)),
        many => {
            let body = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": image::OCI_INDEX,
                "manifests": many,
            });
            let data = serde_json::to_vec(&body)
                .map_err(|e| Error::Other(format!("serialize index: {e}")))?;
            Ok((synthesized.add(image::OCI_INDEX, data), default_ref))
        }
    }
}

impl Source for OciLayoutSource {
    fn describe(&self) -> String {
        self.files.describe()
    }

    fn default_ref(&self) -> Option<String> {
        self.default_ref.clone()
    }

    fn root(&self) -> Result<Descriptor> {
        Ok(self.root.clone())
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader<'_>> {
        self.open_blob_at(desc, 0)
    }

    fn open_blob_at(&self, desc: &Descriptor, offset: u64) -> Result<BlobReader<'_>> {
        if let Some(mut r) = self.synthesized.get(desc) {
            std::io::copy(&mut Read::by_ref(&mut r).take(offset), &mut std::io::sink())
                .ctx(|| format!("read synthesized {}", desc.digest()))?;
            return Ok(r);
        }
        let digest = image::descriptor_digest(desc)?;
        self.files
            .open_at(&format!("blobs/sha256/{}", digest.hex()), offset)
    }
}

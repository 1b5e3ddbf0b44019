//! Refs: the entries of the layout's `index.json`, named by the
//! `org.opencontainers.image.ref.name` annotation. Every change is a read-modify-write
//! under `.nestcache/lock`, and the new file replaces the old by rename, so concurrent
//! stagers never lose each other's refs and a reader never sees half a file.

use std::collections::HashMap;
use std::fs;

use oci_spec::image::{Descriptor, ImageIndex, MediaType};

use super::{lock, Store, StoreError};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, DocKind, REF_NAME_ANNOTATION};

/// One named ref.
#[derive(Debug, Clone)]
pub struct RefEntry {
    pub name: String,
    pub descriptor: Descriptor,
}

/// OCI's ref name grammar, loosely: what a tag, a `host/repo:tag` or a digest reference
/// needs, and nothing that could confuse a path or a shell.
pub fn validate_ref_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:@/+".contains(&b))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "invalid ref name {name:?}: use letters, digits and - . _ : @ / +, starting with a letter or digit"
        )))
    }
}

fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()
        .and_then(|a| a.get(REF_NAME_ANNOTATION))
        .map(String::as_str)
}

fn empty_index() -> ImageIndex {
    let mut index = ImageIndex::default();
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::ImageIndex));
    index.set_manifests(Vec::new());
    index
}

impl Store {
    /// The layout's index.json as it is now.
    pub fn read_index(&self) -> Result<ImageIndex> {
        let path = self.layout().index_file();
        let data = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
        serde_json::from_slice(&data).map_err(|e| {
            Error::from(StoreError::MalformedJson {
                path: path.clone(),
                why: e.to_string(),
            })
        })
    }

    /// Every named ref, in index.json order.
    pub fn refs(&self) -> Result<Vec<RefEntry>> {
        Ok(self
            .read_index()?
            .manifests()
            .iter()
            .filter_map(|d| {
                ref_name(d).map(|n| RefEntry {
                    name: n.to_string(),
                    descriptor: d.clone(),
                })
            })
            .collect())
    }

    /// Points ref `name` at `descriptor` (a manifest or index already in the store),
    /// replacing what it pointed to. Returns the previous descriptor.
    pub fn set_ref(&self, name: &str, descriptor: &Descriptor) -> Result<Option<Descriptor>> {
        validate_ref_name(name)?;
        let digest = image::descriptor_digest(descriptor)?;
        if DocKind::of(descriptor.media_type().as_ref()).is_none() {
            return Err(StoreError::RefNotAManifest {
                name: name.to_string(),
                digest,
                media_type: descriptor.media_type().to_string(),
            }
            .into());
        }
        if !self.has_blob(&digest) {
            return Err(StoreError::RefBlobMissing {
                name: name.to_string(),
                digest,
            }
            .into());
        }
        let mut entry = descriptor.clone();
        let mut annotations = entry.annotations().clone().unwrap_or_default();
        annotations.insert(REF_NAME_ANNOTATION.to_string(), name.to_string());
        entry.set_annotations(Some(annotations));
        self.update_index(|manifests| {
            let previous = manifests
                .iter()
                .position(|d| ref_name(d) == Some(name))
                .map(|i| manifests.remove(i));
            manifests.push(entry);
            Ok(previous)
        })
    }

    /// Points ref `target` at what `source` (a ref, in any spelling, or a digest) names,
    /// as `docker tag`. Returns the descriptor.
    pub fn tag(&self, source: &str, target: &str) -> Result<Descriptor> {
        let d = self.root_descriptor(source)?;
        self.set_ref(target, &d)?;
        Ok(d)
    }

    /// Removes ref `name`; its blobs stay until `store gc`.
    pub fn remove_ref(&self, name: &str) -> Result<Descriptor> {
        self.update_index(|manifests| {
            match manifests.iter().position(|d| ref_name(d) == Some(name)) {
                Some(i) => Ok(manifests.remove(i)),
                None => Err(StoreError::RefNotFound {
                    name: name.to_string(),
                    store: self.root().to_path_buf(),
                    refs: manifests
                        .iter()
                        .filter_map(ref_name)
                        .map(str::to_string)
                        .collect(),
                }
                .into()),
            }
        })
    }

    /// The descriptor a ref name or a digest stands for.
    pub(crate) fn root_descriptor(&self, ref_or_digest: &str) -> Result<Descriptor> {
        let index = self.read_index()?;
        if let Ok(digest) = ref_or_digest.parse::<Digest>() {
            if let Some(d) = index
                .manifests()
                .iter()
                .find(|d| d.digest().to_string() == digest.to_string())
            {
                return Ok(d.clone());
            }
            return self.descriptor_of_blob(&digest);
        }
        if let Some(d) = index
            .manifests()
            .iter()
            .find(|d| ref_name(d) == Some(ref_or_digest))
        {
            return Ok(d.clone());
        }
        // `busybox` finds `docker.io/library/busybox:latest` and the other way round.
        if let Some(wanted) = image::reference::normalize(ref_or_digest) {
            let same: Vec<&Descriptor> = index
                .manifests()
                .iter()
                .filter(|d| {
                    ref_name(d).and_then(image::reference::normalize).as_ref() == Some(&wanted)
                })
                .collect();
            if let [d] = same[..] {
                return Ok(d.clone());
            }
        }
        Err(StoreError::RefNotFound {
            name: ref_or_digest.to_string(),
            store: self.root().to_path_buf(),
            refs: index
                .manifests()
                .iter()
                .filter_map(ref_name)
                .map(str::to_string)
                .collect(),
        }
        .into())
    }

    /// A descriptor for a manifest or index blob that no ref names, from its own mediaType.
    fn descriptor_of_blob(&self, digest: &Digest) -> Result<Descriptor> {
        let size = self
            .blob_size(digest)
            .ok_or_else(|| StoreError::BlobMissing {
                digest: digest.clone(),
            })?;
        let probe = Descriptor::new(MediaType::ImageManifest, size, image::oci_digest(digest));
        let data = image::read_document(&probe, image::MAX_MANIFEST_SIZE, self.open_blob(digest)?)?;
        #[derive(serde::Deserialize)]
        struct Probe {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let p: Probe = serde_json::from_slice(&data).map_err(|e| StoreError::BlobMalformed {
            digest: digest.clone(),
            why: e.to_string(),
        })?;
        let media_type = match (p.media_type, p.manifests) {
            (Some(t), _) => t,
            (None, Some(_)) => image::OCI_INDEX.to_string(),
            (None, None) => image::OCI_MANIFEST.to_string(),
        };
        Ok(Descriptor::new(
            MediaType::from(media_type.as_str()),
            size,
            image::oci_digest(digest),
        ))
    }

    /// Creates index.json when missing (under the lock, so two openers don't race).
    pub(crate) fn ensure_index(&self) -> Result<()> {
        if self.layout().index_file().exists() {
            return Ok(());
        }
        let _lock = lock::lock(&self.layout().lock_file(), true)?;
        if self.layout().index_file().exists() {
            return Ok(());
        }
        self.write_index(&empty_index())
    }

    fn write_index(&self, index: &ImageIndex) -> Result<()> {
        let data = serde_json::to_vec_pretty(index)
            .map_err(|e| Error::Other(format!("serialize index.json: {e}")))?;
        self.write_atomically(&self.layout().index_file(), &data)
    }

    /// Read-modify-write of index.json's manifests under the exclusive lock.
    fn update_index<R>(&self, f: impl FnOnce(&mut Vec<Descriptor>) -> Result<R>) -> Result<R> {
        let _lock = lock::lock(&self.layout().lock_file(), true)?;
        let mut index = if self.layout().index_file().exists() {
            self.read_index()?
        } else {
            empty_index()
        };
        let mut manifests = index.manifests().clone();
        let out = f(&mut manifests)?;
        index.set_manifests(manifests);
        self.write_index(&index)?;
        Ok(out)
    }

    /// Names of the refs pointing at each digest (for listings).
    pub fn ref_names_by_digest(&self) -> Result<HashMap<String, Vec<String>>> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for r in self.refs()? {
            out.entry(r.descriptor.digest().to_string())
                .or_default()
                .push(r.name);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_replace_remove_refs() {
        let tmp = tempfile::tempdir().unwrap();
        let s = Store::open(tmp.path()).unwrap();
        let data = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let d = Digest::of(data);
        let desc = image::descriptor_for(image::OCI_INDEX, data);
        assert!(s.set_ref("a", &desc).is_err(), "blob not present yet");
        s.ingest_bytes("index", &d, data).unwrap();
        assert!(s.set_ref("a", &desc).unwrap().is_none());
        assert!(s.set_ref("a", &desc).unwrap().is_some());
        s.set_ref("b:1", &desc).unwrap();
        let names: Vec<String> = s.refs().unwrap().into_iter().map(|r| r.name).collect();
        assert_eq!(names, ["a", "b:1"]);
        assert!(s.set_ref("../x", &desc).is_err());
        s.remove_ref("a").unwrap();
        assert!(s.remove_ref("a").is_err());
        assert_eq!(s.refs().unwrap().len(), 1);
        assert_eq!(
            s.root_descriptor(&d.to_string())
                .unwrap()
                .media_type()
                .to_string(),
            image::OCI_INDEX
        );
    }
}

//! `docker-archive:FILE[:REF]`: the `docker save` format (`manifest.json` naming a
//! config file and layer tars), presented as an OCI image: the config is taken as is
//! (Docker's config JSON is the OCI config), layers get OCI media types from their
//! content, and a manifest is synthesised.
//!
//! Layer digests are known without reading the layers: an uncompressed layer's digest is
//! its diff_id (the config says which), a layer stored as `blobs/sha256/<hex>` (newer
//! Docker) is named by it; both are then verified while the layer streams into the store.

use std::collections::HashMap;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageConfiguration, MediaType};
use serde::Deserialize;

use super::tar_index::TarIndex;
use super::{BlobReader, MemoryBlobs, Source};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::image::{self, Compression};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveImage {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

pub struct DockerArchiveSource {
    archive: TarIndex,
    root: Descriptor,
    default_ref: Option<String>,
    synthesized: MemoryBlobs,
    /// layer digest → entry name in the archive
    layers: HashMap<String, String>,
}

impl DockerArchiveSource {
    pub fn open(archive: TarIndex, reference: Option<&str>) -> Result<Self> {
        let what = format!("docker-archive:{}", archive.path().display());
        let data = archive.read_small("manifest.json", image::MAX_MANIFEST_SIZE)?;
        let images: Vec<ArchiveImage> = serde_json::from_slice(&data)
            .map_err(|e| Error::Invalid(format!("{what}: manifest.json: malformed JSON: {e}")))?;
        let (img, default_ref) = choose(&what, &images, reference)?;

        let config_bytes = archive.read_small(&img.config, image::MAX_CONFIG_SIZE)?;
        let config: ImageConfiguration = serde_json::from_slice(&config_bytes).map_err(|e| {
            Error::Invalid(format!(
                "{what}: config {}: malformed JSON: {e}",
                img.config
            ))
        })?;
        let diff_ids = config
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| d.parse::<Digest>())
            .collect::<Result<Vec<_>>>()?;
        if diff_ids.len() != img.layers.len() {
            return Err(Error::Invalid(format!(
                "{what}: manifest.json lists {} layers but config {} has {} diff_ids",
                img.layers.len(),
                img.config,
                diff_ids.len()
            )));
        }

        let mut layers = HashMap::new();
        let mut layer_descs = Vec::new();
        for (name, diff_id) in img.layers.iter().zip(&diff_ids) {
            let desc = layer_descriptor(&archive, name, diff_id)?;
            layers.insert(desc.digest().to_string(), name.clone());
            layer_descs.push(desc);
        }

        let mut synthesized = MemoryBlobs::default();
        let config_desc = synthesized.add(image::OCI_CONFIG, config_bytes);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "config": config_desc,
            "layers": layer_descs,
        });
        let manifest = serde_json::to_vec(&manifest)
            .map_err(|e| Error::Other(format!("serialize manifest: {e}")))?;
        let root = synthesized.add(image::OCI_MANIFEST, manifest);
        Ok(DockerArchiveSource {
            archive,
            root,
            default_ref,
            synthesized,
            layers,
        })
    }
}

/// Picks the image for REF (a RepoTag, with or without `docker.io/library/`, or `@N`).
fn choose<'a>(
    what: &str,
    images: &'a [ArchiveImage],
    reference: Option<&str>,
) -> Result<(&'a ArchiveImage, Option<String>)> {
    let tags = |i: &ArchiveImage| i.repo_tags.clone().unwrap_or_default();
    let all_tags: Vec<String> = images.iter().flat_map(tags).collect();
    match reference {
        None => match images {
            [one] => Ok((one, tags(one).into_iter().next())),
            [] => Err(Error::Invalid(format!(
                "{what}: manifest.json lists no image"
            ))),
            _ => Err(Error::Invalid(format!(
                "{what} holds {} images: name one as {what}:TAG or :@N (tags: {})",
                images.len(),
                all_tags.join(", ")
            ))),
        },
        Some(r) => {
            if let Some(n) = r.strip_prefix('@') {
                let i: usize = n
                    .parse()
                    .map_err(|_| Error::Invalid(format!("{what}: bad image index {r:?}")))?;
                let img = images.get(i).ok_or_else(|| {
                    Error::NotFound(format!("{what}: no image @{i} ({} images)", images.len()))
                })?;
                return Ok((img, tags(img).into_iter().next()));
            }
            let short = |t: &str| {
                t.strip_prefix("docker.io/library/")
                    .or_else(|| t.strip_prefix("docker.io/"))
                    .unwrap_or(t)
                    .to_string()
            };
            images
                .iter()
                .find(|i| tags(i).iter().any(|t| short(t) == short(r)))
                .map(|i| (i, Some(r.to_string())))
                .ok_or_else(|| {
                    Error::NotFound(format!(
                        "{what}: no image tagged {r:?}; tags: {}",
                        if all_tags.is_empty() {
                            "none".into()
                        } else {
                            all_tags.join(", ")
                        }
                    ))
                })
        }
    }
}

/// A layer's descriptor, from its name, its first bytes and its diff_id.
fn layer_descriptor(archive: &TarIndex, name: &str, diff_id: &Digest) -> Result<Descriptor> {
    let size = archive.size(name)?;
    let mut magic = Vec::with_capacity(4);
    archive
        .open(name)?
        .take(4)
        .read_to_end(&mut magic)
        .ctx(|| format!("read layer {name} in {}", archive.path().display()))?;
    let compression = match magic.as_slice() {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd] => Compression::Zstd,
        _ => Compression::None,
    };
    let media_type = match compression {
        Compression::None => image::OCI_LAYER,
        Compression::Gzip => image::OCI_LAYER_GZIP,
        Compression::Zstd => image::OCI_LAYER_ZSTD,
    };
    let named = name
        .strip_prefix("blobs/sha256/")
        .and_then(|h| format!("sha256:{h}").parse::<Digest>().ok());
    let digest = match (named, compression) {
        (Some(d), _) => d,
        (None, Compression::None) => diff_id.clone(),
        // An old-style name holding a compressed layer: nothing names its digest, so
        // it has to be hashed here (a second read of this one layer).
        (None, _) => {
            let mut r = archive.open(name)?;
            let (d, _) = crate::digest::hash_reader(&mut r)
                .ctx(|| format!("read layer {name} in {}", archive.path().display()))?;
            d
        }
    };
    Ok(Descriptor::new(
        MediaType::from(media_type),
        size,
        image::oci_digest(&digest),
    ))
}

impl Source for DockerArchiveSource {
    fn describe(&self) -> String {
        format!("docker-archive:{}", self.archive.path().display())
    }

    fn default_ref(&self) -> Option<String> {
        self.default_ref.clone()
    }

    fn root(&self) -> Result<Descriptor> {
        Ok(self.root.clone())
    }

    fn open_blob(&self, desc: &Descriptor) -> Result<BlobReader<'_>> {
        if let Some(r) = self.synthesized.get(desc) {
            return Ok(r);
        }
        match self.layers.get(&desc.digest().to_string()) {
            Some(name) => self.archive.open(name),
            None => Err(Error::NotFound(format!(
                "{}: no blob {}",
                self.describe(),
                desc.digest()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images() -> Vec<ArchiveImage> {
        serde_json::from_str(
            r#"[{"Config":"a.json","RepoTags":["docker.io/library/busybox:1"],"Layers":[]},
                {"Config":"b.json","RepoTags":null,"Layers":[]}]"#,
        )
        .unwrap()
    }

    #[test]
    fn chooses_by_tag_index_or_refuses_ambiguity() {
        let imgs = images();
        let (i, r) = choose("x", &imgs, Some("busybox:1")).unwrap();
        assert_eq!(
            (i.config.as_str(), r.as_deref()),
            ("a.json", Some("busybox:1"))
        );
        let (i, r) = choose("x", &imgs, Some("@1")).unwrap();
        assert_eq!((i.config.as_str(), r), ("b.json", None));
        assert!(choose("x", &imgs, Some("@2")).is_err());
        let err = choose("x", &imgs, None).unwrap_err().to_string();
        assert!(
            err.contains("2 images") && err.contains("busybox:1"),
            "{err}"
        );
        let err = choose("x", &imgs, Some("nope")).unwrap_err().to_string();
        assert!(err.contains("docker.io/library/busybox:1"), "{err}");
    }
}

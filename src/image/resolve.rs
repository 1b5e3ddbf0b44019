//! Resolution: from a root descriptor (an index or a manifest) down to one image manifest
//! and its config, fetching each document through a caller-supplied function, so the same
//! code serves the store (blobs on disk) and every source (archives, registries). Every
//! document is size-bounded before it is read and digest-checked before it is used.

use std::collections::HashSet;
use std::io::Read;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::media::*;
use super::platform::{pick_platform, PlatformChoice, PlatformSpec};
use super::{descriptor_digest, Layer, ResolvedImage};
use crate::digest::{chain_ids, Digest};
use crate::error::{Error, Result};

/// Upper bound for an index or manifest (containerd uses the same order of magnitude); a
/// descriptor declaring more is refused before a byte is read.
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;
/// Upper bound for an image config (long histories make configs larger than manifests).
pub const MAX_CONFIG_SIZE: u64 = 16 << 20;
/// How deep indexes may nest (index → index → manifest); real images use one level.
const MAX_INDEX_DEPTH: usize = 4;

/// Reads a small document (index, manifest, config) of declared size at most `limit`,
/// never reading more than declared + 1 bytes so a lying source cannot make it grow.
pub fn read_document(desc: &Descriptor, limit: u64, reader: impl Read) -> Result<Vec<u8>> {
    let size = desc.size();
    if size > limit {
        return Err(Error::Invalid(format!(
            "{} {} declares {size} bytes, more than the {limit} bytes allowed for it",
            desc.media_type(),
            desc.digest()
        )));
    }
    let mut buf = Vec::with_capacity(size as usize);
    reader
        .take(size + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Error::io(format!("read {} {}", desc.media_type(), desc.digest()), e))?;
    Ok(buf)
}

/// Checks a document's bytes against its descriptor.
pub fn verify_document(desc: &Descriptor, what: &str, data: &[u8]) -> Result<Digest> {
    let expected = descriptor_digest(desc)?;
    let actual = Digest::of(data);
    if actual != expected || data.len() as u64 != desc.size() {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: expected.to_string(),
            expected_size: desc.size(),
            actual: actual.to_string(),
            actual_size: data.len() as u64,
        });
    }
    Ok(expected)
}

/// Fetches a document's raw bytes (bounded by `limit`); verification is the resolver's.
pub type FetchFn<'a> = dyn FnMut(&Descriptor, u64) -> Result<Vec<u8>> + 'a;

/// Walks from `root` (an index or a manifest) to one image for `choice`.
pub fn resolve(
    root: &Descriptor,
    choice: &PlatformChoice,
    fetch: &mut FetchFn<'_>,
) -> Result<ResolvedImage> {
    let mut ancestors: HashSet<String> = HashSet::new();
    let mut desc = root.clone();
    loop {
        let media_type = desc.media_type().to_string();
        match DocKind::of(&media_type) {
            Some(DocKind::Manifest) => return resolve_manifest(desc, choice, fetch),
            Some(DocKind::Index) => {
                if ancestors.len() >= MAX_INDEX_DEPTH {
                    return Err(Error::Invalid(format!(
                        "index {} nests more than {MAX_INDEX_DEPTH} levels deep",
                        desc.digest()
                    )));
                }
                ancestors.insert(desc.digest().to_string());
                desc = choose_from_index(&desc, choice, &ancestors, fetch)?;
            }
            None => {
                return Err(Error::Invalid(format!(
                    "{} has media type {media_type:?}, which is neither an image index nor an image manifest",
                    desc.digest()
                )))
            }
        }
    }
}

/// Reads an index and picks the descriptor for the wanted platform.
fn choose_from_index(
    desc: &Descriptor,
    choice: &PlatformChoice,
    ancestors: &HashSet<String>,
    fetch: &mut FetchFn<'_>,
) -> Result<Descriptor> {
    let what = format!("index {}", desc.digest());
    let data = fetch(desc, MAX_MANIFEST_SIZE)?;
    let index: ImageIndex = parse_json(&what, &data)?;
    // Cycles are checked before the digest so the message says what is wrong; nothing
    // from the document is used until the digest has been verified below.
    for m in index.manifests() {
        if ancestors.contains(&m.digest().to_string()) {
            return Err(Error::Invalid(format!(
                "{what} refers to itself (through {}): refusing a cyclic index",
                m.digest()
            )));
        }
    }
    verify_document(desc, &what, &data)?;
    check_schema(&what, index.schema_version())?;
    check_declared_type(&what, desc, index.media_type().as_ref())?;
    pick_platform(&what, index.manifests(), choice)
}

fn resolve_manifest(
    desc: Descriptor,
    choice: &PlatformChoice,
    fetch: &mut FetchFn<'_>,
) -> Result<ResolvedImage> {
    let what = format!("manifest {}", desc.digest());
    let manifest_bytes = fetch(&desc, MAX_MANIFEST_SIZE)?;
    let manifest_digest = verify_document(&desc, &what, &manifest_bytes)?;
    let manifest: ImageManifest = parse_json(&what, &manifest_bytes)?;
    check_schema(&what, manifest.schema_version())?;
    check_declared_type(&what, &desc, manifest.media_type().as_ref())?;

    let config_desc = manifest.config();
    let config_type = config_desc.media_type().to_string();
    if config_type != OCI_CONFIG && config_type != DOCKER_CONFIG {
        return Err(Error::Invalid(format!(
            "{what}: config media type {config_type:?} is not a container image config (an artifact?)"
        )));
    }
    let mut layer_digests = Vec::with_capacity(manifest.layers().len());
    for layer in manifest.layers() {
        layer_compression(layer.media_type().as_ref())
            .map_err(|e| Error::Invalid(format!("{what}: layer {}: {e}", layer.digest())))?;
        layer_digests.push(descriptor_digest(layer)?);
    }

    let config_what = format!("config {}", config_desc.digest());
    let config_bytes = fetch(config_desc, MAX_CONFIG_SIZE)?;
    let config_digest = verify_document(config_desc, &config_what, &config_bytes)?;
    let config: ImageConfiguration = parse_json(&config_what, &config_bytes)?;
    let diff_ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| d.parse::<Digest>())
        .collect::<Result<Vec<_>>>()
        .map_err(|e| Error::Invalid(format!("{config_what}: rootfs.diff_ids: {e}")))?;
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::Invalid(format!(
            "{what} has {} layers but its {config_what} lists {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        )));
    }
    let chains = chain_ids(&diff_ids);
    let layers = manifest
        .layers()
        .iter()
        .zip(layer_digests)
        .zip(diff_ids.into_iter().zip(chains))
        .map(|((descriptor, digest), (diff_id, chain_id))| Layer {
            descriptor: descriptor.clone(),
            digest,
            diff_id,
            chain_id,
        })
        .collect();
    let platform = PlatformSpec::of_config(&config);
    if choice.explicit && !choice.platform.matches(&platform) {
        return Err(Error::PlatformMismatch {
            image: what,
            wanted: choice.platform.to_string(),
            actual: platform.to_string(),
        });
    }
    let mut manifest_descriptor = desc;
    if manifest_descriptor.platform().is_none() {
        manifest_descriptor.set_platform(Some(platform.to_oci()?));
    }
    Ok(ResolvedImage {
        manifest_descriptor,
        manifest_digest,
        manifest_bytes,
        config_digest,
        config,
        config_bytes,
        layers,
        platform,
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(what: &str, data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Invalid(format!("{what}: malformed JSON: {e}")))
}

fn check_schema(what: &str, version: u32) -> Result<()> {
    if version != 2 {
        return Err(Error::Invalid(format!(
            "{what}: unsupported schemaVersion {version} (expected 2)"
        )));
    }
    Ok(())
}

/// A document's own `mediaType`, when present, must agree with the descriptor that led to
/// it: otherwise one set of bytes could be read as two different things.
fn check_declared_type(what: &str, desc: &Descriptor, own: Option<&MediaType>) -> Result<()> {
    if let Some(own) = own {
        if own != desc.media_type() {
            return Err(Error::Invalid(format!(
                "{what}: document says mediaType {:?} but its descriptor says {:?}",
                own.to_string(),
                desc.media_type().to_string()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{descriptor_for, oci_digest};
    use std::collections::HashMap;

    fn entry(media_type: &str, data: &[u8], platform: Option<&str>) -> Descriptor {
        let mut d = descriptor_for(media_type, data);
        if let Some(p) = platform {
            d.set_platform(Some(p.parse::<PlatformSpec>().unwrap().to_oci().unwrap()));
        }
        d
    }

    /// A tiny image: one (fake) layer, its config and manifest, held in a map by digest.
    fn image(arch: &str, blobs: &mut HashMap<String, Vec<u8>>) -> Descriptor {
        let layer = b"layer".to_vec();
        let config = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
            Digest::of(&layer)
        )
        .into_bytes();
        let l = entry(OCI_LAYER, &layer, None);
        let c = entry(OCI_CONFIG, &config, None);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [l]
        })
        .to_string()
        .into_bytes();
        let m = entry(OCI_MANIFEST, &manifest, Some(&format!("linux/{arch}")));
        for (d, data) in [(&l, layer), (&c, config), (&m, manifest)] {
            blobs.insert(d.digest().to_string(), data);
        }
        m
    }

    fn fetcher(
        blobs: &HashMap<String, Vec<u8>>,
    ) -> impl FnMut(&Descriptor, u64) -> Result<Vec<u8>> + '_ {
        move |d: &Descriptor, _| {
            blobs
                .get(&d.digest().to_string())
                .cloned()
                .ok_or_else(|| Error::NotFound(d.digest().to_string()))
        }
    }

    #[test]
    fn resolves_index_by_platform_and_lists_available() {
        let mut blobs = HashMap::new();
        let amd = image("amd64", &mut blobs);
        let arm = image("arm64", &mut blobs);
        let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [amd, arm]})
            .to_string()
            .into_bytes();
        let root = entry(OCI_INDEX, &index, None);
        blobs.insert(root.digest().to_string(), index);
        let choice = PlatformChoice::new(Some("linux/arm64".parse().unwrap()));
        let img = resolve(&root, &choice, &mut fetcher(&blobs)).unwrap();
        assert_eq!(img.manifest_descriptor.digest(), arm.digest());
        assert_eq!(img.platform.architecture, "arm64");
        assert_eq!(img.layers().len(), 1);

        let choice = PlatformChoice::new(Some("linux/s390x".parse().unwrap()));
        let err = resolve(&root, &choice, &mut fetcher(&blobs))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
    }

    #[test]
    fn a_single_platform_image_of_another_platform_is_refused_only_when_asked() {
        let mut blobs = HashMap::new();
        let arm = image("arm64", &mut blobs);
        let asked = PlatformChoice::new(Some("linux/amd64".parse().unwrap()));
        match resolve(&arm, &asked, &mut fetcher(&blobs)) {
            Err(Error::PlatformMismatch { wanted, actual, .. }) => {
                assert_eq!(
                    (wanted.as_str(), actual.as_str()),
                    ("linux/amd64", "linux/arm64")
                )
            }
            other => panic!("expected PlatformMismatch, got {other:?}"),
        }
        let img = resolve(&arm, &PlatformChoice::new(None), &mut fetcher(&blobs)).unwrap();
        assert_eq!(img.platform.architecture, "arm64");
    }

    #[test]
    fn refuses_self_referring_index() {
        let mut blobs = HashMap::new();
        // A descriptor claiming digest D whose content lists D again: only a forged
        // store can produce it, and it must not loop.
        let fake = Digest::of(b"x");
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_INDEX}","digest":"{fake}","size":10}}]}}"#
        );
        blobs.insert(fake.to_string(), body.clone().into_bytes());
        let root = Descriptor::new(MediaType::ImageIndex, body.len() as u64, oci_digest(&fake));
        let err = resolve(&root, &PlatformChoice::new(None), &mut fetcher(&blobs))
            .unwrap_err()
            .to_string();
        assert!(err.contains("refers to itself"), "{err}");
    }

    #[test]
    fn refuses_diff_id_count_mismatch_and_bad_digest() {
        let mut blobs = HashMap::new();
        let m = image("amd64", &mut blobs);
        // Corrupt the manifest bytes: digest check must fire.
        let mut bad = blobs.clone();
        bad.insert(m.digest().to_string(), b"{}".to_vec());
        let err = resolve(&m, &PlatformChoice::new(None), &mut fetcher(&bad))
            .unwrap_err()
            .to_string();
        assert!(err.contains("digest mismatch"), "{err}");

        // A config listing two diff_ids for a manifest of one layer.
        let layer = entry(OCI_LAYER, b"layer", None);
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{0}","{0}"]}}}}"#,
            Digest::of(b"layer")
        )
        .into_bytes();
        let c = entry(OCI_CONFIG, &config, None);
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": c, "layers": [layer]
        })
        .to_string()
        .into_bytes();
        let m = entry(OCI_MANIFEST, &manifest, None);
        blobs.insert(c.digest().to_string(), config);
        blobs.insert(m.digest().to_string(), manifest);
        let err = resolve(&m, &PlatformChoice::new(None), &mut fetcher(&blobs))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 1 layers but its config"), "{err}");
    }
}

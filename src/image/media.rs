//! Media types: which documents are indexes, manifests and configs, and the one list of
//! layer media types nestcache accepts (resolution refuses a manifest naming any other,
//! and the unpacker refuses any other blob, both through [`layer_compression`]).

use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

/// What a JSON document is, by media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocKind {
    Index,
    Manifest,
}

impl DocKind {
    pub fn of(media_type: &str) -> Option<DocKind> {
        match media_type {
            OCI_INDEX | DOCKER_MANIFEST_LIST => Some(DocKind::Index),
            OCI_MANIFEST | DOCKER_MANIFEST => Some(DocKind::Manifest),
            _ => None,
        }
    }
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Every layer media type nestcache accepts, with the compression it declares. The
/// unpacker still takes the compression from the stream's magic bytes, as containerd
/// does: `docker save` archives label plain tars as gzip.
pub const LAYER_MEDIA_TYPES: &[(&str, Compression)] = &[
    (OCI_LAYER, Compression::None),
    (OCI_LAYER_GZIP, Compression::Gzip),
    (OCI_LAYER_ZSTD, Compression::Zstd),
    (DOCKER_LAYER, Compression::None),
    (DOCKER_LAYER_GZIP, Compression::Gzip),
    (DOCKER_LAYER_ZSTD, Compression::Zstd),
];

/// The compression of a layer media type; unknown and non-distributable types are refused
/// by name (a non-distributable layer's bytes are, by definition, not in the image).
pub fn layer_compression(media_type: &str) -> Result<Compression> {
    if let Some((_, c)) = LAYER_MEDIA_TYPES.iter().find(|(t, _)| *t == media_type) {
        return Ok(*c);
    }
    if media_type.contains("nondistributable") || media_type.contains("foreign") {
        return Err(Error::Invalid(format!(
            "non-distributable layer media type {media_type:?} is not supported"
        )));
    }
    Err(Error::Invalid(format!(
        "unsupported layer media type {media_type:?}: expected an OCI or Docker layer (tar, tar+gzip, tar+zstd)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_types_accepted_and_nondistributable_refused_by_name() {
        assert_eq!(
            layer_compression(OCI_LAYER_ZSTD).unwrap(),
            Compression::Zstd
        );
        assert_eq!(layer_compression(DOCKER_LAYER).unwrap(), Compression::None);
        for t in [
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        ] {
            let err = layer_compression(t).unwrap_err().to_string();
            assert!(err.contains("non-distributable"), "{err}");
        }
        let err = layer_compression(OCI_CONFIG).unwrap_err().to_string();
        assert!(err.contains("unsupported layer media type"), "{err}");
    }
}

//! The bundle directory containerd prepared: `config.json` (the OCI spec) in, and the
//! shim's own record of what it did (`nestcache-shim.json`) out, so that the `delete`
//! subcommand can undo it after the shim died.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use log::warn;
use serde::{Deserialize, Serialize};

use crate::error::ShimError;
use crate::runc::{Executor, Runc};
use crate::store_rootfs::StoreLease;

/// The annotations naming the store and the image in it (shared with the CLI).
pub use nestcache::labels::{ANNOTATION_IMAGE, ANNOTATION_STORE};
/// CRI marks its pause container with this; pod annotations must not turn it into the
/// nestcache image.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// How the shim runs this container's steps (`runc::Executor`): `runc`, `runc-direct`.
pub const ANNOTATION_EXECUTOR: &str = "io.nestcache.executor";

pub const RECORD_FILE: &str = "nestcache-shim.json";

/// The few spec fields the shim reads; the rest is runc's business.
#[derive(Debug, Clone, Default)]
pub struct Spec {
    pub annotations: HashMap<String, String>,
}

/// A spec annotated for a nestcache store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreImage {
    pub store: PathBuf,
    pub image: String,
}

impl Spec {
    pub fn load(bundle: &Path) -> Result<Spec, String> {
        let path = bundle.join("config.json");
        let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
        let annotations = v
            .get("annotations")
            .and_then(|a| a.as_object())
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Spec { annotations })
    }

    /// The executor the spec's `io.nestcache.executor` annotation asks for, if it asks.
    pub fn executor(&self) -> Result<Option<Executor>, String> {
        let Some(name) = self.annotations.get(ANNOTATION_EXECUTOR) else {
            return Ok(None);
        };
        Executor::parse(name).map(Some).ok_or_else(|| {
            format!(
                "annotation {ANNOTATION_EXECUTOR}={name:?}: expected one of {}",
                Executor::NAMES
            )
        })
    }

    /// The store + image the spec asks for, if it asks; a half-annotated spec is an error.
    pub fn store_image(&self) -> Result<Option<StoreImage>, String> {
        if self.annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) == Some("sandbox") {
            return Ok(None);
        }
        let store = self
            .annotations
            .get(ANNOTATION_STORE)
            .filter(|s| !s.is_empty());
        let image = self
            .annotations
            .get(ANNOTATION_IMAGE)
            .filter(|s| !s.is_empty());
        match (store, image) {
            (None, None) => Ok(None),
            (Some(store), Some(image)) => {
                if !Path::new(store).is_absolute() {
                    return Err(format!(
                        "annotation {ANNOTATION_STORE}={store:?}: expected an absolute path"
                    ));
                }
                Ok(Some(StoreImage {
                    store: PathBuf::from(store),
                    image: image.clone(),
                }))
            }
            (Some(_), None) => Err(format!(
                "annotation {ANNOTATION_STORE} is set but {ANNOTATION_IMAGE} is missing"
            )),
            (None, Some(_)) => Err(format!(
                "annotation {ANNOTATION_IMAGE} is set but {ANNOTATION_STORE} is missing"
            )),
        }
    }
}

/// Points the spec's root at `rootfs` inside the bundle (where the shim mounted the
/// store's image), keeping every other field as containerd wrote it.
pub fn set_root_to_bundle_rootfs(bundle: &Path) -> Result<(), String> {
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut v: serde_json::Value =
        serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(format!("{}: not a JSON object", path.display()));
    };
    let root = obj.entry("root").or_insert_with(|| serde_json::json!({}));
    if let Some(root) = root.as_object_mut() {
        root.insert("path".into(), serde_json::Value::String("rootfs".into()));
    }
    let out = serde_json::to_vec(&v).map_err(|e| format!("serialize spec: {e}"))?;
    write_replacing(&path, &out).map_err(|e| e.to_string())
}

/// Replaces `path` with `data` through a temp file beside it, renamed over it: a shim
/// killed half-way leaves the old bytes or the new ones, whole. Not fsynced, unlike the
/// store's writes: a bundle is containerd's state of a running task (tmpfs on a node,
/// under /run/containerd), which no machine crash leaves anything to resume from (the
/// mounts are gone; a record lost with it leaves a store lease that `store gc` reclaims
/// once containerd says the container is gone). On a disk-backed state dir the fsyncs
/// were most of a create's rootfs setup (3 files, 2 fsyncs each, per create).
pub fn write_replacing(path: &Path, data: &[u8]) -> Result<(), ShimError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
        tmp.write_all(data)?;
        if let Ok(meta) = std::fs::metadata(path) {
            tmp.as_file().set_permissions(meta.permissions())?;
        }
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|e| ShimError::io(format!("write {}", path.display()), e))
}

/// What the shim set up for the container, written before it is set up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub runc: Runc,
    /// Where the shim mounts the rootfs (bundle/rootfs), when it mounts one.
    pub rootfs_mounted: bool,
    /// The per-container dir of a store-assembled rootfs (upper, work, lower links).
    pub store_dir: Option<PathBuf>,
    /// The store lease of a store-assembled rootfs, released at delete.
    #[serde(default)]
    pub lease: Option<StoreLease>,
}

impl Record {
    pub fn save(&self, bundle: &Path) -> Result<(), ShimError> {
        let text = serde_json::to_vec_pretty(self).map_err(|e| ShimError::Bundle {
            bundle: bundle.to_path_buf(),
            reason: format!("serialize {RECORD_FILE}: {e}"),
        })?;
        write_replacing(&bundle.join(RECORD_FILE), &text)
    }

    /// The record, if the shim wrote one. A record that exists but cannot be read is
    /// logged: cleanup then goes on with what it can find (the rootfs mount point).
    pub fn load(bundle: &Path) -> Option<Record> {
        let path = bundle.join(RECORD_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                warn!("read {}: {e}; cleaning up without it", path.display());
                return None;
            }
        };
        serde_json::from_slice(&text)
            .inspect_err(|e| warn!("parse {}: {e}; cleaning up without it", path.display()))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: &[(&str, &str)]) -> Spec {
        Spec {
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn plain_spec_is_not_a_store_image() {
        assert_eq!(spec(&[]).store_image(), Ok(None));
    }

    #[test]
    fn both_annotations_select_the_store() {
        let s = spec(&[(ANNOTATION_STORE, "/s"), (ANNOTATION_IMAGE, "busybox")]);
        assert_eq!(
            s.store_image(),
            Ok(Some(StoreImage {
                store: "/s".into(),
                image: "busybox".into()
            }))
        );
    }

    #[test]
    fn half_annotated_or_relative_store_is_an_error() {
        assert!(spec(&[(ANNOTATION_STORE, "/s")]).store_image().is_err());
        assert!(spec(&[(ANNOTATION_IMAGE, "x")]).store_image().is_err());
        let rel = spec(&[(ANNOTATION_STORE, "s"), (ANNOTATION_IMAGE, "x")]);
        assert!(rel.store_image().unwrap_err().contains("absolute"));
    }

    #[test]
    fn cri_sandbox_ignores_pod_annotations() {
        let s = spec(&[
            (ANNOTATION_STORE, "/s"),
            (ANNOTATION_IMAGE, "x"),
            (CRI_CONTAINER_TYPE, "sandbox"),
        ]);
        assert_eq!(s.store_image(), Ok(None));
    }

    #[test]
    fn records_round_trip_and_a_corrupt_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Record::load(dir.path()), None);
        let record = Record {
            runc: Runc::new(None, None, "ns", dir.path()),
            rootfs_mounted: true,
            store_dir: Some(dir.path().join("nestcache")),
            lease: Some(StoreLease {
                store: "/var/lib/nestcache/store".into(),
                id: "shim@ns@c@0123abcd".into(),
            }),
        };
        record.save(dir.path()).unwrap();
        assert_eq!(Record::load(dir.path()), Some(record));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from(RECORD_FILE)],
            "no temp file left"
        );
        std::fs::write(dir.path().join(RECORD_FILE), b"{ half").unwrap();
        assert_eq!(Record::load(dir.path()), None);
    }

    #[test]
    fn a_replaced_file_keeps_its_mode_and_leaves_no_temp_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, b"old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_replacing(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let missing = dir.path().join("gone").join("config.json");
        let err = write_replacing(&missing, b"x").unwrap_err();
        assert!(err.to_string().contains("gone/config.json"), "{err}");
    }

    #[test]
    fn root_path_is_rewritten_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"ociVersion":"1.0.2","root":{"path":"/somewhere","readonly":true},"x":{"y":1}}"#,
        )
        .unwrap();
        set_root_to_bundle_rootfs(dir.path()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(v["root"]["path"], "rootfs");
        assert_eq!(v["root"]["readonly"], true);
        assert_eq!(v["x"]["y"], 1);
    }
}

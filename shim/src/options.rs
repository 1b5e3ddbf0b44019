//! The options containerd passes with a task (`CreateTaskRequest.options`: the task's own,
//! else the container's runtime options from containerd's config), and the store roots
//! they allow.
//!
//! Three forms are read:
//! - `containerd.runc.v1.Options` (runc binary, root, systemd cgroups), as for runc's shim;
//! - `runtimeoptions.v1.Options`, what CRI sends for a runtime that is not runc (its
//!   `options` table: `ConfigPath = "/etc/nestcache/shim.json"`) and what
//!   `ctr run --runtime-config-path FILE` sends: a config file ([`ShimConfig`], JSON);
//! - `io.nestcache.shim.v1.Options`: the same JSON inline (the nestcache CLI sends it).
//!
//! Without `store_roots`, a store may live only under nestcache's state dir:
//! `/var/lib/nestcache`, and `$NESTCACHE_STATE_DIR` as the shim sees it.

use std::path::{Component, Path, PathBuf};

use containerd_shim::api;
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::{CodedInputStream, Message};
use serde::Deserialize;

use crate::error::{Result, ShimError};
use crate::runc::Executor;

pub const RUNC_OPTIONS_TYPE: &str = "containerd.runc.v1.Options";
pub const RUNTIME_OPTIONS_TYPE: &str = "runtimeoptions.v1.Options";
pub use nestcache::labels::SHIM_OPTIONS_TYPE_URL as NESTCACHE_OPTIONS_TYPE;

/// nestcache's default state dir (`nestcache --state-dir`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nestcache";

/// The shim's own configuration (the file `ConfigPath` names, or the inline JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShimConfig {
    /// Directories under which `io.nestcache.store` may name a store (absolute paths).
    #[serde(default)]
    pub store_roots: Option<Vec<PathBuf>>,
    /// How containers run (`runc`, `runc-direct`); a container's `io.nestcache.executor`
    /// annotation wins. Default: `runc-direct`.
    #[serde(default)]
    pub executor: Option<Executor>,
    /// How long a group shim (`io.nestcache.group`) stays after its last task for the
    /// group's next task to join, in milliseconds (0: it exits with its last task).
    /// Default: `$NESTCACHE_SHIM_LINGER_MS`, else 30 s (`lifetime`).
    #[serde(default)]
    pub linger_ms: Option<u64>,
}

/// What a task's options say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskOptions {
    pub runc_binary: Option<String>,
    pub runc_root: Option<PathBuf>,
    pub systemd_cgroup: bool,
    pub config: ShimConfig,
}

impl TaskOptions {
    /// Reads the options; an unknown type is ignored (containerd passes what its config
    /// says, and other runtimes' options mean nothing here), a broken one is an error.
    pub fn parse(any: Option<&Any>) -> Result<TaskOptions> {
        let Some(any) = any.filter(|a| !a.type_url.is_empty()) else {
            return Ok(TaskOptions::default());
        };
        let url = any.type_url.as_str();
        if url.ends_with(RUNC_OPTIONS_TYPE) {
            let o = api::Options::parse_from_bytes(&any.value)
                .map_err(|e| ShimError::Options(format!("{url}: {e}")))?;
            return Ok(TaskOptions {
                runc_binary: Some(o.binary_name).filter(|s| !s.is_empty()),
                runc_root: Some(PathBuf::from(o.root)).filter(|p| !p.as_os_str().is_empty()),
                systemd_cgroup: o.systemd_cgroup,
                config: ShimConfig::default(),
            });
        }
        let config = if url.ends_with(RUNTIME_OPTIONS_TYPE) {
            ShimConfig::from_runtime_options(&any.value)?
        } else if url.ends_with(NESTCACHE_OPTIONS_TYPE) {
            ShimConfig::from_json(&any.value, url)?
        } else {
            log::warn!("ignoring task options of type {url}");
            ShimConfig::default()
        };
        Ok(TaskOptions {
            config,
            ..Default::default()
        })
    }

    /// The roots a store must be under, for this task.
    pub fn store_roots(&self, state_dir_env: Option<&str>) -> Vec<PathBuf> {
        match &self.config.store_roots {
            Some(roots) => roots.clone(),
            None => default_store_roots(state_dir_env),
        }
    }
}

pub fn default_store_roots(state_dir_env: Option<&str>) -> Vec<PathBuf> {
    let mut roots = vec![PathBuf::from(DEFAULT_STATE_DIR)];
    if let Some(dir) = state_dir_env.filter(|d| Path::new(d).is_absolute()) {
        roots.push(PathBuf::from(dir));
    }
    roots
}

impl ShimConfig {
    fn from_json(bytes: &[u8], what: &str) -> Result<ShimConfig> {
        let config: ShimConfig = serde_json::from_slice(bytes)
            .map_err(|e| ShimError::Options(format!("{what}: {e}")))?;
        if let Some(bad) = config
            .store_roots
            .iter()
            .flatten()
            .find(|r| !r.is_absolute())
        {
            return Err(ShimError::Options(format!(
                "{what}: store root {}: expected an absolute path",
                bad.display()
            )));
        }
        Ok(config)
    }

    /// `runtimeoptions.v1.Options { type_url = 1; config_path = 2; config_body = 3 }`.
    fn from_runtime_options(bytes: &[u8]) -> Result<ShimConfig> {
        let bad =
            |e: protobuf_error::Error| ShimError::Options(format!("{RUNTIME_OPTIONS_TYPE}: {e}"));
        let mut is = CodedInputStream::from_bytes(bytes);
        let (mut path, mut body) = (String::new(), Vec::new());
        while let Some(tag) = is.read_raw_tag_or_eof().map_err(bad)? {
            match tag {
                // field 2, length-delimited
                0x12 => path = is.read_string().map_err(bad)?,
                // field 3, length-delimited
                0x1a => body = is.read_bytes().map_err(bad)?,
                _ => {
                    let wire = protobuf_error::wire_type(tag).ok_or_else(|| {
                        ShimError::Options(format!("{RUNTIME_OPTIONS_TYPE}: bad tag {tag}"))
                    })?;
                    is.skip_field(wire).map_err(bad)?;
                }
            }
        }
        if !body.is_empty() {
            return ShimConfig::from_json(&body, "runtime options ConfigBody");
        }
        if path.is_empty() {
            return Ok(ShimConfig::default());
        }
        let text =
            std::fs::read(&path).map_err(|e| ShimError::Options(format!("config {path}: {e}")))?;
        ShimConfig::from_json(&text, &format!("config {path}"))
    }
}

mod protobuf_error {
    use containerd_shim::protos::protobuf::rt::WireType;
    pub use containerd_shim::protos::protobuf::Error;

    pub fn wire_type(tag: u32) -> Option<WireType> {
        WireType::new(tag & 7)
    }
}

/// Refuses a store outside `roots`. The path is resolved (symlinks and all) as far as it
/// exists, so neither `..` nor a symlink under a root leads out of it; a store that does
/// not exist yet is judged by where it would be (opening it then fails on its own).
pub fn check_store(store: &Path, roots: &[PathBuf]) -> Result<()> {
    let refuse = || ShimError::StoreNotAllowed {
        store: store.to_path_buf(),
        roots: roots
            .iter()
            .map(|r| r.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    if !store.is_absolute() || store.components().any(|c| c == Component::ParentDir) {
        return Err(refuse());
    }
    let resolved = resolve_existing(store);
    let inside = roots.iter().any(|root| {
        let root = std::fs::canonicalize(root).unwrap_or_else(|_| root.clone());
        resolved.starts_with(&root)
    });
    if inside {
        Ok(())
    } else {
        Err(refuse())
    }
}

/// `path` with its longest existing prefix canonicalized.
fn resolve_existing(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut cur = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(type_url: &str, value: Vec<u8>) -> Any {
        Any {
            type_url: type_url.into(),
            value,
            ..Default::default()
        }
    }

    /// Encodes runtimeoptions.v1.Options by hand (containerd's Go type, no Rust proto).
    fn runtime_options(type_url: &str, path: &str, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, bytes) in [
            (0x0a, type_url.as_bytes()),
            (0x12, path.as_bytes()),
            (0x1a, body),
        ] {
            if bytes.is_empty() {
                continue;
            }
            out.push(tag);
            out.push(bytes.len() as u8);
            out.extend_from_slice(bytes);
        }
        out
    }

    #[test]
    fn no_options_allow_only_the_state_dirs() {
        let o = TaskOptions::parse(None).unwrap();
        assert_eq!(
            o.store_roots(Some("/srv/nc")),
            vec![
                PathBuf::from("/var/lib/nestcache"),
                PathBuf::from("/srv/nc")
            ]
        );
        assert_eq!(
            o.store_roots(Some("relative")),
            vec![PathBuf::from("/var/lib/nestcache")]
        );
    }

    #[test]
    fn the_executor_option_is_read_strictly() {
        let url = NESTCACHE_OPTIONS_TYPE;
        let got = TaskOptions::parse(Some(&any(url, br#"{"executor":"runc"}"#.to_vec()))).unwrap();
        assert_eq!(got.config.executor, Some(Executor::Runc));
        let err =
            TaskOptions::parse(Some(&any(url, br#"{"executor":"youki"}"#.to_vec()))).unwrap_err();
        assert!(matches!(err, ShimError::Options(_)), "{err}");
        assert!(err.to_string().contains("runc-direct"), "{err}");
    }

    #[test]
    fn runc_options_are_read() {
        let mut o = api::Options::new();
        o.binary_name = "crun".into();
        o.root = "/run/x".into();
        o.systemd_cgroup = true;
        let any = any("containerd.runc.v1.Options", o.write_to_bytes().unwrap());
        let got = TaskOptions::parse(Some(&any)).unwrap();
        assert_eq!(got.runc_binary.as_deref(), Some("crun"));
        assert_eq!(got.runc_root, Some(PathBuf::from("/run/x")));
        assert!(got.systemd_cgroup);
    }

    #[test]
    fn cri_runtime_options_name_a_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shim.json");
        std::fs::write(&file, r#"{"store_roots": ["/data/stores"]}"#).unwrap();
        let value = runtime_options("", file.to_str().unwrap(), b"");
        let got = TaskOptions::parse(Some(&any("runtimeoptions.v1.Options", value))).unwrap();
        assert_eq!(got.store_roots(None), vec![PathBuf::from("/data/stores")]);
    }

    #[test]
    fn a_config_body_and_the_inline_form_work_too() {
        let body = br#"{"store_roots": ["/a"]}"#;
        let value = runtime_options("x", "", body);
        let got = TaskOptions::parse(Some(&any("runtimeoptions.v1.Options", value))).unwrap();
        assert_eq!(got.store_roots(None), vec![PathBuf::from("/a")]);
        let inline = any("io.nestcache.shim.v1.Options", body.to_vec());
        let got = TaskOptions::parse(Some(&inline)).unwrap();
        assert_eq!(got.store_roots(None), vec![PathBuf::from("/a")]);
    }

    #[test]
    fn broken_options_fail_with_what_was_wrong() {
        let cases = [
            any(
                "io.nestcache.shim.v1.Options",
                b"{\"store_roots\": [\"rel\"]}".to_vec(),
            ),
            any(
                "io.nestcache.shim.v1.Options",
                b"{\"store_rots\": []}".to_vec(),
            ),
            any("io.nestcache.shim.v1.Options", b"not json".to_vec()),
            any(
                "runtimeoptions.v1.Options",
                runtime_options("", "/nonexistent/shim.json", b""),
            ),
            any("runtimeoptions.v1.Options", vec![0x12, 0x7f]),
        ];
        for a in cases {
            let e = TaskOptions::parse(Some(&a)).unwrap_err();
            assert!(matches!(e, ShimError::Options(_)), "{a:?}: {e}");
        }
    }

    #[test]
    fn unknown_option_types_are_ignored() {
        let got = TaskOptions::parse(Some(&any("example.com/Other", vec![1, 2]))).unwrap();
        assert_eq!(got, TaskOptions::default());
    }

    #[test]
    fn stores_outside_the_roots_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("store")).unwrap();
        std::fs::create_dir_all(dir.path().join("outside")).unwrap();
        std::fs::create_dir_all(dir.path().join("root2")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside"), root.join("link")).unwrap();
        let roots = vec![root.clone()];
        check_store(&root.join("store"), &roots).unwrap();
        check_store(&root.join("not-yet/store"), &roots).unwrap();
        for bad in [
            dir.path().join("outside"),
            dir.path().join("root2"),
            root.join("link"),
            root.join("link/deeper"),
            root.join("store/../../outside"),
            PathBuf::from("/etc"),
            PathBuf::from("relative"),
        ] {
            let e = check_store(&bad, &roots).unwrap_err();
            assert!(
                matches!(&e, ShimError::StoreNotAllowed { store, .. } if *store == bad),
                "{}: {e}",
                bad.display()
            );
        }
    }
}

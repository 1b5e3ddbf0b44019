//! The runtime entry in containerd's config.toml, edited with `toml_edit` so the
//! operator's comments, order and formatting survive: added once (idempotent), removed
//! again on uninstall, and refused when a `nestcache` runtime of someone else is there.
//!
//! Layouts (containerd's `version` key):
//! - 2 (containerd 1.6/1.7): `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME]`
//! - 3 (containerd 2.x):     `[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.NAME]`
//!
//! Version 1 (no `version` key, `[plugins.cri]`) is refused: containerd itself converts it
//! with `containerd config migrate`.

use toml_edit::{value, Array, DocumentMut, Item, Table};

use super::NodeError;
use crate::containerd::labels::NESTCACHE_RUNTIME;

/// The runtime name pods select through the RuntimeClass handler.
pub const RUNTIME_NAME: &str = "nestcache";
/// Pod annotations CRI passes to the containers' OCI specs (the shim reads them).
pub const POD_ANNOTATIONS: &str = "io.nestcache.*";
/// The key of the runtime's options table that names the shim's config file.
const SHIM_CONFIG_KEY: &str = "ConfigPath";
const MARK: &str = "# Added by `nestcache node install`; `nestcache node uninstall` removes it.\n";

/// Which layout a config uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Layout {
    V2,
    V3,
}

impl Layout {
    fn cri_plugin(self) -> &'static str {
        match self {
            Layout::V2 => "io.containerd.grpc.v1.cri",
            Layout::V3 => "io.containerd.cri.v1.runtime",
        }
    }

    pub fn version(self) -> i64 {
        match self {
            Layout::V2 => 2,
            Layout::V3 => 3,
        }
    }

    /// The table path of runtime `name` in this layout.
    fn runtime_path(self, name: &str) -> [&str; 5] {
        ["plugins", self.cri_plugin(), "containerd", "runtimes", name]
    }
}

/// A parsed config.toml, ready to be edited and written back byte-faithfully.
pub struct Config {
    doc: DocumentMut,
    layout: Layout,
    file: String,
}

impl Config {
    /// Parses `text` (from `file`, for messages). An empty text is a config with only
    /// containerd's defaults, of version `default` (containerd with no config file).
    pub fn parse(file: &str, text: &str, default: Layout) -> Result<Config, NodeError> {
        let mut doc: DocumentMut =
            text.parse()
                .map_err(|e: toml_edit::TomlError| NodeError::ConfigParse {
                    file: file.to_string(),
                    message: e.to_string().replace('\n', " "),
                })?;
        let layout = if text.trim().is_empty() {
            doc.insert("version", value(default.version()));
            default
        } else {
            match doc.get("version").and_then(Item::as_integer) {
                Some(2) => Layout::V2,
                Some(3) => Layout::V3,
                other => {
                    return Err(NodeError::ConfigVersion {
                        file: file.to_string(),
                        found: other.map_or("none (version 1)".into(), |v| v.to_string()),
                    })
                }
            }
        };
        Ok(Config {
            doc,
            layout,
            file: file.to_string(),
        })
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// The runtime table of `name`, if the config has one.
    fn runtime(&self, name: &str) -> Option<&Table> {
        let mut item = self.doc.as_item();
        for key in self.layout.runtime_path(name) {
            item = item.get(key)?;
        }
        item.as_table()
    }

    /// Whether runtime `nestcache` is there and is ours.
    pub fn has_runtime(&self) -> bool {
        self.runtime(RUNTIME_NAME)
            .and_then(|t| t.get("runtime_type"))
            .and_then(Item::as_str)
            == Some(NESTCACHE_RUNTIME)
    }

    /// Adds runtime `nestcache`. Returns false when it was there already (nothing
    /// changed); a `nestcache` runtime of another type is an error, never overwritten.
    pub fn add_runtime(&mut self) -> Result<bool, NodeError> {
        if let Some(t) = self.runtime(RUNTIME_NAME) {
            let ty = t.get("runtime_type").and_then(Item::as_str).unwrap_or("");
            if ty != NESTCACHE_RUNTIME {
                return Err(NodeError::RuntimeTaken {
                    file: self.file.clone(),
                    name: RUNTIME_NAME.into(),
                    runtime_type: ty.to_string(),
                });
            }
            return Ok(false);
        }
        let path = self.layout.runtime_path(RUNTIME_NAME);
        let parent = parent_table(self.doc.as_table_mut(), &path[..4], &self.file)?;
        let mut t = Table::new();
        t.insert("runtime_type", value(NESTCACHE_RUNTIME));
        let mut pass = Array::new();
        pass.push(POD_ANNOTATIONS);
        t.insert("pod_annotations", value(pass));
        t.decor_mut().set_prefix(format!("\n{MARK}"));
        parent.insert(RUNTIME_NAME, Item::Table(t));
        Ok(true)
    }

    /// Points runtime `nestcache`'s options at the shim's config file (`ConfigPath`, which
    /// CRI hands the shim as `runtimeoptions.v1.Options`), or with None drops that key.
    /// Call after [`Config::add_runtime`]. Returns whether anything changed.
    pub fn set_shim_config(&mut self, path: Option<&str>) -> Result<bool, NodeError> {
        let file = self.file.clone();
        let runtime_path = self.layout.runtime_path(RUNTIME_NAME);
        let runtime = parent_table(self.doc.as_table_mut(), &runtime_path, &file)?;
        let current = runtime
            .get("options")
            .and_then(|o| o.get(SHIM_CONFIG_KEY))
            .and_then(Item::as_str);
        if current == path {
            return Ok(false);
        }
        match path {
            Some(p) => {
                let options = parent_table(runtime, &["options"], &file)?;
                options.set_implicit(false);
                options.insert(SHIM_CONFIG_KEY, value(p));
            }
            None => {
                remove_and_prune(runtime, &["options", SHIM_CONFIG_KEY]);
                if runtime
                    .get("options")
                    .and_then(Item::as_table)
                    .is_some_and(Table::is_empty)
                {
                    runtime.remove("options");
                }
            }
        }
        Ok(true)
    }

    /// The `ConfigPath` runtime `nestcache` names, if any.
    pub fn shim_config(&self) -> Option<&str> {
        self.runtime(RUNTIME_NAME)?
            .get("options")?
            .get(SHIM_CONFIG_KEY)?
            .as_str()
    }

    /// Removes runtime `nestcache` if it is ours. Returns whether anything changed;
    /// tables left empty by the removal (that the add created) go too.
    pub fn remove_runtime(&mut self) -> bool {
        if !self.has_runtime() {
            return false;
        }
        let path = self.layout.runtime_path(RUNTIME_NAME);
        remove_and_prune(self.doc.as_table_mut(), &path);
        true
    }

    pub fn render(&self) -> String {
        self.doc.to_string()
    }
}

/// Walks (creating implicit tables where missing) to the table at `path`.
fn parent_table<'a>(
    mut table: &'a mut Table,
    path: &[&str],
    file: &str,
) -> Result<&'a mut Table, NodeError> {
    for key in path {
        let item = table.entry(key).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = match item {
            Item::Table(t) => t,
            // An inline `{...}` or a dotted key: still a table, just written another way.
            Item::Value(toml_edit::Value::InlineTable(_)) => {
                return Err(NodeError::ConfigShape {
                    file: file.to_string(),
                    key: key.to_string(),
                    expected: "a [table], not an inline table",
                })
            }
            _ => {
                return Err(NodeError::ConfigShape {
                    file: file.to_string(),
                    key: key.to_string(),
                    expected: "a table",
                })
            }
        };
    }
    Ok(table)
}

/// Removes the key at the end of `path`, then every table on the way that became empty
/// and is implicit (has no header of its own, so nobody wrote it by hand).
fn remove_and_prune(table: &mut Table, path: &[&str]) -> bool {
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    if rest.is_empty() {
        table.remove(first);
    } else if let Some(Item::Table(child)) = table.get_mut(first) {
        remove_and_prune(child, rest);
        if child.is_empty() && child.is_implicit() {
            table.remove(first);
        }
    }
    table.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    const V2: &str = r#"version = 2
# the operator's comment
root = "/var/lib/containerd"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.9"   # pinned

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = true
"#;

    const V3: &str = r#"version = 3
[plugins.'io.containerd.cri.v1.runtime'.containerd]
  default_runtime_name = 'runc'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = 'io.containerd.runc.v2'
"#;

    fn reparsed(c: &Config) -> toml_edit::DocumentMut {
        c.render().parse().unwrap()
    }

    #[test]
    fn v2_add_keeps_everything_else_byte_for_byte() {
        let mut c = Config::parse("c.toml", V2, Layout::V2).unwrap();
        assert_eq!(c.layout(), Layout::V2);
        assert!(c.add_runtime().unwrap());
        let out = c.render();
        assert!(
            out.starts_with(V2),
            "the original text is kept as is:\n{out}"
        );
        let doc = reparsed(&c);
        let rt =
            &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nestcache"];
        assert_eq!(rt["runtime_type"].as_str(), Some(NESTCACHE_RUNTIME));
        assert_eq!(rt["pod_annotations"][0].as_str(), Some(POD_ANNOTATIONS));
        assert!(c.has_runtime());
    }

    #[test]
    fn add_is_idempotent_and_remove_restores_the_original() {
        let mut c = Config::parse("c.toml", V2, Layout::V2).unwrap();
        assert!(c.add_runtime().unwrap());
        let once = c.render();
        let mut again = Config::parse("c.toml", &once, Layout::V2).unwrap();
        assert!(!again.add_runtime().unwrap(), "second add changes nothing");
        assert_eq!(again.render(), once);
        assert!(again.remove_runtime());
        assert_eq!(again.render().trim_end(), V2.trim_end());
        assert!(!again.remove_runtime(), "second remove changes nothing");
    }

    #[test]
    fn v3_uses_the_cri_runtime_plugin() {
        let mut c = Config::parse("c.toml", V3, Layout::V2).unwrap();
        assert_eq!(c.layout(), Layout::V3);
        assert!(c.add_runtime().unwrap());
        let doc = reparsed(&c);
        let rt =
            &doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["nestcache"];
        assert_eq!(rt["runtime_type"].as_str(), Some(NESTCACHE_RUNTIME));
        assert!(doc["plugins"].get("io.containerd.grpc.v1.cri").is_none());
        assert_eq!(
            doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["default_runtime_name"]
                .as_str(),
            Some("runc")
        );
        assert!(c.remove_runtime());
        assert_eq!(c.render().trim_end(), V3.trim_end());
    }

    #[test]
    fn empty_config_gets_the_default_version_and_no_empty_headers() {
        let mut c = Config::parse("c.toml", "", Layout::V2).unwrap();
        c.add_runtime().unwrap();
        let out = c.render();
        assert!(out.starts_with("version = 2\n"), "{out}");
        assert!(
            !out.contains("[plugins]\n"),
            "implicit parents get no header: {out}"
        );
        assert!(c.remove_runtime());
        assert_eq!(c.render().trim(), "version = 2");
    }

    #[test]
    fn version_1_and_garbage_are_refused() {
        let e = Config::parse("c.toml", "[plugins.cri]\n", Layout::V2)
            .err()
            .unwrap();
        assert!(matches!(e, NodeError::ConfigVersion { .. }), "{e}");
        assert!(e.to_string().contains("containerd config migrate"), "{e}");
        let e = Config::parse("c.toml", "version = 2\n[plugins\n", Layout::V2)
            .err()
            .unwrap();
        assert!(matches!(e, NodeError::ConfigParse { .. }), "{e}");
        let e = Config::parse("c.toml", "version = \"2\"\n", Layout::V2)
            .err()
            .unwrap();
        assert!(matches!(e, NodeError::ConfigVersion { .. }), "{e}");
    }

    #[test]
    fn someone_elses_nestcache_runtime_is_not_overwritten() {
        let text = format!("{V2}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nestcache]\n  runtime_type = \"io.containerd.kata.v2\"\n");
        let mut c = Config::parse("c.toml", &text, Layout::V2).unwrap();
        let e = c.add_runtime().unwrap_err();
        assert!(matches!(e, NodeError::RuntimeTaken { .. }), "{e}");
        assert!(!c.remove_runtime(), "not ours: left alone");
        assert_eq!(c.render(), text);
    }

    #[test]
    fn shim_config_path_is_set_changed_and_dropped() {
        let mut c = Config::parse("c.toml", V2, Layout::V2).unwrap();
        c.add_runtime().unwrap();
        assert!(!c.set_shim_config(None).unwrap(), "none to drop");
        assert!(c.set_shim_config(Some("/etc/nestcache/shim.json")).unwrap());
        assert!(!c.set_shim_config(Some("/etc/nestcache/shim.json")).unwrap());
        let doc = reparsed(&c);
        let rt =
            &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nestcache"];
        assert_eq!(
            rt["options"]["ConfigPath"].as_str(),
            Some("/etc/nestcache/shim.json")
        );
        assert_eq!(c.shim_config(), Some("/etc/nestcache/shim.json"));
        assert!(c.set_shim_config(Some("/other.json")).unwrap());
        assert_eq!(c.shim_config(), Some("/other.json"));
        assert!(c.set_shim_config(None).unwrap());
        assert!(
            reparsed(&c)["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
                ["nestcache"]
                .get("options")
                .is_none()
        );
        c.set_shim_config(Some("/x.json")).unwrap();
        assert!(c.remove_runtime());
        assert_eq!(c.render().trim_end(), V2.trim_end(), "options go with it");
    }

    #[test]
    fn a_non_table_on_the_path_is_refused() {
        let text = "version = 2\n[plugins]\n\"io.containerd.grpc.v1.cri\" = 5\n";
        let mut c = Config::parse("c.toml", text, Layout::V2).unwrap();
        let e = c.add_runtime().unwrap_err();
        assert!(matches!(e, NodeError::ConfigShape { .. }), "{e}");
    }
}

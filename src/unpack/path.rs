//! Entry names from a tar header, reduced to plain components relative to the layer root.
//! Anything that could reach outside the root (`..`, an absolute path) is refused here,
//! before any filesystem call; symlinks are dealt with by the tree walker.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// A path inside a layer: non-empty list of normal components (possibly empty for the
/// root itself, which tars write as `./`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelPath {
    parts: Vec<OsString>,
}

impl RelPath {
    /// Cleans a tar entry name: drops `.` components and trailing slashes, refuses `..`
    /// anywhere (even where it would stay inside: a tar has no business writing it), an
    /// absolute path, or a NUL byte.
    pub fn parse(name: &Path) -> Result<Self, &'static str> {
        if name.as_os_str().as_bytes().contains(&0) {
            return Err("contains a NUL byte");
        }
        let mut parts = Vec::new();
        for c in name.components() {
            match c {
                Component::Normal(p) => parts.push(p.to_os_string()),
                Component::CurDir => {}
                Component::ParentDir => return Err("has a '..' component"),
                Component::RootDir | Component::Prefix(_) => return Err("is an absolute path"),
            }
        }
        Ok(RelPath { parts })
    }

    pub fn from_parts(parts: Vec<OsString>) -> Self {
        RelPath { parts }
    }

    pub fn is_root(&self) -> bool {
        self.parts.is_empty()
    }

    /// The parent's components and the last one; `None` for the root.
    pub fn split_last(&self) -> Option<(&[OsString], &OsStr)> {
        let (last, parent) = self.parts.split_last()?;
        Some((parent, last.as_os_str()))
    }

    pub fn parts(&self) -> &[OsString] {
        &self.parts
    }

    pub fn to_path(&self) -> PathBuf {
        self.parts.iter().collect()
    }

    /// The same path with its last component replaced (used for whiteouts).
    pub fn with_last(&self, last: &OsStr) -> RelPath {
        let mut parts = self.parts.clone();
        if let Some(l) = parts.last_mut() {
            *l = last.to_os_string();
        }
        RelPath { parts }
    }

    /// The parent directory (the root stays the root).
    pub fn parent(&self) -> RelPath {
        let mut parts = self.parts.clone();
        parts.pop();
        RelPath { parts }
    }
}

impl std::fmt::Display for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.parts.is_empty() {
            return f.write_str(".");
        }
        write!(f, "{}", self.to_path().display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Vec<String> {
        RelPath::parse(Path::new(s))
            .unwrap()
            .parts()
            .iter()
            .map(|p| p.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn cleans_harmless_forms() {
        assert_eq!(ok("a/b/c"), ["a", "b", "c"]);
        assert_eq!(ok("./a/./b/"), ["a", "b"]);
        assert_eq!(ok("a//b"), ["a", "b"]);
        assert!(ok("./").is_empty());
        assert!(ok(".").is_empty());
    }

    #[test]
    fn refuses_escapes() {
        for bad in ["../x", "a/../../x", "a/..", "/etc/passwd", "/", "./../x"] {
            assert!(RelPath::parse(Path::new(bad)).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn splits_and_replaces() {
        let p = RelPath::parse(Path::new("a/b/.wh.c")).unwrap();
        let (parent, last) = p.split_last().unwrap();
        assert_eq!(parent.len(), 2);
        assert_eq!(last, "\u{2e}wh.c");
        assert_eq!(
            p.with_last(OsStr::new("c")).to_path(),
            PathBuf::from("a/b/c")
        );
        assert_eq!(p.parent().to_path(), PathBuf::from("a/b"));
        assert!(RelPath::parse(Path::new("./"))
            .unwrap()
            .split_last()
            .is_none());
    }
}

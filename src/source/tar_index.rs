//! An index of a tar file's entries built in one pass over the headers (data is seeked
//! over, not read), so that blobs can then be read by offset, several at once, straight
//! out of the archive: nothing is extracted to a temp dir.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use tar::EntryType;

use crate::error::{Error, IoContext, Result};

/// Where one entry's data lies.
#[derive(Debug, Clone)]
struct TarEntry {
    offset: u64,
    size: u64,
    kind: EntryType,
}

#[derive(Debug)]
pub struct TarIndex {
    path: PathBuf,
    entries: HashMap<String, TarEntry>,
}

impl TarIndex {
    /// Reads every header of the tar at `path`. Refuses compressed files (they cannot be
    /// read by offset), entry names with `..` or absolute paths, duplicate names, and
    /// entries whose data would lie past the end of the file (a truncated archive).
    pub fn build(path: &Path) -> Result<TarIndex> {
        let mut file = File::open(path).ctx(|| format!("open archive {}", path.display()))?;
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        refuse_compressed(&mut file, path)?;
        // The tar crate's parse errors quote raw header bytes: keep them out of the line.
        let bad = |e: std::io::Error| match e.kind() {
            std::io::ErrorKind::InvalidData | std::io::ErrorKind::Other => Error::Invalid(format!(
                "{}: not a tar archive, or a corrupt or truncated one (bad entry header)",
                path.display()
            )),
            _ => Error::io(format!("read archive {}", path.display()), e),
        };
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        for entry in archive.entries_with_seek().map_err(bad)? {
            let entry = entry.map_err(bad)?;
            let raw = entry.path_bytes().into_owned();
            let name = normalize_name(path, &raw)?;
            let kind = entry.header().entry_type();
            if kind.is_dir() || name.is_empty() {
                continue;
            }
            let size = entry.size();
            let offset = entry.raw_file_position();
            if offset.checked_add(size).map_or(true, |end| end > len) {
                return Err(Error::Invalid(format!(
                    "{}: truncated archive: entry {name:?} needs {size} bytes at offset {offset} but the file has {len}",
                    path.display()
                )));
            }
            let e = TarEntry { offset, size, kind };
            if entries.insert(name.clone(), e).is_some() {
                return Err(Error::Invalid(format!(
                    "{}: entry {name:?} appears twice: refusing an ambiguous archive",
                    path.display()
                )));
            }
        }
        Ok(TarIndex {
            path: path.to_path_buf(),
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The size of a regular-file entry.
    pub fn size(&self, name: &str) -> Result<u64> {
        Ok(self.regular(name)?.size)
    }

    /// A stream of a regular-file entry's bytes, on its own file handle.
    pub fn open(&self, name: &str) -> Result<Box<dyn Read + Send>> {
        self.open_at(name, 0)
    }

    /// The entry's bytes from byte `from` on (nothing when it is shorter).
    pub fn open_at(&self, name: &str, from: u64) -> Result<Box<dyn Read + Send>> {
        let e = self.regular(name)?;
        let from = from.min(e.size);
        let mut f =
            File::open(&self.path).ctx(|| format!("open archive {}", self.path.display()))?;
        f.seek(SeekFrom::Start(e.offset + from))
            .ctx(|| format!("seek in {}", self.path.display()))?;
        Ok(Box::new(f.take(e.size - from)))
    }

    /// Reads a small entry whole, refusing one larger than `limit`.
    pub fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>> {
        let size = self.size(name)?;
        if size > limit {
            return Err(Error::Invalid(format!(
                "{}: {name} is {size} bytes, more than the {limit} allowed",
                self.path.display()
            )));
        }
        let mut buf = Vec::with_capacity(size as usize);
        self.open(name)?
            .read_to_end(&mut buf)
            .ctx(|| format!("read {name} in {}", self.path.display()))?;
        Ok(buf)
    }

    fn regular(&self, name: &str) -> Result<&TarEntry> {
        let e = self.entries.get(name).ok_or_else(|| {
            Error::NotFound(format!(
                "{}: no entry {name:?} in the archive",
                self.path.display()
            ))
        })?;
        match e.kind {
            EntryType::Regular | EntryType::Continuous => Ok(e),
            EntryType::Symlink | EntryType::Link => Err(Error::Invalid(format!(
                "{}: entry {name:?} is a link, not a file: refusing to follow it",
                self.path.display()
            ))),
            other => Err(Error::Invalid(format!(
                "{}: entry {name:?} is not a regular file ({other:?})",
                self.path.display()
            ))),
        }
    }
}

/// `./a/b` → `a/b`; `..` anywhere or an absolute path refuses the whole archive.
fn normalize_name(archive: &Path, raw: &[u8]) -> Result<String> {
    let s = std::str::from_utf8(raw).map_err(|_| {
        Error::Invalid(format!(
            "{}: entry name {:?} is not UTF-8",
            archive.display(),
            String::from_utf8_lossy(raw)
        ))
    })?;
    let mut parts = Vec::new();
    for c in Path::new(s).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(Error::UnsafePath {
                    layer: archive.display().to_string(),
                    entry: PathBuf::from(s),
                    why: "leaves the archive (.. or absolute path)".into(),
                })
            }
        }
    }
    Ok(parts.join("/"))
}

fn refuse_compressed(file: &mut File, path: &Path) -> Result<()> {
    let mut magic = [0u8; 4];
    let n = file
        .read(&mut magic)
        .ctx(|| format!("read {}", path.display()))?;
    file.seek(SeekFrom::Start(0))
        .ctx(|| format!("seek in {}", path.display()))?;
    let kind = match &magic[..n] {
        [0x1f, 0x8b, ..] => Some("gzip"),
        [0x28, 0xb5, 0x2f, 0xfd] => Some("zstd"),
        _ => None,
    };
    match kind {
        Some(k) => Err(Error::Invalid(format!(
            "{}: archive is {k}-compressed; decompress it first (archives are read by offset)",
            path.display()
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(entries: &[(&str, &[u8])]) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut b = tar::Builder::new(f.reopen().unwrap());
        for (name, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(EntryType::Regular);
            // set_path refuses "..": write the raw name to simulate a hostile archive.
            let gnu = h.as_gnu_mut().unwrap();
            gnu.name[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.finish().unwrap();
        f
    }

    #[test]
    fn indexes_and_reads_by_offset() {
        let f = tar_with(&[("./a", b"hello"), ("b/c", b"world!")]);
        let idx = TarIndex::build(f.path()).unwrap();
        let mut s = String::new();
        idx.open("b/c").unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "world!");
        assert_eq!(idx.size("a").unwrap(), 5);
        assert!(idx.open("nope").is_err());
    }

    #[test]
    fn refuses_dotdot_and_truncation() {
        let f = tar_with(&[("blobs/../../etc/x", b"x")]);
        let err = TarIndex::build(f.path()).unwrap_err().to_string();
        assert!(err.contains("leaves the archive"), "{err}");

        let f = tar_with(&[("a", &[7u8; 4000])]);
        let full = std::fs::read(f.path()).unwrap();
        std::fs::write(f.path(), &full[..2048]).unwrap();
        let err = TarIndex::build(f.path()).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}

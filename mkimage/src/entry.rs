//! One tar entry as mkimage describes it, and how it is written: GNU headers (long names
//! via the tar crate), fixed mtime, numeric owners only, xattrs as PAX `SCHILY.xattr.*`
//! records. Entries are written in the order given; layers sort them first.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use tar::{Builder, EntryType, Header};

use crate::content::Content;

/// Every entry's mtime: 2023-11-14T22:13:20Z. Fixed so digests never change.
pub const MTIME: u64 = 1_700_000_000;

#[derive(Clone, Debug)]
pub enum Data {
    Bytes(Vec<u8>),
    /// A file copied from the host (e.g. /bin/busybox); its size is read when written.
    Host(PathBuf),
    /// `len` seeded pseudo-random bytes (see [`Content`]).
    Generated {
        seed: u64,
        len: u64,
    },
}

#[derive(Clone, Debug)]
pub enum Kind {
    Dir,
    File(Data),
    Symlink(String),
    /// A hardlink to another path of the image (in this layer or a lower one).
    Hardlink(String),
    Fifo,
    CharDevice(u32, u32),
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// Relative path without a leading `/` (e.g. `bin/sh`), no trailing slash.
    pub path: String,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    fn new(path: &str, kind: Kind, mode: u32) -> Self {
        Entry {
            path: path
                .trim_start_matches('/')
                .trim_end_matches('/')
                .to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            xattrs: Vec::new(),
        }
    }

    pub fn dir(path: &str, mode: u32) -> Self {
        Self::new(path, Kind::Dir, mode)
    }

    pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Self {
        Self::new(path, Kind::File(Data::Bytes(data.into())), mode)
    }

    pub fn generated(path: &str, mode: u32, seed: u64, len: u64) -> Self {
        Self::new(path, Kind::File(Data::Generated { seed, len }), mode)
    }

    pub fn host(path: &str, mode: u32, host: impl Into<PathBuf>) -> Self {
        Self::new(path, Kind::File(Data::Host(host.into())), mode)
    }

    pub fn symlink(path: &str, target: &str) -> Self {
        Self::new(path, Kind::Symlink(target.to_string()), 0o777)
    }

    /// `target` is an image path, written without the leading `/` as tar expects.
    pub fn hardlink(path: &str, target: &str) -> Self {
        Self::new(
            path,
            Kind::Hardlink(target.trim_start_matches('/').to_string()),
            0o644,
        )
    }

    pub fn fifo(path: &str, mode: u32) -> Self {
        Self::new(path, Kind::Fifo, mode)
    }

    pub fn char_device(path: &str, mode: u32, major: u32, minor: u32) -> Self {
        Self::new(path, Kind::CharDevice(major, minor), mode)
    }

    pub fn owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn xattr(mut self, name: &str, value: &[u8]) -> Self {
        self.xattrs.push((name.to_string(), value.to_vec()));
        self
    }

    /// Bytes of regular-file content this entry adds to the layer.
    pub fn content_len(&self) -> u64 {
        match &self.kind {
            Kind::File(Data::Bytes(b)) => b.len() as u64,
            Kind::File(Data::Generated { len, .. }) => *len,
            Kind::File(Data::Host(p)) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
            _ => 0,
        }
    }
}

/// Writes `entry` into the archive.
pub fn append<W: Write>(b: &mut Builder<W>, entry: &Entry) -> io::Result<()> {
    if !entry.xattrs.is_empty() {
        append_pax_xattrs(b, entry)?;
    }
    let mut h = Header::new_gnu();
    h.set_mode(entry.mode);
    h.set_uid(entry.uid);
    h.set_gid(entry.gid);
    h.set_mtime(MTIME);
    h.set_size(0);
    let path = match entry.kind {
        Kind::Dir => format!("{}/", entry.path),
        _ => entry.path.clone(),
    };
    match &entry.kind {
        Kind::Dir => {
            h.set_entry_type(EntryType::Directory);
            b.append_data(&mut h, &path, io::empty())
        }
        Kind::File(data) => {
            h.set_entry_type(EntryType::Regular);
            let reader: Box<dyn Read> = match data {
                Data::Bytes(v) => Box::new(io::Cursor::new(v.clone())),
                Data::Generated { seed, len } => Box::new(Content::new(*seed, *len)),
                Data::Host(p) => {
                    let f = File::open(p)
                        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
                    Box::new(f)
                }
            };
            h.set_size(entry.content_len());
            b.append_data(&mut h, &path, reader)
        }
        Kind::Symlink(target) => {
            h.set_entry_type(EntryType::Symlink);
            b.append_link(&mut h, &path, target)
        }
        Kind::Hardlink(target) => {
            h.set_entry_type(EntryType::Link);
            b.append_link(&mut h, &path, target)
        }
        Kind::Fifo => {
            h.set_entry_type(EntryType::Fifo);
            b.append_data(&mut h, &path, io::empty())
        }
        Kind::CharDevice(major, minor) => {
            h.set_entry_type(EntryType::Char);
            h.set_device_major(*major)?;
            h.set_device_minor(*minor)?;
            b.append_data(&mut h, &path, io::empty())
        }
    }
}

/// A PAX extended header ('x') carrying `SCHILY.xattr.<name>=<value>` records, as GNU tar
/// and the Go archive/tar writer (Docker, containerd, buildkit) emit them.
fn append_pax_xattrs<W: Write>(b: &mut Builder<W>, entry: &Entry) -> io::Result<()> {
    let mut body = Vec::new();
    for (name, value) in &entry.xattrs {
        let mut rec = format!(" SCHILY.xattr.{name}=").into_bytes();
        rec.extend_from_slice(value);
        rec.push(b'\n');
        // The length prefix counts itself: find the fixed point.
        let mut len = rec.len() + 1;
        while len.to_string().len() + rec.len() != len {
            len = len.to_string().len() + rec.len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.extend_from_slice(&rec);
    }
    let mut h = Header::new_ustar();
    h.set_entry_type(EntryType::XHeader);
    h.set_mode(0o644);
    h.set_mtime(MTIME);
    h.set_size(body.len() as u64);
    let base = entry.path.rsplit('/').next().unwrap_or("x");
    let name = format!("PaxHeaders.0/{}", &base[..base.len().min(80)]);
    h.set_path(&name)?;
    h.set_cksum();
    b.append(&h, body.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_through_the_tar_crate() {
        let mut b = Builder::new(Vec::new());
        let e = Entry::file("opt/x.txt", 0o644, b"hi".to_vec())
            .xattr("user.one", b"1")
            .xattr("user.longer-name", b"value with spaces");
        append(&mut b, &e).unwrap();
        let data = b.into_inner().unwrap();
        let mut ar = tar::Archive::new(data.as_slice());
        let mut entries = ar.entries().unwrap();
        let mut ent = entries.next().unwrap().unwrap();
        let exts: Vec<(String, Vec<u8>)> = ent
            .pax_extensions()
            .unwrap()
            .unwrap()
            .map(|x| {
                let x = x.unwrap();
                (x.key().unwrap().to_string(), x.value_bytes().to_vec())
            })
            .collect();
        assert_eq!(
            exts,
            vec![
                ("SCHILY.xattr.user.one".to_string(), b"1".to_vec()),
                (
                    "SCHILY.xattr.user.longer-name".to_string(),
                    b"value with spaces".to_vec()
                ),
            ]
        );
        assert_eq!(ent.path().unwrap().to_str(), Some("opt/x.txt"));
        let mut s = String::new();
        ent.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hi");
    }
}

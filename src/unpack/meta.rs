//! An entry's metadata from its tar header and PAX records (owner, mode, mtime with
//! nanoseconds, `SCHILY.xattr.*`).

use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;

use nix::sys::time::TimeSpec;

use super::error::{Fail, Res};

/// Metadata of one entry, from its header and PAX records.
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: TimeSpec,
    pub(super) xattrs: Vec<(OsString, Vec<u8>)>,
}

pub(super) fn read_meta<R: Read>(e: &mut tar::Entry<R>) -> Res<Meta> {
    let h = e.header();
    let bad = |what: &str, err: io::Error| Fail::Invalid(format!("bad {what} in header: {err}"));
    let old = h.as_old();
    let mode =
        lenient(h.mode().map(u64::from), &old.mode).map_err(|e| bad("mode", e))? as u32 & 0o7777;
    let uid = lenient(h.uid(), &old.uid).map_err(|e| bad("uid", e))?;
    let gid = lenient(h.gid(), &old.gid).map_err(|e| bad("gid", e))?;
    let uid = u32::try_from(uid).map_err(|_| Fail::Invalid(format!("uid {uid} out of range")))?;
    let gid = u32::try_from(gid).map_err(|_| Fail::Invalid(format!("gid {gid} out of range")))?;
    let secs = lenient(h.mtime(), &old.mtime).map_err(|e| bad("mtime", e))?;
    let mut mtime = TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0);
    let mut xattrs = Vec::new();
    if let Some(exts) = e.pax_extensions().map_err(Fail::Stream)? {
        for ext in exts {
            let ext = ext.map_err(|err| Fail::Invalid(format!("bad PAX record: {err}")))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                if name.starts_with(b"trusted.overlay.") {
                    tracing::warn!(
                        "ignoring overlayfs xattr {:?} from a layer",
                        OsStr::from_bytes(name)
                    );
                    continue;
                }
                // POSIX pax: a record with an empty value deletes the keyword (Go's
                // archive/tar, hence umoci and Docker, drop it too).
                if ext.value_bytes().is_empty() {
                    continue;
                }
                xattrs.push((
                    OsStr::from_bytes(name).to_os_string(),
                    ext.value_bytes().to_vec(),
                ));
            } else if key == b"mtime" {
                if let Some(t) = ext.value().ok().and_then(parse_pax_time) {
                    mtime = t;
                }
            }
        }
    }
    Ok(Meta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// An empty numeric field (all NULs or spaces) reads as 0, as Go's archive/tar (Docker,
/// containerd, umoci) reads it; the tar crate refuses it.
fn lenient(parsed: io::Result<u64>, raw: &[u8]) -> io::Result<u64> {
    match parsed {
        Err(_) if raw.iter().all(|&b| b == 0 || b == b' ') => Ok(0),
        other => other,
    }
}

/// PAX times are decimal seconds with an optional fraction: `1700000000.5`, `-1.25`.
fn parse_pax_time(s: &str) -> Option<TimeSpec> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let negative = int.starts_with('-');
    let secs: i64 = int.parse().ok()?;
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = frac.chars().chain(std::iter::repeat('0')).take(9).collect();
    let nanos: i64 = digits.parse().ok()?;
    Some(if negative && nanos > 0 {
        TimeSpec::new(secs - 1, 1_000_000_000 - nanos)
    } else {
        TimeSpec::new(secs, nanos)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_numeric_fields_read_as_zero() {
        let bad = || io::Error::other("not a number");
        assert_eq!(lenient(Err(bad()), &[0; 8]).unwrap(), 0);
        assert_eq!(lenient(Err(bad()), b"        ").unwrap(), 0);
        assert!(lenient(Err(bad()), b"12x\0\0\0\0\0").is_err());
        assert_eq!(lenient(Ok(7), b"0000007\0").unwrap(), 7);
    }

    #[test]
    fn pax_times() {
        let t = parse_pax_time("1700000000.5").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1_700_000_000, 500_000_000));
        let t = parse_pax_time("12").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (12, 0));
        let t = parse_pax_time("-1.25").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (-2, 750_000_000));
        assert!(parse_pax_time("1.x").is_none());
    }
}

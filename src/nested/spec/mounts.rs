//! `--tmpfs` and `--mount type=bind|tmpfs|volume,...`, parsed as `docker run` parses them.
//! Named volumes are resolved to their directories by [`crate::nested::volumes`].

use std::path::PathBuf;

use super::resources::parse_bytes;
use super::{container_path, Volume};
use crate::error::{Error, Result};
use crate::nested::volumes::{is_volume_name, validate_name, VolumeRequest};

/// Docker's options for every tmpfs it mounts, before the user's.
const TMPFS_DEFAULTS: [&str; 3] = ["noexec", "nosuid", "nodev"];

/// A tmpfs at `target` with mount options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tmpfs {
    pub target: PathBuf,
    pub options: Vec<String>,
}

/// `--tmpfs /path[:opt,opt...]` (e.g. `/run:rw,size=64m,mode=1777,exec`).
pub fn parse_tmpfs(s: &str) -> Result<Tmpfs> {
    let (target, opts) = s.split_once(':').unwrap_or((s, ""));
    let target = container_path(target)
        .map_err(|e| Error::Invalid(format!("invalid --tmpfs {s:?}: {e}")))?;
    let user: Vec<&str> = opts.split(',').filter(|o| !o.is_empty()).collect();
    for o in &user {
        if o.contains(char::is_whitespace) {
            return Err(Error::Invalid(format!(
                "invalid --tmpfs {s:?}: option {o:?}"
            )));
        }
    }
    Ok(Tmpfs {
        target,
        options: with_defaults(&user),
    })
}

/// Docker's defaults, each dropped when the user gives its opposite (`exec`, `suid`, `dev`).
fn with_defaults(user: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = TMPFS_DEFAULTS
        .iter()
        .filter(|d| !user.contains(&&d[2..]))
        .map(|d| d.to_string())
        .collect();
    out.extend(user.iter().map(|o| o.to_string()));
    out
}

/// One `--mount`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountArg {
    Bind(Volume),
    Tmpfs(Tmpfs),
    /// A named or anonymous volume, created on first use.
    Volume(VolumeRequest),
}

/// `-v HOST:CTR[:OPTS]`, `-v NAME:CTR[:OPTS]` or `-v CTR` (an anonymous volume), OPTS
/// being `ro`, `rw` and (for volumes) `nocopy`, comma-separated, as Docker's `-v`.
pub fn parse_v(s: &str) -> Result<MountArg> {
    let bad = |why: &str| {
        Error::Invalid(format!(
            "invalid volume {s:?}: {why} (expected HOST:CTR[:ro|rw], NAME:CTR[:ro|rw|nocopy] or CTR)"
        ))
    };
    let parts: Vec<&str> = s.split(':').collect();
    let (source, ctr, opts) = match parts.as_slice() {
        [c] => (None, *c, ""),
        [h, c] => (Some(*h), *c, ""),
        [h, c, m] => (Some(*h), *c, *m),
        _ => return Err(bad("wrong number of ':'")),
    };
    let container = container_path(ctr).map_err(|e| bad(&e))?;
    let (mut read_only, mut nocopy) = (false, false);
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        match o {
            "ro" => read_only = true,
            "rw" => read_only = false,
            "nocopy" => nocopy = true,
            other => return Err(bad(&format!("unknown mode {other:?}"))),
        }
    }
    match source {
        Some(src) if !is_volume_name(src) => {
            if nocopy {
                return Err(bad("nocopy is for volumes, not host paths"));
            }
            let host = PathBuf::from(src);
            if !host.is_absolute() {
                return Err(bad("the host path must be absolute"));
            }
            Ok(MountArg::Bind(Volume {
                host,
                container,
                read_only,
            }))
        }
        name => {
            if let Some(n) = name {
                validate_name(n)?;
            }
            Ok(MountArg::Volume(VolumeRequest {
                name: name.map(str::to_string),
                target: container,
                read_only,
                nocopy,
            }))
        }
    }
}

/// `--mount type=bind|tmpfs|volume,source=…,target=…[,readonly][,tmpfs-size=…][,tmpfs-mode=…]`.
pub fn parse_mount(s: &str) -> Result<MountArg> {
    let bad = |why: String| {
        Error::Invalid(format!(
            "invalid --mount {s:?}: {why} (expected type=bind|tmpfs|volume,source=…,target=…[,readonly])"
        ))
    };
    let (mut typ, mut source, mut target, mut read_only) = ("volume", None, None, false);
    let mut nocopy = false;
    let mut tmpfs_opts: Vec<String> = Vec::new();
    for field in s.split(',').filter(|f| !f.is_empty()) {
        let (k, v) = match field.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (field, None),
        };
        match (k, v) {
            ("type", Some(t)) => typ = t,
            ("source" | "src", Some(v)) => source = Some(v),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v),
            ("readonly" | "ro", None | Some("true" | "1")) => read_only = true,
            ("readonly" | "ro", Some("false" | "0")) => read_only = false,
            ("tmpfs-size", Some(v)) => {
                tmpfs_opts.push(format!("size={}", parse_bytes("--mount tmpfs-size", v)?))
            }
            ("tmpfs-mode", Some(v)) => {
                u32::from_str_radix(v, 8)
                    .map_err(|_| bad(format!("tmpfs-mode {v:?} is not octal")))?;
                tmpfs_opts.push(format!("mode={v}"));
            }
            ("volume-nocopy", None | Some("true" | "1")) => nocopy = true,
            ("volume-nocopy", Some("false" | "0")) => nocopy = false,
            // Docker's hints that change nothing for a local mount.
            ("consistency" | "bind-propagation", _) => {}
            _ => return Err(bad(format!("unknown field {field:?}"))),
        }
    }
    let target = target.ok_or_else(|| bad("no target".into()))?;
    let target_path = container_path(target).map_err(&bad)?;
    match typ {
        "bind" => {
            let src = source.ok_or_else(|| bad("a bind mount needs a source".into()))?;
            if !src.starts_with('/') {
                return Err(bad("the bind source must be an absolute host path".into()));
            }
            Ok(MountArg::Bind(Volume {
                host: PathBuf::from(src),
                container: target_path,
                read_only,
            }))
        }
        "tmpfs" => {
            if source.is_some() {
                return Err(bad("a tmpfs has no source".into()));
            }
            if read_only {
                tmpfs_opts.push("ro".into());
            }
            let user: Vec<&str> = tmpfs_opts.iter().map(String::as_str).collect();
            Ok(MountArg::Tmpfs(Tmpfs {
                target: target_path,
                options: with_defaults(&user),
            }))
        }
        "volume" => {
            if let Some(n) = source {
                validate_name(n)?;
            }
            Ok(MountArg::Volume(VolumeRequest {
                name: source.map(str::to_string),
                target: target_path,
                read_only,
                nocopy,
            }))
        }
        other => Err(bad(format!("unknown type {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_flags() {
        let t = parse_tmpfs("/run").unwrap();
        assert_eq!(t.target, PathBuf::from("/run"));
        assert_eq!(t.options, ["noexec", "nosuid", "nodev"]);
        let t = parse_tmpfs("/tmp:exec,size=64m,mode=1777").unwrap();
        assert_eq!(
            t.options,
            ["nosuid", "nodev", "exec", "size=64m", "mode=1777"]
        );
        assert!(parse_tmpfs("rel").is_err() && parse_tmpfs("/a/../b").is_err());
    }

    #[test]
    fn mount_flags() {
        let m = parse_mount("type=bind,source=/src,target=/dst,readonly").unwrap();
        assert_eq!(
            m,
            MountArg::Bind(Volume {
                host: "/src".into(),
                container: "/dst".into(),
                read_only: true
            })
        );
        let m = parse_mount("type=tmpfs,dst=/t,tmpfs-size=1m,tmpfs-mode=700").unwrap();
        let MountArg::Tmpfs(t) = m else {
            panic!("{m:?}")
        };
        assert_eq!(
            t.options,
            ["noexec", "nosuid", "nodev", "size=1048576", "mode=700"]
        );
        let m = parse_mount("src=data,target=/data").unwrap();
        assert_eq!(
            m,
            MountArg::Volume(VolumeRequest {
                name: Some("data".into()),
                target: "/data".into(),
                read_only: false,
                nocopy: false,
            })
        );
        let m = parse_mount("type=volume,target=/anon,volume-nocopy,ro").unwrap();
        assert_eq!(
            m,
            MountArg::Volume(VolumeRequest {
                name: None,
                target: "/anon".into(),
                read_only: true,
                nocopy: true,
            })
        );
        for bad in [
            "type=bind,target=/x",
            "type=bind,source=rel,target=/x",
            "type=tmpfs,source=/a,target=/x",
            "type=volume,source=../x,target=/x",
            "type=nfs,source=a,target=/x",
            "source=a",
            "type=tmpfs,target=/x,tmpfs-mode=99z",
            "type=bind,source=/a,target=/x,bogus=1",
        ] {
            assert!(matches!(parse_mount(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn v_flags() {
        let vol = |name: Option<&str>, t: &str, ro: bool, nocopy: bool| {
            MountArg::Volume(VolumeRequest {
                name: name.map(String::from),
                target: t.into(),
                read_only: ro,
                nocopy,
            })
        };
        assert_eq!(parse_v("/data").unwrap(), vol(None, "/data", false, false));
        assert_eq!(
            parse_v("v:/d:ro,nocopy").unwrap(),
            vol(Some("v"), "/d", true, true)
        );
        assert_eq!(
            parse_v("/h:/c:ro").unwrap(),
            MountArg::Bind(Volume {
                host: "/h".into(),
                container: "/c".into(),
                read_only: true
            })
        );
        for bad in [
            "rel",
            "/h:/c:nocopy",
            "v:/c:bogus",
            "a:b:c:d",
            "v:rel",
            "-v:/c",
            "",
        ] {
            assert!(matches!(parse_v(bad), Err(Error::Invalid(_))), "{bad}");
        }
    }
}

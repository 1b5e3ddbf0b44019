//! Security flags: capabilities (`--cap-add`, `--cap-drop`), `--privileged`, `--device`,
//! `--security-opt no-new-privileges|seccomp=…|apparmor=…`, with Docker's rules.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use oci_spec::runtime::{Capability, LinuxDevice, LinuxDeviceBuilder, LinuxDeviceType};

use super::seccomp::Seccomp;
use super::{container_path, oci, DEFAULT_CAPABILITIES};
use crate::error::{Error, Result};

/// Every capability Linux defines (through 6.x), in bit order, for `--privileged` and
/// `--cap-add ALL`.
const ALL_CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// Where the kernel exposes AppArmor when it is enabled.
const APPARMOR_ENABLED: &str = "/sys/module/apparmor/parameters/enabled";

#[derive(Debug, Clone, PartialEq)]
pub struct Security {
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    /// nestcache sets no_new_privileges unless `--security-opt no-new-privileges=false`.
    pub no_new_privileges: bool,
    pub seccomp: Seccomp,
    /// `apparmor=PROFILE` (an already loaded profile); None: none.
    pub apparmor: Option<String>,
    pub devices: Vec<Device>,
}

impl Default for Security {
    fn default() -> Self {
        Security {
            privileged: false,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            no_new_privileges: true,
            seccomp: Seccomp::Default,
            apparmor: None,
            devices: Vec::new(),
        }
    }
}

impl Security {
    /// One `--security-opt` value.
    pub fn apply_opt(&mut self, opt: &str) -> Result<()> {
        let (key, value) = match opt.split_once(['=', ':']) {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        match (key, value) {
            ("no-new-privileges", None | Some("true")) => self.no_new_privileges = true,
            ("no-new-privileges", Some("false")) => self.no_new_privileges = false,
            ("seccomp", Some("unconfined")) => self.seccomp = Seccomp::Unconfined,
            ("seccomp", Some("builtin" | "default")) => self.seccomp = Seccomp::Default,
            ("seccomp", Some(path)) if !path.is_empty() => {
                self.seccomp = Seccomp::Profile(PathBuf::from(path))
            }
            ("apparmor", Some("unconfined")) => self.apparmor = None,
            ("apparmor", Some(profile)) if !profile.is_empty() => {
                if !apparmor_enabled() {
                    return Err(Error::Invalid(format!(
                        "--security-opt apparmor={profile}: AppArmor is not enabled on this host ({APPARMOR_ENABLED} absent or N)"
                    )));
                }
                self.apparmor = Some(profile.to_string());
            }
            ("label", _) => {
                return Err(Error::Invalid(format!(
                    "--security-opt {opt}: SELinux labels are not supported by nestcache"
                )))
            }
            _ => {
                return Err(Error::Invalid(format!(
                    "invalid --security-opt {opt:?}: expected no-new-privileges[=true|false], seccomp=unconfined|FILE or apparmor=PROFILE|unconfined"
                )))
            }
        }
        Ok(())
    }

    /// The capability set: containerd's defaults (all with `--privileged`), plus
    /// `--cap-add`, minus `--cap-drop`; `ALL` in either as Docker reads it.
    pub fn capabilities(&self) -> Result<Vec<Capability>> {
        // No more than nestcache holds itself: a runtime under a reduced bounding set
        // (this VM's root lacks CAP_SYS_RESOURCE) cannot grant the others.
        let bounding = own_bounding_set().unwrap_or(u64::MAX);
        let all = || {
            ALL_CAPABILITIES
                .iter()
                .enumerate()
                .filter(|(bit, _)| bounding & (1u64 << bit) != 0)
                .map(|(_, c)| parse_cap(c))
                .collect::<Result<Vec<_>>>()
        };
        if self.privileged {
            return all();
        }
        let adds = parse_caps(&self.cap_add, "--cap-add")?;
        let drops = parse_caps(&self.cap_drop, "--cap-drop")?;
        let mut caps: Vec<Capability> = match (&adds, &drops) {
            (None, _) => all()?,
            (_, None) => Vec::new(),
            _ => DEFAULT_CAPABILITIES.to_vec(),
        };
        if let Some(adds) = &adds {
            for c in adds {
                if !caps.contains(c) {
                    caps.push(*c);
                }
            }
        }
        if let Some(drops) = &drops {
            // Docker: an explicit add wins over a drop of ALL, not over a named drop.
            caps.retain(|c| !drops.contains(c));
        }
        Ok(caps)
    }

    /// The seccomp choice in effect: `--privileged` runs unconfined, as in Docker.
    pub fn effective_seccomp(&self) -> Seccomp {
        match (&self.seccomp, self.privileged) {
            (Seccomp::Default, true) => Seccomp::Unconfined,
            (s, _) => s.clone(),
        }
    }
}

/// CapBnd of this process, from /proc/self/status.
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn apparmor_enabled() -> bool {
    std::fs::read_to_string(APPARMOR_ENABLED).is_ok_and(|s| s.trim() == "Y")
}

fn parse_cap(name: &str) -> Result<Capability> {
    let upper = name.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
    Capability::from_str(bare).map_err(|_| {
        Error::Invalid(format!(
            "unknown capability {name:?} (e.g. NET_ADMIN, SYS_PTRACE, ALL)"
        ))
    })
}

/// Named capabilities; None when the list says ALL.
fn parse_caps(names: &[String], flag: &str) -> Result<Option<Vec<Capability>>> {
    let mut out = Vec::new();
    for n in names {
        for one in n.split(',').filter(|s| !s.is_empty()) {
            if one.eq_ignore_ascii_case("ALL") {
                return Ok(None);
            }
            out.push(parse_cap(one).map_err(|e| Error::Invalid(format!("{flag}: {e}")))?);
        }
    }
    Ok(Some(out))
}

/// `--device HOST[:CONTAINER][:PERMISSIONS]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub host: PathBuf,
    pub container: PathBuf,
    /// Some of `rwm`.
    pub access: String,
}

impl FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid --device {s:?}: {why} (expected HOST[:CONTAINER][:rwm])"
            ))
        };
        let is_perms = |p: &str| !p.is_empty() && p.chars().all(|c| "rwm".contains(c));
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, access) = match parts.as_slice() {
            [h] => (*h, *h, "rwm"),
            [h, p] if is_perms(p) => (*h, *h, *p),
            [h, c] => (*h, *c, "rwm"),
            [h, c, p] if is_perms(p) => (*h, *c, *p),
            _ => return Err(bad("wrong form")),
        };
        if !host.starts_with('/') {
            return Err(bad("the host path must be absolute"));
        }
        Ok(Device {
            host: PathBuf::from(host),
            container: container_path(ctr).map_err(|e| bad(&e))?,
            access: access.to_string(),
        })
    }
}

/// A host device node as the spec's `linux.devices` entry at `container`.
pub fn device_node(host: &Path, container: &Path) -> Result<LinuxDevice> {
    let meta = std::fs::metadata(host)
        .map_err(|e| Error::io(format!("--device {}", host.display()), e))?;
    let ft = meta.file_type();
    let typ = if ft.is_char_device() {
        LinuxDeviceType::C
    } else if ft.is_block_device() {
        LinuxDeviceType::B
    } else {
        return Err(Error::Invalid(format!(
            "--device {}: not a character or block device",
            host.display()
        )));
    };
    let rdev = meta.rdev();
    LinuxDeviceBuilder::default()
        .path(container)
        .typ(typ)
        .major(libc::major(rdev) as i64)
        .minor(libc::minor(rdev) as i64)
        .file_mode(meta.mode() & 0o7777)
        .uid(meta.uid())
        .gid(meta.gid())
        .build()
        .map_err(oci)
}

/// Every device node under the host's /dev, for `--privileged` (as Docker gives it),
/// skipping the per-container mounts runc makes itself.
pub fn host_devices() -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let mut dirs = vec![PathBuf::from("/dev")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                if !matches!(
                    path.to_str(),
                    Some("/dev/pts" | "/dev/shm" | "/dev/mqueue" | "/dev/.lxc" | "/dev/.udev")
                ) {
                    dirs.push(path);
                }
            } else if ft.is_char_device() || ft.is_block_device() {
                // /dev/console is set up by runc for a terminal; /dev/ptmx belongs to devpts.
                if matches!(path.to_str(), Some("/dev/console" | "/dev/ptmx")) {
                    continue;
                }
                if let Ok(d) = device_node(&path, &path) {
                    out.push(d);
                }
            }
        }
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(add: &[&str], drop: &[&str]) -> Result<Vec<Capability>> {
        Security {
            cap_add: add.iter().map(|s| s.to_string()).collect(),
            cap_drop: drop.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
        .capabilities()
    }

    #[test]
    fn capabilities_follow_dockers_rules() {
        assert_eq!(caps(&[], &[]).unwrap(), DEFAULT_CAPABILITIES.to_vec());
        let c = caps(&["net_admin", "CAP_SYS_PTRACE"], &["chown"]).unwrap();
        assert!(c.contains(&Capability::NetAdmin) && c.contains(&Capability::SysPtrace));
        assert!(!c.contains(&Capability::Chown));
        assert_eq!(
            caps(&["NET_ADMIN"], &["ALL"]).unwrap(),
            [Capability::NetAdmin]
        );
        let held = own_bounding_set().unwrap().count_ones() as usize;
        assert_eq!(caps(&["ALL"], &[]).unwrap().len(), held.min(41));
        assert!(!caps(&["ALL"], &["SYS_ADMIN"])
            .unwrap()
            .contains(&Capability::SysAdmin));
        let e = caps(&["BOGUS"], &[]).unwrap_err();
        assert!(matches!(&e, Error::Invalid(m) if m.contains("--cap-add") && m.contains("BOGUS")));
        let p = Security {
            privileged: true,
            ..Default::default()
        };
        assert_eq!(p.capabilities().unwrap().len(), held.min(41));
        assert_eq!(p.effective_seccomp(), Seccomp::Unconfined);
    }

    #[test]
    fn security_opts() {
        let mut s = Security::default();
        assert!(s.no_new_privileges);
        s.apply_opt("no-new-privileges=false").unwrap();
        assert!(!s.no_new_privileges);
        s.apply_opt("no-new-privileges").unwrap();
        assert!(s.no_new_privileges);
        s.apply_opt("seccomp=unconfined").unwrap();
        assert_eq!(s.seccomp, Seccomp::Unconfined);
        s.apply_opt("seccomp=/p.json").unwrap();
        assert_eq!(s.seccomp, Seccomp::Profile("/p.json".into()));
        s.apply_opt("apparmor=unconfined").unwrap();
        for bad in [
            "bogus",
            "seccomp=",
            "no-new-privileges=maybe",
            "label=disable",
        ] {
            assert!(matches!(s.apply_opt(bad), Err(Error::Invalid(_))), "{bad}");
        }
        if !apparmor_enabled() {
            let e = s.apply_opt("apparmor=docker-default").unwrap_err();
            assert!(e.to_string().contains("not enabled"), "{e}");
        }
    }

    #[test]
    fn devices_parse_and_resolve() {
        let d: Device = "/dev/null".parse().unwrap();
        assert_eq!(
            (d.container.to_str(), d.access.as_str()),
            (Some("/dev/null"), "rwm")
        );
        let d: Device = "/dev/null:/dev/nothing:r".parse().unwrap();
        assert_eq!(
            (d.container.to_str(), d.access.as_str()),
            (Some("/dev/nothing"), "r")
        );
        let d: Device = "/dev/null:rw".parse().unwrap();
        assert_eq!(d.access, "rw");
        for bad in ["dev/null", "/dev/null:rel", "/a:/b:x:y"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
        let n = device_node(Path::new("/dev/null"), Path::new("/dev/x")).unwrap();
        assert_eq!((n.major(), n.minor(), n.typ()), (1, 3, LinuxDeviceType::C));
        assert!(device_node(Path::new("/etc/hostname"), Path::new("/x")).is_err());
        assert!(host_devices()
            .iter()
            .any(|d| d.path() == Path::new("/dev/null")));
    }
}

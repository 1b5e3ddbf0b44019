//! Seccomp for nested containers: containerd's default profile unless the user asks for
//! none or gives a profile file.
//!
//! Profiles are read in Docker's format (the OCI `linux.seccomp` object plus `archMap`
//! and per-rule `includes`/`excludes` by architecture, capability and kernel), which is
//! also what `docker run --security-opt seccomp=FILE` takes; a plain OCI object is that
//! format without the extras. The default is data, [`DEFAULT_PROFILE`]: containerd's
//! `contrib/seccomp` DefaultProfile written down as such a profile. Resolving keeps the
//! rules that apply to this host's architecture, the container's bounding capabilities
//! and the running kernel, and yields the OCI object runc loads.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSyscall,
};
use serde::Deserialize;

use crate::error::{Error, Result};

/// containerd's default seccomp profile, as data.
pub const DEFAULT_PROFILE: &str = include_str!("seccomp_default.json");

/// A profile file is a small document; anything larger is refused before it is parsed.
const PROFILE_LIMIT: u64 = 4 << 20;

/// What `--security-opt seccomp=…` chose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Seccomp {
    /// containerd's default profile.
    #[default]
    Default,
    /// `seccomp=unconfined`: no filter.
    Unconfined,
    /// `seccomp=FILE`: a profile of the user's.
    Profile(PathBuf),
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Profile {
    default_action: LinuxSeccompAction,
    #[serde(default)]
    default_errno_ret: Option<u32>,
    #[serde(default)]
    architectures: Vec<Arch>,
    #[serde(default)]
    arch_map: Vec<ArchMap>,
    #[serde(default)]
    syscalls: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArchMap {
    architecture: Arch,
    #[serde(default)]
    sub_architectures: Vec<Arch>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    names: Vec<String>,
    /// Docker's older profiles name one syscall per rule.
    #[serde(default)]
    name: Option<String>,
    action: LinuxSeccompAction,
    #[serde(default)]
    errno_ret: Option<u32>,
    #[serde(default)]
    args: Option<Vec<LinuxSeccompArg>>,
    #[serde(default)]
    includes: Filter,
    #[serde(default)]
    excludes: Filter,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Filter {
    /// Go architecture names (`amd64`, `arm64`, ...), as Docker's profiles spell them.
    #[serde(default)]
    arches: Vec<String>,
    /// `CAP_…` names, matched against the container's bounding set.
    #[serde(default)]
    caps: Vec<String>,
    /// `MAJOR.MINOR`: the rule needs at least this kernel.
    #[serde(default)]
    min_kernel: Option<String>,
}

/// What a rule is matched against.
#[derive(Debug, Clone)]
pub struct Host {
    /// Go's name for the architecture (`amd64`, `arm64`, ...).
    pub arch: &'static str,
    /// The running kernel's (major, minor).
    pub kernel: (u32, u32),
    /// Whether the kernel runs x32 programs. Most distribution kernels are built without
    /// the x32 ABI; there the profile's `SCMP_ARCH_X32` can match no process, and libseccomp
    /// compiling it costs runc about 5 ms per container start.
    pub x32: bool,
}

impl Host {
    /// This machine.
    pub fn current() -> Host {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        Host {
            arch: go_arch(std::env::consts::ARCH),
            kernel: kernel_version(&release).unwrap_or((0, 0)),
            x32: kernel_runs_x32(),
        }
    }
}

/// Asks the kernel with an x32 `getpid`: ENOSYS means no x32 ABI. Under a seccomp filter
/// of its own this process might be killed for the probe (a filter without x32 treats it
/// as a foreign architecture), so there it does not ask and assumes x32, which keeps the
/// profile as written.
#[cfg(target_arch = "x86_64")]
fn kernel_runs_x32() -> bool {
    const X32_SYSCALL_BIT: libc::c_long = 0x4000_0000;
    if !seccomp_mode_is_off() {
        return true;
    }
    // SAFETY: getpid takes no arguments and changes nothing; only its number is foreign.
    let ret = unsafe { libc::syscall(X32_SYSCALL_BIT | libc::SYS_getpid) };
    !(ret == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
}

#[cfg(not(target_arch = "x86_64"))]
fn kernel_runs_x32() -> bool {
    false
}

/// `Seccomp: 0` in /proc/self/status: no filter applies to this process.
#[cfg(target_arch = "x86_64")]
fn seccomp_mode_is_off() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim() == "0"))
        })
        .unwrap_or(false)
}

/// Rust's architecture name → Go's, which seccomp profiles use.
fn go_arch(rust: &'static str) -> &'static str {
    match rust {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The native seccomp architecture of a Go architecture name.
fn native_arch(go: &str) -> Option<Arch> {
    Some(match go {
        "amd64" => Arch::ScmpArchX86_64,
        "386" => Arch::ScmpArchX86,
        "arm64" => Arch::ScmpArchAarch64,
        "arm" => Arch::ScmpArchArm,
        "s390x" => Arch::ScmpArchS390x,
        "ppc64le" => Arch::ScmpArchPpc64le,
        "riscv64" => Arch::ScmpArchRiscv64,
        "mips64" => Arch::ScmpArchMips64,
        "mips64le" => Arch::ScmpArchMipsel64,
        "loong64" => Arch::ScmpArchLoongarch64,
        _ => return None,
    })
}

/// `6.18.44-fc` → (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// The OCI seccomp object for a container with bounding set `caps`; None when unconfined.
pub fn resolve(choice: &Seccomp, caps: &[Capability], host: &Host) -> Result<Option<LinuxSeccomp>> {
    let (text, origin) = match choice {
        Seccomp::Unconfined => return Ok(None),
        Seccomp::Default => (
            DEFAULT_PROFILE.to_string(),
            "the default seccomp profile".to_string(),
        ),
        Seccomp::Profile(path) => (
            read_profile(path)?,
            format!("seccomp profile {}", path.display()),
        ),
    };
    let profile: Profile = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("invalid {origin}: {e}")))?;
    Ok(Some(apply(profile, caps, host, &origin)?))
}

fn read_profile(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(format!("read seccomp profile {}", path.display()), e))?;
    if meta.len() > PROFILE_LIMIT {
        return Err(Error::Invalid(format!(
            "seccomp profile {} is {} bytes, more than the {PROFILE_LIMIT} a profile may have",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read_to_string(path)
        .map_err(|e| Error::io(format!("read seccomp profile {}", path.display()), e))
}

fn apply(profile: Profile, caps: &[Capability], host: &Host, origin: &str) -> Result<LinuxSeccomp> {
    let cap_names: Vec<String> = caps.iter().map(|c| format!("CAP_{c}")).collect();
    let has_cap = |c: &String| cap_names.iter().any(|n| n.eq_ignore_ascii_case(c));
    let min_kernel_ok = |f: &Filter| -> Result<bool> {
        match &f.min_kernel {
            None => Ok(true),
            Some(v) => kernel_version(v)
                .map(|need| host.kernel >= need)
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "invalid {origin}: minKernel {v:?} is not MAJOR.MINOR"
                    ))
                }),
        }
    };
    let mut syscalls = Vec::new();
    for rule in profile.syscalls {
        let inc = &rule.includes;
        let exc = &rule.excludes;
        let included = (inc.arches.is_empty() || inc.arches.iter().any(|a| a == host.arch))
            && inc.caps.iter().all(has_cap)
            && min_kernel_ok(inc)?;
        let excluded = exc.arches.iter().any(|a| a == host.arch)
            || exc.caps.iter().any(has_cap)
            || (exc.min_kernel.is_some() && min_kernel_ok(exc)?);
        if !included || excluded {
            continue;
        }
        let mut names = rule.names;
        names.extend(rule.name);
        if names.is_empty() {
            return Err(Error::Invalid(format!(
                "invalid {origin}: a rule names no syscall"
            )));
        }
        let mut s = LinuxSyscall::default();
        s.set_names(names)
            .set_action(rule.action)
            .set_errno_ret(rule.errno_ret)
            .set_args(rule.args);
        syscalls.push(s);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(profile.default_action)
        .set_default_errno_ret(profile.default_errno_ret)
        .set_architectures(architectures(
            &profile.architectures,
            &profile.arch_map,
            host,
        ))
        .set_syscalls(Some(syscalls));
    Ok(out)
}

/// Explicit `architectures` win; else the `archMap` entry of the native architecture
/// (with its sub-architectures, e.g. x86 and x32 beside x86_64), as Docker does, less x32
/// on a kernel without it. The one difference that makes: an x86_64 program issuing an
/// x32-numbered syscall is killed (SIGSYS) where it would have got ENOSYS.
fn architectures(explicit: &[Arch], map: &[ArchMap], host: &Host) -> Option<Vec<Arch>> {
    if !explicit.is_empty() {
        return Some(explicit.to_vec());
    }
    let native = native_arch(host.arch)?;
    let entry = map.iter().find(|m| m.architecture == native)?;
    Some(
        std::iter::once(entry.architecture)
            .chain(entry.sub_architectures.iter().copied())
            .filter(|a| host.x32 || *a != Arch::ScmpArchX32)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amd64() -> Host {
        Host {
            arch: "amd64",
            kernel: (6, 1),
            x32: true,
        }
    }

    fn names(s: &LinuxSeccomp) -> Vec<&str> {
        s.syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|r| r.names().iter().map(String::as_str))
            .collect()
    }

    fn default_for(caps: &[Capability], host: &Host) -> LinuxSeccomp {
        resolve(&Seccomp::Default, caps, host).unwrap().unwrap()
    }

    #[test]
    fn default_profile_denies_by_default_and_allows_the_base_list() {
        let s = default_for(&[], &amd64());
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(
            s.architectures().as_ref().unwrap(),
            &[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32]
        );
        let n = names(&s);
        for allowed in [
            "read",
            "execve",
            "openat",
            "clone",
            "arch_prctl",
            "ptrace",
            "socket",
        ] {
            assert!(n.contains(&allowed), "{allowed} missing");
        }
        for denied in [
            "mount",
            "unshare",
            "setns",
            "reboot",
            "init_module",
            "bpf",
            "kexec_load",
        ] {
            assert!(
                !n.contains(&denied),
                "{denied} allowed without its capability"
            );
        }
        // Without CAP_SYS_ADMIN: clone only without namespace flags, clone3 gives ENOSYS.
        let rules = s.syscalls().as_ref().unwrap();
        let clone = rules.iter().find(|r| r.names() == &["clone"]).unwrap();
        let arg = clone.args().as_ref().unwrap()[0];
        assert_eq!((arg.index(), arg.value()), (0, 0x7e020000));
        let clone3 = rules.iter().find(|r| r.names() == &["clone3"]).unwrap();
        assert_eq!(clone3.action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3.errno_ret(), Some(libc::ENOSYS as u32));
    }

    #[test]
    fn capabilities_arches_and_kernel_select_rules() {
        let admin = default_for(&[Capability::SysAdmin, Capability::SysChroot], &amd64());
        let n = names(&admin);
        assert!(n.contains(&"mount") && n.contains(&"chroot") && n.contains(&"clone3"));
        let rules = admin.syscalls().as_ref().unwrap();
        assert!(rules
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
        assert!(rules
            .iter()
            .all(|r| r.names() != &["clone"] || r.args().is_none()));

        let arm = Host {
            arch: "arm64",
            kernel: (4, 4),
            x32: false,
        };
        let s = default_for(&[], &arm);
        let n = names(&s);
        assert!(n.contains(&"set_tls") && !n.contains(&"arch_prctl"));
        // ptrace came with kernel 4.8 (CVE-2014-4699 before it).
        assert!(!n.contains(&"ptrace"));
        assert_eq!(
            s.architectures().as_ref().unwrap(),
            &[Arch::ScmpArchAarch64, Arch::ScmpArchArm]
        );
    }

    #[test]
    fn x32_is_left_out_only_where_the_kernel_lacks_it_and_the_profile_does_not_name_it() {
        let no_x32 = Host {
            x32: false,
            ..amd64()
        };
        assert_eq!(
            default_for(&[], &no_x32).architectures().as_ref().unwrap(),
            &[Arch::ScmpArchX86_64, Arch::ScmpArchX86]
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        std::fs::write(
            &p,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X32"],
               "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO"}]}"#,
        )
        .unwrap();
        let s = resolve(&Seccomp::Profile(p), &[], &no_x32)
            .unwrap()
            .unwrap();
        assert_eq!(
            s.architectures().as_ref().unwrap(),
            &[Arch::ScmpArchX86_64, Arch::ScmpArchX32]
        );
    }

    /// A kernel built without the x32 ABI (its config says so) is probed as such. (One built
    /// with it may still have it off at boot, so that side is not asserted.)
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_x32_probe_matches_the_kernel_config() {
        let Ok(config) = std::process::Command::new("sh")
            .args([
                "-c",
                "zcat /proc/config.gz 2>/dev/null || cat /boot/config-$(uname -r)",
            ])
            .output()
        else {
            return;
        };
        let config = String::from_utf8_lossy(&config.stdout);
        if !config.contains("CONFIG_X86_64=y") || !seccomp_mode_is_off() {
            return;
        }
        if !config.lines().any(|l| l == "CONFIG_X86_X32_ABI=y") {
            assert!(!kernel_runs_x32());
        }
    }

    #[test]
    fn unconfined_and_profile_files() {
        assert!(resolve(&Seccomp::Unconfined, &[], &amd64())
            .unwrap()
            .is_none());
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.json");
        std::fs::write(
            &p,
            r#"{"defaultAction":"SCMP_ACT_ALLOW","architectures":["SCMP_ARCH_X86_64"],
               "syscalls":[{"name":"mkdir","action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
        )
        .unwrap();
        let s = resolve(&Seccomp::Profile(p.clone()), &[], &amd64())
            .unwrap()
            .unwrap();
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert_eq!(names(&s), ["mkdir"]);

        std::fs::write(&p, r#"{"defaultAction":"SCMP_ACT_BOGUS"}"#).unwrap();
        let e = resolve(&Seccomp::Profile(p.clone()), &[], &amd64()).unwrap_err();
        assert!(
            matches!(&e, Error::Invalid(m) if m.contains("p.json")),
            "{e}"
        );
        let e = resolve(&Seccomp::Profile(dir.path().join("none")), &[], &amd64()).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v1045"), Some((6, 18)));
        assert_eq!(kernel_version("4.8"), Some((4, 8)));
        assert_eq!(kernel_version("x"), None);
    }
}

//! The OCI runtime spec of a nested container, built with the oci-spec crate: containerd's
//! defaults for a container (what `oci.populateDefaultUnixSpec` gives `ctr run`), then the
//! image config (Entrypoint, Cmd, Env, WorkingDir, User), then the user's flags.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use oci_spec::image::Config as ImageConfig;
use oci_spec::runtime::{
    Capabilities, Capability, LinuxBuilder, LinuxCapabilities, LinuxDeviceCgroupBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, SpecBuilder, UserBuilder,
};

use crate::error::{Error, Result};
use crate::user::{ResolvedUser, UserDb};

pub mod files;
pub mod mounts;
pub mod resources;
pub mod seccomp;
pub mod security;

pub use resources::Resources;
pub use security::Security;

/// Where `--init` puts nestcache's init inside the container.
pub const INIT_PATH: &str = "/sbin/nestcache-init";

/// containerd's default PATH for a container whose image sets none.
pub const DEFAULT_PATH_ENV: &str =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The capabilities containerd gives every container (`defaultUnixCaps`).
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Paths containerd 1.6 masks (bind-mounts /dev/null or an empty tmpfs over).
pub const MASKED_PATHS: [&str; 11] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
];

/// Paths containerd 1.6 makes read-only.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

pub use crate::network::NetMode;

/// `-v HOST:CTR[:ro|rw]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub host: PathBuf,
    pub container: PathBuf,
    pub read_only: bool,
}

impl std::str::FromStr for Volume {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Invalid(format!(
                "invalid volume {s:?}: {why} (expected HOST:CTR[:ro|rw])"
            ))
        };
        let parts: Vec<&str> = s.split(':').collect();
        let (host, ctr, mode) = match parts.as_slice() {
            [h, c] => (*h, *c, None),
            [h, c, m] => (*h, *c, Some(*m)),
            _ => return Err(bad("wrong number of ':'")),
        };
        let read_only = match mode {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(m) => return Err(bad(&format!("unknown mode {m:?}"))),
        };
        let host = PathBuf::from(host);
        if !host.is_absolute() {
            return Err(bad("the host path must be absolute"));
        }
        Ok(Volume {
            host,
            container: container_path(ctr).map_err(|e| bad(&e))?,
            read_only,
        })
    }
}

/// The cache's content dir mounted into the nested container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    pub content_dir: PathBuf,
    pub target: PathBuf,
    pub read_write: bool,
}

/// Everything about the nested container that does not come from the image.
#[derive(Debug, Clone)]
pub struct SpecOptions {
    /// containerd container id; also the default hostname.
    pub id: String,
    /// containerd namespace, for the cgroup path `/<namespace>/<id>` as containerd does.
    pub namespace: String,
    pub hostname: Option<String>,
    /// `-e KEY=VAL` (or `-e KEY`, which takes the host's value if set).
    pub env: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub volumes: Vec<Volume>,
    /// `--entrypoint`: `Some("")` clears the image's entrypoint.
    pub entrypoint: Option<String>,
    /// Arguments after `--`: replace the image's Cmd.
    pub command: Vec<String>,
    pub net: NetMode,
    /// The network namespace to join (nestcache's for a bridge, another container's).
    pub netns_path: Option<PathBuf>,
    /// Host files bound over /etc/hosts, /etc/resolv.conf, /etc/hostname (HOST, CTR).
    pub etc_mounts: Vec<(PathBuf, PathBuf)>,
    pub read_only: bool,
    pub tty: bool,
    pub cache_mount: Option<CacheMount>,
    pub annotations: HashMap<String, String>,
    /// `--memory`, `--cpus`, `--ulimit`, `--shm-size`, `--sysctl`, ...
    pub resources: Resources,
    /// `--cap-add`, `--privileged`, `--device`, `--security-opt`.
    pub security: Security,
    /// `--group-add`: group names (of the image's /etc/group) or numbers.
    pub group_add: Vec<String>,
    /// `--tmpfs` and `--mount type=tmpfs`.
    pub tmpfs: Vec<mounts::Tmpfs>,
    /// `--init`: the host path of nestcache's init, run as PID 1 in front of the command.
    pub init: Option<PathBuf>,
}

impl SpecOptions {
    pub fn new(id: impl Into<String>, namespace: impl Into<String>) -> Self {
        SpecOptions {
            id: id.into(),
            namespace: namespace.into(),
            hostname: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            volumes: Vec::new(),
            entrypoint: None,
            command: Vec::new(),
            net: NetMode::None,
            netns_path: None,
            etc_mounts: Vec::new(),
            read_only: false,
            tty: false,
            cache_mount: None,
            annotations: HashMap::new(),
            resources: Resources::default(),
            security: Security::default(),
            group_add: Vec::new(),
            tmpfs: Vec::new(),
            init: None,
        }
    }
}

/// Builds the runtime spec. `image` is the image config's `config` section (absent in
/// some minimal images); `users` is the image's /etc/passwd and /etc/group.
pub fn build(image: Option<&ImageConfig>, users: &UserDb, opts: &SpecOptions) -> Result<Spec> {
    let args = process_args(image, opts)?;
    let user_spec = opts
        .user
        .clone()
        .or_else(|| image.and_then(|c| c.user().clone()))
        .unwrap_or_default();
    let user = users.resolve(&user_spec)?;
    let env = process_env(image, opts, &user)?;
    let cwd = process_cwd(image, opts)?;

    let process = process(opts, &user, users, args, env, cwd)?;
    let linux = linux(opts)?;
    let hostname = match (&opts.hostname, &opts.net) {
        (Some(h), _) => h.clone(),
        // Host networking shows the host's name, as `docker run --net host` does.
        (None, NetMode::Host) => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| short_hostname(&opts.id)),
        (None, _) => short_hostname(&opts.id),
    };

    let mut builder = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(opts.read_only)
                .build()
                .map_err(oci)?,
        )
        .process(process)
        .hostname(hostname)
        .mounts(mounts(opts)?)
        .linux(linux);
    if !opts.annotations.is_empty() {
        builder = builder.annotations(opts.annotations.clone());
    }
    builder.build().map_err(oci)
}

fn process(
    opts: &SpecOptions,
    user: &ResolvedUser,
    users: &UserDb,
    args: Vec<String>,
    env: Vec<String>,
    cwd: PathBuf,
) -> Result<oci_spec::runtime::Process> {
    let caps: Capabilities = opts.security.capabilities()?.into_iter().collect();
    // The builder starts from oci-spec's defaults (which include inheritable and ambient
    // sets); containerd grants neither since 1.6.2 (CVE-2022-24769).
    let mut capabilities = LinuxCapabilities::default();
    capabilities
        .set_bounding(Some(caps.clone()))
        .set_permitted(Some(caps.clone()))
        .set_effective(Some(caps))
        .set_inheritable(None)
        .set_ambient(None);
    let mut gids = user.additional_gids.clone();
    for g in &opts.group_add {
        let gid = users.resolve_group(g)?;
        if !gids.contains(&gid) {
            gids.push(gid);
        }
    }
    let mut oci_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !gids.is_empty() {
        oci_user = oci_user.additional_gids(gids);
    }
    let mut process = ProcessBuilder::default()
        .terminal(opts.tty)
        .user(oci_user.build().map_err(oci)?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .no_new_privileges(opts.security.no_new_privileges)
        .capabilities(capabilities)
        .rlimits(opts.resources.rlimits()?);
    if let Some(adj) = opts.resources.oom_score_adj {
        process = process.oom_score_adj(adj);
    }
    if let Some(p) = &opts.security.apparmor {
        process = process.apparmor_profile(p.clone());
    }
    process.build().map_err(oci)
}

/// `linux`: cgroup path and resources, devices, namespaces, masked paths, sysctls, seccomp.
fn linux(opts: &SpecOptions) -> Result<oci_spec::runtime::Linux> {
    let sec = &opts.security;
    let mut device_rules = vec![LinuxDeviceCgroupBuilder::default()
        // Deny every device; runc adds back the standard ones (null, zero, tty, ...).
        .allow(sec.privileged)
        .access("rwm")
        .build()
        .map_err(oci)?];
    let mut devices = if sec.privileged {
        security::host_devices()
    } else {
        Vec::new()
    };
    for d in &sec.devices {
        let node = security::device_node(&d.host, &d.container)?;
        device_rules.push(
            LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(node.typ())
                .major(node.major())
                .minor(node.minor())
                .access(d.access.clone())
                .build()
                .map_err(oci)?,
        );
        devices.retain(|x| x.path() != node.path());
        devices.push(node);
    }
    opts.resources.validate()?;
    let resources = opts
        .resources
        .builder()?
        .devices(device_rules)
        .build()
        .map_err(oci)?;
    let (masked, readonly) = if sec.privileged {
        (Vec::new(), Vec::new())
    } else {
        (
            MASKED_PATHS.map(String::from).to_vec(),
            READONLY_PATHS.map(String::from).to_vec(),
        )
    };
    let mut linux = LinuxBuilder::default()
        .masked_paths(masked)
        .readonly_paths(readonly)
        .cgroups_path(PathBuf::from(format!("/{}/{}", opts.namespace, opts.id)))
        .resources(resources)
        .namespaces(namespaces(opts)?);
    if !devices.is_empty() {
        linux = linux.devices(devices);
    }
    if !opts.resources.sysctls.is_empty() {
        linux = linux.sysctl(opts.resources.sysctls.clone());
    }
    let caps = sec.capabilities()?;
    if let Some(profile) =
        seccomp::resolve(&sec.effective_seccomp(), &caps, &seccomp::Host::current())?
    {
        linux = linux.seccomp(profile);
    }
    linux.build().map_err(oci)
}

/// Entrypoint + Cmd with Docker's override rules: arguments replace Cmd; `--entrypoint`
/// replaces Entrypoint and drops the image's Cmd.
fn process_args(image: Option<&ImageConfig>, opts: &SpecOptions) -> Result<Vec<String>> {
    let (entrypoint, image_cmd) = match &opts.entrypoint {
        Some(e) if e.is_empty() => (Vec::new(), Vec::new()),
        Some(e) => (vec![e.clone()], Vec::new()),
        None => (
            image
                .and_then(|c| c.entrypoint().clone())
                .unwrap_or_default(),
            image.and_then(|c| c.cmd().clone()).unwrap_or_default(),
        ),
    };
    let cmd = if opts.command.is_empty() {
        image_cmd
    } else {
        opts.command.clone()
    };
    let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
    if args.is_empty() || args[0].is_empty() {
        return Err(Error::Invalid(
            "no command: the image has no Entrypoint or Cmd; give one after `--` or with --entrypoint"
                .into(),
        ));
    }
    if opts.init.is_some() {
        let init = [INIT_PATH.to_string(), "--".to_string()];
        return Ok(init.into_iter().chain(args).collect());
    }
    Ok(args)
}

/// containerd's default PATH, overridden by the image's Env, overridden by `-e`; HOME
/// from the user's passwd entry unless set; TERM for a terminal unless set.
fn process_env(
    image: Option<&ImageConfig>,
    opts: &SpecOptions,
    user: &ResolvedUser,
) -> Result<Vec<String>> {
    let mut env = vec![DEFAULT_PATH_ENV.to_string()];
    for kv in image.and_then(|c| c.env().clone()).unwrap_or_default() {
        set_env(&mut env, kv);
    }
    for kv in &opts.env {
        let (key, _) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() || key.contains('\0') || kv.contains('\0') {
            return Err(Error::Invalid(format!(
                "invalid -e {kv:?}: expected KEY=VALUE or KEY"
            )));
        }
        if kv.contains('=') {
            set_env(&mut env, kv.clone());
        } else if let Ok(v) = std::env::var(kv) {
            // `-e KEY` passes the caller's value through, as `docker run -e KEY` does.
            set_env(&mut env, format!("{kv}={v}"));
        }
    }
    if !has_env(&env, "HOME") {
        env.push(format!("HOME={}", user.home));
    }
    if opts.tty && !has_env(&env, "TERM") {
        env.push("TERM=xterm".into());
    }
    Ok(env)
}

fn env_key(kv: &str) -> &str {
    kv.split_once('=').map(|(k, _)| k).unwrap_or(kv)
}

fn has_env(env: &[String], key: &str) -> bool {
    env.iter().any(|e| env_key(e) == key)
}

/// Replaces KEY's entry in place (keeping order) or appends it.
fn set_env(env: &mut Vec<String>, kv: String) {
    let key = env_key(&kv).to_string();
    match env.iter_mut().find(|e| env_key(e) == key) {
        Some(slot) => *slot = kv,
        None => env.push(kv),
    }
}

fn process_cwd(image: Option<&ImageConfig>, opts: &SpecOptions) -> Result<PathBuf> {
    if let Some(w) = &opts.workdir {
        if !w.starts_with('/') {
            return Err(Error::Invalid(format!(
                "invalid -w {w:?}: the working directory must be absolute"
            )));
        }
        return container_path(w).map_err(|e| Error::Invalid(format!("invalid -w {w:?}: {e}")));
    }
    match image.and_then(|c| c.working_dir().clone()) {
        // A relative WorkingDir in an image config is taken from /, as Docker does.
        Some(w) if !w.is_empty() => container_path(&format!("/{}", w.trim_start_matches('/')))
            .map_err(|e| Error::Invalid(format!("invalid image WorkingDir {w:?}: {e}"))),
        _ => Ok(PathBuf::from("/")),
    }
}

/// A path inside the container: absolute, no `..`, normalised.
pub(crate) fn container_path(p: &str) -> std::result::Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err("the container path must be absolute".into());
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir => return Err("the container path must not contain ..".into()),
            Component::Prefix(_) => return Err("unexpected path prefix".into()),
        }
    }
    Ok(out)
}

fn namespaces(opts: &SpecOptions) -> Result<Vec<oci_spec::runtime::LinuxNamespace>> {
    let mut out: Vec<oci_spec::runtime::LinuxNamespace> = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().map_err(oci))
    .collect::<Result<_>>()?;
    if opts.net.own_namespace() {
        let mut ns = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(p) = &opts.netns_path {
            ns = ns.path(p.clone());
        }
        out.push(ns.build().map_err(oci)?);
    }
    Ok(out)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(oci)
}

fn bind(source: &Path, dest: &Path, read_only: bool) -> Result<Mount> {
    MountBuilder::default()
        .destination(dest)
        .typ("bind")
        .source(source)
        .options(vec![
            "rbind".to_string(),
            if read_only { "ro" } else { "rw" }.to_string(),
        ])
        .build()
        .map_err(oci)
}

/// containerd's default mounts, then host files for host networking, the cache, volumes.
fn mounts(opts: &SpecOptions) -> Result<Vec<Mount>> {
    // --privileged gets a writable /sys, as in Docker.
    let sys_mode = if opts.security.privileged { "rw" } else { "ro" };
    let mut m = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &[
                "nosuid",
                "noexec",
                "nodev",
                "mode=1777",
                &format!(
                    "size={}k",
                    opts.resources
                        .shm_size
                        .unwrap_or(resources::DEFAULT_SHM_BYTES)
                        .div_ceil(1024)
                ),
            ],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        )?,
    ];
    if opts.net == NetMode::Host {
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            if Path::new(f).exists() {
                m.push(bind(Path::new(f), Path::new(f), true)?);
            }
        }
    }
    for (host, at) in &opts.etc_mounts {
        m.push(bind(host, at, false)?);
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    if let Some(c) = &opts.cache_mount {
        let target = container_path(&c.target.to_string_lossy()).map_err(|e| {
            Error::Invalid(format!("invalid cache target path {:?}: {e}", c.target))
        })?;
        if target == Path::new("/") {
            return Err(Error::Invalid(
                "the cache's target path is /: it cannot be mounted over the nested container's root (use --no-mount-cache)".into(),
            ));
        }
        m.push(bind(&c.content_dir, &target, !c.read_write)?);
        seen.push(target);
    }
    for v in &opts.volumes {
        if v.container == Path::new("/") {
            return Err(Error::Invalid(format!(
                "invalid volume {}:/: cannot mount over the container's root",
                v.host.display()
            )));
        }
        if seen.contains(&v.container) {
            return Err(Error::Invalid(format!(
                "two mounts at {} (a -v target may not repeat or hide the cache mount; use --no-mount-cache)",
                v.container.display()
            )));
        }
        if !v.host.exists() {
            return Err(Error::NotFound(format!(
                "volume source {} on the host",
                v.host.display()
            )));
        }
        m.push(bind(&v.host, &v.container, v.read_only)?);
        seen.push(v.container.clone());
    }
    if let Some(init) = &opts.init {
        m.push(bind(init, Path::new(INIT_PATH), true)?);
        seen.push(PathBuf::from(INIT_PATH));
    }
    for t in &opts.tmpfs {
        if t.target == Path::new("/") || seen.contains(&t.target) {
            return Err(Error::Invalid(format!(
                "--tmpfs {}: the root or a path already mounted",
                t.target.display()
            )));
        }
        let options: Vec<&str> = t.options.iter().map(String::as_str).collect();
        m.push(mount(
            &t.target.to_string_lossy(),
            "tmpfs",
            "tmpfs",
            &options,
        )?);
        seen.push(t.target.clone());
    }
    Ok(m)
}

/// Hostnames are limited to 64 bytes; ids may be longer.
pub(crate) fn short_hostname(id: &str) -> String {
    id.chars().take(63).collect()
}

pub(crate) fn oci(e: oci_spec::OciSpecError) -> Error {
    Error::Other(format!("building the OCI runtime spec: {e}"))
}

#[cfg(test)]
mod tests;

//! `run`'s resource and security flags, spelled as `docker run` spells them, and their
//! conversion into the library's spec options.

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Args;

use nestcache::layout::StateLayout;
use nestcache::nested::spec::mounts::{self, MountArg};
use nestcache::nested::spec::resources::{self, Resources};
use nestcache::nested::spec::{files, Security, SpecOptions};
use nestcache::nested::volumes::VolumeRequest;

#[derive(Debug, Default, Args)]
pub struct ResourceArgs {
    /// Memory limit (e.g. 512m, 2g)
    #[arg(short = 'm', long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Memory + swap limit; -1 for unlimited swap
    #[arg(long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Memory soft limit
    #[arg(long, value_name = "BYTES")]
    pub memory_reservation: Option<String>,
    /// Number of CPUs (e.g. 0.5, 2)
    #[arg(long, value_name = "N")]
    pub cpus: Option<String>,
    /// CPU shares (relative weight)
    #[arg(short = 'c', long, value_name = "N")]
    pub cpu_shares: Option<u64>,
    /// CPUs the container may run on (e.g. 0-2,4)
    #[arg(long, value_name = "LIST")]
    pub cpuset_cpus: Option<String>,
    /// Maximum number of processes; 0 or -1 for unlimited
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    /// Resource limit NAME=SOFT[:HARD] (e.g. nofile=1024:2048)
    #[arg(long, value_name = "ULIMIT")]
    pub ulimit: Vec<String>,
    /// OOM killer preference, -1000..1000
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub oom_score_adj: Option<i32>,
    /// Size of /dev/shm (default 64m)
    #[arg(long, value_name = "BYTES")]
    pub shm_size: Option<String>,
    /// Namespaced kernel parameter KEY=VALUE
    #[arg(long, value_name = "KEY=VALUE")]
    pub sysctl: Vec<String>,
}

#[derive(Debug, Default, Args)]
pub struct SecurityArgs {
    /// Add a capability (or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a capability (or ALL)
    #[arg(long, value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// All capabilities and host devices, no seccomp, no masked paths
    #[arg(long)]
    pub privileged: bool,
    /// Host device HOST[:CONTAINER][:rwm]
    #[arg(long, value_name = "DEVICE")]
    pub device: Vec<String>,
    /// Additional group (name in the image's /etc/group, or number)
    #[arg(long, value_name = "GROUP")]
    pub group_add: Vec<String>,
    /// no-new-privileges[=true|false], seccomp=unconfined|FILE, apparmor=PROFILE|unconfined
    #[arg(long, value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// User namespace: only `host` (the default) is supported
    #[arg(long, value_name = "MODE")]
    pub userns: Option<String>,
}

impl ResourceArgs {
    pub fn resources(&self) -> anyhow::Result<Resources> {
        let mem = |flag: &str, v: &Option<String>, unlimited: bool| {
            v.as_deref()
                .map(|s| resources::parse_memory(flag, s, unlimited))
                .transpose()
        };
        Ok(Resources {
            memory: mem("--memory", &self.memory, false)?,
            memory_swap: mem("--memory-swap", &self.memory_swap, true)?,
            memory_reservation: mem("--memory-reservation", &self.memory_reservation, false)?,
            cpus: self
                .cpus
                .as_deref()
                .map(resources::parse_cpus)
                .transpose()?,
            cpu_shares: self.cpu_shares,
            cpuset_cpus: self.cpuset_cpus.clone(),
            pids_limit: self.pids_limit,
            ulimits: self
                .ulimit
                .iter()
                .map(|u| u.parse())
                .collect::<Result<_, _>>()?,
            oom_score_adj: self.oom_score_adj,
            shm_size: self
                .shm_size
                .as_deref()
                .map(|s| resources::parse_bytes("--shm-size", s))
                .transpose()?,
            sysctls: self
                .sysctl
                .iter()
                .map(|s| resources::parse_sysctl(s))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl SecurityArgs {
    pub fn security(&self) -> anyhow::Result<Security> {
        match self.userns.as_deref() {
            None | Some("" | "host") => {}
            Some(other) => anyhow::bail!(
                "--userns {other:?} is not supported: nested containers share their layers' files with every container of the image, and a remapped user would need an id-shifted copy or idmapped mounts of them; only --userns=host (the default) is accepted"
            ),
        }
        let mut s = Security {
            privileged: self.privileged,
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            devices: self
                .device
                .iter()
                .map(|d| d.parse())
                .collect::<Result<_, _>>()?,
            ..Default::default()
        };
        for o in &self.security_opt {
            s.apply_opt(o)?;
        }
        Ok(s)
    }

    /// Fills the spec's security fields.
    pub fn apply(&self, spec: &mut SpecOptions) -> anyhow::Result<()> {
        spec.security = self.security()?;
        spec.group_add = self.group_add.clone();
        Ok(())
    }
}

#[derive(Debug, Default, Args)]
pub struct MountArgs {
    /// Mount type=bind|tmpfs|volume,source=…,target=…[,readonly]
    #[arg(long, value_name = "MOUNT")]
    pub mount: Vec<String>,
    /// Mount a tmpfs PATH[:OPTIONS] (e.g. /tmp:size=64m,exec)
    #[arg(long, value_name = "PATH")]
    pub tmpfs: Vec<String>,
    /// Mount the volumes and bind mounts of nested container ID[:ro|:rw]
    #[arg(long, value_name = "ID")]
    pub volumes_from: Vec<String>,
    /// Read environment variables from a file (KEY=VALUE lines)
    #[arg(long, value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Set a container label KEY[=VALUE]
    #[arg(short = 'l', long, value_name = "LABEL")]
    pub label: Vec<String>,
    /// Read labels from a file (KEY=VALUE lines)
    #[arg(long, value_name = "FILE")]
    pub label_file: Vec<PathBuf>,
    /// Write the container id to this file (which must not exist)
    #[arg(long, value_name = "FILE")]
    pub cidfile: Option<PathBuf>,
}

impl MountArgs {
    /// Fills mounts and env of the spec and the volumes asked for (`-v` and `--mount`;
    /// `run` creates them, once it knows the image) and returns the container's labels.
    pub fn apply(
        &self,
        volume_flags: &[String],
        spec: &mut SpecOptions,
        volume_requests: &mut Vec<VolumeRequest>,
    ) -> anyhow::Result<HashMap<String, String>> {
        let parsed: Vec<MountArg> = volume_flags
            .iter()
            .map(|v| mounts::parse_v(v))
            .chain(self.mount.iter().map(|m| mounts::parse_mount(m)))
            .collect::<Result<_, _>>()?;
        for m in parsed {
            match m {
                MountArg::Bind(v) => spec.volumes.push(v),
                MountArg::Tmpfs(t) => spec.tmpfs.push(t),
                MountArg::Volume(r) => volume_requests.push(r),
            }
        }
        for t in &self.tmpfs {
            spec.tmpfs.push(mounts::parse_tmpfs(t)?);
        }
        // Docker: the files' entries first, `-e` after them (so `-e` wins).
        let mut env = Vec::new();
        for f in &self.env_file {
            env.extend(files::env_entries(files::read_kv_file("--env-file", f)?));
        }
        env.append(&mut spec.env);
        spec.env = env;
        let mut labels = HashMap::new();
        let mut label_lines = Vec::new();
        for f in &self.label_file {
            label_lines.extend(files::read_kv_file("--label-file", f)?);
        }
        label_lines.extend(self.label.iter().cloned());
        for l in label_lines {
            let (k, v) = l.split_once('=').unwrap_or((&l, ""));
            if k.is_empty() || k.starts_with(nestcache::labels::PREFIX) {
                anyhow::bail!(
                    "invalid --label {l:?}: empty, or a key under {} (nestcache's own)",
                    nestcache::labels::PREFIX
                );
            }
            labels.insert(k.to_string(), v.to_string());
        }
        Ok(labels)
    }
}

#[derive(Debug, Default, Args)]
pub struct ProcessArgs {
    /// Run a tiny init as PID 1 that forwards signals and reaps zombies
    #[arg(long)]
    pub init: bool,
    /// Signal `stop` sends first (default SIGTERM)
    #[arg(long, value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds `stop` waits before SIGKILL (default 10)
    #[arg(long, value_name = "SECONDS")]
    pub stop_timeout: Option<u64>,
}

impl ProcessArgs {
    /// Installs the init if asked for, and records the stop settings as labels.
    pub fn apply(
        &self,
        state: &StateLayout,
        spec: &mut SpecOptions,
        labels: &mut HashMap<String, String>,
    ) -> anyhow::Result<()> {
        if self.init {
            spec.init = Some(nestcache::nested::init::install(state)?);
        }
        if let Some(s) = &self.stop_signal {
            let n = nestcache::nested::manage::parse_signal(s)?;
            labels.insert(nestcache::labels::STOP_SIGNAL.into(), n.to_string());
        }
        if let Some(t) = self.stop_timeout {
            labels.insert(nestcache::labels::STOP_TIMEOUT.into(), t.to_string());
        }
        Ok(())
    }
}

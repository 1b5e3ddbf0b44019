//! `run`'s resource and security flags, spelled as `docker run` spells them, and their
//! conversion into the library's spec options.

use clap::Args;

use nestcache::nested::spec::resources::{self, Resources};
use nestcache::nested::spec::{Security, SpecOptions};

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

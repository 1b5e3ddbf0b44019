//! The OCI runtime spec of a cache container: the keeper as PID 1, in its own pid, ipc,
//! uts, mount and network namespaces, on a read-only rootfs that holds nothing but
//! `/proc`, a tmpfs `/dev` (runc adds the standard devices), the keeper binary and the
//! content dir bound read-write at the target path.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

use crate::{Error, Result};

/// Where the keeper binary appears inside the cache container.
pub const KEEPER_IN_CONTAINER: &str = "/keeper";

/// What the cache container's spec is made of.
pub struct KeeperSpec<'a> {
    pub namespace: &'a str,
    pub container_id: &'a str,
    pub name: &'a str,
    /// The host's keeper binary, bound read-only at [`KEEPER_IN_CONTAINER`].
    pub keeper_binary: &'a Path,
    pub content_dir: &'a Path,
    pub target_path: &'a Path,
    pub nonce: &'a str,
}

fn spec_err(e: impl std::fmt::Display) -> Error {
    Error::Other(format!("building the cache container's OCI spec: {e}"))
}

pub fn keeper_spec(k: &KeeperSpec<'_>) -> Result<Spec> {
    let path = k
        .target_path
        .to_str()
        .ok_or_else(|| Error::Invalid(format!("path {:?} is not UTF-8", k.target_path)))?;
    // Writing the ack into a content dir owned by another user needs DAC_OVERRIDE; the
    // keeper needs nothing else.
    let caps: std::collections::HashSet<Capability> =
        [Capability::DacOverride].into_iter().collect();
    let process = ProcessBuilder::default()
        .args(vec![
            KEEPER_IN_CONTAINER.to_string(),
            path.to_string(),
            k.name.to_string(),
            k.nonce.to_string(),
        ])
        .env(vec!["PATH=/".to_string()])
        .cwd("/")
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .map_err(spec_err)?,
        )
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(caps.clone())
                .effective(caps.clone())
                .permitted(caps.clone())
                .inheritable(caps.clone())
                .ambient(caps)
                .build()
                .map_err(spec_err)?,
        )
        .no_new_privileges(true)
        .terminal(false)
        .build()
        .map_err(spec_err)?;

    let mounts = vec![
        MountBuilder::default()
            .destination("/proc")
            .typ("proc")
            .source("proc")
            .options(vec!["nosuid".into(), "noexec".into(), "nodev".into()])
            .build()
            .map_err(spec_err)?,
        MountBuilder::default()
            .destination("/dev")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".into(),
                "strictatime".into(),
                "mode=755".into(),
                "size=64k".into(),
            ])
            .build()
            .map_err(spec_err)?,
        MountBuilder::default()
            .destination(KEEPER_IN_CONTAINER)
            .typ("bind")
            .source(k.keeper_binary)
            .options(vec![
                "rbind".into(),
                "ro".into(),
                "nosuid".into(),
                "nodev".into(),
            ])
            .build()
            .map_err(spec_err)?,
        MountBuilder::default()
            .destination(k.target_path)
            .typ("bind")
            .source(k.content_dir)
            .options(vec![
                "rbind".into(),
                "rw".into(),
                "nosuid".into(),
                "nodev".into(),
            ])
            .build()
            .map_err(spec_err)?,
    ];

    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Network,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
    .collect::<std::result::Result<Vec<_>, _>>()
    .map_err(spec_err)?;
    let defaults = oci_spec::runtime::Linux::default();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(format!("/{}/{}", k.namespace, k.container_id))
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .map_err(spec_err)?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname("nestcache-cache")
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .map_err(spec_err)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(spec_err)
}

//! Named volumes: directories under `<state-dir>/volumes/NAME/_data`, created on first use
//! (`-v NAME:/path`, `--mount type=volume,source=NAME,...`) or by `volume create`, kept
//! until `volume rm`, which refuses while a nested container uses the volume. Containers
//! record the volumes they use in the label `io.nestcache.volumes`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::containerd::Client;
use crate::error::{Error, IoContext, Result};
use crate::labels;
use crate::layout::StateLayout;

#[derive(Debug, Clone, Serialize)]
pub struct VolumeInfo {
    pub name: String,
    /// The host directory mounted into containers.
    pub mountpoint: PathBuf,
    /// Nested containers (in this namespace) that use it.
    pub used_by: Vec<String>,
}

/// Docker's rule for volume names: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`.
pub fn validate_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok
        || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        || name.len() > 128
    {
        return Err(Error::Invalid(format!(
            "invalid volume name {name:?}: letters, digits, '_', '.', '-', starting with a letter or digit (a host path must be absolute)"
        )));
    }
    Ok(())
}

fn volumes_dir(state: &StateLayout) -> PathBuf {
    state.root().join("volumes")
}

/// The directory containers mount for volume `name`.
pub fn mountpoint(state: &StateLayout, name: &str) -> PathBuf {
    volumes_dir(state).join(name).join("_data")
}

/// Creates volume `name` if it does not exist; returns its mountpoint.
pub fn ensure(state: &StateLayout, name: &str) -> Result<PathBuf> {
    validate_name(name)?;
    let dir = mountpoint(state, name);
    std::fs::create_dir_all(&dir).ctx(|| format!("create volume {name} at {}", dir.display()))?;
    Ok(dir)
}

/// Every volume, with the nested containers using each.
pub async fn list(client: &Client, state: &StateLayout) -> Result<Vec<VolumeInfo>> {
    let names = match std::fs::read_dir(volumes_dir(state)) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| validate_name(n).is_ok())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(Error::io(
                format!("list {}", volumes_dir(state).display()),
                e,
            ))
        }
    };
    let users = users(client).await?;
    let mut out: Vec<VolumeInfo> = names
        .into_iter()
        .map(|name| VolumeInfo {
            mountpoint: mountpoint(state, &name),
            used_by: users
                .iter()
                .filter(|(_, vols)| vols.contains(&name))
                .map(|(id, _)| id.clone())
                .collect(),
            name,
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// Volume `name`; NotFound when it does not exist.
pub async fn inspect(client: &Client, state: &StateLayout, name: &str) -> Result<VolumeInfo> {
    validate_name(name)?;
    list(client, state)
        .await?
        .into_iter()
        .find(|v| v.name == name)
        .ok_or_else(|| Error::NotFound(format!("volume {name:?} (see `nestcache volume ls`)")))
}

/// Removes volume `name` and its content; refuses while a nested container uses it.
pub async fn remove(client: &Client, state: &StateLayout, name: &str) -> Result<()> {
    let v = inspect(client, state, name).await?;
    if !v.used_by.is_empty() {
        return Err(Error::Invalid(format!(
            "volume {name} is in use by {} (remove {} first)",
            v.used_by.join(", "),
            if v.used_by.len() == 1 { "it" } else { "them" }
        )));
    }
    let dir = volumes_dir(state).join(name);
    std::fs::remove_dir_all(&dir).ctx(|| format!("remove volume {name} at {}", dir.display()))
}

/// (container id, volumes it uses) for every nested container.
async fn users(client: &Client) -> Result<Vec<(String, Vec<String>)>> {
    let found = client
        .list_by_labels(&[(labels::ROLE, labels::ROLE_NESTED)])
        .await?;
    Ok(found
        .into_iter()
        .map(|c| {
            let vols = names_in_label(c.label(labels::VOLUMES));
            (c.id, vols)
        })
        .collect())
}

/// The named volumes a container's VOLUMES label records (comma-separated).
pub fn names_in_label(label: Option<&str>) -> Vec<String> {
    label
        .map(|v| {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `-v SOURCE:…`: a named volume when SOURCE is not a path.
pub fn is_volume_name(source: &str) -> bool {
    !source.starts_with('/')
        && !source.starts_with('.')
        && Path::new(source).components().nth(1).is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        for ok in ["data", "a.b-c_d", "0"] {
            validate_name(ok).unwrap();
            assert!(is_volume_name(ok));
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        assert!(!is_volume_name("/abs") && !is_volume_name("./rel") && !is_volume_name("a/b"));
        let state = StateLayout::new("/s");
        assert_eq!(mountpoint(&state, "v"), PathBuf::from("/s/volumes/v/_data"));
        let dir = tempfile::tempdir().unwrap();
        let state = StateLayout::new(dir.path());
        let p = ensure(&state, "v").unwrap();
        assert!(p.is_dir());
        assert!(ensure(&state, "../x").is_err());
    }
}

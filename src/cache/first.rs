//! Finding the *first container*: the containerd container this very process runs in.
//!
//! Its id comes from `/proc/self/cgroup` (runc names the cgroup after the container:
//! `/<namespace>/<id>` for ctr and nestcache, `…/<id>` or `…/cri-containerd-<id>.scope`
//! under Kubernetes), or, when a cgroup namespace hides the path, from
//! `/proc/self/mountinfo`, whose bind sources name it: CRI's
//! `…/io.containerd.grpc.v1.cri/sandboxes/<sandbox-id>/hostname` (resolv.conf, hosts),
//! `…/io.containerd.grpc.v1.cri/containers/<id>/…`, a shim bundle
//! `…/io.containerd.runtime.v2.task/<namespace>/<id>/…`. Whatever is found is only a
//! candidate until containerd knows a container of that id (namespaces: the configured
//! one, then CRI's `k8s.io`, then one the cgroup path names); a sandbox id leads to the
//! sandbox's container that has a bind mount at the target path.

use std::path::Path;

use crate::containerd::{validate_id, Client, Container};
use crate::Result;

/// containerd's CRI plugin keeps every Kubernetes container in this namespace.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// CRI's labels and annotations that tie a container to its pod sandbox.
const CRI_KIND: &str = "io.cri-containerd.kind";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// A container id this process may run in, as /proc says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Candidate {
    /// A container id, with the namespace the path names, if it does.
    Container {
        id: String,
        namespace: Option<String>,
    },
    /// A CRI pod sandbox id: the container is one of the sandbox's.
    Sandbox(String),
}

impl std::fmt::Display for Candidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Candidate::Container { id, .. } => write!(f, "{id}"),
            Candidate::Sandbox(id) => write!(f, "sandbox {id}"),
        }
    }
}

/// The candidates `/proc/self/cgroup` and `/proc/self/mountinfo` name, cgroup first.
pub(crate) fn candidates(cgroup: &str, mountinfo: &str) -> Vec<Candidate> {
    let mut out = Vec::new();
    let mut push = |c: Candidate| {
        if !out.contains(&c) {
            out.push(c);
        }
    };
    for line in cgroup.lines() {
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let Some((last, parents)) = segs.split_last() else {
            continue;
        };
        let id = cgroup_id(last);
        let namespace = parents
            .last()
            .filter(|n| validate_id("namespace", n).is_ok())
            .map(|n| n.to_string());
        if validate_id("container id", id).is_ok() {
            push(Candidate::Container {
                id: id.to_string(),
                namespace,
            });
        }
    }
    for line in mountinfo.lines() {
        // mountinfo: id parent major:minor root mountpoint ...; root is the source path
        // within its filesystem.
        let Some(root) = line.split(' ').nth(3) else {
            continue;
        };
        if let Some(c) = from_bind_source(root) {
            push(c);
        }
    }
    out
}

/// The container id in a cgroup's last path segment.
fn cgroup_id(seg: &str) -> &str {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    ["cri-containerd-", "docker-", "crio-", "libpod-"]
        .iter()
        .find_map(|p| seg.strip_prefix(p))
        .unwrap_or(seg)
}

/// A candidate from a bind source path that names a containerd object.
fn from_bind_source(root: &str) -> Option<Candidate> {
    let segs: Vec<&str> = root.split('/').collect();
    let after = |marker: &str, n: usize| -> Option<Vec<&str>> {
        let i = segs.iter().position(|s| *s == marker)?;
        let rest = segs.get(i + 1..i + 1 + n)?;
        rest.iter()
            .all(|s| validate_id("id", s).is_ok())
            .then(|| rest.to_vec())
    };
    if let Some(rest) = after("io.containerd.runtime.v2.task", 2) {
        return Some(Candidate::Container {
            id: rest[1].to_string(),
            namespace: Some(rest[0].to_string()),
        });
    }
    let cri = segs
        .iter()
        .position(|s| *s == "io.containerd.grpc.v1.cri")?;
    match (segs.get(cri + 1), segs.get(cri + 2)) {
        (Some(&"sandboxes"), Some(id)) if validate_id("id", id).is_ok() => {
            Some(Candidate::Sandbox(id.to_string()))
        }
        (Some(&"containers"), Some(id)) if validate_id("id", id).is_ok() => {
            Some(Candidate::Container {
                id: id.to_string(),
                namespace: Some(CRI_NAMESPACE.to_string()),
            })
        }
        _ => None,
    }
}

/// The first container as containerd knows it, and a client in its namespace.
pub(crate) struct Found {
    pub client: Client,
    pub container: Container,
}

/// Reads /proc and asks containerd. `Ok(Err(what))`: not found, `what` says where nestcache
/// looked.
pub(crate) async fn find(
    client: &Client,
    path: &Path,
) -> Result<std::result::Result<Found, String>> {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cands = candidates(&read("/proc/self/cgroup"), &read("/proc/self/mountinfo"));
    if cands.is_empty() {
        return Ok(Err(
            "neither /proc/self/cgroup nor /proc/self/mountinfo names a container id".into(),
        ));
    }
    let mut tried = Vec::new();
    for cand in &cands {
        let hint = match cand {
            Candidate::Container { namespace, .. } => namespace.as_deref(),
            Candidate::Sandbox(_) => None,
        };
        let mut seen = Vec::new();
        for ns in [client.namespace(), CRI_NAMESPACE].into_iter().chain(hint) {
            if seen.contains(&ns) {
                continue;
            }
            seen.push(ns);
            let c = client.with_namespace(ns)?;
            let hit = match cand {
                Candidate::Container { id, .. } => c.get_container(id).await?,
                Candidate::Sandbox(sid) => sandbox_member(&c, sid, path).await?,
            };
            if let Some(container) = hit {
                return Ok(Ok(Found {
                    client: c,
                    container,
                }));
            }
        }
        tried.push(format!("{cand} (namespaces {})", seen.join(", ")));
    }
    Ok(Err(format!(
        "containerd knows no container named by /proc/self/cgroup or mountinfo: tried {}",
        tried.join("; ")
    )))
}

/// The container of CRI sandbox `sid` that has a bind mount at `path` (the first one
/// when several have; they all bind the same host dir, or the caller finds out).
async fn sandbox_member(client: &Client, sid: &str, path: &Path) -> Result<Option<Container>> {
    let members = client.list_by_labels(&[(CRI_KIND, "container")]).await?;
    Ok(members.into_iter().find(|c| {
        c.spec().is_ok_and(|s| {
            let in_sandbox = s
                .annotations()
                .as_ref()
                .and_then(|a| a.get(CRI_SANDBOX_ID))
                .is_some_and(|v| v == sid);
            in_sandbox && bind_at(&s, path).is_some()
        })
    }))
}

/// The bind mount of `spec` at `path`: its source and whether it is read-only.
pub(crate) fn bind_at(spec: &oci_spec::runtime::Spec, path: &Path) -> Option<(String, bool)> {
    let mounts = spec.mounts().as_ref()?;
    // The last mount at a destination is the one that shows.
    let m = mounts.iter().rev().find(|m| m.destination() == path)?;
    let opts = m.options().clone().unwrap_or_default();
    let bind =
        m.typ().as_deref() == Some("bind") || opts.iter().any(|o| o == "bind" || o == "rbind");
    let source = m.source().as_ref()?.to_str()?.to_string();
    bind.then(|| (source, opts.iter().any(|o| o == "ro")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(id: &str, ns: Option<&str>) -> Candidate {
        Candidate::Container {
            id: id.into(),
            namespace: ns.map(String::from),
        }
    }

    #[test]
    fn cgroup_paths_of_ctr_cri_and_systemd() {
        let hex = "a".repeat(64);
        let cg = format!(
            "12:pids:/nestcache/first-1\n0::/\n\
             4:memory:/kubepods/besteffort/pod1234/{hex}\n\
             1:name=systemd:/kubepods.slice/kubepods-pod1.slice/cri-containerd-{hex}.scope\n\
             3:cpu:/bad..name\n"
        );
        assert_eq!(
            candidates(&cg, ""),
            vec![
                container("first-1", Some("nestcache")),
                container(&hex, Some("pod1234")),
                container(&hex, Some("kubepods-pod1.slice")),
            ]
        );
    }

    #[test]
    fn mountinfo_bind_sources_of_cri_and_the_shim() {
        let sb = "b".repeat(64);
        let mi = format!(
            "100 90 0:50 / / rw,relatime - overlay overlay rw,upperdir=/var/lib/containerd/io.containerd.snapshotter.v1.overlayfs/snapshots/12/fs\n\
             101 100 8:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{sb}/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n\
             102 100 8:1 /var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/{sb}/resolv.conf /etc/resolv.conf rw - ext4 /dev/sda1 rw\n\
             103 100 0:30 /containerd/io.containerd.runtime.v2.task/default/job-7/work /w rw - tmpfs tmpfs rw\n\
             104 100 8:1 /io.containerd.grpc.v1.cri/containers/c-1/volumes/x /v rw - ext4 /dev/sda1 rw\n\
             105 100 8:1 /io.containerd.grpc.v1.cri/sandboxes/../hostname /etc/x rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(
            candidates("0::/\n", &mi),
            vec![
                Candidate::Sandbox(sb.clone()),
                container("job-7", Some("default")),
                container("c-1", Some(CRI_NAMESPACE)),
            ]
        );
    }

    #[test]
    fn nothing_on_the_host() {
        assert!(candidates("0::/\n", "22 1 8:1 / / rw - ext4 /dev/sda1 rw\n").is_empty());
        assert!(candidates("garbage", "x").is_empty());
    }

    #[test]
    fn bind_at_picks_the_last_bind_at_the_path() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/cache", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/cache", "type": "bind", "source": "/srv/c", "options": ["rbind", "ro"]},
                {"destination": "/other", "source": "/srv/o", "options": ["bind"]},
                {"destination": "/hidden", "source": "/srv/h", "options": ["bind"]},
                {"destination": "/hidden", "type": "tmpfs", "source": "tmpfs"}
            ]
        }))
        .unwrap();
        assert_eq!(
            bind_at(&spec, Path::new("/cache")),
            Some(("/srv/c".into(), true))
        );
        assert_eq!(
            bind_at(&spec, Path::new("/other")),
            Some(("/srv/o".into(), false))
        );
        assert_eq!(bind_at(&spec, Path::new("/nope")), None);
        assert_eq!(bind_at(&spec, Path::new("/hidden")), None, "a tmpfs on top");
    }
}

//! A nested container's network as the run flow needs it: planned before anything
//! starts (ports claimed), attached once the container exists, and the reaper that
//! releases networks nobody will.

use std::collections::HashSet;
use std::path::PathBuf;

use crate::cache::CacheInfo;
use crate::containerd::{labels, Client, TaskStatus};
use crate::error::{Error, Result};
use crate::layout::StateLayout;
use crate::network::{self, NetLayout, NetMode, NetworkOptions, Prepared};

/// What the spec gets for the container's network.
#[derive(Default)]
pub struct Plan {
    /// The namespace to join (None: a new one, or the host's).
    pub netns: Option<PathBuf>,
    /// Host files to bind at /etc/hosts, /etc/resolv.conf, /etc/hostname.
    pub etc_mounts: Vec<(PathBuf, PathBuf)>,
    /// Set for `--net bridge`: attach it once the container exists.
    pub prepared: Option<Prepared>,
}

/// Plans the network of `id` for `mode`. For `bridge` this claims its host ports: a port
/// in use fails here, before anything of the container exists.
#[allow(clippy::too_many_arguments)]
pub async fn plan(
    client: &Client,
    state: &StateLayout,
    cache: &CacheInfo,
    id: &str,
    hostname: &str,
    mode: &NetMode,
    options: &NetworkOptions,
    exposed: &[String],
) -> Result<Plan> {
    let layout = NetLayout::new(state.root());
    let publishes = !options.publish.is_empty() || options.publish_all;
    match mode {
        NetMode::Bridge => {
            let prepared = network::prepare(
                &layout,
                network::Request {
                    namespace: client.namespace(),
                    cache: &cache.name,
                    id,
                    hostname,
                    options,
                    exposed,
                },
            )
            .await?;
            Ok(Plan {
                netns: Some(prepared.netns().to_path_buf()),
                etc_mounts: prepared.etc_mounts(),
                prepared: Some(prepared),
            })
        }
        _ if publishes => Err(Error::Invalid(
            "-p/-P publish ports of a bridge network: they need --net bridge".into(),
        )),
        NetMode::Container(other) => join(client, &layout, other).await,
        NetMode::None | NetMode::Host => Ok(Plan::default()),
    }
}

/// `--net container:ID`: the other container's namespace (and its /etc files when it is
/// on a bridge), as a pod's containers share the sandbox's.
async fn join(client: &Client, layout: &NetLayout, other: &str) -> Result<Plan> {
    let target = super::manage::get(client, other).await?;
    if let Some(r) = network::lookup(layout, &target.id) {
        return Ok(Plan {
            netns: Some(r.netns.clone()),
            etc_mounts: network::attach::etc_mounts(&layout.container_dir(&target.id)),
            prepared: None,
        });
    }
    match client.task_state(&target.id).await? {
        Some(t) if t.status == TaskStatus::Running => Ok(Plan {
            netns: Some(PathBuf::from(format!("/proc/{}/ns/net", t.pid))),
            etc_mounts: Vec::new(),
            prepared: None,
        }),
        _ => Err(Error::Invalid(format!(
            "--net container:{other}: {other} is not running, so it has no network namespace to join"
        ))),
    }
}

/// Releases the networks of nested containers whose task is gone and of caches that are
/// gone. Cheap when nothing is attached; failures are logged, never fatal.
pub async fn reap(client: &Client, state: &StateLayout) -> Vec<String> {
    let layout = NetLayout::new(state.root());
    if !network::reap::has_any(&layout) {
        return Vec::new();
    }
    match live(client).await {
        Ok((ids, caches)) => {
            let running = async |id: &str| match client.task_state(id).await {
                Ok(t) => t.is_some_and(|t| t.status != TaskStatus::Stopped),
                // Unknown is not dead.
                Err(_) => true,
            };
            network::reap::reap(&layout, client.namespace(), &ids, &caches, running).await
        }
        Err(e) => {
            tracing::warn!("reaping networks: {e}");
            Vec::new()
        }
    }
}

/// Nested containers with a task that has not stopped, and every cache's name.
async fn live(client: &Client) -> Result<(HashSet<String>, HashSet<String>)> {
    let ids: HashSet<String> = client
        .running_with_labels(&[(labels::ROLE, labels::ROLE_NESTED)])
        .await?
        .into_iter()
        .collect();
    let caches = crate::cache::list_containers(client)
        .await?
        .iter()
        .filter_map(|c| c.label(labels::NAME).map(str::to_string))
        .collect();
    Ok((ids, caches))
}

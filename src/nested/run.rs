//! `nestcache run`: from a cache's name to a running nested container and its exit code.
//!
//! Order matters: the FIFOs' read ends are open before the task is created (the shim
//! opens their other ends while creating it); the mount is verified while the task is
//! created but not started (its mounts are in place, the user's process has not run and
//! cannot race the check: a nested container never starts on an empty or wrong mount);
//! the wait call is in flight before the task starts.

use std::time::Duration;

use super::exec_error::{classify, ExecError};
use super::image::{self, PreparedImage};
use super::network::{self as net, Plan};
use super::phases::Phases;
use super::spec::{self, CacheMount, SpecOptions};
use super::verify::{verify_mount, Verification};
use super::{cleanup, generate_id, labels_for, ContainerPaths, Runtime};
use crate::cache;
use crate::containerd::io::{Fifos, RawTerminal};
use crate::containerd::{validate_id, Client, NewContainer, NewTask};
use crate::error::{Error, IoContext, Result};
use crate::image::PlatformSpec;
use crate::labels;
use crate::layout::StateLayout;
use crate::network::{self, NetLayout, NetworkOptions, Prepared};
use crate::rootfs::Overlay;
use crate::signals::{InterruptedError, Signals};
use serde::Serialize;

/// Everything `run` is asked for.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub cache: String,
    pub image: String,
    /// Stage this source into the cache's store first.
    pub stage: Option<String>,
    /// Registry options for a `docker://` `stage` source.
    pub source_options: crate::source::SourceOptions,
    pub name: Option<String>,
    /// Spec flags (env, workdir, user, volumes, entrypoint, command, net, read-only, tty);
    /// `id`, `namespace`, `cache_mount` and `annotations` are filled in by `run`.
    pub spec: SpecOptions,
    pub interactive: bool,
    pub detach: bool,
    pub rm: bool,
    pub rm_cache: bool,
    pub mount_cache: bool,
    pub cache_rw: bool,
    pub runtime: Runtime,
    /// `--shim-linger`: how long nestcache's shim stays after the cache's last nested
    /// container (the shim's `linger_ms` option); None: the shim's default.
    pub shim_linger_ms: Option<u64>,
    /// `--label`/`--label-file` (no `io.nestcache.` keys) and nestcache's own extra
    /// labels (the named volumes used, stop signal and timeout).
    pub labels: std::collections::HashMap<String, String>,
    /// `-v NAME:/p`, `-v /p`, `--mount type=volume`: made (and filled from the image) by
    /// `run`, with the image config's `Volumes` as anonymous ones.
    pub volumes: Vec<super::volumes::VolumeRequest>,
    /// `--volumes-from ID[:ro|:rw]`: that nested container's bind mounts and volumes.
    pub volumes_from: Vec<String>,
    /// `--cidfile`: written with the id once the container exists (must not exist).
    pub cidfile: Option<std::path::PathBuf>,
    /// `--pull`: when `stage` is staged.
    pub pull: image::Pull,
    /// `--platform`: refuse an image of another platform (and pick this one from an
    /// index); without it a foreign image runs, with a [`Notice::ForeignPlatform`].
    pub platform: Option<PlatformSpec>,
    /// Ports, names, DNS and CNI dirs (the mode is `spec.net`).
    pub network: NetworkOptions,
}

/// What `run` tells its caller while it works, before the process starts.
#[derive(Debug)]
pub enum Notice<'a> {
    /// The container sees the cache's content (or not: then the run fails).
    Verified(&'a Verification),
    /// No `--platform` was given and the image's platform is not the host's (Docker
    /// warns the same way); the kernel may still run it (binfmt_misc, or arm on arm64).
    ForeignPlatform {
        image: &'a PlatformSpec,
        host: &'a PlatformSpec,
    },
}

/// How a run ended.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub id: String,
    pub cache: String,
    pub image: String,
    pub manifest_digest: String,
    /// The process's exit code (128 + signal if a signal ended it); None when detached.
    pub exit_code: Option<u32>,
    pub verification: Option<Verification>,
    pub removed: bool,
    pub cache_removed: bool,
}

/// Runs a nested container. `notice` is told what the caller may report as soon as it is
/// known (before the process starts): the verification, a foreign platform.
pub async fn run(
    client: &Client,
    state: &StateLayout,
    opts: RunOptions,
    mut notice: impl FnMut(Notice<'_>),
) -> Result<RunReport> {
    if opts.detach && opts.rm_cache {
        return Err(Error::Invalid(
            "--rm-cache cannot be combined with --detach: the cache would go while the container still runs".into(),
        ));
    }
    if opts.detach && opts.interactive {
        return Err(Error::Invalid(
            "-i cannot be combined with --detach: a detached container has no stdin".into(),
        ));
    }
    // From here on SIGINT/SIGTERM/SIGHUP no longer kill nestcache: before the task starts
    // they abort the run (cleaning up), afterwards they are passed on to the task.
    let mut phases = Phases::new();
    let mut signals = Signals::install()?;
    // Its keeper's task state is not needed to run in it: one round trip less.
    let cache = cache::find_without_status(client, &opts.cache).await?;
    phases.mark("find cache");
    if cache.expired {
        return Err(Error::Invalid(format!(
            "cache {:?} expired at {} (extend it with `nestcache cache touch {} --ttl ...`)",
            cache.name,
            cache.expires.as_deref().unwrap_or("?"),
            cache.name
        )));
    }
    let id = match &opts.name {
        Some(n) => {
            validate_id("container name", n)?;
            n.clone()
        }
        None => generate_id()?,
    };
    if client.get_container(&id).await?.is_some() {
        return Err(Error::Invalid(format!(
            "a container named {id:?} already exists in namespace {} (remove it with `nestcache rm {id}`)",
            client.namespace()
        )));
    }

    // The image is leased to the container from the moment it is resolved: a concurrent
    // `images rm` + `store gc` cannot take it away. Until the container exists, our own
    // pid in the lease keeps gc from reclaiming it.
    let lease = super::cli_lease(client, &id);
    let request = image::ImageRequest {
        image: opts.image.clone(),
        stage: opts.stage.clone().map(|s| (s, opts.source_options.clone())),
        pull: opts.pull,
        platform: opts.platform.clone(),
    };
    let prepared = tokio::select! {
        r = image::prepare(&cache.content_dir, &request, &lease) => r,
        s = signals.recv() => Err(interrupted(s)),
    };
    let image = match prepared {
        Ok(image) => image,
        Err(e) => {
            release_lease_after_failure(client, &id, &cache);
            return Err(e);
        }
    };
    phases.mark("check id, prepare image");
    let host = PlatformSpec::host();
    if opts.platform.is_none() && !host.matches(&image.platform) {
        notice(Notice::ForeignPlatform {
            image: &image.platform,
            host: &host,
        });
    }
    let mut opts = opts;
    for from in &opts.volumes_from.clone() {
        let (vols, names) = match volumes_from(client, from).await {
            Ok(found) => found,
            Err(e) => {
                release_lease_after_failure(client, &id, &cache);
                return Err(e);
            }
        };
        opts.spec.volumes.extend(vols);
        add_volume_names(&mut opts.labels, &names);
    }
    // Ports are claimed here: one in use fails the run before anything of it exists.
    let mut plan = match plan_network(client, state, &cache, &id, &image, &opts).await {
        Ok(plan) => plan,
        Err(e) => {
            release_lease_after_failure(client, &id, &cache);
            return Err(e);
        }
    };
    phases.mark("plan network");
    let volumes = match make_volumes(state, &image, &mut opts) {
        Ok(v) => v,
        Err(e) => {
            drop(plan.prepared.take());
            if let Err(c) = network::detach(&NetLayout::new(state.root()), &id).await {
                tracing::warn!("releasing the network of {id}: {c}");
            }
            release_lease_after_failure(client, &id, &cache);
            return Err(e);
        }
    };
    let mut argv0 = String::new();
    let created = match build_spec(client, &cache, &id, &image, &opts, &plan) {
        // Creating the container record claims the id (containerd refuses a second one);
        // only then is the container dir ours to make, and to remove on failure.
        Ok(spec) => {
            argv0 = spec
                .process()
                .as_ref()
                .and_then(|p| p.args().as_ref())
                .and_then(|a| a.first().cloned())
                .unwrap_or_default();
            phases.mark("build spec");
            client
                .create_container(NewContainer {
                    id: id.clone(),
                    labels: opts
                        .labels
                        .clone()
                        .into_iter()
                        .chain(labels_for(&cache, &opts.image, &image, &opts))
                        .collect(),
                    spec,
                    runtime: Some(opts.runtime.containerd_name().to_string()),
                    runtime_options: shim_options(&opts, &cache),
                })
                .await
                .map(drop)
        }
        Err(e) => Err(e),
    };
    if let Err(e) = created {
        super::volumes::remove_anonymous(state, &volumes);
        drop(plan.prepared.take());
        if let Err(c) = network::detach(&NetLayout::new(state.root()), &id).await {
            tracing::warn!("releasing the network of {id}: {c}");
        }
        release_lease_after_failure(client, &id, &cache);
        return Err(e);
    }
    phases.mark("create container");
    let paths = ContainerPaths::new(state, &id);
    let anon = opts.labels.get(labels::ANON_VOLUMES).map(String::as_str);
    if let Some(f) = &opts.cidfile {
        if let Err(e) = write_cidfile(f, &id) {
            let grace = Duration::from_secs(2);
            let _ =
                cleanup::remove_with_volumes(client, &id, &paths, grace, &cache.content_dir, anon)
                    .await;
            return Err(e);
        }
    }
    let target = Target {
        client,
        cache: &cache,
        id: &id,
        paths: &paths,
        image: &image,
        argv0: &argv0,
        volumes: &volumes,
    };
    let result = create_and_run(
        &target,
        &opts,
        plan.prepared.take(),
        &mut signals,
        &mut phases,
        |v| notice(Notice::Verified(v)),
    )
    .await;
    match result {
        Ok(mut report) => {
            if opts.rm && report.exit_code.is_some() {
                cleanup::remove_exited(client, &id, &paths, &cache.content_dir, anon).await?;
                report.removed = true;
                phases.mark("remove task, container, dirs");
            }
            if opts.rm_cache && report.exit_code.is_some() {
                cache::remove(client, &cache, cache::RemoveOptions::default()).await?;
                network::remove_network(
                    &NetLayout::new(state.root()),
                    client.namespace(),
                    &cache.name,
                )
                .await?;
                report.cache_removed = true;
            }
            Ok(report)
        }
        Err(e) => {
            // Nothing half-made stays behind: task, container, overlay dirs, FIFOs.
            let grace = Duration::from_secs(2);
            if let Err(c) =
                cleanup::remove_with_volumes(client, &id, &paths, grace, &cache.content_dir, anon)
                    .await
            {
                tracing::warn!("cleanup after a failed run of {id}: {c}");
            }
            Err(e)
        }
    }
}

/// The container's volumes: those asked for and the image config's `Volumes` no other
/// mount covers (anonymous), created now, mounted by the spec and named in the labels.
fn make_volumes(
    state: &StateLayout,
    image: &PreparedImage,
    opts: &mut RunOptions,
) -> Result<Vec<super::volumes::ResolvedVolume>> {
    let covered: Vec<std::path::PathBuf> = opts
        .spec
        .volumes
        .iter()
        .map(|v| v.container.clone())
        .chain(opts.spec.tmpfs.iter().map(|t| t.target.clone()))
        .chain(opts.volumes.iter().map(|r| r.target.clone()))
        .collect();
    let from_image = image
        .config
        .as_ref()
        .and_then(|c| c.volumes().clone())
        .unwrap_or_default();
    let mut requests = opts.volumes.clone();
    requests.extend(super::volumes::from_image(&from_image, &covered)?);
    let made = super::volumes::resolve(state, &requests)?;
    let names: Vec<String> = made.iter().map(|v| v.name.clone()).collect();
    add_volume_names(&mut opts.labels, &names);
    let anonymous: Vec<&str> = made
        .iter()
        .filter(|v| v.anonymous)
        .map(|v| v.name.as_str())
        .collect();
    if !anonymous.is_empty() {
        opts.labels
            .insert(labels::ANON_VOLUMES.to_string(), anonymous.join(","));
    }
    for v in &made {
        opts.spec.volumes.push(spec::Volume {
            host: v.dir.clone(),
            container: v.request.target.clone(),
            read_only: v.request.read_only,
        });
    }
    Ok(made)
}

/// A run that failed before its container existed leaves no lease behind.
fn release_lease_after_failure(client: &Client, id: &str, cache: &cache::CacheInfo) {
    if let Err(r) = super::release_lease(client, id, &cache.content_dir) {
        tracing::warn!("releasing the lease of {id} after a failed run: {r}");
    }
}

/// nestcache's shim assembles the rootfs from the store an annotation names, and only
/// from stores under the roots its options allow: this run's is the cache's content dir.
fn shim_options(opts: &RunOptions, cache: &cache::CacheInfo) -> Option<prost_types::Any> {
    let mut options = serde_json::json!({ "store_roots": [&cache.content_dir] });
    if let Some(ms) = opts.shim_linger_ms {
        options["linger_ms"] = ms.into();
    }
    (opts.runtime == Runtime::Shim).then(|| prost_types::Any {
        type_url: labels::SHIM_OPTIONS_TYPE_URL.to_string(),
        value: options.to_string().into_bytes(),
    })
}

/// The runtime spec: image config + flags + the cache mount, and for the shim runtime the
/// annotations that tell it which store and image to assemble the rootfs from.
fn build_spec(
    client: &Client,
    cache: &cache::CacheInfo,
    id: &str,
    image: &PreparedImage,
    opts: &RunOptions,
    plan: &Plan,
) -> Result<oci_spec::runtime::Spec> {
    let mut spec_opts = opts.spec.clone();
    spec_opts.id = id.to_string();
    spec_opts.netns_path = plan.netns.clone();
    spec_opts.etc_mounts = plan.etc_mounts.clone();
    spec_opts.namespace = client.namespace().to_string();
    spec_opts.cache_mount = opts.mount_cache.then(|| CacheMount {
        content_dir: cache.content_dir.clone(),
        target: cache.path.clone(),
        read_write: opts.cache_rw,
    });
    if opts.runtime == Runtime::Runc {
        // The cache's keeper already runs under a runc v2 shim; sharing it saves starting
        // a shim process per nested container (most of a warm start's cost).
        spec_opts
            .annotations
            .insert(labels::RUNC_SHIM_GROUP.into(), cache.shim_group());
    }
    if opts.runtime == Runtime::Shim {
        // Likewise for nestcache's shim: the cache's nested containers share one.
        spec_opts
            .annotations
            .insert(labels::NESTCACHE_SHIM_GROUP.into(), cache.shim_group());
        spec_opts.annotations.insert(
            labels::ANNOTATION_STORE.into(),
            cache.content_dir.to_string_lossy().into_owned(),
        );
        spec_opts.annotations.insert(
            labels::ANNOTATION_IMAGE.into(),
            image.manifest_digest.to_string(),
        );
    }
    spec::build(image.config.as_ref(), &image.users, &spec_opts)
}

/// The network plan of `id`: its hostname as the spec will set it, `-P`'s ports from the
/// image config.
async fn plan_network(
    client: &Client,
    state: &StateLayout,
    cache: &cache::CacheInfo,
    id: &str,
    image: &PreparedImage,
    opts: &RunOptions,
) -> Result<Plan> {
    let hostname = opts
        .spec
        .hostname
        .clone()
        .unwrap_or_else(|| spec::short_hostname(id));
    let mut exposed = image
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports().clone())
        .unwrap_or_default();
    // A map in the config: the same order every run.
    exposed.sort();
    net::plan(
        client,
        state,
        cache,
        id,
        &hostname,
        &opts.spec.net,
        &opts.network,
        &exposed,
    )
    .await
}

/// What one run works on.
struct Target<'a> {
    client: &'a Client,
    cache: &'a cache::CacheInfo,
    id: &'a str,
    paths: &'a ContainerPaths,
    image: &'a PreparedImage,
    /// The command's first word, for the error when it cannot be invoked.
    argv0: &'a str,
    /// Its volumes, to fill from the image before the task is created.
    volumes: &'a [super::volumes::ResolvedVolume],
}

async fn create_and_run(
    t: &Target<'_>,
    opts: &RunOptions,
    mut network: Option<Prepared>,
    signals: &mut Signals,
    phases: &mut Phases,
    on_verified: impl FnOnce(&Verification),
) -> Result<RunReport> {
    let Target {
        client,
        cache,
        id,
        paths,
        image,
        argv0,
        volumes,
    } = *t;
    // A leftover dir under an id containerd did not know is debris of a crashed run.
    if paths.dir.exists() {
        std::fs::remove_dir_all(&paths.dir)
            .ctx(|| format!("remove stale {}", paths.dir.display()))?;
    }
    std::fs::create_dir_all(&paths.dir).ctx(|| format!("create {}", paths.dir.display()))?;
    let layers = image.layer_dirs.clone();
    let (vols, scratch) = (volumes.to_vec(), paths.dir.join("copy-up"));
    tokio::task::spawn_blocking(move || super::volumes::copy_up(&vols, &layers, &scratch))
        .await
        .map_err(|e| Error::Other(format!("volume copy-up failed: {e}")))??;
    if !volumes.is_empty() {
        phases.mark("volume copy-up");
    }
    let mut rootfs = Vec::new();
    if opts.runtime == Runtime::Runc {
        // A --rm container's upper dir goes with it: no need to sync it, ever.
        let overlay = Overlay::prepare(&paths.dir, &image.layer_dirs)?.volatile(opts.rm);
        rootfs.push(overlay.to_containerd_mount());
    }

    // Stdio: FIFOs opened before the task exists, or the log file for a detached task.
    let tty = opts.spec.tty;
    let (stdio, fifos) = if opts.detach {
        // With -t the shim copies the console to the same log, as nerdctl's `-d -t` does.
        let mut stdio = super::detached_stdio(paths);
        stdio.terminal = tty;
        (stdio, None)
    } else {
        let fifos = Fifos::create(&paths.dir, opts.interactive, tty)?;
        let open = fifos.open()?;
        (fifos.stdio(), Some((fifos, open)))
    };
    phases.mark("overlay dirs, fifos");
    // The namespace exists before the task joins it; CNI ADD then runs while runc
    // creates the task (its process does not run until start, so it never sees an
    // unconfigured network) instead of before it: ADD costs a start almost nothing.
    if let Some(n) = network.as_ref() {
        n.create_namespace()?;
    }
    let create = client.create_task(NewTask {
        container_id: id.to_string(),
        rootfs,
        stdin: stdio.stdin,
        stdout: stdio.stdout,
        stderr: stdio.stderr,
        terminal: stdio.terminal,
    });
    let add = async {
        match network.as_mut() {
            Some(n) => n.add().await,
            None => Ok(()),
        }
    };
    let (created, added) = tokio::join!(create, add);
    let pid = created.map_err(|e| start_error(id, argv0, "could not be created", e))?;
    added?;
    phases.mark("create task, CNI ADD");

    let verification = if opts.mount_cache {
        let v = verify_mount(pid, &cache.path, &cache.content_dir).await?;
        on_verified(&v);
        Some(v.into_result()?)
    } else {
        None
    };
    phases.mark("verify mount");

    let mut report = RunReport {
        id: id.to_string(),
        cache: cache.name.clone(),
        image: opts.image.clone(),
        manifest_digest: image.manifest_digest.to_string(),
        exit_code: None,
        verification,
        removed: false,
        cache_removed: false,
    };

    if let Some(s) = signals.pending().await {
        return Err(interrupted(s));
    }
    let Some((fifos, open)) = fifos else {
        if opts.rm {
            super::watch::spawn(client, paths, id)?;
        }
        client.start_task(id).await?;
        return Ok(report);
    };
    // Running now: the reaper leaves it alone by its task from here on.
    drop(network);

    let mut copies = open.start();
    let stdin_closed = copies.stdin_closed.take();
    let wait = client.wait_task(id);
    let raw = tty.then(RawTerminal::enable);
    if tty {
        if let Some((w, h)) = RawTerminal::size() {
            let _ = client.resize_task_pty(id, w, h).await;
        }
    }
    if let Err(e) = client.start_task(id).await {
        drop(raw);
        return Err(start_error(id, argv0, "could not start", e));
    }
    phases.mark("start task");
    let target = super::forward::Target {
        id: id.to_string(),
        exec_id: None,
    };
    let exit = super::forward::until_exit(client, target, wait, stdin_closed, signals, tty).await;
    drop(raw);
    let exit = exit?;
    phases.mark("wait for exit");
    // The shim closes the FIFOs once it has passed on all output.
    let copied = copies.wait_output().await;
    fifos.remove();
    copied?;
    phases.mark("drain output");
    report.exit_code = Some(exit.code);
    if !opts.rm {
        // Like `ctr run`: the exited task goes (and its shim with it), the container stays
        // (with its upper dir) until `nestcache rm`; its exit code is kept as a label.
        client.delete_task(id).await?;
        // Like `docker run`: an exited container keeps no address, namespace or ports.
        network::detach(&NetLayout::new(&paths.state_root), id).await?;
        match client
            .update_labels(id, &[(labels::EXIT_CODE, &exit.code.to_string())])
            .await
        {
            // `nestcache rm -f` removed it meanwhile.
            Ok(_) | Err(Error::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

/// `--cidfile`: the id, in a file that must not exist yet (as Docker refuses to overwrite
/// one a running container may still be named by).
fn write_cidfile(path: &std::path::Path, id: &str) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .ctx(|| {
            format!(
                "--cidfile {}: create (it must not exist yet)",
                path.display()
            )
        })?;
    f.write_all(id.as_bytes())
        .ctx(|| format!("--cidfile {}: write", path.display()))
}

/// `--volumes-from ID[:ro|:rw]`: the bind mounts of nested container ID that are its
/// volumes (not the cache, not host files nestcache binds itself), and the named volumes
/// among them.
async fn volumes_from(client: &Client, arg: &str) -> Result<(Vec<spec::Volume>, Vec<String>)> {
    let (from, mode) = match arg.rsplit_once(':') {
        Some((id, m @ ("ro" | "rw"))) => (id, Some(m == "ro")),
        _ => (arg, None),
    };
    let c = super::manage::get(client, from).await?;
    let skip: Vec<std::path::PathBuf> = [
        c.label(labels::PATH).unwrap_or_default(),
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/hostname",
        spec::INIT_PATH,
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    let mut vols = Vec::new();
    for m in c.spec()?.mounts().clone().unwrap_or_default() {
        let opts = m.options().clone().unwrap_or_default();
        if m.typ().as_deref() != Some("bind") || skip.contains(m.destination()) {
            continue;
        }
        let Some(source) = m.source().clone() else {
            continue;
        };
        vols.push(spec::Volume {
            host: source,
            container: m.destination().clone(),
            read_only: mode.unwrap_or(opts.iter().any(|o| o == "ro")),
        });
    }
    let names = super::volumes::names_in_label(c.label(labels::VOLUMES));
    Ok((vols, names))
}

/// Records named volumes in the VOLUMES label (comma-separated, no repeats).
pub fn add_volume_names(labels: &mut std::collections::HashMap<String, String>, names: &[String]) {
    let mut all = super::volumes::names_in_label(labels.get(labels::VOLUMES).map(String::as_str));
    for n in names {
        if !all.contains(n) {
            all.push(n.clone());
        }
    }
    if !all.is_empty() {
        labels.insert(labels::VOLUMES.to_string(), all.join(","));
    }
}

/// A failed task create or start: [`ExecError`] when runc could not invoke the command
/// (so `run` exits 126/127 as Docker does), else the error with what failed.
fn start_error(id: &str, argv0: &str, what: &str, e: Error) -> Error {
    let message = e.to_string();
    match classify(&message) {
        Some(failure) => ExecError {
            id: id.to_string(),
            command: argv0.to_string(),
            failure,
            message,
        }
        .into(),
        None => Error::Other(format!("nested container {id} {what}: {message}")),
    }
}

/// A signal before the task started: the run is undone.
fn interrupted(signal: i32) -> Error {
    InterruptedError {
        what: "run, before its container started".into(),
        signal,
    }
    .into()
}

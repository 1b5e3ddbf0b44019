//! A private containerd WITH the CRI plugin, driven as kubelet drives it (the `k8s-cri`
//! client over containerd's socket): its own root, state, CNI bridge (a name and subnet
//! of its own), network namespaces under its state dir, runtimes `runc` and `nestcache`
//! (the latter written by `nestcache::node`, exactly as a node install writes it), and a
//! pause image made here from busybox-static and imported, so no registry is involved.
//!
//! `restrict_oom_score_adj = true`: this VM's runc cannot write oom_score_adj; a real
//! node does not need it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use nestcache::digest::Digest;
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::images::{self, Blob, OCI_LAYER};
use crate::rootfs::busybox_rootfs;

pub const PAUSE_IMAGE: &str = "localhost/nc-pause:1";
pub const NAMESPACE: &str = "k8s.io";
const SHIM_BINARY: &str = "containerd-shim-nestcache-v2";

pub struct CriContainerd {
    pub dir: PathBuf,
    pub address: String,
    pub bridge: String,
    pub subnet: String,
    pid: u32,
}

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A busybox-static image whose config is `config` (Entrypoint, Cmd, Env, WorkingDir,
/// User...), with `marker` at /etc/nestcache-test, as a `docker save` archive at `out`
/// tagged `tag`.
pub fn busybox_archive(work: &Path, out: &Path, tag: &str, marker: &str, config: Value) {
    let root = work.join(format!("root-{}", tag.replace(['/', ':'], "_")));
    busybox_rootfs(&root);
    for applet in [
        "env", "pwd", "hostname", "ip", "mkdir", "touch", "stat", "head", "dd",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::create_dir_all(root.join("srv/app")).unwrap();
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/:/bin/sh\napp:x:1234:2345:app:/srv/app:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:2345:\n").unwrap();
    std::fs::write(root.join("etc/nestcache-test"), format!("{marker}\n")).unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.follow_symlinks(false);
    b.append_dir_all(".", &root).unwrap();
    let tar = b.into_inner().unwrap();
    let diff = Digest::of(&tar);
    let img = images::build(
        vec![Blob::new(OCI_LAYER, tar)],
        vec![diff],
        arch(),
        |c, _| {
            c["config"] = config;
        },
    );
    images::docker_archive(out, &img, &[tag]);
}

impl CriContainerd {
    /// Starts it and imports the pause image; panics with containerd's log on failure.
    pub fn start() -> CriContainerd {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let dir = tempfile::Builder::new()
            .prefix("nc-cri-")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        // Linux caps interface names at 15 bytes; a subnet per process and instance.
        let bridge = format!("nccri{}x{n}", pid % 100_000);
        let subnet = format!("10.{}.{}.0/24", 200 + (n % 50), pid % 250);
        let mut c = CriContainerd {
            address: dir.join("containerd.sock").display().to_string(),
            dir,
            bridge,
            subnet,
            pid: 0,
        };
        c.write_config();
        c.launch();
        let archive = c.dir.join("pause.tar");
        busybox_archive(
            &c.dir,
            &archive,
            PAUSE_IMAGE,
            "pause",
            json!({"Entrypoint": ["/bin/sleep", "1000000000"]}),
        );
        c.import(&archive);
        c
    }

    fn write_config(&self) {
        let d = self.dir.display();
        let base = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = "{d}/debug.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  # The writable layer's usage is sampled this often (seconds; 10 by default).
  stats_collect_period = 1
  netns_mounts_under_state_dir = true
  enable_selinux = false
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{d}/cni"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
"#
        );
        // The nestcache runtime exactly as `nestcache node install` adds it.
        let mut cfg =
            nestcache::node::Config::parse("cri config", &base, nestcache::node::Layout::V2)
                .expect("parse the test's containerd config");
        cfg.add_runtime().expect("add runtime nestcache");
        // The shim may use stores under this kit's dir (see `store_dir`), as a node's
        // /etc/nestcache/shim.json would allow its own.
        let shim_config = self.dir.join("shim.json");
        let roots = json!({ "store_roots": [self.dir.join("stores")] });
        std::fs::write(&shim_config, roots.to_string()).unwrap();
        cfg.set_shim_config(shim_config.to_str())
            .expect("point the runtime at the shim config");
        std::fs::write(self.dir.join("config.toml"), cfg.render()).unwrap();
        std::fs::create_dir_all(self.dir.join("cni")).unwrap();
        let cni = json!({
            "cniVersion": "0.4.0",
            "name": self.bridge,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": self.subnet}]],
                         "dataDir": format!("{d}/cni-ipam")},
            }],
        });
        std::fs::write(self.dir.join("cni/10-nc.conflist"), cni.to_string()).unwrap();
    }

    fn launch(&mut self) {
        let mut path = std::env::var("PATH").unwrap_or_default();
        if let Some(shim) = built_shim() {
            let bin = self.dir.join("bin");
            std::fs::create_dir_all(&bin).unwrap();
            std::os::unix::fs::symlink(shim, bin.join(SHIM_BINARY)).unwrap();
            path = format!("{}:{path}", bin.display());
        }
        let log = std::fs::File::create(self.dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(self.dir.join("config.toml"))
            .env("PATH", path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start containerd (apt-get install containerd)");
        self.pid = child.id();
        // Reaped by whoever: containerd is stopped by pid in Drop.
        std::mem::forget(child);
        let limit = Instant::now() + Duration::from_secs(20);
        while Instant::now() < limit {
            if self.ctr(&["version"]).status.success() && self.cri_ready() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "CRI containerd did not become ready; log:\n{}",
            self.log_tail()
        );
    }

    fn cri_ready(&self) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let Ok(mut c) = self.client().await else {
                return false;
            };
            c.status(StatusRequest { verbose: false })
                .await
                .is_ok_and(|s| {
                    s.into_inner()
                        .status
                        .is_some_and(|st| st.conditions.iter().all(|c| c.status))
                })
        })
    }

    /// A fresh store dir the shim is allowed to use.
    pub fn store_dir(&self, name: &str) -> PathBuf {
        let d = self.dir.join("stores").join(name);
        std::fs::create_dir_all(d.parent().unwrap()).unwrap();
        d
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default();
        let lines: Vec<_> = log.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    pub fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new("ctr")
            .args(["--address", &self.address, "-n", NAMESPACE])
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Imports a `docker save` archive into namespace k8s.io (unpacked for CRI).
    pub fn import(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", archive.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "ctr import: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub async fn client(&self) -> Result<RuntimeServiceClient<Channel>, String> {
        let ch = containerd_client::connect(&self.address)
            .await
            .map_err(|e| e.to_string())?;
        Ok(RuntimeServiceClient::new(ch))
    }

    /// containerd containers left in k8s.io (sandboxes included).
    pub fn containers(&self) -> Vec<String> {
        let out = self.ctr(&["containers", "ls", "-q"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

impl CriContainerd {
    /// Stops and removes every pod, as kubelet would before the node goes: a test that
    /// failed half-way leaves no shim, container, mount or netns behind.
    fn remove_all_pods(&self) {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let Ok(mut c) = self.client().await else {
                return;
            };
            let Ok(pods) = c
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
            else {
                return;
            };
            for p in pods.into_inner().items {
                let _ = c
                    .stop_pod_sandbox(StopPodSandboxRequest {
                        pod_sandbox_id: p.id.clone(),
                    })
                    .await;
                let _ = c
                    .remove_pod_sandbox(RemovePodSandboxRequest {
                        pod_sandbox_id: p.id,
                    })
                    .await;
            }
        });
    }
}

impl Drop for CriContainerd {
    fn drop(&mut self) {
        self.remove_all_pods();
        if self.pid != 0 {
            // SAFETY: kill/waitpid on the child this kit started.
            unsafe {
                libc::kill(self.pid as i32, libc::SIGTERM);
                let limit = Instant::now() + Duration::from_secs(10);
                while libc::waitpid(self.pid as i32, std::ptr::null_mut(), libc::WNOHANG) == 0 {
                    if Instant::now() > limit {
                        libc::kill(self.pid as i32, libc::SIGKILL);
                        libc::waitpid(self.pid as i32, std::ptr::null_mut(), 0);
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        // The bridge is the kit's own, by its unique name; pods' veths went with them.
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
        if std::env::var_os("NC_KEEP_CRI").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The shim binary beside the test binary, if it is built.
fn built_shim() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let shim = exe.parent()?.parent()?.join(SHIM_BINARY);
    shim.is_file().then_some(shim)
}

/// A pod as kubelet describes it: name, uid and namespace unique to the test.
/// CreateContainer + StartContainer of `ctr` in pod `pod`, as kubelet does; its id.
pub async fn start_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: &PodSandboxConfig,
    ctr: ContainerConfig,
) -> String {
    let id = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(ctr),
            sandbox_config: Some(config.clone()),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    c.start_container(StartContainerRequest {
        container_id: id.clone(),
    })
    .await
    .expect("StartContainer");
    id
}

pub fn pod_config(name: &str, annotations: &[(&str, &str)]) -> PodSandboxConfig {
    let uid = crate::unique(name);
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: String::new(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container of `image`, with what the pod sets (command, args, env, working dir).
pub fn container_config(name: &str, image: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(kubelet_namespaces()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's defaults (no shareProcessNamespace): the pod's network and IPC, a PID
/// namespace per container (the proto's zero value would be the pod's).
pub fn kubelet_namespaces() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Pod as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

pub fn env(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    pairs
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

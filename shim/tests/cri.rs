//! The shim driven through containerd's CRI plugin the way kubelet drives it: a pod with
//! runtime handler `nestcache`, app containers from a nestcache store, ExecSync, and
//! nothing left once the pod is removed. The CRI containerd is the test kit's own.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::json;
use testkit::cri::{self, CriContainerd};
use tonic::transport::Channel;

const DECLARED: &str = "localhost/nc-declared:1";
const HANDLER: &str = "nestcache";

type Client = RuntimeServiceClient<Channel>;

/// A store holding `app` (busybox with a config unlike the declared image's), the
/// declared image imported into the CRI containerd.
struct Images {
    _work: tempfile::TempDir,
    store: std::path::PathBuf,
}

fn images(cri: &CriContainerd) -> Images {
    let work = tempfile::tempdir().unwrap();
    let declared = work.path().join("declared.tar");
    cri::busybox_archive(
        work.path(),
        &declared,
        DECLARED,
        "declared",
        json!({"Entrypoint": ["/bin/sleep"], "Cmd": ["999"], "Env": ["PATH=/bin", "FOO=declared", "DECLARED_ONLY=1"], "WorkingDir": "/tmp"}),
    );
    cri.import(&declared);
    let app = work.path().join("app.tar");
    cri::busybox_archive(
        work.path(),
        &app,
        "localhost/nc-app:1",
        "store",
        json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["sleep 1000; exit 0"], "Env": ["PATH=/bin:/sbin", "FOO=store", "STORE_ONLY=1"], "WorkingDir": "/srv/app", "User": "app"}),
    );
    let store = cri.store_dir("store");
    testkit::images::ok(&[
        "stage",
        &format!("docker-archive:{}", app.display()),
        "--store",
        store.to_str().unwrap(),
        "--ref",
        "app",
    ]);
    Images { _work: work, store }
}

async fn run_pod(c: &mut Client, config: &PodSandboxConfig) -> String {
    c.run_pod_sandbox(RunPodSandboxRequest {
        config: Some(config.clone()),
        runtime_handler: HANDLER.into(),
    })
    .await
    .expect("RunPodSandbox")
    .into_inner()
    .pod_sandbox_id
}

async fn exec(c: &mut Client, id: &str, cmd: &[&str]) -> (i32, String, String) {
    let r = c
        .exec_sync(ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 10,
        })
        .await;
    let r = match r {
        Ok(r) => r.into_inner(),
        Err(e) => {
            let st = c
                .container_status(ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: false,
                })
                .await
                .map(|s| format!("{:?}", s.into_inner().status));
            panic!("ExecSync {cmd:?}: {e:?}; container: {st:?}");
        }
    };
    (
        r.exit_code,
        String::from_utf8_lossy(&r.stdout).into_owned(),
        String::from_utf8_lossy(&r.stderr).into_owned(),
    )
}

async fn sh(c: &mut Client, id: &str, script: &str) -> String {
    let (code, out, err) = exec(c, id, &["/bin/sh", "-c", script]).await;
    assert_eq!(code, 0, "{script}: {out}{err}");
    out
}

async fn state(c: &mut Client, id: &str) -> i32 {
    c.container_status(ContainerStatusRequest {
        container_id: id.into(),
        verbose: false,
    })
    .await
    .expect("ContainerStatus")
    .into_inner()
    .status
    .expect("status")
    .state
}

/// A container whose execs may read PID 1's environ and cwd when PID 1 runs as another
/// user (as the store image's User makes it): CAP_SYS_PTRACE.
fn inspectable(name: &str) -> ContainerConfig {
    let mut c = cri::container_config(name, DECLARED);
    if let Some(sc) = c.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
        sc.capabilities = Some(Capability {
            add_capabilities: vec!["SYS_PTRACE".into()],
            ..Default::default()
        });
    }
    c
}

/// What PID 1 of the container runs with: argv, env, cwd, uid.
struct Init {
    argv: Vec<String>,
    env: HashMap<String, String>,
    cwd: String,
    uid: String,
}

async fn init(c: &mut Client, id: &str) -> Init {
    let out = sh(c, id, "tr '\\0' '\\n' </proc/1/cmdline; echo ===; tr '\\0' '\\n' </proc/1/environ; echo ===; ls -l /proc/1/cwd | sed 's/.*-> //'; echo ===; grep ^Uid: /proc/1/status").await;
    let parts: Vec<&str> = out.split("===\n").collect();
    assert_eq!(parts.len(), 4, "{out}");
    Init {
        argv: parts[0].lines().map(String::from).collect(),
        env: parts[1]
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        cwd: parts[2].trim().to_string(),
        uid: parts[3]
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string(),
    }
}

async fn remove_pod(c: &mut Client, pod: &str) {
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("StopPodSandbox");
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod.into(),
    })
    .await
    .expect("RemovePodSandbox");
}

/// Nothing of the pod left: no container in containerd, no mount under the CRI
/// containerd's dirs or the store, no network namespace file.
fn assert_clean(cri: &CriContainerd, store: &Path) {
    assert_eq!(cri.containers(), Vec::<String>::new(), "containers left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = cri.dir.display().to_string();
    let store = store.display().to_string();
    let left: Vec<_> = mounts
        .lines()
        .filter(|l| l.contains(&dir) || l.contains(&store))
        .collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
    let netns = cri.dir.join("state/io.containerd.grpc.v1.cri/netns");
    let files: Vec<_> = std::fs::read_dir(&netns)
        .map(|d| d.flatten().collect())
        .unwrap_or_default();
    assert!(
        files.is_empty(),
        "netns left in {}: {files:?}",
        netns.display()
    );
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Under CRI the container spec is built from the declared image; a store-rootfs
/// container instead gets what the pod did not set from the store image's config, and
/// keeps what the pod set.
#[test]
fn store_image_config_fills_in_what_the_pod_did_not_set() {
    testkit::require!(root, tool "containerd", tool "ctr", tool "busybox");
    let cri = CriContainerd::start();
    let img = images(&cri);
    rt().block_on(async {
        let mut c = cri.client().await.unwrap();
        let store = img.store.display().to_string();
        let pod = cri::pod_config(
            "store-config",
            &[
                ("io.nestcache.store", &store),
                ("io.nestcache.image", "app"),
            ],
        );
        let pod_id = run_pod(&mut c, &pod).await;

        // Sets nothing: all of it from the store image.
        let a = cri::start_container(&mut c, &pod_id, &pod, inspectable("a")).await;
        let i = init(&mut c, &a).await;
        // (busybox sh would exec a lone command; the `exit` keeps it PID 1)
        assert_eq!(
            i.argv,
            ["/bin/sh", "-c", "sleep 1000; exit 0"],
            "store Entrypoint + Cmd"
        );
        assert_eq!(
            i.env.get("FOO").map(String::as_str),
            Some("store"),
            "{:?}",
            i.env
        );
        assert_eq!(i.env.get("STORE_ONLY").map(String::as_str), Some("1"));
        assert_eq!(i.env.get("PATH").map(String::as_str), Some("/bin:/sbin"));
        assert!(
            !i.env.contains_key("DECLARED_ONLY"),
            "declared image env dropped: {:?}",
            i.env
        );
        assert!(
            i.env.contains_key("HOSTNAME"),
            "CRI's own env kept: {:?}",
            i.env
        );
        assert_eq!(i.cwd, "/srv/app");
        assert_eq!(
            i.uid, "1234",
            "store User app resolved in the store image's passwd"
        );
        assert_eq!(sh(&mut c, &a, "cat /etc/nestcache-test").await, "store\n");
        // ExecSync copies the container's stored process (the declared image's env, cwd
        // and user) into every exec: the shim gives it the init's instead.
        let seen = sh(
            &mut c,
            &a,
            "echo $FOO $STORE_ONLY ${DECLARED_ONLY:-none}; pwd; id -u",
        )
        .await;
        assert_eq!(seen, "store 1 none\n/srv/app\n1234\n", "what an exec sees");

        // Sets command, env and working dir: those win, the rest from the store.
        let mut b = inspectable("b");
        // (A command that began with the declared Entrypoint would read as args alone.)
        b.command = vec!["/bin/busybox".into(), "sleep".into(), "1001".into()];
        b.envs = cri::env(&[("FOO", "pod")]);
        b.working_dir = "/etc".into();
        let b = cri::start_container(&mut c, &pod_id, &pod, b).await;
        let i = init(&mut c, &b).await;
        assert_eq!(i.argv, ["/bin/busybox", "sleep", "1001"]);
        assert_eq!(i.env.get("FOO").map(String::as_str), Some("pod"));
        assert_eq!(i.env.get("STORE_ONLY").map(String::as_str), Some("1"));
        assert_eq!(i.cwd, "/etc");

        // Sets args only: the store image's Entrypoint runs them.
        let mut d = inspectable("d");
        d.args = vec!["sleep 1002; exit 0".into()];
        if let Some(sc) = d.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            sc.run_as_user = Some(Int64Value { value: 1000 });
        }
        let d = cri::start_container(&mut c, &pod_id, &pod, d).await;
        let i = init(&mut c, &d).await;
        assert_eq!(i.argv, ["/bin/sh", "-c", "sleep 1002; exit 0"]);
        assert_eq!(i.uid, "1000", "runAsUser set by the pod wins");

        remove_pod(&mut c, &pod_id).await;
    });
    assert_clean(&cri, &img.store);
}

/// A failed exec (no such binary) is the exec's failure alone: the container and the
/// pod keep running, and a later exec works.
#[test]
fn exec_of_a_missing_binary_leaves_the_pod_running() {
    testkit::require!(root, tool "containerd", tool "ctr", tool "busybox");
    let cri = CriContainerd::start();
    let img = images(&cri);
    rt().block_on(async {
        let mut c = cri.client().await.unwrap();
        let store = img.store.display().to_string();
        let pod = cri::pod_config(
            "exec-fail",
            &[
                ("io.nestcache.store", &store),
                ("io.nestcache.image", "app"),
            ],
        );
        let pod_id = run_pod(&mut c, &pod).await;
        let a =
            cri::start_container(&mut c, &pod_id, &pod, cri::container_config("a", DECLARED)).await;
        let r = c
            .exec_sync(ExecSyncRequest {
                container_id: a.clone(),
                cmd: vec!["/no/such/binary".into()],
                timeout: 10,
            })
            .await;
        match r {
            Ok(r) => assert_ne!(
                r.into_inner().exit_code,
                0,
                "a missing binary cannot succeed"
            ),
            Err(status) => assert!(status.message().contains("no such file"), "{status:?}"),
        }
        assert_eq!(
            state(&mut c, &a).await,
            ContainerState::ContainerRunning as i32
        );
        assert_eq!(sh(&mut c, &a, "echo still").await, "still\n");
        let pods = c
            .list_pod_sandbox(ListPodSandboxRequest {
                filter: Some(PodSandboxFilter {
                    id: pod_id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .unwrap()
            .into_inner()
            .items;
        assert_eq!(pods[0].state, PodSandboxState::SandboxReady as i32);
        remove_pod(&mut c, &pod_id).await;
    });
    assert_clean(&cri, &img.store);
}

/// The pod's network: an address of the kit's own bridge subnet.
#[test]
fn plain_runc_container_and_pod_network_under_the_nestcache_handler() {
    testkit::require!(root, tool "containerd", tool "ctr", tool "busybox");
    let cri = CriContainerd::start();
    let img = images(&cri);
    rt().block_on(async {
        let mut c = cri.client().await.unwrap();
        let pod = cri::pod_config("plain", &[]);
        let pod_id = run_pod(&mut c, &pod).await;
        let a =
            cri::start_container(&mut c, &pod_id, &pod, cri::container_config("a", DECLARED)).await;
        let i = init(&mut c, &a).await;
        assert_eq!(
            i.argv,
            ["/bin/sleep", "999"],
            "no store: the declared image, untouched"
        );
        assert_eq!(i.env.get("FOO").map(String::as_str), Some("declared"));
        assert_eq!(
            sh(&mut c, &a, "cat /etc/nestcache-test").await,
            "declared\n"
        );
        let prefix = cri.subnet.rsplit_once('.').unwrap().0.to_string();
        let addrs = sh(&mut c, &a, "ip -4 addr show eth0").await;
        assert!(addrs.contains(&format!("inet {prefix}.")), "{addrs}");
        remove_pod(&mut c, &pod_id).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cri.containers().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    assert_clean(&cri, &img.store);
}

/// Claim 7 under Kubernetes: nestcache run by ExecSync inside a pod's container that has
/// the node's containerd socket and a host dir at the target path labels that container
/// (in CRI's namespace k8s.io) as the cache; nestcache in another namespace finds it;
/// `cache rm` takes the labels and leaves the container running.
#[test]
fn a_pod_container_with_a_host_dir_at_the_path_becomes_the_cache() {
    testkit::require!(root, tool "containerd", tool "ctr", tool "busybox");
    let cri = CriContainerd::start();
    let img = images(&cri);
    let host = tempfile::Builder::new()
        .prefix("nc-cri-adopt-")
        .tempdir_in("/tmp")
        .unwrap();
    let h = host.path().to_str().unwrap().to_string();
    let nestcache = testkit::cargo_bin("nestcache");
    let ns = testkit::unique("nc");
    let nestcache_host = |args: &[&str]| {
        let out = std::process::Command::new(&nestcache)
            .args(["--address", &cri.address, "--namespace", &ns])
            .args(args)
            .env("NESTCACHE_NET", "none")
            .output()
            .unwrap();
        assert!(out.status.success(), "nestcache {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    rt().block_on(async {
        let mut c = cri.client().await.unwrap();
        let pod = cri::pod_config("ci-job", &[]);
        let pod_id = run_pod(&mut c, &pod).await;
        let mut job = cri::container_config("job", DECLARED);
        let bind = |host: &str, at: &str, readonly: bool| Mount {
            host_path: host.into(),
            container_path: at.into(),
            readonly,
            ..Default::default()
        };
        // nestcache is a glibc binary: the host's libraries under the busybox image.
        job.mounts = vec![
            bind("/usr", "/usr", true),
            bind("/usr/lib", "/lib", true),
            bind("/usr/lib64", "/lib64", true),
            bind(nestcache.to_str().unwrap(), "/nestcache", true),
            bind(&cri.address, &cri.address, false),
            bind(&h, &h, false),
        ];
        job.envs = cri::env(&[
            ("CONTAINERD_ADDRESS", &cri.address),
            ("CONTAINERD_NAMESPACE", &ns),
            ("NESTCACHE_STATE_DIR", "/tmp/nc-state"),
            ("NESTCACHE_NET", "none"),
        ]);
        let job = cri::start_container(&mut c, &pod_id, &pod, job).await;

        let (code, out, err) = exec(
            &mut c,
            &job,
            &[
                "/nestcache",
                "cache",
                "create",
                "ci",
                "--path",
                &h,
                "--json",
            ],
        )
        .await;
        assert_eq!(code, 0, "{out}{err}");
        let created: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(created["adopted"], true, "{created}");
        assert_eq!(created["id"], job.as_str());
        assert_eq!(created["namespace"], "k8s.io");
        assert_eq!(created["content_dir"], h.as_str());

        // nestcache on the node, in its own namespace, finds the cache in k8s.io.
        let ls: serde_json::Value =
            serde_json::from_str(&nestcache_host(&["cache", "ls", "--json"])).unwrap();
        assert_eq!(ls[0]["name"], "ci", "{ls}");
        assert_eq!(ls[0]["id"], job.as_str());
        assert_eq!(ls[0]["namespace"], "k8s.io");
        assert_eq!(
            nestcache_host(&["cache", "gc"]).trim(),
            "nothing to collect"
        );

        nestcache_host(&["cache", "rm", "ci"]);
        let info = cri.ctr(&["containers", "info", &job]);
        let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
        let ours: Vec<_> = info["Labels"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with("io.nestcache."))
            .collect();
        assert!(ours.is_empty(), "labels left: {ours:?}");
        assert!(
            info["Labels"].get("io.cri-containerd.kind").is_some(),
            "CRI's own labels kept: {info}"
        );
        assert_eq!(
            state(&mut c, &job).await,
            ContainerState::ContainerRunning as i32,
            "rm never touches the adopted container"
        );
        remove_pod(&mut c, &pod_id).await;
    });
    assert_clean(&cri, &img.store);
}

/// A store-rootfs container's metrics and resources through CRI, as kubelet reads and
/// changes them: ContainerStats and ListContainerStats (CPU, memory, the writable layer
/// after 20 MiB were written) and UpdateContainerResources read back from the
/// container's own cgroup.
#[test]
fn stats_and_update_of_a_store_rootfs_container() {
    testkit::require!(root, tool "containerd", tool "ctr", tool "busybox");
    let cri = CriContainerd::start();
    let img = images(&cri);
    rt().block_on(async {
        let mut c = cri.client().await.unwrap();
        let store = img.store.display().to_string();
        let pod = cri::pod_config(
            "stats",
            &[
                ("io.nestcache.store", &store),
                ("io.nestcache.image", "app"),
            ],
        );
        let pod_id = run_pod(&mut c, &pod).await;
        let mut a = cri::container_config("a", DECLARED);
        if let Some(sc) = a.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
            // Root, so the exec may write anywhere in the rootfs (with a declared image
            // without User, 0:0 reads as unset and the store image's app user would win).
            sc.run_as_user = Some(Int64Value { value: 0 });
            sc.run_as_group = Some(Int64Value { value: 1 });
        }
        let a = cri::start_container(&mut c, &pod_id, &pod, a).await;
        sh(&mut c, &a, "dd if=/dev/zero of=/blob bs=1M count=20 2>/dev/null && sync").await;

        let s = c
            .container_stats(ContainerStatsRequest {
                container_id: a.clone(),
            })
            .await
            .expect("ContainerStats")
            .into_inner()
            .stats
            .expect("stats");
        assert_eq!(s.attributes.as_ref().map(|x| x.id.as_str()), Some(a.as_str()));
        let cpu = s.cpu.and_then(|c| c.usage_core_nano_seconds).map(|v| v.value);
        assert!(cpu.is_some_and(|n| n > 0), "cpu: {cpu:?}");
        let mem = s.memory.and_then(|m| m.working_set_bytes).map(|v| v.value);
        assert!(mem.is_some_and(|n| n > 0), "memory working set: {mem:?}");
        // The writable layer is containerd's snapshot usage, sampled every
        // stats_collect_period: the store rootfs writes into that snapshot's upper dir.
        let deadline = Instant::now() + Duration::from_secs(30);
        let written = loop {
            let used = c
                .container_stats(ContainerStatsRequest {
                    container_id: a.clone(),
                })
                .await
                .expect("ContainerStats")
                .into_inner()
                .stats
                .and_then(|s| s.writable_layer)
                .and_then(|w| w.used_bytes)
                .map_or(0, |v| v.value);
            if used >= 20 << 20 || Instant::now() > deadline {
                break used;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(written >= 20 << 20, "writable layer: {written} bytes after 20 MiB");

        let all = c
            .list_container_stats(ListContainerStatsRequest {
                filter: Some(ContainerStatsFilter {
                    pod_sandbox_id: pod_id.clone(),
                    ..Default::default()
                }),
            })
            .await
            .expect("ListContainerStats")
            .into_inner()
            .stats;
        assert_eq!(all.len(), 1, "{all:?}");
        let listed = &all[0];
        assert_eq!(listed.attributes.as_ref().map(|x| x.id.as_str()), Some(a.as_str()));
        assert!(listed
            .cpu
            .as_ref()
            .and_then(|c| c.usage_core_nano_seconds.as_ref())
            .is_some_and(|v| v.value > 0));
        assert!(listed
            .memory
            .as_ref()
            .and_then(|m| m.working_set_bytes.as_ref())
            .is_some_and(|v| v.value > 0));

        c.update_container_resources(UpdateContainerResourcesRequest {
            container_id: a.clone(),
            linux: Some(LinuxContainerResources {
                memory_limit_in_bytes: 256 << 20,
                cpu_period: 100_000,
                cpu_quota: 50_000,
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect("UpdateContainerResources");
        let limits = sh(
            &mut c,
            &a,
            "cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/cpu.max",
        )
        .await;
        let limits: Vec<&str> = limits.split_whitespace().collect();
        assert_eq!(limits[0], (256u64 << 20).to_string(), "memory limit: {limits:?}");
        assert_eq!(limits[1], "50000", "cpu quota: {limits:?}");
        assert_eq!(
            state(&mut c, &a).await,
            ContainerState::ContainerRunning as i32
        );
        remove_pod(&mut c, &pod_id).await;
    });
    assert_clean(&cri, &img.store);
}

//! RunPodSandbox -> container process exited, through CRI as kubelet drives it:
//! nestcache's runtime with a store rootfs vs io.containerd.runc.v2 with the declared
//! image (a snapshot containerd unpacked). Medians of N (default 10). Run it with
//! scripts/bench-cri.sh (root; a private CRI containerd of the test kit).

use std::time::{Duration, Instant};

use k8s_cri::v1::*;
use serde_json::json;
use testkit::cri::{self, CriContainerd};

const DECLARED: &str = "localhost/nc-bench-declared:1";

/// What is measured: a name, the CRI runtime handler, the pod's annotations.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

async fn once(cri: &CriContainerd, handler: &str, annotations: &[(&str, &str)]) -> Duration {
    let mut c = cri.client().await.expect("CRI client");
    let pod = cri::pod_config("bench", annotations);
    let t0 = Instant::now();
    let pod_id = c
        .run_pod_sandbox(RunPodSandboxRequest {
            config: Some(pod.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .expect("RunPodSandbox")
        .into_inner()
        .pod_sandbox_id;
    let id = cri::start_container(
        &mut c,
        &pod_id,
        &pod,
        cri::container_config("app", DECLARED),
    )
    .await;
    loop {
        let st = c
            .container_status(ContainerStatusRequest {
                container_id: id.clone(),
                verbose: false,
            })
            .await
            .expect("ContainerStatus")
            .into_inner()
            .status
            .expect("status");
        if st.state == ContainerState::ContainerExited as i32 {
            assert_eq!(
                st.exit_code, 0,
                "{handler}: the container failed: {}",
                st.message
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = t0.elapsed();
    c.stop_pod_sandbox(StopPodSandboxRequest {
        pod_sandbox_id: pod_id.clone(),
    })
    .await
    .expect("StopPodSandbox");
    c.remove_pod_sandbox(RemovePodSandboxRequest {
        pod_sandbox_id: pod_id,
    })
    .await
    .expect("RemovePodSandbox");
    took
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cri = CriContainerd::start();
    let work = tempfile::tempdir().unwrap();
    let declared = work.path().join("declared.tar");
    let exits = json!({"Entrypoint": ["/bin/true"]});
    cri::busybox_archive(work.path(), &declared, DECLARED, "declared", exits.clone());
    cri.import(&declared);
    let app = work.path().join("app.tar");
    cri::busybox_archive(
        work.path(),
        &app,
        "localhost/nc-bench-app:1",
        "store",
        exits,
    );
    let store = cri.store_dir("bench");
    testkit::images::ok(&[
        "stage",
        &format!("docker-archive:{}", app.display()),
        "--store",
        store.to_str().unwrap(),
        "--ref",
        "app",
    ]);
    let store = store.display().to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let cases: [Case; 2] = [
        (
            "nestcache, store rootfs",
            "nestcache",
            vec![
                ("io.nestcache.store", &store),
                ("io.nestcache.image", "app"),
            ],
        ),
        ("io.containerd.runc.v2, declared image", "runc", vec![]),
    ];
    // One warm-up each (page cache, first shim binary load), then alternate the runtimes
    // so that drift on a shared machine hits both alike.
    for (_, handler, ann) in &cases {
        rt.block_on(once(&cri, handler, ann));
    }
    let mut times: Vec<Vec<Duration>> = vec![vec![]; cases.len()];
    for _ in 0..n {
        for (i, (_, handler, ann)) in cases.iter().enumerate() {
            times[i].push(rt.block_on(once(&cri, handler, ann)));
        }
    }
    println!("RunPodSandbox -> container exited, median of {n} (min..max):");
    for (i, (name, _, _)) in cases.iter().enumerate() {
        let (min, max) = (
            times[i].iter().min().unwrap().as_secs_f64(),
            times[i].iter().max().unwrap().as_secs_f64(),
        );
        println!(
            "  {name:40} {:7.1} ms  ({:.1}..{:.1})",
            median(times[i].clone()).as_secs_f64() * 1e3,
            min * 1e3,
            max * 1e3
        );
    }
}

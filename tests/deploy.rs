//! The manifests in deploy/ parse as the Kubernetes API types they claim to be, carry no
//! field those types do not know (a typo would be dropped in the round trip), and agree
//! with nestcache: the RuntimeClass selects the label the installer sets, the handler is
//! the runtime it configures, the commands use flags nestcache has.

use std::path::Path;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodSpec, ServiceAccount};
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use serde::de::DeserializeOwned;
use serde::Serialize;

fn docs(file: &str) -> Vec<serde_json::Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

/// Parses `v` as `T` and checks that serializing it back gives `v` again.
fn typed<T: DeserializeOwned + Serialize>(file: &str, v: &serde_json::Value) -> T {
    let t: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let back = serde_json::to_value(&t).unwrap();
    assert_eq!(
        &back, v,
        "{file}: fields lost in the round trip (unknown or misspelt)"
    );
    t
}

fn kinds(file: &str) -> Vec<String> {
    docs(file)
        .iter()
        .map(|d| {
            let kind = d["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "DaemonSet" => drop(typed::<DaemonSet>(file, d)),
                "RuntimeClass" => drop(typed::<RuntimeClass>(file, d)),
                "ServiceAccount" => drop(typed::<ServiceAccount>(file, d)),
                "ClusterRole" => drop(typed::<ClusterRole>(file, d)),
                "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(file, d)),
                "Pod" => drop(typed::<Pod>(file, d)),
                "Job" => drop(typed::<Job>(file, d)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
            kind
        })
        .collect()
}

fn daemonset(file: &str) -> PodSpec {
    let d: DaemonSet = typed(file, &docs(file)[0]);
    d.spec.template.spec.unwrap()
}

/// Each `--flag` the container's command uses is one `nestcache <sub> --help` lists.
fn flags_exist(spec: &PodSpec) {
    let cmd = spec.containers[0].command.clone().unwrap();
    assert_eq!(cmd[0], "nestcache", "{cmd:?}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_nestcache"))
        .args(&cmd[1..3])
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for arg in &cmd[3..] {
        let flag = arg.split('=').next().unwrap();
        assert!(
            flag.starts_with("--") && help.contains(flag),
            "{flag} not in `{}` help:\n{help}",
            cmd[1..3].join(" ")
        );
    }
}

#[test]
fn every_manifest_parses_as_its_api_type() {
    assert_eq!(
        kinds("rbac.yaml"),
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"]
    );
    assert_eq!(kinds("runtimeclass.yaml"), ["RuntimeClass"]);
    assert_eq!(kinds("node-install.yaml"), ["DaemonSet"]);
    assert_eq!(kinds("node-uninstall.yaml"), ["DaemonSet"]);
    assert_eq!(kinds("example-pod.yaml"), ["Pod"]);
    assert_eq!(kinds("ci-job.yaml"), ["Job"]);
}

#[test]
fn the_round_trip_catches_a_misspelt_field() {
    let mut v = docs("runtimeclass.yaml").remove(0);
    v["scheduling"]["nodeSelectr"] = v["scheduling"]["nodeSelector"].take();
    v["scheduling"]
        .as_object_mut()
        .unwrap()
        .remove("nodeSelector");
    let r = std::panic::catch_unwind(|| typed::<RuntimeClass>("x", &v));
    assert!(r.is_err(), "a misspelt field must fail the check");
}

#[test]
fn runtimeclass_selects_what_the_installer_configures_and_labels() {
    let rc: RuntimeClass = typed("runtimeclass.yaml", &docs("runtimeclass.yaml")[0]);
    assert_eq!(rc.handler, nestcache::node::RUNTIME_NAME);
    let sel = rc.scheduling.unwrap().node_selector.unwrap();
    assert_eq!(
        sel.get(nestcache::node::NODE_LABEL).map(String::as_str),
        Some(nestcache::node::NODE_LABEL_VALUE)
    );
}

#[test]
fn daemonsets_run_real_commands_with_the_rbac_they_need() {
    let sa: ServiceAccount = typed("rbac.yaml", &docs("rbac.yaml")[0]);
    let role: ClusterRole = typed("rbac.yaml", &docs("rbac.yaml")[1]);
    let rule = &role.rules.unwrap()[0];
    assert!(rule
        .resources
        .as_ref()
        .unwrap()
        .contains(&"nodes".to_string()));
    assert!(
        rule.verbs.contains(&"patch".to_string()),
        "labelling needs patch"
    );
    for file in ["node-install.yaml", "node-uninstall.yaml"] {
        let spec = daemonset(file);
        assert_eq!(spec.service_account_name, sa.metadata.name, "{file}");
        assert_eq!(
            spec.host_pid,
            Some(true),
            "{file}: nsenter into PID 1 restarts containerd"
        );
        flags_exist(&spec);
        let c = &spec.containers[0];
        let env = c.env.as_ref().unwrap();
        assert!(
            env.iter().any(|e| e.name == "NODE_NAME"),
            "{file}: the node to label"
        );
        // Every host path the command touches under /host is mounted from the host.
        let mounts: Vec<_> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.mount_path.clone())
            .collect();
        for host in [
            nestcache::node::DEFAULT_CONFIG,
            nestcache::node::DEFAULT_BIN_DIR,
            nestcache::node::DEFAULT_STORE,
        ] {
            let inside = format!("/host{host}");
            assert!(
                mounts.iter().any(|m| inside.starts_with(m.as_str())),
                "{file}: {inside} not under {mounts:?}"
            );
        }
        for v in spec.volumes.as_ref().unwrap() {
            let hp = v.host_path.as_ref().unwrap();
            let m = c
                .volume_mounts
                .as_ref()
                .unwrap()
                .iter()
                .find(|m| m.name == v.name)
                .unwrap();
            assert_eq!(
                format!("/host{}", hp.path),
                m.mount_path,
                "{file}: host path and mount agree"
            );
        }
    }
}

#[test]
fn example_pod_and_ci_job_use_what_nestcache_reads() {
    let pod: Pod = typed("example-pod.yaml", &docs("example-pod.yaml")[0]);
    let ann = pod.metadata.annotations.unwrap();
    assert!(ann.contains_key(nestcache::containerd::labels::ANNOTATION_STORE));
    assert!(ann.contains_key(nestcache::containerd::labels::ANNOTATION_IMAGE));
    assert_eq!(
        pod.spec.unwrap().runtime_class_name.as_deref(),
        Some("nestcache")
    );

    let job: Job = typed("ci-job.yaml", &docs("ci-job.yaml")[0]);
    let spec = job.spec.unwrap().template.spec.unwrap();
    let c = &spec.containers[0];
    // The path-identity rule: each host dir is mounted at its own host path.
    for m in c.volume_mounts.as_ref().unwrap() {
        let v = spec
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == m.name)
            .unwrap();
        if let Some(hp) = &v.host_path {
            assert_eq!(
                hp.path, m.mount_path,
                "{}: a host dir must be mounted at the same path",
                m.name
            );
        }
    }
}

use std::collections::HashSet;

use oci_spec::image::ConfigBuilder;
use oci_spec::runtime::PosixRlimitType;

use super::*;

fn users() -> UserDb {
    UserDb {
        passwd: Some("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n".into()),
        group: Some("root:x:0:\napp:x:1000:\nwheel:x:10:app\n".into()),
    }
}

fn image() -> ImageConfig {
    ConfigBuilder::default()
        .entrypoint(vec!["/bin/entry".to_string(), "-x".to_string()])
        .cmd(vec!["serve".to_string()])
        .env(vec![
            "PATH=/opt/bin:/bin".to_string(),
            "IMAGE_VAR=1".to_string(),
            "SHARED=image".to_string(),
        ])
        .working_dir("/srv")
        .user("app")
        .build()
        .unwrap()
}

fn opts() -> SpecOptions {
    SpecOptions::new("nested-1", "ns")
}

fn env_of(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().env().clone().unwrap()
}

fn args_of(spec: &Spec) -> Vec<String> {
    spec.process().as_ref().unwrap().args().clone().unwrap()
}

#[test]
fn containerd_defaults() {
    let spec = build(Some(&image()), &users(), &opts()).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.no_new_privileges(), Some(true));
    assert_eq!(p.terminal(), Some(false));
    let caps = p.capabilities().as_ref().unwrap();
    let expected: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    assert_eq!(expected.len(), 14);
    assert_eq!(caps.bounding().as_ref().unwrap(), &expected);
    assert_eq!(caps.permitted().as_ref().unwrap(), &expected);
    assert_eq!(caps.effective().as_ref().unwrap(), &expected);
    // containerd 1.6.2+ no longer grants inheritable capabilities (CVE-2022-24769).
    assert!(caps.inheritable().is_none());
    assert!(caps.ambient().is_none());
    let rl = &p.rlimits().as_ref().unwrap()[0];
    assert_eq!(rl.typ(), PosixRlimitType::RlimitNofile);
    assert_eq!((rl.soft(), rl.hard()), (1024, 1024));

    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["root"]["path"], "rootfs");
    assert_eq!(json["root"]["readonly"], false);
    assert_eq!(json["hostname"], "nested-1");
    assert_eq!(json["linux"]["cgroupsPath"], "/ns/nested-1");
    assert_eq!(json["linux"]["maskedPaths"].as_array().unwrap().len(), 11);
    assert_eq!(json["linux"]["readonlyPaths"][3], "/proc/sys");
    assert_eq!(
        json["linux"]["resources"]["devices"],
        serde_json::json!([{"allow": false, "access": "rwm"}])
    );
    let ns: Vec<&str> = json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount", "network"]);
    let mounts: Vec<(&str, &str)> = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["destination"].as_str().unwrap(),
                m["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        mounts,
        [
            ("/proc", "proc"),
            ("/dev", "tmpfs"),
            ("/dev/pts", "devpts"),
            ("/dev/shm", "tmpfs"),
            ("/dev/mqueue", "mqueue"),
            ("/sys", "sysfs")
        ]
    );
    assert!(json["mounts"][5]["options"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("ro")));
    // Capabilities serialise with their CAP_ names, which is what runc reads.
    assert!(json["process"]["capabilities"]["bounding"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("CAP_NET_BIND_SERVICE")));
}

#[test]
fn image_config_is_applied() {
    let spec = build(Some(&image()), &users(), &opts()).unwrap();
    assert_eq!(args_of(&spec), ["/bin/entry", "-x", "serve"]);
    let env = env_of(&spec);
    // The image's PATH replaces containerd's default in place.
    assert_eq!(env[0], "PATH=/opt/bin:/bin");
    assert!(env.contains(&"IMAGE_VAR=1".to_string()));
    assert!(env.contains(&"HOME=/home/app".to_string()));
    let p = spec.process().as_ref().unwrap();
    assert_eq!(p.cwd(), Path::new("/srv"));
    assert_eq!((p.user().uid(), p.user().gid()), (1000, 1000));
    assert_eq!(p.user().additional_gids().as_deref(), Some(&[10][..]));
}

#[test]
fn no_image_config_runs_root_in_root_dir() {
    let mut o = opts();
    o.command = vec!["/bin/true".into()];
    let spec = build(None, &UserDb::default(), &o).unwrap();
    let p = spec.process().as_ref().unwrap();
    assert_eq!((p.user().uid(), p.user().gid()), (0, 0));
    assert_eq!(p.cwd(), Path::new("/"));
    assert_eq!(env_of(&spec), [DEFAULT_PATH_ENV, "HOME=/root"]);
}

#[test]
fn command_replaces_cmd_keeps_entrypoint() {
    let mut o = opts();
    o.command = vec!["a".into(), "b".into()];
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(args_of(&spec), ["/bin/entry", "-x", "a", "b"]);
}

#[test]
fn entrypoint_override_drops_image_cmd() {
    let mut o = opts();
    o.entrypoint = Some("/bin/sh".into());
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(args_of(&spec), ["/bin/sh"]);
    o.command = vec!["-c".into(), "echo hi".into()];
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(args_of(&spec), ["/bin/sh", "-c", "echo hi"]);
    // An empty --entrypoint clears it: the command alone runs.
    o.entrypoint = Some(String::new());
    o.command = vec!["/bin/ls".into()];
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(args_of(&spec), ["/bin/ls"]);
}

#[test]
fn no_command_at_all_is_a_clear_error() {
    let e = build(None, &users(), &opts()).unwrap_err().to_string();
    assert!(e.contains("no command"), "{e}");
    let mut o = opts();
    o.entrypoint = Some(String::new());
    let e = build(Some(&image()), &users(), &o).unwrap_err().to_string();
    assert!(e.contains("no command"), "{e}");
}

#[test]
fn env_flags_override_image_env() {
    let mut o = opts();
    o.env = vec!["SHARED=flag".into(), "NEW=2".into(), "HOME=/h".into()];
    let spec = build(Some(&image()), &users(), &o).unwrap();
    let env = env_of(&spec);
    assert!(env.contains(&"SHARED=flag".to_string()));
    assert!(!env.contains(&"SHARED=image".to_string()));
    assert!(env.contains(&"NEW=2".to_string()));
    assert_eq!(env.iter().filter(|e| e.starts_with("HOME=")).count(), 1);
    assert!(env.contains(&"HOME=/h".to_string()));
}

#[test]
fn env_key_alone_takes_the_callers_value_or_nothing() {
    let mut o = opts();
    o.env = vec![
        "PATH".into(),
        "NESTCACHE_SURELY_UNSET_VARIABLE".into(),
        "EMPTY=".into(),
    ];
    let spec = build(Some(&image()), &users(), &o).unwrap();
    let env = env_of(&spec);
    assert_eq!(env[0], format!("PATH={}", std::env::var("PATH").unwrap()));
    assert!(!env.iter().any(|e| e.starts_with("NESTCACHE_SURELY_UNSET")));
    assert!(env.contains(&"EMPTY=".to_string()));
    o.env = vec!["=x".into()];
    assert!(build(Some(&image()), &users(), &o).is_err());
}

#[test]
fn user_flag_overrides_image_user() {
    let mut o = opts();
    o.user = Some("0".into());
    let spec = build(Some(&image()), &users(), &o).unwrap();
    let u = spec.process().as_ref().unwrap().user();
    assert_eq!((u.uid(), u.gid()), (0, 0));
    assert!(env_of(&spec).contains(&"HOME=/root".to_string()));
    o.user = Some("app:wheel".into());
    let spec = build(Some(&image()), &users(), &o).unwrap();
    let u = spec.process().as_ref().unwrap().user();
    assert_eq!((u.uid(), u.gid()), (1000, 10));
    o.user = Some("ghost".into());
    let e = build(Some(&image()), &users(), &o).unwrap_err().to_string();
    assert!(e.contains("ghost"), "{e}");
}

#[test]
fn workdir_flag_and_validation() {
    let mut o = opts();
    o.workdir = Some("/tmp/./x/".into());
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/tmp/x"));
    o.workdir = Some("rel".into());
    assert!(build(Some(&image()), &users(), &o).is_err());
    o.workdir = Some("/a/../b".into());
    assert!(build(Some(&image()), &users(), &o).is_err());
    let img = ConfigBuilder::default()
        .cmd(vec!["x".to_string()])
        .working_dir("app")
        .build()
        .unwrap();
    let spec = build(Some(&img), &users(), &opts()).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/app"));
}

#[test]
fn cache_mount_read_only_by_default_rw_on_request() {
    let mut o = opts();
    o.cache_mount = Some(CacheMount {
        content_dir: "/var/lib/nestcache/caches/c1".into(),
        target: "/cache".into(),
        read_write: false,
    });
    let spec = build(Some(&image()), &users(), &o).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    let m = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/cache")
        .unwrap()
        .clone();
    assert_eq!(m["type"], "bind");
    assert_eq!(m["source"], "/var/lib/nestcache/caches/c1");
    assert_eq!(m["options"], serde_json::json!(["rbind", "ro"]));
    o.cache_mount.as_mut().unwrap().read_write = true;
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    assert!(json["mounts"].as_array().unwrap().iter().any(
        |m| m["destination"] == "/cache" && m["options"] == serde_json::json!(["rbind", "rw"])
    ));
    o.cache_mount.as_mut().unwrap().target = "/".into();
    assert!(build(Some(&image()), &users(), &o).is_err());
}

#[test]
fn volumes_parse_and_mount() {
    let v: Volume = "/tmp:/data:ro".parse().unwrap();
    assert_eq!(
        v,
        Volume {
            host: "/tmp".into(),
            container: "/data".into(),
            read_only: true
        }
    );
    assert!(!"/tmp:/data".parse::<Volume>().unwrap().read_only);
    assert!(!"/tmp:/data:rw".parse::<Volume>().unwrap().read_only);
    for bad in [
        "tmp:/data",
        "/tmp:data",
        "/tmp:/a/../b",
        "/tmp",
        "/tmp:/d:rx",
        "/a:/b:ro:x",
    ] {
        assert!(bad.parse::<Volume>().is_err(), "{bad}");
    }
    let mut o = opts();
    o.volumes = vec![v.clone()];
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    let last = json["mounts"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["destination"], "/data");
    assert_eq!(last["source"], "/tmp");
    assert_eq!(last["options"], serde_json::json!(["rbind", "ro"]));
    // Duplicates and a missing host path are refused.
    o.volumes = vec![v.clone(), v];
    assert!(build(Some(&image()), &users(), &o).is_err());
    o.volumes = vec!["/nonexistent-nestcache-src:/d".parse().unwrap()];
    let e = build(Some(&image()), &users(), &o).unwrap_err().to_string();
    assert!(e.contains("/nonexistent-nestcache-src"), "{e}");
}

#[test]
fn host_network_drops_the_net_namespace_and_binds_resolv_conf() {
    let mut o = opts();
    o.net = "host".parse().unwrap();
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    let ns: Vec<&str> = json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(ns, ["pid", "ipc", "uts", "mount"]);
    if Path::new("/etc/resolv.conf").exists() {
        assert!(json["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/etc/resolv.conf"));
    }
    assert!("macvlan".parse::<NetMode>().is_err());
}

#[test]
fn bridge_network_joins_the_given_namespace_and_binds_etc_files() {
    let mut o = opts();
    o.net = "bridge".parse().unwrap();
    o.netns_path = Some("/state/net/netns/c1".into());
    o.etc_mounts = vec![("/state/net/containers/c1/hosts".into(), "/etc/hosts".into())];
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    let net = json["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .cloned()
        .expect("a network namespace");
    assert_eq!(net["path"], "/state/net/netns/c1");
    let hosts = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/etc/hosts")
        .cloned()
        .expect("/etc/hosts bound");
    assert_eq!(hosts["source"], "/state/net/containers/c1/hosts");
}

#[test]
fn tty_read_only_annotations_hostname() {
    let mut o = opts();
    o.tty = true;
    o.read_only = true;
    o.hostname = Some("box".into());
    o.annotations
        .insert("io.nestcache.store".into(), "/store".into());
    let spec = build(Some(&image()), &users(), &o).unwrap();
    assert_eq!(spec.process().as_ref().unwrap().terminal(), Some(true));
    assert!(env_of(&spec).contains(&"TERM=xterm".to_string()));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
    assert_eq!(spec.hostname().as_deref(), Some("box"));
    assert_eq!(
        spec.annotations().as_ref().unwrap()["io.nestcache.store"],
        "/store"
    );
    let long = SpecOptions::new("x".repeat(100), "ns");
    let mut long = long;
    long.command = vec!["/bin/true".into()];
    let spec = build(None, &users(), &long).unwrap();
    assert_eq!(spec.hostname().as_ref().unwrap().len(), 63);
}

#[test]
fn seccomp_by_default_none_when_privileged() {
    let spec = build(Some(&image()), &users(), &opts()).unwrap();
    let json = serde_json::to_value(&spec).unwrap();
    assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
    let mut o = opts();
    o.security.privileged = true;
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    assert!(json["linux"]["seccomp"].is_null());
    assert!(json["linux"]["maskedPaths"]
        .as_array()
        .is_none_or(|a| a.is_empty()));
    assert_eq!(json["linux"]["resources"]["devices"][0]["allow"], true);
    let sys = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/sys")
        .unwrap();
    assert!(sys["options"].as_array().unwrap().contains(&"rw".into()));
}

#[test]
fn resources_and_groups_reach_the_spec() {
    let mut o = opts();
    o.resources.memory = Some(1 << 20);
    o.resources.oom_score_adj = Some(5);
    o.resources.shm_size = Some(1 << 20);
    o.group_add = vec!["wheel".into(), "77".into()];
    let json = serde_json::to_value(build(Some(&image()), &users(), &o).unwrap()).unwrap();
    assert_eq!(json["linux"]["resources"]["memory"]["limit"], 1 << 20);
    assert_eq!(json["process"]["oomScoreAdj"], 5);
    let gids = json["process"]["user"]["additionalGids"]
        .as_array()
        .unwrap();
    assert!(
        gids.contains(&10.into()) && gids.contains(&77.into()),
        "{gids:?}"
    );
    let shm = json["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["destination"] == "/dev/shm")
        .unwrap();
    assert!(shm["options"]
        .as_array()
        .unwrap()
        .contains(&"size=1024k".into()));
    o.group_add = vec!["nosuch".into()];
    assert!(matches!(
        build(Some(&image()), &users(), &o),
        Err(Error::NotFound(_))
    ));
}

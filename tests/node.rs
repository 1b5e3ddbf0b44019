//! `nestcache node install|uninstall|status` against a fake host root: binaries,
//! containerd's config (comments kept, backup, idempotent), restart only on change, and
//! everything undone by uninstall.

use std::path::Path;
use std::process::{Command, Output};

const CONFIG: &str = r#"version = 2
# kept by every edit
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#;

fn node(root: &Path, args: &[&str]) -> Output {
    let shim = root.join("shim-src");
    // The "restart" appends a line to a file: the test counts restarts.
    let restart = format!("sh -c echo>>{}", root.join("restarts").display());
    let mut c = Command::new(env!("CARGO_BIN_EXE_nestcache"));
    c.arg("node").args(args).arg("--host-root").arg(root);
    if args[0] == "install" {
        c.arg("--shim").arg(&shim);
    }
    if args[0] != "status" {
        c.arg("--restart-command").arg(restart);
    }
    c.env_remove("NODE_NAME")
        .output()
        .expect("run nestcache node")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn restarts(root: &Path) -> usize {
    std::fs::read_to_string(root.join("restarts")).map_or(0, |s| s.lines().count())
}

#[test]
fn install_is_idempotent_and_uninstall_undoes_it() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("shim-src"), b"#!/bin/sh\n").unwrap();
    std::fs::create_dir_all(r.join("etc/containerd")).unwrap();
    let cfg = r.join("etc/containerd/config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    assert_eq!(
        node(r, &["status"]).status.code(),
        Some(1),
        "not installed yet"
    );

    let out = ok(&node(r, &["install"]));
    assert!(out.contains("containerd restarted"), "{out}");
    assert_eq!(restarts(r), 1);
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.starts_with(CONFIG), "operator's text kept: {text}");
    assert!(
        text.contains("runtime_type = \"io.containerd.nestcache.v2\""),
        "{text}"
    );
    let backup =
        std::fs::read_to_string(r.join("etc/containerd/config.toml.nestcache-backup")).unwrap();
    assert_eq!(backup, CONFIG);
    assert_eq!(
        std::fs::read(r.join("usr/local/bin/containerd-shim-nestcache-v2")).unwrap(),
        b"#!/bin/sh\n"
    );
    assert!(r.join("usr/local/bin/nestcache").is_file());
    assert!(r.join("var/lib/nestcache/store/oci-layout").is_file());
    let status = ok(&node(r, &["status", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(v["installed"], true, "{status}");
    assert_eq!(v["config_version"], 2, "{status}");

    // Again: nothing changes, containerd is not restarted.
    let out = ok(&node(r, &["install"]));
    assert!(!out.contains("changed  "), "{out}");
    assert_eq!(restarts(r), 1, "no restart without a config change");
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    let out = ok(&node(r, &["uninstall"]));
    assert_eq!(restarts(r), 2, "{out}");
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap().trim_end(),
        CONFIG.trim_end()
    );
    assert!(
        !r.join("etc/containerd/config.toml.nestcache-backup")
            .exists(),
        "{out}"
    );
    assert!(!r.join("usr/local/bin/nestcache").exists());
    assert!(!r
        .join("usr/local/bin/containerd-shim-nestcache-v2")
        .exists());
    assert!(
        r.join("var/lib/nestcache/store/oci-layout").is_file(),
        "store kept"
    );
    assert_eq!(node(r, &["status"]).status.code(), Some(1));
}

#[test]
fn a_missing_config_is_created_in_the_asked_layout_and_removed_again() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("shim-src"), b"x").unwrap();
    ok(&node(r, &["install", "--config-version", "3"]));
    let cfg = r.join("etc/containerd/config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.starts_with("version = 3"), "{text}");
    assert!(
        text.contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.nestcache]"),
        "{text}"
    );
    ok(&node(r, &["uninstall"]));
    assert!(!cfg.exists(), "the file install created is gone");
}

#[test]
fn a_config_changed_since_install_keeps_its_backup_and_a_v1_config_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("shim-src"), b"x").unwrap();
    std::fs::create_dir_all(r.join("etc/containerd")).unwrap();
    let cfg = r.join("etc/containerd/config.toml");
    std::fs::write(&cfg, CONFIG).unwrap();
    ok(&node(r, &["install"]));
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n[debug]\n  level = \"debug\"\n");
    std::fs::write(&cfg, &text).unwrap();
    let out = ok(&node(r, &["uninstall"]));
    assert!(
        out.contains("kept: the config changed since install"),
        "{out}"
    );
    let after = std::fs::read_to_string(&cfg).unwrap();
    assert!(
        after.contains("level = \"debug\"") && !after.contains("nestcache"),
        "{after}"
    );

    std::fs::write(&cfg, "[plugins.cri]\n").unwrap();
    let o = node(r, &["install"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("containerd config migrate"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "[plugins.cri]\n",
        "left alone"
    );
}

/// The shim allows stores only under /var/lib/nestcache unless its config says otherwise:
/// a store elsewhere gets a shim config allowing it, named by the runtime's ConfigPath;
/// moving the store back drops both.
#[test]
fn a_store_outside_the_state_dir_gets_a_shim_config_the_runtime_names() {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    std::fs::write(r.join("shim-src"), b"x").unwrap();
    let cfg = r.join("etc/containerd/config.toml");
    let shim_json = r.join("etc/nestcache/shim.json");
    ok(&node(r, &["install", "--store", "/srv/nc-store"]));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&shim_json).unwrap()).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"store_roots": ["/var/lib/nestcache", "/srv/nc-store"]})
    );
    let text = std::fs::read_to_string(&cfg).unwrap();
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    assert_eq!(
        doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["nestcache"]
            ["options"]["ConfigPath"]
            .as_str(),
        Some("/etc/nestcache/shim.json"),
        "{text}"
    );
    assert!(r.join("srv/nc-store/oci-layout").is_file());
    let out = ok(&node(r, &["install", "--store", "/srv/nc-store"]));
    assert!(!out.contains("changed  "), "idempotent: {out}");
    assert_eq!(restarts(r), 1);

    // Back to the default store: no config needed, none left.
    ok(&node(r, &["install"]));
    assert_eq!(restarts(r), 2, "the runtime's options changed");
    assert!(!shim_json.exists());
    assert!(!std::fs::read_to_string(&cfg)
        .unwrap()
        .contains("ConfigPath"));

    ok(&node(r, &["install", "--store", "/srv/nc-store"]));
    assert!(shim_json.is_file());
    ok(&node(r, &["uninstall"]));
    assert!(!shim_json.exists(), "uninstall removes the shim config");
    assert!(!cfg.exists());
}

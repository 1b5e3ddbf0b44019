//! `docker run` flags on `nestcache run`, against a real containerd + runc: exit codes,
//! argument parsing, resources read back from the task's cgroup files, seccomp and
//! capabilities read back from /proc.

use std::path::{Path, PathBuf};

use testkit::nested::{lines, stderr, stdout, Fixture};

/// The busybox `small` image, staged once per fixture.
fn fixture(prefix: &str) -> (Fixture, String) {
    let f = Fixture::new(prefix);
    let img = f.small("flags", |_| {});
    (f, img)
}

/// The value of `key:` in /proc/PID/status-style text.
fn status_field<'a>(status: &'a str, key: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no {key} in {status}"))
}

#[test]
fn exit_codes_are_dockers() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-exit");
    let code = |args: &[&str]| f.run(args).status.code();
    // The process's own code, with and without `--` before the command.
    assert_eq!(code(&["--rm", &img, "sh", "-c", "exit 9"]), Some(9));
    assert_eq!(code(&["--rm", &img, "--", "sh", "-c", "exit 3"]), Some(3));
    // 127: not found (absolute, and through PATH); 126: not executable.
    for missing in ["/no/such/command", "nosuchcommand"] {
        let out = f.run(&["--rm", &img, missing]);
        assert_eq!(out.status.code(), Some(127), "{missing}: {}", stderr(&out));
        assert!(stderr(&out).contains(missing), "{}", stderr(&out));
    }
    for not_exec in ["/etc/passwd", "/etc"] {
        let out = f.run(&["--rm", &img, not_exec]);
        assert_eq!(out.status.code(), Some(126), "{not_exec}: {}", stderr(&out));
    }
    // 125: nestcache's own failures.
    assert_eq!(code(&["--rm", "nosuchimage", "true"]), Some(125));
    assert_eq!(
        f.env
            .run(&["run", "--cache", "nosuchcache", &img, "true"])
            .status
            .code(),
        Some(125)
    );
    assert_eq!(code(&["--rm", "--bogus-flag", &img, "true"]), Some(125));
    assert_eq!(code(&["--rm", "--memory", "lots", &img, "true"]), Some(125));
    let down = f
        .env
        .cmd()
        .env("CONTAINERD_ADDRESS", "/nonexistent/containerd.sock")
        .args(f.args(&["--rm", &img, "true"]))
        .output()
        .expect("spawn");
    assert_eq!(down.status.code(), Some(125), "{}", stderr(&down));
    // Other commands keep exit 1 for their failures.
    assert_eq!(f.env.run(&["rm", "nosuch"]).status.code(), Some(1));
    f.assert_nothing_left();
}

#[test]
fn options_end_at_the_image_and_h_is_the_hostname() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-parse");
    // Everything after IMAGE is the command, flags included.
    let out = f.ok(&[
        "--rm",
        "-h",
        "buildhost",
        &img,
        "sh",
        "-c",
        "hostname; printf '%s\\n' \"$*\"",
        "x",
        "-e",
        "--rm",
    ]);
    assert_eq!(lines(&out), ["buildhost", "-e --rm"]);
    // The case the issue reported: -h used to print help and exit 0.
    let out = f.run(&["--rm", "-h", "buildhost", &img, "--", "sh", "-c", "exit 9"]);
    assert_eq!(out.status.code(), Some(9), "{}", stderr(&out));
    let help = f.env.run(&["run", "--help"]);
    assert!(help.status.success() && stdout(&help).contains("--hostname"));
    f.assert_nothing_left();
}

/// The cgroup file `file` of controller `controller` of process `pid`, from the host.
fn cgroup_file(pid: u32, controller: &str, file: &str) -> String {
    let cg = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read cgroup");
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    let dir: PathBuf = cg
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            let hit = if unified {
                ctrls.is_empty()
            } else {
                ctrls.split(',').any(|c| c == controller)
            };
            hit.then(|| {
                let root = if unified {
                    "/sys/fs/cgroup".to_string()
                } else {
                    format!("/sys/fs/cgroup/{controller}")
                };
                Path::new(&root).join(path.trim_start_matches('/'))
            })
        })
        .unwrap_or_else(|| panic!("no {controller} cgroup in {cg}"));
    std::fs::read_to_string(dir.join(file))
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.join(file).display()))
        .trim()
        .to_string()
}

#[test]
fn resources_reach_the_cgroup_and_the_process() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-res");
    let id = "res";
    f.ok(&[
        "-d",
        "--name",
        id,
        "-m",
        "64m",
        "--memory-swap",
        "96m",
        "--memory-reservation",
        "32m",
        "--cpus",
        "0.5",
        "--cpu-shares",
        "512",
        "--cpuset-cpus",
        "0",
        "--pids-limit",
        "50",
        "--ulimit",
        "nofile=100:200",
        "--ulimit",
        "nproc=30",
        "--shm-size",
        "8m",
        "--oom-score-adj",
        "300",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        &img,
        "sleep",
        "60",
    ]);
    let pid = f.wait_running(id);
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        assert_eq!(
            cgroup_file(pid, "", "memory.max"),
            (64u64 << 20).to_string()
        );
        assert_eq!(
            cgroup_file(pid, "", "memory.swap.max"),
            (32u64 << 20).to_string()
        );
        assert_eq!(
            cgroup_file(pid, "", "memory.low"),
            (32u64 << 20).to_string()
        );
        assert_eq!(cgroup_file(pid, "", "cpu.max"), "50000 100000");
        assert_eq!(cgroup_file(pid, "", "cpuset.cpus"), "0");
        assert_eq!(cgroup_file(pid, "", "pids.max"), "50");
    } else {
        let mem = |f: &str| cgroup_file(pid, "memory", f);
        assert_eq!(mem("memory.limit_in_bytes"), (64u64 << 20).to_string());
        assert_eq!(mem("memory.soft_limit_in_bytes"), (32u64 << 20).to_string());
        if Path::new("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists() {
            assert_eq!(
                mem("memory.memsw.limit_in_bytes"),
                (96u64 << 20).to_string()
            );
        }
        assert_eq!(cgroup_file(pid, "cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(cgroup_file(pid, "cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(cgroup_file(pid, "cpu", "cpu.shares"), "512");
        assert_eq!(cgroup_file(pid, "cpuset", "cpuset.cpus"), "0");
        assert_eq!(cgroup_file(pid, "pids", "pids.max"), "50");
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let row = |name: &str| -> Vec<String> {
        let l = limits
            .lines()
            .find(|l| l.starts_with(name))
            .expect("limit row");
        l[name.len()..]
            .split_whitespace()
            .take(2)
            .map(String::from)
            .collect()
    };
    assert_eq!(row("Max open files"), ["100", "200"]);
    assert_eq!(row("Max processes"), ["30", "30"]);
    let oom = std::fs::read_to_string(format!("/proc/{pid}/oom_score_adj")).expect("oom");
    assert_eq!(oom.trim(), "300");
    f.env.ok(&["stop", "--timeout", "0s", id]);
    // Inside: /dev/shm's size and the sysctl.
    let out = f.ok(&[
        "--rm",
        "--shm-size",
        "8m",
        "--sysctl",
        "net.ipv4.ip_forward=1",
        &img,
        "sh",
        "-c",
        "df -k /dev/shm | tail -1 | awk '{print $2}'; cat /proc/sys/net/ipv4/ip_forward",
    ]);
    assert_eq!(lines(&out), ["8192", "1"]);
    f.env.ok(&["rm", id]);
    f.assert_nothing_left();
}

#[test]
fn seccomp_and_capabilities() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-sec");
    let status = |extra: &[&str]| {
        let mut args = vec!["--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[img.as_str(), "cat", "/proc/self/status"]);
        f.ok(&args)
    };
    // Default: containerd's profile (filter mode), its 14 capabilities, no new privileges.
    let s = status(&[]);
    assert_eq!(status_field(&s, "Seccomp"), "2");
    assert_eq!(status_field(&s, "CapEff"), "00000000a80425fb");
    assert_eq!(status_field(&s, "NoNewPrivs"), "1");
    // The filter is in force: unshare(2) is refused without CAP_SYS_ADMIN...
    let out = f.run(&["--rm", &img, "busybox", "unshare", "-U", "true"]);
    assert!(
        !out.status.success(),
        "unshare ran under the default profile"
    );
    // ...and allowed once seccomp is off.
    f.ok(&[
        "--rm",
        "--security-opt",
        "seccomp=unconfined",
        &img,
        "busybox",
        "unshare",
        "-U",
        "true",
    ]);
    let s = status(&[
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "no-new-privileges=false",
    ]);
    assert_eq!(status_field(&s, "Seccomp"), "0");
    assert_eq!(status_field(&s, "NoNewPrivs"), "0");
    // A profile file of the user's.
    let dir = tempfile::tempdir().expect("temp dir");
    let profile = dir.path().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":1}]}"#,
    )
    .expect("write profile");
    let opt = format!("seccomp={}", profile.display());
    let out = f.run(&["--rm", "--security-opt", &opt, &img, "mkdir", "/tmp/x"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("Operation not permitted"),
        "{}",
        stderr(&out)
    );
    // Capabilities: add and drop; --privileged has them all and no filter.
    let s = status(&["--cap-add", "NET_ADMIN", "--cap-drop", "chown"]);
    let eff = u64::from_str_radix(status_field(&s, "CapEff"), 16).expect("hex");
    assert_eq!(eff, 0xa80425fb_u64 & !1 | 1 << 12);
    let s = status(&["--cap-drop", "ALL", "--cap-add", "KILL"]);
    assert_eq!(status_field(&s, "CapEff"), "0000000000000020");
    let s = status(&["--privileged"]);
    assert_eq!(status_field(&s, "Seccomp"), "0");
    // Every capability nestcache holds itself (this VM's root lacks CAP_SYS_RESOURCE).
    let own = std::fs::read_to_string("/proc/self/status").expect("status");
    assert_eq!(status_field(&s, "CapEff"), status_field(&own, "CapBnd"));
    let e = f
        .env
        .fails(&f.args(&["--rm", "--cap-add", "NOPE", &img, "true"]));
    assert!(e.contains("NOPE"), "{e}");
    f.assert_nothing_left();
}

#[test]
fn devices_groups_and_refused_options() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-dev");
    // loop0 (7:0) is not among the devices runc allows by default: --device allows it.
    let open = "dd if=/dev/xloop of=/dev/null bs=1 count=0";
    let out = f.ok(&[
        "--rm",
        "--device",
        "/dev/loop0:/dev/xloop:r",
        "--group-add",
        "123",
        "--group-add",
        "root",
        &img,
        "sh",
        "-c",
        &format!("stat -c '%t:%T' /dev/xloop; {open} 2>/dev/null && echo opened; id -G"),
    ]);
    let l = lines(&out);
    assert_eq!(l[..2], ["7:0", "opened"]);
    let groups: Vec<&str> = l[2].split_whitespace().collect();
    assert!(
        groups.contains(&"123") && groups.contains(&"0"),
        "{groups:?}"
    );
    // Without it, a node made with mknod cannot be opened: the device cgroup refuses.
    let out = f.run(&[
        "--rm",
        &img,
        "sh",
        "-c",
        &format!("mknod /dev/xloop b 7 0 && {open} 2>&1"),
    ]);
    assert!(!out.status.success(), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("Operation not permitted"),
        "{}",
        stdout(&out)
    );
    for (flag, want) in [
        (vec!["--userns", "keep-id"], "--userns"),
        (
            vec!["--security-opt", "apparmor=docker-default"],
            "AppArmor",
        ),
        (vec!["--security-opt", "bogus"], "--security-opt"),
        (
            vec!["--device", "/etc/hostname"],
            "not a character or block device",
        ),
        (vec!["--group-add", "nosuchgroup"], "nosuchgroup"),
        (vec!["--ulimit", "nofile=9:1"], "--ulimit"),
    ] {
        if want == "AppArmor" && Path::new("/sys/module/apparmor/parameters/enabled").exists() {
            continue;
        }
        let mut args = vec!["--rm"];
        args.extend_from_slice(&flag);
        args.extend_from_slice(&[img.as_str(), "true"]);
        let out = f.run(&args);
        assert_eq!(out.status.code(), Some(125), "{flag:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(want), "{flag:?}: {}", stderr(&out));
    }
    f.assert_nothing_left();
}

#[test]
fn mounts_volumes_env_labels_and_cidfile() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-mnt");
    let host = tempfile::tempdir().expect("temp dir");
    std::fs::write(host.path().join("f"), "from host\n").expect("write");
    let bind = format!(
        "type=bind,source={},target=/b,readonly",
        host.path().display()
    );
    // --read-only with writable tmpfs mounts; a read-only bind mount.
    let out = f.ok(&[
        "--rm",
        "--read-only",
        "--tmpfs",
        "/tmp:size=1m",
        "--mount",
        "type=tmpfs,target=/t,tmpfs-size=2m",
        "--mount",
        &bind,
        &img,
        "sh",
        "-c",
        "echo x > /tmp/x && echo x > /t/x && df -k /tmp /t | awk 'NR>1 {print $2}'; \
         cat /b/f; touch /b/g 2>/dev/null || echo bind ro; touch /x 2>/dev/null || echo root ro",
    ]);
    assert_eq!(
        lines(&out),
        ["1024", "2048", "from host", "bind ro", "root ro"]
    );
    // A named volume outlives its container; --volumes-from and --mount type=volume see it.
    f.ok(&[
        "--name",
        "writer",
        "-v",
        "data:/data",
        &img,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    let out = f.ok(&[
        "--rm",
        "--volumes-from",
        "writer:ro",
        &img,
        "sh",
        "-c",
        "cat /data/f; touch /data/g 2>/dev/null || echo ro",
    ]);
    assert_eq!(lines(&out), ["kept", "ro"]);
    let out = f.ok(&[
        "--rm",
        "--mount",
        "source=data,target=/d",
        &img,
        "cat",
        "/d/f",
    ]);
    assert_eq!(out, "kept\n");
    let vols: serde_json::Value =
        serde_json::from_str(&f.env.ok(&["volume", "ls", "--json"])).expect("json");
    assert_eq!(vols[0]["name"], "data");
    assert_eq!(vols[0]["used_by"], serde_json::json!(["writer"]));
    let e = f.env.fails(&["volume", "rm", "data"]);
    assert!(e.contains("in use by writer"), "{e}");
    f.env.ok(&["rm", "writer"]);
    f.env.ok(&["volume", "rm", "data"]);
    assert_eq!(f.env.ok(&["volume", "ls", "-q"]), "");
    // --env-file first, -e over it; labels from flags and files.
    let dir = tempfile::tempdir().expect("temp dir");
    let env_file = dir.path().join("env");
    std::fs::write(&env_file, "# vars\nA=1\nB=file\n").expect("write");
    let label_file = dir.path().join("labels");
    std::fs::write(&label_file, "team=ci\n").expect("write");
    let cid = dir.path().join("cid");
    let env_path = env_file.to_str().expect("utf-8");
    let out = f.ok(&[
        "--name",
        "labelled",
        "--env-file",
        env_path,
        "-e",
        "B=flag",
        "-l",
        "a=b",
        "--label-file",
        label_file.to_str().expect("utf-8"),
        "--cidfile",
        cid.to_str().expect("utf-8"),
        &img,
        "sh",
        "-c",
        "echo $A $B",
    ]);
    assert_eq!(out, "1 flag\n");
    assert_eq!(std::fs::read_to_string(&cid).expect("cidfile"), "labelled");
    let info: serde_json::Value =
        serde_json::from_str(&f.env.ok(&["inspect", "labelled"])).expect("json");
    let labels = &info[0]["Config"]["Labels"];
    assert_eq!(
        (labels["a"].as_str(), labels["team"].as_str()),
        (Some("b"), Some("ci"))
    );
    // An existing cidfile is refused, before anything runs.
    let out = f.run(&[
        "--rm",
        "--cidfile",
        cid.to_str().expect("utf-8"),
        &img,
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    let out = f.run(&["--rm", "-l", "io.nestcache.role=cache", &img, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    f.env.ok(&["rm", "labelled"]);
    f.assert_nothing_left();
}

#[test]
fn init_stop_signal_and_stop_timeout() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-init");
    let exit_code = |id: &str| {
        f.ps().into_iter().find(|c| c["id"] == id).expect("listed")["exit_code"].as_u64()
    };
    // `sleep` as PID 1 ignores SIGTERM: stop waits --stop-timeout, then SIGKILL (137).
    f.ok(&[
        "-d",
        "--name",
        "plain",
        "--stop-timeout",
        "1",
        &img,
        "sleep",
        "60",
    ]);
    f.wait_running("plain");
    f.env.ok(&["stop", "plain"]);
    assert_eq!(exit_code("plain"), Some(137));
    // With --init, SIGTERM reaches sleep, which dies of it (143) well before a 60 s
    // timeout that would end in SIGKILL (137).
    f.ok(&[
        "-d",
        "--init",
        "--name",
        "inited",
        "--stop-timeout",
        "60",
        &img,
        "sleep",
        "60",
    ]);
    let pid = f.wait_running("inited");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
    assert!(
        cmdline.starts_with(b"/sbin/nestcache-init\0--\0sleep"),
        "{cmdline:?}"
    );
    f.env.ok(&["stop", "inited"]);
    assert_eq!(exit_code("inited"), Some(143));
    // --stop-signal: SIGINT instead (130).
    f.ok(&[
        "-d",
        "--init",
        "--name",
        "int",
        "--stop-signal",
        "SIGINT",
        &img,
        "sleep",
        "60",
    ]);
    f.wait_running("int");
    f.env.ok(&["stop", "int"]);
    assert_eq!(exit_code("int"), Some(130));
    // Exit codes pass through the init; a missing command is still 127.
    assert_eq!(
        f.run(&["--rm", "--init", &img, "sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );
    let out = f.run(&["--rm", "--init", &img, "/no/such"]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    // Orphans are reaped: no zombie is left under the init.
    let out = f.ok(&[
        "--rm",
        "--init",
        &img,
        "sh",
        "-c",
        "sh -c 'sleep 0.2 &'; sleep 1; grep -l '^State:.*Z' /proc/[0-9]*/status | wc -l",
    ]);
    assert_eq!(out.trim(), "0");
    for id in ["plain", "inited", "int"] {
        f.env.ok(&["rm", id]);
    }
    let e = f
        .env
        .fails(&f.args(&["--rm", "--stop-signal", "SIGNOPE", &img, "true"]));
    assert!(e.contains("SIGNOPE"), "{e}");
    f.assert_nothing_left();
}

#[test]
fn pull_missing_always_never_with_stage() {
    testkit::require!(containerd);
    let f = Fixture::new("flags-pull");
    let layout = f.images.path().join("src");
    let write = |value: &str| {
        let mut spec = mkimage::preset("small").expect("preset");
        spec.ref_name = "src".into();
        spec.config.env.push(format!("X={value}"));
        let _ = std::fs::remove_dir_all(&layout);
        spec.write_layout(&layout).expect("mkimage");
    };
    let source = format!("oci:{}:src", layout.display());
    let x = |pull: &str| {
        f.run(&[
            "--rm", "--stage", &source, "--pull", pull, "p", "sh", "-c", "echo $X",
        ])
    };
    write("1");
    assert_eq!(stdout(&x("missing")), "1\n");
    write("2");
    // missing: IMAGE is in the store, nothing is staged; always: the source again.
    assert_eq!(stdout(&x("missing")), "1\n");
    assert_eq!(stdout(&x("always")), "2\n");
    // never: only what the store has.
    let out = f.run(&["--rm", "--stage", &source, "--pull", "never", "q", "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert!(!f
        .env
        .ok(&["images", "ls", "--cache", &f.cache])
        .contains('q'));
    assert_eq!(x("sometimes").status.code(), Some(125));
    f.assert_nothing_left();
}

#[test]
fn platform_refuses_a_foreign_image_and_warns_without_it() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-platform");
    let host = mkimage::Platform::host();
    let foreign = host.other();
    // A single-platform image of the other architecture (busybox of this one inside, so
    // it runs: what is tested is what nestcache says about it).
    let mut spec = mkimage::preset("small").expect("preset");
    spec.ref_name = "foreign".into();
    spec.platform = foreign.clone();
    let foreign_img = f.stage(spec);
    let (h, o) = (host.to_string(), foreign.to_string());

    // Without --platform: it runs, with Docker's warning once.
    let out = f.run(&["--rm", &foreign_img, "true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // (The host's name may carry a variant, linux/arm64/v8, that mkimage's does not.)
    let warning =
        format!("the requested image's platform ({o}) does not match the detected host platform (");
    assert_eq!(
        stderr(&out).matches(&warning).count(),
        1,
        "{}",
        stderr(&out)
    );
    // The host's image: no word.
    let out = f.run(&["--rm", &img, "true"]);
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));

    // --platform of the host: a foreign image is refused in one line (125), nothing runs.
    let out = f.run(&["--rm", "--platform", &h, &foreign_img, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim(),
        format!("nestcache: image {foreign_img} was found but does not match the specified platform: wanted {h}, actual: {o}")
    );
    // --platform of the image: it runs, no warning; a malformed one is a usage error.
    let out = f.run(&["--rm", "--platform", &o, &foreign_img, "true"]);
    assert!(
        out.status.success() && !stderr(&out).contains("WARNING"),
        "{}",
        stderr(&out)
    );
    let out = f.run(&["--rm", "--platform", "linux", &img, "true"]);
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));

    // From a two-platform index, --platform with --stage picks that platform's manifest.
    let mut multi = mkimage::preset("small").expect("preset");
    multi.ref_name = "multi".into();
    multi.multi_platform = true;
    let layout = f.images.path().join("multi");
    let built = multi.write_layout(&layout).expect("mkimage");
    let other = built.other.expect("second platform");
    assert_eq!(other.platform, foreign);
    let source = format!("oci:{}:multi", layout.display());
    // That platform's image is a stub layer with no `true`: the run gets as far as the
    // exec (127), where the host's image would have run it.
    let out = f.run(&[
        "--rm",
        "--platform",
        &o,
        "--stage",
        &source,
        "multi",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    assert!(!stderr(&out).contains("WARNING"), "{}", stderr(&out));
    let blob = |d: &str| f.content.join("blobs/sha256").join(&d["sha256:".len()..]);
    assert!(blob(&other.manifest.digest).exists());
    f.assert_nothing_left();
}

/// The volumes `volume ls --json` lists: (name, used by).
fn volumes(f: &Fixture) -> Vec<(String, Vec<String>)> {
    let v: serde_json::Value =
        serde_json::from_str(&f.env.ok(&["volume", "ls", "--json"])).expect("volume ls --json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|v| {
            let users = v["used_by"].as_array().expect("used_by");
            let users = users.iter().map(|u| u.as_str().unwrap().to_string());
            (v["name"].as_str().unwrap().to_string(), users.collect())
        })
        .collect()
}

#[test]
fn anonymous_volumes_and_copy_up() {
    testkit::require!(containerd);
    let (f, img) = fixture("flags-vols");
    let with_vols = f.small("with-vols", |c| c.volumes = vec!["/etc".into()]);
    let stat = "stat -c '%u %g %a' /home/app /tmp";
    let baseline = f.ok(&["--rm", &img, "sh", "-c", stat]);

    // The image's Volumes: an anonymous volume, filled from the image, kept by `rm`.
    let out = f.ok(&[
        "--name",
        "a1",
        &with_vols,
        "sh",
        "-c",
        "head -1 /etc/passwd; echo x > /etc/x",
    ]);
    assert!(out.starts_with("root:"), "{out}");
    let vols = volumes(&f);
    assert!(
        vols.len() == 1 && vols[0].0.len() == 64 && vols[0].1 == ["a1"],
        "{vols:?}"
    );
    let dangling = vols[0].0.clone();
    f.env.ok(&["rm", "a1"]);
    assert_eq!(volumes(&f), [(dangling.clone(), vec![])]);
    f.env.ok(&["volume", "rm", &dangling]);
    // ... removed by `rm -v`, and by `--rm`; a mount at the same path replaces it.
    f.ok(&["--name", "a2", &with_vols, "true"]);
    assert_eq!(volumes(&f).len(), 1);
    f.env.ok(&["rm", "-v", "a2"]);
    assert!(volumes(&f).is_empty(), "{:?}", volumes(&f));
    f.ok(&["--rm", &with_vols, "true"]);
    f.ok(&["--rm", "--tmpfs", "/etc", &with_vols, "true"]);
    assert!(volumes(&f).is_empty(), "{:?}", volumes(&f));

    // -v /path and --mount type=volume without a source: anonymous, with the image's
    // owners and modes copied up.
    let out = f.ok(&[
        "--rm",
        "-v",
        "/home/app",
        "--mount",
        "type=volume,target=/tmp",
        &img,
        "sh",
        "-c",
        &format!("{stat}; grep -c ' /tmp \\| /home/app ' /proc/self/mounts"),
    ]);
    assert_eq!(out, format!("{baseline}2\n"));
    assert!(volumes(&f).is_empty(), "{:?}", volumes(&f));

    // A new named volume is filled once; a non-empty one is never filled again.
    assert!(f
        .ok(&["--rm", "-v", "cu:/etc", &img, "cat", "/etc/passwd"])
        .starts_with("root:"));
    f.ok(&["--rm", "-v", "cu:/etc", &img, "rm", "/etc/group"]);
    let out = f.ok(&[
        "--rm",
        "-v",
        "cu:/etc",
        &img,
        "sh",
        "-c",
        "ls /etc/group || echo gone",
    ]);
    assert!(out.ends_with("gone\n"), "{out}");
    // nocopy / volume-nocopy: left empty.
    for flag in [
        "-v=nc1:/etc:nocopy",
        "--mount=type=volume,src=nc2,dst=/etc,volume-nocopy",
    ] {
        let out = f.ok(&[
            "--rm",
            flag,
            &img,
            "sh",
            "-c",
            "ls /etc/passwd || echo empty",
        ]);
        assert!(out.ends_with("empty\n"), "{flag}: {out}");
    }
    for v in ["cu", "nc1", "nc2"] {
        f.env.ok(&["volume", "rm", v]);
    }
    f.assert_nothing_left();
}

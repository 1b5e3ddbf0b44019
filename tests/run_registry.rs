//! `nestcache run --stage docker://…`: the registry options reach the stage (an
//! authenticating registry on 127.0.0.1), and the staged image runs under containerd.

use testkit::registry::{Options, Registry, PASS, USER};
use testkit::{unique, Env};

#[test]
fn run_stages_from_an_authenticating_registry_with_its_options() {
    testkit::require!(containerd, tool "docker-registry", tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let mut spec = mkimage::preset("small").unwrap();
    spec.ref_name = "small".into();
    let layout = t.path().join("layout");
    spec.write_layout(&layout).unwrap();
    let reg = Registry::start(Options {
        htpasswd: true,
        tls: false,
    });
    reg.push(&layout, "small", "team/small:v1");
    let src = format!("docker://{}/team/small:v1", reg.addr);

    let env = Env::new("run-registry");
    let cache = unique("c");
    env.ok(&[
        "cache", "create", &cache, "--path", "/cache", "--ttl", "30m",
    ]);
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--cache", &cache, "--stage", &src];
        args.extend_from_slice(extra);
        args.extend(["staged", "--", "echo", "from-registry"]);
        env.run(&args)
    };

    // Without credentials the registry refuses, and says how to fix it.
    let out = run(&["--insecure"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("401") && err.contains("--creds"), "{err}");

    let creds = format!("{USER}:{PASS}");
    let out = run(&["--insecure", "--creds", &creds]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout, "from-registry\n");
    assert!(!stderr.contains(PASS), "password leaked: {stderr}");
    env.ok(&["cache", "rm", &cache]);
}

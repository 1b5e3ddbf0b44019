//! `nestcache stage docker://…` against a real distribution registry on 127.0.0.1
//! (Debian's docker-registry), seeded by skopeo with mkimage images; faults injected by
//! the test's own loopback proxy. Every failure must be one clear line with the store
//! left intact.

use std::path::Path;

use testkit::registry::proxy::{Faults, Proxy};
use testkit::registry::{
    blob_names, ingest_leftovers, nestcache, output, ref_digest, Options, Registry, PASS, USER,
};

fn image(dir: &Path, multi: bool) -> mkimage::Built {
    let mut spec = mkimage::preset("features").unwrap();
    spec.multi_platform = multi;
    spec.platform = mkimage::Platform::parse("linux/amd64").unwrap();
    spec.write_layout(&dir.join("layout")).unwrap()
}

fn stage(home: &Path, store: &Path, src: &str, extra: &[&str]) -> (bool, String, String) {
    output(
        nestcache(home)
            .args(["stage", src, "--store"])
            .arg(store)
            .args(extra),
    )
}

fn assert_store_ok(home: &Path, store: &Path) {
    let (ok, out, err) = output(
        nestcache(home)
            .args(["store", "check", "--store"])
            .arg(store),
    );
    assert!(ok, "store check failed: {out}{err}");
    assert_eq!(ingest_leftovers(store), 0, "temp files left in ingest/");
}

#[test]
fn anonymous_pull_stages_unpacks_and_reuses() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), false);
    let reg = Registry::start(Options::default());
    reg.push(&built.layout, "features", "team/app:v1");
    let store = t.path().join("store");
    let src = format!("docker://{}/team/app:v1", reg.addr);
    let (ok, out, err) = stage(t.path(), &store, &src, &["--insecure", "--json"]);
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    let name = format!("{}/team/app:v1", reg.addr);
    assert_eq!(report["reference"], name.as_str());
    assert_eq!(
        ref_digest(&store, &name).as_deref(),
        Some(built.image.manifest.digest.as_str())
    );
    let blobs = blob_names(&store);
    for l in &built.image.layers {
        assert!(
            blobs.contains(&l.desc.hex().to_string()),
            "layer {} missing",
            l.desc.digest
        );
    }
    assert!(store.join("layers").exists());
    assert_store_ok(t.path(), &store);

    // Again: every layer reused, nothing rewritten.
    let (ok, out, err) = stage(t.path(), &store, &src, &["--insecure", "--json"]);
    assert!(ok, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report["layers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|l| l["reused"] == true),
        "{out}"
    );

    // Plain http without --insecure is https: a clear failure, nothing staged.
    let other = t.path().join("other");
    let (ok, _, err) = stage(t.path(), &other, &src, &[]);
    assert!(!ok);
    assert!(err.contains(&reg.addr) && err.lines().count() == 1, "{err}");
    assert!(err.contains("--insecure"), "{err}");

    // A missing repository / tag: 404 named.
    let (ok, _, err) = stage(
        t.path(),
        &other,
        &format!("docker://{}/team/nope:v1", reg.addr),
        &["--insecure"],
    );
    assert!(!ok);
    assert!(
        err.contains("404") && err.contains("team/nope") && err.contains("manifest v1"),
        "{err}"
    );
}

#[test]
fn basic_auth_from_flag_authfile_and_docker_config() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), false);
    let reg = Registry::start(Options {
        htpasswd: true,
        tls: false,
    });
    reg.push(&built.layout, "features", "secure/app:v1");
    let src = format!("docker://{}/secure/app:v1", reg.addr);
    let store = t.path().join("store");
    let home = t.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let (ok, _, err) = stage(&home, &store, &src, &["--insecure"]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("secure/app") && err.contains("--creds"),
        "{err}"
    );

    let wrong = "tester:wrong-password-xyz";
    let (ok, _, err) = stage(&home, &store, &src, &["--insecure", "--creds", wrong]);
    assert!(!ok);
    assert!(err.contains("refused the credentials"), "{err}");
    assert!(
        !err.contains("wrong-password-xyz"),
        "password leaked: {err}"
    );
    assert_eq!(
        ref_digest(&store, &format!("{}/secure/app:v1", reg.addr)),
        None
    );

    let creds = format!("{USER}:{PASS}");
    let (ok, out, err) = stage(&home, &store, &src, &["--insecure", "--creds", &creds]);
    assert!(ok, "{out}{err}");
    assert!(!out.contains(PASS) && !err.contains(PASS));

    use base64::Engine as _;
    let auths = serde_json::json!({"auths": {reg.addr.clone(): {
        "auth": base64::engine::general_purpose::STANDARD.encode(&creds)}}});
    let authfile = t.path().join("auth.json");
    std::fs::write(&authfile, auths.to_string()).unwrap();
    let s2 = t.path().join("store2");
    let (ok, out, err) = stage(
        &home,
        &s2,
        &src,
        &["--insecure", "--no-unpack", "--authfile"],
    );
    assert!(!ok, "--authfile without a value must fail: {out}");
    let _ = err;
    let (ok, out, err) = output(
        nestcache(&home)
            .args(["stage", &src, "--insecure", "--no-unpack", "--store"])
            .arg(&s2)
            .arg("--authfile")
            .arg(&authfile),
    );
    assert!(ok, "{out}{err}");

    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(home.join(".docker/config.json"), auths.to_string()).unwrap();
    let s3 = t.path().join("store3");
    let (ok, out, err) = stage(&home, &s3, &src, &["--insecure", "--no-unpack"]);
    assert!(ok, "~/.docker/config.json not used: {out}{err}");
    assert_store_ok(&home, &s3);
}

#[test]
fn tls_with_a_self_signed_ca() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), false);
    let reg = Registry::start(Options {
        htpasswd: false,
        tls: true,
    });
    reg.push(&built.layout, "features", "tls/app:v1");
    let src = format!("docker://{}/tls/app:v1", reg.addr);
    let store = t.path().join("store");
    let (ok, _, err) = stage(t.path(), &store, &src, &["--no-unpack"]);
    assert!(!ok);
    assert!(err.contains("TLS") && err.contains("--tls-ca"), "{err}");
    let ca = reg.ca.clone().unwrap();
    let (ok, out, err) = output(
        nestcache(t.path())
            .args(["stage", &src, "--no-unpack", "--store"])
            .arg(&store)
            .arg("--tls-ca")
            .arg(&ca),
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        ref_digest(&store, &format!("{}/tls/app:v1", reg.addr)).as_deref(),
        Some(built.image.manifest.digest.as_str())
    );
}

#[test]
fn by_digest_and_multi_platform_index() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), true);
    let reg = Registry::start(Options::default());
    reg.push(&built.layout, "features", "multi/app:v1");
    let store = t.path().join("store");
    let other = built.other.as_ref().unwrap();

    let (ok, out, err) = stage(
        t.path(),
        &store,
        &format!("docker://{}/multi/app:v1", reg.addr),
        &["--insecure", "--no-unpack", "--platform", "linux/amd64"],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        ref_digest(&store, &format!("{}/multi/app:v1", reg.addr)).as_deref(),
        Some(built.image.manifest.digest.as_str())
    );

    let (ok, out, err) = stage(
        t.path(),
        &store,
        &format!("docker://{}/multi/app:v1", reg.addr),
        &[
            "--insecure",
            "--no-unpack",
            "--platform",
            "linux/arm64",
            "--ref",
            "arm",
        ],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        ref_digest(&store, "arm").as_deref(),
        Some(other.manifest.digest.as_str())
    );

    // By digest: the index's own digest pins the whole image.
    let by_digest = format!("{}/multi/app@{}", reg.addr, built.top.digest);
    let (ok, out, err) = stage(
        t.path(),
        &store,
        &format!("docker://{by_digest}"),
        &["--insecure", "--no-unpack", "--platform", "linux/amd64"],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        ref_digest(&store, &by_digest).as_deref(),
        Some(built.image.manifest.digest.as_str())
    );

    // A well-formed digest that is not there: 404, nothing recorded.
    let absent = format!("{}/multi/app@sha256:{}", reg.addr, "0".repeat(64));
    let (ok, _, err) = stage(
        t.path(),
        &store,
        &format!("docker://{absent}"),
        &["--insecure"],
    );
    assert!(!ok);
    assert!(err.contains("404"), "{err}");
    assert_eq!(ref_digest(&store, &absent), None);
    assert_store_ok(t.path(), &store);
}

/// The biggest layer (the generated one) is where mid-stream faults are injected.
fn biggest_layer(built: &mkimage::Built) -> String {
    built
        .image
        .layers
        .iter()
        .max_by_key(|l| l.desc.size)
        .unwrap()
        .desc
        .digest
        .clone()
}

#[test]
fn faults_recover_or_fail_cleanly() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), false);
    let reg = Registry::start(Options::default());
    reg.push(&built.layout, "features", "faulty/app:v1");
    let big = biggest_layer(&built);
    let home = t.path();

    // Cut mid-stream once: resumed with a Range request, staged intact.
    let proxy = Proxy::start(
        &reg.addr,
        Faults {
            cut_blob_once: Some((big.clone(), 40_000)),
            ..Default::default()
        },
    );
    let store = t.path().join("cut");
    let (ok, out, err) = stage(
        home,
        &store,
        &format!("docker://{}/faulty/app:v1", proxy.addr),
        &["--insecure", "--no-unpack"],
    );
    assert!(ok, "{out}{err}");
    assert!(
        proxy.state.ranged.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "{:?}",
        proxy.requests()
    );
    assert_store_ok(home, &store);

    // 500 once on the manifest, then once on a blob: retried.
    for what in ["/manifests/", big.as_str()] {
        let proxy = Proxy::start(
            &reg.addr,
            Faults {
                error_500_once: Some(what.to_string()),
                ..Default::default()
            },
        );
        let store = t.path().join(format!("e500-{}", what.len()));
        let (ok, out, err) = stage(
            home,
            &store,
            &format!("docker://{}/faulty/app:v1", proxy.addr),
            &["--insecure", "--no-unpack"],
        );
        assert!(ok, "{what}: {out}{err}");
        assert_store_ok(home, &store);
    }

    // Corrupted bytes: refused by the digest check, blob not stored, earlier image intact.
    let store = t.path().join("cut");
    let before = blob_names(&store);
    std::fs::remove_file(
        store
            .join("blobs/sha256")
            .join(big.trim_start_matches("sha256:")),
    )
    .unwrap();
    let proxy = Proxy::start(
        &reg.addr,
        Faults {
            corrupt_blob: Some(big.clone()),
            ..Default::default()
        },
    );
    let (ok, _, err) = stage(
        home,
        &store,
        &format!("docker://{}/faulty/app:v1", proxy.addr),
        &["--insecure", "--no-unpack", "--ref", "second"],
    );
    assert!(!ok);
    assert!(
        err.contains("digest mismatch") && err.contains(&big),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!blob_names(&store).contains(&big.trim_start_matches("sha256:").to_string()));
    assert_eq!(blob_names(&store).len(), before.len() - 1);
    assert_eq!(ref_digest(&store, "second"), None);
    assert_eq!(ingest_leftovers(&store), 0);
}

#[test]
fn bearer_token_and_redirect_without_leaking_auth() {
    testkit::require!(tool "docker-registry", tool "skopeo", tool "openssl");
    let t = tempfile::tempdir().unwrap();
    let built = image(t.path(), false);
    let reg = Registry::start(Options::default());
    reg.push(&built.layout, "features", "tok/app:v1");
    let storage = Proxy::start(&reg.addr, Faults::default());
    let front = Proxy::start(
        &reg.addr,
        Faults {
            bearer: Some((USER.into(), PASS.into())),
            redirect_blobs_to: Some(storage.addr.clone()),
            ..Default::default()
        },
    );
    let src = format!("docker://{}/tok/app:v1", front.addr);
    let store = t.path().join("store");

    let (ok, _, err) = stage(t.path(), &store, &src, &["--insecure", "--no-unpack"]);
    assert!(!ok);
    assert!(
        err.contains("401") && err.contains("token service"),
        "{err}"
    );

    let creds = format!("{USER}:{PASS}");
    let (ok, out, err) = stage(
        t.path(),
        &store,
        &src,
        &["--insecure", "--no-unpack", "--creds", &creds],
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        ref_digest(&store, &format!("{}/tok/app:v1", front.addr)).as_deref(),
        Some(built.image.manifest.digest.as_str())
    );
    let blob_gets = storage
        .requests()
        .iter()
        .filter(|r| r.contains("/blobs/"))
        .count();
    assert!(
        blob_gets >= built.image.layers.len(),
        "redirects not followed: {:?}",
        storage.requests()
    );
    assert_eq!(
        storage
            .state
            .with_auth
            .load(std::sync::atomic::Ordering::SeqCst),
        0,
        "Authorization was forwarded to the redirect target"
    );
}

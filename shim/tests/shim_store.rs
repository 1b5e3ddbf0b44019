//! The nestcache part of the shim: a spec annotated with `io.nestcache.store` and
//! `io.nestcache.image` gets its rootfs assembled by the shim from the store's extracted
//! layers — an image containerd has never seen — and nothing stays mounted afterwards.

use std::path::Path;

use testkit::ctr::*;
use testkit::rootfs::*;
use testkit::{stderr, stdout, unique};

const STORE: &str = "io.nestcache.store";
const IMAGE: &str = "io.nestcache.image";

struct Fixture {
    _work: tempfile::TempDir,
    /// The shim's config (`ctr run --runtime-config-path`): stores under the work dir.
    config: std::path::PathBuf,
    store: std::path::PathBuf,
    empty: std::path::PathBuf,
    digest: String,
}

fn fixture(ref_name: &str) -> Fixture {
    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    let digest = store_with_busybox(&work.path().join("build"), &store, ref_name);
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let config = shim_config(work.path(), &[work.path()]);
    Fixture {
        _work: work,
        config,
        store,
        empty,
        digest,
    }
}

fn annotations(config: &Path, store: &Path, image: &str) -> Vec<String> {
    vec![
        "--runtime-config-path".into(),
        config.display().to_string(),
        "--annotation".into(),
        format!("{STORE}={}", store.display()),
        "--annotation".into(),
        format!("{IMAGE}={image}"),
    ]
}

fn run_annotated(
    ctr: &Ctr,
    f: &Fixture,
    image: &str,
    extra: &[&str],
    id: &str,
    cmd: &[&str],
) -> std::process::Output {
    let ann = annotations(&f.config, &f.store, image);
    let mut args: Vec<&str> = ann.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    ctr.run_rootfs(&f.empty, &args, id, cmd)
}

#[test]
fn runs_an_image_from_the_store_by_ref_and_by_digest() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-store");
    let f = fixture("marker-one");
    for image in ["marker-one", f.digest.as_str()] {
        let id = unique("s");
        let out = run_annotated(
            &ctr,
            &f,
            image,
            &["--rm"],
            &id,
            &["/bin/sh", "-c", "cat /etc/nestcache-test; exit 6"],
        );
        assert_eq!(out.status.code(), Some(6), "{image}: {}", stderr(&out));
        assert_eq!(stdout(&out), "marker-one\n");
        assert!(
            mounts_containing(&id).is_empty(),
            "{:?}",
            mounts_containing(&id)
        );
    }
    // The directory passed as --rootfs is left alone: the shim mounts in the bundle.
    assert_eq!(std::fs::read_dir(&f.empty).unwrap().count(), 0);
}

#[test]
fn writes_go_to_the_container_upper_dir_not_the_store() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-store-rw");
    let f = fixture("rw");
    let id = unique("s");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let out = run_annotated(
        &ctr,
        &f,
        "rw",
        &["-d"],
        &id,
        &[
            "/bin/sh",
            "-c",
            "echo changed > /etc/nestcache-test; sleep 1000",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pid = ctr.task_pid(&id);
    let seen = format!("/proc/{pid}/root/etc/nestcache-test");
    ctr.wait_for("the write inside the container", || {
        std::fs::read_to_string(&seen).is_ok_and(|s| s == "changed\n")
    });
    let mounted = mounts_containing(&id);
    assert_eq!(mounted.len(), 1, "{mounted:?}");
    assert!(mounted[0].ends_with("/rootfs"), "{mounted:?}");
    ctr.remove(&id);
    assert!(mounts_containing(&id).is_empty());
    // Every extracted copy of the file in the store still says the original.
    let layers = f.store.join("layers/diff");
    for layer in std::fs::read_dir(layers).unwrap() {
        let file = layer.unwrap().path().join("etc/nestcache-test");
        assert_eq!(std::fs::read_to_string(file).unwrap(), "rw\n");
    }
}

fn assert_create_fails(ctr: &Ctr, f: &Fixture, store: &Path, image: &str, expect: &[&str]) {
    assert_create_fails_with(ctr, f, &f.config, store, image, expect)
}

fn assert_create_fails_with(
    ctr: &Ctr,
    f: &Fixture,
    config: &Path,
    store: &Path,
    image: &str,
    expect: &[&str],
) {
    let id = unique("bad");
    let ann = annotations(config, store, image);
    let mut args: Vec<&str> = ann.iter().map(String::as_str).collect();
    args.push("--rm");
    let out = ctr.run_rootfs(&f.empty, &args, &id, &["/bin/true"]);
    assert!(!out.status.success(), "{image} in {} ran", store.display());
    let err = stderr(&out);
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        mounts_containing(&id).is_empty(),
        "{:?}",
        mounts_containing(&id)
    );
    assert!(ctr.task_status(&id).is_none());
    let _ = ctr.run(&["container", "rm", &id]);
}

#[test]
fn missing_store_unknown_image_and_unextracted_layer_fail_create_clearly() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-store-bad");
    let f = fixture("present");
    let nowhere = f.store.with_file_name("no-such-store");
    assert_create_fails(
        &ctr,
        &f,
        &nowhere,
        "present",
        &["no-such-store", "oci-layout"],
    );
    assert!(!nowhere.exists(), "a missing store must not be created");
    assert_create_fails(&ctr, &f, &f.store, "absent", &["absent", "present"]);
    // Take the extracted layer away: the image is there, its rootfs is not.
    let layers = f.store.join("layers/diff");
    for l in std::fs::read_dir(&layers).unwrap() {
        std::fs::remove_dir_all(l.unwrap().path()).unwrap();
    }
    assert_create_fails(
        &ctr,
        &f,
        &f.store,
        "present",
        &["extracted layer", "present"],
    );
}

/// The store's leases held by container `id`.
fn leases_of(store: &Path, id: &str) -> Vec<nestcache::store::Lease> {
    let st = nestcache::store::Store::open_existing(store).unwrap();
    let leases = st.leases().unwrap();
    leases
        .into_iter()
        .filter(|l| l.holder.container == id)
        .collect()
}

#[test]
fn a_running_store_container_holds_a_lease_gc_respects_until_delete() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-store-lease");
    let f = fixture("leased");
    let id = unique("s");
    let _guard = TaskGuard {
        ctr: &ctr,
        id: id.clone(),
    };
    let out = run_annotated(&ctr, &f, "leased", &["-d"], &id, &["/bin/sleep", "1000"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let leases = leases_of(&f.store, &id);
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0].manifest.to_string(), f.digest);
    assert_eq!(leases[0].holder.namespace, ctr.namespace);
    // The ref goes; gc keeps what the running container uses.
    let st = nestcache::store::Store::open_existing(&f.store).unwrap();
    st.remove_ref("leased").unwrap();
    st.gc().unwrap();
    let pid = ctr.task_pid(&id);
    let marker = format!("/proc/{pid}/root/etc/nestcache-test");
    assert_eq!(std::fs::read_to_string(marker).unwrap(), "leased\n");
    ctr.remove(&id);
    assert!(
        leases_of(&f.store, &id).is_empty(),
        "the lease outlived its container"
    );
}

#[test]
fn a_store_outside_the_allowed_roots_is_refused() {
    let ctr = Ctr::new("shim-store-roots");
    let f = fixture("roots");
    let elsewhere = tempfile::tempdir().unwrap();
    // Allowed: another dir, and a symlink inside it that points at the real store.
    let link = elsewhere.path().join("link");
    std::os::unix::fs::symlink(&f.store, &link).unwrap();
    let config = shim_config(elsewhere.path(), &[elsewhere.path()]);
    let expect = ["not under an allowed store root", "store_roots"];
    assert_create_fails_with(&ctr, &f, &config, &f.store, "roots", &expect);
    assert_create_fails_with(&ctr, &f, &config, &link, "roots", &expect);
    // No options at all: only nestcache's state dir is allowed, not a temp dir.
    let id = unique("noopts");
    let ann = format!("{STORE}={}", f.store.display());
    let img = format!("{IMAGE}=roots");
    let args = ["--rm", "--annotation", &ann, "--annotation", &img];
    let out = ctr.run_rootfs(&f.empty, &args, &id, &["/bin/true"]);
    assert!(!out.status.success(), "ran from a store outside the roots");
    assert!(
        stderr(&out).contains("not under an allowed store root"),
        "{}",
        stderr(&out)
    );
    let _ = ctr.run(&["container", "rm", &id]);
}

#[test]
fn half_annotated_spec_is_refused() {
    testkit::require!(containerd, tool "ctr", tool "busybox", tool "umoci");
    let ctr = Ctr::new("shim-store-half");
    let f = fixture("half");
    let id = unique("s");
    let store_only = format!("{STORE}={}", f.store.display());
    let out = ctr.run_rootfs(
        &f.empty,
        &["--rm", "--annotation", &store_only],
        &id,
        &["/bin/true"],
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains(IMAGE), "{}", stderr(&out));
    let _ = ctr.run(&["container", "rm", &id]);
}

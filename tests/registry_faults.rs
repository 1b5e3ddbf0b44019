//! A hostile or faulty registry (the loopback fault proxy in front of a real registry):
//! every case ends in one clear line, bounded by the configured deadlines, with the store
//! intact; a killed stage resumes from its offset; concurrent stagers of one image fetch
//! and write each blob once.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::images::{image, OCI_MANIFEST};
use testkit::registry::proxy::{Faults, Proxy};
use testkit::registry::{ingest_leftovers, nestcache, output, ref_digest, serve_image, Pushed};

/// Small deadlines so that every hostile case ends in seconds.
const DEADLINES: &[&str] = &[
    "--registry-timeout",
    "2s",
    "--registry-stall-window",
    "1s",
    "--registry-min-rate",
    "10000",
];

fn stage_cmd(home: &Path, store: &Path, proxy: &Proxy, extra: &[&str]) -> Command {
    let mut c = nestcache(home);
    c.args(["stage", &format!("docker://{}/faulty/app:v1", proxy.addr)])
        .arg("--store")
        .arg(store)
        .args(["--insecure", "--no-unpack"])
        .args(extra);
    c
}

/// Waits for `child`, killing it (and failing) if it hangs: the bound is generous, what
/// matters is that it is finite. Returns (success, stderr, seconds taken).
fn finish(mut child: Child, case: &str) -> (bool, String, f64) {
    let started = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (st.success(), err, started.elapsed().as_secs_f64());
        }
        if started.elapsed() > Duration::from_secs(90) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{case}: stage still running after 90 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_store_ok(home: &Path, store: &Path) {
    if !store.join("oci-layout").exists() {
        return;
    }
    let (ok, out, err) = output(
        nestcache(home)
            .args(["store", "check", "--store"])
            .arg(store),
    );
    assert!(ok, "store check failed: {out}{err}");
    assert_eq!(ingest_leftovers(store), 0, "temp files left in ingest/");
}

/// The manifest with a 2^60-byte descriptor for its smallest layer, served in its place.
fn huge_manifest(p: &Pushed) -> Vec<u8> {
    let mut m = p.manifest.clone();
    let small = p.small();
    for l in m["layers"].as_array_mut().unwrap() {
        if l["digest"] == small.as_str() {
            l["size"] = json!(1u64 << 60);
        }
    }
    serde_json::to_vec(&m).unwrap()
}

#[test]
fn hostile_registry_cases_each_end_in_one_line() {
    testkit::require!(tool "docker-registry", tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let img = image(600, 2, "amd64", 2 << 20);
    let (reg, pushed) = serve_image(t.path(), &img, "faulty/app:v1");
    let big = pushed.big().0;
    let small = pushed.small();
    let huge = huge_manifest(&pushed);
    let media_type = pushed.manifest["mediaType"]
        .as_str()
        .unwrap_or(OCI_MANIFEST)
        .to_string();

    let cases: Vec<(&str, Faults, &[&str], &str)> = vec![
        (
            "slow-loris manifest headers",
            Faults {
                slow_head: Some("/manifests/".into()),
                ..Default::default()
            },
            &[],
            "within",
        ),
        (
            "manifest body at 10 B/s",
            Faults {
                slow_body: Some("/manifests/".into()),
                ..Default::default()
            },
            &[],
            "no complete answer within 2s",
        ),
        (
            "blob headers at 10 B/s",
            Faults {
                slow_head: Some(big.clone()),
                ..Default::default()
            },
            &[],
            "headers did not arrive within 1s",
        ),
        (
            "stall mid-blob",
            Faults {
                stall_blob: Some((big.clone(), 100_000)),
                ..Default::default()
            },
            &[],
            "stalled: nothing received for 1s",
        ),
        (
            "blob body at 10 B/s",
            Faults {
                slow_body: Some(big.clone()),
                ..Default::default()
            },
            &[],
            "too slow",
        ),
        (
            "endless blob",
            Faults {
                endless_blob: Some(big.clone()),
                ..Default::default()
            },
            &[],
            "digest mismatch",
        ),
        (
            "2^60-byte layer descriptor",
            Faults {
                manifest: Some(("v1".into(), media_type.clone(), huge.clone())),
                endless_blob: Some(small.clone()),
                ..Default::default()
            },
            &[],
            "is above the limit of 34359738368 bytes",
        ),
        (
            "2^60-byte layer descriptor, limit raised",
            Faults {
                manifest: Some(("v1".into(), media_type.clone(), huge.clone())),
                endless_blob: Some(small.clone()),
                ..Default::default()
            },
            &["--max-layer-size", "1048576TiB"],
            "bytes free",
        ),
        (
            "Content-Length shorter than the body",
            Faults {
                lie_length: Some((big.clone(), -1000)),
                ..Default::default()
            },
            &[],
            "connection closed early",
        ),
        (
            "redirect loop",
            Faults {
                redirect_loop: Some("/manifests/".into()),
                ..Default::default()
            },
            &[],
            "too many or broken redirects",
        ),
        (
            "auth loop",
            Faults {
                auth_loop: true,
                ..Default::default()
            },
            &[],
            "401 Unauthorized",
        ),
    ];
    for (i, (case, faults, extra, needle)) in cases.into_iter().enumerate() {
        let proxy = Proxy::start(&reg.addr, faults);
        let store = t.path().join(format!("store-{i}"));
        let child = stage_cmd(t.path(), &store, &proxy, DEADLINES)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (ok, err, secs) = finish(child, case);
        eprintln!("{case}: {secs:.1}s: {}", err.trim());
        assert!(!ok, "{case}: staged anyway");
        assert!(
            err.contains(needle),
            "{case}: expected {needle:?} in: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{case}: {err}");
        // Registry faults name the registry; size refusals name the digest and limit.
        assert!(
            err.contains(&proxy.addr) || err.contains("sha256:"),
            "{case}: names neither registry nor digest: {err}"
        );
        assert_eq!(ref_digest(&store, "faulty/app:v1"), None, "{case}");
        if case.starts_with("2^60") {
            assert_eq!(proxy.blob_gets(&small), 0, "{case}: read before refusing");
        }
        assert_store_ok(t.path(), &store);
    }

    // A Content-Length longer than the body is harmless: no more than the descriptor's
    // size is ever read.
    let proxy = Proxy::start(
        &reg.addr,
        Faults {
            lie_length: Some((big.clone(), 1000)),
            ..Default::default()
        },
    );
    let store = t.path().join("store-longer");
    let (ok, _, err) = output(&mut stage_cmd(t.path(), &store, &proxy, DEADLINES));
    assert!(ok, "{err}");
    assert_store_ok(t.path(), &store);
}

#[test]
fn killed_stage_resumes_from_its_offset() {
    testkit::require!(tool "docker-registry", tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let img = image(610, 2, "amd64", 6 << 20);
    let (reg, pushed) = serve_image(t.path(), &img, "faulty/app:v1");
    let (big, size) = pushed.big();
    let size = size as usize;
    let store = t.path().join("store");
    let cut = (3 << 20) + 12_345;

    // The registry stalls after `cut` bytes; the stage is killed while it waits.
    let stalling = Proxy::start(
        &reg.addr,
        Faults {
            stall_blob: Some((big.clone(), cut)),
            ..Default::default()
        },
    );
    let mut child = stage_cmd(t.path(), &store, &stalling, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let partial = store
        .join("ingest")
        .join(format!("{}.tmp", big.trim_start_matches("sha256:")));
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < cut as u64 {
        assert!(
            Instant::now() < deadline,
            "the partial ingest never reached {cut} bytes"
        );
        assert!(child.try_wait().unwrap().is_none(), "stage ended early");
        std::thread::sleep(Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let proxy = Proxy::start(&reg.addr, Faults::default());
    let (ok, out, err) = output(&mut stage_cmd(t.path(), &store, &proxy, &["--json"]));
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(&out).unwrap();
    let layer = report["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["digest"] == big.as_str())
        .unwrap();
    assert_eq!(layer["resumed_from"], cut as u64, "{report}");
    // Only the rest came from the registry, by a Range request.
    assert_eq!(proxy.blob_bytes(&big), size - cut);
    assert!(proxy.state.ranged.load(Ordering::SeqCst) >= 1);
    assert_store_ok(t.path(), &store);
}

#[test]
fn four_concurrent_stages_fetch_and_write_each_blob_once() {
    testkit::require!(tool "docker-registry", tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let img = image(620, 3, "amd64", 8 << 20);
    let (reg, pushed) = serve_image(t.path(), &img, "faulty/app:v1");
    let proxy = Proxy::start(&reg.addr, Faults::default());
    let store = t.path().join("store");
    nestcache::store::Store::open(&store).unwrap();
    let children: Vec<Child> = (0..4)
        .map(|_| {
            stage_cmd(t.path(), &store, &proxy, &["--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut written = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        written += report["bytes_written"].as_u64().unwrap();
    }
    for (d, _) in &pushed.layers {
        assert_eq!(proxy.blob_gets(d), 1, "{d}: {:?}", proxy.requests());
    }
    let total = pushed.layers.iter().map(|l| l.1).sum::<u64>()
        + pushed.manifest["config"]["size"].as_u64().unwrap()
        + pushed.raw.len() as u64;
    assert_eq!(written, total, "bytes written by the four stages together");
    assert_store_ok(t.path(), &store);
}

#[test]
fn sigint_and_sigterm_remove_the_partial_ingest_with_one_line() {
    testkit::require!(tool "docker-registry", tool "skopeo");
    let t = tempfile::tempdir().unwrap();
    let img = image(630, 2, "amd64", 2 << 20);
    let (reg, pushed) = serve_image(t.path(), &img, "faulty/app:v1");
    let (big, _) = pushed.big();
    // The registry stalls mid-blob: the signal lands while the partial ingest exists.
    let proxy = Proxy::start(
        &reg.addr,
        Faults {
            stall_blob: Some((big.clone(), 300_000)),
            ..Default::default()
        },
    );
    for (sig, code, name) in [
        (nix::sys::signal::Signal::SIGINT, 130, "SIGINT"),
        (nix::sys::signal::Signal::SIGTERM, 143, "SIGTERM"),
    ] {
        let store = t.path().join(format!("store-{name}"));
        let child = stage_cmd(t.path(), &store, &proxy, &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let partial = store
            .join("ingest")
            .join(format!("{}.tmp", big.trim_start_matches("sha256:")));
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::fs::metadata(&partial).map_or(0, |m| m.len()) == 0 {
            assert!(
                Instant::now() < deadline,
                "{name}: no partial ingest appeared"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
        assert!(
            err.contains(&format!("interrupted by {name}")) && !err.contains("removed 0 temp"),
            "{name}: {err}"
        );
        assert_store_ok(t.path(), &store);
    }
}

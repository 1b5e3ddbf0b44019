//! The store under stress: SIGKILL mid-stage, concurrent stagers, `store check` finding
//! corruption.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::images::*;
use testkit::leaks::temp_leftovers;

/// Size of everything in a directory's regular files.
fn bytes_in(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn sigkill_mid_stage_then_rerun_reuses_verified_blobs() {
    let d = Dirs::new();
    // Small layers first, then a big one, so the kill lands while the big one streams.
    let img = image(200, 4, "amd64", 96 << 20);
    oci_dir(&d.path("src"), &[&img], &[("big", &img.manifest)]);
    let store = d.s("store");
    let mut child = Command::new(env!("CARGO_BIN_EXE_nestcache"))
        .args([
            "stage",
            &format!("oci:{}", d.s("src")),
            "--store",
            &store,
            "--no-unpack",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until part of the big layer is in ingest/ (not a timing assert: the loop ends
    // either way, and the checks below hold wherever the kill lands).
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && bytes_in(&d.path("store/ingest")) < (8 << 20) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill(); // SIGKILL
    child.wait().unwrap();

    let check = json(&["store", "check", "--store", &store, "--json"]);
    assert_eq!(check["ok"], true, "{check}");
    let layers_present = img
        .layers
        .iter()
        .filter(|l| d.path("store/blobs/sha256").join(l.digest().hex()).exists())
        .count();
    let rerun = json(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--store",
        &store,
        "--no-unpack",
        "--json",
    ]);
    assert_eq!(refs(&store), ["big"]);
    let reused = rerun["layers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["reused"] == true)
        .count();
    // Every layer blob that was complete before the kill was reused, not rewritten.
    assert_eq!(reused, layers_present, "{rerun}");
    ok(&["store", "gc", "--store", &store]);
    assert_intact(&store);
}

#[test]
fn concurrent_stagers_never_corrupt_the_store() {
    let d = Dirs::new();
    let a = image(300, 3, "amd64", 2 << 20);
    let b = image(301, 3, "amd64", 2 << 20);
    oci_dir(
        &d.path("src"),
        &[&a, &b],
        &[("a", &a.manifest), ("b", &b.manifest)],
    );
    let store = d.s("store");
    // Created up front so the concurrent gc below always finds a store.
    nestcache::store::Store::open(&store).unwrap();
    let children: Vec<_> = (0..6)
        .map(|i| {
            let name = if i % 2 == 0 { "a" } else { "b" };
            Command::new(env!("CARGO_BIN_EXE_nestcache"))
                .args([
                    "stage",
                    &format!("oci:{}:{name}", d.s("src")),
                    "--store",
                    &store,
                    "--ref",
                    &format!("{name}:{i}"),
                    "--no-unpack",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // gc runs meanwhile: it must wait for the stagers, never take their unreferenced blobs.
    std::thread::sleep(Duration::from_millis(50));
    let gcs: Vec<_> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_nestcache"))
                .args(["store", "gc", "--store", &store])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children.into_iter().chain(gcs) {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut names = refs(&store);
    names.sort();
    assert_eq!(names, ["a:0", "a:2", "a:4", "b:1", "b:3", "b:5"]);
    assert_intact(&store);
    // Concurrent unpacks of both images as well.
    let unpackers: Vec<_> = ["a:0", "b:1", "a:2", "b:3"]
        .iter()
        .map(|r| {
            Command::new(env!("CARGO_BIN_EXE_nestcache"))
                .args(["store", "unpack", r, "--store", &store])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in unpackers {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `img` staged (blobs only) from an OCI dir into `<d>/store`; returns it and the store.
fn staged_blobs(d: &Dirs, img: Image) -> (Image, String) {
    oci_dir(&d.path("src"), &[&img], &[("x", &img.manifest)]);
    let store = d.s("store");
    ok(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--store",
        &store,
        "--no-unpack",
    ]);
    (img, store)
}

#[test]
fn check_reports_corrupt_and_missing_blobs() {
    let d = Dirs::new();
    let (img, store) = staged_blobs(&d, image(400, 2, "amd64", 0));

    let l0 = d
        .path("store/blobs/sha256")
        .join(img.layers[0].digest().hex());
    let mut data = fs::read(&l0).unwrap();
    data[10] ^= 1;
    fs::write(&l0, data).unwrap();
    fs::remove_file(
        d.path("store/blobs/sha256")
            .join(img.layers[1].digest().hex()),
    )
    .unwrap();

    let out = nc(&["store", "check", "--store", &store, "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    assert_eq!(
        report["corrupt"][0]["expected"],
        img.layers[0].digest().to_string()
    );
    let missing: Vec<&str> = report["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert!(
        missing.contains(&img.layers[1].digest().to_string().as_str()),
        "{report}"
    );
    let err = fails(&["store", "check", "--store", &store]);
    assert!(err.contains("1 corrupt and 2 missing"), "{err}");

    // Re-staging with --verify-existing repairs it.
    ok(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--store",
        &store,
        "--no-unpack",
        "--verify-existing",
    ]);
    assert_intact(&store);
}

#[test]
fn sigkill_at_many_moments_always_leaves_a_consistent_store() {
    let d = Dirs::new();
    let img = image(210, 5, "amd64", 24 << 20);
    oci_dir(&d.path("src"), &[&img], &[("x", &img.manifest)]);
    let store = d.s("store");
    // The kill lands at a different point each round (the delays only vary where; the
    // checks hold wherever it lands, including after the stage has finished).
    for delay_ms in [0u64, 2, 5, 10, 20, 40, 80, 160] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_nestcache"))
            .args(["stage", &format!("oci:{}", d.s("src")), "--store", &store])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        child.wait().unwrap();
        if Path::new(&store).join("oci-layout").exists() {
            let check = json(&["store", "check", "--store", &store, "--json"]);
            assert_eq!(check["ok"], true, "after a kill at {delay_ms} ms: {check}");
            // A ref, if any, reaches a complete image (check walked it above).
            assert!(refs(&store).iter().all(|r| r == "x"));
        }
        // Remove the ref between rounds so each round has work to do.
        let _ = nc(&["images", "rm", "x", "--store", &store]);
    }
    // The re-stage reclaims what the killed ones left (their locks died with them) and
    // resumes their partial ingests: no temp file or extraction dir is left anywhere.
    ok(&["stage", &format!("oci:{}", d.s("src")), "--store", &store]);
    assert_eq!(temp_leftovers(Path::new(&store)), Vec::<String>::new());
    ok(&["store", "unpack", "x", "--store", &store]);
    ok(&["store", "gc", "--store", &store]);
    assert_intact(&store);
}

#[test]
fn check_names_every_bad_blob_when_hashing_in_parallel() {
    let d = Dirs::new();
    let (img, store) = staged_blobs(&d, image(300, 6, "amd64", 7));
    let blobs = d.path("store/blobs/sha256");
    let flipped = blobs.join(img.layers[1].digest().hex());
    let mut data = fs::read(&flipped).unwrap();
    data[0] ^= 0xff;
    fs::write(&flipped, data).unwrap();
    let truncated = blobs.join(img.layers[4].digest().hex());
    let len = fs::metadata(&truncated).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    fs::write(blobs.join("stray"), b"x").unwrap();
    let total = fs::read_dir(&blobs).unwrap().count() as u64;

    let out = nc(&["store", "check", "--store", &store, "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expected: Vec<String> = report["corrupt"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["expected"].as_str().unwrap().to_string())
        .collect();
    expected.sort();
    let mut want = vec![
        img.layers[1].digest().to_string(),
        img.layers[4].digest().to_string(),
        "sha256:stray".to_string(),
    ];
    want.sort();
    assert_eq!(expected, want, "{report}");
    // Every blob but the stray one was hashed.
    assert_eq!(report["blobs_checked"], total - 1, "{report}");
    // The ref reaches both bad layers, so they also count as missing for it.
    let mut missing: Vec<String> = report["missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap().to_string())
        .collect();
    missing.sort();
    want.retain(|w| w != "sha256:stray");
    assert_eq!(missing, want, "{report}");
}

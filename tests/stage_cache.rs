//! `--cache NAME`: staging into a cache container's content dir (through containerd), next
//! to files the cache's users keep there, and listing/checking it by name.

use serde_json::Value;
use testkit::images::*;
use testkit::Env;

#[test]
fn stage_into_a_cache_by_name() {
    testkit::require!(containerd);
    let env = Env::new("stage-cache");
    let d = Dirs::new();
    let img = image(600, 2, "amd64", 0);
    oci_dir(&d.path("src"), &[&img], &[("app", &img.manifest)]);

    let created: Value =
        serde_json::from_str(&env.ok(&["cache", "create", "c", "--path", "/cache", "--json"]))
            .unwrap();
    let _ = created;
    let info: Value = serde_json::from_str(&env.ok(&["cache", "inspect", "c", "--json"])).unwrap();
    let content = std::path::PathBuf::from(info["content_dir"].as_str().unwrap());
    // The cache's users may already keep files there.
    std::fs::write(content.join("notes.txt"), "mine\n").unwrap();

    // Nothing staged yet: an empty listing, not an error.
    let ls: Value =
        serde_json::from_str(&env.ok(&["images", "ls", "--cache", "c", "--json"])).unwrap();
    assert_eq!(ls.as_array().unwrap().len(), 0);

    let report: Value = serde_json::from_str(&env.ok(&[
        "stage",
        &format!("oci:{}", d.s("src")),
        "--cache",
        "c",
        "--json",
    ]))
    .unwrap();
    assert_eq!(report["reference"], "app");
    assert_eq!(report["store"], content.to_str().unwrap());
    assert!(content
        .join("blobs/sha256")
        .join(img.manifest.digest().hex())
        .is_file());
    assert_eq!(
        std::fs::read_to_string(content.join("notes.txt")).unwrap(),
        "mine\n"
    );
    env.ok(&["store", "check", "--cache", "c"]);
    let ls: Value =
        serde_json::from_str(&env.ok(&["images", "ls", "--cache", "c", "--json"])).unwrap();
    assert_eq!(ls[0]["reference"], "app");

    let err = env.fails(&["stage", &format!("oci:{}", d.s("src")), "--cache", "nope"]);
    assert!(err.contains("nope"), "{err}");
    env.ok(&["cache", "rm", "c"]);
}

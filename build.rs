//! Builds the keeper (keeper/keeper.rs), the cache container's PID 1, as a small static
//! binary with the same rustc, into OUT_DIR; `src/cache/keeper.rs` embeds it.
//! It is std-only so that plain `rustc` builds it, with no Cargo and no crates.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=keeper/keeper.rs");
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string());
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let target = env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(&rustc)
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "bin",
            "--crate-name",
            "keeper",
        ])
        .args(["--target", &target])
        .args(["-C", "target-feature=+crt-static"])
        .args(["-C", "opt-level=s"])
        .args(["-C", "panic=abort"])
        .args(["-C", "strip=symbols"])
        .args(["-C", "debuginfo=0"])
        .arg("-o")
        .arg(out.join("keeper"))
        .arg("keeper/keeper.rs")
        .status()
        .unwrap_or_else(|e| panic!("running {rustc} for keeper/keeper.rs: {e}"));
    assert!(
        status.success(),
        "building keeper/keeper.rs failed: {status}"
    );
}

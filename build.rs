//! Builds the keeper (keeper/keeper.rs), the cache container's PID 1, and the init of
//! `run --init` (init/init.rs) as small static binaries with the same rustc, into
//! OUT_DIR; `src/cache/keeper.rs` and `src/nested/init.rs` embed them. They are std-only
//! so that plain `rustc` builds them, with no Cargo and no crates.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    // Std-only static binaries bound into containers: (source, output name).
    for (src, name) in [("keeper/keeper.rs", "keeper"), ("init/init.rs", "init")] {
        build_static(src, name);
    }
}

fn build_static(src: &str, name: &str) {
    println!("cargo:rerun-if-changed={src}");
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
            name,
        ])
        .args(["--target", &target])
        .args(["-C", "target-feature=+crt-static"])
        .args(["-C", "opt-level=s"])
        .args(["-C", "panic=abort"])
        .args(["-C", "strip=symbols"])
        .args(["-C", "debuginfo=0"])
        .arg("-o")
        .arg(out.join(name))
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("running {rustc} for {src}: {e}"));
    assert!(status.success(), "building {src} failed: {status}");
}

//! The named images of the benchmark (issue 8) and the tests.

use anyhow::{bail, Result};

use crate::image::ImageSpec;
use crate::layers::LayerSpec;

const MB: u64 = 1_000_000;

/// Preset names, for `--help` and error messages.
pub const PRESETS: &[&str] = &[
    "small",
    "features",
    "medium",
    "large",
    "many-small",
    "many-layers",
    "lower-hardlink",
];

/// The spec of a named preset:
/// - `small`: the busybox root only (1 layer, ~2 MB);
/// - `features`: busybox + a small generated layer + the features layer (3 layers);
/// - `medium`: ~300 MB uncompressed, 5 gzip layers, ~3000 files;
/// - `large`: ~1.5 GB, 10 layers, ~4800 files;
/// - `many-small`: ~50k files of ~1 KB in 2 generated layers (4 layers);
/// - `many-layers`: 120 layers (busybox, 118 tiny ones, features);
/// - `lower-hardlink`: like `features`, plus a layer hardlinking to a base-layer file (the
///   overlay trap; containerd cannot import it, nestcache must).
///
/// All but `small` have the features layer (whiteouts, opaque dir, hardlinks…).
pub fn preset(name: &str) -> Result<ImageSpec> {
    let generated = |n: usize, files: u64, bytes: u64| {
        (0..n).map(move |_| LayerSpec::Generated { files, bytes })
    };
    let mut layers = vec![LayerSpec::Base];
    match name {
        "small" => {}
        "features" => layers.extend(generated(1, 20, 256 * 1024)),
        "medium" => layers.extend(generated(3, 1000, 100 * MB)),
        "large" => layers.extend(generated(8, 600, 187 * MB + MB / 2)),
        "many-small" => layers.extend(generated(2, 25_000, 25 * MB)),
        "many-layers" => layers.extend((0..118).map(|_| LayerSpec::Tiny)),
        "lower-hardlink" => layers.extend(generated(1, 20, 256 * 1024)),
        other => bail!("unknown preset {other:?}; known: {}", PRESETS.join(", ")),
    }
    if name != "small" {
        layers.push(LayerSpec::Features);
    }
    if name == "lower-hardlink" {
        layers.push(LayerSpec::LowerHardlink);
    }
    Ok(ImageSpec::new(name, layers))
}

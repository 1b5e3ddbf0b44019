//! `nestcache-mkimage`: writes a deterministic test image as an OCI layout, an
//! oci-archive and/or a docker-archive. See the library docs for what is inside.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(name = "nestcache-mkimage", version, about)]
struct Args {
    /// small, features, medium, large, many-small, many-layers
    #[arg(long, default_value = "small")]
    preset: String,
    /// Write (or add to) this OCI image layout directory
    #[arg(long)]
    layout: Option<PathBuf>,
    /// Write an oci-archive (tar of the layout) here
    #[arg(long)]
    oci_archive: Option<PathBuf>,
    /// Write a docker-archive (`docker save` format) here
    #[arg(long)]
    docker_archive: Option<PathBuf>,
    /// Ref name in index.json (default: the preset name)
    #[arg(long = "ref")]
    reference: Option<String>,
    /// RepoTags entry of the docker-archive (default: mkimage/<preset>:latest)
    #[arg(long)]
    repo_tag: Option<String>,
    /// gzip, zstd or none
    #[arg(long, default_value = "gzip")]
    compression: String,
    /// Compression level (gzip 0-9, default 6; zstd 1-19, default 3)
    #[arg(long)]
    level: Option<u32>,
    /// Replace the preset's generated layers by N layers of --layer-files/--layer-bytes
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long, default_value_t = 100)]
    layer_files: u64,
    #[arg(long, default_value_t = 10_000_000)]
    layer_bytes: u64,
    /// os/arch[/variant] (default: the host's)
    #[arg(long)]
    platform: Option<String>,
    /// Publish a two-platform image index (this platform + linux/arm64 or linux/amd64)
    #[arg(long)]
    multi_platform: bool,
    /// Seed of the generated content
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    entrypoint: Option<Vec<String>>,
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    cmd: Option<Vec<String>>,
    /// KEY=VALUE (repeatable; replaces the default PATH when given)
    #[arg(long)]
    env: Vec<String>,
    #[arg(long)]
    workdir: Option<String>,
    #[arg(long)]
    user: Option<String>,
    /// KEY=VALUE (repeatable)
    #[arg(long)]
    label: Vec<String>,
    /// A `Volumes` entry of the config (repeatable)
    #[arg(long)]
    volume: Vec<String>,
    /// Print what was built as JSON
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nestcache-mkimage: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(a: Args) -> Result<()> {
    if a.layout.is_none() && a.oci_archive.is_none() && a.docker_archive.is_none() {
        bail!("nothing to write: give --layout, --oci-archive and/or --docker-archive");
    }
    let mut spec = mkimage::preset(&a.preset)?;
    if let Some(r) = a.reference {
        spec.ref_name = r;
    }
    if let Some(t) = a.repo_tag {
        spec.repo_tag = t;
    }
    spec.compression = mkimage::Compression::parse(&a.compression)?;
    spec.level = a.level;
    spec.seed = a.seed;
    spec.multi_platform = a.multi_platform;
    if let Some(p) = a.platform {
        spec.platform = mkimage::Platform::parse(&p)?;
    }
    if let Some(n) = a.layers {
        let top = spec
            .layers
            .iter()
            .any(|l| matches!(l, mkimage::LayerSpec::Features));
        spec.layers
            .retain(|l| matches!(l, mkimage::LayerSpec::Base));
        spec.layers
            .extend((0..n).map(|_| mkimage::LayerSpec::Generated {
                files: a.layer_files,
                bytes: a.layer_bytes,
            }));
        if top {
            spec.layers.push(mkimage::LayerSpec::Features);
        }
    }
    let c = &mut spec.config;
    if a.entrypoint.is_some() {
        c.entrypoint = a.entrypoint;
    }
    if a.cmd.is_some() {
        c.cmd = a.cmd;
    }
    if !a.env.is_empty() {
        c.env = a.env;
    }
    c.working_dir = a.workdir.or(c.working_dir.take());
    c.user = a.user.or(c.user.take());
    c.volumes.extend(a.volume);
    for l in a.label {
        let (k, v) = l.split_once('=').context("--label wants KEY=VALUE")?;
        c.labels.insert(k.into(), v.into());
    }

    // Archives alone still need a layout to stream from: a temp one beside the archive.
    let (layout, temp) = match &a.layout {
        Some(l) => (l.clone(), None),
        None => {
            let out = a
                .oci_archive
                .as_ref()
                .or(a.docker_archive.as_ref())
                .context("no output")?;
            let t = PathBuf::from(format!(
                "{}.layout-tmp-{}",
                out.display(),
                std::process::id()
            ));
            (t.clone(), Some(t))
        }
    };
    let result = (|| -> Result<mkimage::Built> {
        let built = spec.write_layout(&layout)?;
        if let Some(p) = &a.oci_archive {
            mkimage::write_oci_archive(&built.layout, p)?;
        }
        if let Some(p) = &a.docker_archive {
            mkimage::write_docker_archive(&built, p)?;
        }
        Ok(built)
    })();
    if let Some(t) = temp {
        let _ = std::fs::remove_dir_all(t);
    }
    let built = result?;
    if a.json {
        let layers: Vec<_> = built
            .image
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({"digest": l.desc.digest, "size": l.desc.size,
                    "mediaType": l.desc.media_type, "diffID": l.diff_id, "diffSize": l.diff_size})
            })
            .collect();
        let v = serde_json::json!({
            "ref": built.ref_name,
            "top": built.top.digest,
            "manifest": built.image.manifest.digest,
            "config": built.image.config.digest,
            "layers": layers,
            "uncompressedSize": built.uncompressed_size(),
            "compressedSize": built.compressed_size(),
        });
        println!("{v}");
    } else {
        println!(
            "{} {} ({} layers, {} bytes uncompressed, {} compressed)",
            built.ref_name,
            built.top.digest,
            built.image.layers.len(),
            built.uncompressed_size(),
            built.compressed_size()
        );
    }
    Ok(())
}

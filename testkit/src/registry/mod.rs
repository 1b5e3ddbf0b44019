//! Test harness for the registry source: a real distribution registry (Debian's
//! `docker-registry`) on 127.0.0.1, started and stopped by PID, optionally with htpasswd
//! auth and TLS from a throwaway CA; images seeded with `skopeo copy`; and a small
//! fault-injecting proxy ([`proxy`]). Only ever 127.0.0.1.

pub mod proxy;

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use crate::cmd::output;
use serde_json::Value;

use crate::cmd::{cargo_bin, run_ok};
use crate::images::{oci_dir, Image};

pub const USER: &str = "tester";
pub const PASS: &str = "nestcache-test-pw";
/// bcrypt of PASS (made once with glibc's crypt; the registry only reads bcrypt).
const PASS_BCRYPT: &str = "$2b$04$/O.OYHXDqwahy1woS89dlevGADu8MPreJ7mE0.2N9dL.b9d5hosmW";

#[derive(Default, Clone, Copy)]
pub struct Options {
    pub htpasswd: bool,
    pub tls: bool,
}

pub struct Registry {
    /// `127.0.0.1:PORT`
    pub addr: String,
    pub dir: tempfile::TempDir,
    pub ca: Option<PathBuf>,
    pub opts: Options,
    child: Child,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A CA and a server certificate for 127.0.0.1 signed by it; returns (ca, cert, key).
fn make_tls(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=nestcache test CA",
            ])
            .args(ec)
            .arg("-keyout")
            .arg(p("ca.key"))
            .arg("-out")
            .arg(p("ca.crt")),
    );
    run_ok(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=127.0.0.1"])
            .args(ec)
            .arg("-keyout")
            .arg(p("server.key"))
            .arg("-out")
            .arg(p("server.csr")),
    );
    std::fs::write(
        p("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(p("server.csr"))
            .arg("-CA")
            .arg(p("ca.crt"))
            .arg("-CAkey")
            .arg(p("ca.key"))
            .arg("-extfile")
            .arg(p("ext.cnf"))
            .arg("-out")
            .arg(p("server.crt")),
    );
    (p("ca.crt"), p("server.crt"), p("server.key"))
}

impl Registry {
    pub fn start(opts: Options) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("nc-registry-")
            .tempdir()
            .unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {addr}\n",
            dir.path().join("data").display()
        );
        let mut ca = None;
        if opts.tls {
            let (c, cert, key) = make_tls(dir.path());
            cfg += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            );
            ca = Some(c);
        }
        if opts.htpasswd {
            let f = dir.path().join("htpasswd");
            std::fs::write(&f, format!("{USER}:{PASS_BCRYPT}\n")).unwrap();
            cfg += &format!(
                "auth:\n  htpasswd:\n    realm: nestcache-test\n    path: {}\n",
                f.display()
            );
        }
        let cfg_file = dir.path().join("config.yml");
        std::fs::write(&cfg_file, cfg).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(&addr).is_err() {
            if let Ok(Some(st)) = child.try_wait() {
                let log =
                    std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
                panic!("docker-registry exited ({st}) before listening:\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Registry {
            addr,
            dir,
            ca,
            opts,
            child,
        }
    }

    /// Pushes `oci:LAYOUT:REF` to `REPO_TAG` on this registry (all platforms).
    pub fn push(&self, layout: &Path, layout_ref: &str, repo_tag: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if self.opts.htpasswd {
            cmd.arg(format!("--dest-creds={USER}:{PASS}"));
        }
        cmd.arg(format!("oci:{}:{layout_ref}", layout.display()))
            .arg(format!("docker://{}/{repo_tag}", self.addr));
        run_ok(&mut cmd);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A registry serving `img` as `repo_tag`, and what it serves (skopeo compresses plain
/// tar layers on the way, so digests and sizes are the registry's, not the layout's).
pub fn serve_image(dir: &Path, img: &Image, repo_tag: &str) -> (Registry, Pushed) {
    oci_dir(&dir.join("layout"), &[img], &[("v1", &img.manifest)]);
    let reg = Registry::start(Options::default());
    reg.push(&dir.join("layout"), "v1", repo_tag);
    let raw = run_ok(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/{repo_tag}", reg.addr),
    ]));
    let manifest: Value = serde_json::from_slice(&raw.stdout).unwrap();
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (
        reg,
        Pushed {
            manifest,
            raw: raw.stdout,
            layers,
        },
    )
}

/// What a registry serves for one pushed image.
pub struct Pushed {
    pub manifest: Value,
    /// The manifest's bytes as served.
    pub raw: Vec<u8>,
    /// (digest, size) of each layer.
    pub layers: Vec<(String, u64)>,
}

impl Pushed {
    /// The biggest layer: where mid-stream faults go.
    pub fn big(&self) -> (String, u64) {
        self.layers.iter().max_by_key(|l| l.1).unwrap().clone()
    }

    pub fn small(&self) -> String {
        self.layers.iter().min_by_key(|l| l.1).unwrap().0.clone()
    }
}

/// A nestcache command isolated from the machine's credentials and state.
pub fn nestcache(home: &Path) -> Command {
    let mut c = Command::new(cargo_bin("nestcache"));
    c.env("HOME", home)
        .env("NESTCACHE_STATE_DIR", home.join("state"))
        .env("NESTCACHE_REGISTRY_FAST_RETRY", "1")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("DOCKER_CONFIG")
        .env_remove("NESTCACHE_CREDS")
        .env_remove("RUST_LOG");
    c
}

/// The manifest digest index.json records for `name`.
pub fn ref_digest(store: &Path, name: &str) -> Option<String> {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).ok()?).ok()?;
    idx["manifests"].as_array()?.iter().find_map(|m| {
        (m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .then(|| m["digest"].as_str().unwrap_or_default().to_string())
    })
}

/// Names in blobs/sha256 (should be all verified) and leftovers in ingest/.
pub fn blob_names(store: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(store.join("blobs/sha256"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn ingest_leftovers(store: &Path) -> usize {
    std::fs::read_dir(store.join("ingest"))
        .map(|d| d.count())
        .unwrap_or(0)
}

//! The store image's config for a CRI container whose rootfs comes from the store.
//!
//! containerd's CRI plugin (1.6/1.7, `containerSpec` + `WithProcessArgs`) builds the
//! spec from the *declared* image's config, which it names in annotation
//! `io.kubernetes.cri.image-name`:
//! - `process.args`: the pod's command, else the image's Entrypoint; then the pod's args,
//!   else (only when the pod set no command either) the image's Cmd;
//! - `process.env`: containerd's default PATH, `HOSTNAME`, then the image's Env, then the
//!   pod's envs, one entry per key (a later one replaces an earlier in place);
//! - `process.cwd`: the pod's workingDir, else the image's WorkingDir, else `/`;
//! - `process.user`: the pod's runAsUser/runAsGroup/runAsUsername, else the image's User
//!   resolved in the declared image's /etc/passwd, else 0:0.
//!
//! The shim never sees the CRI request, so it tells pod-set from image-derived values
//! by comparing the spec with the declared image's config (read from containerd's
//! content store): a value equal to what the declared image gives is replaced by what
//! the store image gives; anything else is the pod's and stays. (A pod that sets exactly
//! the declared image's value is taken as not setting it; with a declared image that
//! has no Entrypoint, args set alone cannot be told from a command and stay as they are;
//! with a declared image that has no User, `runAsUser: 0` alone reads as unset: add
//! `runAsGroup` to keep root.)

use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

use log::{info, warn};
use serde_json::Value;

use nestcache::rootfs::{self, LayerStack};
use nestcache::store::Store;
use nestcache::user::UserDb;

use crate::bundle::StoreImage;

pub const CRI_IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd's default PATH for a container (oci.defaultUnixEnv).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Image documents are small; a bigger one is not an image config.
const DOC_LIMIT: usize = 4 << 20;

static CONTAINERD: OnceLock<(String, String)> = OnceLock::new();

/// containerd's address and the shim's namespace, from the shim's flags.
pub fn set_containerd(address: &str, namespace: &str) {
    let _ = CONTAINERD.set((address.to_string(), namespace.to_string()));
}

/// The parts of an image config that CRI turns into the process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

impl Defaults {
    /// From an OCI / Docker image config document (its `config` object).
    pub fn from_config(doc: &Value) -> Defaults {
        let c = &doc["config"];
        let list = |k: &str| -> Vec<String> {
            c[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut entrypoint = list("Entrypoint");
        // CRI: an Entrypoint of [""] means none.
        if entrypoint == [""] {
            entrypoint.clear();
        }
        Defaults {
            entrypoint,
            cmd: list("Cmd"),
            env: list("Env"),
            working_dir: c["WorkingDir"].as_str().unwrap_or_default().to_string(),
            user: c["User"].as_str().unwrap_or_default().to_string(),
        }
    }
}

/// A user resolved in the store image.
pub type ResolveUser<'a> = &'a dyn Fn(&str) -> Result<(u32, u32, Vec<u32>), String>;

/// Replaces, in the spec's `process`, what came from `declared` by what `store` gives.
/// Returns the names of the fields it replaced.
pub fn merge(
    process: &mut Value,
    declared: &Defaults,
    store: &Defaults,
    resolve_user: ResolveUser<'_>,
) -> Result<Vec<&'static str>, String> {
    let mut replaced = vec![];
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = strings(&process["args"]);
    if let Some(new) = merge_args(&args, declared, store) {
        process["args"] = new.into();
        replaced.push("args");
    }
    let env = strings(&process["env"]);
    let new_env = merge_env(&env, &declared.env, &store.env);
    if new_env != env {
        process["env"] = new_env.into();
        replaced.push("env");
    }
    let cwd = process["cwd"].as_str().unwrap_or("/").to_string();
    let declared_cwd = non_empty_or(&declared.working_dir, "/");
    if cwd == declared_cwd {
        let want = non_empty_or(&store.working_dir, "/");
        if want != cwd {
            process["cwd"] = want.into();
            replaced.push("cwd");
        }
    }
    let uid = process["user"]["uid"].as_u64().unwrap_or(0);
    let gid = process["user"]["gid"].as_u64().unwrap_or(0);
    if user_is_declared(&declared.user, uid, gid) {
        let (u, g, extra) = resolve_user(&store.user)?;
        if (u64::from(u), u64::from(g)) != (uid, gid) || !extra.is_empty() {
            process["user"]["uid"] = u.into();
            process["user"]["gid"] = g.into();
            if !extra.is_empty() {
                process["user"]["additionalGids"] = extra.into();
            }
            replaced.push("user");
        }
    }
    Ok(replaced)
}

fn non_empty_or<'a>(s: &'a str, default: &'a str) -> &'a str {
    if s.is_empty() {
        default
    } else {
        s
    }
}

/// The new args, or None to keep them (the pod's command).
fn merge_args(args: &[String], declared: &Defaults, store: &Defaults) -> Option<Vec<String>> {
    let from_declared: Vec<String> = declared
        .entrypoint
        .iter()
        .chain(&declared.cmd)
        .cloned()
        .collect();
    let new: Vec<String> = if args == from_declared.as_slice() {
        store.entrypoint.iter().chain(&store.cmd).cloned().collect()
    } else if !declared.entrypoint.is_empty() && args.starts_with(&declared.entrypoint) {
        // The pod set args alone: they go to the store image's Entrypoint.
        store
            .entrypoint
            .iter()
            .chain(&args[declared.entrypoint.len()..])
            .cloned()
            .collect()
    } else {
        return None;
    };
    // A store image with neither Entrypoint nor Cmd has nothing better to offer.
    (!new.is_empty() && new != args).then_some(new)
}

fn key(e: &str) -> &str {
    e.split_once('=').map_or(e, |(k, _)| k)
}

/// Declared-image entries (same key and value) give way to the store image's; the
/// default PATH too; everything else (CRI's HOSTNAME, the pod's, kubelet's service
/// variables) stays; the store image's other entries are added.
fn merge_env(env: &[String], declared: &[String], store: &[String]) -> Vec<String> {
    let store_by_key: HashMap<&str, &String> = store.iter().map(|e| (key(e), e)).collect();
    let mut out: Vec<String> = vec![];
    for e in env {
        let from_image = declared.contains(e)
            || (e == DEFAULT_PATH && !declared.iter().any(|d| key(d) == "PATH"));
        if !from_image {
            out.push(e.clone());
        } else if let Some(s) = store_by_key.get(key(e)) {
            out.push((*s).clone());
        } else if key(e) == "PATH" {
            out.push(DEFAULT_PATH.to_string());
        }
    }
    for s in store {
        if !out.iter().any(|e| key(e) == key(s)) {
            out.push(s.clone());
        }
    }
    out
}

/// Whether the spec's uid/gid are what the declared image's User gives (so the pod set
/// none). A named User cannot be resolved without the declared image's rootfs: it is
/// taken as the declared one.
fn user_is_declared(user: &str, uid: u64, gid: u64) -> bool {
    if user.is_empty() {
        return uid == 0 && gid == 0;
    }
    let (u, g) = user
        .split_once(':')
        .map_or((user, None), |(u, g)| (u, Some(g)));
    match (u.parse::<u64>(), g.map(str::parse::<u64>)) {
        (Ok(u), None) => u == uid,
        (Ok(u), Some(Ok(g))) => u == uid && g == gid,
        _ => true,
    }
}

/// Applies the store image's config to `<bundle>/config.json` when the spec is a CRI
/// app container. Failing to read the declared image's config is not fatal: the spec
/// stays as CRI made it, and the log says why.
pub fn apply(
    bundle: &Path,
    annotations: &HashMap<String, String>,
    wanted: &StoreImage,
) -> Result<(), String> {
    if annotations.get(CRI_CONTAINER_TYPE).map(String::as_str) != Some("container") {
        return Ok(());
    }
    let what = format!("image {} in store {}", wanted.image, wanted.store.display());
    let store = Store::open_existing(&wanted.store).map_err(|e| format!("{what}: {e}"))?;
    let image = store
        .resolve(&wanted.image, None)
        .map_err(|e| format!("{what}: {e}"))?;
    let store_doc: Value =
        serde_json::from_slice(&image.config_bytes).map_err(|e| format!("{what}: config: {e}"))?;
    let store_cfg = Defaults::from_config(&store_doc);
    let Some(name) = annotations.get(CRI_IMAGE_NAME) else {
        warn!("{what}: no {CRI_IMAGE_NAME} annotation; the spec is kept as CRI made it");
        return Ok(());
    };
    let declared = match declared_config(name) {
        Ok(doc) => Defaults::from_config(&doc),
        Err(e) => {
            warn!("declared image {name}: {e}; the spec is kept as CRI made it");
            return Ok(());
        }
    };
    let layers = rootfs::layer_dirs(&store, &image).map_err(|e| format!("{what}: {e}"))?;
    let stack = LayerStack::new(layers);
    let resolve = |spec: &str| -> Result<(u32, u32, Vec<u32>), String> {
        let read = |p: &str| {
            stack
                .read_file(p, 1 << 20)
                .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
                .map_err(|e| format!("{what}: {p}: {e}"))
        };
        let db = UserDb {
            passwd: read("/etc/passwd")?,
            group: read("/etc/group")?,
        };
        let u = db
            .resolve(spec)
            .map_err(|e| format!("{what}: user {spec:?}: {e}"))?;
        Ok((u.uid, u.gid, u.additional_gids))
    };
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    let mut spec: Value =
        serde_json::from_slice(&text).map_err(|e| format!("parse {}: {e}", path.display()))?;
    let before = spec["process"].clone();
    let replaced = merge(&mut spec["process"], &declared, &store_cfg, &resolve)?;
    if replaced.is_empty() {
        return Ok(());
    }
    info!(
        "{what}: {} from the store image's config (declared {name})",
        replaced.join(", ")
    );
    save_exec_defaults(bundle, &before, &spec["process"])?;
    let out = serde_json::to_vec(&spec).map_err(|e| format!("serialize spec: {e}"))?;
    crate::bundle::write_replacing(&path, &out).map_err(|e| e.to_string())
}

/// What `apply` replaced in the init's process (`from` → `to`), kept in the bundle for
/// the container's execs: CRI's ExecSync (like `ctr task exec`) sends a copy of the
/// container's stored process — the declared image's env, cwd and user.
const EXEC_DEFAULTS: &str = "store-process.json";
/// The process fields an exec inherits from the container's spec.
const EXEC_FIELDS: [&str; 3] = ["env", "cwd", "user"];

fn save_exec_defaults(bundle: &Path, from: &Value, to: &Value) -> Result<(), String> {
    let pick = |p: &Value| -> Value {
        EXEC_FIELDS
            .iter()
            .map(|k| (k.to_string(), p[*k].clone()))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let doc = serde_json::json!({ "from": pick(from), "to": pick(to) });
    let path = bundle.join(EXEC_DEFAULTS);
    crate::bundle::write_replacing(&path, doc.to_string().as_bytes()).map_err(|e| e.to_string())
}

/// An exec's process spec for a container whose init got the store image's config: each
/// of env, cwd and user that is exactly the container's stored value (what CRI copies
/// into every exec) becomes the init's; what the caller set itself stays. Without a
/// record (not a store-rootfs CRI container) or on a spec that is not JSON, unchanged.
pub fn exec_spec(bundle: &Path, spec: Vec<u8>) -> Vec<u8> {
    let Ok(text) = std::fs::read(bundle.join(EXEC_DEFAULTS)) else {
        return spec;
    };
    let (Ok(defaults), Ok(mut process)) = (
        serde_json::from_slice::<Value>(&text),
        serde_json::from_slice::<Value>(&spec),
    ) else {
        warn!("exec: {EXEC_DEFAULTS} or the exec's spec is not JSON; the spec is kept");
        return spec;
    };
    if !merge_exec(&mut process, &defaults) {
        return spec;
    }
    serde_json::to_vec(&process).unwrap_or(spec)
}

/// Replaces in `process` the fields equal to `defaults.from` by `defaults.to`.
fn merge_exec(process: &mut Value, defaults: &Value) -> bool {
    let mut changed = false;
    for k in EXEC_FIELDS {
        let (from, to) = (&defaults["from"][k], &defaults["to"][k]);
        if !from.is_null() && process[k] == *from && from != to {
            process[k] = to.clone();
            changed = true;
        }
    }
    changed
}

/// The declared image's config document, from containerd's image and content stores.
fn declared_config(name: &str) -> Result<Value, String> {
    let (address, namespace) = CONTAINERD
        .get()
        .cloned()
        .ok_or("containerd's address is unknown")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    rt.block_on(async move {
        use containerd_client::services::v1::{images_client::ImagesClient, GetImageRequest};
        let ch = containerd_client::connect(&address)
            .await
            .map_err(|e| format!("connect {address}: {e}"))?;
        let req = with_ns(
            GetImageRequest {
                name: name.to_string(),
            },
            &namespace,
        )?;
        let image = ImagesClient::new(ch.clone())
            .get(req)
            .await
            .map_err(|e| format!("get image: {}", e.message()))?
            .into_inner()
            .image
            .ok_or("no image in the answer")?;
        let mut digest = image.target.ok_or("image has no target")?.digest;
        // index -> manifest -> config; no deeper.
        for _ in 0..3 {
            let doc = read_content(&ch, &namespace, &digest).await?;
            if let Some(manifests) = doc["manifests"].as_array() {
                digest =
                    pick_platform(manifests).ok_or("index lists no manifest for this platform")?;
            } else if let Some(config) = doc["config"]["digest"].as_str() {
                return read_content(&ch, &namespace, config).await;
            } else {
                return Err(format!("{digest}: neither an index nor a manifest"));
            }
        }
        Err("index nesting too deep".into())
    })
}

fn with_ns<T>(msg: T, namespace: &str) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(msg);
    let v = namespace
        .parse()
        .map_err(|_| format!("namespace {namespace:?}"))?;
    r.metadata_mut().insert("containerd-namespace", v);
    Ok(r)
}

async fn read_content(
    ch: &tonic::transport::Channel,
    namespace: &str,
    digest: &str,
) -> Result<Value, String> {
    use containerd_client::services::v1::{content_client::ContentClient, ReadContentRequest};
    let req = with_ns(
        ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        },
        namespace,
    )?;
    let mut stream = ContentClient::new(ch.clone())
        .read(req)
        .await
        .map_err(|e| format!("read {digest}: {}", e.message()))?
        .into_inner();
    let mut data = vec![];
    while let Some(chunk) = stream
        .message()
        .await
        .map_err(|e| format!("read {digest}: {}", e.message()))?
    {
        data.extend_from_slice(&chunk.data);
        if data.len() > DOC_LIMIT {
            return Err(format!("{digest}: larger than {DOC_LIMIT} bytes"));
        }
    }
    serde_json::from_slice(&data).map_err(|e| format!("{digest}: {e}"))
}

/// The manifest for this host's platform (linux and the host's architecture).
fn pick_platform(manifests: &[Value]) -> Option<String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    manifests
        .iter()
        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == arch)
        .and_then(|m| m["digest"].as_str().map(String::from))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(v: Value) -> Defaults {
        Defaults::from_config(&json!({ "config": v }))
    }

    fn declared() -> Defaults {
        d(
            json!({"Entrypoint": ["/pause"], "Env": ["PATH=/usr/bin", "D=1"], "WorkingDir": "/d", "User": "65535:65535"}),
        )
    }

    fn store() -> Defaults {
        d(
            json!({"Entrypoint": ["/bin/sh", "-c"], "Cmd": ["serve"], "Env": ["PATH=/bin", "S=1"], "WorkingDir": "/srv", "User": "app"}),
        )
    }

    fn app(_: &str) -> Result<(u32, u32, Vec<u32>), String> {
        Ok((1234, 2345, vec![]))
    }

    #[test]
    fn an_exec_copying_the_stored_process_gets_the_inits() {
        let defaults = json!({
            "from": {"env": ["A=declared"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0}},
            "to": {"env": ["A=store"], "cwd": "/srv", "user": {"uid": 7, "gid": 7}},
        });
        let mut copy = json!({"args": ["env"], "env": ["A=declared"], "cwd": "/tmp", "user": {"uid": 0, "gid": 0}});
        assert!(merge_exec(&mut copy, &defaults));
        assert_eq!(
            copy,
            json!({"args": ["env"], "env": ["A=store"], "cwd": "/srv", "user": {"uid": 7, "gid": 7}})
        );
        // What the caller set itself stays.
        let mut own =
            json!({"args": ["x"], "env": ["A=mine"], "cwd": "/tmp", "user": {"uid": 5, "gid": 5}});
        assert!(merge_exec(&mut own, &defaults));
        assert_eq!(own["env"], json!(["A=mine"]));
        assert_eq!(own["cwd"], "/srv");
        assert_eq!(own["user"], json!({"uid": 5, "gid": 5}));
        let mut untouched = json!({"env": ["B=1"], "cwd": "/", "user": {"uid": 1, "gid": 1}});
        assert!(!merge_exec(&mut untouched, &defaults));
    }

    #[test]
    fn exec_spec_without_a_record_or_with_garbage_is_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let spec = br#"{"env": ["A=declared"]}"#.to_vec();
        assert_eq!(exec_spec(dir.path(), spec.clone()), spec);
        std::fs::write(dir.path().join(EXEC_DEFAULTS), "not json").unwrap();
        assert_eq!(exec_spec(dir.path(), spec.clone()), spec);
        save_exec_defaults(
            dir.path(),
            &json!({"env": ["A=declared"], "cwd": "/"}),
            &json!({"env": ["A=store"], "cwd": "/"}),
        )
        .unwrap();
        let got: Value = serde_json::from_slice(&exec_spec(dir.path(), spec)).unwrap();
        assert_eq!(got["env"], json!(["A=store"]));
        assert_eq!(exec_spec(dir.path(), b"garbage".to_vec()), b"garbage");
    }

    fn process(args: &[&str], env: &[&str], cwd: &str, uid: u32, gid: u32) -> Value {
        json!({"args": args, "env": env, "cwd": cwd, "user": {"uid": uid, "gid": gid}})
    }

    #[test]
    fn nothing_set_by_the_pod_all_from_the_store() {
        let mut p = process(
            &["/pause"],
            &["PATH=/usr/bin", "HOSTNAME=h", "D=1"],
            "/d",
            65535,
            65535,
        );
        let r = merge(&mut p, &declared(), &store(), &app).unwrap();
        assert_eq!(r, ["args", "env", "cwd", "user"]);
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "serve"]));
        assert_eq!(p["env"], json!(["PATH=/bin", "HOSTNAME=h", "S=1"]));
        assert_eq!(p["cwd"], "/srv");
        assert_eq!(p["user"], json!({"uid": 1234, "gid": 2345}));
    }

    #[test]
    fn what_the_pod_set_wins() {
        let mut p = process(
            &["/bin/app", "-x"],
            &["PATH=/usr/bin", "HOSTNAME=h", "D=pod", "S=pod"],
            "/work",
            7,
            7,
        );
        let r = merge(&mut p, &declared(), &store(), &app).unwrap();
        assert_eq!(r, ["env"]);
        assert_eq!(p["args"], json!(["/bin/app", "-x"]));
        assert_eq!(
            p["env"],
            json!(["PATH=/bin", "HOSTNAME=h", "D=pod", "S=pod"])
        );
        assert_eq!(p["cwd"], "/work");
        assert_eq!(p["user"], json!({"uid": 7, "gid": 7}));
    }

    #[test]
    fn args_alone_go_to_the_store_entrypoint() {
        let mut p = process(&["/pause", "one", "two"], &[], "/d", 0, 0);
        merge(&mut p, &declared(), &store(), &app).unwrap();
        assert_eq!(p["args"], json!(["/bin/sh", "-c", "one", "two"]));
    }

    #[test]
    fn default_path_gives_way_and_a_declared_path_without_store_path_becomes_the_default() {
        let none = Defaults::default();
        assert_eq!(
            merge_env(
                &[DEFAULT_PATH.into(), "HOSTNAME=h".into()],
                &[],
                &["PATH=/bin".into()]
            ),
            ["PATH=/bin", "HOSTNAME=h"]
        );
        assert_eq!(
            merge_env(
                &["PATH=/usr/bin".into()],
                &["PATH=/usr/bin".into()],
                &none.env
            ),
            [DEFAULT_PATH]
        );
    }

    #[test]
    fn declared_image_without_entrypoint_keeps_a_pod_command() {
        let declared = d(json!({"Cmd": ["sh"]}));
        assert_eq!(
            merge_args(&["sh".into()], &declared, &store()),
            Some(vec!["/bin/sh".into(), "-c".into(), "serve".into()])
        );
        assert_eq!(
            merge_args(&["/bin/other".into()], &declared, &store()),
            None
        );
        // A store image with no Entrypoint and no Cmd keeps what CRI made.
        assert_eq!(
            merge_args(&["sh".into()], &declared, &Defaults::default()),
            None
        );
    }

    #[test]
    fn user_compared_by_number_named_taken_as_declared() {
        assert!(user_is_declared("", 0, 0));
        assert!(!user_is_declared("", 1000, 0));
        assert!(user_is_declared("65535:65535", 65535, 65535));
        assert!(!user_is_declared("65535:65535", 0, 0));
        assert!(user_is_declared("10", 10, 99));
        assert!(user_is_declared("nobody", 5, 5));
    }

    #[test]
    fn an_unresolvable_store_user_is_an_error_naming_it() {
        let mut p = process(&["/pause"], &[], "/d", 65535, 65535);
        let bad = |s: &str| -> Result<(u32, u32, Vec<u32>), String> {
            Err(format!("user {s:?} not in /etc/passwd"))
        };
        let e = merge(&mut p, &declared(), &store(), &bad).unwrap_err();
        assert!(e.contains("\"app\""), "{e}");
    }

    #[test]
    fn entrypoint_of_one_empty_string_is_none() {
        assert!(d(json!({"Entrypoint": [""], "Cmd": ["x"]}))
            .entrypoint
            .is_empty());
    }
}

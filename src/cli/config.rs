//! nestcache's config file: `/etc/nestcache/config.toml`, then
//! `$XDG_CONFIG_HOME/nestcache/config.toml` (`~/.config/...`), a later file overriding an
//! earlier one key by key; `NESTCACHE_CONFIG=FILE` replaces both. Flags beat environment
//! variables, which beat the file, which beats the built-in defaults.
//!
//! ```toml
//! address = "/run/containerd/containerd.sock"
//! namespace = "ci"
//! state_dir = "/var/lib/nestcache"
//! default_ttl = "2h"                  # `cache create` without --ttl
//!
//! [registries."docker.io"]
//! mirrors = ["mirror.example:5000"]   # tried in order before the registry itself
//!
//! [registries."registry.example"]
//! username = "ci"
//! password = "secret"                 # used when neither --creds nor --authfile is given
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use nestcache::source::registry::{auth::Credentials, RegistrySettings};

use super::Globals;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub address: Option<String>,
    pub namespace: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub default_ttl: Option<String>,
    #[serde(default)]
    pub registries: BTreeMap<String, RegistryConfig>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    #[serde(default)]
    pub mirrors: Vec<String>,
    pub username: Option<String>,
    pub password: Option<String>,
}

static LOADED: OnceLock<FileConfig> = OnceLock::new();

/// The config loaded at start (empty before, or when there is no file).
pub fn loaded() -> &'static FileConfig {
    LOADED.get_or_init(FileConfig::default)
}

impl FileConfig {
    /// `later` over `self`, key by key (registries by host).
    fn merge(mut self, later: FileConfig) -> FileConfig {
        self.address = later.address.or(self.address);
        self.namespace = later.namespace.or(self.namespace);
        self.state_dir = later.state_dir.or(self.state_dir);
        self.default_ttl = later.default_ttl.or(self.default_ttl);
        self.registries.extend(later.registries);
        self
    }

    pub fn parse(text: &str, file: &Path) -> anyhow::Result<FileConfig> {
        let c: FileConfig = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("config {}: {}", file.display(), e.message()))?;
        for (host, r) in &c.registries {
            if r.username.is_some() != r.password.is_some() {
                anyhow::bail!(
                    "config {}: registries.{host:?} needs both username and password",
                    file.display()
                );
            }
        }
        Ok(c)
    }

    pub fn registry_settings(&self) -> BTreeMap<String, RegistrySettings> {
        self.registries
            .iter()
            .map(|(host, r)| {
                let credentials = match (&r.username, &r.password) {
                    (Some(u), Some(p)) => Some(Credentials {
                        username: u.clone(),
                        password: p.clone(),
                    }),
                    _ => None,
                };
                let settings = RegistrySettings {
                    mirrors: r.mirrors.clone(),
                    credentials,
                };
                (host.clone(), settings)
            })
            .collect()
    }
}

/// The files read, in order: `NESTCACHE_CONFIG` alone, or the system then the user file.
pub fn files(env: impl Fn(&str) -> Option<String>) -> Vec<PathBuf> {
    if let Some(f) = env("NESTCACHE_CONFIG").filter(|f| !f.is_empty()) {
        return vec![PathBuf::from(f)];
    }
    let mut v = vec![PathBuf::from("/etc/nestcache/config.toml")];
    let user = env("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(d) = user {
        v.push(d.join("nestcache/config.toml"));
    }
    v
}

/// Reads and merges the config files; a missing file is no config, a malformed one an error.
pub fn load(files: &[PathBuf]) -> anyhow::Result<FileConfig> {
    let mut c = FileConfig::default();
    for f in files {
        match std::fs::read_to_string(f) {
            Ok(text) => c = c.merge(FileConfig::parse(&text, f)?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("read config {}", f.display())),
        }
    }
    Ok(c)
}

/// Fills the globals the command line and environment left at their defaults from the
/// file, and keeps the file for the commands that read it later.
pub fn apply(g: &mut Globals, m: &ArgMatches, file: FileConfig) {
    // A global flag's source is recorded on the level it was parsed at (an env value on
    // the subcommand's): look at every level.
    let unset = |id: &str| {
        let mut level = Some(m);
        while let Some(l) = level {
            if matches!(
                l.try_get_raw(id).ok().flatten().and(l.value_source(id)),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                return false;
            }
            level = l.subcommand().map(|(_, sub)| sub);
        }
        true
    };
    if unset("address") {
        if let Some(a) = &file.address {
            g.address = Some(a.clone());
        }
    }
    if unset("namespace") {
        if let Some(n) = &file.namespace {
            g.namespace = n.clone();
        }
    }
    if unset("state_dir") {
        if let Some(d) = &file.state_dir {
            g.state_dir = d.clone();
        }
    }
    let _ = LOADED.set(file);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, FromArgMatches};

    fn globals(args: &[&str], env: &[(&str, &str)], file: &str) -> Globals {
        // clap reads env values when the command is built: set them for this build
        // only (no other test of this binary reads them), and hide the ambient ones
        // (scripts/test.sh exports CONTAINERD_ADDRESS) so only `env` counts.
        const AMBIENT: [&str; 3] = [
            "CONTAINERD_ADDRESS",
            "CONTAINERD_NAMESPACE",
            "NESTCACHE_STATE_DIR",
        ];
        let saved: Vec<(&str, Option<std::ffi::OsString>)> =
            AMBIENT.iter().map(|k| (*k, std::env::var_os(k))).collect();
        for k in AMBIENT {
            std::env::remove_var(k);
        }
        for (k, v) in env {
            std::env::set_var(k, v);
        }
        let cmd = super::super::Cli::command();
        let mut argv = vec!["nestcache"];
        argv.extend_from_slice(args);
        argv.push("ps");
        let m = cmd.try_get_matches_from(argv).unwrap();
        for (k, _) in env {
            std::env::remove_var(k);
        }
        for (k, v) in saved {
            if let Some(v) = v {
                std::env::set_var(k, v);
            }
        }
        let mut g = super::super::Cli::from_arg_matches(&m).unwrap().globals;
        apply(
            &mut g,
            &m,
            FileConfig::parse(file, Path::new("t.toml")).unwrap(),
        );
        g
    }

    #[test]
    fn flags_beat_env_beat_file_beat_defaults() {
        let file =
            "namespace = \"from-file\"\nstate_dir = \"/file/state\"\naddress = \"/file.sock\"\n";
        let g = globals(&[], &[], file);
        assert_eq!(g.namespace, "from-file");
        assert_eq!(g.state_dir, Path::new("/file/state"));
        assert_eq!(g.address.as_deref(), Some("/file.sock"));
        let g = globals(&[], &[("NESTCACHE_STATE_DIR", "/env/state")], file);
        assert_eq!(g.state_dir, Path::new("/env/state"), "env over file");
        let g = globals(&["--namespace", "flag"], &[], file);
        assert_eq!(g.namespace, "flag", "flag over file");
        let g = globals(&[], &[], "");
        assert_eq!(g.namespace, "nestcache", "default without a file");
    }

    #[test]
    fn files_merge_key_by_key_and_bad_ones_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a.toml"), t.path().join("b.toml"));
        std::fs::write(&a, "namespace = \"a\"\ndefault_ttl = \"1h\"\n[registries.\"docker.io\"]\nmirrors = [\"m:5000\"]\n").unwrap();
        std::fs::write(
            &b,
            "namespace = \"b\"\n[registries.\"r.example\"]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .unwrap();
        let c = load(&[a.clone(), t.path().join("absent.toml"), b]).unwrap();
        assert_eq!(
            (c.namespace.as_deref(), c.default_ttl.as_deref()),
            (Some("b"), Some("1h"))
        );
        let r = c.registry_settings();
        assert_eq!(r["docker.io"].mirrors, ["m:5000"]);
        assert_eq!(
            r["r.example"]
                .credentials
                .as_ref()
                .map(|c| c.username.as_str()),
            Some("u")
        );
        for bad in [
            "nmespace = \"x\"",
            "[registries.\"h\"]\nusername = \"u\"",
            "namespace = 3",
        ] {
            std::fs::write(&a, bad).unwrap();
            let e = load(std::slice::from_ref(&a)).unwrap_err().to_string();
            assert!(e.contains("a.toml"), "{bad}: {e}");
        }
    }

    #[test]
    fn which_files() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            files(env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            [
                PathBuf::from("/etc/nestcache/config.toml"),
                PathBuf::from("/x/nestcache/config.toml")
            ]
        );
        assert_eq!(
            files(env(&[("HOME", "/h")]))[1],
            PathBuf::from("/h/.config/nestcache/config.toml")
        );
        assert_eq!(
            files(env(&[("NESTCACHE_CONFIG", "/c.toml")])),
            [PathBuf::from("/c.toml")]
        );
    }
}

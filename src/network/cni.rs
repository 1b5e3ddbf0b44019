//! The CNI exec protocol (CNI spec 1.0, "Execution Protocol"): a plugin is an executable
//! found by its `type` in CNI_PATH, run with CNI_COMMAND / CNI_CONTAINERID / CNI_NETNS /
//! CNI_IFNAME / CNI_PATH in its environment and its network config as JSON on stdin; it
//! prints a result (ADD) or an error object, and exits non-zero on error.
//!
//! A network config list chains plugins: ADD runs them in order, each given the previous
//! one's result as `prevResult`; CHECK runs them in order and DEL in reverse, each given
//! the result ADD cached. Capabilities a plugin declares (`"capabilities":
//! {"portMappings": true}`) receive the runtime's values as `runtimeConfig`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use super::error::NetworkError;

/// The CNI version nestcache's own configs are written for (Debian's plugins speak 1.0.0).
pub const CNI_VERSION: &str = "1.0.0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Check,
    Del,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Check => "CHECK",
            Command::Del => "DEL",
        }
    }
}

/// Who a plugin is run for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Attachment {
    pub container_id: String,
    pub netns: PathBuf,
    pub ifname: String,
}

/// A network configuration list (`.conflist`), kept as JSON so that a user's plugins keep
/// every field nestcache does not know.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConfList {
    pub name: String,
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl ConfList {
    /// Parses and checks a conflist (or a single-plugin `.conf`, wrapped into a list).
    pub fn parse(file: &Path, bytes: &[u8]) -> Result<ConfList, NetworkError> {
        let bad = |why: String| NetworkError::Config {
            file: file.to_path_buf(),
            why,
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| bad("not a JSON object".into()))?;
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_string);
        let name = text("name").ok_or_else(|| bad("no \"name\"".into()))?;
        let cni_version = text("cniVersion").unwrap_or_else(|| CNI_VERSION.to_string());
        let plugins = match obj.get("plugins") {
            Some(Value::Array(p)) => p.clone(),
            Some(_) => return Err(bad("\"plugins\" is not an array".into())),
            None if obj.contains_key("type") => vec![v.clone()],
            None => return Err(bad("neither \"plugins\" nor \"type\"".into())),
        };
        if plugins.is_empty() {
            return Err(bad("\"plugins\" is empty".into()));
        }
        for p in &plugins {
            let t = p.get("type").and_then(Value::as_str).unwrap_or("");
            if t.is_empty() || t.contains('/') || t.starts_with('.') {
                return Err(bad(format!(
                    "plugin type {t:?} is not a plain executable name"
                )));
            }
        }
        Ok(ConfList {
            name,
            cni_version,
            plugins,
        })
    }
}

/// Runs plugins from the CNI bin dirs.
#[derive(Debug, Clone)]
pub struct Runner {
    pub bin_dirs: Vec<PathBuf>,
}

impl Runner {
    pub fn find(&self, plugin: &str) -> Result<PathBuf, NetworkError> {
        self.bin_dirs
            .iter()
            .map(|d| d.join(plugin))
            .find(|p| p.is_file())
            .ok_or_else(|| NetworkError::PluginMissing {
                plugin: plugin.to_string(),
                dirs: self.bin_dirs.clone(),
            })
    }

    /// ADD through the list; returns the last plugin's result (to cache for CHECK/DEL).
    pub async fn add(
        &self,
        list: &ConfList,
        at: &Attachment,
        runtime: &Value,
    ) -> Result<Value, NetworkError> {
        let mut prev: Option<Value> = None;
        for p in &list.plugins {
            let conf = plugin_conf(list, p, prev.as_ref(), runtime);
            prev = Some(self.exec(Command::Add, p, &conf, at).await?);
        }
        Ok(prev.unwrap_or(Value::Null))
    }

    /// CHECK through the list against the cached ADD result.
    pub async fn check(
        &self,
        list: &ConfList,
        at: &Attachment,
        runtime: &Value,
        cached: &Value,
    ) -> Result<(), NetworkError> {
        for p in &list.plugins {
            let conf = plugin_conf(list, p, Some(cached), runtime);
            match self.exec(Command::Check, p, &conf, at).await {
                // portmap 1.1 (Debian 12's) checks for an IPv6 DNAT chain even when the
                // result has no IPv6 address, so it never made one.
                Err(NetworkError::Plugin { plugin, msg, .. })
                    if plugin == "portmap" && msg.contains("ipv6") && !has_ipv6(cached) => {}
                other => {
                    other?;
                }
            }
        }
        Ok(())
    }

    /// DEL through the list in reverse. Every plugin is asked even when one fails (each
    /// frees what is its own); the first failure is returned. Plugins treat DEL of what is
    /// already gone as success, so this can be repeated.
    pub async fn del(
        &self,
        list: &ConfList,
        at: &Attachment,
        runtime: &Value,
        cached: Option<&Value>,
    ) -> Result<(), NetworkError> {
        let mut first = None;
        for p in list.plugins.iter().rev() {
            let conf = plugin_conf(list, p, cached, runtime);
            if let Err(e) = self.exec(Command::Del, p, &conf, at).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    async fn exec(
        &self,
        command: Command,
        plugin: &Value,
        conf: &Value,
        at: &Attachment,
    ) -> Result<Value, NetworkError> {
        let kind = plugin.get("type").and_then(Value::as_str).unwrap_or("");
        let path = self.find(kind)?;
        let fail = |code: u64, msg: String, details: String| NetworkError::Plugin {
            plugin: kind.to_string(),
            command: command.as_str(),
            container: at.container_id.clone(),
            code,
            msg,
            details,
        };
        let cni_path = std::env::join_paths(&self.bin_dirs)
            .map_err(|e| fail(0, format!("bad CNI bin dirs: {e}"), String::new()))?;
        let mut child = tokio::process::Command::new(&path)
            .env_clear()
            // Plugins run iptables/ip from PATH.
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
            )
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &at.container_id)
            .env("CNI_NETNS", &at.netns)
            .env("CNI_IFNAME", &at.ifname)
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| {
                fail(
                    0,
                    format!("cannot run {}: {e}", path.display()),
                    String::new(),
                )
            })?;
        let started = std::time::Instant::now();
        let body = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            // A plugin that exits without reading its stdin is reported by its status.
            let _ = stdin.write_all(&body).await;
        }
        let out = child.wait_with_output().await.map_err(|e| {
            fail(
                0,
                format!("waiting for {}: {e}", path.display()),
                String::new(),
            )
        })?;
        tracing::debug!(
            plugin = kind,
            command = command.as_str(),
            ifname = %at.ifname,
            ms = format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            "cni"
        );
        if out.status.success() {
            if out.stdout.iter().all(u8::is_ascii_whitespace) {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&out.stdout)
                .map_err(|e| fail(0, format!("result is not JSON: {e}"), String::new()));
        }
        Err(error_result(&out.stdout, &out.stderr, out.status, fail))
    }
}

/// The error object a failed plugin prints (`{"code", "msg", "details"}`), else its
/// stderr and exit status.
fn error_result(
    stdout: &[u8],
    stderr: &[u8],
    status: std::process::ExitStatus,
    fail: impl Fn(u64, String, String) -> NetworkError,
) -> NetworkError {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v.get("msg").and_then(Value::as_str) {
            let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            return fail(code, msg.to_string(), details.to_string());
        }
    }
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().last().unwrap_or("").trim().to_string();
    fail(0, format!("exited with {status}"), line)
}

/// One plugin's stdin: its own config with the list's name and version, the previous
/// result, and the runtime values of the capabilities it declares.
fn plugin_conf(list: &ConfList, plugin: &Value, prev: Option<&Value>, runtime: &Value) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(p) = prev.filter(|p| !p.is_null()) {
        conf.insert("prevResult".into(), p.clone());
    }
    let caps = plugin.get("capabilities").and_then(Value::as_object);
    let mut rc = Map::new();
    if let (Some(caps), Some(values)) = (caps, runtime.as_object()) {
        for (k, v) in values {
            if caps.get(k).and_then(Value::as_bool) == Some(true) {
                rc.insert(k.clone(), v.clone());
            }
        }
    }
    if !rc.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(rc));
    }
    Value::Object(conf)
}

fn has_ipv6(result: &Value) -> bool {
    result
        .get("ips")
        .and_then(Value::as_array)
        .is_some_and(|ips| {
            ips.iter()
                .filter_map(|ip| ip.get("address")?.as_str())
                .any(|a| a.contains(':'))
        })
}

/// The first IPv4 address (without prefix) of a CNI result's `ips`.
pub fn result_ipv4(result: &Value) -> Option<std::net::Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("address")?.as_str())
        .filter_map(|a| a.split('/').next()?.parse().ok())
        .next()
}

/// The gateway of the first IPv4 address of a CNI result.
pub fn result_gateway(result: &Value) -> Option<std::net::Ipv4Addr> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|ip| ip.get("gateway")?.as_str()?.parse().ok())
        .next()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list() -> ConfList {
        ConfList::parse(
            Path::new("t.conflist"),
            br#"{"cniVersion":"1.0.0","name":"n","plugins":[
                {"type":"bridge","bridge":"b0"},
                {"type":"portmap","capabilities":{"portMappings":true}}]}"#,
        )
        .expect("parse")
    }

    #[test]
    fn conf_gets_name_version_prev_and_only_declared_capabilities() {
        let l = list();
        let rt = json!({"portMappings":[{"hostPort":8080}], "bandwidth": {}});
        let first = plugin_conf(&l, &l.plugins[0], None, &rt);
        assert_eq!(first["name"], "n");
        assert_eq!(first["cniVersion"], "1.0.0");
        assert!(first.get("prevResult").is_none());
        assert!(first.get("runtimeConfig").is_none(), "{first}");
        let prev = json!({"ips":[{"address":"10.1.2.3/24","gateway":"10.1.2.1"}]});
        let second = plugin_conf(&l, &l.plugins[1], Some(&prev), &rt);
        assert_eq!(second["prevResult"], prev);
        assert_eq!(second["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(second["runtimeConfig"].get("bandwidth").is_none());
        assert_eq!(result_ipv4(&prev), Some("10.1.2.3".parse().unwrap()));
        assert_eq!(result_gateway(&prev), Some("10.1.2.1".parse().unwrap()));
    }

    #[test]
    fn hostile_or_broken_configs_are_refused() {
        for (text, want) in [
            ("[]", "not a JSON object"),
            ("{", "not JSON"),
            (r#"{"plugins":[]}"#, "no \"name\""),
            (r#"{"name":"n","plugins":[]}"#, "empty"),
            (r#"{"name":"n","plugins":{}}"#, "not an array"),
            (
                r#"{"name":"n","plugins":[{"type":"../../bin/sh"}]}"#,
                "plain executable",
            ),
            (r#"{"name":"n","plugins":[{}]}"#, "plain executable"),
            (r#"{"name":"n"}"#, "neither"),
        ] {
            let e = ConfList::parse(Path::new("x.conflist"), text.as_bytes())
                .expect_err(text)
                .to_string();
            assert!(e.contains(want) && e.contains("x.conflist"), "{text}: {e}");
        }
        let single = ConfList::parse(Path::new("a.conf"), br#"{"name":"n","type":"bridge"}"#)
            .expect("single plugin conf");
        assert_eq!(single.plugins.len(), 1);
        assert_eq!(single.cni_version, CNI_VERSION);
    }

    #[test]
    fn error_object_and_stderr_become_one_line() {
        use std::os::unix::process::ExitStatusExt;
        let fail = |code, msg, details| NetworkError::Plugin {
            plugin: "bridge".into(),
            command: "ADD",
            container: "c1".into(),
            code,
            msg,
            details,
        };
        let st = std::process::ExitStatus::from_raw(1 << 8);
        let e = error_result(br#"{"code":7,"msg":"boom","details":"why"}"#, b"", st, fail);
        assert_eq!(e.to_string(), "CNI ADD of bridge for c1 failed: boom (why)");
        let e = error_result(b"garbage", b"first\nlast line\n", st, fail);
        assert!(
            matches!(&e, NetworkError::Plugin { code: 0, details, .. } if details == "last line"),
            "{e}"
        );
    }
}

//! Presentation shared by the commands: human sizes, `--format` templates in the subset of
//! Go's text/template that Docker users write (`{{.Field.Sub}}`, `{{json .X}}`,
//! `{{index .Map "key"}}`, `\t`, a `table ` prefix), exit codes, terminal checks.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{bail, Context};
use serde_json::Value;

/// `1.5 MB`, `12.3 kB`, `512 B`: decimal units, as `docker images` prints them.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        return format!("{bytes} B");
    }
    // Four significant digits, trailing zeros dropped (go-units' "%.4g").
    let decimals = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    format!(
        "{} {}",
        s.trim_end_matches('0').trim_end_matches('.'),
        UNITS[unit]
    )
}

/// The nested process's exit code as ours (codes above 255 cannot be passed on).
pub fn exit_code(code: u32) -> ExitCode {
    ExitCode::from(u8::try_from(code).unwrap_or(255))
}

pub fn stdout_is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// A parsed `--format`.
#[derive(Debug, Clone)]
pub struct Template {
    parts: Vec<Part>,
    table: bool,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Field { path: Vec<String>, json: bool },
    Index { path: Vec<String>, key: String },
}

impl Template {
    pub fn parse(format: &str) -> anyhow::Result<Template> {
        let (table, body) = match format.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => (true, rest.trim_start()),
            _ => (false, format),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut parts = Vec::new();
        let mut rest = body.as_str();
        while let Some(start) = rest.find("{{") {
            parts.push(Part::Text(rest[..start].to_string()));
            let end = rest[start..]
                .find("}}")
                .with_context(|| format!("invalid --format {format:?}: unclosed {{{{"))?;
            parts.push(action(rest[start + 2..start + end].trim(), format)?);
            rest = &rest[start + end + 2..];
        }
        parts.push(Part::Text(rest.to_string()));
        Ok(Template { parts, table })
    }

    /// The header line of a `table` format (field names in capitals), if it is one.
    pub fn header(&self) -> Option<String> {
        self.table.then(|| {
            self.parts
                .iter()
                .map(|p| match p {
                    Part::Text(t) => t.clone(),
                    Part::Field { path, .. } | Part::Index { path, .. } => {
                        path.last().map(|s| s.to_uppercase()).unwrap_or_default()
                    }
                })
                .collect()
        })
    }

    pub fn render(&self, v: &Value) -> anyhow::Result<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Field { path, json } => {
                    let x = lookup(v, path)?;
                    if *json {
                        out.push_str(&serde_json::to_string(x)?);
                    } else {
                        out.push_str(&plain(x));
                    }
                }
                Part::Index { path, key } => {
                    let x = lookup(v, path)?;
                    out.push_str(&x.get(key).map(plain).unwrap_or_default());
                }
            }
        }
        Ok(out)
    }
}

fn action(a: &str, format: &str) -> anyhow::Result<Part> {
    let bad = || {
        anyhow::anyhow!("invalid --format {format:?}: {{{{{a}}}}} is not supported (use {{{{.Field}}}}, {{{{json .Field}}}} or {{{{index .Map \"key\"}}}})")
    };
    let (json, expr) = match a.strip_prefix("json ") {
        Some(e) => (true, e.trim()),
        None => (false, a),
    };
    if let Some(rest) = expr.strip_prefix("index ") {
        let (map, key) = rest.trim().split_once(' ').ok_or_else(bad)?;
        let key = key.trim();
        let key = key
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .ok_or_else(bad)?;
        return Ok(Part::Index {
            path: field_path(map).ok_or_else(bad)?,
            key: key.to_string(),
        });
    }
    let path = field_path(expr).ok_or_else(bad)?;
    Ok(Part::Field { path, json })
}

/// `.` → [], `.A.B` → [A, B]; None for anything else.
fn field_path(e: &str) -> Option<Vec<String>> {
    if e == "." {
        return Some(Vec::new());
    }
    let rest = e.strip_prefix('.')?;
    let path: Vec<String> = rest.split('.').map(str::to_string).collect();
    path.iter()
        .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(path)
}

fn lookup<'a>(v: &'a Value, path: &[String]) -> anyhow::Result<&'a Value> {
    let mut cur = v;
    for (i, p) in path.iter().enumerate() {
        cur = match cur.get(p) {
            Some(x) => x,
            None => {
                let known: Vec<&str> = cur
                    .as_object()
                    .map(|o| o.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                bail!(
                    "--format: no field .{} (known here: {})",
                    path[..=i].join("."),
                    known.join(", ")
                )
            }
        };
    }
    Ok(cur)
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_in_decimal_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(1000), "1 kB");
        assert_eq!(human_size(1_234_567), "1.235 MB");
        assert_eq!(human_size(1_500_000_000), "1.5 GB");
    }

    #[test]
    fn templates_render_fields_json_and_index() {
        let v = serde_json::json!({"ID": "c1", "State": {"Pid": 42, "Running": true},
            "Config": {"Labels": {"a.b": "x"}}, "Args": ["sh"]});
        let t =
            Template::parse(r"{{.ID}}\t{{.State.Pid}} {{.State.Running}} {{json .Args}}").unwrap();
        assert_eq!(t.render(&v).unwrap(), "c1\t42 true [\"sh\"]");
        let t = Template::parse(r#"{{index .Config.Labels "a.b"}}"#).unwrap();
        assert_eq!(t.render(&v).unwrap(), "x");
        let t = Template::parse("table {{.ID}}\t{{.State.Pid}}").unwrap();
        assert_eq!(t.header().as_deref(), Some("ID\tPID"));
        let err = Template::parse("{{.Nope}}")
            .unwrap()
            .render(&v)
            .unwrap_err();
        assert!(err.to_string().contains("no field .Nope"), "{err}");
        for bad in ["{{.ID", "{{range .}}", "{{.A..B}}", r#"{{index .M key}}"#] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
    }
}

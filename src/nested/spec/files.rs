//! `--env-file` and `--label-file`: one `KEY=VALUE` per line, as Docker reads them (lines
//! starting with `#` and blank lines skipped, no quote processing; a bare `KEY` in an env
//! file takes the caller's value, or is dropped when the caller has none).

use std::path::Path;

use crate::error::{Error, Result};

/// These files are small; a larger one is refused before it is read.
const FILE_LIMIT: u64 = 1 << 20;

/// The `KEY=VALUE` (or bare `KEY`) lines of `path`.
pub fn read_kv_file(flag: &str, path: &Path) -> Result<Vec<String>> {
    let what = || format!("{flag} {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(what(), e))?;
    if meta.len() > FILE_LIMIT {
        return Err(Error::Invalid(format!(
            "{}: {} bytes, more than the {FILE_LIMIT} such a file may have",
            what(),
            meta.len()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(what(), e))?;
    parse_kv(&text).map_err(|(n, line)| {
        Error::Invalid(format!(
            "{} line {n}: {line:?} is not KEY=VALUE (the key may not be empty or contain spaces)",
            what()
        ))
    })
}

fn parse_kv(text: &str) -> std::result::Result<Vec<String>, (usize, String)> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split_once('=').map_or(line, |(k, _)| k);
        if key.is_empty() || key.contains(char::is_whitespace) || line.contains('\0') {
            return Err((i + 1, raw.to_string()));
        }
        out.push(line.to_string());
    }
    Ok(out)
}

/// Env-file lines as `-e` takes them: a bare KEY with the caller's value (or dropped).
pub fn env_entries(lines: Vec<String>) -> Vec<String> {
    lines
        .into_iter()
        .filter_map(|l| match l.contains('=') {
            true => Some(l),
            false => std::env::var(&l).ok().map(|v| format!("{l}={v}")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_files_parse_as_docker_does() {
        let got = parse_kv("# comment\n\nA=1\n  B=two words\nC=\"quoted\"\nD\n").unwrap();
        assert_eq!(got, ["A=1", "B=two words", "C=\"quoted\"", "D"]);
        assert_eq!(parse_kv("A=1\nBAD KEY=x\n").unwrap_err().0, 2);
        assert_eq!(parse_kv("=x\n").unwrap_err().0, 1);
        std::env::set_var("NESTCACHE_TEST_ENVFILE_KEY", "v");
        let env = env_entries(vec![
            "A=1".into(),
            "NESTCACHE_TEST_ENVFILE_KEY".into(),
            "NESTCACHE_TEST_UNSET_KEY".into(),
        ]);
        assert_eq!(env, ["A=1", "NESTCACHE_TEST_ENVFILE_KEY=v"]);
    }

    #[test]
    fn files_are_read_with_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("env");
        std::fs::write(&p, "X=1\n").unwrap();
        assert_eq!(read_kv_file("--env-file", &p).unwrap(), ["X=1"]);
        std::fs::write(&p, "X Y=1\n").unwrap();
        let e = read_kv_file("--env-file", &p).unwrap_err().to_string();
        assert!(e.contains("--env-file") && e.contains("line 1"), "{e}");
        let e = read_kv_file("--label-file", &dir.path().join("none")).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e}");
    }
}

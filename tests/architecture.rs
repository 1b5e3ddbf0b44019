//! The module floors of docs/ARCHITECTURE.md, enforced: every `crate::` path in a module of
//! `src/` must name the module itself or one its table row lists, and the table must
//! list every module of `src/lib.rs` and have no cycle. The table is parsed from the
//! document, so code and map cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The module `error` rolls the others' error enums up, so it may name their error types
/// (and only those): see the document's "Floors".
const ROLLUP: &str = "error";

/// Module → the modules it may import, from the table's rows.
fn allowed_table(doc: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut table = BTreeMap::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        let module = backticked(cols[1]).into_iter().next().expect("module name");
        let imports = backticked(cols.get(3).copied().unwrap_or_default());
        table.insert(module, imports.into_iter().collect());
    }
    table
}

fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// `pub mod NAME;` lines of src/lib.rs.
fn lib_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .filter_map(|l| l.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// Every `crate::a::b::C` path in `src`, comments left out, `crate::{x::Y, z}` groups
/// expanded. Paths are returned whole so the rollup rule can look at their last segment.
fn crate_paths(src: &str) -> Vec<String> {
    paths_after(src, "crate::")
}

/// Every `<prefix>a::b::C` path in `src` (`crate::` in the library, `nestcache::` in the
/// shim), as [`crate_paths`] reads them.
fn paths_after(src: &str, prefix: &str) -> Vec<String> {
    let code: String = src
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = Vec::new();
    let mut rest = code.as_str();
    while let Some(i) = rest.find(prefix) {
        let preceded_by_ident = rest[..i]
            .chars()
            .last()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$');
        rest = &rest[i + prefix.len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = matching_brace(group);
            out.extend(group_paths(&group[..end]));
        } else {
            out.push(path_at(rest));
        }
    }
    out
}

/// The length of a `{...}` group's inside (up to its matching `}`).
fn matching_brace(s: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return i,
            '}' => depth -= 1,
            _ => {}
        }
    }
    s.len()
}

/// The paths of a use group: `a::B, c::{D, E}` → `a::B`, `c::D`, `c::E`.
fn group_paths(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&group[start..]);
    let mut out = Vec::new();
    for item in items.into_iter().map(str::trim).filter(|i| !i.is_empty()) {
        match item.find("::{") {
            Some(i) => {
                let inner = &item[i + 3..item.len() - 1];
                for p in group_paths(inner) {
                    out.push(format!("{}::{p}", &item[..i]));
                }
            }
            None => out.push(path_at(item)),
        }
    }
    out
}

fn path_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_string()
}

/// The module a crate path lands in (`Error`/`Result` are `error`'s re-exports).
fn top_module(path: &str) -> &str {
    match path.split("::").next().unwrap_or_default() {
        "Error" | "Result" => ROLLUP,
        m => m,
    }
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().map(Result::unwrap) {
        let p = entry.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The source files of module `m`: src/m.rs and everything under src/m/.
fn module_files(m: &str) -> Vec<PathBuf> {
    let src = Path::new(ROOT).join("src");
    let mut files = Vec::new();
    if src.join(format!("{m}.rs")).is_file() {
        files.push(src.join(format!("{m}.rs")));
    }
    if src.join(m).is_dir() {
        rust_files(&src.join(m), &mut files);
    }
    files
}

fn violations(table: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut bad = Vec::new();
    for (m, allowed) in table {
        for file in module_files(m) {
            let text = std::fs::read_to_string(&file).unwrap();
            for path in crate_paths(&text) {
                let to = top_module(&path);
                let ok = to == m
                    || allowed.contains(to)
                    || (m == ROLLUP && path.rsplit("::").next().unwrap().ends_with("Error"));
                if !ok {
                    bad.push(format!(
                        "{}: `crate::{path}`: {m} may not import {to} (docs/ARCHITECTURE.md)",
                        file.strip_prefix(ROOT).unwrap_or(&file).display()
                    ));
                }
            }
        }
    }
    bad
}

/// A cycle in the table, if it has one (the rollup module is left out).
fn cycle(table: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        m: &str,
        table: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == m) {
            return Some(stack[i..].to_vec());
        }
        if m == ROLLUP || !done.insert(m.to_string()) {
            return None;
        }
        stack.push(m.to_string());
        for next in table.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, table, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    table
        .keys()
        .find_map(|m| visit(m, table, &mut Vec::new(), &mut done))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap()
}

#[test]
fn modules_import_only_from_the_floors_their_row_lists() {
    let table = allowed_table(&read("docs/ARCHITECTURE.md"));
    let modules = lib_modules(&read("src/lib.rs"));
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    assert_eq!(
        modules, listed,
        "docs/ARCHITECTURE.md's table must have one row per module of src/lib.rs"
    );
    for (m, imports) in &table {
        for i in imports {
            assert!(
                listed.contains(i),
                "{m}'s row lists {i}, which is no module"
            );
        }
    }
    assert_eq!(cycle(&table), None, "the floors table has a cycle");
    let bad = violations(&table);
    assert!(
        bad.is_empty(),
        "imports against the floors:\n{}",
        bad.join("\n")
    );
}

/// The modules the shim may use: its row's (the `| shim |` line) and, through them, what
/// their rows list.
fn shim_allowed(doc: &str, table: &BTreeMap<String, BTreeSet<String>>) -> BTreeSet<String> {
    let row = doc
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("| shim |"))
        .expect("docs/ARCHITECTURE.md has the shim's row");
    let mut todo = backticked(row);
    let mut allowed = BTreeSet::new();
    while let Some(m) = todo.pop() {
        if allowed.insert(m.clone()) {
            todo.extend(table.get(&m).into_iter().flatten().cloned());
        }
    }
    allowed
}

#[test]
fn the_shim_uses_only_the_modules_its_row_lists() {
    let doc = read("docs/ARCHITECTURE.md");
    let table = allowed_table(&doc);
    let allowed = shim_allowed(&doc, &table);
    assert!(allowed.contains("store") && !allowed.contains("containerd"));
    let mut files = Vec::new();
    rust_files(&Path::new(ROOT).join("shim/src"), &mut files);
    let mut bad = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for path in paths_after(&text, "nestcache::") {
            let to = top_module(&path);
            if !allowed.contains(to) {
                bad.push(format!(
                    "{}: `nestcache::{path}`: the shim may not use {to} (docs/ARCHITECTURE.md)",
                    file.strip_prefix(ROOT).unwrap_or(file).display()
                ));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the shim against its row:\n{}",
        bad.join("\n")
    );
}

/// The modules of src/lib.rs behind feature `cli` (a `#[cfg(feature = "cli")]` line
/// right above their `pub mod`).
fn cli_modules(lib: &str) -> BTreeSet<String> {
    let lines: Vec<&str> = lib.lines().map(str::trim).collect();
    lines
        .windows(2)
        .filter(|w| w[0] == r#"#[cfg(feature = "cli")]"#)
        .filter_map(|w| w[1].strip_prefix("pub mod ")?.strip_suffix(';'))
        .map(str::to_string)
        .collect()
}

/// The shim builds the library without feature `cli`: nothing it uses, and no module
/// outside `cli`, may import a `cli` module, and the error rollup names their error
/// types only under the same cfg.
#[test]
fn the_core_builds_without_feature_cli() {
    let doc = read("docs/ARCHITECTURE.md");
    let table = allowed_table(&doc);
    let cli = cli_modules(&read("src/lib.rs"));
    assert!(
        cli.contains("containerd") && !cli.contains("store"),
        "{cli:?}"
    );
    for (m, imports) in table
        .iter()
        .filter(|(m, _)| !cli.contains(*m) && *m != ROLLUP)
    {
        let bad: Vec<_> = imports.intersection(&cli).collect();
        assert!(bad.is_empty(), "{m} is in the core but may import {bad:?}");
    }
    let shim: Vec<_> = shim_allowed(&doc, &table)
        .intersection(&cli)
        .cloned()
        .collect();
    assert!(
        shim.is_empty(),
        "the shim may use {shim:?}, behind feature cli"
    );
    let error = read("src/error.rs");
    let lines: Vec<&str> = error.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let names_cli = paths_after(line, "crate::")
            .iter()
            .any(|p| cli.contains(top_module(p)));
        let gated = lines[i.saturating_sub(3)..i]
            .iter()
            .any(|l| l.trim() == r#"#[cfg(feature = "cli")]"#);
        assert!(
            !names_cli || gated,
            "src/error.rs:{}: `{}` needs #[cfg(feature = \"cli\")] (the shim builds without it)",
            i + 1,
            line.trim()
        );
    }
}

#[test]
fn the_scanner_sees_every_form_of_crate_path() {
    let src = r#"
        use crate::digest::Digest;
        use crate::{error::{Error, Result}, store::Store};
        // use crate::nested::ignored;
        let x = crate::unpack::ensure(a);
        fn f() -> crate::Result<()> {}
        $crate::require!(root);
    "#;
    let mut tops: Vec<&str> = Vec::new();
    let paths = crate_paths(src);
    for p in &paths {
        tops.push(top_module(p));
    }
    assert_eq!(
        tops,
        ["digest", "error", "error", "store", "unpack", "error"]
    );
    assert!(paths.contains(&"error::Error".to_string()), "{paths:?}");

    let mut table = BTreeMap::new();
    table.insert("store".to_string(), BTreeSet::from(["unpack".to_string()]));
    table.insert("unpack".to_string(), BTreeSet::from(["store".to_string()]));
    assert!(cycle(&table).is_some());
}

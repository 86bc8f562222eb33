//! The library's layers, checked: every `crate::` path in `netguard/src` must name a module of
//! a lower layer than the module it is written in (or that module itself). Modules of one
//! layer are siblings and never import each other, so no import cycle between modules can
//! form. A new top-level module must be given a layer here.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Tally;

/// Lowest first. See docs/architecture.md for what each layer does.
const LAYERS: &[(&str, &[&str])] = &[
    ("vocabulary", &["event", "model"]),
    ("what runtimes say (CNI, OCI hooks)", &["runtime"]),
    // Blocking work taken off the async runtime's workers; test-only kill points.
    ("blocking, fault points", &["blocking", "fault"]),
    ("netns identity", &["netns"]),
    // Bind-mount directories (and libcni's cache) heard of through inotify.
    ("directory watch", &["inotify"]),
    ("netlink plumbing", &["rtnl"]),
    ("service plumbing", &["metrics", "notify"]),
    ("kernel view and event sources", &["inventory", "trace"]),
    (
        "capture and record",
        &["capture", "ledger", "runtime_failures"],
    ),
    // Turns the file and flags into the typed settings of the ledger and the tracer.
    ("settings", &["config"]),
    ("plan, apply, verify", &["restore"]),
    ("display", &["status", "report", "recording"]),
    ("operations", &["control", "install", "outcomes"]),
    ("api", &["api"]),
    // What runtimes start per container (CNI plugin, OCI hooks) reaching the agent.
    ("runtimes' client", &["client"]),
    ("agent", &["agent"]),
];

/// Files of the binary (`main.rs`, `cli/`) sit above every layer: they import through
/// `netguard::`, not `crate::`.
const ABOVE_ALL: &[&str] = &["main", "cli", "lib"];

/// One import against the layers.
#[derive(Debug, PartialEq, Eq)]
pub struct Violation {
    pub file: PathBuf,
    pub line: usize,
    pub import: String,
    pub rule: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: `{}`: {}",
            self.file.display(),
            self.line,
            self.import,
            self.rule
        )
    }
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

fn order() -> String {
    LAYERS
        .iter()
        .map(|(_, modules)| modules.join(", "))
        .collect::<Vec<_>>()
        .join(" < ")
}

/// The top-level module a file under `src` belongs to (`restore/plan/veth.rs` -> `restore`).
fn module_of(relative: &Path) -> String {
    let first = relative
        .components()
        .next()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default();
    first.trim_end_matches(".rs").to_string()
}

/// The text with comments and string/char literals blanked (newlines kept), so that only
/// code is searched and line numbers still hold.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < bytes.len() {
        let rest = &text[i..];
        let c = rest.chars().next().expect("in bounds");
        if rest.starts_with("//") {
            let end = rest.find('\n').unwrap_or(rest.len());
            rest[..end].chars().for_each(|c| blank(&mut out, c));
            i += end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
            rest[..end].chars().for_each(|c| blank(&mut out, c));
            i += end;
        } else if rest.starts_with("'\"'") {
            // A quote as a char literal opens no string.
            out.push_str("   ");
            i += 3;
        } else if c == '"' {
            let mut end = 1;
            let tail = rest.as_bytes();
            while end < tail.len() && tail[end] != b'"' {
                end += if tail[end] == b'\\' { 2 } else { 1 };
            }
            let end = (end + 1).min(rest.len());
            rest[..end].chars().for_each(|c| blank(&mut out, c));
            i += end;
        } else {
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every top-level module a `crate::` path in `code` names, with its line: `crate::a::b` gives
/// `a`, `crate::{a, b::c}` gives `a` and `b`.
fn crate_imports(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| is_ident(c) || c == '$') {
            continue;
        }
        let line = code[..start].matches('\n').count() + 1;
        let rest = &code[from..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            let mut offset = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if item_start && is_ident(c) => {
                        let name: String =
                            group[i..].chars().take_while(|c| is_ident(*c)).collect();
                        let item_line = line + group[..i].matches('\n').count();
                        found.push((item_line, name));
                        item_start = false;
                    }
                    _ => {}
                }
                offset = i;
            }
            from += offset;
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                found.push((line, name));
            }
        }
    }
    found
}

/// The imports against the layers in one file, `relative` to `src`.
fn check_file(relative: &Path, text: &str) -> Vec<Violation> {
    let module = module_of(relative);
    if ABOVE_ALL.contains(&module.as_str()) {
        return Vec::new();
    }
    let violation = |line, import: &str, rule: String| Violation {
        file: Path::new("netguard/src").join(relative),
        line,
        import: format!("crate::{import}"),
        rule,
    };
    let Some(own) = layer_of(&module) else {
        return vec![violation(
            1,
            &module,
            format!("module `{module}` has no layer: add it to LAYERS in xtask/src/layers.rs"),
        )];
    };
    let mut violations = Vec::new();
    for (line, target) in crate_imports(&code_only(text)) {
        if target == module || target == "self" {
            continue;
        }
        let rule = match layer_of(&target) {
            None => format!("`{target}` is no module with a layer"),
            Some(theirs) if theirs < own => continue,
            Some(theirs) if theirs == own => format!(
                "`{module}` and `{target}` are siblings in the {} layer and never import each other",
                LAYERS[own].0
            ),
            Some(theirs) => format!(
                "`{module}` ({} layer) may not import `{target}` ({} layer, higher); the order is {}",
                LAYERS[own].0,
                LAYERS[theirs].0,
                order()
            ),
        };
        violations.push(violation(line, &target, rule));
    }
    violations
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every import against the layers in `src`.
pub fn violations(src: &Path) -> anyhow::Result<Vec<Violation>> {
    let mut files = Vec::new();
    rust_files(src, &mut files)?;
    files.sort();
    let mut violations = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let relative = file.strip_prefix(src).expect("found below src");
        violations.extend(check_file(relative, &text));
    }
    Ok(violations)
}

/// The check as one test of `cargo xtask test`.
pub fn check() -> anyhow::Result<Tally> {
    let src = crate::shell::workspace_root().join("netguard/src");
    let found = violations(&src)?;
    for v in &found {
        println!("layers: {v}");
    }
    println!(
        "layers: {} import(s) against the layers in {}",
        found.len(),
        src.display()
    );
    Ok(if found.is_empty() {
        Tally {
            passed: 1,
            failed: 0,
        }
    } else {
        Tally {
            passed: 0,
            failed: 1,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_keeps_its_layers() {
        let src = crate::shell::workspace_root().join("netguard/src");
        let found = violations(&src).unwrap();
        assert!(
            found.is_empty(),
            "{}",
            found
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    #[test]
    fn an_import_upwards_is_named_with_file_line_and_rule() {
        let text = "use crate::event::Event;\n// crate::restore in a comment\nlet s = \"crate::agent\";\nuse crate::{\n    model::Mac,\n    ledger::Ledger,\n};\n";
        let found = check_file(Path::new("inventory/conn.rs"), text);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].line, 6);
        assert_eq!(found[0].import, "crate::ledger");
        assert_eq!(found[0].file, Path::new("netguard/src/inventory/conn.rs"));
        assert!(found[0].rule.contains("higher"), "{}", found[0].rule);
    }

    #[test]
    fn siblings_and_unknown_modules_are_refused() {
        let found = check_file(Path::new("trace/mod.rs"), "use crate::inventory::Pool;");
        assert!(found[0].rule.contains("siblings"), "{}", found[0].rule);
        let found = check_file(Path::new("shiny.rs"), "");
        assert!(found[0].rule.contains("has no layer"), "{}", found[0].rule);
        assert!(check_file(
            Path::new("restore/apply.rs"),
            "use crate::restore::plan::Plan;"
        )
        .is_empty());
        assert!(check_file(
            Path::new("model/mod.rs"),
            "macro_rules! m { () => { $crate::x } }"
        )
        .is_empty());
    }
}

//! The house rules of docs/architecture.md, checked: every `crate::` import points down the
//! layer table (so there are no import circles), and no source file outgrows a reader.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Module name -> rank, read from the table in docs/architecture.md (`| 3 | `rng` | ... |`).
fn ranks() -> BTreeMap<String, usize> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/architecture.md")).unwrap();
    let mut ranks = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if let [_, rank, module, ..] = cells.as_slice() {
            if let (Ok(rank), Some(name)) =
                (rank.parse::<usize>(), module.strip_prefix('`').and_then(|m| m.strip_suffix('`')))
            {
                ranks.insert(name.to_string(), rank);
            }
        }
    }
    assert!(ranks.len() >= 15, "docs/architecture.md's layer table was not found: {ranks:?}");
    ranks
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a source file belongs to (`src/tune/plan.rs` -> `tune`); `None` for the
/// crate root and the binary.
/// Every Rust file under src/.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    rust_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut files);
    files
}

fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main")).then_some(name)
}

/// The modules named as `crate::NAME` in code (comments, where doc links live, are skipped).
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim_start).filter(|l| !l.starts_with("//")) {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let name: String = rest[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            // The crate root re-exports a few names of the layers they come from.
            let name = match name.as_str() {
                "Error" | "Result" => "error".to_string(),
                "Model" => "model".to_string(),
                _ => name,
            };
            if !name.is_empty() {
                out.push(name);
            }
            rest = &rest[i + 7..];
        }
    }
    out
}

#[test]
fn every_crate_import_points_down_the_layer_table() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let ranks = ranks();
    let mut bad = Vec::new();
    for file in &source_files() {
        let Some(module) = module_of(&src, file) else { continue };
        if module == "cli" {
            continue; // the binary's own modules sit above every library layer
        }
        let Some(&mine) = ranks.get(&module) else {
            bad.push(format!("{}: module `{module}` is not in docs/architecture.md's table", file.display()));
            continue;
        };
        for used in imports(&std::fs::read_to_string(file).unwrap()) {
            match ranks.get(&used) {
                Some(&theirs) if used == module || theirs < mine => {}
                Some(_) => {
                    bad.push(format!("{}: `{module}` imports `crate::{used}`, which is above it", file.display()))
                }
                None => bad.push(format!("{}: `crate::{used}` is not in docs/architecture.md's table", file.display())),
            }
        }
    }
    assert!(bad.is_empty(), "imports against the documented direction:\n{}", bad.join("\n"));
}

#[test]
fn an_upward_import_is_caught() {
    // The checker itself: `model` naming `crate::tune` in code is found; in a comment it is not.
    let ranks = ranks();
    assert!(ranks["model"] < ranks["tune"]);
    assert_eq!(imports("use crate::tune::MlLr;\n// see crate::experiment"), ["tune"]);
    assert_eq!(imports("fn f() -> crate::Result<()>"), ["error"]);
}

#[test]
fn no_source_file_outgrows_a_reader() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let long: Vec<String> = source_files()
        .iter()
        .map(|f| (f, std::fs::read_to_string(f).unwrap().lines().count()))
        .filter(|&(f, n)| n > 700 || (f.ends_with("src/main.rs") && n > 150))
        .map(|(f, n)| format!("{} ({n} lines)", f.strip_prefix(root).unwrap().display()))
        .collect();
    assert!(long.is_empty(), "split these by concern: {long:?}");
}

#[test]
fn only_the_binary_links_mimalloc() {
    // mimalloc's C code uses initial-exec thread-locals (static TLS). evcxr links the library
    // into every notebook cell's shared object, and after a few such cells glibc has no static
    // TLS left: loading the next cell fails ("dlopen failed"). So the library must not use it.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let users: Vec<String> = source_files()
        .iter()
        .filter(|f| !f.ends_with("src/main.rs"))
        .filter(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            text.contains("libmimalloc_sys::") || text.contains("mimalloc::")
        })
        .map(|f| f.strip_prefix(root).unwrap().display().to_string())
        .collect();
    assert!(users.is_empty(), "only src/main.rs may use mimalloc: {users:?}");
}

//! The crate's layers (docs/design.md §6.1) depend only downward: a module of `src/` may use
//! its own layer and the layers below it, never one above or one beside it. Read from the
//! source, so a new `use` that breaks the rule fails here, with the file and line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and its rank: a module may use modules of lower rank only.
/// Layers of the same rank (vdsm and enforce) may not use each other.
const LAYERS: [(&str, u8); 8] = [
    ("error", 0),
    ("model", 1),
    ("sys", 2),
    ("host", 3),
    ("vdsm", 4),
    ("enforce", 4),
    ("reconcile", 5),
    ("app", 6),
];

/// The most top-level modules a newcomer should have to tell apart.
const MAX_TOP_LEVEL: usize = 12;

fn rank(layer: &str) -> Option<u8> {
    LAYERS.iter().find(|(name, _)| *name == layer).map(|(_, r)| *r)
}

/// One use of a layer by a file.
#[derive(Debug, PartialEq, Eq)]
struct Use {
    line: usize,
    layer: String,
}

/// The module path of a file under `src/`: `src/enforce/nftables.rs` -> [enforce, nftables].
fn module_path(relative: &Path) -> Vec<String> {
    let mut parts: Vec<String> = relative
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The source without comments (doc links may name any module) and string literals.
fn code_of(source: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut in_block = 0usize;
    for line in source.lines() {
        let mut out = String::new();
        let mut chars = line.chars().peekable();
        let mut in_string = false;
        while let Some(c) = chars.next() {
            if in_block > 0 {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    in_block -= 1;
                } else if c == '/' && chars.peek() == Some(&'*') {
                    chars.next();
                    in_block += 1;
                }
                continue;
            }
            if in_string {
                if c == '\\' {
                    chars.next();
                } else if c == '"' {
                    in_string = false;
                }
                continue;
            }
            match c {
                '"' => in_string = true,
                '/' if chars.peek() == Some(&'/') => break,
                '/' if chars.peek() == Some(&'*') => {
                    chars.next();
                    in_block += 1;
                }
                _ => out.push(c),
            }
        }
        lines.push(out);
    }
    lines
}

/// The layers `source`, the file at `module` (its module path), uses: every `crate::X` and
/// every `super::` chain that climbs out of its own top-level module.
fn uses(module: &[String], source: &str) -> Vec<Use> {
    let mut found = Vec::new();
    for (n, line) in code_of(source).iter().enumerate() {
        let words: Vec<&str> = line
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| !w.is_empty())
            .collect();
        for word in words {
            let segments: Vec<&str> = word.split("::").collect();
            let layer = if segments[0] == "crate" {
                segments.get(1).map(|s| s.to_string())
            } else if segments[0] == "super" {
                let climbs = segments.iter().take_while(|s| **s == "super").count();
                // A `mod tests` inside the file adds one level.
                let depth = module.len() + usize::from(line_in_inline_module(source, n));
                (climbs >= depth)
                    .then(|| segments.get(climbs).map(|s| s.to_string()))
                    .flatten()
            } else {
                None
            };
            if let Some(layer) = layer.filter(|l| !l.is_empty() && *l != "self") {
                found.push(Use { line: n + 1, layer });
            }
        }
    }
    found
}

/// True when line `n` of `source` is inside an inline `mod NAME {` block (as `mod tests`).
fn line_in_inline_module(source: &str, n: usize) -> bool {
    source
        .lines()
        .take(n)
        .any(|l| l.trim_start().starts_with("mod ") && l.trim_end().ends_with('{'))
}

/// Every violation of the layering in the file at `module`, as "file:line: message".
fn violations(file: &str, module: &[String], source: &str) -> Vec<String> {
    let Some(own) = module.first() else {
        return Vec::new();
    };
    let Some(own_rank) = rank(own) else {
        return vec![format!(
            "{file}: top-level module `{own}` is in no layer (add it to LAYERS and docs/design.md §6.1)"
        )];
    };
    let mut out = Vec::new();
    for u in uses(module, source) {
        if u.layer == *own {
            continue;
        }
        match rank(&u.layer) {
            Some(r) if r < own_rank => {}
            Some(_) => out.push(format!(
                "{file}:{}: `{own}` uses `{}`, a layer above or beside it",
                u.line, u.layer
            )),
            // `crate::Error` and `crate::Result` are re-exports of the bottom layer.
            None if u.layer == "Error" || u.layer == "Result" => {}
            None => out.push(format!("{file}:{}: `crate::{}` is in no layer", u.line, u.layer)),
        }
    }
    out
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut broken = Vec::new();
    let mut seen = 0;
    for path in &files {
        let relative = path.strip_prefix(&src).unwrap();
        if relative.starts_with("bin") || relative == Path::new("lib.rs") {
            continue;
        }
        seen += 1;
        let source = std::fs::read_to_string(path).unwrap();
        broken.extend(violations(
            &relative.display().to_string(),
            &module_path(relative),
            &source,
        ));
    }
    assert!(seen > 30, "only {seen} modules found under {}", src.display());
    assert!(broken.is_empty(), "layering broken:\n{}", broken.join("\n"));
}

#[test]
fn the_binaries_are_thin_and_reach_only_the_app_layer() {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin");
    let mut files = Vec::new();
    rust_files(&bin, &mut files);
    assert_eq!(files.len(), 3);
    for path in files {
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(source.lines().count() <= 10, "{} is not thin", path.display());
        for line in code_of(&source) {
            for (i, _) in line.match_indices("bridge_isolation::") {
                let rest = &line[i + "bridge_isolation::".len()..];
                assert!(rest.starts_with("app::"), "{}: {line}", path.display());
            }
        }
    }
}

#[test]
fn lib_rs_declares_exactly_the_layers() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).unwrap();
    let declared: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.strip_prefix("pub mod ")?.strip_suffix(';'))
        .collect();
    let mut layers: Vec<&str> = LAYERS.iter().map(|(n, _)| *n).collect();
    layers.sort_unstable();
    assert_eq!(declared, layers);
    assert!(declared.len() <= MAX_TOP_LEVEL);
    let top: BTreeMap<String, bool> = std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p.is_dir()))
        .filter(|(n, _)| n != "lib" && n != "bin")
        .collect();
    assert_eq!(
        top.keys().map(String::as_str).collect::<Vec<_>>(),
        layers,
        "src/ holds exactly the layers"
    );
}

#[test]
fn the_check_catches_an_upward_use_a_sideways_use_and_a_climbing_super() {
    let path = |p: &str| module_path(Path::new(p));
    let upward = "use crate::error::Result;\nuse crate::reconcile::plan;\n";
    assert_eq!(
        violations("model/plan.rs", &path("model/plan.rs"), upward),
        ["model/plan.rs:2: `model` uses `reconcile`, a layer above or beside it"]
    );
    let sideways = "fn f() { crate::vdsm::vnic::Report::default(); }";
    assert_eq!(violations("enforce/mod.rs", &path("enforce/mod.rs"), sideways).len(), 1);
    let climbing = "use super::super::app::hook;";
    assert_eq!(violations("sys/bridge.rs", &path("sys/bridge.rs"), climbing).len(), 1);
    // Within its own layer, downward, in comments or strings: all fine.
    let fine = "use super::Backend;\nuse crate::model::plan::Plan; // see crate::app\nlet s = \"crate::app\";\n/// [`crate::app::cli`]\n";
    assert_eq!(
        violations("enforce/nftables.rs", &path("enforce/nftables.rs"), fine),
        Vec::<String>::new()
    );
    let tests = "mod tests {\n    use super::super::super::app;\n    use super::super::Snapshot;\n";
    assert_eq!(violations("sys/bridge.rs", &path("sys/bridge.rs"), tests).len(), 1);
    assert_eq!(
        violations("newlayer/x.rs", &path("newlayer/x.rs"), "")[0],
        "newlayer/x.rs: top-level module `newlayer` is in no layer (add it to LAYERS and docs/design.md §6.1)"
    );
}

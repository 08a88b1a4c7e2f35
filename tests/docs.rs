//! The documentation's links: every relative link `](path)` or `](path#anchor)` in README.md,
//! docs/*.md and bench/README.md names a file of the repository, and an anchor names a
//! heading of the target (GitHub's slugs). Also: the README stays short and keeps the two
//! commands newcomers and CI copy literally. No root, no network.

use std::collections::HashSet;
use std::fs;
use std::path::{Component, Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The markdown files checked, relative to the repository root.
fn documents() -> Vec<PathBuf> {
    let mut files = vec![PathBuf::from("README.md"), PathBuf::from("bench/README.md")];
    let mut docs: Vec<PathBuf> = fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| p.strip_prefix(root()).unwrap().to_path_buf())
        .collect();
    docs.sort();
    assert!(!docs.is_empty(), "docs/ holds no .md file");
    files.extend(docs);
    files
}

/// The lines outside fenced code blocks.
fn prose(text: &str) -> Vec<&str> {
    let mut fenced = false;
    let mut out = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            out.push(line);
        }
    }
    out
}

/// The targets of the inline links `[text](target)` of a line, outside code spans.
fn link_targets(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_code = false;
    let bytes = line.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'`' => in_code = !in_code,
            b']' if !in_code && bytes.get(i + 1) == Some(&b'(') => {
                if let Some(end) = line[i + 2..].find(')') {
                    out.push(line[i + 2..i + 2 + end].trim().to_string());
                    i += 2 + end;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (a repeated heading gets `-1`, `-2`, ...).
fn anchors(text: &str) -> HashSet<String> {
    let mut seen = HashSet::new();
    for line in prose(text) {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if (1..=6).contains(&hashes) && line[hashes..].starts_with(' ') {
            let base = slug(&line[hashes..]);
            let mut anchor = base.clone();
            let mut n = 0;
            while seen.contains(&anchor) {
                n += 1;
                anchor = format!("{base}-{n}");
            }
            seen.insert(anchor);
        }
    }
    seen
}

/// `dir/../x` without touching the file system; None when it climbs out of the repository.
fn normalise(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::Normal(p) => out.push(p),
            _ => return None,
        }
    }
    Some(out)
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = fs::read_to_string(root().join(&doc)).unwrap();
        for (n, line) in prose(&text).into_iter().enumerate() {
            for target in link_targets(line) {
                if target.contains("://") || target.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let at = format!("{}: link ({target}) near prose line {}", doc.display(), n + 1);
                let (path, anchor) = match target.split_once('#') {
                    Some((p, a)) => (p, Some(a)),
                    None => (target.as_str(), None),
                };
                let file = if path.is_empty() {
                    Some(doc.clone())
                } else {
                    normalise(&doc.parent().unwrap().join(path))
                };
                let Some(file) = file else {
                    broken.push(format!("{at}: leaves the repository"));
                    continue;
                };
                let full = root().join(&file);
                if !full.exists() {
                    broken.push(format!("{at}: {} does not exist", file.display()));
                    continue;
                }
                if let Some(anchor) = anchor {
                    let ok = full.extension().is_some_and(|x| x == "md")
                        && anchors(&fs::read_to_string(&full).unwrap()).contains(anchor);
                    if !ok {
                        broken.push(format!("{at}: no heading #{anchor} in {}", file.display()));
                    }
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links found: is the parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn no_document_cites_files_outside_the_repository() {
    for doc in documents() {
        let text = fs::read_to_string(root().join(&doc)).unwrap();
        for bad in ["../shared/", "DESIGN.md"] {
            assert!(!text.contains(bad), "{} cites {bad}", doc.display());
        }
    }
}

#[test]
fn readme_is_short_and_keeps_the_literal_commands() {
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 200, "README.md has {lines} lines: move details into docs/");
    for needle in [
        "## Try it (one command, as root, on a fresh machine)",
        "```sh\ncargo build --release && sudo ./target/release/bridge-isolation demo\n```",
        "## Run the tests",
        "```sh\ncargo test\n```",
    ] {
        assert!(readme.contains(needle), "README.md lost {needle:?}");
    }
}

#[test]
fn slugs_follow_github() {
    assert_eq!(
        slug(" On each host, from the RPM (EL9, oVirt 4.5)"),
        "on-each-host-from-the-rpm-el9-ovirt-45"
    );
    assert_eq!(
        slug("Relation to oVirt's native port_isolation"),
        "relation-to-ovirts-native-port_isolation"
    );
    assert_eq!(slug("6.1 Modules"), "61-modules");
    let a = anchors("# A\n\n```\n# not a heading\n```\n## A\n");
    assert!(a.contains("a") && a.contains("a-1") && !a.contains("not-a-heading"));
}

#[test]
fn man_page_names_every_document_shipped_in_docs() {
    let page = String::from_utf8(bridge_isolation::app::manpage::man_page().unwrap()).unwrap();
    let see_also = &page[page.find(".SH SEE ALSO").expect("SEE ALSO")..];
    assert!(see_also.contains("/usr/share/doc/vdsm\\-hook\\-bridge\\-isolation/README.md"));
    assert!(see_also.contains("/usr/share/doc/vdsm\\-hook\\-bridge\\-isolation/docs/"));
    for doc in documents().iter().filter(|d| d.starts_with("docs")) {
        let name = doc.file_name().unwrap().to_str().unwrap().replace('-', "\\-");
        assert!(see_also.contains(&name), "the man page does not name {}", doc.display());
    }
}

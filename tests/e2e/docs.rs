//! The docs hold together: README.md stays an introduction (at most 300 lines), every relative
//! link in the project's Markdown reaches a file and a heading that exist, and the layout that
//! docs/how-it-works.md describes is the one src/lib.rs declares (and tests/e2e/layers.rs
//! enforces).

use super::layers::numbered_layers;
use crate::support::repo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The project's Markdown: README.md, docs/ and the other top-level notes.
fn markdown_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> =
        ["README.md", "SECURITY.md", "BENCHMARKS.md", "certs/README.md", "tests/node/README.md"]
            .iter()
            .map(|f| root.join(f))
            .collect();
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|x| x == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Text outside fenced code blocks and inline code: where links are links.
fn prose(text: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            // Inline code spans (`...`) are not links.
            let mut inline = false;
            for c in line.chars() {
                if c == '`' {
                    inline = !inline;
                } else if !inline {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// GitHub's anchor for a heading: lowercase; letters, digits, `-` and `_` kept, spaces become
/// `-`, everything else dropped; a repeated heading gets `-1`, `-2`, ...
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        let Some(heading) = line.strip_prefix('#').filter(|_| !fenced) else { continue };
        let heading = heading.trim_start_matches('#').trim();
        let slug: String = heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_default();
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// `[text](target)` links in `text`'s prose.
fn links(text: &str) -> Vec<String> {
    let prose = prose(text);
    let mut out = Vec::new();
    let mut rest = prose.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].trim().to_owned());
            rest = &rest[end..];
        }
    }
    out
}

/// Problems with `file`'s relative links: a missing file, or an anchor no heading makes.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap();
    let name = file.strip_prefix(root).unwrap().display().to_string();
    let mut problems = Vec::new();
    for link in links(&text) {
        if link.contains("://") || link.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = link.split_once('#').map_or((link.as_str(), None), |(p, a)| (p, Some(a)));
        let target = if path.is_empty() { file.to_path_buf() } else { file.parent().unwrap().join(path) };
        if !target.exists() {
            problems.push(format!("{name}: `{link}`: no such file"));
            continue;
        }
        if let Some(anchor) = anchor {
            let Ok(target_text) = std::fs::read_to_string(&target) else {
                problems.push(format!("{name}: `{link}`: an anchor into a folder"));
                continue;
            };
            if !anchors(&target_text).contains(anchor) {
                problems.push(format!("{name}: `{link}`: no heading makes `#{anchor}`"));
            }
        }
    }
    problems
}

#[test]
fn the_readme_is_short_and_every_link_resolves() {
    let root = repo();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let lines = readme.lines().count();
    assert!(lines <= 300, "README.md has {lines} lines: reference belongs in docs/");
    let files = markdown_files(&root);
    assert!(files.len() >= 8, "{files:?}");
    let problems: Vec<String> = files.iter().flat_map(|f| broken_links(&root, f)).collect();
    assert!(problems.is_empty(), "broken links:\n{}", problems.join("\n"));
    // Every docs page is reachable from the README.
    for f in files.iter().filter(|f| f.parent().is_some_and(|d| d.ends_with("docs"))) {
        let name = f.file_name().unwrap().to_str().unwrap();
        assert!(readme.contains(&format!("(docs/{name}")), "README.md does not link docs/{name}");
    }
}

#[test]
fn the_link_check_finds_a_missing_file_and_a_missing_heading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.md"), "# A title\n## The `x` key (y)\n```\n[no](link.md)\n```\n").unwrap();
    let b = dir.path().join("b.md");
    std::fs::write(&b, "[ok](a.md#the-x-key-y) [ok](a.md#a-title) [bad](a.md#nope) [gone](c.md) `[code](d.md)`\n")
        .unwrap();
    let problems = broken_links(dir.path(), &b);
    assert_eq!(problems, ["b.md: `a.md#nope`: no heading makes `#nope`", "b.md: `c.md`: no such file"]);
}

#[test]
fn the_docs_describe_the_layers_lib_rs_declares() {
    let root = repo();
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let declared = numbered_layers(lib.lines().filter_map(|l| l.strip_prefix("//! ")));
    let docs = std::fs::read_to_string(root.join("docs/how-it-works.md")).unwrap();
    let layout = docs.split("\n## Layout\n").nth(1).expect("docs/how-it-works.md has a Layout section");
    let layout = layout.split("\n## ").next().unwrap();
    let described = numbered_layers(layout.lines());
    assert!(declared.len() >= 5, "{declared:?}");
    assert_eq!(described, declared, "docs/how-it-works.md#layout and src/lib.rs list different layers");
    // Each file the section names exists (a rename must update the docs).
    let mut sources = BTreeSet::new();
    let mut stack: Vec<PathBuf> = ["src", "tests/e2e", "benches", "examples"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                sources.insert(path.strip_prefix(&root).unwrap().display().to_string());
            }
        }
    }
    let named: Vec<&str> = layout.split('`').skip(1).step_by(2).filter(|t| t.ends_with(".rs")).collect();
    assert!(named.len() > 10, "{named:?}");
    for file in named {
        assert!(
            sources.iter().any(|s| s == file || s.ends_with(&format!("/{file}"))),
            "docs/how-it-works.md#layout names `{file}`, which is not in the project"
        );
    }
}

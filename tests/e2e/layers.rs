//! The code's shape, held: folders are layers, listed once in `src/lib.rs` (its numbered
//! "Layout" list, lowest first), and no `use crate::...` (or `crate::`, `super::` path) in the
//! library points up a layer or closes a circle between two files. A module may use its own
//! layer and those below; files that only tests compile (`tests.rs`, `*_tests.rs`, inline
//! `#[cfg(test)]` modules) are left out, and so is the binary side (`main.rs`, `cli/`).

use crate::support::repo;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A library source file: its module path (`pipeline::write`; `` for lib.rs) and its text.
struct Source {
    module: Vec<String>,
    text: String,
}

/// The layers as lib.rs lists them: the modules of each numbered item, lowest first.
fn layers(lib: &str) -> Vec<Vec<String>> {
    numbered_layers(lib.lines().filter_map(|l| l.strip_prefix("//! ")))
}

/// The modules of each numbered item (`1. \`a\`, \`b\`: ...`) among `lines`: lib.rs's list, or
/// the same list in docs/how-it-works.md.
pub(crate) fn numbered_layers<'a>(lines: impl Iterator<Item = &'a str>) -> Vec<Vec<String>> {
    lines
        .filter_map(|l| {
            let (number, rest) = l.split_once(". ")?;
            number.parse::<usize>().ok()?;
            let names = rest.split_once(':').map_or(rest, |(n, _)| n);
            Some(names.split(',').map(|n| n.trim().trim_matches('`').to_owned()).collect())
        })
        .collect()
}

/// Text without comments, string literals' contents and inline test modules: what is compiled.
fn code(text: &str) -> String {
    let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
    text[..cut]
        .lines()
        .map(|l| {
            let mut out = String::new();
            let mut in_str = false;
            let mut chars = l.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' if in_str => {
                        chars.next();
                    }
                    '"' => in_str = !in_str,
                    '/' if !in_str && chars.peek() == Some(&'/') => break,
                    _ if in_str => {}
                    _ => out.push(c),
                }
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path a file names that starts with `crate::`, `super::` or `self::`, `use` trees
/// expanded (`use super::{a, b::c}` names `super::a` and `super::b::c`), and what a `use`
/// takes from a child module (`pub use route::classify` in `npm/mod.rs`), as `self::...`.
fn paths(code: &str, children: &BTreeSet<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for stmt in code.split(';') {
        let Some(at) = stmt.find("use ") else { continue };
        let before = &stmt[..at];
        if !(before.trim().is_empty() || before.trim_end().ends_with("pub") || before.trim_end().ends_with(')')) {
            continue;
        }
        let chars: Vec<char> = stmt[at + 4..].chars().collect();
        for p in use_tree(&chars, 0).0 {
            if p.first().is_some_and(|first| children.contains(first)) {
                out.push(std::iter::once("self".to_owned()).chain(p).collect());
            }
        }
    }
    // A child named in code (`write::forward(...)` in `pipeline/mod.rs`).
    for child in children {
        let needle = format!("{child}::");
        let mut from = 0;
        while let Some(at) = code[from..].find(&needle) {
            let i = from + at;
            let before = code[..i].chars().next_back();
            if !before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                out.push(vec!["self".to_owned(), child.clone()]);
            }
            from = i + needle.len();
        }
    }
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let starts = ["crate::", "super::", "self::"].iter().find(|p| {
            code_at(&bytes, i, p)
                && (i == 0 || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':'))
        });
        let Some(start) = starts else {
            i += 1;
            continue;
        };
        let root = start.trim_end_matches("::").to_owned();
        let (tree, end) = use_tree(&bytes, i + start.len());
        for mut p in tree {
            p.insert(0, root.clone());
            out.push(p);
        }
        i = end.max(i + 1);
    }
    out
}

fn code_at(chars: &[char], i: usize, s: &str) -> bool {
    s.chars().enumerate().all(|(k, c)| chars.get(i + k) == Some(&c))
}

/// A path tree from `i`: `a::b`, `{a, b::{c, d}}`, `a::*`; returns the paths and where it ends.
fn use_tree(chars: &[char], mut i: usize) -> (Vec<Vec<String>>, usize) {
    let mut prefix: Vec<String> = Vec::new();
    loop {
        while chars.get(i).is_some_and(|c| c.is_whitespace()) {
            i += 1;
        }
        if chars.get(i) == Some(&'{') {
            let mut all = Vec::new();
            i += 1;
            loop {
                while chars.get(i).is_some_and(|c| c.is_whitespace() || *c == ',') {
                    i += 1;
                }
                if chars.get(i).is_none_or(|c| *c == '}') {
                    return (all, i + 1);
                }
                let (inner, end) = use_tree(chars, i);
                for p in inner {
                    all.push(prefix.iter().cloned().chain(p).collect());
                }
                i = end;
            }
        }
        let start = i;
        while chars.get(i).is_some_and(|c| c.is_alphanumeric() || *c == '_' || *c == '*') {
            i += 1;
        }
        if i == start {
            return (vec![prefix], i);
        }
        prefix.push(chars[start..i].iter().collect());
        if code_at(chars, i, "::") {
            i += 2;
        } else {
            // `a as b` renames the last segment only.
            return (vec![prefix], i);
        }
    }
}

/// The file a path names: the longest prefix that is a module of `modules`.
fn resolve(
    from: &[String],
    from_mod_rs: bool,
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let mut abs: Vec<String> = match path.first()?.as_str() {
        "crate" => Vec::new(),
        // In `a/b.rs` (module a::b) `super` is `a`; in `a/mod.rs` (module a) it is the root.
        "super" => from[..from.len().saturating_sub(1)].to_vec(),
        "self" => from.to_vec(),
        _ => return None,
    };
    let _ = from_mod_rs;
    let mut best = abs.clone();
    for seg in &path[1..] {
        if seg == "*" || seg == "self" {
            break;
        }
        abs.push(seg.clone());
        if modules.contains(&abs) {
            best = abs.clone();
        }
    }
    Some(best)
}

/// What is wrong with a library's structure: imports up a layer, circles between files, and
/// top-level modules the layer list misses.
fn check(sources: &BTreeMap<String, Source>, layers: &[Vec<String>]) -> Vec<String> {
    let mut problems = Vec::new();
    let layer_of = |m: &str| layers.iter().position(|l| l.iter().any(|n| n == m));
    let modules: BTreeSet<Vec<String>> = sources.values().map(|s| s.module.clone()).collect();
    for top in modules.iter().filter(|m| m.len() == 1) {
        if layer_of(&top[0]).is_none() {
            problems.push(format!("module `{}` is in no layer of lib.rs's Layout", top[0]));
        }
    }
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    for (file, s) in sources {
        let mod_rs = file.ends_with("mod.rs") || file.ends_with("lib.rs");
        let children: BTreeSet<String> = modules
            .iter()
            .filter(|m| m.len() == s.module.len() + 1 && m.starts_with(&s.module) && mod_rs)
            .map(|m| m[m.len() - 1].clone())
            .collect();
        for p in paths(&code(&s.text), &children) {
            let Some(to) = resolve(&s.module, mod_rs, &p, &modules) else { continue };
            if to == s.module || to.is_empty() {
                continue;
            }
            edges.entry(s.module.clone()).or_default().insert(to.clone());
            let (Some(a), Some(b)) = (s.module.first(), to.first()) else { continue };
            if let (Some(la), Some(lb)) = (layer_of(a), layer_of(b)) {
                if lb > la {
                    problems.push(format!(
                        "{file}: `{}` points up from layer {} (`{a}`) to layer {} (`{b}`)",
                        p.join("::"),
                        la + 1,
                        lb + 1
                    ));
                }
            }
        }
    }
    for circle in circles(&edges) {
        let names: Vec<String> =
            circle.iter().map(|m| if m.is_empty() { "crate".into() } else { m.join("::") }).collect();
        problems.push(format!("an import circle: {}", names.join(" -> ")));
    }
    problems
}

/// The strongly connected components of more than one node (Tarjan).
fn circles(edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Vec<Vec<Vec<String>>> {
    struct T<'a> {
        edges: &'a BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        index: BTreeMap<Vec<String>, usize>,
        low: BTreeMap<Vec<String>, usize>,
        stack: Vec<Vec<String>>,
        on: BTreeSet<Vec<String>>,
        out: Vec<Vec<Vec<String>>>,
    }
    fn visit(t: &mut T<'_>, v: &Vec<String>) {
        let n = t.index.len();
        t.index.insert(v.clone(), n);
        t.low.insert(v.clone(), n);
        t.stack.push(v.clone());
        t.on.insert(v.clone());
        for w in t.edges.get(v).into_iter().flatten() {
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(&w);
                let done = w == *v;
                scc.push(w);
                if done {
                    break;
                }
            }
            if scc.len() > 1 {
                scc.sort();
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// The library's files: `src/` but the binary side and the files only tests compile.
fn library(src: &Path) -> BTreeMap<String, Source> {
    fn walk(dir: &Path, src: &Path, out: &mut BTreeMap<String, Source>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(src).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if rel != "cli" {
                    walk(&path, src, out);
                }
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let test_only = name == "tests.rs" || name.ends_with("_tests.rs");
            if !name.ends_with(".rs") || rel == "main.rs" || test_only {
                continue;
            }
            let mut module: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_owned).collect();
            if module.last().is_some_and(|m| m == "mod" || m == "lib") {
                module.pop();
            }
            out.insert(rel, Source { module, text: std::fs::read_to_string(&path).unwrap() });
        }
    }
    let mut out = BTreeMap::new();
    walk(src, src, &mut out);
    out
}

#[test]
fn every_import_points_down_and_no_files_import_each_other() {
    let src = repo().join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let layers = layers(&lib);
    assert!(layers.len() >= 5 && layers[0] == ["support"], "lib.rs lists no layers: {layers:?}");
    let sources = library(&src);
    assert!(sources.len() > 40, "the library was not read: {} files", sources.len());
    let problems = check(&sources, &layers);
    assert!(problems.is_empty(), "the layers do not hold:\n{}", problems.join("\n"));
    // Every module lib.rs declares is in the list, and every listed one exists.
    for listed in layers.iter().flatten() {
        assert!(sources.values().any(|s| s.module == [listed.clone()]), "lib.rs lists `{listed}`, which is no module");
    }
}

/// The check itself can fail: an import up a layer, and two files that import each other.
#[test]
fn the_check_finds_an_upward_import_and_a_circle() {
    let layers = vec![vec!["support".to_owned()], vec!["npm".to_owned()], vec!["server".to_owned()]];
    let file = |module: &[&str], text: &str| Source {
        module: module.iter().map(|s| s.to_string()).collect(),
        text: text.into(),
    };
    let mut sources = BTreeMap::new();
    sources.insert("support/mod.rs".into(), file(&["support"], "pub mod net;\n"));
    sources.insert(
        "support/net.rs".into(),
        file(&["support", "net"], "use crate::npm::name::PackageName; // a comment: crate::server\n"),
    );
    sources.insert("npm/mod.rs".into(), file(&["npm"], "mod name;\nmod route;\npub use route::classify;\n"));
    sources.insert(
        "npm/name.rs".into(),
        file(&["npm", "name"], "use super::route::{self, Route};\nlet s = \"crate::server\";\n"),
    );
    sources.insert("npm/route.rs".into(), file(&["npm", "route"], "use super::{name::PackageName};\n"));
    sources.insert(
        "server/mod.rs".into(),
        file(&["server"], "use crate::npm::classify;\n#[cfg(test)]\nmod tests {\n use crate::support::net;\n}\n"),
    );
    // A parent that names a child in code, and the child that uses the parent's item.
    sources.insert("server/conn.rs".into(), file(&["server", "conn"], "use super::Shared;\n"));
    let parent = "use crate::npm::classify;\nmod conn;\npub struct Shared;\nfn f() { conn::serve() }\n";
    sources.insert("server/mod.rs".into(), file(&["server"], parent));
    let problems = check(&sources, &layers);
    assert!(
        problems.iter().any(|p| p.starts_with("support/net.rs: `crate::npm::name::PackageName` points up")),
        "{problems:?}"
    );
    assert!(problems.iter().any(|p| p == "an import circle: npm::name -> npm::route"), "{problems:?}");
    assert!(problems.iter().any(|p| p == "an import circle: server -> server::conn"), "{problems:?}");
    assert_eq!(problems.len(), 3, "only the upward import and the circles: {problems:?}");
    let mut unlisted = sources;
    unlisted.insert("state/mod.rs".into(), file(&["state"], ""));
    assert!(check(&unlisted, &layers).iter().any(|p| p.contains("module `state` is in no layer")));
}

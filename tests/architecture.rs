//! The library's modules form no import circle.
//!
//! Read from the source as a newcomer would: every `crate::a::b` path and
//! `use crate::{...}` / `use super::...` item is an edge from the file's
//! module to the deepest module it names (a file under `src/`). A face
//! (`mod.rs`) declaring and re-exporting its children is structure, not an
//! edge: a path through a re-export is followed to the module that defines
//! the item. A child using its parent is an edge. A circle among the resulting
//! modules fails the test, printed as a path.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module path (`engine::redis`) -> its source text.
fn modules() -> BTreeMap<String, String> {
    fn walk(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, root, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).unwrap().with_extension("");
                let mut parts: Vec<String> = rel
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                if parts.last().is_some_and(|p| p == "mod") {
                    parts.pop();
                }
                if parts == ["lib"] {
                    continue;
                }
                out.insert(parts.join("::"), std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

/// The source without `//` comments (a `//` inside a string cuts the rest
/// of its line too, which can only drop an edge, never invent one).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect::<Vec<_>>()
        .join("\n")
}

fn path_at(s: &str) -> String {
    s.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect::<String>()
        .trim_end_matches(':')
        .to_string()
}

/// The items of a `{...}` group starting at `s` (just after the `{`),
/// each as the path it begins with.
fn group_items(s: &str) -> Vec<String> {
    let (mut depth, mut item, mut items) = (0, String::new(), Vec::new());
    for c in s.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => items.push(std::mem::take(&mut item)),
            _ if depth == 0 => item.push(c),
            _ => {}
        }
    }
    items.push(item);
    items.iter().map(|i| path_at(i.trim())).collect()
}

/// Every path the module names after `prefix` (`crate::` or `super::`).
fn named_paths(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            out.extend(group_items(group));
        } else {
            out.push(path_at(rest));
        }
    }
    out
}

/// What each module re-exports: (module, item) -> the path it stands for.
type Reexports = BTreeMap<(String, String), String>;

fn reexports(modules: &BTreeMap<String, String>) -> Reexports {
    let mut out = Reexports::new();
    for (name, text) in modules {
        let code = code(text);
        for line in code.split(';') {
            let line = line.trim();
            let Some(used) = ["pub use ", "pub(crate) use ", "pub(super) use "]
                .iter()
                .find_map(|p| line.strip_prefix(p))
            else {
                continue;
            };
            let used: String = used.split_whitespace().collect();
            let (base, items) = match used.split_once("::{") {
                Some((base, rest)) => (base.to_string(), group_items(rest)),
                None => match used.rsplit_once("::") {
                    Some((base, item)) => (base.to_string(), vec![path_at(item)]),
                    None => continue,
                },
            };
            let base = match base.strip_prefix("crate::") {
                Some(abs) => abs.to_string(),
                None => format!("{name}::{base}"),
            };
            for item in items {
                let last = item.rsplit("::").next().unwrap_or(&item).to_string();
                out.insert((name.clone(), last), format!("{base}::{item}"));
            }
        }
    }
    out
}

/// The deepest module that `path` (from the crate root) names, through
/// re-exports to the module that defines the item.
fn resolve(path: &str, modules: &BTreeMap<String, String>, re: &Reexports) -> Option<String> {
    let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).collect();
    let n = (1..=parts.len())
        .rev()
        .find(|&n| modules.contains_key(&parts[..n].join("::")))?;
    let module = parts[..n].join("::");
    match parts.get(n) {
        Some(item) => match re.get(&(module.clone(), item.to_string())) {
            Some(target) if target != path => resolve(target, modules, re).or(Some(module)),
            _ => Some(module),
        },
        None => Some(module),
    }
}

fn edges(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let re = reexports(modules);
    let mut edges = BTreeMap::new();
    for (name, text) in modules {
        let code = code(text);
        let parent = name.rsplit_once("::").map_or("", |(p, _)| p);
        let mut to = BTreeSet::new();
        for p in named_paths(&code, "crate::") {
            to.extend(resolve(&p, modules, &re));
        }
        for p in named_paths(&code, "super::") {
            let full = if parent.is_empty() {
                p
            } else {
                format!("{parent}::{p}")
            };
            // A bare `super::Item` names the parent itself.
            to.extend(resolve(&full, modules, &re).or_else(|| {
                (!parent.is_empty() && modules.contains_key(parent)).then(|| parent.to_string())
            }));
        }
        to.remove(name);
        edges.insert(name.clone(), to);
    }
    edges
}

/// A circle through the graph, if there is one.
fn find_circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        done: &mut BTreeSet<String>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = stack.iter().position(|n| n == node) {
            let mut circle = stack[at..].to_vec();
            circle.push(node.to_string());
            return Some(circle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, done, stack) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut done, &mut Vec::new()))
}

#[test]
fn no_import_circle_among_the_library_modules() {
    let modules = modules();
    let edges = edges(&modules);
    // The reader itself must see the crate: the engines use the store
    // settings and the validated limits, the loop of alerts the registry.
    for (from, to) in [
        ("engine::memory", "config::store"),
        ("engine::memory", "quota"),
        ("alert::run", "registry"),
        ("config", "alert::config"),
    ] {
        assert!(
            edges.get(from).is_some_and(|e| e.contains(to)),
            "the reader lost the edge {from} -> {to}: {:?}",
            edges.get(from)
        );
    }
    if let Some(circle) = find_circle(&edges) {
        panic!(
            "import circle: {} (move the shared item to a module both can use)",
            circle.join(" -> ")
        );
    }
}

#[test]
fn the_reader_finds_a_planted_circle() {
    let mut modules = BTreeMap::new();
    modules.insert("a".to_string(), "use crate::b::Thing;".to_string());
    modules.insert(
        "b".to_string(),
        "use crate::{c::{self, X}, d};\n// crate::a is only a comment".to_string(),
    );
    modules.insert("c".to_string(), "fn f() { crate::a::g() }".to_string());
    modules.insert("d".to_string(), "pub use e::Y;".to_string());
    modules.insert("d::e".to_string(), "fn h() { crate::b::k() }".to_string());
    let edges = edges(&modules);
    assert_eq!(
        edges["b"],
        BTreeSet::from(["c".to_string(), "d".to_string()])
    );
    let circle = find_circle(&edges).expect("a -> b -> c -> a");
    assert_eq!(circle.first(), circle.last());
    assert_eq!(circle.len(), 4);
    // Through a face's re-export: `crate::d::Y` is `d::e`'s, which uses `b`.
    modules.insert("c".to_string(), "use crate::d::Y;".to_string());
    modules.insert("a".to_string(), String::new());
    let edges = self::edges(&modules);
    assert!(edges["c"].contains("d::e"), "{:?}", edges["c"]);
    let circle = find_circle(&edges).expect("b -> c -> d::e -> b");
    assert!(circle.contains(&"d::e".to_string()), "{circle:?}");
}

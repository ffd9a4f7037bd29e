//! Imports run one way (issue #20, "structure"): no module of the crate names, through any
//! chain of `crate::` paths, a module that names it back. The order is written at the top of
//! src/types.rs; this test reads the sources and fails on the first import that closes a
//! cycle, printing it, so that a shared type goes down to `types.rs` (or a model module)
//! rather than a lower module reaching up for it.
//!
//! A module is a top-level file of src/ or a top-level directory (`dispatch/`, `sys/`,
//! `transport/`, `tools/`, each taken whole); unit tests (`#[cfg(test)] mod tests`, at the
//! end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

fn sources(path: &Path, out: &mut String) {
    if path.is_dir() {
        let mut entries: Vec<_> = std::fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            sources(&p, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        let text = std::fs::read_to_string(path).unwrap();
        // Unit tests sit at the end of a file, after `#[cfg(test)]` + `mod tests`.
        let cut = text.find("#[cfg(test)]\nmod tests").unwrap_or(text.len());
        out.push_str(&text[..cut]);
        out.push('\n');
    }
}

/// module → the modules it names (`crate::NAME`).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut modules = BTreeMap::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.is_dir() || p.extension().is_some_and(|e| e == "rs") {
            let mut text = String::new();
            sources(&p, &mut text);
            modules.insert(name, text);
        }
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut g = BTreeMap::new();
    for (m, text) in &modules {
        let mut deps = BTreeSet::new();
        for (i, _) in text.match_indices("crate::") {
            let rest = &text[i + "crate::".len()..];
            let word: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if names.contains(&word) && &word != m {
                deps.insert(word);
            }
        }
        g.insert(m.clone(), deps);
    }
    g
}

/// A cycle, as the modules along it, if the graph has one.
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        m: &str,
        marks: &mut BTreeMap<String, Mark>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        marks.insert(m.to_string(), Mark::Open);
        path.push(m.to_string());
        for d in &g[m] {
            match marks.get(d.as_str()) {
                Some(Mark::Open) => {
                    let start = path.iter().position(|p| p == d).unwrap();
                    let mut cycle = path[start..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Some(Mark::Done) => {}
                None => {
                    if let Some(c) = visit(g, d, marks, path) {
                        return Some(c);
                    }
                }
            }
        }
        path.pop();
        marks.insert(m.to_string(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for m in g.keys() {
        if !marks.contains_key(m.as_str()) {
            if let Some(c) = visit(g, m, &mut marks, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn imports_run_one_way() {
    let g = graph();
    assert!(g.len() > 20, "found only {} modules under src/", g.len());
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "an import cycle: {} (move the shared item down, see src/types.rs)",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_checker_finds_a_cycle() {
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in [("a", &["b"][..]), ("b", &["c"]), ("c", &["a"]), ("d", &[])] {
        g.insert(m.into(), deps.iter().map(|s| s.to_string()).collect());
    }
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "c".into(), "a".into()])
    );
    g.get_mut("c").unwrap().clear();
    assert_eq!(find_cycle(&g), None);
}

//! The layering rules, checked on the source tree so that a change that breaks one fails
//! the build's tests rather than a review:
//! - `kms` (the domain) names no axum, cryptoki, rusqlite or `hsm` type; it reaches the
//!   HSMs through its own `KeyVault` port;
//! - `api` names no cryptoki and no `hsm` type;
//! - `client` (the user's side of the wire) names nothing of the service but `auth`'s
//!   signer and `fsutil`;
//! - no PKCS#11 return value is matched outside `src/hsm/error.rs`;
//! - the modules of `src/hsm` import each other without cycles;
//! - every module starts with a `//!` doc comment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The source without comments and test modules (a `#[cfg(test)]` item to the end of the
/// file, as this crate writes them).
fn code_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn assert_names_none(dir: &str, forbidden: &[&str]) {
    let mut found = Vec::new();
    for f in rust_files(&src().join(dir)) {
        let code = code_of(&f);
        for word in forbidden {
            if code.contains(word) {
                found.push(format!("{} names {word}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_domain_names_no_transport_token_or_sql_type() {
    assert_names_none(
        "kms",
        &[
            "axum::",
            "cryptoki",
            "rusqlite",
            "crate::hsm",
            "hsm::",
            "HsmCluster",
            "HsmError",
        ],
    );
}

#[test]
fn the_api_names_no_hsm_type() {
    assert_names_none("api", &["cryptoki", "crate::hsm", "HsmCluster", "rusqlite"]);
}

#[test]
fn the_client_knows_only_the_wire() {
    assert_names_none(
        "client",
        &[
            "crate::kms",
            "crate::hsm",
            "crate::store",
            "crate::api",
            "crate::audit",
            "crate::app",
            "cryptoki",
            "rusqlite",
            "axum",
        ],
    );
}

#[test]
fn pkcs11_return_values_are_matched_only_in_hsm_error() {
    let mut found = Vec::new();
    for f in rust_files(&src()) {
        if f.ends_with("hsm/error.rs") {
            continue;
        }
        let code = code_of(&f);
        for pat in ["RvError::", "rv: 0x", "rv == 0x"] {
            if code.contains(pat) {
                found.push(format!("{} contains {pat}", f.display()));
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn hsm_modules_import_each_other_without_cycles() {
    let dir = src().join("hsm");
    let modules: BTreeSet<String> = rust_files(&dir)
        .iter()
        .filter_map(|p| p.strip_prefix(&dir).ok())
        .map(|p| {
            p.with_extension("")
                .to_string_lossy()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .filter(|m| m != "mod")
        .collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in rust_files(&dir) {
        let rel = f.strip_prefix(&dir).unwrap().with_extension("");
        let me = rel.to_string_lossy().split('/').next().unwrap().to_string();
        if me == "mod" {
            continue;
        }
        let code = code_of(&f);
        for other in &modules {
            if other == &me {
                continue;
            }
            let uses = [
                format!("super::{other}::"),
                format!("super::{other};"),
                format!("super::{other},"),
                format!("super::{{{other}"),
                format!("crate::hsm::{other}::"),
                format!(" {other}::"),
            ];
            // `super::{a, b}` lists: look inside the braces too.
            let in_list = code.split("super::{").skip(1).any(|rest| {
                rest.split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .any(|item| item.trim().split("::").next() == Some(other.as_str()))
            });
            if in_list || uses.iter().any(|u| code.contains(u.as_str())) {
                edges.entry(me.clone()).or_default().insert(other.clone());
            }
        }
    }
    // Depth-first search for a cycle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == m) {
            let mut cycle = path[i..].to_vec();
            cycle.push(m.to_string());
            return Some(cycle);
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_string());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for m in &modules {
        if let Some(cycle) = visit(m, &edges, &mut Vec::new(), &mut done) {
            panic!(
                "import cycle in src/hsm: {}\nedges: {edges:#?}",
                cycle.join(" → ")
            );
        }
    }
}

#[test]
fn every_module_starts_with_a_doc_comment() {
    let missing: Vec<String> = rust_files(&src())
        .into_iter()
        .filter(|f| {
            !std::fs::read_to_string(f)
                .unwrap()
                .trim_start()
                .starts_with("//!")
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(missing.is_empty(), "no //! doc: {missing:?}");
}

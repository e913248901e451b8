//! Project rules checked over the whole source tree: every `unsafe` block or impl carries a
//! `SAFETY:` comment just above it (or on the same line).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

const BLOCK: &str = concat!("unsafe", " {");
const IMPL: &str = concat!("unsafe", " impl");

/// Whether `pat` occurs in `code` as a keyword (not the end of a longer identifier).
fn keyword(code: &str, pat: &str) -> bool {
    code.match_indices(pat)
        .any(|(at, _)| at == 0 || !code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

#[test]
fn every_unsafe_block_has_a_safety_comment() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&repo, &mut files);
    assert!(files.len() > 20, "source tree not found");
    let mut missing = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let is_unsafe = keyword(code, BLOCK) || keyword(code, IMPL);
            if !is_unsafe {
                continue;
            }
            let window = &lines[i.saturating_sub(6)..=i];
            if !window.iter().any(|l| l.contains("SAFETY")) {
                missing.push(format!(
                    "{}:{}",
                    f.strip_prefix(&repo).unwrap_or(f).display(),
                    i + 1
                ));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "unsafe without a SAFETY comment at:\n{}",
        missing.join("\n")
    );
}

/// A module of `host-service/src` and the modules its code names (`crate::…`, `super::…`).
struct ModuleRefs {
    path: Vec<String>,
    refs: Vec<Vec<String>>,
}

/// The module path of a source file (`pool/commit.rs` → `pool::commit`, `pool/mod.rs` → `pool`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The identifier at the start of `s` (letters, digits, `_`).
fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// Paths named after `prefix` in `code`: `prefix a::b` and the first level of `prefix {a, b::c}`.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        if code[..at].ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[at + prefix.len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = &group[..group.find('}').unwrap_or(group.len())];
            for item in group.split(',') {
                let segs: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| ident(s.trim()).to_string())
                    .take_while(|s| !s.is_empty())
                    .collect();
                out.push(segs);
            }
        } else {
            let mut segs = Vec::new();
            let mut r = rest;
            loop {
                let id = ident(r);
                if id.is_empty() {
                    break;
                }
                segs.push(id.to_string());
                match r[id.len()..].strip_prefix("::") {
                    Some(next) => r = next,
                    None => break,
                }
            }
            out.push(segs);
        }
    }
    out
}

/// Every module of `host-service/src` (the library) with the module paths its code names.
fn host_modules() -> Vec<ModuleRefs> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files
        .iter()
        .filter(|f| !f.ends_with("main.rs"))
        .map(|f| {
            let path = module_path(&src, f);
            let text = std::fs::read_to_string(f).unwrap();
            let code: String = text
                .lines()
                .map(|l| l.split("//").next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("\n");
            let mut refs = paths_after(&code, "crate::");
            for rel in paths_after(&code, "super::") {
                let mut abs = path.clone();
                let file_is_mod = f.ends_with("mod.rs");
                if !file_is_mod {
                    abs.pop();
                }
                abs.pop();
                abs.extend(rel);
                refs.push(abs);
            }
            ModuleRefs { path, refs }
        })
        .collect()
}

/// The longest prefix of `target` that is a module in `known`.
fn resolve(target: &[String], known: &[Vec<String>]) -> Vec<String> {
    (0..=target.len())
        .rev()
        .map(|n| target[..n].to_vec())
        .find(|p| known.contains(p))
        .unwrap_or_default()
}

type Graph = std::collections::BTreeMap<String, std::collections::BTreeSet<String>>;

/// The modules `from` reaches in `edges`.
fn reachable(from: &str, edges: &Graph) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(n) = todo.pop() {
        for next in edges.get(&n).into_iter().flatten() {
            if seen.insert(next.clone()) {
                todo.push(next.clone());
            }
        }
    }
    seen
}

/// The groups of modules that name each other round a loop (strongly connected, size > 1).
fn tangles(edges: &Graph) -> Vec<Vec<String>> {
    let reach: std::collections::BTreeMap<&String, _> =
        edges.keys().map(|n| (n, reachable(n, edges))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for (n, from_n) in &reach {
        let group: Vec<String> = reach
            .iter()
            .filter(|(m, from_m)| from_n.contains(**m) && from_m.contains(*n))
            .map(|(m, _)| (*m).clone())
            .collect();
        if group.len() > 1 && !groups.contains(&group) {
            groups.push(group);
        }
    }
    groups
}

/// No two sibling modules of the host service name each other, directly or round a loop: a
/// reader following a page from the guest to PM never goes back. (A child naming its parent, or
/// a parent its child, is how Rust modules nest and is not an import loop.)
#[test]
fn host_service_modules_have_no_import_cycle() {
    use std::collections::BTreeMap;
    let modules = host_modules();
    assert!(modules.len() > 10, "host-service sources not found");
    let known: Vec<Vec<String>> = modules.iter().map(|m| m.path.clone()).collect();
    // Sibling edges, grouped by parent module.
    let mut graphs: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    for m in &modules {
        for r in &m.refs {
            let to = resolve(r, &known);
            let common = m.path.iter().zip(&to).take_while(|(a, b)| a == b).count();
            if common == m.path.len() || common == to.len() {
                continue; // the same module, an ancestor or a descendant
            }
            let parent = m.path[..common].to_vec();
            graphs
                .entry(parent)
                .or_default()
                .entry(m.path[common].clone())
                .or_default()
                .insert(to[common].clone());
        }
    }
    let cycles: Vec<String> = graphs
        .iter()
        .flat_map(|(parent, edges)| {
            tangles(edges)
                .into_iter()
                .map(move |group| format!("in crate::{}: {}", parent.join("::"), group.join(" ↔ ")))
        })
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles between host-service modules:\n{}",
        cycles.join("\n")
    );
}

/// A file over 600 lines says at its top why it is long (`//! Long file: …` in its first 30
/// lines); every other concern gets its own module.
#[test]
fn long_files_say_why() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&repo, &mut files);
    let unexplained: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).unwrap();
            let lines = text.lines().count();
            let explained = text.lines().take(30).any(|l| l.contains("Long file:"));
            (lines > 600 && !explained).then(|| {
                format!(
                    "{} ({lines} lines)",
                    f.strip_prefix(&repo).unwrap_or(f).display()
                )
            })
        })
        .collect();
    assert!(
        unexplained.is_empty(),
        "files over 600 lines without a `Long file:` reason at the top:\n{}",
        unexplained.join("\n")
    );
}

/// `docs/architecture.md` names only files and folders that exist: every relative `path` in
/// backticks that contains a `/` or ends in `.rs` is checked against the tree (absolute paths
/// such as `/dev/vpm` are guest or host paths at run time).
#[test]
fn architecture_doc_names_real_modules() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let doc = std::fs::read_to_string(repo.join("docs/architecture.md"))
        .expect("docs/architecture.md is missing");
    let named: Vec<&str> = doc
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| !s.contains(' ') && !s.starts_with('/'))
        .filter(|s| s.contains('/') || s.ends_with(".rs"))
        .collect();
    assert!(
        named.len() > 10,
        "docs/architecture.md names too few modules"
    );
    let missing: Vec<&&str> = named
        .iter()
        .filter(|p| !repo.join(p.trim_end_matches('/')).exists())
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md names paths that do not exist: {missing:?}"
    );
}

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

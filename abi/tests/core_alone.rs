//! Proves the protocol core builds the way the guest kernel module and the no_std test guest use
//! it: for `x86_64-unknown-none`, with plain `rustc` and no external crate, both as the crate root
//! and included by `#[path]` into another crate (what `guest-driver/` does).

use std::path::{Path, PathBuf};
use std::process::Command;

fn rustc() -> String {
    std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into())
}

fn compile(root: &Path, out_dir: &Path, name: &str) {
    let out = Command::new(rustc())
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "--target",
            "x86_64-unknown-none",
        ])
        .args(["-D", "warnings", "--crate-name", name, "--out-dir"])
        .arg(out_dir)
        .arg(root)
        .output()
        .expect("run rustc");
    assert!(
        out.status.success(),
        "building {} for x86_64-unknown-none failed (is the target installed? \
         tests/setup/install-deps.sh adds it):\n{}",
        root.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn crate_root_builds_for_bare_metal_without_external_crates() {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs");
    compile(&lib, &scratch("core-alone"), "vpm_abi_core");
}

#[test]
fn proto_builds_when_included_by_path_like_the_kernel_module() {
    let dir = scratch("path-include");
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proto/mod.rs");
    let shim = dir.join("shim.rs");
    std::fs::write(
        &shim,
        format!(
            "#![no_std]\n#[allow(dead_code)]\n#[path = {:?}]\nmod abi;\n\
             pub fn probe() -> u16 {{ abi::doorbell::DOORBELL_PORT }}\n",
            proto.display().to_string()
        ),
    )
    .unwrap();
    compile(&shim, &dir, "vpm_abi_path_include");
}

//! Builds the VPM test guest (`tests/guest`, a no_std program for `x86_64-unknown-none`) with a
//! nested cargo in its own target directory, so `vpm` can embed it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    if std::env::var_os("CARGO_FEATURE_VMM").is_none() {
        return;
    }
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let guest = manifest_dir.join("../tests/guest");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("out dir"));
    let target_dir = out.join("guest-target");
    println!("cargo:rerun-if-changed={}", guest.join("src").display());
    println!(
        "cargo:rerun-if-changed={}",
        guest.join("Cargo.toml").display()
    );
    println!("cargo:rerun-if-changed={}", guest.join("link.ld").display());
    println!(
        "cargo:rerun-if-changed={}",
        manifest_dir.join("../abi/src").display()
    );

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let link_script = guest.join("link.ld");
    let rustflags = [
        format!("-Clink-arg=-T{}", link_script.display()),
        "-Crelocation-model=static".into(),
    ]
    .join("\x1f");
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--release",
        "--target",
        "x86_64-unknown-none",
        "--manifest-path",
    ])
    .arg(guest.join("Cargo.toml"))
    .arg("--target-dir")
    .arg(&target_dir)
    .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    for var in [
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("run cargo for the test guest");
    if !status.success() {
        panic!(
            "building the test guest failed; is the x86_64-unknown-none target installed? \
             (tests/setup/install-deps.sh adds it)"
        );
    }
    let elf = target_dir.join("x86_64-unknown-none/release/vpm-test-guest");
    std::fs::copy(&elf, out.join("vpm-test-guest")).expect("copy the test guest");
}

//! Shared helpers of the tests that run `vpm guest` on real KVM: a state directory under
//! /dev/shm (KVM is required, its absence fails the test) and running `vpm` for its JSON result
//! line. Each test binary uses only some of these.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

/// A state directory under /dev/shm, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    /// `/dev/shm/vpm-test-{name}-{pid}`, emptied; fails the test when /dev/kvm is missing.
    pub fn new(name: &str) -> Dir {
        assert!(
            std::path::Path::new("/dev/kvm").exists(),
            "these tests need /dev/kvm (KVM)"
        );
        let d = PathBuf::from(format!("/dev/shm/vpm-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        Dir(d)
    }

    /// The path as a string, for `--state`.
    pub fn s(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `vpm` with `args`: whether it succeeded, its stdout and its stderr.
pub fn vpm(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vpm"))
        .args(args)
        .output()
        .expect("run vpm");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `vpm` with `args` (a `guest` command), which must succeed, and returns its JSON result
/// line.
pub fn json_run(args: &[&str]) -> Value {
    let (ok, out, err) = vpm(args);
    assert!(ok, "vpm {args:?} failed: {err}{out}");
    serde_json::from_str(out.lines().last().unwrap_or("")).expect("JSON result line")
}

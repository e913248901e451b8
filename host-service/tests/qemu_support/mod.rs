//! Shared helpers of the tests that boot the Linux guest under QEMU: building the guest
//! (vpm.ko, the test programs, the initramfs images) and a state directory under /dev/shm; for
//! the vpm.ko tests, `vpm qemu` command lines. Each test binary uses only some of these.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The repository's root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs guest-driver/build-guest.sh with its output in `out`; returns the paths it printed
/// (`KERNEL_BZIMAGE`, `INITRAMFS`, …). A missing kernel or toolchain fails the test.
pub fn build_guest(out: PathBuf) -> HashMap<String, String> {
    let run = Command::new("bash")
        .arg(repo().join("guest-driver/build-guest.sh"))
        .env("VPM_GUEST_OUT", out)
        .output()
        .expect("run guest-driver/build-guest.sh");
    assert!(
        run.status.success(),
        "building the guest failed (run tests/setup/install-deps.sh and \
         guest-driver/kernel/build-kernel.sh first):\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The guest built once per test binary in target/guest-test.
pub fn guest() -> &'static HashMap<String, String> {
    static G: OnceLock<HashMap<String, String>> = OnceLock::new();
    G.get_or_init(|| build_guest(repo().join("target/guest-test")))
}

/// A state directory `/dev/shm/vpm-{prefix}-{name}-{pid}`, emptied, removed on drop.
pub struct State(pub PathBuf);

impl State {
    /// The vpm.ko tests' directory (prefix `qemu`).
    pub fn new(name: &str) -> State {
        State::with_prefix("qemu", name)
    }

    /// A directory with a prefix of the test file's own.
    pub fn with_prefix(prefix: &str, name: &str) -> State {
        let d = PathBuf::from(format!(
            "/dev/shm/vpm-{prefix}-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        State(d)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vpm qemu` booting [`guest`]'s kernel and its main initramfs with `--vpmtest vpmtest`.
pub fn qemu_cmd(state: &State, vpmtest: &str, extra: &[&str]) -> Command {
    qemu_cmd_with(state, "INITRAMFS", vpmtest, extra)
}

/// [`qemu_cmd`] with the initramfs named `initrd` in [`guest`]'s paths.
pub fn qemu_cmd_with(state: &State, initrd: &str, vpmtest: &str, extra: &[&str]) -> Command {
    let g = guest();
    let mut c = Command::new(env!("CARGO_BIN_EXE_vpm"));
    c.args([
        "qemu",
        "--state",
        state.0.to_str().unwrap(),
        "--pool-mib",
        "128",
        "--vm",
        "linux",
    ])
    .args([
        "--kernel",
        &g["KERNEL_BZIMAGE"],
        "--initrd",
        &g[initrd],
        "--vpmtest",
        vpmtest,
    ])
    .args(["--timeout", "90"])
    .args(extra);
    c
}

/// Runs [`qemu_cmd`], which must succeed; returns its stdout (the console and the result).
pub fn run(state: &State, vpmtest: &str, extra: &[&str]) -> String {
    let out = qemu_cmd(state, vpmtest, extra)
        .output()
        .expect("run vpm qemu");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vpm qemu failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// The last `VPM-STATS` line of a console as a map (the driver's counters and the host's).
pub fn guest_stats(console: &str) -> HashMap<String, u64> {
    let line = console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("VPM-STATS "))
        .unwrap_or_else(|| panic!("no VPM-STATS line:\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .chunks(2)
        .filter_map(|kv| Some((kv[0].to_string(), kv.get(1)?.parse().ok()?)))
        .collect()
}

//! The `vpm` command line refuses bad input with a clear message and a non-zero exit, before
//! touching anything: one test per class of bad input. None of these needs KVM.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `exe` with `args`; returns (exit code, stdout + stderr).
fn run_exe(exe: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(exe)
        .args(args)
        .env_remove("VPM_STATE")
        .output()
        .expect("run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

fn vpm(args: &[&str]) -> (Option<i32>, String) {
    run_exe(Path::new(env!("CARGO_BIN_EXE_vpm")), args)
}

/// Asserts that `vpm args` fails with a message containing every one of `needles`.
fn refused(args: &[&str], needles: &[&str]) {
    let (code, text) = vpm(args);
    assert!(
        code.is_some_and(|c| c != 0),
        "vpm {args:?} was accepted: {text}"
    );
    for n in needles {
        assert!(text.contains(n), "vpm {args:?}: no {n:?} in: {text}");
    }
}

/// `vpm-bench`, when it was built beside `vpm` (it belongs to another package).
fn vpm_bench() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_vpm")).with_file_name("vpm-bench");
    p.exists().then_some(p)
}

#[test]
fn negative_nan_and_infinite_seconds_are_refused() {
    for (v, why) in [
        ("-1", "must not be negative"),
        ("nan", "finite"),
        ("inf", "finite"),
        ("-inf", "finite"),
        ("soon", "not a number"),
    ] {
        refused(&["guest", "--seconds", v], &["--seconds", why]);
        refused(
            &["qemu", "--kernel", "k", "--initrd", "i", "--timeout", v],
            &["--timeout", why],
        );
    }
}

#[test]
fn huge_sizes_are_refused() {
    for opt in ["--vpm-mib", "--pool-mib", "--dram-mib", "--pm-quota-mib"] {
        refused(&["guest", opt, "1048577"], &[opt, "1048576"]);
        refused(&["guest", opt, "18446744073709551615"], &[opt]);
        refused(&["guest", opt, "-1"], &[opt]);
    }
    refused(&["guest", "--vpm-mib", "0"], &["--vpm-mib", "1..=1048576"]);
    refused(&["guest", "--epoch-ms", "99999999999"], &["--epoch-ms"]);
    for v in ["0", "9", "-1", "two"] {
        refused(
            &["qemu", "--kernel", "k", "--initrd", "i", "--smp", v],
            &["--smp"],
        );
    }
    refused(
        &["qemu", "--kernel", "k", "--initrd", "i", "--smp", "9"],
        &["1..=8"],
    );
    refused(
        &["guest", "--args", "1,2,3,4,5,6,7"],
        &["--args", "at most 6"],
    );
    refused(
        &["guest", "--args", "1,-2"],
        &["--args", "not an unsigned number"],
    );
}

#[test]
fn vm_names_that_are_not_plain_file_names_are_refused() {
    refused(
        &["guest", "--vm", "../escape"],
        &["--vm", "must not start with '.'"],
    );
    refused(&["guest", "--vm", ""], &["--vm", "1 to 32 bytes"]);
    refused(
        &["guest", "--vm", &"x".repeat(33)],
        &["--vm", "1 to 32 bytes"],
    );
}

#[test]
fn bad_enum_values_are_refused() {
    refused(&["guest", "--hints", "X"], &["--hints", "on, off"]);
    refused(
        &["guest", "--mode", "fast"],
        &["--mode", "full, pv, direct, msync"],
    );
    refused(
        &["guest", "--workload", "nope"],
        &["--workload", "seq-writer"],
    );
    refused(
        &["guest", "--doorbell", "bell"],
        &["--doorbell", "ioeventfd"],
    );
    refused(&["soak", "--kind", "all"], &["--kind", "transient"]);
    refused(
        &["qemu", "--kernel", "k", "--initrd", "i", "--mode", "direct"],
        &["--mode pv", "--mode full"],
    );
}

#[test]
fn unknown_flags_and_commands_are_refused() {
    refused(&["guest", "--bogus"], &["--bogus"]);
    refused(&["run", "--fresh-please"], &["--fresh-please"]);
    refused(&["pool-info", "--vm", "x"], &["--vm"]);
    refused(&["frobnicate"], &["frobnicate"]);
    refused(&["qemu", "--initrd", "i"], &["--kernel"]);
    if let Some(bench) = vpm_bench() {
        for args in [&["suite", "--bogus"][..], &["fast"], &["pm-core", "--out"]] {
            let (code, text) = run_exe(&bench, args);
            assert!(code.is_some_and(|c| c != 0), "vpm-bench {args:?}: {text}");
        }
    }
}

#[test]
fn pool_info_on_a_missing_pool_fails_and_creates_nothing() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-state");
    refused(
        &["pool-info", "--state", missing.to_str().unwrap()],
        &["does not exist"],
    );
    assert!(!missing.exists(), "pool-info created the directory");
    // An existing directory without a pool: an error, and still empty afterwards.
    refused(
        &["pool-info", "--state", t.path().to_str().unwrap()],
        &["no pool at"],
    );
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}

#[test]
fn a_directory_without_the_marker_is_neither_used_nor_deleted() {
    let t = tempfile::tempdir().unwrap();
    let precious = t.path().join("precious.txt");
    std::fs::write(&precious, b"not VPM's").unwrap();
    let dir = t.path().to_str().unwrap();
    let why = "is not a VPM state directory";
    refused(&["guest", "--state", dir, "--fresh"], &[why, "nothing was"]);
    refused(&["run", "--state", dir], &[why]);
    refused(&["soak", "--dir", dir, "--trials", "1"], &[why]);
    refused(
        &["qemu", "--kernel", "k", "--initrd", "i", "--state", dir],
        &[why],
    );
    assert_eq!(std::fs::read(&precious).unwrap(), b"not VPM's");
    let names: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["precious.txt"], "nothing was added either");
}

#[test]
fn a_zero_length_pool_is_refused_and_its_capacity_file_kept() {
    let t = tempfile::tempdir().unwrap();
    // What a crash can leave: an empty pool file beside a capacity file holding homes.
    std::fs::write(t.path().join("pool"), b"").unwrap();
    let cap = t.path().join("pool.cap");
    std::fs::write(&cap, vec![0x5a; 8192]).unwrap();
    let dir = t.path().to_str().unwrap();
    let (code, text) = vpm(&["guest", "--state", dir, "--seconds", "1"]);
    assert!(
        code.is_some_and(|c| c != 0),
        "an empty pool was used: {text}"
    );
    assert!(text.contains("pool"), "no word of the pool in: {text}");
    assert_eq!(
        std::fs::read(&cap).unwrap(),
        vec![0x5a; 8192],
        "the capacity file was deleted or changed"
    );
    assert_eq!(std::fs::metadata(t.path().join("pool")).unwrap().len(), 0);
}

#[test]
fn help_lists_every_command() {
    let (code, text) = vpm(&["help"]);
    assert_eq!(code, Some(0), "{text}");
    for c in ["run", "guest", "pool-info", "qemu", "soak"] {
        assert!(text.contains(c), "no {c} in help: {text}");
    }
}

/// Processes whose command line mentions `needle` (other than this test).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// A soak stopped from outside (SIGTERM) takes its running writer with it: an orphaned writer
/// would run forever and hold the state directory's lock.
#[test]
fn a_stopped_soak_leaves_no_writer_behind() {
    let dir = std::env::temp_dir().join(format!("vpm-cli-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_arg = dir.to_str().unwrap().to_string();
    let mut soak = std::process::Command::new(env!("CARGO_BIN_EXE_vpm"))
        .args(["soak", "--trials", "50", "--kind", "pv", "--dir", &dir_arg])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // Wait until a writer (a `vpm guest` on the soak's directory) runs.
    while !processes_mentioning(&dir_arg)
        .iter()
        .any(|&p| p != soak.id())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the soak started no writer"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(soak.id() as i32, libc::SIGTERM) };
    let _ = soak.wait();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let left = processes_mentioning(&dir_arg);
    for &p in &left {
        // SAFETY: cleaning up what the failed check found.
        unsafe { libc::kill(p as i32, libc::SIGKILL) };
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        left.is_empty(),
        "processes left running on {dir_arg}: {left:?}"
    );
}

//! `/dev/vpmblk0`, the vPM block device of vpm.ko, in a Linux 7.3 guest under QEMU (TCG) served
//! by `vpm qemu`: raw writes with fsync, ext4 (mkfs, mount, fsync, read back, fsck) and Debian's
//! fio with `--verify`; every flush persists what was written since the last one and nothing
//! else, checked against the host's count of persisted bytes. Needs the cached guest kernel, QEMU
//! and the toolchain that tests/setup/install-deps.sh installs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds vpm.ko, the test programs and both initramfs images once; returns their paths.
fn guest() -> &'static HashMap<String, String> {
    static G: OnceLock<HashMap<String, String>> = OnceLock::new();
    G.get_or_init(|| {
        let out = Command::new("bash")
            .arg(repo().join("guest-driver/build-guest.sh"))
            .env("VPM_GUEST_OUT", repo().join("target/guest-test"))
            .output()
            .expect("run guest-driver/build-guest.sh");
        assert!(
            out.status.success(),
            "building the guest failed (run tests/setup/install-deps.sh and \
             guest-driver/kernel/build-kernel.sh first):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

/// A state directory in /dev/shm, removed on drop.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> State {
        let d = PathBuf::from(format!("/dev/shm/vpm-blk-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        State(d)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What one boot printed: the console, the driver's last counters and the host's.
struct Boot {
    console: String,
    guest: HashMap<String, u64>,
    host: serde_json::Value,
}

/// Boots the guest with `blktest MODE` on a fresh pool; `initrd` names the image.
fn blktest(name: &str, initrd: &str, mode: &str) -> Boot {
    let g = guest();
    let s = State::new(name);
    let out = Command::new(env!("CARGO_BIN_EXE_vpm"))
        .args(["qemu", "--state", s.0.to_str().unwrap()])
        .args(["--pool-mib", "128", "--vm", "linux", "--fresh"])
        .args(["--kernel", &g["KERNEL_BZIMAGE"], "--initrd", &g[initrd]])
        .args(["--vpmtest", mode, "--append", "vpmprog=blktest"])
        .args(["--timeout", "240"])
        .output()
        .expect("run vpm qemu");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vpm qemu failed: {}{console}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        console.contains(&format!("BLKTEST {mode} OK")) && !console.contains("BLKTEST FAIL"),
        "{console}"
    );
    let line = console
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("VPM-STATS "))
        .unwrap_or_else(|| panic!("no VPM-STATS line:\n{console}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let guest = words
        .chunks(2)
        .filter_map(|kv| Some((kv[0].to_string(), kv.get(1)?.parse().ok()?)))
        .collect();
    let host = serde_json::from_str(console.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{console}"));
    Boot {
        console,
        guest,
        host,
    }
}

/// The `persisted=` of the `BLK-FLUSH mode=MODE` line.
fn persisted(b: &Boot, mode: &str) -> u64 {
    b.console
        .lines()
        .find_map(|l| l.strip_prefix(&format!("BLK-FLUSH mode={mode} ")))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("persisted="))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no BLK-FLUSH line for {mode}:\n{}", b.console))
}

/// The host persisted exactly what the driver's flushes and FUA writes sent: ranged persists,
/// never the whole device.
fn host_persisted_what_the_driver_sent(b: &Boot) {
    let sent = b.guest["blk_flush_bytes"] + b.guest["blk_fua_bytes"];
    let host = b.host["stats"]["persist_requested_bytes"]
        .as_u64()
        .expect("persist_requested_bytes");
    assert_eq!(host, sent, "host and driver disagree: {:?}", b.guest);
    assert_eq!(
        b.host["stats"]["hints_rejected"].as_u64(),
        Some(0),
        "{}",
        b.host
    );
    assert_eq!(b.guest["blk_errors"], 0, "{:?}", b.guest);
    let flushes = b.guest["blk_flushes"].max(1);
    println!(
        "{} flushes, {} bytes persisted ({} per flush), {} bytes written, {} FUA writes",
        b.guest["blk_flushes"],
        b.guest["blk_flush_bytes"],
        b.guest["blk_flush_bytes"] / flushes,
        b.guest["blk_written"],
        b.guest["blk_fua_writes"]
    );
}

#[test]
fn an_fsync_on_the_raw_disk_persists_exactly_the_pages_written() {
    let b = blktest("raw", "INITRAMFS", "raw");
    assert!(b.console.contains("logical block 4096"), "{}", b.console);
    assert_eq!(persisted(&b, "raw"), 1 << 20, "{}", b.console);
    host_persisted_what_the_driver_sent(&b);
}

#[test]
fn ext4_on_the_disk_mounts_fsyncs_reads_back_and_checks_clean() {
    let b = blktest("ext4", "INITRAMFS", "ext4");
    let p = persisted(&b, "ext4");
    // The file's 1 MiB plus ext4's metadata and journal blocks for that fsync, not the device.
    assert!(
        (1 << 20..(1 << 20) + (512 << 10)).contains(&p),
        "the fsync of 1 MiB persisted {p} bytes:\n{}",
        b.console
    );
    host_persisted_what_the_driver_sent(&b);
    println!("ext4: an fsync of a 1 MiB file persisted {p} bytes");
}

#[test]
fn fio_verify_passes_on_the_disk_and_each_fsync_persists_at_most_its_writes() {
    let b = blktest("fio", "INITRAMFS_FIO", "fio");
    assert!(b.console.contains("FIO rc=0"), "{}", b.console);
    // An fsync every 32 writes of 4 KiB: at most 128 KiB per flush, at most 16 MiB in all.
    assert!(
        b.guest["blk_last_flush_bytes"] <= 32 * 4096,
        "{:?}",
        b.guest
    );
    assert!(b.guest["blk_flush_bytes"] <= 16 << 20, "{:?}", b.guest);
    assert!(
        b.guest["blk_flushes"] >= 16 * 1024 / 4 / 32,
        "{:?}",
        b.guest
    );
    host_persisted_what_the_driver_sent(&b);
}

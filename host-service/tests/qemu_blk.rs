//! `/dev/vpmblk0`, the vPM block device of vpm.ko, in a Linux 7.3 guest under QEMU (TCG) served
//! by `vpm qemu`: raw writes with fsync, ext4 (mkfs, mount, fsync, read back, fsck) and Debian's
//! fio with `--verify`; every flush persists what was written since the last one and nothing
//! else, checked against the host's count of persisted bytes; and chained crash trials (kill -9 of
//! the host under an fsync writer, trial after trial on one pool and one filesystem). Needs the
//! cached guest kernel, QEMU and the toolchain that tests/setup/install-deps.sh installs.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod qemu_support;

use qemu_support::{build_guest, guest_stats, repo, State};

/// Builds vpm.ko, the test programs and both initramfs images once; returns their paths.
/// `VPM_GUEST_OUT`: a directory of its own, for a long run beside other runs.
fn guest() -> &'static HashMap<String, String> {
    static G: OnceLock<HashMap<String, String>> = OnceLock::new();
    G.get_or_init(|| {
        build_guest(
            std::env::var_os("VPM_GUEST_OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| repo().join("target/guest-test")),
        )
    })
}

/// What one boot printed: the console, the driver's last counters and the host's.
struct Boot {
    console: String,
    guest: HashMap<String, u64>,
    host: serde_json::Value,
}

/// `vpm qemu` booting the guest with `blktest MODE`; `initrd` names the image; `fresh` starts
/// from a new pool (else the pool of an earlier run is recovered).
fn vpm_qemu(s: &State, initrd: &str, mode: &str, fresh: bool) -> Command {
    let g = guest();
    // no_timer_check: under a loaded host, TCG is too slow for the IO-APIC timer check.
    let mut append = "vpmprog=blktest no_timer_check".to_string();
    if std::env::var("VPM_BLK_ACK_BEFORE_FSYNC").as_deref() == Ok("1") {
        // The kernel passes an unknown `name=value` to init's environment: the crash trials'
        // writer then acknowledges before its fsync, which the trials must catch.
        append.push_str(" VPM_BLK_ACK_BEFORE_FSYNC=1");
    }
    let mut c = Command::new(env!("CARGO_BIN_EXE_vpm"));
    c.args(["qemu", "--state", s.0.to_str().unwrap()])
        .args(["--pool-mib", "128", "--vm", "linux"])
        .args(["--kernel", &g["KERNEL_BZIMAGE"], "--initrd", &g[initrd]])
        .args(["--vpmtest", mode, "--append", &append])
        .args(["--timeout", "240"]);
    if fresh {
        c.arg("--fresh");
    }
    c
}

/// Boots the guest with `blktest MODE` on a fresh pool; `initrd` names the image.
fn blktest(name: &str, initrd: &str, mode: &str) -> Boot {
    let s = State::with_prefix("blk", name);
    boot(vpm_qemu(&s, initrd, mode, true), mode)
}

/// Runs `cmd` to the end and checks that `blktest MODE` passed.
fn boot(mut cmd: Command, mode: &str) -> Boot {
    let out = cmd.output().expect("run vpm qemu");
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
    let guest = guest_stats(&console);
    let host: serde_json::Value = serde_json::from_str(console.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("no JSON summary ({e}):\n{console}"));
    assert_eq!(
        host["exited"], true,
        "the guest did not power off:\n{console}"
    );
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
    // The only flush of the boot: the host persisted the 1 MiB written, not the 64 MiB disk.
    assert_eq!(
        b.host["stats"]["persist_requested_bytes"].as_u64(),
        Some(1 << 20),
        "{}",
        b.host
    );
}

/// A flush the host refuses fails the fsync (EIO) instead of passing silently; the pages it
/// held are marked again, so the next flush persists them (here: the whole disk).
#[test]
fn a_refused_flush_fails_the_fsync_and_the_next_one_persists_everything() {
    let b = blktest("refused", "INITRAMFS", "refused");
    assert!(b.guest["blk_errors"] >= 1, "{:?}", b.guest);
    assert!(
        b.host["stats"]["hints_rejected"].as_u64() >= Some(1),
        "{}",
        b.host
    );
    assert_eq!(persisted(&b, "refused"), 64 << 20, "{}", b.console);
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

/// The value of `key=` on the first line starting with `prefix`, or of the word after `prefix`.
fn field(console: &str, prefix: &str, key: &str) -> String {
    console
        .lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no {prefix}{key} in:\n{console}"))
}

/// A discard marks the whole pages it covers transient: after a restart of the host they read as
/// zeros, while pages written and fsynced after the discard (marked persistent again) and data
/// outside it hold what was written.
#[test]
fn a_discard_makes_pages_transient_until_they_are_written_again() {
    let s = State::with_prefix("blk", "discard");
    let b = boot(vpm_qemu(&s, "INITRAMFS", "discard", true), "discard");
    assert_eq!(b.guest["blk_discard_bytes"], 1 << 20, "{:?}", b.guest);
    // SET_PERSISTENT before the first flush of each page after load (a: 256 pages, b: 256, in
    // case an earlier boot discarded them) and before the flush of the 128 discarded pages
    // written again (c): one entry per run.
    assert_eq!(b.guest["blk_repersisted_pages"], 640, "{:?}", b.guest);
    assert_eq!(b.guest["blk_repersist_ranges"], 3, "{:?}", b.guest);
    host_persisted_what_the_driver_sent(&b);
    let (a, c) = (
        field(&b.console, "DISCARD ", "a="),
        field(&b.console, "DISCARD ", "c="),
    );
    let after = boot(
        vpm_qemu(&s, "INITRAMFS", "discardcheck", false),
        "discardcheck",
    );
    let regions: HashMap<&str, &str> = after
        .console
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("REGION ")?.split_whitespace();
            Some((w.next()?, w.next()?))
        })
        .collect();
    assert_eq!(regions.get("a"), Some(&a.as_str()), "{}", after.console);
    assert_eq!(regions.get("c"), Some(&c.as_str()), "{}", after.console);
    assert_eq!(
        regions.get("discarded"),
        regions.get("zeros"),
        "the discarded half is not zero:\n{}",
        after.console
    );
}

/// `(index, name, md5)` of every `ACKED` line: files whose fsync (and their directory's)
/// returned, as the guest reported them to the console, a witness outside the pool.
fn acked(console: &str) -> Vec<(u64, String, String)> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("ACKED ")?.split_whitespace();
            let (i, name, sum) = (w.next()?.parse().ok()?, w.next()?, w.next()?);
            // A kernel message may land right after the md5 on the console line.
            let sum = sum.get(..32)?;
            sum.bytes()
                .all(|b| b.is_ascii_hexdigit())
                .then(|| (i, name.to_string(), sum.to_string()))
        })
        .collect()
}

/// The `FILE name md5` lines of a check boot. The md5 is its first 32 characters: a kernel
/// message may still land right after it on the console line.
fn files(console: &str) -> HashMap<String, String> {
    console
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("FILE ")?.split_whitespace();
            let (name, sum) = (w.next()?, w.next()?);
            Some((name.to_string(), sum.get(..32).unwrap_or(sum).to_string()))
        })
        .collect()
}

/// Trials whose files stay on the disk (and in the witness): older ones are removed by a check
/// boot, so hundreds of trials fit the 64 MiB disk.
const KEEP_TRIALS: u64 = 6;

/// Counts of a run of chained trials.
#[derive(Default)]
struct Tally {
    trials: u64,
    acked: u64,
    checked: u64,
    lost: u64,
    mismatches: u64,
    fsck_failures: u64,
    /// The first failure, if any.
    failure: Option<String>,
}

/// One chained crash trial on the pool of `s`: the writer (`blktest writer t<trial>`, with mkfs
/// in trial 0 only: later trials write on the filesystem the previous trials left) on ext4 on
/// /dev/vpmblk0, QEMU and `vpm qemu` killed with SIGKILL `delay_ms` after the writer's `after`-th
/// acknowledged file; then a boot of the check initramfs on the recovered pool must mount it, hold
/// every file in `witness` (acknowledged in this trial or an earlier one and not pruned) with its
/// checksum, and pass `e2fsck -fn`. Adds what it saw to `t`; the check boot removes the files of
/// trial `trial - KEEP_TRIALS` from the disk and from `witness`.
fn chained_trial(
    s: &State,
    trial: u64,
    after: usize,
    delay_ms: u64,
    witness: &mut HashMap<String, String>,
    t: &mut Tally,
) {
    let tag = format!("t{trial}");
    let format = if trial == 0 { "mkfs" } else { "keep" };
    let mut cmd = vpm_qemu(
        s,
        "INITRAMFS",
        &format!("writer {tag} {format}"),
        trial == 0,
    );
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start vpm qemu");
    let console = s.0.join("linux.console");
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    let start = Instant::now();
    while acked(&read()).len() < after {
        if start.elapsed() > Duration::from_secs(180) || read().contains("BLKTEST FAIL") {
            // SAFETY: kill(2) on the process group made for the child (vpm and its QEMU).
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.wait();
            t.failure = Some(format!(
                "trial {trial}: the writer never got going:\n{}",
                read()
            ));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(delay_ms));
    // SAFETY: kill(2) on the process group made for the child (vpm and its QEMU).
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    let _ = child.wait();
    let text = read();
    t.trials += 1;
    if text.contains("BLKTEST FAIL") {
        t.failure = Some(format!("trial {trial}: the writer failed:\n{text}"));
        return;
    }
    for (_, name, sum) in acked(&text) {
        t.acked += 1;
        witness.insert(name, sum);
    }
    let prune = trial.checked_sub(KEEP_TRIALS).map(|k| format!("t{k}"));
    let mode = match &prune {
        Some(p) => format!("check {p}"),
        None => "check".to_string(),
    };
    let out = vpm_qemu(s, "INITRAMFS", &mode, false)
        .output()
        .expect("run vpm qemu");
    let console = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || !console.contains("FSCK rc=") {
        t.failure = Some(format!(
            "trial {trial}: the check boot failed: {}{console}",
            String::from_utf8_lossy(&out.stderr)
        ));
        return;
    }
    if !console.contains("FSCK rc=0") {
        t.fsck_failures += 1;
    }
    let got = files(&console);
    let mut bad = Vec::new();
    for (name, sum) in witness.iter() {
        t.checked += 1;
        match got.get(name) {
            Some(g) if g == sum => {}
            Some(g) => {
                t.mismatches += 1;
                bad.push(format!("{name}: {g}, acknowledged {sum}"));
            }
            None => {
                t.lost += 1;
                bad.push(format!("{name}: lost"));
            }
        }
    }
    if !bad.is_empty() || !console.contains("BLKTEST check OK") {
        bad.sort();
        t.failure = Some(format!(
            "trial {trial}: {} bad files ({}):\n{console}",
            bad.len(),
            bad.join(", ")
        ));
        return;
    }
    if let Some(p) = prune {
        if console.contains(&format!("PRUNED {p}")) {
            witness.retain(|name, _| !name.starts_with(&format!("{p}-")));
        }
    }
}

/// PV crash trials on ext4 over /dev/vpmblk0 (issue 14), chained on ONE pool: each trial writes
/// on the filesystem the earlier ones left (mkfs, which discards the whole disk, only in trial
/// 0), so each boot's vpm.ko persists pages an earlier boot discarded; after every kill -9 of
/// the host, 0 acknowledged fsyncs lost (of this trial or any earlier one still on the disk), 0
/// checksum mismatches, fsck clean. `VPM_BLK_CRASH_TRIALS` sets the count (default 20);
/// `VPM_BLK_SUMMARY=path` appends a JSON line of the counts to `path`.
#[test]
fn ext4_on_the_disk_keeps_every_acknowledged_fsync_across_chained_host_crashes() {
    let trials: u64 = std::env::var("VPM_BLK_CRASH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let s = State::with_prefix("blk", "chained");
    let mut seed = std::process::id() as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut witness = HashMap::new();
    let mut t = Tally::default();
    let started = Instant::now();
    for trial in 0..trials {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Killed after the 1st..4th acknowledged file: every other trial at once (0..30 ms: the
        // file just acknowledged must already be durable), the others 0..2 s later (anywhere in
        // the writer's loop).
        let after = 1 + (seed >> 60) as usize % 4;
        let delay_ms = if trial % 2 == 1 {
            (seed >> 33) % 30
        } else {
            (seed >> 33) % 2000
        };
        let at = Instant::now();
        chained_trial(&s, trial, after, delay_ms, &mut witness, &mut t);
        println!(
            "trial {trial}: killed {delay_ms} ms after ack {after}; {} files on the disk checked; \
             {} acknowledged fsyncs so far ({:.1} s)",
            witness.len(),
            t.acked,
            at.elapsed().as_secs_f64()
        );
        if t.failure.is_some() {
            break;
        }
    }
    let line = format!(
        "{{\"test\":\"blk_chained_crash\",\"trials\":{},\"acked\":{},\"checks\":{},\"lost\":{},\
         \"mismatches\":{},\"fsck_failures\":{},\"seconds\":{:.0},\"ok\":{}}}",
        t.trials,
        t.acked,
        t.checked,
        t.lost,
        t.mismatches,
        t.fsck_failures,
        started.elapsed().as_secs_f64(),
        t.failure.is_none()
    );
    println!("chained blk crash trials: {line}");
    if let Ok(path) = std::env::var("VPM_BLK_SUMMARY") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("open VPM_BLK_SUMMARY");
        writeln!(f, "{line}").expect("write VPM_BLK_SUMMARY");
    }
    if let Some(why) = t.failure {
        panic!("{why}");
    }
    assert_eq!(t.trials, trials);
    assert!(t.acked >= trials, "too few acknowledged fsyncs: {line}");
}

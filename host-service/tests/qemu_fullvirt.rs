//! Full virtualization on the QEMU front: a Linux guest WITHOUT vpm.ko uses the vPM as
//! /dev/pmem0 (the e820 PM region), with ext4 mounted `-o dax`, while `vpm qemu --mode full`
//! takes periodic epochs (QMP stop, diff, commit, cont). Crash trials kill QEMU and the host
//! service with SIGKILL during an fsync-heavy workload, restart from the pool and check the
//! filesystem from a fresh boot against two witnesses outside the pool: the console (one
//! `FSYNC-ACK name len crc32` line per acknowledged fsync) and the epoch witness (`epoch
//! console_bytes` after each committed epoch). Needs the cached guest kernel, QEMU and e2fsprogs.
//!
//! `VPM_QFV_TRIALS=N` (default 20) sets the number of trials, `VPM_QFV_SEED` the seed of the kill
//! moments, and `VPM_QFV_SUMMARY=FILE` writes one JSON line per trial and a closing summary (the
//! longer runs recorded in docs/soak-ext4.md); `VPM_QFV_GUEST_OUT=DIR` builds the guest there.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

mod qemu_support;

use qemu_support::{build_guest, repo};

/// Builds the guest (initramfs with e2fsprogs and fsyncer) once; returns its paths.
fn guest() -> &'static HashMap<String, String> {
    static G: OnceLock<HashMap<String, String>> = OnceLock::new();
    G.get_or_init(|| {
        build_guest(
            std::env::var_os("VPM_QFV_GUEST_OUT")
                .map_or_else(|| repo().join("target/guest-test-fullvirt"), PathBuf::from),
        )
    })
}

/// A state directory in /dev/shm, removed at the end.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> State {
        let d = PathBuf::from(format!("/dev/shm/vpm-qfv-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        State(d)
    }

    fn console(&self) -> PathBuf {
        self.0.join("linux.console")
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `vpm qemu --mode full` on the state's pool, the guest running the vpmfs steps `run` with
/// workload tag `tag`, appending to `witness`.
fn qemu(state: &State, run: &str, tag: &str, witness: &Path, extra: &[&str]) -> Command {
    let g = guest();
    let mut c = Command::new(env!("CARGO_BIN_EXE_vpm"));
    c.args(["qemu", "--state", state.0.to_str().unwrap()])
        .args(["--pool-mib", "160", "--vm", "linux", "--vpm-mib", "64"])
        .args(["--mode", "full", "--epoch-ms", "200", "--timeout", "120"])
        .arg("--epoch-witness")
        .arg(witness)
        .args([
            "--kernel",
            &g["KERNEL_BZIMAGE"],
            "--initrd",
            &g["INITRAMFS"],
        ])
        .args([
            "--append",
            &format!("loglevel=1 vpmmod=0 vpmdev=/dev/pmem0 vpmfs=dax vpmtag={tag} vpmrun={run}"),
        ])
        .args(extra);
    c
}

/// Runs a boot to its end (the guest powers off); returns stdout (console, then the JSON line).
fn boot(state: &State, run: &str, tag: &str, witness: &Path, extra: &[&str]) -> String {
    let out = qemu(state, run, tag, witness, extra)
        .output()
        .expect("run vpm qemu");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("VPM-INIT done"),
        "vpm qemu failed: {}{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// One acknowledged file: its name, length and crc32.
type Ack = (String, u64, String);

/// The `FSYNC-ACK` lines among the complete lines of `console[..upto]`.
fn acks(console: &[u8], upto: usize) -> Vec<Ack> {
    let text = String::from_utf8_lossy(&console[..upto.min(console.len())]);
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => "",
    };
    complete
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("FSYNC-ACK ")?.split(' ');
            let (name, len, crc) = (w.next()?, w.next()?.parse().ok()?, w.next()?);
            (w.next().is_none() && crc.len() == 8).then(|| (name.into(), len, crc.into()))
        })
        .collect()
}

/// The epoch witness: `(epoch, console_bytes)` per committed epoch.
fn witness_lines(path: &Path) -> Vec<(u64, usize)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (e, b) = l.split_once(' ')?;
            Some((e.parse().ok()?, b.parse().ok()?))
        })
        .collect()
}

/// What a check boot found: fsck's verdict and every file with its length and crc32.
struct Check {
    fsck_rc: Option<i32>,
    files: HashMap<String, (u64, String)>,
    complete: bool,
}

fn parse_check(console: &str) -> Check {
    let fsck_rc = console
        .lines()
        .find_map(|l| l.strip_prefix("VPMFS fsck rc=")?.trim().parse().ok());
    let files = console
        .lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("FILE ")?.split(' ');
            let (name, len, crc) = (w.next()?, w.next()?.parse().ok()?, w.next()?);
            Some((name.to_string(), (len, crc.to_string())))
        })
        .collect();
    Check {
        fsck_rc,
        files,
        complete: console.contains("FSYNCER check done"),
    }
}

/// Checks a recovered filesystem (`check`) against what the previous run witnessed: `expect`, the
/// files acknowledged before its last witnessed epoch. Returns the failures.
fn verify(check: &Check, expect: &[Ack], console: &str) -> Vec<String> {
    let mut bad = Vec::new();
    if check.fsck_rc != Some(0) {
        let fsck: Vec<&str> = console.lines().filter(|l| l.contains("fsck")).collect();
        bad.push(format!(
            "fsck.ext4 -fn not clean: {:?}\n{}",
            check.fsck_rc,
            fsck.join("\n")
        ));
    }
    if !check.complete {
        bad.push("the check did not finish listing the files".into());
    }
    for (name, len, crc) in expect {
        match check.files.get(name) {
            None => bad.push(format!(
                "{name} acknowledged before the last epoch is missing"
            )),
            Some((l, c)) if l != len || c != crc => bad.push(format!(
                "{name}: {l} bytes crc {c}, acknowledged {len} bytes crc {crc}"
            )),
            Some(_) => {}
        }
    }
    bad
}

/// `vpm qemu` in a process group of its own, so that one SIGKILL takes QEMU down with it.
struct HostRun(Child);

impl HostRun {
    fn start(mut cmd: Command) -> HostRun {
        HostRun(
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .expect("start vpm qemu"),
        )
    }

    /// SIGKILL to the host service and its QEMU.
    fn kill(mut self) {
        // SAFETY: kill(2) on the process group we created for the child (vpm and its QEMU).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Waits until the console contains `what`; panics with the console after `limit` or when
/// `host` ends first.
fn wait_for(host: &mut HostRun, console: &Path, what: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(console).unwrap_or_default();
        if text.contains(what) {
            return text;
        }
        assert!(
            start.elapsed() < limit,
            "no {what:?} within {limit:?}:\n{text}"
        );
        if let Ok(Some(status)) = host.0.try_wait() {
            panic!("vpm qemu ended ({status}) before {what:?}:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The outcome of one kill trial, as recorded in the summary.
#[derive(Debug)]
struct TrialRecord {
    trial: u64,
    kill_after_ms: u64,
    epochs_witnessed: usize,
    acked: usize,
    acked_before_epoch: usize,
    checked_files: usize,
    failures: Vec<String>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn summary_line(f: &mut Option<std::fs::File>, v: serde_json::Value) {
    if let Some(f) = f.as_mut() {
        writeln!(f, "{v}").expect("write the summary");
    }
}

#[test]
fn ext4_dax_on_full_virt_epochs_survives_kill9_of_qemu_and_the_host() {
    let trials = env_u64("VPM_QFV_TRIALS", 20);
    let seed = env_u64("VPM_QFV_SEED", std::process::id() as u64);
    let mut summary = std::env::var_os("VPM_QFV_SUMMARY")
        .map(|p| std::fs::File::create(p).expect("create the summary"));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let s = State::new("trials");
    let started = Instant::now();

    // A clean run first: mkfs, a few seconds of the workload, power off. The final epoch
    // commits everything, so a fresh boot finds every acknowledged file.
    let w0 = s.0.join("witness-0");
    let out = boot(&s, "mkfs,short", "clean", &w0, &["--fresh"]);
    assert!(
        out.contains("VPMFS mkfs ok") && out.contains("VPMFS short done"),
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let e = &json["epochs"];
    let epochs = e["epochs"].as_u64().unwrap();
    assert!(epochs >= 5, "too few periodic epochs in ~10 s: {e}");
    assert_eq!(
        witness_lines(&w0).len() as u64,
        epochs,
        "one witness line per epoch"
    );
    assert!(e["pause_us_max"].as_u64().unwrap() > 0 && e["committed_pages"].as_u64().unwrap() > 0);
    println!("clean run epochs: {e}");
    let clean_acks = acks(out.as_bytes(), out.len());
    assert!(
        clean_acks.len() > 10,
        "the workload acknowledged too little:\n{out}"
    );
    let mut expect = clean_acks;
    let mut last_epoch = witness_lines(&w0).last().unwrap().0;
    let mut records = Vec::new();

    for trial in 1..=trials {
        let w = s.0.join(format!("witness-{trial}"));
        let tag = format!("t{trial}");
        // The previous run's console says "FSYNCER start" too.
        let _ = std::fs::remove_file(s.console());
        let mut host = HostRun::start(qemu(&s, "check,work", &tag, &w, &[]));
        let text = wait_for(
            &mut host,
            &s.console(),
            "FSYNCER start",
            Duration::from_secs(180),
        );
        let kill_after_ms = rng.random_range(0..2500);
        std::thread::sleep(Duration::from_millis(kill_after_ms));
        host.kill();
        let console = std::fs::read(s.console()).unwrap();
        let lines = witness_lines(&w);
        let mut failures = verify(&parse_check(&text), &expect, &text);
        // Epoch numbers continue from the recovered epoch: an older recovery would repeat one.
        if let Some(&(first, _)) = lines.first() {
            if first <= last_epoch {
                failures.push(format!(
                    "recovered to an epoch older than the witness's {last_epoch}: this run \
                     committed epoch {first}"
                ));
            }
        }
        let all = acks(&console, console.len());
        let checked = expect.len();
        // What the next boot must find: the acknowledgements before this run's last epoch.
        if let Some(&(epoch, bytes)) = lines.last() {
            expect = acks(&console, bytes);
            last_epoch = epoch;
        } else {
            expect = Vec::new();
        }
        let r = TrialRecord {
            trial,
            kill_after_ms,
            epochs_witnessed: lines.len(),
            acked: all.len(),
            acked_before_epoch: expect.len(),
            checked_files: checked,
            failures,
        };
        summary_line(
            &mut summary,
            serde_json::json!({
                "trial": r.trial, "kill_after_ms": r.kill_after_ms,
                "epochs_witnessed": r.epochs_witnessed, "acked": r.acked,
                "acked_before_last_epoch": r.acked_before_epoch,
                "checked_files_of_previous_run": r.checked_files, "failures": r.failures,
            }),
        );
        println!("{r:?}");
        records.push(r);
    }
    // The last trial's files, from a boot that ends by itself.
    let w = s.0.join("witness-final");
    let text = boot(&s, "check", "final", &w, &[]);
    let mut final_failures = verify(&parse_check(&text), &expect, &text);
    if let Some(&(first, _)) = witness_lines(&w).first() {
        if first <= last_epoch {
            final_failures.push(format!(
                "final boot committed epoch {first} <= {last_epoch}"
            ));
        }
    }
    let failed: Vec<String> = records
        .iter()
        .flat_map(|r| {
            r.failures
                .iter()
                .map(move |f| format!("trial {}: {f}", r.trial))
        })
        .chain(final_failures.iter().map(|f| format!("final check: {f}")))
        .collect();
    let checked: usize = records.iter().map(|r| r.checked_files).sum::<usize>() + expect.len();
    let with_epochs = records.iter().filter(|r| r.acked_before_epoch > 0).count();
    summary_line(
        &mut summary,
        serde_json::json!({
            "summary": true, "trials": trials, "seed": seed, "failed": failed.len(),
            "files_checked": checked, "trials_with_acked_files_before_an_epoch": with_epochs,
            "seconds": started.elapsed().as_secs(),
        }),
    );
    println!(
        "{trials} trials (seed {seed}) in {:.0} s: {checked} acknowledged files checked, \
         {with_epochs} trials with files to check, {} failures",
        started.elapsed().as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "{}", failed.join("\n"));
    // The check can fail: most trials had acknowledged files before an epoch to look for.
    assert!(
        with_epochs as u64 * 2 >= trials,
        "only {with_epochs} of {trials} trials had a witnessed epoch with acknowledged files"
    );
}

#[test]
fn vpm_qemu_refuses_the_modes_it_does_not_serve() {
    let out = Command::new(env!("CARGO_BIN_EXE_vpm"))
        .args(["qemu", "--state", "/nonexistent/qfv", "--mode", "direct"])
        .args(["--kernel", "/nonexistent/k", "--initrd", "/nonexistent/i"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--mode pv") && err.contains("--mode full"),
        "{err}"
    );
}

#[test]
fn an_unwritable_epoch_witness_stops_vpm_qemu_before_the_guest_boots() {
    let s = State::new("badwitness");
    let out = Command::new(env!("CARGO_BIN_EXE_vpm"))
        .args(["qemu", "--state", s.0.to_str().unwrap(), "--pool-mib", "32"])
        .args(["--vpm-mib", "8", "--mode", "full"])
        .args(["--epoch-witness", "/nonexistent/qfv/witness"])
        .args(["--kernel", "/nonexistent/k", "--initrd", "/nonexistent/i"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("/nonexistent/qfv/witness"), "{err}");
    assert!(!s.console().exists(), "QEMU was started");
}

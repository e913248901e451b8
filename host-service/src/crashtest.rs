//! Crash trials with real processes: start `vpm guest` running a writer, `kill -9` it at a random
//! moment, start `vpm guest` again on the same pool to recover and run the checker, and judge the
//! checker's report. Used by the integration tests (≥ 100 trials of each kind) and by `vpm soak` (any number).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Why a trial could not be run or judged (a trial that ran and found data errors is not an
/// error: see [`TrialResult::errors`]).
#[derive(Debug, thiserror::Error)]
pub enum CrashTestError {
    /// The trial directory could not be reset.
    #[error("reset the trial directory")]
    ResetDir(#[source] crate::state_dir::StateDirError),
    /// `vpm` could not be started.
    #[error("start {}", path.display())]
    Start {
        /// The executable.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The writer could not be killed.
    #[error("kill -9 the writer")]
    Kill(#[source] std::io::Error),
    /// The writer exited before it was killed.
    #[error("the writer stopped by itself ({status}) {when}: {stderr}")]
    StoppedEarly {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// Before what.
        when: &'static str,
        /// What it printed.
        stderr: String,
    },
    /// The writer committed no epoch in time.
    #[error("the writer committed no epoch within {0} s")]
    NoEpoch(u64),
    /// The checker printed no JSON result.
    #[error("vpm {args} gave no result (status {status}): {output}")]
    NoResult {
        /// Its arguments.
        args: String,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed (stdout, then stderr).
        output: String,
    },
}

/// What a trial exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrialKind {
    /// Full virtualization: sequence-numbered writer, point-in-time check (F1).
    FullPrefix,
    /// Para-virtual: flushed records, a drain every few; every acknowledged record survives (P1).
    PvPersisted,
    /// Para-virtual transient scratch written heavily; it reads as zeros after the crash (P3).
    PvTransient,
}

impl TrialKind {
    /// Parses a kind name (`full`, `pv`, `transient`).
    pub fn parse(s: &str) -> Option<TrialKind> {
        Some(match s {
            "full" => TrialKind::FullPrefix,
            "pv" => TrialKind::PvPersisted,
            "transient" => TrialKind::PvTransient,
            _ => return None,
        })
    }
}

/// Trial parameters.
#[derive(Clone, Debug)]
pub struct TrialConfig {
    /// The `vpm` executable.
    pub vpm: PathBuf,
    /// A VPM state directory (pool and witnesses live here; reset per trial). A non-empty
    /// directory that is not a VPM state directory is refused, not emptied.
    pub dir: PathBuf,
    /// What to test.
    pub kind: TrialKind,
    /// Kill between these many milliseconds after the writer's first committed epoch.
    pub kill_after_ms: (u64, u64),
    /// vPM size in MiB.
    pub vpm_mib: u64,
    /// The writer's `--poll-us` (0: no ring poller).
    pub poll_us: u64,
    /// vCPUs of the writer and the checker (`--vcpus`): one sequence log per vCPU slice of vPM,
    /// each checked; the witnesses describe vCPU 0's, and the drain witness vCPUs 1 to 4's too.
    pub vcpus: u32,
}

/// What a trial found.
#[derive(Clone, Debug)]
pub struct TrialResult {
    /// Milliseconds the writer ran before the kill.
    pub killed_after_ms: u64,
    /// The checker's newest sequence (F1/P1) or pages checked (P3).
    pub found: u64,
    /// The acknowledged sequence from the witness (P1), else 0 (vCPU 0's with more vCPUs).
    pub acked: u64,
    /// The acknowledged sequence of each vCPU from the witness (P1; vCPUs past 4 have none).
    pub acked_vcpus: Vec<u64>,
    /// The newest record in the last epoch the host committed before the kill, from the epoch
    /// witness (F1: recovery must not go back past it).
    pub committed: u64,
    /// Each vCPU's record in that epoch witness line (F1; the checker checks vCPUs 0–4).
    pub committed_vcpus: Vec<u64>,
    /// The checker's error count.
    pub errors: u64,
    /// The checker's first error message.
    pub message: String,
    /// Milliseconds to recover and check.
    pub recover_ms: u64,
}

fn common(cfg: &TrialConfig, mode: &str) -> Vec<String> {
    [
        "guest",
        "--state",
        cfg.dir.to_str().unwrap_or("."),
        "--vm",
        "crash",
        "--mode",
        mode,
        "--vpm-mib",
        &cfg.vpm_mib.to_string(),
        "--dram-mib",
        "4",
        "--pool-mib",
        "48",
        "--vcpus",
        &cfg.vcpus.to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Held while this process holds a trial directory's lock and while it starts a child. A child
/// inherits every descriptor until its `exec` closes them (close-on-exec), a trial directory's
/// lock included: a trial on another thread that started a child at the wrong moment would make
/// this trial's writer find its directory "in use by another vpm process". `spawn` returns after
/// the child's `exec`, so with this held no child can keep a lock it never owned.
static CHILDREN: Mutex<()> = Mutex::new(());

/// Starts `cmd` under [`CHILDREN`]. The child is killed if the thread that started it dies
/// (`PR_SET_PDEATHSIG`): a soak stopped with SIGTERM or SIGKILL must not leave a writer running
/// forever on its state directory. Each trial's thread outlives its children (it kills and
/// waits for its writer, and waits for its checker).
fn spawn(cmd: &mut Command, vpm: &Path) -> Result<Child, CrashTestError> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let _g = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
    cmd.spawn().map_err(|source| CrashTestError::Start {
        path: vpm.to_path_buf(),
        source,
    })
}

fn run_json(vpm: &Path, args: &[String]) -> Result<serde_json::Value, CrashTestError> {
    let child = spawn(
        Command::new(vpm)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        vpm,
    )?;
    let out = child
        .wait_with_output()
        .map_err(|source| CrashTestError::Start {
            path: vpm.to_path_buf(),
            source,
        })?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or("");
    serde_json::from_str(line).map_err(|_| CrashTestError::NoResult {
        args: args.join(" "),
        status: out.status,
        output: format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)),
    })
}

/// Runs one trial with `seed` choosing the kill moment.
pub fn run_trial(cfg: &TrialConfig, seed: u64) -> Result<TrialResult, CrashTestError> {
    // Start from an empty pool: only VPM's own files go, and only from a VPM state directory;
    // the lock is released before the writer takes it.
    {
        let _g = CHILDREN.lock().unwrap_or_else(PoisonError::into_inner);
        crate::state_dir::StateDir::open(&cfg.dir)
            .and_then(|d| d.reset())
            .map_err(CrashTestError::ResetDir)?;
    }
    let witness = cfg.dir.join("witness");
    let epochs = cfg.dir.join("epochs");
    let (mode, mut writer) = match cfg.kind {
        TrialKind::FullPrefix => ("full", vec!["--workload", "seq-writer", "--epoch-ms", "5"]),
        TrialKind::PvPersisted => (
            "pv",
            vec![
                "--workload",
                "seq-writer",
                "--args",
                "0,8",
                "--epoch-ms",
                "20",
            ],
        ),
        TrialKind::PvTransient => (
            "pv",
            vec![
                "--workload",
                "transient",
                "--args",
                "0,64,1000000",
                "--transient-hints",
                "--epoch-ms",
                "5",
            ],
        ),
    };
    let witness_arg = witness.to_string_lossy().into_owned();
    if cfg.kind == TrialKind::PvPersisted {
        writer.extend(["--witness", &witness_arg]);
    }
    let epochs_arg = epochs.to_string_lossy().into_owned();
    writer.extend(["--epoch-witness", &epochs_arg]);
    let poll_arg = cfg.poll_us.to_string();
    writer.extend(["--poll-us", &poll_arg]);
    let mut args = common(cfg, mode);
    args.push("--fresh".into());
    args.extend(writer.iter().map(|s| s.to_string()));
    let mut child = spawn(
        Command::new(&cfg.vpm)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
        &cfg.vpm,
    )?;
    let (lo, hi) = cfg.kill_after_ms;
    let wait = lo + splitmix(seed) % (hi - lo + 1);
    // The kill moment counts from the first committed epoch, so a slow VM start (a loaded
    // machine) cannot turn a trial into one that tests nothing.
    wait_for_first_epoch(&mut child, &epochs)?;
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(wait));
    if let Ok(Some(status)) = child.try_wait() {
        return Err(CrashTestError::StoppedEarly {
            status,
            when: "before the kill",
            stderr: child_stderr(&mut child),
        });
    }
    child.kill().map_err(CrashTestError::Kill)?;
    let _ = child.wait();
    let killed_after_ms = started.elapsed().as_millis() as u64;

    let acked_vcpus = acked_per_vcpu(&witness, cfg.vcpus);
    let acked = acked_vcpus.first().copied().unwrap_or(0);
    let committed_vcpus = last_committed_records(&epochs);
    let committed = committed_vcpus.first().copied().unwrap_or(0);
    let mut check = common(cfg, mode);
    let check_args = match cfg.kind {
        // Each vCPU's log must reach its record of the last witnessed commit.
        TrialKind::FullPrefix => vec![
            "--workload".into(),
            "seq-check".into(),
            "--args".into(),
            std::iter::once("0".to_string())
                .chain(committed_vcpus.iter().take(5).map(u64::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ],
        TrialKind::PvPersisted => vec![
            "--workload".into(),
            "seq-check".into(),
            "--args".into(),
            std::iter::once("1".to_string())
                .chain(acked_vcpus.iter().map(u64::to_string))
                .collect::<Vec<_>>()
                .join(","),
        ],
        TrialKind::PvTransient => vec![
            "--workload".into(),
            "transient".into(),
            "--args".into(),
            "1,64".into(),
        ],
    };
    check.extend(check_args);
    check.extend([
        "--epoch-ms".into(),
        "0".into(),
        "--hints".into(),
        "off".into(),
    ]);
    let t0 = Instant::now();
    let js = run_json(&cfg.vpm, &check)?;
    let recover_ms = t0.elapsed().as_millis() as u64;
    let report = &js["report"];
    let found = report["values"][0]
        .as_u64()
        .unwrap_or(report["ops"].as_u64().unwrap_or(0));
    let mut errors = report["errors"].as_u64().unwrap_or(u64::MAX);
    let mut message = report["message"].as_str().unwrap_or("").to_string();
    if cfg.kind == TrialKind::FullPrefix && found < committed && errors == 0 {
        errors = 1;
        message = format!(
            "recovered to record {found}, older than record {committed} of the last committed epoch"
        );
    }
    Ok(TrialResult {
        killed_after_ms,
        found,
        acked,
        acked_vcpus,
        committed,
        committed_vcpus,
        errors,
        message,
        recover_ms,
    })
}

/// Each vCPU's newest acknowledged sequence in the drain witness (lines `seq` for vCPU 0,
/// `seq vcpu` for the others; a torn last line is ignored); 0 for a vCPU without one.
fn acked_per_vcpu(witness: &Path, vcpus: u32) -> Vec<u64> {
    let mut acked = vec![0u64; vcpus.clamp(1, 5) as usize];
    let text = std::fs::read_to_string(witness).unwrap_or_default();
    for line in complete_lines(&text) {
        let mut words = line.split_whitespace();
        let Some(Ok(seq)) = words.next().map(str::parse::<u64>) else {
            continue;
        };
        let vcpu = match words.next().map(str::parse::<usize>) {
            None => 0,
            Some(Ok(v)) => v,
            Some(Err(_)) => continue,
        };
        if let Some(a) = acked.get_mut(vcpu) {
            *a = (*a).max(seq);
        }
    }
    acked
}

/// Waits until the writer's host has committed its first epoch (a line in the epoch witness).
fn wait_for_first_epoch(
    child: &mut std::process::Child,
    epochs: &Path,
) -> Result<(), CrashTestError> {
    const LIMIT_S: u64 = 60;
    let deadline = Instant::now() + Duration::from_secs(LIMIT_S);
    loop {
        if std::fs::read_to_string(epochs).is_ok_and(|w| w.lines().next().is_some()) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(CrashTestError::StoppedEarly {
                status,
                when: "before its first epoch",
                stderr: child_stderr(child),
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(CrashTestError::NoEpoch(LIMIT_S));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The records of the last complete line of the epoch witness (`epoch record…`, one record per
/// vCPU), else none.
fn last_committed_records(epochs: &Path) -> Vec<u64> {
    let text = std::fs::read_to_string(epochs).unwrap_or_default();
    let last = complete_lines(&text)
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let _epoch: u64 = words.next()?.parse().ok()?;
            let records: Vec<u64> = words.map(str::parse).collect::<Result<_, _>>().ok()?;
            (!records.is_empty()).then_some(records)
        })
        .next_back();
    last.unwrap_or_default()
}

/// The newline-terminated lines of a witness file: a kill can cut the last line anywhere, and a
/// cut line can read as a different, valid line (`88000 1` → `88000`, vCPU 1's record as vCPU
/// 0's), so a last line without its newline is not read.
fn complete_lines(text: &str) -> impl DoubleEndedIterator<Item = &str> {
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete.lines()
}

fn child_stderr(child: &mut std::process::Child) -> String {
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    err
}

/// A well-mixed 64-bit hash of `x`.
pub fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(name: &str, text: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("vpm-crashtest-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("witness");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A kill can cut the witness's last line anywhere: `88000 1` torn to `88000` must not
    /// become vCPU 0's acknowledgement (a false "lost record" for vCPU 0).
    #[test]
    fn a_torn_last_drain_line_is_not_read() {
        let w = file_with("drain", "100\n90 1\n120\n88000");
        assert_eq!(acked_per_vcpu(&w, 2), vec![120, 90]);
        let w = file_with("drain2", "100\n90 1\n120\n88000 1\n");
        assert_eq!(acked_per_vcpu(&w, 2), vec![120, 88000]);
    }

    /// The same for the epoch witness: `12 500 480` torn to `12 500 48` is not a commit.
    #[test]
    fn a_torn_last_epoch_line_is_not_read() {
        let e = file_with("epoch", "11 400 390\n12 500 48");
        assert_eq!(last_committed_records(&e), vec![400, 390]);
        let e = file_with("epoch2", "11 400 390\n12 500 480\n");
        assert_eq!(last_committed_records(&e), vec![500, 480]);
    }
}

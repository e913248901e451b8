//! `vpm run`: the main job. One pool, one VM per mode running the same key-value workload with
//! persists, a table of what each mode cost, the pool reopened and verified, then real crashes:
//! a writer killed with SIGKILL in each crash-consistency mode, recovered, and its data checked
//! against a witness kept outside the pool.

use std::path::Path;
use std::sync::{Arc, Mutex};

use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind};
use vpm_host::state_dir::StateDir;

use super::values::{ModeArg, WorkloadArg};
use super::{open_pool, run_on, verdict, CliError, GuestArgs};

const MODES: [(&str, &str); 5] = [
    ("direct", "all pages mapped to PM homes (like QEMU vNVDIMM)"),
    (
        "msync",
        "direct + whole-region msync per persist (like virtio-pmem)",
    ),
    ("full", "unmodified guest, DRAM/PM tiers, 10 ms epochs"),
    ("pv", "para-virtual hints + epochs"),
    (
        "pv-transient",
        "pv, 256 transient scratch pages rewritten 20 times",
    ),
];

/// The guest options of the main job's VM `name` (a mode name, or `pv-transient`). They keep
/// `vpm guest`'s defaults otherwise, the ring poller (`--poll-us`) included: the PV VMs persist
/// through polled rings as a default `vpm guest --mode pv` does.
fn vm_args(state: &Path, name: &str, mode: ModeArg, vcpus: u32) -> GuestArgs {
    let mut g = GuestArgs::defaults();
    g.vcpus = vcpus;
    g.state = state.to_path_buf();
    g.vm = name.to_string();
    g.mode = Some(mode);
    g.vpm_mib = Some(32);
    g.dram_mib = 8;
    g.epoch_ms = 10;
    if name == "pv-transient" {
        g.workload = WorkloadArg::Transient;
        g.args = Some(super::WorkloadArgs(vec![0, 256, 20]));
        g.transient_hints = true;
    } else {
        g.workload = WorkloadArg::Kv;
        g.args = Some(super::WorkloadArgs(vec![20000]));
    }
    g
}

/// Runs the main job in the state directory `state` (reset first); fails if any guest failed or
/// reported data errors, after the table and the JSON are out. Every VM and crash trial has
/// `vcpus` vCPUs.
pub fn run(state_path: &Path, vcpus: u32) -> Result<(), CliError> {
    let state = StateDir::open(state_path)?;
    state.reset()?;
    println!(
        "VPM main job — pool in {} (emulated PM on this machine)",
        state_path.display()
    );
    let pool = Arc::new(Mutex::new(open_pool(&state, 256)?));
    println!(
        "{:<13} {:>9} {:>10} {:>7} {:>10} {:>9} {:>12} {:>9} {:>6}  what",
        "mode",
        "puts",
        "puts/s",
        "epochs",
        "pause max",
        "hints",
        "PM written",
        "DRAM max",
        "errors"
    );
    let mut results = Vec::new();
    let mut bad: Vec<&str> = Vec::new();
    for (name, what) in MODES {
        let mode = match name.trim_end_matches("-transient") {
            "direct" => ModeArg::Direct,
            "msync" => ModeArg::Msync,
            "full" => ModeArg::Full,
            _ => ModeArg::Pv,
        };
        let (out, js) = run_on(&vm_args(state_path, name, mode, vcpus), &pool)?;
        let s = &out.stats;
        let secs = out.elapsed.as_secs_f64();
        let written = if matches!(mode, ModeArg::Direct | ModeArg::Msync) {
            "guest stores".to_string()
        } else {
            format!("{} KiB", s.pm_bytes_written >> 10)
        };
        println!(
            "{:<13} {:>9} {:>10.0} {:>7} {:>8} us {:>9} {:>12} {:>9} {:>6}  {what}",
            name,
            out.report.ops,
            out.report.ops as f64 / secs,
            s.epochs,
            s.pause_us_max,
            s.hints_served,
            written,
            s.dram_pages_max,
            out.report.errors,
        );
        results.push(js);
        if let Err(e) = verdict(name, &out) {
            eprintln!("vpm: {e}");
            bad.push(name);
        }
    }
    drop(pool);
    println!("\nreopening the pool (verify every checksum, replay pending logs):");
    let pool = open_pool(&state, 256)?;
    super::pool_info::print_tenants(&pool)?;
    let path = state_path.join("main-job.json");
    vpm_host::private_file::write(&path, serde_json::to_string_pretty(&results).expect("json"))
        .map_err(|source| CliError::Write {
            path: path.display().to_string(),
            source,
        })?;
    println!("\nper-mode JSON (with every counter): {}", path.display());
    bad.extend(real_crashes(state_path, vcpus)?);
    if !bad.is_empty() {
        return Err(CliError::MainJobErrors {
            vms: bad.join(", "),
        });
    }
    Ok(())
}

/// One kill -9 trial per crash-consistency guarantee, in a state directory beside the main
/// job's: a writer `vpm guest` is killed at a random moment after its first committed epoch,
/// restarted on the same pool to recover, and its checker judges the image against the witness
/// (the host's record of committed epochs and acknowledged drains, kept outside the pool).
/// Returns the trials that found errors (each printed).
fn real_crashes(state_path: &Path, vcpus: u32) -> Result<Vec<&'static str>, CliError> {
    let vpm = std::env::current_exe().map_err(CliError::Exe)?;
    let dir = state_path.with_extension("crash");
    println!(
        "\nreal crashes: a writer killed with SIGKILL, recovered from the pool, checked against a witness ({})",
        dir.display()
    );
    let kinds = [
        (
            "full",
            TrialKind::FullPrefix,
            "exactly one committed epoch's image (F1), not older than the last witnessed commit",
        ),
        (
            "pv",
            TrialKind::PvPersisted,
            "every acknowledged persist (P1)",
        ),
        (
            "transient",
            TrialKind::PvTransient,
            "transient scratch reads as zeros (P3)",
        ),
    ];
    let mut bad = Vec::new();
    for (i, (name, kind, what)) in kinds.into_iter().enumerate() {
        let cfg = TrialConfig {
            vpm: vpm.clone(),
            dir: dir.clone(),
            kind,
            kill_after_ms: (20, 200),
            vpm_mib: 8,
            poll_us: 0,
            vcpus,
        };
        match run_trial(&cfg, 0x5eed + i as u64) {
            Ok(r) if r.errors == 0 => {
                let detail = match kind {
                    TrialKind::FullPrefix => format!(
                        "recovered to record {}, last witnessed commit {}",
                        r.found, r.committed
                    ),
                    TrialKind::PvPersisted => {
                        format!("newest record {}, {} acknowledged", r.found, r.acked)
                    }
                    TrialKind::PvTransient => "scratch checked".to_string(),
                };
                println!(
                    "  {name:<10} killed after {:>4} ms, recovered and checked in {:>4} ms: ok — {what} ({detail})",
                    r.killed_after_ms, r.recover_ms
                );
            }
            Ok(r) => {
                eprintln!(
                    "vpm: crash trial {name}: {} errors: {}",
                    r.errors, r.message
                );
                bad.push(name);
            }
            Err(e) => {
                eprintln!("vpm: crash trial {name}: {}", super::error_chain(&e));
                bad.push(name);
            }
        }
    }
    if let Ok(d) = StateDir::open(&dir) {
        let _ = d.reset();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bad)
}

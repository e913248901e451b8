//! `vpm run`: the main job. One pool, one VM per mode running the same key-value workload with
//! persists, a table of what each mode cost, then the pool reopened as after a crash.

use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// The guest options of the main job's VM `name` (a mode name, or `pv-transient`).
fn vm_args(state: &Path, name: &str, mode: ModeArg) -> GuestArgs {
    let mut g = GuestArgs::defaults();
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
/// reported data errors, after the table and the JSON are out.
pub fn run(state_path: &Path) -> Result<(), CliError> {
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
    let mut bad = Vec::new();
    for (name, what) in MODES {
        let mode = match name.trim_end_matches("-transient") {
            "direct" => ModeArg::Direct,
            "msync" => ModeArg::Msync,
            "full" => ModeArg::Full,
            _ => ModeArg::Pv,
        };
        let (out, js) = run_on(&vm_args(state_path, name, mode), &pool)?;
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
    println!("\nreopening the pool as after a crash (verify every checksum, replay pending logs):");
    let pool = open_pool(&state, 256)?;
    for id in pool.tenant_ids() {
        let t = pool.tenant(id).map_err(|source| CliError::Pool {
            what: format!("read tenant {id}"),
            source,
        })?;
        let (pm, cap) = t.home_counts();
        println!(
            "  {:<13} epoch {:>5}, {pm} PM homes, {cap} capacity homes",
            t.desc().name_str(),
            t.epoch()
        );
    }
    let path = state_path.join("main-job.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).expect("json")).map_err(
        |source| CliError::Write {
            path: path.display().to_string(),
            source,
        },
    )?;
    println!("\nper-mode JSON (with every counter): {}", path.display());
    if !bad.is_empty() {
        return Err(CliError::MainJobErrors {
            vms: bad.join(", "),
        });
    }
    Ok(())
}

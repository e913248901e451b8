//! `vpm run`: the main job. One pool, one VM per mode running the same key-value workload with
//! persists, a table of what each mode cost, then the pool reopened as after a crash.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::cli::{guest_opts, open_pool};

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

/// Runs the main job.
pub fn run(args: &[String]) -> Result<(), String> {
    let mut state =
        PathBuf::from(std::env::var("VPM_STATE").unwrap_or_else(|_| "/dev/shm/vpm-main".into()));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--state" => state = PathBuf::from(it.next().ok_or("--state needs a directory")?),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let _ = std::fs::remove_dir_all(&state);
    println!(
        "VPM main job — pool in {} (emulated PM on this machine)",
        state.display()
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
    for (name, what) in MODES {
        let mode = name.trim_end_matches("-transient");
        let mut a: Vec<String> = [
            "--state",
            state.to_str().unwrap_or("."),
            "--vm",
            name,
            "--mode",
            mode,
            "--workload",
            "kv",
            "--args",
            "20000",
            "--vpm-mib",
            "32",
            "--dram-mib",
            "8",
            "--epoch-ms",
            "10",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if name == "pv-transient" {
            a = a
                .into_iter()
                .map(|s| {
                    if s == "kv" {
                        "transient".into()
                    } else if s == "20000" {
                        "0,256,20".into()
                    } else {
                        s
                    }
                })
                .collect();
            a.push("--transient-hints".into());
        }
        let (out, js) = guest_opts(&a)?.run(&pool)?;
        let s = &out.stats;
        let secs = out.elapsed.as_secs_f64();
        let written = if mode == "direct" || mode == "msync" {
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
    }
    drop(pool);
    println!("\nreopening the pool as after a crash (verify every checksum, replay pending logs):");
    let pool = open_pool(&state, 256)?;
    for id in pool.tenant_ids() {
        let t = pool.tenant(id).map_err(|e| e.to_string())?;
        let (pm, cap) = t.home_counts();
        println!(
            "  {:<13} epoch {:>5}, {pm} PM homes, {cap} capacity homes",
            t.desc().name_str(),
            t.epoch()
        );
    }
    let path = state.join("main-job.json");
    std::fs::write(&path, serde_json::to_string_pretty(&results).expect("json"))
        .map_err(|e| e.to_string())?;
    println!("\nper-mode JSON (with every counter): {}", path.display());
    Ok(())
}

//! The suite's heat benchmarks: 4 full-virt VMs on a shrinking pool (uniform and write-skewed),
//! DRAM absorption of a skewed workload against the all-PM mapping, PM write amplification of
//! random 64 B writes. (One DRAM budget shared by heat against static equal shares runs through
//! a real `vpm serve`: [`super::serve_dram`].)
//!
//! PM bytes of a tiered VM are what the pool wrote for it (epoch commits: homes and redo log)
//! plus the pages its tier moves copied into the PM tier (`moved_to_pm` × page), plus — where the
//! guest counts its stores per page (`FLAG_COUNT_STORES`) — the bytes it stored into pages placed
//! in the PM tier, whose working copies are PM. A row without that counter says so in
//! `uncounted`.

use std::time::Instant;

use serde_json::{json, Value};
use vpm_abi::harness::Workload;
use vpm_abi::PAGE_SIZE;
use vpm_host::vmm::{Mode, VmOutcome, VmStats};

use super::vm::{self, run_alone, Job};
use super::{SuiteError, PM_DIR};

/// What the PM-bytes figure of a tiered mode leaves out without the guest's store counters.
pub(super) const UNCOUNTED: &str = "guest stores to pages placed in the PM tier (no counter)";

/// PM bytes a tiered VM caused that are counted: pool writes plus copies into the PM tier.
fn tiered_pm_bytes(s: &VmStats) -> u64 {
    s.pm_bytes_written + s.moved_to_pm * PAGE_SIZE
}

fn join(
    h: std::thread::JoinHandle<Result<VmOutcome, SuiteError>>,
) -> Result<VmOutcome, SuiteError> {
    h.join().map_err(|_| SuiteError::VmThreadPanicked)?
}

/// Four full-virt VMs on one pool holding 100 or 25 % of their summed vPM as PM homes, each
/// running uniform random 4 KiB writes or write-skewed 64 B writes (90 % to a hot tenth).
pub fn consolidation_full(quick: bool) -> Result<Vec<Value>, SuiteError> {
    let (vms, vpm) = (4u64, 16u64);
    let uniform = if quick { 1500 * 30 } else { 6000 * 200 };
    let skewed = if quick { 8_000_000 } else { 80_000_000 };
    let mut rows = Vec::new();
    for (name, w, args) in [
        ("uniform", Workload::RandomWrites, vec![uniform]),
        ("skewed", Workload::SkewedWrites, vec![skewed, 64]),
    ] {
        for pct in [100u64, 25] {
            let s = vm::Scratch::new(PM_DIR, &format!("consfull-{name}{pct}"))?;
            let pm_mib = vms * vpm * pct / 100;
            let pool = vm::pool(&s.0, pm_mib, 16)?;
            let start = Instant::now();
            let handles: Vec<_> = (0..vms)
                .map(|i| {
                    let (pool, dir) = (pool.clone(), s.0.clone());
                    let mut job = Job::new(&format!("f{i}"), Mode::Full, w, &args);
                    job.vpm_mib = vpm;
                    job.dram_mib = 6;
                    job.pm_quota_mib = Some(pm_mib / vms);
                    std::thread::spawn(move || vm::run(&job, &pool, &dir))
                })
                .collect();
            let mut outs = Vec::new();
            for h in handles {
                outs.push(join(h)?);
            }
            let wall = start.elapsed().as_secs_f64();
            let ops: u64 = outs.iter().map(|o| o.report.ops).sum();
            let p = pool.lock().expect("pool");
            rows.push(json!({"workload": name, "pool_pct": pct, "ops_per_s": ops as f64 / wall,
                "pm_bytes_written": p.pm().stats().bytes_written,
                "capacity_bytes_written": p.capacity().stats().bytes_written,
                "tier_to_pm_bytes": outs.iter().map(|o| o.stats.moved_to_pm * PAGE_SIZE).sum::<u64>()}));
        }
    }
    Ok(rows)
}

/// DRAM absorption on skewed 64 B writes (32 MiB vPM, 8 MiB DRAM in `full-100ms`): `direct` maps
/// the PM homes, so every guest store is a PM write (writes × 64 B; CPU caches may merge some,
/// so this is what the guest sends, an upper bound of what the media sees). `full` is counted by
/// the same rule: its commits and tier moves, plus the bytes the guest stored into PM-tier pages
/// (its per-page counters, read at every epoch stop).
pub fn absorption(quick: bool) -> Result<Vec<Value>, SuiteError> {
    // Long enough that the timed window (the last 4/5) runs mostly with the hot set settled.
    let writes = if quick { 30_000_000 } else { 600_000_000 };
    let mut rows = Vec::new();
    for (mname, mode, epoch) in [("direct", Mode::Direct, 0), ("full-100ms", Mode::Full, 100)] {
        let mut job = Job::new(
            &format!("abs-{mname}"),
            mode,
            Workload::SkewedWrites,
            &[writes, 64],
        );
        job.epoch_ms = epoch;
        job.count_stores = true;
        let o = run_alone(&job, PM_DIR, 96)?;
        let guest = o.report.ops * 64;
        let (pm, uncounted) = if mode.tiered() {
            (tiered_pm_bytes(&o.stats) + o.stats.pm_tier_store_bytes, "")
        } else {
            (guest, "")
        };
        rows.push(json!({"workload": "skewed 64 B writes", "mode": mname,
            "ops_per_s": o.report.ops as f64 / o.elapsed.as_secs_f64(), "epochs": o.stats.epochs,
            "guest_bytes_written": guest, "pool_bytes_written": o.stats.pm_bytes_written,
            "tier_to_pm_bytes": o.stats.moved_to_pm * PAGE_SIZE, "pm_tier_store_bytes": o.stats.pm_tier_store_bytes,
            "pm_bytes_written": pm, "window": window_pm(&o),
            "dram_pages_max": o.stats.dram_pages_max, "uncounted": uncounted}));
    }
    Ok(rows)
}

/// The timed window's guest bytes and PM bytes by the same rules (steady state: the hot set has
/// had time to settle in DRAM).
fn window_pm(o: &VmOutcome) -> Value {
    let s = &o.stats;
    let guest = s.window_ops * 64;
    let pm = if o.stats.epochs > 0 {
        s.window_epoch_pm_bytes + s.window_moved_to_pm * PAGE_SIZE + s.window_pm_tier_store_bytes
    } else {
        guest
    };
    json!({"guest_bytes_written": guest, "pm_bytes_written": pm, "epochs": s.window_epochs})
}

/// PM bytes the epoch commits wrote per changed byte of random 64 B writes in `full-100ms`: over
/// the whole run (every page's first home is written whole), and over the guest's timed window
/// (steady state, like the throughputs; the target's figure). Changed bytes are the lines the
/// commits found changed × 64; writes × 64 B is shown as `guest_bytes_written`. The guest's own
/// stores into PM-tier pages are PM writes too, but not the commit's: they are shown apart
/// (`pm_tier_store_bytes`, from the guest's counters).
pub fn write_amplification(quick: bool) -> Result<Vec<Value>, SuiteError> {
    let writes = if quick { 10_000_000 } else { 50_000_000 };
    let mut job = Job::new(
        "amp-full",
        Mode::Full,
        Workload::RandomWrites,
        &[writes, 64],
    );
    job.count_stores = true;
    let o = run_alone(&job, PM_DIR, 96)?;
    let mut row = json!({"workload": "random 64 B writes", "mode": "full-100ms",
        "ops_per_s": o.report.ops as f64 / o.elapsed.as_secs_f64(), "epochs": o.stats.epochs,
        "guest_bytes_written": o.report.ops * 64, "pool_bytes_written": o.stats.pm_bytes_written,
        "pm_bytes_written": tiered_pm_bytes(&o.stats), "pm_tier_store_bytes": o.stats.pm_tier_store_bytes,
        "tier_to_pm_bytes": o.stats.moved_to_pm * PAGE_SIZE, "dram_pages_max": o.stats.dram_pages_max});
    let s = &o.stats;
    row["changed_bytes"] = json!(s.changed_bytes);
    row["window_pm_bytes"] = json!(s.window_epoch_pm_bytes + s.window_moved_to_pm * PAGE_SIZE);
    row["window_changed_bytes"] = json!(s.window_changed_bytes);
    row["window_epochs"] = json!(s.window_epochs);
    Ok(vec![row])
}

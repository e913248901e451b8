//! `vpm-bench smp`: PV KV puts and log appends with 1, 2 and 4 vCPUs (one writer and one hint
//! ring per vCPU, each on its own slice of vPM), with the ring poller and with a doorbell exit
//! per batch; ops/s summed over the vCPUs, the median of [`REPEATS`] runs (this machine is shared,
//! single runs scatter). Polled runs do ten times the operations (they are many times faster), so
//! every run lasts long enough to dwarf the boot. Writes smp.json under `--out`.

use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};
use vpm_abi::harness::Workload;
use vpm_host::vmm::Mode;

use super::vm::{run_alone, Job};
use super::{step, SuiteError, PM_DIR, POLL_US};

/// vCPU counts measured.
pub const VCPUS: [u32; 3] = [1, 2, 4];
/// Runs per configuration.
pub const REPEATS: usize = 3;

/// Runs the SMP throughput table and writes smp.json; returns its rows.
pub fn run_smp(out: &Path, quick: bool) -> Result<Vec<Value>, SuiteError> {
    let t0 = Instant::now();
    let rows = measure(t0, quick)?;
    vpm_host::private_file::create_dir_all(out)
        .map_err(SuiteError::io("create the directory", out))?;
    let doc = json!({
        "platform": crate::stats::platform_note(),
        "date": httpdate::fmt_http_date(std::time::SystemTime::now()),
        "smp": rows,
    });
    let path = out.join("smp.json");
    let text = serde_json::to_string_pretty(&doc).map_err(SuiteError::Json)?;
    vpm_host::private_file::write(&path, text).map_err(SuiteError::io("write", &path))?;
    step(t0, &format!("done: {}", path.display()));
    Ok(rows)
}

/// The SMP throughput rows (also the suite's `smp` section): one per workload, mode and vCPU
/// count.
pub fn measure(t0: Instant, quick: bool) -> Result<Vec<Value>, SuiteError> {
    let n = if quick { 2000 } else { 8000 };
    let workloads = [
        ("kv puts", Workload::KvStore, vec![n]),
        ("log appends", Workload::AppendLog, vec![n / 2, 200]),
    ];
    let mut rows = Vec::new();
    println!(
        "{:<12} {:<12} {:>5} {:>12} {:>10} {:>12}",
        "workload", "mode", "vCPUs", "ops/s", "ring hints", "poller ms"
    );
    for (wname, w, args) in &workloads {
        for (mname, poll_us) in [("pv-poll", POLL_US), ("pv-doorbell", 0)] {
            for vcpus in VCPUS {
                step(t0, &format!("{wname}, {mname}, {vcpus} vCPUs"));
                let mut args = args.clone();
                if poll_us > 0 {
                    args[0] *= 10;
                }
                let mut job = Job::new(&format!("smp-{mname}-{vcpus}"), Mode::Pv, *w, &args);
                job.poll_us = poll_us;
                job.vcpus = vcpus;
                let mut runs = Vec::with_capacity(REPEATS);
                for _ in 0..REPEATS {
                    let o = run_alone(&job, PM_DIR, 96)?;
                    let ops_per_s = o.report.ops as f64 / o.elapsed.as_secs_f64();
                    runs.push((ops_per_s, o));
                }
                runs.sort_by(|a, b| a.0.total_cmp(&b.0));
                let all: Vec<f64> = runs.iter().map(|r| r.0).collect();
                let (ops_per_s, o) = &runs[REPEATS / 2];
                println!(
                    "{wname:<12} {mname:<12} {vcpus:>5} {ops_per_s:>12.0} {:>10} {:>12.1}",
                    o.stats
                        .ring_hints
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join("/"),
                    o.stats.poller_cpu_us as f64 / 1000.0
                );
                rows.push(json!({"workload": wname, "mode": mname, "vcpus": vcpus,
                    "ops": o.report.ops, "ops_per_s": ops_per_s, "ops_per_s_runs": all, "ring_hints": o.stats.ring_hints,
                    "doorbells": o.stats.doorbells, "poller_hints": o.stats.poller_hints,
                    "poller_cpu_us": o.stats.poller_cpu_us, "epochs": o.stats.epochs}));
            }
        }
    }
    Ok(rows)
}

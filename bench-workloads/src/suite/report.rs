//! The suite's outputs: results.json, CSV tables, SVG plots and report.md.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::report_sections::{poller_md, smp_md, staged_md};
use super::svg::bars;
use super::targets::{self, Target, WRITE_WORKLOADS};
use super::SuiteError;

pub(super) fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn rows<'a>(doc: &'a Value, key: &str) -> &'a [Value] {
    doc[key].as_array().map(|v| v.as_slice()).unwrap_or(&[])
}

pub(super) fn find(rows: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    rows.iter().find(|r| pred(r))
}

/// Writes `text` to `out/name`.
fn write_file(out: &Path, name: &str, text: String) -> Result<(), SuiteError> {
    let path = out.join(name);
    vpm_host::private_file::write(&path, text).map_err(SuiteError::io("write", &path))
}

fn write_csv(out: &Path, name: &str, rows: &[Value], cols: &[&str]) -> Result<(), SuiteError> {
    let mut s = cols.join(",") + "\n";
    for r in rows {
        let line: Vec<String> = cols
            .iter()
            .map(|c| match &r[*c] {
                Value::String(t) => t.clone(),
                v => v.to_string(),
            })
            .collect();
        s += &(line.join(",") + "\n");
    }
    write_file(out, name, s)
}

/// The throughput table's modes, in column order.
const THROUGHPUT_MODES: [&str; 6] = [
    "direct",
    "msync",
    "full-10ms",
    "full-100ms",
    "pv",
    "pv-poll",
];

/// Writes every output under `out`: `targets` are the run's computed targets, `vmx_exit_us` the
/// exit cost the VMX projection assumes.
pub fn write(
    out: &Path,
    doc: &Value,
    targets: &[Target],
    vmx_exit_us: f64,
) -> Result<(), SuiteError> {
    vpm_host::private_file::create_dir_all(out)
        .map_err(SuiteError::io("create the directory", out))?;
    let json = serde_json::to_string_pretty(doc).map_err(SuiteError::Json)?;
    write_file(out, "results.json", json)?;
    let lat = rows(doc, "persist_latency");
    let tput = rows(doc, "throughput");
    let cons = rows(doc, "consolidation");
    let rec = rows(doc, "recovery");
    write_csv(
        out,
        "persist_latency.csv",
        lat,
        &[
            "mode",
            "bytes",
            "p50_us",
            "p99_us",
            "pm_bytes_written",
            "persisted_bytes",
            "host_cpu_us_per_hint",
        ],
    )?;
    write_csv(
        out,
        "throughput.csv",
        tput,
        &[
            "workload",
            "mode",
            "ops_per_s",
            "epochs",
            "pause_us_total",
            "dirty_mib",
            "pm_bytes_written",
            "host_cpu_us_per_hint",
        ],
    )?;
    write_csv(
        out,
        "consolidation.csv",
        cons,
        &[
            "pool_pct",
            "transient_hints",
            "ops_per_s",
            "pm_bytes_written",
            "capacity_bytes_written",
        ],
    )?;
    write_csv(
        out,
        "recovery.csv",
        rec,
        &[
            "vpm_mib",
            "epoch",
            "homes",
            "mismatched_pages",
            "open_verify_ms",
            "rebuild_read_ms",
        ],
    )?;

    let sizes = [64u64, 4096, 65536];
    let lat_of = |mode: &str, b: u64, k: &str| {
        find(lat, |r| r["mode"] == mode && r["bytes"] == b).map_or(f64::NAN, |r| f(&r[k]))
    };
    let groups: Vec<String> = sizes.iter().map(|b| format!("{b} B")).collect();
    let series: Vec<(String, Vec<f64>)> = ["direct", "msync", "pv", "pv-poll"]
        .iter()
        .map(|m| {
            (
                m.to_string(),
                sizes.iter().map(|&b| lat_of(m, b, "p50_us")).collect(),
            )
        })
        .collect();
    write_file(
        out,
        "persist-latency.svg",
        bars("Persist latency p50 (µs)", "µs", &groups, &series, true),
    )?;

    let wl: Vec<String> = WRITE_WORKLOADS.iter().map(|s| s.to_string()).collect();
    let modes = THROUGHPUT_MODES;
    let tp = |w: &str, m: &str| {
        find(tput, |r| r["workload"] == w && r["mode"] == m)
            .map_or(f64::NAN, |r| f(&r["ops_per_s"]))
    };
    let series: Vec<(String, Vec<f64>)> = modes
        .iter()
        .map(|m| (m.to_string(), wl.iter().map(|w| tp(w, m)).collect()))
        .collect();
    write_file(
        out,
        "throughput.svg",
        bars("Workload throughput (ops/s)", "ops/s", &wl, &series, true),
    )?;

    let cg: Vec<String> = ["100 %", "50 %", "25 %"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let cs = |t: bool| -> Vec<f64> {
        [100u64, 50, 25]
            .iter()
            .map(|&p| {
                find(cons, |r| r["pool_pct"] == p && r["transient_hints"] == t)
                    .map_or(f64::NAN, |r| f(&r["ops_per_s"]))
            })
            .collect()
    };
    write_file(
        out,
        "consolidation.svg",
        bars(
            "4 VMs, pool sized as % of their vPM: total ops/s",
            "ops/s",
            &cg,
            &[
                ("random writes (pv)".into(), cs(false)),
                ("transient scratch (pv+hints)".into(), cs(true)),
            ],
            false,
        ),
    )?;

    let text = markdown(doc, lat, tput, cons, rec)
        + &super::report_heat::markdown(doc)
        + &targets_md(doc, targets, vmx_exit_us);
    write_file(out, "report.md", text)
}

fn markdown(doc: &Value, lat: &[Value], tput: &[Value], cons: &[Value], rec: &[Value]) -> String {
    let mut m = String::new();
    let exit_us = f(&doc["floors"]["exit_us"]);
    let floor_q = |b: u64, k: &str| {
        rows(&doc["floors"], "copy_flush_us")
            .iter()
            .find(|r| r["bytes"] == b)
            .map_or(f64::NAN, |r| f(&r[k]))
    };
    let floor = |b: u64| floor_q(b, "p50_us");
    let lat_of = |mode: &str, b: u64, k: &str| {
        find(lat, |r| r["mode"] == mode && r["bytes"] == b).map_or(f64::NAN, |r| f(&r[k]))
    };
    let _ = writeln!(m, "# VPM benchmark report\n");
    let _ = writeln!(m, "Measured on: {} — every figure below is from this run, on this machine. `/dev/kvm` here is \
        PVM (nested, shadow paging): a VM exit to the VMM costs tens of µs, not the few µs of VMX hardware. Emulated PM is a \
        tmpfs file flushed with clwb; the msync (virtio-pmem-like) baseline keeps its backing file on the ext4 disk, as virtio-pmem \
        would. Quick run: {}.\n", doc["platform"].as_str().unwrap_or("?"), doc["quick"]);
    let ring = &doc["floors"]["ring_round_trip"];
    let _ = writeln!(m, "## Floors (same run)\n\n| floor | p50 | p99 |\n|---|---|---|\n\
| VM exit round trip (guest `out` → VMM → guest) | {exit_us:.1} µs | {:.1} µs |\n\
| ring round trip, polled (NOP entry, no data: publish → host sees it → completion seen) | {:.2} µs | {:.2} µs |",
        f(&doc["floors"]["exit_p99_us"]), f(&ring["p50_us"]), f(&ring["p99_us"]));
    for b in [64u64, 4096, 65536] {
        let _ = writeln!(
            m,
            "| copy + flush + drain of {b} B on emulated PM | {:.2} µs | {:.2} µs |",
            floor(b),
            floor_q(b, "p99_us")
        );
    }
    let _ = writeln!(m, "\nThe ring floor is a NOP entry (an op of the ABI that the host completes without touching guest \
memory), published with the poller on (`--poll-us {}`): the guest's publish, the host thread seeing it, the completion \
the guest polls for. No VM exit is in it unless the poller slept: here {} of {} entries found it asleep and rang \
the doorbell (a poller woken for most of them means this host could not give the poller and the vCPU a core each \
during the run, and the figure is not exit-free).", doc["poller_idle"]["poll_us"], ring["poller_wakeups"], ring["entries"]);
    let _ = writeln!(m, "\n## Persist latency (µs)\n\n![persist latency](persist-latency.svg)\n\n| mode | 64 B p50 | 64 B p99 | 4 KiB p50 | 4 KiB p99 | 64 KiB p50 | 64 KiB p99 |\n|---|---|---|---|---|---|---|");
    for mode in ["direct", "msync", "pv", "pv-poll"] {
        let _ = write!(m, "| {mode} |");
        for b in [64u64, 4096, 65536] {
            let _ = write!(
                m,
                " {:.1} | {:.1} |",
                lat_of(mode, b, "p50_us"),
                lat_of(mode, b, "p99_us")
            );
        }
        let _ = writeln!(m);
    }
    let per_hint: Vec<String> = [64u64, 4096, 65536]
        .iter()
        .map(|&b| {
            format!(
                "{b} B {:.2} µs",
                lat_of("pv-poll", b, "host_cpu_us_per_hint")
            )
        })
        .collect();
    let _ = writeln!(m, "\nHost CPU per completed hint, `pv-poll` (the poller thread's CPU time / the entries it completed, \
spinning included): {}.", per_hint.join(", "));
    let _ = writeln!(m, "\nEach mode persists its ranges once untimed before the timed persists: the data has its PM homes, \
as in a running PM program (a page's first persist also writes it whole into its new home). ");
    let _ = writeln!(m, "`direct` acknowledges a hint without doing anything (ADR semantics: the guest's own clwb would be its persist); \
        it is the exit floor plus the hint ring. `full` has no persist call: its durability is the epoch. \
`pv-poll` is `pv` with the ring poller (ABI 1.1 polled rings, `--poll-us {}`, `vpm guest`'s default): the guest publishes \
and does not exit while a host thread polls; that thread needs a host core of its own, which this 2-core machine can give \
only when nothing else runs.\n", doc["poller_idle"]["poll_us"]);

    let _ = writeln!(m, "## Throughput (ops/s)\n\n![throughput](throughput.svg)\n\nRates are the guest's steady-state window (after first touch and a \
warm-up; VM start excluded). `direct`, `full-10ms` and `full-100ms` ran three times each, interleaved, and show their median run \
(all three in results.json, `runs_ops_per_s`); a full run, not `--quick`, is needed for that. The targets compare each \
full run with the direct run of its own round and take the median of those side-by-side ratios (`direct_ratio_runs`): \
this shared host's load swings by ±10 % within minutes, and a ratio of two medians would carry the swing.\n\n| workload | direct | msync | full-10ms | full-100ms | pv | pv-poll | epochs (full-100ms) | pause per MiB dirtied (full-100ms) | host CPU per hint (pv-poll) |\n|---|---|---|---|---|---|---|---|---|---|");
    let tp = |w: &str, mo: &str| find(tput, |r| r["workload"] == w && r["mode"] == mo);
    for w in WRITE_WORKLOADS.iter().chain(&["transient scratch"]) {
        let _ = write!(m, "| {w} |");
        for mo in THROUGHPUT_MODES {
            let v = tp(w, mo).map_or(f64::NAN, |r| f(&r["ops_per_s"]));
            let _ = write!(
                m,
                " {} |",
                if v.is_nan() {
                    "–".into()
                } else {
                    format!("{v:.0}")
                }
            );
        }
        let full = tp(w, "full-100ms");
        let per_mib = full.map_or(f64::NAN, |r| {
            f(&r["pause_us_total"]) / f(&r["dirty_mib"]).max(1e-9)
        });
        let cpu = tp(w, "pv-poll").map_or(f64::NAN, |r| f(&r["host_cpu_us_per_hint"]));
        let _ = writeln!(
            m,
            " {} | {:.0} µs | {} |",
            full.map_or("–".into(), |r| r["epochs"].to_string()),
            per_mib,
            if cpu.is_nan() {
                "–".into()
            } else {
                format!("{cpu:.2} µs")
            }
        );
    }
    for mib in [32, 64, 128, 512] {
        let w = format!("kv puts {mib} MiB");
        if tp(&w, "direct").is_none() && tp(&w, "full-100ms").is_none() {
            continue;
        }
        let (full, direct) = (tp(&w, "full-100ms"), tp(&w, "direct"));
        let rate = |r: Option<&Value>| r.map_or(f64::NAN, |r| f(&r["ops_per_s"]));
        let _ = writeln!(
            m,
            "| kv puts, {mib} MiB vPM | {:.0} | – | – | {:.0} | – | – | {} | max pause {:.0} ms | – |",
            rate(direct),
            rate(full),
            full.map_or("–".into(), |r| r["epochs"].to_string()),
            full.map_or(f64::NAN, |r| f(&r["pause_us_max"]) / 1000.0)
        );
    }
    m += &staged_md(tput);
    let t_off = tp("transient scratch", "pv").map_or(f64::NAN, |r| f(&r["ops_per_s"]));
    let t_on = tp("transient scratch", "pv+transient").map_or(f64::NAN, |r| f(&r["ops_per_s"]));
    let _ = writeln!(m, "\nTransient-scratch job (rounds/s): pv {t_off:.1}, pv with transient hints {t_on:.1} (×{:.2}).\n", t_on / t_off);
    m += &poller_md(doc, tput);
    m += &smp_md(rows(doc, "smp"));

    let _ = writeln!(m, "## Consolidation: 4 VMs, one pool\n\n![consolidation](consolidation.svg)\n\nEach VM runs random 4 KiB writes with a persist each (ops = writes) or, with transient hints, \
the transient-scratch job (ops = rounds, each rewriting a 4 MiB scratch region marked transient): \
compare pool sizes within a row group, not the two groups.\n\n\
| pool (% of summed vPM) | transient hints | total ops/s | PM bytes written | capacity-tier bytes |\n|---|---|---|---|---|");
    for r in cons {
        let _ = writeln!(
            m,
            "| {} | {} | {:.0} | {} | {} |",
            r["pool_pct"],
            r["transient_hints"],
            f(&r["ops_per_s"]),
            r["pm_bytes_written"],
            r["capacity_bytes_written"]
        );
    }
    let _ = writeln!(m, "\n## Recovery after kill -9\n\nThe writer commits no epoch before the kill, so the recovered image must be the fill, page for page \
(checksums taken outside the pool).\n\n| vPM | committed epoch | PM homes | pages differing from the committed image | open + verify + replay | rebuild (read every page) |\n|---|---|---|---|---|---|");
    for r in rec {
        let _ = writeln!(
            m,
            "| {} MiB | {} | {} | {} | {:.1} ms | {:.1} ms |",
            r["vpm_mib"],
            r["epoch"],
            r["homes"],
            r["mismatched_pages"],
            f(&r["open_verify_ms"]),
            f(&r["rebuild_read_ms"])
        );
    }

    let _ = writeln!(m, "\n### Reading the figures on this machine\n\n\
- Every PV persist pays one VM exit; here that is {exit_us:.0} µs (PVM), which dominates the 4 KiB copy+flush ({:.1} µs). \
On VMX the exit is a few µs, hence the projection: host work per persist = the mode's p50 minus `direct`'s p50 \
(same exit and ring, nothing to do), plus a stated VMX exit cost (`--vmx-exit-us`). \
With the ring poller (`pv-poll`) the guest publishes without an exit while a host thread polls: what is left is the \
host's copy and flush and the guest's wait for completion. A synchronous persist per KV put still bounds `pv-poll` \
throughput by that round trip, and the poller needs a host core of its own (2 here, shared with the vCPU).\n\
- `full` and `direct` run the same guest code; `full` additionally pauses the vCPU for each epoch (see pause per MiB dirtied). \
Dirty logging write-protects pages, and each first write after a protection costs a fault (~20 µs on PVM, docs/costs.md §3); \
VPM leaves recently changed pages writable and diffs them at each epoch instead (ski rental, `host-service/src/vmm/writable.rs`), \
so the pause grows with the pages written recently while the faults mostly disappear. The random and sequential \
workloads rewrite the whole 32 MiB vPM within every epoch, so each 100 ms epoch pauses for 32 MiB × the pause per MiB: \
that pause, not the faults, is what separates them from `direct`.\n\
- Consolidation: at 25 % the pool holds about a quarter of the homes; the rest live in the capacity file (fdatasync at \
each drain, see capacity-tier bytes). Run-to-run noise on this machine is about ±10 % for these 4-VM runs.\n\
- PM bytes per persisted byte above 1 come from pages getting their first home (written whole, 4 KiB) and from \
persists smaller than a line (64 B is the unit written).\n", floor(4096));
    m
}

/// The computed targets and the VMX projection with its inputs.
fn targets_md(doc: &Value, targets: &[Target], vmx_exit_us: f64) -> String {
    let mut m = String::new();
    let met = targets.iter().filter(|t| t.met).count();
    let _ = writeln!(
        m,
        "\n## Targets (computed from this run's numbers)\n\n{met} of {} met; \
         `vpm-bench suite --check` exits non-zero when any is missed.\n\n\
         | target | measured | verdict |\n|---|---|---|",
        targets.len()
    );
    for t in targets {
        let _ = writeln!(m, "| {} | {} | {} |", t.name, t.measured, t.verdict());
    }
    let _ = writeln!(
        m,
        "\n## Projection to VMX (not a target)\n\nInputs: the persist p50s measured above, and an \
         assumed VM exit of {vmx_exit_us} µs on VMX (`--vmx-exit-us`). Host work per persist = the \
         mode's p50 minus `direct`'s (same exit and ring, nothing to do); projected = host work + \
         the assumed exit.\n\n| size | direct p50 | pv p50 | msync p50 | projected pv | \
         projected msync | msync / pv |\n|---|---|---|---|---|---|---|"
    );
    for (b, pv, ms, r) in targets::vmx_projection(doc, vmx_exit_us) {
        let _ = writeln!(
            m,
            "| {b} B | {:.1} µs | {:.1} µs | {:.1} µs | {pv:.1} µs | {ms:.1} µs | ×{r:.1} |",
            targets::lat(doc, "direct", b),
            targets::lat(doc, "pv", b),
            targets::lat(doc, "msync", b)
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_smp_table_has_a_row_per_workload_and_mode_and_a_column_per_vcpu_count() {
        let row = |w: &str, mo: &str, v: u64, ops: f64| json!({"workload": w, "mode": mo, "vcpus": v, "ops_per_s": ops, "ring_hints": [1, 2]});
        let smp = [
            row("kv puts", "pv-poll", 1, 100.0),
            row("kv puts", "pv-poll", 2, 180.0),
            row("kv puts", "pv-doorbell", 4, 40.0),
        ];
        let md = smp_md(&smp);
        assert!(
            md.contains("| kv puts | pv-poll | 100 | 180 | – | – |"),
            "{md}"
        );
        assert!(
            md.contains("| kv puts | pv-doorbell | – | – | 40 | [1,2] |"),
            "{md}"
        );
        assert_eq!(smp_md(&[]), "");
    }

    #[test]
    fn the_ring_floor_the_idle_poller_and_cpu_per_hint_are_reported() {
        let tput = vec![
            json!({"workload": "kv puts", "mode": "direct", "ops_per_s": 1000.0}),
            json!({"workload": "kv puts", "mode": "pv", "ops_per_s": 10.0}),
            json!({"workload": "kv puts", "mode": "pv-poll", "ops_per_s": 300.0, "host_cpu_us_per_hint": 1.25}),
        ];
        let doc = json!({
            "floors": {"exit_us": 40.0, "exit_p99_us": 90.0, "copy_flush_us": [],
                "ring_round_trip": {"p50_us": 0.55, "p99_us": 1.5, "poller_wakeups": 2, "entries": 3000}},
            "poller_idle": {"poll_us": 200, "hints": 200, "guest_window_s": 1.2, "window_s": 1.21,
                "poller_cpu_us_in_window": 180.0, "core_pct": 0.015, "poller_wakeups": 3,
                "host_cpu_us_per_hint": 2.0},
            "throughput": tput,
        });
        let md = markdown(&doc, &[], &tput, &[], &[]);
        assert!(
            md.contains("| VM exit round trip (guest `out` → VMM → guest) | 40.0 µs | 90.0 µs |"),
            "{md}"
        );
        assert!(
            md.contains("completion seen) | 0.55 µs | 1.50 µs |"),
            "{md}"
        );
        let kv = md.lines().find(|l| l.starts_with("| kv puts |")).unwrap();
        assert!(kv.ends_with("| 1.25 µs |"), "{kv}");
        assert!(
            md.contains("`pv-poll` ×30.0 `pv` (doorbell), 30.00 % of `direct`"),
            "{md}"
        );
        assert!(
            md.contains("180 µs of CPU in 1.210 s: 0.015 % of a core"),
            "{md}"
        );
    }

    #[test]
    fn the_targets_table_is_the_computed_targets_and_vmx_is_only_a_projection() {
        let mut lat = Vec::new();
        for b in [64u64, 4096, 65536] {
            for (m, us) in [("direct", 20.0), ("msync", 900.0), ("pv", 25.0)] {
                lat.push(json!({"mode": m, "bytes": b, "p50_us": us}));
            }
        }
        let doc = json!({"persist_latency": lat});
        let targets = [
            Target {
                name: "t1".into(),
                measured: "50 %".into(),
                met: false,
            },
            Target {
                name: "t2".into(),
                measured: "1".into(),
                met: true,
            },
        ];
        let md = targets_md(&doc, &targets, 2.5);
        assert!(md.contains("1 of 2 met"), "{md}");
        assert!(md.contains("| t1 | 50 % | **missed** |"), "{md}");
        assert!(md.contains("| t2 | 1 | met |"), "{md}");
        let (table, projection) = md.split_once("## Projection to VMX").unwrap();
        assert!(!table.to_lowercase().contains("vmx"), "{table}");
        assert!(
            projection.contains("assumed VM exit of 2.5 µs"),
            "{projection}"
        );
        // 64 B: pv 25 - 20 + 2.5 = 7.5, msync 900 - 20 + 2.5 = 882.5.
        assert!(
            projection
                .contains("| 64 B | 20.0 µs | 25.0 µs | 900.0 µs | 7.5 µs | 882.5 µs | ×117.7 |"),
            "{projection}"
        );
    }
}

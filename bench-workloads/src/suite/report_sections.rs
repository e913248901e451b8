//! Sections of the suite's report beyond the main tables: the polled ring against the doorbell,
//! PV throughput by vCPU count, and full virtualization by vPM size (staged epochs against
//! stop-and-commit).

use std::fmt::Write as _;

use serde_json::Value;

use super::report::{f, find};

/// The polled ring against the doorbell and direct (KV puts), and the poller while idle.
pub(super) fn poller_md(doc: &Value, tput: &[Value]) -> String {
    let tp = |w: &str, mo: &str| {
        find(tput, |r| r["workload"] == w && r["mode"] == mo)
            .map_or(f64::NAN, |r| f(&r["ops_per_s"]))
    };
    let (poll, pv, direct) = (
        tp("kv puts", "pv-poll"),
        tp("kv puts", "pv"),
        tp("kv puts", "direct"),
    );
    let i = &doc["poller_idle"];
    format!(
        "## The ring poller: polled against doorbell, and idle\n\n\
KV puts: `pv-poll` ×{:.1} `pv` (doorbell), {:.2} % of `direct` ({poll:.0} vs {pv:.0} vs {direct:.0} puts/s).\n\n\
Idle: a PV guest with the poller on (`--poll-us {}`) sends {} persists, computes for {:.2} s without a hint (busy, \
not halted), then persists again; the host reads the poller thread's CPU clock when the guest marks the start and the \
end of that window (a progress exit each). Over the window the poller used {:.0} µs of CPU in {:.3} s: {:.3} % of a \
core (it spins for `--poll-us` after the last hint, then sleeps on the doorbell). Whole job: {} doorbell wake-ups, \
{:.2} µs of poller CPU per completed hint.\n\n",
        poll / pv,
        100.0 * poll / direct,
        i["poll_us"],
        i["hints"],
        f(&i["guest_window_s"]),
        f(&i["poller_cpu_us_in_window"]),
        f(&i["window_s"]),
        f(&i["core_pct"]),
        i["poller_wakeups"],
        f(&i["host_cpu_us_per_hint"]),
    )
}

/// PV throughput at 1, 2 and 4 vCPUs (one writer and one ring per vCPU), polled and with a
/// doorbell per batch.
pub(super) fn smp_md(smp: &[Value]) -> String {
    if smp.is_empty() {
        return String::new();
    }
    let mut m = String::from(
        "## PV with 1, 2 and 4 vCPUs\n\nOne writer and one hint ring per vCPU, each on its own \
slice of vPM; ops/s summed over the vCPUs, the median of 3 runs (wall time of the run, boot \
included; polled runs do ten times the operations). This machine has 2 host cores: with polling, \
the vCPU threads and the poller share them.\n\n| workload | mode | 1 vCPU | 2 vCPUs | 4 vCPUs | \
ring hints at 4 vCPUs |\n|---|---|---|---|---|---|\n",
    );
    let mut keys: Vec<(String, String)> = Vec::new();
    for r in smp {
        let k = (
            r["workload"].as_str().unwrap_or("?").to_string(),
            r["mode"].as_str().unwrap_or("?").to_string(),
        );
        if !keys.contains(&k) {
            keys.push(k);
        }
    }
    for (w, mo) in keys {
        let at = |v: u64| {
            find(smp, |r| {
                r["workload"] == w.as_str() && r["mode"] == mo.as_str() && r["vcpus"] == v
            })
        };
        let cell =
            |v: u64| at(v).map_or("–".to_string(), |r| format!("{:.0}", f(&r["ops_per_s"])));
        let hints = at(4).map_or("–".to_string(), |r| r["ring_hints"].to_string());
        let _ = writeln!(
            m,
            "| {w} | {mo} | {} | {} | {} | {hints} |",
            cell(1),
            cell(2),
            cell(4)
        );
    }
    m.push('\n');
    m
}

/// Full virtualization by vPM size: the staged commit (the default) and stop-and-commit,
/// each against direct, with their steady-state pauses and epoch lengths.
pub(super) fn staged_md(tput: &[Value]) -> String {
    let mut m = String::from(
        "\nKV puts by vPM size, 100 ms epochs, steady-state window: the staged commit (the pause \
copies the dirty pages into staging, the commit runs after the guest resumed) against \
stop-and-commit (the whole commit in the pause). An epoch lasts the interval or the commit, \
whichever is longer.\n\n| vPM | direct ops/s | staged: % of direct | pause p50 / p99 (window) | \
mean epoch | stop-and-commit: % of direct | pause p50 / p99 (window) | mean epoch |\n|---|---|---|---|---|---|---|---|\n",
    );
    let row = |w: &str, mo: &str| find(tput, |r| r["workload"] == w && r["mode"] == mo);
    let cells = |r: Option<&Value>, direct: f64| {
        r.map_or("– | – | –".into(), |r| {
            let e = &r["epoch"];
            let epoch_ms = f(&r["window_s"]) * 1e3 / f(&r["window_epochs"]).max(1.0);
            format!(
                "{:.0} % | {:.1} / {:.1} ms | {epoch_ms:.0} ms",
                100.0 * f(&r["ops_per_s"]) / direct,
                f(&e["window_pause_us_p50"]) / 1e3,
                f(&e["window_pause_us_p99"]) / 1e3,
            )
        })
    };
    for mib in [32, 128, 512] {
        let w = format!("kv puts {mib} MiB");
        let Some(direct) = row(&w, "direct").map(|r| f(&r["ops_per_s"])) else {
            continue;
        };
        let _ = writeln!(
            m,
            "| {mib} MiB | {direct:.0} | {} | {} |",
            cells(row(&w, "full-100ms"), direct),
            cells(row(&w, "full-100ms-stop"), direct)
        );
    }
    m
}

//! What one guest run printed (fsync latencies, the fsync count, vpm.ko counters), QEMU's
//! fsyncs as strace saw them, and the comparison: one row per configuration, the markdown table
//! and the verdict on "VPM block host bytes per fsync ≤ 1/10 of virtio-pmem's".

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::stats::percentile;

/// The target: VPM block's host bytes per fsync at most this fraction of virtio-pmem's.
pub const TARGET_RATIO: f64 = 0.1;

/// Why a console or trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The guest's bench did not finish (no `VPMFS bench done`); the tail of the console.
    #[error("the guest's bench did not finish; console tail:\n{0}")]
    Unfinished(String),
    /// A line the bench prints is missing or malformed.
    #[error("no well-formed `{0}` line in the console")]
    Missing(&'static str),
}

/// What the guest's `fsyncer bench` printed.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestRun {
    /// Guest-visible latency of every fsync(2), ns (guest clock).
    pub latencies_ns: Vec<u64>,
    /// fsync(2) calls of the syncing writer.
    pub fsyncs: u64,
    /// Bytes the never-syncing writer wrote.
    pub nosync_bytes: u64,
    /// vpm.ko's counters before and after the bench (empty without the module).
    pub before: HashMap<String, u64>,
    /// See `before`.
    pub after: HashMap<String, u64>,
}

impl GuestRun {
    /// The change of a vpm.ko counter over the bench (0 when absent).
    pub fn delta(&self, key: &str) -> u64 {
        let get = |m: &HashMap<String, u64>| m.get(key).copied().unwrap_or(0);
        get(&self.after).saturating_sub(get(&self.before))
    }

    /// Latency percentile `p`, µs.
    pub fn latency_us(&self, p: f64) -> f64 {
        let mut v: Vec<f64> = self.latencies_ns.iter().map(|&n| n as f64 / 1e3).collect();
        percentile(&mut v, p)
    }
}

/// Parses the guest console of a bench boot.
pub fn parse_console(console: &str) -> Result<GuestRun, ReportError> {
    if !console.contains("VPMFS bench done") {
        let tail: Vec<&str> = console.lines().rev().take(25).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ReportError::Unfinished(tail.join("\n")));
    }
    let field = |prefix: &str| {
        console
            .lines()
            .find_map(|l| l.trim_end().strip_prefix(prefix)?.parse::<u64>().ok())
    };
    let counters = |prefix: &str| -> HashMap<String, u64> {
        let line = console
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .chunks(2)
            .filter_map(|kv| Some((kv[0].to_string(), kv.get(1)?.parse().ok()?)))
            .collect()
    };
    let latencies_ns: Vec<u64> = console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("FSYNC-LAT ")?.parse().ok())
        .collect();
    let fsyncs = field("FSYNCER bench fsyncs=").ok_or(ReportError::Missing("FSYNCER bench"))?;
    if latencies_ns.len() as u64 != fsyncs || fsyncs == 0 {
        return Err(ReportError::Missing("FSYNC-LAT"));
    }
    Ok(GuestRun {
        latencies_ns,
        fsyncs,
        nosync_bytes: field("FSYNCER nosync_bytes=")
            .ok_or(ReportError::Missing("FSYNCER nosync_bytes"))?,
        before: counters("VPMFS stats-before "),
        after: counters("VPMFS stats-after "),
    })
}

/// QEMU's fsync/fdatasync calls in an `strace -f -T` output: (count, total seconds).
pub fn parse_strace(trace: &str) -> (u64, f64) {
    trace
        .lines()
        // A call another thread interrupted is split: `fsync(12 <unfinished ...>` then
        // `<... fsync resumed>) = 0 <t>`; the second line carries the time.
        .filter(|l| {
            [
                "fsync(",
                "fdatasync(",
                "fsync resumed>",
                "fdatasync resumed>",
            ]
            .iter()
            .any(|c| l.contains(c))
        })
        .filter(|l| !l.contains("<unfinished") && l.contains(" = 0 "))
        .filter_map(|l| {
            let t = l.trim_end().strip_suffix('>')?;
            t[t.rfind('<')? + 1..].parse::<f64>().ok()
        })
        .fold((0, 0.0), |(n, s), t| (n + 1, s + t))
}

/// One configuration's figures.
#[derive(Debug, Clone)]
pub struct Row {
    /// Short name: virtio-pmem, vpm-full, vpm-block.
    pub name: &'static str,
    /// What the guest used.
    pub setup: String,
    /// The guest's run.
    pub guest: GuestRun,
    /// Bytes the host made durable during the bench boot.
    pub host_bytes: u64,
    /// How `host_bytes` was measured.
    pub bytes_source: String,
    /// Host time per guest fsync, µs.
    pub host_us_per_fsync: f64,
    /// How the host time was measured.
    pub time_source: String,
    /// Raw figures of this configuration (host stats, trace counts).
    pub detail: Value,
}

impl Row {
    /// Host bytes made durable per guest fsync.
    pub fn bytes_per_fsync(&self) -> f64 {
        self.host_bytes as f64 / self.guest.fsyncs.max(1) as f64
    }
}

/// The verdict: VPM block / virtio-pmem host bytes per fsync, and whether it meets the target.
pub fn verdict(rows: &[Row]) -> Option<(f64, bool)> {
    let per = |n: &str| rows.iter().find(|r| r.name == n).map(Row::bytes_per_fsync);
    let (blk, vp) = (per("vpm-block")?, per("virtio-pmem")?);
    if vp <= 0.0 {
        return None;
    }
    let ratio = blk / vp;
    Some((ratio, ratio <= TARGET_RATIO))
}

/// A check of the verdict that does not depend on the host's page-cache granularity: VPM block's
/// host bytes per fsync against virtio-pmem's floor, the unsynced bytes its guest stored into the
/// DAX-mapped backing file per fsync (each op's 1 MiB lands between two flushes, so some QEMU
/// fsync must write it even at 4 KiB granularity).
pub fn floor_ratio(rows: &[Row]) -> Option<f64> {
    let blk = rows.iter().find(|r| r.name == "vpm-block")?;
    let vp = rows.iter().find(|r| r.name == "virtio-pmem")?;
    let floor = vp.guest.nosync_bytes as f64 / vp.guest.fsyncs.max(1) as f64;
    (floor > 0.0).then(|| blk.bytes_per_fsync() / floor)
}

/// The markdown table, the verdict line and notes.
pub fn markdown(rows: &[Row], platform: &str) -> String {
    let mut s = String::from(
        "| configuration | guest fsyncs | host bytes durable / fsync | host time / fsync (µs) \
         | guest fsync p50 (µs) | guest fsync p99 (µs) |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        s += &format!(
            "| {} — {} | {} | {:.0} | {:.1} | {:.0} | {:.0} |\n",
            r.name,
            r.setup,
            r.guest.fsyncs,
            r.bytes_per_fsync(),
            r.host_us_per_fsync,
            r.guest.latency_us(50.0),
            r.guest.latency_us(99.0)
        );
    }
    s += "\n";
    s += &match verdict(rows) {
        Some((ratio, ok)) => format!(
            "VPM block / virtio-pmem host bytes per fsync = {ratio:.4} (target ≤ {TARGET_RATIO}): {}\n",
            if ok { "MET" } else { "NOT MET" }
        ),
        None => "VPM block / virtio-pmem: not computed (a configuration is missing)\n".into(),
    };
    if let Some(f) = floor_ratio(rows) {
        s += &format!(
            "Against virtio-pmem's floor (its guest's unsynced bytes per fsync, which its flushes \
             must write even at 4 KiB granularity): {f:.4}\n"
        );
    }
    s += "\nHow each column was measured:\n\n";
    for r in rows {
        s += &format!(
            "- {}: bytes — {}; time — {}\n",
            r.name, r.bytes_source, r.time_source
        );
    }
    s += &format!(
        "\nThe guest (Linux 7.3, 1 vCPU) runs under QEMU TCG (no hardware virtualization for a \
         Linux guest on this host), so guest latencies are TCG's, on the guest clock (TSC \
         frequency given to the guest as the host's). Host: {platform}.\n"
    );
    s
}

/// The JSON results.
pub fn to_json(rows: &[Row], platform: &str) -> Value {
    let rows_json: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "setup": r.setup,
                "guest_fsyncs": r.guest.fsyncs,
                "nosync_bytes": r.guest.nosync_bytes,
                "host_bytes": r.host_bytes,
                "host_bytes_per_fsync": r.bytes_per_fsync(),
                "bytes_source": r.bytes_source,
                "host_us_per_fsync": r.host_us_per_fsync,
                "time_source": r.time_source,
                "guest_fsync_us_p50": r.guest.latency_us(50.0),
                "guest_fsync_us_p99": r.guest.latency_us(99.0),
                "detail": r.detail,
            })
        })
        .collect();
    let v = verdict(rows);
    json!({
        "rows": rows_json,
        "ratio_block_over_virtio_pmem": v.map(|x| x.0),
        "target_ratio": TARGET_RATIO,
        "target_met": v.map(|x| x.1),
        "ratio_block_over_virtio_pmem_floor": floor_ratio(rows),
        "guest_accel": "tcg",
        "platform": platform,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn console(lat: &[u64], extra: &str) -> String {
        let mut s = String::from("VPMFS stats-before blk_flush_bytes 100 blk_fua_bytes 0\n");
        for l in lat {
            s += &format!("FSYNC-LAT {l}\n");
        }
        s += &format!(
            "FSYNCER nosync_bytes=3145728\nFSYNCER bench fsyncs={}\n",
            lat.len()
        );
        s += "VPMFS stats-after blk_flush_bytes 8292 blk_fua_bytes 4096\n";
        s + extra
    }

    fn row(name: &'static str, bytes: u64, fsyncs: usize) -> Row {
        let c = console(&vec![1000; fsyncs], "VPMFS bench done\n");
        Row {
            name,
            setup: "s".into(),
            guest: parse_console(&c).unwrap(),
            host_bytes: bytes,
            bytes_source: "b".into(),
            host_us_per_fsync: 1.0,
            time_source: "t".into(),
            detail: Value::Null,
        }
    }

    #[test]
    fn a_console_parses_into_latencies_counts_and_counter_deltas() {
        let g = parse_console(&console(&[3000, 1000, 2000], "VPMFS bench done\n")).unwrap();
        assert_eq!(g.fsyncs, 3);
        assert_eq!(g.nosync_bytes, 3 << 20);
        assert_eq!(g.delta("blk_flush_bytes"), 8192);
        assert_eq!(g.delta("blk_fua_bytes"), 4096);
        assert_eq!(g.delta("absent"), 0);
        assert_eq!(g.latency_us(50.0), 2.0);
        assert_eq!(g.latency_us(99.0), 3.0);
        // Unfinished, or latencies that do not match the count, are refused.
        assert!(matches!(
            parse_console(&console(&[1], "")),
            Err(ReportError::Unfinished(_))
        ));
        let short = console(&[1, 2], "VPMFS bench done\n").replace("FSYNC-LAT 2\n", "");
        assert!(matches!(
            parse_console(&short),
            Err(ReportError::Missing("FSYNC-LAT"))
        ));
    }

    #[test]
    fn strace_fsyncs_are_counted_with_their_times() {
        let t = "101 fsync(12) = 0 <0.002500>\n\
                 102 fdatasync(12) = 0 <0.000500>\n\
                 103 fsync(12 <unfinished ...>\n\
                 103 <... fsync resumed>) = 0 <0.001000>\n\
                 104 write(1, \"x\", 1) = 1 <0.000010>\n";
        let (n, s) = parse_strace(t);
        assert_eq!(
            n, 3,
            "a split call counts once, with the resumed line's time"
        );
        assert!((s - 0.004).abs() < 1e-9);
    }

    #[test]
    fn the_verdict_is_the_ratio_of_bytes_per_fsync_against_one_tenth() {
        let met = [
            row("virtio-pmem", 1_000_000, 10),
            row("vpm-block", 50_000, 5),
        ];
        let (r, ok) = verdict(&met).unwrap();
        assert!((r - 0.1).abs() < 1e-12 && ok, "{r}");
        let missed = [
            row("virtio-pmem", 1_000_000, 10),
            row("vpm-block", 60_000, 5),
        ];
        assert_eq!(verdict(&missed).map(|v| v.1), Some(false));
        assert!(verdict(&missed[..1]).is_none());
        let md = markdown(&missed, "p");
        assert!(md.contains("NOT MET") && md.contains("TCG"), "{md}");
        assert_eq!(to_json(&met, "p")["target_met"], json!(true));
        // The floor: virtio-pmem's 3 MiB of unsynced bytes over its 10 fsyncs.
        let f = floor_ratio(&met).unwrap();
        assert!(
            (f - 10_000.0 / (3 << 20) as f64 * 10.0).abs() < 1e-12,
            "{f}"
        );
    }
}

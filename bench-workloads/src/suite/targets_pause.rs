//! The suite's epoch pause targets, computed from a run's rows: a row's pause p99 (steady state
//! where the guest marked a window) and, beside it, what the row's stops copied.

use serde_json::Value;

use super::targets::{f, missing, rows, Target};

/// A row's epoch pause p99 in µs, and what it is: the p99 of the pauses within the guest's
/// timed window (`window_pause_us_p99`: steady state, like the throughputs) with the whole
/// run's p99 beside it; else the whole run's `pause_us_p99`; else the longest pause (an upper
/// bound of the p99, so a met bound stays met).
pub fn pause_p99_us(row: &Value) -> Option<(f64, String)> {
    let run = row["pause_us_p99"].as_f64();
    if let Some(p) = row["window_pause_us_p99"].as_f64().filter(|&p| p > 0.0) {
        let run = run.map_or(String::new(), |r| {
            format!("; whole run {:.2} ms", r / 1000.0)
        });
        return Some((p, format!("p99 in the timed window{run}")));
    }
    if let Some(p) = run {
        return Some((p, "p99".into()));
    }
    row["pause_us_max"]
        .as_f64()
        .map(|p| (p, "max, bounds p99".into()))
}

/// A pause target: the row of `workload` in `mode` has a p99 pause ≤ `max_us`.
pub(super) fn pause(doc: &Value, workload: &str, mode: &str, max_us: f64) -> Target {
    let name = format!(
        "epoch pause p99 ≤ {} ms ({workload}, {mode})",
        max_us / 1000.0
    );
    let row = rows(doc, "throughput")
        .iter()
        .find(|r| r["workload"] == workload && r["mode"] == mode);
    match row.and_then(pause_p99_us) {
        Some((p, what)) => Target {
            name,
            measured: format!(
                "{:.2} ms ({what}){}",
                p / 1000.0,
                row.and_then(stop_copy).unwrap_or_default()
            ),
            met: p <= max_us,
        },
        None => missing(name),
    }
}

/// What the staged stops of a row copied, from its counters: mean pages a stop, the copy's
/// time a page and their product, the part of each pause that grows with the pages dirtied
/// (the pause's floor while the guest dirties that much). `None` without staged stops.
pub fn stop_copy(row: &Value) -> Option<String> {
    let pages = f(&row["epoch"]["stop_copy_pages"]);
    let epochs = f(&row["epochs"]);
    if !(pages > 0.0 && epochs > 0.0) {
        return None;
    }
    let us_per_page = f(&row["epoch"]["pause_copy_us"]) / pages;
    let per_stop = pages / epochs;
    Some(format!(
        "; the stop's copy: {per_stop:.0} pages at {us_per_page:.3} µs, {:.2} ms",
        per_stop * us_per_page / 1000.0
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_pause_target_shows_what_the_stops_copied() {
        let row = json!({"window_pause_us_p99": 1500, "epochs": 10,
            "epoch": {"stop_copy_pages": 81920, "pause_copy_us": 12288}});
        assert_eq!(
            stop_copy(&row).unwrap(),
            "; the stop's copy: 8192 pages at 0.150 µs, 1.23 ms"
        );
        assert!(stop_copy(&json!({"window_pause_us_p99": 1500, "epochs": 3})).is_none());
    }
}

//! The suite's heat targets, computed from a run's rows: DRAM absorption of a skewed writer and
//! the PM bytes epoch commits write per changed byte.

use serde_json::Value;

use super::targets::{f, missing, ratio, rows, Target};

/// PM bytes per changed byte of random 64 B writes in full mode, in the steady-state window
/// (with the whole run's ratio, first homes included, beside it).
pub(super) fn amplification(doc: &Value) -> Target {
    let name =
        "full: epoch commits' PM bytes per changed byte ≤ 2 (random 64 B writes, steady state)"
            .to_string();
    let Some(r) = rows(doc, "write_amplification")
        .iter()
        .find(|r| r["workload"] == "random 64 B writes" && r["mode"] == "full-100ms")
    else {
        return missing(name);
    };
    let window = f(&r["window_pm_bytes"]) / f(&r["window_changed_bytes"]);
    let run = f(&r["pm_bytes_written"]) / f(&r["changed_bytes"]);
    if window.is_nan() || window.is_infinite() {
        return missing(name);
    }
    Target {
        name,
        measured: format!("{window:.2} (whole run with first homes: {run:.2})"),
        met: window <= 2.0,
    }
}

/// DRAM absorption: `direct`'s PM bytes ≥ 5 × `full-100ms`'s on the skewed workload, in the
/// timed window (steady state) when the rows have one. A row whose PM bytes leave something out (`uncounted`) gives only a lower bound of `full`'s bytes,
/// which cannot show the target met: it is shown, and counts as missed.
pub(super) fn absorption(doc: &Value) -> Target {
    let name = "DRAM absorption: direct writes ≥ 5 × the PM bytes of full (skewed)".to_string();
    let row = |mode: &str| rows(doc, "absorption").iter().find(|r| r["mode"] == mode);
    let (Some(d), Some(full)) = (row("direct"), row("full-100ms")) else {
        return missing(name);
    };
    // Steady state (the guest's timed window, the same operations in both) when both have it.
    let (dw, fw) = (&d["window"], &full["window"]);
    let (d_pm, f_pm) = if fw["pm_bytes_written"].as_f64().is_some_and(|b| b > 0.0) {
        (f(&dw["pm_bytes_written"]), f(&fw["pm_bytes_written"]))
    } else {
        (f(&d["pm_bytes_written"]), f(&full["pm_bytes_written"]))
    };
    let mut t = ratio(name, d_pm, f_pm, 5.0);
    if let Some(u) = full["uncounted"].as_str().filter(|u| !u.is_empty()) {
        t.measured = format!(
            "{}; full's bytes are a lower bound, not counted: {u}",
            t.measured
        );
        t.met = false;
    }
    t
}

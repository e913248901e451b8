//! A periodic NDJSON metrics line (as Firecracker's metrics file): every interval one JSON object
//! with the time, the pool's free space and each VM's main counters, appended to a file.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::service::Service;

/// One line: the service's counters now.
pub fn line(service: &Service) -> serde_json::Value {
    let t = service.table();
    let pool = service.pool.lock().expect("pool");
    let vms: serde_json::Map<String, serde_json::Value> = t
        .iter()
        .map(|(id, vm)| {
            let ts = vm
                .tenant()
                .and_then(|t| pool.tenant(t).ok())
                .map(|tn| tn.stats());
            let s = vm.stats().unwrap_or_default();
            let v = json!({
                "state": vm.state(),
                "epochs": ts.map_or(0, |x| x.epochs),
                "persists": ts.map_or(0, |x| x.persists),
                "pm_written_bytes": ts.map_or(0, |x| x.pm_home_bytes + x.log_bytes),
                "hints": s.hints_served,
                "hint_errors": s.hints_rejected,
                "dram_pages": s.dram_pages,
                "pm_pages": s.pm_pages,
                "epoch_pause_max_us": s.pause_us_max,
            });
            (id.clone(), v)
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    json!({
        "utc_time_s": now,
        "pool": { "free_pm_pages": pool.free_pm_pages(), "tenants": pool.tenant_ids().len() },
        "vms": vms,
    })
}

/// Appends a line to `path` every `interval`, for ever (the service's task is dropped at stop).
/// A write that fails is logged and the next one tried.
pub async fn write_every(service: std::sync::Arc<Service>, path: &Path, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let text = format!("{}\n", line(&service));
        let r = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| f.write_all(text.as_bytes()));
        if let Err(e) = r {
            tracing::warn!(path = %path.display(), error = %e, "metrics line not written");
        }
    }
}

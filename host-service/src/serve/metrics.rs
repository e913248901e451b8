//! `GET /metrics`: the service's counters in the Prometheus text exposition format (version
//! 0.0.4). Names carry the `vpm_` prefix and base units; counters end in `_total`. Per-VM series
//! carry the label `vm` (the VM id); pool series have no label.

use std::fmt::Write;

use super::service::Service;
use super::vms::VmState;
use crate::vmm::VmStats;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// One metric family being written: its HELP and TYPE lines, then its samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn sample(&mut self, name: &str, labels: &str, value: f64) {
        if labels.is_empty() {
            let _ = writeln!(self.out, "{name} {value}");
        } else {
            let _ = writeln!(self.out, "{name}{{{labels}}} {value}");
        }
    }
}

fn family<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    Family { out }
}

/// Escapes a label value (backslash, double quote, newline).
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the exposition shows of one VM.
struct VmSample {
    labels: String,
    state: VmState,
    stats: VmStats,
    tenant: Option<crate::pool::TenantStats>,
    homes: (u64, u64),
    epoch: u64,
}

/// The exposition of `service` now.
pub fn render(service: &Service) -> String {
    let samples: Vec<VmSample> = {
        let t = service.table();
        let pool = service.pool.lock().expect("pool");
        t.iter()
            .map(|(id, vm)| {
                let tn = vm.tenant().and_then(|t| pool.tenant(t).ok());
                VmSample {
                    labels: format!("vm=\"{}\"", label(id)),
                    state: vm.state(),
                    stats: vm.stats().unwrap_or_default(),
                    tenant: tn.map(|t| t.stats()),
                    homes: tn.map_or((0, 0), |t| t.home_counts()),
                    epoch: tn.map_or(0, |t| t.epoch()),
                }
            })
            .collect()
    };
    let mut out = String::new();
    pool_metrics(service, &mut out, &samples);
    type Get = fn(&VmSample) -> f64;
    let per_vm: [(&str, &str, &str, Get); 15] = [
        (
            "vpm_vm_up",
            "gauge",
            "1 while the VM's guest runs or is paused.",
            |s| {
                f64::from(u8::from(matches!(
                    s.state,
                    VmState::Running | VmState::Paused
                )))
            },
        ),
        (
            "vpm_vm_paused",
            "gauge",
            "1 while the VM's vCPU is held.",
            |s| f64::from(u8::from(s.state == VmState::Paused)),
        ),
        (
            "vpm_vm_persists_total",
            "counter",
            "Persist batches the pool served for the VM.",
            |s| s.tenant.map_or(0, |t| t.persists) as f64,
        ),
        (
            "vpm_vm_persist_requested_bytes_total",
            "counter",
            "Bytes the guest asked to persist.",
            |s| s.tenant.map_or(0, |t| t.persist_requested_bytes) as f64,
        ),
        (
            "vpm_vm_hints_total",
            "counter",
            "Hint entries served with success (current run).",
            |s| s.stats.hints_served as f64,
        ),
        (
            "vpm_vm_hint_errors_total",
            "counter",
            "Hint entries refused plus header faults (current run).",
            |s| s.stats.hints_rejected as f64,
        ),
        (
            "vpm_vm_epochs_total",
            "counter",
            "Epochs the pool committed for the VM's tenant.",
            |s| s.tenant.map_or(0, |t| t.epochs) as f64,
        ),
        (
            "vpm_vm_epoch",
            "gauge",
            "The tenant's last committed epoch.",
            |s| s.epoch as f64,
        ),
        (
            "vpm_vm_pm_written_bytes_total",
            "counter",
            "Bytes written to PM for the VM (homes and redo log).",
            |s| s.tenant.map_or(0, |t| t.pm_home_bytes + t.log_bytes) as f64,
        ),
        (
            "vpm_vm_capacity_written_bytes_total",
            "counter",
            "Bytes written to the capacity file for the VM.",
            |s| s.tenant.map_or(0, |t| t.capacity_home_bytes) as f64,
        ),
        (
            "vpm_vm_dram_pages",
            "gauge",
            "vPM pages placed in DRAM (current run).",
            |s| s.stats.dram_pages as f64,
        ),
        (
            "vpm_vm_pm_pages",
            "gauge",
            "vPM pages placed in PM (current run).",
            |s| s.stats.pm_pages as f64,
        ),
        (
            "vpm_vm_pm_homes",
            "gauge",
            "vPM pages with a home in PM.",
            |s| s.homes.0 as f64,
        ),
        (
            "vpm_vm_capacity_homes",
            "gauge",
            "vPM pages with a home in the capacity file.",
            |s| s.homes.1 as f64,
        ),
        (
            "vpm_vm_poller_cpu_seconds_total",
            "counter",
            "CPU time of the VM's ring poller (current run).",
            |s| s.stats.poller_cpu_us as f64 / 1e6,
        ),
    ];
    for (name, kind, help, get) in per_vm {
        let mut f = family(&mut out, name, kind, help);
        for s in &samples {
            f.sample(name, &s.labels, get(s));
        }
    }
    let mut f = family(
        &mut out,
        "vpm_vm_page_moves_total",
        "counter",
        "Pages moved between the tiers (current run), by direction.",
    );
    for s in &samples {
        let l = &s.labels;
        f.sample(
            "vpm_vm_page_moves_total",
            &format!("{l},to=\"dram\""),
            s.stats.moved_to_dram as f64,
        );
        f.sample(
            "vpm_vm_page_moves_total",
            &format!("{l},to=\"pm\""),
            s.stats.moved_to_pm as f64,
        );
    }
    let name = "vpm_vm_epoch_pause_seconds";
    let mut f = family(
        &mut out,
        name,
        "summary",
        "vCPU pause per committed epoch (current run).",
    );
    for s in &samples {
        f.sample(
            &format!("{name}_sum"),
            &s.labels,
            s.stats.pause_us_total as f64 / 1e6,
        );
        f.sample(&format!("{name}_count"), &s.labels, s.stats.epochs as f64);
    }
    let mut f = family(
        &mut out,
        "vpm_vm_epoch_pause_max_seconds",
        "gauge",
        "Longest vCPU pause of an epoch (current run).",
    );
    for s in &samples {
        f.sample(
            "vpm_vm_epoch_pause_max_seconds",
            &s.labels,
            s.stats.pause_us_max as f64 / 1e6,
        );
    }
    out
}

fn pool_metrics(service: &Service, out: &mut String, samples: &[VmSample]) {
    let (size, data_pages, free, tenants) = {
        let pool = service.pool.lock().expect("pool");
        let h = pool.header();
        (
            h.total_bytes,
            h.data_pages,
            pool.free_pm_pages(),
            pool.tenant_ids().len(),
        )
    };
    let page = vpm_abi::PAGE_SIZE as f64;
    let started = service
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let gauges: [(&str, &str, f64); 6] = [
        ("vpm_pool_size_bytes", "Size of the pool file.", size as f64),
        (
            "vpm_pool_data_bytes",
            "Bytes of the pool that hold homes.",
            data_pages as f64 * page,
        ),
        (
            "vpm_pool_free_bytes",
            "Bytes of PM homes free in the pool.",
            free as f64 * page,
        ),
        ("vpm_pool_tenants", "Tenants in the pool.", tenants as f64),
        (
            "vpm_pool_recovery_seconds",
            "Time to open and recover the pool at service start.",
            service.recovery.as_secs_f64(),
        ),
        (
            "vpm_service_start_time_seconds",
            "Start of the service, Unix time.",
            started,
        ),
    ];
    for (name, help, v) in gauges {
        family(out, name, "gauge", help).sample(name, "", v);
    }
    let name = "vpm_vms";
    let mut f = family(out, name, "gauge", "VMs of the service by state.");
    for state in [
        VmState::Created,
        VmState::Running,
        VmState::Paused,
        VmState::ShuttingDown,
        VmState::Stopped,
        VmState::Failed,
    ] {
        let n = samples.iter().filter(|s| s.state == state).count();
        f.sample(name, &format!("state=\"{state}\""), n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

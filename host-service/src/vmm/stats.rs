//! Per-VM statistics, reported as JSON.

use serde::Serialize;

/// Everything a VM run counts.
#[derive(Clone, Debug, Default, Serialize)]
pub struct VmStats {
    /// Epochs committed.
    pub epochs: u64,
    /// Last committed epoch number.
    pub epoch: u64,
    /// vCPU pause per epoch: last, max, total (µs).
    pub pause_us_last: u64,
    /// Longest pause.
    pub pause_us_max: u64,
    /// Sum of pauses.
    pub pause_us_total: u64,
    /// Pages committed by epochs (with changes).
    pub committed_pages: u64,
    /// Dirty pages reported by KVM.
    pub dirty_pages: u64,
    /// Dirty pages the last epoch left writable (hot or transient; see `vmm::writable`).
    pub writable_pages_last: u64,
    /// Pages in DRAM now.
    pub dram_pages: u64,
    /// Most pages in DRAM seen at any sample.
    pub dram_pages_max: u64,
    /// The DRAM budget (pages).
    pub dram_budget_pages: u64,
    /// Pages in the PM tier now.
    pub pm_pages: u64,
    /// Pages moved PM → DRAM.
    pub moved_to_dram: u64,
    /// Pages moved DRAM → PM.
    pub moved_to_pm: u64,
    /// Remap calls (one per run of pages).
    pub remaps: u64,
    /// Hint entries completed with success.
    pub hints_served: u64,
    /// Hint entries refused, plus header faults.
    pub hints_rejected: u64,
    /// Doorbell RING commands.
    pub doorbells: u64,
    /// Doorbell bytes that were no command.
    pub doorbell_unknown: u64,
    /// Registrations refused (bad address or header).
    pub registrations_refused: u64,
    /// Rings stopped for a garbage index.
    pub rings_stopped: u64,
    /// Bytes the guest asked to persist.
    pub persist_requested_bytes: u64,
    /// Time spent in the pool serving persist hints, µs (the QEMU front; 0 elsewhere).
    pub persist_us: u64,
    /// Persist hint batches served (the QEMU front; 0 elsewhere).
    pub persist_calls: u64,
    /// Bytes written to the pool file (PM endurance).
    pub pm_bytes_written: u64,
    /// Bytes written to the capacity file.
    pub capacity_bytes_written: u64,
    /// msync calls of the whole region (msync mode).
    pub region_msyncs: u64,
    /// I/O exits handled.
    pub io_exits: u64,
    /// Progress exits.
    pub progress_exits: u64,
    /// CPU time of the ring poller thread (polled rings), µs.
    pub poller_cpu_us: u64,
    /// Times the ring poller was woken by a doorbell after sleeping.
    pub poller_wakeups: u64,
    /// Batches the ring poller found by polling, each one a doorbell the guest did not ring.
    pub doorbells_suppressed: u64,
    /// Hint entries the ring poller completed without a doorbell.
    pub poller_hints: u64,
}

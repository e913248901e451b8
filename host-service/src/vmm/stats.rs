//! Per-VM statistics, reported as JSON.

use std::time::Instant;

use serde::Serialize;

/// The `q`-quantile (0..=1) of `samples` by the nearest-rank rule; 0 when there are none.
pub fn quantile(samples: &[u32], q: f64) -> u64 {
    if samples.is_empty() {
        return 0;
    }
    let mut v = samples.to_vec();
    v.sort_unstable();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as u64
}

impl VmStats {
    /// Records one epoch pause of `us` microseconds.
    pub fn record_pause(&mut self, us: u64) {
        self.pause_us_last = us;
        self.pause_us_max = self.pause_us_max.max(us);
        self.pause_us_total += us;
        self.pauses_us.push(us.min(u32::MAX as u64) as u32);
    }

    /// Records a mark of the guest's timed window (`vpm_abi::harness::WINDOW_START` when `start`,
    /// else `WINDOW_END`) that arrived at `at`, with the guest's operations done then.
    pub fn window_mark(&mut self, start: bool, ops: u64, at: Instant) {
        if start {
            self.window_started = Some(WindowStart {
                at,
                ops,
                counters: self.clone_counters(),
                pauses: self.pauses_us.len(),
            });
            return;
        }
        let Some(w) = self.window_started.take() else {
            return;
        };
        let secs = at.duration_since(w.at).as_secs_f64();
        let c = w.counters;
        self.window_ops = ops.saturating_sub(w.ops);
        self.window_us = (secs * 1e6) as u64;
        self.window_epochs = self.epochs - c.epochs;
        self.window_wp_faults = self.wp_faults - c.wp_faults;
        self.window_epoch_pm_bytes = self.epoch_pm_bytes - c.epoch_pm_bytes;
        self.window_changed_bytes = self.changed_bytes - c.changed_bytes;
        self.window_moved_to_pm = self.moved_to_pm - c.moved_to_pm;
        self.window_pm_tier_store_bytes = self.pm_tier_store_bytes - c.pm_tier_store_bytes;
        self.window_pauses = Some((w.pauses, self.pauses_us.len()));
        self.window_ops_per_s = if secs > 0.0 {
            self.window_ops as f64 / secs
        } else {
            0.0
        };
    }

    fn clone_counters(&self) -> WindowCounters {
        WindowCounters {
            epochs: self.epochs,
            wp_faults: self.wp_faults,
            epoch_pm_bytes: self.epoch_pm_bytes,
            changed_bytes: self.changed_bytes,
            moved_to_pm: self.moved_to_pm,
            pm_tier_store_bytes: self.pm_tier_store_bytes,
        }
    }

    /// Fills in the pause percentiles from the recorded pauses: over the run, and over the
    /// pauses that began within the guest's timed window (steady state).
    pub fn finish_percentiles(&mut self) {
        self.pause_us_p50 = quantile(&self.pauses_us, 0.5);
        self.pause_us_p99 = quantile(&self.pauses_us, 0.99);
        if let Some((from, to)) = self.window_pauses {
            let window = &self.pauses_us[from.min(to)..to.min(self.pauses_us.len())];
            self.window_pause_us_p50 = quantile(window, 0.5);
            self.window_pause_us_p99 = quantile(window, 0.99);
        }
    }
}

/// The counters at the start of the guest's timed window.
#[derive(Clone, Copy, Debug)]
pub struct WindowCounters {
    epochs: u64,
    wp_faults: u64,
    epoch_pm_bytes: u64,
    changed_bytes: u64,
    moved_to_pm: u64,
    pm_tier_store_bytes: u64,
}

/// Where the guest's timed window started.
#[derive(Clone, Copy, Debug)]
pub struct WindowStart {
    at: Instant,
    ops: u64,
    counters: WindowCounters,
    /// Pauses recorded before the window.
    pauses: usize,
}

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
    /// Median epoch pause (µs), over the run's periodic and final epochs.
    pub pause_us_p50: u64,
    /// 99th-percentile epoch pause (µs).
    pub pause_us_p99: u64,
    /// Pause time spent fetching the dirty log (µs, total).
    pub pause_collect_us: u64,
    /// Pause time spent copying dirty pages into staging (pre-copy epochs; µs, total).
    pub pause_copy_us: u64,
    /// Pause time spent committing to the pool (stop-and-copy epochs; µs, total).
    pub pause_commit_us: u64,
    /// Pause time spent re-protecting pages (µs, total).
    pub pause_protect_us: u64,
    /// Pause time spent rebalancing the tiers (µs, total).
    pub pause_rebalance_us: u64,
    /// Time spent committing staged epochs while the vCPU runs (µs, total).
    pub commit_running_us: u64,
    /// Pre-copy rounds run while the vCPU ran.
    pub precopy_rounds: u64,
    /// Pages copied into staging by pre-copy rounds, while the vCPU ran.
    pub precopy_pages: u64,
    /// Pages copied while the vCPU was paused (into staging or fresh homes).
    pub stop_copy_pages: u64,
    /// Of those, pages streamed straight into fresh PM homes (pages rewritten whole epoch after
    /// epoch; their commit does not copy them again).
    pub stop_streamed_pages: u64,
    /// Guest bytes changed, at cache-line granularity: changed lines × 64, summed over epochs.
    pub changed_bytes: u64,
    /// Bytes epochs wrote to PM (redo log plus homes), summed over epochs.
    pub epoch_pm_bytes: u64,
    /// Bytes the guest stored into pages placed in the PM tier (their working copies are PM),
    /// from its own per-page counters (`vpm_abi::harness::FLAG_COUNT_STORES`); 0 without them.
    pub pm_tier_store_bytes: u64,
    /// Operations the guest did in its timed window (steady state: after the first touch of
    /// every page and a warm-up; see `vpm_abi::harness::WINDOW_START`); 0 without a window.
    pub window_ops: u64,
    /// Length of the timed window (µs), timestamped by the VMM at the guest's two marks.
    pub window_us: u64,
    /// Epochs committed within the timed window.
    pub window_epochs: u64,
    /// Write-protect faults counted by the epochs within the timed window.
    pub window_wp_faults: u64,
    /// `window_ops` per second of the window: the workload's steady-state throughput.
    pub window_ops_per_s: f64,
    /// Bytes epochs wrote to PM (redo log plus homes) within the timed window: in steady
    /// state, after every page's first home.
    pub window_epoch_pm_bytes: u64,
    /// Guest bytes changed (lines × 64) that the epochs within the timed window committed.
    pub window_changed_bytes: u64,
    /// Pages tier moves copied into the PM tier within the timed window.
    pub window_moved_to_pm: u64,
    /// `pm_tier_store_bytes` counted by the epochs within the timed window.
    pub window_pm_tier_store_bytes: u64,
    /// Median pause of the epochs that stopped within the timed window (µs).
    pub window_pause_us_p50: u64,
    /// 99th-percentile pause of the epochs that stopped within the timed window (µs).
    pub window_pause_us_p99: u64,
    /// When the window started, and the counters then; not reported.
    #[serde(skip)]
    pub window_started: Option<WindowStart>,
    /// The window's range of `pauses_us`; not reported.
    #[serde(skip)]
    pub window_pauses: Option<(usize, usize)>,
    /// Every epoch's pause (µs), for the percentiles; not reported.
    #[serde(skip)]
    pub pauses_us: Vec<u32>,
    /// Pages committed by epochs (with changes).
    pub committed_pages: u64,
    /// Dirty pages reported by KVM.
    pub dirty_pages: u64,
    /// Write-protect faults the guest took: dirty pages an epoch found that the previous epoch
    /// had protected (each faulted on its first write), summed over epochs.
    pub wp_faults: u64,
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
    /// Hint entries completed per ring (ring `i` is vCPU `i`'s).
    pub ring_hints: Vec<u64>,
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
    /// The running ring poller thread's CPU-time clock (`pthread_getcpuclockid`), set while the
    /// thread runs; read it with [`super::poller::cpu_time`]. Not reported.
    #[serde(skip)]
    pub poller_clock: Option<libc::clockid_t>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_follow_the_nearest_rank_rule() {
        assert_eq!(quantile(&[], 0.5), 0);
        let v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[7], 0.99), 7);
        let mut s = VmStats::default();
        for us in [10, 30, 20] {
            s.record_pause(us);
        }
        s.finish_percentiles();
        assert_eq!(
            (s.pause_us_p50, s.pause_us_p99, s.pause_us_max),
            (20, 30, 30)
        );
        assert_eq!((s.pause_us_last, s.pause_us_total), (20, 60));
    }

    #[test]
    fn the_window_counts_operations_and_epochs_between_its_marks() {
        let mut s = VmStats::default();
        let t0 = Instant::now();
        // An end without a start is ignored.
        s.window_mark(false, 5, t0);
        assert_eq!(s.window_ops, 0);
        (s.epochs, s.wp_faults) = (3, 7);
        s.window_mark(true, 100, t0);
        (s.epochs, s.wp_faults) = (13, 27);
        s.window_mark(false, 2100, t0 + std::time::Duration::from_millis(500));
        assert_eq!(
            (s.window_ops, s.window_us, s.window_epochs),
            (2000, 500_000, 10)
        );
        assert_eq!(s.window_wp_faults, 20);
        assert!((s.window_ops_per_s - 4000.0).abs() < 1e-6);
    }

    #[test]
    fn window_pauses_and_bytes_count_only_the_window() {
        let mut s = VmStats::default();
        let t0 = Instant::now();
        s.record_pause(9000);
        (s.epoch_pm_bytes, s.changed_bytes) = (1 << 20, 4096);
        s.window_mark(true, 0, t0);
        for us in [300, 100, 200] {
            s.record_pause(us);
        }
        (s.epoch_pm_bytes, s.changed_bytes) = ((1 << 20) + 640, 4096 + 512);
        s.window_mark(false, 10, t0);
        s.record_pause(8000);
        s.finish_percentiles();
        assert_eq!((s.window_pause_us_p50, s.window_pause_us_p99), (200, 300));
        assert_eq!(s.pause_us_p99, 9000);
        assert_eq!(
            (s.window_epoch_pm_bytes, s.window_changed_bytes),
            (640, 512)
        );
    }
}

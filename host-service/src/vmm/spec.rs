//! What to run (a [`VmSpec`]) and how it ended (a [`VmOutcome`]).

use std::path::PathBuf;
use std::time::Duration;

use vpm_abi::harness::{BootParams, GuestReport};

use super::mode::Mode;
use super::stats::VmStats;

/// What to run.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Tenant name in the pool.
    pub name: String,
    /// Persistence mode.
    pub mode: Mode,
    /// DRAM budget for the tiered modes, bytes.
    pub dram_budget_bytes: u64,
    /// Periodic epochs (tiered modes); `None` = only at the end and on request.
    pub epoch_interval: Option<Duration>,
    /// Forced random migrations at this interval (transparency stress), tiered modes.
    pub migrate_interval: Option<Duration>,
    /// Pages moved each way per forced migration.
    pub migrate_pages: u64,
    /// The guest's boot parameters (vPM base and size are filled in).
    pub params: BootParams,
    /// File to which acknowledged drains are appended (crash tests' witness).
    pub witness: Option<PathBuf>,
    /// File to which each committed epoch appends `epoch record`, the guest's newest complete
    /// record (report value 2) at the pause that epoch committed (crash tests' F1 witness).
    pub epoch_witness: Option<PathBuf>,
    /// Directory of the PM working-copy file.
    pub work_dir: PathBuf,
    /// Stop the guest after this long.
    pub time_limit: Option<Duration>,
    /// How RING doorbells reach the host.
    pub doorbell: DoorbellKind,
    /// Polled rings (ABI 1.1): microseconds a host thread keeps polling the ring after the last
    /// hint before it sleeps on the doorbell; 0 = no poller, every batch rings. A poller serves
    /// the ring from its own thread, so it implies the ioeventfd doorbell.
    pub poll_us: u64,
    /// Pre-copy epochs (full mode only): `None` = stop-and-commit, everything in the pause;
    /// `Some(n)` = `n` pre-copy rounds while the vCPU runs before each stop, a pause that only
    /// copies what is dirty at the stop, and the commit after the vCPU resumed.
    pub precopy_rounds: Option<u32>,
    /// vCPUs (1 to `vpm_abi::harness::MAX_VCPUS`), one host thread and one hint ring each.
    pub vcpus: u32,
}

impl VmSpec {
    /// Pre-copy rounds per epoch by default: none. The stop stages every dirty page and the
    /// commit runs after the vCPU resumed (a staged commit); rounds re-arm tracking, and on PVM a
    /// page they copy costs a ~20 µs fault when next written (docs/costs.md §9).
    pub const DEFAULT_PRECOPY_ROUNDS: u32 = 0;

    /// Whether this VM takes pre-copy epochs: full mode only (a PV persist must not race a
    /// staged commit that could write older content over it).
    pub fn precopy(&self) -> bool {
        self.mode == Mode::Full && self.precopy_rounds.is_some()
    }
}

impl VmSpec {
    /// The poller's idle window, `None` without polling.
    pub fn poll_window(&self) -> Option<Duration> {
        (self.poll_us > 0).then(|| Duration::from_micros(self.poll_us))
    }

    /// Whether a host thread serves the ring (ioeventfd doorbell or poller).
    pub fn ring_thread(&self) -> bool {
        self.doorbell == DoorbellKind::IoEventFd || self.poll_window().is_some()
    }

    /// Hint features granted to the guest: SYNC_DOORBELL only where the vCPU waits in the exit,
    /// POLLED only while a poller runs.
    pub fn hint_features(&self) -> u32 {
        let doorbell = if self.ring_thread() {
            DoorbellKind::IoEventFd
        } else {
            DoorbellKind::Exit
        };
        let polled = if self.poll_window().is_some() {
            vpm_abi::features::POLLED
        } else {
            0
        };
        doorbell.features(self.mode) | polled
    }
}

/// How the guest's RING doorbell reaches the hint service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DoorbellKind {
    /// A userspace I/O exit: the vCPU waits in the exit until the ring is served
    /// (feature SYNC_DOORBELL).
    Exit,
    /// An ioeventfd matching the RING byte: no userspace exit; a host thread serves the ring and
    /// the guest polls `consumed`. Other doorbell bytes (registration) still exit.
    IoEventFd,
}

impl DoorbellKind {
    /// Hint features granted to a guest in `mode` with this doorbell: SYNC_DOORBELL only where
    /// the vCPU waits in the exit.
    pub fn features(self, mode: Mode) -> u32 {
        match self {
            DoorbellKind::Exit => mode.features(),
            DoorbellKind::IoEventFd => mode.features() & !vpm_abi::features::SYNC_DOORBELL,
        }
    }
}

/// How the guest stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExitKind {
    /// The workload finished.
    Done,
    /// The guest reported a failure.
    Failed,
    /// The VMM stopped it (time limit).
    Stopped,
}

/// The result of a run.
#[derive(Clone, Debug)]
pub struct VmOutcome {
    /// How the guest stopped.
    pub exit: ExitKind,
    /// The guest's report.
    pub report: GuestReport,
    /// Counters.
    pub stats: VmStats,
    /// Wall time of the guest run.
    pub elapsed: Duration,
}

/// Text helpers for the guest report.
pub trait GuestReportExt {
    /// The report's message as text.
    fn message_text(&self) -> String;
}

impl GuestReportExt for GuestReport {
    fn message_text(&self) -> String {
        let n = (self.message_len as usize).min(self.message.len());
        String::from_utf8_lossy(&self.message[..n]).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ioeventfd_doorbell_does_not_grant_sync_doorbell() {
        let sync = vpm_abi::features::SYNC_DOORBELL;
        assert_ne!(DoorbellKind::Exit.features(Mode::Pv) & sync, 0);
        assert_eq!(DoorbellKind::IoEventFd.features(Mode::Pv) & sync, 0);
    }

    #[test]
    fn message_text_is_clamped_to_the_buffer() {
        // SAFETY: all-zero bytes are a valid GuestReport (integers and a byte array).
        let mut r: GuestReport = unsafe { std::mem::zeroed() };
        r.message[..2].copy_from_slice(b"hi");
        r.message_len = 2;
        assert_eq!(r.message_text(), "hi");
        r.message_len = u32::MAX;
        assert_eq!(r.message_text().len(), r.message.len());
    }
}

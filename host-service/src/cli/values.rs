//! Typed option values of `vpm`: the names of modes, workloads, doorbells and hint switches, and
//! the checks on numbers (seconds, sizes) that clap applies before anything runs.

use clap::ValueEnum;
use vpm_abi::harness::Workload;
use vpm_host::pool::media::NAME_LEN;
use vpm_host::vmm::{DoorbellKind, Mode};

/// The largest size option in MiB (1 TiB): sizes are turned into bytes and pages, and nothing
/// below this can wrap.
pub const MAX_MIB: u64 = 1 << 20;

/// The longest interval option in milliseconds (one day).
pub const MAX_MS: u64 = 86_400_000;

/// How many workload arguments the boot parameters carry.
pub const MAX_ARGS: usize = 6;

/// `--mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Unmodified guest, DRAM/PM tiers and epochs.
    Full,
    /// Para-virtual hints plus epochs.
    Pv,
    /// Every page mapped to its PM home (like QEMU vNVDIMM).
    Direct,
    /// Direct, and every persist msyncs the whole region (like virtio-pmem).
    Msync,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Full => Mode::Full,
            ModeArg::Pv => Mode::Pv,
            ModeArg::Direct => Mode::Direct,
            ModeArg::Msync => Mode::Msync,
        }
    }
}

/// `--workload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum WorkloadArg {
    /// Fill, then verify checksums while pages move.
    Checksum,
    /// Sequence-numbered records (crash trials).
    SeqWriter,
    /// Check a recovered sequence-numbered image.
    SeqCheck,
    /// Random writes (`--args N,BYTES`: BYTES per write, 0 = a 4 KiB page).
    RandomWrites,
    /// Write-skewed random writes: 90 % to a hot tenth of vPM (`--args N,BYTES`, 0 = 64 B).
    SkewedWrites,
    /// Sequential writes.
    SeqWrites,
    /// A persistent key-value store.
    Kv,
    /// An append-only log.
    Log,
    /// Transient scratch written heavily.
    Transient,
    /// Hostile hints.
    Hostile,
    /// Persist latency.
    PersistLatency,
    /// VM exit round trip.
    ExitLatency,
}

impl From<WorkloadArg> for Workload {
    fn from(w: WorkloadArg) -> Workload {
        match w {
            WorkloadArg::Checksum => Workload::Checksum,
            WorkloadArg::SeqWriter => Workload::SeqWriter,
            WorkloadArg::SeqCheck => Workload::SeqCheck,
            WorkloadArg::RandomWrites => Workload::RandomWrites,
            WorkloadArg::SkewedWrites => Workload::SkewedWrites,
            WorkloadArg::SeqWrites => Workload::SeqWrites,
            WorkloadArg::Kv => Workload::KvStore,
            WorkloadArg::Log => Workload::AppendLog,
            WorkloadArg::Transient => Workload::Transient,
            WorkloadArg::Hostile => Workload::Hostile,
            WorkloadArg::PersistLatency => Workload::PersistLatency,
            WorkloadArg::ExitLatency => Workload::ExitLatency,
        }
    }
}

/// `--doorbell`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DoorbellArg {
    /// The vCPU waits in the I/O exit while the ring is served.
    Exit,
    /// No userspace exit: a host thread serves the ring, the guest polls.
    Ioeventfd,
}

impl From<DoorbellArg> for DoorbellKind {
    fn from(d: DoorbellArg) -> DoorbellKind {
        match d {
            DoorbellArg::Exit => DoorbellKind::Exit,
            DoorbellArg::Ioeventfd => DoorbellKind::IoEventFd,
        }
    }
}

/// `--hints`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

impl From<OnOff> for bool {
    fn from(v: OnOff) -> bool {
        v == OnOff::On
    }
}

/// Why a number of seconds was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SecondsError {
    /// Not a decimal number.
    #[error("not a number of seconds")]
    NotANumber(#[source] std::num::ParseFloatError),
    /// NaN or infinite.
    #[error("must be a finite number of seconds")]
    NotFinite,
    /// Below zero.
    #[error("must not be negative")]
    Negative,
    /// Too large for a duration.
    #[error("must be at most {max} seconds")]
    TooLong {
        /// The limit.
        max: u64,
    },
}

/// The longest time option in seconds (a year); keeps `Duration::from_secs_f64` from panicking.
pub const MAX_SECONDS: u64 = 365 * 86_400;

/// Parses a finite, non-negative number of seconds (`--seconds`, `--timeout`).
pub fn seconds(s: &str) -> Result<f64, SecondsError> {
    let v: f64 = s.trim().parse().map_err(SecondsError::NotANumber)?;
    if !v.is_finite() {
        return Err(SecondsError::NotFinite);
    }
    if v < 0.0 {
        return Err(SecondsError::Negative);
    }
    if v > MAX_SECONDS as f64 {
        return Err(SecondsError::TooLong { max: MAX_SECONDS });
    }
    Ok(v)
}

/// Why a VM (tenant) name was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VmNameError {
    /// Empty, or longer than the pool's tenant names.
    #[error("must be 1 to {NAME_LEN} bytes long")]
    Length,
    /// A character that could leave the state directory or hide the VM's files.
    #[error("may hold only letters, digits, '.', '_' and '-', and must not start with '.'")]
    Character,
}

/// Parses a VM (tenant) name: it also names the VM's files in the state directory, so it is a
/// plain file name (no `/`, no leading `.`) that fits the pool's tenant table.
pub fn vm_name(s: &str) -> Result<String, VmNameError> {
    if s.is_empty() || s.len() > NAME_LEN {
        return Err(VmNameError::Length);
    }
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if s.starts_with('.') || !s.chars().all(ok) {
        return Err(VmNameError::Character);
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_are_finite_and_not_negative() {
        assert_eq!(seconds("1.5"), Ok(1.5));
        assert_eq!(seconds("0"), Ok(0.0));
        assert_eq!(seconds("-1"), Err(SecondsError::Negative));
        assert_eq!(seconds("nan"), Err(SecondsError::NotFinite));
        assert_eq!(seconds("inf"), Err(SecondsError::NotFinite));
        assert!(matches!(seconds("x"), Err(SecondsError::NotANumber(_))));
        assert!(matches!(
            seconds("1e300"),
            Err(SecondsError::TooLong { .. })
        ));
    }

    #[test]
    fn vm_names_are_plain_file_names() {
        assert_eq!(vm_name("pv-transient").as_deref(), Ok("pv-transient"));
        assert_eq!(vm_name(""), Err(VmNameError::Length));
        assert_eq!(vm_name(&"a".repeat(NAME_LEN + 1)), Err(VmNameError::Length));
        for bad in ["../x", "a/b", ".hidden", "a b", "é"] {
            assert_eq!(vm_name(bad), Err(VmNameError::Character), "{bad}");
        }
    }

    #[test]
    fn names_are_the_documented_ones() {
        let names: Vec<String> = WorkloadArg::value_variants()
            .iter()
            .map(|v| v.to_possible_value().unwrap().get_name().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "checksum",
                "seq-writer",
                "seq-check",
                "random-writes",
                "skewed-writes",
                "seq-writes",
                "kv",
                "log",
                "transient",
                "hostile",
                "persist-latency",
                "exit-latency"
            ]
        );
        for m in ModeArg::value_variants() {
            let name = m.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(Mode::from(*m).name(), name);
        }
    }
}

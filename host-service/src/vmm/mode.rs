//! How a VM's vPM is made persistent.

use vpm_abi::features;

/// The VM's persistence mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Unmodified guest: pages tiered between DRAM and PM, epochs make vPM crash-consistent (F1).
    Full,
    /// Para-virtual guest: hints (persist, flush/drain, transient) plus epochs for the rest.
    Pv,
    /// Baseline like QEMU's vNVDIMM: every page mapped straight to its PM home, no epochs.
    Direct,
    /// Baseline like virtio-pmem: direct mapping, and every persist hint msyncs the whole region.
    Msync,
}

impl Mode {
    /// Parses a mode name.
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s {
            "full" => Mode::Full,
            "pv" => Mode::Pv,
            "direct" => Mode::Direct,
            "msync" => Mode::Msync,
            _ => return None,
        })
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Pv => "pv",
            Mode::Direct => "direct",
            Mode::Msync => "msync",
        }
    }

    /// Whether pages are tiered (DRAM/PM working copies) and committed by epochs.
    pub fn tiered(self) -> bool {
        matches!(self, Mode::Full | Mode::Pv)
    }

    /// Hint features the host grants a guest in this mode.
    pub fn features(self) -> u32 {
        features::SYNC_DOORBELL
            | match self {
                Mode::Full => features::EPOCHS,
                Mode::Pv => features::PERSIST | features::TRANSIENT | features::EPOCHS,
                Mode::Direct | Mode::Msync => features::PERSIST,
            }
    }
}

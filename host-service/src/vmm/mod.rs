//! The KVM VMM that serves vPM to the VPM test guest.
//!
//! Data path: guest store → [`memory`] (the vPM mapping, DRAM or PM backing per page) → KVM's
//! dirty log ([`kvm`]) → [`epoch_driver`] (commit to the pool, placement moves through
//! `crate::tier`) → `crate::pool` (PM). Para-virtual hints arrive through the doorbell port and
//! [`hints`], with guest byte ranges as [`range::VpmRange`]s.
//!
//! By concern: [`spec`] says what to run and how it ended; [`setup`] builds a VM into a
//! [`context::VmContext`]; [`run`] runs it (vCPU loop, ring thread, controller); [`guest_map`] is
//! the guest-physical map; [`writable`] decides which dirty pages stay writable between epochs; [`precopy`] and
//! [`staging`] copy an epoch's pages while the vCPU runs;
//! [`witness`] writes the crash tests' witness files; [`error`] holds [`VmmError`].

pub mod context;
pub mod control;
pub mod epoch_driver;
pub mod error;
pub mod guest_map;
pub mod hints;
pub mod kvm;
pub mod mapping;
pub mod memory;
pub mod mode;
pub mod pause;
pub mod poller;
pub mod precopy;
pub mod range;
pub mod run;
pub mod setup;
pub mod spec;
pub mod staging;
pub mod stats;
pub mod store_counts;
pub mod vcpu;
pub mod witness;
pub mod writable;

pub use context::{VmContext, VpmState};
pub use control::{EpochReply, ParkedJob, VmControl};
pub use error::VmmError;
pub use mode::Mode;
pub use range::VpmRange;
pub use run::{run_vm, run_vm_controlled};
pub use setup::TEST_GUEST_ELF;
pub use spec::{DoorbellKind, ExitKind, GuestReportExt, VmOutcome, VmSpec};
pub use stats::VmStats;

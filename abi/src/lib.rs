//! `vpm-abi`: the VPM hint protocol between a guest and the VPM host service.
//!
//! The protocol itself lives in [`proto`], which uses nothing but `core` so the Rust-for-Linux
//! guest driver can include it by path. This crate adds, behind the `derive` cargo feature, a
//! typed feature set ([`flags::Features`]) and zerocopy derives on [`RawEntry`].
//!
//! See `docs/protocol.md` for the wire format and `docs/semantics.md` for what each op guarantees.
#![no_std]
#![forbid(unsafe_op_in_unsafe_fn)]

pub mod proto;

pub mod harness;

#[cfg(feature = "derive")]
pub mod flags;

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

pub use proto::doorbell::{
    DoorbellCmd, DoorbellDecoder, DOORBELL_PORT, MAX_CMD_BYTES, MAX_RINGS, PROBE_REPLY,
};
pub use proto::op::{features, HeaderStatus, HintResult, Op, RESULT_PENDING};
pub use proto::poll::{NeedsDoorbell, SleepCheck, StillPending, HOST_POLLING, HOST_SLEEPING};
pub use proto::ring::{Consumer, Producer, RingFull, SharedPage, Taken, Ticket};
pub use proto::validate::{decode_entry, GuestRange, Hint, VpmRegion};
pub use proto::wire::{RawEntry, ABI_VERSION, LINE_SIZE, MAGIC, MAX_RING_ENTRIES, PAGE_SIZE};

//! pv-libpmem: PMDK's libpmem 1.x API, drop-in (`libpmem.so.1`, symbol version `LIBPMEM_1.0`),
//! that inside a VPM guest turns persistence calls on `/dev/vpm` mappings into VPM hints.
//!
//! - Native mode (any mapping that is not `/dev/vpm`): PMDK 1.12 behaviour — flush instruction
//!   from CPUID (clwb > clflushopt > clflush, `PMEM_NO_CLWB`/`PMEM_NO_CLFLUSHOPT`), non-temporal
//!   copies from `PMEM_MOVNT_THRESHOLD` (256) bytes, `pmem_is_pmem` by the registered-range rules
//!   and `PMEM_IS_PMEM_FORCE`, `pmem_map_file` with PMDK's checks, errno and messages.
//! - PV mode (ranges of a `/dev/vpm` mapping): `pmem_flush` queues the range in the driver's ring
//!   (a syscall, no VM exit), `pmem_drain` makes every queued range durable with one doorbell,
//!   `pmem_persist` does both. The `vpm.h` extensions mark transient ranges and request epochs.
//!   Mappings of `/dev/vpm` the program made itself are found too (the `discover` module).
//!
//! The C ABI lives in [`capi`]; Rust programs use the functions re-exported here.

pub mod capi;
mod cpu;
mod discover;
mod err;
mod mapfile;
mod memops;
mod ranges;
mod vpmdev;

pub use cpu::Config;
pub use err::errormsg;
pub use mapfile::{map_file, unmap, MapFlags, Mapped};
pub use memops::{drain, flush, memmove, memset, persist, MemFlags};
pub use ranges::is_pmem;
pub use vpmdev::{request_epoch, set_persistent, set_transient, vpm_active};

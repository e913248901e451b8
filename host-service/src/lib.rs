//! VPM host service.
//!
//! The modules follow a vPM page's data path, bottom up:
//! - [`pm`]: the PM devices a pool lives on (mapped file, DAX, or the power-failure simulator) and
//!   the flush primitives (clwb, clflushopt, non-temporal copy, msync).
//! - [`pool`]: the pool and everything durable: its on-media layout (header, tenants, page maps,
//!   commit records, redo log), home allocation across PM and the capacity file, epoch commits,
//!   persist ranges, transient marks, and crash recovery.
//! - [`tier`]: placements and heat of each page, the placement policy (rebalance, coldest-first
//!   eviction, shuffle), and carrying moves out through a `PageMover`.
//! - `vmm` (feature `vmm`): the KVM VMM that runs the VPM test guest on top of all this;
//!   `qemu`: serving a Linux guest under QEMU; `crashtest`: kill -9 crash trials.
//! - `serve` (feature `vmm`): `vpm serve`, one host service for many VMs over an HTTP API.
//! - [`private_file`]: every file, directory and socket VPM creates is private from the start.
//! - [`state_dir`]: the directories `vpm` keeps pools in (marked, locked, reset safely).
#![deny(unsafe_op_in_unsafe_fn)]

#[cfg(feature = "vmm")]
pub mod crashtest;
pub mod pm;
pub mod pool;
pub mod private_file;
#[cfg(feature = "vmm")]
pub mod qemu;
#[cfg(feature = "vmm")]
pub mod serve;
pub mod state_dir;
pub mod tier;
#[cfg(feature = "vmm")]
pub mod vmm;

/// `e` and its sources, one after the other (`a: b: c`), leaving out a source whose text its
/// predecessors already include: the one-line form the `vpm` and `vpm-bench` commands print.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    text
}

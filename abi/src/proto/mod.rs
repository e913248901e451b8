//! The VPM hint protocol, free of external crates.
//!
//! This module tree is the protocol's single definition. The `vpm-abi` crate re-exports it for the
//! host service and the no_std test guest; the Rust-for-Linux module includes this directory by
//! path (`#[path = ".../abi/src/proto/mod.rs"] mod abi;`), so nothing here may name another crate
//! or use crate-level attributes. Everything is `core` only.
//!
//! Data path of one hint: the guest fills a [`ring::SharedEntry`] through a [`ring::Producer`],
//! rings the [`doorbell`], the host takes it with a [`ring::Consumer`], checks it with
//! [`validate::decode_entry`], acts on the resulting [`validate::Hint`] and writes a [`op::HintResult`].
//! With polled rings (ABI 1.1, [`poll`]) the guest rings only when the host announced that it
//! sleeps.

pub mod doorbell;
pub mod op;
pub mod poll;
pub mod ring;
pub mod uapi;
pub mod validate;
pub mod wire;

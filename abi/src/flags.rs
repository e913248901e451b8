//! Typed feature bits for host code (cargo feature `derive`).

use crate::proto::op::features;

bitflags::bitflags! {
    /// The header's feature words as a typed set; same bits as [`crate::features`].
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct Features: u32 {
        /// [`features::PERSIST`].
        const PERSIST = features::PERSIST;
        /// [`features::TRANSIENT`].
        const TRANSIENT = features::TRANSIENT;
        /// [`features::EPOCHS`].
        const EPOCHS = features::EPOCHS;
        /// [`features::SYNC_DOORBELL`].
        const SYNC_DOORBELL = features::SYNC_DOORBELL;
        /// [`features::POLLED`] (ABI 1.1).
        const POLLED = features::POLLED;
        /// [`features::RINGS`] (one ring per guest CPU, QEMU front).
        const RINGS = features::RINGS;
    }
}

const _: () = assert!(Features::all().bits() == features::ALL);

//! Wire layout of the shared page: constants, the plain entry record, and compile-time checks.
//!
//! The shared page is one 4 KiB guest page. Bytes `0..128` hold the header
//! ([`crate::proto::ring::SharedHeader`]), bytes `128..4096` the ring of 32-byte entries. All integers are
//! little-endian (the protocol is x86-64 only). `docs/protocol.md` describes every field.

use core::mem::{align_of, offset_of, size_of};

/// Size of the shared page and of a vPM page.
pub const PAGE_SIZE: u64 = 4096;
/// Size of a cache line, the unit of PM durability.
pub const LINE_SIZE: u64 = 64;

/// `"VPMHINTS"` read as a little-endian u64; the guest writes it to the header before registering.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VPMHINTS");
/// Major ABI version: a host serves only guests with the same major.
pub const ABI_MAJOR: u16 = 1;
/// Minor ABI version: a host serves guests whose minor is at most its own.
pub const ABI_MINOR: u16 = 1;
/// The version word as stored in the header: `major << 16 | minor`.
pub const ABI_VERSION: u32 = pack_version(ABI_MAJOR, ABI_MINOR);

/// Packs a major and minor version into the header's version word.
pub const fn pack_version(major: u16, minor: u16) -> u32 {
    (major as u32) << 16 | minor as u32
}

/// Splits a header version word into (major, minor).
pub const fn unpack_version(word: u32) -> (u16, u16) {
    ((word >> 16) as u16, word as u16)
}

/// Byte size of the header at the start of the shared page.
pub const HEADER_SIZE: usize = 128;
/// Byte offset of ring entry 0 in the shared page.
pub const RING_OFFSET: usize = HEADER_SIZE;
/// Byte size of one ring entry.
pub const ENTRY_SIZE: usize = 32;
/// Entry slots that fit in the page after the header.
pub const RING_SLOTS: usize = (PAGE_SIZE as usize - HEADER_SIZE) / ENTRY_SIZE;
/// Largest ring a guest may declare: the largest power of two that fits in [`RING_SLOTS`].
pub const MAX_RING_ENTRIES: u32 = 64;

/// One ring entry as plain data: what the host copies out of shared memory before validating it,
/// so the guest cannot change an entry between check and use.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(
    feature = "derive",
    derive(
        zerocopy::FromBytes,
        zerocopy::IntoBytes,
        zerocopy::Immutable,
        zerocopy::KnownLayout
    )
)]
pub struct RawEntry {
    /// Operation code, see [`crate::proto::op::Op`].
    pub op: u16,
    /// Operation flags; no flag is defined in ABI 1.0, so it must be zero.
    pub flags: u16,
    /// Written by the host: a [`crate::proto::op::HintResult`] code. The guest sets it to
    /// [`crate::proto::op::RESULT_PENDING`] before publishing.
    pub result: i32,
    /// Guest-chosen sequence number, echoed by the host in the header's `completed_seq`.
    pub seq: u64,
    /// Guest-physical start address of the range (ignored by ops without a range).
    pub gpa: u64,
    /// Length of the range in bytes (ignored by ops without a range).
    pub len: u64,
}

impl RawEntry {
    /// Decodes an entry from its 32 little-endian wire bytes.
    pub fn from_bytes(b: &[u8; ENTRY_SIZE]) -> Self {
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        RawEntry {
            op: u16_at(0),
            flags: u16_at(2),
            result: i32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            seq: u64_at(8),
            gpa: u64_at(16),
            len: u64_at(24),
        }
    }

    /// Encodes an entry as its 32 little-endian wire bytes.
    pub fn to_bytes(&self) -> [u8; ENTRY_SIZE] {
        let mut b = [0u8; ENTRY_SIZE];
        b[0..2].copy_from_slice(&self.op.to_le_bytes());
        b[2..4].copy_from_slice(&self.flags.to_le_bytes());
        b[4..8].copy_from_slice(&self.result.to_le_bytes());
        b[8..16].copy_from_slice(&self.seq.to_le_bytes());
        b[16..24].copy_from_slice(&self.gpa.to_le_bytes());
        b[24..32].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

// Compile-time layout checks: a change here is an ABI break and needs a major version bump.
const _: () = assert!(size_of::<RawEntry>() == ENTRY_SIZE);
const _: () = assert!(align_of::<RawEntry>() == 8);
const _: () = assert!(offset_of!(RawEntry, op) == 0);
const _: () = assert!(offset_of!(RawEntry, flags) == 2);
const _: () = assert!(offset_of!(RawEntry, result) == 4);
const _: () = assert!(offset_of!(RawEntry, seq) == 8);
const _: () = assert!(offset_of!(RawEntry, gpa) == 16);
const _: () = assert!(offset_of!(RawEntry, len) == 24);
const _: () = assert!(MAX_RING_ENTRIES.is_power_of_two());
const _: () = assert!(MAX_RING_ENTRIES as usize <= RING_SLOTS);
const _: () = assert!(RING_OFFSET + RING_SLOTS * ENTRY_SIZE == PAGE_SIZE as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_bytes_round_trip() {
        let e = RawEntry {
            op: 2,
            flags: 0,
            result: -3,
            seq: 7,
            gpa: 0x1_0000_0000,
            len: 4096,
        };
        assert_eq!(RawEntry::from_bytes(&e.to_bytes()), e);
        assert_eq!(&e.to_bytes()[16..24], &0x1_0000_0000u64.to_le_bytes());
    }

    #[test]
    fn version_packing() {
        assert_eq!(unpack_version(pack_version(3, 9)), (3, 9));
        assert_eq!(ABI_VERSION, 0x0001_0001);
    }
}

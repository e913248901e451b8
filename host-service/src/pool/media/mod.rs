//! The PM media layout: every durable structure of a pool, its encoding, and its checks.
//!
//! ```text
//! pool file: [header page][tenant table][metadata region: per tenant commit page, page map, log][data: PM homes]
//! capacity file: capacity homes, 4 KiB each
//! ```
//! Every structure carries a CRC-32; single words that must change atomically are 8 bytes and
//! carry their own check bits. Decoders never panic: any byte string gives a value or an error.

mod commit_record;
mod header;
mod log_record;
mod page_map;
mod tenant_desc;

pub use commit_record::CommitRecord;
pub use header::{PoolHeader, HEADER_BYTES};
pub use log_record::{LogRecordHeader, LOG_NEW_HOME};
pub use page_map::Home;
pub use tenant_desc::{TenantDesc, TENANT_BODY};

/// `"VPMPOOL1"` as a little-endian u64.
pub const POOL_MAGIC: u64 = u64::from_le_bytes(*b"VPMPOOL1");
/// The on-PM format version this build reads and writes.
pub const POOL_VERSION: u32 = 1;
/// Size of a tenant descriptor in the tenant table.
pub const TENANT_DESC_SIZE: u64 = 256;
/// High half of an active tenant's state word (`"TNNT"`).
pub const TENANT_ACTIVE: u32 = u32::from_le_bytes(*b"TNNT");
/// Size of one commit record.
pub const COMMIT_RECORD_SIZE: usize = 64;
/// Offset, in a tenant's commit page, of the word holding the applied record's sequence.
pub const APPLIED_WORD_OFF: u64 = 128;
/// Size of a redo-log record header; payload lines follow it.
pub const LOG_HEADER_SIZE: usize = 64;
/// Length of a tenant name.
pub const NAME_LEN: usize = 32;

/// Why a structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not a VPM pool at all.
    #[error("not a VPM pool (magic {0:#018x})")]
    NotAPool(u64),
    /// A pool of another format version.
    #[error("pool format version {found}, this build reads version {POOL_VERSION}")]
    Version {
        /// Version found in the header.
        found: u32,
    },
    /// A checksum did not match.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Which structure.
        what: String,
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// A field holds an impossible value.
    #[error("{what}: {why}")]
    Invalid {
        /// Which structure.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The bytes end too early.
    #[error("{what}: truncated ({have} of {need} bytes)")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

pub(super) fn invalid(what: impl Into<String>, why: impl Into<String>) -> LayoutError {
    LayoutError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// Little-endian field reader over a byte slice of checked length.
pub(super) struct Fields<'a>(pub(super) &'a [u8]);

impl Fields<'_> {
    pub(super) fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    pub(super) fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }
}

pub(super) fn need(what: &'static str, bytes: &[u8], n: usize) -> Result<(), LayoutError> {
    if bytes.len() < n {
        return Err(LayoutError::Truncated {
            what,
            have: bytes.len(),
            need: n,
        });
    }
    Ok(())
}

pub(super) fn check_crc(
    what: impl Into<String>,
    covered: &[u8],
    stored: u32,
) -> Result<(), LayoutError> {
    let computed = crc32fast::hash(covered);
    if computed != stored {
        return Err(LayoutError::Checksum {
            what: what.into(),
            stored,
            computed,
        });
    }
    Ok(())
}

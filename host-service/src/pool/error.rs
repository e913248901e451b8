//! Errors of the pool, and how they read to a guest as hint results.

use vpm_abi::HintResult;

use super::media::LayoutError;
use super::source::SourceError;
use crate::pm::PmError;

/// Errors of the pool and its durability machinery.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A device failed.
    #[error(transparent)]
    Device(#[from] PmError),
    /// The pool's metadata is damaged; nothing was changed.
    #[error("corrupt pool, refusing to open it (nothing was changed): {0}")]
    Corrupt(#[source] LayoutError),
    /// The pool was written by another format version.
    #[error("{0}")]
    Version(#[source] LayoutError),
    /// The file is not a VPM pool.
    #[error("{0}")]
    NotAPool(#[source] LayoutError),
    /// Bad creation or tenant parameters.
    #[error("invalid configuration: {0}")]
    Config(#[source] ConfigError),
    /// Every tenant slot is taken.
    #[error("the pool has no free tenant slot (max {0})")]
    NoTenantSlot(u32),
    /// The metadata region has no room for the tenant's page map and log.
    #[error("the pool's metadata region has no room for {0} more bytes")]
    NoMetaSpace(u64),
    /// No tenant with this id.
    #[error("no tenant {0}")]
    UnknownTenant(u32),
    /// A page number beyond the tenant's vPM.
    #[error("page {vpn} is outside tenant {tenant}'s vPM of {pages} pages")]
    PageOutOfRange {
        /// Tenant id.
        tenant: u32,
        /// Page asked for.
        vpn: u64,
        /// vPM pages.
        pages: u64,
    },
    /// The epoch's changes do not fit in the tenant's redo log; nothing was committed.
    #[error("epoch needs {need} bytes of redo log, tenant has {have}: commit more often")]
    LogFull {
        /// Bytes needed.
        need: u64,
        /// Log size.
        have: u64,
    },
    /// The source of guest pages failed.
    #[error("reading guest page {vpn}: {source}")]
    Source {
        /// Page.
        vpn: u64,
        /// What the source reported.
        #[source]
        source: SourceError,
    },
}

impl From<LayoutError> for PoolError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::NotAPool(_) => PoolError::NotAPool(e),
            LayoutError::Version { .. } => PoolError::Version(e),
            _ => PoolError::Corrupt(e),
        }
    }
}

impl From<ConfigError> for PoolError {
    fn from(e: ConfigError) -> Self {
        PoolError::Config(e)
    }
}

impl PoolError {
    /// The result a guest's hint gets when serving it failed with this error: no room (redo log,
    /// tenant slots, metadata, a capacity file that cannot grow) is `NoSpace`, a page outside the
    /// vPM is `OutOfRange`, anything else is `Io` (the range could not be made durable).
    pub fn hint_result(&self) -> HintResult {
        match self {
            PoolError::LogFull { .. }
            | PoolError::NoTenantSlot(_)
            | PoolError::NoMetaSpace(_)
            | PoolError::Device(PmError::CannotGrow(_)) => HintResult::NoSpace,
            PoolError::PageOutOfRange { .. } => HintResult::OutOfRange,
            _ => HintResult::Io,
        }
    }
}

/// What was wrong with the parameters of a new pool or tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The pool does not fit the device, or its tenant count is out of range.
    #[error("pool of {size} bytes with {max_tenants} tenants (1 to {max_allowed}) on a device of {device} bytes")]
    PoolGeometry {
        /// Pool size asked for.
        size: u64,
        /// Tenant slots asked for.
        max_tenants: u32,
        /// Most tenant slots a pool may have.
        max_allowed: u32,
        /// Device size.
        device: u64,
    },
    /// The metadata region leaves no room for homes.
    #[error("metadata ({meta_bytes} bytes) leaves no room for data in {size} bytes")]
    NoDataRoom {
        /// Metadata bytes (page-rounded).
        meta_bytes: u64,
        /// Pool size.
        size: u64,
    },
    /// A vPM size of zero or not whole pages.
    #[error("vPM size {0} is not whole pages")]
    VpmNotWholePages(u64),
    /// A tenant name longer than the descriptor holds.
    #[error("tenant name {name:?} is longer than {max} bytes")]
    NameTooLong {
        /// The name.
        name: String,
        /// Longest name.
        max: usize,
    },
    /// A tenant name already in use.
    #[error("tenant name {0:?} is taken")]
    NameTaken(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hint_results_say_no_space_out_of_range_or_io() {
        let cases = [
            (PoolError::LogFull { need: 2, have: 1 }, HintResult::NoSpace),
            (PoolError::NoTenantSlot(4), HintResult::NoSpace),
            (PoolError::NoMetaSpace(8), HintResult::NoSpace),
            (
                PoolError::Device(PmError::CannotGrow(1 << 30)),
                HintResult::NoSpace,
            ),
            (
                PoolError::PageOutOfRange {
                    tenant: 0,
                    vpn: 9,
                    pages: 4,
                },
                HintResult::OutOfRange,
            ),
            (
                PoolError::Device(PmError::OutOfBounds {
                    off: 0,
                    len: 1,
                    size: 0,
                }),
                HintResult::Io,
            ),
            (
                PoolError::Source {
                    vpn: 3,
                    source: SourceError::Io(std::io::Error::other("gone")),
                },
                HintResult::Io,
            ),
            (PoolError::UnknownTenant(2), HintResult::Io),
            (
                PoolError::Config(ConfigError::VpmNotWholePages(1)),
                HintResult::Io,
            ),
            (PoolError::from(LayoutError::NotAPool(0)), HintResult::Io),
        ];
        for (err, want) in cases {
            assert_eq!(err.hint_result(), want, "{err}");
        }
    }

    #[test]
    fn errors_keep_their_source() {
        use std::error::Error as _;
        let e = PoolError::Source {
            vpn: 3,
            source: SourceError::PageBeyondImage { vpn: 3, len: 0 },
        };
        assert!(e.source().is_some());
        assert!(e.to_string().contains("page 3"));
        let e = PoolError::from(LayoutError::Version { found: 9 });
        assert!(matches!(e, PoolError::Version(_)));
        assert!(e.source().is_some());
        let e = PoolError::from(ConfigError::NameTaken("a".into()));
        assert!(e.to_string().starts_with("invalid configuration"));
    }
}

//! The `/dev/vpm` user interface of the guest driver: ioctl numbers and argument records, shared
//! by the kernel module, pv-libpmem and test programs (the C header
//! `guest-driver/include/vpm_ioctl.h` mirrors it; a test checks the numbers agree).

/// ioctl type byte.
pub const VPM_IOC_TYPE: u32 = b'V' as u32;

const NONE: u32 = 0;
const WRITE: u32 = 1;
const READ: u32 = 2;

/// Linux `_IOC(dir, type, nr, size)` encoding.
pub const fn ioc(dir: u32, nr: u32, size: usize) -> u32 {
    dir << 30 | (size as u32) << 16 | VPM_IOC_TYPE << 8 | nr
}

/// A range of a `/dev/vpm` mapping, by user virtual address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpmRange {
    /// Start (user virtual address inside a `/dev/vpm` mapping).
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// What `VPM_IOC_INFO` returns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpmInfo {
    /// Guest-physical base of vPM.
    pub vpm_base: u64,
    /// vPM size in bytes (the size of a full `/dev/vpm` mapping).
    pub vpm_size: u64,
    /// Feature bits granted by the host.
    pub features: u32,
    /// ABI version of the hint protocol.
    pub abi_version: u32,
    /// Last committed epoch the host reported.
    pub epoch: u64,
    /// Hints the host served.
    pub served: u64,
    /// Hints the host refused.
    pub rejected: u64,
}

/// Reads a [`VpmInfo`].
pub const VPM_IOC_INFO: u32 = ioc(READ, 1, core::mem::size_of::<VpmInfo>());
/// Persists a [`VpmRange`] (durable when the call returns).
pub const VPM_IOC_PERSIST: u32 = ioc(WRITE, 2, core::mem::size_of::<VpmRange>());
/// Queues a [`VpmRange`] for the next drain.
pub const VPM_IOC_FLUSH: u32 = ioc(WRITE, 3, core::mem::size_of::<VpmRange>());
/// Makes every queued range durable (one doorbell).
pub const VPM_IOC_DRAIN: u32 = ioc(NONE, 4, 0);
/// Marks whole pages transient.
pub const VPM_IOC_SET_TRANSIENT: u32 = ioc(WRITE, 5, core::mem::size_of::<VpmRange>());
/// Marks whole pages persistent again.
pub const VPM_IOC_SET_PERSISTENT: u32 = ioc(WRITE, 6, core::mem::size_of::<VpmRange>());
/// Asks the host for an epoch.
pub const VPM_IOC_REQUEST_EPOCH: u32 = ioc(NONE, 7, 0);

/// Byte offset in `/dev/vpm` of the status page: mapped read-only, one page long, it holds a
/// [`VpmStatus`]. vPM itself is mapped from offset 0; no vPM is this large.
pub const VPM_STATUS_OFFSET: u64 = 1 << 44;

/// `VpmStatus::magic`: "VPMSTAT1".
pub const VPM_STATUS_MAGIC: u64 = u64::from_le_bytes(*b"VPMSTAT1");

/// The status page: what user space can read without a system call. The driver writes the fields
/// with atomic stores; readers load them atomically.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VpmStatus {
    /// [`VPM_STATUS_MAGIC`] once the page is set up.
    pub magic: u64,
    /// Bumped by every mapping of vPM through the driver, by any process: a library that listed a
    /// process's `/dev/vpm` mappings while this read `g` need not list them again while it reads
    /// `g` (no new mapping can have appeared).
    pub map_generation: u64,
}

const _: () = assert!(core::mem::size_of::<VpmStatus>() == 16);
const _: () = assert!(VPM_STATUS_OFFSET % super::wire::PAGE_SIZE == 0);
const _: () = assert!(core::mem::size_of::<VpmRange>() == 16);
const _: () = assert!(core::mem::size_of::<VpmInfo>() == 48);
const _: () = assert!(VPM_IOC_PERSIST == 0x4010_5602);

//! PM devices: where a pool's bytes live and how they are made durable.
//!
//! A [`PmDevice`] offers reads, (cached) writes, per-range flushes and a drain that waits for the
//! flushes, which is exactly the x86 persistency model (store, clwb, sfence). Implementations:
//! [`mapped::MappedFile`] (host PM: DAX file with MAP_SYNC, or an emulated-PM file flushed by
//! msync), [`file::FileDevice`] (the disk capacity tier, pwrite + fdatasync) and
//! [`sim::SimPm`] (the power-failure simulator for tests).

pub mod file;
pub mod flush;
pub mod mapped;
pub mod sim;

use std::sync::atomic::{AtomicU64, Ordering};

pub use flush::FlushMethod;

/// Errors of PM devices.
#[derive(Debug, thiserror::Error)]
pub enum PmError {
    /// An access past the end of the device.
    #[error("access [{off:#x}, +{len:#x}) is outside the device of {size:#x} bytes")]
    OutOfBounds {
        /// Start offset.
        off: u64,
        /// Length.
        len: u64,
        /// Device size.
        size: u64,
    },
    /// An 8-byte atomic store to an unaligned offset.
    #[error("atomic store at unaligned offset {0:#x}")]
    Unaligned(u64),
    /// The operating system refused an operation.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file concerned.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The device cannot grow.
    #[error("device cannot grow to {0:#x} bytes")]
    CannotGrow(u64),
    /// Streaming stores were reported to a device that is not mapped in this process.
    #[error("the device is not mapped in this process: no streaming stores to note")]
    NotMapped,
}

/// Counters every device keeps; read with [`PmDevice::stats`].
#[derive(Debug, Default)]
pub struct DeviceCounters {
    bytes_written: AtomicU64,
    flushed_bytes: AtomicU64,
    drains: AtomicU64,
}

impl DeviceCounters {
    /// Counts a write of `n` bytes.
    pub fn wrote(&self, n: u64) {
        self.bytes_written.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts a flush of `n` bytes.
    pub fn flushed(&self, n: u64) {
        self.flushed_bytes.fetch_add(n, Ordering::Relaxed);
    }
    /// Counts a drain.
    pub fn drained(&self) {
        self.drains.fetch_add(1, Ordering::Relaxed);
    }
    /// A snapshot.
    pub fn snapshot(&self) -> DeviceStats {
        DeviceStats {
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            flushed_bytes: self.flushed_bytes.load(Ordering::Relaxed),
            drains: self.drains.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of a device's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Bytes stored to the device (endurance).
    pub bytes_written: u64,
    /// Bytes covered by flush requests.
    pub flushed_bytes: u64,
    /// Drain (fence or sync) calls.
    pub drains: u64,
}

/// A byte-addressable device with the x86 persistency model.
pub trait PmDevice: Send + Sync + std::fmt::Debug {
    /// Current size in bytes.
    fn size(&self) -> u64;
    /// Reads `buf.len()` bytes at `off`.
    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), PmError>;
    /// Stores `data` at `off`; not durable until flushed and drained.
    fn write(&self, off: u64, data: &[u8]) -> Result<(), PmError>;
    /// Stores one 8-byte word atomically (never torn by a crash); `off` must be 8-aligned.
    /// The default is one 8-byte `write`; a mapped device overrides it with a single store.
    fn write_u64(&self, off: u64, value: u64) -> Result<(), PmError> {
        if off % 8 != 0 {
            return Err(PmError::Unaligned(off));
        }
        self.write(off, &value.to_le_bytes())
    }
    /// Starts writing back `[off, off + len)`.
    fn flush(&self, off: u64, len: u64) -> Result<(), PmError>;
    /// Stores `data` at `off` and starts writing it back: `write` + `flush`, which a mapped
    /// device does with non-temporal stores for large ranges (no cache pollution, no flush).
    fn write_flush(&self, off: u64, data: &[u8]) -> Result<(), PmError> {
        self.write(off, data)?;
        self.flush(off, data.len() as u64)
    }
    /// Returns once every range flushed so far is durable.
    fn drain(&self) -> Result<(), PmError>;
    /// How this device makes data durable.
    fn method(&self) -> FlushMethod;
    /// Grows the device to at least `size` bytes (only devices backed by growable files).
    fn grow(&self, size: u64) -> Result<(), PmError> {
        if size <= self.size() {
            Ok(())
        } else {
            Err(PmError::CannotGrow(size))
        }
    }
    /// Counters.
    fn stats(&self) -> DeviceStats;
    /// Calls `f` with the bytes at `[off, off + len)` read in place where the device is mapped,
    /// else with a copy. Saves a copy on the commit path.
    fn with_bytes(&self, off: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<(), PmError> {
        let mut buf = vec![0u8; len];
        self.read(off, &mut buf)?;
        f(&buf);
        Ok(())
    }
    /// The file descriptor behind the device, if any (the VMM maps pool pages into guests).
    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Where `[off, off + len)` is mapped in this process, for a caller that fills it with
    /// streaming stores, fences them and then calls [`PmDevice::note_streamed`]; `None` if the
    /// device is not mapped or the range is out of bounds.
    fn mapped_at(&self, off: u64, len: u64) -> Option<*mut u8> {
        let _ = (off, len);
        None
    }
    /// Records that `[off, off + len)` was written through [`PmDevice::mapped_at`] with streaming
    /// stores, already fenced: it is durable after the next `drain`.
    fn note_streamed(&self, off: u64, len: u64) -> Result<(), PmError> {
        let _ = (off, len);
        Err(PmError::NotMapped)
    }
}

/// Opens (creating with mode 0600, never truncating) a file that backs a device.
pub fn open_backing_file(path: &std::path::Path) -> Result<std::fs::File, PmError> {
    crate::private_file::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| PmError::Io {
            what: "open",
            path: path.display().to_string(),
            source,
        })
}

/// Checks that `[off, off + len)` lies within `size` bytes.
pub fn check_bounds(off: u64, len: u64, size: u64) -> Result<(), PmError> {
    match off.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(PmError::OutOfBounds { off, len, size }),
    }
}

/// Writes `data` at `off`, flushes it and drains: the common "make this durable now".
pub fn write_durable(dev: &dyn PmDevice, off: u64, data: &[u8]) -> Result<(), PmError> {
    dev.write_flush(off, data)?;
    dev.drain()
}

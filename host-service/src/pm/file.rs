//! A PM device over a plain file with pread/pwrite and fdatasync: the disk capacity tier.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{check_bounds, DeviceCounters, DeviceStats, FlushMethod, PmDevice, PmError};

/// A growable file written with `pwrite` and made durable with `fdatasync`.
#[derive(Debug)]
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: AtomicU64,
    dirty: AtomicBool,
    counters: DeviceCounters,
}

impl FileDevice {
    /// Opens (creating with mode 0600 if needed) the file at `path`; its size is kept.
    pub fn open(path: &Path) -> Result<FileDevice, PmError> {
        let io = |what, source| PmError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        let file = super::open_backing_file(path)?;
        let size = file.metadata().map_err(|e| io("stat", e))?.len();
        Ok(FileDevice {
            file,
            path: path.to_owned(),
            size: AtomicU64::new(size),
            dirty: AtomicBool::new(false),
            counters: DeviceCounters::default(),
        })
    }

    fn io(&self, what: &'static str, source: std::io::Error) -> PmError {
        PmError::Io {
            what,
            path: self.path.display().to_string(),
            source,
        }
    }
}

impl PmDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), PmError> {
        check_bounds(off, buf.len() as u64, self.size())?;
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| self.io("pread", e))
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), PmError> {
        check_bounds(off, data.len() as u64, self.size())?;
        self.file
            .write_all_at(data, off)
            .map_err(|e| self.io("pwrite", e))?;
        self.dirty.store(true, Ordering::Release);
        self.counters.wrote(data.len() as u64);
        Ok(())
    }

    fn flush(&self, _off: u64, len: u64) -> Result<(), PmError> {
        self.counters.flushed(len);
        Ok(())
    }

    fn drain(&self) -> Result<(), PmError> {
        if self.dirty.swap(false, Ordering::AcqRel) {
            self.file.sync_data().map_err(|e| self.io("fdatasync", e))?;
            self.counters.drained();
        }
        Ok(())
    }

    fn method(&self) -> FlushMethod {
        FlushMethod::Fdatasync
    }

    fn grow(&self, size: u64) -> Result<(), PmError> {
        if size > self.size() {
            self.file
                .set_len(size)
                .map_err(|e| self.io("ftruncate", e))?;
            self.size.store(size, Ordering::Release);
        }
        Ok(())
    }

    fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }
}

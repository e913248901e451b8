//! Host PM as a memory-mapped file: a DAX file mapped with `MAP_SYNC` (flushed with clwb), or an
//! emulated-PM file on tmpfs/ext4 (flushed with msync, or with clwb when asked to model PM cost).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::flush::{copy_nontemporal, cpu_flush_method, flush_lines, store_fence};

/// Writes at least this long use non-temporal stores (libpmem's default threshold).
const NT_THRESHOLD: usize = 256;
use super::{check_bounds, DeviceCounters, DeviceStats, FlushMethod, PmDevice, PmError};

const MAP_SHARED_VALIDATE: i32 = 0x03;
const MAP_SYNC: i32 = 0x80000;

/// How to make a non-DAX mapping durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FlushPolicy {
    /// DAX: CPU flushes; otherwise msync (the durable choice for a page-cache file).
    #[default]
    Auto,
    /// Always CPU cache flushes: models real PM cost on an emulated pool in DRAM (tmpfs). Such a
    /// pool survives the host service's death (the page cache keeps it), not a power failure.
    CpuFlush,
}

/// How to open a [`MappedFile`].
#[derive(Clone, Copy, Debug, Default)]
pub struct MapOptions {
    /// Size to extend a new or shorter file to; 0 keeps the existing size.
    pub size: u64,
    /// How to make a non-DAX mapping durable.
    pub policy: FlushPolicy,
    /// Take an advisory lock so a second process gets a clear error.
    pub exclusive: bool,
    /// Pre-fault the whole mapping (`MAP_POPULATE`), so commits never take page faults.
    pub populate: bool,
}

/// A file mapped shared into the host service.
#[derive(Debug)]
pub struct MappedFile {
    file: File,
    path: PathBuf,
    ptr: *mut u8,
    size: u64,
    method: FlushMethod,
    dax: bool,
    /// Byte ranges flushed since the last drain (msync only).
    pending: Mutex<Vec<(u64, u64)>>,
    counters: DeviceCounters,
}

// SAFETY: the mapping is shared memory owned by this struct for its lifetime; every access is
// bounds-checked, and the pending list is behind a mutex. Concurrent writes to the same bytes are
// ordered by the pool's own locking.
unsafe impl Send for MappedFile {}
// SAFETY: see `Send`; `&self` methods only copy bytes in and out of the mapping.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Opens or creates (mode 0600) the file at `path` and maps it. A new or shorter file is
    /// extended to `size` bytes with `posix_fallocate`; `size == 0` keeps the existing size.
    /// With `exclusive`, takes an advisory lock so a second process gets a clear error.
    pub fn open(
        path: &Path,
        size: u64,
        policy: FlushPolicy,
        exclusive: bool,
    ) -> Result<MappedFile, PmError> {
        Self::open_with(
            path,
            MapOptions {
                size,
                policy,
                exclusive,
                populate: false,
            },
        )
    }

    /// [`MappedFile::open`] with every option.
    pub fn open_with(path: &Path, opts: MapOptions) -> Result<MappedFile, PmError> {
        let MapOptions {
            size,
            policy,
            exclusive,
            populate,
        } = opts;
        let io = |what, source| PmError::Io {
            what,
            path: path.display().to_string(),
            source,
        };
        let file = super::open_backing_file(path)?;
        if exclusive {
            // SAFETY: flock on a file descriptor we own.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                return Err(io("lock (is another vpm process using this pool?)", err));
            }
        }
        let current = file.metadata().map_err(|e| io("stat", e))?.len();
        let size = if size == 0 { current } else { size };
        if current < size {
            // SAFETY: posix_fallocate on our own descriptor with a non-negative range.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as i64) };
            if rc != 0 {
                return Err(io("fallocate", std::io::Error::from_raw_os_error(rc)));
            }
        }
        if size == 0 {
            return Err(io(
                "map",
                std::io::Error::other("empty file, not a VPM pool"),
            ));
        }
        let (ptr, dax) = map_file(&file, size, populate).map_err(|e| io("mmap", e))?;
        let method = match (dax, policy) {
            (true, _) | (false, FlushPolicy::CpuFlush) => cpu_flush_method(),
            (false, FlushPolicy::Auto) => FlushMethod::Msync,
        };
        tracing::debug!(path = %path.display(), size, dax, method = method.name(), "mapped PM file");
        Ok(MappedFile {
            file,
            path: path.to_owned(),
            ptr,
            size,
            method,
            dax,
            pending: Mutex::new(Vec::new()),
            counters: DeviceCounters::default(),
        })
    }

    /// Whether the mapping is DAX with `MAP_SYNC` (real PM).
    pub fn is_dax(&self) -> bool {
        self.dax
    }

    /// Base address of the mapping, for callers that map pool pages elsewhere or read in place.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// The mapped file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn msync_pending(&self) -> Result<(), PmError> {
        let mut ranges = std::mem::take(&mut *self.pending.lock().expect("pending lock"));
        ranges.sort_unstable();
        let page = vpm_abi::PAGE_SIZE;
        let mut merged: Vec<(u64, u64)> = Vec::new();
        for (off, len) in ranges {
            let (start, end) = (off & !(page - 1), (off + len).div_ceil(page) * page);
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        for (start, end) in merged {
            // SAFETY: [start, end) is page-aligned and inside the mapping (flush checked bounds).
            let rc = unsafe {
                libc::msync(
                    self.ptr.add(start as usize) as *mut libc::c_void,
                    (end.min(self.size.div_ceil(page) * page) - start) as usize,
                    libc::MS_SYNC,
                )
            };
            if rc != 0 {
                return Err(PmError::Io {
                    what: "msync",
                    path: self.path.display().to_string(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }
}

/// Maps `file` shared, trying `MAP_SYNC` first; returns the address and whether it is DAX.
fn map_file(file: &File, size: u64, populate: bool) -> std::io::Result<(*mut u8, bool)> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let extra = if populate { libc::MAP_POPULATE } else { 0 };
    for (flags, dax) in [
        (MAP_SHARED_VALIDATE | MAP_SYNC, true),
        (libc::MAP_SHARED, false),
    ] {
        let flags = flags | extra;
        // SAFETY: a fresh mapping of our own descriptor; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                prot,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return Ok((p as *mut u8, dax));
        }
    }
    Err(std::io::Error::last_os_error())
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `open`; no reference outlives self.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.size as usize) };
    }
}

impl PmDevice for MappedFile {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), PmError> {
        check_bounds(off, buf.len() as u64, self.size)?;
        // SAFETY: bounds checked above; buf is a distinct host buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), PmError> {
        check_bounds(off, data.len() as u64, self.size)?;
        // SAFETY: bounds checked above; data is a distinct host buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off as usize), data.len())
        };
        self.counters.wrote(data.len() as u64);
        Ok(())
    }

    fn write_u64(&self, off: u64, value: u64) -> Result<(), PmError> {
        if off % 8 != 0 {
            return Err(PmError::Unaligned(off));
        }
        check_bounds(off, 8, self.size)?;
        // SAFETY: in bounds and 8-aligned (the mapping is page-aligned), so this is one atomic
        // 8-byte store on x86-64.
        unsafe { std::ptr::write_volatile(self.ptr.add(off as usize) as *mut u64, value.to_le()) };
        self.counters.wrote(8);
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<(), PmError> {
        check_bounds(off, len, self.size)?;
        self.counters.flushed(len);
        match self.method {
            FlushMethod::Msync => self.pending.lock().expect("pending lock").push((off, len)),
            // SAFETY: the range is inside the mapping (checked above).
            m => unsafe { flush_lines(m, self.ptr.add(off as usize), len as usize) },
        }
        Ok(())
    }

    fn write_flush(&self, off: u64, data: &[u8]) -> Result<(), PmError> {
        if data.len() < NT_THRESHOLD {
            self.write(off, data)?;
            return self.flush(off, data.len() as u64);
        }
        check_bounds(off, data.len() as u64, self.size)?;
        let dst = off as usize;
        // SAFETY: bounds checked above; data is a distinct host buffer.
        unsafe { copy_nontemporal(self.ptr.add(dst), data) };
        if self.method == FlushMethod::Msync {
            // Streaming stores here too: an epoch's commit writes every changed page, and
            // through the cache it would evict the guest's working set (random KV puts at
            // 10 ms epochs ran 10–20 % faster this way; docs/costs.md §10). `drain` fences
            // them before its msync.
            self.counters.wrote(data.len() as u64);
            return self.flush(off, data.len() as u64);
        }
        // The unaligned edges went through the cache: write those lines back.
        let (head, tail) = (dst & 63, (dst + data.len()) & 63);
        // SAFETY: both edge lines are inside the mapping (they hold bytes of the range).
        unsafe {
            if head != 0 {
                flush_lines(self.method, self.ptr.add(dst), 1);
            }
            if tail != 0 {
                flush_lines(self.method, self.ptr.add(dst + data.len() - 1), 1);
            }
        }
        self.counters.wrote(data.len() as u64);
        self.counters.flushed(data.len() as u64);
        Ok(())
    }

    fn drain(&self) -> Result<(), PmError> {
        self.counters.drained();
        match self.method {
            FlushMethod::Msync => {
                store_fence();
                self.msync_pending()
            }
            _ => {
                store_fence();
                Ok(())
            }
        }
    }

    fn method(&self) -> FlushMethod {
        self.method
    }

    fn mapped_at(&self, off: u64, len: u64) -> Option<*mut u8> {
        check_bounds(off, len, self.size).ok()?;
        // SAFETY: in bounds (checked above), so the pointer stays inside the mapping.
        Some(unsafe { self.ptr.add(off as usize) })
    }

    fn note_streamed(&self, off: u64, len: u64) -> Result<(), PmError> {
        check_bounds(off, len, self.size)?;
        self.counters.wrote(len);
        self.counters.flushed(len);
        if self.method == FlushMethod::Msync {
            self.pending.lock().expect("pending lock").push((off, len));
        }
        Ok(())
    }

    fn with_bytes(&self, off: u64, len: usize, f: &mut dyn FnMut(&[u8])) -> Result<(), PmError> {
        check_bounds(off, len as u64, self.size)?;
        // SAFETY: in bounds; the slice lives only for the call. Pool pages are written by the pool
        // itself, which does not write while it holds this view, and through `mapped_at` only in
        // homes the pool has reserved and does not read until the writer is done.
        let bytes = unsafe { std::slice::from_raw_parts(self.ptr.add(off as usize), len) };
        f(bytes);
        Ok(())
    }

    fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        Some(self.file.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use vpm_abi::PAGE_SIZE;

    use super::*;

    #[test]
    fn data_written_through_the_mapping_is_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        for policy in [FlushPolicy::Auto, FlushPolicy::CpuFlush] {
            let dev = MappedFile::open(&path, 1 << 20, policy, true).unwrap();
            dev.write(PAGE_SIZE, b"hello pm").unwrap();
            dev.write_u64(8192, 0xfeed).unwrap();
            dev.flush(PAGE_SIZE, 8).unwrap();
            dev.flush(8192, 8).unwrap();
            dev.drain().unwrap();
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                &bytes[PAGE_SIZE as usize..PAGE_SIZE as usize + 8],
                b"hello pm"
            );
            assert_eq!(&bytes[8192..8200], &0xfeedu64.to_le_bytes());
            assert_eq!(dev.stats().bytes_written, 16);
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// Large writes take streaming stores under either flush method; after the drain the file
    /// holds every byte, the unaligned edges included.
    #[test]
    fn streamed_page_writes_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool");
        let data: Vec<u8> = (0..PAGE_SIZE as u32 + 100)
            .map(|i| (i * 13 + 5) as u8)
            .collect();
        for (policy, off) in [(FlushPolicy::Auto, 4096), (FlushPolicy::CpuFlush, 8195)] {
            let dev = MappedFile::open(&path, 1 << 20, policy, true).unwrap();
            dev.write_flush(off, &data).unwrap();
            dev.drain().unwrap();
            drop(dev);
            let bytes = std::fs::read(&path).unwrap();
            let at = off as usize;
            assert_eq!(
                &bytes[at..at + data.len()],
                &data[..],
                "{policy:?} at {off}"
            );
        }
    }

    #[test]
    fn out_of_bounds_and_unaligned_accesses_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let dev = MappedFile::open(&dir.path().join("p"), 8192, FlushPolicy::Auto, false).unwrap();
        assert!(matches!(
            dev.write(8190, b"xyz"),
            Err(PmError::OutOfBounds { .. })
        ));
        assert!(matches!(
            dev.read(u64::MAX, &mut [0u8; 2]),
            Err(PmError::OutOfBounds { .. })
        ));
        assert!(matches!(dev.write_u64(4, 1), Err(PmError::Unaligned(4))));
    }

    #[test]
    fn a_second_exclusive_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p");
        let _first = MappedFile::open(&path, 8192, FlushPolicy::Auto, true).unwrap();
        let err = MappedFile::open(&path, 0, FlushPolicy::Auto, true).unwrap_err();
        assert!(err.to_string().contains("another vpm process"), "{err}");
    }
}

//! An owned shared mapping of a file: mapped by its constructor, unmapped when dropped. Used for
//! the VMM's own views of its tier files, a QEMU guest's RAM file, and by the benchmarks.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Why a file could not be mapped.
#[derive(Debug, thiserror::Error)]
pub enum MappingError {
    /// mmap refused.
    #[error("mmap {len} bytes of a file: {source}")]
    Mmap {
        /// Bytes asked for.
        len: usize,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A `MAP_SHARED`, read-write mapping of the first `len` bytes of a file, at an address the
/// kernel chose.
#[derive(Debug)]
pub struct FileMapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is owned by this value and is plain shared memory; whoever writes it through
// the raw pointer synchronises as it would for any shared memory.
unsafe impl Send for FileMapping {}
// SAFETY: as above; `&FileMapping` hands out only the pointer and read-only views.
unsafe impl Sync for FileMapping {}

impl FileMapping {
    /// Maps the first `len` bytes (`len > 0`) of `file` (opened read-write) shared; with
    /// `populate`, pre-faults the pages.
    pub fn shared(file: &File, len: usize, populate: bool) -> Result<FileMapping, MappingError> {
        let flags = libc::MAP_SHARED | if populate { libc::MAP_POPULATE } else { 0 };
        // SAFETY: a fresh mapping at a kernel-chosen address: it overlaps nothing of ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(MappingError::Mmap {
                len,
                source: io::Error::last_os_error(),
            });
        }
        Ok(FileMapping {
            ptr: p as *mut u8,
            len,
        })
    }

    /// The first mapped byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Mapped bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a mapping is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The mapped bytes, read-only. Another process sharing the file may change them meanwhile.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped readable for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The mapped bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `len` bytes are mapped writable for the lifetime of self; `&mut self` excludes
        // other views through this value.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for FileMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what the constructor mapped; nothing borrows it any more.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpm_abi::PAGE_SIZE;

    #[test]
    fn writes_reach_the_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(PAGE_SIZE).unwrap();
        let mut m = FileMapping::shared(&f, PAGE_SIZE as usize, true).unwrap();
        m.as_mut_slice()[..3].copy_from_slice(b"vpm");
        drop(m);
        let m = FileMapping::shared(&f, PAGE_SIZE as usize, false).unwrap();
        assert_eq!(&m.as_slice()[..3], b"vpm");
    }

    #[test]
    fn a_zero_length_mapping_is_an_error() {
        let f = tempfile::tempfile().unwrap();
        assert!(FileMapping::shared(&f, 0, false).is_err());
    }
}

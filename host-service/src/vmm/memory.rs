//! The guest-visible vPM mapping: one host virtual range whose pages are backed by the DRAM tier
//! (a memfd), the PM tier (working copies in a file beside the pool), or — in the direct modes —
//! the pool's PM homes. Moving a page between tiers is copy + `mmap(MAP_FIXED)`; KVM's MMU
//! notifiers make the guest see the new backing without a memslot change. Moves are done in runs
//! of adjacent pages, one `mmap` per run (a remap costs an IPI while vCPUs run).

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::Path;

use vpm_abi::PAGE_SIZE;

use super::mapping::{FileMapping, MappingError};
use crate::tier::{PageMover, Placement};

/// `vpm_abi::PAGE_SIZE` as a byte count.
const PAGE: usize = PAGE_SIZE as usize;

/// Errors of the vPM mapping.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// An OS call failed.
    #[error("{what}: {source}")]
    Os {
        /// The call.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Mapping a tier file for the VMM's own copies failed.
    #[error("map a tier file: {0}")]
    Map(#[from] MappingError),
}

fn os(what: &'static str) -> MemoryError {
    MemoryError::Os {
        what,
        source: std::io::Error::last_os_error(),
    }
}

/// The DRAM and PM working-copy files of a tiered VM.
struct Tiers {
    dram: File,
    work: File,
    dram_view: FileMapping,
    work_view: FileMapping,
}

/// The vPM mapping of one VM.
pub struct VpmMemory {
    base: *mut u8,
    size: usize,
    tiers: Option<Tiers>,
}

// SAFETY: the mapping is owned by this struct; the VMM serialises tier moves behind its state lock
// and the guest's accesses are its own business (as with any guest memory).
unsafe impl Send for VpmMemory {}

fn memfd(name: &str, size: usize) -> Result<File, MemoryError> {
    let cname = std::ffi::CString::new(name).expect("no NUL in name");
    // SAFETY: memfd_create with a valid C string.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(os("memfd_create"));
    }
    // SAFETY: fd is a fresh descriptor we own.
    let f = unsafe { File::from_raw_fd(fd) };
    f.set_len(size as u64).map_err(|source| MemoryError::Os {
        what: "size the DRAM tier",
        source,
    })?;
    Ok(f)
}

fn reserve(size: usize) -> Result<*mut u8, MemoryError> {
    // SAFETY: an inaccessible anonymous reservation at a kernel-chosen address.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(os("reserve vPM address range"));
    }
    Ok(p as *mut u8)
}

impl VpmMemory {
    /// A tiered vPM of `size` bytes: every page starts in the PM tier (a working-copy file at
    /// `work_path`, created 0600), filled by `init` page by page (the recovered image).
    pub fn tiered(
        name: &str,
        size: usize,
        work_path: &Path,
        mut init: impl FnMut(u64, &mut [u8]),
    ) -> Result<VpmMemory, MemoryError> {
        let work = crate::private_file::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(work_path)
            .map_err(|source| MemoryError::Os {
                what: "open the PM working file",
                source,
            })?;
        work.set_len(size as u64)
            .map_err(|source| MemoryError::Os {
                what: "size the PM working file",
                source,
            })?;
        let dram = memfd(&format!("vpm-dram-{name}"), size)?;
        let tiers = Tiers {
            dram_view: FileMapping::shared(&dram, size, false)?,
            work_view: FileMapping::shared(&work, size, false)?,
            dram,
            work,
        };
        for (vpn, page) in tiers_work_pages(&tiers, size).enumerate() {
            init(vpn as u64, page);
        }
        let base = reserve(size)?;
        let mem = VpmMemory {
            base,
            size,
            tiers: Some(tiers),
        };
        mem.map_run(0, size / PAGE, Placement::Pm)?;
        Ok(mem)
    }

    /// A direct vPM: page `i` mapped to file `homes[i].0` at offset `homes[i].1` (the pool's
    /// homes), one `mmap` per run of adjacent homes.
    pub fn direct(homes: &[(i32, u64)]) -> Result<VpmMemory, MemoryError> {
        let size = homes.len() * PAGE;
        let base = reserve(size)?;
        let mut i = 0;
        while i < homes.len() {
            let (fd, off) = homes[i];
            let mut n = 1;
            while i + n < homes.len() && homes[i + n] == (fd, off + (n * PAGE) as u64) {
                n += 1;
            }
            // SAFETY: maps over our own reservation, inside [base, base + size).
            let p = unsafe {
                libc::mmap(
                    base.add(i * PAGE) as *mut libc::c_void,
                    n * PAGE,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    off as i64,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(os("map PM homes"));
            }
            i += n;
        }
        Ok(VpmMemory {
            base,
            size,
            tiers: None,
        })
    }

    /// Host address of the guest-visible mapping (for the memslot).
    pub fn host_base(&self) -> *mut u8 {
        self.base
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The guest-visible bytes. The caller makes sure no vCPU writes them meanwhile when it needs
    /// a stable view (epochs pause the vCPUs; hints are served while the vCPU waits in the exit).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: the whole range is mapped for the lifetime of self.
        unsafe { std::slice::from_raw_parts(self.base, self.size) }
    }

    /// `msync(MS_SYNC)` of the whole guest-visible range (the virtio-pmem-like baseline).
    pub fn msync_all(&self) -> Result<(), MemoryError> {
        // SAFETY: msync of our own mapping.
        let rc = unsafe { libc::msync(self.base as *mut libc::c_void, self.size, libc::MS_SYNC) };
        if rc != 0 {
            return Err(os("msync vPM"));
        }
        Ok(())
    }

    fn map_run(&self, first: usize, pages: usize, to: Placement) -> Result<(), MemoryError> {
        let tiers = self.tiers.as_ref().expect("tiered vPM");
        let fd = match to {
            Placement::Dram => tiers.dram.as_raw_fd(),
            Placement::Pm => tiers.work.as_raw_fd(),
        };
        // SAFETY: maps file pages over our own reservation inside [base, base + size).
        let p = unsafe {
            libc::mmap(
                self.base.add(first * PAGE) as *mut libc::c_void,
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                (first * PAGE) as i64,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(os("remap vPM pages"));
        }
        Ok(())
    }

    /// Moves pages `[first, first + pages)` (all currently in the other tier) to `to`: copies their
    /// content, remaps them in one call, and frees the old tier's copies. The vCPUs must not write
    /// these pages meanwhile (they are paused, or the caller is the only vCPU, in an exit).
    pub fn move_run(&self, first: usize, pages: usize, to: Placement) -> Result<(), MemoryError> {
        let tiers = self.tiers.as_ref().expect("tiered vPM");
        let (src_view, dst_view, src_file) = match to {
            Placement::Dram => (&tiers.work_view, &tiers.dram_view, &tiers.work),
            Placement::Pm => (&tiers.dram_view, &tiers.work_view, &tiers.dram),
        };
        let (off, len) = (first * PAGE, pages * PAGE);
        // SAFETY: both views map whole files of `size` bytes; [off, off + len) is inside them and
        // the two files are distinct, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src_view.as_ptr().add(off),
                dst_view.as_ptr().add(off),
                len,
            )
        };
        self.map_run(first, pages, to)?;
        // SAFETY: punching a hole in our own file frees the old copy; nothing maps it any more.
        let rc = unsafe {
            libc::fallocate(
                src_file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            )
        };
        if rc != 0 {
            return Err(os("free the old tier's pages"));
        }
        Ok(())
    }
}

fn tiers_work_pages(tiers: &Tiers, size: usize) -> impl Iterator<Item = &mut [u8]> {
    // SAFETY: the work view maps `size` bytes; the pages are handed out one at a time, disjoint.
    let all = unsafe { std::slice::from_raw_parts_mut(tiers.work_view.as_ptr(), size) };
    all.chunks_mut(PAGE)
}

impl Drop for VpmMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping the range reserved in the constructor (and everything mapped over it).
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.size) };
    }
}

impl PageMover for VpmMemory {
    type Error = MemoryError;

    fn move_run(&mut self, first: u64, count: u64, to: Placement) -> Result<(), MemoryError> {
        VpmMemory::move_run(self, first as usize, count as usize, to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moves_keep_content_in_both_directions() {
        let dir = tempfile::tempdir().unwrap();
        let size = 64 * PAGE;
        let mem = VpmMemory::tiered("t", size, &dir.path().join("w"), |vpn, page| {
            page.fill(vpn as u8 + 1)
        })
        .unwrap();
        for (first, n, to) in [
            (0, 8, Placement::Dram),
            (3, 2, Placement::Pm),
            (40, 24, Placement::Dram),
        ] {
            mem.move_run(first, n, to).unwrap();
        }
        for vpn in 0..64 {
            assert!(
                mem.bytes()[vpn * PAGE..][..PAGE]
                    .iter()
                    .all(|&b| b == vpn as u8 + 1),
                "page {vpn}"
            );
        }
    }
}

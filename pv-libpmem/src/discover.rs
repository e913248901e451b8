//! Finding `/dev/vpm` mappings the library did not make: a program may `mmap` the device itself
//! (fio's dev-dax engine does) and hand those addresses to `pmem_persist` & co. The driver's
//! read-only status page counts vPM mappings; only when that count moved since the last look
//! are the process's mappings listed again from `/proc/self/maps`. A persist outside every
//! known mapping therefore costs one load, not a system call.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use vpm_abi::proto::uapi::{VpmStatus, VPM_STATUS_MAGIC, VPM_STATUS_OFFSET};

use crate::{ranges, vpmdev};

/// The device node the driver creates.
const DEVICE: &str = "/dev/vpm";
/// `map_generation` value meaning "list again" (never a real count).
const STALE: u64 = u64::MAX;

/// An open `/dev/vpm`: its status page and the node's identity in `/proc/self/maps`.
struct Watcher {
    status: &'static VpmStatusView,
    /// `st_dev` and `st_ino` of the device node (the "dev" and "inode" columns of a mapping).
    node: (u64, u64),
}

/// The status page as user space reads it (atomically).
#[repr(C)]
struct VpmStatusView {
    magic: AtomicU64,
    map_generation: AtomicU64,
}

const _: () = assert!(size_of::<VpmStatusView>() == size_of::<VpmStatus>());

/// The generation the current `Found` ranges were listed at.
static SEEN: AtomicU64 = AtomicU64::new(STALE);
/// Serialises listings (two threads missing at once list once).
static LISTING: Mutex<()> = Mutex::new(());

fn watcher() -> Option<&'static Watcher> {
    static W: OnceLock<Option<Watcher>> = OnceLock::new();
    W.get_or_init(open_watcher).as_ref()
}

fn open_watcher() -> Option<Watcher> {
    let path = std::ffi::CString::new(DEVICE).ok()?;
    // SAFETY: opening a NUL-terminated path.
    let fd: RawFd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let watcher = watch(fd);
    if watcher.is_none() || !vpmdev::adopt(fd) {
        // SAFETY: closing the descriptor opened above (the status mapping outlives it).
        unsafe { libc::close(fd) };
    }
    watcher
}

fn watch(fd: RawFd) -> Option<Watcher> {
    // SAFETY: fstat into a zeroed stat buffer we own.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `fd` is open.
    if unsafe { libc::fstat(fd, &mut st) } != 0
        || st.st_mode & libc::S_IFMT != libc::S_IFCHR
        || !vpmdev::is_vpm_device(st.st_rdev)
    {
        return None;
    }
    // SAFETY: a fresh read-only shared mapping of one page; the kernel checks the offset.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            vpm_abi::PAGE_SIZE as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            VPM_STATUS_OFFSET as libc::off_t,
        )
    };
    if page == libc::MAP_FAILED {
        return None;
    }
    // SAFETY: the mapping is one readable page, never unmapped, page-aligned; the driver writes
    // it only with atomic stores.
    let status: &'static VpmStatusView = unsafe { &*(page as *const VpmStatusView) };
    if status.magic.load(Ordering::Acquire) != VPM_STATUS_MAGIC {
        return None;
    }
    Some(Watcher {
        status,
        node: (st.st_dev, st.st_ino),
    })
}

/// Whether this process can have `/dev/vpm` mappings at all (the device answers).
pub fn available() -> bool {
    watcher().is_some()
}

/// Makes the next [`refresh`] list the mappings again (after the driver refused a range).
pub fn invalidate() {
    SEEN.store(STALE, Ordering::Release);
}

/// Lists the process's `/dev/vpm` mappings again if a new one may exist; true if it did.
pub fn refresh() -> bool {
    let Some(w) = watcher() else {
        return false;
    };
    let now = w.status.map_generation.load(Ordering::Acquire);
    if SEEN.load(Ordering::Acquire) == now {
        return false;
    }
    let _one = LISTING.lock().unwrap_or_else(|e| e.into_inner());
    if SEEN.load(Ordering::Acquire) == now {
        return true;
    }
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return false;
    };
    ranges::replace_found(&vpm_mappings(&maps, w.node));
    SEEN.store(now, Ordering::Release);
    true
}

/// The `[start, end)` of every vPM mapping of the node `node` in a `/proc/<pid>/maps` text
/// (the status page, at its far offset, is not vPM).
fn vpm_mappings(maps: &str, node: (u64, u64)) -> Vec<(usize, usize)> {
    maps.lines()
        .filter_map(|line| {
            let mut col = line.split_whitespace();
            let (range, _perms, offset, dev, inode) = (
                col.next()?,
                col.next()?,
                col.next()?,
                col.next()?,
                col.next()?,
            );
            let (major, minor) = dev.split_once(':')?;
            let dev = libc::makedev(
                u32::from_str_radix(major, 16).ok()?,
                u32::from_str_radix(minor, 16).ok()?,
            );
            let ours = (dev, inode.parse::<u64>().ok()?) == node
                && u64::from_str_radix(offset, 16).ok()? < VPM_STATUS_OFFSET;
            let (start, end) = range.split_once('-')?;
            let span = (
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            );
            ours.then_some(span)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_only_vpm_mappings_of_the_node() {
        let maps = "\
7f0000000000-7f0004000000 rw-s 00000000 00:05 7 /dev/vpm
7f0004000000-7f0004001000 r--s 100000000000 00:05 7 /dev/vpm
7f0005000000-7f0005002000 rw-s 00004000 00:05 8 /dev/other
7f0006000000-7f0006001000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        let node = (libc::makedev(0, 5), 7);
        assert_eq!(
            vpm_mappings(maps, node),
            vec![(0x7f00_0000_0000, 0x7f00_0400_0000)]
        );
        assert!(vpm_mappings("garbage\n\n1-2 rw\n", node).is_empty());
    }
}

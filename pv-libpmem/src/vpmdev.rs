//! `/dev/vpm`, the VPM guest driver: device detection, and the ioctls behind PV persistence.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use vpm_abi::proto::uapi::{
    VpmInfo, VpmRange, VPM_IOC_DRAIN, VPM_IOC_FLUSH, VPM_IOC_INFO, VPM_IOC_PERSIST,
    VPM_IOC_REQUEST_EPOCH, VPM_IOC_SET_PERSISTENT, VPM_IOC_SET_TRANSIENT,
};

use crate::{discover, ranges};

/// The descriptor kept open for ioctls once `/dev/vpm` has been mapped (-1 before).
static FD: AtomicI32 = AtomicI32::new(-1);
/// Whether flushes were queued since the last drain.
static PENDING: AtomicBool = AtomicBool::new(false);

/// Whether the character device `rdev` is the VPM driver's (`/sys/dev/char/M:m` → `.../vpm`).
pub fn is_vpm_device(rdev: libc::dev_t) -> bool {
    let link = format!("/sys/dev/char/{}:{}", libc::major(rdev), libc::minor(rdev));
    std::fs::canonicalize(link)
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "vpm"))
        .unwrap_or(false)
}

/// Reads the device's info.
pub fn info(fd: RawFd) -> Result<VpmInfo, i32> {
    let mut info = VpmInfo::default();
    // SAFETY: VPM_IOC_INFO writes one VpmInfo into the buffer we pass.
    let rc = unsafe { libc::ioctl(fd, VPM_IOC_INFO as _, &mut info as *mut VpmInfo) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(info)
}

/// Keeps `fd` for later ioctls (the first `/dev/vpm` mapping's descriptor).
pub fn adopt(fd: RawFd) -> bool {
    FD.compare_exchange(-1, fd, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
}

fn range_ioctl(cmd: u32, addr: usize, len: usize) -> Result<(), i32> {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return Err(libc::ENODEV);
    }
    let r = VpmRange {
        addr: addr as u64,
        len: len as u64,
    };
    // SAFETY: the ioctl reads one VpmRange from the buffer we pass; the driver checks the range.
    let rc = unsafe { libc::ioctl(fd, cmd as _, &r as *const VpmRange) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

fn plain_ioctl(cmd: u32) -> Result<(), i32> {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return Err(libc::ENODEV);
    }
    // SAFETY: an argument-less ioctl on our descriptor.
    let rc = unsafe { libc::ioctl(fd, cmd as _, 0usize) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO));
    }
    Ok(())
}

/// The `/dev/vpm` parts of `[addr, addr + len)` and whether they cover all of it, looking for
/// mappings the program made itself when they do not.
fn pv_parts(addr: usize, len: usize) -> (Vec<(usize, usize)>, bool) {
    if !ranges::had_vpm() && !discover::available() {
        return (Vec::new(), false);
    }
    let whole = |p: &[(usize, usize)]| p.iter().map(|p| p.1).sum::<usize>() == len;
    let mut parts = ranges::vpm_parts(addr, len);
    if !whole(&parts) && discover::refresh() {
        parts = ranges::vpm_parts(addr, len);
    }
    let all = whole(&parts);
    (parts, all)
}

/// What a persist did on the PV side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PvOutcome {
    /// Durable already (one call, one hint).
    Durable,
    /// Every byte queued for the next drain.
    Queued,
    /// Some or all of the range must be flushed from the CPU caches (its PV parts are queued).
    Native,
}

/// Queues the `/dev/vpm` parts of a range; returns whether the whole range was queued (else the
/// caller flushes it from the CPU caches as well).
pub fn flush(addr: usize, len: usize) -> bool {
    if len == 0 {
        return false;
    }
    let (parts, all) = pv_parts(addr, len);
    queue(&parts, all)
}

/// Queues `parts`; `all` stays true only if they cover the range and the driver took each.
fn queue(parts: &[(usize, usize)], mut all: bool) -> bool {
    for &(a, l) in parts {
        match range_ioctl(VPM_IOC_FLUSH, a, l) {
            Ok(()) => PENDING.store(true, Ordering::Release),
            Err(_) => {
                // A mapping gone since it was listed: list again next time; this range is
                // flushed natively.
                discover::invalidate();
                all = false;
            }
        }
    }
    all
}

/// The PV side of a persist: one `/dev/vpm` range with nothing else queued is made durable with
/// one call and one hint; otherwise the PV parts are queued (the caller drains).
pub fn persist(addr: usize, len: usize) -> PvOutcome {
    if len == 0 {
        return PvOutcome::Native;
    }
    let (parts, all) = pv_parts(addr, len);
    if all && parts.len() == 1 && !PENDING.load(Ordering::Acquire) {
        // Non-temporal stores of a copy must be visible before the host reads the range.
        crate::cpu::fence();
        if range_ioctl(VPM_IOC_PERSIST, addr, len).is_ok() {
            return PvOutcome::Durable;
        }
        discover::invalidate();
        return PvOutcome::Native;
    }
    if queue(&parts, all) {
        PvOutcome::Queued
    } else {
        PvOutcome::Native
    }
}

/// Makes every queued range durable: one doorbell for the whole batch.
pub fn drain() {
    if PENDING.load(Ordering::Acquire) && PENDING.swap(false, Ordering::AcqRel) {
        let _ = plain_ioctl(VPM_IOC_DRAIN);
    }
}

/// Whether `[addr, addr + len)` lies wholly in `/dev/vpm` mappings.
pub fn vpm_active(addr: *const u8, len: usize) -> bool {
    len != 0 && pv_parts(addr as usize, len).1
}

/// Marks whole pages transient (DRAM only, zero after a host crash).
pub fn set_transient(addr: *mut u8, len: usize) -> Result<(), i32> {
    range_ioctl(VPM_IOC_SET_TRANSIENT, addr as usize, len)
}

/// Marks whole pages persistent again.
pub fn set_persistent(addr: *mut u8, len: usize) -> Result<(), i32> {
    range_ioctl(VPM_IOC_SET_PERSISTENT, addr as usize, len)
}

/// Asks the host to commit an epoch.
pub fn request_epoch() -> Result<(), i32> {
    plain_ioctl(VPM_IOC_REQUEST_EPOCH)
}

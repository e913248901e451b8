//! `/dev/vpm`, the VPM guest driver: device detection, and the ioctls behind PV persistence.
//!
//! The descriptor is process-wide (ioctls on one descriptor are thread-safe); whether flushes
//! are queued is per thread, as libpmem's `pmem_drain` waits for the calling thread's flushes: a
//! drain on another thread can never make this thread's drain return early.
//!
//! A hint the host refuses (quota, no space, a stale mapping, a host error) never degrades
//! silently: the library asks for an epoch instead, which makes the whole vPM image durable before
//! it returns; only if that fails too is the range not durable, and then the failure is counted
//! ([`failures`]), recorded in `pmem_errormsg` and errno, and returned as `-1` where the libpmem
//! function returns a value.

use std::cell::Cell;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};

use vpm_abi::proto::uapi::{
    VpmInfo, VpmRange, VPM_IOC_DRAIN, VPM_IOC_FLUSH, VPM_IOC_INFO, VPM_IOC_PERSIST,
    VPM_IOC_REQUEST_EPOCH, VPM_IOC_SET_PERSISTENT, VPM_IOC_SET_TRANSIENT,
};

use crate::{discover, ranges};

/// The descriptor kept open for ioctls once `/dev/vpm` has been mapped (-1 before).
static FD: AtomicI32 = AtomicI32::new(-1);
/// PV hints the host refused and an epoch made durable instead.
static REFUSALS: AtomicU64 = AtomicU64::new(0);
/// PV hints the host refused whose fallback epoch failed as well: not durable.
static FAILURES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread queued flushes since its last drain.
    static PENDING: Cell<bool> = const { Cell::new(false) };
    /// Whether a flush of this thread since its last drain was lost (refused, epoch failed).
    static LOST: Cell<bool> = const { Cell::new(false) };
}

/// Hints refused by the host and made durable by a fallback epoch, since the program started.
pub fn refusals() -> u64 {
    REFUSALS.load(Ordering::Relaxed)
}

/// Hints refused by the host whose fallback epoch failed too (data not durable).
pub fn failures() -> u64 {
    FAILURES.load(Ordering::Relaxed)
}

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
    driver::range(fd, cmd, &r)
}

fn plain_ioctl(cmd: u32) -> Result<(), i32> {
    let fd = FD.load(Ordering::Acquire);
    if fd < 0 {
        return Err(libc::ENODEV);
    }
    driver::plain(fd, cmd)
}

/// The ioctls themselves (replaced by a scripted driver in unit tests).
#[cfg(not(test))]
mod driver {
    use super::VpmRange;

    fn last_errno() -> i32 {
        std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    }

    /// An ioctl taking one range.
    pub fn range(fd: i32, cmd: u32, r: &VpmRange) -> Result<(), i32> {
        // SAFETY: the ioctl reads one VpmRange from the buffer we pass; the driver checks it.
        let rc = unsafe { libc::ioctl(fd, cmd as _, r as *const VpmRange) };
        if rc != 0 {
            return Err(last_errno());
        }
        Ok(())
    }

    /// An ioctl without argument.
    pub fn plain(fd: i32, cmd: u32) -> Result<(), i32> {
        // SAFETY: an argument-less ioctl on our descriptor.
        let rc = unsafe { libc::ioctl(fd, cmd as _, 0usize) };
        if rc != 0 {
            return Err(last_errno());
        }
        Ok(())
    }
}

#[cfg(test)]
use tests::driver;

/// The host refused a hint for `len` bytes with `errno`: request an epoch, which makes
/// everything written so far durable before it returns. False (counted, errormsg and errno set)
/// if that fails too.
fn fall_back_to_epoch(what: &str, len: usize, errno: i32) -> bool {
    match request_epoch() {
        Ok(()) => {
            REFUSALS.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(epoch_errno) => {
            FAILURES.fetch_add(1, Ordering::Relaxed);
            crate::err::set(
                &format!(
                    "{what} of {len} bytes refused by the VPM host ({}), and the fallback \
                     epoch failed ({}): the data is not durable",
                    crate::err::strerror(errno),
                    crate::err::strerror(epoch_errno)
                ),
                errno,
            );
            false
        }
    }
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
    /// Durable already (one call, one hint, or a fallback epoch after a refusal).
    Durable,
    /// Every byte queued for the next drain.
    Queued,
    /// Some or all of the range must be flushed from the CPU caches (its PV parts are queued).
    Native,
    /// The host refused a PV part and the fallback epoch failed: not durable (errormsg set).
    Failed,
}

/// What a flush did on the PV side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushOutcome {
    /// Every byte queued with the driver, or made durable by a fallback epoch.
    Pv,
    /// The caller flushes (some of) the range from the CPU caches.
    Native,
    /// A PV part was refused and the fallback epoch failed: not durable (errormsg set).
    Failed,
}

/// Queues the `/dev/vpm` parts of a range.
pub fn flush(addr: usize, len: usize) -> FlushOutcome {
    if len == 0 {
        return FlushOutcome::Native;
    }
    let (parts, all) = pv_parts(addr, len);
    queue(&parts, all)
}

/// Queues `parts` (`all`: they cover the whole range).
fn queue(parts: &[(usize, usize)], all: bool) -> FlushOutcome {
    let mut outcome = if all {
        FlushOutcome::Pv
    } else {
        FlushOutcome::Native
    };
    for &(a, l) in parts {
        match range_ioctl(VPM_IOC_FLUSH, a, l) {
            Ok(()) => PENDING.with(|p| p.set(true)),
            Err(errno) => {
                // A mapping may have gone since it was listed: list again next time.
                discover::invalidate();
                if !fall_back_to_epoch("a flush", l, errno) {
                    LOST.with(|lost| lost.set(true));
                    outcome = FlushOutcome::Failed;
                }
            }
        }
    }
    outcome
}

/// The PV side of a persist: one `/dev/vpm` range with nothing else queued is made durable with
/// one call and one hint; otherwise the PV parts are queued (the caller drains).
pub fn persist(addr: usize, len: usize) -> PvOutcome {
    if len == 0 {
        return PvOutcome::Native;
    }
    let (parts, all) = pv_parts(addr, len);
    if all && parts.len() == 1 && !PENDING.with(Cell::get) {
        // Non-temporal stores of a copy must be visible before the host reads the range.
        crate::cpu::fence();
        return match range_ioctl(VPM_IOC_PERSIST, addr, len) {
            Ok(()) => PvOutcome::Durable,
            Err(errno) => {
                discover::invalidate();
                if fall_back_to_epoch("a persist", len, errno) {
                    PvOutcome::Durable
                } else {
                    PvOutcome::Failed
                }
            }
        };
    }
    match queue(&parts, all) {
        FlushOutcome::Pv => PvOutcome::Queued,
        FlushOutcome::Native => PvOutcome::Native,
        FlushOutcome::Failed => PvOutcome::Failed,
    }
}

/// Makes every range this thread queued durable: one doorbell for the whole batch. False (with
/// errormsg and errno set) if the host refused and the fallback epoch failed, now or for a flush
/// since the last drain.
pub fn drain() -> bool {
    let lost = LOST.with(|l| l.replace(false));
    if !PENDING.with(|p| p.replace(false)) {
        return !lost;
    }
    let drained = match plain_ioctl(VPM_IOC_DRAIN) {
        Ok(()) => true,
        Err(errno) => fall_back_to_epoch("a drain", 0, errno),
    };
    drained && !lost
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A scripted driver: each thread says which ioctls fail with which errno, and sees the
    /// calls it made.
    pub mod driver {
        use super::*;

        thread_local! {
            pub static FAIL: RefCell<Vec<(u32, i32)>> = const { RefCell::new(Vec::new()) };
            pub static CALLS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
        }

        fn answer(cmd: u32) -> Result<(), i32> {
            CALLS.with(|c| c.borrow_mut().push(cmd));
            FAIL.with(|f| match f.borrow().iter().find(|(c, _)| *c == cmd) {
                Some(&(_, errno)) => Err(errno),
                None => Ok(()),
            })
        }

        pub fn range(_fd: i32, cmd: u32, _r: &VpmRange) -> Result<(), i32> {
            answer(cmd)
        }

        pub fn plain(_fd: i32, cmd: u32) -> Result<(), i32> {
            answer(cmd)
        }
    }

    /// A `/dev/vpm` range in the table and a descriptor, as after `pmem_map_file`.
    fn vpm_range(base: usize) -> usize {
        let _ = adopt(1000);
        assert!(ranges::register(base, 0x10000, ranges::Kind::Vpm));
        base
    }

    fn script(fail: &[(u32, i32)]) {
        driver::FAIL.with(|f| *f.borrow_mut() = fail.to_vec());
        driver::CALLS.with(|c| c.borrow_mut().clear());
        PENDING.with(|p| p.set(false));
        LOST.with(|l| l.set(false));
    }

    fn calls() -> Vec<u32> {
        driver::CALLS.with(|c| c.borrow().clone())
    }

    #[test]
    fn a_refused_persist_is_made_durable_by_an_epoch_and_counted() {
        let b = vpm_range(0x7200_0000_0000);
        script(&[(VPM_IOC_PERSIST, libc::ENOSPC)]);
        let before = refusals();
        assert_eq!(persist(b, 64), PvOutcome::Durable);
        assert_eq!(calls(), vec![VPM_IOC_PERSIST, VPM_IOC_REQUEST_EPOCH]);
        assert!(refusals() > before);
        ranges::unregister(b, 0x10000);
    }

    #[test]
    fn a_refused_persist_whose_epoch_fails_is_reported() {
        let b = vpm_range(0x7300_0000_0000);
        script(&[
            (VPM_IOC_PERSIST, libc::ENOSPC),
            (VPM_IOC_REQUEST_EPOCH, libc::EIO),
        ]);
        let before = failures();
        assert_eq!(persist(b, 64), PvOutcome::Failed);
        assert!(failures() > before);
        let msg = crate::err::errormsg();
        assert!(msg.contains("not durable"), "errormsg: {msg}");
        ranges::unregister(b, 0x10000);
    }

    #[test]
    fn a_refused_flush_and_a_refused_drain_fall_back_to_an_epoch() {
        let b = vpm_range(0x7400_0000_0000);
        script(&[(VPM_IOC_FLUSH, libc::EFAULT)]);
        assert_eq!(flush(b, 64), FlushOutcome::Pv);
        assert_eq!(calls(), vec![VPM_IOC_FLUSH, VPM_IOC_REQUEST_EPOCH]);
        script(&[(VPM_IOC_DRAIN, libc::EIO)]);
        assert_eq!(flush(b, 64), FlushOutcome::Pv);
        assert!(drain());
        assert_eq!(
            calls(),
            vec![VPM_IOC_FLUSH, VPM_IOC_DRAIN, VPM_IOC_REQUEST_EPOCH]
        );
        script(&[
            (VPM_IOC_DRAIN, libc::EIO),
            (VPM_IOC_REQUEST_EPOCH, libc::EIO),
        ]);
        assert_eq!(flush(b, 64), FlushOutcome::Pv);
        assert!(!drain(), "a failed drain and epoch reported success");
        script(&[
            (VPM_IOC_FLUSH, libc::EIO),
            (VPM_IOC_REQUEST_EPOCH, libc::EIO),
        ]);
        assert_eq!(flush(b, 64), FlushOutcome::Failed);
        assert!(!drain(), "a drain after a lost flush reported success");
        assert!(drain(), "the loss was reported twice");
        ranges::unregister(b, 0x10000);
    }

    #[test]
    fn a_drain_on_another_thread_does_not_swallow_this_threads_flushes() {
        let b = vpm_range(0x7500_0000_0000);
        script(&[]);
        assert_eq!(flush(b, 64), FlushOutcome::Pv);
        std::thread::spawn(|| {
            script(&[]);
            assert!(drain());
            assert!(calls().is_empty(), "a thread with nothing queued drained");
        })
        .join()
        .unwrap();
        assert!(drain());
        assert_eq!(calls(), vec![VPM_IOC_FLUSH, VPM_IOC_DRAIN]);
        ranges::unregister(b, 0x10000);
    }
}

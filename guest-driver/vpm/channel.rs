// SPDX-License-Identifier: GPL-2.0
//! The hint channel: the doorbell port, the shared page registered with the host, and the ring
//! producer that publishes hints and waits (bounded) for the host to complete them.
//!
//! Polled rings (ABI 1.1): when the host granted `POLLED`, entries are staged and published
//! together with `Producer::publish`, which rings the doorbell only when the host announced that
//! its poller sleeps (`NeedsDoorbell::Yes`); the wait for completion is the same bounded wait.
//! Without the grant (a 1.0 host, or polling off) every batch rings, as before.
//!
//! One ring per CPU (feature `RINGS`): ring 0 is registered with REGISTER asking for `RINGS`;
//! if the host grants it, rings `1..min(nr_cpu_ids, MAX_RINGS)` are registered with
//! REGISTER_RING, each with its own page and its own lock. A hint goes to the ring of the CPU
//! the caller runs on (a migration only changes which ring is used). Multi-byte doorbell
//! commands are written only at load and unload, serially (module init/exit); at run time the
//! only doorbell is the one-byte RING, so commands of two CPUs never interleave on QEMU's one
//! debugcon stream. A DRAIN ([`drain_all`]) drains every ring with flushes since its last DRAIN,
//! so it covers the caller's FLUSHes even if it moved CPU in between.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use kernel::{
    bindings,
    prelude::*,
    sync::global_lock,
    time::{delay::fsleep, Delta},
};

use crate::abi::doorbell::{encode, DoorbellCmd, CMD_RING, MAX_CMD_BYTES, MAX_RINGS, PROBE_REPLY};
use crate::abi::op::{features, HeaderStatus, HintResult, Op};
use crate::abi::poll::NeedsDoorbell;
use crate::abi::ring::{Producer, SharedPage, Ticket};
use crate::MAX_SEGMENTS;

const RING_ENTRIES: u32 = 64;
/// Longest wait for the host to answer (registration, a drain): 10 s.
const WAIT_STEPS: u32 = 10_000;
/// Spins before the 1 ms sleeps of a wait, doorbell only: the host serves the doorbell
/// asynchronously (QEMU cannot hold the vCPU), usually later than this.
const SPINS: u32 = 100;
/// Spins before the sleeps with polled rings: a polling host answers within microseconds, and
/// a 1 ms sleep would hide that.
const SPINS_POLLED: u32 = 20_000;

/// Counters, printed at unload and returned (partly) by `VPM_IOC_INFO`.
pub(crate) struct Counters {
    pub(crate) persists: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) drains: AtomicU64,
    pub(crate) doorbells: AtomicU64,
    /// Batches published while the host polled (polled rings): doorbells not rung.
    pub(crate) doorbells_suppressed: AtomicU64,
    pub(crate) errors: AtomicU64,
}

pub(crate) static COUNTERS: Counters = Counters {
    persists: AtomicU64::new(0),
    flushes: AtomicU64::new(0),
    drains: AtomicU64::new(0),
    doorbells: AtomicU64::new(0),
    doorbells_suppressed: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// Entries written per ring (debugfs `ring<i>_hints`).
pub(crate) static RING_HINTS: [AtomicU64; MAX_RINGS] = [const { AtomicU64::new(0) }; MAX_RINGS];
/// Rings registered (0 while there is no host link).
pub(crate) static RINGS: AtomicUsize = AtomicUsize::new(0);

/// One registered ring (one per CPU with feature `RINGS`).
pub(crate) struct Channel {
    producer: Producer<'static>,
    port: u16,
    /// Ring index (0: REGISTER, others: REGISTER_RING).
    index: u8,
    /// FLUSHes were written since the last DRAIN on this ring.
    undrained: bool,
    page_addr: usize,
    /// FLUSH entries published since the last doorbell, whose results are read after it.
    flushes: [Ticket; RING_ENTRIES as usize],
    flush_count: usize,
    /// The first FLUSH the host refused since the last DRAIN: that DRAIN reports it.
    flush_error: Option<Error>,
}

macro_rules! ring_locks {
    ($($n:literal => $name:ident),*) => {
        $(global_lock! {
            // SAFETY: initialised in `VpmModule::init` (`init_locks`) before anything uses it.
            unsafe(uninit) static $name: Mutex<Option<Channel>> = None;
        })*

        /// Initialises the ring locks.
        ///
        /// # Safety
        ///
        /// Called once, before anything uses a ring.
        pub(crate) unsafe fn init_locks() {
            // SAFETY: the caller's contract: once, before any use.
            $(unsafe { $name.init() };)*
        }

        /// Runs `f` on ring `i`'s slot under its lock (an index without a lock: an empty slot).
        pub(crate) fn with_ring<T>(i: usize, f: impl FnOnce(&mut Option<Channel>) -> T) -> T {
            match i {
                $($n => f(&mut $name.lock()),)*
                _ => f(&mut None),
            }
        }
    };
}

ring_locks!(0 => RING0, 1 => RING1, 2 => RING2, 3 => RING3, 4 => RING4, 5 => RING5, 6 => RING6,
    7 => RING7);
const _: () = assert!(MAX_RINGS == 8, "one lock per ring index");

fn outb(port: u16, value: u8) {
    // SAFETY: a write to the VPM doorbell port; it has no effect on kernel memory. There is no
    // port-I/O abstraction in 7.3.
    unsafe {
        core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}

fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: a read of the VPM doorbell port (an unclaimed port reads 0xff).
    unsafe {
        core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags))
    };
    v
}

fn doorbell(port: u16, cmd: DoorbellCmd) {
    let mut bytes = [0u8; MAX_CMD_BYTES];
    let n = encode(cmd, &mut bytes);
    for &b in &bytes[..n] {
        outb(port, b);
    }
}

/// Waits until `done()`: `spins` spins, then sleeping 1 ms a step; false on timeout.
fn wait_for(spins: u32, mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..spins {
        if done() {
            return true;
        }
        core::hint::spin_loop();
    }
    for _ in 0..WAIT_STEPS {
        if done() {
            return true;
        }
        fsleep(Delta::from_millis(1));
    }
    done()
}

fn errno(r: i32) -> Error {
    match HintResult::from_code(r) {
        Some(HintResult::OutOfRange) => EFAULT,
        Some(HintResult::NoSpace) => ENOSPC,
        Some(HintResult::Io) => EIO,
        Some(HintResult::NotSupported) => EOPNOTSUPP,
        _ => EINVAL,
    }
}

impl Channel {
    /// Handshake (ring 0), shared page, registration as ring `index`.
    pub(crate) fn open(port: u16, index: u8) -> Result<Channel> {
        if index == 0 && inb(port) != PROBE_REPLY {
            pr_err!("no VPM host answers on port {:#x}\n", port);
            return Err(ENODEV);
        }
        // SAFETY: allocating one zeroed page; freed in `Drop`.
        let page_addr = unsafe { bindings::get_zeroed_page_noprof(bindings::GFP_KERNEL) } as usize;
        if page_addr == 0 {
            return Err(ENOMEM);
        }
        // SAFETY: the page is ours, page-aligned and mapped until `Drop`; the host accesses it
        // only through atomics, as we do.
        let page: &'static SharedPage = unsafe { SharedPage::from_ptr(page_addr as *mut u8) };
        // SAFETY: `page_addr` is a direct-map address of a page we own.
        let gpa = unsafe { bindings::slow_virt_to_phys(page_addr as *mut core::ffi::c_void) };
        let mut channel = Channel {
            producer: Producer::prepare(page, RING_ENTRIES, features::ALL).map_err(|_| EINVAL)?,
            port,
            index,
            undrained: false,
            page_addr,
            flushes: [Ticket { index: 0, seq: 0 }; RING_ENTRIES as usize],
            flush_count: 0,
            flush_error: None,
        };
        doorbell(
            port,
            match index {
                0 => DoorbellCmd::Register(gpa),
                i => DoorbellCmd::RegisterRing(i, gpa),
            },
        );
        if !wait_for(SPINS, || page.status() != Some(HeaderStatus::Pending)) {
            pr_err!("the VPM host did not answer registering ring {}\n", index);
            return Err(ENODEV);
        }
        if page.status() != Some(HeaderStatus::Ok) {
            pr_err!(
                "the VPM host refused the shared page: {:?}\n",
                page.status()
            );
            return Err(ENODEV);
        }
        channel.ring()?;
        Ok(channel)
    }

    /// Whether the host granted one ring per CPU (feature `RINGS`).
    pub(crate) fn multi_ring(&self) -> bool {
        self.page().header.host_features.load(Ordering::Relaxed) & features::RINGS != 0
    }

    pub(crate) fn page(&self) -> &'static SharedPage {
        self.producer.page()
    }

    /// Whether the host granted polled rings (`host_features`, written at registration).
    pub(crate) fn polled(&self) -> bool {
        self.producer.polled()
    }

    /// Publishes everything staged and rings the doorbell unless the host is polling (without
    /// polled rings: always), then waits (bounded) until the host completed everything
    /// published; `ETIMEDOUT` if it did not, so a stopped host never holds the channel lock for
    /// ever.
    fn ring(&mut self) -> Result {
        let spins = match self.producer.publish() {
            NeedsDoorbell::Yes => {
                outb(self.port, CMD_RING);
                COUNTERS.doorbells.fetch_add(1, Ordering::Relaxed);
                if self.polled() {
                    SPINS_POLLED
                } else {
                    SPINS
                }
            }
            NeedsDoorbell::No => {
                COUNTERS
                    .doorbells_suppressed
                    .fetch_add(1, Ordering::Relaxed);
                SPINS_POLLED
            }
        };
        let p = &self.producer;
        if !wait_for(spins, || p.in_flight() == 0) {
            pr_err!("the VPM host stopped completing hints\n");
            COUNTERS.errors.fetch_add(1, Ordering::Relaxed);
            return Err(ETIMEDOUT);
        }
        self.collect_flushes();
        Ok(())
    }

    /// Reads the results of the FLUSH entries the host has now completed (before their slots can
    /// be reused) and keeps the first refusal for the next DRAIN.
    fn collect_flushes(&mut self) {
        for t in &self.flushes[..self.flush_count] {
            match self.producer.result(*t) {
                Some(0) => {}
                Some(r) => {
                    COUNTERS.errors.fetch_add(1, Ordering::Relaxed);
                    self.flush_error.get_or_insert(errno(r));
                }
                // Not completed: cannot happen after a successful wait (in_flight() == 0).
                None => {
                    self.flush_error.get_or_insert(ETIMEDOUT);
                }
            }
        }
        self.flush_count = 0;
    }

    /// Publishes a FLUSH without waiting; its result is checked at the next doorbell and a
    /// refusal is returned by the next [`Channel::drain`].
    pub(crate) fn flush(&mut self, gpa: u64, len: u64) -> Result {
        let gpa = match crate::inject_refused_flush() {
            true => gpa + self.page().header.vpm_size.load(Ordering::Relaxed),
            false => gpa,
        };
        let t = self.push(Op::Flush, gpa, len)?;
        self.undrained = true;
        // At most RING_ENTRIES entries are published between two doorbells (push rings when the
        // ring is full, which collects), so there is always room.
        if let Some(slot) = self.flushes.get_mut(self.flush_count) {
            *slot = t;
            self.flush_count += 1;
        }
        Ok(())
    }

    /// DRAIN: everything flushed so far is durable on success. Fails if the host refused the
    /// DRAIN or any FLUSH since the previous DRAIN (the first error wins).
    pub(crate) fn drain(&mut self) -> Result {
        let r = self.call(Op::Drain, 0, 0);
        self.undrained = false;
        match self.flush_error.take() {
            Some(e) => Err(e),
            None => r,
        }
    }

    /// Writes one entry, first making room by ringing once if the ring is full. Without polled
    /// rings it is published at once (the host sees it at the next doorbell); with them it is
    /// staged and published by the next [`Channel::ring`] (one handshake per batch).
    pub(crate) fn push(&mut self, op: Op, gpa: u64, len: u64) -> Result<Ticket> {
        if let Ok(t) = self.write(op, gpa, len) {
            return Ok(t);
        }
        self.ring()?;
        self.write(op, gpa, len).map_err(|_| ETIMEDOUT)
    }

    fn write(&mut self, op: Op, gpa: u64, len: u64) -> Result<Ticket, crate::abi::ring::RingFull> {
        let t = if self.polled() {
            self.producer.stage(op.code(), gpa, len)
        } else {
            self.producer.push(op.code(), gpa, len)
        }?;
        if let Some(c) = RING_HINTS.get(usize::from(self.index)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        Ok(t)
    }

    /// Publishes `op` and waits for its result.
    pub(crate) fn call(&mut self, op: Op, gpa: u64, len: u64) -> Result {
        self.call_all(op, &[(gpa, len)])
    }

    /// Publishes `op` for every range, rings once and waits; the first error wins.
    pub(crate) fn call_all(&mut self, op: Op, ranges: &[(u64, u64)]) -> Result {
        let mut tickets = [None; MAX_SEGMENTS];
        for (slot, &(gpa, len)) in tickets.iter_mut().zip(ranges) {
            *slot = Some(self.push(op, gpa, len)?);
        }
        self.ring()?;
        let mut result = Ok(());
        for t in tickets.iter().flatten() {
            let r = match self.producer.result(*t) {
                Some(0) => Ok(()),
                Some(r) => {
                    COUNTERS.errors.fetch_add(1, Ordering::Relaxed);
                    Err(errno(r))
                }
                None => Err(ETIMEDOUT),
            };
            result = result.and(r);
        }
        result
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        doorbell(
            self.port,
            match self.index {
                0 => DoorbellCmd::Unregister,
                i => DoorbellCmd::UnregisterRing(i),
            },
        );
        // A polling host reads the page without a doorbell: it may only be freed once the host
        // has taken the UNREGISTER (it then marks the page UNREGISTERED and never reads it
        // again). A host that does not answer gets the page leaked, never freed under it.
        let page = self.page();
        if self.polled() && !wait_for(SPINS, || page.status() == Some(HeaderStatus::Unregistered)) {
            pr_warn!("the VPM host did not take the UNREGISTER; the shared page is leaked\n");
            return;
        }
        // SAFETY: the page came from `get_zeroed_page` in `open`; the host no longer reads it
        // after UNREGISTER (with polled rings: after it answered it, checked above).
        unsafe { bindings::free_pages(self.page_addr as _, 0) };
    }
}

/// Registers ring 0 and, if the host grants `RINGS`, one ring per further CPU (up to
/// [`MAX_RINGS`]; a ring the host does not answer ends the list). Serial: called at load only.
pub(crate) fn open_rings(port: u16) -> Result {
    let ring0 = Channel::open(port, 0)?;
    let want = match ring0.multi_ring() {
        true => (kernel::cpu::nr_cpu_ids() as usize).clamp(1, MAX_RINGS),
        false => 1,
    };
    with_ring(0, |slot| *slot = Some(ring0));
    let mut count = 1;
    while count < want {
        match Channel::open(port, count as u8) {
            Ok(c) => with_ring(count, |slot| *slot = Some(c)),
            Err(e) => {
                pr_warn!("ring {} not registered ({:?}): {} rings\n", count, e, count);
                break;
            }
        }
        count += 1;
    }
    RINGS.store(count, Ordering::Release);
    Ok(())
}

/// Unregisters every ring, ring 0 last. Serial: called at unload only.
pub(crate) fn close_rings() {
    let count = RINGS.swap(0, Ordering::AcqRel).max(1);
    for i in (0..count).rev() {
        with_ring(i, |slot| drop(slot.take()));
    }
}

/// The ring of the CPU the caller runs on.
fn current_ring() -> Result<usize> {
    match RINGS.load(Ordering::Acquire) {
        0 => Err(ENODEV),
        n => Ok(kernel::cpu::CpuId::current().as_u32() as usize % n),
    }
}

/// Runs `f` on the current CPU's ring, under its lock.
pub(crate) fn with_channel<T>(f: impl FnOnce(&mut Channel) -> Result<T>) -> Result<T> {
    with_ring(current_ring()?, |slot| match slot.as_mut() {
        Some(c) => f(c),
        None => Err(ENODEV),
    })
}

/// DRAIN for `/dev/vpm`: drains the current CPU's ring and every other ring with FLUSHes since
/// its last DRAIN (the caller may have flushed on another CPU), one ring at a time under its own
/// lock. Fails with the first error: a refused DRAIN, or a refused FLUSH of a drained ring.
pub(crate) fn drain_all() -> Result {
    let here = current_ring()?;
    let mut result = Ok(());
    for i in 0..RINGS.load(Ordering::Acquire) {
        let r = with_ring(i, |slot| match slot.as_mut() {
            Some(c) if i == here || c.undrained => c.drain(),
            Some(_) => Ok(()),
            None => Err(ENODEV),
        });
        result = result.and(r);
    }
    result
}

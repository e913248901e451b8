// SPDX-License-Identifier: GPL-2.0
//! The vPM as `/dev/vpmblk0` sees it: a kernel mapping, the pages written since the last flush
//! and the pages the host holds as transient (one bit per page each), and the three ways data
//! reaches the host: a flush (the dirty pages' runs as FLUSH entries and one DRAIN), a FUA
//! write's own range, and a discard (SET_TRANSIENT over whole pages; such a page written again
//! is marked persistent before its FLUSH entry). The block counters live here too.
//!
//! The host's transient marks are durable: they outlive this module, the guest and a host crash.
//! A page discarded in an earlier boot (mkfs.ext4 discards the whole disk) is still transient on
//! the host when a later vpm.ko writes it, so the transient bitmap starts FULL at load: every page
//! is "possibly transient", and its first flush (or FUA write) after load sends SET_PERSISTENT,
//! one entry per run, before its FLUSH entry. The host takes SET_PERSISTENT on a page that is not
//! transient as a successful no-op, so an unneeded mark costs one ring entry per run, once per
//! page per load.

use core::sync::atomic::{AtomicU64, Ordering};

use kernel::{bindings, prelude::*, sync::Arc};

use crate::abi::op::Op;
use crate::channel::{with_channel, Channel};

pub(crate) const PAGE: u64 = crate::abi::wire::PAGE_SIZE;
pub(crate) const SECTOR: u64 = 512;
/// Logical and physical block size: one vPM page.
pub(crate) const BLOCK: u32 = PAGE as u32;

/// Counters of the block device, in `/sys/kernel/debug/vpm/stats`.
pub(crate) struct BlkCounters {
    /// Flushes served (`REQ_OP_FLUSH` or `REQ_PREFLUSH`).
    pub(crate) flushes: AtomicU64,
    /// Bytes made durable by flushes, in total and by the last one.
    pub(crate) flush_bytes: AtomicU64,
    pub(crate) last_flush_bytes: AtomicU64,
    /// FLUSH ring entries sent by flushes (one per run of dirty pages).
    pub(crate) flush_ranges: AtomicU64,
    /// FUA writes and the bytes they persisted.
    pub(crate) fua_writes: AtomicU64,
    pub(crate) fua_bytes: AtomicU64,
    /// Bytes written and read through the disk.
    pub(crate) written: AtomicU64,
    pub(crate) read: AtomicU64,
    /// Discards and the bytes they marked transient.
    pub(crate) discards: AtomicU64,
    pub(crate) discard_bytes: AtomicU64,
    /// Pages sent in SET_PERSISTENT entries (discarded pages written again, and each page's first
    /// persist after load) and the number of those entries (one per run).
    pub(crate) repersisted_pages: AtomicU64,
    pub(crate) repersist_ranges: AtomicU64,
    /// Requests that failed.
    pub(crate) errors: AtomicU64,
}

pub(crate) static BLK_COUNTERS: BlkCounters = BlkCounters {
    flushes: AtomicU64::new(0),
    flush_bytes: AtomicU64::new(0),
    last_flush_bytes: AtomicU64::new(0),
    flush_ranges: AtomicU64::new(0),
    fua_writes: AtomicU64::new(0),
    fua_bytes: AtomicU64::new(0),
    written: AtomicU64::new(0),
    read: AtomicU64::new(0),
    discards: AtomicU64::new(0),
    discard_bytes: AtomicU64::new(0),
    repersisted_pages: AtomicU64::new(0),
    repersist_ranges: AtomicU64::new(0),
    errors: AtomicU64::new(0),
};

/// Writes the block counters as `name value` lines.
pub(crate) fn write_stats(f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    let c = &BLK_COUNTERS;
    let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
    writeln!(f, "blk_flushes {}", v(&c.flushes))?;
    writeln!(f, "blk_flush_bytes {}", v(&c.flush_bytes))?;
    writeln!(f, "blk_last_flush_bytes {}", v(&c.last_flush_bytes))?;
    writeln!(f, "blk_flush_ranges {}", v(&c.flush_ranges))?;
    writeln!(f, "blk_fua_writes {}", v(&c.fua_writes))?;
    writeln!(f, "blk_fua_bytes {}", v(&c.fua_bytes))?;
    writeln!(f, "blk_written {}", v(&c.written))?;
    writeln!(f, "blk_read {}", v(&c.read))?;
    writeln!(f, "blk_discards {}", v(&c.discards))?;
    writeln!(f, "blk_discard_bytes {}", v(&c.discard_bytes))?;
    writeln!(f, "blk_repersisted_pages {}", v(&c.repersisted_pages))?;
    writeln!(f, "blk_repersist_ranges {}", v(&c.repersist_ranges))?;
    writeln!(f, "blk_errors {}", v(&c.errors))
}

/// The vPM as the disk sees it: a kernel mapping and the pages written since the last flush.
pub(crate) struct Vpm {
    /// Kernel address of the vPM mapping (`memremap`, write-back).
    addr: usize,
    /// Guest-physical base and size in bytes.
    base: u64,
    pub(crate) size: u64,
    /// One bit per page, set by writes, taken (swapped to 0) by flushes.
    dirty: KVVec<AtomicU64>,
    /// One bit per page the host may hold as transient: set for every page at load (a discard of
    /// an earlier boot is still in force on the host) and by discards; cleared once the page's
    /// SET_PERSISTENT succeeded.
    transient: KVVec<AtomicU64>,
    /// The disk's own workqueue (one worker: flushes run in order), destroyed by `BlkDisk`.
    pub(crate) wq: usize,
}

impl Vpm {
    pub(crate) fn new(base: u64, size: u64, wq: usize) -> Result<Arc<Vpm>> {
        let words = (size / PAGE).div_ceil(64) as usize;
        let mut dirty = KVVec::with_capacity(words, GFP_KERNEL)?;
        let mut transient = KVVec::with_capacity(words, GFP_KERNEL)?;
        for _ in 0..words {
            dirty.push(AtomicU64::new(0), GFP_KERNEL)?;
            // Every page possibly transient (see the module comment); bits past the last page
            // are never looked at.
            transient.push(AtomicU64::new(u64::MAX), GFP_KERNEL)?;
        }
        // SAFETY: maps the guest-physical vPM range, reserved memory the host gave this guest
        // (not System RAM), write-back; unmapped in `drop`.
        let addr =
            unsafe { bindings::memremap(base, size as usize, bindings::MEMREMAP_WB as usize) }
                as usize;
        if addr == 0 {
            pr_err!(
                "cannot map vPM {:#x}+{:#x} for the block device\n",
                base,
                size
            );
            return Err(ENOMEM);
        }
        Arc::new(
            Vpm {
                addr,
                base,
                size,
                dirty,
                transient,
                wq,
            },
            GFP_KERNEL,
        )
        .map_err(|_| ENOMEM)
    }

    fn mark_dirty(&self, off: u64, len: u64) {
        set_bits(&self.dirty, off / PAGE, (off + len).div_ceil(PAGE));
    }

    /// Marks the possibly transient pages among `count` pages from `first` persistent again, one
    /// SET_PERSISTENT per run of them (before their FLUSH entries). If the host refuses one, that
    /// run's pages stay possibly transient (the host may have changed some of them) and the
    /// caller's flush fails (EIO, every page dirty again): the retry marks them again.
    fn make_persistent(&self, c: &mut Channel, first: u64, count: u64) -> Result {
        let mut page = first;
        while page < first + count {
            if !take_bit(&self.transient, page) {
                page += 1;
                continue;
            }
            let start = page;
            page += 1;
            while page < first + count && take_bit(&self.transient, page) {
                page += 1;
            }
            if let Err(e) = c.call(
                Op::SetPersistent,
                self.base + start * PAGE,
                (page - start) * PAGE,
            ) {
                set_bits(&self.transient, start, page);
                return Err(e);
            }
            BLK_COUNTERS
                .repersisted_pages
                .fetch_add(page - start, Ordering::Relaxed);
            BLK_COUNTERS
                .repersist_ranges
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Persists `count` pages from `first`: persistent again if discarded, then a FLUSH entry.
    fn flush_run(&self, c: &mut Channel, first: u64, count: u64) -> Result {
        self.make_persistent(c, first, count)?;
        c.flush(self.base + first * PAGE, count * PAGE)
    }

    /// Marks the whole pages inside `[off, off + len)` transient.
    ///
    /// Runs on the disk's workqueue, so never beside a flush or a FUA write; plain writes may
    /// complete meanwhile. The pages' dirty bits are dropped and their transient bits set BEFORE
    /// the SET_TRANSIENT: a write that marks a page dirty after that is persisted by the next
    /// flush with a SET_PERSISTENT first (the write is ordered after the discard); a write marked
    /// before is ordered before it (discarded). If the host refuses the discard the pages are
    /// marked dirty again (the next flush persists them, as if there had been no discard) and
    /// stay "possibly transient" (some may have been marked before the failure).
    pub(crate) fn discard(&self, off: u64, len: u64) -> Result {
        let (first, end) = (off.div_ceil(PAGE), (off + len) / PAGE);
        if end <= first {
            return Ok(());
        }
        for page in first..end {
            take_bit(&self.dirty, page);
        }
        set_bits(&self.transient, first, end);
        with_channel(|c| {
            c.call(
                Op::SetTransient,
                self.base + first * PAGE,
                (end - first) * PAGE,
            )
        })
        .map_err(|e| {
            pr_err!("vpmblk: discard failed: {:?}\n", e);
            set_bits(&self.dirty, first, end);
            EIO
        })?;
        BLK_COUNTERS.discards.fetch_add(1, Ordering::Relaxed);
        BLK_COUNTERS
            .discard_bytes
            .fetch_add((end - first) * PAGE, Ordering::Relaxed);
        Ok(())
    }

    /// Copies the request's data between its pages and vPM; marks written pages dirty unless
    /// `fua` (those are persisted by the caller right away).
    ///
    /// # Safety
    ///
    /// `rq` is a request owned by the driver (started, not ended).
    pub(crate) unsafe fn transfer(
        &self,
        rq: *mut bindings::request,
        write: bool,
        fua: bool,
    ) -> Result {
        // SAFETY: the request is ours until ended (the caller's contract): its bio chain and
        // their bvec arrays are stable and not accessed by anyone else meanwhile.
        let mut bio = unsafe { (*rq).bio };
        while !bio.is_null() {
            // SAFETY: `bio` is a bio of the request (see above).
            let (iter, vecs, next) = unsafe { ((*bio).bi_iter, (*bio).bi_io_vec, (*bio).bi_next) };
            let mut pos = iter.bi_sector * SECTOR;
            let total = u64::from(iter.bi_size);
            if pos.checked_add(total).is_none_or(|end| end > self.size) {
                return Err(EIO);
            }
            let (mut left, mut idx, mut skip) = (iter.bi_size, iter.bi_idx, iter.bi_offset);
            while left > 0 {
                // SAFETY: `idx` stays within the bvecs that cover `bi_size` bytes from `bi_idx`.
                let bv = unsafe { &*vecs.add(idx as usize) };
                let len = (bv.bv_len - skip).min(left);
                let mut done = 0;
                while done < len {
                    let at = bv.bv_offset + skip + done;
                    let in_page = at % BLOCK;
                    let n = (len - done).min(BLOCK - in_page);
                    // SAFETY: a multi-page bvec covers physically contiguous pages whose
                    // `struct page`s are contiguous (SPARSEMEM_VMEMMAP), so this is the page
                    // holding byte `at`; mapped for the copy only.
                    let va =
                        unsafe { bindings::kmap_local_page(bv.bv_page.add((at / BLOCK) as usize)) };
                    let data = (va as usize + in_page as usize) as *mut u8;
                    let vpm = (self.addr + pos as usize) as *mut u8;
                    // SAFETY: `data..+n` lies in the mapped page; `vpm..+n` lies in the vPM
                    // mapping (bounds checked above); the two never overlap.
                    unsafe {
                        if write {
                            core::ptr::copy_nonoverlapping(data, vpm, n as usize);
                        } else {
                            core::ptr::copy_nonoverlapping(vpm, data, n as usize);
                        }
                        bindings::kunmap_local(va);
                    }
                    pos += u64::from(n);
                    done += n;
                }
                left -= len;
                idx += 1;
                skip = 0;
            }
            let start = iter.bi_sector * SECTOR;
            if write {
                BLK_COUNTERS.written.fetch_add(total, Ordering::Relaxed);
                if !fua {
                    self.mark_dirty(start, total);
                }
            } else {
                BLK_COUNTERS.read.fetch_add(total, Ordering::Relaxed);
            }
            bio = next;
        }
        Ok(())
    }

    /// Makes the pages written since the last flush durable: their runs as FLUSH entries, one
    /// DRAIN. On failure every page is marked again (the next flush retries all of vPM).
    pub(crate) fn flush(&self) -> Result {
        let pages = self.size / PAGE;
        let r = with_channel(|c| {
            let (mut ranges, mut bytes) = (0u64, 0u64);
            let mut run: Option<(u64, u64)> = None;
            for (w, word) in self.dirty.iter().enumerate() {
                let mut bits = word.swap(0, Ordering::AcqRel);
                while bits != 0 {
                    let page = w as u64 * 64 + u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    match run.as_mut() {
                        Some((first, count)) if *first + *count == page => *count += 1,
                        _ => {
                            if let Some((first, count)) = run.replace((page, 1)) {
                                self.flush_run(c, first, count)?;
                                ranges += 1;
                                bytes += count * PAGE;
                            }
                        }
                    }
                }
            }
            if let Some((first, count)) = run {
                self.flush_run(c, first, count)?;
                ranges += 1;
                bytes += count * PAGE;
            }
            if ranges > 0 {
                c.drain()?;
            }
            Ok((ranges, bytes))
        });
        let c = &BLK_COUNTERS;
        c.flushes.fetch_add(1, Ordering::Relaxed);
        match r {
            Ok((ranges, bytes)) => {
                c.flush_ranges.fetch_add(ranges, Ordering::Relaxed);
                c.flush_bytes.fetch_add(bytes, Ordering::Relaxed);
                c.last_flush_bytes.store(bytes, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                pr_err!("vpmblk: flush failed: {:?}\n", e);
                self.mark_dirty(0, pages * PAGE);
                Err(EIO)
            }
        }
    }

    /// Persists `[off, off + len)` of vPM alone (a FUA write).
    pub(crate) fn persist(&self, off: u64, len: u64) -> Result {
        with_channel(|c| {
            self.flush_run(c, off / PAGE, len.div_ceil(PAGE))?;
            c.drain()
        })
        .map_err(|e| {
            pr_err!("vpmblk: FUA persist failed: {:?}\n", e);
            self.mark_dirty(off, len);
            EIO
        })?;
        BLK_COUNTERS.fua_writes.fetch_add(1, Ordering::Relaxed);
        BLK_COUNTERS.fua_bytes.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }
}

impl Drop for Vpm {
    fn drop(&mut self) {
        // SAFETY: `addr` came from `memremap` in `new`; the disk is gone, nothing uses it.
        unsafe { bindings::memunmap(self.addr as *mut core::ffi::c_void) };
    }
}

/// Sets the bits `[first, end)`.
fn set_bits(map: &[AtomicU64], first: u64, end: u64) {
    for bit in first..end {
        map[(bit / 64) as usize].fetch_or(1 << (bit % 64), Ordering::Release);
    }
}

/// Clears bit `bit`; whether it was set.
fn take_bit(map: &[AtomicU64], bit: u64) -> bool {
    let mask = 1u64 << (bit % 64);
    map[(bit / 64) as usize].fetch_and(!mask, Ordering::AcqRel) & mask != 0
}

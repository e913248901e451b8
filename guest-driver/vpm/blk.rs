// SPDX-License-Identifier: GPL-2.0
//! `/dev/vpmblk0`: a blk-mq disk over the whole vPM.
//!
//! Reads and writes copy between the request's pages and a kernel mapping of vPM; every write
//! marks the 4 KiB pages it touched dirty. A flush (`REQ_OP_FLUSH`, or `REQ_PREFLUSH`) turns the
//! pages marked since the last flush into FLUSH hints, one ring entry per run of neighbouring
//! pages, and one DRAIN: the host makes durable what was written since the last flush and
//! nothing else. A `REQ_FUA` write is persisted alone (its own range) before it completes. The
//! bitmaps and the hints are in `blk_vpm.rs`; this file is the disk and its requests.
//!
//! The logical block size is 4096 bytes (the vPM page): every write covers whole pages, so the
//! page bitmap is exact (no sector outside a write is ever persisted) and ext4's 4 KiB blocks map
//! one to one. A discard marks the whole pages it covers transient (SET_TRANSIENT: they read as
//! zeros after a host crash and take no PM); a page written after that is marked persistent again
//! (SET_PERSISTENT) by the flush or FUA write that persists it, before its FLUSH entry. The host
//! keeps transient marks across reboots, so after load every page counts as possibly discarded
//! until its first persist (see `blk_vpm.rs`).
//!
//! The Rust block layer of 7.3 (`kernel::block::mq`) gives the tag set and the request
//! plumbing; it has no way to declare a write cache or FUA, nor to reach a request's op, sector
//! and bio pages, so the disk is created and the bios are walked through raw bindings (each
//! `unsafe` says why it holds). `queue_rq` must not sleep (the Rust tag set is not
//! `BLK_MQ_F_BLOCKING`) and the hint channel sleeps, so flushes, FUA writes and discards run on
//! the disk's own ordered workqueue (one work at a time, also on SMP guests); plain reads and
//! writes complete in `queue_rq` (on any CPU at once: the bitmaps are atomics).

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use kernel::{
    bindings,
    block::mq::{Operations, Request, TagSet},
    prelude::*,
    sync::{aref::ARef, Arc, ArcBorrow},
    types::ForeignOwnable,
    workqueue::{self, impl_has_work, new_work, Work, WorkItem},
};

use crate::blk_vpm::{Vpm, BLK_COUNTERS, BLOCK, SECTOR};

/// `BLK_FEAT_WRITE_CACHE` and `BLK_FEAT_FUA` (include/linux/blkdev.h; bindgen skips them).
const FEAT_WRITE_CACHE: u32 = 1 << 0;
const FEAT_FUA: u32 = 1 << 1;
const OP_MASK: u32 = (1 << bindings::REQ_OP_BITS) - 1;
const REQ_FUA: u32 = 1 << bindings::req_flag_bits___REQ_FUA;
const REQ_PREFLUSH: u32 = 1 << bindings::req_flag_bits___REQ_PREFLUSH;
/// Largest request: 1 MiB; largest discard: 1 GiB.
const MAX_SECTORS: u32 = 2048;
const MAX_DISCARD_SECTORS: u32 = 1 << 21;

/// The raw `struct request` of `rq`.
fn raw(rq: &Request<VpmBlk>) -> *mut bindings::request {
    // `Request` is `repr(transparent)` over `Opaque<bindings::request>`.
    core::ptr::from_ref(rq).cast_mut().cast()
}

/// Ends `rq` with the block status of `e`.
fn end_with_error(rq: ARef<Request<VpmBlk>>, e: Error) {
    BLK_COUNTERS.errors.fetch_add(1, Ordering::Relaxed);
    let ptr = ARef::into_raw(rq).as_ptr().cast::<bindings::request>();
    // SAFETY: the request is owned by the driver and ends here exactly once; the Rust reference
    // is given up (`into_raw`), and the abstraction resets its count when blk-mq hands the
    // request to `queue_rq` again (the 7.3 Rust layer has no end-with-error).
    unsafe { bindings::blk_mq_end_request(ptr, bindings::errno_to_blk_status(e.to_errno())) };
}

/// Ends `rq` with `r`.
fn finish(rq: ARef<Request<VpmBlk>>, r: Result) {
    match r {
        Ok(()) => {
            if let Err(rq) = Request::end_ok(rq) {
                // Only this driver holds references; cannot happen.
                end_with_error(rq, EIO);
            }
        }
        Err(e) => end_with_error(rq, e),
    }
}

/// Serves a request that may sleep: flushes (pre- and post-), FUA writes, discards.
fn serve_slow(vpm: &Vpm, rq: *mut bindings::request) -> Result {
    // SAFETY: the request is owned by the driver until it is ended.
    let (flags, sector) = unsafe { ((*rq).cmd_flags, (*rq).__sector) };
    let op = flags & OP_MASK;
    if op == bindings::req_op_REQ_OP_FLUSH || flags & REQ_PREFLUSH != 0 {
        vpm.flush()?;
    }
    match op {
        bindings::req_op_REQ_OP_FLUSH => Ok(()),
        bindings::req_op_REQ_OP_WRITE => {
            let fua = flags & REQ_FUA != 0;
            // SAFETY: as above.
            unsafe { vpm.transfer(rq, true, fua)? };
            if fua {
                // SAFETY: as above.
                let len = u64::from(unsafe { (*rq).__data_len });
                if len > 0 {
                    vpm.persist(sector * SECTOR, len)?;
                }
            }
            Ok(())
        }
        // SAFETY: as above.
        bindings::req_op_REQ_OP_READ => unsafe { vpm.transfer(rq, false, false) },
        bindings::req_op_REQ_OP_DISCARD => {
            // SAFETY: as above.
            let len = u64::from(unsafe { (*rq).__data_len });
            let off = sector * SECTOR;
            if off.checked_add(len).is_none_or(|e| e > vpm.size) {
                return Err(EIO);
            }
            vpm.discard(off, len)
        }
        _ => Err(EOPNOTSUPP),
    }
}

/// A request that must wait for the host: served on the disk's workqueue.
#[pin_data]
struct Deferred {
    vpm: Arc<Vpm>,
    /// The request's reference, taken back in `run`.
    rq: RqPtr,
    #[pin]
    work: Work<Deferred>,
}

/// An `ARef<Request>` given up with `into_raw`.
struct RqPtr(NonNull<Request<VpmBlk>>);

// SAFETY: `Request` is Send and Sync; the pointer is one reference, used by one thread at a time.
unsafe impl Send for RqPtr {}
// SAFETY: as above; only `run` turns it back into an `ARef`.
unsafe impl Sync for RqPtr {}

impl_has_work! {
    impl HasWork<Self> for Deferred { self.work }
}

impl WorkItem for Deferred {
    type Pointer = Pin<KBox<Deferred>>;

    fn run(this: Pin<KBox<Deferred>>) {
        // SAFETY: `rq` holds the reference given up in `queue_rq`; `run` runs once.
        let rq = unsafe { ARef::from_raw(this.rq.0) };
        let r = serve_slow(&this.vpm, raw(&rq));
        finish(rq, r);
    }
}

/// The block device's operations.
pub(crate) struct VpmBlk;

#[vtable]
impl Operations for VpmBlk {
    type QueueData = Arc<Vpm>;

    fn queue_rq(vpm: ArcBorrow<'_, Vpm>, rq: ARef<Request<Self>>, _is_last: bool) -> Result {
        let r = raw(&rq);
        // SAFETY: the request was just started for us.
        let flags = unsafe { (*r).cmd_flags };
        let op = flags & OP_MASK;
        let slow = op == bindings::req_op_REQ_OP_FLUSH
            || op == bindings::req_op_REQ_OP_DISCARD
            || flags & (REQ_FUA | REQ_PREFLUSH) != 0;
        if slow {
            let ptr = RqPtr(ARef::into_raw(rq));
            let work = KBox::pin_init(
                pin_init!(Deferred {
                    vpm: vpm.into(),
                    rq: ptr,
                    work <- new_work!("vpmblk::Deferred"),
                }),
                GFP_NOWAIT,
            );
            match work {
                Ok(w) => {
                    // SAFETY: the workqueue lives until `BlkDisk` is dropped, after the disk
                    // (and so every request) is gone.
                    let queue = unsafe { workqueue::Queue::from_raw(vpm.wq as *const _) };
                    // A fresh work item cannot be queued already.
                    queue.enqueue(w);
                    return Ok(());
                }
                Err(_) => {
                    // SAFETY: the reference given up above, taken back once; blk-mq retries
                    // the request later (ENOMEM is BLK_STS_RESOURCE).
                    drop(unsafe { ARef::from_raw(ptr_back(r)) });
                    return Err(ENOMEM);
                }
            }
        }
        let result = match op {
            // SAFETY: the request is ours until ended.
            bindings::req_op_REQ_OP_WRITE => unsafe { vpm.transfer(r, true, false) },
            // SAFETY: as above.
            bindings::req_op_REQ_OP_READ => unsafe { vpm.transfer(r, false, false) },
            _ => Err(EOPNOTSUPP),
        };
        finish(rq, result);
        Ok(())
    }

    fn commit_rqs(_vpm: ArcBorrow<'_, Vpm>) {}

    fn complete(rq: ARef<Request<Self>>) {
        finish(rq, Ok(()));
    }
}

/// The `Request` at a raw request pointer.
fn ptr_back(r: *mut bindings::request) -> NonNull<Request<VpmBlk>> {
    // `r` came from `raw` of a live request: never null.
    NonNull::new(r.cast()).unwrap_or(NonNull::dangling())
}

/// The registered disk; deleted on drop.
pub(crate) struct BlkDisk {
    gendisk: *mut bindings::gendisk,
    wq: *mut bindings::workqueue_struct,
    _tagset: Arc<TagSet<VpmBlk>>,
    _fops: KBox<bindings::block_device_operations>,
}

// SAFETY: the gendisk pointer is only used at drop; the tag set and fops are shareable.
unsafe impl Send for BlkDisk {}
// SAFETY: as above.
unsafe impl Sync for BlkDisk {}

impl BlkDisk {
    /// Creates `/dev/vpmblk0` over the vPM at `base` (guest-physical) of `size` bytes.
    pub(crate) fn new(base: u64, size: u64) -> Result<BlkDisk> {
        // An ordered workqueue (`alloc_ordered_workqueue`): one work at a time in queueing order
        // on any CPU. A per-CPU queue's max_active of 1 counts per CPU, so on an SMP guest it
        // would run flushes on two CPUs at once.
        // SAFETY: a plain allocation; the name has no format directives.
        let wq = unsafe {
            bindings::alloc_workqueue_noprof(
                kernel::str::CStrExt::as_char_ptr(c"vpmblk"),
                bindings::wq_flags_WQ_UNBOUND
                    | bindings::wq_flags___WQ_ORDERED
                    | bindings::wq_flags_WQ_MEM_RECLAIM,
                1,
            )
        };
        if wq.is_null() {
            return Err(ENOMEM);
        }
        let vpm = match Vpm::new(base, size, wq as usize) {
            Ok(v) => v,
            Err(e) => {
                // SAFETY: created above, never used.
                unsafe { bindings::destroy_workqueue(wq) };
                return Err(e);
            }
        };
        let tagset = Arc::pin_init(TagSet::new(1, 64, 1), GFP_KERNEL)?;
        let fops = KBox::new(
            bindings::block_device_operations {
                owner: <crate::VpmModule as kernel::ModuleMetadata>::THIS_MODULE.as_ptr(),
                ..Default::default()
            },
            GFP_KERNEL,
        )?;
        let mut lim = bindings::queue_limits {
            features: FEAT_WRITE_CACHE | FEAT_FUA,
            logical_block_size: BLOCK,
            physical_block_size: BLOCK,
            max_hw_sectors: MAX_SECTORS,
            max_hw_discard_sectors: MAX_DISCARD_SECTORS,
            discard_granularity: BLOCK,
            ..Default::default()
        };
        // `TagSet` is `repr(transparent)` over `Opaque<blk_mq_tag_set>`.
        let set = core::ptr::from_ref::<TagSet<VpmBlk>>(&tagset)
            .cast_mut()
            .cast();
        let data = vpm.into_foreign();
        // SAFETY: `set` is an initialised tag set that outlives the disk (held by `BlkDisk`);
        // `lim` is valid for the call; `data` is the queue data `queue_rq` borrows, reclaimed
        // in `drop` or below on failure.
        let disk = unsafe {
            bindings::__blk_mq_alloc_disk(
                set,
                &mut lim,
                data,
                kernel::static_lock_class!().as_ptr(),
            )
        };
        if let Err(e) = kernel::error::from_err_ptr(disk) {
            // SAFETY: `data` came from `into_foreign` above and was not used; so was `wq`.
            unsafe {
                drop(Arc::<Vpm>::from_foreign(data));
                bindings::destroy_workqueue(wq);
            }
            return Err(e);
        }
        let name = b"vpmblk0\0";
        // SAFETY: `disk` is a fresh gendisk, not yet added: we have exclusive access. The name
        // fits its 32-byte array; `fops` outlives the disk.
        unsafe {
            for (i, &b) in name.iter().enumerate() {
                (*disk).disk_name[i] = b;
            }
            (*disk).fops = &*fops;
            bindings::set_capacity(disk, size / SECTOR);
        }
        // SAFETY: `disk` is fully set up.
        let rc = unsafe {
            bindings::device_add_disk(core::ptr::null_mut(), disk, core::ptr::null_mut())
        };
        if let Err(e) = kernel::error::to_result(rc) {
            // SAFETY: never added: put_disk frees it; then the queue data goes.
            unsafe {
                bindings::put_disk(disk);
                drop(Arc::<Vpm>::from_foreign(data));
                bindings::destroy_workqueue(wq);
            }
            return Err(e);
        }
        pr_info!(
            "vpmblk0: {} MiB, 4096-byte blocks, write cache with FUA, discard\n",
            size >> 20
        );
        Ok(BlkDisk {
            gendisk: disk,
            wq,
            _tagset: tagset,
            _fops: fops,
        })
    }
}

impl Drop for BlkDisk {
    fn drop(&mut self) {
        // SAFETY: the disk was added in `new`; del_gendisk waits for every request (deferred
        // ones included); destroying the workqueue waits for the works to return (no module
        // code runs after this); the queue data is the `Arc<Vpm>` from `new`, reclaimed once.
        unsafe {
            let data = (*(*self.gendisk).queue).queuedata;
            bindings::del_gendisk(self.gendisk);
            bindings::put_disk(self.gendisk);
            bindings::destroy_workqueue(self.wq);
            drop(Arc::<Vpm>::from_foreign(data));
        }
    }
}

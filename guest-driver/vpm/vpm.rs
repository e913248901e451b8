// SPDX-License-Identifier: GPL-2.0
//! vpm: the VPM para-virtual persistent-memory driver.
//!
//! Finds the VPM host through a handshake on the doorbell port, registers a shared page with it
//! (the hint ring of `abi/`, included by path: this file holds no copy of the protocol) and
//! exposes `/dev/vpm`: `mmap` of the vPM range, and ioctls that turn persist, flush, drain and
//! transient requests on user addresses of that mapping into batched hints, one doorbell per
//! drain or persist. Addresses are translated through the caller's own page tables (any
//! `/dev/vpm` mapping of the process, whichever descriptor made it). A read-only status page
//! tells libraries when new mappings may exist, and a `size` attribute in sysfs gives the vPM
//! size the way Device DAX does.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use kernel::{
    bindings,
    debugfs::{Dir, File as DebugFile},
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    mm::virt::VmaNew,
    prelude::*,
    types::Opaque,
    uaccess::UserSlice,
};

#[allow(dead_code, unreachable_pub, missing_docs)]
#[path = "../../abi/src/proto/mod.rs"]
mod abi;
mod blk;
mod blk_vpm;
mod channel;

use abi::op::Op;
use abi::uapi::{
    VpmInfo, VpmRange, VpmStatus, VPM_IOC_DRAIN, VPM_IOC_FLUSH, VPM_IOC_INFO, VPM_IOC_PERSIST,
    VPM_IOC_REQUEST_EPOCH, VPM_IOC_SET_PERSISTENT, VPM_IOC_SET_TRANSIENT, VPM_STATUS_MAGIC,
    VPM_STATUS_OFFSET,
};
use channel::{with_channel, with_ring, COUNTERS, RINGS, RING_HINTS};

module! {
    type: VpmModule,
    name: "vpm",
    authors: ["VPM developers"],
    description: "VPM: para-virtual persistent memory hints for KVM guests",
    license: "GPL",
    params: {
        doorbell_port: u16 {
            default: 0xf50,
            description: "I/O port of the VPM host's doorbell",
        },
    },
}

const PAGE: u64 = abi::wire::PAGE_SIZE;

/// Kernel address of the status page (0 while there is none): a zeroed page holding a
/// [`VpmStatus`] that processes map read-only at [`VPM_STATUS_OFFSET`].
static STATUS_PAGE: AtomicUsize = AtomicUsize::new(0);

const MAP_GENERATION: usize = core::mem::offset_of!(VpmStatus, map_generation) / 8;

/// The `index`th 64-bit word of the status page at `addr`.
fn status_word(addr: usize, index: usize) -> &'static AtomicU64 {
    // SAFETY: `addr` is the page from `status_alloc`, live until `status_free` (which runs only
    // when the device is gone); `index` is inside the page and the words are only accessed
    // atomically, here and (read-only) by user space.
    unsafe { &*(addr as *const AtomicU64).add(index) }
}

fn status_alloc() -> Result {
    // SAFETY: allocating one zeroed page; freed by `status_free`.
    let addr = unsafe { bindings::get_zeroed_page_noprof(bindings::GFP_KERNEL) } as usize;
    if addr == 0 {
        return Err(ENOMEM);
    }
    status_word(addr, 0).store(VPM_STATUS_MAGIC, Ordering::Release);
    STATUS_PAGE.store(addr, Ordering::Release);
    Ok(())
}

fn status_free() {
    let addr = STATUS_PAGE.swap(0, Ordering::AcqRel);
    if addr != 0 {
        // SAFETY: the page came from `status_alloc`; no process maps it any more (a mapping
        // holds the file open, which holds this module).
        unsafe { bindings::free_pages(addr as _, 0) };
    }
}

/// Tells libraries that a new vPM mapping exists (they list their mappings again).
fn bump_map_generation() {
    let addr = STATUS_PAGE.load(Ordering::Acquire);
    if addr != 0 {
        status_word(addr, MAP_GENERATION).fetch_add(1, Ordering::AcqRel);
    }
}

/// `size` in the device's sysfs directory: the vPM size in bytes, where Device DAX tools (fio's
/// dev-dax engine among them) read a DAX device's size.
struct SizeAttr(Opaque<bindings::device_attribute>);

// SAFETY: the attribute is immutable after construction; the driver core only reads it.
unsafe impl Sync for SizeAttr {}

static SIZE_ATTR: SizeAttr = SizeAttr(Opaque::new(bindings::device_attribute {
    attr: bindings::attribute {
        name: c"size".as_ptr().cast(),
        mode: 0o444,
    },
    __bindgen_anon_1: bindings::device_attribute__bindgen_ty_1 {
        show: Some(size_show),
    },
    __bindgen_anon_2: bindings::device_attribute__bindgen_ty_2 { store: None },
}));

/// Writes the decimal vPM size and a newline into `buf`.
///
/// # Safety
///
/// `buf` is sysfs's page-sized output buffer.
unsafe extern "C" fn size_show(
    _dev: *mut bindings::device,
    _attr: *mut bindings::device_attribute,
    buf: *mut kernel::ffi::c_char,
) -> isize {
    let mut v = region().map_or(0, |(_, size)| size);
    let mut text = [b'\n'; 22];
    let mut at = text.len() - 1;
    loop {
        at -= 1;
        text[at] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    let out = &text[at..];
    // SAFETY: `buf` holds a page (the caller's contract); `out` is at most 22 bytes.
    unsafe { core::ptr::copy_nonoverlapping(out.as_ptr(), buf.cast::<u8>(), out.len()) };
    out.len() as isize
}

/// The counters as text, for `/sys/kernel/debug/vpm/stats`.
struct CountersView;

impl core::fmt::Debug for CountersView {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let c = &COUNTERS;
        let rings = RINGS.load(Ordering::Acquire);
        let (served, rejected) = host_counts();
        let polled = with_ring(0, |ch| ch.as_ref().is_some_and(|ch| ch.polled()));
        writeln!(f, "persists {}", c.persists.load(Ordering::Relaxed))?;
        writeln!(f, "flushes {}", c.flushes.load(Ordering::Relaxed))?;
        writeln!(f, "drains {}", c.drains.load(Ordering::Relaxed))?;
        writeln!(f, "doorbells {}", c.doorbells.load(Ordering::Relaxed))?;
        writeln!(
            f,
            "doorbells_suppressed {}",
            c.doorbells_suppressed.load(Ordering::Relaxed)
        )?;
        writeln!(f, "polled {}", polled as u8)?;
        writeln!(f, "rings {rings}")?;
        for (i, n) in RING_HINTS.iter().enumerate().take(rings) {
            writeln!(f, "ring{i}_hints {}", n.load(Ordering::Relaxed))?;
        }
        writeln!(f, "errors {}", c.errors.load(Ordering::Relaxed))?;
        writeln!(f, "host_served {served}")?;
        writeln!(f, "host_rejected {rejected}")?;
        blk_vpm::write_stats(f)
    }
}

/// The host's `served` and `rejected` counts, summed over the rings.
fn host_counts() -> (u64, u64) {
    let mut sum = (0, 0);
    for i in 0..RINGS.load(Ordering::Acquire) {
        with_ring(i, |ch| {
            if let Some(ch) = ch.as_ref() {
                let h = &ch.page().header;
                sum.0 += h.served.load(Ordering::Relaxed);
                sum.1 += h.rejected.load(Ordering::Relaxed);
            }
        });
    }
    sum
}

/// FLUSH entries (from `/dev/vpm` and `/dev/vpmblk0`) still to be sent one vPM size past their
/// real address, where the host refuses them (fault injection for tests: written through `/sys/kernel/debug/vpm/inject_refused_flushes`).
static INJECT_REFUSED_FLUSHES: AtomicU32 = AtomicU32::new(0);

/// Whether this FLUSH piece is one to be refused (and counts it).
pub(crate) fn inject_refused_flush() -> bool {
    INJECT_REFUSED_FLUSHES
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

fn show_inject(_: &(), f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
    writeln!(f, "{}", INJECT_REFUSED_FLUSHES.load(Ordering::Relaxed))
}

fn store_inject(_: &(), r: &mut kernel::uaccess::UserSliceReader) -> Result {
    let mut buf = [0u8; 12];
    let n = r.len();
    if n > buf.len() {
        return Err(EINVAL);
    }
    r.read_slice(&mut buf[..n])?;
    let text = core::str::from_utf8(&buf[..n]).map_err(|_| EINVAL)?;
    let v = text.trim().parse::<u32>().map_err(|_| EINVAL)?;
    INJECT_REFUSED_FLUSHES.store(v, Ordering::Release);
    Ok(())
}

/// The host side of the driver: the status page and the registered hint channel. Set up first
/// and torn down last (after `/dev/vpm` is gone), also when a later step of loading fails.
struct HostLink;

impl HostLink {
    fn open(port: u16) -> Result<HostLink> {
        status_alloc()?;
        if let Err(e) = channel::open_rings(port) {
            channel::close_rings();
            status_free();
            return Err(e);
        }
        let (base, size, feats) = with_ring(0, |ch| {
            ch.as_ref().map_or((0, 0, 0), |ch| {
                let h = &ch.page().header;
                (
                    h.vpm_base.load(Ordering::Relaxed),
                    h.vpm_size.load(Ordering::Relaxed),
                    h.host_features.load(Ordering::Relaxed),
                )
            })
        });
        pr_info!(
            "VPM host found on port {:#x}: vPM {:#x}+{:#x}, features {:#x}, {} rings\n",
            port,
            base,
            size,
            feats,
            RINGS.load(Ordering::Relaxed)
        );
        VPM_BASE.store(base, Ordering::Relaxed);
        VPM_SIZE.store(size, Ordering::Release);
        Ok(HostLink)
    }
}

impl Drop for HostLink {
    fn drop(&mut self) {
        // Unregister from the host and free the shared page, then the status page.
        VPM_SIZE.store(0, Ordering::Release);
        channel::close_rings();
        status_free();
    }
}

/// Fields drop in this order at unload: the debugfs files, `/dev/vpm`, `/dev/vpmblk0`, then the
/// host link.
#[pin_data(PinnedDrop)]
struct VpmModule {
    _debugfs: Dir,
    #[pin]
    _stats: DebugFile<CountersView>,
    #[pin]
    _inject: DebugFile<()>,
    #[pin]
    _misc: MiscDeviceRegistration<VpmFile>,
    _blk: blk::BlkDisk,
    _host: HostLink,
}

impl kernel::InPlaceModule for VpmModule {
    fn init(_module: &'static ThisModule) -> impl PinInit<Self, Error> {
        // SAFETY: called once, before anything uses a ring.
        unsafe { channel::init_locks() };
        let port = module_parameters::doorbell_port.value();
        let debugfs = Dir::new(c"vpm");
        try_pin_init!(Self {
            _host: HostLink::open(port)?,
            _blk: {
                let (base, size) = region()?;
                blk::BlkDisk::new(base, size)?
            },
            _misc <- MiscDeviceRegistration::register(MiscDeviceOptions { name: c"vpm" }),
            _stats <- debugfs.read_only_file(c"stats", CountersView),
            _inject <- debugfs.read_write_callback_file(
                c"inject_refused_flushes",
                (),
                &show_inject,
                &store_inject
            ),
            _debugfs: debugfs,
        })
        .pin_chain(|me| {
            let misc = me._misc.as_raw();
            // SAFETY: the device is registered: `misc` is valid, its `fops` are this driver's
            // for as long as the module is loaded.
            FOPS.store(unsafe { (*misc).fops } as usize, Ordering::Release);
            // SAFETY: `this_device` is valid while registered, and SIZE_ATTR is a static
            // attribute with a name and a show callback; it is removed in `drop`.
            let rc =
                unsafe { bindings::device_create_file((*misc).this_device, SIZE_ATTR.0.get()) };
            kernel::error::to_result(rc)
        })
    }
}

#[pinned_drop]
impl PinnedDrop for VpmModule {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: the device is still registered (fields drop after this); removing an attribute
        // that was never created is a no-op.
        unsafe {
            bindings::device_remove_file((*self._misc.as_raw()).this_device, SIZE_ATTR.0.get())
        };
        let c = &COUNTERS;
        pr_info!(
            "unloaded: {} persists, {} flushes, {} drains, {} doorbells ({} suppressed), {} errors\n",
            c.persists.load(Ordering::Relaxed),
            c.flushes.load(Ordering::Relaxed),
            c.drains.load(Ordering::Relaxed),
            c.doorbells.load(Ordering::Relaxed),
            c.doorbells_suppressed.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        );
    }
}

/// Per-open state: none (translation goes through the caller's page tables).
#[pin_data]
struct VpmFile {}

/// vPM base and size as the host registered them (size 0 while there is no host link): fixed
/// for the link's lifetime, so translations, mmap and sysfs read them without the channel lock.
static VPM_BASE: AtomicU64 = AtomicU64::new(0);
static VPM_SIZE: AtomicU64 = AtomicU64::new(0);

fn region() -> Result<(u64, u64)> {
    match VPM_SIZE.load(Ordering::Acquire) {
        0 => Err(ENODEV),
        size => Ok((VPM_BASE.load(Ordering::Relaxed), size)),
    }
}

/// This driver's `file_operations` (set once the device is registered): a VMA is a `/dev/vpm`
/// mapping when its file has them.
static FOPS: AtomicUsize = AtomicUsize::new(0);

/// Most mappings one range may span (neighbouring mappings, or one split by `mprotect`).
pub(crate) const MAX_SEGMENTS: usize = 8;

/// The guest-physical pieces of a user range, in order.
struct Segments {
    items: [(u64, u64); MAX_SEGMENTS],
    count: usize,
}

impl Segments {
    fn as_slice(&self) -> &[(u64, u64)] {
        &self.items[..self.count]
    }

    /// Appends a piece, merged with the previous one where they are contiguous.
    fn push(&mut self, gpa: u64, len: u64) -> Result {
        if let Some(last) = self.items[..self.count].last_mut() {
            if last.0 + last.1 == gpa {
                last.1 += len;
                return Ok(());
            }
        }
        let slot = self.items.get_mut(self.count).ok_or(EINVAL)?;
        *slot = (gpa, len);
        self.count += 1;
        Ok(())
    }
}

/// Translates a user range of the calling process into guest-physical vPM ranges: every byte
/// must lie in a `/dev/vpm` mapping of vPM (made through any descriptor of this device); the
/// range may span up to [`MAX_SEGMENTS`] such mappings without gaps.
fn translate(r: &VpmRange) -> Result<Segments> {
    if r.len == 0 {
        return Err(EINVAL);
    }
    let end = r.addr.checked_add(r.len).ok_or(EINVAL)?;
    let (base, size) = region()?;
    let task = kernel::current!();
    let mm = task.mm().ok_or(EFAULT)?;
    let lock = mm.mmap_read_lock();
    let fops = FOPS.load(Ordering::Acquire);
    let mut segments = Segments {
        items: [(0, 0); MAX_SEGMENTS],
        count: 0,
    };
    let mut at = r.addr;
    while at < end {
        let vma = lock.vma_lookup(at as usize).ok_or(EFAULT)?;
        let raw = vma.as_ptr();
        // SAFETY: the VMA is valid and its file and offset are stable while we hold the mmap
        // lock.
        let (ours, pgoff) = unsafe {
            let vm_file = (*raw).vm_file;
            let ours = fops != 0 && !vm_file.is_null() && (*vm_file).f_op as usize == fops;
            (ours, (*raw).vm_pgoff as u64)
        };
        let start = vma.start() as u64;
        if !ours || start > at {
            return Err(EFAULT);
        }
        let piece_end = end.min(vma.end() as u64);
        let off = pgoff
            .checked_mul(PAGE)
            .and_then(|o| o.checked_add(at - start))
            .ok_or(EFAULT)?;
        // The status page's offset is far beyond vPM: it fails here.
        if off.checked_add(piece_end - at).map_or(true, |e| e > size) {
            return Err(EFAULT);
        }
        segments.push(base + off, piece_end - at)?;
        at = piece_end;
    }
    Ok(segments)
}

/// Maps the read-only status page.
fn map_status(vma: &VmaNew) -> Result {
    if vma.end() - vma.start() != PAGE as usize {
        return Err(EINVAL);
    }
    if vma.writable() {
        return Err(EACCES);
    }
    vma.try_clear_maywrite()?;
    vma.set_dontexpand();
    let addr = STATUS_PAGE.load(Ordering::Acquire);
    if addr == 0 {
        return Err(ENODEV);
    }
    // SAFETY: `addr` is a direct-map address of the status page we own.
    let phys = unsafe { bindings::slow_virt_to_phys(addr as *mut core::ffi::c_void) };
    // SAFETY: maps the status page, read-only (VM_WRITE and VM_MAYWRITE are clear), into the VMA
    // being created, which is one page long.
    let rc = unsafe {
        bindings::remap_pfn_range(
            vma.as_ptr(),
            vma.start() as _,
            (phys / PAGE) as _,
            PAGE as _,
            (*vma.as_ptr()).vm_page_prot,
        )
    };
    kernel::error::to_result(rc)
}

/// Maps `[off, off + len)` of vPM.
fn map_vpm(vma: &VmaNew, off: u64) -> Result {
    let (base, size) = region()?;
    let len = (vma.end() - vma.start()) as u64;
    if off.checked_add(len).map_or(true, |e| e > size) {
        return Err(EINVAL);
    }
    vma.set_dontexpand();
    // SAFETY: maps the physical vPM pages [base + off, + len), reserved memory the host gave
    // this guest, into the VMA being created; the VMA is `len` bytes long.
    let rc = unsafe {
        bindings::remap_pfn_range(
            vma.as_ptr(),
            vma.start() as _,
            ((base + off) / PAGE) as _,
            len as _,
            (*vma.as_ptr()).vm_page_prot,
        )
    };
    kernel::error::to_result(rc)?;
    bump_map_generation();
    Ok(())
}

fn range_op(op: Op, arg: usize) -> Result<isize> {
    let r: VpmRange = UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<VpmRange>())
        .reader()
        .read()?;
    let segments = translate(&r)?;
    let pieces = segments.as_slice();
    let whole_pages = pieces
        .iter()
        .all(|&(gpa, len)| gpa % PAGE == 0 && len % PAGE == 0);
    if matches!(op, Op::SetTransient | Op::SetPersistent) && !whole_pages {
        return Err(EINVAL);
    }
    with_channel(|c| match op {
        Op::Flush => {
            for &(gpa, len) in pieces {
                c.flush(gpa, len)?;
            }
            COUNTERS.flushes.fetch_add(1, Ordering::Relaxed);
            Ok(0)
        }
        _ => {
            if op == Op::Persist {
                COUNTERS.persists.fetch_add(1, Ordering::Relaxed);
            }
            c.call_all(op, pieces).map(|_| 0)
        }
    })
}

fn info(arg: usize) -> Result<isize> {
    let (served, rejected) = host_counts();
    let info = with_channel(|c| {
        let h = &c.page().header;
        Ok(VpmInfo {
            vpm_base: h.vpm_base.load(Ordering::Relaxed),
            vpm_size: h.vpm_size.load(Ordering::Relaxed),
            features: h.host_features.load(Ordering::Relaxed),
            abi_version: h.version.load(Ordering::Relaxed),
            epoch: h.epoch.load(Ordering::Relaxed),
            served,
            rejected,
        })
    })?;
    let mut w = UserSlice::new(UserPtr::from_addr(arg), core::mem::size_of::<VpmInfo>()).writer();
    w.write(&info)?;
    Ok(0)
}

// SAFETY: VpmRange and VpmInfo are repr(C) integers without padding; any bytes are valid.
unsafe impl kernel::transmute::FromBytes for VpmRange {}
// SAFETY: as above.
unsafe impl kernel::transmute::AsBytes for VpmInfo {}

#[vtable]
impl MiscDevice for VpmFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        KBox::try_pin_init(try_pin_init!(VpmFile {}), GFP_KERNEL)
    }

    fn mmap(_me: Pin<&VpmFile>, _file: &File, vma: &VmaNew) -> Result {
        // SAFETY: reading vm_pgoff of the VMA being set up, which we have exclusive access to.
        let pgoff = unsafe { (*vma.as_ptr()).vm_pgoff } as u64;
        let off = pgoff.checked_mul(PAGE).ok_or(EINVAL)?;
        if off == VPM_STATUS_OFFSET {
            map_status(vma)
        } else {
            map_vpm(vma, off)
        }
    }

    fn ioctl(_me: Pin<&VpmFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        match cmd {
            VPM_IOC_INFO => info(arg),
            VPM_IOC_PERSIST => range_op(Op::Persist, arg),
            VPM_IOC_FLUSH => range_op(Op::Flush, arg),
            VPM_IOC_SET_TRANSIENT => range_op(Op::SetTransient, arg),
            VPM_IOC_SET_PERSISTENT => range_op(Op::SetPersistent, arg),
            VPM_IOC_DRAIN => {
                COUNTERS.drains.fetch_add(1, Ordering::Relaxed);
                channel::drain_all().map(|_| 0)
            }
            VPM_IOC_REQUEST_EPOCH => with_channel(|c| c.call(Op::RequestEpoch, 0, 0).map(|_| 0)),
            _ => Err(ENOTTY),
        }
    }
}

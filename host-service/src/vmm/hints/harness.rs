//! A harness that drives the real hint service ([`HintService`]) serving a guest whose shared
//! page, ring entries, doorbell bytes and vPM content are chosen by the caller, on top of a real
//! pool (simulated PM) holding the guest's tenant and a neighbour tenant. The cargo-fuzz target
//! `hint_service` (host-service/fuzz) feeds it bytes ([`run_bytes`]); the proptest in
//! `hints/prop.rs` feeds it generated [`Step`]s ([`run`]). Built for tests and with the feature
//! `hint-harness` only.
//!
//! Promises checked after every doorbell byte (a broken one panics):
//! - nothing panics;
//! - guest RAM outside the pages the service was handed as shared pages is unchanged (the vPM
//!   included: the host only reads it), and in a ring slot only the `result` word may change;
//! - an entry the service finishes whose op, flags or range are invalid (an unknown op, flags,
//!   a zero, overflowing or out-of-vPM range, an unaligned transient mark) is answered with an
//!   error, never `Ok` (checked against this file's own reading of `docs/protocol.md`, not the
//!   service's decoder);
//! - the pool is only asked to act on ranges inside the tenant's vPM;
//! - the neighbour tenant's durable pages are unchanged;
//! - a byte that completed no entry with `Ok` issued no store, flush or drain to the pool or
//!   capacity device (so both stay byte-identical);
//! - after every accepted persist or epoch, the crash image with nothing unflushed surviving
//!   recovers to exactly the model: each accepted persist range and epoch carries the vPM bytes it
//!   was given, every other byte keeps its last durable value (pages ever marked transient are
//!   left out: they read as zeros by design).
//!
//! Long file: the guest model, the pool target, the step interpreter and the checks are one
//! harness; split, each part would only make sense read next to the others.

use std::alloc::{alloc_zeroed, Layout};
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use vpm_abi::proto::doorbell::encode;
use vpm_abi::proto::wire::{ENTRY_SIZE, RING_SLOTS};
use vpm_abi::{
    features, DoorbellCmd, HintResult, RawEntry, SharedPage, ABI_VERSION, MAGIC, PAGE_SIZE,
    RESULT_PENDING,
};

use super::{HintService, HintTarget};
use crate::pm::sim::{CrashSpace, SimClock, SimPm};
use crate::pool::{Pool, PoolConfig, PoolError, TenantConfig};
use crate::vmm::{Mode, VmStats, VmmError, VpmRange};

const PAGE: usize = PAGE_SIZE as usize;
/// Guest RAM: 8 pages; the vPM is pages 4..8.
const RAM_PAGES: usize = 8;
const RAM_LEN: usize = RAM_PAGES * PAGE;
const VPM_PAGE: usize = 4;
/// Guest-physical base of the vPM.
pub const VPM_BASE: u64 = (VPM_PAGE * PAGE) as u64;
/// vPM pages.
pub const VPM_PAGES: usize = RAM_PAGES - VPM_PAGE;
/// vPM bytes.
pub const VPM_LEN: usize = VPM_PAGES * PAGE;
const POOL_SIZE: u64 = 256 << 10;

/// Guest RAM, page-aligned, allocated once and zeroed per input.
fn ram() -> *mut u8 {
    thread_local! {
        static RAM: usize = {
            let layout = Layout::from_size_align(RAM_LEN, PAGE).expect("layout");
            // SAFETY: the layout has a non-zero size; the block is leaked on purpose (the hint
            // service keeps `&'static SharedPage`s into it).
            let p = unsafe { alloc_zeroed(layout) };
            assert!(!p.is_null(), "out of memory");
            p as usize
        };
    }
    RAM.with(|r| *r as *mut u8)
}

/// Copies guest RAM out.
fn ram_copy() -> Vec<u8> {
    // SAFETY: `ram()` is valid for RAM_LEN bytes; nothing writes it concurrently (one thread).
    unsafe { std::slice::from_raw_parts(ram(), RAM_LEN) }.to_vec()
}

/// A VM whose vPM is pages 4..8 of `ram()` and whose tenant lives in a real pool.
struct PoolTarget {
    mode: Mode,
    pool: Mutex<Pool>,
    tenant: u32,
    stats: Mutex<VmStats>,
    /// Pages handed out as shared pages (the only RAM the host may write).
    granted: RefCell<Vec<usize>>,
    /// The tenant's expected durable content.
    model: RefCell<Vec<u8>>,
    /// Bytes the guest wrote since they were last made durable: semantics P2 lets them come back
    /// as either value (persists write whole lines), so they are left out of the model check.
    written: RefCell<Vec<bool>>,
    /// Pages ever marked transient or persistent (left out of the model check).
    marked: RefCell<[bool; VPM_PAGES]>,
    /// Accepted persists and epochs since the last durability check.
    accepted: RefCell<u32>,
}

impl PoolTarget {
    fn vpm(&self) -> &[u8] {
        // SAFETY: the vPM lies inside `ram()`; the host only reads it here, on this thread.
        unsafe { std::slice::from_raw_parts(ram().add(VPM_BASE as usize), VPM_LEN) }
    }

    fn answer<T>(r: Result<T, PoolError>) -> HintResult {
        r.map_or_else(|e| e.hint_result(), |_| HintResult::Ok)
    }
}

impl HintTarget for PoolTarget {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn features(&self) -> u32 {
        self.mode.features()
    }

    fn stats(&self) -> &Mutex<VmStats> {
        &self.stats
    }

    fn shared_page(&self, gpa: u64) -> Option<&'static SharedPage> {
        let page = (gpa / PAGE_SIZE) as usize;
        if gpa % PAGE_SIZE != 0 || page >= RAM_PAGES || page >= VPM_PAGE {
            return None;
        }
        self.granted.borrow_mut().push(page);
        // SAFETY: page-aligned, inside the leaked RAM block (which lives for the process); the
        // harness touches shared pages only through atomics while the service may hold them.
        Some(unsafe { SharedPage::from_ptr(ram().add(page * PAGE)) })
    }

    fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError> {
        let pairs: Vec<(u64, u64)> = ranges.iter().map(VpmRange::as_pair).collect();
        for &(off, len) in &pairs {
            assert!(
                len > 0 && off + len <= VPM_LEN as u64,
                "the service passed a range outside the vPM: {off:#x}+{len:#x}"
            );
        }
        let r = self
            .pool
            .lock()
            .unwrap()
            .persist(self.tenant, &pairs, self.vpm());
        if r.is_ok() {
            let mut model = self.model.borrow_mut();
            for &(off, len) in &pairs {
                let (a, b) = (off as usize, (off + len) as usize);
                model[a..b].copy_from_slice(&self.vpm()[a..b]);
                self.written.borrow_mut()[a..b].fill(false);
            }
            *self.accepted.borrow_mut() += 1;
        }
        Ok(Self::answer(r))
    }

    fn msync_region(&self) -> Result<HintResult, VmmError> {
        Ok(HintResult::NotSupported)
    }

    fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError> {
        let (first, count) = (range.first_page(), range.page_count());
        assert!(first + count <= VPM_PAGES as u64, "mark outside the vPM");
        for p in first..first + count {
            self.marked.borrow_mut()[p as usize] = true;
        }
        let mut pool = self.pool.lock().unwrap();
        let r = if on {
            pool.set_transient(self.tenant, first, count)
        } else {
            pool.set_persistent(self.tenant, first, count)
        };
        Ok(Self::answer(r))
    }

    fn request_epoch(&self) -> Result<HintResult, VmmError> {
        let pages: Vec<u64> = (0..VPM_PAGES as u64).collect();
        let r = self
            .pool
            .lock()
            .unwrap()
            .commit_epoch(self.tenant, &pages, self.vpm());
        if r.is_ok() {
            self.model.borrow_mut().copy_from_slice(self.vpm());
            self.written.borrow_mut().fill(false);
            *self.accepted.borrow_mut() += 1;
        }
        Ok(Self::answer(r))
    }

    fn witness_drain(&self) {}
}

/// The pool devices, the target and the neighbour's durable pages.
struct World {
    pm: Arc<SimPm>,
    cap: Arc<SimPm>,
    target: PoolTarget,
    neighbour: u32,
    neighbour_pages: Vec<Vec<u8>>,
}

fn tenant(name: &str, pages: u64, quota_pages: u64) -> TenantConfig {
    TenantConfig {
        name: name.into(),
        vpm_bytes: pages * PAGE_SIZE,
        pm_quota_bytes: quota_pages * PAGE_SIZE,
        dram_budget_bytes: 0,
        log_bytes: 16 << 10,
    }
}

/// The pool and capacity images after setup, the tenant ids and the neighbour's pages, built
/// once (creating a pool is slow next to one fuzz input).
struct Template {
    pm: Vec<u8>,
    cap: Vec<u8>,
    tenant: u32,
    neighbour: u32,
    neighbour_pages: Vec<Vec<u8>>,
}

fn template() -> &'static Template {
    static T: OnceLock<Template> = OnceLock::new();
    T.get_or_init(|| {
        let pm = Arc::new(SimPm::new(POOL_SIZE));
        let cap = Arc::new(SimPm::new(0));
        let cfg = PoolConfig {
            size: POOL_SIZE,
            max_tenants: 2,
            meta_bytes: 64 << 10,
            pool_id: 7,
        };
        let mut pool = Pool::create(pm.clone(), cap.clone(), &cfg).expect("create pool");
        let neighbour = pool.add_tenant(&tenant("n", 2, 2)).expect("neighbour");
        let mut img = vec![0u8; 2 * PAGE];
        img.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = (i % 251) as u8 | 1);
        pool.commit_epoch(neighbour, &[0, 1], &img[..])
            .expect("neighbour epoch");
        // Quota of 2 PM pages for 4 vPM pages and no capacity: persists can run out of space.
        let t = pool
            .add_tenant(&tenant("g", VPM_PAGES as u64, 2))
            .expect("tenant");
        Template {
            pm: pm.current(),
            cap: cap.current(),
            tenant: t,
            neighbour,
            neighbour_pages: (0..2)
                .map(|v| img[v * PAGE..(v + 1) * PAGE].to_vec())
                .collect(),
        }
    })
}

fn world(mode: Mode) -> World {
    let t = template();
    let clock = SimClock::default();
    let pm = Arc::new(SimPm::from_image(t.pm.clone(), clock.clone()));
    let cap = Arc::new(SimPm::from_image(t.cap.clone(), clock));
    let (pool, _) = Pool::open(pm.clone(), cap.clone()).expect("open the template pool");
    World {
        pm,
        cap,
        target: PoolTarget {
            mode,
            pool: Mutex::new(pool),
            tenant: t.tenant,
            stats: Mutex::new(VmStats::default()),
            granted: RefCell::new(Vec::new()),
            model: RefCell::new(vec![0; VPM_LEN]),
            written: RefCell::new(vec![false; VPM_LEN]),
            marked: RefCell::new([false; VPM_PAGES]),
            accepted: RefCell::new(0),
        },
        neighbour: t.neighbour,
        neighbour_pages: t.neighbour_pages.clone(),
    }
}

/// One thing the guest (or a broken guest) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The guest stores `val` into `len` vPM bytes at offset `off` (clamped to the vPM).
    WriteVpm {
        /// Offset into the vPM (taken modulo its size).
        off: usize,
        /// Bytes (at least 1, clamped to the vPM's end).
        len: usize,
        /// The byte stored.
        val: u8,
    },
    /// Raw bytes into ring slot `slot % 8` of the shared page, no doorbell.
    RawSlot {
        /// Slot (modulo 8).
        slot: usize,
        /// The entry's wire bytes.
        raw: [u8; ENTRY_SIZE],
    },
    /// An entry (result pending) in the next slot, published by bumping `produced`, and a
    /// RING doorbell.
    Publish {
        /// Op code (any value).
        op: u16,
        /// Flags (any value; 0 is the only valid one).
        flags: u16,
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Sequence number.
        seq: u64,
    },
    /// Sets a header word: `field % 6` picks magic, version, ring_entries, produced,
    /// guest_features or consumed.
    Header {
        /// Which word.
        field: u8,
        /// Its new value (truncated to the word's width).
        value: u64,
    },
    /// Raw doorbell bytes.
    Doorbell(Vec<u8>),
    /// A REGISTER doorbell for page 1 after writing a well-formed header with this many ring
    /// entries.
    RegisterGood {
        /// Ring entries (1, 2, 4 or 8 make sense).
        entries: u32,
    },
    /// A REGISTER doorbell for any guest-physical address.
    Register(u64),
    /// An UNREGISTER doorbell.
    Unregister,
    /// A RING doorbell.
    Ring,
}

/// What a run saw (for a caller that wants to know the input exercised something).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries the service finished.
    pub finished: u64,
    /// Of those, invalid entries, each answered with an error.
    pub refused_bad: u64,
    /// Invalid transient or persistent marks among `refused_bad`.
    pub refused_bad_marks: u64,
    /// Persists and epochs the pool accepted.
    pub accepted: u64,
}

/// Reads `n` bytes from the input, zero-padded past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// Some guest-physical address: mostly near or inside the vPM, sometimes anything.
fn gpa(input: &mut Input) -> u64 {
    let sel = input.u8();
    let v = input.u16() as u64;
    match sel % 4 {
        0 => input.u64(),
        1 => VPM_BASE.wrapping_sub(PAGE_SIZE) + v % (VPM_LEN as u64 + 2 * PAGE_SIZE),
        _ => VPM_BASE + v % VPM_LEN as u64,
    }
}

/// The shared page registered most often: page 1.
const SHARED: u64 = PAGE_SIZE;

/// A well-formed header at page 1, so that most inputs get a served ring.
fn guest_header(entries: u32) {
    // SAFETY: page 1 of the RAM block; atomics only.
    let page = unsafe { SharedPage::from_ptr(ram().add(PAGE)) };
    let h = &page.header;
    h.magic.store(MAGIC, Ordering::Relaxed);
    h.version.store(ABI_VERSION, Ordering::Relaxed);
    h.guest_features.store(features::ALL, Ordering::Relaxed);
    h.ring_entries.store(entries, Ordering::Relaxed);
}

/// Reads one step from fuzzer bytes (the byte format the committed seeds use).
fn parse_step(input: &mut Input) -> Step {
    match input.u8() % 8 {
        0 => {
            let off = input.u16() as usize;
            let len = input.u8() as usize + 1;
            Step::WriteVpm {
                off,
                len,
                val: input.u8(),
            }
        }
        1 => {
            let slot = input.u8() as usize;
            Step::RawSlot {
                slot,
                raw: input.bytes(),
            }
        }
        2 => {
            let op = (input.u8() % 9) as u16;
            let gpa = gpa(input);
            let len = match input.u8() % 4 {
                0 => input.u64(),
                1 => PAGE_SIZE * (input.u8() as u64 % 3),
                _ => input.u8() as u64 + 1,
            };
            Step::Publish {
                op,
                flags: 0,
                gpa,
                len,
                seq: input.u8() as u64,
            }
        }
        3 => {
            let value = input.u64();
            Step::Header {
                field: input.u8(),
                value,
            }
        }
        4 => {
            let n = input.u8() as usize % 10;
            Step::Doorbell((0..n).map(|_| input.u8()).collect())
        }
        5 => match input.u8() % 4 {
            0 => Step::Register(gpa(input)),
            1 => Step::Register(input.u64()),
            _ => Step::RegisterGood {
                entries: 1 << (input.u8() % 4),
            },
        },
        6 => Step::Unregister,
        _ => Step::Ring,
    }
}

/// Applies one step to guest RAM; returns the doorbell bytes it wants fed to the service.
fn apply(step: &Step, out: &mut Vec<u8>, written: &RefCell<Vec<bool>>) {
    // SAFETY: page 1 of the RAM block, the page guests register; atomics only.
    let page = unsafe { SharedPage::from_ptr(ram().add(PAGE)) };
    let h = &page.header;
    match step {
        Step::WriteVpm { off, len, val } => {
            let off = off % VPM_LEN;
            let len = (*len).clamp(1, VPM_LEN - off);
            // SAFETY: inside the vPM of the RAM block; single-threaded.
            unsafe { std::ptr::write_bytes(ram().add(VPM_BASE as usize + off), *val, len) };
            written.borrow_mut()[off..off + len].fill(true);
        }
        Step::RawSlot { slot, raw } => page.ring[slot % 8].store(&RawEntry::from_bytes(raw)),
        Step::Publish {
            op,
            flags,
            gpa,
            len,
            seq,
        } => {
            let idx = h.produced.load(Ordering::Relaxed);
            let e = RawEntry {
                op: *op,
                flags: *flags,
                result: RESULT_PENDING,
                seq: *seq,
                gpa: *gpa,
                len: *len,
            };
            page.ring[(idx & 7) as usize].store(&e);
            h.produced.store(idx.wrapping_add(1), Ordering::Release);
            out.extend(doorbell(DoorbellCmd::Ring));
        }
        Step::Header { field, value } => {
            let v = *value;
            match field % 6 {
                0 => h.magic.store(v, Ordering::Relaxed),
                1 => h.version.store(v as u32, Ordering::Relaxed),
                2 => h.ring_entries.store(v as u32, Ordering::Relaxed),
                3 => h.produced.store(v as u32, Ordering::Relaxed),
                4 => h.guest_features.store(v as u32, Ordering::Relaxed),
                _ => h.consumed.store(v as u32, Ordering::Relaxed),
            }
        }
        Step::Doorbell(bytes) => out.extend(bytes),
        Step::RegisterGood { entries } => {
            guest_header(*entries);
            out.extend(doorbell(DoorbellCmd::Register(SHARED)));
        }
        Step::Register(at) => out.extend(doorbell(DoorbellCmd::Register(*at))),
        Step::Unregister => out.extend(doorbell(DoorbellCmd::Unregister)),
        Step::Ring => out.extend(doorbell(DoorbellCmd::Ring)),
    }
}

fn doorbell(cmd: DoorbellCmd) -> Vec<u8> {
    let mut b = [0u8; vpm_abi::MAX_CMD_BYTES];
    let n = encode(cmd, &mut b);
    b[..n].to_vec()
}

/// Whether `a` and `b` (guest RAM images) agree outside the granted pages.
fn same_outside_granted(a: &[u8], b: &[u8], granted: &[usize]) -> bool {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .enumerate()
        .all(|(p, (x, y))| granted.contains(&p) || x == y)
}

/// The tenant's durable content (pessimistic crash image, recovered) matches the model.
fn check_durable(w: &World) {
    let (base, trace) = w.pm.trace();
    let img = CrashSpace::at(&base, &trace, u64::MAX).pessimistic();
    let (cbase, ctrace) = w.cap.trace();
    let cimg = CrashSpace::at(&cbase, &ctrace, u64::MAX).pessimistic();
    let clock = SimClock::default();
    let pm = Arc::new(SimPm::from_image(img, clock.clone()));
    let cap = Arc::new(SimPm::from_image(cimg, clock));
    let (pool, _) = Pool::open(pm, cap).expect("the crash image recovers");
    let model = w.target.model.borrow();
    let marked = w.target.marked.borrow();
    let written = w.target.written.borrow();
    let mut buf = vec![0u8; PAGE];
    for vpn in 0..VPM_PAGES {
        if marked[vpn] {
            continue;
        }
        pool.read_home(w.target.tenant, vpn as u64, &mut buf)
            .expect("read home");
        for (i, &b) in buf.iter().enumerate() {
            let at = vpn * PAGE + i;
            assert!(
                written[at] || b == model[at],
                "vPM byte {at:#x}: durable {b:#x}, but the accepted persists and epochs say {:#x}",
                model[at]
            );
        }
    }
    for (vpn, want) in w.neighbour_pages.iter().enumerate() {
        pool.read_home(w.neighbour, vpn as u64, &mut buf)
            .expect("read neighbour home");
        assert!(buf == *want, "the neighbour's page {vpn} changed");
    }
}

/// Whether an entry is invalid whatever the VM's state: an unknown op, flags set, or (ops with a
/// range) a zero length, an end past `u64::MAX`, a range not inside the vPM, or (marks) a range
/// that is not whole pages. Written from the protocol, independently of `decode_entry`.
fn invalid(e: &RawEntry) -> bool {
    // Persist, flush, set-transient, set-persistent carry a range; 0, 1, 4, 7 do not.
    let ranged = matches!(e.op, 2 | 3 | 5 | 6);
    if e.op > 7 || e.flags != 0 {
        return true;
    }
    if !ranged {
        return false;
    }
    let Some(end) = e.gpa.checked_add(e.len) else {
        return true;
    };
    let outside = e.len == 0 || e.gpa < VPM_BASE || end > VPM_BASE + VPM_LEN as u64;
    let mark = matches!(e.op, 5 | 6);
    outside || (mark && (e.gpa % PAGE_SIZE != 0 || e.len % PAGE_SIZE != 0))
}

/// The entries of every slot of every page that may be a shared page (pages below the vPM).
fn slots() -> Vec<RawEntry> {
    (0..VPM_PAGE)
        .flat_map(|p| {
            // SAFETY: page `p` of the RAM block; atomics only.
            let page = unsafe { SharedPage::from_ptr(ram().add(p * PAGE)) };
            (0..RING_SLOTS).map(move |s| page.ring[s].load())
        })
        .collect()
}

/// Checks the answers the service wrote into ring slots while handling one byte.
fn check_answers(before: &[RawEntry], after: &[RawEntry], report: &mut Report) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let (page, slot) = (i / RING_SLOTS, i % RING_SLOTS);
        let mut fields = *a;
        fields.result = b.result;
        assert!(
            fields == *b,
            "the service changed more than `result` in slot {slot} of page {page}: {b:?} -> {a:?}"
        );
        if a.result == b.result {
            continue;
        }
        report.finished += 1;
        if invalid(a) {
            assert!(
                a.result != HintResult::Ok.code(),
                "an invalid entry was answered Ok: {a:?}"
            );
            report.refused_bad += 1;
            report.refused_bad_marks += matches!(a.op, 5 | 6) as u64;
        }
    }
}

/// Runs fuzzer bytes: byte 0 picks the VM mode, the rest is a stream of steps. Panics when a
/// promise (module docs) is broken.
pub fn run_bytes(data: &[u8]) -> Report {
    let Some((&mode, rest)) = data.split_first() else {
        return Report::default();
    };
    let mode = match mode % 5 {
        0 => Mode::Full,
        1 => Mode::Direct,
        2 => Mode::Msync,
        _ => Mode::Pv,
    };
    let mut input = Input(rest);
    let steps = std::iter::from_fn(|| (!input.0.is_empty()).then(|| parse_step(&mut input)));
    run(mode, steps)
}

/// Runs `steps` against a fresh pool (from a template built once per process) and a zeroed guest
/// on this thread. Panics when a promise (module docs) is broken.
pub fn run(mode: Mode, steps: impl IntoIterator<Item = Step>) -> Report {
    // SAFETY: the whole RAM block; no shared page of an earlier run is in use any more.
    unsafe { std::ptr::write_bytes(ram(), 0, RAM_LEN) };
    let w = world(mode);
    let mut service = HintService::new(VPM_BASE, VPM_LEN as u64);
    let mut report = Report::default();
    let mut bytes = Vec::new();
    for step in steps {
        bytes.clear();
        apply(&step, &mut bytes, &w.target.written);
        for &b in &bytes {
            let ram_before = ram_copy();
            let slots_before = slots();
            let granted_before = w.target.granted.borrow().clone();
            let ops_before = w.pm.clock().now();
            let served_before = w.target.stats.lock().unwrap().hints_served;
            *w.target.accepted.borrow_mut() = 0;
            if let Err(e) = service.on_byte(b, &w.target) {
                // An error is the VMM's own failure (not the guest's); none is expected here.
                panic!("hint service failed: {e}");
            }
            check_answers(&slots_before, &slots(), &mut report);
            let granted = w.target.granted.borrow().clone();
            let mut all = granted_before;
            all.extend(granted);
            assert!(
                same_outside_granted(&ram_before, &ram_copy(), &all),
                "the service wrote guest RAM outside the shared pages it was given"
            );
            let served = w.target.stats.lock().unwrap().hints_served - served_before;
            if served == 0 {
                // Both devices stamp every store, flush and drain on one clock: a batch that
                // was refused entirely must not have issued any.
                assert!(
                    w.pm.clock().now() == ops_before,
                    "a refused batch wrote to the pool or capacity device"
                );
            }
            let accepted = *w.target.accepted.borrow();
            report.accepted += accepted as u64;
            if accepted > 0 {
                check_durable(&w);
            }
        }
    }
    check_durable(&w);
    report
}

//! Fuzzes the real hint service (`vmm::hints::HintService`) serving a guest whose shared page,
//! ring entries, doorbell bytes and vPM content are all chosen by the fuzzer, on top of a real
//! pool (simulated PM) holding the guest's tenant and a neighbour tenant.
//!
//! Promises checked after every doorbell byte:
//! - nothing panics;
//! - guest RAM outside the pages the service was handed as shared pages is unchanged (the vPM
//!   included: the host only reads it);
//! - the neighbour tenant's durable pages are unchanged;
//! - a byte that completed no entry with `Ok` issued no store, flush or drain to the pool or
//!   capacity device (so both stay byte-identical);
//! - after every accepted persist or epoch, the crash image with nothing unflushed surviving
//!   recovers to exactly the model: each accepted persist range and epoch carries the vPM bytes it
//!   was given, every other byte keeps its last durable value (pages ever marked transient are
//!   left out: they read as zeros by design).
//!
//! Input: byte 0 picks the VM mode, then a stream of operations (see `step`).
#![no_main]

use std::alloc::{alloc_zeroed, Layout};
use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vpm_abi::proto::doorbell::encode;
use vpm_abi::proto::wire::ENTRY_SIZE;
use vpm_abi::{
    features, DoorbellCmd, HintResult, RawEntry, SharedPage, ABI_VERSION, MAGIC, PAGE_SIZE,
};
use vpm_host::pm::sim::{CrashSpace, SimClock, SimPm};
use vpm_host::pool::{Pool, PoolConfig, PoolError, TenantConfig};
use vpm_host::vmm::hints::{HintService, HintTarget};
use vpm_host::vmm::{Mode, VmStats, VmmError, VpmRange};

const PAGE: usize = PAGE_SIZE as usize;
/// Guest RAM: 8 pages; the vPM is pages 4..8.
const RAM_PAGES: usize = 8;
const RAM_LEN: usize = RAM_PAGES * PAGE;
const VPM_PAGE: usize = 4;
const VPM_BASE: u64 = (VPM_PAGE * PAGE) as u64;
const VPM_PAGES: usize = RAM_PAGES - VPM_PAGE;
const VPM_LEN: usize = VPM_PAGES * PAGE;
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

/// Applies one fuzzer operation; returns the doorbell bytes it wants fed to the service.
fn step(input: &mut Input, out: &mut Vec<u8>, written: &RefCell<Vec<bool>>) {
    // SAFETY: page 1 of the RAM block, the page guests register; atomics only.
    let page = unsafe { SharedPage::from_ptr(ram().add(PAGE)) };
    let h = &page.header;
    match input.u8() % 8 {
        // The guest writes its vPM.
        0 => {
            let off = input.u16() as usize % VPM_LEN;
            let len = (input.u8() as usize + 1).min(VPM_LEN - off);
            let val = input.u8();
            // SAFETY: inside the vPM of the RAM block; single-threaded.
            unsafe { std::ptr::write_bytes(ram().add(VPM_BASE as usize + off), val, len) };
            written.borrow_mut()[off..off + len].fill(true);
        }
        // Raw bytes into a ring slot.
        1 => {
            let slot = input.u8() as usize % 8;
            let raw: [u8; ENTRY_SIZE] = input.bytes();
            page.ring[slot].store(&RawEntry::from_bytes(&raw));
        }
        // A plausible entry, published by bumping `produced`.
        2 => {
            let op = (input.u8() % 9) as u16;
            let g = gpa(input);
            let len = match input.u8() % 4 {
                0 => input.u64(),
                1 => PAGE_SIZE * (input.u8() as u64 % 3),
                _ => input.u8() as u64 + 1,
            };
            let idx = h.produced.load(Ordering::Relaxed);
            let slot = (idx & 7) as usize;
            let seq = input.u8() as u64;
            let e = RawEntry {
                op,
                flags: 0,
                result: vpm_abi::RESULT_PENDING,
                seq,
                gpa: g,
                len,
            };
            page.ring[slot].store(&e);
            h.produced.store(idx.wrapping_add(1), Ordering::Release);
            out.extend(doorbell(DoorbellCmd::Ring));
        }
        // A header word.
        3 => {
            let v = input.u64();
            match input.u8() % 6 {
                0 => h.magic.store(v, Ordering::Relaxed),
                1 => h.version.store(v as u32, Ordering::Relaxed),
                2 => h.ring_entries.store(v as u32, Ordering::Relaxed),
                3 => h.produced.store(v as u32, Ordering::Relaxed),
                4 => h.guest_features.store(v as u32, Ordering::Relaxed),
                _ => h.consumed.store(v as u32, Ordering::Relaxed),
            }
        }
        // Raw doorbell bytes.
        4 => {
            let n = input.u8() as usize % 10;
            for _ in 0..n {
                out.push(input.u8());
            }
        }
        // Register a shared page: page 1 with a good header, or anywhere.
        5 => {
            let at = match input.u8() % 4 {
                0 => gpa(input),
                1 => input.u64(),
                _ => {
                    guest_header(1 << (input.u8() % 4));
                    SHARED
                }
            };
            out.extend(doorbell(DoorbellCmd::Register(at)));
        }
        6 => out.extend(doorbell(DoorbellCmd::Unregister)),
        _ => out.extend(doorbell(DoorbellCmd::Ring)),
    }
}

fn doorbell(cmd: DoorbellCmd) -> Vec<u8> {
    let mut b = [0u8; 9];
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

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mode = match mode % 5 {
        0 => Mode::Full,
        1 => Mode::Direct,
        2 => Mode::Msync,
        _ => Mode::Pv,
    };
    // SAFETY: the whole RAM block; no shared page of an earlier input is in use any more.
    unsafe { std::ptr::write_bytes(ram(), 0, RAM_LEN) };
    let w = world(mode);
    let mut service = HintService::new(VPM_BASE, VPM_LEN as u64);
    let mut input = Input(rest);
    let mut bytes = Vec::new();
    while !input.0.is_empty() {
        bytes.clear();
        step(&mut input, &mut bytes, &w.target.written);
        for &b in &bytes {
            let ram_before = ram_copy();
            let granted_before = w.target.granted.borrow().clone();
            let ops_before = w.pm.clock().now();
            let served_before = w.target.stats.lock().unwrap().hints_served;
            *w.target.accepted.borrow_mut() = 0;
            if let Err(e) = service.on_byte(b, &w.target) {
                // An error is the VMM's own failure (not the guest's); none is expected here.
                panic!("hint service failed: {e}");
            }
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
            if *w.target.accepted.borrow() > 0 {
                check_durable(&w);
            }
        }
    }
    check_durable(&w);
});

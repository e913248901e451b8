//! The simulated VM the harness serves: guest RAM (eight pages, the vPM in the upper four), a
//! [`PoolTarget`] whose tenant lives in a real pool on simulated PM, and a neighbour tenant whose
//! durable pages must never change.

use std::alloc::{alloc_zeroed, Layout};
use std::cell::RefCell;
use std::sync::{Arc, Mutex, OnceLock};

use vpm_abi::{HintResult, SharedPage, PAGE_SIZE};

use super::super::HintTarget;
use super::{PAGE, POOL_SIZE, RAM_LEN, RAM_PAGES, VPM_BASE, VPM_LEN, VPM_PAGE, VPM_PAGES};
use crate::pm::sim::{SimClock, SimPm};
use crate::pool::{Pool, PoolConfig, PoolError, TenantConfig};
use crate::vmm::{Mode, VmStats, VmmError, VpmRange};

/// Guest RAM, page-aligned, allocated once and zeroed per input.
pub(super) fn ram() -> *mut u8 {
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
pub(super) fn ram_copy() -> Vec<u8> {
    // SAFETY: `ram()` is valid for RAM_LEN bytes; nothing writes it concurrently (one thread).
    unsafe { std::slice::from_raw_parts(ram(), RAM_LEN) }.to_vec()
}

/// A VM whose vPM is pages 4..8 of `ram()` and whose tenant lives in a real pool.
pub(super) struct PoolTarget {
    pub(super) mode: Mode,
    pub(super) pool: Mutex<Pool>,
    pub(super) tenant: u32,
    pub(super) stats: Mutex<VmStats>,
    /// Pages handed out as shared pages (the only RAM the host may write).
    pub(super) granted: RefCell<Vec<usize>>,
    /// The tenant's expected durable content.
    pub(super) model: RefCell<Vec<u8>>,
    /// Bytes the guest wrote since they were last made durable: semantics P2 lets them come back
    /// as either value (persists write whole lines), so they are left out of the model check.
    pub(super) written: RefCell<Vec<bool>>,
    /// Pages ever marked transient or persistent (left out of the model check).
    pub(super) marked: RefCell<[bool; VPM_PAGES]>,
    /// Accepted persists and epochs since the last durability check.
    pub(super) accepted: RefCell<u32>,
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
pub(super) struct World {
    pub(super) pm: Arc<SimPm>,
    pub(super) cap: Arc<SimPm>,
    pub(super) target: PoolTarget,
    pub(super) neighbour: u32,
    pub(super) neighbour_pages: Vec<Vec<u8>>,
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

pub(super) fn world(mode: Mode) -> World {
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

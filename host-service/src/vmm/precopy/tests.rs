//! Pre-copy rounds and the stop against a model of KVM's dirty log, committed to a pool.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;

use vpm_abi::PAGE_SIZE;

use super::*;
use crate::pm::sim::SimPm;
use crate::pool::{Pool, PoolConfig, TenantConfig};

const PAGE: usize = PAGE_SIZE as usize;
const PAGES: u64 = 8;

/// Guest memory with a dirty log that behaves like KVM's with manual protection: a write sets
/// the page's bit; protect clears it; collect does not.
struct Model {
    mem: RefCell<Vec<u8>>,
    dirty: RefCell<BTreeSet<u64>>,
}

impl Model {
    fn new() -> Model {
        Model {
            mem: RefCell::new(vec![0; PAGES as usize * PAGE]),
            dirty: RefCell::new(BTreeSet::new()),
        }
    }

    /// The guest fills page `vpn` with `byte`.
    fn write(&self, vpn: u64, byte: u8) {
        self.mem.borrow_mut()[vpn as usize * PAGE..][..PAGE].fill(byte);
        self.dirty.borrow_mut().insert(vpn);
    }

    fn ptr(&self) -> *const u8 {
        self.mem.borrow().as_ptr()
    }
}

impl DirtyTracker for Model {
    fn collect(&self) -> Result<Vec<u64>, VmmError> {
        Ok(self.dirty.borrow().iter().copied().collect())
    }

    fn protect(&self, pages: &[u64]) -> Result<(), VmmError> {
        let mut d = self.dirty.borrow_mut();
        for p in pages {
            d.remove(p);
        }
        Ok(())
    }
}

fn pool() -> (Pool, u32) {
    let size = 64 * PAGE_SIZE;
    let cfg = PoolConfig {
        size,
        max_tenants: 2,
        meta_bytes: 16 * PAGE_SIZE,
        pool_id: 7,
    };
    let mut pool = Pool::create(Arc::new(SimPm::new(size)), Arc::new(SimPm::new(0)), &cfg).unwrap();
    let t = pool
        .add_tenant(&TenantConfig {
            name: "t".into(),
            vpm_bytes: PAGES * PAGE_SIZE,
            pm_quota_bytes: 2 * PAGES * PAGE_SIZE,
            dram_budget_bytes: 0,
            log_bytes: 4 * PAGE_SIZE,
        })
        .unwrap();
    (pool, t)
}

fn home(pool: &Pool, t: u32, vpn: u64) -> Vec<u8> {
    let mut buf = vec![0; PAGE];
    pool.read_home(t, vpn, &mut buf).unwrap();
    buf
}

/// The defect pre-copy must not have: a page copied by a round, then written again before the
/// stop, must be committed with the content it has at the stop, not the round's copy.
#[test]
fn a_page_written_after_a_round_is_committed_with_its_content_at_the_stop() {
    let m = Model::new();
    let mut st = Staging::new(PAGES);
    m.write(1, 0xa1);
    m.write(2, 0xb1);
    // SAFETY: the model's memory covers every page and is never reallocated.
    let r = unsafe { round(&m, &mut st, m.ptr(), |_| false) }.unwrap();
    assert_eq!(
        r,
        RoundStats {
            copied: 2,
            recopied: 0
        }
    );
    m.write(1, 0xa2);
    // SAFETY: as above; nothing writes the model meanwhile.
    let dirty = unsafe {
        stop(&m, &mut st, m.ptr(), &PauseGate::new(1), |d| {
            vec![None; d.len()]
        })
    }
    .unwrap()
    .dirty;
    assert_eq!(dirty, vec![1]);
    // A write after the stop belongs to the next epoch.
    m.write(2, 0xb2);
    let (mut pool, t) = pool();
    pool.commit_epoch(t, &st.pages_sorted(), &st).unwrap();
    assert!(
        home(&pool, t, 1).iter().all(|&b| b == 0xa2),
        "final content of page 1"
    );
    assert!(
        home(&pool, t, 2).iter().all(|&b| b == 0xb1),
        "page 2 as at the stop"
    );
    assert!(home(&pool, t, 3).iter().all(|&b| b == 0));
}

/// Kept-writable pages are left dirty by rounds (no extra fault) and copied at the stop.
#[test]
fn kept_pages_are_copied_at_the_stop_not_by_rounds() {
    let m = Model::new();
    let mut st = Staging::new(PAGES);
    m.write(4, 1);
    m.write(5, 2);
    // SAFETY: as in the test above.
    let r = unsafe { round(&m, &mut st, m.ptr(), |v| v == 5) }.unwrap();
    assert_eq!(r.copied, 1);
    assert!(m.dirty.borrow().contains(&5), "a kept page stays dirty");
    m.write(5, 3);
    // SAFETY: as above.
    let dirty = unsafe {
        stop(&m, &mut st, m.ptr(), &PauseGate::new(1), |d| {
            vec![None; d.len()]
        })
    }
    .unwrap()
    .dirty;
    assert_eq!(dirty, vec![5]);
    let (mut pool, t) = pool();
    pool.commit_epoch(t, &st.pages_sorted(), &st).unwrap();
    assert!(home(&pool, t, 4).iter().all(|&b| b == 1));
    assert!(home(&pool, t, 5).iter().all(|&b| b == 3));
}

#[test]
fn rounds_that_mostly_recopy_are_diverging() {
    let m = Model::new();
    let mut st = Staging::new(PAGES);
    for v in 0..4 {
        m.write(v, 1);
    }
    // SAFETY: as in the tests above.
    let first = unsafe { round(&m, &mut st, m.ptr(), |_| false) }.unwrap();
    assert!(!first.diverging());
    for v in 0..3 {
        m.write(v, 2);
    }
    m.write(7, 2);
    // SAFETY: as above.
    let second = unsafe { round(&m, &mut st, m.ptr(), |_| false) }.unwrap();
    assert_eq!(
        second,
        RoundStats {
            copied: 4,
            recopied: 3
        }
    );
    assert!(second.diverging());
}

use std::sync::Arc;

use super::*;
use crate::pm::sim::SimPm;
use crate::pool::{PoolConfig, TenantConfig};

const PAGES: usize = 8;
const PAGE: usize = PAGE_SIZE as usize;

fn pool() -> (Mutex<Pool>, u32) {
    let size = 1 << 20;
    let cfg = PoolConfig {
        size,
        max_tenants: 2,
        meta_bytes: 16 * PAGE_SIZE,
        pool_id: 1,
    };
    let mut pool = Pool::create(Arc::new(SimPm::new(size)), Arc::new(SimPm::new(0)), &cfg).unwrap();
    let t = pool
        .add_tenant(&TenantConfig {
            name: "q".into(),
            vpm_bytes: (PAGES * PAGE) as u64,
            pm_quota_bytes: (2 * PAGES * PAGE) as u64,
            dram_budget_bytes: 0,
            log_bytes: 8 * PAGE_SIZE,
        })
        .unwrap();
    (Mutex::new(pool), t)
}

fn home(pool: &Mutex<Pool>, t: u32, vpn: u64) -> Vec<u8> {
    let mut buf = vec![0u8; PAGE];
    pool.lock().unwrap().read_home(t, vpn, &mut buf).unwrap();
    buf
}

#[test]
fn each_epoch_commits_exactly_the_changed_pages_and_witnesses_the_console_length() {
    let dir = tempfile::tempdir().unwrap();
    let (console, witness) = (dir.path().join("console"), dir.path().join("witness"));
    std::fs::write(&console, b"FSYNC-ACK a 1 00000000\n").unwrap();
    let (pool, t) = pool();
    let mut vpm = vec![0u8; PAGES * PAGE];
    let spec = EpochSpec {
        epoch_ms: 10,
        witness: Some(witness.clone()),
    };
    let mut d = EpochDriver::new(&vpm, 0, &spec, &console).unwrap();
    vpm[PAGE + 3] = 7;
    vpm[5 * PAGE] = 9;
    d.epoch(&vpm, None, &pool, t).unwrap();
    assert_eq!(home(&pool, t, 1), vpm[PAGE..2 * PAGE]);
    assert_eq!(home(&pool, t, 5), vpm[5 * PAGE..6 * PAGE]);
    let s = d.summary();
    assert_eq!(
        (s.epochs, s.epoch, s.candidate_pages, s.committed_pages),
        (1, 1, 2, 2)
    );

    // Page 1 goes back to zeros, page 2 changes: both are found against the stage.
    std::fs::write(
        &console,
        b"FSYNC-ACK a 1 00000000\nFSYNC-ACK b 1 00000000\n",
    )
    .unwrap();
    vpm[PAGE + 3] = 0;
    vpm[2 * PAGE + 100] = 1;
    d.epoch(&vpm, None, &pool, t).unwrap();
    for vpn in 0..PAGES {
        assert_eq!(
            home(&pool, t, vpn as u64),
            vpm[vpn * PAGE..(vpn + 1) * PAGE],
            "page {vpn}"
        );
    }
    // An epoch with nothing changed commits nothing but still advances.
    d.epoch(&vpm, None, &pool, t).unwrap();
    let s = d.summary();
    assert_eq!(
        (s.epochs, s.epoch, s.candidate_pages, s.vpm_pages),
        (3, 3, 4, PAGES as u64)
    );
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap(),
        "1 23\n2 46\n3 46\n"
    );
}

#[test]
fn a_failed_commit_keeps_its_candidates_for_the_next_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let (pool, t) = pool();
    let mut vpm = vec![0u8; PAGES * PAGE];
    let spec = EpochSpec {
        epoch_ms: 0,
        witness: None,
    };
    let mut d = EpochDriver::new(&vpm, 0, &spec, &dir.path().join("none")).unwrap();
    vpm[3 * PAGE] = 1;
    d.epoch(&vpm, None, &pool, 99).unwrap_err();
    d.epoch(&vpm, None, &pool, t).unwrap();
    assert_eq!(home(&pool, t, 3), vpm[3 * PAGE..4 * PAGE]);
}

#[test]
fn percentiles_pick_from_the_sorted_values() {
    let mut v = vec![5, 1, 4, 2, 3];
    assert_eq!(percentile(&mut v, 50), 3);
    assert_eq!(percentile(&mut v, 100), 5);
    assert_eq!(percentile(&mut v, 0), 1);
    assert_eq!(percentile(&mut [], 99), 0);
}

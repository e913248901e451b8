//! Fuzzes pool recovery's parsers: `Pool::open` on damaged pool images must return an error or a
//! pool, never panic, and a refused open must leave both devices exactly as given (nothing
//! "repaired"). Input: byte 0 picks the mode; mode 0 treats the rest as a whole pool image, any
//! other mode applies the rest as 4-byte edits to a valid pool with committed and pending epochs,
//! persists, transient pages and capacity homes: 3 bytes of offset (the top bit picks the
//! capacity device instead of the pool) and the new byte.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vpm_abi::PAGE_SIZE;
use vpm_host::pm::sim::{SimClock, SimPm};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};

const SIZE: usize = 256 << 10;
const PAGE: usize = PAGE_SIZE as usize;

fn template() -> &'static (Vec<u8>, Vec<u8>) {
    static T: OnceLock<(Vec<u8>, Vec<u8>)> = OnceLock::new();
    T.get_or_init(|| {
        let pm = Arc::new(SimPm::new(SIZE as u64));
        let cap = Arc::new(SimPm::new(0));
        let cfg = PoolConfig { size: SIZE as u64, max_tenants: 2, meta_bytes: 64 << 10, pool_id: 3 };
        let mut pool = Pool::create(pm.clone(), cap.clone(), &cfg).unwrap();
        let t = pool
            .add_tenant(&TenantConfig {
                name: "f".into(),
                vpm_bytes: 4 * PAGE_SIZE,
                pm_quota_bytes: PAGE_SIZE,
                dram_budget_bytes: 0,
                log_bytes: 16 << 10,
            })
            .unwrap();
        let mut img = vec![0u8; 4 * PAGE];
        img[5] = 1;
        img[PAGE + 700] = 2;
        pool.commit_epoch(t, &[0, 1], &img).unwrap();
        pool.set_transient(t, 3, 1).unwrap();
        img[2 * PAGE] = 3;
        pool.persist(t, &[(2 * PAGE_SIZE, 64)], &img).unwrap();
        (pm.current(), cap.current())
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (mut pm_img, mut cap_img) = if mode == 0 {
        (rest.to_vec(), Vec::new())
    } else {
        template().clone()
    };
    if mode != 0 {
        for edit in rest.chunks_exact(4) {
            let off = u32::from_le_bytes([edit[0], edit[1], edit[2] & 0x7f, 0]) as usize;
            if edit[2] & 0x80 != 0 && !cap_img.is_empty() {
                let len = cap_img.len();
                cap_img[off % len] = edit[3];
            } else {
                pm_img[off % SIZE] = edit[3];
            }
        }
    }
    let clock = SimClock::default();
    let pm = Arc::new(SimPm::from_image(pm_img.clone(), clock.clone()));
    let cap = Arc::new(SimPm::from_image(cap_img.clone(), clock));
    if Pool::open(pm.clone(), cap.clone()).is_err() {
        assert!(pm.current() == pm_img, "a refused open changed the pool");
        assert!(cap.current() == cap_img, "a refused open changed the capacity device");
    }
});

//! Crash-point enumeration for the epoch commit protocol under the power-failure model: at every
//! operation boundary of a commit (and of a recovery), every combination of not-yet-durable line
//! contents, torn at 8-byte words (see `vpm_host::pm::sim`; exhaustive where there are at most
//! `EXHAUSTIVE` states, sampled above), must recover to exactly the old epoch's image or exactly
//! the new one, with the matching epoch number. The other pool operations are in
//! `crash_points_ops.rs`.
//!
//! Run with `--nocapture` to see how many crash points and states were checked.

mod common;

use common::{fill_line, image, Devices, Visited, EXHAUSTIVE, PAGE};
use rand::{Rng, SeedableRng};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};

const PAGES: u64 = 8;
const POOL: u64 = 192 << 10;

fn new_pool(d: &Devices) -> (Pool, u32) {
    let cfg = PoolConfig {
        size: POOL,
        max_tenants: 2,
        meta_bytes: 96 << 10,
        pool_id: 1,
    };
    let mut pool = Pool::create(d.pm.clone(), d.cap.clone(), &cfg).unwrap();
    let t = pool
        .add_tenant(&TenantConfig {
            name: "vm0".into(),
            vpm_bytes: PAGES * PAGE as u64,
            pm_quota_bytes: 2 * PAGE as u64,
            dram_budget_bytes: 0,
            log_bytes: 32 << 10,
        })
        .unwrap();
    (pool, t)
}

fn reopen(pm: Vec<u8>, cap: Vec<u8>) -> (Devices, Pool) {
    let d = Devices::from_images(pm, cap);
    let pool = d.open().expect("recovery").0;
    (d, pool)
}

/// Runs `commit` (which moves the pool from `old` to `new` at epoch `old_epoch + 1`) and checks
/// every crash state of it. Returns the crash points and states checked.
fn enumerate_commit(
    d: &Devices,
    pool: &mut Pool,
    t: u32,
    old: &[u8],
    new: &[u8],
    dirty: &[u64],
    seed: u64,
) -> Visited {
    let old_epoch = pool.tenant(t).unwrap().epoch();
    let (r, traces) = d.traced(|| pool.commit_epoch(t, dirty, new));
    r.unwrap();
    traces.for_each_state(seed, |at, pm, cap| {
        let (_d, pool) = reopen(pm, cap);
        let epoch = pool.tenant(t).unwrap().epoch();
        let img = image(&pool, t);
        if epoch == old_epoch {
            assert!(
                img == old,
                "crash at op {at}: epoch {epoch} but image is not the old one"
            );
        } else {
            assert_eq!(epoch, old_epoch + 1, "crash at op {at}: impossible epoch");
            assert!(
                img == new,
                "crash at op {at}: epoch {epoch} but image is not the new one"
            );
        }
    })
}

#[test]
fn every_crash_point_of_a_small_commit_recovers_old_or_new_exhaustively() {
    let d = Devices::new(POOL);
    let (mut pool, t) = new_pool(&d);
    let mut v1 = vec![0u8; PAGES as usize * PAGE];
    fill_line(&mut v1, 0, 0, 0x11);
    fill_line(&mut v1, 1, 5, 0x12);
    pool.commit_epoch(t, &[0, 1], &v1).unwrap();
    // Epoch 2: one changed line in a PM home, one new page (its home goes to the capacity file:
    // the quota is two PM pages and page 2 is the third).
    let mut v2 = v1.clone();
    fill_line(&mut v2, 0, 3, 0x21);
    fill_line(&mut v2, 2, 7, 0x22);
    let checked = enumerate_commit(&d, &mut pool, t, &v1, &v2, &[0, 2], 1);
    assert!(checked.states > 100, "too few states checked: {checked:?}");
    println!(
        "small commit: {} crash points, {} crash states checked (exhaustive up to {EXHAUSTIVE} \
         per point)",
        checked.points, checked.states
    );
}

#[test]
fn every_crash_point_of_larger_commits_recovers_old_or_new_sampled() {
    let d = Devices::new(POOL);
    let (mut pool, t) = new_pool(&d);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cur = vec![0u8; PAGES as usize * PAGE];
    let mut total = Visited::default();
    for round in 0..3 {
        let old = cur.clone();
        let dirty: Vec<u64> = (0..PAGES).filter(|_| rng.random_bool(0.6)).collect();
        for &vpn in &dirty {
            for line in 0..64 {
                if rng.random_bool(0.3) {
                    fill_line(&mut cur, vpn as usize, line, rng.random());
                }
            }
        }
        total += enumerate_commit(&d, &mut pool, t, &old, &cur, &dirty, round);
    }
    println!(
        "larger commits: {} crash points, {} crash states checked (sampled)",
        total.points, total.states
    );
}

#[test]
fn a_crash_during_recovery_recovers_again() {
    let d = Devices::new(POOL);
    let (mut pool, t) = new_pool(&d);
    let mut base = vec![0u8; PAGES as usize * PAGE];
    for vpn in 0..4 {
        fill_line(&mut base, vpn, 0, 0x10 + vpn as u8);
    }
    pool.commit_epoch(t, &[0, 1, 2, 3], &base).unwrap();
    // Few changed lines per page: the epoch goes through the line log, so replay writes data.
    let mut new = base.clone();
    for vpn in 0..4 {
        fill_line(&mut new, vpn, vpn * 3 + 1, 0x30 + vpn as u8);
        fill_line(&mut new, vpn, 40, 0x40 + vpn as u8);
    }
    let (r, traces) = d.traced(|| pool.commit_epoch(t, &[0, 1, 2, 3], &new));
    r.unwrap();
    // Find the first crash point whose durable state is "committed, not applied".
    let crash = (traces.start..=traces.end)
        .map(|at| traces.crash(at, 0))
        .find(|c| {
            let dev = Devices::from_images(c.pm.pessimistic(), c.cap.pessimistic());
            let (_, report) = dev.open().unwrap();
            report.tenants[0].replayed_records > 0
        })
        .expect("some crash point needs a redo-log replay");
    let d2 = Devices::from_images(crash.pm.pessimistic(), crash.cap.pessimistic());
    let (pool2, traces) = d2.traced(|| d2.open().expect("recovery").0);
    assert_eq!(image(&pool2, t), new);
    let checked = traces.for_each_state(3, |at, pm, cap| {
        let (_d, pool) = reopen(pm, cap);
        assert_eq!(pool.tenant(t).unwrap().epoch(), 2);
        assert!(
            image(&pool, t) == new,
            "crash at recovery op {at} lost the committed epoch"
        );
    });
    println!(
        "crash during recovery: {} crash points, {} crash states checked",
        checked.points, checked.states
    );
}

//! Crash-point enumeration for the epoch commit protocol under the power-failure model: at every
//! operation boundary of a commit (and of a recovery), every combination of not-yet-durable line
//! versions (exhaustive where there are at most `EXHAUSTIVE` states, sampled above) must recover
//! to exactly the old epoch's image or exactly the new one, with the matching epoch number.
//!
//! Run with `--nocapture` to see how many crash states were checked.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use vpm_host::pm::sim::{CrashSpace, SimClock, SimOp, SimPm};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};

const PAGE: usize = vpm_abi::PAGE_SIZE as usize;
const PAGES: u64 = 8;
const POOL: u64 = 192 << 10;
const EXHAUSTIVE: u128 = 4096;
const SAMPLES: usize = 16;

struct Devices {
    pm: Arc<SimPm>,
    cap: Arc<SimPm>,
}

impl Devices {
    fn new() -> Devices {
        let clock = SimClock::default();
        Devices {
            pm: Arc::new(SimPm::from_image(vec![0; POOL as usize], clock.clone())),
            cap: Arc::new(SimPm::from_image(Vec::new(), clock)),
        }
    }

    fn open(&self) -> Pool {
        Pool::open(self.pm.clone(), self.cap.clone())
            .expect("recovery")
            .0
    }

    fn start_trace(&self) {
        self.pm.start_trace();
        self.cap.start_trace();
    }
}

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

fn image(pool: &Pool, t: u32) -> Vec<u8> {
    let mut img = vec![0u8; PAGES as usize * PAGE];
    for vpn in 0..PAGES {
        pool.read_home(t, vpn, &mut img[vpn as usize * PAGE..][..PAGE])
            .unwrap();
    }
    img
}

fn fill_line(img: &mut [u8], vpn: usize, line: usize, v: u8) {
    img[vpn * PAGE + line * 64..][..64].fill(v);
}

/// Both devices' crash spaces at global point `at`.
struct Crash {
    pm: CrashSpace,
    cap: CrashSpace,
}

impl Crash {
    fn at(pm: &(Vec<u8>, Vec<SimOp>), cap: &(Vec<u8>, Vec<SimOp>), at: u64) -> Crash {
        Crash {
            pm: CrashSpace::at(&pm.0, &pm.1, at),
            cap: CrashSpace::at(&cap.0, &cap.1, at),
        }
    }

    fn count(&self) -> u128 {
        self.pm.count().saturating_mul(self.cap.count())
    }

    /// Calls `f` with (pm image, cap image) for every state, or a sample; returns states visited.
    fn visit(&self, rng: &mut impl Rng, mut f: impl FnMut(Vec<u8>, Vec<u8>)) -> u64 {
        if self.count() <= EXHAUSTIVE {
            let mut n = 0;
            self.pm.for_each_choice(|a| {
                self.cap.for_each_choice(|b| {
                    f(self.pm.image(a), self.cap.image(b));
                    n += 1;
                    true
                });
                true
            });
            return n;
        }
        f(self.pm.pessimistic(), self.cap.pessimistic());
        for _ in 0..SAMPLES {
            let a = self.pm.random_choice(|n| rng.random_range(0..n));
            let b = self.cap.random_choice(|n| rng.random_range(0..n));
            f(self.pm.image(&a), self.cap.image(&b));
        }
        SAMPLES as u64 + 1
    }
}

fn reopen(pm: Vec<u8>, cap: Vec<u8>) -> (Devices, Pool) {
    let clock = SimClock::default();
    let d = Devices {
        pm: Arc::new(SimPm::from_image(pm, clock.clone())),
        cap: Arc::new(SimPm::from_image(cap, clock)),
    };
    let pool = d.open();
    (d, pool)
}

/// Runs `commit` (which moves the pool from `old` to `new` at epoch `old_epoch + 1`) and checks
/// every crash state of it. Returns the number of states checked.
fn enumerate_commit(
    d: &Devices,
    pool: &mut Pool,
    t: u32,
    old: &[u8],
    new: &[u8],
    dirty: &[u64],
    seed: u64,
) -> u64 {
    let old_epoch = pool.tenant(t).unwrap().epoch();
    d.start_trace();
    let start = d.pm.clock().now();
    pool.commit_epoch(t, dirty, new).unwrap();
    let end = d.pm.clock().now();
    let (pm_trace, cap_trace) = (d.pm.trace(), d.cap.trace());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut checked = 0;
    for at in start..=end {
        let crash = Crash::at(&pm_trace, &cap_trace, at);
        checked += crash.visit(&mut rng, |pm, cap| {
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
        });
    }
    checked
}

#[test]
fn every_crash_point_of_a_small_commit_recovers_old_or_new_exhaustively() {
    let d = Devices::new();
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
    assert!(checked > 100, "too few states checked: {checked}");
    println!(
        "small commit: {checked} crash states checked (exhaustive up to {EXHAUSTIVE} per point)"
    );
}

#[test]
fn every_crash_point_of_larger_commits_recovers_old_or_new_sampled() {
    let d = Devices::new();
    let (mut pool, t) = new_pool(&d);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut cur = vec![0u8; PAGES as usize * PAGE];
    let mut total = 0;
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
    println!("larger commits: {total} crash states checked (sampled)");
}

#[test]
fn a_crash_during_recovery_recovers_again() {
    let d = Devices::new();
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
    d.start_trace();
    pool.commit_epoch(t, &[0, 1, 2, 3], &new).unwrap();
    // Find the first crash point whose durable state is "committed, not applied".
    let (pm_trace, cap_trace) = (d.pm.trace(), d.cap.trace());
    let end = d.pm.clock().now();
    let mut needing_replay = None;
    for at in 0..=end {
        let c = Crash::at(&pm_trace, &cap_trace, at);
        let dev = Devices {
            pm: Arc::new(SimPm::from_image(c.pm.pessimistic(), SimClock::default())),
            cap: Arc::new(SimPm::from_image(c.cap.pessimistic(), SimClock::default())),
        };
        let (_, report) = Pool::open(dev.pm.clone(), dev.cap.clone()).unwrap();
        if report.tenants[0].replayed_records > 0 {
            needing_replay = Some(c);
            break;
        }
    }
    let crash = needing_replay.expect("some crash point needs a redo-log replay");
    let clock = SimClock::default();
    let d2 = Devices {
        pm: Arc::new(SimPm::from_image(crash.pm.pessimistic(), clock.clone())),
        cap: Arc::new(SimPm::from_image(crash.cap.pessimistic(), clock)),
    };
    d2.start_trace();
    let start = d2.pm.clock().now();
    let pool2 = d2.open();
    assert_eq!(image(&pool2, t), new);
    let end = d2.pm.clock().now();
    let (pm_trace, cap_trace) = (d2.pm.trace(), d2.cap.trace());
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut checked = 0;
    for at in start..=end {
        checked += Crash::at(&pm_trace, &cap_trace, at).visit(&mut rng, |pm, cap| {
            let (_d, pool) = reopen(pm, cap);
            assert_eq!(pool.tenant(t).unwrap().epoch(), 2);
            assert!(
                image(&pool, t) == new,
                "crash at recovery op {at} lost the committed epoch"
            );
        });
    }
    println!("crash during recovery: {checked} crash states checked");
}

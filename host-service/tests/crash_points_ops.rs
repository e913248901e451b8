//! Crash-point enumeration for the pool operations other than the epoch commit: persist (P1, P2),
//! transient marks (P3), adding and removing a tenant, creating a pool, and giving every page a
//! home (the direct modes). At every operation
//! boundary, every crash state (exhaustive where there are at most `EXHAUSTIVE`, sampled above;
//! 8-byte tearing per the simulator) is recovered and compared with a witness the test keeps:
//! what it wrote, never what the recovered pool says about itself.
//!
//! Run with `--nocapture` to see how many crash points and states were checked.

mod common;

use common::{fill_line, image, pool_config, tenant_config, Devices, Visited, LINE, PAGE};
use rand::{Rng, SeedableRng};
use vpm_host::pool::{Home, Pool, PoolError};

const POOL: u64 = 80 << 10;
const PAGES: u64 = 8;

/// Fills `len` bytes at byte `off` of `img` with random non-zero bytes.
fn scribble(img: &mut [u8], off: usize, len: usize, rng: &mut impl Rng) {
    for b in &mut img[off..off + len] {
        *b = rng.random_range(1..=255);
    }
}

/// The guest's contents over a run of persists, and which bytes were acknowledged when.
struct PersistWitness {
    /// `versions[0]` is the last committed epoch; `versions[k]` the guest image persisted by
    /// batch k.
    versions: Vec<Vec<u8>>,
    /// Per byte: the first batch that acknowledged it.
    acked: Vec<Option<usize>>,
}

impl PersistWitness {
    /// Checks a recovered image taken while batch `batch` ran (`done`: after it returned).
    fn check(&self, img: &[u8], batch: usize, done: bool, at: u64) {
        let allowed = &self.versions[..=batch];
        for (w, word) in img.chunks_exact(8).enumerate() {
            let r = w * 8..w * 8 + 8;
            assert!(
                allowed.iter().any(|v| v[r.clone()] == *word),
                "batch {batch}, crash at {at}: word at {:#x} is {word:?}, none of the guest's \
                 contents (P2)",
                w * 8
            );
        }
        for (i, &b) in img.iter().enumerate() {
            let Some(k) = self.acked[i] else { continue };
            if k > batch || (k == batch && !done) {
                continue;
            }
            assert!(
                self.versions[k..=batch].iter().any(|v| v[i] == b),
                "batch {batch}, crash at {at}: byte {i:#x} acknowledged by batch {k} lost (P1)"
            );
        }
    }
}

#[test]
fn persist_keeps_acknowledged_ranges_exact_and_the_rest_per_word() {
    let d = Devices::new(POOL);
    let mut pool = Pool::create(d.pm.clone(), d.cap.clone(), &pool_config(POOL, 2)).unwrap();
    // Quota of two PM pages: pages 0 and 1 get PM homes, page 2 a capacity home, the others none.
    let t = pool.add_tenant(&tenant_config("vm0", PAGES, 2)).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut committed = vec![0u8; PAGES as usize * PAGE];
    for vpn in 0..3 {
        scribble(&mut committed, vpn * PAGE, PAGE, &mut rng);
    }
    pool.commit_epoch(t, &[0, 1, 2], &committed).unwrap();
    // Epoch 2 changes a few lines of pages 0 and 1, which the persists below overwrite: its redo
    // log (line records with payload) must never be replayed over them.
    for (vpn, line) in [(0, 1), (0, 2), (0, 6), (1, 0), (1, 40)] {
        scribble(&mut committed, vpn * PAGE + line * LINE, LINE, &mut rng);
    }
    let stats = pool.commit_epoch(t, &[0, 1], &committed).unwrap();
    assert_eq!(stats.changed_lines, 5, "epoch 2 goes through the line log");
    let mut w = PersistWitness {
        versions: vec![committed.clone()],
        acked: vec![None; committed.len()],
    };
    // Byte ranges (offset, len) persisted by each batch; the guest also changes bytes it does
    // not persist (P2 only for those).
    let p = PAGE as u64;
    let batches: [&[(u64, u64)]; 3] = [
        &[(74, 100), (p, p), (2 * p + 320, 8), (3 * p + 200, 300)],
        &[
            (124, 300),
            (4 * p, 64),
            (5 * p + 1000, 2000),
            (2 * p + 10, 30),
        ],
        &[(0, 2 * p), (3 * p + 4000, 96)],
    ];
    let mut total = Visited::default();
    for (k, ranges) in batches.iter().enumerate() {
        let batch = k + 1;
        let mut cur = w.versions[batch - 1].clone();
        for &(off, len) in *ranges {
            scribble(&mut cur, off as usize, len as usize, &mut rng);
        }
        // Unpersisted changes: some lines in pages that are persisted and some that are not.
        scribble(&mut cur, 40 * LINE, 2 * LINE, &mut rng);
        scribble(&mut cur, 6 * PAGE + 3 * LINE, LINE, &mut rng);
        w.versions.push(cur.clone());
        let (r, traces) = d.traced(|| pool.persist(t, ranges, &cur));
        r.unwrap();
        for &(off, len) in *ranges {
            for a in &mut w.acked[off as usize..(off + len) as usize] {
                a.get_or_insert(batch);
            }
        }
        let end = traces.end;
        total += traces.for_each_state(batch as u64, |at, pm, cap| {
            let d2 = Devices::from_images(pm, cap);
            let (pool2, _) = d2.open().expect("recovery");
            assert_eq!(pool2.tenant(t).unwrap().epoch(), 2, "crash at {at}");
            w.check(&image(&pool2, t), batch, at == end, at);
        });
    }
    println!(
        "persist: {} crash points, {} crash states checked",
        total.points, total.states
    );
}

/// Recovers the pool from a crash state and checks tenant `t`: its epoch is one of `epochs`,
/// pages in `zero` read zeros and have no home, and every other word is as in one of `allowed`;
/// no line of transient content (0xee) is anywhere in either device.
fn check_transient(
    (pm, cap): (Vec<u8>, Vec<u8>),
    t: u32,
    epochs: &[u64],
    zero: &[u64],
    allowed: &[&[u8]],
    at: u64,
) {
    for (name, img) in [("pool", &pm), ("capacity file", &cap)] {
        assert!(
            !img.chunks_exact(LINE).any(|l| l.iter().all(|&b| b == 0xee)),
            "crash at {at}: transient content reached the {name}"
        );
    }
    let d = Devices::from_images(pm, cap);
    let (pool, _) = d.open().expect("recovery");
    let epoch = pool.tenant(t).unwrap().epoch();
    assert!(epochs.contains(&epoch), "crash at {at}: epoch {epoch}");
    let img = image(&pool, t);
    for vpn in zero {
        let vpn = *vpn as usize;
        let got = &img[vpn * PAGE..][..PAGE];
        assert!(
            got.iter().all(|&b| b == 0),
            "crash at {at}: page {vpn} not zero"
        );
        assert!(
            matches!(
                pool.tenant(t).unwrap().home(vpn as u64),
                Home::Transient | Home::None
            ),
            "crash at {at}: transient page {vpn} has a home"
        );
    }
    for (w, word) in img.chunks_exact(8).enumerate() {
        let r = w * 8..w * 8 + 8;
        assert!(
            allowed.iter().any(|a| a[r.clone()] == *word),
            "crash at {at}: word at {:#x} is none of the allowed contents",
            w * 8
        );
    }
}

#[test]
fn transient_pages_read_zero_and_never_reach_pm() {
    let d = Devices::new(POOL);
    let mut pool = Pool::create(d.pm.clone(), d.cap.clone(), &pool_config(POOL, 2)).unwrap();
    let t = pool.add_tenant(&tenant_config("vm0", PAGES, 2)).unwrap();
    let mut committed = vec![0u8; PAGES as usize * PAGE];
    for vpn in 0..4 {
        for line in [0, 7, 63] {
            fill_line(&mut committed, vpn, line, 0x10 + vpn as u8);
        }
    }
    pool.commit_epoch(t, &[0, 1, 2, 3], &committed).unwrap();
    let mut total = Visited::default();

    // Pages 1 (PM home) and 2 (capacity home) become transient: each reads as its committed
    // content or zeros while the marks are made, zeros once they are.
    let (r, tr) = d.traced(|| pool.set_transient(t, 1, 2));
    assert_eq!(r.unwrap(), 2);
    let mut without: Vec<u8> = committed.clone();
    without[PAGE..3 * PAGE].fill(0);
    total += tr.for_each_state(1, |at, pm, cap| {
        let zero: &[u64] = if at == tr.end { &[1, 2] } else { &[] };
        check_transient((pm, cap), t, &[1], zero, &[&committed, &without], at);
    });

    // The guest writes the transient pages and page 0; a persist and an epoch cover all three.
    let mut cur = committed.clone();
    for line in 0..64 {
        fill_line(&mut cur, 1, line, 0xee);
        fill_line(&mut cur, 2, line, 0xee);
    }
    fill_line(&mut cur, 0, 9, 0x51);
    let mut after = without.clone();
    fill_line(&mut after, 0, 9, 0x51);
    let p = PAGE as u64;
    let (r, tr) = d.traced(|| pool.persist(t, &[(0, 3 * p)], &cur));
    r.unwrap();
    total += tr.for_each_state(2, |at, pm, cap| {
        check_transient((pm, cap), t, &[1], &[1, 2], &[&without, &after], at);
    });
    let (r, tr) = d.traced(|| pool.commit_epoch(t, &[0, 1, 2], &cur));
    r.unwrap();
    // Epoch 2 commits page 0's line too, which the persist already made durable: the image is
    // the same whichever epoch recovery finds.
    total += tr.for_each_state(3, |at, pm, cap| {
        check_transient((pm, cap), t, &[1, 2], &[1, 2], &[&after], at);
    });

    // Page 1 persistent again: it has no home (zeros) until persisted; then P1 applies.
    let (r, tr) = d.traced(|| pool.set_persistent(t, 1, 1));
    assert_eq!(r.unwrap(), 1);
    total += tr.for_each_state(4, |at, pm, cap| {
        let d2 = Devices::from_images(pm, cap);
        let (pool2, _) = d2.open().unwrap();
        assert!(image(&pool2, t) == after, "crash at {at}");
        let home = pool2.tenant(t).unwrap().home(1);
        if at == tr.end {
            assert_eq!(home, Home::None, "crash at {at}");
        }
        assert_eq!(pool2.tenant(t).unwrap().home(2), Home::Transient);
    });
    // Marking persistent pages that are not transient (page 0 has a home, page 1 none yet) is a
    // successful no-op at every crash point: vpm.ko's block device sends it for every page's
    // first flush after load, not knowing which pages earlier boots discarded.
    let home0 = pool.tenant(t).unwrap().home(0);
    let (r, tr) = d.traced(|| pool.set_persistent(t, 0, 2));
    assert_eq!(r.unwrap(), 0);
    assert_eq!(pool.tenant(t).unwrap().home(0), home0);
    assert_eq!(pool.tenant(t).unwrap().home(1), Home::None);
    total += tr.for_each_state(40, |at, pm, cap| {
        let (pool2, _) = Devices::from_images(pm, cap).open().unwrap();
        assert!(image(&pool2, t) == after, "crash at {at}");
        assert_eq!(pool2.tenant(t).unwrap().home(0), home0, "crash at {at}");
    });
    let mut cur2 = cur.clone();
    fill_line(&mut cur2, 1, 0, 0x61);
    fill_line(&mut cur2, 2, 0, 0x62);
    let (r, tr) = d.traced(|| pool.persist(t, &[(p, 64), (2 * p, 64)], &cur2));
    r.unwrap();
    total += tr.for_each_state(5, |at, pm, cap| {
        let d2 = Devices::from_images(pm, cap);
        let (pool2, _) = d2.open().unwrap();
        let img = image(&pool2, t);
        assert!(
            img[2 * PAGE..3 * PAGE].iter().all(|&b| b == 0),
            "crash at {at}"
        );
        let page1 = &img[PAGE..2 * PAGE];
        if at == tr.end {
            assert!(
                page1 == &cur2[PAGE..2 * PAGE],
                "crash at {at}: persist lost"
            );
        } else {
            // No home yet (zeros) or the new home: its whole page, written before the map word.
            let ok = page1.iter().all(|&b| b == 0) || page1 == &cur2[PAGE..2 * PAGE];
            assert!(ok, "crash at {at}: page 1 is neither zero nor persisted");
        }
    });
    println!(
        "transient: {} crash points, {} crash states checked",
        total.points, total.states
    );
}

/// What the test knows of a tenant: name, epoch and durable image.
struct TenantWitness {
    name: &'static str,
    epoch: u64,
    image: Vec<u8>,
}

/// Checks a recovered pool against witnesses: each of `present` exists with its epoch and image,
/// each of `maybe` either exists exactly so or does not exist at all, and no other tenant exists.
/// Returns how many of them exist.
fn check_tenants(
    pool: &Pool,
    present: &[&TenantWitness],
    maybe: &[&TenantWitness],
    at: u64,
) -> usize {
    let mut found = 0;
    for (w, required) in present
        .iter()
        .map(|w| (w, true))
        .chain(maybe.iter().map(|w| (w, false)))
    {
        let Some(id) = pool.tenant_by_name(w.name) else {
            assert!(!required, "crash at {at}: tenant {} vanished", w.name);
            continue;
        };
        found += 1;
        let t = pool.tenant(id).unwrap();
        assert_eq!(t.epoch(), w.epoch, "crash at {at}: tenant {} epoch", w.name);
        assert!(
            image(pool, id) == w.image,
            "crash at {at}: tenant {} image differs",
            w.name
        );
    }
    assert_eq!(
        pool.tenant_ids().len(),
        found,
        "crash at {at}: a tenant nobody added"
    );
    found
}

#[test]
fn adding_and_removing_tenants_is_all_or_nothing_and_leaves_others_alone() {
    let d = Devices::new(POOL);
    let mut pool = Pool::create(d.pm.clone(), d.cap.clone(), &pool_config(POOL, 3)).unwrap();
    let a = pool.add_tenant(&tenant_config("a", 4, 2)).unwrap();
    let mut a_img = vec![0u8; 4 * PAGE];
    for vpn in 0..3 {
        fill_line(&mut a_img, vpn, vpn * 5, 0xa0 + vpn as u8);
    }
    pool.commit_epoch(a, &[0, 1, 2], &a_img).unwrap();
    fill_line(&mut a_img, 1, 33, 0xaa);
    pool.commit_epoch(a, &[1], &a_img).unwrap();
    let wa = TenantWitness {
        name: "a",
        epoch: 2,
        image: a_img,
    };
    let a_meta = pool.tenant(a).unwrap().desc().meta_range();
    let a_meta = a_meta.0 as usize..a_meta.1 as usize;
    let a_raw = d.pm.current()[a_meta.clone()].to_vec();
    let mut total = Visited::default();
    let check = |tr: &common::Traces,
                 seed: u64,
                 maybe: &TenantWitness,
                 end_present: bool,
                 total: &mut Visited| {
        *total += tr.for_each_state(seed, |at, pm, cap| {
            assert!(
                pm[a_meta.clone()] == a_raw[..],
                "crash at {at}: tenant a's metadata changed"
            );
            let (pool2, _) = Devices::from_images(pm, cap).open().expect("recovery");
            let found = if at == tr.end && end_present {
                check_tenants(&pool2, &[&wa, maybe], &[], at)
            } else if at == tr.end {
                check_tenants(&pool2, &[&wa], &[], at)
            } else {
                check_tenants(&pool2, &[&wa], &[maybe], at)
            };
            assert!(found >= 1);
        });
    };

    let zero_b = TenantWitness {
        name: "b",
        epoch: 0,
        image: vec![0u8; 4 * PAGE],
    };
    let (b, tr) = d.traced(|| pool.add_tenant(&tenant_config("b", 4, 2)));
    let b = b.unwrap();
    check(&tr, 1, &zero_b, true, &mut total);

    // b gets content (two PM homes, one capacity home), then is removed.
    let mut b_img = vec![0u8; 4 * PAGE];
    for vpn in 0..4 {
        fill_line(&mut b_img, vpn, 2 + vpn, 0xb0 + vpn as u8);
    }
    pool.commit_epoch(b, &[0, 1, 2, 3], &b_img).unwrap();
    let wb = TenantWitness {
        name: "b",
        epoch: 1,
        image: b_img,
    };
    let (r, tr) = d.traced(|| pool.remove_tenant(b));
    r.unwrap();
    check(&tr, 2, &wb, false, &mut total);

    // c takes b's slot and metadata region, where b's commit records and page map still are.
    let zero_c = TenantWitness {
        name: "c",
        epoch: 0,
        image: vec![0u8; 4 * PAGE],
    };
    let (c, tr) = d.traced(|| pool.add_tenant(&tenant_config("c", 4, 2)));
    let c = c.unwrap();
    assert_eq!(c, b, "c reuses b's slot");
    check(&tr, 3, &zero_c, true, &mut total);
    println!(
        "tenants: {} crash points, {} crash states checked",
        total.points, total.states
    );
}

/// A recovered pool is either refused as "not a pool"/"corrupt" or opens complete: the new
/// pool (id `new_id`, no tenants, usable) or, when the device held one, the old pool intact.
fn check_created(
    pm: Vec<u8>,
    cap: Vec<u8>,
    new_id: u64,
    old: Option<(u64, &TenantWitness)>,
    at: u64,
) {
    let d = Devices::from_images(pm, cap);
    match d.open() {
        Err(e @ (PoolError::NotAPool(_) | PoolError::Corrupt(_))) => {
            let msg = e.to_string();
            assert!(
                msg.contains("not a VPM pool") || msg.contains("corrupt pool"),
                "crash at {at}: unclear refusal: {msg}"
            );
        }
        Err(e) => panic!("crash at {at}: unexpected error {e}"),
        Ok((mut pool, _)) if pool.header().pool_id == new_id => {
            assert!(
                pool.tenant_ids().is_empty(),
                "crash at {at}: new pool has tenants"
            );
            let t = pool.add_tenant(&tenant_config("n", 2, 1)).unwrap();
            let mut img = vec![0u8; 2 * PAGE];
            fill_line(&mut img, 1, 4, 0x77);
            pool.commit_epoch(t, &[1], &img).unwrap();
            drop(pool);
            let (pool, _) = d.open().expect("reopen the new pool");
            assert!(
                image(&pool, t) == img,
                "crash at {at}: new pool lost an epoch"
            );
        }
        Ok((pool, _)) => {
            let (old_id, w) = old.unwrap_or_else(|| panic!("crash at {at}: a pool nobody made"));
            assert_eq!(pool.header().pool_id, old_id, "crash at {at}");
            check_tenants(&pool, &[w], &[], at);
        }
    }
}

#[test]
fn a_crash_while_creating_a_pool_leaves_no_pool_or_a_complete_one() {
    let mut total = Visited::default();
    // On a zeroed device.
    let d = Devices::new(POOL);
    let mut cfg = pool_config(POOL, 2);
    cfg.pool_id = 21;
    let (r, tr) = d.traced(|| Pool::create(d.pm.clone(), d.cap.clone(), &cfg));
    r.unwrap();
    total += tr.for_each_state(1, |at, pm, cap| {
        if at == tr.end {
            let (pool, _) = Devices::from_images(pm.clone(), cap.clone())
                .open()
                .expect("created pool opens");
            assert_eq!(pool.header().pool_id, 21);
        }
        check_created(pm, cap, 21, None, at);
    });

    // Over an old pool with a tenant, with another geometry.
    let d = Devices::new(POOL);
    let mut old_cfg = pool_config(POOL, 3);
    old_cfg.pool_id = 9;
    let mut old = Pool::create(d.pm.clone(), d.cap.clone(), &old_cfg).unwrap();
    let t = old.add_tenant(&tenant_config("old", 4, 1)).unwrap();
    let mut img = vec![0u8; 4 * PAGE];
    for vpn in 0..4 {
        fill_line(&mut img, vpn, 1, 0x90 + vpn as u8);
    }
    old.commit_epoch(t, &[0, 1, 2, 3], &img).unwrap();
    drop(old);
    let w = TenantWitness {
        name: "old",
        epoch: 1,
        image: img,
    };
    let mut cfg = pool_config(POOL, 40);
    cfg.pool_id = 22;
    let (r, tr) = d.traced(|| Pool::create(d.pm.clone(), d.cap.clone(), &cfg));
    r.unwrap();
    total += tr.for_each_state(2, |at, pm, cap| {
        check_created(pm, cap, 22, Some((9, &w)), at);
    });
    println!(
        "create: {} crash points, {} crash states checked",
        total.points, total.states
    );
}

#[test]
fn giving_every_page_a_home_never_changes_the_image() {
    let d = Devices::new(POOL);
    let mut pool = Pool::create(d.pm.clone(), d.cap.clone(), &pool_config(POOL, 2)).unwrap();
    let t = pool.add_tenant(&tenant_config("vm0", PAGES, 3)).unwrap();
    let mut committed = vec![0u8; PAGES as usize * PAGE];
    for vpn in 0..3 {
        for line in 0..64 {
            fill_line(&mut committed, vpn, line, 0x40 + vpn as u8);
        }
    }
    pool.commit_epoch(t, &[0, 1, 2], &committed).unwrap();
    // Page 1's home (full of 0x41) is freed: the next home handed out may be that slot.
    pool.set_transient(t, 1, 1).unwrap();
    committed[PAGE..2 * PAGE].fill(0);
    let (r, tr) = d.traced(|| pool.ensure_homes(t));
    r.unwrap();
    let total = tr.for_each_state(1, |at, pm, cap| {
        let (pool2, _) = Devices::from_images(pm, cap).open().expect("recovery");
        assert_eq!(pool2.tenant(t).unwrap().epoch(), 1, "crash at {at}");
        assert!(
            image(&pool2, t) == committed,
            "crash at {at}: giving pages homes changed the image"
        );
        if at == tr.end {
            let t2 = pool2.tenant(t).unwrap();
            assert!(
                (0..PAGES).all(|vpn| matches!(t2.home(vpn), Home::Pm(_) | Home::Capacity(_))),
                "crash at {at}: a page without a home"
            );
        }
    });
    println!(
        "ensure homes: {} crash points, {} crash states checked",
        total.points, total.states
    );
}

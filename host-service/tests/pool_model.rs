//! Model-based property test of the PM core: random guest writes, persists, transient marks,
//! epochs and crashes (at any device operation of the last host operation, with not-yet-durable
//! lines dropped at random) on several tenants of one pool. After every crash the recovered vPM
//! images must satisfy the contract (docs/semantics.md) against a reference model:
//! - F1 (tenant 0, full virtualization): exactly the image of the recovered epoch, which is the
//!   last acknowledged one (or the one being committed when the crash came);
//! - P1/P2 (tenants 1 and 2, para-virtual): every 8-byte word holds its value as of the last
//!   durable event of its line (epoch, acknowledged persist, mark) or a value written after;
//! - P3: pages marked transient read as zeros.
//!
//! Guest writes fill a whole line with one unique 64-bit value, so each word names the write it
//! came from.

use std::collections::BTreeSet;
use std::sync::Arc;

use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use vpm_host::pm::sim::{CrashSpace, SimClock, SimPm};
use vpm_host::pool::Home;
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};

const PAGE: usize = vpm_abi::PAGE_SIZE as usize;
const PAGES: u64 = 6;
const TENANTS: usize = 3;
const FULL: usize = 0;

#[derive(Clone, Debug)]
enum Op {
    Write {
        t: usize,
        vpn: u64,
        line: usize,
    },
    Persist {
        t: usize,
        vpn: u64,
        line: usize,
        lines: usize,
    },
    Transient {
        t: usize,
        vpn: u64,
    },
    Persistent {
        t: usize,
        vpn: u64,
    },
    Epoch {
        t: usize,
    },
    Crash {
        fraction: f64,
        seed: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let t = 0..TENANTS;
    let pv = 1..TENANTS;
    let vpn = 0..PAGES;
    prop_oneof![
        8 => (t.clone(), vpn.clone(), 0..64usize).prop_map(|(t, vpn, line)| Op::Write { t, vpn, line }),
        3 => (pv.clone(), vpn.clone(), 0..64usize, 1..80usize)
            .prop_map(|(t, vpn, line, lines)| Op::Persist { t, vpn, line, lines }),
        1 => (pv.clone(), vpn.clone()).prop_map(|(t, vpn)| Op::Transient { t, vpn }),
        1 => (pv, vpn).prop_map(|(t, vpn)| Op::Persistent { t, vpn }),
        2 => t.prop_map(|t| Op::Epoch { t }),
        1 => (0.0..=1.0f64, any::<u64>()).prop_map(|(fraction, seed)| Op::Crash { fraction, seed }),
    ]
}

/// What may be in one line after a crash.
#[derive(Clone, Debug, Default)]
struct LineModel {
    /// Per word: the value as of the line's last durable event.
    anchor: [u64; 8],
    /// Values written to the line after that event.
    since: Vec<u64>,
}

#[derive(Clone, Debug)]
struct TenantModel {
    mem: Vec<u8>,
    lines: Vec<LineModel>,
    transient: BTreeSet<u64>,
    dirty: BTreeSet<u64>,
    epoch: u64,
}

impl TenantModel {
    fn new() -> TenantModel {
        TenantModel {
            mem: vec![0; PAGES as usize * PAGE],
            lines: vec![LineModel::default(); PAGES as usize * 64],
            transient: BTreeSet::new(),
            dirty: BTreeSet::new(),
            epoch: 0,
        }
    }

    fn word(&self, line: usize, w: usize) -> u64 {
        u64::from_le_bytes(self.mem[line * 64 + w * 8..][..8].try_into().unwrap())
    }

    /// The line's current content becomes its durable anchor.
    fn settle(&mut self, line: usize) {
        let words: Vec<u64> = (0..8).map(|w| self.word(line, w)).collect();
        let l = &mut self.lines[line];
        l.anchor.copy_from_slice(&words);
        l.since.clear();
    }

    fn write(&mut self, vpn: u64, line: usize, v: u64) {
        let idx = vpn as usize * 64 + line;
        for w in 0..8 {
            self.mem[idx * 64 + w * 8..][..8].copy_from_slice(&v.to_le_bytes());
        }
        self.lines[idx].since.push(v);
        self.dirty.insert(vpn);
    }

    fn committed(&mut self) {
        for vpn in std::mem::take(&mut self.dirty) {
            if !self.transient.contains(&vpn) {
                (0..64).for_each(|l| self.settle(vpn as usize * 64 + l));
            }
        }
        self.epoch += 1;
    }

    /// Whether `img` is an allowed recovered image; `strict` = F1 (exact epoch image).
    fn allows(&self, img: &[u8], strict: bool) -> Result<(), String> {
        for (idx, l) in self.lines.iter().enumerate() {
            let vpn = (idx / 64) as u64;
            for w in 0..8 {
                let got = u64::from_le_bytes(img[idx * 64 + w * 8..][..8].try_into().unwrap());
                let ok = if self.transient.contains(&vpn) {
                    got == 0
                } else if strict {
                    got == l.anchor[w]
                } else {
                    got == l.anchor[w] || l.since.contains(&got)
                };
                if !ok {
                    return Err(format!(
                        "page {vpn} line {} word {w}: {got:#x}, anchor {:#x}, since {:?}, transient {}",
                        idx % 64,
                        l.anchor[w],
                        l.since,
                        self.transient.contains(&vpn)
                    ));
                }
            }
        }
        Ok(())
    }

    /// The guest restarts on the recovered image: everything in it is durable.
    fn restart(&mut self, img: Vec<u8>, epoch: u64, transient: BTreeSet<u64>) {
        self.mem = img;
        self.transient = transient;
        for line in 0..self.lines.len() {
            self.settle(line);
        }
        self.dirty.clear();
        self.epoch = epoch;
    }
}

struct World {
    pm: Arc<SimPm>,
    cap: Arc<SimPm>,
    pool: Pool,
    ids: Vec<u32>,
}

impl World {
    fn new() -> World {
        let clock = SimClock::default();
        let pm = Arc::new(SimPm::from_image(vec![0; 1 << 20], clock.clone()));
        let cap = Arc::new(SimPm::from_image(Vec::new(), clock));
        let cfg = PoolConfig {
            size: 1 << 20,
            max_tenants: 4,
            meta_bytes: 256 << 10,
            pool_id: 9,
        };
        let mut pool = Pool::create(pm.clone(), cap.clone(), &cfg).unwrap();
        let ids = (0..TENANTS)
            .map(|i| {
                pool.add_tenant(&TenantConfig {
                    name: format!("vm{i}"),
                    vpm_bytes: PAGES * PAGE as u64,
                    // Tenant 2 has little PM: most of its homes are in the capacity file.
                    pm_quota_bytes: if i == 2 {
                        PAGE as u64
                    } else {
                        PAGES * PAGE as u64
                    },
                    dram_budget_bytes: 0,
                    log_bytes: 64 << 10,
                })
                .unwrap()
            })
            .collect();
        pm.start_trace();
        cap.start_trace();
        World { pm, cap, pool, ids }
    }

    fn image(&self, t: usize) -> Vec<u8> {
        let mut img = vec![0u8; PAGES as usize * PAGE];
        for vpn in 0..PAGES {
            self.pool
                .read_home(self.ids[t], vpn, &mut img[vpn as usize * PAGE..][..PAGE])
                .unwrap();
        }
        img
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn recovered_images_satisfy_the_contract(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        let mut models: Vec<TenantModel> = (0..TENANTS).map(|_| TenantModel::new()).collect();
        let mut before: Vec<TenantModel> = models.clone();
        let mut last_op_start = w.pm.clock().now();
        let mut last_was_epoch_of: Option<usize> = None;
        let mut value = 0u64;

        for op in ops {
            if !matches!(op, Op::Crash { .. }) {
                before = models.clone();
                last_op_start = w.pm.clock().now();
                last_was_epoch_of = None;
            }
            match op {
                Op::Write { t, vpn, line } => {
                    value += 1;
                    models[t].write(vpn, line, value);
                }
                Op::Persist { t, vpn, line, lines } => {
                    let off = vpn * PAGE as u64 + line as u64 * 64;
                    let len = (lines as u64 * 64).min(PAGES * PAGE as u64 - off);
                    w.pool.persist(w.ids[t], &[(off, len)], &models[t].mem).unwrap();
                    let m = &mut models[t];
                    let first = off as usize / 64;
                    for l in first..first + (len as usize).div_ceil(64) {
                        if !m.transient.contains(&((l / 64) as u64)) {
                            m.settle(l);
                        }
                    }
                }
                Op::Transient { t, vpn } => {
                    w.pool.set_transient(w.ids[t], vpn, 1).unwrap();
                    models[t].transient.insert(vpn);
                }
                Op::Persistent { t, vpn } => {
                    w.pool.set_persistent(w.ids[t], vpn, 1).unwrap();
                    let m = &mut models[t];
                    if m.transient.remove(&vpn) {
                        // The page has no home now: it recovers as zeros, or as what the guest
                        // holds in it at the mark (that content may reach a home from now on,
                        // e.g. when a persist gives the page its first home), or anything
                        // written later (P2).
                        for l in vpn as usize * 64..(vpn as usize + 1) * 64 {
                            let held: Vec<u64> = (0..8).map(|w| m.word(l, w)).collect();
                            let line = &mut m.lines[l];
                            line.anchor = [0; 8];
                            line.since.extend(held);
                        }
                        m.dirty.insert(vpn);
                    }
                }
                Op::Epoch { t } => {
                    let dirty: Vec<u64> = models[t].dirty.iter().copied().collect();
                    w.pool.commit_epoch(w.ids[t], &dirty, &models[t].mem).unwrap();
                    models[t].committed();
                    prop_assert_eq!(w.pool.tenant(w.ids[t]).unwrap().epoch(), models[t].epoch);
                    last_was_epoch_of = Some(t);
                }
                Op::Crash { fraction, seed } => {
                    let now = w.pm.clock().now();
                    let at = last_op_start + ((now - last_op_start) as f64 * fraction) as u64;
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                    let (pm_base, pm_ops) = w.pm.trace();
                    let (cap_base, cap_ops) = w.cap.trace();
                    let pm_space = CrashSpace::at(&pm_base, &pm_ops, at);
                    let cap_space = CrashSpace::at(&cap_base, &cap_ops, at);
                    let pm_img = pm_space.image(&pm_space.random_choice(|n| rng.random_range(0..n)));
                    let cap_img = cap_space.image(&cap_space.random_choice(|n| rng.random_range(0..n)));
                    let clock = SimClock::default();
                    let pm = Arc::new(SimPm::from_image(pm_img, clock.clone()));
                    let cap = Arc::new(SimPm::from_image(cap_img, clock));
                    let (pool, _report) = Pool::open(pm.clone(), cap.clone()).unwrap();
                    w = World { pm, cap, pool, ids: w.ids.clone() };
                    let in_progress = at < now;
                    for t in 0..TENANTS {
                        let img = w.image(t);
                        let epoch = w.pool.tenant(w.ids[t]).unwrap().epoch();
                        let strict = t == FULL;
                        let verdict = if in_progress && last_was_epoch_of == Some(t) {
                            // The commit may or may not have reached its commit point.
                            if epoch == before[t].epoch { before[t].allows(&img, strict) }
                            else if epoch == models[t].epoch { models[t].allows(&img, strict) }
                            else { Err(format!("epoch {epoch} after a crash in commit {}", models[t].epoch)) }
                        } else if in_progress {
                            prop_assert_eq!(epoch, models[t].epoch);
                            before[t].allows(&img, strict).or_else(|_| models[t].allows(&img, strict))
                        } else {
                            prop_assert_eq!(epoch, models[t].epoch, "tenant {} lost an acknowledged epoch", t);
                            models[t].allows(&img, strict)
                        };
                        if let Err(why) = verdict {
                            prop_assert!(false, "tenant {} after crash at {} of {}..{}: {}", t, at, last_op_start, now, why);
                        }
                        let tenant = w.pool.tenant(w.ids[t]).unwrap();
                        let transient = (0..PAGES).filter(|&v| tenant.home(v) == Home::Transient).collect();
                        models[t].restart(img, epoch, transient);
                    }
                    w.pm.start_trace();
                    w.cap.start_trace();
                    before = models.clone();
                    last_op_start = w.pm.clock().now();
                    last_was_epoch_of = None;
                }
            }
        }
    }
}

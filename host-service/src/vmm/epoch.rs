//! Epochs of a tiered VM, taken while its vCPU is paused: collect the pages KVM saw written,
//! commit them to the pool, update the tiers' heat and move pages within the DRAM budget.

use std::time::Instant;

use super::{Shared, VmmError};
use crate::pool::PoolError;
use crate::tier::{Move, Placement};

/// A small xorshift generator for forced migrations.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

impl Shared {
    /// Commits an epoch and rebalances the tiers. The vCPU must not run meanwhile.
    pub fn take_epoch(&self) -> Result<(), VmmError> {
        let start = Instant::now();
        let Some(log) = &self.dirty else {
            return Ok(());
        };
        let dirty = log.collect(&self.vm)?;
        let mut core = self.core.lock().expect("core");
        let (commit, changed) = {
            let mut pool = self.pool.lock().expect("pool");
            match pool.commit_epoch_changed(self.tenant, &dirty, core.memory.bytes()) {
                Ok(c) => c,
                Err(PoolError::LogFull { need, have }) => {
                    return Err(VmmError::Config(format!(
                        "epoch needs {need} bytes of redo log, the tenant has {have}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Re-protect before the vCPU runs again (it is paused): writes from now on are seen.
        let core = &mut *core;
        let plan = core
            .hot
            .plan(&dirty, &changed, |vpn| core.tiers.page(vpn).transient);
        log.protect(&self.vm, &plan.protect)?;
        for &vpn in &changed {
            core.tiers.note_write(vpn);
        }
        core.tiers.end_epoch();
        let moves = core.tiers.plan();
        self.apply_moves(core, moves)?;
        let pause = start.elapsed().as_micros() as u64;
        let mut s = self.stats.lock().expect("stats");
        s.epochs += 1;
        s.epoch = commit.epoch;
        s.dirty_pages += dirty.len() as u64;
        s.writable_pages_last = plan.writable;
        s.committed_pages += commit.changed_pages;
        s.pause_us_last = pause;
        s.pause_us_max = s.pause_us_max.max(pause);
        s.pause_us_total += pause;
        drop(s);
        self.witness_epoch(commit.epoch);
        Ok(())
    }

    /// Swaps up to `pages` random PM pages into DRAM and as many DRAM pages out (within the
    /// budget): the transparency stress. The vCPU must not run meanwhile.
    pub fn shuffle_placement(&self, rng: &mut Rng, pages: u64) -> Result<(), VmmError> {
        let mut core = self.core.lock().expect("core");
        let total = core.memory.size() as u64 / 4096;
        let mut moves = Vec::new();
        let mut picked = std::collections::BTreeSet::new();
        let room = core.tiers.budget() - core.tiers.dram_pages().min(core.tiers.budget());
        let mut up = 0;
        let mut down = 0;
        for _ in 0..pages * 4 {
            let vpn = rng.below(total);
            if !picked.insert(vpn) {
                continue;
            }
            let p = core.tiers.page(vpn);
            if p.transient {
                continue;
            }
            match p.placement {
                Placement::Pm if up < pages && up < room + down => {
                    moves.push(Move {
                        vpn,
                        to: Placement::Dram,
                    });
                    up += 1;
                }
                Placement::Dram if down < pages => {
                    moves.push(Move {
                        vpn,
                        to: Placement::Pm,
                    });
                    down += 1;
                }
                _ => {}
            }
        }
        self.apply_moves(&mut core, moves)
    }
}

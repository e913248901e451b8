//! Drives the pool's epoch protocol for a tiered VM, while its vCPU is paused: collect the pages
//! KVM saw written, commit them to the pool, re-protect what should not stay writable, update
//! the pages' heat and rebalance the tiers within the DRAM budget; and the forced migrations of
//! the transparency stress.

use std::time::Instant;

use super::context::VmContext;
use super::VmmError;
use crate::pool::PoolError;
use crate::tier::{policy, Rng};

impl VmContext {
    /// Commits an epoch and rebalances the tiers. The vCPU must not run meanwhile.
    pub fn take_epoch(&self) -> Result<(), VmmError> {
        let start = Instant::now();
        let Some(log) = &self.dirty else {
            return Ok(());
        };
        let dirty = log.collect(&self.vm)?;
        let mut state = self.state.lock().expect("state");
        let (commit, changed) = {
            let mut pool = self.pool.lock().expect("pool");
            match pool.commit_epoch_changed(self.tenant, &dirty, state.memory.bytes()) {
                Ok(c) => c,
                Err(PoolError::LogFull { need, have }) => {
                    return Err(VmmError::EpochLogFull { need, have })
                }
                Err(e) => return Err(e.into()),
            }
        };
        // Re-protect before the vCPU runs again (it is paused): writes from now on are seen.
        let st = &mut *state;
        let plan = st
            .writable
            .plan(&dirty, &changed, |vpn| st.placements.page(vpn).transient);
        log.protect(&self.vm, &plan.protect)?;
        for &vpn in &changed {
            st.placements.note_write(vpn);
        }
        st.placements.end_epoch();
        let moves = policy::rebalance(&st.placements);
        self.apply_moves(st, moves)?;
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
        self.witnesses.epoch(&self.ram, commit.epoch);
        Ok(())
    }

    /// Swaps up to `pages` random PM pages into DRAM and as many DRAM pages out (within the
    /// budget): the transparency stress. The vCPU must not run meanwhile.
    pub fn shuffle_placement(&self, rng: &mut Rng, pages: u64) -> Result<(), VmmError> {
        let mut state = self.state.lock().expect("state");
        let moves = policy::shuffle(&state.placements, rng, pages);
        self.apply_moves(&mut state, moves)
    }
}

//! Drives the pool's epoch protocol for a tiered VM: collect the pages KVM saw written, commit
//! them to the pool, re-protect what should not stay writable, update the pages' heat and
//! rebalance the tiers within the DRAM budget; and the forced migrations of the transparency
//! stress.
//!
//! Two ways to take an epoch. Stop-and-commit ([`VmContext::take_epoch`] without pre-copy) does
//! it all while the vCPU is paused. Pre-copy epochs ([`crate::vmm::precopy`]) copy dirty pages
//! into staging in rounds while the vCPU runs ([`VmContext::precopy_round`]), pause it only to
//! copy what is dirty at the stop and re-protect ([`VmContext::stop_epoch`]), and commit the
//! staged image while it runs again ([`VmContext::commit_staged`]). The committed image is the
//! memory at the stop either way; only the pause differs.

use std::time::Instant;

use super::context::{VmContext, VpmState};
use super::precopy::{self, KvmTracker, RoundStats};
use super::VmmError;
use crate::pool::{ChangedPage, CommitStats, PageSource, PoolError, ReservedHome};
use crate::tier::{policy, PagePlacements, Rng};

/// Free PM pages a stop wants in the pool for each home it reserves: it takes at most half of
/// them, and leaves the rest to the commits of the pool's other tenants (a reserved home is
/// held until this VM's commit). In a pool short of PM the pages are staged instead, and the
/// commit writes them whole or as lines, as PM allows then.
const FREE_PM_PER_RESERVED: u64 = 2;

/// An epoch stopped and staged, not yet committed.
#[derive(Debug)]
#[must_use = "a stopped epoch must be committed"]
pub struct StoppedEpoch {
    /// The epoch witness's records at the stop, one per vCPU (when a witness is open).
    record: Option<Vec<u64>>,
}

fn micros(since: Instant) -> u64 {
    since.elapsed().as_micros() as u64
}

impl VmContext {
    /// Commits an epoch and rebalances the tiers. The vCPU must not run meanwhile. With
    /// pre-copy, this is a stop and its commit back to back (pages staged by rounds included).
    pub fn take_epoch(&self) -> Result<(), VmmError> {
        if self.precopy.is_some() {
            let stopped = self.stop_epoch()?;
            return self.commit_staged(stopped);
        }
        let start = Instant::now();
        let Some(log) = &self.dirty else {
            return Ok(());
        };
        let dirty = log.collect(&self.vm)?;
        let collect_us = micros(start);
        let mut state = self.state.lock().expect("state");
        let t = Instant::now();
        let (commit, changed_lines) = self.commit(&dirty, state.memory.bytes())?;
        let changed: Vec<u64> = changed_lines.iter().map(|c| c.vpn).collect();
        let commit_us = micros(t);
        // Re-protect before the vCPU runs again (it is paused): writes from now on are seen.
        let st = &mut *state;
        st.writable.note_commit(dirty.len() as u64, commit_us);
        let t = Instant::now();
        let plan = st
            .writable
            .plan(&dirty, &changed, |vpn| st.placements.page(vpn).transient);
        log.protect(&self.vm, &plan.protect)?;
        let protect_us = micros(t);
        for c in &changed_lines {
            st.placements.note_lines(c.vpn, c.lines);
        }
        let pm_tier_stores = st.pm_tier_stores(&self.ram)?;
        let t = Instant::now();
        self.rebalance(st, dirty.len() as u64)?;
        let rebalance_us = micros(t);
        let mut s = self.stats.lock().expect("stats");
        s.pm_tier_store_bytes += pm_tier_stores;
        s.dirty_pages += dirty.len() as u64;
        s.writable_pages_last = plan.writable;
        s.wp_faults += plan.faulted;
        s.pause_collect_us += collect_us;
        s.pause_commit_us += commit_us;
        s.pause_protect_us += protect_us;
        s.pause_rebalance_us += rebalance_us;
        s.record_pause(micros(start));
        drop(s);
        self.count_commit(&commit);
        self.witnesses.epoch(&self.ram, commit.epoch);
        Ok(())
    }

    /// One pre-copy round, while the vCPU runs: stages the pages written since they were last
    /// protected, except hot ones (kept writable or recently changed: left to the stop, see
    /// [`super::writable::WritableSet::is_hot`]). No-op without pre-copy.
    pub fn precopy_round(&self) -> Result<RoundStats, VmmError> {
        let (Some(staging), Some(log)) = (&self.precopy, &self.dirty) else {
            return Ok(RoundStats::default());
        };
        let mut staging = staging.lock().expect("staging");
        let state = self.state.lock().expect("state");
        let tracker = KvmTracker { log, vm: &self.vm };
        // SAFETY: the vPM mapping lives as long as `state`, whose lock we hold, so nothing remaps
        // it meanwhile; the round clears a page's dirty bit before copying it.
        let r = unsafe {
            precopy::round(&tracker, &mut staging, state.memory.host_base(), |v| {
                state.writable.is_hot(v)
            })
        }?;
        let mut s = self.stats.lock().expect("stats");
        s.precopy_rounds += 1;
        s.precopy_pages += r.copied;
        Ok(r)
    }

    /// The stop of a pre-copy epoch, with the vCPU paused: stages every page dirty now, reads
    /// the witness, re-protects what should not stay writable and rebalances the tiers. Commit
    /// the result with [`VmContext::commit_staged`] (the vCPU may run meanwhile).
    pub fn stop_epoch(&self) -> Result<StoppedEpoch, VmmError> {
        let start = Instant::now();
        let (Some(staging), Some(log)) = (&self.precopy, &self.dirty) else {
            return Ok(StoppedEpoch { record: None });
        };
        let mut staging = staging.lock().expect("staging");
        let mut state = self.state.lock().expect("state");
        let tracker = KvmTracker { log, vm: &self.vm };
        let placements = &state.placements;
        let reserve = |dirty: &[u64]| self.reserve_homes(placements, dirty);
        // SAFETY: as in `precopy_round`, and the vCPU is paused; reserved homes are PM pages of
        // the pool, which nothing else touches until the commit.
        let stopped = unsafe {
            precopy::stop(
                &tracker,
                &mut staging,
                state.memory.host_base(),
                &self.pause,
                reserve,
            )
        }?;
        drop(staging);
        let (dirty, collect_us, streamed) = (stopped.dirty, stopped.collect_us, stopped.streamed);
        let copy_us = micros(start) - collect_us;
        let record = self.witnesses.epoch_record(&self.ram);
        let st = &mut *state;
        let t = Instant::now();
        // A dirty page that was protected was written, so it changed (a same-value write aside);
        // whether kept pages changed is learnt from the commit, after the plan.
        let changed: Vec<u64> = dirty
            .iter()
            .copied()
            .filter(|&v| !st.writable.is_kept(v))
            .collect();
        let plan = st
            .writable
            .plan(&dirty, &changed, |vpn| st.placements.page(vpn).transient);
        log.protect(&self.vm, &plan.protect)?;
        let protect_us = micros(t);
        let pm_tier_stores = st.pm_tier_stores(&self.ram)?;
        let t = Instant::now();
        self.rebalance(st, dirty.len() as u64)?;
        let rebalance_us = micros(t);
        let mut s = self.stats.lock().expect("stats");
        s.pm_tier_store_bytes += pm_tier_stores;
        s.dirty_pages += dirty.len() as u64;
        s.stop_copy_pages += dirty.len() as u64;
        s.stop_streamed_pages += streamed;
        s.writable_pages_last = plan.writable;
        s.wp_faults += plan.faulted;
        s.pause_collect_us += collect_us;
        s.pause_copy_us += copy_us;
        s.pause_protect_us += protect_us;
        s.pause_rebalance_us += rebalance_us;
        s.record_pause(micros(start));
        Ok(StoppedEpoch { record })
    }

    /// Fresh PM homes for those of `dirty` pages that are rewritten (nearly) whole epoch after
    /// epoch (their write intensity says so): the stop streams them there, since their commit
    /// would write them whole anyway. `None` for every other page (it is staged).
    fn reserve_homes(
        &self,
        placements: &PagePlacements,
        dirty: &[u64],
    ) -> Vec<Option<ReservedHome>> {
        let whole = |vpn: u64| {
            let p = placements.page(vpn);
            !p.transient && p.intensity >= policy::WRITTEN_WHOLE
        };
        let mut pool = self.pool.lock().expect("pool");
        let wanted = dirty.iter().filter(|&&vpn| whole(vpn)).count() as u64;
        if pool.free_pm_pages() < FREE_PM_PER_RESERVED * wanted {
            return vec![None; dirty.len()];
        }
        let mut reserve = |vpn: u64| {
            if !whole(vpn) {
                return None;
            }
            pool.reserve_home(self.tenant, vpn).unwrap_or_else(|e| {
                tracing::warn!(vpn, error = %e, "no fresh home reserved; staging the page");
                None
            })
        };
        dirty.iter().map(|&vpn| reserve(vpn)).collect()
    }

    /// Commits a stopped epoch's staged image (the vCPU may run meanwhile), then tells the
    /// writable set and the heat which pages changed.
    pub fn commit_staged(&self, stopped: StoppedEpoch) -> Result<(), VmmError> {
        let Some(staging) = &self.precopy else {
            return Ok(());
        };
        let start = Instant::now();
        let mut staging = staging.lock().expect("staging");
        let pages = staging.pages_sorted();
        let result = self.commit(&pages, &*staging);
        staging.clear();
        drop(staging);
        let (commit, changed_lines) = result?;
        let changed: Vec<u64> = changed_lines.iter().map(|c| c.vpn).collect();
        {
            let mut state = self.state.lock().expect("state");
            state
                .writable
                .note_commit(pages.len() as u64, micros(start));
            state.writable.note_changed(&changed);
            for c in &changed_lines {
                state.placements.note_lines(c.vpn, c.lines);
            }
        }
        self.stats.lock().expect("stats").commit_running_us += micros(start);
        self.count_commit(&commit);
        self.witnesses.write_epoch(commit.epoch, stopped.record);
        Ok(())
    }

    /// Commits `dirty` pages of `source` to the pool as the next epoch.
    fn commit(
        &self,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(CommitStats, Vec<ChangedPage>), VmmError> {
        let mut pool = self.pool.lock().expect("pool");
        match pool.commit_epoch_changed(self.tenant, dirty, source) {
            Ok(c) => Ok(c),
            Err(PoolError::LogFull { need, have }) => Err(VmmError::EpochLogFull { need, have }),
            Err(e) => Err(e.into()),
        }
    }

    /// Ends the heat epoch, in which `dirty` pages were written, and carries out the policy's
    /// moves. The vCPU must not run meanwhile.
    fn rebalance(&self, st: &mut VpmState, dirty: u64) -> Result<(), VmmError> {
        st.placements.end_epoch();
        let moves = policy::epoch_moves(&st.placements, dirty);
        self.apply_moves(st, moves)
    }

    /// Adds a commit to the counters.
    fn count_commit(&self, commit: &CommitStats) {
        let mut s = self.stats.lock().expect("stats");
        s.epochs += 1;
        s.epoch = commit.epoch;
        s.committed_pages += commit.changed_pages;
        s.changed_bytes += commit.changed_lines * vpm_abi::LINE_SIZE;
        s.epoch_pm_bytes += commit.log_bytes + commit.pm_home_bytes;
    }

    /// Swaps up to `pages` random PM pages into DRAM and as many DRAM pages out (within the
    /// budget): the transparency stress. The vCPU must not run meanwhile.
    pub fn shuffle_placement(&self, rng: &mut Rng, pages: u64) -> Result<(), VmmError> {
        let mut state = self.state.lock().expect("state");
        let moves = policy::shuffle(&state.placements, rng, pages);
        self.apply_moves(&mut state, moves)
    }
}

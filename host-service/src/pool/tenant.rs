//! A tenant as the running pool knows it: its descriptor, the DRAM copy of its page map, its last
//! commit, and its counters.

use super::error::PoolError;
use super::media::{Home, TenantDesc};
use crate::pm::{PmDevice, PmError};

/// Counters of one tenant's durability work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Epochs committed.
    pub epochs: u64,
    /// Pages whose changes an epoch committed.
    pub committed_pages: u64,
    /// Bytes of redo log written.
    pub log_bytes: u64,
    /// Persist batches served.
    pub persists: u64,
    /// Bytes the guest asked to persist.
    pub persist_requested_bytes: u64,
    /// Bytes written to homes in PM.
    pub pm_home_bytes: u64,
    /// Bytes written to homes in the capacity file.
    pub capacity_home_bytes: u64,
    /// Pages marked transient (cumulative).
    pub transient_marks: u64,
}

/// A tenant (one VM's vPM) of an open pool.
#[derive(Debug)]
pub struct Tenant {
    desc: TenantDesc,
    /// Every page's home (the DRAM copy of the page map).
    homes: Vec<Home>,
    /// Lines written to each page's home so far (endurance).
    write_lines: Vec<u32>,
    /// Last committed epoch.
    epoch: u64,
    /// Sequence of the latest commit record.
    seq: u64,
    /// Which record slot (0 or 1) holds the latest commit record.
    latest_slot: u64,
    /// PM homes held, including the fresh homes of pages being rewritten copy-on-write.
    pm_homes: u64,
    /// Of `pm_homes`, the fresh homes a commit holds beside the page's current PM home
    /// ([`Tenant::note_replacement_taken`]): the page keeps one home once the commit is done, so
    /// they do not count against the quota.
    pm_replacements: u64,
    capacity_homes: u64,
    stats: TenantStats,
}

impl Tenant {
    /// A tenant with an all-zero vPM (no homes) at epoch 0, before any commit record.
    pub(super) fn fresh(desc: TenantDesc) -> Tenant {
        let pages = desc.vpm_pages as usize;
        Tenant {
            desc,
            homes: vec![Home::None; pages],
            write_lines: vec![0; pages],
            epoch: 0,
            seq: 0,
            latest_slot: 1,
            pm_homes: 0,
            pm_replacements: 0,
            capacity_homes: 0,
            stats: TenantStats::default(),
        }
    }

    /// The durable descriptor.
    pub fn desc(&self) -> &TenantDesc {
        &self.desc
    }

    /// Tenant id.
    pub fn id(&self) -> u32 {
        self.desc.id
    }

    /// Last committed epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// vPM pages.
    pub fn pages(&self) -> u64 {
        self.desc.vpm_pages
    }

    /// Home of page `vpn` (callers check the range).
    pub fn home(&self, vpn: u64) -> Home {
        self.homes[vpn as usize]
    }

    /// Lines written to page `vpn`'s home so far.
    pub fn write_lines(&self, vpn: u64) -> u32 {
        self.write_lines[vpn as usize]
    }

    /// Homes held in PM and in the capacity file.
    pub fn home_counts(&self) -> (u64, u64) {
        (self.pm_homes, self.capacity_homes)
    }

    /// Counters.
    pub fn stats(&self) -> TenantStats {
        self.stats
    }

    /// Every page's home.
    pub(super) fn homes(&self) -> &[Home] {
        &self.homes
    }

    /// The homes, giving up the tenant (it is being removed).
    pub(super) fn into_homes(self) -> Vec<Home> {
        self.homes
    }

    /// Checks `vpn` against the tenant's size.
    pub(super) fn check_vpn(&self, vpn: u64) -> Result<(), PoolError> {
        if vpn >= self.desc.vpm_pages {
            return Err(self.out_of_range(vpn));
        }
        Ok(())
    }

    /// The error for page `vpn` outside the vPM.
    pub(super) fn out_of_range(&self, vpn: u64) -> PoolError {
        PoolError::PageOutOfRange {
            tenant: self.desc.id,
            vpn,
            pages: self.desc.vpm_pages,
        }
    }

    /// Installs `home` for page `vpn` in the DRAM page map; returns the previous home.
    pub(super) fn set_home(&mut self, vpn: u64, home: Home) -> Home {
        std::mem::replace(&mut self.homes[vpn as usize], home)
    }

    /// Byte offset, in the pool file, of page `vpn`'s page-map word.
    pub(super) fn map_word_off(&self, vpn: u64) -> u64 {
        self.desc.map_off + vpn * 8
    }

    /// Stores page `vpn`'s page-map word for `home` (not flushed); returns its offset.
    pub(super) fn store_map_word(
        &self,
        pm: &dyn PmDevice,
        vpn: u64,
        home: Home,
    ) -> Result<u64, PmError> {
        let off = self.map_word_off(vpn);
        pm.write_u64(off, home.encode(self.desc.id, vpn))?;
        Ok(off)
    }

    /// Counts `lines` more lines written to page `vpn`'s home.
    pub(super) fn add_write_lines(&mut self, vpn: u64, lines: u32) {
        let w = &mut self.write_lines[vpn as usize];
        *w = w.saturating_add(lines);
    }

    /// Counts a home taken for this tenant.
    pub(super) fn note_home_taken(&mut self, home: Home) {
        match home {
            Home::Pm(_) => self.pm_homes += 1,
            Home::Capacity(_) => self.capacity_homes += 1,
            Home::None | Home::Transient => {}
        }
    }

    /// Counts a home given back by this tenant.
    pub(super) fn note_home_returned(&mut self, home: Home) {
        match home {
            Home::Pm(_) => self.pm_homes -= 1,
            Home::Capacity(_) => self.capacity_homes -= 1,
            Home::None | Home::Transient => {}
        }
    }

    /// Counts a fresh PM home taken for a page that has a PM home now (a copy-on-write rewrite
    /// or a reserved home): the commit installs it in place of the old one or gives it back.
    pub(super) fn note_replacement_taken(&mut self) {
        self.pm_replacements += 1;
    }

    /// Counts `n` replacement homes installed or given back (their commit is done).
    pub(super) fn note_replacements_done(&mut self, n: u64) {
        debug_assert!(
            n <= self.pm_replacements,
            "more replacements done than taken"
        );
        self.pm_replacements = self.pm_replacements.saturating_sub(n);
    }

    /// Whether the tenant may take one more PM home: the pages with PM homes, against its quota.
    /// A page being rewritten copy-on-write holds two PM homes until its commit is applied and
    /// counts once, so the pages a commit homes for the first time are not pushed to the
    /// capacity file by the rewrites beside them.
    pub(super) fn pm_quota_left(&self) -> bool {
        self.pm_homes.saturating_sub(self.pm_replacements) < self.desc.pm_quota_pages
    }

    /// Sequence of the latest commit record.
    pub(super) fn seq(&self) -> u64 {
        self.seq
    }

    /// Record slot holding the latest commit record.
    pub(super) fn latest_slot(&self) -> u64 {
        self.latest_slot
    }

    /// Records that commit record `seq` in slot `slot` committed `epoch`.
    pub(super) fn set_committed(&mut self, seq: u64, epoch: u64, slot: u64) {
        self.seq = seq;
        self.epoch = epoch;
        self.latest_slot = slot;
    }

    /// The counters, to update.
    pub(super) fn stats_mut(&mut self) -> &mut TenantStats {
        &mut self.stats
    }
}

#[cfg(test)]
mod tests {
    use vpm_abi::PAGE_SIZE;

    use super::*;

    fn desc() -> TenantDesc {
        TenantDesc {
            id: 2,
            name: [0; crate::pool::media::NAME_LEN],
            vpm_pages: 4,
            pm_quota_pages: 1,
            dram_budget_pages: 0,
            commit_off: 2 * PAGE_SIZE,
            map_off: 3 * PAGE_SIZE,
            log_off: 4 * PAGE_SIZE,
            log_bytes: 2 * PAGE_SIZE,
        }
    }

    #[test]
    fn a_fresh_tenant_has_no_homes_and_counts_what_it_takes() {
        let mut t = Tenant::fresh(desc());
        assert_eq!((t.epoch(), t.seq(), t.latest_slot()), (0, 0, 1));
        assert!(t.homes().iter().all(|&h| h == Home::None));
        assert!(t.check_vpn(3).is_ok());
        assert!(matches!(
            t.check_vpn(4),
            Err(PoolError::PageOutOfRange {
                tenant: 2,
                vpn: 4,
                pages: 4
            })
        ));
        assert!(t.pm_quota_left());
        t.note_home_taken(Home::Pm(0));
        t.note_home_taken(Home::Capacity(5));
        assert!(!t.pm_quota_left());
        assert_eq!(t.home_counts(), (1, 1));
        t.note_home_taken(Home::Pm(1));
        t.note_replacement_taken();
        assert!(!t.pm_quota_left(), "a replacement home is not a new page");
        t.note_home_returned(Home::Pm(0));
        t.note_replacements_done(1);
        assert!(!t.pm_quota_left());
        t.note_home_returned(Home::Capacity(5));
        assert_eq!(t.home_counts(), (1, 0));
        assert_eq!(t.set_home(1, Home::Pm(0)), Home::None);
        assert_eq!(t.home(1), Home::Pm(0));
        t.add_write_lines(1, u32::MAX);
        t.add_write_lines(1, 1);
        assert_eq!(t.write_lines(1), u32::MAX);
        assert_eq!(t.map_word_off(1), 3 * PAGE_SIZE + 8);
    }
}

//! The writable set: which dirty pages stay writable between epochs, and which are
//! write-protected again after one.
//!
//! Dirty logging finds written pages by write-protecting them: the first write after each epoch
//! takes a fault (about 20 µs on a PVM host, docs/costs.md; a few µs on VMX). With
//! manual protection VPM chooses what to re-protect. A page left writable is reported dirty by
//! every epoch, which then diffs it against its home: a read and a compare (~1 µs), no PM write
//! when nothing changed. That is ski rental: keeping a page writable for one more epoch "rents"
//! at the diff cost, protecting it "buys" one fault the next time it is written. The policy keeps
//! a page writable until it has been quiet (unchanged and not persisted) for as many epochs as a
//! fault costs diffs, then protects it: never more than about twice the overhead of the best
//! choice made with hindsight. Both costs stop the guest (a fault stalls its vCPU, a diff runs in
//! the epoch pause), and a page written in every epoch is diffed whether it is writable or not:
//! protecting it only adds a fault. So for throughput a recently changed page is always cheaper
//! writable, and the set has no cap: the pause grows with the pages changed per epoch, not in a
//! step at a constant. (A cap of half an interval of diffs, 50,000 pages at 100 ms, made every
//! page beyond it fault in each epoch: a KV store on 512 MiB of vPM ran at 1 % of direct; a
//! fixed cap of 32 MiB before it, at 3 % on 64 MiB.) The diff cost is measured from the epochs'
//! commits as they run ([`WritableSet::note_commit`]); the fault cost is set at start
//! (`vmm::kvm::protection_fault_us`, by the kind of host).
//! Transient pages never reach PM, so protecting them would only add faults: they stay writable
//! (and, still reported dirty, are committed by the first epoch after they turn persistent).

/// Microseconds to diff one 4 KiB page against its home (read both, compare) until commits have
/// measured it: about 1 µs per page on this machine.
const DIFF_US: f64 = 1.0;
/// Commits of fewer dirty pages than this do not update the measured diff cost (too noisy).
const MEASURE_MIN_PAGES: u64 = 1024;
/// `last_changed` value of a page that never changed.
const NEVER: u32 = u32::MAX;

/// Per page: the epoch it last changed in; the pages persisted (PV) in this epoch; the pages the
/// last plan left writable.
#[derive(Debug)]
pub struct WritableSet {
    last_changed: Vec<u32>,
    persisted_now: Vec<u64>,
    kept: Vec<u64>,
    epoch: u32,
    quiet_epochs: u32,
    fault_us: f64,
    diff_us: f64,
}

/// What [`WritableSet::plan`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProtectPlan {
    /// Dirty pages to write-protect again (ascending).
    pub protect: Vec<u64>,
    /// Dirty pages left writable (recently changed, or transient).
    pub writable: u64,
    /// Dirty pages that had been protected by the previous plan: each took a write-protect fault
    /// (the first write after protection) in the epoch just ended.
    pub faulted: u64,
}

impl WritableSet {
    /// Nothing writable yet, for a region of `pages` pages, on a host where a write-protection fault
    /// costs `fault_us` microseconds.
    pub fn new(pages: u64, fault_us: f64) -> WritableSet {
        let mut set = WritableSet {
            last_changed: vec![NEVER; pages as usize],
            persisted_now: vec![0; pages.div_ceil(64) as usize],
            kept: vec![0; pages.div_ceil(64) as usize],
            epoch: 0,
            quiet_epochs: 1,
            fault_us,
            diff_us: DIFF_US,
        };
        set.update_quiet();
        set
    }

    fn update_quiet(&mut self) {
        self.quiet_epochs = (self.fault_us / self.diff_us).ceil().clamp(1.0, 256.0) as u32;
    }

    /// Records a commit that examined `dirty` pages in `us` microseconds: the measured cost of a
    /// diff (an upper bound: it includes the writes of the pages that changed) sets how many
    /// quiet epochs a page stays writable. Small commits are ignored.
    pub fn note_commit(&mut self, dirty: u64, us: u64) {
        if dirty < MEASURE_MIN_PAGES {
            return;
        }
        let per_page = (us as f64 / dirty as f64).max(0.05);
        // Moving average over about eight epochs.
        self.diff_us += (per_page - self.diff_us) / 8.0;
        self.update_quiet();
    }

    /// The current estimate of a diff's cost (µs per page).
    pub fn diff_us(&self) -> f64 {
        self.diff_us
    }

    /// Whether the last plan left `vpn` writable (pre-copy rounds leave such pages to the stop).
    pub fn is_kept(&self, vpn: u64) -> bool {
        bit(&self.kept, vpn)
    }

    /// Whether `vpn` is kept writable, or changed recently enough to be kept after its next
    /// change: a pre-copy round leaves such pages to the stop, since re-arming them would make
    /// the next epoch's write fault (it is only written once per epoch, say) where the page
    /// would otherwise stay writable.
    pub fn is_hot(&self, vpn: u64) -> bool {
        self.is_kept(vpn)
            || self.last_changed.get(vpn as usize).is_some_and(|&last| {
                last != NEVER && self.epoch.wrapping_sub(last) < self.quiet_epochs
            })
    }

    /// Records that `changed` pages changed in the epoch last planned (pre-copy epochs learn it
    /// from the commit, after the plan).
    pub fn note_changed(&mut self, changed: &[u64]) {
        for &vpn in changed {
            if let Some(last) = self.last_changed.get_mut(vpn as usize) {
                *last = self.epoch;
            }
        }
    }

    /// How many quiet epochs a page stays writable.
    pub fn quiet_epochs(&self) -> u32 {
        self.quiet_epochs
    }

    /// Records that a persist hint wrote `vpn` to its home in this epoch: the page was written
    /// although the epoch will find it equal to its home.
    pub fn note_persisted(&mut self, vpn: u64) {
        if let Some(w) = self.persisted_now.get_mut((vpn / 64) as usize) {
            *w |= 1 << (vpn % 64);
        }
    }

    fn persisted(&self, vpn: u64) -> bool {
        bit(&self.persisted_now, vpn)
    }

    /// Decides for an epoch's `dirty` pages, given those whose content `changed` (both ascending)
    /// and which pages are transient now.
    pub fn plan(
        &mut self,
        dirty: &[u64],
        changed: &[u64],
        transient: impl Fn(u64) -> bool,
    ) -> ProtectPlan {
        self.epoch = self.epoch.wrapping_add(1);
        let mut plan = ProtectPlan::default();
        let mut changed_iter = changed.iter().peekable();
        for &vpn in dirty {
            while changed_iter.next_if(|&&c| c < vpn).is_some() {}
            // KVM lists every page until it is first protected: the first plan's pages did not fault.
            plan.faulted += (self.epoch > 1 && !bit(&self.kept, vpn)) as u64;
            let changed_now = changed_iter.next_if(|&&c| c == vpn).is_some() || self.persisted(vpn);
            let Some(last) = self.last_changed.get_mut(vpn as usize) else {
                plan.protect.push(vpn);
                continue;
            };
            if changed_now {
                *last = self.epoch;
            }
            let recent = *last != NEVER && self.epoch.wrapping_sub(*last) < self.quiet_epochs;
            let keep = transient(vpn) || recent;
            if keep {
                plan.writable += 1;
            } else {
                plan.protect.push(vpn);
            }
            set_bit(&mut self.kept, vpn, keep);
        }
        self.persisted_now.fill(0);
        plan
    }
}

fn bit(words: &[u64], vpn: u64) -> bool {
    words
        .get((vpn / 64) as usize)
        .is_some_and(|w| w & (1 << (vpn % 64)) != 0)
}

fn set_bit(words: &mut [u64], vpn: u64, on: bool) {
    if let Some(w) = words.get_mut((vpn / 64) as usize) {
        if on {
            *w |= 1 << (vpn % 64);
        } else {
            *w &= !(1 << (vpn % 64));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: fn(u64) -> bool = |_| false;

    #[test]
    fn a_changed_page_stays_writable_until_quiet_long_enough() {
        // Fault = 2 diffs: writable for 2 epochs after its last change.
        let mut set = WritableSet::new(128, 2.0 * DIFF_US);
        assert_eq!(set.quiet_epochs(), 2);
        let p = set.plan(&[1, 70], &[1, 70], NONE);
        assert_eq!((p.protect, p.writable), (vec![], 2));
        // Reported dirty again (writable), unchanged: one quiet epoch, still writable.
        let p = set.plan(&[1, 70], &[70], NONE);
        assert_eq!((p.protect, p.writable), (vec![], 2));
        // Second quiet epoch for page 1: protected; 70 changed last epoch, still writable.
        let p = set.plan(&[1, 70], &[], NONE);
        assert_eq!((p.protect, p.writable), (vec![1], 1));
    }

    #[test]
    fn kept_pages_are_known_and_late_changes_keep_them_recent() {
        let mut set = WritableSet::new(128, 2.0 * DIFF_US);
        set.plan(&[1, 2], &[1, 2], NONE);
        assert!(set.is_kept(1) && set.is_kept(2) && !set.is_kept(3));
        // Page 2 is found changed only after the plan (a pre-copy commit): still recent.
        set.plan(&[1, 2], &[], NONE);
        set.note_changed(&[2]);
        let p = set.plan(&[1, 2], &[], NONE);
        assert_eq!((p.protect, p.writable), (vec![1], 1));
        assert!(!set.is_kept(1) && set.is_kept(2));
        // Page 1 has been quiet for two epochs: no longer hot; page 3 never changed.
        assert!(!set.is_hot(1) && set.is_hot(2) && !set.is_hot(3));
        // A protected page that changed in the last epoch is hot though not kept.
        set.plan(&[3], &[3], |_| false);
        set.note_changed(&[1]);
        assert!(!set.is_kept(1) && set.is_hot(1));
    }

    #[test]
    fn a_dirty_page_that_did_not_change_is_protected() {
        let mut set = WritableSet::new(64, 20.0);
        assert_eq!(set.plan(&[3], &[], NONE).protect, vec![3]);
    }

    #[test]
    fn a_page_persisted_every_epoch_stays_writable() {
        let mut set = WritableSet::new(64, 1.0);
        for _ in 0..5 {
            set.note_persisted(9);
            // Persisted, so the commit finds it equal to its home.
            assert!(set.plan(&[9], &[], NONE).protect.is_empty());
        }
        set.plan(&[9], &[], NONE);
        assert_eq!(set.plan(&[9], &[], NONE).protect, vec![9]);
    }

    #[test]
    fn transient_pages_are_never_protected() {
        let mut set = WritableSet::new(64, 20.0);
        let p = set.plan(&[5, 6], &[], |v| v == 5);
        assert_eq!((p.protect, p.writable), (vec![6], 1));
    }

    /// A KV store rewrites every page of a 512 MiB vPM (131,072 pages, more than any cap the
    /// set used to have) in every epoch at 100 ms: after the first epoch nothing is re-protected,
    /// so no page faults, as long as a fault costs more than a diff.
    #[test]
    fn a_hot_set_larger_than_any_cap_stays_writable_and_never_faults() {
        let n = 131_072;
        let mut set = WritableSet::new(n, 20.0);
        let all: Vec<u64> = (0..n).collect();
        for epoch in 0..5 {
            // Commits of ~0.8 µs a page, as measured at this size.
            set.note_commit(n, n * 8 / 10);
            let p = set.plan(&all, &all, NONE);
            assert_eq!((p.writable, p.protect.len()), (n, 0), "epoch {epoch}");
            assert_eq!(p.faulted, 0, "epoch {epoch}");
        }
        assert!(set.quiet_epochs() > 1, "fault 20 µs > diff ~1 µs");
    }

    /// Faults are counted: a page protected by one plan and dirty in the next faulted once.
    #[test]
    fn pages_protected_and_written_again_are_counted_as_faults() {
        let mut set = WritableSet::new(64, 20.0);
        let p = set.plan(&[1, 2, 3], &[1], NONE);
        assert_eq!((p.protect, p.faulted), (vec![2, 3], 0));
        let p = set.plan(&[1, 2, 3], &[2, 3], NONE);
        assert_eq!((p.protect, p.writable, p.faulted), (vec![], 3, 2));
    }

    /// The diff cost measured from commits sets the quiet window: when diffs turn out as dear as
    /// faults, an unchanged page is protected after one quiet epoch.
    #[test]
    fn the_measured_diff_cost_sets_the_quiet_window() {
        let mut set = WritableSet::new(64, 20.0);
        assert_eq!(set.quiet_epochs(), 20);
        // Too small to count.
        set.note_commit(10, 10_000);
        assert_eq!(set.quiet_epochs(), 20);
        for _ in 0..100 {
            set.note_commit(10_000, 400_000);
        }
        assert!((set.diff_us() - 40.0).abs() < 1.0, "{}", set.diff_us());
        assert_eq!(set.quiet_epochs(), 1);
        set.plan(&[4], &[4], NONE);
        assert_eq!(set.plan(&[4], &[], NONE).protect, vec![4]);
    }

    #[test]
    fn out_of_range_pages_are_protected_not_panicking() {
        let mut set = WritableSet::new(64, 20.0);
        set.note_persisted(1000);
        assert_eq!(set.plan(&[1000], &[1000], NONE).protect, vec![1000]);
    }
}

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
//! the epoch pause), so for throughput a recently changed page is always cheaper writable; the
//! only reason to cap the set is the length of one pause. The cap is what can be diffed in half
//! an epoch interval (never below [`MIN_WRITABLE`]); without periodic epochs there is none. (A
//! fixed cap of 32 MiB used to make every page beyond it fault once per epoch: a KV store on
//! 64 MiB of vPM ran at 3 % of direct.)
//! Transient pages never reach PM, so protecting them would only add faults: they stay writable
//! (and, still reported dirty, are committed by the first epoch after they turn persistent).

/// Microseconds to diff one unchanged 4 KiB page against its home (read both, compare): about
/// 1.1 µs per page measured in commits on this machine.
const DIFF_US: f64 = 1.0;
/// The cap on writable pages is never below this (32 MiB of vPM).
pub const MIN_WRITABLE: u64 = 8192;
/// `last_changed` value of a page that never changed.
const NEVER: u32 = u32::MAX;

/// Microseconds to copy one 4 KiB page into staging at the stop of a pre-copy epoch (the
/// commit then runs while the vCPU runs): about 0.4 µs per page on this machine.
pub const COPY_US: f64 = 0.5;

/// Per page: the epoch it last changed in; the pages persisted (PV) in this epoch; the pages the
/// last plan left writable.
#[derive(Debug)]
pub struct WritableSet {
    last_changed: Vec<u32>,
    persisted_now: Vec<u64>,
    kept: Vec<u64>,
    epoch: u32,
    quiet_epochs: u32,
    max_writable: u64,
}

/// What [`WritableSet::plan`] decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ProtectPlan {
    /// Dirty pages to write-protect again (ascending).
    pub protect: Vec<u64>,
    /// Dirty pages left writable (recently changed, or transient).
    pub writable: u64,
}

impl WritableSet {
    /// Nothing writable yet, for a region of `pages` pages, on a host where a write-protection fault
    /// costs `fault_us` microseconds, with periodic epochs every `interval` (if any).
    pub fn new(pages: u64, fault_us: f64, interval: Option<std::time::Duration>) -> WritableSet {
        let max_writable = match interval {
            Some(d) => ((d.as_micros() as f64 / 2.0 / DIFF_US) as u64).max(MIN_WRITABLE),
            None => pages,
        };
        WritableSet {
            last_changed: vec![NEVER; pages as usize],
            persisted_now: vec![0; pages.div_ceil(64) as usize],
            kept: vec![0; pages.div_ceil(64) as usize],
            epoch: 0,
            quiet_epochs: (fault_us / DIFF_US).ceil().clamp(1.0, 256.0) as u32,
            max_writable,
        }
    }

    /// Pre-copy epochs: a page kept writable costs the pause a copy into staging ([`COPY_US`])
    /// instead of a diff and a commit, so the cap on writable pages grows accordingly.
    pub fn for_precopy(mut self, interval: Option<std::time::Duration>) -> WritableSet {
        if let Some(d) = interval {
            self.max_writable = ((d.as_micros() as f64 / 2.0 / COPY_US) as u64).max(MIN_WRITABLE);
        }
        self
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

    /// Most pages left writable after one epoch.
    pub fn max_writable(&self) -> u64 {
        self.max_writable
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
            let changed_now = changed_iter.next_if(|&&c| c == vpn).is_some() || self.persisted(vpn);
            let Some(last) = self.last_changed.get_mut(vpn as usize) else {
                plan.protect.push(vpn);
                continue;
            };
            if changed_now {
                *last = self.epoch;
            }
            let recent = *last != NEVER && self.epoch.wrapping_sub(*last) < self.quiet_epochs;
            let keep = transient(vpn) || (recent && plan.writable < self.max_writable);
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
    use std::time::Duration;

    const NONE: fn(u64) -> bool = |_| false;

    #[test]
    fn a_changed_page_stays_writable_until_quiet_long_enough() {
        // Fault = 2 diffs: writable for 2 epochs after its last change.
        let mut set = WritableSet::new(128, 2.0 * DIFF_US, None);
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
        let mut set = WritableSet::new(128, 2.0 * DIFF_US, None);
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
    fn precopy_raises_the_cap_to_what_the_stop_can_copy() {
        let d = Some(Duration::from_millis(100));
        let set = WritableSet::new(1 << 20, 20.0, d).for_precopy(d);
        assert_eq!(set.max_writable(), (50_000.0 / COPY_US) as u64);
    }

    #[test]
    fn a_dirty_page_that_did_not_change_is_protected() {
        let mut set = WritableSet::new(64, 20.0, None);
        assert_eq!(set.plan(&[3], &[], NONE).protect, vec![3]);
    }

    #[test]
    fn a_page_persisted_every_epoch_stays_writable() {
        let mut set = WritableSet::new(64, 1.0, None);
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
        let mut set = WritableSet::new(64, 20.0, None);
        let p = set.plan(&[5, 6], &[], |v| v == 5);
        assert_eq!((p.protect, p.writable), (vec![6], 1));
    }

    #[test]
    fn writable_pages_are_capped_by_half_an_epoch_of_diffs() {
        // 10 ms epochs: at most MIN_WRITABLE (5 ms of diffs is below it).
        let n = MIN_WRITABLE + 10;
        let mut set = WritableSet::new(n, 20.0, Some(Duration::from_millis(10)));
        let all: Vec<u64> = (0..n).collect();
        let p = set.plan(&all, &all, NONE);
        assert_eq!(p.writable, MIN_WRITABLE);
        assert_eq!(p.protect.len(), 10);
        // 100 ms epochs: 50 ms of diffs.
        let set = WritableSet::new(1 << 20, 20.0, Some(Duration::from_millis(100)));
        assert_eq!(set.max_writable(), (50_000.0 / DIFF_US) as u64);
    }

    /// A KV store that writes every page of a 64 MiB vPM each epoch keeps all of it writable
    /// at 100 ms epochs: with the old fixed cap of 8192 pages, half of it faulted every epoch.
    #[test]
    fn a_hot_set_beyond_32_mib_stays_writable_at_100_ms_epochs() {
        let n = 16384;
        let mut set = WritableSet::new(n, 20.0, Some(Duration::from_millis(100)));
        let all: Vec<u64> = (0..n).collect();
        let p = set.plan(&all, &all, NONE);
        assert_eq!((p.writable, p.protect.len()), (n, 0));
    }

    #[test]
    fn without_periodic_epochs_nothing_caps_the_set() {
        let n = 3 * MIN_WRITABLE;
        let mut set = WritableSet::new(n, 20.0, None);
        let all: Vec<u64> = (0..n).collect();
        assert_eq!(set.plan(&all, &all, NONE).writable, n);
    }

    #[test]
    fn out_of_range_pages_are_protected_not_panicking() {
        let mut set = WritableSet::new(64, 20.0, None);
        set.note_persisted(1000);
        assert_eq!(set.plan(&[1000], &[1000], NONE).protect, vec![1000]);
    }
}

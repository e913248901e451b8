//! Persist ranges (semantics P1, P4): the changed lines of each range are written straight into
//! the homes. Semantics P2 lets lines be independent, and the applied word's drain at the end of
//! each commit keeps an old redo log from replaying over them.

use vpm_abi::PAGE_SIZE;

use super::error::PoolError;
use super::homes::HomeStore;
use super::lines::{diff_mask, line_mask, write_lines};
use super::media::Home;
use super::source::PageSource;
use super::tenant::Tenant;

/// What one persist batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PersistStats {
    /// Ranges in the batch.
    pub ranges: u64,
    /// Bytes the ranges cover.
    pub requested_bytes: u64,
    /// Bytes written to PM homes.
    pub pm_bytes: u64,
    /// Bytes written to capacity homes.
    pub capacity_bytes: u64,
    /// Pages that got a home.
    pub new_homes: u64,
}

/// Makes every range of tenant `t` durable (P1) with one drain for the whole batch (P5). Ranges
/// are byte ranges `(offset, len)` of the tenant's vPM. Only lines that differ from the home are
/// written. Lines of transient pages are skipped: they never reach PM.
pub(super) fn persist(
    homes: &mut HomeStore,
    t: &mut Tenant,
    ranges: &[(u64, u64)],
    source: &(impl PageSource + ?Sized),
) -> Result<PersistStats, PoolError> {
    let mut stats = PersistStats::default();
    let mut pages: Vec<(u64, u64)> = Vec::new();
    for &(off, len) in ranges {
        let end = off
            .checked_add(len)
            .filter(|&e| len > 0 && e <= t.pages() * PAGE_SIZE);
        let Some(end) = end else {
            return Err(t.out_of_range(off / PAGE_SIZE));
        };
        stats.ranges += 1;
        stats.requested_bytes += len;
        for vpn in off / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
            let lo = off.max(vpn * PAGE_SIZE) - vpn * PAGE_SIZE;
            let hi = end.min((vpn + 1) * PAGE_SIZE) - vpn * PAGE_SIZE;
            pages.push((vpn, line_mask(lo, hi)));
        }
    }
    pages.sort_unstable_by_key(|p| p.0);
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(pages.len());
    for (vpn, mask) in pages {
        match merged.last_mut() {
            Some(last) if last.0 == vpn => last.1 |= mask,
            _ => merged.push((vpn, mask)),
        }
    }
    let mut p = Persister {
        homes: &mut *homes,
        t: &mut *t,
        stats,
        new_homes: Vec::new(),
    };
    p.pages(&merged, source)?;
    let Persister {
        mut stats,
        new_homes,
        ..
    } = p;
    stats.new_homes = new_homes.len() as u64;
    install_homes(homes, t, &new_homes)?;
    let s = t.stats_mut();
    s.persists += 1;
    s.persist_requested_bytes += stats.requested_bytes;
    s.pm_home_bytes += stats.pm_bytes;
    s.capacity_home_bytes += stats.capacity_bytes;
    Ok(stats)
}

/// The writing part of one persist batch.
struct Persister<'a> {
    homes: &'a mut HomeStore,
    t: &'a mut Tenant,
    stats: PersistStats,
    /// Homes taken, still to install in the page map.
    new_homes: Vec<(u64, Home)>,
}

impl Persister<'_> {
    /// Writes the changed lines of each page's mask to its home (a new home gets the whole
    /// page); drains.
    fn pages(
        &mut self,
        pages: &[(u64, u64)],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(), PoolError> {
        for &(vpn, mask) in pages {
            let home = self.t.home(vpn);
            if home == Home::Transient {
                continue;
            }
            let mut result = Ok(());
            source
                .with_page(vpn, &mut |page| result = self.page(vpn, home, mask, page))
                .map_err(|source| PoolError::Source { vpn, source })?;
            result?;
        }
        self.homes.drain()
    }

    /// One page of [`Persister::pages`]: writes the changed lines of `mask` (a page without a
    /// home gets one and the whole page).
    fn page(&mut self, vpn: u64, home: Home, mask: u64, page: &[u8]) -> Result<(), PoolError> {
        let (home, write_mask) = match home {
            Home::None => {
                let h = self.homes.alloc(self.t)?;
                self.new_homes.push((vpn, h));
                (h, u64::MAX)
            }
            h => {
                let (dev, off) = self.homes.location(h).expect("home has a location");
                let mut changed = 0;
                dev.with_bytes(off, PAGE_SIZE as usize, &mut |base| {
                    changed = diff_mask(page, base)
                })?;
                (h, changed & mask)
            }
        };
        let (dev, off) = self.homes.location(home).expect("home has a location");
        let n = write_lines(dev, off, page, write_mask)?;
        match home {
            Home::Pm(_) => self.stats.pm_bytes += n,
            _ => self.stats.capacity_bytes += n,
        }
        self.t.add_write_lines(vpn, write_mask.count_ones());
        Ok(())
    }
}

/// Makes new homes part of the page map: after their data is durable, so a crash in between
/// leaves the page without a home (zeros, the last committed content) rather than garbage.
fn install_homes(homes: &HomeStore, t: &mut Tenant, new: &[(u64, Home)]) -> Result<(), PoolError> {
    if new.is_empty() {
        return Ok(());
    }
    let pm = &**homes.pm();
    for &(vpn, home) in new {
        let off = t.store_map_word(pm, vpn, home)?;
        pm.flush(off, 8)?;
    }
    pm.drain()?;
    for &(vpn, home) in new {
        t.set_home(vpn, home);
    }
    Ok(())
}

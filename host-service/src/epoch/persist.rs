//! Persist ranges (semantics P1, P4) and transient marks (P3).

use vpm_abi::{LINE_SIZE, PAGE_SIZE};

use super::log::{diff_mask, write_lines};
use super::PageSource;
use crate::pool::layout::Home;
use crate::pool::{check_vpn, Pool, PoolError};

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

/// Bit mask of the lines of a page that `[start, end)` (byte offsets within the page) touches.
fn line_mask(start: u64, end: u64) -> u64 {
    let first = start / LINE_SIZE;
    let last = (end - 1) / LINE_SIZE;
    let width = last - first + 1;
    let bits = if width == 64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    bits << first
}

impl Pool {
    /// Makes every range durable (P1) with one drain for the whole batch (P5). Ranges are byte
    /// ranges `(offset, len)` of the tenant's vPM; the caller has checked them against the region
    /// (`vpm_abi::VpmRegion`). Only lines that differ from the home are written. Lines of
    /// transient pages are skipped: they never reach PM.
    pub fn persist(
        &mut self,
        tenant: u32,
        ranges: &[(u64, u64)],
        source: &(impl PageSource + ?Sized),
    ) -> Result<PersistStats, PoolError> {
        let mut pages: Vec<(u64, u64)> = Vec::new();
        let mut stats = PersistStats::default();
        {
            let t = self.tenant(tenant)?;
            for &(off, len) in ranges {
                let end = off
                    .checked_add(len)
                    .filter(|&e| len > 0 && e <= t.pages() * PAGE_SIZE);
                let Some(end) = end else {
                    return Err(PoolError::PageOutOfRange {
                        tenant,
                        vpn: off / PAGE_SIZE,
                        pages: t.pages(),
                    });
                };
                stats.ranges += 1;
                stats.requested_bytes += len;
                for vpn in off / PAGE_SIZE..end.div_ceil(PAGE_SIZE) {
                    let lo = off.max(vpn * PAGE_SIZE) - vpn * PAGE_SIZE;
                    let hi = end.min((vpn + 1) * PAGE_SIZE) - vpn * PAGE_SIZE;
                    pages.push((vpn, line_mask(lo, hi)));
                }
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
        let new_homes = self.persist_pages(tenant, &merged, source, &mut stats)?;
        self.install_homes(tenant, &new_homes)?;
        let t = self.tenant_mut(tenant)?;
        t.stats.persists += 1;
        t.stats.persist_requested_bytes += stats.requested_bytes;
        t.stats.pm_home_bytes += stats.pm_bytes;
        t.stats.capacity_home_bytes += stats.capacity_bytes;
        Ok(stats)
    }

    /// Writes the changed lines of each page's mask to its home (a new home gets the whole page);
    /// drains; returns the homes still to install in the page map.
    fn persist_pages(
        &mut self,
        tenant: u32,
        pages: &[(u64, u64)],
        source: &(impl PageSource + ?Sized),
        stats: &mut PersistStats,
    ) -> Result<Vec<(u64, Home)>, PoolError> {
        let mut new_homes = Vec::new();
        for &(vpn, mask) in pages {
            let home = self.tenant(tenant)?.homes[vpn as usize];
            if home == Home::Transient {
                continue;
            }
            let mut result = Ok(());
            source
                .with_page(vpn, &mut |page| {
                    result =
                        self.persist_page(tenant, vpn, home, mask, page, stats, &mut new_homes);
                })
                .map_err(|why| PoolError::Source { vpn, why })?;
            result?;
        }
        self.pm.drain()?;
        self.cap.drain()?;
        stats.new_homes = new_homes.len() as u64;
        Ok(new_homes)
    }

    /// One page of [`Pool::persist_pages`]: writes the changed lines of `mask` (a page without a
    /// home gets one and the whole page).
    #[allow(clippy::too_many_arguments)]
    fn persist_page(
        &mut self,
        tenant: u32,
        vpn: u64,
        home: Home,
        mask: u64,
        page: &[u8],
        stats: &mut PersistStats,
        new_homes: &mut Vec<(u64, Home)>,
    ) -> Result<(), PoolError> {
        let (home, write_mask) = match home {
            Home::None => {
                let h = self.alloc_home(tenant)?;
                new_homes.push((vpn, h));
                (h, u64::MAX)
            }
            h => {
                let (dev, off) = self.home_location(h).expect("home has a location");
                let mut changed = 0;
                dev.with_bytes(off, PAGE_SIZE as usize, &mut |base| {
                    changed = diff_mask(page, base)
                })?;
                (h, changed & mask)
            }
        };
        let (dev, off) = self.home_location(home).expect("home has a location");
        let n = write_lines(dev, off, page, write_mask)?;
        match home {
            Home::Pm(_) => stats.pm_bytes += n,
            _ => stats.capacity_bytes += n,
        }
        let t = self.tenant_mut(tenant)?;
        t.write_lines[vpn as usize] =
            t.write_lines[vpn as usize].saturating_add(write_mask.count_ones());
        Ok(())
    }

    /// Makes new homes part of the page map: after their data is durable, so a crash in between
    /// leaves the page without a home (zeros, the last committed content) rather than garbage.
    fn install_homes(&mut self, tenant: u32, homes: &[(u64, Home)]) -> Result<(), PoolError> {
        if homes.is_empty() {
            return Ok(());
        }
        let map_off = self.tenant(tenant)?.desc.map_off;
        for &(vpn, home) in homes {
            self.pm
                .write_u64(map_off + vpn * 8, home.encode(tenant, vpn))?;
            self.pm.flush(map_off + vpn * 8, 8)?;
        }
        self.pm.drain()?;
        let t = self.tenant_mut(tenant)?;
        for &(vpn, home) in homes {
            t.homes[vpn as usize] = home;
        }
        Ok(())
    }

    /// Marks pages `[first, first + count)` transient (P3): their homes are freed, they never
    /// reach PM, and they read as zeros after a crash. Durable when this returns.
    pub fn set_transient(&mut self, tenant: u32, first: u64, count: u64) -> Result<u64, PoolError> {
        self.mark_pages(tenant, first, count, Home::Transient)
    }

    /// Marks pages persistent again: they have no home until the next persist or epoch, so a crash
    /// before that shows zeros (their last committed content).
    pub fn set_persistent(
        &mut self,
        tenant: u32,
        first: u64,
        count: u64,
    ) -> Result<u64, PoolError> {
        self.mark_pages(tenant, first, count, Home::None)
    }

    fn mark_pages(
        &mut self,
        tenant: u32,
        first: u64,
        count: u64,
        to: Home,
    ) -> Result<u64, PoolError> {
        let t = self.tenant(tenant)?;
        let end = first.checked_add(count).ok_or(PoolError::PageOutOfRange {
            tenant,
            vpn: first,
            pages: t.pages(),
        })?;
        if count > 0 {
            check_vpn(t, end - 1)?;
        }
        let map_off = t.desc.map_off;
        let mut changed = Vec::new();
        for vpn in first..end {
            let old = self.tenant(tenant)?.homes[vpn as usize];
            let becomes = match (old, to) {
                (Home::Transient, Home::Transient) | (Home::None, Home::None) => continue,
                (Home::Pm(_) | Home::Capacity(_), Home::None) => continue,
                (_, new) => new,
            };
            self.pm
                .write_u64(map_off + vpn * 8, becomes.encode(tenant, vpn))?;
            self.pm.flush(map_off + vpn * 8, 8)?;
            changed.push((vpn, old, becomes));
        }
        self.pm.drain()?;
        let n = changed.len() as u64;
        for (vpn, old, becomes) in changed {
            self.unalloc_home(tenant, old);
            let t = self.tenant_mut(tenant)?;
            t.homes[vpn as usize] = becomes;
            if becomes == Home::Transient {
                t.stats.transient_marks += 1;
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::line_mask;

    #[test]
    fn line_masks_cover_the_touched_lines() {
        assert_eq!(line_mask(0, 1), 1);
        assert_eq!(line_mask(63, 65), 0b11);
        assert_eq!(line_mask(0, 4096), u64::MAX);
        assert_eq!(line_mask(4095, 4096), 1 << 63);
    }
}

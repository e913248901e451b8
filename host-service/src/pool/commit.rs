//! Epoch commits (semantics F1): the redo log makes the commit of a tenant's epoch atomic under
//! power failure.
//!
//! Commit protocol for epoch k+1 of a tenant:
//! 1. diff every dirty page against its home, line by line; build the redo log in DRAM (changed
//!    lines only; a page with many changed lines, or without a home, is written whole into a
//!    fresh home and logged without payload);
//! 2. write the log to the tenant's log area, flush, drain;
//! 3. write commit record (seq+1, epoch k+1, log size/count/CRC) into the record slot that does
//!    not hold the latest record, flush, drain — **the commit point**;
//! 4. apply the log to the homes and install new homes in the page map, drain;
//! 5. store the record's seq in the applied word, drain.
//!
//! A crash before 3 leaves epoch k (the log is ignored); after 3, recovery re-applies the log.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vpm_abi::{LINE_SIZE, PAGE_SIZE};

use super::error::PoolError;
use super::homes::HomeStore;
use super::lines::{diff_mask, mostly_changed};
use super::media::{
    CommitRecord, Home, LogRecordHeader, APPLIED_WORD_OFF, COMMIT_RECORD_SIZE, LOG_HEADER_SIZE,
    LOG_NEW_HOME,
};
use super::redo_log::{apply, RedoLog};
use super::source::PageSource;
use super::tenant::Tenant;
use crate::pm::write_durable;

static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Changed lines at or above which a page is written whole into a fresh home instead of logged.
const COW_LINES: u32 = 32;

/// What one commit did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// The epoch now committed.
    pub epoch: u64,
    /// Dirty pages examined.
    pub dirty_pages: u64,
    /// Pages with changed lines.
    pub changed_pages: u64,
    /// Changed lines.
    pub changed_lines: u64,
    /// Redo-log bytes written.
    pub log_bytes: u64,
    /// Bytes written to PM homes.
    pub pm_home_bytes: u64,
    /// Bytes written to capacity homes.
    pub capacity_home_bytes: u64,
    /// Microseconds until the commit point (the part a consistent snapshot must cover).
    pub until_commit_us: u64,
    /// Microseconds in total.
    pub total_us: u64,
}

/// Commits epoch k+1 of tenant `t`: the content `source` shows for every page in `dirty` (pages
/// not listed are unchanged since epoch k). Transient pages are skipped. On any error nothing is
/// committed and the tenant stays at epoch k. Returns the pages whose content changed
/// (ascending).
pub(super) fn commit_epoch(
    homes: &mut HomeStore,
    t: &mut Tenant,
    dirty: &[u64],
    source: &(impl PageSource + Sync + ?Sized),
) -> Result<(CommitStats, Vec<u64>), PoolError> {
    let start = Instant::now();
    let mut dirty = dirty.to_vec();
    dirty.sort_unstable();
    dirty.dedup();
    let mut b = LogBuilder {
        homes: &mut *homes,
        t: &mut *t,
        log: RedoLog::default(),
        allocated: Vec::new(),
        fresh: Fresh::default(),
    };
    let collected = b.collect(&dirty, source);
    let LogBuilder {
        log,
        allocated,
        fresh,
        ..
    } = b;
    if let Err(e) = collected.and_then(|()| write_log_and_commit(homes, t, &log)) {
        for home in allocated {
            homes.unalloc(t, home);
        }
        return Err(e);
    }
    let until_commit = start.elapsed();

    let mut applied = apply(homes, t, &log)?;
    write_durable(
        &**homes.pm(),
        t.desc().commit_off + APPLIED_WORD_OFF,
        &t.seq().to_le_bytes(),
    )?;
    for old in std::mem::take(&mut applied.released) {
        homes.unalloc(t, old);
    }
    applied.pm_bytes += fresh.pm_bytes;
    applied.capacity_bytes += fresh.capacity_bytes;

    let stats = CommitStats {
        epoch: t.epoch(),
        dirty_pages: dirty.len() as u64,
        changed_pages: log.count() as u64,
        changed_lines: fresh.lines
            + log
                .headers()
                .map(|h| h.mask.count_ones() as u64)
                .sum::<u64>(),
        log_bytes: log.len(),
        pm_home_bytes: applied.pm_bytes,
        capacity_home_bytes: applied.capacity_bytes,
        until_commit_us: until_commit.as_micros() as u64,
        total_us: start.elapsed().as_micros() as u64,
    };
    let s = t.stats_mut();
    s.epochs += 1;
    s.committed_pages += stats.changed_pages;
    s.log_bytes += stats.log_bytes;
    s.pm_home_bytes += applied.pm_bytes;
    s.capacity_home_bytes += applied.capacity_bytes;
    tracing::debug!(
        tenant = t.id(),
        epoch = stats.epoch,
        pages = stats.changed_pages,
        "committed epoch"
    );
    Ok((stats, log.headers().map(|h| h.vpn).collect()))
}

/// Bytes written to fresh homes while building the log.
#[derive(Default)]
struct Fresh {
    pm_bytes: u64,
    capacity_bytes: u64,
    lines: u64,
}

impl Fresh {
    fn count(&mut self, home: Home, mask: u64) {
        match home {
            Home::Pm(_) => self.pm_bytes += PAGE_SIZE,
            _ => self.capacity_bytes += PAGE_SIZE,
        }
        self.lines += mask.count_ones() as u64;
    }
}

/// Step 1: the redo log, the homes newly taken for it, and what was written to them.
struct LogBuilder<'a> {
    homes: &'a mut HomeStore,
    t: &'a mut Tenant,
    log: RedoLog,
    allocated: Vec<Home>,
    fresh: Fresh,
}

impl LogBuilder<'_> {
    /// Diffs each dirty page against its home (in parallel for large epochs, [`diff_masks`]),
    /// then, one page at a time, logs the changed ones. A page with many changed lines (or no
    /// home yet) is written whole into a fresh home of the same tier, copy-on-write, and logged
    /// without payload; a page with few changed lines logs just those lines. Either way each
    /// changed byte reaches PM about once, and the old home stays intact until the commit point.
    fn collect(
        &mut self,
        dirty: &[u64],
        source: &(impl PageSource + Sync + ?Sized),
    ) -> Result<(), PoolError> {
        let mut homes = Vec::with_capacity(dirty.len());
        for &vpn in dirty {
            self.t.check_vpn(vpn)?;
            homes.push(self.t.home(vpn));
        }
        let masks = diff_masks(self.homes, dirty, &homes, source)?;
        for (i, ((&vpn, &home), &mask)) in dirty.iter().zip(&homes).zip(&masks).enumerate() {
            if mask == 0 {
                continue;
            }
            // Room kept for the pages after this one, should they all need 64-byte records.
            let reserve = (dirty.len() - i - 1) as u64 * LOG_HEADER_SIZE as u64;
            let mut result = Ok(());
            source
                .with_page(vpn, &mut |page| {
                    result = self.page(vpn, home, page, mask, reserve)
                })
                .map_err(|source| PoolError::Source { vpn, source })?;
            result?;
        }
        Ok(())
    }

    /// One changed page of [`LogBuilder::collect`], whose changed lines are `mask`.
    fn page(
        &mut self,
        vpn: u64,
        home: Home,
        page: &[u8],
        mask: u64,
        reserve: u64,
    ) -> Result<(), PoolError> {
        let log_cap = self.t.desc().log_bytes;
        let line_record = LOG_HEADER_SIZE as u64 + mask.count_ones() as u64 * LINE_SIZE;
        let log_tight = self.log.len() + line_record + reserve > log_cap;
        let target = match home {
            Home::None => Some(self.homes.alloc(self.t)?),
            _ if mask.count_ones() >= COW_LINES || log_tight => {
                match self.homes.alloc_same_tier(self.t, home)? {
                    // A full log takes whole pages copy-on-write (64-byte records) in any tier.
                    None if log_tight => Some(self.homes.alloc(self.t)?),
                    other => other,
                }
            }
            _ => None,
        };
        let tenant = self.t.id();
        let header = match target {
            Some(new) => {
                self.allocated.push(new);
                let (dev, off) = self.homes.location(new).expect("allocated home");
                dev.write_flush(off, page)?;
                self.fresh.count(new, mask);
                self.t.add_write_lines(vpn, (PAGE_SIZE / LINE_SIZE) as u32);
                LogRecordHeader {
                    vpn,
                    home_word: new.encode(tenant, vpn),
                    mask: 0,
                    flags: LOG_NEW_HOME,
                }
            }
            None => LogRecordHeader {
                vpn,
                home_word: home.encode(tenant, vpn),
                mask,
                flags: 0,
            },
        };
        let need = self.log.len() + header.record_len() as u64;
        if need > log_cap {
            return Err(PoolError::LogFull {
                need,
                have: log_cap,
            });
        }
        self.log.push(header, page);
        Ok(())
    }
}

/// Dirty pages at or above which the diff runs on several threads.
const PARALLEL_MIN_PAGES: usize = 4096;
/// Most threads a diff uses.
const MAX_DIFF_THREADS: usize = 4;

/// The changed-line mask of every dirty page against its home (0 for transient pages and pages
/// equal to their home; all lines when most sampled lines differ, see [`mostly_changed`]). It
/// only reads, so a large epoch's pages are split over the host's cores (the vCPU is stopped
/// meanwhile); the result is the same as diffing them one by one.
fn diff_masks(
    store: &HomeStore,
    dirty: &[u64],
    homes: &[Home],
    source: &(impl PageSource + Sync + ?Sized),
) -> Result<Vec<u64>, PoolError> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_DIFF_THREADS);
    diff_masks_on(store, dirty, homes, source, threads)
}

/// [`diff_masks`] on at most `threads` threads.
fn diff_masks_on(
    store: &HomeStore,
    dirty: &[u64],
    homes: &[Home],
    source: &(impl PageSource + Sync + ?Sized),
    threads: usize,
) -> Result<Vec<u64>, PoolError> {
    let mut masks = vec![0u64; dirty.len()];
    if threads <= 1 || dirty.len() < PARALLEL_MIN_PAGES {
        diff_range(store, dirty, homes, source, &mut masks)?;
        return Ok(masks);
    }
    let chunk = dirty.len().div_ceil(threads);
    std::thread::scope(|s| {
        let workers: Vec<_> = dirty
            .chunks(chunk)
            .zip(homes.chunks(chunk))
            .zip(masks.chunks_mut(chunk))
            .map(|((d, h), m)| s.spawn(move || diff_range(store, d, h, source, m)))
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
    })?;
    Ok(masks)
}

/// Diffs `dirty` pages (with their `homes`) into `masks`, one by one.
fn diff_range(
    store: &HomeStore,
    dirty: &[u64],
    homes: &[Home],
    source: &(impl PageSource + Sync + ?Sized),
    masks: &mut [u64],
) -> Result<(), PoolError> {
    for ((&vpn, &home), mask) in dirty.iter().zip(homes).zip(masks) {
        if home == Home::Transient {
            continue;
        }
        let mut result = Ok(0);
        source
            .with_page(vpn, &mut |page| result = page_mask(store, home, page))
            .map_err(|source| PoolError::Source { vpn, source })?;
        *mask = result?;
    }
    Ok(())
}

/// The lines in which `page` differs from `home`'s content (a page without a home differs where
/// it is not zero).
fn page_mask(store: &HomeStore, home: Home, page: &[u8]) -> Result<u64, PoolError> {
    let Some((dev, off)) = store.location(home) else {
        return Ok(diff_mask(page, &ZERO_PAGE));
    };
    let mut mask = 0;
    dev.with_bytes(off, PAGE_SIZE as usize, &mut |base| {
        mask = if mostly_changed(page, base) {
            u64::MAX
        } else {
            diff_mask(page, base)
        }
    })?;
    Ok(mask)
}

/// Steps 2 and 3: the log, then the commit record.
fn write_log_and_commit(homes: &HomeStore, t: &mut Tenant, log: &RedoLog) -> Result<(), PoolError> {
    let pm = &**homes.pm();
    if log.len() > 0 {
        pm.write_flush(t.desc().log_off, log.bytes())?;
    }
    // Fresh homes (either device) and the log are durable before the commit record.
    homes.drain()?;
    let record = CommitRecord {
        seq: t.seq() + 1,
        epoch: t.epoch() + 1,
        log_bytes: log.len(),
        log_count: log.count() as u32,
        log_crc: log.crc(),
        time_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    };
    let slot = t.latest_slot() ^ 1;
    let off = t.desc().commit_off + slot * COMMIT_RECORD_SIZE as u64;
    write_durable(pm, off, &record.encode())?;
    t.set_committed(record.seq, record.epoch, slot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pm::sim::SimPm;
    use crate::pool::{Pool, PoolConfig, TenantConfig};

    const PAGE: usize = PAGE_SIZE as usize;

    /// The diff split over threads finds exactly what one thread finds, on an epoch large enough
    /// to be split: unchanged pages, pages with a few changed lines, rewritten pages, pages
    /// without a home (zero or not) and a transient page.
    #[test]
    fn the_parallel_diff_equals_the_serial_one() {
        let pages = PARALLEL_MIN_PAGES as u64 + 1000;
        let size = (4 * pages + 64) * PAGE_SIZE;
        let cfg = PoolConfig {
            size,
            max_tenants: 1,
            meta_bytes: pages * PAGE_SIZE / 2,
            pool_id: 1,
        };
        let mut pool =
            Pool::create(Arc::new(SimPm::new(size)), Arc::new(SimPm::new(0)), &cfg).unwrap();
        let t = pool
            .add_tenant(&TenantConfig {
                name: "t".into(),
                vpm_bytes: pages * PAGE_SIZE,
                pm_quota_bytes: 2 * pages * PAGE_SIZE,
                dram_budget_bytes: 0,
                log_bytes: pages * PAGE_SIZE / 4,
            })
            .unwrap();
        let mut img: Vec<u8> = (0..pages as usize * PAGE)
            .map(|i| (i % 251) as u8)
            .collect();
        // Pages 0..pages-100 get homes; the last 100 stay without one.
        let first: Vec<u64> = (0..pages - 100).collect();
        pool.commit_epoch(t, &first, &img).unwrap();
        pool.set_transient(t, 7, 1).unwrap();
        for vpn in 0..pages as usize {
            let p = &mut img[vpn * PAGE..(vpn + 1) * PAGE];
            match vpn % 5 {
                0 => {}
                1 => p[(vpn % 64) * 64] ^= 0xff,
                2 => p.iter_mut().for_each(|b| *b = !*b),
                3 => p[4095] ^= 1,
                _ => p[..64 * (vpn % 7)].fill(3),
            }
        }
        let dirty: Vec<u64> = (0..pages).collect();
        let tenant = pool.tenants.get(t).unwrap();
        let homes: Vec<Home> = dirty.iter().map(|&v| tenant.home(v)).collect();
        let serial = diff_masks_on(&pool.homes, &dirty, &homes, &img, 1).unwrap();
        let parallel = diff_masks_on(&pool.homes, &dirty, &homes, &img, 3).unwrap();
        assert_eq!(serial, parallel);
        assert_eq!(serial[7], 0, "transient");
        assert_eq!(serial[5], 0, "unchanged");
        assert_eq!(serial[2], u64::MAX, "rewritten");
        assert_eq!(serial[3], 1 << 63, "last line");
        assert_eq!(serial[11], 1 << 11);
        let changed = serial.iter().filter(|&&m| m != 0).count();
        assert!(changed > pages as usize / 2, "{changed}");
        // And the commit logs exactly the pages with a mask.
        let (_, logged) = pool.commit_epoch_changed(t, &dirty, &img).unwrap();
        let expect: Vec<u64> = (0..pages).filter(|&v| serial[v as usize] != 0).collect();
        assert_eq!(logged, expect);
    }
}

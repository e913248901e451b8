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
use super::lines::{changed_lines, diff_mask, prefetch_sample};
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

/// Pages ahead of the one being diffed whose sampled lines the diff loop prefetches: the homes
/// are not in the cache (streamed pages were written around it), and a page's sample is 8 or 16
/// misses that would otherwise be waited for one page at a time.
const PREFETCH_AHEAD: usize = 4;

/// A page a commit found changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangedPage {
    /// The page.
    pub vpn: u64,
    /// Its cache lines that differed from its home (1–64): exact, except for a page rewritten
    /// whole after a sample of its lines mostly differed, where the sample estimates it.
    pub lines: u8,
}

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
/// (ascending), with their changed lines.
pub(super) fn commit_epoch(
    homes: &mut HomeStore,
    t: &mut Tenant,
    dirty: &[u64],
    source: &(impl PageSource + ?Sized),
) -> Result<(CommitStats, Vec<ChangedPage>), PoolError> {
    let start = Instant::now();
    let mut dirty = dirty.to_vec();
    dirty.sort_unstable();
    dirty.dedup();
    // Homes the source filled before the commit are this commit's to install or give back: PM
    // homes reserved beside the pages' current ones (replacements).
    let written: Vec<Home> = dirty
        .iter()
        .filter_map(|&v| source.written_home(v))
        .collect();
    let mut b = LogBuilder {
        homes: &mut *homes,
        t: &mut *t,
        log: RedoLog::default(),
        replacements: written.len() as u64,
        allocated: written,
        streamed_seen: 0,
        fresh: Fresh::default(),
        changed: Vec::new(),
    };
    let collected = b.collect(&dirty, source);
    let LogBuilder {
        log,
        allocated,
        replacements,
        fresh,
        changed,
        ..
    } = b;
    let committed = collected.and_then(|()| write_log_and_commit(homes, t, &log));
    if committed.is_err() {
        for home in allocated.into_iter().filter(|&h| h != Home::None) {
            homes.unalloc(t, home);
        }
    }
    // Installed (the commit point is past) or given back: either way each page holds one home.
    t.note_replacements_done(replacements);
    committed?;
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
        changed_lines: changed.iter().map(|c| c.lines as u64).sum(),
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
    Ok((stats, changed))
}

/// Bytes written to fresh homes while building the log.
#[derive(Default)]
struct Fresh {
    pm_bytes: u64,
    capacity_bytes: u64,
}

impl Fresh {
    fn count(&mut self, home: Home) {
        match home {
            Home::Pm(_) => self.pm_bytes += PAGE_SIZE,
            _ => self.capacity_bytes += PAGE_SIZE,
        }
    }
}

/// Step 1: the redo log, the homes newly taken for it, and what was written to them.
struct LogBuilder<'a> {
    homes: &'a mut HomeStore,
    t: &'a mut Tenant,
    log: RedoLog,
    /// Homes taken for this commit: first the homes the source streamed pages into, in page
    /// order (`Home::None` once given back), then those taken while building the log.
    allocated: Vec<Home>,
    /// Of `allocated`, the PM homes taken beside a page's current PM home.
    replacements: u64,
    /// Streamed pages met so far (the next one's home is `allocated[streamed_seen]`).
    streamed_seen: usize,
    fresh: Fresh,
    changed: Vec<ChangedPage>,
}

impl LogBuilder<'_> {
    /// Diffs each dirty page against its home. A page with many changed lines (or no home yet)
    /// is written whole into a fresh home of the same tier, copy-on-write, and logged without
    /// payload; a page with few changed lines logs just those lines. Either way each changed
    /// byte reaches PM about once, and the old home stays intact until the commit point.
    fn collect(
        &mut self,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(), PoolError> {
        for (i, &vpn) in dirty.iter().enumerate() {
            if let Some(&ahead) = dirty.get(i + PREFETCH_AHEAD) {
                self.prefetch(ahead, source);
            }
            self.t.check_vpn(vpn)?;
            let home = self.t.home(vpn);
            if let Some(new) = source.written_home(vpn) {
                self.written_page(vpn, home, new)?;
                continue;
            }
            if home == Home::Transient {
                continue;
            }
            // Room kept for the pages after this one, should they all need 64-byte records.
            let reserve = (dirty.len() - i - 1) as u64 * LOG_HEADER_SIZE as u64;
            let mut result = Ok(());
            source
                .with_page(vpn, &mut |page| {
                    result = self.page(vpn, home, page, reserve)
                })
                .map_err(|source| PoolError::Source { vpn, source })?;
            result?;
        }
        Ok(())
    }

    /// Starts loading the lines the diff of page `vpn` will sample first: in its home, and in
    /// the home the source streamed it into, if any.
    fn prefetch(&self, vpn: u64, source: &(impl PageSource + ?Sized)) {
        if self.t.check_vpn(vpn).is_err() {
            return;
        }
        let homes = [Some(self.t.home(vpn)), source.written_home(vpn)];
        for (dev, off) in homes
            .into_iter()
            .flatten()
            .filter_map(|h| self.homes.location(h))
        {
            prefetch_sample(dev, off);
        }
    }

    /// One page of [`LogBuilder::collect`].
    fn page(&mut self, vpn: u64, home: Home, page: &[u8], reserve: u64) -> Result<(), PoolError> {
        let page_len = PAGE_SIZE as usize;
        let exact = |mask: u64| (mask, mask.count_ones());
        let (mask, lines) = match self.homes.location(home) {
            Some((dev, off)) => {
                let mut found = (0, 0);
                dev.with_bytes(off, page_len, &mut |base| found = changed_lines(page, base))?;
                found
            }
            None => exact(diff_mask(page, &ZERO_PAGE)),
        };
        if mask == 0 {
            return Ok(());
        }
        let log_cap = self.t.desc().log_bytes;
        let line_record = LOG_HEADER_SIZE as u64 + mask.count_ones() as u64 * LINE_SIZE;
        let log_tight = self.log.len() + line_record + reserve > log_cap;
        let target = match home {
            Home::None => Some(self.homes.alloc(self.t)?),
            _ if mask.count_ones() >= COW_LINES || log_tight => {
                match self.homes.alloc_same_tier(self.t, home)? {
                    // A full log takes whole pages copy-on-write (64-byte records) in any tier.
                    None if log_tight => Some(self.homes.alloc(self.t)?),
                    Some(new @ Home::Pm(_)) => {
                        self.replacements += 1;
                        Some(new)
                    }
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
                self.fresh.count(new);
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
        self.changed.push(ChangedPage {
            vpn,
            lines: lines as u8,
        });
        Ok(())
    }
}

impl LogBuilder<'_> {
    /// A page the source streamed whole into `new`, a home reserved before the commit
    /// (`Pool::reserve_home`): installed copy-on-write like a page with many changed lines,
    /// without reading the page again. Its changed lines are estimated from a sample against the
    /// current home (exact when few of the sample differ). A page that turned transient
    /// meanwhile, or that did not change, gives the home back. The streamed bytes count as PM
    /// writes either way: they reached the device.
    fn written_page(&mut self, vpn: u64, home: Home, new: Home) -> Result<(), PoolError> {
        let seen = self.streamed_seen;
        self.streamed_seen += 1;
        debug_assert_eq!(
            self.allocated[seen], new,
            "streamed homes come in page order"
        );
        self.fresh.count(new);
        let lines = match home {
            Home::Transient => 0,
            _ => self.written_lines(home, new)?,
        };
        if lines == 0 {
            self.homes.unalloc(self.t, new);
            // By place, not by search: a search per unchanged page was quadratic in the pages
            // (a tenth of a random writer's pages stay unchanged in a 10 ms epoch).
            self.allocated[seen] = Home::None;
            return Ok(());
        }
        let (dev, off) = self.homes.location(new).expect("a reserved home");
        dev.note_streamed(off, PAGE_SIZE)?;
        self.t.add_write_lines(vpn, (PAGE_SIZE / LINE_SIZE) as u32);
        let header = LogRecordHeader {
            vpn,
            home_word: new.encode(self.t.id(), vpn),
            mask: 0,
            flags: LOG_NEW_HOME,
        };
        let need = self.log.len() + header.record_len() as u64;
        let have = self.t.desc().log_bytes;
        if need > have {
            return Err(PoolError::LogFull { need, have });
        }
        self.log.push(header, &ZERO_PAGE);
        self.changed.push(ChangedPage {
            vpn,
            lines: lines as u8,
        });
        Ok(())
    }

    /// Lines in which the streamed home `new` differs from `home`: estimated from a sample when
    /// most of it differs, else exact.
    fn written_lines(&self, home: Home, new: Home) -> Result<u32, PoolError> {
        let page_len = PAGE_SIZE as usize;
        let (dev, off) = self.homes.location(new).expect("a reserved home");
        let mut lines = Ok(0);
        dev.with_bytes(off, page_len, &mut |written| {
            lines = match self.homes.location(home) {
                None => Ok(diff_mask(written, &ZERO_PAGE).count_ones()),
                Some((old_dev, old_off)) => {
                    let mut n = 0;
                    old_dev
                        .with_bytes(old_off, page_len, &mut |old| {
                            n = changed_lines(written, old).1
                        })
                        .map(|()| n)
                }
            };
        })?;
        Ok(lines?)
    }
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

    use crate::pm::sim::SimPm;
    use crate::pool::{Pool, PoolConfig, TenantConfig};

    use super::*;

    const PAGE: usize = PAGE_SIZE as usize;

    /// A page rewritten copy-on-write holds two PM homes until its commit is applied; pages the
    /// same commit homes for the first time still get PM homes while the tenant's pages fit its
    /// quota (they went to the capacity file, for good, when the spare homes counted).
    #[test]
    fn rewrites_beside_new_pages_do_not_push_them_out_of_pm() {
        let cfg = PoolConfig {
            size: 64 * PAGE_SIZE,
            max_tenants: 1,
            meta_bytes: 16 * PAGE_SIZE,
            pool_id: 3,
        };
        let mut pool = Pool::create(
            Arc::new(SimPm::new(64 * PAGE_SIZE)),
            Arc::new(SimPm::new(0)),
            &cfg,
        )
        .unwrap();
        let t = pool
            .add_tenant(&TenantConfig {
                name: "t".into(),
                vpm_bytes: 4 * PAGE_SIZE,
                pm_quota_bytes: 4 * PAGE_SIZE,
                dram_budget_bytes: 0,
                log_bytes: 4 * PAGE_SIZE,
            })
            .unwrap();
        let mut img = vec![1u8; 4 * PAGE];
        pool.commit_epoch(t, &[0, 1], &img).unwrap();
        // Pages 0 and 1 rewritten whole (copy-on-write), pages 2 and 3 written for the first time.
        img.fill(2);
        pool.commit_epoch(t, &[0, 1, 2, 3], &img).unwrap();
        let tenant = pool.tenant(t).unwrap();
        assert_eq!(
            tenant.home_counts(),
            (4, 0),
            "four pages within a four-page PM quota: every home in PM"
        );
        for vpn in 0..4 {
            assert!(matches!(tenant.home(vpn), Home::Pm(_)), "page {vpn}");
        }
        let mut page = vec![0u8; PAGE];
        pool.read_home(t, 3, &mut page).unwrap();
        assert_eq!(page, img[3 * PAGE..]);
        assert!(
            !pool.tenant(t).unwrap().pm_quota_left(),
            "the quota is used up"
        );
    }
}

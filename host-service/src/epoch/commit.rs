//! Epoch commits (see the protocol in the module above).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vpm_abi::{LINE_SIZE, PAGE_SIZE};

use super::log::{apply, diff_mask, mostly_changed, RedoLog};
use super::PageSource;
use crate::pm::{write_durable, PmDevice};
use crate::pool::layout::{
    CommitRecord, Home, LogRecordHeader, APPLIED_WORD_OFF, LOG_HEADER_SIZE, LOG_NEW_HOME,
};
use crate::pool::{check_vpn, Pool, PoolError};

static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

/// Changed lines at or above which a page is written whole into a fresh home instead of logged.
const COW_LINES: u32 = 32;

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

impl Pool {
    /// Commits epoch k+1 of `tenant`: the content `source` shows for every page in `dirty` (pages
    /// not listed are unchanged since epoch k). Transient pages are skipped. On any error nothing
    /// is committed and the tenant stays at epoch k.
    pub fn commit_epoch(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<CommitStats, PoolError> {
        self.commit_epoch_changed(tenant, dirty, source)
            .map(|(stats, _)| stats)
    }

    /// [`Pool::commit_epoch`], also returning the pages whose content changed (ascending): the
    /// dirty pages that were not transient and differed from their homes.
    pub fn commit_epoch_changed(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(CommitStats, Vec<u64>), PoolError> {
        let start = Instant::now();
        let mut dirty = dirty.to_vec();
        dirty.sort_unstable();
        dirty.dedup();
        let (log, allocated, fresh) = self.build_log(tenant, &dirty, source)?;
        let written = self.write_log_and_commit(tenant, &log);
        if let Err(e) = written {
            for home in allocated {
                self.unalloc_home(tenant, home);
            }
            return Err(e);
        }
        let until_commit = start.elapsed();

        let (pm, cap, data_off) = (self.pm.clone(), self.cap.clone(), self.header.data_off);
        let t = self.tenant_mut(tenant)?;
        let mut applied = apply(&*pm, &*cap, data_off, t, &log)?;
        write_durable(
            &*pm,
            t.desc.commit_off + APPLIED_WORD_OFF,
            &t.seq.to_le_bytes(),
        )?;
        for old in std::mem::take(&mut applied.released) {
            self.unalloc_home(tenant, old);
        }
        applied.pm_bytes += fresh.pm_bytes;
        applied.capacity_bytes += fresh.capacity_bytes;
        let t = self.tenant_mut(tenant)?;

        let stats = CommitStats {
            epoch: t.epoch,
            dirty_pages: dirty.len() as u64,
            changed_pages: log.records.len() as u64,
            changed_lines: fresh.lines
                + log
                    .records
                    .iter()
                    .map(|(h, _)| h.mask.count_ones() as u64)
                    .sum::<u64>(),
            log_bytes: log.bytes.len() as u64,
            pm_home_bytes: applied.pm_bytes,
            capacity_home_bytes: applied.capacity_bytes,
            until_commit_us: until_commit.as_micros() as u64,
            total_us: start.elapsed().as_micros() as u64,
        };
        let s = &mut t.stats;
        s.epochs += 1;
        s.committed_pages += stats.changed_pages;
        s.log_bytes += stats.log_bytes;
        s.pm_home_bytes += applied.pm_bytes;
        s.capacity_home_bytes += applied.capacity_bytes;
        tracing::debug!(
            tenant,
            epoch = stats.epoch,
            pages = stats.changed_pages,
            "committed epoch"
        );
        Ok((stats, log.records.iter().map(|(h, _)| h.vpn).collect()))
    }

    /// Step 1: the redo log, the homes newly taken for it, and what was written to them.
    fn build_log(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(RedoLog, Vec<Home>, Fresh), PoolError> {
        let mut log = RedoLog::default();
        let mut allocated = Vec::new();
        let mut fresh = Fresh::default();
        let result =
            self.collect_changes(tenant, dirty, source, &mut log, &mut allocated, &mut fresh);
        if let Err(e) = result {
            for home in allocated {
                self.unalloc_home(tenant, home);
            }
            return Err(e);
        }
        Ok((log, allocated, fresh))
    }

    /// Diffs each dirty page against its home. A page with many changed lines (or no home yet) is
    /// written whole into a fresh home of the same tier, copy-on-write, and logged without payload;
    /// a page with few changed lines logs just those lines. Either way each changed byte reaches PM
    /// about once, and the old home stays intact until the commit point.
    fn collect_changes(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
        log: &mut RedoLog,
        allocated: &mut Vec<Home>,
        fresh: &mut Fresh,
    ) -> Result<(), PoolError> {
        for (i, &vpn) in dirty.iter().enumerate() {
            let home = {
                let t = self.tenant(tenant)?;
                check_vpn(t, vpn)?;
                t.homes[vpn as usize]
            };
            if home == Home::Transient {
                continue;
            }
            // Room kept for the pages after this one, should they all need 64-byte records.
            let reserve = (dirty.len() - i - 1) as u64 * LOG_HEADER_SIZE as u64;
            let mut result = Ok(());
            source
                .with_page(vpn, &mut |page| {
                    let r =
                        self.collect_page(tenant, vpn, home, page, reserve, log, allocated, fresh);
                    result = r;
                })
                .map_err(|why| PoolError::Source { vpn, why })?;
            result?;
        }
        Ok(())
    }

    /// One page of [`Pool::collect_changes`].
    #[allow(clippy::too_many_arguments)]
    fn collect_page(
        &mut self,
        tenant: u32,
        vpn: u64,
        home: Home,
        page: &[u8],
        reserve: u64,
        log: &mut RedoLog,
        allocated: &mut Vec<Home>,
        fresh: &mut Fresh,
    ) -> Result<(), PoolError> {
        let page_len = PAGE_SIZE as usize;
        let mask = match self.home_location(home) {
            Some((dev, off)) => {
                let mut mask = 0;
                dev.with_bytes(off, page_len, &mut |base| {
                    mask = if mostly_changed(page, base) {
                        u64::MAX
                    } else {
                        diff_mask(page, base)
                    }
                })?;
                mask
            }
            None => diff_mask(page, &ZERO_PAGE),
        };
        if mask == 0 {
            return Ok(());
        }
        let log_cap = self.tenant(tenant)?.desc.log_bytes;
        let line_record = LOG_HEADER_SIZE as u64 + mask.count_ones() as u64 * LINE_SIZE;
        let log_tight = log.bytes.len() as u64 + line_record + reserve > log_cap;
        let target = match home {
            Home::None => Some(self.alloc_home(tenant)?),
            _ if mask.count_ones() >= COW_LINES || log_tight => {
                match self.alloc_same_tier(tenant, home)? {
                    // A full log takes whole pages copy-on-write (64-byte records) in any tier.
                    None if log_tight => Some(self.alloc_home(tenant)?),
                    other => other,
                }
            }
            _ => None,
        };
        let header = match target {
            Some(new) => {
                allocated.push(new);
                let (dev, off) = self.home_location(new).expect("allocated home");
                dev.write_flush(off, page)?;
                fresh.count(new, mask);
                self.tenant_mut(tenant)?.write_lines[vpn as usize] += 64;
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
        let need = (log.bytes.len() + header.record_len()) as u64;
        if need > log_cap {
            return Err(PoolError::LogFull {
                need,
                have: log_cap,
            });
        }
        log.push(header, page);
        Ok(())
    }

    /// A fresh home in the same tier as `home`, for a copy-on-write rewrite. The quota is not
    /// checked: the old home is freed when the epoch is applied, so the tenant holds both only
    /// for the duration of the commit.
    fn alloc_same_tier(&mut self, tenant: u32, home: Home) -> Result<Option<Home>, PoolError> {
        let new = match home {
            Home::Pm(_) => self.pm_slots.alloc().map(Home::Pm),
            _ => match self.alloc_home(tenant)? {
                h @ Home::Capacity(_) => return Ok(Some(h)),
                other => {
                    self.unalloc_home(tenant, other);
                    return Ok(None);
                }
            },
        };
        if let Some(h) = new {
            self.tenant_mut(tenant)?.pm_homes += 1;
            return Ok(Some(h));
        }
        Ok(None)
    }

    /// Steps 2 and 3: the log, then the commit record.
    fn write_log_and_commit(&mut self, tenant: u32, log: &RedoLog) -> Result<(), PoolError> {
        let (pm, cap) = (self.pm.clone(), self.cap.clone());
        let t = self.tenant_mut(tenant)?;
        if !log.bytes.is_empty() {
            pm.write_flush(t.desc.log_off, &log.bytes)?;
        }
        // Fresh homes (either device) and the log are durable before the commit record.
        pm.drain()?;
        cap.drain()?;
        let record = CommitRecord {
            seq: t.seq + 1,
            epoch: t.epoch + 1,
            log_bytes: log.bytes.len() as u64,
            log_count: log.records.len() as u32,
            log_crc: log.crc(),
            time_ns: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
        };
        let slot = t.latest_slot ^ 1;
        let off = t.desc.commit_off + slot * crate::pool::layout::COMMIT_RECORD_SIZE as u64;
        write_durable(&*pm as &dyn PmDevice, off, &record.encode())?;
        t.seq = record.seq;
        t.epoch = record.epoch;
        t.latest_slot = slot;
        Ok(())
    }
}

//! The redo log of one epoch: built in DRAM, written to the tenant's log area before the commit
//! record, and applied to the homes after it (again by recovery if a crash came in between).

use vpm_abi::{LINE_SIZE, PAGE_SIZE};

use super::error::PoolError;
use super::homes::HomeStore;
use super::lines::{masked_lines, unmask_lines, write_lines};
use super::media::{Home, LayoutError, LogRecordHeader, LOG_HEADER_SIZE, LOG_NEW_HOME};
use super::tenant::Tenant;

/// Records of one epoch, encoded back to back.
#[derive(Debug, Default)]
pub(super) struct RedoLog {
    bytes: Vec<u8>,
    /// Each record's header and the offset of its payload in `bytes`.
    records: Vec<(LogRecordHeader, usize)>,
}

impl RedoLog {
    /// Appends a record for page `h.vpn` carrying the lines of `page` selected by `h.mask`.
    pub(super) fn push(&mut self, h: LogRecordHeader, page: &[u8]) {
        let payload = masked_lines(page, h.mask);
        self.bytes.extend_from_slice(&h.encode(&payload));
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&payload);
        self.records.push((h, at));
    }

    /// The encoded log, as written to PM.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes of the encoded log.
    pub(super) fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Number of records.
    pub(super) fn count(&self) -> usize {
        self.records.len()
    }

    /// The records' headers, in log order.
    pub(super) fn headers(&self) -> impl Iterator<Item = &LogRecordHeader> {
        self.records.iter().map(|(h, _)| h)
    }

    /// CRC of the whole log, stored in the commit record.
    pub(super) fn crc(&self) -> u32 {
        crc32fast::hash(&self.bytes)
    }

    /// Parses and checks a log read back from PM: the CRC and record count of its commit record,
    /// and every record against the tenant.
    pub(super) fn parse(
        bytes: Vec<u8>,
        count: u32,
        crc: u32,
        tenant: u32,
        vpm_pages: u64,
    ) -> Result<RedoLog, LayoutError> {
        let what = || format!("tenant {tenant} committed redo log");
        let computed = crc32fast::hash(&bytes);
        if computed != crc {
            return Err(LayoutError::Checksum {
                what: what(),
                stored: crc,
                computed,
            });
        }
        let mut records = Vec::with_capacity((count as usize).min(bytes.len() / LOG_HEADER_SIZE));
        let mut at = 0;
        for _ in 0..count {
            let (h, _) = LogRecordHeader::decode(&bytes[at..], tenant, vpm_pages)?;
            records.push((h, at + LOG_HEADER_SIZE));
            at += h.record_len();
        }
        if at != bytes.len() {
            return Err(LayoutError::Invalid {
                what: what(),
                why: format!("{count} records end at {at}, log has {} bytes", bytes.len()),
            });
        }
        Ok(RedoLog { bytes, records })
    }

    /// The payload of record `i`.
    fn payload(&self, i: usize) -> &[u8] {
        let (h, at) = &self.records[i];
        &self.bytes[*at..*at + h.mask.count_ones() as usize * LINE_SIZE as usize]
    }
}

/// What the apply of a log did.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Bytes written to PM homes.
    pub(super) pm_bytes: u64,
    /// Bytes written to capacity homes.
    pub(super) capacity_bytes: u64,
    /// Homes the applied records replaced; the caller returns them to the allocators.
    pub(super) released: Vec<Home>,
}

/// Applies every record of `log` to tenant `t`: line records are written into their homes,
/// new-home records are installed in the page map (their data is already there). Drains.
/// Idempotent, so recovery may run it again after a crash during apply.
pub(super) fn apply(
    homes: &HomeStore,
    t: &mut Tenant,
    log: &RedoLog,
) -> Result<Applied, PoolError> {
    let pm = &**homes.pm();
    let mut out = Applied::default();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut map_words = (u64::MAX, 0u64);
    for (i, (h, _)) in log.records.iter().enumerate() {
        let home = Home::decode(h.home_word, t.id(), h.vpn)?;
        if h.flags & LOG_NEW_HOME != 0 {
            let word_off = t.map_word_off(h.vpn);
            pm.write_u64(word_off, h.home_word)?;
            map_words = (map_words.0.min(word_off), map_words.1.max(word_off + 8));
            let old = t.set_home(h.vpn, home);
            if old != home && matches!(old, Home::Pm(_) | Home::Capacity(_)) {
                out.released.push(old);
            }
            continue;
        }
        let counter = match home {
            Home::Pm(_) => &mut out.pm_bytes,
            Home::Capacity(_) => &mut out.capacity_bytes,
            _ => unreachable!("log records name PM or capacity homes (checked at decode)"),
        };
        let (dev, off) = homes.location(home).expect("PM or capacity home");
        unmask_lines(log.payload(i), h.mask, &mut page);
        *counter += write_lines(dev, off, &page, h.mask)?;
        t.add_write_lines(h.vpn, h.mask.count_ones());
    }
    if map_words.0 < map_words.1 {
        // One flush over the changed stretch of the page map (dirty pages are usually close).
        pm.flush(map_words.0, map_words.1 - map_words.0)?;
    }
    homes.drain()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::pm::sim::SimPm;
    use crate::pm::PmDevice;
    use crate::pool::media::{PoolHeader, TenantDesc, NAME_LEN};

    const LINE: usize = LINE_SIZE as usize;

    fn line_record(tenant: u32, vpn: u64, slot: u64, mask: u64) -> LogRecordHeader {
        LogRecordHeader {
            vpn,
            home_word: Home::Pm(slot).encode(tenant, vpn),
            mask,
            flags: 0,
        }
    }

    fn new_home_record(tenant: u32, vpn: u64, home: Home) -> LogRecordHeader {
        LogRecordHeader {
            vpn,
            home_word: home.encode(tenant, vpn),
            mask: 0,
            flags: LOG_NEW_HOME,
        }
    }

    /// A log of a line record for page 1 (PM slot 0) and a new home for page 2 (PM slot 1).
    fn sample_log(page: &[u8]) -> RedoLog {
        let mut log = RedoLog::default();
        log.push(line_record(3, 1, 0, 0b1010), page);
        log.push(new_home_record(3, 2, Home::Pm(1)), page);
        log
    }

    #[test]
    fn a_log_round_trips_through_its_bytes() {
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i % 251) as u8).collect();
        let log = sample_log(&page);
        assert_eq!(log.len(), 2 * LOG_HEADER_SIZE as u64 + 2 * LINE_SIZE);
        let back = RedoLog::parse(log.bytes().to_vec(), 2, log.crc(), 3, 8).unwrap();
        assert_eq!(
            back.headers().collect::<Vec<_>>(),
            log.headers().collect::<Vec<_>>()
        );
        assert_eq!(
            back.payload(0),
            &[&page[LINE..2 * LINE], &page[3 * LINE..4 * LINE]].concat()[..]
        );
        assert!(back.payload(1).is_empty());
    }

    #[test]
    fn a_damaged_log_is_refused() {
        let page = vec![7u8; PAGE_SIZE as usize];
        let log = sample_log(&page);
        let bytes = log.bytes().to_vec();
        // A flipped bit fails the log's CRC.
        let mut flipped = bytes.clone();
        flipped[LOG_HEADER_SIZE + 5] ^= 1;
        assert!(matches!(
            RedoLog::parse(flipped.clone(), 2, log.crc(), 3, 8),
            Err(LayoutError::Checksum { .. })
        ));
        // Even with a matching log CRC, the record's own CRC catches it.
        let crc = crc32fast::hash(&flipped);
        assert!(matches!(
            RedoLog::parse(flipped, 2, crc, 3, 8),
            Err(LayoutError::Checksum { .. })
        ));
        // A count that does not cover the bytes, or runs past them.
        assert!(matches!(
            RedoLog::parse(bytes.clone(), 1, log.crc(), 3, 8),
            Err(LayoutError::Invalid { .. })
        ));
        assert!(matches!(
            RedoLog::parse(bytes.clone(), 3, log.crc(), 3, 8),
            Err(LayoutError::Truncated { .. })
        ));
        // Records of another tenant, or pages beyond the vPM.
        assert!(RedoLog::parse(bytes.clone(), 2, log.crc(), 4, 8).is_err());
        assert!(RedoLog::parse(bytes, 2, log.crc(), 3, 2).is_err());
    }

    fn store() -> (HomeStore, Tenant) {
        let header = PoolHeader {
            total_bytes: 16 * PAGE_SIZE,
            max_tenants: 4,
            table_off: PAGE_SIZE,
            meta_off: 2 * PAGE_SIZE,
            meta_bytes: 4 * PAGE_SIZE,
            data_off: 6 * PAGE_SIZE,
            data_pages: 10,
            pool_id: 1,
        };
        let pm: Arc<dyn PmDevice> = Arc::new(SimPm::new(header.total_bytes));
        let cap: Arc<dyn PmDevice> = Arc::new(SimPm::new(0));
        let t = Tenant::fresh(TenantDesc {
            id: 3,
            name: [0; NAME_LEN],
            vpm_pages: 8,
            pm_quota_pages: 8,
            dram_budget_pages: 0,
            commit_off: 2 * PAGE_SIZE,
            map_off: 3 * PAGE_SIZE,
            log_off: 4 * PAGE_SIZE,
            log_bytes: 2 * PAGE_SIZE,
        });
        (HomeStore::new(pm, cap, &header), t)
    }

    #[test]
    fn apply_writes_lines_installs_homes_and_may_run_again() {
        let (mut homes, mut t) = store();
        for home in [Home::Pm(0), Home::Pm(1), Home::Pm(2)] {
            assert!(homes.claim(&mut t, home));
        }
        t.set_home(1, Home::Pm(0));
        t.set_home(2, Home::Pm(2));
        let page = vec![0x5au8; PAGE_SIZE as usize];
        let log = sample_log(&page);
        let applied = apply(&homes, &mut t, &log).unwrap();
        assert_eq!(applied.pm_bytes, 2 * LINE_SIZE);
        assert_eq!(applied.released, vec![Home::Pm(2)]);
        assert_eq!(t.home(2), Home::Pm(1));
        let mut got = vec![0u8; PAGE_SIZE as usize];
        homes.read(Home::Pm(0), &mut got).unwrap();
        assert_eq!(diff_of(&got), 0b1010);
        let mut word = [0u8; 8];
        homes.pm().read(t.map_word_off(2), &mut word).unwrap();
        assert_eq!(
            Home::decode(u64::from_le_bytes(word), 3, 2),
            Ok(Home::Pm(1))
        );

        // A crash during apply: recovery applies the whole log again, to the same result; the
        // home already installed is not released twice.
        let again = apply(&homes, &mut t, &log).unwrap();
        assert!(again.released.is_empty());
        let mut got2 = vec![0u8; PAGE_SIZE as usize];
        homes.read(Home::Pm(0), &mut got2).unwrap();
        assert_eq!(got, got2);
        assert_eq!(t.write_lines(1), 4);
    }

    fn diff_of(page: &[u8]) -> u64 {
        super::super::lines::diff_mask(page, &vec![0u8; PAGE_SIZE as usize])
    }
}

//! The redo log of one epoch: built in DRAM, written to the tenant's log area before the commit
//! record, and applied to the homes after it (again by recovery if a crash came in between).

use vpm_abi::{LINE_SIZE, PAGE_SIZE};

use crate::pm::PmDevice;
use crate::pool::layout::{Home, LayoutError, LogRecordHeader, LOG_HEADER_SIZE, LOG_NEW_HOME};
use crate::pool::{PoolError, Tenant};

/// Records of one epoch, encoded back to back.
#[derive(Debug, Default)]
pub(crate) struct RedoLog {
    pub(crate) bytes: Vec<u8>,
    /// Each record's header and the offset of its payload in `bytes`.
    pub(crate) records: Vec<(LogRecordHeader, usize)>,
}

impl RedoLog {
    /// Appends a record for page `h.vpn` carrying the lines of `page` selected by `h.mask`.
    pub(crate) fn push(&mut self, h: LogRecordHeader, page: &[u8]) {
        let payload = masked_lines(page, h.mask);
        self.bytes.extend_from_slice(&h.encode(&payload));
        let at = self.bytes.len();
        self.bytes.extend_from_slice(&payload);
        self.records.push((h, at));
    }

    /// CRC of the whole log, stored in the commit record.
    pub(crate) fn crc(&self) -> u32 {
        crc32fast::hash(&self.bytes)
    }

    /// Parses and checks a log read back from PM.
    pub(crate) fn parse(
        bytes: Vec<u8>,
        count: u32,
        crc: u32,
        tenant: u32,
        vpm_pages: u64,
    ) -> Result<RedoLog, LayoutError> {
        let computed = crc32fast::hash(&bytes);
        if computed != crc {
            return Err(LayoutError::Checksum {
                what: format!("tenant {tenant} committed redo log"),
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
                what: format!("tenant {tenant} committed redo log"),
                why: format!("{count} records end at {at}, log has {} bytes", bytes.len()),
            });
        }
        Ok(RedoLog { bytes, records })
    }

    /// The payload of record `i`.
    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let (h, at) = &self.records[i];
        &self.bytes[*at..*at + h.mask.count_ones() as usize * LINE_SIZE as usize]
    }
}

/// The lines of `page` selected by `mask`, concatenated.
fn masked_lines(page: &[u8], mask: u64) -> Vec<u8> {
    let line = LINE_SIZE as usize;
    let mut out = Vec::with_capacity(mask.count_ones() as usize * line);
    for i in (0..64).filter(|i| mask & (1 << i) != 0) {
        out.extend_from_slice(&page[i * line..(i + 1) * line]);
    }
    out
}

/// Bit mask of the lines in which pages `a` and `b` differ.
pub(crate) fn diff_mask(a: &[u8], b: &[u8]) -> u64 {
    // Unchanged pages are common (pages left writable across epochs): the library's vectorised
    // comparison settles them fastest.
    if a == b {
        return 0;
    }
    let line = LINE_SIZE as usize;
    let mut mask = 0u64;
    for (i, (la, lb)) in a.chunks_exact(line).zip(b.chunks_exact(line)).enumerate() {
        let mut x = 0u64;
        for (wa, wb) in la.chunks_exact(8).zip(lb.chunks_exact(8)) {
            let wa = u64::from_ne_bytes(wa.try_into().expect("8 bytes"));
            let wb = u64::from_ne_bytes(wb.try_into().expect("8 bytes"));
            x |= wa ^ wb;
        }
        mask |= ((x != 0) as u64) << i;
    }
    mask
}

/// Lines compared by [`mostly_changed`], spread over the page.
const SAMPLE_LINES: [usize; 8] = [0, 9, 18, 27, 36, 45, 54, 63];

/// Whether at least 6 of 8 sampled lines differ: then the page is rewritten whole without a full
/// diff (reading the old page would cost as much memory traffic as writing the new one).
pub(crate) fn mostly_changed(a: &[u8], b: &[u8]) -> bool {
    let line = LINE_SIZE as usize;
    let changed = SAMPLE_LINES
        .iter()
        .filter(|&&l| a[l * line..(l + 1) * line] != b[l * line..(l + 1) * line])
        .count();
    changed >= 6
}

/// Writes the lines of `page` selected by `mask` to `dev` at `off` as runs of adjacent lines and
/// flushes them; returns bytes written.
pub(crate) fn write_lines(
    dev: &dyn PmDevice,
    off: u64,
    page: &[u8],
    mask: u64,
) -> Result<u64, PoolError> {
    let line = LINE_SIZE as usize;
    let mut written = 0;
    let mut i = 0;
    while i < 64 {
        if mask & (1 << i) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < 64 && mask & (1 << i) != 0 {
            i += 1;
        }
        let (a, b) = (start * line, i * line);
        dev.write_flush(off + a as u64, &page[a..b])?;
        written += (b - a) as u64;
    }
    Ok(written)
}

/// What the apply of a log did.
#[derive(Default)]
pub(crate) struct Applied {
    pub(crate) pm_bytes: u64,
    pub(crate) capacity_bytes: u64,
    /// Homes the applied records replaced; the caller returns them to the allocators.
    pub(crate) released: Vec<Home>,
}

/// Applies every record of `log`: line records are written into their homes, new-home records
/// are installed in the page map (their data is already there). Drains. Idempotent, so recovery
/// may run it again after a crash during apply.
pub(crate) fn apply(
    pm: &dyn PmDevice,
    cap: &dyn PmDevice,
    data_off: u64,
    tenant: &mut Tenant,
    log: &RedoLog,
) -> Result<Applied, PoolError> {
    let mut out = Applied::default();
    let mut page = vec![0u8; PAGE_SIZE as usize];
    let mut map_words = (u64::MAX, 0u64);
    for (i, (h, _)) in log.records.iter().enumerate() {
        let home = Home::decode(h.home_word, tenant.desc.id, h.vpn)?;
        if h.flags & LOG_NEW_HOME != 0 {
            let word_off = tenant.desc.map_off + h.vpn * 8;
            pm.write_u64(word_off, h.home_word)?;
            map_words = (map_words.0.min(word_off), map_words.1.max(word_off + 8));
            let old = std::mem::replace(&mut tenant.homes[h.vpn as usize], home);
            if old != home && matches!(old, Home::Pm(_) | Home::Capacity(_)) {
                out.released.push(old);
            }
            continue;
        }
        let (dev, off, counter): (&dyn PmDevice, u64, &mut u64) = match home {
            Home::Pm(s) => (pm, data_off + s * PAGE_SIZE, &mut out.pm_bytes),
            Home::Capacity(s) => (cap, s * PAGE_SIZE, &mut out.capacity_bytes),
            _ => unreachable!("log records name PM or capacity homes (checked at decode)"),
        };
        let payload = log.payload(i);
        let line = LINE_SIZE as usize;
        for (k, l) in (0..64).filter(|l| h.mask & (1 << l) != 0).enumerate() {
            page[l * line..(l + 1) * line].copy_from_slice(&payload[k * line..(k + 1) * line]);
        }
        *counter += write_lines(dev, off, &page, h.mask)?;
        tenant.write_lines[h.vpn as usize] =
            tenant.write_lines[h.vpn as usize].saturating_add(h.mask.count_ones());
    }
    if map_words.0 < map_words.1 {
        // One flush over the changed stretch of the page map (dirty pages are usually close).
        pm.flush(map_words.0, map_words.1 - map_words.0)?;
    }
    pm.drain()?;
    cap.drain()?;
    Ok(out)
}

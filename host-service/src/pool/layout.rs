//! The pool's durable format: every structure, its encoding, and its checks.
//!
//! ```text
//! pool file: [header page][tenant table][metadata region: per tenant commit page, page map, log][data: PM homes]
//! capacity file: capacity homes, 4 KiB each
//! ```
//! Every structure carries a CRC-32; single words that must change atomically are 8 bytes and
//! carry their own check bits. Decoders never panic: any byte string gives a value or an error.

use vpm_abi::PAGE_SIZE;

/// `"VPMPOOL1"` as a little-endian u64.
pub const POOL_MAGIC: u64 = u64::from_le_bytes(*b"VPMPOOL1");
/// The on-PM format version this build reads and writes.
pub const POOL_VERSION: u32 = 1;
/// Size of a tenant descriptor in the tenant table.
pub const TENANT_DESC_SIZE: u64 = 256;
/// High half of an active tenant's state word (`"TNNT"`).
pub const TENANT_ACTIVE: u32 = u32::from_le_bytes(*b"TNNT");
/// Size of one commit record.
pub const COMMIT_RECORD_SIZE: usize = 64;
/// Offset, in a tenant's commit page, of the word holding the applied record's sequence.
pub const APPLIED_WORD_OFF: u64 = 128;
/// Size of a redo-log record header; payload lines follow it.
pub const LOG_HEADER_SIZE: usize = 64;
/// Length of a tenant name.
pub const NAME_LEN: usize = 32;

/// Why a structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// Not a VPM pool at all.
    #[error("not a VPM pool (magic {0:#018x})")]
    NotAPool(u64),
    /// A pool of another format version.
    #[error("pool format version {found}, this build reads version {POOL_VERSION}")]
    Version {
        /// Version found in the header.
        found: u32,
    },
    /// A checksum did not match.
    #[error("{what}: checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// Which structure.
        what: String,
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// A field holds an impossible value.
    #[error("{what}: {why}")]
    Invalid {
        /// Which structure.
        what: String,
        /// What is wrong.
        why: String,
    },
    /// The bytes end too early.
    #[error("{what}: truncated ({have} of {need} bytes)")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes present.
        have: usize,
        /// Bytes needed.
        need: usize,
    },
}

fn invalid(what: impl Into<String>, why: impl Into<String>) -> LayoutError {
    LayoutError::Invalid {
        what: what.into(),
        why: why.into(),
    }
}

/// Little-endian field reader over a byte slice of checked length.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn u32(&self, off: usize) -> u32 {
        u32::from_le_bytes(self.0[off..off + 4].try_into().expect("4 bytes"))
    }
    fn u64(&self, off: usize) -> u64 {
        u64::from_le_bytes(self.0[off..off + 8].try_into().expect("8 bytes"))
    }
}

fn need(what: &'static str, bytes: &[u8], n: usize) -> Result<(), LayoutError> {
    if bytes.len() < n {
        return Err(LayoutError::Truncated {
            what,
            have: bytes.len(),
            need: n,
        });
    }
    Ok(())
}

fn check_crc(what: impl Into<String>, covered: &[u8], stored: u32) -> Result<(), LayoutError> {
    let computed = crc32fast::hash(covered);
    if computed != stored {
        return Err(LayoutError::Checksum {
            what: what.into(),
            stored,
            computed,
        });
    }
    Ok(())
}

/// Where everything is in a pool file; fixed at creation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolHeader {
    /// Size of the pool file.
    pub total_bytes: u64,
    /// Entries in the tenant table.
    pub max_tenants: u32,
    /// Offset of the tenant table.
    pub table_off: u64,
    /// Offset and size of the metadata region (commit pages, page maps, logs).
    pub meta_off: u64,
    /// Size of the metadata region.
    pub meta_bytes: u64,
    /// Offset of the first PM home.
    pub data_off: u64,
    /// Number of PM homes.
    pub data_pages: u64,
    /// Random identity of the pool, to tell pools apart.
    pub pool_id: u64,
}

/// Size of the encoded header.
pub const HEADER_BYTES: usize = 80;

impl PoolHeader {
    /// Encodes the header, CRC last.
    pub fn encode(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&POOL_MAGIC.to_le_bytes());
        b[8..12].copy_from_slice(&POOL_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        b[16..24].copy_from_slice(&self.total_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.max_tenants.to_le_bytes());
        b[28..36].copy_from_slice(&self.table_off.to_le_bytes());
        b[36..44].copy_from_slice(&self.meta_off.to_le_bytes());
        b[44..52].copy_from_slice(&self.meta_bytes.to_le_bytes());
        b[52..60].copy_from_slice(&self.data_off.to_le_bytes());
        b[60..68].copy_from_slice(&self.data_pages.to_le_bytes());
        b[68..76].copy_from_slice(&self.pool_id.to_le_bytes());
        let crc = crc32fast::hash(&b[..76]);
        b[76..80].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header read from the start of a file of `file_size` bytes.
    pub fn decode(bytes: &[u8], file_size: u64) -> Result<PoolHeader, LayoutError> {
        need("pool header", bytes, HEADER_BYTES)?;
        let f = Fields(bytes);
        let magic = f.u64(0);
        if magic != POOL_MAGIC {
            return Err(LayoutError::NotAPool(magic));
        }
        let version = f.u32(8);
        if version != POOL_VERSION {
            return Err(LayoutError::Version { found: version });
        }
        check_crc("pool header", &bytes[..76], f.u32(76))?;
        if f.u32(12) as u64 != PAGE_SIZE {
            return Err(invalid("pool header", format!("page size {}", f.u32(12))));
        }
        let h = PoolHeader {
            total_bytes: f.u64(16),
            max_tenants: f.u32(24),
            table_off: f.u64(28),
            meta_off: f.u64(36),
            meta_bytes: f.u64(44),
            data_off: f.u64(52),
            data_pages: f.u64(60),
            pool_id: f.u64(68),
        };
        h.check(file_size)?;
        Ok(h)
    }

    /// Checks that the regions are page-aligned, ordered, and inside the file.
    pub fn check(&self, file_size: u64) -> Result<(), LayoutError> {
        let bad = |why: String| Err(invalid("pool header", why));
        if self.total_bytes > file_size {
            return bad(format!(
                "pool of {} bytes in a file of {} bytes (truncated?)",
                self.total_bytes, file_size
            ));
        }
        if self.max_tenants == 0 || self.max_tenants > 1024 {
            return bad(format!("max_tenants {}", self.max_tenants));
        }
        let table_end = self.table_off + self.max_tenants as u64 * TENANT_DESC_SIZE;
        let aligned = [
            self.table_off,
            self.meta_off,
            self.meta_bytes,
            self.data_off,
        ]
        .iter()
        .all(|v| v % PAGE_SIZE == 0);
        let data_end = self
            .data_pages
            .checked_mul(PAGE_SIZE)
            .and_then(|b| b.checked_add(self.data_off));
        let meta_end = self.meta_off.checked_add(self.meta_bytes);
        match (data_end, meta_end) {
            (Some(de), Some(me))
                if aligned
                    && self.table_off >= PAGE_SIZE
                    && table_end <= self.meta_off
                    && me <= self.data_off
                    && de <= self.total_bytes => {}
            _ => return bad(format!("inconsistent geometry {self:?}")),
        }
        Ok(())
    }
}

/// A tenant (one VM's vPM) as recorded in the tenant table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantDesc {
    /// Stable tenant id (its index in the table).
    pub id: u32,
    /// Name, NUL-padded.
    pub name: [u8; NAME_LEN],
    /// vPM size in pages.
    pub vpm_pages: u64,
    /// PM homes this tenant may hold; pages beyond it get capacity homes.
    pub pm_quota_pages: u64,
    /// DRAM pages the VMM may use for this tenant's working set.
    pub dram_budget_pages: u64,
    /// Offset of the tenant's commit page.
    pub commit_off: u64,
    /// Offset of its page map (8 bytes per page).
    pub map_off: u64,
    /// Offset of its redo log.
    pub log_off: u64,
    /// Size of its redo log.
    pub log_bytes: u64,
}

/// Bytes of an encoded tenant body (after the 8-byte state word).
pub const TENANT_BODY: usize = 4 + NAME_LEN + 8 * 7;

impl TenantDesc {
    /// Pages of metadata the tenant uses: commit page, page map, log.
    pub fn meta_pages(vpm_pages: u64, log_bytes: u64) -> u64 {
        1 + (vpm_pages * 8).div_ceil(PAGE_SIZE) + log_bytes.div_ceil(PAGE_SIZE)
    }

    /// Metadata byte range `[commit_off, log_off + log_bytes)`.
    pub fn meta_range(&self) -> (u64, u64) {
        (self.commit_off, self.log_off + self.log_bytes)
    }

    /// The name as text (up to the first NUL).
    pub fn name_str(&self) -> String {
        let end = self.name.iter().position(|&b| b == 0).unwrap_or(NAME_LEN);
        String::from_utf8_lossy(&self.name[..end]).into_owned()
    }

    /// Encodes the body (without the state word).
    pub fn encode_body(&self) -> [u8; TENANT_BODY] {
        let mut b = [0u8; TENANT_BODY];
        b[0..4].copy_from_slice(&self.id.to_le_bytes());
        b[4..4 + NAME_LEN].copy_from_slice(&self.name);
        let words = [
            self.vpm_pages,
            self.pm_quota_pages,
            self.dram_budget_pages,
            self.commit_off,
            self.map_off,
            self.log_off,
            self.log_bytes,
        ];
        for (i, w) in words.iter().enumerate() {
            let o = 4 + NAME_LEN + 8 * i;
            b[o..o + 8].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// The state word that activates `body`.
    pub fn active_word(body: &[u8; TENANT_BODY]) -> u64 {
        (TENANT_ACTIVE as u64) << 32 | crc32fast::hash(body) as u64
    }

    /// Decodes table slot `slot` (256 bytes); `Ok(None)` for a free slot.
    pub fn decode(
        slot: u32,
        bytes: &[u8],
        header: &PoolHeader,
    ) -> Result<Option<TenantDesc>, LayoutError> {
        need("tenant descriptor", bytes, 8 + TENANT_BODY)?;
        let what = || format!("tenant slot {slot}");
        let state = Fields(bytes).u64(0);
        if state == 0 {
            return Ok(None);
        }
        if (state >> 32) as u32 != TENANT_ACTIVE {
            return Err(invalid(what(), format!("state word {state:#018x}")));
        }
        let body = &bytes[8..8 + TENANT_BODY];
        check_crc(what(), body, state as u32)?;
        let f = Fields(body);
        let word = |i: usize| f.u64(4 + NAME_LEN + 8 * i);
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&body[4..4 + NAME_LEN]);
        let d = TenantDesc {
            id: f.u32(0),
            name,
            vpm_pages: word(0),
            pm_quota_pages: word(1),
            dram_budget_pages: word(2),
            commit_off: word(3),
            map_off: word(4),
            log_off: word(5),
            log_bytes: word(6),
        };
        d.check(slot, header)?;
        Ok(Some(d))
    }

    fn check(&self, slot: u32, h: &PoolHeader) -> Result<(), LayoutError> {
        let what = format!("tenant slot {slot}");
        if self.id != slot {
            return Err(invalid(what, format!("id {} in slot {slot}", self.id)));
        }
        if self.vpm_pages == 0 || self.vpm_pages > 1 << 36 {
            return Err(invalid(what, format!("vpm_pages {}", self.vpm_pages)));
        }
        let map_bytes = (self.vpm_pages * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let laid_out = self.map_off == self.commit_off + PAGE_SIZE
            && self.log_off == self.map_off + map_bytes
            && self.commit_off % PAGE_SIZE == 0
            && self.log_bytes % PAGE_SIZE == 0
            && self.log_bytes >= 2 * PAGE_SIZE;
        let (start, end) = self.meta_range();
        if !laid_out || start < h.meta_off || end > h.meta_off + h.meta_bytes {
            return Err(invalid(
                what,
                "metadata regions outside the pool's metadata area",
            ));
        }
        Ok(())
    }
}

/// A commit record: which epoch is committed and which redo log holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct CommitRecord {
    /// Record sequence (strictly increasing; the valid record with the highest one wins).
    pub seq: u64,
    /// Epoch number committed by this record.
    pub epoch: u64,
    /// Bytes of redo log this epoch wrote.
    pub log_bytes: u64,
    /// Records in that log.
    pub log_count: u32,
    /// CRC-32 of the log bytes.
    pub log_crc: u32,
    /// Wall-clock time of the commit (ns since the Unix epoch), for reports.
    pub time_ns: u64,
}

impl CommitRecord {
    /// Encodes the record, CRC last.
    pub fn encode(&self) -> [u8; COMMIT_RECORD_SIZE] {
        let mut b = [0u8; COMMIT_RECORD_SIZE];
        b[0..8].copy_from_slice(&self.seq.to_le_bytes());
        b[8..16].copy_from_slice(&self.epoch.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_bytes.to_le_bytes());
        b[24..28].copy_from_slice(&self.log_count.to_le_bytes());
        b[28..32].copy_from_slice(&self.log_crc.to_le_bytes());
        b[32..40].copy_from_slice(&self.time_ns.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes a record: `Ok(None)` if all zero (never written), `Err` if unreadable.
    pub fn decode(bytes: &[u8], log_capacity: u64) -> Result<Option<CommitRecord>, LayoutError> {
        need("commit record", bytes, COMMIT_RECORD_SIZE)?;
        if bytes[..COMMIT_RECORD_SIZE].iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let f = Fields(bytes);
        check_crc("commit record", &bytes[..60], f.u32(60))?;
        let r = CommitRecord {
            seq: f.u64(0),
            epoch: f.u64(8),
            log_bytes: f.u64(16),
            log_count: f.u32(24),
            log_crc: f.u32(28),
            time_ns: f.u64(32),
        };
        if r.seq == 0 || r.log_bytes > log_capacity || bytes[40..60].iter().any(|&b| b != 0) {
            return Err(invalid("commit record", format!("impossible fields {r:?}")));
        }
        Ok(Some(r))
    }
}

/// Where a page's durable content is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Home {
    /// No content yet: the page reads as zeros.
    None,
    /// A PM home: data slot index.
    Pm(u64),
    /// A capacity-file home: slot index.
    Capacity(u64),
    /// Transient: DRAM only, reads as zeros after a crash.
    Transient,
}

const SLOT_BITS: u32 = 46;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

impl Home {
    /// Encodes the 8-byte page-map word for page `vpn` of tenant `tenant` (0 for `None`).
    pub fn encode(self, tenant: u32, vpn: u64) -> u64 {
        let (kind, slot) = match self {
            Home::None => return 0,
            Home::Pm(s) => (1u64, s),
            Home::Capacity(s) => (2, s),
            Home::Transient => (3, 0),
        };
        let body = kind << 62 | (slot & SLOT_MASK) << 16;
        body | map_check(body, tenant, vpn)
    }

    /// Decodes a page-map word; errors name the page.
    pub fn decode(word: u64, tenant: u32, vpn: u64) -> Result<Home, LayoutError> {
        if word == 0 {
            return Ok(Home::None);
        }
        let body = word & !0xffff;
        let what = || format!("tenant {tenant} page-map entry {vpn}");
        let stored = (word & 0xffff) as u32;
        let computed = map_check(body, tenant, vpn) as u32;
        if stored != computed {
            return Err(LayoutError::Checksum {
                what: what(),
                stored,
                computed,
            });
        }
        let slot = (word >> 16) & SLOT_MASK;
        match word >> 62 {
            1 => Ok(Home::Pm(slot)),
            2 => Ok(Home::Capacity(slot)),
            3 if slot == 0 => Ok(Home::Transient),
            _ => Err(invalid(what(), format!("word {word:#018x}"))),
        }
    }
}

fn map_check(body: u64, tenant: u32, vpn: u64) -> u64 {
    let mut b = [0u8; 20];
    b[0..8].copy_from_slice(&body.to_le_bytes());
    b[8..12].copy_from_slice(&tenant.to_le_bytes());
    b[12..20].copy_from_slice(&vpn.to_le_bytes());
    (crc32fast::hash(&b) & 0xffff) as u64
}

/// Flag of a log record: the page's whole new content was written to a fresh home (named by
/// `home_word`) before the commit record; apply installs that home in the page map and frees the
/// page's previous home. Such a record has no payload (mask 0).
pub const LOG_NEW_HOME: u32 = 1;

/// The header of one redo-log record. `popcount(mask)` payload lines of 64 bytes follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRecordHeader {
    /// Page number in the tenant's vPM.
    pub vpn: u64,
    /// The page-map word to hold after apply (a PM or capacity home).
    pub home_word: u64,
    /// Which of the page's 64 lines the payload carries.
    pub mask: u64,
    /// [`LOG_NEW_HOME`] or 0.
    pub flags: u32,
}

impl LogRecordHeader {
    /// Bytes of the whole record.
    pub fn record_len(&self) -> usize {
        LOG_HEADER_SIZE + self.mask.count_ones() as usize * 64
    }

    /// Encodes the header; its CRC covers the header fields and `payload`.
    pub fn encode(&self, payload: &[u8]) -> [u8; LOG_HEADER_SIZE] {
        let mut b = [0u8; LOG_HEADER_SIZE];
        b[0..8].copy_from_slice(&self.vpn.to_le_bytes());
        b[8..16].copy_from_slice(&self.home_word.to_le_bytes());
        b[16..24].copy_from_slice(&self.mask.to_le_bytes());
        b[24..28].copy_from_slice(&self.flags.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&b[..28]);
        h.update(payload);
        b[28..32].copy_from_slice(&h.finalize().to_le_bytes());
        b
    }

    /// Decodes the record at the start of `bytes` (header and payload) and checks it against the
    /// tenant; returns the header and the payload.
    pub fn decode(
        bytes: &[u8],
        tenant: u32,
        vpm_pages: u64,
    ) -> Result<(LogRecordHeader, &[u8]), LayoutError> {
        need("log record", bytes, LOG_HEADER_SIZE)?;
        let f = Fields(bytes);
        let h = LogRecordHeader {
            vpn: f.u64(0),
            home_word: f.u64(8),
            mask: f.u64(16),
            flags: f.u32(24),
        };
        let len = h.record_len();
        need("log record", bytes, len)?;
        let payload = &bytes[LOG_HEADER_SIZE..len];
        let mut c = crc32fast::Hasher::new();
        c.update(&bytes[..28]);
        c.update(payload);
        let what = || format!("tenant {tenant} log record for page {}", h.vpn);
        let (stored, computed) = (f.u32(28), c.finalize());
        if stored != computed {
            return Err(LayoutError::Checksum {
                what: what(),
                stored,
                computed,
            });
        }
        let shape_ok = if h.flags == LOG_NEW_HOME {
            h.mask == 0
        } else {
            h.flags == 0 && h.mask != 0
        };
        if h.vpn >= vpm_pages || !shape_ok || bytes[32..64].iter().any(|&b| b != 0) {
            return Err(invalid(what(), format!("impossible header {h:?}")));
        }
        match Home::decode(h.home_word, tenant, h.vpn)? {
            Home::Pm(_) | Home::Capacity(_) => Ok((h, payload)),
            other => Err(invalid(what(), format!("log installs {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PoolHeader {
        PoolHeader {
            total_bytes: 64 << 20,
            max_tenants: 4,
            table_off: 4096,
            meta_off: 8192,
            meta_bytes: 16 << 20,
            data_off: 8192 + (16 << 20),
            data_pages: 4000,
            pool_id: 77,
        }
    }

    #[test]
    fn header_round_trips_and_refuses_damage() {
        let h = header();
        let bytes = h.encode();
        assert_eq!(PoolHeader::decode(&bytes, 64 << 20), Ok(h));
        let mut bad = bytes;
        bad[20] ^= 1;
        assert!(matches!(
            PoolHeader::decode(&bad, 64 << 20),
            Err(LayoutError::Checksum { .. })
        ));
        assert!(matches!(
            PoolHeader::decode(&bytes, 1 << 20),
            Err(LayoutError::Invalid { .. })
        ));
        assert!(matches!(
            PoolHeader::decode(&bytes[..10], 64 << 20),
            Err(LayoutError::Truncated { .. })
        ));
        let mut other = bytes;
        other[8] = 2;
        assert_eq!(
            PoolHeader::decode(&other, 64 << 20),
            Err(LayoutError::Version { found: 2 })
        );
    }

    #[test]
    fn home_words_are_checked_against_their_page() {
        for home in [
            Home::None,
            Home::Pm(5),
            Home::Capacity(1 << 40),
            Home::Transient,
        ] {
            let w = home.encode(3, 17);
            assert_eq!(Home::decode(w, 3, 17), Ok(home));
            if home != Home::None {
                assert!(Home::decode(w, 3, 18).is_err(), "moved entry accepted");
                assert!(
                    Home::decode(w ^ (1 << 20), 3, 17).is_err(),
                    "flipped bit accepted"
                );
            }
        }
    }

    #[test]
    fn commit_records_round_trip_and_zero_means_none() {
        let r = CommitRecord {
            seq: 3,
            epoch: 9,
            log_bytes: 4096,
            log_count: 2,
            log_crc: 5,
            time_ns: 1,
        };
        assert_eq!(CommitRecord::decode(&r.encode(), 1 << 20), Ok(Some(r)));
        assert_eq!(CommitRecord::decode(&[0u8; 64], 1 << 20), Ok(None));
        let mut torn = r.encode();
        torn[8] = 0xff;
        assert!(CommitRecord::decode(&torn, 1 << 20).is_err());
        assert!(CommitRecord::decode(&r.encode(), 100).is_err());
    }

    #[test]
    fn log_records_round_trip() {
        let h = LogRecordHeader {
            vpn: 4,
            home_word: Home::Pm(9).encode(1, 4),
            mask: 0b101,
            flags: 0,
        };
        let payload = vec![0xabu8; 128];
        let mut rec = h.encode(&payload).to_vec();
        rec.extend_from_slice(&payload);
        let (got, p) = LogRecordHeader::decode(&rec, 1, 10).unwrap();
        assert_eq!((got, p), (h, &payload[..]));
        assert!(
            LogRecordHeader::decode(&rec, 1, 4).is_err(),
            "vpn beyond vPM"
        );
        let fresh = LogRecordHeader {
            mask: 0,
            flags: LOG_NEW_HOME,
            ..h
        };
        assert!(LogRecordHeader::decode(&fresh.encode(&[]), 1, 10).is_ok());
        let bad = LogRecordHeader {
            mask: 1,
            flags: LOG_NEW_HOME,
            ..h
        };
        let mut b = bad.encode(&payload[..64]).to_vec();
        b.extend_from_slice(&payload[..64]);
        assert!(
            LogRecordHeader::decode(&b, 1, 10).is_err(),
            "new home with payload"
        );
        rec[70] ^= 1;
        assert!(LogRecordHeader::decode(&rec, 1, 10).is_err());
    }
}

//! Redo-log records: a checked header per changed page, followed by the changed lines.

use vpm_abi::LINE_SIZE;

use super::{invalid, need, Fields, Home, LayoutError, LOG_HEADER_SIZE};

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
        LOG_HEADER_SIZE + self.mask.count_ones() as usize * LINE_SIZE as usize
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

//! Commit records: two slots per tenant; the valid record with the highest sequence names the
//! committed epoch and its redo log.

use super::{check_crc, invalid, need, Fields, LayoutError, COMMIT_RECORD_SIZE};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_records_round_trip_and_zero_means_none() {
        let r = CommitRecord {
            seq: 3,
            epoch: 9,
            log_bytes: vpm_abi::PAGE_SIZE,
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
}

//! The pool header: the first page of the pool file, fixed at creation, saying where every
//! region is.

use vpm_abi::PAGE_SIZE;

use super::{
    check_crc, invalid, need, Fields, LayoutError, POOL_MAGIC, POOL_VERSION, TENANT_DESC_SIZE,
};

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

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> PoolHeader {
        PoolHeader {
            total_bytes: 64 << 20,
            max_tenants: 4,
            table_off: PAGE_SIZE,
            meta_off: 2 * PAGE_SIZE,
            meta_bytes: 16 << 20,
            data_off: 2 * PAGE_SIZE + (16 << 20),
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
}

//! Tenant descriptors: one 256-byte slot of the tenant table per tenant, activated by a checked
//! state word written after the body.

use vpm_abi::PAGE_SIZE;

use super::{check_crc, invalid, need, Fields, LayoutError, PoolHeader, NAME_LEN, TENANT_ACTIVE};

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

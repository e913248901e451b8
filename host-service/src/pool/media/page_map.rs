//! Page-map words: each page's home, 8 bytes that carry their own check bits (bound to the
//! tenant and page), so a torn or misplaced word is refused.

use super::{invalid, LayoutError};

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

#[cfg(test)]
mod tests {
    use super::*;

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
}

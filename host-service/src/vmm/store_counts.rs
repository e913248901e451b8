//! Guest-counted stores into the PM tier: with `vpm_abi::harness::FLAG_COUNT_STORES` the test
//! guest's random and skewed write workloads add the bytes of every store to a per-page counter
//! in guest RAM. At each epoch stop (vCPUs paused, placements as they were through the epoch:
//! pages move only in pauses) the VMM reads the counters and charges what was stored since the
//! last stop into pages placed in the PM tier to PM. Those stores go straight to a PM working
//! copy; DRAM-tier stores are absorbed and reach PM only through commits, which the pool counts.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vpm_abi::harness::{STORE_COUNTS_GPA, STORE_COUNTS_PAGES};

/// The counters as read at the previous stop.
#[derive(Debug)]
pub struct StoreCounts {
    last: Vec<u64>,
    bytes: Vec<u8>,
}

impl StoreCounts {
    /// Counters for the first `pages` vPM pages (at most `STORE_COUNTS_PAGES`), all zero.
    pub fn new(pages: u64) -> StoreCounts {
        let n = pages.min(STORE_COUNTS_PAGES) as usize;
        StoreCounts {
            last: vec![0; n],
            bytes: vec![0; n * 8],
        }
    }

    /// Bytes the guest stored since the previous call into pages `in_pm_tier` names. Counters
    /// that went backwards (a guest that cleared them) count from zero.
    pub fn pm_tier_bytes(
        &mut self,
        ram: &GuestMemoryMmap,
        in_pm_tier: impl Fn(u64) -> bool,
    ) -> Result<u64, vm_memory::GuestMemoryError> {
        ram.read_slice(&mut self.bytes, GuestAddress(STORE_COUNTS_GPA))?;
        let mut pm = 0u64;
        for (vpn, (word, last)) in self.bytes.chunks_exact(8).zip(&mut self.last).enumerate() {
            let now = u64::from_le_bytes(word.try_into().expect("8-byte chunk"));
            let stored = now.checked_sub(*last).unwrap_or(now);
            *last = now;
            if stored > 0 && in_pm_tier(vpn as u64) {
                pm += stored;
            }
        }
        Ok(pm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vpm_abi::harness::GUEST_RAM_SIZE;

    #[test]
    fn only_new_stores_into_pm_tier_pages_count() {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_SIZE as usize)])
            .unwrap();
        let put = |vpn: u64, v: u64| {
            ram.write_obj(v, GuestAddress(STORE_COUNTS_GPA + vpn * 8))
                .unwrap()
        };
        let mut c = StoreCounts::new(4);
        put(0, 640);
        put(1, 64);
        put(3, 4096);
        // Pages 1 and 3 are in the PM tier.
        let pm = |vpn: u64| vpn % 2 == 1;
        assert_eq!(c.pm_tier_bytes(&ram, pm).unwrap(), 64 + 4096);
        put(1, 64 + 128);
        put(0, 1280);
        assert_eq!(c.pm_tier_bytes(&ram, pm).unwrap(), 128);
        assert_eq!(c.pm_tier_bytes(&ram, pm).unwrap(), 0);
    }
}

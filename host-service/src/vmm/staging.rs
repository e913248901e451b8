//! Staging for pre-copy epochs: copies of dirty pages taken while the vCPU runs (pre-copy
//! rounds) or while it is paused (the stop), from which the epoch is committed after the vCPU
//! has resumed. A page staged by a round and written again before the stop is staged again at
//! the stop, so after the stop the staging holds exactly the guest-visible content of every
//! staged page at the stop point.

use vpm_abi::PAGE_SIZE;

use crate::pool::{PageSource, SourceError};

/// `vpm_abi::PAGE_SIZE` as a byte count.
const PAGE: usize = PAGE_SIZE as usize;
/// Pages per buffer chunk (1 MiB): chunks are kept across epochs, so staging stops allocating
/// once it has held the largest epoch.
const CHUNK_PAGES: usize = 256;
/// `slot_of` value of a page not staged.
const NONE: u32 = u32::MAX;

/// Copies of pages of one vPM, indexed by page number.
#[derive(Debug)]
pub struct Staging {
    slot_of: Vec<u32>,
    pages: Vec<u64>,
    chunks: Vec<Box<[u8]>>,
}

impl Staging {
    /// Empty staging for a vPM of `pages` pages.
    pub fn new(pages: u64) -> Staging {
        Staging {
            slot_of: vec![NONE; pages as usize],
            pages: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// Pages staged.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Whether `vpn` is staged.
    pub fn contains(&self, vpn: u64) -> bool {
        self.slot_of.get(vpn as usize).is_some_and(|&s| s != NONE)
    }

    /// The staged pages, ascending.
    pub fn pages_sorted(&self) -> Vec<u64> {
        let mut v = self.pages.clone();
        v.sort_unstable();
        v
    }

    fn slot_bytes(&mut self, slot: usize) -> &mut [u8] {
        let (c, i) = (slot / CHUNK_PAGES, slot % CHUNK_PAGES);
        while self.chunks.len() <= c {
            self.chunks
                .push(vec![0u8; CHUNK_PAGES * PAGE].into_boxed_slice());
        }
        &mut self.chunks[c][i * PAGE..(i + 1) * PAGE]
    }

    /// Copies page `vpn` of the vPM mapped at `vpm` (replacing an older copy of it). Pages past
    /// the end are ignored.
    ///
    /// # Safety
    /// `vpm` must point to a live mapping of at least `(vpn + 1) * PAGE_SIZE` bytes. A vCPU may
    /// write the page meanwhile (the copy may then be torn); the caller must then make sure the
    /// page is staged again at the stop (its dirty bit was cleared before this copy).
    pub unsafe fn stage(&mut self, vpn: u64, vpm: *const u8) {
        let Some(&slot) = self.slot_of.get(vpn as usize) else {
            return;
        };
        let slot = if slot == NONE {
            let s = self.pages.len();
            self.slot_of[vpn as usize] = s as u32;
            self.pages.push(vpn);
            s
        } else {
            slot as usize
        };
        let dst = self.slot_bytes(slot);
        // SAFETY: the caller guarantees the source page is mapped; `dst` is a page of our own
        // buffer, distinct from guest memory. A concurrent guest write can only tear the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(vpm.add(vpn as usize * PAGE), dst.as_mut_ptr(), PAGE)
        };
    }

    /// Forgets every staged page (keeps the buffers).
    pub fn clear(&mut self) {
        for &vpn in &self.pages {
            self.slot_of[vpn as usize] = NONE;
        }
        self.pages.clear();
    }
}

impl PageSource for Staging {
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), SourceError> {
        let slot = match self.slot_of.get(vpn as usize) {
            Some(&s) if s != NONE => s as usize,
            _ => {
                return Err(SourceError::PageBeyondImage {
                    vpn,
                    len: self.len() as u64 * PAGE_SIZE,
                })
            }
        };
        let (c, i) = (slot / CHUNK_PAGES, slot % CHUNK_PAGES);
        f(&self.chunks[c][i * PAGE..(i + 1) * PAGE]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restaging_replaces_the_copy_and_clear_forgets_pages() {
        let mut mem = vec![0u8; 300 * PAGE];
        let mut st = Staging::new(300);
        mem[299 * PAGE] = 1;
        // SAFETY: `mem` maps 300 pages.
        unsafe { st.stage(299, mem.as_ptr()) };
        mem[299 * PAGE] = 2;
        mem[3 * PAGE + 9] = 3;
        // SAFETY: as above.
        unsafe {
            st.stage(3, mem.as_ptr());
            st.stage(299, mem.as_ptr());
            st.stage(1000, mem.as_ptr());
        }
        assert_eq!(st.pages_sorted(), vec![3, 299]);
        let mut seen = Vec::new();
        for vpn in [3, 299] {
            st.with_page(vpn, &mut |p| seen.push(p.to_vec())).unwrap();
        }
        assert_eq!(seen[0], mem[3 * PAGE..4 * PAGE]);
        assert_eq!(seen[1], mem[299 * PAGE..]);
        assert!(st.with_page(4, &mut |_| {}).is_err());
        st.clear();
        assert!(st.is_empty() && !st.contains(3));
        assert!(st.with_page(3, &mut |_| {}).is_err());
    }
}

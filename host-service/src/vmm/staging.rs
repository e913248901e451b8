//! Staging for pre-copy epochs: copies of dirty pages taken while the vCPU runs (pre-copy
//! rounds) or while it is paused (the stop), from which the epoch is committed after the vCPU
//! has resumed. A page staged by a round and written again before the stop is staged again at
//! the stop, so after the stop the staging holds exactly the guest-visible content of every
//! staged page at the stop point.

use std::sync::atomic::{AtomicUsize, Ordering};

use vpm_abi::PAGE_SIZE;

use super::pause::PauseWork;
use crate::pm::flush::{copy_nontemporal, store_fence};

use crate::pool::{Home, PageSource, ReservedHome, SourceError};

/// `vpm_abi::PAGE_SIZE` as a byte count.
const PAGE: usize = PAGE_SIZE as usize;
/// Pages per buffer chunk (1 MiB): chunks are kept across epochs, so staging stops allocating
/// once it has held the largest epoch.
const CHUNK_PAGES: usize = 256;
/// `slot_of` value of a page not staged.
const NONE: u32 = u32::MAX;

/// Pages a helper claims at a time from [`PageCopies`] (256 KiB: few claims, an even split).
const CLAIM_PAGES: usize = 64;

/// The page copies of a stop, shared out between the threads that run [`PageCopies::help`].
#[derive(Debug)]
pub struct PageCopies {
    /// `(source, destination)` addresses of whole pages.
    copies: Vec<(usize, usize)>,
    /// First copy not yet claimed.
    next: AtomicUsize,
    /// Copies finished.
    done: AtomicUsize,
}

impl PageCopies {
    /// Copies claimed parts until none is left.
    pub fn help(&self) {
        loop {
            let first = self.next.fetch_add(CLAIM_PAGES, Ordering::AcqRel);
            if first >= self.copies.len() {
                return;
            }
            let part = &self.copies[first..(first + CLAIM_PAGES).min(self.copies.len())];
            for &(src, dst) in part {
                // SAFETY: `Staging::plan_copies`' caller keeps every source page mapped and
                // unwritten, and every destination (a slot of the staging, one per page)
                // untouched, until `finish` returns, which is after this part is counted done; a
                // part is claimed once, and a source (guest memory) never overlaps a slot.
                unsafe {
                    let page = std::slice::from_raw_parts(src as *const u8, PAGE);
                    copy_nontemporal(dst as *mut u8, page);
                }
            }
            // The streaming stores are weakly ordered: drain them before the part counts done.
            store_fence();
            self.done.fetch_add(part.len(), Ordering::AcqRel);
        }
    }

    /// Helps, then waits until every copy is done (by whichever thread claimed it).
    pub fn finish(&self) {
        self.help();
        while self.done.load(Ordering::Acquire) < self.copies.len() {
            std::hint::spin_loop();
        }
    }

    /// Pages to copy.
    pub fn len(&self) -> usize {
        self.copies.len()
    }

    /// Whether there is nothing to copy.
    pub fn is_empty(&self) -> bool {
        self.copies.is_empty()
    }
}

impl PauseWork for PageCopies {
    fn help(&self) {
        PageCopies::help(self);
    }
}

/// Copies of pages of one vPM, indexed by page number.
#[derive(Debug)]
pub struct Staging {
    slot_of: Vec<u32>,
    pages: Vec<u64>,
    chunks: Vec<Box<[u8]>>,
    /// The fresh home each page the stop streamed straight into one has (see
    /// [`Staging::plan_copies`]), by page number, and those pages.
    home_of: Vec<Option<Home>>,
    written: Vec<u64>,
}

impl Staging {
    /// Empty staging for a vPM of `pages` pages.
    pub fn new(pages: u64) -> Staging {
        Staging {
            slot_of: vec![NONE; pages as usize],
            pages: Vec::new(),
            chunks: Vec::new(),
            home_of: vec![None; pages as usize],
            written: Vec::new(),
        }
    }

    /// Pages staged in slots (not counting those streamed into fresh homes).
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty() && self.written.is_empty()
    }

    /// Whether `vpn` is staged.
    pub fn contains(&self, vpn: u64) -> bool {
        self.slot_of.get(vpn as usize).is_some_and(|&s| s != NONE)
            || self.written_home(vpn).is_some()
    }

    /// The staged pages (in slots or streamed into fresh homes), ascending.
    pub fn pages_sorted(&self) -> Vec<u64> {
        let mut v = self.pages.clone();
        v.extend_from_slice(&self.written);
        v.sort_unstable();
        v.dedup();
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
        let Some(slot) = self.slot_for(vpn) else {
            return;
        };
        let dst = self.slot_bytes(slot);
        // SAFETY: the caller guarantees the source page is mapped; `dst` is a page of our own
        // buffer, distinct from guest memory. A concurrent guest write can only tear the copy.
        unsafe {
            std::ptr::copy_nonoverlapping(vpm.add(vpn as usize * PAGE), dst.as_mut_ptr(), PAGE)
        };
    }

    /// Gives each of `vpns` (distinct pages) a destination and returns the copies that fill them
    /// from the vPM mapped at `vpm`, for any number of threads to carry out
    /// ([`PageCopies::finish`]); pages past the end are left out. The destination is the fresh
    /// home `homes` names for the page (the same index), if it does (a page expected to be
    /// rewritten whole: the commit then installs the home without copying the page again), else
    /// the page's slot. The stop shares its copy this way with the parked
    /// vCPU's idle core: the copy is memory-bound, ~1.8 ms for 32 MiB on one core here and
    /// ~1.2 ms on two (docs/costs.md §10). The copies use streaming stores: the staging is read
    /// once, by the commit, and caching it would only evict the guest's working set.
    ///
    /// # Safety
    /// `vpm` must point to a live mapping of every page named that is not past the end, and until
    /// [`PageCopies::finish`] has returned no one may write those pages (the vCPUs are paused) or
    /// remap them, and the staging must not be touched.
    pub unsafe fn plan_copies(
        &mut self,
        vpns: &[u64],
        vpm: *const u8,
        homes: &[Option<ReservedHome>],
    ) -> PageCopies {
        let copies = vpns
            .iter()
            .enumerate()
            .filter_map(|(i, &vpn)| {
                if vpn as usize >= self.slot_of.len() {
                    return None;
                }
                let src = vpm as usize + vpn as usize * PAGE;
                if let Some(home) = homes.get(i).copied().flatten() {
                    if self.home_of[vpn as usize].replace(home.home).is_none() {
                        self.written.push(vpn);
                    }
                    return Some((src, home.addr() as usize));
                }
                let slot = self.slot_for(vpn)?;
                Some((src, self.slot_bytes(slot).as_mut_ptr() as usize))
            })
            .collect();
        PageCopies {
            copies,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    /// The slot of `vpn`, taken if it had none; `None` past the end of the vPM.
    fn slot_for(&mut self, vpn: u64) -> Option<usize> {
        let &slot = self.slot_of.get(vpn as usize)?;
        if slot != NONE {
            return Some(slot as usize);
        }
        let s = self.pages.len();
        self.slot_of[vpn as usize] = s as u32;
        self.pages.push(vpn);
        Some(s)
    }

    /// Forgets every staged page (keeps the buffers).
    pub fn clear(&mut self) {
        for &vpn in &self.pages {
            self.slot_of[vpn as usize] = NONE;
        }
        self.pages.clear();
        for &vpn in &self.written {
            self.home_of[vpn as usize] = None;
        }
        self.written.clear();
    }
}

impl PageSource for Staging {
    fn written_home(&self, vpn: u64) -> Option<Home> {
        self.home_of.get(vpn as usize).copied().flatten()
    }

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
    use std::sync::Arc;

    /// Copies shared out between threads stage every page once, each with its own content.
    #[test]
    fn page_copies_shared_by_threads_stage_every_page() {
        let pages = 1000;
        let mut mem = vec![0u8; pages * PAGE];
        for (i, page) in mem.chunks_mut(PAGE).enumerate() {
            page.fill(i as u8);
            page[..8].copy_from_slice(&(i as u64).to_le_bytes());
        }
        let mut st = Staging::new(pages as u64);
        let vpns: Vec<u64> = (0..pages as u64).rev().chain([5000]).collect();
        // SAFETY: `mem` maps every page named but 5000, which is past the end and left out; no
        // one touches `st` or `mem` until `finish` returns.
        let copies = Arc::new(unsafe { st.plan_copies(&vpns, mem.as_ptr(), &[]) });
        assert_eq!(copies.len(), pages);
        let helpers: Vec<_> = (0..3)
            .map(|_| {
                let c = copies.clone();
                std::thread::spawn(move || c.help())
            })
            .collect();
        copies.finish();
        for h in helpers {
            h.join().unwrap();
        }
        assert_eq!(st.pages_sorted(), (0..pages as u64).collect::<Vec<_>>());
        for vpn in 0..pages {
            st.with_page(vpn as u64, &mut |p| {
                assert_eq!(p, &mem[vpn * PAGE..(vpn + 1) * PAGE], "page {vpn}")
            })
            .unwrap();
        }
    }

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

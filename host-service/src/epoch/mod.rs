//! Durability of a tenant's vPM: epoch commits (semantics F1), persist ranges (P1, P4), transient
//! marks (P3), and the redo log that makes a commit atomic under power failure.
//!
//! Commit protocol for epoch k+1 of a tenant:
//! 1. diff every dirty page against its home, line by line; build the redo log in DRAM (changed
//!    lines only; a page without a home gets one, and its other lines are zero);
//! 2. write the log to the tenant's log area, flush, drain;
//! 3. write commit record (seq+1, epoch k+1, log size/count/CRC) into the record slot that does
//!    not hold the latest record, flush, drain — **the commit point**;
//! 4. apply the log to the homes and install new homes in the page map, drain;
//! 5. store the record's seq in the applied word, drain.
//!
//! A crash before 3 leaves epoch k (the log is ignored); after 3, recovery re-applies the log.
//! Persist ranges write the changed lines of the range straight into the homes: semantics P2
//! lets lines be independent, and step 5's drain keeps an old log from replaying over them.

mod commit;
pub(crate) mod log;
mod persist;

pub use commit::CommitStats;
pub use persist::PersistStats;

/// Where the current (guest-visible) content of a tenant's pages comes from: the VMM's DRAM tier
/// and PM working copies, or a test's model.
pub trait PageSource {
    /// Calls `f` with the current content of page `vpn` (4096 bytes), in place where possible.
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), String>;
}

impl PageSource for [u8] {
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        let page = vpm_abi::PAGE_SIZE as usize;
        let at = vpn as usize * page;
        let src = self
            .get(at..at + page)
            .ok_or_else(|| format!("page {vpn} beyond a {}-byte image", self.len()))?;
        f(src);
        Ok(())
    }
}

impl PageSource for Vec<u8> {
    fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), String> {
        self.as_slice().with_page(vpn, f)
    }
}

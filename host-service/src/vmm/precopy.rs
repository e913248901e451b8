//! Pre-copy epochs: the dirty-page copying of an epoch, split into rounds that run while the
//! vCPU runs and a stop that copies only what is dirty at the stop point.
//!
//! A round fetches the dirty log, re-arms tracking (clears the dirty bits, write-protecting the
//! pages) of the dirty pages not kept writable, and only then copies them into [`Staging`]: a
//! write after the clear sets the dirty bit again, so the page is copied again later. Pages kept
//! writable stay dirty in the log and are copied at the stop (re-arming them would cost each a
//! fault per epoch, ~20 diff-reads on PVM). The stop, with the vCPU paused, copies every page the
//! log shows dirty. After it the staging holds exactly the guest-visible content at the stop of
//! every page written since the previous stop, and the epoch can be committed from it while the
//! vCPU runs again.

use std::sync::Arc;

use kvm_ioctls::VmFd;

use super::kvm::DirtyLog;
use super::pause::PauseGate;
use super::staging::Staging;
use super::VmmError;
use crate::pool::ReservedHome;

/// `mallopt` ceiling of the mmap threshold (glibc refuses more on 64-bit hosts).
const MMAP_THRESHOLD_MAX: libc::c_int = 32 << 20;

/// Keeps memory freed by this process in its heap instead of returning it to the kernel: heap
/// trimming and the unmapping of large blocks flush the TLBs of every thread of the process,
/// and under PVM (docs/costs.md §2) a flush while the vCPU runs costs the guest a refault of its
/// whole working set. A pre-copy epoch frees its commit's buffers while the vCPU runs: 5 M puts
/// on a 128 MiB KV store took over 60 s that way, 13–18 s with this (docs/costs.md §5).
/// Process-wide; call before the vCPU starts.
pub fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; glibc serialises it with allocations.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX);
        libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX);
    }
}

/// Where dirty pages are found and tracking is re-armed: KVM's dirty log, or a test's model.
pub trait DirtyTracker {
    /// Pages written since they were last protected (pages never protected are always listed).
    fn collect(&self) -> Result<Vec<u64>, VmmError>;
    /// Clears the dirty bits of `pages` and write-protects them.
    fn protect(&self, pages: &[u64]) -> Result<(), VmmError>;
}

/// A memslot's dirty log on its VM.
pub struct KvmTracker<'a> {
    /// The log.
    pub log: &'a DirtyLog,
    /// The VM.
    pub vm: &'a VmFd,
}

impl DirtyTracker for KvmTracker<'_> {
    fn collect(&self) -> Result<Vec<u64>, VmmError> {
        self.log.collect(self.vm)
    }

    fn protect(&self, pages: &[u64]) -> Result<(), VmmError> {
        self.log.protect(self.vm, pages)
    }
}

/// What one pre-copy round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Pages copied.
    pub copied: u64,
    /// Of those, pages an earlier round of this epoch had copied already (written again).
    pub recopied: u64,
}

impl RoundStats {
    /// Whether rounds stop paying: most of what this round copied had been copied before (the
    /// guest rewrites faster than rounds converge), so the rest is left to the stop.
    pub fn diverging(&self) -> bool {
        self.copied > 0 && self.recopied * 2 > self.copied
    }
}

/// One pre-copy round while the vCPU runs: re-arms tracking of the dirty pages `kept` does not
/// name, then copies them into `staging`.
///
/// # Safety
/// `vpm` must point to the live vPM mapping (covering every page the tracker can report), and no
/// one may remap it meanwhile.
pub unsafe fn round(
    tracker: &dyn DirtyTracker,
    staging: &mut Staging,
    vpm: *const u8,
    kept: impl Fn(u64) -> bool,
) -> Result<RoundStats, VmmError> {
    let dirty = tracker.collect()?;
    let take: Vec<u64> = dirty.into_iter().filter(|&v| !kept(v)).collect();
    // Re-arm before copying: a write that lands during or after the copy is seen by the stop.
    tracker.protect(&take)?;
    let mut stats = RoundStats::default();
    for &vpn in &take {
        stats.recopied += staging.contains(vpn) as u64;
        // SAFETY: the caller guarantees the mapping; the dirty bit was cleared above.
        unsafe { staging.stage(vpn, vpm) };
    }
    stats.copied = take.len() as u64;
    Ok(stats)
}

/// What the stop found: the dirty pages (ascending), and the microseconds spent fetching them.
#[derive(Debug)]
pub struct Stopped {
    /// Pages dirty at the stop, now staged.
    pub dirty: Vec<u64>,
    /// Time spent fetching the dirty log (µs).
    pub collect_us: u64,
    /// Pages copied into fresh homes instead of staging.
    pub streamed: u64,
}

/// The stop, with the vCPU paused: copies every page the log shows dirty into `staging`, or
/// into the fresh home `reserve` gives it (called once with the dirty pages, it returns a home
/// or `None` for each; see [`Staging::plan_copies`]), with the help of the parked vCPU threads
/// that spin on `gate`. Re-arms nothing (the writable-set policy decides that).
///
/// # Safety
/// As for [`round`]; and no vCPU may run meanwhile.
pub unsafe fn stop(
    tracker: &dyn DirtyTracker,
    staging: &mut Staging,
    vpm: *const u8,
    gate: &PauseGate,
    reserve: impl FnOnce(&[u64]) -> Vec<Option<ReservedHome>>,
) -> Result<Stopped, VmmError> {
    let t = std::time::Instant::now();
    let dirty = tracker.collect()?;
    let collect_us = t.elapsed().as_micros() as u64;
    let homes = reserve(&dirty);
    // SAFETY: the caller guarantees the mapping and that the vCPU is paused; the copies finish
    // before `staging` is used again; a reserved home is a mapped PM page that nothing else
    // touches until the commit installs or gives it back.
    let copies = Arc::new(unsafe { staging.plan_copies(&dirty, vpm, &homes) });
    gate.offer(copies.clone());
    copies.finish();
    gate.withdraw();
    let streamed = homes.iter().flatten().count() as u64;
    Ok(Stopped {
        dirty,
        collect_us,
        streamed,
    })
}

#[cfg(test)]
mod tests;

//! What a running VM consists of: [`VmContext`], shared by the vCPU thread, the hint thread and
//! the controller, and [`VpmState`], the vPM mapping with its page placements and writable set.
//! Here too are the hint target's actions on them (persist, transient marks, msync).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vpm_abi::HintResult;

use super::guest_map;
use super::hints::{HintService, HintTarget};
use super::kvm::{DirtyLog, Memslot};
use super::memory::VpmMemory;
use super::mode::Mode;
use super::pause::{self, PauseGate};
use super::range::VpmRange;
use super::staging::Staging;
use super::stats::VmStats;
use super::store_counts::StoreCounts;
use super::witness::Witnesses;
use super::writable::WritableSet;
use super::VmmError;
use crate::pool::Pool;
use crate::tier::{self, Move, MoveCounts, PagePlacements, Placement};

/// Mutable vPM state: the mapping, where each page is placed, and which pages stay writable.
pub struct VpmState {
    /// The mapping.
    pub memory: VpmMemory,
    /// Placement and heat of every page (tiered modes).
    pub placements: PagePlacements,
    /// Pages left writable across epochs (tiered modes).
    pub writable: WritableSet,
    /// The guest's per-page store counters (tiered modes with `FLAG_COUNT_STORES`).
    pub store_counts: Option<StoreCounts>,
}

impl VpmState {
    /// Bytes the guest stored into PM-tier pages since the last epoch stop, from its counters
    /// (0 without them). Call at a stop, before the tiers are rebalanced.
    pub fn pm_tier_stores(&mut self, ram: &GuestMemoryMmap) -> Result<u64, VmmError> {
        let Some(counts) = &mut self.store_counts else {
            return Ok(0);
        };
        let placements = &self.placements;
        counts
            .pm_tier_bytes(ram, |vpn| placements.page(vpn).placement == Placement::Pm)
            .map_err(|source| VmmError::GuestMemory {
                what: "read the guest's store counters",
                source,
            })
    }
}

/// State shared by the vCPU thread, the hint thread and the controller.
///
/// Fields drop in declaration order, and the order matters: the memslots and the VM fd go first,
/// the memory they map (vPM in `state`, then guest RAM) last. KVM must never keep a mapping of
/// memory this process has already unmapped (Firecracker's rule).
pub struct VmContext {
    /// The hint service (vCPU thread for exits, hint thread for ioeventfd rings). It refers to
    /// the shared page in guest RAM, so it goes before `ram`.
    pub(super) hints: Mutex<HintService>,
    /// The vPM slot's dirty log (tiered modes).
    pub(super) dirty: Option<DirtyLog>,
    /// Pre-copy epochs' staging (full mode with pre-copy on). Lock order: before `state`.
    pub(super) precopy: Option<Mutex<Staging>>,
    /// Guest RAM's and vPM's memslots: removed before the memory they map is unmapped.
    pub(super) memslots: Vec<Memslot>,
    /// The VM (the memslots hold it too).
    pub vm: Arc<VmFd>,
    /// Mode.
    pub mode: Mode,
    /// Tenant id in the pool.
    pub tenant: u32,
    /// The pool (shared with other VMs of this process).
    pub pool: Arc<Mutex<Pool>>,
    /// Counters.
    pub stats: Mutex<VmStats>,
    /// Feature bits granted to the guest.
    pub features: u32,
    pub(super) pause: PauseGate,
    /// vCPUs (one host thread and one hint ring each).
    pub vcpus: u32,
    pub(super) stop: AtomicBool,
    pub(super) witnesses: Witnesses,
    /// vPM mapping, placements and writable set. Lock order: state, then pool, then stats.
    pub state: Mutex<VpmState>,
    /// Guest RAM.
    pub ram: GuestMemoryMmap,
}

impl HintTarget for VmContext {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn features(&self) -> u32 {
        self.features
    }

    fn stats(&self) -> &Mutex<VmStats> {
        &self.stats
    }

    fn shared_page(&self, gpa: u64) -> Option<&'static vpm_abi::SharedPage> {
        if !guest_map::valid_shared_page(gpa) {
            return None;
        }
        let host = self.ram.get_host_address(GuestAddress(gpa)).ok()?;
        // SAFETY: the page lies inside guest RAM (checked above), which stays mapped for the VM's
        // lifetime; it is page-aligned (gpa and the RAM mapping are page-aligned); the guest
        // accesses it concurrently, which the atomic fields make sound.
        Some(unsafe { vpm_abi::SharedPage::from_ptr(host) })
    }

    fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError> {
        VmContext::persist(self, ranges)
    }

    fn msync_region(&self) -> Result<HintResult, VmmError> {
        VmContext::msync_region(self)
    }

    fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError> {
        VmContext::set_transient(self, range, on)
    }

    /// With one vCPU, it waits in the exit, so nothing runs meanwhile. With more, the others
    /// would run on through the epoch: not supported (epochs come from the controller, which
    /// pauses every vCPU).
    fn request_epoch(&self) -> Result<HintResult, VmmError> {
        if self.vcpus > 1 {
            return Ok(HintResult::NotSupported);
        }
        self.take_epoch()?;
        Ok(HintResult::Ok)
    }

    fn witness_drain(&self) {
        self.witnesses.drain(&self.ram, 0)
    }

    fn witness_drain_ring(&self, ring: usize) {
        self.witnesses.drain(&self.ram, ring as u32)
    }
}

impl VmContext {
    /// Persists vPM byte ranges (PV): one pool batch, one drain.
    pub fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError> {
        let mut state = self.state.lock().expect("state");
        let mut pool = self.pool.lock().expect("pool");
        let pairs: Vec<(u64, u64)> = ranges.iter().map(VpmRange::as_pair).collect();
        let result = match pool.persist(self.tenant, &pairs, state.memory.bytes()) {
            Ok(_) => {
                // Written this epoch, though the epoch will find the homes up to date.
                for r in ranges {
                    for vpn in r.touched_pages() {
                        state.writable.note_persisted(vpn);
                        state.placements.note_write(vpn);
                    }
                }
                HintResult::Ok
            }
            Err(e) => {
                tracing::error!(error = %e, "persist failed");
                e.hint_result()
            }
        };
        let requested: u64 = ranges.iter().map(VpmRange::len).sum();
        self.stats.lock().expect("stats").persist_requested_bytes += requested;
        Ok(result)
    }

    /// msyncs the whole vPM (msync mode).
    pub fn msync_region(&self) -> Result<HintResult, VmmError> {
        let state = self.state.lock().expect("state");
        state.memory.msync_all()?;
        self.stats.lock().expect("stats").region_msyncs += 1;
        Ok(HintResult::Ok)
    }

    /// Marks whole pages transient (moving them to DRAM first, within the budget, evicting the
    /// coldest other pages if needed) or persistent again.
    pub fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError> {
        let (first, count) = (range.first_page(), range.page_count());
        let mut state = self.state.lock().expect("state");
        if on {
            let to_dram: Vec<Move> = (first..first + count)
                .filter(|&v| state.placements.page(v).placement == Placement::Pm)
                .map(|vpn| Move {
                    vpn,
                    to: Placement::Dram,
                })
                .collect();
            let VpmState {
                memory, placements, ..
            } = &mut *state;
            let Some(evicted) = tier::make_dram_room(
                placements,
                memory,
                to_dram.len() as u64,
                first..first + count,
            )?
            else {
                return Ok(HintResult::NoSpace);
            };
            let promoted = tier::apply_moves(placements, memory, to_dram)?;
            self.record_moves(&state, evicted.plus(promoted));
        }
        let mut pool = self.pool.lock().expect("pool");
        let r = if on {
            pool.set_transient(self.tenant, first, count)
        } else {
            pool.set_persistent(self.tenant, first, count)
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "transient mark failed");
            return Ok(e.hint_result());
        }
        for vpn in first..first + count {
            state.placements.set_transient(vpn, on);
            if !on {
                // Committed by the next epoch (its content was never durable).
                state.placements.note_write(vpn);
            }
        }
        Ok(HintResult::Ok)
    }

    /// Sets the VM's DRAM budget to `pages` and demotes the coldest DRAM pages over it. Call with
    /// the vCPU parked (a parked job of `vmm::control`). Returns the pages demoted.
    pub fn set_dram_budget(&self, pages: u64) -> Result<u64, VmmError> {
        let mut state = self.state.lock().expect("state");
        let VpmState {
            memory, placements, ..
        } = &mut *state;
        placements.set_budget(pages);
        let counts = tier::make_dram_room(placements, memory, 0, 0..0)?.unwrap_or_default();
        let demoted = counts.to_pm;
        self.record_moves(&state, counts);
        self.stats.lock().expect("stats").dram_budget_pages = pages;
        Ok(demoted)
    }

    /// Carries out `moves` on the vPM mapping and counts them.
    pub fn apply_moves(&self, state: &mut VpmState, moves: Vec<Move>) -> Result<(), VmmError> {
        if !moves.is_empty() {
            self.pause.stop_spinning();
        }
        let counts = tier::apply_moves(&mut state.placements, &mut state.memory, moves)?;
        self.record_moves(state, counts);
        Ok(())
    }

    /// Adds moves to the counters and samples the tiers' occupancy.
    fn record_moves(&self, state: &VpmState, counts: MoveCounts) {
        let mut s = self.stats.lock().expect("stats");
        s.remaps += counts.remaps;
        s.moved_to_dram += counts.to_dram;
        s.moved_to_pm += counts.to_pm;
        s.dram_pages = state.placements.dram_pages();
        s.dram_pages_max = s.dram_pages_max.max(s.dram_pages);
        s.pm_pages = state.placements.len() - s.dram_pages;
    }

    /// The memslots registered for guest RAM and vPM.
    pub fn memslots(&self) -> &[Memslot] {
        &self.memslots
    }

    /// Kicks the vCPU threads out of KVM_RUN.
    pub(super) fn kick(&self, threads: &[libc::pthread_t]) {
        for &thread in threads {
            // SAFETY: pthread_kill on a vCPU thread, which is not joined (its pthread_t stays
            // valid) while the controller runs (the controller joins the vCPU threads only after
            // they exit); the signal's handler does nothing.
            unsafe { libc::pthread_kill(thread, pause::kick_signal()) };
        }
    }
}

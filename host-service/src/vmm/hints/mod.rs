//! The host end of the hint channel: decodes doorbell bytes, checks and serves ring entries, and
//! turns them into pool and tier actions for the VM's mode. Nothing the guest writes can make
//! this panic or touch memory outside the guest's own vPM and shared page.

use std::sync::atomic::Ordering;

use std::sync::Mutex;

use vpm_abi::{
    decode_entry, Consumer, DoorbellCmd, DoorbellDecoder, HeaderStatus, Hint, HintResult,
    SharedPage, SleepCheck, VpmRegion,
};

use super::mode::Mode;
use super::range::VpmRange;
use super::stats::VmStats;
use super::VmmError;

/// What the hint service acts on: a KVM VM of this VMM, or a QEMU guest served over a socket.
pub trait HintTarget {
    /// The VM's mode.
    fn mode(&self) -> Mode;
    /// Feature bits granted.
    fn features(&self) -> u32;
    /// Counters.
    fn stats(&self) -> &Mutex<VmStats>;
    /// The shared page at `gpa`, if the guest may use that page (in its RAM, page-aligned, not
    /// vPM and not a VMM-owned page), mapped for the VM's lifetime.
    fn shared_page(&self, gpa: u64) -> Option<&'static SharedPage>;
    /// Persists vPM byte ranges (offsets from the vPM base) as one batch.
    fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError>;
    /// msyncs the whole vPM (msync mode).
    fn msync_region(&self) -> Result<HintResult, VmmError>;
    /// Marks whole pages transient or persistent again.
    fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError>;
    /// Commits an epoch now (the guest waits).
    fn request_epoch(&self) -> Result<HintResult, VmmError>;
    /// Records an acknowledged drain (crash-test witness).
    fn witness_drain(&self);
    /// Records an acknowledged drain of ring `ring` (one ring per vCPU); ring 0's is
    /// [`HintTarget::witness_drain`], other rings' are not recorded unless the target knows how.
    fn witness_drain_ring(&self, ring: usize) {
        if ring == 0 {
            self.witness_drain();
        }
    }
}

/// A registered shared page.
struct Channel {
    page: &'static SharedPage,
    consumer: Consumer,
}

/// One vCPU's hint channel: its doorbell decoder (multi-byte commands of two vCPUs must not
/// mix), its registered ring and its flushed ranges waiting for a drain.
struct Ring {
    decoder: DoorbellDecoder,
    channel: Option<Channel>,
    /// Flushed ranges waiting for a drain (a drain covers its own ring's flushes).
    queued: Vec<VpmRange>,
}

impl Ring {
    fn new() -> Ring {
        Ring {
            decoder: DoorbellDecoder::new(),
            channel: None,
            queued: Vec::new(),
        }
    }
}

/// The per-VM hint service: one ring per vCPU (ring `i` is registered and rung by vCPU `i`),
/// all served under one lock, so hints stay serialized with each other and with epochs.
pub struct HintService {
    rings: Vec<Ring>,
    region: VpmRegion,
}

impl HintService {
    /// A service for a vPM of `size` bytes at guest-physical `base`, with one ring.
    pub fn new(base: u64, size: u64) -> HintService {
        HintService::with_rings(base, size, 1)
    }

    /// A service with `rings` rings (one per vCPU; at least one).
    pub fn with_rings(base: u64, size: u64, rings: usize) -> HintService {
        HintService {
            rings: (0..rings.max(1)).map(|_| Ring::new()).collect(),
            region: VpmRegion::new(base, size).expect("vPM region is whole pages"),
        }
    }

    /// Handles one doorbell byte of vCPU 0.
    pub fn on_byte(&mut self, byte: u8, vm: &dyn HintTarget) -> Result<(), VmmError> {
        self.on_vcpu_byte(0, byte, vm)
    }

    /// Handles one doorbell byte of vCPU `ring` (the vCPU that exited; bytes of a vCPU beyond
    /// the rings count as unknown). Ring-indexed commands count as unknown: on this front a
    /// vCPU's ring is the one it registers.
    pub fn on_vcpu_byte(
        &mut self,
        ring: usize,
        byte: u8,
        vm: &dyn HintTarget,
    ) -> Result<(), VmmError> {
        let Some(r) = self.rings.get_mut(ring) else {
            vm.stats().lock().expect("stats").doorbell_unknown += 1;
            return Ok(());
        };
        match r.decoder.feed(byte) {
            None => Ok(()),
            Some(DoorbellCmd::Register(gpa)) => {
                self.register(ring, gpa, vm);
                Ok(())
            }
            Some(DoorbellCmd::Unregister) => {
                self.unregister(ring);
                Ok(())
            }
            Some(DoorbellCmd::Ring) => {
                vm.stats().lock().expect("stats").doorbells += 1;
                self.serve_ring(ring, vm).map(|_| ())
            }
            // A vCPU's ring is its own on this front: ring-indexed commands are not offered.
            Some(DoorbellCmd::Unknown(_))
            | Some(DoorbellCmd::RegisterRing(..))
            | Some(DoorbellCmd::UnregisterRing(_)) => {
                vm.stats().lock().expect("stats").doorbell_unknown += 1;
                Ok(())
            }
        }
    }

    /// Handles one byte of a doorbell stream shared by every vCPU (QEMU's isa-debugcon: the
    /// host cannot tell which CPU wrote it). One decoder; REGISTER/UNREGISTER are ring 0's,
    /// REGISTER_RING/UNREGISTER_RING name their ring (feature `RINGS`; an index beyond the
    /// rings is counted as refused and changes nothing), and a RING serves every ring.
    pub fn on_stream_byte(&mut self, byte: u8, vm: &dyn HintTarget) -> Result<(), VmmError> {
        match self.rings[0].decoder.feed(byte) {
            None => Ok(()),
            Some(DoorbellCmd::Register(gpa)) => {
                self.register(0, gpa, vm);
                Ok(())
            }
            Some(DoorbellCmd::RegisterRing(ring, gpa)) => {
                if usize::from(ring) < self.rings.len() {
                    self.register(usize::from(ring), gpa, vm);
                } else {
                    vm.stats().lock().expect("stats").registrations_refused += 1;
                    tracing::debug!(ring, gpa, "refused a ring index beyond the rings");
                }
                Ok(())
            }
            Some(DoorbellCmd::Unregister) => {
                self.unregister(0);
                Ok(())
            }
            Some(DoorbellCmd::UnregisterRing(ring)) => {
                if usize::from(ring) < self.rings.len() {
                    self.unregister(usize::from(ring));
                } else {
                    vm.stats().lock().expect("stats").doorbell_unknown += 1;
                }
                Ok(())
            }
            Some(DoorbellCmd::Ring) => self.on_ring_doorbell(vm),
            Some(DoorbellCmd::Unknown(_)) => {
                vm.stats().lock().expect("stats").doorbell_unknown += 1;
                Ok(())
            }
        }
    }

    fn unregister(&mut self, ring: usize) {
        if let Some(ch) = self.rings[ring].channel.take() {
            ch.page
                .header
                .status
                .store(HeaderStatus::Unregistered as u32, Ordering::Release);
        }
    }

    /// A RING doorbell whose vCPU is not known (an ioeventfd): serves every registered ring.
    pub fn on_ring_doorbell(&mut self, vm: &dyn HintTarget) -> Result<(), VmmError> {
        vm.stats().lock().expect("stats").doorbells += 1;
        if self.rings.iter().all(|r| r.channel.is_none()) {
            vm.stats().lock().expect("stats").hints_rejected += 1;
            return Ok(());
        }
        self.serve_polled(vm).map(|_| ())
    }

    fn register(&mut self, ring: usize, gpa: u64, vm: &dyn HintTarget) {
        let region = self.region;
        let r = &mut self.rings[ring];
        r.channel = None;
        r.queued.clear();
        let Some(page) = vm.shared_page(gpa) else {
            vm.stats().lock().expect("stats").registrations_refused += 1;
            tracing::debug!(gpa, "refused shared page registration");
            return;
        };
        // One page is one ring: a page another vCPU registered is refused.
        if self.rings.iter().any(|o| {
            o.channel
                .as_ref()
                .is_some_and(|c| std::ptr::eq(c.page, page))
        }) {
            vm.stats().lock().expect("stats").registrations_refused += 1;
            tracing::debug!(gpa, ring, "refused a shared page another vCPU registered");
            return;
        }
        let h = &page.header;
        h.vpm_base.store(region.base(), Ordering::Relaxed);
        h.vpm_size.store(region.size(), Ordering::Relaxed);
        h.epoch
            .store(vm.stats().lock().expect("stats").epoch, Ordering::Relaxed);
        match Consumer::attach(page, vm.features()) {
            Ok(consumer) => self.rings[ring].channel = Some(Channel { page, consumer }),
            Err(status) => {
                vm.stats().lock().expect("stats").registrations_refused += 1;
                tracing::debug!(?status, "refused shared page header");
            }
        }
    }

    /// Number of rings (registered or not).
    pub fn ring_count(&self) -> usize {
        self.rings.len()
    }

    /// Whether a registered ring has published entries not taken yet (polled rings).
    pub fn has_published(&self) -> bool {
        self.channels().any(|ch| ch.consumer.has_published(ch.page))
    }

    /// Serves every registered ring without a doorbell (polled rings); returns the entries
    /// completed.
    pub fn serve_polled(&mut self, vm: &dyn HintTarget) -> Result<u64, VmmError> {
        let mut done = 0;
        for ring in 0..self.rings.len() {
            if self.rings[ring].channel.is_some() {
                done += self.serve_ring(ring, vm)?;
            }
        }
        Ok(done)
    }

    /// Announces on every ring that the poller goes to sleep and re-checks them
    /// (`Consumer::prepare_sleep`). If one has entries, every ring is told the poller polls
    /// again (no ring is left announcing a sleep that does not happen).
    pub fn prepare_sleep(&self) -> SleepCheck {
        let mut pending = false;
        for ch in self.channels() {
            pending |= ch.consumer.prepare_sleep(ch.page) == SleepCheck::Pending;
        }
        if pending {
            self.wake();
            SleepCheck::Pending
        } else {
            SleepCheck::Sleep
        }
    }

    /// Announces on every ring that the poller is polling (`Consumer::wake`).
    pub fn wake(&self) {
        for ch in self.channels() {
            ch.consumer.wake(ch.page);
        }
    }

    fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.rings.iter().filter_map(|r| r.channel.as_ref())
    }

    /// Serves ring `ring`'s published entries; returns how many were completed.
    fn serve_ring(&mut self, ring: usize, vm: &dyn HintTarget) -> Result<u64, VmmError> {
        let region = self.region;
        let r = &mut self.rings[ring];
        let Some(ch) = r.channel.as_mut() else {
            vm.stats().lock().expect("stats").hints_rejected += 1;
            return Ok(0);
        };
        let page = ch.page;
        // Counted locally and added once per doorbell: no lock per entry on the hint path.
        let (mut served, mut rejected, mut stopped) = (0u64, 0u64, false);
        let outcome = loop {
            let taken = match ch.consumer.take(page) {
                Ok(Some(t)) => t,
                Ok(None) => break Ok(()),
                Err(_) => {
                    stopped = true;
                    rejected += 1;
                    break Ok(());
                }
            };
            let result = match decode_entry(&taken.entry, &region) {
                Ok(hint) => match act(hint, region, &mut r.queued, vm, page, ring) {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                },
                Err(e) => e,
            };
            if result == HintResult::Ok {
                served += 1;
            } else {
                rejected += 1;
            }
            ch.consumer.finish(page, &taken, result.code());
        };
        let mut s = vm.stats().lock().expect("stats");
        s.hints_served += served;
        s.hints_rejected += rejected;
        s.rings_stopped += stopped as u64;
        if s.ring_hints.len() <= ring {
            s.ring_hints.resize(ring + 1, 0);
        }
        s.ring_hints[ring] += served + rejected;
        outcome.map(|()| served + rejected)
    }
}

/// Carries out one checked hint.
fn act(
    hint: Hint,
    region: VpmRegion,
    queued: &mut Vec<VpmRange>,
    vm: &dyn HintTarget,
    page: &SharedPage,
    ring: usize,
) -> Result<HintResult, VmmError> {
    // decode_entry checked the range against the region: this cannot fail, but if it did the
    // guest gets the answer a range outside its vPM gets.
    let offset = |r: vpm_abi::GuestRange| VpmRange::in_region(r, &region);
    let range = match hint {
        Hint::Persist(r) | Hint::Flush(r) | Hint::SetTransient(r) | Hint::SetPersistent(r) => {
            match offset(r) {
                Ok(v) => Some(v),
                Err(_) => return Ok(HintResult::OutOfRange),
            }
        }
        _ => None,
    };
    Ok(match (hint, range, vm.mode()) {
        (Hint::Nop, _, _) => HintResult::Ok,
        (Hint::Info, _, _) => {
            page.header
                .epoch
                .store(vm.stats().lock().expect("stats").epoch, Ordering::Relaxed);
            page.header
                .host_features
                .store(vm.features(), Ordering::Relaxed);
            HintResult::Ok
        }
        (Hint::Persist(_), Some(r), Mode::Pv) => vm.persist(&[r])?,
        (Hint::Flush(_), Some(r), Mode::Pv) => {
            queued.push(r);
            HintResult::Ok
        }
        (Hint::Drain, _, Mode::Pv) => {
            let ranges = std::mem::take(queued);
            let res = if ranges.is_empty() {
                HintResult::Ok
            } else {
                vm.persist(&ranges)?
            };
            vm.witness_drain_ring(ring);
            res
        }
        // msync mode: a flush only notes that a drain has work; a persist or such a drain msyncs
        // the whole region.
        (Hint::Flush(_), Some(r), Mode::Msync) => {
            queued.push(r);
            HintResult::Ok
        }
        (Hint::Drain, _, Mode::Msync) if queued.is_empty() => HintResult::Ok,
        (Hint::Persist(_) | Hint::Drain, _, Mode::Msync) => {
            queued.clear();
            vm.msync_region()?
        }
        // Direct mode has ADR semantics: stores are in PM already; the guest's own flushes count.
        (Hint::Persist(_) | Hint::Flush(_) | Hint::Drain, _, Mode::Direct) => HintResult::Ok,
        (Hint::SetTransient(_), Some(r), Mode::Pv) => vm.set_transient(r, true)?,
        (Hint::SetPersistent(_), Some(r), Mode::Pv) => vm.set_transient(r, false)?,
        (Hint::RequestEpoch, _, Mode::Full | Mode::Pv) => vm.request_epoch()?,
        _ => HintResult::NotSupported,
    })
}

#[cfg(any(test, feature = "hint-harness"))]
pub mod harness;
#[cfg(test)]
mod prop;
#[cfg(test)]
mod tests;

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
}

/// A registered shared page.
struct Channel {
    page: &'static SharedPage,
    consumer: Consumer,
}

/// The per-VM hint service, owned by the vCPU thread.
pub struct HintService {
    decoder: DoorbellDecoder,
    channel: Option<Channel>,
    region: VpmRegion,
    /// Flushed ranges waiting for a drain.
    queued: Vec<VpmRange>,
}

impl HintService {
    /// A service for a vPM of `size` bytes at guest-physical `base`.
    pub fn new(base: u64, size: u64) -> HintService {
        HintService {
            decoder: DoorbellDecoder::new(),
            channel: None,
            region: VpmRegion::new(base, size).expect("vPM region is whole pages"),
            queued: Vec::new(),
        }
    }

    /// Handles one doorbell byte.
    pub fn on_byte(&mut self, byte: u8, vm: &dyn HintTarget) -> Result<(), VmmError> {
        match self.decoder.feed(byte) {
            None => Ok(()),
            Some(DoorbellCmd::Register(gpa)) => {
                self.register(gpa, vm);
                Ok(())
            }
            Some(DoorbellCmd::Unregister) => {
                if let Some(ch) = self.channel.take() {
                    ch.page
                        .header
                        .status
                        .store(HeaderStatus::Unregistered as u32, Ordering::Release);
                }
                Ok(())
            }
            Some(DoorbellCmd::Ring) => {
                vm.stats().lock().expect("stats").doorbells += 1;
                self.serve_ring(vm).map(|_| ())
            }
            Some(DoorbellCmd::Unknown(_)) => {
                vm.stats().lock().expect("stats").doorbell_unknown += 1;
                Ok(())
            }
        }
    }

    fn register(&mut self, gpa: u64, vm: &dyn HintTarget) {
        self.channel = None;
        self.queued.clear();
        let Some(page) = vm.shared_page(gpa) else {
            vm.stats().lock().expect("stats").registrations_refused += 1;
            tracing::debug!(gpa, "refused shared page registration");
            return;
        };
        let h = &page.header;
        h.vpm_base.store(self.region.base(), Ordering::Relaxed);
        h.vpm_size.store(self.region.size(), Ordering::Relaxed);
        h.epoch
            .store(vm.stats().lock().expect("stats").epoch, Ordering::Relaxed);
        match Consumer::attach(page, vm.features()) {
            Ok(consumer) => self.channel = Some(Channel { page, consumer }),
            Err(status) => {
                vm.stats().lock().expect("stats").registrations_refused += 1;
                tracing::debug!(?status, "refused shared page header");
            }
        }
    }

    /// Whether the registered ring has published entries not taken yet (polled rings).
    pub fn has_published(&self) -> bool {
        self.channel
            .as_ref()
            .is_some_and(|ch| ch.consumer.has_published(ch.page))
    }

    /// Serves the ring without a doorbell (polled rings); returns the entries completed.
    pub fn serve_polled(&mut self, vm: &dyn HintTarget) -> Result<u64, VmmError> {
        if self.channel.is_none() {
            return Ok(0);
        }
        self.serve_ring(vm)
    }

    /// Announces that the poller goes to sleep and re-checks the ring (`Consumer::prepare_sleep`).
    pub fn prepare_sleep(&self) -> SleepCheck {
        match &self.channel {
            Some(ch) => ch.consumer.prepare_sleep(ch.page),
            None => SleepCheck::Sleep,
        }
    }

    /// Announces that the poller is polling (`Consumer::wake`).
    pub fn wake(&self) {
        if let Some(ch) = &self.channel {
            ch.consumer.wake(ch.page);
        }
    }

    /// Serves published entries; returns how many were completed.
    fn serve_ring(&mut self, vm: &dyn HintTarget) -> Result<u64, VmmError> {
        let Some(ch) = self.channel.as_mut() else {
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
            let result = match decode_entry(&taken.entry, &self.region) {
                Ok(hint) => match act(hint, self.region, &mut self.queued, vm, page) {
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
            vm.witness_drain();
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

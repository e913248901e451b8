//! Polled rings (ABI 1.1, feature [`super::op::features::POLLED`]): the handshake that lets a
//! guest skip the doorbell while a host thread is polling the ring, without ever losing a wake-up.
//!
//! Two words take part: `produced` (written by the guest) and `host_state` (written by the host,
//! [`HOST_SLEEPING`] or [`HOST_POLLING`]). Each side stores its own word, executes a full
//! (sequentially consistent) fence, then loads the other side's word:
//!
//! - guest ([`announce`]): store `produced` (release), fence, load `host_state`; ring the doorbell
//!   unless the host is polling;
//! - host ([`prepare_sleep`]): store `host_state = SLEEPING`, fence, load `produced`; if entries
//!   arrived meanwhile, store `POLLING` again and consume them instead of sleeping; after any
//!   wake-up ([`wake`]) store `POLLING`.
//!
//! The two fences are totally ordered, so at least one side sees the other's store: either the
//! host's re-check sees the new `produced` (and does not sleep), or the guest sees `SLEEPING` (and
//! rings). A wake-up can be spurious (the guest rang, then the host's re-check found the entries
//! anyway), never lost.
//!
//! The functions are generic over [`HandshakeWord`] so that the same code runs on the shared page
//! (`core` atomics) and under the `loom` model checker (`abi/tests/loom_handshake.rs`).

use core::sync::atomic::{fence, AtomicU32, Ordering};

use super::ring::{Producer, Ticket};

/// `host_state`: the host may be blocked on the doorbell; a guest that publishes must ring.
/// Zero, so a header nobody updates (a 1.0 host, a channel without [`super::op::features::POLLED`])
/// always asks for the doorbell.
pub const HOST_SLEEPING: u32 = 0;
/// `host_state`: a host thread is polling `produced`; a guest need not ring.
pub const HOST_POLLING: u32 = 1;

/// Whether the guest must ring the doorbell after publishing.
#[must_use = "a guest that ignores NeedsDoorbell::Yes can leave its entries unserved"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedsDoorbell {
    /// The host may be asleep: ring the doorbell (RING command).
    Yes,
    /// The host was polling after the entries were published: it will see them without a doorbell.
    No,
}

/// What the host should do after announcing that it goes to sleep.
#[must_use = "a host that sleeps on SleepCheck::Pending loses the guest's entries until its next doorbell"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SleepCheck {
    /// Nothing new was published: block on the doorbell.
    Sleep,
    /// Entries arrived before the announcement was visible; `host_state` is `POLLING` again and the
    /// host must consume them instead of sleeping.
    Pending,
}

/// A 32-bit shared word with the operations the handshake needs. Implemented for
/// [`AtomicU32`]; the loom test implements it for loom's atomic.
pub trait HandshakeWord {
    /// Atomic load.
    fn load(&self, order: Ordering) -> u32;
    /// Atomic store.
    fn store(&self, value: u32, order: Ordering);
    /// A full memory fence in the same memory model as the word (`mfence` on x86-64).
    fn full_fence();
}

impl HandshakeWord for AtomicU32 {
    fn load(&self, order: Ordering) -> u32 {
        AtomicU32::load(self, order)
    }

    fn store(&self, value: u32, order: Ordering) {
        AtomicU32::store(self, value, order)
    }

    fn full_fence() {
        fence(Ordering::SeqCst)
    }
}

/// Guest side: publishes `produced` (the free-running index one past the newest entry, whose
/// fields are already written) and tells whether the doorbell is needed. With `polled` false (the
/// host did not grant the feature) the answer is always [`NeedsDoorbell::Yes`].
pub fn announce<W: HandshakeWord>(
    produced: &W,
    host_state: &W,
    index: u32,
    polled: bool,
) -> NeedsDoorbell {
    produced.store(index, Ordering::Release);
    if !polled {
        return NeedsDoorbell::Yes;
    }
    W::full_fence();
    if host_state.load(Ordering::Relaxed) == HOST_POLLING {
        NeedsDoorbell::No
    } else {
        NeedsDoorbell::Yes
    }
}

/// Host side, before blocking on the doorbell: announces `SLEEPING`, then re-checks `produced`
/// against `taken` (the host's own index of the next entry to take).
pub fn prepare_sleep<W: HandshakeWord>(host_state: &W, produced: &W, taken: u32) -> SleepCheck {
    host_state.store(HOST_SLEEPING, Ordering::Relaxed);
    W::full_fence();
    if produced.load(Ordering::Acquire) == taken {
        SleepCheck::Sleep
    } else {
        host_state.store(HOST_POLLING, Ordering::Relaxed);
        SleepCheck::Pending
    }
}

/// Host side, after a wake-up (doorbell, or the decision to start polling): announces `POLLING`.
/// The host must look at `produced` after this store, which any poll loop does.
pub fn wake<W: HandshakeWord>(host_state: &W) {
    host_state.store(HOST_POLLING, Ordering::Relaxed);
    W::full_fence();
}

/// [`Producer::wait_for`] ran out of budget before the host completed the entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StillPending;

impl Producer<'_> {
    /// Spins until the host has completed `ticket`, at most `budget` times
    /// [`core::hint::spin_loop`]; returns the entry's result code, or [`StillPending`] when the
    /// budget ran out (the caller decides: spin again, ring, or give up).
    pub fn wait_for(&self, ticket: Ticket, budget: u64) -> Result<i32, StillPending> {
        let mut spins = 0u64;
        loop {
            if let Some(result) = self.result(ticket) {
                return Ok(result);
            }
            if spins >= budget {
                return Err(StillPending);
            }
            spins += 1;
            core::hint::spin_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::op::{features, HeaderStatus, Op};
    use super::super::ring::tests::registered;
    use super::super::ring::{Consumer, SharedPage};
    use super::*;

    #[test]
    fn a_sleeping_or_unpolled_host_needs_the_doorbell() {
        let (produced, state) = (AtomicU32::new(0), AtomicU32::new(HOST_SLEEPING));
        assert_eq!(announce(&produced, &state, 1, true), NeedsDoorbell::Yes);
        state.store(HOST_POLLING, Ordering::Relaxed);
        assert_eq!(announce(&produced, &state, 2, false), NeedsDoorbell::Yes);
        assert_eq!(announce(&produced, &state, 3, true), NeedsDoorbell::No);
        assert_eq!(produced.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_host_rechecks_before_sleeping() {
        let (produced, state) = (AtomicU32::new(5), AtomicU32::new(HOST_POLLING));
        assert_eq!(prepare_sleep(&state, &produced, 5), SleepCheck::Sleep);
        assert_eq!(state.load(Ordering::Relaxed), HOST_SLEEPING);
        produced.store(6, Ordering::Relaxed);
        assert_eq!(prepare_sleep(&state, &produced, 5), SleepCheck::Pending);
        assert_eq!(state.load(Ordering::Relaxed), HOST_POLLING);
        state.store(HOST_SLEEPING, Ordering::Relaxed);
        wake(&state);
        assert_eq!(state.load(Ordering::Relaxed), HOST_POLLING);
    }

    #[test]
    fn polled_rings_skip_the_doorbell_only_while_the_host_polls() {
        let page = SharedPage::zeroed();
        let mut p = Producer::prepare(&page, 8, features::ALL).unwrap();
        let mut c = Consumer::attach(&page, features::POLLED).unwrap();
        assert!(p.polled());
        let t = p.push(Op::Nop.code(), 0, 0).unwrap();
        assert_eq!(p.publish(), NeedsDoorbell::Yes);
        c.wake(&page);
        assert_eq!(p.publish(), NeedsDoorbell::No);
        assert_eq!(c.prepare_sleep(&page), SleepCheck::Pending);
        assert_eq!(p.wait_for(t, 10), Err(StillPending));
        let taken = c.take(&page).unwrap().unwrap();
        assert!(c.finish(&page, &taken, 0));
        assert_eq!(p.wait_for(t, 0), Ok(0));
        assert_eq!(c.prepare_sleep(&page), SleepCheck::Sleep);
        p.push(Op::Nop.code(), 0, 0).unwrap();
        assert_eq!(p.publish(), NeedsDoorbell::Yes);
    }

    #[test]
    fn a_staged_entry_is_invisible_until_published() {
        let page = SharedPage::zeroed();
        let (mut p, mut c) = registered(&page, 4);
        let t = p.stage(Op::Persist.code(), 0x1000, 64).unwrap();
        assert_eq!(p.in_flight(), 1);
        assert!(!c.has_published(&page));
        assert_eq!(c.take(&page), Ok(None));
        assert_eq!(p.publish(), NeedsDoorbell::Yes);
        let taken = c.take(&page).unwrap().unwrap();
        assert_eq!((taken.index, taken.entry.gpa), (t.index, 0x1000));
    }

    #[test]
    fn a_1_0_guest_is_served_and_never_granted_polled_rings() {
        let page = SharedPage::zeroed();
        let p = Producer::prepare(&page, 8, features::ALL).unwrap();
        page.header
            .version
            .store(super::super::wire::pack_version(1, 0), Ordering::Relaxed);
        let c = Consumer::attach(&page, features::ALL).unwrap();
        assert_eq!(
            page.header.host_features.load(Ordering::Relaxed),
            features::ALL_1_0
        );
        c.wake(&page);
        assert_eq!(p.publish(), NeedsDoorbell::Yes);
    }

    #[test]
    fn a_stopped_ring_sleeps_instead_of_spinning() {
        let page = SharedPage::zeroed();
        let (_p, mut c) = registered(&page, 2);
        page.header.produced.store(9, Ordering::Release);
        assert!(c.has_published(&page));
        assert_eq!(c.take(&page), Err(HeaderStatus::BadIndex));
        assert!(!c.has_published(&page));
        assert_eq!(c.prepare_sleep(&page), SleepCheck::Sleep);
    }
}

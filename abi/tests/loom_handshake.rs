//! Model check of the polled-ring handshake (`vpm_abi::proto::poll`) with `loom`: a guest thread
//! publishes entries and rings only when told to, while a host thread consumes, announces that it
//! goes to sleep, re-checks and blocks on a doorbell. Every interleaving (up to the preemption
//! bound) must end with every entry consumed; a lost wake-up shows up as a deadlock, which loom
//! reports as a failure. Run with `abi/run-loom.sh` (needs `RUSTFLAGS="--cfg loom"`).
#![cfg(loom)]

use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use loom::sync::{Arc, Condvar, Mutex};
use vpm_abi::proto::poll::{self, HandshakeWord, NeedsDoorbell, SleepCheck, HOST_POLLING};

/// The handshake's word on loom's atomics, with a real full fence.
struct Word(AtomicU32);

impl HandshakeWord for Word {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }

    fn store(&self, value: u32, order: Ordering) {
        self.0.store(value, order)
    }

    fn full_fence() {
        fence(Ordering::SeqCst)
    }
}

/// The same word with the fence left out: the handshake is then wrong, and loom must say so.
struct Unfenced(AtomicU32);

impl HandshakeWord for Unfenced {
    fn load(&self, order: Ordering) -> u32 {
        self.0.load(order)
    }

    fn store(&self, value: u32, order: Ordering) {
        self.0.store(value, order)
    }

    fn full_fence() {}
}

/// A small ring: `produced`, `host_state`, the slots, and the doorbell (a flag and a condvar, the
/// loom stand-in for the ioeventfd the host blocks on).
struct Ring<W> {
    produced: W,
    host_state: W,
    slots: Vec<AtomicU64>,
    doorbell: Mutex<bool>,
    rung: Condvar,
}

/// Entries the guest publishes in one model run (the ring has as many slots, so it never fills).
const ENTRIES: u32 = 3;

fn ring<W>(word: fn(u32) -> W, host_starts_polling: bool) -> Arc<Ring<W>> {
    Arc::new(Ring {
        produced: word(0),
        host_state: word(if host_starts_polling { HOST_POLLING } else { 0 }),
        slots: (0..ENTRIES).map(|_| AtomicU64::new(0)).collect(),
        doorbell: Mutex::new(false),
        rung: Condvar::new(),
    })
}

fn guest<W: HandshakeWord>(r: &Ring<W>) {
    for i in 0..ENTRIES {
        r.slots[i as usize].store(u64::from(i) + 100, Ordering::Relaxed);
        if poll::announce(&r.produced, &r.host_state, i + 1, true) == NeedsDoorbell::Yes {
            *r.doorbell.lock().unwrap() = true;
            r.rung.notify_one();
        }
    }
}

fn host<W: HandshakeWord>(r: &Ring<W>, starts_polling: bool) {
    let mut taken = 0u32;
    let mut asleep = !starts_polling;
    loop {
        if asleep {
            let mut rang = r.doorbell.lock().unwrap();
            while !*rang {
                rang = r.rung.wait(rang).unwrap();
            }
            *rang = false;
            drop(rang);
            poll::wake(&r.host_state);
        }
        while r.produced.load(Ordering::Acquire) != taken {
            let v = r.slots[taken as usize].load(Ordering::Relaxed);
            assert_eq!(
                v,
                u64::from(taken) + 100,
                "entry read before it was written"
            );
            taken += 1;
        }
        if taken == ENTRIES {
            return;
        }
        asleep = poll::prepare_sleep(&r.host_state, &r.produced, taken) == SleepCheck::Sleep;
    }
}

fn model<W: HandshakeWord + Send + Sync + 'static>(word: fn(u32) -> W, host_starts_polling: bool) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(move || {
        let r = ring(word, host_starts_polling);
        let g = {
            let r = r.clone();
            loom::thread::spawn(move || guest(&*r))
        };
        host(&r, host_starts_polling);
        g.join().unwrap();
    });
}

#[test]
fn no_entry_is_lost_when_the_host_starts_polling() {
    model(|v| Word(AtomicU32::new(v)), true);
}

#[test]
fn no_entry_is_lost_when_the_host_starts_asleep() {
    model(|v| Word(AtomicU32::new(v)), false);
}

/// Shows that the model can fail: without the fences the host may sleep on an entry it missed.
#[test]
#[should_panic(expected = "deadlock")]
fn without_the_fences_a_wake_up_is_lost() {
    model(|v| Unfenced(AtomicU32::new(v)), true);
}

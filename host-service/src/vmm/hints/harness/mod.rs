//! A harness that drives the real hint service ([`HintService`]) serving a guest whose shared
//! page, ring entries, doorbell bytes and vPM content are chosen by the caller, on top of a real
//! pool (simulated PM) holding the guest's tenant and a neighbour tenant. The cargo-fuzz target
//! `hint_service` (host-service/fuzz) feeds it bytes ([`run_bytes`]); the proptest in
//! `hints/prop.rs` feeds it generated [`Step`]s ([`run`]). Built for tests and with the feature
//! `hint-harness` only.
//!
//! Promises checked after every doorbell byte (a broken one panics):
//! - nothing panics;
//! - guest RAM outside the pages the service was handed as shared pages is unchanged (the vPM
//!   included: the host only reads it), and in a ring slot only the `result` word may change;
//! - an entry the service finishes whose op, flags or range are invalid (an unknown op, flags,
//!   a zero, overflowing or out-of-vPM range, an unaligned transient mark) is answered with an
//!   error, never `Ok` (checked against this file's own reading of `docs/protocol.md`, not the
//!   service's decoder);
//! - the pool is only asked to act on ranges inside the tenant's vPM;
//! - the neighbour tenant's durable pages are unchanged;
//! - a byte that completed no entry with `Ok` issued no store, flush or drain to the pool or
//!   capacity device (so both stay byte-identical);
//! - after every accepted persist or epoch, the crash image with nothing unflushed surviving
//!   recovers to exactly the model: each accepted persist range and epoch carries the vPM bytes it
//!   was given, every other byte keeps its last durable value (pages ever marked transient are
//!   left out: they read as zeros by design).
//!
//! The simulated VM the service serves (guest RAM, a pool target and its neighbour) is in
//! [`world`]; this file holds the steps, their interpreter and the checks.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vpm_abi::proto::doorbell::encode;
use vpm_abi::proto::wire::{ENTRY_SIZE, RING_SLOTS};
use vpm_abi::{
    features, DoorbellCmd, HintResult, RawEntry, SharedPage, ABI_VERSION, MAGIC, PAGE_SIZE,
    RESULT_PENDING,
};

use super::HintService;
use crate::pm::sim::{CrashSpace, SimClock, SimPm};
use crate::pool::Pool;
use crate::vmm::Mode;

const PAGE: usize = PAGE_SIZE as usize;
/// Guest RAM: 8 pages; the vPM is pages 4..8.
const RAM_PAGES: usize = 8;
const RAM_LEN: usize = RAM_PAGES * PAGE;
const VPM_PAGE: usize = 4;
/// Guest-physical base of the vPM.
pub const VPM_BASE: u64 = (VPM_PAGE * PAGE) as u64;
/// vPM pages.
pub const VPM_PAGES: usize = RAM_PAGES - VPM_PAGE;
/// vPM bytes.
pub const VPM_LEN: usize = VPM_PAGES * PAGE;
const POOL_SIZE: u64 = 256 << 10;

mod world;
use world::{ram, ram_copy, world, World};

/// One thing the guest (or a broken guest) does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The guest stores `val` into `len` vPM bytes at offset `off` (clamped to the vPM).
    WriteVpm {
        /// Offset into the vPM (taken modulo its size).
        off: usize,
        /// Bytes (at least 1, clamped to the vPM's end).
        len: usize,
        /// The byte stored.
        val: u8,
    },
    /// Raw bytes into ring slot `slot % 8` of the shared page, no doorbell.
    RawSlot {
        /// Slot (modulo 8).
        slot: usize,
        /// The entry's wire bytes.
        raw: [u8; ENTRY_SIZE],
    },
    /// An entry (result pending) in the next slot, published by bumping `produced`, and a
    /// RING doorbell.
    Publish {
        /// Op code (any value).
        op: u16,
        /// Flags (any value; 0 is the only valid one).
        flags: u16,
        /// Guest-physical start.
        gpa: u64,
        /// Length in bytes.
        len: u64,
        /// Sequence number.
        seq: u64,
    },
    /// Sets a header word: `field % 6` picks magic, version, ring_entries, produced,
    /// guest_features or consumed.
    Header {
        /// Which word.
        field: u8,
        /// Its new value (truncated to the word's width).
        value: u64,
    },
    /// Raw doorbell bytes.
    Doorbell(Vec<u8>),
    /// A REGISTER doorbell for page 1 after writing a well-formed header with this many ring
    /// entries.
    RegisterGood {
        /// Ring entries (1, 2, 4 or 8 make sense).
        entries: u32,
    },
    /// A REGISTER doorbell for any guest-physical address.
    Register(u64),
    /// An UNREGISTER doorbell.
    Unregister,
    /// A RING doorbell.
    Ring,
}

/// What a run saw (for a caller that wants to know the input exercised something).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// Entries the service finished.
    pub finished: u64,
    /// Of those, invalid entries, each answered with an error.
    pub refused_bad: u64,
    /// Invalid transient or persistent marks among `refused_bad`.
    pub refused_bad_marks: u64,
    /// Persists and epochs the pool accepted.
    pub accepted: u64,
}

/// Reads `n` bytes from the input, zero-padded past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        let n = self.0.len().min(N);
        out[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        out
    }
    fn u8(&mut self) -> u8 {
        self.bytes::<1>()[0]
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

/// Some guest-physical address: mostly near or inside the vPM, sometimes anything.
fn gpa(input: &mut Input) -> u64 {
    let sel = input.u8();
    let v = input.u16() as u64;
    match sel % 4 {
        0 => input.u64(),
        1 => VPM_BASE.wrapping_sub(PAGE_SIZE) + v % (VPM_LEN as u64 + 2 * PAGE_SIZE),
        _ => VPM_BASE + v % VPM_LEN as u64,
    }
}

/// The shared page registered most often: page 1.
const SHARED: u64 = PAGE_SIZE;

/// A well-formed header at page 1, so that most inputs get a served ring.
fn guest_header(entries: u32) {
    // SAFETY: page 1 of the RAM block; atomics only.
    let page = unsafe { SharedPage::from_ptr(ram().add(PAGE)) };
    let h = &page.header;
    h.magic.store(MAGIC, Ordering::Relaxed);
    h.version.store(ABI_VERSION, Ordering::Relaxed);
    h.guest_features.store(features::ALL, Ordering::Relaxed);
    h.ring_entries.store(entries, Ordering::Relaxed);
}

/// Reads one step from fuzzer bytes (the byte format the committed seeds use).
fn parse_step(input: &mut Input) -> Step {
    match input.u8() % 8 {
        0 => {
            let off = input.u16() as usize;
            let len = input.u8() as usize + 1;
            Step::WriteVpm {
                off,
                len,
                val: input.u8(),
            }
        }
        1 => {
            let slot = input.u8() as usize;
            Step::RawSlot {
                slot,
                raw: input.bytes(),
            }
        }
        2 => {
            let op = (input.u8() % 9) as u16;
            let gpa = gpa(input);
            let len = match input.u8() % 4 {
                0 => input.u64(),
                1 => PAGE_SIZE * (input.u8() as u64 % 3),
                _ => input.u8() as u64 + 1,
            };
            Step::Publish {
                op,
                flags: 0,
                gpa,
                len,
                seq: input.u8() as u64,
            }
        }
        3 => {
            let value = input.u64();
            Step::Header {
                field: input.u8(),
                value,
            }
        }
        4 => {
            let n = input.u8() as usize % 10;
            Step::Doorbell((0..n).map(|_| input.u8()).collect())
        }
        5 => match input.u8() % 4 {
            0 => Step::Register(gpa(input)),
            1 => Step::Register(input.u64()),
            _ => Step::RegisterGood {
                entries: 1 << (input.u8() % 4),
            },
        },
        6 => Step::Unregister,
        _ => Step::Ring,
    }
}

/// Applies one step to guest RAM; returns the doorbell bytes it wants fed to the service.
fn apply(step: &Step, out: &mut Vec<u8>, written: &RefCell<Vec<bool>>) {
    // SAFETY: page 1 of the RAM block, the page guests register; atomics only.
    let page = unsafe { SharedPage::from_ptr(ram().add(PAGE)) };
    let h = &page.header;
    match step {
        Step::WriteVpm { off, len, val } => {
            let off = off % VPM_LEN;
            let len = (*len).clamp(1, VPM_LEN - off);
            // SAFETY: inside the vPM of the RAM block; single-threaded.
            unsafe { std::ptr::write_bytes(ram().add(VPM_BASE as usize + off), *val, len) };
            written.borrow_mut()[off..off + len].fill(true);
        }
        Step::RawSlot { slot, raw } => page.ring[slot % 8].store(&RawEntry::from_bytes(raw)),
        Step::Publish {
            op,
            flags,
            gpa,
            len,
            seq,
        } => {
            let idx = h.produced.load(Ordering::Relaxed);
            let e = RawEntry {
                op: *op,
                flags: *flags,
                result: RESULT_PENDING,
                seq: *seq,
                gpa: *gpa,
                len: *len,
            };
            page.ring[(idx & 7) as usize].store(&e);
            h.produced.store(idx.wrapping_add(1), Ordering::Release);
            out.extend(doorbell(DoorbellCmd::Ring));
        }
        Step::Header { field, value } => {
            let v = *value;
            match field % 6 {
                0 => h.magic.store(v, Ordering::Relaxed),
                1 => h.version.store(v as u32, Ordering::Relaxed),
                2 => h.ring_entries.store(v as u32, Ordering::Relaxed),
                3 => h.produced.store(v as u32, Ordering::Relaxed),
                4 => h.guest_features.store(v as u32, Ordering::Relaxed),
                _ => h.consumed.store(v as u32, Ordering::Relaxed),
            }
        }
        Step::Doorbell(bytes) => out.extend(bytes),
        Step::RegisterGood { entries } => {
            guest_header(*entries);
            out.extend(doorbell(DoorbellCmd::Register(SHARED)));
        }
        Step::Register(at) => out.extend(doorbell(DoorbellCmd::Register(*at))),
        Step::Unregister => out.extend(doorbell(DoorbellCmd::Unregister)),
        Step::Ring => out.extend(doorbell(DoorbellCmd::Ring)),
    }
}

fn doorbell(cmd: DoorbellCmd) -> Vec<u8> {
    let mut b = [0u8; vpm_abi::MAX_CMD_BYTES];
    let n = encode(cmd, &mut b);
    b[..n].to_vec()
}

/// Whether `a` and `b` (guest RAM images) agree outside the granted pages.
fn same_outside_granted(a: &[u8], b: &[u8], granted: &[usize]) -> bool {
    a.chunks(PAGE)
        .zip(b.chunks(PAGE))
        .enumerate()
        .all(|(p, (x, y))| granted.contains(&p) || x == y)
}

/// The tenant's durable content (pessimistic crash image, recovered) matches the model.
fn check_durable(w: &World) {
    let (base, trace) = w.pm.trace();
    let img = CrashSpace::at(&base, &trace, u64::MAX).pessimistic();
    let (cbase, ctrace) = w.cap.trace();
    let cimg = CrashSpace::at(&cbase, &ctrace, u64::MAX).pessimistic();
    let clock = SimClock::default();
    let pm = Arc::new(SimPm::from_image(img, clock.clone()));
    let cap = Arc::new(SimPm::from_image(cimg, clock));
    let (pool, _) = Pool::open(pm, cap).expect("the crash image recovers");
    let model = w.target.model.borrow();
    let marked = w.target.marked.borrow();
    let written = w.target.written.borrow();
    let mut buf = vec![0u8; PAGE];
    for vpn in 0..VPM_PAGES {
        if marked[vpn] {
            continue;
        }
        pool.read_home(w.target.tenant, vpn as u64, &mut buf)
            .expect("read home");
        for (i, &b) in buf.iter().enumerate() {
            let at = vpn * PAGE + i;
            assert!(
                written[at] || b == model[at],
                "vPM byte {at:#x}: durable {b:#x}, but the accepted persists and epochs say {:#x}",
                model[at]
            );
        }
    }
    for (vpn, want) in w.neighbour_pages.iter().enumerate() {
        pool.read_home(w.neighbour, vpn as u64, &mut buf)
            .expect("read neighbour home");
        assert!(buf == *want, "the neighbour's page {vpn} changed");
    }
}

/// Whether an entry is invalid whatever the VM's state: an unknown op, flags set, or (ops with a
/// range) a zero length, an end past `u64::MAX`, a range not inside the vPM, or (marks) a range
/// that is not whole pages. Written from the protocol, independently of `decode_entry`.
fn invalid(e: &RawEntry) -> bool {
    // Persist, flush, set-transient, set-persistent carry a range; 0, 1, 4, 7 do not.
    let ranged = matches!(e.op, 2 | 3 | 5 | 6);
    if e.op > 7 || e.flags != 0 {
        return true;
    }
    if !ranged {
        return false;
    }
    let Some(end) = e.gpa.checked_add(e.len) else {
        return true;
    };
    let outside = e.len == 0 || e.gpa < VPM_BASE || end > VPM_BASE + VPM_LEN as u64;
    let mark = matches!(e.op, 5 | 6);
    outside || (mark && (e.gpa % PAGE_SIZE != 0 || e.len % PAGE_SIZE != 0))
}

/// The entries of every slot of every page that may be a shared page (pages below the vPM).
fn slots() -> Vec<RawEntry> {
    (0..VPM_PAGE)
        .flat_map(|p| {
            // SAFETY: page `p` of the RAM block; atomics only.
            let page = unsafe { SharedPage::from_ptr(ram().add(p * PAGE)) };
            (0..RING_SLOTS).map(move |s| page.ring[s].load())
        })
        .collect()
}

/// Checks the answers the service wrote into ring slots while handling one byte.
fn check_answers(before: &[RawEntry], after: &[RawEntry], report: &mut Report) {
    for (i, (b, a)) in before.iter().zip(after).enumerate() {
        let (page, slot) = (i / RING_SLOTS, i % RING_SLOTS);
        let mut fields = *a;
        fields.result = b.result;
        assert!(
            fields == *b,
            "the service changed more than `result` in slot {slot} of page {page}: {b:?} -> {a:?}"
        );
        if a.result == b.result {
            continue;
        }
        report.finished += 1;
        if invalid(a) {
            assert!(
                a.result != HintResult::Ok.code(),
                "an invalid entry was answered Ok: {a:?}"
            );
            report.refused_bad += 1;
            report.refused_bad_marks += matches!(a.op, 5 | 6) as u64;
        }
    }
}

/// Runs fuzzer bytes: byte 0 picks the VM mode, the rest is a stream of steps. Panics when a
/// promise (module docs) is broken.
pub fn run_bytes(data: &[u8]) -> Report {
    let Some((&mode, rest)) = data.split_first() else {
        return Report::default();
    };
    let mode = match mode % 5 {
        0 => Mode::Full,
        1 => Mode::Direct,
        2 => Mode::Msync,
        _ => Mode::Pv,
    };
    let mut input = Input(rest);
    let steps = std::iter::from_fn(|| (!input.0.is_empty()).then(|| parse_step(&mut input)));
    run(mode, steps)
}

/// Runs `steps` against a fresh pool (from a template built once per process) and a zeroed guest
/// on this thread. Panics when a promise (module docs) is broken.
pub fn run(mode: Mode, steps: impl IntoIterator<Item = Step>) -> Report {
    // SAFETY: the whole RAM block; no shared page of an earlier run is in use any more.
    unsafe { std::ptr::write_bytes(ram(), 0, RAM_LEN) };
    let w = world(mode);
    let mut service = HintService::new(VPM_BASE, VPM_LEN as u64);
    let mut report = Report::default();
    let mut bytes = Vec::new();
    for step in steps {
        bytes.clear();
        apply(&step, &mut bytes, &w.target.written);
        for &b in &bytes {
            let ram_before = ram_copy();
            let slots_before = slots();
            let granted_before = w.target.granted.borrow().clone();
            let ops_before = w.pm.clock().now();
            let served_before = w.target.stats.lock().unwrap().hints_served;
            *w.target.accepted.borrow_mut() = 0;
            if let Err(e) = service.on_byte(b, &w.target) {
                // An error is the VMM's own failure (not the guest's); none is expected here.
                panic!("hint service failed: {e}");
            }
            check_answers(&slots_before, &slots(), &mut report);
            let granted = w.target.granted.borrow().clone();
            let mut all = granted_before;
            all.extend(granted);
            assert!(
                same_outside_granted(&ram_before, &ram_copy(), &all),
                "the service wrote guest RAM outside the shared pages it was given"
            );
            let served = w.target.stats.lock().unwrap().hints_served - served_before;
            if served == 0 {
                // Both devices stamp every store, flush and drain on one clock: a batch that
                // was refused entirely must not have issued any.
                assert!(
                    w.pm.clock().now() == ops_before,
                    "a refused batch wrote to the pool or capacity device"
                );
            }
            let accepted = *w.target.accepted.borrow();
            report.accepted += accepted as u64;
            if accepted > 0 {
                check_durable(&w);
            }
        }
    }
    check_durable(&w);
    report
}

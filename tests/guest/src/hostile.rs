//! Hostile hints: everything a broken or malicious guest could send. Each must get its error and
//! leave the host serving; `errors` counts answers that were not the expected ones, and value 0
//! is the number of refusals the host should have counted.

use core::sync::atomic::Ordering;

use vpm_abi::proto::doorbell::{CMD_RING, DOORBELL_PORT};
use vpm_abi::harness::SHARED_PAGE_GPA;
use vpm_abi::{DoorbellCmd, HeaderStatus, HintResult, Op, Producer};

use crate::guest_error;
use crate::hints::{doorbell, shared_page, wait_registered, Hints, RING_ENTRIES};
use crate::io::outb;
use crate::report::{set_ops, set_value};
use crate::vpm::Vpm;

/// Doorbells rung with nothing to do, in the storm.
const STORM: u64 = 2000;

fn expect(what: &str, got: i32, want: HintResult, refusals: &mut u64) {
    if got != want.code() {
        guest_error!("{what}: expected {} ({}), got {got}", want.name(), want.code());
    }
    if want != HintResult::Ok {
        *refusals += 1;
    }
}

fn expect_status(what: &str, got: Option<HeaderStatus>, want: HeaderStatus) {
    if got != Some(want) {
        guest_error!("{what}: expected status {want:?}, got {got:?}");
    }
}

/// Registers a page whose header was spoiled by `spoil`; returns the status the host answered.
fn register_spoiled(spoil: impl FnOnce(&vpm_abi::SharedPage)) -> Option<HeaderStatus> {
    let page = shared_page(SHARED_PAGE_GPA);
    let _ = Producer::prepare(page, RING_ENTRIES, 0);
    spoil(page);
    doorbell(DoorbellCmd::Register(SHARED_PAGE_GPA));
    wait_registered(page)
}

fn reregister() -> Hints {
    match Hints::register(SHARED_PAGE_GPA) {
        Ok(h) => h,
        Err(s) => crate::report::fail_with(&{
            let mut m = crate::report::Message::new();
            let _ = core::fmt::write(&mut m, format_args!("re-registration refused: {s:?}"));
            m
        }),
    }
}

/// Runs every hostile case.
pub fn run(vpm: Vpm, h: &mut Hints) {
    let mut refusals = 0u64;
    let p = Op::Persist.code();
    let end = vpm.base + vpm.size;
    expect("persist past the end", h.call(p, end, 64), HintResult::OutOfRange, &mut refusals);
    expect("persist straddling the end", h.call(p, end - 32, 64), HintResult::OutOfRange, &mut refusals);
    expect("persist before the base", h.call(p, vpm.base - 64, 64), HintResult::OutOfRange, &mut refusals);
    expect("persist of guest RAM", h.call(p, 0x1000, 64), HintResult::OutOfRange, &mut refusals);
    expect("persist wrapping", h.call(p, u64::MAX - 10, 64), HintResult::Overflow, &mut refusals);
    expect("persist of nothing", h.call(p, vpm.base, 0), HintResult::ZeroLength, &mut refusals);
    expect("unknown op", h.call(99, vpm.base, 64), HintResult::UnknownOp, &mut refusals);
    let st = Op::SetTransient.code();
    expect("unaligned transient", h.call(st, vpm.base + 64, 4096), HintResult::Unaligned, &mut refusals);

    // Flags this ABI does not define: set them after writing the entry, before publishing it (a
    // polling host may take a published entry at once).
    let t = h.stage(p, vpm.base, 64);
    shared_page(SHARED_PAGE_GPA).ring[(t.index & (RING_ENTRIES - 1)) as usize]
        .flags
        .store(0x80, Ordering::Relaxed);
    expect("undefined flags", h.complete(t), HintResult::BadFlags, &mut refusals);

    // A valid hint still works, also after a doorbell storm and unknown doorbell bytes.
    expect("valid persist", h.persist(vpm.base, 64), HintResult::Ok, &mut refusals);
    for _ in 0..STORM {
        outb(DOORBELL_PORT, CMD_RING);
    }
    for b in [0x00u8, 0x77, 0xff] {
        outb(DOORBELL_PORT, b);
    }
    expect("persist after the storm", h.persist(vpm.base + 4096, 128), HintResult::Ok, &mut refusals);

    // Garbage ring index: the host stops this ring until the guest registers again.
    let page = shared_page(SHARED_PAGE_GPA);
    let consumed = page.header.consumed.load(Ordering::Acquire);
    page.header.produced.store(consumed.wrapping_add(1000), Ordering::Release);
    outb(DOORBELL_PORT, CMD_RING);
    expect_status("garbage produced index", page.status(), HeaderStatus::BadIndex);
    refusals += 1;

    // Registrations with a spoiled header.
    let s = register_spoiled(|pg| pg.header.magic.store(0x1234, Ordering::Release));
    expect_status("wrong magic", s, HeaderStatus::BadMagic);
    let s = register_spoiled(|pg| pg.header.version.store(0x0002_0000, Ordering::Release));
    expect_status("wrong major version", s, HeaderStatus::BadVersion);
    let s = register_spoiled(|pg| pg.header.ring_entries.store(3, Ordering::Release));
    expect_status("ring of 3 entries", s, HeaderStatus::BadGeometry);
    refusals += 3;

    // Registrations of pages the guest may not use as the shared page: refused without an
    // answer in our page (the host cannot write there), counted by the host.
    for gpa in [0xffff_ffff_f000u64, SHARED_PAGE_GPA + 8, vpm.base, u64::MAX] {
        doorbell(DoorbellCmd::Register(gpa));
        refusals += 1;
    }

    let mut h2 = reregister();
    expect("persist after re-registering", h2.persist(vpm.base + 8192, 4096), HintResult::Ok, &mut refusals);
    expect("drain after re-registering", h2.drain(), HintResult::Ok, &mut refusals);
    set_value(0, refusals);
    set_value(1, STORM);
    set_ops(1);
}

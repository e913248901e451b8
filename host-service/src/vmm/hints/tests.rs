//! The hint service against a fake target: every kind of bad doorbell byte stream, shared page,
//! ring index and ring entry, and the answer (result code, counter, call) each one gets.

use std::sync::atomic::Ordering;
use std::sync::Mutex;

use vpm_abi::proto::doorbell::encode;
use vpm_abi::{
    features, DoorbellCmd, HeaderStatus, HintResult, Op, Producer, SharedPage, Ticket, PAGE_SIZE,
};

use super::{HintService, HintTarget};
use crate::vmm::mode::Mode;
use crate::vmm::range::VpmRange;
use crate::vmm::stats::VmStats;
use crate::vmm::VmmError;

/// vPM base (guest-physical).
const BASE: u64 = 0x4000_0000;
/// vPM size: 16 pages.
const SIZE: u64 = 16 * PAGE_SIZE;
/// The one guest-physical address the fake accepts as shared page.
const SHARED_GPA: u64 = 0x9_2000;
/// Ring entries the guest asks for.
const ENTRIES: u32 = 8;

/// What the fake was asked to do.
#[derive(Debug, Default, PartialEq, Eq)]
struct Calls {
    persists: Vec<Vec<(u64, u64)>>,
    transient: Vec<((u64, u64), bool)>,
    msyncs: u32,
    epochs: u32,
    drains: u32,
    /// Rings whose drains were witnessed (`witness_drain_ring`).
    drain_rings: Vec<usize>,
}

/// A VM with no memory behind it: records calls, answers persists with `persist_result`.
struct FakeTarget {
    mode: Mode,
    page: &'static SharedPage,
    /// A second vCPU's page, at `SHARED_GPA + PAGE_SIZE`.
    second: &'static SharedPage,
    stats: Mutex<VmStats>,
    calls: Mutex<Calls>,
    persist_result: HintResult,
    fail_persist: bool,
}

impl FakeTarget {
    fn new(mode: Mode) -> FakeTarget {
        FakeTarget {
            mode,
            page: Box::leak(Box::new(SharedPage::zeroed())),
            second: Box::leak(Box::new(SharedPage::zeroed())),
            stats: Mutex::new(VmStats::default()),
            calls: Mutex::new(Calls::default()),
            persist_result: HintResult::Ok,
            fail_persist: false,
        }
    }

    fn stats(&self) -> VmStats {
        self.stats.lock().unwrap().clone()
    }
}

impl HintTarget for FakeTarget {
    fn mode(&self) -> Mode {
        self.mode
    }

    fn features(&self) -> u32 {
        self.mode.features()
    }

    fn stats(&self) -> &Mutex<VmStats> {
        &self.stats
    }

    fn shared_page(&self, gpa: u64) -> Option<&'static SharedPage> {
        match gpa {
            SHARED_GPA => Some(self.page),
            g if g == SHARED_GPA + PAGE_SIZE => Some(self.second),
            _ => None,
        }
    }

    fn persist(&self, ranges: &[VpmRange]) -> Result<HintResult, VmmError> {
        if self.fail_persist {
            return Err(VmmError::EpochLogFull { need: 1, have: 0 });
        }
        let pairs = ranges.iter().map(VpmRange::as_pair).collect();
        self.calls.lock().unwrap().persists.push(pairs);
        Ok(self.persist_result)
    }

    fn msync_region(&self) -> Result<HintResult, VmmError> {
        self.calls.lock().unwrap().msyncs += 1;
        Ok(HintResult::Ok)
    }

    fn set_transient(&self, range: VpmRange, on: bool) -> Result<HintResult, VmmError> {
        self.calls
            .lock()
            .unwrap()
            .transient
            .push((range.as_pair(), on));
        Ok(HintResult::Ok)
    }

    fn request_epoch(&self) -> Result<HintResult, VmmError> {
        self.calls.lock().unwrap().epochs += 1;
        Ok(HintResult::Ok)
    }

    fn witness_drain(&self) {
        self.calls.lock().unwrap().drains += 1;
    }

    fn witness_drain_ring(&self, ring: usize) {
        self.calls.lock().unwrap().drain_rings.push(ring);
        self.witness_drain();
    }
}

/// The guest's side: a service, a fake VM, and a producer on its shared page.
struct Guest {
    service: HintService,
    vm: FakeTarget,
}

impl Guest {
    /// A guest in `mode` that has registered its shared page.
    fn registered(mode: Mode) -> (Guest, Producer<'static>) {
        let vm = FakeTarget::new(mode);
        let producer = Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
        let mut g = Guest {
            service: HintService::new(BASE, SIZE),
            vm,
        };
        g.doorbell(DoorbellCmd::Register(SHARED_GPA)).unwrap();
        assert_eq!(g.vm.page.status(), Some(HeaderStatus::Ok));
        (g, producer)
    }

    fn doorbell(&mut self, cmd: DoorbellCmd) -> Result<(), VmmError> {
        let mut bytes = [0u8; vpm_abi::MAX_CMD_BYTES];
        let n = encode(cmd, &mut bytes);
        for &b in &bytes[..n] {
            self.service.on_byte(b, &self.vm)?;
        }
        Ok(())
    }

    fn ring(&mut self) {
        self.doorbell(DoorbellCmd::Ring).unwrap();
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        self.vm.calls.lock().unwrap()
    }
}

/// Pushes one entry, rings, and returns its result.
fn submit(g: &mut Guest, p: &mut Producer<'static>, op: u16, gpa: u64, len: u64) -> HintResult {
    let t = p.push(op, gpa, len).unwrap();
    g.ring();
    result(p, t)
}

fn result(p: &Producer<'static>, t: Ticket) -> HintResult {
    let code = p.result(t).expect("completed");
    HintResult::from_code(code).expect("a defined result code")
}

#[test]
fn a_good_persist_reaches_the_target_as_a_vpm_offset() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    let r = submit(&mut g, &mut p, Op::Persist.code(), BASE + 100, 50);
    assert_eq!(r, HintResult::Ok);
    assert_eq!(g.calls().persists, vec![vec![(100, 50)]]);
    let s = g.vm.stats();
    assert_eq!((s.hints_served, s.hints_rejected, s.doorbells), (1, 0, 1));
}

#[test]
fn bad_ranges_get_their_result_and_never_reach_the_target() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    let persist = Op::Persist.code();
    let cases = [
        (persist, BASE - PAGE_SIZE, 10, HintResult::OutOfRange),
        (persist, BASE + SIZE - 1, 2, HintResult::OutOfRange),
        (persist, BASE + SIZE, 1, HintResult::OutOfRange),
        (persist, 0, 10, HintResult::OutOfRange),
        (persist, BASE, 0, HintResult::ZeroLength),
        (persist, u64::MAX - 4, 10, HintResult::Overflow),
        (Op::Flush.code(), BASE, SIZE + 1, HintResult::OutOfRange),
        (
            Op::SetTransient.code(),
            BASE + 1,
            PAGE_SIZE,
            HintResult::Unaligned,
        ),
        (
            Op::SetTransient.code(),
            BASE,
            PAGE_SIZE + 1,
            HintResult::Unaligned,
        ),
        (Op::SetPersistent.code(), BASE, 0, HintResult::ZeroLength),
        (0xffff, BASE, PAGE_SIZE, HintResult::UnknownOp),
        (
            Op::RequestEpoch.code() + 1,
            BASE,
            PAGE_SIZE,
            HintResult::UnknownOp,
        ),
    ];
    for (op, gpa, len, want) in cases {
        assert_eq!(
            submit(&mut g, &mut p, op, gpa, len),
            want,
            "op {op} gpa {gpa:#x} len {len:#x}"
        );
    }
    assert_eq!(*g.calls(), Calls::default(), "nothing reached the target");
    let s = g.vm.stats();
    assert_eq!((s.hints_served, s.hints_rejected), (0, cases.len() as u64));
}

#[test]
fn undefined_flags_are_refused() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    let t = p.push(Op::Persist.code(), BASE, 8).unwrap();
    let slot = &g.vm.page.ring[(t.index % ENTRIES) as usize];
    slot.flags.store(1, Ordering::Relaxed);
    g.ring();
    assert_eq!(result(&p, t), HintResult::BadFlags);
    assert!(g.calls().persists.is_empty());
}

#[test]
fn ops_the_mode_does_not_offer_are_not_supported() {
    let (mut g, mut p) = Guest::registered(Mode::Direct);
    let set = Op::SetTransient.code();
    assert_eq!(
        submit(&mut g, &mut p, set, BASE, PAGE_SIZE),
        HintResult::NotSupported
    );
    let epoch = Op::RequestEpoch.code();
    assert_eq!(
        submit(&mut g, &mut p, epoch, 0, 0),
        HintResult::NotSupported
    );
    // Direct mode has ADR semantics: persists succeed without the target.
    let persist = Op::Persist.code();
    assert_eq!(submit(&mut g, &mut p, persist, BASE, 8), HintResult::Ok);
    assert_eq!(*g.calls(), Calls::default());
}

#[test]
fn transient_marks_and_epochs_reach_the_target() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    let (set, unset) = (Op::SetTransient.code(), Op::SetPersistent.code());
    assert_eq!(
        submit(&mut g, &mut p, set, BASE + PAGE_SIZE, 2 * PAGE_SIZE),
        HintResult::Ok
    );
    assert_eq!(
        submit(&mut g, &mut p, unset, BASE + PAGE_SIZE, PAGE_SIZE),
        HintResult::Ok
    );
    let epoch = Op::RequestEpoch.code();
    assert_eq!(submit(&mut g, &mut p, epoch, 0, 0), HintResult::Ok);
    let calls = g.calls();
    assert_eq!(
        calls.transient,
        vec![
            ((PAGE_SIZE, 2 * PAGE_SIZE), true),
            ((PAGE_SIZE, PAGE_SIZE), false)
        ]
    );
    assert_eq!(calls.epochs, 1);
}

#[test]
fn flushes_persist_together_at_the_drain() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    let flush = Op::Flush.code();
    let a = p.push(flush, BASE, 64).unwrap();
    let b = p.push(flush, BASE + 3 * PAGE_SIZE, 128).unwrap();
    let d = p.push(Op::Drain.code(), 0, 0).unwrap();
    g.ring();
    for t in [a, b, d] {
        assert_eq!(result(&p, t), HintResult::Ok);
    }
    let calls = g.calls();
    assert_eq!(calls.persists, vec![vec![(0, 64), (3 * PAGE_SIZE, 128)]]);
    assert_eq!(calls.drains, 1);
}

#[test]
fn a_persist_the_target_cannot_take_reports_its_result() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    g.vm.persist_result = HintResult::NoSpace;
    let persist = Op::Persist.code();
    assert_eq!(
        submit(&mut g, &mut p, persist, BASE, 8),
        HintResult::NoSpace
    );
    assert_eq!(g.vm.stats().hints_rejected, 1);
}

#[test]
fn a_failing_target_stops_the_service_with_its_error() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    g.vm.fail_persist = true;
    p.push(Op::Persist.code(), BASE, 8).unwrap();
    let err = g.doorbell(DoorbellCmd::Ring).unwrap_err();
    assert!(matches!(err, VmmError::EpochLogFull { .. }));
}

#[test]
fn msync_mode_msyncs_once_per_persist_or_drain_with_work() {
    let (mut g, mut p) = Guest::registered(Mode::Msync);
    let drain = Op::Drain.code();
    assert_eq!(submit(&mut g, &mut p, drain, 0, 0), HintResult::Ok);
    assert_eq!(g.calls().msyncs, 0, "a drain with nothing flushed");
    let flush = Op::Flush.code();
    assert_eq!(submit(&mut g, &mut p, flush, BASE, 8), HintResult::Ok);
    assert_eq!(submit(&mut g, &mut p, drain, 0, 0), HintResult::Ok);
    assert_eq!(g.calls().msyncs, 1);
    let persist = Op::Persist.code();
    assert_eq!(submit(&mut g, &mut p, persist, BASE, 8), HintResult::Ok);
    assert_eq!(g.calls().msyncs, 2);
    assert!(g.calls().persists.is_empty());
}

#[test]
fn a_bad_shared_page_address_is_refused_and_rings_are_rejected() {
    let vm = FakeTarget::new(Mode::Pv);
    Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
    let mut g = Guest {
        service: HintService::new(BASE, SIZE),
        vm,
    };
    for gpa in [0, SHARED_GPA + 8, BASE, u64::MAX] {
        g.doorbell(DoorbellCmd::Register(gpa)).unwrap();
    }
    assert_eq!(g.vm.stats().registrations_refused, 4);
    assert_eq!(g.vm.page.status(), Some(HeaderStatus::Pending));
    g.ring();
    assert_eq!(g.vm.stats().hints_rejected, 1, "a ring with no page");
}

#[test]
fn a_bad_header_is_refused_with_its_status() {
    let vm = FakeTarget::new(Mode::Pv);
    Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
    vm.page.header.magic.store(0, Ordering::Relaxed);
    let mut g = Guest {
        service: HintService::new(BASE, SIZE),
        vm,
    };
    g.doorbell(DoorbellCmd::Register(SHARED_GPA)).unwrap();
    assert_eq!(g.vm.page.status(), Some(HeaderStatus::BadMagic));
    assert_eq!(g.vm.stats().registrations_refused, 1);
    // Bad geometry: a ring size that is not a power of two.
    Producer::prepare(g.vm.page, ENTRIES, u32::MAX).unwrap();
    g.vm.page.header.ring_entries.store(3, Ordering::Relaxed);
    g.doorbell(DoorbellCmd::Register(SHARED_GPA)).unwrap();
    assert_eq!(g.vm.page.status(), Some(HeaderStatus::BadGeometry));
}

#[test]
fn an_index_beyond_the_ring_stops_it_until_the_guest_registers_again() {
    let (mut g, _) = Guest::registered(Mode::Pv);
    let h = &g.vm.page.header;
    let consumed = h.consumed.load(Ordering::Relaxed);
    h.produced
        .store(consumed.wrapping_add(ENTRIES + 1), Ordering::Release);
    g.ring();
    assert_eq!(g.vm.page.status(), Some(HeaderStatus::BadIndex));
    let s = g.vm.stats();
    assert_eq!((s.rings_stopped, s.hints_rejected), (1, 1));
    assert!(g.calls().persists.is_empty());
    // Stopped: further rings serve nothing.
    g.ring();
    assert_eq!(g.vm.stats().rings_stopped, 2);
    // A fresh registration serves again.
    let mut p = Producer::prepare(g.vm.page, ENTRIES, u32::MAX).unwrap();
    g.doorbell(DoorbellCmd::Register(SHARED_GPA)).unwrap();
    let persist = Op::Persist.code();
    assert_eq!(submit(&mut g, &mut p, persist, BASE, 8), HintResult::Ok);
}

#[test]
fn unknown_doorbell_bytes_are_counted_and_unregister_stops_service() {
    let (mut g, mut p) = Guest::registered(Mode::Pv);
    g.doorbell(DoorbellCmd::Unknown(0x7f)).unwrap();
    assert_eq!(g.vm.stats().doorbell_unknown, 1);
    g.doorbell(DoorbellCmd::Unregister).unwrap();
    assert_eq!(g.vm.page.status(), Some(HeaderStatus::Unregistered));
    let t = p.push(Op::Persist.code(), BASE, 8).unwrap();
    g.ring();
    assert_eq!(p.result(t), None, "not served after unregistering");
    assert_eq!(g.vm.stats().hints_rejected, 1);
}

#[test]
fn info_refreshes_the_header() {
    let (mut g, mut p) = Guest::registered(Mode::Full);
    g.vm.stats.lock().unwrap().epoch = 41;
    assert_eq!(
        submit(&mut g, &mut p, Op::Info.code(), 0, 0),
        HintResult::Ok
    );
    let h = &g.vm.page.header;
    assert_eq!(h.epoch.load(Ordering::Relaxed), 41);
    assert_eq!(h.vpm_base.load(Ordering::Relaxed), BASE);
    assert_eq!(h.vpm_size.load(Ordering::Relaxed), SIZE);
    assert_eq!(
        h.host_features.load(Ordering::Relaxed),
        Mode::Full.features()
    );
    assert_eq!(features::EPOCHS & Mode::Full.features(), features::EPOCHS);
}

/// Sends `cmd` as vCPU `vcpu`'s doorbell bytes.
mod rings;

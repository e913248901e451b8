//! Several rings in one hint service: one per vCPU on the KVM front (each vCPU's own doorbell),
//! and one per guest CPU on a shared doorbell stream (QEMU, feature RINGS: ring-indexed
//! registration, a RING serves every ring).

use std::sync::atomic::Ordering;

use vpm_abi::proto::doorbell::encode;
use vpm_abi::{DoorbellCmd, HeaderStatus, HintResult, Op, Producer, PAGE_SIZE};

use super::{FakeTarget, BASE, ENTRIES, SHARED_GPA, SIZE};
use crate::vmm::hints::HintService;
use crate::vmm::mode::Mode;

fn vcpu_doorbell(s: &mut HintService, vm: &FakeTarget, vcpu: usize, cmd: DoorbellCmd) {
    let mut bytes = [0u8; vpm_abi::MAX_CMD_BYTES];
    let n = encode(cmd, &mut bytes);
    for &b in &bytes[..n] {
        s.on_vcpu_byte(vcpu, b, vm).unwrap();
    }
}

/// Two vCPUs, one ring each: a vCPU's RING serves its own ring only, a drain covers its own
/// ring's flushes only, an ioeventfd RING (vCPU unknown) serves both, a page registered by one
/// vCPU is refused to the other, and the per-ring counts say which ring served what.
#[test]
fn each_vcpu_has_its_own_ring() {
    let vm = FakeTarget::new(Mode::Pv);
    let mut s = HintService::with_rings(BASE, SIZE, 2);
    let mut p0 = Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
    let mut p1 = Producer::prepare(vm.second, ENTRIES, u32::MAX).unwrap();
    vcpu_doorbell(&mut s, &vm, 0, DoorbellCmd::Register(SHARED_GPA));
    // vCPU 1 may not take vCPU 0's page, then registers its own.
    vcpu_doorbell(&mut s, &vm, 1, DoorbellCmd::Register(SHARED_GPA));
    assert_eq!(vm.stats().registrations_refused, 1);
    vcpu_doorbell(
        &mut s,
        &vm,
        1,
        DoorbellCmd::Register(SHARED_GPA + PAGE_SIZE),
    );
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    assert_eq!(vm.second.status(), Some(HeaderStatus::Ok));

    p0.push(Op::Flush.code(), BASE, 8).unwrap();
    let d0 = p0.push(Op::Drain.code(), 0, 0).unwrap();
    p1.push(Op::Flush.code(), BASE + PAGE_SIZE, 16).unwrap();
    let d1 = p1.push(Op::Drain.code(), 0, 0).unwrap();
    let _ = p0.publish();
    let _ = p1.publish();
    // vCPU 1's doorbell: only its ring, only its flush.
    vcpu_doorbell(&mut s, &vm, 1, DoorbellCmd::Ring);
    assert_eq!(p1.result(d1), Some(HintResult::Ok.code()));
    assert_eq!(
        p0.result(d0),
        None,
        "vCPU 0's ring was served by vCPU 1's doorbell"
    );
    assert_eq!(
        vm.calls.lock().unwrap().persists,
        vec![vec![(PAGE_SIZE, 16)]]
    );
    assert_eq!(vm.calls.lock().unwrap().drain_rings, vec![1]);
    // A doorbell of unknown origin serves every ring.
    s.on_ring_doorbell(&vm).unwrap();
    assert_eq!(p0.result(d0), Some(HintResult::Ok.code()));
    assert_eq!(vm.calls.lock().unwrap().persists[1], vec![(0, 8)]);
    assert_eq!(vm.calls.lock().unwrap().drain_rings, vec![1, 0]);
    assert_eq!(vm.stats().ring_hints, vec![2, 2]);
    // A vCPU beyond the rings is not served.
    vcpu_doorbell(&mut s, &vm, 2, DoorbellCmd::Ring);
    assert_eq!(vm.stats().doorbell_unknown, 1);
}

/// Two vCPUs registering at once: their multi-byte REGISTER commands interleave byte by byte, and
/// each vCPU's decoder still reads its own page.
#[test]
fn interleaved_registrations_of_two_vcpus_both_succeed() {
    let vm = FakeTarget::new(Mode::Pv);
    let mut s = HintService::with_rings(BASE, SIZE, 2);
    let _p0 = Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
    let _p1 = Producer::prepare(vm.second, ENTRIES, u32::MAX).unwrap();
    let (mut b0, mut b1) = ([0u8; vpm_abi::MAX_CMD_BYTES], [0u8; vpm_abi::MAX_CMD_BYTES]);
    let n0 = encode(DoorbellCmd::Register(SHARED_GPA), &mut b0);
    let n1 = encode(DoorbellCmd::Register(SHARED_GPA + PAGE_SIZE), &mut b1);
    assert_eq!(n0, n1);
    for i in 0..n0 {
        s.on_vcpu_byte(0, b0[i], &vm).unwrap();
        s.on_vcpu_byte(1, b1[i], &vm).unwrap();
    }
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    assert_eq!(vm.second.status(), Some(HeaderStatus::Ok));
    assert_eq!(vm.stats().registrations_refused, 0);
}

fn stream_doorbell(s: &mut HintService, vm: &FakeTarget, cmd: DoorbellCmd) {
    let mut bytes = [0u8; vpm_abi::MAX_CMD_BYTES];
    let n = encode(cmd, &mut bytes);
    for &b in &bytes[..n] {
        s.on_stream_byte(b, vm).unwrap();
    }
}

/// One doorbell stream for all CPUs (QEMU's debugcon): REGISTER is ring 0, REGISTER_RING names
/// its ring, one RING serves every ring and a drain covers its own ring's flushes; a page
/// registered twice is refused, an index beyond the rings changes nothing, and UNREGISTER_RING
/// stops only its ring.
#[test]
fn a_shared_stream_registers_rings_by_index_and_a_ring_serves_them_all() {
    let vm = FakeTarget::new(Mode::Pv);
    let mut s = HintService::with_rings(BASE, SIZE, 2);
    let mut p0 = Producer::prepare(vm.page, ENTRIES, u32::MAX).unwrap();
    let mut p1 = Producer::prepare(vm.second, ENTRIES, u32::MAX).unwrap();
    stream_doorbell(&mut s, &vm, DoorbellCmd::Register(SHARED_GPA));
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    // Ring 1 may not take ring 0's page.
    stream_doorbell(&mut s, &vm, DoorbellCmd::RegisterRing(1, SHARED_GPA));
    assert_eq!(vm.stats().registrations_refused, 1);
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    // An index beyond the rings: refused, ring 0 and the page untouched.
    vm.second
        .header
        .status
        .store(HeaderStatus::Pending as u32, Ordering::Relaxed);
    stream_doorbell(
        &mut s,
        &vm,
        DoorbellCmd::RegisterRing(2, SHARED_GPA + PAGE_SIZE),
    );
    stream_doorbell(
        &mut s,
        &vm,
        DoorbellCmd::RegisterRing(255, SHARED_GPA + PAGE_SIZE),
    );
    assert_eq!(vm.stats().registrations_refused, 3);
    assert_eq!(vm.second.status(), Some(HeaderStatus::Pending));
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    stream_doorbell(
        &mut s,
        &vm,
        DoorbellCmd::RegisterRing(1, SHARED_GPA + PAGE_SIZE),
    );
    assert_eq!(vm.second.status(), Some(HeaderStatus::Ok));

    p0.push(Op::Flush.code(), BASE, 8).unwrap();
    p1.push(Op::Flush.code(), BASE + PAGE_SIZE, 16).unwrap();
    let d1 = p1.push(Op::Drain.code(), 0, 0).unwrap();
    let _ = p0.publish();
    let _ = p1.publish();
    // One RING: both rings served; only ring 1 drained, so only its flush persisted.
    stream_doorbell(&mut s, &vm, DoorbellCmd::Ring);
    assert_eq!(p1.result(d1), Some(HintResult::Ok.code()));
    assert_eq!(p0.in_flight(), 0);
    assert_eq!(
        vm.calls.lock().unwrap().persists,
        vec![vec![(PAGE_SIZE, 16)]]
    );
    assert_eq!(vm.calls.lock().unwrap().drain_rings, vec![1]);
    let d0 = p0.push(Op::Drain.code(), 0, 0).unwrap();
    let _ = p0.publish();
    stream_doorbell(&mut s, &vm, DoorbellCmd::Ring);
    assert_eq!(p0.result(d0), Some(HintResult::Ok.code()));
    assert_eq!(vm.calls.lock().unwrap().persists[1], vec![(0, 8)]);
    assert_eq!(vm.stats().ring_hints, vec![2, 2]);

    // UNREGISTER_RING of a missing ring is counted, of ring 1 stops ring 1 only.
    stream_doorbell(&mut s, &vm, DoorbellCmd::UnregisterRing(7));
    assert_eq!(vm.stats().doorbell_unknown, 1);
    stream_doorbell(&mut s, &vm, DoorbellCmd::UnregisterRing(1));
    assert_eq!(vm.second.status(), Some(HeaderStatus::Unregistered));
    assert_eq!(vm.page.status(), Some(HeaderStatus::Ok));
    stream_doorbell(&mut s, &vm, DoorbellCmd::Unregister);
    assert_eq!(vm.page.status(), Some(HeaderStatus::Unregistered));
}

/// On a front where each vCPU has its own doorbell, ring-indexed commands are not offered: they
/// are counted as unknown and register nothing.
#[test]
fn a_vcpu_doorbell_ignores_ring_indexed_commands() {
    let vm = FakeTarget::new(Mode::Pv);
    let mut s = HintService::with_rings(BASE, SIZE, 2);
    let _p1 = Producer::prepare(vm.second, ENTRIES, u32::MAX).unwrap();
    vcpu_doorbell(
        &mut s,
        &vm,
        0,
        DoorbellCmd::RegisterRing(1, SHARED_GPA + PAGE_SIZE),
    );
    assert_eq!(vm.second.status(), Some(HeaderStatus::Pending));
    assert_eq!(vm.stats().doorbell_unknown, 1);
}

//! Property test of the real hint service on a real pool tenant ([`super::harness`], shared with
//! the cargo-fuzz target): arbitrary ring contents, weighted towards transient marks and persists
//! just outside, straddling or far from the vPM. Every promise the harness checks must hold: no
//! panic, every invalid entry answered with an error, nothing outside the tenant's vPM changed.

use std::cell::Cell;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use vpm_abi::PAGE_SIZE;

use super::harness::{self, Report, Step, VPM_BASE, VPM_LEN, VPM_PAGES};
use crate::vmm::Mode;

const END: u64 = VPM_BASE + VPM_LEN as u64;

/// Guest-physical starts: inside the vPM, on its pages, just below, at or past its end, anywhere.
fn gpa() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => (0..VPM_LEN as u64).prop_map(|o| VPM_BASE + o),
        3 => (0..VPM_PAGES as u64 + 1).prop_map(|p| VPM_BASE + p * PAGE_SIZE),
        2 => (1..=2 * PAGE_SIZE).prop_map(|d| VPM_BASE - d),
        2 => (0..2 * PAGE_SIZE).prop_map(|d| END + d),
        1 => any::<u64>(),
    ]
}

/// Lengths: small, whole pages (zero included), anything (overflowing ends).
fn len() -> impl Strategy<Value = u64> {
    prop_oneof![
        3 => 1..=PAGE_SIZE,
        3 => (0..=VPM_PAGES as u64 + 1).prop_map(|n| n * PAGE_SIZE),
        1 => any::<u64>(),
    ]
}

/// Op codes: mostly transient and persistent marks and persists, sometimes unknown ones.
fn op() -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => Just(5u16),
        2 => Just(6u16),
        2 => Just(2u16),
        1 => Just(3u16),
        1 => Just(4u16),
        1 => Just(7u16),
        1 => 0u16..=9,
        1 => any::<u16>(),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => (op(), prop_oneof![9 => Just(0u16), 1 => any::<u16>()], gpa(), len(), any::<u64>())
            .prop_map(|(op, flags, gpa, len, seq)| Step::Publish { op, flags, gpa, len, seq }),
        3 => (0..VPM_LEN, 1usize..300, any::<u8>())
            .prop_map(|(off, len, val)| Step::WriteVpm { off, len, val }),
        1 => (any::<usize>(), any::<[u8; 32]>()).prop_map(|(slot, raw)| Step::RawSlot { slot, raw }),
        1 => (any::<u8>(), 0u64..80).prop_map(|(field, value)| Step::Header { field, value }),
        1 => (0u32..4).prop_map(|e| Step::RegisterGood { entries: 1 << e }),
        1 => gpa().prop_map(Step::Register),
        1 => Just(Step::Ring),
    ]
}

fn mode() -> impl Strategy<Value = Mode> {
    prop_oneof![
        5 => Just(Mode::Pv),
        1 => Just(Mode::Full),
        1 => Just(Mode::Direct),
        1 => Just(Mode::Msync),
    ]
}

#[test]
fn arbitrary_rings_get_errors_for_bad_entries_and_touch_nothing_outside_the_vpm() {
    let mut runner = TestRunner::new(Config {
        cases: 1000,
        failure_persistence: None,
        ..Config::default()
    });
    let total = Cell::new(Report::default());
    let cases = (mode(), proptest::collection::vec(step(), 1..40));
    runner
        .run(&cases, |(mode, steps)| {
            let first = Step::RegisterGood { entries: 8 };
            let r = harness::run(mode, std::iter::once(first).chain(steps));
            let mut t = total.get();
            t.finished += r.finished;
            t.refused_bad += r.refused_bad;
            t.refused_bad_marks += r.refused_bad_marks;
            t.accepted += r.accepted;
            total.set(t);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let t = total.get();
    println!("hint service proptest: {t:?}");
    // The generated rings exercised what the test claims to check.
    assert!(t.refused_bad_marks > 100, "{t:?}");
    assert!(t.accepted > 100, "{t:?}");
}

#[test]
fn an_out_of_range_transient_mark_is_refused() {
    let mark = |gpa, len| Step::Publish {
        op: 5,
        flags: 0,
        gpa,
        len,
        seq: 1,
    };
    let r = harness::run(
        Mode::Pv,
        [
            Step::RegisterGood { entries: 8 },
            mark(END - PAGE_SIZE, 2 * PAGE_SIZE),
            mark(VPM_BASE - PAGE_SIZE, PAGE_SIZE),
            mark(VPM_BASE, PAGE_SIZE),
        ],
    );
    assert_eq!((r.finished, r.refused_bad, r.refused_bad_marks), (3, 2, 2));
}

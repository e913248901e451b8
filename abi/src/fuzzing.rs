//! The host-side input paths in one function, for the cargo-fuzz target (`abi/fuzz`) and for a
//! stable-toolchain property test that feeds it random bytes. Built with the `fuzzing` feature.

use core::sync::atomic::Ordering;

use crate::proto::doorbell::DoorbellDecoder;
use crate::proto::ring::{Consumer, SharedPage};
use crate::proto::validate::{decode_entry, Hint, VpmRegion};
use crate::proto::wire::{RawEntry, ENTRY_SIZE, PAGE_SIZE};

/// Reads `N` bytes at `*at` from `data` (zero-padded past the end) and advances `*at`.
fn take<const N: usize>(data: &[u8], at: &mut usize) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = data.get(*at + i).copied().unwrap_or(0);
    }
    *at += N;
    out
}

/// Treats `data` as everything a hostile guest controls: a vPM region (16 bytes), the shared
/// page's guest-written header words and ring entries, and a doorbell byte stream (the rest).
/// Runs the host's decoders over it and checks their promises; panics only if a promise breaks.
pub fn host_side(data: &[u8], page: &SharedPage) {
    let mut at = 0;
    let base = u64::from_le_bytes(take(data, &mut at)) & !(PAGE_SIZE - 1);
    let size = u64::from_le_bytes(take(data, &mut at)) & !(PAGE_SIZE - 1) & 0xffff_ffff_f000;
    let region = VpmRegion::new(base, size).ok();

    let h = &page.header;
    h.magic
        .store(u64::from_le_bytes(take(data, &mut at)), Ordering::Relaxed);
    h.version
        .store(u32::from_le_bytes(take(data, &mut at)), Ordering::Relaxed);
    h.guest_features
        .store(u32::from_le_bytes(take(data, &mut at)), Ordering::Relaxed);
    h.ring_entries
        .store(u32::from_le_bytes(take(data, &mut at)), Ordering::Relaxed);
    h.produced
        .store(u32::from_le_bytes(take(data, &mut at)), Ordering::Relaxed);
    for slot in page.ring.iter().take(8) {
        slot.store(&RawEntry::from_bytes(&take::<ENTRY_SIZE>(data, &mut at)));
    }
    let late_produced = u32::from_le_bytes(take(data, &mut at));

    if let (Ok(mut consumer), Some(region)) = (Consumer::attach(page, u32::MAX), region) {
        let mut served = 0u32;
        // The guest moves its index once more while the host serves: the host must cope.
        h.produced.store(late_produced, Ordering::Release);
        while let Ok(Some(t)) = consumer.take(page) {
            let result = match decode_entry(&t.entry, &region) {
                Ok(hint) => {
                    check_hint(&hint, &region);
                    0
                }
                Err(e) => e.code(),
            };
            assert!(consumer.finish(page, &t, result));
            served += 1;
            assert!(
                served <= consumer.entries(),
                "host read more than one ring's worth"
            );
        }
    }

    let mut doorbell = DoorbellDecoder::new();
    for &b in data.get(at..).unwrap_or(&[]) {
        let _ = doorbell.feed(b);
    }
}

/// A decoded range must lie inside the region, be non-empty, and be page-aligned where required.
fn check_hint(hint: &Hint, region: &VpmRegion) {
    let range = match hint {
        Hint::Persist(r) | Hint::Flush(r) => r,
        Hint::SetTransient(r) | Hint::SetPersistent(r) => {
            assert!(r.is_page_aligned());
            r
        }
        _ => return,
    };
    assert!(range.start() >= region.base());
    assert!(range.end() <= region.base() + region.size());
    assert_ne!(range.len(), 0);
    assert_eq!(region.check(range.start(), range.len()), Ok(*range));
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;
    use std::boxed::Box;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn host_side_survives_random_guest_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let page = Box::new(SharedPage::zeroed());
            host_side(&data, &page);
        }

        #[test]
        fn host_side_survives_well_formed_headers(
            entries in 0u32..=7, produced in 0u32..=12, late in any::<u32>(),
            ring in proptest::collection::vec(any::<u8>(), 256),
        ) {
            let mut data = std::vec::Vec::new();
            data.extend_from_slice(&0x1000_0000u64.to_le_bytes());
            data.extend_from_slice(&(1u64 << 20).to_le_bytes());
            data.extend_from_slice(&crate::MAGIC.to_le_bytes());
            data.extend_from_slice(&crate::ABI_VERSION.to_le_bytes());
            data.extend_from_slice(&0u32.to_le_bytes());
            data.extend_from_slice(&(1u32 << entries).to_le_bytes());
            data.extend_from_slice(&produced.to_le_bytes());
            data.extend_from_slice(&ring);
            data.extend_from_slice(&late.to_le_bytes());
            let page = Box::new(SharedPage::zeroed());
            host_side(&data, &page);
        }
    }
}

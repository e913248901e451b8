//! Host-side checks of guest input: every entry is decoded here before the host acts on it.

use super::op::{HintResult, Op};
use super::wire::{RawEntry, PAGE_SIZE};

/// A checked byte range `[start, start + len)` of guest-physical memory: `len > 0` and the end does
/// not overflow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GuestRange {
    start: u64,
    len: u64,
}

impl GuestRange {
    /// Builds a range, refusing a zero length or an end past `u64::MAX`.
    pub const fn new(start: u64, len: u64) -> Result<GuestRange, HintResult> {
        if len == 0 {
            return Err(HintResult::ZeroLength);
        }
        if start.checked_add(len).is_none() {
            return Err(HintResult::Overflow);
        }
        Ok(GuestRange { start, len })
    }

    /// First byte.
    pub const fn start(&self) -> u64 {
        self.start
    }

    /// Length in bytes (never zero).
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a `GuestRange` is never empty. Present for API symmetry with slices.
    pub const fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte (never overflows by construction).
    pub const fn end(&self) -> u64 {
        self.start + self.len
    }

    /// Whether `other` lies wholly inside `self`.
    pub const fn contains(&self, other: &GuestRange) -> bool {
        other.start >= self.start && other.end() <= self.end()
    }

    /// Whether start and length are multiples of the page size.
    pub const fn is_page_aligned(&self) -> bool {
        self.start % PAGE_SIZE == 0 && self.len % PAGE_SIZE == 0
    }

    /// Index of the first page the range touches, relative to `base`.
    pub const fn first_page_from(&self, base: u64) -> u64 {
        (self.start - base) / PAGE_SIZE
    }

    /// Index one past the last page the range touches, relative to `base`.
    pub const fn end_page_from(&self, base: u64) -> u64 {
        (self.end() - base).div_ceil(PAGE_SIZE)
    }
}

/// The guest-physical extent of one VM's vPM region: `base` page-aligned, `size` whole pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VpmRegion {
    range: GuestRange,
}

impl VpmRegion {
    /// Describes a region; refuses an unaligned, empty or overflowing one.
    pub const fn new(base: u64, size: u64) -> Result<VpmRegion, HintResult> {
        let range = match GuestRange::new(base, size) {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        if !range.is_page_aligned() {
            return Err(HintResult::Unaligned);
        }
        Ok(VpmRegion { range })
    }

    /// First guest-physical address of the region.
    pub const fn base(&self) -> u64 {
        self.range.start
    }

    /// Size in bytes.
    pub const fn size(&self) -> u64 {
        self.range.len
    }

    /// Number of 4 KiB pages.
    pub const fn pages(&self) -> u64 {
        self.range.len / PAGE_SIZE
    }

    /// Checks that `[gpa, gpa + len)` is a valid range inside the region.
    pub const fn check(&self, gpa: u64, len: u64) -> Result<GuestRange, HintResult> {
        let r = match GuestRange::new(gpa, len) {
            Ok(r) => r,
            Err(e) => return Err(e),
        };
        if !self.range.contains(&r) {
            return Err(HintResult::OutOfRange);
        }
        Ok(r)
    }
}

/// A decoded, checked entry: what the host acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    /// See [`Op::Nop`].
    Nop,
    /// See [`Op::Info`].
    Info,
    /// See [`Op::Persist`].
    Persist(GuestRange),
    /// See [`Op::Flush`].
    Flush(GuestRange),
    /// See [`Op::Drain`].
    Drain,
    /// See [`Op::SetTransient`]; whole pages.
    SetTransient(GuestRange),
    /// See [`Op::SetPersistent`]; whole pages.
    SetPersistent(GuestRange),
    /// See [`Op::RequestEpoch`].
    RequestEpoch,
}

impl Hint {
    /// The op this hint came from.
    pub const fn op(&self) -> Op {
        match self {
            Hint::Nop => Op::Nop,
            Hint::Info => Op::Info,
            Hint::Persist(_) => Op::Persist,
            Hint::Flush(_) => Op::Flush,
            Hint::Drain => Op::Drain,
            Hint::SetTransient(_) => Op::SetTransient,
            Hint::SetPersistent(_) => Op::SetPersistent,
            Hint::RequestEpoch => Op::RequestEpoch,
        }
    }
}

/// Decodes and checks one entry copied out of the ring. Never panics, whatever the bytes.
pub const fn decode_entry(entry: &RawEntry, region: &VpmRegion) -> Result<Hint, HintResult> {
    let op = match Op::from_code(entry.op) {
        Some(op) => op,
        None => return Err(HintResult::UnknownOp),
    };
    if entry.flags != 0 {
        return Err(HintResult::BadFlags);
    }
    if !op.takes_range() {
        return Ok(match op {
            Op::Nop => Hint::Nop,
            Op::Info => Hint::Info,
            Op::Drain => Hint::Drain,
            _ => Hint::RequestEpoch,
        });
    }
    let range = match region.check(entry.gpa, entry.len) {
        Ok(r) => r,
        Err(e) => return Err(e),
    };
    if op.needs_page_alignment() && !range.is_page_aligned() {
        return Err(HintResult::Unaligned);
    }
    Ok(match op {
        Op::Persist => Hint::Persist(range),
        Op::Flush => Hint::Flush(range),
        Op::SetTransient => Hint::SetTransient(range),
        _ => Hint::SetPersistent(range),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: u64 = 0x1800_0000;
    const SIZE: u64 = 64 << 20;

    fn region() -> VpmRegion {
        VpmRegion::new(BASE, SIZE).unwrap()
    }

    fn entry(op: Op, gpa: u64, len: u64) -> RawEntry {
        RawEntry {
            op: op.code(),
            gpa,
            len,
            ..RawEntry::default()
        }
    }

    #[test]
    fn ranges_inside_the_region_are_accepted() {
        let r = region();
        assert_eq!(
            decode_entry(&entry(Op::Persist, BASE, 64), &r),
            Ok(Hint::Persist(GuestRange::new(BASE, 64).unwrap()))
        );
        let last = BASE + SIZE - 1;
        assert!(decode_entry(&entry(Op::Flush, last, 1), &r).is_ok());
        assert!(decode_entry(&entry(Op::Persist, BASE, SIZE), &r).is_ok());
    }

    #[test]
    fn bad_ranges_get_their_own_error() {
        let r = region();
        let cases = [
            (BASE - 1, 2, HintResult::OutOfRange),
            (BASE + SIZE, 1, HintResult::OutOfRange),
            (BASE + SIZE - 1, 2, HintResult::OutOfRange),
            (0, 64, HintResult::OutOfRange),
            (BASE, 0, HintResult::ZeroLength),
            (u64::MAX, 2, HintResult::Overflow),
            (BASE, u64::MAX, HintResult::Overflow),
        ];
        for (gpa, len, want) in cases {
            assert_eq!(
                decode_entry(&entry(Op::Persist, gpa, len), &r),
                Err(want),
                "gpa={gpa:#x} len={len:#x}"
            );
        }
    }

    #[test]
    fn unknown_ops_and_flags_are_refused() {
        let r = region();
        let mut e = entry(Op::Persist, BASE, 64);
        e.op = 99;
        assert_eq!(decode_entry(&e, &r), Err(HintResult::UnknownOp));
        let mut e = entry(Op::Drain, 0, 0);
        e.flags = 1;
        assert_eq!(decode_entry(&e, &r), Err(HintResult::BadFlags));
    }

    #[test]
    fn ops_without_range_ignore_gpa_and_len() {
        let r = region();
        assert_eq!(
            decode_entry(&entry(Op::Drain, u64::MAX, u64::MAX), &r),
            Ok(Hint::Drain)
        );
        assert_eq!(
            decode_entry(&entry(Op::RequestEpoch, 0, 0), &r),
            Ok(Hint::RequestEpoch)
        );
    }

    #[test]
    fn transient_marks_need_whole_pages() {
        let r = region();
        assert_eq!(
            decode_entry(&entry(Op::SetTransient, BASE + 64, 4096), &r),
            Err(HintResult::Unaligned)
        );
        assert_eq!(
            decode_entry(&entry(Op::SetPersistent, BASE, 100), &r),
            Err(HintResult::Unaligned)
        );
        assert!(decode_entry(&entry(Op::SetTransient, BASE + 4096, 8192), &r).is_ok());
    }

    #[test]
    fn page_span_of_a_range() {
        let g = GuestRange::new(BASE + 4000, 200).unwrap();
        assert_eq!((g.first_page_from(BASE), g.end_page_from(BASE)), (0, 2));
        let g = GuestRange::new(BASE + 4096, 4096).unwrap();
        assert_eq!((g.first_page_from(BASE), g.end_page_from(BASE)), (1, 2));
    }

    #[test]
    fn regions_must_be_whole_pages() {
        assert_eq!(VpmRegion::new(1, 4096), Err(HintResult::Unaligned));
        assert_eq!(VpmRegion::new(0, 0), Err(HintResult::ZeroLength));
        assert_eq!(region().pages(), SIZE / 4096);
    }
}

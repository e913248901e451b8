//! Guest byte ranges inside one VM's vPM, as offsets from the vPM base: the unit hints, persists
//! and transient marks work in.

use std::ops::Range;

use vpm_abi::{GuestRange, VpmRegion, PAGE_SIZE};

/// Why a [`VpmRange`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RangeError {
    /// The range is empty.
    #[error("empty vPM range at offset {offset:#x}")]
    Empty {
        /// Its offset.
        offset: u64,
    },
    /// `offset + len` overflows.
    #[error("vPM range {offset:#x}+{len:#x} overflows")]
    Overflow {
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
    },
    /// The range does not lie inside the vPM.
    #[error("vPM range {offset:#x}+{len:#x} leaves a vPM of {size:#x} bytes")]
    OutOfRange {
        /// Its offset (from the vPM base, or a guest-physical address before the base).
        offset: u64,
        /// Its length.
        len: u64,
        /// The vPM's size.
        size: u64,
    },
}

/// A non-empty byte range `[offset, offset + len)` of a vPM, `offset` counted from the vPM base.
/// The end never overflows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct VpmRange {
    offset: u64,
    len: u64,
}

impl VpmRange {
    /// A range of `len > 0` bytes at `offset`, refusing an end past `u64::MAX`.
    pub fn new(offset: u64, len: u64) -> Result<VpmRange, RangeError> {
        if len == 0 {
            return Err(RangeError::Empty { offset });
        }
        if offset.checked_add(len).is_none() {
            return Err(RangeError::Overflow { offset, len });
        }
        Ok(VpmRange { offset, len })
    }

    /// Like [`VpmRange::new`], and the range must end within a vPM of `size` bytes.
    pub fn within(offset: u64, len: u64, size: u64) -> Result<VpmRange, RangeError> {
        let r = VpmRange::new(offset, len)?;
        if r.end() > size {
            return Err(RangeError::OutOfRange { offset, len, size });
        }
        Ok(r)
    }

    /// Pages `[first, first + count)` as a byte range.
    pub fn pages(first: u64, count: u64) -> Result<VpmRange, RangeError> {
        let overflow = RangeError::Overflow {
            offset: first,
            len: count,
        };
        let offset = first.checked_mul(PAGE_SIZE).ok_or(overflow)?;
        let len = count.checked_mul(PAGE_SIZE).ok_or(overflow)?;
        VpmRange::new(offset, len)
    }

    /// The checked guest-physical range `r` (from a decoded hint) relative to `region`'s base;
    /// refused unless `r` lies inside the region.
    pub fn in_region(r: GuestRange, region: &VpmRegion) -> Result<VpmRange, RangeError> {
        let outside = RangeError::OutOfRange {
            offset: r.start(),
            len: r.len(),
            size: region.size(),
        };
        let offset = r.start().checked_sub(region.base()).ok_or(outside)?;
        VpmRange::within(offset, r.len(), region.size()).map_err(|_| outside)
    }

    /// First byte, from the vPM base.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Length in bytes (never zero).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: a `VpmRange` is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// One past the last byte.
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }

    /// The page `offset` lies in.
    pub fn first_page(&self) -> u64 {
        self.offset / PAGE_SIZE
    }

    /// Whole pages in the length (`len / PAGE_SIZE`; ranges of page-granular ops are aligned).
    pub fn page_count(&self) -> u64 {
        self.len / PAGE_SIZE
    }

    /// Every page the range touches.
    pub fn touched_pages(&self) -> Range<u64> {
        self.first_page()..self.end().div_ceil(PAGE_SIZE)
    }

    /// `(offset, len)`, for interfaces that take byte ranges as pairs.
    pub fn as_pair(&self) -> (u64, u64) {
        (self.offset, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_refuse_empty_overflowing_and_outside_ranges() {
        assert_eq!(VpmRange::new(5, 0), Err(RangeError::Empty { offset: 5 }));
        assert!(matches!(
            VpmRange::new(u64::MAX, 2),
            Err(RangeError::Overflow { .. })
        ));
        assert!(matches!(
            VpmRange::within(PAGE_SIZE, PAGE_SIZE + 1, 2 * PAGE_SIZE),
            Err(RangeError::OutOfRange { .. })
        ));
        assert!(VpmRange::within(PAGE_SIZE, PAGE_SIZE, 2 * PAGE_SIZE).is_ok());
        assert!(matches!(
            VpmRange::pages(u64::MAX / 2, 1),
            Err(RangeError::Overflow { .. })
        ));
    }

    #[test]
    fn guest_ranges_become_offsets_inside_the_region() {
        let region = VpmRegion::new(0x1000_0000, 16 * PAGE_SIZE).unwrap();
        let r = GuestRange::new(0x1000_0000 + 100, 10).unwrap();
        assert_eq!(
            VpmRange::in_region(r, &region).unwrap().as_pair(),
            (100, 10)
        );
        let below = GuestRange::new(0x1000, 10).unwrap();
        assert!(VpmRange::in_region(below, &region).is_err());
        let past = GuestRange::new(0x1000_0000 + 16 * PAGE_SIZE - 1, 2).unwrap();
        assert!(VpmRange::in_region(past, &region).is_err());
    }

    #[test]
    fn page_arithmetic() {
        let r = VpmRange::new(PAGE_SIZE - 1, 2).unwrap();
        assert_eq!(r.touched_pages(), 0..2);
        let r = VpmRange::pages(3, 2).unwrap();
        assert_eq!((r.first_page(), r.page_count()), (3, 2));
        assert_eq!(r.touched_pages(), 3..5);
    }
}

//! Line-granular work on pages: which of a page's 64 lines differ, which a byte range touches,
//! and writing just the selected lines.

use vpm_abi::LINE_SIZE;

use crate::pm::{PmDevice, PmError};

/// Lines per page (the bits of a line mask).
const LINES: usize = 64;

/// Bit mask of the lines in which pages `a` and `b` differ.
pub(super) fn diff_mask(a: &[u8], b: &[u8]) -> u64 {
    // Unchanged pages are common (pages left writable across epochs): the library's vectorised
    // comparison settles them fastest.
    if a == b {
        return 0;
    }
    let line = LINE_SIZE as usize;
    let mut mask = 0u64;
    for (i, (la, lb)) in a.chunks_exact(line).zip(b.chunks_exact(line)).enumerate() {
        let mut x = 0u64;
        for (wa, wb) in la.chunks_exact(8).zip(lb.chunks_exact(8)) {
            let wa = u64::from_ne_bytes(wa.try_into().expect("8 bytes"));
            let wb = u64::from_ne_bytes(wb.try_into().expect("8 bytes"));
            x |= wa ^ wb;
        }
        mask |= ((x != 0) as u64) << i;
    }
    mask
}

/// Lines compared by [`sampled_changes`], spread over the page.
const SAMPLE_LINES: [usize; 8] = [0, 9, 18, 27, 36, 45, 54, 63];

/// Sampled lines that must differ for a page to count as mostly changed: then it is rewritten
/// whole without a full diff (reading the old page would cost as much memory traffic as writing
/// the new one), and its changed lines are estimated from the sample.
pub(super) const MOSTLY_CHANGED: u32 = 6;

/// How many of 8 lines sampled across the page differ between `a` and `b`.
pub(super) fn sampled_changes(a: &[u8], b: &[u8]) -> u32 {
    let line = LINE_SIZE as usize;
    SAMPLE_LINES
        .iter()
        .filter(|&&l| a[l * line..(l + 1) * line] != b[l * line..(l + 1) * line])
        .count() as u32
}

/// Asks the CPU to start loading the lines [`sampled_changes`] reads of the page at `off` in
/// `dev` (when `dev` is mapped here), so that a loop over pages can overlap the misses of pages
/// ahead with the comparisons of the current one.
pub(super) fn prefetch_sample(dev: &dyn PmDevice, off: u64) {
    #[cfg(target_arch = "x86_64")]
    if let Some(page) = dev.mapped_at(off, LINES as u64 * LINE_SIZE) {
        for l in SAMPLE_LINES {
            // SAFETY: `page` is a mapped page of `dev` (`mapped_at` checked the bounds), so the
            // address is inside the mapping; a prefetch reads nothing into the program and
            // cannot fault.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
                    page.add(l * LINE_SIZE as usize) as *const i8,
                )
            };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (dev, off);
}

/// The changed lines a sample of `sampled` differing lines of 8 stands for.
pub(super) fn estimated_lines(sampled: u32) -> u32 {
    sampled * LINES as u32 / SAMPLE_LINES.len() as u32
}

/// The lines in which page `new` differs from `old`: a sample first, and when most of it
/// differs, all lines as the mask with the count the sample estimates (the page is rewritten
/// whole; reading all of `old` would cost as much as writing `new`); else the exact mask and
/// count.
pub(super) fn changed_lines(new: &[u8], old: &[u8]) -> (u64, u32) {
    let sampled = sampled_changes(new, old);
    if sampled >= MOSTLY_CHANGED {
        return (u64::MAX, estimated_lines(sampled));
    }
    let mask = diff_mask(new, old);
    (mask, mask.count_ones())
}

/// Bit mask of the lines of a page that `[start, end)` (byte offsets within the page, `end >
/// start`) touches.
pub(super) fn line_mask(start: u64, end: u64) -> u64 {
    let first = start / LINE_SIZE;
    let last = (end - 1) / LINE_SIZE;
    let width = last - first + 1;
    let bits = if width == LINES as u64 {
        u64::MAX
    } else {
        (1u64 << width) - 1
    };
    bits << first
}

/// The lines of `page` selected by `mask`, concatenated.
pub(super) fn masked_lines(page: &[u8], mask: u64) -> Vec<u8> {
    let line = LINE_SIZE as usize;
    let mut out = Vec::with_capacity(mask.count_ones() as usize * line);
    for i in (0..LINES).filter(|i| mask & (1 << i) != 0) {
        out.extend_from_slice(&page[i * line..(i + 1) * line]);
    }
    out
}

/// Spreads `payload` (the lines selected by `mask`, concatenated) back to their places in `page`.
pub(super) fn unmask_lines(payload: &[u8], mask: u64, page: &mut [u8]) {
    let line = LINE_SIZE as usize;
    for (k, l) in (0..LINES).filter(|l| mask & (1 << l) != 0).enumerate() {
        page[l * line..(l + 1) * line].copy_from_slice(&payload[k * line..(k + 1) * line]);
    }
}

/// Writes the lines of `page` selected by `mask` to `dev` at `off` as runs of adjacent lines and
/// flushes them; returns bytes written.
pub(super) fn write_lines(
    dev: &dyn PmDevice,
    off: u64,
    page: &[u8],
    mask: u64,
) -> Result<u64, PmError> {
    let line = LINE_SIZE as usize;
    let mut written = 0;
    let mut i = 0;
    while i < LINES {
        if mask & (1 << i) == 0 {
            i += 1;
            continue;
        }
        let start = i;
        while i < LINES && mask & (1 << i) != 0 {
            i += 1;
        }
        let (a, b) = (start * line, i * line);
        dev.write_flush(off + a as u64, &page[a..b])?;
        written += (b - a) as u64;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use vpm_abi::PAGE_SIZE;

    use super::*;
    use crate::pm::sim::SimPm;

    const LINE: usize = LINE_SIZE as usize;

    #[test]
    fn line_masks_cover_the_touched_lines() {
        assert_eq!(line_mask(0, 1), 1);
        assert_eq!(line_mask(63, 65), 0b11);
        assert_eq!(line_mask(0, PAGE_SIZE), u64::MAX);
        assert_eq!(line_mask(PAGE_SIZE - 1, PAGE_SIZE), 1 << 63);
    }

    #[test]
    fn diff_masks_name_the_changed_lines() {
        let a = vec![0u8; PAGE_SIZE as usize];
        let mut b = a.clone();
        assert_eq!(diff_mask(&a, &b), 0);
        b[0] = 1;
        b[5 * LINE + 63] = 1;
        b[63 * LINE] = 1;
        assert_eq!(diff_mask(&a, &b), 1 | 1 << 5 | 1 << 63);
        assert_eq!(sampled_changes(&a, &b), 2);
        for l in SAMPLE_LINES {
            b[l * LINE + 1] = 9;
        }
        assert_eq!(sampled_changes(&a, &b), 8);
        assert_eq!(estimated_lines(7), 56);
    }

    #[test]
    fn masked_lines_round_trip_and_write_only_their_lines() {
        let page: Vec<u8> = (0..PAGE_SIZE).map(|i| (i / LINE_SIZE) as u8 + 1).collect();
        let mask = 0b1101 | 1 << 40;
        let payload = masked_lines(&page, mask);
        assert_eq!(payload.len(), 4 * LINE);
        let mut back = vec![0u8; PAGE_SIZE as usize];
        unmask_lines(&payload, mask, &mut back);
        assert_eq!(diff_mask(&page, &back), !mask);

        let dev = SimPm::new(2 * PAGE_SIZE);
        let written = write_lines(&dev, PAGE_SIZE, &page, mask).unwrap();
        assert_eq!(written, 4 * LINE_SIZE);
        let mut got = vec![0u8; PAGE_SIZE as usize];
        dev.read(PAGE_SIZE, &mut got).unwrap();
        assert_eq!(got, back);
    }
}

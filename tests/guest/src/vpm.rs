//! Access to the vPM region (identity-mapped), with volatile loads and stores so every access
//! really reaches memory while the host moves pages underneath.

/// The vPM region.
#[derive(Clone, Copy)]
pub struct Vpm {
    /// Guest-physical (= virtual) base.
    pub base: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Vpm {
    /// Reads the 64-bit word at byte offset `off`.
    pub fn read(&self, off: u64) -> u64 {
        debug_assert!(off + 8 <= self.size);
        // SAFETY: off is inside the identity-mapped vPM region (callers stay below `size`).
        unsafe { core::ptr::read_volatile((self.base + off) as *const u64) }
    }

    /// Writes the 64-bit word at byte offset `off`.
    pub fn write(&self, off: u64, v: u64) {
        debug_assert!(off + 8 <= self.size);
        // SAFETY: as for `read`.
        unsafe { core::ptr::write_volatile((self.base + off) as *mut u64, v) }
    }

    /// Fills `len` bytes at `off` with words from `f(word index)`.
    pub fn fill(&self, off: u64, len: u64, mut f: impl FnMut(u64) -> u64) {
        for i in 0..len / 8 {
            self.write(off + i * 8, f(i));
        }
    }

    /// Guest-physical address of offset `off`.
    pub fn gpa(&self, off: u64) -> u64 {
        self.base + off
    }

    /// Number of 4 KiB pages.
    pub fn pages(&self) -> u64 {
        self.size / vpm_abi::PAGE_SIZE
    }
}

/// A small xorshift64* generator. Its outputs are scrambled by a multiply: plain xorshift's low
/// bits are so correlated between consecutive outputs that a page drawn by one and a line drawn
/// by the next covered 8192 of a 32 MiB vPM's 524,288 lines.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (never zero internally).
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// The next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number below `n`, from the high bits of the next output (multiply-shift).
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
}

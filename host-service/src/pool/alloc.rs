//! Home slot allocation: a bitmap per device, rebuilt from the page maps when a pool opens.

/// A growable bitmap allocator of slot indices.
#[derive(Clone, Debug, Default)]
pub struct SlotAllocator {
    words: Vec<u64>,
    slots: u64,
    used: u64,
    hint: usize,
}

impl SlotAllocator {
    /// An allocator of `slots` free slots.
    pub fn new(slots: u64) -> SlotAllocator {
        SlotAllocator {
            words: vec![0; slots.div_ceil(64) as usize],
            slots,
            used: 0,
            hint: 0,
        }
    }

    /// Total slots.
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Slots in use.
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Slots free.
    pub fn free(&self) -> u64 {
        self.slots - self.used
    }

    /// Adds slots up to `slots` in total (never shrinks).
    pub fn grow(&mut self, slots: u64) {
        if slots > self.slots {
            self.words.resize(slots.div_ceil(64) as usize, 0);
            self.slots = slots;
        }
    }

    /// Whether `slot` is taken.
    pub fn is_used(&self, slot: u64) -> bool {
        slot < self.slots && self.words[(slot / 64) as usize] & (1 << (slot % 64)) != 0
    }

    /// Marks `slot` used; false if it already was or is out of range.
    pub fn claim(&mut self, slot: u64) -> bool {
        if slot >= self.slots || self.is_used(slot) {
            return false;
        }
        self.words[(slot / 64) as usize] |= 1 << (slot % 64);
        self.used += 1;
        true
    }

    /// Takes the lowest free slot at or after the hint.
    pub fn alloc(&mut self) -> Option<u64> {
        if self.free() == 0 {
            return None;
        }
        let n = self.words.len();
        for i in 0..n {
            let w = (self.hint + i) % n;
            let free = !self.words[w];
            if free != 0 {
                let slot = w as u64 * 64 + free.trailing_zeros() as u64;
                if slot < self.slots {
                    self.claim(slot);
                    self.hint = w;
                    return Some(slot);
                }
            }
        }
        None
    }

    /// Returns `slot`; false if it was not taken. Allocation prefers the lowest free slots, so
    /// homes stay compact (and warm in the page tables and caches).
    pub fn release(&mut self, slot: u64) -> bool {
        if !self.is_used(slot) {
            return false;
        }
        self.words[(slot / 64) as usize] &= !(1 << (slot % 64));
        self.used -= 1;
        self.hint = self.hint.min((slot / 64) as usize);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_every_slot_once_then_refuses() {
        let mut a = SlotAllocator::new(130);
        let mut got: Vec<u64> = (0..130).map(|_| a.alloc().unwrap()).collect();
        got.sort_unstable();
        assert_eq!(got, (0..130).collect::<Vec<_>>());
        assert_eq!(a.alloc(), None);
        assert!(a.release(77));
        assert!(!a.release(77));
        assert_eq!(a.alloc(), Some(77));
    }

    #[test]
    fn claim_detects_double_use_and_growth_adds_slots() {
        let mut a = SlotAllocator::new(10);
        assert!(a.claim(3));
        assert!(!a.claim(3));
        assert!(!a.claim(10));
        a.grow(100);
        assert!(a.claim(99));
        assert_eq!(a.used(), 2);
    }
}

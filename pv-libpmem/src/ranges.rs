//! The process-wide table of ranges mapped by `pmem_map_file`, which decides `pmem_is_pmem`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

/// Set once any `/dev/vpm` range has been registered: native programs never take the lock.
static HAS_VPM: AtomicBool = AtomicBool::new(false);

/// What a registered range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Device DAX.
    DevDax,
    /// A file mapped with `MAP_SYNC`.
    MapSync,
    /// A `/dev/vpm` mapping (para-virtual persistence).
    Vpm,
}

#[derive(Clone, Copy, Debug)]
struct Range {
    base: usize,
    end: usize,
    kind: Kind,
}

fn table() -> &'static RwLock<Vec<Range>> {
    static T: OnceLock<RwLock<Vec<Range>>> = OnceLock::new();
    T.get_or_init(|| RwLock::new(Vec::new()))
}

/// Registers `[base, base + len)`; false if it overlaps a registered range.
pub fn register(base: usize, len: usize, kind: Kind) -> bool {
    let mut t = table().write().expect("range table");
    let end = base + len;
    if t.iter().any(|r| base < r.end && r.base < end) {
        return false;
    }
    let at = t.partition_point(|r| r.base < base);
    t.insert(at, Range { base, end, kind });
    if kind == Kind::Vpm {
        HAS_VPM.store(true, Ordering::Release);
    }
    true
}

/// Removes `[base, base + len)`, splitting ranges that cover it partly.
pub fn unregister(base: usize, len: usize) {
    let mut t = table().write().expect("range table");
    let end = base + len;
    let mut out = Vec::with_capacity(t.len() + 1);
    for r in t.iter() {
        if r.end <= base || end <= r.base {
            out.push(*r);
            continue;
        }
        if r.base < base {
            out.push(Range { end: base, ..*r });
        }
        if end < r.end {
            out.push(Range { base: end, ..*r });
        }
    }
    *t = out;
}

/// Whether `[addr, addr + len)` is wholly covered by registered ranges (of any kind).
pub fn covered(addr: usize, len: usize) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let t = table().read().expect("range table");
    let mut at = addr;
    for r in t.iter() {
        if r.end <= at {
            continue;
        }
        if r.base > at {
            return false;
        }
        at = r.end;
        if at >= end {
            return true;
        }
    }
    false
}

/// The parts of `[addr, addr + len)` inside `/dev/vpm` mappings.
pub fn vpm_parts(addr: usize, len: usize) -> Vec<(usize, usize)> {
    let end = addr.saturating_add(len);
    let t = table().read().expect("range table");
    t.iter()
        .filter(|r| r.kind == Kind::Vpm && r.base < end && addr < r.end)
        .map(|r| {
            let (a, b) = (addr.max(r.base), end.min(r.end));
            (a, b - a)
        })
        .collect()
}

/// Whether any `/dev/vpm` mapping is registered (fast path for native programs).
pub fn any_vpm() -> bool {
    table()
        .read()
        .expect("range table")
        .iter()
        .any(|r| r.kind == Kind::Vpm)
}

/// `pmem_is_pmem`: `PMEM_IS_PMEM_FORCE` (read on the first call) or full coverage.
pub fn is_pmem(addr: *const u8, len: usize) -> bool {
    static FORCE: OnceLock<Option<bool>> = OnceLock::new();
    let force = *FORCE.get_or_init(
        || match std::env::var("PMEM_IS_PMEM_FORCE").ok().as_deref() {
            Some(v) if v.trim().parse::<i32>().ok() == Some(0) => Some(false),
            Some(v) if v.trim().parse::<i32>().ok() == Some(1) => Some(true),
            _ => None,
        },
    );
    if len == 0 {
        return false;
    }
    force.unwrap_or_else(|| covered(addr as usize, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_and_splitting() {
        let b = 0x7000_0000_0000usize;
        assert!(register(b, 0x4000, Kind::MapSync));
        assert!(register(b + 0x4000, 0x1000, Kind::Vpm));
        assert!(
            !register(b + 0x1000, 0x1000, Kind::DevDax),
            "overlap accepted"
        );
        assert!(covered(b, 0x5000));
        assert!(!covered(b, 0x5001));
        unregister(b + 0x1000, 0x1000);
        assert!(!covered(b, 0x3000));
        assert!(covered(b + 0x2000, 0x2000));
        assert_eq!(vpm_parts(b, 0x10000), vec![(b + 0x4000, 0x1000)]);
        unregister(b, 0x10000);
        assert!(!covered(b + 0x2000, 1));
    }
}

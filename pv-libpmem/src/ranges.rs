//! The process-wide table of ranges mapped by `pmem_map_file`, which decides `pmem_is_pmem`,
//! and of `/dev/vpm` mappings the program made itself (found by [`crate::discover`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{OnceLock, RwLock};

/// Set once any `/dev/vpm` range was registered: native programs skip the table.
static HAD_VPM: AtomicBool = AtomicBool::new(false);

/// Whether a `/dev/vpm` range was ever registered (a fast-path hint: never cleared).
pub fn had_vpm() -> bool {
    HAD_VPM.load(Ordering::Relaxed)
}

/// What a registered range is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Device DAX.
    DevDax,
    /// A file mapped with `MAP_SYNC`.
    MapSync,
    /// A `/dev/vpm` mapping made by `pmem_map_file` (para-virtual persistence).
    Vpm,
    /// A `/dev/vpm` mapping the program made itself, found in `/proc/self/maps`: PV persistence,
    /// but not pmem for `pmem_is_pmem` (as PMDK, which knows only its own mappings).
    Found,
}

impl Kind {
    fn is_vpm(self) -> bool {
        matches!(self, Kind::Vpm | Kind::Found)
    }
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
    if kind.is_vpm() {
        HAD_VPM.store(true, Ordering::Relaxed);
    }
    true
}

/// Replaces every [`Kind::Found`] range with `found` (ranges overlapping a `pmem_map_file`
/// mapping are left out: that mapping is already known).
pub fn replace_found(found: &[(usize, usize)]) {
    let mut t = table().write().expect("range table");
    t.retain(|r| r.kind != Kind::Found);
    for &(base, end) in found {
        if base < end && !t.iter().any(|r| base < r.end && r.base < end) {
            let at = t.partition_point(|r| r.base < base);
            t.insert(
                at,
                Range {
                    base,
                    end,
                    kind: Kind::Found,
                },
            );
            HAD_VPM.store(true, Ordering::Relaxed);
        }
    }
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

/// Whether `[addr, addr + len)` is wholly covered by `pmem_map_file` ranges (of any kind).
pub fn covered(addr: usize, len: usize) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    let t = table().read().expect("range table");
    let mut at = addr;
    for r in t.iter().filter(|r| r.kind != Kind::Found) {
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
        .filter(|r| r.kind.is_vpm() && r.base < end && addr < r.end)
        .map(|r| {
            let (a, b) = (addr.max(r.base), end.min(r.end));
            (a, b - a)
        })
        .collect()
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

    #[test]
    fn found_ranges_are_pv_but_not_pmem_and_are_replaced_whole() {
        let b = 0x7100_0000_0000usize;
        assert!(register(b, 0x2000, Kind::Vpm));
        replace_found(&[(b + 0x1000, b + 0x3000), (b + 0x4000, b + 0x6000)]);
        assert_eq!(vpm_parts(b + 0x4000, 0x1000), vec![(b + 0x4000, 0x1000)]);
        assert!(
            vpm_parts(b + 0x2000, 0x1000).is_empty(),
            "overlap was added"
        );
        assert!(!covered(b + 0x4000, 0x100), "a found range counted as pmem");
        replace_found(&[]);
        assert!(vpm_parts(b + 0x4000, 0x1000).is_empty());
        assert_eq!(vpm_parts(b, 0x1000), vec![(b, 0x1000)]);
        unregister(b, 0x2000);
    }
}

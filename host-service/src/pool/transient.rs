//! Transient marks (semantics P3): pages that live in DRAM only, never reach PM, and read as
//! zeros after a crash; and marking them persistent again.

use super::error::PoolError;
use super::homes::HomeStore;
use super::media::Home;
use super::tenant::Tenant;

/// Marks pages `[first, first + count)` of `t` as `to`: [`Home::Transient`] frees their homes;
/// [`Home::None`] makes transient pages persistent again, without a home until the next persist
/// or epoch (a crash before that shows zeros, their last committed content). Durable when this
/// returns. Returns the pages whose mark changed.
pub(super) fn mark_pages(
    homes: &mut HomeStore,
    t: &mut Tenant,
    first: u64,
    count: u64,
    to: Home,
) -> Result<u64, PoolError> {
    let end = first
        .checked_add(count)
        .ok_or_else(|| t.out_of_range(first))?;
    if count > 0 {
        t.check_vpn(end - 1)?;
    }
    let pm = &**homes.pm();
    let mut changed = Vec::new();
    for vpn in first..end {
        let old = t.home(vpn);
        let becomes = match (old, to) {
            (Home::Transient, Home::Transient) | (Home::None, Home::None) => continue,
            (Home::Pm(_) | Home::Capacity(_), Home::None) => continue,
            (_, new) => new,
        };
        let off = t.store_map_word(pm, vpn, becomes)?;
        pm.flush(off, 8)?;
        changed.push((vpn, old, becomes));
    }
    pm.drain()?;
    let n = changed.len() as u64;
    for (vpn, old, becomes) in changed {
        homes.unalloc(t, old);
        t.set_home(vpn, becomes);
        if becomes == Home::Transient {
            t.stats_mut().transient_marks += 1;
        }
    }
    Ok(n)
}

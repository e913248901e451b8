//! One DRAM budget for all VMs (`vpm serve --dram-mib N`): every tick the running tiered VMs'
//! heat (pages their epochs committed plus bytes they persisted, since the last tick) divides the
//! budget; each VM keeps at least its minimum (`dram_min_mib`) so a hot VM cannot starve another,
//! and never gets more than its vPM. A VM whose share changes gets it with its vCPU parked, its
//! coldest pages leaving DRAM if the share shrank. Created, stopped and paused VMs keep their
//! share out of the division.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use vpm_abi::PAGE_SIZE;

use super::config::Front;
use super::service::Service;
use super::vms::VmState;
use crate::vmm::Mode;

/// A VM taking part in one division.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// Pages it keeps whatever happens.
    pub min: u64,
    /// Pages it may use at most (its vPM).
    pub cap: u64,
    /// Its heat this tick.
    pub heat: u64,
}

/// Divides `total` pages: each claim gets its minimum, the rest goes by heat (capped; what a
/// capped claim cannot take goes to the others). With no heat at all, `None`: keep the shares.
pub fn divide(total: u64, claims: &[Claim]) -> Option<Vec<u64>> {
    let heat: u64 = claims.iter().map(|c| c.heat).sum();
    if heat == 0 || claims.is_empty() {
        return None;
    }
    let mut share: Vec<u64> = claims.iter().map(|c| c.min.min(c.cap)).collect();
    let mut left = total.saturating_sub(share.iter().sum());
    // A few rounds: each hands what is left out by heat among the claims not yet capped.
    for _ in 0..claims.len() {
        let open: Vec<usize> = (0..claims.len())
            .filter(|&i| share[i] < claims[i].cap && claims[i].heat > 0)
            .collect();
        let open_heat: u64 = open.iter().map(|&i| claims[i].heat).sum();
        if left == 0 || open_heat == 0 {
            break;
        }
        let mut given = 0;
        for &i in &open {
            let want = (left as u128 * claims[i].heat as u128 / open_heat as u128) as u64;
            let take = want.min(claims[i].cap - share[i]);
            share[i] += take;
            given += take;
        }
        if given == 0 {
            break;
        }
        left -= given;
    }
    Some(share)
}

/// A VM as the arbiter sees it at one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The VM's id.
    pub id: String,
    /// Its DRAM share now, in pages.
    pub share: u64,
    /// The least share it keeps, in pages.
    pub min: u64,
    /// The most it may get (its vPM), in pages.
    pub cap: u64,
    /// Its work so far (a counter that only grows): pages its epochs committed plus pages'
    /// worth of bytes it persisted.
    pub work: u64,
}

/// The division's state between ticks: each VM's work at the last tick (heat is the growth).
#[derive(Debug, Default)]
pub struct Arbiter {
    last: BTreeMap<String, u64>,
}

impl Arbiter {
    /// Divides `total` pages among `members` by their heat since the last tick and returns the
    /// shares to change (id, pages): changes of less than 1/16 of the share are left out (not
    /// worth a parked vCPU). Empty when nobody was hot.
    pub fn plan(&mut self, total: u64, members: &[Member]) -> Vec<(String, u64)> {
        let claims: Vec<Claim> = members
            .iter()
            .map(|m| {
                let heat = m.work.saturating_sub(*self.last.get(&m.id).unwrap_or(&m.work));
                self.last.insert(m.id.clone(), m.work);
                Claim {
                    min: m.min,
                    cap: m.cap,
                    heat,
                }
            })
            .collect();
        let Some(shares) = divide(total, &claims) else {
            return Vec::new();
        };
        members
            .iter()
            .zip(shares)
            .filter(|(m, share)| share.abs_diff(m.share) * 16 >= m.share.max(16))
            .map(|(m, share)| (m.id.clone(), share))
            .collect()
    }
}

/// Runs the division every `every` for ever (the task is dropped when the service stops).
pub async fn run(service: Arc<Service>, total_pages: u64, every: Duration) {
    let mut arbiter = Arbiter::default();
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let mut members = Vec::new();
        let mut reserved = 0u64;
        {
            let t = service.table();
            let pool = service.pool.lock().expect("pool");
            for (id, vm) in t.iter() {
                let tiered = Mode::from(vm.config.mode).tiered() && vm.config.front == Front::Kvm;
                let share = vm
                    .stats()
                    .map_or((vm.config.dram_mib << 20) / PAGE_SIZE, |s| {
                        s.dram_budget_pages
                    });
                if !tiered {
                    continue;
                }
                if vm.state() != VmState::Running {
                    reserved += (vm.config.dram_mib << 20) / PAGE_SIZE;
                    continue;
                }
                let ts = pool
                    .tenant(vm.tenant)
                    .map(|tn| tn.stats())
                    .unwrap_or_default();
                members.push(Member {
                    id: id.clone(),
                    share,
                    min: vm.config.dram_min_pages(),
                    cap: vm.config.pages(),
                    work: ts.committed_pages + ts.persist_requested_bytes / PAGE_SIZE,
                });
            }
        }
        for (id, share) in arbiter.plan(total_pages.saturating_sub(reserved), &members) {
            if let Err(e) = service.set_dram_budget(&id, share).await {
                tracing::debug!(vm = %id, error = %e, "DRAM share not changed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(min: u64, cap: u64, heat: u64) -> Claim {
        Claim { min, cap, heat }
    }

    #[test]
    fn heat_divides_what_the_minimums_leave() {
        assert_eq!(
            divide(100, &[c(10, 100, 3), c(10, 100, 1)]),
            Some(vec![70, 30])
        );
        // A cold VM keeps its minimum; a capped VM's surplus goes to the other.
        assert_eq!(
            divide(100, &[c(10, 100, 1), c(5, 100, 0)]),
            Some(vec![95, 5])
        );
        assert_eq!(
            divide(100, &[c(10, 30, 9), c(10, 100, 1)]),
            Some(vec![30, 70])
        );
        // No heat: keep the shares as they are.
        assert_eq!(divide(100, &[c(10, 100, 0), c(10, 100, 0)]), None);
        // Never more than the total.
        let s = divide(64, &[c(8, 1000, 7), c(8, 1000, 5), c(8, 1000, 1)]).unwrap();
        assert!(
            s.iter().sum::<u64>() <= 64 && s.iter().all(|&x| x >= 8),
            "{s:?}"
        );
    }
}

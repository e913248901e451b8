//! One DRAM budget for all VMs (`vpm serve --dram-mib N`): every tick the running tiered VMs'
//! heat divides the budget — their DRAM demand (the pages their tier policy holds write-hot), or
//! without one their work per committed epoch, smoothed over ticks (see [`Arbiter`]). Each VM
//! keeps at least its minimum (`dram_min_mib`) so a hot VM cannot starve another, and never gets
//! more than its vPM. A VM whose share changes gets it with its vCPU parked, its coldest pages
//! leaving DRAM if the share shrank. Created, stopped and paused VMs keep their share out of the
//! division.

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
    /// Epochs it committed so far.
    pub epochs: u64,
    /// Its DRAM demand now, when known: the pages its tier policy holds write-hot
    /// ([`crate::tier::policy::dram_demand`]). When given it is the VM's heat: pages dirtied once
    /// per epoch (scattered writes, scans) count in `work` but no DRAM absorbs them.
    pub demand: Option<u64>,
}

/// What the arbiter remembers of a VM between ticks.
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    work: u64,
    epochs: u64,
    /// Smoothed heat: work per epoch.
    heat: u64,
}

/// The division's state between ticks.
///
/// Heat is work per committed epoch (the pages a VM rewrites each epoch: what its DRAM share
/// should hold), smoothed over ticks. Work per tick would alias: with 100 ms epochs a 250 ms tick
/// sees two or three epochs' commits in turn, so a steady VM's heat swings by half and the
/// shares flap every tick, each change parking the vCPU for an extra epoch and moving pages.
#[derive(Debug, Default)]
pub struct Arbiter {
    seen: BTreeMap<String, Seen>,
}

impl Arbiter {
    /// Divides `total` pages among `members` by their heat and returns the shares to change
    /// (id, pages): changes of less than 1/8 of the share are left out (not worth a parked vCPU
    /// and the moves). Empty when nobody was hot.
    pub fn plan(&mut self, total: u64, members: &[Member]) -> Vec<(String, u64)> {
        let claims: Vec<Claim> = members
            .iter()
            .map(|m| {
                let seen = self.seen.get(&m.id).copied();
                let heat = match seen {
                    None => 0,
                    Some(s) => {
                        let (work, epochs) = (
                            m.work - s.work.min(m.work),
                            m.epochs - s.epochs.min(m.epochs),
                        );
                        if epochs == 0 && work == 0 {
                            // No epoch ended and nothing persisted: nothing new to learn.
                            s.heat
                        } else {
                            let sample = work / epochs.max(1);
                            if s.heat == 0 {
                                sample
                            } else {
                                (s.heat + sample) / 2
                            }
                        }
                    }
                };
                self.seen.insert(
                    m.id.clone(),
                    Seen {
                        work: m.work,
                        epochs: m.epochs,
                        heat,
                    },
                );
                Claim {
                    min: m.min,
                    cap: m.cap,
                    heat: m.demand.unwrap_or(heat),
                }
            })
            .collect();
        let Some(shares) = divide(total, &claims) else {
            return Vec::new();
        };
        members
            .iter()
            .zip(shares)
            .filter(|(m, share)| share.abs_diff(m.share) * 8 >= m.share.max(8))
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
            // The pool is locked per VM and never while its VMM state is: an epoch commit
            // holds the VMM state and then locks the pool, so holding the pool while taking
            // the state (the demand) deadlocked the service.
            let t = service.table();
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
                let demand = vm.dram_demand();
                let ts = vm
                    .tenant()
                    .and_then(|t| {
                        service
                            .pool
                            .lock()
                            .expect("pool")
                            .tenant(t)
                            .ok()
                            .map(|tn| tn.stats())
                    })
                    .unwrap_or_default();
                members.push(Member {
                    id: id.clone(),
                    share,
                    min: vm.config.dram_min_pages(),
                    cap: vm.config.pages(),
                    work: ts.committed_pages + ts.persist_requested_bytes / PAGE_SIZE,
                    epochs: ts.epochs,
                    demand,
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

    fn m(id: &str, share: u64, work: u64, epochs: u64) -> Member {
        Member {
            id: id.into(),
            share,
            min: 64,
            cap: 8192,
            work,
            epochs,
            demand: None,
        }
    }

    /// With demands given, they divide the budget: a VM dirtying many pages once an epoch gets
    /// less than one rewriting fewer pages every epoch.
    #[test]
    fn demand_is_the_heat_when_known() {
        let mut a = Arbiter::default();
        let mut members = [m("scan", 512, 0, 0), m("hot", 512, 0, 0)];
        members[0].demand = Some(10);
        members[1].demand = Some(800);
        a.plan(1024, &members);
        members[0].work = 5000;
        members[1].work = 1000;
        members[0].epochs = 2;
        members[1].epochs = 2;
        let plan = a.plan(1024, &members);
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan[1].1 > 900 && plan[0].1 < 100, "{plan:?}");
    }

    /// Two VMs each rewriting a steady number of pages per 100 ms epoch, seen by a 250 ms tick
    /// that catches two or three epochs in turn (out of step for the two): once the shares
    /// settle, no tick changes them.
    #[test]
    fn steady_heat_seen_through_aliased_ticks_keeps_the_shares() {
        let mut a = Arbiter::default();
        let (mut shares, mut changes) = (vec![512u64, 512], 0);
        let (mut e, mut w) = ([0u64; 2], [0u64; 2]);
        let per_epoch = [300u64, 100];
        for tick in 0..40u64 {
            for vm in 0..2 {
                let epochs = if (tick + vm as u64) % 2 == 0 { 2 } else { 3 };
                e[vm] += epochs;
                w[vm] += epochs * per_epoch[vm];
            }
            let members = [m("a", shares[0], w[0], e[0]), m("b", shares[1], w[1], e[1])];
            for (id, share) in a.plan(1024, &members) {
                shares[usize::from(id == "b")] = share;
                if tick >= 4 {
                    changes += 1;
                }
            }
        }
        assert_eq!(changes, 0, "shares flapped: {shares:?}");
        // The hot VM holds most of the budget: 64 each, the rest 3:1.
        assert!(shares[0] > 2 * shares[1], "{shares:?}");
    }

    /// A VM that turns cold gives its share back within a few ticks; one that warms takes it.
    #[test]
    fn a_phase_change_moves_the_share() {
        let mut a = Arbiter::default();
        let mut shares = vec![512u64, 512];
        let (mut e, mut w) = ([0u64; 2], [0u64; 2]);
        for tick in 0..30u64 {
            let per_epoch = if tick < 15 { [300u64, 10] } else { [10, 300] };
            for vm in 0..2 {
                e[vm] += 2;
                w[vm] += 2 * per_epoch[vm];
            }
            let members = [m("a", shares[0], w[0], e[0]), m("b", shares[1], w[1], e[1])];
            for (id, share) in a.plan(1024, &members) {
                shares[usize::from(id == "b")] = share;
            }
            if tick == 14 {
                assert!(shares[0] > 800, "{shares:?}");
            }
        }
        assert!(shares[1] > 800, "{shares:?}");
    }
}

//! Tiers: where each vPM page is placed right now (host DRAM or host PM), how write-hot it is,
//! and the placement policy that keeps write-hot pages in DRAM within a VM's DRAM budget.

/// Where a page is mapped for the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// A host DRAM page (fast; content reaches PM at epochs and persists).
    Dram,
    /// A host PM page.
    Pm,
}

/// Per-page tier state.
#[derive(Clone, Copy, Debug)]
pub struct PageTier {
    /// Current placement.
    pub placement: Placement,
    /// Written since the last epoch.
    pub dirty: bool,
    /// Transient: DRAM only.
    pub transient: bool,
    /// Write heat: halves every epoch, +128 for an epoch in which the page was written.
    pub heat: u16,
}

/// A planned move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// Page.
    pub vpn: u64,
    /// Destination.
    pub to: Placement,
}

/// Heat at or above which a PM page is worth moving to DRAM: written in each of the last three
/// epochs (128 + 64 + 32). A page written now and then (a sequential pass, one of many uniformly
/// random writes) is not: a move costs a copy and a remap (~20 µs here), and another to go back.
pub const HOT: u16 = 224;
/// Heat below which a DRAM page goes back to PM (about two quiet epochs after its last write).
pub const COLD: u16 = 48;
/// Most pages moved each way per epoch for heat (transient pages are not counted): bounds the
/// pause when writes spread over more pages than the budget holds, where no placement helps.
pub const MAX_MOVES_EACH_WAY: usize = 32;

/// All pages of one VM.
#[derive(Clone, Debug)]
pub struct TierTable {
    pages: Vec<PageTier>,
    dram_pages: u64,
    budget: u64,
}

impl TierTable {
    /// `pages` pages, all in PM, with a DRAM budget of `budget` pages.
    pub fn new(pages: u64, budget: u64) -> TierTable {
        TierTable {
            pages: vec![
                PageTier {
                    placement: Placement::Pm,
                    dirty: false,
                    transient: false,
                    heat: 0
                };
                pages as usize
            ],
            dram_pages: 0,
            budget,
        }
    }

    /// The page's state.
    pub fn page(&self, vpn: u64) -> &PageTier {
        &self.pages[vpn as usize]
    }

    /// Pages in DRAM now.
    pub fn dram_pages(&self) -> u64 {
        self.dram_pages
    }

    /// The DRAM budget in pages.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Records that the guest wrote `vpn` in this epoch.
    pub fn note_write(&mut self, vpn: u64) {
        self.pages[vpn as usize].dirty = true;
    }

    /// Marks a page transient or persistent; transient pages must be placed in DRAM.
    pub fn set_transient(&mut self, vpn: u64, transient: bool) {
        self.pages[vpn as usize].transient = transient;
    }

    /// Ends an epoch: dirty pages get heat, every page cools, dirty bits clear.
    pub fn end_epoch(&mut self) {
        for p in &mut self.pages {
            p.heat = p.heat / 2 + if p.dirty { 128 } else { 0 };
            p.dirty = false;
        }
    }

    /// Records that a move was carried out.
    pub fn moved(&mut self, m: Move) {
        let p = &mut self.pages[m.vpn as usize];
        if p.placement != m.to {
            match m.to {
                Placement::Dram => self.dram_pages += 1,
                Placement::Pm => self.dram_pages -= 1,
            }
            p.placement = m.to;
        }
    }

    /// Plans moves: transient pages to DRAM; the coldest DRAM pages back to PM; then the hottest
    /// PM pages to DRAM while the budget allows, at most [`MAX_MOVES_EACH_WAY`] of each. Never
    /// plans past the budget except for transient pages, which have nowhere else to live.
    pub fn plan(&self) -> Vec<Move> {
        let mut moves = Vec::new();
        let mut dram = self.dram_pages;
        let mut cold: Vec<(u16, u64)> = self
            .pages
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.placement == Placement::Dram && !p.transient && p.heat < COLD && !p.dirty
            })
            .map(|(vpn, p)| (p.heat, vpn as u64))
            .collect();
        cold.sort_unstable();
        for &(_, vpn) in cold.iter().take(MAX_MOVES_EACH_WAY) {
            moves.push(Move {
                vpn,
                to: Placement::Pm,
            });
            dram -= 1;
        }
        for (vpn, p) in self.pages.iter().enumerate() {
            if p.placement == Placement::Pm && p.transient {
                moves.push(Move {
                    vpn: vpn as u64,
                    to: Placement::Dram,
                });
                dram += 1;
            }
        }
        let mut hot: Vec<(u16, u64)> = self
            .pages
            .iter()
            .enumerate()
            .filter(|(_, p)| p.placement == Placement::Pm && !p.transient && p.heat >= HOT)
            .map(|(vpn, p)| (p.heat, vpn as u64))
            .collect();
        hot.sort_unstable_by(|a, b| b.cmp(a));
        for (_, vpn) in hot.into_iter().take(MAX_MOVES_EACH_WAY) {
            if dram >= self.budget {
                break;
            }
            moves.push(Move {
                vpn,
                to: Placement::Dram,
            });
            dram += 1;
        }
        moves
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(t: &mut TierTable) {
        for m in t.plan() {
            t.moved(m);
        }
    }

    #[test]
    fn hot_pages_go_to_dram_within_budget_and_cool_pages_return() {
        let mut t = TierTable::new(100, 10);
        for _ in 0..3 {
            for vpn in 0..30 {
                t.note_write(vpn);
            }
            t.end_epoch();
        }
        apply(&mut t);
        assert_eq!(t.dram_pages(), 10, "budget filled, not exceeded");
        for _ in 0..4 {
            t.end_epoch();
        }
        apply(&mut t);
        assert_eq!(t.dram_pages(), 0, "cold pages went back to PM");
    }

    #[test]
    fn moves_per_epoch_are_capped() {
        let n = 10 * MAX_MOVES_EACH_WAY as u64;
        let mut t = TierTable::new(n, n);
        for _ in 0..3 {
            (0..n).for_each(|v| t.note_write(v));
            t.end_epoch();
        }
        apply(&mut t);
        assert_eq!(t.dram_pages(), MAX_MOVES_EACH_WAY as u64);
        // Written once only: not hot enough to move.
        let mut t = TierTable::new(4, 4);
        t.note_write(1);
        t.end_epoch();
        assert!(t.plan().is_empty());
    }

    #[test]
    fn transient_pages_live_in_dram() {
        let mut t = TierTable::new(10, 0);
        t.set_transient(3, true);
        apply(&mut t);
        assert_eq!(t.page(3).placement, Placement::Dram);
        t.set_transient(3, false);
        t.end_epoch();
        apply(&mut t);
        assert_eq!(t.page(3).placement, Placement::Pm);
    }
}

//! Where each vPM page is placed right now (host DRAM or host PM), whether it is transient, and
//! its write heat.

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
    /// Most changed cache lines noted for the page in this epoch (0–64).
    pub lines: u8,
    /// Write intensity: halves every epoch, + the changed lines of the epoch (0–128). Heat says
    /// whether a page is written epoch after epoch; intensity says how much of it: of two pages
    /// both written in every epoch, the one whose lines change more takes more stores, which
    /// DRAM absorbs and a PM working copy does not.
    pub intensity: u8,
}

/// Cache lines in a page.
const LINES_PER_PAGE: u8 = (vpm_abi::PAGE_SIZE / vpm_abi::LINE_SIZE) as u8;

/// A planned move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// Page.
    pub vpn: u64,
    /// Destination.
    pub to: Placement,
}

/// The placement and heat of every page of one VM, and its DRAM budget.
#[derive(Clone, Debug)]
pub struct PagePlacements {
    pages: Vec<PageTier>,
    dram_pages: u64,
    budget: u64,
}

impl PagePlacements {
    /// `pages` pages, all in PM, with a DRAM budget of `budget` pages.
    pub fn new(pages: u64, budget: u64) -> PagePlacements {
        PagePlacements {
            pages: vec![
                PageTier {
                    placement: Placement::Pm,
                    dirty: false,
                    transient: false,
                    heat: 0,
                    lines: 0,
                    intensity: 0,
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

    /// Number of pages.
    pub fn len(&self) -> u64 {
        self.pages.len() as u64
    }

    /// Whether the VM has no pages.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Every page with its number, ascending.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &PageTier)> {
        self.pages.iter().enumerate().map(|(v, p)| (v as u64, p))
    }

    /// Pages in DRAM now.
    pub fn dram_pages(&self) -> u64 {
        self.dram_pages
    }

    /// The DRAM budget in pages.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Changes the DRAM budget (a service dividing one DRAM budget among VMs); pages over a
    /// lower budget are the caller's to demote (`tier::make_dram_room` with no need).
    pub fn set_budget(&mut self, pages: u64) {
        self.budget = pages;
    }

    /// Records that the guest wrote `vpn` in this epoch (how much unknown: all of it).
    pub fn note_write(&mut self, vpn: u64) {
        self.note_lines(vpn, LINES_PER_PAGE);
    }

    /// Records that `lines` cache lines of `vpn` changed in this epoch (a commit's diff).
    pub fn note_lines(&mut self, vpn: u64, lines: u8) {
        let p = &mut self.pages[vpn as usize];
        p.dirty = true;
        p.lines = p.lines.max(lines.min(LINES_PER_PAGE));
    }

    /// Marks a page transient or persistent; transient pages must be placed in DRAM.
    pub fn set_transient(&mut self, vpn: u64, transient: bool) {
        self.pages[vpn as usize].transient = transient;
    }

    /// Ends an epoch: dirty pages get heat and intensity, every page cools, dirty bits clear.
    pub fn end_epoch(&mut self) {
        for p in &mut self.pages {
            p.heat = p.heat / 2 + if p.dirty { 128 } else { 0 };
            p.intensity = p.intensity / 2 + p.lines;
            p.dirty = false;
            p.lines = 0;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_halves_and_writes_add_to_it() {
        let mut t = PagePlacements::new(4, 2);
        t.note_write(1);
        t.end_epoch();
        assert_eq!(t.page(1).heat, 128);
        assert!(!t.page(1).dirty);
        t.end_epoch();
        assert_eq!(t.page(1).heat, 64);
        assert_eq!(t.page(0).heat, 0);
    }

    #[test]
    fn moves_count_dram_pages_once() {
        let mut t = PagePlacements::new(4, 2);
        let up = Move {
            vpn: 2,
            to: Placement::Dram,
        };
        t.moved(up);
        t.moved(up);
        assert_eq!(t.dram_pages(), 1);
        t.moved(Move {
            vpn: 2,
            to: Placement::Pm,
        });
        assert_eq!(t.dram_pages(), 0);
    }
}

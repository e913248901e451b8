//! Carrying out moves: grouped into runs of adjacent pages (one remap each), demotions before
//! promotions (they free DRAM), through a [`PageMover`] that does the copying and remapping.

use std::ops::Range;

use super::placements::{Move, PagePlacements, Placement};
use super::policy;

/// Moves page contents between the tiers: the VMM's vPM mapping, or a fake in tests.
pub trait PageMover {
    /// Why a move failed.
    type Error;
    /// Moves pages `[first, first + count)`, all currently in the other tier, to `to`.
    fn move_run(&mut self, first: u64, count: u64, to: Placement) -> Result<(), Self::Error>;
}

/// A run of adjacent pages with one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Run {
    /// First page.
    pub first: u64,
    /// Pages in the run.
    pub count: u64,
    /// Destination.
    pub to: Placement,
}

/// What a batch of moves did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MoveCounts {
    /// Runs moved (one remap each).
    pub remaps: u64,
    /// Pages moved PM → DRAM.
    pub to_dram: u64,
    /// Pages moved DRAM → PM.
    pub to_pm: u64,
}

impl MoveCounts {
    fn add(&mut self, run: Run) {
        self.remaps += 1;
        match run.to {
            Placement::Dram => self.to_dram += run.count,
            Placement::Pm => self.to_pm += run.count,
        }
    }

    /// The sum of two counts.
    pub fn plus(self, other: MoveCounts) -> MoveCounts {
        MoveCounts {
            remaps: self.remaps + other.remaps,
            to_dram: self.to_dram + other.to_dram,
            to_pm: self.to_pm + other.to_pm,
        }
    }
}

/// Groups `moves` into runs of adjacent pages with the same destination, by page number.
pub fn runs(mut moves: Vec<Move>) -> Vec<Run> {
    moves.sort_unstable_by_key(|m| m.vpn);
    let mut out: Vec<Run> = Vec::new();
    for m in moves {
        match out.last_mut() {
            Some(r) if r.to == m.to && r.first + r.count == m.vpn => r.count += 1,
            _ => out.push(Run {
                first: m.vpn,
                count: 1,
                to: m.to,
            }),
        }
    }
    out
}

/// Carries out `moves` through `mover` and records them in `placements`: demotions first (they
/// free DRAM), then promotions, each in runs. Stops at the first failed run.
pub fn apply_moves<M: PageMover>(
    placements: &mut PagePlacements,
    mover: &mut M,
    moves: Vec<Move>,
) -> Result<MoveCounts, M::Error> {
    let (down, up): (Vec<Move>, Vec<Move>) = moves.into_iter().partition(|m| m.to == Placement::Pm);
    let mut counts = MoveCounts::default();
    for batch in [down, up] {
        for run in runs(batch) {
            mover.move_run(run.first, run.count, run.to)?;
            for vpn in run.first..run.first + run.count {
                placements.moved(Move { vpn, to: run.to });
            }
            counts.add(run);
        }
    }
    Ok(counts)
}

/// Demotes the coldest DRAM pages outside `keep` until `need` more pages fit the budget
/// ([`policy::evictions`]). `None` (and nothing moved) if not enough pages can go.
pub fn make_dram_room<M: PageMover>(
    placements: &mut PagePlacements,
    mover: &mut M,
    need: u64,
    keep: Range<u64>,
) -> Result<Option<MoveCounts>, M::Error> {
    match policy::evictions(placements, need, keep) {
        None => Ok(None),
        Some(victims) => apply_moves(placements, mover, victims).map(Some),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages as bytes in two maps, like the real tiers; records every run.
    #[derive(Default)]
    struct FakeMover {
        placement: Vec<Option<Placement>>,
        runs: Vec<Run>,
        fail_at: Option<usize>,
    }

    #[derive(Debug, PartialEq, Eq)]
    struct Refused;

    impl FakeMover {
        fn new(pages: u64) -> FakeMover {
            FakeMover {
                placement: vec![Some(Placement::Pm); pages as usize],
                ..Default::default()
            }
        }
    }

    impl PageMover for FakeMover {
        type Error = Refused;
        fn move_run(&mut self, first: u64, count: u64, to: Placement) -> Result<(), Refused> {
            if self.fail_at == Some(self.runs.len()) {
                return Err(Refused);
            }
            for vpn in first..first + count {
                let p = &mut self.placement[vpn as usize];
                assert_ne!(*p, Some(to), "page {vpn} moved to where it is");
                *p = Some(to);
            }
            self.runs.push(Run { first, count, to });
            Ok(())
        }
    }

    fn mv(vpn: u64, to: Placement) -> Move {
        Move { vpn, to }
    }

    /// Placements and a mover with `dram` pages in DRAM, page `v` having been written in the
    /// last `writes[v]` epochs (more = hotter).
    fn setup(pages: u64, budget: u64, dram: &[(u64, u32)]) -> (PagePlacements, FakeMover) {
        let mut t = PagePlacements::new(pages, budget);
        let mut m = FakeMover::new(pages);
        for e in (0..8).rev() {
            for &(vpn, writes) in dram {
                if e < writes {
                    t.note_write(vpn);
                }
            }
            t.end_epoch();
        }
        let moves = dram.iter().map(|&(v, _)| mv(v, Placement::Dram)).collect();
        apply_moves(&mut t, &mut m, moves).unwrap();
        (t, m)
    }

    #[test]
    fn runs_group_adjacent_pages() {
        let r = runs(vec![
            mv(5, Placement::Dram),
            mv(3, Placement::Dram),
            mv(4, Placement::Dram),
            mv(9, Placement::Pm),
        ]);
        assert_eq!(
            r,
            vec![
                Run {
                    first: 3,
                    count: 3,
                    to: Placement::Dram
                },
                Run {
                    first: 9,
                    count: 1,
                    to: Placement::Pm
                }
            ]
        );
    }

    #[test]
    fn demotions_run_before_promotions_and_are_counted() {
        let (mut t, mut m) = setup(16, 4, &[(0, 1), (1, 1)]);
        m.runs.clear();
        let counts = apply_moves(
            &mut t,
            &mut m,
            vec![
                mv(8, Placement::Dram),
                mv(0, Placement::Pm),
                mv(9, Placement::Dram),
                mv(1, Placement::Pm),
            ],
        )
        .unwrap();
        assert_eq!(m.runs[0].to, Placement::Pm);
        assert_eq!(m.runs[1].to, Placement::Dram);
        assert_eq!(
            counts,
            MoveCounts {
                remaps: 2,
                to_dram: 2,
                to_pm: 2
            }
        );
        assert_eq!(t.dram_pages(), 2);
        assert_eq!(t.page(8).placement, Placement::Dram);
        assert_eq!(t.page(0).placement, Placement::Pm);
    }

    #[test]
    fn making_room_evicts_the_coldest_pages_within_the_budget() {
        // Pages 2 (hottest), 10 (coldest), 11, 12: budget full.
        let (mut t, mut m) = setup(32, 4, &[(2, 8), (10, 1), (11, 3), (12, 5)]);
        let counts = make_dram_room(&mut t, &mut m, 2, 20..24).unwrap().unwrap();
        assert_eq!(counts.to_pm, 2);
        assert_eq!(t.page(10).placement, Placement::Pm);
        assert_eq!(t.page(11).placement, Placement::Pm);
        assert_eq!(t.page(2).placement, Placement::Dram, "hottest page stays");
        assert!(t.dram_pages() + 2 <= t.budget());
        assert_eq!(m.placement[10], Some(Placement::Pm));
    }

    #[test]
    fn making_room_never_evicts_transient_or_kept_pages() {
        let (mut t, mut m) = setup(32, 3, &[(0, 1), (1, 1), (2, 1)]);
        t.set_transient(0, true);
        t.set_transient(1, true);
        let before = m.runs.len();
        assert_eq!(make_dram_room(&mut t, &mut m, 2, 2..3), Ok(None));
        assert_eq!(m.runs.len(), before, "nothing moved");
        let counts = make_dram_room(&mut t, &mut m, 1, 5..9).unwrap().unwrap();
        assert_eq!(counts.to_pm, 1);
        assert_eq!(t.page(2).placement, Placement::Pm);
        assert_eq!(t.page(0).placement, Placement::Dram);
        assert_eq!(t.page(1).placement, Placement::Dram);
    }

    #[test]
    fn a_failed_run_stops_the_batch_and_leaves_placements_true() {
        let (mut t, mut m) = setup(16, 8, &[]);
        m.fail_at = Some(1);
        let r = apply_moves(
            &mut t,
            &mut m,
            vec![mv(1, Placement::Dram), mv(5, Placement::Dram)],
        );
        assert_eq!(r, Err(Refused));
        assert_eq!(t.page(1).placement, Placement::Dram);
        assert_eq!(t.page(5).placement, Placement::Pm);
        assert_eq!(t.dram_pages(), 1);
    }

    #[test]
    fn shuffled_moves_keep_the_budget_when_carried_out() {
        let (mut t, mut m) = setup(64, 8, &[(3, 2)]);
        let mut rng = policy::Rng::new(7);
        for _ in 0..40 {
            let moves = policy::shuffle(&t, &mut rng, 5);
            apply_moves(&mut t, &mut m, moves).unwrap();
            assert!(t.dram_pages() <= t.budget());
        }
    }
}

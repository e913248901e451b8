//! Which pages should move: heat rebalancing within the DRAM budget, the coldest pages to evict
//! when room is needed, and the random shuffle of forced migrations.

use std::collections::BTreeSet;
use std::ops::Range;

use super::placements::{Move, PagePlacements, Placement};

/// Heat at or above which a PM page is worth moving to DRAM: written in each of the last three
/// epochs (128 + 64 + 32). A page written now and then (a sequential pass, one of many uniformly
/// random writes) is not: a move costs a copy and a remap (~20 µs here), and another to go back.
pub const HOT: u16 = 224;
/// Heat below which a DRAM page goes back to PM (about two quiet epochs after its last write).
pub const COLD: u16 = 48;
/// Most pages moved each way per epoch for heat (transient pages are not counted): bounds the
/// pause when writes spread over more pages than the budget holds, where no placement helps.
pub const MAX_MOVES_EACH_WAY: usize = 32;

/// Most hot pages moved each epoch into DRAM the budget has room for (no page has to leave for
/// them): a hot set larger than [`MAX_MOVES_EACH_WAY`] settles in a few epochs instead of tens.
pub const MAX_FILLS: usize = 4 * MAX_MOVES_EACH_WAY;
/// Write intensity at or above which a page is expected to be rewritten nearly whole in its next
/// epoch (40 or more of its 64 lines changed epoch after epoch; intensity settles at twice the
/// lines changed per epoch). A commit writes a page with 32 or more changed lines whole into a
/// fresh home, so a staged stop streams such a page there directly.
pub const WRITTEN_WHOLE: u8 = 80;
/// Heat moves stop while an epoch's dirty pages outnumber the DRAM budget this many times.
pub const SPREAD_FACTOR: u64 = 4;
/// Heat at or above which a page was written in the epoch just ended (`heat / 2` alone is 127 at
/// most).
const WRITTEN_LAST: u16 = 128;
/// Writes count as spread evenly over the tiers while the smaller of the two tiers' written
/// shares is at least this many eighths of the larger.
const EVEN_EIGHTHS: u64 = 6;

fn to(vpn: u64, to: Placement) -> Move {
    Move { vpn, to }
}

/// Plans an epoch's moves: transient pages to DRAM; the coldest DRAM pages back to PM, at most
/// [`MAX_MOVES_EACH_WAY`]; then the hot PM pages to DRAM while the budget has room, the most
/// intensely written first, at most [`MAX_FILLS`]. Never plans past the budget except for
/// transient pages, which have nowhere else to live. A page in DRAM stays until it cools: swapping
/// it for a more intense PM page was tried and dropped, since on uniform writes the intensities
/// of equally written pages differ by chance from epoch to epoch and the swaps churned (random
/// 4 KiB writes at 10 ms epochs ran at 1.3–1.6 M/s with swaps, 1.9–2.0 M/s without;
/// docs/costs.md §9). Nor does a cold page leave while the writes fall on both tiers alike
/// ([`writes_spread_evenly`]): then it is cold by chance.
pub fn rebalance(t: &PagePlacements) -> Vec<Move> {
    let mut moves = Vec::new();
    let mut dram = t.dram_pages();
    let mut cold: Vec<(u16, u64)> = if writes_spread_evenly(t) {
        Vec::new()
    } else {
        t.iter()
            .filter(|(_, p)| {
                p.placement == Placement::Dram && !p.transient && p.heat < COLD && !p.dirty
            })
            .map(|(vpn, p)| (p.heat, vpn))
            .collect()
    };
    cold.sort_unstable();
    for &(_, vpn) in cold.iter().take(MAX_MOVES_EACH_WAY) {
        moves.push(to(vpn, Placement::Pm));
        dram -= 1;
    }
    for (vpn, p) in t.iter() {
        if p.placement == Placement::Pm && p.transient {
            moves.push(to(vpn, Placement::Dram));
            dram += 1;
        }
    }
    let room = t.budget().saturating_sub(dram).min(MAX_FILLS as u64) as usize;
    for vpn in most_intense_hot_pm_pages(t, room) {
        moves.push(to(vpn, Placement::Dram));
    }
    moves
}

/// Whether the epoch just ended wrote the same share of the DRAM pages as of the PM pages (within
/// [`EVEN_EIGHTHS`]; transient pages aside, both shares above zero). Then heat has found no
/// pages worth DRAM more than others: a uniformly random writer at 10 ms epochs leaves a page
/// unwritten for three epochs now and then, and demoting it for a PM page that is hot by the same
/// chance remapped two pages an epoch for nothing (each remap makes the PVM guest refault what it
/// touches; docs/costs.md §8 and §11). A skewed writer, a drifting or a changed hot set, and an
/// idle VM all write the two tiers unevenly.
fn writes_spread_evenly(t: &PagePlacements) -> bool {
    let (mut dram, mut dram_written, mut pm, mut pm_written) = (0u64, 0u64, 0u64, 0u64);
    for (_, p) in t.iter().filter(|(_, p)| !p.transient) {
        let written = u64::from(p.heat >= WRITTEN_LAST);
        match p.placement {
            Placement::Dram => (dram, dram_written) = (dram + 1, dram_written + written),
            Placement::Pm => (pm, pm_written) = (pm + 1, pm_written + written),
        }
    }
    if dram_written == 0 || pm_written == 0 {
        return false;
    }
    // The shares dram_written / dram and pm_written / pm, both scaled by dram * pm.
    let (a, b) = (dram_written * pm, pm_written * dram);
    a.min(b) * 8 >= a.max(b) * EVEN_EIGHTHS
}

/// Up to `count` write-hot PM pages (not transient), the most intensely written first (then the
/// hottest, then the highest page number). Selects before it sorts: ranking every hot page of a
/// large vPM to keep a few took ~0.4 ms of each pause at 32 MiB.
fn most_intense_hot_pm_pages(t: &PagePlacements, count: usize) -> Vec<u64> {
    if count == 0 {
        return Vec::new();
    }
    let mut hot: Vec<(u8, u16, u64)> = t
        .iter()
        .filter(|(_, p)| p.placement == Placement::Pm && !p.transient && p.heat >= HOT)
        .map(|(vpn, p)| (p.intensity, p.heat, vpn))
        .collect();
    if hot.len() > count {
        hot.select_nth_unstable_by(count - 1, |a, b| b.cmp(a));
        hot.truncate(count);
    }
    hot.sort_unstable_by(|a, b| b.cmp(a));
    hot.into_iter().map(|(_, _, vpn)| vpn).collect()
}

/// An epoch's moves when `dirty` pages were written in it: [`rebalance`]'s, except that while
/// the writes spread over more than [`SPREAD_FACTOR`] times the DRAM budget only transient pages
/// move (they live nowhere else). No placement absorbs a useful share of such writes, and each
/// remap makes the PVM guest refault its working set (docs/costs.md §8: random KV puts on
/// 512 MiB ran 4× slower with heat moves than without).
pub fn epoch_moves(t: &PagePlacements, dirty: u64) -> Vec<Move> {
    if dirty > SPREAD_FACTOR * t.budget() {
        return t
            .iter()
            .filter(|(_, p)| p.placement == Placement::Pm && p.transient)
            .map(|(vpn, _)| to(vpn, Placement::Dram))
            .collect();
    }
    rebalance(t)
}

/// Pages worth a place in DRAM: those [`rebalance`] holds write-hot (heat at or above [`HOT`],
/// wherever they are now) and the transient pages, which live nowhere else. A VM's DRAM demand
/// when one budget is divided among VMs: a scan or scattered writes make few such pages however
/// many pages they dirty, so they do not draw DRAM that could not absorb anything.
pub fn dram_demand(t: &PagePlacements) -> u64 {
    t.iter()
        .filter(|(_, p)| p.transient || p.heat >= HOT)
        .count() as u64
}

/// The demotions that make room for `need` more DRAM pages within the budget, coldest first
/// (pages written in this epoch count as hotter than any that were not; ties by page number).
/// Transient pages and pages in `keep` are never chosen. `None` if not enough pages can go.
pub fn evictions(t: &PagePlacements, need: u64, keep: Range<u64>) -> Option<Vec<Move>> {
    let have = t.dram_pages();
    if have + need <= t.budget() {
        return Some(Vec::new());
    }
    let excess = (have + need - t.budget()) as usize;
    let mut candidates: Vec<(bool, u16, u64)> = t
        .iter()
        .filter(|(vpn, p)| p.placement == Placement::Dram && !p.transient && !keep.contains(vpn))
        .map(|(vpn, p)| (p.dirty, p.heat, vpn))
        .collect();
    if candidates.len() < excess {
        return None;
    }
    candidates.sort_unstable();
    Some(
        candidates[..excess]
            .iter()
            .map(|&(_, _, vpn)| to(vpn, Placement::Pm))
            .collect(),
    )
}

/// Picks up to `pages` random PM pages to move into DRAM and up to as many DRAM pages to move
/// out, never past the budget and never touching transient pages: the transparency stress of
/// forced migrations.
pub fn shuffle(t: &PagePlacements, rng: &mut Rng, pages: u64) -> Vec<Move> {
    let total = t.len();
    let mut moves = Vec::new();
    if total == 0 {
        return moves;
    }
    let mut picked = BTreeSet::new();
    let room = t.budget() - t.dram_pages().min(t.budget());
    let (mut up, mut down) = (0, 0);
    for _ in 0..pages * 4 {
        let vpn = rng.below(total);
        if !picked.insert(vpn) {
            continue;
        }
        let p = t.page(vpn);
        if p.transient {
            continue;
        }
        match p.placement {
            Placement::Pm if up < pages && up < room + down => {
                moves.push(to(vpn, Placement::Dram));
                up += 1;
            }
            Placement::Dram if down < pages => {
                moves.push(to(vpn, Placement::Pm));
                down += 1;
            }
            _ => {}
        }
    }
    moves
}

/// A small xorshift64* generator for forced migrations (scrambled output, high bits for ranges:
/// plain xorshift's low bits correlate between consecutive draws).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        ((x.wrapping_mul(0x2545_f491_4f6c_dd1d) as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(t: &mut PagePlacements, moves: Vec<Move>) {
        for m in moves {
            t.moved(m);
        }
    }

    fn rebalance_once(t: &mut PagePlacements) {
        let moves = rebalance(t);
        apply(t, moves);
    }

    /// Pages `vpns` in DRAM, each with the heat given.
    fn with_dram(pages: u64, budget: u64, heat: &[(u64, u32)]) -> PagePlacements {
        let mut t = PagePlacements::new(pages, budget);
        // Heat as the sum of writes in recent epochs: write page v in the epochs whose bit is set.
        for e in (0..8).rev() {
            for &(vpn, bits) in heat {
                if bits & (1 << e) != 0 {
                    t.note_write(vpn);
                }
            }
            t.end_epoch();
        }
        for &(vpn, _) in heat {
            t.moved(to(vpn, Placement::Dram));
        }
        t
    }

    /// A scan dirties every page once and a skewed writer rewrites a few each epoch: only the
    /// rewritten ones are demand, whatever the number of pages dirtied.
    #[test]
    fn demand_counts_rewritten_pages_not_pages_dirtied_once() {
        let mut t = PagePlacements::new(1000, 10);
        for e in 0..6u64 {
            for vpn in 0..20 {
                t.note_write(vpn);
            }
            // A scan: 100 different pages each epoch.
            for vpn in 100 + e * 100..200 + e * 100 {
                t.note_write(vpn);
            }
            t.end_epoch();
        }
        assert_eq!(dram_demand(&t), 20);
        t.set_transient(999, true);
        assert_eq!(dram_demand(&t), 21);
    }

    /// Writes spread over far more pages than DRAM holds: the hot pages found among them stay
    /// where they are, transient pages still go to DRAM; below the spread limit the same heat
    /// moves pages.
    #[test]
    fn writes_spread_far_beyond_the_budget_move_only_transient_pages() {
        let mut t = PagePlacements::new(1000, 10);
        t.set_transient(999, true);
        for _ in 0..3 {
            for vpn in 0..30 {
                t.note_write(vpn);
            }
            t.end_epoch();
        }
        let spread = epoch_moves(&t, SPREAD_FACTOR * 10 + 1);
        assert_eq!(spread.len(), 1, "{spread:?}");
        assert_eq!((spread[0].vpn, spread[0].to), (999, Placement::Dram));
        let local = epoch_moves(&t, 30);
        assert_eq!(
            local.len(),
            10,
            "the transient page and 9 hot ones fill the budget"
        );
        assert!(local.iter().any(|m| m.vpn == 999), "{local:?}");
    }

    #[test]
    fn hot_pages_go_to_dram_within_budget_and_cool_pages_return() {
        let mut t = PagePlacements::new(100, 10);
        for _ in 0..3 {
            for vpn in 0..30 {
                t.note_write(vpn);
            }
            t.end_epoch();
        }
        rebalance_once(&mut t);
        assert_eq!(t.dram_pages(), 10, "budget filled, not exceeded");
        for _ in 0..4 {
            t.end_epoch();
        }
        rebalance_once(&mut t);
        assert_eq!(t.dram_pages(), 0, "cold pages went back to PM");
    }

    #[test]
    fn moves_per_epoch_are_capped() {
        let n = 10 * MAX_MOVES_EACH_WAY as u64;
        let mut t = PagePlacements::new(n, n);
        for _ in 0..3 {
            (0..n).for_each(|v| t.note_write(v));
            t.end_epoch();
        }
        rebalance_once(&mut t);
        assert_eq!(t.dram_pages(), MAX_FILLS as u64, "fills into free room");
        // Written once only: not hot enough to move.
        let mut t = PagePlacements::new(4, 4);
        t.note_write(1);
        t.end_epoch();
        assert!(rebalance(&t).is_empty());
    }

    /// Every page is written in every epoch, a tenth of them all over and the rest in part (a
    /// skewed writer at full speed): heat alone cannot tell them apart, intensity can. DRAM
    /// fills with the whole-page writers; once it is full, nothing moves while every page in it
    /// is still written (no churn).
    #[test]
    fn pages_written_more_intensely_win_dram_when_every_page_is_written() {
        let (n, budget) = (1000u64, 100u64);
        let hot = |v: u64| v % 10 == 0;
        let epoch = |t: &mut PagePlacements| {
            (0..n).for_each(|v| t.note_lines(v, if hot(v) { 64 } else { 40 + (v % 7) as u8 }));
            t.end_epoch();
        };
        let mut t = PagePlacements::new(n, budget);
        for _ in 0..3 {
            epoch(&mut t);
        }
        rebalance_once(&mut t);
        assert_eq!(t.dram_pages(), budget);
        let in_dram: Vec<u64> = (0..n)
            .filter(|&v| t.page(v).placement == Placement::Dram)
            .collect();
        assert!(in_dram.iter().all(|&v| hot(v)), "{in_dram:?}");
        for _ in 0..5 {
            epoch(&mut t);
            assert!(
                rebalance(&t).is_empty(),
                "a full DRAM of written pages churns"
            );
        }
    }

    #[test]
    fn transient_pages_live_in_dram() {
        let mut t = PagePlacements::new(10, 0);
        t.set_transient(3, true);
        rebalance_once(&mut t);
        assert_eq!(t.page(3).placement, Placement::Dram);
        t.set_transient(3, false);
        t.end_epoch();
        rebalance_once(&mut t);
        assert_eq!(t.page(3).placement, Placement::Pm);
    }

    #[test]
    fn eviction_takes_the_coldest_pages_first() {
        // Page 0 is hottest (written every epoch), page 5 coldest (written long ago).
        let mut t = with_dram(8, 4, &[(0, 0xff), (1, 0x01), (2, 0x0f), (5, 0x80)]);
        assert_eq!(t.dram_pages(), 4);
        let moves = evictions(&t, 2, 6..8).unwrap();
        assert_eq!(
            moves,
            vec![to(5, Placement::Pm), to(1, Placement::Pm)],
            "coldest first, not lowest page number"
        );
        // A page written in this epoch goes after every page that was not.
        t.note_write(5);
        let moves = evictions(&t, 1, 6..8).unwrap();
        assert_eq!(moves, vec![to(1, Placement::Pm)]);
    }

    #[test]
    fn eviction_respects_the_budget_keep_and_transient_pages() {
        let mut t = with_dram(8, 4, &[(0, 1), (1, 1), (2, 1)]);
        assert_eq!(evictions(&t, 1, 0..0), Some(vec![]), "room already");
        t.set_transient(0, true);
        // Need 3 more: excess 2; page 0 transient, page 1 kept: only page 2 can go.
        assert_eq!(evictions(&t, 3, 1..2), None);
        let moves = evictions(&t, 2, 1..2).unwrap();
        assert_eq!(moves, vec![to(2, Placement::Pm)]);
        apply(&mut t, moves);
        assert_eq!(t.dram_pages() + 2, t.budget(), "exactly enough room");
    }

    #[test]
    fn shuffle_keeps_the_budget_and_leaves_transient_pages() {
        let mut t = PagePlacements::new(64, 8);
        t.set_transient(7, true);
        t.moved(to(7, Placement::Dram));
        let mut rng = Rng::new(42);
        for _ in 0..50 {
            let moves = shuffle(&t, &mut rng, 6);
            assert!(moves.iter().all(|m| m.vpn != 7));
            let up = moves.iter().filter(|m| m.to == Placement::Dram).count();
            let down = moves.len() - up;
            assert!(up <= 6 && down <= 6);
            apply(&mut t, moves);
            assert!(t.dram_pages() <= t.budget(), "budget holds");
        }
        assert_eq!(t.page(7).placement, Placement::Dram);
    }

    /// One epoch of a trace as the epoch driver runs it: the writes, the heat update, then the
    /// rebalance carried out.
    fn epoch(t: &mut PagePlacements, writes: impl IntoIterator<Item = u64>) {
        writes.into_iter().for_each(|v| t.note_write(v));
        t.end_epoch();
        rebalance_once(t);
        assert!(t.dram_pages() <= t.budget(), "budget holds");
    }

    fn in_dram(t: &PagePlacements, pages: Range<u64>) -> usize {
        pages
            .filter(|&v| t.page(v).placement == Placement::Dram)
            .count()
    }

    /// Skewed trace: 16 hot pages written every epoch, plus a few writes a round scattered over
    /// the 1008 others (a page among those is written at most every few epochs). The hot set is
    /// in DRAM after warm-up and stays; no scattered page takes one of the 8 spare DRAM slots.
    #[test]
    fn skewed_trace_keeps_the_hot_set_in_dram() {
        let (pages, hot) = (1024u64, 16u64);
        let mut t = PagePlacements::new(pages, hot + 8);
        let mut rng = Rng::new(7);
        for round in 0..40 {
            let scattered: Vec<u64> = (0..8).map(|_| hot + rng.below(pages - hot)).collect();
            epoch(&mut t, (0..hot).chain(scattered));
            if round >= 3 {
                assert_eq!(
                    in_dram(&t, 0..hot),
                    hot as usize,
                    "round {round}: hot set in DRAM"
                );
                assert_eq!(t.dram_pages(), hot, "round {round}: nothing else in DRAM");
            }
        }
    }

    /// Phase change: hot set A (pages 0..24) fills the budget, then the writes move to set B
    /// (pages 100..124). Within 5 epochs of the change B holds DRAM and A is back in PM.
    #[test]
    fn phase_change_replaces_the_hot_set_within_bounded_rounds() {
        let mut t = PagePlacements::new(256, 24);
        for _ in 0..8 {
            epoch(&mut t, 0..24);
        }
        assert_eq!(in_dram(&t, 0..24), 24);
        let mut rounds = None;
        for round in 1..=12 {
            epoch(&mut t, 100..124);
            if in_dram(&t, 100..124) == 24 && in_dram(&t, 0..24) == 0 {
                rounds = Some(round);
                break;
            }
        }
        let rounds = rounds.expect("the new hot set never replaced the old one in 12 epochs");
        assert!(rounds <= 5, "took {rounds} epochs");
    }

    /// A scan writes every page of a vPM 10 times the budget once, 64 new pages per epoch, while
    /// the hot set keeps being written: the hot set never leaves DRAM and no scanned page takes
    /// one of the 16 spare slots.
    #[test]
    fn a_scan_does_not_flush_the_hot_set() {
        let (pages, hot) = (512u64, 32u64);
        let mut t = PagePlacements::new(pages, hot + 16);
        for _ in 0..6 {
            epoch(&mut t, 0..hot);
        }
        assert_eq!(in_dram(&t, 0..hot), hot as usize);
        for chunk in (hot..pages).step_by(64) {
            epoch(&mut t, (0..hot).chain(chunk..(chunk + 64).min(pages)));
            assert_eq!(in_dram(&t, 0..hot), hot as usize, "scan at page {chunk}");
            assert_eq!(
                t.dram_pages(),
                hot,
                "a scanned page entered DRAM (scan at {chunk})"
            );
        }
        // A scan that repeats over a set larger than the budget (every page hot by the
        // three-epoch rule) still cannot push out pages that stay as hot.
        for _ in 0..10 {
            epoch(&mut t, (0..hot).chain(hot..hot + 3 * hot));
            assert_eq!(in_dram(&t, 0..hot), hot as usize, "looping scan");
        }
    }

    /// A uniformly random writer: each page written in an epoch with probability 9/10 (random
    /// 4 KiB writes at 10 ms epochs). DRAM fills, and then no page leaves it: a DRAM page left
    /// unwritten for three epochs is no colder than the PM page that would replace it.
    #[test]
    fn a_uniform_trace_fills_dram_and_then_does_not_churn() {
        let (pages, budget) = (1024u64, 256u64);
        let mut t = PagePlacements::new(pages, budget);
        let mut rng = Rng::new(11);
        let mut demoted = 0;
        for round in 0..60 {
            let writes: Vec<u64> = (0..pages).filter(|_| rng.below(10) != 0).collect();
            writes.iter().for_each(|&v| t.note_write(v));
            t.end_epoch();
            let moves = rebalance(&t);
            if round >= 20 {
                demoted += moves.iter().filter(|m| m.to == Placement::Pm).count();
            }
            apply(&mut t, moves);
        }
        assert_eq!(t.dram_pages(), budget, "DRAM filled");
        assert_eq!(demoted, 0, "pages cold by chance left DRAM");
    }

    /// A drifting hot set: a quarter of the DRAM pages stop being written and as many PM pages
    /// start; the tiers are written unevenly, so the cold pages are replaced.
    #[test]
    fn a_drifting_hot_set_is_followed() {
        let mut t = PagePlacements::new(256, 24);
        for _ in 0..8 {
            epoch(&mut t, 0..24);
        }
        for _ in 0..6 {
            epoch(&mut t, (6..24).chain(100..106));
        }
        assert_eq!(in_dram(&t, 100..106), 6, "the new hot pages are in DRAM");
        assert_eq!(in_dram(&t, 0..6), 0, "the cold ones left");
    }

    #[test]
    fn rng_is_deterministic_and_bounded() {
        let (mut a, mut b) = (Rng::new(9), Rng::new(9));
        for _ in 0..100 {
            let x = a.below(17);
            assert_eq!(x, b.below(17));
            assert!(x < 17);
        }
    }
}

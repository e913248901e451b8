//! Tiers: where each vPM page is placed right now (host DRAM or host PM) and how write-hot it is
//! ([`placements`]), which pages should move ([`policy`]: heat rebalancing within a VM's DRAM
//! budget, coldest-first eviction, the forced-migration shuffle), and carrying moves out through
//! a [`mover::PageMover`] (the VMM's vPM mapping, or an in-memory fake in tests).

pub mod mover;
pub mod placements;
pub mod policy;

pub use mover::{apply_moves, make_dram_room, MoveCounts, PageMover};
pub use placements::{Move, PagePlacements, PageTier, Placement};
pub use policy::{Rng, COLD, HOT, MAX_MOVES_EACH_WAY};

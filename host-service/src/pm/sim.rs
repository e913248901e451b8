//! The power-failure simulator: a PM device that records every store, flush and drain, and can
//! produce the device image after a crash at any point, with writes not yet made durable dropped
//! in any combination.
//!
//! Model (x86 with ADR): stores go to the cache; a cache line reaches PM whenever it is written
//! back, which can happen at any time, so after a crash each line holds its last durable content
//! or any later content it had. `flush` + `drain` (clwb + sfence) make a line's content at flush
//! time durable. PM's failure-atomic unit is 8 bytes: a line written back while a crash cuts the
//! write-back short may hold any mix, word by word, of its durable content and the contents it
//! had later, whatever the size of the store.
//!
//! Stores are recorded one line chunk at a time (a crash point between lines). The crash states of
//! one uncertain line are: its durable content, each later content (the line written back whole),
//! and word-wise mixes of those ([`CrashSpace`]): every mix while there are at most
//! [`EXACT_MIXES`], else the torn-copy mixes (the first k uncertain words new, the rest durable,
//! and the reverse) and [`RANDOM_MIXES`] mixes drawn by a RNG seeded with the crash point and the
//! line, so runs are repeatable.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{check_bounds, DeviceCounters, DeviceStats, FlushMethod, PmDevice, PmError};

const LINE: usize = vpm_abi::LINE_SIZE as usize;
/// 8-byte words per line.
const WORDS: usize = LINE / 8;
/// Word-wise mixes of one line enumerated in full when there are at most this many.
pub const EXACT_MIXES: usize = 16;
/// Random word-wise mixes per uncertain line when there are more than [`EXACT_MIXES`].
pub const RANDOM_MIXES: usize = 2;

/// One recorded device operation, stamped with a global sequence number (shared by all devices
/// built on the same [`SimClock`], so crashes across a PM device and a capacity device line up).
#[derive(Clone, Debug)]
pub enum SimOp {
    /// A store that does not cross a line (8-byte failure atomicity: it may be torn by word).
    Store {
        /// Global sequence number.
        at: u64,
        /// Offset.
        off: u64,
        /// Bytes stored.
        data: Vec<u8>,
    },
    /// A flush of a range.
    Flush {
        /// Global sequence number.
        at: u64,
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// A drain (fence).
    Drain {
        /// Global sequence number.
        at: u64,
    },
}

impl SimOp {
    fn at(&self) -> u64 {
        match self {
            SimOp::Store { at, .. } | SimOp::Flush { at, .. } | SimOp::Drain { at } => *at,
        }
    }
}

/// A global operation counter shared by several simulated devices.
#[derive(Clone, Debug, Default)]
pub struct SimClock(Arc<AtomicU64>);

impl SimClock {
    /// The next sequence number.
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// Sequence number the next operation will get.
    pub fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
struct SimState {
    current: Vec<u8>,
    base: Vec<u8>,
    trace: Vec<SimOp>,
}

/// The simulated device.
#[derive(Debug)]
pub struct SimPm {
    state: Mutex<SimState>,
    clock: SimClock,
    counters: DeviceCounters,
}

impl SimPm {
    /// A zeroed device of `size` bytes on its own clock.
    pub fn new(size: u64) -> SimPm {
        SimPm::from_image(vec![0; size as usize], SimClock::default())
    }

    /// A device whose durable content is `image`, on `clock`.
    pub fn from_image(image: Vec<u8>, clock: SimClock) -> SimPm {
        SimPm {
            state: Mutex::new(SimState {
                base: image.clone(),
                current: image,
                trace: Vec::new(),
            }),
            clock,
            counters: DeviceCounters::default(),
        }
    }

    /// The clock this device stamps its operations with.
    pub fn clock(&self) -> &SimClock {
        &self.clock
    }

    /// Declares the current content durable and starts a new trace (call after a drain).
    pub fn start_trace(&self) {
        let mut s = self.state.lock().expect("sim lock");
        s.base = s.current.clone();
        s.trace.clear();
    }

    /// The durable image at trace start and the operations since.
    pub fn trace(&self) -> (Vec<u8>, Vec<SimOp>) {
        let s = self.state.lock().expect("sim lock");
        (s.base.clone(), s.trace.clone())
    }

    /// The current (cached) content, as a running program would read it.
    pub fn current(&self) -> Vec<u8> {
        self.state.lock().expect("sim lock").current.clone()
    }

    fn record(&self, s: &mut SimState, off: u64, data: &[u8]) {
        s.current[off as usize..off as usize + data.len()].copy_from_slice(data);
        let mut pos = off as usize;
        let end = off as usize + data.len();
        while pos < end {
            let next = ((pos / LINE) + 1) * LINE;
            let chunk_end = next.min(end);
            s.trace.push(SimOp::Store {
                at: self.clock.tick(),
                off: pos as u64,
                data: s.current[pos..chunk_end].to_vec(),
            });
            pos = chunk_end;
        }
    }
}

impl PmDevice for SimPm {
    fn size(&self) -> u64 {
        self.state.lock().expect("sim lock").current.len() as u64
    }

    fn read(&self, off: u64, buf: &mut [u8]) -> Result<(), PmError> {
        let s = self.state.lock().expect("sim lock");
        check_bounds(off, buf.len() as u64, s.current.len() as u64)?;
        buf.copy_from_slice(&s.current[off as usize..off as usize + buf.len()]);
        Ok(())
    }

    fn write(&self, off: u64, data: &[u8]) -> Result<(), PmError> {
        let mut s = self.state.lock().expect("sim lock");
        check_bounds(off, data.len() as u64, s.current.len() as u64)?;
        self.record(&mut s, off, data);
        self.counters.wrote(data.len() as u64);
        Ok(())
    }

    fn flush(&self, off: u64, len: u64) -> Result<(), PmError> {
        let mut s = self.state.lock().expect("sim lock");
        check_bounds(off, len, s.current.len() as u64)?;
        let at = self.clock.tick();
        s.trace.push(SimOp::Flush { at, off, len });
        self.counters.flushed(len);
        Ok(())
    }

    fn drain(&self) -> Result<(), PmError> {
        let mut s = self.state.lock().expect("sim lock");
        let at = self.clock.tick();
        s.trace.push(SimOp::Drain { at });
        self.counters.drained();
        Ok(())
    }

    fn method(&self) -> FlushMethod {
        FlushMethod::Simulated
    }

    fn grow(&self, size: u64) -> Result<(), PmError> {
        let mut s = self.state.lock().expect("sim lock");
        if size as usize > s.current.len() {
            s.current.resize(size as usize, 0);
            s.base.resize(size as usize, 0);
        }
        Ok(())
    }

    fn stats(&self) -> DeviceStats {
        self.counters.snapshot()
    }
}

/// Per-line state while replaying a trace.
#[derive(Default, Clone)]
struct LineHistory {
    /// Contents the line had after each store since it was last durable.
    versions: Vec<[u8; LINE]>,
    /// `versions.len()` when the last flush covered the line (made durable by the next drain).
    flushed: Option<usize>,
}

/// One line whose content after a crash is uncertain.
#[derive(Clone, Debug)]
struct UncertainLine {
    /// Offset of the line.
    off: usize,
    /// Whole-line contents it had after each store since it was last durable, then word-wise
    /// mixes of those with the durable content.
    states: Vec<[u8; LINE]>,
}

/// Every image a device can hold after a crash at one point of its trace.
#[derive(Clone, Debug)]
pub struct CrashSpace {
    durable: Vec<u8>,
    lines: Vec<UncertainLine>,
}

/// A small deterministic generator (splitmix64) for the random mixes.
struct Mixer(u64);

impl Mixer {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

fn word(line: &[u8; LINE], w: usize) -> [u8; 8] {
    line[w * 8..w * 8 + 8].try_into().expect("8 bytes")
}

/// The crash states of one line: `versions` (later whole-line contents) and word-wise mixes of
/// them with `durable`, without repeats and without the durable content itself.
fn line_states(durable: &[u8; LINE], versions: &[[u8; LINE]], seed: u64) -> Vec<[u8; LINE]> {
    let mut states: Vec<[u8; LINE]> = Vec::with_capacity(versions.len() + EXACT_MIXES);
    let push = |states: &mut Vec<[u8; LINE]>, l: [u8; LINE]| {
        if l != *durable && !states.contains(&l) {
            states.push(l);
        }
    };
    for v in versions {
        push(&mut states, *v);
    }
    // Per word: the values it may hold (durable first, then later ones in order).
    let cands: Vec<Vec<[u8; 8]>> = (0..WORDS)
        .map(|w| {
            let mut c = vec![word(durable, w)];
            for v in versions {
                if !c.contains(&word(v, w)) {
                    c.push(word(v, w));
                }
            }
            c
        })
        .collect();
    let uncertain: Vec<usize> = (0..WORDS).filter(|&w| cands[w].len() > 1).collect();
    if uncertain.len() < 2 {
        return states; // one uncertain word: the whole-line versions cover every value
    }
    let compose = |pick: &dyn Fn(usize) -> usize| {
        let mut l = *durable;
        for (w, c) in cands.iter().enumerate() {
            l[w * 8..w * 8 + 8].copy_from_slice(&c[pick(w)]);
        }
        l
    };
    let combos = uncertain
        .iter()
        .try_fold(1usize, |acc, &w| acc.checked_mul(cands[w].len()))
        .unwrap_or(usize::MAX);
    if combos <= EXACT_MIXES {
        for mut k in 0..combos {
            let mut pick = [0usize; WORDS];
            for &w in &uncertain {
                pick[w] = k % cands[w].len();
                k /= cands[w].len();
            }
            push(&mut states, compose(&|w| pick[w]));
        }
        return states;
    }
    // A copy torn part way, forwards and backwards: the latest value on one side of the tear.
    let latest = |w: usize| cands[w].len() - 1;
    for &cut in &uncertain[1..] {
        push(
            &mut states,
            compose(&|w| if w < cut { latest(w) } else { 0 }),
        );
        push(
            &mut states,
            compose(&|w| if w < cut { 0 } else { latest(w) }),
        );
    }
    let mut rng = Mixer(seed);
    for _ in 0..RANDOM_MIXES {
        let pick: Vec<usize> = cands.iter().map(|c| rng.below(c.len())).collect();
        push(&mut states, compose(&|w| pick[w]));
    }
    states
}

impl CrashSpace {
    /// The crash states after the operations of `trace` stamped before `crash_at` (random mixes
    /// seeded by `crash_at`).
    pub fn at(base: &[u8], trace: &[SimOp], crash_at: u64) -> CrashSpace {
        CrashSpace::at_seeded(base, trace, crash_at, 0)
    }

    /// [`CrashSpace::at`] with the random mixes also seeded by `seed`.
    pub fn at_seeded(base: &[u8], trace: &[SimOp], crash_at: u64, seed: u64) -> CrashSpace {
        let mut durable = base.to_vec();
        let mut current = base.to_vec();
        let mut lines: BTreeMap<usize, LineHistory> = BTreeMap::new();
        for op in trace.iter().take_while(|op| op.at() < crash_at) {
            match op {
                SimOp::Store { off, data, .. } => {
                    let off = *off as usize;
                    let need = (off + data.len()).div_ceil(LINE) * LINE;
                    if need > current.len() {
                        current.resize(need, 0);
                        durable.resize(need, 0);
                    }
                    current[off..off + data.len()].copy_from_slice(data);
                    let line = off / LINE * LINE;
                    let mut v = [0u8; LINE];
                    v.copy_from_slice(&current[line..line + LINE]);
                    lines.entry(line).or_default().versions.push(v);
                }
                SimOp::Flush { off, len, .. } => {
                    let first = *off as usize / LINE * LINE;
                    let end = (*off + *len) as usize;
                    for (_, h) in lines.range_mut(first..end) {
                        if !h.versions.is_empty() {
                            h.flushed = Some(h.versions.len());
                        }
                    }
                }
                SimOp::Drain { .. } => {
                    for (&line, h) in lines.iter_mut() {
                        if let Some(n) = h.flushed.take() {
                            durable[line..line + LINE].copy_from_slice(&h.versions[n - 1]);
                            h.versions.drain(..n);
                        }
                    }
                }
            }
        }
        let seed = seed ^ crash_at.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let lines = lines
            .into_iter()
            .filter(|(_, h)| !h.versions.is_empty())
            .map(|(off, h)| {
                let d: [u8; LINE] = durable[off..off + LINE].try_into().expect("a line");
                let states = line_states(&d, &h.versions, seed ^ off as u64);
                UncertainLine { off, states }
            })
            .filter(|l| !l.states.is_empty())
            .collect();
        CrashSpace { durable, lines }
    }

    /// Number of crash states (saturating).
    pub fn count(&self) -> u128 {
        self.lines.iter().fold(1u128, |acc, l| {
            acc.saturating_mul(l.states.len() as u128 + 1)
        })
    }

    /// Lines whose content is uncertain.
    pub fn uncertain_lines(&self) -> usize {
        self.lines.len()
    }

    /// The image for `choice`: per uncertain line, 0 = durable content, i = its i-th crash
    /// state (later contents first, then word-wise mixes).
    pub fn image(&self, choice: &[usize]) -> Vec<u8> {
        let mut img = self.durable.clone();
        for (l, &c) in self.lines.iter().zip(choice) {
            if c > 0 {
                img[l.off..l.off + LINE].copy_from_slice(&l.states[c - 1]);
            }
        }
        img
    }

    /// The image where nothing uncertain survived.
    pub fn pessimistic(&self) -> Vec<u8> {
        self.durable.clone()
    }

    /// Calls `f` with every choice vector (mixed radix), in order; stops early if `f` says so.
    pub fn for_each_choice(&self, mut f: impl FnMut(&[usize]) -> bool) {
        let radix: Vec<usize> = self.lines.iter().map(|l| l.states.len() + 1).collect();
        let mut choice = vec![0usize; radix.len()];
        loop {
            if !f(&choice) {
                return;
            }
            let mut i = 0;
            loop {
                if i == radix.len() {
                    return;
                }
                choice[i] += 1;
                if choice[i] < radix[i] {
                    break;
                }
                choice[i] = 0;
                i += 1;
            }
        }
    }

    /// A random choice vector from `rand_below(n)` (returns a number in `0..n`).
    pub fn random_choice(&self, mut rand_below: impl FnMut(usize) -> usize) -> Vec<usize> {
        self.lines
            .iter()
            .map(|l| rand_below(l.states.len() + 1))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use vpm_abi::PAGE_SIZE;

    use super::*;

    #[test]
    fn flushed_and_drained_lines_are_certain_others_are_not() {
        let dev = SimPm::new(PAGE_SIZE);
        dev.write(0, &[1u8; 64]).unwrap();
        dev.write(64, &[2u8; 64]).unwrap();
        dev.flush(0, 64).unwrap();
        dev.drain().unwrap();
        let (base, trace) = dev.trace();
        let end = dev.clock().now();
        let space = CrashSpace::at(&base, &trace, end);
        assert_eq!(space.pessimistic()[0], 1, "flushed line is durable");
        assert_eq!(space.pessimistic()[64], 0, "unflushed line may be lost");
        assert_eq!(space.uncertain_lines(), 1);
        // Eight uncertain words of two values each: durable, new, 2 x 7 torn copies and the
        // random mixes that are not among those.
        let count = space.count();
        assert!(
            (17..=2 + 14 + RANDOM_MIXES as u128).contains(&count),
            "{count}"
        );
    }

    #[test]
    fn stores_of_any_size_tear_by_word() {
        let dev = SimPm::new(PAGE_SIZE);
        dev.write(0, &vec![0xabu8; PAGE_SIZE as usize]).unwrap();
        let (base, trace) = dev.trace();
        let space = CrashSpace::at(&base, &trace, dev.clock().now());
        assert_eq!(space.uncertain_lines(), (PAGE_SIZE / 64) as usize);
        let mut torn = 0;
        space.for_each_choice(|c| {
            let img = space.image(c);
            let line0 = &img[..64];
            if line0[..8] == [0xab; 8] && line0[56..] == [0; 8] {
                torn += 1;
            }
            torn < 3
        });
        assert!(torn > 0, "no state with line 0 torn between its words");
    }

    #[test]
    fn few_uncertain_words_are_mixed_exhaustively() {
        let dev = SimPm::new(PAGE_SIZE);
        dev.write_u64(0, 1).unwrap();
        dev.write_u64(8, 2).unwrap();
        dev.write_u64(0, 3).unwrap();
        let (base, trace) = dev.trace();
        let space = CrashSpace::at(&base, &trace, dev.clock().now());
        // Word 0 in {0, 1, 3}, word 1 in {0, 2}: all 6 combinations.
        assert_eq!(space.count(), 6);
        let mut seen = Vec::new();
        space.for_each_choice(|c| {
            let img = space.image(c);
            seen.push((img[0], img[8]));
            true
        });
        seen.sort_unstable();
        assert_eq!(seen, vec![(0, 0), (0, 2), (1, 0), (1, 2), (3, 0), (3, 2)]);
    }

    #[test]
    fn mixes_are_repeatable_for_a_seed() {
        let dev = SimPm::new(PAGE_SIZE);
        let data: Vec<u8> = (0..64).collect();
        dev.write(0, &data).unwrap();
        let (base, trace) = dev.trace();
        let all = |seed| {
            let space = CrashSpace::at_seeded(&base, &trace, dev.clock().now(), seed);
            let mut v = Vec::new();
            space.for_each_choice(|c| {
                v.push(space.image(c)[..64].to_vec());
                true
            });
            v
        };
        assert_eq!(all(5), all(5));
    }

    #[test]
    fn a_crash_before_the_drain_leaves_every_version_possible() {
        let dev = SimPm::new(PAGE_SIZE);
        dev.write_u64(0, 7).unwrap();
        dev.write_u64(0, 8).unwrap();
        dev.flush(0, 8).unwrap();
        let (base, trace) = dev.trace();
        let space = CrashSpace::at(&base, &trace, dev.clock().now());
        let mut seen = Vec::new();
        space.for_each_choice(|c| {
            seen.push(space.image(c)[0]);
            true
        });
        assert_eq!(seen, vec![0, 7, 8]);
    }

    #[test]
    fn writes_after_a_flush_stay_uncertain_after_the_drain() {
        let dev = SimPm::new(PAGE_SIZE);
        dev.write_u64(0, 1).unwrap();
        dev.flush(0, 8).unwrap();
        dev.write_u64(0, 2).unwrap();
        dev.drain().unwrap();
        let (base, trace) = dev.trace();
        let space = CrashSpace::at(&base, &trace, dev.clock().now());
        assert_eq!(space.pessimistic()[0], 1);
        assert_eq!(space.count(), 2);
    }
}

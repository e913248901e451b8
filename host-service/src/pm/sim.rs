//! The power-failure simulator: a PM device that records every store, flush and drain, and can
//! produce the device image after a crash at any point, with writes not yet made durable dropped
//! in any combination.
//!
//! Model (x86 with ADR): stores go to the cache; a cache line reaches PM whenever it is written
//! back, which can happen at any time, so after a crash each line holds its last durable content
//! or any later content it had. `flush` + `drain` (clwb + sfence) make a line's content at flush
//! time durable. Stores of at most 256 bytes are recorded word by word (8-byte failure atomicity,
//! so torn metadata is explored); larger stores line by line.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{check_bounds, DeviceCounters, DeviceStats, FlushMethod, PmDevice, PmError};

const LINE: usize = 64;
const WORDWISE_MAX: usize = 256;

/// One recorded device operation, stamped with a global sequence number (shared by all devices
/// built on the same [`SimClock`], so crashes across a PM device and a capacity device line up).
#[derive(Clone, Debug)]
pub enum SimOp {
    /// A store that does not cross a line.
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
        let step = if data.len() <= WORDWISE_MAX { 8 } else { LINE };
        let mut pos = off as usize;
        let end = off as usize + data.len();
        while pos < end {
            let next = ((pos / step) + 1) * step;
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

/// Every image a device can hold after a crash at one point of its trace.
#[derive(Clone, Debug)]
pub struct CrashSpace {
    durable: Vec<u8>,
    /// (line offset, possible contents other than the durable one).
    lines: Vec<(usize, Vec<[u8; LINE]>)>,
}

impl CrashSpace {
    /// The crash states after the operations of `trace` stamped before `crash_at`.
    pub fn at(base: &[u8], trace: &[SimOp], crash_at: u64) -> CrashSpace {
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
        let lines = lines
            .into_iter()
            .filter(|(_, h)| !h.versions.is_empty())
            .map(|(line, h)| (line, h.versions))
            .collect();
        CrashSpace { durable, lines }
    }

    /// Number of distinct crash states (saturating).
    pub fn count(&self) -> u128 {
        self.lines
            .iter()
            .fold(1u128, |acc, (_, v)| acc.saturating_mul(v.len() as u128 + 1))
    }

    /// Lines whose content is uncertain.
    pub fn uncertain_lines(&self) -> usize {
        self.lines.len()
    }

    /// The image for `choice`: per uncertain line, 0 = durable content, i = i-th later version.
    pub fn image(&self, choice: &[usize]) -> Vec<u8> {
        let mut img = self.durable.clone();
        for ((line, versions), &c) in self.lines.iter().zip(choice) {
            if c > 0 {
                img[*line..*line + LINE].copy_from_slice(&versions[c - 1]);
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
        let radix: Vec<usize> = self.lines.iter().map(|(_, v)| v.len() + 1).collect();
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
            .map(|(_, v)| rand_below(v.len() + 1))
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
        // Store of 64 bytes is recorded word by word: 8 later versions + the durable one.
        assert_eq!(space.count(), 9);
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

//! The workloads the VMM can ask for (see `vpm_abi::harness::Workload`).

use vpm_abi::harness::{
    seq_record_word, seq_words_gpa, shared_page_gpa, BootParams, Workload, FLAG_PV,
    FLAG_TRANSIENT_HINTS, WINDOW_END, WINDOW_START,
};
use vpm_abi::{HintResult, Op};

use crate::hints::Hints;
use crate::io::{progress, rdtsc, window_mark};
use crate::report::{self, set_ops, set_value};
use crate::smp::Cpu;
use crate::vpm::{Rng, Vpm};
use crate::{guest_error, hostile};

const PAGE: u64 = vpm_abi::PAGE_SIZE;
const REC: u64 = 64;
/// Guest RAM scratch for per-page versions (Checksum), latency samples and store counters
/// (`FLAG_COUNT_STORES`): 4 MiB at 10 MiB.
const SCRATCH_GPA: u64 = vpm_abi::harness::STORE_COUNTS_GPA;
const SCRATCH_LEN: u64 = 4 << 20;

/// Per-page store byte counters (`FLAG_COUNT_STORES`), or none.
#[derive(Clone, Copy)]
struct StoreCounts(bool);

impl StoreCounts {
    fn new(p: &BootParams) -> StoreCounts {
        StoreCounts(p.flags & vpm_abi::harness::FLAG_COUNT_STORES != 0)
    }

    /// Adds `len` stored bytes to `page`'s counter.
    fn add(self, page: u64, len: u64) {
        if !self.0 || page >= vpm_abi::harness::STORE_COUNTS_PAGES {
            return;
        }
        let c = (SCRATCH_GPA as *mut u64).wrapping_add(page as usize);
        // SAFETY: guest RAM at SCRATCH_GPA is identity-mapped and holds STORE_COUNTS_PAGES
        // counters; only this vCPU's workload writes them, the host only reads.
        unsafe { c.write_volatile(c.read_volatile() + len) };
    }
}

/// Runs workload `w` on vCPU `cpu` (its share of it: `smp::share`).
pub fn run(w: Workload, p: &BootParams, cpu: Cpu) {
    let vpm = Vpm { base: p.vpm_base, size: p.vpm_size };
    // SMP: this vCPU's slice of vPM and of the work, and its own ring.
    let Some((vpm, p)) = crate::smp::share(w, vpm, p, cpu) else { return };
    let p = &p;
    let mut hints = if p.flags & FLAG_PV != 0 {
        match Hints::register(shared_page_gpa(cpu.index)) {
            Ok(h) => Some(h),
            Err(_) => report::fail("no VPM host answered the hint registration"),
        }
    } else {
        None
    };
    match w {
        Workload::Checksum => checksum(vpm, p),
        Workload::SeqWriter => seq_writer(vpm, p, hints.as_mut()),
        Workload::SeqCheck => seq_check(vpm, p),
        Workload::RandomWrites => random_writes(vpm, p, hints.as_mut()),
        Workload::SkewedWrites => skewed_writes(vpm, p, hints.as_mut()),
        Workload::SeqWrites => seq_writes(vpm, p, hints.as_mut()),
        Workload::KvStore => kv_store(vpm, p, hints.as_mut()),
        Workload::AppendLog => append_log(vpm, p, hints.as_mut()),
        Workload::Transient => transient(vpm, p, hints.as_mut()),
        Workload::Hostile => match hints.as_mut() {
            Some(h) => hostile::run(vpm, h),
            None => report::fail("the hostile workload needs FLAG_PV"),
        },
        Workload::ExitLatency => exit_latency(p),
        Workload::PersistLatency => match hints.as_mut() {
            Some(h) => persist_latency(vpm, p, h),
            None => report::fail("the latency workload needs FLAG_PV"),
        },
    }
}

/// The timed window of a throughput workload of `n` operations (see `WINDOW_START`): created
/// after the first touch of every vPM page (a word read and written back unchanged, so no
/// content changes), it marks the start before operation `n / 5` and the end after the last.
struct Window {
    warm: u64,
}

impl Window {
    fn new(vpm: Vpm, n: u64) -> Window {
        for page in 0..vpm.pages() {
            let off = page * PAGE + 120;
            vpm.write(off, vpm.read(off));
        }
        Window { warm: n / 5 }
    }

    /// Call before operation `i`. SMP: only vCPU 0 marks (the VMM keeps the last start it saw),
    /// so the window is vCPU 0's and counts every vCPU's operations made within it.
    fn before(&self, i: u64) {
        if i == self.warm {
            set_ops(i);
            if crate::smp::current() == 0 {
                window_mark(WINDOW_START);
            }
        }
    }

    /// Call after the last of `n` operations.
    fn end(&self, n: u64) {
        set_ops(n);
        if n > self.warm && crate::smp::current() == 0 {
            window_mark(WINDOW_END);
        }
    }
}

fn check_ok(what: &str, r: i32) {
    if r != HintResult::Ok.code() {
        guest_error!("{what}: host answered {r}");
    }
}

fn persist(h: Option<&mut Hints>, vpm: Vpm, off: u64, len: u64) {
    if let Some(h) = h {
        check_ok("persist", h.persist(vpm.gpa(off), len));
    }
}

fn versions() -> *mut u32 {
    SCRATCH_GPA as *mut u32
}

fn page_word(seed: u64, page: u64, version: u32, w: u64) -> u64 {
    (seed ^ page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (version as u64) << 40)
        .wrapping_mul(w | 1)
        .rotate_left((w % 63) as u32)
}

fn write_page(vpm: Vpm, seed: u64, page: u64, version: u32) {
    vpm.fill(page * PAGE, PAGE, |w| page_word(seed, page, version, w));
}

fn page_ok(vpm: Vpm, seed: u64, page: u64, version: u32) -> bool {
    (0..PAGE / 8).all(|w| vpm.read(page * PAGE + w * 8) == page_word(seed, page, version, w))
}

/// Fill, then verify every page each round while rewriting some (the host migrates meanwhile).
fn checksum(vpm: Vpm, p: &BootParams) {
    let pages = vpm.pages().min(SCRATCH_LEN / 4);
    let mut rng = Rng::new(p.seed);
    for page in 0..pages {
        // SAFETY: the versions array lies in guest RAM scratch, `pages` entries fit in it.
        unsafe { *versions().add(page as usize) = 0 };
        write_page(vpm, p.seed, page, 0);
    }
    progress();
    let (rounds, rewrites) = (p.arg[0].max(1), p.arg[1]);
    for round in 0..rounds {
        for page in 0..pages {
            // SAFETY: as above.
            let v = unsafe { *versions().add(page as usize) };
            if !page_ok(vpm, p.seed, page, v) {
                guest_error!("round {round}: page {page} (version {v}) has wrong content");
            }
        }
        for _ in 0..rewrites {
            let page = rng.below(pages);
            // SAFETY: as above.
            let v = unsafe {
                let slot = versions().add(page as usize);
                *slot += 1;
                *slot
            };
            write_page(vpm, p.seed, page, v);
        }
        set_ops(round + 1);
        progress();
    }
    set_value(0, pages);
}

fn write_record(vpm: Vpm, slots: u64, seq: u64) -> u64 {
    let off = ((seq - 1) % slots) * REC;
    for i in 1..8 {
        vpm.write(off + i as u64 * 8, seq_record_word(seq, i));
    }
    vpm.write(off, seq);
    off
}

/// Sequence-numbered records, forever or `arg[0]` of them; PV: flush each, drain every `arg[1]`.
/// `values[2]` holds the newest complete record (read by the host's epoch witness).
fn seq_writer(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let slots = vpm.size / REC;
    let limit = p.arg[0];
    let batch = p.arg[1].max(1);
    // Report values 1 and 2 on vCPU 0; SMP: each vCPU's own words.
    let [acked_at, newest_at] = seq_words_gpa(crate::smp::current());
    let mut seq = 0u64;
    loop {
        seq += 1;
        let off = write_record(vpm, slots, seq);
        // The newest complete record: the host's epoch witness reads it while the vCPU is paused.
        crate::smp::store_word(newest_at, seq);
        if let Some(h) = hints.as_deref_mut() {
            h.flush(vpm.gpa(off), REC);
            if seq % batch == 0 {
                // The host records this value as acknowledged once the drain completes.
                crate::smp::store_word(acked_at, seq);
                check_ok("drain", h.drain());
            }
        }
        if seq % 65536 == 0 {
            set_ops(seq);
            progress();
        }
        if limit != 0 && seq >= limit {
            break;
        }
    }
    set_ops(seq);
}

/// Checks a recovered record image (F1, or P1 with the acknowledged sequence).
fn seq_check(vpm: Vpm, p: &BootParams) {
    let slots = vpm.size / REC;
    let valid = |off: u64| -> Option<u64> {
        let seq = vpm.read(off);
        (seq != 0 && (1..8).all(|i| vpm.read(off + i * 8) == seq_record_word(seq, i as usize)))
            .then_some(seq)
    };
    let k = (0..slots).filter_map(|s| valid(s * REC)).max().unwrap_or(0);
    // SMP: vCPU 0's slice is the one the witnesses describe.
    if crate::smp::current() == 0 {
        set_value(0, k);
    }
    if p.arg[0] == 1 {
        check_persisted(vpm, slots, k, p.arg[1]);
    } else {
        check_point_in_time(vpm, slots, k);
        // The last epoch the host witnessed committing held record arg[1] (0: not given).
        if k < p.arg[1] {
            guest_error!("recovered to record {k}, older than record {} of the last committed epoch", p.arg[1]);
        }
    }
    set_ops(slots);
}

/// F1: every slot holds exactly the newest record <= k that maps to it (the slot of k+1 may hold
/// a record caught in the middle of being written).
fn check_point_in_time(vpm: Vpm, slots: u64, k: u64) {
    for s in 0..slots {
        let off = s * REC;
        let expected = if k > s { s + 1 + (k - s - 1) / slots * slots } else { 0 };
        let word = |i: usize| if expected == 0 { 0 } else { seq_record_word(expected, i) };
        let exact = (0..8).all(|i| vpm.read(off + i as u64 * 8) == word(i));
        let in_progress = s == k % slots
            && vpm.read(off) == word(0)
            && (1..8).all(|i| {
                let got = vpm.read(off + i as u64 * 8);
                got == word(i) || got == seq_record_word(k + 1, i)
            });
        if !exact && !in_progress {
            guest_error!("slot {s}: not record {expected} of the image at sequence {k}");
        }
    }
}

/// P1: every acknowledged record (<= `acked`) is there, or a later record over it.
fn check_persisted(vpm: Vpm, slots: u64, k: u64, acked: u64) {
    if k < acked {
        guest_error!("newest record {k} is older than the acknowledged {acked}");
    }
    let first = acked.saturating_sub(slots - 1).max(1);
    for r in first..=acked {
        let off = ((r - 1) % slots) * REC;
        for i in 0..8usize {
            let got = vpm.read(off + i as u64 * 8);
            let mut q = r;
            let mut ok = false;
            while q <= k + 1 {
                if got == seq_record_word(q, i) {
                    ok = true;
                    break;
                }
                q += slots;
            }
            if !ok {
                guest_error!("acknowledged record {r} lost (word {i} is {got:#x})");
                return;
            }
        }
    }
}

fn random_writes(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let mut rng = Rng::new(p.seed);
    let len = write_len(p.arg[1], PAGE);
    let counts = StoreCounts::new(p);
    let window = Window::new(vpm, p.arg[0]);
    for n in 0..p.arg[0] {
        window.before(n);
        let page = rng.below(vpm.pages());
        let off = write_in_page(vpm, &mut rng, p.seed, page, len, n);
        counts.add(page, len);
        persist(hints.as_deref_mut(), vpm, off, len);
    }
    window.end(p.arg[0]);
}

/// Bytes per write: `arg` rounded down to 8-byte words, within [8, PAGE]; `default` when 0.
fn write_len(arg: u64, default: u64) -> u64 {
    if arg == 0 {
        return default;
    }
    (arg / 8 * 8).clamp(8, PAGE)
}

/// Writes `len` bytes (version `n`) into `page`: the whole page, or a `len`-aligned piece of it
/// at a random offset. Returns the vPM offset written.
fn write_in_page(vpm: Vpm, rng: &mut Rng, seed: u64, page: u64, len: u64, n: u64) -> u64 {
    if len >= PAGE {
        write_page(vpm, seed, page, n as u32);
        return page * PAGE;
    }
    let off = page * PAGE + rng.below(PAGE / len) * len;
    vpm.fill(off, len, |w| n ^ (w << 32) ^ off);
    off
}

/// 90 % of the writes go to a hot set of every tenth page, the rest anywhere in vPM.
fn skewed_writes(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let mut rng = Rng::new(p.seed);
    let len = write_len(p.arg[1], 64);
    let hot_pages = (vpm.pages() / 10).max(1);
    let counts = StoreCounts::new(p);
    let window = Window::new(vpm, p.arg[0]);
    for n in 0..p.arg[0] {
        window.before(n);
        let page = if rng.below(10) < 9 {
            rng.below(hot_pages) * 10 % vpm.pages()
        } else {
            rng.below(vpm.pages())
        };
        let off = write_in_page(vpm, &mut rng, p.seed, page, len, n);
        counts.add(page, len);
        persist(hints.as_deref_mut(), vpm, off, len);
    }
    window.end(p.arg[0]);
}

fn seq_writes(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let len = (p.arg[1].max(64) / 8 * 8).min(vpm.size);
    let mut off = 0;
    let window = Window::new(vpm, p.arg[0]);
    for n in 0..p.arg[0] {
        window.before(n);
        if off + len > vpm.size {
            off = 0;
        }
        vpm.fill(off, len, |w| n ^ w);
        persist(hints.as_deref_mut(), vpm, off, len);
        off += len;
    }
    window.end(p.arg[0]);
}

/// Key-value store: 128-byte slots (key, 64-byte value, checksum) hashed by key; a put writes
/// the value and its checksum and persists the slot.
fn kv_store(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let slots = vpm.size / 128;
    let mut rng = Rng::new(p.seed);
    let window = Window::new(vpm, p.arg[0]);
    for n in 0..p.arg[0] {
        window.before(n);
        let key = rng.below(slots * 4) + 1;
        let off = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) % slots) * 128;
        let mut sum = key;
        for w in 0..8 {
            let v = key ^ (n << 8) ^ w;
            vpm.write(off + 8 + w * 8, v);
            sum = sum.rotate_left(5) ^ v;
        }
        vpm.write(off, key);
        vpm.write(off + 72, sum);
        persist(hints.as_deref_mut(), vpm, off, 80);
    }
    window.end(p.arg[0]);
}

/// Append-only log: record, persist it, then the tail pointer (word 0), persist that.
fn append_log(vpm: Vpm, p: &BootParams, mut hints: Option<&mut Hints>) {
    let len = (p.arg[1].max(16) + 7) / 8 * 8;
    let mut tail = 64u64;
    let window = Window::new(vpm, p.arg[0]);
    for n in 0..p.arg[0] {
        window.before(n);
        if tail + len > vpm.size {
            tail = 64;
        }
        vpm.fill(tail, len, |w| n.rotate_left(w as u32) ^ len);
        persist(hints.as_deref_mut(), vpm, tail, len);
        tail += len;
        vpm.write(0, tail);
        persist(hints.as_deref_mut(), vpm, 0, 8);
    }
    window.end(p.arg[0]);
}

/// Transient scratch: the last `arg[1]` pages. Phase 0 marks them (with transient hints) and
/// writes them `arg[2]` times; phase 1 (after a crash) checks they read as zeros.
fn transient(vpm: Vpm, p: &BootParams, hints: Option<&mut Hints>) {
    let pages = p.arg[1].clamp(1, vpm.pages());
    let first = vpm.pages() - pages;
    if p.arg[0] == 1 {
        for page in first..vpm.pages() {
            if (0..PAGE / 8).any(|w| vpm.read(page * PAGE + w * 8) != 0) {
                guest_error!("transient page {page} is not zero after the crash");
            }
        }
        set_ops(pages);
        return;
    }
    if let Some(h) = hints {
        // Durable content first, so a crash that forgot the mark would show it.
        vpm.fill(first * PAGE, pages * PAGE, |w| w ^ 0x5151);
        check_ok("persist scratch", h.persist(vpm.gpa(first * PAGE), pages * PAGE));
        if p.flags & FLAG_TRANSIENT_HINTS != 0 {
            check_ok("set transient", h.call(Op::SetTransient.code(), vpm.gpa(first * PAGE), pages * PAGE));
        }
    }
    let rounds = p.arg[2].max(1);
    for r in 0..rounds {
        for page in first..vpm.pages() {
            vpm.fill(page * PAGE, PAGE, |w| r ^ w ^ 0xdead);
        }
        set_ops(r + 1);
    }
}

/// What a [`Workload::PersistLatency`] run times (its `arg[2]`).
const LAT_PERSIST: u64 = 0;
/// `arg[2]` = 1: the ring round trip: a NOP entry, which carries no data and which the host
/// answers without touching guest memory (publish → host sees it → completion seen).
const LAT_NOP: u64 = 1;
/// `arg[2]` = 2: the idle job: `arg[0]` persists, a progress exit that opens the idle window,
/// `arg[3]` TSC cycles of busy computing without hints, a progress exit that closes it, then
/// `arg[0]` persists again.
const LAT_IDLE: u64 = 2;

/// Persist latency: `arg[0]` persists of `arg[1]` bytes (or NOP entries, or the idle job: see
/// `arg[2]` above); values: p50, p99, min cycles, total.
fn persist_latency(vpm: Vpm, p: &BootParams, h: &mut Hints) {
    if p.arg[2] == LAT_IDLE {
        return idle_window(vpm, p, h);
    }
    let nop = p.arg[2] == LAT_NOP;
    let n = p.arg[0].clamp(1, SCRATCH_LEN / 8);
    let len = p.arg[1].clamp(8, vpm.size / 2) / 8 * 8;
    let samples = SCRATCH_GPA as *mut u64;
    let span = vpm.size - len;
    let offset = |i: u64| (i * len.max(PAGE)) % span / 64 * 64;
    // Warm-up, untimed: each range persisted once, so the timed persists are the steady state a
    // PM program lives in (its data already has PM homes), not each page's first persist, which
    // also gives the page its home (a whole-page write).
    if !nop {
        for i in 0..n {
            vpm.fill(offset(i), len, |w| !(i ^ w));
            check_ok("persist", h.persist(vpm.gpa(offset(i)), len));
        }
    }
    let start_all = rdtsc();
    for i in 0..n {
        let off = offset(i);
        let t0 = if nop {
            let t0 = rdtsc();
            check_ok("nop", h.call(Op::Nop.code(), 0, 0));
            t0
        } else {
            vpm.fill(off, len, |w| i ^ w);
            let t0 = rdtsc();
            check_ok("persist", h.persist(vpm.gpa(off), len));
            t0
        };
        // SAFETY: n samples fit in the guest RAM scratch (clamped above).
        unsafe { *samples.add(i as usize) = rdtsc() - t0 };
    }
    let total = rdtsc() - start_all;
    // SAFETY: the first n entries were written above.
    let s = unsafe { core::slice::from_raw_parts_mut(samples, n as usize) };
    s.sort_unstable();
    set_value(0, s[s.len() / 2]);
    set_value(1, s[(s.len() * 99) / 100]);
    set_value(2, s[0]);
    set_value(3, total);
    set_ops(n);
}

/// The idle job ([`LAT_IDLE`]): hints, an idle window marked by two progress exits (the host
/// reads the poller thread's CPU clock at each), hints again. The guest computes during the
/// window (it cannot halt: HLT ends the test VM); values: cycles of the window.
fn idle_window(vpm: Vpm, p: &BootParams, h: &mut Hints) {
    let n = p.arg[0].max(1);
    let burst = |h: &mut Hints| {
        for i in 0..n {
            let off = (i * PAGE) % vpm.size;
            vpm.write(off, i);
            check_ok("persist", h.persist(vpm.gpa(off), 64));
        }
    };
    burst(h);
    progress();
    let t0 = rdtsc();
    let mut x = p.seed | 1;
    while rdtsc() - t0 < p.arg[3] {
        for _ in 0..1000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        }
    }
    let window = rdtsc() - t0;
    progress();
    burst(h);
    set_value(0, window);
    set_value(1, x);
    set_ops(2 * n);
}

/// Exit round trips: `arg[0]` progress-port writes; values: p50, p99, min cycles.
fn exit_latency(p: &BootParams) {
    let n = p.arg[0].clamp(1, SCRATCH_LEN / 8);
    let samples = SCRATCH_GPA as *mut u64;
    for i in 0..n {
        let t0 = rdtsc();
        progress();
        // SAFETY: n samples fit in the guest RAM scratch (clamped above).
        unsafe { *samples.add(i as usize) = rdtsc() - t0 };
    }
    // SAFETY: the first n entries were written above.
    let s = unsafe { core::slice::from_raw_parts_mut(samples, n as usize) };
    s.sort_unstable();
    set_value(0, s[s.len() / 2]);
    set_value(1, s[(s.len() * 99) / 100]);
    set_value(2, s[0]);
    set_ops(n);
}

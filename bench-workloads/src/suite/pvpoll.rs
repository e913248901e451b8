//! The ring poller's own figures for the suite (issue 13): the ring round-trip floor (a NOP
//! entry published with polling on: publish → host sees it → completion seen, no data), the
//! poller's CPU over an idle window (no hints for over a second), and host CPU per hint.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpm_abi::harness::Workload;
use vpm_host::vmm::{poller, Mode, VmControl, VmOutcome};

use super::vm::{self, Job};
use super::{SuiteError, PM_DIR};

/// `PersistLatency`'s `arg[2]`: NOP entries instead of persists (tests/guest workloads.rs).
const LAT_NOP: u64 = 1;
/// `PersistLatency`'s `arg[2]`: the idle job.
const LAT_IDLE: u64 = 2;

/// How long the idle job's guest sends no hints.
const IDLE_WINDOW: Duration = Duration::from_millis(1200);

/// Host CPU µs per completed hint of a polled run: the poller thread's CPU time over the hints
/// it completed (with a poller every ring pass runs on that thread, after a doorbell or not, so
/// every served or refused entry counts). NaN without hints.
pub fn cpu_us_per_hint(o: &VmOutcome) -> f64 {
    let hints = o.stats.hints_served + o.stats.hints_rejected;
    if hints == 0 {
        return f64::NAN;
    }
    o.stats.poller_cpu_us as f64 / hints as f64
}

/// The ring round-trip floor: `n` NOP entries, each published and awaited with the poller on
/// (`poll_us`); p50 and p99 in µs. The host answers a NOP without touching guest memory, so what
/// is timed is the ring alone: the guest's publish, the poller seeing it, the completion.
pub fn ring_floor(n: u64, poll_us: u64, tsc_per_us: f64) -> Result<Value, SuiteError> {
    let mut job = Job::new("ring", Mode::Pv, Workload::PersistLatency, &[n, 8, LAT_NOP]);
    job.hints = true;
    job.poll_us = poll_us;
    let o = vm::run_alone(&job, PM_DIR, 64)?;
    Ok(json!({
        "p50_us": o.report.values[0] as f64 / tsc_per_us,
        "p99_us": o.report.values[1] as f64 / tsc_per_us,
        "entries": o.report.ops,
        "doorbells": o.stats.doorbells,
        "poller_wakeups": o.stats.poller_wakeups,
        "poller_cpu_us": o.stats.poller_cpu_us,
        "host_cpu_us_per_hint": cpu_us_per_hint(&o),
    }))
}

/// The idle job: a PV guest with the poller on (`poll_us`) sends `hints` persists, computes for
/// [`IDLE_WINDOW`] without a hint (busy, not halted: HLT would end the test VM), marking the
/// window with a progress exit at each end, then sends `hints` persists again. This thread reads
/// the poller thread's CPU clock when it sees each mark; the poller's share of a core over the
/// window is its CPU time over the window's wall time.
pub fn idle(hints: u64, poll_us: u64, tsc_per_us: f64) -> Result<Value, SuiteError> {
    let cycles = (IDLE_WINDOW.as_secs_f64() * 1e6 * tsc_per_us) as u64;
    let mut job = Job::new(
        "idle",
        Mode::Pv,
        Workload::PersistLatency,
        &[hints, 64, LAT_IDLE, cycles],
    );
    job.hints = true;
    job.poll_us = poll_us;
    let s = vm::Scratch::new(PM_DIR, "idle")?;
    let pool = vm::pool(&s.0, 64, 24)?;
    let control = VmControl::default();
    let done = AtomicBool::new(false);
    let (out, marks) = std::thread::scope(|sc| {
        let sampler = sc.spawn(|| sample_marks(&control, &done));
        let out = vm::run_controlled(&job, &pool, &s.0, &control);
        done.store(true, Ordering::Release);
        (out, sampler.join().unwrap_or_default())
    });
    let o = out?;
    let window = match marks.as_slice() {
        [(t0, Some(c0)), (t1, Some(c1)), ..] => Some((
            t1.duration_since(*t0).as_secs_f64(),
            c1.saturating_sub(*c0).as_secs_f64(),
        )),
        _ => None,
    };
    let (wall_s, cpu_s) = window.unwrap_or((f64::NAN, f64::NAN));
    Ok(json!({
        "poll_us": poll_us,
        "hints": 2 * hints,
        "guest": "busy computing, no hints",
        "window_s": wall_s,
        "guest_window_s": o.report.values[0] as f64 / tsc_per_us / 1e6,
        "poller_cpu_us_in_window": cpu_s * 1e6,
        "core_pct": 100.0 * cpu_s / wall_s,
        "poller_cpu_us": o.stats.poller_cpu_us,
        "poller_wakeups": o.stats.poller_wakeups,
        "host_cpu_us_per_hint": cpu_us_per_hint(&o),
        "marks_seen": marks.len(),
    }))
}

/// Watches the running VM's progress exits until `done`; at each new one, the time and the
/// poller thread's CPU time.
fn sample_marks(control: &VmControl, done: &AtomicBool) -> Vec<(Instant, Option<Duration>)> {
    let mut marks = Vec::new();
    let mut seen = 0u64;
    while !done.load(Ordering::Acquire) {
        if let Some(vm) = control.running() {
            let exits = vm.stats.lock().expect("stats").progress_exits;
            if exits > seen {
                seen = exits;
                marks.push((Instant::now(), poller::cpu_time(&vm)));
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    marks
}

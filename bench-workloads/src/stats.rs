//! Small helpers for timing and percentiles.

use std::time::Instant;

/// Percentile `p` (0..=100) of `samples` (sorted in place), in the samples' unit.
pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (samples.len() - 1) as f64).round() as usize;
    samples[idx]
}

/// Runs `f` and returns its result and the elapsed seconds.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let start = Instant::now();
    let v = f();
    (v, start.elapsed().as_secs_f64())
}

/// A line saying where the figures were measured.
pub fn platform_note() -> String {
    let module = |m: &str| std::path::Path::new("/sys/module").join(m).exists();
    let kvm = if module("kvm_pvm") {
        "kvm_pvm (PVM: nested, shadow paging, ~60 us exits)"
    } else if module("kvm_intel") {
        "kvm_intel (VMX)"
    } else if module("kvm_amd") {
        "kvm_amd (SVM)"
    } else {
        "none"
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    format!(
        "{cpu}, {} CPUs, KVM: {kvm}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

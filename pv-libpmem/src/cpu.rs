//! Load-time choices, PMDK style: flush instruction from CPUID and the environment.

use std::sync::OnceLock;

/// How a range is written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flush {
    /// `clwb`, drained by `sfence`.
    Clwb,
    /// `clflushopt`, drained by `sfence`.
    ClflushOpt,
    /// `clflush`: serialising, no drain needed.
    Clflush,
    /// No flushing (`PMEM_NO_FLUSH=1`).
    None,
}

/// The process-wide configuration, read once.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// The flush used by `pmem_flush`.
    pub flush: Flush,
    /// The real instruction (for `pmem_deep_flush`).
    pub deep_flush: Flush,
    /// Copies at least this long use non-temporal stores (unless `no_movnt`).
    pub movnt_threshold: usize,
    /// `PMEM_NO_MOVNT=1`.
    pub no_movnt: bool,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Config {
    /// The configuration (computed on first use).
    pub fn get() -> &'static Config {
        static C: OnceLock<Config> = OnceLock::new();
        C.get_or_init(|| {
            // CPUID is always available on x86-64.
            let max = std::arch::x86_64::__cpuid(0).eax;
            let ebx7 = if max >= 7 {
                std::arch::x86_64::__cpuid_count(7, 0).ebx
            } else {
                0
            };
            let veto = |n: &str| env(n).is_some_and(|v| v == "1");
            let mut hw = Flush::Clflush;
            if ebx7 & (1 << 23) != 0 && !veto("PMEM_NO_CLFLUSHOPT") {
                hw = Flush::ClflushOpt;
            }
            if ebx7 & (1 << 24) != 0 && !veto("PMEM_NO_CLWB") {
                hw = Flush::Clwb;
            }
            let flush = if env("PMEM_NO_FLUSH").is_some_and(|v| v == "1") {
                Flush::None
            } else {
                hw
            };
            let movnt_threshold = env("PMEM_MOVNT_THRESHOLD")
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|&v| v >= 0)
                .map_or(256, |v| v as usize);
            Config {
                flush,
                deep_flush: hw,
                movnt_threshold,
                no_movnt: veto("PMEM_NO_MOVNT"),
            }
        })
    }
}

/// Writes back every cache line of `[addr, addr + len)` with `how`.
pub fn flush_lines(how: Flush, addr: *const u8, len: usize) {
    if len == 0 || how == Flush::None {
        return;
    }
    let start = addr as usize & !63;
    let end = addr as usize + len;
    for line in (start..end).step_by(64) {
        let p = line as *const u8;
        // SAFETY: the caller's range is mapped (libpmem's contract); flushing does not modify it.
        unsafe {
            match how {
                Flush::Clwb => {
                    std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                Flush::ClflushOpt => {
                    std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                _ => std::arch::x86_64::_mm_clflush(p),
            }
        }
    }
}

/// `sfence`.
pub fn fence() {
    // SAFETY: sfence has no operands or preconditions.
    unsafe { std::arch::x86_64::_mm_sfence() }
}

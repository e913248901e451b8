//! More than one vCPU (`vpm guest --vcpus N`): the VMM enters every vCPU at `_start` with its
//! index and the vCPU count in registers, each on its own stack (`vpm_abi::harness::
//! vcpu_stack_top`). vCPU 0 starts the report; the others wait for that, run their share of the
//! workload (workloads that split vPM between vCPUs) and tell the VMM they are done; vCPU 0
//! waits for them, sums their operations and finishes the report.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use vpm_abi::harness::{
    BootParams, GuestExit, Workload, CONTROL_PORT, GUEST_STACK_TOP, MAX_VCPUS, VCPU_STACK_SIZE,
};
use vpm_abi::PAGE_SIZE;

use crate::io::outb;
use crate::vpm::Vpm;

/// Set by vCPU 0 once the report is started.
static STARTED: AtomicBool = AtomicBool::new(false);
/// vCPUs other than 0 that have finished.
static FINISHED: AtomicU32 = AtomicU32::new(0);
/// vCPUs the VM has.
static COUNT: AtomicU32 = AtomicU32::new(1);
/// Operations each vCPU has done.
static OPS: [AtomicU64; MAX_VCPUS as usize] = [const { AtomicU64::new(0) }; MAX_VCPUS as usize];

/// This vCPU: its index and the vCPU count.
#[derive(Clone, Copy)]
pub struct Cpu {
    /// 0 for the bootstrap vCPU.
    pub index: u32,
    /// vCPUs in the VM (1 to `MAX_VCPUS`).
    pub count: u32,
}

impl Cpu {
    /// The vCPU the VMM entered with `index` and `count` (checked against the stack it runs on).
    pub fn new(index: u64, count: u64) -> Cpu {
        let cpu = Cpu {
            index: index as u32,
            count: count.clamp(1, MAX_VCPUS as u64) as u32,
        };
        if cpu.index != current() {
            crate::report::fail("vCPU index does not match its stack");
        }
        cpu
    }
}

/// The index of the vCPU running this code, from the stack it runs on.
pub fn current() -> u32 {
    let sp: u64;
    // SAFETY: reads RSP into a register; no memory access.
    unsafe {
        core::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    (GUEST_STACK_TOP.saturating_sub(sp) / VCPU_STACK_SIZE).min(MAX_VCPUS as u64 - 1) as u32
}

/// vCPU 0: the report is started, the others may run.
pub fn started(count: u32) {
    COUNT.store(count, Ordering::Relaxed);
    STARTED.store(true, Ordering::Release);
}

/// vCPUs other than 0: waits until vCPU 0 has started the report.
pub fn wait_started() {
    while !STARTED.load(Ordering::Acquire) {
        core::hint::spin_loop();
    }
}

/// Records this vCPU's operation count; returns the sum over all vCPUs.
pub fn record_ops(n: u64) -> u64 {
    OPS[current() as usize].store(n, Ordering::Relaxed);
    let count = COUNT.load(Ordering::Relaxed) as usize;
    OPS[..count].iter().map(|o| o.load(Ordering::Relaxed)).sum()
}

/// vCPUs other than 0: this one has finished; the VMM ends its thread.
pub fn finish_ap() -> ! {
    FINISHED.fetch_add(1, Ordering::Release);
    loop {
        outb(CONTROL_PORT, GuestExit::Done as u8);
    }
}

/// vCPU 0: waits until the other `count - 1` vCPUs have finished.
pub fn wait_aps(count: u32) {
    while FINISHED.load(Ordering::Acquire) < count - 1 {
        core::hint::spin_loop();
    }
}

/// This vCPU's share of a workload: its slice of vPM and its parameters, or `None` when it has
/// nothing to do. With one vCPU, everything. With more, the workloads that split (KV puts, log
/// appends, the sequence writer and its checker) give each vCPU a disjoint, page-aligned slice of
/// vPM: KV and log split the operations (`arg[0]`) and use a seed of their own; the sequence
/// writer runs its log on its slice; the checker checks each slice, with vCPU `i`'s acknowledged
/// sequence in `arg[1 + i]` (P1). The other workloads run on vCPU 0 alone.
pub fn share(w: Workload, vpm: Vpm, p: &BootParams, cpu: Cpu) -> Option<(Vpm, BootParams)> {
    let mut p = *p;
    if cpu.count == 1 {
        return Some((vpm, p));
    }
    if !matches!(
        w,
        Workload::KvStore | Workload::AppendLog | Workload::SeqWriter | Workload::SeqCheck
    ) {
        return (cpu.index == 0).then_some((vpm, p));
    }
    let (i, n) = (cpu.index as u64, cpu.count as u64);
    let slice = vpm.size / n / PAGE_SIZE * PAGE_SIZE;
    let part = Vpm {
        base: vpm.base + i * slice,
        size: slice,
    };
    match w {
        Workload::KvStore | Workload::AppendLog => {
            p.seed ^= i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            p.arg[0] = p.arg[0] / n + u64::from(i < p.arg[0] % n);
        }
        Workload::SeqCheck => {
            p.arg[1] = p.arg.get(1 + i as usize).copied().unwrap_or(0);
        }
        _ => {}
    }
    Some((part, p))
}

/// Stores `v` at `gpa` (a word of the report page, e.g. `vpm_abi::harness::seq_words_gpa`).
pub fn store_word(gpa: u64, v: u64) {
    // SAFETY: callers pass words of the identity-mapped report page, which only this vCPU writes.
    unsafe { core::ptr::write_volatile(gpa as *mut u64, v) }
}

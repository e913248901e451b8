//! Port I/O and the time-stamp counter (the guest runs with IOPL 3, so `in`/`out` work at CPL3).

use vpm_abi::harness::{GuestExit, CONTROL_PORT, PROGRESS_PORT};

/// Writes one byte to an I/O port (a VM exit).
pub fn outb(port: u16, value: u8) {
    // SAFETY: port I/O has no memory effects in the guest; the VMM handles the exit.
    unsafe { core::arch::asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags)) }
}

/// Reads one byte from an I/O port.
pub fn inb(port: u16) -> u8 {
    let v: u8;
    // SAFETY: as for `outb`.
    unsafe { core::arch::asm!("in al, dx", out("al") v, in("dx") port, options(nomem, nostack, preserves_flags)) };
    v
}

/// Reads the time-stamp counter.
pub fn rdtsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc only reads the counter (CR4.TSD is clear).
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack, preserves_flags)) };
    (hi as u64) << 32 | lo as u64
}

/// Tells the VMM the guest made progress (lets it sample and stop a running workload).
pub fn progress() {
    outb(PROGRESS_PORT, 0);
}

/// Marks the start or end of the timed window (`vpm_abi::harness::WINDOW_START` or `WINDOW_END`).
/// Unlike [`outb`], the compiler may not move memory accesses across it: the report's `ops`,
/// written just before, is what the VMM reads at this exit.
pub fn window_mark(code: u8) {
    // SAFETY: port I/O; the VMM reads the report page on this exit and changes nothing.
    unsafe { core::arch::asm!("out dx, al", in("dx") PROGRESS_PORT, in("al") code, options(nostack, preserves_flags)) }
}

/// Stops the guest: the VMM ends the VM on this write.
pub fn exit(code: GuestExit) -> ! {
    loop {
        outb(CONTROL_PORT, code as u8);
    }
}

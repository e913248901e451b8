//! The VPM test guest. The VMM loads it at 1 MiB, sets up identity page tables (user-accessible,
//! so it runs at CPL3, which is native speed on PVM hosts and works on VMX), points RSP at the
//! stack and enters `_start`. It reads its boot parameters, runs one workload against vPM, writes
//! its report and tells the VMM through the control port. With `--vcpus N` every vCPU enters
//! `_start` (see `smp`).
#![no_std]
#![no_main]

mod hints;
mod hostile;
mod io;
mod report;
mod smp;
mod vpm;
mod workloads;

use vpm_abi::harness::{BootParams, GuestExit, Workload, BOOT_MAGIC, BOOT_PARAMS_GPA};

#[no_mangle]
#[link_section = ".text.start"]
extern "C" fn _start(index: u64, count: u64) -> ! {
    // Every vCPU enters here: RDI is its index, RSI the vCPU count (see `smp`).
    let cpu = smp::Cpu::new(index, count);
    // SAFETY: the VMM writes the boot parameters at this identity-mapped address before entry.
    let params: BootParams = unsafe { core::ptr::read_volatile(BOOT_PARAMS_GPA as *const BootParams) };
    if cpu.index == 0 {
        report::start();
        smp::started(cpu.count);
    } else {
        smp::wait_started();
    }
    if params.magic != BOOT_MAGIC {
        report::fail("bad boot parameters");
    }
    match Workload::from_code(params.workload) {
        Some(w) => workloads::run(w, &params, cpu),
        None => report::fail("unknown workload"),
    }
    if cpu.index != 0 {
        smp::finish_ap();
    }
    smp::wait_aps(cpu.count);
    report::finish();
    io::exit(GuestExit::Done)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut msg = report::Message::new();
    let _ = core::fmt::write(&mut msg, format_args!("panic: {}", info.message()));
    report::fail_with(&msg)
}

//! The vCPUs: 64-bit long mode at CPL3 (native speed on PVM hosts, and fine on VMX), entering the
//! test guest with identity paging, IOPL 3 for port I/O, and interrupts enabled. KVM lets the VMM
//! set every vCPU's registers, so application processors need no INIT/SIPI: each enters at the
//! same entry point with its index in RDI, the vCPU count in RSI and a stack of its own (there is
//! no in-kernel irqchip, so every vCPU is runnable from the start).

use kvm_bindings::{kvm_regs, kvm_segment, CpuId};
use kvm_ioctls::{VcpuFd, VmFd};

use vpm_abi::harness::vcpu_stack_top;

use super::guest_map::PML4_GPA;
use super::VmmError;

const CR0_PE_MP_ET_NE_WP_PG: u64 = 0x8005_0033;
const CR4_PAE: u64 = 0x20;
const EFER_LME_LMA: u64 = 0x500;
/// IF, IOPL 3, and the always-one bit 1.
const RFLAGS: u64 = 0x3202;

fn kvm_err(what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VmmError {
    move |source| VmmError::Vcpu { what, source }
}

/// Creates vCPU `index` of `count` ready to enter the guest at `entry`. CPUID is set before
/// EFER.LME (KVM needs the LM bit), and all state is set before the first KVM_RUN (PVM fixes CPL
/// then).
pub fn create(
    vm: &VmFd,
    cpuid: &CpuId,
    entry: u64,
    index: u32,
    count: u32,
) -> Result<VcpuFd, VmmError> {
    let vcpu = vm
        .create_vcpu(u64::from(index))
        .map_err(kvm_err("KVM_CREATE_VCPU"))?;
    vcpu.set_cpuid2(cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    let mut sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let code = kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x33,
        type_: 11,
        present: 1,
        dpl: 3,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_segment {
        selector: 0x2b,
        type_: 3,
        l: 0,
        db: 1,
        ..code
    };
    sregs.cs = code;
    sregs.ss = data;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.cr3 = PML4_GPA;
    sregs.cr4 = CR4_PAE;
    sregs.cr0 = CR0_PE_MP_ET_NE_WP_PG;
    sregs.efer = EFER_LME_LMA;
    vcpu.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    let regs = kvm_regs {
        rip: entry,
        // As after a call: the SysV entry alignment the guest's `_start` expects.
        rsp: vcpu_stack_top(index) - 8,
        rdi: u64::from(index),
        rsi: u64::from(count),
        rflags: RFLAGS,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
    Ok(vcpu)
}

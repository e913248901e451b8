//! The VMM's error type: every variant says what was being done and keeps the OS, KVM, memory or
//! pool error that stopped it as its source. The message repeats the source's text, as the
//! messages did before (callers print only the top error).

use std::io;
use std::path::PathBuf;

use crate::pool::PoolError;

use super::memory::MemoryError;

/// Errors of the VMM (KVM VMs and QEMU guests).
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// /dev/kvm is missing.
    #[error(
        "/dev/kvm does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm, or \
         run on a host with hardware virtualization)"
    )]
    NoKvm(#[source] kvm_ioctls::Error),
    /// /dev/kvm exists but may not be opened.
    #[error("permission denied on /dev/kvm: run as root or join the kvm group")]
    KvmDenied(#[source] kvm_ioctls::Error),
    /// Opening /dev/kvm failed otherwise.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("KVM_CREATE_VM: {0}")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// KVM_GET_SUPPORTED_CPUID failed.
    #[error("KVM_GET_SUPPORTED_CPUID: {0}")]
    SupportedCpuid(#[source] kvm_ioctls::Error),
    /// Adding or removing a memslot failed.
    #[error("KVM_SET_USER_MEMORY_REGION slot {slot}: {source}")]
    SetMemslot {
        /// The slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Enabling manual dirty-log protection failed.
    #[error("enable manual dirty-log protection: {0}")]
    EnableDirtyLog(#[source] kvm_ioctls::Error),
    /// Reading the dirty log failed.
    #[error("KVM_GET_DIRTY_LOG slot {slot}: {source}")]
    GetDirtyLog {
        /// The slot.
        slot: u32,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Clearing (re-protecting) dirty pages failed.
    #[error("KVM_CLEAR_DIRTY_LOG slot {slot}: {source}")]
    ClearDirtyLog {
        /// The slot.
        slot: u32,
        /// The ioctl's error.
        #[source]
        source: io::Error,
    },
    /// Creating or setting up vCPU 0 failed.
    #[error("vCPU setup: {what}: {source}")]
    Vcpu {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// KVM_RUN failed.
    #[error("KVM_RUN: {0}")]
    Run(#[source] kvm_ioctls::Error),
    /// The guest stopped with an exit the VMM does not serve.
    #[error("unexpected vCPU exit {exit} (address {addr:#x})")]
    UnexpectedExit {
        /// The kind of exit.
        exit: &'static str,
        /// The address it concerned, 0 where none.
        addr: u64,
    },
    /// Creating the RING doorbell's eventfd failed.
    #[error("create the ring doorbell's eventfd: {0}")]
    EventFd(#[source] io::Error),
    /// Registering the RING doorbell's ioeventfd failed.
    #[error("KVM_IOEVENTFD for the ring doorbell: {0}")]
    RegisterIoEvent(#[source] kvm_ioctls::Error),
    /// Installing the vCPU kick signal's handler failed.
    #[error("install the vCPU kick signal handler: {0}")]
    KickHandler(#[source] vmm_sys_util::errno::Error),
    /// Starting a thread failed.
    #[error("spawn the {thread} thread: {source}")]
    SpawnThread {
        /// Which thread.
        thread: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A VMM thread panicked.
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// Allocating guest RAM failed.
    #[error("allocate guest RAM: {0}")]
    GuestRam(#[source] vm_memory::mmap::FromRangesError),
    /// Loading the test guest's ELF image failed.
    #[error("load the test guest: {0}")]
    LoadGuest(#[source] linux_loader::loader::Error),
    /// Accessing guest RAM failed.
    #[error("guest RAM: {what}: {source}")]
    GuestMemory {
        /// What was being read or written.
        what: &'static str,
        /// The guest-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// The tenant's vPM does not fit the guest-physical window.
    #[error("vPM of {size} bytes exceeds {max}")]
    VpmTooLarge {
        /// vPM bytes.
        size: u64,
        /// The window's size.
        max: u64,
    },
    /// An epoch's changes do not fit the tenant's redo log.
    #[error("epoch needs {need} bytes of redo log, the tenant has {have}")]
    EpochLogFull {
        /// Bytes needed.
        need: u64,
        /// The log's size.
        have: u64,
    },
    /// Opening a crash-test witness file failed.
    #[error("witness {}: {source}", path.display())]
    Witness {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The vPM mapping failed.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The pool failed.
    #[error(transparent)]
    Pool(#[from] PoolError),
    /// Creating, sizing or mapping a QEMU guest's RAM file failed.
    #[error("QEMU guest RAM file {}: {source}", path.display())]
    QemuRamFile {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A QEMU guest's vPM does not fit its RAM.
    #[error("vPM ends at {vpm_end:#x}, past the guest's {ram:#x} bytes of RAM")]
    VpmOutsideGuestRam {
        /// One past vPM's last byte (guest-physical).
        vpm_end: u64,
        /// Guest RAM bytes.
        ram: u64,
    },
    /// Binding or accepting on the QEMU doorbell socket failed.
    #[error("doorbell socket {}: {source}", path.display())]
    DoorbellSocket {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// QEMU could not be started.
    #[error("cannot start qemu-system-x86_64 ({0}); tests/setup/install-deps.sh installs it")]
    StartQemu(#[source] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn variants_keep_their_source_and_say_what_was_done() {
        let e = VmmError::SetMemslot {
            slot: 1,
            source: kvm_ioctls::Error::new(libc::EINVAL),
        };
        assert!(e
            .to_string()
            .starts_with("KVM_SET_USER_MEMORY_REGION slot 1: "));
        assert!(e.source().is_some());
        let e = VmmError::Witness {
            path: "/nonexistent/w".into(),
            source: io::Error::from_raw_os_error(libc::ENOENT),
        };
        assert!(e.to_string().starts_with("witness /nonexistent/w: "));
        assert!(e.source().is_some());
    }
}

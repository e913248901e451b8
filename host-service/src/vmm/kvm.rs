//! KVM plumbing: opening /dev/kvm with clear errors, the cached supported CPUID, memslots, and
//! the manual-protect dirty log (kvm-ioctls has no KVM_CLEAR_DIRTY_LOG wrapper).

use std::sync::OnceLock;

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
    kvm_userspace_memory_region, CpuId, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;

use super::VmmError;

#[allow(missing_docs)]
mod ioctls {
    use kvm_bindings::{kvm_clear_dirty_log, KVMIO};
    vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
}
use ioctls::KVM_CLEAR_DIRTY_LOG;

/// Opens /dev/kvm, turning the usual failures into messages that say what to do.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| {
        let why = match e.errno() {
            libc::ENOENT => "/dev/kvm does not exist: this host has no KVM (load kvm_intel, kvm_amd or kvm_pvm, or run on a host with hardware virtualization)".to_string(),
            libc::EACCES | libc::EPERM => "permission denied on /dev/kvm: run as root or join the kvm group".to_string(),
            _ => format!("cannot open /dev/kvm: {e}"),
        };
        VmmError::Kvm(why)
    })
}

/// The host's supported CPUID, read once per process (it costs ~350 µs on PVM).
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VmmError> {
    static CPUID: OnceLock<CpuId> = OnceLock::new();
    if let Some(c) = CPUID.get() {
        return Ok(c.clone());
    }
    let c = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|e| VmmError::Kvm(format!("KVM_GET_SUPPORTED_CPUID: {e}")))?;
    Ok(CPUID.get_or_init(|| c).clone())
}

/// Registers a memslot.
pub fn add_slot(
    vm: &VmFd,
    slot: u32,
    gpa: u64,
    size: u64,
    host: *mut u8,
    log_dirty: bool,
) -> Result<(), VmmError> {
    let region = kvm_userspace_memory_region {
        slot,
        flags: if log_dirty {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` maps `size` bytes that stay mapped for the VM's lifetime (the VM owns them).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| VmmError::Kvm(format!("KVM_SET_USER_MEMORY_REGION slot {slot}: {e}")))
}

/// Estimated cost of one write-protection fault on this host (µs): PVM (nested, shadow paging)
/// pays a guest exit, ~20 µs (notes/kvm-poc.md §3); hardware virtualization a few µs.
pub fn protection_fault_us() -> f64 {
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        20.0
    } else {
        2.0
    }
}

/// The dirty log of one memslot, with manual protection: reading it does not re-protect; the
/// pages read are re-protected by an explicit clear, while the vCPUs are paused.
pub struct DirtyLog {
    slot: u32,
    size: u64,
}

impl DirtyLog {
    /// Enables manual-protect dirty logging on the VM (before the slot is added).
    pub fn enable(vm: &VmFd, slot: u32, size: u64) -> Result<DirtyLog, VmmError> {
        let cap = kvm_enable_cap {
            cap: KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
            args: [1, 0, 0, 0],
            ..Default::default()
        };
        vm.enable_cap(&cap)
            .map_err(|e| VmmError::Kvm(format!("enable manual dirty-log protection: {e}")))?;
        Ok(DirtyLog { slot, size })
    }

    /// Page numbers KVM saw written since they were last protected (pages left writable are
    /// listed every time). Protects nothing: see [`DirtyLog::protect`].
    pub fn collect(&self, vm: &VmFd) -> Result<Vec<u64>, VmmError> {
        let bitmap = vm
            .get_dirty_log(self.slot, self.size as usize)
            .map_err(|e| VmmError::Kvm(format!("KVM_GET_DIRTY_LOG: {e}")))?;
        let mut pages = Vec::new();
        for (w, &word) in bitmap.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                pages.push(w as u64 * 64 + bits.trailing_zeros() as u64);
                bits &= bits - 1;
            }
        }
        Ok(pages)
    }

    /// Clears the dirty bits of `pages` and write-protects them again (one ioctl).
    pub fn protect(&self, vm: &VmFd, pages: &[u64]) -> Result<(), VmmError> {
        if pages.is_empty() {
            return Ok(());
        }
        let npages = self.size / 4096;
        let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
        for &vpn in pages.iter().filter(|&&v| v < npages) {
            bitmap[(vpn / 64) as usize] |= 1 << (vpn % 64);
        }
        let clear = kvm_clear_dirty_log {
            slot: self.slot,
            num_pages: npages as u32,
            first_page: 0,
            __bindgen_anon_1: kvm_clear_dirty_log__bindgen_ty_1 {
                dirty_bitmap: bitmap.as_mut_ptr() as *mut libc::c_void,
            },
        };
        // SAFETY: the bitmap covers the whole slot and outlives the call; the struct matches the
        // ioctl's layout (kvm-bindings).
        let rc = unsafe { ioctl_with_ref(vm, KVM_CLEAR_DIRTY_LOG(), &clear) };
        if rc < 0 {
            return Err(VmmError::Kvm(format!(
                "KVM_CLEAR_DIRTY_LOG: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

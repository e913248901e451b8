//! KVM plumbing: opening /dev/kvm with clear errors, the cached supported CPUID, memslots as
//! owned values ([`Memslot`]), and the manual-protect dirty log (kvm-ioctls has no
//! KVM_CLEAR_DIRTY_LOG wrapper).

use std::sync::{Arc, OnceLock};

use kvm_bindings::{
    kvm_clear_dirty_log, kvm_clear_dirty_log__bindgen_ty_1, kvm_enable_cap,
    kvm_userspace_memory_region, CpuId, KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES,
};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::ioctl::ioctl_with_ref;
use vpm_abi::PAGE_SIZE;

use super::VmmError;

#[allow(missing_docs)]
mod ioctls {
    use kvm_bindings::{kvm_clear_dirty_log, KVMIO};
    vmm_sys_util::ioctl_iowr_nr!(KVM_CLEAR_DIRTY_LOG, KVMIO, 0xc0, kvm_clear_dirty_log);
}
use ioctls::KVM_CLEAR_DIRTY_LOG;

/// Opens /dev/kvm, turning the usual failures into errors that say what to do.
pub fn open_kvm() -> Result<Kvm, VmmError> {
    Kvm::new().map_err(|e| match e.errno() {
        libc::ENOENT => VmmError::NoKvm(e),
        libc::EACCES | libc::EPERM => VmmError::KvmDenied(e),
        _ => VmmError::OpenKvm(e),
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
        .map_err(VmmError::SupportedCpuid)?;
    Ok(CPUID.get_or_init(|| c).clone())
}

/// One registered memslot: added by [`Memslot::add`], removed (size 0) when dropped. Holds the
/// VM fd, so the slot can always be removed from the VM it was added to.
pub struct Memslot {
    vm: Arc<VmFd>,
    region: kvm_userspace_memory_region,
}

impl Memslot {
    /// Maps `size` bytes of host memory at `host` into the guest at `gpa` as slot `slot`, with
    /// KVM's dirty log if `log_dirty`.
    ///
    /// # Safety
    /// `[host, host + size)` must be a mapping of this process that stays mapped until the
    /// returned `Memslot` is dropped (KVM reads and writes it for the guest meanwhile).
    pub unsafe fn add(
        vm: &Arc<VmFd>,
        slot: u32,
        gpa: u64,
        size: u64,
        host: *mut u8,
        log_dirty: bool,
    ) -> Result<Memslot, VmmError> {
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
        // SAFETY: the caller guarantees `host` maps `size` bytes until this slot is dropped, and
        // Drop removes the slot before that.
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|source| VmmError::SetMemslot { slot, source })?;
        Ok(Memslot {
            vm: vm.clone(),
            region,
        })
    }

    /// The slot number.
    pub fn slot(&self) -> u32 {
        self.region.slot
    }
}

impl Drop for Memslot {
    fn drop(&mut self) {
        let region = kvm_userspace_memory_region {
            memory_size: 0,
            ..self.region
        };
        // SAFETY: a zero-sized region deletes the slot: KVM stops mapping the host memory and
        // touches no memory of this process for it afterwards.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            tracing::warn!(slot = region.slot, error = %e, "removing a memslot failed");
        }
    }
}

/// Estimated cost of one write-protection fault on this host (µs): PVM (nested, shadow paging)
/// pays a guest exit, ~20 µs (docs/costs.md); hardware virtualization a few µs.
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
        vm.enable_cap(&cap).map_err(VmmError::EnableDirtyLog)?;
        Ok(DirtyLog { slot, size })
    }

    /// Page numbers KVM saw written since they were last protected (pages left writable are
    /// listed every time). Protects nothing: see [`DirtyLog::protect`].
    pub fn collect(&self, vm: &VmFd) -> Result<Vec<u64>, VmmError> {
        let bitmap = vm
            .get_dirty_log(self.slot, self.size as usize)
            .map_err(|source| VmmError::GetDirtyLog {
                slot: self.slot,
                source,
            })?;
        Ok(pages_of_bitmap(&bitmap))
    }

    /// Clears the dirty bits of `pages` and write-protects them again (one ioctl).
    pub fn protect(&self, vm: &VmFd, pages: &[u64]) -> Result<(), VmmError> {
        if pages.is_empty() {
            return Ok(());
        }
        let npages = self.size / PAGE_SIZE;
        let mut bitmap = bitmap_of_pages(npages, pages);
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
            return Err(VmmError::ClearDirtyLog {
                slot: self.slot,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

/// The page numbers whose bits are set, ascending.
fn pages_of_bitmap(bitmap: &[u64]) -> Vec<u64> {
    let mut pages = Vec::new();
    for (w, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            pages.push(w as u64 * 64 + bits.trailing_zeros() as u64);
            bits &= bits - 1;
        }
    }
    pages
}

/// A bitmap of `npages` bits with the bits of `pages` set (pages past the end are ignored).
fn bitmap_of_pages(npages: u64, pages: &[u64]) -> Vec<u64> {
    let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
    for &vpn in pages.iter().filter(|&&v| v < npages) {
        bitmap[(vpn / 64) as usize] |= 1 << (vpn % 64);
    }
    bitmap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_memslot_is_removed_from_the_vm() {
        use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
        let Ok(kvm) = open_kvm() else {
            eprintln!("no usable /dev/kvm: skipped");
            return;
        };
        let vm = Arc::new(kvm.create_vm().unwrap());
        let size = 4 * PAGE_SIZE;
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let host = ram.get_host_address(GuestAddress(0)).unwrap();
        // SAFETY: `ram` outlives both slots (dropped at the end of the test, after them).
        let slot = unsafe { Memslot::add(&vm, 3, 0, size, host, false) }.unwrap();
        // KVM refuses to resize a live slot: the same slot at another size fails while it exists.
        // SAFETY: as above.
        let resized = unsafe { Memslot::add(&vm, 3, 0, size / 2, host, false) };
        assert!(matches!(resized, Err(VmmError::SetMemslot { slot: 3, .. })));
        drop(slot);
        // SAFETY: as above.
        let again = unsafe { Memslot::add(&vm, 3, 0, size / 2, host, false) }.unwrap();
        assert_eq!(again.slot(), 3);
    }

    #[test]
    fn bitmaps_round_trip_and_ignore_pages_past_the_slot() {
        let b = bitmap_of_pages(130, &[0, 63, 64, 129, 500]);
        assert_eq!(b.len(), 3);
        assert_eq!(pages_of_bitmap(&b), vec![0, 63, 64, 129]);
    }
}

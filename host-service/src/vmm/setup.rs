//! Building a VM: KVM VM and vCPU, guest RAM with the test guest, boot parameters and page
//! tables, the vPM mapping (tiered or direct onto the pool's homes), memslots and dirty log.

use std::io::Cursor;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use kvm_ioctls::VcpuFd;
use linux_loader::loader::{elf::Elf, KernelLoader};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vpm_abi::harness::{FLAG_COUNT_STORES, MAX_VCPUS};
use vpm_abi::PAGE_SIZE;

use super::context::{VmContext, VpmState};
use super::guest_map::{self, GUEST_RAM_SIZE, VPM_BASE_GPA, VPM_MAX_SIZE};
use super::hints::HintService;
use super::kvm::{self, DirtyLog, Memslot};
use super::memory::VpmMemory;
use super::pause::{self, PauseGate};
use super::spec::VmSpec;
use super::staging::Staging;
use super::stats::VmStats;
use super::store_counts::StoreCounts;
use super::vcpu;
use super::witness::Witnesses;
use super::writable::WritableSet;
use super::VmmError;
use crate::pool::Home;
use crate::pool::Pool;
use crate::tier::PagePlacements;

/// The test guest, built by `build.rs` from `tests/guest`.
pub static TEST_GUEST_ELF: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/vpm-test-guest"));

/// Guest RAM's memslot.
const RAM_SLOT: u32 = 0;
/// vPM's memslot.
const VPM_SLOT: u32 = 1;

/// Builds the VM for `spec` on `pool`'s tenant `tenant`: its context, and its vCPUs (vCPU 0
/// first) ready to run.
pub fn build_vm(
    spec: &VmSpec,
    pool: Arc<Mutex<Pool>>,
    tenant: u32,
) -> Result<(Arc<VmContext>, Vec<VcpuFd>), VmmError> {
    pause::install_kick_handler().map_err(VmmError::KickHandler)?;
    let kvm = kvm::open_kvm()?;
    let vm = Arc::new(kvm.create_vm().map_err(VmmError::CreateVm)?);
    let (pages, budget) = {
        let p = pool.lock().expect("pool");
        let t = p.tenant(tenant)?;
        (t.pages(), spec.dram_budget_bytes / PAGE_SIZE)
    };
    let vpm_size = pages * PAGE_SIZE;
    if vpm_size > VPM_MAX_SIZE {
        return Err(VmmError::VpmTooLarge {
            size: vpm_size,
            max: VPM_MAX_SIZE,
        });
    }
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), GUEST_RAM_SIZE as usize)])
        .map_err(VmmError::GuestRam)?;
    let entry = load_guest(&ram)?;
    guest_map::write_page_tables(&ram).map_err(|source| VmmError::GuestMemory {
        what: "write the page tables",
        source,
    })?;
    let mut params = spec.params;
    params.vpm_base = VPM_BASE_GPA;
    params.vpm_size = vpm_size;
    guest_map::write_boot_params(&ram, params).map_err(|source| VmmError::GuestMemory {
        what: "write the boot parameters",
        source,
    })?;

    let memory = build_vpm(spec, &pool, tenant, vpm_size)?;
    let ram_host =
        ram.get_host_address(GuestAddress(0))
            .map_err(|source| VmmError::GuestMemory {
                what: "find guest RAM's host address",
                source,
            })?;
    // SAFETY: guest RAM stays mapped until `ram` drops, which VmContext orders after this slot.
    let ram_slot = unsafe { Memslot::add(&vm, RAM_SLOT, 0, GUEST_RAM_SIZE, ram_host, false)? };
    let dirty = if spec.mode.tiered() {
        Some(DirtyLog::enable(&vm, VPM_SLOT, vpm_size)?)
    } else {
        None
    };
    // SAFETY: the vPM mapping stays mapped until `memory` drops (inside VmContext's `state`),
    // which VmContext orders after this slot.
    let vpm_slot = unsafe {
        Memslot::add(
            &vm,
            VPM_SLOT,
            VPM_BASE_GPA,
            vpm_size,
            memory.host_base(),
            dirty.is_some(),
        )?
    };
    let cpuid = kvm::supported_cpuid(&kvm)?;
    let vcpus = spec.vcpus.clamp(1, MAX_VCPUS);
    let vcpu_fds = (0..vcpus)
        .map(|i| vcpu::create(&vm, &cpuid, entry, i, vcpus))
        .collect::<Result<Vec<_>, _>>()?;

    let witnesses =
        Witnesses::open(spec.witness.as_deref(), spec.epoch_witness.as_deref())?.for_vcpus(vcpus);
    // Direct modes map every page to its home: "PM" throughout, no DRAM.
    let placements = PagePlacements::new(pages, if spec.mode.tiered() { budget } else { 0 });
    let context = Arc::new(VmContext {
        hints: Mutex::new(HintService::with_rings(
            VPM_BASE_GPA,
            vpm_size,
            vcpus as usize,
        )),
        precopy: (spec.precopy() && dirty.is_some()).then(|| Mutex::new(Staging::new(pages))),
        dirty,
        memslots: vec![ram_slot, vpm_slot],
        vm,
        mode: spec.mode,
        tenant,
        pool,
        stats: Mutex::new(VmStats {
            dram_budget_pages: budget,
            pm_pages: pages,
            ..VmStats::default()
        }),
        features: spec.hint_features(),
        pause: PauseGate::with_spinners(vcpus, pause_spinners(vcpus)),
        vcpus,
        stop: AtomicBool::new(false),
        witnesses,
        state: Mutex::new(VpmState {
            memory,
            placements,
            writable: WritableSet::new(pages, kvm::protection_fault_us()),
            store_counts: (spec.mode.tiered() && spec.params.flags & FLAG_COUNT_STORES != 0)
                .then(|| StoreCounts::new(pages)),
        }),
        ram,
    });
    Ok((context, vcpu_fds))
}

/// Loads the test guest into guest RAM; returns its entry point.
fn load_guest(ram: &GuestMemoryMmap) -> Result<u64, VmmError> {
    let mut image = Cursor::new(TEST_GUEST_ELF);
    let loaded = Elf::load(ram, None, &mut image, None).map_err(VmmError::LoadGuest)?;
    Ok(loaded.kernel_load.0)
}

/// The vPM mapping: tiered (every page in the PM tier, filled from the pool's durable image) or
/// direct (every page mapped onto its home in the pool).
fn build_vpm(
    spec: &VmSpec,
    pool: &Arc<Mutex<Pool>>,
    tenant: u32,
    size: u64,
) -> Result<VpmMemory, VmmError> {
    let mut p = pool.lock().expect("pool");
    if spec.mode.tiered() {
        let work = spec.work_dir.join(format!("{}.work", spec.name));
        let mut err = None;
        let mem = VpmMemory::tiered(&spec.name, size as usize, &work, |vpn, page| {
            if let Err(e) = p.read_home(tenant, vpn, page) {
                err.get_or_insert(e);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        Ok(mem)
    } else {
        let homes = p.ensure_homes(tenant)?;
        let mapped: Vec<(i32, u64)> = homes
            .iter()
            .map(|&h| match h {
                Home::Pm(_) | Home::Capacity(_) => p.home_fd_offset(h).expect("home with a file"),
                _ => unreachable!("ensure_homes gives every page a home"),
            })
            .collect();
        Ok(VpmMemory::direct(&mapped)?)
    }
}

/// vCPU threads that spin and help when parked: one per host core besides the controller's, at
/// most one per vCPU (a spinner on a core the controller needs would slow the pause down).
fn pause_spinners(vcpus: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    vcpus.min(cores.saturating_sub(1))
}

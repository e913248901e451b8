//! The guest-physical map of a VPM test VM: where RAM, the boot parameters, the report, the page
//! tables and vPM lie, the identity page tables its CPL3 code runs on, and typed access to the
//! VMM-owned pages.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};
use vpm_abi::harness::{BootParams, GuestReport};
use vpm_abi::PAGE_SIZE;

pub use vpm_abi::harness::{
    BOOT_PARAMS_GPA, GUEST_RAM_SIZE, GUEST_STACK_TOP, REPORT_GPA, SHARED_PAGE_GPA, VPM_BASE_GPA,
    VPM_MAX_SIZE,
};

/// PML4 page.
pub const PML4_GPA: u64 = 0x1000;
/// PDPT page.
pub const PDPT_GPA: u64 = 0x2000;
/// First of four page directories (2 MiB pages over 4 GiB).
pub const PD_GPA: u64 = 0x3000;
/// Lowest guest-physical address the guest may register as its shared page (below lie the page
/// tables and the boot data).
pub const SHARED_PAGE_MIN_GPA: u64 = 0x10_0000;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;

/// Writes identity page tables for the first 4 GiB: user-accessible (CPL3), A/D preset so the
/// CPU never writes them (they would show up in the dirty log).
pub fn write_page_tables(ram: &GuestMemoryMmap) -> Result<(), GuestMemoryError> {
    let table = PRESENT | WRITABLE | USER | ACCESSED;
    ram.write_obj(PDPT_GPA | table, GuestAddress(PML4_GPA))?;
    for i in 0..4u64 {
        ram.write_obj(
            (PD_GPA + i * PAGE_SIZE) | table,
            GuestAddress(PDPT_GPA + i * 8),
        )?;
    }
    for j in 0..2048u64 {
        let leaf = (j << 21) | table | DIRTY | HUGE;
        ram.write_obj(leaf, GuestAddress(PD_GPA + j * 8))?;
    }
    Ok(())
}

/// Whether `gpa` may be registered as the shared hint page: page-aligned, in guest RAM, and not
/// one of the pages the VMM owns (page tables, boot parameters, report).
pub fn valid_shared_page(gpa: u64) -> bool {
    gpa % PAGE_SIZE == 0
        && gpa >= SHARED_PAGE_MIN_GPA
        && gpa
            .checked_add(PAGE_SIZE)
            .is_some_and(|end| end <= GUEST_RAM_SIZE)
        && gpa != BOOT_PARAMS_GPA
        && gpa != REPORT_GPA
}

/// `BootParams` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct BootParamsBytes(BootParams);
// SAFETY: BootParams is repr(C) plain data of u64/u32 fields without padding holes that matter
// (any byte pattern is a valid value).
unsafe impl vm_memory::ByteValued for BootParamsBytes {}

/// `GuestReport` as guest-memory bytes.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct ReportBytes(GuestReport);
// SAFETY: GuestReport is repr(C) plain data (integers and a byte array); any bytes are valid.
unsafe impl vm_memory::ByteValued for ReportBytes {}
impl Default for ReportBytes {
    fn default() -> Self {
        // SAFETY: all-zero bytes are a valid GuestReport (see above).
        ReportBytes(unsafe { std::mem::zeroed() })
    }
}

/// Writes the guest's boot parameters to their page.
pub fn write_boot_params(
    ram: &GuestMemoryMmap,
    params: BootParams,
) -> Result<(), GuestMemoryError> {
    ram.write_obj(BootParamsBytes(params), GuestAddress(BOOT_PARAMS_GPA))
}

/// Reads the guest's report page.
pub fn read_report(ram: &GuestMemoryMmap) -> Result<GuestReport, GuestMemoryError> {
    let ReportBytes(report) = ram.read_obj(GuestAddress(REPORT_GPA))?;
    Ok(report)
}

/// Reads value `index` of the guest's report (one word, as the guest last wrote it).
pub fn read_report_value(ram: &GuestMemoryMmap, index: u64) -> Result<u64, GuestMemoryError> {
    let off = std::mem::offset_of!(GuestReport, values) as u64 + 8 * index;
    ram.read_obj::<u64>(GuestAddress(REPORT_GPA + off))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_page_must_be_aligned_in_ram_and_not_vmm_owned() {
        assert!(valid_shared_page(SHARED_PAGE_GPA));
        assert!(!valid_shared_page(SHARED_PAGE_MIN_GPA + 8));
        assert!(!valid_shared_page(PML4_GPA));
        assert!(!valid_shared_page(GUEST_RAM_SIZE));
        assert!(!valid_shared_page(u64::MAX - PAGE_SIZE + 1));
        assert!(!valid_shared_page(BOOT_PARAMS_GPA));
        assert!(!valid_shared_page(REPORT_GPA));
    }
}

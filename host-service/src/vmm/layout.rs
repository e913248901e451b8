//! Guest-physical layout of a VPM test VM and the identity page tables its CPL3 code runs on.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

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

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const ACCESSED: u64 = 1 << 5;
const DIRTY: u64 = 1 << 6;
const HUGE: u64 = 1 << 7;

/// Writes identity page tables for the first 4 GiB: user-accessible (CPL3), A/D preset so the
/// CPU never writes them (they would show up in the dirty log).
pub fn write_page_tables(ram: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    let table = PRESENT | WRITABLE | USER | ACCESSED;
    ram.write_obj(PDPT_GPA | table, GuestAddress(PML4_GPA))?;
    for i in 0..4u64 {
        ram.write_obj(
            (PD_GPA + i * 0x1000) | table,
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
    gpa % 4096 == 0
        && gpa >= 0x10_0000
        && gpa
            .checked_add(4096)
            .is_some_and(|end| end <= GUEST_RAM_SIZE)
        && gpa != BOOT_PARAMS_GPA
        && gpa != REPORT_GPA
}

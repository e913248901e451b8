//! The contract between the VPM test guest and the VMM that runs it (not part of the hint
//! protocol): where the boot parameters and the report live in guest memory, the workload codes,
//! and the control port the guest writes when it stops.

/// Guest-physical address of the [`BootParams`] page.
pub const BOOT_PARAMS_GPA: u64 = 0x0090_0000;
/// Guest-physical address of the [`GuestReport`] page.
pub const REPORT_GPA: u64 = 0x0091_0000;
/// Guest-physical address of the shared hint page the guest registers.
pub const SHARED_PAGE_GPA: u64 = 0x0092_0000;
/// Guest-physical address the guest's ELF is linked at.
pub const GUEST_LOAD_GPA: u64 = 0x0010_0000;
/// Top of the guest's stack.
pub const GUEST_STACK_TOP: u64 = 0x0080_0000;
/// Most vCPUs a test VM has (`vpm guest --vcpus`).
pub const MAX_VCPUS: u32 = 8;
/// Stack bytes of each vCPU: vCPU `i`'s stack top is [`vcpu_stack_top`]`(i)`, below the
/// bootstrap vCPU's at [`GUEST_STACK_TOP`].
pub const VCPU_STACK_SIZE: u64 = 0x4_0000;

/// Top of vCPU `index`'s stack (vCPU 0's is [`GUEST_STACK_TOP`]). The VMM enters every vCPU at
/// the same entry point with its index in RDI, the vCPU count in RSI and RSP just below this.
pub const fn vcpu_stack_top(index: u32) -> u64 {
    GUEST_STACK_TOP - index as u64 * VCPU_STACK_SIZE
}
/// The shared hint page vCPU `index` registers: one page each from [`SHARED_PAGE_GPA`], so every
/// vCPU has its own ring and producers never share a cache line.
pub const fn shared_page_gpa(index: u32) -> u64 {
    SHARED_PAGE_GPA + index as u64 * crate::PAGE_SIZE
}

/// Size of guest RAM (slot 0).
pub const GUEST_RAM_SIZE: u64 = 16 << 20;
/// Guest-physical base of the vPM region (slot 1).
pub const VPM_BASE_GPA: u64 = 0x4000_0000;
/// Largest vPM the test guest's page tables map (the identity map covers 4 GiB).
pub const VPM_MAX_SIZE: u64 = 3 << 30;

/// I/O port the guest writes (one byte, a [`GuestExit`] code) when it stops.
pub const CONTROL_PORT: u16 = 0x0f58;
/// I/O port the guest writes to tell the host about progress (one byte, ignored); the host uses
/// these exits to sample the guest's state.
pub const PROGRESS_PORT: u16 = 0x0f59;

/// Byte the guest writes to [`PROGRESS_PORT`] when its timed window starts: a throughput
/// workload first touches every vPM page and runs a fifth of its operations (warm-up), sets the
/// report's `ops` to the operations done so far, then writes this. The VMM timestamps the exit
/// and reads `ops`.
pub const WINDOW_START: u8 = 0x57;
/// Byte the guest writes to [`PROGRESS_PORT`] when its timed window ends (after setting `ops` to
/// its total): the VMM reports operations per second between the two marks.
pub const WINDOW_END: u8 = 0x45;

/// `"VPMBOOT1"` as a little-endian u64.
pub const BOOT_MAGIC: u64 = u64::from_le_bytes(*b"VPMBOOT1");

/// Workloads of the test guest.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Fill vPM with a seeded pattern, then verify every page's checksum for `arg[0]` rounds,
    /// rewriting `arg[1]` pages per round (the host migrates pages meanwhile).
    Checksum = 1,
    /// Append sequence-numbered 64-byte records forever (or `arg[0]` records if non-zero); in PV
    /// mode persist every record (flush) and drain every `arg[1]` records.
    SeqWriter = 2,
    /// Check a recovered sequence-numbered image: the report's `values[0]` is the last sequence,
    /// `errors` counts records that break the point-in-time (F1) or persisted-prefix (P1) rule
    /// (`arg[0]` = 1 for the P1 rule with the acknowledged sequence in `arg[1]`; for F1 a
    /// non-zero `arg[1]` is the newest record of the last committed epoch, which the image must
    /// reach). With more vCPUs each checks its own log, with its value in `arg[1 + index]`.
    SeqCheck = 3,
    /// Random writes (`arg[0]` writes of `arg[1]` bytes, 0 = a whole 4 KiB page; smaller writes
    /// land at a random aligned offset of a random page), persisting each in PV mode.
    RandomWrites = 4,
    /// Sequential writes of `arg[1]` bytes (`arg[0]` of them), persisting each in PV mode.
    SeqWrites = 5,
    /// A small persistent key-value store: `arg[0]` puts of 64-byte values with persist.
    KvStore = 6,
    /// An append-only log: `arg[0]` appends of `arg[1]` bytes, persisting record then tail.
    AppendLog = 7,
    /// Scratch buffers marked transient (`arg[1]` pages at the end of vPM), written heavily; in the
    /// check phase (`arg[0]` = 1) the scratch must read as zeros.
    Transient = 8,
    /// Hostile hints: bad ranges, unknown ops, garbage indices, bad registration, a doorbell
    /// storm; `errors` counts answers that were not the expected error.
    Hostile = 9,
    /// Persist latency: `arg[0]` persists of `arg[1]` bytes each; reports TSC cycles per persist.
    /// `arg[2]` = 1 times NOP entries instead (the ring round trip, no data); `arg[2]` = 2 is the
    /// idle job: `arg[0]` persists, a progress exit, `arg[3]` TSC cycles without hints, a
    /// progress exit, `arg[0]` persists.
    PersistLatency = 10,
    /// Exit round trip: `arg[0]` writes to the progress port; reports TSC cycles per exit.
    ExitLatency = 11,
    /// Write-skewed random writes: `arg[0]` writes of `arg[1]` bytes (0 = 64), 90 % of them to a
    /// hot set of every tenth page (10 % of vPM), the rest anywhere; persisting each in PV mode.
    SkewedWrites = 12,
}

impl Workload {
    /// Decodes a workload code.
    pub const fn from_code(code: u32) -> Option<Workload> {
        Some(match code {
            1 => Workload::Checksum,
            2 => Workload::SeqWriter,
            3 => Workload::SeqCheck,
            4 => Workload::RandomWrites,
            5 => Workload::SeqWrites,
            6 => Workload::KvStore,
            7 => Workload::AppendLog,
            8 => Workload::Transient,
            9 => Workload::Hostile,
            10 => Workload::PersistLatency,
            11 => Workload::ExitLatency,
            12 => Workload::SkewedWrites,
            _ => return None,
        })
    }
}

/// Flag in [`BootParams::flags`]: send persistence hints (PV mode).
pub const FLAG_PV: u32 = 1;
/// Flag: mark transient regions with hints (PV mode with transient hints).
pub const FLAG_TRANSIENT_HINTS: u32 = 2;
/// Flag: the random and skewed write workloads count the bytes they store into each vPM page,
/// one `u64` per page at [`STORE_COUNTS_GPA`] (pages past [`STORE_COUNTS_PAGES`] uncounted), so
/// the host can tell stores that landed in its PM tier from those it absorbed in DRAM.
pub const FLAG_COUNT_STORES: u32 = 4;
/// Guest RAM holding the per-page store byte counters of [`FLAG_COUNT_STORES`] (the guest's
/// 4 MiB scratch area, which those workloads do not otherwise use).
pub const STORE_COUNTS_GPA: u64 = 0x00a0_0000;
/// vPM pages with a store counter (4 MiB of `u64`s).
pub const STORE_COUNTS_PAGES: u64 = (4 << 20) / 8;

/// Boot parameters, written by the VMM at [`BOOT_PARAMS_GPA`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct BootParams {
    /// [`BOOT_MAGIC`].
    pub magic: u64,
    /// A [`Workload`] code.
    pub workload: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// vPM base (guest-physical).
    pub vpm_base: u64,
    /// vPM size in bytes.
    pub vpm_size: u64,
    /// Seed for pseudo-random choices.
    pub seed: u64,
    /// Workload arguments.
    pub arg: [u64; 6],
}

/// The guest's report at [`REPORT_GPA`].
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GuestReport {
    /// [`REPORT_RUNNING`], [`REPORT_DONE`] or [`REPORT_FAILED`].
    pub state: u32,
    /// Length of `message`.
    pub message_len: u32,
    /// Errors the workload found.
    pub errors: u64,
    /// Operations done (records, puts, writes, rounds…).
    pub ops: u64,
    /// Workload-specific values (see each [`Workload`]).
    pub values: [u64; 8],
    /// A short text (panic message, first error).
    pub message: [u8; 256],
}

/// Guest-physical addresses of vCPU `index`'s two [`Workload::SeqWriter`] words: its
/// acknowledged sequence (the drain witness reads it when that vCPU's ring drains) and its newest
/// complete record (the epoch witness reads it at each epoch's pause). vCPU 0 keeps them in report
/// values 1 and 2; the others in the report page past the [`GuestReport`], 16 bytes each.
pub const fn seq_words_gpa(index: u32) -> [u64; 2] {
    if index == 0 {
        let values = REPORT_GPA + core::mem::offset_of!(GuestReport, values) as u64;
        [values + 8, values + 16]
    } else {
        let base = REPORT_GPA + VCPU_SEQ_WORDS_OFFSET + index as u64 * 16;
        [base, base + 8]
    }
}

/// Where the other vCPUs' sequence-writer words start in the report page.
const VCPU_SEQ_WORDS_OFFSET: u64 = 0x800;
const _: () = assert!(core::mem::size_of::<GuestReport>() as u64 <= VCPU_SEQ_WORDS_OFFSET);
const _: () = assert!(VCPU_SEQ_WORDS_OFFSET + MAX_VCPUS as u64 * 16 <= crate::PAGE_SIZE);

/// Report state: running.
pub const REPORT_RUNNING: u32 = 1;
/// Report state: finished.
pub const REPORT_DONE: u32 = 2;
/// Report state: failed (panic or setup error); see the message.
pub const REPORT_FAILED: u32 = 3;

/// Exit codes written to [`CONTROL_PORT`].
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// The workload finished.
    Done = 1,
    /// The guest failed (see the report).
    Failed = 2,
}

/// One sequence-numbered record of [`Workload::SeqWriter`]: 64 bytes, word 0 the sequence,
/// words 1..7 derived from it; record `seq` lives in slot `seq % slots` of vPM.
pub const fn seq_record_word(seq: u64, i: usize) -> u64 {
    if i == 0 {
        seq
    } else {
        seq.wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .rotate_left(i as u32 * 7)
            ^ i as u64
    }
}

//! Flush, drain, persist, and the persistent copy and set functions (PMDK's dispatch).

use crate::cpu::{fence, flush_lines, Config, Flush};
use crate::vpmdev::{self, FlushOutcome, PvOutcome};

/// `PMEM_F_MEM_*` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemFlags(pub u32);

impl MemFlags {
    /// Do not drain.
    pub const NODRAIN: u32 = 1 << 0;
    /// Prefer non-temporal stores.
    pub const NONTEMPORAL: u32 = 1 << 1;
    /// Prefer temporal stores.
    pub const TEMPORAL: u32 = 1 << 2;
    /// Write-combining (like non-temporal).
    pub const WC: u32 = 1 << 3;
    /// Write-back (like temporal).
    pub const WB: u32 = 1 << 4;
    /// Do not flush (nor drain).
    pub const NOFLUSH: u32 = 1 << 5;

    fn has(self, f: u32) -> bool {
        self.0 & f != 0
    }
}

/// `pmem_flush`: `/dev/vpm` parts are queued with the driver, the rest flushed from the caches.
pub fn flush(addr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    if vpmdev::flush(addr as usize, len) == FlushOutcome::Pv {
        return;
    }
    flush_lines(Config::get().flush, addr, len);
}

/// `pmem_drain`: `sfence` (so non-temporal stores are visible to the host too), then one
/// doorbell for the queued PV ranges. False if a PV range of this thread is not durable (see
/// [`vpmdev::drain`]; errormsg and errno say why).
pub fn drain() -> bool {
    if Config::get().flush != Flush::Clflush {
        fence();
    }
    vpmdev::drain()
}

/// `pmem_persist`: one driver call for a single `/dev/vpm` range, else flush + drain.
pub fn persist(addr: *const u8, len: usize) {
    match vpmdev::persist(addr as usize, len) {
        PvOutcome::Durable => return,
        PvOutcome::Native | PvOutcome::Failed if len != 0 => {
            flush_lines(Config::get().flush, addr, len)
        }
        _ => {}
    }
    drain();
}

fn nontemporal_wanted(len: usize, flags: MemFlags) -> bool {
    let cfg = Config::get();
    if cfg.no_movnt
        || flags.has(MemFlags::NOFLUSH)
        || cfg.flush == Flush::None && !flags.has(MemFlags::NONTEMPORAL)
    {
        return false;
    }
    if flags.has(MemFlags::NONTEMPORAL | MemFlags::WC) {
        return true;
    }
    if flags.has(MemFlags::TEMPORAL | MemFlags::WB) {
        return false;
    }
    len >= cfg.movnt_threshold
}

fn finish(dst: *mut u8, len: usize, flags: MemFlags, nt: bool) {
    if flags.has(MemFlags::NOFLUSH) {
        return;
    }
    let pv = if flags.has(MemFlags::NODRAIN) {
        match vpmdev::flush(dst as usize, len) {
            FlushOutcome::Pv => PvOutcome::Queued,
            FlushOutcome::Native => PvOutcome::Native,
            FlushOutcome::Failed => PvOutcome::Failed,
        }
    } else {
        vpmdev::persist(dst as usize, len)
    };
    match pv {
        PvOutcome::Durable => return,
        // Non-temporal stores bypassed the caches; the PV parts are queued either way.
        PvOutcome::Native | PvOutcome::Failed if !nt && len != 0 => {
            flush_lines(Config::get().flush, dst, len)
        }
        _ => {}
    }
    // With plain clflush the drain has no fence: order the non-temporal stores here (as PMDK).
    if nt && Config::get().flush == Flush::Clflush {
        fence();
    }
    if !flags.has(MemFlags::NODRAIN) {
        drain();
    }
}

/// Copies with 16-byte non-temporal stores in the aligned middle; edges through the cache and
/// flushed. Forward only (the caller checks overlap).
///
/// # Safety
/// `dst` and `src` valid for `len` bytes; `dst` not overlapping `src` in a way that a forward
/// copy would corrupt (dst before src, or disjoint).
unsafe fn copy_nt(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let align_mask = if avx512() { 63 } else { 15 };
    let head = ((dst as usize).wrapping_neg() & align_mask).min(len);
    // SAFETY: all accesses stay in [0, len) of both buffers (caller's contract); the stream stores
    // target 16-byte aligned addresses (dst + head is aligned by construction).
    unsafe {
        std::ptr::copy(src, dst, head);
        let mut i = head;
        if avx512() {
            i = head + stream_64(dst.add(head), src.add(head), len - head);
        }
        while i + 16 <= len {
            let v = _mm_loadu_si128(src.add(i) as *const __m128i);
            _mm_stream_si128(dst.add(i) as *mut __m128i, v);
            i += 16;
        }
        std::ptr::copy(src.add(i), dst.add(i), len - i);
        let cfg = Config::get();
        flush_lines(cfg.deep_flush, dst, head);
        flush_lines(cfg.deep_flush, dst.add(i), len - i);
    }
}

/// Whether the CPU has AVX-512F (`PMEM_AVX512F=0` turns its use off, as in PMDK).
fn avx512() -> bool {
    static A: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *A.get_or_init(|| {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::env::var("PMEM_AVX512F").map_or(true, |v| v != "0")
    })
}

/// Streams whole 64-byte lines from `src` to `dst` (16-byte aligned; lines up to the 64-byte
/// boundary first go 16 bytes at a time by the caller's loop, so this starts where it can);
/// returns the bytes copied.
///
/// # Safety
/// AVX-512F present; `dst` 16-byte aligned; both buffers valid for `len` bytes.
#[target_feature(enable = "avx512f")]
unsafe fn stream_64(dst: *mut u8, src: *const u8, len: usize) -> usize {
    use std::arch::x86_64::{__m512i, _mm512_loadu_si512, _mm512_stream_si512};
    if !(dst as usize).is_multiple_of(64) {
        return 0;
    }
    let mut i = 0;
    while i + 64 <= len {
        // SAFETY: i + 64 <= len keeps both accesses in bounds; dst + i is 64-byte aligned.
        unsafe {
            let v = _mm512_loadu_si512(src.add(i) as *const __m512i);
            _mm512_stream_si512(dst.add(i) as *mut __m512i, v);
        }
        i += 64;
    }
    i
}

/// `pmem_memmove` / `pmem_memcpy`: overlap-safe; returns `dst`.
///
/// # Safety
/// `dst` and `src` valid for `len` bytes (as for `memmove`).
pub unsafe fn memmove(dst: *mut u8, src: *const u8, len: usize, flags: MemFlags) -> *mut u8 {
    if len == 0 || std::ptr::eq(dst, src) {
        return dst;
    }
    let forward_safe = (dst as usize).wrapping_sub(src as usize) >= len;
    let nt = forward_safe && nontemporal_wanted(len, flags);
    // SAFETY: the caller guarantees both buffers are valid for len bytes; copy_nt is used only
    // when a forward copy is safe, `ptr::copy` handles any overlap.
    unsafe {
        if nt {
            copy_nt(dst, src, len);
        } else {
            std::ptr::copy(src, dst, len);
        }
    }
    finish(dst, len, flags, nt);
    dst
}

/// `pmem_memset`; returns `dst`.
///
/// # Safety
/// `dst` valid for `len` bytes.
pub unsafe fn memset(dst: *mut u8, c: u8, len: usize, flags: MemFlags) -> *mut u8 {
    if len == 0 {
        return dst;
    }
    let nt = nontemporal_wanted(len, flags);
    // SAFETY: dst is valid for len bytes (caller); the stream stores target 16-byte aligned
    // addresses inside it.
    unsafe {
        if nt {
            use std::arch::x86_64::{__m128i, _mm_set1_epi8, _mm_stream_si128};
            let head = ((dst as usize).wrapping_neg() & 15).min(len);
            std::ptr::write_bytes(dst, c, head);
            let v = _mm_set1_epi8(c as i8);
            let mut i = head;
            while i + 16 <= len {
                _mm_stream_si128(dst.add(i) as *mut __m128i, v);
                i += 16;
            }
            std::ptr::write_bytes(dst.add(i), c, len - i);
            let cfg = Config::get();
            flush_lines(cfg.deep_flush, dst, head);
            flush_lines(cfg.deep_flush, dst.add(i), len - i);
        } else {
            std::ptr::write_bytes(dst, c, len);
        }
    }
    finish(dst, len, flags, nt);
    dst
}

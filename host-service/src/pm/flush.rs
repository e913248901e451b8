//! CPU cache-flush primitives and persistent copies (x86-64).
//!
//! Rust 1.95 has no `clwb`/`clflushopt` intrinsics, so they are inline assembly. The flush
//! instruction is chosen once from CPUID: clwb, else clflushopt, else clflush.

use std::sync::OnceLock;

use vpm_abi::LINE_SIZE;

/// How a PM device makes stores durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushMethod {
    /// `clwb` per line, `sfence` to drain (DAX mapping, or emulated PM in DRAM).
    Clwb,
    /// `clflushopt` per line, `sfence` to drain.
    ClflushOpt,
    /// `clflush` per line (serialising; no drain needed beyond a fence).
    Clflush,
    /// `msync(MS_SYNC)` of the flushed pages at drain (file in a page cache).
    Msync,
    /// `fdatasync` at drain (file written with `pwrite`, e.g. the capacity tier).
    Fdatasync,
    /// Simulated: the power-failure simulator tracks flushes itself.
    Simulated,
}

impl FlushMethod {
    /// Name for stats and logs.
    pub fn name(self) -> &'static str {
        match self {
            FlushMethod::Clwb => "clwb+sfence",
            FlushMethod::ClflushOpt => "clflushopt+sfence",
            FlushMethod::Clflush => "clflush",
            FlushMethod::Msync => "msync",
            FlushMethod::Fdatasync => "fdatasync",
            FlushMethod::Simulated => "simulated",
        }
    }
}

/// The best cache-line flush this CPU offers, honouring `PMEM_NO_CLWB` / `PMEM_NO_CLFLUSHOPT`.
pub fn cpu_flush_method() -> FlushMethod {
    static METHOD: OnceLock<FlushMethod> = OnceLock::new();
    *METHOD.get_or_init(|| {
        let veto = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        // CPUID is safe to execute on x86-64; leaf 7 is read only if the max leaf reaches it.
        let leaf7 = {
            let max = std::arch::x86_64::__cpuid(0).eax;
            (max >= 7).then(|| std::arch::x86_64::__cpuid_count(7, 0).ebx)
        };
        let ebx = leaf7.unwrap_or(0);
        if ebx & (1 << 24) != 0 && !veto("PMEM_NO_CLWB") {
            FlushMethod::Clwb
        } else if ebx & (1 << 23) != 0 && !veto("PMEM_NO_CLFLUSHOPT") {
            FlushMethod::ClflushOpt
        } else {
            FlushMethod::Clflush
        }
    })
}

/// Writes back every cache line of `[ptr, ptr + len)` with `method` (no fence).
///
/// # Safety
/// The range must be mapped (flushing does not write, but it faults on unmapped memory).
pub unsafe fn flush_lines(method: FlushMethod, ptr: *const u8, len: usize) {
    if len == 0 {
        return;
    }
    let start = ptr as usize & !(LINE_SIZE as usize - 1);
    let end = ptr as usize + len;
    for line in (start..end).step_by(LINE_SIZE as usize) {
        let p = line as *const u8;
        // SAFETY: `p` lies in a cache line the caller guarantees is mapped; the flush
        // instructions only write back or invalidate that line.
        unsafe {
            match method {
                FlushMethod::Clwb => {
                    std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                FlushMethod::ClflushOpt => std::arch::asm!(
                    "clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags)
                ),
                _ => std::arch::x86_64::_mm_clflush(p),
            }
        }
    }
}

/// Orders every earlier flush and non-temporal store before later stores (`sfence`).
pub fn store_fence() {
    // SAFETY: sfence has no memory operands and no preconditions.
    unsafe { std::arch::x86_64::_mm_sfence() }
}

/// Copies `src` to `dst` with non-temporal stores where both are 16-byte aligned in the middle,
/// ordinary stores at the edges; the caller fences (and flushes the edge lines).
///
/// # Safety
/// `dst` must be valid for `src.len()` bytes of writes and not overlap `src`.
pub unsafe fn copy_nontemporal(dst: *mut u8, src: &[u8]) {
    use std::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_stream_si128};
    let len = src.len();
    let head = (dst as usize).wrapping_neg() & 15;
    if len < head + 16 {
        // SAFETY: caller guarantees dst is writable for len bytes and does not overlap src.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, len) };
        return;
    }
    // SAFETY: all offsets stay below `len`; dst is writable for len bytes (caller); the stream
    // stores target 16-byte aligned addresses (dst + head is aligned by construction).
    unsafe {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst, head);
        let body = (len - head) & !15;
        let mut i = head;
        while i < head + body {
            let v = _mm_loadu_si128(src.as_ptr().add(i) as *const __m128i);
            _mm_stream_si128(dst.add(i) as *mut __m128i, v);
            i += 16;
        }
        std::ptr::copy_nonoverlapping(src.as_ptr().add(i), dst.add(i), len - i);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nontemporal_copy_matches_at_every_alignment() {
        let src: Vec<u8> = (0..600u32).map(|i| (i * 7 + 3) as u8).collect();
        for off in 0..17 {
            for len in [0, 1, 15, 16, 17, 31, 64, 100, 500] {
                let mut dst = vec![0xeeu8; 640];
                // SAFETY: dst has room for off + len <= 640 bytes; it does not overlap src.
                unsafe { copy_nontemporal(dst.as_mut_ptr().add(off), &src[..len]) };
                store_fence();
                assert_eq!(&dst[off..off + len], &src[..len], "off {off} len {len}");
                assert!(dst[..off].iter().all(|&b| b == 0xee));
                assert!(dst[off + len..].iter().all(|&b| b == 0xee));
            }
        }
    }

    #[test]
    fn flushing_keeps_content() {
        let buf = vec![5u8; vpm_abi::PAGE_SIZE as usize];
        // SAFETY: buf is mapped for its whole length.
        unsafe { flush_lines(cpu_flush_method(), buf.as_ptr().wrapping_add(3), 4000) };
        store_fence();
        assert!(buf.iter().all(|&b| b == 5));
    }
}

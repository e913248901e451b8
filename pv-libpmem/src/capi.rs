//! The C ABI: every libpmem 1.x function (version node `LIBPMEM_1.0`) and the `vpm.h`
//! extensions (`VPM_1.0`). Pointers come from C callers, as with PMDK's libpmem.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use crate::cpu::{fence, flush_lines, Config};
use crate::mapfile::{self, MapFlags};
use crate::memops::{self, MemFlags};
use crate::{err, ranges, vpmdev};

/// `pmem_map_file`.
///
/// # Safety
/// `path` is a NUL-terminated string; the out-pointers are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn pmem_map_file(
    path: *const c_char,
    len: usize,
    flags: c_int,
    mode: libc::mode_t,
    mapped_lenp: *mut usize,
    is_pmemp: *mut c_int,
) -> *mut c_void {
    if path.is_null() {
        err::set("invalid path", libc::EINVAL);
        return std::ptr::null_mut();
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let path = CString::from(unsafe { CStr::from_ptr(path) });
    match mapfile::map_file(&path, len, MapFlags(flags), mode) {
        Ok(m) => {
            // SAFETY: the caller's out-pointers are NULL or writable.
            unsafe {
                if !mapped_lenp.is_null() {
                    *mapped_lenp = m.len;
                }
                if !is_pmemp.is_null() {
                    *is_pmemp = m.is_pmem as c_int;
                }
            }
            m.addr as *mut c_void
        }
        Err(e) => {
            err::set_errno(e);
            std::ptr::null_mut()
        }
    }
}

/// `pmem_unmap`.
#[no_mangle]
pub extern "C" fn pmem_unmap(addr: *mut c_void, len: usize) -> c_int {
    match mapfile::unmap(addr as *mut u8, len) {
        Ok(()) => 0,
        Err(e) => {
            err::set_errno(e);
            -1
        }
    }
}

/// `pmem_is_pmem`.
#[no_mangle]
pub extern "C" fn pmem_is_pmem(addr: *const c_void, len: usize) -> c_int {
    ranges::is_pmem(addr as *const u8, len) as c_int
}

/// `pmem_persist`.
#[no_mangle]
pub extern "C" fn pmem_persist(addr: *const c_void, len: usize) {
    memops::persist(addr as *const u8, len)
}

/// `pmem_flush`.
#[no_mangle]
pub extern "C" fn pmem_flush(addr: *const c_void, len: usize) {
    memops::flush(addr as *const u8, len)
}

/// `pmem_drain` (a PV range that could not be made durable is reported through
/// `pmem_errormsg`, errno and `pmem_vpm_failures`, since the function returns nothing).
#[no_mangle]
pub extern "C" fn pmem_drain() {
    memops::drain();
}

/// `pmem_msync`.
#[no_mangle]
pub extern "C" fn pmem_msync(addr: *const c_void, len: usize) -> c_int {
    let start = addr as usize & !4095;
    let len = len + (addr as usize - start);
    // A PV range is made durable by its hints (msync would not reach the host's PM, and the
    // driver's mapping has no fsync).
    match vpmdev::flush(addr as usize, len) {
        vpmdev::FlushOutcome::Pv => return if vpmdev::drain() { 0 } else { -1 },
        vpmdev::FlushOutcome::Failed => {
            vpmdev::drain();
            return -1;
        }
        vpmdev::FlushOutcome::Native => {}
    }
    // SAFETY: msync validates the range itself.
    let rc = unsafe { libc::msync(start as *mut c_void, len, libc::MS_SYNC) };
    if rc != 0 {
        err::set_os("msync");
        return -1;
    }
    0
}

/// `pmem_has_auto_flush`: 1 only if every NVDIMM region's persistence domain is the CPU cache.
#[no_mangle]
pub extern "C" fn pmem_has_auto_flush() -> c_int {
    let Ok(dir) = std::fs::read_dir("/sys/bus/nd/devices") else {
        return 0;
    };
    let mut regions = 0;
    for e in dir.flatten() {
        if !e.file_name().to_string_lossy().starts_with("region") {
            continue;
        }
        regions += 1;
        match std::fs::read_to_string(e.path().join("persistence_domain")) {
            Ok(s) if s.ends_with('\n') && s.trim_end_matches('\n') == "cpu_cache" => {}
            Ok(s) if s.is_empty() || !s.ends_with('\n') => return -1,
            _ => return 0,
        }
    }
    (regions > 0) as c_int
}

/// `pmem_deep_flush`: always the CPU instruction (even with `PMEM_NO_FLUSH=1`).
#[no_mangle]
pub extern "C" fn pmem_deep_flush(addr: *const c_void, len: usize) {
    vpmdev::flush(addr as usize, len);
    flush_lines(Config::get().deep_flush, addr as *const u8, len);
}

/// `pmem_deep_drain`: PV ranges are drained; others msync'ed (as PMDK does off Device DAX).
#[no_mangle]
pub extern "C" fn pmem_deep_drain(addr: *const c_void, len: usize) -> c_int {
    if len == 0 {
        return 0;
    }
    fence();
    if vpmdev::vpm_active(addr as *const u8, len) {
        return if vpmdev::drain() { 0 } else { -1 };
    }
    pmem_msync(addr, len)
}

/// `pmem_deep_persist`.
#[no_mangle]
pub extern "C" fn pmem_deep_persist(addr: *const c_void, len: usize) -> c_int {
    pmem_deep_flush(addr, len);
    pmem_deep_drain(addr, len)
}

/// `pmem_has_hw_drain`: always 0 on x86.
#[no_mangle]
pub extern "C" fn pmem_has_hw_drain() -> c_int {
    0
}

/// `pmem_check_version`.
#[no_mangle]
pub extern "C" fn pmem_check_version(major: c_uint, minor: c_uint) -> *const c_char {
    if major != 1 {
        err::set(
            &format!("libpmem major version mismatch (need {major}, found 1)"),
            0,
        );
        return err::errormsg_ptr();
    }
    if minor > 1 {
        err::set(
            &format!("libpmem minor version mismatch (need {minor}, found 1)"),
            0,
        );
        return err::errormsg_ptr();
    }
    std::ptr::null()
}

/// `pmem_errormsg`.
#[no_mangle]
pub extern "C" fn pmem_errormsg() -> *const c_char {
    err::errormsg_ptr()
}

/// `pmem_memmove`.
///
/// # Safety
/// As `memmove`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memmove(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
    flags: c_uint,
) -> *mut c_void {
    // SAFETY: the caller's buffers, as for memmove.
    unsafe {
        memops::memmove(dst as *mut u8, src as *const u8, len, MemFlags(flags)) as *mut c_void
    }
}

/// `pmem_memcpy` (overlap-safe, like PMDK's).
///
/// # Safety
/// As `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memcpy(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
    flags: c_uint,
) -> *mut c_void {
    // SAFETY: as for pmem_memmove.
    unsafe { pmem_memmove(dst, src, len, flags) }
}

/// `pmem_memset`.
///
/// # Safety
/// As `memset`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memset(
    dst: *mut c_void,
    c: c_int,
    len: usize,
    flags: c_uint,
) -> *mut c_void {
    // SAFETY: the caller's buffer, as for memset.
    unsafe { memops::memset(dst as *mut u8, c as u8, len, MemFlags(flags)) as *mut c_void }
}

/// `pmem_memmove_persist`.
///
/// # Safety
/// As `memmove`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memmove_persist(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memmove.
    unsafe { pmem_memmove(dst, src, len, 0) }
}

/// `pmem_memcpy_persist`.
///
/// # Safety
/// As `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memcpy_persist(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memmove.
    unsafe { pmem_memmove(dst, src, len, 0) }
}

/// `pmem_memset_persist`.
///
/// # Safety
/// As `memset`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memset_persist(
    dst: *mut c_void,
    c: c_int,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memset.
    unsafe { pmem_memset(dst, c, len, 0) }
}

/// `pmem_memmove_nodrain`.
///
/// # Safety
/// As `memmove`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memmove_nodrain(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memmove.
    unsafe { pmem_memmove(dst, src, len, MemFlags::NODRAIN) }
}

/// `pmem_memcpy_nodrain`.
///
/// # Safety
/// As `memcpy`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memcpy_nodrain(
    dst: *mut c_void,
    src: *const c_void,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memmove.
    unsafe { pmem_memmove(dst, src, len, MemFlags::NODRAIN) }
}

/// `pmem_memset_nodrain`.
///
/// # Safety
/// As `memset`.
#[no_mangle]
pub unsafe extern "C" fn pmem_memset_nodrain(
    dst: *mut c_void,
    c: c_int,
    len: usize,
) -> *mut c_void {
    // SAFETY: as for pmem_memset.
    unsafe { pmem_memset(dst, c, len, MemFlags::NODRAIN) }
}

fn errno_result(r: Result<(), i32>) -> c_int {
    match r {
        Ok(()) => 0,
        Err(e) => {
            err::set(&format!("vpm: {}", err::strerror(e)), e);
            -1
        }
    }
}

/// `pmem_vpm_active` (vpm.h).
#[no_mangle]
pub extern "C" fn pmem_vpm_active(addr: *const c_void, len: usize) -> c_int {
    vpmdev::vpm_active(addr as *const u8, len) as c_int
}

/// `pmem_vpm_set_transient` (vpm.h).
#[no_mangle]
pub extern "C" fn pmem_vpm_set_transient(addr: *mut c_void, len: usize) -> c_int {
    errno_result(vpmdev::set_transient(addr as *mut u8, len))
}

/// `pmem_vpm_set_persistent` (vpm.h).
#[no_mangle]
pub extern "C" fn pmem_vpm_set_persistent(addr: *mut c_void, len: usize) -> c_int {
    errno_result(vpmdev::set_persistent(addr as *mut u8, len))
}

/// `pmem_vpm_request_epoch` (vpm.h).
#[no_mangle]
pub extern "C" fn pmem_vpm_request_epoch() -> c_int {
    errno_result(vpmdev::request_epoch())
}

/// `pmem_vpm_refusals`: PV hints the host refused that a fallback epoch made durable.
#[no_mangle]
pub extern "C" fn pmem_vpm_refusals() -> u64 {
    vpmdev::refusals()
}

/// `pmem_vpm_failures`: PV hints the host refused whose fallback epoch failed as well (the data
/// was not durable on return; `pmem_errormsg` said so on the thread that saw it).
#[no_mangle]
pub extern "C" fn pmem_vpm_failures() -> u64 {
    vpmdev::failures()
}

//! The per-thread error message (`pmem_errormsg`) and errno.

use std::cell::RefCell;
use std::ffi::{CStr, CString};

thread_local! {
    static MSG: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `msg` as this thread's last error, and sets errno to `errno` (if non-zero).
pub fn set(msg: &str, errno: i32) {
    let c = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    MSG.with(|m| *m.borrow_mut() = c);
    if errno != 0 {
        set_errno(errno);
    }
}

/// Records "`what`: strerror(errno)" with the current errno, keeping errno.
pub fn set_os(what: &str) {
    let e = std::io::Error::last_os_error();
    let code = e.raw_os_error().unwrap_or(libc::EINVAL);
    set(&format!("{what}: {}", strerror(code)), code);
}

/// The C library's text for an errno value.
pub fn strerror(code: i32) -> String {
    // SAFETY: strerror returns a valid NUL-terminated static or thread-local string.
    unsafe { CStr::from_ptr(libc::strerror(code)) }
        .to_string_lossy()
        .into_owned()
}

/// Sets errno.
pub fn set_errno(code: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = code };
}

/// This thread's last error message ("" if none).
pub fn errormsg() -> String {
    MSG.with(|m| m.borrow().to_string_lossy().into_owned())
}

/// Pointer to this thread's message (valid until the next error on this thread).
pub fn errormsg_ptr() -> *const libc::c_char {
    MSG.with(|m| m.borrow().as_ptr())
}

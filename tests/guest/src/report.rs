//! The guest's report page.

use core::fmt::Write;

use vpm_abi::harness::{GuestExit, GuestReport, REPORT_DONE, REPORT_FAILED, REPORT_GPA, REPORT_RUNNING};

fn page() -> *mut GuestReport {
    REPORT_GPA as *mut GuestReport
}

/// Marks the report as running.
pub fn start() {
    // SAFETY: the report page is identity-mapped guest RAM written by vCPU 0 (counters
    // other vCPUs add to go through atomics or `smp`).
    unsafe {
        (*page()).state = REPORT_RUNNING;
        (*page()).errors = 0;
        (*page()).ops = 0;
    }
}

/// Adds to the error count; the first message is kept.
pub fn error(msg: &str) {
    // SAFETY: see `start`; vCPUs may report at once, so the count is updated atomically (`errors`
    // is an aligned u64 every writer accesses through this atomic); the first message may mix.
    unsafe {
        let r = &mut *page();
        let errors = &*(core::ptr::addr_of_mut!(r.errors) as *const core::sync::atomic::AtomicU64);
        if errors.fetch_add(1, core::sync::atomic::Ordering::Relaxed) == 0 {
            set_message(r, msg.as_bytes());
        }
    }
}

/// Sets this vCPU's operations count (the report holds the sum over all vCPUs).
pub fn set_ops(n: u64) {
    let total = crate::smp::record_ops(n);
    // SAFETY: see `start`.
    unsafe { core::ptr::write_volatile(&mut (*page()).ops, total) }
}

/// Sets workload value `i`.
pub fn set_value(i: usize, v: u64) {
    // SAFETY: see `start`.
    unsafe { core::ptr::write_volatile(&mut (*page()).values[i], v) }
}

fn set_message(r: &mut GuestReport, msg: &[u8]) {
    let n = msg.len().min(r.message.len());
    r.message[..n].copy_from_slice(&msg[..n]);
    r.message_len = n as u32;
}

/// Marks the report done.
pub fn finish() {
    // SAFETY: see `start`.
    unsafe { core::ptr::write_volatile(&mut (*page()).state, REPORT_DONE) }
}

/// Fails the guest with `msg`.
pub fn fail(msg: &str) -> ! {
    let mut m = Message::new();
    let _ = m.write_str(msg);
    fail_with(&m)
}

/// Fails the guest with a formatted message.
pub fn fail_with(msg: &Message) -> ! {
    // SAFETY: see `start`.
    unsafe {
        let r = &mut *page();
        set_message(r, msg.as_bytes());
        core::ptr::write_volatile(&mut r.state, REPORT_FAILED);
    }
    crate::io::exit(GuestExit::Failed)
}

/// A fixed buffer for formatted messages.
pub struct Message {
    buf: [u8; 200],
    len: usize,
}

impl Message {
    /// An empty message.
    pub const fn new() -> Self {
        Message { buf: [0; 200], len: 0 }
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let n = s.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Records an error with a formatted message.
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)*) => {{
        let mut m = $crate::report::Message::new();
        let _ = core::fmt::write(&mut m, format_args!($($arg)*));
        $crate::report::error(core::str::from_utf8(m.as_bytes()).unwrap_or("error"));
    }};
}

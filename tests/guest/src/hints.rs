//! The guest's hint client: registers the shared page and sends persist/flush/drain/transient
//! hints through the `vpm-abi` ring producer (the same code the kernel driver uses), one doorbell
//! per batch. When the host grants polled rings (ABI 1.1, `POLLED`) the doorbell is rung only if
//! the host announced that it sleeps ([`Producer::publish`]); completion is always awaited by
//! polling `consumed`.

use vpm_abi::proto::doorbell::{encode, CMD_RING, DOORBELL_PORT, PROBE_REPLY};
use vpm_abi::{
    features, DoorbellCmd, HeaderStatus, NeedsDoorbell, Op, Producer, SharedPage, Ticket,
};

use crate::io::{inb, outb};

/// Ring size the guest asks for.
pub const RING_ENTRIES: u32 = 64;

/// Spins a guest waits for the host before it reports a failure.
const WAIT_SPINS: u64 = 2_000_000_000;

/// A registered hint channel.
pub struct Hints {
    producer: Producer<'static>,
}

/// The shared page at `gpa`.
pub fn shared_page(gpa: u64) -> &'static SharedPage {
    // SAFETY: the page is identity-mapped guest RAM reserved for the hint channel; the host
    // accesses it only atomically.
    unsafe { SharedPage::from_ptr(gpa as *mut u8) }
}

/// Sends a doorbell command, byte by byte.
pub fn doorbell(cmd: DoorbellCmd) {
    let mut bytes = [0u8; vpm_abi::MAX_CMD_BYTES];
    let n = encode(cmd, &mut bytes);
    for &b in &bytes[..n] {
        outb(DOORBELL_PORT, b);
    }
}

/// Whether a VPM host answers on the doorbell port.
pub fn host_present() -> bool {
    inb(DOORBELL_PORT) == PROBE_REPLY
}

/// Waits (bounded) for the host to answer a registration.
pub fn wait_registered(page: &SharedPage) -> Option<HeaderStatus> {
    for _ in 0..1_000_000 {
        match page.status() {
            Some(HeaderStatus::Pending) => core::hint::spin_loop(),
            other => return other,
        }
    }
    None
}

impl Hints {
    /// Registers the shared page at `gpa`; `Err` carries the host's status (or `None` if it never
    /// answered).
    pub fn register(gpa: u64) -> Result<Hints, Option<HeaderStatus>> {
        if !host_present() {
            return Err(None);
        }
        let page = shared_page(gpa);
        let producer = Producer::prepare(page, RING_ENTRIES, features::ALL).map_err(Some)?;
        doorbell(DoorbellCmd::Register(gpa));
        match wait_registered(page) {
            Some(HeaderStatus::Ok) => Ok(Hints { producer }),
            other => Err(other),
        }
    }

    /// Pushes an entry, ringing the doorbell to make room when the ring is full.
    pub fn push(&mut self, op: u16, gpa: u64, len: u64) -> Ticket {
        loop {
            match self.producer.push(op, gpa, len) {
                Ok(t) => return t,
                Err(_) => self.ring(),
            }
        }
    }

    /// Writes an entry without publishing it (the next [`Hints::complete`] or [`Hints::ring`]
    /// publishes it), making room like [`Hints::push`].
    pub fn stage(&mut self, op: u16, gpa: u64, len: u64) -> Ticket {
        loop {
            match self.producer.stage(op, gpa, len) {
                Ok(t) => return t,
                Err(_) => self.ring(),
            }
        }
    }

    /// Publishes everything pushed, rings the doorbell unless a polling host makes it unnecessary,
    /// and waits until the host has completed everything published.
    pub fn ring(&mut self) {
        self.kick();
        let mut spins = 0u64;
        while self.producer.in_flight() != 0 {
            core::hint::spin_loop();
            spins += 1;
            if spins > WAIT_SPINS {
                crate::report::fail("host stopped completing hints");
            }
        }
    }

    /// Publishes everything pushed and rings the doorbell if the host may be asleep.
    fn kick(&mut self) {
        if self.producer.publish() == NeedsDoorbell::Yes {
            outb(DOORBELL_PORT, CMD_RING);
        }
    }

    /// Waits for `t` and returns its result code.
    pub fn complete(&mut self, t: Ticket) -> i32 {
        if self.producer.is_done(t) {
            return self.producer.result(t).unwrap_or(i32::MIN);
        }
        self.kick();
        match self.producer.wait_for(t, WAIT_SPINS) {
            Ok(result) => result,
            Err(_) => crate::report::fail("host stopped completing hints"),
        }
    }

    /// Persists a range and returns the host's result.
    pub fn persist(&mut self, gpa: u64, len: u64) -> i32 {
        let t = self.push(Op::Persist.code(), gpa, len);
        self.complete(t)
    }

    /// Queues a range.
    pub fn flush(&mut self, gpa: u64, len: u64) {
        self.push(Op::Flush.code(), gpa, len);
    }

    /// Makes every queued range durable; returns the drain's result.
    pub fn drain(&mut self) -> i32 {
        let t = self.push(Op::Drain.code(), 0, 0);
        self.complete(t)
    }

    /// Sends one op and waits for its result.
    pub fn call(&mut self, op: u16, gpa: u64, len: u64) -> i32 {
        let t = self.push(op, gpa, len);
        self.complete(t)
    }
}

//! Operation codes, result codes, header status words and feature bits.

/// A ring operation. Register and unregister are doorbell commands
/// ([`super::doorbell::DoorbellCmd`]), because they happen before and after the ring exists.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Does nothing; the host completes it with [`HintResult::Ok`]. Useful to wait for the host.
    Nop = 0,
    /// Refreshes the header's host fields (vPM base and size, features, committed epoch).
    Info = 1,
    /// Makes the range durable before the entry completes (semantics P1).
    Persist = 2,
    /// Queues the range; it becomes durable at the next [`Op::Drain`] (semantics P4).
    Flush = 3,
    /// Makes every queued range durable, then completes.
    Drain = 4,
    /// Marks whole pages transient: DRAM only, never written to PM, zero after a crash (P3).
    SetTransient = 5,
    /// Marks whole pages persistent again (undoes [`Op::SetTransient`]).
    SetPersistent = 6,
    /// Asks the host to commit an epoch now; completes when it is committed.
    RequestEpoch = 7,
}

impl Op {
    /// Every operation, in code order.
    pub const ALL: [Op; 8] = [
        Op::Nop,
        Op::Info,
        Op::Persist,
        Op::Flush,
        Op::Drain,
        Op::SetTransient,
        Op::SetPersistent,
        Op::RequestEpoch,
    ];

    /// Decodes a wire op code; `None` for codes this ABI version does not define.
    pub const fn from_code(code: u16) -> Option<Op> {
        Some(match code {
            0 => Op::Nop,
            1 => Op::Info,
            2 => Op::Persist,
            3 => Op::Flush,
            4 => Op::Drain,
            5 => Op::SetTransient,
            6 => Op::SetPersistent,
            7 => Op::RequestEpoch,
            _ => return None,
        })
    }

    /// The wire op code.
    pub const fn code(self) -> u16 {
        self as u16
    }

    /// Whether the entry's `gpa`/`len` name a vPM range that must be checked.
    pub const fn takes_range(self) -> bool {
        matches!(
            self,
            Op::Persist | Op::Flush | Op::SetTransient | Op::SetPersistent
        )
    }

    /// Whether the range must be whole pages (placement works on pages).
    pub const fn needs_page_alignment(self) -> bool {
        matches!(self, Op::SetTransient | Op::SetPersistent)
    }
}

/// What the guest stores in an entry's `result` before publishing it.
pub const RESULT_PENDING: i32 = 1;

/// The outcome of one entry, written by the host into the entry's `result`.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HintResult {
    /// Done: for persist and drain, the ranges are durable.
    Ok = 0,
    /// The range leaves the caller's vPM region.
    OutOfRange = -1,
    /// The length is zero.
    ZeroLength = -2,
    /// `gpa + len` overflows 64 bits.
    Overflow = -3,
    /// The op code is not defined by this ABI version.
    UnknownOp = -4,
    /// A page-granular op got a range that is not whole pages.
    Unaligned = -5,
    /// Flags this ABI version does not define were set.
    BadFlags = -6,
    /// No PM capacity or quota is left for the range.
    NoSpace = -7,
    /// The host could not make the range durable (its I/O failed).
    Io = -8,
    /// The op is valid but the VM's mode does not offer it (e.g. transient in `direct` mode).
    NotSupported = -9,
}

impl HintResult {
    /// The wire code.
    pub const fn code(self) -> i32 {
        self as i32
    }

    /// Decodes a wire result code; `None` for [`RESULT_PENDING`] and unknown codes.
    pub const fn from_code(code: i32) -> Option<HintResult> {
        Some(match code {
            0 => HintResult::Ok,
            -1 => HintResult::OutOfRange,
            -2 => HintResult::ZeroLength,
            -3 => HintResult::Overflow,
            -4 => HintResult::UnknownOp,
            -5 => HintResult::Unaligned,
            -6 => HintResult::BadFlags,
            -7 => HintResult::NoSpace,
            -8 => HintResult::Io,
            -9 => HintResult::NotSupported,
            _ => return None,
        })
    }

    /// A short lowercase name for logs and stats.
    pub const fn name(self) -> &'static str {
        match self {
            HintResult::Ok => "ok",
            HintResult::OutOfRange => "out-of-range",
            HintResult::ZeroLength => "zero-length",
            HintResult::Overflow => "overflow",
            HintResult::UnknownOp => "unknown-op",
            HintResult::Unaligned => "unaligned",
            HintResult::BadFlags => "bad-flags",
            HintResult::NoSpace => "no-space",
            HintResult::Io => "io-error",
            HintResult::NotSupported => "not-supported",
        }
    }
}

/// The header's `status` word, written by the host (the guest writes [`HeaderStatus::Pending`]
/// before it registers, and waits for it to change).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeaderStatus {
    /// The page is registered and served.
    Ok = 0,
    /// Registration was asked for and not yet answered.
    Pending = 1,
    /// The header's magic is wrong; the page is not served.
    BadMagic = 2,
    /// The guest's major version differs, or its minor is newer than the host's.
    BadVersion = 3,
    /// `ring_entries` is zero, not a power of two, or above [`super::wire::MAX_RING_ENTRIES`].
    BadGeometry = 4,
    /// `produced` ran more than `ring_entries` ahead of `consumed`; the ring is stopped until the
    /// guest registers again.
    BadIndex = 5,
    /// The page was unregistered.
    Unregistered = 6,
}

impl HeaderStatus {
    /// Decodes a status word; `None` for unknown words.
    pub const fn from_code(code: u32) -> Option<HeaderStatus> {
        Some(match code {
            0 => HeaderStatus::Ok,
            1 => HeaderStatus::Pending,
            2 => HeaderStatus::BadMagic,
            3 => HeaderStatus::BadVersion,
            4 => HeaderStatus::BadGeometry,
            5 => HeaderStatus::BadIndex,
            6 => HeaderStatus::Unregistered,
            _ => return None,
        })
    }
}

/// Feature bits, as raw `u32` constants (a typed set is in the crate's `derive` feature).
pub mod features {
    /// Persist, flush and drain are durable per range (PV mode).
    pub const PERSIST: u32 = 1 << 0;
    /// Transient marking is honoured.
    pub const TRANSIENT: u32 = 1 << 1;
    /// Epochs are taken and `RequestEpoch` commits one.
    pub const EPOCHS: u32 = 1 << 2;
    /// The host completes the ring before the doorbell write returns (KVM I/O exit); without it
    /// the guest polls `consumed` (e.g. QEMU's isa-debugcon carries the doorbell asynchronously).
    pub const SYNC_DOORBELL: u32 = 1 << 3;
    /// ABI 1.1: polled rings. The host keeps the header's `host_state` up to date and a guest may
    /// skip the doorbell while the host polls (`proto::poll`). Granted only to 1.1 guests, and
    /// only while a host thread polls the ring.
    pub const POLLED: u32 = 1 << 4;
    /// One ring per guest CPU on a front whose doorbell does not say which CPU rang (QEMU): the
    /// guest registers ring 0 with REGISTER asking for this bit and, if granted, rings
    /// `1..MAX_RINGS` with REGISTER_RING (`proto::doorbell`); a RING then serves every ring.
    /// An addition to 1.1 that a host grants only when it offers it: a host without it never
    /// grants it, and the guest keeps one ring.
    pub const RINGS: u32 = 1 << 5;
    /// All bits ABI 1.0 defines.
    pub const ALL_1_0: u32 = PERSIST | TRANSIENT | EPOCHS | SYNC_DOORBELL;
    /// All bits this ABI version (1.1) defines.
    pub const ALL: u32 = ALL_1_0 | POLLED | RINGS;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_codes_round_trip_and_unknown_codes_are_rejected() {
        for op in Op::ALL {
            assert_eq!(Op::from_code(op.code()), Some(op));
        }
        assert_eq!(Op::from_code(8), None);
        assert_eq!(Op::from_code(u16::MAX), None);
    }

    #[test]
    fn result_codes_round_trip() {
        for code in -9..=0 {
            let r = HintResult::from_code(code).expect("defined code");
            assert_eq!(r.code(), code);
        }
        assert_eq!(HintResult::from_code(RESULT_PENDING), None);
        assert_eq!(HintResult::from_code(-10), None);
    }

    #[test]
    fn status_codes_round_trip() {
        for code in 0..=6 {
            assert_eq!(HeaderStatus::from_code(code).map(|s| s as u32), Some(code));
        }
        assert_eq!(HeaderStatus::from_code(7), None);
    }
}

//! The shared page as seen through atomics, and the two ends of its ring.
//!
//! Both sides keep their own index privately and only *publish* it in the header: the guest's
//! [`Producer`] publishes `produced`, the host's [`Consumer`] publishes `consumed`. Neither side
//! ever trusts the other's copy of its own index, so a guest scribbling on the header can only
//! stop its own ring (status [`HeaderStatus::BadIndex`]), never make the host read outside it.
//! Indices are free-running `u32`s; the slot is `index & (entries - 1)`.

use core::sync::atomic::{AtomicI32, AtomicU16, AtomicU32, AtomicU64, Ordering};

use super::op::{features, HeaderStatus, RESULT_PENDING};
use super::poll::{self, NeedsDoorbell, SleepCheck, HOST_SLEEPING};
use super::wire::{
    unpack_version, RawEntry, ABI_MAJOR, ABI_MINOR, ABI_VERSION, ENTRY_SIZE, HEADER_SIZE, MAGIC,
    MAX_RING_ENTRIES, PAGE_SIZE, RING_OFFSET, RING_SLOTS,
};

/// The shared page header. Guest-written fields: `magic`, `version`, `guest_features`,
/// `ring_entries`, `produced`. Host-written: everything else (`host_state` since 1.1).
#[repr(C)]
pub struct SharedHeader {
    /// [`MAGIC`].
    pub magic: AtomicU64,
    /// The guest's ABI version word ([`ABI_VERSION`]).
    pub version: AtomicU32,
    /// Feature bits the guest would like ([`super::op::features`]).
    pub guest_features: AtomicU32,
    /// Feature bits the host grants.
    pub host_features: AtomicU32,
    /// A [`HeaderStatus`] word.
    pub status: AtomicU32,
    /// Number of ring entries in use: a power of two, at most [`MAX_RING_ENTRIES`].
    pub ring_entries: AtomicU32,
    /// Reserved, zero.
    pub reserved0: AtomicU32,
    /// Free-running count of entries the guest has published.
    pub produced: AtomicU32,
    /// Free-running count of entries the host has completed.
    pub consumed: AtomicU32,
    /// The `seq` of the last entry the host completed.
    pub completed_seq: AtomicU64,
    /// Guest-physical base of the caller's vPM region.
    pub vpm_base: AtomicU64,
    /// Size in bytes of the caller's vPM region.
    pub vpm_size: AtomicU64,
    /// Number of the last committed epoch.
    pub epoch: AtomicU64,
    /// Entries the host completed with `Ok`.
    pub served: AtomicU64,
    /// Entries the host refused, plus header faults.
    pub rejected: AtomicU64,
    /// ABI 1.1, feature `POLLED`: [`HOST_SLEEPING`] or [`HOST_POLLING`], written by the host only
    /// (see [`super::poll`]). Zero (sleeping, so: ring the doorbell) for 1.0 hosts.
    pub host_state: AtomicU32,
    /// Reserved, zero.
    pub reserved1: AtomicU32,
    /// Reserved for later minor versions, zero.
    pub reserved: [AtomicU64; 4],
}

/// One ring entry in shared memory; the same layout as [`RawEntry`].
#[repr(C)]
pub struct SharedEntry {
    /// See [`RawEntry::op`].
    pub op: AtomicU16,
    /// See [`RawEntry::flags`].
    pub flags: AtomicU16,
    /// See [`RawEntry::result`].
    pub result: AtomicI32,
    /// See [`RawEntry::seq`].
    pub seq: AtomicU64,
    /// See [`RawEntry::gpa`].
    pub gpa: AtomicU64,
    /// See [`RawEntry::len`].
    pub len: AtomicU64,
}

/// The whole shared page.
#[repr(C, align(4096))]
pub struct SharedPage {
    /// Bytes `0..128`.
    pub header: SharedHeader,
    /// Bytes `128..4096`; only the first `ring_entries` slots are used.
    pub ring: [SharedEntry; RING_SLOTS],
}

const _: () = assert!(core::mem::size_of::<SharedHeader>() == HEADER_SIZE);
const _: () = assert!(core::mem::size_of::<SharedEntry>() == ENTRY_SIZE);
const _: () = assert!(core::mem::size_of::<SharedPage>() == PAGE_SIZE as usize);
const _: () = assert!(core::mem::offset_of!(SharedPage, ring) == RING_OFFSET);
const _: () = assert!(core::mem::offset_of!(SharedHeader, produced) == 32);
const _: () = assert!(core::mem::offset_of!(SharedHeader, consumed) == 36);
const _: () = assert!(core::mem::offset_of!(SharedHeader, completed_seq) == 40);
const _: () = assert!(core::mem::offset_of!(SharedHeader, rejected) == 80);
const _: () = assert!(core::mem::offset_of!(SharedHeader, host_state) == 88);
const _: () = assert!(core::mem::offset_of!(SharedHeader, reserved1) == 92);
const _: () = assert!(core::mem::offset_of!(SharedHeader, reserved) == 96);
const _: () = assert!(core::mem::offset_of!(SharedEntry, seq) == 8);
const _: () = assert!(core::mem::offset_of!(SharedEntry, len) == 24);

impl SharedEntry {
    /// An all-zero entry.
    pub const fn zeroed() -> SharedEntry {
        SharedEntry {
            op: AtomicU16::new(0),
            flags: AtomicU16::new(0),
            result: AtomicI32::new(0),
            seq: AtomicU64::new(0),
            gpa: AtomicU64::new(0),
            len: AtomicU64::new(0),
        }
    }

    /// Copies the entry out of shared memory.
    pub fn load(&self) -> RawEntry {
        RawEntry {
            op: self.op.load(Ordering::Relaxed),
            flags: self.flags.load(Ordering::Relaxed),
            result: self.result.load(Ordering::Relaxed),
            seq: self.seq.load(Ordering::Relaxed),
            gpa: self.gpa.load(Ordering::Relaxed),
            len: self.len.load(Ordering::Relaxed),
        }
    }

    /// Writes every field of `e` (the publishing index store orders them).
    pub fn store(&self, e: &RawEntry) {
        self.op.store(e.op, Ordering::Relaxed);
        self.flags.store(e.flags, Ordering::Relaxed);
        self.result.store(e.result, Ordering::Relaxed);
        self.seq.store(e.seq, Ordering::Relaxed);
        self.gpa.store(e.gpa, Ordering::Relaxed);
        self.len.store(e.len, Ordering::Relaxed);
    }
}

impl SharedPage {
    /// A zeroed page, for tests and for guests that allocate it statically.
    pub const fn zeroed() -> SharedPage {
        SharedPage {
            header: SharedHeader {
                magic: AtomicU64::new(0),
                version: AtomicU32::new(0),
                guest_features: AtomicU32::new(0),
                host_features: AtomicU32::new(0),
                status: AtomicU32::new(0),
                ring_entries: AtomicU32::new(0),
                reserved0: AtomicU32::new(0),
                produced: AtomicU32::new(0),
                consumed: AtomicU32::new(0),
                completed_seq: AtomicU64::new(0),
                vpm_base: AtomicU64::new(0),
                vpm_size: AtomicU64::new(0),
                epoch: AtomicU64::new(0),
                served: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                host_state: AtomicU32::new(HOST_SLEEPING),
                reserved1: AtomicU32::new(0),
                reserved: [const { AtomicU64::new(0) }; 4],
            },
            ring: [const { SharedEntry::zeroed() }; RING_SLOTS],
        }
    }

    /// Views 4 KiB of shared memory as a `SharedPage`.
    ///
    /// # Safety
    /// `ptr` must be 4096-aligned, valid for reads and writes of 4096 bytes for `'a`, and only
    /// accessed atomically by anyone else during `'a` (the other side of the VM boundary may write
    /// it at any time; atomics make that sound).
    pub unsafe fn from_ptr<'a>(ptr: *mut u8) -> &'a SharedPage {
        debug_assert!(ptr as usize % PAGE_SIZE as usize == 0);
        // SAFETY: the caller guarantees alignment, validity and atomic-only sharing; every field
        // is an atomic integer, for which any bit pattern is valid.
        unsafe { &*(ptr as *const SharedPage) }
    }

    /// The header's status word, decoded.
    pub fn status(&self) -> Option<HeaderStatus> {
        HeaderStatus::from_code(self.header.status.load(Ordering::Acquire))
    }
}

/// A guest's claim on one published entry: where it is and its sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// Free-running ring index of the entry.
    pub index: u32,
    /// The entry's sequence number.
    pub seq: u64,
}

/// The ring is full: the guest must ring the doorbell and wait for the host to complete entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RingFull;

/// Whether free-running index `a` is at or past `b` (wrap-around safe).
const fn reached(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// The guest's end of the ring.
pub struct Producer<'a> {
    page: &'a SharedPage,
    entries: u32,
    produced: u32,
    next_seq: u64,
}

impl<'a> Producer<'a> {
    /// Lays out a fresh header for registration (status [`HeaderStatus::Pending`]) and returns the
    /// producer. `entries` must be a power of two in `1..=MAX_RING_ENTRIES`.
    pub fn prepare(
        page: &'a SharedPage,
        entries: u32,
        guest_features: u32,
    ) -> Result<Producer<'a>, HeaderStatus> {
        Self::prepare_from(page, entries, guest_features, 0)
    }

    /// Like [`Producer::prepare`], with the free-running index starting at `first_index` (the host
    /// starts wherever `produced` stands at registration; tests use this to cross the `u32` wrap).
    pub fn prepare_from(
        page: &'a SharedPage,
        entries: u32,
        guest_features: u32,
        first_index: u32,
    ) -> Result<Producer<'a>, HeaderStatus> {
        if !valid_ring_entries(entries) {
            return Err(HeaderStatus::BadGeometry);
        }
        let h = &page.header;
        for slot in &page.ring {
            slot.store(&RawEntry::default());
        }
        h.version.store(ABI_VERSION, Ordering::Relaxed);
        h.guest_features.store(guest_features, Ordering::Relaxed);
        h.ring_entries.store(entries, Ordering::Relaxed);
        h.produced.store(first_index, Ordering::Relaxed);
        h.consumed.store(first_index, Ordering::Relaxed);
        h.host_state.store(HOST_SLEEPING, Ordering::Relaxed);
        h.status
            .store(HeaderStatus::Pending as u32, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(Producer {
            page,
            entries,
            produced: first_index,
            next_seq: 1,
        })
    }

    /// The shared page this producer writes.
    pub fn page(&self) -> &'a SharedPage {
        self.page
    }

    /// Entries published (or staged) and not yet completed by the host (as the host reports it,
    /// clamped).
    pub fn in_flight(&self) -> u32 {
        let consumed = self.page.header.consumed.load(Ordering::Acquire);
        self.produced.wrapping_sub(consumed).min(self.entries)
    }

    /// Free slots.
    pub fn free(&self) -> u32 {
        self.entries - self.in_flight()
    }

    /// Publishes one entry. Fails with [`RingFull`] when every slot is in flight.
    pub fn push(&mut self, op: u16, gpa: u64, len: u64) -> Result<Ticket, RingFull> {
        let ticket = self.stage(op, gpa, len)?;
        self.page
            .header
            .produced
            .store(self.produced, Ordering::Release);
        Ok(ticket)
    }

    /// Writes one entry without publishing it: the host sees it only after the next
    /// [`Producer::publish`] (or [`Producer::push`]). Fails with [`RingFull`] like `push`.
    pub fn stage(&mut self, op: u16, gpa: u64, len: u64) -> Result<Ticket, RingFull> {
        if self.free() == 0 {
            return Err(RingFull);
        }
        let index = self.produced;
        let seq = self.next_seq;
        let slot = &self.page.ring[(index & (self.entries - 1)) as usize];
        slot.store(&RawEntry {
            op,
            flags: 0,
            result: RESULT_PENDING,
            seq,
            gpa,
            len,
        });
        self.produced = index.wrapping_add(1);
        self.next_seq += 1;
        Ok(Ticket { index, seq })
    }

    /// Whether the host granted polled rings ([`features::POLLED`], ABI 1.1).
    pub fn polled(&self) -> bool {
        self.page.header.host_features.load(Ordering::Relaxed) & features::POLLED != 0
    }

    /// Publishes everything pushed or staged so far and tells whether the doorbell is needed: always
    /// [`NeedsDoorbell::Yes`] unless the host granted [`features::POLLED`] and is polling (the
    /// handshake of [`super::poll::announce`]).
    pub fn publish(&self) -> NeedsDoorbell {
        let h = &self.page.header;
        poll::announce(&h.produced, &h.host_state, self.produced, self.polled())
    }

    /// Whether the host has completed the entry of `ticket`.
    pub fn is_done(&self, ticket: Ticket) -> bool {
        let consumed = self.page.header.consumed.load(Ordering::Acquire);
        reached(consumed, ticket.index.wrapping_add(1))
    }

    /// The result code of a completed entry, `None` while it is pending. Valid until the slot is
    /// reused, i.e. until `entries` more pushes.
    pub fn result(&self, ticket: Ticket) -> Option<i32> {
        if !self.is_done(ticket) {
            return None;
        }
        let slot = &self.page.ring[(ticket.index & (self.entries - 1)) as usize];
        Some(slot.result.load(Ordering::Acquire))
    }
}

/// Whether `entries` is an acceptable ring size.
pub const fn valid_ring_entries(entries: u32) -> bool {
    entries.is_power_of_two() && entries <= MAX_RING_ENTRIES
}

/// One entry the host has taken from the ring and not yet finished.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Free-running ring index.
    pub index: u32,
    /// The entry as copied out of shared memory.
    pub entry: RawEntry,
}

/// The host's end of the ring. Holds its own indices; the header's copies are only published.
#[derive(Debug)]
pub struct Consumer {
    entries: u32,
    /// Entries taken (read) so far.
    taken: u32,
    /// Entries finished (result written) so far; `consumed <= taken`.
    consumed: u32,
}

impl Consumer {
    /// Checks a newly registered page's header. On success it starts at the current `produced`
    /// index (a guest registers before publishing anything), publishes that as `consumed` and
    /// status `Ok`; on failure it writes the status and returns it.
    pub fn attach(page: &SharedPage, host_features: u32) -> Result<Consumer, HeaderStatus> {
        let h = &page.header;
        let status = check_header(
            h.magic.load(Ordering::Acquire),
            h.version.load(Ordering::Relaxed),
            h.ring_entries.load(Ordering::Relaxed),
        );
        if let Err(bad) = status {
            h.status.store(bad as u32, Ordering::Release);
            h.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(bad);
        }
        let entries = h.ring_entries.load(Ordering::Relaxed);
        let mut granted = h.guest_features.load(Ordering::Relaxed) & host_features;
        if unpack_version(h.version.load(Ordering::Relaxed)).1 < 1 {
            // A 1.0 guest never reads `host_state`: it must always ring.
            granted &= features::ALL_1_0;
        }
        h.host_state.store(HOST_SLEEPING, Ordering::Relaxed);
        h.host_features.store(granted, Ordering::Relaxed);
        let start = h.produced.load(Ordering::Relaxed);
        h.consumed.store(start, Ordering::Relaxed);
        h.status.store(HeaderStatus::Ok as u32, Ordering::Release);
        Ok(Consumer {
            entries,
            taken: start,
            consumed: start,
        })
    }

    /// Ring size fixed at registration.
    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Takes the next published entry, if any. A `produced` index that runs past the ring stops
    /// the ring with [`HeaderStatus::BadIndex`] until the guest registers again.
    pub fn take(&mut self, page: &SharedPage) -> Result<Option<Taken>, HeaderStatus> {
        let h = &page.header;
        if h.status.load(Ordering::Acquire) != HeaderStatus::Ok as u32 {
            return Err(HeaderStatus::from_code(h.status.load(Ordering::Relaxed))
                .unwrap_or(HeaderStatus::BadIndex));
        }
        let produced = h.produced.load(Ordering::Acquire);
        let published = produced.wrapping_sub(self.consumed);
        if published > self.entries {
            h.status
                .store(HeaderStatus::BadIndex as u32, Ordering::Release);
            h.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(HeaderStatus::BadIndex);
        }
        if reached(self.taken, produced) {
            return Ok(None);
        }
        let index = self.taken;
        let entry = page.ring[(index & (self.entries - 1)) as usize].load();
        self.taken = index.wrapping_add(1);
        Ok(Some(Taken { index, entry }))
    }

    /// Whether the guest has published entries not taken yet on a ring that is served (status
    /// `Ok`). A poller spins on this, so a stopped ring reads as empty.
    pub fn has_published(&self, page: &SharedPage) -> bool {
        let h = &page.header;
        h.produced.load(Ordering::Acquire) != self.taken
            && h.status.load(Ordering::Relaxed) == HeaderStatus::Ok as u32
    }

    /// Before the host blocks on the doorbell (polled rings): announces `SLEEPING` and re-checks
    /// `produced` ([`super::poll::prepare_sleep`]). On [`SleepCheck::Pending`] the host must take
    /// the new entries instead of sleeping. A stopped ring (status not `Ok`) always sleeps.
    pub fn prepare_sleep(&self, page: &SharedPage) -> SleepCheck {
        let h = &page.header;
        let check = poll::prepare_sleep(&h.host_state, &h.produced, self.taken);
        if check == SleepCheck::Pending
            && h.status.load(Ordering::Acquire) != HeaderStatus::Ok as u32
        {
            h.host_state.store(HOST_SLEEPING, Ordering::Relaxed);
            return SleepCheck::Sleep;
        }
        check
    }

    /// After a wake-up (polled rings): announces `POLLING`; the caller then polls the ring.
    pub fn wake(&self, page: &SharedPage) {
        poll::wake(&page.header.host_state);
    }

    /// Entries taken and not yet finished.
    pub fn unfinished(&self) -> u32 {
        self.taken.wrapping_sub(self.consumed)
    }

    /// Finishes the oldest taken entry: writes `result`, counts it, publishes `consumed`.
    /// Returns `false` (and does nothing) when no taken entry is unfinished.
    pub fn finish(&mut self, page: &SharedPage, taken: &Taken, result: i32) -> bool {
        if self.unfinished() == 0 || taken.index != self.consumed {
            return false;
        }
        let h = &page.header;
        let slot = &page.ring[(taken.index & (self.entries - 1)) as usize];
        slot.result.store(result, Ordering::Relaxed);
        let counter = if result == 0 { &h.served } else { &h.rejected };
        counter.fetch_add(1, Ordering::Relaxed);
        self.consumed = self.consumed.wrapping_add(1);
        h.completed_seq.store(taken.entry.seq, Ordering::Relaxed);
        h.consumed.store(self.consumed, Ordering::Release);
        true
    }
}

/// Checks the guest-written header fields a host relies on.
pub const fn check_header(magic: u64, version: u32, ring_entries: u32) -> Result<(), HeaderStatus> {
    if magic != MAGIC {
        return Err(HeaderStatus::BadMagic);
    }
    let (major, minor) = unpack_version(version);
    if major != ABI_MAJOR || minor > ABI_MINOR {
        return Err(HeaderStatus::BadVersion);
    }
    if !valid_ring_entries(ring_entries) {
        return Err(HeaderStatus::BadGeometry);
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::super::op::Op;
    use super::*;

    /// A producer and a consumer on `page`, registered with `entries` ring entries.
    pub(in super::super) fn registered(
        page: &SharedPage,
        entries: u32,
    ) -> (Producer<'_>, Consumer) {
        let p = Producer::prepare(page, entries, 0).unwrap();
        let c = Consumer::attach(page, u32::MAX).unwrap();
        (p, c)
    }

    #[test]
    fn entries_flow_in_order_and_complete() {
        let page = SharedPage::zeroed();
        let (mut p, mut c) = registered(&page, 4);
        let t1 = p.push(Op::Persist.code(), 0x1000, 64).unwrap();
        let t2 = p.push(Op::Drain.code(), 0, 0).unwrap();
        assert_eq!((t1.seq, t2.seq), (1, 2));
        assert!(!p.is_done(t1));
        let a = c.take(&page).unwrap().unwrap();
        let b = c.take(&page).unwrap().unwrap();
        assert_eq!(c.take(&page), Ok(None));
        assert_eq!((a.entry.gpa, b.entry.op), (0x1000, Op::Drain.code()));
        assert!(c.finish(&page, &a, 0));
        assert!(p.is_done(t1) && !p.is_done(t2));
        assert!(c.finish(&page, &b, -1));
        assert_eq!(p.result(t2), Some(-1));
        assert_eq!(page.header.completed_seq.load(Ordering::Relaxed), 2);
        assert_eq!(page.header.served.load(Ordering::Relaxed), 1);
        assert_eq!(page.header.rejected.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_full_ring_refuses_until_the_host_finishes() {
        let page = SharedPage::zeroed();
        let (mut p, mut c) = registered(&page, 2);
        p.push(0, 0, 0).unwrap();
        p.push(0, 0, 0).unwrap();
        assert_eq!(p.push(0, 0, 0), Err(RingFull));
        let t = c.take(&page).unwrap().unwrap();
        assert!(c.finish(&page, &t, 0));
        assert!(p.push(0, 0, 0).is_ok());
    }

    #[test]
    fn finishing_out_of_order_is_refused() {
        let page = SharedPage::zeroed();
        let (mut p, mut c) = registered(&page, 4);
        p.push(0, 0, 0).unwrap();
        p.push(0, 0, 0).unwrap();
        let _a = c.take(&page).unwrap().unwrap();
        let b = c.take(&page).unwrap().unwrap();
        assert!(!c.finish(&page, &b, 0));
    }

    #[test]
    fn garbage_produced_index_stops_the_ring() {
        let page = SharedPage::zeroed();
        let (_p, mut c) = registered(&page, 8);
        page.header.produced.store(9, Ordering::Release);
        assert_eq!(c.take(&page), Err(HeaderStatus::BadIndex));
        assert_eq!(page.status(), Some(HeaderStatus::BadIndex));
        assert_eq!(c.take(&page), Err(HeaderStatus::BadIndex));
    }

    #[test]
    fn bad_headers_are_refused_with_a_status() {
        let page = SharedPage::zeroed();
        assert_eq!(
            Consumer::attach(&page, 0).unwrap_err(),
            HeaderStatus::BadMagic
        );
        Producer::prepare(&page, 8, 0).unwrap();
        page.header.version.store(0x0002_0000, Ordering::Relaxed);
        assert_eq!(
            Consumer::attach(&page, 0).unwrap_err(),
            HeaderStatus::BadVersion
        );
        assert_eq!(page.status(), Some(HeaderStatus::BadVersion));
        page.header.version.store(ABI_VERSION, Ordering::Relaxed);
        page.header.ring_entries.store(3, Ordering::Relaxed);
        assert_eq!(
            Consumer::attach(&page, 0).unwrap_err(),
            HeaderStatus::BadGeometry
        );
        assert!(Producer::prepare(&page, 128, 0).is_err());
    }

    #[test]
    fn features_granted_are_the_intersection() {
        let page = SharedPage::zeroed();
        Producer::prepare(&page, 8, 0b1011).unwrap();
        Consumer::attach(&page, 0b0110).unwrap();
        assert_eq!(page.header.host_features.load(Ordering::Relaxed), 0b0010);
    }
}

//! Homes: where pages' durable content lives (a slot in the pool's data region or in the
//! capacity file), which slots are free, and where a home is on its device.

use std::os::fd::RawFd;
use std::sync::Arc;

use vpm_abi::PAGE_SIZE;

use super::alloc::SlotAllocator;
use super::error::PoolError;
use super::media::{Home, PoolHeader};
use super::tenant::Tenant;
use crate::pm::PmDevice;

/// The two devices homes live on and their slot allocators.
#[derive(Debug)]
pub(super) struct HomeStore {
    pm: Arc<dyn PmDevice>,
    cap: Arc<dyn PmDevice>,
    /// Offset of PM slot 0 in the pool file.
    data_off: u64,
    pm_slots: SlotAllocator,
    cap_slots: SlotAllocator,
}

impl HomeStore {
    /// All slots free: the pool's data region on `pm`, and every page of `cap`.
    pub(super) fn new(
        pm: Arc<dyn PmDevice>,
        cap: Arc<dyn PmDevice>,
        header: &PoolHeader,
    ) -> HomeStore {
        HomeStore {
            pm_slots: SlotAllocator::new(header.data_pages),
            cap_slots: SlotAllocator::new(cap.size() / PAGE_SIZE),
            data_off: header.data_off,
            pm,
            cap,
        }
    }

    /// The PM device (which also holds the pool's metadata).
    pub(super) fn pm(&self) -> &Arc<dyn PmDevice> {
        &self.pm
    }

    /// The capacity device.
    pub(super) fn cap(&self) -> &Arc<dyn PmDevice> {
        &self.cap
    }

    /// PM slots free.
    pub(super) fn free_pm(&self) -> u64 {
        self.pm_slots.free()
    }

    /// Byte offset in the pool file of PM slot `slot`.
    pub(super) fn pm_offset(&self, slot: u64) -> u64 {
        self.data_off + slot * PAGE_SIZE
    }

    /// Device and byte offset of a home.
    pub(super) fn location(&self, home: Home) -> Option<(&dyn PmDevice, u64)> {
        match home {
            Home::Pm(s) => Some((&*self.pm, self.pm_offset(s))),
            Home::Capacity(s) => Some((&*self.cap, s * PAGE_SIZE)),
            Home::None | Home::Transient => None,
        }
    }

    /// The file descriptor and file offset behind a home.
    pub(super) fn fd_offset(&self, home: Home) -> Option<(RawFd, u64)> {
        match home {
            Home::Pm(s) => Some((self.pm.raw_fd()?, self.pm_offset(s))),
            Home::Capacity(s) => Some((self.cap.raw_fd()?, s * PAGE_SIZE)),
            Home::None | Home::Transient => None,
        }
    }

    /// Reads a home's page into `buf` (zeros for no home).
    pub(super) fn read(&self, home: Home, buf: &mut [u8]) -> Result<(), PoolError> {
        let page = &mut buf[..PAGE_SIZE as usize];
        match self.location(home) {
            Some((dev, off)) => dev.read(off, page)?,
            None => page.fill(0),
        }
        Ok(())
    }

    /// Waits for the flushes of both devices.
    pub(super) fn drain(&self) -> Result<(), PoolError> {
        self.pm.drain()?;
        self.cap.drain()?;
        Ok(())
    }

    /// Claims the slot of a home found in `t`'s page map (recovery); false if the slot is out of
    /// range or already claimed.
    pub(super) fn claim(&mut self, t: &mut Tenant, home: Home) -> bool {
        t.note_home_taken(home);
        match home {
            Home::Pm(s) => self.pm_slots.claim(s),
            Home::Capacity(s) => self.cap_slots.claim(s),
            Home::None | Home::Transient => true,
        }
    }

    /// Takes a free home for a page of `t`: PM while its quota and the pool allow, else a slot
    /// in the capacity file (grown as needed).
    pub(super) fn alloc(&mut self, t: &mut Tenant) -> Result<Home, PoolError> {
        if t.pm_quota_left() {
            if let Some(slot) = self.pm_slots.alloc() {
                t.note_home_taken(Home::Pm(slot));
                return Ok(Home::Pm(slot));
            }
        }
        if self.cap_slots.free() == 0 {
            let grown = (self.cap_slots.slots() * 2).max(256);
            self.cap.grow(grown * PAGE_SIZE)?;
            self.cap_slots.grow(grown);
        }
        let home = Home::Capacity(self.cap_slots.alloc().expect("grown above"));
        t.note_home_taken(home);
        Ok(home)
    }

    /// A fresh home in the same tier as `home`, for a copy-on-write rewrite. The quota is not
    /// checked: the old home is freed when the epoch is applied, so the tenant holds both only
    /// for the duration of the commit. A PM home taken so is a replacement
    /// ([`Tenant::note_replacement_taken`]); the commit that installs it or gives it back says
    /// so with [`Tenant::note_replacements_done`].
    pub(super) fn alloc_same_tier(
        &mut self,
        t: &mut Tenant,
        home: Home,
    ) -> Result<Option<Home>, PoolError> {
        let new = match home {
            Home::Pm(_) => self.pm_slots.alloc().map(Home::Pm),
            _ => match self.alloc(t)? {
                h @ Home::Capacity(_) => return Ok(Some(h)),
                other => {
                    self.unalloc(t, other);
                    return Ok(None);
                }
            },
        };
        if let Some(h) = new {
            t.note_home_taken(h);
            t.note_replacement_taken();
        }
        Ok(new)
    }

    /// Returns a home's slot to its allocator (tenant counters are the caller's).
    pub(super) fn release(&mut self, home: Home) {
        match home {
            Home::Pm(s) => {
                self.pm_slots.release(s);
            }
            Home::Capacity(s) => {
                self.cap_slots.release(s);
            }
            Home::None | Home::Transient => {}
        }
    }

    /// Gives back a home of `t`: its slot and its count in the tenant.
    pub(super) fn unalloc(&mut self, t: &mut Tenant, home: Home) {
        self.release(home);
        t.note_home_returned(home);
    }

    /// Gives every page of `t` a home (for the direct modes, which map homes into the guest):
    /// new homes are zeroed and installed durably. Returns each page's home.
    pub(super) fn ensure_all(&mut self, t: &mut Tenant) -> Result<Vec<Home>, PoolError> {
        let zero = vec![0u8; PAGE_SIZE as usize];
        let mut fresh = Vec::new();
        for vpn in 0..t.pages() {
            if matches!(t.home(vpn), Home::None | Home::Transient) {
                let home = self.alloc(t)?;
                let (dev, off) = self.location(home).expect("allocated home");
                dev.write_flush(off, &zero)?;
                fresh.push((vpn, home));
            }
        }
        self.drain()?;
        for &(vpn, home) in &fresh {
            t.store_map_word(&*self.pm, vpn, home)?;
        }
        if !fresh.is_empty() {
            self.pm.flush(t.map_word_off(0), t.pages() * 8)?;
            self.pm.drain()?;
        }
        for (vpn, home) in fresh {
            t.set_home(vpn, home);
        }
        Ok(t.homes().to_vec())
    }
}

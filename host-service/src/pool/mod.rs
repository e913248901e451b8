//! The PM pool: one file of host PM shared by several VMs (tenants), plus a capacity file on disk
//! for homes beyond the PM. This module creates pools, adds and removes tenants, and keeps the
//! in-DRAM copy of every tenant's page map; `crate::epoch` commits, persists and recovers.

pub mod alloc;
pub mod layout;
mod verify;

use std::sync::Arc;

use vpm_abi::PAGE_SIZE;

use crate::pm::{write_durable, PmDevice, PmError};
use alloc::SlotAllocator;
use layout::{Home, LayoutError, PoolHeader, TenantDesc, NAME_LEN, TENANT_DESC_SIZE};

pub use verify::RecoveryReport;

/// Errors of the pool and the epoch machinery.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// A device failed.
    #[error(transparent)]
    Device(#[from] PmError),
    /// The pool's metadata is damaged; nothing was changed.
    #[error("corrupt pool, refusing to open it (nothing was changed): {0}")]
    Corrupt(LayoutError),
    /// The pool was written by another format version.
    #[error("{0}")]
    Version(LayoutError),
    /// The file is not a VPM pool.
    #[error("{0}")]
    NotAPool(LayoutError),
    /// Bad creation or tenant parameters.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Every tenant slot is taken.
    #[error("the pool has no free tenant slot (max {0})")]
    NoTenantSlot(u32),
    /// The metadata region has no room for the tenant's page map and log.
    #[error("the pool's metadata region has no room for {0} more bytes")]
    NoMetaSpace(u64),
    /// No tenant with this id.
    #[error("no tenant {0}")]
    UnknownTenant(u32),
    /// A page number beyond the tenant's vPM.
    #[error("page {vpn} is outside tenant {tenant}'s vPM of {pages} pages")]
    PageOutOfRange {
        /// Tenant id.
        tenant: u32,
        /// Page asked for.
        vpn: u64,
        /// vPM pages.
        pages: u64,
    },
    /// The epoch's changes do not fit in the tenant's redo log; nothing was committed.
    #[error("epoch needs {need} bytes of redo log, tenant has {have}: commit more often")]
    LogFull {
        /// Bytes needed.
        need: u64,
        /// Log size.
        have: u64,
    },
    /// The source of guest pages failed.
    #[error("reading guest page {vpn}: {why}")]
    Source {
        /// Page.
        vpn: u64,
        /// Reason.
        why: String,
    },
}

impl From<LayoutError> for PoolError {
    fn from(e: LayoutError) -> Self {
        match e {
            LayoutError::NotAPool(_) => PoolError::NotAPool(e),
            LayoutError::Version { .. } => PoolError::Version(e),
            _ => PoolError::Corrupt(e),
        }
    }
}

/// Geometry of a new pool.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Pool file size in bytes (must already be the device's size).
    pub size: u64,
    /// Tenant slots.
    pub max_tenants: u32,
    /// Bytes reserved for tenants' commit pages, page maps and redo logs.
    pub meta_bytes: u64,
    /// Identity stamped into the header.
    pub pool_id: u64,
}

/// Parameters of a new tenant.
#[derive(Clone, Debug)]
pub struct TenantConfig {
    /// Name for reports (at most 32 bytes).
    pub name: String,
    /// vPM size in bytes (whole pages).
    pub vpm_bytes: u64,
    /// PM homes the tenant may hold, in bytes; pages beyond get capacity homes.
    pub pm_quota_bytes: u64,
    /// DRAM the VMM may use for the tenant's working set, in bytes.
    pub dram_budget_bytes: u64,
    /// Redo-log size in bytes: the most changed data one epoch may commit.
    pub log_bytes: u64,
}

/// Counters of one tenant's durability work.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Epochs committed.
    pub epochs: u64,
    /// Pages whose changes an epoch committed.
    pub committed_pages: u64,
    /// Bytes of redo log written.
    pub log_bytes: u64,
    /// Persist batches served.
    pub persists: u64,
    /// Bytes the guest asked to persist.
    pub persist_requested_bytes: u64,
    /// Bytes written to homes in PM.
    pub pm_home_bytes: u64,
    /// Bytes written to homes in the capacity file.
    pub capacity_home_bytes: u64,
    /// Pages marked transient (cumulative).
    pub transient_marks: u64,
}

/// A tenant as the running pool knows it.
#[derive(Debug)]
pub struct Tenant {
    /// The durable descriptor.
    pub desc: TenantDesc,
    /// Every page's home (the DRAM copy of the page map).
    pub(crate) homes: Vec<Home>,
    /// Lines written to each page's home so far (endurance).
    pub(crate) write_lines: Vec<u32>,
    /// Last committed epoch.
    pub(crate) epoch: u64,
    /// Sequence of the latest commit record.
    pub(crate) seq: u64,
    /// Which record slot (0 or 1) holds the latest commit record.
    pub(crate) latest_slot: u64,
    pub(crate) pm_homes: u64,
    pub(crate) capacity_homes: u64,
    pub(crate) stats: TenantStats,
}

impl Tenant {
    /// Last committed epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// vPM pages.
    pub fn pages(&self) -> u64 {
        self.desc.vpm_pages
    }
    /// Home of page `vpn` (callers check the range).
    pub fn home(&self, vpn: u64) -> Home {
        self.homes[vpn as usize]
    }
    /// Lines written to page `vpn`'s home so far.
    pub fn write_lines(&self, vpn: u64) -> u32 {
        self.write_lines[vpn as usize]
    }
    /// Homes held in PM and in the capacity file.
    pub fn home_counts(&self) -> (u64, u64) {
        (self.pm_homes, self.capacity_homes)
    }
    /// Counters.
    pub fn stats(&self) -> TenantStats {
        self.stats
    }
}

/// An open pool.
#[derive(Debug)]
pub struct Pool {
    pub(crate) pm: Arc<dyn PmDevice>,
    pub(crate) cap: Arc<dyn PmDevice>,
    pub(crate) header: PoolHeader,
    pub(crate) tenants: Vec<Option<Tenant>>,
    pub(crate) pm_slots: SlotAllocator,
    pub(crate) cap_slots: SlotAllocator,
}

/// Page-aligned size of a tenant's page map.
pub(crate) fn map_bytes(vpm_pages: u64) -> u64 {
    (vpm_pages * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

impl Pool {
    /// Formats `pm` as an empty pool (the capacity device starts empty).
    pub fn create(
        pm: Arc<dyn PmDevice>,
        cap: Arc<dyn PmDevice>,
        cfg: &PoolConfig,
    ) -> Result<Pool, PoolError> {
        if cfg.size > pm.size() || cfg.max_tenants == 0 || cfg.max_tenants > 1024 {
            return Err(PoolError::Config(format!(
                "pool of {} bytes with {} tenants on a device of {} bytes",
                cfg.size,
                cfg.max_tenants,
                pm.size()
            )));
        }
        let table_bytes =
            (cfg.max_tenants as u64 * TENANT_DESC_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let meta_off = PAGE_SIZE + table_bytes;
        let meta_bytes = cfg.meta_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let data_off = meta_off + meta_bytes;
        if data_off >= cfg.size {
            return Err(PoolError::Config(format!(
                "metadata ({meta_bytes} bytes) leaves no room for data in {} bytes",
                cfg.size
            )));
        }
        let header = PoolHeader {
            total_bytes: cfg.size,
            max_tenants: cfg.max_tenants,
            table_off: PAGE_SIZE,
            meta_off,
            meta_bytes,
            data_off,
            data_pages: (cfg.size - data_off) / PAGE_SIZE,
            pool_id: cfg.pool_id,
        };
        // The table first, the header last: a crash in between leaves "not a pool".
        write_durable(&*pm, 0, &[0u8; PAGE_SIZE as usize])?;
        write_durable(&*pm, PAGE_SIZE, &vec![0u8; table_bytes as usize])?;
        write_durable(&*pm, 0, &header.encode())?;
        tracing::info!(
            size = cfg.size,
            data_pages = header.data_pages,
            "created PM pool"
        );
        Ok(Pool {
            pm_slots: SlotAllocator::new(header.data_pages),
            cap_slots: SlotAllocator::new(cap.size() / PAGE_SIZE),
            tenants: (0..cfg.max_tenants).map(|_| None).collect(),
            pm,
            cap,
            header,
        })
    }

    /// Opens a pool after a clean stop or a crash: verifies every piece of metadata (refusing a
    /// damaged pool without writing anything), then finishes any committed epoch whose redo log
    /// was not yet applied.
    pub fn open(
        pm: Arc<dyn PmDevice>,
        cap: Arc<dyn PmDevice>,
    ) -> Result<(Pool, RecoveryReport), PoolError> {
        verify::open(pm, cap)
    }

    /// The pool's geometry.
    pub fn header(&self) -> &PoolHeader {
        &self.header
    }

    /// The PM device.
    pub fn pm(&self) -> &Arc<dyn PmDevice> {
        &self.pm
    }

    /// The capacity device.
    pub fn capacity(&self) -> &Arc<dyn PmDevice> {
        &self.cap
    }

    /// PM homes free in the pool.
    pub fn free_pm_pages(&self) -> u64 {
        self.pm_slots.free()
    }

    /// Ids of the tenants present.
    pub fn tenant_ids(&self) -> Vec<u32> {
        (0..self.tenants.len() as u32)
            .filter(|&i| self.tenants[i as usize].is_some())
            .collect()
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: u32) -> Result<&Tenant, PoolError> {
        self.tenants
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(PoolError::UnknownTenant(id))
    }

    pub(crate) fn tenant_mut(&mut self, id: u32) -> Result<&mut Tenant, PoolError> {
        self.tenants
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(PoolError::UnknownTenant(id))
    }

    /// Finds a tenant by name.
    pub fn tenant_by_name(&self, name: &str) -> Option<u32> {
        self.tenants
            .iter()
            .flatten()
            .find(|t| t.desc.name_str() == name)
            .map(|t| t.desc.id)
    }

    /// Adds a tenant with an all-zero vPM at epoch 0.
    pub fn add_tenant(&mut self, cfg: &TenantConfig) -> Result<u32, PoolError> {
        let desc = self.plan_tenant(cfg)?;
        let map_len = map_bytes(desc.vpm_pages);
        // Commit page and page map must read as "never written" before the tenant exists.
        self.pm
            .write(desc.commit_off, &vec![0u8; (PAGE_SIZE + map_len) as usize])?;
        self.pm.flush(desc.commit_off, PAGE_SIZE + map_len)?;
        let slot_off = self.header.table_off + desc.id as u64 * TENANT_DESC_SIZE;
        let body = desc.encode_body();
        self.pm.write(slot_off + 8, &body)?;
        self.pm.flush(slot_off + 8, body.len() as u64)?;
        self.pm.drain()?;
        self.pm
            .write_u64(slot_off, TenantDesc::active_word(&body))?;
        self.pm.flush(slot_off, 8)?;
        self.pm.drain()?;
        tracing::info!(tenant = desc.id, name = %cfg.name, pages = desc.vpm_pages, "added tenant");
        let id = desc.id;
        self.tenants[id as usize] = Some(Tenant::fresh(desc));
        Ok(id)
    }

    /// Removes a tenant and frees its homes (its data is gone).
    pub fn remove_tenant(&mut self, id: u32) -> Result<(), PoolError> {
        let slot_off = self.header.table_off + id as u64 * TENANT_DESC_SIZE;
        self.tenant(id)?;
        write_durable(&*self.pm, slot_off, &0u64.to_le_bytes())?;
        let t = self.tenants[id as usize].take().expect("checked");
        for home in t.homes {
            self.release_home(home);
        }
        Ok(())
    }

    fn plan_tenant(&self, cfg: &TenantConfig) -> Result<TenantDesc, PoolError> {
        let bad = |why: String| Err(PoolError::Config(why));
        if cfg.vpm_bytes == 0 || cfg.vpm_bytes % PAGE_SIZE != 0 {
            return bad(format!("vPM size {} is not whole pages", cfg.vpm_bytes));
        }
        if cfg.name.len() > NAME_LEN || self.tenant_by_name(&cfg.name).is_some() {
            return bad(format!("tenant name {:?} too long or taken", cfg.name));
        }
        let log_bytes = (cfg.log_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE).max(2 * PAGE_SIZE);
        let id = self
            .tenants
            .iter()
            .position(Option::is_none)
            .ok_or(PoolError::NoTenantSlot(self.header.max_tenants))? as u32;
        let vpm_pages = cfg.vpm_bytes / PAGE_SIZE;
        let need = TenantDesc::meta_pages(vpm_pages, log_bytes) * PAGE_SIZE;
        let commit_off = self
            .find_meta_gap(need)
            .ok_or(PoolError::NoMetaSpace(need))?;
        let mut name = [0u8; NAME_LEN];
        name[..cfg.name.len()].copy_from_slice(cfg.name.as_bytes());
        let map_off = commit_off + PAGE_SIZE;
        Ok(TenantDesc {
            id,
            name,
            vpm_pages,
            pm_quota_pages: cfg.pm_quota_bytes / PAGE_SIZE,
            dram_budget_pages: cfg.dram_budget_bytes / PAGE_SIZE,
            commit_off,
            map_off,
            log_off: map_off + map_bytes(vpm_pages),
            log_bytes,
        })
    }

    /// First gap of `need` bytes in the metadata region between existing tenants.
    fn find_meta_gap(&self, need: u64) -> Option<u64> {
        let mut used: Vec<(u64, u64)> = self
            .tenants
            .iter()
            .flatten()
            .map(|t| t.desc.meta_range())
            .collect();
        used.sort_unstable();
        let mut cursor = self.header.meta_off;
        for (start, end) in used {
            if start >= cursor + need {
                return Some(cursor);
            }
            cursor = cursor.max(end);
        }
        let end = self.header.meta_off + self.header.meta_bytes;
        (cursor + need <= end).then_some(cursor)
    }

    /// Device and byte offset of a home.
    pub(crate) fn home_location(&self, home: Home) -> Option<(&dyn PmDevice, u64)> {
        match home {
            Home::Pm(s) => Some((&*self.pm, self.header.data_off + s * PAGE_SIZE)),
            Home::Capacity(s) => Some((&*self.cap, s * PAGE_SIZE)),
            Home::None | Home::Transient => None,
        }
    }

    /// Byte offset in the pool file of a PM home (the VMM maps it into guests in direct mode).
    pub fn pm_home_offset(&self, slot: u64) -> u64 {
        self.header.data_off + slot * PAGE_SIZE
    }

    /// Reads a page's durable content (zeros for pages without a home).
    pub fn read_home(&self, tenant: u32, vpn: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        let t = self.tenant(tenant)?;
        check_vpn(t, vpn)?;
        match self.home_location(t.homes[vpn as usize]) {
            Some((dev, off)) => dev.read(off, &mut buf[..PAGE_SIZE as usize])?,
            None => buf[..PAGE_SIZE as usize].fill(0),
        }
        Ok(())
    }

    /// Takes a free home for a page of `tenant`: PM while its quota and the pool allow, else a
    /// slot in the capacity file (grown as needed).
    pub(crate) fn alloc_home(&mut self, tenant: u32) -> Result<Home, PoolError> {
        let t = self.tenant(tenant)?;
        if t.pm_homes < t.desc.pm_quota_pages {
            if let Some(slot) = self.pm_slots.alloc() {
                self.tenant_mut(tenant)?.pm_homes += 1;
                return Ok(Home::Pm(slot));
            }
        }
        if self.cap_slots.free() == 0 {
            let grown = (self.cap_slots.slots() * 2).max(256);
            self.cap.grow(grown * PAGE_SIZE)?;
            self.cap_slots.grow(grown);
        }
        let slot = self.cap_slots.alloc().expect("grown above");
        self.tenant_mut(tenant)?.capacity_homes += 1;
        Ok(Home::Capacity(slot))
    }

    /// Returns a home to its allocator (tenant counters are the caller's).
    pub(crate) fn release_home(&mut self, home: Home) {
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

    /// Gives back a home taken by [`Pool::alloc_home`] that was never installed.
    pub(crate) fn unalloc_home(&mut self, tenant: u32, home: Home) {
        self.release_home(home);
        if let Ok(t) = self.tenant_mut(tenant) {
            match home {
                Home::Pm(_) => t.pm_homes -= 1,
                Home::Capacity(_) => t.capacity_homes -= 1,
                _ => {}
            }
        }
    }
}

/// Checks `vpn` against the tenant's size.
pub(crate) fn check_vpn(t: &Tenant, vpn: u64) -> Result<(), PoolError> {
    if vpn >= t.desc.vpm_pages {
        return Err(PoolError::PageOutOfRange {
            tenant: t.desc.id,
            vpn,
            pages: t.desc.vpm_pages,
        });
    }
    Ok(())
}

impl Tenant {
    pub(crate) fn fresh(desc: TenantDesc) -> Tenant {
        let pages = desc.vpm_pages as usize;
        Tenant {
            desc,
            homes: vec![Home::None; pages],
            write_lines: vec![0; pages],
            epoch: 0,
            seq: 0,
            latest_slot: 1,
            pm_homes: 0,
            capacity_homes: 0,
            stats: TenantStats::default(),
        }
    }
}

impl Pool {
    /// Gives every page of `tenant` a home (for the direct modes, which map homes into the
    /// guest): new homes are zeroed and installed durably. Returns each page's home.
    pub fn ensure_homes(&mut self, tenant: u32) -> Result<Vec<Home>, PoolError> {
        let pages = self.tenant(tenant)?.pages();
        let zero = vec![0u8; PAGE_SIZE as usize];
        let mut fresh = Vec::new();
        for vpn in 0..pages {
            if matches!(
                self.tenant(tenant)?.homes[vpn as usize],
                Home::None | Home::Transient
            ) {
                let home = self.alloc_home(tenant)?;
                let (dev, off) = self.home_location(home).expect("allocated home");
                dev.write_flush(off, &zero)?;
                fresh.push((vpn, home));
            }
        }
        self.pm.drain()?;
        self.cap.drain()?;
        let map_off = self.tenant(tenant)?.desc.map_off;
        for &(vpn, home) in &fresh {
            self.pm
                .write_u64(map_off + vpn * 8, home.encode(tenant, vpn))?;
        }
        if !fresh.is_empty() {
            self.pm.flush(map_off, pages * 8)?;
            self.pm.drain()?;
        }
        let t = self.tenant_mut(tenant)?;
        for (vpn, home) in fresh {
            t.homes[vpn as usize] = home;
        }
        Ok(t.homes.clone())
    }

    /// The file descriptor and file offset behind a home (to map it into a guest).
    pub fn home_fd_offset(&self, home: Home) -> Option<(std::os::fd::RawFd, u64)> {
        match home {
            Home::Pm(s) => Some((self.pm.raw_fd()?, self.header.data_off + s * PAGE_SIZE)),
            Home::Capacity(s) => Some((self.cap.raw_fd()?, s * PAGE_SIZE)),
            Home::None | Home::Transient => None,
        }
    }
}

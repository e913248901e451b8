//! The PM pool: one file of host PM shared by several VMs (tenants), plus a capacity file on disk
//! for homes beyond the PM, and everything that makes tenants' vPM durable.
//!
//! [`Pool`] creates and opens pools, adds and removes tenants, and serves the durability
//! operations: epoch commits ([`Pool::commit_epoch`]), persist ranges ([`Pool::persist`]),
//! transient marks ([`Pool::set_transient`]), and crash recovery when a pool opens
//! ([`Pool::open`]).
//!
//! Its parts, each using only parts listed before it (no import cycles; outside tests none uses this file):
//! 1. `media` (the on-PM layout: header, tenant table, commit records, page-map words, redo-log
//!    records, and their checks), `alloc` (slot bitmaps), `source` ([`PageSource`]), `lines`
//!    (line-granular diffs and writes);
//! 2. `error` ([`PoolError`], [`PoolError::hint_result`]);
//! 3. `tenant` ([`Tenant`] and its page map in DRAM);
//! 4. `homes` (home allocation and location), `table` (the tenant table);
//! 5. `redo_log` (an epoch's redo log and its apply);
//! 6. `commit`, `persist`, `transient`, `recovery`: the durability operations, which this file
//!    serves as [`Pool`] methods.

pub mod alloc;
mod commit;
mod error;
mod homes;
mod lines;
pub mod media;
mod persist;
mod recovery;
mod redo_log;
mod reserve;
mod source;
mod table;
mod tenant;
mod transient;

use std::os::fd::RawFd;
use std::sync::Arc;

use vpm_abi::PAGE_SIZE;

use crate::pm::{write_durable, PmDevice};
use homes::HomeStore;
use media::{PoolHeader, TENANT_DESC_SIZE};
use table::TenantTable;

pub use commit::{ChangedPage, CommitStats};
pub use error::{ConfigError, PoolError};
pub use media::Home;
pub use persist::PersistStats;
pub use recovery::{RecoveryReport, TenantRecovery};
pub use reserve::ReservedHome;
pub use source::{PageSource, SourceError};
pub use table::TenantConfig;
pub use tenant::{Tenant, TenantStats};

/// Most tenant slots a pool may have.
const MAX_TENANTS: u32 = 1024;

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

/// Stores the header's magic word atomically and makes it durable.
fn write_magic(pm: &dyn PmDevice, magic: u64) -> Result<(), PoolError> {
    pm.write_u64(0, magic)?;
    pm.flush(0, 8)?;
    pm.drain()?;
    Ok(())
}

/// An open pool.
#[derive(Debug)]
pub struct Pool {
    header: PoolHeader,
    homes: HomeStore,
    tenants: TenantTable,
}

impl Pool {
    /// Formats `pm` as an empty pool (the capacity device starts empty).
    pub fn create(
        pm: Arc<dyn PmDevice>,
        cap: Arc<dyn PmDevice>,
        cfg: &PoolConfig,
    ) -> Result<Pool, PoolError> {
        if cfg.size > pm.size() || cfg.max_tenants == 0 || cfg.max_tenants > MAX_TENANTS {
            return Err(ConfigError::PoolGeometry {
                size: cfg.size,
                max_tenants: cfg.max_tenants,
                max_allowed: MAX_TENANTS,
                device: pm.size(),
            }
            .into());
        }
        let table_bytes =
            (cfg.max_tenants as u64 * TENANT_DESC_SIZE).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let meta_off = PAGE_SIZE + table_bytes;
        let meta_bytes = cfg.meta_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let data_off = meta_off + meta_bytes;
        if data_off >= cfg.size {
            return Err(ConfigError::NoDataRoom {
                meta_bytes,
                size: cfg.size,
            }
            .into());
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
        // The magic word goes first and comes back last, each time in one atomic 8-byte store:
        // a crash in between, even one that tears the header, leaves "not a pool".
        write_magic(&*pm, 0)?;
        write_durable(&*pm, 0, &[0u8; PAGE_SIZE as usize])?;
        write_durable(&*pm, PAGE_SIZE, &vec![0u8; table_bytes as usize])?;
        let encoded = header.encode();
        write_durable(&*pm, 8, &encoded[8..])?;
        write_magic(&*pm, media::POOL_MAGIC)?;
        tracing::info!(
            size = cfg.size,
            data_pages = header.data_pages,
            "created PM pool"
        );
        Ok(Pool {
            homes: HomeStore::new(pm, cap, &header),
            tenants: TenantTable::empty(cfg.max_tenants),
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
        let r = recovery::recover(pm, cap)?;
        let pool = Pool {
            header: r.header,
            homes: r.homes,
            tenants: r.tenants,
        };
        Ok((pool, r.report))
    }

    /// The pool's geometry.
    pub fn header(&self) -> &PoolHeader {
        &self.header
    }

    /// The PM device.
    pub fn pm(&self) -> &Arc<dyn PmDevice> {
        self.homes.pm()
    }

    /// The capacity device.
    pub fn capacity(&self) -> &Arc<dyn PmDevice> {
        self.homes.cap()
    }

    /// PM homes free in the pool.
    pub fn free_pm_pages(&self) -> u64 {
        self.homes.free_pm()
    }

    /// Ids of the tenants present.
    pub fn tenant_ids(&self) -> Vec<u32> {
        self.tenants.ids()
    }

    /// The tenant with id `id`.
    pub fn tenant(&self, id: u32) -> Result<&Tenant, PoolError> {
        self.tenants.get(id)
    }

    /// Finds a tenant by name.
    pub fn tenant_by_name(&self, name: &str) -> Option<u32> {
        self.tenants.by_name(name)
    }

    /// Adds a tenant with an all-zero vPM at epoch 0.
    pub fn add_tenant(&mut self, cfg: &TenantConfig) -> Result<u32, PoolError> {
        self.tenants.add(&**self.homes.pm(), &self.header, cfg)
    }

    /// Removes a tenant and frees its homes (its data is gone).
    pub fn remove_tenant(&mut self, id: u32) -> Result<(), PoolError> {
        let t = self.tenants.remove(&**self.homes.pm(), &self.header, id)?;
        for home in t.into_homes() {
            self.homes.release(home);
        }
        Ok(())
    }

    /// Byte offset in the pool file of a PM home (the VMM maps it into guests in direct mode).
    pub fn pm_home_offset(&self, slot: u64) -> u64 {
        self.homes.pm_offset(slot)
    }

    /// The file descriptor and file offset behind a home (to map it into a guest).
    pub fn home_fd_offset(&self, home: Home) -> Option<(RawFd, u64)> {
        self.homes.fd_offset(home)
    }

    /// Reads a page's durable content into `buf` (zeros for pages without a home).
    pub fn read_home(&self, tenant: u32, vpn: u64, buf: &mut [u8]) -> Result<(), PoolError> {
        let t = self.tenants.get(tenant)?;
        t.check_vpn(vpn)?;
        self.homes.read(t.home(vpn), buf)
    }

    /// Gives every page of `tenant` a home (for the direct modes, which map homes into the
    /// guest): new homes are zeroed and installed durably. Returns each page's home.
    pub fn ensure_homes(&mut self, tenant: u32) -> Result<Vec<Home>, PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        self.homes.ensure_all(t)
    }

    /// Commits epoch k+1 of `tenant`: the content `source` shows for every page in `dirty` (pages
    /// not listed are unchanged since epoch k). Transient pages are skipped. On any error nothing
    /// is committed and the tenant stays at epoch k.
    pub fn commit_epoch(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<CommitStats, PoolError> {
        self.commit_epoch_changed(tenant, dirty, source)
            .map(|(stats, _)| stats)
    }

    /// [`Pool::commit_epoch`], also returning the pages whose content changed (ascending), each
    /// with its changed cache lines: the dirty pages that were not transient and differed from
    /// their homes.
    pub fn commit_epoch_changed(
        &mut self,
        tenant: u32,
        dirty: &[u64],
        source: &(impl PageSource + ?Sized),
    ) -> Result<(CommitStats, Vec<ChangedPage>), PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        commit::commit_epoch(&mut self.homes, t, dirty, source)
    }

    /// Takes a fresh PM home for page `vpn` of `tenant`, for the caller to fill with the whole
    /// page (streaming stores, fenced) and hand to the next commit through
    /// [`PageSource::written_home`]; `None` if the page has no PM home or PM is not mapped here.
    /// Only a commit installs or gives back a reserved home.
    pub fn reserve_home(
        &mut self,
        tenant: u32,
        vpn: u64,
    ) -> Result<Option<ReservedHome>, PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        reserve::reserve(&mut self.homes, t, vpn)
    }

    /// Makes every range durable (P1) with one drain for the whole batch (P5). Ranges are byte
    /// ranges `(offset, len)` of the tenant's vPM; the caller has checked them against the region
    /// (`vpm_abi::VpmRegion`). Only lines that differ from the home are written. Lines of
    /// transient pages are skipped: they never reach PM.
    pub fn persist(
        &mut self,
        tenant: u32,
        ranges: &[(u64, u64)],
        source: &(impl PageSource + ?Sized),
    ) -> Result<PersistStats, PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        persist::persist(&mut self.homes, t, ranges, source)
    }

    /// Marks pages `[first, first + count)` transient (P3): their homes are freed, they never
    /// reach PM, and they read as zeros after a crash. Durable when this returns. Returns the
    /// pages whose mark changed.
    pub fn set_transient(&mut self, tenant: u32, first: u64, count: u64) -> Result<u64, PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        transient::mark_pages(&mut self.homes, t, first, count, Home::Transient)
    }

    /// Marks pages persistent again: they have no home until the next persist or epoch, so a
    /// crash before that shows zeros (their last committed content).
    pub fn set_persistent(
        &mut self,
        tenant: u32,
        first: u64,
        count: u64,
    ) -> Result<u64, PoolError> {
        let t = self.tenants.get_mut(tenant)?;
        transient::mark_pages(&mut self.homes, t, first, count, Home::None)
    }
}

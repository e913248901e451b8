//! The tenant table: which tenants exist, where each one's metadata goes in the metadata region,
//! and adding or removing a tenant durably.

use vpm_abi::PAGE_SIZE;

use super::error::{ConfigError, PoolError};
use super::media::{PoolHeader, TenantDesc, NAME_LEN, TENANT_DESC_SIZE};
use super::tenant::Tenant;
use crate::pm::{write_durable, PmDevice};

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

/// Page-aligned size of a tenant's page map.
fn map_bytes(vpm_pages: u64) -> u64 {
    (vpm_pages * 8).div_ceil(PAGE_SIZE) * PAGE_SIZE
}

/// The tenants of an open pool, by slot.
#[derive(Debug)]
pub(super) struct TenantTable {
    slots: Vec<Option<Tenant>>,
}

impl TenantTable {
    /// A table of `max_tenants` free slots.
    pub(super) fn empty(max_tenants: u32) -> TenantTable {
        TenantTable {
            slots: (0..max_tenants).map(|_| None).collect(),
        }
    }

    /// Puts a tenant into its slot (recovery).
    pub(super) fn insert(&mut self, t: Tenant) {
        let id = t.id() as usize;
        self.slots[id] = Some(t);
    }

    /// The tenant with id `id`.
    pub(super) fn get(&self, id: u32) -> Result<&Tenant, PoolError> {
        self.slots
            .get(id as usize)
            .and_then(Option::as_ref)
            .ok_or(PoolError::UnknownTenant(id))
    }

    /// The tenant with id `id`, to change.
    pub(super) fn get_mut(&mut self, id: u32) -> Result<&mut Tenant, PoolError> {
        self.slots
            .get_mut(id as usize)
            .and_then(Option::as_mut)
            .ok_or(PoolError::UnknownTenant(id))
    }

    /// Ids of the tenants present.
    pub(super) fn ids(&self) -> Vec<u32> {
        self.iter().map(Tenant::id).collect()
    }

    /// The tenants present.
    pub(super) fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.slots.iter().flatten()
    }

    /// Finds a tenant by name.
    pub(super) fn by_name(&self, name: &str) -> Option<u32> {
        self.iter()
            .find(|t| t.desc().name_str() == name)
            .map(Tenant::id)
    }

    /// Adds a tenant with an all-zero vPM at epoch 0: its commit page and page map are zeroed,
    /// then its descriptor is written, then activated by the state word.
    pub(super) fn add(
        &mut self,
        pm: &dyn PmDevice,
        header: &PoolHeader,
        cfg: &TenantConfig,
    ) -> Result<u32, PoolError> {
        let desc = self.plan(header, cfg)?;
        let map_len = map_bytes(desc.vpm_pages);
        // Commit page and page map must read as "never written" before the tenant exists.
        pm.write(desc.commit_off, &vec![0u8; (PAGE_SIZE + map_len) as usize])?;
        pm.flush(desc.commit_off, PAGE_SIZE + map_len)?;
        let slot_off = header.table_off + desc.id as u64 * TENANT_DESC_SIZE;
        let body = desc.encode_body();
        pm.write(slot_off + 8, &body)?;
        pm.flush(slot_off + 8, body.len() as u64)?;
        pm.drain()?;
        pm.write_u64(slot_off, TenantDesc::active_word(&body))?;
        pm.flush(slot_off, 8)?;
        pm.drain()?;
        tracing::info!(tenant = desc.id, name = %cfg.name, pages = desc.vpm_pages, "added tenant");
        let id = desc.id;
        self.slots[id as usize] = Some(Tenant::fresh(desc));
        Ok(id)
    }

    /// Removes tenant `id` durably (its state word is cleared) and hands it back, so the caller
    /// can free its homes.
    pub(super) fn remove(
        &mut self,
        pm: &dyn PmDevice,
        header: &PoolHeader,
        id: u32,
    ) -> Result<Tenant, PoolError> {
        self.get(id)?;
        let slot_off = header.table_off + id as u64 * TENANT_DESC_SIZE;
        write_durable(pm, slot_off, &0u64.to_le_bytes())?;
        Ok(self.slots[id as usize].take().expect("checked"))
    }

    /// The descriptor of a new tenant: a free slot and a gap in the metadata region.
    fn plan(&self, header: &PoolHeader, cfg: &TenantConfig) -> Result<TenantDesc, PoolError> {
        if cfg.vpm_bytes == 0 || cfg.vpm_bytes % PAGE_SIZE != 0 {
            return Err(ConfigError::VpmNotWholePages(cfg.vpm_bytes).into());
        }
        if cfg.name.len() > NAME_LEN {
            return Err(ConfigError::NameTooLong {
                name: cfg.name.clone(),
                max: NAME_LEN,
            }
            .into());
        }
        if self.by_name(&cfg.name).is_some() {
            return Err(ConfigError::NameTaken(cfg.name.clone()).into());
        }
        let log_bytes = (cfg.log_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE).max(2 * PAGE_SIZE);
        let id = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(PoolError::NoTenantSlot(header.max_tenants))? as u32;
        let vpm_pages = cfg.vpm_bytes / PAGE_SIZE;
        let need = TenantDesc::meta_pages(vpm_pages, log_bytes) * PAGE_SIZE;
        let commit_off = self
            .find_meta_gap(header, need)
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
    fn find_meta_gap(&self, header: &PoolHeader, need: u64) -> Option<u64> {
        let mut used: Vec<(u64, u64)> = self.iter().map(|t| t.desc().meta_range()).collect();
        used.sort_unstable();
        let mut cursor = header.meta_off;
        for (start, end) in used {
            if start >= cursor + need {
                return Some(cursor);
            }
            cursor = cursor.max(end);
        }
        let end = header.meta_off + header.meta_bytes;
        (cursor + need <= end).then_some(cursor)
    }
}

//! Opening a pool: verify everything first, change nothing unless all of it is sound, then finish
//! committed-but-unapplied epochs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vpm_abi::PAGE_SIZE;

use super::alloc::SlotAllocator;
use super::layout::{
    CommitRecord, Home, LayoutError, PoolHeader, TenantDesc, APPLIED_WORD_OFF, COMMIT_RECORD_SIZE,
    HEADER_BYTES, LOG_NEW_HOME, TENANT_DESC_SIZE,
};
use super::{Pool, PoolError, Tenant};
use crate::epoch::log::{apply, RedoLog};
use crate::pm::{write_durable, PmDevice, PmError};

/// What recovery found and did, per tenant.
#[derive(Clone, Debug, Default)]
pub struct RecoveryReport {
    /// One line per tenant.
    pub tenants: Vec<TenantRecovery>,
    /// Time to verify and recover the whole pool.
    pub elapsed: Duration,
}

/// Recovery of one tenant.
#[derive(Clone, Debug, Default)]
pub struct TenantRecovery {
    /// Tenant id.
    pub id: u32,
    /// Tenant name.
    pub name: String,
    /// The committed epoch the tenant's vPM now shows.
    pub epoch: u64,
    /// Redo-log records applied because the crash came between commit and apply.
    pub replayed_records: usize,
    /// Homes in PM and in the capacity file.
    pub homes: (u64, u64),
    /// Transient pages (they read as zeros).
    pub transient_pages: u64,
    /// Observations, e.g. an unreadable newer commit record treated as an interrupted commit.
    pub notes: Vec<String>,
}

fn corrupt(what: String, why: String) -> PoolError {
    PoolError::Corrupt(LayoutError::Invalid { what, why })
}

fn read_vec(dev: &dyn PmDevice, off: u64, len: u64) -> Result<Vec<u8>, PoolError> {
    let mut v = vec![0u8; len as usize];
    dev.read(off, &mut v).map_err(|e| match e {
        PmError::OutOfBounds { .. } => corrupt("pool file".into(), format!("truncated: {e}")),
        other => PoolError::Device(other),
    })?;
    Ok(v)
}

/// A tenant verified but not yet recovered.
struct Checked {
    tenant: Tenant,
    pending_log: Option<RedoLog>,
    report: TenantRecovery,
}

pub(super) fn open(
    pm: Arc<dyn PmDevice>,
    cap: Arc<dyn PmDevice>,
) -> Result<(Pool, RecoveryReport), PoolError> {
    let start = Instant::now();
    if pm.size() < HEADER_BYTES as u64 {
        return Err(PoolError::NotAPool(LayoutError::Truncated {
            what: "pool file",
            have: pm.size() as usize,
            need: HEADER_BYTES,
        }));
    }
    let header = PoolHeader::decode(&read_vec(&*pm, 0, HEADER_BYTES as u64)?, pm.size())?;
    let table = read_vec(
        &*pm,
        header.table_off,
        header.max_tenants as u64 * TENANT_DESC_SIZE,
    )?;
    let mut pm_slots = SlotAllocator::new(header.data_pages);
    let mut cap_slots = SlotAllocator::new(cap.size() / PAGE_SIZE);
    let mut checked = Vec::new();
    for slot in 0..header.max_tenants {
        let at = (slot as u64 * TENANT_DESC_SIZE) as usize;
        let bytes = &table[at..at + TENANT_DESC_SIZE as usize];
        if let Some(desc) = TenantDesc::decode(slot, bytes, &header)? {
            checked.push(check_tenant(&*pm, desc, &mut pm_slots, &mut cap_slots)?);
        }
    }
    check_disjoint(&checked)?;

    // Everything verified: from here on the pool may be written.
    let mut tenants: Vec<Option<Tenant>> = (0..header.max_tenants).map(|_| None).collect();
    let mut report = RecoveryReport::default();
    for mut c in checked {
        if let Some(log) = c.pending_log.take() {
            let applied = apply(&*pm, &*cap, header.data_off, &mut c.tenant, &log)?;
            for old in applied.released {
                match old {
                    Home::Pm(s) => {
                        pm_slots.release(s);
                        c.tenant.pm_homes -= 1;
                    }
                    Home::Capacity(s) => {
                        cap_slots.release(s);
                        c.tenant.capacity_homes -= 1;
                    }
                    Home::None | Home::Transient => {}
                }
            }
            let applied_off = c.tenant.desc.commit_off + APPLIED_WORD_OFF;
            write_durable(&*pm, applied_off, &c.tenant.seq.to_le_bytes())?;
            c.report.replayed_records = log.records.len();
            tracing::info!(
                tenant = c.tenant.desc.id,
                records = log.records.len(),
                "replayed redo log"
            );
        }
        c.report.homes = (c.tenant.pm_homes, c.tenant.capacity_homes);
        report.tenants.push(c.report);
        let id = c.tenant.desc.id as usize;
        tenants[id] = Some(c.tenant);
    }
    report.elapsed = start.elapsed();
    Ok((
        Pool {
            pm,
            cap,
            header,
            tenants,
            pm_slots,
            cap_slots,
        },
        report,
    ))
}

/// Verifies one tenant's commit records, page map and (if not applied) redo log.
fn check_tenant(
    pm: &dyn PmDevice,
    desc: TenantDesc,
    pm_slots: &mut SlotAllocator,
    cap_slots: &mut SlotAllocator,
) -> Result<Checked, PoolError> {
    let id = desc.id;
    let mut report = TenantRecovery {
        id,
        name: desc.name_str(),
        ..Default::default()
    };
    let commit = read_vec(pm, desc.commit_off, APPLIED_WORD_OFF + 8)?;
    let applied = u64::from_le_bytes(commit[APPLIED_WORD_OFF as usize..].try_into().expect("8"));
    let latest = choose_record(&commit, desc.log_bytes, applied, id, &mut report.notes)?;

    let mut tenant = Tenant::fresh(desc);
    let map = read_vec(pm, tenant.desc.map_off, tenant.desc.vpm_pages * 8)?;
    for (vpn, word) in map.chunks_exact(8).enumerate() {
        let word = u64::from_le_bytes(word.try_into().expect("8"));
        let home = Home::decode(word, id, vpn as u64)?;
        claim(home, id, vpn as u64, &mut tenant, pm_slots, cap_slots)?;
        tenant.homes[vpn] = home;
        if home == Home::Transient {
            report.transient_pages += 1;
        }
    }

    let mut pending_log = None;
    if let Some((record, slot)) = latest {
        tenant.epoch = record.epoch;
        tenant.seq = record.seq;
        tenant.latest_slot = slot;
        if applied != record.seq {
            let bytes = read_vec(pm, tenant.desc.log_off, record.log_bytes)?;
            let log = RedoLog::parse(
                bytes,
                record.log_count,
                record.log_crc,
                id,
                tenant.desc.vpm_pages,
            )?;
            for (h, _) in log
                .records
                .iter()
                .filter(|(h, _)| h.flags & LOG_NEW_HOME != 0)
            {
                let home = Home::decode(h.home_word, id, h.vpn)?;
                if tenant.homes[h.vpn as usize] != home {
                    claim(home, id, h.vpn, &mut tenant, pm_slots, cap_slots)?;
                }
            }
            pending_log = Some(log);
        }
    }
    report.epoch = tenant.epoch;
    Ok(Checked {
        tenant,
        pending_log,
        report,
    })
}

/// Picks the latest commit record. An unreadable record is accepted only as the interrupted write
/// of the next commit: the other record is the one the applied word names (or, before the first
/// commit, empty with applied word 0). Anything else is corruption.
fn choose_record(
    commit: &[u8],
    log_capacity: u64,
    applied: u64,
    tenant: u32,
    notes: &mut Vec<String>,
) -> Result<Option<(CommitRecord, u64)>, PoolError> {
    let what = || format!("tenant {tenant} commit records");
    let mut valid = Vec::new();
    let mut broken = Vec::new();
    for slot in 0..2u64 {
        let at = slot as usize * COMMIT_RECORD_SIZE;
        match CommitRecord::decode(&commit[at..at + COMMIT_RECORD_SIZE], log_capacity) {
            Ok(Some(r)) => valid.push((r, slot)),
            Ok(None) => {}
            Err(e) => broken.push(e),
        }
    }
    let latest = valid.iter().copied().max_by_key(|(r, _)| r.seq);
    let latest_seq = latest.map_or(0, |(r, _)| r.seq);
    if let Some(e) = broken.first() {
        if broken.len() == 2 || applied != latest_seq {
            return Err(corrupt(
                what(),
                format!("unreadable record ({e}) while the applied word is {applied}"),
            ));
        }
        notes.push(format!(
            "unreadable newer commit record ignored as an interrupted commit: {e}"
        ));
    }
    if applied > latest_seq || applied + 1 < latest_seq {
        return Err(corrupt(
            what(),
            format!("applied word {applied} does not fit the latest record {latest_seq}"),
        ));
    }
    Ok(latest)
}

/// Claims a home's slot for page `vpn`, refusing slots out of range or claimed twice.
fn claim(
    home: Home,
    tenant_id: u32,
    vpn: u64,
    tenant: &mut Tenant,
    pm_slots: &mut SlotAllocator,
    cap_slots: &mut SlotAllocator,
) -> Result<(), PoolError> {
    let ok = match home {
        Home::Pm(s) => {
            tenant.pm_homes += 1;
            pm_slots.claim(s)
        }
        Home::Capacity(s) => {
            tenant.capacity_homes += 1;
            cap_slots.claim(s)
        }
        Home::None | Home::Transient => true,
    };
    if !ok {
        return Err(corrupt(
            format!("tenant {tenant_id} page {vpn}"),
            format!("home {home:?} is out of range or already used by another page"),
        ));
    }
    Ok(())
}

/// Tenants' metadata regions must not overlap.
fn check_disjoint(checked: &[Checked]) -> Result<(), PoolError> {
    let mut ranges: Vec<(u64, u64, u32)> = checked
        .iter()
        .map(|c| {
            let (a, b) = c.tenant.desc.meta_range();
            (a, b, c.tenant.desc.id)
        })
        .collect();
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            return Err(corrupt(
                "tenant table".into(),
                format!("tenants {} and {} share metadata", w[0].2, w[1].2),
            ));
        }
    }
    Ok(())
}

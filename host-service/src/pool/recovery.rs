//! Opening a pool: verify everything first, change nothing unless all of it is sound, then finish
//! committed-but-unapplied epochs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::PoolError;
use super::homes::HomeStore;
use super::media::{
    CommitRecord, Home, LayoutError, PoolHeader, TenantDesc, APPLIED_WORD_OFF, COMMIT_RECORD_SIZE,
    HEADER_BYTES, LOG_NEW_HOME, TENANT_DESC_SIZE,
};
use super::redo_log::{apply, RedoLog};
use super::table::TenantTable;
use super::tenant::Tenant;
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

/// A pool verified and recovered, in pieces for [`super::Pool`].
pub(super) struct Recovered {
    /// The pool's geometry.
    pub(super) header: PoolHeader,
    /// The devices, with every home in a page map claimed.
    pub(super) homes: HomeStore,
    /// The tenants at their committed epochs.
    pub(super) tenants: TenantTable,
    /// What recovery found and did.
    pub(super) report: RecoveryReport,
}

/// Verifies the pool on `pm` (refusing a damaged pool without writing anything), then finishes
/// any committed epoch whose redo log was not yet applied.
pub(super) fn recover(
    pm: Arc<dyn PmDevice>,
    cap: Arc<dyn PmDevice>,
) -> Result<Recovered, PoolError> {
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
    let mut homes = HomeStore::new(pm, cap, &header);
    let mut checked = Vec::new();
    for slot in 0..header.max_tenants {
        let at = (slot as u64 * TENANT_DESC_SIZE) as usize;
        let bytes = &table[at..at + TENANT_DESC_SIZE as usize];
        if let Some(desc) = TenantDesc::decode(slot, bytes, &header)? {
            checked.push(check_tenant(&mut homes, desc)?);
        }
    }
    check_disjoint(&checked)?;

    // Everything verified: from here on the pool may be written.
    let mut tenants = TenantTable::empty(header.max_tenants);
    let mut report = RecoveryReport::default();
    for mut c in checked {
        if let Some(log) = c.pending_log.take() {
            let applied = apply(&homes, &mut c.tenant, &log)?;
            for old in applied.released {
                homes.unalloc(&mut c.tenant, old);
            }
            let applied_off = c.tenant.desc().commit_off + APPLIED_WORD_OFF;
            write_durable(&**homes.pm(), applied_off, &c.tenant.seq().to_le_bytes())?;
            c.report.replayed_records = log.count();
            tracing::info!(
                tenant = c.tenant.id(),
                records = log.count(),
                "replayed redo log"
            );
        }
        c.report.homes = c.tenant.home_counts();
        report.tenants.push(c.report);
        tenants.insert(c.tenant);
    }
    report.elapsed = start.elapsed();
    Ok(Recovered {
        header,
        homes,
        tenants,
        report,
    })
}

/// Verifies one tenant's commit records, page map and (if not applied) redo log, claiming the
/// homes it names.
fn check_tenant(homes: &mut HomeStore, desc: TenantDesc) -> Result<Checked, PoolError> {
    let id = desc.id;
    let mut report = TenantRecovery {
        id,
        name: desc.name_str(),
        ..Default::default()
    };
    let pm = homes.pm().clone();
    let commit = read_vec(&*pm, desc.commit_off, APPLIED_WORD_OFF + 8)?;
    let applied = u64::from_le_bytes(commit[APPLIED_WORD_OFF as usize..].try_into().expect("8"));
    let latest = choose_record(&commit, desc.log_bytes, applied, id, &mut report.notes)?;

    let mut tenant = Tenant::fresh(desc);
    let map = read_vec(&*pm, tenant.map_word_off(0), tenant.pages() * 8)?;
    for (vpn, word) in map.chunks_exact(8).enumerate() {
        let vpn = vpn as u64;
        let word = u64::from_le_bytes(word.try_into().expect("8"));
        let home = Home::decode(word, id, vpn)?;
        claim(homes, &mut tenant, vpn, home)?;
        tenant.set_home(vpn, home);
        if home == Home::Transient {
            report.transient_pages += 1;
        }
    }

    let mut pending_log = None;
    if let Some((record, slot)) = latest {
        tenant.set_committed(record.seq, record.epoch, slot);
        if applied != record.seq {
            let bytes = read_vec(&*pm, tenant.desc().log_off, record.log_bytes)?;
            let log = RedoLog::parse(
                bytes,
                record.log_count,
                record.log_crc,
                id,
                tenant.pages(),
            )?;
            for h in log.headers().filter(|h| h.flags & LOG_NEW_HOME != 0) {
                let home = Home::decode(h.home_word, id, h.vpn)?;
                if tenant.home(h.vpn) != home {
                    claim(homes, &mut tenant, h.vpn, home)?;
                }
            }
            pending_log = Some(log);
        }
    }
    report.epoch = tenant.epoch();
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
fn claim(homes: &mut HomeStore, tenant: &mut Tenant, vpn: u64, home: Home) -> Result<(), PoolError> {
    if !homes.claim(tenant, home) {
        return Err(corrupt(
            format!("tenant {} page {vpn}", tenant.id()),
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
            let (a, b) = c.tenant.desc().meta_range();
            (a, b, c.tenant.id())
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

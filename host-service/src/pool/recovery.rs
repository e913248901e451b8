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
            let log = RedoLog::parse(bytes, record.log_count, record.log_crc, id, tenant.pages())?;
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
fn claim(
    homes: &mut HomeStore,
    tenant: &mut Tenant,
    vpn: u64,
    home: Home,
) -> Result<(), PoolError> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vpm_abi::PAGE_SIZE;

    use super::*;
    use crate::pm::sim::SimPm;
    use crate::pool::{Pool, PoolConfig, TenantConfig};

    const PAGE: usize = PAGE_SIZE as usize;
    const POOL: u64 = 64 * PAGE_SIZE;

    struct Committed {
        pm: Arc<SimPm>,
        cap: Arc<SimPm>,
        desc: TenantDesc,
        /// Page 1 before and after epoch 2.
        old: Vec<u8>,
        new: Vec<u8>,
        /// Page 1's home offset in the pool file.
        home_off: u64,
    }

    /// A pool with one tenant of 4 pages after two epochs: the first writes every page whole, the
    /// second changes two lines of page 1 (a redo record with payload).
    fn committed() -> Committed {
        let pm = Arc::new(SimPm::new(POOL));
        let cap = Arc::new(SimPm::new(0));
        let cfg = PoolConfig {
            size: POOL,
            max_tenants: 2,
            meta_bytes: 16 * PAGE_SIZE,
            pool_id: 1,
        };
        let mut pool = Pool::create(pm.clone(), cap.clone(), &cfg).unwrap();
        let t = pool
            .add_tenant(&TenantConfig {
                name: "t".into(),
                vpm_bytes: 4 * PAGE_SIZE,
                pm_quota_bytes: 8 * PAGE_SIZE,
                dram_budget_bytes: 0,
                log_bytes: 4 * PAGE_SIZE,
            })
            .unwrap();
        let mut img: Vec<u8> = (0..4 * PAGE).map(|i| (i % 253) as u8 | 1).collect();
        pool.commit_epoch(t, &[0, 1, 2, 3], &img).unwrap();
        let old = img[PAGE..2 * PAGE].to_vec();
        img[PAGE + 5] = 0;
        img[PAGE + 700] = 0;
        let stats = pool.commit_epoch(t, &[1], &img).unwrap();
        assert_eq!((stats.epoch, stats.changed_lines), (2, 2));
        let Home::Pm(slot) = pool.tenant(t).unwrap().home(1) else {
            panic!("page 1 has a PM home");
        };
        Committed {
            home_off: pool.pm_home_offset(slot),
            desc: pool.tenant(t).unwrap().desc().clone(),
            pm,
            cap,
            old,
            new: img[PAGE..2 * PAGE].to_vec(),
        }
    }

    impl Committed {
        /// As if power failed after epoch 2's commit point, before its apply reached PM.
        fn unapply(&self) {
            self.pm.write(self.home_off, &self.old).unwrap();
            let applied = self.desc.commit_off + APPLIED_WORD_OFF;
            self.pm.write(applied, &1u64.to_le_bytes()).unwrap();
        }

        fn open(&self) -> Result<(Pool, RecoveryReport), PoolError> {
            Pool::open(self.pm.clone(), self.cap.clone())
        }

        fn page1(&self, pool: &Pool) -> Vec<u8> {
            let mut buf = vec![0u8; PAGE];
            pool.read_home(self.desc.id, 1, &mut buf).unwrap();
            buf
        }
    }

    #[test]
    fn a_committed_unapplied_log_is_replayed_once() {
        let c = committed();
        c.unapply();
        let (pool, report) = c.open().unwrap();
        assert_eq!(report.tenants[0].replayed_records, 1);
        assert_eq!(report.tenants[0].epoch, 2);
        assert_eq!(c.page1(&pool), c.new);
        drop(pool);
        let (pool, report) = c.open().unwrap();
        assert_eq!(report.tenants[0].replayed_records, 0);
        assert_eq!(c.page1(&pool), c.new);
    }

    #[test]
    fn a_torn_committed_log_is_refused_without_writing() {
        let c = committed();
        c.unapply();
        let at = c.desc.log_off + 70;
        let mut byte = [0u8; 1];
        c.pm.read(at, &mut byte).unwrap();
        c.pm.write(at, &[byte[0] ^ 0x10]).unwrap();
        let before = c.pm.current();
        let err = c.open().expect_err("torn committed log accepted");
        assert!(matches!(err, PoolError::Corrupt(_)), "{err}");
        assert!(err.to_string().contains("redo log"), "{err}");
        assert_eq!(c.pm.current(), before, "the refused pool was changed");
    }

    #[test]
    fn a_torn_log_of_an_applied_epoch_is_ignored() {
        let c = committed();
        let at = c.desc.log_off + 70;
        c.pm.write(at, &[0xff; 8]).unwrap();
        let (pool, report) = c.open().unwrap();
        assert_eq!(report.tenants[0].replayed_records, 0);
        assert_eq!(report.tenants[0].epoch, 2);
        assert_eq!(c.page1(&pool), c.new);
    }

    #[test]
    fn a_torn_newer_commit_record_is_an_interrupted_commit() {
        let c = committed();
        // Epoch 2's record is in slot 1 (epoch 1's in slot 0); tear it and say epoch 1 is applied.
        let rec = c.desc.commit_off + COMMIT_RECORD_SIZE as u64;
        c.pm.write(rec + 8, &[0xff; 4]).unwrap();
        c.unapply();
        let (pool, report) = c.open().unwrap();
        assert_eq!(report.tenants[0].epoch, 1);
        assert_eq!(report.tenants[0].notes.len(), 1);
        assert_eq!(c.page1(&pool), c.old);
    }
}

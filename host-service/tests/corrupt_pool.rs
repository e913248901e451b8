//! Damaged pools are refused with a clear message and left exactly as they were (the pool file
//! and the capacity file byte for byte): flipped bits in every kind of metadata, page-map entries
//! naming capacity homes the capacity file does not have, a damaged redo-log payload of a
//! committed epoch, a truncated file, a file of another version, and a file that is not a pool at
//! all. Pools live in real files here (the mapped-file backend), as in production.

use std::path::Path;
use std::sync::Arc;

use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MappedFile};
use vpm_host::pool::media::{APPLIED_WORD_OFF, COMMIT_RECORD_SIZE, LOG_HEADER_SIZE};
use vpm_host::pool::{Home, Pool, PoolConfig, PoolError, TenantConfig};

const SIZE: u64 = 4 << 20;
const PAGE: usize = vpm_abi::PAGE_SIZE as usize;

fn open(dir: &Path) -> Result<Pool, PoolError> {
    let pm = Arc::new(MappedFile::open(
        &dir.join("pool"),
        0,
        FlushPolicy::Auto,
        true,
    )?);
    let cap = Arc::new(FileDevice::open(&dir.join("pool.cap"))?);
    Pool::open(pm, cap).map(|(p, _)| p)
}

/// A pool with two tenants, two epochs each and a persist; returns tenant 1's metadata offsets.
fn build(dir: &Path) -> (u64, u64) {
    let pm = Arc::new(MappedFile::open(&dir.join("pool"), SIZE, FlushPolicy::Auto, true).unwrap());
    let cap = Arc::new(FileDevice::open(&dir.join("pool.cap")).unwrap());
    let cfg = PoolConfig {
        size: SIZE,
        max_tenants: 4,
        meta_bytes: 1 << 20,
        pool_id: 5,
    };
    let mut pool = Pool::create(pm, cap, &cfg).unwrap();
    let mut img = vec![0u8; 16 * PAGE];
    for name in ["a", "b"] {
        let t = pool
            .add_tenant(&TenantConfig {
                name: name.into(),
                vpm_bytes: 16 * PAGE as u64,
                pm_quota_bytes: 4 * PAGE as u64,
                dram_budget_bytes: 0,
                log_bytes: 128 << 10,
            })
            .unwrap();
        for round in 0..2u8 {
            for vpn in 0..8 {
                img[vpn * PAGE + round as usize * 64] = round + 1;
            }
            pool.commit_epoch(t, &(0..8).collect::<Vec<_>>(), &img)
                .unwrap();
        }
        pool.persist(t, &[(9 * PAGE as u64, 100)], &img).unwrap();
    }
    let d = pool.tenant(1).unwrap().desc();
    (d.commit_off, d.map_off)
}

/// Opens the pool in `dir`, expecting a refusal with a clear message that satisfies `clear`, and
/// checks that both files are byte-identical afterwards; returns the message.
fn expect_refusal(dir: &Path, what: &str, clear: impl Fn(&str) -> bool) -> String {
    let files = [dir.join("pool"), dir.join("pool.cap")];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let msg = match open(dir) {
        Ok(_) => panic!("{what}: the damaged pool opened"),
        Err(e) => e.to_string(),
    };
    assert!(clear(&msg), "{what}: unclear error: {msg}");
    for (f, b) in files.iter().zip(&before) {
        assert!(
            std::fs::read(f).unwrap() == *b,
            "{what}: the refused open changed {}",
            f.display()
        );
    }
    msg
}

fn corrupt_or_foreign(msg: &str) -> bool {
    msg.contains("corrupt pool") || msg.contains("not a VPM pool") || msg.contains("version")
}

/// Writes `bytes` at `off` of the pool file.
fn patch(dir: &Path, off: u64, bytes: &[u8]) {
    let path = dir.join("pool");
    let mut all = std::fs::read(&path).unwrap();
    all[off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
    std::fs::write(&path, &all).unwrap();
}

fn flip_and_expect_refusal(dir: &Path, off: u64, bit: u8, what: &str) {
    let path = dir.join("pool");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off as usize] ^= 1 << bit;
    std::fs::write(&path, &bytes).unwrap();
    expect_refusal(dir, what, corrupt_or_foreign);
    bytes[off as usize] ^= 1 << bit;
    std::fs::write(&path, &bytes).unwrap();
    open(dir).unwrap_or_else(|e| panic!("{what}: restored pool does not open: {e}"));
}

#[test]
fn flipped_bits_in_metadata_are_refused_and_nothing_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (commit_off, map_off) = build(dir.path());
    open(dir.path()).expect("intact pool opens");
    let latest = {
        let p = open(dir.path()).unwrap();
        let t = p.tenant(1).unwrap();
        // The second epoch went to record slot 1.
        assert_eq!(t.epoch(), 2);
        commit_off + COMMIT_RECORD_SIZE as u64
    };
    let cases: Vec<(u64, &str)> = vec![
        (0, "header magic"),
        (16, "header size field"),
        (60, "header data pages"),
        (PAGE as u64 + 256 + 3, "tenant 1 state word"),
        (PAGE as u64 + 256 + 8 + 40, "tenant 1 descriptor body"),
        (latest + 9, "latest commit record"),
        (commit_off + APPLIED_WORD_OFF, "applied word"),
        (map_off + 2, "page-map entry check bits"),
        (map_off + 8 * 3 + 5, "page-map entry slot"),
        (map_off + 8 * 9 + 7, "page-map entry kind"),
    ];
    for (off, what) in cases {
        for bit in [0u8, 5] {
            flip_and_expect_refusal(dir.path(), off, bit, what);
        }
    }
}

#[test]
fn every_bit_of_a_page_map_entry_is_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map_off) = build(dir.path());
    for bit in 0..64 {
        let off = map_off + 8 * 2 + bit / 8;
        flip_and_expect_refusal(dir.path(), off, (bit % 8) as u8, "page-map entry");
    }
}

#[test]
fn truncated_foreign_and_future_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let path = dir.path().join("pool");
    let bytes = std::fs::read(&path).unwrap();
    for len in [0usize, 10, PAGE, 1 << 20, bytes.len() - PAGE] {
        std::fs::write(&path, &bytes[..len]).unwrap();
        expect_refusal(dir.path(), &format!("truncated to {len}"), |e| {
            e.contains("corrupt") || e.contains("not a VPM pool") || e.contains("truncated")
        });
    }
    let mut future = bytes.clone();
    future[8] = 2;
    std::fs::write(&path, &future).unwrap();
    expect_refusal(dir.path(), "future version", |e| {
        e.contains("format version 2")
    });
    std::fs::write(&path, vec![0x5au8; 1 << 16]).unwrap();
    expect_refusal(dir.path(), "junk", |e| e.contains("not a VPM pool"));
}

#[test]
fn an_unreadable_older_commit_record_is_an_interrupted_commit_not_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let (commit_off, _) = build(dir.path());
    let path = dir.path().join("pool");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[commit_off as usize + 9] ^= 0x10; // record slot 0 holds epoch 1, the older one
    std::fs::write(&path, &bytes).unwrap();
    let pm = Arc::new(MappedFile::open(&path, 0, FlushPolicy::Auto, true).unwrap());
    let cap = Arc::new(FileDevice::open(&dir.path().join("pool.cap")).unwrap());
    let (pool, report) = Pool::open(pm, cap).unwrap();
    assert_eq!(pool.tenant(1).unwrap().epoch(), 2);
    assert!(report.tenants[1]
        .notes
        .iter()
        .any(|n| n.contains("interrupted")));
}

#[test]
fn capacity_homes_the_capacity_file_does_not_have_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, map_off) = build(dir.path());
    let homes: Vec<Home> = {
        let pool = open(dir.path()).unwrap();
        let t = pool.tenant(1).unwrap();
        (0..t.pages()).map(|vpn| t.home(vpn)).collect()
    };
    let cap_path = dir.path().join("pool.cap");
    let cap = std::fs::read(&cap_path).unwrap();
    let top = homes
        .iter()
        .filter_map(|h| match h {
            Home::Capacity(s) => Some(*s),
            _ => None,
        })
        .max()
        .expect("tenant b has capacity homes");
    // The capacity file cut below its last home, and emptied.
    for len in [top as usize * PAGE, 0] {
        std::fs::write(&cap_path, &cap[..len]).unwrap();
        let msg = expect_refusal(dir.path(), "truncated capacity file", corrupt_or_foreign);
        assert!(msg.contains("out of range"), "{msg}");
    }
    std::fs::write(&cap_path, &cap).unwrap();
    // A well-formed page-map entry naming a capacity slot past the file's end, and one naming
    // another page's capacity home.
    let vpn = homes
        .iter()
        .position(|h| matches!(h, Home::Capacity(_)))
        .unwrap() as u64;
    let entry_off = map_off + 8 * vpn;
    let mut entry = [0u8; 8];
    entry.copy_from_slice(
        &std::fs::read(dir.path().join("pool")).unwrap()[entry_off as usize..][..8],
    );
    let past_end = (cap.len() / PAGE) as u64 + 3;
    for (home, what) in [
        (Home::Capacity(past_end), "capacity slot past the end"),
        (Home::Capacity(top), "capacity slot of another page"),
    ] {
        if Home::Capacity(top) == homes[vpn as usize] && what.contains("another") {
            continue;
        }
        patch(dir.path(), entry_off, &home.encode(1, vpn).to_le_bytes());
        let msg = expect_refusal(dir.path(), what, corrupt_or_foreign);
        assert!(
            msg.contains("out of range or already used"),
            "{what}: {msg}"
        );
        patch(dir.path(), entry_off, &entry);
    }
    open(dir.path()).expect("restored pool opens");
}

#[test]
fn a_damaged_payload_of_a_committed_redo_log_is_refused_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    // Tenant a's epoch 2 changed one line in each of 8 pages with homes: a log with payload.
    let desc = open(dir.path()).unwrap().tenant(0).unwrap().desc().clone();
    // As after a crash between the commit point of epoch 2 (record seq 2) and its apply: the
    // applied word still names seq 1, so recovery must replay epoch 2's log.
    patch(
        dir.path(),
        desc.commit_off + APPLIED_WORD_OFF,
        &1u64.to_le_bytes(),
    );
    // A byte of the first record's payload (epoch 2 changed one line per page: logged lines).
    let at = desc.log_off + LOG_HEADER_SIZE as u64 + 17;
    let pool_bytes = std::fs::read(dir.path().join("pool")).unwrap();
    for bit in [0u8, 7] {
        patch(dir.path(), at, &[pool_bytes[at as usize] ^ 1 << bit]);
        let msg = expect_refusal(dir.path(), "redo-log payload", corrupt_or_foreign);
        assert!(
            msg.contains("redo log") && msg.contains("checksum"),
            "redo-log payload: {msg}"
        );
    }
    patch(dir.path(), at, &pool_bytes[at as usize..at as usize + 1]);
    let pm =
        Arc::new(MappedFile::open(&dir.path().join("pool"), 0, FlushPolicy::Auto, true).unwrap());
    let cap = Arc::new(FileDevice::open(&dir.path().join("pool.cap")).unwrap());
    let (_, report) = Pool::open(pm, cap).expect("intact log replays");
    assert_eq!(report.tenants[0].replayed_records, 8);
    assert_eq!(report.tenants[0].epoch, 2);
}

//! Damaged pools are refused with a clear message and left exactly as they were: flipped bits in
//! every kind of metadata, a truncated file, a file of another version, and a file that is not a
//! pool at all. Pools live in real files here (the mapped-file backend), as in production.

use std::path::Path;
use std::sync::Arc;

use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MappedFile};
use vpm_host::pool::media::{APPLIED_WORD_OFF, COMMIT_RECORD_SIZE};
use vpm_host::pool::{Pool, PoolConfig, PoolError, TenantConfig};

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

fn flip_and_expect_refusal(dir: &Path, off: u64, bit: u8, what: &str) {
    let path = dir.join("pool");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[off as usize] ^= 1 << bit;
    std::fs::write(&path, &bytes).unwrap();
    let err = open(dir).expect_err(what);
    let msg = err.to_string();
    assert!(
        msg.contains("corrupt pool") || msg.contains("not a VPM pool") || msg.contains("version"),
        "{what}: unclear error: {msg}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "{what}: the refused pool was changed"
    );
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
        let err = match open(dir.path()) {
            Ok(_) => panic!("pool truncated to {len} bytes opened"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains("corrupt") || err.contains("not a VPM pool") || err.contains("truncated"),
            "truncated to {len}: {err}"
        );
    }
    let mut future = bytes.clone();
    future[8] = 2;
    std::fs::write(&path, &future).unwrap();
    let err = open(dir.path())
        .expect_err("future version opened")
        .to_string();
    assert!(err.contains("format version 2"), "{err}");
    std::fs::write(&path, vec![0x5au8; 1 << 16]).unwrap();
    let err = open(dir.path()).expect_err("junk opened").to_string();
    assert!(err.contains("not a VPM pool"), "{err}");
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

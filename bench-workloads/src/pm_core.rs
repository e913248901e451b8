//! `vpm-bench pm-core`: the PM core's commit throughput against the raw copy+flush floor of the
//! same pool file, persist latency, and recovery time of a 1 GiB pool.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
use vpm_host::pm::{PmDevice, PmError};
use vpm_host::pool::{Pool, PoolConfig, PoolError, TenantConfig};

use crate::stats::{percentile, platform_note, timed};

/// `vpm_abi::PAGE_SIZE` as a byte count.
const PAGE: usize = vpm_abi::PAGE_SIZE as usize;
const MIB: f64 = 1048576.0;

/// Why the PM-core benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum PmCoreError {
    /// A file or directory operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A pool or capacity file could not be opened as a PM device.
    #[error("open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The device's error.
        #[source]
        source: PmError,
    },
    /// A raw copy+flush (the floor the pool is compared with) failed.
    #[error("measure the copy+flush floor")]
    Floor(#[source] PmError),
    /// The pool refused an operation.
    #[error("{what}")]
    Pool {
        /// What was being done.
        what: &'static str,
        /// The pool's error.
        #[source]
        source: PoolError,
    },
    /// The results could not be turned into JSON.
    #[error("encode the results as JSON")]
    Json(#[source] serde_json::Error),
}

impl PmCoreError {
    /// A mapper of an I/O error on `path` while doing `what`.
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| PmCoreError::Io { what, path, source }
    }

    /// A mapper of a pool error while doing `what`.
    fn pool(what: &'static str) -> impl FnOnce(PoolError) -> Self {
        move |source| PmCoreError::Pool { what, source }
    }
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(parent: &str) -> Result<Scratch, PmCoreError> {
        let dir = PathBuf::from(parent).join(format!("vpm-bench-{}", std::process::id()));
        vpm_host::private_file::create_dir_all(&dir)
            .map_err(PmCoreError::io("create the scratch directory", &dir))?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open_pool_file(
    dir: &Path,
    size: u64,
    policy: FlushPolicy,
) -> Result<Arc<MappedFile>, PmCoreError> {
    let opts = MapOptions {
        size,
        policy,
        exclusive: true,
        populate: true,
    };
    let path = dir.join("pool");
    MappedFile::open_with(&path, opts)
        .map(Arc::new)
        .map_err(|source| PmCoreError::Open { path, source })
}

fn capacity(dir: &Path) -> Result<Arc<FileDevice>, PmCoreError> {
    let path = dir.join("pool.cap");
    FileDevice::open(&path)
        .map(Arc::new)
        .map_err(|source| PmCoreError::Open { path, source })
}

/// Raw floor: copy `pages` 4 KiB pages from a buffer of that size (like guest pages) into the
/// device at `off`, one drain. `nt`: the device's persistent copy (non-temporal stores where it
/// has them); else a plain copy and a flush per page.
fn copy_flush_floor(
    dev: &dyn PmDevice,
    off: u64,
    pages: usize,
    nt: bool,
) -> Result<f64, PmCoreError> {
    let src: Vec<u8> = (0..pages * PAGE).map(|i| i as u8 ^ 0x5a).collect();
    let (r, secs) = timed(|| -> Result<(), PmError> {
        for p in 0..pages {
            let at = off + (p * PAGE) as u64;
            let page = &src[p * PAGE..][..PAGE];
            if nt {
                dev.write_flush(at, page)?;
            } else {
                dev.write(at, page)?;
                dev.flush(at, PAGE as u64)?;
            }
        }
        dev.drain()
    });
    r.map_err(PmCoreError::Floor)?;
    Ok((pages * PAGE) as f64 / MIB / secs)
}

/// Changes `lines` lines of every page of `img` (a new value per call).
fn touch(img: &mut [u8], lines: usize, stamp: u64) {
    for page in img.chunks_mut(PAGE) {
        for l in 0..lines {
            page[l * 64..l * 64 + 8].copy_from_slice(&stamp.to_le_bytes());
        }
    }
}

fn commit_bench(
    label: &str,
    parent: &str,
    policy: FlushPolicy,
    dirty_mib: usize,
) -> Result<Value, PmCoreError> {
    let scratch = Scratch::new(parent)?;
    let pages = dirty_mib * 1024 * 1024 / PAGE;
    let pool_size = (pages * PAGE * 3 + (64 << 20)) as u64;
    let pm = open_pool_file(&scratch.0, pool_size, policy)?;
    // The floor on the same file, in the region the pool will use for data.
    let floor = copy_flush_floor(&*pm, pool_size / 2, pages, false)?;
    let floor_nt = copy_flush_floor(&*pm, pool_size / 2, pages, true)?;
    let cfg = PoolConfig {
        size: pool_size,
        max_tenants: 2,
        meta_bytes: 48 << 20,
        pool_id: 1,
    };
    let mut pool = Pool::create(pm.clone(), capacity(&scratch.0)?, &cfg)
        .map_err(PmCoreError::pool("create the pool"))?;
    let t = pool
        .add_tenant(&TenantConfig {
            name: "bench".into(),
            vpm_bytes: (pages * PAGE) as u64,
            pm_quota_bytes: (pages * PAGE * 2) as u64,
            dram_budget_bytes: 0,
            log_bytes: 32 << 20,
        })
        .map_err(PmCoreError::pool("add the tenant"))?;
    let dirty: Vec<u64> = (0..pages as u64).collect();
    let mut img = vec![0u8; pages * PAGE];
    let mut rows = Vec::new();
    let cases = [
        ("first epoch (new homes)", 64),
        ("all lines changed, cold", 64),
        ("all lines changed, warm", 64),
        ("all lines changed, warm", 64),
        ("4 lines per page changed", 4),
    ];
    for (name, lines) in cases {
        touch(&mut img, lines, rows.len() as u64 + 1);
        let before = pm.stats().bytes_written;
        let (r, secs) = timed(|| pool.commit_epoch(t, &dirty, &img));
        let stats = r.map_err(PmCoreError::pool("commit an epoch"))?;
        let mibs = (pages * PAGE) as f64 / MIB / secs;
        let written = pm.stats().bytes_written - before;
        println!(
            "  {name:<26} {mibs:>6.0} MiB/s of dirty pages = {:>5.1} % of floor; PM bytes written / changed bytes = {:.2}; commit point after {:.1} ms",
            100.0 * mibs / floor,
            written as f64 / (stats.changed_lines * 64) as f64,
            stats.until_commit_us as f64 / 1000.0
        );
        rows.push(
            json!({"case": name, "mib_per_s": mibs, "percent_of_floor": 100.0 * mibs / floor,
            "pm_bytes_written": written, "changed_bytes": stats.changed_lines * 64,
            "until_commit_ms": stats.until_commit_us as f64 / 1000.0, "total_ms": secs * 1000.0}),
        );
    }
    println!(
        "  floors on the same file: copy+flush of 4 KiB pages {floor:.0} MiB/s; persistent (non-temporal) copy {floor_nt:.0} MiB/s; flush method {}",
        pm.method().name()
    );
    Ok(
        json!({"backend": label, "flush": pm.method().name(), "dirty_mib": dirty_mib,
        "floor_mib_per_s": floor, "commits": rows}),
    )
}

fn persist_bench(
    label: &str,
    parent: &str,
    policy: FlushPolicy,
    iters: usize,
) -> Result<Value, PmCoreError> {
    let scratch = Scratch::new(parent)?;
    let pm = open_pool_file(&scratch.0, 64 << 20, policy)?;
    let cfg = PoolConfig {
        size: 64 << 20,
        max_tenants: 1,
        meta_bytes: 4 << 20,
        pool_id: 2,
    };
    let mut pool = Pool::create(pm.clone(), capacity(&scratch.0)?, &cfg)
        .map_err(PmCoreError::pool("create the pool"))?;
    let vpm = 16 << 20;
    let t = pool
        .add_tenant(&TenantConfig {
            name: "p".into(),
            vpm_bytes: vpm,
            pm_quota_bytes: vpm,
            dram_budget_bytes: 0,
            log_bytes: 1 << 20,
        })
        .map_err(PmCoreError::pool("add the tenant"))?;
    let mut img = vec![1u8; vpm as usize];
    pool.persist(t, &[(0, vpm)], &img)
        .map_err(PmCoreError::pool("persist the whole vPM"))?;
    let mut rows = Vec::new();
    for size in [64usize, 4096, 65536] {
        let mut lat = Vec::with_capacity(iters);
        let mut floor = Vec::with_capacity(iters);
        let scratch_buf = vec![7u8; size];
        for i in 0..iters {
            let off = (i * 65536) % (vpm as usize - 65536);
            for b in img[off..off + size].iter_mut().step_by(64) {
                *b = b.wrapping_add(1);
            }
            let (r, secs) = timed(|| pool.persist(t, &[(off as u64, size as u64)], &img));
            r.map_err(PmCoreError::pool("persist a range"))?;
            lat.push(secs * 1e6);
            let at = pool.header().data_off + (pool.header().data_pages - 32) * PAGE as u64;
            let (r, fs) = timed(|| -> Result<(), PmError> {
                pm.write(at, &scratch_buf)?;
                pm.flush(at, size as u64)?;
                pm.drain()
            });
            r.map_err(PmCoreError::Floor)?;
            floor.push(fs * 1e6);
        }
        let (p50, p99) = (percentile(&mut lat, 50.0), percentile(&mut lat, 99.0));
        let f50 = percentile(&mut floor, 50.0);
        println!("  persist {size:>6} B: p50 {p50:>8.2} µs, p99 {p99:>8.2} µs; copy+flush floor p50 {f50:>8.2} µs");
        rows.push(json!({"bytes": size, "p50_us": p50, "p99_us": p99, "floor_p50_us": f50}));
    }
    Ok(json!({"backend": label, "flush": pm.method().name(), "persist": rows}))
}

fn recovery_bench(pool_mib: u64) -> Result<Value, PmCoreError> {
    let scratch = Scratch::new("/dev/shm")?;
    let size = pool_mib << 20;
    let vpm = size * 3 / 4;
    let pages = vpm / PAGE as u64;
    {
        let pm = open_pool_file(&scratch.0, size, FlushPolicy::CpuFlush)?;
        let cfg = PoolConfig {
            size,
            max_tenants: 4,
            meta_bytes: size / 16,
            pool_id: 3,
        };
        let mut pool = Pool::create(pm, capacity(&scratch.0)?, &cfg)
            .map_err(PmCoreError::pool("create the pool"))?;
        let t = pool
            .add_tenant(&TenantConfig {
                name: "r".into(),
                vpm_bytes: vpm,
                pm_quota_bytes: vpm,
                dram_budget_bytes: 0,
                log_bytes: 8 << 20,
            })
            .map_err(PmCoreError::pool("add the tenant"))?;
        let chunk = 32768u64;
        let mut img = vec![0u8; (chunk as usize) * PAGE];
        for start in (0..pages).step_by(chunk as usize) {
            let n = chunk.min(pages - start);
            touch(&mut img[..n as usize * PAGE], 1, start + 1);
            let src = OffsetSource {
                base: start,
                img: &img,
            };
            let dirty: Vec<u64> = (start..start + n).collect();
            pool.commit_epoch(t, &dirty, &src)
                .map_err(PmCoreError::pool("commit an epoch"))?;
        }
    }
    let pm = open_pool_file(&scratch.0, 0, FlushPolicy::CpuFlush)?;
    let cap = capacity(&scratch.0)?;
    let (opened, secs) = timed(|| Pool::open(pm, cap));
    let (pool, _report) = opened.map_err(PmCoreError::pool("open and recover the pool"))?;
    let mut buf = vec![0u8; PAGE];
    let (r, read_secs) = timed(|| -> Result<(), PoolError> {
        for vpn in 0..pages {
            pool.read_home(0, vpn, &mut buf)?;
        }
        Ok(())
    });
    r.map_err(PmCoreError::pool("read a page from its home"))?;
    println!(
        "  recovery of a {pool_mib} MiB pool ({pages} homed pages): open+verify {:.1} ms (goal <= 200 ms), then reading every page {:.1} ms",
        secs * 1000.0,
        read_secs * 1000.0
    );
    Ok(
        json!({"pool_mib": pool_mib, "pages": pages, "open_ms": secs * 1000.0, "read_pages_ms": read_secs * 1000.0}),
    )
}

/// Pages `base..` of a tenant, from a buffer that starts at page `base`.
struct OffsetSource<'a> {
    base: u64,
    img: &'a [u8],
}

impl vpm_host::pool::PageSource for OffsetSource<'_> {
    fn with_page(
        &self,
        vpn: u64,
        f: &mut dyn FnMut(&[u8]),
    ) -> Result<(), vpm_host::pool::SourceError> {
        self.img.with_page(vpn - self.base, f)
    }
}

/// Runs the whole PM-core benchmark.
pub fn run(out: &Path, quick: bool) -> Result<(), PmCoreError> {
    println!("vpm-bench pm-core — measured on: {}", platform_note());
    let dirty_mib = if quick { 16 } else { 64 };
    let iters = if quick { 100 } else { 400 };
    let backends = [
        (
            "tmpfs file, CPU flushes (emulated PM in DRAM)",
            "/dev/shm",
            FlushPolicy::CpuFlush,
        ),
        (
            "ext4 file, msync (emulated PM in the page cache)",
            "/var/tmp",
            FlushPolicy::Auto,
        ),
    ];
    let mut commits = Vec::new();
    let mut persists = Vec::new();
    for (label, parent, policy) in backends {
        println!("\n{label}: epoch commit of {dirty_mib} MiB of dirty 4 KiB pages");
        commits.push(commit_bench(label, parent, policy, dirty_mib)?);
        println!("{label}: persist latency ({iters} each)");
        persists.push(persist_bench(label, parent, policy, iters)?);
    }
    println!("\nrecovery");
    let recovery = recovery_bench(if quick { 256 } else { 1024 })?;
    let doc = json!({"platform": platform_note(), "commit": commits, "persist": persists, "recovery": recovery});
    vpm_host::private_file::create_dir_all(out)
        .map_err(PmCoreError::io("create the directory", out))?;
    let path = out.join("pm-core.json");
    let text = serde_json::to_string_pretty(&doc).map_err(PmCoreError::Json)?;
    vpm_host::private_file::write(&path, text).map_err(PmCoreError::io("write", &path))?;
    println!("\nwrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use vpm_host::pm::sim::SimPm;

    use super::*;

    #[test]
    fn a_pool_file_that_cannot_be_opened_names_it_and_keeps_the_device_error() {
        let dir = Path::new("/nonexistent-vpm-bench-dir");
        let e = open_pool_file(dir, 1 << 20, FlushPolicy::CpuFlush).unwrap_err();
        assert!(matches!(e, PmCoreError::Open { .. }), "{e:?}");
        assert_eq!(e.to_string(), "open /nonexistent-vpm-bench-dir/pool");
        assert!(e.source().is_some_and(|s| s.source().is_some()));
    }

    #[test]
    fn a_floor_past_the_device_is_an_error_not_a_panic() {
        let dev = SimPm::new(PAGE as u64);
        assert!(copy_flush_floor(&dev, 0, 1, false).is_ok());
        let e = copy_flush_floor(&dev, 0, 2, true).unwrap_err();
        assert!(matches!(e, PmCoreError::Floor(PmError::OutOfBounds { .. })));
        assert!(e.source().is_some());
    }
}

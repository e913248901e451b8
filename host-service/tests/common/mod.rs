//! Shared helpers of the crash-point tests: simulated devices, traces of one operation, and the
//! crash states at every point of such a trace (exhaustive where there are few, sampled above).
//!
//! Each test binary uses only some of these.
#![allow(dead_code)]

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use vpm_host::pm::sim::{CrashSpace, SimClock, SimOp, SimPm};
use vpm_host::pool::{Pool, PoolConfig, PoolError, RecoveryReport, TenantConfig};

/// Bytes per page.
pub const PAGE: usize = vpm_abi::PAGE_SIZE as usize;
/// Bytes per line.
pub const LINE: usize = vpm_abi::LINE_SIZE as usize;
/// Crash points with at most this many states are enumerated in full.
pub const EXHAUSTIVE: u128 = 4096;
/// Random states checked at a crash point with more than [`EXHAUSTIVE`] states.
pub const SAMPLES: usize = 128;

/// Keeps freed memory in the allocator: every crash state allocates and frees a few pool-sized
/// images, and glibc otherwise returns them to the kernel each time (page faults dominated the
/// run time). Call at the start of each test.
pub fn keep_freed_memory() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes glibc allocator tunables; it is called once, before this
        // test binary's threads allocate concurrently through it (Once serialises callers), and
        // the values are valid sizes.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        }
    });
}

/// A simulated pool device and capacity device on one clock.
pub struct Devices {
    /// The PM pool device.
    pub pm: Arc<SimPm>,
    /// The capacity device.
    pub cap: Arc<SimPm>,
}

impl Devices {
    /// Zeroed devices: a PM device of `pool` bytes and an empty capacity device.
    pub fn new(pool: u64) -> Devices {
        Devices::from_images(vec![0; pool as usize], Vec::new())
    }

    /// Devices whose durable content is the given images.
    pub fn from_images(pm: Vec<u8>, cap: Vec<u8>) -> Devices {
        keep_freed_memory();
        let clock = SimClock::default();
        Devices {
            pm: Arc::new(SimPm::from_image(pm, clock.clone())),
            cap: Arc::new(SimPm::from_image(cap, clock)),
        }
    }

    /// Opens (recovers) the pool on the devices.
    pub fn open(&self) -> Result<(Pool, RecoveryReport), PoolError> {
        Pool::open(self.pm.clone(), self.cap.clone())
    }

    /// Declares everything durable and starts new traces on both devices.
    pub fn start_trace(&self) {
        self.pm.start_trace();
        self.cap.start_trace();
    }

    /// Runs `op` with both devices tracing, returning what it returned and the traces.
    pub fn traced<R>(&self, op: impl FnOnce() -> R) -> (R, Traces) {
        self.start_trace();
        let start = self.pm.clock().now();
        let r = op();
        let end = self.pm.clock().now();
        let traces = Traces {
            pm: self.pm.trace(),
            cap: self.cap.trace(),
            start,
            end,
        };
        (r, traces)
    }
}

/// The traces of both devices over one operation.
pub struct Traces {
    /// PM device: durable image at the start and the operations since.
    pub pm: (Vec<u8>, Vec<SimOp>),
    /// Capacity device: likewise.
    pub cap: (Vec<u8>, Vec<SimOp>),
    /// First operation stamp of the operation.
    pub start: u64,
    /// Stamp after its last operation: a crash "at" `end` is a crash after it returned.
    pub end: u64,
}

impl Traces {
    /// The crash states of both devices at global point `at`.
    pub fn crash(&self, at: u64, seed: u64) -> Crash {
        Crash {
            pm: CrashSpace::at_seeded(&self.pm.0, &self.pm.1, at, seed),
            cap: CrashSpace::at_seeded(&self.cap.0, &self.cap.1, at, seed),
        }
    }

    /// Calls `f(at, pm image, cap image)` for the crash states at every point from `start` to
    /// `end` (inclusive); returns the states visited.
    pub fn for_each_state(&self, seed: u64, mut f: impl FnMut(u64, Vec<u8>, Vec<u8>)) -> Visited {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut v = Visited::default();
        for at in self.start..=self.end {
            let c = self.crash(at, seed);
            v.points += 1;
            v.states += c.visit(&mut rng, |pm, cap| f(at, pm, cap));
        }
        v
    }
}

/// Crash points and states a test visited.
#[derive(Clone, Copy, Debug, Default)]
pub struct Visited {
    /// Crash points.
    pub points: u64,
    /// Crash states (all points).
    pub states: u64,
}

impl std::ops::AddAssign for Visited {
    fn add_assign(&mut self, o: Visited) {
        self.points += o.points;
        self.states += o.states;
    }
}

/// Both devices' crash spaces at one point.
pub struct Crash {
    /// PM device.
    pub pm: CrashSpace,
    /// Capacity device.
    pub cap: CrashSpace,
}

impl Crash {
    /// States at this point (saturating).
    pub fn count(&self) -> u128 {
        self.pm.count().saturating_mul(self.cap.count())
    }

    /// Calls `f` with (pm image, cap image) for every state, or for the pessimistic one and a
    /// sample; returns states visited.
    pub fn visit(&self, rng: &mut impl Rng, mut f: impl FnMut(Vec<u8>, Vec<u8>)) -> u64 {
        if self.count() <= EXHAUSTIVE {
            let mut n = 0;
            self.pm.for_each_choice(|a| {
                self.cap.for_each_choice(|b| {
                    f(self.pm.image(a), self.cap.image(b));
                    n += 1;
                    true
                });
                true
            });
            return n;
        }
        f(self.pm.pessimistic(), self.cap.pessimistic());
        for _ in 0..SAMPLES {
            let a = self.pm.random_choice(|n| rng.random_range(0..n));
            let b = self.cap.random_choice(|n| rng.random_range(0..n));
            f(self.pm.image(&a), self.cap.image(&b));
        }
        SAMPLES as u64 + 1
    }
}

/// A pool of `size` bytes with room for `max_tenants` tenants and 40 KiB of tenant metadata
/// (two tenants of [`tenant_config`] with up to 512 pages).
pub fn pool_config(size: u64, max_tenants: u32) -> PoolConfig {
    PoolConfig {
        size,
        max_tenants,
        meta_bytes: 40 << 10,
        pool_id: 1,
    }
}

/// A tenant of `pages` pages with a PM quota of `quota` pages (the rest go to the capacity file)
/// and an 8 KiB redo log.
pub fn tenant_config(name: &str, pages: u64, quota: u64) -> TenantConfig {
    TenantConfig {
        name: name.into(),
        vpm_bytes: pages * PAGE as u64,
        pm_quota_bytes: quota * PAGE as u64,
        dram_budget_bytes: 0,
        log_bytes: 8 << 10,
    }
}

/// The tenant's whole durable vPM as the pool reads it.
pub fn image(pool: &Pool, t: u32) -> Vec<u8> {
    let pages = pool.tenant(t).unwrap().pages() as usize;
    let mut img = vec![0u8; pages * PAGE];
    for vpn in 0..pages {
        pool.read_home(t, vpn as u64, &mut img[vpn * PAGE..][..PAGE])
            .unwrap();
    }
    img
}

/// Fills line `line` of page `vpn` of `img` with `v`.
pub fn fill_line(img: &mut [u8], vpn: usize, line: usize, v: u8) {
    img[vpn * PAGE + line * LINE..][..LINE].fill(v);
}

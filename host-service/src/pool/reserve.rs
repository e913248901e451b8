//! Fresh PM homes taken before an epoch's commit and filled by the caller: the stop of a staged
//! epoch streams a page it expects to be rewritten whole straight from guest memory into a fresh
//! home, instead of into staging from which the commit would copy it again (half the commit's
//! memory traffic, and none of it through the cache the guest works in).
//!
//! A reserved home is a free slot taken like a copy-on-write home of the commit: nothing durable
//! refers to it until the commit record, so a crash before that leaves it free (recovery
//! rebuilds the allocator from the page maps), and a failed commit gives it back.

use vpm_abi::PAGE_SIZE;

use super::error::PoolError;
use super::homes::HomeStore;
use super::media::Home;
use super::tenant::Tenant;

/// A fresh PM home taken for one page, with where it is mapped in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReservedHome {
    /// The page it is for.
    pub vpn: u64,
    /// The home.
    pub home: Home,
    /// Address of its first byte in this process (`PAGE_SIZE` bytes, mapped).
    addr: usize,
}

impl ReservedHome {
    /// Where to stream the page's content (`PAGE_SIZE` bytes). Writing it is sound until the
    /// home is committed or given back; fence the stores before the commit.
    pub fn addr(&self) -> *mut u8 {
        self.addr as *mut u8
    }
}

/// Takes a fresh home in PM for page `vpn` of `t`, if the page has a PM home now (the same tier,
/// as for a copy-on-write rewrite) and the PM device is mapped here; `None` otherwise (the caller
/// stages the page instead).
pub(super) fn reserve(
    homes: &mut HomeStore,
    t: &mut Tenant,
    vpn: u64,
) -> Result<Option<ReservedHome>, PoolError> {
    t.check_vpn(vpn)?;
    let current = t.home(vpn);
    if !matches!(current, Home::Pm(_)) {
        return Ok(None);
    }
    let Some(home) = homes.alloc_same_tier(t, current)? else {
        return Ok(None);
    };
    let (dev, off) = homes.location(home).expect("an allocated PM home");
    match dev.mapped_at(off, PAGE_SIZE) {
        Some(ptr) => Ok(Some(ReservedHome {
            vpn,
            home,
            addr: ptr as usize,
        })),
        None => {
            homes.unalloc(t, home);
            t.note_replacements_done(1);
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::pm::mapped::{FlushPolicy, MappedFile};
    use crate::pm::sim::SimPm;
    use crate::pool::{PageSource, Pool, PoolConfig, SourceError, TenantConfig};

    const PAGE: usize = PAGE_SIZE as usize;
    const POOL: u64 = 64 * PAGE_SIZE;

    /// An image of the vPM, except pages streamed into reserved homes.
    struct Streamed<'a> {
        image: &'a [u8],
        written: HashMap<u64, Home>,
    }

    impl PageSource for Streamed<'_> {
        fn with_page(&self, vpn: u64, f: &mut dyn FnMut(&[u8])) -> Result<(), SourceError> {
            assert!(!self.written.contains_key(&vpn), "page {vpn} read again");
            self.image.with_page(vpn, f)
        }

        fn written_home(&self, vpn: u64) -> Option<Home> {
            self.written.get(&vpn).copied()
        }
    }

    /// A pool in a mapped file with one 4-page tenant whose pages all have PM homes.
    fn pool(dir: &std::path::Path) -> (Pool, u32, Vec<u8>) {
        let pm =
            Arc::new(MappedFile::open(&dir.join("pm"), POOL, FlushPolicy::Auto, true).unwrap());
        let cfg = PoolConfig {
            size: POOL,
            max_tenants: 2,
            meta_bytes: 16 * PAGE_SIZE,
            pool_id: 7,
        };
        let mut pool = Pool::create(pm, Arc::new(SimPm::new(0)), &cfg).unwrap();
        let t = pool
            .add_tenant(&TenantConfig {
                name: "t".into(),
                vpm_bytes: 4 * PAGE_SIZE,
                pm_quota_bytes: 8 * PAGE_SIZE,
                dram_budget_bytes: 0,
                log_bytes: 4 * PAGE_SIZE,
            })
            .unwrap();
        let img: Vec<u8> = (0..4 * PAGE).map(|i| (i % 251) as u8 | 1).collect();
        pool.commit_epoch(t, &[0, 1, 2, 3], &img).unwrap();
        (pool, t, img)
    }

    fn stream(home: &ReservedHome, page: &[u8]) {
        // SAFETY: a reserved home is a mapped PM page nothing else touches until the commit.
        unsafe { std::ptr::copy_nonoverlapping(page.as_ptr(), home.addr(), PAGE) };
    }

    fn home_bytes(pool: &Pool, t: u32, vpn: u64) -> Vec<u8> {
        let mut buf = vec![0u8; PAGE];
        pool.read_home(t, vpn, &mut buf).unwrap();
        buf
    }

    /// A streamed page is committed without being read from the source; an unchanged one gives
    /// its home back; a failed commit gives back every reserved home.
    #[test]
    fn streamed_pages_commit_in_place_and_unused_homes_go_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pool, t, mut img) = pool(dir.path());
        let free = pool.free_pm_pages();
        img[PAGE..2 * PAGE].fill(0x5a);
        img[3 * PAGE + 9] ^= 0xff;
        let one = pool
            .reserve_home(t, 1)
            .unwrap()
            .expect("page 1 has a PM home");
        let two = pool
            .reserve_home(t, 2)
            .unwrap()
            .expect("page 2 has a PM home");
        assert_eq!(pool.free_pm_pages(), free - 2);
        stream(&one, &img[PAGE..2 * PAGE]);
        stream(&two, &img[2 * PAGE..3 * PAGE]);
        let src = Streamed {
            image: &img,
            written: HashMap::from([(1, one.home), (2, two.home)]),
        };
        let (stats, changed) = pool.commit_epoch_changed(t, &[1, 2, 3], &src).unwrap();
        let vpns: Vec<u64> = changed.iter().map(|c| c.vpn).collect();
        assert_eq!(vpns, vec![1, 3], "page 2 was streamed unchanged");
        assert_eq!(changed[0].lines, 64);
        assert_eq!(stats.changed_pages, 2);
        assert_eq!(pool.tenant(t).unwrap().home(1), one.home);
        assert_eq!(
            pool.free_pm_pages(),
            free,
            "old home of 1 and the unused home of 2 freed"
        );
        assert_eq!(home_bytes(&pool, t, 1), img[PAGE..2 * PAGE]);
        assert_eq!(home_bytes(&pool, t, 3), img[3 * PAGE..]);

        let three = pool.reserve_home(t, 3).unwrap().unwrap();
        stream(&three, &img[3 * PAGE..]);
        let short = Streamed {
            image: &img[..PAGE],
            written: HashMap::from([(3, three.home)]),
        };
        assert!(pool.commit_epoch_changed(t, &[2, 3], &short).is_err());
        assert_eq!(
            pool.free_pm_pages(),
            free,
            "a failed commit gives the home back"
        );

        // A home given back as unchanged is not given back again when the commit then fails.
        let counts = pool.tenant(t).unwrap().home_counts();
        let zero = pool.reserve_home(t, 0).unwrap().unwrap();
        stream(&zero, &img[..PAGE]);
        let short = Streamed {
            image: &img[..2 * PAGE],
            written: HashMap::from([(0, zero.home)]),
        };
        assert!(pool.commit_epoch_changed(t, &[0, 3], &short).is_err());
        assert_eq!(pool.free_pm_pages(), free, "each home given back once");
        assert_eq!(pool.tenant(t).unwrap().home_counts(), counts);
        assert!(pool.reserve_home(t, 0).unwrap().is_some());
        let _ = pool.pm().drain();
    }

    /// A streamed page survives a reopen (recovery) of the pool.
    #[test]
    fn a_streamed_page_is_durable_after_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let (mut pool, t, mut img) = pool(dir.path());
        img[..PAGE].fill(0xa5);
        let zero = pool.reserve_home(t, 0).unwrap().unwrap();
        stream(&zero, &img[..PAGE]);
        crate::pm::flush::store_fence();
        let src = Streamed {
            image: &img,
            written: HashMap::from([(0, zero.home)]),
        };
        pool.commit_epoch(t, &[0], &src).unwrap();
        let (pm, cap) = (pool.pm().clone(), pool.capacity().clone());
        drop(pool);
        let reopened = Pool::open(pm, cap).unwrap().0;
        assert_eq!(home_bytes(&reopened, t, 0), img[..PAGE]);
    }
}

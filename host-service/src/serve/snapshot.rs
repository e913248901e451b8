//! vPM snapshot images: a tenant's committed vPM in a file with a checksummed header.
//!
//! Layout (little-endian): `magic` "VPMSNAP1" (8 bytes), `version` u32 = 1, `page_size` u32,
//! `pages` u64, `epoch` u64 (the tenant's committed epoch the image shows), `data_crc` u32
//! (CRC-32 of the data), `header_crc` u32 (CRC-32 of the 36 bytes before it), then
//! `pages * page_size` bytes of data. A snapshot is written to `PATH.tmp`, synced, and renamed to
//! `PATH`, so a crash never leaves a half-written image under the name asked for.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use vpm_abi::PAGE_SIZE;

use crate::pool::{Pool, PoolError};

/// The image's magic word.
pub const MAGIC: &[u8; 8] = b"VPMSNAP1";
/// Bytes of the header.
pub const HEADER_LEN: usize = 40;

/// Errors of snapshot images.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The image file could not be written or read.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The pool could not show the tenant's pages.
    #[error("read the tenant's committed vPM")]
    Pool(#[source] PoolError),
    /// The file is not a valid image.
    #[error("{path} is not a valid vPM snapshot: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
}

/// A snapshot image in memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The committed epoch it shows.
    pub epoch: u64,
    /// The vPM content, page after page.
    pub data: Vec<u8>,
}

impl Image {
    /// Reads tenant `tenant`'s committed vPM from `pool` (the caller makes sure no epoch or
    /// persist changes it meanwhile: the pool is locked here, and a running VM is parked).
    pub fn of_tenant(pool: &Pool, tenant: u32) -> Result<Image, SnapshotError> {
        let t = pool.tenant(tenant).map_err(SnapshotError::Pool)?;
        let (pages, epoch) = (t.pages(), t.epoch());
        let page = PAGE_SIZE as usize;
        let mut data = vec![0u8; pages as usize * page];
        for (vpn, buf) in data.chunks_exact_mut(page).enumerate() {
            pool.read_home(tenant, vpn as u64, buf)
                .map_err(SnapshotError::Pool)?;
        }
        Ok(Image { epoch, data })
    }

    /// Pages in the image.
    pub fn pages(&self) -> u64 {
        self.data.len() as u64 / PAGE_SIZE
    }

    /// CRC-32 of the data.
    pub fn data_crc(&self) -> u32 {
        crc32fast::hash(&self.data)
    }

    fn header(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..8].copy_from_slice(MAGIC);
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        h[16..24].copy_from_slice(&self.pages().to_le_bytes());
        h[24..32].copy_from_slice(&self.epoch.to_le_bytes());
        h[32..36].copy_from_slice(&self.data_crc().to_le_bytes());
        let hcrc = crc32fast::hash(&h[..36]);
        h[36..40].copy_from_slice(&hcrc.to_le_bytes());
        h
    }

    /// Writes the image to `path` (through `path.tmp`, synced, renamed).
    pub fn write(&self, path: &Path) -> Result<(), SnapshotError> {
        let tmp = path.with_extension("tmp");
        let io = |what| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { what, path, source }
        };
        let mut f = std::fs::File::create(&tmp).map_err(io("create"))?;
        f.write_all(&self.header()).map_err(io("write"))?;
        f.write_all(&self.data).map_err(io("write"))?;
        f.sync_all().map_err(io("sync"))?;
        std::fs::rename(&tmp, path).map_err(io("rename into place"))?;
        Ok(())
    }

    /// Reads and checks the image at `path`.
    pub fn read(path: &Path) -> Result<Image, SnapshotError> {
        let invalid = |why| SnapshotError::Invalid {
            path: path.to_path_buf(),
            why,
        };
        let io = |what| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io { what, path, source }
        };
        let mut f = std::fs::File::open(path).map_err(io("open"))?;
        let mut h = [0u8; HEADER_LEN];
        f.read_exact(&mut h)
            .map_err(|_| invalid("shorter than its header"))?;
        let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        if &h[0..8] != MAGIC {
            return Err(invalid("bad magic"));
        }
        if u32_at(36) != crc32fast::hash(&h[..36]) {
            return Err(invalid("header checksum mismatch"));
        }
        if u32_at(8) != 1 || u64::from(u32_at(12)) != PAGE_SIZE {
            return Err(invalid("unknown version or page size"));
        }
        let pages = u64_at(16);
        if pages == 0 || pages > (super::config::MAX_VPM_MIB << 20) / PAGE_SIZE {
            return Err(invalid("page count out of range"));
        }
        let mut data = Vec::with_capacity((pages * PAGE_SIZE) as usize);
        f.read_to_end(&mut data).map_err(io("read"))?;
        if data.len() as u64 != pages * PAGE_SIZE {
            return Err(invalid("data length differs from the header's page count"));
        }
        let image = Image {
            epoch: u64_at(24),
            data,
        };
        if image.data_crc() != u32_at(32) {
            return Err(invalid("data checksum mismatch"));
        }
        Ok(image)
    }

    /// Byte ranges `(offset, len)` of the runs of pages that are not all zeros.
    fn nonzero_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for (vpn, page) in self.data.chunks_exact(PAGE_SIZE as usize).enumerate() {
            if page.iter().all(|&b| b == 0) {
                continue;
            }
            let off = vpn as u64 * PAGE_SIZE;
            match runs.last_mut() {
                Some((o, l)) if *o + *l == off => *l += PAGE_SIZE,
                _ => runs.push((off, PAGE_SIZE)),
            }
        }
        runs
    }

    /// Makes the image the committed content of tenant `tenant` (a new, all-zero tenant of the
    /// same size): one persist batch over its non-zero pages (zero pages need no home), durable
    /// when this returns.
    pub fn restore_into(&self, pool: &mut Pool, tenant: u32) -> Result<(), SnapshotError> {
        let runs = self.nonzero_runs();
        if !runs.is_empty() {
            pool.persist(tenant, &runs, &self.data)
                .map_err(SnapshotError::Pool)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_round_trips_and_damage_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let mut data = vec![0u8; 2 * PAGE_SIZE as usize];
        data[5] = 9;
        data[PAGE_SIZE as usize + 7] = 3;
        let img = Image { epoch: 4, data };
        img.write(&path).unwrap();
        assert_eq!(Image::read(&path).unwrap(), img);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER_LEN + 5] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Image::read(&path),
            Err(SnapshotError::Invalid {
                why: "data checksum mismatch",
                ..
            })
        ));
        bytes[HEADER_LEN + 5] ^= 1;
        bytes[20] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            Image::read(&path),
            Err(SnapshotError::Invalid {
                why: "header checksum mismatch",
                ..
            })
        ));
        std::fs::write(&path, b"short").unwrap();
        assert_eq!(
            img.nonzero_runs(),
            [(0, 2 * PAGE_SIZE)],
            "both pages hold data"
        );
        assert!(Image::read(&path).is_err());
    }
}

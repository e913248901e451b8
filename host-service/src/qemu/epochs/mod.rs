//! Full-virtualization epochs for a QEMU guest: QEMU gives no dirty log of the shared RAM file,
//! so the pages changed since the last epoch are found by comparing vPM with a staged image.
//!
//! The stage starts as the committed image. While the guest runs, a pre-scan copies every page
//! that differs from the stage into it and marks it a candidate (the bulk of the copying, off the
//! pause). Then the guest is stopped (QMP `stop`), a second scan compares every page again and
//! copies the few that changed since the pre-scan: now the stage is exactly the guest's vPM at the
//! stop point, and the guest resumes (QMP `cont`). The candidates are committed from the stage
//! through the pool's epoch protocol while the guest runs; the epoch witness (outside the pool)
//! gets a line `epoch console_bytes` once the commit is durable: every console byte before
//! `console_bytes` was written by the guest before the stop, so whatever it acknowledged there is
//! in that epoch. If a commit fails the candidates stay marked and the error is returned.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use vpm_abi::PAGE_SIZE;

use super::qmp::{Qmp, QmpError};
use crate::pool::{Pool, PoolError};

/// Why an epoch failed.
#[derive(Debug, thiserror::Error)]
pub enum EpochError {
    /// Stopping or resuming the guest failed.
    #[error("stopping or resuming the guest: {0}")]
    Qmp(#[from] QmpError),
    /// The pool refused the commit (nothing committed; the tenant stays at its epoch).
    #[error("committing the epoch: {0}")]
    Commit(#[source] PoolError),
    /// The epoch witness could not be opened or written.
    #[error("epoch witness {}: {source}", path.display())]
    Witness {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How full-virt epochs are taken.
#[derive(Clone, Debug)]
pub struct EpochSpec {
    /// Interval between epochs (ms); 0 = only the final one.
    pub epoch_ms: u64,
    /// Append `epoch console_bytes` here after each committed epoch.
    pub witness: Option<PathBuf>,
}

/// What the epochs cost (printed in `vpm qemu`'s JSON line).
#[derive(Clone, Debug, Default, Serialize)]
pub struct EpochSummary {
    /// Epochs committed.
    pub epochs: u64,
    /// The last committed epoch number.
    pub epoch: u64,
    /// The pool's epoch when the guest started (recovered from the pool).
    pub start_epoch: u64,
    /// Guest pause per epoch (stop, second scan, resume), µs: median, 99th percentile, longest.
    pub pause_us_p50: u64,
    /// See `pause_us_p50`.
    pub pause_us_p99: u64,
    /// See `pause_us_p50`.
    pub pause_us_max: u64,
    /// The second scan's part of the pause, µs: median and longest.
    pub stop_scan_us_p50: u64,
    /// See `stop_scan_us_p50`.
    pub stop_scan_us_max: u64,
    /// Pre-scan time per epoch (guest running), µs: median and longest.
    pub prescan_us_p50: u64,
    /// See `prescan_us_p50`.
    pub prescan_us_max: u64,
    /// Commit time per epoch (guest running), µs: median and longest.
    pub commit_us_p50: u64,
    /// See `commit_us_p50`.
    pub commit_us_max: u64,
    /// Pages handed to the pool (differing from the stage at some scan).
    pub candidate_pages: u64,
    /// Of those, pages copied during the pause (changed after the pre-scan).
    pub paused_copies: u64,
    /// Pages whose content changed and were committed.
    pub committed_pages: u64,
    /// vPM pages compared per scan.
    pub vpm_pages: u64,
}

/// Percentile `p` (0..=100) of `v` (sorted in place); 0 for none.
fn percentile(v: &mut [u64], p: u64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as u64 - 1) * p).div_ceil(100) as usize;
    v[i.min(v.len() - 1)]
}

/// The staged image, the candidates and the measurements of one guest's epochs.
#[derive(Debug)]
pub struct EpochDriver {
    stage: Vec<u8>,
    candidate: Vec<bool>,
    witness: Option<(PathBuf, File)>,
    console: PathBuf,
    pauses: Vec<u64>,
    stop_scans: Vec<u64>,
    prescans: Vec<u64>,
    commits: Vec<u64>,
    summary: EpochSummary,
}

impl EpochDriver {
    /// A driver whose stage is `committed` (the vPM as rebuilt from the pool, at `epoch`);
    /// `console` is the guest's console log, whose length each witness line records.
    pub fn new(
        committed: &[u8],
        epoch: u64,
        spec: &EpochSpec,
        console: &Path,
    ) -> Result<EpochDriver, EpochError> {
        let witness = spec
            .witness
            .as_ref()
            .map(|p| {
                crate::private_file::options()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map(|f| (p.clone(), f))
                    .map_err(|source| EpochError::Witness {
                        path: p.clone(),
                        source,
                    })
            })
            .transpose()?;
        let pages = committed.len() / PAGE_SIZE as usize;
        Ok(EpochDriver {
            stage: committed.to_vec(),
            candidate: vec![false; pages],
            witness,
            console: console.to_path_buf(),
            pauses: Vec::new(),
            stop_scans: Vec::new(),
            prescans: Vec::new(),
            commits: Vec::new(),
            summary: EpochSummary {
                epoch,
                start_epoch: epoch,
                vpm_pages: pages as u64,
                ..EpochSummary::default()
            },
        })
    }

    /// Copies every page of `vpm` that differs from the stage into it and marks it; returns how
    /// many were copied.
    fn sync_stage(&mut self, vpm: &[u8]) -> u64 {
        let page = PAGE_SIZE as usize;
        let mut copied = 0;
        for (i, (s, v)) in self
            .stage
            .chunks_exact_mut(page)
            .zip(vpm.chunks_exact(page))
            .enumerate()
        {
            if s != v {
                s.copy_from_slice(v);
                self.candidate[i] = true;
                copied += 1;
            }
        }
        copied
    }

    /// Takes one epoch of the guest whose vPM is `vpm`: pre-scan, stop (when `qmp` is given; none
    /// when QEMU has exited and the memory no longer changes), second scan, resume, commit to
    /// `pool`, witness line.
    pub fn epoch(
        &mut self,
        vpm: &[u8],
        qmp: Option<&mut Qmp>,
        pool: &Mutex<Pool>,
        tenant: u32,
    ) -> Result<(), EpochError> {
        let t = Instant::now();
        self.sync_stage(vpm);
        self.prescans.push(t.elapsed().as_micros() as u64);

        let paused = Instant::now();
        let mut qmp = qmp;
        if let Some(q) = qmp.as_deref_mut() {
            q.stop()?;
        }
        // Console bytes written before the stop: the guest wrote them while running.
        let console_bytes = std::fs::metadata(&self.console).map_or(0, |m| m.len());
        let scan = Instant::now();
        let late = self.sync_stage(vpm);
        self.stop_scans.push(scan.elapsed().as_micros() as u64);
        if let Some(q) = qmp {
            q.cont()?;
        }
        self.pauses.push(paused.elapsed().as_micros() as u64);
        self.summary.paused_copies += late;

        let t = Instant::now();
        let dirty: Vec<u64> = (0..self.candidate.len() as u64)
            .filter(|&p| self.candidate[p as usize])
            .collect();
        let stats = pool
            .lock()
            .expect("pool")
            .commit_epoch(tenant, &dirty, &self.stage[..])
            .map_err(EpochError::Commit)?;
        self.commits.push(t.elapsed().as_micros() as u64);
        self.candidate.fill(false);
        self.summary.epochs += 1;
        self.summary.epoch = stats.epoch;
        self.summary.candidate_pages += dirty.len() as u64;
        self.summary.committed_pages += stats.changed_pages;
        if let Some((path, f)) = self.witness.as_mut() {
            writeln!(f, "{} {console_bytes}", stats.epoch).map_err(|source| {
                EpochError::Witness {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        tracing::debug!(
            epoch = stats.epoch,
            pages = stats.changed_pages,
            late,
            "full-virt epoch"
        );
        Ok(())
    }

    /// The measurements so far.
    pub fn summary(&self) -> EpochSummary {
        let mut s = self.summary.clone();
        let (mut p, mut sc, mut pre, mut c) = (
            self.pauses.clone(),
            self.stop_scans.clone(),
            self.prescans.clone(),
            self.commits.clone(),
        );
        s.pause_us_p50 = percentile(&mut p, 50);
        s.pause_us_p99 = percentile(&mut p, 99);
        s.pause_us_max = percentile(&mut p, 100);
        s.stop_scan_us_p50 = percentile(&mut sc, 50);
        s.stop_scan_us_max = percentile(&mut sc, 100);
        s.prescan_us_p50 = percentile(&mut pre, 50);
        s.prescan_us_max = percentile(&mut pre, 100);
        s.commit_us_p50 = percentile(&mut c, 50);
        s.commit_us_max = percentile(&mut c, 100);
        s
    }
}

#[cfg(test)]
mod tests;

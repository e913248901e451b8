//! The controller of a QEMU guest: one thread owns the QMP session (QEMU's QMP socket serves one
//! client) and, in full mode, the epoch driver. It takes the periodic full-virt epochs, stops
//! the guest while the operator holds it ([`VmControl::hold`], QMP `stop`; `cont` on release),
//! and serves the operator's epoch requests ([`VmControl::request_epoch`]):
//!
//! - full mode: an epoch of the [`EpochDriver`] (pre-scan, stop, second scan, `cont`, commit),
//!   as the periodic ones; any failure ends the controller and QEMU (the guest never runs on
//!   without epochs, docs/semantics.md);
//! - PV mode: the guest stopped (QMP `stop`), every vPM page committed (as the guest's own
//!   REQUEST_EPOCH does, diffed against the homes), `cont`: an image of one instant. A commit the
//!   pool refuses is answered as an error and the guest runs on (PV promises epochs on request
//!   only; nothing was committed); a QMP failure ends the controller.
//!
//! While the guest is held, epochs take no `stop`/`cont` of their own: the memory is still.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::epochs::{EpochDriver, EpochError};
use super::qmp::Qmp;
use super::QemuTarget;
use crate::vmm::VmControl;

/// How long QEMU may take to open its QMP socket.
const QMP_WAIT: Duration = Duration::from_secs(30);

/// How often the controller looks at the operator's requests.
const POLL: Duration = Duration::from_millis(5);

/// What the controller needs besides its QMP session.
pub(super) struct Controller<'a> {
    /// The guest.
    pub target: &'a QemuTarget,
    /// The operator's requests.
    pub control: &'a VmControl,
    /// The QMP socket QEMU listens on.
    pub qmp_path: &'a Path,
    /// Periodic full-virt epochs (`None`: none; only on request and the final one).
    pub every: Option<Duration>,
    /// Set when QEMU has gone.
    pub done: &'a AtomicBool,
}

impl Controller<'_> {
    /// Serves until `done` or a failure; returns the driver (full mode) and the first error.
    pub fn run(self, mut d: Option<EpochDriver>) -> (Option<EpochDriver>, Result<(), EpochError>) {
        let r = self.serve(&mut d);
        // Requests queued now would wait for nobody: drop them (their owners see the end).
        self.control.close_epoch_requests();
        self.control.set_parked(false);
        (d, r)
    }

    fn serve(&self, d: &mut Option<EpochDriver>) -> Result<(), EpochError> {
        // QEMU creates the socket as it starts (or never, when it fails to start).
        let connected = Instant::now();
        let mut qmp = loop {
            match Qmp::connect(self.qmp_path, Duration::from_millis(100)) {
                Ok(q) => break q,
                Err(e) if self.done.load(Ordering::SeqCst) || connected.elapsed() > QMP_WAIT => {
                    return Err(e.into())
                }
                Err(_) => {}
            }
        };
        let mut stopped = false;
        let mut next = self.every.map(|e| Instant::now() + e);
        while !self.done.load(Ordering::SeqCst) {
            let held = self.control.is_held();
            if held && !stopped {
                qmp.stop()?;
                stopped = true;
                self.control.set_parked(true);
                tracing::debug!("QEMU guest paused");
            } else if !held && stopped {
                qmp.cont()?;
                stopped = false;
                self.control.set_parked(false);
                tracing::debug!("QEMU guest resumed");
            }
            for reply in self.control.take_epoch_requests() {
                match self.epoch(d, &mut qmp, stopped) {
                    Ok(epoch) => reply(Ok(epoch)),
                    Err(e) => {
                        reply(Err(crate::error_chain(&e)));
                        // Only a PV commit the pool refused leaves the guest running on.
                        if d.is_some() || !matches!(e, EpochError::Commit(_)) {
                            return Err(e);
                        }
                    }
                }
            }
            let now = Instant::now();
            if let (Some(n), Some(every)) = (next, self.every) {
                if now >= n {
                    next = Some(now + every);
                    self.epoch(d, &mut qmp, stopped)?;
                }
            }
            let wait = next.map_or(POLL, |n| n.saturating_duration_since(Instant::now()));
            std::thread::sleep(wait.min(POLL));
        }
        Ok(())
    }

    /// Takes one epoch now (the guest stopped by the operator when `stopped`); returns the
    /// committed epoch.
    fn epoch(
        &self,
        d: &mut Option<EpochDriver>,
        qmp: &mut Qmp,
        stopped: bool,
    ) -> Result<u64, EpochError> {
        let t = self.target;
        match d {
            Some(d) => {
                let q = (!stopped).then_some(qmp);
                d.epoch(t.vpm(), q, &t.pool, t.tenant)?;
                let s = d.summary();
                let mut st = t.stats.lock().expect("stats");
                st.epochs = s.epochs;
                st.epoch = s.epoch;
                st.committed_pages = s.committed_pages;
                st.pause_us_max = s.pause_us_max;
                Ok(s.epoch)
            }
            None => {
                let paused = Instant::now();
                if !stopped {
                    qmp.stop()?;
                }
                let r = t.commit_all();
                if !stopped {
                    qmp.cont()?;
                }
                let pause = paused.elapsed().as_micros() as u64;
                let c = r.map_err(EpochError::Commit)?;
                let mut st = t.stats.lock().expect("stats");
                st.pause_us_max = st.pause_us_max.max(pause);
                Ok(c.epoch)
            }
        }
    }
}

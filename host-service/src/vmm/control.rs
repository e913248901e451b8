//! Operator control of a running VM (used by `vpm serve`): hold the vCPU (pause) and release it,
//! stop the VM, and run jobs while the vCPU is parked after an epoch (epoch requests, vPM
//! snapshots). The controller of [`super::run::run_vm_controlled`] serves these requests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::context::VmContext;

/// Work the controller runs with the vCPU parked, right after it committed an epoch (tiered
/// modes): the VM's committed vPM is its current content while the job runs.
pub type ParkedJob = Box<dyn FnOnce(&VmContext) + Send>;

/// The answer to an operator's epoch request served by a VMM that has no [`VmContext`] (the
/// QEMU front): the committed epoch, or why none was committed.
pub type EpochReply = Box<dyn FnOnce(Result<u64, String>) + Send>;

/// Requests to a running VM's controller, and a handle on the running VM.
pub struct VmControl {
    held: AtomicBool,
    parked: AtomicBool,
    stop: AtomicBool,
    jobs: Mutex<Vec<ParkedJob>>,
    /// Epoch requests for the QEMU front's controller; `None` once it has ended.
    epochs: Mutex<Option<Vec<EpochReply>>>,
    running: Mutex<Option<Arc<VmContext>>>,
}

impl std::fmt::Debug for VmControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmControl")
            .field("held", &self.is_held())
            .field("stop", &self.stop_requested())
            .finish_non_exhaustive()
    }
}

impl Default for VmControl {
    fn default() -> VmControl {
        VmControl {
            held: AtomicBool::new(false),
            parked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            jobs: Mutex::new(Vec::new()),
            epochs: Mutex::new(Some(Vec::new())),
            running: Mutex::new(None),
        }
    }
}

impl VmControl {
    /// Asks the controller to park the vCPU until [`VmControl::release`].
    pub fn hold(&self) {
        self.held.store(true, Ordering::Release);
    }

    /// Lets a held vCPU run again.
    pub fn release(&self) {
        self.held.store(false, Ordering::Release);
    }

    /// Whether the vCPU is to be held.
    pub fn is_held(&self) -> bool {
        self.held.load(Ordering::Acquire)
    }

    /// Whether the hold has taken effect: the vCPU is parked (it runs no guest code until
    /// released).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Acquire)
    }

    pub(crate) fn set_parked(&self, parked: bool) {
        self.parked.store(parked, Ordering::Release);
    }

    /// Asks the controller to stop the VM (a final epoch commits in the tiered modes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Queues `job` to run with the vCPU parked after the next epoch. If the VM ends first the
    /// job is dropped unrun (its owner sees a closed channel).
    pub fn run_parked(&self, job: ParkedJob) {
        self.jobs.lock().expect("jobs").push(job);
    }

    /// The queued jobs, taken.
    pub(super) fn take_jobs(&self) -> Vec<ParkedJob> {
        std::mem::take(&mut *self.jobs.lock().expect("jobs"))
    }

    /// Whether jobs wait.
    pub(super) fn has_jobs(&self) -> bool {
        !self.jobs.lock().expect("jobs").is_empty()
    }

    /// Asks the QEMU front's controller for an epoch now; `reply` gets its answer. If the
    /// controller has ended (or ends before serving it) `reply` is dropped unrun.
    pub fn request_epoch(&self, reply: EpochReply) {
        if let Some(q) = self.epochs.lock().expect("epochs").as_mut() {
            q.push(reply);
        }
    }

    /// The queued epoch requests, taken.
    pub(crate) fn take_epoch_requests(&self) -> Vec<EpochReply> {
        self.epochs
            .lock()
            .expect("epochs")
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The controller has ended: epoch requests queued or made from now on are dropped.
    pub(crate) fn close_epoch_requests(&self) {
        self.epochs.lock().expect("epochs").take();
    }

    /// The running VM, while it runs (for its counters).
    pub fn running(&self) -> Option<Arc<VmContext>> {
        self.running.lock().expect("running").clone()
    }

    pub(super) fn set_running(&self, vm: Option<Arc<VmContext>>) {
        *self.running.lock().expect("running") = vm;
    }
}

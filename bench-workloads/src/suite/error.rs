//! Why the suite could not run: one error type for the suite's runs, VMs and outputs.

use std::path::{Path, PathBuf};

use vpm_host::pm::PmError;
use vpm_host::pool::PoolError;
use vpm_host::vmm::VmmError;

/// Why the suite (or one of its runs) failed.
#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
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
    /// A pool, capacity or floor file could not be opened as a PM device.
    #[error("open {}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// The device's error.
        #[source]
        source: PmError,
    },
    /// A raw copy+flush (the floor the modes are compared with) failed.
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
    /// The pool refused a VM's tenant.
    #[error("add tenant {name} to the pool")]
    AddTenant {
        /// The tenant (the job's name).
        name: String,
        /// The pool's error.
        #[source]
        source: PoolError,
    },
    /// The VMM failed while running a VM.
    #[error("run VM {name}")]
    Vm {
        /// The job's name.
        name: String,
        /// The VMM's error.
        #[source]
        source: VmmError,
    },
    /// The guest ended with a failure report.
    #[error("{name}: the guest failed: {message}")]
    GuestFailed {
        /// The job's name.
        name: String,
        /// The guest's message.
        message: String,
    },
    /// The guest finished but counted errors.
    #[error("{name}: guest reported {errors} errors")]
    GuestErrors {
        /// The job's name.
        name: String,
        /// How many.
        errors: u64,
    },
    /// A thread running a consolidation VM panicked.
    #[error("VM thread panicked")]
    VmThreadPanicked,
    /// The `vpm` executable the recovery run starts is not built.
    #[error("{} missing: cargo build --release -p vpm-host", path.display())]
    VpmMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The `vpm guest` process could not be started or killed.
    #[error("{what} {}", path.display())]
    Process {
        /// What was being done.
        what: &'static str,
        /// The executable.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A request to `vpm serve` could not be sent or answered (the socket, HTTP).
    #[error("vpm serve: {call}")]
    Client {
        /// The request (method and path).
        call: String,
        /// The client's error.
        #[source]
        source: vpm_host::serve::client::ClientError,
    },
    /// `vpm serve` answered a request with an error status or a body that is not JSON.
    #[error("vpm serve: {call}: HTTP {status}: {body}")]
    Api {
        /// The request (method and path).
        call: String,
        /// The HTTP status.
        status: u16,
        /// The body.
        body: String,
    },
    /// `vpm serve` or one of its VMs did not do what the benchmark needs (did not start, exited,
    /// a VM failed or did not finish in time); the service's log tail is in the message.
    #[error("vpm serve: {0}")]
    Service(String),
    /// The results could not be turned into JSON.
    #[error("encode the results as JSON")]
    Json(#[source] serde_json::Error),
}

impl SuiteError {
    /// A mapper of an I/O error on `path` while doing `what`.
    pub fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| SuiteError::Io { what, path, source }
    }

    /// A mapper of a device error while opening `path`.
    pub fn open(path: &Path) -> impl FnOnce(PmError) -> Self {
        let path = path.to_path_buf();
        move |source| SuiteError::Open { path, source }
    }

    /// A mapper of a pool error while doing `what`.
    pub fn pool(what: &'static str) -> impl FnOnce(PoolError) -> Self {
        move |source| SuiteError::Pool { what, source }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn errors_keep_their_source_and_say_what_was_done() {
        let e = SuiteError::io("write", Path::new("/x/report.md"))(std::io::Error::from(
            std::io::ErrorKind::PermissionDenied,
        ));
        assert_eq!(e.to_string(), "write /x/report.md");
        assert!(e.source().is_some());
        let e = SuiteError::pool("open the pool")(PoolError::UnknownTenant(3));
        assert_eq!(e.to_string(), "open the pool");
        assert_eq!(
            e.source().map(|s| s.to_string()),
            Some("no tenant 3".into())
        );
        let e = SuiteError::GuestErrors {
            name: "w-pv".into(),
            errors: 2,
        };
        assert_eq!(e.to_string(), "w-pv: guest reported 2 errors");
        assert!(e.source().is_none());
    }
}

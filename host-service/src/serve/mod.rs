//! `vpm serve`: one long-running host service that owns one pool and runs many VMs on it, each
//! VM a tenant, controlled over HTTP/1.1 + JSON on a Unix socket (API shaped like Cloud
//! Hypervisor's, described in docs/api/openapi.json), with Prometheus metrics at `/metrics`.
//!
//! By concern: [`config`] is the VM configuration the API takes; [`arbiter`] divides one DRAM budget among
//! the VMs by heat; [`vms`] the VMs and their
//! states; [`service`] the operations; [`snapshot`] the vPM image files; [`routes`] the HTTP
//! side; [`metrics`] the exposition; [`ndjson`] the periodic metrics line; [`socket`] the listening socket; [`client`] the client of
//! `vpm ctl`.

pub mod arbiter;
pub mod client;
pub mod config;
pub mod metrics;
pub mod ndjson;
pub mod routes;
pub mod service;
pub mod snapshot;
pub mod socket;
pub mod vms;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::pool::Pool;
pub use service::Service;

/// Errors of the service as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The socket could not be set up.
    #[error(transparent)]
    Socket(#[from] socket::SocketError),
    /// The async runtime could not start or serve.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Where the service listens and keeps its files.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The Unix socket.
    pub socket: PathBuf,
    /// The state directory (VMs' working files).
    pub work_dir: PathBuf,
    /// DRAM budget of all VMs together, bytes (`None`: no limit).
    pub dram_budget_bytes: Option<u64>,
    /// How the budget is divided: by heat, or each VM keeping the share it was created with.
    pub dram_policy: DramPolicy,
    /// Append an NDJSON metrics line to this file every `metrics_interval`.
    pub metrics_ndjson: Option<PathBuf>,
    /// Interval of the NDJSON metrics lines.
    pub metrics_interval: Duration,
}

/// How `vpm serve --dram-mib` divides its DRAM budget among the VMs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DramPolicy {
    /// The arbiter divides the budget among the running tiered VMs by heat every 250 ms.
    #[default]
    Shared,
    /// Static shares: every VM keeps the `dram_mib` it was created with (the budget only
    /// refuses VMs whose share does not fit); no arbiter runs.
    Static,
}

/// Serves `pool` until SIGTERM or SIGINT; then stops every VM (their final epochs commit) and
/// removes the socket. `recovery` is how long opening the pool took (a metric).
pub fn run(pool: Pool, recovery: Duration, opts: &ServeOptions) -> Result<(), ServeError> {
    let listener = socket::bind(&opts.socket)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| ServeError::Io {
            what: "start the async runtime",
            source,
        })?;
    let service = Arc::new(Service::new(
        pool,
        opts.work_dir.clone(),
        recovery,
        opts.dram_budget_bytes,
    ));
    let r = rt.block_on(async {
        let listener =
            tokio::net::UnixListener::from_std(listener).map_err(|source| ServeError::Io {
                what: "register the socket",
                source,
            })?;
        tracing::info!(socket = %opts.socket.display(), "vpm serve listening");
        eprintln!("vpm serve: listening on {}", opts.socket.display());
        let shared = opts.dram_policy == DramPolicy::Shared;
        let arbiter = opts.dram_budget_bytes.filter(|_| shared).map(|bytes| {
            let s = service.clone();
            let pages = bytes / vpm_abi::PAGE_SIZE;
            tokio::spawn(async move { arbiter::run(s, pages, Duration::from_millis(250)).await })
        });
        let lines = opts.metrics_ndjson.clone().map(|path| {
            let (s, every) = (service.clone(), opts.metrics_interval);
            tokio::spawn(async move { ndjson::write_every(s, &path, every).await })
        });
        axum::serve(listener, routes::router(service.clone()))
            .with_graceful_shutdown(stop_signal())
            .await
            .map_err(|source| ServeError::Io {
                what: "serve",
                source,
            })?;
        if let Some(task) = lines {
            task.abort();
        }
        if let Some(task) = arbiter {
            task.abort();
        }
        service.stop_all().await;
        Ok(())
    });
    let _ = std::fs::remove_file(&opts.socket);
    r
}

/// Resolves on SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the service runs until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("vpm serve: stopping");
}

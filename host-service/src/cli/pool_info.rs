//! `vpm pool-info`: verifies an existing pool (recovering it) and prints its tenants.

use std::path::PathBuf;

use vpm_host::pool::Pool;
use vpm_host::state_dir::StateDir;

use super::guest::{open_existing_pool, PAGES_PER_MIB};
use super::CliError;

/// `vpm pool-info` options.
#[derive(clap::Args, Debug)]
pub struct PoolInfoArgs {
    /// State directory holding the pool.
    #[arg(long, value_name = "DIR", default_value = "/dev/shm/vpm")]
    pub state: PathBuf,
}

/// Prints the pool's geometry and tenants. A missing directory or pool is an error; nothing is
/// created.
pub fn run(a: &PoolInfoArgs) -> Result<(), CliError> {
    let state = StateDir::open_existing(&a.state)?;
    let pool = open_existing_pool(&state)?;
    let h = pool.header();
    println!(
        "pool {}: {} MiB, {} PM homes ({} free), PM flush: {}",
        a.state.join("pool").display(),
        h.total_bytes >> 20,
        h.data_pages,
        pool.free_pm_pages(),
        pool.pm().method().name()
    );
    print_tenants(&pool)?;
    Ok(())
}

/// Prints one line per tenant: name, vPM size, committed epoch and where its homes are.
pub fn print_tenants(pool: &Pool) -> Result<(), CliError> {
    for id in pool.tenant_ids() {
        let t = pool.tenant(id).map_err(|source| CliError::Pool {
            what: format!("read tenant {id}"),
            source,
        })?;
        let (pm, cap) = t.home_counts();
        println!(
            "  tenant {id} {:<12} vPM {:>5} MiB  epoch {:>6}  homes: {pm} PM, {cap} capacity",
            t.desc().name_str(),
            t.pages() / PAGES_PER_MIB,
            t.epoch()
        );
    }
    Ok(())
}

//! `vpm qemu`: a Linux guest under QEMU (TCG) with vPM served by this process.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use vpm_host::qemu::{run_qemu, EpochSpec, QemuSpec, MAX_VCPUS};
use vpm_host::state_dir::StateDir;

use super::guest::{open_pool, tenant_for, GuestArgs};
use super::values::{seconds, ModeArg};
use super::CliError;

/// `vpm qemu` options: the Linux guest's, then the guest options of `vpm guest`.
#[derive(clap::Args, Debug)]
pub struct QemuArgs {
    /// Guest kernel (bzImage).
    #[arg(long, value_name = "BZIMAGE")]
    pub kernel: PathBuf,
    /// Initramfs.
    #[arg(long, value_name = "INITRD")]
    pub initrd: PathBuf,
    /// What the in-guest vpmtest runs (spaces become commas).
    #[arg(long, value_name = "ARGS", default_value = "basic")]
    pub vpmtest: String,
    /// Give up after S seconds (finite, not negative).
    #[arg(long, value_name = "S", default_value = "120", value_parser = seconds,
          allow_hyphen_values = true)]
    pub timeout: f64,
    /// Extra kernel command line.
    #[arg(long, value_name = "TEXT", default_value = "")]
    pub append: String,
    /// vCPUs of the guest (QEMU `-smp N`; the guest kernel supports up to 8).
    #[arg(long, value_name = "N", default_value = "1", allow_hyphen_values = true,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_VCPUS)))]
    pub smp: u32,
    /// The VM's pool, tenant and vPM. Mode pv (the default) serves vpm.ko's hints; mode full
    /// takes an epoch every --epoch-ms (stopping the guest over QMP; 0 = only when QEMU exits)
    /// and appends `epoch console_bytes` to --epoch-witness after each.
    #[command(flatten)]
    pub guest: GuestArgs,
}

/// Boots the guest, prints its console and a JSON line.
pub fn run(a: &QemuArgs) -> Result<(), CliError> {
    let o = &a.guest;
    let full = match o.mode {
        None | Some(ModeArg::Pv) => false,
        Some(ModeArg::Full) => true,
        Some(_) => return Err(CliError::QemuMode),
    };
    let state = StateDir::open(&o.state)?;
    let mut pool = open_pool(&state, o.pool_mib)?;
    let tenant = tenant_for(&mut pool, o, o.vpm_mib_or(64))?;
    let spec = QemuSpec {
        state: o.state.clone(),
        name: o.vm.clone(),
        kernel: a.kernel.clone(),
        initrd: a.initrd.clone(),
        append: format!("vpmtest={} {}", a.vpmtest.replace(' ', ","), a.append),
        // vPM from 384 MiB, and 64 MiB of RAM above it (QEMU puts firmware tables at the top of
        // RAM, which must not overlap the e820 PM range).
        ram_mib: 512.max(384 + o.vpm_mib_or(64) + 64),
        vpm_offset_mib: 384,
        vcpus: a.smp,
        timeout: Duration::from_secs_f64(a.timeout),
        persist_witness: o.witness.clone(),
        // Off unless asked for: under TCG a poller competes with QEMU's vCPU threads.
        poll_us: o.poll_us.unwrap_or(0),
        epochs: full.then(|| EpochSpec {
            epoch_ms: o.epoch_ms,
            witness: o.epoch_witness.clone(),
        }),
    };
    let out =
        run_qemu(&spec, Arc::new(Mutex::new(pool)), tenant).map_err(|source| CliError::Qemu {
            vm: o.vm.clone(),
            source,
        })?;
    print!("{}", out.console);
    println!(
        "{}",
        json!({"exited": out.exited, "stats": out.stats, "epochs": out.epochs})
    );
    Ok(())
}

//! `vpm-bench ext4`: the same ext4 workload in a Linux guest (one writer that fsyncs small
//! appends and small new files, one that rewrites a large file and never syncs; a fixed number of
//! operations) booted three ways, one after the other: (a) QEMU's own virtio-pmem-pci over a
//! backing file (`/dev/pmem0`, ext4 -o dax, no vpm.ko), (b) VPM full-virt on `/dev/pmem0` with
//! ext4 -o dax and periodic epochs, (c) the VPM block device `/dev/vpmblk0` with ext4 (vpm.ko).
//! Each configuration gets one boot that makes the filesystem and one measured boot that runs the
//! workload; per guest fsync it reports the bytes the host made durable, the host's time and the
//! guest-visible fsync latency, and the ratio VPM block / virtio-pmem of host bytes per fsync
//! against the target (≤ 1/10). Writes `ext4cmp.json` and `ext4cmp.md` under `--out`.

mod boot;
pub mod report;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;

use boot::{BootError, Guest, LoopFs};
use report::{ReportError, Row};

/// Options of `vpm-bench ext4`.
#[derive(clap::Args, Debug)]
pub struct Ext4Args {
    /// Directory for the results.
    #[arg(long, value_name = "DIR", default_value = "results")]
    pub out: PathBuf,
    /// A shorter run (40 operations instead of --ops).
    #[arg(long)]
    pub quick: bool,
    /// Operations of the syncing writer (each one or two fsyncs, and 1 MiB of unsynced writes).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub ops: u64,
    /// Epoch period of the VPM full-virt configuration, ms.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub epoch_ms: u64,
}

/// Why `vpm-bench ext4` failed.
#[derive(Debug, thiserror::Error)]
pub enum Ext4CmpError {
    /// A prerequisite is missing.
    #[error("{0} is missing: {1}")]
    Missing(&'static str, String),
    /// Building the guest failed.
    #[error("building the guest (guest-driver/build-guest.sh)")]
    Guest(#[source] BootError),
    /// A boot of one configuration failed.
    #[error("{config}")]
    Boot {
        /// The configuration.
        config: &'static str,
        /// Why.
        #[source]
        source: BootError,
    },
    /// A configuration's console could not be read as a finished bench.
    #[error("{config}: the guest's output")]
    Report {
        /// The configuration.
        config: &'static str,
        /// Why.
        #[source]
        source: ReportError,
    },
    /// A results file could not be written.
    #[error("write {0}")]
    Write(PathBuf, #[source] std::io::Error),
}

/// Runs the comparison and writes its results under `a.out`.
pub fn run(a: &Ext4Args) -> Result<(), Ext4CmpError> {
    let ops = if a.quick { 40 } else { a.ops };
    let vpm = std::env::current_exe()
        .ok()
        .and_then(|p| Some(p.parent()?.join("vpm")))
        .filter(|p| p.exists())
        .ok_or_else(|| {
            Ext4CmpError::Missing(
                "the vpm binary",
                "build it beside vpm-bench (cargo build --release -p vpm-host)".into(),
            )
        })?;
    for tool in ["qemu-system-x86_64", "strace", "losetup", "mkfs.ext4"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(Ext4CmpError::Missing(
                "a host tool",
                format!("{tool} (tests/setup/install-deps.sh; strace from apt)"),
            ));
        }
    }
    let work = a.out.join("ext4cmp-work");
    vpm_host::private_file::create_dir_all(&work)
        .map_err(|e| Ext4CmpError::Write(work.clone(), e))?;
    let g = build_guest(&work)?;
    // Progress on stderr: six TCG boots take minutes.
    eprintln!("vpm-bench ext4: {ops} operations; (a) virtio-pmem");
    let a_row = virtio_pmem_row(&g, &work, ops)?;
    eprintln!("vpm-bench ext4: (b) VPM full-virt");
    let b_row = vpm_full_row(&vpm, &g, ops, a.epoch_ms)?;
    eprintln!("vpm-bench ext4: (c) VPM block");
    let rows = vec![a_row, b_row, vpm_block_row(&vpm, &g, ops)?];
    let platform = crate::stats::platform_note();
    let md = format!(
        "Mixed ext4 workload, {ops} operations of the syncing writer (one 1 MiB unsynced write \
         each by the other writer).\n\n{}",
        report::markdown(&rows, &platform)
    );
    let js = report::to_json(&rows, &platform);
    print!("{md}");
    let _ = std::fs::remove_dir_all(&work);
    for (name, text) in [("ext4cmp.md", md), ("ext4cmp.json", format!("{js:#}\n"))] {
        let p = a.out.join(name);
        vpm_host::private_file::write(&p, text).map_err(|e| Ext4CmpError::Write(p, e))?;
    }
    Ok(())
}

/// Builds the guest into `work/guest`; the kernel, initramfs and common boot options.
fn build_guest(work: &Path) -> Result<Guest, Ext4CmpError> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../guest-driver/build-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("VPM_GUEST_OUT", work.join("guest"))
        .output()
        .map_err(|source| {
            Ext4CmpError::Guest(BootError::Spawn {
                what: script.display().to_string(),
                source,
            })
        })?;
    if !out.status.success() {
        return Err(Ext4CmpError::Guest(BootError::Failed {
            what: "build-guest.sh".into(),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        }));
    }
    let vars: HashMap<String, PathBuf> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), PathBuf::from(v)))
        .collect();
    let get = |k: &str| {
        vars.get(k)
            .cloned()
            .ok_or_else(|| Ext4CmpError::Missing("build-guest.sh output", format!("no {k}= line")))
    };
    // TCG's TSC runs at the host's rate, which the guest's calibration misjudges on a loaded
    // host (its clock then runs several times too fast); tell it the host's frequency.
    let tsc_khz = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("cpu MHz"))?
                .split(':')
                .nth(1)?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(String::new(), |mhz| {
            format!(" tsc_early_khz={}", (mhz * 1000.0) as u64)
        });
    Ok(Guest {
        kernel: get("KERNEL_BZIMAGE")?,
        initrd: get("INITRAMFS")?,
        common: format!("no_timer_check loglevel=1{tsc_khz}"),
        timeout: Duration::from_secs(300),
    })
}

/// (a) QEMU's virtio-pmem-pci over a file on a loop device's ext4.
fn virtio_pmem_row(g: &Guest, work: &Path, ops: u64) -> Result<Row, Ext4CmpError> {
    const C: &str = "virtio-pmem";
    let boot_err = |source| Ext4CmpError::Boot { config: C, source };
    let fs =
        LoopFs::new(&work.join("vp.img"), &work.join("vp-mnt"), 512 << 20).map_err(boot_err)?;
    let backing = fs.mnt.join("backing");
    let (console, trace) = (work.join("vp.console"), work.join("vp.strace"));
    boot::virtio_pmem(g, &backing, &console, &trace, "mkfs").map_err(boot_err)?;
    fs.sync().map_err(boot_err)?;
    let before = fs.bytes_written().map_err(boot_err)?;
    let text = boot::virtio_pmem(
        g,
        &backing,
        &console,
        &trace,
        &format!("bench vpmbench={ops}"),
    )
    .map_err(boot_err)?;
    let host_bytes = fs.bytes_written().map_err(boot_err)? - before;
    let guest = report::parse_console(&text)
        .map_err(|source| Ext4CmpError::Report { config: C, source })?;
    let strace = std::fs::read_to_string(&trace).unwrap_or_default();
    let (calls, secs) = report::parse_strace(&strace);
    Ok(Row {
        name: C,
        setup: "QEMU virtio-pmem-pci, /dev/pmem0, ext4 -o dax, no vpm.ko".into(),
        host_us_per_fsync: secs * 1e6 / guest.fsyncs.max(1) as f64,
        guest,
        host_bytes,
        bytes_source: "sectors written to the loop device holding the backing file's ext4 \
                       (/sys/block/loopN/stat) during the measured boot: what QEMU's fsyncs \
                       (and the host's writeback) really wrote"
            .into(),
        time_source: "QEMU's fsync/fdatasync calls timed by strace -f -T (seccomp-filtered), \
                      summed and divided by guest fsyncs"
            .into(),
        detail: json!({
            "qemu_fsync_calls": calls,
            "qemu_fsync_us_total": secs * 1e6,
            "qemu_fsync_us_mean": if calls > 0 { secs * 1e6 / calls as f64 } else { 0.0 },
        }),
    })
}

/// A state directory in /dev/shm for `vpm qemu`, removed on drop.
struct State(PathBuf);

impl State {
    fn new(name: &str) -> State {
        let d = PathBuf::from(format!(
            "/dev/shm/vpm-ext4cmp-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        State(d)
    }
}

impl Drop for State {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `vpm qemu` configuration: a fresh boot making the filesystem, then the measured boot.
fn vpm_boots(
    config: &'static str,
    vpm: &Path,
    g: &Guest,
    epoch_ms: Option<u64>,
    fs: &str,
    ops: u64,
) -> Result<(report::GuestRun, serde_json::Value), Ext4CmpError> {
    let boot_err = |source| Ext4CmpError::Boot { config, source };
    let s = State::new(config);
    boot::vpm_qemu(vpm, g, &s.0, epoch_ms, &format!("{fs} vpmrun=mkfs"), true).map_err(boot_err)?;
    let (text, summary) = boot::vpm_qemu(
        vpm,
        g,
        &s.0,
        epoch_ms,
        &format!("{fs} vpmrun=bench vpmbench={ops}"),
        false,
    )
    .map_err(boot_err)?;
    let guest =
        report::parse_console(&text).map_err(|source| Ext4CmpError::Report { config, source })?;
    Ok((guest, summary))
}

/// (b) VPM full-virt: /dev/pmem0 (the e820 PM range), ext4 -o dax, periodic epochs.
fn vpm_full_row(vpm: &Path, g: &Guest, ops: u64, epoch_ms: u64) -> Result<Row, Ext4CmpError> {
    const C: &str = "vpm-full";
    let fs = "vpmmod=0 vpmdev=/dev/pmem0 vpmfs=dax vpmtag=b";
    let (guest, summary) = vpm_boots(C, vpm, g, Some(epoch_ms), fs, ops)?;
    let e = &summary["epochs"];
    let n = |k: &str| e[k].as_u64().unwrap_or(0);
    let per_epoch_us = n("prescan_us_p50") + n("pause_us_p50") + n("commit_us_p50");
    Ok(Row {
        name: C,
        setup: format!("vpm qemu --mode full --epoch-ms {epoch_ms}, /dev/pmem0, ext4 -o dax"),
        host_bytes: n("committed_pages") * vpm_abi::PAGE_SIZE,
        host_us_per_fsync: (n("epochs") * per_epoch_us) as f64 / guest.fsyncs.max(1) as f64,
        guest,
        bytes_source: "pages the epochs committed × 4 KiB (host stats; a guest fsync never \
                       reaches the host, data is durable at the next epoch)"
            .into(),
        time_source: "epochs × (pre-scan + pause + commit, medians), divided by guest fsyncs"
            .into(),
        detail: summary,
    })
}

/// (c) VPM PV block device /dev/vpmblk0, ext4, vpm.ko.
fn vpm_block_row(vpm: &Path, g: &Guest, ops: u64) -> Result<Row, Ext4CmpError> {
    const C: &str = "vpm-block";
    let fs = "vpmdev=/dev/vpmblk0 vpmfs=plain vpmtag=b";
    let (guest, summary) = vpm_boots(C, vpm, g, None, fs, ops)?;
    let st = &summary["stats"];
    let n = |k: &str| st[k].as_u64().unwrap_or(0);
    let detail = json!({
        "host": summary,
        "guest_blk_flush_bytes_during_bench": guest.delta("blk_flush_bytes"),
        "guest_blk_fua_bytes_during_bench": guest.delta("blk_fua_bytes"),
        "guest_blk_flushes_during_bench": guest.delta("blk_flushes"),
    });
    Ok(Row {
        name: C,
        setup: "vpm qemu (PV), vpm.ko /dev/vpmblk0, ext4".into(),
        host_bytes: n("persist_requested_bytes"),
        host_us_per_fsync: n("persist_us") as f64 / guest.fsyncs.max(1) as f64,
        guest,
        bytes_source: "bytes the host persisted for the driver's flush/FUA hints \
                       (host stats persist_requested_bytes) during the measured boot"
            .into(),
        time_source: "the hint service's time in the pool's persist (host stats persist_us), \
                      divided by guest fsyncs"
            .into(),
        detail,
    })
}

//! Command line of `vpm`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use vpm_abi::harness::{BootParams, Workload, BOOT_MAGIC, FLAG_PV, FLAG_TRANSIENT_HINTS};
use vpm_host::pm::file::FileDevice;
use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
use vpm_host::pool::{Pool, PoolConfig, TenantConfig};
use vpm_host::vmm::{run_vm, DoorbellKind, ExitKind, GuestReportExt, Mode, VmOutcome, VmSpec};

const HELP: &str = "\
vpm — virtualized persistent memory for KVM guests

USAGE:
  vpm run [--state DIR]             the main job: boots the VPM test guest with vPM in each mode
                                    (direct, msync, full, pv), runs a key-value workload, crashes
                                    nothing, and shows what happened (pool in DIR, default
                                    /dev/shm/vpm-main)
  vpm guest [OPTIONS]               runs one VM on a pool (created if missing) and prints a JSON
                                    result line; a tenant that exists is recovered first
  vpm pool-info [--state DIR]       verifies the pool (recovering it) and prints its tenants
  vpm qemu --kernel BZIMAGE --initrd INITRD [--vpmtest ARGS] [--timeout S] [guest options]
                                    boots a Linux guest under QEMU (TCG) with the vPM region as
                                    e820 PM, serves vpm.ko's hints over isa-debugcon, prints the
                                    console and a JSON line (guest-driver/build-guest.sh builds
                                    the kernel module, test program and initramfs)
  vpm soak [--trials N] [--kind full|pv|transient] [--dir DIR]
                                    crash soak: N times start a writer, kill -9 it at a random
                                    moment, recover and check (default 1000 trials of each kind)
  vpm help

GUEST OPTIONS:
  --state DIR          pool directory (default /dev/shm/vpm)
  --pool-mib N         pool size when created (default 256)
  --vm NAME            tenant name (default vm0)
  --fresh              remove the tenant first (start from an empty vPM)
  --mode M             full | pv | direct | msync (default full)
  --workload W         checksum | seq-writer | seq-check | random-writes | seq-writes | kv |
                       log | transient | hostile | persist-latency (default kv)
  --args A,B,C         workload arguments (see vpm_abi::harness::Workload)
  --seed S             seed (default 1)
  --vpm-mib N          vPM size (default 32)
  --dram-mib N         DRAM budget of tiered modes (default 8)
  --pm-quota-mib N     PM homes quota (default: the vPM size)
  --epoch-ms N         epoch interval, 0 = only at the end (default 100)
  --migrate-ms N       force random DRAM<->PM moves at this interval (default off)
  --migrate-pages N    pages moved each way per forced move (default 64)
  --seconds S          stop the guest after S seconds
  --hints on|off       persistence hints (default: on except in full mode)
  --transient-hints    mark transient scratch with hints
  --witness FILE       append acknowledged drain sequences to FILE
  --epoch-witness FILE append `epoch record` to FILE after each committed epoch (seq-writer)
  --doorbell K         exit (default: the vCPU waits in the I/O exit) | ioeventfd (no
                       userspace exit; a host thread serves the ring, the guest polls)
";

/// Parsed `vpm guest` options.
struct GuestOpts {
    state: PathBuf,
    pool_mib: u64,
    vm: String,
    fresh: bool,
    mode: Mode,
    workload: Workload,
    args: Vec<u64>,
    seed: u64,
    vpm_mib: u64,
    dram_mib: u64,
    pm_quota_mib: Option<u64>,
    epoch_ms: u64,
    migrate_ms: u64,
    migrate_pages: u64,
    seconds: Option<f64>,
    hints: Option<bool>,
    transient_hints: bool,
    witness: Option<PathBuf>,
    epoch_witness: Option<PathBuf>,
    doorbell: DoorbellKind,
}

impl Default for GuestOpts {
    fn default() -> Self {
        GuestOpts {
            state: PathBuf::from("/dev/shm/vpm"),
            pool_mib: 256,
            vm: "vm0".into(),
            fresh: false,
            mode: Mode::Full,
            workload: Workload::KvStore,
            args: Vec::new(),
            seed: 1,
            vpm_mib: 32,
            dram_mib: 8,
            pm_quota_mib: None,
            epoch_ms: 100,
            migrate_ms: 0,
            migrate_pages: 64,
            seconds: None,
            hints: None,
            transient_hints: false,
            witness: None,
            epoch_witness: None,
            doorbell: DoorbellKind::Exit,
        }
    }
}

fn workload(name: &str) -> Result<Workload, String> {
    Ok(match name {
        "checksum" => Workload::Checksum,
        "seq-writer" => Workload::SeqWriter,
        "seq-check" => Workload::SeqCheck,
        "random-writes" => Workload::RandomWrites,
        "seq-writes" => Workload::SeqWrites,
        "kv" => Workload::KvStore,
        "log" => Workload::AppendLog,
        "transient" => Workload::Transient,
        "hostile" => Workload::Hostile,
        "persist-latency" => Workload::PersistLatency,
        "exit-latency" => Workload::ExitLatency,
        _ => return Err(format!("unknown workload {name:?}")),
    })
}

/// The value after option `flag`.
fn flag_value(it: &mut std::slice::Iter<'_, String>, flag: &str) -> Result<String, String> {
    it.next()
        .cloned()
        .ok_or_else(|| format!("{flag} needs a value"))
}

fn parse_guest(args: &[String]) -> Result<GuestOpts, String> {
    let mut o = GuestOpts::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || flag_value(&mut it, a);
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| format!("{a}: not a number: {v}"))
        };
        match a.as_str() {
            "--state" => o.state = PathBuf::from(val()?),
            "--pool-mib" => o.pool_mib = num(val()?)?,
            "--vm" => o.vm = val()?,
            "--fresh" => o.fresh = true,
            "--mode" => {
                o.mode = Mode::parse(&val()?).ok_or("unknown mode (full, pv, direct, msync)")?
            }
            "--workload" => o.workload = workload(&val()?)?,
            "--args" => {
                o.args = val()?
                    .split(',')
                    .map(|s| s.trim().parse::<u64>().map_err(|_| format!("--args: {s}")))
                    .collect::<Result<_, _>>()?
            }
            "--seed" => o.seed = num(val()?)?,
            "--vpm-mib" => o.vpm_mib = num(val()?)?,
            "--dram-mib" => o.dram_mib = num(val()?)?,
            "--pm-quota-mib" => o.pm_quota_mib = Some(num(val()?)?),
            "--epoch-ms" => o.epoch_ms = num(val()?)?,
            "--migrate-ms" => o.migrate_ms = num(val()?)?,
            "--migrate-pages" => o.migrate_pages = num(val()?)?,
            "--seconds" => o.seconds = Some(val()?.parse().map_err(|_| "--seconds: not a number")?),
            "--hints" => o.hints = Some(val()? == "on"),
            "--transient-hints" => o.transient_hints = true,
            "--witness" => o.witness = Some(PathBuf::from(val()?)),
            "--epoch-witness" => o.epoch_witness = Some(PathBuf::from(val()?)),
            "--doorbell" => {
                o.doorbell = match val()?.as_str() {
                    "exit" => DoorbellKind::Exit,
                    "ioeventfd" => DoorbellKind::IoEventFd,
                    other => return Err(format!("--doorbell: exit or ioeventfd, not {other}")),
                }
            }
            other => return Err(format!("unknown option {other} (see vpm help)")),
        }
    }
    Ok(o)
}

/// Opens the pool in `state`, creating it (and the directory) if there is none.
pub fn open_pool(state: &Path, pool_mib: u64) -> Result<Pool, String> {
    std::fs::create_dir_all(state).map_err(|e| format!("{}: {e}", state.display()))?;
    let path = state.join("pool");
    let exists = std::fs::metadata(&path)
        .map(|m| m.len() > 0)
        .unwrap_or(false);
    // A new pool is formatted under another name and renamed into place once its header is
    // durable, so a crash during creation never leaves a half-made pool behind.
    let fresh = state.join("pool.new");
    let (open_path, size) = if exists {
        (&path, 0)
    } else {
        let _ = std::fs::remove_file(&fresh);
        let _ = std::fs::remove_file(state.join("pool.cap"));
        (&fresh, pool_mib << 20)
    };
    let opts = MapOptions {
        size,
        policy: FlushPolicy::Auto,
        exclusive: true,
        populate: true,
    };
    let pm = Arc::new(MappedFile::open_with(open_path, opts).map_err(|e| e.to_string())?);
    let cap = Arc::new(FileDevice::open(&state.join("pool.cap")).map_err(|e| e.to_string())?);
    if exists {
        let (pool, report) = Pool::open(pm, cap).map_err(|e| e.to_string())?;
        for t in &report.tenants {
            if t.replayed_records > 0 || !t.notes.is_empty() {
                eprintln!(
                    "vpm: recovered tenant {} at epoch {} ({} redo records replayed) {}",
                    t.name,
                    t.epoch,
                    t.replayed_records,
                    t.notes.join("; ")
                );
            }
        }
        Ok(pool)
    } else {
        let cfg = PoolConfig {
            size: pool_mib << 20,
            max_tenants: 16,
            meta_bytes: (pool_mib << 20) / 8,
            pool_id: std::process::id() as u64,
        };
        let pool = Pool::create(pm, cap, &cfg).map_err(|e| e.to_string())?;
        std::fs::rename(&fresh, &path).map_err(|e| format!("rename the new pool: {e}"))?;
        Ok(pool)
    }
}

fn tenant_for(pool: &mut Pool, o: &GuestOpts) -> Result<u32, String> {
    if o.fresh {
        if let Some(id) = pool.tenant_by_name(&o.vm) {
            pool.remove_tenant(id).map_err(|e| e.to_string())?;
        }
    }
    if let Some(id) = pool.tenant_by_name(&o.vm) {
        let pages = pool.tenant(id).map_err(|e| e.to_string())?.pages();
        if pages != o.vpm_mib * 256 {
            return Err(format!(
                "tenant {} has {} MiB of vPM, not {}",
                o.vm,
                pages / 256,
                o.vpm_mib
            ));
        }
        return Ok(id);
    }
    let vpm = o.vpm_mib << 20;
    pool.add_tenant(&TenantConfig {
        name: o.vm.clone(),
        vpm_bytes: vpm,
        pm_quota_bytes: o.pm_quota_mib.map_or(vpm, |m| m << 20),
        dram_budget_bytes: o.dram_mib << 20,
        log_bytes: (vpm / 8).max(2 << 20),
    })
    .map_err(|e| e.to_string())
}

fn spec_for(o: &GuestOpts) -> VmSpec {
    let hints = o.hints.unwrap_or(o.mode != Mode::Full);
    let mut arg = [0u64; 6];
    for (i, v) in o.args.iter().take(6).enumerate() {
        arg[i] = *v;
    }
    let flags = if hints { FLAG_PV } else { 0 }
        | if o.transient_hints {
            FLAG_TRANSIENT_HINTS
        } else {
            0
        };
    let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
    VmSpec {
        name: o.vm.clone(),
        mode: o.mode,
        dram_budget_bytes: o.dram_mib << 20,
        epoch_interval: ms(o.epoch_ms),
        migrate_interval: ms(o.migrate_ms),
        migrate_pages: o.migrate_pages,
        params: BootParams {
            magic: BOOT_MAGIC,
            workload: o.workload as u32,
            flags,
            seed: o.seed,
            arg,
            ..BootParams::default()
        },
        witness: o.witness.clone(),
        epoch_witness: o.epoch_witness.clone(),
        work_dir: o.state.clone(),
        time_limit: o.seconds.map(Duration::from_secs_f64),
        doorbell: o.doorbell,
    }
}

fn outcome_json(o: &GuestOpts, out: &VmOutcome) -> serde_json::Value {
    json!({
        "vm": o.vm,
        "mode": o.mode,
        "exit": out.exit,
        "elapsed_ms": out.elapsed.as_secs_f64() * 1000.0,
        "report": {
            "state": out.report.state,
            "errors": out.report.errors,
            "ops": out.report.ops,
            "values": out.report.values,
            "message": out.report.message_text(),
        },
        "stats": out.stats,
    })
}

fn guest(args: &[String]) -> Result<(), String> {
    let o = parse_guest(args)?;
    let mut pool = open_pool(&o.state, o.pool_mib)?;
    let tenant = tenant_for(&mut pool, &o)?;
    let pool = Arc::new(Mutex::new(pool));
    let out = run_vm(&spec_for(&o), pool, tenant).map_err(|e| e.to_string())?;
    println!("{}", outcome_json(&o, &out));
    if out.exit == ExitKind::Failed {
        return Err(format!("the guest failed: {}", out.report.message_text()));
    }
    Ok(())
}

fn pool_info(args: &[String]) -> Result<(), String> {
    let o = parse_guest(args)?;
    let pool = open_pool(&o.state, o.pool_mib)?;
    let h = pool.header();
    println!(
        "pool {}: {} MiB, {} PM homes ({} free), PM flush: {}",
        o.state.join("pool").display(),
        h.total_bytes >> 20,
        h.data_pages,
        pool.free_pm_pages(),
        pool.pm().method().name()
    );
    for id in pool.tenant_ids() {
        let t = pool.tenant(id).map_err(|e| e.to_string())?;
        let (pm, cap) = t.home_counts();
        println!(
            "  tenant {id} {:<12} vPM {:>5} MiB  epoch {:>6}  homes: {pm} PM, {cap} capacity",
            t.desc().name_str(),
            t.pages() / 256,
            t.epoch()
        );
    }
    Ok(())
}

fn soak(args: &[String]) -> Result<(), String> {
    use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind};
    let mut trials = 1000u64;
    let mut kinds = vec![
        TrialKind::FullPrefix,
        TrialKind::PvPersisted,
        TrialKind::PvTransient,
    ];
    let mut dir = PathBuf::from("/dev/shm/vpm-soak");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let v = flag_value(&mut it, a)?;
        match a.as_str() {
            "--trials" => trials = v.parse().map_err(|_| "--trials: not a number")?,
            "--kind" => kinds = vec![TrialKind::parse(&v).ok_or("--kind: full, pv or transient")?],
            "--dir" => dir = PathBuf::from(v),
            other => return Err(format!("unknown option {other}")),
        }
    }
    let vpm = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut failures = 0;
    for kind in kinds {
        let (lo, hi) = if kind == TrialKind::PvTransient {
            (60, 300)
        } else {
            (10, 400)
        };
        let cfg = TrialConfig {
            vpm: vpm.clone(),
            dir: dir.clone(),
            kind,
            kill_after_ms: (lo, hi),
            vpm_mib: 8,
        };
        let mut worst_recover = 0;
        for i in 0..trials {
            match run_trial(&cfg, i * 7919 + 1) {
                Ok(r) if r.errors == 0 => worst_recover = worst_recover.max(r.recover_ms),
                Ok(r) => {
                    failures += 1;
                    eprintln!("{kind:?} trial {i}: {} errors: {}", r.errors, r.message);
                }
                Err(e) => {
                    failures += 1;
                    eprintln!("{kind:?} trial {i}: {e}");
                }
            }
            if (i + 1) % 50 == 0 {
                println!("{kind:?}: {} trials, {failures} failed, slowest recovery+check {worst_recover} ms", i + 1);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if failures > 0 {
        return Err(format!("{failures} crash trials failed"));
    }
    println!("soak passed");
    Ok(())
}

fn qemu(args: &[String]) -> Result<(), String> {
    use vpm_host::qemu::{run_qemu, QemuSpec};
    let (mut kernel, mut initrd, mut vpmtest, mut timeout) =
        (None, None, String::from("basic"), 120.0);
    let mut extra = String::new();
    let mut rest = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || flag_value(&mut it, a);
        match a.as_str() {
            "--kernel" => kernel = Some(PathBuf::from(val()?)),
            "--initrd" => initrd = Some(PathBuf::from(val()?)),
            "--vpmtest" => vpmtest = val()?.replace(' ', ","),
            "--timeout" => timeout = val()?.parse().map_err(|_| "--timeout: not a number")?,
            "--append" => extra = val()?,
            _ => rest.push(a.clone()),
        }
    }
    let mut o = parse_guest(&rest)?;
    if !rest.iter().any(|a| a == "--vpm-mib") {
        o.vpm_mib = 64;
    }
    o.mode = Mode::Pv;
    let mut pool = open_pool(&o.state, o.pool_mib)?;
    let tenant = tenant_for(&mut pool, &o)?;
    let spec = QemuSpec {
        state: o.state.clone(),
        name: o.vm.clone(),
        kernel: kernel.ok_or("--kernel is required")?,
        initrd: initrd.ok_or("--initrd is required")?,
        append: format!("vpmtest={vpmtest} {extra}"),
        ram_mib: 512,
        vpm_offset_mib: 384,
        timeout: Duration::from_secs_f64(timeout),
    };
    let out = run_qemu(&spec, Arc::new(Mutex::new(pool)), tenant).map_err(|e| e.to_string())?;
    print!("{}", out.console);
    println!("{}", json!({"exited": out.exited, "stats": out.stats}));
    Ok(())
}

/// Entry point of the command line.
pub fn main(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("run") => crate::mainjob::run(&args[1..]),
        Some("guest") => guest(&args[1..]),
        Some("pool-info") => pool_info(&args[1..]),
        Some("soak") => soak(&args[1..]),
        Some("qemu") => qemu(&args[1..]),
        Some("help") | Some("--help") | None => {
            print!("{HELP}");
            Ok(())
        }
        Some(other) => Err(format!("unknown command {other} (see vpm help)")),
    }
}

/// Parses guest options (for the main job).
pub(crate) fn guest_opts(args: &[String]) -> Result<GuestOptsHandle, String> {
    parse_guest(args).map(GuestOptsHandle)
}

/// Opaque parsed options, for the main job.
pub(crate) struct GuestOptsHandle(GuestOpts);

impl GuestOptsHandle {
    /// Runs the VM these options describe on `pool`.
    pub(crate) fn run(
        &self,
        pool: &Arc<Mutex<Pool>>,
    ) -> Result<(VmOutcome, serde_json::Value), String> {
        let tenant = tenant_for(&mut pool.lock().expect("pool"), &self.0)?;
        let out = run_vm(&spec_for(&self.0), pool.clone(), tenant).map_err(|e| e.to_string())?;
        let js = outcome_json(&self.0, &out);
        Ok((out, js))
    }
}

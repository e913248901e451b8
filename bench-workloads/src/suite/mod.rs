//! `vpm-bench suite`: PV against full virtualization against today's baselines, consolidation and
//! endurance, with the floors measured in the same run; writes results.json, CSV tables, SVG
//! plots and report.md under `--out`.

mod error;
mod heat;
mod pvpoll;
mod report;
mod report_heat;
mod report_sections;
mod serve_dram;
mod smp;
mod svg;
mod targets;
mod targets_heat;
mod targets_pause;
mod vm;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use vpm_abi::harness::Workload;
use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
use vpm_host::pm::PmDevice;
use vpm_host::vmm::{Mode, VmOutcome};

pub use error::SuiteError;
pub use smp::run_smp;
pub use targets::{missed, Target};
use vm::{run_alone, Job};

/// Where emulated PM lives (tmpfs) and where the virtio-pmem-like baseline's backing file lives
/// (the ext4 disk, as a virtio-pmem backing file would).
const PM_DIR: &str = "/dev/shm";
const DISK_DIR: &str = "/var/tmp";

fn step(t0: Instant, what: &str) {
    println!("[{:>6.1}s] {what}", t0.elapsed().as_secs_f64());
}

/// TSC ticks per microsecond, calibrated against the monotonic clock.
fn tsc_per_us() -> f64 {
    // SAFETY: rdtsc has no preconditions.
    let t = || unsafe { std::arch::x86_64::_rdtsc() };
    let (c0, i0) = (t(), Instant::now());
    std::thread::sleep(std::time::Duration::from_millis(100));
    (t() - c0) as f64 / i0.elapsed().as_secs_f64() / 1e6
}

/// Copy + flush + drain of `size` bytes on an emulated-PM file: p50 and p99 in µs.
fn copy_flush_floor(size: usize) -> Result<(f64, f64), SuiteError> {
    let path = Path::new(PM_DIR).join(format!("vpm-suite-floor-{}", std::process::id()));
    let opts = MapOptions {
        size: 64 << 20,
        policy: FlushPolicy::CpuFlush,
        exclusive: false,
        populate: true,
    };
    let dev = MappedFile::open_with(&path, opts).map_err(SuiteError::open(&path))?;
    let src = vec![0x5au8; size];
    let mut lat = Vec::new();
    for i in 0..2000usize {
        let off = ((i * size.max(vpm_abi::PAGE_SIZE as usize)) % (60 << 20)) as u64;
        let t = Instant::now();
        dev.write_flush(off, &src)
            .and_then(|()| dev.drain())
            .map_err(SuiteError::Floor)?;
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let _ = std::fs::remove_file(&path);
    lat.sort_by(f64::total_cmp);
    Ok((lat[lat.len() / 2], lat[lat.len() * 99 / 100]))
}

/// The ring poller's idle window for the `pv-poll` rows: `vpm guest`'s default `--poll-us`.
const POLL_US: u64 = vpm_host::vmm::poller::DEFAULT_POLL_US;

/// Runs the suite and returns its targets, each computed from this run's numbers; the VMX
/// projection assumes an exit of `vmx_exit_us`.
pub fn run(out: &Path, quick: bool, vmx_exit_us: f64) -> Result<Vec<Target>, SuiteError> {
    let t0 = Instant::now();
    let mut r = serde_json::Map::new();
    r.insert("platform".into(), json!(crate::stats::platform_note()));
    r.insert("quick".into(), json!(quick));
    r.insert("vmx_exit_us".into(), json!(vmx_exit_us));
    let tsc = tsc_per_us();
    r.insert("tsc_per_us".into(), json!(tsc));

    step(
        t0,
        "floors: VM exit round trip, polled ring round trip and copy+flush",
    );
    let exit = run_alone(
        &Job::new("exit", Mode::Full, Workload::ExitLatency, &[3000]),
        PM_DIR,
        64,
    )?;
    let exit_us = exit.report.values[0] as f64 / tsc;
    let exit_p99_us = exit.report.values[1] as f64 / tsc;
    let ring = pvpoll::ring_floor(if quick { 1000 } else { 3000 }, POLL_US, tsc)?;
    let floors: Vec<(usize, (f64, f64))> = [64usize, 4096, 65536]
        .iter()
        .map(|&s| copy_flush_floor(s).map(|f| (s, f)))
        .collect::<Result<_, _>>()?;
    r.insert("floors".into(), json!({"exit_us": exit_us, "exit_p99_us": exit_p99_us, "ring_round_trip": ring,
        "copy_flush_us": floors.iter().map(|(s, (p50, p99))| json!({"bytes": s, "p50_us": p50, "p99_us": p99})).collect::<Vec<_>>()}));

    step(t0, "persist latency per mode and size");
    let n = if quick { 300 } else { 2000 };
    let mut lat = Vec::new();
    for (label, mode, poll_us, dir) in [
        ("direct", Mode::Direct, 0, PM_DIR),
        ("msync", Mode::Msync, 0, DISK_DIR),
        ("pv", Mode::Pv, 0, PM_DIR),
        ("pv-poll", Mode::Pv, POLL_US, PM_DIR),
    ] {
        for size in [64u64, 4096, 65536] {
            let mut job = Job::new(
                &format!("lat-{label}-{size}"),
                mode,
                Workload::PersistLatency,
                &[n, size],
            );
            // Every mode sends the persist hint here; in `direct` it is the bare exit + ring.
            job.hints = true;
            job.poll_us = poll_us;
            let o = run_alone(&job, dir, 96)?;
            let (p50, p99) = (
                o.report.values[0] as f64 / tsc,
                o.report.values[1] as f64 / tsc,
            );
            lat.push(json!({"mode": label, "bytes": size, "poller_cpu_us": o.stats.poller_cpu_us, "poller_wakeups": o.stats.poller_wakeups,
                "host_cpu_us_per_hint": if poll_us > 0 { json!(pvpoll::cpu_us_per_hint(&o)) } else { Value::Null },
                "p50_us": p50, "p99_us": p99, "pm_bytes_written": o.stats.pm_bytes_written, "persisted_bytes": o.stats.persist_requested_bytes}));
        }
    }
    r.insert("persist_latency".into(), Value::Array(lat));

    step(
        t0,
        "ring poller idle: no hints for over a second, the poller's CPU from its thread clock",
    );
    r.insert("poller_idle".into(), pvpoll::idle(100, POLL_US, tsc)?);

    step(t0, "workload throughput per mode");
    let scale = if quick { 1 } else { 4 };
    // Operations for modes with an exit per operation, and the factor for the others (which run
    // many more). `direct` and `full` run `LONG` times that again, so that a full run's timed
    // window spans 20 or more 100 ms epochs (with the factor alone the KV and log windows held 8
    // or 9 once the staged pause shrank, and a second of this host's noise). Rates are the
    // guest's steady-state window (`vm::ops_per_s`): VM start and first touch excluded.
    const LONG: u64 = 3;
    let workloads: [(&str, Workload, Vec<u64>, u64); 4] = [
        ("kv puts", Workload::KvStore, vec![4000 * scale], 4000),
        (
            "log appends",
            Workload::AppendLog,
            vec![4000 * scale, 200],
            8000,
        ),
        (
            "random 4K writes",
            Workload::RandomWrites,
            vec![3000 * scale],
            300,
        ),
        (
            "seq 64K writes",
            Workload::SeqWrites,
            vec![500 * scale, 65536],
            300,
        ),
    ];
    // (name, mode, epoch ms, poller µs, directory): the exit-bound modes (msync, pv with a
    // doorbell per persist) run fewer operations than the others.
    let modes: [(&str, Mode, u64, u64, &str); 6] = [
        ("direct", Mode::Direct, 0, 0, PM_DIR),
        ("msync", Mode::Msync, 0, 0, DISK_DIR),
        ("full-10ms", Mode::Full, 10, 0, PM_DIR),
        ("full-100ms", Mode::Full, 100, 0, PM_DIR),
        ("pv", Mode::Pv, 100, 0, PM_DIR),
        ("pv-poll", Mode::Pv, 100, POLL_US, PM_DIR),
    ];
    let mut tput = Vec::new();
    // Direct and full run `reps` times, interleaved (direct, full-10ms, full-100ms, then again),
    // and each keeps its median run: single runs on this shared host vary by ±10 %, and the
    // full-against-direct targets are ratios of these rows.
    let reps = if quick { 1 } else { 3 };
    for (wname, w, args, factor) in &workloads {
        let mut runs: Vec<Vec<(f64, Value)>> = vec![Vec::new(); modes.len()];
        for rep in 0..reps {
            for (i, &(mname, mode, epoch, poll_us, dir)) in modes.iter().enumerate() {
                if rep > 0 && !matches!(mode, Mode::Direct | Mode::Full) {
                    continue;
                }
                let mut args = args.clone();
                let exit_bound = mode == Mode::Msync || (mode == Mode::Pv && poll_us == 0);
                if !exit_bound {
                    let long = if matches!(mode, Mode::Direct | Mode::Full) {
                        LONG
                    } else {
                        1
                    };
                    args[0] *= if quick { 30 } else { *factor * long };
                }
                let mut job = Job::new(&format!("w-{mname}"), mode, *w, &args);
                job.epoch_ms = epoch;
                job.poll_us = poll_us;
                let o = run_alone(&job, dir, 96)?;
                runs[i].push((vm::ops_per_s(&o), throughput_row(wname, mname, poll_us, &o)));
            }
        }
        // Each full run against the direct run of the same round (side by side, a minute apart
        // at most): the pairs' median ratio cancels the host's slow swings, which the ratio of
        // two medians does not.
        let direct: Vec<f64> = runs[0].iter().map(|(ops, _)| *ops).collect();
        for (i, mut r) in runs.into_iter().enumerate() {
            let paired: Vec<f64> = r.iter().zip(&direct).map(|(run, d)| run.0 / d).collect();
            r.sort_by(|a, b| a.0.total_cmp(&b.0));
            let all: Vec<f64> = r.iter().map(|(ops, _)| *ops).collect();
            let (_, mut row) = r.swap_remove(r.len() / 2);
            row["runs_ops_per_s"] = json!(all);
            if modes[i].1 == Mode::Full {
                row["direct_ratio_runs"] = json!(paired);
                row["direct_ratio"] = json!(median(&paired));
            }
            tput.push(row);
        }
    }
    step(
        t0,
        "KV puts at 32, 128, 512 MiB: full virtualization against direct, steady state",
    );
    let big: &[u64] = if quick { &[32, 128] } else { &[32, 128, 512] };
    for &mib in big {
        // Full mode's staged commit, and the whole commit in the pause beside it (the design
        // before staged commits), so the report shows what the staging buys in the same run.
        for (mname, mode, epoch, stop) in [
            ("direct", Mode::Direct, 0, false),
            ("full-100ms", Mode::Full, 100, false),
            ("full-100ms-stop", Mode::Full, 100, true),
        ] {
            // The timed window (4/5 of the puts) spans ten or more epochs in a full run (at
            // 512 MiB a staged commit outlasts the 100 ms interval: epochs stretch to ~200 ms).
            let puts = match (quick, mib) {
                (true, _) => 10_000_000,
                (false, 512) => 160_000_000,
                (false, _) => 80_000_000,
            };
            let mut job = Job::new(&format!("big-{mname}"), mode, Workload::KvStore, &[puts]);
            job.epoch_ms = epoch;
            job.vpm_mib = mib;
            job.stop_and_commit = stop;
            let o = run_alone(&job, PM_DIR, 2 * mib + 64)?;
            tput.push(json!({"workload": format!("kv puts {mib} MiB"), "mode": mname,
                "ops_per_s": vm::ops_per_s(&o), "epochs": o.stats.epochs,
                "window_epochs": o.stats.window_epochs, "window_s": o.stats.window_us as f64 / 1e6,
                "window_wp_faults": o.stats.window_wp_faults, "pause_us_total": o.stats.pause_us_total, "pause_us_max": o.stats.pause_us_max,
                "writable_pages_last": o.stats.writable_pages_last, "pm_bytes_written": o.stats.pm_bytes_written,
                "pause_us_p99": o.stats.pause_us_p99, "window_pause_us_p99": o.stats.window_pause_us_p99,
                "epoch": vm::epoch_fields(&o)}));
        }
    }
    step(
        t0,
        "transient-scratch-heavy job: pv with and without transient hints",
    );
    for transient in [false, true] {
        let mut job = Job::new(
            if transient { "t-on" } else { "t-off" },
            Mode::Pv,
            Workload::Transient,
            &[0, 512, 400 * scale],
        );
        job.transient = transient;
        job.epoch_ms = 10;
        let o = run_alone(&job, PM_DIR, 96)?;
        tput.push(json!({"workload": "transient scratch", "mode": if transient { "pv+transient" } else { "pv" },
            "ops_per_s": o.report.ops as f64 / o.elapsed.as_secs_f64(), "epochs": o.stats.epochs,
            "pause_us_total": o.stats.pause_us_total, "pm_bytes_written": o.stats.pm_bytes_written,
            "dirty_mib": (o.stats.dirty_pages * vpm_abi::PAGE_SIZE) as f64 / 1048576.0}));
    }
    r.insert("throughput".into(), Value::Array(tput));

    step(t0, "PV KV puts and log appends at 1, 2 and 4 vCPUs");
    r.insert("smp".into(), Value::Array(smp::measure(t0, quick)?));

    step(
        t0,
        "consolidation: 4 VMs on one pool sized 100/50/25 % of their vPM",
    );
    r.insert("consolidation".into(), Value::Array(consolidation(quick)?));
    heat_benchmarks(t0, quick, &mut r)?;

    step(t0, "recovery after kill -9");
    r.insert("recovery".into(), Value::Array(recovery(quick)?));

    step(t0, "writing results and report");
    let doc = Value::Object(r);
    let targets = targets::evaluate(&doc);
    report::write(out, &doc, &targets, vmx_exit_us)?;
    step(t0, &format!("done: {}", out.join("report.md").display()));
    Ok(targets)
}

/// The heat benchmarks ([`heat`]) into `r`.
fn heat_benchmarks(
    t0: Instant,
    quick: bool,
    r: &mut serde_json::Map<String, Value>,
) -> Result<(), SuiteError> {
    step(
        t0,
        "consolidation in full-virt mode: 4 VMs, uniform and skewed writes, pool at 100/25 %",
    );
    r.insert(
        "consolidation_full".into(),
        Value::Array(heat::consolidation_full(quick)?),
    );
    step(
        t0,
        "DRAM absorption: skewed 64 B writes, direct against full",
    );
    r.insert("absorption".into(), Value::Array(heat::absorption(quick)?));
    step(t0, "write amplification: random 64 B writes in full");
    r.insert(
        "write_amplification".into(),
        Value::Array(heat::write_amplification(quick)?),
    );
    step(
        t0,
        "one DRAM budget shared by heat against static shares: 4 VMs under vpm serve",
    );
    r.insert(
        "shared_dram".into(),
        Value::Array(serve_dram::shared_dram(quick)?),
    );
    Ok(())
}

/// Only the heat benchmarks (`vpm-bench heat`): writes heat.json and heat.md (the report's heat
/// sections) under `out`.
pub fn run_heat(out: &Path, quick: bool) -> Result<(), SuiteError> {
    let t0 = Instant::now();
    let mut r = serde_json::Map::new();
    r.insert("platform".into(), json!(crate::stats::platform_note()));
    r.insert(
        "date".into(),
        json!(httpdate::fmt_http_date(std::time::SystemTime::now())),
    );
    r.insert("quick".into(), json!(quick));
    heat_benchmarks(t0, quick, &mut r)?;
    r.insert("seconds".into(), json!(t0.elapsed().as_secs_f64()));
    vpm_host::private_file::create_dir_all(out)
        .map_err(SuiteError::io("create the directory", out))?;
    let doc = Value::Object(r);
    let path = out.join("heat.json");
    let text = serde_json::to_string_pretty(&doc).map_err(SuiteError::Json)?;
    vpm_host::private_file::write(&path, text).map_err(SuiteError::io("write", &path))?;
    let path = out.join("heat.md");
    vpm_host::private_file::write(&path, heat_markdown(&doc))
        .map_err(SuiteError::io("write", &path))?;
    step(t0, &format!("done: {}", path.display()));
    Ok(())
}

/// heat.md: where and when it was measured, then the report's heat sections.
fn heat_markdown(doc: &Value) -> String {
    format!(
        "# VPM heat benchmarks\n\n`vpm-bench heat{}` ({:.0} s), {}. Measured on: {} — every figure \
below is from this run, on this machine. Emulated PM is a tmpfs file.\n{}",
        if doc["quick"] == true { " --quick" } else { "" },
        doc["seconds"].as_f64().unwrap_or(f64::NAN),
        doc["date"].as_str().unwrap_or("?"),
        doc["platform"].as_str().unwrap_or("?"),
        report_heat::markdown(doc)
    )
}

/// Four PV VMs on one pool; the pool holds 100, 50 or 25 % of their summed vPM as PM homes,
/// the rest goes to the capacity file.
fn consolidation(quick: bool) -> Result<Vec<Value>, SuiteError> {
    let mut rows = Vec::new();
    let vms = 4u64;
    let vpm = 16u64;
    let writes = if quick { 1500 } else { 6000 };
    for transient in [false, true] {
        for pct in [100u64, 50, 25] {
            let s = vm::Scratch::new(PM_DIR, &format!("cons{pct}{transient}"))?;
            let pm_mib = vms * vpm * pct / 100;
            let pool = vm::pool(&s.0, pm_mib, 16)?;
            let start = Instant::now();
            let handles: Vec<_> = (0..vms)
                .map(|i| {
                    let (pool, dir) = (pool.clone(), s.0.clone());
                    let mut job = if transient {
                        Job::new(
                            &format!("c{i}"),
                            Mode::Pv,
                            Workload::Transient,
                            &[0, 1024, 100],
                        )
                    } else {
                        Job::new(
                            &format!("c{i}"),
                            Mode::Pv,
                            Workload::RandomWrites,
                            &[writes],
                        )
                    };
                    job.vpm_mib = vpm;
                    job.dram_mib = 6;
                    job.transient = transient;
                    job.pm_quota_mib = Some(pm_mib / vms);
                    std::thread::spawn(move || vm::run(&job, &pool, &dir))
                })
                .collect();
            let mut outs = Vec::new();
            for h in handles {
                outs.push(h.join().map_err(|_| SuiteError::VmThreadPanicked)??);
            }
            let wall = start.elapsed().as_secs_f64();
            let ops: u64 = outs.iter().map(|o| o.report.ops).sum();
            let p = pool.lock().expect("pool");
            let (pm_dev, cap_dev) = (
                p.pm().stats().bytes_written,
                p.capacity().stats().bytes_written,
            );
            rows.push(json!({"pool_pct": pct, "transient_hints": transient, "ops_per_s": ops as f64 / wall,
                "per_vm_ops_per_s": outs.iter().map(|o| o.report.ops as f64 / o.elapsed.as_secs_f64()).collect::<Vec<_>>(),
                "pm_bytes_written": pm_dev, "capacity_bytes_written": cap_dev}));
            drop(p);
            drop(pool);
        }
    }
    Ok(rows)
}

/// FNV-1a over a page: the recovery check's checksum.
fn checksum(page: &[u8]) -> u64 {
    page.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Fills a pool with a whole vPM (every page committed, so every page has a home), lets a
/// `vpm guest` full-mode writer recover it and run (its epochs only at the end, so the committed
/// image stays the fill), kills that process with SIGKILL, and times the recovery of the pool
/// (verify, replay) and the rebuild of the vPM (every page read from its home). Every page read
/// back is checked against the checksum of the committed image, taken outside the pool.
fn recovery(quick: bool) -> Result<Vec<Value>, SuiteError> {
    use std::process::{Command, Stdio};
    use vpm_host::pool::{PageSource, SourceError};
    // The `vpm` built with this `vpm-bench` (same target directory).
    let vpm_exe = serve_dram::vpm_exe()?;
    let sizes: &[u64] = if quick { &[256] } else { &[256, 1024] };
    let mut rows = Vec::new();
    for &mib in sizes {
        let s = vm::Scratch::new(PM_DIR, &format!("rec{mib}"))?;
        let mut expected: Vec<u64> = Vec::new();
        {
            let pool = vm::pool(&s.0, mib + mib / 4, 16 + mib / 8)?;
            let mut p = pool.lock().expect("pool");
            let t = p
                .add_tenant(&vpm_host::pool::TenantConfig {
                    name: "r".into(),
                    vpm_bytes: mib << 20,
                    pm_quota_bytes: mib << 20,
                    dram_budget_bytes: 64 << 20,
                    log_bytes: ((mib << 20) / 8).max(2 << 20),
                })
                .map_err(SuiteError::pool("add the recovery tenant"))?;
            let chunk = 16384u64;
            let mut img = vec![1u8; (chunk * vpm_abi::PAGE_SIZE) as usize];
            for first in (0..mib * 256).step_by(chunk as usize) {
                img[0] = first as u8 | 1;
                expected.extend(img.chunks(vpm_abi::PAGE_SIZE as usize).map(checksum));
                struct At<'a>(u64, &'a [u8]);
                impl PageSource for At<'_> {
                    fn with_page(
                        &self,
                        vpn: u64,
                        f: &mut dyn FnMut(&[u8]),
                    ) -> Result<(), SourceError> {
                        self.1.with_page(vpn - self.0, f)
                    }
                }
                let dirty: Vec<u64> = (first..first + chunk).collect();
                p.commit_epoch(t, &dirty, &At(first, &img))
                    .map_err(SuiteError::pool("fill the vPM (commit an epoch)"))?;
            }
        }
        let state = s.0.to_string_lossy().into_owned();
        let mut child = Command::new(&vpm_exe)
            .args([
                "guest",
                "--state",
                &state,
                "--vm",
                "r",
                "--mode",
                "full",
                "--workload",
                "seq-writer",
            ])
            .args([
                "--vpm-mib",
                &mib.to_string(),
                "--dram-mib",
                "64",
                "--epoch-ms",
                "0",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| SuiteError::Process {
                what: "start",
                path: vpm_exe.clone(),
                source,
            })?;
        std::thread::sleep(std::time::Duration::from_millis(1500));
        child.kill().map_err(|source| SuiteError::Process {
            what: "kill",
            path: vpm_exe.clone(),
            source,
        })?;
        let _ = child.wait();
        let opts = MapOptions {
            size: 0,
            policy: FlushPolicy::Auto,
            exclusive: true,
            populate: false,
        };
        let t = Instant::now();
        let (pm_path, cap_path) = (s.0.join("pool"), s.0.join("pool.cap"));
        let pm =
            Arc::new(MappedFile::open_with(&pm_path, opts).map_err(SuiteError::open(&pm_path))?);
        let cap = Arc::new(
            vpm_host::pm::file::FileDevice::open(&cap_path).map_err(SuiteError::open(&cap_path))?,
        );
        let (pool, rep) = vpm_host::pool::Pool::open(pm, cap)
            .map_err(SuiteError::pool("open and recover the pool"))?;
        let open_ms = t.elapsed().as_secs_f64() * 1000.0;
        let t = Instant::now();
        let mut page = vec![0u8; vpm_abi::PAGE_SIZE as usize];
        let pages = pool
            .tenant(0)
            .map_err(SuiteError::pool("find the recovered tenant"))?
            .pages();
        let mut mismatched = 0u64;
        for vpn in 0..pages {
            pool.read_home(0, vpn, &mut page)
                .map_err(SuiteError::pool("read a page from its home"))?;
            mismatched += u64::from(expected.get(vpn as usize) != Some(&checksum(&page)));
        }
        let read_ms = t.elapsed().as_secs_f64() * 1000.0;
        let homes = pool
            .tenant(0)
            .map_err(SuiteError::pool("find the recovered tenant"))?
            .home_counts()
            .0;
        rows.push(
            json!({"vpm_mib": mib, "epoch": rep.tenants.first().map_or(0, |t| t.epoch),
            "homes": homes, "pages": pages, "mismatched_pages": mismatched,
            "open_verify_ms": open_ms, "rebuild_read_ms": read_ms}),
        );
    }
    Ok(rows)
}

/// A throughput row of the suite's results: the run's steady-state rate and what its epochs and
/// poller did.
fn throughput_row(wname: &str, mname: &str, poll_us: u64, o: &VmOutcome) -> Value {
    let dirty_mib = (o.stats.dirty_pages * vpm_abi::PAGE_SIZE) as f64 / 1048576.0;
    json!({"workload": wname, "mode": mname, "ops_per_s": vm::ops_per_s(o),
        "window_epochs": o.stats.window_epochs, "window_s": o.stats.window_us as f64 / 1e6,
        "epochs": o.stats.epochs, "pause_us_total": o.stats.pause_us_total, "pause_us_max": o.stats.pause_us_max,
        "dirty_mib": dirty_mib, "pm_bytes_written": o.stats.pm_bytes_written,
        "persisted_bytes": o.stats.persist_requested_bytes, "dram_pages_max": o.stats.dram_pages_max,
        "poller_cpu_us": o.stats.poller_cpu_us, "poller_hints": o.stats.poller_hints, "hints_served": o.stats.hints_served, "poller_wakeups": o.stats.poller_wakeups,
        "host_cpu_us_per_hint": if poll_us > 0 { json!(pvpoll::cpu_us_per_hint(o)) } else { Value::Null },
        "pause_us_p99": o.stats.pause_us_p99, "window_pause_us_p99": o.stats.window_pause_us_p99,
        "epoch": vm::epoch_fields(o)})
}

/// The median of `values` (the upper one of an even count; NaN if empty).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

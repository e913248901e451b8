//! The Rust-for-Linux driver in a real Linux 7.3 guest under QEMU (TCG), served by `vpm qemu`:
//! basic use and errno of every error case, no host (-ENODEV), and host crashes (QEMU and the host
//! service killed with SIGKILL mid-workload, restarted, checked; fio's against the host's
//! witness of acknowledged persist ranges, kept outside the pool). Needs the cached guest kernel,
//! QEMU and the toolchain that tests/setup/install-deps.sh installs.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod qemu_support;

use qemu_support::{guest_stats, qemu_cmd, qemu_cmd_with, repo, run, State};

#[test]
fn the_driver_serves_persist_flush_drain_transient_and_errors() {
    let s = State::new("basic");
    let console = run(&s, "basic", &["--fresh"]);
    assert!(
        console.contains("VPM host found on port 0xf50"),
        "{console}"
    );
    assert!(console.contains("VPMTEST basic OK"), "{console}");
    assert!(!console.contains("VPMTEST FAIL"), "{console}");
    assert!(
        console.contains("VPM-RMMOD ok") && console.contains("vpm: unloaded"),
        "{console}"
    );
    let stats: serde_json::Value = serde_json::from_str(console.lines().last().unwrap()).unwrap();
    assert!(
        stats["stats"]["hints_served"].as_u64().unwrap() >= 7,
        "{stats}"
    );
}

/// Issue 12: a FLUSH the host refuses (here: a range past the vPM, injected through the driver's
/// debugfs) makes the next DRAIN fail, even though the host completed the DRAIN itself.
#[test]
fn a_refused_flush_fails_the_next_drain() {
    let s = State::new("refused");
    let console = run(&s, "refused", &["--fresh"]);
    assert!(console.contains("VPMTEST refused OK"), "{console}");
    assert!(!console.contains("VPMTEST FAIL"), "{console}");
    let stats = guest_stats(&console);
    assert!(
        stats["host_rejected"] >= 3,
        "the host refused too few: {stats:?}"
    );
}

#[test]
fn without_a_host_the_driver_refuses_to_load() {
    let s = State::new("nohost");
    let console = run(&s, "basic", &["--fresh", "--append", "vpmport=0xf60"]);
    assert!(console.contains("VPM-INSMOD failed"), "{console}");
    assert!(
        console.contains("no VPM host answers on port 0xf60"),
        "{console}"
    );
}

/// A host crash in a test: `vpm qemu` started in a process group of its own, so that
/// [`HostRun::kill`] takes QEMU down with it.
struct HostRun(std::process::Child);

impl HostRun {
    fn start(mut cmd: Command) -> HostRun {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("start vpm qemu");
        HostRun(child)
    }

    /// SIGKILL to the host service and its QEMU.
    fn kill(mut self) {
        // SAFETY: kill(2) on the process group we created for the child (vpm and its QEMU).
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

/// Starts `prog writer` under `vpm qemu`, kills QEMU and the host service with SIGKILL once
/// records are acknowledged, restarts with `prog check,N` and returns that console.
fn crash_trial(name: &str, prog: &str, wait_ms: u64) -> (u64, String) {
    let s = State::new(name);
    let append = format!("vpmprog={prog}");
    let host = HostRun::start(qemu_cmd(&s, "writer", &["--fresh", "--append", &append]));
    let console = s.0.join("linux.console");
    let start = Instant::now();
    let acked_now = || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("ACKED ")
                    .and_then(|n| n.trim().parse::<u64>().ok())
            })
            .max()
            .unwrap_or(0)
    };
    while acked_now() < 64 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the writer never got going"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(wait_ms));
    host.kill();
    let acked = acked_now();
    (
        acked,
        run(&s, &format!("check,{acked}"), &["--append", &append]),
    )
}

/// A host that stops answering (the service SIGSTOPped, QEMU and the guest still running): the
/// driver's calls fail with ETIMEDOUT after a bounded wait, even when the ring is full, instead
/// of retrying for ever with the channel lock held.
#[test]
fn a_host_that_stops_answering_gets_etimedout_not_a_hang() {
    stall_trial("stall", &[]);
}

/// Issue 13: the same with polled rings: a host stopped while it polls leaves `host_state`
/// POLLING, so the guest does not even ring; its bounded wait still ends in ETIMEDOUT.
#[test]
fn a_polling_host_that_stops_answering_gets_etimedout_not_a_hang() {
    stall_trial("stallpoll", &["--poll-us", "200"]);
}

/// Runs vpmtest's flood, SIGSTOPs the host service once 2048 entries are acknowledged and
/// expects the driver's ETIMEDOUT.
fn stall_trial(name: &str, extra: &[&str]) {
    let s = State::new(name);
    let host = HostRun::start(qemu_cmd(&s, "flood", &[&["--fresh"], extra].concat()));
    let console = s.0.join("linux.console");
    let read = || std::fs::read_to_string(&console).unwrap_or_default();
    let start = Instant::now();
    while !read().contains("ACKED 2048") {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the flood never got going:\n{}",
            read()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our child, the host service only (QEMU keeps running the guest).
    unsafe { libc::kill(host.0.id() as i32, libc::SIGSTOP) };
    let stopped = Instant::now();
    let text = loop {
        let text = read();
        if text.contains("VPMTEST flood stopped") || stopped.elapsed() > Duration::from_secs(120) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // SAFETY: as above; then the whole group goes.
    unsafe { libc::kill(host.0.id() as i32, libc::SIGCONT) };
    host.kill();
    assert!(
        text.contains("VPMTEST flood stopped: 110"),
        "no ETIMEDOUT within 120 s of the host stopping:\n{text}"
    );
    println!(
        "the driver gave up after {:.1} s",
        stopped.elapsed().as_secs_f64()
    );
}

#[test]
fn acknowledged_persists_survive_killing_qemu_and_the_host() {
    for trial in 0..3u64 {
        let (acked, out) = crash_trial(&format!("crash{trial}"), "vpmtest", 300 + trial * 400);
        assert!(
            out.contains("VPMTEST check OK"),
            "trial {trial} (acked {acked}):\n{out}"
        );
        println!("trial {trial}: {acked} acknowledged records survived");
    }
}

#[test]
fn a_libpmem_program_on_dev_vpm_gets_pv_persistence() {
    let s = State::new("pmem");
    let console = run(&s, "basic", &["--fresh", "--append", "vpmprog=pmemtest"]);
    assert!(console.contains("PMEMTEST basic OK"), "{console}");
    let stats: serde_json::Value = serde_json::from_str(console.lines().last().unwrap()).unwrap();
    assert!(
        stats["stats"]["hints_served"].as_u64().unwrap() >= 10,
        "host counted too few hints: {stats}"
    );
    // Four threads persisting at once on /dev/vpm: per-thread flush queues, nothing lost.
    let console = run(&s, "threads", &["--append", "vpmprog=pmemtest"]);
    assert!(console.contains("PMEMTEST threads OK"), "{console}");
    for trial in 0..2u64 {
        let (acked, out) = crash_trial(&format!("pmemcrash{trial}"), "pmemtest", 200 + trial * 500);
        assert!(
            out.contains("PMEMTEST check OK"),
            "trial {trial} (acked {acked}):\n{out}"
        );
    }
}

/// The highest `TW-ACK t n` per thread t (1..=4) in a console, whole lines only (a line cut by
/// the kill is not an acknowledgement), and the guest CPUs the acknowledging threads ran on.
fn thread_acks(console: &str) -> ([u64; 4], std::collections::BTreeSet<u64>) {
    let mut acked = [0u64; 4];
    let mut cpus = std::collections::BTreeSet::new();
    for line in console.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        let Some(rest) = line.strip_prefix("TW-ACK ") else {
            continue;
        };
        let w: Vec<u64> = rest
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if let [t @ 1..=4, n, cpu] = w[..] {
            acked[t as usize - 1] = acked[t as usize - 1].max(n);
            cpus.insert(cpu);
        }
    }
    (acked, cpus)
}

/// Issue 12: pv-libpmem is thread-safe on `/dev/vpm` in an SMP guest. Four threads on two vCPUs
/// persist checksummed records through three libpmem paths (memcpy_nodrain, flush, persist; a
/// drain every 8), each acknowledgement printed on the console (the witness outside the pool);
/// `vpm qemu` and QEMU are killed with SIGKILL mid-run (in later trials after stopping the host
/// service for a while); after recovery every acknowledged record of every thread is intact, word
/// by word and by its checksum.
#[test]
fn pv_libpmem_threads_on_two_vcpus_keep_every_acknowledged_record_through_a_host_kill() {
    smp_kill_trials("smp", trials("VPM_SMP_TRIALS", 3), 0);
}

/// Issue 13: the same kill trials with polled rings (`vpm qemu --poll-us 200`): the guest rings
/// only while the host's poller sleeps, and still every acknowledged record survives.
#[test]
fn pv_libpmem_threads_with_polling_keep_every_acknowledged_record_through_a_host_kill() {
    smp_kill_trials("smppoll", trials("VPM_SMP_POLL_TRIALS", 2), 200);
}

/// A trial count from the environment variable `var`, else `default`.
fn trials(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The SMP kill trials of pmemtest twriter/tcheck (see the test above), `poll_us` > 0 with
/// polled rings.
fn smp_kill_trials(name: &str, trials: u64, poll_us: u64) {
    let poll = poll_us.to_string();
    let mut smp = vec!["--smp", "2", "--append", "vpmprog=pmemtest"];
    if poll_us > 0 {
        smp.extend(["--poll-us", &poll]);
    }
    let smp = &smp[..];
    for trial in 0..trials {
        let s = State::new(&format!("{name}{trial}"));
        let host = HostRun::start(qemu_cmd(&s, "twriter", &[&["--fresh"], smp].concat()));
        let console = s.0.join("linux.console");
        let read = || std::fs::read_to_string(&console).unwrap_or_default();
        let start = Instant::now();
        // Every thread acknowledged records (all four run at once), then some more time.
        while thread_acks(&read()).0.iter().any(|&n| n < 64) {
            let text = read();
            assert!(
                start.elapsed() < Duration::from_secs(120) && !text.contains("PMEMTEST"),
                "the threads never all got going:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300 + trial % 3 * 500));
        if trial > 0 {
            // The host service stops first (QEMU and the guest run on): every drain then in
            // flight stays unanswered, so a thread acknowledging without its own drain having
            // completed is caught by the kill every time, not only when the kill happens to fall
            // in that window.
            // SAFETY: kill(2) on our child, the host service only.
            unsafe { libc::kill(host.0.id() as i32, libc::SIGSTOP) };
            std::thread::sleep(Duration::from_millis(1500));
        }
        host.kill();
        let text = read();
        assert!(
            text.contains("TW-CPUS online=0-1 nproc=2"),
            "the guest does not see 2 CPUs:\n{text}"
        );
        assert!(
            !text.contains("TW-FULL") && !text.contains("PMEMTEST"),
            "the writer finished or failed before the kill:\n{text}"
        );
        let (acked, cpus) = thread_acks(&text);
        assert_eq!(cpus.len(), 2, "acknowledging threads ran on CPUs {cpus:?}");
        let check = format!("tcheck,{},{},{},{}", acked[0], acked[1], acked[2], acked[3]);
        let out = run(&s, &check, smp);
        assert!(
            out.contains("PMEMTEST tcheck OK") && !out.contains("PMEMTEST FAIL"),
            "trial {trial} (acked {acked:?}):\n{out}"
        );
        for (t, n) in acked.iter().enumerate() {
            assert!(
                out.contains(&format!("TW-CHECK {} acked {n} bad 0 ", t + 1)),
                "thread {} not checked:\n{out}",
                t + 1
            );
        }
        println!("trial {trial}: acknowledged records per thread {acked:?} intact, CPUs {cpus:?}");
    }
}

/// fio's job: 2048 writes of 4 KiB (8 MiB from vPM offset 0), pattern 0x5a.
const FIO_BLOCKS: u64 = 2048;

/// The acknowledged persist ranges a `vpm qemu --witness` file lists (`OFFSET LEN` lines).
fn witnessed(path: &Path) -> Vec<(u64, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (o, n) = l.split_once(' ')?;
            Some((o.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect()
}

/// Reopens (and so recovers) the pool of a killed `vpm qemu` and checks that every byte of
/// `ranges` in tenant `linux` holds `byte`; returns the ranges that do not.
fn ranges_not_holding(state: &Path, ranges: &[(u64, u64)], byte: u8) -> Vec<(u64, u64)> {
    use std::sync::Arc;
    use vpm_host::pm::file::FileDevice;
    use vpm_host::pm::mapped::{FlushPolicy, MapOptions, MappedFile};
    use vpm_host::pool::Pool;
    let opts = MapOptions {
        size: 0,
        policy: FlushPolicy::Auto,
        exclusive: true,
        populate: false,
    };
    let pm = Arc::new(MappedFile::open_with(&state.join("pool"), opts).expect("open the pool"));
    let cap = Arc::new(FileDevice::open(&state.join("pool.cap")).expect("open pool.cap"));
    let (pool, _) = Pool::open(pm, cap).expect("recover the pool");
    let t = pool.tenant_by_name("linux").expect("tenant linux");
    let page = vpm_abi::PAGE_SIZE;
    let mut buf = vec![0u8; page as usize];
    ranges
        .iter()
        .copied()
        .filter(|&(off, len)| {
            (off / page..(off + len).div_ceil(page)).any(|vpn| {
                pool.read_home(t, vpn, &mut buf).expect("read home");
                let lo = off.max(vpn * page) - vpn * page;
                let hi = (off + len).min((vpn + 1) * page) - vpn * page;
                buf[lo as usize..hi as usize].iter().any(|&b| b != byte)
            })
        })
        .collect()
}

/// Debian's fio on pv-libpmem, and QEMU and the host killed with SIGKILL while fio runs (between
/// 10 % and 90 % of its writes acknowledged, per the host's witness, written before each persist
/// completes): after a restart from the pool every acknowledged range holds fio's pattern.
#[test]
fn debian_fio_on_pv_libpmem_keeps_every_acknowledged_write_when_killed_mid_run() {
    let s = State::new("fio");
    let witness = s.0.with_extension("witness");
    let _ = std::fs::remove_file(&witness);
    let host = HostRun::start(qemu_cmd_with(
        &s,
        "INITRAMFS_FIO",
        "hold",
        &[
            "--fresh",
            "--append",
            "vpmprog=fio",
            "--witness",
            witness.to_str().unwrap(),
        ],
    ));
    let console_path = s.0.join("linux.console");
    let blocks = |r: &[(u64, u64)]| r.iter().map(|&(_, l)| l).sum::<u64>() / 4096;
    let start = Instant::now();
    // Kill at about a third: well inside the window even if fio goes on for a while.
    while blocks(&witnessed(&witness)) < FIO_BLOCKS * 3 / 10 {
        let text = std::fs::read_to_string(&console_path).unwrap_or_default();
        assert!(
            start.elapsed() < Duration::from_secs(150) && !text.contains("FIO rc="),
            "fio never got a third of its writes acknowledged before the kill window closed \
             (witness: {} blocks):\n{text}",
            blocks(&witnessed(&witness))
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    host.kill();
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    let acked = witnessed(&witness);
    let _ = std::fs::remove_file(&witness);
    let n = blocks(&acked);
    assert!(
        (FIO_BLOCKS / 10..=FIO_BLOCKS * 9 / 10).contains(&n) && !console.contains("FIO rc="),
        "the kill came at {n} of {FIO_BLOCKS} acknowledged writes, not mid-run:\n{console}"
    );
    assert!(
        acked.iter().all(|&(o, l)| o + l <= FIO_BLOCKS * 4096),
        "persists outside fio's 8 MiB: {acked:?}"
    );
    let lost = ranges_not_holding(&s.0, &acked, 0x5a);
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged ranges lost fio's pattern after the crash, first {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(8)]
    );
    println!("killed at {n} of {FIO_BLOCKS} acknowledged 4 KiB writes; all held the pattern");
}

#[test]
fn the_driver_holds_no_copy_of_the_protocol() {
    let dir = repo().join("guest-driver/vpm");
    let root = std::fs::read_to_string(dir.join("vpm.rs")).unwrap();
    assert!(root.contains("#[path = \"../../abi/src/proto/mod.rs\"]"));
    let src: String = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .collect();
    for copy in [
        "VPMHINTS",
        "struct SharedHeader",
        "struct RawEntry",
        "0x0f50",
        "RESULT_PENDING",
    ] {
        assert!(!src.contains(copy), "the driver defines {copy} itself");
    }
}

//! One hint ring per CPU in vpm.ko (issue 13, feature RINGS) in a real Linux 7.3 guest on two
//! vCPUs under QEMU (TCG), served by `vpm qemu`: pmemtest's threads with and without polled
//! rings spread their hints over both rings (the guest's and the host's per-ring counts say so)
//! and pass their data checks; a DRAIN on one CPU covers a FLUSH made on the other. Needs the
//! cached guest kernel, QEMU and the toolchain that tests/setup/install-deps.sh installs.

use std::collections::HashMap;

mod qemu_support;

use qemu_support::{guest_stats, run, State};

/// Issue 13: pmemtest's four threads on two vCPUs with polled rings: the data checks pass, the
/// host served hints by polling and the guest skipped doorbells (both sides count it), and the
/// hints went over one ring per CPU.
#[test]
fn pmemtest_on_two_vcpus_with_polling_persists_without_doorbells() {
    let (guest, host) = pmemtest_threads_on_two_vcpus("poll", &["--poll-us", "200"]);
    assert_eq!(
        guest["polled"], 1,
        "vpm.ko was not granted polled rings: {guest:?}"
    );
    let n = |k: &str| host["stats"][k].as_u64().unwrap();
    assert!(
        n("poller_hints") > 0 && n("doorbells_suppressed") > 0,
        "no polling: {host}"
    );
    assert!(
        guest["doorbells_suppressed"] > 0,
        "the guest never skipped the doorbell: {guest:?}"
    );
    println!(
        "polled: guest rang {} doorbells and skipped {}; host polled {} of {} hints, {} \
         wake-ups, poller CPU {} ms",
        guest["doorbells"],
        guest["doorbells_suppressed"],
        n("poller_hints"),
        n("hints_served"),
        n("poller_wakeups"),
        n("poller_cpu_us") / 1000
    );
}

/// Issue 13: the same four threads on two vCPUs with the doorbell only: one ring per CPU too.
#[test]
fn pmemtest_on_two_vcpus_uses_one_ring_per_cpu() {
    let (guest, _) = pmemtest_threads_on_two_vcpus("rings", &[]);
    assert_eq!(guest["polled"], 0, "{guest:?}");
}

/// Runs pmemtest's threads on `-smp 2` (plus `extra`), checks the data, the unload, and that vpm.ko
/// registered two rings and both the guest's and the host's per-ring counts show hints on both;
/// returns the guest's counters and the host's report.
fn pmemtest_threads_on_two_vcpus(
    name: &str,
    extra: &[&str],
) -> (HashMap<String, u64>, serde_json::Value) {
    let s = State::new(name);
    let mut args = vec!["--fresh", "--smp", "2", "--append", "vpmprog=pmemtest"];
    args.extend_from_slice(extra);
    let console = run(&s, "threads", &args);
    assert!(
        console.contains("PMEMTEST threads OK") && !console.contains("PMEMTEST FAIL"),
        "{console}"
    );
    // The driver freed its shared pages only after the host took the UNREGISTERs.
    assert!(
        console.contains("VPM-RMMOD ok") && !console.contains("shared page is leaked"),
        "{console}"
    );
    let guest = guest_stats(&console);
    assert_eq!(guest["errors"], 0, "{guest:?}");
    assert_eq!(
        guest["rings"], 2,
        "vpm.ko did not register a ring per CPU: {guest:?}"
    );
    assert!(
        guest["ring0_hints"] > 0 && guest["ring1_hints"] > 0,
        "the guest used one ring only: {guest:?}"
    );
    let host: serde_json::Value = serde_json::from_str(console.lines().last().unwrap()).unwrap();
    let n = |k: &str| host["stats"][k].as_u64().unwrap();
    // 4 threads x 20000 records: 10000 persists, 70000 flushes, 40000 drains; a drain of a
    // thread that moved CPU since its flushes adds a DRAIN on the ring it flushed on.
    assert!(n("hints_served") >= 120_000, "{host}");
    assert!(
        guest["ring0_hints"] + guest["ring1_hints"] <= n("hints_served"),
        "{host} {guest:?}"
    );
    assert_eq!(n("hints_rejected"), 0, "{host}");
    let rings: Vec<u64> = host["stats"]["ring_hints"]
        .as_array()
        .expect("ring_hints")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    assert!(
        rings.iter().filter(|&&h| h > 0).count() >= 2,
        "the host served one ring only: {rings:?}"
    );
    println!(
        "{name}: hints per ring (host) {rings:?}, {} served",
        n("hints_served")
    );
    (guest, host)
}

/// Issue 13: a FLUSH on one CPU and a DRAIN on the other (vpmtest pins itself): the DRAIN covers
/// the other ring's FLUSH, so a refused FLUSH fails it, in both directions.
#[test]
fn a_drain_covers_flushes_made_on_another_cpu() {
    let s = State::new("migrate");
    let console = run(&s, "migrate", &["--fresh", "--smp", "2"]);
    assert!(console.contains("VPMTEST migrate OK"), "{console}");
    assert!(!console.contains("VPMTEST FAIL"), "{console}");
    let stats = guest_stats(&console);
    assert_eq!(stats["rings"], 2, "{stats:?}");
    assert!(stats["host_rejected"] >= 4, "{stats:?}");
}

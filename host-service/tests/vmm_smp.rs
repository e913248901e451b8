//! SMP guests on the KVM front (`vpm guest --vcpus N`), on real KVM with the VPM test guest: one
//! hint ring per vCPU served by polling and by doorbells, every vCPU's writes split over vPM,
//! epochs that stop every vCPU at one point (kill -9 trials, F1), and acknowledged persists of
//! every vCPU surviving kill -9 (P1). Each VM runs as a separate `vpm` process.

use std::path::PathBuf;

use serde_json::Value;
use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind, TrialResult};

mod vmm_support;

use vmm_support::{json_run, Dir};

/// Runs `vpm guest` (fresh tenant) and returns its JSON result line; the run must succeed.
fn guest(d: &Dir, args: &[&str]) -> Value {
    let state = d.s();
    let mut all = vec!["guest", "--state", &state, "--pool-mib", "96", "--fresh"];
    all.extend_from_slice(args);
    json_run(&all)
}

/// Hints each ring completed.
fn ring_hints(r: &Value) -> Vec<u64> {
    r["stats"]["ring_hints"]
        .as_array()
        .expect("ring_hints")
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

fn assert_clean(r: &Value, what: &str) {
    assert_eq!(r["exit"], "done", "{what}: {r}");
    assert_eq!(
        r["report"]["errors"], 0,
        "{what}: {}",
        r["report"]["message"]
    );
}

/// Two vCPUs put into the KV store, each on its half of vPM and its own ring, with the ring
/// poller, with ioeventfd doorbells and with exit doorbells: every put is served, from both
/// rings, and the ops of both vCPUs add up in the report.
#[test]
fn two_vcpus_put_through_their_own_rings_polled_and_with_doorbells() {
    const PUTS: u64 = 6000;
    let d = Dir::new("kv2");
    for extra in [
        &["--poll-us", "50"][..],
        &["--doorbell", "ioeventfd", "--poll-us", "0"][..],
        &["--doorbell", "exit", "--poll-us", "0"][..],
    ] {
        let puts = PUTS.to_string();
        let mut args = vec![
            "--mode",
            "pv",
            "--workload",
            "kv",
            "--args",
            &puts,
            "--vpm-mib",
            "8",
            "--vcpus",
            "2",
        ];
        args.extend_from_slice(extra);
        let r = guest(&d, &args);
        let what = format!("{extra:?}");
        assert_clean(&r, &what);
        assert_eq!(r["report"]["ops"], PUTS, "{what}: both vCPUs' puts count");
        // One persist per put, each on the ring of the vCPU that made it.
        assert_eq!(ring_hints(&r), vec![PUTS / 2, PUTS / 2], "{what}");
        assert_eq!(r["stats"]["hints_served"], PUTS, "{what}");
        assert_eq!(r["stats"]["hints_rejected"], 0, "{what}");
        if extra[0] == "--poll-us" {
            assert!(
                r["stats"]["poller_hints"].as_u64().unwrap() > 0,
                "{what}: the poller served none: {}",
                r["stats"]
            );
        }
    }
    // Log appends split the same way (two persists per append).
    let r = guest(
        &d,
        &[
            "--mode",
            "pv",
            "--workload",
            "log",
            "--args",
            "3000,64",
            "--vpm-mib",
            "8",
            "--vcpus",
            "2",
            "--poll-us",
            "50",
        ],
    );
    assert_clean(&r, "log");
    assert_eq!(r["report"]["ops"], 3000);
    assert_eq!(ring_hints(&r), vec![3000, 3000]);
}

/// Four vCPUs boot, run their shares and finish, in PV mode (four rings) and in full mode with
/// frequent epochs (every pause stops four vCPUs); a workload that does not split runs on
/// vCPU 0 while the others finish at once.
#[test]
fn four_vcpus_boot_and_finish() {
    let d = Dir::new("four");
    let r = guest(
        &d,
        &[
            "--mode",
            "pv",
            "--workload",
            "kv",
            "--args",
            "4000",
            "--vpm-mib",
            "8",
            "--vcpus",
            "4",
            "--doorbell",
            "ioeventfd",
        ],
    );
    assert_clean(&r, "pv kv");
    assert_eq!(r["report"]["ops"], 4000);
    assert_eq!(ring_hints(&r), vec![1000; 4]);
    let r = guest(
        &d,
        &[
            "--mode",
            "full",
            "--workload",
            "log",
            "--args",
            "200000,64",
            "--vpm-mib",
            "8",
            "--vcpus",
            "4",
            "--epoch-ms",
            "3",
        ],
    );
    assert_clean(&r, "full log");
    assert_eq!(r["report"]["ops"], 200000);
    assert!(r["stats"]["epochs"].as_u64().unwrap() > 1, "{}", r["stats"]);
    let r = guest(
        &d,
        &[
            "--mode",
            "full",
            "--workload",
            "checksum",
            "--args",
            "5,16",
            "--vpm-mib",
            "8",
            "--vcpus",
            "4",
            "--epoch-ms",
            "5",
            "--hints",
            "off",
        ],
    );
    assert_clean(&r, "checksum on vCPU 0");
    assert_eq!(r["report"]["ops"], 5);
}

fn trials(kind: TrialKind, name: &str, poll_us: u64, n: u64, seed: u64) -> Vec<TrialResult> {
    let d = Dir::new(name);
    let cfg = TrialConfig {
        vpm: PathBuf::from(env!("CARGO_BIN_EXE_vpm")),
        dir: d.0.clone(),
        kind,
        kill_after_ms: (20, 250),
        vpm_mib: 8,
        poll_us,
        vcpus: 2,
    };
    (0..n)
        .map(|i| {
            let r = run_trial(&cfg, seed + i)
                .unwrap_or_else(|e| panic!("trial {i}: {}", vpm_host::error_chain(&e)));
            assert_eq!(
                r.errors, 0,
                "trial {i} (killed after {} ms): {}",
                r.killed_after_ms, r.message
            );
            r
        })
        .collect()
}

/// Full virtualization with two vCPUs, each appending its own sequence log to its half of vPM,
/// killed with SIGKILL at random moments: each half recovers to one point in time (F1), and vCPU
/// 0's log no earlier than the last epoch the host witnessed. An epoch that collected the dirty
/// log while one vCPU still ran would tear that vCPU's half. Every witnessed epoch names both
/// vCPUs' records, so the checker holds each half to its own (staged epochs, the default, once
/// wrote vCPU 0's alone).
#[test]
fn two_vcpus_recover_one_epoch_image_after_kill_9() {
    let results = trials(TrialKind::FullPrefix, "full", 0, 30, 0x5a00);
    assert!(results
        .iter()
        .all(|r| r.committed > 0 && r.found >= r.committed));
    for r in &results {
        assert_eq!(
            r.committed_vcpus.len(),
            2,
            "the epoch witness names {:?}, not both vCPUs' records",
            r.committed_vcpus
        );
    }
    let both = results
        .iter()
        .filter(|r| r.committed_vcpus.iter().all(|&c| c > 0))
        .count();
    assert!(
        both >= 20,
        "only {both} of 30 trials had both vCPUs' records in a committed epoch"
    );
}

/// PV with two vCPUs, each draining its own log through its own ring (polled, and with
/// doorbells): every persist either vCPU saw acknowledged survives kill -9 (P1).
#[test]
fn two_vcpus_acknowledged_persists_survive_kill_9() {
    for (poll_us, seed) in [(50, 0x5b00), (0, 0x5c00)] {
        let results = trials(TrialKind::PvPersisted, "pv", poll_us, 20, seed);
        let both = results
            .iter()
            .filter(|r| r.acked_vcpus.len() == 2 && r.acked_vcpus.iter().all(|&a| a > 0))
            .count();
        assert!(
            both >= 15,
            "poll {poll_us}: only {both} of 20 trials had acknowledged drains on both vCPUs"
        );
    }
}

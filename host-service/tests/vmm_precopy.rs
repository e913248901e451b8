//! Pre-copy epochs on real KVM with the VPM test guest: pages copied by a pre-copy round while
//! the guest runs, and written again before the stop, reach PM with the content they had at the
//! stop (the guest-visible image an epoch commits is the memory at its stop point).

use std::path::PathBuf;

use serde_json::Value;

mod vmm_support;

use vmm_support::{json_run, Dir};

/// Runs `vpm guest` with `args` and returns its JSON result line.
fn guest(args: &[&str]) -> Value {
    let mut all = vec!["guest", "--pool-mib", "160"];
    all.extend_from_slice(args);
    json_run(&all)
}

/// Runs a sequential writer of `records` 64-byte records over a 4 MiB vPM (65,536 records fill
/// it; more wrap around) with 2 ms staged epochs and `rounds` pre-copy rounds each, then checks
/// in a fresh VM that the recovered image is exactly the writer's last one. Returns the
/// writer's counters.
fn write_then_check(name: &str, records: u64, rounds: &str) -> Value {
    let d = Dir::new(name);
    let state = d.0.to_string_lossy().into_owned();
    let common = [
        "--state",
        state.as_str(),
        "--mode",
        "full",
        "--vpm-mib",
        "4",
    ];
    let records_arg = records.to_string();
    let mut writer = common.to_vec();
    writer.extend([
        "--fresh",
        "--workload",
        "seq-writer",
        "--args",
        records_arg.as_str(),
        "--epoch-ms",
        "2",
        "--precopy",
        "on",
        "--precopy-rounds",
        rounds,
    ]);
    let stats = guest(&writer)["stats"].clone();
    let mut check = common.to_vec();
    check.extend(["--workload", "seq-check", "--args", "0", "--epoch-ms", "0"]);
    let c = guest(&check);
    assert_eq!(c["report"]["errors"], 0, "{}", c["report"]["message"]);
    assert_eq!(
        c["report"]["values"][0].as_u64(),
        Some(records),
        "the recovered image is not the writer's last: {}",
        c["report"]
    );
    stats
}

/// A sequential writer wraps around a 4 MiB vPM fifteen times over 2 ms epochs with two
/// pre-copy rounds each: the page being filled when a round runs is copied and written on before
/// the stop, in the last epoch too. The recovered image must be exactly the writer's last.
#[test]
fn precopy_epochs_commit_the_memory_at_the_stop() {
    let s = write_then_check("precopy", 983_040, "2");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
    assert!(n("epochs") >= 3, "too few epochs: {s}");
    assert!(n("precopy_rounds") > 0, "no pre-copy round ran: {s}");
    assert!(n("precopy_pages") > 0, "no round copied a page: {s}");
    assert!(
        n("stop_copy_pages") > 0,
        "no page was copied at a stop: {s}"
    );
    assert!(n("pause_us_p99") >= n("pause_us_p50"), "{s}");
    assert_eq!(
        n("pause_commit_us"),
        0,
        "a pre-copy epoch committed in the pause: {s}"
    );
}

/// A sequential writer wraps around a 4 MiB vPM forty times over 2 ms staged epochs (no rounds),
/// so its pages are rewritten whole epoch after epoch and the stops stream them straight into
/// fresh PM homes. The recovered image must be exactly the writer's last.
#[test]
fn pages_streamed_into_fresh_homes_commit_the_memory_at_the_stop() {
    let s = write_then_check("streamed", 40 * 65_536, "0");
    assert!(
        s["stop_streamed_pages"].as_u64().unwrap_or(0) > 0,
        "no page was streamed into a fresh home: {s}"
    );
}

/// Kill -9 at random moments of a sequential writer taking pre-copy epochs (5 ms, two rounds
/// each): the recovered vPM is exactly one epoch's image, never older than the last epoch the
/// host witnessed committing. An epoch that committed a round's copy of a page rewritten before
/// its stop would recover records out of order.
#[test]
fn precopy_epochs_recover_one_epoch_image_after_kill_9() {
    use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind};
    let d = Dir::new("precopy-crash");
    // The `vpm guest` children take the options from the environment (`vpm help guest`).
    std::env::set_var("VPM_PRECOPY", "on");
    std::env::set_var("VPM_PRECOPY_ROUNDS", "2");
    let cfg = TrialConfig {
        vpm: PathBuf::from(env!("CARGO_BIN_EXE_vpm")),
        dir: d.0.clone(),
        kind: TrialKind::FullPrefix,
        kill_after_ms: (10, 200),
        vpm_mib: 8,
        poll_us: 0,
        vcpus: 1,
    };
    for i in 0..30 {
        let r = run_trial(&cfg, 0x9c0 + i)
            .unwrap_or_else(|e| panic!("trial {i}: {}", vpm_host::error_chain(&e)));
        assert_eq!(
            r.errors, 0,
            "trial {i} (killed after {} ms): {}",
            r.killed_after_ms, r.message
        );
        assert!(
            r.committed > 0 && r.found >= r.committed,
            "trial {i}: {r:?}"
        );
    }
}

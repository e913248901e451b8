//! Crash tests on real KVM with real processes: `vpm guest` is killed with SIGKILL at random
//! moments and restarted on the same pool. Full virtualization: the recovered vPM is exactly one
//! epoch's image (F1). Para-virtual: every acknowledged persist survives (P1) and transient
//! scratch reads as zeros (P3). `vpm soak` runs the same trials in any number.

use std::path::PathBuf;

use vpm_host::crashtest::{run_trial, TrialConfig, TrialKind};

fn config(kind: TrialKind, name: &str, kill_after_ms: (u64, u64)) -> TrialConfig {
    assert!(
        std::path::Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (KVM) on this machine"
    );
    TrialConfig {
        vpm: PathBuf::from(env!("CARGO_BIN_EXE_vpm")),
        dir: PathBuf::from(format!("/dev/shm/vpm-test-{name}-{}", std::process::id())),
        kind,
        kill_after_ms,
        vpm_mib: 8,
        poll_us: 0,
    }
}

fn trials(cfg: &TrialConfig, n: u64, seed: u64) -> Vec<vpm_host::crashtest::TrialResult> {
    let results: Vec<_> = (0..n)
        .map(|i| {
            let r = run_trial(cfg, seed + i)
                .unwrap_or_else(|e| panic!("trial {i}: {}", vpm_host::error_chain(&e)));
            assert_eq!(
                r.errors, 0,
                "trial {i} (killed after {} ms): {}",
                r.killed_after_ms, r.message
            );
            r
        })
        .collect();
    let _ = std::fs::remove_dir_all(&cfg.dir);
    results
}

#[test]
fn full_virtualization_recovers_one_epoch_image_after_kill_9() {
    let cfg = config(TrialKind::FullPrefix, "full", (20, 250));
    let results = trials(&cfg, 50, 100);
    // Every trial is killed after its first committed epoch, so every one has records, and
    // none recovers to an image older than the last epoch the host witnessed committing.
    let with_data = results.iter().filter(|r| r.committed > 0).count();
    assert_eq!(
        with_data, 50,
        "only {with_data} of 50 trials had a committed record before the kill"
    );
    assert!(results.iter().all(|r| r.found >= r.committed));
    println!(
        "50 full-virtualization crash trials: newest records {:?}",
        results.iter().map(|r| r.found).collect::<Vec<_>>()
    );
}

#[test]
fn pv_acknowledged_persists_survive_kill_9() {
    let cfg = config(TrialKind::PvPersisted, "pv", (20, 250));
    let results = trials(&cfg, 50, 200);
    let acked = results.iter().filter(|r| r.acked > 0).count();
    assert!(
        acked >= 40,
        "only {acked} of 50 trials had acknowledged drains"
    );
    assert!(results.iter().all(|r| r.found >= r.acked));
}

/// The same with the ring poller on (ABI 1.1 polled rings): persists acknowledged without a
/// doorbell survive too.
#[test]
fn pv_acknowledged_persists_survive_kill_9_with_polling() {
    let cfg = TrialConfig {
        poll_us: 50,
        ..config(TrialKind::PvPersisted, "pv-poll", (20, 250))
    };
    let results = trials(&cfg, 30, 400);
    let acked = results.iter().filter(|r| r.acked > 0).count();
    assert!(
        acked >= 24,
        "only {acked} of 30 trials had acknowledged drains"
    );
    assert!(results.iter().all(|r| r.found >= r.acked));
}

#[test]
fn pv_transient_scratch_reads_zero_after_kill_9() {
    let cfg = config(TrialKind::PvTransient, "transient", (60, 250));
    trials(&cfg, 20, 300);
}

//! Full virtualization without a cliff, on real KVM with the VPM test guest: a KV store whose
//! random puts rewrite every page of a vPM larger than any cap the writable set used to have
//! (256 MiB, 65,536 pages; the cap was 50,000 pages at 100 ms epochs) keeps its pages writable,
//! so in steady state (the guest's timed window, after the first touch and a warm-up) its puts
//! take almost no write-protect faults.

mod vmm_support;

use vmm_support::{json_run as guest, Dir};

/// Most write-protect faults per epoch allowed in the window. With the old cap every page
/// beyond 50,000 faulted in each epoch (~15,000 per epoch here); a page the puts miss in one
/// epoch (about 1 in 20 at this rate) stays writable for as many epochs as a fault costs diffs.
const MAX_FAULTS_PER_EPOCH: u64 = 500;

#[test]
fn a_kv_store_beyond_the_old_cap_takes_no_faults_in_steady_state() {
    let d = Dir::new("writable");
    let state = d.s();
    let r = guest(&[
        "guest",
        "--state",
        &state,
        "--pool-mib",
        "600",
        "--fresh",
        "--mode",
        "full",
        "--vpm-mib",
        "256",
        "--epoch-ms",
        "100",
        "--workload",
        "kv",
        "--args",
        "40000000",
        "--seconds",
        "240",
    ]);
    assert_eq!(r["exit"], "done", "the guest did not finish: {r}");
    let s = &r["stats"];
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("no {k} in {s}"));
    let epochs = n("window_epochs");
    assert!(epochs >= 3, "too few epochs in the window: {s}");
    let faults = n("window_wp_faults");
    assert!(
        faults <= MAX_FAULTS_PER_EPOCH * epochs,
        "{faults} write-protect faults in {epochs} epochs of steady state: {s}"
    );
    assert!(
        n("writable_pages_last") > 50_000,
        "the writable set is capped: {s}"
    );
}

//! `vpm serve`'s DRAM budget on real KVM (`--dram-mib`): shared by heat (the arbiter moves DRAM
//! from a cold VM to a hot one, and keeps the service answering while four VMs commit epochs)
//! and `--dram-policy static` (no share ever changes).

mod serve_support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{need_kvm, scratch, Serve};

#[test]
fn serve_moves_dram_from_a_cold_vm_to_a_hot_one() {
    need_kvm();
    let t0 = Instant::now();
    let dir = scratch("dram");
    // 8 MiB of DRAM for both VMs; each starts with 4 and keeps at least 1.
    let s = hot_and_cold(&dir, "shared");
    let budget = |id: &str| s.vm(id)["stats"]["dram_budget_pages"].as_u64().unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (hot, cold) = loop {
        let (h, c) = (budget("hot"), budget("cold"));
        if h > 1024 && c < 1024 {
            break (h, c);
        }
        assert!(
            Instant::now() < deadline,
            "DRAM did not move to the hot VM in 20 s: hot {h} pages, cold {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        cold >= 256,
        "the cold VM fell below its minimum: {cold} pages"
    );
    assert!(
        hot + cold <= 2048,
        "over the service's budget: {hot} + {cold} pages"
    );
    let v = s.vm("hot");
    assert!(v["stats"]["dram_pages"].as_u64().unwrap() <= hot, "{v}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "shared DRAM: hot {hot} pages, cold {cold} pages after {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

/// A service with `--dram-mib 8 --dram-policy POLICY` running two VMs that start at 4 MiB of
/// DRAM each (at least 1): `hot` (full mode, random writes) and `cold` (pv, kv); a third VM that
/// does not fit the budget is refused.
fn hot_and_cold(dir: &Path, policy: &str) -> Serve {
    let s = serve_support::start_with(dir, &["--dram-mib", "8", "--dram-policy", policy]);
    let vm = |mode: &str, kind: &str| {
        json!({"mode": mode, "vpm_mib": 16, "dram_mib": 4, "dram_min_mib": 1, "log_mib": 1,
               "epoch_ms": 20, "seconds": 60,
               "workload": {"kind": kind, "args": [100_000_000u64]}})
    };
    s.ok("PUT", "/api/v1/vms/hot", Some(vm("full", "random-writes")));
    s.ok("PUT", "/api/v1/vms/cold", Some(vm("pv", "kv")));
    let msg = s.fault(
        "PUT",
        "/api/v1/vms/more",
        Some(&vm("pv", "kv").to_string()),
        409,
    );
    assert!(msg.contains("DRAM budget"), "{msg}");
    s.ok("PUT", "/api/v1/vms/hot/boot", None);
    s.ok("PUT", "/api/v1/vms/cold/boot", None);
    s
}

/// `--dram-policy static`: the same pair as [`serve_moves_dram_from_a_cold_vm_to_a_hot_one`]
/// (where the hot VM's share grows within about a second), but every VM keeps the share it was
/// created with while the hot one commits epochs for 4 s.
#[test]
fn serve_static_dram_policy_never_changes_a_share() {
    need_kvm();
    let t0 = Instant::now();
    let dir = scratch("dram-static");
    let s = hot_and_cold(&dir, "static");
    let stats = |id: &str| s.vm(id)["stats"].clone();
    let start_epochs = stats("hot")["epochs"].as_u64().unwrap_or(0);
    let until = Instant::now() + Duration::from_secs(4);
    let mut samples = 0;
    while Instant::now() < until {
        for id in ["hot", "cold"] {
            let st = stats(id);
            // Before the VMM reports its counters the share is not shown yet.
            if let Some(pages) = st["dram_budget_pages"].as_u64() {
                assert_eq!(pages, 1024, "VM {id}'s share changed: {st}");
                samples += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let hot = stats("hot");
    let epochs = hot["epochs"].as_u64().unwrap_or(0);
    assert!(
        samples > 40 && epochs >= start_epochs + 20,
        "the hot VM hardly ran: {samples} samples, epochs {start_epochs} -> {epochs}: {hot}"
    );
    assert!(hot["dram_pages"].as_u64().unwrap() <= 1024, "{hot}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "static DRAM: both shares 1024 pages over {samples} samples, {} epochs; {:.1} s",
        epochs - start_epochs,
        t0.elapsed().as_secs_f64()
    );
}

/// Four busy full-mode VMs under `--dram-mib` (shared): the arbiter reads every VM's DRAM
/// demand (its VMM state) while their epochs commit (the VMM state, then the pool). It once
/// held the pool while taking the state and the service hung within a second; here every call
/// must answer until all four VMs finish.
#[test]
fn serve_shared_dram_keeps_answering_while_four_vms_commit_epochs() {
    need_kvm();
    let t0 = Instant::now();
    let dir = scratch("dram-busy");
    let s = serve_support::start_with(&dir, &["--dram-mib", "8"]);
    let ids = ["a", "b", "c", "d"];
    for (i, id) in ids.iter().enumerate() {
        let kind = if i < 2 { "skewed-writes" } else { "checksum" };
        let args = if i < 2 {
            json!([100_000_000u64, 64])
        } else {
            json!([1u64 << 30, 4])
        };
        s.ok(
            "PUT",
            &format!("/api/v1/vms/{id}"),
            Some(
                json!({"mode": "full", "vpm_mib": 16, "dram_mib": 2, "log_mib": 1, "epoch_ms": 20,
                        "seconds": if i < 2 { 60 } else { 10 },
                        "workload": {"kind": kind, "args": args}}),
            ),
        );
    }
    for id in ids {
        s.ok("PUT", &format!("/api/v1/vms/{id}/boot"), None);
    }
    let socket = s.socket.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || loop {
        let states: Vec<String> = ids
            .iter()
            .map(|id| {
                let r = vpm_host::serve::client::request(
                    &socket,
                    "GET",
                    &format!("/api/v1/vms/{id}"),
                    None,
                )
                .expect("GET");
                let v: Value = serde_json::from_str(&r.body).expect("JSON");
                v["state"].as_str().unwrap_or("?").to_string()
            })
            .collect();
        let done = states.iter().all(|st| st == "stopped" || st == "failed");
        if tx.send(states).is_err() || done {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    });
    let mut polls = 0;
    let states = loop {
        let states = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("the service stopped answering after {polls} polls"));
        polls += 1;
        if states.iter().all(|st| st == "stopped" || st == "failed") {
            break states;
        }
    };
    assert!(states.iter().all(|st| st == "stopped"), "{states:?}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "shared DRAM, 4 busy VMs: {polls} polls answered; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

//! Parts of tests/serve.rs: the vPM device calls, and pause/resume/epochs of a QEMU VM.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{kv, vpm, Serve};

/// The vPM device calls on VM `d` (made here without a device), while no other VM runs: bad
/// input changes nothing, the device is added (with `vpm ctl`), boots the VM, cannot be removed
/// while it runs, and once removed its tenant is gone and the pool's free PM is what it was.
pub fn pmem_devices(s: &Serve, covered: &mut BTreeSet<(String, String)>, pool_before: &Value) {
    let dev = "/api/v1/vms/{id}/pmem/{dev}";
    let p0 = "/api/v1/vms/d/pmem/p0";
    let mut cfg = kv("pv", 8);
    cfg.as_object_mut().unwrap().remove("vpm_mib");
    s.ok("PUT", "/api/v1/vms/d", Some(cfg));
    assert_eq!(s.vm("d")["pmem"], Value::Null);
    let msg = s.fault("PUT", "/api/v1/vms/d/boot", None, 409);
    assert!(msg.contains("no vPM device"), "{msg}");
    s.fault("GET", p0, None, 404);
    let before = s.ok("GET", "/api/v1/pool", None);
    let vms_before = s.ok("GET", "/api/v1/vms", None);
    for (body, status, says) in [
        (
            "{\"size_mib\":100000}",
            400,
            "vpm_mib = 100000 is out of range",
        ),
        ("{\"size_mib\":0}", 400, "out of range"),
        ("{\"size_mib\":1}", 400, "dram_mib = 2 is out of range"),
        ("{\"size_mib\":8,\"pm_quota_mib\":9}", 400, "pm_quota_mib"),
        ("{\"size_mib\":8,\"log_mib\":9}", 400, "log_mib"),
        ("{\"size_mib\":8,\"bytes\":1}", 400, "unknown field"),
        ("{\"size_mib\":-8}", 400, "bad request body"),
        ("{}", 400, "size_mib"),
        // 1 GiB of vPM: its page map and log do not fit in the 64 MiB pool.
        ("{\"size_mib\":1024}", 409, "add tenant"),
    ] {
        let msg = s.fault("PUT", p0, Some(body), status);
        assert!(msg.contains(says), "{body}: {msg}");
    }
    let msg = s.fault(
        "PUT",
        "/api/v1/vms/d/pmem/a%2Fb",
        Some("{\"size_mib\":8}"),
        400,
    );
    assert!(msg.contains("id"), "{msg}");
    s.fault(
        "PUT",
        "/api/v1/vms/nope/pmem/p0",
        Some("{\"size_mib\":8}"),
        404,
    );
    assert_eq!(
        s.ok("GET", "/api/v1/pool", None),
        before,
        "a refused add changed the pool"
    );
    assert_eq!(
        s.ok("GET", "/api/v1/vms", None),
        vms_before,
        "a refused add changed a VM"
    );

    // Added through `vpm ctl`.
    covered.insert(("PUT".into(), dev.into()));
    let out = vpm()
        .args(["ctl", "--socket", &s.socket.display().to_string()])
        .args(["put", p0, "{\"size_mib\":8,\"log_mib\":1}"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tenants = |p: &Value| p["tenants"].as_array().unwrap().len();
    let pool = s.ok("GET", "/api/v1/pool", None);
    assert_eq!(tenants(&pool), tenants(&before) + 1, "{pool}");
    let msg = s.fault(
        "PUT",
        "/api/v1/vms/d/pmem/p1",
        Some("{\"size_mib\":8}"),
        409,
    );
    assert!(msg.contains("one per VM"), "{msg}");
    covered.insert(("GET".into(), dev.into()));
    let info = s.ok("GET", p0, None);
    assert_eq!(
        (info["id"].as_str(), info["size_mib"].as_u64()),
        (Some("p0"), Some(8)),
        "{info}"
    );
    assert_eq!(info["log_mib"], 1, "{info}");
    s.fault("GET", "/api/v1/vms/d/pmem/p1", None, 404);
    let v = s.vm("d");
    assert_eq!(
        (v["pmem"]["id"].as_str(), v["config"]["vpm_mib"].as_u64()),
        (Some("p0"), Some(8)),
        "{v}"
    );

    // It boots with the device; the device cannot go while it runs.
    s.ok("PUT", "/api/v1/vms/d/boot", None);
    s.wait_state("d", &["running"], 30);
    let deadline = Instant::now() + Duration::from_secs(20);
    while s.vm("d")["tenant"]["pm_homes"].as_u64() == Some(0) {
        assert!(Instant::now() < deadline, "VM d persisted nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let msg = s.fault("DELETE", p0, None, 409);
    assert!(
        msg.contains("is running: cannot remove a vPM device"),
        "{msg}"
    );
    let msg = s.fault(
        "PUT",
        "/api/v1/vms/d/pmem/p1",
        Some("{\"size_mib\":8}"),
        409,
    );
    assert!(msg.contains("one per VM"), "adding to a running VM: {msg}");
    s.ok("PUT", "/api/v1/vms/d/shutdown", None);
    let used = s.ok("GET", "/api/v1/pool", None);
    assert!(
        used["free_pm_pages"].as_u64() < before["free_pm_pages"].as_u64(),
        "{used}"
    );

    // Removed: the tenant leaves the pool and its PM is free again; twice is a 404.
    covered.insert(("DELETE".into(), dev.into()));
    s.ok("DELETE", p0, None);
    assert_eq!(
        s.ok("GET", "/api/v1/pool", None),
        before,
        "the removed device's tenant stayed"
    );
    let msg = s.fault("DELETE", p0, None, 404);
    assert!(msg.contains("no vPM device"), "{msg}");
    assert_eq!(s.vm("d")["pmem"], Value::Null);
    let msg = s.fault("PUT", "/api/v1/vms/d/boot", None, 409);
    assert!(msg.contains("no vPM device"), "{msg}");
    s.ok("DELETE", "/api/v1/vms/d", None);
    assert_eq!(s.ok("GET", "/api/v1/pool", None), *pool_before);
}

/// Acknowledgements fsyncer printed on `console` (`FSYNC-ACK` lines).
pub fn fsync_acks(console: &Path) -> u64 {
    // The console may hold bytes that are not UTF-8 (the guest's boot).
    String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default())
        .lines()
        .filter(|l| l.contains("FSYNC-ACK"))
        .count() as u64
}

/// Waits until `progress` of the Linux guest whose console is `console` is past `past`; returns
/// it.
fn acked_past(progress: fn(&Path) -> u64, console: &Path, past: u64, what: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = progress(console);
        if n > past {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no acknowledgement past {past} in 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// QEMU VM `id` (a Linux guest printing acknowledgements, counted by `progress`, on `console`)
/// paused, an epoch requested while paused, resumed, and epochs requested while it runs, over
/// the API: paused, it acknowledges nothing and stays paused through the epoch; each epoch
/// request commits a new epoch (and, in full mode, a witness line for it in `epochs`).
pub fn qemu_pause_resume_and_epochs(
    s: &Serve,
    id: &str,
    (console, progress): (&Path, fn(&Path) -> u64),
    epochs: Option<&Path>,
) {
    let path = |op: &str| format!("/api/v1/vms/{id}/{op}");
    acked_past(progress, console, 0, id);
    let e1 = s.ok("PUT", &path("epoch"), None)["epoch"].as_u64().unwrap();
    s.ok("PUT", &path("pause"), None);
    assert_eq!(s.vm(id)["state"], "paused");
    // The console file may still receive what QEMU had buffered before the stop.
    std::thread::sleep(Duration::from_millis(200));
    let held = progress(console);
    let e2 = s.ok("PUT", &path("epoch"), None)["epoch"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        s.vm(id)["state"],
        "paused",
        "{id}: an epoch resumed a paused guest"
    );
    assert_eq!(
        progress(console),
        held,
        "{id}: the paused guest acknowledged records"
    );
    let msg = s.fault("PUT", &path("pause"), None, 409);
    assert!(msg.contains("is paused: cannot pause"), "{msg}");
    s.ok("PUT", &path("resume"), None);
    assert_eq!(s.vm(id)["state"], "running");
    acked_past(progress, console, held, id);
    let e3 = s.ok("PUT", &path("epoch"), None)["epoch"].as_u64().unwrap();
    assert!(e1 < e2 && e2 < e3, "{id}: epochs {e1}, {e2}, {e3}");
    if let Some(w) = epochs {
        let text = std::fs::read_to_string(w).unwrap();
        let last: u64 = text
            .lines()
            .last()
            .unwrap()
            .split(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(last, e3, "{id}: the epoch witness has {text}");
    }
    println!("{id}: paused at {held} acknowledgements; epochs {e1}, {e2}, {e3}");
}

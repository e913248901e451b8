//! `vpm serve` end to end on real KVM: the API (every path of docs/api/openapi.json, every
//! bad-input class), `promtool check metrics` on a scrape taken while VMs run, and the issue's
//! scenario — several VMs on a pool smaller than their summed vPM, pause/resume, snapshot and
//! restore (byte for byte), delete, a failing VM that leaves the others running, `kill -9` of
//! the service, restart, and every VM's acknowledged data checked against witnesses kept outside
//! the pool.

mod serve_support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use serve_support::{
    acked_in, calls, kv, last_committed_record, need_kvm, openapi, payload, promtool, scratch,
    serve_args, start, vpm, wait_lines, witness_max, Serve,
};

#[test]
fn serve_api_covers_every_path_refuses_bad_input_and_metrics_pass_promtool() {
    need_kvm();
    let t0 = Instant::now();
    let dir = scratch("api");
    let lines = dir.join("metrics.ndjson");
    let lines_arg = lines.display().to_string();
    let s = serve_support::start_with(
        &dir,
        &[
            "--metrics-ndjson",
            &lines_arg,
            "--metrics-interval-ms",
            "50",
        ],
    );
    let mode = std::fs::metadata(&s.socket).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(mode.mode() & 0o777, 0o600, "the socket is 0600");

    // A second service on the same pool is refused (the pool's lock); one on the same socket
    // is refused too (a live socket).
    let second = vpm().args(serve_args(&dir, "pool")).output().unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another vpm process"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let other = vpm().args(serve_args(&dir, "pool2")).output().unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("another service listens"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );

    let mut covered = BTreeSet::new();
    let mut ok = |m: &str, template: &str, path: &str, body: Option<Value>| {
        covered.insert((m.to_string(), template.to_string()));
        s.ok(m, path, body)
    };
    ok("GET", "/api/v1/vmm.ping", "/api/v1/vmm.ping", None);
    let vm = "/api/v1/vms/{id}";
    ok("PUT", vm, "/api/v1/vms/a", Some(kv("pv", 8)));
    ok("PUT", vm, "/api/v1/vms/b", Some(kv("full", 8)));

    // Bad input: each is a 4xx with a fault message, and changes nothing.
    let before = s.ok("GET", "/api/v1/vms", None);
    let pool_before = s.ok("GET", "/api/v1/pool", None);
    let good = kv("pv", 8).to_string();
    let bad_bodies = [
        ("{\"mode\": ", "bad request body"),
        (
            &good.replace("\"mode\"", "\"nonsense\":1,\"mode\"") as &str,
            "unknown field",
        ),
        (
            &good.replace("\"vpm_mib\":8", "\"vpm_mib\":100000"),
            "out of range",
        ),
        (
            &good.replace("\"log_mib\":1", "\"log_mib\":9"),
            "out of range",
        ),
        (
            &good.replace("\"vpm_mib\":8", "\"vpm_mib\":-3"),
            "bad request body",
        ),
        (
            &good.replace("\"dram_mib\":2", "\"dram_mib\":9"),
            "out of range",
        ),
        (&good.replace("\"mode\"", "\"vcpus\":9,\"mode\""), "vcpus"),
        (
            &good.replace("\"mode\"", "\"front\":\"qemu\",\"mode\""),
            "qemu",
        ),
    ];
    for (body, says) in bad_bodies {
        let msg = s.fault("PUT", "/api/v1/vms/c", Some(body), 400);
        assert!(msg.contains(says), "{body}: {msg}");
    }
    assert!(s
        .fault("PUT", "/api/v1/vms/a", Some(&good), 409)
        .contains("exists"));
    assert!(s
        .fault("PUT", "/api/v1/vms/a%2Fb", Some(&good), 400)
        .contains("VM id"));
    assert!(s
        .fault("GET", "/api/v1/vms/nope", None, 404)
        .contains("no VM"));
    assert!(s
        .fault("PUT", "/api/v1/vms/nope/boot", None, 404)
        .contains("no VM"));
    let msg = s.fault("PUT", "/api/v1/vms/a/pause", None, 409);
    assert!(msg.contains("is created: cannot pause"), "{msg}");
    assert!(s
        .fault("PUT", "/api/v1/vms/a/boot", Some("{\"now\":1}"), 400)
        .contains("unknown field"));
    assert!(s
        .fault("PUT", "/api/v1/vms/a/epoch", None, 409)
        .contains("cannot"));
    assert!(s
        .fault("PUT", "/api/v1/vms/a/snapshot", Some("{}"), 400)
        .contains("path"));
    let msg = s.fault(
        "PUT",
        "/api/v1/vms/r/restore",
        Some(&json!({"path": dir.join("missing"), "config": kv("pv", 8)}).to_string()),
        400,
    );
    assert!(msg.contains("open"), "{msg}");
    s.fault("GET", "/api/v1/nothing", None, 404);
    s.fault("DELETE", "/api/v1/pool", None, 405);
    assert_eq!(
        s.ok("GET", "/api/v1/vms", None),
        before,
        "a refused call changed a VM"
    );
    assert_eq!(
        s.ok("GET", "/api/v1/pool", None),
        pool_before,
        "a refused call changed the pool"
    );

    // A vPM device added and removed: one per VM, not while it runs, sizes checked, its tenant
    // freed in the pool.
    calls::pmem_devices(&s, &mut covered, &pool_before);

    let mut ok = |m: &str, template: &str, path: &str, body: Option<Value>| {
        covered.insert((m.to_string(), template.to_string()));
        s.ok(m, path, body)
    };
    ok("PUT", "/api/v1/vms/{id}/boot", "/api/v1/vms/a/boot", None);
    ok(
        "PUT",
        "/api/v1/vms/{id}/boot",
        "/api/v1/vms/b/boot",
        Some(json!({})),
    );
    s.wait_state("a", &["running"], 30);
    s.wait_state("b", &["running"], 30);
    let msg = s.fault("PUT", "/api/v1/vms/a/boot", None, 409);
    assert!(msg.contains("is running: cannot boot"), "{msg}");
    let e1 = ok("PUT", "/api/v1/vms/{id}/epoch", "/api/v1/vms/a/epoch", None)["epoch"]
        .as_u64()
        .unwrap();
    let e2 = s.ok("PUT", "/api/v1/vms/a/epoch", None)["epoch"]
        .as_u64()
        .unwrap();
    assert!(
        e2 > e1,
        "an epoch request commits an epoch ({e1} then {e2})"
    );
    ok("PUT", "/api/v1/vms/{id}/pause", "/api/v1/vms/a/pause", None);
    assert_eq!(s.vm("a")["state"], "paused");
    ok(
        "PUT",
        "/api/v1/vms/{id}/resume",
        "/api/v1/vms/a/resume",
        None,
    );
    assert_eq!(s.vm("a")["state"], "running");
    ok(
        "PATCH",
        vm,
        "/api/v1/vms/a",
        Some(json!({"state": "paused"})),
    );
    assert_eq!(s.vm("a")["state"], "paused");
    let msg = s.fault("PATCH", "/api/v1/vms/a", Some("{\"state\":\"gone\"}"), 400);
    assert!(msg.contains("unknown variant"), "{msg}");
    ok(
        "PATCH",
        vm,
        "/api/v1/vms/a",
        Some(json!({"state": "running"})),
    );
    assert_eq!(s.vm("a")["state"], "running");
    // Metrics while both VMs run.
    std::thread::sleep(Duration::from_millis(300));
    let scrape = ok("GET", "/metrics", "/metrics", None);
    let scrape = scrape.as_str().expect("metrics text");
    for series in [
        "vpm_vm_persists_total{vm=\"a\"}",
        "vpm_vm_epochs_total{vm=\"b\"}",
        "vpm_vm_epoch_pause_seconds_count{vm=\"a\"}",
        "vpm_vm_pm_written_bytes_total{vm=\"a\"}",
        "vpm_vm_up{vm=\"b\"} 1",
        "vpm_pool_free_bytes",
    ] {
        assert!(scrape.contains(series), "no {series} in\n{scrape}");
    }
    promtool(scrape);

    let snap = dir.join("a.snap");
    let info = ok(
        "PUT",
        "/api/v1/vms/{id}/snapshot",
        "/api/v1/vms/a/snapshot",
        Some(json!({"path": snap})),
    );
    assert_eq!(info["bytes"], 8 << 20);
    ok(
        "PUT",
        "/api/v1/vms/{id}/restore",
        "/api/v1/vms/a2/restore",
        Some(json!({"path": snap, "config": kv("pv", 8)})),
    );
    ok(
        "PUT",
        "/api/v1/vms/{id}/shutdown",
        "/api/v1/vms/a/shutdown",
        None,
    );
    assert_eq!(s.vm("a")["state"], "stopped");
    let msg = s.fault("PUT", "/api/v1/vms/a/pause", None, 409);
    assert!(msg.contains("is stopped: cannot pause"), "{msg}");
    ok("GET", "/api/v1/vms", "/api/v1/vms", None);
    ok("GET", "/api/v1/pool", "/api/v1/pool", None);
    ok("GET", vm, "/api/v1/vms/a2", None);
    ok("DELETE", vm, "/api/v1/vms/b", None);
    s.fault("GET", "/api/v1/vms/b", None, 404);
    assert_eq!(
        covered,
        openapi(),
        "every OpenAPI path and method is exercised"
    );
    // The NDJSON metrics file: one JSON object a line, VM a among them while it ran.
    let text = std::fs::read_to_string(&lines).expect("NDJSON metrics file");
    let parsed: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
        .collect();
    assert!(parsed.len() >= 3, "{text}");
    assert!(
        parsed
            .iter()
            .any(|v| v["vms"]["a"]["state"] == "running"
                && v["vms"]["a"]["persists"].as_u64() > Some(0)),
        "{text}"
    );
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!("serve API test: {:.1} s", t0.elapsed().as_secs_f64());
}

/// Runs a checker VM `id` on the recovered tenant and returns its report.
fn check(s: &Serve, id: &str, mode: &str, vpm_mib: u64, args: Value) -> Value {
    s.ok(
        "PUT",
        &format!("/api/v1/vms/{id}"),
        Some(
            json!({"mode": mode, "vpm_mib": vpm_mib, "log_mib": 1, "dram_mib": 2, "epoch_ms": 0,
                    "hints": false, "workload": {"kind": "seq-check", "args": args}}),
        ),
    );
    s.ok("PUT", &format!("/api/v1/vms/{id}/boot"), None);
    let v = s.wait_state(id, &["stopped", "failed"], 60);
    assert_eq!(v["state"], "stopped", "checker {id}: {v}");
    v["result"]["report"].clone()
}

#[test]
fn serve_runs_many_vms_and_recovers_all_after_kill_9() {
    need_kvm();
    let t0 = Instant::now();
    let dir = scratch("many");
    // Witnesses live outside the pool's directory.
    let wdir = dir.join("witnesses");
    std::fs::create_dir_all(&wdir).unwrap();
    let s = start(&dir);
    let pv_w = wdir.join("pv.acked");
    let pv_e = wdir.join("pv.epochs");
    let full_e = wdir.join("full.epochs");
    let writer = |mode: &str, args: Value, w: Option<&Path>, e: &Path| {
        json!({"mode": mode, "vpm_mib": 24, "dram_mib": 2, "log_mib": 1, "epoch_ms": 20,
               "workload": {"kind": "seq-writer", "args": args},
               "witness": w, "epoch_witness": e})
    };
    // 24 + 24 + 16 + 2 MiB of vPM (and 24 more restored) on a 64 MiB pool.
    s.ok(
        "PUT",
        "/api/v1/vms/pv",
        Some(writer("pv", json!([0, 8]), Some(&pv_w), &pv_e)),
    );
    s.ok(
        "PUT",
        "/api/v1/vms/full",
        Some(writer("full", json!([]), None, &full_e)),
    );
    // Two vCPUs: its pause below must hold both.
    let mut direct = kv("direct", 16);
    direct["vcpus"] = json!(2);
    s.ok("PUT", "/api/v1/vms/direct", Some(direct));
    // A VM whose VMM fails at boot (its witness cannot be opened): the others keep running.
    let mut broken = kv("pv", 2);
    broken["witness"] = json!(dir.join("no-such-dir/w"));
    s.ok("PUT", "/api/v1/vms/broken", Some(broken));
    for id in ["pv", "full", "direct", "broken"] {
        s.ok("PUT", &format!("/api/v1/vms/{id}/boot"), None);
    }
    // Paused as soon as it boots, while its VMM may still be building it (mapping and homing
    // 16 MiB of vPM): the hold takes effect when the VM starts, it is not a VM that ended (the
    // cause of a 409 seen once under load).
    s.ok("PUT", "/api/v1/vms/direct/pause", None);
    assert_eq!(s.vm("direct")["state"], "paused");
    s.ok("PUT", "/api/v1/vms/direct/resume", None);
    let pool = s.ok("GET", "/api/v1/pool", None);
    assert!(pool["size_bytes"].as_u64().unwrap() < (24 + 24 + 16 + 2) << 20);
    let b = s.wait_state("broken", &["failed"], 30);
    assert!(
        b["result"]["error"].as_str().unwrap().contains("witness"),
        "{b}"
    );
    wait_lines(&pv_e, 60);
    wait_lines(&full_e, 60);
    for id in ["pv", "full", "direct"] {
        assert_eq!(s.vm(id)["state"], "running", "{id} after another VM failed");
    }

    // Pause and resume one: held, its guest makes no progress, then runs on.
    s.ok("PUT", "/api/v1/vms/direct/pause", None);
    let exits = |v: &Value| v["stats"]["io_exits"].as_u64().unwrap();
    let a = exits(&s.vm("direct"));
    std::thread::sleep(Duration::from_millis(200));
    let v = s.vm("direct");
    assert_eq!(
        (v["state"].as_str(), exits(&v)),
        (Some("paused"), a),
        "a paused VM ran"
    );
    s.ok("PUT", "/api/v1/vms/direct/resume", None);
    let deadline = Instant::now() + Duration::from_secs(10);
    while exits(&s.vm("direct")) == a {
        assert!(Instant::now() < deadline, "the resumed VM made no progress");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Snapshot a running VM, restore it as a new VM: the same vPM byte for byte, and the
    // restored image passes the point-in-time check.
    let snap = dir.join("full.snap");
    let info = s.ok(
        "PUT",
        "/api/v1/vms/full/snapshot",
        Some(json!({"path": snap})),
    );
    assert!(info["epoch"].as_u64().unwrap() > 0, "{info}");
    let copy_cfg = json!({"mode": "full", "vpm_mib": 24, "dram_mib": 2, "log_mib": 1,
                          "epoch_ms": 0, "workload": {"kind": "seq-check", "args": [0]}});
    s.ok(
        "PUT",
        "/api/v1/vms/copy/restore",
        Some(json!({"path": snap, "config": copy_cfg})),
    );
    let snap2 = dir.join("copy.snap");
    s.ok(
        "PUT",
        "/api/v1/vms/copy/snapshot",
        Some(json!({"path": snap2})),
    );
    assert!(
        payload(&snap) == payload(&snap2),
        "the restored vPM differs from the snapshot"
    );
    s.ok("PUT", "/api/v1/vms/copy/boot", None);
    let v = s.wait_state("copy", &["stopped", "failed"], 60);
    assert_eq!(v["state"], "stopped", "{v}");
    assert_eq!(v["result"]["report"]["errors"], 0, "{v}");
    assert!(
        v["result"]["report"]["values"][0].as_u64().unwrap() > 0,
        "{v}"
    );

    // Delete one: gone from the service and the pool.
    s.ok("DELETE", "/api/v1/vms/direct", None);
    s.fault("GET", "/api/v1/vms/direct", None, 404);
    assert!(
        dir.join("pool/full.work").exists(),
        "a tiered VM's working copy"
    );
    assert!(!dir.join("pool/direct.work").exists() && !dir.join("pool/direct.ram").exists());
    let pool = s.ok("GET", "/api/v1/pool", None);
    assert!(!pool.to_string().contains("\"direct\""), "{pool}");

    // kill -9 of the service while pv and full write.
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(s.vm("pv")["state"], "running");
    assert_eq!(s.vm("full")["state"], "running");
    drop(s);
    let acked = witness_max(&pv_w);
    let committed = last_committed_record(&full_e);
    assert!(
        acked > 0 && committed > 0,
        "acked {acked}, committed {committed}"
    );

    // Restart on the same pool: the tenants are there; each VM's data is checked.
    let s = start(&dir);
    let pool = s.ok("GET", "/api/v1/pool", None);
    let names: BTreeSet<&str> = pool["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["broken", "copy", "full", "pv"]),
        "{pool}"
    );
    let r = check(&s, "pv", "pv", 24, json!([1, acked]));
    assert_eq!(r["errors"], 0, "pv: {r}");
    assert!(
        r["values"][0].as_u64().unwrap() >= acked,
        "pv lost acknowledged records: {r}"
    );
    let r = check(&s, "full", "full", 24, json!([0]));
    assert_eq!(r["errors"], 0, "full: {r}");
    assert!(
        r["values"][0].as_u64().unwrap() >= committed,
        "full went back past its last commit: {r}"
    );
    let r = check(&s, "copy", "full", 24, json!([0]));
    assert_eq!(r["errors"], 0, "copy: {r}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "serve scenario: acked {acked}, committed {committed}; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn serve_runs_linux_guests_under_qemu_beside_a_kvm_vm_and_recovers_them_after_kill_9() {
    need_kvm();
    // QEMU is part of what this test checks: without it the test fails, saying so.
    let qemu = std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output();
    assert!(
        qemu.is_ok_and(|o| o.status.success()),
        "qemu-system-x86_64 is missing (tests/setup/install-deps.sh installs it)"
    );
    let (kernel, initrd) = serve_support::linux_guest();
    let t0 = Instant::now();
    let dir = scratch("qemu");
    let s = start(&dir);
    let linux = |vpmtest: &str| {
        json!({"front": "qemu", "mode": "pv", "vpm_mib": 64, "log_mib": 1,
               "qemu": {"kernel": kernel, "initrd": initrd, "vpmtest": vpmtest,
                        "append": "vpmprog=vpmtest", "timeout_s": 300}})
    };
    // Full virtualization (no vpm.ko): ext4 -o dax on /dev/pmem0 with fsyncer, whose epochs are
    // taken only on request.
    let epochs = dir.join("full.epochs");
    let mut full = linux("none");
    full["mode"] = json!("full");
    full["vpm_mib"] = json!(32);
    full["epoch_ms"] = json!(0);
    full["epoch_witness"] = json!(epochs);
    full["qemu"]["append"] =
        json!("loglevel=1 vpmmod=0 vpmdev=/dev/pmem0 vpmfs=dax vpmtag=t vpmrun=mkfs,work");
    s.ok("PUT", "/api/v1/vms/k", Some(kv("pv", 16)));
    s.ok("PUT", "/api/v1/vms/basic", Some(linux("basic")));
    s.ok("PUT", "/api/v1/vms/writer", Some(linux("writer")));
    s.ok("PUT", "/api/v1/vms/full", Some(full));
    for id in ["k", "basic", "writer", "full"] {
        s.ok("PUT", &format!("/api/v1/vms/{id}/boot"), None);
    }
    let v = s.wait_state("basic", &["stopped", "failed"], 120);
    let console = v["result"]["console_tail"].as_str().unwrap_or("");
    assert!(
        v["result"]["exited"] == true && console.contains("VPMTEST basic OK"),
        "{v}"
    );
    let console = dir.join("pool/writer.console");
    let start_wait = Instant::now();
    while acked_in(&console) < 64 {
        assert!(
            start_wait.elapsed() < Duration::from_secs(120),
            "the Linux writer never got going"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.vm("k")["state"], "running");
    assert_eq!(s.vm("writer")["state"], "running");
    let full_console = dir.join("pool/full.console");
    calls::qemu_pause_resume_and_epochs(&s, "writer", (&console, acked_in), None);
    calls::qemu_pause_resume_and_epochs(
        &s,
        "full",
        (&full_console, calls::fsync_acks),
        Some(&epochs),
    );
    let scrape = s.ok("GET", "/metrics", None);
    promtool(scrape.as_str().unwrap());
    std::thread::sleep(Duration::from_millis(300));

    // kill -9 of the service: its QEMU goes with it, and the acknowledged records survive.
    drop(s);
    let acked = acked_in(&console);
    let gone = Instant::now();
    let ram = dir.join("pool/writer.ram").display().to_string();
    while serve_support::processes_mentioning(&ram) > 0 {
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "QEMU outlived the killed service"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let s = start(&dir);
    s.ok(
        "PUT",
        "/api/v1/vms/writer",
        Some(linux(&format!("check,{acked}"))),
    );
    s.ok("PUT", "/api/v1/vms/writer/boot", None);
    let v = s.wait_state("writer", &["stopped", "failed"], 120);
    let out = v["result"]["console_tail"].as_str().unwrap_or("");
    assert!(out.contains("VPMTEST check OK"), "acked {acked}: {v}");
    drop(s);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "serve with QEMU: {acked} acknowledged records survived; {:.1} s",
        t0.elapsed().as_secs_f64()
    );
}

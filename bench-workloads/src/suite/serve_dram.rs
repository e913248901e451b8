//! Issue 15's shared DRAM budget, measured through a real `vpm serve`: the service runs as a
//! child process on a scratch pool with `--dram-mib 8`, and four full-virt VMs are created,
//! booted, watched, stopped and read over its HTTP API (the Unix socket, with
//! `vpm_host::serve::client`, the client of `vpm ctl`). `--dram-policy shared` divides the
//! budget by heat (the service's arbiter, every 250 ms); `--dram-policy static` leaves every VM
//! the share it was created with.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpm_abi::PAGE_SIZE;
use vpm_host::serve::client;

use super::heat::UNCOUNTED;
use super::vm::Scratch;
use super::{SuiteError, PM_DIR};

/// vPM of each VM, MiB.
const VPM_MIB: u64 = 32;
/// DRAM share each VM is created with, MiB (the service's budget is four of them).
const SHARE_MIB: u64 = 2;
/// The VMs: two hot writers, then two light checksum VMs.
const VMS: [&str; 4] = ["hot0", "hot1", "light2", "light3"];
/// How often the VMs' states and shares are read while they run.
const POLL: Duration = Duration::from_millis(100);
/// The longest a round's hot VMs may take.
const ROUND_LIMIT: Duration = Duration::from_secs(1800);

/// The `vpm` executable built beside this `vpm-bench` (same target directory).
pub fn vpm_exe() -> Result<PathBuf, SuiteError> {
    let path = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vpm")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/vpm"));
    if path.exists() {
        Ok(path)
    } else {
        Err(SuiteError::VpmMissing { path })
    }
}

/// A `vpm serve` child process; killed (SIGKILL) if dropped before [`Serve::stop`].
struct Serve {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Serve {
    /// Starts `vpm serve` on a new pool in `dir` with an 8 MiB DRAM budget divided by `policy`,
    /// and waits until it answers.
    fn start(vpm: &Path, dir: &Path, policy: &str) -> Result<Serve, SuiteError> {
        let (socket, log) = (dir.join("s.sock"), dir.join("serve.log"));
        let err = std::fs::File::create(&log).map_err(SuiteError::io("create", &log))?;
        let budget = (VMS.len() as u64 * SHARE_MIB).to_string();
        let child = Command::new(vpm)
            .arg("serve")
            .arg("--socket")
            .arg(&socket)
            .arg("--pool")
            .arg(dir.join("pool"))
            .args(["--pm-mib", "256", "--dram-mib", &budget])
            .args(["--dram-policy", policy])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|source| SuiteError::Process {
                what: "start vpm serve:",
                path: vpm.to_path_buf(),
                source,
            })?;
        let mut s = Serve { child, socket, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ping = client::request(&s.socket, "GET", "/api/v1/vmm.ping", None);
            if ping.is_ok_and(|r| r.status == 200) {
                return Ok(s);
            }
            if let Ok(Some(st)) = s.child.try_wait() {
                return Err(s.fail(&format!("exited at start ({st})")));
            }
            if Instant::now() > deadline {
                return Err(s.fail("did not answer in 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `method path` with an optional JSON body; a status other than 2xx is an error. Returns
    /// the body as JSON (null when empty).
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value, SuiteError> {
        let call = format!("{method} {path}");
        let text = body.map(Value::to_string);
        let r = client::request(&self.socket, method, path, text.as_deref()).map_err(|source| {
            SuiteError::Client {
                call: call.clone(),
                source,
            }
        })?;
        if !(200..300).contains(&r.status) {
            return Err(SuiteError::Api {
                call,
                status: r.status,
                body: r.body,
            });
        }
        if r.body.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&r.body).map_err(|_| SuiteError::Api {
            call,
            status: r.status,
            body: r.body,
        })
    }

    /// `GET /api/v1/vms/{id}`.
    fn vm(&self, id: &str) -> Result<Value, SuiteError> {
        self.call("GET", &format!("/api/v1/vms/{id}"), None)
    }

    /// A [`SuiteError::Service`] saying `what`, with the tail of the service's log.
    fn fail(&self, what: &str) -> SuiteError {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = log.len().saturating_sub(2000);
        while !log.is_char_boundary(start) {
            start += 1;
        }
        SuiteError::Service(format!("{what}; its log ends: {}", &log[start..]))
    }

    /// SIGTERM, as an operator stops it; it must exit with success within 60 s.
    fn stop(mut self) -> Result<(), SuiteError> {
        // Never 0 (kill(0, ..) would signal our own process group).
        let Ok(pid @ 1..) = libc::pid_t::try_from(self.child.id()) else {
            return Err(self.fail("has no valid pid"));
        };
        // SAFETY: kill(2) on our own child's pid (it has not been waited for, so the pid is
        // still ours); no memory is involved.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(self.fail(&format!("exited with {st} on SIGTERM"))),
                _ if Instant::now() > deadline => {
                    return Err(self.fail("still running 60 s after SIGTERM"))
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The VM configuration (`PUT /api/v1/vms/{id}`) of VM `i`: skewed 64 B writers first, then
/// the checksum job (one fill, then reads and 4 rewritten pages a round, until stopped).
fn config(i: usize, writes: u64) -> Value {
    let (kind, args) = if i < 2 {
        ("skewed-writes", json!([writes, 64]))
    } else {
        ("checksum", json!([1u64 << 30, 4]))
    };
    json!({"front": "kvm", "mode": "full", "vpm_mib": VPM_MIB, "dram_mib": SHARE_MIB,
        "epoch_ms": 100, "workload": {"kind": kind, "args": args, "seed": 42}})
}

/// What the polling saw of the shares: each change of a VM's `dram_budget_pages` between
/// samples, and the distinct share vectors in order.
#[derive(Default)]
struct Shares {
    changes: u64,
    trace: Vec<Vec<u64>>,
}

impl Shares {
    fn sample(&mut self, infos: &[Value]) {
        let now: Vec<u64> = infos
            .iter()
            .map(|v| v["stats"]["dram_budget_pages"].as_u64().unwrap_or(0))
            .collect();
        if let Some(last) = self.trace.last() {
            // 0: the VM's VMM has not reported yet (just booted).
            self.changes += now
                .iter()
                .zip(last)
                .filter(|(a, b)| a != b && **a != 0 && **b != 0)
                .count() as u64;
        }
        if self.trace.last() != Some(&now) {
            self.trace.push(now);
        }
    }
}

/// One round: a fresh service and pool, the four VMs booted, the hot ones waited for, the light
/// ones shut down, every VM's counters read, the service stopped. Returns the round's row.
fn round(vpm: &Path, policy: &str, round: u64, writes: u64) -> Result<Value, SuiteError> {
    let s = Scratch::new(PM_DIR, &format!("dram-{policy}{round}"))?;
    let serve = Serve::start(vpm, &s.0, policy)?;
    for (i, id) in VMS.iter().enumerate() {
        serve.call(
            "PUT",
            &format!("/api/v1/vms/{id}"),
            Some(&config(i, writes)),
        )?;
    }
    for id in VMS {
        serve.call("PUT", &format!("/api/v1/vms/{id}/boot"), None)?;
    }
    let mut shares = Shares::default();
    let t0 = Instant::now();
    loop {
        let infos = VMS
            .iter()
            .map(|id| serve.vm(id))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(v) = infos.iter().find(|v| v["state"] == "failed") {
            return Err(serve.fail(&format!("VM {} failed: {}", v["id"], v["result"])));
        }
        shares.sample(&infos);
        if infos[..2].iter().all(|v| v["state"] == "stopped") {
            break;
        }
        if t0.elapsed() > ROUND_LIMIT {
            return Err(serve.fail("the hot VMs did not finish in 30 minutes"));
        }
        std::thread::sleep(POLL);
    }
    // Both hot VMs are done: stop the light ones (a final epoch each).
    for id in &VMS[2..] {
        serve.call("PUT", &format!("/api/v1/vms/{id}/shutdown"), None)?;
    }
    let infos = VMS
        .iter()
        .map(|id| serve.vm(id))
        .collect::<Result<Vec<_>, _>>()?;
    for v in &infos {
        let errors = v["result"]["report"]["errors"].as_u64();
        if v["state"] != "stopped" || errors != Some(0) {
            return Err(serve.fail(&format!(
                "VM {} ended {}: {}",
                v["id"], v["state"], v["result"]
            )));
        }
    }
    serve.stop()?;
    Ok(row(policy, round, &infos, &shares))
}

/// A round's row from the VMs' final `GET /api/v1/vms/{id}` (hot VMs first).
fn row(policy: &str, round: u64, infos: &[Value], shares: &Shares) -> Value {
    let st = |v: &Value, k: &str| v["stats"][k].as_u64().unwrap_or(0);
    let ops = |v: &Value| v["result"]["report"]["ops"].as_u64().unwrap_or(0);
    let secs = |v: &Value| v["result"]["elapsed_ms"].as_f64().unwrap_or(f64::NAN) / 1000.0;
    // Counted PM bytes of a tiered VM: the pool's writes for it plus its tier's copies into PM.
    let pm = |v: &Value| st(v, "pm_bytes_written") + st(v, "moved_to_pm") * PAGE_SIZE;
    let all = |f: &dyn Fn(&Value) -> u64| infos.iter().map(f).collect::<Vec<_>>();
    let sum = |f: &dyn Fn(&Value) -> u64| infos.iter().map(f).sum::<u64>();
    let hot = &infos[..2];
    let hot_ops: u64 = hot.iter().map(ops).sum();
    json!({"dram": policy, "round": round,
        "service": format!("vpm serve --dram-mib {} --dram-policy {policy}", VMS.len() as u64 * SHARE_MIB),
        "hot_ops_per_s": hot.iter().map(|v| ops(v) as f64 / secs(v)).sum::<f64>(),
        "hot_ops": hot.iter().map(ops).collect::<Vec<_>>(),
        "hot_seconds": hot.iter().map(secs).collect::<Vec<_>>(),
        "epochs": all(&|v| st(v, "epochs")),
        "pool_bytes_written": sum(&|v| st(v, "pm_bytes_written")),
        "tenant_pm_bytes_written": all(&|v| v["tenant"]["pm_bytes_written"].as_u64().unwrap_or(0)),
        "tier_to_pm_bytes": sum(&|v| st(v, "moved_to_pm") * PAGE_SIZE),
        "pm_bytes_written": sum(&pm),
        "hot_pm_bytes_per_write": hot.iter().map(pm).sum::<u64>() as f64 / hot_ops.max(1) as f64,
        "moves_to_dram": sum(&|v| st(v, "moved_to_dram")),
        "moves_to_pm": sum(&|v| st(v, "moved_to_pm")),
        "dram_pages_max": all(&|v| st(v, "dram_pages_max")),
        "dram_budget_pages_end": all(&|v| st(v, "dram_budget_pages")),
        "share_changes": shares.changes,
        "shares_trace_pages": shares.trace.iter().rev().take(8).rev().collect::<Vec<_>>(),
        "uncounted": UNCOUNTED})
}

/// Issue 15: four full-virt VMs under `vpm serve` (32 MiB vPM each, 2 MiB DRAM share each,
/// 8 MiB budget), two hot (skewed 64 B writes, 300 million each, 15 million with `quick`: a
/// 3.2 MiB hot set that does not fit a static share) and two light (the checksum job), with `--dram-policy static` and `shared`,
/// alternating for a few rounds (the machine is shared and noisy), one row each. The light VMs
/// are shut down when both hot ones finish; throughput is the hot VMs'.
pub fn shared_dram(quick: bool) -> Result<Vec<Value>, SuiteError> {
    let vpm = vpm_exe()?;
    // Pages enter DRAM after three epochs of writes, at most 32 per 100 ms epoch
    // (`tier::policy`): a hot VM needs about 3 s to fill a grown share, so the full run's hot
    // VMs run for ~10 s (the quick one's for ~1 s: a smoke run, the shares hardly matter).
    let writes = if quick { 15_000_000 } else { 300_000_000 };
    let rounds = if quick { 2 } else { 3 };
    let mut rows = Vec::new();
    for (r, policy) in (0..rounds).flat_map(|r| [(r, "static"), (r, "shared")]) {
        let t = Instant::now();
        rows.push(round(&vpm, policy, r, writes)?);
        println!(
            "         {policy} round {r}: {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_count_each_vm_change_once_and_skip_unreported_ones() {
        let info = |pages: &[u64]| -> Vec<Value> {
            pages
                .iter()
                .map(|&p| {
                    if p == 0 {
                        json!({"stats": null})
                    } else {
                        json!({"stats": {"dram_budget_pages": p}})
                    }
                })
                .collect()
        };
        let mut s = Shares::default();
        s.sample(&info(&[0, 512]));
        s.sample(&info(&[512, 512]));
        s.sample(&info(&[512, 512]));
        s.sample(&info(&[900, 128]));
        s.sample(&info(&[1000, 128]));
        assert_eq!(s.changes, 3);
        assert_eq!(s.trace.len(), 4);
    }

    #[test]
    fn a_row_sums_the_vms_and_divides_by_the_hot_ones() {
        let vm = |ops: u64, ms: f64, pm: u64| {
            json!({"result": {"elapsed_ms": ms, "report": {"ops": ops, "errors": 0}},
                   "stats": {"pm_bytes_written": pm, "moved_to_pm": 1, "epochs": 3},
                   "tenant": {"pm_bytes_written": pm}})
        };
        let infos = [
            vm(100, 1000.0, 4096),
            vm(300, 2000.0, 4096),
            vm(5, 10.0, 0),
            vm(5, 10.0, 0),
        ];
        let r = row("shared", 1, &infos, &Shares::default());
        assert_eq!(r["hot_ops_per_s"], 250.0);
        assert_eq!(r["pm_bytes_written"], 2 * 4096 + 4 * 4096);
        assert_eq!(r["hot_pm_bytes_per_write"], 4.0 * 4096.0 / 400.0);
        assert_eq!(r["epochs"], json!([3, 3, 3, 3]));
        assert!(r["service"].as_str().unwrap().contains("--dram-mib 8"));
    }
}

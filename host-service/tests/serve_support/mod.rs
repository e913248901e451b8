//! Helpers of the `vpm serve` tests: starting the service, calling its API, checking faults,
//! promtool, snapshot payloads.
#![allow(dead_code)]

pub mod calls;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpm_host::serve::client::{request, Reply};
use vpm_host::serve::snapshot::HEADER_LEN;

pub fn need_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "this test needs /dev/kvm (KVM) on this machine"
    );
}

/// A running `vpm serve` (killed with SIGKILL when dropped).
pub struct Serve {
    /// The service process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn vpm() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vpm"))
}

pub fn serve_args(dir: &Path, pool: &str) -> Vec<String> {
    vec![
        "serve".into(),
        "--socket".into(),
        dir.join("s.sock").display().to_string(),
        "--pool".into(),
        dir.join(pool).display().to_string(),
        "--pm-mib".into(),
        "64".into(),
    ]
}

/// Starts `vpm serve` on `dir/pool` and waits until it answers.
pub fn start(dir: &Path) -> Serve {
    start_with(dir, &[])
}

/// [`start`] with more options.
pub fn start_with(dir: &Path, extra: &[&str]) -> Serve {
    let child = vpm()
        .args(serve_args(dir, "pool"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start vpm serve");
    let mut s = Serve {
        child,
        socket: dir.join("s.sock"),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = request(&s.socket, "GET", "/api/v1/vmm.ping", None) {
            assert_eq!(r.status, 200, "{}", r.body);
            return s;
        }
        if let Ok(Some(st)) = s.child.try_wait() {
            panic!("vpm serve exited: {st}");
        }
        assert!(
            Instant::now() < deadline,
            "vpm serve did not answer in 60 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Serve {
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let text = body.map(|b| b.to_string());
        request(&self.socket, method, path, text.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {}", vpm_host::error_chain(&e)))
    }

    /// `method path` must succeed (2xx); returns the body as JSON (null if empty).
    pub fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, body);
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: HTTP {}: {}",
            r.status,
            r.body
        );
        if r.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&r.body).unwrap_or(Value::String(r.body))
        }
    }

    /// `method path` must fail with `status` and a JSON fault message.
    pub fn fault(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> String {
        let r = request(&self.socket, method, path, body).expect("request");
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).expect("fault JSON");
        v["fault_message"]
            .as_str()
            .unwrap_or_else(|| panic!("no fault_message in {}", r.body))
            .to_string()
    }

    pub fn vm(&self, id: &str) -> Value {
        self.ok("GET", &format!("/api/v1/vms/{id}"), None)
    }

    pub fn wait_state(&self, id: &str, states: &[&str], secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let v = self.vm(id);
            if states.contains(&v["state"].as_str().unwrap_or("")) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "VM {id} not in {states:?} after {secs} s: {v}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A scratch directory in /dev/shm (pools are memory-backed, as the other KVM tests do).
pub fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(format!("/dev/shm/vpm-serve-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn openapi() -> BTreeSet<(String, String)> {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/api/openapi.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap();
    let mut set = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            set.insert((m.to_uppercase(), path.clone()));
        }
    }
    set
}

/// The payload of a snapshot file (after its header).
pub fn payload(path: &Path) -> Vec<u8> {
    let b = std::fs::read(path).unwrap();
    b[HEADER_LEN..].to_vec()
}

pub fn promtool(scrape: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "promtool is missing ({e}): install Debian's prometheus package \
                 (tests/setup/install-deps.sh does)"
            )
        });
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {}{}\n{scrape}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn kv(mode: &str, vpm_mib: u64) -> Value {
    json!({"mode": mode, "vpm_mib": vpm_mib, "dram_mib": 2, "log_mib": 1, "epoch_ms": 20,
           "workload": {"kind": "kv", "args": [100_000_000u64]}, "seconds": 60})
}

/// Builds vpm.ko, vpmtest and the initramfs (guest-driver/build-guest.sh, cached) and returns
/// the kernel and initramfs paths.
pub fn linux_guest() -> (String, String) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(repo.join("guest-driver/build-guest.sh"))
        .env("VPM_GUEST_OUT", repo.join("target/guest-test"))
        .output()
        .expect("run guest-driver/build-guest.sh");
    assert!(
        out.status.success(),
        "building the Linux guest failed (run tests/setup/install-deps.sh and \
         guest-driver/kernel/build-kernel.sh first):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("build-guest.sh printed no {k}"))
            .to_string()
    };
    (get("KERNEL_BZIMAGE"), get("INITRAMFS"))
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(needle))
        .count()
}

/// A helper of the serve tests (witness files, console lines).
pub fn witness_max(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

/// A helper of the serve tests (witness files, console lines).
pub fn last_committed_record(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .next_back()
        .unwrap_or(0)
}

/// A helper of the serve tests (witness files, console lines).
pub fn wait_lines(path: &Path, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while std::fs::read_to_string(path).map_or(0, |t| t.lines().count()) < 2 {
        assert!(
            Instant::now() < deadline,
            "no epoch witnessed in {} after {secs} s",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A helper of the serve tests (witness files, console lines).
pub fn acked_in(console: &Path) -> u64 {
    std::fs::read_to_string(console)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ACKED ")?.trim().parse::<u64>().ok())
        .max()
        .unwrap_or(0)
}

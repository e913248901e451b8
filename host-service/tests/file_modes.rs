//! Every file, directory and socket real `vpm` commands create is private (files 0600,
//! directories 0700, sockets without group or other bits), even when the caller's umask is 000:
//! `vpm guest` with its witnesses (state directory, marker, lock, pool, capacity file, work
//! file), `vpm run` (the main job and its results), `vpm serve` (socket, pool, metrics lines, a
//! VM, a snapshot), `vpm qemu` (RAM file, doorbell socket, console log, QMP socket; when QEMU and
//! the cached guest kernel are present) and `vpm-bench pm-core --quick` (results; when built).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn vpm_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vpm"))
}

/// `exe args` run with umask 000.
fn umask0(exe: &Path) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg("umask 000 && exec \"$0\" \"$@\"")
        .arg(exe)
        .stdin(Stdio::null());
    c
}

fn output(c: &mut Command) -> Output {
    c.output().unwrap_or_else(|e| panic!("{c:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A scratch root (made by the test, not checked) under /dev/shm.
fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(format!("/dev/shm/vpm-modes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir(&d).unwrap();
    d
}

/// Every entry below `root` whose mode is not private: files must be 0600, directories 0700,
/// sockets must have no group or other bits. Returns (checked, offenders), each with its mode.
fn not_private(root: &Path) -> (Vec<String>, Vec<String>) {
    let (mut checked, mut bad) = (Vec::new(), Vec::new());
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (ft, mode) = (m.file_type(), m.mode() & 0o777);
            let ok = if ft.is_dir() {
                stack.push(p.clone());
                mode == 0o700
            } else if ft.is_socket() {
                mode & 0o077 == 0
            } else {
                mode == 0o600
            };
            let name = p.strip_prefix(root).unwrap_or(&p).display().to_string();
            checked.push(format!("{name} {mode:o}"));
            if !ok {
                bad.push(format!("{} {mode:o}", p.display()));
            }
        }
    }
    (checked, bad)
}

fn assert_private(root: &Path, at_least: usize, what: &str) {
    let (checked, bad) = not_private(root);
    assert!(
        bad.is_empty(),
        "{what} created non-private entries: {bad:?}"
    );
    assert!(
        checked.len() >= at_least,
        "{what} created {checked:?}, expected at least {at_least} entries"
    );
    println!("{what}: all private: {}", checked.join(", "));
}

fn need_kvm() {
    assert!(
        Path::new("/dev/kvm").exists(),
        "these tests need /dev/kvm (KVM) on this machine"
    );
}

#[test]
fn vpm_guest_and_the_main_job_create_only_private_files_under_umask_000() {
    need_kvm();
    let root = scratch("guest");
    let state = root.join("state/nested");
    let (w, e) = (root.join("drains"), root.join("epochs"));
    let o = output(
        umask0(&vpm_exe())
            .args([
                "guest",
                "--vm",
                "t",
                "--mode",
                "pv",
                "--vpm-mib",
                "8",
                "--dram-mib",
                "4",
                "--pool-mib",
                "48",
                "--workload",
                "seq-writes",
                "--epoch-ms",
                "5",
            ])
            .arg("--state")
            .arg(&state)
            .arg("--witness")
            .arg(&w)
            .arg("--epoch-witness")
            .arg(&e),
    );
    assert!(o.status.success(), "vpm guest: {}", text(&o));
    for f in ["pool", "pool.cap"] {
        assert!(state.join(f).exists(), "no {f}: {}", text(&o));
    }
    let o = output(
        umask0(&vpm_exe())
            .arg("pool-info")
            .arg("--state")
            .arg(&state),
    );
    assert!(o.status.success(), "vpm pool-info: {}", text(&o));
    let o = output(
        umask0(&vpm_exe())
            .arg("run")
            .arg("--state")
            .arg(root.join("main")),
    );
    assert!(o.status.success(), "vpm run: {}", text(&o));
    assert!(root.join("main/main-job.json").exists(), "{}", text(&o));
    assert_private(&root, 10, "vpm guest, pool-info and run");
    let _ = std::fs::remove_dir_all(&root);
}

/// Waits for `path` to exist (a socket a child creates).
fn wait_for(path: &Path, child: &mut Child, what: &str) {
    let t0 = Instant::now();
    while !path.exists() {
        if let Ok(Some(s)) = child.try_wait() {
            panic!("{what} exited ({s}) before creating {}", path.display());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "{what}: no {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn vpm_serve_creates_only_private_files_under_umask_000() {
    need_kvm();
    let root = scratch("serve");
    let sock = root.join("vpm.sock");
    let mut serve = umask0(&vpm_exe())
        .arg("serve")
        .arg("--socket")
        .arg(&sock)
        .arg("--pool")
        .arg(root.join("pool"))
        .args(["--pm-mib", "64", "--metrics-interval-ms", "50"])
        .arg("--metrics-ndjson")
        .arg(root.join("lines.ndjson"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&sock, &mut serve, "vpm serve");
    // The socket goes when the service stops: its mode is checked while it lives.
    let (checked, bad) = not_private(&root);
    assert!(bad.is_empty(), "vpm serve at start: {bad:?}");
    assert!(checked.contains(&"vpm.sock 600".to_string()), "{checked:?}");
    let ctl = |args: &[&str]| {
        let o = output(
            umask0(&vpm_exe())
                .arg("ctl")
                .arg("--socket")
                .arg(&sock)
                .args(args),
        );
        assert!(o.status.success(), "vpm ctl {args:?}: {}", text(&o));
    };
    let vm = r#"{"mode":"pv","vpm_mib":8,"dram_mib":2,"log_mib":1,"epoch_ms":20,
        "workload":{"kind":"kv","args":[100000000]},"seconds":60}"#;
    ctl(&["put", "/api/v1/vms/a", vm]);
    std::thread::sleep(Duration::from_millis(500));
    let snap = root.join("snaps/a.snap");
    let body = format!("{{\"path\":\"{}\"}}", snap.display());
    // The service writes the snapshot file; its directory is the test's.
    std::fs::create_dir(root.join("snaps")).unwrap();
    std::fs::set_permissions(
        root.join("snaps"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    ctl(&["put", "/api/v1/vms/a/snapshot", &body]);
    ctl(&["delete", "/api/v1/vms/a"]);
    // SAFETY: kill sends SIGTERM to the child we started; it cannot affect this process.
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let status = serve.wait().unwrap();
    assert!(snap.exists(), "no snapshot (serve exited {status})");
    assert_private(&root, 6, "vpm serve");
    let _ = std::fs::remove_dir_all(&root);
}

/// The cached guest kernel, if there is one.
fn kernel() -> Option<PathBuf> {
    if let Ok(k) = std::env::var("KERNEL_BZIMAGE") {
        return Some(PathBuf::from(k));
    }
    let cache = std::env::var("VPM_CACHE_DIR").unwrap_or_else(|_| "/var/cache/vpm".into());
    // guest-driver/kernel/build-kernel.sh builds in kernel/VERSION/linux-source-*/.
    let trees = std::fs::read_dir(Path::new(&cache).join("kernel")).ok()?;
    trees
        .filter_map(|e| std::fs::read_dir(e.ok()?.path()).ok())
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("arch/x86/boot/bzImage"))
        .find(|p| p.exists())
}

#[test]
fn vpm_qemu_creates_only_private_files_under_umask_000() {
    let qemu = Command::new("sh")
        .args(["-c", "command -v qemu-system-x86_64"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        qemu,
        "qemu-system-x86_64 is missing: run tests/setup/install-deps.sh"
    );
    let kernel = kernel().expect(
        "the guest kernel is missing: run guest-driver/kernel/build-kernel.sh (tests/run-all.sh does)",
    );
    let root = scratch("qemu");
    let initrd = std::env::temp_dir().join(format!("vpm-modes-initrd-{}", std::process::id()));
    std::fs::write(&initrd, b"").unwrap();
    // No init in the initramfs: the kernel boots, panics and QEMU stops; by then vpm qemu has
    // created everything it creates.
    let mut child = umask0(&vpm_exe())
        .arg("qemu")
        .arg("--kernel")
        .arg(&kernel)
        .arg("--initrd")
        .arg(&initrd)
        .args(["--timeout", "60", "--pool-mib", "64", "--vpm-mib", "16"])
        // Full mode: QEMU's QMP socket and the epoch witness too.
        .args(["--mode", "full", "--epoch-ms", "100", "--epoch-witness"])
        .arg(root.join("epochs"))
        .arg("--state")
        .arg(root.join("state"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // QEMU removes its QMP socket when it stops: its mode is taken while it lives.
    let qmp = root.join("state/vm0.qmp");
    let mut qmp_mode = None;
    while child.try_wait().unwrap().is_none() {
        if let Ok(m) = std::fs::symlink_metadata(&qmp) {
            qmp_mode.get_or_insert(m.mode() & 0o777);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let o = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&initrd);
    let qmp_mode = qmp_mode.unwrap_or_else(|| panic!("no QMP socket seen:\n{}", text(&o)));
    assert_eq!(qmp_mode & 0o077, 0, "QEMU's QMP socket is {qmp_mode:o}");
    println!("vpm qemu: QEMU's QMP socket was {qmp_mode:o}");
    let names: Vec<String> = std::fs::read_dir(root.join("state"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    for want in ["pool", ".sock", ".ram", ".console"] {
        assert!(
            names.iter().any(|n| n.contains(want)),
            "vpm qemu made no {want} file: {names:?}\n{}",
            text(&o)
        );
    }
    assert_private(&root, 5, "vpm qemu");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn vpm_bench_results_are_private_under_umask_000() {
    let bench = vpm_exe().with_file_name("vpm-bench");
    assert!(
        bench.exists(),
        "{} is not built: cargo build --workspace --release (tests/run-all.sh does) first",
        bench.display()
    );
    let root = scratch("bench");
    let o = output(
        umask0(&bench)
            .args(["pm-core", "--quick", "--out"])
            .arg(root.join("results/here")),
    );
    assert!(o.status.success(), "vpm-bench pm-core: {}", text(&o));
    assert_private(&root, 3, "vpm-bench pm-core");
    let _ = std::fs::remove_dir_all(&root);
}

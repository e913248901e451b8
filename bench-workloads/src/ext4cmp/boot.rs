//! Booting the guest the three ways: QEMU's own virtio-pmem-pci over a backing file on a loop
//! device's ext4 (whose sectors-written counter is the host's durable bytes; QEMU under
//! `strace -T` for its fsync times), and `vpm qemu` in full-virt and PV mode.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why a boot failed.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A program could not be started or waited for.
    #[error("run {what}")]
    Spawn {
        /// The program.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A program ended with a failure.
    #[error("{what} failed: {output}")]
    Failed {
        /// The program.
        what: String,
        /// Its stderr (and stdout tail).
        output: String,
    },
    /// QEMU did not finish in time.
    #[error("{0} did not finish within {1:?}")]
    Timeout(String, Duration),
    /// A file of the run could not be read or written.
    #[error("{what} {path}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `vpm qemu` printed no JSON summary.
    #[error("vpm qemu printed no JSON summary: {0}")]
    Summary(String),
}

/// The guest's kernel, initramfs and the kernel options every boot shares.
#[derive(Debug, Clone)]
pub struct Guest {
    /// bzImage.
    pub kernel: PathBuf,
    /// initramfs with fsyncer and vpmfs.
    pub initrd: PathBuf,
    /// Options for every boot (TCG timer check off, the guest's TSC frequency).
    pub common: String,
    /// How long one boot may take.
    pub timeout: Duration,
}

/// Runs `cmd` to completion and returns stdout; fails on a bad exit status.
fn run(cmd: &mut Command, what: &str) -> Result<String, BootError> {
    let out = cmd.output().map_err(|source| BootError::Spawn {
        what: what.into(),
        source,
    })?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let tail: String = stdout.lines().rev().take(20).collect::<Vec<_>>().join("\n");
        return Err(BootError::Failed {
            what: what.into(),
            output: format!("{}{tail}", String::from_utf8_lossy(&out.stderr)),
        });
    }
    Ok(stdout)
}

/// An ext4 filesystem on a loop device over an image file, mounted; unmounted and detached on
/// drop.
pub struct LoopFs {
    /// `/dev/loopN`.
    pub dev: String,
    /// The mount point.
    pub mnt: PathBuf,
}

impl LoopFs {
    /// Creates a sparse `size`-byte image at `img`, attaches it, makes ext4 and mounts it.
    pub fn new(img: &Path, mnt: &Path, size: u64) -> Result<LoopFs, BootError> {
        let io = |what, path: &Path| {
            let path = path.to_path_buf();
            move |source| BootError::Io { what, path, source }
        };
        vpm_host::private_file::create(img)
            .and_then(|f| f.set_len(size))
            .map_err(io("create", img))?;
        vpm_host::private_file::create_dir_all(mnt).map_err(io("create", mnt))?;
        let dev = run(
            Command::new("losetup").arg("-f").arg("--show").arg(img),
            "losetup",
        )?
        .trim()
        .to_string();
        let fs = LoopFs {
            dev,
            mnt: mnt.to_path_buf(),
        };
        run(
            Command::new("mkfs.ext4").args(["-q", "-F", &fs.dev]),
            "mkfs.ext4",
        )?;
        run(Command::new("mount").arg(&fs.dev).arg(mnt), "mount")?;
        Ok(fs)
    }

    /// Sectors written to the loop device so far (field 7 of /sys/block/loopN/stat), in bytes.
    pub fn bytes_written(&self) -> Result<u64, BootError> {
        let name = self.dev.trim_start_matches("/dev/");
        let path = PathBuf::from(format!("/sys/block/{name}/stat"));
        let text = std::fs::read_to_string(&path).map_err(|source| BootError::Io {
            what: "read",
            path: path.clone(),
            source,
        })?;
        let sectors: u64 = text
            .split_whitespace()
            .nth(6)
            .and_then(|w| w.parse().ok())
            .unwrap_or(0);
        Ok(sectors * 512)
    }

    /// Writes back everything dirty in the filesystem (so a later count starts clean).
    pub fn sync(&self) -> Result<(), BootError> {
        run(Command::new("sync").arg("-f").arg(&self.mnt), "sync -f").map(|_| ())
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
    }
}

/// Boots QEMU with a virtio-pmem-pci device over `backing` (64 MiB), no vpm.ko, running the vpmfs
/// steps `vpmrun`; QEMU runs under `strace -f -T` (fsync and fdatasync only, seccomp-filtered so
/// other system calls are not stopped) writing to `trace`. Returns the console.
pub fn virtio_pmem(
    g: &Guest,
    backing: &Path,
    console: &Path,
    trace: &Path,
    vpmrun: &str,
) -> Result<String, BootError> {
    let append = format!(
        "console=ttyS0 panic=-1 {} vpmmod=0 vpmdev=/dev/pmem0 vpmfs=dax vpmtag=b vpmrun={vpmrun}",
        g.common
    );
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "--seccomp-bpf",
        "-T",
        "-e",
        "trace=fsync,fdatasync",
        "-o",
    ])
    .arg(trace)
    .args(["qemu-system-x86_64", "-accel", "tcg", "-smp", "1"])
    .args(["-m", "512M,slots=2,maxmem=1G", "-nographic", "-no-reboot"])
    .arg("-object")
    .arg(format!(
        "memory-backend-file,id=pm0,share=on,mem-path={},size=64M",
        backing.display()
    ))
    .args(["-device", "virtio-pmem-pci,memdev=pm0,id=vp0"])
    .arg("-kernel")
    .arg(&g.kernel)
    .arg("-initrd")
    .arg(&g.initrd)
    .args(["-append", &append])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .args(["-monitor", "none"])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| BootError::Spawn {
        what: "strace qemu-system-x86_64".into(),
        source,
    })?;
    let start = Instant::now();
    loop {
        let status = child.try_wait().map_err(|source| BootError::Spawn {
            what: "wait for qemu".into(),
            source,
        })?;
        if let Some(st) = status {
            if !st.success() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    use std::io::Read;
                    let _ = e.read_to_string(&mut err);
                }
                return Err(BootError::Failed {
                    what: "qemu (virtio-pmem)".into(),
                    output: err,
                });
            }
            break;
        }
        if start.elapsed() > g.timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(BootError::Timeout("qemu (virtio-pmem)".into(), g.timeout));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(console).map_err(|source| BootError::Io {
        what: "read",
        path: console.to_path_buf(),
        source,
    })
}

/// `vpm qemu` on the state directory `state`: `mode` full (epochs every `epoch_ms`) or pv;
/// `append` is the guest's vpmfs options. Returns the console and the JSON summary.
pub fn vpm_qemu(
    vpm: &Path,
    g: &Guest,
    state: &Path,
    full_epoch_ms: Option<u64>,
    append: &str,
    fresh: bool,
) -> Result<(String, Value), BootError> {
    let mut cmd = Command::new(vpm);
    cmd.arg("qemu")
        .arg("--state")
        .arg(state)
        .args(["--pool-mib", "160", "--vm", "linux", "--vpm-mib", "64"])
        .arg("--kernel")
        .arg(&g.kernel)
        .arg("--initrd")
        .arg(&g.initrd)
        .args(["--timeout", &g.timeout.as_secs().to_string()])
        .args(["--append", &format!("{} {append}", g.common)]);
    if let Some(ms) = full_epoch_ms {
        cmd.args(["--mode", "full", "--epoch-ms", &ms.to_string()]);
    }
    if fresh {
        cmd.arg("--fresh");
    }
    let out = run(&mut cmd, "vpm qemu")?;
    let last = out.lines().last().unwrap_or_default();
    let summary: Value =
        serde_json::from_str(last).map_err(|_| BootError::Summary(last.to_string()))?;
    if summary["exited"] != Value::Bool(true) {
        return Err(BootError::Timeout("vpm qemu".into(), g.timeout));
    }
    Ok((out, summary))
}

//! Starting QEMU for a guest: the shared guest RAM file and the command line (RAM file backend,
//! kernel and initramfs, the doorbell on isa-debugcon over a Unix socket, the console to a file,
//! and the QMP socket through which the guest is stopped and resumed).

use std::path::Path;
use std::process::{Child, Command, Stdio};

use vpm_abi::{DOORBELL_PORT, PROBE_REPLY};

use super::QemuSpec;
use crate::vmm::mapping::FileMapping;
use crate::vmm::VmmError;

/// The sockets and files of one QEMU run.
pub(super) struct Paths<'a> {
    /// The guest RAM file.
    pub ram: &'a Path,
    /// The doorbell socket (we listen, QEMU connects).
    pub doorbell: &'a Path,
    /// The console log.
    pub console: &'a Path,
    /// The QMP socket (QEMU listens): pause/resume and epochs.
    pub qmp: &'a Path,
}

/// Creates (0600, truncated) the guest RAM file of `len` bytes and maps it.
pub(super) fn map_ram(path: &Path, len: u64) -> Result<FileMapping, VmmError> {
    let file_error = |source| VmmError::QemuRamFile {
        path: path.to_path_buf(),
        source,
    };
    let f = crate::private_file::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(file_error)?;
    f.set_len(len).map_err(file_error)?;
    FileMapping::shared(&f, len as usize, false).map_err(|e| match e {
        crate::vmm::mapping::MappingError::Mmap { source, .. } => file_error(source),
    })
}

/// Starts QEMU on `paths` for a vPM of `vpm_size` bytes.
pub(super) fn start_qemu(
    spec: &QemuSpec,
    paths: &Paths<'_>,
    vpm_size: u64,
) -> Result<Child, VmmError> {
    // no_timer_check: under TCG on a busy host the kernel's IO-APIC timer check can fail and
    // panic the boot ("IO-APIC + timer doesn't work"); the check proves nothing about vPM.
    let append = format!(
        "console=ttyS0 panic=-1 no_timer_check memmap={}M!{}M {}",
        vpm_size >> 20,
        spec.vpm_offset_mib,
        spec.append
    );
    let ram_obj = format!(
        "memory-backend-file,id=ram0,size={}M,mem-path={},share=on",
        spec.ram_mib,
        paths.ram.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    // The console log and the QMP socket QEMU creates are private too.
    crate::private_file::private_children(&mut cmd);
    cmd.args([
        "-qmp",
        &format!("unix:{},server=on,wait=off", paths.qmp.display()),
    ]);
    // One vCPU per socket: the guest kernel has no ACPI and finds its CPUs in SeaBIOS's MP
    // table, which lists only the first logical CPU of each package (with QEMU's default of
    // cores in one socket, `-smp 2` boots with one CPU).
    let smp = format!("{n},sockets={n},cores=1,threads=1", n = spec.vcpus);
    cmd.args([
        "-accel",
        "tcg",
        "-smp",
        &smp,
        "-m",
        &format!("{}M", spec.ram_mib),
        "-nographic",
        "-no-reboot",
    ])
    .args(["-machine", "memory-backend=ram0", "-object", &ram_obj])
    .arg("-kernel")
    .arg(&spec.kernel)
    .arg("-initrd")
    .arg(&spec.initrd)
    .args(["-append", &append])
    .args([
        "-chardev",
        &format!("socket,id=vpmdb,path={}", paths.doorbell.display()),
    ])
    .args([
        "-device",
        &format!("isa-debugcon,iobase={DOORBELL_PORT:#x},chardev=vpmdb,readback={PROBE_REPLY:#x}"),
    ])
    .args([
        "-serial",
        &format!("file:{}", paths.console.display()),
        "-monitor",
        "none",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::inherit());
    // QEMU dies with the thread that started it (this one waits for it): a host service killed
    // with SIGKILL leaves no guest running on behind it.
    // SAFETY: the closure runs in the child between fork and exec and calls only prctl, which is
    // async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(VmmError::StartQemu)
}

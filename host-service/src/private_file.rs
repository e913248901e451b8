//! Everything VPM creates on disk is private to its user from the moment it exists: files
//! (pools, capacity files, work files, guest RAM files, witnesses, results) mode 0600,
//! directories 0700, sockets 0600. Modes are passed to `open(2)`/`mkdir(2)` (`O_CREAT` mode), so
//! there is no window between creation and a later chmod; for what takes no mode (a socket's
//! `bind(2)`, files a child such as QEMU creates) a restrictive umask is in force while it is
//! created. The `vpm` and `vpm-bench` commands also start with [`restrict_umask`], so a file some
//! path creates without this module is private too. tests/file_modes.rs checks the modes of
//! every file real commands create under umask 000.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Mode of every file VPM creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory VPM creates.
pub const DIR_MODE: u32 = 0o700;
/// The umask in force for children and for whole commands: files asked for with mode 0666 come
/// out [`FILE_MODE`], directories [`DIR_MODE`] ([`bind_unix`] uses 0177 for its 0600 socket).
pub const UMASK: libc::mode_t = 0o077;

/// Serializes this module's temporary umask changes (the umask is process-wide).
static UMASK_LOCK: Mutex<()> = Mutex::new(());

/// `OpenOptions` that create a missing file with mode [`FILE_MODE`]; the caller sets access,
/// create and truncate as it needs.
pub fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.mode(FILE_MODE);
    o
}

/// Creates or truncates `path` (mode [`FILE_MODE`] if new) and writes `contents`.
pub fn write(path: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> io::Result<()> {
    create(path)?.write_all(contents.as_ref())
}

/// Creates or truncates `path` for writing (mode [`FILE_MODE`] if new).
pub fn create(path: impl AsRef<Path>) -> io::Result<File> {
    options().write(true).create(true).truncate(true).open(path)
}

/// Creates `path` and any missing parents with mode [`DIR_MODE`] (existing ones are kept).
/// Holds the umask lock: [`bind_unix`]'s temporary 0177 would leave a directory made meanwhile
/// without its search bit.
pub fn create_dir_all(path: impl AsRef<Path>) -> io::Result<()> {
    let _g = UMASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(path)
}

/// Binds a Unix stream socket at `path`, created with mode 0600: `bind(2)` takes no mode, so a
/// umask of 0177 is in force around it.
pub fn bind_unix(path: impl AsRef<Path>) -> io::Result<UnixListener> {
    let _g = UMASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail. Files other
    // threads create meanwhile get a stricter mask, never a looser one.
    let old = unsafe { libc::umask(0o177) };
    let l = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    l
}

/// Makes the files `cmd`'s child creates private (its umask becomes [`UMASK`]): QEMU's console
/// log and QMP socket, for example.
pub fn private_children(cmd: &mut Command) -> &mut Command {
    // SAFETY: the closure runs in the child between fork and exec and calls only umask, which is
    // async-signal-safe and cannot fail.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(UMASK);
            Ok(())
        })
    }
}

/// Sets the process umask to [`UMASK`] (at the start of a command, before any thread exists).
pub fn restrict_umask() {
    let _g = UMASK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(UMASK) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn files_dirs_and_sockets_are_created_private_under_umask_0() {
        let t = tempfile::tempdir().unwrap();
        let _g = UMASK_LOCK.lock().unwrap();
        // SAFETY: swaps the file-creation mask; restored below.
        let old = unsafe { libc::umask(0) };
        drop(_g);
        let d = t.path().join("a/b");
        create_dir_all(&d).unwrap();
        write(d.join("f"), b"x").unwrap();
        let s = bind_unix(d.join("s")).unwrap();
        let mut sh = Command::new("sh");
        sh.arg("-c").arg(format!("echo > {}/child", d.display()));
        assert!(private_children(&mut sh).status().unwrap().success());
        let _g = UMASK_LOCK.lock().unwrap();
        // SAFETY: restores the mask.
        unsafe { libc::umask(old) };
        drop(s);
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join("f")), 0o600);
        assert_eq!(mode(&d.join("s")), 0o600);
        assert_eq!(mode(&d.join("child")), 0o600);
    }
}

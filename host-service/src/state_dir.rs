//! State directories: where `vpm` keeps a pool, its capacity file and the VMs' working files.
//!
//! A directory VPM creates (mode 0700) holds a marker file, [`MARKER`] (mode 0600). While a
//! `vpm` process uses the directory it holds an exclusive `flock` on it, so a second process gets
//! a clear error instead of sharing the files. Resetting a state directory removes only the files
//! VPM itself makes there (see [`is_vpm_file`]), and only in a marked directory: a non-empty
//! directory without the marker (a home directory given by mistake) is refused and nothing in it
//! is touched.
//!
//! A directory without the marker whose entries are all VPM files and which holds a pool (made by
//! an older `vpm` or by `vpm-bench`) is adopted: the marker is added.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Name of the marker file that makes a directory a VPM state directory.
pub const MARKER: &str = ".vpm-state";

/// File names VPM creates in a state directory (besides the per-VM suffixes of
/// [`VPM_SUFFIXES`]).
const VPM_NAMES: [&str; 6] = [
    "pool",
    "pool.new",
    "pool.cap",
    "main-job.json",
    "witness",
    "epochs",
];

/// Suffixes of per-VM files: tiered working copies, QEMU guest RAM, its socket and console log.
const VPM_SUFFIXES: [&str; 4] = [".work", ".ram", ".sock", ".console"];

/// Whether `name` is a file VPM makes in a state directory (and a reset may remove).
pub fn is_vpm_file(name: &str) -> bool {
    VPM_NAMES.contains(&name)
        || VPM_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
}

/// Errors of state directories.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    /// The directory could not be created.
    #[error("create the state directory {path}")]
    Create {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The path exists but is not a directory.
    #[error("{path} is not a directory")]
    NotADirectory {
        /// The path.
        path: String,
    },
    /// The directory does not exist (and was not to be created).
    #[error("state directory {path} does not exist")]
    Missing {
        /// The directory.
        path: String,
    },
    /// The directory could not be listed.
    #[error("list the state directory {path}")]
    List {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A non-empty directory without the marker: not VPM's, left alone.
    #[error(
        "{path} is not a VPM state directory: it is not empty and has no {MARKER} marker \
         (nothing was changed or deleted; give a new or empty directory)"
    )]
    NotVpm {
        /// The directory.
        path: String,
    },
    /// The marker file could not be created.
    #[error("create the marker {path}")]
    Marker {
        /// The marker file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The directory could not be opened for locking.
    #[error("open the state directory {path} to lock it")]
    Open {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Another process holds the directory's lock.
    #[error("state directory {path} is in use by another vpm process")]
    Busy {
        /// The directory.
        path: String,
        /// The lock error.
        #[source]
        source: io::Error,
    },
    /// A VPM file could not be removed while resetting.
    #[error("remove {path} while resetting the state directory")]
    Remove {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A locked VPM state directory; the lock is released on drop.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// The directory itself, opened to hold the `flock`.
    _lock: File,
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

/// Names of the entries of `dir`.
fn entries(dir: &Path) -> Result<Vec<String>, StateDirError> {
    let list = |source| StateDirError::List {
        path: shown(dir),
        source,
    };
    let mut names = Vec::new();
    for e in std::fs::read_dir(dir).map_err(list)? {
        names.push(e.map_err(list)?.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

impl StateDir {
    /// Opens the state directory `path` for use, creating it (mode 0700, with its marker) if it
    /// does not exist. An existing empty directory, or one holding only VPM files and a pool, is
    /// marked; a non-empty directory without the marker is refused. Takes the directory's lock.
    pub fn open(path: &Path) -> Result<StateDir, StateDirError> {
        match std::fs::metadata(path) {
            Ok(m) if !m.is_dir() => return Err(StateDirError::NotADirectory { path: shown(path) }),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                crate::private_file::create_dir_all(path).map_err(|source| {
                    StateDirError::Create {
                        path: shown(path),
                        source,
                    }
                })?
            }
            Err(source) => {
                return Err(StateDirError::Create {
                    path: shown(path),
                    source,
                })
            }
        }
        let dir = Self::lock(path)?;
        dir.ensure_marker()?;
        Ok(dir)
    }

    /// Opens an existing state directory without creating or marking anything: a missing
    /// directory is an error. Takes the directory's lock.
    pub fn open_existing(path: &Path) -> Result<StateDir, StateDirError> {
        match std::fs::metadata(path) {
            Ok(m) if m.is_dir() => Self::lock(path),
            Ok(_) => Err(StateDirError::NotADirectory { path: shown(path) }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(StateDirError::Missing { path: shown(path) })
            }
            Err(source) => Err(StateDirError::Open {
                path: shown(path),
                source,
            }),
        }
    }

    fn lock(path: &Path) -> Result<StateDir, StateDirError> {
        let file = File::open(path).map_err(|source| StateDirError::Open {
            path: shown(path),
            source,
        })?;
        // SAFETY: flock on a descriptor we own and keep open for the lock's lifetime.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            return Err(StateDirError::Busy {
                path: shown(path),
                source: io::Error::last_os_error(),
            });
        }
        Ok(StateDir {
            path: path.to_owned(),
            _lock: file,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the directory carries the marker.
    pub fn is_marked(&self) -> bool {
        self.path.join(MARKER).is_file()
    }

    /// Adds the marker to an empty directory or one VPM evidently made; refuses any other
    /// directory without it.
    fn ensure_marker(&self) -> Result<(), StateDirError> {
        if self.is_marked() {
            return Ok(());
        }
        let names = entries(&self.path)?;
        let vpm_made = names.iter().any(|n| n == "pool") && names.iter().all(|n| is_vpm_file(n));
        if !names.is_empty() && !vpm_made {
            return Err(StateDirError::NotVpm {
                path: shown(&self.path),
            });
        }
        let marker = self.path.join(MARKER);
        crate::private_file::options()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&marker)
            .map(drop)
            .map_err(|source| StateDirError::Marker {
                path: shown(&marker),
                source,
            })
    }

    /// Removes VPM's own files (pool, capacity file, working files, witnesses, results) from the
    /// marked directory; anything else in it stays. Refuses an unmarked directory.
    pub fn reset(&self) -> Result<(), StateDirError> {
        if !self.is_marked() {
            return Err(StateDirError::NotVpm {
                path: shown(&self.path),
            });
        }
        for name in entries(&self.path)? {
            if !is_vpm_file(&name) {
                continue;
            }
            let file = self.path.join(&name);
            // Only plain files and sockets: VPM makes no directories here.
            let is_dir = std::fs::symlink_metadata(&file)
                .map(|m| m.is_dir())
                .unwrap_or(false);
            if is_dir {
                continue;
            }
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateDirError::Remove {
                        path: shown(&file),
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Resets the directory, then removes the marker and the directory itself if nothing else
    /// is left in it.
    pub fn remove(self) -> Result<(), StateDirError> {
        self.reset()?;
        if entries(&self.path)?.iter().all(|n| n == MARKER) {
            let marker = self.path.join(MARKER);
            std::fs::remove_file(&marker).map_err(|source| StateDirError::Remove {
                path: shown(&marker),
                source,
            })?;
            // Another process may have put something here meanwhile: then the directory stays.
            let _ = std::fs::remove_dir(&self.path);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_directory_is_private_and_marked() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        let s = StateDir::open(&d).unwrap();
        assert!(s.is_marked());
        assert_eq!(mode(&d), 0o700);
        assert_eq!(mode(&d.join(MARKER)), 0o600);
    }

    #[test]
    fn a_foreign_directory_is_refused_and_untouched() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("notes.txt"), b"mine").unwrap();
        std::fs::write(t.path().join("pool"), b"not a pool").unwrap();
        let e = StateDir::open(t.path()).unwrap_err();
        assert!(matches!(e, StateDirError::NotVpm { .. }), "{e}");
        assert!(t.path().join("notes.txt").exists());
        assert!(t.path().join("pool").exists());
        assert!(!t.path().join(MARKER).exists());
    }

    #[test]
    fn reset_removes_only_vpm_files() {
        let t = tempfile::tempdir().unwrap();
        let s = StateDir::open(t.path()).unwrap();
        for n in ["pool", "pool.cap", "vm0.work", "linux.console", "keep.txt"] {
            std::fs::write(t.path().join(n), b"x").unwrap();
        }
        s.reset().unwrap();
        let mut left = entries(t.path()).unwrap();
        left.sort();
        assert_eq!(left, [MARKER, "keep.txt"]);
        s.remove().unwrap();
        assert!(t.path().join("keep.txt").exists(), "a foreign file stays");
    }

    #[test]
    fn remove_deletes_an_emptied_directory() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("s");
        let s = StateDir::open(&d).unwrap();
        std::fs::write(d.join("pool"), b"x").unwrap();
        s.remove().unwrap();
        assert!(!d.exists());
    }

    #[test]
    fn a_directory_of_vpm_files_is_adopted() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("pool"), b"x").unwrap();
        std::fs::write(t.path().join("pool.cap"), b"x").unwrap();
        let s = StateDir::open(t.path()).unwrap();
        assert!(s.is_marked());
    }

    #[test]
    fn a_second_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let _s = StateDir::open(t.path()).unwrap();
        let e = StateDir::open(t.path()).unwrap_err();
        assert!(e.to_string().contains("another vpm process"), "{e}");
    }

    #[test]
    fn open_existing_creates_nothing() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("none");
        assert!(matches!(
            StateDir::open_existing(&d),
            Err(StateDirError::Missing { .. })
        ));
        assert!(!d.exists());
    }

    #[test]
    fn names() {
        assert!(is_vpm_file("vm0.work") && is_vpm_file("pool.cap"));
        assert!(!is_vpm_file(".work") && !is_vpm_file(".bashrc") && !is_vpm_file("Documents"));
    }
}

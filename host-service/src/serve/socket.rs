//! The service's Unix socket: a stale socket file (no listener) is replaced, a live one is
//! refused, anything else at the path is left alone; the socket is made mode 0600.

use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process listens on the socket.
    #[error("{0} is in use: another service listens on it")]
    Live(PathBuf),
    /// Something that is not a socket is at the path.
    #[error("{0} exists and is not a socket (left alone)")]
    NotASocket(PathBuf),
    /// The socket could not be made.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The socket path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Binds a listening socket at `path` (mode 0600), replacing a stale socket file.
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, SocketError> {
    let io = |what| {
        let path = path.to_path_buf();
        move |source| SocketError::Io { what, path, source }
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => return Err(SocketError::Live(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                std::fs::remove_file(path).map_err(io("remove the stale socket"))?;
            }
            Err(e) => return Err(io("probe the existing socket")(e)),
        },
        Ok(_) => return Err(SocketError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("look at")(e)),
    }
    // The socket is created without group or other permissions (no moment where it is open to
    // others), then its mode is set explicitly. The umask is process-wide: this runs before the
    // service starts any thread that creates files.
    // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(0o177) };
    let l = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let l = l.map_err(io("bind"))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(io("set the mode of"))?;
    l.set_nonblocking(true).map_err(io("make non-blocking"))?;
    Ok(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn stale_sockets_are_replaced_live_ones_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.sock");
        let live = bind(&p).unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert!(matches!(bind(&p), Err(SocketError::Live(_))));
        drop(live);
        // The file stays behind with nobody listening: stale.
        assert!(p.exists());
        let again = bind(&p).unwrap();
        drop(again);
        let f = dir.path().join("file");
        std::fs::write(&f, b"x").unwrap();
        assert!(matches!(bind(&f), Err(SocketError::NotASocket(_))));
        assert_eq!(std::fs::read(&f).unwrap(), b"x");
    }
}

//! `vpm-bench libpmem`: native-mode `pmem_memcpy_persist` throughput of pv-libpmem against
//! Debian's libpmem, both loaded into this process (separate link-map namespaces) and measured
//! alternately on the same mapped file.

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use vpm_host::vmm::mapping::{FileMapping, MappingError};

use crate::stats::{platform_note, timed};

type MemcpyPersist = unsafe extern "C" fn(*mut c_void, *const c_void, usize) -> *mut c_void;

const DEBIAN: &str = "/usr/lib/x86_64-linux-gnu/libpmem.so.1";

/// Why the libpmem comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum LibpmemError {
    /// A library path holds a NUL byte, so the dynamic loader cannot be given it.
    #[error("library path {0:?} holds a NUL byte")]
    NulInPath(String, #[source] std::ffi::NulError),
    /// The dynamic loader refused the library (its own message is text only).
    #[error("dlmopen {path} failed (is it installed?): {reason}")]
    Dlopen {
        /// The library.
        path: String,
        /// dlerror()'s text.
        reason: String,
    },
    /// The library has no `pmem_memcpy_persist`.
    #[error("{path} has no pmem_memcpy_persist: {reason}")]
    NoSymbol {
        /// The library.
        path: String,
        /// dlerror()'s text.
        reason: String,
    },
    /// pv-libpmem's build script could not be started.
    #[error("run {}", script.display())]
    BuildStart {
        /// The script.
        script: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// pv-libpmem's build script failed.
    #[error("build-so.sh: {stderr}")]
    BuildFailed {
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A file operation failed.
    #[error("{what} {}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The destination file could not be mapped.
    #[error("map {}", path.display())]
    Map {
        /// The file.
        path: PathBuf,
        /// The mapping error.
        #[source]
        source: MappingError,
    },
    /// The results could not be turned into JSON.
    #[error("encode the results as JSON")]
    Json(#[source] serde_json::Error),
}

impl LibpmemError {
    /// A mapper of an I/O error on `path` while doing `what`.
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| LibpmemError::Io { what, path, source }
    }
}

/// The dynamic loader's last error message, or a placeholder when it has none.
fn dl_error() -> String {
    // SAFETY: dlerror has no preconditions; it returns NULL or a NUL-terminated string that stays
    // valid until the next dl* call on this thread, and it is copied out before any.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        return "no reason given".into();
    }
    // SAFETY: `e` is non-null and NUL-terminated (see above).
    unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
}

fn load(path: &str) -> Result<MemcpyPersist, LibpmemError> {
    let p = CString::new(path).map_err(|e| LibpmemError::NulInPath(path.into(), e))?;
    // SAFETY: loading a shared library by path into a new namespace; its constructors run.
    let h = unsafe {
        libc::dlmopen(
            libc::LM_ID_NEWLM,
            p.as_ptr(),
            libc::RTLD_NOW | libc::RTLD_LOCAL,
        )
    };
    if h.is_null() {
        return Err(LibpmemError::Dlopen {
            path: path.into(),
            reason: dl_error(),
        });
    }
    let name = CString::new("pmem_memcpy_persist").expect("name");
    // SAFETY: looking up a symbol in the handle just opened.
    let f = unsafe { libc::dlsym(h, name.as_ptr()) };
    if f.is_null() {
        return Err(LibpmemError::NoSymbol {
            path: path.into(),
            reason: dl_error(),
        });
    }
    // SAFETY: the symbol is libpmem's pmem_memcpy_persist, whose C signature this type matches.
    Ok(unsafe { std::mem::transmute::<*mut c_void, MemcpyPersist>(f) })
}

fn ours(repo: &Path) -> Result<String, LibpmemError> {
    let script = repo.join("pv-libpmem/build-so.sh");
    let out = Command::new("bash")
        .arg(&script)
        .output()
        .map_err(|source| LibpmemError::BuildStart { script, source })?;
    if !out.status.success() {
        return Err(LibpmemError::BuildFailed {
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(format!("{dir}/lib/libpmem.so.1"))
}

/// MiB/s of copying `total` bytes in `size`-byte persists into `dst` (cycling through it).
fn throughput(f: MemcpyPersist, dst: &mut [u8], src: &[u8], size: usize, total: usize) -> f64 {
    let span = dst.len() - size;
    let ((), secs) = timed(|| {
        let mut off = 0;
        for _ in 0..total / size {
            // SAFETY: dst[off..off + size] and src[..size] are valid, disjoint buffers.
            unsafe {
                f(
                    dst.as_mut_ptr().add(off) as *mut c_void,
                    src.as_ptr() as *const c_void,
                    size,
                )
            };
            off = (off + size) % span;
        }
    });
    total as f64 / 1048576.0 / secs
}

/// Runs the comparison.
pub fn run(out: &Path, quick: bool) -> Result<(), LibpmemError> {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ours_path = ours(&repo)?;
    let pv = load(&ours_path)?;
    let debian = load(DEBIAN)?;
    println!("vpm-bench libpmem — measured on: {}", platform_note());
    println!(
        "pmem_memcpy_persist into a 64 MiB mapping on /dev/shm, native mode, alternating runs"
    );
    let path = Path::new("/dev/shm/vpm-bench-libpmem");
    let file = vpm_host::private_file::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(LibpmemError::io("create", path))?;
    file.set_len(64 << 20)
        .map_err(LibpmemError::io("set the length of", path))?;
    let mut map =
        FileMapping::shared(&file, 64 << 20, true).map_err(|source| LibpmemError::Map {
            path: path.to_path_buf(),
            source,
        })?;
    let dst = map.as_mut_slice();
    let src: Vec<u8> = (0..(1 << 20)).map(|i| (i * 31) as u8).collect();
    let total = if quick { 256 << 20 } else { 1 << 30 };
    let mut rows = Vec::new();
    for size in [256usize, 4096, 1 << 20] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for _ in 0..5 {
            a.push(throughput(pv, dst, &src, size, total / 5));
            b.push(throughput(debian, dst, &src, size, total / 5));
        }
        a.sort_by(f64::total_cmp);
        b.sort_by(f64::total_cmp);
        let (ma, mb) = (a[2], b[2]);
        println!("  {size:>8} B: pv-libpmem {ma:>8.0} MiB/s, Debian libpmem {mb:>8.0} MiB/s, ratio {:.2} (goal >= 0.90)", ma / mb);
        rows.push(
            json!({"bytes": size, "pv_libpmem_mib_s": ma, "debian_mib_s": mb, "ratio": ma / mb}),
        );
    }
    drop(map);
    let _ = std::fs::remove_file(path);
    vpm_host::private_file::create_dir_all(out)
        .map_err(LibpmemError::io("create the directory", out))?;
    let doc = json!({"platform": platform_note(), "memcpy_persist": rows});
    let json_path = out.join("libpmem.json");
    let text = serde_json::to_string_pretty(&doc).map_err(LibpmemError::Json)?;
    vpm_host::private_file::write(&json_path, text)
        .map_err(LibpmemError::io("write", &json_path))?;
    println!("wrote {}", json_path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_missing_library_says_which_and_why() {
        let e = load("/nonexistent/vpm-bench/libpmem.so.1").unwrap_err();
        match &e {
            LibpmemError::Dlopen { path, reason } => {
                assert_eq!(path, "/nonexistent/vpm-bench/libpmem.so.1");
                assert!(!reason.is_empty());
            }
            other => panic!("{other:?}"),
        }
        assert!(e
            .to_string()
            .starts_with("dlmopen /nonexistent/vpm-bench/libpmem.so.1 failed"));
    }

    #[test]
    fn a_path_with_a_nul_keeps_its_source() {
        let e = load("lib\0pmem").unwrap_err();
        assert!(matches!(e, LibpmemError::NulInPath(..)));
        assert!(e.source().is_some());
    }
}

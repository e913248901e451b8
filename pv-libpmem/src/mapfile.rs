//! `pmem_map_file` and `pmem_unmap`, with PMDK 1.12's checks in PMDK's order, errno and messages.

use std::ffi::CString;

use crate::err;
use crate::ranges::{self, Kind};
use crate::vpmdev;

const MAP_SHARED_VALIDATE: i32 = 0x03;
const MAP_SYNC: i32 = 0x80000;
const PAGE: usize = vpm_abi::PAGE_SIZE as usize;

/// `PMEM_FILE_*` flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MapFlags(pub i32);

impl MapFlags {
    /// Create the file.
    pub const CREATE: i32 = 1 << 0;
    /// With CREATE: fail if it exists.
    pub const EXCL: i32 = 1 << 1;
    /// Do not allocate blocks.
    pub const SPARSE: i32 = 1 << 2;
    /// `path` is a directory: map an unnamed temporary file in it.
    pub const TMPFILE: i32 = 1 << 3;

    fn has(self, f: i32) -> bool {
        self.0 & f != 0
    }
}

/// A successful mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapped {
    /// Start.
    pub addr: *mut u8,
    /// Length.
    pub len: usize,
    /// `pmem_is_pmem(addr, len)`.
    pub is_pmem: bool,
}

enum Target {
    Missing,
    Normal,
    DevDax(usize),
    Vpm,
}

fn fail<T>(msg: &str, errno: i32) -> Result<T, i32> {
    err::set(msg, errno);
    Err(errno)
}

fn classify(path: &CString) -> Result<Target, i32> {
    // SAFETY: path is a valid C string.
    if unsafe { libc::access(path.as_ptr(), libc::F_OK) } != 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL);
        if e == libc::ENOENT {
            return Ok(Target::Missing);
        }
        return fail(
            &format!("access {}: {}", path.to_string_lossy(), err::strerror(e)),
            e,
        );
    }
    // SAFETY: zeroed stat is a valid buffer for stat(2) to fill.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and buffer.
    if unsafe { libc::stat(path.as_ptr(), &mut st) } != 0 {
        err::set_os(&format!("stat {}", path.to_string_lossy()));
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG | libc::S_IFDIR => Ok(Target::Normal),
        libc::S_IFCHR if vpmdev::is_vpm_device(st.st_rdev) => Ok(Target::Vpm),
        libc::S_IFCHR => match devdax_size(st.st_rdev) {
            Some(size) => Ok(Target::DevDax(size)),
            None => fail(
                "unsupported file type (not a regular file, directory or Device DAX)",
                libc::EINVAL,
            ),
        },
        _ => fail("unsupported file type", libc::EINVAL),
    }
}

fn devdax_size(rdev: libc::dev_t) -> Option<usize> {
    let base = format!("/sys/dev/char/{}:{}", libc::major(rdev), libc::minor(rdev));
    let sub = std::fs::canonicalize(format!("{base}/subsystem")).ok()?;
    if sub.file_name()? != "dax" {
        return None;
    }
    std::fs::read_to_string(format!("{base}/size"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// `pmem_map_file`.
pub fn map_file(
    path: &CString,
    len: usize,
    flags: MapFlags,
    mode: libc::mode_t,
) -> Result<Mapped, i32> {
    let target = classify(path)?;
    if flags.0 & !0xf != 0 {
        return fail("invalid flag specified", libc::EINVAL);
    }
    let mut len = len;
    let mut flags = flags;
    let device_size = match target {
        Target::DevDax(size) => Some(size),
        Target::Vpm => Some(size_of_vpm(path).ok_or_else(|| {
            err::set(
                "cannot read the size of /dev/vpm (is the vpm driver loaded?)",
                libc::ENODEV,
            );
            libc::ENODEV
        })?),
        _ => None,
    };
    if let Some(size) = device_size {
        if flags.has(MapFlags::EXCL) || flags.has(MapFlags::TMPFILE) {
            return fail("flag unsupported for Device DAX", libc::EINVAL);
        }
        if len != 0 && len != size {
            return fail(
                &format!("size of the device ({size}) differs from requested ({len})"),
                libc::EINVAL,
            );
        }
        // The whole device is mapped; CREATE and SPARSE are accepted and ignored.
        len = 0;
        flags = MapFlags(0);
    }
    let create = flags.has(MapFlags::CREATE);
    if create && (len as i64) < 0 {
        return fail("invalid file length", libc::EINVAL);
    }
    if len != 0 && !create {
        return fail(
            "non-zero 'len' not allowed without PMEM_FILE_CREATE",
            libc::EINVAL,
        );
    }
    if len == 0 && create {
        return fail("zero 'len' not allowed with PMEM_FILE_CREATE", libc::EINVAL);
    }
    if flags.has(MapFlags::TMPFILE) && !create {
        return fail(
            "PMEM_FILE_TMPFILE not allowed without PMEM_FILE_CREATE",
            libc::EINVAL,
        );
    }
    let (fd, created) = open(path, flags, mode, matches!(target, Target::Missing))?;
    let result = size_and_map(fd, path, len, flags, created, &target);
    if !(matches!(target, Target::Vpm) && result.is_ok() && vpmdev::adopt(fd)) {
        // SAFETY: closing the descriptor we opened (a /dev/vpm one is kept for ioctls).
        unsafe { libc::close(fd) };
    }
    result
}

fn size_of_vpm(path: &CString) -> Option<usize> {
    // SAFETY: valid path; the descriptor is closed below.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    let size = vpmdev::info(fd).ok().map(|i| i.vpm_size as usize);
    // SAFETY: our descriptor.
    unsafe { libc::close(fd) };
    size
}

fn open(
    path: &CString,
    flags: MapFlags,
    mode: libc::mode_t,
    missing: bool,
) -> Result<(i32, bool), i32> {
    if flags.has(MapFlags::TMPFILE) {
        let excl = if flags.has(MapFlags::EXCL) {
            libc::O_EXCL
        } else {
            0
        };
        // SAFETY: valid path; O_TMPFILE needs a mode, 0600.
        let fd = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_TMPFILE | libc::O_RDWR | excl | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            err::set_os(&format!("open {}", path.to_string_lossy()));
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL));
        }
        return Ok((fd, false));
    }
    let mut oflags = libc::O_RDWR | libc::O_CLOEXEC;
    if flags.has(MapFlags::CREATE) {
        oflags |= libc::O_CREAT;
    }
    if flags.has(MapFlags::EXCL) {
        oflags |= libc::O_EXCL;
    }
    // SAFETY: valid path; mode is passed as the variadic argument open(2) expects.
    let fd = unsafe { libc::open(path.as_ptr(), oflags, mode as libc::c_uint) };
    if fd < 0 {
        err::set_os(&format!("open {}", path.to_string_lossy()));
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok((
        fd,
        missing && flags.has(MapFlags::CREATE) && flags.has(MapFlags::EXCL),
    ))
}

fn size_and_map(
    fd: i32,
    path: &CString,
    len: usize,
    flags: MapFlags,
    created: bool,
    target: &Target,
) -> Result<Mapped, i32> {
    let unlink = || {
        if created {
            // SAFETY: removing the file this call created.
            unsafe { libc::unlink(path.as_ptr()) };
        }
    };
    let len = if flags.has(MapFlags::CREATE) {
        // SAFETY: our descriptor.
        if unsafe { libc::ftruncate(fd, len as i64) } != 0 {
            err::set_os("ftruncate");
            unlink();
            return Err(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EINVAL));
        }
        if !flags.has(MapFlags::SPARSE) {
            // SAFETY: our descriptor.
            let rc = unsafe { libc::posix_fallocate(fd, 0, len as i64) };
            if rc != 0 {
                err::set(&format!("posix_fallocate: {}", err::strerror(rc)), rc);
                unlink();
                return Err(rc);
            }
        }
        len
    } else {
        match target {
            Target::DevDax(s) => *s,
            Target::Vpm => vpmdev::info(fd).map(|i| i.vpm_size as usize).unwrap_or(0),
            _ => {
                // SAFETY: zeroed stat filled by fstat on our descriptor.
                let mut st: libc::stat = unsafe { std::mem::zeroed() };
                // SAFETY: as above.
                if unsafe { libc::fstat(fd, &mut st) } != 0 {
                    err::set_os("fstat");
                    return Err(std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EINVAL));
                }
                st.st_size as usize
            }
        }
    };
    let (addr, sync) = map(fd, len)?;
    let kind = match target {
        Target::DevDax(_) => Some(Kind::DevDax),
        Target::Vpm => Some(Kind::Vpm),
        _ if sync => Some(Kind::MapSync),
        _ => None,
    };
    if let Some(kind) = kind {
        if !ranges::register(addr as usize, len, kind) {
            // SAFETY: unmapping the mapping made just above.
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
            unlink();
            return fail(
                "duplicated persistent memory range; presumably unmapped with munmap() instead of pmem_unmap()",
                libc::ENOMEM,
            );
        }
    }
    Ok(Mapped {
        addr,
        len,
        is_pmem: ranges::is_pmem(addr, len),
    })
}

/// Maps `fd` shared at a 2 MiB-aligned address (1 GiB for 2 GiB and more), with `MAP_SYNC` when
/// the file system allows it.
fn map(fd: i32, len: usize) -> Result<(*mut u8, bool), i32> {
    let align = if len >= 2 << 30 { 1 << 30 } else { 2 << 20 };
    // SAFETY: a throw-away reservation to find an aligned hint; unmapped at once.
    let probe = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len + align,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    let hint = if probe == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        // SAFETY: unmapping the reservation we just made.
        unsafe { libc::munmap(probe, len + align) };
        ((probe as usize + align - 1) & !(align - 1)) as *mut libc::c_void
    };
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: mapping our descriptor at a hint (not MAP_FIXED).
    let p = unsafe { libc::mmap(hint, len, prot, MAP_SHARED_VALIDATE | MAP_SYNC, fd, 0) };
    if p != libc::MAP_FAILED {
        return Ok((p as *mut u8, true));
    }
    let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    if e != libc::EINVAL && e != libc::EOPNOTSUPP {
        err::set_os("mmap");
        return Err(e);
    }
    // SAFETY: as above, without MAP_SYNC.
    let p = unsafe { libc::mmap(hint, len, prot, libc::MAP_SHARED, fd, 0) };
    if p == libc::MAP_FAILED {
        err::set_os("mmap");
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOMEM));
    }
    Ok((p as *mut u8, false))
}

/// `pmem_unmap`.
pub fn unmap(addr: *mut u8, len: usize) -> Result<(), i32> {
    let rounded = len.div_ceil(PAGE) * PAGE;
    if !(addr as usize).is_multiple_of(PAGE) || len == 0 {
        err::set("invalid munmap length", 0);
    } else {
        ranges::unregister(addr as usize, rounded);
    }
    // SAFETY: munmap of the caller's range; the kernel validates it.
    if unsafe { libc::munmap(addr as *mut libc::c_void, rounded) } != 0 {
        err::set_os("munmap");
        return Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL));
    }
    Ok(())
}

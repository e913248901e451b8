//! pv-libpmem through the C ABI, native mode: PMDK-style API checks compiled against it and
//! against Debian's libpmem (same program, same outcome), and Debian's own programs run
//! unmodified with `LD_LIBRARY_PATH` (pmempool, a libpmemobj program, fio's libpmem engine),
//! with `ldd`/`LD_DEBUG` showing which libpmem was loaded. Needs gcc, pmdk-tools, fio,
//! libpmem-dev and libpmemobj-dev (tests/setup/install-deps.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Builds libpmem.so.1 once; returns its install directory.
fn ours() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = repo().join("target/pv-libpmem-test");
        let o = Command::new("bash")
            .arg(repo().join("pv-libpmem/build-so.sh"))
            .arg(&out)
            .output()
            .expect("run build-so.sh");
        assert!(
            o.status.success(),
            "build-so.sh failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        out
    })
}

fn tool(name: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{name} is missing: run tests/setup/install-deps.sh"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Compiles `src` (in tests/c) against our header and library, or Debian's.
fn compile(src: &str, with_ours: bool, extra: &[&str]) -> PathBuf {
    tool("gcc");
    let bin_dir = repo().join("target/pv-libpmem-test/bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let exe = bin_dir.join(format!(
        "{src}-{}",
        if with_ours { "ours" } else { "debian" }
    ));
    let mut c = Command::new("gcc");
    c.args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(repo().join("pv-libpmem/tests/c").join(src));
    if with_ours {
        let d = ours();
        c.arg(format!("-I{}", d.join("include").display()))
            .arg(format!("-L{}", d.join("lib").display()))
            .arg(format!("-Wl,-rpath,{}", d.join("lib").display()));
    }
    c.args(extra).arg("-lpmem");
    let o = run(&mut c);
    assert!(o.status.success(), "gcc {src}: {}", text(&o));
    exe
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(format!("/dev/shm/pvpmem-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn the_library_exports_libpmem_1_0_with_soname_libpmem_so_1() {
    let so = ours().join("lib/libpmem.so.1");
    let o = run(Command::new("objdump").arg("-T").arg(&so));
    let t = text(&o);
    let exported = t
        .lines()
        .filter(|l| l.contains("LIBPMEM_1.0") && l.contains(" pmem_"))
        .count();
    assert_eq!(exported, 23, "LIBPMEM_1.0 symbols:\n{t}");
    assert_eq!(
        t.lines()
            .filter(|l| l.contains("VPM_1.0") && l.contains(" pmem_vpm_"))
            .count(),
        4
    );
    // Added later in their own version node: the refusal counters.
    assert_eq!(
        t.lines()
            .filter(|l| l.contains("VPM_1.1") && l.contains(" pmem_vpm_"))
            .count(),
        2
    );
    assert!(!t.contains("rust_"), "Rust internals leak out:\n{t}");
    let d = text(&run(Command::new("readelf").arg("-d").arg(&so)));
    assert!(d.contains("Library soname: [libpmem.so.1]"), "{d}");
}

#[test]
fn pmdk_style_api_checks_pass_with_ours_and_with_debians() {
    for with_ours in [true, false] {
        let exe = compile("pmem_api.c", with_ours, &[]);
        let dir = scratch(if with_ours { "api-ours" } else { "api-deb" });
        let o = run(Command::new(&exe).arg(&dir));
        assert!(
            o.status.success() && text(&o).contains("ALL OK"),
            "ours={with_ours}:\n{}",
            text(&o)
        );
        let _ = std::fs::remove_dir_all(&dir);
        let dir = scratch(if with_ours { "force-ours" } else { "force-deb" });
        let o = run(Command::new(&exe)
            .arg(&dir)
            .arg("force")
            .env("PMEM_IS_PMEM_FORCE", "1"));
        assert!(
            o.status.success(),
            "PMEM_IS_PMEM_FORCE ours={with_ours}:\n{}",
            text(&o)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn pmempool_creates_and_checks_an_obj_pool_with_our_libpmem() {
    tool("pmempool");
    let dir = scratch("pmempool");
    let lib = ours().join("lib");
    for (label, ld) in [("ours", Some(&lib)), ("debian", None)] {
        let pool = dir.join(format!("{label}.obj"));
        let mut create = Command::new("pmempool");
        create.args(["create", "obj", "--size=32M"]).arg(&pool);
        let mut check = Command::new("pmempool");
        check.args(["check", "-v"]).arg(&pool);
        if let Some(l) = ld {
            create.env("LD_LIBRARY_PATH", l);
            check.env("LD_LIBRARY_PATH", l);
        }
        let c = run(&mut create);
        assert!(c.status.success(), "{label} create: {}", text(&c));
        let k = run(&mut check);
        assert!(
            k.status.success() && text(&k).contains("consistent"),
            "{label} check: {}",
            text(&k)
        );
    }
    let o = run(Command::new("pmempool")
        .args(["info"])
        .arg(dir.join("ours.obj"))
        .env("LD_LIBRARY_PATH", &lib)
        .env("LD_DEBUG", "libs"));
    let loaded = format!("calling init: {}", lib.join("libpmem.so.1").display());
    assert!(
        text(&o).contains(&loaded),
        "LD_DEBUG does not show ours:\n{}",
        text(&o)
    );
    let ldd = run(Command::new("sh")
        .arg("-c")
        .arg("ldd $(command -v pmempool)")
        .env("LD_LIBRARY_PATH", &lib));
    assert!(
        text(&ldd).contains(&format!(
            "libpmem.so.1 => {}",
            lib.join("libpmem.so.1").display()
        )),
        "{}",
        text(&ldd)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_libpmemobj_program_runs_unmodified_on_our_libpmem() {
    let exe = compile("obj_prog.c", false, &["-lpmemobj"]);
    let dir = scratch("obj");
    for (label, ld) in [("ours", true), ("debian", false)] {
        let mut c = Command::new(&exe);
        c.arg(dir.join(format!("{label}.pool")));
        if ld {
            c.env("LD_LIBRARY_PATH", ours().join("lib"));
        }
        let o = run(&mut c);
        assert!(
            o.status.success() && text(&o).contains("OBJ OK"),
            "{label}: {}",
            text(&o)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fio_libpmem_engine_writes_and_verifies_with_our_libpmem() {
    tool("fio");
    let dir = scratch("fio");
    for (label, ld) in [("ours", true), ("debian", false)] {
        let mut c = Command::new("fio");
        c.args([
            "--name=vpm",
            "--ioengine=libpmem",
            "--size=16M",
            "--rw=randwrite",
            "--bs=4k",
        ])
        .args([
            "--direct=1",
            "--sync=1",
            "--verify=crc32c",
            "--output-format=terse",
        ])
        .arg(format!(
            "--filename={}",
            dir.join(format!("{label}.pmem")).display()
        ))
        .env("PMEM_IS_PMEM_FORCE", "1");
        if ld {
            c.env("LD_LIBRARY_PATH", ours().join("lib"));
        }
        let o = run(&mut c);
        let t = text(&o);
        let err_field = t
            .lines()
            .last()
            .and_then(|l| l.split(';').nth(4))
            .unwrap_or("?")
            .to_string();
        assert!(
            o.status.success() && err_field == "0",
            "{label} fio failed: {t}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Four threads persist records concurrently to one pmem file (tests/c/threads.c): the same
/// program against ours and Debian's writes the same file (digest), and after a SIGKILL while
/// the threads write, every record a thread acknowledged over the pipe (the witness outside the
/// file) is whole (checksum over the whole record).
#[test]
fn four_threads_persist_concurrently_and_acked_records_survive_sigkill() {
    let mut digests = Vec::new();
    for with_ours in [true, false] {
        let exe = compile("threads.c", with_ours, &["-pthread"]);
        let dir = scratch(if with_ours {
            "threads-ours"
        } else {
            "threads-deb"
        });
        let o = run(Command::new(&exe).arg(&dir));
        let t = text(&o);
        assert!(
            o.status.success() && t.contains("THREADS OK"),
            "ours={with_ours}:\n{t}"
        );
        assert!(
            t.contains("killed by SIGKILL") && t.contains("0 bad, 0 out of order, 0 threads idle"),
            "ours={with_ours}:\n{t}"
        );
        println!("ours={with_ours}: {t}");
        let digest = t
            .lines()
            .find_map(|l| l.split("digest ").nth(1))
            .and_then(|d| d.split(',').next())
            .unwrap_or_else(|| panic!("no digest:\n{t}"))
            .to_string();
        digests.push(digest);
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert_eq!(
        digests[0], digests[1],
        "ours and Debian's wrote different files"
    );
}

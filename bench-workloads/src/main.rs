//! `vpm-bench`: benchmark commands (not tests). Each prints its figures and the floors they are
//! compared with, measured side by side in the same run, and writes JSON under `--out`.
//!
//! Usage: `vpm-bench suite|pm-core|libpmem [--out DIR] [--quick]`

mod libpmem;
mod pm_core;
mod stats;
mod suite;

use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let mut out = PathBuf::from("results");
    let mut quick = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = PathBuf::from(args.next().expect("--out needs a directory")),
            "--quick" => quick = true,
            other => fail(&format!("unknown option {other}")),
        }
    }
    let result = match cmd.as_str() {
        "pm-core" => pm_core::run(&out, quick),
        "libpmem" => libpmem::run(&out, quick),
        "suite" => suite::run(&out, quick),
        _ => fail("usage: vpm-bench suite|pm-core|libpmem [--out DIR] [--quick]"),
    };
    if let Err(e) = result {
        fail(&e);
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("vpm-bench: {msg}");
    std::process::exit(2)
}

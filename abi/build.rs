//! Declares the `loom` cfg, under which `tests/loom_handshake.rs` model-checks the polled-ring
//! handshake (see `run-loom.sh`).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(loom)");
}

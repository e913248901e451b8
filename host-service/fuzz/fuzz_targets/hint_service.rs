//! Fuzzes the real hint service (`vmm::hints::HintService`) serving a guest whose shared page,
//! ring entries, doorbell bytes and vPM content are all chosen by the fuzzer, on top of a real
//! pool (simulated PM) holding the guest's tenant and a neighbour tenant. The harness and the
//! promises it checks after every doorbell byte live in `vpm_host::vmm::hints::harness` (shared
//! with the proptest in `hints/prop.rs`).
//!
//! Input: byte 0 picks the VM mode, then a stream of steps (see `harness::run_bytes`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpm_host::vmm::hints::harness;

fuzz_target!(|data: &[u8]| {
    harness::run_bytes(data);
});

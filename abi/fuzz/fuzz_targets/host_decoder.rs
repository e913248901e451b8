//! Fuzzes everything the host decodes from guest-controlled bytes: header, ring entries, doorbell.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vpm_abi::SharedPage;

fuzz_target!(|data: &[u8]| {
    let page = Box::new(SharedPage::zeroed());
    vpm_abi::fuzzing::host_side(data, &page);
});

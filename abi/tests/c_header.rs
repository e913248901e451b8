//! The C header of the `/dev/vpm` interface (`guest-driver/include/vpm_ioctl.h`, used by the
//! guest test programs) agrees with `proto::uapi`: ioctl numbers, record sizes and the status
//! page. Compiles and runs a small C program with the system compiler.

use std::path::Path;
use std::process::Command;

use vpm_abi::proto::uapi::*;

#[test]
fn c_header_matches_the_rust_definitions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = std::env::temp_dir().join(format!("vpm-c-header-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("probe.c");
    std::fs::write(
        &src,
        r#"#include <stdio.h>
#include "vpm_ioctl.h"
int main(void)
{
	printf("%lu %lu %lu %lu %lu %lu %lu\n", (unsigned long)VPM_IOC_INFO,
	       (unsigned long)VPM_IOC_PERSIST, (unsigned long)VPM_IOC_FLUSH,
	       (unsigned long)VPM_IOC_DRAIN, (unsigned long)VPM_IOC_SET_TRANSIENT,
	       (unsigned long)VPM_IOC_SET_PERSISTENT, (unsigned long)VPM_IOC_REQUEST_EPOCH);
	printf("%zu %zu %zu\n", sizeof(struct vpm_range), sizeof(struct vpm_info),
	       sizeof(struct vpm_status));
	printf("%llu %llu\n", (unsigned long long)VPM_STATUS_OFFSET,
	       (unsigned long long)VPM_STATUS_MAGIC);
	return 0;
}
"#,
    )
    .unwrap();
    let exe = dir.join("probe");
    let cc = Command::new("cc")
        .arg("-I")
        .arg(root.join("guest-driver/include"))
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .output()
        .expect("run cc (install build-essential: tests/setup/install-deps.sh)");
    assert!(
        cc.status.success(),
        "{}",
        String::from_utf8_lossy(&cc.stderr)
    );
    let out = Command::new(&exe).output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let want = format!(
        "{} {} {} {} {} {} {}\n{} {} {}\n{} {}\n",
        VPM_IOC_INFO,
        VPM_IOC_PERSIST,
        VPM_IOC_FLUSH,
        VPM_IOC_DRAIN,
        VPM_IOC_SET_TRANSIENT,
        VPM_IOC_SET_PERSISTENT,
        VPM_IOC_REQUEST_EPOCH,
        size_of::<VpmRange>(),
        size_of::<VpmInfo>(),
        size_of::<VpmStatus>(),
        VPM_STATUS_OFFSET,
        VPM_STATUS_MAGIC
    );
    assert_eq!(text, want);
}

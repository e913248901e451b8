#!/usr/bin/env bash
# Links pv-libpmem's static library into a drop-in libpmem.so.1: soname libpmem.so.1, every
# libpmem 1.x function under the version node LIBPMEM_1.0, the VPM extensions under VPM_1.0,
# everything else local (a Rust cdylib cannot carry named version nodes). Installs the header,
# vpm.h and libpmem.pc beside it. Prints the directory.
# Usage: build-so.sh [OUT_DIR]   (default target/pv-libpmem)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
out=${1:-$repo/target/pv-libpmem}
target_dir=${PV_LIBPMEM_TARGET_DIR:-$repo/target/pv-libpmem-build}
cargo build --quiet --release -p pv-libpmem --target-dir "$target_dir" --manifest-path "$repo/Cargo.toml"
mkdir -p "$out/lib" "$out/include" "$out/lib/pkgconfig"
cc -shared -o "$out/lib/libpmem.so.1.0.0" \
  -Wl,--whole-archive "$target_dir/release/libpv_libpmem.a" -Wl,--no-whole-archive \
  -Wl,--version-script="$here/libpmem.map" -Wl,-soname,libpmem.so.1 -Wl,-z,now \
  -lpthread -ldl -lm -lgcc_s
ln -sf libpmem.so.1.0.0 "$out/lib/libpmem.so.1"
ln -sf libpmem.so.1 "$out/lib/libpmem.so"
cp "$here/include/libpmem.h" "$here/include/vpm.h" "$out/include/"
sed "s|@PREFIX@|$out|" "$here/libpmem.pc.in" >"$out/lib/pkgconfig/libpmem.pc"
echo "$out"

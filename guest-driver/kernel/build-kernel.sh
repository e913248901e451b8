#!/usr/bin/env bash
# Builds the VPM guest kernel (Linux 7.3.4 from shared/cache, tinyconfig + config-fragment.sh,
# CONFIG_RUST=y) and caches it under $VPM_CACHE_DIR/kernel/<key>, where the key hashes the source
# package, the fragment, this script and the toolchain versions. A second run with the same key
# does nothing. Prints the paths later steps need:
#   KERNEL_BZIMAGE=<path to bzImage>
#   KERNEL_BUILD_DIR=<kernel tree to build out-of-tree modules against (make -C ... M=...)>
# Usage: build-kernel.sh [--print]   (--print: only print the paths; fail if not built)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
VPM_CACHE_DIR=${VPM_CACHE_DIR:-/var/cache/vpm}
VPM_SHARED=${VPM_SHARED:-$repo/../shared}
DEB_NAME='linux-source-7.3_7.3.4-1~bpo13+1_all.deb'
KVER=7.3
# Bump when a change to this script changes what it builds (the cache key includes it).
RECIPE=2
export PATH="$VPM_CACHE_DIR/bindgen-0.73.2/bin:$PATH"

log() { printf '[build-kernel] %s\n' "$*" >&2; }
die() { printf '[build-kernel] error: %s\n' "$*" >&2; exit 1; }

deb="$VPM_SHARED/cache/$DEB_NAME"
[ -f "$deb" ] || die "kernel source package not found at $deb (set VPM_SHARED to the shared/ folder)"
command -v clang-19 >/dev/null || die "clang-19 missing: run tests/setup/install-deps.sh"
command -v bindgen >/dev/null || die "bindgen missing: run tests/setup/install-deps.sh"

# One build at a time per cache (a second caller waits, then finds the result cached).
mkdir -p "$VPM_CACHE_DIR/kernel"
exec 9>"$VPM_CACHE_DIR/kernel/.lock"
flock 9

deb_sum=$(awk -v n="$DEB_NAME" '$2 == n { print $1 }' "$VPM_SHARED/cache/SHA256SUMS")
key=$( { echo "$deb_sum recipe=$RECIPE"; cat "$here/config-fragment.sh";
         rustc --version; clang-19 --version | head -1; bindgen --version; } | sha256sum | cut -c1-16)
out="$VPM_CACHE_DIR/kernel/$KVER-$key"
tree="$out/linux-source-$KVER"

print_paths() {
  echo "KERNEL_BZIMAGE=$tree/arch/x86/boot/bzImage"
  echo "KERNEL_BUILD_DIR=$tree"
}

# Rust bindings must agree with C on the structures the driver reads (checked once per build).
check_layout() {
  [ -f "$out/.layout-ok" ] && return 0
  log "checking the Rust bindings' structure layouts against C"
  bash "$here/check-layout.sh" "$tree" || die "Rust bindings disagree with C (see above)"
  touch "$out/.layout-ok"
}

if [ -f "$out/.complete" ]; then
  check_layout
  log "cached kernel $KVER ($key) at $out"
  print_paths
  exit 0
fi
[ "${1:-}" = "--print" ] && die "kernel not built yet: run guest-driver/kernel/build-kernel.sh"

log "verifying $DEB_NAME"
echo "$deb_sum  $deb" | sha256sum --check --quiet - || die "SHA256 mismatch for $deb"

rm -rf "$out" && mkdir -p "$out"
log "unpacking source into $out"
dpkg-deb --fsys-tarfile "$deb" | tar -x -O --wildcards './usr/src/linux-source-*.tar.xz' | tar -xJ -C "$out"
[ -d "$tree" ] || die "unexpected layout: $tree missing after unpack"

cd "$tree"
make_k() { make LLVM=-19 "$@"; }
make_k rustavailable >/dev/null || die "make rustavailable failed (rust-src, bindgen, libclang-19?)"
make_k tinyconfig >/dev/null
sh "$here/config-fragment.sh"
make_k olddefconfig >/dev/null
while read -r opt; do
  grep -q "^CONFIG_$opt=y" .config || die "CONFIG_$opt is not =y after olddefconfig"
done <.vpm-required-options

jobs=$(nproc)
log "building bzImage and modules with -j$jobs (about 6 minutes on 2 cores); log: $out/build.log"
start=$(date +%s)
make_k -j"$jobs" bzImage modules >"$out/build.log" 2>&1 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
  sleep 30
  kill -0 "$pid" 2>/dev/null && log "  $(( $(date +%s) - start ))s: $(grep -c -E '^\s+(CC|RUSTC|LD|AR)' "$out/build.log" || true) objects, last: $(tail -1 "$out/build.log" | cut -c1-70)"
done
wait "$pid" || { tail -40 "$out/build.log" >&2; die "kernel build failed"; }
log "kernel built in $(( $(date +%s) - start ))s"
[ -f arch/x86/boot/bzImage ] || die "bzImage missing after build"
check_layout
touch "$out/.complete"
print_paths

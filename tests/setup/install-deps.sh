#!/usr/bin/env bash
# Installs every system dependency VPM needs on a fresh Debian 12 (bookworm) machine.
# Idempotent: each step checks whether its result is already there, so a second run is quick.
# Run as root (CI and the dev machines are root).
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*"; }

VPM_CACHE_DIR=${VPM_CACHE_DIR:-/var/cache/vpm}
BINDGEN_VERSION=0.73.2
BPO_FILE=/etc/apt/sources.list.d/vpm-bookworm-backports.sources

# Debian packages: kernel build (clang-19 toolchain, one libclang only), guest images, QEMU 10
# (from bookworm-backports, matching the image's qemu-utils), PMDK clients for pv-libpmem,
# prometheus for promtool (the vpm serve test checks its /metrics scrape); strace for
# `vpm-bench ext4` (it times QEMU's fsyncs of the virtio-pmem backing file).
APT_PACKAGES=(
  build-essential bc flex bison libelf-dev libssl-dev cpio xz-utils gzip kmod
  clang-19 lld-19 llvm-19 libclang-19-dev
  busybox-static e2fsprogs
  fio pmdk-tools libpmem1 libpmem-dev libpmemobj1 libpmemobj-dev
  prometheus strace
)
BPO_PACKAGES=(qemu-system-x86)

need_apt=0
for p in "${APT_PACKAGES[@]}" "${BPO_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || { need_apt=1; break; }
done

if [ "$need_apt" = 1 ]; then
  if [ ! -f "$BPO_FILE" ] && ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    log "adding bookworm-backports"
    cat >"$BPO_FILE" <<'EOS'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOS
  fi
  log "apt-get update"
  apt-get update -qq
  log "installing: ${APT_PACKAGES[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  log "installing from bookworm-backports: ${BPO_PACKAGES[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -t bookworm-backports \
    "${BPO_PACKAGES[@]}" >/dev/null
else
  log "Debian packages already installed"
fi

# Rust: the kernel needs rust-src on the stable toolchain; the test guest builds for x86_64-unknown-none.
if ! rustup component list --installed | grep -q '^rust-src'; then
  log "rustup component add rust-src"
  rustup component add rust-src
fi
# The format and lint checks (the workspace, and vpm.ko's sources with rustfmt itself).
for component in rustfmt clippy; do
  if ! rustup component list --installed | grep -q "^${component}"; then
    log "rustup component add ${component}"
    rustup component add "${component}"
  fi
done
if ! rustup target list --installed | grep -q '^x86_64-unknown-none$'; then
  log "rustup target add x86_64-unknown-none"
  rustup target add x86_64-unknown-none
fi
# The hint-service fuzz target builds the test guest with the nightly toolchain the image carries.
if rustup run nightly rustc --version >/dev/null 2>&1 &&
  ! rustup target list --installed --toolchain nightly | grep -q '^x86_64-unknown-none$'; then
  log "rustup target add x86_64-unknown-none --toolchain nightly"
  rustup target add x86_64-unknown-none --toolchain nightly
fi

# bindgen-cli for the Rust-for-Linux build (Debian's is too old for 7.3).
BINDGEN_ROOT="$VPM_CACHE_DIR/bindgen-$BINDGEN_VERSION"
if ! "$BINDGEN_ROOT/bin/bindgen" --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
  log "cargo install bindgen-cli $BINDGEN_VERSION (about a minute)"
  mkdir -p "$VPM_CACHE_DIR"
  cargo install -q bindgen-cli --version "$BINDGEN_VERSION" --locked --root "$BINDGEN_ROOT"
fi
log "bindgen: $("$BINDGEN_ROOT/bin/bindgen" --version)"

# cargo-fuzz for the fuzz smoke runs (the fuzz targets build with the image's nightly toolchain).
FUZZ_ROOT="$VPM_CACHE_DIR/cargo-fuzz"
if [ ! -x "$FUZZ_ROOT/bin/cargo-fuzz" ]; then
  log "cargo install cargo-fuzz (about a minute)"
  cargo install -q cargo-fuzz --locked --root "$FUZZ_ROOT"
fi
log "qemu: $(qemu-system-x86_64 --version | head -1)"
log "done"

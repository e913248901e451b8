#!/usr/bin/env bash
# The project's test command: sets up a fresh machine (idempotent), builds everything, runs every
# test. Exits non-zero on the first failure. Used by .ci/run and named in the README.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/setup/env.sh

t0=$(date +%s)
step() { printf '\n==> [%4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

step "install system dependencies"
bash tests/setup/install-deps.sh

step "guest kernel (cached)"
eval "$(bash guest-driver/kernel/build-kernel.sh)"
export KERNEL_BZIMAGE KERNEL_BUILD_DIR
echo "bzImage: $KERNEL_BZIMAGE"

step "format and lints"
cargo fmt --all -- --check
# vpm.ko is outside the workspace: the kernel's rustfmt settings are the 2021 defaults.
rustfmt --edition 2021 --check guest-driver/vpm/*.rs
cargo clippy --workspace --all-targets --quiet -- -D warnings
cargo clippy -p vpm-abi --all-targets --features derive,fuzzing --quiet -- -D warnings

step "build (release)"
cargo build --workspace --release --quiet

step "tests"
cargo test --workspace --release
cargo test -p vpm-abi --release --features derive

step "loom model check of the polled-ring handshake (ABI 1.1)"
bash abi/run-loom.sh

step "crash-point enumeration: commit, recovery, persist, transient, tenants, create (crash states checked)"
cargo test -p vpm-host --release --test crash_points --test crash_points_ops -- --nocapture 2>&1 | grep -E 'crash states|test result'


step "main job"
"${CARGO_TARGET_DIR:-target}/release/vpm" run

step "fuzz smoke"
bash tests/fuzz-smoke.sh

step "all passed in $(( $(date +%s) - t0 ))s"

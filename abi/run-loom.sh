#!/usr/bin/env bash
# Model-checks the polled-ring handshake (abi/src/proto/poll.rs) with loom: every interleaving of a
# publishing guest and a host that goes to sleep, up to 3 preemptions. About three minutes on a loaded
# 2-core machine the first time (building loom); the model itself runs in about half a second.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTFLAGS="${RUSTFLAGS:-} --cfg loom"
# A target directory of its own: other RUSTFLAGS would rebuild everything in the shared one.
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-${CARGO_TARGET_DIR:-../target}/loom}"
exec cargo test --release -p vpm-abi --test loom_handshake -- --test-threads=1 "$@"

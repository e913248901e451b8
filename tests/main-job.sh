#!/usr/bin/env bash
# The main job: sets up the machine (idempotent), builds vpm and runs `vpm run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source tests/setup/env.sh
bash tests/setup/install-deps.sh
cargo build --release --quiet -p vpm-host --bin vpm
exec "${CARGO_TARGET_DIR:-target}/release/vpm" run "$@"

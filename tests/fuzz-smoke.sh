#!/usr/bin/env bash
# Runs every cargo-fuzz target of the project for a short time (default 20 s each).
# Needs the nightly toolchain that these machines carry, and cargo-fuzz (install-deps.sh).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup/env.sh"
secs=${VPM_FUZZ_SECONDS:-20}
rustup run nightly rustc --version >/dev/null 2>&1 || {
  echo "fuzz-smoke: the nightly toolchain is missing (cargo-fuzz needs it); rustup toolchain list:" >&2
  rustup toolchain list >&2; exit 1; }
# host-service/fuzz builds vpm-host with `vmm`, whose build script builds the test guest with the
# toolchain at hand: nightly needs the guest's target too.
rustup target list --installed --toolchain nightly | grep -qx x86_64-unknown-none || {
  echo "fuzz-smoke: nightly lacks x86_64-unknown-none: rustup target add x86_64-unknown-none --toolchain nightly" >&2
  exit 1; }
command -v cargo-fuzz >/dev/null || { echo "fuzz-smoke: cargo-fuzz missing: run tests/setup/install-deps.sh" >&2; exit 1; }
for dir in $(find "$VPM_REPO" -path '*/target' -prune -o -name Cargo.toml -path '*/fuzz/*' -print | xargs -n1 dirname | sort); do
  for t in $(cd "$dir" && cargo +nightly fuzz list); do
    echo "[fuzz-smoke] $(realpath --relative-to="$VPM_REPO" "$dir")/$t for ${secs}s"
    log=$(mktemp)
    # Committed seed inputs (fuzz/seeds/TARGET) start the run where a short one would not get.
    corpus=()
    if [ -d "$dir/seeds/$t" ]; then
      mkdir -p "$dir/corpus/$t"
      corpus=("corpus/$t" "seeds/$t")
    fi
    if ! (cd "$dir" && cargo +nightly fuzz run "$t" "${corpus[@]}" -- -max_total_time="$secs" -print_final_stats=1) >"$log" 2>&1; then
      tail -40 "$log" >&2
      echo "[fuzz-smoke] $t FAILED" >&2
      exit 1
    fi
    grep -E '^Done|stat::number_of_executed_units' "$log" || true
    rm -f "$log"
  done
done
